//! The response body handed to hyper: empty, a fixed buffer, or the upstream's body streamed
//! through. When the upstream body ends cleanly its connection goes back to the pool at once;
//! when the body is dropped the request stops counting as in flight (and as active on its
//! upstream endpoint), and the filter chain's completion hook hears how it ended.

use crate::cluster::Lease;
use crate::cluster::call::ActiveRequest;
use crate::http::conn::InflightGuard;
use crate::http::filters::grpc_web::{Mode, ResponseEncoder};
use crate::http::filters::{Completion, FilterChain, Outcome};
use crate::http::grpc::StatusTally;
use crate::message::trailers::{Replay, Replayable};
use bytes::Bytes;
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Body of every response Sluice sends downstream.
#[derive(Debug)]
pub struct ResponseBody {
    inner: Inner,
    /// Upstream connection lease, released (reusable) when the body ends cleanly.
    lease: Option<Lease>,
    /// Keeps the downstream request counted as in flight until the body is done.
    inflight: Option<InflightGuard>,
    /// Keeps the request counted as active on its upstream endpoint until the body is done.
    active: Option<ActiveRequest>,
    /// Reports completion to the filter chain (only when a filter asks for it).
    tracker: Option<Box<Tracker>>,
    /// Frames read ahead to find trailers (`message/trailers.rs`), sent first.
    replay: Option<Box<Replay>>,
    /// Counts the gRPC status the body ends with (gRPC responses only).
    grpc: Option<Box<StatusTally>>,
    /// Turns a gRPC body into gRPC-Web (`message/grpc_web.rs`).
    web: Option<Box<ResponseEncoder>>,
}

#[derive(Debug)]
enum Inner {
    Empty,
    Full(Option<Bytes>),
    Upstream(Incoming),
}

impl Default for ResponseBody {
    fn default() -> Self {
        Self::empty()
    }
}

impl ResponseBody {
    /// No body.
    pub fn empty() -> Self {
        Self::new(Inner::Empty)
    }

    /// A fixed body.
    pub fn full(b: Bytes) -> Self {
        if b.is_empty() {
            Self::empty()
        } else {
            Self::new(Inner::Full(Some(b)))
        }
    }

    /// The upstream's body; `lease` returns the connection to its pool when the body ends.
    pub(crate) fn upstream(body: Incoming, lease: Lease, active: ActiveRequest) -> Self {
        let mut b = Self::new(Inner::Upstream(body));
        b.lease = Some(lease);
        b.active = Some(active);
        b.release_if_done();
        b
    }

    fn new(inner: Inner) -> Self {
        ResponseBody {
            inner,
            lease: None,
            inflight: None,
            active: None,
            tracker: None,
            replay: None,
            grpc: None,
            web: None,
        }
    }

    /// Reports this response's completion through `tracker`.
    pub(crate) fn track_completion(&mut self, tracker: Tracker) {
        let mut tracker = Box::new(tracker);
        if self.is_end_stream() {
            // hyper never polls a body that is already at its end.
            tracker.finish(Outcome::Complete);
        } else {
            self.tracker = Some(tracker);
        }
    }

    /// Sends this gRPC body as gRPC-Web.
    pub(crate) fn encode_grpc_web(&mut self, mode: Mode) {
        self.web = Some(Box::new(ResponseEncoder::new(mode)));
    }

