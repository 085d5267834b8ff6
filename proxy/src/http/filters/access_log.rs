//! The access log: one line per request, or per connection of a TCP listener (JSON object or an
//! Envoy-style text template), written to stdout, stderr or a file by a writer thread shared
//! by every listener logging there.
//!
//! The request path pays only when a listener has an access log: the head sampling decision,
//! then (for sampled requests) a [`RequestRecord`] of the request's head, filled in as the
//! request is routed and forwarded and read by the completion hook, which formats the line on
//! the worker and hands it to the writer through a bounded queue. A full queue (a writer that
//! cannot keep up: a blocked pipe, a slow disk) drops lines, counted in
//! `sluice_access_log_lines_total{result="dropped"}`, and never blocks a worker.

use super::{Completion, HttpFilter, Outcome};
use crate::http::ConnContext;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, Version};
use sluice_config::{LogOperator as Op, LogPiece as Piece};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

/// Lines queued for the writer before new ones are dropped.
const QUEUE: usize = 16 * 1024;

/// Request headers every JSON line records.
const JSON_HEADERS: [&str; 3] = ["user-agent", "x-forwarded-for", "x-request-id"];
/// Headers a trace id is read from (W3C first, then B3 single and multi-header).
const TRACE_HEADERS: [&str; 3] = ["traceparent", "b3", "x-b3-traceid"];

/// What the log knows of a request: its head as received (headers the format names, as the
/// upstream got them when it was forwarded), where it went, and what came back.
#[derive(Debug)]
pub struct RequestRecord {
    method: Method,
    uri: Uri,
    version: Version,
    authority: Option<HeaderValue>,
    scheme: &'static str,
    /// Values of [`AccessLog::request_headers`], in order.
    headers: Vec<Option<HeaderValue>>,
    /// Values of [`AccessLog::response_headers`], in order.
    response_headers: Vec<Option<HeaderValue>>,
    peer: SocketAddr,
    local: SocketAddr,
    identity: Option<String>,
    pub(crate) virtual_host: Option<String>,
    pub(crate) route: Option<String>,
    pub(crate) cluster: Option<String>,
    pub(crate) attempts: u32,
    pub(crate) retries_exhausted: bool,
    /// Request body bytes taken from the client (set when the request completes).
    pub(crate) bytes_received: u64,
    grpc_status: Option<u32>,
}

impl RequestRecord {
    /// The forwarded request's headers (after the filters: a generated `x-request-id`, header
    /// operations) replace those recorded from the client.
    pub(crate) fn forwarded(&mut self, log: &AccessLog, headers: &HeaderMap) {
        for (slot, name) in self.headers.iter_mut().zip(&log.request_headers) {
            *slot = headers.get(name).cloned();
        }
    }

    /// Records the response headers the format names and a trailers-only gRPC status.
    pub(crate) fn responded(&mut self, log: &AccessLog, headers: &HeaderMap) {
        self.response_headers = log
            .response_headers
            .iter()
            .map(|n| headers.get(n).cloned())
            .collect();
        self.grpc(headers);
    }

    /// Records the `grpc-status` of response headers or trailers.
    pub(crate) fn grpc(&mut self, headers: &HeaderMap) {
        if let Some(s) = headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok()?.parse().ok())
        {
            self.grpc_status = Some(s);
        }
    }

    fn header(&self, log: &AccessLog, name: &str) -> Option<&HeaderValue> {
        let i = log.request_headers.iter().position(|n| n == name)?;
        self.headers.get(i)?.as_ref()
    }

    fn trace_id(&self, log: &AccessLog) -> Option<String> {
        if let Some(tp) = self
            .header(log, "traceparent")
            .and_then(|v| v.to_str().ok())
        {
            let mut parts = tp.split('-');
            let (_, id) = (parts.next(), parts.next()?);
            return valid_trace_id(id).then(|| id.to_ascii_lowercase());
        }
        let b3 = self
            .header(log, "b3")
            .and_then(|v| v.to_str().ok()?.split('-').next());
        let id = b3.or_else(|| self.header(log, "x-b3-traceid")?.to_str().ok())?;
        valid_trace_id(id).then(|| id.to_ascii_lowercase())
    }
}

