//! The one upstream connector: every connection to an endpoint, from the HTTP pools and the
//! TCP proxy alike, is opened here (with the connect timeout, `TCP_NODELAY` and the cluster's
//! connection metrics). TLS origination slots in here.

use crate::error::ProxyError;
use crate::metrics::ClusterMetrics;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

/// Opens connections to endpoints.
#[derive(Clone, Debug)]
pub(crate) struct Connector {
    timeout: Duration,
}

impl Connector {
    pub(crate) fn new(timeout: Duration) -> Self {
        Connector { timeout }
    }

    /// Connects to `addr` within the connect timeout, counting the outcome on `metrics`.
    pub(crate) async fn connect(
        &self,
        addr: SocketAddr,
        metrics: &ClusterMetrics,
    ) -> Result<TcpStream, ProxyError> {
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
        metrics.connections.inc();
        Ok(stream)
    }
}
