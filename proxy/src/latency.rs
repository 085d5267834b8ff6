//! A lock-free latency histogram for the request path. Each observation lands in two sets of
//! buckets, one atomic add each:
//! - classic buckets at OpenTelemetry's advised boundaries for HTTP durations, which every
//!   exposition format carries;
//! - native (exponential) buckets at schema 3 (each bucket 2^(1/8) ≈ 9% wider than the last,
//!   the resolution Prometheus's own clients default to), which only the protobuf exposition
//!   carries. They cover (2^-20 s ≈ 1 µs, 2^14 s ≈ 4.5 h]; shorter durations count in the
//!   zero bucket, longer ones in the top bucket. Their array (2.2 KiB) is allocated on the
//!   first observation, so histograms of routes and clusters that see no traffic cost nothing.
//!
//! (`prometheus_client::metrics::histogram::Histogram` takes a mutex on every observation;
//! every worker observes every request.)

use prometheus_client::encoding::{
    EncodeMetric, MetricEncoder, NativeHistogram, NativeHistogramBuckets, NoLabelSet,
};
use prometheus_client::metrics::{MetricType, TypedMetric};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Native bucket schema: bucket `i` holds (2^((i-1)/8), 2^(i/8)] seconds.
pub const NATIVE_SCHEMA: i32 = 3;
const PER_OCTAVE: i32 = 1 << NATIVE_SCHEMA;
/// Lowest octave covered: durations up to 2^-20 s count in the zero bucket.
const MIN_OCTAVE: i32 = -20;
/// Highest octave covered: durations above 2^14 s count in the top bucket.
const MAX_OCTAVE: i32 = 14;
/// The zero bucket's width in seconds (2^-20).
pub const NATIVE_ZERO_THRESHOLD: f64 = 1.0 / (1u64 << 20) as f64;
/// Index of the first native bucket above the zero bucket.
const FIRST_INDEX: i32 = MIN_OCTAVE * PER_OCTAVE + 1;
/// Native buckets held.
const NATIVE_BUCKETS: usize = ((MAX_OCTAVE - MIN_OCTAVE) * PER_OCTAVE) as usize;
/// 2^(k/8) for k in 0..8: where a mantissa in [1, 2) falls within its octave.
const SUB_BOUNDS: [f64; 8] = [
    1.0,
    1.090_507_732_665_257_7,
    1.189_207_115_002_721,
    1.296_839_554_651_009_6,
    std::f64::consts::SQRT_2,
    1.542_210_825_407_940_8,
    1.681_792_830_507_429,
    1.834_008_086_409_342_5,
];

thread_local! {
    /// Set while this thread encodes the protobuf exposition, the one format that carries
    /// native buckets: the text formats skip reading them.
    static NATIVE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks this thread as encoding native histograms until dropped.
pub(crate) struct NativeScope(());

impl NativeScope {
    pub(crate) fn enter() -> Self {
        NATIVE.with(|n| n.set(true));
        NativeScope(())
    }
}

impl Drop for NativeScope {
    fn drop(&mut self) {
        NATIVE.with(|n| n.set(false));
    }
}

/// The native bucket index of `seconds` (> 0): ⌈8·log₂ seconds⌉, without a logarithm.
fn native_index(seconds: f64) -> i32 {
    let bits = seconds.to_bits();
    let exponent = ((bits >> 52) & 0x7ff) as i32 - 1023;
    let mantissa = f64::from_bits((bits & ((1u64 << 52) - 1)) | (1023u64 << 52));
    exponent * PER_OCTAVE + SUB_BOUNDS.partition_point(|b| *b < mantissa) as i32
}

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
    /// Native buckets from [`FIRST_INDEX`] up, allocated on the first observation.
    native: OnceLock<Box<[AtomicU64]>>,
    /// Durations of at most [`NATIVE_ZERO_THRESHOLD`].
    native_zero: AtomicU64,
}

/// A latency histogram; clones share it.
#[derive(Clone, Debug, Default)]
pub struct LatencyHistogram(Arc<Inner>);

