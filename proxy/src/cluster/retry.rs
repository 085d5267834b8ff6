//! The retry policy, compiled per route, and the retry decision: pure functions of the policy,
//! the attempt's result and the request, unit-tested as a table. The attempt loop
//! (`cluster::call`) asks [`RetryPolicy::reason`] whether a result is retried, the retry
//! budget and breakers whether it may be, and [`RetryPolicy::backoff`] how long to wait.

use crate::error::ProxyError;
use http::{HeaderMap, Method, StatusCode};
use sluice_config::RetryOn;
use std::time::Duration;

/// Why an attempt is retried (the `reason` label of `sluice_upstream_retries_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The connection could not be opened.
    ConnectFailure,
    /// An HTTP/2 upstream refused the stream.
    RefusedStream,
    /// The upstream reset or closed before the response head.
    Reset,
    /// The per-try timeout passed.
    PerTryTimeout,
    /// A retriable response status.
    Status,
    /// A retriable gRPC status.
    Grpc,
}

impl Reason {
    #[cfg(test)]
    pub(crate) const ALL: [Reason; 6] = [
        Reason::ConnectFailure,
        Reason::RefusedStream,
        Reason::Reset,
        Reason::PerTryTimeout,
        Reason::Status,
        Reason::Grpc,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ConnectFailure => "connect_failure",
            Reason::RefusedStream => "refused_stream",
            Reason::Reset => "reset",
            Reason::PerTryTimeout => "per_try_timeout",
            Reason::Status => "status",
            Reason::Grpc => "grpc_status",
        }
    }
}

// Condition bits.
const C_5XX: u16 = 1;
const C_GATEWAY: u16 = 1 << 1;
const C_RESET: u16 = 1 << 2;
const C_CONNECT: u16 = 1 << 3;
const C_REFUSED: u16 = 1 << 4;
const C_STATUS: u16 = 1 << 5;
const G_CANCELLED: u16 = 1 << 6;
const G_DEADLINE: u16 = 1 << 7;
const G_INTERNAL: u16 = 1 << 8;
const G_EXHAUSTED: u16 = 1 << 9;
const G_UNAVAILABLE: u16 = 1 << 10;
const GRPC: u16 = G_CANCELLED | G_DEADLINE | G_INTERNAL | G_EXHAUSTED | G_UNAVAILABLE;
/// Conditions that retry a request that reached the upstream (it must be replayable).
const SENT: u16 = C_5XX | C_GATEWAY | C_RESET | C_STATUS | GRPC;

/// A route's compiled retry policy.
#[derive(Debug)]
pub struct RetryPolicy {
    on: u16,
    /// Retries after the first attempt.
    pub(crate) num_retries: u32,
    /// Each attempt's time limit for the response head.
    pub(crate) per_try_timeout: Option<Duration>,
    statuses: Box<[u16]>,
    methods: Box<[Method]>,
    base: Duration,
    max: Duration,
    max_retry_after: Duration,
    /// Most request body bytes kept for replay.
    pub(crate) replay_limit: usize,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::compile(&sluice_config::RetryPolicy::default())
    }
}

/// What a request that reached the upstream may be resent for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resend {
    /// Nothing (no complete copy).
    No,
    /// Only the gRPC codes of the policy (a non-idempotent gRPC call).
    GrpcStatus,
    /// Every condition of the policy.
    Any,
}

impl From<bool> for Resend {
    fn from(any: bool) -> Self {
        if any { Resend::Any } else { Resend::No }
    }
}

/// An attempt's result as the decision sees it.
#[derive(Clone, Copy, Debug)]
pub enum Attempted<'a> {
    /// A response head.
    Response {
        status: StatusCode,
        headers: &'a HeaderMap,
    },
    /// No response.
    Failed(&'a ProxyError),
}

