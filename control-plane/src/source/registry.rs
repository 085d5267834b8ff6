//! The registry source: services register their endpoints over HTTP/JSON with a time to live
//! renewed by heartbeats (re-registering), for environments without Kubernetes. An endpoint
//! whose TTL lapses is removed; the endpoints of a cluster are the ones the directory lists
//! plus the registered ones (a registered address the directory also lists keeps the
//! registration's weight and zone).
//!
//! This module holds the state and its rules; `api.rs` serves it:
//!
//! ```text
//! PUT    /v1/registry/CLUSTER   {"address": "127.0.0.1:8080", "ttl": "30s", "weight": 1, "zone": "a"}
//! DELETE /v1/registry/CLUSTER/ADDRESS
//! GET    /v1/registry           every registration with the seconds it has left
//! ```

use serde::{Deserialize, Serialize};
use sluice_config::Endpoint;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

/// Limits on registrations.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySettings {
    /// TTL of a registration that names none. Default `30s`.
    #[serde(default = "default_ttl")]
    pub default_ttl: sluice_config::Duration,
    /// Longest TTL a registration may ask for. Default `300s`.
    #[serde(default = "max_ttl")]
    pub max_ttl: sluice_config::Duration,
    /// Most registered endpoints in all (a bound on memory). Default 100000.
    #[serde(default = "max_endpoints")]
    pub max_endpoints: usize,
}

fn default_ttl() -> sluice_config::Duration {
    sluice_config::Duration::from_secs(30)
}
fn max_ttl() -> sluice_config::Duration {
    sluice_config::Duration::from_secs(300)
}
fn max_endpoints() -> usize {
    100_000
}

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings {
            default_ttl: default_ttl(),
            max_ttl: max_ttl(),
            max_endpoints: max_endpoints(),
        }
    }
}

/// One registration request (the JSON body of `PUT /v1/registry/CLUSTER`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// The endpoint's address.
    pub address: SocketAddr,
    /// How long the registration lasts without a heartbeat (`30s`, `2m`); default the
    /// registry's `default_ttl`.
    #[serde(default)]
    pub ttl: Option<sluice_config::Duration>,
    /// Relative share of requests. Default 1.
    #[serde(default = "one")]
    pub weight: u32,
    /// The endpoint's zone.
    #[serde(default)]
    pub zone: Option<String>,
}

fn one() -> u32 {
    1
}

/// Why a registration was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryError {
    /// The request is invalid (the message says why).
    Invalid(String),
    /// The registry holds `max_endpoints` already.
    Full,
}

impl std::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryError::Invalid(m) => f.write_str(m),
            RegistryError::Full => f.write_str("the registry is full (max_endpoints)"),
        }
    }
}

#[derive(Clone, Debug)]
struct Entry {
    endpoint: Endpoint,
    expires: Instant,
}

/// The registered endpoints.
#[derive(Debug, Default)]
pub struct Registry {
    settings: RegistrySettings,
    clusters: BTreeMap<String, BTreeMap<SocketAddr, Entry>>,
    count: usize,
}

/// One registration as listed by `GET /v1/registry`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Listed {
    /// Cluster.
    pub cluster: String,
    /// Address.
    pub address: SocketAddr,
    /// Weight.
    pub weight: u32,
    /// Zone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Seconds until it lapses without a heartbeat.
    pub expires_in_seconds: f64,
}

impl Registry {
    /// An empty registry.
    pub fn new(settings: RegistrySettings) -> Self {
        Registry {
            settings,
            ..Registry::default()
        }
    }

