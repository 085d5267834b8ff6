//! TLS settings: termination on listeners (Envoy `DownstreamTlsContext`), origination to
//! clusters (`UpstreamTlsContext`), and authorization by the peer's SPIFFE identity (Envoy's
//! RBAC filter on `principals`, cut down to what a mesh needs).
//!
//! Files are named by path (relative paths are relative to the proxy's working directory) and
//! read by the proxy, which watches them and reloads a changed certificate, key or CA bundle
//! without dropping a connection. Instead of files, a block may name SDS secrets
//! ([`crate::Secret`], delivered by the control plane over xDS): `secret` for a certificate,
//! `client_ca_secret` / `ca_secret` for a trust bundle.

use crate::error::Issue;
use crate::units::Duration;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// TLS termination on a listener.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DownstreamTls {
    /// Certificates offered to clients. The client's SNI picks one: an exact `server_names`
    /// entry first, then the longest `*.suffix` wildcard; no SNI or no match gets the first
    /// (the default).
    pub certificates: Vec<CertificateFiles>,
    /// Whether clients present certificates: `none` (default), `optional` (verified when
    /// presented) or `required` (the handshake fails without one).
    #[serde(default)]
    pub client_certificate: ClientCertificate,
    /// PEM bundle of the CAs client certificates must chain to (this or `client_ca_secret`
    /// is required unless `client_certificate` is `none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
    /// The SDS secret (a trust bundle) client certificates must chain to, instead of
    /// `client_ca`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_secret: Option<String>,
    /// ALPN protocols offered, in order of preference. Default `[h2, http/1.1]`; the one
    /// negotiated decides the protocol (no ALPN: HTTP/1.1).
    #[serde(default = "default_alpn")]
    pub alpn: Vec<String>,
    /// Oldest protocol version accepted: `"1.2"` (default) or `"1.3"`. Older versions are never
    /// offered.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// Time allowed for the handshake; on expiry the connection is closed. Default `10s`.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: Duration,
    /// What happens to the `x-forwarded-client-cert` header (Envoy's
    /// `forward_client_cert_details`): `sanitize` (default: removed), `forward_only` (passed
    /// on, nothing added), `append_forward` (the client's details appended), `sanitize_set`
    /// (replaced with the client's details), `always_forward_only` (passed on even over
    /// plaintext).
    #[serde(default)]
    pub forward_client_cert: ForwardClientCert,
}

fn default_alpn() -> Vec<String> {
    vec!["h2".into(), "http/1.1".into()]
}

fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

/// A certificate chain and its private key: PEM files (`cert` and `key`), or an SDS secret
/// (`secret`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    /// PEM certificate chain, leaf first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// The SDS secret holding the certificate and key, instead of `cert` and `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// SNI names this certificate serves: exact or `*.suffix`. Default: the certificate's DNS
    /// subject alternative names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_names: Vec<String>,
}

/// Client certificate policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientCertificate {
    /// Not asked for.
    #[default]
    None,
    /// Asked for; verified when presented.
    Optional,
    /// The handshake fails without a valid one.
    Required,
}

/// A TLS protocol version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    Tls13,
}

/// `x-forwarded-client-cert` handling (Envoy's `ForwardClientCertDetails`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardClientCert {
    /// Removed from every request.
    #[default]
    Sanitize,
    /// Passed on unchanged over TLS (removed over plaintext).
    ForwardOnly,
    /// Passed on with this client's details appended (over TLS).
    AppendForward,
    /// Replaced with this client's details (over TLS).
    SanitizeSet,
    /// Passed on unchanged, even over plaintext.
    AlwaysForwardOnly,
}

/// TLS origination to a cluster's endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// Server name sent in SNI and verified against the certificate's DNS names (unless
    /// `verify_subject_alt_names` is set). Default: the endpoint's host name for DNS-discovered
    /// clusters; required for static IP endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// PEM bundle of the CAs the server's chain must lead to. Default: the system bundle
    /// (`SSL_CERT_FILE`, else `/etc/ssl/certs/ca-certificates.crt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// The SDS secret (a trust bundle) the server's chain must lead to, instead of `ca`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<String>,
    /// Accept the server only when its certificate carries one of these subject alternative
    /// names: `spiffe://…` and other URIs match URI SANs exactly, anything else a DNS SAN.
    /// Checked after the chain is verified. Default: the `sni` is checked as a DNS name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verify_subject_alt_names: Vec<String>,
    /// Client certificate chain for mTLS (with `key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// Client private key (with `cert`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// The SDS secret holding the client certificate and key for mTLS, instead of `cert` and
    /// `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_secret: Option<String>,
    /// Oldest protocol version offered: `"1.2"` (default) or `"1.3"`.
    #[serde(default)]
    pub min_version: TlsVersion,
}

