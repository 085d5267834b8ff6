//! Resilience settings: retries (per route) with budgets (per cluster), circuit breakers (per
//! cluster and per route) and outlier detection (per cluster).

use crate::units::{ByteSize, Duration};
use serde::{Deserialize, Serialize};

/// When a request is tried again (Envoy `retry_policy`, per route).
///
/// A request is retried only when it is safe: it provably never reached the upstream (connect
/// failure, refused stream, a pooled connection that closed before the request was written), or
/// its method is idempotent (or listed in `retriable_methods`) and its body fits `replay_limit`.
/// Never after response bytes went downstream, never beyond the cluster's retry budget and
/// `max_retries` circuit breaker.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// What is retried. Default `[connect-failure, refused-stream]`: only requests that
    /// provably never reached the upstream.
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<RetryOn>,
    /// Retries after the first attempt (so at most `num_retries + 1` attempts). Default 2.
    #[serde(default = "default_num_retries")]
    pub num_retries: u32,
    /// Time allowed for each attempt's response head (counted from the end of the request
    /// body, or the attempt's start when later); an attempt that exceeds it is abandoned and,
    /// under `5xx`, `gateway-error` or `reset`, retried. Unset: only the route timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// Statuses retried under `retriable-status-codes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retriable_status_codes: Vec<u16>,
    /// Methods retried after they were sent, besides the idempotent ones (`GET`, `HEAD`,
    /// `OPTIONS`, `TRACE`, `PUT`, `DELETE`). A request with an `Idempotency-Key` header is
    /// treated as idempotent too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retriable_methods: Vec<String>,
    /// Exponential backoff with full jitter between attempts.
    #[serde(default)]
    pub back_off: BackOff,
    /// A `Retry-After` on a retried `429` or `503` is waited for when it is at most this long;
    /// a longer one ends the retries (the upstream's answer goes to the client). Default `10s`.
    #[serde(default = "default_max_retry_after")]
    pub max_retry_after: Duration,
    /// Most request body bytes kept to replay on a retry (filled while the body streams
    /// upstream, never buffered ahead). A request whose body outgrows it is not retried once
    /// sent. Default `64KiB`.
    #[serde(default = "default_replay_limit")]
    pub replay_limit: ByteSize,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retry_on: default_retry_on(),
            num_retries: default_num_retries(),
            per_try_timeout: None,
            retriable_status_codes: Vec::new(),
            retriable_methods: Vec::new(),
            back_off: BackOff::default(),
            max_retry_after: default_max_retry_after(),
            replay_limit: default_replay_limit(),
        }
    }
}

/// A retry condition (Envoy's `x-envoy-retry-on` and `x-envoy-retry-grpc-on` names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    /// A 5xx response, or no response at all (connect failure, reset, refused stream, per-try
    /// timeout).
    #[serde(rename = "5xx")]
    FiveXx,
    /// A 502, 503 or 504 response, or no response at all (as `5xx`).
    GatewayError,
    /// The upstream reset or closed the connection or stream, or the per-try timeout passed,
    /// before the response head.
    Reset,
    /// The connection could not be opened (or timed out): the request was never sent.
    ConnectFailure,
    /// An HTTP/2 upstream refused the stream (`REFUSED_STREAM`): the request was not
    /// processed.
    RefusedStream,
    /// A response status listed in `retriable_status_codes`.
    RetriableStatusCodes,
    /// gRPC status CANCELLED (1) in the response head.
    Cancelled,
    /// gRPC status DEADLINE_EXCEEDED (4).
    DeadlineExceeded,
    /// gRPC status INTERNAL (13).
    Internal,
    /// gRPC status RESOURCE_EXHAUSTED (8).
    ResourceExhausted,
    /// gRPC status UNAVAILABLE (14).
    Unavailable,
}

/// Backoff between attempts: the n-th retry waits a random time in
/// `[0, min(max_interval, base_interval × 2^(n-1))]` (full jitter).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackOff {
    /// Default `25ms` (Envoy's).
    #[serde(default = "default_base_interval")]
    pub base_interval: Duration,
    /// Default `250ms` (10 × the base, as Envoy).
    #[serde(default = "default_max_interval")]
    pub max_interval: Duration,
}

