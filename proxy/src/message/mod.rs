//! HTTP message pieces both sides of the proxy use: the request body sent upstream (with the
//! note of how the downstream body failed), trailer read-ahead for HTTP/1.1 peers, and the
//! field-value rules of RFC 9113. A leaf module: `http` (downstream) and `cluster` (upstream)
//! both build on it, neither through the other.

pub(crate) mod fields;
pub(crate) mod grpc_web;
pub(crate) mod replay;
pub(crate) mod reqbody;
pub(crate) mod trailers;
