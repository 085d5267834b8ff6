//! Serving one downstream HTTP connection: run hyper (HTTP/1.1 or HTTP/2, as the listener
//! detected) with the listener's limits over any byte stream, enforce the header and idle
//! timeouts, drain on request, bound a graceful close, and close HTTP/2 connections that reset
//! too many streams prematurely.

use crate::drain::Drain;
use crate::http::HttpSpec;
use crate::http::conn::{self, ConnIo, ConnState, Expired, signal};
use crate::http::forward::{self, HttpConn};
use crate::http::stream::StreamExec;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite};

/// A hyper connection that can be asked to finish gracefully.
trait Graceful: Future<Output = hyper::Result<()>> {
    fn graceful(self: Pin<&mut Self>);
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<I, S, B> Graceful for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: http_body::Body + 'static,
    B::Error: Into<BoxError>,
{
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B, E> Graceful for hyper::server::conn::http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: http_body::Body + 'static,
    B::Error: Into<BoxError>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Serves `stream` for `conn` (HTTP/2 or HTTP/1.1, as the listener detected) until it closes,
/// times out or is drained.
pub(crate) async fn serve<S>(stream: S, conn: Rc<HttpConn>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let spec = conn.spec();
    let http: &HttpSpec = &spec;
    let io = TokioIo::new(ConnIo::new(stream, Arc::clone(&conn.state)));
    let ctx = Rc::clone(&conn);
    // hyper keeps one slot per connection for the request future, sized for it, for the life of
    // the connection; boxing the future per request keeps idle connections small.
    let svc = service_fn(move |req| Box::pin(forward::handle(Rc::clone(&ctx), req)));
    let result = if !conn.state.is_http1() {
        // Boxed so that HTTP/1.1 connections (most of them) do not carry the larger HTTP/2
        // state in their task.
        // The HTTP/2 builder (its executor is this connection's) is a temporary of this block,
        // so it is not kept in the connection's task across the await.
        let h2 = {
            let exec = StreamExec::new(&conn, http.stream_idle);
            let c = http.h2(exec).serve_connection(io, svc);
            Box::pin(drive(c, &conn.state, http, &conn.drain))
        };
        h2.await
    } else {
        drive(
            http.h1.serve_connection(io, svc).with_upgrades(),
            &conn.state,
            http,
            &conn.drain,
        )
        .await
    };
    let peer = conn.info.peer;
    match result {
        Outcome::Done(Ok(())) => {}
        Outcome::Done(Err(e)) => classify(http, peer, &e),
        Outcome::HeaderTimeout => {
            http.metrics.rejected("header_timeout");
            tracing::debug!(%peer, "request head not complete within the header timeout");
        }
        Outcome::CloseTimeout => {
            http.metrics.rejected("graceful_close_timeout");
            tracing::debug!(%peer, "connection did not close within the graceful close timeout");
        }
        Outcome::PrematureResets => {
            http.metrics.rejected("premature_resets");
            tracing::debug!(%peer, "too many HTTP/2 streams reset prematurely: GOAWAY and close");
        }
        Outcome::Forced => tracing::debug!(%peer, "connection closed by forced drain"),
        Outcome::StreamIdle => {
            http.metrics.rejected("stream_idle_timeout");
            tracing::debug!(%peer, "connection closed: the exchange in flight made no progress within the stream idle timeout");
        }
    }
}

enum Outcome {
    Done(hyper::Result<()>),
    HeaderTimeout,
    CloseTimeout,
    PrematureResets,
    Forced,
    /// HTTP/1.1: the exchange in flight stalled.
    StreamIdle,
}

/// Aborts the watcher when the connection ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Watches the header and idle timeouts and the listener's drain for one connection, and
/// bounds a graceful close: the connection state's signal is raised for the connection to act
/// on (its timers stay off the connection's hot path instead of being polled on each of its
/// wake-ups, as `select!` would).
fn spawn_watcher(state: &Arc<ConnState>, http: &HttpSpec, drain: &Drain) -> AbortOnDrop {
    let state = Arc::clone(state);
    let header = http.settings.request_header_timeout.get();
    let idle = http.settings.idle_timeout.get();
    let close = http.settings.graceful_close_timeout.get();
    let stream_idle = http.stream_idle;
    let mut watch = drain.watch();
    AbortOnDrop(tokio::task::spawn_local(async move {
        tokio::select! {
            e = conn::expired(&state, header, idle, stream_idle) => match e {
                Expired::Header => return state.raise(signal::HEADER_TIMEOUT),
                Expired::StreamIdle => return state.raise(signal::STREAM_IDLE),
                Expired::Idle => state.raise(signal::GRACEFUL),
            },
            _ = watch.draining() => state.raise(signal::GRACEFUL),
        }
        // A peer that never answers the GOAWAY's PING, or never reads the last response,
        // would hold the connection open forever.
        tokio::select! {
            _ = watch.forced() => state.raise(signal::FORCED),
            _ = conn::close_overdue(&state, close) => state.raise(signal::CLOSE_TIMEOUT),
        }
    }))
}

async fn drive<C: Graceful>(
    conn: C,
    state: &Arc<ConnState>,
    http: &HttpSpec,
    drain: &Drain,
) -> Outcome {
    let _watcher = spawn_watcher(state, http, drain);
    tokio::pin!(conn);
    Drive {
        conn: conn.as_mut(),
        state,
        graceful: false,
    }
    .await
}

/// Polls the hyper connection, acting on the connection state's signal first. On a drain or
/// idle timeout: HTTP/2 sends GOAWAY, HTTP/1.1 closes after the response in flight.
struct Drive<'a, C> {
    conn: Pin<&'a mut C>,
    state: &'a ConnState,
    graceful: bool,
}

impl<C: Graceful> Future for Drive<'_, C> {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let this = &mut *self;
        this.state.register(cx.waker());
        match this.state.signal() {
            signal::FORCED => return Poll::Ready(Outcome::Forced),
            signal::PREMATURE_RESETS => {
                // GOAWAY, written by one more poll (the IO reads nothing more, so no new
                // stream is accepted), then close.
                if !this.graceful {
                    this.graceful = true;
                    this.conn.as_mut().graceful();
                }
                let _ = this.conn.as_mut().poll(cx);
                return Poll::Ready(Outcome::PrematureResets);
            }
            signal::HEADER_TIMEOUT => return Poll::Ready(Outcome::HeaderTimeout),
            signal::STREAM_IDLE => return Poll::Ready(Outcome::StreamIdle),
            signal::CLOSE_TIMEOUT => return Poll::Ready(Outcome::CloseTimeout),
            signal::GRACEFUL if !this.graceful => {
                this.graceful = true;
                this.conn.as_mut().graceful();
            }
            _ => {}
        }
        this.conn.as_mut().poll(cx).map(Outcome::Done)
    }
}

/// Counts and logs why hyper ended a connection with an error.
fn classify(spec: &HttpSpec, peer: SocketAddr, e: &hyper::Error) {
    let reason = if e.is_parse_too_large() {
        Some("headers_too_large")
    } else if e.is_parse() {
        Some("bad_request")
    } else if e.is_timeout() {
        Some("header_timeout")
    } else {
        None
    };
    if let Some(r) = reason {
        spec.metrics.rejected(r);
    }
    tracing::debug!(%peer, listener = %spec.name, error = %e, "connection ended with error");
}
