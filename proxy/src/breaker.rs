//! Circuit breakers: counters of what is in flight (connections, requests waiting for a
//! connection, requests, retries) with their thresholds, shared by every worker. Admission is
//! one atomic add; a request that would pass a threshold is refused at once (503 `UO`), as in
//! Envoy. A cluster has one set ([`Breakers`]); a route may have its own ([`RouteBreaker`]),
//! which bounds what that route takes of its clusters. A leaf module.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// Which threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threshold {
    /// Open upstream connections.
    Connections,
    /// Requests waiting for a connection to be opened.
    Pending,
    /// Requests in flight.
    Requests,
    /// Retries in flight.
    Retries,
}

impl Threshold {
    /// Every threshold (for pre-initialised metrics).
    pub const ALL: [Threshold; 4] = [
        Threshold::Connections,
        Threshold::Pending,
        Threshold::Requests,
        Threshold::Retries,
    ];

    /// The config field's name (the `breaker` metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Threshold::Connections => "max_connections",
            Threshold::Pending => "max_pending_requests",
            Threshold::Requests => "max_requests",
            Threshold::Retries => "max_retries",
        }
    }
}

/// One counter with its limit. The limit is updated in place when the config changes, so the
/// count of what is in flight carries over.
#[derive(Debug)]
pub struct Gauge {
    current: AtomicU32,
    limit: AtomicU32,
}

impl Gauge {
    /// A gauge with this limit.
    pub fn new(limit: u32) -> Self {
        Gauge {
            current: AtomicU32::new(0),
            limit: AtomicU32::new(limit),
        }
    }

    /// Counts one more unless that would pass the limit.
    pub fn try_acquire(&self) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        let prev = self.current.fetch_add(1, Ordering::Relaxed);
        if prev >= limit {
            self.current.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Counts one more whatever the limit (what the limit does not apply to is still in
    /// flight).
    pub fn acquire(&self) {
        self.current.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one less.
    pub fn release(&self) {
        self.current.fetch_sub(1, Ordering::Relaxed);
    }

    /// What is in flight now.
    pub fn current(&self) -> u32 {
        self.current.load(Ordering::Relaxed)
    }

    /// Sets the limit (in-flight counts are kept).
    pub fn set_limit(&self, limit: u32) {
        self.limit.store(limit, Ordering::Relaxed);
    }
}

/// A cluster's circuit breakers.
#[derive(Debug)]
pub struct Breakers {
    /// Open connections.
    pub connections: Gauge,
    /// Requests waiting for a new connection.
    pub pending: Gauge,
    /// Requests in flight.
    pub requests: Gauge,
    /// Retries in flight.
    pub retries: Gauge,
}

impl Default for Breakers {
    fn default() -> Self {
        let d = sluice_config::CircuitBreakers::default();
        Self::new(&d)
    }
}

impl Breakers {
    /// Breakers with these thresholds.
    pub fn new(c: &sluice_config::CircuitBreakers) -> Self {
        Breakers {
            connections: Gauge::new(c.max_connections),
            pending: Gauge::new(c.max_pending_requests),
            requests: Gauge::new(c.max_requests),
            retries: Gauge::new(c.max_retries),
        }
    }

    /// Applies new thresholds, keeping the counts.
    pub fn configure(&self, c: &sluice_config::CircuitBreakers) {
        self.connections.set_limit(c.max_connections);
        self.pending.set_limit(c.max_pending_requests);
        self.requests.set_limit(c.max_requests);
        self.retries.set_limit(c.max_retries);
    }

    /// The gauge of a threshold.
    pub fn gauge(&self, t: Threshold) -> &Gauge {
        match t {
            Threshold::Connections => &self.connections,
            Threshold::Pending => &self.pending,
            Threshold::Requests => &self.requests,
            Threshold::Retries => &self.retries,
        }
    }
}

/// Holds one unit of a shared gauge until dropped (a connection, a retry, a route's request).
#[derive(Debug)]
pub struct Held<T: AsRef<Gauge>>(T);

impl<T: AsRef<Gauge>> Held<T> {
    /// Acquires one unit of `gauge`, or `None` when it is full.
    pub fn try_new(gauge: T) -> Option<Self> {
        gauge.as_ref().try_acquire().then(|| Held(gauge))
    }
}

impl<T: AsRef<Gauge>> Drop for Held<T> {
    fn drop(&mut self) {
        self.0.as_ref().release();
    }
}

impl AsRef<Gauge> for Gauge {
    fn as_ref(&self) -> &Gauge {
        self
    }
}

/// A route's own breakers: requests and retries in flight on the route. Compiled with the
/// route; a route table change starts new counts (requests in flight keep their old handles).
#[derive(Debug)]
pub struct RouteBreaker {
    /// The route's name for metrics and logs.
    pub route: String,
    /// Requests in flight (no limit: `u32::MAX`).
    pub requests: Arc<Gauge>,
    /// Retries in flight (no limit: `u32::MAX`).
    pub retries: Arc<Gauge>,
    /// Counts requests refused by `max_requests`.
    pub overflow_requests: prometheus_client::metrics::counter::Counter,
    /// Counts retries refused by `max_retries`.
    pub overflow_retries: prometheus_client::metrics::counter::Counter,
}

impl RouteBreaker {
    /// A route's breakers, counting overflows on `metrics`.
    pub fn new(
        route: String,
        c: &sluice_config::RouteBreakers,
        metrics: &crate::metrics::Metrics,
    ) -> Self {
        RouteBreaker {
            overflow_requests: metrics.route_overflow(&route, Threshold::Requests.as_str()),
            overflow_retries: metrics.route_overflow(&route, Threshold::Retries.as_str()),
            route,
            requests: Arc::new(Gauge::new(c.max_requests.unwrap_or(u32::MAX))),
            retries: Arc::new(Gauge::new(c.max_retries.unwrap_or(u32::MAX))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gauge_refuses_past_its_limit_and_frees_on_drop() {
        let g = Arc::new(Gauge::new(2));
        let a = Held::try_new(Arc::clone(&g)).unwrap();
        let b = Held::try_new(Arc::clone(&g)).unwrap();
        assert!(Held::try_new(Arc::clone(&g)).is_none());
        assert_eq!(g.current(), 2, "a refusal leaves no count behind");
        drop(a);
        assert!(Held::try_new(Arc::clone(&g)).is_some());
        drop(b);
        assert_eq!(g.current(), 0);
    }

    #[test]
    fn new_limits_keep_what_is_in_flight() {
        let b = Breakers::default();
        assert!(b.requests.try_acquire());
        b.configure(&sluice_config::CircuitBreakers {
            max_requests: 1,
            ..Default::default()
        });
        assert_eq!(b.requests.current(), 1);
        assert!(
            !b.requests.try_acquire(),
            "the new limit counts the old request"
        );
        b.requests.release();
        assert!(b.requests.try_acquire());
    }
}
