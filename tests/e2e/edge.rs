//! Edge-safe request handling: the adversarial probe's requests as raw bytes — the request, what
//! the client gets, and what the recording upstream receives (nothing, or the normalized form).
//! Path normalization, Host validation, header trust, transfer codings, HTTP/2 header counts,
//! repeated query keys, and the admin API's hardening.

use crate::conformance::{Scripted, h2_send};
use crate::support::*;
use std::net::SocketAddr;
use std::time::Duration;

const CONFIG: &str = r#"
listeners:
  - name: main
    address: 127.0.0.1:0
    http: { route_table: main, trust: { internal_headers: [x-internal] } }
  - name: hop
    address: 127.0.0.1:0
    http: { route_table: main, trust: { trusted_hops: 1 } }
  - name: peer
    address: 127.0.0.1:0
    http:
      route_table: main
      trust: { trusted_peers: [127.0.0.0/8], internal_headers: [x-internal] }
  - name: strict
    address: 127.0.0.1:0
    http:
      route_table: main
      headers_with_underscores: reject
      path_normalization: { escaped_slashes: reject }
route_tables:
  - name: main
    virtual_hosts:
      - name: corp
        domains: ["*.corp.example.com"]
        routes:
          - { match: { prefix: /login }, redirect: { scheme: https } }
      - name: all
        domains: ["*"]
        routes:
          - { match: { prefix: /admin/ }, direct_response: { status: 403, body: denied } }
          - { match: { path_prefix: /api }, direct_response: { status: 200, body: api } }
          - { match: { prefix: /v2/ }, cluster: up, rewrite: { prefix: /pub/ } }
          - match: { prefix: /gated, headers: [{ name: x-internal, exact: "1" }] }
            direct_response: { status: 200, body: gated }
          - match: { prefix: /q, query_parameters: [{ name: debug, exact: "1" }] }
            direct_response: { status: 403, body: debug }
          - { match: { prefix: /go }, redirect: { path: /elsewhere } }
          - { match: { prefix: / }, cluster: up }
clusters:
  - { name: up, protocol: http1, endpoints: [UP] }
"#;

struct Edge {
    p: InProcess,
    up: Scripted,
}

fn setup() -> Edge {
    setup_with(vec![])
}

fn setup_with(script: Vec<Vec<u8>>) -> Edge {
    let up = Scripted::start(script);
    let p = InProcess::start(&CONFIG.replace("UP", &up.addr.to_string()));
    Edge { p, up }
}

/// A response's status, headers and body as text, and whether the connection closed.
struct Answer {
    status: u16,
    text: String,
    closed: bool,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        let head = self.text.split("\r\n\r\n").next().unwrap_or_default();
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }

    fn body(&self) -> &str {
        self.text.split_once("\r\n\r\n").map_or("", |(_, b)| b)
    }
}

/// Sends raw request bytes on a new connection and reads the answer until the server closes.
fn raw(addr: SocketAddr, request: &[u8]) -> Answer {
    let (text, closed) = raw_exchange(addr, request, Duration::from_secs(10));
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    Answer {
        status,
        text,
        closed,
    }
}

/// `GET target` with `Host: a.example`, extra header lines, and `Connection: close`.
fn get(addr: SocketAddr, target: &str, headers: &str) -> Answer {
    raw(
        addr,
        format!("GET {target} HTTP/1.1\r\nHost: a.example\r\n{headers}Connection: close\r\n\r\n")
            .as_bytes(),
    )
}

impl Edge {
    fn addr(&self, listener: &str) -> SocketAddr {
        self.p.addr(listener)
    }

    fn forwarded(&self) -> usize {
        self.up.requests.lock().unwrap().len()
    }

    /// The request line and headers of the upstream's last request, lower-cased.
    fn last_forwarded(&self) -> String {
        let r = self.up.requests.lock().unwrap();
        String::from_utf8_lossy(r.last().expect("a forwarded request")).to_ascii_lowercase()
    }

    fn counter(&self, family: &str, labels: &str) -> f64 {
        counter_or_zero(&self.p.metrics(), &format!("{family}{{{labels}}}"))
    }
}

