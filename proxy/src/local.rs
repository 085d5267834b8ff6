//! What one worker thread owns and its tasks share: its index and its upstream connection
//! pools. Everything here is local to the thread (`Rc`, `Cell`, `RefCell`), so the request path
//! takes no lock. Listener settings reach a worker's connections through `listener::Current`,
//! pushed by the control thread: nothing on the request path reads the live state.

use crate::cluster::Pools;

/// State of one worker thread, shared by its tasks.
#[derive(Debug)]
pub(crate) struct Worker {
    /// The worker's index (0-based): selects per-worker balancer state.
    pub(crate) id: usize,
    pub(crate) pools: Pools,
}
