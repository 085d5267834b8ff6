//! The built-in CA: issues short-lived X.509 certificates carrying SPIFFE IDs to proxies that
//! prove which identity they may hold, delivers them with the trust bundle as SDS secrets
//! (`default` and `ROOTCA`, Istio's names), and rotates each before it expires.
//!
//! Trust model (see "Certificates" in `docs/architecture.md`): an identity is granted in the
//! control plane's settings to a bootstrap token (a file the operator gives the proxy) and to
//! the node ids (or node clusters) allowed to hold it. A stream that presents a token
//! (`authorization: Bearer …`) matching a grant, from a node the grant names, gets that
//! identity's certificate; a stream without a token gets config but no certificate; a wrong
//! token, or a right token from another node, ends the stream. The CA's key never leaves the
//! control plane; each workload key is made here and travels inside the ADS stream, so that
//! stream must be on a trusted network (loopback, a pod network with policy) until the ADS
//! listener serves TLS.
//!
//! Each identity's secrets sit in a `watch` channel that every stream holding the identity
//! follows; a rotation (at [`ROTATE_AT`] of the lifetime) replaces them and every such
//! stream pushes the new `default` secret. Identities no stream holds are forgotten.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use envoy_types::pb::google::protobuf::Any;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use sluice_config::{PrivateKeyPem, Resource, Secret, SecretKind};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::cache::NodeKey;
use crate::snapshot::Resources;

/// The secret holding a proxy's certificate and key.
pub const CERT_SECRET: &str = "default";
/// The secret holding the trust bundle.
pub const BUNDLE_SECRET: &str = "ROOTCA";
/// The fraction of a certificate's lifetime after which it is replaced.
pub const ROTATE_AT: f64 = 0.7;
/// How far back a certificate's validity starts (clock skew between machines), at most; a
/// tenth of the lifetime for very short ones.
const BACKDATE: std::time::Duration = std::time::Duration::from_secs(60);
/// Shortest certificate lifetime accepted.
const MIN_TTL: std::time::Duration = std::time::Duration::from_secs(2);
/// A generated root's lifetime.
const ROOT_TTL: std::time::Duration = std::time::Duration::from_secs(10 * 365 * 24 * 3600);

/// The `ca` section of the control plane's settings.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaSettings {
    /// The SPIFFE trust domain (`sluice.local`, `corp.example`).
    pub trust_domain: String,
    /// Lifetime of issued certificates (default `24h`); each is replaced at 70% of it.
    #[serde(default = "default_ttl")]
    pub workload_cert_ttl: sluice_config::Duration,
    /// PEM root certificate to issue under (with `root_key`). Default: a root generated at
    /// start, kept in memory (proxies then trust a new root after a restart).
    #[serde(default)]
    pub root_cert: Option<PathBuf>,
    /// PEM private key of `root_cert`.
    #[serde(default)]
    pub root_key: Option<PathBuf>,
    /// Who may hold which identity.
    #[serde(default)]
    pub identities: Vec<IdentitySettings>,
}

fn default_ttl() -> sluice_config::Duration {
    sluice_config::Duration::from_secs(24 * 3600)
}

/// One identity and who may hold it.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitySettings {
    /// The full SPIFFE ID; or give `namespace` and `service_account` for
    /// `spiffe://TRUST_DOMAIN/ns/NS/sa/NAME`.
    #[serde(default)]
    pub spiffe_id: Option<String>,
    /// Namespace (with `service_account`).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Service account (with `namespace`).
    #[serde(default)]
    pub service_account: Option<String>,
    /// Node ids or node clusters allowed to hold it (`*`: any node presenting the token).
    pub nodes: Vec<String>,
    /// File holding the bootstrap token a proxy presents (relative paths are relative to the
    /// settings file).
    pub token_file: PathBuf,
}

impl CaSettings {
    /// Makes relative file names relative to `base` (the settings file's directory).
    pub fn resolve_paths(&mut self, base: &Path) {
        for p in [&mut self.root_cert, &mut self.root_key]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        for i in &mut self.identities {
            if i.token_file.is_relative() {
                i.token_file = base.join(&i.token_file);
            }
        }
    }
}

