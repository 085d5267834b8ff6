//! The proxy's identity ([`crate::Node`]) ↔ Envoy's `Node` (sent in every discovery request).

use envoy_types::pb::envoy::config::core::v3::{self as core, Locality, node};

/// The user agent Sluice reports in `Node.user_agent_name`.
pub const USER_AGENT: &str = "sluice";

/// The proxy's node as Envoy's `Node`: `id`, `cluster`, `locality.zone`, and Sluice as the
/// user agent (`user_agent_version` is the crate version).
pub fn encode_node(n: &crate::Node) -> core::Node {
    core::Node {
        id: n.id.clone().unwrap_or_default(),
        cluster: n.cluster.clone().unwrap_or_default(),
        locality: n.zone.as_ref().map(|z| Locality {
            zone: z.clone(),
            ..Locality::default()
        }),
        user_agent_name: USER_AGENT.into(),
        user_agent_version_type: Some(node::UserAgentVersionType::UserAgentVersion(
            env!("CARGO_PKG_VERSION").into(),
        )),
        ..core::Node::default()
    }
}

/// A client's `Node` as the model's (what a control plane selects resources by); empty strings
/// are unset.
pub fn decode_node(n: &core::Node) -> crate::Node {
    let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
    crate::Node {
        id: some(&n.id),
        cluster: some(&n.cluster),
        zone: n.locality.as_ref().and_then(|l| some(&l.zone)),
    }
}
