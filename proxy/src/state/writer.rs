//! The one writer of live state. [`Writer::apply`] takes an update of any resource types
//! (from the file source today, from xDS next), checks each resource on its own, applies the
//! valid ones and rejects the others by name, recompiles only what depends on what changed,
//! and swaps one new snapshot in:
//!
//! | change | touches |
//! |---|---|
//! | a cluster's endpoints | the cluster handle's endpoint set (no route table, no listener, no pool of another endpoint) |
//! | a cluster's settings | the cluster handle's settings |
//! | a route table | that table and the HTTP listeners using it (no cluster, no pool) |
//! | a listener | that listener (bound before the swap; a bind failure rejects it) |
//! | a secret | the TLS configs naming it, inside the TLS store (nothing recompiled) |

use super::{Live, ResourceVersion, Snapshot};
use crate::cluster::{Change, Registry};
use crate::http::filters::HttpFilter;
use crate::listener::{ListenerSpec, Reconciler};
use crate::metrics::Metrics;
use crate::route::RouteTable;
use sluice_config::{
    self as config, Config, Resource, ResourceKey, ResourceType, Update, validate_resource,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

/// What an update did to one resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceResult {
    /// Type.
    pub kind: ResourceType,
    /// Name.
    pub name: String,
    /// What changed, or why the resource was rejected (the previous version, if any, stays).
    pub outcome: Result<Change, String>,
}

impl fmt::Display for ResourceResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Ok(change) => write!(f, "{} \"{}\": {change:?}", self.kind, self.name),
            Err(why) => write!(f, "{} \"{}\" rejected: {why}", self.kind, self.name),
        }
    }
}

impl Origin {
    /// `file`, `xds` or `discovered`.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::File => "file",
            Origin::Xds => "xds",
            Origin::Discovered => "discovered",
        }
    }
}

/// Who brought a resource. A resource belongs to the source that added it: the bootstrap file's
/// resources are static (Envoy's `static_resources`), xDS's are dynamic, and neither source may
/// replace or remove the other's (an upsert of a name the other source owns is rejected by name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The config file (or inline text): static resources.
    File,
    /// The xDS client: dynamic resources.
    Xds,
    /// Discovered endpoints (DNS): owned by whoever owns their cluster.
    Discovered,
}

/// The result of one update.
#[derive(Clone, Debug, Default)]
pub struct Applied {
    /// One entry per resource named by the update.
    pub results: Vec<ResourceResult>,
}

impl Applied {
    /// The rejected resources.
    pub fn rejected(&self) -> impl Iterator<Item = &ResourceResult> {
        self.results.iter().filter(|r| r.outcome.is_err())
    }

    /// True when nothing was rejected.
    pub fn is_ok(&self) -> bool {
        self.rejected().next().is_none()
    }

    /// What changed, for the reload log line: `cluster added: a, b; route_table updated: t;
    /// listener removed: old` (resources in the order applied; unchanged ones left out), or
    /// `nothing changed`.
    pub fn summary(&self) -> String {
        let mut groups: Vec<(String, Vec<&str>)> = Vec::new();
        for r in &self.results {
            let what = match r.outcome {
                Ok(Change::Added) => "added",
                Ok(Change::Updated) => "updated",
                Ok(Change::Removed) => "removed",
                Ok(Change::Unchanged) | Err(_) => continue,
            };
            let key = format!("{} {what}", r.kind);
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, names)) => names.push(&r.name),
                None => groups.push((key, vec![&r.name])),
            }
        }
        if groups.is_empty() {
            return "nothing changed".into();
        }
        groups
            .iter()
            .map(|(k, names)| format!("{k}: {}", names.join(", ")))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// True when some resource changed.
    pub fn changed(&self) -> bool {
        self.results
            .iter()
            .any(|r| matches!(r.outcome, Ok(c) if c != Change::Unchanged))
    }
}

/// The only place live config changes.
#[derive(Debug)]
pub struct Writer {
    pub(super) live: Arc<Live>,
    admin: config::Admin,
    resources: BTreeMap<ResourceKey, Resource>,
    registry: Registry,
    route_tables: HashMap<String, Arc<RouteTable>>,
    listeners: HashMap<String, Arc<ListenerSpec>>,
    reconciler: Reconciler,
    filters: Vec<Arc<dyn HttpFilter>>,
    health: crate::health::Supervisor,
    node: config::Node,
    /// Which source owns each live resource (`File` or `Xds`, never `Discovered`).
    owners: HashMap<ResourceKey, Origin>,
    /// The generation each resource was last added or changed in (for `/config_dump`).
    changed_at: BTreeMap<ResourceKey, u64>,
}

impl Writer {
    /// A writer for `live` (which starts empty), binding listeners through `reconciler`.
    pub fn new(
        live: Arc<Live>,
        admin: config::Admin,
        workers: usize,
        reconciler: Reconciler,
        filters: Vec<Arc<dyn HttpFilter>>,
    ) -> Self {
        Writer {
            registry: Registry::new(Arc::clone(&live.metrics), workers),
            live,
            admin,
            resources: BTreeMap::new(),
            route_tables: HashMap::new(),
            listeners: HashMap::new(),
            reconciler,
            filters,
            health: Default::default(),
            node: config::Node::default(),
            owners: HashMap::new(),
            changed_at: BTreeMap::new(),
        }
    }

