//! OpenTelemetry tracing: W3C `traceparent`/`tracestate` (B3 single and multi-header read
//! too), a server span per request and a client span per upstream call, context propagated
//! upstream, head sampling for requests that arrive without a decision, and OTLP/gRPC export
//! in batches from a thread of its own.
//!
//! The request path pays only for sampled requests: a boxed [`TraceContext`] taken when the
//! head arrives, the `traceparent` written into the upstream request, and at completion two
//! spans handed to the exporter through a bounded queue (`try_send`: a full queue or an
//! unreachable collector drops spans, counted in `sluice_tracing_spans_total`, and never blocks
//! a worker).

use http::{HeaderMap, HeaderValue, Method, Uri, Version};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span, status,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

/// Spans queued for export before new ones are dropped.
const QUEUE: usize = 4096;
/// Most spans in one export request.
const BATCH: usize = 512;
/// How long the exporter waits to fill a batch.
const LINGER: Duration = Duration::from_millis(200);

/// The proxy's tracer: its sampling ratio and the exporter's queue.
#[derive(Debug)]
pub struct Tracer {
    sampling: f64,
    tx: mpsc::Sender<Span>,
    spans: crate::metrics::LabelledCounters<3>,
}

/// A sampled request's trace: ids, when it started, and what its spans say.
#[derive(Debug)]
pub(crate) struct TraceContext {
    tracer: Arc<Tracer>,
    trace_id: [u8; 16],
    /// The caller's span, if the request carried one.
    parent: Option<[u8; 8]>,
    server: [u8; 8],
    /// The current upstream attempt's client span (a fresh one per retry; big-endian bytes).
    /// Atomics because the attempt loop updates them through a shared reference.
    client: AtomicU64,
    /// When the current attempt started (Unix nanoseconds; 0 before the first).
    sent_at: AtomicU64,
    start: SystemTime,
    method: Method,
    uri: Uri,
    version: Version,
    authority: Option<HeaderValue>,
    scheme: &'static str,
    user_agent: Option<HeaderValue>,
    /// Set as the request is routed and forwarded.
    pub(crate) route: Option<String>,
    pub(crate) cluster: Option<String>,
    pub(crate) attempts: u32,
}

/// How an upstream attempt that is retried ended.
#[derive(Clone, Copy, Debug)]
pub(crate) enum AttemptEnd<'a> {
    /// With a response the policy retries.
    Status(u16),
    /// Without a response (the error's response flag).
    Failed(&'a str),
}

/// What an incoming request says about its trace.
#[derive(Debug, PartialEq, Eq)]
struct Incoming {
    trace_id: [u8; 16],
    span_id: Option<[u8; 8]>,
    /// `None`: the caller left the decision to us.
    sampled: Option<bool>,
}

impl Tracer {
    /// Starts the exporter thread sending to `collector`.
    pub fn start(
        settings: &sluice_config::Tracing,
        metrics: &crate::metrics::Metrics,
    ) -> std::io::Result<Arc<Tracer>> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let spans = metrics.tracing_spans();
        let exporter = Exporter {
            collector: settings.collector,
            resource: Resource {
                attributes: vec![string("service.name", &settings.service_name)],
                ..Default::default()
            },
            spans: spans.clone(),
        };
        std::thread::Builder::new()
            .name("sluice-otlp".into())
            .spawn(move || exporter.run(rx))?;
        Ok(Arc::new(Tracer {
            sampling: settings.sampling,
            tx,
            spans,
        }))
    }

    /// The trace of a request whose head just arrived, when it is sampled (the caller's
    /// decision if it made one, else the sampling ratio).
    pub(crate) fn start_request(
        self: &Arc<Self>,
        req: &http::Request<hyper::body::Incoming>,
        scheme: &'static str,
    ) -> Option<Box<TraceContext>> {
        let incoming = read_context(req.headers());
        let sampled = match incoming.as_ref().and_then(|i| i.sampled) {
            Some(s) => s,
            None => self.sampling >= 1.0 || fastrand::f64() < self.sampling,
        };
        if !sampled {
            return None;
        }
        let (trace_id, parent) = match incoming {
            Some(i) => (i.trace_id, i.span_id),
            None => (random_id(), None),
        };
        let authority = crate::message::fields::authority(req);
        Some(Box::new(TraceContext {
            tracer: Arc::clone(self),
            trace_id,
            parent,
            server: random_id(),
            client: AtomicU64::new(u64::from_be_bytes(random_id())),
            sent_at: AtomicU64::new(0),
            start: SystemTime::now(),
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            authority,
            scheme,
            user_agent: req.headers().get(http::header::USER_AGENT).cloned(),
            route: None,
            cluster: None,
            attempts: 0,
        }))
    }

    fn export(&self, span: Span) {
        if self.tx.try_send(span).is_err() {
            self.spans.inc("dropped");
        }
    }
}

