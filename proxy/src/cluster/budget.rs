//! Retry budgets (Linkerd's and Finagle's): over a sliding window of `ttl`, a cluster's retries
//! may add at most `retry_percent` of its requests plus `min_retries_per_second × ttl`. Each
//! worker keeps its own window (ten buckets of `ttl / 10`), written only by that worker, so
//! counting a request is a load and a store on a line no other thread writes; the minimum is
//! split between the workers.

use sluice_config::RetryBudget as Config;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

const BUCKETS: usize = 10;

/// A cluster's retry budget: one window per worker.
#[derive(Debug)]
pub struct RetryBudget {
    workers: Box<[Window]>,
}

/// One worker's window.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Window {
    buckets: [Bucket; BUCKETS],
}

#[derive(Debug, Default)]
struct Bucket {
    /// Which bucket period (time since the clock's base / bucket width) the counts are for.
    period: AtomicU64,
    requests: AtomicU32,
    retries: AtomicU32,
}

impl Bucket {
    /// The bucket's counts for `period`, reset first when they are for an older one. Only the
    /// owning worker writes, so plain loads and stores suffice.
    fn current(&self, period: u64) -> &Self {
        if self.period.load(Ordering::Relaxed) != period {
            self.period.store(period, Ordering::Relaxed);
            self.requests.store(0, Ordering::Relaxed);
            self.retries.store(0, Ordering::Relaxed);
        }
        self
    }
}

fn bump(a: &AtomicU32) {
    a.store(
        a.load(Ordering::Relaxed).saturating_add(1),
        Ordering::Relaxed,
    );
}

impl RetryBudget {
    /// A budget with a window for each of `workers` workers.
    pub fn new(workers: usize) -> Self {
        RetryBudget {
            workers: (0..workers.max(1)).map(|_| Window::default()).collect(),
        }
    }

    fn window(&self, worker: usize) -> Option<&Window> {
        self.workers.get(worker % self.workers.len().max(1))
    }

    /// Counts a request (its first attempt).
    pub fn deposit(&self, c: &Config, worker: usize, now: Instant) {
        if !c.enabled {
            return;
        }
        let Some(w) = self.window(worker) else {
            return;
        };
        let p = period(c, now);
        if let Some(b) = w.buckets.get((p % BUCKETS as u64) as usize) {
            bump(&b.current(p).requests);
        }
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn withdraw(&self, c: &Config, worker: usize, now: Instant) -> bool {
        if !c.enabled {
            return true;
        }
        let Some(w) = self.window(worker) else {
            return true;
        };
        let p = period(c, now);
        let (mut requests, mut retries) = (0u64, 0u64);
        for (i, b) in w.buckets.iter().enumerate() {
            // Buckets of the last BUCKETS periods count; older ones are stale.
            let bp = b.period.load(Ordering::Relaxed);
            if bp + (BUCKETS as u64) > p && bp <= p && (bp % BUCKETS as u64) as usize == i {
                requests += u64::from(b.requests.load(Ordering::Relaxed));
                retries += u64::from(b.retries.load(Ordering::Relaxed));
            }
        }
        if retries >= allowed(c, requests, self.workers.len()) {
            return false;
        }
        if let Some(b) = w.buckets.get((p % BUCKETS as u64) as usize) {
            bump(&b.current(p).retries);
        }
        true
    }
}

/// Retries allowed in a window with `requests` requests, for one of `workers` workers.
fn allowed(c: &Config, requests: u64, workers: usize) -> u64 {
    let ratio = requests * u64::from(c.retry_percent) / 100;
    let min_total = u64::from(c.min_retries_per_second) * c.ttl.get().as_secs().max(1);
    let workers = u64::try_from(workers.max(1)).unwrap_or(1);
    ratio + min_total.div_ceil(workers)
}

/// The bucket period `now` falls in.
fn period(c: &Config, now: Instant) -> u64 {
    let width = (c.ttl.get() / BUCKETS as u32).max(Duration::from_millis(10));
    crate::outlier::millis(now) / (width.as_millis() as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(percent: u32, min: u32) -> Config {
        Config {
            enabled: true,
            retry_percent: percent,
            min_retries_per_second: min,
            ttl: sluice_config::Duration::from_secs(10),
        }
    }

    #[test]
    fn the_budget_is_a_ratio_of_requests_plus_a_minimum() {
        assert_eq!(allowed(&cfg(20, 10), 0, 1), 100);
        assert_eq!(allowed(&cfg(20, 10), 1000, 1), 300);
        assert_eq!(allowed(&cfg(20, 0), 1000, 1), 200);
        // The minimum is split between workers (rounded up).
        assert_eq!(allowed(&cfg(20, 1), 0, 3), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_when_spent_and_return_as_the_window_slides() {
        let c = cfg(10, 0);
        let b = RetryBudget::new(1);
        for _ in 0..100 {
            b.deposit(&c, 0, Instant::now());
        }
        let granted = (0..50)
            .filter(|_| b.withdraw(&c, 0, Instant::now()))
            .count();
        assert_eq!(granted, 10, "10% of 100 requests");
        // Still inside the window: nothing new.
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!b.withdraw(&c, 0, Instant::now()));
        // The requests and retries slide out of the window together.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(
            !b.withdraw(&c, 0, Instant::now()),
            "no requests, no minimum"
        );
        for _ in 0..10 {
            b.deposit(&c, 0, Instant::now());
        }
        assert!(b.withdraw(&c, 0, Instant::now()));
        assert!(!b.withdraw(&c, 0, Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn the_minimum_allows_retries_without_traffic_and_disabled_allows_all() {
        let b = RetryBudget::new(1);
        let c = cfg(20, 1);
        let granted = (0..50)
            .filter(|_| b.withdraw(&c, 0, Instant::now()))
            .count();
        assert_eq!(granted, 10, "1 per second over 10 s");
        let off = Config {
            enabled: false,
            ..c
        };
        assert!((0..1000).all(|_| b.withdraw(&off, 0, Instant::now())));
    }

    #[test]
    fn workers_keep_separate_windows() {
        let c = cfg(100, 0);
        let b = RetryBudget::new(2);
        let now = Instant::now();
        b.deposit(&c, 0, now);
        assert!(!b.withdraw(&c, 1, now));
        assert!(b.withdraw(&c, 0, now));
    }
}
