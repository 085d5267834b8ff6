//! The ADS protocol state, without IO: per resource type the last good (accepted) version, the
//! stream's last nonce, the subscribed names and the names xDS holds live; which responses
//! become which update; the ACK or NACK an update's results make; the EDS, RDS and SDS
//! subscriptions that follow from the clusters and listeners held; and when the first config
//! is complete.
//!
//! State of the world: a CDS or LDS response is the complete set (a held cluster or listener
//! absent from it is removed, and a removed cluster's endpoints with it); an EDS or RDS
//! response may carry a subset, and its resources go when nothing held refers to them any more.
//! SDS is subscribed like EDS: by the names the held listeners' and clusters' TLS blocks give.
//!
//! The two flavours of the protocol (state of the world, delta) share all of this; only their
//! messages differ, behind [`Wire`] ([`Sotw`] here, `Delta` in `super::delta`).

use super::{Any, CLUSTER, Decode, ENDPOINT, LISTENER, ROUTE, SECRET};
use crate::state::Applied;
use envoy_types::pb::envoy::config::core::v3::{Node, node::UserAgentVersionType};
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status;
use sluice_config::{ListenerKind, Resource, ResourceKey, ResourceType, Update};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// `google.rpc.Code.INVALID_ARGUMENT`, the code of every NACK.
const INVALID_ARGUMENT: i32 = 3;

/// A NACK's `error_detail`.
pub(super) fn nack_status(message: String) -> Status {
    Status {
        code: INVALID_ARGUMENT,
        message,
        details: Vec::new(),
    }
}

/// The order subscriptions are (re)sent in: Envoy's (clusters, their endpoints, listeners,
/// their routes), then the secrets both name.
const ORDER: [ResourceType; 5] = [
    ResourceType::Cluster,
    ResourceType::Endpoints,
    ResourceType::Listener,
    ResourceType::RouteTable,
    ResourceType::Secret,
];

/// The type URL of a resource type.
pub(crate) fn type_url(kind: ResourceType) -> &'static str {
    match kind {
        ResourceType::Cluster => CLUSTER,
        ResourceType::Endpoints => ENDPOINT,
        ResourceType::Listener => LISTENER,
        ResourceType::RouteTable => ROUTE,
        ResourceType::Secret => SECRET,
    }
}

/// The resource type of a type URL.
fn kind_of(type_url: &str) -> Option<ResourceType> {
    ORDER.into_iter().find(|k| self::type_url(*k) == type_url)
}

