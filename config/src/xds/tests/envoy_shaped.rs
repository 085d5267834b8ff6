//! Envoy-shaped resources, written as Envoy's docs show them, decoding into the model.

use super::*;

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