    /// Registers or renews an endpoint of `cluster`. Returns true when the endpoint set
    /// changed (a new endpoint, or a new weight or zone), false for a plain heartbeat.
    pub fn register(
        &mut self,
        cluster: &str,
        r: Registration,
        now: Instant,
    ) -> Result<bool, RegistryError> {
        if cluster.is_empty() || cluster.len() > 253 || cluster.contains(['/', ' ']) {
            return Err(RegistryError::Invalid(format!(
                "invalid cluster name {cluster:?}"
            )));
        }
        if r.weight == 0 {
            return Err(RegistryError::Invalid("weight: must be at least 1".into()));
        }
        let ttl = r.ttl.map_or(self.settings.default_ttl.get(), |t| t.get());
        if ttl.is_zero() || ttl > self.settings.max_ttl.get() {
            return Err(RegistryError::Invalid(format!(
                "ttl: must be more than 0 and at most {}",
                self.settings.max_ttl
            )));
        }
        let endpoint = Endpoint {
            address: r.address,
            weight: r.weight,
            zone: r.zone,
        };
        let entries = self.clusters.entry(cluster.to_string()).or_default();
        let expires = now + ttl;
        match entries.get_mut(&r.address) {
            Some(e) => {
                let changed = e.endpoint != endpoint;
                e.endpoint = endpoint;
                e.expires = expires;
                Ok(changed)
            }
            None => {
                if self.count >= self.settings.max_endpoints {
                    if entries.is_empty() {
                        self.clusters.remove(cluster);
                    }
                    return Err(RegistryError::Full);
                }
                entries.insert(r.address, Entry { endpoint, expires });
                self.count += 1;
                Ok(true)
            }
        }
    }

    /// Removes a registration. Returns true when it existed.
    pub fn deregister(&mut self, cluster: &str, address: SocketAddr) -> bool {
        let Some(entries) = self.clusters.get_mut(cluster) else {
            return false;
        };
        let removed = entries.remove(&address).is_some();
        if removed {
            self.count -= 1;
        }
        if entries.is_empty() {
            self.clusters.remove(cluster);
        }
        removed
    }

    /// Removes every registration whose TTL has lapsed; returns them as (cluster, address).
    pub fn expire(&mut self, now: Instant) -> Vec<(String, SocketAddr)> {
        let mut gone = Vec::new();
        self.clusters.retain(|cluster, entries| {
            entries.retain(|addr, e| {
                let keep = e.expires > now;
                if !keep {
                    gone.push((cluster.clone(), *addr));
                }
                keep
            });
            !entries.is_empty()
        });
        self.count -= gone.len();
        gone
    }

    /// When the next registration lapses, if any.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.clusters
            .values()
            .flat_map(|e| e.values().map(|e| e.expires))
            .min()
    }

    /// The registered endpoints of each cluster.
    pub fn endpoints(&self) -> BTreeMap<String, Vec<Endpoint>> {
        self.clusters
            .iter()
            .map(|(c, e)| (c.clone(), e.values().map(|e| e.endpoint.clone()).collect()))
            .collect()
    }

    /// Every registration, for `GET /v1/registry`.
    pub fn list(&self, now: Instant) -> Vec<Listed> {
        let mut out = Vec::new();
        for (cluster, entries) in &self.clusters {
            for e in entries.values() {
                out.push(Listed {
                    cluster: cluster.clone(),
                    address: e.endpoint.address,
                    weight: e.endpoint.weight,
                    zone: e.endpoint.zone.clone(),
                    expires_in_seconds: e.expires.saturating_duration_since(now).as_secs_f64(),
                });
            }
        }
        out
    }
}

/// Merges registered endpoints into the resources' endpoint sets: a registered cluster's
/// `Endpoints` resource gets the registered endpoints added (replacing a listed one with the
/// same address); a registered cluster the resources do not have gets an `Endpoints` resource
/// of its own (served to proxies that subscribe to it).
pub fn merge(
    resources: &mut BTreeMap<sluice_config::ResourceKey, sluice_config::Resource>,
    registered: &BTreeMap<String, Vec<Endpoint>>,
) {
    use sluice_config::{ClusterLoadAssignment, Resource, ResourceType};
    for (cluster, eps) in registered {
        let key = (ResourceType::Endpoints, cluster.clone());
        let entry = resources.entry(key).or_insert_with(|| {
            Resource::Endpoints(ClusterLoadAssignment {
                cluster_name: cluster.clone(),
                endpoints: Vec::new(),
            })
        });
        if let Resource::Endpoints(cla) = entry {
            cla.endpoints
                .retain(|e| !eps.iter().any(|r| r.address == e.address));
            cla.endpoints.extend(eps.iter().cloned());
        }
    }
}

