//! A snapshot: the resources one group of proxies should have, per xDS type URL, each type with
//! a content-hash version and each resource with its own (for delta xDS).
//!
//! Resources are opaque packed protos (`Any`): the server never looks inside them, so this
//! module knows nothing of Sluice's model or of Envoy's messages beyond the type URLs.

use std::collections::BTreeMap;

use envoy_types::pb::google::protobuf::Any;
use sha2::{Digest, Sha256};

/// The type URLs of the resource types Sluice serves, in make-before-break push order.
pub mod type_url {
    /// SDS `Secret`.
    pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
    /// CDS `Cluster`.
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    /// EDS `ClusterLoadAssignment`.
    pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    /// LDS `Listener`.
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    /// RDS `RouteConfiguration`.
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

    /// The known types in push order: secrets (referenced by clusters and listeners), then
    /// clusters → endpoints → listeners → routes (make-before-break).
    pub const PUSH_ORDER: [&str; 5] = [SECRET, CLUSTER, ENDPOINT, LISTENER, ROUTE];

    /// The short name used in metric labels and status output (`cluster`, `endpoint`, ...);
    /// `other` for a type URL Sluice does not know.
    pub fn short_name(type_url: &str) -> &'static str {
        match type_url {
            SECRET => "secret",
            CLUSTER => "cluster",
            ENDPOINT => "endpoint",
            LISTENER => "listener",
            ROUTE => "route",
            _ => "other",
        }
    }

    /// Whether a SotW subscription with no names means "everything" for this type: true for
    /// LDS and CDS (Envoy always subscribes to them with a wildcard), false for the types
    /// that are asked for by name (RDS, EDS, SDS and unknown types).
    pub fn wildcard_by_default(type_url: &str) -> bool {
        matches!(type_url, LISTENER | CLUSTER)
    }

    /// The rank of a type in push order (unknown types last).
    pub fn rank(type_url: &str) -> usize {
        PUSH_ORDER
            .iter()
            .position(|t| *t == type_url)
            .unwrap_or(PUSH_ORDER.len())
    }
}

/// One resource with its version (a hash of its packed bytes).
#[derive(Debug, Clone, PartialEq)]
pub struct VersionedResource {
    /// The packed resource.
    pub any: Any,
    /// Hex of a digest of `any`'s type URL and bytes.
    pub version: String,
}

/// All resources of one type, keyed by name, with the type's version.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Resources {
    version: String,
    items: BTreeMap<String, VersionedResource>,
}

impl Resources {
    /// Builds the set and computes its versions. A repeated name keeps the last resource.
    pub fn new(resources: impl IntoIterator<Item = (String, Any)>) -> Self {
        let items: BTreeMap<String, VersionedResource> = resources
            .into_iter()
            .map(|(name, any)| {
                let version = resource_version(&any);
                (name, VersionedResource { any, version })
            })
            .collect();
        let mut hasher = Sha256::new();
        for (name, item) in &items {
            hasher.update((name.len() as u64).to_be_bytes());
            hasher.update(name.as_bytes());
            hasher.update(item.version.as_bytes());
        }
        Self {
            version: hex16(&hasher.finalize()),
            items,
        }
    }

    /// The type's version: a content hash over the sorted names and their resources' bytes,
    /// so equal contents always give the same version, whoever built them.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The resources by name.
    pub fn items(&self) -> &BTreeMap<String, VersionedResource> {
        &self.items
    }

    /// The version of the subset `names` (those that exist): a hash of their names and
    /// versions, so a SotW stream subscribed by name is answered only when its own resources
    /// change, not whenever any resource of the type does.
    pub fn subset_version<'a>(&self, names: impl IntoIterator<Item = &'a String>) -> String {
        let mut hasher = Sha256::new();
        hasher.update(b"subset");
        for name in names {
            if let Some(item) = self.items.get(name) {
                hasher.update((name.len() as u64).to_be_bytes());
                hasher.update(name.as_bytes());
                hasher.update(item.version.as_bytes());
            }
        }
        hex16(&hasher.finalize())
    }

    /// One resource by name.
    pub fn get(&self, name: &str) -> Option<&VersionedResource> {
        self.items.get(name)
    }
}

/// The version of one resource: hex of a digest of its type URL and bytes.
pub fn resource_version(any: &Any) -> String {
    let mut hasher = Sha256::new();
    hasher.update(any.type_url.as_bytes());
    hasher.update([0]);
    hasher.update(&any.value);
    hex16(&hasher.finalize())
}