impl LatencyHistogram {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // The native bucket first (Release) and the classic one after: a scrape reads the
        // classic buckets first (Acquire), so the native count it reads next, which is the
        // histogram's count, is never behind the classic buckets it encoded.
        let seconds = nanos as f64 / 1e9;
        if seconds <= NATIVE_ZERO_THRESHOLD {
            self.0.native_zero.fetch_add(1, Ordering::Release);
        } else {
            let native = self.0.native.get_or_init(|| {
                (0..NATIVE_BUCKETS)
                    .map(|_| AtomicU64::new(0))
                    .collect::<Vec<_>>()
                    .into_boxed_slice()
            });
            let i = (native_index(seconds) - FIRST_INDEX).clamp(0, NATIVE_BUCKETS as i32 - 1);
            if let Some(b) = native.get(i as usize) {
                b.fetch_add(1, Ordering::Release);
            }
        }
        let i = BOUNDS_NANOS.partition_point(|b| *b < nanos);
        if let Some(b) = self.0.buckets.get(i) {
            b.fetch_add(1, Ordering::Release);
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

    /// The native buckets as Prometheus's sparse encoding: spans of consecutive buckets
    /// (`(offset from the end of the last span, length)`, gaps of up to two empty buckets
    /// are kept inside a span) and count deltas; plus the zero bucket and the total count.
    fn native_spans(&self) -> (Vec<(i32, u32)>, Vec<i64>, u64, u64) {
        let zero = self.0.native_zero.load(Ordering::Acquire);
        let mut spans: Vec<(i32, u32)> = Vec::new();
        let mut deltas = Vec::new();
        let mut total = zero;
        let Some(native) = self.0.native.get() else {
            return (spans, deltas, zero, total);
        };
        // Index just past the last bucket written, and the last count written.
        let mut end: Option<i32> = None;
        let mut previous = 0i64;
        for (i, b) in native.iter().enumerate() {
            let n = b.load(Ordering::Acquire);
            if n == 0 {
                continue;
            }
            total += n;
            let index = FIRST_INDEX + i as i32;
            match (end, spans.last_mut()) {
                (Some(e), Some(span)) if index - e <= 2 => {
                    // Close a small gap with empty buckets rather than a new span.
                    for _ in e..index {
                        deltas.push(-previous);
                        previous = 0;
                    }
                    span.1 += (index - e) as u32 + 1;
                }
                (e, _) => spans.push((index - e.unwrap_or(0), 1)),
            }
            deltas.push(n as i64 - previous);
            previous = n as i64;
            end = Some(index + 1);
        }
        (spans, deltas, zero, total)
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

/// A histogram's figures at one instant, as every exposition writes them.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// Sum of the observations, in seconds.
    pub(crate) sum: f64,
    /// Number of observations.
    pub(crate) count: u64,
    /// Classic buckets: upper bound and the count of that bucket alone (not cumulative),
    /// `+Inf` last.
    pub(crate) buckets: [(f64, u64); 15],
    /// Native positive buckets (empty unless asked for): spans (then never empty: a histogram
    /// without native observations has the no-op span `(0, 0)`, which marks it native for
    /// Prometheus) and count deltas.
    pub(crate) spans: Vec<(i32, u32)>,
    pub(crate) deltas: Vec<i64>,
    /// Observations at or below [`NATIVE_ZERO_THRESHOLD`].
    pub(crate) zero_count: u64,
}

impl LatencyHistogram {
    /// The figures to expose; with `native`, the native buckets too (their total is the
    /// count, and the classic `+Inf` bucket is made to agree with it, since the atomics are
    /// read one by one while requests record).
    pub(crate) fn snapshot(&self, native: bool) -> Snapshot {
        let mut buckets = [(f64::INFINITY, 0u64); 15];
        for (i, (slot, b)) in buckets.iter_mut().zip(&self.0.buckets).enumerate() {
            *slot = (
                BUCKETS.get(i).copied().unwrap_or(f64::INFINITY),
                b.load(Ordering::Acquire),
            );
        }
        let (mut spans, deltas, zero_count, count) = if native {
            self.native_spans()
        } else {
            let classic = buckets.iter().map(|(_, n)| n).sum();
            (Vec::new(), Vec::new(), 0, classic)
        };
        if native && spans.is_empty() {
            spans.push((0, 0));
        }
        if let Some((last, finite)) = buckets.split_last_mut() {
            last.1 = count.saturating_sub(finite.iter().map(|(_, n)| n).sum());
        }
        Snapshot {
            sum: self.0.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            count,
            buckets,
            spans,
            deltas,
            zero_count,
        }
    }
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = self.snapshot(NATIVE.with(|n| n.get()));
        encoder.encode_histogram_with_native::<NoLabelSet>(
            s.sum,
            s.count,
            &s.buckets,
            None,
            NativeHistogram {
                schema: NATIVE_SCHEMA,
                zero_threshold: NATIVE_ZERO_THRESHOLD,
                zero_count: s.zero_count,
                negative: NativeHistogramBuckets {
                    spans: &[],
                    deltas: &[],
                },
                positive: NativeHistogramBuckets {
                    spans: &s.spans,
                    deltas: &s.deltas,
                },
                created: None,
            },
        )
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

    #[test]
    fn native_indexes_match_the_logarithm() {
        for nanos in [
            1_001u64,
            7_777,
            123_456,
            999_999,
            1_000_001,
            42_000_000,
            3_100_000_000,
        ] {
            let s = nanos as f64 / 1e9;
            assert_eq!(native_index(s), (s.log2() * 8.0).ceil() as i32, "{s}");
        }
        // Exact powers of two are the upper bound of their bucket.
        assert_eq!(native_index(1.0), 0);
        assert_eq!(native_index(0.5), -8);
        assert_eq!(native_index(2.0), 8);
        assert_eq!(native_index(1.05), 1);
    }

    #[test]
    fn native_buckets_encode_as_spans_and_deltas() {
        let h = LatencyHistogram::default();
        // Before any observation: a native histogram with a no-op span.
        let encoded = protobuf(&h);
        assert_eq!(encoded.schema, 3);
        assert_eq!(encoded.positive_span.len(), 1);
        assert_eq!(encoded.positive_span[0].length, 0);

        // 1 s → index 0; 1.05 s → 1; 1.2 s → 3 (a gap of one: kept inside the span);
        // 4 s → 16 (a new span); 100 ns → the zero bucket.
        for ms in [1000, 1000, 1050, 1200, 4000] {
            h.observe(Duration::from_millis(ms));
        }
        h.observe(Duration::from_nanos(100));
        let encoded = protobuf(&h);
        assert_eq!(encoded.sample_count, 6);
        assert_eq!(encoded.zero_count, 1);
        assert_eq!(encoded.zero_threshold, NATIVE_ZERO_THRESHOLD);
        let spans: Vec<(i32, u32)> = encoded
            .positive_span
            .iter()
            .map(|s| (s.offset, s.length))
            .collect();
        assert_eq!(spans, [(0, 4), (12, 1)]);
        // Counts 2, 1, 0, 1 | 1 as deltas.
        assert_eq!(encoded.positive_delta, [2, -1, -1, 1, 0]);
        // The classic buckets ride along, cumulative.
        let le_1 = encoded
            .bucket
            .iter()
            .find(|b| b.upper_bound == 1.0)
            .unwrap();
        assert_eq!(le_1.cumulative_count, 3);
    }

    #[test]
    fn durations_beyond_the_native_range_count_in_its_edge_buckets() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_secs(100_000));
        h.observe(Duration::from_secs(1_000_000));
        let encoded = protobuf(&h);
        assert_eq!(encoded.sample_count, 2);
        let top = MAX_OCTAVE * PER_OCTAVE;
        assert_eq!(encoded.positive_span[0].offset, top);
        assert_eq!(encoded.positive_delta, [2]);
    }

    fn protobuf(
        h: &LatencyHistogram,
    ) -> prometheus_client::encoding::prometheus_protobuf::prometheus_data_model::Histogram {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("d_seconds", "test", h.clone());
        let _native = NativeScope::enter();
        let families = prometheus_client::encoding::prometheus_protobuf::encode(&registry).unwrap();
        families[0].metric[0].histogram.clone().unwrap()
    }
}
