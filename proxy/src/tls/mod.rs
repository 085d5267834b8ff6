//! TLS: termination on listeners and origination to clusters (rustls with the aws-lc-rs
//! provider, TLS 1.2 and 1.3 only), certificate rotation and expiry.
//!
//! The [`TlsStore`] is shared by the writer (which asks it for a listener's or a cluster's TLS
//! when compiling them) and a reload thread. Each distinct `tls` block gets one entry whose
//! rustls config sits behind an `ArcSwap`: a handshake loads the current one, so a reload swaps
//! it in without touching a connection already established. The store watches the
//! directories of every file it read (a Kubernetes secret volume swaps a symlink, so the file
//! itself is not what changes); when a file's bytes change, the entries using it are rebuilt
//! whole. A rebuilt server config has new session tickets and a new session cache, and a
//! rebuilt client config a new resumption store, so a changed trust bundle cannot be bypassed
//! by resuming a session established under the old one. A rebuild that fails (a key written
//! before its certificate, say) keeps the last good config and is retried on the next change.
//!
//! SDS secrets ([`sluice_config::Secret`], from the control plane) are the other source of
//! certificates and trust bundles: the writer hands each one to [`TlsStore::set_secret`], which
//! checks it, keeps it, and rebuilds every live entry naming it. An entry whose secrets have
//! not all arrived yet is *pending*: it exists (the listener or cluster is accepted, as Envoy
//! warms it) but handshakes fail until the secret comes.

mod client;
mod load;
mod server;
mod stream;
#[cfg(test)]
mod tests;

pub(crate) use load::CertInfo;
pub use stream::TlsInfo;
pub(crate) use stream::{AcceptError, Alpn, UpstreamIo, accept};

use crate::metrics::TlsMetrics;
use arc_swap::ArcSwapOption;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::ServerName;
use sluice_config::{DownstreamTls, Secret, SecretKind, TlsVersion, UpstreamTls};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak, mpsc};
use std::time::{Duration, SystemTime};

/// The aws-lc-rs provider (one per process).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider())))
}

fn versions(min: TlsVersion) -> &'static [&'static rustls::SupportedProtocolVersion] {
    static TLS13_ONLY: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    match min {
        TlsVersion::Tls12 => rustls::ALL_VERSIONS,
        TlsVersion::Tls13 => &TLS13_ONLY,
    }
}

/// Where PEM bytes come from: a file, or a part of an SDS secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// A file (watched).
    File(PathBuf),
    /// A secret's certificate chain, private key or trust bundle.
    Secret(String, Part),
}

/// A part of a secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    /// The certificate chain.
    Chain,
    /// The private key.
    Key,
    /// The trust bundle.
    Ca,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Secret(name, _) => write!(f, "secret:{name}"),
        }
    }
}

/// The SDS secrets received, by name.
pub(crate) type Secrets = HashMap<String, Arc<Secret>>;

/// A built config with what it was built from.
#[derive(Debug)]
struct Loaded<T> {
    config: Option<Arc<T>>,
    /// Every file and secret part read, with its bytes.
    files: Vec<(Source, Vec<u8>)>,
    /// The certificates offered (leaf details), by source.
    certs: Vec<(Source, CertInfo)>,
}

impl<T> Default for Loaded<T> {
    fn default() -> Self {
        Loaded {
            config: None,
            files: Vec::new(),
            certs: Vec::new(),
        }
    }
}

impl<T> Loaded<T> {
    /// Reads a file, or a secret's part from `secrets`.
    fn read(&mut self, src: Source, secrets: &Secrets) -> Result<Vec<u8>, String> {
        let bytes = match &src {
            Source::File(path) => load::read(path)?,
            Source::Secret(name, part) => secret_part(secrets, name, *part)?,
        };
        self.files.push((src, bytes.clone()));
        Ok(bytes)
    }
}

/// A part of a received secret, or why it cannot be had.
fn secret_part(secrets: &Secrets, name: &str, part: Part) -> Result<Vec<u8>, String> {
    let Some(s) = secrets.get(name) else {
        return Err(format!("secret `{name}` has not been received"));
    };
    match (&s.kind, part) {
        (SecretKind::Certificate { cert_chain, .. }, Part::Chain) => Ok(cert_chain.clone().into()),
        (SecretKind::Certificate { private_key, .. }, Part::Key) => {
            Ok(private_key.0.clone().into())
        }
        (SecretKind::TrustBundle { ca }, Part::Ca) => Ok(ca.clone().into()),
        (_, Part::Ca) => Err(format!(
            "secret `{name}` is a {}, not a trust bundle",
            s.kind_name()
        )),
        (_, Part::Chain | Part::Key) => Err(format!(
            "secret `{name}` is a {}, not a certificate",
            s.kind_name()
        )),
    }
}

