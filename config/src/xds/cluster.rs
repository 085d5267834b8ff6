//! Cluster ↔ `envoy.config.cluster.v3.Cluster` (a STATIC one's inline endpoints through
//! `endpoints.rs`).

use super::endpoints::endpoints;
use super::health::{health_check_mapping, health_check_pb};
use super::tls::{upstream_tls_mapping, upstream_tls_pb};
use super::value::{
    any, apply_metadata, dur, finish, from_dur, host_port, metadata, opt_dur, put, remainder,
    socket_addr, u32v, unany, yv,
};
use super::{DecodeError, FieldError, Fr};
use crate::discovery::{AddressFamily, DiscoveryType};
use crate::{Cluster, ClusterLoadAssignment, LbPolicy, Resource, UpstreamProtocol};
use envoy_types::pb::envoy::config::cluster::v3::{
    self as pbc, CircuitBreakers, OutlierDetection, circuit_breakers::Thresholds, cluster,
};
use envoy_types::pb::envoy::config::core::v3::{
    self as core, AggregatedConfigSource, ConfigSource, config_source,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    self as pbe, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{UInt32Value, UInt64Value};
use serde_yaml_ng::{Mapping, Value};
use std::collections::HashMap;

/// The `typed_extension_protocol_options` key of the upstream HTTP protocol options.
pub(crate) const HTTP_PROTOCOL_OPTIONS: &str =
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

pub(super) fn encode(c: &Cluster) -> pbc::Cluster {
    let mut pb = native(c);
    let full = yv(Cluster {
        endpoints: Vec::new(),
        ..c.clone()
    });
    let native = to_mapping(&pb).unwrap_or_default();
    pb.metadata = metadata(&remainder::<Cluster>(&full, native));
    pb
}

/// The Envoy fields of a cluster.
fn native(c: &Cluster) -> pbc::Cluster {
    let mut pb = pbc::Cluster {
        name: c.name.clone(),
        connect_timeout: Some(dur(c.connect_timeout)),
        per_connection_buffer_limit_bytes: u32v(
            u32::try_from(c.per_connection_buffer_limit_bytes.bytes()).unwrap_or(u32::MAX),
        ),
        ..pbc::Cluster::default()
    };
    // Discovery.
    let kind = match &c.discovery {
        None => {
            pb.eds_cluster_config = Some(cluster::EdsClusterConfig {
                eds_config: Some(ConfigSource {
                    resource_api_version: core::ApiVersion::V3 as i32,
                    config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
                        AggregatedConfigSource {},
                    )),
                    ..ConfigSource::default()
                }),
                service_name: String::new(),
            });
            cluster::DiscoveryType::Eds
        }
        Some(d) => {
            pb.dns_refresh_rate = Some(dur(d.min_refresh));
            pb.dns_resolvers = d
                .resolvers
                .iter()
                .map(|a| super::value::address(*a))
                .collect();
            pb.respect_dns_ttl = true;
            pb.dns_lookup_family = match d.family {
                AddressFamily::Auto => cluster::DnsLookupFamily::All,
                AddressFamily::V4 => cluster::DnsLookupFamily::V4Only,
                AddressFamily::V6 => cluster::DnsLookupFamily::V6Only,
            } as i32;
            let lb_endpoints = if d.kind == DiscoveryType::DnsSrv {
                Vec::new() // no Envoy equivalent: the names travel in Sluice metadata
            } else {
                d.names
                    .iter()
                    .filter_map(|n| crate::DnsName::parse(n, true).ok())
                    .map(|n| dns_endpoint(&n.host, n.port.unwrap_or(0)))
                    .collect()
            };
            pb.load_assignment = Some(pbe::ClusterLoadAssignment {
                cluster_name: c.name.clone(),
                endpoints: vec![LocalityLbEndpoints {
                    lb_endpoints,
                    ..LocalityLbEndpoints::default()
                }],
                ..pbe::ClusterLoadAssignment::default()
            });
            match d.kind {
                DiscoveryType::LogicalDns => cluster::DiscoveryType::LogicalDns,
                DiscoveryType::StrictDns | DiscoveryType::DnsSrv => {
                    cluster::DiscoveryType::StrictDns
                }
            }
        }
    };
    pb.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(kind as i32));
    if c.per_endpoint_stats {
        pb.track_cluster_stats = Some(pbc::TrackClusterStats {
            per_endpoint_stats: true,
            ..Default::default()
        });
    }
    // Balancing.
    let hash_balance_factor = match c.lb_policy {
        LbPolicy::RingHash => c.ring_hash.hash_balance_factor,
        LbPolicy::Maglev => c.maglev.hash_balance_factor,
        _ => None,
    };
    pb.lb_policy = match c.lb_policy {
        // No Envoy enum: the closest load-aware policy; `peak_ewma` is Sluice metadata.
        LbPolicy::PeakEwma | LbPolicy::LeastRequest => cluster::LbPolicy::LeastRequest,
        LbPolicy::RoundRobin => cluster::LbPolicy::RoundRobin,
        LbPolicy::Random => cluster::LbPolicy::Random,
        LbPolicy::RingHash => cluster::LbPolicy::RingHash,
        LbPolicy::Maglev => cluster::LbPolicy::Maglev,
    } as i32;
    pb.lb_config = match c.lb_policy {
        LbPolicy::LeastRequest => Some(cluster::LbConfig::LeastRequestLbConfig(
            cluster::LeastRequestLbConfig {
                choice_count: u32v(c.least_request.choice_count),
                ..Default::default()
            },
        )),
        LbPolicy::RingHash => Some(cluster::LbConfig::RingHashLbConfig(
            cluster::RingHashLbConfig {
                minimum_ring_size: Some(UInt64Value {
                    value: c.ring_hash.minimum_ring_size,
                }),
                maximum_ring_size: Some(UInt64Value {
                    value: c.ring_hash.maximum_ring_size,
                }),
                ..Default::default()
            },
        )),
        LbPolicy::Maglev => Some(cluster::LbConfig::MaglevLbConfig(cluster::MaglevLbConfig {
            table_size: Some(UInt64Value {
                value: c.maglev.table_size,
            }),
        })),
        _ => None,
    };
    pb.common_lb_config = Some(cluster::CommonLbConfig {
        healthy_panic_threshold: Some(Percent {
            value: f64::from(c.panic_threshold),
        }),
        consistent_hashing_lb_config: hash_balance_factor.map(|f| {
            cluster::common_lb_config::ConsistentHashingLbConfig {
                hash_balance_factor: u32v(f),
                ..Default::default()
            }
        }),
        locality_config_specifier: Some(
            cluster::common_lb_config::LocalityConfigSpecifier::ZoneAwareLbConfig(
                cluster::common_lb_config::ZoneAwareLbConfig {
                    routing_enabled: Some(Percent {
                        value: if c.locality.enabled { 100.0 } else { 0.0 },
                    }),
                    min_cluster_size: Some(UInt64Value {
                        value: u64::from(c.locality.min_cluster_size),
                    }),
                    ..Default::default()
                },
            ),
        ),
        ..Default::default()
    });
    // Resilience.
    let b = &c.circuit_breakers;
    pb.circuit_breakers = Some(CircuitBreakers {
        thresholds: vec![Thresholds {
            max_connections: u32v(b.max_connections),
            max_pending_requests: u32v(b.max_pending_requests),
            max_requests: u32v(b.max_requests),
            max_retries: u32v(b.max_retries),
            ..Thresholds::default()
        }],
        ..CircuitBreakers::default()
    });
    let o = &c.outlier_detection;
    if o.enabled {
        let enforce = |n: u32| u32v(if n == 0 { 0 } else { 100 });
        pb.outlier_detection = Some(OutlierDetection {
            consecutive_5xx: u32v(o.consecutive_5xx),
            enforcing_consecutive_5xx: enforce(o.consecutive_5xx),
            consecutive_gateway_failure: u32v(o.consecutive_gateway_failure),
            enforcing_consecutive_gateway_failure: enforce(o.consecutive_gateway_failure),
            failure_percentage_threshold: u32v(o.failure_percentage_threshold),
            enforcing_failure_percentage: enforce(o.failure_percentage_threshold),
            failure_percentage_minimum_hosts: u32v(o.failure_percentage_minimum_hosts),
            failure_percentage_request_volume: u32v(o.failure_percentage_request_volume),
            enforcing_success_rate: u32v(0),
            interval: Some(dur(o.interval)),
            base_ejection_time: Some(dur(o.base_ejection_time)),
            max_ejection_time: Some(dur(o.max_ejection_time)),
            max_ejection_percent: u32v(o.max_ejection_percent),
            ..OutlierDetection::default()
        });
    }
    if let Some(h) = &c.health_checks {
        pb.health_checks = vec![health_check_pb(h)];
    }
    // Protocol and pool.
    use http_protocol_options::UpstreamProtocolOptions as U;
    use http_protocol_options::explicit_http_config::ProtocolConfig as P;
    let h2 = core::Http2ProtocolOptions {
        max_concurrent_streams: u32v(c.pool.max_requests_per_http2_connection),
        ..Default::default()
    };
    let protocol_config = match c.protocol {
        UpstreamProtocol::Http1 => {
            U::ExplicitHttpConfig(http_protocol_options::ExplicitHttpConfig {
                protocol_config: Some(
                    P::HttpProtocolOptions(core::Http1ProtocolOptions::default()),
                ),
            })
        }
        UpstreamProtocol::Http2 => {
            U::ExplicitHttpConfig(http_protocol_options::ExplicitHttpConfig {
                protocol_config: Some(P::Http2ProtocolOptions(h2)),
            })
        }
        UpstreamProtocol::Auto => {
            U::UseDownstreamProtocolConfig(http_protocol_options::UseDownstreamHttpConfig {
                http2_protocol_options: Some(h2),
                ..Default::default()
            })
        }
    };
    let opts = HttpProtocolOptions {
        common_http_protocol_options: Some(core::HttpProtocolOptions {
            idle_timeout: Some(dur(c.pool.idle_timeout)),
            max_connection_duration: c.pool.max_connection_age.map(dur),
            ..Default::default()
        }),
        upstream_protocol_options: Some(protocol_config),
        ..HttpProtocolOptions::default()
    };
    pb.typed_extension_protocol_options =
        HashMap::from([(HTTP_PROTOCOL_OPTIONS.to_string(), any(&opts))]);
    if let Some(t) = &c.tls {
        pb.transport_socket = Some(upstream_tls_pb(t, c.protocol));
    }
    pb
}