/// LDS and CDS are subscribed with a wildcard and their responses are complete.
pub(super) fn wildcard(kind: ResourceType) -> bool {
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
pub(super) struct TypeState {
    /// The last version accepted ("" before the first).
    version: String,
    /// The last nonce received on this stream.
    pub(super) nonce: String,
    /// Subscribed names (EDS, RDS; wildcard types subscribe to everything).
    pub(super) names: BTreeSet<String>,
    /// A request for this type went out on this stream.
    pub(super) requested: bool,
    /// The names of this type xDS holds live (accepted, not removed) → the version the
    /// server gave each (delta; "" in state of the world).
    pub(super) held: BTreeMap<String, String>,
    /// Names received at least once (accepted or rejected, or said not to exist): warming.
    pub(super) seen: BTreeSet<String>,
    /// A response of this type was decoded at least once.
    responded: bool,
}

/// One flavour of the protocol (state of the world or delta): its messages, built from and
/// read into the shared [`AdsState`].
pub(crate) trait Wire {
    /// What the client sends.
    type Request;
    /// What the server sends.
    type Response;
    /// A response's type URL, nonce and version (delta: the informational system version).
    fn head(response: &Self::Response) -> [&str; 3];
    /// The update a response of `kind` makes, with each upserted resource's version (by
    /// name; empty when the flavour has none).
    fn update(
        state: &mut AdsState,
        kind: ResourceType,
        response: &Self::Response,
        decode: Decode,
    ) -> Result<(Update, BTreeMap<String, String>), String>;
    /// The ACK (`error` is `None`) or NACK of the last response of `kind`.
    fn answer(state: &mut AdsState, kind: ResourceType, error: Option<String>) -> Self::Request;
    /// The NACK of a response of a type the client does not know.
    fn refuse(type_url: &str, nonce: &str, why: String) -> Self::Request;
    /// The request a subscription change makes.
    fn change(state: &mut AdsState, change: &Change) -> Self::Request;
    /// The request that (re)subscribes `kind` on a new stream.
    fn hello(state: &mut AdsState, kind: ResourceType) -> Self::Request;
}

/// State of the world: `DiscoveryRequest` / `DiscoveryResponse`.
#[derive(Debug)]
pub(crate) struct Sotw;

impl Wire for Sotw {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;

    fn head(response: &DiscoveryResponse) -> [&str; 3] {
        [&response.type_url, &response.nonce, &response.version_info]
    }

    fn update(
        state: &mut AdsState,
        kind: ResourceType,
        response: &DiscoveryResponse,
        decode: Decode,
    ) -> Result<(Update, BTreeMap<String, String>), String> {
        state
            .decode_all(kind, response, decode)
            .map(|u| (u, BTreeMap::new()))
    }

    fn answer(state: &mut AdsState, kind: ResourceType, error: Option<String>) -> DiscoveryRequest {
        state.request(kind, error)
    }

    fn refuse(type_url: &str, nonce: &str, why: String) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: type_url.into(),
            response_nonce: nonce.into(),
            error_detail: Some(nack_status(why)),
            ..DiscoveryRequest::default()
        }
    }

    fn change(state: &mut AdsState, change: &Change) -> DiscoveryRequest {
        state.request(change.kind, None)
    }

    fn hello(state: &mut AdsState, kind: ResourceType) -> DiscoveryRequest {
        state.request(kind, None)
    }
}

/// A subscription (EDS or RDS names) that changed.
#[derive(Debug)]
pub(crate) struct Change {
    /// Its type.
    pub(crate) kind: ResourceType,
    /// Names subscribed now.
    pub(crate) added: Vec<String>,
    /// Names no longer subscribed.
    pub(crate) removed: Vec<String>,
}

/// What settling an update's results decided, before any request is built.
struct Settled {
    kind: ResourceType,
    nack: Option<String>,
    cleanup: Update,
    changes: Vec<Change>,
}

/// A decoded response, to apply.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// Its type.
    pub(crate) kind: ResourceType,
    version: String,
    /// Every resource in it, and its removals.
    pub(crate) update: Update,
    /// Each upserted resource's version, by name (delta).
    versions: BTreeMap<String, String>,
}

/// A response refused before anything was applied.
#[derive(Debug)]
pub(crate) struct Refused<R = DiscoveryRequest> {
    /// Its type, when known.
    pub(crate) kind: Option<ResourceType>,
    /// The NACK to send.
    pub(crate) nack: R,
    /// Why.
    pub(crate) why: String,
}

