//! Maglev (Google's consistent hashing for load balancers; Envoy `MAGLEV`). Built once per
//! endpoint set: a lookup table of prime size M (default 65537) where every endpoint claims
//! entries along its own permutation (offset and skip from two hashes of its address), in turns
//! weighted as Envoy does (an endpoint of half the largest weight takes a turn every other
//! round), so each endpoint owns about `M × weight / total` entries. A pick is one table read
//! (`hash mod M`). An unhealthy, tried or (with bounded load) overloaded owner is replaced by
//! re-hashing a few times, then by scanning; keys of healthy endpoints never move. Without a
//! hash the entry is random.

use super::hash::{Bound, address_hash, mix64};
use super::random::scan_preferred;
use super::{LoadBalancer, PickContext};
use crate::endpoint::Endpoint;
use std::sync::Arc;

/// Re-hashes before scanning for a preferred endpoint.
const REHASHES: u64 = 8;

/// A Maglev lookup table over a fixed endpoint list.
#[derive(Debug)]
pub struct Maglev {
    table: Vec<u32>,
    total_weight: u64,
    bound: Bound,
}

impl Maglev {
    /// A table of `size` entries (prime, validated by the config) over `endpoints`.
    pub fn new(endpoints: &[Arc<Endpoint>], size: u64, bound: Bound) -> Self {
        let total_weight = endpoints.iter().map(|e| u64::from(e.weight)).sum();
        Maglev {
            table: build_table(endpoints, size),
            total_weight,
            bound,
        }
    }

    /// Entries per endpoint index (for tests and the admin view).
    pub fn shares(&self, endpoints: usize) -> Vec<usize> {
        let mut c = vec![0; endpoints];
        for &i in &self.table {
            if let Some(x) = c.get_mut(i as usize) {
                *x += 1;
            }
        }
        c
    }
}

/// One endpoint while the table fills: where its permutation is, and its weighted turns.
struct Turns {
    index: u32,
    offset: u64,
    skip: u64,
    next: u64,
    weight: u64,
    target: u64,
}

/// Fills the table (Maglev's population, with Envoy's weighted turns).
fn build_table(endpoints: &[Arc<Endpoint>], size: u64) -> Vec<u32> {
    let mut entries: Vec<Turns> = endpoints
        .iter()
        .enumerate()
        .filter(|(_, e)| e.weight > 0)
        .map(|(i, e)| Turns {
            index: i as u32,
            offset: address_hash(&e.address, 0) % size,
            skip: address_hash(&e.address, 1) % (size - 1).max(1) + 1,
            next: 0,
            weight: u64::from(e.weight),
            target: 0,
        })
        .collect();
    let Some(max_weight) = entries.iter().map(|t| t.weight).max() else {
        return Vec::new();
    };
    let mut table: Vec<Option<u32>> = vec![None; size as usize];
    let mut filled = 0u64;
    let mut round = 1u64;
    while filled < size {
        for t in &mut entries {
            if filled == size {
                break;
            }
            // An endpoint of weight w takes a turn whenever round × w has caught up with its
            // target (advanced by the largest weight per turn).
            if round * t.weight < t.target {
                continue;
            }
            t.target += max_weight;
            loop {
                let c = (t.offset + t.skip * t.next) % size;
                t.next += 1;
                if let Some(slot) = table.get_mut(c as usize)
                    && slot.is_none()
                {
                    *slot = Some(t.index);
                    filled += 1;
                    break;
                }
            }
        }
        round += 1;
    }
    table.into_iter().map(|s| s.unwrap_or(0)).collect()
}

