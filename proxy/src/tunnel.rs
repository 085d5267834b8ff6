//! Byte tunnels: copies both ways between two streams until either side closes, the tunnel is
//! idle for too long, or its listener is forcibly drained. Used by TCP listeners and upgraded
//! (WebSocket) HTTP connections.

use crate::drain::DrainWatch;
use prometheus_client::metrics::counter::Counter;
use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How a tunnel ended.
#[derive(Debug)]
pub(crate) enum Ended {
    /// Both directions finished; bytes copied (a → b, b → a).
    Closed(u64, u64),
    /// An I/O error on either side.
    Error(io::Error),
    /// No bytes either way for the idle timeout.
    Idle,
    /// The listener was drained by force.
    Drained,
}

/// A finished tunnel: how it ended and the bytes read from each side (however it ended).
#[derive(Debug)]
pub(crate) struct Spliced {
    pub(crate) ended: Ended,
    pub(crate) from_a: u64,
    pub(crate) from_b: u64,
}

/// Runs the tunnel; `bytes` counts what is read from `a` and from `b` as it is read.
pub(crate) async fn splice<A, B>(
    a: A,
    b: B,
    idle: Option<Duration>,
    mut drain: DrainWatch,
    bytes: Option<(Counter, Counter)>,
) -> Spliced
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Rc::new(Cell::new(0u64));
    let (from_a, from_b) = bytes.unzip();
    let mut a = Activity {
        inner: a,
        seen: Rc::clone(&activity),
        bytes: from_a,
        total: 0,
    };
    let mut b = Activity {
        inner: b,
        seen: Rc::clone(&activity),
        bytes: from_b,
        total: 0,
    };
    let ended = tokio::select! {
        r = tokio::io::copy_bidirectional(&mut a, &mut b) => match r {
            Ok((ab, ba)) => Ended::Closed(ab, ba),
            Err(e) => Ended::Error(e),
        },
        _ = idle_watch(&activity, idle) => Ended::Idle,
        _ = drain.forced() => Ended::Drained,
    };
    Spliced {
        ended,
        from_a: a.total,
        from_b: b.total,
    }
}

/// Resolves when no read happened for a whole `idle` period (checked once per period, so the
/// tunnel closes between one and two periods after the last byte).
async fn idle_watch(activity: &Cell<u64>, idle: Option<Duration>) {
    let Some(idle) = idle else {
        return std::future::pending().await;
    };
    let mut last = activity.get();
    loop {
        tokio::time::sleep(idle).await;
        let now = activity.get();
        if now == last {
            return;
        }
        last = now;
    }
}

/// Counts reads that returned data (and their bytes, when asked).
struct Activity<S> {
    inner: S,
    seen: Rc<Cell<u64>>,
    bytes: Option<Counter>,
    /// Bytes read so far.
    total: u64,
}

impl<S: AsyncRead + Unpin> AsyncRead for Activity<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let n = buf.filled().len() - before;
        if n > 0 {
            self.total += n as u64;
            self.seen.set(self.seen.get().wrapping_add(1));
            if let Some(c) = &self.bytes {
                c.inc_by(n as u64);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Activity<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
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
    use crate::drain::Drain;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn copies_both_ways_until_close() {
        let (mut client, a) = tokio::io::duplex(1024);
        let (b, mut server) = tokio::io::duplex(1024);
        let d = Drain::new();
        let peers = async move {
            client.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            server.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"ping");
            server.write_all(b"pong").await.unwrap();
            client.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"pong");
        };
        let (ended, ()) = tokio::join!(splice(a, b, None, d.watch(), None), async move {
            peers.await;
        });
        assert!(matches!(ended.ended, Ended::Closed(4, 4)), "{ended:?}");
        assert_eq!((ended.from_a, ended.from_b), (4, 4));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_tunnel_is_closed() {
        let (_client, a) = tokio::io::duplex(1024);
        let (b, _server) = tokio::io::duplex(1024);
        let d = Drain::new();
        let start = tokio::time::Instant::now();
        let ended = splice(a, b, Some(Duration::from_secs(30)), d.watch(), None).await;
        assert!(matches!(ended.ended, Ended::Idle));
        assert_eq!(start.elapsed(), Duration::from_secs(30));
    }
}