/// What to do after an update was applied.
#[derive(Debug)]
pub(crate) struct Finished<R = DiscoveryRequest> {
    /// The ACK or NACK, then any subscription change.
    pub(crate) requests: Vec<R>,
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
    /// Held listeners and clusters → the SDS secrets their TLS names.
    secret_refs: BTreeMap<ResourceKey, Vec<String>>,
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
            secret_refs: BTreeMap::new(),
        }
    }

    pub(super) fn ty(&mut self, kind: ResourceType) -> &mut TypeState {
        self.types.entry(kind).or_default()
    }

    /// The last good version of a type ("" before the first).
    pub(crate) fn version(&self, kind: ResourceType) -> &str {
        self.types.get(&kind).map_or("", |t| t.version.as_str())
    }

    /// The node, for the first request of a stream only.
    pub(super) fn take_node(&mut self) -> Option<Node> {
        (!std::mem::replace(&mut self.node_sent, true)).then(|| self.node.clone())
    }

    /// A new stream: nonces are forgotten, and the subscriptions go out again with the last
    /// good versions (so the server may skip what did not change), the node on the first.
    #[cfg(test)]
    pub(crate) fn reconnect(&mut self) -> Vec<DiscoveryRequest> {
        self.reconnect_as::<Sotw>()
    }

    /// [`AdsState::reconnect`] in either flavour.
    pub(crate) fn reconnect_as<W: Wire>(&mut self) -> Vec<W::Request> {
        self.node_sent = false;
        for t in self.types.values_mut() {
            t.nonce.clear();
            t.requested = false;
        }
        let kinds: Vec<ResourceType> = ORDER
            .into_iter()
            .filter(|k| wildcard(*k) || !self.types.get(k).is_none_or(|t| t.names.is_empty()))
            .collect();
        kinds.into_iter().map(|k| W::hello(self, k)).collect()
    }

    /// A request for `kind` with its current version, nonce and names.
    fn request(&mut self, kind: ResourceType, error: Option<String>) -> DiscoveryRequest {
        let node = self.take_node();
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
            error_detail: error.map(nack_status),
            ..DiscoveryRequest::default()
        }
    }

    /// Decodes a response into the update to apply, or the NACK to send at once (an unknown
    /// type, a decode error, a resource of another type, a name twice: nothing is applied).
    #[cfg(test)]
    pub(crate) fn prepare(
        &mut self,
        response: &DiscoveryResponse,
        decode: Decode,
    ) -> Result<Prepared, Box<Refused>> {
        self.prepare_as::<Sotw>(response, decode)
    }

    /// [`AdsState::prepare`] in either flavour.
    pub(crate) fn prepare_as<W: Wire>(
        &mut self,
        response: &W::Response,
        decode: Decode,
    ) -> Result<Prepared, Box<Refused<W::Request>>> {
        let [url, nonce, version] = W::head(response);
        let Some(kind) = kind_of(url) else {
            let why = format!("unsupported resource type {url}");
            return Err(Box::new(Refused {
                kind: None,
                nack: W::refuse(url, nonce, why.clone()),
                why,
            }));
        };
        self.ty(kind).nonce = nonce.to_string();
        match W::update(self, kind, response, decode) {
            Ok((update, versions)) => {
                self.ty(kind).responded = true;
                Ok(Prepared {
                    kind,
                    version: version.to_string(),
                    update,
                    versions,
                })
            }
            Err(why) => {
                let nack = W::answer(self, kind, Some(why.clone()));
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
        let mut upserts: Vec<Resource> = decode_checked(
            kind,
            &response.type_url,
            response.resources.iter().map(|a| (a, ())),
            decode,
        )?
        .into_iter()
        .map(|(r, ())| r)
        .collect();
        let mut removals: Vec<ResourceKey> = Vec::new();
        if wildcard(kind) {
            let names: BTreeSet<&str> = upserts.iter().map(Resource::name).collect();
            for gone in self.ty(kind).held.keys() {
                if !names.contains(gone.as_str()) {
                    removal(kind, gone, &mut removals);
                }
            }
        } else {
            self.keep_subscribed(kind, &mut upserts);
        }
        Ok(Update { upserts, removals })
    }

    /// Drops resources of a type subscribed by name that are not subscribed (any more).
    pub(super) fn keep_subscribed(&mut self, kind: ResourceType, upserts: &mut Vec<Resource>) {
        if !wildcard(kind) {
            let t = self.ty(kind);
            upserts.retain(|r| t.names.contains(r.name()));
        }
    }

    /// Takes the writer's results for a prepared update: what xDS holds, the ACK or NACK, the
    /// EDS/RDS subscriptions that follow and the resources no longer referenced.
    #[cfg(test)]
    pub(crate) fn finish(&mut self, prepared: Prepared, applied: &Applied) -> Finished {
        self.finish_as::<Sotw>(prepared, applied)
    }

    /// [`AdsState::finish`] in either flavour: the ACK or NACK first, then one request per
    /// subscription change.
    pub(crate) fn finish_as<W: Wire>(
        &mut self,
        prepared: Prepared,
        applied: &Applied,
    ) -> Finished<W::Request> {
        let settled = self.settle(prepared, applied);
        let mut requests = vec![W::answer(self, settled.kind, settled.nack.clone())];
        for change in &settled.changes {
            requests.push(W::change(self, change));
        }
        Finished {
            requests,
            cleanup: settled.cleanup,
            nack: settled.nack,
        }
    }

    /// What xDS holds after an update's results, its NACK message, the subscription changes
    /// and the resources no longer referenced.
    fn settle(&mut self, prepared: Prepared, applied: &Applied) -> Settled {
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
            let version = prepared.versions.get(&key.1).cloned().unwrap_or_default();
            self.ty(key.0).held.insert(key.1.clone(), version);
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
        let mut changes = Vec::new();
        let mut cleanup = Update::default();
        let eds = self.eds_clusters.clone();
        let rds: BTreeSet<String> = self.listener_tables.values().cloned().collect();
        let sds: BTreeSet<String> = self.secret_refs.values().flatten().cloned().collect();
        for (k, wanted) in [
            (ResourceType::Endpoints, eds),
            (ResourceType::RouteTable, rds),
            (ResourceType::Secret, sds),
        ] {
            let t = self.ty(k);
            if t.names == wanted {
                continue;
            }
            let gone: Vec<String> = t
                .held
                .keys()
                .filter(|n| !wanted.contains(*n))
                .cloned()
                .collect();
            for name in gone {
                t.held.remove(&name);
                cleanup.removals.push((k, name));
            }
            let send = t.requested || !wanted.is_empty();
            let added = wanted.difference(&t.names).cloned().collect();
            let removed = t.names.difference(&wanted).cloned().collect();
            t.names = wanted;
            if send {
                changes.push(Change {
                    kind: k,
                    added,
                    removed,
                });
            }
        }
        Settled {
            kind,
            nack,
            cleanup,
            changes,
        }
    }

    /// Notes what an accepted resource subscribes to.
    fn track(&mut self, r: &Resource) {
        let secrets: Vec<String> = r.secret_names().into_iter().map(str::to_string).collect();
        if secrets.is_empty() {
            self.secret_refs.remove(&r.key());
        } else {
            self.secret_refs.insert(r.key(), secrets);
        }
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
            Resource::Endpoints(_) | Resource::RouteTable(_) | Resource::Secret(_) => {}
        }
    }

    /// Forgets a removed resource.
    fn forget(&mut self, key: &ResourceKey) {
        self.ty(key.0).held.remove(&key.1);
        self.secret_refs.remove(key);
        match key.0 {
            ResourceType::Cluster => {
                self.eds_clusters.remove(&key.1);
            }
            ResourceType::Listener => {
                self.listener_tables.remove(&key.1);
            }
            ResourceType::Endpoints | ResourceType::RouteTable | ResourceType::Secret => {}
        }
    }

    /// True once the first complete config arrived: a CDS and an LDS response, and every
    /// subscribed EDS, RDS and SDS name received (accepted or rejected: a rejected resource
    /// does not hold warming up, as in Envoy).
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
            && covered(ResourceType::Secret)
    }
}

