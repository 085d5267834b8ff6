//! The response body handed to hyper: empty, a fixed buffer, or the upstream's body streamed
//! through. When the upstream body ends cleanly its connection goes back to the pool at once;
//! when the body is dropped the request stops counting as in flight.

use crate::cluster::Lease;
use crate::cluster::call::ActiveRequest;
use crate::http::conn::InflightGuard;
use crate::http::filters::Outcome;
use crate::http::finish::Tracker;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

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
}

#[derive(Debug)]
enum Inner {
    Empty,
    Full(Option<Bytes>),
    Upstream(Incoming),
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

    pub(crate) fn set_inflight(&mut self, guard: InflightGuard) {
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
}

impl ResponseBody {
    fn poll_inner(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
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
                    Some(Ok(_)) => this.release_if_done(),
                    // A broken body means a broken connection: drop it, never pool it.
                    Some(Err(_)) => this.lease = None,
                }
                Poll::Ready(frame)
            }
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = self.as_mut().poll_inner(cx);
        if let (Poll::Ready(frame), Some(_)) = (&polled, &self.tracker) {
            let end = self.is_end_stream();
            if let Some(t) = self.tracker.as_mut() {
                match frame {
                    Some(Ok(f)) => {
                        if let Some(d) = f.data_ref() {
                            t.sent(d.len());
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
        match &self.inner {
            Inner::Empty => true,
            Inner::Full(b) => b.is_none(),
            Inner::Upstream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Empty => SizeHint::with_exact(0),
            Inner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::Upstream(b) => b.size_hint(),
        }
    }
}
