//! The mapping's tests: round trips over the bundled examples, Envoy-shaped resources written
//! from Envoy's API docs, and errors naming the field.

use super::value::{SLUICE, from_struct};
use super::*;
use crate::Config;
use envoy_types::pb::envoy::config::cluster::v3 as pbc;
use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::config::listener::v3 as pbl;
use envoy_types::pb::envoy::config::route::v3 as pbr;
use prost::Message;
use serde_yaml_ng::Value;
use std::collections::BTreeSet;

fn examples() -> Vec<(String, Config)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut out = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    for p in paths {
        let text = std::fs::read_to_string(&p).unwrap();
        let name = p.display().to_string();
        let config = crate::parse(&text, &name).unwrap_or_else(|e| panic!("{name}: {e}"));
        out.push((name, config));
    }
    assert!(out.len() >= 5, "examples not found in {}", dir.display());
    out
}

/// Every key path under `metadata.filter_metadata.sluice`, prefixed with `at`.
fn sluice_keys(md: Option<&Metadata>, at: &str, out: &mut BTreeSet<String>) {
    fn walk(v: &Value, at: &str, out: &mut BTreeSet<String>) {
        match v {
            Value::Mapping(m) => {
                for (k, v) in m {
                    walk(v, &format!("{at}.{}", k.as_str().unwrap_or("?")), out);
                }
            }
            _ => {
                out.insert(at.to_string());
            }
        }
    }
    if let Some(s) = md.and_then(|m| m.filter_metadata.get(SLUICE)) {
        walk(&Value::Mapping(from_struct(s)), at, out);
    }
}

fn metadata_keys(any: &Any) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    match any.type_url.as_str() {
        CLUSTER => {
            let c = pbc::Cluster::decode(any.value.as_slice()).unwrap();
            sluice_keys(c.metadata.as_ref(), "cluster", &mut out);
        }
        LISTENER => {
            let l = pbl::Listener::decode(any.value.as_slice()).unwrap();
            sluice_keys(l.metadata.as_ref(), "listener", &mut out);
        }
        ROUTE => {
            let t = pbr::RouteConfiguration::decode(any.value.as_slice()).unwrap();
            sluice_keys(t.metadata.as_ref(), "route_table", &mut out);
            for v in &t.virtual_hosts {
                sluice_keys(v.metadata.as_ref(), "virtual_host", &mut out);
                for r in &v.routes {
                    sluice_keys(r.metadata.as_ref(), "route", &mut out);
                }
            }
        }
        _ => {}
    }
    out
}

#[test]
fn examples_round_trip() {
    let mut keys = BTreeSet::new();
    let mut count = 0;
    for (file, config) in examples() {
        for r in config.resources().values() {
            let any = encode(r);
            assert_eq!(any.type_url, type_url(r.kind()));
            keys.extend(metadata_keys(&any));
            let back =
                decode(&any.type_url, &any).unwrap_or_else(|e| panic!("{file}: {}: {e}", r.kind()));
            assert_eq!(back, vec![r.clone()], "{file}: {} {}", r.kind(), r.name());
            count += 1;
        }
    }
    assert!(count > 20, "{count} resources");
    eprintln!("sluice metadata keys: {keys:#?}");
}

/// A config setting, away from their defaults, most things the mapping covers.
const EVERYTHING: &str = r#"
listeners:
  - name: web
    address: 0.0.0.0:8443
    http:
      route_table: main
      max_request_header_bytes: 16KiB
      max_request_headers: 50
      request_header_timeout: 3s
      idle_timeout: 90s
      graceful_close_timeout: 2s
      stream_idle_timeout: 0s
      per_connection_buffer_limit_bytes: 64KiB
      http2: { max_concurrent_streams: 50, initial_stream_window_size: 128KiB, initial_connection_window_size: 2MiB }
      generate_request_id: false
      grpc_web: true
      path_normalization: { normalize: true, merge_slashes: false, escaped_slashes: reject }
      headers_with_underscores: reject
      strip_trailing_host_dot: false
      trust: { trusted_hops: 2 }
    tls:
      certificates:
        - { cert: /certs/a.crt, key: /certs/a.key }
      client_certificate: optional
      client_ca: /certs/ca.pem
      alpn: [h2]
      min_version: "1.3"
      handshake_timeout: 7s
      forward_client_cert: append_forward
  - name: passthrough
    address: 0.0.0.0:9443
    tcp:
      cluster: fallback
      idle_timeout: 10m
      tls_inspector_timeout: 2s
      sni:
        - { server_names: [api.example.com, "*.api.example.com"], cluster: api }
        - { server_names: [db.example.com], cluster: db }
