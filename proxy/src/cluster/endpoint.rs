//! Endpoint sets. An [`EndpointSet`] is immutable and swapped whole; the `EndpointState` of
//! each endpoint is shared across sets (keyed by address), so health and load survive
//! endpoint-set changes.
//!
//! The set decides what every balancing policy shares before its balancer picks:
//! - **Locality preference**: when the proxy has a zone (`node.zone`), the cluster has at least
//!   `locality.min_cluster_size` endpoints and some of them are in that zone, the set also
//!   builds a balancer over the local ones alone, used while at least
//!   `locality.min_healthy_percent` of them are healthy; otherwise traffic spills to all.
//! - **Panic threshold**: below `panic_threshold` percent healthy endpoints, the balancer is
//!   told to ignore health (`PickContext::ignore_health`), spreading over all endpoints.
//!
//! Both need the number of healthy endpoints without scanning them on every pick. Health flags
//! change rarely and only through `set_unhealthy`/`set_healthy`, which bump the cluster's
//! health epoch (`EndpointGroup`) when an endpoint turns healthy or unhealthy. Each worker
//! keeps its own counts with the epoch they were taken at, in one word on a cache line only it
//! writes; a pick compares one shared load (the epoch) with it and recounts (O(n), on that
//! worker) only after a health change. An exact shared counter would need every flag change to
//! know which sets the endpoint is in; the epoch only needs the group, which endpoint states
//! keep for life.

use crate::endpoint::{Endpoint, EndpointGroup, EndpointState};
use crate::lb::{self, LbMetrics, LbSettings, LoadBalancer, PickContext};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

/// One endpoint as configured: address, weight, zone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSpec {
    /// Address.
    pub address: SocketAddr,
    /// Relative share of requests.
    pub weight: u32,
    /// Zone, for locality preference.
    pub zone: Option<Arc<str>>,
}

impl From<&sluice_config::Endpoint> for EndpointSpec {
    fn from(e: &sluice_config::Endpoint) -> Self {
        EndpointSpec {
            address: e.address,
            weight: e.weight,
            zone: e.zone.as_deref().map(Arc::from),
        }
    }
}

/// An immutable set of endpoints with its balancer.
#[derive(Debug)]
pub struct EndpointSet {
    /// 0 for "never set"; increases with every change.
    pub version: u64,
    /// The endpoints, in config order.
    pub endpoints: Vec<Arc<Endpoint>>,
    zones: Vec<Option<Arc<str>>>,
    lb: Box<dyn LoadBalancer>,
    /// The local zone's endpoints and their balancer, when locality preference applies.
    local: Option<Local>,
    group: Arc<EndpointGroup>,
    /// Per worker: the health counts and the epoch they were taken at ([`View`]).
    views: Box<[ViewSlot]>,
    panic_threshold: u32,
    min_local_healthy: u32,
    /// The last [`Mode`] reported (logged and exported once per change).
    mode: AtomicU8,
    metrics: LbMetrics,
}

#[derive(Debug)]
struct Local {
    endpoints: Vec<Arc<Endpoint>>,
    lb: Box<dyn LoadBalancer>,
}

/// One worker's packed [`View`], on a cache line of its own.
#[derive(Debug, Default)]
#[repr(align(64))]
struct ViewSlot(AtomicU64);

/// Health counts as of an epoch: bit 63 valid, bits 40..63 the epoch's low 23 bits, 20..40
/// healthy endpoints, 0..20 healthy local endpoints (counts saturate at 2²⁰ − 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct View {
    epoch: u32,
    healthy: u32,
    local_healthy: u32,
}

const COUNT_MASK: u64 = (1 << 20) - 1;
const EPOCH_MASK: u32 = (1 << 23) - 1;

impl View {
    fn pack(self) -> u64 {
        (1 << 63)
            | (u64::from(self.epoch & EPOCH_MASK) << 40)
            | ((u64::from(self.healthy) & COUNT_MASK) << 20)
            | (u64::from(self.local_healthy) & COUNT_MASK)
    }

    /// The view packed in `bits` if it is valid for `epoch`.
    fn unpack(bits: u64, epoch: u32) -> Option<View> {
        let valid = bits >> 63 == 1 && ((bits >> 40) as u32 & EPOCH_MASK) == epoch & EPOCH_MASK;
        valid.then_some(View {
            epoch,
            healthy: ((bits >> 20) & COUNT_MASK) as u32,
            local_healthy: (bits & COUNT_MASK) as u32,
        })
    }
}

/// How the set balances now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Mode {
    Normal = 1,
    LocalZone = 2,
    Panic = 3,
}

