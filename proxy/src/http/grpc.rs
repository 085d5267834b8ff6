//! gRPC over HTTP/2 specifics the request path needs: the client's deadline (`grpc-timeout`,
//! gRPC's PROTOCOL-HTTP2 spec: 1–8 digits and a unit `H`, `M`, `S`, `m`, `u` or `n`), and the
//! status each gRPC response ends with (`sluice_grpc_responses_total`).

use crate::http::body::ResponseBody;
use crate::metrics::{GrpcStatusCounters, ListenerMetrics};
use http::{HeaderMap, HeaderName, Response};
use std::time::Duration;

pub(crate) use crate::message::fields::is_grpc;

/// The deadline a gRPC request carries in `grpc-timeout`, if it is one and the value is valid
/// (an invalid one is ignored, as gRPC servers do).
pub(crate) fn deadline(headers: &HeaderMap) -> Option<Duration> {
    // `content-type` first: a standard-header look-up, and most requests stop there.
    if !is_grpc(headers) {
        return None;
    }
    parse_timeout(headers.get(&GRPC_TIMEOUT)?.as_bytes())
}

static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

fn parse_timeout(v: &[u8]) -> Option<Duration> {
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// Counts the status a gRPC response ends with, once: from its head (a trailers-only answer,
/// including every one Sluice makes), or from its trailers when the body ends. A body cut by
/// an upstream reset counts the status a client derives from the reset (PROTOCOL-HTTP2.md), one
/// the downstream abandons counts CANCELLED, one that ends without `grpc-status` INTERNAL (or
/// the HTTP status's mapping when not 200).
pub(crate) fn track_status(
    resp: &mut Response<ResponseBody>,
    metrics: &ListenerMetrics,
    cluster: &str,
) {
    let mut tally = StatusTally {
        counters: metrics.grpc_statuses(cluster),
        http_status: resp.status().as_u16(),
        done: false,
    };
    if let Some(code) = resp.headers().get(&GRPC_STATUS) {
        tally.count(code.to_str().unwrap_or("2"));
    } else if http_body::Body::is_end_stream(resp.body()) {
        tally.end(None);
    } else {
        resp.body_mut().track_grpc(tally);
    }
}

/// The pending count of one gRPC response (see [`track_status`]).
#[derive(Debug)]
pub(crate) struct StatusTally {
    counters: GrpcStatusCounters,
    http_status: u16,
    done: bool,
}

impl StatusTally {
    fn count(&mut self, code: &str) {
        if self.done {
            return;
        }
        self.done = true;
        if code != "0" {
            tracing::debug!(cluster = %self.counters.cluster(), grpc_status = code, "gRPC response");
        }
        self.counters.inc(code);
    }

    /// The body ended, with these trailers (if any).
    pub(crate) fn end(&mut self, trailers: Option<&HeaderMap>) {
        match trailers.and_then(|t| t.get(&GRPC_STATUS)) {
            Some(code) => self.count(code.to_str().unwrap_or("2")),
            None if self.http_status != 200 => {
                self.count(crate::http::respond::grpc_code_for_status(self.http_status))
            }
            None => self.count("13"),
        }
    }

    /// The body failed: an upstream reset counts as the status a client derives from it.
    pub(crate) fn failed(&mut self, err: &(dyn std::error::Error + 'static)) {
        let code = crate::http::respond::h2_reason(err)
            .map_or("13", crate::http::respond::grpc_code_for_reset);
        self.count(code);
    }
}

impl Drop for StatusTally {
    fn drop(&mut self) {
        // Abandoned before its end: the downstream went away.
        self.count("1");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn grpc_timeouts() {
        assert_eq!(parse_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout(b"2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_timeout(b"3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_timeout(b"250m"), Some(Duration::from_millis(250)));
        assert_eq!(
            parse_timeout(b"99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(parse_timeout(b"5n"), Some(Duration::from_nanos(5)));
        for bad in [
            &b""[..],
            b"S",
            b"10",
            b"1x",
            b"123456789S",
            b"-1S",
            b"1.5S",
            b" 1S",
        ] {
            assert_eq!(parse_timeout(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        let mut h = HeaderMap::new();
        h.insert("grpc-timeout", HeaderValue::from_static("100m"));
        assert_eq!(deadline(&h), None, "not a gRPC request");
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        assert_eq!(deadline(&h), Some(Duration::from_millis(100)));
    }
}
