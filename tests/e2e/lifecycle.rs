//! The binary's lifecycle: graceful shutdown with requests in flight, a second signal, the drain
//! timeout, bind errors, `validate` and `--version`.

use crate::support::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn config(up: std::net::SocketAddr) -> String {
    format!(
        r#"
listeners:
  - {{ name: main, address: 127.0.0.1:0, http: {{ route_table: main }} }}
route_tables:
  - name: main
    virtual_hosts:
      - {{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: / }}, cluster: up, timeout: 0s }}] }}
clusters:
  - {{ name: up, endpoints: [{up}] }}
"#
    )
}

/// Starts a request in the background and waits until the proxy has received it.
fn in_flight(bin: &Binary, path: &str) -> std::thread::JoinHandle<std::io::Result<Resp>> {
    let addr = bin.addr("main");
    let before = bin.metric("sluice_downstream_requests_total{listener=\"main\"}");
    let path = path.to_string();
    let h = std::thread::spawn(move || KeepAlive::new(addr).get(&path));
    eventually("request in flight", || {
        (bin.metric("sluice_downstream_requests_total{listener=\"main\"}") > before).then_some(())
    });
    h
}

#[test]
fn sigterm_drains_in_flight_requests_then_exits_0() {
    let mut bin = Binary::start(&config(echo("up")), &["--drain-timeout", "20s"]);
    let addr = bin.addr("main");
    let req = in_flight(&bin, "/delay/1500");
    let start = Instant::now();
    bin.signal("TERM");
    eventually("/ready turns 503", || {
        (http_get(bin.admin, "/ready") == (503, "draining\n".into())).then_some(())
    });
    eventually("listener closed", || {
        std::net::TcpStream::connect(addr).is_err().then_some(())
    });
    let r = req.join().unwrap().expect("in-flight request completed");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(bin.wait_exit(), 0);
    assert!(
        start.elapsed() >= Duration::from_millis(1000),
        "exited before the request finished"
    );
    bin.wait_log("drained; exiting");
}

#[test]
fn second_signal_exits_at_once() {
    let mut bin = Binary::start(&config(echo("up")), &["--drain-timeout", "60s"]);
    let req = in_flight(&bin, "/delay/30000");
    bin.signal("TERM");
    bin.wait_log("draining");
    let start = Instant::now();
    bin.signal("INT");
    assert_eq!(bin.wait_exit(), 130);
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(
        req.join().unwrap().is_err(),
        "the cut request cannot have succeeded"
    );
}

#[test]
fn drain_timeout_bounds_shutdown() {
    let mut bin = Binary::start(&config(echo("up")), &["--drain-timeout", "300ms"]);
    let req = in_flight(&bin, "/delay/30000");
    let start = Instant::now();
    bin.signal("TERM");
    assert_eq!(bin.wait_exit(), 0);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    bin.wait_log("drain timeout: closing remaining connections");
    assert!(req.join().unwrap().is_err());
}

/// Runs `sluice proxy -c cfg` to completion (for configs that make it exit at once).
fn run_proxy(cfg: &std::path::Path) -> std::process::Output {
    Command::new(sluice_bin())
        .args(["proxy", "-c"])
        .arg(cfg)
        .output()
        .unwrap()
}

#[test]
fn bind_error_is_clear() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = temp_file(
        dir.path(),
        "c.yaml",
        &format!(
            "admin: {{ address: 127.0.0.1:0 }}\nlisteners:\n  - {{ name: l, address: 127.0.0.1:{port}, tcp: {{ cluster: c }} }}\nclusters:\n  - {{ name: c, endpoints: [127.0.0.1:9] }}\n"
        ),
    );
    let out = run_proxy(&cfg);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let want = format!("listener \"l\": address 127.0.0.1:{port} already in use");
    assert!(err.contains(&want), "{err}");
    assert_eq!(err.matches("already in use").count(), 1, "repeated: {err}");
    // The admin port, likewise named once.
    let cfg = temp_file(
        dir.path(),
        "a.yaml",
        &format!(
            "admin: {{ address: 127.0.0.1:{port} }}\nlisteners:\n  - {{ name: l, address: 127.0.0.1:0, tcp: {{ cluster: c }} }}\nclusters:\n  - {{ name: c, endpoints: [127.0.0.1:9] }}\n"
        ),
    );
    let out = run_proxy(&cfg);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let want = format!("admin: address 127.0.0.1:{port} already in use");
    assert!(err.contains(&want), "{err}");
    assert_eq!(err.matches("already in use").count(), 1, "repeated: {err}");
}

