//! The HTTP layer: hyper server connections (HTTP/1.1 and HTTP/2 on one port), header
//! normalisation, upgrades, the request path ([`forward`]: plan → call → finish) and
//! `respond.rs`, the one place an error becomes a response.

mod authority;
pub mod body;
pub(crate) mod chunked;
pub(crate) mod conn;
mod context;
mod decide;
pub mod edge;
pub mod filters;
mod finish;
pub(crate) mod forward;
mod frames;
mod grpc;
pub(crate) mod headers;
pub(crate) mod normalize;
pub(crate) mod respond;
pub(crate) mod server;
pub(crate) mod smuggle;
mod spec;
pub(crate) mod stream;
pub(crate) mod upgrade;

pub use context::{ConnContext, TlsInfo};
pub(crate) use forward::HttpConn;
pub(crate) use spec::CurrentSpec;
pub use spec::{HttpSpec, Telemetry};
