//! Limits and protocol hygiene: oversized or malformed requests get the right status and the
//! connection handling the RFCs ask for, nothing ambiguous reaches the upstream, and every
//! rejection is counted.

use crate::support::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

fn setup(extra_listener_settings: &str) -> InProcess {
    let up = echo("up");
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let garbage = garbage_upstream();
    InProcess::start(&format!(
        r#"
listeners:
  - name: main
    address: 127.0.0.1:0
    http:
      route_table: main
      max_request_header_bytes: 8KiB
      max_request_headers: 20
      {extra_listener_settings}
route_tables:
  - name: main
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - {{ match: {{ prefix: /dead }}, cluster: dead }}
          - {{ match: {{ prefix: /garbage }}, cluster: garbage }}
          - {{ match: {{ prefix: /slow }}, cluster: up, timeout: 200ms, rewrite: {{ prefix: /delay/3000 }} }}
          - {{ match: {{ prefix: / }}, cluster: up }}
clusters:
  - {{ name: up, endpoints: [{up}] }}
  - {{ name: dead, endpoints: [{dead}] }}
  - {{ name: garbage, endpoints: [{garbage}] }}
"#
    ))
}

/// An upstream that answers every request with bytes that are not HTTP.
fn garbage_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"this is not http\r\n\r\n");
        }
    });
    addr
}

