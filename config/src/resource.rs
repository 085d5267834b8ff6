//! Resources: the units in which config changes. A file is split into resources keyed by
//! (type, name), as xDS delivers them: listeners, route tables, clusters, and each cluster's
//! endpoints as a resource of its own (Envoy's `ClusterLoadAssignment`), so an endpoint change
//! is never a cluster change. An [`Update`] upserts and removes resources of any type; [`diff`]
//! turns two configs into the update between them.

use crate::Config;
use crate::cluster::{Cluster, Endpoint};
use crate::listener::Listener;
use crate::route::RouteTable;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The kinds of resource, in the order an update applies them (dependencies first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceType {
    /// A certificate or trust bundle (Envoy SDS), first: clusters and listeners name them.
    Secret,
    /// A cluster's settings (Envoy CDS).
    Cluster,
    /// A cluster's endpoints (Envoy EDS).
    Endpoints,
    /// A route table (Envoy RDS).
    RouteTable,
    /// A listener (Envoy LDS).
    Listener,
}

impl ResourceType {
    /// The name used in logs, metrics and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceType::Secret => "secret",
            ResourceType::Cluster => "cluster",
            ResourceType::Endpoints => "endpoints",
            ResourceType::RouteTable => "route_table",
            ResourceType::Listener => "listener",
        }
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A cluster's endpoints, named after the cluster (Envoy `ClusterLoadAssignment`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterLoadAssignment {
    /// The cluster these endpoints belong to.
    pub cluster_name: String,
    /// The endpoints (may be empty: the cluster then answers 503).
    pub endpoints: Vec<Endpoint>,
}

/// One resource.
// Resources live in the writer's map and in config updates, never on the request path: the
// size of the largest (a cluster with its resilience and balancing settings) does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Resource {
    /// A listener.
    Listener(Listener),
    /// A route table.
    RouteTable(RouteTable),
    /// A cluster's settings; its `endpoints` field is always empty here (they are the
    /// [`Resource::Endpoints`] resource of the same name).
    Cluster(Cluster),
    /// A cluster's endpoints.
    Endpoints(ClusterLoadAssignment),
    /// An SDS secret (never from a config file).
    Secret(crate::Secret),
}

impl Resource {
    /// The resource's type.
    pub fn kind(&self) -> ResourceType {
        match self {
            Resource::Listener(_) => ResourceType::Listener,
            Resource::RouteTable(_) => ResourceType::RouteTable,
            Resource::Cluster(_) => ResourceType::Cluster,
            Resource::Endpoints(_) => ResourceType::Endpoints,
            Resource::Secret(_) => ResourceType::Secret,
        }
    }

    /// The resource's name.
    pub fn name(&self) -> &str {
        match self {
            Resource::Listener(l) => &l.name,
            Resource::RouteTable(t) => &t.name,
            Resource::Cluster(c) => &c.name,
            Resource::Endpoints(e) => &e.cluster_name,
            Resource::Secret(s) => &s.name,
        }
    }

    /// The SDS secrets the resource names (a listener's or a cluster's TLS).
    pub fn secret_names(&self) -> Vec<&str> {
        match self {
            Resource::Listener(l) => l
                .tls
                .as_ref()
                .map(|t| t.secret_names().collect())
                .unwrap_or_default(),
            Resource::Cluster(c) => c
                .tls
                .as_ref()
                .map(|t| t.secret_names().collect())
                .unwrap_or_default(),
            Resource::RouteTable(_) | Resource::Endpoints(_) | Resource::Secret(_) => Vec::new(),
        }
    }

    /// (type, name): what identifies the resource.
    pub fn key(&self) -> ResourceKey {
        (self.kind(), self.name().to_string())
    }
}

/// What identifies a resource.
pub type ResourceKey = (ResourceType, String);

/// A change to the live resources: upsert some, remove others.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Update {
    /// Resources to add or replace.
    pub upserts: Vec<Resource>,
    /// Resources to remove.
    pub removals: Vec<ResourceKey>,
}

impl Update {
    /// True when the update changes nothing.
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.removals.is_empty()
    }
}

impl Config {
    /// The config as resources, keyed by (type, name). Each static cluster's inline endpoints
    /// become its [`ClusterLoadAssignment`]; a DNS cluster's assignment comes from the DNS
    /// source, not from the config.
    pub fn resources(&self) -> BTreeMap<ResourceKey, Resource> {
        let mut out = BTreeMap::new();
        let mut add = |r: Resource| {
            out.insert(r.key(), r);
        };
        for c in &self.clusters {
            if c.discovery.is_none() {
                add(Resource::Endpoints(ClusterLoadAssignment {
                    cluster_name: c.name.clone(),
                    endpoints: c.endpoints.clone(),
                }));
            }
            add(Resource::Cluster(Cluster {
                endpoints: Vec::new(),
                ..c.clone()
            }));
        }
        for t in &self.route_tables {
            add(Resource::RouteTable(t.clone()));
        }
        for l in &self.listeners {
            add(Resource::Listener(l.clone()));
        }
        out
    }

