//! Building a cluster's rustls `ClientConfig`s: the trust bundle, the server identity check
//! (a custom verifier: the chain against the bundle, then the DNS name or an exact URI SAN such
//! as a SPIFFE ID), the client certificate for mTLS, and one config per ALPN offer so each
//! upstream protocol asks for its own (they share one session cache, so resumption works
//! across them).

use super::load;
use super::{Loaded, Part, Secrets, Source, provider, versions};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sluice_config::UpstreamTls;
use std::sync::Arc;

/// The three configs of a cluster: no ALPN (TCP proxying), `http/1.1`, `h2`.
#[derive(Debug)]
pub(crate) struct ClientConfigs {
    pub(crate) tcp: Arc<rustls::ClientConfig>,
    pub(crate) h1: Arc<rustls::ClientConfig>,
    pub(crate) h2: Arc<rustls::ClientConfig>,
}

/// Chain first, then the configured subject alternative names (or the server name).
#[derive(Debug)]
struct Verifier {
    roots: Arc<RootCertStore>,
    /// Accepted SANs; empty: the server name is checked as webpki does.
    sans: Vec<String>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        if self.sans.is_empty() {
            verify_server_name(&cert, server_name)?;
        } else if !san_matches(&cert, end_entity, &self.sans) {
            return Err(Error::InvalidCertificate(CertificateError::NotValidForName));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A URI entry matches a URI SAN exactly; anything else is a DNS name matched as webpki
/// matches server names (wildcards in the certificate included).
fn san_matches(cert: &ParsedCertificate<'_>, der: &[u8], sans: &[String]) -> bool {
    let info = load::info(der).unwrap_or_default();
    sans.iter().any(|want| {
        if want.contains("://") {
            info.uris.iter().any(|u| u == want)
        } else {
            ServerName::try_from(want.as_str())
                .is_ok_and(|name| verify_server_name(cert, &name).is_ok())
        }
    })
}

/// Builds a cluster's configs.
pub(super) fn build(cfg: &UpstreamTls, secrets: &Secrets) -> Result<Loaded<ClientConfigs>, String> {
    let provider = provider();
    let mut loaded = Loaded::default();
    let ca = match (&cfg.ca_secret, &cfg.ca) {
        (Some(name), _) => Some(Source::Secret(name.clone(), Part::Ca)),
        (None, Some(path)) => Some(Source::File(path.clone())),
        (None, None) => None,
    };
    let roots = match ca {
        Some(ca) => {
            let pem = loaded.read(ca.clone(), secrets)?;
            load::roots(&ca, &pem)?
        }
        None => {
            let (path, roots) = load::system_roots()?;
            loaded.read(Source::File(path), secrets)?;
            roots
        }
    };
    let verifier = Arc::new(Verifier {
        roots: Arc::new(roots),
        sans: cfg.verify_subject_alt_names.clone(),
        provider: Arc::clone(&provider),
    });
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions(cfg.min_version))
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let pair = match (&cfg.cert_secret, &cfg.cert, &cfg.key) {
        (Some(name), _, _) => Some((
            Source::Secret(name.clone(), Part::Chain),
            Source::Secret(name.clone(), Part::Key),
        )),
        (None, Some(cert), Some(key)) => {
            Some((Source::File(cert.clone()), Source::File(key.clone())))
        }
        _ => None,
    };
    let config = match pair {
        Some((cert, key)) => {
            let cert_pem = loaded.read(cert.clone(), secrets)?;
            let key_pem = loaded.read(key.clone(), secrets)?;
            let chain = load::certs(&cert, &cert_pem)?;
            let info = chain
                .first()
                .and_then(|c| load::info(c))
                .unwrap_or_default();
            loaded.certs.push((cert, info));
            builder
                .with_client_auth_cert(chain, load::key(&key, &key_pem)?)
                .map_err(|e| format!("{key}: {e}"))?
        }
        None => builder.with_no_client_auth(),
    };
    let with_alpn = |alpn: &[&[u8]]| {
        let mut c = config.clone();
        c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        Arc::new(c)
    };
    loaded.config = Some(Arc::new(ClientConfigs {
        h1: with_alpn(&[b"http/1.1"]),
        h2: with_alpn(&[b"h2"]),
        tcp: Arc::new(config),
    }));
    Ok(loaded)
}
