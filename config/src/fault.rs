//! Fault injection on a route (Envoy `envoy.filters.http.fault`, per route): delay requests
//! and abort them with an HTTP or gRPC status, each on a percentage of requests, optionally
//! driven by request headers from trusted peers.

use crate::error::Issue;
use crate::units::Duration;
use serde::{Deserialize, Serialize};

/// Faults injected into requests taking a route.
#[derive(Clone, Debug, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Wait before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    /// Answer with an error instead of forwarding (after the delay, when both apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
    /// Let request headers choose faults (Envoy's names): `x-envoy-fault-delay-request`
    /// (milliseconds), `x-envoy-fault-abort-request` (HTTP status),
    /// `x-envoy-fault-abort-grpc-request` (gRPC code), and the `…-percentage` of each (an
    /// integer 0–100; default 100). A header fault replaces the configured one of its kind.
    /// `x-envoy-*` headers from peers outside the listener's `trust.trusted_peers` are
    /// removed before routing, so only trusted peers can inject faults. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub header_control: bool,
}

/// A fixed delay.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultDelay {
    /// How long to wait before forwarding. It is spent before the route timeout starts.
    pub fixed: Duration,
    /// Share of requests delayed, 0–100 (fractions allowed). Default 100.
    #[serde(default = "hundred")]
    pub percentage: f64,
}

/// An abort: exactly one of `http_status` or `grpc_status`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultAbort {
    /// HTTP status to answer with (200–599). A gRPC request gets the gRPC status the HTTP
    /// status maps to (503 → 14 UNAVAILABLE), in a trailers-only response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// gRPC status code to answer with (0–16), in a trailers-only response (HTTP 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
    /// Share of requests aborted, 0–100 (fractions allowed). Default 100.
    #[serde(default = "hundred")]
    pub percentage: f64,
}

fn hundred() -> f64 {
    100.0
}

/// Checks a route's `fault` (`p` is its path); `forwards`: the route has a cluster.
pub(crate) fn check(p: &str, f: &Fault, forwards: bool) -> Vec<Issue> {
    let mut issues = Vec::new();
    let mut err = |path: String, message: &str| {
        issues.push(Issue {
            path,
            message: message.to_string(),
        })
    };
    if !forwards {
        err(
            p.to_string(),
            "only applies to routes with `cluster` or `weighted_clusters`",
        );
    }
    if f.delay.is_none() && f.abort.is_none() && !f.header_control {
        err(
            p.to_string(),
            "set `delay`, `abort` or `header_control: true`",
        );
    }
    let percent_ok = |v: f64| v.is_finite() && (0.0..=100.0).contains(&v);
    if let Some(d) = &f.delay
        && !percent_ok(d.percentage)
    {
        err(format!("{p}.delay.percentage"), "must be between 0 and 100");
    }
    if let Some(a) = &f.abort {
        if !percent_ok(a.percentage) {
            err(format!("{p}.abort.percentage"), "must be between 0 and 100");
        }
        match (a.http_status, a.grpc_status) {
            (Some(s), None) if !(200..=599).contains(&s) => err(
                format!("{p}.abort.http_status"),
                "must be between 200 and 599",
            ),
            (None, Some(c)) if c > 16 => err(
                format!("{p}.abort.grpc_status"),
                "must be a gRPC status code between 0 and 16",
            ),
            (Some(_), Some(_)) | (None, None) => err(
                format!("{p}.abort"),
                "set exactly one of `http_status` or `grpc_status`",
            ),
            _ => {}
        }
    }
    issues
}

#[cfg(test)]
mod tests {
    fn route(fault: &str) -> Result<crate::Config, String> {
        crate::parse(
            &format!(
                "route_tables:\n  - name: t\n    virtual_hosts:\n      - name: v\n        domains: ['*']\n        routes:\n          - {{ match: {{ prefix: / }}, cluster: c, fault: {fault} }}\n\
                 clusters:\n  - {{ name: c, endpoints: [127.0.0.1:1] }}\n"
            ),
            "t.yaml",
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let c = route("{ delay: { fixed: 2s }, abort: { http_status: 503 } }").unwrap();
        let f = c.route_tables[0].virtual_hosts[0].routes[0]
            .fault
            .clone()
            .unwrap();
        assert_eq!(f.delay.unwrap().percentage, 100.0);
        let a = f.abort.unwrap();
        assert_eq!((a.http_status, a.percentage), (Some(503), 100.0));
        assert!(!f.header_control);
    }

    #[test]
    fn round_trips_through_yaml() {
        let c = route(
            "{ delay: { fixed: 250ms, percentage: 12.5 }, abort: { grpc_status: 14, percentage: 1 }, header_control: true }",
        )
        .unwrap();
        let text = serde_yaml_ng::to_string(&c).unwrap();
        assert_eq!(crate::parse(&text, "again.yaml").unwrap(), c);
    }

    #[test]
    fn errors_name_the_field() {
        let e = route("{ abort: { http_status: 700 } }").unwrap_err();
        assert!(e.contains("routes[0].fault.abort.http_status"), "{e}");
        let e = route("{ abort: { grpc_status: 17 } }").unwrap_err();
        assert!(e.contains("fault.abort.grpc_status"), "{e}");
        let e = route("{ abort: { http_status: 503, grpc_status: 14 } }").unwrap_err();
        assert!(e.contains("exactly one of"), "{e}");
        let e = route("{ abort: { percentage: 5 } }").unwrap_err();
        assert!(e.contains("exactly one of"), "{e}");
        let e = route("{ delay: { fixed: 1s, percentage: 101 } }").unwrap_err();
        assert!(e.contains("fault.delay.percentage"), "{e}");
        let e = route("{}").unwrap_err();
        assert!(e.contains("header_control"), "{e}");
        assert!(route("{ header_control: true }").is_ok());
    }
}
