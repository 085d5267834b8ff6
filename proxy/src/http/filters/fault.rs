//! Fault injection (Envoy `envoy.filters.http.fault`), configured per route: a fixed delay
//! before forwarding and an abort with an HTTP or gRPC status, each on a percentage of
//! requests, or chosen by `x-envoy-fault-*` request headers when the route allows it (those
//! headers only survive from trusted peers: the normalize step strips `x-envoy-*` from the
//! others). A delay waits (`Verdict::Wait`) before the upstream call, so it is not counted in
//! the route timeout (which starts with the call, as Envoy's starts in the router); an abort
//! answers locally with response flag `FI`. Both are counted in
//! `sluice_fault_injected_total{listener, kind}` and logged at debug under `fault`.

use super::{HttpFilter, RequestHead, ResponseFlag, Verdict};
use crate::http::grpc;
use crate::metrics::ListenerMetrics;
pub use crate::metrics::{FaultCounters, FaultMetrics};
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use sluice_config::Fault as FaultConfig;
use std::time::Duration;

const DELAY: &str = "x-envoy-fault-delay-request";
const DELAY_PERCENTAGE: &str = "x-envoy-fault-delay-request-percentage";
const ABORT: &str = "x-envoy-fault-abort-request";
const ABORT_GRPC: &str = "x-envoy-fault-abort-grpc-request";
const ABORT_PERCENTAGE: &str = "x-envoy-fault-abort-request-percentage";

/// The fault filter of one listener.
#[derive(Debug)]
pub struct Fault {
    metrics: ListenerMetrics,
}

impl Fault {
    /// The filter, counting into the listener's metrics.
    pub fn new(metrics: ListenerMetrics) -> Self {
        Fault { metrics }
    }
}

impl HttpFilter for Fault {
    fn on_request(&self, req: &mut RequestHead<'_>) -> Verdict {
        let Some(cfg) = req.route.fault.as_deref() else {
            return Verdict::Continue;
        };
        let decision = decide(cfg, req.headers, &mut || fastrand::f64() * 100.0);
        let grpc = grpc::is_grpc(req.headers);
        let counters = &self.metrics.fault;
        match decision {
            Decision {
                delay: Some(delay),
                abort,
            } => {
                counters.delay.inc();
                tracing::debug!(target: "fault", route = %req.route.name, ?delay, flag = "DI", "fault: delaying request");
                let aborts = counters.abort.clone();
                Verdict::Wait(Box::pin(async move {
                    tokio::time::sleep(delay).await;
                    match abort {
                        Some(a) => {
                            aborts.inc();
                            Verdict::Respond(abort_response(a, grpc))
                        }
                        None => Verdict::Continue,
                    }
                }))
            }
            Decision {
                delay: None,
                abort: Some(a),
            } => {
                counters.abort.inc();
                tracing::debug!(target: "fault", route = %req.route.name, abort = ?a, flag = "FI", "fault: aborting request");
                Verdict::Respond(abort_response(a, grpc))
            }
            Decision {
                delay: None,
                abort: None,
            } => Verdict::Continue,
        }
    }
}

/// An abort's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Abort {
    /// An HTTP status (a gRPC request gets the gRPC status it maps to).
    Http(u16),
    /// A gRPC status code.
    Grpc(u32),
}

/// What to do with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Decision {
    pub(crate) delay: Option<Duration>,
    pub(crate) abort: Option<Abort>,
}

/// Decides a request's faults: the configured ones, replaced by header-chosen ones when the
/// route allows (a header with a bad value is ignored), each kept when `roll` (uniform in
/// [0, 100)) falls under its percentage.
pub(crate) fn decide(
    f: &FaultConfig,
    headers: &HeaderMap,
    roll: &mut dyn FnMut() -> f64,
) -> Decision {
    let mut delay = f.delay.as_ref().map(|d| (d.fixed.get(), d.percentage));
    let mut abort = f.abort.as_ref().and_then(|a| {
        let kind = match (a.http_status, a.grpc_status) {
            (Some(s), _) => Abort::Http(s),
            (None, Some(c)) => Abort::Grpc(c),
            (None, None) => return None,
        };
        Some((kind, a.percentage))
    });
    if f.header_control {
        if let Some(ms) = number(headers, DELAY) {
            delay = Some((
                Duration::from_millis(ms),
                percentage(headers, DELAY_PERCENTAGE),
            ));
        }
        let header_abort = number(headers, ABORT)
            .filter(|s| (200..=599).contains(s))
            .map(|s| Abort::Http(s as u16))
            .or_else(|| {
                number(headers, ABORT_GRPC)
                    .filter(|c| *c <= 16)
                    .map(|c| Abort::Grpc(c as u32))
            });
        if let Some(a) = header_abort {
            abort = Some((a, percentage(headers, ABORT_PERCENTAGE)));
        }
    }
    let mut hit = |p: f64| p >= 100.0 || (p > 0.0 && roll() < p);
    Decision {
        delay: delay.filter(|(_, p)| hit(*p)).map(|(d, _)| d),
        abort: abort.filter(|(_, p)| hit(*p)).map(|(a, _)| a),
    }
}

