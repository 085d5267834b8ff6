//! The upstream call: the one function that owns pick → admit → pool → send → classify →
//! retry for a request. Each attempt picks its endpoint (avoiding the ones earlier attempts
//! used), is admitted by the circuit breakers, reports its outcome to outlier detection, and
//! its result goes through the retry decision (`cluster::retry`), the retry budget and the
//! `max_retries` breakers; every failure is classified in one place
//! ([`ProxyError::classify`]).
//!
//! The common case stays small: a request the policy could only retry while it is provably
//! unsent (the default policy) is sent without a copy, inline; everything else — a request the
//! policy may resend (its head and a bounded replay buffer of its body are kept), per-try
//! timeouts, backoff — runs in a boxed future that only such requests pay for.

use super::pool::{EndpointPool, Lease, Pools, SendError, UpstreamBody, UpstreamProtocol, Via};
use super::retry::{Attempted, Reason, Resend, RetryPolicy};
use super::{ClusterHandle, Transport};
use crate::breaker::{Gauge, Held, RouteBreaker, Threshold};
pub(crate) use crate::endpoint::ActiveRequest;
use crate::error::ProxyError;
use crate::lb::PickContext;
use crate::message::fields;
use crate::message::replay::ReplayBody;
use crate::message::reqbody::{FaultNote, RequestBody};
use crate::metrics::ClusterMetrics;
use crate::otel::{AttemptEnd, TraceContext};
use crate::outlier::Outcome;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

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
    /// The route's retry policy.
    pub(crate) retry: &'a RetryPolicy,
    /// The route's own circuit breakers, if it has any.
    pub(crate) route_breaker: Option<&'a RouteBreaker>,
    /// The request's hash from the route's `hash_policy` (hash-based balancers); `NonZeroU64`
    /// so the call stays a word smaller in the request's future.
    pub(crate) hash: Option<std::num::NonZeroU64>,
    /// The request's trace when it is sampled: each retry gets a client span of its own.
    pub(crate) trace: Option<&'a TraceContext>,
}

/// A response head from an upstream and what holds its connection and endpoint.
#[derive(Debug)]
pub(crate) struct Upstream {
    pub(crate) response: Response<Incoming>,
    /// The connection (HTTP/1.1) or stream slot (HTTP/2), released when the body ends.
    pub(crate) lease: Lease,
    /// Counts the request on its endpoint (and breakers) until the response body is done.
    pub(crate) active: ActiveRequest,
    /// The endpoint that answered.
    pub(crate) endpoint: SocketAddr,
    /// Attempts made (1 without retries).
    pub(crate) attempts: u32,
    /// The response was one the policy retries, but a limit (attempts, budget, breaker,
    /// replay buffer) refused (Envoy's `URX`).
    pub(crate) retries_exhausted: bool,
}

/// The attempts of one request so far: how many, and the endpoints they used.
#[derive(Debug, Default)]
struct Attempts {
    number: u32,
    tried: Vec<SocketAddr>,
}

/// A route breaker's slot for the request's life.
type RouteSlot = Option<Held<Arc<Gauge>>>;

/// Sends `request` through `call.cluster` under the route and stream idle timeouts.
pub(crate) fn send<'a>(
    call: Call<'a>,
    request: Request<RequestBody>,
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

