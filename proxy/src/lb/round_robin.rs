//! Weighted round robin. The order is computed once (nginx's smooth weighted round robin, so
//! heavy endpoints are interleaved rather than bunched) and walked with one cursor per worker:
//! a plain load and store on a cache line only that worker writes, no lock, no shared
//! read-modify-write and no allocation per pick.

use super::{LoadBalancer, PickContext};
use crate::endpoint::Endpoint;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Longest precomputed schedule; larger weight sums are scaled down proportionally.
const MAX_SCHEDULE: u64 = 4096;

/// Weighted round robin over a fixed endpoint list.
#[derive(Debug)]
pub struct RoundRobin {
    schedule: Vec<u32>,
    cursors: Box<[Cursor]>,
}

/// One worker's position in the schedule, on a cache line of its own.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Cursor(AtomicUsize);

impl RoundRobin {
    /// A balancer over endpoints with these weights (0 weights are never picked), with a cursor
    /// for each of `workers` workers (each starting at a different place).
    pub fn new(weights: &[u32], workers: usize) -> Self {
        let schedule = smooth_schedule(weights);
        let cursors = (0..workers.max(1))
            .map(|w| Cursor(AtomicUsize::new(w)))
            .collect();
        RoundRobin { schedule, cursors }
    }
}

impl LoadBalancer for RoundRobin {
    fn pick<'a>(
        &self,
        endpoints: &'a [Arc<Endpoint>],
        ctx: &PickContext<'_>,
    ) -> Option<&'a Arc<Endpoint>> {
        let n = self.schedule.len();
        let cursor = self.cursors.get(ctx.worker % self.cursors.len().max(1))?;
        let start = cursor.0.load(Ordering::Relaxed);
        let at = |step: usize| {
            self.schedule
                .get((start.wrapping_add(step)) % n.max(1))
                .and_then(|&i| endpoints.get(i as usize))
        };
        // Only this worker writes its cursor: load + store, not fetch_add.
        for step in 0..n {
            if let Some(e) = at(step)
                && ctx.preferred(e)
            {
                cursor
                    .0
                    .store(start.wrapping_add(step + 1), Ordering::Relaxed);
                return Some(e);
            }
        }
        cursor.0.store(start.wrapping_add(1), Ordering::Relaxed);
        at(0)
    }
}

