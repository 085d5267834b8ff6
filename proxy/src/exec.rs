//! The executor hyper uses to spawn HTTP/2 stream tasks on the current worker.

use std::future::Future;

/// Spawns onto the current thread's `LocalSet`. Each worker is a single-threaded runtime, so
/// request-path state can use `Rc`/`Cell` instead of atomics and locks.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}
