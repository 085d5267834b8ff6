//! gRPC through Sluice with real grpcio clients and servers (`grpc_peer.py`): unary and the
//! three streaming kinds, 5 MiB messages, trailers (status, message, binary metadata), client
//! deadlines, the statuses Sluice itself answers with (UNAVAILABLE, DEADLINE_EXCEEDED,
//! RESOURCE_EXHAUSTED), upstream RST_STREAM codes mapped as gRPC's PROTOCOL-HTTP2 says, retries
//! on UNAVAILABLE, per-method routing and the per-status metric. gRPC-Web: a hand-built HTTP/1.1
//! client and curl against the `grpc_web` filter.
//!
//! grpcio is required: a missing module fails the test (test.sh installs it).

use crate::support::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, ChildStdin, Command, Stdio};

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/grpc_peer.py");

/// A grpcio server (`grpc_peer.py server NAME`), stopped when dropped.
struct Peer {
    child: Child,
    _stdin: ChildStdin,
    addr: SocketAddr,
}

impl Peer {
    fn start(name: &str) -> Self {
        let mut child = Command::new("python3")
            .args([PEER, "server", name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 (test.sh installs it with grpcio)");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let port: u16 = line.trim().parse().unwrap_or_else(|_| {
            panic!("grpc_peer.py did not print its port (got {line:?}); is grpcio installed? test.sh installs it")
        });
        Peer {
            child,
            _stdin: stdin,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    /// The server's own counters (`Stats`, called directly).
    fn stats(&self) -> Value {
        let r = grpc_call(self.addr, json!({"method": "Stats"}));
        assert_eq!(r["code"], 0, "{r}");
        serde_json::from_str(r["replies"][0].as_str().unwrap()).unwrap()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client_command(target: SocketAddr, spec: &Value) -> Command {
    let mut c = Command::new("python3");
    c.args([PEER, "client", &target.to_string(), &spec.to_string()]);
    c
}

/// One call by a grpcio client (`grpc_peer.py client`); its JSON result.
fn grpc_call(target: SocketAddr, spec: Value) -> Value {
    let out = client_command(target, &spec)
        .output()
        .expect("python3 (test.sh installs it with grpcio)");
    assert!(
        out.status.success(),
        "grpc_peer.py client failed ({spec}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "grpc_peer.py client printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn proxy(routes: &str, clusters: &str) -> InProcess {
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
{routes}
clusters:
{clusters}
"#
    ))
}

/// A proxy with one route to one HTTP/2 cluster `up` at `addr`.
fn simple(addr: SocketAddr) -> InProcess {
    proxy(
        "          - { match: { prefix: / }, cluster: up }",
        &format!("  - {{ name: up, protocol: http2, endpoints: [{addr}] }}"),
    )
}

fn grpc_responses(p: &InProcess, cluster: &str, status: &str) -> f64 {
    counter_or_zero(
        &p.metrics(),
        &format!(
            "sluice_grpc_responses_total{{listener=\"main\",cluster=\"{cluster}\",grpc_status=\"{status}\"}}"
        ),
    )
}

#[test]
fn grpc_unary_and_every_streaming_kind_pass_through() {
    let peer = Peer::start("a");
    let p = simple(peer.addr);
    let a = p.addr("main");
    let r = grpc_call(a, json!({"method": "Unary", "requests": ["hello"]}));
    assert_eq!(
        (r["code"].clone(), r["replies"].clone()),
        (json!(0), json!(["hello"]))
    );
    let r = grpc_call(
        a,
        json!({"method": "ServerStream", "kind": "server", "requests": ["5"]}),
    );
    assert_eq!(r["code"], 0, "{r}");
    assert_eq!(
        r["replies"],
        json!(["item-0", "item-1", "item-2", "item-3", "item-4"])
    );
    let r = grpc_call(
        a,
        json!({"method": "ClientStream", "kind": "client", "requests": ["a", "b", "c", "d"]}),
    );
    assert_eq!(
        (r["code"].clone(), r["replies"].clone()),
        (json!(0), json!(["a,b,c,d"]))
    );
    let r = grpc_call(
        a,
        json!({"method": "Bidi", "kind": "bidi", "requests": ["1", "2", "3"]}),
    );
    assert_eq!(r["code"], 0, "{r}");
    assert_eq!(r["replies"], json!(["echo:1", "echo:2", "echo:3"]));
    // 5 MiB each way: the echo comes back byte for byte (the pattern's SHA-256).
    let big = 5 * 1024 * 1024;
    let want = sha256_hex(&(0..big).map(|i| (i % 251) as u8).collect::<Vec<_>>());
    let r = grpc_call(a, json!({"method": "Unary", "big": big}));
    assert_eq!(r["code"], 0, "{r}");
    assert_eq!(r["replies"], json!([format!("sha256:{want}:{big}")]));
    assert_eq!(grpc_responses(&p, "up", "0"), 5.0);
}

#[test]
fn grpc_trailers_keep_status_message_and_binary_metadata() {
    let peer = Peer::start("a");
    let p = simple(peer.addr);
    let every_byte: String = (0..=255u8).map(|b| format!("{b:02x}")).collect();
    // After a message (trailers in a HEADERS frame of their own) and trailers-only.
    for messages in [1, 0] {
        let spec = json!({"code": 3, "message": "bad argument: 100% wrong", "bin_hex": every_byte, "messages": messages});
        let r = grpc_call(
            p.addr("main"),
            json!({"method": "Status", "kind": "server", "requests": [spec.to_string()]}),
        );
        assert_eq!(r["code"], 3, "{r}");
        assert_eq!(r["details"], "bad argument: 100% wrong");
        assert_eq!(
            r["trailing"]["x-detail-bin"],
            json!(every_byte),
            "byte-exact"
        );
        assert_eq!(r["trailing"]["x-note"], json!("74657874"));
        assert_eq!(r["replies"].as_array().unwrap().len(), messages);
    }
    assert_eq!(grpc_responses(&p, "up", "3"), 2.0);
}

#[test]
fn grpc_client_deadline_reaches_the_upstream_and_expires() {
    let peer = Peer::start("a");
    let p = simple(peer.addr);
    let start = std::time::Instant::now();
    let r = grpc_call(p.addr("main"), json!({"method": "Slow", "timeout": 0.2}));
    assert_eq!(r["code"], 4, "DEADLINE_EXCEEDED: {r}");
    assert!(start.elapsed() < std::time::Duration::from_secs(3));
    // The upstream got the deadline in `grpc-timeout`.
    let stats = peer.stats();
    let remaining = stats["slow_deadlines"][0].as_f64().expect("a deadline");
    assert!(remaining > 0.0 && remaining <= 0.2, "{stats}");
}

#[test]
fn statuses_sluice_answers_are_grpc_statuses() {
    let peer = Peer::start("a");
    // Nothing listens here: no upstream to reach.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let p = proxy(
        r#"          - { match: { path: /test.Peer/Slow }, cluster: up, timeout: 300ms }
          - { match: { path: /test.Peer/Unary }, cluster: empty }
          - { match: { path: /test.Peer/Bidi }, cluster: capped }"#,
        &format!(
            "  - {{ name: up, protocol: http2, endpoints: [{a}] }}
  - {{ name: empty, protocol: http2, endpoints: [{closed}] }}
  - {{ name: capped, protocol: http2, endpoints: [{a}], circuit_breakers: {{ max_requests: 1 }} }}",
            a = peer.addr
        ),
    );
    let a = p.addr("main");
    let r = grpc_call(a, json!({"method": "Unary", "requests": ["x"]}));
    assert_eq!(r["code"], 14, "no upstream → UNAVAILABLE: {r}");
    let r = grpc_call(a, json!({"method": "Slow"}));
    assert_eq!(r["code"], 4, "route timeout → DEADLINE_EXCEEDED: {r}");
    // One bidi call holds the only slot (its requests stay open until stdin closes).
    let mut held = client_command(
        a,
        &json!({"method": "Bidi", "kind": "bidi", "requests": ["1"], "hold": true}),
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut out = BufReader::new(held.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "echo:1", "the held call's first reply");
    let r = grpc_call(
        a,
        json!({"method": "Bidi", "kind": "bidi", "requests": ["2"]}),
    );
    assert_eq!(r["code"], 8, "breaker overflow → RESOURCE_EXHAUSTED: {r}");
    drop(held.stdin.take());
    let _ = held.wait();
    let m = p.metrics();
    assert_eq!(
        metric_value(
            &m,
            "sluice_grpc_responses_total{listener=\"main\",cluster=\"empty\",grpc_status=\"14\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &m,
            "sluice_grpc_responses_total{listener=\"main\",cluster=\"up\",grpc_status=\"4\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &m,
            "sluice_grpc_responses_total{listener=\"main\",cluster=\"capped\",grpc_status=\"8\"}"
        ),
        1.0
    );
}

/// An HTTP/2 upstream (the `h2` crate) that resets each stream with the code in its path:
/// `/test.Peer/R{code}` before the response head, `/test.Peer/H{code}` after the head and one
/// message.
fn resetting_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        rt().block_on(async move {
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(s).await else {
                        return;
                    };
                    while let Some(Ok((req, mut respond))) = conn.accept().await {
                        let method = req.uri().path().rsplit('/').next().unwrap_or_default();
                        let (after_head, code) = method.split_at(1.min(method.len()));
                        let reason = h2::Reason::from(code.parse::<u32>().unwrap_or(2));
                        if after_head == "R" {
                            respond.send_reset(reason);
                            continue;
                        }
                        let resp = http::Response::builder()
                            .header("content-type", "application/grpc")
                            .body(())
                            .unwrap();
                        let Ok(mut send) = respond.send_response(resp, false) else {
                            continue;
                        };
                        let _ = send.send_data(bytes::Bytes::from_static(b"\0\0\0\0\x02hi"), false);
                        send.send_reset(reason);
                    }
                });
            }
        });
    });
    addr
}

