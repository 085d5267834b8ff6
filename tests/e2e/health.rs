//! Active health checks end to end: an HTTP check takes an endpoint answering 503 out of the
//! rotation and brings it back, keeping its health across a config reload (the real binary); a
//! TCP check takes a killed upstream out and brings it back when it restarts on the same port;
//! a gRPC check follows a real grpcio server's `grpc.health.v1` status (needs Python `grpcio`
//! and `grpcio-health-checking`, which `test.sh` installs).

use crate::support::*;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

/// An HTTP/1.1 upstream whose `/healthz` answers a settable status (and records the `Host` it
/// was asked with); every other path answers 200 with `x-upstream: NAME`. It can be killed
/// (listener and connections closed) and restarted on the same address.
struct Upstream {
    addr: SocketAddr,
    health: Arc<AtomicU16>,
    hosts: Arc<Mutex<Vec<String>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Upstream {
    fn start(name: &str, addr: SocketAddr) -> Self {
        let listener = std::net::TcpListener::bind(addr).expect("bind upstream");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let health = Arc::new(AtomicU16::new(200));
        let hosts = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let (name, h, seen) = (name.to_string(), Arc::clone(&health), Arc::clone(&hosts));
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let stream = tokio::select! {
                        _ = &mut stopped => return,
                        s = listener.accept() => match s { Ok((s, _)) => s, Err(_) => continue },
                    };
                    let (name, h, seen) = (name.clone(), Arc::clone(&h), Arc::clone(&seen));
                    let svc = hyper::service::service_fn(move |req: http::Request<_>| {
                        let mut resp = http::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from(name.clone()),
                        ));
                        if req.uri().path() == "/healthz" {
                            let host = req.headers().get("host").map(|v| v.to_str().unwrap_or(""));
                            seen.lock().unwrap().push(host.unwrap_or("").to_string());
                            *resp.status_mut() =
                                http::StatusCode::from_u16(h.load(Ordering::Relaxed)).unwrap();
                        }
                        resp.headers_mut()
                            .insert("x-upstream", name.parse().unwrap());
                        async move { Ok::<_, std::convert::Infallible>(resp) }
                    });
                    tokio::spawn(
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc),
                    );
                }
            });
            // Dropping the runtime closes every connection.
        });
        Upstream {
            addr,
            health,
            hosts,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn set_health(&self, status: u16) {
        self.health.store(status, Ordering::Relaxed);
    }

    fn kill(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.kill();
    }
}

fn config(version: u32, health_checks: &str, endpoints: &[SocketAddr]) -> String {
    config_with(version, health_checks, endpoints, "round_robin")
}

fn config_with(version: u32, health_checks: &str, endpoints: &[SocketAddr], lb: &str) -> String {
    let eps: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
    format!(
        r#"
listeners:
  - {{ name: main, address: 127.0.0.1:0, http: {{ route_table: main }} }}
route_tables:
  - name: main
    virtual_hosts:
      - name: all
        domains: ["*"]
        response_headers: {{ set: {{ x-config-version: "{version}" }} }}
        routes: [{{ match: {{ prefix: / }}, cluster: up }}]
clusters:
  - name: up
    lb_policy: {lb}
    endpoints: [{}]
    health_checks: {health_checks}
"#,
        eps.join(", ")
    )
}

fn endpoints(admin: SocketAddr, cluster: &str, health: &str) -> f64 {
    metric_value(
        &http_get(admin, "/metrics").1,
        &format!("sluice_cluster_endpoints{{cluster=\"{cluster}\",health=\"{health}\"}}"),
    )
}

/// Waits until `cluster` has `n` healthy endpoints (by the gauge).
fn wait_healthy(admin: SocketAddr, cluster: &str, n: u32) {
    eventually(&format!("{n} healthy endpoints in {cluster}"), || {
        (endpoints(admin, cluster, "healthy") == f64::from(n)).then_some(())
    });
}

