//! TLS termination and origination, client certificates and SPIFFE identities, authorization,
//! 421, rotation and expiry. Certificates are made per test with rcgen (a CA, servers,
//! clients with SPIFFE IDs, expired and foreign ones); the clients are real: openssl s_client,
//! curl with client certificates, and a rustls client where a test must hold a connection or
//! resume a session.

use crate::support::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// A test CA.
pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pub pem: String,
}

/// A certificate and key, as PEM.
pub struct Leaf {
    pub cert: String,
    pub key: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let pem = params.self_signed(&key).unwrap().pem();
        Ca { params, key, pem }
    }

    /// The CA's private key (PEM).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A leaf with these DNS names (the first is also the CN) and an optional URI SAN.
    pub fn leaf(&self, dns: &[&str], uri: Option<&str>) -> Leaf {
        self.leaf_with(dns, uri, |_| {})
    }

    pub fn leaf_with(
        &self,
        dns: &[&str],
        uri: Option<&str>,
        edit: impl FnOnce(&mut CertificateParams),
    ) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(dns.iter().map(|d| d.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(
            DnType::CommonName,
            dns.first().copied().or(uri).unwrap_or("leaf"),
        );
        if let Some(u) = uri {
            params
                .subject_alt_names
                .push(SanType::URI(u.try_into().unwrap()));
        }
        edit(&mut params);
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

impl Leaf {
    /// Writes `NAME.crt` and `NAME.key` into `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        (
            temp_file(dir, &format!("{name}.crt"), &self.cert),
            temp_file(dir, &format!("{name}.key"), &self.key),
        )
    }
}

/// The first value of a header the echo app received.
fn seen_header(seen: &serde_json::Value, name: &str) -> String {
    seen["headers"][name][0].as_str().unwrap_or("").to_string()
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// `openssl s_client` against `addr` with `args`; returns (succeeded, stdout + stderr).
pub(crate) fn s_client(addr: SocketAddr, args: &[&str]) -> (bool, String) {
    require_tool("openssl", "openssl");
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string()])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl");
    // Closing stdin ends the session after the handshake.
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.success() && text.contains("Verify return code: 0"),
        text,
    )
}

/// The server certificate's subject CN as s_client prints it.
fn subject_cn(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("subject="))
        .map(|s| s.replace(' ', ""))
        .and_then(|s| s.strip_prefix("CN=").map(str::to_string))
        .unwrap_or_default()
}

/// curl with `args`, returning its exit code and stdout (no assertion on success).
fn curl_raw(args: &[&str]) -> (i32, String) {
    require_tool("curl", "curl");
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10"])
        .args(args)
        .output()
        .expect("run curl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn resolve(name: &str, addr: SocketAddr) -> String {
    format!("{name}:{}:{}", addr.port(), addr.ip())
}

fn url(name: &str, addr: SocketAddr, path: &str) -> String {
    format!("https://{name}:{}{path}", addr.port())
}

#[test]
fn certificates_by_sni_protocol_by_alpn_and_versions() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test ca");
    let ca_path = temp_file(dir.path(), "ca.pem", &ca.pem);
    let (d_c, d_k) = ca.leaf(&["default.example"], None).write(dir.path(), "d");
    let (a_c, a_k) = ca.leaf(&["a.example"], None).write(dir.path(), "a");
    let (w_c, w_k) = ca.leaf(&["*.w.example"], None).write(dir.path(), "w");
    let echo = echo("e");
    let proxy = InProcess::start(&format!(
        r#"
listeners:
  - name: tls
    address: 127.0.0.1:0
    http: {{ route_table: rt }}
    tls:
      certificates:
        - {{ cert: {d_c}, key: {d_k} }}
        - {{ cert: {a_c}, key: {a_k} }}
        - {{ cert: {w_c}, key: {w_k} }}
  - name: tls13
    address: 127.0.0.1:0
    http: {{ route_table: rt }}
    tls:
      min_version: "1.3"
      alpn: [http/1.1]
      certificates: [{{ cert: {d_c}, key: {d_k} }}]
route_tables:
  - name: rt
    virtual_hosts:
      - {{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: / }}, cluster: echo }}] }}
clusters:
  - {{ name: echo, endpoints: [{{ address: "{echo}" }}] }}
