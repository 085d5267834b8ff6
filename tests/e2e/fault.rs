//! Fault injection end to end: a 100% abort answers with its status without reaching the
//! upstream (flag `FI`, counted), a gRPC abort is a trailers-only gRPC status, a fixed delay
//! holds the request at least that long, and header-chosen faults work from a trusted peer and
//! are ignored from an untrusted one (its `x-envoy-*` headers are stripped before routing).

use crate::support::*;
use std::time::{Duration, Instant};

fn proxy() -> InProcess {
    let up = echo("up");
    InProcess::start(&format!(
        r#"
listeners:
  - {{ name: main, address: 127.0.0.1:0, http: {{ route_table: main }} }}
  - name: trusted
    address: 127.0.0.1:0
    http: {{ route_table: main, trust: {{ trusted_peers: [127.0.0.0/8] }} }}
route_tables:
  - name: main
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - {{ match: {{ prefix: /abort }}, cluster: up, fault: {{ abort: {{ http_status: 503 }} }} }}
          - {{ match: {{ prefix: /grpc-abort }}, cluster: up, fault: {{ abort: {{ grpc_status: 14 }} }} }}
          - {{ match: {{ prefix: /delay }}, cluster: up, fault: {{ delay: {{ fixed: 300ms }} }} }}
          - {{ match: {{ prefix: /never }}, cluster: up, fault: {{ abort: {{ http_status: 500, percentage: 0 }} }} }}
          - {{ match: {{ prefix: /headers }}, cluster: up, fault: {{ header_control: true }} }}
clusters:
  - {{ name: up, protocol: auto, endpoints: [{up}] }}
"#
    ))
}

fn injected(p: &InProcess, listener: &str, kind: &str) -> f64 {
    metric_value(
        &p.metrics(),
        &format!("sluice_fault_injected_total{{listener=\"{listener}\",kind=\"{kind}\"}}"),
    )
}

#[test]
fn a_full_abort_answers_with_its_status_and_never_reaches_the_upstream() {
    let p = proxy();
    assert_eq!(injected(&p, "main", "abort"), 0.0, "pre-initialised");
    let mut client = KeepAlive::new(p.addr("main"));
    for _ in 0..3 {
        let r = client.get("/abort").unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.body, b"fault filter abort\n");
    }
    assert_eq!(upstream_requests(&p), 0.0);
    assert_eq!(injected(&p, "main", "abort"), 3.0);
    let m = p.metrics();
    assert_eq!(
        metric_value(
            &m,
            "sluice_downstream_error_responses_total{listener=\"main\",flag=\"FI\"}"
        ),
        3.0
    );
    // A 0% abort never fires.
    assert_eq!(client.get("/never").unwrap().status, 200);
    assert_eq!(upstream_requests(&p), 1.0);
}

/// A gRPC-looking POST over HTTP/2 to `path` on `listener` with `extra` headers: the HTTP
/// status, `grpc-status`, and whether the response had neither body nor trailers.
fn grpc_call(
    p: &InProcess,
    listener: &str,
    path: &str,
    extra: &[(&'static str, &'static str)],
) -> (u16, Option<String>, bool) {
    let addr = p.addr(listener);
    let path = path.to_string();
    let extra = extra.to_vec();
    rt().block_on(async move {
        let mut sender = h2_connect(addr).await;
        let mut req = http::Request::post(format!("http://{addr}{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (k, v) in extra {
            req = req.header(k, v);
        }
        let req = req
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                b"\0\0\0\0\0",
            )))
            .unwrap();
        let resp = sender.send_request(req).await.expect("response");
        let status = resp.status().as_u16();
        let grpc = resp
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_string());
        let (body, trailers) = collect(resp.into_body()).await;
        (status, grpc, body.is_empty() && trailers.is_none())
    })
}

#[test]
fn a_grpc_abort_is_a_trailers_only_grpc_status() {
    let p = proxy();
    assert_eq!(
        grpc_call(&p, "main", "/grpc-abort", &[]),
        (200, Some("14".to_string()), true)
    );
    // An HTTP-status abort of a gRPC request maps to the gRPC status (503 → UNAVAILABLE).
    assert_eq!(
        grpc_call(&p, "main", "/abort", &[]),
        (200, Some("14".to_string()), true)
    );
    assert_eq!(upstream_requests(&p), 0.0);
}

#[test]
fn a_fixed_delay_holds_the_request_at_least_that_long() {
    let p = proxy();
    let mut client = KeepAlive::new(p.addr("main"));
    let start = Instant::now();
    let r = client.get("/delay").unwrap();
    let took = start.elapsed();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-upstream"), Some("up"));
    assert!(took >= Duration::from_millis(300), "took {took:?}");
    assert_eq!(injected(&p, "main", "delay"), 1.0);
    assert_eq!(upstream_requests(&p), 1.0);
}

#[test]
fn header_faults_work_from_trusted_peers_only() {
    let p = proxy();
    let get = |listener: &str, headers: &[&str]| {
        let mut args: Vec<String> = Vec::new();
        for h in headers {
            args.push("-H".into());
            args.push(h.to_string());
        }
        args.push(p.url(listener, "/headers"));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(&args)
    };
    // Trusted: the headers choose the fault.
    let r = get("trusted", &["x-envoy-fault-abort-request: 418"]);
    assert_eq!(r.status, 418);
    let start = Instant::now();
    let r = get("trusted", &["x-envoy-fault-delay-request: 200"]);
    assert_eq!(r.status, 200);
    assert!(start.elapsed() >= Duration::from_millis(200));
    let r = get(
        "trusted",
        &[
            "x-envoy-fault-abort-request: 503",
            "x-envoy-fault-abort-request-percentage: 0",
        ],
    );
    assert_eq!(r.status, 200, "0% never aborts");
    assert_eq!(injected(&p, "trusted", "abort"), 1.0);
    assert_eq!(injected(&p, "trusted", "delay"), 1.0);
    // gRPC code by header, from a trusted peer.
    assert_eq!(
        grpc_call(
            &p,
            "trusted",
            "/headers",
            &[("x-envoy-fault-abort-grpc-request", "8")]
        ),
        (200, Some("8".to_string()), true)
    );
    // Untrusted: the same headers are stripped before routing; nothing is injected.
    let r = get("main", &["x-envoy-fault-abort-request: 418"]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-upstream"), Some("up"));
    assert_eq!(injected(&p, "main", "abort"), 0.0);
}
