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
use tokio::time::Instant;

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
    /// The route timeout: from the end of the request body (or the call's start when there
    /// is none) until the response head.
    pub(crate) timeout: Option<Duration>,
    /// The listener's stream idle timeout: bounds the upload (no body progress for this long)
    /// and the wait for the response head.
    pub(crate) stream_idle: Option<Duration>,
    /// Where the request body notes how it failed (a failure of the downstream body is the
    /// client's, not the upstream's), its progress and its end.
    pub(crate) body_fault: Option<&'a FaultNote>,
    /// The request's hash from the route's `hash_policy` (hash-based balancers); `NonZeroU64`
    /// so the call stays a word smaller in the request's future.
    pub(crate) hash: Option<std::num::NonZeroU64>,
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

/// Sends `request` through `call.cluster` under the route and stream idle timeouts.
pub(crate) fn send<'a>(
    call: Call<'a>,
    request: Request<UpstreamBody>,
) -> RouteTimeout<'a, impl Future<Output = Result<Upstream, ProxyError>> + 'a> {
    RouteTimeout::new(attempts(call, request), &call)
}

/// Runs `fut` (which ends in [`attempts`]) under the call's route and stream idle timeouts.
pub(crate) fn under_timeouts<'a, T, F: Future<Output = Result<T, ProxyError>>>(
    fut: F,
    call: &Call<'a>,
) -> RouteTimeout<'a, F> {
    RouteTimeout::new(fut, call)
}

/// The attempt loop, without timeouts (see [`send`]).
pub(crate) async fn attempts(
    call: Call<'_>,
    mut request: Request<UpstreamBody>,
) -> Result<Upstream, ProxyError> {
    let mut attempts = Attempts::default();
    loop {
        attempts.number += 1;
        let (pool, active, endpoint) = admit(&call, &attempts)?;
        let sent_at = Instant::now();
        let result = pool.send(request, call.proto, &call.cluster.metrics).await;
        match result {
            Ok((response, lease)) => {
                active.state().observe_latency(sent_at.elapsed());
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
        hash: call.hash.map(std::num::NonZeroU64::get),
        attempt: attempts.number,
        tried: &attempts.tried,
        ..PickContext::default()
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
        ProxyError::Upstream(err) => match fault.and_then(|f| f.fault()) {
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
    let resp = RouteTimeout::new(pool.send_upgrade(request, &call.cluster.metrics), &call).await?;
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
    /// An upstream call under the route timeout and the stream idle timeout, built in place (no
    /// extra async frame, one coarse deadline). While the request body streams, only the stream
    /// idle timeout applies, counted from the body's last progress (408 when it expires: the
    /// client stalled). From the body's end (or the call's start, without a body) the route
    /// timeout runs until the response head (504 `UT`, counted on the cluster), and the stream
    /// idle timeout too (504 `SI`, when it is the shorter).
    pub(crate) struct RouteTimeout<'a, F> {
        #[pin]
        fut: F,
        #[pin]
        deadline: Option<crate::clock::Deadline>,
        timeout: Option<Duration>,
        stream_idle: Option<Duration>,
        body: Option<&'a FaultNote>,
        // When the call started (the wait for the head starts here without a body).
        started: Instant,
        cluster: &'a ClusterHandle,
    }
}

/// What a call under [`RouteTimeout`] is waiting for when its deadline passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expiry {
    /// The request body made no progress for the stream idle timeout.
    Upload,
    /// No response head within the route timeout.
    Route,
    /// No response head within the stream idle timeout (shorter than the route timeout).
    Idle,
}

/// The next deadline of a call: while the body streams, its last progress plus the stream
/// idle timeout; afterwards, from the body's end (`waiting_since`), the earlier of the route
/// and stream idle timeouts (the route timeout on a tie). A pure function of the call's state.
fn next_deadline(
    uploading: Option<Instant>,
    waiting_since: Instant,
    route: Option<Duration>,
    idle: Option<Duration>,
) -> Option<(Instant, Expiry)> {
    if let Some(progress) = uploading {
        return idle.map(|d| (progress + d, Expiry::Upload));
    }
    let route = route.map(|d| (waiting_since + d, Expiry::Route));
    let idle = idle.map(|d| (waiting_since + d, Expiry::Idle));
    match (route, idle) {
        (Some(r), Some(i)) => Some(if i.0 < r.0 { i } else { r }),
        (r, i) => r.or(i),
    }
}

impl<'a, F> RouteTimeout<'a, F> {
    fn new(fut: F, call: &Call<'a>) -> Self {
        RouteTimeout {
            fut,
            deadline: None,
            timeout: call.timeout,
            stream_idle: call.stream_idle,
            body: call.body_fault,
            started: crate::clock::coarse_now(),
            cluster: call.cluster,
        }
    }
}

impl<T, F: Future<Output = Result<T, ProxyError>>> Future for RouteTimeout<'_, F> {
    type Output = Result<T, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(v) = this.fut.poll(cx) {
            return Poll::Ready(v);
        }
        let (uploading, waiting_since) = match this.body {
            Some(b) => match b.ended() {
                Some(end) => (None, end),
                None => {
                    // The body's end starts the route timeout: be polled then.
                    b.wake_on_end(cx.waker());
                    (Some(b.progress()), *this.started)
                }
            },
            None => (None, *this.started),
        };
        let Some((at, why)) =
            next_deadline(uploading, waiting_since, *this.timeout, *this.stream_idle)
        else {
            this.deadline.set(None);
            return Poll::Pending;
        };
        if this
            .deadline
            .as_ref()
            .get_ref()
            .as_ref()
            .is_none_or(|d| d.at() != at)
        {
            this.deadline.set(Some(crate::clock::Deadline::until(at)));
        }
        match this.deadline.as_pin_mut() {
            Some(d) => d
                .poll(cx)
                .map(|()| Err(expire(why, *this.timeout, *this.stream_idle, this.cluster))),
            None => Poll::Pending,
        }
    }
}

