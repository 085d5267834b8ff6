//! The control loop, on the control thread: serves the admin API, feeds the file source's
//! updates to the state writer (on file changes, `SIGHUP` and [`super::Proxy::reload`]), and
//! drains on shutdown.

use super::signals::{self, Terminate};
use super::{Exit, Options, ReloadError};
use crate::admin::{self, AdminState};
use crate::source::dns::DnsSource;
use crate::source::file::{FileSource, Loaded};
use crate::source::xds::{self, XdsEvent};
use crate::state::{Applied, Origin, Writer};
use crate::worker::WorkerHandle;
use sluice_config::Update;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Requests from the [`super::Proxy`] handle.
pub(super) enum Control {
    Reload(oneshot::Sender<Result<(), ReloadError>>),
    Apply(Update, oneshot::Sender<Applied>),
    Shutdown,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Control::Reload(_) => "Reload",
            Control::Apply(..) => "Apply",
            Control::Shutdown => "Shutdown",
        })
    }
}

/// How often outlier detection's sweep runs (ejection returns, failure-percentage intervals).
const OUTLIER_SWEEP: Duration = Duration::from_millis(250);

/// Coalesces bursts of file events (editors and Kubernetes volume updates write several).
const DEBOUNCE: Duration = Duration::from_millis(100);

pub(super) struct ControlLoop {
    pub(super) admin: Arc<AdminState>,
    pub(super) workers: Vec<WorkerHandle>,
    pub(super) writer: Writer,
    pub(super) source: FileSource,
    pub(super) options: Options,
}