/// What the log knows of a TCP listener's connection when it ends (`listener/tcp.rs` fills it
/// in as it routes and splices the connection).
#[derive(Debug)]
pub(crate) struct ConnRecord {
    pub(crate) started: tokio::time::Instant,
    pub(crate) peer: SocketAddr,
    pub(crate) local: SocketAddr,
    /// The server name of the ClientHello (TLS passthrough listeners).
    pub(crate) server_name: Option<String>,
    pub(crate) cluster: Option<String>,
    pub(crate) upstream: Option<SocketAddr>,
    /// Bytes read from the client and written to it.
    pub(crate) received: u64,
    pub(crate) sent: u64,
    /// Envoy's response flag for a failure (`UF`, `UH`, `UO`, `NR`, …).
    pub(crate) flag: Option<&'static str>,
    /// How the connection ended: `closed`, `error`, `idle_timeout`, `drained`,
    /// `connect_failed`, `no_route`, `client_closed`.
    pub(crate) termination: &'static str,
}

impl ConnRecord {
    /// A record of a connection accepted now.
    pub(crate) fn new(peer: SocketAddr, local: SocketAddr) -> Self {
        ConnRecord {
            started: tokio::time::Instant::now(),
            peer,
            local,
            server_name: None,
            cluster: None,
            upstream: None,
            received: 0,
            sent: 0,
            flag: None,
            termination: "closed",
        }
    }

