//! Per-connection state of a downstream HTTP connection: requests in flight, when the
//! connection went idle, when the current request head started, and the smuggling scan. One
//! coarse timer per connection enforces the header and idle timeouts from this state, so no
//! timer is armed per request; on HTTP/1.1 (one exchange at a time) it also enforces the stream
//! idle timeout from progress stamps the IO wrapper leaves.

use crate::http::chunked::ChunkedScan;
use crate::http::smuggle::HeadScan;
use crate::metrics::ListenerMetrics;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Shared by the connection's IO wrapper, its requests and its timer. Everything runs on one
/// worker thread; the fields are atomics only because hyper requires upgradable IO to be
/// `Send`. Relaxed loads and stores compile to plain moves.
#[derive(Debug)]
pub(crate) struct ConnState {
    http1: bool,
    base: Instant,
    inflight: AtomicU32,
    /// Nanoseconds since `base` when the last request finished.
    idle_since: AtomicU64,
    /// Nanoseconds since `base` (plus one) when the current head started; 0 when none.
    head_started: AtomicU64,
    /// The current head carried both Content-Length and Transfer-Encoding.
    cl_te: AtomicBool,
    /// HTTP/1.1: nanoseconds since `base` of the current exchange's last progress (its start,
    /// request bytes read before its response started, response bytes written).
    progress: AtomicU64,
    /// HTTP/1.1: response bytes of the current exchange have been written.
    responded: AtomicBool,
    pub(crate) metrics: ListenerMetrics,
}

impl ConnState {
    pub(crate) fn new(http1: bool, metrics: ListenerMetrics) -> Arc<Self> {
        Arc::new(ConnState {
            http1,
            base: crate::clock::coarse_now(),
            inflight: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            cl_te: AtomicBool::new(false),
            progress: AtomicU64::new(0),
            responded: AtomicBool::new(false),
            metrics,
        })
    }

    /// HTTP/1.1 (else HTTP/2), as the listener detected.
    pub(crate) fn is_http1(&self) -> bool {
        self.http1
    }

    fn since_base(&self) -> u64 {
        crate::clock::coarse_now()
            .duration_since(self.base)
            .as_nanos() as u64
    }

    fn at(&self, nanos: u64) -> Instant {
        self.base + Duration::from_nanos(nanos)
    }

    fn head_started(&self) -> Option<Instant> {
        match self.head_started.load(Relaxed) {
            0 => None,
            n => Some(self.at(n - 1)),
        }
    }

    /// Bytes arrived from the client; returns true when they start a new request head.
    fn on_read(&self) -> bool {
        if self.http1 && self.inflight.load(Relaxed) == 0 && self.head_started.load(Relaxed) == 0 {
            self.head_started.store(self.since_base() + 1, Relaxed);
            self.cl_te.store(false, Relaxed);
            return true;
        }
        false
    }

    /// A request head was parsed: the request counts as in flight until the guard drops with
    /// the response body. Returns the guard and whether the head had both Content-Length and
    /// Transfer-Encoding.
    pub(crate) fn begin_request(self: &Arc<Self>) -> (InflightGuard, bool) {
        self.start_exchange();
        self.head_started.store(0, Relaxed);
        self.inflight
            .store(self.inflight.load(Relaxed) + 1, Relaxed);
        self.metrics.requests.inc();
        let cl_te = self.cl_te.swap(false, Relaxed);
        (InflightGuard(Arc::clone(self)), cl_te)
    }
}

impl ConnState {
    /// A request/response exchange starts: its stream idle clock starts.
    fn start_exchange(&self) {
        self.progress.store(self.since_base(), Relaxed);
        self.responded.store(false, Relaxed);
    }

    /// Request bytes arrived: progress until the response starts. Afterwards only response
    /// bytes count, so a stalled response cannot be kept open by trickling the next request
    /// (hyper reads ahead into its buffer).
    fn on_read_progress(&self) {
        if !self.responded.load(Relaxed) {
            self.progress.store(self.since_base(), Relaxed);
        }
    }

    /// Response bytes were taken by the client.
    fn on_write_progress(&self) {
        self.progress.store(self.since_base(), Relaxed);
        self.responded.store(true, Relaxed);
    }

