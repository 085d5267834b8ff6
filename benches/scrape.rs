//! Cost of one `/metrics` scrape of a proxy with 1,000 clusters and 1,000 routes (each route
//! with its class counters, latency histogram and a breaker's two overflow counters) on 10
//! HTTP listeners (each with responses by method and code), every series holding a value
//! and every latency histogram observed: encoding the Prometheus 0.0.4 text, OpenMetrics, and
//! protobuf with native histograms.
//! Issue 9's bound: under 50 ms.
//!
//! Run: `cargo bench --bench scrape`.

use criterion::{Criterion, criterion_group, criterion_main};
use sluice_proxy::metrics::Metrics;
use std::hint::black_box;
use std::time::Duration;

fn populated() -> Metrics {
    let m = Metrics::new();
    let listeners: Vec<_> = (0..10)
        .map(|i| m.listener(&format!("listener-{i}")))
        .collect();
    for (i, l) in listeners.iter().enumerate() {
        for status in [200, 204, 301, 404, 503] {
            l.response(status, Duration::from_millis(3 + i as u64));
            for method in [http::Method::GET, http::Method::POST] {
                l.response_code(sluice_proxy::metrics::MethodIndex::of(&method), status);
            }
        }
    }
    for i in 0..1_000 {
        let c = m.cluster(&format!("cluster-{i:04}"));
        c.requests.inc();
        c.response(200, Duration::from_millis(i % 200));
        // Each route's class counters and latency histogram (resolved when its table compiles).
        m.route(
            &format!("table-{}", i / 100),
            "vh",
            &format!("route-{i:04}"),
        )
        .response(200, Duration::from_millis(i % 100));
        let _ = m.route_overflow(&format!("route-{i:04}"), "max_requests");
        let _ = m.route_overflow(&format!("route-{i:04}"), "max_retries");
    }
    m
}

fn bench(c: &mut Criterion) {
    let m = populated();
    let text = m.encode_text();
    eprintln!(
        "scrape: {} series lines, {} KiB of text",
        text.lines().filter(|l| !l.starts_with('#')).count(),
        text.len() / 1024
    );
    let mut g = c.benchmark_group("scrape_1000_clusters_1000_routes");
    g.bench_function("prometheus_text_0.0.4", |b| {
        b.iter(|| black_box(m.encode_text()))
    });
    g.bench_function("openmetrics_1.0", |b| {
        b.iter(|| black_box(m.encode_openmetrics()))
    });
    g.bench_function("protobuf_native_histograms", |b| {
        b.iter(|| black_box(m.encode_protobuf()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