/// The health flags of one endpoint, from `/clusters`.
fn flags(admin: SocketAddr, cluster: &str, addr: SocketAddr) -> Vec<String> {
    let (_, body) = http_get(admin, "/clusters");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let c = v
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == cluster)
        .unwrap_or_else(|| panic!("{cluster} not in {body}"));
    let e = c["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == addr.to_string())
        .unwrap_or_else(|| panic!("{addr} not in {body}"));
    assert_eq!(
        e["healthy"],
        e["health_flags"].as_array().unwrap().is_empty()
    );
    e["health_flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect()
}

/// `n` requests on one connection; the upstream names that answered them.
fn answered_by(addr: SocketAddr, n: usize) -> Vec<String> {
    let mut c = KeepAlive::new(addr);
    (0..n)
        .map(|_| {
            let r = c.get("/").unwrap();
            assert_eq!(r.status, 200);
            r.header("x-upstream").unwrap_or("").to_string()
        })
        .collect()
}

const HTTP_CHECK: &str = "{ interval: 100ms, timeout: 1s, unhealthy_threshold: 2, healthy_threshold: 2, http: { path: /healthz } }";

#[test]
fn http_check_removes_a_503_endpoint_keeps_it_out_across_a_reload_and_restores_it() {
    let (a, b) = (
        Upstream::start("a", "127.0.0.1:0".parse().unwrap()),
        Upstream::start("b", "127.0.0.1:0".parse().unwrap()),
    );
    let mut bin = Binary::start(&config(1, HTTP_CHECK, &[a.addr, b.addr]), &[]);
    let (admin, addr) = (bin.admin, bin.addr("main"));
    wait_healthy(admin, "up", 2);
    assert_eq!(
        a.hosts.lock().unwrap()[0],
        "up",
        "Host defaults to the cluster name"
    );

    a.set_health(503);
    wait_healthy(admin, "up", 1);
    bin.wait_log("health check: endpoint unhealthy");
    assert_eq!(flags(admin, "up", a.addr), ["failed_active_hc"]);
    assert!(flags(admin, "up", b.addr).is_empty());
    assert!(answered_by(addr, 30).iter().all(|u| u == "b"));

    // A reload that changes the cluster (a new balancer, so a new endpoint set) and adds an
    // endpoint keeps the health of the endpoints that stay (and their checker): no request
    // reaches `a` in between, and it is not marked unhealthy a second time. The new endpoint
    // is checked and joins.
    let c = Upstream::start("c", "127.0.0.1:0".parse().unwrap());
    bin.write_config(&config_with(
        2,
        HTTP_CHECK,
        &[a.addr, b.addr, c.addr],
        "random",
    ));
    let mut client = KeepAlive::new(addr);
    eventually("config version 2", || {
        let r = client.get("/").ok()?;
        assert_ne!(r.header("x-upstream"), Some("a"), "during the reload");
        (r.header("x-config-version") == Some("2")).then_some(())
    });
    assert_eq!(flags(admin, "up", a.addr), ["failed_active_hc"]);
    wait_healthy(admin, "up", 2);
    assert!(flags(admin, "up", c.addr).is_empty());
    assert!(answered_by(addr, 30).iter().all(|u| u != "a"));
    assert_eq!(
        bin.metric(r#"sluice_health_check_changes_total{cluster="up",health="unhealthy"}"#),
        1.0
    );
    assert!(bin.metric(r#"sluice_health_checks_total{cluster="up",result="failure"}"#) >= 2.0);

    a.set_health(200);
    wait_healthy(admin, "up", 3);
    bin.wait_log("health check: endpoint healthy");
    assert!(flags(admin, "up", a.addr).is_empty());
    eventually("a request reaches a again", || {
        answered_by(addr, 10).iter().any(|u| u == "a").then_some(())
    });
}

#[test]
fn http_check_expects_configured_statuses_and_host() {
    let a = Upstream::start("a", "127.0.0.1:0".parse().unwrap());
    a.set_health(204);
    let check = "{ interval: 100ms, http: { path: /healthz, host: health.internal, expected_statuses: [{ start: 200, end: 300 }] } }";
    let p = InProcess::start(&config(1, check, &[a.addr]));
    let admin = p.proxy().admin_addr();
    wait_healthy(admin, "up", 1);
    assert!(
        a.hosts
            .lock()
            .unwrap()
            .iter()
            .all(|h| h == "health.internal")
    );
    a.set_health(302);
    eventually("302 is not expected", || {
        (endpoints(admin, "up", "unhealthy") == 1.0).then_some(())
    });
}

#[test]
fn tcp_check_removes_a_killed_upstream_and_restores_it_on_the_same_port() {
    let mut a = Upstream::start("a", "127.0.0.1:0".parse().unwrap());
    let b = Upstream::start("b", "127.0.0.1:0".parse().unwrap());
    let check = "{ interval: 100ms, timeout: 500ms, unhealthy_threshold: 2, healthy_threshold: 2, tcp: {} }";
    let p = InProcess::start(&config(1, check, &[a.addr, b.addr]));
    let (admin, addr) = (p.proxy().admin_addr(), p.addr("main"));
    wait_healthy(admin, "up", 2);
    let seen = answered_by(addr, 10);
    assert!(seen.iter().any(|u| u == "a") && seen.iter().any(|u| u == "b"));

    let port = a.addr;
    a.kill();
    wait_healthy(admin, "up", 1);
    assert_eq!(flags(admin, "up", port), ["failed_active_hc"]);
    assert!(answered_by(addr, 30).iter().all(|u| u == "b"));

    let _a = Upstream::start("a", port);
    wait_healthy(admin, "up", 2);
    eventually("a request reaches the restarted upstream", || {
        answered_by(addr, 10).iter().any(|u| u == "a").then_some(())
    });
    let m = p.metrics();
    assert!(
        metric_value(
            &m,
            r#"sluice_health_checks_total{cluster="up",result="failure"}"#
        ) >= 2.0
    );
    assert_eq!(
        metric_value(
            &m,
            r#"sluice_health_check_changes_total{cluster="up",health="unhealthy"}"#
        ),
        1.0
    );
}

/// The Python gRPC health server (`grpc_health_server.py`).
struct GrpcServer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    addr: SocketAddr,
}

impl GrpcServer {
    fn start() -> Self {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/e2e/grpc_health_server.py"
        );
        let mut child = Command::new("python3")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 (test.sh installs it with grpcio and grpcio-health-checking)");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let port: u16 = line.trim().parse().unwrap_or_else(|_| {
            panic!(
                "grpc_health_server.py did not print its port (got {line:?}); are grpcio and \
                 grpcio-health-checking installed? test.sh installs them"
            )
        });
        GrpcServer {
            child,
            stdin,
            stdout,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    /// Sets a serving status (`SERVING`, `NOT_SERVING`, optionally followed by a service name)
    /// and waits for the acknowledgement.
    fn set(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ok");
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn grpc_check_follows_a_real_grpc_servers_health_status() {
    let mut server = GrpcServer::start();
    let s = server.addr;
    let p = InProcess::start(&format!(
        r#"
listeners:
  - {{ name: main, address: 127.0.0.1:0, http: {{ route_table: main }} }}
route_tables:
  - name: main
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - {{ match: {{ prefix: /a }}, cluster: whole }}
          - {{ match: {{ prefix: / }}, cluster: named }}
clusters:
  - name: whole
    protocol: http2
    endpoints: [{s}]
    health_checks: {{ interval: 100ms, timeout: 3s, unhealthy_threshold: 1, healthy_threshold: 1, grpc: {{}} }}
  - name: named
    endpoints: [{s}]
    health_checks: {{ interval: 100ms, timeout: 3s, unhealthy_threshold: 1, healthy_threshold: 1, grpc: {{ service_name: echo.Echo }} }}
"#
    ));
    let admin = p.proxy().admin_addr();
    wait_healthy(admin, "whole", 1);
    // The server does not know `echo.Echo` yet: NOT_FOUND (grpc-status 5), a failure.
    assert_eq!(endpoints(admin, "named", "unhealthy"), 1.0);
    eventually("a failed check of `named`", || {
        (metric_value(
            &p.metrics(),
            r#"sluice_health_checks_total{cluster="named",result="failure"}"#,
        ) >= 1.0)
            .then_some(())
    });
    assert_eq!(endpoints(admin, "named", "unhealthy"), 1.0);

    server.set("SERVING echo.Echo");
    wait_healthy(admin, "named", 1);
    server.set("NOT_SERVING");
    wait_healthy(admin, "whole", 0);
    assert_eq!(flags(admin, "whole", s), ["failed_active_hc"]);
    assert_eq!(endpoints(admin, "named", "healthy"), 1.0, "per service");
    server.set("SERVING");
    wait_healthy(admin, "whole", 1);
    server.set("NOT_SERVING echo.Echo");
    wait_healthy(admin, "named", 0);
}
