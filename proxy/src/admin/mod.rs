//! The admin API, served on the control thread's runtime so it answers even when the workers
//! are saturated: `/ready`, `/live`, `/listeners`, `/metrics` (`/stats/prometheus`),
//! `/config_dump`, `/server_info`, `/clusters` (endpoints with their health flags), and the
//! mutations, POST only (Envoy's): `/drain_listeners`, `/healthcheck/fail`,
//! `/healthcheck/ok`, `/logging?level=…`, `/quitquitquit` (from loopback only).
//! Unauthenticated: config validation refuses a non-loopback address unless
//! `admin.allow_remote` is set; connections are capped and timed out, and the config dump
//! redacts header values.

mod dump;

use crate::listener::BoundListener;
use crate::state::Live;
use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::time::Instant;

/// What the admin API reads.
#[derive(Debug)]
pub(crate) struct AdminState {
    pub(crate) live: Arc<Live>,
    /// Bound listeners, kept current by the listener reconciler.
    pub(crate) listeners: Arc<Mutex<Vec<BoundListener>>>,
    pub(crate) started: Instant,
    pub(crate) workers: usize,
    /// Most connections served at once; more are closed at accept.
    pub(crate) max_connections: usize,
    /// Time allowed for each request head, and between requests on a kept-alive connection.
    pub(crate) header_timeout: std::time::Duration,
    /// What the mutations ask the control loop to do.
    pub(crate) actions: tokio::sync::mpsc::UnboundedSender<AdminAction>,
    /// Runtime log filter changes (`POST /logging`).
    pub(crate) log_level: Option<LogLevelHook>,
}

/// Sets the log filter from a `tracing` directive (`debug`, `info,sluice_proxy=trace`);
/// returns why it could not.
#[derive(Clone)]
pub struct LogLevelHook(pub Arc<SetLogFilter>);

/// The function behind a [`LogLevelHook`].
pub type SetLogFilter = dyn Fn(&str) -> Result<(), String> + Send + Sync;

impl std::fmt::Debug for LogLevelHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogLevelHook")
    }
}

/// A mutation the control loop carries out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AdminAction {
    /// Stop accepting on every listener and drain (the process keeps running).
    DrainListeners,
    /// Shut down gracefully, as on SIGTERM.
    Quit,
}

impl AdminState {
    pub(crate) fn listeners(&self) -> Vec<BoundListener> {
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Longest an admin connection lives, whatever it does (a client that stops reading a
/// `/config_dump` cannot hold it forever).
pub(crate) const MAX_CONNECTION_AGE: std::time::Duration = std::time::Duration::from_secs(300);

/// Serves the admin API until the task is dropped: at most `max_connections` at once, each with
/// a header timeout and a maximum age.
pub(crate) async fn serve(listener: tokio::net::TcpListener, shared: Arc<AdminState>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(shared.max_connections));
    let header_timeout = shared.header_timeout;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(%peer, limit = shared.max_connections, "admin connection refused: too many open");
            drop(stream);
            continue;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let _slot = slot;
            let svc = service_fn(move |req| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(handle(&shared, &req, peer)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .max_headers(64)
                .max_buf_size(16 << 10)
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), svc);
            match tokio::time::timeout(MAX_CONNECTION_AGE, conn).await {
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "admin connection error"),
                Err(_) => tracing::debug!(%peer, "admin connection closed at its maximum age"),
                Ok(Ok(())) => {}
            }
        });
    }
}

