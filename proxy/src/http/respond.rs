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
pub(crate) fn error(err: &ProxyError) -> Response<ResponseBody> {
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
        ProxyError::UpstreamTimeout(_) => ("upstream request timeout\n", false),
        ProxyError::RequestBody(BodyFault::Incomplete) => {
            ("bad request: incomplete request body\n", true)
        }
        ProxyError::RequestBody(BodyFault::BadChunked) => {
            ("bad request: malformed chunked body\n", true)
        }
        ProxyError::RequestBody(BodyFault::InvalidTrailer) => {
            ("bad request: invalid trailer field\n", true)
        }
        ProxyError::InvalidFieldValue => ("bad request: invalid header field value\n", true),
        ProxyError::Upstream(_) | ProxyError::InvalidResponse(_) => {
            ("upstream reset or protocol error\n", false)
        }
    };
    let mut resp = text(err.status(), Bytes::from_static(body.as_bytes()));
    if close {
        resp.headers_mut().insert(CONNECTION, CLOSE);
    }
    resp
}

/// The stream error to answer an HTTP/2 request with instead of a response: a malformed
/// request is a stream error of type PROTOCOL_ERROR (RFC 9113 §8.1.1). hyper resets the stream
/// with the `h2::Reason` it finds in the service's error.
pub(crate) fn stream_reset(err: &ProxyError) -> Option<h2::Reason> {
    match err {
        ProxyError::InvalidFieldValue | ProxyError::RequestBody(BodyFault::InvalidTrailer) => {
            Some(h2::Reason::PROTOCOL_ERROR)
        }
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
            assert_eq!(error(e).headers()[CONNECTION], "close", "{e}");
        }
        let r = redirect(StatusCode::FOUND, "http://a\u{1}/");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(r.headers()[CONNECTION], "close");
        // A well-formed request nobody routes keeps its connection.
        let no_route = ProxyError::NoRoute {
            host: "h".into(),
            path: "/".into(),
        };
        assert!(error(&no_route).headers().get(CONNECTION).is_none());
    }
}
