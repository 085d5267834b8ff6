//! The one place a failure or a configured answer becomes a response: status, body and the
//! connection handling the RFCs ask for.

use crate::error::{BodyFault, ProxyError};
use crate::http::body::ResponseBody;
use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, LOCATION};
use http::{HeaderValue, Response, StatusCode};

const TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
const CLOSE: HeaderValue = HeaderValue::from_static("close");

/// The response for a failed request. Every answer to a malformed or unsupported request also
/// closes the connection (RFC 9112 §6.3: after a framing error the connection cannot be
/// trusted); only "no route" keeps it, the request itself being well formed. (hyper drops
/// `Connection` from HTTP/2 responses.)
///
/// `ctx` is what the request said about how it wants failures: a gRPC request that can be
/// answered without closing the connection gets a gRPC status instead (see [`grpc_error`]).
pub(crate) fn error(err: &ProxyError, ctx: ErrorContext) -> Response<ResponseBody> {
    let (body, close) = match err {
        ProxyError::NoRoute { .. } => ("no route\n", false),
        ProxyError::MissingHost => ("bad request: missing Host header\n", true),
        ProxyError::MultipleHost => ("bad request: multiple Host headers\n", true),
        ProxyError::ContentLengthWithTransferEncoding => (
            "bad request: both Content-Length and Transfer-Encoding\n",
            true,
        ),
        ProxyError::ConnectNotSupported => ("CONNECT is not supported\n", true),
        ProxyError::NoCluster(_) => ("no cluster\n", false),
        ProxyError::NoEndpoint(_) => ("no healthy upstream\n", false),
        ProxyError::ConnectFailed { .. }
        | ProxyError::ConnectTimeout { .. }
        | ProxyError::Handshake { .. } => ("upstream connect error\n", false),
        ProxyError::UpstreamTimeout(_) | ProxyError::PerTryTimeout(_) => {
            ("upstream request timeout\n", false)
        }
        ProxyError::Overflow { .. } => ("upstream overflow\n", false),
        // The exchange stalled: its connection is closed (RFC 9110 §15.5.9 for 408).
        ProxyError::StreamIdleTimeout { upload: true, .. } => ("request body timeout\n", true),
        ProxyError::StreamIdleTimeout { upload: false, .. } => {
            ("upstream stream idle timeout\n", true)
        }
        ProxyError::RequestBody(BodyFault::Incomplete) => {
            ("bad request: incomplete request body\n", true)
        }
        ProxyError::RequestBody(BodyFault::BadChunked) => {
            ("bad request: malformed chunked body\n", true)
        }
        ProxyError::RequestBody(BodyFault::InvalidTrailer) => {
            ("bad request: invalid trailer field\n", true)
        }
        ProxyError::RequestBody(BodyFault::InvalidGrpcWebText) => {
            ("bad request: invalid grpc-web-text body\n", true)
        }
        ProxyError::InvalidFieldValue => ("bad request: invalid header field value\n", true),
        ProxyError::InvalidPath(_) => ("bad request: invalid path\n", true),
        ProxyError::InvalidHost(_) => ("bad request: invalid Host\n", true),
        ProxyError::UnderscoreHeader => ("bad request: header name with an underscore\n", true),
        ProxyError::TooManyHeaders => ("too many request headers\n", true),
        ProxyError::UnsupportedTransferCoding => ("unsupported transfer coding\n", true),
        ProxyError::DuplicateQueryParameter(_) => ("bad request: repeated query parameter\n", true),
        ProxyError::Upstream(_) | ProxyError::InvalidResponse(_) => {
            ("upstream reset or protocol error\n", false)
        }
    };
    if ctx.grpc && !close {
        return grpc_error(HeaderValue::from_static(grpc_status(err)), body.trim_end());
    }
    let mut resp = text(err.status(), Bytes::from_static(body.as_bytes()));
    if close {
        resp.headers_mut().insert(CONNECTION, CLOSE);
    }
    resp
}

/// What the request tells the error path.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ErrorContext {
    /// The request is gRPC (`content-type: application/grpc…`).
    pub(crate) grpc: bool,
}

impl ErrorContext {
    pub(crate) fn of(headers: &http::HeaderMap) -> Self {
        ErrorContext {
            grpc: crate::http::grpc::is_grpc(headers),
        }
    }
}

