//! The upstream call: the one function that owns pick → admit → pool → send → classify for a
//! request, shaped as the attempt loop that retries extend. The pick happens inside the
//! attempt, each attempt knows its number and deadline and the endpoints already tried, and
//! every failure is classified in one place ([`ProxyError::classify`]).

use super::pool::{EndpointPool, Lease, Pools, SendError, UpstreamBody, UpstreamProtocol};
use super::{ClusterHandle, Transport};
pub(crate) use crate::endpoint::ActiveRequest;
use crate::error::{ProxyError, Sent};
use crate::lb::PickContext;
use crate::message::fields;
use crate::message::reqbody::FaultNote;
use crate::metrics::ClusterMetrics;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

/// Most attempts of one request. One until the retry policy (resilience work) raises it; the
/// loop, the pick context and the decision are already in place.
const MAX_ATTEMPTS: u32 = 1;

/// Who is calling and how.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Call<'a> {
    /// The worker's pools.
    pub(crate) pools: &'a Pools,
    /// The worker's index (selects per-worker balancer state).
    pub(crate) worker: usize,
    /// The destination.
    pub(crate) cluster: &'a ClusterHandle,
    /// Wire protocol to the upstream.
    pub(crate) proto: UpstreamProtocol,
    /// The route timeout (until response headers).
    pub(crate) timeout: Option<Duration>,
    /// Where the request body notes how it failed: a failure of the downstream body is the
    /// client's, not the upstream's.
    pub(crate) body_fault: Option<&'a FaultNote>,
}

/// A response head from an upstream and what holds its connection and endpoint.
#[derive(Debug)]
pub(crate) struct Upstream {
    pub(crate) response: Response<Incoming>,
    /// The connection (HTTP/1.1) or stream slot (HTTP/2), released when the body ends.
    pub(crate) lease: Lease,
    /// Counts the request on its endpoint until the response body is done.
    pub(crate) active: ActiveRequest,
    /// The endpoint that answered.
    pub(crate) endpoint: SocketAddr,
}

/// One attempt: its number (1 = first) and the endpoints earlier attempts used.
#[derive(Debug, Default)]
struct Attempts {
    number: u32,
    tried: Vec<SocketAddr>,
}

/// Sends `request` through `call.cluster` under the route timeout.
pub(crate) fn send<'a>(
    call: Call<'a>,
    request: Request<UpstreamBody>,
) -> RouteTimeout<'a, impl Future<Output = Result<Upstream, ProxyError>> + 'a> {
    RouteTimeout::new(attempts(call, request), call.timeout, call.cluster)
}

async fn attempts(
    call: Call<'_>,
    mut request: Request<UpstreamBody>,
) -> Result<Upstream, ProxyError> {
    let mut attempts = Attempts::default();
    loop {
        attempts.number += 1;
        let (pool, active, endpoint) = admit(&call, &attempts)?;
        let result = pool.send(request, call.proto, &call.cluster.metrics).await;
        match result {
            Ok((response, lease)) => {
                // An invalid response drops its lease here: the connection is closed, never
                // pooled.
                check_response(&response, &call.cluster.metrics)?;
                return Ok(Upstream {
                    response,
                    lease,
                    active,
                    endpoint,
                });
            }
            Err(SendError {
                error,
                request: unsent,
            }) => {
                tracing::debug!(cluster = %call.cluster.name, %endpoint, attempt = attempts.number, error = %error, flag = error.flag(), "upstream attempt failed");
                match unsent {
                    Some(r) if retry(&error, attempts.number, MAX_ATTEMPTS) => {
                        request = r;
                        attempts.tried.push(endpoint);
                    }
                    _ => return Err(blame(error, call.body_fault, &call.cluster.metrics)),
                }
            }
        }
    }
}

/// Picks an endpoint for this attempt, counts the request on it and finds the worker's pool.
fn admit(
    call: &Call<'_>,
    attempts: &Attempts,
) -> Result<(Rc<EndpointPool>, ActiveRequest, SocketAddr), ProxyError> {
    let settings = call.cluster.settings_guard();
    let Some(settings) = settings.as_ref() else {
        return Err(ProxyError::NoCluster(call.cluster.name.clone()));
    };
    let endpoints = call.cluster.endpoints_guard();
    let ctx = PickContext {
        worker: call.worker,
        hash: None,
        attempt: attempts.number,
        tried: &attempts.tried,
    };
    let endpoint = endpoints
        .pick(&ctx)
        .ok_or_else(|| ProxyError::NoEndpoint(call.cluster.name.clone()))?;
    let pool = call.pools.endpoint(endpoint, &settings.transport);
    Ok((pool, endpoint.state.admit(), endpoint.address))
}

/// Who failed: when the downstream request body broke first, the upstream call's failure is
/// the client's (400, counted as a rejection); otherwise the upstream's (502, counted on the
/// cluster).
fn blame(error: ProxyError, fault: Option<&FaultNote>, metrics: &ClusterMetrics) -> ProxyError {
    match error {
        ProxyError::Upstream(err) => match fault.and_then(|f| f.get()) {
            Some(f) => {
                tracing::debug!(error = %err, "upstream call failed on the request body");
                ProxyError::RequestBody(f)
            }
            None => {
                metrics.error("request");
                ProxyError::Upstream(err)
            }
        },
        other => other,
    }
}

