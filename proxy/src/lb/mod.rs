//! Endpoint picking. One file per algorithm behind [`LoadBalancer`]. A balancer sees the
//! endpoint set (weights, health, load) and a per-request [`PickContext`] (a hash for
//! consistent hashing, the attempt number, the endpoints already tried) and returns an endpoint
//! handle. Mutable balancer state is kept per worker, so a pick does no shared atomic
//! read-modify-write. Picking is a pure function of the balancer's state, unit-tested without
//! sockets.

mod least_request;
mod random;
mod round_robin;

pub use least_request::LeastRequest;
pub use random::Random;
pub use round_robin::RoundRobin;

use crate::endpoint::Endpoint;
use sluice_config::LbPolicy;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

/// What a balancer knows about the request it picks for.
#[derive(Clone, Copy, Debug, Default)]
pub struct PickContext<'a> {
    /// The worker thread picking (selects the balancer's per-worker state).
    pub worker: usize,
    /// A request hash, for hash-based balancers.
    pub hash: Option<u64>,
    /// 1 for the first attempt, 2 for the first retry, …
    pub attempt: u32,
    /// Endpoints earlier attempts of this request used; avoided when another is available.
    pub tried: &'a [SocketAddr],
}

impl PickContext<'_> {
    /// True when `e` is healthy and not yet tried by this request.
    pub fn preferred(&self, e: &Endpoint) -> bool {
        e.state.is_healthy() && !self.tried.contains(&e.address)
    }
}

/// Picks an endpoint for each request attempt or connection.
pub trait LoadBalancer: Send + Sync + fmt::Debug {
    /// The chosen endpoint, or `None` when the set is empty. Prefers endpoints that are healthy
    /// and untried; when there is none, falls back to any endpoint (Envoy's panic mode: better
    /// to try a doubtful endpoint than to fail every request).
    fn pick<'a>(
        &self,
        endpoints: &'a [Arc<Endpoint>],
        ctx: &PickContext<'_>,
    ) -> Option<&'a Arc<Endpoint>>;
}

/// Builds the balancer for `policy` over endpoints with these weights, with state for
/// `workers` worker threads.
pub fn build(policy: LbPolicy, weights: &[u32], workers: usize) -> Box<dyn LoadBalancer> {
    match policy {
        LbPolicy::RoundRobin => Box::new(RoundRobin::new(weights, workers)),
        LbPolicy::Random => Box::new(Random::new(weights)),
        LbPolicy::LeastRequest => Box::new(LeastRequest::new(weights)),
    }
}