impl Default for BackOff {
    fn default() -> Self {
        BackOff {
            base_interval: default_base_interval(),
            max_interval: default_max_interval(),
        }
    }
}

/// A cluster's retry budget (Linkerd's and Finagle's): over the last `ttl`, retries may add at
/// most `retry_percent` of the requests, plus `min_retries_per_second` so that low traffic
/// can still retry. Retries beyond it are refused (the failure goes to the client) and
/// counted, so retries cannot multiply an outage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudget {
    /// `false` turns the budget off (only the `max_retries` breaker limits retries). Default
    /// `true`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Retries allowed as a percentage of requests. Default 20.
    #[serde(default = "default_retry_percent")]
    pub retry_percent: u32,
    /// Retries allowed per second regardless of traffic. Default 10.
    #[serde(default = "default_min_retries")]
    pub min_retries_per_second: u32,
    /// The window requests and retries are counted over. Default `10s`.
    #[serde(default = "default_budget_ttl")]
    pub ttl: Duration,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            enabled: true,
            retry_percent: default_retry_percent(),
            min_retries_per_second: default_min_retries(),
            ttl: default_budget_ttl(),
        }
    }
}

/// A cluster's circuit breakers (Envoy's thresholds, counted over every worker). A request that
/// would exceed one gets 503 (`UO`) at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakers {
    /// Most open upstream connections to the cluster. Default 1024.
    #[serde(default = "default_breaker")]
    pub max_connections: u32,
    /// Most requests waiting for a connection to be opened. Default 1024.
    #[serde(default = "default_breaker")]
    pub max_pending_requests: u32,
    /// Most requests in flight to the cluster. Default 1024.
    #[serde(default = "default_breaker")]
    pub max_requests: u32,
    /// Most retries in flight to the cluster. Default 3 (Envoy's).
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
}

impl Default for CircuitBreakers {
    fn default() -> Self {
        CircuitBreakers {
            max_connections: default_breaker(),
            max_pending_requests: default_breaker(),
            max_requests: default_breaker(),
            max_retries: default_max_retries(),
        }
    }
}

/// A route's own circuit breakers (Envoy, Istio and Linkerd have none): they bound what one
/// route may take of its clusters, so one hot or slow route cannot use up a shared cluster's
/// thresholds. Unset thresholds do not apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteBreakers {
    /// Most requests in flight on this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    /// Most retries in flight on this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

/// Passive health checking (Envoy `outlier_detection`): endpoints that keep failing are ejected
/// from balancing for a while, longer each time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    /// `false` turns outlier detection off. Default `true`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Consecutive 5xx responses (connect failures, resets and timeouts count as 5xx) that
    /// eject an endpoint; 0 turns the check off. Default 5.
    #[serde(default = "default_consecutive")]
    pub consecutive_5xx: u32,
    /// Consecutive gateway errors (502, 503, 504, connect failures, resets, timeouts) that
    /// eject; 0 turns the check off. Default 5.
    #[serde(default = "default_consecutive")]
    pub consecutive_gateway_failure: u32,
    /// An endpoint whose share of failed requests in an `interval` is at least this percentage
    /// is ejected; 0 turns the check off. Default 85.
    #[serde(default = "default_failure_percentage")]
    pub failure_percentage_threshold: u32,
    /// Failure percentage is checked only when the cluster has at least this many endpoints.
    /// Default 5.
    #[serde(default = "default_failure_minimum_hosts")]
    pub failure_percentage_minimum_hosts: u32,
    /// …and only for endpoints with at least this many requests in the interval. Default 50.
    #[serde(default = "default_failure_request_volume")]
    pub failure_percentage_request_volume: u32,
    /// How often failure percentages are computed and ejection times checked. Default `10s`.
    #[serde(default = "default_outlier_interval")]
    pub interval: Duration,
    /// An ejection lasts this long times the number of times the endpoint was ejected (the
    /// count decays by one per interval without ejection). Default `30s`.
    #[serde(default = "default_base_ejection")]
    pub base_ejection_time: Duration,
    /// Longest ejection. Default `300s`.
    #[serde(default = "default_max_ejection")]
    pub max_ejection_time: Duration,
    /// Most endpoints ejected at once, as a percentage of the cluster (at least one endpoint
    /// may always be ejected, as in Envoy). Default 10.
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            enabled: true,
            consecutive_5xx: default_consecutive(),
            consecutive_gateway_failure: default_consecutive(),
            failure_percentage_threshold: default_failure_percentage(),
            failure_percentage_minimum_hosts: default_failure_minimum_hosts(),
            failure_percentage_request_volume: default_failure_request_volume(),
            interval: default_outlier_interval(),
            base_ejection_time: default_base_ejection(),
            max_ejection_time: default_max_ejection(),
            max_ejection_percent: default_max_ejection_percent(),
        }
    }
}