    /// HTTP/1.1 with a request in flight: when the exchange's stream idle timeout expires.
    /// Before any response byte was written the request future answers 408/504 itself at the
    /// same deadline, so the connection is closed only [`STREAM_IDLE_GRACE`] later, if that
    /// answer did not go out.
    fn stream_deadline(&self, stream_idle: Duration) -> Instant {
        let grace = if self.responded.load(Relaxed) {
            Duration::ZERO
        } else {
            STREAM_IDLE_GRACE
        };
        self.at(self.progress.load(Relaxed)) + stream_idle + grace
    }
}

/// How long an HTTP/1.1 exchange without response bytes may outlive its stream idle timeout
/// while its request future answers (see [`ConnState::stream_deadline`]).
const STREAM_IDLE_GRACE: Duration = Duration::from_secs(1);

/// Marks one request as in flight.
#[derive(Debug)]
pub(crate) struct InflightGuard(Arc<ConnState>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        let s = &self.0;
        let n = s.inflight.load(Relaxed).saturating_sub(1);
        s.inflight.store(n, Relaxed);
        if n == 0 {
            s.idle_since.store(s.since_base(), Relaxed);
        }
    }
}

/// Why the connection timer fired.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Expired {
    /// A request head took longer than the header timeout: close now.
    Header,
    /// No request for the idle timeout: close gracefully.
    Idle,
    /// HTTP/1.1: the exchange in flight made no progress for the stream idle timeout: close now.
    StreamIdle,
}

/// Waits until a timeout applies to the connection. Wakes at least every `header_timeout` (so a
/// head that starts while the connection sleeps toward its idle deadline is still caught on
/// time; likewise the stream idle timeout) and otherwise at the next deadline.
pub(crate) async fn expired(
    state: &ConnState,
    header_timeout: Duration,
    idle_timeout: Duration,
    stream_idle: Option<Duration>,
) -> Expired {
    // The stream idle timeout is per stream on HTTP/2 (`http/stream.rs`).
    let stream_idle = stream_idle.filter(|_| state.http1);
    let tick = header_timeout
        .min(idle_timeout)
        .min(stream_idle.unwrap_or(Duration::MAX));
    let sleep = tokio::time::sleep(tick);
    tokio::pin!(sleep);
    loop {
        sleep.as_mut().await;
        let now = Instant::now();
        let next = if state.inflight.load(Relaxed) > 0 {
            match stream_idle.map(|d| state.stream_deadline(d)) {
                Some(deadline) if now >= deadline => return Expired::StreamIdle,
                Some(deadline) => deadline.min(now + tick),
                None => now + tick,
            }
        } else if let Some(started) = state.head_started() {
            let deadline = started + header_timeout;
            if now >= deadline {
                return Expired::Header;
            }
            deadline
        } else {
            let deadline = state.at(state.idle_since.load(Relaxed)) + idle_timeout;
            if now >= deadline {
                return Expired::Idle;
            }
            deadline.min(now + tick)
        };
        sleep.as_mut().reset(next);
    }
}

/// The downstream socket, reporting reads to the connection state and scanning HTTP/1.1 heads
/// and chunked request bodies.
#[derive(Debug)]
pub(crate) struct ConnIo<S> {
    inner: S,
    state: Arc<ConnState>,
    scan: HeadScan,
    chunked: ChunkedScan,
    /// A chunked body broke the grammar: the bytes from the violation on are never handed to
    /// hyper, and the next read fails.
    poisoned: bool,
}

