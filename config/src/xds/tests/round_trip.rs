//! Model → Envoy → model round trips, and what the encoded resources look like to Envoy.

use super::*;

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
fn node_round_trips() {
    let n = crate::Node {
        id: Some("sidecar~10.0.0.1~web-1".into()),
        cluster: Some("web".into()),
        zone: Some("eu-1a".into()),
    };
    let pb = encode_node(&n);
    assert_eq!(pb.locality.as_ref().map(|l| l.zone.as_str()), Some("eu-1a"));
    assert_eq!(pb.user_agent_name, USER_AGENT);
    assert_eq!(decode_node(&pb), n);
    assert_eq!(decode_node(&Default::default()), crate::Node::default());
}

#[test]
fn upstream_tls_defaults_are_written_out_for_envoy() {
    // Sluice verifies against the system bundle and the SNI (or, for DNS clusters without
    // one, the endpoint's host name) by default; Envoy verifies nothing unless told.
    let c = crate::parse(
        "clusters:\n  - { name: s, tls: { sni: api.example.com }, endpoints: ['10.0.0.1:443'] }\n  - { name: d, tls: {}, discovery: { type: strict_dns, names: ['api.example.com:443'] } }\n",
        "t.yaml",
    )
    .unwrap();
    let tls_of = |name: &str| -> pbtls::UpstreamTlsContext {
        let pb: pbc::Cluster = unpack_as(&encode(&resource(&c, ResourceType::Cluster, name)));
        let Some(core::transport_socket::ConfigType::TypedConfig(a)) =
            pb.transport_socket.unwrap().config_type
        else {
            panic!("no TLS config")
        };
        unpack_as(&a)
    };
    let validation = |t: &pbtls::UpstreamTlsContext| {
        let Some(pbtls::common_tls_context::ValidationContextType::ValidationContext(v)) = t
            .common_tls_context
            .clone()
            .unwrap()
            .validation_context_type
        else {
            panic!("no validation context")
        };
        v
    };
    let s = tls_of("s");
    let v = validation(&s);
    assert_eq!(
        v.trusted_ca.unwrap().specifier,
        Some(core::data_source::Specifier::Filename(
            "/etc/ssl/certs/ca-certificates.crt".into()
        ))
    );
    assert_eq!(v.match_typed_subject_alt_names.len(), 1);
    assert!(!s.auto_host_sni);
    let d = tls_of("d");
    assert!(d.auto_host_sni && d.auto_sni_san_validation);
    assert!(validation(&d).match_typed_subject_alt_names.is_empty());
    // And back: the defaults again, with no Sluice metadata needed.
    for name in ["s", "d"] {
        let r = resource(&c, ResourceType::Cluster, name);
        let any = encode(&r);
        assert_eq!(decode(CLUSTER, &any).unwrap()[0], r);
        let mut keys = BTreeSet::new();
        sluice_keys(
            unpack_as::<pbc::Cluster>(&any).metadata.as_ref(),
            "cluster",
            &mut keys,
        );
        assert_eq!(keys, BTreeSet::from(["cluster.lb_policy".to_string()]));
    }
}

#[test]
fn repeated_header_names_round_trip() {
    // Found by the randomized round trips: header changes went through a YAML mapping, which
    // holds a name once, so the second `x-a` of `add` (and of `set`) was lost, for an RDS
    // route table and for a listener's inline one alike.
    let c = crate::parse(
        r#"
listeners:
  - { name: l, address: 127.0.0.1:8080, http: { route_table: t } }
route_tables:
  - name: t
    virtual_hosts:
      - name: v
        domains: ['*']
        request_headers: { add: { x-a: "1", x-b: "2", x-a: "3" }, set: { x-s: a, x-s: b } }
        routes:
          - match: { prefix: / }
            cluster: c
            response_headers: { add: { x-r: "1", x-r: "1" } }
clusters:
  - { name: c, endpoints: ['127.0.0.1:1'] }
"#,
        "t.yaml",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let t = resource(&c, ResourceType::RouteTable, "t");
    let Resource::RouteTable(table) = &t else {
        panic!("not a route table")
    };
    let vh = &table.virtual_hosts[0];
    assert_eq!(vh.request_headers.add.0.len(), 3, "the model keeps repeats");
    assert_eq!(vh.request_headers.set.0.len(), 2);
    assert_eq!(vh.routes[0].response_headers.add.0.len(), 2);
    let any = encode(&t);
    assert_eq!(decode(ROUTE, &any).unwrap(), vec![t.clone()]);
    // The same table inline in a listener (as Envoy's own configs often have it).
    let l = inline_route_config(&encode(&resource(&c, ResourceType::Listener, "l")), &any);
    let back = decode(LISTENER, &l).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back.get(1), Some(&t));
}
