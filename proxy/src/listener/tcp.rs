//! TCP listeners: each connection goes to an endpoint of the listener's cluster and bytes flow
//! both ways until either side closes or the connection idles out.

use super::{ListenerSpec, TcpSpec};
use crate::cluster::call;
use crate::drain::Drain;
use crate::error::ProxyError;
use crate::local::Worker;
use crate::tunnel::{self, Ended};
use std::net::SocketAddr;
use tokio::net::TcpStream;

pub(super) async fn proxy(
    stream: TcpStream,
    peer: SocketAddr,
    spec: &ListenerSpec,
    tcp: &TcpSpec,
    worker: &Worker,
    drain: &Drain,
) {
    let cluster = &tcp.cluster;
    let (upstream, _active, addr, _slot) = match call::connect_tcp(cluster, worker.id).await {
        Ok(c) => c,
        // No cluster or no endpoint is a config problem (warned, as before); connect failures
        // are counted on the cluster by the connector.
        Err(e @ (ProxyError::NoCluster(_) | ProxyError::NoEndpoint(_))) => {
            tracing::warn!(listener = %spec.name, cluster = %cluster.name, %peer, error = %e, flag = e.flag(), "tcp upstream unavailable");
            return;
        }
        Err(e) => {
            tracing::debug!(listener = %spec.name, cluster = %cluster.name, %peer, error = %e, flag = e.flag(), "tcp upstream connect failed");
            return;
        }
    };
    match tunnel::splice(stream, upstream, tcp.idle_timeout, drain.watch()).await {
        Ended::Closed(sent, received) => {
            tracing::debug!(%peer, %addr, sent, received, "tcp connection closed")
        }
        Ended::Error(e) => tracing::debug!(%peer, %addr, error = %e, "tcp connection failed"),
        Ended::Idle => tracing::debug!(%peer, %addr, "tcp connection idle timeout"),
        Ended::Drained => tracing::debug!(%peer, %addr, "tcp connection closed by drain"),
    }
}
