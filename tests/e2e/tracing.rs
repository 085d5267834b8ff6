//! OpenTelemetry tracing with a real OTLP/gRPC receiver (`otlp_receiver.py`: grpcio and the
//! opentelemetry-proto package): spans join the caller's trace, the upstream gets the client
//! span as its parent, head sampling, and an unreachable collector blocks nothing.

use crate::support::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const RECEIVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/otlp_receiver.py");

/// The receiver, and the spans it printed.
struct Collector {
    child: Child,
    addr: SocketAddr,
    spans: mpsc::Receiver<Value>,
}

impl Collector {
    fn start() -> Self {
        let mut child = Command::new("python3")
            .arg(RECEIVER)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let port: u16 = line
            .strip_prefix("PORT ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| {
                panic!("otlp_receiver.py did not print its port (got {line:?}); test.sh installs grpcio and opentelemetry-proto")
            });
        let (tx, spans) = mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str(&line)
                    && tx.send(v).is_err()
                {
                    break;
                }
            }
        });
        Collector {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            spans,
        }
    }

    /// The next `n` spans (failing the test after [`DEADLINE`]).
    fn take(&self, n: usize) -> Vec<Value> {
        (0..n)
            .map(|i| {
                self.spans
                    .recv_timeout(DEADLINE)
                    .unwrap_or_else(|_| panic!("span {} of {n} never arrived", i + 1))
            })
            .collect()
    }

    /// True when no span arrives for a short while (used after the traffic that must not be
    /// traced, behind a request that is).
    fn none_pending(&self) -> bool {
        self.spans.recv_timeout(Duration::from_millis(300)).is_err()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proxy(collector: SocketAddr, sampling: f64, app: SocketAddr) -> InProcess {
    InProcess::start(&format!(
        "tracing: {{ collector: '{collector}', sampling: {sampling}, service_name: edge }}
listeners:
  - {{ name: web, address: 127.0.0.1:0, http: {{ route_table: t }} }}
route_tables:
  - name: t
    virtual_hosts:
      - name: v
        domains: ['*']
        routes:
          - {{ name: api, match: {{ prefix: /api/ }}, cluster: app, rewrite: {{ prefix: / }} }}
          - {{ name: gone, match: {{ prefix: /gone }}, direct_response: {{ status: 410 }} }}
          - name: flaky
            match: {{ prefix: /status/ }}
            cluster: app
            retry_policy: {{ retry_on: [5xx], num_retries: 2, back_off: {{ base_interval: 1ms, max_interval: 2ms }} }}
          - {{ name: slow, match: {{ prefix: /slow/ }}, cluster: app, rewrite: {{ prefix: / }}, fault: {{ delay: {{ fixed: 1ms }} }} }}
clusters:
  - {{ name: app, endpoints: [{app}] }}
"
    ))
}

fn by_kind(spans: &[Value], kind: i64) -> &Value {
    spans
        .iter()
        .find(|s| s["kind"] == kind)
        .unwrap_or_else(|| panic!("no span of kind {kind} in {spans:#?}"))
}

const SERVER: i64 = 2;
const CLIENT: i64 = 3;

#[test]
fn spans_join_the_callers_trace_and_the_upstream_gets_the_client_span() {
    let collector = Collector::start();
    let app = echo("app");
    let p = proxy(collector.addr, 1.0, app);
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = "00f067aa0ba902b7";
    let r = curl(&[
        "-H",
        &format!("traceparent: 00-{trace}-{caller}-01"),
        "-H",
        "tracestate: vendor=opaque",
        "-A",
        "tester/1",
        &p.url("web", "/api/echo-me?q=1"),
    ]);
    assert_eq!(r.status, 200);
    let seen = r.json();
    let spans = collector.take(2);
    let server = by_kind(&spans, SERVER);
    let client = by_kind(&spans, CLIENT);
    // One trace: the caller's.
    assert_eq!(server["trace_id"], trace);
    assert_eq!(client["trace_id"], trace);
    // caller → server span → client span → the upstream.
    assert_eq!(server["parent_span_id"], caller);
    assert_eq!(client["parent_span_id"], server["span_id"]);
    let upstream_tp = seen["headers"]["traceparent"][0]
        .as_str()
        .unwrap_or_else(|| panic!("the upstream got no traceparent: {seen}"));
    assert_eq!(
        upstream_tp,
        format!("00-{trace}-{}-01", client["span_id"].as_str().unwrap())
    );
    assert_eq!(seen["headers"]["tracestate"][0], "vendor=opaque");
    // OpenTelemetry's HTTP attributes.
    let a = &server["attributes"];
    assert_eq!(a["http.request.method"], "GET");
    assert_eq!(a["url.path"], "/api/echo-me?q=1");
    assert_eq!(a["http.response.status_code"], 200);
    assert_eq!(a["http.route"], "api");
    assert_eq!(a["user_agent.original"], "tester/1");
    assert_eq!(server["name"], "GET api");
    let c = &client["attributes"];
    assert_eq!(c["server.address"], "127.0.0.1");
    assert_eq!(c["server.port"], app.port());
    assert_eq!(c["sluice.cluster"], "app");
    assert_eq!(server["resource"]["service.name"], "edge");
    assert!(server["start"].as_u64() <= client["start"].as_u64());
    assert!(client["end"].as_u64() <= server["end"].as_u64());

    // A request without a context starts a trace (sampling 1); a direct response has no
    // client span.
    assert_eq!(http_get(p.addr("web"), "/gone").0, 410);
    let spans = collector.take(1);
    assert_eq!(spans[0]["kind"], SERVER);
    assert_eq!(spans[0]["parent_span_id"], "");
    assert_eq!(spans[0]["trace_id"].as_str().unwrap().len(), 32);
    assert_eq!(spans[0]["attributes"]["http.route"], "gone");

    // The caller's "not sampled" is kept.
    curl(&[
        "-H",
        &format!("traceparent: 00-{trace}-{caller}-00"),
        &p.url("web", "/api/x"),
    ]);
    // B3 multi-header callers join too (and get their headers rewritten).
    let r = curl(&[
        "-H",
        "x-b3-traceid: a3ce929d0e0e4736",
        "-H",
        "x-b3-spanid: 00f067aa0ba902b7",
        "-H",
        "x-b3-sampled: 1",
        &p.url("web", "/api/y"),
    ]);
    let spans = collector.take(2);
    let server = by_kind(&spans, SERVER);
    let client = by_kind(&spans, CLIENT);
    assert_eq!(server["trace_id"], "0000000000000000a3ce929d0e0e4736");
    assert_eq!(server["parent_span_id"], "00f067aa0ba902b7");
    let h = &r.json()["headers"];
    assert_eq!(h["x-b3-spanid"][0], client["span_id"]);
    assert_eq!(h["x-b3-parentspanid"][0], server["span_id"]);
    assert!(collector.none_pending(), "the unsampled request was traced");
    let m = p.metrics();
    assert_eq!(
        metric_value(&m, r#"sluice_tracing_spans_total{result="exported"}"#),
        5.0
    );
}

#[test]
fn every_retry_gets_a_client_span_and_a_delayed_request_keeps_its_trace() {
    let collector = Collector::start();
    let app = echo("app");
    let p = proxy(collector.addr, 1.0, app);
    // Three attempts, each answered 503: three client spans under one server span.
    assert_eq!(http_get(p.addr("web"), "/status/503").0, 503);
    let spans = collector.take(4);
    let server = by_kind(&spans, SERVER);
    let mut clients: Vec<&Value> = spans.iter().filter(|s| s["kind"] == CLIENT).collect();
    assert_eq!(clients.len(), 3, "{spans:#?}");
    clients.sort_by_key(|s| s["start"].as_u64());
    let ids: std::collections::BTreeSet<&str> = clients
        .iter()
        .map(|s| s["span_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "each attempt has its own span id");
    for (i, c) in clients.iter().enumerate() {
        assert_eq!(c["parent_span_id"], server["span_id"]);
        assert_eq!(c["trace_id"], server["trace_id"]);
        let a = &c["attributes"];
        assert_eq!(a["http.response.status_code"], 503);
        assert_eq!(a["server.port"], app.port());
        if i == 0 {
            assert!(a.get("http.request.resend_count").is_none(), "{a}");
        } else {
            assert_eq!(a["http.request.resend_count"], i as u64, "{a}");
        }
        // Attempts follow each other.
        if let Some(next) = clients.get(i + 1) {
            assert!(c["end"].as_u64() <= next["start"].as_u64());
        }
    }
    assert_eq!(clients[2]["attributes"]["sluice.attempts"], 3);

    // Each attempt's upstream request names its own span: the one that answers is the last.
    // (A fault delay waits before the call: the request still carries its trace upstream.)
    let r = curl(&[&p.url("web", "/slow/reflect")]);
    assert_eq!(r.status, 200);
    let spans = collector.take(2);
    let client = by_kind(&spans, CLIENT);
    let server = by_kind(&spans, SERVER);
    let seen = r.json()["headers"]["traceparent"][0].clone();
    assert_eq!(
        seen,
        format!(
            "00-{}-{}-01",
            server["trace_id"].as_str().unwrap(),
            client["span_id"].as_str().unwrap()
        )
    );
    assert_eq!(client["attributes"]["sluice.cluster"], "app");
}

#[test]
fn head_sampling_and_an_unreachable_collector_block_nothing() {
    // Sampling 0: requests without a decision are not traced.
    let collector = Collector::start();
    let app = echo("app");
    let p = proxy(collector.addr, 0.0, app);
    for _ in 0..20 {
        assert_eq!(http_get(p.addr("web"), "/api/x").0, 200);
    }
    // A sampled caller is traced all the same.
    curl(&[
        "-H",
        "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        &p.url("web", "/api/x"),
    ]);
    assert_eq!(collector.take(2).len(), 2);
    assert!(collector.none_pending());
    drop(p);

    // No collector listening: requests are answered, spans are counted as failed.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let p = proxy(dead, 1.0, app);
    for _ in 0..10 {
        assert_eq!(http_get(p.addr("web"), "/api/x").0, 200);
    }
    eventually("failed exports counted", || {
        let m = p.metrics();
        (metric_value(&m, r#"sluice_tracing_spans_total{result="failed"}"#) == 20.0).then_some(())
    });
}
