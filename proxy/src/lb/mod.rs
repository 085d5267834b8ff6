//! Endpoint picking. One file per algorithm behind [`LoadBalancer`]. A balancer sees the
//! endpoint set (weights, health, load) and a per-request [`PickContext`] (a hash for
//! consistent hashing, the attempt number, the endpoints already tried) and returns an endpoint
//! handle. Mutable balancer state is kept per worker, so a pick does no shared atomic
//! read-modify-write. Picking is a pure function of the balancer's state, unit-tested without
//! sockets. What every policy shares (the panic threshold, locality preference) is decided by
//! the endpoint set (`cluster/endpoint.rs`) before the balancer is asked.

mod hash;
mod least_request;
mod maglev;
mod peak_ewma;
mod random;
mod ring_hash;
mod round_robin;

pub use hash::{Bound, hash_bytes, mix64};
pub use least_request::LeastRequest;
pub use maglev::Maglev;
pub use peak_ewma::PeakEwma;
pub use random::Random;
pub use ring_hash::RingHash;
pub use round_robin::RoundRobin;

use crate::endpoint::{Endpoint, EndpointGroup};
pub use crate::metrics::LbMetrics;
use sluice_config::{self as config, LbPolicy};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

/// What a balancer knows about the request it picks for.
#[derive(Clone, Copy, Debug, Default)]
pub struct PickContext<'a> {
    /// The worker thread picking (selects the balancer's per-worker state).
    pub worker: usize,
    /// A request hash, for hash-based balancers (from the route's `hash_policy`).
    pub hash: Option<u64>,
    /// 1 for the first attempt, 2 for the first retry, …
    pub attempt: u32,
    /// Endpoints earlier attempts of this request used; avoided when another is available.
    pub tried: &'a [SocketAddr],
    /// Panic mode: too few endpoints are healthy, so health is ignored (set by the endpoint
    /// set from the panic threshold, not by callers).
    pub ignore_health: bool,
}

impl PickContext<'_> {
    /// True when `e` is healthy (or health is ignored) and not yet tried by this request.
    pub fn preferred(&self, e: &Endpoint) -> bool {
        (self.ignore_health || e.state.is_healthy()) && !self.tried.contains(&e.address)
    }
}

/// Picks an endpoint for each request attempt or connection.
pub trait LoadBalancer: Send + Sync + fmt::Debug {
    /// The chosen endpoint, or `None` when the set is empty. Prefers endpoints that are healthy
    /// and untried; when there is none, falls back to any endpoint (better to try a doubtful
    /// endpoint than to fail every request).
    fn pick<'a>(
        &self,
        endpoints: &'a [Arc<Endpoint>],
        ctx: &PickContext<'_>,
    ) -> Option<&'a Arc<Endpoint>>;
}

/// A cluster's balancing settings, compiled from its config and the proxy's zone.
#[derive(Clone, Debug, PartialEq)]
pub struct LbSettings {
    /// The algorithm.
    pub policy: LbPolicy,
    /// Peak-EWMA settings.
    pub peak_ewma: config::PeakEwmaSettings,
    /// Least-request settings.
    pub least_request: config::LeastRequestSettings,
    /// Ring-hash settings.
    pub ring_hash: config::RingHashSettings,
    /// Maglev settings.
    pub maglev: config::MaglevSettings,
    /// Panic threshold, percent of endpoints healthy.
    pub panic_threshold: u32,
    /// Locality preference.
    pub locality: config::LocalitySettings,
    /// The proxy's own zone (`node.zone`).
    pub local_zone: Option<Arc<str>>,
}

impl Default for LbSettings {
    fn default() -> Self {
        LbSettings {
            policy: LbPolicy::default(),
            peak_ewma: Default::default(),
            least_request: Default::default(),
            ring_hash: Default::default(),
            maglev: Default::default(),
            panic_threshold: 50,
            locality: Default::default(),
            local_zone: None,
        }
    }
}

impl LbSettings {
    /// The settings of cluster `c` in a proxy running in `local_zone`.
    pub fn new(c: &config::Cluster, local_zone: Option<&Arc<str>>) -> Self {
        LbSettings {
            policy: c.lb_policy,
            peak_ewma: c.peak_ewma.clone(),
            least_request: c.least_request.clone(),
            ring_hash: c.ring_hash.clone(),
            maglev: c.maglev.clone(),
            panic_threshold: c.panic_threshold,
            locality: c.locality.clone(),
            local_zone: local_zone.cloned(),
        }
    }
}

/// Builds the balancer for `settings` over `endpoints`, with state for `workers` worker
/// threads; `group` is the endpoints' shared group.
pub fn build(
    settings: &LbSettings,
    endpoints: &[Arc<Endpoint>],
    workers: usize,
    group: &Arc<EndpointGroup>,
    metrics: &LbMetrics,
) -> Box<dyn LoadBalancer> {
    let factor = |f: Option<u32>| f.map(|p| f64::from(p) / 100.0);
    let weights: Vec<u32> = endpoints.iter().map(|e| e.weight).collect();
    let weights = &weights;
    match settings.policy {
        LbPolicy::PeakEwma => {
            Box::new(PeakEwma::new(weights, settings.peak_ewma.default_rtt.get()))
        }
        LbPolicy::RoundRobin => Box::new(RoundRobin::new(weights, workers)),
        LbPolicy::Random => Box::new(Random::new(weights)),
        LbPolicy::LeastRequest => Box::new(LeastRequest::with_choices(
            weights,
            settings.least_request.choice_count,
        )),
        LbPolicy::RingHash => Box::new(RingHash::new(
            endpoints,
            settings.ring_hash.minimum_ring_size,
            settings.ring_hash.maximum_ring_size,
            hash::Bound::new(
                factor(settings.ring_hash.hash_balance_factor),
                group,
                &metrics.overload_skips,
            ),
        )),
        LbPolicy::Maglev => Box::new(Maglev::new(
            endpoints,
            settings.maglev.table_size,
            hash::Bound::new(
                factor(settings.maglev.hash_balance_factor),
                group,
                &metrics.overload_skips,
            ),
        )),
    }
}
