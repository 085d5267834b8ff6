//! Active health checking: a [`Supervisor`], synced by the state writer after every applied
//! update, runs one checker per cluster with `health_checks`, on the control thread's runtime
//! (as Envoy runs its health checkers on the main thread), so checks neither load nor wait on
//! the workers. A checker follows its cluster's current endpoint set and runs one probe task
//! per endpoint ([`http`], [`grpc`], [`tcp`]); each task checks every interval ± jitter and
//! sets or clears the endpoint's `FAILED_ACTIVE_HC` flag through the thresholds ([`Tracker`]).
//! Balancers already skip endpoints with a flag set.
//!
//! New endpoints of a checked cluster start with `FAILED_ACTIVE_HC` (Envoy's pending hosts) and
//! are checked at once; the first success brings them in. A cluster whose endpoints are all
//! pending still gets traffic: balancers fall back to every endpoint when none is healthy
//! (panic mode). Enabling health checks on a running cluster keeps its endpoints healthy until
//! the checks say otherwise.

mod grpc;
mod http;
mod tcp;
#[cfg(test)]
mod tests;
mod tracker;

pub(crate) use tracker::{Thresholds, Tracker, Verdict, jittered};

use crate::cluster::connect::Connector;
use crate::cluster::{ClusterHandle, Registry};
use crate::endpoint::{Endpoint, EndpointState, Health};
use crate::metrics::{ClusterMetrics, Metrics};
use prometheus_client::metrics::counter::Counter;
use sluice_config::{HealthCheck, HealthCheckKind, StatusRange, UpstreamProtocol};
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Most response body bytes a probe reads (a health answer is small; a bigger one is drained
/// only this far and its connection dropped).
const MAX_BODY: usize = 64 << 10;

/// Runs the checkers: one per cluster with health checks.
#[derive(Debug, Default)]
pub(crate) struct Supervisor {
    checkers: HashMap<String, Checker>,
}

/// What a checker was started from; a change restarts it.
#[derive(Debug, PartialEq)]
struct Key {
    check: HealthCheck,
    protocol: UpstreamProtocol,
    connect_timeout: sluice_config::Duration,
}

#[derive(Debug)]
struct Checker {
    key: Key,
    handle: Arc<ClusterHandle>,
    spec: Arc<Spec>,
    wake: Arc<Notify>,
    _task: AbortOnDrop,
}

impl Supervisor {
    /// Starts, restarts and stops checkers to match the registry; wakes checkers whose
    /// endpoints changed. Outside a tokio runtime (the first apply, before the control loop
    /// runs) it does nothing; the control loop syncs again when it starts.
    pub(crate) fn sync(&mut self, registry: &Registry, metrics: &Metrics) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let mut wanted: HashMap<&str, (Key, &Arc<ClusterHandle>, Connector)> = HashMap::new();
        for (name, handle) in registry.iter() {
            let Some(settings) = handle.settings() else {
                continue;
            };
            let Some(check) = settings.config.health_checks.clone() else {
                continue;
            };
            if check.kind().is_none() {
                continue;
            }
            let key = Key {
                check,
                protocol: settings.config.protocol,
                connect_timeout: settings.config.connect_timeout,
            };
            let connector = settings.transport.connector.clone();
            wanted.insert(name.as_str(), (key, handle, connector));
        }
        self.checkers.retain(|name, c| {
            let keep = wanted
                .get(name.as_str())
                .is_some_and(|(k, h, _)| *k == c.key && Arc::ptr_eq(h, &c.handle));
            if !keep {
                c.spec.stopped.store(true, Ordering::Relaxed);
                if !wanted.contains_key(name.as_str()) {
                    // No checks any more: nothing will clear the flags it set.
                    for e in &c.handle.endpoints().endpoints {
                        e.state.set_healthy(Health::FAILED_ACTIVE_HC);
                    }
                    tracing::info!(cluster = %name, "health checks stopped");
                }
            }
            keep
        });
        for (name, (key, handle, connector)) in wanted {
            if let Some(c) = self.checkers.get(name) {
                c.wake.notify_one();
                continue;
            }
            let spec = Arc::new(Spec::new(name, &key, handle, connector, metrics));
            let wake = Arc::new(Notify::new());
            let task = tokio::spawn(run_cluster(
                Arc::clone(handle),
                Arc::clone(&spec),
                Arc::clone(&wake),
            ));
            tracing::info!(cluster = %name, probe = spec.probe.name(), interval = ?spec.interval, "health checks started");
            self.checkers.insert(
                name.to_string(),
                Checker {
                    key,
                    handle: Arc::clone(handle),
                    spec,
                    wake,
                    _task: AbortOnDrop(task),
                },
            );
        }
    }
}

