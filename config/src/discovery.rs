//! DNS discovery of a cluster's endpoints (Envoy's cluster `type`: `STRICT_DNS`, `LOGICAL_DNS`,
//! plus DNS SRV, which Envoy lacks). A cluster without `discovery` is static: its endpoints are
//! the ones listed in `endpoints`.

use crate::cluster::Cluster;
use crate::error::Issue;
use crate::units::Duration;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};

/// How a cluster finds its endpoints in DNS.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Discovery {
    /// `strict_dns`, `logical_dns` or `dns_srv`.
    #[serde(rename = "type")]
    pub kind: DiscoveryType,
    /// What to resolve: `host:port` for `strict_dns` and `logical_dns` (exactly one for
    /// `logical_dns`), an SRV name such as `_http._tcp.backend.example` (no port: the SRV
    /// records give it) for `dns_srv`.
    pub names: Vec<String>,
    /// DNS servers (`ip:port`, queried over UDP, then TCP for truncated answers). Default: the
    /// system's (`/etc/resolv.conf`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolvers: Vec<SocketAddr>,
    /// Shortest time between two resolutions, whatever the record TTL says; also the first
    /// retry delay after a failed resolution. Default `5s` (Envoy's `dns_refresh_rate`).
    #[serde(default = "default_min_refresh")]
    pub min_refresh: Duration,
    /// Longest time between two resolutions, whatever the record TTL says; also the longest
    /// retry delay after failures. Default `300s`.
    #[serde(default = "default_max_refresh")]
    pub max_refresh: Duration,
    /// Time allowed for one query to one resolver (tried twice) before the resolution fails.
    /// Default `5s` (Envoy's `dns_query_timeout`).
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    /// Address family: `auto` (A and AAAA records), `v4` (A only) or `v6` (AAAA only).
    /// Default `auto`.
    #[serde(default)]
    pub family: AddressFamily,
}

/// The kind of DNS discovery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiscoveryType {
    /// Every address of every name is an endpoint (Envoy `STRICT_DNS`).
    StrictDns,
    /// Only the first address of the one name is the endpoint (Envoy `LOGICAL_DNS`): when it
    /// changes, pooled connections to the old address finish and new ones go to the new one.
    LogicalDns,
    /// Hosts and ports from SRV records (of the lowest priority present), each target's
    /// addresses an endpoint weighted by the record's weight.
    DnsSrv,
}

impl DiscoveryType {
    /// The name used in config, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DiscoveryType::StrictDns => "strict_dns",
            DiscoveryType::LogicalDns => "logical_dns",
            DiscoveryType::DnsSrv => "dns_srv",
        }
    }
}

/// Which address records are used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AddressFamily {
    /// A and AAAA (IPv4 addresses first).
    #[default]
    Auto,
    /// A only.
    V4,
    /// AAAA only.
    V6,
}

fn default_min_refresh() -> Duration {
    Duration::from_secs(5)
}
fn default_max_refresh() -> Duration {
    Duration::from_secs(300)
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

/// A name to resolve: the host and, for address lookups, the port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsName {
    /// Host name (or IP literal) to query.
    pub host: String,
    /// Port of the endpoints (`None` for SRV names: the records give it).
    pub port: Option<u16>,
}

impl DnsName {
    /// Parses `host:port` (`with_port`) or a bare SRV name.
    pub fn parse(s: &str, with_port: bool) -> Result<DnsName, String> {
        if !with_port {
            if s.contains(':') {
                return Err(format!(
                    "`{s}`: an SRV name has no port (the SRV records give it), such as `_http._tcp.backend.example`"
                ));
            }
            check_host(s)?;
            return Ok(DnsName {
                host: s.to_string(),
                port: None,
            });
        }
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(DnsName {
                host: a.ip().to_string(),
                port: Some(nonzero_port(a.port(), s)?),
            });
        }
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err(format!(
                "`{s}` needs a port, such as `backend.example:8080`"
            ));
        };
        let port: u16 = port
            .parse()
            .map_err(|_| format!("`{s}`: `{port}` is not a port number"))?;
        check_host(host)?;
        Ok(DnsName {
            host: host.to_string(),
            port: Some(nonzero_port(port, s)?),
        })
    }
}

