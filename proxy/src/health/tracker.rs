//! The pure decisions of health checking: the threshold state machine of one endpoint and
//! the jittered wait between checks.

use std::time::Duration;

/// `interval` ± `percent`% of it, `r` in [0, 1) choosing where in that span.
pub(crate) fn jittered(interval: Duration, percent: u32, r: f64) -> Duration {
    let span = interval.as_secs_f64() * f64::from(percent.min(100)) / 100.0;
    let secs = interval.as_secs_f64() - span + 2.0 * span * r.clamp(0.0, 1.0);
    Duration::from_secs_f64(secs.max(0.0))
}

/// Consecutive results needed to change an endpoint's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Thresholds {
    /// Successes that bring an unhealthy endpoint back.
    pub(crate) healthy: u32,
    /// Failures that mark a healthy endpoint unhealthy.
    pub(crate) unhealthy: u32,
}

/// A change of health decided by a [`Tracker`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Healthy,
    Unhealthy,
}

/// The threshold state machine of one endpoint (Envoy's): consecutive failures of a healthy
/// endpoint up to the unhealthy threshold mark it unhealthy; consecutive successes of an
/// unhealthy one up to the healthy threshold bring it back, except that the very first result
/// of a tracker decides at once when it is a success (an endpoint pending its first check
/// comes in on one success, as in Envoy).
#[derive(Debug)]
pub(crate) struct Tracker {
    thresholds: Thresholds,
    successes: u32,
    failures: u32,
    first: bool,
}

impl Tracker {
    pub(crate) fn new(thresholds: Thresholds) -> Self {
        Tracker {
            thresholds,
            successes: 0,
            failures: 0,
            first: true,
        }
    }

    /// Records a result for an endpoint that is (`failed`) or is not marked unhealthy now;
    /// returns the change to make, if any.
    pub(crate) fn record(&mut self, success: bool, failed: bool) -> Option<Verdict> {
        let first = std::mem::replace(&mut self.first, false);
        if success {
            self.failures = 0;
            if !failed {
                self.successes = 0;
                return None;
            }
            self.successes += 1;
            if first || self.successes >= self.thresholds.healthy {
                self.successes = 0;
                return Some(Verdict::Healthy);
            }
        } else {
            self.successes = 0;
            if failed {
                self.failures = 0;
                return None;
            }
            self.failures += 1;
            if self.failures >= self.thresholds.unhealthy {
                self.failures = 0;
                return Some(Verdict::Unhealthy);
            }
        }
        None
    }
}
