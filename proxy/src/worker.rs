//! Worker threads. Each worker is a single-threaded tokio runtime with its own listener sockets
//! (`SO_REUSEPORT`), its own upstream connection pools and no locks on the request path — the
//! thread-per-core model of nginx. The control thread drives workers with [`Command`]s.

use crate::cluster::Pools;
use crate::drain::Drain;
use crate::listener;
use crate::local::Worker;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot};

/// How often idle upstream connections are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Instructions from the control thread.
#[derive(Debug)]
pub(crate) enum Command {
    /// Start or stop a listener (from the listener reconciler).
    Listener(listener::Command),
    /// Drain everything, reply on `done`, then stop the worker.
    Shutdown {
        drain_timeout: Duration,
        done: oneshot::Sender<()>,
    },
}

/// The control thread's handle on a worker.
#[derive(Debug)]
pub(crate) struct WorkerHandle {
    pub(crate) tx: mpsc::UnboundedSender<Command>,
}

impl WorkerHandle {
    /// Where the listener reconciler sends this worker's listener commands.
    pub(crate) fn listener_sink(&self) -> listener::WorkerSink {
        let tx = self.tx.clone();
        Box::new(move |c| {
            let _ = tx.send(Command::Listener(c));
        })
    }
}

/// Starts worker thread `id`.
pub(crate) fn spawn(id: usize) -> std::io::Result<WorkerHandle> {
    let (tx, rx) = mpsc::unbounded_channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name(format!("sluice-worker-{id}"))
        .spawn(move || {
            let local = tokio::task::LocalSet::new();
            let worker = Rc::new(Worker {
                id,
                pools: Pools::default(),
            });
            local.block_on(&runtime, run(worker, rx));
        })?;
    Ok(WorkerHandle { tx })
}

struct Active {
    stop: Rc<Notify>,
    drain: Drain,
    /// The listener's settings, shared with its accept loop and connections.
    current: Rc<listener::Current>,
}

async fn run(worker: Rc<Worker>, mut rx: mpsc::UnboundedReceiver<Command>) {
    let mut listeners: HashMap<String, Active> = HashMap::new();
    tokio::task::spawn_local(crate::clock::run_coarse_clock());
    let sweeper = Rc::clone(&worker);
    tokio::task::spawn_local(async move {
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            sweeper.pools.sweep();
        }
    });
    while let Some(cmd) = rx.recv().await {
        match cmd {
            Command::Listener(listener::Command::Listen {
                spec,
                socket,
                drain_timeout,
            }) => {
                let listener = match tokio::net::TcpListener::from_std(socket) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(listener = %spec.name, error = %e, "cannot register listener socket");
                        continue;
                    }
                };
                let active = Active {
                    stop: Rc::new(Notify::new()),
                    drain: Drain::new(),
                    current: listener::Current::new(Arc::clone(&spec)),
                };
                tokio::task::spawn_local(listener::accept_loop(
                    listener,
                    Rc::clone(&active.current),
                    Rc::clone(&worker),
                    active.drain.clone(),
                    Rc::clone(&active.stop),
                ));
                if let Some(old) = listeners.insert(spec.name.clone(), active) {
                    retire(old, drain_timeout);
                }
            }
            Command::Listener(listener::Command::Update { spec }) => {
                if let Some(active) = listeners.get(&spec.name) {
                    active.current.update(spec);
                }
            }
            Command::Listener(listener::Command::Unlisten {
                name,
                drain_timeout,
            }) => {
                if let Some(old) = listeners.remove(&name) {
                    retire(old, drain_timeout);
                }
            }
            Command::Shutdown {
                drain_timeout,
                done,
            } => {
                let drains: Vec<Drain> = listeners
                    .drain()
                    .map(|(_, a)| {
                        a.stop.notify_one();
                        a.drain.start_graceful();
                        a.drain
                    })
                    .collect();
                let idle = async {
                    for d in &drains {
                        d.wait_idle().await;
                    }
                };
                if tokio::time::timeout(drain_timeout, idle).await.is_err() {
                    let left: usize = drains.iter().map(Drain::connections).sum();
                    tracing::warn!(
                        connections = left,
                        "drain timeout: closing remaining connections"
                    );
                    drains.iter().for_each(Drain::force);
                }
                let _ = done.send(());
                return;
            }
        }
    }
}

/// Stops accepting on a listener and drains its connections in the background.
fn retire(old: Active, drain_timeout: Duration) {
    old.stop.notify_one();
    old.drain.start_graceful();
    tokio::task::spawn_local(async move {
        if tokio::time::timeout(drain_timeout, old.drain.wait_idle())
            .await
            .is_err()
        {
            old.drain.force();
        }
    });
}