    /// The next frame, as gRPC-Web when the body is encoded (trailers become the final data
    /// frame; text is base64 with at most 2 bytes carried).
    fn poll_web(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(web) = this.web.as_ref() else {
                return Pin::new(&mut *this).poll_inner(cx);
            };
            if web.done {
                return Poll::Ready(None);
            }
            let frame = ready!(Pin::new(&mut *this).poll_inner(cx));
            let Some(web) = this.web.as_mut() else {
                return Poll::Ready(frame);
            };
            return Poll::Ready(match frame {
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => match web.data(d) {
                        Some(out) => Some(Ok(Frame::data(out))),
                        // Less than 3 bytes of text: wait for more.
                        None => continue,
                    },
                    Err(f) => match f.into_trailers() {
                        Ok(t) => {
                            if let Some(g) = this.grpc.as_mut() {
                                g.end(Some(&t));
                            }
                            Some(Ok(Frame::data(web.trailers(&t))))
                        }
                        Err(_) => continue,
                    },
                },
                None => web.finish().map(|b| Ok(Frame::data(b))),
                Some(Err(e)) => Some(Err(e)),
            });
        }
    }

    /// Counts the gRPC status this body ends with.
    pub(crate) fn track_grpc(&mut self, tally: StatusTally) {
        self.grpc = Some(Box::new(tally));
    }

    /// Keeps the request in flight until the body is done; a body already at its end is
    /// complete (hyper never polls it).
    pub(crate) fn set_inflight(&mut self, mut guard: InflightGuard) {
        if self.is_end_stream() {
            guard.complete();
        }
        self.inflight = Some(guard);
    }

    /// Releases the upstream connection for reuse once the body has been read to its end.
    fn release_if_done(&mut self) {
        if let Inner::Upstream(b) = &self.inner
            && b.is_end_stream()
            && let Some(mut lease) = self.lease.take()
        {
            lease.release();
        }
    }

    fn poll_inner(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(r) = this.replay.as_mut() {
            match r.next() {
                Some(item) => return Poll::Ready(item),
                None => this.replay = None,
            }
        }
        match &mut this.inner {
            Inner::Empty => Poll::Ready(None),
            Inner::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Inner::Upstream(body) => {
                let frame = ready!(Pin::new(body).poll_frame(cx));
                match &frame {
                    None => {
                        if let Some(mut lease) = this.lease.take() {
                            lease.release();
                        }
                    }
                    Some(Ok(f))
                        if f.trailers_ref()
                            .is_some_and(|t| !crate::message::fields::valid_trailers(t)) =>
                    {
                        // Malformed (RFC 9113 §8.2.1): never forwarded; the response is cut
                        // off (a reset stream, or an HTTP/1.1 body without its last chunk).
                        this.lease = None;
                        return Poll::Ready(Some(Err(Box::new(InvalidTrailer))));
                    }
                    Some(Ok(_)) => this.release_if_done(),
                    // A broken body means a broken connection: drop it, never pool it.
                    Some(Err(_)) => this.lease = None,
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
        }
    }
}

/// Why a response body was cut off by the proxy.
#[derive(Debug, thiserror::Error)]
#[error("upstream trailer field with leading or trailing whitespace")]
struct InvalidTrailer;

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = self.as_mut().poll_web(cx);
        if let Poll::Ready(frame) = &polled
            && self.inflight.is_some()
        {
            // The end, or a failure that is not the client's: the request did not end by a
            // premature reset.
            let done = !matches!(frame, Some(Ok(_))) || self.is_end_stream();
            if done && let Some(g) = self.inflight.as_mut() {
                g.complete();
            }
        }
        if let (Poll::Ready(frame), Some(_)) = (&polled, &self.grpc) {
            let end = self.is_end_stream();
            if let Some(g) = self.grpc.as_mut() {
                match frame {
                    Some(Ok(f)) if f.is_trailers() => g.end(f.trailers_ref()),
                    Some(Ok(_)) if end => g.end(None),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => g.failed(&**e),
                    None => g.end(None),
                }
            }
        }
        if let (Poll::Ready(frame), Some(_)) = (&polled, &self.tracker) {
            let end = self.is_end_stream();
            if let Some(t) = self.tracker.as_mut() {
                match frame {
                    Some(Ok(f)) => {
                        if let Some(d) = f.data_ref() {
                            t.sent(d.len());
                        } else if let Some(trailers) = f.trailers_ref() {
                            t.trailers(trailers);
                        }
                        if end {
                            t.finish(Outcome::Complete);
                        }
                    }
                    Some(Err(_)) => t.finish(Outcome::UpstreamReset),
                    None => t.finish(Outcome::Complete),
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        if let Some(w) = &self.web {
            return w.done;
        }
        if let Some(r) = &self.replay {
            return r.is_end();
        }
        match &self.inner {
            Inner::Empty => true,
            Inner::Full(b) => b.is_none(),
            Inner::Upstream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        if self.replay.is_some() || self.web.is_some() {
            // Part of the body has been read ahead: its length is no longer the inner's.
            return SizeHint::default();
        }
        match &self.inner {
            Inner::Empty => SizeHint::with_exact(0),
            Inner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::Upstream(b) => b.size_hint(),
        }
    }
}

impl Replayable for ResponseBody {
    fn set_replay(&mut self, replay: Replay) {
        self.replay = Some(Box::new(replay));
    }
}

/// What a request's completion is reported to besides the filter chain.
#[derive(Debug, Default)]
pub(crate) struct Observers {
    /// The access log's record, when the request is logged.
    pub(crate) record: Option<Box<crate::http::filters::RequestRecord>>,
    /// The request body's note (its byte count goes into the record).
    pub(crate) body: Option<crate::message::reqbody::FaultNote>,
    /// The request's trace, when it is sampled.
    pub(crate) trace: Option<Box<crate::otel::TraceContext>>,
}

/// Reports a request's completion to the filter chain's completion hooks, once: when the
/// response body ends, fails, or is dropped unfinished (the downstream went away).
#[derive(Debug)]
pub(crate) struct Tracker {
    chain: FilterChain,
    started: tokio::time::Instant,
    status: StatusCode,
    upstream: Option<std::net::SocketAddr>,
    flag: Option<&'static str>,
    body_bytes: u64,
    /// The access log's record, when the request is logged.
    record: Option<Box<crate::http::filters::RequestRecord>>,
    /// The request body's note (its byte count goes into the record).
    body: Option<crate::message::reqbody::FaultNote>,
    /// The request's trace, when it is sampled (its spans end here).
    trace: Option<Box<crate::otel::TraceContext>>,
    done: bool,
}

impl Tracker {
    pub(crate) fn new(
        chain: FilterChain,
        started: tokio::time::Instant,
        status: StatusCode,
        upstream: Option<std::net::SocketAddr>,
        flag: Option<&'static str>,
        observers: Observers,
    ) -> Self {
        let Observers {
            record,
            body,
            trace,
        } = observers;
        Tracker {
            chain,
            started,
            status,
            upstream,
            flag,
            body_bytes: 0,
            record,
            body,
            trace,
            done: false,
        }
    }

    /// Response trailers went downstream (their `grpc-status` is logged).
    pub(crate) fn trailers(&mut self, t: &http::HeaderMap) {
        if let Some(r) = self.record.as_mut() {
            r.grpc(t);
        }
    }

    /// Counts body bytes handed downstream.
    pub(crate) fn sent(&mut self, n: usize) {
        self.body_bytes += n as u64;
    }

    /// Reports the outcome (only the first call counts).
    pub(crate) fn finish(&mut self, outcome: Outcome) {
        if self.done {
            return;
        }
        self.done = true;
        let record = self.record.take().map(|mut r| {
            r.bytes_received = self.body.as_ref().map_or(0, |b| b.received());
            std::sync::Arc::from(r)
        });
        let done = Completion {
            status: self.status,
            body_bytes: self.body_bytes,
            duration: self.started.elapsed(),
            upstream: self.upstream,
            flag: self.flag,
            outcome,
            record,
        };
        self.chain.on_complete(&done);
        if let Some(t) = self.trace.take() {
            t.finish(done.status.as_u16(), done.upstream, done.flag);
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.finish(Outcome::DownstreamGone);
    }
}
