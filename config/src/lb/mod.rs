//! Load-balancing settings: the per-cluster balancer options (peak EWMA, least request, ring
//! hash, Maglev),
//! the panic threshold and locality preference, endpoint zones, the proxy's own `node` (its
//! zone), and the per-route hash policies that feed the hash-based balancers (Envoy's
//! `hash_policy`). Their validation is here ([`check_cluster`], [`check_hash_policies`],
//! [`check_node`], [`check_endpoint_zone`]), each called by one line of `validate.rs`.

use crate::error::Issue;
use crate::units::Duration;
use serde::{Deserialize, Serialize};

/// Peak-EWMA settings (Linkerd's defaults).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PeakEwmaSettings {
    /// Time constant of the latency average's decay: a sample's weight falls to 1/e after this
    /// long. Default `10s` (Linkerd).
    #[serde(default = "default_ewma_decay")]
    pub decay: Duration,
    /// Latency assumed for an endpoint that has no sample yet. Default `30ms` (Linkerd).
    #[serde(default = "default_ewma_rtt")]
    pub default_rtt: Duration,
}

impl Default for PeakEwmaSettings {
    fn default() -> Self {
        PeakEwmaSettings {
            decay: default_ewma_decay(),
            default_rtt: default_ewma_rtt(),
        }
    }
}

/// Least-request settings (Envoy `LeastRequestLbConfig`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LeastRequestSettings {
    /// Endpoints drawn (by weight) per pick; the one with the fewest requests in flight per
    /// unit of weight wins. At least 2. Default 2 (Envoy).
    #[serde(default = "default_choice_count")]
    pub choice_count: u32,
}

impl Default for LeastRequestSettings {
    fn default() -> Self {
        LeastRequestSettings {
            choice_count: default_choice_count(),
        }
    }
}

/// Ring-hash settings (Envoy `RingHashLbConfig`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RingHashSettings {
    /// Fewest entries on the ring. Default 1024 (Envoy).
    #[serde(default = "default_min_ring")]
    pub minimum_ring_size: u64,
    /// Most entries on the ring. Default 8388608 (8M, Envoy).
    #[serde(default = "default_max_ring")]
    pub maximum_ring_size: u64,
    /// Bounded load, as a percentage (Envoy `hash_balance_factor`): an endpoint with more
    /// requests in flight than this percentage of its weighted share of the cluster's is skipped
    /// for the next one on the ring. At least 100; unset: no bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_balance_factor: Option<u32>,
}

impl Default for RingHashSettings {
    fn default() -> Self {
        RingHashSettings {
            minimum_ring_size: default_min_ring(),
            maximum_ring_size: default_max_ring(),
            hash_balance_factor: None,
        }
    }
}

/// Maglev settings (Envoy `MaglevLbConfig`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MaglevSettings {
    /// Entries in the lookup table; must be prime. Default 65537 (Envoy).
    #[serde(default = "default_table_size")]
    pub table_size: u64,
    /// Bounded load, as for ring hash (percentage, at least 100; unset: no bound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_balance_factor: Option<u32>,
}

impl Default for MaglevSettings {
    fn default() -> Self {
        MaglevSettings {
            table_size: default_table_size(),
            hash_balance_factor: None,
        }
    }
}

/// Locality preference (a simple form of Envoy's zone-aware routing): while enough of the
/// endpoints in the proxy's own zone (`node.zone`) are healthy, only they are picked; otherwise
/// traffic spills to every endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LocalitySettings {
    /// Prefer the local zone at all. Default true (takes effect only when `node.zone` is set
    /// and some endpoints carry that `zone`).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Percentage of the local zone's endpoints that must be healthy for it to take all the
    /// traffic. Default 70 (Envoy's overprovisioning factor 1.4: a locality keeps all its traffic
    /// while at least 1/1.4 ≈ 71% of it is healthy).
    #[serde(default = "default_min_healthy")]
    pub min_healthy_percent: u32,
    /// Fewest endpoints a cluster must have for locality preference to apply (Envoy
    /// `zone_aware_lb_config.min_cluster_size`). Default 6 (Envoy).
    #[serde(default = "default_min_cluster_size")]
    pub min_cluster_size: u32,
}

