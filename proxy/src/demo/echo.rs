//! An httpbin-style echo server. Every response carries `x-upstream: <name>`.
//!
//! | path | answer |
//! |---|---|
//! | `/status/{code}` | that status |
//! | `/delay/{ms}` | waits, then the echo JSON |
//! | `/bytes/{n}` | `n` bytes (`?chunked=1`: no length; `?trailers=1`: `x-checksum` trailer) |
//! | `/echo` | the request body streamed back, request trailers returned as trailers |
//! | WebSocket upgrade on any path | frames echoed |
//! | anything else | JSON: method, path, query, version, headers, body size and SHA-256, trailers |

use crate::exec::LocalExec;
use crate::listener::detect;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, TRAILER};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// Serves the echo app on `listener` until the task is dropped. Must run inside a `LocalSet`.
pub async fn serve_echo(listener: TcpListener, name: &str) {
    let name: Rc<str> = Rc::from(name);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let name = Rc::clone(&name);
        tokio::task::spawn_local(async move {
            let Ok(Some(http2)) = detect::detect(&stream).await else {
                return;
            };
            let io = TokioIo::new(stream);
            let svc = service_fn(move |req| respond(Rc::clone(&name), req));
            let result = if http2 {
                hyper::server::conn::http2::Builder::new(LocalExec)
                    .serve_connection(io, svc)
                    .await
            } else {
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .with_upgrades()
                    .await
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "echo connection error");
            }
        });
    }
}

/// Starts the echo app on its own thread; returns the bound address.
pub fn spawn_echo(addr: SocketAddr, name: &str) -> std::io::Result<SocketAddr> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let bound = std_listener.local_addr()?;
    let name = name.to_string();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name(format!("echo-{name}"))
        .spawn(move || {
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, async move {
                match TcpListener::from_std(std_listener) {
                    Ok(l) => serve_echo(l, &name).await,
                    Err(e) => tracing::error!(error = %e, "echo listener"),
                }
            });
        })?;
    Ok(bound)
}

/// Starts a TCP echo server on its own thread; returns the bound address.
pub fn spawn_tcp_echo(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let bound = std_listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("tcp-echo".into())
        .spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = TcpListener::from_std(std_listener) else {
                    return;
                };
                while let Ok((mut s, _)) = listener.accept().await {
                    tokio::spawn(async move {
                        let (mut r, mut w) = s.split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                        let _ = w.shutdown().await;
                    });
                }
            });
        })?;
    Ok(bound)
}

async fn respond(name: Rc<str>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let head = req.method() == http::Method::HEAD;
    let mut resp = route(req).await;
    if head {
        // hyper's HTTP/2 server would send the body of a HEAD response; keep only the headers.
        let (parts, _) = resp.into_parts();
        resp = Response::from_parts(
            parts,
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
    }
    if let Ok(v) = HeaderValue::from_str(&name) {
        resp.headers_mut().insert("x-upstream", v);
    }
    Ok(resp)
}

async fn route(req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let flag = |k: &str| query.split('&').any(|p| p == format!("{k}=1"));
    if crate::http::headers::is_websocket_upgrade(req.method(), req.version(), req.headers()) {
        return super::websocket::accept(req);
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let status = code.parse().ok().and_then(|c| StatusCode::from_u16(c).ok());
        return match status {
            Some(s) => {
                let mut r = full(Bytes::from(format!("status {}\n", s.as_u16())));
                *r.status_mut() = s;
                r
            }
            None => bad("bad status code"),
        };
    }
    if let Some(ms) = path.strip_prefix("/delay/") {
        let Ok(ms) = ms.parse::<u64>() else {
            return bad("bad delay");
        };
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return reflect(req).await;
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        let Ok(n) = n.parse::<u64>() else {
            return bad("bad size");
        };
        return bytes(n, flag("chunked"), flag("trailers"));
    }
    if path == "/echo" {
        return echo(req);
    }
    reflect(req).await
}

fn full(b: Bytes) -> Response<Body> {
    Response::new(Full::new(b).map_err(|never| match never {}).boxed_unsync())
}

fn bad(msg: impl Into<Bytes>) -> Response<Body> {
    let mut r = full(msg.into());
    *r.status_mut() = StatusCode::BAD_REQUEST;
    r
}

/// The deterministic byte pattern of `/bytes/{n}`: byte `i` is `i % 251`.
pub fn pattern(offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((offset + i) % 251) as u8)
        .collect()
}