/// The CA's metrics.
#[derive(Clone, Debug, Default)]
pub struct CaMetrics {
    issued: Family<Reason, Counter>,
    identities: Gauge,
    refused: Family<Reason, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

impl CaMetrics {
    /// Registers `sluice_ca_*` in `registry`, every label set at zero.
    pub fn register(&self, registry: &mut Registry) {
        for reason in ["new", "rotation"] {
            let _ = self.issued.get_or_create(&Reason { reason });
        }
        for reason in ["unknown_token", "node_not_allowed"] {
            let _ = self.refused.get_or_create(&Reason { reason });
        }
        registry.register(
            "sluice_ca_certificates_issued",
            "Workload certificates issued, by reason (new identity, rotation)",
            self.issued.clone(),
        );
        registry.register(
            "sluice_ca_identities",
            "Identities with a live certificate (held by at least one stream)",
            self.identities.clone(),
        );
        registry.register(
            "sluice_ca_streams_refused",
            "ADS streams refused a certificate, by reason",
            self.refused.clone(),
        );
    }
}

/// What an identity's streams serve: the SDS secrets and when they were made.
#[derive(Debug)]
pub struct IssuedSecrets {
    /// `default` (certificate and key) and `ROOTCA` (trust bundle), encoded.
    pub resources: Arc<Resources>,
    /// When they were issued (the start of their push latency).
    pub set_at: Instant,
}

struct Grant {
    spiffe_id: String,
    nodes: Vec<String>,
    token_digest: [u8; 32],
}

struct Live {
    tx: watch::Sender<Arc<IssuedSecrets>>,
    rotate_at: Instant,
}

struct Inner {
    issuer: Issuer<'static, KeyPair>,
    bundle_pem: String,
    ttl: std::time::Duration,
    grants: Vec<Grant>,
    live: Mutex<HashMap<String, Live>>,
    wake: Notify,
    metrics: CaMetrics,
}

/// The CA; cheap to clone (shared).
#[derive(Clone)]
pub struct Ca {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("identities", &self.inner.grants.len())
            .finish_non_exhaustive()
    }
}

/// An identity a stream holds: its SPIFFE ID and its secrets as they are renewed.
pub type Held = (String, watch::Receiver<Arc<IssuedSecrets>>);

/// Why a stream gets no certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The token matches no grant.
    UnknownToken,
    /// The token's identity may not be held by this node.
    NodeNotAllowed {
        /// The identity the token grants.
        identity: String,
    },
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.trim().as_bytes()).into()
}

/// Equal digests, compared in constant time.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn pem_err(what: &str) -> impl Fn(rcgen::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

impl Ca {
    /// Builds the CA: loads or generates the root, reads every token file, checks every
    /// identity. An error names the setting.
    pub fn new(settings: &CaSettings, metrics: CaMetrics) -> Result<Ca, String> {
        let td = &settings.trust_domain;
        if td.is_empty()
            || td.contains(['/', ':', ' '])
            || td.chars().any(|c| c.is_ascii_uppercase())
        {
            return Err(format!(
                "ca.trust_domain: `{td}` is not a SPIFFE trust domain (lowercase, like `sluice.local`)"
            ));
        }
        let ttl = settings.workload_cert_ttl.get();
        if ttl < MIN_TTL {
            return Err(format!(
                "ca.workload_cert_ttl: {} is too short (at least 2s)",
                settings.workload_cert_ttl
            ));
        }
        let (issuer, bundle_pem) = match (&settings.root_cert, &settings.root_key) {
            (Some(cert), Some(key)) => {
                let cert_pem = std::fs::read_to_string(cert)
                    .map_err(|e| format!("ca.root_cert: {}: {e}", cert.display()))?;
                let key_pem = std::fs::read_to_string(key)
                    .map_err(|e| format!("ca.root_key: {}: {e}", key.display()))?;
                let key = KeyPair::from_pem(&key_pem).map_err(pem_err("ca.root_key"))?;
                let issuer =
                    Issuer::from_ca_cert_pem(&cert_pem, key).map_err(pem_err("ca.root_cert"))?;
                (issuer, cert_pem)
            }
            (None, None) => generate_root(td)?,
            _ => return Err("ca: set both `root_cert` and `root_key`, or neither".into()),
        };
        let mut grants = Vec::new();
        for (i, id) in settings.identities.iter().enumerate() {
            let at = format!("ca.identities[{i}]");
            let spiffe_id = match (&id.spiffe_id, &id.namespace, &id.service_account) {
                (Some(s), None, None) => s.clone(),
                (None, Some(ns), Some(sa)) => format!("spiffe://{td}/ns/{ns}/sa/{sa}"),
                _ => {
                    return Err(format!(
                        "{at}: give `spiffe_id`, or `namespace` and `service_account`"
                    ));
                }
            };
            let prefix = format!("spiffe://{td}/");
            if !spiffe_id.starts_with(&prefix) || spiffe_id.len() == prefix.len() {
                return Err(format!(
                    "{at}.spiffe_id: `{spiffe_id}` is not in the trust domain (`{prefix}…`)"
                ));
            }
            if id.nodes.is_empty() {
                return Err(format!(
                    "{at}.nodes: name the node ids (or clusters) that may hold it, or `*`"
                ));
            }
            let token = std::fs::read_to_string(&id.token_file)
                .map_err(|e| format!("{at}.token_file: {}: {e}", id.token_file.display()))?;
            if token.trim().len() < 16 {
                return Err(format!(
                    "{at}.token_file: {}: a token needs at least 16 characters",
                    id.token_file.display()
                ));
            }
            let token_digest = digest(&token);
            if grants
                .iter()
                .any(|g: &Grant| same(&g.token_digest, &token_digest))
            {
                return Err(format!(
                    "{at}.token_file: the same token grants another identity"
                ));
            }
            grants.push(Grant {
                spiffe_id,
                nodes: id.nodes.clone(),
                token_digest,
            });
        }
        Ok(Ca {
            inner: Arc::new(Inner {
                issuer,
                bundle_pem,
                ttl,
                grants,
                live: Mutex::default(),
                wake: Notify::new(),
                metrics,
            }),
        })
    }

