//! TLS on the ADS listener: the serving certificate (PEM files, or issued by the built-in CA
//! and renewed at 70% of its lifetime), the handshake off the accept loop (bounded in time),
//! and the stream type tonic serves.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

/// Time allowed for a proxy's TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for tonic.
const BACKLOG: usize = 64;

/// The ADS listener's current server config (replaced when its certificate is renewed).
#[derive(Debug)]
pub struct ServingCert {
    config: RwLock<Arc<rustls::ServerConfig>>,
}

impl ServingCert {
    /// Serves `config` from now on.
    pub fn new(config: Arc<rustls::ServerConfig>) -> Arc<Self> {
        Arc::new(ServingCert {
            config: RwLock::new(config),
        })
    }

    /// The config for the next handshake.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.config.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Replaces the config (existing connections keep theirs).
    pub fn set(&self, config: Arc<rustls::ServerConfig>) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = config;
    }
}

/// A server config for HTTP/2 (ALPN `h2`) from a PEM chain and key; `what` names their origin
/// in errors.
pub fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    what: &str,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what}: invalid certificate PEM: {e}"))?;
    if chain.is_empty() {
        return Err(format!("{what}: no certificate"));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("{what}: no usable private key: {e}"))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("{what}: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("{what}: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A server config from PEM files.
pub fn from_files(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let read = |p: &std::path::Path, field: &str| {
        std::fs::read(p).map_err(|e| format!("xds.tls.{field}: {}: {e}", p.display()))
    };
    server_config(
        &read(cert, "cert")?,
        &read(key, "key")?,
        &format!("xds.tls ({})", cert.display()),
    )
}

/// Keeps `serving` on a certificate from `ca` for `names`, renewing it at 70% of its
/// lifetime; runs until the task is dropped.
pub async fn renew(ca: crate::ca::Ca, names: Vec<String>, serving: Arc<ServingCert>) {
    loop {
        let wait = match ca.serving_certificate(&names) {
            Ok((chain, key, lifetime)) => {
                match server_config(chain.as_bytes(), key.as_bytes(), "xds.tls") {
                    Ok(config) => {
                        serving.set(config);
                        tracing::info!(names = ?names, "the ADS listener's certificate was issued");
                        lifetime.mul_f64(crate::ca::ROTATE_AT)
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot use the ADS listener's certificate");
                        Duration::from_secs(5)
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot issue the ADS listener's certificate");
                Duration::from_secs(5)
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// Accepts TCP connections on `listener` and completes their TLS handshakes in their own
/// tasks (a slow or silent peer holds only its own), yielding the ones that finish in time.
pub fn incoming(
    listener: TcpListener,
    serving: Arc<ServingCert>,
) -> ReceiverStream<io::Result<TlsIo>> {
    let (tx, rx) = mpsc::channel(BACKLOG);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "ADS accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(serving.current());
            let handed = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = handed.send(Ok(TlsIo(tls))).await;
                    }
                    Ok(Err(e)) => {
                        tracing::info!(%peer, error = %e, "ADS TLS handshake failed")
                    }
                    Err(_) => tracing::info!(%peer, "ADS TLS handshake timed out"),
                }
            });
            if tx.is_closed() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

/// A TLS connection as tonic serves it.
#[derive(Debug)]
pub struct TlsIo(TlsStream<TcpStream>);

impl tonic::transport::server::Connected for TlsIo {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for TlsIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}
