//! SDS: the `Secret` resource (a `tls_certificate` or a `validation_context`, inline PEM) and
//! the `SdsSecretConfig` references TLS contexts use (delivered over ADS).

use super::{FieldError, Fr};
use crate::{PrivateKeyPem, Secret, SecretKind};
use envoy_types::pb::envoy::config::core::v3::{
    self as core, AggregatedConfigSource, ApiVersion, ConfigSource, config_source,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as pbtls;

fn inline(text: &str) -> Option<core::DataSource> {
    Some(core::DataSource {
        specifier: Some(core::data_source::Specifier::InlineString(text.to_string())),
        ..Default::default()
    })
}

/// Inline data as text (`inline_string` or UTF-8 `inline_bytes`); a secret names no files
/// (the proxy holding it may not have them).
fn inline_text(d: Option<&core::DataSource>, field: &str) -> Fr<String> {
    use core::data_source::Specifier as S;
    match d.and_then(|d| d.specifier.as_ref()) {
        Some(S::InlineString(s)) => Ok(s.clone()),
        Some(S::InlineBytes(b)) => String::from_utf8(b.clone())
            .map_err(|_| FieldError::new(field, "is not UTF-8 PEM text")),
        Some(_) => Err(FieldError::new(
            field,
            "only `inline_string` or `inline_bytes` is supported in a Secret",
        )),
        None => Err(FieldError::new(field, "is required")),
    }
}

pub(crate) fn encode(s: &Secret) -> pbtls::Secret {
    let kind = match &s.kind {
        SecretKind::Certificate {
            cert_chain,
            private_key,
        } => pbtls::secret::Type::TlsCertificate(pbtls::TlsCertificate {
            certificate_chain: inline(cert_chain),
            private_key: inline(&private_key.0),
            ..Default::default()
        }),
        SecretKind::TrustBundle { ca } => {
            pbtls::secret::Type::ValidationContext(pbtls::CertificateValidationContext {
                trusted_ca: inline(ca),
                ..Default::default()
            })
        }
    };
    pbtls::Secret {
        name: s.name.clone(),
        r#type: Some(kind),
    }
}

pub(crate) fn decode(pb: &pbtls::Secret) -> Fr<Secret> {
    let kind = match &pb.r#type {
        Some(pbtls::secret::Type::TlsCertificate(c)) => SecretKind::Certificate {
            cert_chain: inline_text(
                c.certificate_chain.as_ref(),
                "tls_certificate.certificate_chain",
            )?,
            private_key: PrivateKeyPem(inline_text(
                c.private_key.as_ref(),
                "tls_certificate.private_key",
            )?),
        },
        Some(pbtls::secret::Type::ValidationContext(v)) => {
            if !v.match_typed_subject_alt_names.is_empty() {
                return Err(FieldError::new(
                    "validation_context.match_typed_subject_alt_names",
                    "not supported in a Secret (set `verify_subject_alt_names` on the cluster)",
                ));
            }
            SecretKind::TrustBundle {
                ca: inline_text(v.trusted_ca.as_ref(), "validation_context.trusted_ca")?,
            }
        }
        Some(pbtls::secret::Type::SessionTicketKeys(_)) => {
            return Err(FieldError::new(
                "session_ticket_keys",
                "not supported (Sluice rotates its own ticket keys)",
            ));
        }
        Some(pbtls::secret::Type::GenericSecret(_)) => {
            return Err(FieldError::new("generic_secret", "not supported"));
        }
        None => {
            return Err(FieldError::new(
                "type",
                "is required (`tls_certificate` or `validation_context`)",
            ));
        }
    };
    Ok(Secret {
        name: pb.name.clone(),
        kind,
    })
}

/// A reference to the secret `name`, delivered over ADS.
pub(crate) fn sds(name: &str) -> pbtls::SdsSecretConfig {
    pbtls::SdsSecretConfig {
        name: name.to_string(),
        sds_config: Some(ConfigSource {
            resource_api_version: ApiVersion::V3 as i32,
            config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
                AggregatedConfigSource {},
            )),
            ..Default::default()
        }),
    }
}

/// The secret a reference names: it must come over ADS (or name no source, which Envoy reads
/// as a static secret; Sluice gets every secret over ADS).
pub(crate) fn sds_name(c: &pbtls::SdsSecretConfig, field: &str) -> Fr<String> {
    if c.name.is_empty() {
        return Err(FieldError::new(format!("{field}.name"), "is required"));
    }
    match c
        .sds_config
        .as_ref()
        .and_then(|s| s.config_source_specifier.as_ref())
    {
        None | Some(config_source::ConfigSourceSpecifier::Ads(_)) => Ok(c.name.clone()),
        Some(_) => Err(FieldError::new(
            format!("{field}.sds_config"),
            "only `ads` is supported (secrets come over the same ADS stream)",
        )),
    }
}