/// The error for a call whose deadline passed, counted and logged.
fn expire(
    why: Expiry,
    route: Option<Duration>,
    idle: Option<Duration>,
    cluster: &ClusterHandle,
) -> ProxyError {
    let idle = idle.unwrap_or_default();
    match why {
        Expiry::Route => {
            cluster.metrics.error("timeout");
            ProxyError::UpstreamTimeout(route.unwrap_or_default())
        }
        Expiry::Idle => {
            cluster.metrics.error("timeout");
            tracing::debug!(cluster = %cluster.name, ?idle, "stream idle timeout waiting for the response head");
            ProxyError::StreamIdleTimeout {
                after: idle,
                upload: false,
            }
        }
        Expiry::Upload => {
            tracing::debug!(cluster = %cluster.name, ?idle, "stream idle timeout: the request body stalled");
            ProxyError::StreamIdleTimeout {
                after: idle,
                upload: true,
            }
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

    #[test]
    fn the_route_timeout_starts_at_the_end_of_the_body() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // Uploading: only the stream idle timeout, from the body's last progress.
        assert_eq!(
            next_deadline(Some(t0 + s(100)), t0, Some(s(15)), Some(s(300))),
            Some((t0 + s(400), Expiry::Upload))
        );
        assert_eq!(next_deadline(Some(t0), t0, Some(s(15)), None), None);
        // Body done at t0 + 100 s: the route timeout counts from there.
        assert_eq!(
            next_deadline(None, t0 + s(100), Some(s(15)), Some(s(300))),
            Some((t0 + s(115), Expiry::Route))
        );
        // A stream idle timeout shorter than the route timeout wins; a tie is the route's.
        assert_eq!(
            next_deadline(None, t0, Some(s(15)), Some(s(5))),
            Some((t0 + s(5), Expiry::Idle))
        );
        assert_eq!(
            next_deadline(None, t0, Some(s(5)), Some(s(5))),
            Some((t0 + s(5), Expiry::Route))
        );
        assert_eq!(
            next_deadline(None, t0, None, Some(s(5))),
            Some((t0 + s(5), Expiry::Idle))
        );
        assert_eq!(next_deadline(None, t0, None, None), None);
    }
}
