//! Per-connection state of a downstream HTTP connection: requests in flight, when the
//! connection went idle, when the current request head (HTTP/2: header block) started, the
//! smuggling scan, premature stream resets, and what the connection is asked to do (close
//! gracefully, close now). One coarse timer per connection enforces the header and idle
//! timeouts from this state, so no timer is armed per request; on HTTP/1.1 (one exchange at a
//! time) it also enforces the stream idle timeout from progress stamps the IO wrapper leaves.

use crate::http::frames::FrameScan;
use crate::http::smuggle::{H1Scan, next_head};
use crate::metrics::ListenerMetrics;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// What the connection is asked to do, in rising priority (a signal never goes down).
pub(crate) mod signal {
    /// Keep serving.
    pub(crate) const NONE: u8 = 0;
    /// Idle timeout or drain: HTTP/2 GOAWAY, HTTP/1.1 closes after the response in flight.
    pub(crate) const GRACEFUL: u8 = 1;
    /// The graceful close took longer than `graceful_close_timeout`: close now.
    pub(crate) const CLOSE_TIMEOUT: u8 = 2;
    /// A request head (HTTP/2: header block) outlived the header timeout: close now.
    pub(crate) const HEADER_TIMEOUT: u8 = 3;
    /// HTTP/1.1: the exchange in flight made no progress for the stream idle timeout: close
    /// now.
    pub(crate) const STREAM_IDLE: u8 = 4;
    /// Too many HTTP/2 streams reset prematurely: GOAWAY and close now, reading nothing more.
    pub(crate) const PREMATURE_RESETS: u8 = 5;
    /// The drain deadline passed: close now.
    pub(crate) const FORCED: u8 = 6;
}

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
    /// Nanoseconds since `base` (plus one) when the current head (HTTP/2: header block, or the
    /// preface and first SETTINGS) started; 0 when none.
    head_started: AtomicU64,
    /// HTTP/1.1: the number of the first head that carried both Content-Length and
    /// Transfer-Encoding (0: none), of heads hyper has handed over, and of heads the IO
    /// wrapper has scanned (kept here, not in the wrapper, which lives in the task).
    cl_te_head: AtomicU32,
    heads: AtomicU32,
    scanned: AtomicU32,
    /// HTTP/1.1: the connection switched protocols; its bytes are no longer HTTP.
    upgraded: AtomicBool,
    /// HTTP/2: streams ended, those reset by the client before their response completed, and
    /// the `premature_reset_stream_count` setting (0: off).
    streams: AtomicU32,
    premature: AtomicU32,
    premature_limit: u32,
    /// HTTP/2: streams Sluice itself is ending (stream idle timeout) whose guards have not
    /// dropped yet: not the client's premature resets.
    local_resets: AtomicU32,
    /// A [`signal`] value, and the connection task's waker (a task's waker never changes, so
    /// it is stored once, by the first poll).
    signal: AtomicU8,
    waker: OnceLock<Waker>,
    /// HTTP/1.1: nanoseconds since `base` of the current exchange's last progress (its start,
    /// request bytes read before its response started, response bytes written).
    progress: AtomicU64,
    /// HTTP/1.1: response bytes of the current exchange have been written.
    responded: AtomicBool,
    pub(crate) metrics: ListenerMetrics,
}