/// The attempt loop, without the route timeout (see [`send`]).
pub(crate) async fn attempts(
    call: Call<'_>,
    request: Request<RequestBody>,
) -> Result<Upstream, ProxyError> {
    let route = admit_route(&call)?;
    call.cluster.budget.deposit(
        &budget_config(&call),
        call.worker,
        crate::clock::coarse_now(),
    );
    if keeps_copy(&call, &request) {
        // Its own statement: the temporaries of an `.await`'s statement stay in this future.
        let resilient = with_copy(call, request, route);
        return resilient.await;
    }
    // The common case: one attempt, inline; a retry of an unsent request continues boxed.
    let attempts = Attempts {
        number: 1,
        tried: Vec::new(),
    };
    let (pool, active, endpoint) = admit(&call, &attempts)?;
    let request = request.map(UpstreamBody::Direct);
    let sent_at = Instant::now();
    // Awaited in their own statements, so that neither the send's future nor its result stays
    // in this future while a retry runs (the temporaries of a `match`'s scrutinee would).
    let sent = pool.send(request, call.proto, via(&call)).await;
    // One clock read for the balancer's latency estimate and the latency histogram.
    let took = sent_at.elapsed();
    active
        .state()
        .observe_latency_or_failure(sent.is_ok(), took);
    let retry = match first_result(call, sent, took, attempts, active, endpoint, route) {
        Ok(done) => return done,
        Err(retry) => retry,
    };
    retry.await
}

/// A call's future, boxed.
type Boxed<'a> = Pin<Box<dyn Future<Output = Result<Upstream, ProxyError>> + 'a>>;

/// The outcome of the inline first attempt: the result, or the boxed loop that retries it
/// (only an unsent request is retried here: the inline path keeps no copy).
fn first_result<'a>(
    call: Call<'a>,
    sent: Result<(Response<Incoming>, Lease), SendError>,
    took: Duration,
    mut attempts: Attempts,
    mut active: ActiveRequest,
    endpoint: SocketAddr,
    route: RouteSlot,
) -> Result<Result<Upstream, ProxyError>, Boxed<'a>> {
    match sent {
        Ok((response, lease)) => {
            if let Err(e) = check_response(&response, &call.cluster.metrics) {
                return Ok(Err(e));
            }
            call.cluster
                .metrics
                .response(response.status().as_u16(), took);
            report(
                &call,
                &active,
                endpoint,
                Outcome::of_status(response.status().as_u16()),
            );
            active.hold_route(route);
            Ok(Ok(Upstream {
                response,
                lease,
                active,
                endpoint,
                attempts: attempts.number,
                retries_exhausted: false,
            }))
        }
        Err(SendError { error, request }) => {
            let error = blame(error, call.body_fault, &call.cluster.metrics);
            report_failure(&call, &active, endpoint, &error);
            drop(active);
            let retry = request.and_then(|r| {
                let reason = may_retry(&call, &attempts, Attempted::Failed(&error), None).ok()?;
                let (next, slots) = prepare_retry(&call, Some(r), None)?;
                Some((
                    next,
                    Retrying {
                        reason,
                        retry_after: None,
                        slots,
                    },
                ))
            });
            match retry {
                Some((next, retrying)) => {
                    trace_retried(
                        &call,
                        attempts.number,
                        endpoint,
                        AttemptEnd::Failed(error.flag()),
                    );
                    attempts.tried.push(endpoint);
                    Err(Box::pin(resilient(
                        call,
                        next,
                        None,
                        attempts,
                        route,
                        Some(retrying),
                    )))
                }
                None => Ok(Err(error)),
            }
        }
    }
}

/// True when the retry policy may resend this request after it reached the upstream, so it
/// needs a copy (see [`RetryPolicy::keeps_copy`]).
fn keeps_copy(call: &Call<'_>, request: &Request<RequestBody>) -> bool {
    let http2 = call.proto == UpstreamProtocol::Http2;
    // The policy first: the default one never copies toward HTTP/1.1, and then the request's
    // length is not looked up.
    if !call.retry.may_keep_copy(http2) {
        return false;
    }
    let body_len = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .or_else(|| http_body::Body::is_end_stream(request.body()).then_some(0));
    call.retry
        .keeps_copy(request.method(), request.headers(), body_len, http2)
}