fn hex16(digest: &[u8]) -> String {
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The resources of every type a group of proxies should have.
///
/// A type absent from the snapshot is served as an empty set (an empty, versioned response),
/// so a proxy subscribing to it is not left waiting.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    /// Shared, so a stream overlaying its own secrets copies pointers, not resources.
    types: BTreeMap<String, std::sync::Arc<Resources>>,
}

impl Snapshot {
    /// An empty snapshot.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builder form of [`Snapshot::set_resources`].
    #[must_use]
    pub fn with(
        mut self,
        type_url: &str,
        resources: impl IntoIterator<Item = (String, Any)>,
    ) -> Self {
        self.set_resources(type_url, resources);
        self
    }

    /// Replaces the resources of one type.
    pub fn set_resources(
        &mut self,
        type_url: &str,
        resources: impl IntoIterator<Item = (String, Any)>,
    ) {
        self.types.insert(
            type_url.to_owned(),
            std::sync::Arc::new(Resources::new(resources)),
        );
    }

    /// This snapshot with one type's resources replaced by `resources` (shared, not copied):
    /// a stream's own SDS secrets over its group's snapshot.
    #[must_use]
    pub fn overlay(&self, type_url: &str, resources: std::sync::Arc<Resources>) -> Self {
        let mut types = self.types.clone();
        types.insert(type_url.to_owned(), resources);
        Self { types }
    }

    /// The resources of one type, if the snapshot has that type.
    pub fn resources(&self, type_url: &str) -> Option<&Resources> {
        self.types.get(type_url).map(|r| &**r)
    }

    /// The version of one type (the empty set's version when the type is absent).
    pub fn version(&self, type_url: &str) -> String {
        match self.types.get(type_url) {
            Some(r) => r.version.clone(),
            None => Resources::default_version(),
        }
    }

    /// The type URLs present.
    pub fn type_urls(&self) -> impl Iterator<Item = &str> {
        self.types.keys().map(String::as_str)
    }
}

impl Resources {
    fn default_version() -> String {
        Resources::new(std::iter::empty()).version
    }

    /// The empty set (with the empty set's version, not an empty string).
    pub fn empty() -> Self {
        Resources::new(std::iter::empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::util::pack_any;

    fn cluster(name: &str, ms: i64) -> (String, Any) {
        let c = Cluster {
            name: name.to_owned(),
            connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: 0,
                nanos: (ms * 1_000_000) as i32,
            }),
            ..Default::default()
        };
        (name.to_owned(), pack_any(c))
    }

    #[test]
    fn version_is_a_content_hash_independent_of_order() {
        let a = Resources::new([cluster("a", 1), cluster("b", 2)]);
        let b = Resources::new([cluster("b", 2), cluster("a", 1)]);
        assert_eq!(a.version(), b.version());
        assert_eq!(a.version().len(), 16);
        let c = Resources::new([cluster("a", 1), cluster("b", 3)]);
        assert_ne!(a.version(), c.version());
        // Per-resource versions change only for the changed resource.
        assert_eq!(
            a.get("a").map(|r| &r.version),
            c.get("a").map(|r| &r.version)
        );
        assert_ne!(
            a.get("b").map(|r| &r.version),
            c.get("b").map(|r| &r.version)
        );
    }

    #[test]
    fn subset_versions_change_only_with_their_resources() {
        let names = ["a".to_owned(), "x".to_owned()];
        let one = Resources::new([cluster("a", 1), cluster("b", 2)]);
        let two = Resources::new([cluster("a", 1), cluster("b", 3)]);
        let three = Resources::new([cluster("a", 4), cluster("b", 3)]);
        assert_eq!(one.subset_version(&names), two.subset_version(&names));
        assert_ne!(two.subset_version(&names), three.subset_version(&names));
        assert_ne!(one.subset_version(&names), one.version());
    }

    #[test]
    fn absent_type_has_the_empty_version() {
        let s = Snapshot::new();
        assert_eq!(s.version(type_url::CLUSTER), Resources::empty().version());
        assert_ne!(s.version(type_url::CLUSTER), "");
    }

    #[test]
    fn type_urls_match_envoy_types() {
        use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
        use envoy_types::pb::envoy::config::listener::v3::Listener;
        use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
        use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
        use prost::Name;
        assert_eq!(Cluster::type_url(), type_url::CLUSTER);
        assert_eq!(ClusterLoadAssignment::type_url(), type_url::ENDPOINT);
        assert_eq!(Listener::type_url(), type_url::LISTENER);
        assert_eq!(RouteConfiguration::type_url(), type_url::ROUTE);
        assert_eq!(Secret::type_url(), type_url::SECRET);
    }
}
