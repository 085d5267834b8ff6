//! State-of-the-world ADS: per type, the proxy names what it wants (or everything, for LDS and
//! CDS) and every response carries the whole answer at one version.
//!
//! Rules (xds_protocol.rst):
//! * a request whose `response_nonce` is not the latest nonce sent for its type is stale and
//!   ignored entirely (a newer response is on its way);
//! * with the latest nonce: `error_detail` set is a NACK (recorded; the rejected version is
//!   not sent again, only a newer one), otherwise an ACK of the version sent;
//! * a response is sent for a type when its version differs from the version this stream
//!   was last sent, or when the subscription changed; the version is the type's snapshot
//!   version for a wildcard subscription, and the version of the subscribed subset
//!   ([`Resources::subset_version`]) for one by name, so a proxy asking for endpoints of
//!   three clusters hears nothing when a fourth one's change;
//! * LDS/CDS responses carry every resource (anything missing is deleted by the proxy),
//!   RDS/EDS/SDS only the subscribed names that exist;
//! * on a snapshot change, types go out in [`type_url::PUSH_ORDER`] (secrets, clusters,
//!   endpoints, listeners, routes) without waiting for ACKs between them, and clusters that
//!   disappear are removed last (see [`Sotw::push_all`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tokio::time::Instant;

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;
use tonic::Streaming;

use super::Stream;
use crate::cache::Published;
use crate::snapshot::{Resources, type_url};
use crate::status::{Nack, now_ms};

/// What the proxy subscribed to for one type.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Names {
    All,
    Only(BTreeSet<String>),
}

/// One type's state on one stream.
#[derive(Debug)]
struct TypeState {
    names: Names,
    /// The proxy has named resources for this type at least once (so an empty list now means
    /// "nothing", not the legacy wildcard).
    named_before: bool,
    /// The subscription changed since the last response.
    dirty: bool,
    sent_version: Option<String>,
    nonce: Option<String>,
    /// When the snapshot behind the last response was set, until its ACK or NACK.
    pending_since: Option<Instant>,
    /// The snapshot of the last response (its clusters are the ones the proxy has).
    sent_from: Option<Arc<Published>>,
}

impl TypeState {
    fn new() -> Self {
        Self {
            names: Names::Only(BTreeSet::new()),
            named_before: false,
            dirty: true,
            sent_version: None,
            nonce: None,
            pending_since: None,
            sent_from: None,
        }
    }

    /// Applies a request's `resource_names`; true if the subscription changed.
    fn subscribe(&mut self, type_url: &str, names: &[String]) -> bool {
        let wanted = if names.iter().any(|n| n == "*")
            || (names.is_empty() && !self.named_before && type_url::wildcard_by_default(type_url))
        {
            Names::All
        } else {
            Names::Only(names.iter().cloned().collect())
        };
        if !names.is_empty() {
            self.named_before = true;
        }
        let changed = wanted != self.names;
        self.names = wanted;
        changed
    }
}

/// Runs one SotW stream until the proxy goes away.
pub(super) async fn run(
    mut stream: Stream<DiscoveryResponse>,
    first: DiscoveryRequest,
    inbound: Streaming<DiscoveryRequest>,
) {
    let mut state = Sotw {
        types: BTreeMap::new(),
        current: stream.watch.current(),
        since: Instant::now(),
    };
    super::drive(&mut state, stream, first, inbound).await;
}

struct Sotw {
    types: BTreeMap<String, TypeState>,
    current: Option<Arc<Published>>,
    /// What caused the pushes being made: the snapshot's `set_at` for a snapshot change,
    /// the request's arrival for a subscription (a proxy connecting an hour after the
    /// snapshot was set must not count an hour of push latency).
    since: Instant,
}

impl super::StreamState<DiscoveryRequest, DiscoveryResponse> for Sotw {
    fn set_current(&mut self, current: Option<Arc<Published>>, since: Instant) {
        self.current = current;
        self.since = since;
    }

    async fn request(
        &mut self,
        stream: &mut Stream<DiscoveryResponse>,
        request: DiscoveryRequest,
    ) -> bool {
        Sotw::request(self, stream, request).await
    }

    async fn push_all(&mut self, stream: &mut Stream<DiscoveryResponse>) -> bool {
        Sotw::push_all(self, stream).await
    }
}

