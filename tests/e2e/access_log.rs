//! Access logs: JSON lines with every field, Envoy text templates, status filters and sampling,
//! driven by curl (HTTP/1.1 and HTTP/2).

use crate::support::*;
use std::path::Path;

/// The log file's lines once it has `n` (the writer thread writes soon after each response).
fn lines(path: &Path, n: usize) -> Vec<String> {
    eventually(&format!("{n} access log lines"), || {
        let text = std::fs::read_to_string(path).ok()?;
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        (lines.len() >= n).then_some(lines)
    })
}

fn json_lines(path: &Path, n: usize) -> Vec<serde_json::Value> {
    lines(path, n)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn json_access_log_records_every_field_across_protocols_and_failures() {
    let app = echo("app");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let p = InProcess::start(&format!(
        "listeners:
  - name: web
    address: 127.0.0.1:0
    http: {{ route_table: t, access_log: {{ path: '{}' }} }}
route_tables:
  - name: t
    virtual_hosts:
      - name: site
        domains: ['*']
        routes:
          - {{ name: teapot, match: {{ prefix: /tea }}, direct_response: {{ status: 418, body: short }} }}
          - {{ name: down, match: {{ prefix: /down }}, cluster: dead }}
          - name: flaky
            match: {{ prefix: /status/503 }}
            cluster: app
            retry_policy: {{ retry_on: [5xx], num_retries: 1, back_off: {{ base_interval: 1ms, max_interval: 2ms }} }}
          - {{ name: app, match: {{ prefix: / }}, cluster: app }}
clusters:
  - {{ name: app, endpoints: [{app}] }}
  - {{ name: dead, endpoints: [127.0.0.1:9], outlier_detection: {{ enabled: false }} }}
",
        log.display()
    ));
    let url = |path: &str| p.url("web", path);
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    curl(&[
        "-A",
        "probe/1.0",
        "-H",
        &format!("traceparent: 00-{trace}-00f067aa0ba902b7-01"),
        "-H",
        "x-request-id: client-id-1",
        &url("/bytes/100?x=1"),
    ]);
    curl(&[
        "--http2-prior-knowledge",
        "--data-binary",
        "0123456789",
        &url("/echo"),
    ]);
    curl(&[&url("/tea")]);
    curl(&[&url("/down")]);
    curl(&[&url("/status/503")]);
    let got = json_lines(&log, 5);
    assert_eq!(got.len(), 5, "{got:#?}");
    let [get, post, tea, down, flaky] = got.as_slice() else {
        unreachable!()
    };

    assert_eq!(get["method"], "GET");
    assert_eq!(get["path"], "/bytes/100?x=1");
    assert_eq!(get["protocol"], "HTTP/1.1");
    assert_eq!(get["scheme"], "http");
    assert_eq!(get["authority"], p.addr("web").to_string());
    assert_eq!(get["status"], 200);
    assert_eq!(get["bytes_sent"], 100);
    assert_eq!(get["bytes_received"], 0);
    assert_eq!(get["response_flags"], "-");
    assert_eq!(get["listener"], "web");
    assert_eq!(get["virtual_host"], "site");
    assert_eq!(get["route"], "app");
    assert_eq!(get["cluster"], "app");
    assert_eq!(get["upstream_host"], app.to_string());
    assert_eq!(get["attempts"], 1);
    assert_eq!(get["user_agent"], "probe/1.0");
    assert_eq!(get["trace_id"], trace);
    // The listener does not trust the client's request id: the upstream got a new one, and
    // the log shows the one the upstream got.
    let id = get["request_id"].as_str().unwrap();
    assert!(id.len() == 36 && id != "client-id-1", "{id}");
    // The client's address as the upstream saw it forwarded.
    assert_eq!(get["x_forwarded_for"], "127.0.0.1");
    assert!(
        get["downstream_remote_address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert!(get["downstream_peer_identity"].is_null());
    assert!(get["grpc_status"].is_null());
    let start = get["start_time"].as_str().unwrap();
    assert!(
        start.len() == 24 && start.ends_with('Z') && start.as_bytes()[10] == b'T',
        "{start}"
    );
    assert!(get["duration_ms"].as_f64().unwrap() >= 0.0);

    assert_eq!(post["protocol"], "HTTP/2");
    assert_eq!(post["method"], "POST");
    assert_eq!(post["bytes_received"], 10);
    assert_eq!(post["bytes_sent"], 10);

    // Answered by the route itself: route known, no cluster, no upstream.
    assert_eq!(tea["status"], 418);
    assert_eq!(tea["route"], "teapot");
    assert!(tea["cluster"].is_null() && tea["upstream_host"].is_null());
    assert_eq!(tea["bytes_sent"], 5);

    // A connect failure: Sluice's 503 with Envoy's flag.
    assert_eq!(down["status"], 503);
    assert_eq!(down["response_flags"], "UF");
    assert_eq!(down["cluster"], "dead");
    assert_eq!(down["route"], "down");

    // The upstream's 503, retried once and then passed on: two attempts, retries exhausted.
    assert_eq!(flaky["status"], 503);
    assert_eq!(flaky["attempts"], 2);
    assert_eq!(flaky["response_flags"], "URX");

    let m = p.metrics();
    assert_eq!(
        metric_value(
            &m,
            r#"sluice_access_log_lines_total{listener="web",result="written"}"#
        ),
        5.0
    );
    assert_eq!(
        metric_value(
            &m,
            r#"sluice_access_log_lines_total{listener="web",result="dropped"}"#
        ),
        0.0
    );
}

#[test]
fn text_templates_status_filters_and_sampling() {
    let app = echo("app");
    let dir = tempfile::tempdir().unwrap();
    let errors = dir.path().join("errors.log");
    let envoy = dir.path().join("envoy.log");
    let none = dir.path().join("none.log");
    let p = InProcess::start(&format!(
        "listeners:
  - name: errors
    address: 127.0.0.1:0
    http:
      route_table: t
      access_log:
        path: '{}'
        min_status: 400
        format: {{ template: '%LISTENER% %REQ(:METHOD)% %REQ(:PATH)%:8 %RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_CLUSTER% %REQ(X-MISSING?USER-AGENT)% %RESP(X-UPSTREAM)% %RESP(X-NONE)% 100%%' }}
  - name: envoy
    address: 127.0.0.1:0
    http: {{ route_table: t, access_log: {{ path: '{}', format: text }} }}
  - name: sampled
    address: 127.0.0.1:0
    http: {{ route_table: t, access_log: {{ path: '{}', sample: 0 }} }}
route_tables:
  - name: t
    virtual_hosts:
      - name: v
        domains: ['*']
        routes:
          - {{ match: {{ prefix: / }}, cluster: app }}
clusters:
  - {{ name: app, endpoints: [{app}] }}
",
        errors.display(),
        envoy.display(),
        none.display()
    ));
    for path in ["/ok", "/status/404", "/status/502", "/fine"] {
        curl(&["-A", "ua", &p.url("errors", path)]);
    }
    let got = lines(&errors, 2);
    assert_eq!(
        got,
        vec![
            "errors GET /status/ 404 - app ua app - 100%",
            "errors GET /status/ 502 - app ua app - 100%"
        ]
    );

    curl(&["-A", "curl-test", &p.url("envoy", "/path?q=1")]);
    let line = lines(&envoy, 1).remove(0);
    // Envoy's default format: [time] "METHOD PATH PROTOCOL" CODE FLAGS RX TX DURATION
    // SERVICE-TIME "XFF" "UA" "REQUEST-ID" "AUTHORITY" "UPSTREAM".
    let rest = line.split_once("] ").unwrap().1;
    assert!(
        rest.starts_with("\"GET /path?q=1 HTTP/1.1\" 200 - 0 "),
        "{line}"
    );
    assert!(rest.contains("\"127.0.0.1\" \"curl-test\" \""), "{line}");
    assert!(
        rest.ends_with(&format!("\"{}\" \"{app}\"", p.addr("envoy"))),
        "{line}"
    );

    // Sampling 0: nothing is logged (and nothing is dropped).
    for _ in 0..20 {
        curl(&[&p.url("sampled", "/")]);
    }
    let m = p.metrics();
    assert_eq!(
        counter_or_zero(
            &m,
            r#"sluice_access_log_lines_total{listener="sampled",result="written"}"#
        ),
        0.0
    );
    assert_eq!(
        metric_value(
            &m,
            r#"sluice_access_log_lines_total{listener="errors",result="written"}"#
        ),
        2.0
    );
    assert!(
        std::fs::read_to_string(&none)
            .unwrap_or_default()
            .is_empty()
    );
}

#[test]
fn an_access_log_that_cannot_be_opened_keeps_the_last_good_config() {
    let app = echo("app");
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.log");
    let config = |path: &str| {
        format!(
            "listeners:
  - {{ name: web, address: 127.0.0.1:0, http: {{ route_table: t, access_log: {{ path: '{path}' }} }} }}
route_tables:
  - name: t
    virtual_hosts:
      - {{ name: v, domains: ['*'], routes: [{{ match: {{ prefix: / }}, cluster: app }}] }}
clusters:
  - {{ name: app, endpoints: [{app}] }}
"
        )
    };
    let mut bin = Binary::start(&config(&good.display().to_string()), &[]);
    let web = bin.addr("web");
    assert_eq!(http_get(web, "/a").0, 200);
    lines(&good, 1);
    bin.write_config(&config("/nonexistent-dir/access.log"));
    let log = bin.wait_log("its previous version (if any) keeps serving");
    assert!(log.contains("/nonexistent-dir/access.log"), "{log}");
    // Still serving, still logging to the old file.
    assert_eq!(http_get(web, "/b").0, 200);
    let got = json_lines(&good, 2);
    assert_eq!(got[1]["path"], "/b");
}

#[test]
fn tcp_listeners_log_each_connection_when_it_ends() {
    require_tool("openssl", "openssl");
    let echo = tcp_echo();
    // A port that was just free: connecting to it is refused.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("tcp.log");
    let text = dir.path().join("tcp.txt");
    let p = InProcess::start(&format!(
        "listeners:
  - {{ name: plain, address: 127.0.0.1:0, tcp: {{ cluster: echo, access_log: {{ path: '{json}' }} }} }}
  - name: sni
    address: 127.0.0.1:0
    tcp:
      tls_inspector_timeout: 300ms
      sni: [{{ server_names: [a.example], cluster: echo }}]
      access_log: {{ path: '{json}' }}
  - name: down
    address: 127.0.0.1:0
    tcp:
      cluster: dead
      access_log: {{ path: '{text}', format: {{ template: '%LISTENER% %PROTOCOL% %RESPONSE_FLAGS% %UPSTREAM_CLUSTER% %BYTES_RECEIVED% %REQ(:METHOD)% %RESPONSE_CODE%' }} }}
clusters:
  - {{ name: echo, endpoints: [{echo}] }}
  - {{ name: dead, endpoints: [{dead}] }}
",
        json = json.display(),
        text = text.display(),
    ));
    // Bytes both ways, then the client closes.
    let mut c = std::net::TcpStream::connect(p.addr("plain")).unwrap();
    std::io::Write::write_all(&mut c, b"hello, tcp\n").unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let (out, closed) = read_until_close(&mut c, DEADLINE);
    assert!(closed, "{out:?}");
    assert_eq!(out, "hello, tcp\n");
    let plain = &json_lines(&json, 1)[0];
    assert_eq!(plain["listener"], "plain");
    assert_eq!(plain["protocol"], "TCP");
    assert_eq!(plain["response_flags"], "-");
    assert_eq!(plain["termination"], "closed");
    assert_eq!(plain["bytes_received"], 11);
    assert_eq!(plain["bytes_sent"], 11);
    assert_eq!(plain["cluster"], "echo");
    assert_eq!(plain["upstream_host"], echo.to_string());
    assert!(plain["requested_server_name"].is_null());
    assert!(
        plain["downstream_remote_address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert_eq!(
        plain["downstream_local_address"],
        p.addr("plain").to_string()
    );
    assert!(plain["duration_ms"].as_f64().unwrap() >= 0.0);
    // A ClientHello for a listed name goes to its cluster (an echo, so the handshake fails:
    // the log still has the name and the bytes); plain bytes on the same listener have no
    // route.
    let _ = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &p.addr("sni").to_string(),
            "-servername",
            "a.example",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run openssl s_client");
    json_lines(&json, 2);
    let _ = raw_exchange(p.addr("sni"), b"GET / HTTP/1.1\r\n\r\n", DEADLINE);
    let got = json_lines(&json, 3);
    let (tls, unrouted) = (&got[1], &got[2]);
    assert_eq!(tls["listener"], "sni");
    assert_eq!(tls["requested_server_name"], "a.example");
    assert_eq!(tls["cluster"], "echo");
    assert!(tls["bytes_received"].as_u64().unwrap() > 100, "{tls}");
    assert_eq!(unrouted["response_flags"], "NR");
    assert_eq!(unrouted["termination"], "no_route");
    assert!(unrouted["cluster"].is_null());
    assert!(unrouted["upstream_host"].is_null());
    // A refused upstream: `UF`, in a text template whose HTTP-only operators are `-`.
    let (out, closed) = raw_exchange(p.addr("down"), b"hello", DEADLINE);
    assert!(closed && out.is_empty(), "{out:?}");
    assert_eq!(lines(&text, 1), ["down TCP UF dead 0 - -"]);
    let m = p.metrics();
    assert_eq!(
        metric_value(
            &m,
            r#"sluice_access_log_lines_total{listener="plain",result="written"}"#
        ),
        1.0,
        "{m}"
    );
}
