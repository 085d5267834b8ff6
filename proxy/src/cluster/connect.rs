//! The one upstream connector: every connection to an endpoint, from the HTTP pools, the TCP
//! proxy and the health checks alike, is opened here (with the connect timeout, `TCP_NODELAY`,
//! TLS origination when the cluster has `tls`, and the cluster's connection metrics: opened,
//! failed, open now, closed, and bytes each way, the last three through [`CountedIo`]).

use crate::error::ProxyError;
use crate::metrics::ClusterMetrics;
use crate::tls::{Alpn, ClientTls, UpstreamIo};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Opens connections to endpoints.
#[derive(Clone, Debug)]
pub(crate) struct Connector {
    timeout: Duration,
    tls: Option<Arc<ClientTls>>,
}

impl Connector {
    pub(crate) fn new(timeout: Duration, tls: Option<Arc<ClientTls>>) -> Self {
        Connector { timeout, tls }
    }

    /// Connects to `addr` within the connect timeout (and, for TLS, completes the handshake
    /// offering `alpn` within the connect timeout again), counting the outcome on `metrics`.
    pub(crate) async fn connect(
        &self,
        addr: SocketAddr,
        metrics: &ClusterMetrics,
        alpn: Alpn,
    ) -> Result<CountedIo, ProxyError> {
        let stream = match tokio::time::timeout(self.timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => {
                metrics.connect_failures.inc();
                tracing::debug!(cluster = %metrics.name(), %addr, error = %source, "upstream connect failed");
                return Err(ProxyError::ConnectFailed { addr, source });
            }
            Err(_) => {
                metrics.connect_failures.inc();
                tracing::debug!(cluster = %metrics.name(), %addr, "upstream connect timed out");
                return Err(ProxyError::ConnectTimeout {
                    addr,
                    timeout: self.timeout,
                });
            }
        };
        // Requests are written whole; Nagle would only delay them.
        let _ = stream.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(CountedIo::new(UpstreamIo::Plain(stream), metrics));
        };
        let tls_metrics = metrics.tls();
        match tokio::time::timeout(self.timeout, UpstreamIo::tls(stream, tls, alpn)).await {
            Ok(Ok(s)) => {
                tls_metrics.upstream_handshake(metrics.name(), "ok");
                Ok(CountedIo::new(s, metrics))
            }
            Ok(Err(source)) => {
                tls_metrics.upstream_handshake(metrics.name(), "failed");
                metrics.connect_failures.inc();
                tracing::warn!(cluster = %metrics.name(), %addr, error = %source, "upstream TLS handshake failed");
                Err(ProxyError::ConnectFailed { addr, source })
            }
            Err(_) => {
                tls_metrics.upstream_handshake(metrics.name(), "timeout");
                metrics.connect_failures.inc();
                tracing::debug!(cluster = %metrics.name(), %addr, "upstream TLS handshake timed out");
                Err(ProxyError::ConnectTimeout {
                    addr,
                    timeout: self.timeout,
                })
            }
        }
    }
}

/// An open upstream connection that counts its bytes on its cluster, and counts itself open
/// until dropped (the pool's connection task, the TCP tunnel or the health check ends).
#[derive(Debug)]
pub(crate) struct CountedIo {
    io: UpstreamIo,
    sent: Counter,
    received: Counter,
    active: Gauge,
    closed: Counter,
}

impl CountedIo {
    /// Counts the connection as opened and open.
    fn new(io: UpstreamIo, metrics: &ClusterMetrics) -> Self {
        metrics.connections.inc();
        metrics.connections_active.inc();
        CountedIo {
            io,
            sent: metrics.bytes_sent.clone(),
            received: metrics.bytes_received.clone(),
            active: metrics.connections_active.clone(),
            closed: metrics.connections_closed.clone(),
        }
    }
}

impl Drop for CountedIo {
    fn drop(&mut self) {
        self.active.dec();
        self.closed.inc();
    }
}

impl AsyncRead for CountedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        let n = buf.filled().len() - before;
        if n > 0 {
            this.received.inc_by(n as u64);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for CountedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = ready!(Pin::new(&mut this.io).poll_write(cx, buf));
        if let Ok(n @ 1..) = written {
            this.sent.inc_by(n as u64);
        }
        Poll::Ready(written)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, bufs));
        if let Ok(n @ 1..) = written {
            this.sent.inc_by(n as u64);
        }
        Poll::Ready(written)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
