//! What recording metrics costs one proxied request: every counter, gauge and histogram the
//! request path touches for an HTTP/1.1 request forwarded to a cluster and answered 200, on
//! the handles the proxy resolves at config time. Compared with the CPU per request of the
//! load benchmark (`load.sh`, `ab_cpu.sh`), this is the throughput metrics cost against
//! metrics off (issue 9's budget: 3%).
//!
//! The request path records, per request:
//! - listener: requests, requests in flight (+1, −1), response class and latency histogram,
//!   response code by method, bytes read and written (one read of the head, one write of the
//!   response, as hyper does for a small exchange);
//! - route: response class and latency histogram;
//! - cluster: requests, response class and latency histogram, bytes sent and received on the
//!   upstream connection (one write, one read).
//!
//! Some handles are crate-private (`active_requests`, the byte counters); the bench performs the
//! same operations on the same `prometheus-client` types.
//!
//! Run: `cargo bench --bench record`.

use criterion::{Criterion, criterion_group, criterion_main};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use sluice_proxy::metrics::{MethodIndex, Metrics};
use std::hint::black_box;
use std::time::Duration;

fn bench(c: &mut Criterion) {
    let m = Metrics::new();
    let listener = m.listener("web");
    let route = m.route("table", "vh", "api");
    let cluster = m.cluster("app");
    let in_flight = Gauge::<i64>::default();
    let bytes: [Counter; 4] = Default::default();
    let get = MethodIndex::of(&http::Method::GET);
    let took = Duration::from_micros(420);
    c.bench_function("record_one_proxied_request", |b| {
        b.iter(|| {
            listener.requests.inc();
            in_flight.inc();
            bytes[0].inc_by(black_box(180));
            cluster.requests.inc();
            bytes[1].inc_by(black_box(200));
            bytes[2].inc_by(black_box(240));
            cluster.response(black_box(200), black_box(took));
            listener.response(black_box(200), black_box(took));
            listener.response_code(get, black_box(200));
            route.response(black_box(200), black_box(took));
            bytes[3].inc_by(black_box(240));
            in_flight.dec();
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