/// One full cycle of smooth weighted round robin: each step adds every weight to its running
/// score, picks the highest score and subtracts the total from it.
fn smooth_schedule(weights: &[u32]) -> Vec<u32> {
    let mut w: Vec<u64> = weights.iter().map(|&w| u64::from(w)).collect();
    let g = w.iter().copied().filter(|&x| x > 0).fold(0, gcd);
    if g > 1 {
        w.iter_mut().for_each(|x| *x /= g);
    }
    let total: u64 = w.iter().sum();
    if total > MAX_SCHEDULE {
        // Scale down, keeping every positive weight at least 1.
        w.iter_mut()
            .filter(|x| **x > 0)
            .for_each(|x| *x = (*x * MAX_SCHEDULE / total).max(1));
    }
    let total: i64 = w.iter().map(|&x| x as i64).sum();
    let mut score = vec![0i64; w.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best: Option<(usize, i64)> = None;
        for (i, (&wi, s)) in w.iter().zip(score.iter_mut()).enumerate() {
            if wi == 0 {
                continue;
            }
            *s += wi as i64;
            if best.is_none_or(|(_, b)| *s > b) {
                best = Some((i, *s));
            }
        }
        if let Some((i, _)) = best {
            if let Some(s) = score.get_mut(i) {
                *s -= total;
            }
            schedule.push(i as u32);
        }
    }
    schedule
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::{EndpointState, Health};
    use std::net::SocketAddr;

    fn endpoints(n: usize) -> Vec<Arc<Endpoint>> {
        (0..n)
            .map(|i| {
                Arc::new(Endpoint {
                    address: SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)),
                    weight: 1,
                    state: Arc::new(EndpointState::default()),
                })
            })
            .collect()
    }

    fn picks_with(
        rr: &RoundRobin,
        eps: &[Arc<Endpoint>],
        ctx: PickContext<'_>,
        n: usize,
    ) -> Vec<usize> {
        (0..n)
            .map(|_| {
                let e = rr.pick(eps, &ctx).unwrap();
                eps.iter().position(|x| Arc::ptr_eq(x, e)).unwrap()
            })
            .collect()
    }

    fn picks(rr: &RoundRobin, n: usize) -> Vec<usize> {
        let eps = endpoints(
            rr.schedule
                .iter()
                .map(|&i| i as usize + 1)
                .max()
                .unwrap_or(0),
        );
        picks_with(rr, &eps, PickContext::default(), n)
    }

    #[test]
    fn equal_weights_alternate() {
        let rr = RoundRobin::new(&[1, 1, 1], 1);
        assert_eq!(picks(&rr, 6), vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn weights_are_interleaved_and_proportional() {
        let rr = RoundRobin::new(&[5, 1, 1], 1);
        // nginx's documented sequence for 5/1/1.
        assert_eq!(picks(&rr, 7), vec![0, 0, 1, 0, 2, 0, 0]);
        let rr = RoundRobin::new(&[2, 4], 1);
        let p = picks(&rr, 3);
        assert_eq!(p.iter().filter(|&&i| i == 1).count(), 2);
    }

    #[test]
    fn zero_weight_never_picked_and_empty_is_none() {
        let rr = RoundRobin::new(&[0, 3], 1);
        assert!(
            picks_with(&rr, &endpoints(2), PickContext::default(), 10)
                .iter()
                .all(|&i| i == 1)
        );
        assert!(
            RoundRobin::new(&[], 1)
                .pick(&[], &PickContext::default())
                .is_none()
        );
        assert!(
            RoundRobin::new(&[0], 1)
                .pick(&endpoints(1), &PickContext::default())
                .is_none()
        );
    }

    #[test]
    fn huge_weights_are_scaled() {
        let rr = RoundRobin::new(&[1_000_000, 3_000_000, 1], 1);
        assert!(rr.schedule.len() <= MAX_SCHEDULE as usize + 3);
        let p = picks_with(
            &rr,
            &endpoints(3),
            PickContext::default(),
            rr.schedule.len(),
        );
        let ones = p.iter().filter(|&&i| i == 1).count() as f64;
        let zeros = p.iter().filter(|&&i| i == 0).count() as f64;
        assert!((ones / zeros - 3.0).abs() < 0.05, "{ones} {zeros}");
        assert!(p.contains(&2), "tiny weights still get a turn");
    }

    #[test]
    fn already_tried_endpoints_are_avoided() {
        let eps = endpoints(3);
        let rr = RoundRobin::new(&[1, 1, 1], 1);
        let tried = [eps[0].address, eps[1].address];
        let ctx = PickContext {
            attempt: 3,
            tried: &tried,
            ..PickContext::default()
        };
        assert_eq!(picks_with(&rr, &eps, ctx, 4), vec![2, 2, 2, 2]);
        // Everything tried: fall back to plain rotation rather than fail.
        let all = [eps[0].address, eps[1].address, eps[2].address];
        let ctx = PickContext {
            tried: &all,
            ..PickContext::default()
        };
        assert_eq!(picks_with(&rr, &eps, ctx, 3).len(), 3);
    }

    #[test]
    fn unhealthy_endpoints_are_skipped_until_none_is_left() {
        let eps = endpoints(3);
        let rr = RoundRobin::new(&[1, 1, 1], 1);
        eps[1].state.set_unhealthy(Health::FAILED_OUTLIER);
        assert!(!picks_with(&rr, &eps, PickContext::default(), 6).contains(&1));
        eps[1].state.set_healthy(Health::FAILED_OUTLIER);
        assert!(picks_with(&rr, &eps, PickContext::default(), 3).contains(&1));
        for e in &eps {
            e.state.set_unhealthy(Health::FAILED_ACTIVE_HC);
        }
        assert_eq!(
            picks_with(&rr, &eps, PickContext::default(), 3).len(),
            3,
            "panic mode"
        );
    }

    #[test]
    fn each_worker_has_its_own_cursor() {
        let eps = endpoints(2);
        let rr = RoundRobin::new(&[1, 1], 2);
        let w0 = PickContext {
            worker: 0,
            ..PickContext::default()
        };
        let w1 = PickContext {
            worker: 1,
            ..PickContext::default()
        };
        assert_eq!(picks_with(&rr, &eps, w0, 2), vec![0, 1]);
        assert_eq!(
            picks_with(&rr, &eps, w1, 2),
            vec![1, 0],
            "offset start, own position"
        );
        assert_eq!(picks_with(&rr, &eps, w0, 1), vec![0]);
    }
}
