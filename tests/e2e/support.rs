//! Test harness: in-process proxies and the real `sluice` binary, example upstreams, and real
//! clients (curl, nghttp, hyper).

#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::BodyExt;
use sluice_proxy::{Options, Proxy, Source};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long any wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `f` until it returns `Some`, failing the test after [`DEADLINE`].
pub fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts an HTTP echo upstream (HTTP/1.1 and HTTP/2) named `name`.
pub fn echo(name: &str) -> SocketAddr {
    sluice_proxy::demo::spawn_echo("127.0.0.1:0".parse().unwrap(), name).expect("echo upstream")
}

/// Starts a TCP echo upstream.
pub fn tcp_echo() -> SocketAddr {
    sluice_proxy::demo::spawn_tcp_echo("127.0.0.1:0".parse().unwrap()).expect("tcp echo")
}

/// A proxy running in this process.
pub struct InProcess {
    pub proxy: Option<Proxy>,
}

impl InProcess {
    /// Starts a proxy with one worker from YAML (admin on port 0 unless the YAML sets it).
    pub fn start(yaml: &str) -> Self {
        Self::start_with_filters(yaml, Vec::new())
    }

    /// Like [`InProcess::start`], with extra HTTP filters ahead of the configured ones.
    pub fn start_with_filters(
        yaml: &str,
        filters: Vec<std::sync::Arc<dyn sluice_proxy::http::filters::HttpFilter>>,
    ) -> Self {
        let yaml = with_admin(yaml);
        let proxy = Proxy::start(Options {
            source: Source::Inline {
                name: "test.yaml".into(),
                text: yaml,
            },
            workers: 1,
            drain_timeout: Duration::from_secs(5),
            handle_signals: false,
            watch: false,
            filters,
            xds: None,
            log_level: None,
        })
        .unwrap_or_else(|e| panic!("proxy did not start: {e}"));
        InProcess { proxy: Some(proxy) }
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.proxy()
            .listener_addr(listener)
            .expect("listener bound")
    }

    pub fn url(&self, listener: &str, path: &str) -> String {
        format!("http://{}{path}", self.addr(listener))
    }

    pub fn proxy(&self) -> &Proxy {
        self.proxy.as_ref().expect("running")
    }

    pub fn metrics(&self) -> String {
        http_get(self.proxy().admin_addr(), "/metrics").1
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(p) = self.proxy.take() {
            p.shutdown();
            p.wait();
        }
    }
}

fn with_admin(yaml: &str) -> String {
    if yaml.contains("admin:") {
        yaml.to_string()
    } else {
        format!("admin: {{ address: 127.0.0.1:0 }}\n{yaml}")
    }
}

/// The real `sluice` binary, run with a config file in a temporary directory.
pub struct Binary {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub admin: SocketAddr,
    log: LogLines,
}

/// A child's stderr, line by line, echoed to the test's output with a prefix.
pub struct LogLines {
    rx: mpsc::Receiver<String>,
    /// Every line read so far.
    pub lines: Vec<String>,
    what: &'static str,
}

impl LogLines {
    /// Reads `stderr` on a thread of its own.
    pub fn spawn(stderr: std::process::ChildStderr, what: &'static str) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[{what}] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        LogLines {
            rx,
            lines: Vec::new(),
            what,
        }
    }

    /// Waits for a line containing `needle` (one already read counts) and returns it.
    pub fn wait(&mut self, needle: &str) -> String {
        if let Some(l) = self.lines.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let start = Instant::now();
        loop {
            let left = DEADLINE.checked_sub(start.elapsed()).unwrap_or_else(|| {
                panic!(
                    "timed out waiting for a {} log line containing {needle:?}",
                    self.what
                )
            });
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.lines.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no {} log line containing {needle:?}; got {:#?}",
                    self.what, self.lines
                ),
            }
        }
    }
}

pub fn sluice_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sluice")
}

