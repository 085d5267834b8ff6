//! The control plane and proxies as real processes: `sluice control-plane` serving a watched
//! directory and its registry over ADS, `sluice proxy --xds` fed by it. Routes, weights and
//! endpoints change without restarts or failed requests; a registration whose heartbeats stop
//! is removed within its TTL; `/status` shows what each proxy ACKed.

use crate::support::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `sluice control-plane` with a settings file and a mesh directory in a temporary directory.
pub struct ControlPlane {
    child: Child,
    pub dir: tempfile::TempDir,
    pub xds: SocketAddr,
    pub http: SocketAddr,
    log: LogLines,
}

impl ControlPlane {
    /// Starts it over `files` (path relative to the mesh directory, YAML), `extra` appended to
    /// the settings.
    pub fn start(files: &[(&str, &str)], extra: &str) -> Self {
        Self::start_with(files, "", extra)
    }

    /// [`ControlPlane::start`] with `xds_extra` inside the `xds` settings (`, tls: {…}`).
    pub fn start_with(files: &[(&str, &str)], xds_extra: &str, extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mesh = dir.path().join("mesh");
        for (name, yaml) in files {
            write_atomically(&mesh.join(name), yaml);
        }
        let settings = dir.path().join("control-plane.yaml");
        std::fs::write(
            &settings,
            format!(
                "xds: {{ address: 127.0.0.1:0{xds_extra} }}\nhttp: {{ address: 127.0.0.1:0 }}\n\
                 directory: {{ path: mesh }}\ndebounce: 20ms\n{extra}"
            ),
        )
        .unwrap();
        let (child, log) = spawn_control_plane(&settings);
        let mut cp = ControlPlane {
            child,
            dir,
            xds: "0.0.0.0:0".parse().unwrap(),
            http: "0.0.0.0:0".parse().unwrap(),
            log,
        };
        cp.xds = address_in(&cp.wait_log("xds listening"));
        cp.http = address_in(&cp.wait_log("http listening"));
        cp.wait_ready();
        cp
    }

    fn wait_ready(&self) {
        eventually("control plane ready", || {
            (http_get(self.http, "/ready").0 == 200).then_some(())
        });
    }

    /// Kills the process (SIGKILL: no goodbye to the proxies).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a new process on the same addresses and directory.
    pub fn restart(&mut self) {
        let settings = self.dir.path().join("control-plane.yaml");
        std::fs::write(
            &settings,
            format!(
                "xds: {{ address: {} }}\nhttp: {{ address: {} }}\ndirectory: {{ path: mesh }}\ndebounce: 20ms\n",
                self.xds, self.http
            ),
        )
        .unwrap();
        let (child, log) = spawn_control_plane(&settings);
        self.child = child;
        self.log = log;
        self.wait_log("xds listening");
        self.wait_ready();
    }

    pub fn mesh(&self) -> PathBuf {
        self.dir.path().join("mesh")
    }

    /// Replaces a file of the mesh directory (write and rename, as editors do).
    pub fn write(&self, name: &str, yaml: &str) {
        write_atomically(&self.mesh().join(name), yaml);
    }

