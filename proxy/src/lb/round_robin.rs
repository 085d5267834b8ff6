//! Weighted round robin. The order is computed once (nginx's smooth weighted round robin, so
//! heavy endpoints are interleaved rather than bunched) and walked with an atomic cursor: no lock
//! and no allocation per pick.

use super::LoadBalancer;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Longest precomputed schedule; larger weight sums are scaled down proportionally.
const MAX_SCHEDULE: u64 = 4096;

/// Weighted round robin over a fixed endpoint list.
#[derive(Debug)]
pub struct RoundRobin {
    schedule: Vec<u32>,
    cursor: AtomicUsize,
}

impl RoundRobin {
    /// A balancer over endpoints with these weights (0 weights are never picked).
    pub fn new(weights: &[u32]) -> Self {
        RoundRobin {
            schedule: smooth_schedule(weights),
            cursor: AtomicUsize::new(0),
        }
    }
}

impl LoadBalancer for RoundRobin {
    fn pick(&self) -> Option<usize> {
        if self.schedule.is_empty() {
            return None;
        }
        let n = self.cursor.fetch_add(1, Ordering::Relaxed);
        self.schedule
            .get(n % self.schedule.len())
            .map(|&i| i as usize)
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

    fn picks(rr: &RoundRobin, n: usize) -> Vec<usize> {
        (0..n).map(|_| rr.pick().unwrap()).collect()
    }

    #[test]
    fn equal_weights_alternate() {
        let rr = RoundRobin::new(&[1, 1, 1]);
        assert_eq!(picks(&rr, 6), vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn weights_are_interleaved_and_proportional() {
        let rr = RoundRobin::new(&[5, 1, 1]);
        // nginx's documented sequence for 5/1/1.
        assert_eq!(picks(&rr, 7), vec![0, 0, 1, 0, 2, 0, 0]);
        let rr = RoundRobin::new(&[2, 4]);
        let p = picks(&rr, 3);
        assert_eq!(p.iter().filter(|&&i| i == 1).count(), 2);
    }

    #[test]
    fn zero_weight_never_picked_and_empty_is_none() {
        let rr = RoundRobin::new(&[0, 3]);
        assert!(picks(&rr, 10).iter().all(|&i| i == 1));
        assert_eq!(RoundRobin::new(&[]).pick(), None);
        assert_eq!(RoundRobin::new(&[0]).pick(), None);
    }

    #[test]
    fn huge_weights_are_scaled() {
        let rr = RoundRobin::new(&[1_000_000, 3_000_000, 1]);
        assert!(rr.schedule.len() <= MAX_SCHEDULE as usize + 3);
        let p = picks(&rr, rr.schedule.len());
        let ones = p.iter().filter(|&&i| i == 1).count() as f64;
        let zeros = p.iter().filter(|&&i| i == 0).count() as f64;
        assert!((ones / zeros - 3.0).abs() < 0.05, "{ones} {zeros}");
        assert!(p.contains(&2), "tiny weights still get a turn");
    }
}