impl ConnState {
    pub(crate) fn new(http1: bool, premature_limit: u32, metrics: ListenerMetrics) -> Arc<Self> {
        let base = crate::clock::coarse_now();
        Arc::new(ConnState {
            http1,
            base,
            inflight: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            // HTTP/2: the preface and first SETTINGS are timed from now.
            head_started: AtomicU64::new(u64::from(!http1)),
            cl_te_head: AtomicU32::new(0),
            heads: AtomicU32::new(0),
            scanned: AtomicU32::new(0),
            upgraded: AtomicBool::new(false),
            streams: AtomicU32::new(0),
            premature: AtomicU32::new(0),
            premature_limit,
            local_resets: AtomicU32::new(0),
            signal: AtomicU8::new(signal::NONE),
            waker: OnceLock::new(),
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

    /// The current signal.
    pub(crate) fn signal(&self) -> u8 {
        self.signal.load(Relaxed)
    }

    /// Raises the signal to `to` (never lowers it) and wakes the connection task.
    pub(crate) fn raise(&self, to: u8) {
        if to > self.signal.load(Relaxed) {
            self.signal.store(to, Relaxed);
            if let Some(w) = self.waker.get() {
                w.wake_by_ref();
            }
        }
    }

    /// Called by the connection task's poll: remembers its waker (once).
    pub(crate) fn register(&self, waker: &Waker) {
        if self.waker.get().is_none() {
            let _ = self.waker.set(waker.clone());
        }
    }

    /// HTTP/1.1 bytes arrived from the client: when no request is in flight and no head has
    /// started, they start a new head, timed by the header timeout.
    fn on_read(&self) {
        if self.inflight.load(Relaxed) == 0 && self.head_started.load(Relaxed) == 0 {
            self.head_started.store(self.since_base() + 1, Relaxed);
        }
    }

    /// HTTP/2 frames arrived: whether a header block is in progress, and whether one started in
    /// this read.
    fn on_frames(&self, in_block: bool, started: bool) {
        if !in_block {
            if self.head_started.load(Relaxed) != 0 {
                self.head_started.store(0, Relaxed);
            }
        } else if started {
            self.head_started.store(self.since_base() + 1, Relaxed);
        }
    }

    /// HTTP/2: Sluice is about to drop a stream's task itself (stream idle timeout); its
    /// in-flight guard, dropped with it, does not count as the client's premature reset.
    pub(crate) fn ending_stream_locally(&self) {
        self.local_resets
            .store(self.local_resets.load(Relaxed).saturating_add(1), Relaxed);
    }

    /// The connection switched protocols (101): what follows is not HTTP.
    pub(crate) fn set_upgraded(&self) {
        self.upgraded.store(true, Relaxed);
    }

    /// A request head was parsed: the request counts as in flight until the guard drops with
    /// the response body. Returns the guard and whether the head had both Content-Length and
    /// Transfer-Encoding.
    pub(crate) fn begin_request(self: &Arc<Self>) -> (InflightGuard, bool) {
        let mut cl_te = false;
        if self.http1 {
            self.start_exchange();
            self.head_started.store(0, Relaxed);
            let n = next_head(self.heads.load(Relaxed));
            self.heads.store(n, Relaxed);
            cl_te = self.cl_te_head.load(Relaxed) == n;
        }
        self.inflight
            .store(self.inflight.load(Relaxed) + 1, Relaxed);
        self.metrics.requests.inc();
        self.metrics.active_requests.inc();
        let guard = InflightGuard {
            state: Arc::clone(self),
            complete: false,
        };
        (guard, cl_te)
    }

    /// An HTTP/2 stream ended; `premature` when the client reset it (or went away) before its
    /// response was complete. Past the limit the connection is told to close.
    fn stream_ended(&self, premature: bool) {
        let streams = self.streams.load(Relaxed).saturating_add(1);
        self.streams.store(streams, Relaxed);
        if let Some(n) = self.local_resets.load(Relaxed).checked_sub(1) {
            // Sluice reset this stream (its task is being dropped right now); a token left by
            // a stream whose guard had already dropped is used up by the next stream instead.
            self.local_resets.store(n, Relaxed);
            return;
        }
        if !premature {
            return;
        }
        let resets = self.premature.load(Relaxed).saturating_add(1);
        self.premature.store(resets, Relaxed);
        if premature_resets_exceeded(streams, resets, self.premature_limit) {
            self.raise(signal::PREMATURE_RESETS);
        }
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

/// Envoy's rule: before `limit` streams, half of `limit` resets is too many (even if every
/// later stream completed, the ratio would be reached at `limit`); from `limit` streams on,
/// resets of half the streams are. `limit` 0 disables.
fn premature_resets_exceeded(streams: u32, resets: u32, limit: u32) -> bool {
    if limit == 0 {
        return false;
    }
    let resets = u64::from(resets) * 2;
    if streams < limit {
        resets >= u64::from(limit)
    } else {
        resets >= u64::from(streams)
    }
}

/// Marks one request as in flight.
#[derive(Debug)]
pub(crate) struct InflightGuard {
    state: Arc<ConnState>,
    /// The response was produced to its end (or Sluice ended it): if the guard drops without
    /// it, the client reset the stream or went away.
    complete: bool,
}

impl InflightGuard {
    /// The response was produced to its end, or Sluice itself ended the stream.
    pub(crate) fn complete(&mut self) {
        self.complete = true;
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        let s = &self.state;
        s.metrics.active_requests.dec();
        let n = s.inflight.load(Relaxed).saturating_sub(1);
        s.inflight.store(n, Relaxed);
        if n == 0 {
            s.idle_since.store(s.since_base(), Relaxed);
        }
        if !s.http1 {
            s.stream_ended(!self.complete);
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
/// time; likewise the stream idle timeout) and otherwise at the next deadline. A head (HTTP/2:
/// header block) in progress is timed even while other requests are in flight.
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
        let next = if let Some(started) = state.head_started() {
            let deadline = started + header_timeout;
            if now >= deadline {
                return Expired::Header;
            }
            deadline
        } else if state.inflight.load(Relaxed) > 0 {
            match stream_idle.map(|d| state.stream_deadline(d)) {
                Some(deadline) if now >= deadline => return Expired::StreamIdle,
                Some(deadline) => deadline.min(now + tick),
                None => now + tick,
            }
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

/// After a graceful close was asked for: resolves once `timeout` has passed and no request is
/// in flight (requests in flight are left to finish; a drain's forced phase bounds them).
pub(crate) async fn close_overdue(state: &ConnState, timeout: Duration) {
    loop {
        tokio::time::sleep(timeout).await;
        if state.inflight.load(Relaxed) == 0 {
            return;
        }
    }
}

/// What the IO wrapper follows on the read side.
#[derive(Debug)]
enum Scan {
    /// HTTP/1.1: every head and body ([`H1Scan`]).
    Http1(H1Scan),
    /// HTTP/2: frame boundaries, for the header timeout ([`FrameScan`]).
    Http2(FrameScan),
    /// A chunked body broke the grammar: the bytes from the violation on are never handed to
    /// hyper, and the next read fails. (A variant rather than a flag: the wrapper lives in
    /// every HTTP/1.1 connection's task, and this keeps it 8 bytes smaller.)
    Poisoned,
}

/// The downstream socket, reporting reads to the connection state, scanning HTTP/1.1 heads and
/// bodies (CL+TE, chunked grammar) and HTTP/2 frame boundaries.
#[derive(Debug)]
pub(crate) struct ConnIo<S> {
    inner: S,
    state: Arc<ConnState>,
    scan: Scan,
}

impl<S> ConnIo<S> {
    pub(crate) fn new(inner: S, state: Arc<ConnState>) -> Self {
        let scan = if state.http1 {
            Scan::Http1(H1Scan::default())
        } else {
            Scan::Http2(FrameScan::default())
        };
        ConnIo { inner, state, scan }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ConnIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if matches!(self.scan, Scan::Poisoned) {
            return Poll::Ready(Err(malformed_chunked()));
        }
        if self.state.signal() == signal::PREMATURE_RESETS {
            // The connection is about to close: read no more streams, only send the GOAWAY.
            return Poll::Pending;
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let this = &mut *self;
        let mut cut = None;
        if let Some(new) = buf.filled().get(before..)
            && !new.is_empty()
        {
            this.state.metrics.bytes_received.inc_by(new.len() as u64);
            match &mut this.scan {
                Scan::Http1(scan) => {
                    if !this.state.upgraded.load(Relaxed) {
                        this.state.on_read();
                        this.state.on_read_progress();
                        let mut heads = this.state.scanned.load(Relaxed);
                        let found = scan.feed(new, &mut heads);
                        this.state.scanned.store(heads, Relaxed);
                        if let Some(n) = found.cl_te_head {
                            this.state.cl_te_head.store(n, Relaxed);
                        }
                        cut = found.invalid_at.map(|at| before + at);
                    }
                }
                Scan::Http2(frames) => {
                    let b = frames.feed(new);
                    this.state.on_frames(b.in_block, b.started);
                }
                Scan::Poisoned => {}
            }
        }
        if let Some(valid) = cut {
            this.scan = Scan::Poisoned;
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
        if let Ok(n @ 1..) = written {
            self.state.on_write_progress();
            self.state.metrics.bytes_sent.inc_by(n as u64);
        }
        Poll::Ready(written)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs));
        if let Ok(n @ 1..) = written {
            self.state.on_write_progress();
            self.state.metrics.bytes_sent.inc_by(n as u64);
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
        ConnState::new(true, 100, Metrics::new().listener("t"))
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

    #[test]
    fn premature_reset_rule() {
        // Half the limit before the limit is reached.
        assert!(!premature_resets_exceeded(60, 49, 100));
        assert!(premature_resets_exceeded(50, 50, 100));
        // From the limit on, half of all streams.
        assert!(!premature_resets_exceeded(1000, 499, 100));
        assert!(premature_resets_exceeded(1000, 500, 100));
        assert!(!premature_resets_exceeded(1000, 1000, 0));
    }

    #[test]
    fn http2_streams_reset_before_their_response_trip_the_limit() {
        let s = ConnState::new(false, 10, Metrics::new().listener("t"));
        for _ in 0..3 {
            let (mut g, _) = s.begin_request();
            g.complete();
        }
        for _ in 0..4 {
            drop(s.begin_request());
        }
        assert_eq!(s.signal(), signal::NONE);
        drop(s.begin_request());
        assert_eq!(s.signal(), signal::PREMATURE_RESETS);
        // HTTP/1.1 connections do not count.
        let s = ConnState::new(true, 1, Metrics::new().listener("t"));
        drop(s.begin_request());
        assert_eq!(s.signal(), signal::NONE);
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_header_block_is_timed_while_streams_are_in_flight() {
        let s = ConnState::new(false, 0, Metrics::new().listener("t"));
        s.on_frames(false, false);
        let (_guard, _) = s.begin_request();
        s.on_frames(true, true);
        let t0 = Instant::now();
        let e = expired(&s, Duration::from_secs(10), Duration::from_secs(60), None).await;
        assert_eq!(e, Expired::Header);
        assert!(t0.elapsed() <= Duration::from_secs(10));
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
        let s = ConnState::new(false, 0, Metrics::new().listener("t"));
        s.on_frames(false, false); // the preface and SETTINGS arrived
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
}
