//! sluice-config: Sluice's configuration model, shared by the proxy and the control plane.
//!
//! The resources map one-to-one onto Envoy's xDS v3 resources, with readable names:
//!
//! | Sluice | Envoy xDS v3 |
//! |---|---|
//! | [`Listener`] with `http` | `Listener` + one filter chain with an `HttpConnectionManager` (`rds.route_config_name` = `route_table`) |
//! | [`Listener`] with `tcp` | `Listener` + one filter chain with a `TcpProxy` (`cluster`) |
//! | [`Listener`] with `tcp.sni` ([`SniRoute`]) | `Listener` with the `tls_inspector` listener filter (`tls_inspector_timeout`: Envoy's listener filter timeout) and one filter chain per route (`filter_chain_match.server_names`, each a `TcpProxy`), `tcp.cluster` as the default filter chain |
//! | [`Listener`] `tls` ([`DownstreamTls`]) | the filter chain's `transport_socket` `DownstreamTlsContext` (`tls_certificates`, one filter chain per `server_names` set, `require_client_certificate`, `validation_context.trusted_ca`, `alpn_protocols`, `tls_params.tls_minimum_protocol_version`) and the HCM's `forward_client_cert_details` |
//! | [`Authorization`] (listener `http.authorization`, route `authorization`) | the RBAC HTTP filter with `principals` `authenticated.principal_name` (exact or prefix) |
//! | [`Cluster`] `tls` ([`UpstreamTls`]) | `Cluster.transport_socket` `UpstreamTlsContext` (`sni`, `validation_context.trusted_ca`, `match_typed_subject_alt_names`, `tls_certificates`); ALPN follows `protocol` |
//! | [`RouteTable`] | `RouteConfiguration` |
//! | [`VirtualHost`] | `VirtualHost` (`domains`, `routes`, `request_headers_to_add/remove`) |
//! | [`Route`] `cluster`/`weighted_clusters`/`rewrite`/`timeout` | `Route.route` (`RouteAction`: `cluster`, `weighted_clusters`, `prefix_rewrite`, `regex_rewrite`, `host_rewrite_literal`, `timeout`) |
//! | [`Route`] `redirect` / `direct_response` | `Route.redirect` / `Route.direct_response` |
//! | [`HealthCheck`] (`Cluster.health_checks`) | `Cluster.health_checks[0]` (`http_health_check`, `grpc_health_check`, `tcp_health_check`, `interval`, `timeout`, thresholds, `no_traffic_interval`; jitter as a ± percentage) |
//! | [`Route`] `fault` | `Route.typed_per_filter_config["envoy.filters.http.fault"]` (`HTTPFault`: `delay`, `abort`, header-controlled faults) |
//! | [`Cluster`] | `Cluster` (type EDS over ADS) + its `ClusterLoadAssignment` (`endpoints`); with [`Discovery`]: type STRICT_DNS or LOGICAL_DNS (`dns_srv` has no Envoy equivalent: STRICT_DNS with no endpoints, the SRV settings in Sluice metadata). The mapping itself is the `xds` module (feature `xds`); docs/architecture.md "xDS mapping" has the full table |
//! | [`Cluster`] `lb_policy`/`least_request`/`ring_hash`/`maglev`/`panic_threshold`/`locality` | `Cluster.lb_policy` (`peak_ewma`: Envoy's contrib `PeakEwma` policy), `least_request_lb_config`, `ring_hash_lb_config`, `maglev_lb_config`, `common_lb_config.healthy_panic_threshold`, `common_lb_config.zone_aware_lb_config`; `hash_balance_factor` is `common_lb_config.consistent_hashing_lb_config.hash_balance_factor` |
//! | [`Endpoint`] `zone` | the endpoint's `LocalityLbEndpoints.locality.zone` |
//! | [`Route`] `hash_policy` | `RouteAction.hash_policy` (`header`, `cookie`, `connection_properties.source_ip`, `query_parameter`, `terminal`) |
//! | [`Node`] | `Node` (`id`, `cluster`, `locality.zone`) |
//!
//! Files are YAML. Unknown fields are errors, and every error names the file, line, column and
//! field path. [`load_file`] and [`parse`] return a fully validated [`Config`].

mod access_log;
mod cluster;
mod discovery;
mod error;
mod fault;
mod health;
mod lb;
mod listener;
mod locate;
pub mod raw;
mod recover;
mod resilience;
mod resource;
mod route;
mod secret;
mod tls;
mod trace;
mod units;
mod validate;
#[cfg(feature = "xds")]
pub mod xds;

