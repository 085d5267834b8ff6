//! Cost of the normalize step that runs on every request before routing
//! (`sluice_proxy::http::edge::EdgePolicy::check`: transfer-coding and header-count checks,
//! one pass over header names for trust and underscores, Host validation, path normalization).
//!
//! Run: `cargo bench --bench edge_check`. Cases (default listener settings):
//!
//! * `typical`       – `GET /api/v1/users/12345?expand=true` with the nine headers a browser or
//!   SDK sends; nothing to change (the common path: checks only, no allocation);
//! * `long_path`     – a normal 20-segment path of 200 bytes;
//! * `dot_segments`  – `/static/./css/../js/app.js`: normalized (allocates the new target);
//! * `encoded`       – `/%61pi/v1/%7Euser`: unreserved escapes decoded;
//! * `untrusted_xff` – the typical request plus client `x-forwarded-for` and `x-request-id`,
//!   which are removed;
//! * `clone_only`    – cloning the request head, the baseline the mutating cases include.
//!
//! The mutating cases clone the head each iteration (the step changes it); subtract
//! `clone_only` to get the step's own cost.

use criterion::{Criterion, criterion_group, criterion_main};
use http::request::Parts;
use http::{HeaderValue, Request};
use sluice_proxy::http::edge::EdgePolicy;
use sluice_proxy::metrics::Metrics;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));

fn head(target: &str, extra: &[(&str, &str)]) -> Parts {
    let mut b = Request::get(target)
        .header("host", "api.example.com")
        .header(
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0",
        )
        .header("accept", "application/json, text/plain, */*")
        .header("accept-language", "en-US,en;q=0.5")
        .header("accept-encoding", "gzip, deflate, br")
        .header(
            "authorization",
            "Bearer eyJhbGciOiJIUzI1NiJ9.e30.ZRrHA1JJJW8opsbCGfG_HACGpVUMN_a9IV7pAx_Zmeo",
        )
        .header(
            "cookie",
            "session=8f14e45fceea167a5a36dedd4bea2543; theme=dark",
        )
        .header("referer", "https://app.example.com/dashboard")
        .header("sec-fetch-mode", "cors");
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn bench(c: &mut Criterion) {
    let policy = EdgePolicy::compile(&sluice_config::HttpListener::new("main"));
    let metrics = Metrics::new().listener("bench");
    let host = HeaderValue::from_static("api.example.com");
    let mut g = c.benchmark_group("edge_check");

    let mut typical = head("/api/v1/users/12345?expand=true", &[]);
    g.bench_function("typical", |b| {
        b.iter(|| black_box(policy.check(&mut typical, &host, PEER, &metrics).is_ok()))
    });
    let long: String = (0..20).map(|i| format!("/segment-{i:02}")).collect();
    let mut long = head(&long, &[]);
    g.bench_function("long_path", |b| {
        b.iter(|| black_box(policy.check(&mut long, &host, PEER, &metrics).is_ok()))
    });
    let dots = head("/static/./css/../js/app.js", &[]);
    g.bench_function("dot_segments", |b| {
        b.iter(|| {
            let mut h = dots.clone();
            black_box(policy.check(&mut h, &host, PEER, &metrics).is_ok())
        })
    });
    let encoded = head("/%61pi/v1/%7Euser", &[]);
    g.bench_function("encoded", |b| {
        b.iter(|| {
            let mut h = encoded.clone();
            black_box(policy.check(&mut h, &host, PEER, &metrics).is_ok())
        })
    });
    let xff = head(
        "/api/v1/users/12345?expand=true",
        &[("x-forwarded-for", "198.51.100.7"), ("x-request-id", "abc")],
    );
    g.bench_function("untrusted_xff", |b| {
        b.iter(|| {
            let mut h = xff.clone();
            black_box(policy.check(&mut h, &host, PEER, &metrics).is_ok())
        })
    });
    g.bench_function("clone_only", |b| b.iter(|| black_box(xff.clone())));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
