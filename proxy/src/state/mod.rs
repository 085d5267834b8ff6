//! The live state: an immutable [`Snapshot`] of compiled resources, swapped in atomically by
//! the one [`Writer`]. Requests read the current snapshot (through a per-connection cache keyed
//! by [`Live::generation`]); in-flight requests keep the snapshot they started with. Clusters
//! are long-lived handles (`cluster::Registry`) that the snapshot's routes and listeners point
//! at, so an endpoint or cluster change swaps state inside the handle without a new snapshot.

#[cfg(test)]
mod tests;
mod writer;

pub use writer::{Applied, Origin, ResourceResult, Writer};

use crate::cluster::ClusterHandle;
use crate::listener::ListenerSpec;
use crate::metrics::Metrics;
use crate::route::RouteTable;
use arc_swap::ArcSwap;
use sluice_config::Config;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// One compiled, immutable view of the resources.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Increases with every swap.
    pub generation: u64,
    /// The resources as a config (for the admin API's config dump).
    pub config: Arc<Config>,
    /// Listeners by name.
    pub listeners: HashMap<String, Arc<ListenerSpec>>,
    /// Route tables by name.
    pub route_tables: HashMap<String, Arc<RouteTable>>,
    /// Cluster handles by name.
    pub clusters: HashMap<String, Arc<ClusterHandle>>,
    /// Each resource's generation and source (for `/config_dump`).
    pub versions: Arc<Vec<ResourceVersion>>,
}

/// When a resource last changed, and who brought it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceVersion {
    /// Type.
    pub kind: sluice_config::ResourceType,
    /// Name.
    pub name: String,
    /// The generation that added or last changed it.
    pub generation: u64,
    /// Its source.
    pub origin: Origin,
}

/// The live state shared by every worker, the admin API and the reloader.
#[derive(Debug)]
pub struct Live {
    current: ArcSwap<Snapshot>,
    generation: AtomicU64,
    ready: AtomicBool,
    draining: AtomicBool,
    /// Set by the admin API's `POST /healthcheck/fail`: `/ready` answers 503 while traffic
    /// keeps flowing (load balancers take the proxy out first).
    health_failed: AtomicBool,
    /// Metric families.
    pub metrics: Arc<Metrics>,
}

impl Live {
    /// Live state starting with `snapshot`.
    pub fn new(snapshot: Snapshot, metrics: Arc<Metrics>) -> Self {
        metrics.config_applied(snapshot.generation);
        Live {
            generation: AtomicU64::new(snapshot.generation),
            current: ArcSwap::from_pointee(snapshot),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            health_failed: AtomicBool::new(false),
            metrics,
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The current generation: one atomic load, for cheap "has anything changed" checks.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Makes `snapshot` current. New requests see it; in-flight requests finish on the old one.
    /// Only the [`Writer`] calls it.
    pub(crate) fn swap(&self, snapshot: Snapshot) {
        let generation = snapshot.generation;
        self.current.store(Arc::new(snapshot));
        self.generation.store(generation, Ordering::Release);
        self.metrics.config_applied(generation);
    }

    /// True once listeners are bound and not draining.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.is_draining()
    }

    /// True while shutting down.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub(crate) fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub(crate) fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// True while the admin API has set the health check to fail.
    pub fn is_health_failed(&self) -> bool {
        self.health_failed.load(Ordering::Acquire)
    }

    pub(crate) fn set_health_failed(&self, failed: bool) {
        self.health_failed.store(failed, Ordering::Release);
    }
}
