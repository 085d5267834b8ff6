//! The response side of a forwarded request: turns the upstream's response head into the
//! downstream's (hop-by-hop headers, header operations, trailers announcement, bodies that must
//! not exist) and wraps the body so the upstream connection is released when it ends.

use crate::cluster::call::Upstream;
use crate::http::body::ResponseBody;
use crate::http::filters::FilterChain;
use crate::http::{decide, headers};
use crate::route::{Route, VirtualHost};
use http::header::TRAILER;
use http::{HeaderValue, Response, StatusCode, Version};
use http_body::Body as _;

/// What the response path needs from the request.
pub(crate) struct ResponseMeta<'a> {
    pub(crate) vh: &'a VirtualHost,
    pub(crate) route: &'a Route,
    pub(crate) cluster: &'a crate::cluster::ClusterHandle,
    pub(crate) filters: &'a FilterChain,
    pub(crate) downstream_version: Version,
    pub(crate) head: bool,
    pub(crate) wants_trailers: bool,
    /// The request goes to the upstream over HTTP/2.
    pub(crate) upstream_http2: bool,
    /// A gRPC-Web request: the response goes back as gRPC-Web.
    pub(crate) grpc_web: Option<crate::http::filters::grpc_web::Mode>,
}

/// Turns the upstream's response into the downstream response.
pub(crate) fn finish(meta: &ResponseMeta<'_>, upstream: Upstream) -> Response<ResponseBody> {
    let Upstream {
        response,
        lease,
        active,
        ..
    } = upstream;
    let (mut rparts, rbody) = response.into_parts();
    headers::strip_hop_by_hop(&mut rparts.headers, false);
    let status = rparts.status;
    meta.filters
        .on_response(status, &mut rparts.headers, meta.vh, meta.route);
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
    // gRPC-Web: a gRPC response (not, say, a plain 404) is mapped back.
    let grpc_web = meta.grpc_web.filter(|_| is_grpc(&rparts.headers));
    if let Some(mode) = grpc_web {
        mode.response_head(&mut rparts.headers);
    }
    let bodyless = decide::bodyless(meta.head, rparts.status);
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
        let mut body = ResponseBody::upstream(rbody, lease, active);
        if let Some(mode) = grpc_web
            && !body.is_end_stream()
        {
            body.encode_grpc_web(mode);
        }
        body
    };
    Response::from_parts(rparts, body)
}

fn is_grpc(h: &http::HeaderMap) -> bool {
    h.get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}
