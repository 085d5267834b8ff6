//! Route tables: virtual hosts chosen by `Host`, routes matched in order, and what each route
//! does (Envoy `RouteConfiguration` → `VirtualHost` → `Route`).

use crate::units::Duration;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;

/// A named set of virtual hosts (Envoy `RouteConfiguration`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteTable {
    /// Unique name, referenced by HTTP listeners.
    pub name: String,
    /// Virtual hosts; a request goes to the one whose `domains` best match its host.
    pub virtual_hosts: Vec<VirtualHost>,
}

/// A group of routes for a set of host names.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualHost {
    /// Name, unique within the route table.
    pub name: String,
    /// Host names served: exact (`api.example.com`), suffix wildcard (`*.example.com`), prefix
    /// wildcard (`api.*`) or `*` for any. Matching is case-insensitive and ignores the port
    /// unless the pattern has one. Exact beats suffix beats prefix beats `*`; among wildcards the
    /// longest pattern wins.
    pub domains: Vec<String>,
    /// Routes, tried in order; the first match wins.
    pub routes: Vec<Route>,
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
pub struct Route {
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
    /// Header changes on requests taking this route (applied after the virtual host's).
    #[serde(default, skip_serializing_if = "HeaderMutation::is_empty")]
    pub request_headers: HeaderMutation,
    /// Header changes on responses (applied after the virtual host's).
    #[serde(default, skip_serializing_if = "HeaderMutation::is_empty")]
    pub response_headers: HeaderMutation,
}

/// The default route timeout.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

/// Conditions a request must meet, all of them. Exactly one of `prefix`, `path`, `regex`.
#[derive(Clone, Debug, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// The path (without query) starts with this; must start with `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
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