pub use access_log::{
    AccessLog, AccessLogFormat, ENVOY_DEFAULT_FORMAT, Operator as LogOperator, Piece as LogPiece,
    parse_template as parse_log_template,
};
pub use cluster::{Cluster, Endpoint, LbPolicy, PoolSettings, UpstreamProtocol};
pub use discovery::{AddressFamily, Discovery, DiscoveryType, DnsName};
pub use error::{ConfigError, ConfigErrors, Issue};
pub use fault::{Fault, FaultAbort, FaultDelay};
pub use health::{
    GrpcHealthCheck, HealthCheck, HealthCheckKind, HttpHealthCheck, StatusRange, TcpHealthCheck,
};
pub use lb::{
    CookieHash, HashOn, HashPolicy, LeastRequestSettings, LocalitySettings, MaglevSettings, Node,
    PeakEwmaSettings, RawHashPolicy, RingHashSettings, is_prime,
};
pub use listener::{
    EscapedSlashes, Http2Settings, HttpListener, Listener, ListenerKind, PathNormalization,
    SniRoute, TcpListener, Trust, UnderscoreAction,
};
pub use locate::{Position, PositionIndex};
pub use raw::{RawConfig, RawListener, RawRoute, RawRouteTable, RawVirtualHost};
pub use resilience::{
    BackOff, CircuitBreakers, OutlierDetection, RetryBudget, RetryOn, RetryPolicy, RouteBreakers,
};
pub use resource::{ClusterLoadAssignment, Resource, ResourceKey, ResourceType, Update, diff};
pub use route::{
    DEFAULT_ROUTE_TIMEOUT, DirectResponse, HeaderList, HeaderMatcher, HeaderMutation,
    QueryParameterMatcher, Redirect, RegexRewrite, Rewrite, Route, RouteAction, RouteMatch,
    RouteTable, VirtualHost, WeightedCluster,
};
pub use secret::{PrivateKeyPem, Secret, SecretKind};
pub use tls::{
    Authorization, CertificateFiles, ClientCertificate, DownstreamTls, ForwardClientCert,
    TlsVersion, UpstreamTls,
};
pub use trace::Tracing;
pub use units::{ByteSize, Cidr, Duration, parse_byte_size, parse_cidr, parse_duration};
pub use validate::{
    REGEX_SIZE_LIMIT, full_match_regex, search_regex, validate, validate_resource, validate_with,
};

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::Path;

/// A whole, validated Sluice proxy configuration: every "exactly one of" choice is an enum
/// here, so users of the model never re-check impossible states. The YAML shape is
/// [`RawConfig`]; [`parse`] validates it and builds this.
#[derive(Clone, Debug, PartialEq, Default, Deserialize, Serialize)]
#[serde(try_from = "RawConfig", into = "RawConfig")]
pub struct Config {
    /// The admin listener.
    pub admin: Admin,
    /// Listening sockets.
    pub listeners: Vec<Listener>,
    /// Route tables referenced by HTTP listeners.
    pub route_tables: Vec<RouteTable>,
    /// Upstream clusters referenced by routes and TCP listeners.
    pub clusters: Vec<Cluster>,
    /// Who this proxy is (read at start).
    pub node: Node,
    /// Distributed tracing (read at start).
    pub tracing: Option<Tracing>,
}

impl TryFrom<RawConfig> for Config {
    type Error = String;
    fn try_from(c: RawConfig) -> Result<Self, String> {
        Ok(Config {
            admin: c.admin,
            listeners: c
                .listeners
                .into_iter()
                .map(Listener::try_from)
                .collect::<Result<_, _>>()?,
            route_tables: c
                .route_tables
                .into_iter()
                .map(RouteTable::try_from)
                .collect::<Result<_, _>>()?,
            clusters: c.clusters,
            node: c.node,
            tracing: c.tracing,
        })
    }
}

impl From<Config> for RawConfig {
    fn from(c: Config) -> Self {
        RawConfig {
            admin: c.admin,
            listeners: c.listeners.into_iter().map(Into::into).collect(),
            route_tables: c.route_tables.into_iter().map(Into::into).collect(),
            clusters: c.clusters,
            node: c.node,
            tracing: c.tracing,
        }
    }
}