impl EndpointSet {
    /// No endpoints.
    pub fn empty(workers: usize) -> Self {
        Self::build(
            0,
            std::iter::empty(),
            None,
            &LbSettings::default(),
            workers,
            &LbMetrics::default(),
        )
    }

    /// No endpoints, in `group` (the cluster's: its breakers and outlier detection outlive
    /// every endpoint set).
    pub fn empty_in(workers: usize, group: Arc<EndpointGroup>) -> Self {
        let mut set = Self::empty(workers);
        set.group = group;
        set
    }

    /// A set from endpoint specs; addresses already in `previous` keep their state (and the
    /// set keeps `previous`'s endpoint group).
    pub fn build(
        version: u64,
        endpoints: impl Iterator<Item = EndpointSpec>,
        previous: Option<&EndpointSet>,
        settings: &LbSettings,
        workers: usize,
        metrics: &LbMetrics,
    ) -> Self {
        let group = previous.map_or_else(Arc::default, |p| Arc::clone(&p.group));
        let tracks_latency = settings.policy == sluice_config::LbPolicy::PeakEwma;
        group.set_ewma_decay(tracks_latency.then(|| settings.peak_ewma.decay.get()));
        let (endpoints, zones): (Vec<Arc<Endpoint>>, Vec<Option<Arc<str>>>) = endpoints
            .map(|spec| {
                let state = previous
                    .and_then(|p| p.get(spec.address))
                    .map(|e| Arc::clone(&e.state))
                    .unwrap_or_else(|| Arc::new(EndpointState::in_group(&group)));
                let e = Arc::new(Endpoint {
                    address: spec.address,
                    weight: spec.weight,
                    state,
                });
                (e, spec.zone)
            })
            .unzip();
        let local = local_endpoints(settings, &endpoints, &zones).map(|eps| Local {
            lb: lb::build(settings, &eps, workers, &group, metrics),
            endpoints: eps,
        });
        let set = EndpointSet {
            version,
            lb: lb::build(settings, &endpoints, workers, &group, metrics),
            endpoints,
            zones,
            local,
            group,
            views: (0..workers.max(1)).map(|_| ViewSlot::default()).collect(),
            panic_threshold: settings.panic_threshold,
            min_local_healthy: settings.locality.min_healthy_percent,
            mode: AtomicU8::new(0),
            metrics: metrics.clone(),
        };
        if version != 0 {
            let view = set.count(set.group.epoch());
            set.report(set.mode_of(view));
        }
        set
    }

    /// The endpoints as specs (to rebuild the set with other settings).
    pub fn specs(&self) -> impl Iterator<Item = EndpointSpec> + '_ {
        self.endpoints
            .iter()
            .zip(&self.zones)
            .map(|(e, zone)| EndpointSpec {
                address: e.address,
                weight: e.weight,
                zone: zone.clone(),
            })
    }

    /// True when the set holds exactly these endpoints, in this order.
    pub fn same_as(&self, specs: &[EndpointSpec]) -> bool {
        self.endpoints.len() == specs.len() && self.specs().zip(specs).all(|(a, b)| a == *b)
    }

    /// The state every endpoint of this set's cluster shares (requests in flight, health
    /// epoch).
    pub fn group(&self) -> &Arc<EndpointGroup> {
        &self.group
    }

    /// Picks an endpoint for one attempt: the local zone's balancer while enough of it is
    /// healthy, else every endpoint's, ignoring health below the panic threshold.
    pub fn pick(&self, ctx: &PickContext<'_>) -> Option<&Arc<Endpoint>> {
        let view = self.view(ctx.worker);
        match self.mode_of(view) {
            Mode::LocalZone => match &self.local {
                Some(l) => l.lb.pick(&l.endpoints, ctx),
                None => self.lb.pick(&self.endpoints, ctx),
            },
            Mode::Normal => self.lb.pick(&self.endpoints, ctx),
            Mode::Panic => {
                let ctx = PickContext {
                    ignore_health: true,
                    ..*ctx
                };
                self.lb.pick(&self.endpoints, &ctx)
            }
        }
    }

    /// The endpoint with this address.
    pub fn get(&self, address: SocketAddr) -> Option<&Arc<Endpoint>> {
        self.endpoints.iter().find(|e| e.address == address)
    }

    /// The worker's health counts, recounted when the health epoch moved.
    fn view(&self, worker: usize) -> View {
        let epoch = self.group.epoch();
        let Some(slot) = self.views.get(worker % self.views.len().max(1)) else {
            return self.count(epoch);
        };
        if let Some(v) = View::unpack(slot.0.load(Ordering::Relaxed), epoch) {
            return v;
        }
        let v = self.count(epoch);
        slot.0.store(v.pack(), Ordering::Relaxed);
        self.report(self.mode_of(v));
        v
    }

    /// Counts healthy endpoints (O(n): only after a health change).
    fn count(&self, epoch: u32) -> View {
        let healthy = |eps: &[Arc<Endpoint>]| eps.iter().filter(|e| e.state.is_healthy()).count();
        View {
            epoch,
            healthy: healthy(&self.endpoints) as u32,
            local_healthy: self.local.as_ref().map_or(0, |l| healthy(&l.endpoints)) as u32,
        }
    }

    fn mode_of(&self, v: View) -> Mode {
        if let Some(l) = &self.local
            && u64::from(v.local_healthy) * 100
                >= u64::from(self.min_local_healthy) * l.endpoints.len() as u64
        {
            return Mode::LocalZone;
        }
        if u64::from(v.healthy) * 100
            < u64::from(self.panic_threshold) * self.endpoints.len() as u64
        {
            Mode::Panic
        } else {
            Mode::Normal
        }
    }

    /// Logs and exports a mode change (once, whichever worker sees it first).
    fn report(&self, mode: Mode) {
        let old = self.mode.swap(mode as u8, Ordering::Relaxed);
        if old == mode as u8 {
            return;
        }
        self.metrics.panic.set(i64::from(mode == Mode::Panic));
        self.metrics
            .local_zone
            .set(i64::from(mode == Mode::LocalZone));
        let healthy = self.count(self.group.epoch()).healthy;
        match mode {
            Mode::Panic => tracing::warn!(
                healthy,
                endpoints = self.endpoints.len(),
                threshold = self.panic_threshold,
                "lb panic mode: too few healthy endpoints, balancing across all of them"
            ),
            Mode::LocalZone => tracing::info!(
                local = self.local.as_ref().map_or(0, |l| l.endpoints.len()),
                "lb local zone: routing to the local zone only"
            ),
            Mode::Normal if old != 0 => tracing::info!(
                healthy,
                endpoints = self.endpoints.len(),
                "lb normal mode: balancing across healthy endpoints"
            ),
            Mode::Normal => {}
        }
    }
}