    pub fn wait_log(&mut self, needle: &str) -> String {
        self.log.wait(needle)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.xds)
    }

    pub fn status(&self) -> serde_json::Value {
        let (code, body) = http_get(self.http, "/status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_control_plane(settings: &Path) -> (Child, LogLines) {
    let mut child = Command::new(sluice_bin())
        .args(["--log", "info", "control-plane", "-c"])
        .arg(settings)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice control-plane");
    let log = LogLines::spawn(child.stderr.take().unwrap(), "control-plane");
    (child, log)
}

fn address_in(line: &str) -> SocketAddr {
    let addr = line
        .split("address=")
        .nth(1)
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    addr.split_whitespace().next().unwrap().parse().unwrap()
}

fn write_atomically(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The mesh config: one HTTP listener routing `/` to `weighted` (v1 and v2 by the given
/// weights) and `/reg` to the registry-fed cluster `reg`.
fn mesh(v1: SocketAddr, v2: SocketAddr, w1: u32, w2: u32) -> String {
    format!(
        "listeners:
  - {{ name: web, address: 127.0.0.1:0, http: {{ route_table: main }} }}
route_tables:
  - name: main
    virtual_hosts:
      - name: all
        domains: [\"*\"]
        routes:
          - match: {{ prefix: /reg }}
            cluster: reg
          - match: {{ prefix: / }}
            weighted_clusters:
              - {{ cluster: v1, weight: {w1} }}
              - {{ cluster: v2, weight: {w2} }}
clusters:
  - {{ name: v1, endpoints: [{v1}] }}
  - {{ name: v2, endpoints: [{v2}] }}
  - {{ name: reg, endpoints: [] }}
"
    )
}

fn start_proxy(cp: &ControlPlane, node: &str) -> Binary {
    Binary::start("", &["--xds", &cp.url(), "--node-id", node])
}

/// Sends `n` requests on one connection and counts the answers by upstream; every one must
/// be a 200.
fn spread(addr: SocketAddr, path: &str, n: usize) -> (usize, usize) {
    let mut c = KeepAlive::new(addr);
    let (mut a, mut b) = (0, 0);
    for _ in 0..n {
        let r = c.get(path).expect("request");
        assert_eq!(r.status, 200, "{r:?}");
        match r.header("x-upstream") {
            Some("v1") => a += 1,
            Some("v2") => b += 1,
            other => panic!("unexpected upstream {other:?}"),
        }
    }
    (a, b)
}

#[test]
fn a_weight_change_in_the_directory_shifts_traffic_without_a_failed_request() {
    let (v1, v2) = (echo("v1"), echo("v2"));
    let cp = ControlPlane::start(&[("mesh.yaml", &mesh(v1, v2, 100, 0))], "");
    let proxy = start_proxy(&cp, "a");
    let web = proxy.addr("web");
    assert_eq!(spread(web, "/", 20), (20, 0));

    // Traffic keeps flowing (every answer a 200) while the weights move to v2.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                spread(web, "/", 1);
                n += 1;
            }
            n
        })
    };
    cp.write("mesh.yaml", &mesh(v1, v2, 0, 100));
    eventually("traffic on v2", || {
        (spread(web, "/", 5) == (0, 5)).then_some(())
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(load.join().unwrap() > 0);

    // What the proxy ACKed is on record.
    let status = cp.status();
    let proxies = status["proxies"].as_array().expect("proxies");
    let a = proxies
        .iter()
        .find(|p| p["node_id"] == "a")
        .unwrap_or_else(|| panic!("node a in {status}"));
    assert!(a.to_string().contains("acked"), "{a}");
}

#[test]
fn an_invalid_directory_edit_is_refused_and_the_last_good_config_keeps_serving() {
    let (v1, v2) = (echo("v1"), echo("v2"));
    let mut cp = ControlPlane::start(&[("mesh.yaml", &mesh(v1, v2, 100, 0))], "");
    let proxy = start_proxy(&cp, "a");
    let web = proxy.addr("web");
    cp.write(
        "mesh.yaml",
        &mesh(v1, v2, 0, 100).replace("route_table: main", "route_table: nope"),
    );
    let line = cp.wait_log("directory change rejected");
    assert!(
        line.contains("mesh.yaml:2:") && line.contains("nope"),
        "{line}"
    );
    assert_eq!(spread(web, "/", 10), (10, 0));
}

#[test]
fn node_and_cluster_directories_give_proxies_their_own_config() {
    let (v1, v2) = (echo("v1"), echo("v2"));
    let cp = ControlPlane::start(
        &[
            ("mesh.yaml", &mesh(v1, v2, 100, 0)),
            ("nodes/b/mesh.yaml", &mesh(v1, v2, 0, 100)),
        ],
        "",
    );
    let a = start_proxy(&cp, "a");
    let b = start_proxy(&cp, "b");
    assert_eq!(spread(a.addr("web"), "/", 10), (10, 0));
    assert_eq!(spread(b.addr("web"), "/", 10), (0, 10));
}

#[test]
fn a_registered_endpoint_serves_until_its_heartbeats_stop() {
    let (v1, v2, r) = (echo("v1"), echo("v2"), echo("v1"));
    let cp = ControlPlane::start(&[("mesh.yaml", &mesh(v1, v2, 100, 0))], "");
    let proxy = start_proxy(&cp, "a");
    let web = proxy.addr("web");
    // No endpoints yet: 503.
    assert_eq!(http_get(web, "/reg").0, 503);
    let register = || {
        curl(&[
            "-sS",
            "-X",
            "PUT",
            "--data",
            &format!("{{\"address\":\"{r}\",\"ttl\":\"1s\"}}"),
            &format!("http://{}/v1/registry/reg", cp.http),
        ])
    };
    assert!(register().text().contains("registered"));
    eventually("registered endpoint serves", || {
        (http_get(web, "/reg").0 == 200).then_some(())
    });
    // Heartbeats keep it: three renewals, each before the TTL lapses.
    for _ in 0..3 {
        assert!(register().text().contains("renewed"));
        assert_eq!(http_get(web, "/reg").0, 200);
    }
    let stopped = Instant::now();
    eventually("lapsed endpoint removed", || {
        (http_get(web, "/reg").0 == 503).then_some(())
    });
    // Within its TTL (1 s) plus the debounce and a push, with slack for a loaded machine.
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "{:?}",
        stopped.elapsed()
    );
}

#[test]
fn a_delta_xds_proxy_follows_the_directory_too() {
    let (v1, v2) = (echo("v1"), echo("v2"));
    let cp = ControlPlane::start(&[("mesh.yaml", &mesh(v1, v2, 100, 0))], "");
    let proxy = Binary::start("", &["--xds", &cp.url(), "--node-id", "d", "--xds-delta"]);
    let web = proxy.addr("web");
    assert_eq!(spread(web, "/", 10), (10, 0));
    cp.write("mesh.yaml", &mesh(v1, v2, 0, 100));
    eventually("traffic on v2", || {
        (spread(web, "/", 5) == (0, 5)).then_some(())
    });
    let status = cp.status();
    let d = status["proxies"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["node_id"] == "d"))
        .unwrap_or_else(|| panic!("node d in {status}"));
    assert_eq!(d["protocol"], "delta", "{d}");
}