    /// The trust bundle (PEM).
    pub fn bundle_pem(&self) -> &str {
        &self.inner.bundle_pem
    }

    /// The secrets for a stream presenting `token` from `node`: `Ok(None)` without a token,
    /// the identity's secrets when the token and node match a grant, a refusal otherwise.
    pub fn authorize(&self, token: Option<&str>, node: &NodeKey) -> Result<Option<Held>, Refusal> {
        let Some(token) = token else {
            return Ok(None);
        };
        let d = digest(token);
        let refuse = |r: Refusal, reason: &'static str| {
            self.inner
                .metrics
                .refused
                .get_or_create(&Reason { reason })
                .inc();
            Err(r)
        };
        let Some(grant) = self.inner.grants.iter().find(|g| same(&g.token_digest, &d)) else {
            return refuse(Refusal::UnknownToken, "unknown_token");
        };
        let allowed = grant
            .nodes
            .iter()
            .any(|n| n == "*" || *n == node.id || (!node.cluster.is_empty() && *n == node.cluster));
        if !allowed {
            return refuse(
                Refusal::NodeNotAllowed {
                    identity: grant.spiffe_id.clone(),
                },
                "node_not_allowed",
            );
        }
        Ok(Some((
            grant.spiffe_id.clone(),
            self.subscribe(&grant.spiffe_id),
        )))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.inner
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The identity's secrets, issuing its certificate if no stream holds it yet.
    fn subscribe(&self, spiffe_id: &str) -> watch::Receiver<Arc<IssuedSecrets>> {
        let mut live = self.lock();
        if let Some(l) = live.get(spiffe_id) {
            return l.tx.subscribe();
        }
        let (secrets, rotate_at) = self.issue(spiffe_id, "new");
        let (tx, rx) = watch::channel(secrets);
        live.insert(spiffe_id.to_string(), Live { tx, rotate_at });
        self.inner.metrics.identities.set(live.len() as i64);
        drop(live);
        self.inner.wake.notify_one();
        rx
    }

    /// A new certificate for `spiffe_id`, as the two SDS secrets, and when to replace it.
    /// Signing with a valid key cannot fail short of a bug; if it does, the secrets hold the
    /// bundle only (the proxy keeps its current certificate) and the next try is soon.
    fn issue(&self, spiffe_id: &str, reason: &'static str) -> (Arc<IssuedSecrets>, Instant) {
        let now = Instant::now();
        let bundle = Resource::Secret(Secret {
            name: BUNDLE_SECRET.into(),
            kind: SecretKind::TrustBundle {
                ca: self.inner.bundle_pem.clone(),
            },
        });
        let mut items: Vec<(String, Any)> = vec![(
            BUNDLE_SECRET.to_string(),
            sluice_config::xds::encode(&bundle),
        )];
        let rotate_at = match self.leaf(spiffe_id) {
            Ok((cert_chain, key)) => {
                let cert = Resource::Secret(Secret {
                    name: CERT_SECRET.into(),
                    kind: SecretKind::Certificate {
                        cert_chain,
                        private_key: PrivateKeyPem(key),
                    },
                });
                items.push((CERT_SECRET.to_string(), sluice_config::xds::encode(&cert)));
                self.inner
                    .metrics
                    .issued
                    .get_or_create(&Reason { reason })
                    .inc();
                tracing::info!(
                    identity = spiffe_id,
                    reason,
                    ttl_secs = self.inner.ttl.as_secs(),
                    "issued a workload certificate"
                );
                now + self.inner.ttl.mul_f64(ROTATE_AT)
            }
            Err(e) => {
                tracing::error!(identity = spiffe_id, error = %e, "cannot issue a workload certificate");
                now + std::time::Duration::from_secs(5)
            }
        };
        let secrets = Arc::new(IssuedSecrets {
            resources: Arc::new(Resources::new(items)),
            set_at: now,
        });
        (secrets, rotate_at)
    }

