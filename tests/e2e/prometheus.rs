//! The metrics endpoint as Prometheus sees it: `promtool check metrics` accepts a scrape taken
//! after mixed traffic, and a real Prometheus server scraping the admin API on loopback counts
//! what was sent.

use crate::support::*;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

/// A Prometheus server scraping `target` every 100 ms, on a free loopback port.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Self {
        Self::start_with(target, &[])
    }

    /// As [`Prometheus::start`], with extra command-line flags.
    fn start_with(target: SocketAddr, flags: &[&str]) -> Self {
        require_tool("prometheus", "prometheus");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{ scrape_interval: 100ms, scrape_timeout: 100ms }}\n\
                 scrape_configs:\n  - job_name: sluice\n    static_configs: [{{ targets: ['{target}'] }}]\n"
            ),
        )
        .unwrap();
        // Prometheus cannot report a port it chose: take a free one (the race is loopback-only).
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .args(flags)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run prometheus");
        let p = Prometheus {
            child,
            addr,
            _dir: dir,
        };
        eventually("prometheus ready", || {
            std::net::TcpStream::connect(p.addr).ok()?;
            (http_get(p.addr, "/-/ready").0 == 200).then_some(())
        });
        p
    }

    /// The value of an instant query with one result, if it has one.
    fn query(&self, promql: &str) -> Option<f64> {
        let out = curl(&[
            "-G",
            &format!("http://{}/api/v1/query", self.addr),
            "--data-urlencode",
            &format!("query={promql}"),
        ]);
        let v = out.json();
        let result = v["data"]["result"].as_array()?;
        let [one] = result.as_slice() else {
            return None;
        };
        one["value"][1].as_str()?.parse().ok()
    }
}