fn dns_endpoint(host: &str, port: u16) -> LbEndpoint {
    use core::{SocketAddress, address, socket_address};
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(pbe::Endpoint {
            address: Some(core::Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: host.to_string(),
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
                    ..SocketAddress::default()
                })),
            }),
            ..pbe::Endpoint::default()
        })),
        ..LbEndpoint::default()
    }
}

/// Decodes a cluster (and, for a STATIC one, its inline endpoints).
pub(super) fn decode(pb: &pbc::Cluster) -> Result<Vec<Resource>, DecodeError> {
    let named = |e: FieldError| e.named(&pb.name);
    let mut m = to_mapping(pb).map_err(named)?;
    apply_metadata(&mut m, pb.metadata.as_ref());
    let c: Cluster = finish(m, "metadata.filter_metadata.sluice").map_err(named)?;
    let mut out = Vec::new();
    if is_static(pb) {
        let la = pb.load_assignment.clone().unwrap_or_default();
        let endpoints = endpoints(&la, "load_assignment").map_err(named)?;
        out.push(Resource::Endpoints(ClusterLoadAssignment {
            cluster_name: c.name.clone(),
            endpoints,
        }));
    }
    out.insert(0, Resource::Cluster(c));
    Ok(out)
}

fn is_static(pb: &pbc::Cluster) -> bool {
    // Envoy's default cluster type is STATIC.
    match &pb.cluster_discovery_type {
        None => true,
        Some(cluster::ClusterDiscoveryType::Type(t)) => *t == cluster::DiscoveryType::Static as i32,
        Some(_) => false,
    }
}

