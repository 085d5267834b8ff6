//! Starting, running and stopping a proxy: the public API ([`Proxy`]). Starting binds the admin
//! address, starts the workers and applies the source's first config through the state writer
//! (which binds every listener); the control loop ([`control`]) then serves the admin API,
//! applies reloads and drains on shutdown; [`signals`] are the process signals it waits on.

mod control;
mod signals;

use crate::admin::AdminState;
use crate::http::filters::HttpFilter;
use crate::listener::{self, BindError, BoundListener, Reconciler};
use crate::metrics::Metrics;
use crate::source::file::{FileSource, Loaded, Source};
use crate::source::xds::XdsOptions;
use crate::state::{Applied, Live, Snapshot, Writer};
use crate::worker::{self, Command, WorkerHandle};
use control::{Control, ControlLoop};
use sluice_config::{ConfigErrors, Update};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

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
    /// Filters run before the configured ones on every HTTP listener (for programs that embed
    /// Sluice, and tests).
    pub filters: Vec<Arc<dyn HttpFilter>>,
    /// Also take resources from this xDS (ADS) server; the proxy is then ready only once the
    /// first complete config has arrived (or the initial-fetch timeout passed).
    pub xds: Option<XdsOptions>,
    /// Changes the log filter at runtime (`POST /logging?level=…` on the admin API); `None`:
    /// the endpoint answers 501.
    pub log_level: Option<LogLevelHook>,
}

pub use crate::admin::LogLevelHook;

/// Why the proxy did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config is invalid.
    #[error("{0}")]
    Config(ConfigErrors),
    /// The admin address could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// A resource could not be applied (a listener whose address is taken, say).
    #[error("{0}")]
    Rejected(String),
    /// Threads or runtimes could not be created.
    #[error("cannot start: {0}")]
    Io(#[from] std::io::Error),
}

/// Why a reload was refused (the previous config keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new config is invalid; nothing changed.
    #[error("{0}")]
    Config(ConfigErrors),
    /// Some resources were rejected (named, one per line); the others applied.
    #[error("{0}")]
    Rejected(String),
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

/// A running proxy.
#[derive(Debug)]
pub struct Proxy {
    admin_state: Arc<AdminState>,
    admin: SocketAddr,
    tx: mpsc::UnboundedSender<Control>,
    thread: Option<std::thread::JoinHandle<Exit>>,
}

impl Proxy {
    /// Loads the config, binds the admin address and every listener, and starts the workers.
    /// Errors leave nothing running.
    pub fn start(options: Options) -> Result<Proxy, StartError> {
        let mut source = FileSource::new(options.source.clone());
        let config = match source.load(true).map_err(StartError::Config)? {
            Loaded::Changed(c) => c,
            Loaded::Unchanged => return Err(StartError::Rejected("no config".into())),
        };
        let workers = options.workers.max(1);
        let (admin_socket, admin) = listener::bind_admin(config.admin.address)?;
        let live = Arc::new(Live::new(
            Snapshot::default(),
            Arc::new(Metrics::with_budget(
                config.admin.max_series_per_family as usize,
            )),
        ));
        let handles = (0..workers)
            .map(worker::spawn)
            .collect::<Result<Vec<_>, _>>()?;
        let published: Arc<Mutex<Vec<BoundListener>>> = Arc::default();
        let reconciler = Reconciler::new(
            handles.iter().map(WorkerHandle::listener_sink).collect(),
            options.drain_timeout,
            Arc::clone(&published),
        );
        let mut writer = Writer::new(
            Arc::clone(&live),
            config.admin.clone(),
            workers,
            reconciler,
            options.filters.clone(),
        );
        writer.set_node(&config.node);
        if let Some(t) = &config.tracing {
            writer.set_tracer(Some(crate::otel::Tracer::start(t, &live.metrics)?));
            tracing::info!(collector = %t.collector, sampling = t.sampling, "tracing: exporting spans over OTLP/gRPC");
        }
        let applied = writer.apply(FileSource::update(&config, &BTreeMap::new()));
        if !applied.is_ok() {
            let _ = stop_workers(&handles, Duration::ZERO);
            let why: Vec<String> = applied.rejected().map(ToString::to_string).collect();
            return Err(StartError::Rejected(why.join("\n")));
        }
        let (actions, actions_rx) = mpsc::unbounded_channel();
        let admin_state = Arc::new(AdminState {
            live: Arc::clone(&live),
            listeners: published,
            started: Instant::now(),
            workers,
            max_connections: config.admin.max_connections as usize,
            header_timeout: config.admin.request_header_timeout.get(),
            actions,
            log_level: options.log_level.clone(),
        });
        tracing::info!(address = %admin, "admin listening");
        let bound: Vec<String> = admin_state
            .listeners()
            .iter()
            .map(|l| format!("{} {} {}", l.name, l.protocol, l.address))
            .collect();
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            workers,
            admin = %admin,
            "sluice started: listeners [{}], admin API on http://{admin}/",
            bound.join(", ")
        );
        let (tx, rx) = mpsc::unbounded_channel();
        let control = ControlLoop {
            admin: Arc::clone(&admin_state),
            workers: handles,
            writer,
            source,
            options,
        };
        let xds = control.options.xds.is_some();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("sluice-control".into())
            .spawn(move || runtime.block_on(control.run(admin_socket, rx, actions_rx)))?;
        // A DNS cluster warms (as in Envoy): the control loop says ready once the first
        // resolution of each has finished; with xDS, once the first complete config arrived.
        if live_is_warm(&config, xds) {
            live.set_ready();
        }
        Ok(Proxy {
            admin_state,
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
        self.admin_state
            .listeners()
            .into_iter()
            .find(|l| l.name == name)
            .map(|l| l.address)
    }

    /// The live state.
    pub fn live(&self) -> &Arc<Live> {
        &self.admin_state.live
    }

    /// Re-reads the config source now (blocking until applied or refused).
    pub fn reload(&self) -> Result<(), ReloadError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Control::Reload(tx))
            .map_err(|_| ReloadError::Stopped)?;
        rx.blocking_recv().map_err(|_| ReloadError::Stopped)?
    }

    /// Applies a resource update through the state's one writer, blocking until done: each
    /// resource is applied or rejected by name. The resources count as the file's (static:
    /// the next reload diffs against them; the xDS client cannot replace them).
    pub fn apply(&self, update: Update) -> Result<Applied, ReloadError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Control::Apply(update, tx))
            .map_err(|_| ReloadError::Stopped)?;
        rx.blocking_recv().map_err(|_| ReloadError::Stopped)
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

/// True when nothing warms at start: no DNS cluster in the file and no xDS.
fn live_is_warm(config: &sluice_config::Config, xds: bool) -> bool {
    !xds && config.clusters.iter().all(|c| c.discovery.is_none())
}

/// Tells every worker to drain (forced after `timeout`) and stop; the receivers resolve as
/// each finishes.
fn stop_workers(workers: &[WorkerHandle], timeout: Duration) -> Vec<oneshot::Receiver<()>> {
    workers
        .iter()
        .map(|w| {
            let (tx, rx) = oneshot::channel();
            let _ = w.tx.send(Command::Shutdown {
                drain_timeout: timeout,
                done: tx,
            });
            rx
        })
        .collect()
}

#[cfg(test)]
mod xds_tests;
