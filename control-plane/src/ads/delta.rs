//! Incremental (delta) ADS: the proxy subscribes and unsubscribes names per type, says which
//! versions it already has, and every response carries only what changed.
//!
//! Rules (xds_protocol.rst, "Incremental xDS"):
//! * the first request of a type with no names subscribes to everything (legacy wildcard);
//!   `*` in `resource_names_subscribe` / `_unsubscribe` turns the wildcard on / off;
//! * `initial_resource_versions` (first request of a type) are the versions the proxy has:
//!   unchanged resources are not sent again, vanished ones come back in `removed_resources`;
//! * subscription changes are honoured even on a request with a stale nonce; ACK / NACK only
//!   count with the latest nonce of the type; a NACKed resource version is not resent (the
//!   server treats what it sent as what the proxy has), a newer one is;
//! * a response carries the subscribed resources whose version differs from what the proxy
//!   has, and in `removed_resources` the ones it has that no longer exist, and explicitly
//!   subscribed names that do not exist (once), so the proxy need not wait for a timeout;
//! * on a snapshot change, types go out in push order, and removed clusters and endpoints
//!   in a last response of their own (stale resources removed last);
//! * nothing is sent when nothing changed; `system_version_info` is the type's snapshot
//!   version (informational).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use tokio::time::Instant;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use tonic::Streaming;

use super::Stream;
use crate::cache::Published;
use crate::snapshot::{Resources, type_url};
use crate::status::{Nack, now_ms};

/// The proxy has been told this name does not exist.
const ABSENT: &str = "";

#[derive(Debug, Default)]
struct TypeState {
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the proxy has: name → version ([`ABSENT`]: told it does not exist).
    known: HashMap<String, String>,
    nonce: Option<String>,
    sent_version: Option<String>,
    pending_since: Option<Instant>,
}

impl TypeState {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    fn apply(&mut self, request: &DeltaDiscoveryRequest, first: bool) {
        if first {
            self.wildcard = request.resource_names_subscribe.is_empty();
            for (name, version) in &request.initial_resource_versions {
                if !version.is_empty() {
                    self.known.insert(name.clone(), version.clone());
                }
            }
        }
        for name in &request.resource_names_subscribe {
            if name == "*" {
                self.wildcard = true;
            } else {
                self.names.insert(name.clone());
            }
        }
        for name in &request.resource_names_unsubscribe {
            if name == "*" {
                self.wildcard = false;
            } else {
                self.names.remove(name);
            }
        }
        let (wildcard, names) = (self.wildcard, &self.names);
        self.known.retain(|n, _| wildcard || names.contains(n));
    }
}

/// Runs one delta stream until the proxy goes away.
pub(super) async fn run(
    mut stream: Stream<DeltaDiscoveryResponse>,
    first: DeltaDiscoveryRequest,
    inbound: Streaming<DeltaDiscoveryRequest>,
) {
    let mut state = Delta {
        types: BTreeMap::new(),
        current: stream.watch.current(),
        since: Instant::now(),
    };
    super::drive(&mut state, stream, first, inbound).await;
}

struct Delta {
    types: BTreeMap<String, TypeState>,
    current: Option<Arc<Published>>,
    /// What caused the pushes being made: the snapshot's `set_at` for a snapshot change,
    /// the request's arrival for a subscription (a proxy connecting an hour after the
    /// snapshot was set must not count an hour of push latency).
    since: Instant,
}

impl super::StreamState<DeltaDiscoveryRequest, DeltaDiscoveryResponse> for Delta {
    fn set_current(&mut self, current: Option<Arc<Published>>, since: Instant) {
        self.current = current;
        self.since = since;
    }

    async fn request(
        &mut self,
        stream: &mut Stream<DeltaDiscoveryResponse>,
        request: DeltaDiscoveryRequest,
    ) -> bool {
        Delta::request(self, stream, request).await
    }

    async fn push_all(&mut self, stream: &mut Stream<DeltaDiscoveryResponse>) -> bool {
        Delta::push_all(self, stream).await
    }
}

impl Delta {
    async fn request(
        &mut self,
        stream: &mut Stream<DeltaDiscoveryResponse>,
        request: DeltaDiscoveryRequest,
    ) -> bool {
        self.since = Instant::now();
        let url = request.type_url.clone();
        if url.is_empty() {
            let _ = stream
                .tx
                .send(Err(tonic::Status::invalid_argument("type_url is empty")))
                .await;
            return false;
        }
        let first = !self.types.contains_key(&url);
        let st = self.types.entry(url.clone()).or_default();
        st.apply(&request, first);
        let nonce = request.response_nonce;
        if !nonce.is_empty() && st.nonce.as_deref() == Some(nonce.as_str()) {
            let shared = &stream.shared;
            match request.error_detail {
                Some(error) => {
                    shared.metrics.nacked(&url);
                    let nack = Nack {
                        version: st.sent_version.clone().unwrap_or_default(),
                        error: error.message,
                        code: error.code,
                        at_ms: now_ms(),
                    };
                    tracing::warn!(type_url = %url, version = %nack.version, error = %nack.error, "delta NACK");
                    st.pending_since = None;
                    shared.entry.update_type(&url, |t| t.last_nack = Some(nack));
                }
                None => {
                    if let Some(since) = st.pending_since.take() {
                        shared
                            .metrics
                            .push_latency
                            .observe(since.elapsed().as_secs_f64());
                    }
                    let version = st.sent_version.clone();
                    shared
                        .entry
                        .update_type(&url, |t| t.acked_version = version);
                }
            }
        }
        self.push(stream, &url).await
    }