fn handle(
    shared: &AdminState,
    req: &Request<Incoming>,
    peer: std::net::SocketAddr,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let post_only = matches!(
        path,
        "/drain_listeners" | "/healthcheck/fail" | "/healthcheck/ok" | "/logging" | "/quitquitquit"
    );
    if post_only {
        if req.method() != Method::POST {
            let mut r = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed: use POST\n",
            );
            r.headers_mut()
                .insert(ALLOW, http::HeaderValue::from_static("POST"));
            return r;
        }
        return mutate(shared, path, req.uri().query(), peer);
    }
    let get_only = matches!(
        path,
        "/" | "/ready"
            | "/live"
            | "/listeners"
            | "/metrics"
            | "/stats/prometheus"
            | "/config_dump"
            | "/server_info"
            | "/clusters"
            | "/explain"
    );
    if get_only && req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut()
            .insert(ALLOW, http::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path {
        "/ready" => {
            if shared.live.is_health_failed() {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "failing (POST /healthcheck/ok to restore)\n",
                )
            } else if shared.live.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else if shared.live.is_draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        "/live" => text(StatusCode::OK, "live\n"),
        "/listeners" => json(&serde_json::Value::Array(
            shared
                .listeners()
                .into_iter()
                .map(|l| {
                    serde_json::json!({
                        "name": l.name,
                        "address": l.address.to_string(),
                        "protocol": l.protocol,
                    })
                })
                .collect(),
        )),
        "/metrics" | "/stats/prometheus" => {
            crate::health::update_endpoint_gauges(
                &shared.live.metrics,
                &shared.live.snapshot().clusters,
            );
            // Negotiated by `Accept`: protobuf (with native histograms) or OpenMetrics 1.0
            // when asked for, by weight, else the Prometheus text format 0.0.4.
            let metrics = &shared.live.metrics;
            use crate::metrics::Metrics;
            let (body, content_type) = match exposition(req.headers()) {
                Exposition::Protobuf => (
                    Bytes::from(metrics.encode_protobuf()),
                    Metrics::PROTOBUF_CONTENT_TYPE,
                ),
                Exposition::OpenMetrics => (
                    Bytes::from(metrics.encode_openmetrics()),
                    Metrics::OPENMETRICS_CONTENT_TYPE,
                ),
                Exposition::Text => (
                    Bytes::from(metrics.encode_text()),
                    Metrics::TEXT_CONTENT_TYPE,
                ),
            };
            let mut r = Response::new(Full::new(body));
            r.headers_mut()
                .insert(CONTENT_TYPE, http::HeaderValue::from_static(content_type));
            r
        }
        "/config_dump" => {
            let snap = shared.live.snapshot();
            let mut config = dump::effective(&snap.config);
            redact(&mut config);
            let resources: Vec<serde_json::Value> = snap
                .versions
                .iter()
                .map(|v| {
                    serde_json::json!({
                        "type": v.kind.as_str(),
                        "name": v.name,
                        "generation": v.generation,
                        "origin": v.origin.as_str(),
                    })
                })
                .collect();
            json(&serde_json::json!({
                "generation": snap.generation,
                "config": config,
                "resources": resources,
            }))
        }
        "/server_info" => json(&serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "state": if shared.live.is_draining() { "DRAINING" } else if shared.live.is_ready() { "LIVE" } else { "INITIALIZING" },
            "uptime_seconds": shared.started.elapsed().as_secs(),
            "workers": shared.workers,
            "generation": shared.live.generation(),
            "health_check_failed": shared.live.is_health_failed(),
        })),
        "/clusters" => json(&clusters(&shared.live)),
        "/" => text(StatusCode::OK, INDEX),
        "/explain" => {
            let snap = shared.live.snapshot();
            match explain_query(req.uri().query())
                .and_then(|q| crate::explain::explain(&snap.config, &q))
            {
                Ok(e) => json(&serde_json::to_value(e.with_live(&shared.live)).unwrap_or_default()),
                Err(why) => text(StatusCode::BAD_REQUEST, format!("{why}\n")),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; GET / lists the admin endpoints\n",
        ),
    }
}

/// `GET /explain?method=GET&url=http%3A%2F%2Fhost%2Fpath&header=name%3A%20value&listener=L&sni=S`
/// (`header` repeats; `method` defaults to GET) → the query `sluice explain` runs.
fn explain_query(query: Option<&str>) -> Result<crate::explain::Query, String> {
    let mut q = crate::explain::Query {
        method: "GET".into(),
        ..Default::default()
    };
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = crate::route::percent_decode(v).into_owned();
        match k {
            "method" => q.method = v,
            "url" => q.url = v,
            "listener" => q.listener = Some(v),
            "sni" => q.sni = Some(v),
            "header" => {
                let (name, value) = v
                    .split_once(':')
                    .ok_or_else(|| format!("header `{v}`: write `name: value`"))?;
                q.headers.push((name.trim().into(), value.trim().into()));
            }
            other => {
                return Err(format!(
                    "unknown parameter `{other}` (method, url, header, listener, sni)"
                ));
            }
        }
    }
    if q.url.is_empty() {
        return Err("`url` is required: /explain?url=http%3A%2F%2Fhost%2Fpath".into());
    }
    Ok(q)
}