/// The local zone's endpoints, when locality preference applies to this set.
fn local_endpoints(
    settings: &LbSettings,
    endpoints: &[Arc<Endpoint>],
    zones: &[Option<Arc<str>>],
) -> Option<Vec<Arc<Endpoint>>> {
    let zone = settings.local_zone.as_ref()?;
    if !settings.locality.enabled || endpoints.len() < settings.locality.min_cluster_size as usize {
        return None;
    }
    let local: Vec<Arc<Endpoint>> = endpoints
        .iter()
        .zip(zones)
        .filter(|(_, z)| z.as_ref() == Some(zone))
        .map(|(e, _)| Arc::clone(e))
        .collect();
    (!local.is_empty() && local.len() < endpoints.len()).then_some(local)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::Health;
    use sluice_config::LbPolicy;

    fn spec(i: u16, zone: Option<&str>) -> EndpointSpec {
        EndpointSpec {
            address: SocketAddr::from(([127, 0, 0, 1], 4000 + i)),
            weight: 1,
            zone: zone.map(Arc::from),
        }
    }

    fn set(n: u16, local: u16, settings: &LbSettings) -> EndpointSet {
        EndpointSet::build(
            1,
            (0..n).map(|i| spec(i, Some(if i < local { "a" } else { "b" }))),
            None,
            settings,
            2,
            &LbMetrics::default(),
        )
    }

    fn picks(s: &EndpointSet, n: usize) -> Vec<usize> {
        let mut c = vec![0; s.endpoints.len()];
        for i in 0..n {
            let ctx = PickContext {
                worker: i % 2,
                ..PickContext::default()
            };
            let e = s.pick(&ctx).unwrap();
            c[s.endpoints.iter().position(|x| Arc::ptr_eq(x, e)).unwrap()] += 1;
        }
        c
    }

    fn round_robin() -> LbSettings {
        LbSettings {
            policy: LbPolicy::RoundRobin,
            ..LbSettings::default()
        }
    }

    #[test]
    fn below_the_panic_threshold_health_is_ignored() {
        let s = set(4, 0, &round_robin());
        s.endpoints[0].state.set_unhealthy(Health::FAILED_OUTLIER);
        // 3 of 4 healthy (75% ≥ 50%): the unhealthy one is skipped.
        let c = picks(&s, 400);
        assert_eq!(c[0], 0, "{c:?}");
        s.endpoints[1].state.set_unhealthy(Health::FAILED_OUTLIER);
        // 2 of 4 (50%): still normal.
        let c = picks(&s, 400);
        assert_eq!((c[0], c[1]), (0, 0), "{c:?}");
        s.endpoints[2].state.set_unhealthy(Health::FAILED_ACTIVE_HC);
        // 1 of 4 (25% < 50%): panic, every endpoint gets its share.
        let c = picks(&s, 400);
        assert!(c.iter().all(|&x| x == 100), "{c:?}");
        assert_eq!(s.mode.load(Ordering::Relaxed), Mode::Panic as u8);
        // Recovery leaves panic mode.
        s.endpoints[2].state.set_healthy(Health::FAILED_ACTIVE_HC);
        let c = picks(&s, 400);
        assert_eq!((c[0], c[1]), (0, 0), "{c:?}");
        // A threshold of 0 never panics: the one healthy endpoint takes everything.
        let s = set(
            4,
            0,
            &LbSettings {
                panic_threshold: 0,
                ..round_robin()
            },
        );
        for e in &s.endpoints[..3] {
            e.state.set_unhealthy(Health::FAILED_OUTLIER);
        }
        assert_eq!(picks(&s, 100), vec![0, 0, 0, 100]);
    }

    #[test]
    fn the_local_zone_is_preferred_while_enough_of_it_is_healthy() {
        let local = LbSettings {
            local_zone: Some(Arc::from("a")),
            ..round_robin()
        };
        // 3 of 6 endpoints in zone a.
        let s = set(6, 3, &local);
        let c = picks(&s, 600);
        assert_eq!(c, vec![200, 200, 200, 0, 0, 0]);
        assert_eq!(s.mode.load(Ordering::Relaxed), Mode::LocalZone as u8);
        // 2 of 3 local healthy (67% < 70%): spill to every healthy endpoint.
        s.endpoints[0].state.set_unhealthy(Health::FAILED_OUTLIER);
        let c = picks(&s, 500);
        assert_eq!(c[0], 0);
        assert!(c[1..].iter().all(|&x| x == 100), "{c:?}");
        // A lower bar keeps the traffic local.
        let lenient = LbSettings {
            locality: sluice_config::LocalitySettings {
                min_healthy_percent: 60,
                ..Default::default()
            },
            ..local.clone()
        };
        let s = set(6, 3, &lenient);
        s.endpoints[0].state.set_unhealthy(Health::FAILED_OUTLIER);
        assert_eq!(picks(&s, 200), vec![0, 100, 100, 0, 0, 0]);
        // Too small a cluster (min_cluster_size 6), no zone, or disabled: no preference.
        let c = picks(&set(5, 3, &local), 500);
        assert!(c.iter().all(|&x| x == 100), "{c:?}");
        let c = picks(&set(6, 3, &round_robin()), 600);
        assert!(c.iter().all(|&x| x == 100), "{c:?}");
        let disabled = LbSettings {
            locality: sluice_config::LocalitySettings {
                enabled: false,
                ..Default::default()
            },
            ..local
        };
        let c = picks(&set(6, 3, &disabled), 600);
        assert!(c.iter().all(|&x| x == 100), "{c:?}");
    }

    #[test]
    fn states_and_group_survive_a_rebuild_and_views_follow_the_epoch() {
        let s1 = set(3, 0, &round_robin());
        s1.endpoints[1].state.set_unhealthy(Health::FAILED_OUTLIER);
        let s2 = EndpointSet::build(
            2,
            s1.specs().chain(std::iter::once(spec(9, None))),
            Some(&s1),
            &round_robin(),
            2,
            &LbMetrics::default(),
        );
        assert!(Arc::ptr_eq(&s1.endpoints[1].state, &s2.endpoints[1].state));
        assert!(Arc::ptr_eq(s1.group(), s2.group()));
        assert!(Arc::ptr_eq(s2.endpoints[3].state.group(), s2.group()));
        assert_eq!(s2.view(0).healthy, 3);
        // A flag change on a new endpoint moves the shared epoch: both workers recount.
        s2.endpoints[3].state.set_unhealthy(Health::FAILED_OUTLIER);
        assert_eq!(s2.view(0).healthy, 2);
        assert_eq!(s2.view(1).healthy, 2);
        assert!(s2.same_as(&s2.specs().collect::<Vec<_>>()));
        assert!(!s2.same_as(&s1.specs().collect::<Vec<_>>()));
        let v = View {
            epoch: 5,
            healthy: 7,
            local_healthy: 3,
        };
        assert_eq!(View::unpack(v.pack(), 5), Some(v));
        assert_eq!(View::unpack(v.pack(), 6), None);
        assert_eq!(View::unpack(0, 0), None);
    }
}