impl Binary {
    /// Writes `yaml` to a file and runs `sluice proxy -c FILE --workers 2 ARGS`; waits until
    /// `/ready` answers 200.
    pub fn start(yaml: &str, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("sluice.yaml");
        std::fs::write(&config, with_admin(yaml)).unwrap();
        let mut child = Command::new(sluice_bin())
            .args(["proxy", "-c"])
            .arg(&config)
            .args(["--workers", "2", "--log", "info"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sluice");
        let log = LogLines::spawn(child.stderr.take().unwrap(), "sluice");
        let mut b = Binary {
            child,
            dir,
            config,
            admin: "0.0.0.0:0".parse().unwrap(),
            log,
        };
        let line = b.wait_log("admin listening");
        let addr = line.split("address=").nth(1).expect("admin address in log");
        b.admin = addr.split_whitespace().next().unwrap().parse().unwrap();
        eventually("sluice ready", || {
            (http_get(b.admin, "/ready").0 == 200).then_some(())
        });
        b
    }

    /// Waits for a log line containing `needle` and returns it.
    pub fn wait_log(&mut self, needle: &str) -> String {
        self.log.wait(needle)
    }

    /// Every log line read so far.
    pub fn log_lines(&self) -> &[String] {
        &self.log.lines
    }

    /// Bound address of a listener, from the admin API.
    pub fn addr(&self, listener: &str) -> SocketAddr {
        let (_, body) = http_get(self.admin, "/listeners");
        let list: serde_json::Value = serde_json::from_str(&body).unwrap();
        let entry = list
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == listener)
            .unwrap_or_else(|| panic!("listener {listener} not in {body}"));
        entry["address"].as_str().unwrap().parse().unwrap()
    }

    pub fn write_config(&self, yaml: &str) {
        // Write then rename, as editors and Kubernetes do, so the proxy never reads half a file.
        let tmp = self.dir.path().join(".sluice.yaml.tmp");
        std::fs::write(&tmp, with_admin_addr(yaml, self.admin)).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
    }

    pub fn signal(&self, sig: &str) {
        // The shell's built-in `kill`: no dependency on procps.
        let status = Command::new("sh")
            .args(["-c", &format!("kill -{sig} {}", self.child.id())])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn metric(&self, name_and_labels: &str) -> f64 {
        metric_value(&http_get(self.admin, "/metrics").1, name_and_labels)
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self) -> i32 {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(start.elapsed() < DEADLINE, "sluice did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Keeps the admin address stable across rewrites of a config that had `admin` on port 0.
fn with_admin_addr(yaml: &str, admin: SocketAddr) -> String {
    if yaml.contains("admin:") {
        yaml.to_string()
    } else {
        format!("admin: {{ address: {admin} }}\n{yaml}")
    }
}

/// Reads a sample's value from Prometheus text: `name{labels}` as printed. Fails the test,
/// listing the samples of the same family, when there is no such sample: a misspelt name or
/// label must not read as 0.
pub fn metric_value(text: &str, name_and_labels: &str) -> f64 {
    metric_sample(text, name_and_labels).unwrap_or_else(|| {
        let family = name_and_labels.split('{').next().unwrap_or(name_and_labels);
        let similar: Vec<&str> = text.lines().filter(|l| l.starts_with(family)).collect();
        panic!("no metric sample `{name_and_labels}`; samples of `{family}`: {similar:#?}")
    })
}

/// A counter that may not have been created yet (no event of that label set, and the
/// exposition omits empty families): its value, or 0 when absent. Use it only to assert that
/// something was *not* counted; [`metric_value`] for everything else.
pub fn counter_or_zero(text: &str, name_and_labels: &str) -> f64 {
    metric_sample(text, name_and_labels).unwrap_or(0.0)
}

fn metric_sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == name_and_labels).then(|| v.parse().ok()).flatten()
    })
}

/// A minimal blocking HTTP/1.1 GET (for the admin API). Returns status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Output of a curl run.
#[derive(Debug)]
pub struct CurlOut {
    pub status: u16,
    pub version: String,
    /// Lowercased header names with values, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl CurlOut {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

pub fn require_tool(tool: &str, package: &str) {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{tool} is required: apt-get install -y {package} (./test.sh installs it)"
    );
}

/// Runs curl with `args` (plus `-s -S -D -` to capture headers) and parses its output.
pub fn curl(args: &[&str]) -> CurlOut {
    require_tool("curl", "curl");
    let out = Command::new("curl")
        .args(["-s", "-S", "-D", "-", "--max-time", "15"])
        .args(args)
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_curl(&out.stdout)
}

fn parse_curl(raw: &[u8]) -> CurlOut {
    // With -D - the (last) header block precedes the body; skip interim 1xx blocks.
    let mut rest = raw;
    loop {
        let end = find(rest, b"\r\n\r\n").expect("header block");
        let head = String::from_utf8_lossy(&rest[..end]).into_owned();
        let body = &rest[end + 4..];
        let mut lines = head.lines();
        let status_line = lines.next().unwrap_or_default().to_string();
        let mut parts = status_line.split_whitespace();
        let version = parts.next().unwrap_or_default().to_string();
        let status: u16 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        if (100..200).contains(&status) && status != 101 {
            rest = body;
            continue;
        }
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        return CurlOut {
            status,
            version,
            headers,
            body: body.to_vec(),
        };
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Sends raw bytes on a new connection and reads until the peer closes or `timeout` passes.
/// Returns what was read and whether the peer closed the connection.
pub fn raw_exchange(addr: SocketAddr, request: &[u8], timeout: Duration) -> (String, bool) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(request).unwrap();
    read_until_close(&mut s, timeout)
}

pub fn read_until_close(s: &mut TcpStream, timeout: Duration) -> (String, bool) {
    s.set_read_timeout(Some(timeout)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (String::from_utf8_lossy(&out).into_owned(), true);
            }
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
        }
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sluice_proxy::demo::echo::hex(&sha2::Sha256::digest(data))
}

/// A current-thread runtime for async client code in sync tests.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Collects a hyper body: data and trailers.
pub async fn collect<B>(body: B) -> (Bytes, Option<http::HeaderMap>)
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let c = body.collect().await.expect("body");
    let trailers = c.trailers().cloned();
    (c.to_bytes(), trailers)
}

