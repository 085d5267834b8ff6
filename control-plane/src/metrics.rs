//! The ADS server's metric families (`sluice_xds_*`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::snapshot::type_url;

type TypeLabels = Vec<(&'static str, &'static str)>;

/// The server's metrics; cheap to clone (the families are shared).
#[derive(Debug, Clone)]
pub struct AdsMetrics {
    /// `sluice_xds_connected_proxies`: open ADS streams.
    pub connected_proxies: Gauge,
    /// `sluice_xds_pushes_total{type}`: responses sent.
    pub pushes: Family<TypeLabels, Counter>,
    /// `sluice_xds_nacks_total{type}`: NACKs received.
    pub nacks: Family<TypeLabels, Counter>,
    /// `sluice_xds_push_latency_seconds`: from `SnapshotCache::set` to the ACK of the
    /// response that carried it.
    pub push_latency: Histogram,
    /// `sluice_xds_snapshot_build_seconds`: observed by whoever builds snapshots.
    pub snapshot_build: Histogram,
}

impl Default for AdsMetrics {
    fn default() -> Self {
        let metrics = Self {
            connected_proxies: Gauge::default(),
            pushes: Family::default(),
            nacks: Family::default(),
            // 1 ms .. ~16 s.
            push_latency: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            snapshot_build: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
        };
        for url in type_url::PUSH_ORDER {
            let labels = type_labels(url);
            let _ = metrics.pushes.get_or_create(&labels);
            let _ = metrics.nacks.get_or_create(&labels);
        }
        metrics
    }
}

impl AdsMetrics {
    /// Fresh, unregistered metrics (label sets for the five known types pre-initialised).
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the families in `registry` (names get the registry's prefix, if any).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "sluice_xds_connected_proxies",
            "Open ADS streams",
            self.connected_proxies.clone(),
        );
        registry.register(
            "sluice_xds_pushes",
            "xDS responses sent, by type",
            self.pushes.clone(),
        );
        registry.register(
            "sluice_xds_nacks",
            "xDS NACKs received, by type",
            self.nacks.clone(),
        );
        registry.register(
            "sluice_xds_push_latency_seconds",
            "Time from a snapshot being set to the proxy's ACK of it",
            self.push_latency.clone(),
        );
        registry.register(
            "sluice_xds_snapshot_build_seconds",
            "Time to build a snapshot",
            self.snapshot_build.clone(),
        );
    }

    pub(crate) fn pushed(&self, type_url: &str) {
        self.pushes.get_or_create(&type_labels(type_url)).inc();
    }

    pub(crate) fn nacked(&self, type_url: &str) {
        self.nacks.get_or_create(&type_labels(type_url)).inc();
    }
}

fn type_labels(url: &str) -> TypeLabels {
    vec![("type", type_url::short_name(url))]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_exposed_with_type_labels() {
        let metrics = AdsMetrics::new();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics.nacked(type_url::ROUTE);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).ok();
        for t in ["listener", "route", "cluster", "endpoint", "secret"] {
            assert!(
                out.contains(&format!("sluice_xds_pushes_total{{type=\"{t}\"}} 0")),
                "{out}"
            );
        }
        assert!(
            out.contains("sluice_xds_nacks_total{type=\"route\"} 1"),
            "{out}"
        );
        assert!(out.contains("sluice_xds_connected_proxies 0"), "{out}");
        assert!(
            out.contains("sluice_xds_push_latency_seconds_bucket"),
            "{out}"
        );
    }
}