    /// Rebuilds a config from resources (the admin API's config dump): clusters get their
    /// endpoints back inline (DNS clusters keep theirs out: they are discovered, not
    /// configured). Secrets are left out (they hold private keys).
    pub fn from_resources<'a>(
        admin: crate::Admin,
        resources: impl IntoIterator<Item = &'a Resource>,
    ) -> Config {
        let mut config = Config {
            admin,
            ..Config::default()
        };
        let mut endpoints = BTreeMap::new();
        for r in resources {
            match r {
                Resource::Listener(l) => config.listeners.push(l.clone()),
                Resource::RouteTable(t) => config.route_tables.push(t.clone()),
                Resource::Cluster(c) => config.clusters.push(c.clone()),
                Resource::Endpoints(e) => {
                    endpoints.insert(e.cluster_name.clone(), e.endpoints.clone());
                }
                Resource::Secret(_) => {}
            }
        }
        for c in &mut config.clusters {
            if let Some(e) = endpoints.remove(&c.name)
                && c.discovery.is_none()
            {
                c.endpoints = e;
            }
        }
        config
    }
}

/// The update that turns resources `old` into `new`: upserts for what is new or changed,
/// removals for what is gone. Unchanged resources are not mentioned.
pub fn diff(
    old: &BTreeMap<ResourceKey, Resource>,
    new: &BTreeMap<ResourceKey, Resource>,
) -> Update {
    Update {
        upserts: new
            .iter()
            .filter(|(k, r)| old.get(*k) != Some(*r))
            .map(|(_, r)| r.clone())
            .collect(),
        removals: old
            .keys()
            .filter(|k| !new.contains_key(*k))
            .cloned()
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(endpoint: &str, table_prefix: &str) -> Config {
        crate::parse(
            &format!(
                "listeners:\n  - {{ name: l, address: 127.0.0.1:0, http: {{ route_table: t }} }}\n\
                 route_tables:\n  - name: t\n    virtual_hosts:\n      - name: v\n        domains: ['*']\n        routes:\n          - {{ match: {{ prefix: {table_prefix} }}, cluster: c }}\n\
                 clusters:\n  - {{ name: c, endpoints: [{endpoint}] }}\n"
            ),
            "t.yaml",
        )
        .unwrap()
    }

    #[test]
    fn endpoints_are_their_own_resource() {
        let r = config("127.0.0.1:1", "/").resources();
        let Some(Resource::Cluster(c)) = r.get(&(ResourceType::Cluster, "c".into())) else {
            panic!("no cluster resource");
        };
        assert!(c.endpoints.is_empty());
        let Some(Resource::Endpoints(e)) = r.get(&(ResourceType::Endpoints, "c".into())) else {
            panic!("no endpoints resource");
        };
        assert_eq!(e.endpoints.len(), 1);
        let back = Config::from_resources(crate::Admin::default(), r.values());
        assert_eq!(back, config("127.0.0.1:1", "/"));
    }

    #[test]
    fn diff_names_only_what_changed() {
        let a = config("127.0.0.1:1", "/").resources();
        let b = config("127.0.0.1:2", "/").resources();
        let u = diff(&a, &b);
        assert!(u.removals.is_empty());
        assert_eq!(
            u.upserts.iter().map(Resource::key).collect::<Vec<_>>(),
            vec![(ResourceType::Endpoints, "c".to_string())]
        );
        let c = config("127.0.0.1:1", "/x").resources();
        let u = diff(&a, &c);
        assert_eq!(
            u.upserts.iter().map(Resource::key).collect::<Vec<_>>(),
            vec![(ResourceType::RouteTable, "t".to_string())]
        );
        let u = diff(&a, &BTreeMap::new());
        assert_eq!(u.removals.len(), 4);
        assert!(diff(&a, &a).is_empty());
    }

    #[test]
    fn one_resource_is_checked_without_its_references() {
        let r = config("127.0.0.1:1", "/").resources();
        for res in r.values() {
            assert!(crate::validate_resource(res).is_empty(), "{res:?}");
        }
        let bad = Resource::Endpoints(ClusterLoadAssignment {
            cluster_name: "c".into(),
            endpoints: vec![Endpoint {
                address: "127.0.0.1:0".parse().unwrap(),
                weight: 0,
                zone: None,
            }],
        });
        let issues = crate::validate_resource(&bad);
        assert_eq!(issues.len(), 2, "{issues:?}");
    }
}
