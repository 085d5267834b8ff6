//! sluice-proxy: the Sluice data plane.
//!
//! A request's path through the modules: [`listener`] accepts and detects the protocol →
//! `http::server` runs hyper with the listener's limits → `http::forward` plans the request
//! (checks, [`route`] — a pure function of the request head — and the upstream request) → the
//! route's action answers directly or calls its [`cluster`] (`cluster::call`: pick an endpoint
//! with [`lb`], admit, pool, send, classify) → `http::finish` turns the upstream response
//! into the downstream one, whose body streams back through `http::body`.
//! Config arrives from a [`source`] as resource updates; [`state`]'s one writer applies them;
//! [`app`] starts, reloads and drains.

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

pub mod admin;
pub mod app;
pub mod breaker;
mod clock;
pub mod cluster;
#[cfg(feature = "demo")]
pub mod demo;
mod drain;
pub mod endpoint;
pub mod error;
mod exec;
pub mod explain;
mod health;
pub mod http;
pub mod latency;
pub mod lb;
pub mod listener;
mod local;
mod log_limit;
mod message;
pub mod metrics;
pub mod otel;
pub mod outlier;
mod process_metrics;
pub mod route;
pub mod source;
pub mod state;
pub mod tls;
mod tunnel;
mod worker;

pub use app::{Exit, LogLevelHook, Options, Proxy, ReloadError, StartError};
pub use exec::LocalExec;
pub use listener::BoundListener;
pub use source::Source;
pub use source::xds::XdsOptions;
