//! HTTP health checks (`GET path`, healthy on an expected status) and the small client they
//! and gRPC checks share: one connection per endpoint, opened through the cluster's
//! [`Connector`](crate::cluster::connect::Connector), kept between checks and dropped after a
//! failure.

use super::{Failure, MAX_BODY, Spec};
use bytes::Bytes;
use http::header::{HOST, USER_AGENT};
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice_config::StatusRange;
use std::net::SocketAddr;

/// The `user-agent` of every health check request (Envoy sends `Envoy/HC`).
pub(super) const USER_AGENT_VALUE: &str = "sluice-health-check";

/// A kept connection to one endpoint.
#[derive(Debug)]
pub(super) enum Client {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Client {
    /// Opens a connection to `addr`.
    pub(super) async fn connect(
        spec: &Spec,
        addr: SocketAddr,
        http2: bool,
    ) -> Result<Client, Failure> {
        let stream = spec
            .connector
            .connect(
                addr,
                &spec.cluster_metrics,
                if http2 {
                    crate::tls::Alpn::Http2
                } else {
                    crate::tls::Alpn::Http1
                },
            )
            .await
            .map_err(|e| Failure::Connect(e.to_string()))?;
        let io = TokioIo::new(stream);
        let handshake = |e: hyper::Error| Failure::Connect(format!("handshake: {e}"));
        if http2 {
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .handshake(io)
                .await
                .map_err(handshake)?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%addr, error = %e, "health check connection ended");
                }
            });
            Ok(Client::H2(sender))
        } else {
            let (sender, conn) = http1::Builder::new()
                .handshake(io)
                .await
                .map_err(handshake)?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%addr, error = %e, "health check connection ended");
                }
            });
            Ok(Client::H1(sender))
        }
    }

    async fn ready(&mut self) -> bool {
        match self {
            Client::H1(s) => s.ready().await.is_ok(),
            Client::H2(s) => s.ready().await.is_ok(),
        }
    }

    async fn send(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, hyper::Error> {
        match self {
            Client::H1(s) => s.send_request(req).await,
            Client::H2(s) => s.send_request(req).await,
        }
    }
}

/// Sends `make()`'s request on the kept connection, or on a new one when there is none or it
/// is closed; a kept connection that fails is retried once on a new one (the endpoint may
/// have closed it while idle). On success the connection stays in `slot`.
pub(super) async fn send(
    slot: &mut Option<Client>,
    spec: &Spec,
    addr: SocketAddr,
    http2: bool,
    make: impl Fn() -> Request<Full<Bytes>>,
) -> Result<(Client, Response<Incoming>), Failure> {
    if let Some(mut client) = slot.take()
        && client.ready().await
        && let Ok(resp) = client.send(make()).await
    {
        return Ok((client, resp));
    }
    let mut client = Client::connect(spec, addr, http2).await?;
    let resp = client
        .send(make())
        .await
        .map_err(|e| Failure::Request(e.to_string()))?;
    Ok((client, resp))
}

/// Reads a response body up to [`MAX_BODY`].
pub(super) async fn read_body(body: Incoming) -> Result<http_body_util::Collected<Bytes>, Failure> {
    Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| Failure::Request(format!("reading the body: {e}")))
}

/// One HTTP check.
pub(super) async fn check(
    slot: &mut Option<Client>,
    spec: &Spec,
    addr: SocketAddr,
    http2: bool,
    path: &str,
    host: &str,
    expected: &[StatusRange],
) -> Result<(), Failure> {
    request(http2, path, host)?;
    let make = || request(http2, path, host).unwrap_or_default();
    let (client, resp) = send(slot, spec, addr, http2, make).await?;
    let status = resp.status().as_u16();
    // The body is drained so the connection can carry the next check; one that cannot be
    // read is dropped, and the status still decides.
    if read_body(resp.into_body()).await.is_ok() {
        *slot = Some(client);
    }
    if expected.iter().any(|r| r.contains(status)) {
        Ok(())
    } else {
        Err(Failure::Status(status))
    }
}

/// `GET path` with `Host: host` (HTTP/1.1) or `:authority` host (HTTP/2).
pub(super) fn request(
    http2: bool,
    path: &str,
    host: &str,
) -> Result<Request<Full<Bytes>>, Failure> {
    let b = if http2 {
        Request::get(format!("http://{host}{path}"))
    } else {
        let host = HeaderValue::from_str(host)
            .map_err(|_| Failure::Request(format!("`{host}` is not a valid Host header")))?;
        Request::get(path).header(HOST, host)
    };
    b.header(USER_AGENT, USER_AGENT_VALUE)
        .body(Full::new(Bytes::new()))
        .map_err(|e| Failure::Request(format!("cannot build the request: {e}")))
}
