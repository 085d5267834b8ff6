//! Ring hash (Ketama; Envoy `RING_HASH`). Built once per endpoint set: every endpoint gets
//! points on a 64-bit ring in proportion to its weight (a power-of-two number per unit of
//! weight: at least `minimum_ring_size` points in all, at most `maximum_ring_size`, see
//! [`points_per_weight`]); a request's hash goes to the first point at or after it (binary
//! search). Adding or removing one of N endpoints moves only the keys of its own points, about
//! 1/N of them. Unhealthy or tried endpoints, and with bounded load overloaded ones, are
//! skipped for the next point on the ring. Without a hash (no hash policy applied), the point
//! is random.

use super::hash::{Bound, address_hash};
use super::random::scan_preferred;
use super::{LoadBalancer, PickContext};
use crate::endpoint::Endpoint;
use std::sync::Arc;

/// Points visited before giving up on the ring and scanning the endpoints.
const MAX_WALK: usize = 4096;

/// A consistent-hash ring over a fixed endpoint list.
#[derive(Debug)]
pub struct RingHash {
    /// Point hashes, ascending.
    points: Vec<u64>,
    /// The endpoint index of each point.
    owners: Vec<u32>,
    total_weight: u64,
    bound: Bound,
}

impl RingHash {
    /// A ring over `endpoints` (by address and weight) with Envoy's sizing.
    pub fn new(endpoints: &[Arc<Endpoint>], min_size: u64, max_size: u64, bound: Bound) -> Self {
        let total_weight: u64 = endpoints.iter().map(|e| u64::from(e.weight)).sum();
        let per_unit = points_per_weight(total_weight, min_size, max_size);
        let mut ring: Vec<(u64, u32)> = Vec::new();
        for (i, e) in endpoints.iter().enumerate().filter(|(_, e)| e.weight > 0) {
            let points = (f64::from(e.weight) * per_unit).round().max(1.0) as u64;
            ring.extend((0..points).map(|k| (address_hash(&e.address, k), i as u32)));
        }
        ring.sort_unstable();
        let (points, owners) = ring.into_iter().unzip();
        RingHash {
            points,
            owners,
            total_weight,
            bound,
        }
    }

