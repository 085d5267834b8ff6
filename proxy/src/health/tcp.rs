//! TCP health checks: healthy when a connection opens (through the cluster's connector, so
//! its connect timeout applies too). The connection is closed at once.

use super::{Failure, Spec};
use std::net::SocketAddr;

/// One TCP check.
pub(super) async fn check(spec: &Spec, addr: SocketAddr) -> Result<(), Failure> {
    let stream = spec
        .connector
        .connect(addr, &spec.cluster_metrics, crate::tls::Alpn::None)
        .await
        .map_err(|e| Failure::Connect(e.to_string()))?;
    drop(stream);
    Ok(())
}
