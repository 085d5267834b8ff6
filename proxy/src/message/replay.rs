//! The body sent upstream, and the replay buffer that lets a retry resend it.
//!
//! A request that may be retried after it reached the upstream streams its body through a
//! [`ReplayBody`]: every frame taken from the client is passed on and also kept (the bytes are
//! reference-counted, not copied) until the body outgrows the policy's replay limit, when the
//! copy is dropped and the request can no longer be retried. Nothing is read ahead: the
//! upstream paces the client as without retries. A retry gets a new body over the same shared
//! state, which first replays the kept frames and then goes on reading from the client; the
//! older body is retired (polling it fails), so only one attempt reads the client at a time.

use crate::message::reqbody::RequestBody;
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body on its way upstream.
#[derive(Debug)]
pub(crate) enum UpstreamBody {
    /// Streamed as received (no retry after sending is possible).
    Direct(RequestBody),
    /// Streamed and kept for a retry.
    Replay(ReplayBody<RequestBody>),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Direct(b) => Pin::new(b).poll_frame(cx),
            UpstreamBody::Replay(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Direct(b) => b.is_end_stream(),
            UpstreamBody::Replay(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Direct(b) => b.size_hint(),
            UpstreamBody::Replay(b) => b.size_hint(),
        }
    }
}

#[derive(Debug)]
enum Kept {
    Data(Bytes),
    Trailers(HeaderMap),
}

impl Kept {
    fn frame(&self) -> Frame<Bytes> {
        match self {
            Kept::Data(b) => Frame::data(b.clone()),
            Kept::Trailers(t) => Frame::trailers(t.clone()),
        }
    }
}

#[derive(Debug)]
struct Shared<B> {
    source: B,
    kept: Vec<Kept>,
    bytes: usize,
    limit: usize,
    /// The copy outgrew the limit and was dropped.
    overflowed: bool,
    /// The client's body ended.
    ended: bool,
    /// The client's body failed.
    failed: bool,
    /// The newest body; older ones are retired.
    generation: u32,
}

/// A body that keeps what it streams for a retry (see the module docs).
#[derive(Debug)]
pub(crate) struct ReplayBody<B> {
    shared: Rc<RefCell<Shared<B>>>,
    /// The next kept frame to replay.
    next: usize,
    generation: u32,
}

/// Polling a body that a retry replaced.
#[derive(Debug, thiserror::Error)]
#[error("request body superseded by a retry")]
pub(crate) struct Superseded;

impl<B> ReplayBody<B> {
    /// Streams `source`, keeping at most `limit` bytes for a retry.
    pub(crate) fn new(source: B, limit: usize) -> Self {
        ReplayBody {
            shared: Rc::new(RefCell::new(Shared {
                source,
                kept: Vec::new(),
                bytes: 0,
                limit,
                overflowed: false,
                ended: false,
                failed: false,
                generation: 0,
            })),
            next: 0,
            generation: 0,
        }
    }

    /// A body for the next attempt (retiring this one), or `None` when the body cannot be
    /// replayed: it outgrew the limit or the client's body failed.
    pub(crate) fn replay(&self) -> Option<ReplayBody<B>> {
        let mut s = self.shared.borrow_mut();
        if s.overflowed || s.failed {
            return None;
        }
        s.generation = s.generation.wrapping_add(1);
        Some(ReplayBody {
            shared: Rc::clone(&self.shared),
            next: 0,
            generation: s.generation,
        })
    }

    /// Another handle on the same body, to replay it from later; it must not be polled (the
    /// attempt's body is).
    pub(crate) fn handle(&self) -> ReplayBody<B> {
        ReplayBody {
            shared: Rc::clone(&self.shared),
            next: 0,
            generation: self.generation,
        }
    }

    /// True while a retry could still resend the body.
    pub(crate) fn replayable(&self) -> bool {
        let s = self.shared.borrow();
        !s.overflowed && !s.failed
    }
}

