//! Active health checking of a cluster's endpoints (Envoy `Cluster.health_checks`): an HTTP,
//! gRPC (`grpc.health.v1`) or TCP-connect probe per endpoint every `interval` (± jitter), with
//! healthy and unhealthy thresholds. The checks run in the proxy's `health` module.

use crate::cluster::Cluster;
use crate::error::Issue;
use crate::units::Duration;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::fmt;

/// How a cluster's endpoints are checked. Exactly one of `http`, `grpc` or `tcp` is set.
///
/// Envoy requires every timing and threshold field; here they default to Envoy's common
/// example values (and Kubernetes probe habits): every `5s` ± 10%, `1s` timeout, 3 failures
/// to mark an endpoint unhealthy and 2 successes to bring it back.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Time between two checks of one endpoint. At least `10ms`. Default `5s`.
    #[serde(default = "default_interval")]
    pub interval: Duration,
    /// Each wait is drawn uniformly from `interval` ± this percentage of it, so checks of many
    /// endpoints and proxies spread out (Envoy's `interval_jitter_percent` only adds). 0 to 50.
    /// Default 10.
    #[serde(default = "default_jitter_percent")]
    pub interval_jitter_percent: u32,
    /// Time allowed for one check (connect, request and response). Default `1s`.
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    /// Consecutive failures that mark a healthy endpoint unhealthy. Default 3.
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    /// Consecutive successes that bring an unhealthy endpoint back. Default 2. An endpoint
    /// not checked yet (new in the cluster) needs just one, as in Envoy.
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    /// Interval used instead of `interval` while the cluster has had no request since the
    /// checker started (Envoy `no_traffic_interval`, whose default is `60s`). Default: unset,
    /// `interval` always applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_traffic_interval: Option<Duration>,
    /// An HTTP `GET` probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpHealthCheck>,
    /// A `grpc.health.v1.Health/Check` probe over HTTP/2 cleartext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcHealthCheck>,
    /// A TCP connect probe: `tcp: {}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpHealthCheck>,
}

/// An HTTP health check: healthy when the response status is one of `expected_statuses`.
/// Spoken over HTTP/2 (prior knowledge) when the cluster's `protocol` is `http2`, else
/// HTTP/1.1; the connection is kept between checks.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpHealthCheck {
    /// Request path, such as `/healthz`. Required.
    pub path: String,
    /// `Host` (HTTP/2 `:authority`) of the request. Default: the cluster's name, as Envoy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Healthy statuses: codes (`200`) or half-open ranges (`{ start: 200, end: 400 }` is
    /// 200–399, as Envoy's `Int64Range`). Default `[200]`, as Envoy.
    #[serde(default = "default_expected_statuses")]
    pub expected_statuses: Vec<StatusRange>,
}

impl HttpHealthCheck {
    /// True when `status` is expected.
    pub fn expects(&self, status: u16) -> bool {
        self.expected_statuses.iter().any(|r| r.contains(status))
    }
}

/// Statuses from `start` (inclusive) to `end` (exclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct StatusRange {
    /// First status.
    pub start: u16,
    /// One past the last status.
    pub end: u16,
}

impl StatusRange {
    /// True when `status` is in the range.
    pub fn contains(&self, status: u16) -> bool {
        (self.start..self.end).contains(&status)
    }
}

