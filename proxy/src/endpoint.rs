//! Endpoints: one upstream address with the state every worker shares for it (health flags,
//! active requests). A leaf module: clusters hold endpoints in their endpoint sets, balancers
//! pick among them.

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

/// State shared by every worker for one endpoint: what circuit breakers, outlier detection,
/// health checks and load-aware balancers read and write.
#[derive(Debug, Default)]
pub struct EndpointState {
    health: AtomicU8,
    active: AtomicU32,
}

impl EndpointState {
    /// True when no health flag is set.
    pub fn is_healthy(&self) -> bool {
        self.health.load(Ordering::Relaxed) == 0
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

    /// Counts a request in flight until the guard drops.
    pub(crate) fn admit(self: &Arc<Self>) -> ActiveRequest {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveRequest(Arc::clone(self))
    }
}

/// Counts one request as active on its endpoint while alive.
#[derive(Debug)]
pub(crate) struct ActiveRequest(Arc<EndpointState>);

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}