/// The attempt loop of a request the retry policy may resend after it reached the upstream,
/// with the request's copy, boxed (the common case does not pay for it).
fn with_copy<'a>(call: Call<'a>, request: Request<RequestBody>, route: RouteSlot) -> Boxed<'a> {
    let (parts, body) = request.into_parts();
    let body = ReplayBody::new(body, call.retry.replay_limit);
    let copy = Copy {
        resendable: call.retry.resendable(&parts.method, &parts.headers),
        head: Head::of(&parts),
        body: body.handle(),
    };
    let first = Request::from_parts(parts, UpstreamBody::Replay(body));
    Box::pin(resilient(
        call,
        first,
        Some(copy),
        Attempts::default(),
        route,
        None,
    ))
}

/// The head of a request kept for a resend.
#[derive(Debug)]
struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Head {
    fn of(p: &http::request::Parts) -> Self {
        Head {
            method: p.method.clone(),
            uri: p.uri.clone(),
            version: p.version,
            headers: p.headers.clone(),
        }
    }
}

/// What a request that may be resent keeps: its head and a handle on its body's replay
/// buffer (never polled itself).
#[derive(Debug)]
struct Copy {
    head: Head,
    body: ReplayBody<RequestBody>,
    /// The method is idempotent (or listed, or keyed): every condition may resend it; else
    /// only the policy's gRPC codes.
    resendable: bool,
}

impl Copy {
    /// A request for the next attempt, or `None` when the body can no longer be replayed.
    fn request(&self) -> Option<Request<UpstreamBody>> {
        let body = self.body.replay()?;
        let mut r = Request::new(UpstreamBody::Replay(body));
        *r.method_mut() = self.head.method.clone();
        *r.uri_mut() = self.head.uri.clone();
        *r.version_mut() = self.head.version;
        *r.headers_mut() = self.head.headers.clone();
        Some(r)
    }

    fn replayable(&self) -> bool {
        self.body.replayable()
    }
}

/// A retry decided on and admitted: why, how long the upstream asked to wait, and the
/// `max_retries` breaker slots it holds.
#[derive(Debug)]
struct Retrying {
    reason: Reason,
    retry_after: Option<Duration>,
    slots: RetrySlots,
}

