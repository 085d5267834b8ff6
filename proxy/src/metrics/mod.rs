//! The Prometheus registry and the metric families of the data plane. Hot-path code never looks
//! labels up per request: handles are resolved when config is compiled ([`ListenerMetrics`],
//! [`ClusterMetrics`]) and incremented directly.

use crate::latency::LatencyHistogram;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::fmt;

mod family;
mod protobuf;

pub use family::Family;

type Labels = Vec<(&'static str, String)>;

/// All metric families, registered once at start.
pub struct Metrics {
    /// Every `sluice_` family, for the text formats.
    registry: Registry,
    /// The label-keyed counters, gauges and latency histograms of `registry`, which the
    /// protobuf exposition writes itself ([`protobuf`]), and the rest, which it leaves to
    /// the library's encoder.
    own: Vec<protobuf::OwnFamily>,
    rest: Registry,
    /// The unprefixed `process_*` family (Prometheus client libraries' standard names).
    process: Registry,
    /// The generation of the config in force, and when it was applied.
    config_generation: Gauge,
    config_applied: Gauge<f64, std::sync::atomic::AtomicU64>,
    downstream_connections: Family<Labels, Counter>,
    downstream_connections_active: Family<Labels, Gauge>,
    downstream_connections_closed: Family<Labels, Counter>,
    downstream_requests: Family<Labels, Counter>,
    downstream_responses: Family<Labels, Counter>,
    downstream_rejected: Family<Labels, Counter>,
    downstream_errors: Family<Labels, Counter>,
    downstream_sanitized: Family<Labels, Counter>,
    upstream_requests: Family<Labels, Counter>,
    /// Time to the response head, per listener (OTel `http.server.request.duration`).
    server_duration: Family<Labels, LatencyHistogram>,
    /// Time from sending an attempt to its response head, per cluster (OTel
    /// `http.client.request.duration`).
    client_duration: Family<Labels, LatencyHistogram>,
    /// Upstream responses by cluster and status class.
    upstream_responses: Family<Labels, Counter>,
    upstream_connections: Family<Labels, Counter>,
    upstream_connect_failures: Family<Labels, Counter>,
    upstream_connections_active: Family<Labels, Gauge>,
    upstream_connections_closed: Family<Labels, Counter>,
    upstream_bytes: Family<Labels, Counter>,
    upstream_errors: Family<Labels, Counter>,
    upstream_retries: Family<Labels, Counter>,
    upstream_retry_limited: Family<Labels, Counter>,
    upstream_overflows: Family<Labels, Counter>,
    route_overflows: Family<Labels, Counter>,
    outlier_ejections: Family<Labels, Counter>,
    outlier_ejected: Family<Labels, Gauge>,
    lb_panic: Family<Labels, Gauge>,
    lb_local_zone: Family<Labels, Gauge>,
    lb_overload_skips: Family<Labels, Counter>,
    config_reloads: Family<Labels, Counter>,
    config_resources: Family<Labels, Counter>,
    pub(crate) health_checks: Family<Labels, Counter>,
    pub(crate) health_changes: Family<Labels, Counter>,
    pub(crate) cluster_endpoints: Family<Labels, Gauge>,
    /// Per-endpoint series of clusters with `per_endpoint_stats`, set when scraped.
    endpoint_requests: Family<Labels, Counter>,
    endpoint_errors: Family<Labels, Counter>,
    endpoint_active: Family<Labels, Gauge>,
    endpoint_healthy: Family<Labels, Gauge>,
    /// Most endpoints one scrape folded into `other` (what the fold counter has counted).
    endpoint_folded: std::sync::atomic::AtomicU64,
    /// Bytes of the last text scrape (the next one's initial capacity).
    scrape_len: std::sync::atomic::AtomicUsize,
    /// Bytes of the last protobuf scrape.
    protobuf_len: std::sync::atomic::AtomicUsize,
    /// DNS discovery (`source/dns.rs`).
    pub(crate) dns: DnsMetrics,
    /// Fault injection (`http/filters/fault.rs`).
    fault: FaultMetrics,
    /// TLS handshakes, reloads, certificate expiry, authorization (`tls/`).
    pub(crate) tls: TlsMetrics,
    /// TLS passthrough (SNI routing of TCP listeners).
    pub(crate) sni: SniMetrics,
    /// The xDS client (`source/xds/`).
    pub(crate) xds: XdsMetrics,
    /// gRPC responses by status (`http/grpc.rs`).
    grpc_responses: Family<Labels, Counter>,
    /// gRPC-Web requests by mode (`message/grpc_web.rs`).
    grpc_web_requests: Family<Labels, Counter>,
    /// Access log lines by listener and result (`http/filters/access_log.rs`).
    access_log_lines: Family<Labels, Counter>,
    /// Requests in flight, by listener.
    downstream_requests_active: Family<Labels, Gauge>,
    /// Bytes read from and written to clients, by listener and direction.
    downstream_bytes: Family<Labels, Counter>,
    /// Spans by result (`otel.rs`).
    tracing_spans: Family<Labels, Counter>,
    /// Responses by listener, method and status code (`code` and `method` fold into `other`
    /// beyond the cardinality budget).
    response_codes: Family<Labels, Counter>,
    /// The cardinality budget of the families whose label sets come from traffic or config.
    budget: std::sync::Arc<Budget>,
    /// Responses by route and status class, and the time to them.
    route_responses: Family<Labels, Counter>,
    route_duration: Family<Labels, LatencyHistogram>,
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
    /// Like [`Metrics::new`], with a cardinality budget of `max_series_per_family` label sets
    /// per budgeted family.
    pub fn with_budget(max_series_per_family: usize) -> Self {
        let mut m = Self::new();
        if let Some(b) = std::sync::Arc::get_mut(&mut m.budget) {
            b.limit = max_series_per_family;
        }
        m
    }

    /// Registers every family under the `sluice_` prefix.
    pub fn new() -> Self {
        let mut m = Metrics {
            downstream_connections: Family::default(),
            downstream_connections_active: Family::default(),
            downstream_connections_closed: Family::default(),
            downstream_requests: Family::default(),
            downstream_responses: Family::default(),
            downstream_rejected: Family::default(),
            downstream_errors: Family::default(),
            downstream_sanitized: Family::default(),
            upstream_requests: Family::default(),
            server_duration: Family::default(),
            client_duration: Family::default(),
            upstream_responses: Family::default(),
            upstream_connections: Family::default(),
            upstream_connect_failures: Family::default(),
            upstream_connections_active: Family::default(),
            upstream_connections_closed: Family::default(),
            upstream_bytes: Family::default(),
            upstream_errors: Family::default(),
            upstream_retries: Family::default(),
            upstream_retry_limited: Family::default(),
            upstream_overflows: Family::default(),
            route_overflows: Family::default(),
            outlier_ejections: Family::default(),
            outlier_ejected: Family::default(),
            lb_panic: Family::default(),
            lb_local_zone: Family::default(),
            lb_overload_skips: Family::default(),
            config_reloads: Family::default(),
            config_resources: Family::default(),
            health_checks: Family::default(),
            health_changes: Family::default(),
            cluster_endpoints: Family::default(),
            endpoint_requests: Family::default(),
            endpoint_errors: Family::default(),
            endpoint_active: Family::default(),
            endpoint_healthy: Family::default(),
            endpoint_folded: Default::default(),
            scrape_len: Default::default(),
            protobuf_len: Default::default(),
            dns: Default::default(),
            fault: Default::default(),
            tls: Default::default(),
            sni: Default::default(),
            xds: Default::default(),
            grpc_responses: Family::default(),
            grpc_web_requests: Family::default(),
            access_log_lines: Family::default(),
            downstream_requests_active: Family::default(),
            downstream_bytes: Family::default(),
            tracing_spans: Family::default(),
            response_codes: Family::default(),
            budget: std::sync::Arc::new(Budget::new(5000)),
            route_responses: Family::default(),
            route_duration: Family::default(),
            registry: Registry::with_prefix("sluice"),
            own: Vec::new(),
            rest: Registry::with_prefix("sluice"),
            process: Registry::default(),
            config_generation: Gauge::default(),
            config_applied: Gauge::default(),
        };
        m.process
            .register_collector(Box::new(crate::process_metrics::ProcessCollector));
        // prometheus-client appends `_total` to counters.
        let r = &mut m.registry;
        let mut own = Vec::new();
        let mut rest = Registry::with_prefix("sluice");
        protobuf::expose(
            r,
            &mut own,
            "grpc_responses",
            "gRPC responses by listener, cluster and grpc-status, counted at the response's end",
            m.grpc_responses.clone(),
        );
        protobuf::expose(
            r,
            &mut own,
            "grpc_web_requests",
            "gRPC-Web requests sent upstream as gRPC, by listener and mode (binary or text)",
            m.grpc_web_requests.clone(),
        );
        protobuf::expose(
            r,
            &mut own,
            "access_log_lines",
            "Access log lines by listener and result (written; dropped: the writer's queue was full)",
            m.access_log_lines.clone(),
        );
        protobuf::expose(
            r,
            &mut own,
            "downstream_connections",
            "Connections accepted, by listener",
            m.downstream_connections.clone(),
        );
        protobuf::expose(
            r,
            &mut own,
            "downstream_connections_active",
            "Connections open now, by listener",
            m.downstream_connections_active.clone(),
        );
        protobuf::expose(
            r,
            &mut own,
            "downstream_connections_closed",
            "Connections closed, by listener",
            m.downstream_connections_closed.clone(),
        );
        protobuf::expose(
            r,
            &mut own,
            "downstream_requests",
            "Requests received, by listener",
            m.downstream_requests.clone(),
        );
        protobuf::expose(
            r,
            &mut own,
            "downstream_responses",
            "Responses sent, by listener and status class",
            m.downstream_responses.clone(),
        );
        protobuf::expose(
            r,
            &mut own,
            "downstream_response_codes",
            "Responses sent by HTTP listener, request method (GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH, CONNECT, else other) and status code",
            m.response_codes.clone(),
        );
        protobuf::expose(
            r,
            &mut own,
            "metric_series_folded",
            "Label sets counted under `other` because their family reached the cardinality budget (admin.max_series_per_family), by family",
            m.budget.folded.clone(),
        );
        protobuf::expose(
            r,
            &mut own,
            "tracing_spans",
            "Trace spans by result: exported to the collector, dropped (the export queue was full), failed (the collector did not take them)",
            m.tracing_spans.clone(),
        );
        protobuf::expose(
            r,
            &mut own,
            "downstream_bytes",
            "Bytes read from clients (direction=received) and written to them (sent), TLS and protocol framing included, by listener",
            m.downstream_bytes.clone(),
        );
        protobuf::expose(
            r,
            &mut own,
            "downstream_requests_active",
            "Requests in flight (head received, response not yet finished), by HTTP listener",
            m.downstream_requests_active.clone(),
        );
        protobuf::expose(
            r,
            &mut own,
            "route_responses",
            "Responses to requests a route matched (forwarded, or answered by the route or Sluice), by route table, virtual host, route and status class",
            m.route_responses.clone(),
        );
        protobuf::expose(
            r,
            &mut own,
            "route_request_duration_seconds",
            "Time from a request head's arrival to its response head, by route table, virtual host and route",
            m.route_duration.clone(),
        );
        protobuf::expose(
            r,
            &mut own,
            "downstream_rejected",
            "Requests or connections refused for protocol violations or limits, by listener and reason",
            m.downstream_rejected.clone(),
        );
        protobuf::expose(
            r,
            &mut own,
            "downstream_sanitized",
            "Request heads changed before routing, by listener and action (path_normalized, path_redirected, host_dot_stripped, underscore_header_dropped, forwarding_header_stripped, internal_header_stripped, request_id_replaced)",
            m.downstream_sanitized.clone(),
        );
        protobuf::expose(
            r,
            &mut own,
            "upstream_requests",
            "Requests sent upstream, by cluster",
            m.upstream_requests.clone(),
        );
        protobuf::expose(
            r,
            &mut own,
            "http_server_request_duration_seconds",
            "Time from a request head's arrival to its response head (forwarded or answered by Sluice), by HTTP listener",
            m.server_duration.clone(),
        );
        protobuf::expose(
            r,
            &mut own,
            "http_client_request_duration_seconds",
            "Time from sending a request to an endpoint to its response head, per attempt, by cluster",
            m.client_duration.clone(),
        );
        protobuf::expose(
            r,
            &mut own,
            "upstream_responses",
            "Responses received from endpoints (per attempt), by cluster and status class",
            m.upstream_responses.clone(),
        );
        protobuf::expose(
            r,
            &mut own,
            "upstream_connections",
            "Upstream connections opened, by cluster",
            m.upstream_connections.clone(),
        );
        protobuf::expose(
            r,
            &mut own,
            "upstream_connections_active",
            "Upstream connections open now, by cluster (health-check connections included)",
            m.upstream_connections_active.clone(),
        );
        protobuf::expose(
            r,
            &mut own,
            "upstream_connections_closed",
            "Upstream connections closed, by cluster",
            m.upstream_connections_closed.clone(),
        );
        protobuf::expose(
            r,
            &mut own,
            "upstream_bytes",
            "Bytes written to (sent) and read from (received) endpoints, by cluster and direction",
            m.upstream_bytes.clone(),
        );
        protobuf::expose(
            r,
            &mut own,
            "upstream_connect_failures",
            "Upstream connection attempts that failed or timed out, by cluster",
            m.upstream_connect_failures.clone(),
        );
        protobuf::expose(
            r,
            &mut own,
            "upstream_errors",
            "Upstream requests that failed after connecting, by cluster and kind",
            m.upstream_errors.clone(),
        );
        protobuf::expose(
            r,
            &mut own,
            "upstream_retries",
            "Retries sent, by cluster and reason (connect_failure, refused_stream, reset, per_try_timeout, status, grpc_status)",
            m.upstream_retries.clone(),
        );
        protobuf::expose(
            r,
            &mut own,
            "upstream_retry_limited",
            "Retries the policy asked for but a limit refused, by cluster and limit (num_retries, budget, circuit_breaker, replay_limit, retry_after)",
            m.upstream_retry_limited.clone(),
        );
        protobuf::expose(
            r,
            &mut own,
            "upstream_overflows",
            "Requests refused at once (503 UO) because a cluster circuit breaker was full, by cluster and breaker",
            m.upstream_overflows.clone(),
        );
        protobuf::expose(
            r,
            &mut own,
            "route_overflows",
            "Requests or retries refused because a route's own circuit breaker was full, by route and breaker",
            m.route_overflows.clone(),
        );
        protobuf::expose(
            r,
            &mut own,
            "outlier_ejections",
            "Endpoints ejected by outlier detection, by cluster and reason",
            m.outlier_ejections.clone(),
        );
        protobuf::expose(
            r,
            &mut own,
            "outlier_ejected_endpoints",
            "Endpoints ejected by outlier detection now, by cluster",
            m.outlier_ejected.clone(),
        );
        protobuf::expose(
            r,
            &mut own,
            "upstream_lb_panic",
            "1 while a cluster balances across all its endpoints ignoring health (fewer healthy than panic_threshold), by cluster",
            m.lb_panic.clone(),
        );
        protobuf::expose(
            r,
            &mut own,
            "upstream_lb_local_zone",
            "1 while a cluster routes only to endpoints in the proxy's zone (locality preference), by cluster",
            m.lb_local_zone.clone(),
        );
        protobuf::expose(
            r,
            &mut own,
            "upstream_lb_overload_skips",
            "Picks by bounded-load consistent hashing (hash_balance_factor) that passed over an overloaded endpoint, by cluster",
            m.lb_overload_skips.clone(),
        );
        protobuf::expose(
            r,
            &mut own,
            "downstream_error_responses",
            "Responses Sluice generated for a failure, by listener and response flag (Envoy's: NR no route, NC no cluster, UH no healthy upstream, UF connect failure, UT timeout, UC upstream reset or protocol error, DPE downstream protocol error, FI fault filter abort)",
            m.downstream_errors.clone(),
        );
        protobuf::expose(
            r,
            &mut own,
            "config_reloads",
            "Config reload attempts, by result",
            m.config_reloads.clone(),
        );
        for r in [&mut *r, &mut rest] {
            r.register("config_generation", "Generation of the config in force (one more on every applied change: file reload or xDS update)", m.config_generation.clone());
        }
        for r in [&mut *r, &mut rest] {
            r.register(
                "config_last_applied_timestamp_seconds",
                "When the config in force was applied, in seconds since the epoch",
                m.config_applied.clone(),
            );
        }
        protobuf::expose(
            r,
            &mut own,
            "config_resource_updates",
            "Resources in config updates, by type and result (accepted or rejected)",
            m.config_resources.clone(),
        );
        // Families of their own modules, which the library's encoder writes in every format.
        for r in [&mut *r, &mut rest] {
            m.dns.register(r);
            m.fault.register(r);
            m.tls.register(r);
            m.sni.register(r);
            m.xds.register(r);
        }
        protobuf::expose(
            r,
            &mut own,
            "health_checks",
            "Active health checks, by cluster and result (success, failure, timeout)",
            m.health_checks.clone(),
        );
        protobuf::expose(
            r,
            &mut own,
            "health_check_changes",
            "Endpoints marked healthy or unhealthy by active health checking, by cluster and health",
            m.health_changes.clone(),
        );
        protobuf::expose(
            r,
            &mut own,
            "cluster_endpoints",
            "Endpoints by cluster and health (healthy: no health flag set, as balancers see them; updated when scraped)",
            m.cluster_endpoints.clone(),
        );
        protobuf::expose(
            r,
            &mut own,
            "upstream_endpoint_requests",
            "Attempts each endpoint answered or failed, by cluster and endpoint (clusters with per_endpoint_stats)",
            m.endpoint_requests.clone(),
        );
        protobuf::expose(
            r,
            &mut own,
            "upstream_endpoint_errors",
            "Attempts that failed at each endpoint (5xx, connect or protocol failures), by cluster and endpoint (clusters with per_endpoint_stats)",
            m.endpoint_errors.clone(),
        );
        protobuf::expose(
            r,
            &mut own,
            "upstream_endpoint_requests_active",
            "Requests in flight to each endpoint, by cluster and endpoint (clusters with per_endpoint_stats)",
            m.endpoint_active.clone(),
        );
        protobuf::expose(
            r,
            &mut own,
            "upstream_endpoint_healthy",
            "1 while the endpoint is healthy (no active health check or outlier flag), by cluster and endpoint (clusters with per_endpoint_stats)",
            m.endpoint_healthy.clone(),
        );
        for r in [&mut *r, &mut rest] {
            r.register(
                "build",
                "Sluice build information",
                Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
            );
        }
        m.own = own;
        m.rest = rest;
        m.preinitialize();
        m
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn encode_text(&self) -> String {
        let mut out = String::with_capacity(self.last_scrape_len());
        // Writing to a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &self.registry);
        let _ = prometheus_text::encode(&mut out, &self.process);
        self.scraped_len(out.len());
        out
    }

    /// Room for a text scrape (see [`room`]).
    fn last_scrape_len(&self) -> usize {
        room(&self.scrape_len)
    }

    fn scraped_len(&self, len: usize) {
        self.scrape_len
            .store(len, std::sync::atomic::Ordering::Relaxed);
    }

    /// Prometheus protobuf exposition (length-delimited `io.prometheus.client.MetricFamily`
    /// messages), the only format that carries native histograms.
    pub fn encode_protobuf(&self) -> Vec<u8> {
        use prometheus_client::encoding::prometheus_protobuf::encode;
        use prost::Message;
        let _native = crate::latency::NativeScope::enter();
        let mut out = Vec::with_capacity(room(&self.protobuf_len));
        protobuf::write(&mut out, &self.own);
        let mut families = encode(&self.rest).unwrap_or_default();
        families.extend(encode(&self.process).unwrap_or_default());
        for f in &families {
            // Writing to a Vec cannot fail.
            let _ = f.encode_length_delimited(&mut out);
        }
        self.protobuf_len
            .store(out.len(), std::sync::atomic::Ordering::Relaxed);
        out
    }

    /// Content type of [`Metrics::encode_protobuf`].
    pub const PROTOBUF_CONTENT_TYPE: &'static str = "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

    /// Content type of [`Metrics::encode_text`].
    pub const TEXT_CONTENT_TYPE: &'static str = prometheus_text::CONTENT_TYPE;

    /// OpenMetrics 1.0 text (what Prometheus asks for first), ending in `# EOF`.
    pub fn encode_openmetrics(&self) -> String {
        let mut out = String::with_capacity(self.last_scrape_len());
        use prometheus_client::encoding::text;
        let _ = text::encode_registry(&mut out, &self.registry);
        let _ = text::encode_registry(&mut out, &self.process);
        let _ = text::encode_eof(&mut out);
        self.scraped_len(out.len());
        out
    }

    /// Notes that the config of `generation` is now in force.
    pub(crate) fn config_applied(&self, generation: u64) {
        self.config_generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.config_applied.set(now.as_secs_f64());
    }

    /// Content type of [`Metrics::encode_openmetrics`].
    pub const OPENMETRICS_CONTENT_TYPE: &'static str =
        "application/openmetrics-text; version=1.0.0; charset=utf-8";

    /// A listener's byte counter for `direction` (`received` or `sent`).
    fn listener_bytes(&self, name: &str, direction: &str) -> Counter {
        bytes_counter(&self.downstream_bytes, ("listener", name), direction)
    }

    fn upstream_bytes(&self, cluster: &str, direction: &str) -> Counter {
        bytes_counter(&self.upstream_bytes, ("cluster", cluster), direction)
    }

    /// Handles for one TCP listener: its connection series only (the HTTP ones would be
    /// always zero; their handles here count nowhere).
    pub fn tcp_listener(&self, name: &str) -> ListenerMetrics {
        let l = || vec![("listener", name.to_string())];
        let bytes = |d: &str| self.listener_bytes(name, d);
        ListenerMetrics(std::sync::Arc::new(ListenerHandles {
            connections: self.downstream_connections.get_or_create(&l()),
            active: self.downstream_connections_active.get_or_create(&l()),
            closed: self.downstream_connections_closed.get_or_create(&l()),
            requests: Counter::default(),
            active_requests: Gauge::default(),
            bytes_received: bytes("received"),
            bytes_sent: bytes("sent"),
            responses: std::array::from_fn(|_| Counter::default()),
            duration: LatencyHistogram::default(),
            rejected: Family::default(),
            rejected_by: LabelledCounters::detached(REJECTION_REASONS),
            tls: self.tls.clone(),
            errors: Family::default(),
            errors_by: LabelledCounters::detached(ERROR_FLAGS),
            sanitized: std::array::from_fn(|_| Counter::default()),
            fault: FaultCounters::default(),
            grpc_responses: Family::default(),
            grpc_by_cluster: Default::default(),
            grpc_web_requests: Family::default(),
            codes: Default::default(),
            response_codes: Family::default(),
            budget: self.budget.clone(),
            name: name.to_string(),
        }))
    }

    /// Handles for one route (its series are created at 0 with it).
    pub fn route(&self, table: &str, virtual_host: &str, route: &str) -> RouteMetrics {
        let key = vec![
            ("route_table", table.to_string()),
            ("virtual_host", virtual_host.to_string()),
            ("route", route.to_string()),
        ];
        let (table, virtual_host, route) = if self.budget.admit("route_responses", &key) {
            (table, virtual_host, route)
        } else {
            ("other", "other", "other")
        };
        let labels = |class: Option<&str>| {
            let mut l = vec![
                ("route_table", table.to_string()),
                ("virtual_host", virtual_host.to_string()),
                ("route", route.to_string()),
            ];
            if let Some(c) = class {
                l.push(("class", c.to_string()));
            }
            l
        };
        RouteMetrics(std::sync::Arc::new(RouteHandles {
            responses: ["1xx", "2xx", "3xx", "4xx", "5xx"]
                .map(|c| self.route_responses.get_or_create(&labels(Some(c)))),
            duration: self.route_duration.get_or_create(&labels(None)),
        }))
    }

    /// The tracer's span counters (`exported`, `dropped`, `failed`), created at 0.
    pub(crate) fn tracing_spans(&self) -> LabelledCounters<3> {
        let values = ["exported", "dropped", "failed"];
        LabelledCounters {
            values,
            counters: values.map(|v| {
                self.tracing_spans
                    .get_or_create(&vec![("result", v.to_string())])
            }),
        }
    }

    /// A listener's access log line counters (`written`, `dropped`), created at 0 with its log.
    pub(crate) fn access_log_lines(&self, listener: &str) -> LabelledCounters<2> {
        labelled(
            &self.access_log_lines,
            ("listener", listener),
            "result",
            &["written", "dropped"],
        )
    }

    /// Handles for one HTTP listener. Every rejection reason and error flag series is created
    /// at 0 with it, so `increase()` and dashboards work before the first event.
    pub fn listener(&self, name: &str) -> ListenerMetrics {
        let l = || vec![("listener", name.to_string())];
        let class = |c: &str| vec![("listener", name.to_string()), ("class", c.to_string())];
        let bytes = |d: &str| self.listener_bytes(name, d);
        ListenerMetrics(std::sync::Arc::new(ListenerHandles {
            connections: self.downstream_connections.get_or_create(&l()),
            active: self.downstream_connections_active.get_or_create(&l()),
            closed: self.downstream_connections_closed.get_or_create(&l()),
            requests: self.downstream_requests.get_or_create(&l()),
            active_requests: self.downstream_requests_active.get_or_create(&l()),
            bytes_received: bytes("received"),
            bytes_sent: bytes("sent"),
            responses: ["1xx", "2xx", "3xx", "4xx", "5xx"]
                .map(|c| self.downstream_responses.get_or_create(&class(c))),
            duration: self.server_duration.get_or_create(&l()),
            rejected: self.downstream_rejected.clone(),
            rejected_by: labelled(
                &self.downstream_rejected,
                ("listener", name),
                "reason",
                &REJECTION_REASONS,
            ),
            tls: self.tls.clone(),
            errors: self.downstream_errors.clone(),
            errors_by: labelled(
                &self.downstream_errors,
                ("listener", name),
                "flag",
                &ERROR_FLAGS,
            ),
            sanitized: Sanitized::ALL.map(|a| {
                self.downstream_sanitized.get_or_create(&vec![
                    ("listener", name.to_string()),
                    ("action", a.as_str().to_string()),
                ])
            }),
            fault: self.fault.counters(name),
            grpc_responses: self.grpc_responses.clone(),
            grpc_by_cluster: Default::default(),
            grpc_web_requests: self.grpc_web_requests.clone(),
            codes: Default::default(),
            response_codes: self.response_codes.clone(),
            budget: self.budget.clone(),
            name: name.to_string(),
        }))
    }

    /// Handles for one cluster.
    pub fn cluster(&self, name: &str) -> ClusterMetrics {
        let l = || vec![("cluster", name.to_string())];
        ClusterMetrics {
            requests: self.upstream_requests.get_or_create(&l()),
            responses: ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|c| {
                self.upstream_responses.get_or_create(&vec![
                    ("cluster", name.to_string()),
                    ("class", c.to_string()),
                ])
            }),
            duration: self.client_duration.get_or_create(&l()),
            connections: self.upstream_connections.get_or_create(&l()),
            connect_failures: self.upstream_connect_failures.get_or_create(&l()),
            connections_active: self.upstream_connections_active.get_or_create(&l()),
            connections_closed: self.upstream_connections_closed.get_or_create(&l()),
            bytes_sent: self.upstream_bytes(name, "sent"),
            bytes_received: self.upstream_bytes(name, "received"),
            errors: labelled(
                &self.upstream_errors,
                ("cluster", name),
                "kind",
                &UPSTREAM_ERROR_KINDS,
            ),
            retries: labelled(
                &self.upstream_retries,
                ("cluster", name),
                "reason",
                &RETRY_REASONS,
            ),
            retry_limited: labelled(
                &self.upstream_retry_limited,
                ("cluster", name),
                "limit",
                &RETRY_LIMITS,
            ),
            overflows: labelled(
                &self.upstream_overflows,
                ("cluster", name),
                "breaker",
                &BREAKERS,
            ),
            ejections: labelled(
                &self.outlier_ejections,
                ("cluster", name),
                "reason",
                &EJECTION_REASONS,
            ),
            ejected: self.outlier_ejected.get_or_create(&l()),
            lb: LbMetrics {
                panic: self.lb_panic.get_or_create(&l()),
                local_zone: self.lb_local_zone.get_or_create(&l()),
                overload_skips: self.lb_overload_skips.get_or_create(&l()),
            },
            tls: self.tls.clone(),
            name: name.to_string(),
        }
    }

    /// The overflow counter of a route's breaker (`max_requests` or `max_retries`).
    pub fn route_overflow(&self, route: &str, breaker: &'static str) -> Counter {
        self.route_overflows.get_or_create(&vec![
            ("route", route.to_string()),
            ("breaker", breaker.to_string()),
        ])
    }

    /// Counts a reload attempt (`success` or `failure`).
    pub fn config_reload(&self, result: &'static str) {
        self.config_reloads
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
    }

    /// Creates the series of label sets known from the start (at 0).
    fn preinitialize(&self) {
        for result in ["success", "failure"] {
            let _ = self
                .config_reloads
                .get_or_create(&vec![("result", result.to_string())]);
            let _ = self
                .tls
                .reloads
                .get_or_create(&vec![("result", result.to_string())]);
        }
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
    /// Closed connections.
    pub closed: Counter,
    /// Requests.
    pub requests: Counter,
    /// Requests in flight.
    pub(crate) active_requests: Gauge,
    /// Bytes read from and written to clients.
    pub(crate) bytes_received: Counter,
    pub(crate) bytes_sent: Counter,
    responses: [Counter; 5],
    /// Time to the response head.
    duration: LatencyHistogram,
    rejected: Family<Labels, Counter>,
    /// One counter per [`REJECTION_REASONS`] entry, created with the listener.
    rejected_by: LabelledCounters<{ REJECTION_REASONS.len() }>,
    errors: Family<Labels, Counter>,
    /// One counter per [`ERROR_FLAGS`] entry, created with the listener.
    errors_by: LabelledCounters<{ ERROR_FLAGS.len() }>,
    /// One counter per [`Sanitized`] action, created with the listener (so every series
    /// exists from the start and counting needs no label lookup).
    sanitized: [Counter; Sanitized::ALL.len()],
    /// Injected faults.
    pub(crate) fault: FaultCounters,
    tls: TlsMetrics,
    grpc_responses: Family<Labels, Counter>,
    /// This listener's gRPC status counters per cluster, resolved on a cluster's first gRPC
    /// response and read lock-free after that.
    grpc_by_cluster: arc_swap::ArcSwap<std::collections::HashMap<Box<str>, GrpcStatusCounters>>,
    grpc_web_requests: Family<Labels, Counter>,
    /// This listener's response counters by method and code, resolved on first sight and
    /// read lock-free after that (key: method index << 16 | code).
    codes: arc_swap::ArcSwap<std::collections::HashMap<u32, Counter>>,
    response_codes: Family<Labels, Counter>,
    budget: std::sync::Arc<Budget>,
    name: String,
}

/// The `method` label values of `sluice_downstream_response_codes_total` (OpenTelemetry's
/// known methods; anything else is `other`).
const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH", "CONNECT", "other",
];

/// A request method's position in [`METHODS`], taken before the request is consumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MethodIndex(u8);

impl MethodIndex {
    /// The index of `m` (`other` for extension methods).
    pub fn of(m: &http::Method) -> Self {
        use http::Method as M;
        MethodIndex(match *m {
            M::GET => 0,
            M::HEAD => 1,
            M::POST => 2,
            M::PUT => 3,
            M::DELETE => 4,
            M::OPTIONS => 5,
            M::TRACE => 6,
            M::PATCH => 7,
            M::CONNECT => 8,
            _ => 9,
        })
    }
}

/// Room for a scrape: a little more than the last one of its format took (`last`; growing a
/// multi-megabyte buffer by doubling would copy it over and over).
fn room(last: &std::sync::atomic::AtomicUsize) -> usize {
    let last = last.load(std::sync::atomic::Ordering::Relaxed);
    (last + last / 8).max(8192)
}

/// Label sets already admitted, per budgeted family.
type Seen = std::collections::HashMap<&'static str, std::collections::HashSet<Labels>>;

/// The cardinality budget: most label sets per budgeted family. Consulted only when a label
/// set is first resolved (handles are cached), never per request.
#[derive(Debug)]
pub(crate) struct Budget {
    limit: usize,
    seen: std::sync::Mutex<Seen>,
    folded: Family<Labels, Counter>,
}

impl Budget {
    fn new(limit: usize) -> Self {
        Budget {
            limit,
            seen: Default::default(),
            folded: Family::default(),
        }
    }

    /// True when `labels` may have its own series in `family` (it has one already, or the
    /// family is under budget); false (counted) when it must fold into `other`.
    pub(crate) fn admit(&self, family: &'static str, labels: &Labels) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let set = seen.entry(family).or_default();
        if set.contains(labels) {
            return true;
        }
        if set.len() < self.limit {
            set.insert(labels.clone());
            return true;
        }
        drop(seen);
        self.folded
            .get_or_create(&vec![("family", family.to_string())])
            .inc();
        false
    }
}

/// The byte counter of one listener or cluster (`owner`) in one direction.
fn bytes_counter(
    family: &Family<Labels, Counter>,
    owner: (&'static str, &str),
    direction: &str,
) -> Counter {
    family.get_or_create(&vec![
        (owner.0, owner.1.to_string()),
        ("direction", direction.to_string()),
    ])
}

/// One endpoint's figures for the per-endpoint series (see [`Metrics::set_endpoint_series`]).
#[derive(Debug)]
pub(crate) struct EndpointRow<'a> {
    pub(crate) cluster: &'a str,
    pub(crate) endpoint: std::net::SocketAddr,
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    pub(crate) active: u32,
    pub(crate) healthy: bool,
}

impl Metrics {
    /// Replaces the per-endpoint series with `rows` (taken when scraped: the endpoints' own
    /// counters are the source, so nothing is recorded twice on the request path). Endpoints
    /// past the cardinality budget are summed into `{cluster="other",endpoint="other"}`;
    /// `sluice_metric_series_folded_total{family="upstream_endpoint"}` counts the most any
    /// scrape folded.
    pub(crate) fn set_endpoint_series(&self, rows: &[EndpointRow<'_>]) {
        for f in [&self.endpoint_requests, &self.endpoint_errors] {
            f.clear();
        }
        for f in [&self.endpoint_active, &self.endpoint_healthy] {
            f.clear();
        }
        let mut folded = 0u64;
        for (i, r) in rows.iter().enumerate() {
            let labels = if i < self.budget.limit {
                vec![
                    ("cluster", r.cluster.to_string()),
                    ("endpoint", r.endpoint.to_string()),
                ]
            } else {
                folded += 1;
                vec![("cluster", "other".into()), ("endpoint", "other".into())]
            };
            self.endpoint_requests
                .get_or_create(&labels)
                .inc_by(r.requests);
            self.endpoint_errors.get_or_create(&labels).inc_by(r.errors);
            self.endpoint_active
                .get_or_create(&labels)
                .inc_by(i64::from(r.active));
            self.endpoint_healthy
                .get_or_create(&labels)
                .inc_by(i64::from(r.healthy));
        }
        let before = self
            .endpoint_folded
            .fetch_max(folded, std::sync::atomic::Ordering::Relaxed);
        if folded > before {
            self.budget
                .folded
                .get_or_create(&vec![("family", "upstream_endpoint".to_string())])
                .inc_by(folded - before);
        }
    }
}

/// The `grpc_status` label values: the codes gRPC defines (0–16), then `other` for anything
/// else a peer sends (so a misbehaving upstream cannot grow the series without bound).
const GRPC_STATUSES: [&str; 18] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    "other",
];

/// One listener × cluster's `sluice_grpc_responses_total` counters, one per status, all created
/// together (so every status shows from the cluster's first gRPC response).
#[derive(Clone, Debug)]
pub(crate) struct GrpcStatusCounters(std::sync::Arc<GrpcStatusInner>);

#[derive(Debug)]
struct GrpcStatusInner {
    cluster: Box<str>,
    counters: [Counter; GRPC_STATUSES.len()],
}

impl GrpcStatusCounters {
    /// Counts a response that ended with `code` (the `grpc-status` value).
    pub(crate) fn inc(&self, code: &str) {
        let i = match code.parse::<u8>() {
            Ok(n) if usize::from(n) < GRPC_STATUSES.len() - 1 && !code.starts_with('+') => {
                usize::from(n)
            }
            _ => GRPC_STATUSES.len() - 1,
        };
        if let Some(c) = self.0.counters.get(i) {
            c.inc();
        }
    }

    /// The cluster's name.
    pub(crate) fn cluster(&self) -> &str {
        &self.0.cluster
    }
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

    /// Counts a generated error response by response flag (a known flag's counter was
    /// created with the listener; an unlisted one is looked up).
    pub fn error(&self, flag: &'static str) {
        if !self.errors_by.try_inc(flag) {
            self.errors
                .get_or_create(&vec![
                    ("listener", self.name.clone()),
                    ("flag", flag.to_string()),
                ])
                .inc();
        }
    }

    /// Counts a response by status class and records the time to it.
    pub fn response(&self, status: u16, took: std::time::Duration) {
        let i = usize::from(status / 100).saturating_sub(1).min(4);
        if let Some(c) = self.responses.get(i) {
            c.inc();
        }
        self.duration.observe(took);
    }

    /// The gRPC status counters of this listener for `cluster` (`none` for answers that reached
    /// no cluster). A lock-free map read after the first gRPC response of each cluster; that
    /// first one creates the cluster's 18 series.
    pub(crate) fn grpc_statuses(&self, cluster: &str) -> GrpcStatusCounters {
        if let Some(c) = self.grpc_by_cluster.load().get(cluster) {
            return c.clone();
        }
        let owner = vec![
            ("listener", self.name.clone()),
            ("cluster", cluster.to_string()),
        ];
        let label = if self.budget.admit("grpc_responses", &owner) {
            cluster
        } else {
            "other"
        };
        let made = GrpcStatusCounters(std::sync::Arc::new(GrpcStatusInner {
            cluster: cluster.into(),
            counters: GRPC_STATUSES.map(|code| {
                self.grpc_responses.get_or_create(&vec![
                    ("listener", self.name.clone()),
                    ("cluster", label.to_string()),
                    ("grpc_status", code.to_string()),
                ])
            }),
        }));
        self.grpc_by_cluster.rcu(|map| {
            let mut map = std::collections::HashMap::clone(map);
            map.entry(cluster.into()).or_insert_with(|| made.clone());
            map
        });
        made
    }

    /// Counts a response by request method and status code: a lock-free map read; the first
    /// response of each method and code resolves its counter (within the cardinality budget).
    pub fn response_code(&self, method: MethodIndex, status: u16) {
        let m = usize::from(method.0);
        let key = (m as u32) << 16 | u32::from(status);
        if let Some(c) = self.codes.load().get(&key) {
            c.inc();
            return;
        }
        let labels = vec![
            ("listener", self.name.clone()),
            ("method", METHODS.get(m).unwrap_or(&"other").to_string()),
            ("code", status.to_string()),
        ];
        let labels = if self.budget.admit("downstream_response_codes", &labels) {
            labels
        } else {
            vec![
                ("listener", self.name.clone()),
                ("method", "other".to_string()),
                ("code", "other".to_string()),
            ]
        };
        let c = self.response_codes.get_or_create(&labels);
        c.inc();
        self.codes.rcu(|map| {
            let mut map = std::collections::HashMap::clone(map);
            map.entry(key).or_insert_with(|| c.clone());
            map
        });
    }

    /// Counts a gRPC-Web request by mode (`binary` or `text`).
    pub fn grpc_web_request(&self, mode: &str) {
        self.grpc_web_requests
            .get_or_create(&vec![
                ("listener", self.name.clone()),
                ("mode", mode.to_string()),
            ])
            .inc();
    }

    /// Counts a rejection (a listed reason's counter was created with the listener; an
    /// unlisted one is looked up).
    pub fn rejected(&self, reason: &'static str) {
        if !self.rejected_by.try_inc(reason) {
            self.rejected
                .get_or_create(&vec![
                    ("listener", self.name.clone()),
                    ("reason", reason.to_string()),
                ])
                .inc();
        }
    }
}

/// The `reason` labels of `sluice_downstream_rejected_total` (requests and connections refused
/// as protocol violations or for exceeding a limit).
pub const REJECTION_REASONS: [&str; 21] = [
    "bad_chunked_body",
    "bad_request",
    "connect",
    "content_length_with_transfer_encoding",
    "duplicate_query_parameter",
    "graceful_close_timeout",
    "header_timeout",
    "header_with_underscore",
    "headers_too_large",
    "incomplete_body",
    "invalid_field_value",
    "invalid_grpc_web_text",
    "invalid_host",
    "invalid_path",
    "invalid_trailer",
    "misdirected_request",
    "missing_host",
    "multiple_host",
    "premature_resets",
    "stream_idle_timeout",
    "unsupported_transfer_coding",
];

/// The `kind` labels of `sluice_upstream_errors_total`.
pub const UPSTREAM_ERROR_KINDS: [&str; 3] = ["request", "timeout", "invalid_response"];

/// The `flag` labels of `sluice_downstream_error_responses_total` (Envoy's response flags).
pub const ERROR_FLAGS: [&str; 12] = [
    "DPE", "FI", "NC", "NR", "RBAC", "SI", "UC", "UF", "UH", "UO", "UPE", "UT",
];

/// The `reason` labels of `sluice_upstream_retries_total`.
pub const RETRY_REASONS: [&str; 6] = [
    "connect_failure",
    "refused_stream",
    "reset",
    "per_try_timeout",
    "status",
    "grpc_status",
];
/// The `limit` labels of `sluice_upstream_retry_limited_total`.
pub const RETRY_LIMITS: [&str; 5] = [
    "num_retries",
    "budget",
    "circuit_breaker",
    "replay_limit",
    "retry_after",
];
/// The `breaker` labels of `sluice_upstream_overflows_total`.
pub const BREAKERS: [&str; 4] = [
    "max_connections",
    "max_pending_requests",
    "max_requests",
    "max_retries",
];
/// The `reason` labels of `sluice_outlier_ejections_total`.
pub const EJECTION_REASONS: [&str; 3] = [
    "consecutive_5xx",
    "consecutive_gateway_failure",
    "failure_percentage",
];

/// Counters of one cluster for each of `values` (pre-initialised, so they show from the start).
fn labelled<const N: usize>(
    family: &Family<Labels, Counter>,
    (owner_key, owner): (&'static str, &str),
    key: &'static str,
    values: &[&'static str; N],
) -> LabelledCounters<N> {
    LabelledCounters {
        values: *values,
        counters: values.map(|v| {
            family.get_or_create(&vec![(owner_key, owner.to_string()), (key, v.to_string())])
        }),
    }
}

/// A cluster's or listener's counters of one family, one per label value, resolved once.
#[derive(Clone, Debug)]
pub struct LabelledCounters<const N: usize> {
    values: [&'static str; N],
    counters: [Counter; N],
}

impl<const N: usize> LabelledCounters<N> {
    /// Counters registered nowhere (for a resource that exports no such series).
    fn detached(values: [&'static str; N]) -> Self {
        LabelledCounters {
            values,
            counters: std::array::from_fn(|_| Counter::default()),
        }
    }

    /// Counts one for `value` (one of the pre-initialised values; others are ignored).
    pub fn inc(&self, value: &str) {
        self.inc_by(value, 1);
    }

    /// Counts `n` for `value` (one of the pre-initialised values; others are ignored).
    pub fn inc_by(&self, value: &str, n: u64) {
        if let Some(c) = self
            .values
            .iter()
            .position(|v| *v == value)
            .and_then(|i| self.counters.get(i))
        {
            c.inc_by(n);
        }
    }

    /// Counts one for `value`; false (nothing counted) when it is not one of the values.
    pub fn try_inc(&self, value: &str) -> bool {
        match self
            .values
            .iter()
            .position(|v| *v == value)
            .and_then(|i| self.counters.get(i))
        {
            Some(c) => {
                c.inc();
                true
            }
            None => false,
        }
    }

    /// The count for `value`.
    pub fn get(&self, value: &str) -> u64 {
        self.values
            .iter()
            .position(|v| *v == value)
            .and_then(|i| self.counters.get(i))
            .map_or(0, Counter::get)
    }
}

/// A route's handles, resolved when its table is compiled (one pointer per route).
#[derive(Clone, Debug)]
pub struct RouteMetrics(std::sync::Arc<RouteHandles>);

/// The handles behind [`RouteMetrics`].
#[derive(Debug)]
pub struct RouteHandles {
    responses: [Counter; 5],
    duration: LatencyHistogram,
}

impl RouteMetrics {
    /// Counts a response by status class and records the time to it.
    pub fn response(&self, status: u16, took: std::time::Duration) {
        let i = usize::from(status / 100).saturating_sub(1).min(4);
        if let Some(c) = self.0.responses.get(i) {
            c.inc();
        }
        self.0.duration.observe(took);
    }
}

/// Per-cluster handles.
#[derive(Clone, Debug)]
pub struct ClusterMetrics {
    /// Requests sent.
    pub requests: Counter,
    /// Upstream responses by status class.
    responses: [Counter; 5],
    /// Time from sending an attempt to its response head.
    duration: LatencyHistogram,
    /// Connections opened.
    pub connections: Counter,
    /// Failed connection attempts.
    pub connect_failures: Counter,
    /// Open connections (gauge) and closed ones.
    pub(crate) connections_active: Gauge,
    pub(crate) connections_closed: Counter,
    /// Bytes written to and read from endpoints.
    pub(crate) bytes_sent: Counter,
    pub(crate) bytes_received: Counter,
    errors: LabelledCounters<{ UPSTREAM_ERROR_KINDS.len() }>,
    /// Retries by reason.
    pub retries: LabelledCounters<6>,
    /// Retries refused by a limit.
    pub retry_limited: LabelledCounters<5>,
    /// Circuit-breaker overflows by breaker.
    pub overflows: LabelledCounters<4>,
    /// Outlier ejections by reason.
    pub ejections: LabelledCounters<3>,
    /// Endpoints ejected now.
    pub ejected: Gauge,
    /// Load-balancing gauges and counters.
    pub lb: LbMetrics,
    tls: TlsMetrics,
    name: String,
}

impl ClusterMetrics {
    /// Counts an endpoint's response by status class and records the time to it.
    pub fn response(&self, status: u16, took: std::time::Duration) {
        let i = usize::from(status / 100).saturating_sub(1).min(4);
        if let Some(c) = self.responses.get(i) {
            c.inc();
        }
        self.duration.observe(took);
    }

    /// The TLS families.
    pub(crate) fn tls(&self) -> &TlsMetrics {
        &self.tls
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Counts an upstream failure by kind (one of [`UPSTREAM_ERROR_KINDS`]).
    pub fn error(&self, kind: &'static str) {
        self.errors.inc(kind);
    }
}

/// The balancing metrics of one cluster .
#[derive(Clone, Debug, Default)]
pub struct LbMetrics {
    /// 1 while the cluster balances across all endpoints ignoring health (panic threshold).
    pub panic: Gauge,
    /// 1 while only the local zone's endpoints are picked.
    pub local_zone: Gauge,
    /// Picks by bounded-load hashing that passed over an endpoint with more than its share in
    /// flight.
    pub overload_skips: Counter,
}

/// The DNS source's metric family: `sluice_dns_resolutions_total{cluster, result}`.
#[derive(Clone, Debug, Default)]
pub struct DnsMetrics {
    resolutions: Family<Vec<(&'static str, String)>, Counter>,
}

/// One cluster's resolution counters (created, and so exported at 0, when its task starts).
#[derive(Clone, Debug)]
pub(crate) struct DnsCounters {
    pub(crate) success: Counter,
    pub(crate) failure: Counter,
}

impl DnsMetrics {
    /// Registers the family.
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "dns_resolutions",
            "DNS resolutions of a DNS-discovered cluster's names, by cluster and result (success or failure; a failure keeps the last good endpoints)",
            self.resolutions.clone(),
        );
    }

    pub(crate) fn counters(&self, cluster: &str) -> DnsCounters {
        let get = |result: &str| {
            self.resolutions.get_or_create(&vec![
                ("cluster", cluster.to_string()),
                ("result", result.to_string()),
            ])
        };
        DnsCounters {
            success: get("success"),
            failure: get("failure"),
        }
    }
}

/// The xDS client's metrics: `sluice_xds_connected`, `sluice_xds_updates_total{type, result}`,
/// `sluice_xds_reconnects_total`.
#[derive(Clone, Debug, Default)]
pub struct XdsMetrics {
    /// 1 while an ADS stream is open.
    pub(crate) connected: Gauge,
    updates: Family<Vec<(&'static str, String)>, Counter>,
    /// Streams opened after the first (each reconnection attempt that connected or not).
    pub(crate) reconnects: Counter,
}

impl XdsMetrics {
    /// Registers the families.
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "xds_connected",
            "1 while the ADS stream to the xDS server is open",
            self.connected.clone(),
        );
        registry.register(
            "xds_updates",
            "xDS responses answered, by type (secret, cluster, endpoints, route_table, listener) and result (ack or nack)",
            self.updates.clone(),
        );
        registry.register(
            "xds_reconnects",
            "Attempts to re-open the ADS stream after a failure or disconnection",
            self.reconnects.clone(),
        );
    }

    /// Creates every type × result series at 0 (when the xDS client starts: a proxy without
    /// xDS exports none).
    pub(crate) fn preinitialize(&self) {
        for kind in ["secret", "cluster", "endpoints", "route_table", "listener"] {
            for result in ["ack", "nack"] {
                let _ = self.updates.get_or_create(&vec![
                    ("type", kind.to_string()),
                    ("result", result.to_string()),
                ]);
            }
        }
    }

    /// Counts one response of `kind` answered with `result` (`ack` or `nack`).
    pub(crate) fn update(&self, kind: &str, result: &'static str) {
        self.updates
            .get_or_create(&vec![
                ("type", kind.to_string()),
                ("result", result.to_string()),
            ])
            .inc();
    }
}

/// The fault filter's metric family: `sluice_fault_injected_total{listener, kind}`.
#[derive(Clone, Debug, Default)]
pub struct FaultMetrics {
    injected: Family<Vec<(&'static str, String)>, Counter>,
}

/// One listener's fault counters (created with the listener, so exported at 0).
#[derive(Clone, Debug, Default)]
pub struct FaultCounters {
    pub(crate) delay: Counter,
    pub(crate) abort: Counter,
}

impl FaultMetrics {
    /// Registers the family.
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "fault_injected",
            "Faults injected by the fault filter, by listener and kind (delay: DI, abort: FI)",
            self.injected.clone(),
        );
    }

    /// The counters of listener `name`.
    pub(crate) fn counters(&self, name: &str) -> FaultCounters {
        let get = |kind: &str| {
            self.injected.get_or_create(&vec![
                ("listener", name.to_string()),
                ("kind", kind.to_string()),
            ])
        };
        FaultCounters {
            delay: get("delay"),
            abort: get("abort"),
        }
    }
}

/// TLS and identity metrics: `sluice_downstream_tls_handshakes_total{listener, result}`,
/// `sluice_upstream_tls_handshakes_total{cluster, result}` (`ok`, `failed`, `timeout`),
/// `sluice_tls_reloads_total{result}` (`success`, `failure`),
/// `sluice_tls_certificate_expiry_seconds{cert}` (seconds until the certificate in that file
/// expires; negative once expired) and `sluice_authz_denied_total{listener, scope}` (`listener`
/// or `route`).
#[derive(Clone, Debug, Default)]
pub struct TlsMetrics {
    downstream_handshakes: Family<Labels, Counter>,
    upstream_handshakes: Family<Labels, Counter>,
    reloads: Family<Labels, Counter>,
    expiry: Family<Labels, Gauge>,
    expiry_names: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    authz_denied: Family<Labels, Counter>,
}

impl TlsMetrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "downstream_tls_handshakes",
            "TLS handshakes with clients, by listener and result (ok, failed, timeout)",
            self.downstream_handshakes.clone(),
        );
        r.register(
            "upstream_tls_handshakes",
            "TLS handshakes with endpoints, by cluster and result (ok, failed, timeout)",
            self.upstream_handshakes.clone(),
        );
        r.register(
            "tls_reloads",
            "Certificate, key or CA file changes applied (success) or rejected, keeping the last good files (failure)",
            self.reloads.clone(),
        );
        r.register(
            "tls_certificate_expiry_seconds",
            "Seconds until the certificate in this file expires (negative once expired), for every certificate in use",
            self.expiry.clone(),
        );
        r.register(
            "authz_denied",
            "Requests refused by identity authorization, by listener and scope (listener or route)",
            self.authz_denied.clone(),
        );
    }

    /// Counts an upstream handshake.
    pub(crate) fn upstream_handshake(&self, cluster: &str, result: &'static str) {
        self.upstream_handshakes
            .get_or_create(&vec![
                ("cluster", cluster.to_string()),
                ("result", result.to_string()),
            ])
            .inc();
    }

    pub(crate) fn reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.reloads
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
    }

    /// Sets the expiry of every certificate in use (by file) and drops the others.
    pub(crate) fn set_expiry(&self, live: std::collections::HashMap<String, i64>) {
        let mut names = self.expiry_names.lock().unwrap_or_else(|p| p.into_inner());
        for old in names.iter().filter(|n| !live.contains_key(*n)) {
            self.expiry.remove(&vec![("cert", old.clone())]);
        }
        names.clear();
        for (cert, secs) in live {
            self.expiry
                .get_or_create(&vec![("cert", cert.clone())])
                .set(secs);
            names.push(cert);
        }
    }
}

