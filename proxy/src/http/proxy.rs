//! The request path of an HTTP listener: check the request, route it, and either answer
//! (direct response, redirect, error) or forward it upstream and stream the response back.

use crate::cluster::{EndpointPool, Lease, UpstreamProtocol};
use crate::drain::Drain;
use crate::error::ProxyError;
use crate::http::body::ResponseBody;
use crate::http::conn::ConnState;
use crate::http::reqbody::{FaultNote, RequestBody};
use crate::http::{fields, headers, respond, trailers, upgrade};
use crate::route::{Action, Forward, RequestHead, Route, VirtualHost};
use crate::state::{HttpSpec, ListenerKind, ListenerSpec};
use crate::worker::Worker;
use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TE, TRAILER, TRANSFER_ENCODING};
use http::request::Parts;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use sluice_config::UpstreamProtocol as ConfiguredProtocol;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

/// Everything one downstream HTTP connection's requests share.
#[derive(Debug)]
pub(crate) struct HttpConn {
    pub(crate) worker: Rc<Worker>,
    pub(crate) state: Arc<ConnState>,
    pub(crate) drain: Drain,
    /// The client's IP, formatted once for `x-forwarded-for`.
    client_ip: HeaderValue,
    /// `Rc` around the shared `Arc` so the per-request clone is a non-atomic increment rather
    /// than an atomic one on a counter every worker thread touches.
    #[allow(clippy::redundant_allocation)]
    spec: RefCell<Rc<Arc<ListenerSpec>>>,
    generation: Cell<u64>,
}

impl HttpConn {
    pub(crate) fn new(
        worker: Rc<Worker>,
        state: Arc<ConnState>,
        drain: Drain,
        peer: std::net::SocketAddr,
        spec: Arc<ListenerSpec>,
    ) -> Self {
        let client_ip = HeaderValue::from_maybe_shared(Bytes::from(peer.ip().to_string()))
            .unwrap_or(HeaderValue::from_static("unknown"));
        HttpConn {
            generation: Cell::new(worker.live.generation()),
            worker,
            state,
            drain,
            client_ip,
            spec: RefCell::new(Rc::new(spec)),
        }
    }

    /// The listener's current compiled settings. Checks one atomic per request; only after a
    /// config swap does it look the listener up again.
    #[allow(clippy::redundant_allocation)]
    fn spec(&self) -> Rc<Arc<ListenerSpec>> {
        let generation = self.worker.live.generation();
        if generation != self.generation.get() {
            self.generation.set(generation);
            let snapshot = self.worker.live.snapshot();
            let name = self.spec.borrow().name.clone();
            // A listener that was removed keeps serving its open connections on its last
            // config while they drain.
            if let Some(new) = snapshot.listeners.get(&name)
                && matches!(new.kind, ListenerKind::Http(_))
            {
                *self.spec.borrow_mut() = Rc::new(Arc::clone(new));
            }
        }
        Rc::clone(&self.spec.borrow())
    }
}

/// hyper's service entry point for one request.
///
/// Everything up to the upstream call is synchronous ([`plan`]) and everything after it too
/// ([`finish`]); only the upstream call is awaited here. Nesting async functions would copy the
/// request into each one's state (rustc does not overlap them), and this future is moved into a
/// box for every request.
pub(crate) async fn handle(
    conn: Rc<HttpConn>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, StreamReset> {
    let (inflight, smuggled) = conn.state.begin_request();
    let spec = conn.spec();
    let http1 = req.version() != Version::HTTP_2;
    let result = match &spec.kind {
        ListenerKind::Http(http) => match plan(&conn, http, req, smuggled) {
            Ok(Planned::Answer(resp)) => Ok(resp),
            Ok(Planned::Forward(p)) => {
                if let Some(down) = p.upgrade {
                    // Rare: a dedicated connection, boxed to keep this future small.
                    Box::pin(upgrade::forward(
                        p.pool,
                        p.request,
                        down,
                        &conn.drain,
                        p.timeout,
                        p.meta,
                    ))
                    .await
                } else {
                    let fault = p.fault;
                    let sent = if p.announce_trailers {
                        // Rare (HTTP/2 → HTTP/1.1 with a body): boxed.
                        let send = Box::pin(announce_then_send(&p.pool, p.request, p.proto));
                        RouteTimeout::new(send, p.timeout, p.meta.cluster).await
                    } else {
                        let send = p.pool.send(p.request, p.proto);
                        RouteTimeout::new(send, p.timeout, p.meta.cluster).await
                    };
                    match sent
                        .map_err(|e| upstream_failure(e, fault.as_ref(), p.meta.cluster))
                        .and_then(|(resp, lease)| {
                            // On an invalid response the lease drops here: the upstream
                            // connection is closed, never pooled.
                            check_response(&p.meta, &resp)?;
                            Ok(finish(&p.meta, resp, lease))
                        }) {
                        Ok(resp) if announces_trailers(&p.meta, &resp) => {
                            let (mut parts, mut body) = resp.into_parts();
                            Box::pin(trailers::announce(&mut parts.headers, &mut body)).await;
                            Ok(Response::from_parts(parts, body))
                        }
                        other => other,
                    }
                }
            }
            Err(e) => Err(e),
        },
        // Unreachable: `spec()` only ever holds HTTP listeners here.
        ListenerKind::Tcp(_) => Err(ProxyError::NoEndpoint(spec.name.clone())),
    };
    let mut resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            tracing::debug!(listener = %spec.name, error = %e, flag = e.flag(), side = ?e.side(), "request failed");
            if let Some(reason) = e.rejection() {
                spec.metrics.rejected(reason);
            }
            if !http1 && let Some(reason) = respond::stream_reset(&e) {
                // hyper resets the stream with the reason in the service's error.
                return Err(StreamReset(h2::Error::from(reason)));
            }
            respond::error(&e)
        }
    };
    if http1 && conn.drain.is_draining() {
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    spec.metrics.response(resp.status().as_u16());
    resp.body_mut().set_inflight(inflight);
    Ok(resp)
}

