//! Process signals for the control loop: `SIGHUP` reloads, `SIGTERM`/`SIGINT` drain (a second
//! one exits at once). Absent when the embedding program handles signals itself.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// `SIGHUP`.
pub(super) struct Hangup(Option<Signal>);

/// `SIGTERM` and `SIGINT`.
pub(super) struct Terminate(Option<(Signal, Signal)>);

/// The signals the control loop waits on (never firing when not `enabled`).
pub(super) fn signals(enabled: bool) -> (Hangup, Terminate) {
    let get = |k| if enabled { signal(k).ok() } else { None };
    let term = get(SignalKind::terminate()).zip(get(SignalKind::interrupt()));
    (Hangup(get(SignalKind::hangup())), Terminate(term))
}

impl Hangup {
    /// Resolves on `SIGHUP`.
    pub(super) async fn recv(&mut self) {
        match &mut self.0 {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    }
}

impl Terminate {
    /// Resolves on `SIGTERM` or `SIGINT`.
    pub(super) async fn recv(&mut self) {
        match &mut self.0 {
            Some((t, i)) => {
                tokio::select! {
                    _ = t.recv() => {}
                    _ = i.recv() => {}
                }
            }
            None => std::future::pending().await,
        }
    }
}