impl RetryPolicy {
    /// Compiles a route's policy.
    pub fn compile(c: &sluice_config::RetryPolicy) -> Self {
        let on = c.retry_on.iter().fold(0, |acc, r| {
            acc | match r {
                RetryOn::FiveXx => C_5XX,
                RetryOn::GatewayError => C_GATEWAY,
                RetryOn::Reset => C_RESET,
                RetryOn::ConnectFailure => C_CONNECT,
                RetryOn::RefusedStream => C_REFUSED,
                RetryOn::RetriableStatusCodes => C_STATUS,
                RetryOn::Cancelled => G_CANCELLED,
                RetryOn::DeadlineExceeded => G_DEADLINE,
                RetryOn::Internal => G_INTERNAL,
                RetryOn::ResourceExhausted => G_EXHAUSTED,
                RetryOn::Unavailable => G_UNAVAILABLE,
            }
        });
        RetryPolicy {
            on: if c.num_retries == 0 { 0 } else { on },
            num_retries: c.num_retries,
            per_try_timeout: c.per_try_timeout.map(|d| d.get()),
            statuses: c.retriable_status_codes.clone().into(),
            methods: c
                .retriable_methods
                .iter()
                .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                .collect(),
            base: c.back_off.base_interval.get(),
            max: c.back_off.max_interval.get(),
            max_retry_after: c.max_retry_after.get(),
            replay_limit: usize::try_from(c.replay_limit.bytes()).unwrap_or(usize::MAX),
        }
    }

    /// True when the policy may retry anything at all.
    #[cfg(test)]
    pub(crate) fn retries(&self) -> bool {
        self.on != 0
    }

    /// True when a request with this method and headers may be retried after it reached the
    /// upstream under this policy, so the attempt loop keeps a copy of it (its head, and its
    /// body up to the replay limit): the policy has a condition for sent requests (or
    /// `refused-stream` toward an HTTP/2 upstream), the request is idempotent or marked
    /// retriable, and its declared body length (if any) fits the replay limit.
    pub fn keeps_copy(
        &self,
        method: &Method,
        headers: &HeaderMap,
        body_len: Option<u64>,
        http2: bool,
    ) -> bool {
        if !self.may_keep_copy(http2) {
            return false;
        }
        let fits = body_len.is_none_or(|n| n <= self.replay_limit as u64);
        // A refused stream was not processed (RFC 9113 §8.7): any method may be resent. A gRPC
        // request is resent for the gRPC codes the policy lists, whatever its method (the
        // service's owner opts in per code, as in gRPC's own retry policy, gRFC A6).
        let safe = self.on & SENT == 0
            || self.resendable(method, headers)
            || (self.on & GRPC != 0 && crate::message::fields::is_grpc(headers));
        fits && safe
    }

    /// True when the policy could ever resend a request that reached the upstream toward this
    /// upstream protocol (a condition for sent requests, `refused-stream` toward HTTP/2, or a
    /// per-try timeout): the cheap first half of [`RetryPolicy::keeps_copy`], false for the
    /// default policy toward HTTP/1.1.
    pub fn may_keep_copy(&self, http2: bool) -> bool {
        self.on & (SENT | if http2 { C_REFUSED } else { 0 }) != 0 || self.per_try_timeout.is_some()
    }

    /// True when a request that reached the upstream may be sent again: an idempotent method
    /// (RFC 9110 §9.2.2), one the policy lists, or an `Idempotency-Key` header.
    pub fn resendable(&self, method: &Method, headers: &HeaderMap) -> bool {
        matches!(
            *method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        ) || self.methods.contains(method)
            || headers.contains_key("idempotency-key")
    }