#[test]
fn invalid_config_at_start_names_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = temp_file(
        dir.path(),
        "bad.yaml",
        "listeners:\n  - name: l\n    address: nowhere\n",
    );
    let out = run_proxy(&cfg);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains(&format!(
            "{}:3:14: listeners[0].address: `nowhere`: `nowhere` is not an IP address",
            cfg.display()
        )),
        "{err}"
    );
}

#[test]
fn validate_prints_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let good = temp_file(
        dir.path(),
        "good.yaml",
        "listeners:\n  - { name: l, address: 127.0.0.1:1, tcp: { cluster: c } }\nclusters:\n  - { name: c, endpoints: [127.0.0.1:9] }\n",
    );
    let bad = temp_file(
        dir.path(),
        "bad.yaml",
        "listeners:\n  - { name: l, address: 127.0.0.1:1, tcp: { cluster: nope } }\n  - { name: l, address: 127.0.0.1:2, http: { route_table: t } }\n",
    );
    let out = Command::new(sluice_bin())
        .arg("validate")
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}: ok\n", good.display())
    );
    let out = Command::new(sluice_bin())
        .arg("validate")
        .arg(&good)
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    // Every error in file order, parse-level ones too, then a count.
    let (g, b) = (good.display(), bad.display());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "{g}: ok\n\
             {b}:2:54: listeners[0].tcp.cluster: unknown cluster `nope`\n\
             {b}:3:13: listeners[1].name: duplicate name `l` (also used by listeners[0])\n\
             {b}:3:59: listeners[1].http.route_table: unknown route table `t`\n\
             {b}: 3 error(s)\n"
        )
    );
    let parse_level = temp_file(
        dir.path(),
        "typos.yaml",
        "listeners:\n  - { name: l, adress: 127.0.0.1:1, tcp: { cluster: c } }\nclusters:\n  - { name: c, lb_policy: roundrobin, endpoints: [127.0.0.1:9] }\n",
    );
    let out = Command::new(sluice_bin())
        .arg("validate")
        .arg(&parse_level)
        .output()
        .unwrap();
    let p = parse_level.display();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "{p}:2:16: listeners[0].adress: unknown field `adress`; did you mean `address`?\n\
             {p}:4:27: clusters[0].lb_policy: unknown value `roundrobin`; did you mean `round_robin`?\n\
             {p}: 2 error(s)\n"
        )
    );

    // Warnings print and pass, unless --strict (or SLUICE_VALIDATE_STRICT) is given.
    let risky = temp_file(
        dir.path(),
        "risky.yaml",
        "admin: { address: 0.0.0.0:7191, allow_remote: true }\n",
    );
    let r = risky.display();
    let out = Command::new(sluice_bin())
        .arg("validate")
        .arg(&risky)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!("{r}: warning: no listeners")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{r}: warning: admin.address 0.0.0.0:7191 is not loopback"
        )),
        "{text}"
    );
    assert!(text.ends_with(&format!("{r}: ok\n")), "{text}");
    let out = Command::new(sluice_bin())
        .arg("validate")
        .arg(&risky)
        .env("SLUICE_VALIDATE_STRICT", "true")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.ends_with(&format!("{r}: 2 warning(s), failing with --strict\n")),
        "{text}"
    );
}

#[test]
fn help_works_for_every_command() {
    for args in [
        &["help"][..],
        &["help", "--help"],
        &["help", "validate"],
        &["help", "proxy"],
        &["validate", "--help"],
    ] {
        let out = Command::new(sluice_bin()).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage: sluice"),
            "{args:?}"
        );
    }
    let out = Command::new(sluice_bin())
        .args(["help", "frobnicate"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("no command `frobnicate`; the commands are proxy, validate")
    );
}