"#,
        d_c = p(&d_c),
        d_k = p(&d_k),
        a_c = p(&a_c),
        a_k = p(&a_k),
        w_c = p(&w_c),
        w_k = p(&w_k),
    ));
    let addr = proxy.addr("tls");
    let ca_arg = p(&ca_path);
    for (sni, want) in [
        (Some("a.example"), "a.example"),
        (Some("A.EXAMPLE"), "a.example"),
        (Some("x.w.example"), "*.w.example"),
        (Some("x.y.w.example"), "default.example"),
        (Some("other.example"), "default.example"),
        (None, "default.example"),
    ] {
        let mut args = vec!["-CAfile", &ca_arg];
        if let Some(s) = sni {
            args.extend(["-servername", s]);
        } else {
            args.push("-noservername");
        }
        let (ok, out) = s_client(addr, &args);
        assert!(ok, "{sni:?}: {out}");
        assert_eq!(subject_cn(&out), want, "{sni:?}");
    }
    // Protocol versions: 1.2 and 1.3 accepted, 1.1 refused with an alert.
    let (ok, out) = s_client(addr, &["-CAfile", &ca_arg, "-tls1_2"]);
    assert!(ok && out.contains("TLSv1.2"), "{out}");
    let (ok, out) = s_client(addr, &["-CAfile", &ca_arg, "-tls1_3"]);
    assert!(ok && out.contains("TLSv1.3"), "{out}");
    let (ok, out) = s_client(
        addr,
        &[
            "-CAfile",
            &ca_arg,
            "-tls1_1",
            "-cipher",
            "DEFAULT@SECLEVEL=0",
        ],
    );
    assert!(!ok, "TLS 1.1 must be refused: {out}");
    let (ok, out) = s_client(proxy.addr("tls13"), &["-CAfile", &ca_arg, "-tls1_2"]);
    assert!(!ok, "a 1.3-only listener refuses 1.2: {out}");
    // ALPN decides the protocol.
    let (ok, out) = s_client(addr, &["-CAfile", &ca_arg, "-alpn", "h2,http/1.1"]);
    assert!(ok && out.contains("ALPN protocol: h2"), "{out}");
    let h = [
        "--cacert",
        &ca_arg,
        "--resolve",
        &resolve("a.example", addr),
    ];
    let u = url("a.example", addr, "/x");
    let h2 = curl(&[&h[..], &["--http2", &u]].concat());
    assert_eq!((h2.status, h2.version.as_str()), (200, "HTTP/2"));
    let h1 = curl(&[&h[..], &["--http1.1", &u]].concat());
    assert_eq!((h1.status, h1.version.as_str()), (200, "HTTP/1.1"));
    // The upstream is told the client came over https.
    let seen = h1.json();
    assert_eq!(seen_header(&seen, "x-forwarded-proto"), "https", "{seen}");
    // A listener offering only http/1.1 serves HTTP/1.1 to an h2-preferring client.
    let a13 = proxy.addr("tls13");
    let only_h1 = curl(&[
        "--cacert",
        &ca_arg,
        "--resolve",
        &resolve("default.example", a13),
        "--http2",
        &url("default.example", a13, "/"),
    ]);
    assert_eq!(only_h1.version, "HTTP/1.1");
    let m = proxy.metrics();
    assert!(
        metric_value(
            &m,
            r#"sluice_downstream_tls_handshakes_total{listener="tls",result="ok"}"#
        ) >= 9.0
    );
    assert!(
        metric_value(
            &m,
            r#"sluice_downstream_tls_handshakes_total{listener="tls",result="failed"}"#
        ) >= 1.0
    );
}