impl TraceContext {
    /// Writes the upstream call's context into the upstream request: `traceparent` naming the
    /// client span (`tracestate` passes as received), and B3 headers rewritten the same way
    /// when the caller used them.
    pub(crate) fn propagate(&self, headers: &mut HeaderMap) {
        self.sent_at
            .store(nanos(SystemTime::now()).max(1), Ordering::Relaxed);
        let trace = hex(&self.trace_id);
        let span = hex(&self.client_span());
        if let Ok(v) = HeaderValue::from_str(&format!("00-{trace}-{span}-01")) {
            headers.insert("traceparent", v);
        }
        if headers.contains_key("b3")
            && let Ok(v) = HeaderValue::from_str(&format!("{trace}-{span}-1-{}", hex(&self.server)))
        {
            headers.insert("b3", v);
        }
        if headers.contains_key("x-b3-traceid") {
            for (name, value) in [
                ("x-b3-traceid", trace),
                ("x-b3-spanid", span),
                ("x-b3-parentspanid", hex(&self.server)),
                ("x-b3-sampled", "1".to_string()),
            ] {
                if let Ok(v) = HeaderValue::from_str(&value) {
                    headers.insert(name, v);
                }
            }
        }
    }

    fn client_span(&self) -> [u8; 8] {
        self.client.load(Ordering::Relaxed).to_be_bytes()
    }

    /// Starts the client span of a retry (a new span id, written upstream as for the first
    /// attempt).
    pub(crate) fn retry(&self, headers: &mut HeaderMap) {
        self.client
            .store(u64::from_be_bytes(random_id()), Ordering::Relaxed);
        self.propagate(headers);
    }

    /// Ends the client span of an attempt that is retried (`attempt`: its number, from 1) and
    /// queues it for export.
    pub(crate) fn attempt_retried(
        &self,
        cluster: &str,
        attempt: u32,
        endpoint: SocketAddr,
        end: AttemptEnd<'_>,
    ) {
        let mut attrs = Vec::with_capacity(7);
        match end {
            AttemptEnd::Status(s) => attrs.push(int("http.response.status_code", i64::from(s))),
            AttemptEnd::Failed(flag) => {
                attrs.push(string("error.type", flag));
                attrs.push(string("sluice.response_flags", flag));
            }
        }
        self.export_client(
            cluster,
            attempt,
            Some(endpoint),
            attrs,
            true,
            SystemTime::now(),
        );
    }