#[test]
fn oversized_headers_get_431() {
    let p = setup("");
    let big = format!("x-big: {}", "a".repeat(10 * 1024));
    let r = curl(&["-H", &big, &p.url("main", "/")]);
    assert_eq!(r.status, 431);
    let mut args: Vec<String> = (0..25)
        .map(|i| format!("x-h{i}: v"))
        .flat_map(|h| ["-H".to_string(), h])
        .collect();
    args.push(p.url("main", "/"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(curl(&args).status, 431, "too many headers");
    assert_eq!(rejected(&p, "headers_too_large"), 2.0);
    assert_eq!(upstream_requests(&p), 0.0);
    // Just under the limits is fine.
    let ok = format!("x-big: {}", "a".repeat(6 * 1024));
    assert_eq!(curl(&["-H", &ok, &p.url("main", "/")]).status, 200);
}

#[test]
fn oversized_headers_over_http2_are_refused() {
    let p = setup("");
    let addr = p.addr("main");
    rt().block_on(async {
        let mut sender = h2_connect(addr).await;
        let req = http::Request::get(format!("http://{addr}/"))
            .header("x-big", "a".repeat(10 * 1024))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        match sender.send_request(req).await {
            Ok(resp) => assert_eq!(resp.status(), 431),
            Err(e) => assert!(
                format!("{e:?}").contains("REFUSED_STREAM") || format!("{e:?}").contains("header"),
                "{e:?}"
            ),
        }
    });
    assert_eq!(upstream_requests(&p), 0.0);
}

#[test]
fn content_length_with_transfer_encoding_is_rejected_and_closed() {
    let p = setup("");
    for req in [
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\ncontent-length: 100\r\n\r\n0\r\n\r\n",
    ] {
        let (out, closed) = raw_exchange(p.addr("main"), req.as_bytes(), Duration::from_secs(5));
        assert_rejected_and_closed(&out, closed, 400, "CL+TE");
    }
    assert_eq!(upstream_requests(&p), 0.0, "bytes reached the upstream");
    assert_eq!(rejected(&p, "content_length_with_transfer_encoding"), 2.0);
    // Either header alone is fine, on one keep-alive connection.
    let (out, _) = raw_exchange(
        p.addr("main"),
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloPOST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(out.matches("HTTP/1.1 200").count(), 2, "{out}");
    assert_eq!(out.matches("\"body_bytes\":5").count(), 2, "{out}");
}

#[test]
fn host_header_rules() {
    let p = setup("");
    let addr = p.addr("main");
    let (out, closed) = raw_exchange(addr, b"GET / HTTP/1.1\r\n\r\n", Duration::from_secs(5));
    assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
    assert!(out.contains("missing Host"), "{out}");
    assert!(closed);
    let (out, closed) = raw_exchange(
        addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
    assert!(closed);
    // HTTP/1.0 may omit Host.
    let (out, _) = raw_exchange(addr, b"GET / HTTP/1.0\r\n\r\n", Duration::from_secs(5));
    assert!(out.starts_with("HTTP/1.0 200 "), "{out}");
    // Absolute-form target: its authority wins over Host (RFC 9112 §3.2.2).
    let (out, _) = raw_exchange(
        addr,
        b"GET http://abs.example/x HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(out.contains("\"host\":[\"abs.example\"]"), "{out}");
    assert_eq!(rejected(&p, "missing_host"), 1.0);
    assert_eq!(rejected(&p, "multiple_host"), 1.0);
    assert_eq!(upstream_requests(&p), 2.0);
}

#[test]
fn invalid_header_bytes_are_rejected() {
    let p = setup("");
    for req in [
        &b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\nx-ctl: a\x01b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n x-folded: v\r\n\r\n",
        b"GET /\x7f HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let (out, closed) = raw_exchange(p.addr("main"), req, Duration::from_secs(5));
        assert!(
            out.starts_with("HTTP/1.1 400 "),
            "{:?} → {out}",
            String::from_utf8_lossy(req)
        );
        assert!(closed);
    }
    assert_eq!(upstream_requests(&p), 0.0);
    assert_eq!(rejected(&p, "bad_request"), 4.0);
}

#[test]
fn connect_method_is_refused() {
    let p = setup("");
    // No `Connection: close` from the client, and a request pipelined behind: the 405 still
    // closes the connection, and nothing after the CONNECT is read.
    let (out, closed) = raw_exchange(
        p.addr("main"),
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(out.starts_with("HTTP/1.1 405 "), "{out}");
    assert!(
        out.to_ascii_lowercase().contains("connection: close"),
        "{out}"
    );
    assert!(closed, "connection left open after a refused CONNECT");
    assert_eq!(
        out.matches("HTTP/1.1").count(),
        1,
        "a second response: {out}"
    );
    assert_eq!(rejected(&p, "connect"), 1.0);
    assert_eq!(upstream_requests(&p), 0.0);
}

#[test]
fn header_timeout_closes_slow_clients() {
    let p = setup("request_header_timeout: 300ms");
    // A partial head.
    let mut s = TcpStream::connect(p.addr("main")).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    let start = std::time::Instant::now();
    let (out, closed) = read_until_close(&mut s, Duration::from_secs(10));
    assert!(closed && out.is_empty(), "{out}");
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "closed too early"
    );
    // A connection that never sends anything.
    let mut s = TcpStream::connect(p.addr("main")).unwrap();
    let (_, closed) = read_until_close(&mut s, Duration::from_secs(10));
    assert!(closed);
    eventually("both timeouts counted", || {
        (rejected(&p, "header_timeout") == 2.0).then_some(())
    });
    // A keep-alive connection whose next head dribbles in is closed as well.
    let mut s = TcpStream::connect(p.addr("main")).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    s.write_all(b"GET / HT").unwrap();
    let (_, closed) = read_until_close(&mut s, Duration::from_secs(10));
    assert!(closed);
}

#[test]
fn idle_keep_alive_connections_are_closed() {
    let p = setup("idle_timeout: 300ms");
    let mut s = TcpStream::connect(p.addr("main")).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let start = std::time::Instant::now();
    let (out, closed) = read_until_close(&mut s, Duration::from_secs(10));
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(closed, "idle connection was not closed");
    assert!(start.elapsed() >= Duration::from_millis(250));
}

#[test]
fn http2_streams_limit_is_advertised_from_config() {
    require_tool("nghttp", "nghttp2-client");
    let p = setup("http2: { max_concurrent_streams: 7, initial_stream_window_size: 128KiB }");
    let out = std::process::Command::new("nghttp")
        .args(["-nv", &p.url("main", "/")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("SETTINGS_MAX_CONCURRENT_STREAMS(0x03):7"),
        "{text}"
    );
    assert!(
        text.contains("SETTINGS_INITIAL_WINDOW_SIZE(0x04):131072"),
        "{text}"
    );
    assert!(
        text.contains("SETTINGS_MAX_HEADER_LIST_SIZE(0x06):8192"),
        "{text}"
    );
}

#[test]
fn upstream_failures_map_to_502_503_504() {
    let p = setup("");
    let r = curl(&[&p.url("main", "/dead")]);
    assert_eq!(
        (r.status, r.text().as_str()),
        (503, "upstream connect error\n")
    );
    let r = curl(&[&p.url("main", "/garbage")]);
    assert_eq!(
        (r.status, r.text().as_str()),
        (502, "upstream reset or protocol error\n")
    );
    let start = std::time::Instant::now();
    let r = curl(&[&p.url("main", "/slow")]);
    assert_eq!(
        (r.status, r.text().as_str()),
        (504, "upstream request timeout\n")
    );
    assert!(start.elapsed() < Duration::from_secs(2));
    let m = p.metrics();
    assert_eq!(
        metric_value(
            &m,
            "sluice_upstream_connect_failures_total{cluster=\"dead\"}"
        ),
        3.0,
        "the default retry policy tries a refused connection twice more: {m}"
    );
    assert_eq!(
        metric_value(
            &m,
            "sluice_upstream_retries_total{cluster=\"dead\",reason=\"connect_failure\"}"
        ),
        2.0,
        "{m}"
    );
    assert_eq!(
        metric_value(
            &m,
            "sluice_upstream_errors_total{cluster=\"garbage\",kind=\"request\"}"
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_value(
            &m,
            "sluice_upstream_errors_total{cluster=\"up\",kind=\"timeout\"}"
        ),
        1.0,
        "{m}"
    );
}
