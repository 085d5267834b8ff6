//! Errors: unsupported and malformed fields, named by their path.

use super::*;

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
        ResourceType::Secret,
    ] {
        assert_eq!(resource_type(type_url(k)), Some(k));
    }
    assert_eq!(resource_type("type.googleapis.com/x.Y"), None);
    let any = pack_any(&cluster_named("c"));
    let e = decode(LISTENER, &any).unwrap_err();
    assert_eq!(e.field, "type_url");
    let e = decode(
        "type.googleapis.com/x.Y",
        &Any {
            type_url: "type.googleapis.com/x.Y".into(),
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
    c.cluster_discovery_type = Some(pbc::cluster::ClusterDiscoveryType::Type(
        pbc::cluster::DiscoveryType::Eds as i32,
    ));
    c.eds_cluster_config = Some(pbc::cluster::EdsClusterConfig {
        service_name: "outbound|80||c.default".into(),
        ..Default::default()
    });
    assert_eq!(
        decode(CLUSTER, &pack_any(&c)).unwrap_err().field,
        "eds_cluster_config.service_name"
    );
    c.eds_cluster_config = Some(pbc::cluster::EdsClusterConfig {
        service_name: "c".into(),
        ..Default::default()
    });
    assert!(decode(CLUSTER, &pack_any(&c)).is_ok());
    let mut c = cluster_named("c");
    c.lb_subset_config = Some(Default::default());
    assert_eq!(
        decode(CLUSTER, &pack_any(&c)).unwrap_err().field,
        "lb_subset_config"
    );
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

#[test]
fn http_listener_chains_must_differ_only_in_certificates() {
    let c = everything();
    let any = encode(&resource(&c, ResourceType::Listener, "web"));
    let pb: pbl::Listener = unpack_as(&any);
    assert!(pb.filter_chains.len() > 1);
    // Another HCM on the second chain.
    let mut other = pb.clone();
    other.filter_chains[1].filters =
        quick_start_listener(vec![http_filter("envoy.filters.http.router")]).filter_chains[0]
            .filters
            .clone();
    let e = decode(LISTENER, &pack_any(&other)).unwrap_err();
    assert_eq!(e.field, "filter_chains[1].filters[0]");
    // Other TLS settings on the second chain.
    let mut other = pb.clone();
    other.filter_chains[1].transport_socket_connect_timeout = secs(1, 0);
    let e = decode(LISTENER, &pack_any(&other)).unwrap_err();
    assert_eq!(e.field, "filter_chains[1].transport_socket");
    // Server names without the tls_inspector.
    let mut other = pb;
    other.listener_filters.clear();
    let e = decode(LISTENER, &pack_any(&other)).unwrap_err();
    assert_eq!(e.field, "filter_chains[1].filter_chain_match.server_names");
}

#[test]
fn tcp_proxy_access_logs_map_and_those_sluice_would_not_write_are_refused() {
    let listener = |chains: Vec<pbl::FilterChain>| pbl::Listener {
        name: "db".into(),
        address: sock("127.0.0.1", 5432),
        filter_chains: chains,
        listener_filters: vec![pbl::ListenerFilter {
            name: "envoy.filters.listener.tls_inspector".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let with_log = |mut chain: pbl::FilterChain, log: Option<&crate::AccessLog>| {
        let Some(pbl::filter::ConfigType::TypedConfig(a)) = &mut chain.filters[0].config_type
        else {
            panic!("typed config")
        };
        let mut t: TcpProxy = unpack_as(a);
        t.access_log = match log {
            Some(l) => vec![crate::xds::access_log::to_pb(l)],
            // A logger without a config: not one Sluice can write.
            None => vec![Default::default()],
        };
        *a = pack_any(&t);
        chain
    };
    let ok = listener(vec![tcp_chain("postgres", &[])]);
    assert!(decode(LISTENER, &pack_any(&ok)).is_ok());
    // A TCP proxy's file logger becomes the listener's access log; every SNI chain carries it.
    let log = crate::AccessLog {
        path: "/var/log/tcp.log".into(),
        format: crate::AccessLogFormat::Text,
        min_status: 0,
        sample: 0.5,
    };
    let l = listener(vec![
        with_log(tcp_chain("postgres", &[]), Some(&log)),
        with_log(tcp_chain("pg-eu", &["eu.db.example"]), Some(&log)),
    ]);
    let got = decode(LISTENER, &pack_any(&l)).unwrap();
    let [Resource::Listener(got)] = got.as_slice() else {
        panic!("{got:?}")
    };
    let crate::ListenerKind::Tcp(t) = &got.kind else {
        panic!("{got:?}")
    };
    assert_eq!(t.access_log.as_deref(), Some(&log));
    // Chains whose logs differ: one listener has one log.
    let mut other = log.clone();
    other.path = "stdout".into();
    let l = listener(vec![
        with_log(tcp_chain("postgres", &[]), Some(&log)),
        with_log(tcp_chain("pg-eu", &["eu.db.example"]), Some(&other)),
    ]);
    let e = decode(LISTENER, &pack_any(&l)).unwrap_err();
    assert_eq!(
        e.field,
        "filter_chains[1].filters[0].typed_config.access_log"
    );
    // A logger Sluice cannot write is refused, not dropped.
    let l = listener(vec![with_log(tcp_chain("postgres", &[]), None)]);
    let e = decode(LISTENER, &pack_any(&l)).unwrap_err();
    assert_eq!(
        e.field,
        "filter_chains[0].filters[0].typed_config.access_log[0].typed_config"
    );
    // A listener's connection-level access log.
    let mut l = ok.clone();
    l.access_log = vec![Default::default()];
    assert_eq!(
        decode(LISTENER, &pack_any(&l)).unwrap_err().field,
        "access_log"
    );
}
