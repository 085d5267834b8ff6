//! SDS secrets: a certificate with its private key, or a trust bundle, delivered by the
//! control plane (Envoy's `Secret`). TLS blocks name them (`secret`, `client_ca_secret`,
//! `ca_secret`) instead of files; they never come from a config file, and the config dump
//! never shows them.

use crate::error::Issue;
use std::fmt;

/// One SDS secret.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Secret {
    /// Its name (what TLS blocks refer to: `default`, `ROOTCA`, ...).
    pub name: String,
    /// What it holds.
    pub kind: SecretKind,
}

/// What a secret holds.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SecretKind {
    /// A certificate chain (PEM, leaf first) and its private key (Envoy `tls_certificate`).
    Certificate {
        /// PEM certificate chain.
        cert_chain: String,
        /// PEM private key.
        private_key: PrivateKeyPem,
    },
    /// PEM CA certificates to verify peers against (Envoy `validation_context.trusted_ca`).
    TrustBundle {
        /// PEM CA certificates.
        ca: String,
    },
}

/// A PEM private key; its `Debug` form never shows it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PrivateKeyPem(pub String);

impl fmt::Debug for PrivateKeyPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKeyPem(<redacted>)")
    }
}

impl Secret {
    /// The kind's name in messages: `certificate` or `trust bundle`.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            SecretKind::Certificate { .. } => "certificate",
            SecretKind::TrustBundle { .. } => "trust bundle",
        }
    }
}

/// Checks a secret on its own: a name, and PEM where PEM belongs (the proxy parses it).
pub(crate) fn check(p: &str, s: &Secret, issues: &mut Vec<Issue>) {
    let mut err = |path: String, message: &str| {
        issues.push(Issue {
            path,
            message: message.into(),
        })
    };
    if s.name.is_empty() {
        err(format!("{p}.name"), "is required");
    }
    let pem = |text: &str| text.contains("-----BEGIN ");
    match &s.kind {
        SecretKind::Certificate {
            cert_chain,
            private_key,
        } => {
            if !pem(cert_chain) {
                err(
                    format!("{p}.tls_certificate.certificate_chain"),
                    "must be a PEM certificate chain",
                );
            }
            if !pem(&private_key.0) {
                err(
                    format!("{p}.tls_certificate.private_key"),
                    "must be a PEM private key",
                );
            }
        }
        SecretKind::TrustBundle { ca } => {
            if !pem(ca) {
                err(
                    format!("{p}.validation_context.trusted_ca"),
                    "must be PEM CA certificates",
                );
            }
        }
    }
}
