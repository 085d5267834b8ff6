//! Protocol detection: the first bytes of a connection tell HTTP/2 with prior knowledge (the
//! client preface) from HTTP/1.x. The bytes are peeked, not read, so hyper's first read gets the
//! whole request into one buffer (a replayed prefix would make it grow its buffer to 16 KiB).

use std::io;
use std::time::Duration;
use tokio::net::TcpStream;

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub(crate) const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long to wait between looks at a preface that arrived in pieces.
const PARTIAL_RETRY: Duration = Duration::from_millis(2);

/// `Some(true)` for HTTP/2 prior knowledge, `Some(false)` for anything else, `None` when the
/// peer closed without sending a byte. Decides on the first byte that differs from the preface.
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
        // A preface split across packets: the peeked bytes stay readable, so waiting for
        // readiness would return at once; look again shortly (the caller bounds the wait).
        tokio::time::sleep(PARTIAL_RETRY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
    async fn closed_without_bytes() {
        let (c, s) = pair().await;
        drop(c);
        assert_eq!(detect(&s).await.unwrap(), None);
    }
}
