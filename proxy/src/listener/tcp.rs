//! TCP listeners: each connection goes to an endpoint of the listener's cluster and bytes flow
//! both ways until either side closes or the connection idles out.

use crate::drain::Drain;
use crate::state::{ListenerSpec, TcpSpec};
use crate::tunnel::{self, Ended};
use std::net::SocketAddr;
use tokio::net::TcpStream;

pub(super) async fn proxy(
    stream: TcpStream,
    peer: SocketAddr,
    spec: &ListenerSpec,
    tcp: &TcpSpec,
    drain: &Drain,
) {
    let cluster = &tcp.cluster;
    let Some((_, addr)) = cluster.pick() else {
        tracing::warn!(listener = %spec.name, cluster = %cluster.name, "no endpoint available");
        return;
    };
    let timeout = cluster.config.connect_timeout.get();
    let upstream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            cluster.metrics.connect_failures.inc();
            tracing::debug!(%peer, %addr, error = %e, "upstream connect failed");
            return;
        }
        Err(_) => {
            cluster.metrics.connect_failures.inc();
            tracing::debug!(%peer, %addr, "upstream connect timed out");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    cluster.metrics.connections.inc();
    match tunnel::splice(stream, upstream, tcp.idle_timeout, drain.watch()).await {
        Ended::Closed(sent, received) => {
            tracing::debug!(%peer, %addr, sent, received, "tcp connection closed")
        }
        Ended::Error(e) => tracing::debug!(%peer, %addr, error = %e, "tcp connection failed"),
        Ended::Idle => tracing::debug!(%peer, %addr, "tcp connection idle timeout"),
        Ended::Drained => tracing::debug!(%peer, %addr, "tcp connection closed by drain"),
    }
}
