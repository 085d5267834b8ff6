//! The worker's coarse clock and coarse deadlines: a per-thread clock refreshed every
//! [`COARSE_TICK`] (reading a cell is cheaper than reading the clock, several times per request)
//! and a slab of deadlines it wakes, instead of a tokio timer registered per request.

thread_local! {
    /// The worker's coarse clock, refreshed every [`COARSE_TICK`] by [`run_coarse_clock`].
    static COARSE_NOW: std::cell::Cell<Option<tokio::time::Instant>> =
        const { std::cell::Cell::new(None) };
}

/// Resolution of [`coarse_now`] on worker threads.
pub(crate) const COARSE_TICK: std::time::Duration = std::time::Duration::from_millis(20);

/// The time, to within [`COARSE_TICK`] on a worker thread (exact elsewhere). For idle and
/// header-timeout bookkeeping, which happens several times per request: reading a cell is
/// cheaper than reading the clock.
pub(crate) fn coarse_now() -> tokio::time::Instant {
    COARSE_NOW
        .with(std::cell::Cell::get)
        .unwrap_or_else(tokio::time::Instant::now)
}

/// Keeps this thread's coarse clock current and wakes coarse deadlines that have passed; runs
/// for the life of the worker.
pub(crate) async fn run_coarse_clock() {
    let mut tick = tokio::time::interval(COARSE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = tokio::time::Instant::now();
        COARSE_NOW.with(|c| c.set(Some(now)));
        DEADLINES.with(|d| d.borrow().wake_expired(now));
    }
}

thread_local! {
    static DEADLINES: std::cell::RefCell<Deadlines> = std::cell::RefCell::default();
}

/// The pending coarse deadlines of one worker: a slab of (deadline, waker).
#[derive(Default)]
struct Deadlines {
    slots: Vec<Option<(tokio::time::Instant, std::task::Waker)>>,
    free: Vec<usize>,
}

impl Deadlines {
    fn wake_expired(&self, now: tokio::time::Instant) {
        for (deadline, waker) in self.slots.iter().flatten() {
            if *deadline <= now {
                waker.wake_by_ref();
            }
        }
    }
}

/// A deadline checked by the worker's coarse clock: no timer-wheel registration per request.
/// Fires within [`COARSE_TICK`] after `at`. On a thread without a coarse clock it is a tokio
/// `Sleep`.
#[derive(Debug)]
pub(crate) struct Deadline {
    at: tokio::time::Instant,
    kind: DeadlineKind,
}

#[derive(Debug)]
enum DeadlineKind {
    /// Not yet polled.
    New,
    /// Registered in the worker's slab at this index.
    Slot(usize),
    /// No coarse clock on this thread.
    Precise(std::pin::Pin<Box<tokio::time::Sleep>>),
}

impl Deadline {
    #[cfg(test)]
    pub(crate) fn after(d: std::time::Duration) -> Self {
        Self::until(coarse_now() + d)
    }

    /// A deadline at `at`.
    pub(crate) fn until(at: tokio::time::Instant) -> Self {
        Deadline {
            at,
            kind: DeadlineKind::New,
        }
    }

    /// When it fires.
    pub(crate) fn at(&self) -> tokio::time::Instant {
        self.at
    }
}

impl std::future::Future for Deadline {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let this = &mut *self;
        if let DeadlineKind::Precise(sleep) = &mut this.kind {
            return sleep.as_mut().poll(cx);
        }
        let Some(now) = COARSE_NOW.with(std::cell::Cell::get) else {
            let mut sleep = Box::pin(tokio::time::sleep_until(this.at));
            let poll = sleep.as_mut().poll(cx);
            this.kind = DeadlineKind::Precise(sleep);
            return poll;
        };
        if now >= this.at {
            return std::task::Poll::Ready(());
        }
        DEADLINES.with(|d| {
            let mut d = d.borrow_mut();
            match this.kind {
                DeadlineKind::Slot(i) => {
                    if let Some(Some((_, w))) = d.slots.get_mut(i)
                        && !w.will_wake(cx.waker())
                    {
                        *w = cx.waker().clone();
                    }
                }
                _ => {
                    let entry = Some((this.at, cx.waker().clone()));
                    let i = match d.free.pop() {
                        Some(i) => {
                            if let Some(slot) = d.slots.get_mut(i) {
                                *slot = entry;
                            }
                            i
                        }
                        None => {
                            d.slots.push(entry);
                            d.slots.len() - 1
                        }
                    };
                    this.kind = DeadlineKind::Slot(i);
                }
            }
        });
        std::task::Poll::Pending
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        if let DeadlineKind::Slot(i) = self.kind {
            // `try_with`: the thread-local may already be gone at thread exit.
            let _ = DEADLINES.try_with(|d| {
                let mut d = d.borrow_mut();
                if let Some(slot) = d.slots.get_mut(i) {
                    *slot = None;
                    d.free.push(i);
                }
            });
        }
    }
}

/// Exponential backoff with full jitter: attempt `n` (1 = the first after a failure) waits a
/// uniform time in `[0, min(max, base × 2^(n−1))]`, `roll` being uniform over `u64`. Used by
/// retries (`cluster/retry.rs`) and the xDS client's reconnections.
pub(crate) fn full_jitter(
    n: u32,
    base: std::time::Duration,
    max: std::time::Duration,
    roll: u64,
) -> std::time::Duration {
    let ceiling = base
        .saturating_mul(1u32 << n.saturating_sub(1).min(20))
        .min(max);
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    std::time::Duration::from_nanos(if nanos == u64::MAX {
        roll
    } else {
        roll % (nanos + 1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn deadline_without_coarse_clock_is_precise() {
        let t0 = tokio::time::Instant::now();
        Deadline::after(Duration::from_millis(150)).await;
        assert_eq!(t0.elapsed(), Duration::from_millis(150));
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_on_a_worker_fires_within_one_tick() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                tokio::task::spawn_local(run_coarse_clock());
                tokio::task::yield_now().await;
                let t0 = tokio::time::Instant::now();
                let early = Deadline::after(Duration::from_millis(100));
                let late = Deadline::after(Duration::from_secs(60));
                early.await;
                let waited = t0.elapsed();
                assert!(waited >= Duration::from_millis(100), "{waited:?}");
                assert!(
                    waited <= Duration::from_millis(100) + COARSE_TICK,
                    "{waited:?}"
                );
                drop(late);
                // A dropped deadline frees its slot for the next one.
                DEADLINES.with(|d| assert_eq!(d.borrow().slots.iter().flatten().count(), 0));
            })
            .await;
    }
}