/// `GET /`: what the admin API serves.
const INDEX: &str = "\
Sluice admin API
GET  /                      this list
GET  /ready                 200 when serving (503 while starting, draining or after /healthcheck/fail)
GET  /live                  200 while the process runs
GET  /metrics               Prometheus metrics (text 0.0.4, OpenMetrics 1.0 or protobuf, by Accept)
GET  /stats/prometheus      the same as /metrics
GET  /server_info           version, uptime, state, config generation
GET  /config_dump           the live config as JSON, secrets redacted
GET  /clusters              per endpoint: health, ejection, requests, errors, weight
GET  /explain?url=URL       which listener, route and cluster a request gets, and why (sluice explain)
GET  /listeners             listeners and their bound addresses
POST /drain_listeners       stop accepting; finish what is in flight
POST /healthcheck/fail      make /ready answer 503
POST /healthcheck/ok        undo /healthcheck/fail
POST /logging?level=LEVEL   change the log filter (`debug`, `sluice_proxy=trace`, ...)
POST /quitquitquit          drain and exit (from loopback only)
";

/// The formats `/metrics` speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exposition {
    Text,
    OpenMetrics,
    Protobuf,
}

/// The format `Accept` weighs highest (the first named on a tie); text 0.0.4 when it names
/// none Sluice speaks. Protobuf counts only as `io.prometheus.client.MetricFamily`,
/// length-delimited, the form Prometheus asks for.
fn exposition(headers: &http::HeaderMap) -> Exposition {
    let mut best = (Exposition::Text, 0.0f32);
    for item in headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let mut parts = item.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let mut q = 1.0f32;
        let (mut proto, mut delimited) = (false, false);
        for p in parts {
            let Some((k, v)) = p.split_once('=') else {
                continue;
            };
            match k.trim().to_ascii_lowercase().as_str() {
                "q" => q = v.trim().parse().unwrap_or(0.0),
                "proto" => proto = v.trim() == "io.prometheus.client.MetricFamily",
                "encoding" => delimited = v.trim().eq_ignore_ascii_case("delimited"),
                _ => {}
            }
        }
        let format = match media.as_str() {
            "application/vnd.google.protobuf" if proto && delimited => Exposition::Protobuf,
            "application/openmetrics-text" => Exposition::OpenMetrics,
            "text/plain" => Exposition::Text,
            _ => continue,
        };
        if q > best.1 {
            best = (format, q);
        }
    }
    best.0
}

/// The POST endpoints.
fn mutate(
    shared: &AdminState,
    path: &str,
    query: Option<&str>,
    peer: std::net::SocketAddr,
) -> Response<Full<Bytes>> {
    let act = |action: AdminAction| {
        if shared.actions.send(action).is_ok() {
            text(StatusCode::OK, "OK\n")
        } else {
            text(StatusCode::SERVICE_UNAVAILABLE, "the proxy is stopping\n")
        }
    };
    match path {
        "/drain_listeners" => act(AdminAction::DrainListeners),
        "/quitquitquit" if !peer.ip().is_loopback() => text(
            StatusCode::FORBIDDEN,
            "/quitquitquit is accepted from loopback only\n",
        ),
        "/quitquitquit" => act(AdminAction::Quit),
        "/healthcheck/fail" | "/healthcheck/ok" => {
            let fail = path == "/healthcheck/fail";
            shared.live.set_health_failed(fail);
            tracing::warn!(%peer, failing = fail, "admin: health check set");
            text(StatusCode::OK, "OK\n")
        }
        _ => {
            let Some(hook) = &shared.log_level else {
                return text(
                    StatusCode::NOT_IMPLEMENTED,
                    "this process does not support changing its log level\n",
                );
            };
            let level = query.and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("level="))
                    .map(percent_decode)
            });
            let Some(level) = level.filter(|l| !l.is_empty()) else {
                return text(
                    StatusCode::BAD_REQUEST,
                    "give ?level=… (trace, debug, info, warn, error, or directives such as info,sluice_proxy=debug)\n",
                );
            };
            match (hook.0)(&level) {
                Ok(()) => {
                    tracing::warn!(%peer, level = %level, "admin: log level changed");
                    owned_text(StatusCode::OK, format!("log level: {level}\n"))
                }
                Err(e) => owned_text(StatusCode::BAD_REQUEST, format!("invalid level: {e}\n")),
            }
        }
    }
}

