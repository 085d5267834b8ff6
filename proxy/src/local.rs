//! What one worker thread owns and its tasks share: its index, the live state and its
//! upstream connection pools. Everything here is local to the thread (`Rc`, `Cell`,
//! `RefCell`), so the request path takes no lock.

use crate::cluster::Pools;
use crate::state::Live;
use std::sync::Arc;

/// State of one worker thread, shared by its tasks.
#[derive(Debug)]
pub(crate) struct Worker {
    /// The worker's index (0-based): selects per-worker balancer state.
    pub(crate) id: usize,
    pub(crate) live: Arc<Live>,
    pub(crate) pools: Pools,
}
