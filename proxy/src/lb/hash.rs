//! What the hash-based balancers (ring hash, Maglev) share: a small stable hash (FNV-1a with
//! the splitmix64 finalizer: the same on every proxy and every run, so proxies agree on where a
//! key goes) and bounded load (Envoy's `hash_balance_factor`).

use crate::endpoint::{Endpoint, EndpointGroup};
use prometheus_client::metrics::counter::Counter;
use std::net::SocketAddr;
use std::sync::Arc;

/// splitmix64's finalizer: spreads every input bit over the whole word.
pub fn mix64(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A stable 64-bit hash of `bytes` (FNV-1a, then [`mix64`]).
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h)
}

/// A stable hash of an endpoint's identity (its address), seeded so that one address yields
/// independent hashes (ring points, Maglev offset and skip).
pub(super) fn address_hash(a: &SocketAddr, seed: u64) -> u64 {
    let mut buf = [0u8; 26];
    let ip: &[u8] = match a.ip() {
        std::net::IpAddr::V4(v4) => &v4.octets(),
        std::net::IpAddr::V6(v6) => &v6.octets(),
    };
    let n = ip.len();
    if let Some(dst) = buf.get_mut(..n) {
        dst.copy_from_slice(ip);
    }
    if let Some(dst) = buf.get_mut(n..n + 2) {
        dst.copy_from_slice(&a.port().to_be_bytes());
    }
    if let Some(dst) = buf.get_mut(n + 2..n + 10) {
        dst.copy_from_slice(&seed.to_le_bytes());
    }
    hash_bytes(buf.get(..n + 10).unwrap_or(&buf))
}

/// Bounded load for consistent hashing (Envoy's `hash_balance_factor`, "consistent hashing with
/// bounded loads", Mirrokni et al.): an endpoint is overloaded when one more request would put
/// it above `factor × (requests in flight in the cluster + 1) × its weight share`.
#[derive(Debug)]
pub struct Bound {
    factor: Option<f64>,
    group: Arc<EndpointGroup>,
    skips: Counter,
}

impl Bound {
    /// A bound with `factor` (≥ 1; `None`: unbounded) over the requests in flight of `group`;
    /// each skipped endpoint is counted in `skips`.
    pub fn new(factor: Option<f64>, group: &Arc<EndpointGroup>, skips: &Counter) -> Self {
        Bound {
            factor,
            group: Arc::clone(group),
            skips: skips.clone(),
        }
    }

    /// No bound.
    pub fn none() -> Self {
        Bound::new(None, &Arc::default(), &Counter::default())
    }

    /// True when `e` (of a set whose weights sum to `total_weight`) has more than its share in
    /// flight.
    pub(super) fn overloaded(&self, e: &Endpoint, total_weight: u64) -> bool {
        let Some(factor) = self.factor else {
            return false;
        };
        let cluster = f64::from(self.group.active_requests()) + 1.0;
        let share = f64::from(e.weight) / (total_weight.max(1) as f64);
        let allowed = (cluster * factor * share).ceil();
        f64::from(e.state.active_requests()) + 1.0 > allowed
    }

    /// Counts a pick that passed over an overloaded endpoint.
    pub(super) fn skipped(&self) {
        self.skips.inc();
    }

    /// The last resort when the balancer's own search found only overloaded endpoints: the
    /// first preferred, weighted endpoint that is not, from `start` on (O(n); with a factor
    /// ≥ 1 one exists whenever every endpoint is preferred).
    pub(super) fn scan<'a>(
        &self,
        endpoints: &'a [Arc<Endpoint>],
        ctx: &super::PickContext<'_>,
        start: usize,
        total_weight: u64,
    ) -> Option<&'a Arc<Endpoint>> {
        let n = endpoints.len();
        (0..n)
            .filter_map(|k| endpoints.get((start + k) % n))
            .find(|e| e.weight > 0 && ctx.preferred(e) && !self.overloaded(e, total_weight))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_stable_and_spread() {
        // Fixed values: proxies (and runs) must agree.
        assert_eq!(hash_bytes(b""), mix64(0xcbf2_9ce4_8422_2325));
        assert_ne!(hash_bytes(b"a"), hash_bytes(b"b"));
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        assert_eq!(address_hash(&a, 1), address_hash(&a, 1));
        assert_ne!(address_hash(&a, 1), address_hash(&a, 2));
        // Top bits of consecutive inputs are spread evenly.
        let mut buckets = [0u32; 16];
        for i in 0..16_000u64 {
            buckets[(mix64(i) >> 60) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&b| (850..1150).contains(&b)),
            "{buckets:?}"
        );
    }
}