/// The service's error: an HTTP/2 stream to reset instead of answered (hyper resets it with
/// the `h2::Reason` it finds in the error's source chain). HTTP/1.1 requests never get one.
#[derive(Debug, thiserror::Error)]
#[error("stream reset: {0}")]
pub(crate) struct StreamReset(#[source] h2::Error);

/// What to do with a request.
enum Planned<'a> {
    /// Answer now (direct response, redirect).
    Answer(Response<ResponseBody>),
    /// Send upstream.
    Forward(Plan<'a>),
}

/// A request ready to go upstream, and what its response needs.
pub(crate) struct Plan<'a> {
    pub(crate) request: Request<RequestBody>,
    /// Where the request body notes how it failed (only when it has a body).
    fault: Option<FaultNote>,
    /// HTTP/2 → HTTP/1.1 with a body and no `Trailer` header: find and announce its trailers
    /// (`http/trailers.rs`).
    announce_trailers: bool,
    pub(crate) pool: Rc<EndpointPool>,
    proto: UpstreamProtocol,
    pub(crate) timeout: Option<std::time::Duration>,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
    pub(crate) meta: ResponseMeta<'a>,
}

/// What the response path needs from the request.
pub(crate) struct ResponseMeta<'a> {
    pub(crate) vh: &'a VirtualHost,
    pub(crate) route: &'a Route,
    pub(crate) cluster: &'a Arc<crate::cluster::Cluster>,
    downstream_version: Version,
    head: bool,
    wants_trailers: bool,
    /// The request goes to the upstream over HTTP/2.
    upstream_http2: bool,
}

/// Checks and routes the request; builds the upstream request when the route forwards.
fn plan<'a>(
    conn: &HttpConn,
    http: &'a HttpSpec,
    req: Request<Incoming>,
    smuggled: bool,
) -> Result<Planned<'a>, ProxyError> {
    if smuggled {
        return Err(ProxyError::ContentLengthWithTransferEncoding);
    }
    if req.method() == Method::CONNECT {
        return Err(ProxyError::ConnectNotSupported);
    }
    let (parts, body) = req.into_parts();
    // The HTTP/1.1 parser strips surrounding whitespace; HTTP/2 delivers values as sent.
    if parts.version == Version::HTTP_2 && !fields::valid_fields(&parts.headers) {
        return Err(ProxyError::InvalidFieldValue);
    }
    let authority = request_authority(&parts)?;
    let host = authority.to_str().unwrap_or_default();
    let head = RequestHead {
        method: &parts.method,
        host,
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &parts.headers,
    };
    let Some((vh, route)) = http.routes.find(&head) else {
        return Err(ProxyError::NoRoute {
            host: host.to_string(),
            path: head.path.to_string(),
        });
    };
    tracing::trace!(route = %route.name, virtual_host = %vh.name, "matched");
    let mut resp = match &route.action {
        Action::Direct { status, body } => respond::direct(*status, body.clone()),
        Action::Redirect(r) => {
            let loc = r.location("http", host, head.path, head.query, route.matched_prefix());
            respond::redirect(r.status, &loc)
        }
        Action::Forward(f) => {
            let authority = authority.clone();
            return plan_forward(conn, http, parts, body, authority, vh, route, f)
                .map(Planned::Forward);
        }
    };
    apply_response_ops(vh, route, resp.headers_mut());
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

