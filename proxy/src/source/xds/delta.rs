//! Incremental (delta) xDS: the messages of `DeltaAggregatedResources`, built from and read into
//! the same [`AdsState`] as state of the world.
//!
//! - The first request of a type on a stream carries its subscription: no names for CDS and
//!   LDS (the wildcard, as Envoy sends it), the EDS / RDS names otherwise, and in
//!   `initial_resource_versions` the version of every resource of the type xDS holds, so the
//!   server sends only what changed. The node goes on the stream's first request only.
//! - A response carries only changed resources (with their versions) and the names removed:
//!   one update of upserts and removals, through the same decode, checks and writer as state
//!   of the world. A removed name that is subscribed counts as received (warming).
//! - ACK: `response_nonce` alone; NACK: with `error_detail` (code 3, the same message).
//! - EDS / RDS names come and go with `resource_names_subscribe` / `_unsubscribe`.

use super::Decode;
use super::state::{
    AdsState, Change, Wire, decode_checked, nack_status, removal, type_url, wildcard,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use sluice_config::{Resource, ResourceKey, ResourceType, Update};
use std::collections::BTreeMap;

/// Delta: `DeltaDiscoveryRequest` / `DeltaDiscoveryResponse`.
#[derive(Debug)]
pub(crate) struct Delta;

impl Wire for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;

    fn head(response: &DeltaDiscoveryResponse) -> [&str; 3] {
        [
            &response.type_url,
            &response.nonce,
            &response.system_version_info,
        ]
    }

    fn update(
        state: &mut AdsState,
        kind: ResourceType,
        response: &DeltaDiscoveryResponse,
        decode: Decode,
    ) -> Result<(Update, BTreeMap<String, String>), String> {
        // A resource without a body names one the server does not have: nothing to apply.
        let bodies = response
            .resources
            .iter()
            .filter_map(|r| r.resource.as_ref().map(|any| (any, r.version.as_str())));
        let decoded = decode_checked(kind, &response.type_url, bodies, decode)?;
        let versions = decoded
            .iter()
            .map(|(r, v)| (r.name().to_string(), (*v).to_string()))
            .collect();
        let mut upserts: Vec<Resource> = decoded.into_iter().map(|(r, _)| r).collect();
        state.keep_subscribed(kind, &mut upserts);
        let t = state.ty(kind);
        let mut removals: Vec<ResourceKey> = Vec::new();
        for name in &response.removed_resources {
            if t.held.contains_key(name) {
                removal(kind, name, &mut removals);
            }
            if t.names.contains(name) {
                t.seen.insert(name.clone());
            }
        }
        Ok((Update { upserts, removals }, versions))
    }

    fn answer(
        state: &mut AdsState,
        kind: ResourceType,
        error: Option<String>,
    ) -> DeltaDiscoveryRequest {
        let node = state.take_node();
        DeltaDiscoveryRequest {
            node,
            type_url: type_url(kind).into(),
            response_nonce: state.ty(kind).nonce.clone(),
            error_detail: error.map(nack_status),
            ..DeltaDiscoveryRequest::default()
        }
    }

    fn refuse(type_url: &str, nonce: &str, why: String) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: type_url.into(),
            response_nonce: nonce.into(),
            error_detail: Some(nack_status(why)),
            ..DeltaDiscoveryRequest::default()
        }
    }

    fn change(state: &mut AdsState, change: &Change) -> DeltaDiscoveryRequest {
        if !state.ty(change.kind).requested {
            // The type's first request on this stream subscribes its whole set.
            return Self::hello(state, change.kind);
        }
        let node = state.take_node();
        DeltaDiscoveryRequest {
            node,
            type_url: type_url(change.kind).into(),
            resource_names_subscribe: change.added.clone(),
            resource_names_unsubscribe: change.removed.clone(),
            ..DeltaDiscoveryRequest::default()
        }
    }

    fn hello(state: &mut AdsState, kind: ResourceType) -> DeltaDiscoveryRequest {
        let node = state.take_node();
        let t = state.ty(kind);
        t.requested = true;
        DeltaDiscoveryRequest {
            node,
            type_url: type_url(kind).into(),
            resource_names_subscribe: if wildcard(kind) {
                Vec::new()
            } else {
                t.names.iter().cloned().collect()
            },
            initial_resource_versions: t
                .held
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect(),
            ..DeltaDiscoveryRequest::default()
        }
    }
}
