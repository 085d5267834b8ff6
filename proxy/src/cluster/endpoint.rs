//! Endpoint sets. An [`EndpointSet`] is immutable and swapped whole; the `EndpointState` of
//! each endpoint is shared across sets (keyed by address), so health and load survive
//! endpoint-set changes.

use crate::endpoint::{ClusterShared, Endpoint, EndpointState};
use crate::lb::{self, LoadBalancer, PickContext};
use sluice_config::LbPolicy;
use std::net::SocketAddr;
use std::sync::Arc;

/// An immutable set of endpoints with its balancer.
#[derive(Debug)]
pub struct EndpointSet {
    /// 0 for "never set"; increases with every change.
    pub version: u64,
    /// The endpoints, in config order.
    pub endpoints: Vec<Arc<Endpoint>>,
    lb: Box<dyn LoadBalancer>,
}

impl EndpointSet {
    /// No endpoints.
    pub fn empty(workers: usize) -> Self {
        EndpointSet {
            version: 0,
            endpoints: Vec::new(),
            lb: lb::build(LbPolicy::default(), &[], workers),
        }
    }

    /// A set from (address, weight) pairs; addresses already in `previous` keep their state.
    pub fn build(
        version: u64,
        endpoints: impl Iterator<Item = (SocketAddr, u32)>,
        previous: &EndpointSet,
        cluster: &Arc<ClusterShared>,
        policy: LbPolicy,
        workers: usize,
    ) -> Self {
        let endpoints: Vec<Arc<Endpoint>> = endpoints
            .map(|(address, weight)| {
                let state = previous
                    .endpoints
                    .iter()
                    .find(|e| e.address == address)
                    .map(|e| Arc::clone(&e.state))
                    .unwrap_or_else(|| Arc::new(EndpointState::new(Arc::clone(cluster))));
                Arc::new(Endpoint {
                    address,
                    weight,
                    state,
                })
            })
            .collect();
        let weights: Vec<u32> = endpoints.iter().map(|e| e.weight).collect();
        EndpointSet {
            version,
            lb: lb::build(policy, &weights, workers),
            endpoints,
        }
    }

    /// Picks an endpoint for one attempt.
    pub fn pick(&self, ctx: &PickContext<'_>) -> Option<&Arc<Endpoint>> {
        self.lb.pick(&self.endpoints, ctx)
    }

    /// The endpoint with this address.
    pub fn get(&self, address: SocketAddr) -> Option<&Arc<Endpoint>> {
        self.endpoints.iter().find(|e| e.address == address)
    }
}
