//! The mapping's tests: round trips over the bundled examples, Envoy-shaped resources written
//! from Envoy's API docs, and errors naming the field.

use super::value::{SLUICE, from_struct};
use super::*;
use crate::{Config, Listener};
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
      authorization: { allow: ['spiffe://corp/ns/web/*', 'spiffe://corp/ns/ops/sa/admin'], deny: ['spiffe://corp/ns/web/sa/untrusted'] }
    tls:
      certificates:
        - { cert: /certs/a.crt, key: /certs/a.key }
        - { cert: /certs/b.crt, key: /certs/b.key, server_names: [b.example.com] }
        - { cert: /certs/c.crt, key: /certs/c.key, server_names: [c.example.com, '*.c.example.com'] }
        - { cert: /certs/a-ecdsa.crt, key: /certs/a-ecdsa.key }
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
            authorization: { deny: ['spiffe://corp/*'] }
clusters:
  - name: api
    protocol: http2
    connect_timeout: 2s
    lb_policy: ring_hash
    ring_hash: { minimum_ring_size: 2048, maximum_ring_size: 65536, hash_balance_factor: 150 }
    panic_threshold: 0
    locality: { enabled: false, min_cluster_size: 3 }
    per_connection_buffer_limit_bytes: 128KiB
    pool: { idle_timeout: 20s, max_requests_per_http2_connection: 10, max_connection_age: 5m }
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
    pool: { max_requests_per_http2_connection: 7 }
    lb_policy: maglev
    maglev: { table_size: 5003 }
    outlier_detection: { enabled: false }
    health_checks: { interval: 1s, grpc: { service_name: db.v1, authority: db.internal } }
    discovery: { type: strict_dns, names: ['db-a.internal:5432', 'db-b.internal:5432'], resolvers: ['10.0.0.53:53', '[2001:db8::53]:53'], min_refresh: 10s, family: v4 }
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
    "cluster.pool.max_idle_per_endpoint",
    "listener.http.trust.internal_headers",
    // Reordered by the chains (the second default certificate joins the first's chain).
    "listener.tls.certificates",
];

fn everything() -> Config {
    crate::parse(EVERYTHING, "everything.yaml").unwrap_or_else(|e| panic!("{e}"))
}

// Helpers for the Envoy-shaped resources (built as Envoy's docs show them).

use envoy_types::pb::envoy::config::core::v3::{
    self as core, SocketAddress, address, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3 as pbe;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    self as hcm, HttpConnectionManager,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as pbtls;
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
use value::any as pack_any;

fn sock(ip: &str, port: u32) -> Option<core::Address> {
    Some(core::Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    })
}

fn secs(s: i64, nanos: i32) -> Option<PbDuration> {
    Some(PbDuration { seconds: s, nanos })
}