/// A listener requiring client certificates, forwarding the client's identity.
fn mtls_proxy(dir: &Path, ca: &Ca, policy: &str, xfcc: &str, extra_routes: &str) -> InProcess {
    let ca_path = temp_file(dir, "ca.pem", &ca.pem);
    let (c, k) = ca
        .leaf(
            &["api.example"],
            Some("spiffe://test.local/ns/edge/sa/proxy"),
        )
        .write(dir, "server");
    let echo = echo("e");
    InProcess::start(&format!(
        r#"
listeners:
  - name: mtls
    address: 127.0.0.1:0
    http: {{ route_table: rt {policy} }}
    tls:
      certificates: [{{ cert: {c}, key: {k} }}]
      client_certificate: required
      client_ca: {ca}
      forward_client_cert: {xfcc}
route_tables:
  - name: rt
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
{extra_routes}
          - {{ match: {{ prefix: / }}, cluster: echo }}
clusters:
  - {{ name: echo, endpoints: [{{ address: "{echo}" }}] }}
"#,
        c = p(&c),
        k = p(&k),
        ca = p(&ca_path),
    ))
}

#[test]
fn client_certificates_are_required_verified_and_forwarded() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("mesh ca");
    // The access log records the verified identity (JSON's `downstream_peer_identity`).
    let log = dir.path().join("access.log");
    let policy = format!(
        ", access_log: {{ path: '{}', format: {{ template: '%DOWNSTREAM_PEER_URI_SAN% %REQ(:SCHEME)%' }} }}",
        log.display()
    );
    let proxy = mtls_proxy(dir.path(), &ca, &policy, "sanitize_set", "");
    let addr = proxy.addr("mtls");
    let ca_arg = p(&dir.path().join("ca.pem"));
    let web = "spiffe://test.local/ns/web/sa/frontend";
    let (cc, ck) = ca.leaf(&[], Some(web)).write(dir.path(), "client");
    let base = |cert: Option<(&Path, &Path)>| {
        let mut a = vec![
            "--cacert".to_string(),
            ca_arg.clone(),
            "--resolve".into(),
            resolve("api.example", addr),
        ];
        if let Some((c, k)) = cert {
            a.extend(["--cert".into(), p(c), "--key".into(), p(k)]);
        }
        a
    };
    // No certificate: the handshake fails (TLS 1.3 reports it on the first read).
    let mut args = base(None);
    args.push(url("api.example", addr, "/"));
    let (code, out) = curl_raw(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_ne!(code, 0, "no client certificate must fail: {out}");
    // A verified certificate: the upstream gets the identity, whatever the client claimed.
    let mut args = base(Some((&cc, &ck)));
    args.extend([
        "-H".into(),
        "x-forwarded-client-cert: URI=spiffe://test.local/ns/admin/sa/root".into(),
        url("api.example", addr, "/"),
    ]);
    let r = curl(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(r.status, 200);
    let xfcc = seen_header(&r.json(), "x-forwarded-client-cert");
    assert!(
        xfcc.starts_with("By=spiffe://test.local/ns/edge/sa/proxy;Hash=")
            && xfcc.ends_with(&format!(";URI={web}")),
        "{xfcc}"
    );
    let hash = xfcc
        .split("Hash=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap();
    let der = rustls_pki_types_der(&std::fs::read_to_string(&cc).unwrap());
    assert_eq!(hash, sha256_hex(&der));
    let logged = eventually("an access log line", || {
        let text = std::fs::read_to_string(&log).ok()?;
        text.lines().next().map(str::to_string)
    });
    assert_eq!(logged, format!("{web} https"));
    // Certificates the listener must refuse: another CA, expired, not yet valid.
    let other = Ca::new("other ca");
    let (oc, ok) = other.leaf(&[], Some(web)).write(dir.path(), "foreign");
    let (ec, ek) = ca
        .leaf_with(&[], Some(web), |p| {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        })
        .write(dir.path(), "expired");
    let (fc, fk) = ca
        .leaf_with(&[], Some(web), |p| {
            p.not_before = rcgen::date_time_ymd(2090, 1, 1);
            p.not_after = rcgen::date_time_ymd(2091, 1, 1);
        })
        .write(dir.path(), "future");
    for (c, k, what) in [
        (oc, ok, "foreign CA"),
        (ec, ek, "expired"),
        (fc, fk, "not yet valid"),
    ] {
        let mut args = base(Some((&c, &k)));
        args.push(url("api.example", addr, "/"));
        let (code, out) = curl_raw(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_ne!(code, 0, "{what} client certificate must fail: {out}");
    }
    // openssl sees the certificate request and the alert.
    let (ok, out) = s_client(addr, &["-CAfile", &ca_arg, "-servername", "api.example"]);
    assert!(
        !ok || out.contains("alert certificate required")
            || out.contains("Acceptable client certificate CA names"),
        "{out}"
    );
    assert!(
        out.contains("Acceptable client certificate CA names"),
        "{out}"
    );
    let m = proxy.metrics();
    assert!(
        metric_value(
            &m,
            r#"sluice_downstream_tls_handshakes_total{listener="mtls",result="failed"}"#
        ) >= 3.0
    );
}

/// The DER of the first certificate in a PEM text.
fn rustls_pki_types_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[test]
fn authorization_by_spiffe_id_on_listener_and_route() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("mesh ca");
    let proxy = mtls_proxy(
        dir.path(),
        &ca,
        r#", authorization: { allow: ["spiffe://test.local/ns/web/*"], deny: ["spiffe://test.local/ns/web/sa/banned"] }"#,
        "sanitize",
        r#"          - { match: { prefix: /admin }, cluster: echo, authorization: { allow: [spiffe://test.local/ns/web/sa/admin] } }"#,
    );
    let addr = proxy.addr("mtls");
    let ca_arg = p(&dir.path().join("ca.pem"));
    let get = |id: &str, path: &str, grpc: bool| {
        let name = id.rsplit('/').next().unwrap();
        let (c, k) = ca.leaf(&[], Some(id)).write(dir.path(), name);
        let (c, k) = (p(&c), p(&k));
        let rs = resolve("api.example", addr);
        let u = url("api.example", addr, path);
        let mut args = vec![
            "--cacert",
            &ca_arg,
            "--cert",
            &c,
            "--key",
            &k,
            "--resolve",
            &rs,
        ];
        if grpc {
            args.extend(["--http2", "-H", "content-type: application/grpc", "-d", ""]);
        }
        args.push(&u);
        curl(&args)
    };
    assert_eq!(
        get("spiffe://test.local/ns/web/sa/frontend", "/", false).status,
        200
    );
    let r = get("spiffe://test.local/ns/web/sa/banned", "/", false);
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        get("spiffe://test.local/ns/db/sa/x", "/", false).status,
        403
    );
    // The route's own list, after the listener's.
    assert_eq!(
        get("spiffe://test.local/ns/web/sa/frontend", "/admin", false).status,
        403
    );
    assert_eq!(
        get("spiffe://test.local/ns/web/sa/admin", "/admin", false).status,
        200
    );
    // gRPC gets PERMISSION_DENIED in a trailers-only answer.
    let g = get("spiffe://test.local/ns/db/sa/x", "/pkg.Svc/Call", true);
    assert_eq!((g.status, g.header("grpc-status")), (200, Some("7")));
    let m = proxy.metrics();
    assert_eq!(
        metric_value(
            &m,
            r#"sluice_authz_denied_total{listener="mtls",scope="listener"}"#
        ),
        3.0
    );
    assert_eq!(
        metric_value(
            &m,
            r#"sluice_authz_denied_total{listener="mtls",scope="route"}"#
        ),
        1.0
    );
}

#[test]
fn sni_and_host_picking_different_virtual_hosts_get_421() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ca");
    let ca_path = temp_file(dir.path(), "ca.pem", &ca.pem);
    let (c, k) = ca
        .leaf(&["a.example", "b.example"], None)
        .write(dir.path(), "ab");
    let echo = echo("e");
    let proxy = InProcess::start(&format!(
        r#"
listeners:
  - name: tls
    address: 127.0.0.1:0
    http: {{ route_table: rt }}
    tls: {{ certificates: [{{ cert: {c}, key: {k} }}] }}
route_tables:
  - name: rt
    virtual_hosts:
      - {{ name: a, domains: [a.example], routes: [{{ match: {{ prefix: / }}, cluster: echo }}] }}
      - {{ name: b, domains: [b.example], routes: [{{ match: {{ prefix: / }}, cluster: echo }}] }}
clusters:
  - {{ name: echo, endpoints: [{{ address: "{echo}" }}] }}
"#,
        c = p(&c),
        k = p(&k)
    ));
    let addr = proxy.addr("tls");
    let ca_arg = p(&ca_path);
    let rs = resolve("a.example", addr);
    let u = url("a.example", addr, "/");
    for proto in ["--http1.1", "--http2"] {
        let same = curl(&["--cacert", &ca_arg, "--resolve", &rs, proto, &u]);
        assert_eq!(same.status, 200);
        let other = curl(&[
            "--cacert",
            &ca_arg,
            "--resolve",
            &rs,
            proto,
            "-H",
            "host: b.example",
            &u,
        ]);
        assert_eq!(other.status, 421, "{proto}");
    }
    assert_eq!(
        metric_value(
            &proxy.metrics(),
            r#"sluice_downstream_rejected_total{listener="tls",reason="misdirected_request"}"#
        ),
        2.0
    );
}