    /// Ends the current attempt's client span (`attempt`: its number, from 1; `attrs`: what
    /// the attempt's outcome adds) and queues it for export.
    fn export_client(
        &self,
        cluster: &str,
        attempt: u32,
        endpoint: Option<SocketAddr>,
        mut attrs: Vec<KeyValue>,
        error: bool,
        end: SystemTime,
    ) {
        attrs.push(string("http.request.method", self.method.as_str()));
        attrs.push(string("sluice.cluster", cluster));
        if let Some(e) = endpoint {
            attrs.push(string("server.address", &e.ip().to_string()));
            attrs.push(int("server.port", i64::from(e.port())));
        }
        if attempt > 1 {
            attrs.push(int("http.request.resend_count", i64::from(attempt - 1)));
        }
        self.tracer.export(Span {
            trace_id: self.trace_id.to_vec(),
            span_id: self.client_span().to_vec(),
            parent_span_id: self.server.to_vec(),
            name: self.method.to_string(),
            kind: span::SpanKind::Client as i32,
            start_time_unix_nano: self.sent_at.load(Ordering::Relaxed),
            end_time_unix_nano: nanos(end),
            attributes: attrs,
            status: Some(span_status(error)),
            ..Default::default()
        });
    }

    /// Ends the request's spans and queues them for export (`upstream`: the endpoint that
    /// answered; `flag`: the response flag of a failure Sluice answered).
    pub(crate) fn finish(
        self: Box<Self>,
        status: u16,
        upstream: Option<SocketAddr>,
        flag: Option<&str>,
    ) {
        let end = SystemTime::now();
        let mut attrs = vec![
            string("http.request.method", self.method.as_str()),
            string(
                "url.path",
                self.uri.path_and_query().map_or("/", |p| p.as_str()),
            ),
            string("url.scheme", self.scheme),
            int("http.response.status_code", i64::from(status)),
            string("network.protocol.version", protocol(self.version)),
        ];
        if let Some(a) = self.authority.as_ref().and_then(|a| a.to_str().ok()) {
            attrs.push(string("server.address", a));
        }
        if let Some(ua) = self.user_agent.as_ref().and_then(|a| a.to_str().ok()) {
            attrs.push(string("user_agent.original", ua));
        }
        if let Some(r) = &self.route {
            attrs.push(string("http.route", r));
        }
        if let Some(f) = flag {
            attrs.push(string("sluice.response_flags", f));
        }
        let name = match &self.route {
            Some(r) => format!("{} {r}", self.method),
            None => self.method.to_string(),
        };
        let server = Span {
            trace_id: self.trace_id.to_vec(),
            span_id: self.server.to_vec(),
            parent_span_id: self.parent.map(|p| p.to_vec()).unwrap_or_default(),
            name,
            kind: span::SpanKind::Server as i32,
            start_time_unix_nano: nanos(self.start),
            end_time_unix_nano: nanos(end),
            attributes: attrs,
            status: Some(span_status(status >= 500)),
            ..Default::default()
        };
        if let (true, Some(cluster)) = (self.sent_at.load(Ordering::Relaxed) != 0, &self.cluster) {
            // The last attempt's span (earlier attempts ended when they were retried).
            let mut attrs = Vec::with_capacity(7);
            attrs.push(int("http.response.status_code", i64::from(status)));
            attrs.push(int("sluice.attempts", i64::from(self.attempts)));
            let error = upstream.is_none() || status >= 500;
            self.export_client(cluster, self.attempts, upstream, attrs, error, end);
        }
        self.tracer.export(server);
    }
}

fn span_status(error: bool) -> Status {
    Status {
        code: if error {
            status::StatusCode::Error
        } else {
            status::StatusCode::Unset
        } as i32,
        ..Default::default()
    }
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        _ => "1.1",
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn string(key: &str, v: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.to_string())),
        }),
        ..Default::default()
    }
}

fn int(key: &str, v: i64) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(v)),
        }),
        ..Default::default()
    }
}