/// Sets `sluice_cluster_endpoints` from the live clusters (called when metrics are scraped).
/// Clusters no longer known lose their series.
pub(crate) fn update_endpoint_gauges(
    metrics: &Metrics,
    clusters: &HashMap<String, Arc<ClusterHandle>>,
) {
    // Per-endpoint series, for clusters that ask for them, sorted so that the ones within the
    // cardinality budget stay the same from scrape to scrape.
    let mut tracked: Vec<_> = clusters
        .iter()
        .filter(|(_, h)| {
            h.settings_guard()
                .as_ref()
                .is_some_and(|s| s.config.per_endpoint_stats)
        })
        .map(|(name, h)| (name, h.endpoints()))
        .collect();
    tracked.sort_by(|a, b| a.0.cmp(b.0));
    let rows: Vec<crate::metrics::EndpointRow<'_>> = tracked
        .iter()
        .flat_map(|(name, set)| {
            set.endpoints.iter().map(|e| {
                let (requests, errors) = e.state.totals();
                crate::metrics::EndpointRow {
                    cluster: name.as_str(),
                    endpoint: e.address,
                    requests,
                    errors,
                    active: e.state.active_requests(),
                    healthy: e.state.is_healthy(),
                }
            })
        })
        .collect();
    metrics.set_endpoint_series(&rows);
    metrics.cluster_endpoints.clear();
    for (name, handle) in clusters {
        let set = handle.endpoints();
        let healthy = set
            .endpoints
            .iter()
            .filter(|e| e.state.is_healthy())
            .count();
        let unhealthy = set.endpoints.len() - healthy;
        for (health, n) in [("healthy", healthy), ("unhealthy", unhealthy)] {
            metrics
                .cluster_endpoints
                .get_or_create(&vec![("cluster", name.clone()), ("health", health.into())])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

/// Aborts a task when dropped.
#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A checker's settings, shared by its probe tasks.
#[derive(Debug)]
struct Spec {
    cluster: String,
    probe: Probe,
    interval: Duration,
    no_traffic_interval: Option<Duration>,
    jitter_percent: u32,
    timeout: Duration,
    thresholds: Thresholds,
    connector: Connector,
    cluster_metrics: ClusterMetrics,
    /// Cluster requests when the checker started (for `no_traffic_interval`).
    requests_at_start: u64,
    metrics: HealthMetrics,
    /// Set when the checker is stopped: its tasks may still be scheduled once and must not
    /// touch health flags any more.
    stopped: AtomicBool,
}

impl Spec {
    fn new(
        name: &str,
        key: &Key,
        handle: &ClusterHandle,
        connector: Connector,
        metrics: &Metrics,
    ) -> Self {
        let c = &key.check;
        let probe = match c.kind() {
            Some(HealthCheckKind::Http(h)) => Probe::Http {
                path: h.path.clone(),
                host: h.host.clone().unwrap_or_else(|| name.to_string()),
                expected: h.expected_statuses.clone(),
                http2: key.protocol == UpstreamProtocol::Http2,
            },
            Some(HealthCheckKind::Grpc(g)) => Probe::Grpc {
                service: g.service_name.clone(),
                authority: g.authority.clone().unwrap_or_else(|| name.to_string()),
            },
            Some(HealthCheckKind::Tcp) | None => Probe::Tcp,
        };
        Spec {
            cluster: name.to_string(),
            probe,
            interval: c.interval.get(),
            no_traffic_interval: c.no_traffic_interval.map(|d| d.get()),
            jitter_percent: c.interval_jitter_percent,
            timeout: c.timeout.get(),
            thresholds: Thresholds {
                healthy: c.healthy_threshold,
                unhealthy: c.unhealthy_threshold,
            },
            connector,
            requests_at_start: handle.metrics.requests.get(),
            cluster_metrics: handle.metrics.clone(),
            metrics: HealthMetrics::new(metrics, name),
            stopped: AtomicBool::new(false),
        }
    }

    /// The wait before the next check: `no_traffic_interval` while the cluster has had no
    /// request since the checker started, else `interval`; either ± jitter.
    fn next_wait(&self) -> Duration {
        let base = match self.no_traffic_interval {
            Some(d) if self.cluster_metrics.requests.get() == self.requests_at_start => d,
            _ => self.interval,
        };
        jittered(base, self.jitter_percent, fastrand::f64())
    }
}

/// What a probe sends.
#[derive(Debug)]
enum Probe {
    Http {
        path: String,
        host: String,
        expected: Vec<StatusRange>,
        http2: bool,
    },
    Grpc {
        service: String,
        authority: String,
    },
    Tcp,
}

impl Probe {
    fn name(&self) -> &'static str {
        match self {
            Probe::Http { .. } => "http",
            Probe::Grpc { .. } => "grpc",
            Probe::Tcp => "tcp",
        }
    }
}

/// Follows a cluster's endpoint set: one probe task per endpoint address, started when the
/// address appears and aborted (dropping its counters and connection) when it leaves. Woken by
/// the supervisor after updates, and looks again every interval in case the set changed
/// another way.
async fn run_cluster(handle: Arc<ClusterHandle>, spec: Arc<Spec>, wake: Arc<Notify>) {
    // By address, with the shared state the task updates: an address removed and added back
    // before this task looked has a new state, so it gets a new probe task.
    let mut probes: HashMap<SocketAddr, (Arc<EndpointState>, AbortOnDrop)> = HashMap::new();
    let mut version = None;
    loop {
        let set = handle.endpoints();
        if version != Some(set.version) {
            version = Some(set.version);
            probes.retain(|addr, (state, _)| {
                set.get(*addr).is_some_and(|e| Arc::ptr_eq(&e.state, state))
            });
            for e in &set.endpoints {
                probes.entry(e.address).or_insert_with(|| {
                    let task = tokio::spawn(run_endpoint(Arc::clone(e), Arc::clone(&spec)));
                    (Arc::clone(&e.state), AbortOnDrop(task))
                });
            }
        }
        drop(set);
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(spec.interval) => {}
        }
    }
}

/// Checks one endpoint until aborted: at once, then every interval ± jitter.
async fn run_endpoint(endpoint: Arc<Endpoint>, spec: Arc<Spec>) {
    let mut tracker = Tracker::new(spec.thresholds);
    let mut session = Session::default();
    loop {
        let outcome = match tokio::time::timeout(
            spec.timeout,
            session.check(&spec, endpoint.address),
        )
        .await
        {
            Ok(Ok(())) => Outcome::Success,
            Ok(Err(why)) => {
                session.reset();
                Outcome::Failure(why)
            }
            Err(_) => {
                session.reset();
                Outcome::Timeout
            }
        };
        if spec.stopped.load(Ordering::Relaxed) {
            return;
        }
        spec.metrics.count(&outcome);
        let failed = endpoint.state.has(Health::FAILED_ACTIVE_HC);
        match tracker.record(outcome.is_success(), failed) {
            Some(Verdict::Healthy) => {
                endpoint.state.set_healthy(Health::FAILED_ACTIVE_HC);
                spec.metrics.healthy.inc();
                tracing::info!(cluster = %spec.cluster, address = %endpoint.address, "health check: endpoint healthy");
            }
            Some(Verdict::Unhealthy) => {
                endpoint.state.set_unhealthy(Health::FAILED_ACTIVE_HC);
                spec.metrics.unhealthy.inc();
                tracing::warn!(cluster = %spec.cluster, address = %endpoint.address, reason = %outcome, "health check: endpoint unhealthy");
            }
            None => {
                tracing::debug!(cluster = %spec.cluster, address = %endpoint.address, result = %outcome, "health check");
            }
        }
        tokio::time::sleep(spec.next_wait()).await;
    }
}

/// One endpoint's probe state: the connection kept between HTTP and gRPC checks.
#[derive(Debug, Default)]
struct Session {
    client: Option<http::Client>,
}

impl Session {
    async fn check(&mut self, spec: &Spec, addr: SocketAddr) -> Result<(), Failure> {
        match &spec.probe {
            Probe::Tcp => tcp::check(spec, addr).await,
            Probe::Http {
                path,
                host,
                expected,
                http2,
            } => http::check(&mut self.client, spec, addr, *http2, path, host, expected).await,
            Probe::Grpc { service, authority } => {
                grpc::check(&mut self.client, spec, addr, service, authority).await
            }
        }
    }

    /// Drops the connection (after a failure or timeout, as Envoy does).
    fn reset(&mut self) {
        self.client = None;
    }
}

/// Why a check failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The connection could not be opened.
    Connect(String),
    /// The request failed on an open connection.
    Request(String),
    /// An HTTP status that is not expected.
    Status(u16),
    /// A gRPC answer other than `SERVING` (the `ServingStatus` number).
    NotServing(u64),
    /// A non-zero `grpc-status`.
    GrpcStatus(String),
    /// A malformed gRPC answer.
    Protocol(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Connect(e) => write!(f, "connect failed: {e}"),
            Failure::Request(e) => write!(f, "request failed: {e}"),
            Failure::Status(s) => write!(f, "unexpected status {s}"),
            Failure::NotServing(s) => {
                write!(f, "gRPC health status {} ({s})", grpc::status_name(*s))
            }
            Failure::GrpcStatus(s) => write!(f, "grpc-status {s}"),
            Failure::Protocol(e) => write!(f, "invalid gRPC health response: {e}"),
        }
    }
}

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Success,
    Failure(Failure),
    Timeout,
}

