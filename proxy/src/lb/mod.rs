//! Endpoint picking. One file per algorithm behind [`LoadBalancer`]; picking is a pure function
//! of the balancer's state, unit-tested without sockets.

mod round_robin;

pub use round_robin::RoundRobin;

use sluice_config::LbPolicy;
use std::fmt;

/// Picks an endpoint index for each request or connection.
pub trait LoadBalancer: Send + Sync + fmt::Debug {
    /// The index of the chosen endpoint, or `None` when there is none to choose.
    fn pick(&self) -> Option<usize>;
}

/// Builds the balancer for `policy` over endpoints with these weights.
pub fn build(policy: LbPolicy, weights: &[u32]) -> Box<dyn LoadBalancer> {
    match policy {
        LbPolicy::RoundRobin => Box::new(RoundRobin::new(weights)),
    }
}