/// A random, non-zero id.
fn random_id<const N: usize>() -> [u8; N] {
    loop {
        let id: [u8; N] = std::array::from_fn(|_| fastrand::u8(..));
        if id.iter().any(|b| *b != 0) {
            return id;
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Lower-case hex of exactly `N` bytes, not all zero (a 16-digit B3 trace id is widened to
/// 32 digits).
fn parse_id<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.trim();
    let padded;
    let s = if N == 16 && s.len() == 16 {
        padded = format!("{:0>32}", s);
        padded.as_str()
    } else {
        s
    };
    if s.len() != N * 2 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    out.iter().any(|b| *b != 0).then_some(out)
}

/// The caller's trace context: W3C `traceparent` first, then B3 single (`b3`), then B3
/// multi-header (`x-b3-*`). `None` when there is none (or it is malformed: a new trace).
fn read_context(h: &HeaderMap) -> Option<Incoming> {
    if let Some(tp) = h.get("traceparent").and_then(|v| v.to_str().ok()) {
        let mut p = tp.trim().split('-');
        let (version, trace, span, flags) = (p.next()?, p.next()?, p.next()?, p.next()?);
        if version.len() != 2 || version == "ff" || (version == "00" && p.next().is_some()) {
            return None;
        }
        let flags = u8::from_str_radix(flags.get(..2)?, 16).ok()?;
        return Some(Incoming {
            trace_id: parse_id(trace)?,
            span_id: Some(parse_id(span)?),
            sampled: Some(flags & 1 == 1),
        });
    }
    if let Some(b3) = h.get("b3").and_then(|v| v.to_str().ok()) {
        let parts: Vec<&str> = b3.trim().split('-').collect();
        let decision = |d: &str| match d {
            "1" | "d" => Some(true),
            "0" => Some(false),
            _ => None,
        };
        return match parts.as_slice() {
            // A decision alone: honoured for a new trace.
            [d] => decision(d).map(|sampled| Incoming {
                trace_id: random_id(),
                span_id: None,
                sampled: Some(sampled),
            }),
            [trace, span, rest @ ..] => Some(Incoming {
                trace_id: parse_id(trace)?,
                span_id: Some(parse_id(span)?),
                sampled: rest.first().and_then(|d| decision(d)),
            }),
            _ => None,
        };
    }
    let trace = h.get("x-b3-traceid").and_then(|v| v.to_str().ok())?;
    let span = h.get("x-b3-spanid").and_then(|v| v.to_str().ok())?;
    let sampled = if h.get("x-b3-flags").is_some_and(|v| v == "1") {
        Some(true)
    } else {
        match h.get("x-b3-sampled").and_then(|v| v.to_str().ok()) {
            Some("1" | "true") => Some(true),
            Some("0" | "false") => Some(false),
            _ => None,
        }
    };
    Some(Incoming {
        trace_id: parse_id(trace)?,
        span_id: Some(parse_id(span)?),
        sampled,
    })
}

/// The exporter thread's state.
struct Exporter {
    collector: SocketAddr,
    resource: Resource,
    spans: crate::metrics::LabelledCounters<3>,
}

impl Exporter {
    /// Batches what is queued (up to [`BATCH`] spans or [`LINGER`] after the first) and sends
    /// each batch; a failed export drops its spans (counted) and the next batch tries again.
    fn run(self, mut rx: mpsc::Receiver<Span>) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "tracing: exporter runtime failed to start; spans are dropped");
                return;
            }
        };
        rt.block_on(async move {
            let endpoint = match tonic::transport::Endpoint::from_shared(format!(
                "http://{}",
                self.collector
            )) {
                Ok(e) => e
                    .connect_timeout(Duration::from_secs(2))
                    .timeout(Duration::from_secs(5)),
                Err(e) => {
                    tracing::error!(error = %e, "tracing: bad collector address");
                    return;
                }
            };
            let mut client = TraceServiceClient::new(endpoint.connect_lazy());
            let mut failing = false;
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                let deadline = tokio::time::Instant::now() + LINGER;
                while batch.len() < BATCH {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(s)) => batch.push(s),
                        Ok(None) | Err(_) => break,
                    }
                }
                let n = batch.len() as u64;
                let request = ExportTraceServiceRequest {
                    resource_spans: vec![ResourceSpans {
                        resource: Some(self.resource.clone()),
                        scope_spans: vec![ScopeSpans {
                            scope: Some(InstrumentationScope {
                                name: "sluice".into(),
                                version: env!("CARGO_PKG_VERSION").into(),
                                ..Default::default()
                            }),
                            spans: batch,
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                };
                match client.export(request).await {
                    Ok(_) => {
                        self.spans.inc_by("exported", n);
                        if failing {
                            tracing::info!(collector = %self.collector, "tracing: exporting again");
                            failing = false;
                        }
                    }
                    Err(e) => {
                        self.spans.inc_by("failed", n);
                        if !failing {
                            tracing::warn!(collector = %self.collector, error = %e, "tracing: export failed; spans are dropped until the collector answers");
                            failing = true;
                        }
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn w3c_and_b3_contexts_are_read_and_bad_ones_start_a_new_trace() {
        let w3c = read_context(&headers(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )]))
        .unwrap();
        assert_eq!(hex(&w3c.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&w3c.span_id.unwrap()), "00f067aa0ba902b7");
        assert_eq!(w3c.sampled, Some(true));
        let unsampled = read_context(&headers(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        )]))
        .unwrap();
        assert_eq!(unsampled.sampled, Some(false));
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(
                read_context(&headers(&[("traceparent", bad)])),
                None,
                "{bad}"
            );
        }
        let b3 = read_context(&headers(&[("b3", "a3ce929d0e0e4736-00f067aa0ba902b7-1")])).unwrap();
        assert_eq!(hex(&b3.trace_id), "0000000000000000a3ce929d0e0e4736");
        assert_eq!(b3.sampled, Some(true));
        assert_eq!(
            read_context(&headers(&[("b3", "0")])).unwrap().sampled,
            Some(false)
        );
        let multi = read_context(&headers(&[
            ("x-b3-traceid", "4bf92f3577b34da6a3ce929d0e0e4736"),
            ("x-b3-spanid", "00f067aa0ba902b7"),
        ]))
        .unwrap();
        assert_eq!(multi.sampled, None);
        assert_eq!(hex(&multi.span_id.unwrap()), "00f067aa0ba902b7");
    }

    #[test]
    fn propagation_names_the_client_span_in_every_format_the_caller_used() {
        let (tx, _rx) = mpsc::channel(1);
        let metrics = crate::metrics::Metrics::new();
        let tracer = Arc::new(Tracer {
            sampling: 1.0,
            tx,
            spans: metrics.tracing_spans(),
        });
        let req = http::Request::builder()
            .uri("/x")
            .header("b3", "a3ce929d0e0e4736-00f067aa0ba902b7-1")
            .body(())
            .unwrap();
        let incoming = read_context(req.headers()).unwrap();
        let ctx = TraceContext {
            tracer,
            trace_id: incoming.trace_id,
            parent: incoming.span_id,
            server: [1; 8],
            client: AtomicU64::new(u64::from_be_bytes([2; 8])),
            sent_at: AtomicU64::new(0),
            start: SystemTime::now(),
            method: Method::GET,
            uri: req.uri().clone(),
            version: Version::HTTP_11,
            authority: None,
            scheme: "http",
            user_agent: None,
            route: None,
            cluster: None,
            attempts: 0,
        };
        let mut h = req.headers().clone();
        ctx.propagate(&mut h);
        assert_eq!(
            h["traceparent"],
            "00-0000000000000000a3ce929d0e0e4736-0202020202020202-01"
        );
        assert_eq!(
            h["b3"],
            "0000000000000000a3ce929d0e0e4736-0202020202020202-1-0101010101010101"
        );
        assert!(ctx.sent_at.load(Ordering::Relaxed) > 0);
        // A retry names a new client span, in both header styles.
        ctx.retry(&mut h);
        let span = hex(&ctx.client_span());
        assert_ne!(span, "0202020202020202");
        assert_eq!(
            h["traceparent"],
            format!("00-0000000000000000a3ce929d0e0e4736-{span}-01").as_str()
        );
        assert!(h["b3"].to_str().unwrap().contains(&span));
    }
}