fn bytes(n: u64, chunked: bool, trailers: bool) -> Response<Body> {
    const CHUNK: u64 = 16 * 1024;
    let frames = frames::Frames::new(n, CHUNK, trailers);
    let mut r = Response::new(StreamBody::new(frames).boxed_unsync());
    if !chunked && !trailers {
        r.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(n));
    }
    if trailers {
        r.headers_mut()
            .insert(TRAILER, HeaderValue::from_static("x-checksum"));
    }
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    r
}

fn echo(req: Request<Incoming>) -> Response<Body> {
    let announced = req.headers().get(TRAILER).cloned();
    let ct = req.headers().get(CONTENT_TYPE).cloned();
    let len = req.headers().get(CONTENT_LENGTH).cloned();
    let mut r = Response::new(req.into_body().boxed_unsync());
    if let Some(t) = announced {
        r.headers_mut().insert(TRAILER, t);
    }
    if let Some(ct) = ct {
        r.headers_mut().insert(CONTENT_TYPE, ct);
    }
    if let Some(len) = len {
        r.headers_mut().insert(CONTENT_LENGTH, len);
    }
    r
}

fn header_json(h: &HeaderMap) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for name in h.keys() {
        let values: Vec<serde_json::Value> = h
            .get_all(name)
            .iter()
            .map(|v| serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        map.insert(name.as_str().to_string(), serde_json::Value::Array(values));
    }
    serde_json::Value::Object(map)
}

async fn reflect(req: Request<Incoming>) -> Response<Body> {
    let (parts, mut body) = req.into_parts();
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => match f.into_data() {
                Ok(d) => {
                    size += d.len() as u64;
                    hasher.update(&d);
                }
                Err(f) => trailers = f.into_trailers().ok(),
            },
            Err(e) => return bad(format!("body error: {e}")),
        }
    }
    let json = serde_json::json!({
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "headers": header_json(&parts.headers),
        "body_bytes": size,
        "body_sha256": hex(&hasher.finalize()),
        "trailers": trailers.as_ref().map(header_json),
    });
    let mut r = full(Bytes::from(serde_json::to_vec(&json).unwrap_or_default()));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Lowercase hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The `/bytes` body: data frames produced on demand, then an optional checksum trailer.
mod frames {
    use super::*;
    use futures_core::Stream;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    pub(super) struct Frames {
        left: u64,
        offset: u64,
        chunk: u64,
        hasher: Option<Sha256>,
        done: bool,
    }

    impl Frames {
        pub(super) fn new(n: u64, chunk: u64, trailers: bool) -> Self {
            Frames {
                left: n,
                offset: 0,
                chunk,
                hasher: trailers.then(Sha256::new),
                done: false,
            }
        }
    }

    impl Stream for Frames {
        type Item = Result<Frame<Bytes>, hyper::Error>;
        fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            let this = &mut *self;
            if this.left > 0 {
                let len = this.left.min(this.chunk) as usize;
                let data = pattern(this.offset, len);
                if let Some(h) = &mut this.hasher {
                    h.update(&data);
                }
                this.offset += len as u64;
                this.left -= len as u64;
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(data)))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            this.done = true;
            match this.hasher.take() {
                Some(h) => {
                    let mut t = HeaderMap::new();
                    if let Ok(v) = HeaderValue::from_str(&hex(&h.finalize())) {
                        t.insert("x-checksum", v);
                    }
                    Poll::Ready(Some(Ok(Frame::trailers(t))))
                }
                None => Poll::Ready(None),
            }
        }
    }
}
