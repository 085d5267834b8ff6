//! The request path of an HTTP listener: plan (check the request, route it, build the upstream
//! request) → call (`cluster::call`, which owns pick, pool, send and classification) → finish
//! (`http::finish`); or answer directly (direct response, redirect, error).

use crate::cluster::UpstreamProtocol;
use crate::cluster::call::{self, Call};
use crate::drain::Drain;
use crate::error::ProxyError;
use crate::http::body::ResponseBody;
use crate::http::body::Tracker;
use crate::http::conn::ConnState;
use crate::http::filters::grpc_web;
use crate::http::filters::{RequestHead as FilterRequest, ResponseFlag, Verdict, WaitFuture};
use crate::http::finish::{ResponseMeta, finish};
use crate::http::respond::ErrorContext;
use crate::http::{ConnContext, CurrentSpec, HttpSpec};
use crate::http::{decide, edge, grpc, headers, respond, upgrade};
use crate::local::Worker;
use crate::message::reqbody::{FaultNote, RequestBody};
use crate::message::{fields, trailers};
use crate::route::{Action, Forward, RequestHead, Route, VirtualHost};
use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TE, TRAILER};
use http::request::Parts;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use std::rc::Rc;
use std::sync::Arc;

/// Everything one downstream HTTP connection's requests share.
#[derive(Debug)]
pub(crate) struct HttpConn {
    pub(crate) worker: Rc<Worker>,
    pub(crate) state: Arc<ConnState>,
    pub(crate) drain: Drain,
    /// What the listener knows about the connection (peer, TLS, scheme).
    pub(crate) info: ConnContext,
    /// The client's IP, formatted once per connection (for `x-forwarded-for`).
    pub(crate) client_ip: HeaderValue,
    /// The listener's current settings on this worker (replaced by the worker when the
    /// listener's config changes; a removed listener's connections keep the last ones while
    /// they drain).
    spec: Rc<CurrentSpec>,
}

impl HttpConn {
    /// The listener's current settings (an `Rc` clone).
    #[allow(clippy::redundant_allocation)]
    pub(crate) fn spec(&self) -> Rc<Arc<HttpSpec>> {
        self.spec.get()
    }

    /// The shared state of a new connection (built by the listener, which hands it to
    /// `http::server::serve` with the byte stream: one pointer, so the connection's task stays
    /// small).
    pub(crate) fn new(
        worker: Rc<Worker>,
        drain: Drain,
        info: ConnContext,
        spec: Rc<CurrentSpec>,
        http2: bool,
    ) -> Rc<Self> {
        let current = spec.get();
        let state = ConnState::new(
            !http2,
            current.settings.http2.premature_reset_stream_count,
            current.metrics.clone(),
        );
        let client_ip =
            HeaderValue::from_maybe_shared(bytes::Bytes::from(info.peer.ip().to_string()))
                .unwrap_or(HeaderValue::from_static("unknown"));
        Rc::new(HttpConn {
            worker,
            state,
            drain,
            info,
            client_ip,
            spec,
        })
    }
}