    /// Points on the ring.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// True when the ring has no points.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

/// Points per unit of weight: a power of two, so that the ring has at least `min_size`
/// points (and at most twice that) and at most `max_size`. Envoy scales every endpoint's
/// points with the set (`min_size` spread over the lightest endpoint's share), so adding an
/// endpoint also takes points from every other and moves about 2/N of the keys; a power of two
/// changes only when the total weight crosses one, so one endpoint more or less moves about
/// 1/N. Past `max_size`, points are proportional to weight (at least one each).
fn points_per_weight(total_weight: u64, min_size: u64, max_size: u64) -> f64 {
    if total_weight == 0 {
        return 0.0;
    }
    let least = min_size.div_ceil(total_weight).max(1).next_power_of_two();
    if least.saturating_mul(total_weight) <= max_size {
        return least as f64;
    }
    match max_size / total_weight {
        0 => max_size as f64 / total_weight as f64,
        most => (1u64 << (63 - most.leading_zeros())) as f64,
    }
}

impl LoadBalancer for RingHash {
    fn pick<'a>(
        &self,
        endpoints: &'a [Arc<Endpoint>],
        ctx: &PickContext<'_>,
    ) -> Option<&'a Arc<Endpoint>> {
        let n = self.points.len();
        if n == 0 {
            return None;
        }
        let hash = ctx.hash.unwrap_or_else(|| fastrand::u64(..));
        let start = self.points.partition_point(|&p| p < hash) % n;
        let owner = |k: usize| {
            self.owners
                .get((start + k) % n)
                .and_then(|&i| endpoints.get(i as usize))
        };
        let mut fallback = None;
        for k in 0..n.min(MAX_WALK) {
            let Some(e) = owner(k) else { continue };
            if !ctx.preferred(e) {
                continue;
            }
            if !self.bound.overloaded(e, self.total_weight) {
                if fallback.is_some() {
                    self.bound.skipped();
                }
                return Some(e);
            }
            fallback.get_or_insert(e);
        }
        let first = self.owners.get(start).map_or(0, |&i| i as usize);
        if fallback.is_some() {
            self.bound.skipped();
            if let Some(e) = self.bound.scan(endpoints, ctx, first, self.total_weight) {
                return Some(e);
            }
        }
        fallback
            .or_else(|| {
                scan_preferred(endpoints, ctx, first, |i| {
                    endpoints.get(i).is_some_and(|e| e.weight > 0)
                })
            })
            .or_else(|| owner(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::{EndpointGroup, EndpointState, Health};
    use crate::lb::mix64;
    use crate::lb::random::tests::endpoints;
    use prometheus_client::metrics::counter::Counter;
    use std::net::SocketAddr;

    fn index(eps: &[Arc<Endpoint>], e: &Arc<Endpoint>) -> usize {
        eps.iter().position(|x| Arc::ptr_eq(x, e)).unwrap()
    }

    fn owner_of(lb: &RingHash, eps: &[Arc<Endpoint>], key: u64) -> SocketAddr {
        let ctx = PickContext {
            hash: Some(mix64(key)),
            ..PickContext::default()
        };
        lb.pick(eps, &ctx).unwrap().address
    }

    #[test]
    fn ring_size_follows_the_bounds_and_weights() {
        let eps = endpoints(&[1, 1, 2]);
        let lb = RingHash::new(&eps, 1024, 8 << 20, Bound::none());
        // Total weight 4: 256 points per unit, split 256/256/512.
        assert_eq!(lb.len(), 1024);
        let heavy = lb.owners.iter().filter(|&&o| o == 2).count();
        assert_eq!(heavy, 512);
        // 10 endpoints: 128 each (1280 ≥ 1024); 11 still 128 each.
        assert_eq!(
            RingHash::new(&endpoints(&[1; 10]), 1024, 8 << 20, Bound::none()).len(),
            1280
        );
        assert_eq!(
            RingHash::new(&endpoints(&[1; 11]), 1024, 8 << 20, Bound::none()).len(),
            1408
        );
        // Capped by the maximum: 16 per unit (64 ≤ 100).
        assert_eq!(RingHash::new(&eps, 1024, 100, Bound::none()).len(), 64);
        // Weights beyond the maximum: proportional, at least one point each.
        assert_eq!(points_per_weight(1000, 1024, 100), 0.1);
        assert!(RingHash::new(&[], 1024, 100, Bound::none()).is_empty());
    }

    #[test]
    fn the_same_key_goes_to_the_same_endpoint_and_keys_follow_weights() {
        let eps = endpoints(&[1, 1, 2]);
        let lb = RingHash::new(&eps, 1024, 8 << 20, Bound::none());
        let mut counts = [0usize; 3];
        for key in 0..40_000u64 {
            let a = owner_of(&lb, &eps, key);
            assert_eq!(a, owner_of(&lb, &eps, key));
            counts[eps.iter().position(|e| e.address == a).unwrap()] += 1;
        }
        for (i, want) in [10_000.0, 10_000.0, 20_000.0].iter().enumerate() {
            let got = counts[i] as f64;
            assert!((got - want).abs() < want * 0.15, "{counts:?}");
        }
    }

    #[test]
    fn adding_or_removing_one_of_n_endpoints_moves_about_one_nth_of_the_keys() {
        let n = 10;
        let all = endpoints(&vec![1; n + 1]);
        let (before, after) = (&all[..n], &all[..]);
        let lb_before = RingHash::new(before, 1024, 8 << 20, Bound::none());
        let lb_after = RingHash::new(after, 1024, 8 << 20, Bound::none());
        let keys = 20_000u64;
        let moved = (0..keys)
            .filter(|&k| owner_of(&lb_before, before, k) != owner_of(&lb_after, after, k))
            .count();
        // Adding the 11th endpoint should move 1/11 of the keys (≈ 1818), all to it.
        let share = moved as f64 / keys as f64;
        assert!((0.06..0.13).contains(&share), "moved {share}");
        for k in 0..keys {
            let (b, a) = (
                owner_of(&lb_before, before, k),
                owner_of(&lb_after, after, k),
            );
            assert!(
                a == b || a == all[n].address,
                "key {k} moved between old endpoints"
            );
        }
    }

    #[test]
    fn unhealthy_and_tried_endpoints_go_to_the_next_point() {
        let eps = endpoints(&[1, 1, 1]);
        let lb = RingHash::new(&eps, 1024, 8 << 20, Bound::none());
        let key = (0..)
            .find(|&k| owner_of(&lb, &eps, k) == eps[0].address)
            .unwrap();
        eps[0].state.set_unhealthy(Health::FAILED_OUTLIER);
        let moved = owner_of(&lb, &eps, key);
        assert_ne!(moved, eps[0].address);
        // The same key keeps going to the same substitute.
        assert_eq!(owner_of(&lb, &eps, key), moved);
        let tried = [moved];
        let ctx = PickContext {
            hash: Some(mix64(key)),
            tried: &tried,
            ..PickContext::default()
        };
        let third = lb.pick(&eps, &ctx).unwrap().address;
        assert!(third != moved && third != eps[0].address);
        // Panic mode (set by the endpoint set): health ignored.
        let ctx = PickContext {
            hash: Some(mix64(key)),
            ignore_health: true,
            ..PickContext::default()
        };
        assert_eq!(lb.pick(&eps, &ctx).unwrap().address, eps[0].address);
        // Nothing preferred: still an endpoint.
        for e in &eps {
            e.state.set_unhealthy(Health::FAILED_OUTLIER);
        }
        assert!(lb.pick(&eps, &PickContext::default()).is_some());
    }

    #[test]
    fn bounded_load_skips_an_endpoint_above_its_share() {
        let group = Arc::new(EndpointGroup::default());
        let eps: Vec<Arc<Endpoint>> = (0..4)
            .map(|i| {
                Arc::new(Endpoint {
                    address: SocketAddr::from(([127, 0, 0, 1], 2000 + i)),
                    weight: 1,
                    state: Arc::new(EndpointState::in_group(&group)),
                })
            })
            .collect();
        let skips = Counter::default();
        let lb = RingHash::new(&eps, 1024, 8 << 20, Bound::new(Some(1.5), &group, &skips));
        let key = 7;
        let home = index(
            &eps,
            lb.pick(
                &eps,
                &PickContext {
                    hash: Some(key),
                    ..Default::default()
                },
            )
            .unwrap(),
        );
        // Hold requests on the key: the bound is ceil((in flight + 1) × 1.5 / 4), so the first
        // stays home and the rest spread, no endpoint above ceil(8 × 1.5 / 4) = 3.
        let mut held = Vec::new();
        for i in 0..8 {
            let ctx = PickContext {
                hash: Some(key),
                ..PickContext::default()
            };
            let e = lb.pick(&eps, &ctx).unwrap();
            if i == 0 {
                assert_eq!(index(&eps, e), home);
            }
            held.push(e.state.admit());
        }
        let loads: Vec<u32> = eps.iter().map(|e| e.state.active_requests()).collect();
        assert!(loads.iter().all(|&l| l <= 3), "{loads:?}");
        assert_eq!(group.active_requests(), 8);
        assert!(skips.get() > 0);
        // Without a bound, every request goes home.
        drop(held);
        let unbounded = RingHash::new(&eps, 1024, 8 << 20, Bound::none());
        let _held: Vec<_> = (0..8)
            .map(|_| {
                let e = unbounded
                    .pick(
                        &eps,
                        &PickContext {
                            hash: Some(key),
                            ..Default::default()
                        },
                    )
                    .unwrap();
                assert_eq!(index(&eps, e), home);
                e.state.admit()
            })
            .collect();
    }

    #[test]
    fn without_a_hash_picks_spread() {
        fastrand::seed(3);
        let eps = endpoints(&[1, 1, 1]);
        let lb = RingHash::new(&eps, 1024, 8 << 20, Bound::none());
        let mut seen = [0; 3];
        for _ in 0..3000 {
            seen[index(&eps, lb.pick(&eps, &PickContext::default()).unwrap())] += 1;
        }
        assert!(seen.iter().all(|&c| c > 800), "{seen:?}");
    }
}