    /// Sets who this proxy is (`node`, read at start, before the first update): the registry
    /// learns its zone for locality preference.
    pub fn set_node(&mut self, node: &config::Node) {
        self.node = node.clone();
        self.registry.set_zone(node.zone.as_deref());
    }

    /// Sets the tracer HTTP listeners compile with (at start, before any is applied).
    pub fn set_tracer(&mut self, tracer: Option<Arc<crate::otel::Tracer>>) {
        self.registry.set_tracer(tracer);
    }

    /// Who this proxy is (as set at start).
    pub fn node(&self) -> &config::Node {
        &self.node
    }

    /// The live resources.
    pub fn resources(&self) -> &BTreeMap<ResourceKey, Resource> {
        &self.resources
    }

    /// The live resources `origin` owns (`Discovered` endpoints count as their cluster's
    /// owner's): what a source diffs its next state against.
    pub fn resources_from(&self, origin: Origin) -> BTreeMap<ResourceKey, Resource> {
        self.resources
            .iter()
            .filter(|(k, _)| self.owner(k) == self.resolve(origin, k))
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect()
    }

    /// Who owns `key` (a resource with no recorded owner is static).
    fn owner(&self, key: &ResourceKey) -> Origin {
        self.owners.get(key).copied().unwrap_or(Origin::File)
    }

    /// The owner a resource from `origin` gets: discovered endpoints belong to their cluster's
    /// owner.
    fn resolve(&self, origin: Origin, key: &ResourceKey) -> Origin {
        match origin {
            Origin::Discovered => self.owner(&(ResourceType::Cluster, key.1.clone())),
            o => o,
        }
    }

    /// The cluster registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The listener reconciler (bound addresses).
    pub fn reconciler(&self) -> &Reconciler {
        &self.reconciler
    }

    /// Applies `update` as the file source's (static resources): see [`Writer::apply_from`].
    pub fn apply(&mut self, update: Update) -> Applied {
        self.apply_from(Origin::File, update)
    }

    /// Applies `update` from `origin`: every valid resource takes effect, every invalid one is
    /// rejected by name and its previous version (if any) keeps serving. A resource another
    /// source owns is rejected (upsert) or left alone (removal, reported unchanged).
    pub fn apply_from(&mut self, origin: Origin, update: Update) -> Applied {
        let metrics = Arc::clone(&self.live.metrics);
        let mut results = Vec::new();
        let mut upserts = update.upserts;
        upserts.sort_by_key(Resource::kind);
        let mut dirty_tables: HashSet<String> = HashSet::new();
        let mut dirty_listeners: HashSet<String> = HashSet::new();

        for r in upserts {
            let key = r.key();
            let owner = self.resolve(origin, &key);
            let outcome = match self.owners.get(&key) {
                Some(current) if *current != owner => Err(conflict(*current)),
                _ if origin == Origin::File && !r.secret_names().is_empty() => Err(format!(
                    "names SDS secrets ({}): secrets come from the control plane, so only a resource it sends may name them (a config file names `cert`/`key`/`ca` files)",
                    r.secret_names().join(", ")
                )),
                _ => self.upsert(&r, &mut dirty_tables, &mut dirty_listeners),
            };
            metrics.config_resource(r.kind().as_str(), outcome.is_ok());
            if matches!(outcome, Ok(Change::Added | Change::Updated)) {
                // `publish` below makes the next generation.
                self.changed_at
                    .insert(key.clone(), self.live.generation() + 1);
            }
            if outcome.is_ok() {
                self.owners.insert(key.clone(), owner);
                self.resources.insert(key, r.clone());
            }
            results.push(ResourceResult {
                kind: r.kind(),
                name: r.name().to_string(),
                outcome,
            });
        }
        for key in update.removals {
            let change = if self.resources.contains_key(&key)
                && self.owner(&key) != self.resolve(origin, &key)
            {
                Change::Unchanged
            } else {
                self.owners.remove(&key);
                self.changed_at.remove(&key);
                self.remove(&key, &mut dirty_tables)
            };
            results.push(ResourceResult {
                kind: key.0,
                name: key.1,
                outcome: Ok(change),
            });
        }
        // Listeners whose route table changed are recompiled (their sockets stay).
        for (name, spec) in &self.listeners {
            if spec.route_table().is_some_and(|t| dirty_tables.contains(t)) {
                dirty_listeners.insert(name.clone());
            }
        }
        for name in dirty_listeners {
            if let Some(Resource::Listener(l)) =
                self.resources.get(&(ResourceType::Listener, name.clone()))
            {
                // Its TLS is live (held by the current spec), so only a bug fails here; the
                // listener then keeps its current settings.
                match self.compile_listener(&l.clone()) {
                    Ok(spec) => {
                        self.listeners.insert(name, Arc::new(spec));
                    }
                    Err(e) => {
                        tracing::error!(listener = %name, error = %e, "listener not recompiled")
                    }
                }
            }
        }
        self.registry.collect_garbage();
        self.publish();
        self.sync_health();
        Applied { results }
    }

