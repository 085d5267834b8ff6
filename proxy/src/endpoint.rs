//! Endpoints: one upstream address with the state every worker shares for it (health flags,
//! active requests, the peak-EWMA latency estimate, outlier counters) and its cluster's
//! [`EndpointGroup`] (health epoch, circuit breakers, outlier detection settings). Clusters
//! hold endpoints in their endpoint sets, balancers pick among them; this module depends only
//! on the leaf modules `breaker` and `outlier`.

use crate::breaker::Breakers;
use crate::outlier::{self, ClusterOutlier, EndpointOutlier, Outcome};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::time::Instant;

/// One upstream address in one endpoint set.
#[derive(Debug)]
pub struct Endpoint {
    /// Address.
    pub address: SocketAddr,
    /// Relative share of requests.
    pub weight: u32,
    /// Shared state, kept while the address stays in the set.
    pub state: Arc<EndpointState>,
}

/// Why an endpoint is excluded from balancing (bit flags; none set means healthy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Health(u8);

impl Health {
    /// Failed active health checking.
    pub const FAILED_ACTIVE_HC: Health = Health(1);
    /// Ejected by outlier detection.
    pub const FAILED_OUTLIER: Health = Health(2);
    /// Every flag with its name (admin API).
    pub const ALL: [(Health, &'static str); 2] = [
        (Health::FAILED_ACTIVE_HC, "failed_active_hc"),
        (Health::FAILED_OUTLIER, "failed_outlier"),
    ];
}

/// State shared by every worker for one endpoint: what circuit breakers, outlier detection,
/// health checks and load-aware balancers read and write.
#[derive(Debug, Default)]
pub struct EndpointState {
    health: AtomicU8,
    active: AtomicU32,
    /// Peak-EWMA latency: [`Ewma`] packed (0: no sample yet).
    ewma: AtomicU64,
    /// What the endpoint's cluster shares (the same for every state of one cluster's sets).
    group: Arc<EndpointGroup>,
    /// Outlier detection's counters.
    pub outlier: EndpointOutlier,
    /// Attempts that got an answer or failed at the endpoint (the admin API's
    /// `total_requests`), and those that were errors (5xx, connect or protocol failures).
    requests: AtomicU64,
    errors: AtomicU64,
}

/// State shared by every endpoint of one cluster (owned by the cluster's handle, so it lasts
/// across every settings and endpoint change): a health epoch, the cluster's circuit breakers
/// (whose `max_requests` gauge is its requests in flight), outlier detection and the EWMA
/// decay.
#[derive(Debug, Default)]
pub struct EndpointGroup {
    /// Bumped whenever an endpoint of the group turns healthy or unhealthy; endpoint sets keep
    /// per-worker healthy counts and recount only when it moved.
    epoch: AtomicU32,
    /// The peak-EWMA decay time constant in milliseconds; 0: latency is not tracked.
    decay_ms: AtomicU32,
    /// Outlier detection's settings and ejected count.
    pub outlier: ClusterOutlier,
    /// Circuit breakers; `breakers.requests` is the requests in flight to the group's
    /// endpoints (bounded-load hashing reads it: Envoy's `upstream_rq_active`). On cache lines
    /// of their own: every request writes them, and every pick reads the epoch.
    pub breakers: OwnLines,
}

/// The circuit breakers, on cache lines of their own.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct OwnLines(pub Breakers);

impl std::ops::Deref for OwnLines {
    type Target = Breakers;
    fn deref(&self) -> &Breakers {
        &self.0
    }
}

impl EndpointGroup {
    /// The health epoch (changes whenever an endpoint's health does).
    pub fn epoch(&self) -> u32 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Requests in flight to the group's endpoints, over all workers.
    pub fn active_requests(&self) -> u32 {
        self.breakers.requests.current()
    }

    /// Tracks peak-EWMA latency with this decay (`None`: do not track).
    pub fn set_ewma_decay(&self, decay: Option<Duration>) {
        let ms = decay.map_or(0, |d| d.as_millis().clamp(1, u128::from(u32::MAX)) as u32);
        self.decay_ms.store(ms, Ordering::Relaxed);
    }
}

/// A failed attempt counts as a response that took this long (Finagle treats failures as high
/// latency), or twice the current estimate when that is higher (capped at [`MAX_PENALTY`]).
pub const FAILURE_PENALTY: Duration = Duration::from_secs(1);
/// The largest failure penalty.
pub const MAX_PENALTY: Duration = Duration::from_secs(30);

impl EndpointState {
    /// A state in `group` (healthy, idle, no latency sample).
    pub fn in_group(group: &Arc<EndpointGroup>) -> Self {
        EndpointState {
            group: Arc::clone(group),
            ..EndpointState::default()
        }
    }