/// The admin listener (`/ready`, `/live`, `/metrics`, `/listeners`). It is unauthenticated:
/// keep it on loopback.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Address to bind. Default `127.0.0.1:7191`.
    #[serde(default = "default_admin_address")]
    pub address: SocketAddr,
    /// Allow a non-loopback `address`. The admin API has no authentication and serves the
    /// config and metrics, so a non-loopback address is refused unless this is `true` (and
    /// then warned about at load). Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_remote: bool,
    /// Most admin connections open at once; more are closed at accept. Default 32.
    #[serde(default = "default_admin_max_connections")]
    pub max_connections: u32,
    /// Time allowed for a request head, and between requests on a kept-alive connection.
    /// Default `10s`.
    #[serde(default = "default_admin_header_timeout")]
    pub request_header_timeout: Duration,
    /// The cardinality budget: most series of one metric family whose label values come from
    /// traffic or config (response codes and methods, gRPC statuses per cluster, routes).
    /// Label sets beyond it are counted under `other`, and
    /// `sluice_metric_series_folded_total{family}` counts each fold. Read at start. Default
    /// 5000.
    #[serde(default = "default_max_series_per_family")]
    pub max_series_per_family: u32,
}

fn default_max_series_per_family() -> u32 {
    5000
}

fn default_admin_max_connections() -> u32 {
    32
}

fn default_admin_header_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            address: default_admin_address(),
            allow_remote: false,
            max_connections: default_admin_max_connections(),
            request_header_timeout: default_admin_header_timeout(),
            max_series_per_family: default_max_series_per_family(),
        }
    }
}

fn default_admin_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7191))
}

impl Config {
    /// Risky settings this config asks for explicitly, one sentence each (logged at load and
    /// printed by `sluice validate`). Empty for a config on safe defaults.
    pub fn warnings(&self) -> Vec<String> {
        self.warning_issues()
            .into_iter()
            .map(|i| i.message)
            .collect()
    }

    /// [`Config::warnings`] with the field path each is about (for [`warning_lines`]).
    pub fn warning_issues(&self) -> Vec<Issue> {
        let mut w: Vec<Issue> = Vec::new();
        let mut at = |path: String, message: String| w.push(Issue { path, message });
        if self.listeners.is_empty() {
            at(
                "listeners".into(),
                "no listeners: this proxy serves only its admin API (unless an xDS server \
                 supplies listeners)"
                    .to_string(),
            );
        }
        for (t, table) in self.route_tables.iter().enumerate() {
            if table.virtual_hosts.is_empty() {
                at(
                    format!("route_tables[{t}]"),
                    format!(
                        "route_tables[{t}] (`{}`): no virtual hosts: every request gets 404",
                        table.name
                    ),
                );
            }
            for (v, vhost) in table.virtual_hosts.iter().enumerate() {
                if vhost.routes.is_empty() {
                    at(
                        format!("route_tables[{t}].virtual_hosts[{v}]"),
                        format!(
                            "route_tables[{t}].virtual_hosts[{v}] (`{}`): no routes: every request \
                         for its domains gets 404",
                            vhost.name
                        ),
                    );
                }
                let catch_all = vhost.routes.iter().position(|r| {
                    let m = &r.matcher;
                    matches!(m.prefix.as_deref(), Some("/") | Some(""))
                        && m.methods.is_empty()
                        && m.headers.is_empty()
                        && m.query_parameters.is_empty()
                });
                if let Some(c) = catch_all
                    && c + 1 < vhost.routes.len()
                {
                    let n = vhost.routes.len() - c - 1;
                    at(
                        format!("route_tables[{t}].virtual_hosts[{v}].routes[{}]", c + 1),
                        format!(
                            "route_tables[{t}].virtual_hosts[{v}].routes[{}]: never matches: \
                         routes[{c}] before it matches every request (prefix `/` and no other \
                         condition){}; move the catch-all last",
                            c + 1,
                            if n > 1 {
                                format!(", nor do the {} routes after it", n - 1)
                            } else {
                                String::new()
                            }
                        ),
                    );
                }
            }
        }
        if self.admin.allow_remote && !self.admin.address.ip().is_loopback() {
            at(
                "admin.address".into(),
                format!(
                    "admin.address {} is not loopback: the admin API is unauthenticated and serves \
                 the config and metrics to anyone who can reach it",
                    self.admin.address
                ),
            );
        }
        for (i, l) in self.listeners.iter().enumerate() {
            let ListenerKind::Http(h) = &l.kind else {
                continue;
            };
            let name = &l.name;
            let p = &h.path_normalization;
            let base = format!("listeners[{i}].http");
            if !p.normalize {
                at(
                    format!("{base}.path_normalization.normalize"),
                    format!(
                        "listener `{name}`: path_normalization.normalize is off: routes match the raw \
                     path, so `/public/../admin` and `%2e%2e` escapes can walk around prefix rules"
                    ),
                );
            } else if p.escaped_slashes == EscapedSlashes::Keep {
                at(
                    format!("{base}.path_normalization.escaped_slashes"),
                    format!(
                        "listener `{name}`: path_normalization.escaped_slashes is `keep`: an upstream \
                     that decodes `%2F` or treats `\\` as `/` may resolve a path no route saw"
                    ),
                );
            }
            if h.headers_with_underscores == UnderscoreAction::Allow {
                at(
                    format!("{base}.headers_with_underscores"),
                    format!(
                        "listener `{name}`: headers_with_underscores is `allow`: `x_internal` passes \
                     for `x-internal` at CGI-style upstreams"
                    ),
                );
            }
            if let Some(c) = h.trust.trusted_peers.iter().find(|c| c.len == 0) {
                at(
                    format!("{base}.trust.trusted_peers"),
                    format!(
                        "listener `{name}`: trust.trusted_peers contains {c}, which trusts every client"
                    ),
                );
            }
        }
        w
    }
}