fn lb_endpoint(ip: &str, port: u32) -> pbe::LbEndpoint {
    pbe::LbEndpoint {
        host_identifier: Some(pbe::lb_endpoint::HostIdentifier::Endpoint(pbe::Endpoint {
            address: sock(ip, port),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The model resource of this type and name in a (valid) Sluice YAML config.
fn model(yaml: &str, kind: ResourceType, name: &str) -> Resource {
    let c = crate::parse(yaml, "expected.yaml").unwrap_or_else(|e| panic!("{e}"));
    c.resources()
        .remove(&(kind, name.to_string()))
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn http_filter(name: &str) -> hcm::HttpFilter {
    hcm::HttpFilter {
        name: name.into(),
        ..Default::default()
    }
}

/// Envoy's quick-start listener (`listener_0`): an HCM with an inline `route_config`, the
/// stdout access log and the router.
fn quick_start_listener(http_filters: Vec<hcm::HttpFilter>) -> pbl::Listener {
    let route_config = pbr::RouteConfiguration {
        name: "local_route".into(),
        virtual_hosts: vec![pbr::VirtualHost {
            name: "local_service".into(),
            domains: vec!["*".into()],
            routes: vec![pbr::Route {
                r#match: Some(pbr::RouteMatch {
                    path_specifier: Some(pbr::route_match::PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(pbr::route::Action::Route(pbr::RouteAction {
                    host_rewrite_specifier: Some(
                        pbr::route_action::HostRewriteSpecifier::HostRewriteLiteral(
                            "www.envoyproxy.io".into(),
                        ),
                    ),
                    cluster_specifier: Some(pbr::route_action::ClusterSpecifier::Cluster(
                        "service_envoyproxy_io".into(),
                    )),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let m = HttpConnectionManager {
        stat_prefix: "ingress_http".into(),
        // As the quick start has it: the stdout logger with Envoy's default format.
        access_log: vec![envoy_types::pb::envoy::config::accesslog::v3::AccessLog {
            name: "envoy.access_loggers.stdout".into(),
            filter: None,
            config_type: Some(
                envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType::TypedConfig(
                    pack_any(
                        &envoy_types::pb::envoy::extensions::access_loggers::stream::v3::StdoutAccessLog::default(),
                    ),
                ),
            ),
        }],
        http_filters,
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(
            route_config,
        )),
        ..Default::default()
    };
    pbl::Listener {
        name: "listener_0".into(),
        address: sock("0.0.0.0", 10000),
        filter_chains: vec![pbl::FilterChain {
            filters: vec![pbl::Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(pbl::filter::ConfigType::TypedConfig(pack_any(&m))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

const QUICK_START: &str = r#"
listeners:
  - name: listener_0
    address: 0.0.0.0:10000
    http:
      route_table: local_route
      access_log: { path: stdout, format: text }
      # Envoy's defaults where the HCM leaves them unset:
      path_normalization: { normalize: false, merge_slashes: false, escaped_slashes: keep }
      headers_with_underscores: allow
      strip_trailing_host_dot: false
route_tables:
  - name: local_route
    virtual_hosts:
      - name: local_service
        domains: ['*']
        routes:
          - match: { prefix: / }
            cluster: service_envoyproxy_io
            rewrite: { host: www.envoyproxy.io }
clusters:
  - name: service_envoyproxy_io
    connect_timeout: 5s
    lb_policy: round_robin
    outlier_detection: { enabled: false }
    discovery: { type: logical_dns, names: ['www.envoyproxy.io:443'], family: v4 }
    tls: { sni: www.envoyproxy.io }
"#;

fn route(m: pbr::route_match::PathSpecifier, action: pbr::route::Action) -> pbr::Route {
    pbr::Route {
        r#match: Some(pbr::RouteMatch {
            path_specifier: Some(m),
            ..Default::default()
        }),
        action: Some(action),
        ..Default::default()
    }
}

fn tcp_chain(cluster: &str, server_names: &[&str]) -> pbl::FilterChain {
    let t = TcpProxy {
        stat_prefix: "tcp".into(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.into())),
        ..Default::default()
    };
    pbl::FilterChain {
        filter_chain_match: (!server_names.is_empty()).then(|| pbl::FilterChainMatch {
            server_names: server_names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }),
        filters: vec![pbl::Filter {
            name: "envoy.filters.network.tcp_proxy".into(),
            config_type: Some(pbl::filter::ConfigType::TypedConfig(pack_any(&t))),
        }],
        ..Default::default()
    }
}

// Helpers for the error tests.

fn cluster_named(name: &str) -> pbc::Cluster {
    pbc::Cluster {
        name: name.into(),
        ..Default::default()
    }
}

fn unpack_as<T: Message + Default>(any: &Any) -> T {
    T::decode(any.value.as_slice()).unwrap()
}

/// An encoded HTTP listener with the encoded route table `rc` inline in its HCMs
/// (`route_config` instead of `rds`), as Envoy's own configs often have it.
fn inline_route_config(listener: &Any, rc: &Any) -> Any {
    let mut l: pbl::Listener = unpack_as(listener);
    let rc: pbr::RouteConfiguration = unpack_as(rc);
    for chain in &mut l.filter_chains {
        for f in &mut chain.filters {
            let Some(pbl::filter::ConfigType::TypedConfig(a)) = &mut f.config_type else {
                continue;
            };
            let mut h: HttpConnectionManager = unpack_as(a);
            h.route_specifier = Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(
                rc.clone(),
            ));
            *a = pack_any(&h);
        }
    }
    pack_any(&l)
}

fn resource(c: &Config, kind: ResourceType, name: &str) -> Resource {
    c.resources().remove(&(kind, name.to_string())).unwrap()
}

mod envoy_json;
mod envoy_shaped;
mod errors;
mod random;
mod round_trip;
mod sds;
