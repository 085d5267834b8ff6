//! `sluice control-plane`: binds the ADS and HTTP servers, loads the directory, and runs the
//! loop that turns the directory and the registry into snapshots (translate: the model's
//! resources → Envoy v3 protos with `sluice_config::xds::encode`; one snapshot per scope,
//! keyed as the cache resolves nodes: node id, node cluster, `*`).

use crate::AdsServer;
use crate::api::{self, HttpState};
use crate::cache::{DEFAULT_KEY, SnapshotCache};
use crate::metrics::AdsMetrics;
use crate::run::{self, Inputs, Scopes};
use crate::settings::Settings;
use crate::snapshot::Snapshot;
use crate::source::dir::Scope;
use crate::source::registry::Registry;
use sluice_config::xds::envoy_types::pb::google::protobuf::Any;
use sluice_config::{Resource, ResourceKey, xds};
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
        .map_err(|e| {
            format!(
                "cannot bind the HTTP address {}: {e}",
                settings.http.address
            )
        })?;
    let xds_addr = xds_listener.local_addr().map_err(|e| e.to_string())?;
    let http_addr = http_listener.local_addr().map_err(|e| e.to_string())?;

    let metrics = AdsMetrics::new();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let ca = match &settings.ca {
        Some(s) => {
            let ca_metrics = crate::ca::CaMetrics::default();
            ca_metrics.register(&mut registry);
            Some(crate::ca::Ca::new(s, ca_metrics)?)
        }
        None => None,
    };
    let registry = Arc::new(registry);
    let cache = SnapshotCache::new();
    let mut server = AdsServer::new(cache.clone()).with_metrics(metrics.clone());
    let mut tasks = Vec::new();
    if let Some(ca) = ca {
        tasks.push(tokio::spawn(ca.clone().rotate()));
        server = server.with_ca(ca);
    }
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
        bundle: server.ca().map(|ca| ca.bundle_pem().to_string()),
    });

    tasks.push(tokio::spawn(api::serve(http_listener, Arc::clone(&http))));
    let serving = match &settings.xds.tls {
        None => None,
        Some(t) => {
            Some(match (&t.cert, &t.key, server.ca()) {
                (Some(cert), Some(key), _) if t.server_names.is_empty() => {
                    crate::tls::ServingCert::new(crate::tls::from_files(cert, key)?)
                }
                (None, None, Some(ca)) if !t.server_names.is_empty() => {
                    let (chain, key, _) = ca.serving_certificate(&t.server_names)?;
                    let serving = crate::tls::ServingCert::new(crate::tls::server_config(
                        chain.as_bytes(),
                        key.as_bytes(),
                        "xds.tls",
                    )?);
                    tasks.push(tokio::spawn(crate::tls::renew(
                        ca.clone(),
                        t.server_names.clone(),
                        Arc::clone(&serving),
                    )));
                    serving
                }
                (None, None, None) if !t.server_names.is_empty() => {
                    return Err("xds.tls.server_names: a certificate from the built-in CA needs a `ca` section".into());
                }
                _ => {
                    return Err("xds.tls: set `cert` and `key` (PEM files), or `server_names` (a certificate from the built-in CA)".into());
                }
            })
        }
    };
    let ads = server.clone();
    tasks.push(tokio::spawn(async move {
        let served = match serving {
            Some(serving) => {
                crate::serve_tls_with_shutdown(xds_listener, ads, serving, std::future::pending())
                    .await
            }
            None => crate::serve(xds_listener, ads).await,
        };
        if let Err(e) = served {
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
        encoded: BTreeMap::new(),
    };
    tasks.push(tokio::spawn(run::run(inputs, dir, publisher)));
    tracing::info!(address = %xds_addr, tls = settings.xds.tls.is_some(), "xds listening");
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
                .map(|t| {
                    (
                        crate::snapshot::type_url::short_name(t).to_string(),
                        p.snapshot.version(t),
                    )
                })
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
    /// Each resource as last encoded, with the model it came from. An unchanged resource
    /// reuses its bytes: encoding is not byte-stable (prost writes protobuf maps in hash
    /// order), and the snapshot's versions are hashes of the bytes, so re-encoding would give
    /// every rebuild new versions and push to every proxy. Also saves the encoding work.
    encoded: Encoded,
}

/// Encodings kept between builds (see [`snapshot`]).
/// Several scopes may hold different versions of one resource (a node directory overriding a
/// common route table), so each key keeps every variant in use.
pub type Encoded = BTreeMap<ResourceKey, Vec<(Resource, Any)>>;

impl run::Publish for Publisher {
    fn publish(&mut self, scopes: Scopes) {
        let started = tokio::time::Instant::now();
        let mut keys = BTreeSet::new();
        let mut next = Encoded::new();
        for (scope, resources) in scopes {
            let key = match scope {
                Scope::All => DEFAULT_KEY.to_string(),
                Scope::Cluster(c) => c,
                Scope::Node(n) => n,
            };
            self.cache
                .set(key.clone(), snapshot(&resources, &self.encoded, &mut next));
            keys.insert(key);
        }
        self.encoded = next;
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
/// versioned set, so a proxy subscribing to it is answered). A resource equal to one in `last`
/// (or already encoded for another scope in `next`) reuses that encoding; every encoding used
/// goes into `next`.
pub fn snapshot(
    resources: &BTreeMap<ResourceKey, Resource>,
    last: &Encoded,
    next: &mut Encoded,
) -> Snapshot {
    let mut by_type: BTreeMap<&'static str, Vec<(String, Any)>> =
        [xds::CLUSTER, xds::ENDPOINT, xds::LISTENER, xds::ROUTE]
            .into_iter()
            .map(|t| (t, Vec::new()))
            .collect();
    for (key, r) in resources {
        let find = |m: &Encoded| {
            m.get(key)?
                .iter()
                .find(|(old, _)| old == r)
                .map(|(_, a)| a.clone())
        };
        let any = match find(next) {
            Some(a) => a,
            None => {
                let any = find(last).unwrap_or_else(|| xds::encode(r));
                next.entry(key.clone())
                    .or_default()
                    .push((r.clone(), any.clone()));
                any
            }
        };
        by_type
            .entry(xds::type_url(key.0))
            .or_default()
            .push((key.1.clone(), any));
    }
    let mut s = Snapshot::new();
    for (t, rs) in by_type {
        s.set_resources(t, rs);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resources(yaml: &str) -> BTreeMap<ResourceKey, Resource> {
        sluice_config::parse(yaml, "t.yaml").unwrap().resources()
    }

    const A: &str = "listeners:
  - { name: l, address: 127.0.0.1:0, http: { route_table: t } }
route_tables:
  - name: t
    virtual_hosts:
      - name: v
        domains: [\"*\"]
        routes: [{ match: { prefix: / }, cluster: c, fault: { abort: { http_status: 503, percentage: 1 } } }]
clusters:
  - { name: c, endpoints: [127.0.0.1:1], lb_policy: peak_ewma }
";

    /// Rebuilding unchanged resources gives the same versions (no push), although encoding
    /// itself is not byte-stable; a change changes only its own type's version.
    #[test]
    fn unchanged_resources_keep_their_versions_across_rebuilds() {
        let mut last = Encoded::new();
        let mut next = Encoded::new();
        let s1 = snapshot(&resources(A), &last, &mut next);
        last = std::mem::take(&mut next);
        let s2 = snapshot(&resources(A), &last, &mut next);
        for t in [xds::CLUSTER, xds::ENDPOINT, xds::LISTENER, xds::ROUTE] {
            assert_eq!(s1.version(t), s2.version(t), "{t}");
        }
        last = std::mem::take(&mut next);
        let s3 = snapshot(
            &resources(&A.replace("127.0.0.1:1", "127.0.0.1:2")),
            &last,
            &mut next,
        );
        assert_ne!(s3.version(xds::ENDPOINT), s2.version(xds::ENDPOINT));
        assert_eq!(s3.version(xds::ROUTE), s2.version(xds::ROUTE));
        assert_eq!(s3.version(xds::CLUSTER), s2.version(xds::CLUSTER));
    }

    /// Two scopes holding different versions of the same resources (a node directory
    /// overriding the common one) both reuse their encodings across rebuilds (encoding is not
    /// byte-stable, so re-encoding could change versions): marked bytes in `last` come back.
    #[test]
    fn every_scope_reuses_its_encoding_when_scopes_differ() {
        let common = resources(A);
        let node = resources(&A.replace("percentage: 1", "percentage: 2"));
        let key = (sluice_config::ResourceType::RouteTable, "t".to_string());
        let mut last = Encoded::new();
        snapshot(&common, &Encoded::new(), &mut last);
        snapshot(&node, &Encoded::new(), &mut last);
        assert_eq!(last[&key].len(), 2, "both variants kept");
        for (i, (_, any)) in last.get_mut(&key).unwrap().iter_mut().enumerate() {
            any.value = vec![i as u8];
        }
        let mut next = Encoded::new();
        let bytes = |s: &Snapshot| {
            s.resources(xds::ROUTE)
                .unwrap()
                .get("t")
                .unwrap()
                .any
                .value
                .clone()
        };
        assert_eq!(bytes(&snapshot(&common, &last, &mut next)), vec![0]);
        assert_eq!(bytes(&snapshot(&node, &last, &mut next)), vec![1]);
    }
}