impl DownstreamTls {
    /// The SDS secrets it names (certificates, then the client CA).
    pub fn secret_names(&self) -> impl Iterator<Item = &str> {
        self.certificates
            .iter()
            .filter_map(|c| c.secret.as_deref())
            .chain(self.client_ca_secret.as_deref())
    }
}

impl UpstreamTls {
    /// The SDS secrets it names (client certificate, CA).
    pub fn secret_names(&self) -> impl Iterator<Item = &str> {
        self.cert_secret
            .as_deref()
            .into_iter()
            .chain(self.ca_secret.as_deref())
    }
}

/// Who may send requests, by the verified SPIFFE ID of the client certificate. A `deny` match
/// wins; a non-empty `allow` needs a match (a client without a verified identity matches
/// nothing). Entries are exact IDs (`spiffe://corp/ns/web/sa/frontend`) or prefixes ending in
/// `*` (`spiffe://corp/ns/web/*`, `spiffe://corp/*` for a whole trust domain).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Authorization {
    /// Identities allowed (empty: everyone not denied).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Identities denied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

impl Authorization {
    /// True when it allows and denies nothing (the default).
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

fn issue(issues: &mut Vec<Issue>, path: String, message: impl Into<String>) {
    issues.push(Issue {
        path,
        message: message.into(),
    });
}

/// Checks a listener's `tls` block (`p` is its path).
pub(crate) fn check_downstream(p: &str, t: &DownstreamTls, issues: &mut Vec<Issue>) {
    if t.certificates.is_empty() {
        issue(
            issues,
            format!("{p}.certificates"),
            "at least one is required",
        );
    }
    let mut seen = std::collections::HashSet::new();
    for (i, c) in t.certificates.iter().enumerate() {
        let cp = format!("{p}.certificates[{i}]");
        check_pair(
            issues,
            &cp,
            ("cert", &c.cert),
            ("key", &c.key),
            ("secret", &c.secret),
        );
        if c.cert.is_none() && c.key.is_none() && c.secret.is_none() {
            issue(
                issues,
                cp.clone(),
                "needs `cert` and `key` (PEM files) or `secret` (an SDS secret)",
            );
        }
        for (j, n) in c.server_names.iter().enumerate() {
            let path = format!("{p}.certificates[{i}].server_names[{j}]");
            if let Err(e) = check_server_name(n) {
                issue(issues, path, e);
            } else if !seen.insert(n.to_ascii_lowercase()) {
                issue(
                    issues,
                    path,
                    format!("`{n}` is served by an earlier certificate"),
                );
            }
        }
    }
    let ca_field = if t.client_ca_secret.is_some() {
        "client_ca_secret"
    } else {
        "client_ca"
    };
    let has_ca = t.client_ca.is_some() || t.client_ca_secret.is_some();
    match (t.client_certificate, has_ca) {
        (ClientCertificate::None, true) => issue(
            issues,
            format!("{p}.{ca_field}"),
            "has no effect with `client_certificate: none` (set `optional` or `required`)",
        ),
        (ClientCertificate::Optional | ClientCertificate::Required, false) => issue(
            issues,
            format!("{p}.client_ca"),
            "is required to verify client certificates (or `client_ca_secret`)",
        ),
        _ => {}
    }
    if let Some(ca) = &t.client_ca {
        check_path(issues, format!("{p}.client_ca"), ca);
        if t.client_ca_secret.is_some() {
            issue(
                issues,
                format!("{p}.client_ca_secret"),
                "set `client_ca` (a file) or `client_ca_secret` (an SDS secret), not both",
            );
        }
    }
    if let Some(s) = &t.client_ca_secret {
        check_secret_name(issues, format!("{p}.client_ca_secret"), s);
    }
    if t.alpn.is_empty() {
        issue(
            issues,
            format!("{p}.alpn"),
            "must name at least one protocol (`h2`, `http/1.1`)",
        );
    }
    for (i, a) in t.alpn.iter().enumerate() {
        if !matches!(a.as_str(), "h2" | "http/1.1") {
            issue(
                issues,
                format!("{p}.alpn[{i}]"),
                format!("`{a}` is not served here (use `h2` or `http/1.1`)"),
            );
        }
    }
    if t.handshake_timeout.is_zero() {
        issue(
            issues,
            format!("{p}.handshake_timeout"),
            "must be greater than 0s",
        );
    }
}

/// Checks a cluster's `tls` block.
pub(crate) fn check_upstream(p: &str, t: &UpstreamTls, dns_named: bool, issues: &mut Vec<Issue>) {
    check_pair(
        issues,
        p,
        ("cert", &t.cert),
        ("key", &t.key),
        ("cert_secret", &t.cert_secret),
    );
    if let Some(ca) = &t.ca {
        check_path(issues, format!("{p}.ca"), ca);
        if t.ca_secret.is_some() {
            issue(
                issues,
                format!("{p}.ca_secret"),
                "set `ca` (a file) or `ca_secret` (an SDS secret), not both",
            );
        }
    }
    if let Some(s) = &t.ca_secret {
        check_secret_name(issues, format!("{p}.ca_secret"), s);
    }
    match &t.sni {
        Some(s) if rustls_name_ok(s) => {}
        Some(s) => issue(
            issues,
            format!("{p}.sni"),
            format!("`{s}` is not a DNS name"),
        ),
        None if !dns_named && t.verify_subject_alt_names.is_empty() => issue(
            issues,
            format!("{p}.sni"),
            "is required: the endpoints are IP addresses, so set the server name to send and verify (or `verify_subject_alt_names`)",
        ),
        None => {}
    }
    for (i, s) in t.verify_subject_alt_names.iter().enumerate() {
        if s.is_empty() || s.contains(char::is_whitespace) {
            issue(
                issues,
                format!("{p}.verify_subject_alt_names[{i}]"),
                "must be a URI (`spiffe://…`) or a DNS name",
            );
        }
    }
}

/// Checks an `authorization` block.
pub(crate) fn check_authorization(p: &str, a: &Authorization, issues: &mut Vec<Issue>) {
    for (field, list) in [("allow", &a.allow), ("deny", &a.deny)] {
        for (i, id) in list.iter().enumerate() {
            let bare = id.strip_suffix('*').unwrap_or(id);
            if !bare.starts_with("spiffe://") || bare.contains('*') || bare.len() <= 9 {
                issue(
                    issues,
                    format!("{p}.{field}[{i}]"),
                    format!(
                        "`{id}` is not a SPIFFE ID (`spiffe://TRUST_DOMAIN/PATH`, or a prefix ending in `*`)"
                    ),
                );
            }
        }
    }
}

/// A certificate given as files (`cert` and `key`, both or neither) or as an SDS secret, not
/// both.
fn check_pair(
    issues: &mut Vec<Issue>,
    p: &str,
    (cert_field, cert): (&str, &Option<PathBuf>),
    (key_field, key): (&str, &Option<PathBuf>),
    (secret_field, secret): (&str, &Option<String>),
) {
    match (cert, key) {
        (Some(c), Some(k)) => {
            check_path(issues, format!("{p}.{cert_field}"), c);
            check_path(issues, format!("{p}.{key_field}"), k);
        }
        (Some(_), None) => issue(
            issues,
            format!("{p}.{key_field}"),
            format!("is required with `{cert_field}`"),
        ),
        (None, Some(_)) => issue(
            issues,
            format!("{p}.{cert_field}"),
            format!("is required with `{key_field}`"),
        ),
        (None, None) => {}
    }
    if let Some(s) = secret {
        check_secret_name(issues, format!("{p}.{secret_field}"), s);
        if cert.is_some() || key.is_some() {
            issue(
                issues,
                format!("{p}.{secret_field}"),
                format!(
                    "set `{cert_field}` and `{key_field}` (files) or `{secret_field}` (an SDS secret), not both"
                ),
            );
        }
    }
}

fn check_secret_name(issues: &mut Vec<Issue>, path: String, name: &str) {
    if name.is_empty() || name.contains(char::is_whitespace) {
        issue(
            issues,
            path,
            "must name an SDS secret (`default`, `ROOTCA`)",
        );
    }
}

fn check_path(issues: &mut Vec<Issue>, path: String, file: &std::path::Path) {
    if file.as_os_str().is_empty() {
        issue(issues, path, "must name a file");
    }
}

/// An SNI pattern: a DNS name or `*.` followed by one.
fn check_server_name(n: &str) -> Result<(), String> {
    let bare = n.strip_prefix("*.").unwrap_or(n);
    if rustls_name_ok(bare) && !bare.contains('*') {
        Ok(())
    } else {
        Err(format!(
            "`{n}` is not a server name (`api.example.com` or `*.example.com`)"
        ))
    }
}

fn rustls_name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}