    /// Why this result is retried under the policy, if it is. `resend`: what a request that
    /// reached the upstream may be sent again for (its copy is complete, and it is resendable,
    /// or a gRPC request for listed codes only); results for which the request provably never
    /// left are retried regardless.
    pub fn reason(&self, result: Attempted<'_>, resend: Resend) -> Option<Reason> {
        if self.on == 0 {
            return None;
        }
        let sent_ok = resend == Resend::Any;
        match result {
            Attempted::Failed(e) => {
                let reason = failure_reason(e)?;
                let on = match reason {
                    Reason::ConnectFailure => C_CONNECT | C_5XX | C_GATEWAY,
                    Reason::RefusedStream => C_REFUSED | C_5XX | C_GATEWAY,
                    Reason::Reset | Reason::PerTryTimeout => C_RESET | C_5XX | C_GATEWAY,
                    Reason::Status | Reason::Grpc => 0,
                };
                let unsent =
                    matches!(reason, Reason::ConnectFailure) || e.sent() == crate::error::Sent::No;
                (self.on & on != 0 && (unsent || sent_ok)).then_some(reason)
            }
            Attempted::Response { status, headers } => {
                if resend == Resend::No {
                    return None;
                }
                let s = status.as_u16();
                let by_status = sent_ok
                    && ((self.on & C_5XX != 0 && status.is_server_error())
                        || (self.on & C_GATEWAY != 0 && matches!(s, 502..=504))
                        || (self.on & C_STATUS != 0 && self.statuses.contains(&s)));
                if by_status {
                    return Some(Reason::Status);
                }
                if self.on & GRPC != 0 {
                    let bit = match grpc_status(headers) {
                        Some(1) => G_CANCELLED,
                        Some(4) => G_DEADLINE,
                        Some(8) => G_EXHAUSTED,
                        Some(13) => G_INTERNAL,
                        Some(14) => G_UNAVAILABLE,
                        _ => 0,
                    };
                    if self.on & bit != 0 {
                        return Some(Reason::Grpc);
                    }
                }
                None
            }
        }
    }

    /// The wait before retry number `n` (1 = the first retry): full jitter over
    /// `[0, min(max, base × 2^(n-1))]`; `roll` is uniform over `u64`.
    pub(crate) fn backoff(&self, n: u32, roll: u64) -> Duration {
        crate::clock::full_jitter(n, self.base, self.max, roll)
    }

    /// The wait a `Retry-After` on a retried `429`/`503` asks for: `Some(wait)` when it is
    /// within `max_retry_after`, `Err(())` when it is longer (no retry), `Ok(None)` when
    /// there is none (or it does not parse).
    pub(crate) fn retry_after(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        now: std::time::SystemTime,
    ) -> Result<Option<Duration>, ()> {
        if !matches!(status.as_u16(), 429 | 503) {
            return Ok(None);
        }
        match headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, now))
        {
            Some(d) if d > self.max_retry_after => Err(()),
            other => Ok(other),
        }
    }
}

/// What kind of failure `e` is for retrying; `None` for failures never retried (a failed
/// request body, an invalid response, route timeouts).
fn failure_reason(e: &ProxyError) -> Option<Reason> {
    match e {
        ProxyError::ConnectFailed { .. }
        | ProxyError::ConnectTimeout { .. }
        | ProxyError::Handshake { .. } => Some(Reason::ConnectFailure),
        ProxyError::PerTryTimeout(_) => Some(Reason::PerTryTimeout),
        ProxyError::Upstream(err) if refused_stream(err) => Some(Reason::RefusedStream),
        ProxyError::Upstream(_) => Some(Reason::Reset),
        _ => None,
    }
}

/// True when an HTTP/2 upstream refused the stream (`REFUSED_STREAM`).
fn refused_stream(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = s.source();
    }
    false
}

