//! Listeners: where Sluice accepts connections and what it does with them (Envoy `Listener`
//! with one filter chain holding an `HttpConnectionManager` or a `TcpProxy`).

use crate::raw::RawListener;
use crate::units::{ByteSize, Cidr, Duration};
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
    /// TLS termination (HTTP listeners).
    pub tls: Option<crate::tls::DownstreamTls>,
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
            tls: l.tls,
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
            tls: l.tls,
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
    /// the request head is complete; on expiry the connection is closed. HTTP/2: the client
    /// preface and first SETTINGS frame, and each header block (a HEADERS or PUSH_PROMISE
    /// frame through the frame carrying END_HEADERS), must arrive within it. Default `10s`.
    #[serde(default = "default_request_header_timeout")]
    pub request_header_timeout: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/2: GOAWAY).
    /// Default `1h` (Envoy's default).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Duration,
    /// How long a connection Sluice asked to close (idle timeout or listener drain: HTTP/2
    /// GOAWAY, HTTP/1.1 `Connection: close` or a close while idle) may take to do so while no
    /// request is in flight: a peer that never answers the GOAWAY's PING or never reads the
    /// last bytes would otherwise keep it open forever. On expiry the connection is closed.
    /// Requests in flight are not cut by it (a drain's `--drain-timeout` still bounds those).
    /// Default `5s` (Envoy's `drain_timeout`).
    #[serde(default = "default_graceful_close_timeout")]
    pub graceful_close_timeout: Duration,
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
    /// Add an `x-request-id` (random UUID v4) to requests that have none, and replace one an
    /// untrusted client sent (see `trust`). Default true.
    #[serde(default = "default_true")]
    pub generate_request_id: bool,
    /// gRPC-Web (Envoy's `grpc_web` filter): requests with an `application/grpc-web…` content
    /// type go to the (HTTP/2) upstream as gRPC and their responses come back as gRPC-Web
    /// (trailers in a final frame, base64 for `-text`). Default false.
    #[serde(default)]
    pub grpc_web: bool,
    /// How request paths are normalized before routing; routing and the upstream see the same
    /// normalized path.
    #[serde(default)]
    pub path_normalization: PathNormalization,
    /// What to do with a request header whose name contains `_` (CGI-style stacks fold `_` into
    /// `-`, so `x_internal` would pass for `x-internal`). Default `drop`.
    #[serde(default)]
    pub headers_with_underscores: UnderscoreAction,
    /// Strip one trailing dot from `Host`/`:authority` (`api.example.com.`) before matching and
    /// forwarding. Default true.
    #[serde(default = "default_true")]
    pub strip_trailing_host_dot: bool,
    /// Which clients' forwarding, request-id and internal headers Sluice believes.
    #[serde(default)]
    pub trust: Trust,
    /// Who may send requests on this listener, by verified client SPIFFE ID (needs `tls` with
    /// client certificates); denied requests get 403 (gRPC: `PERMISSION_DENIED`).
    #[serde(default, skip_serializing_if = "crate::tls::Authorization::is_empty")]
    pub authorization: crate::tls::Authorization,
    /// Log each request (none by default; see [`AccessLog`](crate::AccessLog)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<Box<crate::AccessLog>>,
}

/// Path normalization (Envoy `normalize_path`, `merge_slashes`,
/// `path_with_escaped_slashes_action`). With `normalize` on, a path is checked and normalized
/// per RFC 3986 before routing: bytes ≥ 0x80 and characters RFC 3986 does not allow in a path
/// are rejected (400); percent-encoded unreserved characters are decoded (`%61` → `a`, `%2e` →
/// `.`) and other escapes upper-cased; dot segments are removed (`/a/../b` → `/b`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PathNormalization {
    /// Normalize at all. Default true; `false` routes and forwards the raw path (risky: prefix
    /// rules can be walked around with `..` and escapes; warned about at load).
    #[serde(default = "default_true")]
    pub normalize: bool,
    /// Merge runs of `/` into one (`//admin` → `/admin`). Default true.
    #[serde(default = "default_true")]
    pub merge_slashes: bool,
    /// What to do with `%2F`, `%5C` and `\` in a path. Default `unescape_and_redirect`.
    #[serde(default)]
    pub escaped_slashes: EscapedSlashes,
}

impl Default for PathNormalization {
    fn default() -> Self {
        PathNormalization {
            normalize: true,
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::default(),
        }
    }
}

/// The action for escaped slashes (`%2F`, `%5C`) and backslashes in a request path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashes {
    /// Answer 400.
    Reject,
    /// Turn them into `/`, normalize, and answer `307` to the normalized path (Envoy
    /// `UNESCAPE_AND_REDIRECT`): a well-behaved client follows it, and the route that matches is
    /// the one the upstream's framework would have resolved.
    #[default]
    UnescapeAndRedirect,
    /// Turn them into `/` and route and forward the result.
    UnescapeAndForward,
    /// Leave them as they are (risky when upstreams decode `%2F`; warned about at load).
    Keep,
}

/// The action for request header names containing `_` (Envoy `headers_with_underscores_action`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnderscoreAction {
    /// Forward them.
    Allow,
    /// Remove them before routing (counted).
    #[default]
    Drop,
    /// Answer 400.
    Reject,
}