/// The attempt loop for requests that may be retried (the boxed, rarer path): counts and
/// waits out `retrying` (if any), sends `request` (attempt `attempts.number + 1`), and goes
/// on while the policy, the limits and the replay buffer allow.
async fn resilient(
    call: Call<'_>,
    mut request: Request<UpstreamBody>,
    copy: Option<Copy>,
    mut attempts: Attempts,
    route: RouteSlot,
    mut retrying: Option<Retrying>,
) -> Result<Upstream, ProxyError> {
    // The slots of the retry in flight.
    let mut _slots: Option<RetrySlots> = None;
    loop {
        if let Some(r) = retrying.take() {
            call.cluster.metrics.retries.inc(r.reason.as_str());
            let wait = call
                .retry
                .backoff(attempts.number, fastrand::u64(..))
                .max(r.retry_after.unwrap_or_default());
            tracing::debug!(cluster = %call.cluster.name, attempt = attempts.number + 1, reason = r.reason.as_str(), ?wait, "retrying upstream request");
            _slots = Some(r.slots);
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            if let Some(t) = call.trace {
                t.retry(request.headers_mut());
            }
        }
        attempts.number += 1;
        let (pool, mut active, endpoint) = admit(&call, &attempts)?;
        let sent = pool.send(request, call.proto, via(&call));
        let sent_at = Instant::now();
        let result = match call.retry.per_try_timeout {
            Some(d) => PerTry::new(sent, d, call.body_fault).await,
            None => sent.await,
        };
        let took = sent_at.elapsed();
        active
            .state()
            .observe_latency_or_failure(result.is_ok(), took);
        let next = match result {
            Ok((response, lease)) => {
                check_response(&response, &call.cluster.metrics)?;
                let status = response.status();
                call.cluster.metrics.response(status.as_u16(), took);
                report(
                    &call,
                    &active,
                    endpoint,
                    Outcome::of_status(status.as_u16()),
                );
                let headers = response.headers();
                let mut exhausted = false;
                let next = may_retry(
                    &call,
                    &attempts,
                    Attempted::Response { status, headers },
                    copy.as_ref(),
                )
                .map_err(|limited| exhausted = limited)
                .ok()
                .and_then(|reason| {
                    match call
                        .retry
                        .retry_after(status, headers, std::time::SystemTime::now())
                    {
                        Ok(after) => Some((reason, after)),
                        Err(()) => {
                            call.cluster.metrics.retry_limited.inc("retry_after");
                            exhausted = true;
                            None
                        }
                    }
                })
                .and_then(|(reason, after)| {
                    let prepared = prepare_retry(&call, None, copy.as_ref());
                    exhausted |= prepared.is_none();
                    prepared.map(|(next, slots)| {
                        (
                            next,
                            Retrying {
                                reason,
                                retry_after: after,
                                slots,
                            },
                        )
                    })
                });
                match next {
                    // The response is dropped unread: its connection is closed, not pooled.
                    Some(next) => {
                        trace_retried(
                            &call,
                            attempts.number,
                            endpoint,
                            AttemptEnd::Status(status.as_u16()),
                        );
                        next
                    }
                    None => {
                        active.hold_route(route);
                        return Ok(Upstream {
                            response,
                            lease,
                            active,
                            endpoint,
                            attempts: attempts.number,
                            retries_exhausted: exhausted,
                        });
                    }
                }
            }
            Err(SendError {
                error,
                request: unsent,
            }) => {
                let error = blame(error, call.body_fault, &call.cluster.metrics);
                report_failure(&call, &active, endpoint, &error);
                tracing::debug!(cluster = %call.cluster.name, %endpoint, attempt = attempts.number, error = %error, flag = error.flag(), "upstream attempt failed");
                let next = may_retry(&call, &attempts, Attempted::Failed(&error), copy.as_ref())
                    .ok()
                    .and_then(|reason| {
                        prepare_retry(&call, unsent, copy.as_ref()).map(|(next, slots)| {
                            (
                                next,
                                Retrying {
                                    reason,
                                    retry_after: None,
                                    slots,
                                },
                            )
                        })
                    });
                match next {
                    Some(next) => {
                        trace_retried(
                            &call,
                            attempts.number,
                            endpoint,
                            AttemptEnd::Failed(error.flag()),
                        );
                        next
                    }
                    None => return Err(error),
                }
            }
        };
        drop(active);
        attempts.tried.push(endpoint);
        (request, retrying) = (next.0, Some(next.1));
    }
}

/// Whether the policy retries this result and the attempt count and retry budget allow it;
/// refusals by a limit are counted, and are `Err(true)` (`Err(false)`: not a result the policy
/// retries).
fn may_retry(
    call: &Call<'_>,
    attempts: &Attempts,
    result: Attempted<'_>,
    copy: Option<&Copy>,
) -> Result<Reason, bool> {
    let resend = match copy {
        Some(c) if c.replayable() && c.resendable => Resend::Any,
        Some(c) if c.replayable() => Resend::GrpcStatus,
        _ => Resend::No,
    };
    let metrics = &call.cluster.metrics;
    let Some(reason) = call.retry.reason(result, resend) else {
        if copy.is_some_and(|c| !c.replayable()) && call.retry.reason(result, Resend::Any).is_some()
        {
            // Retried, had the body fitted the replay buffer.
            metrics.retry_limited.inc("replay_limit");
            return Err(true);
        }
        return Err(false);
    };
    if attempts.number > call.retry.num_retries {
        metrics.retry_limited.inc("num_retries");
        return Err(true);
    }
    if !call.cluster.budget.withdraw(
        &budget_config(call),
        call.worker,
        crate::clock::coarse_now(),
    ) {
        metrics.retry_limited.inc("budget");
        tracing::debug!(cluster = %call.cluster.name, "retry budget exhausted");
        return Err(true);
    }
    Ok(reason)
}