/// A control-plane outage: the proxy keeps serving its last config while the control plane is
/// gone (killed, no goodbye), an edit made during the outage reaches it once a new control
/// plane is up on the same address, and the reconnect is counted.
#[test]
fn proxies_serve_through_a_control_plane_outage_and_catch_up_after_it() {
    let (v1, v2) = (echo("v1"), echo("v2"));
    let mut cp = ControlPlane::start(&[("mesh.yaml", &mesh(v1, v2, 100, 0))], "");
    let proxy = start_proxy(&cp, "a");
    let web = proxy.addr("web");
    assert_eq!(spread(web, "/", 5), (5, 0));
    cp.kill();
    eventually("the proxy sees the stream gone", || {
        (proxy.metric("sluice_xds_connected") == 0.0).then_some(())
    });
    assert_eq!(spread(web, "/", 20), (20, 0));
    cp.write("mesh.yaml", &mesh(v1, v2, 0, 100));
    assert_eq!(spread(web, "/", 5), (5, 0));
    cp.restart();
    eventually("traffic on v2 after the outage", || {
        (spread(web, "/", 5) == (0, 5)).then_some(())
    });
    assert!(proxy.metric("sluice_xds_reconnects_total") >= 1.0);
    assert_eq!(proxy.metric("sluice_xds_connected"), 1.0);
}

const FRONTEND_ID: &str = "spiffe://sluice.local/ns/demo/sa/frontend";
const BACKEND_ID: &str = "spiffe://sluice.local/ns/demo/sa/backend";