/// The `grpc-status` of a trailers-only response head.
fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// `Retry-After` as delay-seconds or an HTTP-date (RFC 9110 §10.2.3).
fn parse_retry_after(v: &str, now: std::time::SystemTime) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = parse_http_date(v)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the form RFC 9110 requires senders to use.
fn parse_http_date(v: &str) -> Option<std::time::SystemTime> {
    let mut parts = v.split_ascii_whitespace();
    let _weekday = parts.next()?;
    let day: u64 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':');
    let (h, m, s): (u64, u64, u64) = (
        hms.next()?.parse().ok()?,
        hms.next()?.parse().ok()?,
        hms.next()?.parse().ok()?,
    );
    if parts.next()? != "GMT" || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, mo) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days).ok()? * 86_400 + h * 3600 + m * 60 + s;
    Some(std::time::UNIX_EPOCH + Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_config::RetryOn as On;

    fn policy(on: &[On]) -> RetryPolicy {
        RetryPolicy::compile(&sluice_config::RetryPolicy {
            retry_on: on.to_vec(),
            retriable_status_codes: vec![409],
            ..Default::default()
        })
    }

    fn connect_failed() -> ProxyError {
        ProxyError::ConnectFailed {
            addr: "127.0.0.1:1".parse().unwrap(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        }
    }

    fn resp(status: u16, headers: &HeaderMap) -> Attempted<'_> {
        Attempted::Response {
            status: StatusCode::from_u16(status).unwrap(),
            headers,
        }
    }

    #[test]
    fn metric_labels_match() {
        for r in Reason::ALL {
            assert!(crate::metrics::RETRY_REASONS.contains(&r.as_str()), "{r:?}");
        }
        for t in crate::breaker::Threshold::ALL {
            assert!(crate::metrics::BREAKERS.contains(&t.as_str()), "{t:?}");
        }
        for r in crate::outlier::Reason::ALL {
            assert!(
                crate::metrics::EJECTION_REASONS.contains(&r.as_str()),
                "{r:?}"
            );
        }
    }

    #[test]
    fn the_decision_table() {
        let none = HeaderMap::new();
        let mut grpc14 = HeaderMap::new();
        grpc14.insert("grpc-status", "14".parse().unwrap());
        let timeout = ProxyError::PerTryTimeout(Duration::from_secs(1));
        let route_timeout = ProxyError::UpstreamTimeout(Duration::from_secs(1));
        let connect = connect_failed();
        // (conditions, result, sent_ok) → reason
        let cases: Vec<(&[On], Attempted<'_>, bool, Option<Reason>)> = vec![
            (
                &[On::ConnectFailure],
                Attempted::Failed(&connect),
                false,
                Some(Reason::ConnectFailure),
            ),
            (
                &[On::FiveXx],
                Attempted::Failed(&connect),
                false,
                Some(Reason::ConnectFailure),
            ),
            (
                &[On::GatewayError],
                Attempted::Failed(&connect),
                false,
                Some(Reason::ConnectFailure),
            ),
            (&[On::Reset], Attempted::Failed(&connect), false, None),
            (
                &[On::Reset],
                Attempted::Failed(&timeout),
                true,
                Some(Reason::PerTryTimeout),
            ),
            (&[On::Reset], Attempted::Failed(&timeout), false, None),
            (&[On::FiveXx], Attempted::Failed(&route_timeout), true, None),
            (&[On::FiveXx], resp(503, &none), true, Some(Reason::Status)),
            (&[On::FiveXx], resp(503, &none), false, None),
            (&[On::FiveXx], resp(404, &none), true, None),
            (&[On::GatewayError], resp(500, &none), true, None),
            (
                &[On::GatewayError],
                resp(502, &none),
                true,
                Some(Reason::Status),
            ),
            (
                &[On::RetriableStatusCodes],
                resp(409, &none),
                true,
                Some(Reason::Status),
            ),
            (&[On::RetriableStatusCodes], resp(410, &none), true, None),
            (
                &[On::Unavailable],
                resp(200, &grpc14),
                true,
                Some(Reason::Grpc),
            ),
            (&[On::Internal], resp(200, &grpc14), true, None),
            (&[On::ConnectFailure], resp(503, &none), true, None),
        ];
        for (i, (on, result, sent_ok, want)) in cases.into_iter().enumerate() {
            assert_eq!(
                policy(on).reason(result, sent_ok.into()),
                want,
                "case {i}: {on:?}"
            );
        }
        // No retries, no reasons.
        let off = RetryPolicy::compile(&sluice_config::RetryPolicy {
            retry_on: vec![On::FiveXx],
            num_retries: 0,
            ..Default::default()
        });
        assert!(!off.retries());
        assert_eq!(off.reason(Attempted::Failed(&connect), Resend::Any), None);
        // A non-idempotent gRPC call is resent for its listed codes only.
        let g = policy(&[On::FiveXx, On::Unavailable]);
        assert_eq!(
            g.reason(resp(200, &grpc14), Resend::GrpcStatus),
            Some(Reason::Grpc)
        );
        assert_eq!(g.reason(resp(503, &none), Resend::GrpcStatus), None);
    }

    #[test]
    fn only_idempotent_or_marked_requests_that_fit_keep_a_copy() {
        let p = policy(&[On::FiveXx]);
        let h = HeaderMap::new();
        assert!(p.keeps_copy(&Method::GET, &h, None, false));
        assert!(p.keeps_copy(&Method::PUT, &h, Some(1000), false));
        assert!(!p.keeps_copy(&Method::POST, &h, None, false));
        assert!(!p.keeps_copy(&Method::GET, &h, Some(64 * 1024 + 1), false));
        let mut keyed = HeaderMap::new();
        keyed.insert("idempotency-key", "abc".parse().unwrap());
        assert!(p.keeps_copy(&Method::POST, &keyed, None, false));
        let marked = RetryPolicy::compile(&sluice_config::RetryPolicy {
            retry_on: vec![On::FiveXx],
            retriable_methods: vec!["POST".into()],
            ..Default::default()
        });
        assert!(marked.keeps_copy(&Method::POST, &h, None, false));
        // The default policy only copies for refused streams toward HTTP/2, any method.
        let d = RetryPolicy::default();
        assert!(!d.keeps_copy(&Method::GET, &h, None, false));
        assert!(d.keeps_copy(&Method::POST, &h, None, true));
    }

    #[test]
    fn backoff_is_full_jitter_under_an_exponential_ceiling() {
        let p = policy(&[On::FiveXx]); // 25ms base, 250ms max
        let ms = Duration::from_millis;
        for (n, ceiling) in [(1, 25), (2, 50), (3, 100), (4, 200), (5, 250), (30, 250)] {
            for roll in [0, 1, 7_777_777, u64::MAX / 3, u64::MAX] {
                assert!(p.backoff(n, roll) <= ms(ceiling), "retry {n}");
            }
            assert_eq!(p.backoff(n, 0), Duration::ZERO);
            assert_eq!(p.backoff(n, ms(ceiling).as_nanos() as u64), ms(ceiling));
        }
    }

    #[test]
    fn retry_after_is_honoured_within_its_bound() {
        let p = policy(&[On::FiveXx]); // max 10s
        let now = std::time::UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(http::header::RETRY_AFTER, v.parse().unwrap());
            h
        };
        let s503 = StatusCode::SERVICE_UNAVAILABLE;
        assert_eq!(
            p.retry_after(s503, &with("2"), now),
            Ok(Some(Duration::from_secs(2)))
        );
        assert_eq!(p.retry_after(s503, &with("11"), now), Err(()));
        assert_eq!(
            p.retry_after(s503, &with("Sun, 06 Nov 1994 08:49:42 GMT"), now),
            Ok(Some(Duration::from_secs(5)))
        );
        assert_eq!(
            p.retry_after(s503, &with("Sun, 06 Nov 1994 08:49:30 GMT"), now),
            Ok(Some(Duration::ZERO)),
            "a date in the past: no wait"
        );
        assert_eq!(p.retry_after(s503, &with("soon"), now), Ok(None));
        assert_eq!(
            p.retry_after(StatusCode::BAD_GATEWAY, &with("2"), now),
            Ok(None)
        );
        assert_eq!(
            p.retry_after(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new(), now),
            Ok(None)
        );
    }
}
