//! Protocol detection: the first bytes of a connection tell HTTP/2 with prior knowledge (the
//! client preface) from HTTP/1.x. The bytes are peeked, not read, so hyper's first read gets the
//! whole request into one buffer (a replayed prefix would make it grow its buffer to 16 KiB).
//!
//! A preface that arrives in pieces stays in the socket, so the socket stays readable: waiting
//! for plain readiness would return at once and re-peek in a loop (5,000 clients sending half a
//! preface pinned a worker). Instead the wait clears the socket's readiness when no new byte is
//! queued and sleeps until the next readiness event, which the kernel raises for new bytes (or a
//! close): a stalled client costs nothing until it sends again or the header timeout ends it.

use socket2::SockRef;
use std::io;
use std::mem::MaybeUninit;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub(crate) const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// `Some(true)` for HTTP/2 prior knowledge, `Some(false)` for anything else, `None` when the
/// peer closed without sending a byte or after a partial preface (no HTTP/1.x request is a
/// prefix of the preface). Decides on the first byte that differs from the preface. The caller
/// bounds the wait (the header timeout).
pub(crate) async fn detect(stream: &TcpStream) -> io::Result<Option<bool>> {
    let mut buf = [0u8; 24];
    loop {
        let n = stream.peek(&mut buf).await?;
        let seen = buf.get(..n).unwrap_or_default();
        if n == 0 {
            return Ok(None);
        }
        if !H2_PREFACE.starts_with(seen) {
            return Ok(Some(false));
        }
        if n == H2_PREFACE.len() {
            return Ok(Some(true));
        }
        if !wait_for_more(stream, n).await? {
            return Ok(None);
        }
    }
}

/// Waits until more than `seen` bytes are queued on the socket; `false` when the peer closed
/// its side first. Race-free: `try_io` clears the readiness it observed *before* the peek, so
/// bytes that arrive after the peek leave the socket ready.
async fn wait_for_more(stream: &TcpStream, seen: usize) -> io::Result<bool> {
    // Only the count is used, so the buffer is never read (and needs no initialising).
    let mut scratch = [MaybeUninit::<u8>::uninit(); 24];
    loop {
        let ready = stream.ready(Interest::READABLE).await?;
        let peeked = stream.try_io(Interest::READABLE, || {
            match SockRef::from(stream).peek(&mut scratch)? {
                n if n > seen => Ok(()),
                // Nothing new: report "would block" so the readiness is cleared.
                _ => Err(io::ErrorKind::WouldBlock.into()),
            }
        });
        match peeked {
            Ok(()) => return Ok(true),
            // The peer's FIN stays a readiness event forever; nothing more can arrive.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && ready.is_read_closed() => {
                return Ok(false);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }

    #[tokio::test]
    async fn detects_h2_preface_even_in_pieces() {
        let (mut c, s) = pair().await;
        c.write_all(&H2_PREFACE[..5]).await.unwrap();
        let t = tokio::spawn(async move { detect(&s).await.unwrap() });
        tokio::task::yield_now().await;
        c.write_all(&H2_PREFACE[5..]).await.unwrap();
        assert_eq!(t.await.unwrap(), Some(true));
    }

    #[tokio::test]
    async fn http1_is_decided_on_first_mismatch_and_nothing_is_consumed() {
        let (mut c, mut s) = pair().await;
        c.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert_eq!(detect(&s).await.unwrap(), Some(false));
        drop(c);
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn completes_when_the_rest_of_the_preface_arrives_later() {
        let (mut c, s) = pair().await;
        c.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        let t = tokio::spawn(async move { detect(&s).await.unwrap() });
        // Let detection see the partial preface and go to sleep on the socket.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!t.is_finished());
        c.write_all(b"\r\nSM").await.unwrap();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!t.is_finished());
        c.write_all(b"\r\n\r\n").await.unwrap();
        let r = tokio::time::timeout(std::time::Duration::from_secs(10), t).await;
        assert_eq!(r.unwrap().unwrap(), Some(true));
    }

    #[tokio::test]
    async fn a_partial_preface_then_close_ends_detection() {
        let (mut c, s) = pair().await;
        c.write_all(b"P").await.unwrap();
        let t = tokio::spawn(async move { detect(&s).await.unwrap() });
        tokio::task::yield_now().await;
        c.shutdown().await.unwrap();
        let r = tokio::time::timeout(std::time::Duration::from_secs(10), t).await;
        assert_eq!(r.unwrap().unwrap(), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_stalled_partial_preface_does_not_poll_the_socket() {
        // Counts how often detection's future is polled while the peer sends nothing: it must
        // sleep on the socket, not wake on a timer.
        let (mut c, s) = pair().await;
        c.write_all(b"PRI * HTTP").await.unwrap();
        let polls = std::rc::Rc::new(std::cell::Cell::new(0u32));
        let counted = std::rc::Rc::clone(&polls);
        let mut fut = Box::pin(detect(&s));
        let outcome = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            std::future::poll_fn(|cx| {
                counted.set(counted.get() + 1);
                fut.as_mut().poll(cx)
            }),
        )
        .await;
        assert!(outcome.is_err(), "detection ended without the preface");
        assert!(
            polls.get() <= 3,
            "polled {} times while stalled",
            polls.get()
        );
        c.write_all(&H2_PREFACE[10..]).await.unwrap();
        assert_eq!(fut.await.unwrap(), Some(true));
    }

    #[tokio::test]
    async fn closed_without_bytes() {
        let (c, s) = pair().await;
        drop(c);
        assert_eq!(detect(&s).await.unwrap(), None);
    }
}