/// Two proxies: `front` (plaintext in) originates mTLS (HTTP/2) to `back`, which requires
/// client certificates and restores HTTP/1.1 to the application (Linkerd's mesh mode, by
/// configuration). Identities show on both sides; a wrong SAN or no client certificate fails.
#[test]
fn upstream_tls_with_mtls_san_checks_and_http2_between_proxies() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new("mesh ca");
    let ca_path = temp_file(d, "ca.pem", &ca.pem);
    let (bc, bk) = ca
        .leaf(&["back.internal"], Some("spiffe://test.local/ns/b/sa/back"))
        .write(d, "back");
    let (fc, fk) = ca
        .leaf(&[], Some("spiffe://test.local/ns/a/sa/front"))
        .write(d, "front");
    let app = echo("app");
    let back = InProcess::start(&format!(
        r#"
listeners:
  - name: inbound
    address: 127.0.0.1:0
    http: {{ route_table: rt, authorization: {{ allow: ["spiffe://test.local/ns/a/*"] }} }}
    tls:
      certificates: [{{ cert: {bc}, key: {bk} }}]
      client_certificate: required
      client_ca: {ca}
      forward_client_cert: sanitize_set
route_tables:
  - name: rt
    virtual_hosts:
      - {{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: / }}, cluster: app }}] }}