impl LoadBalancer for Maglev {
    fn pick<'a>(
        &self,
        endpoints: &'a [Arc<Endpoint>],
        ctx: &PickContext<'_>,
    ) -> Option<&'a Arc<Endpoint>> {
        let size = self.table.len() as u64;
        if size == 0 {
            return None;
        }
        let mut hash = ctx.hash.unwrap_or_else(|| fastrand::u64(..));
        let owner = |h: u64| {
            self.table
                .get((h % size) as usize)
                .and_then(|&i| endpoints.get(i as usize))
        };
        let first = owner(hash);
        let mut fallback = None;
        for k in 0..=REHASHES {
            if let Some(e) = owner(hash).filter(|e| ctx.preferred(e)) {
                if !self.bound.overloaded(e, self.total_weight) {
                    if fallback.is_some() {
                        self.bound.skipped();
                    }
                    return Some(e);
                }
                fallback.get_or_insert(e);
            }
            hash = mix64(hash ^ (k + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        }
        let start = self
            .table
            .get((ctx.hash.unwrap_or(0) % size) as usize)
            .map_or(0, |&i| i as usize);
        if fallback.is_some() {
            self.bound.skipped();
            if let Some(e) = self.bound.scan(endpoints, ctx, start, self.total_weight) {
                return Some(e);
            }
        }
        fallback
            .or_else(|| {
                scan_preferred(endpoints, ctx, start, |i| {
                    endpoints.get(i).is_some_and(|e| e.weight > 0)
                })
            })
            .or(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::Health;
    use crate::lb::random::tests::endpoints;

    fn owner(lb: &Maglev, eps: &[Arc<Endpoint>], key: u64) -> std::net::SocketAddr {
        let ctx = PickContext {
            hash: Some(mix64(key)),
            ..PickContext::default()
        };
        lb.pick(eps, &ctx).unwrap().address
    }

    #[test]
    fn each_endpoint_owns_a_share_of_the_table_proportional_to_its_weight() {
        let w = [1, 2, 3, 4];
        let eps = endpoints(&w);
        let lb = Maglev::new(&eps, 65537, Bound::none());
        let shares = lb.shares(eps.len());
        assert_eq!(shares.iter().sum::<usize>(), 65537, "every entry is owned");
        for (i, &wi) in w.iter().enumerate() {
            let want = 65537.0 * f64::from(wi) / 10.0;
            let got = shares[i] as f64;
            assert!((got - want).abs() < want * 0.02, "{shares:?}");
        }
        // Equal weights: equal within Maglev's 1% imbalance bound.
        let eps = endpoints(&[1; 7]);
        let shares = Maglev::new(&eps, 65537, Bound::none()).shares(7);
        let (min, max) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
        assert!(max - min <= 2, "{shares:?}");
    }

    #[test]
    fn removing_an_endpoint_disrupts_few_other_keys() {
        let all = endpoints(&[1; 10]);
        let before = Maglev::new(&all, 65537, Bound::none());
        let rest = &all[..9];
        let after = Maglev::new(rest, 65537, Bound::none());
        let keys = 20_000u64;
        let (mut moved_elsewhere, mut orphaned) = (0, 0);
        for k in 0..keys {
            let (b, a) = (owner(&before, &all, k), owner(&after, rest, k));
            if b == all[9].address {
                orphaned += 1;
            } else if a != b {
                moved_elsewhere += 1;
            }
        }
        // About 1/10 of the keys lost their endpoint; of the others, Maglev moves only a few
        // percent (the paper's minimal disruption; ring hash would move none).
        assert!((1500..2500).contains(&orphaned), "{orphaned}");
        assert!(
            (moved_elsewhere as f64) < keys as f64 * 0.05,
            "{moved_elsewhere} keys of surviving endpoints moved"
        );
    }

    #[test]
    fn bounded_load_holds_even_at_a_factor_of_one() {
        use crate::endpoint::{EndpointGroup, EndpointState};
        use prometheus_client::metrics::counter::Counter;
        let group = Arc::new(EndpointGroup::default());
        let eps: Vec<Arc<Endpoint>> = (0..4)
            .map(|i| {
                Arc::new(Endpoint {
                    address: std::net::SocketAddr::from(([127, 0, 0, 1], 5000 + i)),
                    weight: 1,
                    state: Arc::new(EndpointState::in_group(&group)),
                })
            })
            .collect();
        let skips = Counter::default();
        // 100%: nobody above ceil((in flight + 1) / 4).
        let lb = Maglev::new(&eps, 251, Bound::new(Some(1.0), &group, &skips));
        let ctx = PickContext {
            hash: Some(42),
            ..PickContext::default()
        };
        let held: Vec<_> = (0..8)
            .map(|_| lb.pick(&eps, &ctx).unwrap().state.admit())
            .collect();
        let loads: Vec<u32> = eps.iter().map(|e| e.state.active_requests()).collect();
        assert_eq!(loads, vec![2, 2, 2, 2]);
        assert!(skips.get() >= 4, "{}", skips.get());
        drop(held);
    }

    #[test]
    fn unhealthy_owners_are_replaced_stably_and_other_keys_stay() {
        let eps = endpoints(&[1, 1, 1, 1]);
        let lb = Maglev::new(&eps, 251, Bound::none());
        let keys: Vec<u64> = (0..2000).collect();
        let home: Vec<_> = keys.iter().map(|&k| owner(&lb, &eps, k)).collect();
        eps[1].state.set_unhealthy(Health::FAILED_ACTIVE_HC);
        for (&k, &h) in keys.iter().zip(&home) {
            let now = owner(&lb, &eps, k);
            if h == eps[1].address {
                assert_ne!(now, h);
                assert_eq!(owner(&lb, &eps, k), now, "stable substitute");
            } else {
                assert_eq!(now, h, "key {k} of a healthy endpoint moved");
            }
        }
        for e in &eps {
            e.state.set_unhealthy(Health::FAILED_ACTIVE_HC);
        }
        assert!(lb.pick(&eps, &PickContext::default()).is_some(), "fallback");
        assert!(
            Maglev::new(&[], 251, Bound::none())
                .pick(&[], &PickContext::default())
                .is_none()
        );
    }
}
