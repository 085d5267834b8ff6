//! sluice-control-plane: serves Sluice's resource model to proxies over Envoy's xDS v3
//! protocol.
//!
//! The ADS server ([`AdsServer`]) is generic: it serves opaque packed resources from a
//! [`SnapshotCache`] keyed by node group, type URL and name, state of the world and delta.
//! What goes into the snapshots (the mapping from Sluice's model, `sluice_config::xds`) is
//! the caller's business. See docs/architecture.md, "Control plane: ADS server".

// Nothing a peer or a config file controls may panic the data plane (tests may).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod ads;
pub mod api;
pub mod ca;
pub mod cache;
pub mod metrics;
pub mod run;
pub mod serve;
pub mod settings;
pub mod snapshot;
pub mod source;
pub mod status;
pub mod tls;

#[cfg(test)]
mod tests;

use std::time::Duration;

pub use ads::AdsServer;
pub use cache::SnapshotCache;
pub use metrics::AdsMetrics;
pub use snapshot::Snapshot;
pub use status::ProxyStatus;

/// The config model the control plane serves.
pub use sluice_config as config;

/// Serves ADS on `listener` until the listener fails or the task is dropped.
///
/// HTTP/2 keep-alive pings every 30 s (a proxy that stops answering within 10 s is dropped,
/// so its stream task and status entry go away); TCP keep-alive 60 s; TCP_NODELAY.
pub async fn serve(
    listener: tokio::net::TcpListener,
    server: AdsServer,
) -> Result<(), tonic::transport::Error> {
    serve_with_shutdown(listener, server, std::future::pending()).await
}

/// [`serve_with_shutdown`] over TLS: `serving` holds the certificate (renewable).
pub async fn serve_tls_with_shutdown(
    listener: tokio::net::TcpListener,
    server: AdsServer,
    serving: std::sync::Arc<tls::ServingCert>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    serve_incoming(tls::incoming(listener, serving), server, shutdown).await
}

/// [`serve`] until `shutdown` completes; then every open stream ends with UNAVAILABLE
/// ([`AdsServer::close_streams`]) and it returns once the connections have closed.
pub async fn serve_with_shutdown(
    listener: tokio::net::TcpListener,
    server: AdsServer,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)));
    serve_incoming(incoming, server, shutdown).await
}

/// Serves ADS on the connections `incoming` yields until `shutdown`; then ends open streams.
async fn serve_incoming<IO, IE>(
    incoming: impl tokio_stream::Stream<Item = Result<IO, IE>>,
    server: AdsServer,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error>
where
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let closer = server.clone();
    let shutdown = async move {
        shutdown.await;
        closer.close_streams();
    };
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(server.into_service())
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