clusters:
  - {{ name: app, endpoints: [{{ address: "{app}" }}] }}
"#,
        bc = p(&bc),
        bk = p(&bk),
        ca = p(&ca_path)
    ));
    let b = back.addr("inbound");
    let tls = |extra: &str| {
        format!(
            "{{ ca: {ca}, cert: {fc}, key: {fk}{extra} }}",
            ca = p(&ca_path),
            fc = p(&fc),
            fk = p(&fk)
        )
    };
    let front = InProcess::start(&format!(
        r#"
listeners:
  - name: outbound
    address: 127.0.0.1:0
    http: {{ route_table: rt }}
route_tables:
  - name: rt
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - {{ match: {{ prefix: /spiffe }}, cluster: spiffe }}
          - {{ match: {{ prefix: /dns }}, cluster: dns }}
          - {{ match: {{ prefix: /wrong }}, cluster: wrong }}
          - {{ match: {{ prefix: /anonymous }}, cluster: anonymous }}
clusters:
  - {{ name: spiffe, protocol: http2, endpoints: [{{ address: "{b}" }}], tls: {spiffe} }}
  - {{ name: dns, endpoints: [{{ address: "{b}" }}], tls: {dns} }}
  - {{ name: wrong, endpoints: [{{ address: "{b}" }}], tls: {wrong} }}
  - {{ name: anonymous, endpoints: [{{ address: "{b}" }}], tls: {{ ca: {ca}, sni: back.internal }} }}
"#,
        spiffe = tls(", verify_subject_alt_names: [spiffe://test.local/ns/b/sa/back]"),
        dns = tls(", sni: back.internal"),
        wrong = tls(", verify_subject_alt_names: [spiffe://test.local/ns/b/sa/other]"),
        ca = p(&ca_path),
    ));
    let f = front.addr("outbound");
    for path in ["/spiffe", "/dns"] {
        let r = curl(&["--http1.1", &format!("http://{f}{path}")]);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let seen = r.json();
        // The application sees HTTP/1.1 and the front proxy's verified identity.
        assert_eq!(seen["version"], "HTTP/1.1");
        let xfcc = seen_header(&seen, "x-forwarded-client-cert");
        assert!(
            xfcc.starts_with("By=spiffe://test.local/ns/b/sa/back;")
                && xfcc.ends_with(";URI=spiffe://test.local/ns/a/sa/front"),
            "{xfcc}"
        );
    }
    // Many HTTP/1.1 requests share the one multiplexed HTTP/2 connection.
    for _ in 0..5 {
        assert_eq!(curl(&[&format!("http://{f}/spiffe")]).status, 200);
    }
    let bm = back.metrics();
    assert_eq!(
        metric_value(
            &bm,
            r#"sluice_downstream_tls_handshakes_total{listener="inbound",result="ok"}"#
        ),
        2.0,
        "one connection per cluster (spiffe over h2, dns over http/1.1)"
    );
    // A server whose SAN is not the expected identity is refused before any request.
    assert_eq!(curl(&[&format!("http://{f}/wrong")]).status, 503);
    // Without a client certificate the back proxy refuses the connection.
    let anon = curl(&[&format!("http://{f}/anonymous")]).status;
    assert!(anon == 503 || anon == 502, "{anon}");
    let fm = front.metrics();
    assert!(
        metric_value(
            &fm,
            r#"sluice_upstream_tls_handshakes_total{cluster="wrong",result="failed"}"#
        ) >= 1.0
    );
    assert!(
        metric_value(
            &fm,
            r#"sluice_upstream_tls_handshakes_total{cluster="spiffe",result="ok"}"#
        ) >= 1.0
    );
}

