//! Rate limits for warnings a peer can trigger at will: a dead upstream fails every request,
//! and a line per failure would flood the log (and cost more than the request). Each limiter
//! lets [`BURST`] lines through per [`WINDOW`]; the rest are counted, and the first line of
//! the next window reports how many were suppressed. Lock-free: a few atomics, touched only on
//! the failure path.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// Lines per window.
pub(crate) const BURST: u32 = 5;
/// The window.
pub(crate) const WINDOW: Duration = Duration::from_secs(10);

/// One limiter (one per cluster, one per listener for TCP connect failures).
#[derive(Debug)]
pub(crate) struct LogLimiter {
    base: Instant,
    /// Start of the current window, in ms since `base`.
    window_start: AtomicU64,
    /// Lines let through in the current window.
    emitted: AtomicU32,
    /// Lines held back since the last line let through.
    suppressed: AtomicU64,
}

impl Default for LogLimiter {
    fn default() -> Self {
        LogLimiter {
            base: Instant::now(),
            window_start: AtomicU64::new(0),
            emitted: AtomicU32::new(0),
            suppressed: AtomicU64::new(0),
        }
    }
}

impl LogLimiter {
    /// Whether a line may be written now: `Some(n)` with `n` lines suppressed since the last one
    /// written (to be reported with it), or `None` to hold it back (it is counted).
    pub(crate) fn admit(&self) -> Option<u64> {
        let now = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        let start = self.window_start.load(Ordering::Relaxed);
        let window = u64::try_from(WINDOW.as_millis()).unwrap_or(u64::MAX);
        if now.saturating_sub(start) >= window
            && self
                .window_start
                .compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.emitted.store(1, Ordering::Relaxed);
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        if self.emitted.fetch_add(1, Ordering::Relaxed) < BURST {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_per_window_then_the_count_of_what_was_held_back() {
        let l = LogLimiter::default();
        // The first window: BURST lines, then silence (counted).
        for _ in 0..BURST {
            assert_eq!(l.admit(), Some(0));
        }
        for _ in 0..7 {
            assert_eq!(l.admit(), None);
        }
        // Still the same window.
        tokio::time::advance(WINDOW - Duration::from_millis(1)).await;
        assert_eq!(l.admit(), None);
        // The next window's first line reports the 8 held back, the rest of its burst none.
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(l.admit(), Some(8));
        for _ in 1..BURST {
            assert_eq!(l.admit(), Some(0));
        }
        assert_eq!(l.admit(), None);
        // A quiet window later: a fresh burst, reporting the one held back.
        tokio::time::advance(WINDOW * 3).await;
        assert_eq!(l.admit(), Some(1));
    }
}
