//! The snapshot cache: one [`Snapshot`] per group of proxies, and a watch per connected
//! stream that wakes when the snapshot its node maps to changes.
//!
//! A node maps to the snapshot set under its node id if there is one, else under its
//! `node.cluster`, else under [`DEFAULT_KEY`] (`*`). A stream watches all three keys, so
//! setting (or clearing) any of them re-resolves the mapping; streams whose node cannot map
//! to a key are not woken by it.
//!
//! Debouncing is the caller's job: every [`SnapshotCache::set`] wakes the streams at once
//! (they then send only the types whose version changed), so a source that changes in bursts
//! should coalesce them before calling `set`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::time::Instant;

use tokio::sync::watch;

use crate::snapshot::Snapshot;

/// The key of the snapshot served to nodes that match no node id or cluster key.
pub const DEFAULT_KEY: &str = "*";

/// A snapshot as published: the resources and when [`SnapshotCache::set`] was called (the
/// start of the push latency).
#[derive(Debug)]
pub struct Published {
    /// The resources.
    pub snapshot: Snapshot,
    /// When it was set.
    pub set_at: Instant,
}

type Slot = watch::Sender<Option<Arc<Published>>>;

/// Snapshots per node group; cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct SnapshotCache {
    slots: Arc<Mutex<HashMap<String, Slot>>>,
}

/// Who a stream is, as far as snapshot selection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeKey {
    /// `node.id`.
    pub id: String,
    /// `node.cluster` (may be empty).
    pub cluster: String,
}