    /// The group this endpoint belongs to.
    pub fn group(&self) -> &Arc<EndpointGroup> {
        &self.group
    }

    /// True when no health flag is set, or the only one is an outlier ejection whose time has
    /// passed (the cluster's sweep clears it; only unhealthy endpoints read the clock).
    pub fn is_healthy(&self) -> bool {
        let h = self.health.load(Ordering::Relaxed);
        h == 0
            || (h == Health::FAILED_OUTLIER.0
                && self
                    .outlier
                    .is_due(outlier::millis(crate::clock::coarse_now())))
    }

    /// True when this health flag is set.
    pub fn has(&self, flag: Health) -> bool {
        self.health.load(Ordering::Relaxed) & flag.0 != 0
    }

    /// The names of the health flags set (admin `/clusters`, `explain`).
    pub fn flag_names(&self) -> Vec<&'static str> {
        Health::ALL
            .iter()
            .filter(|(h, _)| self.has(*h))
            .map(|(_, n)| *n)
            .collect()
    }

    /// Ends an outlier ejection whose time has passed; true when this call ended it.
    pub fn return_if_due(&self, now: Instant) -> bool {
        let ended = self
            .outlier
            .try_return(&self.group.outlier, outlier::millis(now));
        if ended {
            self.set_healthy(Health::FAILED_OUTLIER);
        }
        ended
    }

    /// True when ejected by outlier detection.
    pub fn is_ejected(&self) -> bool {
        self.has(Health::FAILED_OUTLIER)
    }

    /// Records an attempt's outcome for outlier detection; when it crosses a threshold and the
    /// cluster has room, ejects the endpoint and returns why and for how long.
    pub fn report(
        &self,
        outcome: Outcome,
        endpoints: impl FnOnce() -> usize,
        now: Instant,
    ) -> Option<(outlier::Reason, Duration)> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if outcome != Outcome::Success {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let cluster = &self.group.outlier;
        if !cluster.enabled() {
            return None;
        }
        if outcome == Outcome::Success {
            self.outlier.record_success();
            return None;
        }
        let c = cluster.config();
        let reason = self.outlier.record(outcome, &c)?;
        self.eject(reason, &c, endpoints(), now)
    }

    /// Ejects the endpoint (if the cluster has room).
    pub fn eject(
        &self,
        reason: outlier::Reason,
        c: &sluice_config::OutlierDetection,
        endpoints: usize,
        now: Instant,
    ) -> Option<(outlier::Reason, Duration)> {
        let d = self
            .outlier
            .try_eject(&self.group.outlier, c, endpoints, now)?;
        self.set_unhealthy(Health::FAILED_OUTLIER);
        Some((reason, d))
    }

    /// Sets a health flag; true when it was not set before.
    pub fn set_unhealthy(&self, why: Health) -> bool {
        let old = self.health.fetch_or(why.0, Ordering::Relaxed);
        if old == 0 {
            self.group.epoch.fetch_add(1, Ordering::Release);
        }
        old & why.0 == 0
    }

    /// Clears a health flag; true when it was set before.
    pub fn set_healthy(&self, why: Health) -> bool {
        let old = self.health.fetch_and(!why.0, Ordering::Relaxed);
        if old == why.0 {
            self.group.epoch.fetch_add(1, Ordering::Release);
        }
        old & why.0 != 0
    }

