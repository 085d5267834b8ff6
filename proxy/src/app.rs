//! Starting, running and stopping a proxy: the control thread binds listeners, starts workers,
//! serves the admin API, applies reloads (file changes, `SIGHUP`, [`Proxy::reload`]) and drains
//! on `SIGTERM`/`SIGINT` or [`Proxy::shutdown`].

use crate::admin;
use crate::listener::{self, BindError};
use crate::metrics::Metrics;
use crate::route::CompileError;
use crate::state::{Live, Snapshot};
use crate::worker::{self, Command, WorkerHandle};
use sluice_config::{Config, ConfigErrors};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Where the config comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A file, watched for changes and re-read on `SIGHUP`.
    File(PathBuf),
    /// Text held in memory (the demo); `name` labels errors.
    Inline {
        /// Name used in error messages.
        name: String,
        /// YAML.
        text: String,
    },
}

/// How to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// The config.
    pub source: Source,
    /// Worker threads (at least 1).
    pub workers: usize,
    /// How long in-flight requests may take to finish on shutdown.
    pub drain_timeout: Duration,
    /// Handle `SIGTERM`, `SIGINT` and `SIGHUP` (the binary does; in-process tests do not).
    pub handle_signals: bool,
    /// Watch the config file and reload when it changes.
    pub watch: bool,
}

/// Why the proxy did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config is invalid.
    #[error("{0}")]
    Config(ConfigErrors),
    /// The config could not be compiled.
    #[error("{0}")]
    Compile(#[from] CompileError),
    /// A listener or the admin address could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// Threads or runtimes could not be created.
    #[error("cannot start: {0}")]
    Io(#[from] std::io::Error),
}

/// Why a reload was refused (the previous config keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new config is invalid.
    #[error("{0}")]
    Config(ConfigErrors),
    /// The new config could not be compiled.
    #[error("{0}")]
    Compile(#[from] CompileError),
    /// A new listener could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The proxy is shutting down.
    #[error("the proxy is shutting down")]
    Stopped,
}

/// How the proxy stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Every connection finished within the drain timeout (or was closed at its end).
    Drained,
    /// A second signal cut the drain short.
    Forced,
}

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

/// State the admin API reads.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) live: Arc<Live>,
    listeners: Mutex<Vec<BoundListener>>,
    pub(crate) started: Instant,
    pub(crate) workers: usize,
}

impl Shared {
    pub(crate) fn listeners(&self) -> Vec<BoundListener> {
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

enum Control {
    Reload(oneshot::Sender<Result<(), ReloadError>>),
    Shutdown,
}

/// A running proxy.
#[derive(Debug)]
pub struct Proxy {
    shared: Arc<Shared>,
    admin: SocketAddr,
    tx: mpsc::UnboundedSender<Control>,
    thread: Option<std::thread::JoinHandle<Exit>>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Control::Reload(_) => "Reload",
            Control::Shutdown => "Shutdown",
        })
    }
}

fn load(source: &Source) -> Result<(Config, String), ConfigErrors> {
    match source {
        Source::File(path) => {
            let name = path.display().to_string();
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigErrors::whole_file(&name, format!("cannot read file: {e}")))?;
            Ok((sluice_config::parse(&text, &name)?, text))
        }
        Source::Inline { name, text } => Ok((sluice_config::parse(text, name)?, text.clone())),
    }
}

