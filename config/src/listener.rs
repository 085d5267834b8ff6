//! Listeners: where Sluice accepts connections and what it does with them (Envoy `Listener`
//! with one filter chain holding an `HttpConnectionManager` or a `TcpProxy`).

use crate::raw::RawListener;
use crate::units::{ByteSize, Duration};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// A listening socket (the YAML shape is [`RawListener`](crate::raw::RawListener)).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(try_from = "RawListener", into = "RawListener")]
pub struct Listener {
    /// Unique name, used in logs, metrics and the admin API.
    pub name: String,
    /// Address and port to bind.
    pub address: SocketAddr,
    /// What it does with its connections.
    pub kind: ListenerKind,
}

/// What a listener does: exactly one of these.
#[derive(Clone, Debug, PartialEq)]
pub enum ListenerKind {
    /// Serve HTTP/1.1 and HTTP/2 and route requests.
    Http(HttpListener),
    /// Proxy raw TCP bytes to a cluster.
    Tcp(TcpListener),
}

impl TryFrom<RawListener> for Listener {
    type Error = String;
    fn try_from(l: RawListener) -> Result<Self, String> {
        let kind = match (l.http, l.tcp) {
            (Some(h), None) => ListenerKind::Http(h),
            (None, Some(t)) => ListenerKind::Tcp(t),
            _ => return Err("set exactly one of `http` or `tcp`".into()),
        };
        Ok(Listener {
            name: l.name,
            address: l.address,
            kind,
        })
    }
}

impl From<Listener> for RawListener {
    fn from(l: Listener) -> Self {
        let (http, tcp) = match l.kind {
            ListenerKind::Http(h) => (Some(h), None),
            ListenerKind::Tcp(t) => (None, Some(t)),
        };
        RawListener {
            name: l.name,
            address: l.address,
            http,
            tcp,
        }
    }
}

/// HTTP serving settings (Envoy `HttpConnectionManager`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpListener {
    /// Name of the route table in `route_tables` that routes this listener's requests.
    pub route_table: String,
    /// Largest request head (request line and headers) accepted; larger requests get 431.
    /// HTTP/1.1 enforces it on the raw head (at least 8KiB); HTTP/2 advertises it as
    /// `SETTINGS_MAX_HEADER_LIST_SIZE`. Default `60KiB` (Envoy's default).
    #[serde(default = "default_max_request_header_bytes")]
    pub max_request_header_bytes: ByteSize,
    /// Most request headers accepted; more gets 431. Default 100.
    #[serde(default = "default_max_request_headers")]
    pub max_request_headers: u32,
    /// Time allowed from a connection's first byte (or the end of the previous request) until
    /// the request head is complete; on expiry the connection is closed. Default `10s`.
    #[serde(default = "default_request_header_timeout")]
    pub request_header_timeout: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/2: GOAWAY).
    /// Default `1h` (Envoy's default).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Duration,
    /// A request/response exchange with no progress in either direction for this long is
    /// ended (Envoy `stream_idle_timeout`). Progress is request body bytes read from the
    /// client, response bytes taken by the client, or the upstream's response head arriving.
    /// Before any response byte was sent the client gets 408 (stalled upload) or 504 (stalled
    /// upstream) over HTTP/1.1, and the connection is closed; once the response has started,
    /// HTTP/1.1 closes the connection and HTTP/2 resets the stream (`CANCEL`), the connection
    /// serving its other streams on. `0s` disables it (long-lived streams). Default `5m`.
    #[serde(default = "default_stream_idle_timeout")]
    pub stream_idle_timeout: Duration,
    /// Most response bytes Sluice queues for one client (Envoy
    /// `per_connection_buffer_limit_bytes`): hyper's HTTP/1.1 write queue (which shares hyper's
    /// one buffer limit with the request-head read buffer, so it is at least
    /// `max_request_header_bytes` + 8KiB) and each HTTP/2 stream's send buffer. A client that
    /// reads slower than the upstream writes holds this much, then the upstream is paused
    /// (backpressure). At least `8KiB`. Default `32KiB` (Envoy's edge recommendation).
    #[serde(default = "default_buffer_limit")]
    pub per_connection_buffer_limit_bytes: ByteSize,
    /// HTTP/2 settings for downstream connections.
    #[serde(default)]
    pub http2: Http2Settings,
    /// Add an `x-request-id` (random UUID v4) to requests that have none. Default true.
    #[serde(default = "default_true")]
    pub generate_request_id: bool,
}

/// HTTP/2 protocol settings, set explicitly rather than left to library defaults.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Http2Settings {
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`. Default 100 (Envoy's edge recommendation).
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// Initial per-stream flow-control window. Default `64KiB`.
    #[serde(default = "default_stream_window")]
    pub initial_stream_window_size: ByteSize,
    /// Initial connection flow-control window. Default `1MiB`.
    #[serde(default = "default_connection_window")]
    pub initial_connection_window_size: ByteSize,
    /// `SETTINGS_MAX_FRAME_SIZE`. Default `16KiB` (the protocol minimum).
    #[serde(default = "default_max_frame_size")]
    pub max_frame_size: ByteSize,
}

impl Default for Http2Settings {
    fn default() -> Self {
        Http2Settings {
            max_concurrent_streams: default_max_concurrent_streams(),
            initial_stream_window_size: default_stream_window(),
            initial_connection_window_size: default_connection_window(),
            max_frame_size: default_max_frame_size(),
        }
    }
}

/// Raw TCP proxying (Envoy `TcpProxy`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TcpListener {
    /// Name of the cluster in `clusters` that receives the connections.
    pub cluster: String,
    /// A connection with no bytes in either direction for this long is closed. `0s` disables.
    /// Default `1h` (Envoy's default).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Duration,
}

impl HttpListener {
    /// An HTTP listener with default settings routing through `route_table`.
    pub fn new(route_table: impl Into<String>) -> Self {
        HttpListener {
            route_table: route_table.into(),
            max_request_header_bytes: default_max_request_header_bytes(),
            max_request_headers: default_max_request_headers(),
            request_header_timeout: default_request_header_timeout(),
            idle_timeout: default_idle_timeout(),
            stream_idle_timeout: default_stream_idle_timeout(),
            per_connection_buffer_limit_bytes: default_buffer_limit(),
            http2: Http2Settings::default(),
            generate_request_id: true,
        }
    }
}

fn default_max_request_header_bytes() -> ByteSize {
    ByteSize::kib(60)
}
fn default_max_request_headers() -> u32 {
    100
}
fn default_request_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(3600)
}
fn default_stream_idle_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_buffer_limit() -> ByteSize {
    ByteSize::kib(32)
}
fn default_max_concurrent_streams() -> u32 {
    100
}
fn default_stream_window() -> ByteSize {
    ByteSize::kib(64)
}
fn default_connection_window() -> ByteSize {
    ByteSize::mib(1)
}
fn default_max_frame_size() -> ByteSize {
    ByteSize::kib(16)
}
pub(crate) fn default_true() -> bool {
    true
}