    /// Requests in flight to this endpoint, over all workers.
    pub fn active_requests(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    /// Attempts reported on this endpoint, and how many were errors.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.requests.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }

    /// Counts a request in flight (on the endpoint and the cluster's `max_requests` breaker)
    /// until the guard drops; `None` when the breaker is full.
    pub(crate) fn try_admit(self: &Arc<Self>) -> Option<ActiveRequest> {
        if !self.group.breakers.requests.try_acquire() {
            return None;
        }
        self.active.fetch_add(1, Ordering::Relaxed);
        Some(ActiveRequest {
            state: Arc::clone(self),
            route: None,
        })
    }

    /// Counts a request in flight whatever the breaker says (TCP connections and upgrades,
    /// which the connection breaker bounds).
    pub(crate) fn admit(self: &Arc<Self>) -> ActiveRequest {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.group.breakers.requests.acquire();
        ActiveRequest {
            state: Arc::clone(self),
            route: None,
        }
    }

    /// Records a response head that arrived `latency` after the attempt started (peak EWMA).
    /// A no-op unless the cluster balances by peak EWMA.
    pub fn observe_latency(&self, latency: Duration) {
        self.observe(|_| latency);
    }

    /// Records an attempt for peak EWMA: its response head's `latency`, or a failure penalty
    /// when it got no response (connect failure, reset, timeout).
    pub fn observe_latency_or_failure(&self, responded: bool, latency: Duration) {
        if responded {
            self.observe_latency(latency);
        } else {
            self.observe_failure();
        }
    }

    /// Records a failed attempt (connect failure, reset, timeout) as a slow response: the
    /// larger of [`FAILURE_PENALTY`] and twice the current estimate, at most [`MAX_PENALTY`],
    /// so a failing endpoint is avoided for a while (about `decay × ln(penalty / others'
    /// latency)`) and then tried again. A no-op unless the cluster balances by peak EWMA.
    pub fn observe_failure(&self) {
        self.observe(|current| {
            Duration::from_nanos((current * 2.0) as u64).clamp(FAILURE_PENALTY, MAX_PENALTY)
        });
    }

    /// Folds a sample (computed from the current estimate in nanoseconds) into the estimate:
    /// a compare-exchange loop on one word, no lock.
    fn observe(&self, sample: impl Fn(f64) -> Duration) {
        let decay_ms = self.group.decay_ms.load(Ordering::Relaxed);
        if decay_ms == 0 {
            return;
        }
        let now = now_ms(Instant::now());
        let mut old = self.ewma.load(Ordering::Relaxed);
        loop {
            let current = Ewma::unpack(old).at(now, decay_ms).unwrap_or(0.0);
            let s = sample(current).as_nanos() as f64;
            let new = Ewma::unpack(old).observe(s, now, decay_ms).pack();
            match self
                .ewma
                .compare_exchange_weak(old, new, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(actual) => old = actual,
            }
        }
    }

    /// The latency estimate in nanoseconds at `now` (decayed since the last sample), `None`
    /// before the first sample.
    pub fn latency_estimate(&self, now: Instant) -> Option<f64> {
        let decay_ms = self.group.decay_ms.load(Ordering::Relaxed).max(1);
        Ewma::unpack(self.ewma.load(Ordering::Relaxed)).at(now_ms(now), decay_ms)
    }
}

/// Milliseconds since the process's first call (wrapping: an estimate untouched for more than
/// 24 days reads as fresh until its next sample).
pub(crate) fn now_ms(now: Instant) -> u32 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| now);
    now.saturating_duration_since(epoch).as_millis() as u32
}

/// A peak-EWMA latency estimate: the value (nanoseconds, as `f32`) at the time of the last
/// sample (milliseconds, [`now_ms`]). Packed into one `u64`; 0 means "no sample".
///
/// Between samples the estimate decays towards 0 with time constant τ (as Linkerd's and
/// Finagle's do: their reads fold in a 0), so an endpoint that stopped being picked for being
/// slow is tried again after a while. A sample above the decayed estimate replaces it (the
/// peak); a lower one moves it by `1 − e^(−Δ/τ)`, Δ being the time since the last sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Ewma {
    value: f32,
    at_ms: u32,
    sampled: bool,
}

impl Ewma {
    pub(crate) fn unpack(bits: u64) -> Self {
        Ewma {
            value: f32::from_bits((bits >> 32) as u32),
            at_ms: bits as u32,
            sampled: bits != 0,
        }
    }

    pub(crate) fn pack(self) -> u64 {
        if !self.sampled {
            return 0;
        }
        // A sample of exactly 0 ns at time 0 must not read as "no sample".
        let value = if self.value > 0.0 { self.value } else { 1.0 };
        (u64::from(value.to_bits()) << 32) | u64::from(self.at_ms)
    }

    /// The estimate at `now_ms`, `None` before the first sample.
    pub(crate) fn at(self, now_ms: u32, decay_ms: u32) -> Option<f64> {
        self.sampled
            .then(|| f64::from(self.value) * self.weight(now_ms, decay_ms))
    }

    /// e^(−Δ/τ). A sample stamped after `now_ms` (picks read the coarse clock, which may lag
    /// the precise one a sample is stamped with) counts as fresh.
    fn weight(self, now_ms: u32, decay_ms: u32) -> f64 {
        let elapsed = now_ms.wrapping_sub(self.at_ms);
        let elapsed = if elapsed > u32::MAX / 2 { 0 } else { elapsed };
        (-f64::from(elapsed) / f64::from(decay_ms.max(1))).exp()
    }

    /// The estimate after a sample of `sample_ns` at `now_ms`.
    pub(crate) fn observe(self, sample_ns: f64, now_ms: u32, decay_ms: u32) -> Self {
        let value = match self.at(now_ms, decay_ms) {
            Some(decayed) if sample_ns < decayed => {
                let w = self.weight(now_ms, decay_ms);
                decayed * w + sample_ns * (1.0 - w)
            }
            _ => sample_ns,
        };
        Ewma {
            value: value.min(f64::from(f32::MAX)) as f32,
            at_ms: now_ms,
            sampled: true,
        }
    }
}

/// Counts one request as active on its endpoint, its group (the `max_requests` breaker) and
/// its route's breaker while alive.
#[derive(Debug)]
pub(crate) struct ActiveRequest {
    state: Arc<EndpointState>,
    /// The route breaker's slot, held for the life of the response.
    route: Option<crate::breaker::Held<Arc<crate::breaker::Gauge>>>,
}