/// Which clients are believed (Envoy `use_remote_address`, `xff_num_trusted_hops` and the
/// internal-address config). By default no client is: the client address is the TCP peer, and a
/// client's forwarding headers, `x-request-id` and internal headers are replaced or removed
/// before routing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Trust {
    /// Proxies in front of Sluice whose forwarding headers are believed (Envoy
    /// `xff_num_trusted_hops`). `0` (default): `x-forwarded-for`, `forwarded`, `x-real-ip` and
    /// `x-forwarded-host`/`-port`/`-prefix` from the client are removed and `x-forwarded-for`
    /// becomes the peer's address. More: they are kept and the peer's address is appended.
    #[serde(default)]
    pub trusted_hops: u32,
    /// Peers (`10.0.0.0/8`, `::1/128`, or an address) whose requests are trusted: their
    /// `x-request-id` and internal headers are kept, and their forwarding headers too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_peers: Vec<Cidr>,
    /// More header names (or prefixes written `x-corp-*`) removed from requests of untrusted
    /// peers before routing, in addition to the built-in `x-envoy-*` and `x-sluice-*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub internal_headers: Vec<String>,
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
    /// Premature-reset protection (streams the client resets before their response is
    /// complete, as in the rapid-reset attack CVE-2023-44487): the connection is sent GOAWAY
    /// and closed once half this many streams were reset prematurely, or, after this many
    /// streams, once premature resets are at least half of all its streams (Envoy's
    /// `premature_reset_total_stream_count` rule). `0` disables. Counted in
    /// `sluice_downstream_rejected_total{reason="premature_resets"}`. Default 100.
    #[serde(default = "default_premature_reset_stream_count")]
    pub premature_reset_stream_count: u32,
}

impl Default for Http2Settings {
    fn default() -> Self {
        Http2Settings {
            max_concurrent_streams: default_max_concurrent_streams(),
            initial_stream_window_size: default_stream_window(),
            initial_connection_window_size: default_connection_window(),
            max_frame_size: default_max_frame_size(),
            premature_reset_stream_count: default_premature_reset_stream_count(),
        }
    }
}

/// Raw TCP proxying (Envoy `TcpProxy`), optionally routed by the TLS server name the client
/// asks for without terminating TLS (TLS passthrough: Envoy's `tls_inspector` listener filter
/// with one filter chain per `filter_chain_match.server_names`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TcpListener {
    /// Name of the cluster in `clusters` that receives the connections. Required without `sni`;
    /// with `sni` it is the default for connections no server name matched (no SNI, not TLS,
    /// unreadable ClientHello, or `tls_inspector_timeout` passed), and without it those
    /// connections are closed (counted in `sluice_tcp_sni_unmatched_total`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// A connection with no bytes in either direction for this long is closed. `0s` disables.
    /// Default `1h` (Envoy's default).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Duration,
    /// TLS passthrough: routes by the server name (SNI) of the client's ClientHello, which is
    /// read but not terminated (the bytes go to the upstream unchanged). An exact name wins over
    /// wildcards, and a longer `*.suffix` over a shorter one; names are case-insensitive.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni: Vec<SniRoute>,
    /// With `sni`: how long to wait for the ClientHello (Envoy's `tls_inspector` timeout). On
    /// expiry the connection goes to `cluster`, or is closed without one. Default `5s`.
    #[serde(default = "default_tls_inspector_timeout")]
    pub tls_inspector_timeout: Duration,
    /// Log each connection when it closes (none by default; see
    /// [`AccessLog`](crate::AccessLog); `min_status` does not apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<Box<crate::AccessLog>>,
}

/// One TLS passthrough route: connections whose SNI is one of `server_names` go to `cluster`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SniRoute {
    /// Exact names (`api.example.com`) or wildcards (`*.example.com`, matching any name ending
    /// in `.example.com`, however many labels precede it, but not `example.com` itself).
    pub server_names: Vec<String>,
    /// Name of the cluster in `clusters` that receives the matching connections.
    pub cluster: String,
}

impl TcpListener {
    /// A plain TCP listener (no SNI routing) with default settings, proxying to `cluster`.
    pub fn new(cluster: impl Into<String>) -> Self {
        TcpListener {
            cluster: Some(cluster.into()),
            idle_timeout: default_idle_timeout(),
            sni: Vec::new(),
            tls_inspector_timeout: default_tls_inspector_timeout(),
            access_log: None,
        }
    }

    /// Every cluster the listener may send connections to (the default first).
    pub fn clusters(&self) -> impl Iterator<Item = &str> {
        self.cluster
            .as_deref()
            .into_iter()
            .chain(self.sni.iter().map(|r| r.cluster.as_str()))
    }
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
            graceful_close_timeout: default_graceful_close_timeout(),
            stream_idle_timeout: default_stream_idle_timeout(),
            per_connection_buffer_limit_bytes: default_buffer_limit(),
            http2: Http2Settings::default(),
            generate_request_id: true,
            grpc_web: false,
            path_normalization: PathNormalization::default(),
            headers_with_underscores: UnderscoreAction::default(),
            strip_trailing_host_dot: true,
            trust: Trust::default(),
            authorization: Default::default(),
            access_log: None,
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
fn default_tls_inspector_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_graceful_close_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_premature_reset_stream_count() -> u32 {
    100
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
