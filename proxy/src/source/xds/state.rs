//! The ADS protocol state, without IO: per resource type the last good (accepted) version, the
//! stream's last nonce, the subscribed names and the names xDS holds live; which responses
//! become which update; the ACK or NACK an update's results make; the EDS and RDS
//! subscriptions that follow from the clusters and listeners held; and when the first config
//! is complete.
//!
//! State of the world: a CDS or LDS response is the complete set (a held cluster or listener
//! absent from it is removed, and a removed cluster's endpoints with it); an EDS or RDS
//! response may carry a subset, and its resources go when nothing held refers to them any more.

use super::{CLUSTER, Decode, ENDPOINT, LISTENER, ROUTE};
use crate::state::Applied;
use envoy_types::pb::envoy::config::core::v3::{Node, node::UserAgentVersionType};
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status;
use sluice_config::{ListenerKind, Resource, ResourceKey, ResourceType, Update};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// `google.rpc.Code.INVALID_ARGUMENT`, the code of every NACK.
const INVALID_ARGUMENT: i32 = 3;

/// The order subscriptions are (re)sent in: Envoy's (clusters, their endpoints, listeners,
/// their routes).
const ORDER: [ResourceType; 4] = [
    ResourceType::Cluster,
    ResourceType::Endpoints,
    ResourceType::Listener,
    ResourceType::RouteTable,
];

/// The type URL of a resource type.
pub(crate) fn type_url(kind: ResourceType) -> &'static str {
    match kind {
        ResourceType::Cluster => CLUSTER,
        ResourceType::Endpoints => ENDPOINT,
        ResourceType::Listener => LISTENER,
        ResourceType::RouteTable => ROUTE,
    }
}

/// The resource type of a type URL.
fn kind_of(type_url: &str) -> Option<ResourceType> {
    ORDER.into_iter().find(|k| self::type_url(*k) == type_url)
}

/// LDS and CDS are subscribed with a wildcard and their responses are complete.
fn wildcard(kind: ResourceType) -> bool {
    matches!(kind, ResourceType::Cluster | ResourceType::Listener)
}

/// The node sent on the first request of each stream.
pub(crate) fn node(id: &str, cluster: &str) -> Node {
    Node {
        id: id.to_string(),
        cluster: cluster.to_string(),
        user_agent_name: "sluice".into(),
        user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion(
            env!("CARGO_PKG_VERSION").into(),
        )),
        ..Node::default()
    }
}

/// One type's state.
#[derive(Debug, Default)]
struct TypeState {
    /// The last version accepted ("" before the first).
    version: String,
    /// The last nonce received on this stream.
    nonce: String,
    /// Subscribed names (EDS, RDS; wildcard types subscribe to everything).
    names: BTreeSet<String>,
    /// A request for this type went out on this stream.
    requested: bool,
    /// The names of this type xDS holds live (accepted, not removed).
    held: BTreeSet<String>,
    /// Names received at least once (accepted or rejected): warming.
    seen: BTreeSet<String>,
    /// A response of this type was decoded at least once.
    responded: bool,
}

/// A decoded response, to apply.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// Its type.
    pub(crate) kind: ResourceType,
    version: String,
    /// Every resource in it, and the SotW removals.
    pub(crate) update: Update,
}

/// A response refused before anything was applied.
#[derive(Debug)]
pub(crate) struct Refused {
    /// Its type, when known.
    pub(crate) kind: Option<ResourceType>,
    /// The NACK to send.
    pub(crate) nack: DiscoveryRequest,
    /// Why.
    pub(crate) why: String,
}

/// What to do after an update was applied.
#[derive(Debug)]
pub(crate) struct Finished {
    /// The ACK or NACK, then any subscription change.
    pub(crate) requests: Vec<DiscoveryRequest>,
    /// Endpoints and route tables no longer referenced, to remove (applied before the
    /// requests are sent).
    pub(crate) cleanup: Update,
    /// The NACK's message, if the response was rejected.
    pub(crate) nack: Option<String>,
}

/// The client's protocol state; survives reconnections.
#[derive(Debug)]
pub(crate) struct AdsState {
    node: Node,
    node_sent: bool,
    types: BTreeMap<ResourceType, TypeState>,
    /// Held clusters that take their endpoints from EDS (no DNS `discovery`).
    eds_clusters: BTreeSet<String>,
    /// Held HTTP listeners → the route table each names.
    listener_tables: BTreeMap<String, String>,
}