impl Proxy {
    /// Loads the config, binds every listener and the admin address, and starts the workers.
    /// Errors leave nothing running.
    pub fn start(options: Options) -> Result<Proxy, StartError> {
        let (config, text) = load(&options.source).map_err(StartError::Config)?;
        let workers = options.workers.max(1);
        let metrics = Arc::new(Metrics::new());
        let snapshot = Snapshot::compile(config, None, &metrics, 1)?;
        let (admin_socket, admin) = listener::bind_admin(snapshot.config.admin.address)?;
        let mut bound = HashMap::new();
        let mut sockets = Vec::new();
        for spec in snapshot.listeners.values() {
            let (socks, actual) = listener::bind_spec(spec, workers)?;
            bound.insert(
                spec.name.clone(),
                Bound {
                    configured: spec.address,
                    protocol: spec.protocol(),
                    actual,
                },
            );
            sockets.push((Arc::clone(spec), socks));
        }
        let live = Arc::new(Live::new(snapshot, metrics));
        let handles = (0..workers)
            .map(|i| worker::spawn(i, Arc::clone(&live)))
            .collect::<Result<Vec<_>, _>>()?;
        for (spec, socks) in sockets {
            for (socket, w) in socks.into_iter().zip(&handles) {
                let _ = w.tx.send(Command::Listen {
                    spec: Arc::clone(&spec),
                    socket,
                    drain_timeout: options.drain_timeout,
                });
            }
        }
        let shared = Arc::new(Shared {
            live: Arc::clone(&live),
            listeners: Mutex::new(Vec::new()),
            started: Instant::now(),
            workers,
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let control = ControlLoop {
            shared: Arc::clone(&shared),
            workers: handles,
            bound,
            options,
            last_text: text,
        };
        control.publish_listeners();
        for l in shared.listeners() {
            tracing::info!(listener = %l.name, address = %l.address, protocol = l.protocol, "listening");
        }
        tracing::info!(address = %admin, "admin listening");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("sluice-control".into())
            .spawn(move || runtime.block_on(control.run(admin_socket, rx)))?;
        live.set_ready();
        Ok(Proxy {
            shared,
            admin,
            tx,
            thread: Some(thread),
        })
    }

    /// The admin API's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The bound address of a listener.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.shared
            .listeners()
            .into_iter()
            .find(|l| l.name == name)
            .map(|l| l.address)
    }

    /// The live state.
    pub fn live(&self) -> &Arc<Live> {
        &self.shared.live
    }

    /// Re-reads the config source now (blocking until applied or refused).
    pub fn reload(&self) -> Result<(), ReloadError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Control::Reload(tx))
            .map_err(|_| ReloadError::Stopped)?;
        rx.blocking_recv().map_err(|_| ReloadError::Stopped)?
    }

    /// Starts a graceful shutdown; [`Proxy::wait`] returns when it is done.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Control::Shutdown);
    }

    /// Blocks until the proxy has stopped.
    pub fn wait(mut self) -> Exit {
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or(Exit::Forced)
    }
}

struct Bound {
    configured: SocketAddr,
    protocol: &'static str,
    actual: SocketAddr,
}

struct ControlLoop {
    shared: Arc<Shared>,
    workers: Vec<WorkerHandle>,
    bound: HashMap<String, Bound>,
    options: Options,
    last_text: String,
}

/// Coalesces bursts of file events (editors and Kubernetes volume updates write several).
const DEBOUNCE: Duration = Duration::from_millis(100);