/// A rustls client trusting `ca` (optionally with a client certificate).
fn client_config(ca: &str, client: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let c = match client {
        Some(l) => b
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(l.cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(l.key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    Arc::new(c)
}

/// A blocking TLS connection with HTTP/1.1 keep-alive requests.
struct TlsConn {
    tls: rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
}

impl TlsConn {
    fn open(
        addr: SocketAddr,
        name: &str,
        config: &Arc<rustls::ClientConfig>,
    ) -> std::io::Result<Self> {
        let tcp = std::net::TcpStream::connect(addr)?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        let conn =
            rustls::ClientConnection::new(Arc::clone(config), name.to_string().try_into().unwrap())
                .map_err(std::io::Error::other)?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        // Completes the handshake.
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(TlsConn { tls })
    }

    /// The server's leaf certificate (DER).
    fn peer_leaf(&self) -> Vec<u8> {
        self.tls.conn.peer_certificates().unwrap()[0].to_vec()
    }

    fn resumed(&self) -> bool {
        self.tls.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    /// One request; the status, or an error when the connection fails.
    fn get(&mut self, path: &str) -> std::io::Result<u16> {
        write!(self.tls, "GET {path} HTTP/1.1\r\nhost: api.example\r\n\r\n")?;
        self.tls.flush()?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = self.tls.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            if let Some(end) = text.find("\r\n\r\n") {
                let len: usize = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap_or(0))
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    return Ok(text[9..12].parse().unwrap_or(0));
                }
            }
        }
    }
}

#[test]
fn certificates_rotate_without_dropping_connections_or_requests() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ca");
    let v1 = ca.leaf(&["api.example"], None);
    let (c, k) = v1.write(dir.path(), "server");
    let echo = echo("e");
    let proxy = InProcess::start(&format!(
        r#"
listeners:
  - name: tls
    address: 127.0.0.1:0
    http: {{ route_table: rt }}
    tls: {{ certificates: [{{ cert: {c}, key: {k} }}] }}
route_tables:
  - name: rt
    virtual_hosts:
      - {{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: / }}, cluster: echo }}] }}
clusters:
  - {{ name: echo, endpoints: [{{ address: "{echo}" }}] }}
