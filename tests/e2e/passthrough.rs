//! TLS passthrough: TCP listeners routing by the ClientHello's server name to real
//! `openssl s_server` backends (each with its own self-signed certificate, made at test time),
//! driven by curl (verifying the backend's certificate for the name it asked for) and
//! `openssl s_client`.

use crate::support::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// An `openssl s_server -www` backend; killed on drop.
struct TlsBackend {
    child: Child,
    addr: SocketAddr,
    cert: PathBuf,
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A self-signed certificate with subject `CN=backend-{name}` for `names`, and an
/// `openssl s_server` serving it on a port the kernel picked (read from its `ACCEPT` line).
fn tls_backend(dir: &Path, name: &str, names: &[&str]) -> TlsBackend {
    require_tool("openssl", "openssl");
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let san = names
        .iter()
        .map(|n| format!("DNS:{n}"))
        .collect::<Vec<_>>()
        .join(",");
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .arg("-subj")
        .arg(format!("/CN=backend-{name}"))
        .arg("-addext")
        .arg(format!("subjectAltName={san}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl req");
    assert!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut child = Command::new("openssl")
        .args(["s_server", "-accept", "127.0.0.1:0", "-www"])
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run openssl s_server");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout);
    // Ready when it prints `ACCEPT 127.0.0.1:PORT`.
    let addr = loop {
        let mut line = String::new();
        let n = lines.read_line(&mut line).expect("read s_server output");
        assert!(n > 0, "openssl s_server exited before accepting");
        if let Some(a) = line.trim().strip_prefix("ACCEPT ") {
            break a.parse().expect("s_server address");
        }
    };
    // Keep draining its output so it never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut lines, &mut std::io::sink()));
    TlsBackend { child, addr, cert }
}

/// `curl https://{name}:PORT/` through `proxy`, trusting only `ca`: succeeds only when the
/// backend that answers holds a certificate for `name` signed by (being) `ca`.
fn curl_tls(proxy: SocketAddr, name: &str, ca: &Path) -> CurlOut {
    let resolve = format!("{name}:{}:127.0.0.1", proxy.port());
    let url = format!("https://{name}:{}/", proxy.port());
    curl(&[
        "--cacert",
        ca.to_str().expect("utf-8 path"),
        "--resolve",
        &resolve,
        &url,
    ])
}

/// The certificate subject `openssl s_client` sees through `proxy` (`-servername` when given,
/// `-noservername` otherwise).
fn s_client_subject(proxy: SocketAddr, server_name: Option<&str>) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &proxy.to_string()]);
    match server_name {
        Some(n) => cmd.args(["-servername", n]),
        None => cmd.arg("-noservername"),
    };
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("run openssl s_client");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("subject=").map(str::to_string))
        .unwrap_or_default()
}

fn metric(p: &InProcess, sample: &str) -> f64 {
    metric_value(&p.metrics(), sample)
}

struct Setup {
    proxy: InProcess,
    a: TlsBackend,
    b: TlsBackend,
    _fallback: TlsBackend,
    _dir: tempfile::TempDir,
}

/// Listener `pass`: `a.example` → a, `b.example` and `*.b.example` → b, anything else →
/// fallback (a third TLS backend). Listener `mixed`: `a.example` → a, else a TCP echo, with
/// a 300ms inspector timeout. Listener `strict`: `a.example` → a and no default.
fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let a = tls_backend(dir.path(), "a", &["a.example"]);
    let b = tls_backend(dir.path(), "b", &["b.example", "*.b.example"]);
    let fallback = tls_backend(dir.path(), "fallback", &["fallback.example"]);
    let echo = tcp_echo();
    let proxy = InProcess::start(&format!(
        r#"
listeners:
  - name: pass
    address: 127.0.0.1:0
    tcp:
      cluster: fallback
      sni:
        - {{ server_names: [a.example], cluster: a }}
        - {{ server_names: [b.example, '*.b.example'], cluster: b }}
  - name: mixed
    address: 127.0.0.1:0
    tcp:
      cluster: echo
      tls_inspector_timeout: 300ms
      sni: [{{ server_names: [a.example], cluster: a }}]
  - name: strict
    address: 127.0.0.1:0
    tcp:
      tls_inspector_timeout: 300ms
      sni: [{{ server_names: [a.example], cluster: a }}]
clusters:
  - {{ name: a, endpoints: [{a}] }}
  - {{ name: b, endpoints: [{b}] }}
  - {{ name: fallback, endpoints: [{f}] }}
  - {{ name: echo, endpoints: [{echo}] }}
"#,
        a = a.addr,
        b = b.addr,
        f = fallback.addr,
    ));
    Setup {
        proxy,
        a,
        b,
        _fallback: fallback,
        _dir: dir,
    }
}

