//! Clusters: long-lived handles in a [`Registry`] that survive every config change, the
//! upstream call ([`call`]: pick → admit → pool → send → classify), the per-worker connection
//! pools keyed by endpoint address and transport ([`pool`]) and the one connector both the
//! pools and the TCP proxy use ([`connect`]).
//!
//! A cluster's settings and its endpoint set sit behind separate atomic swaps, so an endpoint
//! change (Envoy EDS) touches neither the settings nor any route table, and a settings change
//! (CDS) keeps the endpoints. Each endpoint, keyed by address, carries shared state (health
//! flags, active requests) that survives endpoint-set changes.

pub mod budget;
pub(crate) mod call;
pub(crate) mod connect;
mod endpoint;
mod outlier;
mod pool;
pub mod retry;

pub use crate::endpoint::{Endpoint, EndpointGroup, EndpointState, Health};
pub use endpoint::{EndpointSet, EndpointSpec};
pub(crate) use pool::{Lease, Pools, UpstreamProtocol};

use crate::lb::LbSettings;
use crate::metrics::{ClusterMetrics, Metrics};
use arc_swap::{ArcSwap, ArcSwapOption, Guard};
use connect::Connector;
use sluice_config::{self as config, ClusterLoadAssignment};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

/// A named cluster that outlives config changes. Routes and TCP listeners hold the handle; a
/// handle whose settings are absent (the cluster is not, or no longer, configured) answers
/// 503 with the `NC` flag, as Envoy does while a cluster warms.
#[derive(Debug)]
pub struct ClusterHandle {
    /// Name.
    pub name: String,
    settings: ArcSwapOption<ClusterSettings>,
    endpoints: ArcSwap<EndpointSet>,
    /// Metric handles.
    pub metrics: ClusterMetrics,
    /// What every endpoint state of the cluster shares — circuit breakers, outlier detection,
    /// the health epoch — kept across settings and endpoint changes.
    pub shared: Arc<EndpointGroup>,
    /// The retry budget (one window per worker).
    pub(crate) budget: budget::RetryBudget,
    /// Limits the `warn` lines of this cluster's upstream failures.
    failures: crate::log_limit::LogLimiter,
}

/// A cluster's compiled settings (everything but its endpoints).
#[derive(Debug)]
pub struct ClusterSettings {
    /// The config it was compiled from (its `endpoints` list is empty: they are a resource of
    /// their own).
    pub config: config::Cluster,
    /// How connections are made and pooled.
    pub transport: Transport,
}

/// How connections to a cluster's endpoints are made and pooled. Pools are keyed by endpoint
/// address and [`Transport::key`], so clusters with the same transport share connections and a
/// transport change starts fresh ones.
#[derive(Debug)]
pub struct Transport {
    /// Identifies the settings below (pool key).
    pub key: u64,
    /// Opens connections.
    pub(crate) connector: Connector,
    /// An idle pooled connection is closed after this long.
    pub idle_timeout: Duration,
    /// Most idle HTTP/1.1 connections per endpoint and worker.
    pub max_idle: usize,
    /// Most concurrent streams per upstream HTTP/2 connection.
    pub max_h2_streams: u32,
    /// A connection this old takes no new request.
    pub max_age: Option<Duration>,
    /// Most bytes read ahead per upstream connection (HTTP/1.1 read buffer) or stream (HTTP/2
    /// window and send buffer); validated to be at least 8KiB.
    pub buffer_limit: usize,
}

impl Transport {
    fn new(c: &config::Cluster, tls: Option<Arc<crate::tls::ClientTls>>) -> Self {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        c.connect_timeout.hash(&mut h);
        c.pool.hash(&mut h);
        c.per_connection_buffer_limit_bytes.hash(&mut h);
        // The effective TLS settings (with the discovered SNI), not the configured ones.
        tls.as_ref().map(|t| &t.settings).hash(&mut h);
        Transport {
            key: h.finish(),
            connector: Connector::new(c.connect_timeout.get(), tls),
            idle_timeout: c.pool.idle_timeout.get(),
            max_idle: c.pool.max_idle_per_endpoint as usize,
            max_h2_streams: c.pool.max_requests_per_http2_connection,
            max_age: c.pool.max_connection_age.map(|d| d.get()),
            buffer_limit: c.per_connection_buffer_limit_bytes.bytes() as usize,
        }
    }
}