/// Checks a route's retry policy and breakers; `err(field, message)` reports under the route.
pub(crate) fn validate_route(
    retry: Option<&RetryPolicy>,
    breakers: Option<&RouteBreakers>,
    mut err: impl FnMut(String, String),
) {
    if let Some(r) = retry {
        if r.num_retries > 10 {
            err(
                "retry_policy.num_retries".into(),
                "must be at most 10".into(),
            );
        }
        if r.per_try_timeout.is_some_and(|d| d.is_zero()) {
            err(
                "retry_policy.per_try_timeout".into(),
                "must be greater than 0s (leave it out for none)".into(),
            );
        }
        for (i, s) in r.retriable_status_codes.iter().enumerate() {
            if !(100..=599).contains(s) {
                err(
                    format!("retry_policy.retriable_status_codes[{i}]"),
                    format!("{s} is not an HTTP status (100-599)"),
                );
            }
        }
        if !r.retriable_status_codes.is_empty()
            && !r.retry_on.contains(&RetryOn::RetriableStatusCodes)
        {
            err(
                "retry_policy.retriable_status_codes".into(),
                "has no effect unless `retry_on` includes `retriable-status-codes`".into(),
            );
        }
        for (i, m) in r.retriable_methods.iter().enumerate() {
            if http_method(m).is_none() {
                err(
                    format!("retry_policy.retriable_methods[{i}]"),
                    format!("`{m}` is not an HTTP method"),
                );
            }
        }
        if r.back_off.base_interval.is_zero() {
            err(
                "retry_policy.back_off.base_interval".into(),
                "must be greater than 0s".into(),
            );
        }
        if r.back_off.max_interval.get() < r.back_off.base_interval.get() {
            err(
                "retry_policy.back_off.max_interval".into(),
                "must be at least `base_interval`".into(),
            );
        }
        if r.replay_limit.bytes() > 16 << 20 {
            err(
                "retry_policy.replay_limit".into(),
                "must be at most 16MiB".into(),
            );
        }
    }
    if breakers.is_some_and(|b| b.max_requests == Some(0)) {
        err(
            "circuit_breakers.max_requests".into(),
            "must be at least 1".into(),
        );
    }
}

