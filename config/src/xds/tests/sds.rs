//! SDS: secrets, and TLS blocks naming them, both ways.

use super::*;
use crate::{PrivateKeyPem, Secret, SecretKind};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as pbtls;

const MESH: &str = r#"
listeners:
  - name: inbound
    address: 127.0.0.1:7143
    http: { route_table: t }
    tls:
      certificates: [{ secret: default }]
      client_certificate: required
      client_ca_secret: ROOTCA
route_tables:
  - name: t
    virtual_hosts:
      - { name: v, domains: ['*'], routes: [{ match: { prefix: / }, cluster: app }] }
clusters:
  - name: app
    endpoints: [127.0.0.1:9000]
    tls:
      cert_secret: default
      ca_secret: ROOTCA
      verify_subject_alt_names: [spiffe://sluice.local/ns/demo/sa/backend]
"#;

fn cert_secret() -> Secret {
    Secret {
        name: "default".into(),
        kind: SecretKind::Certificate {
            cert_chain: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
            private_key: PrivateKeyPem(
                "-----BEGIN PRIVATE KEY-----\nBBBB\n-----END PRIVATE KEY-----\n".into(),
            ),
        },
    }
}

#[test]
fn secrets_round_trip_and_never_print_their_key() {
    let bundle = Secret {
        name: "ROOTCA".into(),
        kind: SecretKind::TrustBundle {
            ca: "-----BEGIN CERTIFICATE-----\nCCCC\n-----END CERTIFICATE-----\n".into(),
        },
    };
    for s in [cert_secret(), bundle] {
        let r = Resource::Secret(s);
        let any = encode(&r);
        assert_eq!(any.type_url, SECRET);
        assert_eq!(decode(SECRET, &any).unwrap(), vec![r.clone()]);
        assert!(!format!("{r:?}").contains("BBBB"), "{r:?}");
    }
}

#[test]
fn tls_blocks_naming_secrets_round_trip_as_sds_references_over_ads() {
    let config = crate::parse(MESH, "mesh.yaml").unwrap();
    for (key, r) in config.resources() {
        let any = encode(&r);
        let back = decode(type_url(key.0), &any).unwrap();
        assert!(back.contains(&r), "{key:?}: {back:?}");
    }
    // What Envoy reads: the listener's certificate and CA by SDS over ADS.
    let l = unpack_as::<pbl::Listener>(&encode(&resource(
        &config,
        ResourceType::Listener,
        "inbound",
    )));
    let ts = l.filter_chains[0].transport_socket.clone().unwrap();
    let Some(core::transport_socket::ConfigType::TypedConfig(a)) = ts.config_type else {
        panic!("no typed config");
    };
    let ctx = unpack_as::<pbtls::DownstreamTlsContext>(&a);
    let common = ctx.common_tls_context.unwrap();
    assert!(common.tls_certificates.is_empty());
    assert_eq!(common.tls_certificate_sds_secret_configs.len(), 1);
    let sds = &common.tls_certificate_sds_secret_configs[0];
    assert_eq!(sds.name, "default");
    assert!(matches!(
        sds.sds_config.as_ref().unwrap().config_source_specifier,
        Some(core::config_source::ConfigSourceSpecifier::Ads(_))
    ));
    assert!(matches!(
        common.validation_context_type,
        Some(pbtls::common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(ref s)) if s.name == "ROOTCA"
    ));
    assert_eq!(ctx.require_client_certificate.map(|b| b.value), Some(true));
    // The cluster: the CA by SDS, the SAN check kept in a combined validation context.
    let c = unpack_as::<pbc::Cluster>(&encode(&resource(&config, ResourceType::Cluster, "app")));
    let Some(core::transport_socket::ConfigType::TypedConfig(a)) =
        c.transport_socket.unwrap().config_type
    else {
        panic!("no typed config");
    };
    let common = unpack_as::<pbtls::UpstreamTlsContext>(&a)
        .common_tls_context
        .unwrap();
    assert_eq!(common.tls_certificate_sds_secret_configs[0].name, "default");
    let Some(pbtls::common_tls_context::ValidationContextType::CombinedValidationContext(v)) =
        common.validation_context_type
    else {
        panic!("not a combined validation context");
    };
    assert_eq!(
        v.validation_context_sds_secret_config.unwrap().name,
        "ROOTCA"
    );
    let d = v.default_validation_context.unwrap();
    assert!(d.trusted_ca.is_none());
    assert_eq!(d.match_typed_subject_alt_names.len(), 1);
}

#[test]
fn secrets_with_files_or_other_sources_are_errors_naming_the_field() {
    let file_secret = pbtls::Secret {
        name: "default".into(),
        r#type: Some(pbtls::secret::Type::TlsCertificate(pbtls::TlsCertificate {
            certificate_chain: Some(core::DataSource {
                specifier: Some(core::data_source::Specifier::Filename("/c.pem".into())),
                ..Default::default()
            }),
            ..Default::default()
        })),
    };
    let e = decode(SECRET, &pack_any(&file_secret)).unwrap_err();
    assert_eq!(e.name, "default");
    assert_eq!(e.field, "tls_certificate.certificate_chain");
    let e = decode(
        SECRET,
        &pack_any(&pbtls::Secret {
            name: "x".into(),
            r#type: None,
        }),
    )
    .unwrap_err();
    assert_eq!(e.field, "type");
    // Not PEM: the model's own check.
    let mut s = cert_secret();
    s.kind = SecretKind::TrustBundle { ca: "nope".into() };
    let e = decode(SECRET, &encode(&Resource::Secret(s))).unwrap_err();
    assert!(e.field.ends_with("trusted_ca"), "{e}");
    // A reference served from somewhere else than ADS.
    let config = crate::parse(MESH, "mesh.yaml").unwrap();
    let mut l = unpack_as::<pbl::Listener>(&encode(&resource(
        &config,
        ResourceType::Listener,
        "inbound",
    )));
    let chain = &mut l.filter_chains[0];
    let Some(core::transport_socket::ConfigType::TypedConfig(a)) =
        chain.transport_socket.as_ref().unwrap().config_type.clone()
    else {
        panic!()
    };
    let mut ctx = unpack_as::<pbtls::DownstreamTlsContext>(&a);
    let common = ctx.common_tls_context.as_mut().unwrap();
    common.tls_certificate_sds_secret_configs[0].sds_config = Some(core::ConfigSource {
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Path(
            "/etc/sds.yaml".into(),
        )),
        ..Default::default()
    });
    chain.transport_socket.as_mut().unwrap().config_type = Some(
        core::transport_socket::ConfigType::TypedConfig(pack_any(&ctx)),
    );
    let e = decode(LISTENER, &pack_any(&l)).unwrap_err();
    assert!(
        e.field
            .ends_with("tls_certificate_sds_secret_configs[0].sds_config"),
        "{e}"
    );
}

#[test]
fn file_and_secret_settings_together_are_rejected() {
    let both = MESH.replace(
        "cert_secret: default",
        "cert_secret: default\n      cert: /c.pem\n      key: /k.pem",
    );
    let e = crate::parse(&both, "mesh.yaml").unwrap_err().to_string();
    assert!(e.contains("clusters[0].tls.cert_secret: set `cert` and `key` (files) or `cert_secret` (an SDS secret), not both"), "{e}");
    let none = MESH.replace("[{ secret: default }]", "[{ server_names: [a.example] }]");
    let e = crate::parse(&none, "mesh.yaml").unwrap_err().to_string();
    assert!(
        e.contains("needs `cert` and `key` (PEM files) or `secret`"),
        "{e}"
    );
}