#[test]
fn routes_tls_by_server_name_without_terminating_it() {
    let s = setup();
    let pass = s.proxy.addr("pass");
    // curl verifies each backend's own certificate: the TLS session is the backend's.
    assert_eq!(curl_tls(pass, "a.example", &s.a.cert).status, 200);
    assert_eq!(curl_tls(pass, "b.example", &s.b.cert).status, 200);
    // The wildcard, and names compared without case.
    assert_eq!(curl_tls(pass, "x.b.example", &s.b.cert).status, 200);
    assert!(s_client_subject(pass, Some("A.EXAMPLE")).contains("backend-a"));
    assert!(s_client_subject(pass, Some("b.example")).contains("backend-b"));
    // No SNI, and a name no route lists: the default cluster.
    assert!(s_client_subject(pass, None).contains("backend-fallback"));
    assert!(s_client_subject(pass, Some("z.example")).contains("backend-fallback"));
    let p = &s.proxy;
    assert_eq!(
        metric(
            p,
            r#"sluice_tcp_sni_routed_total{listener="pass",cluster="a"}"#
        ),
        2.0
    );
    assert_eq!(
        metric(
            p,
            r#"sluice_tcp_sni_routed_total{listener="pass",cluster="b"}"#
        ),
        3.0
    );
    let unmatched = |reason: &str| {
        metric(
            p,
            &format!(
                r#"sluice_tcp_sni_unmatched_total{{listener="pass",reason="{reason}",action="default"}}"#
            ),
        )
    };
    assert_eq!(unmatched("no_sni"), 1.0);
    assert_eq!(unmatched("no_match"), 1.0);
    assert_eq!(unmatched("not_tls"), 0.0);
}

#[test]
fn plain_tcp_and_silent_clients_go_to_the_default() {
    let s = setup();
    let mixed = s.proxy.addr("mixed");
    // Not TLS: decided from the first byte, and the bytes reach the echo unchanged.
    let mut c = TcpStream::connect(mixed).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    c.write_all(b"hello, plain tcp\n").unwrap();
    let mut got = [0u8; 17];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello, plain tcp\n");
    drop(c);
    // TLS to a listed name still works on the same listener.
    assert_eq!(curl_tls(mixed, "a.example", &s.a.cert).status, 200);
    // A client that says nothing (a server-speaks-first protocol) is sent to the default once
    // the inspector's timeout passes; then its bytes flow.
    let mut c = TcpStream::connect(mixed).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    let timeouts =
        r#"sluice_tcp_sni_unmatched_total{listener="mixed",reason="timeout",action="default"}"#;
    eventually("the inspector timeout", || {
        (metric(&s.proxy, timeouts) == 1.0).then_some(())
    });
    c.write_all(b"late\n").unwrap();
    let mut got = [0u8; 5];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"late\n");
    // A client that leaves before a byte is closed, not forwarded, default or not.
    drop(TcpStream::connect(mixed).unwrap());
    let left = r#"sluice_tcp_sni_unmatched_total{listener="mixed",reason="client_closed",action="closed"}"#;
    eventually("the early close", || {
        (metric(&s.proxy, left) == 1.0).then_some(())
    });
    assert_eq!(
        metric(
            &s.proxy,
            r#"sluice_tcp_sni_unmatched_total{listener="mixed",reason="not_tls",action="default"}"#
        ),
        1.0
    );
}

#[test]
fn without_a_default_unmatched_connections_are_closed_and_counted() {
    let s = setup();
    let strict = s.proxy.addr("strict");
    assert!(s_client_subject(strict, Some("a.example")).contains("backend-a"));
    // Unknown name and no SNI: closed before any certificate.
    assert_eq!(s_client_subject(strict, Some("z.example")), "");
    assert_eq!(s_client_subject(strict, None), "");
    // Plain bytes: closed.
    let (out, closed) = raw_exchange(strict, b"GET / HTTP/1.1\r\n\r\n", DEADLINE);
    assert!(closed && out.is_empty(), "{out:?}");
    // Silence: closed when the inspector's timeout passes.
    let mut c = TcpStream::connect(strict).unwrap();
    let (out, closed) = read_until_close(&mut c, DEADLINE);
    assert!(closed && out.is_empty(), "{out:?}");
    let unmatched = |reason: &str| {
        metric(
            &s.proxy,
            &format!(
                r#"sluice_tcp_sni_unmatched_total{{listener="strict",reason="{reason}",action="closed"}}"#
            ),
        )
    };
    assert_eq!(unmatched("no_match"), 1.0);
    assert_eq!(unmatched("no_sni"), 1.0);
    assert_eq!(unmatched("not_tls"), 1.0);
    assert_eq!(unmatched("timeout"), 1.0);
    assert_eq!(
        metric(
            &s.proxy,
            r#"sluice_tcp_sni_routed_total{listener="strict",cluster="a"}"#
        ),
        1.0
    );
}
