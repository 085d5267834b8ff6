//! Listener reconciliation: binds a listener's sockets before the state writer swaps it in
//! (so a bind failure rejects the listener and changes nothing), then tells the workers to
//! start accepting on new sockets and to drain listeners that were removed or moved.

use super::{BindError, ListenerSpec, bind_spec};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// What workers are told about listeners.
#[derive(Debug)]
pub enum Command {
    /// Start accepting on this worker's socket of a listener (draining a listener of the same
    /// name it replaces).
    Listen {
        /// The listener.
        spec: Arc<ListenerSpec>,
        /// This worker's socket.
        socket: std::net::TcpListener,
        /// Drain time for the listener it replaces.
        drain_timeout: Duration,
    },
    /// New settings for a listener whose sockets stay: its accept loop and connections use them
    /// from now on.
    Update {
        /// The listener's new settings.
        spec: Arc<ListenerSpec>,
    },
    /// Stop accepting and drain the listener's connections (forced after the timeout).
    Unlisten {
        /// The listener.
        name: String,
        /// Drain time.
        drain_timeout: Duration,
    },
}

/// Delivers a command to one worker.
pub type WorkerSink = Box<dyn Fn(Command) + Send>;

/// A bound listener, as the admin API reports it.
#[derive(Clone, Debug)]
pub struct BoundListener {
    /// Name.
    pub name: String,
    /// Actual address (the real port when the config said 0).
    pub address: SocketAddr,
    /// `http` or `tcp`.
    pub protocol: &'static str,
}

struct Bound {
    configured: SocketAddr,
    protocol: &'static str,
    actual: SocketAddr,
}

/// Keeps the bound sockets in step with the listeners of the live state.
pub struct Reconciler {
    workers: Vec<WorkerSink>,
    drain_timeout: Duration,
    bound: HashMap<String, Bound>,
    /// Sockets bound for listeners not yet handed to the workers.
    pending: HashMap<String, (Vec<std::net::TcpListener>, SocketAddr)>,
    /// The settings the workers have, by listener.
    committed: HashMap<String, Arc<ListenerSpec>>,
    published: Arc<Mutex<Vec<BoundListener>>>,
}

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field("workers", &self.workers.len())
            .field("bound", &self.bound.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Reconciler {
    /// A reconciler for these workers; bound listeners are published to `published`.
    pub fn new(
        workers: Vec<WorkerSink>,
        drain_timeout: Duration,
        published: Arc<Mutex<Vec<BoundListener>>>,
    ) -> Self {
        Reconciler {
            workers,
            drain_timeout,
            bound: HashMap::new(),
            pending: HashMap::new(),
            committed: HashMap::new(),
            published,
        }
    }

    /// Binds `spec`'s sockets unless `previous` already has them (same address and protocol).
    pub fn prepare(
        &mut self,
        spec: &ListenerSpec,
        previous: Option<&ListenerSpec>,
    ) -> Result<(), BindError> {
        let unchanged = previous.is_some()
            && self
                .bound
                .get(&spec.name)
                .is_some_and(|b| b.configured == spec.address && b.protocol == spec.protocol());
        if unchanged {
            self.pending.remove(&spec.name);
            return Ok(());
        }
        let (sockets, actual) = bind_spec(spec, self.workers.len())?;
        self.pending.insert(spec.name.clone(), (sockets, actual));
        Ok(())
    }

    /// Hands newly bound sockets to the workers, pushes changed settings for sockets that stay,
    /// and drains listeners no longer in `listeners`.
    pub fn commit(&mut self, listeners: &HashMap<String, Arc<ListenerSpec>>) {
        for (name, spec) in listeners {
            let changed = self
                .committed
                .get(name)
                .is_none_or(|old| !Arc::ptr_eq(old, spec));
            if changed && !self.pending.contains_key(name) && self.bound.contains_key(name) {
                for w in &self.workers {
                    w(Command::Update {
                        spec: Arc::clone(spec),
                    });
                }
            }
        }
        self.committed = listeners.clone();
        let removed: Vec<String> = self
            .bound
            .keys()
            .filter(|n| !listeners.contains_key(*n))
            .cloned()
            .collect();
        for name in removed {
            self.bound.remove(&name);
            tracing::info!(listener = %name, "listener removed; draining its connections");
            for w in &self.workers {
                w(Command::Unlisten {
                    name: name.clone(),
                    drain_timeout: self.drain_timeout,
                });
            }
        }
        for (name, (sockets, actual)) in std::mem::take(&mut self.pending) {
            let Some(spec) = listeners.get(&name) else {
                continue;
            };
            tracing::info!(listener = %name, address = %actual, protocol = spec.protocol(), "listening");
            self.bound.insert(
                name,
                Bound {
                    configured: spec.address,
                    protocol: spec.protocol(),
                    actual,
                },
            );
            for (socket, w) in sockets.into_iter().zip(&self.workers) {
                w(Command::Listen {
                    spec: Arc::clone(spec),
                    socket,
                    drain_timeout: self.drain_timeout,
                });
            }
        }
        let mut list: Vec<BoundListener> = self
            .bound
            .iter()
            .map(|(name, b)| BoundListener {
                name: name.clone(),
                address: b.actual,
                protocol: b.protocol,
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        *self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = list;
    }
}