/// The `grpc-status` for a failure: a passed deadline is DEADLINE_EXCEEDED; otherwise the HTTP
/// status is mapped as gRPC's HTTP-to-gRPC mapping (and Envoy's local replies) do: 400 →
/// INTERNAL, 401 → UNAUTHENTICATED, 403 → PERMISSION_DENIED, 404 → UNIMPLEMENTED,
/// 429/502/503/504 → UNAVAILABLE, anything else → UNKNOWN.
fn grpc_status(err: &ProxyError) -> &'static str {
    if matches!(
        err,
        ProxyError::UpstreamTimeout(_)
            | ProxyError::PerTryTimeout(_)
            | ProxyError::StreamIdleTimeout { upload: false, .. }
    ) {
        return "4";
    }
    if matches!(err, ProxyError::Overflow { .. }) {
        return "8";
    }
    // An upstream stream reset before the head is answered with the status a gRPC client would
    // have derived from the reset itself.
    if let ProxyError::Upstream(e) = err
        && let Some(reason) = h2_reason(e)
    {
        return grpc_code_for_reset(reason);
    }
    grpc_code_for_status(err.status().as_u16())
}

/// The HTTP/2 error code in an error's source chain (an upstream `RST_STREAM` or `GOAWAY`).
pub(crate) fn h2_reason(err: &(dyn std::error::Error + 'static)) -> Option<h2::Reason> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.reason();
        }
        cur = e.source();
    }
    None
}

/// gRPC's mapping of HTTP/2 error codes to statuses (PROTOCOL-HTTP2.md, "Errors"), the status
/// a gRPC client reports for a stream reset with `reason`: REFUSED_STREAM → UNAVAILABLE (14),
/// CANCEL → CANCELLED (1), ENHANCE_YOUR_CALM → RESOURCE_EXHAUSTED (8), INADEQUATE_SECURITY →
/// PERMISSION_DENIED (7), every other code → INTERNAL (13).
pub(crate) fn grpc_code_for_reset(reason: h2::Reason) -> &'static str {
    match reason {
        h2::Reason::REFUSED_STREAM => "14",
        h2::Reason::CANCEL => "1",
        h2::Reason::ENHANCE_YOUR_CALM => "8",
        h2::Reason::INADEQUATE_SECURITY => "7",
        _ => "13",
    }
}

/// gRPC's HTTP-to-gRPC status mapping (Envoy's too), for local answers to gRPC requests.
pub(crate) fn grpc_code_for_status(status: u16) -> &'static str {
    match status {
        400 => "13",
        401 => "16",
        403 => "7",
        404 => "12",
        429 | 502 | 503 | 504 => "14",
        _ => "2",
    }
}

/// A gRPC "trailers-only" answer: HTTP 200 with `grpc-status` (`code`) and `grpc-message` in
/// the head and no body. Sluice's own errors and the filters' answers (fault aborts,
/// authorization) alike.
pub(crate) fn grpc_error<B: Default>(code: HeaderValue, message: &str) -> Response<B> {
    let mut resp = Response::new(B::default());
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", code);
    if let Ok(m) = HeaderValue::from_str(message) {
        h.insert("grpc-message", m);
    }
    resp
}

/// The stream error to answer an HTTP/2 request with instead of a response: a malformed
/// request is a stream error of type PROTOCOL_ERROR (RFC 9113 §8.1.1); a stalled exchange (the
/// stream idle timeout) is cancelled (CANCEL), as it is once its response has started. hyper
/// resets the stream with the `h2::Reason` it finds in the service's error.
pub(crate) fn stream_reset(err: &ProxyError) -> Option<h2::Reason> {
    match err {
        ProxyError::InvalidFieldValue | ProxyError::RequestBody(BodyFault::InvalidTrailer) => {
            Some(h2::Reason::PROTOCOL_ERROR)
        }
        ProxyError::StreamIdleTimeout { .. } => Some(h2::Reason::CANCEL),
        _ => None,
    }
}

/// A configured direct response.
pub(crate) fn direct(status: StatusCode, body: Bytes) -> Response<ResponseBody> {
    text(status, body)
}

/// A redirect to `location`.
pub(crate) fn redirect(status: StatusCode, location: &str) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::empty());
    *resp.status_mut() = status;
    match HeaderValue::from_str(location) {
        Ok(v) => {
            resp.headers_mut().insert(LOCATION, v);
        }
        // The parts come from the request and validated config; a value that still is not a
        // valid header (a control byte in the host) gets a plain 400, which, like every answer
        // to a malformed request, closes the connection.
        Err(_) => {
            *resp.status_mut() = StatusCode::BAD_REQUEST;
            resp.headers_mut().insert(CONNECTION, CLOSE);
        }
    }
    resp
}

