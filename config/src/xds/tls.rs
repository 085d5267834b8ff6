//! TLS: `UpstreamTlsContext` (a cluster's `tls`) and `DownstreamTlsContext` (a listener's),
//! with certificates and CAs as file names.

use super::secret::{sds, sds_name};
use super::value::{any, put, unany};
use super::{FieldError, Fr};
use crate::{ClientCertificate, DownstreamTls, UpstreamProtocol};
use envoy_types::pb::envoy::config::core::v3::{self as core, TransportSocket, transport_socket};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as pbtls;
use envoy_types::pb::google::protobuf::BoolValue;
use serde_yaml_ng::{Mapping, Value};

/// The CA bundle Sluice uses when a cluster's `tls` names none (the system's), written out for
/// Envoy, which otherwise verifies nothing.
pub(crate) const SYSTEM_CA: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The name of the TLS transport socket.
pub(crate) const TLS_SOCKET: &str = "envoy.transport_sockets.tls";

/// A filename `DataSource`.
pub(crate) fn file(p: &std::path::Path) -> Option<core::DataSource> {
    Some(core::DataSource {
        specifier: Some(core::data_source::Specifier::Filename(
            p.display().to_string(),
        )),
        ..Default::default()
    })
}

/// A `DataSource`'s filename; inline data is not supported (Sluice reads and watches files).
pub(crate) fn filename(d: Option<&core::DataSource>, field: &str) -> Fr<std::path::PathBuf> {
    match d.and_then(|d| d.specifier.as_ref()) {
        Some(core::data_source::Specifier::Filename(f)) => Ok(f.into()),
        Some(_) => Err(FieldError::new(
            field,
            "only `filename` is supported (no inline certificates or keys)",
        )),
        None => Err(FieldError::new(field, "is required")),
    }
}

/// The TLS version as Envoy's `tls_minimum_protocol_version`.
pub(crate) fn tls_version(v: crate::TlsVersion) -> pbtls::tls_parameters::TlsProtocol {
    match v {
        crate::TlsVersion::Tls12 => pbtls::tls_parameters::TlsProtocol::TlSv12,
        crate::TlsVersion::Tls13 => pbtls::tls_parameters::TlsProtocol::TlSv13,
    }
}

/// Envoy's `tls_params` as the model's minimum version (Envoy's default, TLS 1.2, when unset).
pub(crate) fn min_version(p: Option<&pbtls::TlsParameters>, field: &str) -> Fr<crate::TlsVersion> {
    use pbtls::tls_parameters::TlsProtocol as P;
    match p.map(|p| p.tls_minimum_protocol_version) {
        None => Ok(crate::TlsVersion::Tls12),
        Some(v) if v == P::TlsAuto as i32 || v == P::TlSv12 as i32 => Ok(crate::TlsVersion::Tls12),
        Some(v) if v == P::TlSv13 as i32 => Ok(crate::TlsVersion::Tls13),
        Some(v) => Err(FieldError::new(
            format!("{field}.tls_minimum_protocol_version"),
            format!("{v}: Sluice supports TLS 1.2 and 1.3 only"),
        )),
    }
}

