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
    // In file order, each at its place (the missing listeners at none, so last).
    assert!(
        text.starts_with(&format!(
            "{r}:1:19: warning: admin.address 0.0.0.0:7191 is not loopback"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("\n{r}: warning: no listeners")),
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

/// Kills the child process when dropped (a failed assertion must not leave it running).
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn demo_moves_off_a_busy_port_and_says_so() {
    use std::io::BufRead;
    // The port asked for is taken: the demo picks a free one and the banner says which.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let mut child = Reaped(
        Command::new(sluice_bin())
            .args(["demo", "--workers", "1", "--port", &port.to_string()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let mut banner = String::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        banner.push_str(&line);
        banner.push('\n');
        if line.contains("Ctrl-C drains and exits") {
            break;
        }
    }
    assert!(
        banner.contains(&format!(
            "(port {port} is busy: listener web uses a free port instead)"
        )),
        "{banner}"
    );
    // Every URL is quoted (a `?` must not glob in zsh), the WebSocket route and the admin
    // endpoints are listed, and the printed addresses answer.
    let url = |marker: &str| -> String {
        let line = banner
            .lines()
            .find(|l| l.contains(marker))
            .unwrap_or_else(|| panic!("no `{marker}` in\n{banner}"));
        let start = line.find("'http://").expect("a quoted URL") + 1;
        let end = start + line[start..].find('\'').expect("closing quote");
        line[start..end].to_string()
    };
    assert!(url("/api/users?id=7").ends_with("/api/users?id=7"));
    assert!(banner.contains("Upgrade: websocket"), "{banner}");
    let hello = url("/hello'");
    let web: std::net::SocketAddr = hello
        .trim_start_matches("http://")
        .trim_end_matches("/hello")
        .parse()
        .unwrap();
    assert_ne!(web.port(), port);
    assert_eq!(http_get(web, "/hello").0, 200);
    let index = url("# the admin API's endpoints");
    let admin: std::net::SocketAddr = index
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let (status, body) = http_get(admin, "/");
    assert_eq!(status, 200);
    assert!(body.contains("/config_dump"), "{body}");
    drop(busy);
}

#[test]
fn the_log_says_what_started_what_failed_upstream_and_what_a_reload_changed() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let yaml = |table: &str| {
        format!(
            "listeners:\n  - {{ name: web, address: 127.0.0.1:0, http: {{ route_table: {table} }} }}\n\
             route_tables:\n  - {{ name: {table}, virtual_hosts: [{{ name: v, domains: ['*'], routes: [{{ name: all, match: {{ prefix: / }}, cluster: dead }}] }}] }}\n\
             clusters:\n  - {{ name: dead, endpoints: [{dead}] }}\n"
        )
    };
    let mut bin = Binary::start(&yaml("t"), &[]);
    let web = bin.addr("web");
    // One line names every bound listener and the admin API.
    let started = bin.wait_log("sluice started");
    assert!(
        started.contains(&format!("listeners [web http {web}]"))
            && started.contains(&format!("admin API on http://{}/", bin.admin)),
        "{started}"
    );
    // A refused upstream is warned at the default level with cluster, endpoint, listener and
    // route — at most 5 lines per 10 s per cluster, however many requests fail.
    for _ in 0..12 {
        assert_eq!(http_get(web, "/").0, 503);
    }
    // Each warning is written before its 503 is sent; a reload's line after the twelfth
    // response marks the end of theirs.
    bin.write_config(&yaml("t2"));
    let reloaded = bin.wait_log("config reloaded");
    assert!(
        reloaded.contains("route_table added: t2; listener updated: web; route_table removed: t"),
        "{reloaded}"
    );
    let failures: Vec<&String> = bin
        .log_lines()
        .iter()
        .filter(|l| l.contains("upstream request failed"))
        .collect();
    assert_eq!(failures.len(), 5, "{failures:#?}");
    let line = failures[0];
    for field in [
        "WARN",
        "cluster=dead",
        &format!("endpoint={dead}"),
        "listener=web",
        "route=all",
        "flag=UF",
    ] {
        assert!(line.contains(field), "{field} missing from {line}");
    }
}