impl<B: Body<Data = Bytes, Error = BoxError> + Unpin> Body for ReplayBody<B> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut guard = this.shared.borrow_mut();
        let s = &mut *guard;
        if s.generation != this.generation {
            return Poll::Ready(Some(Err(Box::new(Superseded))));
        }
        if let Some(k) = s.kept.get(this.next) {
            this.next += 1;
            return Poll::Ready(Some(Ok(k.frame())));
        }
        if s.ended {
            return Poll::Ready(None);
        }
        match ready!(Pin::new(&mut s.source).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if !s.overflowed {
                    let kept = if let Some(d) = frame.data_ref() {
                        s.bytes += d.len();
                        Kept::Data(d.clone())
                    } else if let Some(t) = frame.trailers_ref() {
                        Kept::Trailers(t.clone())
                    } else {
                        Kept::Data(Bytes::new())
                    };
                    if s.bytes > s.limit {
                        // Too big to replay: drop the copy, keep streaming.
                        s.overflowed = true;
                        s.kept = Vec::new();
                        this.next = 0;
                    } else {
                        s.kept.push(kept);
                        this.next = s.kept.len();
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                s.failed = true;
                Poll::Ready(Some(Err(e)))
            }
            None => {
                s.ended = true;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let s = self.shared.borrow();
        self.next >= s.kept.len() && (s.ended || s.source.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let s = self.shared.borrow();
        if s.ended && !s.overflowed {
            let rest: usize = s
                .kept
                .iter()
                .skip(self.next)
                .map(|k| match k {
                    Kept::Data(d) => d.len(),
                    Kept::Trailers(_) => 0,
                })
                .sum();
            return SizeHint::with_exact(rest as u64);
        }
        if self.next == 0 && s.kept.is_empty() && !s.overflowed {
            return s.source.size_hint();
        }
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::collections::VecDeque;

    /// A client body: these frames, then the end (or an error).
    #[derive(Debug)]
    struct Client {
        frames: VecDeque<Frame<Bytes>>,
        fail: bool,
    }

    impl Body for Client {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            match self.frames.pop_front() {
                Some(f) => Poll::Ready(Some(Ok(f))),
                None if self.fail => Poll::Ready(Some(Err("client went away".into()))),
                None => Poll::Ready(None),
            }
        }
        fn is_end_stream(&self) -> bool {
            self.frames.is_empty() && !self.fail
        }
    }

    fn client(chunks: &[&'static str], trailers: bool) -> Client {
        let mut frames: VecDeque<Frame<Bytes>> = chunks
            .iter()
            .map(|c| Frame::data(Bytes::from_static(c.as_bytes())))
            .collect();
        if trailers {
            let mut t = HeaderMap::new();
            t.insert("x-sum", "1".parse().unwrap());
            frames.push_back(Frame::trailers(t));
        }
        Client {
            frames,
            fail: false,
        }
    }

    async fn collect<B: Body<Data = Bytes, Error = BoxError> + Unpin>(b: B) -> (Bytes, bool) {
        let c = b.collect().await.unwrap();
        let t = c.trailers().is_some();
        (c.to_bytes(), t)
    }

    #[tokio::test]
    async fn a_retry_replays_what_was_sent_then_reads_on() {
        let first = ReplayBody::new(client(&["ab", "cd", "ef"], true), 100);
        let mut first = first;
        // The first attempt got two frames before it failed.
        let f1 = first.frame().await.unwrap().unwrap();
        assert_eq!(f1.into_data().unwrap(), "ab");
        first.frame().await.unwrap().unwrap();
        let second = first.replay().expect("replayable");
        assert!(
            first.frame().await.unwrap().is_err(),
            "the retired body no longer reads the client"
        );
        let (bytes, trailers) = collect(second).await;
        assert_eq!(bytes, "abcdef");
        assert!(trailers);
    }

    #[tokio::test]
    async fn a_finished_body_replays_whole_with_its_exact_length() {
        let first = ReplayBody::new(client(&["hello ", "world"], false), 100);
        let second = first.replay().unwrap();
        drop(first);
        let (bytes, _) = collect(second).await;
        assert_eq!(bytes, "hello world");
        let mut b = ReplayBody::new(client(&["xyz"], false), 100);
        while b.frame().await.is_some() {}
        let third = b.replay().unwrap();
        assert_eq!(third.size_hint().exact(), Some(3));
        assert!(!third.is_end_stream());
        let (bytes, _) = collect(third).await;
        assert_eq!(bytes, "xyz");
    }

    #[tokio::test]
    async fn a_body_past_the_limit_streams_on_but_cannot_be_replayed() {
        let mut b = ReplayBody::new(client(&["1234", "5678", "9"], false), 6);
        b.frame().await.unwrap().unwrap();
        assert!(b.replayable());
        b.frame().await.unwrap().unwrap();
        assert!(!b.replayable(), "8 bytes > 6");
        assert!(b.replay().is_none());
        let rest = b.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(rest, "9", "the body still streams whole");
        assert!(b.frame().await.is_none());
    }

    #[tokio::test]
    async fn a_failed_client_body_is_not_replayed() {
        let mut b = ReplayBody::new(
            Client {
                frames: VecDeque::from([Frame::data(Bytes::from_static(b"a"))]),
                fail: true,
            },
            100,
        );
        b.frame().await.unwrap().unwrap();
        assert!(b.frame().await.unwrap().is_err());
        assert!(b.replay().is_none());
    }

    #[test]
    fn an_empty_body_is_at_its_end_from_the_start() {
        let b = ReplayBody::new(client(&[], false), 100);
        assert!(b.is_end_stream());
        assert!(b.replay().unwrap().is_end_stream());
    }
}
