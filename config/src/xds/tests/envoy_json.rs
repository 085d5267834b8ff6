//! Envoy resources written as JSON, the way Envoy's docs and `config_dump` show them (proto3
//! JSON: camelCase or original field names, `@type` for `Any`, durations as `"5s"`, enums by
//! name), decoding into the model. The JSON is read with Envoy's own `.proto` files (shipped in
//! the `envoy-types` crate, compiled here with `protox`) into dynamic messages, encoded to the
//! wire format, and handed to [`decode`] like anything an xDS server sends.

use super::*;
use prost_reflect::{DescriptorPool, DynamicMessage};
use std::path::PathBuf;
use std::sync::OnceLock;

/// The directory of Envoy's `.proto` files in the `envoy-types` crate the workspace locks.
fn proto_root() -> PathBuf {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock"))
        .expect("the workspace Cargo.lock");
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"envoy-types\""))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")))
        .and_then(|v| v.strip_suffix('"'))
        .expect("envoy-types in Cargo.lock");
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .expect("CARGO_HOME or HOME");
    let registry = cargo_home.join("registry/src");
    let found = std::fs::read_dir(&registry)
        .unwrap_or_else(|e| panic!("{}: {e}", registry.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.path().join(format!("envoy-types-{version}/proto")))
        .find(|p| p.is_dir());
    found.unwrap_or_else(|| {
        panic!(
            "envoy-types-{version}/proto not found under {}",
            registry.display()
        )
    })
}

/// Envoy's messages for the resource types and the extensions they carry, compiled once.
fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let root = proto_root();
        let includes: Vec<PathBuf> = [
            "data-plane-api",
            "xds",
            "googleapis",
            "protoc-gen-validate",
            "cel-spec",
            "opentelemetry-proto",
            "client_model",
        ]
        .iter()
        .map(|d| root.join(d))
        .filter(|d| d.is_dir())
        .collect();
        let files = [
            "envoy/config/listener/v3/listener.proto",
            "envoy/config/route/v3/route.proto",
            "envoy/config/cluster/v3/cluster.proto",
            "envoy/config/endpoint/v3/endpoint.proto",
            "envoy/extensions/transport_sockets/tls/v3/secret.proto",
            "envoy/extensions/transport_sockets/tls/v3/tls.proto",
            "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
            "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto",
            "envoy/extensions/filters/http/router/v3/router.proto",
            "envoy/extensions/filters/listener/tls_inspector/v3/tls_inspector.proto",
            "envoy/extensions/upstreams/http/v3/http_protocol_options.proto",
            "envoy/extensions/access_loggers/file/v3/file.proto",
            "envoy/extensions/access_loggers/stream/v3/stream.proto",
        ];
        let mut compiler = protox::Compiler::new(includes).expect("include paths");
        compiler.include_imports(true);
        compiler
            .open_files(files)
            .unwrap_or_else(|e| panic!("compiling Envoy's protos: {e}"));
        compiler.descriptor_pool()
    })
}

/// Reads `json` as the Envoy message of `type_url` and decodes it into model resources.
fn decode_json(type_url: &str, json: &str) -> Vec<Resource> {
    let name = type_url.trim_start_matches("type.googleapis.com/");
    let desc = pool()
        .get_message_by_name(name)
        .unwrap_or_else(|| panic!("{name} not in the pool"));
    let mut de = serde_json::Deserializer::from_str(json);
    let msg = DynamicMessage::deserialize(desc, &mut de)
        .unwrap_or_else(|e| panic!("{name}: invalid JSON for Envoy's proto: {e}"));
    let any = Any {
        type_url: type_url.to_string(),
        value: prost::Message::encode_to_vec(&msg),
    };
    decode(type_url, &any).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn quick_start_listener_json_gives_listener_and_route_table() {
    // Envoy's quick-start `envoy-demo.yaml` listener, as JSON.
    let json = r#"{
      "name": "listener_0",
      "address": { "socket_address": { "address": "0.0.0.0", "port_value": 10000 } },
      "filter_chains": [{
        "filters": [{
          "name": "envoy.filters.network.http_connection_manager",
          "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "ingress_http",
            "access_log": [{
              "name": "envoy.access_loggers.stdout",
              "typed_config": { "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog" }
            }],
            "http_filters": [{
              "name": "envoy.filters.http.router",
              "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" }
            }],
            "route_config": {
              "name": "local_route",
              "virtual_hosts": [{
                "name": "local_service",
                "domains": ["*"],
                "routes": [{
                  "match": { "prefix": "/" },
                  "route": { "host_rewrite_literal": "www.envoyproxy.io", "cluster": "service_envoyproxy_io" }
                }]
              }]
            }
          }
        }]
      }]
    }"#;
    assert_eq!(
        decode_json(LISTENER, json),
        vec![
            model(QUICK_START, ResourceType::Listener, "listener_0"),
            model(QUICK_START, ResourceType::RouteTable, "local_route"),
        ]
    );
}

