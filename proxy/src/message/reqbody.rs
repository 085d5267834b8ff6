//! The request body sent upstream: the downstream body, streamed, with a note of how it failed.
//!
//! When the downstream body breaks (a malformed chunk, the client closing mid-body, a malformed
//! trailer field), the upstream call fails too, and hyper reports it as an upstream error: an
//! HTTP/1.1 upstream connection ends with a "user body" error, an HTTP/2 stream is reset by us.
//! The fault recorded here lets the request path answer the client's mistake as a 400 instead
//! of blaming the upstream with a 502. The same note tells the upstream call
//! (`cluster::call::RouteTimeout`) when the body last made progress and when it ended: the
//! stream idle timeout bounds the upload, and the route timeout starts at the body's end. The
//! note is shared (`Rc`) between the body, which hyper's upstream connection task polls, and the
//! request future; it is allocated only for requests that have a body.

use crate::error::BodyFault;
use crate::message::trailers::{Replay, Replayable};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker, ready};
use tokio::time::Instant;

/// Where the body notes its fault, progress and end; read by the request path.
pub(crate) type FaultNote = Rc<BodyNote>;

/// What the forwarded request body tells the request future (all stamps from the worker's
/// coarse clock: no clock read per frame).
pub(crate) struct BodyNote {
    fault: Cell<Option<BodyFault>>,
    /// When a frame was last taken from the client (or the body was created).
    progress: Cell<Instant>,
    /// When the body's end was handed upstream.
    ended: Cell<Option<Instant>>,
    /// Woken when the body ends (the upstream call then starts its route timeout).
    waker: Cell<Option<Waker>>,
    /// Body bytes taken from the client so far (the access log's `bytes_received`).
    received: Cell<u64>,
}

impl std::fmt::Debug for BodyNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyNote")
            .field("fault", &self.fault.get())
            .field("progress", &self.progress.get())
            .field("ended", &self.ended.get())
            .finish_non_exhaustive()
    }
}

impl Default for BodyNote {
    fn default() -> Self {
        BodyNote {
            fault: Cell::new(None),
            progress: Cell::new(crate::clock::coarse_now()),
            ended: Cell::new(None),
            waker: Cell::new(None),
            received: Cell::new(0),
        }
    }
}

impl BodyNote {
    /// How the body failed, if it did.
    pub(crate) fn fault(&self) -> Option<BodyFault> {
        self.fault.get()
    }

    /// When the body last made progress.
    pub(crate) fn progress(&self) -> Instant {
        self.progress.get()
    }

    /// Body bytes taken from the client so far.
    pub(crate) fn received(&self) -> u64 {
        self.received.get()
    }

    /// When the body's end was handed upstream; `None` while it is still streaming.
    pub(crate) fn ended(&self) -> Option<Instant> {
        self.ended.get()
    }

    /// Wakes `waker` when the body ends (replacing an earlier one).
    pub(crate) fn wake_on_end(&self, waker: &Waker) {
        let old = self.waker.take();
        self.waker.set(Some(match old {
            Some(w) if w.will_wake(waker) => w,
            _ => waker.clone(),
        }));
    }

    fn end(&self) {
        if self.ended.get().is_none() {
            self.ended.set(Some(crate::clock::coarse_now()));
            if let Some(w) = self.waker.take() {
                w.wake();
            }
        }
    }
}

/// The body of a forwarded request.
#[derive(Debug)]
pub(crate) struct RequestBody {
    inner: Incoming,
    fault: Option<FaultNote>,
    /// Frames read ahead to find trailers (`message/trailers.rs`), sent first.
    replay: Option<Box<Replay>>,
    /// Decodes a gRPC-Web text body (`message/grpc_web.rs`).
    text: Option<Box<super::grpc_web::TextDecoder>>,
}

impl RequestBody {
    /// Wraps the downstream body; returns the note to read after a failure (`None` when the
    /// body is already complete: nothing can fail).
    pub(crate) fn new(inner: Incoming) -> (Self, Option<FaultNote>) {
        let fault = (!inner.is_end_stream()).then(FaultNote::default);
        let note = fault.clone();
        let body = RequestBody {
            inner,
            fault,
            replay: None,
            text: None,
        };
        (body, note)
    }