impl Default for LocalitySettings {
    fn default() -> Self {
        LocalitySettings {
            enabled: true,
            min_healthy_percent: default_min_healthy(),
            min_cluster_size: default_min_cluster_size(),
        }
    }
}

/// Who this proxy is (Envoy's `node`): read at start; a change needs a restart.
#[derive(Clone, Debug, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Node id (for xDS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The service this node belongs to (for xDS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// The zone this proxy runs in: endpoints with the same `zone` are preferred (see a
    /// cluster's `locality`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

impl Node {
    /// True when nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == Node::default()
    }
}

/// One hash policy of a route, as written (exactly one of `header`, `cookie`, `source_ip`,
/// `query_parameter`).
#[derive(Clone, Debug, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawHashPolicy {
    /// Hash this request header's value(s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Hash this cookie's value (no cookie is generated when it is absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<CookieHash>,
    /// Hash the downstream peer's IP address (`true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<bool>,
    /// Hash this query parameter's value (its first occurrence, as sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_parameter: Option<String>,
    /// Stop at this policy when it (or an earlier one) produced a hash. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub terminal: bool,
}

/// The cookie a hash policy reads.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CookieHash {
    /// Cookie name.
    pub name: String,
}

/// One hash policy of a route (validated).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HashPolicy {
    /// What is hashed.
    pub on: HashOn,
    /// Stop here when a hash has been produced.
    pub terminal: bool,
}

/// What a hash policy hashes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HashOn {
    /// A request header's value(s).
    Header(String),
    /// A cookie's value.
    Cookie(String),
    /// The downstream peer's IP address.
    SourceIp,
    /// A query parameter's value.
    QueryParameter(String),
}

impl TryFrom<RawHashPolicy> for HashPolicy {
    type Error = String;
    fn try_from(r: RawHashPolicy) -> Result<Self, String> {
        let on = match (r.header, r.cookie, r.source_ip, r.query_parameter) {
            (Some(h), None, None, None) => HashOn::Header(h),
            (None, Some(c), None, None) => HashOn::Cookie(c.name),
            (None, None, Some(true), None) => HashOn::SourceIp,
            (None, None, None, Some(q)) => HashOn::QueryParameter(q),
            _ => return Err(ONE_OF.into()),
        };
        Ok(HashPolicy {
            on,
            terminal: r.terminal,
        })
    }
}

impl From<HashPolicy> for RawHashPolicy {
    fn from(p: HashPolicy) -> Self {
        let mut raw = RawHashPolicy {
            terminal: p.terminal,
            ..RawHashPolicy::default()
        };
        match p.on {
            HashOn::Header(h) => raw.header = Some(h),
            HashOn::Cookie(name) => raw.cookie = Some(CookieHash { name }),
            HashOn::SourceIp => raw.source_ip = Some(true),
            HashOn::QueryParameter(q) => raw.query_parameter = Some(q),
        }
        raw
    }
}

const ONE_OF: &str = "set exactly one of `header`, `cookie`, `source_ip: true`, `query_parameter`";

/// The largest ring (Envoy's cap).
pub(crate) const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;
/// The largest Maglev table.
pub(crate) const MAX_TABLE_SIZE: u64 = 5_000_011;

