//! Peak-EWMA power of two choices (Linkerd's and Finagle's balancer; the default policy): draw
//! two distinct endpoints by weight and take the cheaper, where
//! `cost = latency estimate × (requests in flight + 1) / weight`. The latency estimate is the
//! endpoint's peak EWMA of response-head latency (`EndpointState`: a sample above the estimate
//! replaces it at once, the estimate decays with the cluster's `peak_ewma.decay`); an endpoint
//! without a sample costs `peak_ewma.default_rtt`. A slow endpoint is avoided at once and
//! tried again as its estimate decays; a failed attempt counts as a slow response. A pick reads
//! the coarse clock once and two packed words; nothing is written.

use super::random::{Weighted, scan_preferred};
use super::{LoadBalancer, PickContext};
use crate::endpoint::Endpoint;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Peak-EWMA P2C, weighted.
#[derive(Debug)]
pub struct PeakEwma {
    weights: Weighted,
    default_rtt_ns: f64,
}

impl PeakEwma {
    /// A balancer over endpoints with these weights (0 weights are never picked); endpoints
    /// without a latency sample are assumed to answer in `default_rtt`.
    pub fn new(weights: &[u32], default_rtt: Duration) -> Self {
        PeakEwma {
            weights: Weighted::new(weights),
            default_rtt_ns: default_rtt.as_nanos() as f64,
        }
    }

    /// The cost of sending one more request to `e` at `now`.
    fn cost(&self, e: &Endpoint, now: Instant) -> f64 {
        let latency = e.state.latency_estimate(now).unwrap_or(self.default_rtt_ns);
        latency * (f64::from(e.state.active_requests()) + 1.0) / f64::from(e.weight.max(1))
    }
}

impl LoadBalancer for PeakEwma {
    fn pick<'a>(
        &self,
        endpoints: &'a [Arc<Endpoint>],
        ctx: &PickContext<'_>,
    ) -> Option<&'a Arc<Endpoint>> {
        let a = self.weights.draw()?;
        let b = self.weights.draw_other(a);
        let candidate = |i: usize| endpoints.get(i).filter(|e| ctx.preferred(e));
        match (candidate(a), candidate(b)) {
            (Some(x), Some(y)) => {
                let now = crate::clock::coarse_now();
                Some(if self.cost(x, now) <= self.cost(y, now) {
                    x
                } else {
                    y
                })
            }
            (Some(x), None) | (None, Some(x)) => Some(x),
            (None, None) => scan_preferred(endpoints, ctx, a, |i| self.weights.weight(i) > 0)
                .or_else(|| endpoints.get(a)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::{EndpointGroup, EndpointState, Health};
    use std::net::SocketAddr;

    fn endpoints(weights: &[u32]) -> (Arc<EndpointGroup>, Vec<Arc<Endpoint>>) {
        let group = Arc::new(EndpointGroup::default());
        group.set_ewma_decay(Some(Duration::from_secs(10)));
        let eps = weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| {
                Arc::new(Endpoint {
                    address: SocketAddr::from(([127, 0, 0, 1], 3000 + i as u16)),
                    weight,
                    state: Arc::new(EndpointState::in_group(&group)),
                })
            })
            .collect();
        (group, eps)
    }

    fn counts(lb: &PeakEwma, eps: &[Arc<Endpoint>], n: usize) -> Vec<usize> {
        let mut c = vec![0; eps.len()];
        for _ in 0..n {
            let e = lb.pick(eps, &PickContext::default()).unwrap();
            c[eps.iter().position(|x| Arc::ptr_eq(x, e)).unwrap()] += 1;
        }
        c
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_endpoint_loses_its_traffic_and_wins_it_back_as_the_estimate_decays() {
        fastrand::seed(1);
        let (_g, eps) = endpoints(&[1, 1, 1]);
        let lb = PeakEwma::new(&[1, 1, 1], Duration::from_millis(30));
        // Unsampled: equal costs, traffic spreads.
        assert!(counts(&lb, &eps, 3000).iter().all(|&c| c > 600));
        eps[0].state.observe_latency(Duration::from_millis(200));
        eps[1].state.observe_latency(Duration::from_millis(2));
        eps[2].state.observe_latency(Duration::from_millis(2));
        let c = counts(&lb, &eps, 3000);
        assert_eq!(c[0], 0, "the slow endpoint loses every comparison: {c:?}");
        // 200ms × e^(−t/10s) falls below 2ms after 10s × ln 100 ≈ 46s (the others, not
        // sampled meanwhile, decay too, at the same rate, so compare with fresh samples).
        tokio::time::advance(Duration::from_secs(60)).await;
        eps[1].state.observe_latency(Duration::from_millis(2));
        eps[2].state.observe_latency(Duration::from_millis(2));
        let c = counts(&lb, &eps, 3000);
        assert!(c[0] > 0, "decayed: tried again: {c:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn requests_in_flight_weights_and_failures_count() {
        fastrand::seed(2);
        let (_g, eps) = endpoints(&[1, 1]);
        let lb = PeakEwma::new(&[1, 1], Duration::from_millis(30));
        for e in &eps {
            e.state.observe_latency(Duration::from_millis(10));
        }
        // Same latency, 3 in flight on endpoint 0: endpoint 1 wins every time.
        let held: Vec<_> = (0..3).map(|_| eps[0].state.admit()).collect();
        assert_eq!(counts(&lb, &eps, 500), vec![0, 500]);
        drop(held);
        // A failure counts as a 1s response.
        eps[1].state.observe_failure();
        assert_eq!(counts(&lb, &eps, 500), vec![500, 0]);
        // Weight divides the cost: 4× the weight outweighs 3× the latency.
        let (_g, eps) = endpoints(&[4, 1]);
        let lb = PeakEwma::new(&[4, 1], Duration::from_millis(30));
        eps[0].state.observe_latency(Duration::from_millis(30));
        eps[1].state.observe_latency(Duration::from_millis(10));
        assert_eq!(counts(&lb, &eps, 500), vec![500, 0]);
    }

    #[test]
    fn unsampled_endpoints_cost_the_default_rtt() {
        fastrand::seed(4);
        let (_g, eps) = endpoints(&[1, 1]);
        let lb = PeakEwma::new(&[1, 1], Duration::from_millis(30));
        eps[0].state.observe_latency(Duration::from_millis(50));
        assert_eq!(
            counts(&lb, &eps, 200),
            vec![0, 200],
            "30ms default beats 50ms"
        );
        let lb = PeakEwma::new(&[1, 1], Duration::from_millis(80));
        assert_eq!(
            counts(&lb, &eps, 200),
            vec![200, 0],
            "80ms default loses to 50ms"
        );
    }

    #[test]
    fn unhealthy_and_tried_endpoints_are_skipped() {
        fastrand::seed(5);
        let (_g, eps) = endpoints(&[1, 1, 1]);
        let lb = PeakEwma::new(&[1, 1, 1], Duration::from_millis(30));
        eps[2].state.observe_latency(Duration::from_secs(5));
        eps[0].state.set_unhealthy(Health::FAILED_OUTLIER);
        let tried = [eps[1].address];
        let ctx = PickContext {
            tried: &tried,
            ..PickContext::default()
        };
        for _ in 0..100 {
            assert!(Arc::ptr_eq(lb.pick(&eps, &ctx).unwrap(), &eps[2]));
        }
        eps[2].state.set_unhealthy(Health::FAILED_OUTLIER);
        assert!(lb.pick(&eps, &ctx).is_some(), "fallback");
    }
}
