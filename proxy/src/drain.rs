//! Draining one listener's connections on one worker: first gracefully (HTTP/2 GOAWAY,
//! `Connection: close` on HTTP/1.1, in-flight requests finish), then by force.

use std::cell::Cell;
use std::rc::Rc;
use tokio::sync::{Notify, watch};

/// The drain phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Running,
    Graceful,
    Forced,
}

/// Drain control for the connections of one listener on one worker.
#[derive(Clone, Debug)]
pub(crate) struct Drain(Rc<Inner>);

#[derive(Debug)]
struct Inner {
    phase: watch::Sender<Phase>,
    draining: Cell<bool>,
    conns: Cell<usize>,
    idle: Notify,
}

impl Drain {
    pub(crate) fn new() -> Self {
        Drain(Rc::new(Inner {
            phase: watch::Sender::new(Phase::Running),
            draining: Cell::new(false),
            conns: Cell::new(0),
            idle: Notify::new(),
        }))
    }

    /// Cheap check for the request path.
    pub(crate) fn is_draining(&self) -> bool {
        self.0.draining.get()
    }

    pub(crate) fn start_graceful(&self) {
        self.0.draining.set(true);
        self.0.phase.send_if_modified(|p| {
            let change = *p == Phase::Running;
            if change {
                *p = Phase::Graceful;
            }
            change
        });
    }

    pub(crate) fn force(&self) {
        self.0.draining.set(true);
        self.0.phase.send_replace(Phase::Forced);
    }

    /// Counts a connection (or tunnel) until the guard drops.
    pub(crate) fn track(&self) -> Tracked {
        self.0.conns.set(self.0.conns.get() + 1);
        Tracked(self.clone())
    }

    pub(crate) fn connections(&self) -> usize {
        self.0.conns.get()
    }

    /// Resolves once no tracked connection remains.
    pub(crate) async fn wait_idle(&self) {
        loop {
            let notified = self.0.idle.notified();
            if self.0.conns.get() == 0 {
                return;
            }
            notified.await;
        }
    }

    pub(crate) fn watch(&self) -> DrainWatch {
        DrainWatch(self.0.phase.subscribe())
    }
}

/// A tracked connection.
#[derive(Debug)]
pub(crate) struct Tracked(Drain);

impl Drop for Tracked {
    fn drop(&mut self) {
        let inner = &(self.0).0;
        let n = inner.conns.get().saturating_sub(1);
        inner.conns.set(n);
        if n == 0 {
            inner.idle.notify_waiters();
        }
    }
}

/// A connection's view of the drain phase.
#[derive(Debug)]
pub(crate) struct DrainWatch(watch::Receiver<Phase>);

impl DrainWatch {
    /// Resolves when draining starts (graceful or forced).
    pub(crate) async fn draining(&mut self) {
        // The sender lives as long as the listener's Drain; if it is gone, so is the listener.
        let _ = self.0.wait_for(|p| *p != Phase::Running).await;
    }

    /// Resolves when connections must close now.
    pub(crate) async fn forced(&mut self) {
        let _ = self.0.wait_for(|p| *p == Phase::Forced).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn phases_and_idle() {
        let d = Drain::new();
        let mut w = d.watch();
        let t = d.track();
        assert_eq!(d.connections(), 1);
        d.start_graceful();
        assert!(d.is_draining());
        w.draining().await;
        drop(t);
        d.wait_idle().await;
        d.force();
        w.forced().await;
    }
}
