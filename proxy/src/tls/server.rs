//! Building a listener's rustls `ServerConfig`: certificates chosen by SNI (exact, then the
//! longest wildcard, then the default), client certificate verification, ALPN, versions and
//! session resumption (tickets and a session cache that belong to this build: a rebuilt
//! config, after any file changed, resumes nothing issued under the old one).

use super::load::{self, CertInfo};
use super::{Loaded, Part, Secrets, Source, provider, versions};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use sluice_config::{ClientCertificate, DownstreamTls};
use std::collections::HashMap;
use std::sync::Arc;

/// Certificates by SNI.
#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `(".suffix", key)`, longest suffix first.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = sni else {
            return Arc::clone(&self.default);
        };
        let name = name.to_ascii_lowercase();
        if let Some(k) = self.exact.get(&name) {
            return Arc::clone(k);
        }
        self.wildcard
            .iter()
            // `*.example.com` covers one label: `a.example.com`, not `a.b.example.com`.
            .find(|(suffix, _)| {
                name.strip_suffix(suffix.as_str())
                    .is_some_and(|label| !label.is_empty() && !label.contains('.'))
            })
            .map_or_else(|| Arc::clone(&self.default), |(_, k)| Arc::clone(k))
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

/// Builds the server config, reading every file and secret it names. Returns the config, the
/// files read (with their bytes, for change detection) and the certificates' details.
pub(super) fn build(
    cfg: &DownstreamTls,
    secrets: &Secrets,
) -> Result<Loaded<rustls::ServerConfig>, String> {
    let provider = provider();
    let mut loaded = Loaded::default();
    let mut exact = HashMap::new();
    let mut wildcard = Vec::new();
    let mut default = None;
    for (i, c) in cfg.certificates.iter().enumerate() {
        let (cert_src, key_src) = match (&c.secret, &c.cert, &c.key) {
            (Some(name), _, _) => (
                Source::Secret(name.clone(), Part::Chain),
                Source::Secret(name.clone(), Part::Key),
            ),
            (None, Some(cert), Some(key)) => {
                (Source::File(cert.clone()), Source::File(key.clone()))
            }
            _ => return Err(format!("certificates[{i}]: no certificate")),
        };
        let cert_pem = loaded.read(cert_src.clone(), secrets)?;
        let key_pem = loaded.read(key_src.clone(), secrets)?;
        let chain = load::certs(&cert_src, &cert_pem)?;
        let key = load::key(&key_src, &key_pem)?;
        let signing = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| format!("{key_src}: unsupported private key: {e}"))?;
        let info: CertInfo = chain
            .first()
            .and_then(|c| load::info(c))
            .unwrap_or_default();
        let certified = Arc::new(CertifiedKey::new(chain, signing));
        certified
            .keys_match()
            .map_err(|_| format!("certificates[{i}]: {key_src} is not the key of {cert_src}"))?;
        let names = if c.server_names.is_empty() {
            info.dns.clone()
        } else {
            c.server_names.clone()
        };
        for n in names {
            let n = n.to_ascii_lowercase();
            match n.strip_prefix('*') {
                Some(suffix) => wildcard.push((suffix.to_string(), Arc::clone(&certified))),
                None => {
                    exact.entry(n).or_insert_with(|| Arc::clone(&certified));
                }
            }
        }
        default.get_or_insert_with(|| Arc::clone(&certified));
        loaded.certs.push((cert_src, info));
    }
    let default = default.ok_or("no certificate")?;
    wildcard.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
    let resolver = Arc::new(SniResolver {
        exact,
        wildcard,
        default,
    });
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions(cfg.min_version))
        .map_err(|e| e.to_string())?;
    let ca = match (&cfg.client_ca_secret, &cfg.client_ca) {
        (Some(name), _) => Some(Source::Secret(name.clone(), Part::Ca)),
        (None, Some(path)) => Some(Source::File(path.clone())),
        (None, None) => None,
    };
    let builder = match (&cfg.client_certificate, ca) {
        (ClientCertificate::None, _) | (_, None) => builder.with_no_client_auth(),
        (policy, Some(ca)) => {
            let pem = loaded.read(ca.clone(), secrets)?;
            let roots = Arc::new(load::roots(&ca, &pem)?);
            let verifier =
                WebPkiClientVerifier::builder_with_provider(roots, Arc::clone(&provider));
            let verifier = if *policy == ClientCertificate::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| format!("client CA {ca}: {e}"))?,
            )
        }
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = cfg.alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    config.ticketer =
        rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| format!("ticketer: {e}"))?;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(1024);
    loaded.config = Some(Arc::new(config));
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Arc<CertifiedKey> {
        let k = rcgen::KeyPair::generate().unwrap();
        let c = rcgen::CertificateParams::new(vec!["x".into()])
            .unwrap()
            .self_signed(&k)
            .unwrap();
        let der = rustls_pki_types::PrivateKeyDer::try_from(k.serialize_der()).unwrap();
        let signing = provider().key_provider.load_private_key(der).unwrap();
        Arc::new(CertifiedKey::new(vec![c.der().clone()], signing))
    }

    #[test]
    fn sni_picks_exact_then_longest_wildcard_then_default() {
        let (d, a, w, ww) = (key(), key(), key(), key());
        let r = SniResolver {
            exact: [("a.example.com".to_string(), Arc::clone(&a))].into(),
            wildcard: vec![
                (".api.example.com".into(), Arc::clone(&ww)),
                (".example.com".into(), Arc::clone(&w)),
            ],
            default: Arc::clone(&d),
        };
        assert!(Arc::ptr_eq(&r.pick(Some("A.Example.com")), &a));
        assert!(Arc::ptr_eq(&r.pick(Some("b.example.com")), &w));
        assert!(Arc::ptr_eq(&r.pick(Some("v1.api.example.com")), &ww));
        // One label only.
        assert!(Arc::ptr_eq(&r.pick(Some("x.y.example.com")), &d));
        assert!(Arc::ptr_eq(&r.pick(Some("example.com")), &d));
        assert!(Arc::ptr_eq(&r.pick(None), &d));
    }
}