impl Outcome {
    fn is_success(&self) -> bool {
        matches!(self, Outcome::Success)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Success => f.write_str("success"),
            Outcome::Failure(why) => write!(f, "{why}"),
            Outcome::Timeout => f.write_str("timed out"),
        }
    }
}

/// One checker's counters (`sluice_health_checks_total`, `sluice_health_check_changes_total`),
/// created with the checker so every series exists from its start.
#[derive(Debug)]
struct HealthMetrics {
    success: Counter,
    failure: Counter,
    timeout: Counter,
    healthy: Counter,
    unhealthy: Counter,
}

impl HealthMetrics {
    fn new(m: &Metrics, cluster: &str) -> Self {
        let labels =
            |k: &'static str, v: &str| vec![("cluster", cluster.to_string()), (k, v.to_string())];
        let check = |r: &str| m.health_checks.get_or_create(&labels("result", r)).clone();
        let change = |h: &str| m.health_changes.get_or_create(&labels("health", h)).clone();
        HealthMetrics {
            success: check("success"),
            failure: check("failure"),
            timeout: check("timeout"),
            healthy: change("healthy"),
            unhealthy: change("unhealthy"),
        }
    }

    fn count(&self, outcome: &Outcome) {
        match outcome {
            Outcome::Success => self.success.inc(),
            Outcome::Failure(_) => self.failure.inc(),
            Outcome::Timeout => self.timeout.inc(),
        };
    }
}