/// Refuses upstream responses a proxy must not forward: `101` to a request that asked for no
/// upgrade (RFC 9110 §15.2.2; over HTTP/2 it does not exist, RFC 9113 §8.6), both
/// `Content-Length` and `Transfer-Encoding` (RFC 9112 §6.3: a possible response-splitting
/// attempt), and HTTP/2 field values with leading or trailing whitespace (RFC 9113 §8.2.1).
/// Counted as `invalid_response` on the cluster.
pub(crate) fn check_response(
    resp: &Response<Incoming>,
    metrics: &ClusterMetrics,
) -> Result<(), ProxyError> {
    let h = resp.headers();
    let why = if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        Some("101 Switching Protocols to a request without an upgrade")
    } else if h.contains_key(TRANSFER_ENCODING) && h.contains_key(CONTENT_LENGTH) {
        Some("both Content-Length and Transfer-Encoding")
    } else if !fields::only_chunked(h) {
        Some("transfer coding other than chunked")
    } else if resp.version() == Version::HTTP_2 && !fields::valid_fields(h) {
        Some("field value with leading or trailing whitespace")
    } else {
        None
    };
    match why {
        Some(why) => {
            metrics.error("invalid_response");
            Err(ProxyError::InvalidResponse(why))
        }
        None => Ok(()),
    }
}

/// Whether a failed attempt is tried again: only when the request provably was not sent and
/// attempts remain. (The retry policy adds status- and reset-based conditions and budgets.)
fn retry(error: &ProxyError, attempt: u32, max: u32) -> bool {
    error.classify().sent == Sent::No && attempt < max
}

/// Sends an upgrade request (WebSocket) on a dedicated HTTP/1.1 connection to a picked
/// endpoint, under the route timeout.
pub(crate) async fn send_upgrade(
    call: Call<'_>,
    request: Request<UpstreamBody>,
) -> Result<(Response<Incoming>, ActiveRequest, SocketAddr), ProxyError> {
    let (pool, active, endpoint) = admit(
        &call,
        &Attempts {
            number: 1,
            tried: Vec::new(),
        },
    )?;
    let resp = RouteTimeout::new(
        pool.send_upgrade(request, &call.cluster.metrics),
        call.timeout,
        call.cluster,
    )
    .await?;
    Ok((resp, active, endpoint))
}

/// Picks an endpoint for a TCP connection and connects to it through the cluster's connector.
pub(crate) async fn connect_tcp(
    cluster: &ClusterHandle,
    worker: usize,
) -> Result<(tokio::net::TcpStream, ActiveRequest, SocketAddr), ProxyError> {
    let (connector, active, addr) = {
        let settings = cluster.settings_guard();
        let Some(settings) = settings.as_ref() else {
            return Err(ProxyError::NoCluster(cluster.name.clone()));
        };
        let Transport { connector, .. } = &settings.transport;
        let endpoints = cluster.endpoints_guard();
        let ctx = PickContext {
            worker,
            attempt: 1,
            ..PickContext::default()
        };
        let e = endpoints
            .pick(&ctx)
            .ok_or_else(|| ProxyError::NoEndpoint(cluster.name.clone()))?;
        (connector.clone(), e.state.admit(), e.address)
    };
    let stream = connector.connect(addr, &cluster.metrics).await?;
    Ok((stream, active, addr))
}

pin_project_lite::pin_project! {
    /// An upstream call under the route timeout, built in place (no extra async frame). A
    /// timeout is counted on the cluster and becomes `UpstreamTimeout`.
    pub(crate) struct RouteTimeout<'a, F> {
        #[pin]
        fut: F,
        #[pin]
        deadline: Option<crate::clock::Deadline>,
        timeout: Option<Duration>,
        cluster: &'a ClusterHandle,
    }
}

impl<'a, F> RouteTimeout<'a, F> {
    fn new(fut: F, timeout: Option<Duration>, cluster: &'a ClusterHandle) -> Self {
        RouteTimeout {
            fut,
            deadline: timeout.map(crate::clock::Deadline::after),
            timeout,
            cluster,
        }
    }
}

impl<T, F: Future<Output = Result<T, ProxyError>>> Future for RouteTimeout<'_, F> {
    type Output = Result<T, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.fut.poll(cx) {
            return Poll::Ready(v);
        }
        match this.deadline.as_pin_mut() {
            Some(d) => d.poll(cx).map(|()| {
                this.cluster.metrics.error("timeout");
                Err(ProxyError::UpstreamTimeout(
                    this.timeout.unwrap_or_default(),
                ))
            }),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unsent_requests_are_retried_and_only_while_attempts_remain() {
        let refused = ProxyError::ConnectFailed {
            addr: "127.0.0.1:1".parse().unwrap(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        };
        assert!(retry(&refused, 1, 2));
        assert!(!retry(&refused, 2, 2));
        assert!(!retry(&refused, 1, MAX_ATTEMPTS));
        let timeout = ProxyError::UpstreamTimeout(Duration::from_secs(1));
        assert!(
            !retry(&timeout, 1, 5),
            "a request that may have been sent is not resent"
        );
    }
}
