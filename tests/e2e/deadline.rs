//! gRPC deadlines: a client's `grpc-timeout` shortens the route timeout (never extends it), and
//! a request that times out gets `grpc-status: 4` (DEADLINE_EXCEEDED), not UNAVAILABLE.

use crate::support::*;
use std::time::{Duration, Instant};

fn proxy(route_timeout: &str) -> InProcess {
    let up = echo("up");
    InProcess::start(&format!(
        r#"
listeners:
  - {{ name: main, address: 127.0.0.1:0, http: {{ route_table: main }} }}
route_tables:
  - name: main
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: {{ prefix: /slow }}
            cluster: up
            timeout: {route_timeout}
            rewrite: {{ prefix: /delay/3000 }}
clusters:
  - {{ name: up, protocol: http2, endpoints: [{up}] }}
"#
    ))
}

/// Sends a gRPC-looking POST over HTTP/2; returns the HTTP status, `grpc-status` and the time
/// the answer took.
fn grpc_call(p: &InProcess, timeout: Option<&str>) -> (u16, Option<String>, Duration) {
    let addr = p.addr("main");
    rt().block_on(async move {
        let mut sender = h2_connect(addr).await;
        let mut req = http::Request::post(format!("http://{addr}/slow"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if let Some(t) = timeout {
            req = req.header("grpc-timeout", t);
        }
        let req = req
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                b"\0\0\0\0\0",
            )))
            .unwrap();
        let start = Instant::now();
        let resp = sender.send_request(req).await.expect("response");
        let elapsed = start.elapsed();
        let status = resp.status().as_u16();
        let grpc = resp
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_string());
        (status, grpc, elapsed)
    })
}

#[test]
fn a_grpc_timeout_shortens_the_route_timeout_and_answers_deadline_exceeded() {
    let p = proxy("10s");
    let (status, grpc, took) = grpc_call(&p, Some("300m"));
    assert_eq!((status, grpc.as_deref()), (200, Some("4")));
    assert!(
        took >= Duration::from_millis(280) && took < Duration::from_secs(2),
        "{took:?}"
    );
    // The route timeout caps what a client may ask for.
    let p = proxy("300ms");
    let (status, grpc, took) = grpc_call(&p, Some("60S"));
    assert_eq!((status, grpc.as_deref()), (200, Some("4")));
    assert!(took < Duration::from_secs(2), "{took:?}");
    // Without a deadline the route timeout alone applies; an invalid one is ignored.
    let (_, grpc, took) = grpc_call(&p, Some("soon"));
    assert_eq!(grpc.as_deref(), Some("4"));
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(
        metric_value(
            &p.metrics(),
            "sluice_downstream_error_responses_total{listener=\"main\",flag=\"UT\"}"
        ),
        2.0
    );
}