impl ClusterHandle {
    /// Logs a failure of this cluster's upstream (`what` happened) at `warn` with the endpoint,
    /// listener and route, at most [`crate::log_limit::BURST`] lines per window per cluster, so
    /// a dead upstream cannot flood the log; the next line let through says how many were held
    /// back.
    pub(crate) fn warn_failure(
        &self,
        e: &crate::error::ProxyError,
        what: &str,
        listener: &str,
        route: Option<&str>,
    ) {
        let Some(suppressed) = self.failures.admit() else {
            return;
        };
        let endpoint = e
            .endpoint()
            .map_or_else(|| "-".to_string(), |a| a.to_string());
        let route = route.unwrap_or("-");
        if suppressed == 0 {
            tracing::warn!(cluster = %self.name, %endpoint, %listener, %route, flag = %e.flag(), error = %e, "{what}");
        } else {
            tracing::warn!(cluster = %self.name, %endpoint, %listener, %route, flag = %e.flag(), error = %e, suppressed, "{what} ({suppressed} similar suppressed since the last such line)");
        }
    }

    /// The current settings; `None` while the cluster is not configured.
    pub fn settings(&self) -> Option<Arc<ClusterSettings>> {
        self.settings.load_full()
    }

    /// The current settings without touching the reference count (request path).
    pub(crate) fn settings_guard(&self) -> Guard<Option<Arc<ClusterSettings>>> {
        self.settings.load()
    }

    /// The current endpoint set.
    pub fn endpoints(&self) -> Arc<EndpointSet> {
        self.endpoints.load_full()
    }

    pub(crate) fn endpoints_guard(&self) -> Guard<Arc<EndpointSet>> {
        self.endpoints.load()
    }
}

/// What an update did to one resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// It did not exist before.
    Added,
    /// It replaced a different version.
    Updated,
    /// It was identical to the live version.
    Unchanged,
    /// It was removed.
    Removed,
}

/// Every cluster handle by name. Owned by the state's one writer; workers see handles only
/// through compiled routes and listeners.
#[derive(Debug)]
pub struct Registry {
    clusters: HashMap<String, Arc<ClusterHandle>>,
    metrics: Arc<Metrics>,
    workers: usize,
    next_version: u64,
    /// The proxy's zone (`node.zone`), for locality preference.
    zone: Option<Arc<str>>,
    /// Listener and cluster TLS configs, reloaded when their files change.
    tls: Arc<crate::tls::TlsStore>,
    /// The tracer HTTP listeners compile with (`tracing` in the config, read at start).
    tracer: Option<Arc<crate::otel::Tracer>>,
}

impl Registry {
    /// An empty registry; `workers` sizes the per-worker balancer state.
    pub fn new(metrics: Arc<Metrics>, workers: usize) -> Self {
        Registry {
            clusters: HashMap::new(),
            tls: crate::tls::TlsStore::new(metrics.tls.clone()),
            metrics,
            workers: workers.max(1),
            next_version: 1,
            zone: None,
            tracer: None,
        }
    }

    /// Sets the tracer (at start, before any listener is compiled).
    pub fn set_tracer(&mut self, tracer: Option<Arc<crate::otel::Tracer>>) {
        self.tracer = tracer;
    }

    /// The tracer, when tracing is configured.
    pub fn tracer(&self) -> Option<&Arc<crate::otel::Tracer>> {
        self.tracer.as_ref()
    }

    /// The TLS store (listeners' TLS is built through it too).
    pub fn tls(&self) -> &Arc<crate::tls::TlsStore> {
        &self.tls
    }

    /// Sets the proxy's zone (`node.zone`; at start, before any cluster is configured).
    pub fn set_zone(&mut self, zone: Option<&str>) {
        self.zone = zone.map(Arc::from);
    }

    /// The handle for `name`, created empty (no settings, no endpoints) when unknown, so a
    /// route can refer to a cluster that has not arrived yet.
    pub fn handle(&mut self, name: &str) -> Arc<ClusterHandle> {
        if let Some(h) = self.clusters.get(name) {
            return Arc::clone(h);
        }
        let shared: Arc<EndpointGroup> = Arc::default();
        let h = Arc::new(ClusterHandle {
            name: name.to_string(),
            settings: ArcSwapOption::empty(),
            endpoints: ArcSwap::from_pointee(EndpointSet::empty_in(
                self.workers,
                Arc::clone(&shared),
            )),
            metrics: self.metrics.cluster(name),
            shared,
            budget: budget::RetryBudget::new(self.workers),
            failures: crate::log_limit::LogLimiter::default(),
        });
        self.clusters.insert(name.to_string(), Arc::clone(&h));
        h
    }

    /// The metric families (for route breakers' counters).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The handle for `name`, if any route, listener or resource knows it.
    pub fn get(&self, name: &str) -> Option<&Arc<ClusterHandle>> {
        self.clusters.get(name)
    }

