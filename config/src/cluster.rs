//! Clusters: named groups of upstream endpoints and how to talk to them (Envoy `Cluster` with a
//! static `ClusterLoadAssignment`).

use crate::resilience::{CircuitBreakers, OutlierDetection, RetryBudget};
use crate::units::{ByteSize, Duration};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;

/// An upstream service.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// Unique name, referenced by routes and TCP listeners.
    pub name: String,
    /// Protocol spoken to the endpoints. Default `http1`.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// Time allowed to establish a TCP connection to an endpoint. Default `1s`.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// How an endpoint is picked for each request. Default `peak_ewma`.
    #[serde(default)]
    pub lb_policy: LbPolicy,
    /// Peak-EWMA settings (`lb_policy: peak_ewma`).
    #[serde(default)]
    pub peak_ewma: crate::lb::PeakEwmaSettings,
    /// Least-request settings (`lb_policy: least_request`).
    #[serde(default)]
    pub least_request: crate::lb::LeastRequestSettings,
    /// Ring-hash settings (`lb_policy: ring_hash`).
    #[serde(default)]
    pub ring_hash: crate::lb::RingHashSettings,
    /// Maglev settings (`lb_policy: maglev`).
    #[serde(default)]
    pub maglev: crate::lb::MaglevSettings,
    /// Below this percentage of healthy endpoints, balance across all endpoints ignoring health
    /// (Envoy `healthy_panic_threshold`); 0 disables. Default 50.
    #[serde(default = "crate::lb::default_panic_threshold")]
    pub panic_threshold: u32,
    /// Preference for endpoints in the proxy's own zone (`node.zone`).
    #[serde(default)]
    pub locality: crate::lb::LocalitySettings,
    /// Connection pool settings.
    #[serde(default)]
    pub pool: PoolSettings,
    /// Most bytes read ahead from one upstream connection (Envoy
    /// `per_connection_buffer_limit_bytes`): hyper's HTTP/1.1 read buffer, which must also hold
    /// the whole response head (so it bounds the upstream's response head too), and the
    /// HTTP/2 stream window and send buffer (a stream window is never set below the protocol's
    /// 65535). While the client does not take the response, the upstream is paused once this
    /// much is read. At least `8KiB`. Default `64KiB` (room for Envoy's default 60KiB header
    /// limit; Envoy's edge guidance is `32KiB`).
    #[serde(default = "default_cluster_buffer_limit")]
    pub per_connection_buffer_limit_bytes: ByteSize,
    /// Active health checking of the endpoints (see `HealthCheck`). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_checks: Option<crate::health::HealthCheck>,
    /// The endpoints: `127.0.0.1:9001` or `{ address: 127.0.0.1:9002, weight: 2 }`. Required
    /// unless `discovery` finds them in DNS.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// Find the endpoints in DNS instead of listing them (`strict_dns`, `logical_dns`,
    /// `dns_srv`). Default: none (static `endpoints`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<crate::discovery::Discovery>,
    /// How many retries the cluster's routes may add (on by default).
    #[serde(default)]
    pub retry_budget: RetryBudget,
    /// Thresholds beyond which requests get 503 (`UO`) at once.
    #[serde(default)]
    pub circuit_breakers: CircuitBreakers,
    /// Ejection of endpoints that keep failing (on by default).
    #[serde(default)]
    pub outlier_detection: OutlierDetection,
    /// Originate TLS to the endpoints (see [`crate::UpstreamTls`]). Default: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::tls::UpstreamTls>,
    /// Export per-endpoint series (`sluice_upstream_endpoint_*{cluster,endpoint}`: requests,
    /// errors, requests in flight, health), within the admin's cardinality budget (Envoy
    /// `track_cluster_stats.per_endpoint_stats`). Default off: a series per endpoint is what
    /// large clusters cannot afford.
    #[serde(default)]
    pub per_endpoint_stats: bool,
}

/// Upstream protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive.
    #[default]
    Http1,
    /// HTTP/2 over cleartext by prior knowledge (h2c).
    Http2,
    /// The same protocol the downstream request arrived with.
    Auto,
}

/// Load-balancing policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    /// Power of two choices over peak-EWMA latency × requests in flight per unit of weight
    /// (Linkerd's and Finagle's balancer).
    #[default]
    PeakEwma,
    /// Weighted round robin over the endpoints (smooth: heavy endpoints are interleaved).
    RoundRobin,
    /// Weighted random.
    Random,
    /// Least request by the power of two choices: of two endpoints drawn by weight, the one
    /// with fewer requests in flight per unit of weight (Envoy `LEAST_REQUEST`).
    LeastRequest,
    /// Consistent hashing on a ring (Ketama; Envoy `RING_HASH`), keyed by the route's
    /// `hash_policy`.
    RingHash,
    /// Consistent hashing with a Maglev lookup table (Envoy `MAGLEV`), keyed by the route's
    /// `hash_policy`.
    Maglev,
}

/// Connection pool settings (per worker thread and endpoint).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSettings {
    /// An idle pooled connection is closed after this long. Default `60s`.
    #[serde(default = "default_pool_idle_timeout")]
    pub idle_timeout: Duration,
    /// Most idle HTTP/1.1 connections kept per endpoint and worker. Default 256.
    #[serde(default = "default_max_idle")]
    pub max_idle_per_endpoint: u32,
    /// Most concurrent requests on one upstream HTTP/2 connection before another is opened
    /// (also bounded by the upstream's own `SETTINGS_MAX_CONCURRENT_STREAMS`). Default 100.
    #[serde(default = "default_max_streams")]
    pub max_requests_per_http2_connection: u32,
    /// An upstream connection is not given new requests once it is this old (Envoy
    /// `max_connection_duration`): HTTP/1.1 connections are closed when their response ends,
    /// HTTP/2 connections once their last stream ends; new requests open fresh connections,
    /// which lets upstream load balancers and DNS changes take effect. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_age: Option<Duration>,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            idle_timeout: default_pool_idle_timeout(),
            max_idle_per_endpoint: default_max_idle(),
            max_requests_per_http2_connection: default_max_streams(),
            max_connection_age: None,
        }
    }
}

/// One upstream address.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Endpoint {
    /// IP address and port.
    pub address: SocketAddr,
    /// Relative share of requests. Default 1.
    pub weight: u32,
    /// The endpoint's zone (compared with `node.zone` for locality preference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            address: SocketAddr,
            #[serde(default = "default_weight")]
            weight: u32,
            #[serde(default)]
            zone: Option<String>,
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Endpoint;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "an address such as `127.0.0.1:9001` or `{ address: ..., weight: N, zone: Z }`",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Endpoint, E> {
                let address = v.parse().map_err(|_| {
                    E::custom(format!(
                        "`{v}` is not an IP address and port such as 127.0.0.1:9001"
                    ))
                })?;
                Ok(Endpoint {
                    address,
                    weight: 1,
                    zone: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Endpoint, A::Error> {
                let f = Full::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Endpoint {
                    address: f.address,
                    weight: f.weight,
                    zone: f.zone,
                })
            }
        }
        d.deserialize_any(V)
    }
}

fn default_cluster_buffer_limit() -> ByteSize {
    ByteSize::kib(64)
}
fn default_weight() -> u32 {
    1
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_pool_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_idle() -> u32 {
    256
}
fn default_max_streams() -> u32 {
    100
}