    /// A leaf certificate (PEM) and its key (PEM, PKCS#8) for `spiffe_id`, for both sides of
    /// a connection.
    fn leaf(&self, spiffe_id: &str) -> Result<(String, String), String> {
        let uri = SanType::URI(
            spiffe_id
                .try_into()
                .map_err(|e: rcgen::Error| e.to_string())?,
        );
        self.sign(
            vec![uri],
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )
    }

    /// The control plane's own serving certificate for `names` (DNS names or IP addresses),
    /// its key, and its lifetime (the workload lifetime).
    pub fn serving_certificate(
        &self,
        names: &[String],
    ) -> Result<(String, String, std::time::Duration), String> {
        let mut sans = Vec::new();
        for n in names {
            sans.push(match n.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    n.as_str()
                        .try_into()
                        .map_err(|e: rcgen::Error| format!("xds.tls.server_names: `{n}`: {e}"))?,
                ),
            });
        }
        let (cert, key) = self.sign(sans, vec![ExtendedKeyUsagePurpose::ServerAuth])?;
        Ok((cert, key, self.inner.ttl))
    }

    fn sign(
        &self,
        sans: Vec<SanType>,
        usages: Vec<ExtendedKeyUsagePurpose>,
    ) -> Result<(String, String), String> {
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let mut params = CertificateParams::default();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE.min(self.inner.ttl / 10);
        params.not_after = now + self.inner.ttl;
        params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
        params.subject_alt_names = sans;
        params.distinguished_name = DistinguishedName::new();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = usages;
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.inner.issuer)
            .map_err(|e| e.to_string())?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Replaces certificates as they reach [`ROTATE_AT`] of their lifetime and forgets
    /// identities no stream holds; runs until the CA is dropped by everyone else.
    pub async fn rotate(self) {
        loop {
            let next = {
                let mut live = self.lock();
                live.retain(|_, l| l.tx.receiver_count() > 0);
                self.inner.metrics.identities.set(live.len() as i64);
                let now = Instant::now();
                let due: Vec<String> = live
                    .iter()
                    .filter(|(_, l)| l.rotate_at <= now)
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in due {
                    let (secrets, rotate_at) = self.issue(&id, "rotation");
                    if let Some(l) = live.get_mut(&id) {
                        l.tx.send_replace(secrets);
                        l.rotate_at = rotate_at;
                    }
                }
                live.values().map(|l| l.rotate_at).min()
            };
            match next {
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = self.inner.wake.notified() => {}
                    }
                }
                None => self.inner.wake.notified().await,
            }
            if Arc::strong_count(&self.inner) == 1 {
                return;
            }
        }
    }
}

fn random_serial() -> [u8; 16] {
    let mut s = [0u8; 16];
    for b in &mut s {
        *b = fastrand::u8(..);
    }
    // Positive, and never starting with a zero byte (a DER INTEGER's minimal form).
    s[0] = (s[0] & 0x7f) | 0x40;
    s
}

/// A generated root: ECDSA P-256, the trust domain's SPIFFE ID as its URI SAN.
fn generate_root(td: &str) -> Result<(Issuer<'static, KeyPair>, String), String> {
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = CertificateParams::default();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + ROOT_TTL;
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, td);
    dn.push(DnType::CommonName, "Sluice CA");
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(
        format!("spiffe://{td}")
            .try_into()
            .map_err(|e: rcgen::Error| e.to_string())?,
    )];
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    tracing::warn!(
        trust_domain = td,
        "the CA root was generated at start and lives in memory: proxies trust a new root after a restart (set ca.root_cert and ca.root_key to keep one)"
    );
    Ok((Issuer::new(params, key), cert.pem()))
}
