//! The byte streams TLS puts on either side: the downstream handshake (what it established,
//! for the request path) and the upstream connection type, plaintext or TLS.

use super::{ClientTls, ServerTls, load};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What a TLS handshake established (it travels with the connection in `http::ConnContext`).
#[derive(Clone, Debug, Default)]
pub struct TlsInfo {
    /// Server name the client asked for (SNI).
    pub sni: Option<String>,
    /// Negotiated application protocol (ALPN).
    pub alpn: Option<Vec<u8>>,
    /// The client certificate's identity (SPIFFE ID), when verified.
    pub peer_identity: Option<String>,
    /// SHA-256 of the client certificate (DER, lowercase hex), when one was verified.
    pub peer_cert_sha256: Option<String>,
}

/// Which ALPN an upstream connection offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Alpn {
    /// None (TCP proxying, TCP health checks).
    None,
    /// `http/1.1`.
    Http1,
    /// `h2`.
    Http2,
}

/// A connection to an endpoint.
#[derive(Debug)]
pub(crate) enum UpstreamIo {
    /// Plaintext.
    Plain(TcpStream),
    /// TLS (boxed: rustls' connection state is large and most clusters are plaintext).
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl UpstreamIo {
    /// Opens TLS over `tcp` with the cluster's current config.
    pub(crate) async fn tls(tcp: TcpStream, tls: &ClientTls, alpn: Alpn) -> io::Result<Self> {
        let Some(configs) = tls.entry.current() else {
            return Err(io::Error::other(
                "TLS is not ready: an SDS secret it names has not been received",
            ));
        };
        let config = match alpn {
            Alpn::None => &configs.tcp,
            Alpn::Http1 => &configs.h1,
            Alpn::Http2 => &configs.h2,
        };
        let name = match &tls.server_name {
            Some(n) => n.clone(),
            // Only SANs are checked: no SNI is sent for an IP address.
            None => rustls_pki_types::ServerName::IpAddress(tcp.peer_addr()?.ip().into()),
        };
        let s = tokio_rustls::TlsConnector::from(std::sync::Arc::clone(config))
            .connect(name, tcp)
            .await?;
        Ok(UpstreamIo::Tls(Box::new(s)))
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            UpstreamIo::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            UpstreamIo::Tls($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
        }
    };
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
}

/// Why a downstream handshake did not complete.
#[derive(Debug)]
pub(crate) enum AcceptError {
    /// Not within the handshake timeout.
    Timeout,
    /// Failed (bad client hello, no acceptable certificate, client certificate refused...).
    Failed(io::Error),
}

/// Terminates TLS on an accepted connection within the listener's handshake timeout. Returns
/// the stream and what the handshake established.
pub(crate) async fn accept(
    tcp: TcpStream,
    tls: &ServerTls,
) -> Result<(tokio_rustls::server::TlsStream<TcpStream>, TlsInfo), AcceptError> {
    let Some(config) = tls.entry.current() else {
        return Err(AcceptError::Failed(io::Error::other(
            "TLS is not ready: an SDS secret it names has not been received",
        )));
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let stream = match tokio::time::timeout(
        tls.settings.handshake_timeout.get(),
        acceptor.accept(tcp),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(AcceptError::Failed(e)),
        Err(_) => return Err(AcceptError::Timeout),
    };
    let conn = stream.get_ref().1;
    let leaf = conn.peer_certificates().and_then(|c| c.first());
    let info = TlsInfo {
        sni: conn.server_name().map(str::to_string),
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        peer_identity: leaf
            .and_then(|c| load::info(c))
            .and_then(|i| i.spiffe_id().map(str::to_string)),
        peer_cert_sha256: leaf.map(|c| sha256_hex(c)),
    };
    Ok((stream, info))
}

fn sha256_hex(der: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(der);
    let mut s = String::with_capacity(64);
    for b in digest {
        use std::fmt::Write;
        let _ = write!(s, "{b:02x}");
    }
    s
}