#[test]
fn upstream_resets_map_to_grpc_statuses() {
    let up = resetting_upstream();
    let p = simple(up);
    // gRPC's PROTOCOL-HTTP2.md, "Errors": RST_STREAM code → status.
    let table = [
        (0, 13), // NO_ERROR → INTERNAL
        (1, 13), // PROTOCOL_ERROR
        (2, 13), // INTERNAL_ERROR
        (3, 13), // FLOW_CONTROL_ERROR
        (4, 13), // SETTINGS_TIMEOUT
        (6, 13), // FRAME_SIZE_ERROR
        (7, 14), // REFUSED_STREAM → UNAVAILABLE
        (8, 1),  // CANCEL → CANCELLED
        (11, 8), // ENHANCE_YOUR_CALM → RESOURCE_EXHAUSTED
        (12, 7), // INADEQUATE_SECURITY → PERMISSION_DENIED
    ];
    for (code, want) in table {
        for when in ["R", "H"] {
            let r = grpc_call(
                p.addr("main"),
                json!({"method": format!("{when}{code}"), "kind": "server", "requests": [""]}),
            );
            assert_eq!(r["code"], want, "RST_STREAM {code} ({when}): {r}");
        }
    }
    assert!(grpc_responses(&p, "up", "8") >= 2.0);
}