/// The request for a retry (the unsent one handed back, or one rebuilt from the copy) and
/// its `max_retries` slots; `None` (counted) when the body cannot be replayed or a breaker
/// is full.
fn prepare_retry(
    call: &Call<'_>,
    unsent: Option<Request<UpstreamBody>>,
    copy: Option<&Copy>,
) -> Option<(Request<UpstreamBody>, RetrySlots)> {
    let metrics = &call.cluster.metrics;
    let Some(next) = unsent.or_else(|| copy.and_then(Copy::request)) else {
        metrics.retry_limited.inc("replay_limit");
        return None;
    };
    match RetrySlots::acquire(call) {
        Some(slots) => Some((next, slots)),
        None => {
            metrics.retry_limited.inc("circuit_breaker");
            None
        }
    }
}

/// A retry's slots in the cluster's and the route's `max_retries` breakers.
#[derive(Debug)]
struct RetrySlots {
    cluster: Arc<crate::endpoint::EndpointGroup>,
    _route: RouteSlot,
}

impl RetrySlots {
    fn acquire(call: &Call<'_>) -> Option<Self> {
        let route = match call.route_breaker {
            Some(rb) => match Held::try_new(Arc::clone(&rb.retries)) {
                Some(h) => Some(h),
                None => {
                    rb.overflow_retries.inc();
                    return None;
                }
            },
            None => None,
        };
        if !call.cluster.shared.breakers.retries.try_acquire() {
            call.cluster
                .metrics
                .overflows
                .inc(Threshold::Retries.as_str());
            return None;
        }
        Some(RetrySlots {
            cluster: Arc::clone(&call.cluster.shared),
            _route: route,
        })
    }
}

impl Drop for RetrySlots {
    fn drop(&mut self) {
        self.cluster.breakers.retries.release();
    }
}

/// The route breaker's request slot, or 503 `UO` when the route is full.
fn admit_route(call: &Call<'_>) -> Result<RouteSlot, ProxyError> {
    match call.route_breaker {
        None => Ok(None),
        Some(rb) => match Held::try_new(Arc::clone(&rb.requests)) {
            Some(h) => Ok(Some(h)),
            None => {
                rb.overflow_requests.inc();
                tracing::debug!(route = %rb.route, "route circuit breaker overflow");
                Err(ProxyError::Overflow {
                    scope: "route",
                    breaker: Threshold::Requests.as_str(),
                })
            }
        },
    }
}

/// The cluster's retry budget settings (the defaults while it is not configured).
fn budget_config(call: &Call<'_>) -> sluice_config::RetryBudget {
    call.cluster
        .settings_guard()
        .as_ref()
        .map(|s| s.config.retry_budget)
        .unwrap_or_default()
}

fn via<'a>(call: &Call<'a>) -> Via<'a> {
    Via {
        metrics: &call.cluster.metrics,
        shared: &call.cluster.shared,
    }
}

/// Ends the client span of an attempt that is retried, when the request is traced.
fn trace_retried(call: &Call<'_>, attempt: u32, endpoint: SocketAddr, end: AttemptEnd<'_>) {
    if let Some(t) = call.trace {
        t.attempt_retried(&call.cluster.name, attempt, endpoint, end);
    }
}

/// Reports an attempt's outcome to outlier detection; an ejection is counted and logged.
fn report(call: &Call<'_>, active: &ActiveRequest, endpoint: SocketAddr, outcome: Outcome) {
    let ejected = active.state().report(
        outcome,
        || call.cluster.endpoints_guard().endpoints.len(),
        crate::clock::coarse_now(),
    );
    if let Some((reason, d)) = ejected {
        super::outlier::ejected(call.cluster, endpoint, reason, d, None);
    }
}

