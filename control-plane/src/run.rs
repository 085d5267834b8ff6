//! The control plane's loop: reads the directory (watched, debounced) and the registry (changes
//! and TTL lapses), builds the resources of every scope, and hands them to the snapshot cache
//! through [`Publish`]. A directory edit that does not validate is logged error by error and
//! the last good directory keeps being served; at start, it is fatal (an operator sees the
//! errors at once rather than proxies getting nothing).

use crate::api::HttpState;
use crate::source::dir::{self, DirConfig, Scope};
use crate::source::registry;
use sluice_config::{Resource, ResourceKey};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The resources of every scope, as one publication.
pub type Scopes = BTreeMap<Scope, BTreeMap<ResourceKey, Resource>>;

/// Where built resources go (the snapshot cache). Every call carries every scope: a scope
/// missing from it no longer exists (its proxies fall back to the next wider scope).
pub trait Publish: Send {
    /// Publishes the scopes; returns nothing (the cache reports its own failures).
    fn publish(&mut self, scopes: Scopes);
}

impl<F: FnMut(Scopes) + Send> Publish for F {
    fn publish(&mut self, scopes: Scopes) {
        self(scopes)
    }
}

/// Builds the resources of every scope from the directory and the registry.
pub fn build(
    dir: &DirConfig,
    registered: &BTreeMap<String, Vec<sluice_config::Endpoint>>,
) -> Scopes {
    let mut scopes: Scopes = BTreeMap::new();
    let mut keys: Vec<Scope> = dir.scopes.keys().cloned().collect();
    if !keys.contains(&Scope::All) {
        keys.push(Scope::All);
    }
    for scope in keys {
        let mut resources = dir.resources(&scope);
        registry::merge(&mut resources, registered);
        scopes.insert(scope, resources);
    }
    scopes
}

/// The loop's inputs.
#[derive(Debug)]
pub struct Inputs {
    /// The watched directory, if any.
    pub directory: Option<PathBuf>,
    /// The HTTP server's state (the registry lives there).
    pub http: Arc<HttpState>,
    /// Debounce of bursts of changes.
    pub debounce: Duration,
}

/// Loads the directory once (for the start: an error is fatal).
pub fn initial(directory: Option<&PathBuf>) -> Result<DirConfig, sluice_config::ConfigErrors> {
    match directory {
        Some(d) => dir::load(d),
        None => Ok(DirConfig::default()),
    }
}

/// Runs until the task is dropped, starting from `current` (already published once by the
/// caller, or not: the loop publishes at once).
pub async fn run(inputs: Inputs, mut current: DirConfig, mut publish: impl Publish) {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let _watcher = inputs.directory.as_ref().and_then(|d| watch(d, tx));
    let rebuild = |dir: &DirConfig, publish: &mut dyn Publish| {
        let registered = inputs
            .http
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .endpoints();
        publish.publish(build(dir, &registered));
        inputs
            .http
            .ready
            .store(true, std::sync::atomic::Ordering::Release);
    };
    rebuild(&current, &mut publish);
    let debounce = tokio::time::sleep(Duration::MAX);
    tokio::pin!(debounce);
    let (mut dir_pending, mut reg_pending) = (false, false);
    loop {
        let next_expiry = inputs
            .http
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .next_expiry()
            .unwrap_or_else(|| Instant::now() + registry::IDLE_SWEEP);
        tokio::select! {
            Some(()) = rx.recv() => {
                dir_pending = true;
                debounce.as_mut().reset(Instant::now() + inputs.debounce);
            }
            () = inputs.http.changed.notified() => {
                reg_pending = true;
                debounce.as_mut().reset(Instant::now() + inputs.debounce);
            }
            () = tokio::time::sleep_until(next_expiry) => {
                let gone = inputs
                    .http
                    .registry
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .expire(Instant::now());
                for (cluster, address) in &gone {
                    tracing::warn!(%cluster, %address, "registration lapsed (no heartbeat within its TTL): endpoint removed");
                }
                if !gone.is_empty() {
                    rebuild(&current, &mut publish);
                }
            }
            () = debounce.as_mut(), if dir_pending || reg_pending => {
                if dir_pending && let Some(d) = &inputs.directory {
                    match dir::load(d) {
                        Ok(c) if c == current => tracing::debug!("directory unchanged"),
                        Ok(c) => {
                            tracing::info!(dir = %d.display(), "directory changed: publishing");
                            current = c;
                        }
                        Err(errors) => {
                            for e in &errors.0 {
                                tracing::error!("directory change rejected, keeping the last good config: {e}");
                            }
                        }
                    }
                }
                dir_pending = false;
                reg_pending = false;
                rebuild(&current, &mut publish);
            }
        }
    }
}

/// Watches the directory tree (editors replace files; Kubernetes swaps a `..data` link).
fn watch(
    dir: &std::path::Path,
    tx: mpsc::UnboundedSender<()>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let mut w = match notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(e) = ev
            && !e.kind.is_access()
        {
            let _ = tx.send(());
        }
    }) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the directory: changes are not picked up");
            return None;
        }
    };
    if let Err(e) = w.watch(dir, notify::RecursiveMode::Recursive) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the directory: changes are not picked up");
        return None;
    }
    Some(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::registry::{Registration, Registry, RegistrySettings};
    use sluice_config::ResourceType;

    fn state() -> Arc<HttpState> {
        Arc::new(HttpState {
            registry: std::sync::Mutex::new(Registry::new(RegistrySettings::default())),
            changed: tokio::sync::Notify::new(),
            status: Box::new(String::new),
            metrics: Box::new(String::new),
            ready: Default::default(),
            bundle: None,
        })
    }

    fn ports(scopes: &Scopes, cluster: &str) -> Vec<u16> {
        match scopes[&Scope::All].get(&(ResourceType::Endpoints, cluster.to_string())) {
            Some(Resource::Endpoints(e)) => e.endpoints.iter().map(|e| e.address.port()).collect(),
            _ => Vec::new(),
        }
    }

    /// The loop publishes at start, after a registration (debounced), and when the
    /// registration's TTL lapses (paused time: the lapse is exact).
    #[tokio::test(start_paused = true)]
    async fn registrations_publish_and_lapse() {
        let http = state();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let inputs = Inputs {
            directory: None,
            http: Arc::clone(&http),
            debounce: Duration::from_millis(100),
        };
        let task = tokio::spawn(run(inputs, DirConfig::default(), move |s: Scopes| {
            let _ = tx.send(s);
        }));
        assert!(ports(&rx.recv().await.unwrap(), "api").is_empty());
        let t0 = Instant::now();
        http.registry
            .lock()
            .unwrap()
            .register(
                "api",
                Registration {
                    address: "127.0.0.1:9".parse().unwrap(),
                    ttl: Some(sluice_config::Duration::from_secs(10)),
                    weight: 1,
                    zone: None,
                },
                t0,
            )
            .unwrap();
        http.changed.notify_one();
        assert_eq!(ports(&rx.recv().await.unwrap(), "api"), vec![9]);
        assert_eq!(Instant::now() - t0, Duration::from_millis(100));
        assert!(ports(&rx.recv().await.unwrap(), "api").is_empty());
        assert_eq!(Instant::now() - t0, Duration::from_secs(10));
        task.abort();
    }
}
