//! The one upstream connector: every connection to an endpoint, from the HTTP pools, the TCP
//! proxy and the health checks alike, is opened here (with the connect timeout, `TCP_NODELAY`,
//! TLS origination when the cluster has `tls`, and the cluster's connection metrics).

use crate::error::ProxyError;
use crate::metrics::ClusterMetrics;
use crate::tls::{Alpn, ClientTls, UpstreamIo};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// Opens connections to endpoints.
#[derive(Clone, Debug)]
pub(crate) struct Connector {
    timeout: Duration,
    tls: Option<Arc<ClientTls>>,
}

impl Connector {
    pub(crate) fn new(timeout: Duration, tls: Option<Arc<ClientTls>>) -> Self {
        Connector { timeout, tls }
    }

    /// Connects to `addr` within the connect timeout (and, for TLS, completes the handshake
    /// offering `alpn` within the connect timeout again), counting the outcome on `metrics`.
    pub(crate) async fn connect(
        &self,
        addr: SocketAddr,
        metrics: &ClusterMetrics,
        alpn: Alpn,
    ) -> Result<UpstreamIo, ProxyError> {
        let stream = match tokio::time::timeout(self.timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => {
                metrics.connect_failures.inc();
                tracing::debug!(cluster = %metrics.name(), %addr, error = %source, "upstream connect failed");
                return Err(ProxyError::ConnectFailed { addr, source });
            }
            Err(_) => {
                metrics.connect_failures.inc();
                tracing::debug!(cluster = %metrics.name(), %addr, "upstream connect timed out");
                return Err(ProxyError::ConnectTimeout {
                    addr,
                    timeout: self.timeout,
                });
            }
        };
        // Requests are written whole; Nagle would only delay them.
        let _ = stream.set_nodelay(true);
        let Some(tls) = &self.tls else {
            metrics.connections.inc();
            return Ok(UpstreamIo::Plain(stream));
        };
        let tls_metrics = metrics.tls();
        match tokio::time::timeout(self.timeout, UpstreamIo::tls(stream, tls, alpn)).await {
            Ok(Ok(s)) => {
                tls_metrics.upstream_handshake(metrics.name(), "ok");
                metrics.connections.inc();
                Ok(s)
            }
            Ok(Err(source)) => {
                tls_metrics.upstream_handshake(metrics.name(), "failed");
                metrics.connect_failures.inc();
                tracing::warn!(cluster = %metrics.name(), %addr, error = %source, "upstream TLS handshake failed");
                Err(ProxyError::ConnectFailed { addr, source })
            }
            Err(_) => {
                tls_metrics.upstream_handshake(metrics.name(), "timeout");
                metrics.connect_failures.inc();
                tracing::debug!(cluster = %metrics.name(), %addr, "upstream TLS handshake timed out");
                Err(ProxyError::ConnectTimeout {
                    addr,
                    timeout: self.timeout,
                })
            }
        }
    }
}
