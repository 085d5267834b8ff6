//! Endpoints: one upstream address with the state every worker shares for it (health flags,
//! active requests, outlier counters) and a link to its cluster's shared state (circuit
//! breakers, outlier detection settings). Clusters hold endpoints in their endpoint sets,
//! balancers pick among them; this module depends only on the leaf modules `breaker` and
//! `outlier`.

use crate::breaker::Breakers;
use crate::outlier::{self, ClusterOutlier, EndpointOutlier, Outcome};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};

/// One upstream address in one endpoint set.
#[derive(Debug)]
pub struct Endpoint {
    /// Address.
    pub address: SocketAddr,
    /// Relative share of requests.
    pub weight: u32,
    /// Shared state, kept while the address stays in the set.
    pub state: Arc<EndpointState>,
}

/// Why an endpoint is excluded from balancing (bit flags; none set means healthy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Health(u8);

impl Health {
    /// Failed active health checking.
    pub const FAILED_ACTIVE_HC: Health = Health(1);
    /// Ejected by outlier detection.
    pub const FAILED_OUTLIER: Health = Health(2);
    /// Every flag with its name (admin API).
    pub const ALL: [(Health, &'static str); 2] = [
        (Health::FAILED_ACTIVE_HC, "failed_active_hc"),
        (Health::FAILED_OUTLIER, "failed_outlier"),
    ];
}

/// State every worker shares for one cluster, whatever its settings and endpoint set: its
/// circuit breakers and outlier detection. Endpoint states point at it, so a request's
/// guard releases the cluster's count with the endpoint's.
#[derive(Debug, Default)]
pub struct ClusterShared {
    /// Circuit breakers.
    pub breakers: Breakers,
    /// Outlier detection settings and ejected count.
    pub outlier: ClusterOutlier,
}

/// State shared by every worker for one endpoint: what circuit breakers, outlier detection,
/// health checks and load-aware balancers read and write.
#[derive(Debug, Default)]
pub struct EndpointState {
    health: AtomicU8,
    active: AtomicU32,
    /// Outlier detection's counters.
    pub outlier: EndpointOutlier,
    /// The cluster's shared state.
    pub cluster: Arc<ClusterShared>,
}

impl EndpointState {
    /// A fresh state for an endpoint of the cluster with this shared state.
    pub fn new(cluster: Arc<ClusterShared>) -> Self {
        EndpointState {
            health: AtomicU8::new(0),
            active: AtomicU32::new(0),
            outlier: EndpointOutlier::default(),
            cluster,
        }
    }

    /// True when no health flag is set, or the only one is an outlier ejection whose time has
    /// passed (the cluster's sweep clears it; only unhealthy endpoints read the clock).
    pub fn is_healthy(&self) -> bool {
        let h = self.health.load(Ordering::Relaxed);
        h == 0
            || (h == Health::FAILED_OUTLIER.0
                && self
                    .outlier
                    .is_due(outlier::millis(crate::clock::coarse_now())))
    }

    /// Ends an outlier ejection whose time has passed; true when this call ended it.
    pub fn return_if_due(&self, now: tokio::time::Instant) -> bool {
        let ended = self
            .outlier
            .try_return(&self.cluster.outlier, outlier::millis(now));
        if ended {
            self.set_healthy(Health::FAILED_OUTLIER);
        }
        ended
    }

    /// True when ejected by outlier detection.
    pub fn is_ejected(&self) -> bool {
        self.health.load(Ordering::Relaxed) & Health::FAILED_OUTLIER.0 != 0
    }

    /// Records an attempt's outcome for outlier detection; when it crosses a threshold and the
    /// cluster has room, ejects the endpoint and returns why and for how long.
    pub fn report(
        &self,
        outcome: Outcome,
        endpoints: impl FnOnce() -> usize,
        now: tokio::time::Instant,
    ) -> Option<(outlier::Reason, std::time::Duration)> {
        let cluster = &self.cluster.outlier;
        if !cluster.enabled() {
            return None;
        }
        if outcome == Outcome::Success {
            self.outlier.record_success();
            return None;
        }
        let c = cluster.config();
        let reason = self.outlier.record(outcome, &c)?;
        self.eject(reason, &c, endpoints(), now)
    }

    /// Ejects the endpoint (if the cluster has room).
    pub fn eject(
        &self,
        reason: outlier::Reason,
        c: &sluice_config::OutlierDetection,
        endpoints: usize,
        now: tokio::time::Instant,
    ) -> Option<(outlier::Reason, std::time::Duration)> {
        let d = self
            .outlier
            .try_eject(&self.cluster.outlier, c, endpoints, now)?;
        self.set_unhealthy(Health::FAILED_OUTLIER);
        Some((reason, d))
    }

    /// True when the flag `why` is set.
    pub fn has(&self, why: Health) -> bool {
        self.health.load(Ordering::Relaxed) & why.0 != 0
    }

    /// Sets a health flag.
    pub fn set_unhealthy(&self, why: Health) {
        self.health.fetch_or(why.0, Ordering::Relaxed);
    }

    /// Clears a health flag.
    pub fn set_healthy(&self, why: Health) {
        self.health.fetch_and(!why.0, Ordering::Relaxed);
    }

    /// Requests in flight to this endpoint, over all workers.
    pub fn active_requests(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    /// Counts a request in flight (on the endpoint and the cluster's `max_requests` breaker)
    /// until the guard drops; `None` when the cluster's breaker is full.
    pub(crate) fn try_admit(self: &Arc<Self>) -> Option<ActiveRequest> {
        if !self.cluster.breakers.requests.try_acquire() {
            return None;
        }
        let mut a = self.admit();
        a.counted = true;
        Some(a)
    }

    /// Counts a request in flight on the endpoint only (TCP connections and upgrades, which
    /// the connection breaker bounds).
    pub(crate) fn admit(self: &Arc<Self>) -> ActiveRequest {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveRequest {
            state: Arc::clone(self),
            counted: false,
            route: None,
        }
    }
}

/// Counts one request as active on its endpoint (and its cluster's and route's breakers)
/// while alive.
#[derive(Debug)]
pub(crate) struct ActiveRequest {
    state: Arc<EndpointState>,
    /// Counted on the cluster's `max_requests` breaker.
    counted: bool,
    /// The route breaker's slot, held for the life of the response.
    route: Option<crate::breaker::Held<Arc<crate::breaker::Gauge>>>,
}

impl ActiveRequest {
    /// The endpoint's state.
    pub(crate) fn endpoint(&self) -> &Arc<EndpointState> {
        &self.state
    }

    /// Holds the route breaker's slot until the response is done.
    pub(crate) fn hold_route(
        &mut self,
        slot: Option<crate::breaker::Held<Arc<crate::breaker::Gauge>>>,
    ) {
        self.route = slot;
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.state.active.fetch_sub(1, Ordering::Relaxed);
        if self.counted {
            self.state.cluster.breakers.requests.release();
        }
    }
}
