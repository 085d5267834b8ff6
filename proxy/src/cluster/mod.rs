//! Clusters: the registry of named upstream groups (which survives config swaps for clusters
//! whose config did not change) and, in [`pool`], the per-worker connection pools.

mod pool;

pub(crate) use pool::{EndpointPool, Lease, Pools, UpstreamProtocol};

use crate::lb::{self, LoadBalancer};
use crate::metrics::{ClusterMetrics, Metrics};
use sluice_config as config;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A compiled cluster.
#[derive(Debug)]
pub struct Cluster {
    /// Unique per compiled cluster; a reload that leaves the cluster's config unchanged keeps the
    /// same `Cluster` (and id), so its pooled connections survive.
    pub id: u64,
    /// Name from the config.
    pub name: String,
    /// The config it was built from.
    pub config: config::Cluster,
    /// Endpoint addresses, in config order.
    pub endpoints: Vec<SocketAddr>,
    lb: Box<dyn LoadBalancer>,
    /// Metric handles.
    pub metrics: ClusterMetrics,
}

impl Cluster {
    /// Builds a cluster from its config.
    pub fn new(cfg: &config::Cluster, metrics: &Metrics) -> Self {
        let weights: Vec<u32> = cfg.endpoints.iter().map(|e| e.weight).collect();
        Cluster {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name: cfg.name.clone(),
            endpoints: cfg.endpoints.iter().map(|e| e.address).collect(),
            lb: lb::build(cfg.lb_policy, &weights),
            metrics: metrics.cluster(&cfg.name),
            config: cfg.clone(),
        }
    }

    /// Picks an endpoint: its index and address.
    pub fn pick(&self) -> Option<(usize, SocketAddr)> {
        let i = self.lb.pick()?;
        self.endpoints.get(i).map(|a| (i, *a))
    }
}

/// Builds the cluster map for a new config, reusing every cluster of `previous` whose config is
/// unchanged.
pub fn build_registry(
    configs: &[config::Cluster],
    previous: &HashMap<String, Arc<Cluster>>,
    metrics: &Metrics,
) -> HashMap<String, Arc<Cluster>> {
    configs
        .iter()
        .map(|cfg| {
            let cluster = match previous.get(&cfg.name) {
                Some(old) if old.config == *cfg => Arc::clone(old),
                _ => Arc::new(Cluster::new(cfg, metrics)),
            };
            (cfg.name.clone(), cluster)
        })
        .collect()
}
