//! `sluice control-plane`: binds the ADS and HTTP servers, loads the directory, and runs the
//! loop that turns the directory and the registry into snapshots (translate: the model's
//! resources → Envoy v3 protos with `sluice_config::xds::encode`; one snapshot per scope,
//! keyed as the cache resolves nodes: node id, node cluster, `*`).

use crate::api::{self, HttpState};
use crate::cache::{DEFAULT_KEY, SnapshotCache};
use crate::metrics::AdsMetrics;
use crate::run::{self, Inputs, Scopes};
use crate::settings::Settings;
use crate::snapshot::Snapshot;
use crate::source::dir::Scope;
use crate::source::registry::Registry;
use crate::AdsServer;
use sluice_config::xds;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

/// A running control plane (its tasks run on the current tokio runtime).
#[derive(Debug)]
pub struct ControlPlane {
    /// Where ADS is served.
    pub xds: SocketAddr,
    /// Where the HTTP API is served.
    pub http: SocketAddr,
    server: AdsServer,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ControlPlane {
    /// The ADS server (status board, cache, metrics).
    pub fn server(&self) -> &AdsServer {
        &self.server
    }

    /// Ends every stream and stops the servers.
    pub fn shutdown(&self) {
        self.server.close_streams();
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts the control plane: fails when the directory does not validate (every error, each
/// with its file, line and column) or an address cannot be bound.
pub async fn start(settings: Settings) -> Result<ControlPlane, String> {
    let dir_path = settings.directory.as_ref().map(|d| d.path.clone());
    let dir = run::initial(dir_path.as_ref()).map_err(|e| e.to_string())?;
    let xds_listener = tokio::net::TcpListener::bind(settings.xds.address)
        .await
        .map_err(|e| format!("cannot bind the xDS address {}: {e}", settings.xds.address))?;
    let http_listener = tokio::net::TcpListener::bind(settings.http.address)
        .await
        .map_err(|e| format!("cannot bind the HTTP address {}: {e}", settings.http.address))?;
    let xds_addr = xds_listener.local_addr().map_err(|e| e.to_string())?;
    let http_addr = http_listener.local_addr().map_err(|e| e.to_string())?;

    let metrics = AdsMetrics::new();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let registry = Arc::new(registry);
    let cache = SnapshotCache::new();
    let server = AdsServer::new(cache.clone()).with_metrics(metrics.clone());
    let board = server.status_board().clone();
    let status_cache = cache.clone();
    let http = Arc::new(HttpState {
        registry: std::sync::Mutex::new(Registry::new(settings.registry.clone())),
        changed: tokio::sync::Notify::new(),
        status: Box::new(move || status_json(&board, &status_cache)),
        metrics: Box::new(move || {
            let mut out = String::new();
            let _ = prometheus_client::encoding::text::encode_registry(&mut out, &registry);
            out.push_str("# EOF\n");
            out
        }),
        ready: Default::default(),
    });

    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(api::serve(http_listener, Arc::clone(&http))));
    let ads = server.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = crate::serve(xds_listener, ads).await {
            tracing::error!(error = %e, "xDS server failed");
        }
    }));
    let inputs = Inputs {
        directory: dir_path,
        http,
        debounce: settings.debounce.get(),
    };
    let publisher = Publisher {
        cache,
        metrics,
        keys: BTreeSet::new(),
    };
    tasks.push(tokio::spawn(run::run(inputs, dir, publisher)));
    tracing::info!(address = %xds_addr, "xds listening");
    tracing::info!(address = %http_addr, "http listening (registry API, /status, /metrics)");
    Ok(ControlPlane {
        xds: xds_addr,
        http: http_addr,
        server,
        tasks,
    })
}

/// `/status`: the connected proxies and the version of every published snapshot.
fn status_json(board: &crate::status::StatusBoard, cache: &SnapshotCache) -> String {
    let proxies = board.status();
    let mut snapshots = BTreeMap::new();
    for key in cache.keys() {
        if let Some(p) = cache.get(&key) {
            let versions: BTreeMap<String, String> = p
                .snapshot
                .type_urls()
                .map(|t| (crate::snapshot::type_url::short_name(t).to_string(), p.snapshot.version(t)))
                .collect();
            snapshots.insert(key, versions);
        }
    }
    serde_json::to_string_pretty(&serde_json::json!({
        "proxies": proxies,
        "snapshots": snapshots,
    }))
    .unwrap_or_default()
        + "\n"
}

/// Turns the scopes into snapshots in the cache.
struct Publisher {
    cache: SnapshotCache,
    metrics: AdsMetrics,
    /// The keys published last time (a scope that disappears is cleared).
    keys: BTreeSet<String>,
}

impl run::Publish for Publisher {
    fn publish(&mut self, scopes: Scopes) {
        let started = std::time::Instant::now();
        let mut keys = BTreeSet::new();
        for (scope, resources) in scopes {
            let key = match scope {
                Scope::All => DEFAULT_KEY.to_string(),
                Scope::Cluster(c) => c,
                Scope::Node(n) => n,
            };
            self.cache.set(key.clone(), snapshot(&resources));
            keys.insert(key);
        }
        for gone in self.keys.difference(&keys) {
            self.cache.clear(gone);
        }
        self.keys = keys;
        self.metrics
            .snapshot_build
            .observe(started.elapsed().as_secs_f64());
    }
}

/// One scope's resources as a snapshot: every type present (an empty type is an empty,
/// versioned set, so a proxy subscribing to it is answered).
pub fn snapshot(
    resources: &BTreeMap<sluice_config::ResourceKey, sluice_config::Resource>,
) -> Snapshot {
    let mut by_type: BTreeMap<&'static str, Vec<(String, xds::envoy_types::pb::google::protobuf::Any)>> =
        [xds::CLUSTER, xds::ENDPOINT, xds::LISTENER, xds::ROUTE]
            .into_iter()
            .map(|t| (t, Vec::new()))
            .collect();
    for ((kind, name), r) in resources {
        by_type
            .entry(xds::type_url(*kind))
            .or_default()
            .push((name.clone(), xds::encode(r)));
    }
    let mut s = Snapshot::new();
    for (t, rs) in by_type {
        s.set_resources(t, rs);
    }
    s
}