impl AdsState {
    /// Nothing held, nothing subscribed.
    pub(crate) fn new(node: Node) -> Self {
        AdsState {
            node,
            node_sent: false,
            types: ORDER
                .into_iter()
                .map(|k| (k, TypeState::default()))
                .collect(),
            eds_clusters: BTreeSet::new(),
            listener_tables: BTreeMap::new(),
        }
    }

    fn ty(&mut self, kind: ResourceType) -> &mut TypeState {
        self.types.entry(kind).or_default()
    }

    /// The last good version of a type ("" before the first).
    pub(crate) fn version(&self, kind: ResourceType) -> &str {
        self.types.get(&kind).map_or("", |t| t.version.as_str())
    }

    /// A new stream: nonces are forgotten, and the subscriptions go out again with the last
    /// good versions (so the server may skip what did not change), the node on the first.
    pub(crate) fn reconnect(&mut self) -> Vec<DiscoveryRequest> {
        self.node_sent = false;
        for t in self.types.values_mut() {
            t.nonce.clear();
            t.requested = false;
        }
        let kinds: Vec<ResourceType> = ORDER
            .into_iter()
            .filter(|k| wildcard(*k) || !self.types.get(k).is_none_or(|t| t.names.is_empty()))
            .collect();
        kinds.into_iter().map(|k| self.request(k, None)).collect()
    }

    /// A request for `kind` with its current version, nonce and names.
    fn request(&mut self, kind: ResourceType, error: Option<String>) -> DiscoveryRequest {
        let node = (!self.node_sent).then(|| self.node.clone());
        self.node_sent = true;
        let t = self.ty(kind);
        t.requested = true;
        DiscoveryRequest {
            version_info: t.version.clone(),
            node,
            resource_names: if wildcard(kind) {
                Vec::new()
            } else {
                t.names.iter().cloned().collect()
            },
            type_url: type_url(kind).into(),
            response_nonce: t.nonce.clone(),
            error_detail: error.map(|message| Status {
                code: INVALID_ARGUMENT,
                message,
                details: Vec::new(),
            }),
            ..DiscoveryRequest::default()
        }
    }

    /// Decodes a response into the update to apply, or the NACK to send at once (an unknown
    /// type, a decode error, a resource of another type, a name twice: nothing is applied).
    pub(crate) fn prepare(
        &mut self,
        response: &DiscoveryResponse,
        decode: Decode,
    ) -> Result<Prepared, Box<Refused>> {
        let Some(kind) = kind_of(&response.type_url) else {
            let why = format!("unsupported resource type {}", response.type_url);
            let nack = DiscoveryRequest {
                type_url: response.type_url.clone(),
                response_nonce: response.nonce.clone(),
                error_detail: Some(Status {
                    code: INVALID_ARGUMENT,
                    message: why.clone(),
                    details: Vec::new(),
                }),
                ..DiscoveryRequest::default()
            };
            return Err(Box::new(Refused {
                kind: None,
                nack,
                why,
            }));
        };
        self.ty(kind).nonce = response.nonce.clone();
        match self.decode_all(kind, response, decode) {
            Ok(update) => {
                self.ty(kind).responded = true;
                Ok(Prepared {
                    kind,
                    version: response.version_info.clone(),
                    update,
                })
            }
            Err(why) => {
                let nack = self.request(kind, Some(why.clone()));
                Err(Box::new(Refused {
                    kind: Some(kind),
                    nack,
                    why,
                }))
            }
        }
    }

    fn decode_all(
        &mut self,
        kind: ResourceType,
        response: &DiscoveryResponse,
        decode: Decode,
    ) -> Result<Update, String> {
        let mut upserts: Vec<Resource> = Vec::new();
        for any in &response.resources {
            let decoded = decode(&response.type_url, any).map_err(|e| format!("{kind}: {e}"))?;
            upserts.extend(decoded);
        }
        let mut names = BTreeSet::new();
        for r in &upserts {
            if r.kind() != kind {
                return Err(format!(
                    "{kind} response holds {} \"{}\"",
                    r.kind(),
                    r.name()
                ));
            }
            if !names.insert(r.name().to_string()) {
                return Err(format!("{kind} \"{}\" appears twice", r.name()));
            }
        }
        let t = self.ty(kind);
        let mut removals: Vec<ResourceKey> = Vec::new();
        if wildcard(kind) {
            for gone in t.held.iter().filter(|n| !names.contains(*n)) {
                removals.push((kind, gone.clone()));
                if kind == ResourceType::Cluster {
                    removals.push((ResourceType::Endpoints, gone.clone()));
                }
            }
        } else {
            // Not subscribed (any more): ignored.
            upserts.retain(|r| t.names.contains(r.name()));
        }
        Ok(Update { upserts, removals })
    }