impl ListenerMetrics {
    /// Counts a client handshake (`ok`, `failed`, `timeout`).
    pub(crate) fn tls_handshake(&self, result: &'static str) {
        self.tls
            .downstream_handshakes
            .get_or_create(&vec![
                ("listener", self.name.clone()),
                ("result", result.to_string()),
            ])
            .inc();
    }

    /// Counts a request refused by authorization (`listener` or `route` scope).
    pub(crate) fn authz_denied(&self, scope: &'static str) {
        self.tls
            .authz_denied
            .get_or_create(&vec![
                ("listener", self.name.clone()),
                ("scope", scope.to_string()),
            ])
            .inc();
    }
}
/// TLS passthrough's metric families: `sluice_tcp_sni_routed_total{listener, cluster}`
/// (connections a server name routed) and `sluice_tcp_sni_unmatched_total{listener, reason,
/// action}` (connections no server name routed, sent to the default cluster or closed).
#[derive(Clone, Debug, Default)]
pub struct SniMetrics {
    routed: Family<Labels, Counter>,
    unmatched: Family<Labels, Counter>,
}

/// The `reason` labels of `sluice_tcp_sni_unmatched_total`.
pub const SNI_UNMATCHED_REASONS: [&str; 6] = [
    "no_sni",
    "no_match",
    "not_tls",
    "malformed",
    "timeout",
    "client_closed",
];