impl SnapshotCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Publishes `snapshot` under `key` (a node id, a node cluster or [`DEFAULT_KEY`]) and
    /// wakes every stream whose node maps to it.
    pub fn set(&self, key: impl Into<String>, snapshot: Snapshot) {
        let published = Arc::new(Published {
            snapshot,
            set_at: Instant::now(),
        });
        let mut slots = self.lock();
        let slot = slots
            .entry(key.into())
            .or_insert_with(|| watch::channel(None).0);
        slot.send_replace(Some(published));
    }

    /// Removes the snapshot under `key`; its nodes fall back to the next key.
    pub fn clear(&self, key: &str) {
        let mut slots = self.lock();
        if let Some(slot) = slots.get(key) {
            slot.send_replace(None);
            if slot.receiver_count() == 0 {
                slots.remove(key);
            }
        }
    }

    /// Every key that holds a snapshot, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, slot)| slot.borrow().is_some())
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort();
        keys
    }

    /// The snapshot under exactly `key`.
    pub fn get(&self, key: &str) -> Option<Arc<Published>> {
        self.lock().get(key).and_then(|s| s.borrow().clone())
    }

    /// The snapshot `node` maps to now, and the key it came from.
    pub fn resolve(&self, node: &NodeKey) -> Option<(String, Arc<Published>)> {
        let slots = self.lock();
        candidate_keys(node).into_iter().find_map(|key| {
            let published = slots.get(&key)?.borrow().clone()?;
            Some((key, published))
        })
    }

    /// A watch on the snapshot `node` maps to.
    pub fn watch(&self, node: &NodeKey) -> NodeWatch {
        let mut slots = self.lock();
        let receivers = candidate_keys(node)
            .into_iter()
            .map(|key| {
                let rx = slots
                    .entry(key.clone())
                    .or_insert_with(|| watch::channel(None).0)
                    .subscribe();
                (key, rx)
            })
            .collect();
        NodeWatch {
            cache: self.clone(),
            receivers,
            key: None,
            secrets: None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops the slots of `keys` that hold no snapshot and have no watcher left.
    fn prune(&self, keys: &[String]) {
        let mut slots = self.lock();
        for key in keys {
            let idle = slots
                .get(key)
                .is_some_and(|s| s.receiver_count() == 0 && s.borrow().is_none());
            if idle {
                slots.remove(key);
            }
        }
    }
}

/// Node id, then cluster, then the default key (without repeats or empty keys).
fn candidate_keys(node: &NodeKey) -> Vec<String> {
    let mut keys: Vec<String> = Vec::with_capacity(3);
    for key in [node.id.as_str(), node.cluster.as_str(), DEFAULT_KEY] {
        if !key.is_empty() && !keys.iter().any(|k| k == key) {
            keys.push(key.to_owned());
        }
    }
    keys
}

/// A stream's view of the cache: the current snapshot for its node, and a way to wait for
/// the next change to it.
#[derive(Debug)]
pub struct NodeWatch {
    cache: SnapshotCache,
    /// In priority order: node id, cluster, default.
    receivers: Vec<(String, watch::Receiver<Option<Arc<Published>>>)>,
    key: Option<String>,
    /// The node's own SDS secrets (its identity's certificate), served over its snapshot.
    secrets: Option<watch::Receiver<Arc<crate::ca::IssuedSecrets>>>,
}

impl NodeWatch {
    /// Serves `secrets` (the node's identity, from the CA) as the snapshot's SDS secrets.
    #[must_use]
    pub fn with_secrets(
        mut self,
        secrets: Option<watch::Receiver<Arc<crate::ca::IssuedSecrets>>>,
    ) -> Self {
        self.secrets = secrets;
        self
    }

    /// The snapshot the node maps to now (marks every key as seen), with the node's own
    /// secrets over it.
    pub fn current(&mut self) -> Option<Arc<Published>> {
        let base = self.base();
        match (base, &mut self.secrets) {
            (Some(base), Some(rx)) => {
                let secrets = Arc::clone(&rx.borrow_and_update());
                Some(Arc::new(Published {
                    snapshot: base.snapshot.overlay(
                        crate::snapshot::type_url::SECRET,
                        Arc::clone(&secrets.resources),
                    ),
                    set_at: base.set_at.max(secrets.set_at),
                }))
            }
            (base, _) => base,
        }
    }

    fn base(&mut self) -> Option<Arc<Published>> {
        let mut found = None;
        let mut found_key = None;
        for (key, rx) in &mut self.receivers {
            let value = rx.borrow_and_update().clone();
            if found.is_none() && value.is_some() {
                found = value;
                found_key = Some(key.clone());
            }
        }
        self.key = found_key;
        found
    }

    /// The key the last [`NodeWatch::current`] found its snapshot under.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// Waits until any of the node's keys is set or cleared since the last
    /// [`NodeWatch::current`]. Never returns while nothing changes (the cache keeps the
    /// senders alive while a watcher exists).
    pub async fn changed(&mut self) {
        let futures = self
            .receivers
            .iter_mut()
            .map(|(_, rx)| Box::pin(rx.changed()));
        // A closed channel would return at once forever; the cache never drops a watched
        // slot (nor the CA a held identity), but guard anyway by parking instead of spinning.
        let snapshot = async {
            if futures_select(futures.collect()).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let secrets_rx = &mut self.secrets;
        let secrets = async {
            let closed = match secrets_rx {
                Some(rx) => rx.changed().await.is_err(),
                None => true,
            };
            if closed {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = snapshot => {}
            () = secrets => {}
        }
    }
}

impl Drop for NodeWatch {
    fn drop(&mut self) {
        let keys: Vec<String> = self.receivers.drain(..).map(|(k, _)| k).collect();
        self.cache.prune(&keys);
    }
}

/// Resolves with the first of `futures` to finish.
async fn futures_select<F, T>(mut futures: Vec<std::pin::Pin<Box<F>>>) -> T
where
    F: std::future::Future<Output = T>,
{
    std::future::poll_fn(move |cx| {
        for f in &mut futures {
            if let std::task::Poll::Ready(v) = f.as_mut().poll(cx) {
                return std::task::Poll::Ready(v);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::type_url;

    fn node(id: &str, cluster: &str) -> NodeKey {
        NodeKey {
            id: id.to_owned(),
            cluster: cluster.to_owned(),
        }
    }

    fn snap(tag: &str) -> Snapshot {
        use envoy_types::pb::envoy::config::cluster::v3::Cluster;
        let c = Cluster {
            name: tag.to_owned(),
            ..Default::default()
        };
        Snapshot::new().with(
            type_url::CLUSTER,
            [(tag.to_owned(), envoy_types::util::pack_any(c))],
        )
    }

    #[test]
    fn resolves_id_then_cluster_then_default() {
        let cache = SnapshotCache::new();
        let n = node("n1", "web");
        assert!(cache.resolve(&n).is_none());
        cache.set(DEFAULT_KEY, snap("d"));
        assert_eq!(cache.resolve(&n).map(|(k, _)| k).as_deref(), Some("*"));
        cache.set("web", snap("w"));
        assert_eq!(cache.resolve(&n).map(|(k, _)| k).as_deref(), Some("web"));
        cache.set("n1", snap("i"));
        assert_eq!(cache.resolve(&n).map(|(k, _)| k).as_deref(), Some("n1"));
        cache.clear("n1");
        assert_eq!(cache.resolve(&n).map(|(k, _)| k).as_deref(), Some("web"));
    }

    #[tokio::test]
    async fn set_wakes_only_the_watchers_it_maps_to() {
        let cache = SnapshotCache::new();
        let mut web = cache.watch(&node("a", "web"));
        let mut api = cache.watch(&node("b", "api"));
        assert!(web.current().is_none());
        assert!(api.current().is_none());
        cache.set("web", snap("w"));
        web.changed().await;
        let got = web.current().map(|p| p.snapshot.version(type_url::CLUSTER));
        assert_eq!(got, Some(snap("w").version(type_url::CLUSTER)));
        // api was not woken: its changed() is still pending.
        let woke = tokio::time::timeout(std::time::Duration::ZERO, api.changed()).await;
        assert!(woke.is_err());
        cache.set(DEFAULT_KEY, snap("d"));
        api.changed().await;
        assert!(api.current().is_some());
    }

    #[test]
    fn dropping_a_watch_prunes_empty_slots() {
        let cache = SnapshotCache::new();
        let w = cache.watch(&node("gone", "c"));
        assert_eq!(cache.lock().len(), 3);
        drop(w);
        assert_eq!(cache.lock().len(), 0);
    }
}