    fn start_time(&self) -> SystemTime {
        SystemTime::now()
            .checked_sub(self.started.elapsed())
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

/// A 16- or 32-digit hex trace id that is not all zeros.
fn valid_trace_id(id: &str) -> bool {
    (id.len() == 32 || id.len() == 16)
        && id.bytes().all(|b| b.is_ascii_hexdigit())
        && id.bytes().any(|b| b != b'0')
}

/// The compiled format.
#[derive(Debug)]
enum Format {
    Json,
    Template(Vec<Piece>),
}

/// One listener's access log: an HTTP listener's is a filter whose completion hook writes each
/// request's line; a TCP listener's is called as each connection ends.
#[derive(Debug)]
pub struct AccessLog {
    listener: String,
    format: Format,
    min_status: u16,
    sample: f64,
    /// Request headers recorded (lower case).
    request_headers: Vec<HeaderName>,
    /// Response headers recorded (templates' `%RESP(…)%`).
    response_headers: Vec<HeaderName>,
    sink: Arc<Sink>,
    lines: crate::metrics::LabelledCounters<2>,
}

impl AccessLog {
    /// Opens (or shares) the log's destination and compiles its format.
    pub fn open(
        listener: &str,
        c: &sluice_config::AccessLog,
        metrics: &crate::metrics::Metrics,
    ) -> Result<AccessLog, String> {
        let format = match c.format.template() {
            None => Format::Json,
            Some(t) => Format::Template(t?),
        };
        let mut request_headers: Vec<HeaderName> = Vec::new();
        let mut response_headers: Vec<HeaderName> = Vec::new();
        let want = |list: &mut Vec<HeaderName>, name: &str| {
            if let Ok(h) = HeaderName::from_bytes(name.as_bytes())
                && !list.contains(&h)
            {
                list.push(h);
            }
        };
        match &format {
            Format::Json => {
                for n in JSON_HEADERS.iter().chain(&TRACE_HEADERS) {
                    want(&mut request_headers, n);
                }
            }
            Format::Template(pieces) => {
                for p in pieces {
                    match p {
                        Piece::Value {
                            op: Op::Request(names),
                            ..
                        } => {
                            for n in names.iter().filter(|n| !n.starts_with(':')) {
                                want(&mut request_headers, n);
                            }
                        }
                        Piece::Value {
                            op: Op::Response(n),
                            ..
                        } => want(&mut response_headers, n),
                        Piece::Value {
                            op: Op::TraceId, ..
                        } => {
                            for n in TRACE_HEADERS {
                                want(&mut request_headers, n);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        let sink = Sink::open(&c.path).map_err(|e| format!("access_log.path: {}: {e}", c.path))?;
        Ok(AccessLog {
            listener: listener.to_string(),
            format,
            min_status: c.min_status,
            sample: c.sample,
            request_headers,
            response_headers,
            sink,
            lines: metrics.access_log_lines(listener),
        })
    }

    /// The head sampling draw: true for a request or connection to log.
    pub(crate) fn sampled(&self) -> bool {
        self.sample >= 1.0 || fastrand::f64() < self.sample
    }

    /// A record of this request when it is sampled.
    pub(crate) fn record(
        &self,
        req: &http::Request<hyper::body::Incoming>,
        conn: &ConnContext,
    ) -> Option<Box<RequestRecord>> {
        if !self.sampled() {
            return None;
        }
        let authority = crate::message::fields::authority(req);
        Some(Box::new(RequestRecord {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            authority,
            scheme: conn.scheme(),
            headers: self
                .request_headers
                .iter()
                .map(|n| req.headers().get(n).cloned())
                .collect(),
            response_headers: Vec::new(),
            peer: conn.peer,
            local: conn.local,
            identity: conn.peer_identity().map(str::to_string),
            virtual_host: None,
            route: None,
            cluster: None,
            attempts: 0,
            retries_exhausted: false,
            bytes_received: 0,
            grpc_status: None,
        }))
    }

    /// The response flags, Envoy's way: comma-separated, `-` for none.
    fn flags(done: &Completion, rec: &RequestRecord) -> String {
        let mut f = String::new();
        let mut add = |s: &str| {
            if !f.is_empty() {
                f.push(',');
            }
            f.push_str(s);
        };
        if let Some(flag) = done.flag {
            add(flag);
        }
        if rec.retries_exhausted {
            add("URX");
        }
        match done.outcome {
            Outcome::Complete => {}
            Outcome::UpstreamReset => add("UR"),
            Outcome::DownstreamGone => add("DC"),
        }
        if f.is_empty() {
            f.push('-');
        }
        f
    }

    fn json(&self, out: &mut String, done: &Completion, rec: &RequestRecord) {
        let start = SystemTime::now()
            .checked_sub(done.duration)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let header = |n: &str| rec.header(self, n).map(|v| lossy(v.as_bytes()));
        let path = rec.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut j = Json::new(out);
        j.str("start_time", Some(&rfc3339(start)));
        j.raw(
            "duration_ms",
            &format!("{:.3}", done.duration.as_secs_f64() * 1000.0),
        );
        j.str("listener", Some(&self.listener));
        j.str("protocol", Some(protocol(rec.version)));
        j.str("method", Some(rec.method.as_str()));
        j.str("scheme", Some(rec.scheme));
        j.str(
            "authority",
            rec.authority
                .as_ref()
                .map(|a| lossy(a.as_bytes()))
                .as_deref(),
        );
        j.str("path", Some(path));
        j.num("status", Some(u64::from(done.status.as_u16())));
        j.num("grpc_status", rec.grpc_status.map(u64::from));
        j.str("response_flags", Some(&Self::flags(done, rec)));
        j.num("bytes_received", Some(rec.bytes_received));
        j.num("bytes_sent", Some(done.body_bytes));
        j.str("virtual_host", rec.virtual_host.as_deref());
        j.str("route", rec.route.as_deref());
        j.str("cluster", rec.cluster.as_deref());
        j.str(
            "upstream_host",
            done.upstream.map(|a| a.to_string()).as_deref(),
        );
        j.num("attempts", Some(u64::from(rec.attempts)));
        j.str("request_id", header("x-request-id").as_deref());
        j.str("trace_id", rec.trace_id(self).as_deref());
        j.str("downstream_remote_address", Some(&rec.peer.to_string()));
        j.str("downstream_local_address", Some(&rec.local.to_string()));
        j.str("downstream_peer_identity", rec.identity.as_deref());
        j.str("user_agent", header("user-agent").as_deref());
        j.str("x_forwarded_for", header("x-forwarded-for").as_deref());
        j.end();
    }

    /// A template's line; `value` gives each operator's value (`-` when it has none).
    fn text(out: &mut String, pieces: &[Piece], value: impl Fn(&Op) -> Option<String>) {
        for p in pieces {
            match p {
                Piece::Literal(s) => out.push_str(s),
                Piece::Value { op, max } => {
                    let v = value(op);
                    let v = v.as_deref().unwrap_or("-");
                    match max {
                        Some(n) => out.extend(v.chars().take(*n)),
                        None => out.push_str(v),
                    }
                }
            }
        }
    }

    fn value(&self, op: &Op, done: &Completion, rec: &RequestRecord) -> Option<String> {
        Some(match op {
            Op::StartTime => rfc3339(
                SystemTime::now()
                    .checked_sub(done.duration)
                    .unwrap_or(SystemTime::UNIX_EPOCH),
            ),
            Op::Duration => done.duration.as_millis().to_string(),
            Op::Request(names) => {
                return names.iter().find_map(|n| match n.as_str() {
                    ":method" => Some(rec.method.as_str().to_string()),
                    ":path" => Some(
                        rec.uri
                            .path_and_query()
                            .map_or("/", |p| p.as_str())
                            .to_string(),
                    ),
                    ":authority" => rec.authority.as_ref().map(|a| lossy(a.as_bytes())),
                    ":scheme" => Some(rec.scheme.to_string()),
                    _ => rec.header(self, n).map(|v| lossy(v.as_bytes())),
                });
            }
            Op::Response(n) => {
                let i = self
                    .response_headers
                    .iter()
                    .position(|h| h.as_str() == n.as_str())?;
                return rec
                    .response_headers
                    .get(i)?
                    .as_ref()
                    .map(|v| lossy(v.as_bytes()));
            }
            Op::Protocol => protocol(rec.version).to_string(),
            Op::ResponseCode => done.status.as_u16().to_string(),
            Op::ResponseFlags => Self::flags(done, rec),
            Op::GrpcStatus => rec.grpc_status?.to_string(),
            Op::BytesReceived => rec.bytes_received.to_string(),
            Op::BytesSent => done.body_bytes.to_string(),
            Op::UpstreamHost => done.upstream?.to_string(),
            Op::UpstreamCluster => rec.cluster.clone()?,
            Op::Attempts => rec.attempts.to_string(),
            Op::RouteName => rec.route.clone()?,
            Op::VirtualHost => rec.virtual_host.clone()?,
            Op::DownstreamRemoteAddress => rec.peer.to_string(),
            Op::DownstreamLocalAddress => rec.local.to_string(),
            Op::DownstreamPeerUriSan => rec.identity.clone()?,
            Op::TraceId => rec.trace_id(self)?,
            Op::Listener => self.listener.clone(),
        })
    }
}

impl HttpFilter for AccessLog {
    fn wants_completion(&self) -> bool {
        true
    }

    fn on_complete(&self, done: &Completion) {
        let Some(rec) = done.record.as_deref() else {
            return;
        };
        if done.status.as_u16() < self.min_status {
            return;
        }
        let mut line = String::with_capacity(512);
        match &self.format {
            Format::Json => self.json(&mut line, done, rec),
            Format::Template(p) => Self::text(&mut line, p, |op| self.value(op, done, rec)),
        }
        self.emit(line);
    }
}

impl AccessLog {
    /// Logs a TCP listener's connection (sampled by the caller with [`AccessLog::sampled`]).
    pub(crate) fn connection(&self, c: &ConnRecord) {
        let mut line = String::with_capacity(384);
        match &self.format {
            Format::Json => self.connection_json(&mut line, c),
            Format::Template(p) => Self::text(&mut line, p, |op| self.connection_value(op, c)),
        }
        self.emit(line);
    }

    fn connection_json(&self, out: &mut String, c: &ConnRecord) {
        let mut j = Json::new(out);
        j.str("start_time", Some(&rfc3339(c.start_time())));
        j.raw(
            "duration_ms",
            &format!("{:.3}", c.started.elapsed().as_secs_f64() * 1000.0),
        );
        j.str("listener", Some(&self.listener));
        j.str("protocol", Some("TCP"));
        j.str("response_flags", Some(c.flag.unwrap_or("-")));
        j.str("termination", Some(c.termination));
        j.num("bytes_received", Some(c.received));
        j.num("bytes_sent", Some(c.sent));
        j.str("requested_server_name", c.server_name.as_deref());
        j.str("cluster", c.cluster.as_deref());
        j.str(
            "upstream_host",
            c.upstream.map(|a| a.to_string()).as_deref(),
        );
        j.str("downstream_remote_address", Some(&c.peer.to_string()));
        j.str("downstream_local_address", Some(&c.local.to_string()));
        j.end();
    }

    /// A connection's value of a template operator; HTTP-only ones (headers, status, route)
    /// have none.
    fn connection_value(&self, op: &Op, c: &ConnRecord) -> Option<String> {
        Some(match op {
            Op::StartTime => rfc3339(c.start_time()),
            Op::Duration => c.started.elapsed().as_millis().to_string(),
            Op::Protocol => "TCP".into(),
            Op::ResponseFlags => c.flag.unwrap_or("-").into(),
            Op::BytesReceived => c.received.to_string(),
            Op::BytesSent => c.sent.to_string(),
            Op::UpstreamHost => c.upstream?.to_string(),
            Op::UpstreamCluster => c.cluster.clone()?,
            Op::DownstreamRemoteAddress => c.peer.to_string(),
            Op::DownstreamLocalAddress => c.local.to_string(),
            Op::Listener => self.listener.clone(),
            Op::Request(_)
            | Op::Response(_)
            | Op::ResponseCode
            | Op::GrpcStatus
            | Op::Attempts
            | Op::RouteName
            | Op::VirtualHost
            | Op::DownstreamPeerUriSan
            | Op::TraceId => return None,
        })
    }

    /// Queues a line for the writer, or drops it (counted) when the queue is full.
    fn emit(&self, mut line: String) {
        line.push('\n');
        match self.sink.tx.try_send(line.into_bytes()) {
            Ok(()) => self.lines.inc("written"),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.lines.inc("dropped"),
        }
    }
}

/// `HTTP/1.1`, `HTTP/2`, …
fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A JSON object written field by field (values escaped by serde_json; absent ones `null`).
struct Json<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'a> Json<'a> {
    fn new(out: &'a mut String) -> Self {
        out.push('{');
        Json { out, first: true }
    }

    fn key(&mut self, k: &str) {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        self.out.push('"');
        self.out.push_str(k);
        self.out.push_str("\":");
    }

    fn str(&mut self, k: &str, v: Option<&str>) {
        self.key(k);
        match v.and_then(|v| serde_json::to_string(v).ok()) {
            Some(s) => self.out.push_str(&s),
            None => self.out.push_str("null"),
        }
    }

    fn num(&mut self, k: &str, v: Option<u64>) {
        self.key(k);
        match v {
            Some(n) => {
                let _ = write!(self.out, "{n}");
            }
            None => self.out.push_str("null"),
        }
    }

    fn raw(&mut self, k: &str, v: &str) {
        self.key(k);
        self.out.push_str(v);
    }

    fn end(self) {
        self.out.push('}');
    }
}

/// `2026-12-02T13:05:01.123Z`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let d = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// A log destination: a writer thread and its queue, shared by every listener logging to the
/// same path (the thread ends when the last listener using it is gone).
#[derive(Debug)]
struct Sink {
    tx: SyncSender<Vec<u8>>,
}

/// Open destinations by path.
static SINKS: Mutex<Option<HashMap<String, Weak<Sink>>>> = Mutex::new(None);

impl Sink {
    fn open(path: &str) -> std::io::Result<Arc<Sink>> {
        let mut sinks = SINKS.lock().unwrap_or_else(|e| e.into_inner());
        let sinks = sinks.get_or_insert_with(HashMap::new);
        sinks.retain(|_, w| w.strong_count() > 0);
        if let Some(s) = sinks.get(path).and_then(Weak::upgrade) {
            return Ok(s);
        }
        let out: Box<dyn std::io::Write + Send> = match path {
            "stdout" | "/dev/stdout" => Box::new(std::io::stdout()),
            "stderr" | "/dev/stderr" => Box::new(std::io::stderr()),
            p => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("sluice-access-log".into())
            .spawn(move || write_lines(rx, out))?;
        let sink = Arc::new(Sink { tx });
        sinks.insert(path.to_string(), Arc::downgrade(&sink));
        Ok(sink)
    }
}

/// The writer thread: writes what is queued in batches, flushing whenever the queue is empty
/// (so a line is on disk, or in the pipe, as soon as the writer is idle).
fn write_lines(rx: Receiver<Vec<u8>>, out: Box<dyn std::io::Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut failed = false;
    while let Ok(line) = rx.recv() {
        let mut r = out.write_all(&line);
        while let Ok(more) = rx.try_recv() {
            r = r.and_then(|()| out.write_all(&more));
        }
        r = r.and_then(|()| out.flush());
        match r {
            Err(e) if !failed => {
                tracing::error!(error = %e, "access log write failed");
                failed = true;
            }
            Err(_) => {}
            Ok(()) => failed = false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_216_701_123);
        assert_eq!(rfc3339(t), "2026-12-02T13:05:01.123Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn json_values_are_escaped_and_absent_ones_are_null() {
        let mut out = String::new();
        let mut j = Json::new(&mut out);
        j.str("ua", Some("a \"quoted\"\nline\u{1}"));
        j.str("none", None);
        j.num("n", Some(7));
        j.num("m", None);
        j.end();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["ua"], "a \"quoted\"\nline\u{1}");
        assert!(v["none"].is_null() && v["m"].is_null());
        assert_eq!(v["n"], 7);
        assert_eq!(lossy(b"caf\xc3\xa9 \xff"), "caf\u{e9} \u{fffd}");
    }

    #[test]
    fn trace_ids_must_be_hex_and_not_zero() {
        assert!(valid_trace_id("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert!(valid_trace_id("a3ce929d0e0e4736"));
        assert!(!valid_trace_id("00000000000000000000000000000000"));
        assert!(!valid_trace_id("4bf92f3577b34da6a3ce929d0e0e473z"));
        assert!(!valid_trace_id("4bf9"));
    }
}