impl<'de> Deserialize<'de> for StatusRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Range {
            start: u16,
            end: u16,
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StatusRange;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a status code such as `200` or a range `{ start: 200, end: 400 }`")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<StatusRange, E> {
                let start = u16::try_from(v)
                    .map_err(|_| E::custom(format!("`{v}` is not an HTTP status code")))?;
                Ok(StatusRange {
                    start,
                    end: start.saturating_add(1),
                })
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<StatusRange, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("`{v}` is not an HTTP status code")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<StatusRange, A::Error> {
                let r = Range::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(StatusRange {
                    start: r.start,
                    end: r.end,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// A gRPC health check (`grpc.health.v1.Health/Check`): healthy when the answer is `SERVING`
/// with `grpc-status` 0. Always HTTP/2 cleartext by prior knowledge, whatever the cluster's
/// `protocol` (Envoy requires the cluster to be HTTP/2).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcHealthCheck {
    /// The `service` asked about; empty (the default) asks about the server as a whole.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_name: String,
    /// `:authority` of the request. Default: the cluster's name, as Envoy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
}

/// A TCP health check: healthy when a connection opens within the timeout.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TcpHealthCheck {}

/// The probe of a [`HealthCheck`], once validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthCheckKind<'a> {
    /// HTTP.
    Http(&'a HttpHealthCheck),
    /// gRPC.
    Grpc(&'a GrpcHealthCheck),
    /// TCP connect.
    Tcp,
}

impl HealthCheck {
    /// The probe; `None` only for a health check that did not pass validation.
    pub fn kind(&self) -> Option<HealthCheckKind<'_>> {
        match (&self.http, &self.grpc, &self.tcp) {
            (Some(h), None, None) => Some(HealthCheckKind::Http(h)),
            (None, Some(g), None) => Some(HealthCheckKind::Grpc(g)),
            (None, None, Some(_)) => Some(HealthCheckKind::Tcp),
            _ => None,
        }
    }
}

/// The problems of `c.health_checks` (none when unset), with paths under `p` (the cluster).
pub(crate) fn validate(p: &str, c: &Cluster) -> Vec<Issue> {
    let mut issues = Vec::new();
    let Some(hc) = &c.health_checks else {
        return issues;
    };
    let p = format!("{p}.health_checks");
    let mut err = |field: &str, message: &str| {
        issues.push(Issue {
            path: if field.is_empty() {
                p.clone()
            } else {
                format!("{p}.{field}")
            },
            message: message.to_string(),
        });
    };
    if hc.interval.get() < std::time::Duration::from_millis(10) {
        err("interval", "must be at least 10ms");
    }
    if hc.interval_jitter_percent > 50 {
        err("interval_jitter_percent", "must be between 0 and 50");
    }
    if hc.timeout.is_zero() {
        err("timeout", "must be greater than 0s");
    }
    if hc.unhealthy_threshold == 0 {
        err("unhealthy_threshold", "must be at least 1");
    }
    if hc.healthy_threshold == 0 {
        err("healthy_threshold", "must be at least 1");
    }
    if hc
        .no_traffic_interval
        .is_some_and(|d| d.get() < std::time::Duration::from_millis(10))
    {
        err("no_traffic_interval", "must be at least 10ms");
    }
    let set = [hc.http.is_some(), hc.grpc.is_some(), hc.tcp.is_some()];
    match set.iter().filter(|s| **s).count() {
        0 => err("", "needs a probe: one of `http`, `grpc` or `tcp`"),
        1 => {}
        _ => err("", "set only one of `http`, `grpc` or `tcp`"),
    }
    if let Some(h) = &hc.http {
        if !h.path.starts_with('/') {
            err("http.path", "must start with '/'");
        } else if !h.path.bytes().all(|b| b.is_ascii_graphic()) {
            err(
                "http.path",
                "contains characters not allowed in a request target",
            );
        }
        if let Some(host) = &h.host
            && !is_authority(host)
        {
            err("http.host", "is not a host name (optionally with a port)");
        }
        if h.expected_statuses.is_empty() {
            err("http.expected_statuses", "must list at least one status");
        }
        for (i, r) in h.expected_statuses.iter().enumerate() {
            if !(100..=599).contains(&r.start) || r.end <= r.start || r.end > 600 {
                err(
                    &format!("http.expected_statuses[{i}]"),
                    "must be a status from 100 to 599, or a range with 100 <= start < end <= 600",
                );
            }
        }
    }
    if let Some(g) = &hc.grpc
        && let Some(a) = &g.authority
        && !is_authority(a)
    {
        err(
            "grpc.authority",
            "is not a host name (optionally with a port)",
        );
    }
    issues
}

/// A host name or address, optionally with a port: what a `Host` header may carry.
fn is_authority(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']')
        })
}

