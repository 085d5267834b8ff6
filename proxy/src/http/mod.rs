//! The HTTP layer: hyper server connections (HTTP/1.1 and HTTP/2 on one port), header
//! normalisation, upgrades, the request path ([`proxy`]) and `respond.rs`, the one place an
//! error becomes a response.

pub mod body;
pub(crate) mod chunked;
pub(crate) mod conn;
pub(crate) mod fields;
pub(crate) mod headers;
pub(crate) mod proxy;
pub(crate) mod reqbody;
pub(crate) mod respond;
pub(crate) mod server;
pub(crate) mod smuggle;
pub(crate) mod trailers;
pub(crate) mod upgrade;
