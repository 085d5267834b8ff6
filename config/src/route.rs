//! Route tables: virtual hosts chosen by `Host`, routes matched in order, and what each route
//! does (Envoy `RouteConfiguration` → `VirtualHost` → `Route`).

use crate::raw::{RawRoute, RawRouteTable, RawVirtualHost};
use crate::resilience::{RetryPolicy, RouteBreakers};
use crate::units::Duration;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;

/// A named set of virtual hosts (Envoy `RouteConfiguration`). The YAML shape is
/// [`RawRouteTable`](crate::raw::RawRouteTable).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(try_from = "RawRouteTable", into = "RawRouteTable")]
pub struct RouteTable {
    /// Unique name, referenced by HTTP listeners.
    pub name: String,
    /// Virtual hosts; a request goes to the one whose `domains` best match its host.
    pub virtual_hosts: Vec<VirtualHost>,
}

/// A group of routes for a set of host names (see
/// [`RawVirtualHost`](crate::raw::RawVirtualHost) for the fields' meaning).
#[derive(Clone, Debug, PartialEq)]
pub struct VirtualHost {
    /// Name, unique within the route table.
    pub name: String,
    /// Host names served.
    pub domains: Vec<String>,
    /// Routes, tried in order; the first match wins.
    pub routes: Vec<Route>,
    /// Header changes on requests (applied before the route's).
    pub request_headers: HeaderMutation,
    /// Header changes on responses (applied before the route's).
    pub response_headers: HeaderMutation,
}

/// A match and exactly one action (see [`RawRoute`](crate::raw::RawRoute) for the YAML).
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    /// Optional name, used in logs and metrics.
    pub name: Option<String>,
    /// Which requests this route takes.
    pub matcher: RouteMatch,
    /// What it does with them.
    pub action: RouteAction,
    /// Rewrite the path or host before forwarding (forwarding actions only).
    pub rewrite: Option<Rewrite>,
    /// Time allowed until the upstream's response headers; `None`: the default.
    pub timeout: Option<Duration>,
    /// When requests are tried again; `None`: the default policy.
    pub retry_policy: Option<RetryPolicy>,
    /// The route's own circuit breakers.
    pub circuit_breakers: Option<RouteBreakers>,
    /// Header changes on requests taking this route (applied after the virtual host's).
    pub request_headers: HeaderMutation,
    /// Header changes on responses (applied after the virtual host's).
    pub response_headers: HeaderMutation,
    /// Fault injection (delays and aborts).
    pub fault: Option<crate::fault::Fault>,
    /// gRPC-Web for this route (overrides the listener's `grpc_web`).
    pub grpc_web: Option<bool>,
    /// How a request hash is computed for hash-based balancers (Envoy `hash_policy`).
    pub hash_policy: Vec<crate::lb::HashPolicy>,
    /// Who may use this route, by verified client SPIFFE ID.
    pub authorization: crate::tls::Authorization,
}

/// What a route does: exactly one of these.
#[derive(Clone, Debug, PartialEq)]
pub enum RouteAction {
    /// Forward to this cluster.
    Cluster(String),
    /// Split traffic across clusters in proportion to their weights.
    WeightedClusters(Vec<WeightedCluster>),
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Answer directly with a fixed status and body.
    DirectResponse(DirectResponse),
}

impl TryFrom<RawRouteTable> for RouteTable {
    type Error = String;
    fn try_from(t: RawRouteTable) -> Result<Self, String> {
        Ok(RouteTable {
            name: t.name,
            virtual_hosts: t
                .virtual_hosts
                .into_iter()
                .map(VirtualHost::try_from)
                .collect::<Result<_, _>>()?,
        })
    }
}

impl From<RouteTable> for RawRouteTable {
    fn from(t: RouteTable) -> Self {
        RawRouteTable {
            name: t.name,
            virtual_hosts: t.virtual_hosts.into_iter().map(Into::into).collect(),
        }
    }
}

impl TryFrom<RawVirtualHost> for VirtualHost {
    type Error = String;
    fn try_from(v: RawVirtualHost) -> Result<Self, String> {
        Ok(VirtualHost {
            name: v.name,
            domains: v.domains,
            routes: v
                .routes
                .into_iter()
                .map(Route::try_from)
                .collect::<Result<_, _>>()?,
            request_headers: v.request_headers,
            response_headers: v.response_headers,
        })
    }
}

impl From<VirtualHost> for RawVirtualHost {
    fn from(v: VirtualHost) -> Self {
        RawVirtualHost {
            name: v.name,
            domains: v.domains,
            routes: v.routes.into_iter().map(Into::into).collect(),
            request_headers: v.request_headers,
            response_headers: v.response_headers,
        }
    }
}

impl TryFrom<RawRoute> for Route {
    type Error = String;
    fn try_from(r: RawRoute) -> Result<Self, String> {
        let action = match (
            r.cluster,
            r.weighted_clusters,
            r.redirect,
            r.direct_response,
        ) {
            (Some(c), None, None, None) => RouteAction::Cluster(c),
            (None, Some(w), None, None) => RouteAction::WeightedClusters(w),
            (None, None, Some(rd), None) => RouteAction::Redirect(rd),
            (None, None, None, Some(d)) => RouteAction::DirectResponse(d),
            _ => {
                return Err(
                    "set exactly one of `cluster`, `weighted_clusters`, `redirect`, \
                            `direct_response`"
                        .into(),
                );
            }
        };
        Ok(Route {
            name: r.name,
            matcher: r.matcher,
            action,
            rewrite: r.rewrite,
            timeout: r.timeout,
            retry_policy: r.retry_policy,
            circuit_breakers: r.circuit_breakers,
            request_headers: r.request_headers,
            response_headers: r.response_headers,
            fault: r.fault,
            grpc_web: r.grpc_web,
            hash_policy: r
                .hash_policy
                .into_iter()
                .map(TryFrom::try_from)
                .collect::<Result<_, _>>()?,
            authorization: r.authorization,
        })
    }
}

