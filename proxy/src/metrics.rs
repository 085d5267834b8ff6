//! The Prometheus registry and the metric families of the data plane. Hot-path code never looks
//! labels up per request: handles are resolved when config is compiled ([`ListenerMetrics`],
//! [`ClusterMetrics`]) and incremented directly.

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::fmt;

type Labels = Vec<(&'static str, String)>;

/// All metric families, registered once at start.
pub struct Metrics {
    registry: Registry,
    downstream_connections: Family<Labels, Counter>,
    downstream_connections_active: Family<Labels, Gauge>,
    downstream_requests: Family<Labels, Counter>,
    downstream_responses: Family<Labels, Counter>,
    downstream_rejected: Family<Labels, Counter>,
    downstream_errors: Family<Labels, Counter>,
    downstream_sanitized: Family<Labels, Counter>,
    upstream_requests: Family<Labels, Counter>,
    upstream_connections: Family<Labels, Counter>,
    upstream_connect_failures: Family<Labels, Counter>,
    upstream_errors: Family<Labels, Counter>,
    lb_panic: Family<Labels, Gauge>,
    lb_local_zone: Family<Labels, Gauge>,
    lb_overload_skips: Family<Labels, Counter>,
    config_reloads: Family<Labels, Counter>,
    config_resources: Family<Labels, Counter>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every family under the `sluice_` prefix.
    pub fn new() -> Self {
        let mut m = Metrics {
            downstream_connections: Family::default(),
            downstream_connections_active: Family::default(),
            downstream_requests: Family::default(),
            downstream_responses: Family::default(),
            downstream_rejected: Family::default(),
            downstream_errors: Family::default(),
            downstream_sanitized: Family::default(),
            upstream_requests: Family::default(),
            upstream_connections: Family::default(),
            upstream_connect_failures: Family::default(),
            upstream_errors: Family::default(),
            lb_panic: Family::default(),
            lb_local_zone: Family::default(),
            lb_overload_skips: Family::default(),
            config_reloads: Family::default(),
            config_resources: Family::default(),
            registry: Registry::with_prefix("sluice"),
        };
        // prometheus-client appends `_total` to counters.
        let r = &mut m.registry;
        r.register(
            "downstream_connections",
            "Connections accepted, by listener",
            m.downstream_connections.clone(),
        );
        r.register(
            "downstream_connections_active",
            "Connections open now, by listener",
            m.downstream_connections_active.clone(),
        );
        r.register(
            "downstream_requests",
            "Requests received, by listener",
            m.downstream_requests.clone(),
        );
        r.register(
            "downstream_responses",
            "Responses sent, by listener and status class",
            m.downstream_responses.clone(),
        );
        r.register(
            "downstream_rejected",
            "Requests or connections refused for protocol violations or limits, by listener and reason",
            m.downstream_rejected.clone(),
        );
        r.register(
            "downstream_sanitized",
            "Request heads changed before routing, by listener and action (path_normalized, path_redirected, host_dot_stripped, underscore_header_dropped, forwarding_header_stripped, internal_header_stripped, request_id_replaced)",
            m.downstream_sanitized.clone(),
        );
        r.register(
            "upstream_requests",
            "Requests sent upstream, by cluster",
            m.upstream_requests.clone(),
        );
        r.register(
            "upstream_connections",
            "Upstream connections opened, by cluster",
            m.upstream_connections.clone(),
        );
        r.register(
            "upstream_connect_failures",
            "Upstream connection attempts that failed or timed out, by cluster",
            m.upstream_connect_failures.clone(),
        );
        r.register(
            "upstream_errors",
            "Upstream requests that failed after connecting, by cluster and kind",
            m.upstream_errors.clone(),
        );
        r.register(
            "upstream_lb_panic",
            "1 while a cluster balances across all its endpoints ignoring health (fewer healthy than panic_threshold), by cluster",
            m.lb_panic.clone(),
        );
        r.register(
            "upstream_lb_local_zone",
            "1 while a cluster routes only to endpoints in the proxy's zone (locality preference), by cluster",
            m.lb_local_zone.clone(),
        );
        r.register(
            "upstream_lb_overload_skips",
            "Picks by bounded-load consistent hashing (hash_balance_factor) that passed over an overloaded endpoint, by cluster",
            m.lb_overload_skips.clone(),
        );
        r.register(
            "downstream_error_responses",
            "Responses Sluice generated for a failure, by listener and response flag (Envoy's: NR no route, NC no cluster, UH no healthy upstream, UF connect failure, UT timeout, UC upstream reset or protocol error, DPE downstream protocol error)",
            m.downstream_errors.clone(),
        );
        r.register(
            "config_reloads",
            "Config reload attempts, by result",
            m.config_reloads.clone(),
        );
        r.register(
            "config_resource_updates",
            "Resources in config updates, by type and result (accepted or rejected)",
            m.config_resources.clone(),
        );
        r.register(
            "build",
            "Sluice build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        m
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn encode_text(&self) -> String {
        let mut out = String::with_capacity(8192);
        // Writing to a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &self.registry);
        out
    }

    /// Content type of [`Metrics::encode_text`].
    pub const TEXT_CONTENT_TYPE: &'static str = prometheus_text::CONTENT_TYPE;

    /// Handles for one listener.
    pub fn listener(&self, name: &str) -> ListenerMetrics {
        let l = || vec![("listener", name.to_string())];
        let class = |c: &str| vec![("listener", name.to_string()), ("class", c.to_string())];
        ListenerMetrics(std::sync::Arc::new(ListenerHandles {
            connections: self.downstream_connections.get_or_create(&l()).clone(),
            active: self
                .downstream_connections_active
                .get_or_create(&l())
                .clone(),
            requests: self.downstream_requests.get_or_create(&l()).clone(),
            responses: ["1xx", "2xx", "3xx", "4xx", "5xx"]
                .map(|c| self.downstream_responses.get_or_create(&class(c)).clone()),
            rejected: self.downstream_rejected.clone(),
            errors: self.downstream_errors.clone(),
            sanitized: Sanitized::ALL.map(|a| {
                self.downstream_sanitized
                    .get_or_create(&vec![
                        ("listener", name.to_string()),
                        ("action", a.as_str().to_string()),
                    ])
                    .clone()
            }),
            name: name.to_string(),
        }))
    }

    /// Handles for one cluster.
    pub fn cluster(&self, name: &str) -> ClusterMetrics {
        let l = || vec![("cluster", name.to_string())];
        ClusterMetrics {
            requests: self.upstream_requests.get_or_create(&l()).clone(),
            connections: self.upstream_connections.get_or_create(&l()).clone(),
            connect_failures: self.upstream_connect_failures.get_or_create(&l()).clone(),
            errors: self.upstream_errors.clone(),
            lb: crate::lb::LbMetrics {
                panic: self.lb_panic.get_or_create(&l()).clone(),
                local_zone: self.lb_local_zone.get_or_create(&l()).clone(),
                overload_skips: self.lb_overload_skips.get_or_create(&l()).clone(),
            },
            name: name.to_string(),
        }
    }

    /// Counts a reload attempt (`success` or `failure`).
    pub fn config_reload(&self, result: &'static str) {
        self.config_reloads
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
    }

    /// Counts one resource of an update (`accepted` or `rejected`).
    pub(crate) fn config_resources(&self, kind: &'static str, result: &'static str) {
        self.config_resources
            .get_or_create(&vec![
                ("type", kind.to_string()),
                ("result", result.to_string()),
            ])
            .inc();
    }
}

/// Per-listener handles, shared: every connection keeps one (a pointer and one atomic increment
/// per connection, however many series a listener has).
#[derive(Clone, Debug)]
pub struct ListenerMetrics(std::sync::Arc<ListenerHandles>);

impl std::ops::Deref for ListenerMetrics {
    type Target = ListenerHandles;
    fn deref(&self) -> &ListenerHandles {
        &self.0
    }
}

/// The handles behind [`ListenerMetrics`].
#[derive(Debug)]
pub struct ListenerHandles {
    /// Accepted connections.
    pub connections: Counter,
    /// Open connections.
    pub active: Gauge,
    /// Requests.
    pub requests: Counter,
    responses: [Counter; 5],
    rejected: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    /// One counter per [`Sanitized`] action, created with the listener (so every series
    /// exists from the start and counting needs no label lookup).
    sanitized: [Counter; Sanitized::ALL.len()],
    name: String,
}

/// A change the normalize step made to a request head (the `action` label of
/// `sluice_downstream_sanitized_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sanitized {
    /// The path was normalized (dot segments, escapes, slashes).
    PathNormalized,
    /// Escaped slashes: answered with a redirect to the normalized path.
    PathRedirected,
    /// One trailing dot removed from the host.
    HostDotStripped,
    /// A header name with `_` dropped.
    UnderscoreHeaderDropped,
    /// A forwarding header from an untrusted client removed.
    ForwardingHeaderStripped,
    /// An internal header from an untrusted peer removed.
    InternalHeaderStripped,
    /// A client `x-request-id` removed (a new one is generated).
    RequestIdReplaced,
}

impl Sanitized {
    /// Every action, in label order.
    pub const ALL: [Sanitized; 7] = [
        Sanitized::PathNormalized,
        Sanitized::PathRedirected,
        Sanitized::HostDotStripped,
        Sanitized::UnderscoreHeaderDropped,
        Sanitized::ForwardingHeaderStripped,
        Sanitized::InternalHeaderStripped,
        Sanitized::RequestIdReplaced,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Sanitized::PathNormalized => "path_normalized",
            Sanitized::PathRedirected => "path_redirected",
            Sanitized::HostDotStripped => "host_dot_stripped",
            Sanitized::UnderscoreHeaderDropped => "underscore_header_dropped",
            Sanitized::ForwardingHeaderStripped => "forwarding_header_stripped",
            Sanitized::InternalHeaderStripped => "internal_header_stripped",
            Sanitized::RequestIdReplaced => "request_id_replaced",
        }
    }
}

impl ListenerHandles {
    /// Counts a change the normalize step made to a request head.
    pub fn sanitized(&self, action: Sanitized) {
        if let Some(c) = self.sanitized.get(action as usize) {
            c.inc();
        }
    }

    /// Counts a generated error response by response flag (rare path: looks the label up).
    pub fn error(&self, flag: &'static str) {
        self.errors
            .get_or_create(&vec![
                ("listener", self.name.clone()),
                ("flag", flag.to_string()),
            ])
            .inc();
    }

    /// Counts a response by status class.
    pub fn response(&self, status: u16) {
        let i = usize::from(status / 100).saturating_sub(1).min(4);
        if let Some(c) = self.responses.get(i) {
            c.inc();
        }
    }

    /// Counts a rejection (rare path: looks the label up).
    pub fn rejected(&self, reason: &'static str) {
        self.rejected
            .get_or_create(&vec![
                ("listener", self.name.clone()),
                ("reason", reason.to_string()),
            ])
            .inc();
    }
}

/// Per-cluster handles.
#[derive(Clone, Debug)]
pub struct ClusterMetrics {
    /// Requests sent.
    pub requests: Counter,
    /// Connections opened.
    pub connections: Counter,
    /// Failed connection attempts.
    pub connect_failures: Counter,
    errors: Family<Labels, Counter>,
    /// Load-balancing gauges and counters.
    pub lb: crate::lb::LbMetrics,
    name: String,
}

impl ClusterMetrics {
    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Counts an upstream failure by kind (rare path).
    pub fn error(&self, kind: &'static str) {
        self.errors
            .get_or_create(&vec![
                ("cluster", self.name.clone()),
                ("kind", kind.to_string()),
            ])
            .inc();
    }
}