impl Sotw {
    /// Handles one request; false when the stream should end.
    async fn request(
        &mut self,
        stream: &mut Stream<DiscoveryResponse>,
        request: DiscoveryRequest,
    ) -> bool {
        self.since = Instant::now();
        let url = request.type_url;
        if url.is_empty() {
            let _ = stream
                .tx
                .send(Err(tonic::Status::invalid_argument("type_url is empty")))
                .await;
            return false;
        }
        let first_for_type = !self.types.contains_key(&url);
        let st = self.types.entry(url.clone()).or_insert_with(TypeState::new);
        let nonce = request.response_nonce;
        if !nonce.is_empty() {
            if st.nonce.as_deref() != Some(nonce.as_str()) {
                tracing::trace!(type_url = %url, %nonce, "stale nonce ignored");
                return true;
            }
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
                    tracing::warn!(type_url = %url, version = %nack.version, error = %nack.error, "NACK");
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
                    let version = request.version_info.clone();
                    shared
                        .entry
                        .update_type(&url, |t| t.acked_version = Some(version));
                }
            }
        }
        if st.subscribe(&url, &request.resource_names) {
            st.dirty = true;
        }
        if nonce.is_empty() && first_for_type && !request.version_info.is_empty() {
            // A reconnecting proxy says which version it has: do not resend it.
            let version = request.version_info;
            st.sent_version = Some(version.clone());
            st.dirty = false;
            stream
                .shared
                .entry
                .update_type(&url, |t| t.acked_version = Some(version));
        }
        self.push(stream, &url).await
    }

    /// Pushes every subscribed type that needs it, in push order. When clusters disappear
    /// while other types change too, the stale clusters are removed last: the first CDS
    /// response keeps them (the new clusters plus the stale ones, at version
    /// `NEW+stale`), and the exact set follows after endpoints, listeners and routes.
    async fn push_all(&mut self, stream: &mut Stream<DiscoveryResponse>) -> bool {
        let mut urls: Vec<String> = self.types.keys().cloned().collect();
        urls.sort_by_key(|u| (type_url::rank(u), u.clone()));
        let cluster_rank = type_url::rank(type_url::CLUSTER);
        let others_change = urls
            .iter()
            .any(|u| type_url::rank(u) > cluster_rank && self.build(u).is_some());
        let keep_stale = if others_change {
            match self.send_with_stale_clusters(stream).await {
                Some(sent) => sent,
                None => return false,
            }
        } else {
            false
        };
        for url in &urls {
            let deferred = keep_stale && url == type_url::CLUSTER;
            if !deferred && !self.push(stream, url).await {
                return false;
            }
        }
        !keep_stale || self.push(stream, type_url::CLUSTER).await
    }

    /// Sends one type if its version or subscription changed; false when the proxy is gone.
    async fn push(&mut self, stream: &mut Stream<DiscoveryResponse>, url: &str) -> bool {
        match self.build(url) {
            Some((version, items)) => self.send(stream, url, version, items).await,
            None => true,
        }
    }

    /// The response for one type, if one is due: its version and resources.
    fn build(&self, url: &str) -> Option<(String, Vec<Any>)> {
        let published = self.current.as_ref()?;
        let st = self.types.get(url)?;
        let empty = Resources::empty();
        let resources = published.snapshot.resources(url).unwrap_or(&empty);
        let version = match &st.names {
            Names::All => resources.version().to_owned(),
            Names::Only(names) => resources.subset_version(names),
        };
        if !st.dirty && st.sent_version.as_deref() == Some(version.as_str()) {
            return None;
        }
        let items = match &st.names {
            Names::All => resources.items().values().map(|r| r.any.clone()).collect(),
            Names::Only(names) => names
                .iter()
                .filter_map(|n| resources.get(n).map(|r| r.any.clone()))
                .collect(),
        };
        Some((version, items))
    }

    /// If CDS is due and drops clusters this stream was sent, sends the new clusters plus the
    /// dropped ones. `Some(true)` if sent, `Some(false)` if not needed, `None` if the proxy
    /// is gone.
    async fn send_with_stale_clusters(
        &mut self,
        stream: &mut Stream<DiscoveryResponse>,
    ) -> Option<bool> {
        let url = type_url::CLUSTER;
        let (Some((version, mut items)), Some(st)) = (self.build(url), self.types.get(url)) else {
            return Some(false);
        };
        let Some(previous) = st.sent_from.as_ref() else {
            return Some(false);
        };
        let current = self
            .current
            .as_ref()
            .and_then(|p| p.snapshot.resources(url));
        let stale: Vec<Any> = previous
            .snapshot
            .resources(url)
            .into_iter()
            .flat_map(|r| r.items())
            .filter(|(name, _)| {
                current.and_then(|c| c.get(name)).is_none()
                    && match &st.names {
                        Names::All => true,
                        Names::Only(names) => names.contains(*name),
                    }
            })
            .map(|(_, r)| r.any.clone())
            .collect();
        if stale.is_empty() {
            return Some(false);
        }
        items.extend(stale);
        let sent = self
            .send(stream, url, format!("{version}+stale"), items)
            .await;
        sent.then_some(true)
    }

    /// Sends a response and records it; false when the proxy is gone.
    async fn send(
        &mut self,
        stream: &mut Stream<DiscoveryResponse>,
        url: &str,
        version: String,
        items: Vec<Any>,
    ) -> bool {
        let (Some(published), Some(st)) = (self.current.clone(), self.types.get_mut(url)) else {
            return true;
        };
        let nonce = stream.nonce();
        st.sent_version = Some(version.clone());
        st.nonce = Some(nonce.clone());
        st.dirty = false;
        st.pending_since = Some(self.since);
        st.sent_from = Some(published);
        let response = DiscoveryResponse {
            version_info: version.clone(),
            resources: items,
            type_url: url.to_owned(),
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
