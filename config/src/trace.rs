//! Distributed tracing (read at start): where spans go and how requests are sampled.
//!
//! ```yaml
//! tracing:
//!   collector: 127.0.0.1:4317   # an OpenTelemetry collector's OTLP/gRPC port (plaintext)
//!   sampling: 0.1               # head sampling of requests that arrive without a decision
//!   service_name: edge          # the spans' `service.name` (default `sluice`)
//! ```

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// OpenTelemetry tracing settings.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tracing {
    /// The OTLP/gRPC collector's address (plaintext, as a sidecar or node-local collector is
    /// reached).
    pub collector: SocketAddr,
    /// The fraction of requests without an incoming sampling decision (a `traceparent` or B3
    /// header) that are traced, from 0 to 1. A request that carries a decision keeps it.
    /// Default 1.
    #[serde(default = "default_sampling")]
    pub sampling: f64,
    /// The spans' `service.name` resource attribute. Default `sluice`.
    #[serde(default = "default_service_name")]
    pub service_name: String,
}

fn default_sampling() -> f64 {
    1.0
}

fn default_service_name() -> String {
    "sluice".into()
}

/// Checks the settings; errors carry the field under `tracing`.
pub(crate) fn check(t: &Tracing, out: &mut Vec<(String, String)>) {
    if !(0.0..=1.0).contains(&t.sampling) || t.sampling.is_nan() {
        out.push((
            "tracing.sampling".into(),
            "must be between 0 and 1 (a fraction: 0.1 traces one request in ten)".into(),
        ));
    }
    if t.service_name.is_empty() {
        out.push(("tracing.service_name".into(), "must not be empty".into()));
    }
}
