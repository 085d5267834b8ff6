//! The one error type of the request path. Every failure carries the side that caused it and
//! whether a retry could help; `http/respond.rs` is the only place it becomes a response.

use http::StatusCode;
use std::net::SocketAddr;
use std::time::Duration;

/// Whether a failed request reached an upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// Provably not: safe to send again.
    No,
    /// Possibly (written, partly written, or the response was lost).
    Maybe,
}

/// How a failure is reported and handled: who failed, whether the request went out, Envoy's
/// response flag and the downstream status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Classification {
    /// The side at fault.
    pub side: Side,
    /// Whether the request reached an upstream.
    pub sent: Sent,
    /// Response flag.
    pub flag: &'static str,
    /// Downstream status.
    pub status: StatusCode,
}

/// Which side of the proxy a failure belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The client sent something wrong.
    Downstream,
    /// The upstream failed or misbehaved.
    Upstream,
    /// Sluice itself (config or a bug).
    Internal,
}

/// A failure while handling one request.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No virtual host or route matched.
    #[error("no route matched host `{host}` path `{path}`")]
    NoRoute {
        /// Host as sent.
        host: String,
        /// Path as sent.
        path: String,
    },
    /// HTTP/1.1 request without `Host` (RFC 9112 §3.2).
    #[error("HTTP/1.1 request without a Host header")]
    MissingHost,
    /// More than one `Host` header.
    #[error("request with more than one Host header")]
    MultipleHost,
    /// `Content-Length` together with `Transfer-Encoding` (RFC 9112 §6.1: possible smuggling).
    #[error("request with both Content-Length and Transfer-Encoding")]
    ContentLengthWithTransferEncoding,
    /// CONNECT is not proxied.
    #[error("CONNECT is not supported")]
    ConnectNotSupported,
    /// The route's cluster is not (or no longer) configured.
    #[error("cluster `{0}` is not configured")]
    NoCluster(String),
    /// The cluster has no endpoint to pick.
    #[error("cluster `{0}` has no endpoint available")]
    NoEndpoint(String),
    /// TCP connect failed.
    #[error("connect to {addr} failed: {source}")]
    ConnectFailed {
        /// Endpoint.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// TCP connect did not finish in time.
    #[error("connect to {addr} timed out after {timeout:?}")]
    ConnectTimeout {
        /// Endpoint.
        addr: SocketAddr,
        /// Configured connect timeout.
        timeout: Duration,
    },
    /// The HTTP handshake with the upstream failed (HTTP/2 preface or settings).
    #[error("handshake with {addr} failed: {source}")]
    Handshake {
        /// Endpoint.
        addr: SocketAddr,
        /// Cause.
        source: hyper::Error,
    },
    /// No response headers within the route timeout.
    #[error("upstream did not respond within {0:?}")]
    UpstreamTimeout(Duration),
    /// No response headers within the retry policy's per-try timeout (the attempt was
    /// abandoned).
    #[error("upstream attempt did not respond within the per-try timeout {0:?}")]
    PerTryTimeout(Duration),
    /// A circuit breaker of the cluster or the route is full: refused at once, never sent.
    #[error("{scope} circuit breaker `{breaker}` overflowed")]
    Overflow {
        /// `cluster` or `route`.
        scope: &'static str,
        /// Which threshold: `max_connections`, `max_pending_requests`, `max_requests`.
        breaker: &'static str,
    },
    /// No progress for the stream idle timeout before the response head: the request body
    /// stalled (`upload`: the client's fault, 408) or the upstream sent no head (504).
    #[error("stream idle for {after:?} ({})", if *.upload { "request body stalled" } else { "no response head" })]
    StreamIdleTimeout {
        /// The stream idle timeout.
        after: Duration,
        /// The request body was still streaming.
        upload: bool,
    },
    /// The upstream reset, closed or sent a malformed response.
    #[error("upstream request failed: {0}")]
    Upstream(hyper::Error),
    /// The downstream request body failed while it was being forwarded (the upstream call
    /// failed because of it, not because of the upstream).
    #[error("request body failed: {0:?}")]
    RequestBody(BodyFault),
    /// A request field value with leading or trailing whitespace (RFC 9113 §8.2.1, RFC 9110
    /// §5.5): malformed, never forwarded.
    #[error("request field value with leading or trailing whitespace")]
    InvalidFieldValue,
    /// The request target's path is not one Sluice forwards (a byte ≥ 0x80, a character RFC
    /// 3986 forbids, an invalid escape, or an escaped slash under `reject`).
    #[error("invalid request path: {0}")]
    InvalidPath(&'static str),
    /// `Host`/`:authority` is not a host name or address with an optional port.
    #[error("invalid Host or :authority: {0}")]
    InvalidHost(&'static str),
    /// A header name with `_` under `headers_with_underscores: reject`.
    #[error("header name with an underscore")]
    UnderscoreHeader,
    /// More request headers than `max_request_headers` (HTTP/2; hyper counts HTTP/1.1's).
    #[error("too many request headers")]
    TooManyHeaders,
    /// A transfer coding other than `chunked` (RFC 9112 §6.1).
    #[error("unsupported transfer coding")]
    UnsupportedTransferCoding,
    /// A query parameter a matching route tests appears more than once: which occurrence the
    /// upstream believes is unknowable, so the request is refused.
    #[error("query parameter `{0}` appears more than once")]
    DuplicateQueryParameter(String),
    /// The upstream's response is one a proxy must not forward (a `101` nobody asked for, both
    /// `Content-Length` and `Transfer-Encoding`, a malformed field value).
    #[error("invalid upstream response: {0}")]
    InvalidResponse(&'static str),
}

/// How a downstream request body failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFault {
    /// HTTP/1.1 framing error: a malformed chunk size, chunk extension or line ending.
    BadChunked,
    /// The client closed the connection or reset the stream before the body ended.
    Incomplete,
    /// A trailer field that may not be forwarded (a value with leading or trailing whitespace).
    InvalidTrailer,
    /// A gRPC-Web text body that is not base64.
    InvalidGrpcWebText,
}

impl ProxyError {
    /// The side at fault.
    pub fn side(&self) -> Side {
        match self {
            ProxyError::NoRoute { .. }
            | ProxyError::MissingHost
            | ProxyError::MultipleHost
            | ProxyError::ContentLengthWithTransferEncoding
            | ProxyError::ConnectNotSupported
            | ProxyError::RequestBody(_)
            | ProxyError::InvalidFieldValue
            | ProxyError::InvalidPath(_)
            | ProxyError::InvalidHost(_)
            | ProxyError::UnderscoreHeader
            | ProxyError::TooManyHeaders
            | ProxyError::UnsupportedTransferCoding
            | ProxyError::DuplicateQueryParameter(_)
            | ProxyError::StreamIdleTimeout { upload: true, .. } => Side::Downstream,
            ProxyError::NoCluster(_) | ProxyError::NoEndpoint(_) | ProxyError::Overflow { .. } => {
                Side::Internal
            }
            ProxyError::ConnectFailed { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::Handshake { .. }
            | ProxyError::UpstreamTimeout(_)
            | ProxyError::PerTryTimeout(_)
            | ProxyError::StreamIdleTimeout { upload: false, .. }
            | ProxyError::Upstream(_)
            | ProxyError::InvalidResponse(_) => Side::Upstream,
        }
    }

    /// True when the request provably did not reach the upstream application, so another attempt
    /// cannot duplicate it.
    pub fn retryable(&self) -> bool {
        self.sent() == Sent::No
    }

    /// Whether any of the request reached an upstream.
    pub fn sent(&self) -> Sent {
        match self {
            ProxyError::Upstream(_)
            | ProxyError::UpstreamTimeout(_)
            | ProxyError::PerTryTimeout(_)
            | ProxyError::InvalidResponse(_)
            | ProxyError::StreamIdleTimeout { .. }
            | ProxyError::RequestBody(_) => Sent::Maybe,
            _ => Sent::No,
        }
    }

    /// The status the downstream gets.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::MissingHost
            | ProxyError::MultipleHost
            | ProxyError::ContentLengthWithTransferEncoding
            | ProxyError::RequestBody(_)
            | ProxyError::InvalidFieldValue
            | ProxyError::InvalidPath(_)
            | ProxyError::InvalidHost(_)
            | ProxyError::UnderscoreHeader
            | ProxyError::DuplicateQueryParameter(_) => StatusCode::BAD_REQUEST,
            ProxyError::TooManyHeaders => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::UnsupportedTransferCoding => StatusCode::NOT_IMPLEMENTED,
            ProxyError::ConnectNotSupported => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::NoCluster(_)
            | ProxyError::NoEndpoint(_)
            | ProxyError::ConnectFailed { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::Handshake { .. }
            | ProxyError::Overflow { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamTimeout(_)
            | ProxyError::PerTryTimeout(_)
            | ProxyError::StreamIdleTimeout { upload: false, .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::StreamIdleTimeout { upload: true, .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Upstream(_) | ProxyError::InvalidResponse(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// Everything the request path decides from a failure, in one place.
    pub fn classify(&self) -> Classification {
        Classification {
            side: self.side(),
            sent: self.sent(),
            flag: self.flag(),
            status: self.status(),
        }
    }

    /// The `reason` label of `sluice_downstream_rejected_total` for a request refused as a
    /// protocol violation; `None` for every other failure.
    pub fn rejection(&self) -> Option<&'static str> {
        match self {
            ProxyError::MissingHost => Some("missing_host"),
            ProxyError::MultipleHost => Some("multiple_host"),
            ProxyError::ContentLengthWithTransferEncoding => {
                Some("content_length_with_transfer_encoding")
            }
            ProxyError::ConnectNotSupported => Some("connect"),
            ProxyError::RequestBody(BodyFault::BadChunked) => Some("bad_chunked_body"),
            ProxyError::RequestBody(BodyFault::Incomplete) => Some("incomplete_body"),
            ProxyError::RequestBody(BodyFault::InvalidTrailer) => Some("invalid_trailer"),
            ProxyError::RequestBody(BodyFault::InvalidGrpcWebText) => Some("invalid_grpc_web_text"),
            ProxyError::InvalidFieldValue => Some("invalid_field_value"),
            ProxyError::InvalidPath(_) => Some("invalid_path"),
            ProxyError::InvalidHost(_) => Some("invalid_host"),
            ProxyError::UnderscoreHeader => Some("header_with_underscore"),
            ProxyError::TooManyHeaders => Some("headers_too_large"),
            ProxyError::UnsupportedTransferCoding => Some("unsupported_transfer_coding"),
            ProxyError::DuplicateQueryParameter(_) => Some("duplicate_query_parameter"),
            ProxyError::StreamIdleTimeout { .. } => Some("stream_idle_timeout"),
            _ => None,
        }
    }

    /// The endpoint the failure happened at, when the error knows it.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        match self {
            ProxyError::ConnectFailed { addr, .. }
            | ProxyError::ConnectTimeout { addr, .. }
            | ProxyError::Handshake { addr, .. } => Some(*addr),
            _ => None,
        }
    }

    /// Whether an operator should hear about this failure at the default log level: the
    /// upstream failed (connect, TLS handshake, timeout, reset, invalid response) or the
    /// cluster had no endpoint to send to. Client errors are not logged at `warn` (a client
    /// controls how many it causes).
    pub fn is_upstream_failure(&self) -> bool {
        self.side() == Side::Upstream || matches!(self, ProxyError::NoEndpoint(_))
    }

    /// A short code for logs and metrics, after Envoy's response flags.
    pub fn flag(&self) -> &'static str {
        match self {
            ProxyError::NoRoute { .. } => "NR",
            ProxyError::NoCluster(_) => "NC",
            ProxyError::NoEndpoint(_) => "UH",
            ProxyError::ConnectFailed { .. } | ProxyError::Handshake { .. } => "UF",
            ProxyError::ConnectTimeout { .. } => "UF",
            ProxyError::UpstreamTimeout(_) | ProxyError::PerTryTimeout(_) => "UT",
            ProxyError::Overflow { .. } => "UO",
            ProxyError::StreamIdleTimeout { .. } => "SI",
            ProxyError::Upstream(_) => "UC",
            ProxyError::InvalidResponse(_) => "UPE",
            // Every other failure is the client's protocol error (the list is in `side`).
            _ => "DPE",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let c = ProxyError::NoCluster("c".into()).classify();
        assert_eq!(
            c,
            Classification {
                side: Side::Internal,
                sent: Sent::No,
                flag: "NC",
                status: StatusCode::SERVICE_UNAVAILABLE
            }
        );
        let refused = ProxyError::ConnectFailed {
            addr: "127.0.0.1:1".parse().unwrap(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        };
        assert_eq!(refused.classify().sent, Sent::No);
        assert!(refused.retryable());
        assert_eq!(refused.classify().flag, "UF");
        let timeout = ProxyError::UpstreamTimeout(Duration::from_secs(1)).classify();
        assert_eq!(
            (timeout.sent, timeout.status),
            (Sent::Maybe, StatusCode::GATEWAY_TIMEOUT)
        );
        let stalled = |upload| ProxyError::StreamIdleTimeout {
            after: Duration::from_secs(1),
            upload,
        };
        let (up, down) = (stalled(true).classify(), stalled(false).classify());
        assert_eq!(
            (up.side, up.status, up.flag),
            (Side::Downstream, StatusCode::REQUEST_TIMEOUT, "SI")
        );
        assert_eq!(
            (down.side, down.status, down.flag),
            (Side::Upstream, StatusCode::GATEWAY_TIMEOUT, "SI")
        );
        assert_eq!(stalled(true).rejection(), Some("stream_idle_timeout"));
        let host = ProxyError::MissingHost.classify();
        assert_eq!(
            (host.side, host.status),
            (Side::Downstream, StatusCode::BAD_REQUEST)
        );
        assert_eq!(ProxyError::MissingHost.rejection(), Some("missing_host"));
        assert_eq!(ProxyError::NoCluster("c".into()).rejection(), None);
        // Downstream protocol errors, and only they, are flagged DPE.
        for e in [
            ProxyError::MissingHost,
            ProxyError::InvalidPath("x"),
            ProxyError::InvalidHost("x"),
            ProxyError::UnderscoreHeader,
            ProxyError::TooManyHeaders,
            ProxyError::UnsupportedTransferCoding,
            ProxyError::DuplicateQueryParameter("q".into()),
        ] {
            assert_eq!((e.flag(), e.side()), ("DPE", Side::Downstream), "{e}");
            assert!(e.rejection().is_some(), "{e}");
        }
        assert_eq!(
            ProxyError::NoRoute {
                host: String::new(),
                path: String::new()
            }
            .flag(),
            "NR"
        );
    }
}