/// Checks a cluster's budget, breakers and outlier detection.
pub(crate) fn validate_cluster(
    budget: &RetryBudget,
    breakers: &CircuitBreakers,
    outlier: &OutlierDetection,
    mut err: impl FnMut(String, String),
) {
    if budget.enabled && budget.ttl.get() < std::time::Duration::from_secs(1) {
        err("retry_budget.ttl".into(), "must be at least 1s".into());
    }
    if budget.enabled && budget.ttl.get() > std::time::Duration::from_secs(60) {
        err("retry_budget.ttl".into(), "must be at most 60s".into());
    }
    if budget.retry_percent > 1000 {
        err(
            "retry_budget.retry_percent".into(),
            "must be at most 1000".into(),
        );
    }
    for (field, v) in [
        ("max_connections", breakers.max_connections),
        ("max_pending_requests", breakers.max_pending_requests),
        ("max_requests", breakers.max_requests),
    ] {
        if v == 0 {
            err(
                format!("circuit_breakers.{field}"),
                "must be at least 1".into(),
            );
        }
    }
    if outlier.enabled {
        for (field, v) in [
            (
                "failure_percentage_threshold",
                outlier.failure_percentage_threshold,
            ),
            ("max_ejection_percent", outlier.max_ejection_percent),
        ] {
            if v > 100 {
                err(
                    format!("outlier_detection.{field}"),
                    "must be a percentage (0-100)".into(),
                );
            }
        }
        for (field, d) in [
            ("interval", outlier.interval),
            ("base_ejection_time", outlier.base_ejection_time),
        ] {
            if d.is_zero() {
                err(
                    format!("outlier_detection.{field}"),
                    "must be greater than 0s".into(),
                );
            }
        }
        if outlier.max_ejection_time.get() < outlier.base_ejection_time.get() {
            err(
                "outlier_detection.max_ejection_time".into(),
                "must be at least `base_ejection_time`".into(),
            );
        }
    }
}

/// `m` as a method token (upper case letters as registered methods are), if it is one.
fn http_method(m: &str) -> Option<&str> {
    (!m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase() || b == b'-')).then_some(m)
}

fn yes() -> bool {
    true
}
fn default_retry_on() -> Vec<RetryOn> {
    vec![RetryOn::ConnectFailure, RetryOn::RefusedStream]
}
fn default_num_retries() -> u32 {
    2
}
fn default_max_retry_after() -> Duration {
    Duration::from_secs(10)
}
fn default_replay_limit() -> ByteSize {
    ByteSize::kib(64)
}
fn default_base_interval() -> Duration {
    Duration::from_millis(25)
}
fn default_max_interval() -> Duration {
    Duration::from_millis(250)
}
fn default_retry_percent() -> u32 {
    20
}
fn default_min_retries() -> u32 {
    10
}
fn default_budget_ttl() -> Duration {
    Duration::from_secs(10)
}
fn default_breaker() -> u32 {
    1024
}
fn default_max_retries() -> u32 {
    3
}
fn default_consecutive() -> u32 {
    5
}
fn default_failure_percentage() -> u32 {
    85
}
fn default_failure_minimum_hosts() -> u32 {
    5
}
fn default_failure_request_volume() -> u32 {
    50
}
fn default_outlier_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_base_ejection() -> Duration {
    Duration::from_secs(30)
}
fn default_max_ejection() -> Duration {
    Duration::from_secs(300)
}
fn default_max_ejection_percent() -> u32 {
    10
}

#[cfg(test)]
mod tests {
    use crate::{RetryOn, parse};

    /// A file with one route carrying `route_extra` and one cluster carrying `cluster_extra`.
    fn yaml(route_extra: &str, cluster_extra: &str) -> String {
        format!(
            "listeners: [{{ name: l, address: 127.0.0.1:8080, http: {{ route_table: t }} }}]
route_tables:
  - name: t
    virtual_hosts:
      - name: v
        domains: ['*']
        routes: [{{ match: {{ prefix: / }}, cluster: c{route_extra} }}]
clusters: [{{ name: c, endpoints: [127.0.0.1:9001]{cluster_extra} }}]
"
        )
    }

