//! Protocol detection: the first bytes of a connection tell HTTP/2 with prior knowledge (the
//! client preface) from HTTP/1.x. The bytes read to decide are replayed by [`Rewind`].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub(crate) const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the first bytes said.
#[derive(Debug)]
pub(crate) struct Detected {
    pub(crate) http2: bool,
    pub(crate) prefix: Vec<u8>,
}

/// Reads until the bytes either complete the HTTP/2 preface or stop matching it. `Ok(None)`
/// means the peer closed without sending anything.
pub(crate) async fn detect<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Option<Detected>> {
    let mut buf = [0u8; 24];
    let mut len = 0;
    while let Some(dst) = buf.get_mut(len..) {
        let n = stream.read(dst).await?;
        if n == 0 {
            return if len == 0 {
                Ok(None)
            } else {
                Ok(Some(Detected {
                    http2: false,
                    prefix: buf.get(..len).unwrap_or_default().to_vec(),
                }))
            };
        }
        len += n;
        let seen = buf.get(..len).unwrap_or_default();
        if !H2_PREFACE.starts_with(seen) {
            return Ok(Some(Detected {
                http2: false,
                prefix: seen.to_vec(),
            }));
        }
        if len == H2_PREFACE.len() {
            break;
        }
    }
    Ok(Some(Detected {
        http2: true,
        prefix: buf.to_vec(),
    }))
}

/// A stream that first yields `prefix`, then reads from `inner`.
#[derive(Debug)]
pub(crate) struct Rewind<S> {
    prefix: Option<Vec<u8>>,
    pos: usize,
    inner: S,
}

impl<S> Rewind<S> {
    pub(crate) fn new(inner: S, prefix: Vec<u8>) -> Self {
        Rewind {
            prefix: (!prefix.is_empty()).then_some(prefix),
            pos: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(prefix) = &this.prefix {
            let rest = prefix.get(this.pos..).unwrap_or_default();
            let n = rest.len().min(buf.remaining());
            buf.put_slice(rest.get(..n).unwrap_or_default());
            this.pos += n;
            if this.pos >= prefix.len() {
                this.prefix = None;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
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

    #[tokio::test]
    async fn detects_h2_preface_even_in_pieces() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let t = tokio::spawn(async move { detect(&mut b).await.unwrap().unwrap() });
        use tokio::io::AsyncWriteExt;
        a.write_all(&H2_PREFACE[..5]).await.unwrap();
        tokio::task::yield_now().await;
        a.write_all(&H2_PREFACE[5..]).await.unwrap();
        let d = t.await.unwrap();
        assert!(d.http2);
        assert_eq!(&d.prefix, H2_PREFACE);
    }

    #[tokio::test]
    async fn http1_is_decided_on_first_mismatch_and_replayed() {
        let (mut a, mut b) = tokio::io::duplex(64);
        use tokio::io::AsyncWriteExt;
        a.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let d = detect(&mut b).await.unwrap().unwrap();
        assert!(!d.http2);
        let mut r = Rewind::new(b, d.prefix);
        drop(a);
        let mut s = String::new();
        r.read_to_string(&mut s).await.unwrap();
        assert_eq!(s, "GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn closed_without_bytes() {
        let (a, mut b) = tokio::io::duplex(64);
        drop(a);
        assert!(detect(&mut b).await.unwrap().is_none());
    }
}