/// Decodes the `Any`s of a response of `kind` (each with a tag, carried to the resources it
/// decodes to): an error when one does not decode, holds another type, or a name comes twice.
pub(super) fn decode_checked<'a, T: Clone>(
    kind: ResourceType,
    type_url: &str,
    items: impl IntoIterator<Item = (&'a Any, T)>,
    decode: Decode,
) -> Result<Vec<(Resource, T)>, String> {
    let mut out: Vec<(Resource, T)> = Vec::new();
    for (any, tag) in items {
        let decoded = decode(type_url, any).map_err(|e| format!("{kind}: {e}"))?;
        out.extend(decoded.into_iter().map(|r| (r, tag.clone())));
    }
    let mut names = BTreeSet::new();
    for (r, _) in &out {
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
    Ok(out)
}

/// Removes `name` of `kind`, and a removed cluster's endpoints with it.
pub(super) fn removal(kind: ResourceType, name: &str, removals: &mut Vec<ResourceKey>) {
    removals.push((kind, name.to_string()));
    if kind == ResourceType::Cluster {
        removals.push((ResourceType::Endpoints, name.to_string()));
    }
}

/// The delay before reconnection attempt `attempt` (1 = the first after a failure): full
/// jitter, uniform in `[0, min(max, base × 2^(attempt−1))]`.
pub(crate) fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    crate::clock::full_jitter(attempt, base, max, fastrand::u64(..))
}