pub(crate) fn upstream_tls_pb(
    t: &crate::UpstreamTls,
    protocol: UpstreamProtocol,
) -> TransportSocket {
    use pbtls::subject_alt_name_matcher::SanType;
    // Sluice checks the `sni` as a DNS name when no names are listed; Envoy checks nothing
    // unless told, so the check is written out (or, without `sni`, `auto_sni_san_validation`).
    let default_san;
    let names = match (&t.sni, t.verify_subject_alt_names.is_empty()) {
        (Some(sni), true) => {
            default_san = [sni.clone()];
            &default_san[..]
        }
        _ => &t.verify_subject_alt_names[..],
    };
    let sans = names
        .iter()
        .map(|s| pbtls::SubjectAltNameMatcher {
            san_type: if s.contains("://") { SanType::Uri } else { SanType::Dns } as i32,
            matcher: Some(envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher {
                match_pattern: Some(
                    envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern::Exact(
                        s.clone(),
                    ),
                ),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    let validation = pbtls::CertificateValidationContext {
        // Sluice's default is the system bundle; Envoy without a CA verifies nothing.
        trusted_ca: match &t.ca_secret {
            Some(_) => None,
            None => file(t.ca.as_deref().unwrap_or(std::path::Path::new(SYSTEM_CA))),
        },
        match_typed_subject_alt_names: sans,
        ..Default::default()
    };
    use pbtls::common_tls_context::ValidationContextType as V;
    let validation = match &t.ca_secret {
        // The CA comes by SDS, the name checks stay in the cluster.
        Some(name) => V::CombinedValidationContext(
            pbtls::common_tls_context::CombinedCertificateValidationContext {
                default_validation_context: Some(validation),
                validation_context_sds_secret_config: Some(sds(name)),
                ..Default::default()
            },
        ),
        None => V::ValidationContext(validation),
    };
    let tls_certificates = match (&t.cert, &t.key) {
        (Some(c), Some(k)) => vec![pbtls::TlsCertificate {
            certificate_chain: file(c),
            private_key: file(k),
            ..Default::default()
        }],
        _ => Vec::new(),
    };
    let tls_certificate_sds_secret_configs = t.cert_secret.iter().map(|n| sds(n)).collect();
    let alpn_protocols = match protocol {
        UpstreamProtocol::Http1 => vec!["http/1.1".to_string()],
        UpstreamProtocol::Http2 => vec!["h2".to_string()],
        UpstreamProtocol::Auto => vec!["h2".to_string(), "http/1.1".to_string()],
    };
    let ctx = pbtls::UpstreamTlsContext {
        sni: t.sni.clone().unwrap_or_default(),
        // Without `sni`, Sluice sends and checks the endpoint's host name (DNS clusters).
        auto_host_sni: t.sni.is_none(),
        auto_sni_san_validation: t.sni.is_none() && t.verify_subject_alt_names.is_empty(),
        common_tls_context: Some(pbtls::CommonTlsContext {
            tls_params: Some(pbtls::TlsParameters {
                tls_minimum_protocol_version: tls_version(t.min_version) as i32,
                ..Default::default()
            }),
            tls_certificates,
            tls_certificate_sds_secret_configs,
            alpn_protocols,
            validation_context_type: Some(validation),
            ..Default::default()
        }),
        ..Default::default()
    };
    TransportSocket {
        name: TLS_SOCKET.into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(&ctx))),
    }
}

/// The TLS context a `envoy.transport_sockets.tls` socket carries, with the field path of its
/// `typed_config`; any other socket is an error naming `name`.
fn tls_context<T: prost::Message + prost::Name + Default>(
    ts: &TransportSocket,
    p: &str,
) -> Fr<(T, String)> {
    if ts.name != TLS_SOCKET {
        return Err(FieldError::new(
            format!("{p}.name"),
            format!("unsupported transport socket `{}`", ts.name),
        ));
    }
    let Some(transport_socket::ConfigType::TypedConfig(a)) = &ts.config_type else {
        return Err(FieldError::new(format!("{p}.typed_config"), "is required"));
    };
    let p = format!("{p}.typed_config");
    Ok((unany(a, &p)?, p))
}

pub(crate) fn upstream_tls_mapping(ts: &TransportSocket, p: &str) -> Fr<Mapping> {
    use pbtls::subject_alt_name_matcher::SanType;
    let (ctx, p): (pbtls::UpstreamTlsContext, String) = tls_context(ts, p)?;
    let mut m = Mapping::new();
    if !ctx.sni.is_empty() {
        put(&mut m, "sni", &ctx.sni);
    }
    let cp = format!("{p}.common_tls_context");
    let common = ctx.common_tls_context.unwrap_or_default();
    put(
        &mut m,
        "min_version",
        min_version(common.tls_params.as_ref(), &format!("{cp}.tls_params"))?,
    );
    match common.tls_certificates.as_slice() {
        [] => {}
        [c] => {
            let f = format!("{cp}.tls_certificates[0]");
            put(
                &mut m,
                "cert",
                filename(
                    c.certificate_chain.as_ref(),
                    &format!("{f}.certificate_chain"),
                )?,
            );
            put(
                &mut m,
                "key",
                filename(c.private_key.as_ref(), &format!("{f}.private_key"))?,
            );
        }
        [_, ..] => {
            return Err(FieldError::new(
                format!("{cp}.tls_certificates[1]"),
                "one client certificate only",
            ));
        }
    }
    match common.tls_certificate_sds_secret_configs.as_slice() {
        [] => {}
        [c] => {
            if !common.tls_certificates.is_empty() {
                return Err(FieldError::new(
                    format!("{cp}.tls_certificate_sds_secret_configs"),
                    "one client certificate only (this and `tls_certificates` are set)",
                ));
            }
            let f = format!("{cp}.tls_certificate_sds_secret_configs[0]");
            put(&mut m, "cert_secret", sds_name(c, &f)?);
        }
        [_, ..] => {
            return Err(FieldError::new(
                format!("{cp}.tls_certificate_sds_secret_configs[1]"),
                "one client certificate only",
            ));
        }
    }
    use pbtls::common_tls_context::ValidationContextType as V;
    let (v, vp) = match &common.validation_context_type {
        None => return Ok(m),
        Some(V::ValidationContext(v)) => (v.clone(), format!("{cp}.validation_context")),
        Some(V::ValidationContextSdsSecretConfig(c)) => {
            let f = format!("{cp}.validation_context_sds_secret_config");
            put(&mut m, "ca_secret", sds_name(c, &f)?);
            return Ok(m);
        }
        Some(V::CombinedValidationContext(c)) => {
            let f = format!("{cp}.combined_validation_context");
            let Some(sc) = &c.validation_context_sds_secret_config else {
                return Err(FieldError::new(
                    format!("{f}.validation_context_sds_secret_config"),
                    "is required",
                ));
            };
            put(
                &mut m,
                "ca_secret",
                sds_name(sc, &format!("{f}.validation_context_sds_secret_config"))?,
            );
            let v = c.default_validation_context.clone().unwrap_or_default();
            let vp = format!("{f}.default_validation_context");
            if v.trusted_ca.is_some() {
                return Err(FieldError::new(
                    format!("{vp}.trusted_ca"),
                    "the CA comes from the SDS secret; set one or the other",
                ));
            }
            (v, vp)
        }
        Some(_) => {
            return Err(FieldError::new(
                format!("{cp}.validation_context_certificate_provider"),
                "not supported (use a file or an SDS secret)",
            ));
        }
    };
    if v.trusted_ca.is_some() {
        let ca = filename(v.trusted_ca.as_ref(), &format!("{vp}.trusted_ca"))?;
        if ca != std::path::Path::new(SYSTEM_CA) {
            put(&mut m, "ca", ca);
        }
    }
    let mut sans = Vec::new();
    for (i, s) in v.match_typed_subject_alt_names.iter().enumerate() {
        let f = format!("{vp}.match_typed_subject_alt_names[{i}]");
        use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
        let ok_type = s.san_type == SanType::Dns as i32 || s.san_type == SanType::Uri as i32;
        match s.matcher.as_ref().and_then(|m| m.match_pattern.as_ref()) {
            Some(MatchPattern::Exact(x)) if ok_type => sans.push(x.clone()),
            _ => {
                return Err(FieldError::new(
                    f,
                    "only exact DNS or URI subject alt names are supported",
                ));
            }
        }
    }
    // The `sni` alone as a DNS name is Sluice's default check.
    let default_check = !ctx.sni.is_empty()
        && v.match_typed_subject_alt_names.len() == 1
        && v.match_typed_subject_alt_names
            .iter()
            .all(|s| s.san_type == SanType::Dns as i32)
        && sans == [ctx.sni.clone()];
    if !sans.is_empty() && !default_check {
        put(&mut m, "verify_subject_alt_names", sans);
    }
    Ok(m)
}

pub(crate) fn downstream_tls_pb(
    t: &DownstreamTls,
    certs: &[&crate::CertificateFiles],
) -> TransportSocket {
    let ctx = pbtls::DownstreamTlsContext {
        common_tls_context: Some(pbtls::CommonTlsContext {
            tls_params: Some(pbtls::TlsParameters {
                tls_minimum_protocol_version: tls_version(t.min_version) as i32,
                ..Default::default()
            }),
            tls_certificates: certs
                .iter()
                .filter_map(|c| match (&c.cert, &c.key) {
                    (Some(cert), Some(key)) => Some(pbtls::TlsCertificate {
                        certificate_chain: file(cert),
                        private_key: file(key),
                        ..Default::default()
                    }),
                    _ => None,
                })
                .collect(),
            tls_certificate_sds_secret_configs: certs
                .iter()
                .filter_map(|c| c.secret.as_deref().map(sds))
                .collect(),
            alpn_protocols: t.alpn.clone(),
            validation_context_type: match (&t.client_ca, &t.client_ca_secret) {
                (_, Some(name)) => Some(
                    pbtls::common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(
                        sds(name),
                    ),
                ),
                (Some(ca), None) => Some(
                    pbtls::common_tls_context::ValidationContextType::ValidationContext(
                        pbtls::CertificateValidationContext {
                            trusted_ca: file(ca),
                            ..Default::default()
                        },
                    ),
                ),
                (None, None) => None,
            },
            ..Default::default()
        }),
        require_client_certificate: Some(BoolValue {
            value: t.client_certificate == ClientCertificate::Required,
        }),
        ..Default::default()
    };
    TransportSocket {
        name: TLS_SOCKET.into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(&ctx))),
    }
}