/// hyper's service entry point for one request.
///
/// plan (synchronous: checks, routing, cluster choice) → request filters (synchronous unless a
/// filter waits) → the upstream call (`cluster::call`, the one await on the common path) →
/// finish (synchronous). Nesting async functions would copy the request into each one's state
/// (rustc does not overlap them), and this future is moved into a box for every request.
pub(crate) async fn handle(
    conn: Rc<HttpConn>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, StreamReset> {
    let (mut inflight, smuggled) = conn.state.begin_request();
    let spec = conn.spec();
    let http: &HttpSpec = &spec;
    let http1 = req.version() != Version::HTTP_2;
    let method = crate::metrics::MethodIndex::of(req.method());
    let error_ctx = ErrorContext::of(req.headers());
    // A gRPC-Web client gets Sluice's own gRPC answers with its content type.
    let grpc_web = if error_ctx.grpc {
        grpc_web::Mode::of(req.headers())
    } else {
        None
    };
    // The request's start: the duration histogram, and the completion hook when a filter
    // wants it.
    let started = tokio::time::Instant::now();
    // The access log's record (only when the listener logs and the request is sampled).
    let mut record = http
        .access_log
        .as_ref()
        .and_then(|l| l.record(&req, &conn.info));
    // The virtual host and route the request matched, if any.
    let mut routed = None;
    let mut endpoint = None;
    // Attempts and whether a limit refused a retry, and the request body's note, for the
    // access log.
    let mut attempts = (0, false);
    let mut body_note = None;
    // The request's trace, when tracing is on and the request is sampled.
    let mut trace = http
        .tracer
        .as_ref()
        .and_then(|t| t.start_request(&req, conn.info.scheme()));
    // The cluster the request was sent to: the gRPC status counters (`none` for answers that
    // reached none), the access log and the trace.
    let mut sent_to: Option<&crate::cluster::ClusterHandle> = None;
    // Each arm moves its payload out, so only the payload of the taken arm lives across the
    // await.
    let mut step = prepare(&conn, http, req, smuggled, &mut routed);
    let result = loop {
        break match step {
            Step::Answer(r) => r,
            // The upstream call, inlined: a nested async function would add its arguments' storage
            // (≈400 bytes, measured) to every request's future.
            Step::Send(send) => {
                let Send {
                    call,
                    mut request,
                    meta,
                    fault,
                    announce,
                } = send;
                sent_to = Some(meta.cluster);
                if let Some(t) = trace.as_deref() {
                    t.propagate(request.headers_mut());
                }
                let call = Call {
                    body_fault: fault.as_ref(),
                    trace: trace.as_deref(),
                    ..call
                };
                if let (Some(r), Some(log)) = (record.as_mut(), http.access_log.as_deref()) {
                    r.forwarded(log, request.headers());
                    body_note = fault.clone();
                }
                let sent = if announce {
                    // Rare (HTTP/2 → HTTP/1.1 with a body): boxed.
                    Box::pin(announce_then_send(call, request)).await
                } else {
                    call::send(call, request).await
                };
                match sent.map(|up| {
                    endpoint = Some(up.endpoint);
                    attempts = (up.attempts, up.retries_exhausted);
                    finish(&meta, up)
                }) {
                    Ok(resp) if announces_trailers(&meta, &resp) => {
                        Ok(Box::pin(announce_response(resp)).await)
                    }
                    other => other,
                }
            }
            // Rare paths, boxed to keep this future small.
            Step::Upgrade(send, down) => {
                let Send {
                    call,
                    mut request,
                    meta,
                    ..
                } = send;
                sent_to = Some(meta.cluster);
                if let Some(t) = trace.as_deref() {
                    t.propagate(request.headers_mut());
                }
                if let (Some(r), Some(log)) = (record.as_mut(), http.access_log.as_deref()) {
                    r.forwarded(log, request.headers());
                }
                let r = Box::pin(upgrade::forward(call, request, down, &conn.drain, meta)).await;
                if r.as_ref()
                    .is_ok_and(|r| r.status() == http::StatusCode::SWITCHING_PROTOCOLS)
                {
                    // The bytes that follow are the tunnel's: the connection's scans stop.
                    conn.state.set_upgraded();
                }
                r
            }
            // A request filter that waits (a fault delay) resumes the chain, boxed; what it ends
            // in is answered or sent by the arms above like any other request, so it keeps its
            // trace, access log and gRPC status.
            Step::Wait(plan, fut, next) => {
                step = Box::pin(after_wait(&conn, http, *plan, fut, next)).await;
                continue;
            }
        };
    };
    let mut flag = None;
    let mut resp = match result {
        Ok(resp) => {
            // A filter's own answer may carry a response flag (a fault abort: `FI`).
            if let Some(f) = resp.extensions().get::<ResponseFlag>() {
                spec.metrics.error(f.0);
                flag = Some(f.0);
            }
            resp
        }
        Err(e) => {
            tracing::debug!(listener = %spec.name, error = %e, flag = e.flag(), side = ?e.side(), "request failed");
            if e.is_upstream_failure()
                && let Some(c) = sent_to
            {
                let route = routed.map(|(_, r)| r.name.as_str());
                c.warn_failure(&e, "upstream request failed", &spec.name, route);
            }
            spec.metrics.error(e.flag());
            if let Some(reason) = e.rejection() {
                spec.metrics.rejected(reason);
            }
            if !http1 && let Some(reason) = respond::stream_reset(&e) {
                // hyper resets the stream with the reason in the service's error; Sluice ends
                // it, so it is not the client's premature reset.
                inflight.complete();
                return Err(StreamReset(h2::Error::from(reason)));
            }
            flag = Some(e.flag());
            let mut resp = respond::error(&e, error_ctx);
            if let Some(mode) = grpc_web
                && resp.headers().contains_key("grpc-status")
            {
                mode.response_head(resp.headers_mut());
            }
            resp
        }
    };
    if http1 && conn.drain.is_draining() {
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    // One clock read for the listener's and the route's latency.
    let took = started.elapsed();
    spec.metrics.response(resp.status().as_u16(), took);
    spec.metrics.response_code(method, resp.status().as_u16());
    if let Some((_, route)) = routed {
        route.metrics.response(resp.status().as_u16(), took);
    }
    if error_ctx.grpc {
        let cluster = sent_to.map_or("none", |c| c.name.as_str());
        grpc::track_status(&mut resp, &spec.metrics, cluster);
    }
    if let Some(t) = trace.as_mut() {
        t.route = routed.map(|(_, route)| route.name.clone());
        t.cluster = sent_to.map(|c| c.name.clone());
        t.attempts = attempts.0;
    }
    if http.filters.wants_completion() || trace.is_some() {
        if let (Some(r), Some(log)) = (record.as_mut(), http.access_log.as_deref()) {
            if let Some((vh, route)) = routed {
                r.virtual_host = Some(vh.name.clone());
                r.route = Some(route.name.clone());
            }
            r.cluster = sent_to.map(|c| c.name.clone());
            (r.attempts, r.retries_exhausted) = attempts;
            r.responded(log, resp.headers());
        }
        let status = resp.status();
        resp.body_mut().track_completion(Tracker::new(
            http.filters.clone(),
            started,
            status,
            endpoint,
            flag,
            crate::http::body::Observers {
                record,
                body: body_note,
                trace,
            },
        ));
    }
    resp.body_mut().set_inflight(inflight);
    // From here the stream idle timeout of an HTTP/2 stream is enforced by its task.
    crate::http::stream::responding();
    Ok(resp)
}

/// What the synchronous part decided.
enum Step<'a> {
    /// Answered (direct response, redirect, a filter, or an error).
    Answer(Result<Response<ResponseBody>, ProxyError>),
    /// Forward upstream.
    Send(Send<'a>),
    /// Forward a WebSocket upgrade.
    Upgrade(Send<'a>, hyper::upgrade::OnUpgrade),
    /// A request filter waits; resume the chain at the index after it.
    Wait(Box<Plan<'a>>, WaitFuture, usize),
}

/// The service's error: an HTTP/2 stream to reset instead of answered (hyper resets it with
/// the `h2::Reason` it finds in the error's source chain). HTTP/1.1 requests never get one.
#[derive(Debug, thiserror::Error)]
#[error("stream reset: {0}")]
pub(crate) struct StreamReset(#[source] h2::Error);

/// A request ready for the upstream call.
struct Send<'a> {
    call: Call<'a>,
    request: Request<RequestBody>,
    meta: ResponseMeta<'a>,
    /// Where the request body notes how it failed (only when it has a body).
    fault: Option<FaultNote>,
    /// HTTP/2 → HTTP/1.1 with a body and no `Trailer` header: find and announce its trailers
    /// (`message/trailers.rs`) before sending.
    announce: bool,
}

/// Reads the request body ahead to announce its trailers, then sends it; the read-ahead is
/// under the call's timeouts too (the stream idle timeout bounds a stalled body).
async fn announce_then_send(
    call: Call<'_>,
    req: Request<RequestBody>,
) -> Result<call::Upstream, ProxyError> {
    let send = async move {
        let (mut parts, mut body) = req.into_parts();
        trailers::announce(&mut parts.headers, &mut body).await;
        call::attempts(call, Request::from_parts(parts, body)).await
    };
    call::under_timeouts(send, &call).await
}

/// Reads the response body ahead to announce its trailers (see [`announces_trailers`]).
async fn announce_response(resp: Response<ResponseBody>) -> Response<ResponseBody> {
    let (mut parts, mut body) = resp.into_parts();
    trailers::announce(&mut parts.headers, &mut body).await;
    Response::from_parts(parts, body)
}

/// True when a response that may end with trailers (from an HTTP/2 upstream, or chunked from
/// an HTTP/1.1 one) goes to an HTTP/1.1 client that accepts trailers, with a body and no
/// `Trailer` header: its trailers must be found and announced.
fn announces_trailers(meta: &ResponseMeta<'_>, resp: &Response<ResponseBody>) -> bool {
    decide::announce_response_trailers(
        meta.wants_trailers,
        meta.downstream_version,
        meta.upstream_http2,
        resp.headers().contains_key(CONTENT_LENGTH),
        resp.headers().contains_key(TRAILER),
        http_body::Body::is_end_stream(resp.body()),
    )
}

/// plan → request filters → the upstream request, all synchronous.
fn prepare<'a>(
    conn: &'a HttpConn,
    http: &'a HttpSpec,
    req: Request<Incoming>,
    smuggled: bool,
    routed: &mut Option<Routed<'a>>,
) -> Step<'a> {
    match plan(conn, http, req, smuggled, routed) {
        Ok(Planned::Answer(resp)) => Step::Answer(Ok(resp)),
        Ok(Planned::Forward(mut p)) => match request_filters(conn, http, &mut p, 0) {
            Ok(Some(resp)) => Step::Answer(Ok(resp)),
            Ok(None) => match into_send(conn, http, p) {
                Ok((send, None)) => Step::Send(send),
                Ok((send, Some(down))) => Step::Upgrade(send, down),
                Err(e) => Step::Answer(Err(e)),
            },
            Err((fut, next)) => Step::Wait(Box::new(p), fut, next),
        },
        Err(e) => Step::Answer(Err(e)),
    }
}

/// Builds the upstream request and the call for a planned, filtered request.
#[allow(clippy::type_complexity)]
fn into_send<'a>(
    conn: &'a HttpConn,
    http: &HttpSpec,
    p: Plan<'a>,
) -> Result<(Send<'a>, Option<hyper::upgrade::OnUpgrade>), ProxyError> {
    let Plan {
        request,
        fault,
        authority,
        forward,
        proto,
        upgrade,
        meta,
    } = p;
    // Only routes with a hash policy pay for it.
    let hash = forward.hash_policy.as_ref().and_then(|h| {
        let (parts, _) = request.as_ref()?;
        let hash = h.hash(&parts.uri, &parts.headers, conn.info.peer.ip())?;
        std::num::NonZeroU64::new(hash.max(1))
    });
    let (request, announce) =
        upstream_request(request, &authority, forward, proto, &upgrade, &meta, &fault)?;
    let call = Call {
        pools: &conn.worker.pools,
        worker: conn.worker.id,
        cluster: meta.cluster,
        proto,
        timeout: decide::route_timeout(forward.timeout, grpc::deadline(request.headers())),
        stream_idle: http.stream_idle,
        body_fault: None,
        retry: &forward.retry,
        route_breaker: forward.breaker.as_deref(),
        hash,
        trace: None,
    };
    Ok((
        Send {
            call,
            request,
            meta,
            fault,
            announce,
        },
        upgrade,
    ))
}

/// The rest of a request whose filter waited: wait (again, if asked), finish the chain, and
/// say what to do with it (never [`Step::Wait`]).
async fn after_wait<'a>(
    conn: &'a HttpConn,
    http: &'a HttpSpec,
    mut p: Plan<'a>,
    mut fut: WaitFuture,
    mut next: usize,
) -> Step<'a> {
    loop {
        match fut.await {
            Verdict::Continue => {}
            Verdict::Respond(r) => {
                return Step::Answer(Ok(filtered_answer(http, p.meta.vh, p.meta.route, r)));
            }
            Verdict::Wait(f) => {
                fut = f;
                continue;
            }
        }
        match request_filters(conn, http, &mut p, next) {
            Ok(Some(resp)) => return Step::Answer(Ok(resp)),
            Ok(None) => break,
            Err((f, n)) => (fut, next) = (f, n),
        }
    }
    match into_send(conn, http, p) {
        Ok((send, None)) => Step::Send(send),
        Ok((send, Some(down))) => Step::Upgrade(send, down),
        Err(e) => Step::Answer(Err(e)),
    }
}

