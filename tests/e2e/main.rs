//! End-to-end tests: the proxy in process and as the real binary, against real upstreams
//! (the bundled echo apps), driven by real clients (curl, nghttp, hyper, h2, tungstenite).
//! Everything binds 127.0.0.1 port 0. See tests/README.md.

// These tests time a separate process, so they use the wall clock; helpers are `pub` for use
// across the test modules.
#![allow(clippy::disallowed_types, unreachable_pub)]

mod access_log;
mod balance;
mod conformance;
mod connection;
mod deadline;
mod dns;
mod docs;
mod edge;
mod fault;
mod filters;
mod grpc;
mod health;
mod lifecycle;
mod limits;
mod passthrough;
mod prometheus;
mod reload;
mod resilience;
mod resources;
mod routing;
mod stream;
mod support;
mod tls;
mod tracing;
mod translate;
mod upgrade_tcp;
mod xds;