#[test]
fn path_tricks_cannot_walk_around_a_prefix_rule() {
    let e = setup();
    let main = e.addr("main");
    for probe in [
        "/public/../admin/x",
        "/public/%2e%2e/admin/x",
        "/public/%2E%2E/admin/x",
        "/./admin/x",
        "/%2e/admin/x",
        "//admin/x",
        "/%61dmin/x",
        "/v2/../../admin/x",
        "/public/.%2e//admin/x",
    ] {
        let a = get(main, probe, "");
        assert_eq!((a.status, a.body()), (403, "denied"), "{probe}: {}", a.text);
    }
    // Escaped slashes and backslashes: redirected to the unescaped, normalized path (307, a
    // relative Location: no host is ever taken from the request for it).
    for probe in [
        "/public/..%2fadmin/x",
        "/admin%2fx",
        "/admin%2Fx",
        "/admin\\x",
        "/admin%5cx",
    ] {
        let a = get(main, probe, "");
        assert_eq!(a.status, 307, "{probe}: {}", a.text);
        assert_eq!(a.header("location").as_deref(), Some("/admin/x"), "{probe}");
    }
    assert_eq!(e.forwarded(), 0, "a probe reached the upstream");
    // Characters RFC 3986 forbids, bytes ≥ 0x80 and broken escapes: 400 and close.
    for probe in [
        &b"/caf\xc3\xa9"[..],
        b"/a|b",
        b"/a^b",
        b"/a[1]",
        b"/a%zz",
        b"/a%4",
        b"/ok?q=\xc3\xa9",
    ] {
        let mut req = b"GET ".to_vec();
        req.extend_from_slice(probe);
        req.extend_from_slice(b" HTTP/1.1\r\nHost: a.example\r\n\r\n");
        let a = raw(main, &req);
        assert_eq!(
            a.status,
            400,
            "{}: {}",
            String::from_utf8_lossy(probe),
            a.text
        );
        assert!(a.closed, "{}", String::from_utf8_lossy(probe));
    }
    assert_eq!(e.forwarded(), 0, "a bad path reached the upstream");
    // The upstream gets the normalized path, query untouched.
    assert_eq!(get(main, "/public/./x/../y%7e?a=%2e%2e", "").status, 200);
    assert!(
        e.last_forwarded()
            .starts_with("get /public/y~?a=%2e%2e http/1.1\r\n"),
        "{}",
        e.last_forwarded()
    );
    // A prefix rewrite applies to the normalized path: `..` cannot climb out of it.
    assert_eq!(get(main, "/v2/a/../b", "").status, 200);
    assert!(e.last_forwarded().starts_with("get /pub/b http/1.1"));
    // Rejecting escaped slashes instead of redirecting.
    let strict = e.addr("strict");
    for probe in ["/admin%2fx", "/admin\\x", "/a%5Cb"] {
        assert_eq!(get(strict, probe, "").status, 400, "{probe}");
    }
    let m = "listener=\"main\"";
    let s = "sluice_downstream_sanitized_total";
    assert!(e.counter(s, &format!("{m},action=\"path_normalized\"")) >= 9.0);
    assert_eq!(
        e.counter(s, &format!("{m},action=\"path_redirected\"")),
        5.0
    );
    assert_eq!(
        e.counter(
            "sluice_downstream_rejected_total",
            &format!("{m},reason=\"invalid_path\"")
        ),
        7.0
    );
}

#[test]
fn http2_requests_are_normalized_too() {
    let e = setup();
    let addr = e.addr("main");
    let req = |path: &str| {
        http::Request::get(format!("http://{addr}{path}"))
            .body(http_body_util::Full::default())
            .unwrap()
    };
    assert_eq!(
        h2_send(addr, req("/public/%2e%2e/admin/x")),
        (403, "denied".into())
    );
    assert_eq!(h2_send(addr, req("//admin/x")).0, 403);
    assert_eq!(h2_send(addr, req("/admin%2fx")).0, 307);
    assert_eq!(e.forwarded(), 0);
    assert_eq!(h2_send(addr, req("/a/./b/../c")).0, 200);
    assert!(e.last_forwarded().starts_with("get /a/c http/1.1"));
}

#[test]
fn prefix_matching_by_whole_segments() {
    let e = setup();
    let main = e.addr("main");
    for (path, api) in [
        ("/api", true),
        ("/api/", true),
        ("/api/x", true),
        ("/api?x=1", true),
        ("/apix", false),
        ("/api..", false),
        ("/api.json", false),
    ] {
        let a = get(main, path, "");
        assert_eq!(a.body() == "api", api, "{path}: {}", a.text);
    }
    assert_eq!(e.forwarded(), 3);
}