fn default_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_jitter_percent() -> u32 {
    10
}
fn default_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_unhealthy_threshold() -> u32 {
    3
}
fn default_healthy_threshold() -> u32 {
    2
}
fn default_expected_statuses() -> Vec<StatusRange> {
    vec![StatusRange {
        start: 200,
        end: 201,
    }]
}

#[cfg(test)]
mod tests {
    use crate::{HealthCheckKind, StatusRange, parse};

    fn cluster_yaml(hc: &str) -> String {
        format!(
            "clusters:\n  - name: web\n    endpoints: [127.0.0.1:9001]\n    health_checks: {hc}\n"
        )
    }

    fn errors(hc: &str) -> Vec<String> {
        match parse(&cluster_yaml(hc), "t.yaml") {
            Ok(_) => Vec::new(),
            Err(e) => {
                e.0.iter()
                    .map(|e| format!("{}: {}", e.path, e.message))
                    .collect()
            }
        }
    }

    #[test]
    fn defaults_follow_the_documented_values() {
        let c = parse(&cluster_yaml("{ http: { path: /healthz } }"), "t.yaml").unwrap();
        let hc = c.clusters[0].health_checks.clone().unwrap();
        assert_eq!(hc.interval.to_string(), "5s");
        assert_eq!(hc.interval_jitter_percent, 10);
        assert_eq!(hc.timeout.to_string(), "1s");
        assert_eq!((hc.unhealthy_threshold, hc.healthy_threshold), (3, 2));
        assert_eq!(hc.no_traffic_interval, None);
        let Some(HealthCheckKind::Http(h)) = hc.kind() else {
            panic!("not http: {hc:?}");
        };
        assert_eq!(h.host, None);
        assert!(h.expects(200));
        assert!(!h.expects(204), "Envoy's default is 200 only");
    }

    #[test]
    fn statuses_are_codes_or_half_open_ranges() {
        let c = parse(
            &cluster_yaml(
                "{ http: { path: /h, expected_statuses: [204, { start: 300, end: 400 }] } }",
            ),
            "t.yaml",
        )
        .unwrap();
        let hc = c.clusters[0].health_checks.clone().unwrap();
        let h = hc.http.unwrap();
        assert_eq!(
            h.expected_statuses,
            vec![
                StatusRange {
                    start: 204,
                    end: 205
                },
                StatusRange {
                    start: 300,
                    end: 400
                }
            ]
        );
        for (status, want) in [
            (200, false),
            (204, true),
            (300, true),
            (399, true),
            (400, false),
        ] {
            assert_eq!(h.expects(status), want, "{status}");
        }
    }

    #[test]
    fn grpc_and_tcp_parse() {
        let c = parse(
            &cluster_yaml(
                "{ grpc: { service_name: echo, authority: svc.local }, interval: 100ms }",
            ),
            "t.yaml",
        )
        .unwrap();
        let hc = c.clusters[0].health_checks.clone().unwrap();
        let Some(HealthCheckKind::Grpc(g)) = hc.kind() else {
            panic!("not grpc");
        };
        assert_eq!(g.service_name, "echo");
        assert_eq!(g.authority.as_deref(), Some("svc.local"));
        let c = parse(&cluster_yaml("{ tcp: {} }"), "t.yaml").unwrap();
        assert_eq!(
            c.clusters[0].health_checks.as_ref().unwrap().kind(),
            Some(HealthCheckKind::Tcp)
        );
    }

