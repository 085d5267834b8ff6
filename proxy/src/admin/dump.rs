//! `/config_dump`: the effective config. The model serialises every default already; this adds
//! what applies without being written (a route's default timeout) and drops what does not
//! apply to a resource (a cluster's HTTP settings when only TCP listeners use it, the settings
//! blocks of the load-balancing policies it does not use), so what an operator reads is what
//! is in force. The result keeps the file's shape: saved as YAML it validates and loads to a
//! config in force the same (secrets aside, which are redacted; JSON is YAML).

use serde_json::Value;
use sluice_config::{Config, ListenerKind, RouteAction};
use std::collections::HashSet;

/// The settings block of each load-balancing policy that has one.
const POLICY_BLOCKS: [(&str, &str); 4] = [
    ("peak_ewma", "peak_ewma"),
    ("least_request", "least_request"),
    ("ring_hash", "ring_hash"),
    ("maglev", "maglev"),
];

/// Cluster settings only HTTP traffic uses.
const HTTP_ONLY_CLUSTER: [&str; 3] = ["protocol", "pool", "retry_budget"];

/// Circuit-breaker limits only HTTP traffic uses (`max_connections` bounds TCP too).
const HTTP_ONLY_BREAKERS: [&str; 3] = ["max_pending_requests", "max_requests", "max_retries"];

/// The effective config as JSON (before redaction).
pub(super) fn effective(config: &Config) -> Value {
    let mut v = serde_json::to_value(config).unwrap_or_default();
    let default_timeout =
        serde_json::to_value(sluice_config::DEFAULT_ROUTE_TIMEOUT).unwrap_or_default();
    // Clusters that HTTP routes send to; the others are used by TCP listeners only (or by
    // nothing yet, where the HTTP settings are kept: a route may come).
    let mut http_clusters: HashSet<&str> = HashSet::new();
    for table in &config.route_tables {
        for vh in &table.virtual_hosts {
            for r in &vh.routes {
                match &r.action {
                    RouteAction::Cluster(c) => {
                        http_clusters.insert(c);
                    }
                    RouteAction::WeightedClusters(w) => {
                        http_clusters.extend(w.iter().map(|w| w.cluster.as_str()));
                    }
                    RouteAction::Redirect(_) | RouteAction::DirectResponse(_) => {}
                }
            }
        }
    }
    let mut tcp_clusters: HashSet<&str> = HashSet::new();
    for l in &config.listeners {
        if let ListenerKind::Tcp(t) = &l.kind {
            tcp_clusters.extend(t.cluster.as_deref());
            tcp_clusters.extend(t.sni.iter().map(|s| s.cluster.as_str()));
        }
    }
    if let Some(tables) = v.get_mut("route_tables").and_then(Value::as_array_mut) {
        for route in tables
            .iter_mut()
            .filter_map(|t| t.get_mut("virtual_hosts").and_then(Value::as_array_mut))
            .flatten()
            .filter_map(|vh| vh.get_mut("routes").and_then(Value::as_array_mut))
            .flatten()
            .filter_map(Value::as_object_mut)
        {
            let forwards = route.contains_key("cluster") || route.contains_key("weighted_clusters");
            if forwards && !route.contains_key("timeout") {
                route.insert("timeout".into(), default_timeout.clone());
            }
        }
    }
    if let Some(clusters) = v.get_mut("clusters").and_then(Value::as_array_mut) {
        for c in clusters.iter_mut().filter_map(Value::as_object_mut) {
            let policy = c
                .get("lb_policy")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            for (p, block) in POLICY_BLOCKS {
                if p != policy {
                    c.remove(block);
                }
            }
            let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
            if tcp_clusters.contains(name) && !http_clusters.contains(name) {
                for key in HTTP_ONLY_CLUSTER {
                    c.remove(key);
                }
                if let Some(b) = c.get_mut("circuit_breakers").and_then(Value::as_object_mut) {
                    for key in HTTP_ONLY_BREAKERS {
                        b.remove(key);
                    }
                }
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "\
listeners:
  - { name: web, address: 127.0.0.1:0, http: { route_table: t } }
  - { name: db, address: 127.0.0.1:0, tcp: { cluster: pg } }
route_tables:
  - name: t
    virtual_hosts:
      - name: v
        domains: ['*']
        routes:
          - { name: slow, match: { prefix: /slow }, cluster: app, timeout: 1m }
          - { name: all, match: { prefix: / }, cluster: app }
          - { name: ok, match: { path: /ok }, direct_response: { status: 200 } }
clusters:
  - { name: app, lb_policy: ring_hash, endpoints: [127.0.0.1:9] }
  - { name: pg, endpoints: [127.0.0.1:5432] }
";

    #[test]
    fn defaults_in_force_are_shown_and_what_does_not_apply_is_not() {
        let config = sluice_config::parse(YAML, "t.yaml").expect("valid");
        let v = effective(&config);
        let routes = &v["route_tables"][0]["virtual_hosts"][0]["routes"];
        assert_eq!(routes[0]["timeout"], "60s", "{routes}");
        assert_eq!(routes[1]["timeout"], "15s", "{routes}");
        assert!(routes[2].get("timeout").is_none(), "{routes}");
        let app = &v["clusters"][0];
        assert_eq!(app["ring_hash"]["minimum_ring_size"], 1024, "{app}");
        for gone in ["peak_ewma", "least_request", "maglev"] {
            assert!(app.get(gone).is_none(), "{gone}: {app}");
        }
        assert!(app.get("pool").is_some() && app.get("protocol").is_some());
        let pg = &v["clusters"][1];
        assert!(pg.get("peak_ewma").is_some(), "{pg}");
        for gone in ["pool", "protocol", "retry_budget", "ring_hash"] {
            assert!(pg.get(gone).is_none(), "{gone}: {pg}");
        }
        assert_eq!(pg["circuit_breakers"]["max_connections"], 1024, "{pg}");
        assert!(pg["circuit_breakers"].get("max_requests").is_none(), "{pg}");
        // Saved (JSON is YAML), the dump validates and loads to a config whose dump is the
        // same: what was filled in or dropped changes nothing in force.
        let saved = serde_json::to_string_pretty(&v).expect("json");
        let again = sluice_config::parse(&saved, "dump.yaml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(effective(&again), v);
    }
}
