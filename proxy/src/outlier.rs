//! Outlier detection (passive health checking), as Envoy's: each endpoint counts consecutive
//! 5xx and gateway failures and its requests and failures per interval; crossing a threshold
//! ejects it from balancing for `base_ejection_time × times ejected` (capped), at most
//! `max_ejection_percent` of a cluster at once (at least one). Ejected endpoints return when
//! their time is up (checked when a balancer looks at them and by the cluster's periodic sweep,
//! which also computes failure percentages and lets the ejection multiplier decay). A leaf
//! module: the endpoint state holds the counters, the cluster runs the sweep.

use sluice_config::OutlierDetection;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// What one attempt's result tells outlier detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A response below 500.
    Success,
    /// A 5xx response other than 502/503/504.
    Error5xx,
    /// A 502, 503 or 504, or no response (connect failure, reset, per-try timeout).
    Gateway,
}

impl Outcome {
    /// The outcome of a response with this status.
    pub fn of_status(status: u16) -> Self {
        match status {
            502..=504 => Outcome::Gateway,
            500..=599 => Outcome::Error5xx,
            _ => Outcome::Success,
        }
    }
}

/// Why an endpoint was ejected (the `reason` metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// `consecutive_5xx`.
    Consecutive5xx,
    /// `consecutive_gateway_failure`.
    ConsecutiveGateway,
    /// `failure_percentage_threshold`.
    FailurePercentage,
}

impl Reason {
    /// Every reason (for pre-initialised metrics).
    pub const ALL: [Reason; 3] = [
        Reason::Consecutive5xx,
        Reason::ConsecutiveGateway,
        Reason::FailurePercentage,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Consecutive5xx => "consecutive_5xx",
            Reason::ConsecutiveGateway => "consecutive_gateway_failure",
            Reason::FailurePercentage => "failure_percentage",
        }
    }
}

/// Milliseconds since the process's first use of this clock (tokio time, so paused-time tests
/// drive it); never 0, which means "not ejected".
pub fn millis(now: Instant) -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(|| now - Duration::from_secs(1));
    now.saturating_duration_since(base).as_millis() as u64
}

/// A cluster's outlier detection: its settings and how many of its endpoints are ejected.
#[derive(Debug)]
pub struct ClusterOutlier {
    enabled: AtomicBool,
    config: arc_swap::ArcSwap<OutlierDetection>,
    ejected: AtomicU32,
    /// `millis` when the current interval started.
    interval_start: AtomicU64,
}

impl Default for ClusterOutlier {
    fn default() -> Self {
        ClusterOutlier {
            enabled: AtomicBool::new(true),
            config: arc_swap::ArcSwap::from_pointee(OutlierDetection::default()),
            ejected: AtomicU32::new(0),
            interval_start: AtomicU64::new(0),
        }
    }
}

impl ClusterOutlier {
    /// Applies new settings.
    pub fn configure(&self, c: &OutlierDetection) {
        self.enabled.store(c.enabled, Ordering::Relaxed);
        self.config.store(std::sync::Arc::new(*c));
    }

    /// True when outlier detection is on.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// The settings.
    pub fn config(&self) -> OutlierDetection {
        **self.config.load()
    }

    /// True (once) when the interval that started before `now_ms` has passed; starts the
    /// next. The first call starts the first interval.
    pub fn interval_passed(&self, c: &OutlierDetection, now_ms: u64) -> bool {
        let start = self.interval_start.load(Ordering::Relaxed);
        if start == 0 {
            self.interval_start.store(now_ms, Ordering::Relaxed);
            return false;
        }
        let len = c.interval.get().as_millis() as u64;
        if now_ms.saturating_sub(start) < len {
            return false;
        }
        self.interval_start.store(now_ms, Ordering::Relaxed);
        true
    }

    /// Endpoints ejected now.
    pub fn ejected(&self) -> u32 {
        self.ejected.load(Ordering::Relaxed)
    }

    /// Sets the ejected count (the sweep recounts it from the endpoint set).
    pub fn set_ejected(&self, n: u32) {
        self.ejected.store(n, Ordering::Relaxed);
    }

