//! What the resilience layers add to each request, measured on their own (the load benchmark
//! measures them inside the proxy):
//!
//! - `default_request`: the bookkeeping every request pays under the default policies — the
//!   retry policy's copy decision, the retry budget deposit, the cluster's `max_requests`
//!   breaker (add and release), the outlier success record and the peak-EWMA sample;
//! - `copy_decision_get` / `copy_head`: a request the policy may resend decides to keep a copy
//!   and clones its head (10 headers) — the replay buffer itself keeps reference-counted
//!   `Bytes`, no copy;
//! - `retry_decision_503`: deciding to retry a 503 (decision table and budget withdrawal).
//!
//! Run: `cargo bench --bench resilience`.

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use sluice_config::{RetryBudget as BudgetConfig, RetryOn};
use sluice_proxy::breaker::Gauge;
use sluice_proxy::cluster::budget::RetryBudget;
use sluice_proxy::cluster::retry::{Attempted, Resend, RetryPolicy};
use sluice_proxy::endpoint::EndpointState;
use std::hint::black_box;
use std::time::Duration;

fn headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "api.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/133.0",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "en-GB,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("cookie", "session=0123456789abcdef; theme=dark"),
        ("x-request-id", "7f0c2b6e-3c1a-4b8e-9f0d-2a6b5c4d3e2f"),
        ("x-forwarded-for", "192.0.2.7"),
        ("x-forwarded-proto", "https"),
        ("referer", "https://api.example.com/orders"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    h
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let h = headers();
    let default_policy = RetryPolicy::default();
    let resend_policy = RetryPolicy::compile(&sluice_config::RetryPolicy {
        retry_on: vec![RetryOn::FiveXx, RetryOn::Reset],
        per_try_timeout: Some(sluice_config::Duration::from_secs(1)),
        ..Default::default()
    });
    let budget = RetryBudget::new(1);
    let budget_cfg = BudgetConfig::default();
    let breaker = Gauge::new(1024);
    let state = EndpointState::default();
    let mut g = c.benchmark_group("resilience");
    g.bench_function("default_request", |b| {
        b.iter(|| {
            let copy = default_policy.keeps_copy(&Method::GET, &h, Some(0), false);
            let now = tokio::time::Instant::now();
            budget.deposit(&budget_cfg, 0, now);
            let admitted = breaker.try_acquire();
            state.outlier.record_success();
            state.observe_latency(Duration::from_micros(300));
            breaker.release();
            black_box((copy, admitted))
        })
    });
    g.bench_function("copy_decision_get", |b| {
        b.iter(|| black_box(resend_policy.keeps_copy(&Method::GET, black_box(&h), None, false)))
    });
    g.bench_function("copy_head", |b| b.iter(|| black_box(h.clone())));
    let none = HeaderMap::new();
    let lavish = BudgetConfig {
        retry_percent: 1000,
        min_retries_per_second: 1_000_000,
        ..BudgetConfig::default()
    };
    g.bench_function("retry_decision_503", |b| {
        b.iter(|| {
            let reason = resend_policy.reason(
                Attempted::Response {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    headers: &none,
                },
                Resend::Any,
            );
            let allowed = budget.withdraw(&lavish, 0, tokio::time::Instant::now());
            black_box((reason, allowed))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