    /// Sets a cluster's settings (its `endpoints` field is ignored). Fails, changing nothing,
    /// when its TLS files cannot be used.
    pub fn set_settings(&mut self, cfg: &config::Cluster) -> Result<Change, String> {
        let h = self.handle(&cfg.name);
        let old = h.settings();
        let cfg = config::Cluster {
            endpoints: Vec::new(),
            ..cfg.clone()
        };
        if old.as_ref().is_some_and(|o| o.config == cfg) {
            return Ok(Change::Unchanged);
        }
        let tls = match &cfg.tls {
            Some(t) => {
                let dns_name = cfg
                    .discovery
                    .as_ref()
                    .and_then(|d| d.names.first())
                    .map(|n| n.rsplit_once(':').map_or(n.as_str(), |(host, _)| host));
                Some(
                    self.tls
                        .client(t, dns_name)
                        .map_err(|e| format!("tls: {e}"))?,
                )
            }
            None => None,
        };
        let lb = LbSettings::new(&cfg, self.zone.as_ref());
        let lb_changed = old
            .as_ref()
            .map(|o| LbSettings::new(&o.config, self.zone.as_ref()))
            != Some(lb.clone());
        let settings = ClusterSettings {
            transport: Transport::new(&cfg, tls),
            config: cfg,
        };
        h.shared
            .breakers
            .configure(&settings.config.circuit_breakers);
        h.shared
            .outlier
            .configure(&settings.config.outlier_detection);
        let current = h.endpoints();
        if lb_changed && current.version != 0 {
            // The balancer is built with the endpoint set; rebuild it for the new settings.
            let set = EndpointSet::build(
                self.bump(),
                current.specs(),
                Some(&current),
                &lb,
                self.workers,
                &h.metrics.lb,
            );
            h.endpoints.store(Arc::new(set));
        }
        h.settings.store(Some(Arc::new(settings)));
        Ok(if old.is_some() {
            Change::Updated
        } else {
            Change::Added
        })
    }

    /// Replaces a cluster's endpoints. Endpoints whose address stays keep their shared state
    /// (health, active requests) and, in every worker, their pooled connections.
    pub fn set_endpoints(&mut self, cla: &ClusterLoadAssignment) -> Change {
        let h = self.handle(&cla.cluster_name);
        let current = h.endpoints();
        let specs: Vec<EndpointSpec> = cla.endpoints.iter().map(EndpointSpec::from).collect();
        if current.same_as(&specs) && current.version != 0 {
            return Change::Unchanged;
        }
        let lb = h
            .settings()
            .map(|s| LbSettings::new(&s.config, self.zone.as_ref()))
            .unwrap_or_default();
        let set = EndpointSet::build(
            self.bump(),
            specs.into_iter(),
            Some(&current),
            &lb,
            self.workers,
            &h.metrics.lb,
        );
        if h.settings()
            .is_some_and(|s| s.config.health_checks.is_some())
        {
            // New addresses wait for their first health check (Envoy's pending hosts): flagged
            // before the set goes live, so no request sees an unchecked endpoint as healthy.
            for e in set
                .endpoints
                .iter()
                .filter(|e| current.get(e.address).is_none())
            {
                e.state.set_unhealthy(Health::FAILED_ACTIVE_HC);
            }
        }
        h.endpoints.store(Arc::new(set));
        if current.version == 0 {
            Change::Added
        } else {
            Change::Updated
        }
    }

    /// Removes a cluster's settings: routes to it answer 503 (`NC`) until it returns.
    pub fn remove_settings(&mut self, name: &str) -> Change {
        match self.clusters.get(name) {
            Some(h) if h.settings().is_some() => {
                h.settings.store(None);
                Change::Removed
            }
            _ => Change::Unchanged,
        }
    }

    /// Removes a cluster's endpoints: it answers 503 (`UH`) until endpoints return.
    pub fn remove_endpoints(&mut self, name: &str) -> Change {
        match self.clusters.get(name) {
            Some(h) if h.endpoints().version != 0 => {
                h.endpoints.store(Arc::new(EndpointSet::empty_in(
                    self.workers,
                    Arc::clone(&h.shared),
                )));
                Change::Removed
            }
            _ => Change::Unchanged,
        }
    }

    /// Forgets handles nothing refers to and nothing configures.
    pub fn collect_garbage(&mut self) {
        self.clusters.retain(|_, h| {
            Arc::strong_count(h) > 1 || h.settings().is_some() || h.endpoints().version != 0
        });
    }

    /// Runs outlier detection's periodic work on every cluster whose interval has passed
    /// (failure percentages, returns, the ejection multiplier's decay, the ejected gauge).
    pub fn sweep_outliers(&self, now: tokio::time::Instant) {
        for h in self.clusters.values() {
            outlier::sweep(h, now);
        }
    }

    /// Names and handles, for the admin API.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Arc<ClusterHandle>)> {
        self.clusters.iter()
    }

    fn bump(&mut self) -> u64 {
        let v = self.next_version;
        self.next_version += 1;
        v
    }
}

#[cfg(test)]
mod tests;
