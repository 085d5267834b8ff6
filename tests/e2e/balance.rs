//! Load-balancing policies end to end: every policy spreads over its endpoints, and least
//! request steers new requests away from an endpoint that holds requests in flight.

use crate::connection::holding_upstream;
use crate::support::*;
use std::net::SocketAddr;
use std::time::Duration;

fn proxy(policy: &str, endpoints: &[SocketAddr]) -> InProcess {
    let eps: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
    InProcess::start(&format!(
        r#"
listeners:
  - {{ name: main, address: 127.0.0.1:0, http: {{ route_table: main }} }}
route_tables:
  - name: main
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes: [{{ match: {{ prefix: / }}, cluster: up, timeout: 20s }}]
clusters:
  - {{ name: up, lb_policy: {policy}, endpoints: [{}] }}
"#,
        eps.join(", ")
    ))
}

#[test]
fn every_policy_spreads_over_its_endpoints() {
    let (a, b) = (echo("a"), echo("b"));
    for policy in ["round_robin", "random", "least_request"] {
        let p = proxy(policy, &[a, b]);
        let mut client = KeepAlive::new(p.addr("main"));
        let mut seen_a = 0;
        for _ in 0..60 {
            let r = client.get("/").unwrap();
            assert_eq!(r.status, 200, "{policy}");
            if r.header("x-upstream") == Some("a") {
                seen_a += 1;
            }
        }
        assert!((1..60).contains(&seen_a), "{policy}: a got {seen_a} of 60");
    }
}

#[test]
fn least_request_steers_away_from_an_endpoint_with_requests_in_flight() {
    let (held, mut arrivals) = holding_upstream();
    let fast = echo("fast");
    let p = proxy("least_request", &[held, fast]);
    let addr = p.addr("main");
    // Requests until one is held by the holding endpoint (each lands there with probability ½
    // while both are idle); the others are answered by the echo endpoint.
    let mut holders = Vec::new();
    let mut held_one = false;
    for _ in 0..40 {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        std::io::Write::write_all(&mut s, b"GET /probe HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut buf = [0u8; 512];
        // Either the echo endpoint answers or the holding one reports the request.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if arrivals.try_recv().is_ok() {
                held_one = true;
                break;
            }
            if matches!(std::io::Read::read(&mut s, &mut buf), Ok(n) if n > 0) {
                break;
            }
        }
        if held_one {
            holders.push(s);
            break;
        }
    }
    assert!(
        held_one,
        "no request reached the holding endpoint in 40 tries"
    );
    // One request in flight there, none at the echo endpoint: every new request goes to the echo.
    let mut client = KeepAlive::new(addr);
    for i in 0..30 {
        let r = client.get("/").unwrap();
        assert_eq!(r.header("x-upstream"), Some("fast"), "request {i}");
    }
    assert!(
        arrivals.try_recv().is_err(),
        "a second request reached the busy endpoint"
    );
}
