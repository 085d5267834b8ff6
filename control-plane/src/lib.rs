//! sluice-control-plane: will serve Sluice's resource model (see `sluice-config`) to proxies
//! over Envoy's xDS v3 protocol. Nothing is implemented yet; the crate exists so the workspace
//! has its final shape and the proxy and control plane share one config model from the start.

// Nothing a peer or a config file controls may panic the data plane (tests may).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

/// The config model the control plane serves.
pub use sluice_config as config;

pub mod api;
pub mod run;
pub mod settings;
pub mod source;
