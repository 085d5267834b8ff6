//! sluice-control-plane: will serve Sluice's resource model (see `sluice-config`) to proxies
//! over Envoy's xDS v3 protocol. Nothing is implemented yet; the crate exists so the workspace
//! has its final shape and the proxy and control plane share one config model from the start.

/// The config model the control plane serves.
pub use sluice_config as config;
