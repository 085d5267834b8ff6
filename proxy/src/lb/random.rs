//! Weighted random. Cumulative weights are computed once; a pick draws from the worker's own
//! random generator (`fastrand`'s thread-local one: no shared state) and binary-searches them.
//! An unhealthy or already tried endpoint is redrawn a few times, then the list is scanned from
//! the drawn position, so a mostly unhealthy set still finds its healthy endpoints.

use super::{LoadBalancer, PickContext};
use crate::endpoint::Endpoint;
use std::sync::Arc;

/// Redraws before scanning for a preferred endpoint.
const REDRAWS: usize = 3;

/// Weighted random over a fixed endpoint list.
#[derive(Debug)]
pub struct Random {
    weights: Weighted,
}

/// Cumulative weights: `ends[i]` is the sum of the weights of endpoints `0..=i`.
#[derive(Debug)]
pub(super) struct Weighted {
    ends: Vec<u64>,
}

impl Weighted {
    pub(super) fn new(weights: &[u32]) -> Self {
        let mut total = 0u64;
        let ends = weights
            .iter()
            .map(|&w| {
                total += u64::from(w);
                total
            })
            .collect();
        Weighted { ends }
    }

    /// An endpoint index drawn in proportion to the weights (`None` when all are 0).
    pub(super) fn draw(&self) -> Option<usize> {
        let total = *self.ends.last()?;
        if total == 0 {
            return None;
        }
        let r = fastrand::u64(..total);
        // The first endpoint whose range ends after `r`.
        Some(self.ends.partition_point(|&end| end <= r))
    }

    /// A second candidate, different from `a` whenever another endpoint has weight: one redraw,
    /// then the next weighted endpoint after `a`. (With replacement, as Envoy draws, two
    /// endpoints would compare an endpoint with itself a quarter of the time and send that share
    /// to a busy one.)
    pub(super) fn draw_other(&self, a: usize) -> usize {
        match self.draw() {
            Some(b) if b != a => b,
            _ => {
                let n = self.len();
                (1..n)
                    .map(|k| (a + k) % n)
                    .find(|&i| self.weight(i) > 0)
                    .unwrap_or(a)
            }
        }
    }

    /// How many endpoints.
    pub(super) fn len(&self) -> usize {
        self.ends.len()
    }

    /// The weight of endpoint `i`.
    pub(super) fn weight(&self, i: usize) -> u64 {
        let end = self.ends.get(i).copied().unwrap_or(0);
        let start = i
            .checked_sub(1)
            .and_then(|p| self.ends.get(p))
            .copied()
            .unwrap_or(0);
        end - start
    }
}

impl Random {
    /// A balancer over endpoints with these weights (0 weights are never picked).
    pub fn new(weights: &[u32]) -> Self {
        Random {
            weights: Weighted::new(weights),
        }
    }
}

impl LoadBalancer for Random {
    fn pick<'a>(
        &self,
        endpoints: &'a [Arc<Endpoint>],
        ctx: &PickContext<'_>,
    ) -> Option<&'a Arc<Endpoint>> {
        let first = self.weights.draw()?;
        let mut i = first;
        for _ in 0..REDRAWS {
            match endpoints.get(i) {
                Some(e) if ctx.preferred(e) => return Some(e),
                _ => i = self.weights.draw()?,
            }
        }
        scan_preferred(endpoints, ctx, first, |i| self.weights.weight(i) > 0)
            .or_else(|| endpoints.get(first))
    }
}

/// The first preferred endpoint with a positive weight from `start` on (wrapping).
pub(super) fn scan_preferred<'a>(
    endpoints: &'a [Arc<Endpoint>],
    ctx: &PickContext<'_>,
    start: usize,
    weighted: impl Fn(usize) -> bool,
) -> Option<&'a Arc<Endpoint>> {
    let n = endpoints.len();
    (0..n)
        .map(|k| (start + k) % n)
        .filter(|&i| weighted(i))
        .find_map(|i| endpoints.get(i).filter(|e| ctx.preferred(e)))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::endpoint::{EndpointState, Health};
    use std::net::SocketAddr;

    pub(crate) fn endpoints(weights: &[u32]) -> Vec<Arc<Endpoint>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| {
                Arc::new(Endpoint {
                    address: SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)),
                    weight,
                    state: Arc::new(EndpointState::default()),
                })
            })
            .collect()
    }

    fn counts(
        lb: &dyn LoadBalancer,
        eps: &[Arc<Endpoint>],
        ctx: &PickContext<'_>,
        n: usize,
    ) -> Vec<usize> {
        let mut c = vec![0; eps.len()];
        for _ in 0..n {
            let e = lb.pick(eps, ctx).unwrap();
            c[eps.iter().position(|x| Arc::ptr_eq(x, e)).unwrap()] += 1;
        }
        c
    }

    #[test]
    fn picks_follow_the_weights() {
        fastrand::seed(7);
        let w = [1, 2, 0, 5];
        let eps = endpoints(&w);
        let lb = Random::new(&w);
        let c = counts(&lb, &eps, &PickContext::default(), 80_000);
        assert_eq!(c[2], 0, "weight 0 is never picked");
        for (i, &wi) in w.iter().enumerate() {
            let want = 80_000.0 * f64::from(wi) / 8.0;
            let got = c[i] as f64;
            assert!(
                (got - want).abs() <= want * 0.05 + 1.0,
                "endpoint {i}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn unhealthy_and_tried_endpoints_are_avoided_and_panic_mode_falls_back() {
        fastrand::seed(9);
        let w = [1, 1, 1, 1];
        let eps = endpoints(&w);
        let lb = Random::new(&w);
        eps[0].state.set_unhealthy(Health::FAILED_OUTLIER);
        eps[1].state.set_unhealthy(Health::FAILED_ACTIVE_HC);
        let tried = [eps[2].address];
        let ctx = PickContext {
            tried: &tried,
            ..PickContext::default()
        };
        assert_eq!(counts(&lb, &eps, &ctx, 1000), vec![0, 0, 0, 1000]);
        eps[3].state.set_unhealthy(Health::FAILED_OUTLIER);
        // Nothing preferred: still an endpoint (Envoy's panic mode).
        assert_eq!(counts(&lb, &eps, &ctx, 100).iter().sum::<usize>(), 100);
        assert!(
            Random::new(&[0, 0])
                .pick(&endpoints(&[0, 0]), &PickContext::default())
                .is_none()
        );
    }
}
