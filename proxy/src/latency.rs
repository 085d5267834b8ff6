//! A lock-free latency histogram for the request path: fixed buckets (OpenTelemetry's advised
//! boundaries for HTTP durations), one relaxed atomic add per bucket hit, count and sum. It
//! encodes as a classic Prometheus histogram through `prometheus-client`'s encoder.
//! (`prometheus_client::metrics::histogram::Histogram` takes a mutex on every observation;
//! every worker observes every request.)

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bucket upper bounds in seconds: OpenTelemetry's advice for `http.server.request.duration`
/// and `http.client.request.duration`.
pub const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The same bounds in nanoseconds, for the comparison on the hot path.
const BOUNDS_NANOS: [u64; 14] = [
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    75_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    750_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    7_500_000_000,
    10_000_000_000,
];

#[derive(Debug, Default)]
struct Inner {
    /// Per bucket (not cumulative); the last is +Inf.
    buckets: [AtomicU64; 15],
    sum_nanos: AtomicU64,
}

/// A latency histogram; clones share it.
#[derive(Clone, Debug, Default)]
pub struct LatencyHistogram(Arc<Inner>);

impl LatencyHistogram {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BOUNDS_NANOS.partition_point(|b| *b < nanos);
        if let Some(b) = self.0.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.0.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        // Read the buckets first and take the count from them, so count and buckets agree
        // even while requests are being observed (the sum may be a few observations ahead).
        let mut buckets: Vec<(f64, u64)> = Vec::with_capacity(15);
        for (i, b) in self.0.buckets.iter().enumerate() {
            let bound = BUCKETS.get(i).copied().unwrap_or(f64::INFINITY);
            buckets.push((bound, b.load(Ordering::Relaxed)));
        }
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.0.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = LatencyHistogram::default();
        for ms in [1, 5, 6, 99, 100, 101, 10_000, 10_001, 60_000] {
            h.observe(Duration::from_millis(ms));
        }
        let counts: Vec<u64> =
            h.0.buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect();
        // ≤5ms: 1, 5 | ≤10ms: 6 | ≤0.1s: 99, 100 | ≤0.25s: 101 | ≤10s: 10000 | +Inf: 10001, 60000
        assert_eq!(counts, [2, 1, 0, 0, 0, 2, 1, 0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(h.count(), 9);
        assert_eq!(BOUNDS_NANOS.map(|n| n as f64 / 1e9), BUCKETS);
    }

    #[test]
    fn encodes_as_a_prometheus_histogram() {
        let mut registry = prometheus_client::registry::Registry::default();
        let h = LatencyHistogram::default();
        registry.register("d_seconds", "test", h.clone());
        h.observe(Duration::from_millis(20));
        h.observe(Duration::from_secs(20));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("# TYPE d_seconds histogram"), "{text}");
        assert!(text.contains("d_seconds_count 2"), "{text}");
        assert!(text.contains("d_seconds_sum 20.02"), "{text}");
        assert!(text.contains("d_seconds_bucket{le=\"0.025\"} 1"), "{text}");
        assert!(text.contains("d_seconds_bucket{le=\"10.0\"} 1"), "{text}");
        assert!(text.contains("d_seconds_bucket{le=\"+Inf\"} 2"), "{text}");
    }
}