/// One `tls` block's live config (none while it waits for a secret).
#[derive(Debug)]
pub(crate) struct Entry<T> {
    current: ArcSwapOption<T>,
    state: Mutex<EntryState>,
    /// The first certificate's SPIFFE ID (this proxy's identity on a listener).
    identity: Arc<ArcSwapOption<String>>,
}

#[derive(Debug)]
struct EntryState {
    files: Vec<(Source, Vec<u8>)>,
    certs: Vec<(Source, CertInfo)>,
}

impl<T> Entry<T> {
    /// An entry serving `loaded` (pending when it has no config).
    fn new(loaded: Loaded<T>) -> Self {
        let entry = Entry {
            current: ArcSwapOption::empty(),
            state: Mutex::new(EntryState {
                files: Vec::new(),
                certs: Vec::new(),
            }),
            identity: Arc::default(),
        };
        entry.replace(loaded);
        entry
    }

    /// The config for the next handshake (`None` while a secret it names has not come).
    pub(crate) fn current(&self) -> Option<Arc<T>> {
        self.current.load_full()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, EntryState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True when some file it was built from now reads differently (secrets are rebuilt by
    /// [`TlsStore::set_secret`]).
    fn stale(&self) -> bool {
        self.state().files.iter().any(|(src, bytes)| match src {
            Source::File(path) => std::fs::read(path).ok().as_ref() != Some(bytes),
            Source::Secret(..) => false,
        })
    }

    fn replace(&self, loaded: Loaded<T>) {
        if let Some(config) = loaded.config {
            self.current.store(Some(config));
            self.identity.store(
                loaded
                    .certs
                    .first()
                    .and_then(|(_, i)| i.spiffe_id().map(|s| Arc::new(s.to_string()))),
            );
            let mut s = self.state();
            s.files = loaded.files;
            s.certs = loaded.certs;
        }
    }

    fn dirs(&self) -> Vec<PathBuf> {
        self.state()
            .files
            .iter()
            .filter_map(|(src, _)| match src {
                Source::File(p) => Some(parent(p)),
                Source::Secret(..) => None,
            })
            .collect()
    }
}

fn parent(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A listener's TLS.
#[derive(Debug)]
pub struct ServerTls {
    /// The settings it was built from.
    pub settings: DownstreamTls,
    pub(crate) entry: Entry<rustls::ServerConfig>,
}

impl ServerTls {
    /// This proxy's own SPIFFE ID (the default certificate's), for `x-forwarded-client-cert`;
    /// it follows certificate rotation.
    pub(crate) fn identity(&self) -> Arc<ArcSwapOption<String>> {
        Arc::clone(&self.entry.identity)
    }
}

/// A cluster's TLS.
#[derive(Debug)]
pub struct ClientTls {
    /// The settings it was built from.
    pub settings: UpstreamTls,
    pub(crate) entry: Entry<client::ClientConfigs>,
    /// The name sent in SNI and checked (an IP address when only SANs are checked: no SNI).
    pub(crate) server_name: Option<ServerName<'static>>,
}

/// Every live listener and cluster TLS config, and their reloading.
#[derive(Debug)]
pub struct TlsStore {
    inner: Mutex<Inner>,
    metrics: TlsMetrics,
}

#[derive(Debug, Default)]
struct Inner {
    servers: HashMap<DownstreamTls, Weak<ServerTls>>,
    clients: HashMap<UpstreamTls, Weak<ClientTls>>,
    watcher: Option<notify::RecommendedWatcher>,
    watched: HashSet<PathBuf>,
    /// When each soon-expiring certificate was last warned about (Unix seconds).
    warned: HashMap<String, i64>,
    /// SDS secrets received.
    secrets: Secrets,
}

/// How often expiry is re-exported and warned about.
const EXPIRY_TICK: Duration = Duration::from_secs(30);
/// Certificates expiring sooner than this are warned about.
const EXPIRY_WARNING: Duration = Duration::from_secs(7 * 24 * 3600);
/// Burst of file events folded into one reload.
const DEBOUNCE: Duration = Duration::from_millis(50);

impl TlsStore {
    /// An empty store exporting to `metrics`.
    pub fn new(metrics: TlsMetrics) -> Arc<Self> {
        Arc::new(TlsStore {
            inner: Mutex::default(),
            metrics,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The TLS of a listener with these settings (shared with any other listener using the
    /// same settings), reading its files if it is new.
    pub fn server(self: &Arc<Self>, cfg: &DownstreamTls) -> Result<Arc<ServerTls>, String> {
        if let Some(s) = self.lock().servers.get(cfg).and_then(Weak::upgrade) {
            return Ok(s);
        }
        let loaded = self.build_or_wait(cfg.secret_names(), |s| server::build(cfg, s))?;
        let tls = Arc::new(ServerTls {
            settings: cfg.clone(),
            entry: Entry::new(loaded),
        });
        self.adopt(&tls.entry, |inner| {
            inner.servers.retain(|_, w| w.strong_count() > 0);
            inner.servers.insert(cfg.clone(), Arc::downgrade(&tls));
        });
        Ok(tls)
    }

    /// The TLS of a cluster with these settings; `dns_name` is the discovered host name (the
    /// default SNI).
    pub fn client(
        self: &Arc<Self>,
        cfg: &UpstreamTls,
        dns_name: Option<&str>,
    ) -> Result<Arc<ClientTls>, String> {
        let mut key = cfg.clone();
        if key.sni.is_none() {
            key.sni = dns_name.map(str::to_string);
        }
        if let Some(c) = self.lock().clients.get(&key).and_then(Weak::upgrade) {
            return Ok(c);
        }
        let server_name = match &key.sni {
            Some(n) => Some(
                ServerName::try_from(n.clone()).map_err(|_| format!("`{n}` is not a DNS name"))?,
            ),
            None => None,
        };
        let loaded = self.build_or_wait(key.secret_names(), |s| client::build(&key, s))?;
        let tls = Arc::new(ClientTls {
            settings: key.clone(),
            entry: Entry::new(loaded),
            server_name,
        });
        self.adopt(&tls.entry, |inner| {
            inner.clients.retain(|_, w| w.strong_count() > 0);
            inner.clients.insert(key, Arc::downgrade(&tls));
        });
        Ok(tls)
    }

    /// Builds a config; when a secret it names has not arrived, a pending one (no config) that
    /// [`TlsStore::set_secret`] completes.
    fn build_or_wait<'a, T>(
        &self,
        names: impl Iterator<Item = &'a str>,
        build: impl FnOnce(&Secrets) -> Result<Loaded<T>, String>,
    ) -> Result<Loaded<T>, String> {
        let inner = self.lock();
        let missing: Vec<&str> = names.filter(|n| !inner.secrets.contains_key(*n)).collect();
        if missing.is_empty() {
            return build(&inner.secrets);
        }
        tracing::info!(secrets = ?missing, "TLS waits for SDS secrets; handshakes fail until they arrive");
        Ok(Loaded::default())
    }

    /// Checks and keeps an SDS secret, then rebuilds every live entry naming it (pending ones
    /// included). An invalid secret is refused (the previous one, if any, stays).
    pub fn set_secret(&self, secret: &Secret) -> Result<bool, String> {
        check_secret(secret)?;
        let changed = {
            let mut inner = self.lock();
            let old = inner
                .secrets
                .insert(secret.name.clone(), Arc::new(secret.clone()));
            old.is_none_or(|o| *o != *secret)
        };
        if changed {
            self.rebuild_naming(&secret.name);
        }
        Ok(changed)
    }

    /// Forgets an SDS secret. Entries built from it keep serving what they have (a rotation is
    /// a replacement, not a removal); entries built later wait for it again.
    pub fn remove_secret(&self, name: &str) -> bool {
        self.lock().secrets.remove(name).is_some()
    }

    /// Rebuilds the live entries naming secret `name`.
    fn rebuild_naming(&self, name: &str) {
        let (servers, clients, secrets) = {
            let inner = self.lock();
            (
                live(&inner.servers),
                live(&inner.clients),
                inner.secrets.clone(),
            )
        };
        // Entries naming it; one still missing another secret stays pending quietly (warming).
        let wanted = |names: Vec<&str>| {
            names.contains(&name) && names.iter().all(|n| secrets.contains_key(*n))
        };
        for s in servers
            .iter()
            .filter(|s| wanted(s.settings.secret_names().collect()))
        {
            self.finish_reload("listener", server::build(&s.settings, &secrets), &s.entry);
        }
        for c in clients
            .iter()
            .filter(|c| wanted(c.settings.secret_names().collect()))
        {
            self.finish_reload("cluster", client::build(&c.settings, &secrets), &c.entry);
        }
        self.export_expiry();
    }

    /// Takes a new entry in: warns about its certificates' expiry, records it (`insert`, which
    /// also drops dead entries), watches its files and exports the expiry gauge.
    fn adopt<T>(self: &Arc<Self>, entry: &Entry<T>, insert: impl FnOnce(&mut Inner)) {
        self.warn_expiry(entry);
        let dirs = entry.dirs();
        let mut inner = self.lock();
        insert(&mut inner);
        self.watch(&mut inner, dirs);
        drop(inner);
        self.export_expiry();
    }

    /// Watches `dirs` (starting the watcher and the reload thread the first time).
    fn watch(self: &Arc<Self>, inner: &mut Inner, dirs: Vec<PathBuf>) {
        use notify::Watcher;
        if inner.watcher.is_none() {
            // The watcher's callback holds the only sender: dropping the store drops the
            // watcher, which ends the reload thread.
            let (events, rx) = mpsc::channel();
            let watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
                if ev.is_ok_and(|e| !e.kind.is_access()) {
                    let _ = events.send(());
                }
            });
            match watcher {
                Ok(w) => inner.watcher = Some(w),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch TLS files; certificates will not be reloaded");
                    return;
                }
            }
            let store = Arc::downgrade(self);
            let spawned = std::thread::Builder::new()
                .name("sluice-tls".into())
                .spawn(move || reload_thread(store, rx));
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start the TLS reload thread");
            }
        }
        for dir in dirs {
            if inner.watched.contains(&dir) {
                continue;
            }
            let Some(w) = inner.watcher.as_mut() else {
                return;
            };
            match w.watch(&dir, notify::RecursiveMode::NonRecursive) {
                Ok(()) => {
                    inner.watched.insert(dir);
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch TLS file directory")
                }
            }
        }
    }

    /// Rebuilds every live entry whose files changed.
    pub fn reload(&self) {
        let (servers, clients, secrets) = {
            let inner = self.lock();
            (
                live(&inner.servers),
                live(&inner.clients),
                inner.secrets.clone(),
            )
        };
        for s in servers.iter().filter(|s| s.entry.stale()) {
            self.finish_reload("listener", server::build(&s.settings, &secrets), &s.entry);
        }
        for c in clients.iter().filter(|c| c.entry.stale()) {
            self.finish_reload("cluster", client::build(&c.settings, &secrets), &c.entry);
        }
        self.export_expiry();
    }

    fn finish_reload<T>(&self, side: &'static str, built: Result<Loaded<T>, String>, e: &Entry<T>) {
        match built {
            Ok(loaded) => {
                let mut files: Vec<String> =
                    loaded.files.iter().map(|(p, _)| p.to_string()).collect();
                files.dedup();
                e.replace(loaded);
                self.warn_expiry(e);
                self.metrics.reload(true);
                tracing::info!(side, files = ?files, "TLS certificates reloaded");
            }
            Err(error) => {
                self.metrics.reload(false);
                tracing::warn!(side, %error, "TLS reload failed; keeping the last good certificates");
            }
        }
    }

    fn warn_expiry<T>(&self, e: &Entry<T>) {
        let now = unix_now();
        for (path, info) in &e.state().certs {
            let left = info.not_after - now;
            if left <= 0 {
                tracing::error!(cert = %path, expired_secs_ago = -left, "TLS certificate has expired");
            } else if left < warning_window(&path.to_string(), info) {
                tracing::warn!(cert = %path, expires_in_secs = left, "TLS certificate expires soon");
            }
            if info.not_before > now {
                tracing::warn!(cert = %path, "TLS certificate is not valid yet");
            }
        }
    }

    /// Sets `sluice_tls_certificate_expiry_seconds` for every live certificate and removes
    /// those no longer used.
    fn export_expiry(&self) {
        let now = unix_now();
        let mut live: HashMap<String, i64> = HashMap::new();
        {
            let inner = self.lock();
            let mut add = |certs: &[(Source, CertInfo)]| {
                for (p, i) in certs {
                    live.insert(p.to_string(), i.not_after - now);
                }
            };
            for s in inner.servers.values().filter_map(Weak::upgrade) {
                add(&s.entry.state().certs);
            }
            for c in inner.clients.values().filter_map(Weak::upgrade) {
                add(&c.entry.state().certs);
            }
        }
        self.metrics.set_expiry(live);
    }

    /// The periodic expiry duties: the gauge, and a warning once a day for each certificate in
    /// use that expires within [`EXPIRY_WARNING`] (each load warned already).
    fn tick(&self) {
        let now = unix_now();
        let mut certs: Vec<(String, CertInfo)> = Vec::new();
        {
            let inner = self.lock();
            for s in inner.servers.values().filter_map(|w| w.upgrade()) {
                certs.extend(
                    s.entry
                        .state()
                        .certs
                        .iter()
                        .map(|(p, i)| (p.to_string(), i.clone())),
                );
            }
            for c in inner.clients.values().filter_map(|w| w.upgrade()) {
                certs.extend(
                    c.entry
                        .state()
                        .certs
                        .iter()
                        .map(|(p, i)| (p.to_string(), i.clone())),
                );
            }
        }
        let mut inner = self.lock();
        for (path, info) in certs {
            let left = info.not_after - now;
            if left >= warning_window(&path, &info) {
                continue;
            }
            let last = inner.warned.entry(path.clone()).or_insert(now);
            if now - *last >= 86_400 {
                *last = now;
                if left <= 0 {
                    tracing::error!(cert = %path, expired_secs_ago = -left, "TLS certificate has expired");
                } else {
                    tracing::warn!(cert = %path, expires_in_secs = left, "TLS certificate expires soon");
                }
            }
        }
        drop(inner);
        self.export_expiry();
    }
}

/// How long before its expiry a certificate is warned about: a week for a file (someone must
/// replace it); for an SDS secret, which the control plane replaces at 70% of its lifetime,
/// the last 15% of its lifetime (the replacement is overdue).
fn warning_window(source: &str, info: &CertInfo) -> i64 {
    if source.starts_with("secret:") {
        (info.not_after - info.not_before).max(0) * 15 / 100
    } else {
        EXPIRY_WARNING.as_secs() as i64
    }
}

/// A plain client config verifying servers by name against `ca` (a PEM file) or the system
/// bundle, offering `alpn`: for the xDS client's connection to the control plane.
pub(crate) fn plain_client_config(
    ca: Option<&Path>,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ClientConfig>, String> {
    let roots = match ca {
        Some(path) => load::roots(&path.display(), &load::read(path)?)?,
        None => load::system_roots()?.1,
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(TlsVersion::Tls12))
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The live entries of one side.
fn live<K, V>(map: &HashMap<K, Weak<V>>) -> Vec<Arc<V>> {
    map.values().filter_map(Weak::upgrade).collect()
}

/// Parses a secret as the proxy will use it: a certificate chain with its matching key, or a
/// trust bundle with at least one usable CA.
fn check_secret(secret: &Secret) -> Result<(), String> {
    let what = Source::Secret(secret.name.clone(), Part::Chain);
    match &secret.kind {
        SecretKind::Certificate {
            cert_chain,
            private_key,
        } => {
            let chain = load::certs(&what, cert_chain.as_bytes())?;
            let key = load::key(&what, private_key.0.as_bytes())?;
            let signing = provider()
                .key_provider
                .load_private_key(key)
                .map_err(|e| format!("{what}: unsupported private key: {e}"))?;
            rustls::sign::CertifiedKey::new(chain, signing)
                .keys_match()
                .map_err(|_| format!("{what}: the private key is not the certificate's"))
        }
        SecretKind::TrustBundle { ca } => load::roots(&what, ca.as_bytes()).map(|_| ()),
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Folds bursts of file events into one reload; re-exports expiry every tick. Ends when the
/// store (and with it the watcher and the channel's senders) is gone.
fn reload_thread(store: Weak<TlsStore>, rx: mpsc::Receiver<()>) {
    loop {
        match rx.recv_timeout(EXPIRY_TICK) {
            Ok(()) => {
                // More events of the same write (create, modify, rename) come within the burst.
                while rx.recv_timeout(DEBOUNCE).is_ok() {}
                let Some(s) = store.upgrade() else { return };
                s.reload();
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let Some(s) = store.upgrade() else { return };
                s.tick();
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}