/// Checks a cluster's balancing settings; `p` is the cluster's path.
pub(crate) fn check_cluster(p: &str, c: &crate::Cluster, issues: &mut Vec<Issue>) {
    let mut err = |path: String, message: String| issues.push(Issue { path, message });
    let r = &c.ring_hash;
    if r.minimum_ring_size == 0 || r.minimum_ring_size > MAX_RING_SIZE {
        err(
            format!("{p}.ring_hash.minimum_ring_size"),
            format!("must be between 1 and {MAX_RING_SIZE}"),
        );
    }
    if r.maximum_ring_size == 0 || r.maximum_ring_size > MAX_RING_SIZE {
        err(
            format!("{p}.ring_hash.maximum_ring_size"),
            format!("must be between 1 and {MAX_RING_SIZE}"),
        );
    } else if r.maximum_ring_size < r.minimum_ring_size {
        err(
            format!("{p}.ring_hash.maximum_ring_size"),
            "must not be less than minimum_ring_size".into(),
        );
    }
    for (section, factor) in [
        ("ring_hash", r.hash_balance_factor),
        ("maglev", c.maglev.hash_balance_factor),
    ] {
        if factor.is_some_and(|f| f < 100) {
            err(
                format!("{p}.{section}.hash_balance_factor"),
                "must be at least 100 (a percentage: 150 allows 1.5 times the average load)".into(),
            );
        }
    }
    let t = c.maglev.table_size;
    if !(3..=MAX_TABLE_SIZE).contains(&t) || !is_prime(t) {
        err(
            format!("{p}.maglev.table_size"),
            format!("must be a prime between 3 and {MAX_TABLE_SIZE} (e.g. 65537)"),
        );
    }
    if !(2..=100).contains(&c.least_request.choice_count) {
        err(
            format!("{p}.least_request.choice_count"),
            "must be between 2 and 100".into(),
        );
    }
    if c.panic_threshold > 100 {
        err(
            format!("{p}.panic_threshold"),
            "must be a percentage between 0 and 100".into(),
        );
    }
    if c.locality.min_healthy_percent > 100 {
        err(
            format!("{p}.locality.min_healthy_percent"),
            "must be a percentage between 0 and 100".into(),
        );
    }
    if c.peak_ewma.decay.is_zero() {
        err(
            format!("{p}.peak_ewma.decay"),
            "must be greater than 0s".into(),
        );
    }
    if c.peak_ewma.default_rtt.is_zero() {
        err(
            format!("{p}.peak_ewma.default_rtt"),
            "must be greater than 0s".into(),
        );
    }
}

/// Checks a route's hash policies; `p` is the route's path.
pub(crate) fn check_hash_policies(
    p: &str,
    policies: &[RawHashPolicy],
    forwards: bool,
    issues: &mut Vec<Issue>,
) {
    let mut err = |path: String, message: &str| {
        issues.push(Issue {
            path,
            message: message.into(),
        })
    };
    if !policies.is_empty() && !forwards {
        err(
            format!("{p}.hash_policy"),
            "only applies to routes with `cluster` or `weighted_clusters`",
        );
    }
    for (i, h) in policies.iter().enumerate() {
        let hp = format!("{p}.hash_policy[{i}]");
        if HashPolicy::try_from(h.clone()).is_err() {
            err(hp.clone(), ONE_OF);
        }
        if let Some(name) = &h.header
            && !crate::validate::is_token(name)
        {
            err(format!("{hp}.header"), "not a valid header name");
        }
        if let Some(c) = &h.cookie
            && !crate::validate::is_token(&c.name)
        {
            err(format!("{hp}.cookie.name"), "not a valid cookie name");
        }
        if h.source_ip == Some(false) {
            err(
                format!("{hp}.source_ip"),
                "`false` hashes nothing: write `true` or remove the policy",
            );
        }
        if h.query_parameter.as_ref().is_some_and(String::is_empty) {
            err(format!("{hp}.query_parameter"), "must not be empty");
        }
    }
}

/// Checks the `node` section.
pub(crate) fn check_node(node: &Node, issues: &mut Vec<Issue>) {
    if node.zone.as_ref().is_some_and(String::is_empty) {
        issues.push(Issue {
            path: "node.zone".into(),
            message: "must not be empty (remove it for no zone)".into(),
        });
    }
}

/// Checks an endpoint's zone; `p` is the endpoint's path.
pub(crate) fn check_endpoint_zone(p: &str, zone: Option<&str>, issues: &mut Vec<Issue>) {
    if zone.is_some_and(str::is_empty) {
        issues.push(Issue {
            path: format!("{p}.zone"),
            message: "must not be empty (remove it for no zone)".into(),
        });
    }
}

/// Trial division (table sizes are at most a few million).
pub fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

fn default_ewma_decay() -> Duration {
    Duration::from_secs(10)
}
fn default_ewma_rtt() -> Duration {
    Duration::from_millis(30)
}
fn default_choice_count() -> u32 {
    2
}
fn default_min_ring() -> u64 {
    1024
}
fn default_max_ring() -> u64 {
    MAX_RING_SIZE
}
fn default_table_size() -> u64 {
    65_537
}
fn default_true() -> bool {
    true
}
fn default_min_healthy() -> u32 {
    70
}
fn default_min_cluster_size() -> u32 {
    6
}
/// Envoy's `healthy_panic_threshold` default.
pub(crate) fn default_panic_threshold() -> u32 {
    50
}

#[cfg(test)]
mod tests;