impl Prometheus {
    /// Runs a query; `Err` with Prometheus's error when it refuses it.
    fn check(&self, promql: &str) -> Result<(), String> {
        let out = curl(&[
            "-G",
            &format!("http://{}/api/v1/query", self.addr),
            "--data-urlencode",
            &format!("query={promql}"),
        ]);
        let v = out.json();
        if v["status"] == "success" {
            Ok(())
        } else {
            Err(v["error"].to_string())
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn promtool_accepts_the_scrape_and_a_real_prometheus_counts_the_traffic() {
    require_tool("promtool", "prometheus");
    let app = echo("app");
    let bin = Binary::start(
        &format!(
            "listeners:
  - {{ name: web, address: 127.0.0.1:0, http: {{ route_table: t }} }}
  - {{ name: raw, address: 127.0.0.1:0, tcp: {{ cluster: app }} }}
route_tables:
  - name: t
    virtual_hosts:
      - name: v
        domains: ['*']
        routes:
          - {{ name: ok, match: {{ prefix: /ok }}, cluster: app }}
          - {{ name: down, match: {{ prefix: /down }}, cluster: empty }}
clusters:
  - {{ name: app, endpoints: [{app}] }}
  - {{ name: empty, endpoints: [127.0.0.1:9], outlier_detection: {{ enabled: false }} }}
"
        ),
        &[],
    );
    let web = bin.addr("web");
    for _ in 0..10 {
        assert_eq!(http_get(web, "/ok").0, 200);
    }
    for _ in 0..3 {
        assert_eq!(http_get(web, "/nowhere").0, 404);
    }
    for _ in 0..2 {
        assert_eq!(http_get(web, "/down").0, 503);
    }
    let (out, _) = raw_exchange(
        web,
        b"GET /ok HTTP/1.1\r\n\r\n",
        std::time::Duration::from_secs(5),
    );
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    drop(std::net::TcpStream::connect(bin.addr("raw")).unwrap());

    // promtool's linter on the exposition.
    let scrape = http_get(bin.admin, "/metrics").1;
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // `Accept` picks the format: OpenMetrics 1.0 when asked for (Prometheus asks first), the
    // 0.0.4 text format otherwise.
    let om = curl(&[
        "-H",
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        &format!("http://{}/metrics", bin.admin),
    ]);
    assert!(
        om.header("content-type")
            .is_some_and(|t| t.starts_with("application/openmetrics-text; version=1.0.0")),
        "{:?}",
        om.headers
    );
    let om = om.text();
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(
        om.contains("# TYPE sluice_downstream_requests counter"),
        "{om}"
    );
    let plain = curl(&[&format!("http://{}/metrics", bin.admin)]);
    assert!(
        plain
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        plain.headers
    );

    // A real Prometheus, scraping the admin API (it negotiates OpenMetrics).
    let prom = Prometheus::start(bin.admin);
    let expect = |promql: &str, want: f64| {
        eventually(promql, || (prom.query(promql) == Some(want)).then_some(()))
    };
    expect(
        r#"sluice_downstream_responses_total{listener="web",class="2xx"}"#,
        10.0,
    );
    expect(
        r#"sluice_downstream_error_responses_total{listener="web",flag="NR"}"#,
        3.0,
    );
    expect(
        r#"sluice_downstream_error_responses_total{listener="web",flag="UF"}"#,
        2.0,
    );
    expect(
        r#"sluice_downstream_rejected_total{listener="web",reason="missing_host"}"#,
        1.0,
    );
    // Series that had no event exist at 0 (so `increase()` works from the start).
    expect(
        r#"sluice_downstream_rejected_total{listener="web",reason="invalid_path"}"#,
        0.0,
    );
    expect(
        r#"sluice_downstream_connections_total{listener="raw"}"#,
        1.0,
    );
    // No HTTP series for the TCP listener.
    expect(
        r#"count(sluice_downstream_responses_total{listener="raw"}) or vector(0)"#,
        0.0,
    );
    expect(r#"up{job="sluice"}"#, 1.0);
    // The process family (unprefixed, as every Prometheus client library names it) and the
    // config in force.
    for q in [
        r#"process_resident_memory_bytes{job="sluice"} > 1e6"#,
        r#"process_open_fds{job="sluice"} > 3"#,
        r#"process_max_fds{job="sluice"} > 3"#,
        r#"time() - process_start_time_seconds{job="sluice"} < 3600"#,
        r#"process_cpu_seconds_total{job="sluice"} > 0"#,
        r#"sluice_config_generation{job="sluice"} >= 1"#,
        r#"time() - sluice_config_last_applied_timestamp_seconds{job="sluice"} < 3600"#,
    ] {
        eventually(q, || prom.query(q).map(|_| ()));
    }

    // Latency histograms: every request answered on the listener, every attempt per cluster.
    expect(
        r#"sluice_http_server_request_duration_seconds_count{listener="web"}"#,
        16.0,
    );
    expect(
        r#"sluice_http_client_request_duration_seconds_count{cluster="app"}"#,
        10.0,
    );
    // Per-cluster response codes (a canary's 5xx would show here, not only on the listener).
    expect(
        r#"sluice_upstream_responses_total{cluster="app",class="2xx"}"#,
        10.0,
    );
    expect(
        r#"sluice_upstream_responses_total{cluster="app",class="5xx"}"#,
        0.0,
    );
    // Per route: the routes are named, so their series are too (created at 0 with the
    // route table; 404s matched no route and count on the listener only).
    expect(
        r#"sluice_route_responses_total{route_table="t",virtual_host="v",route="ok",class="2xx"}"#,
        10.0,
    );
    expect(
        r#"sluice_route_responses_total{route_table="t",virtual_host="v",route="down",class="5xx"}"#,
        2.0,
    );
    expect(
        r#"sluice_route_responses_total{route_table="t",virtual_host="v",route="down",class="2xx"}"#,
        0.0,
    );
    expect(
        r#"sluice_route_request_duration_seconds_count{route="ok"}"#,
        10.0,
    );
    expect(r#"sluice_downstream_requests_active{listener="web"}"#, 0.0);
    // Bytes on the wire, both directions (the TCP listener's connection carried none).
    for q in [
        r#"sluice_downstream_bytes_total{listener="web",direction="received"} > 500"#,
        r#"sluice_downstream_bytes_total{listener="web",direction="sent"} > 1000"#,
        // The same toward the cluster; its pooled connection stays open.
        r#"sluice_upstream_bytes_total{cluster="app",direction="sent"} > 500"#,
        r#"sluice_upstream_bytes_total{cluster="app",direction="received"} > 1000"#,
        r#"sluice_upstream_connections_active{cluster="app"} >= 1"#,
    ] {
        eventually(q, || prom.query(q).map(|_| ()));
    }
    expect(
        r#"sluice_downstream_bytes_total{listener="raw",direction="sent"}"#,
        0.0,
    );
    // By method and exact status code.
    for (code, n) in [("200", 10.0), ("404", 3.0), ("503", 2.0), ("400", 1.0)] {
        expect(
            &format!(
                r#"sluice_downstream_response_codes_total{{listener="web",method="GET",code="{code}"}}"#
            ),
            n,
        );
    }
    // A quantile Prometheus computes from the buckets: loopback answers are fast.
    let p99 = eventually("p99 latency", || {
        prom.query(
            r#"histogram_quantile(0.99, sluice_http_server_request_duration_seconds_bucket{listener="web"})"#,
        )
    });
    assert!(p99 > 0.0 && p99 <= 0.25, "p99 {p99}");
    let client_p50 = eventually("p50 upstream latency", || {
        prom.query(
            r#"histogram_quantile(0.5, sluice_http_client_request_duration_seconds_bucket{cluster="app"})"#,
        )
    });
    assert!(client_p50 > 0.0 && client_p50 <= 0.25, "p50 {client_p50}");

    // The bundled Grafana dashboard: Prometheus accepts every query, and every metric it
    // names is one Sluice exports.
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/grafana/sluice-dashboard.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let exported: std::collections::BTreeSet<&str> = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let promql = expr
                .replace("$__rate_interval", "1m")
                .replace("$job", ".*")
                .replace("$instance", ".*")
                .replace("$listener", ".*")
                .replace("$cluster", ".*");
            prom.check(&promql)
                .unwrap_or_else(|e| panic!("panel {}: {e}\n{promql}", panel["title"]));
            for name in promql.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if name.starts_with("sluice_") {
                    // A histogram's series are `NAME_bucket`; everything else as typed.
                    let family = name.strip_suffix("_bucket").unwrap_or(name);
                    assert!(
                        exported.contains(family),
                        "panel {} uses {name}, which is not exported",
                        panel["title"]
                    );
                }
            }
            queries += 1;
        }
    }
    assert!(queries >= 20, "{queries} queries");
}

#[test]
fn a_prometheus_with_native_histograms_scrapes_protobuf_and_computes_quantiles() {
    let app = echo("app");
    let bin = Binary::start(
        &format!(
            "listeners:
  - {{ name: web, address: 127.0.0.1:0, http: {{ route_table: t }} }}
route_tables:
  - name: t
    virtual_hosts:
      - {{ name: v, domains: ['*'], routes: [{{ name: all, match: {{ prefix: / }}, cluster: app }}] }}
clusters:
  - {{ name: app, endpoints: [{app}] }}
"
        ),
        &[],
    );
    let web = bin.addr("web");
    for _ in 0..7 {
        assert_eq!(http_get(web, "/").0, 200);
    }
    // What a Prometheus with native histograms asks for, it gets.
    let accept = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,application/openmetrics-text;version=1.0.0;q=0.8,text/plain;version=0.0.4;q=0.5";
    let out = curl(&[
        "-H",
        &format!("accept: {accept}"),
        &format!("http://{}/metrics", bin.admin),
    ]);
    let content_type = out.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/vnd.google.protobuf")
            && content_type.contains("proto=io.prometheus.client.MetricFamily"),
        "{content_type}"
    );

    // The feature flag makes Prometheus 2.4x ask for protobuf and keep native histograms.
    let prom = Prometheus::start_with(bin.admin, &["--enable-feature=native-histograms"]);
    // `histogram_count` and a quantile without `_bucket`: only a native histogram has them.
    let count = r#"histogram_count(sluice_http_server_request_duration_seconds{listener="web"})"#;
    eventually(count, || (prom.query(count)? == 7.0).then_some(()));
    let p50 = eventually("native p50", || {
        prom.query(
            r#"histogram_quantile(0.5, sluice_http_client_request_duration_seconds{cluster="app"})"#,
        )
    });
    assert!(p50 > 0.0 && p50 <= 0.25, "p50 {p50}");
    let route = r#"histogram_count(sluice_route_request_duration_seconds{route="all"})"#;
    eventually(route, || (prom.query(route)? == 7.0).then_some(()));
    // Counters, gauges and info come through protobuf as they do through text.
    let codes = r#"sluice_downstream_response_codes_total{listener="web",method="GET",code="200"}"#;
    eventually(codes, || (prom.query(codes)? == 7.0).then_some(()));
    let build = r#"sluice_build_info"#;
    eventually(build, || (prom.query(build)? == 1.0).then_some(()));
    let fds = "process_open_fds > 0";
    eventually(fds, || prom.query(fds).map(|_| ()));
}

#[test]
fn per_endpoint_series_only_where_enabled_and_within_the_budget() {
    let a = echo("a");
    let b = echo("b");
    // `wide`: ten endpoints that get no traffic, to go past the budget (10 series per family).
    let wide: Vec<String> = (1..=10).map(|p| format!("127.0.0.2:{p}")).collect();
    let p = InProcess::start(&format!(
        "admin: {{ address: 127.0.0.1:0, max_series_per_family: 10 }}
listeners:
  - {{ name: web, address: 127.0.0.1:0, http: {{ route_table: t }} }}
route_tables:
  - name: t
    virtual_hosts:
      - name: v
        domains: ['*']
        routes:
          - {{ match: {{ prefix: /tracked/ }}, cluster: tracked, rewrite: {{ prefix: / }} }}
          - {{ match: {{ prefix: / }}, cluster: plain }}
clusters:
  - {{ name: tracked, endpoints: [{a}, {b}], lb_policy: round_robin, per_endpoint_stats: true }}
  - {{ name: wide, endpoints: [{}], per_endpoint_stats: true }}
  - {{ name: plain, endpoints: [{a}] }}
",
        wide.join(", ")
    ));
    for _ in 0..6 {
        assert_eq!(http_get(p.addr("web"), "/tracked/x").0, 200);
    }
    assert_eq!(http_get(p.addr("web"), "/tracked/status/500").0, 500);
    assert_eq!(http_get(p.addr("web"), "/plain").0, 200);
    let m = p.metrics();
    let v = |q: &str| metric_value(&m, q);
    // Round robin over two endpoints: 7 attempts, 3 or 4 each, one error among them.
    let per = |family: &str, e: std::net::SocketAddr| {
        v(&format!(
            r#"sluice_upstream_endpoint_{family}{{cluster="tracked",endpoint="{e}"}}"#
        ))
    };
    assert_eq!(
        per("requests_total", a) + per("requests_total", b),
        7.0,
        "{m}"
    );
    assert!(per("requests_total", a) >= 3.0 && per("requests_total", b) >= 3.0);
    assert_eq!(per("errors_total", a) + per("errors_total", b), 1.0);
    assert_eq!(per("healthy", a), 1.0);
    assert_eq!(per("requests_active", b), 0.0);
    // Clusters without the setting get none.
    assert!(!m.contains(r#"cluster="plain",endpoint="#), "{m}");
    // The budget: `tracked` has two series, `wide` the next eight; its last two fold.
    let own = |m: &str| {
        m.lines()
            .filter(|l| l.starts_with(r#"sluice_upstream_endpoint_healthy{cluster="wide""#))
            .count()
    };
    assert_eq!(own(&m), 8, "{m}");
    assert_eq!(
        v(r#"sluice_upstream_endpoint_healthy{cluster="other",endpoint="other"}"#),
        2.0
    );
    let folded = r#"sluice_metric_series_folded_total{family="upstream_endpoint"}"#;
    assert_eq!(v(folded), 2.0);
    // Scraping again folds nothing new, and keeps the same endpoints.
    let m = p.metrics();
    assert_eq!(metric_value(&m, folded), 2.0);
    assert_eq!(own(&m), 8);
}

#[test]
fn requests_in_flight_are_counted_until_their_response_ends() {
    let app = echo("app");
    let p = InProcess::start(&format!(
        "listeners:
  - {{ name: web, address: 127.0.0.1:0, http: {{ route_table: t }} }}
route_tables:
  - name: t
    virtual_hosts:
      - {{ name: v, domains: ['*'], routes: [{{ name: slow, match: {{ prefix: / }}, cluster: app }}] }}
clusters:
  - {{ name: app, endpoints: [{app}] }}
"
    ));
    let active = |p: &InProcess| {
        metric_value(
            &p.metrics(),
            r#"sluice_downstream_requests_active{listener="web"}"#,
        )
    };
    assert_eq!(active(&p), 0.0);
    let url = p.url("web", "/delay/1000");
    let slow = std::thread::spawn(move || curl(&[&url]));
    eventually("one request in flight", || {
        (active(&p) == 1.0).then_some(())
    });
    slow.join().unwrap();
    eventually("none in flight", || (active(&p) == 0.0).then_some(()));
    assert_eq!(
        metric_value(
            &p.metrics(),
            r#"sluice_route_responses_total{route_table="t",virtual_host="v",route="slow",class="2xx"}"#
        ),
        1.0
    );
}

#[test]
fn status_codes_beyond_the_cardinality_budget_fold_into_other() {
    let app = echo("app");
    let p = InProcess::start(&format!(
        "admin: {{ address: 127.0.0.1:0, max_series_per_family: 10 }}
listeners:
  - {{ name: web, address: 127.0.0.1:0, http: {{ route_table: t }} }}
route_tables:
  - name: t
    virtual_hosts:
      - {{ name: v, domains: ['*'], routes: [{{ match: {{ prefix: / }}, cluster: app }}] }}
clusters:
  - {{ name: app, endpoints: [{app}] }}
"
    ));
    // Twelve distinct codes, twice each: ten get their own series, two fold into `other`.
    for _ in 0..2 {
        for code in 200..212 {
            assert_eq!(http_get(p.addr("web"), &format!("/status/{code}")).0, code);
        }
    }
    let m = p.metrics();
    let own: f64 = (200..210)
        .map(|c| {
            metric_value(
                &m,
                &format!(
                    r#"sluice_downstream_response_codes_total{{listener="web",method="GET",code="{c}"}}"#
                ),
            )
        })
        .sum();
    assert_eq!(own, 20.0);
    assert_eq!(
        metric_value(
            &m,
            r#"sluice_downstream_response_codes_total{listener="web",method="other",code="other"}"#
        ),
        4.0
    );
    assert_eq!(
        metric_value(
            &m,
            r#"sluice_metric_series_folded_total{family="downstream_response_codes"}"#
        ),
        2.0
    );
}

#[test]
fn admin_clusters_shows_each_endpoints_requests_errors_and_ejection() {
    let app = echo("app");
    let flaky = echo("flaky");
    let p = InProcess::start(&format!(
        "listeners:
  - {{ name: web, address: 127.0.0.1:0, http: {{ route_table: t }} }}
route_tables:
  - name: t
    virtual_hosts:
      - name: v
        domains: ['*']
        routes:
          - {{ match: {{ prefix: /flaky/ }}, cluster: flaky, rewrite: {{ prefix: / }} }}
          - {{ match: {{ prefix: / }}, cluster: app }}
clusters:
  - {{ name: app, endpoints: [{app}], outlier_detection: {{ enabled: false }} }}
  - name: flaky
    endpoints: [{flaky}]
    outlier_detection: {{ consecutive_5xx: 2, max_ejection_percent: 100, base_ejection_time: 60s }}
"
    ));
    let web = p.addr("web");
    for path in ["/a", "/b", "/c", "/status/503", "/status/500"] {
        http_get(web, path);
    }
    assert_eq!(http_get(web, "/flaky/status/503").0, 503);
    assert_eq!(http_get(web, "/flaky/status/503").0, 503);
    let clusters: serde_json::Value =
        serde_json::from_str(&http_get(p.proxy().admin_addr(), "/clusters").1).unwrap();
    let endpoint = |cluster: &str| {
        clusters
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == cluster)
            .unwrap_or_else(|| panic!("{cluster} in {clusters}"))["endpoints"][0]
            .clone()
    };
    let a = endpoint("app");
    assert_eq!(a["address"], app.to_string());
    assert_eq!(a["total_requests"], 5, "{a}");
    assert_eq!(a["errors"], 2, "{a}");
    assert_eq!(a["ejected"], false, "{a}");
    assert_eq!(a["active_requests"], 0, "{a}");
    let f = endpoint("flaky");
    assert_eq!(f["total_requests"], 2, "{f}");
    assert_eq!(f["errors"], 2, "{f}");
    assert_eq!(f["ejected"], true, "{f}");
    assert_eq!(f["ejections"], 1, "{f}");
    assert_eq!(f["healthy"], false, "{f}");
}