/// One listener's unmatched counters, one per reason (created with the listener, so exported
/// at 0).
pub type SniCounters = LabelledCounters<6>;

impl SniMetrics {
    /// Registers the families.
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "tcp_sni_routed",
            "TLS passthrough connections routed by their server name (SNI), by listener and cluster",
            self.routed.clone(),
        );
        registry.register(
            "tcp_sni_unmatched",
            "TLS passthrough connections no server name routed, by listener, reason (no_sni, no_match, not_tls, malformed, timeout, client_closed) and action (default: to the listener's cluster; closed: no default, or client_closed: the client ended or reset the connection before sending a byte)",
            self.unmatched.clone(),
        );
    }

    /// The routed counter of `cluster` on `listener`.
    pub(crate) fn routed(&self, listener: &str, cluster: &str) -> Counter {
        self.routed.get_or_create(&vec![
            ("listener", listener.to_string()),
            ("cluster", cluster.to_string()),
        ])
    }

    /// The unmatched counters of `listener`, whose unmatched connections meet `action`.
    pub(crate) fn unmatched(&self, listener: &str, action: &'static str) -> SniCounters {
        LabelledCounters {
            values: SNI_UNMATCHED_REASONS,
            counters: SNI_UNMATCHED_REASONS.map(|r| {
                // A client that left before a byte is never forwarded.
                let action = if r == "client_closed" {
                    "closed"
                } else {
                    action
                };
                self.unmatched.get_or_create(&vec![
                    ("listener", listener.to_string()),
                    ("reason", r.to_string()),
                    ("action", action.to_string()),
                ])
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This crate's protobuf writer and prometheus-client's encoder agree message for message
    /// (families sorted by name, series by labels: both follow hash-map order).
    #[test]
    fn own_protobuf_writer_matches_the_library_encoder() {
        use prometheus_client::encoding::prometheus_protobuf::encode;
        use prometheus_client::encoding::prometheus_protobuf::prometheus_data_model::MetricFamily;
        use prost::Message;
        use std::time::Duration;
        let m = Metrics::new();
        let l = m.listener("web");
        l.response(200, Duration::from_micros(700));
        l.response(503, Duration::from_secs(30));
        l.active.inc();
        l.active_requests.dec();
        let c = m.cluster("backend");
        c.requests.inc_by(3);
        c.response(200, Duration::from_nanos(1));
        c.response(404, Duration::from_millis(12));
        c.response(500, Duration::from_millis(14));
        let _idle = m.cluster("idle");
        m.route("t", "vh", "r")
            .response(200, Duration::from_secs(20_000));
        let _ = m.route_overflow("r", "max_requests");
        m.config_applied(7);
        let normalise = |mut f: Vec<MetricFamily>| {
            f.sort_by(|a, b| a.name.cmp(&b.name));
            for f in &mut f {
                f.metric.sort_by_key(|m| format!("{:?}", m.label));
            }
            f
        };
        let _native = crate::latency::NativeScope::enter();
        let mut ours = Vec::new();
        protobuf::write(&mut ours, &m.own);
        let mut wire = &ours[..];
        let mut got = Vec::new();
        while !wire.is_empty() {
            got.push(MetricFamily::decode_length_delimited(&mut wire).unwrap());
        }
        assert!(got.len() > 30, "{}", got.len());
        got.extend(encode(&m.rest).unwrap());
        let want = normalise(encode(&m.registry).unwrap());
        let got = normalise(got);
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g, w);
        }
        // The whole exposition parses, the process families included.
        let all = m.encode_protobuf();
        let mut wire = &all[..];
        let mut n = 0;
        while !wire.is_empty() {
            MetricFamily::decode_length_delimited(&mut wire).unwrap();
            n += 1;
        }
        assert!(n > want.len(), "{n}");
    }

    #[test]
    fn known_label_sets_exist_at_zero_and_tcp_listeners_have_no_http_series() {
        let m = Metrics::new();
        let _web = m.listener("web");
        let _tcp = m.tcp_listener("raw");
        let _cluster = m.cluster("c");
        let text = m.encode_text();
        for kind in UPSTREAM_ERROR_KINDS {
            let line = format!("sluice_upstream_errors_total{{cluster=\"c\",kind=\"{kind}\"}} 0");
            assert!(text.contains(&line), "{line} missing");
        }
        // Listed labels count through the handles made with the listener; others still count.
        let web = m.listener("counted");
        web.rejected("missing_host");
        web.error("NR");
        let unlisted = "not_listed";
        web.rejected(unlisted);
        let counted = m.encode_text();
        for line in [
            "sluice_downstream_rejected_total{listener=\"counted\",reason=\"missing_host\"} 1",
            "sluice_downstream_error_responses_total{listener=\"counted\",flag=\"NR\"} 1",
            "sluice_downstream_rejected_total{listener=\"counted\",reason=\"not_listed\"} 1",
        ] {
            assert!(counted.contains(line), "{line} missing");
        }
        for reason in REJECTION_REASONS {
            let line = format!(
                "sluice_downstream_rejected_total{{listener=\"web\",reason=\"{reason}\"}} 0"
            );
            assert!(text.contains(&line), "{line} missing");
        }
        for flag in ERROR_FLAGS {
            let line = format!(
                "sluice_downstream_error_responses_total{{listener=\"web\",flag=\"{flag}\"}} 0"
            );
            assert!(text.contains(&line), "{line} missing");
        }
        for line in [
            "sluice_config_reloads_total{result=\"success\"} 0",
            "sluice_config_reloads_total{result=\"failure\"} 0",
            "sluice_tls_reloads_total{result=\"failure\"} 0",
            "sluice_downstream_connections_total{listener=\"raw\"} 0",
            "sluice_downstream_bytes_total{listener=\"raw\",direction=\"sent\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing");
        }
        let raw_http: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.contains("listener=\"raw\"")
                    && !l.starts_with("sluice_downstream_connections")
                    && !l.starts_with("sluice_downstream_bytes")
            })
            .collect();
        assert!(
            raw_http.is_empty(),
            "HTTP series on a TCP listener: {raw_http:#?}"
        );
    }

    /// Every rejection reason the code counts is in [`REJECTION_REASONS`] (so it is
    /// pre-created): the literals passed to `rejected(…)` and returned by
    /// `ProxyError::rejection`.
    #[test]
    fn every_counted_rejection_reason_is_listed() {
        fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    out.push(std::fs::read_to_string(&p).unwrap());
                }
            }
        }
        let mut sources = Vec::new();
        walk(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut sources,
        );
        let mut found = std::collections::BTreeSet::new();
        for text in &sources {
            for part in text.split("rejected(\"").skip(1) {
                found.insert(part.split('"').next().unwrap_or_default().to_string());
            }
        }
        let error_rs = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/error.rs"),
        )
        .unwrap();
        let body = error_rs
            .split("pub fn rejection(&self)")
            .nth(1)
            .and_then(|b| b.split("pub fn flag(&self)").next())
            .unwrap();
        for part in body.split("Some(\"").skip(1) {
            found.insert(part.split('"').next().unwrap_or_default().to_string());
        }
        for reason in ["headers_too_large", "bad_request"] {
            found.insert(reason.into()); // hyper's parse errors (http/server.rs `classify`)
        }
        assert!(found.len() > 15, "{found:?}");
        for r in &found {
            assert!(
                REJECTION_REASONS.contains(&r.as_str()),
                "`{r}` is counted but not listed"
            );
        }
    }

    #[test]
    fn label_sets_beyond_the_cardinality_budget_fold_into_other_and_are_counted() {
        let m = Metrics::with_budget(2);
        let l = m.listener("l");
        let get = MethodIndex::of(&http::Method::GET);
        let post = MethodIndex::of(&http::Method::POST);
        let ext = MethodIndex::of(&http::Method::from_bytes(b"PURGE").unwrap());
        l.response_code(get, 200);
        l.response_code(get, 404);
        // The third label set folds (once counted), and stays folded.
        l.response_code(post, 500);
        l.response_code(post, 500);
        l.response_code(ext, 200);
        l.response_code(get, 200);
        // Routes and gRPC clusters have their own budgets.
        m.route("t", "v", "a")
            .response(200, std::time::Duration::ZERO);
        m.route("t", "v", "b")
            .response(200, std::time::Duration::ZERO);
        m.route("t", "v", "c")
            .response(503, std::time::Duration::ZERO);
        // A recompiled route keeps its series (it was admitted already).
        m.route("t", "v", "a")
            .response(200, std::time::Duration::ZERO);
        l.grpc_statuses("x").inc("0");
        l.grpc_statuses("y").inc("0");
        l.grpc_statuses("z").inc("14");
        let text = m.encode_text();
        let v = |series: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(series)?.trim().parse::<f64>().ok())
                .unwrap_or_else(|| panic!("{series} missing from\n{text}"))
        };
        assert_eq!(
            v(r#"sluice_downstream_response_codes_total{listener="l",method="GET",code="200"}"#),
            2.0
        );
        assert_eq!(
            v(
                r#"sluice_downstream_response_codes_total{listener="l",method="other",code="other"}"#
            ),
            3.0
        );
        assert!(!text.contains(r#"method="POST""#), "{text}");
        assert_eq!(
            v(r#"sluice_metric_series_folded_total{family="downstream_response_codes"}"#),
            2.0
        );
        assert_eq!(
            v(
                r#"sluice_route_responses_total{route_table="t",virtual_host="v",route="a",class="2xx"}"#
            ),
            2.0
        );
        assert_eq!(
            v(
                r#"sluice_route_responses_total{route_table="other",virtual_host="other",route="other",class="5xx"}"#
            ),
            1.0
        );
        assert_eq!(
            v(r#"sluice_metric_series_folded_total{family="route_responses"}"#),
            1.0
        );
        assert_eq!(
            v(r#"sluice_grpc_responses_total{listener="l",cluster="other",grpc_status="14"}"#),
            1.0
        );
        assert_eq!(
            v(r#"sluice_metric_series_folded_total{family="grpc_responses"}"#),
            1.0
        );
    }

    #[test]
    fn grpc_statuses_are_resolved_once_and_unknown_codes_fold_into_other() {
        let m = Metrics::new();
        let l = m.listener("main");
        let up = l.grpc_statuses("up");
        up.inc("0");
        up.inc("14");
        // Out of range, signed, or not a number: one `other` series, not one per value.
        for bad in ["17", "255", "+3", "-1", "abc", ""] {
            l.grpc_statuses("up").inc(bad);
        }
        let text = m.encode_text();
        let line = |status: &str| {
            format!(
                "sluice_grpc_responses_total{{listener=\"main\",cluster=\"up\",grpc_status=\"{status}\"}}"
            )
        };
        assert!(text.contains(&format!("{} 1\n", line("0"))), "{text}");
        assert!(text.contains(&format!("{} 1\n", line("14"))), "{text}");
        assert!(text.contains(&format!("{} 6\n", line("other"))), "{text}");
        // Every status exists from the first response, at zero.
        assert!(text.contains(&format!("{} 0\n", line("16"))), "{text}");
        assert!(!text.contains("grpc_status=\"17\""), "{text}");
        // The second lookup reads the cached handles.
        assert_eq!(l.grpc_by_cluster.load().len(), 1);
    }
}
