//! Field rules Sluice enforces itself, where its HTTP libraries let a malformed field through.
//!
//! RFC 9113 §8.2.1 (and RFC 9110 §5.5): a field value must not start or end with whitespace
//! (SP or HTAB). The HTTP/1.1 parser strips such whitespace as optional whitespace, so only
//! HTTP/2 messages (requests from clients, responses and trailers from HTTP/2 upstreams) can
//! carry it; the `h2` crate accepts them. A message with one is malformed and never forwarded.

use http::{HeaderMap, HeaderValue};

/// A request's authority as a client sent it: the `:authority` of HTTP/2 (or an absolute
/// HTTP/1.1 target), else `Host` (the access log's and the trace's `server.address`).
pub(crate) fn authority<B>(req: &http::Request<B>) -> Option<HeaderValue> {
    match req.uri().authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => req.headers().get(http::header::HOST).cloned(),
    }
}

/// True when the value has no leading or trailing SP/HTAB.
pub(crate) fn valid_value(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !matches!(b.first(), Some(b' ' | b'\t')) && !matches!(b.last(), Some(b' ' | b'\t'))
}

/// True when every value in the field section is valid.
pub(crate) fn valid_fields(h: &HeaderMap) -> bool {
    h.values().all(valid_value)
}

/// True when a trailer section may be forwarded. Pseudo-headers never reach a `HeaderMap` (the
/// `h2` crate drops them from trailers; see docs/architecture.md), so only values are checked.
pub(crate) fn valid_trailers(h: &HeaderMap) -> bool {
    valid_fields(h)
}

/// True when the message has no `Transfer-Encoding` or exactly `chunked`: any other coding
/// (`gzip, chunked`, `identity, chunked`) would be dropped silently with the hop-by-hop header,
/// so a request with one gets 501 and a response with one 502 (RFC 9112 §6.1).
pub(crate) fn only_chunked(h: &HeaderMap) -> bool {
    let mut values = h.get_all(http::header::TRANSFER_ENCODING).iter();
    match (values.next(), values.next()) {
        (None, _) => true,
        (Some(v), None) => v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"),
        _ => false,
    }
}

/// True for a gRPC request (`content-type: application/grpc…`).
pub(crate) fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_or_trailing_whitespace_is_invalid() {
        for bad in [" a", "a ", "\ta", "a\t", " "] {
            assert!(
                !valid_value(&HeaderValue::from_str(bad).unwrap()),
                "{bad:?}"
            );
        }
        for good in ["a", "a b", "a\tb", ""] {
            assert!(
                valid_value(&HeaderValue::from_str(good).unwrap()),
                "{good:?}"
            );
        }
    }
}