"#,
        c = p(&c),
        k = p(&k)
    ));
    let addr = proxy.addr("tls");
    let config = client_config(&ca.pem, None);
    let mut held = TlsConn::open(addr, "api.example", &config).unwrap();
    assert_eq!(held.get("/").unwrap(), 200);
    let v1_der = held.peer_leaf();
    // New connections, one request each, all through the rotation.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = Arc::clone(&stop);
        let config = Arc::clone(&config);
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match TlsConn::open(addr, "api.example", &config).and_then(|mut c| c.get("/")) {
                    Ok(200) => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
            }
            (ok, failed)
        })
    };
    // The key first, then the certificate: in between the pair does not match, the reload
    // fails and the old pair stays in service.
    let v2 = ca.leaf(&["api.example"], None);
    std::fs::write(&k, &v2.key).unwrap();
    eventually("a failed reload", || {
        (counter_or_zero(
            &proxy.metrics(),
            r#"sluice_tls_reloads_total{result="failure"}"#,
        ) >= 1.0)
            .then_some(())
    });
    std::fs::write(&c, &v2.cert).unwrap();
    eventually("new connections get the new certificate", || {
        let c = TlsConn::open(addr, "api.example", &config).ok()?;
        (c.peer_leaf() != v1_der).then_some(())
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} failed of {}: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(ok > 0);
    // The connection opened before the rotation still serves.
    assert_eq!(held.get("/").unwrap(), 200);
    assert!(
        metric_value(
            &proxy.metrics(),
            r#"sluice_tls_reloads_total{result="success"}"#
        ) >= 1.0
    );
}

#[test]
fn a_changed_client_ca_cannot_be_bypassed_by_resumption() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("old ca");
    let proxy = mtls_proxy(dir.path(), &ca, "", "sanitize", "");
    let addr = proxy.addr("mtls");
    let client = ca.leaf(&[], Some("spiffe://test.local/ns/web/sa/frontend"));
    let config = client_config(&ca.pem, Some(&client));
    let mut first = TlsConn::open(addr, "api.example", &config).unwrap();
    assert_eq!(first.get("/").unwrap(), 200);
    drop(first);
    let mut second = TlsConn::open(addr, "api.example", &config).unwrap();
    assert_eq!(second.get("/").unwrap(), 200);
    assert!(second.resumed(), "the control case resumes");
    drop(second);
    // A new trust bundle that no longer includes the client's CA.
    let new_ca = Ca::new("new ca");
    std::fs::write(dir.path().join("ca.pem"), &new_ca.pem).unwrap();
    eventually("the reload", || {
        (counter_or_zero(
            &proxy.metrics(),
            r#"sluice_tls_reloads_total{result="success"}"#,
        ) >= 1.0)
            .then_some(())
    });
    let third = TlsConn::open(addr, "api.example", &config).and_then(|mut c| {
        let r = c.get("/");
        r.map(|s| (s, c.resumed()))
    });
    assert!(
        third.is_err(),
        "old-CA client served after the CA changed: {third:?}"
    );
}

#[test]
fn certificate_expiry_is_exported_and_missing_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ca");
    let (c, k) = ca
        .leaf_with(&["api.example"], None, |p| {
            p.not_after = rcgen::date_time_ymd(2040, 1, 1);
        })
        .write(dir.path(), "server");
    let yaml = |cert: &str| {
        format!(
            r#"
listeners:
  - name: tls
    address: 127.0.0.1:0
    http: {{ route_table: rt }}
    tls: {{ certificates: [{{ cert: {cert}, key: {k} }}] }}
route_tables:
  - {{ name: rt, virtual_hosts: [] }}
"#,
            k = p(&k)
        )
    };
    let proxy = InProcess::start(&yaml(&p(&c)));
    let left = metric_value(
        &proxy.metrics(),
        &format!(
            r#"sluice_tls_certificate_expiry_seconds{{cert="{}"}}"#,
            p(&c)
        ),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    assert!((left - (2_208_988_800.0 - now)).abs() < 120.0, "{left}");
    drop(proxy);
    // A certificate file that does not exist: the listener is refused, naming the file.
    let missing = dir.path().join("missing.crt");
    let err = sluice_proxy::Proxy::start(sluice_proxy::Options {
        source: sluice_proxy::Source::Inline {
            name: "test.yaml".into(),
            text: format!("admin: {{ address: 127.0.0.1:0 }}\n{}", yaml(&p(&missing))),
        },
        workers: 1,
        drain_timeout: Duration::from_secs(1),
        handle_signals: false,
        watch: false,
        filters: Vec::new(),
        xds: None,
        log_level: None,
    })
    .expect_err("a missing certificate must be refused")
    .to_string();
    assert!(
        err.contains("tls") && err.contains(&p(&missing)) && err.contains("tls"),
        "{err}"
    );
}