/// The CA settings: 3 s certificates (replaced after 2.1 s), one token per sidecar.
const CA_SETTINGS: &str = "ca:
  trust_domain: sluice.local
  root_cert: root.pem
  root_key: root.key
  workload_cert_ttl: 3s
  identities:
    - { namespace: demo, service_account: frontend, nodes: [frontend], token_file: frontend.token }
    - { namespace: demo, service_account: backend, nodes: [backend], token_file: backend.token }
";

/// The backend sidecar: mTLS inbound with its CA certificate, only the frontend's identity
/// allowed, the client's identity forwarded to the app.
fn backend_sidecar(app: SocketAddr) -> String {
    format!(
        "listeners:
  - name: inbound
    address: 127.0.0.1:0
    http:
      route_table: inbound
      authorization: {{ allow: [\"{FRONTEND_ID}\"] }}
    tls:
      certificates: [{{ secret: default }}]
      client_certificate: required
      client_ca_secret: ROOTCA
      forward_client_cert: sanitize_set
route_tables:
  - name: inbound
    virtual_hosts:
      - {{ name: app, domains: [\"*\"], routes: [{{ match: {{ prefix: / }}, cluster: app }}] }}
clusters:
  - {{ name: app, endpoints: [{app}] }}
"
    )
}

/// The frontend sidecar: plaintext outbound to the backend over mTLS (the backend's identity
/// checked; upstream connections renewed every 200 ms so handshakes keep happening), and a TLS
/// listener showing its own certificate.
fn frontend_sidecar(backend: SocketAddr) -> String {
    format!(
        "listeners:
  - {{ name: outbound, address: 127.0.0.1:0, http: {{ route_table: outbound }} }}
  - name: shown
    address: 127.0.0.1:0
    http: {{ route_table: outbound }}
    tls: {{ certificates: [{{ secret: default }}] }}
route_tables:
  - name: outbound
    virtual_hosts:
      - {{ name: backend, domains: [\"*\"], routes: [{{ match: {{ prefix: / }}, cluster: backend }}] }}
clusters:
  - name: backend
    endpoints: [{backend}]
    pool: {{ max_connection_age: 200ms }}
    tls:
      cert_secret: default
      ca_secret: ROOTCA
      verify_subject_alt_names: [\"{BACKEND_ID}\"]
"
    )
}

/// A sidecar fed over ADS with TLS (the control plane's certificate checked against
/// `root.pem`), presenting its token.
fn sidecar(cp: &ControlPlane, node: &str) -> Binary {
    let token = cp.dir.path().join(format!("{node}.token"));
    let root = cp.dir.path().join("root.pem");
    Binary::start(
        "",
        &[
            "--xds",
            &format!("https://{}", cp.xds),
            "--xds-ca",
            root.to_str().unwrap(),
            "--node-id",
            node,
            "--xds-token-file",
            token.to_str().unwrap(),
        ],
    )
}

/// The certificate a TLS listener serves (PEM) and its subject alternative names.
fn served_certificate(addr: SocketAddr, bundle: &Path) -> (String, String) {
    let (ok, out) = crate::tls::s_client(addr, &["-CAfile", bundle.to_str().unwrap()]);
    assert!(ok, "handshake with the CA bundle failed: {out}");
    let begin = out
        .find("-----BEGIN CERTIFICATE-----")
        .expect("certificate");
    let end = out
        .find("-----END CERTIFICATE-----")
        .expect("certificate end");
    let pem = format!("{}-----END CERTIFICATE-----\n", &out[begin..end]);
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    x509.stdin
        .take()
        .unwrap()
        .write_all(pem.as_bytes())
        .unwrap();
    let sans = String::from_utf8(x509.wait_with_output().unwrap().stdout).unwrap();
    (pem, sans)
}

#[test]
fn certificates_from_the_control_plane_secure_the_mesh_and_rotate_without_failed_requests() {
    let app = echo("app");
    // The root the CA issues under, and ADS over TLS with a certificate it issues for the
    // address the sidecars dial.
    let root = crate::tls::Ca::new("Sluice test root");
    let cp = ControlPlane::start_with(
        &[
            ("nodes/backend/sidecar.yaml", &backend_sidecar(app)),
            ("../frontend.token", "frontend-demo-token-0123456789\n"),
            ("../backend.token", "backend-demo-token-0123456789\n"),
            ("../root.pem", &root.pem),
            ("../root.key", &root.key_pem()),
        ],
        ", tls: { server_names: [127.0.0.1] }",
        CA_SETTINGS,
    );
    let backend = sidecar(&cp, "backend");
    cp.write(
        "nodes/frontend/sidecar.yaml",
        &frontend_sidecar(backend.addr("inbound")),
    );
    let frontend = sidecar(&cp, "frontend");
    // The proxy may have connected before the control plane saw the new file.
    eventually("the frontend's listeners", || {
        http_get(frontend.admin, "/listeners")
            .1
            .contains("\"outbound\"")
            .then_some(())
    });
    let outbound = frontend.addr("outbound");
    eventually("the frontend's routes", || {
        (KeepAlive::new(outbound).get("/").ok()?.status == 200).then_some(())
    });

    // The app sees the frontend's identity, verified by the backend's sidecar.
    let mut c = KeepAlive::new(outbound);
    let r = c.get("/").expect("request");
    assert_eq!(r.status, 200, "{r:?}");
    let seen: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let xfcc = seen["headers"]["x-forwarded-client-cert"].to_string();
    assert!(
        xfcc.contains(&format!("URI={FRONTEND_ID}")) && xfcc.contains(&format!("By={BACKEND_ID}")),
        "{seen}"
    );
    // The control plane knows who holds which identity.
    let status = cp.status().to_string();
    assert!(
        status.contains(FRONTEND_ID) && status.contains(BACKEND_ID),
        "{status}"
    );

    // Anyone can check a sidecar's certificate against the published trust bundle.
    let (code, bundle) = http_get(cp.http, "/v1/ca/bundle");
    assert_eq!(code, 200);
    let bundle_file = cp.dir.path().join("bundle.pem");
    std::fs::write(&bundle_file, bundle).unwrap();
    let shown = frontend.addr("shown");
    let (first, sans) = served_certificate(shown, &bundle_file);
    assert!(sans.contains(&format!("URI:{FRONTEND_ID}")), "{sans}");

    // Requests never fail while the certificates are replaced twice: the first ones have
    // expired by then, so every handshake since was made with a rotated certificate.
    let rotations = |cp: &ControlPlane| {
        metric_value(
            &http_get(cp.http, "/metrics").1,
            "sluice_ca_certificates_issued_total{reason=\"rotation\"}",
        )
    };
    let start = Instant::now();
    let mut requests = 0;
    while rotations(&cp) < 4.0 {
        assert!(start.elapsed() < Duration::from_secs(20), "no rotation");
        let r = c.get("/").expect("request");
        assert_eq!(
            r.status, 200,
            "request {requests} failed during rotation: {r:?}"
        );
        requests += 1;
    }
    assert!(
        start.elapsed() > Duration::from_secs(3),
        "the first certificates outlived the loop"
    );
    eventually("frontend's rotated certificate served", || {
        let (now, sans) = served_certificate(shown, &bundle_file);
        (now != first && sans.contains(FRONTEND_ID)).then_some(())
    });
    for _ in 0..20 {
        assert_eq!(c.get("/").expect("request").status, 200);
    }
    for p in [&frontend, &backend] {
        assert!(p.metric("sluice_tls_reloads_total{result=\"success\"}") >= 2.0);
    }
    assert!(requests > 0);

    // A proxy that does not trust the control plane's certificate gets nothing from it.
    let other = crate::tls::Ca::new("another root");
    let other_pem = cp.dir.path().join("other.pem");
    std::fs::write(&other_pem, &other.pem).unwrap();
    let mut stranger = Binary::start(
        "",
        &[
            "--xds",
            &format!("https://{}", cp.xds),
            "--xds-ca",
            other_pem.to_str().unwrap(),
            "--node-id",
            "frontend",
            "--xds-initial-fetch-timeout",
            "100ms",
        ],
    );
    let line = stranger.wait_log("UnknownIssuer");
    assert!(line.contains("certificate"), "{line}");
}
