//! Outlier detection's periodic sweep of a cluster (the control thread runs it for every
//! cluster a few times a second): ends ejections whose time has passed, and at the end of each
//! `interval` ejects endpoints whose failure percentage crossed the threshold and lets the
//! ejection multiplier of clean endpoints decay. The per-request half (consecutive failures)
//! is in `cluster::call`; the counters live on the endpoint state (`crate::outlier`).

use super::ClusterHandle;
use crate::outlier::{self, Reason};
use tokio::time::Instant;

/// Sweeps one cluster at `now`.
pub(super) fn sweep(h: &ClusterHandle, now: Instant) {
    let o = &h.shared.outlier;
    let set = h.endpoints_guard();
    let now_ms = outlier::millis(now);
    for e in &set.endpoints {
        if e.state.is_ejected() && e.state.return_if_due(now) {
            tracing::info!(cluster = %h.name, endpoint = %e.address, ejections = e.state.outlier.ejections(), "outlier ejection ended: endpoint back in rotation");
        }
    }
    if o.enabled() {
        let c = o.config();
        if o.interval_passed(&c, now_ms) {
            let n = set.endpoints.len();
            let by_percentage = c.failure_percentage_threshold > 0
                && n >= c.failure_percentage_minimum_hosts as usize;
            for e in &set.endpoints {
                let (total, failed) = e.state.outlier.end_interval(now_ms);
                if by_percentage
                    && outlier::failure_percentage_exceeded(&c, total, failed)
                    && let Some((reason, d)) = e.state.eject(Reason::FailurePercentage, &c, n, now)
                {
                    ejected(h, e.address, reason, d, Some((failed, total)));
                }
            }
        }
    }
    let count = set
        .endpoints
        .iter()
        .filter(|e| e.state.is_ejected())
        .count();
    o.set_ejected(u32::try_from(count).unwrap_or(u32::MAX));
    h.metrics
        .ejected
        .set(i64::try_from(count).unwrap_or(i64::MAX));
}

/// Counts and logs an ejection.
pub(super) fn ejected(
    h: &ClusterHandle,
    endpoint: std::net::SocketAddr,
    reason: Reason,
    duration: std::time::Duration,
    failures: Option<(u32, u32)>,
) {
    h.metrics.ejections.inc(reason.as_str());
    h.metrics.ejected.inc();
    match failures {
        Some((failed, total)) => {
            tracing::warn!(cluster = %h.name, %endpoint, reason = reason.as_str(), ?duration, failed, total, "outlier detection ejected an endpoint")
        }
        None => {
            tracing::warn!(cluster = %h.name, %endpoint, reason = reason.as_str(), ?duration, "outlier detection ejected an endpoint")
        }
    }
}