pub(crate) fn downstream_tls_mapping(ts: &TransportSocket, p: &str) -> Fr<Mapping> {
    let (ctx, p): (pbtls::DownstreamTlsContext, String) = tls_context(ts, p)?;
    let cp = format!("{p}.common_tls_context");
    let common = ctx.common_tls_context.unwrap_or_default();
    let mut m = Mapping::new();
    let mut certs = Vec::new();
    for (i, c) in common.tls_certificates.iter().enumerate() {
        let f = format!("{cp}.tls_certificates[{i}]");
        let mut x = Mapping::new();
        put(
            &mut x,
            "cert",
            filename(
                c.certificate_chain.as_ref(),
                &format!("{f}.certificate_chain"),
            )?,
        );
        put(
            &mut x,
            "key",
            filename(c.private_key.as_ref(), &format!("{f}.private_key"))?,
        );
        certs.push(Value::Mapping(x));
    }
    for (i, c) in common.tls_certificate_sds_secret_configs.iter().enumerate() {
        let f = format!("{cp}.tls_certificate_sds_secret_configs[{i}]");
        let mut x = Mapping::new();
        put(&mut x, "secret", sds_name(c, &f)?);
        certs.push(Value::Mapping(x));
    }
    m.insert("certificates".into(), Value::Sequence(certs));
    if !common.alpn_protocols.is_empty() {
        put(&mut m, "alpn", &common.alpn_protocols);
    }
    put(
        &mut m,
        "min_version",
        min_version(common.tls_params.as_ref(), &format!("{cp}.tls_params"))?,
    );
    let required = ctx
        .require_client_certificate
        .as_ref()
        .is_some_and(|b| b.value);
    // With a CA to verify against: required or optional.
    let verified = if required {
        ClientCertificate::Required
    } else {
        ClientCertificate::Optional
    };
    use pbtls::common_tls_context::ValidationContextType as V;
    match &common.validation_context_type {
        None => put(&mut m, "client_certificate", ClientCertificate::None),
        Some(V::ValidationContext(v)) => {
            let vp = format!("{cp}.validation_context");
            if !v.match_typed_subject_alt_names.is_empty() {
                return Err(FieldError::new(
                    format!("{vp}.match_typed_subject_alt_names"),
                    "not supported on listeners (use authorization)",
                ));
            }
            put(
                &mut m,
                "client_ca",
                filename(v.trusted_ca.as_ref(), &format!("{vp}.trusted_ca"))?,
            );
            put(&mut m, "client_certificate", verified);
        }
        Some(V::ValidationContextSdsSecretConfig(c)) => {
            let f = format!("{cp}.validation_context_sds_secret_config");
            put(&mut m, "client_ca_secret", sds_name(c, &f)?);
            put(&mut m, "client_certificate", verified);
        }
        Some(_) => {
            return Err(FieldError::new(
                format!("{cp}.combined_validation_context"),
                "not supported on listeners (`validation_context` or `validation_context_sds_secret_config`)",
            ));
        }
    }
    Ok(m)
}
