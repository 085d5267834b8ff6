//! Cost of one endpoint pick per balancer with 3, 100 and 10,000 endpoints (equal weights, all
//! healthy, none tried; a fresh request hash per pick), and with half of the endpoints
//! unhealthy (no hash: ring hash and Maglev pick a random point).
//!
//! Run: `cargo bench --bench lb_pick`. Each iteration is one `LoadBalancer::pick`.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use sluice_proxy::endpoint::{Endpoint, EndpointState, Health};
use sluice_proxy::lb::{
    Bound, LeastRequest, LoadBalancer, Maglev, PeakEwma, PickContext, Random, RingHash, RoundRobin,
};
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

fn endpoints(n: usize) -> Vec<Arc<Endpoint>> {
    (0..n)
        .map(|i| {
            Arc::new(Endpoint {
                address: SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 8080)),
                weight: 1,
                state: Arc::new(EndpointState::default()),
            })
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("lb_pick");
    for n in [3usize, 100, 10_000] {
        let eps = endpoints(n);
        let weights = vec![1u32; n];
        let balancers: [(&str, Box<dyn LoadBalancer>); 6] = [
            ("round_robin", Box::new(RoundRobin::new(&weights, 1))),
            ("random", Box::new(Random::new(&weights))),
            ("least_request", Box::new(LeastRequest::new(&weights))),
            (
                "peak_ewma",
                Box::new(PeakEwma::new(&weights, Duration::from_millis(30))),
            ),
            (
                "ring_hash",
                Box::new(RingHash::new(&eps, 1024, 8 << 20, Bound::none())),
            ),
            ("maglev", Box::new(Maglev::new(&eps, 65537, Bound::none()))),
        ];
        // Hash-based balancers get a different request hash per iteration.
        let mut key = 0u64;
        for (name, lb) in &balancers {
            g.bench_with_input(BenchmarkId::new(*name, n), &n, |b, _| {
                b.iter(|| {
                    key = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    let ctx = PickContext {
                        hash: Some(key),
                        ..PickContext::default()
                    };
                    black_box(lb.pick(&eps, &ctx).map(|e| e.address))
                })
            });
        }
        let ctx = PickContext::default();
        // Half unhealthy (every other endpoint): picks must skip them.
        for e in eps.iter().step_by(2) {
            e.state.set_unhealthy(Health::FAILED_OUTLIER);
        }
        for (name, lb) in &balancers {
            g.bench_with_input(
                BenchmarkId::new(format!("{name}_half_unhealthy"), n),
                &n,
                |b, _| b.iter(|| black_box(lb.pick(&eps, &ctx).map(|e| e.address))),
            );
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