    /// Takes the writer's results for a prepared update: what xDS holds, the ACK or NACK, the
    /// EDS/RDS subscriptions that follow and the resources no longer referenced.
    pub(crate) fn finish(&mut self, prepared: Prepared, applied: &Applied) -> Finished {
        let kind = prepared.kind;
        for r in &prepared.update.upserts {
            self.ty(kind).seen.insert(r.name().to_string());
        }
        let accepted: BTreeMap<ResourceKey, &Resource> = prepared
            .update
            .upserts
            .iter()
            .filter(|r| {
                applied
                    .results
                    .iter()
                    .any(|x| x.kind == r.kind() && x.name == r.name() && x.outcome.is_ok())
            })
            .map(|r| (r.key(), r))
            .collect();
        for (key, r) in &accepted {
            self.ty(key.0).held.insert(key.1.clone());
            self.track(r);
        }
        for key in &prepared.update.removals {
            self.forget(key);
        }
        let rejected: Vec<String> = applied.rejected().map(ToString::to_string).collect();
        let nack = (!rejected.is_empty()).then(|| rejected.join("; "));
        if nack.is_none() {
            self.ty(kind).version = prepared.version;
        }
        let mut requests = vec![self.request(kind, nack.clone())];
        let mut cleanup = Update::default();
        let eds = self.eds_clusters.clone();
        let rds: BTreeSet<String> = self.listener_tables.values().cloned().collect();
        for (k, wanted) in [
            (ResourceType::Endpoints, eds),
            (ResourceType::RouteTable, rds),
        ] {
            let t = self.ty(k);
            if t.names == wanted {
                continue;
            }
            let gone: Vec<String> = t.held.difference(&wanted).cloned().collect();
            for name in gone {
                t.held.remove(&name);
                cleanup.removals.push((k, name));
            }
            let send = t.requested || !wanted.is_empty();
            t.names = wanted;
            if send {
                requests.push(self.request(k, None));
            }
        }
        Finished {
            requests,
            cleanup,
            nack,
        }
    }

    /// Notes what an accepted resource subscribes to.
    fn track(&mut self, r: &Resource) {
        match r {
            Resource::Cluster(c) => {
                if c.discovery.is_none() {
                    self.eds_clusters.insert(c.name.clone());
                } else {
                    self.eds_clusters.remove(&c.name);
                }
            }
            Resource::Listener(l) => match &l.kind {
                ListenerKind::Http(h) => {
                    self.listener_tables
                        .insert(l.name.clone(), h.route_table.clone());
                }
                ListenerKind::Tcp(_) => {
                    self.listener_tables.remove(&l.name);
                }
            },
            Resource::Endpoints(_) | Resource::RouteTable(_) => {}
        }
    }

    /// Forgets a removed resource.
    fn forget(&mut self, key: &ResourceKey) {
        self.ty(key.0).held.remove(&key.1);
        match key.0 {
            ResourceType::Cluster => {
                self.eds_clusters.remove(&key.1);
            }
            ResourceType::Listener => {
                self.listener_tables.remove(&key.1);
            }
            ResourceType::Endpoints | ResourceType::RouteTable => {}
        }
    }

    /// True once the first complete config arrived: a CDS and an LDS response, and every
    /// subscribed EDS and RDS name received (accepted or rejected: a rejected resource does
    /// not hold warming up, as in Envoy).
    pub(crate) fn complete(&self) -> bool {
        let done = |k: ResourceType| self.types.get(&k).is_some_and(|t| t.responded);
        let covered = |k: ResourceType| {
            self.types
                .get(&k)
                .is_none_or(|t| t.names.is_subset(&t.seen))
        };
        done(ResourceType::Cluster)
            && done(ResourceType::Listener)
            && covered(ResourceType::Endpoints)
            && covered(ResourceType::RouteTable)
    }
}

/// The delay before reconnection attempt `attempt` (1 = the first after a failure): full
/// jitter, uniform in `[0, min(max, base × 2^(attempt−1))]`.
pub(crate) fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(16);
    let cap = base.saturating_mul(factor).min(max);
    let millis = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(fastrand::u64(0..=millis))
}