/// The model's YAML mapping of a cluster from Envoy's fields alone.
fn to_mapping(pb: &pbc::Cluster) -> Fr<Mapping> {
    let mut m = Mapping::new();
    if pb.name.is_empty() {
        return Err(FieldError::new("name", "is required"));
    }
    put(&mut m, "name", &pb.name);
    // Envoy's default connect timeout is 5s (Sluice's own is 1s).
    let connect_timeout = match &pb.connect_timeout {
        Some(t) => from_dur(t, "connect_timeout")?,
        None => crate::Duration::from_secs(5),
    };
    if connect_timeout.is_zero() {
        return Err(FieldError::new("connect_timeout", "must be positive"));
    }
    put(&mut m, "connect_timeout", connect_timeout);
    if let Some(b) = &pb.per_connection_buffer_limit_bytes {
        put(
            &mut m,
            "per_connection_buffer_limit_bytes",
            crate::ByteSize(u64::from(b.value)),
        );
    }
    // Only `per_endpoint_stats` changes what Sluice exports; the timeout-budget and size
    // histograms Envoy adds are not kept.
    if pb
        .track_cluster_stats
        .as_ref()
        .is_some_and(|t| t.per_endpoint_stats)
    {
        put(&mut m, "per_endpoint_stats", true);
    }
    if pb.lb_subset_config.is_some() {
        return Err(FieldError::new(
            "lb_subset_config",
            "subset load balancing is not supported",
        ));
    }
    if pb.load_balancing_policy.is_some() {
        return Err(FieldError::new(
            "load_balancing_policy",
            "typed load balancing policies are not supported (use lb_policy)",
        ));
    }
    if !pb.filters.is_empty() {
        return Err(FieldError::new(
            "filters[0]",
            "upstream network filters are not supported",
        ));
    }
    // Discovery.
    match &pb.cluster_discovery_type {
        None => {} // STATIC (the default)
        Some(cluster::ClusterDiscoveryType::Type(t)) => {
            let t = cluster::DiscoveryType::try_from(*t)
                .map_err(|_| FieldError::new("type", format!("unknown cluster type {t}")))?;
            match t {
                cluster::DiscoveryType::Static => {}
                cluster::DiscoveryType::Eds => {
                    let service = pb
                        .eds_cluster_config
                        .as_ref()
                        .map(|e| e.service_name.as_str())
                        .unwrap_or_default();
                    if !service.is_empty() && service != pb.name {
                        return Err(FieldError::new(
                            "eds_cluster_config.service_name",
                            "must be empty or the cluster's name (Sluice keys a cluster's \
                             endpoints by the cluster's name)",
                        ));
                    }
                }
                cluster::DiscoveryType::StrictDns | cluster::DiscoveryType::LogicalDns => {
                    m.insert("discovery".into(), Value::Mapping(dns_discovery(pb, t)?));
                }
                other => {
                    return Err(FieldError::new(
                        "type",
                        format!("unsupported cluster type {}", other.as_str_name()),
                    ));
                }
            }
        }
        Some(cluster::ClusterDiscoveryType::ClusterType(c)) => {
            return Err(FieldError::new(
                "cluster_type",
                format!("unsupported custom cluster type `{}`", c.name),
            ));
        }
    }
    // Balancing.
    let policy = cluster::LbPolicy::try_from(pb.lb_policy)
        .map_err(|_| FieldError::new("lb_policy", format!("unknown policy {}", pb.lb_policy)))?;
    let lb = match policy {
        cluster::LbPolicy::RoundRobin => LbPolicy::RoundRobin,
        cluster::LbPolicy::LeastRequest => LbPolicy::LeastRequest,
        cluster::LbPolicy::RingHash => LbPolicy::RingHash,
        cluster::LbPolicy::Random => LbPolicy::Random,
        cluster::LbPolicy::Maglev => LbPolicy::Maglev,
        other => {
            return Err(FieldError::new(
                "lb_policy",
                format!("unsupported policy {}", other.as_str_name()),
            ));
        }
    };
    put(&mut m, "lb_policy", lb);
    let mut lbm = |key: &str, inner: Mapping| {
        m.insert(key.into(), Value::Mapping(inner));
    };
    match &pb.lb_config {
        Some(cluster::LbConfig::LeastRequestLbConfig(c)) => {
            let mut x = Mapping::new();
            if let Some(n) = &c.choice_count {
                put(&mut x, "choice_count", n.value);
            }
            if c.active_request_bias.is_some() || c.slow_start_config.is_some() {
                return Err(FieldError::new(
                    "least_request_lb_config",
                    "active_request_bias and slow_start_config are not supported",
                ));
            }
            lbm("least_request", x);
        }
        Some(cluster::LbConfig::RingHashLbConfig(c)) => {
            let mut x = Mapping::new();
            if let Some(n) = &c.minimum_ring_size {
                put(&mut x, "minimum_ring_size", n.value);
            }
            if let Some(n) = &c.maximum_ring_size {
                put(&mut x, "maximum_ring_size", n.value);
            }
            if let Some(f) = hash_balance_factor(pb) {
                put(&mut x, "hash_balance_factor", f);
            }
            lbm("ring_hash", x);
        }
        Some(cluster::LbConfig::MaglevLbConfig(c)) => {
            let mut x = Mapping::new();
            if let Some(n) = &c.table_size {
                put(&mut x, "table_size", n.value);
            }
            if let Some(f) = hash_balance_factor(pb) {
                put(&mut x, "hash_balance_factor", f);
            }
            lbm("maglev", x);
        }
        Some(_) => {
            return Err(FieldError::new(
                "lb_config",
                "unsupported load balancer config",
            ));
        }
        None => {
            if let Some(f) = hash_balance_factor(pb) {
                let key = if lb == LbPolicy::Maglev {
                    "maglev"
                } else {
                    "ring_hash"
                };
                let mut x = Mapping::new();
                put(&mut x, "hash_balance_factor", f);
                lbm(key, x);
            }
        }
    }
    if let Some(cl) = &pb.common_lb_config {
        if let Some(p) = &cl.healthy_panic_threshold {
            if !(0.0..=100.0).contains(&p.value) || p.value.fract() != 0.0 {
                return Err(FieldError::new(
                    "common_lb_config.healthy_panic_threshold",
                    "must be a whole percentage from 0 to 100",
                ));
            }
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            put(&mut m, "panic_threshold", p.value as u32);
        }
        use cluster::common_lb_config::LocalityConfigSpecifier as L;
        match &cl.locality_config_specifier {
            Some(L::ZoneAwareLbConfig(z)) => {
                let mut x = Mapping::new();
                if let Some(p) = &z.routing_enabled {
                    put(&mut x, "enabled", p.value > 0.0);
                }
                if let Some(n) = &z.min_cluster_size {
                    put(
                        &mut x,
                        "min_cluster_size",
                        u32::try_from(n.value).unwrap_or(u32::MAX),
                    );
                }
                m.insert("locality".into(), Value::Mapping(x));
            }
            Some(L::LocalityWeightedLbConfig(_)) => {
                return Err(FieldError::new(
                    "common_lb_config.locality_weighted_lb_config",
                    "locality weights are not supported",
                ));
            }
            None => {}
        }
    }
    // Resilience.
    // The DEFAULT-priority thresholds (Sluice has one priority; HIGH ones are ignored).
    let default = pb.circuit_breakers.as_ref().and_then(|cb| {
        cb.thresholds
            .iter()
            .find(|t| t.priority == core::RoutingPriority::Default as i32)
    });
    if let Some(t) = default {
        let mut x = Mapping::new();
        let mut set = |k: &str, v: &Option<UInt32Value>| {
            if let Some(v) = v {
                put(&mut x, k, v.value);
            }
        };
        set("max_connections", &t.max_connections);
        set("max_pending_requests", &t.max_pending_requests);
        set("max_requests", &t.max_requests);
        set("max_retries", &t.max_retries);
        m.insert("circuit_breakers".into(), Value::Mapping(x));
    }
    let mut od = Mapping::new();
    match &pb.outlier_detection {
        None => put(&mut od, "enabled", false),
        Some(o) => {
            let mut set = |k: &str, v: &Option<UInt32Value>| {
                if let Some(v) = v {
                    put(&mut od, k, v.value);
                }
            };
            set("consecutive_5xx", &o.consecutive_5xx);
            set(
                "consecutive_gateway_failure",
                &o.consecutive_gateway_failure,
            );
            set(
                "failure_percentage_threshold",
                &o.failure_percentage_threshold,
            );
            set(
                "failure_percentage_minimum_hosts",
                &o.failure_percentage_minimum_hosts,
            );
            set(
                "failure_percentage_request_volume",
                &o.failure_percentage_request_volume,
            );
            set("max_ejection_percent", &o.max_ejection_percent);
            // Envoy's defaults: gateway failures and failure percentage are not enforced.
            if o.enforcing_consecutive_5xx
                .as_ref()
                .is_some_and(|v| v.value == 0)
            {
                put(&mut od, "consecutive_5xx", 0);
            }
            if o.enforcing_consecutive_gateway_failure
                .as_ref()
                .is_none_or(|v| v.value == 0)
            {
                put(&mut od, "consecutive_gateway_failure", 0);
            }
            if o.enforcing_failure_percentage
                .as_ref()
                .is_none_or(|v| v.value == 0)
            {
                put(&mut od, "failure_percentage_threshold", 0);
            }
            for (k, d) in [
                ("interval", &o.interval),
                ("base_ejection_time", &o.base_ejection_time),
                ("max_ejection_time", &o.max_ejection_time),
            ] {
                if let Some(d) = opt_dur(d.as_ref(), &format!("outlier_detection.{k}"))? {
                    put(&mut od, k, d);
                }
            }
        }
    }
    m.insert("outlier_detection".into(), Value::Mapping(od));
    match pb.health_checks.as_slice() {
        [] => {}
        [h] => {
            m.insert(
                "health_checks".into(),
                Value::Mapping(health_check_mapping(h)?),
            );
        }
        [_, ..] => {
            return Err(FieldError::new(
                "health_checks[1]",
                "Sluice supports one health check per cluster",
            ));
        }
    }
    // Protocol.
    for k in pb.typed_extension_protocol_options.keys() {
        if k != HTTP_PROTOCOL_OPTIONS {
            return Err(FieldError::new(
                format!("typed_extension_protocol_options[\"{k}\"]"),
                "unsupported protocol options",
            ));
        }
    }
    if let Some(a) = pb
        .typed_extension_protocol_options
        .get(HTTP_PROTOCOL_OPTIONS)
    {
        let f = format!("typed_extension_protocol_options[\"{HTTP_PROTOCOL_OPTIONS}\"]");
        let o: HttpProtocolOptions = unany(a, &f)?;
        use http_protocol_options::UpstreamProtocolOptions as U;
        use http_protocol_options::explicit_http_config::ProtocolConfig as P;
        let mut pool = Mapping::new();
        if let Some(c) = &o.common_http_protocol_options {
            let cp = format!("{f}.common_http_protocol_options");
            if let Some(d) = opt_dur(c.idle_timeout.as_ref(), &format!("{cp}.idle_timeout"))? {
                put(&mut pool, "idle_timeout", d);
            }
            let age = format!("{cp}.max_connection_duration");
            if let Some(d) = opt_dur(c.max_connection_duration.as_ref(), &age)? {
                put(&mut pool, "max_connection_age", d);
            }
        }
        let mut h2_streams = |h2: Option<&core::Http2ProtocolOptions>| {
            if let Some(n) = h2.and_then(|h| h.max_concurrent_streams.as_ref()) {
                put(&mut pool, "max_requests_per_http2_connection", n.value);
            }
        };
        let p = match &o.upstream_protocol_options {
            None => UpstreamProtocol::Http1,
            Some(U::UseDownstreamProtocolConfig(d)) => {
                h2_streams(d.http2_protocol_options.as_ref());
                UpstreamProtocol::Auto
            }
            Some(U::ExplicitHttpConfig(e)) => match &e.protocol_config {
                Some(P::Http2ProtocolOptions(h)) => {
                    h2_streams(Some(h));
                    UpstreamProtocol::Http2
                }
                Some(P::HttpProtocolOptions(_)) | None => UpstreamProtocol::Http1,
                Some(P::Http3ProtocolOptions(_)) => {
                    return Err(FieldError::new(
                        format!("{f}.explicit_http_config.http3_protocol_options"),
                        "HTTP/3 upstreams are not supported",
                    ));
                }
            },
            Some(U::AutoConfig(_)) => {
                return Err(FieldError::new(
                    format!("{f}.auto_config"),
                    "ALPN-negotiated upstream protocol is not supported",
                ));
            }
        };
        put(&mut m, "protocol", p);
        if !pool.is_empty() {
            m.insert("pool".into(), Value::Mapping(pool));
        }
    }
    if let Some(ts) = &pb.transport_socket {
        m.insert(
            "tls".into(),
            Value::Mapping(upstream_tls_mapping(ts, "transport_socket")?),
        );
    }
    Ok(m)
}