/// `sluice validate`'s warning lines for `config`, read from `source`: `file:line:col:
/// warning: message`, in file order.
pub fn warning_lines(file: &str, source: &str, config: &Config) -> Vec<String> {
    let issues = config.warning_issues();
    if issues.is_empty() {
        return Vec::new();
    }
    ConfigErrors::from_issues(file, &PositionIndex::build(source), issues)
        .0
        .into_iter()
        .map(|e| match e.position {
            Some(p) => format!("{file}:{}:{}: warning: {}", p.line, p.column, e.message),
            None => format!("{file}: warning: {}", e.message),
        })
        .collect()
}

/// Reads, parses and validates a config file.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let name = path.display().to_string();
    let source = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::whole_file(&name, format!("cannot read file: {e}")))?;
    parse(&source, &name)
}

/// Parses and validates YAML text; `file` names it in errors.
pub fn parse(source: &str, file: &str) -> Result<Config, ConfigErrors> {
    parse_with(source, file, &ParseOptions::default())
}

/// How [`parse_with`] validates beyond the defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParseOptions {
    /// A cluster without `discovery` may list no endpoints (they come from elsewhere: the
    /// control plane's registry). A proxy's own file keeps the rule: an empty list there is a
    /// mistake.
    pub endpoints_optional: bool,
}

/// A serde_yaml_ng error on `source` as Sluice words config errors: the YAML syntax cause, or
/// the field and a "did you mean" / accepted-forms hint, without Rust type names. For other
/// YAML files Sluice reads (the control plane's settings).
pub fn yaml_error(file: &str, source: &str, err: &serde_yaml_ng::Error) -> ConfigError {
    let syntax = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(source).is_err();
    let mut errors = ConfigErrors::from_yaml(file, source, err, syntax).0;
    errors.remove(0)
}

/// [`parse`] with options.
pub fn parse_with(
    source: &str,
    file: &str,
    options: &ParseOptions,
) -> Result<Config, ConfigErrors> {
    if source.trim().is_empty() {
        return Err(ConfigErrors::whole_file(file, "file is empty"));
    }
    let (raw, mut issues, patched) = match serde_yaml_ng::from_str::<RawConfig>(source) {
        Ok(raw) => (Some(raw), Vec::new(), Vec::new()),
        Err(first) => {
            // Read the whole document as YAML: a syntax error stops here (nothing after it
            // can be interpreted); otherwise collect every deserialisation error.
            let mut value: serde_yaml_ng::Value = match serde_yaml_ng::from_str(source) {
                Ok(v) => v,
                Err(e) => return Err(ConfigErrors::from_yaml(file, source, &e, true)),
            };
            if value.apply_merge().is_err() {
                return Err(ConfigErrors::from_yaml(file, source, &first, false));
            }
            let r = recover::recover(value);
            if r.errors.is_empty() {
                return Err(ConfigErrors::from_yaml(file, source, &first, false));
            }
            (r.raw, r.errors, r.patched)
        }
    };
    if let Some(raw) = &raw {
        // A placeholder's own problems are not the user's: skip issues at or around it.
        let related = |path: &str| {
            patched
                .iter()
                .any(|p| recover::within(path, p) || recover::within(p, path))
        };
        issues.extend(
            validate::validate_with(raw, options)
                .into_iter()
                .filter(|i| !related(&i.path)),
        );
    }
    match raw {
        Some(raw) if issues.is_empty() => {
            // Validation checked every "exactly one of", so this cannot fail; if it did, say so.
            Config::try_from(raw).map_err(|e| ConfigErrors::whole_file(file, e))
        }
        // Positions are looked up only for a file with problems: a valid one (every reload)
        // does not pay for the second parse.
        _ => Err(ConfigErrors::from_issues(
            file,
            &PositionIndex::build(source),
            issues,
        )),
    }
}

#[cfg(test)]
mod tests;