pub(crate) fn apply_response_ops(vh: &VirtualHost, route: &Route, headers: &mut http::HeaderMap) {
    if !vh.response_headers.is_empty() {
        vh.response_headers.apply(headers);
    }
    if !route.response_headers.is_empty() {
        route.response_headers.apply(headers);
    }
}

/// Picks the cluster and endpoint and rewrites the request for the upstream.
#[allow(clippy::too_many_arguments)]
fn plan_forward<'a>(
    conn: &HttpConn,
    http: &HttpSpec,
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
    let (index, addr) = cluster
        .pick()
        .ok_or_else(|| ProxyError::NoEndpoint(cluster.name.clone()))?;
    let downstream_version = parts.version;
    let proto = match cluster.config.protocol {
        ConfiguredProtocol::Http1 => UpstreamProtocol::Http1,
        ConfiguredProtocol::Http2 => UpstreamProtocol::Http2,
        ConfiguredProtocol::Auto if downstream_version == Version::HTTP_2 => {
            UpstreamProtocol::Http2
        }
        ConfiguredProtocol::Auto => UpstreamProtocol::Http1,
    };
    let websocket = headers::is_websocket_upgrade(&parts.method, parts.version, &parts.headers);
    let wants_trailers = parts
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
    // Room for x-forwarded-for/-proto, x-request-id and Host in one growth of hyper's
    // exactly-sized map instead of several.
    parts.headers.reserve(4);
    if !vh.request_headers.is_empty() {
        vh.request_headers.apply(&mut parts.headers);
    }
    if !route.request_headers.is_empty() {
        route.request_headers.apply(&mut parts.headers);
    }
    headers::set_forwarded(&mut parts.headers, &conn.client_ip, "http");
    if http.settings.generate_request_id {
        headers::ensure_request_id(&mut parts.headers);
    }
    let authority = f.host_rewrite.clone().unwrap_or(authority);
    let path_and_query = upstream_path(&parts.uri, f, route);
    // Upgrades always use an HTTP/1.1 connection of their own.
    let wire = if upgrade.is_some() {
        UpstreamProtocol::Http1
    } else {
        proto
    };
    match wire {
        UpstreamProtocol::Http1 => {
            if downstream_version == Version::HTTP_2 {
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
    let head = parts.method == Method::HEAD;
    let (body, fault) = RequestBody::new(body);
    let announce_trailers = downstream_version == Version::HTTP_2
        && wire == UpstreamProtocol::Http1
        && fault.is_some()
        && !parts.headers.contains_key(TRAILER);
    if downstream_version == Version::HTTP_2
        && wire == UpstreamProtocol::Http1
        && parts.headers.contains_key(TRAILER)
    {
        // Announced trailers need chunked framing, which a Content-Length would rule out.
        parts.headers.remove(CONTENT_LENGTH);
    }
    Ok(Plan {
        request: Request::from_parts(parts, body),
        fault,
        announce_trailers,
        pool: conn.worker.pools.endpoint(cluster, index, addr),
        proto,
        timeout: f.timeout,
        upgrade,
        meta: ResponseMeta {
            vh,
            route,
            cluster,
            downstream_version,
            head,
            wants_trailers,
            upstream_http2: wire == UpstreamProtocol::Http2,
        },
    })
}

/// Reads the request body ahead to announce its trailers, then sends it.
async fn announce_then_send(
    pool: &Rc<EndpointPool>,
    req: Request<RequestBody>,
    proto: UpstreamProtocol,
) -> Result<(Response<Incoming>, Lease), ProxyError> {
    let (mut parts, mut body) = req.into_parts();
    trailers::announce(&mut parts.headers, &mut body).await;
    pool.send(Request::from_parts(parts, body), proto).await
}

/// True when a response that may end with trailers (from an HTTP/2 upstream, or chunked from
/// an HTTP/1.1 one) goes to an HTTP/1.1 client that accepts trailers, with a body and no
/// `Trailer` header: its trailers must be found and announced.
fn announces_trailers(meta: &ResponseMeta<'_>, resp: &Response<ResponseBody>) -> bool {
    meta.wants_trailers
        && meta.downstream_version != Version::HTTP_2
        && (meta.upstream_http2 || !resp.headers().contains_key(CONTENT_LENGTH))
        && !resp.headers().contains_key(TRAILER)
        && !http_body::Body::is_end_stream(resp.body())
}

/// Classifies a failed upstream call: when the downstream request body broke first, the
/// failure is the client's (400), otherwise the upstream's (502, counted on the cluster).
pub(crate) fn upstream_failure(
    e: ProxyError,
    fault: Option<&FaultNote>,
    cluster: &crate::cluster::Cluster,
) -> ProxyError {
    match e {
        ProxyError::Upstream(err) => match fault.and_then(|f| f.get()) {
            Some(f) => {
                tracing::debug!(error = %err, "upstream call failed on the request body");
                ProxyError::RequestBody(f)
            }
            None => {
                cluster.metrics.error("request");
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
    meta: &ResponseMeta<'_>,
    resp: &Response<Incoming>,
) -> Result<(), ProxyError> {
    let h = resp.headers();
    let why = if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        Some("101 Switching Protocols to a request without an upgrade")
    } else if h.contains_key(TRANSFER_ENCODING) && h.contains_key(CONTENT_LENGTH) {
        Some("both Content-Length and Transfer-Encoding")
    } else if resp.version() == Version::HTTP_2 && !fields::valid_fields(h) {
        Some("field value with leading or trailing whitespace")
    } else {
        None
    };
    match why {
        Some(why) => {
            meta.cluster.metrics.error("invalid_response");
            Err(ProxyError::InvalidResponse(why))
        }
        None => Ok(()),
    }
}

/// Turns the upstream's response into the downstream response.
pub(crate) fn finish(
    meta: &ResponseMeta<'_>,
    resp: Response<Incoming>,
    lease: Lease,
) -> Response<ResponseBody> {
    let (mut rparts, rbody) = resp.into_parts();
    headers::strip_hop_by_hop(&mut rparts.headers, false);
    apply_response_ops(meta.vh, meta.route, &mut rparts.headers);
    if meta.downstream_version != Version::HTTP_2 {
        rparts.version = Version::HTTP_11;
        // HTTP/1.1 can carry trailers only when announced (hyper sends those named in
        // `Trailer`); gRPC servers over HTTP/2 do not announce theirs.
        if meta.wants_trailers && !rparts.headers.contains_key(TRAILER) && is_grpc(&rparts.headers)
        {
            rparts.headers.insert(
                TRAILER,
                HeaderValue::from_static("grpc-status, grpc-message, grpc-status-details-bin"),
            );
        }
    } else {
        rparts.version = Version::HTTP_2;
    }
    let bodyless = meta.head
        || rparts.status == StatusCode::NO_CONTENT
        || rparts.status == StatusCode::NOT_MODIFIED;
    if rparts.status == StatusCode::NO_CONTENT {
        rparts.headers.remove(http::header::CONTENT_LENGTH);
    }
    let body = if bodyless {
        // Responses to HEAD and 204/304 responses have no body whatever the upstream sends
        // (RFC 9110 §6.4.1; hyper's HTTP/2 server would forward one). A clean end releases the
        // connection; anything else closes it.
        let mut lease = lease;
        if rbody.is_end_stream() {
            lease.release();
        }
        ResponseBody::empty()
    } else {
        ResponseBody::upstream(rbody, lease)
    };
    Response::from_parts(rparts, body)
}

pin_project_lite::pin_project! {
    /// An upstream call under the route timeout, built in place (no extra async frame, one
    /// copy). A timeout is counted on the cluster and becomes `UpstreamTimeout`.
    pub(crate) struct RouteTimeout<'a, F> {
        #[pin]
        fut: F,
        #[pin]
        deadline: Option<crate::rt::Deadline>,
        timeout: Option<std::time::Duration>,
        cluster: &'a crate::cluster::Cluster,
    }
}

impl<'a, F> RouteTimeout<'a, F> {
    pub(crate) fn new(
        fut: F,
        timeout: Option<std::time::Duration>,
        cluster: &'a crate::cluster::Cluster,
    ) -> Self {
        RouteTimeout {
            fut,
            deadline: timeout.map(crate::rt::Deadline::after),
            timeout,
            cluster,
        }
    }
}

impl<T, F: std::future::Future<Output = Result<T, ProxyError>>> std::future::Future
    for RouteTimeout<'_, F>
{
    type Output = Result<T, ProxyError>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        if let std::task::Poll::Ready(v) = this.fut.poll(cx) {
            return std::task::Poll::Ready(v);
        }
        match this.deadline.as_pin_mut() {
            Some(d) => d.poll(cx).map(|()| {
                this.cluster.metrics.error("timeout");
                Err(ProxyError::UpstreamTimeout(
                    this.timeout.unwrap_or_default(),
                ))
            }),
            None => std::task::Poll::Pending,
        }
    }
}

fn is_grpc(h: &http::HeaderMap) -> bool {
    h.get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
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
