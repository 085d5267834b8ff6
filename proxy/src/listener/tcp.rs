//! TCP listeners: each connection goes to an endpoint of the listener's cluster and bytes flow
//! both ways until either side closes or the connection idles out. With `sni` routes (TLS
//! passthrough) the cluster is picked per connection from the ClientHello's server name
//! (`sni.rs`), and the bytes read to find it are sent to the upstream first.

use super::sni::{self, Inspected, Unmatched};
use super::{ListenerSpec, TcpSpec};
use crate::cluster::{ClusterHandle, call};
use crate::drain::Drain;
use crate::http::filters::ConnRecord;
use crate::local::Worker;
use crate::tunnel::{self, Ended};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

pub(super) async fn proxy(
    stream: TcpStream,
    peer: SocketAddr,
    spec: &ListenerSpec,
    tcp: &TcpSpec,
    worker: &Worker,
    drain: &Drain,
) {
    let log = tcp.access_log.as_deref().filter(|l| l.sampled());
    let local = stream.local_addr().unwrap_or(peer);
    let mut rec = ConnRecord::new(peer, local);
    run(stream, spec, tcp, worker, drain, &mut rec).await;
    if let Some(log) = log {
        log.connection(&rec);
    }
}

/// Routes and splices one connection, noting in `rec` where it went and how it ended.
async fn run(
    mut stream: TcpStream,
    spec: &ListenerSpec,
    tcp: &TcpSpec,
    worker: &Worker,
    drain: &Drain,
    rec: &mut ConnRecord,
) {
    let peer = rec.peer;
    let (cluster, prefix) = match &tcp.sni {
        None => (tcp.cluster.as_ref(), Vec::new()),
        Some(routes) => match sni::read_client_hello(&mut stream, routes.timeout).await {
            Ok((prefix, inspected)) => {
                let cluster = pick(spec, tcp, routes, rec, &prefix, inspected);
                (cluster, prefix)
            }
            Err(e) => {
                routes.unmatched(Unmatched::ClientClosed);
                rec.termination = "client_closed";
                tracing::debug!(listener = %spec.name, %peer, error = %e, "tls passthrough: read failed before a decision; connection closed");
                return;
            }
        },
    };
    // No cluster: a passthrough listener without a default (the decision was counted and
    // logged by `pick`).
    let Some(cluster) = cluster else { return };
    rec.cluster = Some(cluster.name.clone());
    let (mut upstream, _active, addr, _slot) = match call::connect_tcp(cluster, worker.id).await {
        Ok(c) => c,
        // No cluster or no endpoint is a config problem (warned, as before); connect failures
        // are counted on the cluster by the connector.
        // Warned (rate-limited per cluster): no endpoint, a refused or timed-out connect.
        Err(e) => {
            (rec.flag, rec.termination) = (Some(e.flag()), "connect_failed");
            tracing::debug!(listener = %spec.name, cluster = %cluster.name, %peer, error = %e, flag = e.flag(), "tcp upstream connect failed");
            cluster.warn_failure(&e, "tcp upstream connect failed", &spec.name, None);
            return;
        }
    };
    rec.upstream = Some(addr);
    let inspected = prefix.len() as u64;
    rec.received = inspected;
    if !prefix.is_empty()
        && let Err(e) = upstream.write_all(&prefix).await
    {
        (rec.flag, rec.termination) = (Some("UC"), "error");
        tracing::debug!(%peer, %addr, error = %e, "tcp upstream write of the inspected bytes failed");
        return;
    }
    drop(prefix);
    let m = &spec.metrics;
    m.bytes_received.inc_by(inspected);
    let bytes = Some((m.bytes_received.clone(), m.bytes_sent.clone()));
    let spliced = tunnel::splice(stream, upstream, tcp.idle_timeout, drain.watch(), bytes).await;
    rec.received += spliced.from_a;
    rec.sent = spliced.from_b;
    let (received, sent) = (rec.received, rec.sent);
    rec.termination = match spliced.ended {
        Ended::Closed(..) => {
            tracing::debug!(%peer, %addr, received, sent, "tcp connection closed");
            "closed"
        }
        Ended::Error(e) => {
            tracing::debug!(%peer, %addr, error = %e, "tcp connection failed");
            "error"
        }
        Ended::Idle => {
            tracing::debug!(%peer, %addr, "tcp connection idle timeout");
            "idle_timeout"
        }
        Ended::Drained => {
            tracing::debug!(%peer, %addr, "tcp connection closed by drain");
            "drained"
        }
    };
}

/// The cluster for a passthrough connection from what the inspector read (`None` from the
/// inspector: its timeout passed). Counts and logs the decision.
fn pick<'a>(
    spec: &ListenerSpec,
    tcp: &'a TcpSpec,
    routes: &'a sni::SniRoutes,
    rec: &mut ConnRecord,
    prefix: &[u8],
    inspected: Option<Inspected>,
) -> Option<&'a Arc<ClusterHandle>> {
    let peer = rec.peer;
    let why = match inspected {
        Some(Inspected::Hello(hello)) => match hello.server_name {
            Some(name) => {
                let routed = routes.route(&name);
                match routed {
                    Some(c) => {
                        tracing::debug!(listener = %spec.name, %peer, sni = %name, alpn = ?AlpnList(&hello.alpn), cluster = %c.name, "tls passthrough: routed by server name")
                    }
                    None => {
                        tracing::debug!(listener = %spec.name, %peer, sni = %name, "tls passthrough: no route for the server name")
                    }
                }
                rec.server_name = Some(name);
                if routed.is_some() {
                    return routed;
                }
                Unmatched::NoMatch
            }
            None => Unmatched::NoSni,
        },
        Some(Inspected::NotTls) => Unmatched::NotTls,
        Some(Inspected::Malformed) => Unmatched::Malformed,
        Some(Inspected::Incomplete) if prefix.is_empty() => Unmatched::ClientClosed,
        Some(Inspected::Incomplete) => Unmatched::Malformed,
        None => Unmatched::Timeout,
    };
    routes.unmatched(why);
    let default = if why == Unmatched::ClientClosed {
        None
    } else {
        tcp.cluster.as_ref()
    };
    if default.is_none() {
        (rec.flag, rec.termination) = if why == Unmatched::ClientClosed {
            (None, "client_closed")
        } else {
            (Some("NR"), "no_route")
        };
    }
    match default {
        Some(c) => {
            tracing::debug!(listener = %spec.name, %peer, reason = why.as_str(), cluster = %c.name, "tls passthrough: to the default cluster")
        }
        None => {
            tracing::debug!(listener = %spec.name, %peer, reason = why.as_str(), "tls passthrough: connection closed (no default cluster, or the client left)")
        }
    }
    default
}

/// ALPN protocols for a log line (`["h2", "http/1.1"]`).
struct AlpnList<'a>(&'a [Vec<u8>]);

impl std::fmt::Debug for AlpnList<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|p| String::from_utf8_lossy(p)))
            .finish()
    }
}