#[test]
fn quick_start_cluster_json_gives_a_logical_dns_cluster() {
    // camelCase names, as `config_dump` prints them.
    let json = r#"{
      "name": "service_envoyproxy_io",
      "type": "LOGICAL_DNS",
      "dnsLookupFamily": "V4_ONLY",
      "loadAssignment": {
        "clusterName": "service_envoyproxy_io",
        "endpoints": [{ "lbEndpoints": [{ "endpoint": { "address": {
          "socketAddress": { "address": "www.envoyproxy.io", "portValue": 443 } } } }] }]
      },
      "transportSocket": {
        "name": "envoy.transport_sockets.tls",
        "typedConfig": {
          "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
          "sni": "www.envoyproxy.io"
        }
      }
    }"#;
    assert_eq!(
        decode_json(CLUSTER, json),
        vec![model(
            QUICK_START,
            ResourceType::Cluster,
            "service_envoyproxy_io"
        )]
    );
}

#[test]
fn route_configuration_json() {
    let json = r#"{
      "name": "api",
      "virtual_hosts": [{
        "name": "api",
        "domains": ["api.example.com"],
        "routes": [
          { "match": { "path": "/healthz" }, "direct_response": { "status": 200, "body": { "inline_string": "ok\n" } } },
          { "match": { "prefix": "/v2/", "headers": [{ "name": "x-canary", "string_match": { "exact": "1" } }] },
            "route": { "weighted_clusters": { "clusters": [
              { "name": "v2", "weight": 90 }, { "name": "v2-canary", "weight": 10 } ] },
              "timeout": "2.500s", "prefix_rewrite": "/" } },
          { "match": { "prefix": "/" }, "redirect": { "https_redirect": true } }
        ]
      }]
    }"#;
    let yaml = r#"
listeners:
  - { name: l, address: 127.0.0.1:80, http: { route_table: api } }
route_tables:
  - name: api
    virtual_hosts:
      - name: api
        domains: [api.example.com]
        routes:
          - match: { path: /healthz }
            direct_response: { status: 200, body: "ok\n" }
          - match: { prefix: /v2/, headers: [{ name: x-canary, exact: "1" }] }
            weighted_clusters: [{ cluster: v2, weight: 90 }, { cluster: v2-canary, weight: 10 }]
            timeout: 2500ms
            rewrite: { prefix: / }
          - match: { prefix: / }
            redirect: { scheme: https }
clusters:
  - { name: v2, endpoints: [127.0.0.1:1] }
  - { name: v2-canary, endpoints: [127.0.0.1:2] }
"#;
    assert_eq!(
        decode_json(ROUTE, json),
        vec![model(yaml, ResourceType::RouteTable, "api")]
    );
}

#[test]
fn cluster_load_assignment_json() {
    let json = r#"{
      "cluster_name": "backend",
      "endpoints": [
        { "locality": { "zone": "us-east-1a" }, "lb_endpoints": [
          { "endpoint": { "address": { "socket_address": { "address": "10.0.0.1", "port_value": 8080 } } },
            "load_balancing_weight": 3 },
          { "endpoint": { "address": { "socket_address": { "address": "10.0.0.2", "port_value": 8080 } } },
            "health_status": "UNHEALTHY" } ] },
        { "locality": { "zone": "us-east-1b" }, "lb_endpoints": [
          { "endpoint": { "address": { "socket_address": { "address": "2001:db8::7", "port_value": 8080 } } } } ] }
      ]
    }"#;
    let yaml = r#"
clusters:
  - name: backend
    endpoints:
      - { address: "10.0.0.1:8080", weight: 3, zone: us-east-1a }
      - { address: "[2001:db8::7]:8080", zone: us-east-1b }
"#;
    assert_eq!(
        decode_json(ENDPOINT, json),
        vec![model(yaml, ResourceType::Endpoints, "backend")]
    );
}