#[test]
fn grpc_unavailable_is_retried() {
    let peer = Peer::start("a");
    let p = proxy(
        "          - { match: { prefix: / }, cluster: up, retry_policy: { retry_on: [unavailable], num_retries: 2, back_off: { base_interval: 1ms, max_interval: 2ms } } }",
        &format!(
            "  - {{ name: up, protocol: http2, endpoints: [{}] }}",
            peer.addr
        ),
    );
    let r = grpc_call(
        p.addr("main"),
        json!({"method": "Flaky", "requests": ["k:1"]}),
    );
    assert_eq!(r["code"], 0, "{r}");
    assert_eq!(r["replies"], json!(["ok after 2 calls"]));
    assert_eq!(peer.stats()["flaky"]["k"], 2);
    assert_eq!(
        metric_value(
            &p.metrics(),
            "sluice_upstream_retries_total{cluster=\"up\",reason=\"grpc_status\"}"
        ),
        1.0
    );
    // Past the retries the client sees UNAVAILABLE.
    let r = grpc_call(
        p.addr("main"),
        json!({"method": "Flaky", "requests": ["j:5"]}),
    );
    assert_eq!(r["code"], 14, "{r}");
    assert_eq!(peer.stats()["flaky"]["j"], 3);
}

#[test]
fn grpc_methods_route_to_their_own_clusters() {
    let a = Peer::start("a");
    let b = Peer::start("b");
    let p = proxy(
        r#"          - { match: { path: /test.Peer/WhoElse }, cluster: b }
          - { match: { prefix: /test.Peer/ }, cluster: a }"#,
        &format!(
            "  - {{ name: a, protocol: http2, endpoints: [{}] }}\n  - {{ name: b, protocol: http2, endpoints: [{}] }}",
            a.addr, b.addr
        ),
    );
    for (method, who) in [("Who", "a"), ("WhoElse", "b"), ("Who", "a")] {
        let r = grpc_call(p.addr("main"), json!({"method": method}));
        assert_eq!(r["replies"], json!([who]), "{method}: {r}");
    }
    assert_eq!(grpc_responses(&p, "a", "0"), 2.0);
    assert_eq!(grpc_responses(&p, "b", "0"), 1.0);
}