    /// Takes one ejection slot unless `max_ejection_percent` of `endpoints` (at least one) are
    /// ejected already.
    fn take_slot(&self, max_percent: u32, endpoints: usize) -> bool {
        let max = max_ejected(max_percent, endpoints);
        self.ejected
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    fn free_slot(&self) {
        let _ = self
            .ejected
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }
}

/// Most endpoints ejected at once: the percentage of the cluster, at least one.
pub fn max_ejected(max_percent: u32, endpoints: usize) -> u32 {
    let n = u64::try_from(endpoints).unwrap_or(u64::MAX);
    u32::try_from(n.saturating_mul(u64::from(max_percent)) / 100)
        .unwrap_or(u32::MAX)
        .max(1)
}

/// How long the `times`-th ejection lasts: base × times, capped at the maximum (never below
/// the base).
pub fn ejection_time(c: &OutlierDetection, times: u32) -> Duration {
    let base = c.base_ejection_time.get();
    let cap = c.max_ejection_time.get().max(base);
    base.saturating_mul(times.max(1)).min(cap)
}

/// One endpoint's outlier counters.
#[derive(Debug, Default)]
pub struct EndpointOutlier {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    total: AtomicU32,
    failed: AtomicU32,
    /// Times ejected (decays by one per clean interval).
    ejections: AtomicU32,
    /// `millis` when the ejection ends; 0 when not ejected.
    ejected_until: AtomicU64,
    /// Ejected during the current interval (no decay for it).
    ejected_this_interval: AtomicBool,
}

impl EndpointOutlier {
    /// Records one attempt's outcome; returns the reason when it crosses an ejection
    /// threshold.
    pub fn record(&self, outcome: Outcome, c: &OutlierDetection) -> Option<Reason> {
        match outcome {
            Outcome::Success => {
                self.record_success();
                None
            }
            Outcome::Error5xx | Outcome::Gateway => {
                self.total.fetch_add(1, Ordering::Relaxed);
                self.failed.fetch_add(1, Ordering::Relaxed);
                let n5 = self.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
                let gw = if outcome == Outcome::Gateway {
                    self.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1
                } else {
                    if self.consecutive_gateway.load(Ordering::Relaxed) != 0 {
                        self.consecutive_gateway.store(0, Ordering::Relaxed);
                    }
                    0
                };
                if c.consecutive_5xx > 0 && n5 >= c.consecutive_5xx {
                    Some(Reason::Consecutive5xx)
                } else if c.consecutive_gateway_failure > 0 && gw >= c.consecutive_gateway_failure {
                    Some(Reason::ConsecutiveGateway)
                } else {
                    None
                }
            }
        }
    }

    /// Records a success (needs no settings).
    pub fn record_success(&self) {
        self.total.fetch_add(1, Ordering::Relaxed);
        // Loads first: no write to a shared line while the endpoint is fine.
        if self.consecutive_5xx.load(Ordering::Relaxed) != 0 {
            self.consecutive_5xx.store(0, Ordering::Relaxed);
        }
        if self.consecutive_gateway.load(Ordering::Relaxed) != 0 {
            self.consecutive_gateway.store(0, Ordering::Relaxed);
        }
    }

    /// True while ejected at `now_ms`.
    pub fn is_ejected(&self, now_ms: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && now_ms < until
    }

    /// True when ejected and the ejection time has passed.
    pub fn is_due(&self, now_ms: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && now_ms >= until
    }

    /// Ejects the endpoint if it is not ejected and the cluster has room; returns how long.
    pub fn try_eject(
        &self,
        cluster: &ClusterOutlier,
        c: &OutlierDetection,
        endpoints: usize,
        now: Instant,
    ) -> Option<Duration> {
        if self.ejected_until.load(Ordering::Relaxed) != 0
            || !cluster.take_slot(c.max_ejection_percent, endpoints)
        {
            return None;
        }
        let times = self.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let d = ejection_time(c, times);
        let until = millis(now + d).max(1);
        if self
            .ejected_until
            .compare_exchange(0, until, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            // Another worker ejected it first.
            self.ejections.fetch_sub(1, Ordering::Relaxed);
            cluster.free_slot();
            return None;
        }
        self.ejected_this_interval.store(true, Ordering::Relaxed);
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway.store(0, Ordering::Relaxed);
        Some(d)
    }

    /// Ends a due ejection; true when this call ended it.
    pub fn try_return(&self, cluster: &ClusterOutlier, now_ms: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until == 0 || now_ms < until {
            return false;
        }
        let ended = self
            .ejected_until
            .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
        if ended {
            cluster.free_slot();
        }
        ended
    }

    /// Ends the interval: returns (requests, failures) in it and resets them; lets the
    /// ejection multiplier decay by one when the endpoint was not ejected in the interval.
    pub fn end_interval(&self, now_ms: u64) -> (u32, u32) {
        let total = self.total.swap(0, Ordering::Relaxed);
        let failed = self.failed.swap(0, Ordering::Relaxed);
        let ejected_now = self.ejected_this_interval.swap(false, Ordering::Relaxed);
        if !ejected_now && !self.is_ejected(now_ms) {
            let _ = self
                .ejections
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
        (total, failed.min(total))
    }

    /// Times ejected (the current multiplier).
    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }
}

/// Failure-percentage check for one endpoint's interval counts.
pub fn failure_percentage_exceeded(c: &OutlierDetection, total: u32, failed: u32) -> bool {
    c.failure_percentage_threshold > 0
        && total >= c.failure_percentage_request_volume.max(1)
        && u64::from(failed) * 100 >= u64::from(c.failure_percentage_threshold) * u64::from(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx: 3,
            consecutive_gateway_failure: 2,
            base_ejection_time: sluice_config::Duration::from_secs(30),
            max_ejection_time: sluice_config::Duration::from_secs(100),
            max_ejection_percent: 50,
            ..OutlierDetection::default()
        }
    }