fn nonzero_port(port: u16, s: &str) -> Result<u16, String> {
    if port == 0 {
        Err(format!("`{s}`: port must not be 0"))
    } else {
        Ok(port)
    }
}

/// A DNS name: labels of letters, digits, `-` and `_`, at most 63 bytes each and 253 in all.
fn check_host(h: &str) -> Result<(), String> {
    if h.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let name = h.strip_suffix('.').unwrap_or(h);
    if name.is_empty() || name.len() > 253 {
        return Err(format!("`{h}` is not a DNS name"));
    }
    for label in name.split('.') {
        if label.is_empty()
            || label.len() > 63
            || !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!("`{h}` is not a DNS name (bad label `{label}`)"));
        }
    }
    Ok(())
}

/// Checks a cluster's `discovery` (and that a DNS cluster lists no static endpoints); paths
/// start at `p`, the cluster.
pub(crate) fn check(p: &str, c: &Cluster) -> Vec<Issue> {
    let mut issues = Vec::new();
    let mut err = |path: String, message: String| issues.push(Issue { path, message });
    let Some(d) = &c.discovery else {
        return issues;
    };
    let dp = format!("{p}.discovery");
    if !c.endpoints.is_empty() {
        err(
            format!("{p}.endpoints"),
            format!(
                "a cluster with `discovery: {{ type: {} }}` takes its endpoints from DNS: list \
                 names in `discovery.names` instead (or drop `discovery` for static endpoints)",
                d.kind.as_str()
            ),
        );
    }
    if d.names.is_empty() {
        err(format!("{dp}.names"), "must list at least one name".into());
    }
    if d.kind == DiscoveryType::LogicalDns && d.names.len() > 1 {
        err(
            format!("{dp}.names"),
            "`logical_dns` takes exactly one name (use `strict_dns` for several)".into(),
        );
    }
    let with_port = d.kind != DiscoveryType::DnsSrv;
    for (i, n) in d.names.iter().enumerate() {
        if let Err(m) = DnsName::parse(n, with_port) {
            err(format!("{dp}.names[{i}]"), m);
        }
    }
    for (i, r) in d.resolvers.iter().enumerate() {
        if r.port() == 0 || r.ip().is_unspecified() {
            err(
                format!("{dp}.resolvers[{i}]"),
                format!("{r} is not a resolver address (an IP and a non-zero port)"),
            );
        }
    }
    if d.min_refresh.is_zero() {
        err(
            format!("{dp}.min_refresh"),
            "must be greater than 0s".into(),
        );
    }
    if d.max_refresh.get() < d.min_refresh.get() {
        err(
            format!("{dp}.max_refresh"),
            "must be at least `min_refresh`".into(),
        );
    }
    if d.timeout.is_zero() {
        err(format!("{dp}.timeout"), "must be greater than 0s".into());
    }
    issues
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issues(cluster: &str) -> Vec<String> {
        let yaml = format!("clusters:\n  - {cluster}\n");
        match crate::parse(&yaml, "t.yaml") {
            Ok(_) => Vec::new(),
            Err(e) => e.to_string().lines().map(str::to_string).collect(),
        }
    }

    #[test]
    fn defaults_are_envoy_like() {
        let c = crate::parse(
            "clusters:\n  - { name: c, discovery: { type: strict_dns, names: ['backend.local:8080'] } }\n",
            "t.yaml",
        )
        .unwrap();
        let d = c.clusters[0].discovery.clone().unwrap();
        assert_eq!(d.kind, DiscoveryType::StrictDns);
        assert_eq!(d.min_refresh.get(), std::time::Duration::from_secs(5));
        assert_eq!(d.max_refresh.get(), std::time::Duration::from_secs(300));
        assert_eq!(d.timeout.get(), std::time::Duration::from_secs(5));
        assert_eq!(d.family, AddressFamily::Auto);
        assert!(d.resolvers.is_empty());
        assert!(c.clusters[0].endpoints.is_empty());
    }

    #[test]
    fn errors_name_the_field() {
        let e = issues(
            "{ name: c, endpoints: [127.0.0.1:1], discovery: { type: strict_dns, names: ['a:1'] } }",
        );
        assert!(
            e.iter().any(|l| l.contains("clusters[0].endpoints")
                && l.contains("takes its endpoints from DNS")),
            "{e:?}"
        );
        let e = issues("{ name: c, discovery: { type: strict_dns, names: [] } }");
        assert!(
            e.iter().any(|l| l.contains("clusters[0].discovery.names")),
            "{e:?}"
        );
        let e = issues("{ name: c, discovery: { type: strict_dns, names: ['backend'] } }");
        assert!(
            e.iter()
                .any(|l| l.contains("discovery.names[0]") && l.contains("needs a port")),
            "{e:?}"
        );
        let e = issues("{ name: c, discovery: { type: dns_srv, names: ['_http._tcp.b:80'] } }");
        assert!(
            e.iter()
                .any(|l| l.contains("discovery.names[0]") && l.contains("no port")),
            "{e:?}"
        );
        let e = issues("{ name: c, discovery: { type: logical_dns, names: ['a:1', 'b:1'] } }");
        assert!(e.iter().any(|l| l.contains("exactly one name")), "{e:?}");
        let e = issues(
            "{ name: c, discovery: { type: strict_dns, names: ['a:1'], min_refresh: 10s, max_refresh: 1s } }",
        );
        assert!(
            e.iter().any(|l| l.contains("discovery.max_refresh")),
            "{e:?}"
        );
        let e = issues(
            "{ name: c, discovery: { type: strict_dns, names: ['a:1'], resolvers: ['0.0.0.0:53'] } }",
        );
        assert!(
            e.iter().any(|l| l.contains("discovery.resolvers[0]")),
            "{e:?}"
        );
        let e = issues("{ name: c, discovery: { type: strict_dns, names: ['bad name!:1'] } }");
        assert!(e.iter().any(|l| l.contains("not a DNS name")), "{e:?}");
        // A static cluster still needs endpoints.
        let e = issues("{ name: c }");
        assert!(
            e.iter().any(|l| l.contains("at least one endpoint")),
            "{e:?}"
        );
    }

    #[test]
    fn names_parse() {
        assert_eq!(
            DnsName::parse("backend.local:8080", true),
            Ok(DnsName {
                host: "backend.local".into(),
                port: Some(8080)
            })
        );
        assert_eq!(
            DnsName::parse("[::1]:80", true).map(|n| n.host),
            Ok("::1".to_string())
        );
        assert_eq!(
            DnsName::parse("_http._tcp.backend.example.", false).map(|n| n.port),
            Ok(None)
        );
        assert!(DnsName::parse("b:0", true).is_err());
        assert!(DnsName::parse("b:x", true).is_err());
        assert!(DnsName::parse(":80", true).is_err());
    }

    #[test]
    fn round_trips_through_yaml() {
        let c = crate::parse(
            "clusters:\n  - { name: c, discovery: { type: dns_srv, names: ['_h._tcp.b'], resolvers: ['127.0.0.1:53'], min_refresh: 1s, family: v6 } }\n",
            "t.yaml",
        )
        .unwrap();
        let text = serde_yaml_ng::to_string(&c).unwrap();
        assert_eq!(crate::parse(&text, "again.yaml").unwrap(), c);
    }

    #[test]
    fn dns_clusters_carry_no_endpoints_resource() {
        let c = crate::parse(
            "clusters:\n  - { name: c, discovery: { type: strict_dns, names: ['b:1'] } }\n",
            "t.yaml",
        )
        .unwrap();
        let r = c.resources();
        assert!(r.contains_key(&(crate::ResourceType::Cluster, "c".into())));
        assert!(!r.contains_key(&(crate::ResourceType::Endpoints, "c".into())));
    }
}