#[test]
fn secret_json_and_a_listener_naming_it() {
    let chain = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let key = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";
    let json = format!(
        r#"{{ "name": "default", "tls_certificate": {{
             "certificate_chain": {{ "inline_string": {chain:?} }},
             "private_key": {{ "inline_string": {key:?} }} }} }}"#
    );
    assert_eq!(
        decode_json(SECRET, &json),
        vec![Resource::Secret(crate::Secret {
            name: "default".into(),
            kind: crate::SecretKind::Certificate {
                cert_chain: chain.into(),
                private_key: crate::PrivateKeyPem(key.into()),
            },
        })]
    );
    // Inline bytes are base64 in proto3 JSON.
    let bundle = r#"{ "name": "ROOTCA", "validation_context": { "trusted_ca": {
        "inline_bytes": "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUIKLS0tLS1FTkQgQ0VSVElGSUNBVEUtLS0tLQo=" } } }"#;
    assert_eq!(
        decode_json(SECRET, bundle),
        vec![Resource::Secret(crate::Secret {
            name: "ROOTCA".into(),
            kind: crate::SecretKind::TrustBundle { ca: chain.into() },
        })]
    );
    // An Istio-style inbound listener: certificate and client CA by SDS over ADS.
    let listener = r#"{
      "name": "inbound",
      "address": { "socket_address": { "address": "0.0.0.0", "port_value": 15006 } },
      "filter_chains": [{
        "filters": [{ "name": "envoy.filters.network.http_connection_manager", "typed_config": {
          "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
          "stat_prefix": "inbound", "rds": { "route_config_name": "inbound", "config_source": { "ads": {} } },
          "http_filters": [{ "name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }] } }],
        "transport_socket": { "name": "envoy.transport_sockets.tls", "typed_config": {
          "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
          "require_client_certificate": true,
          "common_tls_context": {
            "tls_certificate_sds_secret_configs": [{ "name": "default", "sds_config": { "ads": {}, "resource_api_version": "V3" } }],
            "validation_context_sds_secret_config": { "name": "ROOTCA", "sds_config": { "ads": {}, "resource_api_version": "V3" } },
            "alpn_protocols": ["h2", "http/1.1"] } } }
      }]
    }"#;
    let got = decode_json(LISTENER, listener);
    let [Resource::Listener(l)] = got.as_slice() else {
        panic!("{got:?}");
    };
    let tls = l.tls.as_ref().expect("tls");
    assert_eq!(tls.certificates[0].secret.as_deref(), Some("default"));
    assert_eq!(tls.client_ca_secret.as_deref(), Some("ROOTCA"));
    assert_eq!(tls.client_certificate, crate::ClientCertificate::Required);
}

#[test]
fn file_access_log_json_with_a_template_and_filters() {
    // A file logger with a text template, errors only, one in ten sampled (as Envoy's docs
    // write them); Envoy's templates end in a newline.
    let json = r#"{
      "name": "web",
      "address": { "socket_address": { "address": "127.0.0.1", "port_value": 8080 } },
      "filter_chains": [{
        "filters": [{
          "name": "envoy.filters.network.http_connection_manager",
          "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "web",
            "rds": { "route_config_name": "main", "config_source": { "ads": {} } },
            "access_log": [{
              "name": "envoy.access_loggers.file",
              "filter": { "and_filter": { "filters": [
                { "status_code_filter": { "comparison": { "op": "GE", "value": { "default_value": 400, "runtime_key": "" } } } },
                { "runtime_filter": { "runtime_key": "", "percent_sampled": { "numerator": 10, "denominator": "HUNDRED" } } }
              ] } },
              "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": "/var/log/envoy/access.log",
                "log_format": { "text_format_source": { "inline_string": "%REQ(:METHOD)% %RESPONSE_CODE% %RESPONSE_FLAGS%\n" } }
              }
            }],
            "http_filters": [{
              "name": "envoy.filters.http.router",
              "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" }
            }]
          }
        }]
      }]
    }"#;
    let got = decode_json(LISTENER, json);
    let [Resource::Listener(l)] = got.as_slice() else {
        panic!("{got:?}")
    };
    let crate::ListenerKind::Http(h) = &l.kind else {
        panic!("{l:?}")
    };
    assert_eq!(
        h.access_log.as_deref(),
        Some(&crate::AccessLog {
            path: "/var/log/envoy/access.log".into(),
            format: crate::AccessLogFormat::Template(
                "%REQ(:METHOD)% %RESPONSE_CODE% %RESPONSE_FLAGS%".into()
            ),
            min_status: 400,
            sample: 0.1,
        })
    );
}