#[test]
fn version_flag() {
    let out = Command::new(sluice_bin())
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("sluice {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn examples_validate() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            sluice_config::load_file(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 4, "expected the bundled examples, found {n}");
}

#[test]
fn sigterm_sends_goaway_and_finishes_http2_streams() {
    let mut bin = Binary::start(&config(echo("up")), &["--drain-timeout", "20s"]);
    let addr = bin.addr("main");
    let before = bin.metric("sluice_downstream_requests_total{listener=\"main\"}");
    let runtime = rt();
    let (status, closed) = runtime.block_on(async {
        let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .unwrap();
        let conn = tokio::spawn(conn);
        let req = http::Request::get(format!("http://{addr}/delay/1000"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = tokio::spawn(sender.send_request(req));
        let bin = &bin;
        tokio::task::spawn_blocking({
            let admin = bin.admin;
            move || {
                eventually("request in flight", || {
                    let m = http_get(admin, "/metrics").1;
                    (metric_value(&m, "sluice_downstream_requests_total{listener=\"main\"}")
                        > before)
                        .then_some(())
                })
            }
        })
        .await
        .unwrap();
        bin.signal("TERM");
        let resp = resp.await.unwrap().expect("stream finished after GOAWAY");
        let status = resp.status().as_u16();
        let (_, _) = collect(resp.into_body()).await;
        // GOAWAY then close: the client connection ends cleanly.
        let closed = tokio::time::timeout(DEADLINE, conn).await.is_ok();
        (status, closed)
    });
    assert_eq!(status, 200);
    assert!(closed, "HTTP/2 connection not closed after drain");
    assert_eq!(bin.wait_exit(), 0);
}

/// `curl -X POST` against the admin API: (status, body, `Allow` header).
fn admin_request(bin: &Binary, method: &str, path: &str) -> (u16, String, Option<String>) {
    let out = curl(&["-X", method, &format!("http://{}{path}", bin.admin)]);
    (
        out.status,
        out.text(),
        out.header("allow").map(str::to_string),
    )
}

#[test]
fn admin_mutations_are_post_only_and_do_what_envoy_operators_expect() {
    let app = echo("app");
    let mut bin = Binary::start(
        &format!(
            "listeners:\n  - {{ name: web, address: 127.0.0.1:0, http: {{ route_table: t }} }}\n\
             route_tables:\n  - {{ name: t, virtual_hosts: [{{ name: v, domains: ['*'], routes: [{{ match: {{ prefix: / }}, cluster: app }}] }}] }}\n\
             clusters:\n  - {{ name: app, endpoints: [{app}] }}\n"
        ),
        &[],
    );
    let web = bin.addr("web");
    // Mutations refuse GET (a crawler or a stray curl must not drain a proxy).
    for path in [
        "/drain_listeners",
        "/healthcheck/fail",
        "/healthcheck/ok",
        "/logging?level=debug",
        "/quitquitquit",
    ] {
        let (status, _, allow) = admin_request(&bin, "GET", path);
        assert_eq!((status, allow.as_deref()), (405, Some("POST")), "{path}");
    }
    // Reads refuse POST.
    assert_eq!(admin_request(&bin, "POST", "/ready").0, 405);
    // `/` lists every endpoint; an unknown path points there.
    let (status, index) = http_get(bin.admin, "/");
    assert_eq!(status, 200);
    for path in [
        "/ready",
        "/live",
        "/metrics",
        "/stats/prometheus",
        "/server_info",
        "/config_dump",
        "/clusters",
        "/listeners",
        "/drain_listeners",
        "/healthcheck/fail",
        "/healthcheck/ok",
        "/logging",
        "/quitquitquit",
    ] {
        assert!(
            index.contains(&format!(" {path}")),
            "{path} missing from\n{index}"
        );
    }
    let (status, body) = http_get(bin.admin, "/nope");
    assert_eq!(
        (status, body.as_str()),
        (404, "not found; GET / lists the admin endpoints\n")
    );

    // Failing the health check takes /ready down while traffic keeps flowing.
    assert_eq!(admin_request(&bin, "POST", "/healthcheck/fail").0, 200);
    let (status, body) = http_get(bin.admin, "/ready");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("failing"), "{body}");
    assert_eq!(http_get(web, "/").0, 200);
    let info: serde_json::Value =
        serde_json::from_str(&http_get(bin.admin, "/server_info").1).unwrap();
    assert_eq!(info["health_check_failed"], true, "{info}");
    assert_eq!(admin_request(&bin, "POST", "/healthcheck/ok").0, 200);
    assert_eq!(http_get(bin.admin, "/ready").0, 200);

    // The log level changes at runtime: debug lines appear.
    let (status, body, _) = admin_request(&bin, "POST", "/logging?level=debug");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("debug"), "{body}");
    // A path Sluice normalizes is logged at debug.
    assert_eq!(http_get(web, "/a/./b").0, 200);
    bin.wait_log("path normalized");
    let (status, body, _) =
        admin_request(&bin, "POST", "/logging?level=info%2Csluice_proxy%3Dbogus");
    assert_eq!(status, 400, "{body}");
    assert_eq!(admin_request(&bin, "POST", "/logging").0, 400);
    assert_eq!(admin_request(&bin, "POST", "/logging?level=info").0, 200);

    // Draining stops the listeners; the process and its admin API stay up.
    assert_eq!(admin_request(&bin, "POST", "/drain_listeners").0, 200);
    bin.wait_log("admin: draining listeners");
    eventually("listener closed", || {
        std::net::TcpStream::connect(web).is_err().then_some(())
    });
    assert_eq!(http_get(bin.admin, "/ready"), (503, "draining\n".into()));

    // And /quitquitquit exits, cleanly.
    assert_eq!(admin_request(&bin, "POST", "/quitquitquit").0, 200);
    assert_eq!(bin.wait_exit(), 0);
}