/// A header's value as a non-negative integer; `None` when absent or not one.
fn number(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// A percentage header (an integer 0–100); 100 when absent or invalid.
fn percentage(headers: &HeaderMap, name: &str) -> f64 {
    number(headers, name)
        .filter(|p| *p <= 100)
        .map_or(100.0, |p| p as f64)
}

/// The local answer of an abort, flagged `FI`: a gRPC status in a trailers-only response for
/// gRPC aborts and gRPC requests, the HTTP status otherwise.
fn abort_response(a: Abort, grpc_request: bool) -> Response<Bytes> {
    let grpc_code = match a {
        Abort::Grpc(c) => Some(HeaderValue::from(c)),
        Abort::Http(s) if grpc_request => Some(HeaderValue::from_static(
            crate::http::respond::grpc_code_for_status(s),
        )),
        Abort::Http(_) => None,
    };
    let mut resp = match grpc_code {
        Some(code) => crate::http::respond::grpc_error(code, "fault filter abort"),
        None => {
            let mut r = Response::new(Bytes::from_static(b"fault filter abort\n"));
            if let Abort::Http(s) = a {
                *r.status_mut() =
                    StatusCode::from_u16(s).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            }
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            r
        }
    };
    resp.extensions_mut().insert(ResponseFlag("FI"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_config::{FaultAbort, FaultDelay};

    fn cfg(delay: Option<f64>, abort: Option<f64>, header_control: bool) -> FaultConfig {
        FaultConfig {
            delay: delay.map(|percentage| FaultDelay {
                fixed: sluice_config::Duration::from_millis(20),
                percentage,
            }),
            abort: abort.map(|percentage| FaultAbort {
                http_status: Some(503),
                grpc_status: None,
                percentage,
            }),
            header_control,
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn never() -> impl FnMut() -> f64 {
        || panic!("no roll needed")
    }

    #[test]
    fn zero_and_hundred_percent_need_no_roll() {
        let none = HeaderMap::new();
        let d = decide(&cfg(Some(100.0), Some(100.0), false), &none, &mut never());
        assert_eq!(d.delay, Some(Duration::from_millis(20)));
        assert_eq!(d.abort, Some(Abort::Http(503)));
        let d = decide(&cfg(Some(0.0), Some(0.0), false), &none, &mut never());
        assert_eq!(
            d,
            Decision {
                delay: None,
                abort: None
            }
        );
    }

    #[test]
    fn a_percentage_is_a_per_request_draw() {
        let c = cfg(None, Some(10.0), false);
        let none = HeaderMap::new();
        assert_eq!(
            decide(&c, &none, &mut || 9.99).abort,
            Some(Abort::Http(503))
        );
        assert_eq!(decide(&c, &none, &mut || 10.0).abort, None);
        // With real draws, about 10% abort.
        let hits = (0..10_000)
            .filter(|_| {
                decide(&c, &none, &mut || fastrand::f64() * 100.0)
                    .abort
                    .is_some()
            })
            .count();
        assert!((800..1200).contains(&hits), "{hits}");
    }

    #[test]
    fn headers_choose_faults_only_when_allowed() {
        let h = headers(&[(DELAY, "15"), (ABORT, "418")]);
        let off = decide(&cfg(None, None, false), &h, &mut never());
        assert_eq!(
            off,
            Decision {
                delay: None,
                abort: None
            }
        );
        let on = decide(&cfg(None, None, true), &h, &mut never());
        assert_eq!(on.delay, Some(Duration::from_millis(15)));
        assert_eq!(on.abort, Some(Abort::Http(418)));
        let g = decide(
            &cfg(None, None, true),
            &headers(&[(ABORT_GRPC, "14")]),
            &mut never(),
        );
        assert_eq!(g.abort, Some(Abort::Grpc(14)));
        // A header replaces the configured fault of its kind.
        let r = decide(
            &cfg(None, Some(100.0), true),
            &headers(&[(ABORT, "500")]),
            &mut never(),
        );
        assert_eq!(r.abort, Some(Abort::Http(500)));
    }

    #[test]
    fn header_percentages_apply() {
        let c = cfg(None, None, true);
        let h = headers(&[(ABORT, "503"), (ABORT_PERCENTAGE, "0")]);
        assert_eq!(decide(&c, &h, &mut never()).abort, None);
        let h = headers(&[(DELAY, "5"), (DELAY_PERCENTAGE, "50")]);
        assert_eq!(
            decide(&c, &h, &mut || 49.0).delay,
            Some(Duration::from_millis(5))
        );
        assert_eq!(decide(&c, &h, &mut || 50.0).delay, None);
    }

    #[test]
    fn bad_header_values_are_ignored() {
        let c = cfg(None, None, true);
        for (name, value) in [
            (ABORT, "abc"),
            (ABORT, "99"),
            (ABORT, "600"),
            (ABORT, "-1"),
            (ABORT_GRPC, "17"),
            (DELAY, "1.5"),
            (DELAY, ""),
        ] {
            let d = decide(&c, &headers(&[(name, value)]), &mut never());
            assert_eq!(
                d,
                Decision {
                    delay: None,
                    abort: None
                },
                "{name}: {value}"
            );
        }
        // An invalid percentage counts as absent (100%).
        let h = headers(&[(ABORT, "503"), (ABORT_PERCENTAGE, "250")]);
        assert_eq!(decide(&c, &h, &mut never()).abort, Some(Abort::Http(503)));
    }

    #[test]
    fn aborts_answer_with_the_status_and_flag() {
        let r = abort_response(Abort::Http(503), false);
        assert_eq!(r.status(), 503);
        assert_eq!(
            r.extensions().get::<ResponseFlag>().map(|f| f.0),
            Some("FI")
        );
        let g = abort_response(Abort::Grpc(14), false);
        assert_eq!(g.status(), 200);
        assert_eq!(g.headers()["grpc-status"], "14");
        let mapped = abort_response(Abort::Http(503), true);
        assert_eq!(mapped.status(), 200);
        assert_eq!(mapped.headers()["grpc-status"], "14");
    }
}