route_tables:
  - name: main
    virtual_hosts:
      - name: all
        domains: ['*']
        request_headers:
          add: { x-a: "1", x-b: "2" }
          set: { x-c: "3" }
          remove: [x-d]
        routes:
          - name: split
            match:
              path_prefix: /split
              methods: [POST]
              headers:
                - { name: x-exact, exact: v }
                - { name: x-prefix, prefix: p }
                - { name: x-suffix, suffix: s }
                - { name: x-regex, regex: 'a.*' }
                - { name: x-present, present: true }
                - { name: x-absent, present: false }
                - { name: x-not, exact: no, invert: true }
              query_parameters:
                - { name: q1, exact: v }
                - { name: q2, prefix: p }
                - { name: q3, regex: '[0-9]+' }
                - { name: q4, present: true }
            weighted_clusters:
              - { cluster: api, weight: 90 }
              - { cluster: db, weight: 10 }
            timeout: 3s
            retry_policy:
              retry_on: [5xx, reset, retriable-status-codes, unavailable]
              num_retries: 4
              per_try_timeout: 500ms
              retriable_status_codes: [409, 429]
              back_off: { base_interval: 50ms, max_interval: 1s }
            fault:
              delay: { fixed: 100ms, percentage: 12.5 }
              abort: { http_status: 503, percentage: 0.1 }
            hash_policy:
              - { header: x-user }
              - { cookie: { name: session } }
              - { query_parameter: id }
              - { source_ip: true, terminal: true }
            response_headers:
              set: { cache-control: no-store }
              remove: [server]
          - match: { path: /exact }
            cluster: api
            rewrite: { host: internal.example, regex: { pattern: '^/exact$', substitution: /other } }
          - match: { regex: '/r/[a-z]+' }
            cluster: db
            retry_policy: {}
          - match: { prefix: /grpc }
            cluster: api
            rewrite: { prefix: / }
            fault: { abort: { grpc_status: 14 } }
          - match: { prefix: /moved }
            redirect: { scheme: https, host: new.example.com, port: 8443, path: /new, code: 302, strip_query: true }
          - match: { prefix: /gone }
            direct_response: { status: 410 }
clusters:
  - name: api
    protocol: http2
    connect_timeout: 2s
    lb_policy: ring_hash
    ring_hash: { minimum_ring_size: 2048, maximum_ring_size: 65536, hash_balance_factor: 150 }
    panic_threshold: 0
    locality: { enabled: false, min_cluster_size: 3 }
    per_connection_buffer_limit_bytes: 128KiB
    circuit_breakers: { max_connections: 10, max_pending_requests: 20, max_requests: 30, max_retries: 4 }
    outlier_detection:
      consecutive_5xx: 7
      consecutive_gateway_failure: 0
      failure_percentage_threshold: 90
      failure_percentage_minimum_hosts: 3
      failure_percentage_request_volume: 20
      interval: 5s
      base_ejection_time: 10s
      max_ejection_time: 60s
      max_ejection_percent: 50
    health_checks:
      interval: 2s
      interval_jitter_percent: 20
      timeout: 500ms
      unhealthy_threshold: 4
      healthy_threshold: 3
      no_traffic_interval: 30s
      http: { path: /health, host: api.internal, expected_statuses: [{ start: 200, end: 204 }, { start: 301, end: 302 }] }
    tls:
      sni: api.internal
      ca: /certs/ca.pem
      verify_subject_alt_names: [api.internal, "spiffe://corp/ns/a/sa/api"]
      cert: /certs/client.crt
      key: /certs/client.key
      min_version: "1.3"
    endpoints:
      - { address: 10.0.0.1:443, weight: 3, zone: z1 }
      - { address: 10.0.0.2:443, zone: z1 }
      - { address: "[2001:db8::1]:443", zone: z2 }
      - 10.0.0.3:443
  - name: db
    protocol: auto
    lb_policy: maglev
    maglev: { table_size: 5003 }
    outlier_detection: { enabled: false }
    health_checks: { interval: 1s, grpc: { service_name: db.v1, authority: db.internal } }
    discovery: { type: strict_dns, names: ['db-a.internal:5432', 'db-b.internal:5432'], min_refresh: 10s, family: v4 }
  - name: fallback
    lb_policy: least_request
    least_request: { choice_count: 3 }
    health_checks: { tcp: {} }
    discovery: { type: logical_dns, names: ['fallback.internal:80'], family: v6 }
  - name: srv
    lb_policy: random
    discovery: { type: dns_srv, names: ['_http._tcp.srv.internal'] }
  - name: rr
    lb_policy: round_robin
    endpoints: [127.0.0.1:1]
"#;

/// Settings Envoy has no field for: they travel in `filter_metadata["sluice"]` (see the
/// "xDS mapping" section of docs/architecture.md).
const SLUICE_ONLY: &[&str] = &[
    "cluster.lb_policy",       // peak_ewma (Envoy gets LEAST_REQUEST)
    "cluster.discovery.names", // dns_srv names (no Envoy equivalent)
    "cluster.discovery.type",  // dns_srv
    "cluster.pool.idle_timeout",
    "cluster.pool.max_idle_per_endpoint",
    "listener.http.authorization.allow",
    "listener.http.trust.internal_headers",
    "route.authorization.allow",
];

fn everything() -> Config {
    crate::parse(EVERYTHING, "everything.yaml").unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn everything_round_trips_through_envoy_fields() {
    let mut keys = BTreeSet::new();
    for r in everything().resources().values() {
        let any = encode(r);
        keys.extend(metadata_keys(&any));
        let back = decode(&any.type_url, &any).unwrap_or_else(|e| panic!("{}: {e}", r.kind()));
        assert_eq!(back, vec![r.clone()], "{} {}", r.kind(), r.name());
    }
    eprintln!("{keys:#?}");
    let extra: Vec<_> = keys
        .iter()
        .filter(|k| !SLUICE_ONLY.contains(&k.as_str()))
        .collect();
    assert!(
        extra.is_empty(),
        "settings carried in Sluice metadata, not Envoy fields: {extra:#?}"
    );
}

#[test]
fn examples_need_metadata_only_for_sluice_only_settings() {
    let mut keys = BTreeSet::new();
    for (_, config) in examples() {
        for r in config.resources().values() {
            keys.extend(metadata_keys(&encode(r)));
        }
    }
    let extra: Vec<_> = keys
        .iter()
        .filter(|k| !SLUICE_ONLY.contains(&k.as_str()))
        .collect();
    assert!(extra.is_empty(), "{extra:#?}");
}
