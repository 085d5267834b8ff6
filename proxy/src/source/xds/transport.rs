//! The connection to the control plane: plaintext for `http://`, TLS (rustls, ALPN `h2`, the
//! server verified by name against `--xds-ca` or the system bundle) for `https://`. tonic's
//! own TLS features stay off; this connector is handed to its channel.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Opens TLS connections to the URI's host and port.
#[derive(Clone, Debug)]
pub(super) struct TlsConnector {
    config: Arc<rustls::ClientConfig>,
}

impl TlsConnector {
    /// A connector trusting `ca` (PEM file) or the system bundle.
    pub(super) fn new(ca: Option<&std::path::Path>) -> Result<Self, String> {
        Ok(TlsConnector {
            config: crate::tls::plain_client_config(ca, &[b"h2"])?,
        })
    }
}

type Connecting =
    Pin<Box<dyn Future<Output = std::io::Result<TokioIo<TlsStream<TcpStream>>>> + Send>>;

impl tower_service::Service<Uri> for TlsConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = Arc::clone(&self.config);
        Box::pin(async move {
            let invalid =
                |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, why.to_string());
            let host = uri
                .host()
                .ok_or_else(|| invalid("the xDS URI has no host"))?;
            // `[::1]` in a URI is `::1` to a socket and to SNI.
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let name = ServerName::try_from(host.clone())
                .map_err(|_| invalid("the xDS host is not a DNS name or an IP address"))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            let _ = tcp.set_nodelay(true);
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(std::io::Error::other(
                    "the control plane did not agree to HTTP/2 (ALPN h2)",
                ));
            }
            Ok(TokioIo::new(tls))
        })
    }
}