#[test]
fn host_and_authority_are_validated() {
    let e = setup();
    let main = e.addr("main");
    for host in [
        "evil.com/.corp.example.com",
        "user@api.example.com",
        "api.example.com:abc",
        "[api.example.com]",
        "",
        "a b.example",
    ] {
        let a = raw(
            main,
            format!("GET /login HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
        );
        assert_eq!(a.status, 400, "{host:?}: {}", a.text);
        assert!(a.closed, "{host:?}");
        assert_eq!(a.header("location"), None, "{host:?}");
    }
    // Absolute form with userinfo.
    let a = raw(
        main,
        b"GET http://user:pw@a.example/x HTTP/1.1\r\nHost: a.example\r\n\r\n",
    );
    assert_eq!(a.status, 400, "{}", a.text);
    assert_eq!(e.forwarded(), 0, "an invalid host reached the upstream");
    // A valid wildcard host still redirects, to itself.
    let a = raw(
        main,
        b"GET /login HTTP/1.1\r\nHost: x.corp.example.com\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(a.status, 301);
    assert_eq!(
        a.header("location").as_deref(),
        Some("https://x.corp.example.com/login")
    );
    // One trailing dot is stripped for matching and forwarding.
    let a = raw(
        main,
        b"GET /x HTTP/1.1\r\nHost: api.example.com.\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(a.status, 200);
    assert!(
        e.last_forwarded().contains("\r\nhost: api.example.com\r\n"),
        "{}",
        e.last_forwarded()
    );
    // HTTP/1.0 without Host: no Location is built from an empty host.
    let a = raw(main, b"GET /go HTTP/1.0\r\n\r\n");
    assert_eq!(a.status, 400, "{}", a.text);
    assert_eq!(a.header("location"), None);
    assert_eq!(
        e.counter(
            "sluice_downstream_rejected_total",
            "listener=\"main\",reason=\"invalid_host\""
        ),
        7.0
    );
}

#[test]
fn untrusted_clients_cannot_speak_for_the_proxy() {
    let e = setup();
    let main = e.addr("main");
    let long_id = "a".repeat(8 * 1024);
    let a = get(
        main,
        "/gated",
        &format!(
            "x-internal: 1\r\nX_Internal_Token: t\r\nx-forwarded-for: 203.0.113.9\r\n\
             forwarded: for=203.0.113.9\r\nx-real-ip: 203.0.113.9\r\nx-envoy-internal: true\r\n\
             x-request-id: {long_id}\r\n"
        ),
    );
    // The header-gated route did not match: the request went to the catch-all upstream.
    assert_eq!(a.status, 200);
    assert_ne!(a.body(), "gated");
    let sent = e.last_forwarded();
    for gone in [
        "x-internal",
        "x_internal_token",
        "forwarded:",
        "x-real-ip",
        "x-envoy-internal",
        "203.0.113.9",
    ] {
        assert!(!sent.contains(gone), "{gone} forwarded: {sent}");
    }
    assert!(
        sent.contains("\r\nx-forwarded-for: 127.0.0.1\r\n"),
        "{sent}"
    );
    let id = sent
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .expect("a request id");
    assert_eq!(id.trim().len(), 36, "regenerated: {id}");
    // A trusted hop's x-forwarded-for is kept and cannot be named away by `Connection`.
    let a = get(
        e.addr("hop"),
        "/x",
        "x-forwarded-for: 198.51.100.7\r\nConnection: x-forwarded-for, x-request-id\r\n",
    );
    assert_eq!(a.status, 200);
    let sent = e.last_forwarded();
    assert!(
        sent.contains("\r\nx-forwarded-for: 198.51.100.7, 127.0.0.1\r\n"),
        "{sent}"
    );
    // A trusted peer keeps its request id and internal headers.
    let a = get(e.addr("peer"), "/gated", "x-internal: 1\r\n");
    assert_eq!(a.body(), "gated");
    let before = e.forwarded();
    assert_eq!(
        get(e.addr("peer"), "/x", "x-request-id: keep-me\r\n").status,
        200
    );
    assert_eq!(e.forwarded(), before + 1);
    assert!(e.last_forwarded().contains("\r\nx-request-id: keep-me\r\n"));
    // `reject` answers 400 to an underscore name.
    let a = get(e.addr("strict"), "/x", "x_a: 1\r\n");
    assert_eq!((a.status, a.closed), (400, true));
    assert_eq!(e.forwarded(), before + 1);
    for action in [
        "underscore_header_dropped",
        "internal_header_stripped",
        "forwarding_header_stripped",
        "request_id_replaced",
    ] {
        assert!(
            e.counter(
                "sluice_downstream_sanitized_total",
                &format!("listener=\"main\",action=\"{action}\"")
            ) >= 1.0,
            "{action}"
        );
    }
}

#[test]
fn transfer_codings_other_than_chunked_get_501() {
    let e = setup();
    let main = e.addr("main");
    for te in ["gzip, chunked", "identity, chunked", "chunked, chunked"] {
        let a = raw(
            main,
            format!(
                "POST /x HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: {te}\r\n\r\n\
                 5\r\nhello\r\n0\r\n\r\n"
            )
            .as_bytes(),
        );
        assert_eq!((a.status, a.closed), (501, true), "{te}: {}", a.text);
    }
    assert_eq!(e.forwarded(), 0);
    // The response side: an upstream coding Sluice would drop silently is a bad response.
    let e = setup_with(vec![
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n".to_vec(),
    ]);
    assert_eq!(get(e.addr("main"), "/x", "").status, 502);
}

#[test]
fn http2_header_count_is_enforced() {
    let e = setup();
    let addr = e.addr("main");
    let mut req = http::Request::get(format!("http://{addr}/x"));
    for i in 0..150 {
        req = req.header(format!("x-h{i}"), "v");
    }
    let (status, _) = h2_send(addr, req.body(http_body_util::Full::default()).unwrap());
    assert_eq!(status, 431);
    assert_eq!(e.forwarded(), 0);
    assert_eq!(
        e.counter(
            "sluice_downstream_rejected_total",
            "listener=\"main\",reason=\"headers_too_large\""
        ),
        1.0
    );
}

#[test]
fn repeated_query_keys_a_route_tests_are_refused() {
    let e = setup();
    let main = e.addr("main");
    assert_eq!(get(main, "/q?debug=1", "").status, 403);
    // Which occurrence would the upstream believe? Refuse rather than guess.
    assert_eq!(get(main, "/q?debug=0&debug=1", "").status, 400);
    assert_eq!(get(main, "/q?debug=0&x=1&debug=1", "").status, 400);
    assert_eq!(e.forwarded(), 0);
    assert_eq!(get(main, "/q?debug=0", "").status, 200);
    // Routes that do not test the key do not care.
    assert_eq!(get(main, "/x?debug=0&debug=1", "").status, 200);
    assert_eq!(e.forwarded(), 2);
}

#[test]
fn admin_is_loopback_only_capped_timed_out_and_redacted() {
    let bad = "admin: { address: 0.0.0.0:7191 }\nlisteners: []\n";
    let err = sluice_config::parse(bad, "a.yaml").unwrap_err().to_string();
    assert!(
        err.contains("admin.address") && err.contains("allow_remote"),
        "{err}"
    );
    let allowed = "admin: { address: 0.0.0.0:7191, allow_remote: true }\nlisteners: []\n";
    let c = sluice_config::parse(allowed, "a.yaml").unwrap();
    assert!(
        c.warnings().iter().any(|w| w.contains("not loopback")),
        "{:?}",
        c.warnings()
    );

    let up = echo("up");
    let p = InProcess::start(&format!(
        r#"
admin: {{ address: 127.0.0.1:0, max_connections: 2, request_header_timeout: 1s }}
listeners:
  - {{ name: main, address: 127.0.0.1:0, http: {{ route_table: main }} }}
route_tables:
  - name: main
    virtual_hosts:
      - name: all
        domains: ["*"]
        request_headers: {{ set: {{ authorization: "Bearer s3cret" }} }}
        routes:
          - match: {{ prefix: /, headers: [{{ name: x-api-key, exact: k3y }}] }}
            cluster: up
clusters:
  - {{ name: up, endpoints: [{up}] }}
"#
    ));
    let admin = p.proxy().admin_addr();
    let dump = http_get(admin, "/config_dump").1;
    assert!(!dump.contains("s3cret") && !dump.contains("k3y"), "{dump}");
    assert!(dump.contains("authorization") && dump.contains("[redacted]"));
    // Two idle connections fill the admin API; a third is closed at once.
    let mut idle: Vec<std::net::TcpStream> = (0..2)
        .map(|_| std::net::TcpStream::connect(admin).unwrap())
        .collect();
    let mut third = std::net::TcpStream::connect(admin).unwrap();
    let (_, closed) = read_until_close(&mut third, Duration::from_secs(5));
    assert!(closed, "over the cap but kept open");
    // The idle ones are closed by the header timeout (1s), after which the API answers again.
    for s in &mut idle {
        let (_, closed) = read_until_close(s, Duration::from_secs(10));
        assert!(closed, "idle admin connection outlived the header timeout");
    }
    eventually("admin answers again", || {
        (http_get(admin, "/ready").0 == 200).then_some(())
    });
}