/// Runs the request filters from `from` on the planned request. `Ok(Some(resp))`: a filter
/// answered; `Err`: a filter waits.
fn request_filters(
    conn: &HttpConn,
    http: &HttpSpec,
    p: &mut Plan<'_>,
    from: usize,
) -> Result<Option<Response<ResponseBody>>, (WaitFuture, usize)> {
    let Some((parts, _)) = p.request.as_mut() else {
        return Ok(None);
    };
    let mut head = FilterRequest {
        method: &parts.method,
        uri: &parts.uri,
        headers: &mut parts.headers,
        conn: &conn.info,
        client_ip: &conn.client_ip,
        virtual_host: p.meta.vh,
        route: p.meta.route,
    };
    let answer = http.filters.on_request(&mut head, from)?;
    Ok(answer.map(|r| filtered_answer(http, p.meta.vh, p.meta.route, r)))
}

/// A filter's own answer gets the response filters like any local answer.
fn filtered_answer(
    http: &HttpSpec,
    vh: &VirtualHost,
    route: &Route,
    answer: Response<Bytes>,
) -> Response<ResponseBody> {
    let (parts, body) = answer.into_parts();
    let mut resp = Response::from_parts(parts, ResponseBody::full(body));
    let status = resp.status();
    http.filters
        .on_response(status, resp.headers_mut(), vh, route);
    resp
}