fn hash_balance_factor(pb: &pbc::Cluster) -> Option<u32> {
    pb.common_lb_config
        .as_ref()?
        .consistent_hashing_lb_config
        .as_ref()?
        .hash_balance_factor
        .as_ref()
        .map(|v| v.value)
}

fn dns_discovery(pb: &pbc::Cluster, t: cluster::DiscoveryType) -> Fr<Mapping> {
    let mut d = Mapping::new();
    put(
        &mut d,
        "type",
        if t == cluster::DiscoveryType::LogicalDns {
            DiscoveryType::LogicalDns
        } else {
            DiscoveryType::StrictDns
        },
    );
    let mut names = Vec::new();
    if let Some(la) = &pb.load_assignment {
        for (i, l) in la.endpoints.iter().enumerate() {
            for (j, e) in l.lb_endpoints.iter().enumerate() {
                let f =
                    format!("load_assignment.endpoints[{i}].lb_endpoints[{j}].endpoint.address");
                let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                    return Err(FieldError::new(f, "is required"));
                };
                let (host, port) = host_port(ep.address.as_ref(), &f)?;
                names.push(if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                });
            }
        }
    }
    put(&mut d, "names", names);
    let mut resolvers = Vec::new();
    for (i, a) in pb.dns_resolvers.iter().enumerate() {
        resolvers.push(socket_addr(Some(a), &format!("dns_resolvers[{i}]"))?);
    }
    if !resolvers.is_empty() {
        put(&mut d, "resolvers", resolvers);
    }
    if pb.typed_dns_resolver_config.is_some() || pb.dns_resolution_config.is_some() {
        return Err(FieldError::new(
            "typed_dns_resolver_config",
            "resolver extensions are not supported (list the DNS servers in `dns_resolvers`)",
        ));
    }
    if let Some(r) = opt_dur(pb.dns_refresh_rate.as_ref(), "dns_refresh_rate")? {
        put(&mut d, "min_refresh", r);
    }
    let family = cluster::DnsLookupFamily::try_from(pb.dns_lookup_family).unwrap_or_default();
    put(
        &mut d,
        "family",
        match family {
            cluster::DnsLookupFamily::V4Only => AddressFamily::V4,
            cluster::DnsLookupFamily::V6Only => AddressFamily::V6,
            _ => AddressFamily::Auto,
        },
    );
    Ok(d)
}