    /// Pushes every type's changes in push order; removals of clusters and endpoints go out
    /// last, after listeners and routes stopped referring to them (make-before-break).
    async fn push_all(&mut self, stream: &mut Stream<DeltaDiscoveryResponse>) -> bool {
        let mut urls: Vec<String> = self.types.keys().cloned().collect();
        urls.sort_by_key(|u| (type_url::rank(u), u.clone()));
        let endpoint_rank = type_url::rank(type_url::ENDPOINT);
        let others_change = urls
            .iter()
            .any(|u| type_url::rank(u) > endpoint_rank && self.would_change(u));
        for url in &urls {
            let deferred = others_change && (url == type_url::CLUSTER || url == type_url::ENDPOINT);
            if !self.push_with(stream, url, !deferred).await {
                return false;
            }
        }
        for url in [type_url::CLUSTER, type_url::ENDPOINT] {
            if !self.push(stream, url).await {
                return false;
            }
        }
        true
    }

    async fn push(&mut self, stream: &mut Stream<DeltaDiscoveryResponse>, url: &str) -> bool {
        self.push_with(stream, url, true).await
    }

    /// Whether a push of `url` would send anything (read-only [`diff`]).
    fn would_change(&self, url: &str) -> bool {
        let (Some(published), Some(st)) = (self.current.as_ref(), self.types.get(url)) else {
            return false;
        };
        let empty = Resources::empty();
        let resources = published.snapshot.resources(url).unwrap_or(&empty);
        resources
            .items()
            .iter()
            .any(|(name, item)| st.wants(name) && st.known.get(name) != Some(&item.version))
            || st
                .known
                .iter()
                .any(|(name, v)| v.as_str() != ABSENT && resources.get(name).is_none())
            || st
                .names
                .iter()
                .any(|name| resources.get(name).is_none() && !st.known.contains_key(name))
    }

    /// Sends what changed for one type (with or without removals), if anything; false when
    /// the proxy is gone.
    async fn push_with(
        &mut self,
        stream: &mut Stream<DeltaDiscoveryResponse>,
        url: &str,
        removals: bool,
    ) -> bool {
        let Some(published) = self.current.clone() else {
            return true;
        };
        let Some(st) = self.types.get_mut(url) else {
            return true;
        };
        let empty = Resources::empty();
        let resources = published.snapshot.resources(url).unwrap_or(&empty);
        let (changed, removed) = diff(st, resources, removals);
        if changed.is_empty() && removed.is_empty() {
            return true;
        }
        let nonce = stream.nonce();
        let version = resources.version().to_owned();
        st.nonce = Some(nonce.clone());
        st.sent_version = Some(version.clone());
        st.pending_since = Some(self.since);
        let response = DeltaDiscoveryResponse {
            system_version_info: version.clone(),
            resources: changed,
            type_url: url.to_owned(),
            removed_resources: removed,
            nonce: nonce.clone(),
            ..Default::default()
        };
        stream.shared.metrics.pushed(url);
        stream.shared.entry.update_type(url, |t| {
            t.sent_version = Some(version);
            t.sent_nonce = Some(nonce);
            t.last_push_ms = Some(now_ms());
        });
        stream.send(response).await
    }
}

/// The resources to send and the names to remove, updating what the proxy is known to have.
fn diff(st: &mut TypeState, resources: &Resources, removals: bool) -> (Vec<Resource>, Vec<String>) {
    let mut changed = Vec::new();
    for (name, item) in resources.items() {
        if st.wants(name) && st.known.get(name) != Some(&item.version) {
            st.known.insert(name.clone(), item.version.clone());
            changed.push(Resource {
                name: name.clone(),
                version: item.version.clone(),
                resource: Some(item.any.clone()),
                ..Default::default()
            });
        }
    }
    if !removals {
        return (changed, Vec::new());
    }
    let mut removed: Vec<String> = st
        .known
        .iter()
        .filter(|(name, version)| version.as_str() != ABSENT && resources.get(name).is_none())
        .map(|(name, _)| name.clone())
        .collect();
    for name in &st.names {
        if resources.get(name).is_none() && !st.known.contains_key(name) {
            removed.push(name.clone());
        }
    }
    removed.sort();
    removed.dedup();
    for name in &removed {
        if st.names.contains(name) {
            st.known.insert(name.clone(), ABSENT.to_owned());
        } else {
            st.known.remove(name);
        }
    }
    (changed, removed)
}