/// What to do with a request.
enum Planned<'a> {
    /// Answer now (direct response, redirect).
    Answer(Response<ResponseBody>),
    /// Send upstream.
    Forward(Plan<'a>),
}

/// A routed request on its way upstream, and what its response needs.
pub(crate) struct Plan<'a> {
    /// The request head (hop-by-hop headers removed) and body; taken by [`upstream_request`].
    request: Option<(Parts, RequestBody)>,
    /// Where the request body notes how it failed (only when it has a body).
    fault: Option<FaultNote>,
    /// `Host`/`:authority` for the upstream (before a host rewrite).
    authority: HeaderValue,
    forward: &'a Forward,
    proto: UpstreamProtocol,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
    pub(crate) meta: ResponseMeta<'a>,
}

/// The virtual host and route a request matched.
type Routed<'a> = (&'a VirtualHost, &'a Route);

/// Checks and routes the request (noting the match in `routed`); builds the upstream request
/// when the route forwards.
fn plan<'a>(
    conn: &HttpConn,
    http: &'a HttpSpec,
    req: Request<Incoming>,
    smuggled: bool,
    routed: &mut Option<Routed<'a>>,
) -> Result<Planned<'a>, ProxyError> {
    if smuggled {
        return Err(ProxyError::ContentLengthWithTransferEncoding);
    }
    if req.method() == Method::CONNECT {
        return Err(ProxyError::ConnectNotSupported);
    }
    let (mut parts, body) = req.into_parts();
    // The HTTP/1.1 parser strips surrounding whitespace; HTTP/2 delivers values as sent.
    if parts.version == Version::HTTP_2 && !fields::valid_fields(&parts.headers) {
        return Err(ProxyError::InvalidFieldValue);
    }
    let raw_authority = request_authority(&parts)?;
    // The normalize step: routing and the upstream see the checked, normalized head.
    let authority = match http.edge.check(
        &mut parts,
        &raw_authority,
        conn.info.peer.ip(),
        &http.metrics,
    )? {
        edge::Checked::Route { authority } => authority.unwrap_or(raw_authority),
        edge::Checked::Redirect(location) => {
            return Ok(Planned::Answer(respond::redirect(
                StatusCode::TEMPORARY_REDIRECT,
                &location,
            )));
        }
    };
    let host = authority.to_str().unwrap_or_default();
    let head = RequestHead {
        method: &parts.method,
        host,
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &parts.headers,
    };
    let found = http
        .routes
        .find_checked(&head)
        .map_err(|name| ProxyError::DuplicateQueryParameter(name.to_string()))?;
    let Some((vh, route)) = found else {
        return Err(ProxyError::NoRoute {
            host: host.to_string(),
            path: head.path.to_string(),
        });
    };
    tracing::trace!(route = %route.name, virtual_host = %vh.name, "matched");
    *routed = Some((vh, route));
    let mut resp = match &route.action {
        Action::Direct { status, body } => respond::direct(*status, body.clone()),
        Action::Redirect(r) => {
            let scheme = conn.info.scheme();
            let Some(loc) = r.location(scheme, host, head.path, head.query, route.matched_prefix())
            else {
                return Err(ProxyError::MissingHost);
            };
            respond::redirect(r.status, &loc)
        }
        Action::Forward(f) => {
            let authority = authority.clone();
            return plan_forward(http, parts, body, authority, vh, route, f).map(Planned::Forward);
        }
    };
    let status = resp.status();
    http.filters
        .on_response(status, resp.headers_mut(), vh, route);
    Ok(Planned::Answer(resp))
}

