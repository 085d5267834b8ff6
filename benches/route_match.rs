//! Route matching cost with 1, 100 and 10,000 routes.
//!
//! Run: `cargo bench --bench route_match` (about a minute). Filter with a substring, e.g.
//! `cargo bench --bench route_match -- routes_10000`.
//!
//! The table has one virtual host `api.example.com` (plus a `*` catch-all host, so the host
//! lookup is not trivially a single entry) whose routes are `prefix: /svc/{i}/`, in order. Every
//! tenth route (i % 10 == 3) also requires the header `x-env: canary`, and every tenth
//! (i % 10 == 7) is restricted to `methods: [GET, HEAD]`, so a scan exercises the header and
//! method checks as well as plain prefixes. Routes are tried in order and the first match wins,
//! so the cases are:
//!
//! * `first`      – `/svc/0/items`, matches route 0;
//! * `middle`     – `/svc/{n/2}/items`, matches the route in the middle;
//! * `last`       – `/svc/{n-1}/items`, matches the last route;
//! * `header`     – the header-guarded route nearest the middle, request carries `x-env: canary`;
//! * `header_miss`– same path without the header: the guarded route is skipped and the request
//!   falls through to a trailing `prefix: /` catch-all route (the n+1-th route);
//! * `no_match`   – `/nothing/here` in a table without the catch-all: every route is tried and
//!   `find` returns `None`.
//!
//! Everything is built once outside the timing loop; each iteration is one `RouteTable::find`.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};
use sluice_proxy::route::{RequestHead, RouteTable};
use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Duration;

const HOST: &str = "api.example.com";

/// YAML for a table with `n` `/svc/{i}/` routes, and a trailing `/` catch-all if `catch_all`.
fn config_yaml(n: usize, catch_all: bool) -> String {
    let mut y = String::with_capacity(n * 64 + 1024);
    y.push_str(
        "listeners:\n  - name: bench\n    address: 127.0.0.1:0\n    http: { route_table: main }\n",
    );
    y.push_str("route_tables:\n  - name: main\n    virtual_hosts:\n");
    y.push_str(
        "      - name: api\n        domains: [\"api.example.com\", \"api.example.com:8080\"]\n",
    );
    y.push_str("        routes:\n");
    for i in 0..n {
        match i % 10 {
            3 => writeln!(
                y,
                "          - {{ name: r{i}, match: {{ prefix: /svc/{i}/, headers: [{{ name: x-env, exact: canary }}] }}, cluster: backend }}"
            ),
            7 => writeln!(
                y,
                "          - {{ name: r{i}, match: {{ prefix: /svc/{i}/, methods: [GET, HEAD] }}, cluster: backend }}"
            ),
            _ => writeln!(
                y,
                "          - {{ name: r{i}, match: {{ prefix: /svc/{i}/ }}, cluster: backend }}"
            ),
        }
        .unwrap();
    }
    if catch_all {
        y.push_str("          - { name: fallback, match: { prefix: / }, cluster: backend }\n");
    }
    y.push_str("      - name: other\n        domains: [\"*\"]\n        routes:\n");
    y.push_str("          - { name: other, match: { prefix: / }, cluster: backend }\n");
    y.push_str("clusters:\n  - name: backend\n    endpoints: [127.0.0.1:9]\n");
    y
}

fn build(n: usize, catch_all: bool) -> RouteTable {
    let yaml = config_yaml(n, catch_all);
    let cfg = match sluice_config::parse(&yaml, "bench.yaml") {
        Ok(c) => c,
        Err(e) => panic!("bench config does not parse: {e}"),
    };
    let metrics = std::sync::Arc::new(sluice_proxy::metrics::Metrics::new());
    let mut clusters = sluice_proxy::cluster::Registry::new(metrics, 1);
    for c in &cfg.clusters {
        clusters.set_settings(c).expect("cluster settings");
    }
    RouteTable::compile(&cfg.route_tables[0], &mut clusters).expect("route table compiles")
}

struct Case {
    name: &'static str,
    path: String,
    headers: HeaderMap,
    /// Table with the trailing catch-all?
    catch_all: bool,
    /// Expected route name (`None`: no match).
    expect: Option<String>,
}

fn cases(n: usize) -> Vec<Case> {
    let plain = HeaderMap::new();
    let mut canary = HeaderMap::new();
    canary.insert("x-env", HeaderValue::from_static("canary"));
    canary.insert("user-agent", HeaderValue::from_static("bench/1.0"));
    canary.insert("accept", HeaderValue::from_static("*/*"));

    let mut v = vec![Case {
        name: "first",
        path: "/svc/0/items".into(),
        headers: plain.clone(),
        catch_all: false,
        expect: Some("r0".into()),
    }];
    if n > 1 {
        let mid = n / 2;
        let last = n - 1;
        // Nearest header-guarded route (i % 10 == 3) at or after the middle.
        let guarded = mid + (13 - mid % 10) % 10;
        v.push(Case {
            name: "middle",
            path: format!("/svc/{mid}/items"),
            headers: plain.clone(),
            catch_all: false,
            expect: Some(format!("r{mid}")),
        });
        v.push(Case {
            name: "last",
            path: format!("/svc/{last}/items"),
            headers: plain.clone(),
            catch_all: false,
            expect: Some(format!("r{last}")),
        });
        v.push(Case {
            name: "header",
            path: format!("/svc/{guarded}/items"),
            headers: canary.clone(),
            catch_all: false,
            expect: Some(format!("r{guarded}")),
        });
        v.push(Case {
            name: "header_miss",
            path: format!("/svc/{guarded}/items"),
            headers: plain.clone(),
            catch_all: true,
            expect: Some("fallback".into()),
        });
    }
    v.push(Case {
        name: "no_match",
        path: "/nothing/here".into(),
        headers: plain,
        catch_all: false,
        expect: None,
    });
    v
}

fn route_match(c: &mut Criterion) {
    for n in [1usize, 100, 10_000] {
        let table = build(n, false);
        let table_fallback = build(n, true);
        let mut group = c.benchmark_group(format!("routes_{n}"));
        for case in cases(n) {
            let t = if case.catch_all {
                &table_fallback
            } else {
                &table
            };
            let head = RequestHead {
                method: &Method::GET,
                host: HOST,
                path: &case.path,
                query: Some("a=1"),
                headers: &case.headers,
            };
            // Check the case matches what it claims before timing it.
            let got = t.find(&head).map(|(_, r)| r.name.clone());
            assert_eq!(got, case.expect, "routes_{n}/{}", case.name);
            group.bench_function(BenchmarkId::from_parameter(case.name), |b| {
                b.iter(|| black_box(t.find(black_box(&head))).is_some())
            });
        }
        group.finish();
    }
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = route_match
}
criterion_main!(benches);
