//! Compiled listener settings: what a worker needs to accept and serve a listener's
//! connections. HTTP settings are compiled by `http::spec`.

use super::sni::SniRoutes;
use crate::cluster::{ClusterHandle, Registry};
use crate::http::HttpSpec;
use crate::http::filters::HttpFilter;
use crate::metrics::{ListenerMetrics, Metrics};
use crate::route::RouteTable;
use sluice_config as config;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A compiled listener.
#[derive(Debug)]
pub struct ListenerSpec {
    /// Name.
    pub name: String,
    /// Configured address (port may be 0).
    pub address: SocketAddr,
    /// HTTP or TCP.
    pub kind: ListenerKind,
    /// TLS terminated in front of the HTTP server.
    pub tls: Option<Arc<crate::tls::ServerTls>>,
    /// Metric handles.
    pub metrics: ListenerMetrics,
}

/// What a listener does with its connections.
#[derive(Debug)]
pub enum ListenerKind {
    /// Serve HTTP and route.
    Http(Arc<HttpSpec>),
    /// Proxy bytes to a cluster.
    Tcp(TcpSpec),
}

/// Compiled TCP listener settings.
#[derive(Debug)]
pub struct TcpSpec {
    /// Destination cluster; with `sni`, the default for connections no server name routed
    /// (`None`: those are closed).
    pub cluster: Option<Arc<ClusterHandle>>,
    /// Idle timeout, if any.
    pub idle_timeout: Option<Duration>,
    /// TLS passthrough routes by server name, if any.
    pub sni: Option<Box<SniRoutes>>,
    /// Where each connection is logged when it ends, if anywhere.
    pub access_log: Option<Arc<crate::http::filters::AccessLog>>,
}

impl ListenerSpec {
    /// Compiles a listener; `route_table` resolves its HTTP route table by name. Fails when its
    /// TLS files cannot be used.
    pub fn compile(
        l: &config::Listener,
        route_table: impl FnOnce(&str) -> Arc<RouteTable>,
        clusters: &mut Registry,
        metrics: &Metrics,
        filters: &[Arc<dyn HttpFilter>],
    ) -> Result<ListenerSpec, String> {
        let tls = match &l.tls {
            Some(t) => Some(clusters.tls().server(t).map_err(|e| format!("tls: {e}"))?),
            None => None,
        };
        let access_log = |a: &Option<Box<config::AccessLog>>, kind: &str| match a {
            Some(a) => crate::http::filters::AccessLog::open(&l.name, a, metrics)
                .map(|log| Some(Arc::new(log)))
                .map_err(|e| format!("{kind}.{e}")),
            None => Ok(None),
        };
        let kind = match &l.kind {
            config::ListenerKind::Http(h) => {
                let access_log = access_log(&h.access_log, "http")?;
                ListenerKind::Http(Arc::new(HttpSpec::compile(
                    &l.name,
                    metrics.listener(&l.name),
                    route_table(&h.route_table),
                    h,
                    filters,
                    tls.as_deref(),
                    crate::http::Telemetry {
                        access_log,
                        tracer: clusters.tracer().cloned(),
                    },
                )))
            }
            config::ListenerKind::Tcp(t) => ListenerKind::Tcp(TcpSpec {
                cluster: t.cluster.as_deref().map(|c| clusters.handle(c)),
                idle_timeout: (!t.idle_timeout.is_zero()).then(|| t.idle_timeout.get()),
                sni: SniRoutes::compile(&l.name, t, clusters, metrics).map(Box::new),
                access_log: access_log(&t.access_log, "tcp")?,
            }),
        };
        let listener_metrics = match kind {
            ListenerKind::Http(ref h) => h.metrics.clone(),
            ListenerKind::Tcp(_) => metrics.tcp_listener(&l.name),
        };
        Ok(ListenerSpec {
            name: l.name.clone(),
            address: l.address,
            kind,
            tls,
            metrics: listener_metrics,
        })
    }

    /// `"http"` or `"tcp"`.
    pub fn protocol(&self) -> &'static str {
        match self.kind {
            ListenerKind::Http(_) => "http",
            ListenerKind::Tcp(_) => "tcp",
        }
    }

    /// The HTTP route table's name, for HTTP listeners.
    pub fn route_table(&self) -> Option<&str> {
        match &self.kind {
            ListenerKind::Http(h) => Some(&h.routes.name),
            ListenerKind::Tcp(_) => None,
        }
    }
}