/// The request's authority: `:authority` (HTTP/2) or the absolute-form target, else the single
/// `Host` header. HTTP/1.1 requires `Host` (RFC 9112 §3.2); HTTP/1.0 may omit it.
fn request_authority(parts: &Parts) -> Result<HeaderValue, ProxyError> {
    if let Some(a) = parts.uri.authority() {
        return HeaderValue::from_str(a.as_str()).map_err(|_| ProxyError::MissingHost);
    }
    let mut hosts = parts.headers.get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(h), None) => Ok(h.clone()),
        (Some(_), Some(_)) => Err(ProxyError::MultipleHost),
        (None, _) if parts.version == Version::HTTP_10 => Ok(HeaderValue::from_static("")),
        (None, _) => Err(ProxyError::MissingHost),
    }
}

/// Picks the cluster (the endpoint is picked inside the call) and prepares the request for
/// the request filters: upgrade detection, hop-by-hop headers removed.
fn plan_forward<'a>(
    http: &'a HttpSpec,
    mut parts: Parts,
    body: Incoming,
    authority: HeaderValue,
    vh: &'a VirtualHost,
    route: &'a Route,
    f: &'a Forward,
) -> Result<Plan<'a>, ProxyError> {
    let cluster = f
        .backends
        .pick(|| fastrand::u64(..))
        .ok_or_else(|| ProxyError::NoEndpoint(route.name.clone()))?;
    let configured = match &*cluster.settings_guard() {
        Some(s) => s.config.protocol,
        None => return Err(ProxyError::NoCluster(cluster.name.clone())),
    };
    let downstream_version = parts.version;
    // gRPC-Web (`message/grpc_web.rs`): a gRPC request to an HTTP/2 upstream from here on.
    let grpc_web = if route.grpc_web.unwrap_or(http.settings.grpc_web) {
        grpc_web::Mode::of(&parts.headers)
    } else {
        None
    };
    let proto = match grpc_web {
        Some(_) => UpstreamProtocol::Http2,
        None => decide::upstream_protocol(configured, downstream_version),
    };
    let websocket = headers::is_websocket_upgrade(&parts.method, parts.version, &parts.headers);
    // A gRPC-Web client gets its trailers in the body.
    let wants_trailers = grpc_web.is_none()
        && parts
            .headers
            .get(TE)
            .is_some_and(|v| headers::has_token(v, "trailers"));
    let upgrade = if websocket {
        parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
    } else {
        None
    };
    parts.extensions.clear();
    headers::strip_hop_by_hop(&mut parts.headers, websocket);
    if let Some(mode) = grpc_web {
        mode.request_head(&mut parts.headers);
        http.metrics.grpc_web_request(mode.as_str());
        tracing::debug!(listener = %http.name, mode = mode.as_str(), "gRPC-Web request");
    }
    // Room for x-forwarded-for/-proto, x-request-id and Host in one growth of hyper's
    // exactly-sized map instead of several.
    parts.headers.reserve(4);
    let head = parts.method == Method::HEAD;
    let (mut body, fault) = RequestBody::new(body);
    if grpc_web.is_some_and(|m| m.text) {
        body.decode_grpc_web_text();
    }
    let upstream_http2 = decide::wire_protocol(proto, upgrade.is_some()) == UpstreamProtocol::Http2;
    Ok(Plan {
        request: Some((parts, body)),
        fault,
        authority,
        forward: f,
        proto,
        upgrade,
        meta: ResponseMeta {
            vh,
            route,
            cluster,
            filters: &http.filters,
            downstream_version,
            head,
            wants_trailers,
            upstream_http2,
            grpc_web,
        },
    })
}

