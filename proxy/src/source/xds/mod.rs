//! The xDS source: an ADS (Aggregated Discovery Service) client speaking Envoy's xDS v3,
//! state of the world or incremental (delta, [`XdsOptions::delta`]), over one gRPC stream
//! (tonic). It is a second config source beside the
//! file: each response is decoded into model resources, turned into one `Update` and applied
//! by the control loop through the state's one writer as [`crate::state::Origin::Xds`]; the
//! writer's per-resource results become the ACK (`version_info` = the response's version) or
//! the NACK (`version_info` = the last good version, `error_detail` naming every rejected
//! resource).
//!
//! - [`state`]: the protocol state, pure (per type: last good version, nonce, subscribed and
//!   held names; what to subscribe to next; when the first config is complete).
//! - [`delta`]: the incremental flavour's messages over the same state.
//! - [`client`]: the task: connect, send subscriptions, answer responses, reconnect with
//!   jittered exponential backoff, readiness and its initial-fetch timeout.
//!
//! Decoding Envoy protos into the model is not done here: whoever starts the client passes a
//! [`Decode`] function (the binary passes `sluice_config::xds::decode`).

mod client;
mod delta;
mod state;
#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod tests_delta;
mod transport;

pub(crate) use client::{XdsEvent, run};

pub use envoy_types::pb::google::protobuf::Any;

use sluice_config::Resource;
use std::time::Duration;

/// Decodes the resources in one `Any` of a response of `type_url` into model resources; an
/// error (a message naming what is wrong) NACKs the whole response.
pub type Decode = fn(&str, &Any) -> Result<Vec<Resource>, String>;

/// Type URL of `envoy.config.cluster.v3.Cluster` (CDS).
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// Type URL of `envoy.config.endpoint.v3.ClusterLoadAssignment` (EDS).
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// Type URL of `envoy.config.listener.v3.Listener` (LDS).
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// Type URL of `envoy.config.route.v3.RouteConfiguration` (RDS).
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// Type URL of `envoy.extensions.transport_sockets.tls.v3.Secret` (SDS).
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// How to reach the xDS server and who this proxy is.
#[derive(Clone, Debug)]
pub struct XdsOptions {
    /// The ADS server, as a URI (`http://127.0.0.1:18000`).
    pub server: String,
    /// `node.id`, sent on the first request of each stream.
    pub node_id: String,
    /// `node.cluster` (may be empty).
    pub cluster: String,
    /// How long to wait for the first complete config before reporting ready anyway.
    pub initial_fetch_timeout: Duration,
    /// The first reconnection delay's upper bound (full jitter), doubling per failure.
    pub backoff_base: Duration,
    /// The largest reconnection delay.
    pub backoff_max: Duration,
    /// Envoy proto → model resources.
    pub decode: Decode,
    /// Incremental (delta) xDS (`DeltaAggregatedResources`) instead of state of the world.
    pub delta: bool,
    /// The bootstrap token proving which identity this proxy may have, sent on every stream as
    /// `authorization: Bearer TOKEN` (the control plane issues its certificates only then).
    pub token: Option<String>,
    /// For an `https://` server: the PEM bundle its certificate must chain to (default: the
    /// system bundle).
    pub ca: Option<std::path::PathBuf>,
}

impl XdsOptions {
    /// Options with the defaults: initial-fetch timeout 15 s, backoff 500 ms → 30 s.
    pub fn new(server: impl Into<String>, node_id: impl Into<String>, decode: Decode) -> Self {
        XdsOptions {
            server: server.into(),
            node_id: node_id.into(),
            cluster: String::new(),
            initial_fetch_timeout: Duration::from_secs(15),
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            decode,
            delta: false,
            token: None,
            ca: None,
        }
    }
}