/// Reports a failed attempt: an upstream's failure is a gateway failure; the client's own
/// (a failed request body) and local refusals (breakers) say nothing about the endpoint.
fn report_failure(call: &Call<'_>, active: &ActiveRequest, endpoint: SocketAddr, e: &ProxyError) {
    if e.side() == crate::error::Side::Upstream {
        report(call, active, endpoint, Outcome::Gateway);
    }
}

/// Picks an endpoint for this attempt, counts the request on it (refused when the cluster's
/// `max_requests` breaker is full) and finds the worker's pool.
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
    let Some(active) = endpoint.state.try_admit() else {
        call.cluster
            .metrics
            .overflows
            .inc(Threshold::Requests.as_str());
        return Err(ProxyError::Overflow {
            scope: "cluster",
            breaker: Threshold::Requests.as_str(),
        });
    };
    let pool = call.pools.endpoint(endpoint, &settings.transport);
    Ok((pool, active, endpoint.address))
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

/// Sends an upgrade request (WebSocket) on a dedicated HTTP/1.1 connection to a picked
/// endpoint, under the route timeout.
pub(crate) async fn send_upgrade(
    call: Call<'_>,
    request: Request<RequestBody>,
) -> Result<(Response<Incoming>, ActiveRequest, SocketAddr), ProxyError> {
    let (pool, active, endpoint) = admit(
        &call,
        &Attempts {
            number: 1,
            tried: Vec::new(),
        },
    )?;
    let request = request.map(UpstreamBody::Direct);
    let resp = RouteTimeout::new(pool.send_upgrade(request, via(&call)), &call).await?;
    Ok((resp, active, endpoint))
}

/// Picks an endpoint for a TCP connection and connects to it through the cluster's connector,
/// under the cluster's `max_connections` breaker (the slot is held for the connection's life).
pub(crate) async fn connect_tcp(
    cluster: &ClusterHandle,
    worker: usize,
) -> Result<
    (
        super::connect::CountedIo,
        ActiveRequest,
        SocketAddr,
        impl Sized,
    ),
    ProxyError,
> {
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
    let via = Via {
        metrics: &cluster.metrics,
        shared: &cluster.shared,
    };
    let (stream, slot) =
        super::pool::open_counted(&connector, addr, via, crate::tls::Alpn::None).await?;
    Ok((stream, active, addr, slot))
}

pin_project_lite::pin_project! {
    /// One attempt under the retry policy's per-try timeout, counted from the attempt's start
    /// or, while the request body still streams, from the body's end (the stream idle
    /// timeout bounds a stalled upload).
    struct PerTry<'a, F> {
        #[pin]
        fut: F,
        sleep: Option<Pin<Box<tokio::time::Sleep>>>,
        limit: Duration,
        started: Instant,
        body: Option<&'a FaultNote>,
    }
}

impl<'a, F> PerTry<'a, F> {
    fn new(fut: F, limit: Duration, body: Option<&'a FaultNote>) -> Self {
        PerTry {
            fut,
            sleep: None,
            limit,
            started: Instant::now(),
            body,
        }
    }
}

impl<T, F: Future<Output = Result<T, SendError>>> Future for PerTry<'_, F> {
    type Output = Result<T, SendError>;

    #[allow(clippy::result_large_err)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.fut.poll(cx) {
            return Poll::Ready(v);
        }
        if this.sleep.is_none() {
            let from = match this.body {
                None => Some(*this.started),
                Some(b) => match b.ended() {
                    Some(end) => Some(end.max(*this.started)),
                    None => {
                        b.wake_on_end(cx.waker());
                        None
                    }
                },
            };
            if let Some(from) = from {
                *this.sleep = Some(Box::pin(tokio::time::sleep_until(from + *this.limit)));
            }
        }
        match this.sleep.as_mut() {
            Some(s) => s.as_mut().poll(cx).map(|()| {
                Err(SendError {
                    error: ProxyError::PerTryTimeout(*this.limit),
                    request: None,
                })
            }),
            None => Poll::Pending,
        }
    }
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