/// The request as the upstream gets it: target in origin form (HTTP/1.1) or with scheme and
/// authority (HTTP/2), path and host rewrites applied.
/// Also says whether the request's trailers must be found and announced first.
fn upstream_request(
    request: Option<(Parts, RequestBody)>,
    authority: &HeaderValue,
    f: &Forward,
    proto: UpstreamProtocol,
    upgrade: &Option<hyper::upgrade::OnUpgrade>,
    meta: &ResponseMeta<'_>,
    fault: &Option<FaultNote>,
) -> Result<(Request<RequestBody>, bool), ProxyError> {
    let Some((mut parts, body)) = request else {
        return Err(ProxyError::NoEndpoint(meta.cluster.name.clone()));
    };
    let authority = f.host_rewrite.clone().unwrap_or_else(|| authority.clone());
    let path_and_query = upstream_path(&parts.uri, f, meta.route);
    let wire = decide::wire_protocol(proto, upgrade.is_some());
    match wire {
        UpstreamProtocol::Http1 => {
            if meta.downstream_version == Version::HTTP_2 {
                headers::join_cookies(&mut parts.headers);
            }
            parts.uri = Uri::from(path_and_query);
            parts.headers.insert(HOST, authority);
            parts.version = Version::HTTP_11;
        }
        UpstreamProtocol::Http2 => {
            parts.headers.remove(HOST);
            let mut uri = http::uri::Parts::default();
            uri.scheme = Some(Scheme::HTTP);
            uri.authority = Some(
                Authority::try_from(authority.as_bytes()).map_err(|_| ProxyError::MissingHost)?,
            );
            uri.path_and_query = Some(path_and_query);
            parts.uri = Uri::from_parts(uri).map_err(|_| ProxyError::MissingHost)?;
            parts.version = Version::HTTP_2;
        }
    }
    let from_h2_to_h1 =
        meta.downstream_version == Version::HTTP_2 && wire == UpstreamProtocol::Http1;
    let announce = decide::announce_request_trailers(
        meta.downstream_version,
        wire,
        fault.is_some(),
        parts.headers.contains_key(TRAILER),
    );
    if from_h2_to_h1 && parts.headers.contains_key(TRAILER) {
        // Announced trailers need chunked framing, which a Content-Length would rule out.
        parts.headers.remove(CONTENT_LENGTH);
    }
    Ok((Request::from_parts(parts, body), announce))
}

/// The upstream request target: origin form, rewritten if the route says so.
fn upstream_path(uri: &Uri, f: &Forward, route: &Route) -> PathAndQuery {
    let original = || {
        uri.path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"))
    };
    let Some(rw) = &f.path_rewrite else {
        return original();
    };
    let mut p = rw.apply(uri.path(), route.matched_prefix());
    if let Some(q) = uri.query() {
        p.push('?');
        p.push_str(q);
    }
    // The rewrite is built from a valid path and validated config; fall back to the original
    // target rather than fail the request if a substitution produced something unusable.
    PathAndQuery::from_maybe_shared(Bytes::from(p)).unwrap_or_else(|_| original())
}