fn text(status: StatusCode, body: Bytes) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, TEXT);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::BodyFault;

    #[test]
    fn answers_to_malformed_requests_close_the_connection() {
        let malformed = [
            ProxyError::MissingHost,
            ProxyError::MultipleHost,
            ProxyError::ContentLengthWithTransferEncoding,
            ProxyError::ConnectNotSupported,
            ProxyError::RequestBody(BodyFault::BadChunked),
            ProxyError::RequestBody(BodyFault::Incomplete),
            ProxyError::RequestBody(BodyFault::InvalidTrailer),
            ProxyError::InvalidFieldValue,
        ];
        assert_eq!(
            stream_reset(&ProxyError::InvalidFieldValue),
            Some(h2::Reason::PROTOCOL_ERROR)
        );
        assert_eq!(stream_reset(&ProxyError::MissingHost), None);
        for e in &malformed {
            assert_eq!(e.side(), crate::error::Side::Downstream, "{e}");
            assert!(e.rejection().is_some(), "{e}");
            assert_eq!(
                error(e, ErrorContext::default()).headers()[CONNECTION],
                "close",
                "{e}"
            );
            let grpc = ErrorContext { grpc: true };
            assert_eq!(
                error(e, grpc).status(),
                e.status(),
                "closing answers stay plain HTTP"
            );
        }
        let r = redirect(StatusCode::FOUND, "http://a\u{1}/");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(r.headers()[CONNECTION], "close");
        // A well-formed request nobody routes keeps its connection.
        let no_route = ProxyError::NoRoute {
            host: "h".into(),
            path: "/".into(),
        };
        assert!(
            error(&no_route, ErrorContext::default())
                .headers()
                .get(CONNECTION)
                .is_none()
        );
    }

    #[test]
    fn grpc_requests_get_a_grpc_status() {
        let grpc = ErrorContext { grpc: true };
        let cases = [
            (
                ProxyError::NoRoute {
                    host: "h".into(),
                    path: "/".into(),
                },
                "12",
            ),
            (ProxyError::NoCluster("c".into()), "14"),
            (
                ProxyError::UpstreamTimeout(std::time::Duration::from_secs(1)),
                "4",
            ),
            (
                ProxyError::Overflow {
                    scope: "cluster",
                    breaker: "max_requests",
                },
                "8",
            ),
            (ProxyError::NoEndpoint("c".into()), "14"),
        ];
        for (e, code) in cases {
            let r = error(&e, grpc);
            assert_eq!(r.status(), StatusCode::OK, "{e}");
            assert_eq!(r.headers()["grpc-status"], code, "{e}");
            assert_eq!(r.headers()[CONTENT_TYPE], "application/grpc");
            assert!(r.headers().contains_key("grpc-message"));
        }
        let mut h = http::HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        assert!(ErrorContext::of(&h).grpc);
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        assert!(!ErrorContext::of(&h).grpc);
    }

    #[test]
    fn stream_resets_map_as_grpc_protocol_http2_says() {
        use h2::Reason;
        for (reason, code) in [
            (Reason::NO_ERROR, "13"),
            (Reason::PROTOCOL_ERROR, "13"),
            (Reason::INTERNAL_ERROR, "13"),
            (Reason::FLOW_CONTROL_ERROR, "13"),
            (Reason::SETTINGS_TIMEOUT, "13"),
            (Reason::FRAME_SIZE_ERROR, "13"),
            (Reason::COMPRESSION_ERROR, "13"),
            (Reason::CONNECT_ERROR, "13"),
            (Reason::REFUSED_STREAM, "14"),
            (Reason::CANCEL, "1"),
            (Reason::ENHANCE_YOUR_CALM, "8"),
            (Reason::INADEQUATE_SECURITY, "7"),
        ] {
            assert_eq!(grpc_code_for_reset(reason), code, "{reason:?}");
        }
        let e = h2::Error::from(Reason::CANCEL);
        assert_eq!(h2_reason(&e), Some(Reason::CANCEL));
        let io = std::io::Error::other("closed");
        assert_eq!(h2_reason(&io), None);
    }
}