impl<S> ConnIo<S> {
    pub(crate) fn new(inner: S, state: Arc<ConnState>) -> Self {
        ConnIo {
            inner,
            state,
            scan: HeadScan::default(),
            chunked: ChunkedScan::default(),
            poisoned: false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ConnIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.poisoned {
            return Poll::Ready(Err(malformed_chunked()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let this = &mut *self;
        let mut cut = None;
        if let Some(new) = buf.filled().get(before..)
            && !new.is_empty()
        {
            if this.state.on_read() {
                this.scan.start();
                this.chunked.reset();
            }
            this.state.on_read_progress();
            let (cl_te, body) = this.scan.feed_split(new);
            if cl_te {
                this.state.cl_te.store(true, Relaxed);
            }
            let (offset, body) = match body {
                Some(rest) => {
                    // Content-Length + Transfer-Encoding is refused anyway (400).
                    if this.scan.saw_transfer_encoding() && !cl_te {
                        this.chunked.start();
                    }
                    (new.len() - rest.len(), rest)
                }
                None => (0, new),
            };
            cut = this.chunked.feed(body).map(|at| before + offset + at);
        }
        if let Some(valid) = cut {
            this.poisoned = true;
            if valid == before {
                // Nothing valid in this read (an empty read would look like EOF).
                return Poll::Ready(Err(malformed_chunked()));
            }
            buf.set_filled(valid);
        }
        Poll::Ready(Ok(()))
    }
}

/// The read error that ends a request whose chunked body breaks RFC 9112 §7.1; hyper reports it
/// as a body error, which the request path answers with 400 (`bad_chunked_body`).
fn malformed_chunked() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "malformed chunked request body")
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ConnIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.inner).poll_write(cx, buf));
        if written.as_ref().is_ok_and(|n| *n > 0) {
            self.state.on_write_progress();
        }
        Poll::Ready(written)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs));
        if written.as_ref().is_ok_and(|n| *n > 0) {
            self.state.on_write_progress();
        }
        Poll::Ready(written)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn state() -> Arc<ConnState> {
        ConnState::new(true, Metrics::new().listener("t"))
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_fires_after_idle_period() {
        let s = state();
        let t0 = Instant::now();
        let e = expired(&s, Duration::from_secs(10), Duration::from_secs(60), None).await;
        assert_eq!(e, Expired::Idle);
        assert_eq!(t0.elapsed(), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn header_timeout_counts_from_first_byte() {
        let s = state();
        let s2 = Arc::clone(&s);
        let local = tokio::task::LocalSet::new();
        let t0 = Instant::now();
        let e = local
            .run_until(async move {
                tokio::task::spawn_local(async move {
                    tokio::time::sleep(Duration::from_secs(25)).await;
                    s2.on_read();
                });
                expired(&s, Duration::from_secs(10), Duration::from_secs(3600), None).await
            })
            .await;
        assert_eq!(e, Expired::Header);
        assert_eq!(t0.elapsed(), Duration::from_secs(35));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_http1_exchange_expires_after_the_stream_idle_timeout() {
        let (s, stream_idle) = (state(), Some(Duration::from_secs(30)));
        let (_guard, _) = s.begin_request();
        let t0 = Instant::now();
        let s2 = Arc::clone(&s);
        let local = tokio::task::LocalSet::new();
        let e = local
            .run_until(async move {
                tokio::task::spawn_local(async move {
                    // Upload progress at 20 s, the response starts at 40 s, then stalls.
                    tokio::time::sleep(Duration::from_secs(20)).await;
                    s2.on_read_progress();
                    tokio::time::sleep(Duration::from_secs(20)).await;
                    s2.on_write_progress();
                    // Reads after the response started are not progress.
                    tokio::time::sleep(Duration::from_secs(20)).await;
                    s2.on_read_progress();
                });
                expired(
                    &s,
                    Duration::from_secs(10),
                    Duration::from_secs(3600),
                    stream_idle,
                )
                .await
            })
            .await;
        assert_eq!(e, Expired::StreamIdle);
        assert_eq!(t0.elapsed(), Duration::from_secs(70));
        // Without response bytes, the request future gets a grace period to answer first.
        let s = state();
        let (_guard, _) = s.begin_request();
        let t0 = Instant::now();
        assert_eq!(
            expired(
                &s,
                Duration::from_secs(10),
                Duration::from_secs(3600),
                stream_idle
            )
            .await,
            Expired::StreamIdle
        );
        assert_eq!(t0.elapsed(), Duration::from_secs(30) + STREAM_IDLE_GRACE);
        // HTTP/2 connections leave it to their streams.
        let s = ConnState::new(false, Metrics::new().listener("t"));
        let (_guard, _) = s.begin_request();
        let r = tokio::time::timeout(
            Duration::from_secs(500),
            expired(
                &s,
                Duration::from_secs(10),
                Duration::from_secs(3600),
                stream_idle,
            ),
        )
        .await;
        assert!(r.is_err(), "an HTTP/2 connection was timed out as a stream");
    }

    #[tokio::test(start_paused = true)]
    async fn requests_in_flight_are_never_timed_out() {
        let s = state();
        let (guard, _) = s.begin_request();
        let r = tokio::time::timeout(
            Duration::from_secs(500),
            expired(&s, Duration::from_secs(10), Duration::from_secs(60), None),
        )
        .await;
        assert!(r.is_err(), "timer fired while a request was in flight");
        drop(guard);
        let t0 = Instant::now();
        assert_eq!(
            expired(&s, Duration::from_secs(10), Duration::from_secs(60), None).await,
            Expired::Idle
        );
        assert!(t0.elapsed() <= Duration::from_secs(60));
    }
}