/// How long a sweep may sleep at most when nothing expires (the registry also wakes on every
/// change).
pub const IDLE_SWEEP: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(addr: &str, ttl: u64) -> Registration {
        Registration {
            address: addr.parse().unwrap(),
            ttl: Some(sluice_config::Duration::from_secs(ttl)),
            weight: 1,
            zone: None,
        }
    }

    #[test]
    fn a_heartbeat_renews_and_a_lapse_removes() {
        let mut r = Registry::new(RegistrySettings::default());
        let t0 = Instant::now();
        assert_eq!(r.register("api", reg("127.0.0.1:1", 10), t0), Ok(true));
        assert_eq!(r.register("api", reg("127.0.0.1:2", 10), t0), Ok(true));
        // Heartbeat at 8 s: unchanged set, renewed to 18 s.
        assert_eq!(
            r.register("api", reg("127.0.0.1:1", 10), t0 + Duration::from_secs(8)),
            Ok(false)
        );
        assert!(r.expire(t0 + Duration::from_secs(9)).is_empty());
        let gone = r.expire(t0 + Duration::from_secs(10));
        assert_eq!(
            gone,
            vec![("api".to_string(), "127.0.0.1:2".parse().unwrap())]
        );
        assert_eq!(r.endpoints()["api"].len(), 1);
        assert_eq!(r.next_expiry(), Some(t0 + Duration::from_secs(18)));
        assert_eq!(r.expire(t0 + Duration::from_secs(18)).len(), 1);
        assert!(r.endpoints().is_empty());
        assert_eq!(r.next_expiry(), None);
    }

    #[test]
    fn invalid_registrations_are_refused_and_the_registry_is_bounded() {
        let mut r = Registry::new(RegistrySettings {
            max_endpoints: 1,
            ..RegistrySettings::default()
        });
        let t0 = Instant::now();
        assert!(matches!(
            r.register("a b", reg("127.0.0.1:1", 1), t0),
            Err(RegistryError::Invalid(_))
        ));
        assert!(matches!(
            r.register("a", reg("127.0.0.1:1", 301), t0),
            Err(RegistryError::Invalid(_))
        ));
        let mut zero = reg("127.0.0.1:1", 1);
        zero.weight = 0;
        assert!(matches!(
            r.register("a", zero, t0),
            Err(RegistryError::Invalid(_))
        ));
        assert_eq!(r.register("a", reg("127.0.0.1:1", 1), t0), Ok(true));
        assert_eq!(
            r.register("b", reg("127.0.0.1:2", 1), t0),
            Err(RegistryError::Full)
        );
        assert!(r.deregister("a", "127.0.0.1:1".parse().unwrap()));
        assert!(!r.deregister("a", "127.0.0.1:1".parse().unwrap()));
        assert_eq!(r.register("b", reg("127.0.0.1:2", 1), t0), Ok(true));
    }

    #[test]
    fn registered_endpoints_merge_into_the_directory_endpoints() {
        use sluice_config::{ClusterLoadAssignment, Resource, ResourceType};
        let mut rs = BTreeMap::new();
        rs.insert(
            (ResourceType::Endpoints, "api".to_string()),
            Resource::Endpoints(ClusterLoadAssignment {
                cluster_name: "api".into(),
                endpoints: vec![Endpoint {
                    address: "127.0.0.1:1".parse().unwrap(),
                    weight: 1,
                    zone: None,
                }],
            }),
        );
        let mut reg = BTreeMap::new();
        reg.insert(
            "api".to_string(),
            vec![
                Endpoint {
                    address: "127.0.0.1:1".parse().unwrap(),
                    weight: 5,
                    zone: None,
                },
                Endpoint {
                    address: "127.0.0.1:2".parse().unwrap(),
                    weight: 1,
                    zone: None,
                },
            ],
        );
        reg.insert(
            "new".to_string(),
            vec![Endpoint {
                address: "127.0.0.1:3".parse().unwrap(),
                weight: 1,
                zone: None,
            }],
        );
        merge(&mut rs, &reg);
        let Resource::Endpoints(api) = &rs[&(ResourceType::Endpoints, "api".to_string())] else {
            panic!()
        };
        assert_eq!(api.endpoints.len(), 2);
        assert_eq!(
            api.endpoints
                .iter()
                .find(|e| e.address.port() == 1)
                .unwrap()
                .weight,
            5
        );
        assert!(rs.contains_key(&(ResourceType::Endpoints, "new".to_string())));
    }
}