// gRPC-Web: a hand-built HTTP/1.1 client (hyper) and curl against `grpc_web: true`.

fn web_proxy(addr: SocketAddr) -> InProcess {
    InProcess::start(&format!(
        r#"
listeners:
  - {{ name: main, address: 127.0.0.1:0, http: {{ route_table: main, grpc_web: true }} }}
route_tables:
  - name: main
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - {{ match: {{ prefix: / }}, cluster: up }}
clusters:
  - {{ name: up, protocol: http2, endpoints: [{addr}] }}
"#
    ))
}

/// A gRPC length-prefixed frame.
fn frame(flag: u8, msg: &[u8]) -> Vec<u8> {
    let mut f = vec![flag];
    f.extend_from_slice(&u32::try_from(msg.len()).unwrap().to_be_bytes());
    f.extend_from_slice(msg);
    f
}

/// Splits a gRPC-Web body into its frames (flag, payload).
fn frames(mut body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !body.is_empty() {
        assert!(body.len() >= 5, "a truncated frame header: {body:?}");
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        out.push((body[0], body[5..5 + len].to_vec()));
        body = &body[5 + len..];
    }
    out
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn b64_encode(input: &[u8]) -> String {
    let mut out = String::new();
    for c in input.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn b64_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for &c in input {
        let Some(v) = B64.iter().position(|&b| b == c) else {
            continue; // padding and whitespace
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// A gRPC-Web POST over HTTP/1.1 (no `te: trailers`, as browsers send); the status, head and
/// body.
fn web_call(
    p: &InProcess,
    method: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, http::HeaderMap, Vec<u8>) {
    let addr = p.addr("main");
    rt().block_on(async move {
        let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let req = http::Request::post(format!("/test.Peer/{method}"))
            .header("host", "grpc.test")
            .header("content-type", content_type)
            .header("x-grpc-web", "1")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap();
        let resp = sender.send_request(req).await.expect("response");
        let (parts, body) = resp.into_parts();
        let (bytes, trailers) = collect(body).await;
        assert!(trailers.is_none(), "gRPC-Web carries no HTTP trailers");
        (parts.status.as_u16(), parts.headers, bytes.to_vec())
    })
}

fn trailer_block(f: &(u8, Vec<u8>)) -> String {
    assert_eq!(f.0, 0x80, "the last frame is the trailer frame");
    String::from_utf8(f.1.clone()).unwrap()
}

#[test]
fn grpc_web_binary_unary_and_server_streaming() {
    let peer = Peer::start("a");
    let p = web_proxy(peer.addr);
    let (status, head, body) = web_call(
        &p,
        "Unary",
        "application/grpc-web+proto",
        frame(0, b"hello web"),
    );
    assert_eq!(status, 200);
    assert_eq!(head["content-type"], "application/grpc-web+proto");
    let f = frames(&body);
    assert_eq!(f.len(), 2, "{f:?}");
    assert_eq!(f[0], (0, b"hello web".to_vec()));
    assert!(trailer_block(&f[1]).contains("grpc-status: 0\r\n"), "{f:?}");

    let (_, head, body) = web_call(&p, "ServerStream", "application/grpc-web", frame(0, b"3"));
    assert_eq!(head["content-type"], "application/grpc-web");
    let f = frames(&body);
    let msgs: Vec<_> = f[..3].iter().map(|(_, m)| m.clone()).collect();
    assert_eq!(
        msgs,
        [b"item-0".to_vec(), b"item-1".to_vec(), b"item-2".to_vec()]
    );
    assert!(trailer_block(&f[3]).starts_with("grpc-status: 0\r\n"));

    // A status with a message and binary metadata ends up in the trailer frame; a
    // trailers-only answer keeps it in the head.
    let every_byte: String = (0..=255u8).map(|b| format!("{b:02x}")).collect();
    for messages in [1, 0] {
        let spec =
            json!({"code": 5, "message": "not here", "bin_hex": every_byte, "messages": messages});
        let (status, head, body) = web_call(
            &p,
            "Status",
            "application/grpc-web",
            frame(0, spec.to_string().as_bytes()),
        );
        assert_eq!(status, 200);
        let all_bytes: Vec<u8> = (0..=255u8).collect();
        if messages == 1 {
            let f = frames(&body);
            assert_eq!(f[0], (0, b"before-0".to_vec()));
            let t = trailer_block(&f[1]);
            assert!(t.contains("grpc-status: 5\r\n"), "{t}");
            assert!(t.contains("grpc-message: not here\r\n"), "{t}");
            let bin = t
                .lines()
                .find_map(|l| l.strip_prefix("x-detail-bin: "))
                .expect("binary metadata in the trailer frame");
            assert_eq!(b64_decode(bin.as_bytes()), all_bytes);
        } else {
            assert_eq!(head["grpc-status"], "5");
            assert_eq!(head["grpc-message"], "not here");
            assert_eq!(b64_decode(head["x-detail-bin"].as_bytes()), all_bytes);
            assert!(body.is_empty());
        }
    }
    let m = p.metrics();
    assert_eq!(
        metric_value(
            &m,
            "sluice_grpc_web_requests_total{listener=\"main\",mode=\"binary\"}"
        ),
        4.0
    );
    assert_eq!(
        metric_value(
            &m,
            "sluice_grpc_responses_total{listener=\"main\",cluster=\"up\",grpc_status=\"5\"}"
        ),
        2.0
    );
}

#[test]
fn grpc_web_text_round_trips_base64_both_ways() {
    let peer = Peer::start("a");
    let p = web_proxy(peer.addr);
    // The request in two separately padded base64 segments, as clients may send.
    let msg = b"text mode \x00\xff bytes";
    let mut text = b64_encode(&frame(0, msg)[..7]);
    text.push_str(&b64_encode(&frame(0, msg)[7..]));
    let (status, head, body) =
        web_call(&p, "Unary", "application/grpc-web-text", text.into_bytes());
    assert_eq!(status, 200);
    assert_eq!(head["content-type"], "application/grpc-web-text");
    let f = frames(&b64_decode(&body));
    assert_eq!(f[0], (0, msg.to_vec()));
    assert!(trailer_block(&f[1]).contains("grpc-status: 0\r\n"));

    let (_, head, body) = web_call(
        &p,
        "ServerStream",
        "application/grpc-web-text+proto",
        b64_encode(&frame(0, b"2")).into_bytes(),
    );
    assert_eq!(head["content-type"], "application/grpc-web-text+proto");
    let f = frames(&b64_decode(&body));
    assert_eq!(f.len(), 3, "{f:?}");
    assert_eq!(
        (f[0].1.as_slice(), f[1].1.as_slice()),
        (&b"item-0"[..], &b"item-1"[..])
    );
    assert!(trailer_block(&f[2]).contains("grpc-status: 0\r\n"));

    // curl, one text-mode call.
    let out = curl(&[
        "-sS",
        "--data-binary",
        &b64_encode(&frame(0, b"from curl")),
        "-H",
        "content-type: application/grpc-web-text",
        "-H",
        "x-grpc-web: 1",
        &p.url("main", "/test.Peer/Unary"),
    ]);
    assert_eq!(out.status, 200);
    let f = frames(&b64_decode(out.text().trim().as_bytes()));
    assert_eq!(f[0], (0, b"from curl".to_vec()));
    assert!(trailer_block(&f[1]).contains("grpc-status: 0\r\n"));
    assert_eq!(
        metric_value(
            &p.metrics(),
            "sluice_grpc_web_requests_total{listener=\"main\",mode=\"text\"}"
        ),
        3.0
    );
}

#[test]
fn grpc_web_clients_get_sluices_own_answers_as_grpc_web() {
    // Nothing listens here: UNAVAILABLE, trailers-only, with the client's content type.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let p = web_proxy(closed);
    let (status, head, body) = web_call(
        &p,
        "Unary",
        "application/grpc-web-text",
        b64_encode(&frame(0, b"x")).into_bytes(),
    );
    assert_eq!(status, 200);
    assert_eq!(head["grpc-status"], "14");
    assert_eq!(head["content-type"], "application/grpc-web-text");
    assert!(body.is_empty());
}

#[test]
fn grpc_web_is_enabled_per_route_too() {
    let peer = Peer::start("a");
    let p = proxy(
        "          - { match: { path: /test.Peer/Unary }, cluster: up, grpc_web: true }\n          - { match: { prefix: / }, cluster: up }",
        &format!(
            "  - {{ name: up, protocol: http2, endpoints: [{}] }}",
            peer.addr
        ),
    );
    let (status, head, body) = web_call(&p, "Unary", "application/grpc-web", frame(0, b"on"));
    assert_eq!(status, 200);
    assert_eq!(head["content-type"], "application/grpc-web");
    let f = frames(&body);
    assert_eq!(f[0], (0, b"on".to_vec()));
    assert!(trailer_block(&f[1]).contains("grpc-status: 0\r\n"));
    // Elsewhere the listener's setting (off) applies: nothing is translated, so no trailer
    // frame reaches the client.
    let (_, _, body) = web_call(&p, "Who", "application/grpc-web", frame(0, b""));
    assert!(!body.windows(1).any(|w| w[0] == 0x80), "{body:?}");
    assert_eq!(
        counter_or_zero(
            &p.metrics(),
            "sluice_grpc_web_requests_total{listener=\"main\",mode=\"binary\"}"
        ),
        1.0
    );
}

#[test]
fn the_access_log_records_the_grpc_status_of_trailers_and_trailers_only_answers() {
    let peer = Peer::start("a");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("grpc.log");
    let p = InProcess::start(&format!(
        r#"
listeners:
  - name: main
    address: 127.0.0.1:0
    http:
      route_table: main
      access_log: {{ path: '{}', format: {{ template: '%GRPC_STATUS_NUMBER% %RESPONSE_CODE% %PROTOCOL% %REQ(:PATH)%' }} }}
route_tables:
  - name: main
    virtual_hosts:
      - {{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: / }}, cluster: up }}] }}
clusters:
  - {{ name: up, protocol: http2, endpoints: [{}] }}
"#,
        log.display(),
        peer.addr
    ));
    let r = grpc_call(
        p.addr("main"),
        json!({"method": "Unary", "requests": ["x"]}),
    );
    assert_eq!(r["code"], 0, "{r}");
    for messages in [1, 0] {
        let spec = json!({"code": 5, "message": "nope", "messages": messages});
        let r = grpc_call(
            p.addr("main"),
            json!({"method": "Status", "kind": "server", "requests": [spec.to_string()]}),
        );
        assert_eq!(r["code"], 5, "{r}");
    }
    let lines = eventually("three access log lines", || {
        let text = std::fs::read_to_string(&log).ok()?;
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        (lines.len() == 3).then_some(lines)
    });
    let statuses: Vec<&str> = lines.iter().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(statuses, ["0", "5", "5"], "{lines:#?}");
    assert!(
        lines.iter().all(|l| l.contains(" 200 HTTP/2 /")),
        "{lines:#?}"
    );
}
