//! The YAML shape of the config, as written: "exactly one of" choices are separate optional
//! fields here, so that validation can report every problem with its field path. [`crate::parse`]
//! validates a [`RawConfig`] and turns it into the model ([`crate::Config`]), where those
//! choices are enums.

use crate::Admin;
use crate::cluster::Cluster;
use crate::listener::{HttpListener, TcpListener};
use crate::resilience::{RetryPolicy, RouteBreakers};
use crate::route::{
    DirectResponse, HeaderMutation, Redirect, Rewrite, RouteMatch, WeightedCluster,
};
use crate::units::Duration;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// A whole Sluice proxy configuration.
#[derive(Clone, Debug, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// The admin listener.
    #[serde(default)]
    pub admin: Admin,
    /// Listening sockets.
    #[serde(default)]
    pub listeners: Vec<RawListener>,
    /// Route tables referenced by HTTP listeners.
    #[serde(default)]
    pub route_tables: Vec<RawRouteTable>,
    /// Upstream clusters referenced by routes and TCP listeners.
    #[serde(default)]
    pub clusters: Vec<Cluster>,
    /// Who this proxy is (its zone, for locality preference).
    #[serde(default, skip_serializing_if = "crate::lb::Node::is_empty")]
    pub node: crate::lb::Node,
    /// Distributed tracing (read at start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<crate::Tracing>,
}

/// A listening socket. Exactly one of `http` or `tcp` is set.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    /// Unique name, used in logs, metrics and the admin API.
    pub name: String,
    /// Address and port to bind, e.g. `0.0.0.0:8080` or `[::]:8080`. Port 0 picks a free port
    /// (the admin API's `/listeners` shows which).
    pub address: SocketAddr,
    /// Serve HTTP/1.1 and HTTP/2 (h2c by prior knowledge) and route requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpListener>,
    /// Proxy raw TCP bytes to a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpListener>,
    /// Terminate TLS in front of the HTTP server (see [`crate::DownstreamTls`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::tls::DownstreamTls>,
}

/// A named set of virtual hosts (Envoy `RouteConfiguration`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteTable {
    /// Unique name, referenced by HTTP listeners.
    pub name: String,
    /// Virtual hosts; a request goes to the one whose `domains` best match its host.
    pub virtual_hosts: Vec<RawVirtualHost>,
}

/// A group of routes for a set of host names.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawVirtualHost {
    /// Name, unique within the route table.
    pub name: String,
    /// Host names served: exact (`api.example.com`), suffix wildcard (`*.example.com`), prefix
    /// wildcard (`api.*`) or `*` for any. Matching is case-insensitive and ignores the port
    /// unless the pattern has one. Exact beats suffix beats prefix beats `*`; among wildcards the
    /// longest pattern wins.
    pub domains: Vec<String>,
    /// Routes, tried in order; the first match wins.
    pub routes: Vec<RawRoute>,
    /// Header changes on requests routed through this virtual host (applied before the route's).
    #[serde(default, skip_serializing_if = "HeaderMutation::is_empty")]
    pub request_headers: HeaderMutation,
    /// Header changes on responses (applied before the route's).
    #[serde(default, skip_serializing_if = "HeaderMutation::is_empty")]
    pub response_headers: HeaderMutation,
}

/// A match and an action. Exactly one of `cluster`, `weighted_clusters`, `redirect` or
/// `direct_response` is set.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Optional name, used in logs and metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Which requests this route takes.
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
    /// Forward to this cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Split traffic across clusters in proportion to their weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weighted_clusters: Option<Vec<WeightedCluster>>,
    /// Answer with a redirect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    /// Answer directly with a fixed status and body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<DirectResponse>,
    /// Rewrite the path or host before forwarding (only with `cluster`/`weighted_clusters`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
    /// Time allowed from forwarding the request until the upstream's response headers arrive;
    /// on expiry (checked every 20ms) the client gets 504. `0s` disables. Default `15s`
    /// (Envoy's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// When requests are tried again; unset: the default policy (connect failures and refused
    /// streams, twice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<RetryPolicy>,
    /// The route's own circuit breakers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breakers: Option<RouteBreakers>,
    /// Header changes on requests taking this route (applied after the virtual host's).
    #[serde(default, skip_serializing_if = "HeaderMutation::is_empty")]
    pub request_headers: HeaderMutation,
    /// Header changes on responses (applied after the virtual host's).
    #[serde(default, skip_serializing_if = "HeaderMutation::is_empty")]
    pub response_headers: HeaderMutation,
    /// Fault injection: delays and aborts (forwarding routes only). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<crate::fault::Fault>,
    /// gRPC-Web for this route: `true` or `false` overrides the listener's `grpc_web`.
    /// Default: the listener's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_web: Option<bool>,
    /// How a request hash is computed for `ring_hash` and `maglev` clusters (Envoy
    /// `hash_policy`): each item hashes one of `header: NAME`, `cookie: { name: NAME }`,
    /// `source_ip: true` or `query_parameter: NAME`, with optional `terminal: true`. The hashes
    /// of the items that apply are combined in order; a terminal item that produced a hash (or
    /// follows one that did) ends the list. No hash: the balancer picks at random.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hash_policy: Vec<crate::lb::RawHashPolicy>,
    /// Who may use this route, by verified client SPIFFE ID (checked after the listener's own
    /// `authorization`); denied requests get 403 (gRPC: `PERMISSION_DENIED`).
    #[serde(default, skip_serializing_if = "crate::tls::Authorization::is_empty")]
    pub authorization: crate::tls::Authorization,
}
