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

// ---- Envoy-shaped resources, written as Envoy's docs show them ----

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

/// Envoy's quick-start listener (`listener_0`): an HCM with an inline `route_config`, an
/// access log (harmless: ignored) and the router.
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
        access_log: vec![Default::default()],
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

#[test]
fn envoy_quick_start_listener_decodes_into_listener_and_route_table() {
    let l = quick_start_listener(vec![http_filter("envoy.filters.http.router")]);
    let got = decode(LISTENER, &pack_any(&l)).unwrap();
    assert_eq!(
        got,
        vec![
            model(QUICK_START, ResourceType::Listener, "listener_0"),
            model(QUICK_START, ResourceType::RouteTable, "local_route"),
        ]
    );
}

#[test]
fn envoy_quick_start_cluster_decodes_into_a_logical_dns_cluster() {
    // LOGICAL_DNS, V4_ONLY, an inline load_assignment and an UpstreamTlsContext with `sni`.
    let tls = pbtls::UpstreamTlsContext {
        sni: "www.envoyproxy.io".into(),
        ..Default::default()
    };
    let c = pbc::Cluster {
        name: "service_envoyproxy_io".into(),
        cluster_discovery_type: Some(pbc::cluster::ClusterDiscoveryType::Type(
            pbc::cluster::DiscoveryType::LogicalDns as i32,
        )),
        dns_lookup_family: pbc::cluster::DnsLookupFamily::V4Only as i32,
        load_assignment: Some(pbe::ClusterLoadAssignment {
            cluster_name: "service_envoyproxy_io".into(),
            endpoints: vec![pbe::LocalityLbEndpoints {
                lb_endpoints: vec![lb_endpoint("www.envoyproxy.io", 443)],
                ..Default::default()
            }],
            ..Default::default()
        }),
        transport_socket: Some(core::TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(core::transport_socket::ConfigType::TypedConfig(pack_any(
                &tls,
            ))),
        }),
        ..Default::default()
    };
    let got = decode(CLUSTER, &pack_any(&c)).unwrap();
    // A DNS cluster's endpoints are discovered: no Endpoints resource.
    assert_eq!(
        got,
        vec![model(
            QUICK_START,
            ResourceType::Cluster,
            "service_envoyproxy_io"
        )]
    );
}

#[test]
fn envoy_static_cluster_gives_cluster_and_endpoints() {
    // The static cluster of Envoy's "front proxy" style configs.
    let c = pbc::Cluster {
        name: "backend".into(),
        connect_timeout: secs(0, 250_000_000),
        lb_policy: pbc::cluster::LbPolicy::LeastRequest as i32,
        load_assignment: Some(pbe::ClusterLoadAssignment {
            cluster_name: "backend".into(),
            endpoints: vec![pbe::LocalityLbEndpoints {
                lb_endpoints: vec![lb_endpoint("10.1.0.1", 8080), lb_endpoint("10.1.0.2", 8080)],
                ..Default::default()
            }],
            ..Default::default()
        }),
        typed_extension_protocol_options: std::collections::HashMap::from([(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
            pack_any(&envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions {
                upstream_protocol_options: Some(
                    envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                        envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::ExplicitHttpConfig {
                            protocol_config: Some(
                                envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(Default::default()),
                            ),
                        },
                    ),
                ),
                ..Default::default()
            }),
        )]),
        ..Default::default()
    };
    let yaml = "clusters:\n  - { name: backend, protocol: http2, connect_timeout: 250ms, lb_policy: least_request, outlier_detection: { enabled: false }, endpoints: ['10.1.0.1:8080', '10.1.0.2:8080'] }\n";
    let got = decode(CLUSTER, &pack_any(&c)).unwrap();
    assert_eq!(
        got,
        vec![
            model(yaml, ResourceType::Cluster, "backend"),
            model(yaml, ResourceType::Endpoints, "backend"),
        ]
    );
}

