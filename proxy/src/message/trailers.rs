//! Trailers into HTTP/1.1 messages: HTTP/2 → HTTP/1.1 in both directions, and chunked
//! HTTP/1.1 upstream responses.
//!
//! hyper's HTTP/1.1 encoder (`proto/h1/encode.rs`, 1.12, the newest release) sends only the
//! trailer fields named in the message's `Trailer` header, which it reads when it writes the
//! head; there is no option to send undeclared ones, and no way to hand it a pre-encoded
//! chunked body. HTTP/2 peers rarely announce their trailers. So when an HTTP/2 message without
//! a `Trailer` header is about to become an HTTP/1.1 message that could carry trailers (a
//! request to an HTTP/1.1 upstream; a response, from an HTTP/2 upstream or chunked from an
//! HTTP/1.1 one, to an HTTP/1.1 client that sent `TE: trailers`),
//! Sluice reads ahead up to [`LEARN_LIMIT`] bytes of its body before the head is written. If the
//! body ends within that with trailers, their names go into a `Trailer` header (and a
//! `Content-Length`, which would rule out chunked framing, is dropped); the frames read are then
//! replayed. A longer body streams on as before, its trailers unannounced (and so dropped by
//! hyper): bounded memory and latency over completeness. See docs/architecture.md.

use bytes::Bytes;
use http::HeaderValue;
use http::header::{CONTENT_LENGTH, TRAILER};
use http_body::{Body, Frame};
use std::collections::VecDeque;
use std::pin::Pin;

/// Most body bytes read ahead to find trailers.
pub(crate) const LEARN_LIMIT: usize = 64 * 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Frames read ahead, handed back to the body to replay before it reads on.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    frames: VecDeque<Result<Frame<Bytes>, BoxError>>,
    /// The body ended (or failed) while reading ahead: nothing follows the replayed frames.
    ended: bool,
}

impl Replay {
    /// The next replayed item: `Some(item)` while there is one (`Some(None)` is the end of the
    /// body), `None` once the replay is used up and the body reads on.
    pub(crate) fn next(&mut self) -> Option<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.frames.pop_front() {
            Some(f) => Some(Some(f)),
            None if self.ended => Some(None),
            None => None,
        }
    }

    /// True when nothing but the end remains.
    pub(crate) fn is_end(&self) -> bool {
        self.ended && self.frames.is_empty()
    }

    /// `Trailer` header value naming the trailer fields read ahead, if the body ended with some.
    fn announcement(&self) -> Option<HeaderValue> {
        let trailers = self
            .frames
            .iter()
            .filter_map(|f| f.as_ref().ok())
            .find_map(Frame::trailers_ref)?;
        let names: Vec<&str> = trailers.keys().map(http::HeaderName::as_str).collect();
        if names.is_empty() {
            return None;
        }
        HeaderValue::from_str(&names.join(", ")).ok()
    }
}

/// Reads `body` ahead until it ends, fails, shows trailers or passes [`LEARN_LIMIT`] bytes.
async fn read_ahead<B>(body: &mut B) -> Replay
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    let mut replay = Replay::default();
    let mut size = 0usize;
    while size <= LEARN_LIMIT {
        match std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
            None => {
                replay.ended = true;
                break;
            }
            Some(Ok(f)) => {
                let trailers = f.is_trailers();
                size += f.data_ref().map_or(0, Bytes::len);
                replay.frames.push_back(Ok(f));
                if trailers {
                    replay.ended = true;
                    break;
                }
            }
            Some(Err(e)) => {
                replay.frames.push_back(Err(e));
                replay.ended = true;
                break;
            }
        }
    }
    replay
}

/// A body that can replay frames read ahead.
pub(crate) trait Replayable: Body<Data = Bytes, Error = BoxError> + Unpin {
    fn set_replay(&mut self, replay: Replay);
}

/// Reads the message's body ahead and announces its trailers in `headers` if it found any.
pub(crate) async fn announce<B: Replayable>(headers: &mut http::HeaderMap, body: &mut B) {
    let replay = read_ahead(body).await;
    if let Some(names) = replay.announcement() {
        headers.insert(TRAILER, names);
        headers.remove(CONTENT_LENGTH);
    }
    body.set_replay(replay);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcement_names_each_trailer_once() {
        let mut t = http::HeaderMap::new();
        t.append("x-a", HeaderValue::from_static("1"));
        t.append("x-a", HeaderValue::from_static("2"));
        t.append("grpc-status", HeaderValue::from_static("0"));
        let replay = Replay {
            frames: VecDeque::from([
                Ok(Frame::data(Bytes::from_static(b"x"))),
                Ok(Frame::trailers(t)),
            ]),
            ended: true,
        };
        assert_eq!(replay.announcement().unwrap(), "x-a, grpc-status");
        assert!(Replay::default().announcement().is_none());
    }
}