impl From<Route> for RawRoute {
    fn from(r: Route) -> Self {
        let mut raw = RawRoute {
            name: r.name,
            matcher: r.matcher,
            cluster: None,
            weighted_clusters: None,
            redirect: None,
            direct_response: None,
            rewrite: r.rewrite,
            timeout: r.timeout,
            retry_policy: r.retry_policy,
            circuit_breakers: r.circuit_breakers,
            request_headers: r.request_headers,
            response_headers: r.response_headers,
            fault: r.fault,
            grpc_web: r.grpc_web,
            hash_policy: r.hash_policy.into_iter().map(Into::into).collect(),
            authorization: r.authorization,
        };
        match r.action {
            RouteAction::Cluster(c) => raw.cluster = Some(c),
            RouteAction::WeightedClusters(w) => raw.weighted_clusters = Some(w),
            RouteAction::Redirect(rd) => raw.redirect = Some(rd),
            RouteAction::DirectResponse(d) => raw.direct_response = Some(d),
        }
        raw
    }
}

/// The default route timeout.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

/// Conditions a request must meet, all of them. Exactly one of `prefix`, `path_prefix`, `path`,
/// `regex`. Paths are matched after normalization (see the listener's `path_normalization`).
#[derive(Clone, Debug, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// The path (without query) starts with this string; must start with `/`. A string prefix:
    /// `/api` also matches `/apix`; use `path_prefix` for whole segments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The path is this or continues below it with `/`: `/api` matches `/api` and `/api/x`, not
    /// `/apix` (Envoy `path_separated_prefix`). Must start with `/`; a trailing `/` is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// The path (without query) equals this; must start with `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The whole path (without query) matches this regular expression (Rust `regex` syntax).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// The method is one of these (e.g. `[GET, HEAD]`). Empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Header conditions, all of which must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatcher>,
    /// Query parameter conditions, all of which must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_parameters: Vec<QueryParameterMatcher>,
}

/// A condition on one request header. Exactly one of `exact`, `prefix`, `suffix`, `regex`,
/// `present`. With several values of the header, they are joined with `,` before matching.
#[derive(Clone, Debug, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatcher {
    /// Header name (case-insensitive).
    pub name: String,
    /// The value equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// The value starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The value ends with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    /// The whole value matches this regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// `true`: the header is present; `false`: the header is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
    /// Invert the result.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invert: bool,
}

/// A condition on one query parameter (by its first occurrence, after percent-decoding).
/// Exactly one of `exact`, `prefix`, `regex`, `present`.
#[derive(Clone, Debug, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QueryParameterMatcher {
    /// Parameter name (case-sensitive).
    pub name: String,
    /// The value equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// The value starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The whole value matches this regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// `true`: the parameter is present; `false`: it is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
}

/// One backend of a traffic split.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedCluster {
    /// Cluster name.
    pub cluster: String,
    /// Relative share of requests (0 takes none).
    pub weight: u32,
}

/// A redirect answer (Envoy `RedirectAction`). Unset parts keep the request's value.
#[derive(Clone, Debug, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    /// `http` or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// New host (without port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// New port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Replace the whole path (must start with `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Replace the matched prefix (route must match by `prefix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
    /// 301, 302, 303, 307 or 308. Default 301.
    #[serde(default = "default_redirect_code")]
    pub code: u16,
    /// Drop the query string. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strip_query: bool,
}

fn default_redirect_code() -> u16 {
    301
}

/// A fixed answer.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponse {
    /// Status code, 200–599.
    pub status: u16,
    /// Body (sent as `text/plain` unless `response_headers` sets a content type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// Changes to the request before forwarding.
#[derive(Clone, Debug, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    /// Replace the prefix matched by `match.prefix` with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Replace every match of `pattern` in the path with `substitution` (`$1` for groups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<RegexRewrite>,
    /// Replace the `Host` header / `:authority`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// A regex substitution on the path.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegexRewrite {
    /// Regular expression.
    pub pattern: String,
    /// Replacement, `$1`/`${name}` refer to groups.
    pub substitution: String,
}

/// Header changes: `add` appends a value, `set` replaces all values, `remove` deletes.
/// Applied in the order remove, set, add.
#[derive(Clone, Debug, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMutation {
    /// Headers to append, `name: value`.
    #[serde(default, skip_serializing_if = "HeaderList::is_empty")]
    pub add: HeaderList,
    /// Headers to set (replacing existing values), `name: value`.
    #[serde(default, skip_serializing_if = "HeaderList::is_empty")]
    pub set: HeaderList,
    /// Header names to remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderMutation {
    /// True when it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.set.is_empty() && self.remove.is_empty()
    }
}

/// An ordered `name: value` map (order and repeats are kept).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct HeaderList(pub Vec<(String, String)>);

impl HeaderList {
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de> Deserialize<'de> for HeaderList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = HeaderList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of header names to values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HeaderList, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, String>()? {
                    out.push((k, v));
                }
                Ok(HeaderList(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl Serialize for HeaderList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}
