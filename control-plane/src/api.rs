//! The control plane's HTTP server (default `127.0.0.1:7181`): the registry API, `/status`
//! (connected proxies, what each ACKed and NACKed), `/metrics`, `/ready` and `/live`.
//!
//! ```text
//! PUT    /v1/registry/CLUSTER            register or renew (heartbeat) an endpoint (JSON body,
//!                                        see source::registry::Registration) → 200 / 400 / 507
//! DELETE /v1/registry/CLUSTER/ADDRESS    deregister → 200, or 404 when unknown
//! GET    /v1/registry                    every registration (JSON)
//! GET    /status                         connected proxies (JSON)
//! GET    /metrics                        Prometheus text
//! GET    /ready, /live
//! ```
//!
//! Bodies are capped at 64 KiB, request heads time out, and at most 1024 connections are served
//! at once. The API has no authentication: bind it to loopback or a trusted network (the
//! trust model is in docs/architecture.md "Control plane").

use crate::source::registry::{Registration, Registry, RegistryError};
use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// Largest request body accepted.
const MAX_BODY: usize = 64 << 10;
/// Most connections served at once.
const MAX_CONNECTIONS: usize = 1024;
/// Time allowed for a request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for a whole request (head, body and answer).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

type Render = Box<dyn Fn() -> String + Send + Sync>;

/// What the HTTP server reads and changes.
pub struct HttpState {
    /// The registry.
    pub registry: Mutex<Registry>,
    /// Woken when the registry's endpoint sets change (the control loop rebuilds snapshots).
    pub changed: tokio::sync::Notify,
    /// `/status` as JSON.
    pub status: Render,
    /// `/metrics` as Prometheus text.
    pub metrics: Render,
    /// True once the first snapshot is built.
    pub ready: std::sync::atomic::AtomicBool,
    /// The CA's trust bundle (PEM), served at `/v1/ca/bundle` (public: it holds no key).
    pub bundle: Option<String>,
}

impl std::fmt::Debug for HttpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpState").finish_non_exhaustive()
    }
}

impl HttpState {
    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Serves until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<HttpState>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "control plane http accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let _slot = slot;
            let svc = service_fn(move |req| {
                let state = Arc::clone(&state);
                async move {
                    let answer = tokio::time::timeout(REQUEST_TIMEOUT, handle(&state, req)).await;
                    Ok::<_, Infallible>(answer.unwrap_or_else(|_| {
                        text(StatusCode::REQUEST_TIMEOUT, "request timed out\n")
                    }))
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .max_headers(64)
                .max_buf_size(16 << 10)
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "control plane http connection error");
            }
        });
    }
}

async fn handle(state: &HttpState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (segments.as_slice(), &method) {
        (["ready"], &Method::GET) => {
            if state.ready.load(std::sync::atomic::Ordering::Acquire) {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        (["live"], &Method::GET) => text(StatusCode::OK, "live\n"),
        (["v1", "ca", "bundle"], &Method::GET) => match &state.bundle {
            Some(pem) => {
                let mut r = text(StatusCode::OK, pem.clone());
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    http::HeaderValue::from_static("application/x-pem-file"),
                );
                r
            }
            None => text(
                StatusCode::NOT_FOUND,
                "no CA is configured (settings: `ca`)\n",
            ),
        },
        (["status"], &Method::GET) => json(StatusCode::OK, (state.status)()),
        (["metrics"], &Method::GET) => {
            let mut r = text(StatusCode::OK, (state.metrics)());
            r.headers_mut().insert(
                CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        (["v1", "registry"], &Method::GET) => {
            let list = state.registry().list(Instant::now());
            json(
                StatusCode::OK,
                serde_json::to_string_pretty(&list).unwrap_or_default() + "\n",
            )
        }
        (["v1", "registry", cluster], &Method::PUT) => {
            let cluster = cluster.to_string();
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return text(StatusCode::BAD_REQUEST, format!("cannot read body: {e}\n")),
            };
            let reg: Registration = match serde_json::from_slice(&body) {
                Ok(r) => r,
                Err(e) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("invalid registration: {e}\n"),
                    );
                }
            };
            let address = reg.address;
            let result = state.registry().register(&cluster, reg, Instant::now());
            match result {
                Ok(changed) => {
                    if changed {
                        tracing::info!(%cluster, %address, "endpoint registered");
                        state.changed.notify_one();
                    } else {
                        tracing::debug!(%cluster, %address, "registration renewed");
                    }
                    text(
                        StatusCode::OK,
                        if changed { "registered\n" } else { "renewed\n" },
                    )
                }
                Err(e @ RegistryError::Invalid(_)) => text(
                    StatusCode::BAD_REQUEST,
                    format!("invalid registration: {e}\n"),
                ),
                Err(e @ RegistryError::Full) => {
                    text(StatusCode::INSUFFICIENT_STORAGE, format!("{e}\n"))
                }
            }
        }
        (["v1", "registry", cluster, address], &Method::DELETE) => {
            let Ok(addr) = address.parse() else {
                return text(
                    StatusCode::BAD_REQUEST,
                    "invalid address: expected ip:port\n",
                );
            };
            let removed = state.registry().deregister(cluster, addr);
            if removed {
                tracing::info!(%cluster, address = %addr, "endpoint deregistered");
                state.changed.notify_one();
                text(StatusCode::OK, "deregistered\n")
            } else {
                text(StatusCode::NOT_FOUND, "not registered\n")
            }
        }
        (["ready" | "live" | "status" | "metrics"], _) | (["v1", "registry"], _) => allow(&["GET"]),
        (["v1", "registry", _], _) => allow(&["PUT"]),
        (["v1", "registry", _, _], _) => allow(&["DELETE"]),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; endpoints: /status /metrics /ready /live /v1/registry\n",
        ),
    }
}

fn allow(methods: &[&str]) -> Response<Full<Bytes>> {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    if let Ok(v) = http::HeaderValue::from_str(&methods.join(", ")) {
        r.headers_mut().insert(ALLOW, v);
    }
    r
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

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = text(status, body);
    r.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}
