//! TLS settings: termination on listeners (Envoy `DownstreamTlsContext`), origination to
//! clusters (`UpstreamTlsContext`), and authorization by the peer's SPIFFE identity (Envoy's
//! RBAC filter on `principals`, cut down to what a mesh needs).
//!
//! Files are named by path (relative paths are relative to the proxy's working directory) and
//! read by the proxy, which watches them and reloads a changed certificate, key or CA bundle
//! without dropping a connection.

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
    /// PEM bundle of the CAs client certificates must chain to (required unless
    /// `client_certificate` is `none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
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

/// A certificate chain and its private key, as PEM files.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
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
    /// Oldest protocol version offered: `"1.2"` (default) or `"1.3"`.
    #[serde(default)]
    pub min_version: TlsVersion,
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
        check_path(issues, format!("{p}.certificates[{i}].cert"), &c.cert);
        check_path(issues, format!("{p}.certificates[{i}].key"), &c.key);
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
    match (t.client_certificate, &t.client_ca) {
        (ClientCertificate::None, Some(_)) => issue(
            issues,
            format!("{p}.client_ca"),
            "has no effect with `client_certificate: none` (set `optional` or `required`)",
        ),
        (ClientCertificate::Optional | ClientCertificate::Required, None) => issue(
            issues,
            format!("{p}.client_ca"),
            "is required to verify client certificates",
        ),
        (_, Some(ca)) => check_path(issues, format!("{p}.client_ca"), ca),
        _ => {}
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
    match (&t.cert, &t.key) {
        (Some(c), Some(k)) => {
            check_path(issues, format!("{p}.cert"), c);
            check_path(issues, format!("{p}.key"), k);
        }
        (Some(_), None) => issue(issues, format!("{p}.key"), "is required with `cert`"),
        (None, Some(_)) => issue(issues, format!("{p}.cert"), "is required with `key`"),
        (None, None) => {}
    }
    if let Some(ca) = &t.ca {
        check_path(issues, format!("{p}.ca"), ca);
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