#[test]
fn envoy_eds_cluster_and_assignment() {
    // EDS with a (non-ADS) api_config_source, as in Envoy's dynamic-config docs: where the
    // endpoints come from is the xDS client's business, so it decodes like `ads: {}`.
    let c = pbc::Cluster {
        name: "some_service".into(),
        connect_timeout: secs(1, 0),
        cluster_discovery_type: Some(pbc::cluster::ClusterDiscoveryType::Type(
            pbc::cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(pbc::cluster::EdsClusterConfig {
            eds_config: Some(core::ConfigSource {
                resource_api_version: core::ApiVersion::V3 as i32,
                config_source_specifier: Some(
                    core::config_source::ConfigSourceSpecifier::ApiConfigSource(
                        core::ApiConfigSource {
                            api_type: core::api_config_source::ApiType::Grpc as i32,
                            ..Default::default()
                        },
                    ),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }),
        outlier_detection: Some(pbc::OutlierDetection {
            consecutive_5xx: Some(UInt32Value { value: 3 }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let yaml = "clusters:\n  - { name: some_service, lb_policy: round_robin, outlier_detection: { consecutive_5xx: 3, consecutive_gateway_failure: 0, failure_percentage_threshold: 0 }, endpoints: ['127.0.0.1:1'] }\n";
    assert_eq!(
        decode(CLUSTER, &pack_any(&c)).unwrap(),
        vec![model(yaml, ResourceType::Cluster, "some_service")]
    );
    // Its ClusterLoadAssignment: localities with zones, weights; an UNHEALTHY endpoint takes
    // no traffic, so it is left out.
    let mut w = lb_endpoint("10.0.0.2", 80);
    w.load_balancing_weight = Some(UInt32Value { value: 5 });
    let mut sick = lb_endpoint("10.0.0.9", 80);
    sick.health_status = core::HealthStatus::Unhealthy as i32;
    let cla = pbe::ClusterLoadAssignment {
        cluster_name: "some_service".into(),
        endpoints: vec![
            pbe::LocalityLbEndpoints {
                locality: Some(core::Locality {
                    region: "eu".into(),
                    zone: "eu-1a".into(),
                    ..Default::default()
                }),
                lb_endpoints: vec![lb_endpoint("10.0.0.1", 80), w, sick],
                ..Default::default()
            },
            pbe::LocalityLbEndpoints {
                lb_endpoints: vec![lb_endpoint("::1", 80)],
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let yaml = "clusters:\n  - name: some_service\n    endpoints:\n      - { address: 10.0.0.1:80, zone: eu-1a }\n      - { address: 10.0.0.2:80, weight: 5, zone: eu-1a }\n      - '[::1]:80'\n";
    assert_eq!(
        decode(ENDPOINT, &pack_any(&cla)).unwrap(),
        vec![model(yaml, ResourceType::Endpoints, "some_service")]
    );
}

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

#[test]
fn envoy_route_configuration_decodes() {
    use pbr::route_action::ClusterSpecifier;
    use pbr::route_match::PathSpecifier as P;
    let mut api = route(
        P::Prefix("/api/".into()),
        pbr::route::Action::Route(pbr::RouteAction {
            cluster_specifier: Some(ClusterSpecifier::WeightedClusters(pbr::WeightedCluster {
                clusters: vec![
                    pbr::weighted_cluster::ClusterWeight {
                        name: "v1".into(),
                        weight: Some(UInt32Value { value: 75 }),
                        ..Default::default()
                    },
                    pbr::weighted_cluster::ClusterWeight {
                        name: "v2".into(),
                        weight: Some(UInt32Value { value: 25 }),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            })),
            prefix_rewrite: "/".into(),
            timeout: secs(2, 0),
            retry_policy: Some(pbr::RetryPolicy {
                retry_on: "5xx,connect-failure".into(),
                num_retries: Some(UInt32Value { value: 3 }),
                per_try_timeout: secs(0, 500_000_000),
                ..Default::default()
            }),
            ..Default::default()
        }),
    );
    let m = api.r#match.get_or_insert_default();
    m.headers = vec![pbr::HeaderMatcher {
        name: "x-canary".into(),
        header_match_specifier: Some(pbr::header_matcher::HeaderMatchSpecifier::ExactMatch(
            "1".into(),
        )),
        ..Default::default()
    }];
    m.query_parameters = vec![pbr::QueryParameterMatcher {
        name: "debug".into(),
        query_parameter_match_specifier: Some(
            pbr::query_parameter_matcher::QueryParameterMatchSpecifier::PresentMatch(true),
        ),
    }];
    let rc = pbr::RouteConfiguration {
        name: "local_route".into(),
        virtual_hosts: vec![
            pbr::VirtualHost {
                name: "backend".into(),
                domains: vec!["*".into()],
                routes: vec![
                    api,
                    route(
                        P::SafeRegex(envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher {
                            regex: "/items/[0-9]+".into(),
                            ..Default::default()
                        }),
                        pbr::route::Action::Route(pbr::RouteAction {
                            cluster_specifier: Some(ClusterSpecifier::Cluster("v1".into())),
                            ..Default::default()
                        }),
                    ),
                    route(
                        P::Path("/healthz".into()),
                        pbr::route::Action::DirectResponse(pbr::DirectResponseAction {
                            status: 200,
                            body: Some(core::DataSource {
                                specifier: Some(core::data_source::Specifier::InlineString(
                                    "ok".into(),
                                )),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                    ),
                ],
                ..Default::default()
            },
            pbr::VirtualHost {
                name: "http".into(),
                domains: vec!["example.com".into()],
                routes: vec![route(
                    P::Prefix("/".into()),
                    pbr::route::Action::Redirect(pbr::RedirectAction {
                        scheme_rewrite_specifier: Some(
                            pbr::redirect_action::SchemeRewriteSpecifier::HttpsRedirect(true),
                        ),
                        ..Default::default()
                    }),
                )],
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let yaml = r#"
route_tables:
  - name: local_route
    virtual_hosts:
      - name: backend
        domains: ['*']
        routes:
          - match:
              prefix: /api/
              headers: [{ name: x-canary, exact: "1" }]
              query_parameters: [{ name: debug, present: true }]
            weighted_clusters: [{ cluster: v1, weight: 75 }, { cluster: v2, weight: 25 }]
            rewrite: { prefix: / }
            timeout: 2s
            retry_policy: { retry_on: [5xx, connect-failure], num_retries: 3, per_try_timeout: 500ms }
          - match: { regex: '/items/[0-9]+' }
            cluster: v1
          - match: { path: /healthz }
            direct_response: { status: 200, body: ok }
      - name: http
        domains: [example.com]
        routes:
          - match: { prefix: / }
            redirect: { scheme: https }
clusters:
  - { name: v1, endpoints: ['127.0.0.1:1'] }
  - { name: v2, endpoints: ['127.0.0.1:2'] }
"#;
    assert_eq!(
        decode(ROUTE, &pack_any(&rc)).unwrap(),
        vec![model(yaml, ResourceType::RouteTable, "local_route")]
    );
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

#[test]
fn envoy_tcp_proxy_and_sni_passthrough_listeners_decode() {
    let plain = pbl::Listener {
        name: "db".into(),
        address: sock("127.0.0.1", 5432),
        filter_chains: vec![tcp_chain("postgres", &[])],
        ..Default::default()
    };
    // TLS passthrough as in Envoy's SNI docs: tls_inspector, one chain per server_names.
    let sni = pbl::Listener {
        name: "tls".into(),
        address: sock("0.0.0.0", 443),
        listener_filters: vec![pbl::ListenerFilter {
            name: "envoy.filters.listener.tls_inspector".into(),
            ..Default::default()
        }],
        filter_chains: vec![
            tcp_chain("a", &["a.example.com"]),
            tcp_chain("b", &["*.b.example.com", "b.example.com"]),
        ],
        ..Default::default()
    };
    let yaml = r#"
listeners:
  - { name: db, address: 127.0.0.1:5432, tcp: { cluster: postgres } }
  - name: tls
    address: 0.0.0.0:443
    tcp:
      sni:
        - { server_names: [a.example.com], cluster: a }
        - { server_names: ['*.b.example.com', b.example.com], cluster: b }
clusters:
  - { name: postgres, endpoints: ['127.0.0.1:1'] }
  - { name: a, endpoints: ['127.0.0.1:2'] }
  - { name: b, endpoints: ['127.0.0.1:3'] }
"#;
    assert_eq!(
        decode(LISTENER, &pack_any(&plain)).unwrap(),
        vec![model(yaml, ResourceType::Listener, "db")]
    );
    assert_eq!(
        decode(LISTENER, &pack_any(&sni)).unwrap(),
        vec![model(yaml, ResourceType::Listener, "tls")]
    );
    // Without the tls_inspector, server names cannot be read.
    let mut blind = sni.clone();
    blind.listener_filters.clear();
    let e = decode(LISTENER, &pack_any(&blind)).unwrap_err();
    assert_eq!(e.field, "filter_chains[0].filter_chain_match.server_names");
}

// ---- errors ----

#[test]
fn unsupported_http_filter_is_named_by_path_and_optional_ones_are_skipped() {
    let l = quick_start_listener(vec![
        http_filter("envoy.filters.http.cors"),
        http_filter("envoy.filters.http.lua"),
        http_filter("envoy.filters.http.router"),
    ]);
    let e = decode(LISTENER, &pack_any(&l)).unwrap_err();
    assert_eq!(
        e,
        DecodeError {
            name: "listener_0".into(),
            field: "filter_chains[0].filters[0].typed_config.http_filters[0]".into(),
            message: "unsupported filter \"envoy.filters.http.cors\"".into(),
        }
    );
    let mut cors = http_filter("envoy.filters.http.cors");
    cors.is_optional = true;
    let l = quick_start_listener(vec![
        cors,
        http_filter("envoy.filters.http.lua"),
        http_filter("envoy.filters.http.router"),
    ]);
    let e = decode(LISTENER, &pack_any(&l)).unwrap_err();
    assert_eq!(
        e.field,
        "filter_chains[0].filters[0].typed_config.http_filters[1]"
    );
    assert_eq!(
        e.to_string(),
        "\"listener_0\": filter_chains[0].filters[0].typed_config.http_filters[1]: \
         unsupported filter \"envoy.filters.http.lua\""
    );
    // Optional unknown filters only: ignored.
    let mut lua = http_filter("envoy.filters.http.lua");
    lua.is_optional = true;
    let l = quick_start_listener(vec![lua, http_filter("envoy.filters.http.router")]);
    assert_eq!(
        decode(LISTENER, &pack_any(&l)).unwrap()[0],
        model(QUICK_START, ResourceType::Listener, "listener_0")
    );
}

fn cluster_named(name: &str) -> pbc::Cluster {
    pbc::Cluster {
        name: name.into(),
        ..Default::default()
    }
}

#[test]
fn unsupported_cluster_type_is_an_error() {
    let mut c = cluster_named("orig");
    c.cluster_discovery_type = Some(pbc::cluster::ClusterDiscoveryType::Type(
        pbc::cluster::DiscoveryType::OriginalDst as i32,
    ));
    c.lb_policy = pbc::cluster::LbPolicy::ClusterProvided as i32;
    let e = decode(CLUSTER, &pack_any(&c)).unwrap_err();
    assert_eq!(
        (e.name.as_str(), e.field.as_str(), e.message.as_str()),
        ("orig", "type", "unsupported cluster type ORIGINAL_DST")
    );
    assert_eq!(
        e.describe(ResourceType::Cluster),
        "cluster \"orig\": type: unsupported cluster type ORIGINAL_DST"
    );
}

#[test]
fn bad_addresses_are_errors_naming_the_field() {
    let mut l = quick_start_listener(vec![http_filter("envoy.filters.http.router")]);
    l.address = sock("not-an-ip", 80);
    let e = decode(LISTENER, &pack_any(&l)).unwrap_err();
    assert_eq!(e.field, "address.socket_address.address");
    assert!(e.message.contains("not-an-ip"), "{e}");
    l.address = sock("127.0.0.1", 70000);
    let e = decode(LISTENER, &pack_any(&l)).unwrap_err();
    assert_eq!(e.field, "address.socket_address.port_value");
    let cla = pbe::ClusterLoadAssignment {
        cluster_name: "c".into(),
        endpoints: vec![pbe::LocalityLbEndpoints {
            lb_endpoints: vec![
                lb_endpoint("10.0.0.1", 80),
                lb_endpoint("backend.local", 80),
            ],
            ..Default::default()
        }],
        ..Default::default()
    };
    let e = decode(ENDPOINT, &pack_any(&cla)).unwrap_err();
    assert_eq!(
        e.field,
        "endpoints[0].lb_endpoints[1].endpoint.address.socket_address.address"
    );
}

#[test]
fn negative_and_invalid_durations_are_errors() {
    let mut c = cluster_named("backend");
    c.connect_timeout = secs(-1, 0);
    let e = decode(CLUSTER, &pack_any(&c)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "\"backend\": connect_timeout: must not be negative"
    );
    c.connect_timeout = secs(0, 0);
    let e = decode(CLUSTER, &pack_any(&c)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "\"backend\": connect_timeout: must be positive"
    );
    let rc = pbr::RouteConfiguration {
        name: "t".into(),
        virtual_hosts: vec![pbr::VirtualHost {
            name: "v".into(),
            domains: vec!["*".into()],
            routes: vec![route(
                pbr::route_match::PathSpecifier::Prefix("/".into()),
                pbr::route::Action::Route(pbr::RouteAction {
                    cluster_specifier: Some(pbr::route_action::ClusterSpecifier::Cluster(
                        "c".into(),
                    )),
                    timeout: secs(1, 1_000_000_000),
                    ..Default::default()
                }),
            )],
            ..Default::default()
        }],
        ..Default::default()
    };
    let e = decode(ROUTE, &pack_any(&rc)).unwrap_err();
    assert_eq!(e.field, "virtual_hosts[0].routes[0].route.timeout");
}

#[test]
fn model_validation_applies_to_decoded_resources() {
    let mut zero = lb_endpoint("10.0.0.1", 80);
    zero.load_balancing_weight = Some(UInt32Value { value: 0 });
    let cla = pbe::ClusterLoadAssignment {
        cluster_name: "c".into(),
        endpoints: vec![pbe::LocalityLbEndpoints {
            lb_endpoints: vec![zero],
            ..Default::default()
        }],
        ..Default::default()
    };
    let e = decode(ENDPOINT, &pack_any(&cla)).unwrap_err();
    assert_eq!(e.name, "c");
    assert!(e.field.contains("weight"), "{e}");
}

#[test]
fn type_urls_map_both_ways_and_mismatches_are_errors() {
    for k in [
        ResourceType::Cluster,
        ResourceType::Endpoints,
        ResourceType::RouteTable,
        ResourceType::Listener,
    ] {
        assert_eq!(resource_type(type_url(k)), Some(k));
    }
    assert_eq!(resource_type(SECRET), None);
    let any = pack_any(&cluster_named("c"));
    let e = decode(LISTENER, &any).unwrap_err();
    assert_eq!(e.field, "type_url");
    let e = decode(
        SECRET,
        &Any {
            type_url: SECRET.into(),
            value: vec![],
        },
    )
    .unwrap_err();
    assert!(e.message.contains("unsupported resource type"), "{e}");
    let e = decode(
        CLUSTER,
        &Any {
            type_url: CLUSTER.into(),
            value: vec![0xff],
        },
    )
    .unwrap_err();
    assert!(e.message.contains("not a valid protobuf"), "{e}");
}

#[test]
fn rbac_filters_carry_authorization_and_other_policies_are_refused() {
    use envoy_types::pb::envoy::config::rbac::v3 as rbac;
    use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac;
    use envoy_types::pb::envoy::r#type::matcher::v3::{
        StringMatcher, string_matcher::MatchPattern,
    };
    // As Envoy's RBAC docs show it: ALLOW for authenticated principals (or_ids).
    let principal = |p: MatchPattern| rbac::Principal {
        identifier: Some(rbac::principal::Identifier::Authenticated(
            rbac::principal::Authenticated {
                principal_name: Some(StringMatcher {
                    match_pattern: Some(p),
                    ..Default::default()
                }),
            },
        )),
    };
    let rules = |action: rbac::rbac::Action| rbac::Rbac {
        action: action as i32,
        policies: std::collections::HashMap::from([(
            "service-admin".to_string(),
            rbac::Policy {
                permissions: vec![rbac::Permission {
                    rule: Some(rbac::permission::Rule::Any(true)),
                }],
                principals: vec![rbac::Principal {
                    identifier: Some(rbac::principal::Identifier::OrIds(rbac::principal::Set {
                        ids: vec![
                            principal(MatchPattern::Exact("spiffe://corp/ns/a/sa/admin".into())),
                            principal(MatchPattern::Prefix("spiffe://corp/ns/ops/".into())),
                        ],
                    })),
                }],
                ..Default::default()
            },
        )]),
        ..Default::default()
    };
    let with_rbac = |r: rbac::Rbac| {
        let f = hcm::HttpFilter {
            name: "envoy.filters.http.rbac".into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(pack_any(&Rbac {
                rules: Some(r),
                ..Default::default()
            }))),
            ..Default::default()
        };
        let mut l = quick_start_listener(vec![f, http_filter("envoy.filters.http.router")]);
        // mTLS, which RBAC on principals needs (the model checks it).
        let file = |f: &str| {
            Some(core::DataSource {
                specifier: Some(core::data_source::Specifier::Filename(f.into())),
                ..Default::default()
            })
        };
        let tls = pbtls::DownstreamTlsContext {
            common_tls_context: Some(pbtls::CommonTlsContext {
                tls_certificates: vec![pbtls::TlsCertificate {
                    certificate_chain: file("/certs/server.crt"),
                    private_key: file("/certs/server.key"),
                    ..Default::default()
                }],
                validation_context_type: Some(
                    pbtls::common_tls_context::ValidationContextType::ValidationContext(
                        pbtls::CertificateValidationContext {
                            trusted_ca: file("/certs/ca.pem"),
                            ..Default::default()
                        },
                    ),
                ),
                ..Default::default()
            }),
            require_client_certificate: Some(envoy_types::pb::google::protobuf::BoolValue {
                value: true,
            }),
            ..Default::default()
        };
        l.filter_chains[0].transport_socket = Some(core::TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(core::transport_socket::ConfigType::TypedConfig(pack_any(
                &tls,
            ))),
        });
        l
    };
    let got = decode(
        LISTENER,
        &pack_any(&with_rbac(rules(rbac::rbac::Action::Allow))),
    )
    .unwrap();
    let Resource::Listener(Listener {
        kind: crate::ListenerKind::Http(h),
        ..
    }) = &got[0]
    else {
        panic!("{got:?}");
    };
    assert_eq!(
        h.authorization,
        crate::Authorization {
            allow: vec![
                "spiffe://corp/ns/a/sa/admin".into(),
                "spiffe://corp/ns/ops/*".into()
            ],
            deny: vec![],
        }
    );
    let e = decode(
        LISTENER,
        &pack_any(&with_rbac(rules(rbac::rbac::Action::Deny))),
    )
    .unwrap_err();
    assert_eq!(
        e.field,
        "filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.rules.action"
    );
}

fn unpack_as<T: Message + Default>(any: &Any) -> T {
    T::decode(any.value.as_slice()).unwrap()
}

fn resource(c: &Config, kind: ResourceType, name: &str) -> Resource {
    c.resources().remove(&(kind, name.to_string())).unwrap()
}

#[test]
fn encoded_resources_are_what_envoy_expects() {
    let c = everything();
    // Cluster: EDS over ADS, RING_HASH, thresholds, outlier detection, HTTP/2, TLS.
    let pb: pbc::Cluster = unpack_as(&encode(&resource(&c, ResourceType::Cluster, "api")));
    assert_eq!(
        pb.cluster_discovery_type,
        Some(pbc::cluster::ClusterDiscoveryType::Type(
            pbc::cluster::DiscoveryType::Eds as i32
        ))
    );
    assert!(matches!(
        pb.eds_cluster_config
            .as_ref()
            .and_then(|e| e.eds_config.as_ref())
            .and_then(|s| s.config_source_specifier.as_ref()),
        Some(core::config_source::ConfigSourceSpecifier::Ads(_))
    ));
    assert_eq!(pb.connect_timeout, secs(2, 0));
    assert_eq!(pb.lb_policy, pbc::cluster::LbPolicy::RingHash as i32);
    let t = &pb.circuit_breakers.as_ref().unwrap().thresholds[0];
    assert_eq!(t.max_requests, Some(UInt32Value { value: 30 }));
    let o = pb.outlier_detection.as_ref().unwrap();
    assert_eq!(o.consecutive_5xx, Some(UInt32Value { value: 7 }));
    assert_eq!(
        o.enforcing_consecutive_gateway_failure,
        Some(UInt32Value { value: 0 })
    );
    assert_eq!(
        o.enforcing_failure_percentage,
        Some(UInt32Value { value: 100 })
    );
    assert!(
        pb.typed_extension_protocol_options
            .contains_key(cluster::HTTP_PROTOCOL_OPTIONS)
    );
    let ts = pb.transport_socket.as_ref().unwrap();
    assert_eq!(ts.name, "envoy.transport_sockets.tls");
    let Some(core::transport_socket::ConfigType::TypedConfig(a)) = &ts.config_type else {
        panic!("no typed config")
    };
    let tls: pbtls::UpstreamTlsContext = unpack_as(a);
    assert_eq!(tls.sni, "api.internal");
    assert_eq!(
        tls.common_tls_context.unwrap().alpn_protocols,
        vec!["h2".to_string()]
    );
    assert!(
        pb.metadata.is_none(),
        "no Sluice-only settings: {:?}",
        pb.metadata
    );
    // Its endpoints: zones as localities, order and weights kept.
    let cla: pbe::ClusterLoadAssignment =
        unpack_as(&encode(&resource(&c, ResourceType::Endpoints, "api")));
    let zones: Vec<_> = cla
        .endpoints
        .iter()
        .map(|l| {
            (
                l.locality.as_ref().map(|l| l.zone.clone()),
                l.lb_endpoints.len(),
            )
        })
        .collect();
    assert_eq!(
        zones,
        vec![(Some("z1".into()), 2), (Some("z2".into()), 1), (None, 1)]
    );
    assert_eq!(
        cla.endpoints[0].lb_endpoints[0].load_balancing_weight,
        Some(UInt32Value { value: 3 })
    );
    // DNS cluster: STRICT_DNS with the names as socket addresses.
    let pb: pbc::Cluster = unpack_as(&encode(&resource(&c, ResourceType::Cluster, "db")));
    assert_eq!(
        pb.cluster_discovery_type,
        Some(pbc::cluster::ClusterDiscoveryType::Type(
            pbc::cluster::DiscoveryType::StrictDns as i32
        ))
    );
    assert_eq!(
        pb.load_assignment.unwrap().endpoints[0].lb_endpoints.len(),
        2
    );
    assert!(pb.outlier_detection.is_none());
    // The default policy, peak_ewma: LEAST_REQUEST for Envoy, the rest in Sluice metadata.
    let ex = crate::parse(
        "clusters:\n  - { name: c, endpoints: ['127.0.0.1:1'] }\n",
        "t.yaml",
    )
    .unwrap();
    let pb: pbc::Cluster = unpack_as(&encode(&resource(&ex, ResourceType::Cluster, "c")));
    assert_eq!(pb.lb_policy, pbc::cluster::LbPolicy::LeastRequest as i32);
    let mut keys = BTreeSet::new();
    sluice_keys(pb.metadata.as_ref(), "cluster", &mut keys);
    assert_eq!(keys, BTreeSet::from(["cluster.lb_policy".to_string()]));
    // Listener: a chain per set of server names, the HCM with RDS and filters rbac, route rbac, grpc_web, fault, router.
    let pb: pbl::Listener = unpack_as(&encode(&resource(&c, ResourceType::Listener, "web")));
    let chain = &pb.filter_chains[0];
    assert_eq!(
        chain.filters[0].name,
        "envoy.filters.network.http_connection_manager"
    );
    let Some(pbl::filter::ConfigType::TypedConfig(a)) = &chain.filters[0].config_type else {
        panic!("no HCM config")
    };
    let h: HttpConnectionManager = unpack_as(a);
    let Some(hcm::http_connection_manager::RouteSpecifier::Rds(rds)) = &h.route_specifier else {
        panic!("no RDS")
    };
    assert_eq!(rds.route_config_name, "main");
    let names: Vec<_> = h.http_filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "envoy.filters.http.rbac",
            "sluice.filters.http.route_rbac",
            "envoy.filters.http.grpc_web",
            "envoy.filters.http.fault",
            "envoy.filters.http.router"
        ]
    );
    assert_eq!(h.max_request_headers_kb, Some(UInt32Value { value: 16 }));
    assert!(chain.transport_socket.is_some());
    assert_eq!(chain.transport_socket_connect_timeout, secs(7, 0));
    let names: Vec<_> = pb
        .filter_chains
        .iter()
        .map(|c| {
            c.filter_chain_match
                .clone()
                .unwrap_or_default()
                .server_names
        })
        .collect();
    assert_eq!(
        names,
        [
            vec![],
            vec!["b.example.com".to_string()],
            vec!["c.example.com".into(), "*.c.example.com".into()]
        ]
    );
    assert!(pb.filter_chains.iter().all(|c| c.filters == chain.filters));
    assert_eq!(
        pb.listener_filters[0].name,
        "envoy.filters.listener.tls_inspector"
    );
    // SNI passthrough: tls_inspector, a chain per route, the default chain.
    let pb: pbl::Listener = unpack_as(&encode(&resource(
        &c,
        ResourceType::Listener,
        "passthrough",
    )));
    assert_eq!(
        pb.listener_filters[0].name,
        "envoy.filters.listener.tls_inspector"
    );
    assert_eq!(pb.listener_filters_timeout, secs(2, 0));
    assert_eq!(
        pb.filter_chains[1]
            .filter_chain_match
            .as_ref()
            .unwrap()
            .server_names,
        vec!["db.example.com".to_string()]
    );
    assert!(pb.default_filter_chain.is_some());
    // Routes: fault and route RBAC as per-filter config, methods as a :method matcher.
    let rc: pbr::RouteConfiguration =
        unpack_as(&encode(&resource(&c, ResourceType::RouteTable, "main")));
    let r = &rc.virtual_hosts[0].routes[0];
    assert!(
        r.typed_per_filter_config
            .contains_key("envoy.filters.http.fault")
    );
    assert_eq!(r.r#match.as_ref().unwrap().headers[0].name, ":method");
    let Some(pbr::route::Action::Route(a)) = &r.action else {
        panic!("not a route action")
    };
    assert_eq!(
        a.retry_policy.as_ref().unwrap().retry_on,
        "5xx,reset,retriable-status-codes,unavailable"
    );
    assert_eq!(a.hash_policy.len(), 4);
    let gone = &rc.virtual_hosts[0].routes[5];
    assert!(
        gone.typed_per_filter_config
            .contains_key("sluice.filters.http.route_rbac")
    );
}

#[test]
fn behaviour_changing_fields_without_a_model_equivalent_are_errors() {
    let table = |a: pbr::RouteAction, m: pbr::RouteMatch| pbr::RouteConfiguration {
        name: "t".into(),
        virtual_hosts: vec![pbr::VirtualHost {
            name: "v".into(),
            domains: vec!["*".into()],
            routes: vec![pbr::Route {
                r#match: Some(m),
                action: Some(pbr::route::Action::Route(pbr::RouteAction {
                    cluster_specifier: Some(pbr::route_action::ClusterSpecifier::Cluster(
                        "c".into(),
                    )),
                    ..a
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let prefix = pbr::RouteMatch {
        path_specifier: Some(pbr::route_match::PathSpecifier::Prefix("/".into())),
        ..Default::default()
    };
    let ok = table(pbr::RouteAction::default(), prefix.clone());
    assert!(decode(ROUTE, &pack_any(&ok)).is_ok());
    let idle = table(
        pbr::RouteAction {
            idle_timeout: secs(1, 0),
            ..Default::default()
        },
        prefix.clone(),
    );
    let e = decode(ROUTE, &pack_any(&idle)).unwrap_err();
    assert_eq!(e.field, "virtual_hosts[0].routes[0].route.idle_timeout");
    let grpc = table(
        pbr::RouteAction::default(),
        pbr::RouteMatch {
            grpc: Some(Default::default()),
            ..prefix.clone()
        },
    );
    // gRPC requests only: a content-type condition in the model.
    let Resource::RouteTable(t) = &decode(ROUTE, &pack_any(&grpc)).unwrap()[0] else {
        panic!("not a route table")
    };
    assert_eq!(
        t.virtual_hosts[0].routes[0].matcher.headers,
        vec![crate::HeaderMatcher {
            name: "content-type".into(),
            regex: Some(r"application/grpc(\+.*)?".into()),
            ..Default::default()
        }]
    );
    let tls_only = table(
        pbr::RouteAction::default(),
        pbr::RouteMatch {
            tls_context: Some(Default::default()),
            ..prefix
        },
    );
    let e = decode(ROUTE, &pack_any(&tls_only)).unwrap_err();
    assert_eq!(e.field, "virtual_hosts[0].routes[0].match.tls_context");
    let mut c = cluster_named("c");
    c.lb_subset_config = Some(Default::default());
    assert_eq!(
        decode(CLUSTER, &pack_any(&c)).unwrap_err().field,
        "lb_subset_config"
    );
}

#[test]
fn cluster_and_route_variants_round_trip() {
    // A grid of cluster and route shapes: every combination must come back unchanged.
    let mut clusters = String::new();
    let mut n = 0;
    for lb in [
        "peak_ewma",
        "round_robin",
        "random",
        "least_request",
        "ring_hash",
        "maglev",
    ] {
        for protocol in ["http1", "http2", "auto"] {
            for (outlier, tls, source) in [
                (
                    "",
                    "",
                    "endpoints: ['10.0.0.1:80', { address: '10.0.0.2:80', weight: 4 }]",
                ),
                (
                    "outlier_detection: { enabled: false },",
                    "tls: { sni: a.internal, min_version: '1.3' },",
                    "discovery: { type: strict_dns, names: ['a.internal:443'] }",
                ),
                (
                    "outlier_detection: { consecutive_5xx: 0 },",
                    "tls: { ca: /ca.pem, verify_subject_alt_names: [a.internal] },",
                    "discovery: { type: logical_dns, names: ['a.internal:443'], family: v6 }",
                ),
            ] {
                clusters.push_str(&format!(
                    "  - {{ name: c{n}, lb_policy: {lb}, protocol: {protocol}, {outlier} {tls} {source} }}\n"
                ));
                n += 1;
            }
        }
    }
    let mut routes = String::new();
    let matches = [
        "{ prefix: /a }",
        "{ path_prefix: /a }",
        "{ path: /a }",
        "{ regex: '/a/.*', methods: [GET] }",
        "{ prefix: /, headers: [{ name: x, present: false }], query_parameters: [{ name: q, regex: 'v.*' }] }",
    ];
    let actions = [
        "cluster: c0",
        "weighted_clusters: [{ cluster: c0, weight: 0 }, { cluster: c1, weight: 1 }]",
        "redirect: { path: /b, code: 307 }",
        "direct_response: { status: 503, body: down }",
        "cluster: c1, timeout: 0s, retry_policy: { num_retries: 0 }",
    ];
    for m in matches {
        for a in actions {
            routes.push_str(&format!("          - {{ match: {m}, {a} }}\n"));
        }
    }
    let yaml = format!(
        "route_tables:\n  - name: t\n    virtual_hosts:\n      - name: v\n        domains: ['*']\n        routes:\n{routes}clusters:\n{clusters}"
    );
    let config = crate::parse(&yaml, "grid.yaml").unwrap_or_else(|e| panic!("{e}"));
    let resources = config.resources();
    assert!(resources.len() > 50, "{}", resources.len());
    for r in resources.values() {
        let any = encode(r);
        let back = decode(&any.type_url, &any).unwrap_or_else(|e| panic!("{}: {e}", r.name()));
        assert_eq!(back, vec![r.clone()], "{} {}", r.kind(), r.name());
    }
}

#[test]
fn bad_sluice_metadata_is_an_error() {
    let c = crate::parse(
        "clusters:\n  - { name: c, endpoints: ['127.0.0.1:1'] }\n",
        "t.yaml",
    )
    .unwrap();
    let any = encode(&resource(&c, ResourceType::Cluster, "c"));
    let mut pb: pbc::Cluster = unpack_as(&any);
    let md = pb.metadata.get_or_insert_default();
    let s = md.filter_metadata.get_mut(SLUICE).unwrap();
    s.fields.insert(
        "no_such_setting".into(),
        envoy_types::pb::google::protobuf::Value {
            kind: Some(envoy_types::pb::google::protobuf::value::Kind::BoolValue(
                true,
            )),
        },
    );
    let e = decode(CLUSTER, &pack_any(&pb)).unwrap_err();
    assert_eq!(e.field, "metadata.filter_metadata.sluice");
    assert!(e.message.contains("no_such_setting"), "{e}");
}