pub fn temp_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    p
}

/// A blocking HTTP/1.1 keep-alive client for load loops (responses must have Content-Length).
pub struct KeepAlive {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
}

/// A parsed response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl KeepAlive {
    pub fn new(addr: SocketAddr) -> Self {
        KeepAlive { addr, conn: None }
    }

    /// Sends a GET on the open connection (or a new one) and reads the response.
    pub fn get(&mut self, path: &str) -> std::io::Result<Resp> {
        if self.conn.is_none() {
            let s = TcpStream::connect(self.addr)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            self.conn = Some(BufReader::new(s));
        }
        let result = self.exchange(path);
        match &result {
            Ok(r)
                if r.header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close")) =>
            {
                self.conn = None
            }
            Err(_) => self.conn = None,
            _ => {}
        }
        result
    }

    fn exchange(&mut self, path: &str) -> std::io::Result<Resp> {
        let conn = self.conn.as_mut().expect("connected");
        write!(conn.get_mut(), "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n")?;
        let mut line = String::new();
        conn.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            conn.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        conn.read_exact(&mut body)?;
        Ok(Resp {
            status,
            headers,
            body,
        })
    }
}

/// An HTTP/2 (prior knowledge) client connection to `addr`, driven on the current runtime.
pub async fn h2_connect<B>(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: http_body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    let (sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

/// `sluice_downstream_rejected_total` of listener `main` for `reason`, 0 before the first
/// (callers assert or wait for a count above 0, so a misspelt reason cannot pass).
pub fn rejected(p: &InProcess, reason: &str) -> f64 {
    counter_or_zero(
        &p.metrics(),
        &format!("sluice_downstream_rejected_total{{listener=\"main\",reason=\"{reason}\"}}"),
    )
}

/// Requests Sluice sent to cluster `up` (its series exists from the cluster's creation).
pub fn upstream_requests(p: &InProcess) -> f64 {
    metric_value(
        &p.metrics(),
        "sluice_upstream_requests_total{cluster=\"up\"}",
    )
}

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One raw HTTP/2 frame.
pub fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Asserts a single response with `status`, `Connection: close`, and a closed connection.
pub fn assert_rejected_and_closed(out: &str, closed: bool, status: u16, what: &str) {
    assert!(
        out.starts_with(&format!("HTTP/1.1 {status} ")),
        "{what}: {out}"
    );
    assert!(
        out.to_ascii_lowercase().contains("connection: close"),
        "{what}: {out}"
    );
    assert!(closed, "{what}: connection left open");
    assert_eq!(out.matches("HTTP/1.1 ").count(), 1, "{what}: {out}");
}