    /// Starts, restarts and stops health checkers to match the clusters (after every apply;
    /// the control loop calls it once more when its runtime starts).
    pub(crate) fn sync_health(&mut self) {
        self.health.sync(&self.registry, &self.live.metrics);
    }

    fn upsert(
        &mut self,
        r: &Resource,
        dirty_tables: &mut HashSet<String>,
        dirty_listeners: &mut HashSet<String>,
    ) -> Result<Change, String> {
        let issues = validate_resource(r);
        if !issues.is_empty() {
            return Err(issues
                .iter()
                .map(|i| format!("{}: {}", i.path, i.message))
                .collect::<Vec<_>>()
                .join("; "));
        }
        let existed = self.resources.get(&r.key());
        if existed == Some(r) {
            return Ok(Change::Unchanged);
        }
        let change = if existed.is_some() {
            Change::Updated
        } else {
            Change::Added
        };
        match r {
            Resource::Cluster(c) => self.registry.set_settings(c),
            Resource::Endpoints(e) => Ok(self.registry.set_endpoints(e)),
            // Entries naming it are rebuilt inside the TLS store: no listener or cluster is
            // recompiled, no connection dropped.
            Resource::Secret(s) => self.registry.tls().set_secret(s).map(|_| change),
            Resource::RouteTable(t) => {
                let table =
                    RouteTable::compile(t, &mut self.registry).map_err(|e| e.to_string())?;
                self.route_tables.insert(t.name.clone(), Arc::new(table));
                dirty_tables.insert(t.name.clone());
                Ok(change)
            }
            Resource::Listener(l) => {
                let spec = self.compile_listener(l)?;
                let previous = self.listeners.get(&l.name);
                self.reconciler
                    .prepare(&spec, previous.map(|p| &**p))
                    .map_err(|e| e.to_string())?;
                self.listeners.insert(l.name.clone(), Arc::new(spec));
                dirty_listeners.remove(&l.name);
                Ok(change)
            }
        }
    }

    fn remove(&mut self, key: &ResourceKey, dirty_tables: &mut HashSet<String>) -> Change {
        if self.resources.remove(key).is_none() {
            return Change::Unchanged;
        }
        let name = key.1.as_str();
        match key.0 {
            ResourceType::Cluster => self.registry.remove_settings(name),
            ResourceType::Endpoints => self.registry.remove_endpoints(name),
            ResourceType::Secret => {
                self.registry.tls().remove_secret(name);
                Change::Removed
            }
            ResourceType::RouteTable => {
                // Listeners still naming it answer 404 until it returns.
                self.route_tables
                    .insert(name.to_string(), Arc::new(RouteTable::empty(name)));
                dirty_tables.insert(name.to_string());
                Change::Removed
            }
            ResourceType::Listener => {
                self.listeners.remove(name);
                Change::Removed
            }
        }
    }

    fn compile_listener(&mut self, l: &config::Listener) -> Result<ListenerSpec, String> {
        let tables = &mut self.route_tables;
        ListenerSpec::compile(
            l,
            |name| {
                Arc::clone(
                    tables
                        .entry(name.to_string())
                        .or_insert_with(|| Arc::new(RouteTable::empty(name))),
                )
            },
            &mut self.registry,
            &self.live.metrics,
            &self.filters,
        )
    }

    /// Swaps in a snapshot of the current state and tells the workers about listener changes.
    fn publish(&mut self) {
        let mut config = Config::from_resources(self.admin.clone(), self.resources.values());
        config.node = self.node.clone();
        let snapshot = Snapshot {
            generation: self.live.generation() + 1,
            config: Arc::new(config),
            listeners: self.listeners.clone(),
            route_tables: self.route_tables.clone(),
            clusters: self
                .registry
                .iter()
                .map(|(n, h)| (n.clone(), Arc::clone(h)))
                .collect(),
            versions: Arc::new(
                self.resources
                    .keys()
                    .map(|key| ResourceVersion {
                        kind: key.0,
                        name: key.1.clone(),
                        generation: self.changed_at.get(key).copied().unwrap_or_default(),
                        origin: self.owner(key),
                    })
                    .collect(),
            ),
        };
        self.live.swap(snapshot);
        self.reconciler.commit(&self.listeners);
    }
}

/// Why a source may not replace a resource `owner` owns.
fn conflict(owner: Origin) -> String {
    match owner {
        Origin::File | Origin::Discovered => {
            "a static resource (from the bootstrap file) has this name".into()
        }
        Origin::Xds => "a dynamic resource (from xDS) has this name".into(),
    }
}

impl Metrics {
    /// Counts one resource of an update, accepted or rejected.
    pub(crate) fn config_resource(&self, kind: &'static str, accepted: bool) {
        self.config_resources(kind, if accepted { "accepted" } else { "rejected" });
    }
}