    /// Base64-decodes the body as it streams (a gRPC-Web text request).
    pub(crate) fn decode_grpc_web_text(&mut self) {
        self.text = Some(Box::default());
    }

    fn note(&self, f: BodyFault) {
        if let Some(n) = &self.fault {
            n.fault.set(Some(f));
        }
    }

    /// A frame went upstream: progress, and the end when it was the last.
    fn advanced(&self, bytes: usize) {
        if let Some(n) = &self.fault {
            n.received.set(n.received.get() + bytes as u64);
            n.progress.set(crate::clock::coarse_now());
            if self.is_end_stream() {
                n.end();
            }
        }
    }
}

/// Why the forwarded body was cut off (the upstream side sees this as the body's error).
#[derive(Debug, thiserror::Error)]
#[error("downstream request body: {0:?}")]
pub(crate) struct DownstreamBodyError(pub(crate) BodyFault);

impl Body for RequestBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(r) = self.replay.as_mut() {
            match r.next() {
                Some(item) => return Poll::Ready(item),
                None => self.replay = None,
            }
        }
        let frame = loop {
            let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
            let Some(text) = self.text.as_mut() else {
                break frame;
            };
            let decoded = match &frame {
                Some(Ok(f)) => match f.data_ref() {
                    Some(d) => text.decode(d).map(Some),
                    None => Ok(None),
                },
                None => text.finish().map(|()| None),
                Some(Err(_)) => Ok(None),
            };
            match decoded {
                // A chunk shorter than a quad: read on (unless it was the last).
                Ok(Some(d)) if d.is_empty() && !self.inner.is_end_stream() => continue,
                Ok(Some(d)) => break Some(Ok(Frame::data(d))),
                Ok(None) => break frame,
                Err(e) => {
                    tracing::debug!(error = %e, "gRPC-Web text request body");
                    self.note(BodyFault::InvalidGrpcWebText);
                    return Poll::Ready(Some(Err(Box::new(DownstreamBodyError(
                        BodyFault::InvalidGrpcWebText,
                    )))));
                }
            }
        };
        match frame {
            Some(Err(e)) => {
                let fault = classify(&e);
                tracing::debug!(error = %e, ?fault, "downstream request body failed");
                self.note(fault);
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Some(Ok(f)) => match f.trailers_ref() {
                Some(t) if !crate::message::fields::valid_trailers(t) => {
                    tracing::debug!("downstream request trailers with an invalid field");
                    self.note(BodyFault::InvalidTrailer);
                    Poll::Ready(Some(Err(Box::new(DownstreamBodyError(
                        BodyFault::InvalidTrailer,
                    )))))
                }
                _ => {
                    self.advanced(f.data_ref().map_or(0, Bytes::len));
                    Poll::Ready(Some(Ok(f)))
                }
            },
            None => {
                if let Some(n) = &self.fault {
                    n.end();
                }
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.replay {
            Some(r) => r.is_end(),
            None => self.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.replay {
            // Part of the body has been read ahead: its length is no longer the inner's.
            Some(_) => SizeHint::default(),
            // Decoding changes the length.
            None if self.text.is_some() => SizeHint::default(),
            None => self.inner.size_hint(),
        }
    }
}

impl Replayable for RequestBody {
    fn set_replay(&mut self, replay: Replay) {
        self.replay = Some(Box::new(replay));
    }
}

/// A framing error from hyper's HTTP/1.1 decoder (or from `ConnIo`'s chunked check) is bad
/// chunking; anything else (EOF before the end, a reset connection, an HTTP/2 stream the client
/// reset) means the client went away mid-body.
fn classify(e: &hyper::Error) -> BodyFault {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData => {
                    BodyFault::BadChunked
                }
                _ => BodyFault::Incomplete,
            };
        }
        source = s.source();
    }
    BodyFault::Incomplete
}