impl ActiveRequest {
    /// The endpoint's state (to record latency, a failure or an outcome).
    pub(crate) fn state(&self) -> &Arc<EndpointState> {
        &self.state
    }

    /// Holds the route breaker's slot until the response is done.
    pub(crate) fn hold_route(
        &mut self,
        slot: Option<crate::breaker::Held<Arc<crate::breaker::Gauge>>>,
    ) {
        self.route = slot;
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.state.active.fetch_sub(1, Ordering::Relaxed);
        self.state.group.breakers.requests.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAU: u32 = 10_000;

    #[test]
    fn peaks_jump_up_and_decay_towards_zero() {
        let e = Ewma::unpack(0);
        assert_eq!(e.at(0, TAU), None, "no sample yet");
        let e = e.observe(1e6, 1000, TAU);
        assert_eq!(e.at(1000, TAU), Some(1e6));
        // A higher sample is taken at once (the peak).
        let e = e.observe(50e6, 1000, TAU);
        assert_eq!(e.at(1000, TAU), Some(50e6));
        // One time constant later, 1/e of it is left.
        let later = e.at(1000 + TAU, TAU).unwrap();
        assert!((later - 50e6 / std::f64::consts::E).abs() < 1e3, "{later}");
        // Round trip through the packed word.
        assert_eq!(Ewma::unpack(e.pack()), e);
    }

    #[test]
    fn lower_samples_pull_the_average_down_by_elapsed_time() {
        let e = Ewma::unpack(0).observe(100e6, 0, TAU);
        // A low sample right after barely moves it (samples in a burst do not outvote a peak).
        let same_time = e.observe(1e6, 0, TAU).at(0, TAU).unwrap();
        assert_eq!(same_time, 100e6);
        // Half a time constant later: the decayed value moved towards the sample.
        let half = e.observe(1e6, TAU / 2, TAU).at(TAU / 2, TAU).unwrap();
        let w = (-0.5f64).exp();
        let want = 100e6 * w * w + 1e6 * (1.0 - w);
        assert!((half - want).abs() / want < 1e-6, "{half} vs {want}");
        assert!(half < 100e6 * w, "never above the decayed estimate");
    }

    #[tokio::test(start_paused = true)]
    async fn endpoint_state_records_latency_and_failures_only_when_tracked() {
        let group = Arc::new(EndpointGroup::default());
        let s = Arc::new(EndpointState::in_group(&group));
        s.observe_latency(Duration::from_millis(5));
        assert_eq!(s.latency_estimate(Instant::now()), None, "not tracked");
        group.set_ewma_decay(Some(Duration::from_secs(10)));
        s.observe_latency(Duration::from_millis(5));
        let est = s.latency_estimate(Instant::now()).unwrap();
        assert!((est - 5e6).abs() < 1.0, "{est}");
        s.observe_failure();
        assert_eq!(
            s.latency_estimate(Instant::now()),
            Some(1e9),
            "a failure counts as 1s"
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        let est = s.latency_estimate(Instant::now()).unwrap();
        assert!((est - 1e9 / std::f64::consts::E).abs() < 1e7, "{est}");
    }

    #[test]
    fn health_changes_move_the_group_epoch_and_report_flag_changes() {
        let group = Arc::new(EndpointGroup::default());
        let s = EndpointState::in_group(&group);
        let e0 = group.epoch();
        assert!(s.set_unhealthy(Health::FAILED_OUTLIER));
        assert_eq!(group.epoch(), e0 + 1);
        // A second flag: still unhealthy, no epoch change; setting it again changes nothing.
        assert!(s.set_unhealthy(Health::FAILED_ACTIVE_HC));
        assert!(!s.set_unhealthy(Health::FAILED_ACTIVE_HC));
        assert_eq!(group.epoch(), e0 + 1);
        assert!(s.set_healthy(Health::FAILED_OUTLIER));
        assert_eq!(group.epoch(), e0 + 1, "still failing health checks");
        assert!(s.set_healthy(Health::FAILED_ACTIVE_HC));
        assert_eq!(group.epoch(), e0 + 2);
        assert!(!s.set_healthy(Health::FAILED_ACTIVE_HC));
        assert!(s.is_healthy());
    }

    #[test]
    fn the_group_counts_requests_in_flight() {
        let group = Arc::new(EndpointGroup::default());
        let a = Arc::new(EndpointState::in_group(&group));
        let b = Arc::new(EndpointState::in_group(&group));
        let held = [a.admit(), a.admit(), b.admit()];
        assert_eq!(group.active_requests(), 3);
        drop(held);
        assert_eq!(group.active_requests(), 0);
    }
}