    #[test]
    fn invalid_settings_are_reported_by_field() {
        let p = "clusters[0].health_checks";
        let cases = [
            (
                "{ interval: 1ms, tcp: {} }",
                format!("{p}.interval: must be at least 10ms"),
            ),
            (
                "{ timeout: 0s, tcp: {} }",
                format!("{p}.timeout: must be greater than 0s"),
            ),
            (
                "{ interval_jitter_percent: 60, tcp: {} }",
                format!("{p}.interval_jitter_percent: must be between 0 and 50"),
            ),
            (
                "{ unhealthy_threshold: 0, tcp: {} }",
                format!("{p}.unhealthy_threshold: must be at least 1"),
            ),
            (
                "{ healthy_threshold: 0, tcp: {} }",
                format!("{p}.healthy_threshold: must be at least 1"),
            ),
            (
                "{ no_traffic_interval: 0s, tcp: {} }",
                format!("{p}.no_traffic_interval: must be at least 10ms"),
            ),
            (
                "{ interval: 1s }",
                format!("{p}: needs a probe: one of `http`, `grpc` or `tcp`"),
            ),
            (
                "{ tcp: {}, grpc: {} }",
                format!("{p}: set only one of `http`, `grpc` or `tcp`"),
            ),
            (
                "{ http: { path: healthz } }",
                format!("{p}.http.path: must start with '/'"),
            ),
            (
                "{ http: { path: /h, host: 'a b' } }",
                format!("{p}.http.host: is not a host name (optionally with a port)"),
            ),
            (
                "{ http: { path: /h, expected_statuses: [] } }",
                format!("{p}.http.expected_statuses: must list at least one status"),
            ),
            (
                "{ http: { path: /h, expected_statuses: [200, { start: 300, end: 300 }] } }",
                format!(
                    "{p}.http.expected_statuses[1]: must be a status from 100 to 599, or a range with 100 <= start < end <= 600"
                ),
            ),
            (
                "{ http: { path: /h, expected_statuses: [99] } }",
                format!(
                    "{p}.http.expected_statuses[0]: must be a status from 100 to 599, or a range with 100 <= start < end <= 600"
                ),
            ),
            (
                "{ grpc: { authority: '' } }",
                format!("{p}.grpc.authority: is not a host name (optionally with a port)"),
            ),
        ];
        for (hc, want) in cases {
            assert_eq!(errors(hc), vec![want], "{hc}");
        }
    }

    #[test]
    fn errors_point_at_the_line() {
        let e = parse(
            &cluster_yaml("\n      interval: 1ms\n      tcp: {}"),
            "t.yaml",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.yaml:5:17: clusters[0].health_checks.interval: must be at least 10ms"
        );
    }

    #[test]
    fn a_resource_is_checked_on_its_own() {
        let mut c = parse(&cluster_yaml("{ tcp: {} }"), "t.yaml")
            .unwrap()
            .clusters
            .remove(0);
        c.health_checks.as_mut().unwrap().timeout = crate::Duration::default();
        let issues = crate::validate_resource(&crate::Resource::Cluster(c));
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].path, "cluster.health_checks.timeout");
    }

    #[test]
    fn round_trips_through_yaml() {
        for hc in [
            "{ http: { path: /h, host: a.b, expected_statuses: [204, { start: 300, end: 400 }] }, no_traffic_interval: 1m }",
            "{ grpc: { service_name: s, authority: a }, interval: 250ms }",
            "{ grpc: {} }",
            "{ tcp: {} }",
        ] {
            let c = parse(&cluster_yaml(hc), "t.yaml").unwrap();
            let text = serde_yaml_ng::to_string(&c).unwrap();
            assert_eq!(parse(&text, "again.yaml").unwrap(), c, "{text}");
        }
    }

    #[test]
    fn unknown_fields_are_errors() {
        let e = parse(&cluster_yaml("{ tcp: {}, intervall: 1s }"), "t.yaml").unwrap_err();
        assert!(e.to_string().contains("unknown field `intervall`"), "{e}");
    }
}