impl ControlLoop {
    pub(super) async fn run(
        mut self,
        admin: std::net::TcpListener,
        mut rx: mpsc::UnboundedReceiver<Control>,
        mut actions: mpsc::UnboundedReceiver<admin::AdminAction>,
    ) -> Exit {
        match tokio::net::TcpListener::from_std(admin) {
            Ok(l) => {
                tokio::spawn(admin::serve(l, Arc::clone(&self.admin)));
            }
            Err(e) => tracing::error!(error = %e, "cannot serve the admin API"),
        }
        self.writer.sync_health();
        let (mut hup, mut term) = signals::signals(self.options.handle_signals);
        let (file_tx, mut file_rx) = mpsc::unbounded_channel::<()>();
        let _watcher = if self.options.watch {
            self.source.watch(file_tx)
        } else {
            None
        };
        let debounce = tokio::time::sleep(Duration::MAX);
        tokio::pin!(debounce);
        let mut pending = false;
        let mut outliers = tokio::time::interval(OUTLIER_SWEEP);
        outliers.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut dns, mut dns_rx) = DnsSource::new(Arc::clone(&self.admin.live.metrics));
        dns.sync(self.writer.resources());
        let (xds_tx, mut xds_rx) = mpsc::unbounded_channel::<XdsEvent>();
        // xDS warms until its client reports the first complete config (or its timeout).
        let mut xds_warm = true;
        let xds_task = self.options.xds.clone().map(|options| {
            xds_warm = false;
            tracing::info!(server = %options.server, node = %options.node_id, "xDS: subscribing");
            tokio::spawn(xds::run(
                options,
                xds_tx.clone(),
                Arc::clone(&self.admin.live.metrics),
            ))
        });
        drop(xds_tx);
        if !dns.warming() && xds_warm {
            self.admin.live.set_ready();
        }
        loop {
            tokio::select! {
                now = outliers.tick() => self.writer.registry().sweep_outliers(now),
                msg = rx.recv() => match msg {
                    Some(Control::Reload(reply)) => {
                        let _ = reply.send(self.reload(true));
                        dns.sync(self.writer.resources());
                    }
                    Some(Control::Apply(update, reply)) => {
                        let applied = self.writer.apply(update);
                        for r in applied.rejected() {
                            tracing::error!("config update: {r}; its previous version (if any) keeps serving");
                        }
                        let _ = reply.send(applied);
                        dns.sync(self.writer.resources());
                    }
                    Some(Control::Shutdown) | None => break,
                },
                Some(resolved) = dns_rx.recv() => {
                    if let Some(update) = dns.accept(resolved) {
                        for r in self.writer.apply_from(Origin::Discovered, update).rejected() {
                            tracing::error!("dns discovery: {r}; the previous endpoints keep serving");
                        }
                    }
                    if !dns.warming() && xds_warm {
                        self.admin.live.set_ready();
                    }
                }
                Some(event) = xds_rx.recv() => match event {
                    XdsEvent::Apply { update, reply } => {
                        let applied = self.writer.apply_from(Origin::Xds, update);
                        for r in applied.rejected() {
                            tracing::warn!("xDS update: {r}; its previous version (if any) keeps serving");
                        }
                        let _ = reply.send(applied);
                        dns.sync(self.writer.resources());
                    }
                    XdsEvent::Ready { timed_out, done } => {
                        xds_warm = true;
                        if !timed_out {
                            tracing::info!("xDS: first complete config applied");
                        }
                        if !dns.warming() {
                            self.admin.live.set_ready();
                        }
                        let _ = done.send(());
                    }
                },
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading config");
                    let _ = self.reload(true);
                    dns.sync(self.writer.resources());
                }
                _ = term.recv() => {
                    tracing::info!("shutdown signal received");
                    break;
                }
                Some(action) = actions.recv() => match action {
                    admin::AdminAction::DrainListeners => {
                        if !self.admin.live.is_draining() {
                            self.admin.live.set_draining();
                            let timeout = self.options.drain_timeout;
                            tracing::warn!(drain_timeout = ?timeout, "admin: draining listeners (the process keeps running; POST /quitquitquit to exit)");
                            drop(super::stop_workers(&self.workers, timeout));
                        }
                    }
                    admin::AdminAction::Quit => {
                        tracing::warn!("admin: /quitquitquit received");
                        break;
                    }
                },
                Some(()) = file_rx.recv() => {
                    pending = true;
                    debounce.as_mut().reset(Instant::now() + DEBOUNCE);
                }
                _ = debounce.as_mut(), if pending => {
                    pending = false;
                    let _ = self.reload(false);
                    dns.sync(self.writer.resources());
                }
            }
        }
        if let Some(task) = xds_task {
            task.abort();
        }
        self.shutdown(&mut term).await
    }

    async fn shutdown(&mut self, term: &mut Terminate) -> Exit {
        let timeout = self.options.drain_timeout;
        self.admin.live.set_draining();
        tracing::info!(drain_timeout = ?timeout, "draining: stopped accepting, waiting for in-flight requests");
        let done = super::stop_workers(&self.workers, timeout);
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
            _ = term.recv() => {
                tracing::warn!("second signal: exiting without waiting");
                Exit::Forced
            }
        }
    }

    /// Reads the source and applies what changed. Invalid files change nothing; an invalid
    /// resource (a listener whose address is taken, say) is rejected by name while the rest
    /// apply. With `force` false an unchanged text is skipped.
    fn reload(&mut self, force: bool) -> Result<(), ReloadError> {
        let metrics = Arc::clone(&self.admin.live.metrics);
        let config = match self.source.load(force) {
            Ok(Loaded::Changed(c)) => c,
            Ok(Loaded::Unchanged) => {
                tracing::info!(
                    "config file event, but the text is the one last read (applied or rejected): nothing to do"
                );
                return Ok(());
            }
            Err(errors) => {
                metrics.config_reload("failure");
                for line in errors.to_string().lines() {
                    tracing::error!("config reload rejected, keeping the previous config: {line}");
                }
                return Err(ReloadError::Config(errors));
            }
        };
        if config.node != *self.writer.node() {
            tracing::warn!(
                "config reload: `node` changed, but it is read at start only; restart to apply it"
            );
        }
        // The file diffs against its own (static) resources only: xDS's are not its to remove.
        let update = FileSource::update(&config, &self.writer.resources_from(Origin::File));
        let applied = self.writer.apply(update);
        if applied.is_ok() {
            metrics.config_reload("success");
            tracing::info!(
                generation = self.admin.live.generation(),
                "config reloaded: {}",
                applied.summary()
            );
            Ok(())
        } else {
            metrics.config_reload("failure");
            let rejected: Vec<String> = applied.rejected().map(ToString::to_string).collect();
            for r in &rejected {
                tracing::error!("config reload: {r}; its previous version (if any) keeps serving");
            }
            Err(ReloadError::Rejected(rejected.join("\n")))
        }
    }
}
