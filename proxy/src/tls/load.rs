//! Reading PEM files and what Sluice needs from an X.509 certificate: its subject alternative
//! names (SPIFFE IDs are URI SANs), its expiry.

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;

/// A file's bytes, or an error naming it.
pub(super) fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Every certificate in a PEM file (at least one).
pub(super) fn certs(
    what: &impl std::fmt::Display,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what}: invalid PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what}: no CERTIFICATE in it"));
    }
    for c in &certs {
        x509_parser::parse_x509_certificate(c)
            .map_err(|e| format!("{what}: invalid certificate: {e}"))?;
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub(super) fn key(
    what: &impl std::fmt::Display,
    pem: &[u8],
) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("{what}: no usable private key: {e}"))
}

/// A trust bundle from a PEM file (at least one CA).
pub(super) fn roots(what: &impl std::fmt::Display, pem: &[u8]) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(certs(what, pem)?);
    if added == 0 {
        return Err(format!("{what}: no usable CA certificate"));
    }
    Ok(store)
}

/// What Sluice reads off a certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct CertInfo {
    /// DNS subject alternative names.
    pub(crate) dns: Vec<String>,
    /// URI subject alternative names (SPIFFE IDs among them).
    pub(crate) uris: Vec<String>,
    /// End of validity (Unix seconds).
    pub(crate) not_after: i64,
    /// Start of validity (Unix seconds).
    pub(crate) not_before: i64,
}

impl CertInfo {
    /// The SPIFFE ID: the first `spiffe://` URI SAN.
    pub(crate) fn spiffe_id(&self) -> Option<&str> {
        self.uris
            .iter()
            .map(String::as_str)
            .find(|u| u.starts_with("spiffe://"))
    }
}

/// Reads a DER certificate's SANs and validity; `None` when it does not parse.
pub(crate) fn info(der: &[u8]) -> Option<CertInfo> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut info = CertInfo {
        not_after: cert.validity().not_after.timestamp(),
        not_before: cert.validity().not_before.timestamp(),
        ..CertInfo::default()
    };
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => info.dns.push(d.to_ascii_lowercase()),
                GeneralName::URI(u) => info.uris.push((*u).to_string()),
                _ => {}
            }
        }
    }
    Some(info)
}

/// The system trust bundle: `SSL_CERT_FILE`, else Debian's/Alpine's/RHEL's usual place.
pub(super) fn system_roots() -> Result<(std::path::PathBuf, RootCertStore), String> {
    let candidates: Vec<std::path::PathBuf> = match std::env::var_os("SSL_CERT_FILE") {
        Some(f) => vec![f.into()],
        None => [
            "/etc/ssl/certs/ca-certificates.crt",
            "/etc/pki/tls/certs/ca-bundle.crt",
            "/etc/ssl/cert.pem",
        ]
        .iter()
        .map(Into::into)
        .collect(),
    };
    let mut last = String::from("no system CA bundle found");
    for path in candidates {
        match read(&path).and_then(|pem| roots(&path.display(), &pem)) {
            Ok(r) => return Ok((path, r)),
            Err(e) => last = e,
        }
    }
    Err(format!("{last} (set `tls.ca`)"))
}
