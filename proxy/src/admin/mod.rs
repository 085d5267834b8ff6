//! The admin API, served on the control thread's runtime so it answers even when the workers
//! are saturated: `/ready`, `/live`, `/listeners`, `/metrics` (`/stats/prometheus`),
//! `/config_dump`, `/server_info`. Unauthenticated: bind it to loopback.

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
}

impl AdminState {
    pub(crate) fn listeners(&self) -> Vec<BoundListener> {
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Serves the admin API until the task is dropped.
pub(crate) async fn serve(listener: tokio::net::TcpListener, shared: Arc<AdminState>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(handle(&shared, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .max_headers(64)
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection error");
            }
        });
    }
}

fn handle(shared: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let get_only = matches!(
        path,
        "/ready"
            | "/live"
            | "/listeners"
            | "/metrics"
            | "/stats/prometheus"
            | "/config_dump"
            | "/server_info"
    );
    if get_only && req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut()
            .insert(ALLOW, http::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path {
        "/ready" => {
            if shared.live.is_ready() {
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
            let mut r = Response::new(Full::new(Bytes::from(shared.live.metrics.encode_text())));
            r.headers_mut().insert(
                CONTENT_TYPE,
                http::HeaderValue::from_static(crate::metrics::Metrics::TEXT_CONTENT_TYPE),
            );
            r
        }
        "/config_dump" => {
            let snap = shared.live.snapshot();
            json(&serde_json::json!({
                "generation": snap.generation,
                "config": &*snap.config,
            }))
        }
        "/server_info" => json(&serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "state": if shared.live.is_draining() { "DRAINING" } else if shared.live.is_ready() { "LIVE" } else { "INITIALIZING" },
            "uptime_seconds": shared.started.elapsed().as_secs(),
            "workers": shared.workers,
            "generation": shared.live.generation(),
        })),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
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
