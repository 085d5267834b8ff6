//! Load-balancing policies end to end: every policy spreads over its endpoints, least request
//! steers new requests away from an endpoint that holds requests in flight, the default policy
//! (peak EWMA) steers them away from a slow endpoint, and ring hash and Maglev send each value
//! of a hashed header to one endpoint.

use crate::connection::holding_upstream;
use crate::support::*;
use std::net::SocketAddr;
use std::time::Duration;

fn proxy(policy: &str, endpoints: &[SocketAddr]) -> InProcess {
    proxy_with(&format!("lb_policy: {policy}, "), "", endpoints)
}

/// A proxy whose cluster `up` has these extra settings (`lb_policy: x, `) and whose route has
/// these extra fields (`, hash_policy: [...]`).
fn proxy_with(cluster: &str, route: &str, endpoints: &[SocketAddr]) -> InProcess {
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
        routes: [{{ match: {{ prefix: / }}, cluster: up, timeout: 20s{route} }}]
clusters:
  - {{ name: up, {cluster}endpoints: [{}] }}
"#,
        eps.join(", ")
    ))
}

/// An HTTP/1.1 upstream that answers every request after `delay`, with `x-upstream: name`.
fn slow_upstream(name: &'static str, delay: Duration) -> SocketAddr {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                    // One response per request head (GETs without a body).
                    while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        head.drain(..end + 4);
                        std::thread::sleep(delay);
                        let r = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-upstream: {name}\r\n\r\nok"
                        );
                        if s.write_all(r.as_bytes()).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// The `x-upstream` of a GET sent on its own connection with `header: value`.
fn upstream_for(addr: SocketAddr, header: &str, value: &str) -> String {
    let req =
        format!("GET / HTTP/1.1\r\nHost: x\r\n{header}: {value}\r\nConnection: close\r\n\r\n");
    let (text, _) = raw_exchange(addr, req.as_bytes(), Duration::from_secs(10));
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix("x-upstream: "))
        .unwrap_or_else(|| panic!("no x-upstream in {text}"))
        .trim()
        .to_string()
}

#[test]
fn every_policy_spreads_over_its_endpoints() {
    let (a, b) = (echo("a"), echo("b"));
    // Ring hash and Maglev without a hash policy pick at random.
    for policy in [
        "round_robin",
        "random",
        "least_request",
        "ring_hash",
        "maglev",
    ] {
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

#[test]
fn the_default_policy_peak_ewma_steers_away_from_a_slow_endpoint() {
    let slow = slow_upstream("slow", Duration::from_millis(150));
    let fast = echo("fast");
    // No lb_policy: the default, peak EWMA.
    let p = proxy_with("", "", &[slow, fast]);
    let mut client = KeepAlive::new(p.addr("main"));
    let mut to_slow = 0;
    for _ in 0..40 {
        let r = client.get("/").unwrap();
        assert_eq!(r.status, 200);
        if r.header("x-upstream") == Some("slow") {
            to_slow += 1;
        }
    }
    // Round robin would send it 20; once sampled at 150ms it loses every comparison with the
    // fast endpoint (the first request or two may find it unsampled).
    assert!(to_slow <= 2, "the slow endpoint got {to_slow} of 40");
    let dump = http_get(p.proxy().admin_addr(), "/config_dump").1;
    assert!(dump.contains(r#""lb_policy": "peak_ewma""#), "{dump}");
}

#[test]
fn ring_hash_and_maglev_send_each_header_value_to_one_endpoint() {
    let eps = [echo("a"), echo("b"), echo("c")];
    for policy in ["ring_hash", "maglev"] {
        let p = proxy_with(
            &format!("lb_policy: {policy}, "),
            ", hash_policy: [{ header: x-user }]",
            &eps,
        );
        let addr = p.addr("main");
        let mut homes = std::collections::HashSet::new();
        for user in 0..24 {
            let value = format!("user-{user}");
            let home = upstream_for(addr, "x-user", &value);
            for _ in 0..4 {
                assert_eq!(
                    upstream_for(addr, "x-user", &value),
                    home,
                    "{policy}: {value}"
                );
            }
            homes.insert(home);
        }
        // 24 keys over 3 endpoints: all of them used (each misses with probability (2/3)^24).
        assert_eq!(homes.len(), 3, "{policy}: {homes:?}");
    }
}

#[test]
fn a_proxy_with_a_zone_sends_traffic_to_its_zone_only() {
    let names = ["a1", "a2", "b1", "b2", "b3", "b4"];
    let eps: Vec<String> = names
        .iter()
        .map(|n| {
            let zone = &n[..1];
            format!("{{ address: {}, zone: {zone} }}", echo(n))
        })
        .collect();
    let p = InProcess::start(&format!(
        r#"
node: {{ id: test, zone: a }}
listeners:
  - {{ name: main, address: 127.0.0.1:0, http: {{ route_table: main }} }}
route_tables:
  - name: main
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes: [{{ match: {{ prefix: / }}, cluster: up }}]
clusters:
  - {{ name: up, lb_policy: round_robin, endpoints: [{}] }}
"#,
        eps.join(", ")
    ));
    let mut client = KeepAlive::new(p.addr("main"));
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..40 {
        let r = client.get("/").unwrap();
        *seen
            .entry(r.header("x-upstream").unwrap().to_string())
            .or_insert(0) += 1;
    }
    // Round robin over zone a only: 20 each; zone b (4 of 6 endpoints) gets nothing.
    assert_eq!(seen.get("a1"), Some(&20), "{seen:?}");
    assert_eq!(seen.get("a2"), Some(&20), "{seen:?}");
    assert!(
        p.metrics()
            .contains("sluice_upstream_lb_local_zone{cluster=\"up\"} 1")
    );
    let dump = http_get(p.proxy().admin_addr(), "/config_dump").1;
    assert!(dump.contains(r#""zone": "a""#), "{dump}");
}