impl ControlLoop {
    async fn run(
        mut self,
        admin: std::net::TcpListener,
        mut rx: mpsc::UnboundedReceiver<Control>,
    ) -> Exit {
        match tokio::net::TcpListener::from_std(admin) {
            Ok(l) => {
                tokio::spawn(admin::serve(l, Arc::clone(&self.shared)));
            }
            Err(e) => tracing::error!(error = %e, "cannot serve the admin API"),
        }
        let mut signals = Signals::new(self.options.handle_signals);
        let (file_tx, mut file_rx) = mpsc::unbounded_channel::<()>();
        let _watcher = self.watch(file_tx);
        let debounce = tokio::time::sleep(Duration::MAX);
        tokio::pin!(debounce);
        let mut pending = false;
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Control::Reload(reply)) => {
                        let _ = reply.send(self.reload(true));
                    }
                    Some(Control::Shutdown) | None => break,
                },
                _ = hangup(&mut signals.hup) => {
                    tracing::info!("SIGHUP: reloading config");
                    let _ = self.reload(true);
                }
                _ = terminate(&mut signals.term, &mut signals.int) => {
                    tracing::info!("shutdown signal received");
                    break;
                }
                Some(()) = file_rx.recv() => {
                    pending = true;
                    debounce.as_mut().reset(Instant::now() + DEBOUNCE);
                }
                _ = debounce.as_mut(), if pending => {
                    pending = false;
                    let _ = self.reload(false);
                }
            }
        }
        self.shutdown(&mut signals).await
    }

    async fn shutdown(&mut self, signals: &mut Signals) -> Exit {
        let timeout = self.options.drain_timeout;
        self.shared.live.set_draining();
        tracing::info!(drain_timeout = ?timeout, "draining: stopped accepting, waiting for in-flight requests");
        let mut done = Vec::new();
        for w in &self.workers {
            let (tx, rx) = oneshot::channel();
            let _ = w.tx.send(Command::Shutdown {
                drain_timeout: timeout,
                done: tx,
            });
            done.push(rx);
        }
        let all = async {
            for rx in done {
                let _ = rx.await;
            }
        };
        tokio::select! {
            _ = all => {
                tracing::info!("drained; exiting");
                Exit::Drained
            }
            _ = signals.terminate() => {
                tracing::warn!("second signal: exiting without waiting");
                Exit::Forced
            }
        }
    }

    fn watch(&self, tx: mpsc::UnboundedSender<()>) -> Option<notify::RecommendedWatcher> {
        let Source::File(path) = &self.options.source else {
            return None;
        };
        if !self.options.watch {
            return None;
        }
        use notify::Watcher;
        // Watch the directory: editors and Kubernetes ConfigMap mounts replace the file rather
        // than write to it.
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        let mut watcher = match notify::recommended_watcher(
            move |ev: notify::Result<notify::Event>| {
                if ev.is_ok_and(|e| !e.kind.is_access()) {
                    let _ = tx.send(());
                }
            },
        ) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the config file; use SIGHUP to reload");
                return None;
            }
        };
        if let Err(e) = watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the config directory; use SIGHUP to reload");
            return None;
        }
        Some(watcher)
    }

    /// Reads, validates and compiles the config; binds new listeners; then swaps. Any failure
    /// leaves the running config untouched. With `force` false an unchanged file is skipped.
    fn reload(&mut self, force: bool) -> Result<(), ReloadError> {
        let result = self.try_reload(force);
        match &result {
            Ok(true) => {
                self.shared.live.metrics.config_reload("success");
                tracing::info!(
                    generation = self.shared.live.generation(),
                    "config reloaded"
                );
            }
            Ok(false) => tracing::debug!("config unchanged"),
            Err(e) => {
                self.shared.live.metrics.config_reload("failure");
                for line in e.to_string().lines() {
                    tracing::error!("config reload rejected, keeping the previous config: {line}");
                }
            }
        }
        result.map(|_| ())
    }

    fn try_reload(&mut self, force: bool) -> Result<bool, ReloadError> {
        let (config, text) = load(&self.options.source).map_err(ReloadError::Config)?;
        if !force && text == self.last_text {
            return Ok(false);
        }
        let snapshot = self.shared.live.compile(config)?;
        // Bind every new or moved listener before changing anything.
        let mut new_sockets = Vec::new();
        for spec in snapshot.listeners.values() {
            let unchanged = self
                .bound
                .get(&spec.name)
                .is_some_and(|b| b.configured == spec.address && b.protocol == spec.protocol());
            if !unchanged {
                let (socks, actual) = listener::bind_spec(spec, self.workers.len())?;
                new_sockets.push((Arc::clone(spec), socks, actual));
            }
        }
        let removed: Vec<String> = self
            .bound
            .keys()
            .filter(|name| !snapshot.listeners.contains_key(*name))
            .cloned()
            .collect();
        self.shared.live.swap(snapshot);
        self.last_text = text;
        let timeout = self.options.drain_timeout;
        for name in removed {
            self.bound.remove(&name);
            tracing::info!(listener = %name, "listener removed; draining its connections");
            for w in &self.workers {
                let _ = w.tx.send(Command::Unlisten {
                    name: name.clone(),
                    drain_timeout: timeout,
                });
            }
        }
        for (spec, socks, actual) in new_sockets {
            tracing::info!(listener = %spec.name, address = %actual, protocol = spec.protocol(), "listening");
            self.bound.insert(
                spec.name.clone(),
                Bound {
                    configured: spec.address,
                    protocol: spec.protocol(),
                    actual,
                },
            );
            // A worker replacing a listener of the same name drains the old sockets.
            for (socket, w) in socks.into_iter().zip(&self.workers) {
                let _ = w.tx.send(Command::Listen {
                    spec: Arc::clone(&spec),
                    socket,
                    drain_timeout: timeout,
                });
            }
        }
        self.publish_listeners();
        Ok(true)
    }

    fn publish_listeners(&self) {
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
            .shared
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = list;
    }
}

/// Process signals, or nothing when the embedding program handles them.
struct Signals {
    hup: Option<tokio::signal::unix::Signal>,
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new(enabled: bool) -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let get = |k| if enabled { signal(k).ok() } else { None };
        Signals {
            hup: get(SignalKind::hangup()),
            term: get(SignalKind::terminate()),
            int: get(SignalKind::interrupt()),
        }
    }

    async fn terminate(&mut self) {
        terminate(&mut self.term, &mut self.int).await
    }
}

async fn hangup(hup: &mut Option<tokio::signal::unix::Signal>) {
    match hup {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

async fn terminate(
    term: &mut Option<tokio::signal::unix::Signal>,
    int: &mut Option<tokio::signal::unix::Signal>,
) {
    match (term, int) {
        (Some(t), Some(i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}
