//! Least request by the power of two choices (Envoy's `LEAST_REQUEST`, Mitzenmacher): draw two
//! endpoints in proportion to their weights and take the one with fewer requests in flight
//! (over all workers, from the endpoint's shared state) relative to its weight. Two random
//! choices avoid both the herd behaviour of "always the least loaded" (every worker would pick
//! the same endpoint between updates) and a full scan; requests in flight are one relaxed load
//! per candidate.

use super::random::{Weighted, scan_preferred};
use super::{LoadBalancer, PickContext};
use crate::endpoint::Endpoint;
use std::sync::Arc;

/// Least request, power of two choices (or more: `least_request.choice_count`), weighted.
#[derive(Debug)]
pub struct LeastRequest {
    weights: Weighted,
    /// Candidates beyond the first two (Envoy's `choice_count` − 2).
    extra_choices: u32,
}

impl LeastRequest {
    /// A balancer over endpoints with these weights (0 weights are never picked), comparing
    /// two candidates.
    pub fn new(weights: &[u32]) -> Self {
        Self::with_choices(weights, 2)
    }

    /// A balancer comparing `choices` candidates (at least 2; Envoy's `choice_count`).
    pub fn with_choices(weights: &[u32], choices: u32) -> Self {
        LeastRequest {
            weights: Weighted::new(weights),
            extra_choices: choices.saturating_sub(2),
        }
    }
}

impl LoadBalancer for LeastRequest {
    fn pick<'a>(
        &self,
        endpoints: &'a [Arc<Endpoint>],
        ctx: &PickContext<'_>,
    ) -> Option<&'a Arc<Endpoint>> {
        let a = self.weights.draw()?;
        let b = self.weights.draw_other(a);
        let candidate = |i: usize| endpoints.get(i).filter(|e| ctx.preferred(e));
        let best = match (candidate(a), candidate(b)) {
            (Some(x), Some(y)) => Some(if lighter(x, y) { x } else { y }),
            (Some(x), None) | (None, Some(x)) => Some(x),
            (None, None) => None,
        };
        // More choices: each further draw replaces the best when lighter.
        let best = (0..self.extra_choices).fold(best, |best, _| {
            match (best, self.weights.draw().and_then(candidate)) {
                (Some(x), Some(y)) if !lighter(x, y) => Some(y),
                (None, y) => y,
                (x, _) => x,
            }
        });
        best.or_else(|| {
            scan_preferred(endpoints, ctx, a, |i| self.weights.weight(i) > 0)
                .or_else(|| endpoints.get(a))
        })
    }
}

/// True when `x` has no more requests in flight per unit of weight than `y`:
/// (active_x + 1) / weight_x ≤ (active_y + 1) / weight_y.
fn lighter(x: &Endpoint, y: &Endpoint) -> bool {
    let load = |e: &Endpoint, other: &Endpoint| {
        u64::from(e.state.active_requests()).saturating_add(1) * u64::from(other.weight.max(1))
    };
    load(x, y) <= load(y, x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::Health;
    use crate::lb::random::tests::endpoints;

    fn pick_index(lb: &LeastRequest, eps: &[Arc<Endpoint>], ctx: &PickContext<'_>) -> usize {
        let e = lb.pick(eps, ctx).unwrap();
        eps.iter().position(|x| Arc::ptr_eq(x, e)).unwrap()
    }

    #[test]
    fn the_less_loaded_of_two_wins() {
        fastrand::seed(3);
        let eps = endpoints(&[1, 1]);
        let lb = LeastRequest::new(&[1, 1]);
        let _busy: Vec<_> = (0..5).map(|_| eps[0].state.admit()).collect();
        let picks: Vec<usize> = (0..1000)
            .map(|_| pick_index(&lb, &eps, &PickContext::default()))
            .collect();
        // The two candidates are distinct, so the busy endpoint never wins.
        assert!(picks.iter().all(|&i| i == 1), "{picks:?}");
    }

    #[test]
    fn load_spreads_as_requests_stay_in_flight() {
        fastrand::seed(5);
        let w = [1, 1, 1, 1];
        let eps = endpoints(&w);
        let lb = LeastRequest::new(&w);
        let mut held = Vec::new();
        for _ in 0..400 {
            let i = pick_index(&lb, &eps, &PickContext::default());
            held.push(eps[i].state.admit());
        }
        let loads: Vec<u32> = eps.iter().map(|e| e.state.active_requests()).collect();
        let (min, max) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
        // Round robin would give 100 each; random would spread about ±20; P2C keeps it tight.
        assert!(max - min <= 6, "{loads:?}");
    }

    #[test]
    fn weights_count_against_load() {
        fastrand::seed(11);
        let w = [3, 1];
        let eps = endpoints(&w);
        let lb = LeastRequest::new(&w);
        let mut held = Vec::new();
        for _ in 0..400 {
            let i = pick_index(&lb, &eps, &PickContext::default());
            held.push(eps[i].state.admit());
        }
        let heavy = eps[0].state.active_requests();
        assert!(
            (270..=330).contains(&heavy),
            "weight 3 of 4 should hold ~300: {heavy}"
        );
    }

    #[test]
    fn more_choices_find_the_least_loaded_more_often() {
        fastrand::seed(17);
        let w = [1; 8];
        let eps = endpoints(&w);
        // Endpoint i holds i requests: with 2 choices the idle one wins only when drawn; with
        // 8 (drawn with replacement) it wins much more often.
        let _held: Vec<_> = eps
            .iter()
            .enumerate()
            .flat_map(|(i, e)| (0..i).map(|_| e.state.admit()).collect::<Vec<_>>())
            .collect();
        let idle_share = |lb: &LeastRequest| {
            (0..2000)
                .filter(|_| pick_index(lb, &eps, &PickContext::default()) == 0)
                .count()
        };
        let two = idle_share(&LeastRequest::new(&w));
        let eight = idle_share(&LeastRequest::with_choices(&w, 8));
        // P(idle among 2 distinct of 8) = 1/4; among 8 draws ≈ 1 − (7/8)^8 ≈ 0.66.
        assert!((400..600).contains(&two), "{two}");
        assert!(eight > 1150, "{eight}");
    }

    #[test]
    fn unhealthy_endpoints_are_skipped_with_a_fallback() {
        fastrand::seed(13);
        let eps = endpoints(&[1, 1, 1]);
        let lb = LeastRequest::new(&[1, 1, 1]);
        eps[0].state.set_unhealthy(Health::FAILED_OUTLIER);
        eps[1].state.set_unhealthy(Health::FAILED_OUTLIER);
        for _ in 0..200 {
            assert_eq!(pick_index(&lb, &eps, &PickContext::default()), 2);
        }
        eps[2].state.set_unhealthy(Health::FAILED_OUTLIER);
        let _ = pick_index(&lb, &eps, &PickContext::default());
    }
}