    #[test]
    fn consecutive_failures_cross_thresholds_and_a_success_resets_them() {
        let c = cfg();
        let e = EndpointOutlier::default();
        assert_eq!(e.record(Outcome::Error5xx, &c), None);
        assert_eq!(e.record(Outcome::Error5xx, &c), None);
        assert_eq!(e.record(Outcome::Success, &c), None);
        assert_eq!(e.record(Outcome::Error5xx, &c), None);
        assert_eq!(e.record(Outcome::Error5xx, &c), None);
        assert_eq!(
            e.record(Outcome::Error5xx, &c),
            Some(Reason::Consecutive5xx)
        );
        let g = EndpointOutlier::default();
        assert_eq!(g.record(Outcome::Gateway, &c), None);
        assert_eq!(
            g.record(Outcome::Gateway, &c),
            Some(Reason::ConsecutiveGateway)
        );
        // A non-gateway 5xx breaks a run of gateway failures.
        let h = EndpointOutlier::default();
        let gw_only = OutlierDetection {
            consecutive_5xx: 0,
            ..c
        };
        h.record(Outcome::Gateway, &gw_only);
        h.record(Outcome::Error5xx, &gw_only);
        assert_eq!(h.record(Outcome::Gateway, &gw_only), None);
        // Zero turns a check off.
        let off = OutlierDetection {
            consecutive_5xx: 0,
            consecutive_gateway_failure: 0,
            ..c
        };
        let k = EndpointOutlier::default();
        for _ in 0..10 {
            assert_eq!(k.record(Outcome::Gateway, &off), None);
        }
    }

    #[test]
    fn ejection_time_grows_with_each_ejection_up_to_the_cap() {
        let c = cfg();
        let s = Duration::from_secs;
        assert_eq!(ejection_time(&c, 1), s(30));
        assert_eq!(ejection_time(&c, 2), s(60));
        assert_eq!(ejection_time(&c, 3), s(90));
        assert_eq!(ejection_time(&c, 4), s(100));
        assert_eq!(ejection_time(&c, 1000), s(100));
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejected_endpoint_returns_after_its_time_and_longer_the_next_time() {
        let c = cfg();
        let cluster = ClusterOutlier::default();
        let e = EndpointOutlier::default();
        let t0 = Instant::now();
        assert_eq!(
            e.try_eject(&cluster, &c, 4, t0),
            Some(Duration::from_secs(30))
        );
        assert_eq!(cluster.ejected(), 1);
        assert_eq!(e.try_eject(&cluster, &c, 4, t0), None, "already ejected");
        tokio::time::advance(Duration::from_secs(29)).await;
        let now = millis(Instant::now());
        assert!(e.is_ejected(now));
        assert!(!e.try_return(&cluster, now));
        tokio::time::advance(Duration::from_secs(1)).await;
        let now = millis(Instant::now());
        assert!(!e.is_ejected(now));
        assert!(e.try_return(&cluster, now));
        assert_eq!(cluster.ejected(), 0);
        // The second ejection lasts twice as long.
        assert_eq!(
            e.try_eject(&cluster, &c, 4, Instant::now()),
            Some(Duration::from_secs(60))
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(e.try_return(&cluster, millis(Instant::now())));
        // Two clean intervals decay the multiplier back to nothing.
        let now = millis(Instant::now());
        e.end_interval(now); // the interval it was ejected in: no decay
        e.end_interval(now);
        assert_eq!(e.ejections(), 1);
        e.end_interval(now);
        assert_eq!(e.ejections(), 0);
        assert_eq!(
            e.try_eject(&cluster, &c, 4, Instant::now()),
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn at_most_max_ejection_percent_are_ejected_but_always_one() {
        assert_eq!(max_ejected(10, 3), 1);
        assert_eq!(max_ejected(50, 4), 2);
        assert_eq!(max_ejected(100, 7), 7);
        assert_eq!(max_ejected(0, 7), 1);
        let c = cfg(); // 50%
        let cluster = ClusterOutlier::default();
        let now = Instant::now();
        let es: Vec<EndpointOutlier> = (0..4).map(|_| EndpointOutlier::default()).collect();
        let ejected = es
            .iter()
            .filter(|e| e.try_eject(&cluster, &c, 4, now).is_some())
            .count();
        assert_eq!(ejected, 2);
    }

    #[test]
    fn failure_percentage_needs_volume_and_threshold() {
        let c = OutlierDetection {
            failure_percentage_threshold: 50,
            failure_percentage_request_volume: 10,
            ..cfg()
        };
        assert!(!failure_percentage_exceeded(&c, 9, 9), "too few requests");
        assert!(failure_percentage_exceeded(&c, 10, 5));
        assert!(!failure_percentage_exceeded(&c, 10, 4));
        let off = OutlierDetection {
            failure_percentage_threshold: 0,
            ..c
        };
        assert!(!failure_percentage_exceeded(&off, 100, 100));
    }
}