/// `%XX` escapes decoded (a directive's `=` and `,` arrive escaped from some clients).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes.get(i), bytes.get(i + 1), bytes.get(i + 2)) {
            (Some(b'%'), Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (Some(b'+'), _, _) => {
                out.push(b' ');
                i += 1;
            }
            (Some(&b), _, _) => {
                out.push(b);
                i += 1;
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn owned_text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Every cluster's endpoints: weight, health flags, outlier ejection, requests in flight,
/// attempts and errors (Envoy `/clusters`, JSON only).
fn clusters(live: &Live) -> serde_json::Value {
    let snapshot = live.snapshot();
    let mut names: Vec<&String> = snapshot.clusters.keys().collect();
    names.sort();
    let list = names.into_iter().filter_map(|name| {
        let set = snapshot.clusters.get(name)?.endpoints();
        let endpoints: Vec<serde_json::Value> = set
            .endpoints
            .iter()
            .map(|e| {
                let flags = e.state.flag_names();
                let (total, errors) = e.state.totals();
                serde_json::json!({
                    "address": e.address.to_string(),
                    "weight": e.weight,
                    "healthy": e.state.is_healthy(),
                    "health_flags": flags,
                    "ejected": e.state.has(crate::endpoint::Health::FAILED_OUTLIER),
                    "ejections": e.state.outlier.ejections(),
                    "active_requests": e.state.active_requests(),
                    "total_requests": total,
                    "errors": errors,
                })
            })
            .collect();
        Some(serde_json::json!({ "name": name, "endpoints": endpoints }))
    });
    serde_json::Value::Array(list.collect())
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(v: &serde_json::Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(v).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// What a redacted value reads as.
pub(crate) const REDACTED: &str = "[redacted]";

/// Replaces values that may be credentials in a config dump: header values that header
/// mutations add or set (tokens, API keys) and the values header matchers compare against
/// (a route gated on a secret header). Names stay, so the dump still shows what is configured.
fn redact(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                match key.as_str() {
                    "request_headers" | "response_headers" => {
                        if let Value::Object(m) = child {
                            for op in ["add", "set"] {
                                if let Some(Value::Object(values)) = m.get_mut(op) {
                                    values.values_mut().for_each(|x| *x = Value::from(REDACTED));
                                }
                            }
                        }
                    }
                    "headers" => {
                        if let Value::Array(matchers) = child {
                            for m in matchers.iter_mut().filter_map(Value::as_object_mut) {
                                for field in ["exact", "prefix", "suffix", "regex"] {
                                    if let Some(x) = m.get_mut(field) {
                                        *x = Value::from(REDACTED);
                                    }
                                }
                            }
                        }
                    }
                    _ => redact(child),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

#[cfg(test)]
mod accept_tests {
    use super::{Exposition, exposition};

    fn accept(v: &str) -> Exposition {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::ACCEPT, v.parse().unwrap());
        exposition(&h)
    }

    #[test]
    fn the_format_asked_for_by_weight() {
        // What Prometheus 2.x sends.
        assert_eq!(
            accept(
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
            ),
            Exposition::OpenMetrics
        );
        // ... and with native histograms enabled.
        assert_eq!(
            accept(
                "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,application/openmetrics-text;version=1.0.0;q=0.8,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
            ),
            Exposition::Protobuf
        );
        // Weights decide, not order.
        assert_eq!(
            accept(
                "text/plain;version=0.0.4;q=0.3, application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.9"
            ),
            Exposition::Protobuf
        );
        // Protobuf of another message, or not delimited, is not ours.
        assert_eq!(
            accept("application/vnd.google.protobuf;proto=other.Message;encoding=delimited"),
            Exposition::Text
        );
        assert_eq!(
            accept("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily"),
            Exposition::Text
        );
        assert_eq!(accept("text/plain;version=0.0.4"), Exposition::Text);
        assert_eq!(accept("*/*"), Exposition::Text);
        assert_eq!(accept("application/openmetrics-text;q=0"), Exposition::Text);
        assert_eq!(exposition(&http::HeaderMap::new()), Exposition::Text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_redacted_and_names_kept() {
        let mut v = serde_json::json!({
            "route_tables": [{"virtual_hosts": [{
                "request_headers": {"set": {"authorization": "Bearer s3cret"}, "remove": ["x-a"]},
                "routes": [{
                    "match": {"prefix": "/", "headers": [{"name": "x-api-key", "exact": "k3y"}]},
                    "response_headers": {"add": {"x-token": "t0k"}}
                }]
            }]}]
        });
        redact(&mut v);
        let text = v.to_string();
        for secret in ["s3cret", "k3y", "t0k"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        for kept in ["authorization", "x-api-key", "x-token", "x-a", REDACTED] {
            assert!(text.contains(kept), "{kept} missing from {text}");
        }
    }
}
