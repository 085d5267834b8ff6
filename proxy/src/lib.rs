//! sluice-proxy: the Sluice data plane.
//!
//! A request's path through the modules: [`listener`] accepts and detects the protocol →
//! `http::server` runs hyper with the listener's limits → `http::proxy` checks the request and
//! asks [`route`] (a pure function of the request head) which route takes it → the route's
//! action answers directly or picks a [`cluster`] and an endpoint ([`lb`]) → the cluster's
//! per-worker pool sends the request → the response streams back through `http::body`.
//! [`state`] holds the live config; [`app`] starts, reloads and drains.

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
pub mod cluster;
pub mod demo;
mod drain;
pub mod error;
pub mod http;
pub mod lb;
pub mod listener;
pub mod metrics;
pub mod route;
mod rt;
pub mod state;
mod tunnel;
mod worker;

pub use app::{BoundListener, Exit, Options, Proxy, ReloadError, Source, StartError};
pub use rt::LocalExec;