    fn errors(route_extra: &str, cluster_extra: &str) -> Vec<String> {
        match parse(&yaml(route_extra, cluster_extra), "t.yaml") {
            Ok(_) => panic!("expected errors for {route_extra} / {cluster_extra}"),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = parse(&yaml("", ""), "t.yaml").unwrap();
        let route = &c.route_tables[0].virtual_hosts[0].routes[0];
        assert!(route.retry_policy.is_none() && route.circuit_breakers.is_none());
        let d = super::RetryPolicy::default();
        assert_eq!(
            d.retry_on,
            [RetryOn::ConnectFailure, RetryOn::RefusedStream]
        );
        assert_eq!((d.num_retries, d.replay_limit.bytes()), (2, 64 << 10));
        let cl = &c.clusters[0];
        assert!(cl.retry_budget.enabled && cl.outlier_detection.enabled);
        assert_eq!(cl.retry_budget.retry_percent, 20);
        assert_eq!(cl.circuit_breakers.max_requests, 1024);
        assert_eq!(cl.circuit_breakers.max_retries, 3);
        assert_eq!(cl.outlier_detection.consecutive_5xx, 5);
        assert_eq!(cl.outlier_detection.max_ejection_percent, 10);
        // Every condition name parses.
        let all = ", retry_policy: { retry_on: [5xx, gateway-error, reset, connect-failure, \
                   refused-stream, retriable-status-codes, cancelled, deadline-exceeded, \
                   internal, resource-exhausted, unavailable], retriable_status_codes: [409] }";
        let c = parse(&yaml(all, ""), "t.yaml").unwrap();
        let p = c.route_tables[0].virtual_hosts[0].routes[0]
            .retry_policy
            .as_ref()
            .unwrap();
        assert_eq!(p.retry_on.len(), 11);
    }

    #[test]
    fn invalid_settings_are_reported_by_field_and_line() {
        let r = "route_tables[0].virtual_hosts[0].routes[0]";
        let cases = [
            (
                ", retry_policy: { num_retries: 11 }",
                "",
                format!("{r}.retry_policy.num_retries: must be at most 10"),
            ),
            (
                ", retry_policy: { per_try_timeout: 0s }",
                "",
                format!(
                    "{r}.retry_policy.per_try_timeout: must be greater than 0s (leave it out for none)"
                ),
            ),
            (
                ", retry_policy: { retry_on: [retriable-status-codes], retriable_status_codes: [99] }",
                "",
                format!(
                    "{r}.retry_policy.retriable_status_codes[0]: 99 is not an HTTP status (100-599)"
                ),
            ),
            (
                ", retry_policy: { retriable_status_codes: [409] }",
                "",
                format!(
                    "{r}.retry_policy.retriable_status_codes: has no effect unless `retry_on` includes `retriable-status-codes`"
                ),
            ),
            (
                ", retry_policy: { retriable_methods: [post] }",
                "",
                format!("{r}.retry_policy.retriable_methods[0]: `post` is not an HTTP method"),
            ),
            (
                ", retry_policy: { back_off: { base_interval: 1s, max_interval: 10ms } }",
                "",
                format!("{r}.retry_policy.back_off.max_interval: must be at least `base_interval`"),
            ),
            (
                ", circuit_breakers: { max_requests: 0 }",
                "",
                format!("{r}.circuit_breakers.max_requests: must be at least 1"),
            ),
            (
                "",
                ", circuit_breakers: { max_connections: 0 }",
                "clusters[0].circuit_breakers.max_connections: must be at least 1".into(),
            ),
            (
                "",
                ", retry_budget: { ttl: 500ms }",
                "clusters[0].retry_budget.ttl: must be at least 1s".into(),
            ),
            (
                "",
                ", outlier_detection: { max_ejection_percent: 101 }",
                "clusters[0].outlier_detection.max_ejection_percent: must be a percentage (0-100)"
                    .into(),
            ),
            (
                "",
                ", outlier_detection: { base_ejection_time: 60s, max_ejection_time: 30s }",
                "clusters[0].outlier_detection.max_ejection_time: must be at least `base_ejection_time`"
                    .into(),
            ),
        ];
        for (route, cluster, want) in cases {
            let e = errors(route, cluster);
            assert_eq!(e.len(), 1, "{e:#?}");
            // `t.yaml:LINE:COL: path: message`.
            assert!(e[0].starts_with("t.yaml:"), "{}", e[0]);
            assert!(e[0].ends_with(&want), "{} (wanted …{want})", e[0]);
        }
        // An unknown condition is a parse error that names the value.
        let e = errors(", retry_policy: { retry_on: [sometimes] }", "");
        assert!(e[0].contains("sometimes"), "{e:#?}");
    }
}
