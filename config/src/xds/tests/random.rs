//! Randomized round trips: a deterministic generator of valid configs covering the model
//! broadly, and two properties over every resource of each, for many seeds:
//! `decode(encode(r)) == [r]`, and encoding twice decodes to the same model (what the control
//! plane's content hash relies on). A failure names the seed; `SLUICE_XDS_SEED=N` runs that
//! seed alone, `SLUICE_XDS_CASES=N` runs more seeds.
//!
//! What the generator leaves out on purpose (the model's own YAML shape cannot write it either,
//! so no config can hold it; it is not the mapping's to carry):
//! - durations finer than a microsecond (`Duration`'s YAML form is `…us` at the finest, and the
//!   Sluice metadata carries durations in that form);
//! - fault percentages finer than a millionth (Envoy's `FractionalPercent` denominator; the
//!   model's YAML reads any `f64`, but Envoy cannot carry more);
//! - IPv6 socket addresses with a flow label or a scope id (neither the YAML nor Envoy's
//!   `SocketAddress` has them).

use super::*;
use crate::{
    AddressFamily, Authorization, BackOff, ByteSize, CertificateFiles, Cidr, CircuitBreakers,
    ClientCertificate, Cluster, DirectResponse, Discovery, DiscoveryType, DownstreamTls, Duration,
    Endpoint, EscapedSlashes, Fault, FaultAbort, FaultDelay, ForwardClientCert, GrpcHealthCheck,
    HashOn, HashPolicy, HeaderList, HeaderMatcher, HeaderMutation, HealthCheck, Http2Settings,
    HttpHealthCheck, HttpListener, LbPolicy, LeastRequestSettings, ListenerKind, LocalitySettings,
    MaglevSettings, OutlierDetection, ParseOptions, PathNormalization, PeakEwmaSettings,
    PoolSettings, PrivateKeyPem, QueryParameterMatcher, RawConfig, Redirect, RegexRewrite,
    RetryBudget, RetryOn, RetryPolicy, RingHashSettings, Route, RouteAction, RouteBreakers,
    RouteMatch, RouteTable, Secret, SecretKind, SniRoute, StatusRange, TcpHealthCheck, TcpListener,
    TlsVersion, Trust, UnderscoreAction, UpstreamProtocol, UpstreamTls, VirtualHost,
    WeightedCluster,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

/// Seeds run by default: enough to meet every branch of the generator many times, fast in a
/// debug build.
const CASES: u64 = 300;

/// The longest durations generated: 100 years and a few seconds (a "forever" a config might
/// write). `units::parse_duration` used to read through an `f64` and lost precision past a few
/// years (this test found it); it is exact now, and `units::tests` checks that at every size.
const LONG_SECS: u64 = 100 * 365 * 86_400 + 7;

/// A deterministic source of valid model values.
struct Gen {
    rng: fastrand::Rng,
}

impl Gen {
    fn new(seed: u64) -> Self {
        Gen {
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// True with probability `percent`/100.
    fn chance(&mut self, percent: u32) -> bool {
        self.rng.u32(0..100) < percent
    }

    fn pick<T: Clone>(&mut self, xs: &[T]) -> T {
        xs[self.rng.usize(0..xs.len())].clone()
    }

    fn maybe<T>(&mut self, percent: u32, f: impl FnOnce(&mut Self) -> T) -> Option<T> {
        self.chance(percent).then(|| f(self))
    }

    fn list<T>(&mut self, max: usize, mut f: impl FnMut(&mut Self) -> T) -> Vec<T> {
        let n = self.rng.usize(0..=max);
        (0..n).map(|_| f(self)).collect()
    }

    /// A u32 that is small, round, or anything.
    fn u32(&mut self) -> u32 {
        match self.rng.u8(0..4) {
            0 => self.rng.u32(0..10),
            1 => self.rng.u32(0..10_000),
            2 => self.pick(&[0, 1, 100, 1024, u32::MAX]),
            _ => self.rng.u32(..),
        }
    }

    /// A positive duration: whole seconds, milliseconds or microseconds.
    fn dur_pos(&mut self) -> Duration {
        let d = match self.rng.u8(0..6) {
            0 => std::time::Duration::from_secs(self.rng.u64(1..100_000)),
            1 if self.chance(20) => {
                // Very long (years) and the shortest a config can write.
                let long = std::time::Duration::from_secs(LONG_SECS);
                self.pick(&[long, std::time::Duration::from_micros(1)])
            }
            1 => std::time::Duration::from_secs(3600 * self.rng.u64(1..48)),
            2 => std::time::Duration::from_millis(self.rng.u64(1..100_000)),
            3 => std::time::Duration::from_micros(self.rng.u64(1..100_000_000)),
            _ => std::time::Duration::from_millis(self.pick(&[1, 10, 25, 250, 1000, 5000])),
        };
        Duration(d)
    }

    /// A duration, sometimes zero.
    fn dur(&mut self) -> Duration {
        if self.chance(15) {
            Duration::default()
        } else {
            self.dur_pos()
        }
    }

    /// A duration of at least `min`.
    fn dur_min(&mut self, min: Duration) -> Duration {
        let add = self.dur_pos();
        if self.chance(20) {
            min
        } else if min.get().as_secs() >= LONG_SECS || add.get().as_secs() >= LONG_SECS {
            min.max(add) // no sums past `LONG_SECS`
        } else {
            Duration(min.get() + add.get())
        }
    }

    fn bytes_in(&mut self, lo: u64, hi: u64) -> ByteSize {
        let b = match self.rng.u8(0..3) {
            0 => self.rng.u64(lo..=hi),
            1 => self.rng.u64(lo.div_ceil(1024)..=hi / 1024) * 1024,
            _ => self.pick(&[lo, hi]),
        };
        ByteSize(b)
    }

    /// A label of letters, digits and `-` (a DNS label, also a header-name token).
    fn label(&mut self) -> String {
        const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let n = self.rng.usize(1..8);
        let mut s: String = (0..n)
            .map(|_| char::from(CHARS[self.rng.usize(0..CHARS.len())]))
            .collect();
        if n > 2 && self.chance(20) {
            s.insert(1, '-');
        }
        s
    }

    fn dns_name(&mut self) -> String {
        let n = self.rng.usize(1..4);
        let mut labels: Vec<String> = (0..n).map(|_| self.label()).collect();
        labels.push(
            self.pick(&["com", "internal", "example", "Example"])
                .to_string(),
        );
        labels.join(".")
    }

    /// A resource name: usually plain, sometimes with dots, spaces, slashes or not ASCII.
    /// `i` keeps it unique among its kind.
    fn name(&mut self, kind: &str, i: usize) -> String {
        match self.rng.u8(0..8) {
            0 => format!("{kind}.{i}.{}", self.label()),
            1 => format!("{kind} {i} é/→"),
            2 => format!("outbound|80||{kind}-{i}.default.svc"),
            _ => format!("{kind}-{i}"),
        }
    }

    /// A header name (an RFC 9110 token, sometimes with upper case or odd token characters).
    fn header_name(&mut self) -> String {
        match self.rng.u8(0..7) {
            0 => format!("X-{}", self.label().to_uppercase()),
            3 => format!("x|{}*+^{}", self.label(), self.label()),
            1 => format!("x_{}", self.label()),
            2 => format!("x.{}~{}", self.label(), self.label()),
            _ => format!("x-{}", self.label()),
        }
    }

    /// A header name a mutation may change (not framing, hop-by-hop or `host`).
    fn mutable_header(&mut self) -> String {
        self.header_name()
    }

    /// A string for values: plain, empty, with spaces, or not ASCII.
    fn text(&mut self) -> String {
        match self.rng.u8(0..9) {
            0 => String::new(),
            5 => format!("{}.*+?()[]{{}}|^$\\/%2F", self.label()),
            1 => format!(" {} {} ", self.label(), self.label()),
            2 => format!("é{}ü→{}", self.label(), self.label()),
            3 => format!("{}\t{}", self.label(), self.label()),
            4 => self
                .pick(&["yes", "true", "null", "1", "~", "0x10", "1e3"])
                .to_string(),
            _ => self.label(),
        }
    }

    fn path(&mut self) -> String {
        match self.rng.u8(0..5) {
            0 => "/".to_string(),
            1 => format!("/{}/", self.label()),
            2 => format!("/{}/{}%2F;x=@:{}", self.label(), self.label(), self.label()),
            _ => format!("/{}", self.label()),
        }
    }

    fn regex(&mut self) -> String {
        let l = self.label();
        self.pick(&[
            format!("/{l}/.*"),
            "/[a-z]+/[0-9]{1,3}".to_string(),
            format!("(?i)/{l}"),
            "v[0-9]+".to_string(),
            ".*".to_string(),
            format!("/(?P<name>{l})/(x|y)?"),
            "^/anchored$".to_string(),
            "é+".to_string(),
        ])
    }

    fn spiffe(&mut self) -> String {
        let td = self.dns_name();
        match self.rng.u8(0..3) {
            0 => format!("spiffe://{td}/*"),
            1 => format!("spiffe://{td}/ns/{}/*", self.label()),
            _ => format!("spiffe://{td}/ns/{}/sa/{}", self.label(), self.label()),
        }
    }

    fn authorization(&mut self) -> Authorization {
        Authorization {
            allow: self.list(3, Gen::spiffe),
            deny: self.list(2, Gen::spiffe),
        }
    }

    /// The name of an SDS secret (what the built-in CA sends, or anything else).
    fn secret_name(&mut self) -> String {
        match self.rng.u8(0..4) {
            0 => "default".to_string(),
            1 => "ROOTCA".to_string(),
            2 => format!(
                "spiffe://{}/ns/{}/sa/{}",
                self.dns_name(),
                self.label(),
                self.label()
            ),
            _ => self.label(),
        }
    }

    /// An SDS secret (they come from the control plane, never from a config file).
    fn secret(&mut self) -> Secret {
        let pem = |g: &mut Gen, what: &str| {
            let body = g.text();
            format!("-----BEGIN {what}-----\n{body}\n-----END {what}-----\n")
        };
        let kind = if self.rng.bool() {
            SecretKind::Certificate {
                cert_chain: pem(self, "CERTIFICATE"),
                private_key: PrivateKeyPem(pem(self, "PRIVATE KEY")),
            }
        } else {
            SecretKind::TrustBundle {
                ca: pem(self, "CERTIFICATE").repeat(self.rng.usize(1..3)),
            }
        };
        Secret {
            name: self.secret_name(),
            kind,
        }
    }

    fn file(&mut self) -> PathBuf {
        PathBuf::from(format!("/certs/{}.pem", self.label()))
    }

    fn ip(&mut self) -> IpAddr {
        match self.rng.u8(0..5) {
            0 => IpAddr::V4(Ipv4Addr::new(10, self.rng.u8(..), self.rng.u8(..), 1)),
            1 => IpAddr::V4(Ipv4Addr::new(127, 0, 0, self.rng.u8(1..))),
            2 => IpAddr::V6(Ipv6Addr::new(
                0x2001,
                0xdb8,
                0,
                0,
                0,
                0,
                0,
                self.rng.u16(1..),
            )),
            3 => IpAddr::V6(Ipv4Addr::new(10, 0, 0, self.rng.u8(1..)).to_ipv6_mapped()),
            _ => IpAddr::V6(Ipv6Addr::LOCALHOST),
        }
    }

    // Listeners.

    /// Listener `i` (its port is unique in the config).
    fn listener(&mut self, i: usize, tables: &[String], clusters: &[String]) -> crate::Listener {
        let ip = self.pick(&[
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
        ]);
        let port = u16::try_from(8000 + i).unwrap_or(8000);
        let http = self.chance(65);
        let (kind, tls) = if http {
            let tls = self.maybe(50, Gen::downstream_tls);
            let mut h = self.http_listener(tables);
            if tls
                .as_ref()
                .is_some_and(|t| t.client_certificate != ClientCertificate::None)
            {
                h.authorization = self.authorization();
            }
            (ListenerKind::Http(h), tls)
        } else {
            (ListenerKind::Tcp(self.tcp_listener(clusters)), None)
        };
        crate::Listener {
            name: self.name("listener", i),
            address: SocketAddr::new(ip, port),
            kind,
            tls,
        }
    }

    fn http_listener(&mut self, tables: &[String]) -> HttpListener {
        let mut h = HttpListener::new(self.pick(tables));
        if self.chance(20) {
            return h; // all defaults
        }
        h.max_request_header_bytes = self.bytes_in(1024, 1 << 20);
        h.max_request_headers = self.rng.u32(1..=1000);
        h.request_header_timeout = self.dur_pos();
        h.idle_timeout = self.dur_pos();
        h.graceful_close_timeout = self.dur_pos();
        h.stream_idle_timeout = self.dur();
        h.per_connection_buffer_limit_bytes = self.bytes_in(8 << 10, 16 << 20);
        h.http2 = Http2Settings {
            max_concurrent_streams: self.u32().max(1),
            initial_stream_window_size: self.bytes_in(65_535, (1 << 31) - 1),
            initial_connection_window_size: self.bytes_in(65_535, (1 << 31) - 1),
            max_frame_size: self.bytes_in(16_384, 16_777_215),
            premature_reset_stream_count: self.u32(),
        };
        h.generate_request_id = self.rng.bool();
        h.access_log = self.access_log(&[0, 400, 500, 599]);
        h.grpc_web = self.rng.bool();
        h.path_normalization = PathNormalization {
            normalize: self.rng.bool(),
            merge_slashes: self.rng.bool(),
            escaped_slashes: self.pick(&[
                EscapedSlashes::Reject,
                EscapedSlashes::UnescapeAndRedirect,
                EscapedSlashes::UnescapeAndForward,
                EscapedSlashes::Keep,
            ]),
        };
        h.headers_with_underscores = self.pick(&[
            UnderscoreAction::Allow,
            UnderscoreAction::Drop,
            UnderscoreAction::Reject,
        ]);
        h.strip_trailing_host_dot = self.rng.bool();
        h.trust = Trust {
            trusted_hops: self.pick(&[0, 0, 1, 2, 10, u32::MAX]),
            trusted_peers: self.list(3, |g| {
                g.pick(&[
                    Cidr {
                        addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)),
                        len: 8,
                    },
                    Cidr {
                        addr: IpAddr::V4(Ipv4Addr::new(192, 168, 1, 0)),
                        len: 24,
                    },
                    Cidr {
                        addr: IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4)),
                        len: 32,
                    },
                    Cidr {
                        addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                        len: 0,
                    },
                    Cidr {
                        addr: IpAddr::V6(Ipv6Addr::LOCALHOST),
                        len: 128,
                    },
                    Cidr {
                        addr: IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0)),
                        len: 8,
                    },
                ])
            }),
            internal_headers: self.list(3, |g| {
                let n = g.header_name();
                if g.chance(30) { format!("{n}-*") } else { n }
            }),
        };
        h
    }

    fn downstream_tls(&mut self) -> DownstreamTls {
        let mut names = std::collections::HashSet::new();
        let certificates = (0..self.rng.usize(1..5))
            .map(|_| {
                let sds = self.chance(30);
                CertificateFiles {
                    cert: (!sds).then(|| self.file()),
                    key: (!sds).then(|| self.file()),
                    secret: sds.then(|| self.secret_name()),
                    server_names: self
                        .list(3, |g| {
                            let n = g.dns_name();
                            if g.chance(30) { format!("*.{n}") } else { n }
                        })
                        .into_iter()
                        .filter(|n| names.insert(n.to_ascii_lowercase()))
                        .collect(),
                }
            })
            .collect();
        let client_certificate = self.pick(&[
            ClientCertificate::None,
            ClientCertificate::Optional,
            ClientCertificate::Required,
        ]);
        let (client_ca, client_ca_secret) = match client_certificate {
            ClientCertificate::None => (None, None),
            _ if self.chance(30) => (None, Some(self.secret_name())),
            _ => (Some(self.file()), None),
        };
        let alpn = self.pick(&[
            vec!["h2".to_string(), "http/1.1".to_string()],
            vec!["http/1.1".to_string(), "h2".to_string()],
            vec!["h2".to_string()],
            vec!["http/1.1".to_string()],
            vec!["h2".to_string(), "h2".to_string()],
        ]);
        DownstreamTls {
            certificates,
            client_certificate,
            client_ca,
            client_ca_secret,
            alpn,
            min_version: self.pick(&[TlsVersion::Tls12, TlsVersion::Tls13]),
            handshake_timeout: self.dur_pos(),
            forward_client_cert: self.pick(&[
                ForwardClientCert::Sanitize,
                ForwardClientCert::ForwardOnly,
                ForwardClientCert::AppendForward,
                ForwardClientCert::SanitizeSet,
                ForwardClientCert::AlwaysForwardOnly,
            ]),
        }
    }

    /// An access log half the time (with one of `min_statuses`).
    fn access_log(&mut self, min_statuses: &[u16]) -> Option<Box<crate::AccessLog>> {
        self.rng.bool().then(|| {
            Box::new(crate::AccessLog {
                path: self
                    .pick(&["stdout", "stderr", "/var/log/sluice/access.log"])
                    .into(),
                format: self.pick(&[
                    crate::AccessLogFormat::Json,
                    crate::AccessLogFormat::Text,
                    crate::AccessLogFormat::Template(
                        "%START_TIME% %REQ(:METHOD)% %REQ(:PATH)%:40 %RESPONSE_CODE% %RESPONSE_FLAGS%".into(),
                    ),
                ]),
                min_status: self.pick(min_statuses),
                sample: self.pick(&[1.0, 0.5, 0.1, 0.000_001]),
            })
        })
    }

    fn tcp_listener(&mut self, clusters: &[String]) -> TcpListener {
        let mut seen = std::collections::HashSet::new();
        let sni: Vec<SniRoute> = self
            .list(3, |g| {
                let server_names: Vec<String> = g
                    .list(3, |g| {
                        let n = g.dns_name();
                        if g.chance(30) { format!("*.{n}") } else { n }
                    })
                    .into_iter()
                    .filter(|n| seen.insert(n.to_ascii_lowercase()))
                    .collect();
                SniRoute {
                    server_names,
                    cluster: g.pick(clusters),
                }
            })
            .into_iter()
            .filter(|r| !r.server_names.is_empty())
            .collect();
        let cluster = if sni.is_empty() || self.rng.bool() {
            Some(self.pick(clusters))
        } else {
            None
        };
        TcpListener {
            cluster,
            idle_timeout: self.dur(),
            sni,
            tls_inspector_timeout: self.dur_pos(),
            access_log: self.access_log(&[0]),
        }
    }

    // Route tables.

    fn route_table(&mut self, i: usize, clusters: &[String]) -> RouteTable {
        let mut domains = std::collections::HashSet::new();
        let virtual_hosts = (0..self.rng.usize(1..4))
            .map(|v| {
                let ds: Vec<String> = (0..self.rng.usize(1..4))
                    .map(|_| self.domain())
                    .filter(|d| domains.insert(d.to_ascii_lowercase()))
                    .collect();
                let ds = if ds.is_empty() {
                    vec![format!("vh{v}-{i}.example")]
                } else {
                    ds
                };
                VirtualHost {
                    name: self.name("vh", v),
                    domains: ds,
                    routes: (0..self.rng.usize(0..6))
                        .map(|_| self.route(clusters))
                        .collect(),
                    request_headers: self.mutation(),
                    response_headers: self.mutation(),
                }
            })
            .collect();
        RouteTable {
            name: self.name("table", i),
            virtual_hosts,
        }
    }

    fn domain(&mut self) -> String {
        match self.rng.u8(0..6) {
            0 => "*".to_string(),
            1 => format!("*.{}", self.dns_name()),
            2 => format!("{}.*", self.label()),
            3 => format!("{}:{}", self.dns_name(), self.rng.u16(1..)),
            4 => format!("*-{}", self.label()),
            _ => self.dns_name(),
        }
    }

    fn mutation(&mut self) -> HeaderMutation {
        if self.chance(50) {
            return HeaderMutation::default();
        }
        let pairs = |g: &mut Gen| {
            let mut v: Vec<(String, String)> = g.list(3, |g| (g.mutable_header(), g.text()));
            if let Some(first) = v.first().cloned()
                && g.chance(20)
            {
                v.push((first.0, g.text())); // a repeated name
            }
            HeaderList(v)
        };
        HeaderMutation {
            add: pairs(self),
            set: pairs(self),
            remove: self.list(2, Gen::mutable_header),
        }
    }

    fn route_match(&mut self) -> RouteMatch {
        let mut m = RouteMatch::default();
        match self.rng.u8(0..4) {
            0 => m.prefix = Some(self.path()),
            1 => m.path_prefix = Some(self.path()),
            2 => m.path = Some(self.path()),
            _ => m.regex = Some(self.regex()),
        }
        m.methods = self.list(3, |g| {
            // Any token is a method, regex metacharacters included.
            g.pick(&[
                "GET", "POST", "PUT", "DELETE", "PURGE", "get", "M-SEARCH", "A|B", "G.T", "P*",
                "^X$", "A+B",
            ])
            .to_string()
        });
        m.headers = self.list(4, |g| {
            let mut h = HeaderMatcher {
                name: g.header_name(),
                invert: g.chance(20),
                ..HeaderMatcher::default()
            };
            match g.rng.u8(0..5) {
                0 => h.exact = Some(g.text()),
                1 => h.prefix = Some(g.text()),
                2 => h.suffix = Some(g.text()),
                3 => h.regex = Some(g.regex()),
                _ => h.present = Some(g.rng.bool()),
            }
            h
        });
        m.query_parameters = self.list(3, |g| {
            let mut q = QueryParameterMatcher {
                name: if g.chance(20) { g.text() } else { g.label() },
                ..QueryParameterMatcher::default()
            };
            if q.name.is_empty() {
                q.name = "q".into();
            }
            match g.rng.u8(0..4) {
                0 => q.exact = Some(g.text()),
                1 => q.prefix = Some(g.text()),
                2 => q.regex = Some(g.regex()),
                _ => q.present = Some(g.rng.bool()),
            }
            q
        });
        m
    }

    fn route(&mut self, clusters: &[String]) -> Route {
        let matcher = self.route_match();
        let by_prefix = matcher.prefix.is_some() || matcher.path_prefix.is_some();
        let action = match self.rng.u8(0..6) {
            0 => RouteAction::WeightedClusters({
                let mut w: Vec<WeightedCluster> = (0..self.rng.usize(1..4))
                    .map(|_| WeightedCluster {
                        cluster: self.pick(clusters),
                        weight: self.pick(&[0, 1, 5, 50, 100, 1000]),
                    })
                    .collect();
                if w.iter().all(|w| w.weight == 0)
                    && let Some(first) = w.first_mut()
                {
                    first.weight = 1;
                }
                w
            }),
            1 => RouteAction::Redirect(self.redirect(by_prefix)),
            2 => RouteAction::DirectResponse(DirectResponse {
                status: self.rng.u16(200..=599),
                body: self.maybe(60, Gen::text),
            }),
            _ => RouteAction::Cluster(self.pick(clusters)),
        };
        let forwards = matches!(
            action,
            RouteAction::Cluster(_) | RouteAction::WeightedClusters(_)
        );
        let mut r = Route {
            name: self.maybe(50, |g| {
                if g.chance(10) {
                    String::new()
                } else {
                    format!("route-{}", g.label())
                }
            }),
            matcher,
            action,
            rewrite: None,
            timeout: None,
            retry_policy: None,
            circuit_breakers: None,
            request_headers: self.mutation(),
            response_headers: self.mutation(),
            fault: None,
            grpc_web: self.maybe(30, |g| g.rng.bool()),
            hash_policy: Vec::new(),
            authorization: if self.chance(30) {
                self.authorization()
            } else {
                Authorization::default()
            },
        };
        // Retries and breakers are valid on any route (they only act on forwarding ones).
        r.retry_policy = self.maybe(40, Gen::retry_policy);
        r.circuit_breakers = self.maybe(25, |g| RouteBreakers {
            max_requests: g.maybe(60, |g| g.u32().max(1)),
            max_retries: g.maybe(60, Gen::u32),
        });
        if forwards {
            r.timeout = self.maybe(40, Gen::dur);
            r.rewrite = self.maybe(40, |g| g.rewrite(by_prefix));
            r.fault = self.maybe(30, Gen::fault);
            r.hash_policy = self.list(4, |g| HashPolicy {
                on: match g.rng.u8(0..4) {
                    0 => HashOn::Header(g.header_name()),
                    1 => HashOn::Cookie(g.label()),
                    2 => HashOn::SourceIp,
                    _ => HashOn::QueryParameter(g.label()),
                },
                terminal: g.chance(30),
            });
        }
        r
    }

    fn redirect(&mut self, by_prefix: bool) -> Redirect {
        let mut r = Redirect {
            scheme: self.maybe(50, |g| g.pick(&["http", "https"]).to_string()),
            host: self.maybe(50, Gen::dns_name),
            port: self.maybe(40, |g| g.pick(&[0, 1, 80, 443, 8443, u16::MAX])),
            path: None,
            prefix_rewrite: None,
            code: self.pick(&[301, 302, 303, 307, 308]),
            strip_query: self.rng.bool(),
        };
        match self.rng.u8(0..3) {
            0 => r.path = Some(self.path()),
            1 if by_prefix => {
                let path = self.path();
                r.prefix_rewrite = Some(self.pick(&[String::new(), "/".into(), path]))
            }
            _ => {}
        }
        r
    }

    fn rewrite(&mut self, by_prefix: bool) -> crate::Rewrite {
        let mut rw = crate::Rewrite {
            host: self.maybe(40, |g| {
                if g.chance(20) {
                    format!("{}:{}", g.dns_name(), g.rng.u16(1..))
                } else {
                    g.dns_name()
                }
            }),
            ..crate::Rewrite::default()
        };
        match self.rng.u8(0..3) {
            0 if by_prefix => {
                let path = self.path();
                rw.prefix = Some(self.pick(&[String::new(), "/".into(), path]));
            }
            1 => {
                rw.regex = Some(RegexRewrite {
                    pattern: self.regex(),
                    substitution: self.pick(&["/x".to_string(), "$1".into(), String::new()]),
                });
            }
            _ => {}
        }
        rw
    }

    fn retry_policy(&mut self) -> RetryPolicy {
        if self.chance(15) {
            return RetryPolicy::default();
        }
        let all = [
            RetryOn::FiveXx,
            RetryOn::GatewayError,
            RetryOn::Reset,
            RetryOn::ConnectFailure,
            RetryOn::RefusedStream,
            RetryOn::RetriableStatusCodes,
            RetryOn::Cancelled,
            RetryOn::DeadlineExceeded,
            RetryOn::Internal,
            RetryOn::ResourceExhausted,
            RetryOn::Unavailable,
        ];
        let retry_on = self.list(4, |g| g.pick(&all));
        let retriable_status_codes = if retry_on.contains(&RetryOn::RetriableStatusCodes) {
            self.list(3, |g| g.rng.u16(100..=599))
        } else {
            Vec::new()
        };
        let base = self.dur_pos();
        RetryPolicy {
            retry_on,
            num_retries: self.rng.u32(0..=10),
            per_try_timeout: self.maybe(50, Gen::dur_pos),
            retriable_status_codes,
            retriable_methods: self.list(2, |g| g.pick(&["POST", "PATCH", "M-SEARCH"]).to_string()),
            back_off: BackOff {
                base_interval: base,
                max_interval: self.dur_min(base),
            },
            max_retry_after: self.dur(),
            replay_limit: self.bytes_in(0, 16 << 20),
        }
    }

    fn fault(&mut self) -> Fault {
        // Whole millionths of a request (see the module comment), as a percentage.
        fn percent(g: &mut Gen) -> f64 {
            let millionths = match g.rng.u8(0..3) {
                0 => g.rng.u32(0..=1_000_000),
                1 => g.rng.u32(0..=100) * 10_000,
                _ => g.pick(&[0, 1, 125_000, 1_000_000]),
            };
            f64::from(millionths) / 10_000.0
        }
        let mut f = Fault {
            delay: self.maybe(50, |g| FaultDelay {
                fixed: g.dur(),
                percentage: percent(g),
            }),
            abort: self.maybe(50, |g| {
                let http = g.rng.bool();
                FaultAbort {
                    http_status: http.then(|| g.rng.u16(200..=599)),
                    grpc_status: (!http).then(|| g.rng.u32(0..=16)),
                    percentage: percent(g),
                }
            }),
            header_control: self.rng.bool(),
        };
        if f.delay.is_none() && f.abort.is_none() {
            f.header_control = true;
        }
        f
    }

    // Clusters and endpoints.

    fn cluster(&mut self, i: usize) -> Cluster {
        let discovery = self.maybe(35, Gen::discovery);
        let endpoints = if discovery.is_some() {
            Vec::new()
        } else {
            self.endpoints()
        };
        let any_size = self.rng.u64(1..=crate::lb::MAX_RING_SIZE);
        let ring_min = self.pick(&[1, 1024, 4096, any_size]);
        let outlier_enabled = self.chance(70);
        let base_ejection = self.dur_pos();
        let budget_enabled = self.chance(80);
        let dns_named = discovery.is_some();
        let mut c = Cluster {
            name: self.name("cluster", i),
            protocol: self.pick(&[
                UpstreamProtocol::Http1,
                UpstreamProtocol::Http2,
                UpstreamProtocol::Auto,
            ]),
            connect_timeout: self.dur_pos(),
            lb_policy: self.pick(&[
                LbPolicy::PeakEwma,
                LbPolicy::RoundRobin,
                LbPolicy::Random,
                LbPolicy::LeastRequest,
                LbPolicy::RingHash,
                LbPolicy::Maglev,
            ]),
            peak_ewma: PeakEwmaSettings {
                decay: self.dur_pos(),
                default_rtt: self.dur_pos(),
            },
            least_request: LeastRequestSettings {
                choice_count: self.rng.u32(2..=100),
            },
            ring_hash: RingHashSettings {
                minimum_ring_size: ring_min,
                maximum_ring_size: self.rng.u64(ring_min..=crate::lb::MAX_RING_SIZE),
                hash_balance_factor: self.maybe(30, |g| g.rng.u32(100..1000)),
            },
            maglev: MaglevSettings {
                table_size: self.pick(&[3, 5003, 65_537, 5_000_011]),
                hash_balance_factor: self.maybe(30, |g| g.rng.u32(100..1000)),
            },
            panic_threshold: self.rng.u32(0..=100),
            locality: LocalitySettings {
                enabled: self.rng.bool(),
                min_healthy_percent: self.rng.u32(0..=100),
                min_cluster_size: self.u32(),
            },
            pool: PoolSettings {
                idle_timeout: self.dur(),
                max_idle_per_endpoint: self.u32(),
                max_requests_per_http2_connection: self.u32().max(1),
                max_connection_age: self.maybe(40, Gen::dur_pos),
            },
            per_connection_buffer_limit_bytes: self.bytes_in(8 << 10, 16 << 20),
            health_checks: self.maybe(50, Gen::health_check),
            endpoints,
            discovery,
            retry_budget: RetryBudget {
                enabled: budget_enabled,
                retry_percent: self.rng.u32(0..=1000),
                min_retries_per_second: self.u32(),
                ttl: if budget_enabled {
                    Duration(std::time::Duration::from_millis(
                        self.rng.u64(1000..=60_000),
                    ))
                } else {
                    self.dur()
                },
            },
            circuit_breakers: CircuitBreakers {
                max_connections: self.u32().max(1),
                max_pending_requests: self.u32().max(1),
                max_requests: self.u32().max(1),
                max_retries: self.u32(),
            },
            outlier_detection: if outlier_enabled {
                OutlierDetection {
                    enabled: true,
                    consecutive_5xx: self.u32(),
                    consecutive_gateway_failure: self.u32(),
                    failure_percentage_threshold: self.rng.u32(0..=100),
                    failure_percentage_minimum_hosts: self.u32(),
                    failure_percentage_request_volume: self.u32(),
                    interval: self.dur_pos(),
                    base_ejection_time: base_ejection,
                    max_ejection_time: self.dur_min(base_ejection),
                    max_ejection_percent: self.rng.u32(0..=100),
                }
            } else if self.rng.bool() {
                OutlierDetection {
                    enabled: false,
                    ..OutlierDetection::default()
                }
            } else {
                // Disabled: the other settings are not checked (and must still round-trip).
                OutlierDetection {
                    enabled: false,
                    consecutive_5xx: self.u32(),
                    consecutive_gateway_failure: self.u32(),
                    failure_percentage_threshold: self.u32(),
                    failure_percentage_minimum_hosts: self.u32(),
                    failure_percentage_request_volume: self.u32(),
                    interval: self.dur(),
                    base_ejection_time: self.dur(),
                    max_ejection_time: self.dur(),
                    max_ejection_percent: self.u32(),
                }
            },
            tls: None,
            per_endpoint_stats: self.rng.bool(),
        };
        if self.chance(40) {
            let sans = self.list(3, |g| {
                if g.rng.bool() {
                    g.spiffe()
                } else {
                    g.dns_name()
                }
            });
            let sni = if dns_named || !sans.is_empty() {
                self.maybe(50, Gen::dns_name)
            } else {
                Some(self.dns_name())
            };
            let client = self.chance(40);
            let client_sds = client && self.rng.bool();
            let (ca, ca_secret) = match self.rng.u8(0..3) {
                0 => (None, None),
                1 => (Some(self.file()), None),
                _ => (None, Some(self.secret_name())),
            };
            c.tls = Some(UpstreamTls {
                sni,
                ca,
                ca_secret,
                verify_subject_alt_names: sans,
                cert: (client && !client_sds).then(|| self.file()),
                key: (client && !client_sds).then(|| self.file()),
                cert_secret: client_sds.then(|| self.secret_name()),
                min_version: self.pick(&[TlsVersion::Tls12, TlsVersion::Tls13]),
            });
        }
        c
    }

    fn endpoints(&mut self) -> Vec<Endpoint> {
        let zones = ["z1".to_string(), "z2".to_string(), "eu-west-1a".to_string()];
        let mut seen = std::collections::HashSet::new();
        (0..self.rng.usize(0..6))
            .map(|_| Endpoint {
                address: SocketAddr::new(self.ip(), self.rng.u16(1..)),
                weight: {
                    let any = self.u32().max(1);
                    self.pick(&[1, 1, 2, 100, any])
                },
                zone: self.maybe(50, |g| g.pick(&zones)),
            })
            .filter(|e| seen.insert(e.address))
            .collect()
    }

    fn discovery(&mut self) -> Discovery {
        let kind = self.pick(&[
            DiscoveryType::StrictDns,
            DiscoveryType::LogicalDns,
            DiscoveryType::DnsSrv,
        ]);
        let n = if kind == DiscoveryType::LogicalDns {
            1
        } else {
            self.rng.usize(1..4)
        };
        let names = (0..n)
            .map(|_| match kind {
                DiscoveryType::DnsSrv => format!("_{}._tcp.{}", self.label(), self.dns_name()),
                _ => match self.rng.u8(0..4) {
                    0 => SocketAddr::new(self.ip(), self.rng.u16(1..)).to_string(),
                    1 => format!("{}.:{}", self.dns_name(), self.rng.u16(1..)),
                    _ => format!("{}:{}", self.dns_name(), self.rng.u16(1..)),
                },
            })
            .collect();
        let min_refresh = self.dur_pos();
        Discovery {
            kind,
            names,
            resolvers: self.list(2, |g| SocketAddr::new(g.ip(), g.pick(&[53, 5353]))),
            min_refresh,
            max_refresh: self.dur_min(min_refresh),
            timeout: self.dur_pos(),
            family: self.pick(&[AddressFamily::Auto, AddressFamily::V4, AddressFamily::V6]),
        }
    }

    fn health_check(&mut self) -> HealthCheck {
        let ten_ms = Duration::from_millis(10);
        let mut hc = HealthCheck {
            interval: self.dur_min(ten_ms),
            interval_jitter_percent: self.rng.u32(0..=50),
            timeout: self.dur_pos(),
            unhealthy_threshold: self.u32().max(1),
            healthy_threshold: self.u32().max(1),
            no_traffic_interval: self.maybe(40, |g| g.dur_min(ten_ms)),
            http: None,
            grpc: None,
            tcp: None,
        };
        match self.rng.u8(0..3) {
            0 => {
                hc.http = Some(HttpHealthCheck {
                    path: format!("{}?probe=1", self.path()),
                    host: self.maybe(50, |g| {
                        if g.rng.bool() {
                            g.dns_name()
                        } else {
                            format!("{}:{}", g.dns_name(), g.rng.u16(1..))
                        }
                    }),
                    expected_statuses: (0..self.rng.usize(1..4))
                        .map(|_| {
                            let start = self.rng.u16(100..=599);
                            StatusRange {
                                start,
                                end: self.rng.u16(start + 1..=600),
                            }
                        })
                        .collect(),
                })
            }
            1 => {
                hc.grpc = Some(GrpcHealthCheck {
                    service_name: if self.rng.bool() {
                        String::new()
                    } else {
                        format!("{}.v1", self.label())
                    },
                    authority: self.maybe(50, Gen::dns_name),
                })
            }
            _ => hc.tcp = Some(TcpHealthCheck {}),
        }
        hc
    }

    /// A whole config: clusters, route tables over them, listeners over both. Static clusters
    /// may list no endpoints (the control plane's `endpoints_optional` rule).
    fn config(&mut self) -> Config {
        let clusters: Vec<Cluster> = (0..self.rng.usize(1..5)).map(|i| self.cluster(i)).collect();
        let cluster_names: Vec<String> = clusters.iter().map(|c| c.name.clone()).collect();
        let route_tables: Vec<RouteTable> = (0..self.rng.usize(1..3))
            .map(|i| self.route_table(i, &cluster_names))
            .collect();
        let table_names: Vec<String> = route_tables.iter().map(|t| t.name.clone()).collect();
        let listeners = (0..self.rng.usize(1..4))
            .map(|i| self.listener(i, &table_names, &cluster_names))
            .collect();
        Config {
            listeners,
            route_tables,
            clusters,
            ..Config::default()
        }
    }
}

/// The generated config of `seed`, checked by the model's own validation (the generator is
/// wrong, not the mapping, if this fails).
fn valid_config(seed: u64) -> Config {
    let config = Gen::new(seed).config();
    let raw = RawConfig::from(config.clone());
    let options = ParseOptions {
        endpoints_optional: true,
    };
    let issues = crate::validate_with(&raw, &options);
    assert!(
        issues.is_empty(),
        "seed {seed}: the generator made an invalid config: {issues:#?}\n{config:#?}"
    );
    // And it is a config a file can hold: its YAML reads back the same.
    let text = serde_yaml_ng::to_string(&config).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    match crate::parse_with(&text, "generated.yaml", &options) {
        Ok(back) => assert!(
            back == config,
            "seed {seed}: the YAML does not read back\n{text}"
        ),
        Err(e) => panic!("seed {seed}: {e}\n{text}"),
    }
    // Each resource passes `validate_resource` too: `decode` checks what it returns.
    config
}

/// SDS secrets for `seed` (not part of a config: the control plane makes them), checked by
/// the model's own validation.
fn valid_secrets(seed: u64) -> Vec<Resource> {
    let mut g = Gen::new(seed.wrapping_add(1 << 32));
    let secrets = g.list(2, |g| Resource::Secret(g.secret()));
    for s in &secrets {
        let issues = crate::validate_resource(s);
        assert!(
            issues.is_empty(),
            "seed {seed}: invalid secret: {issues:#?}"
        );
    }
    secrets
}

fn seeds() -> Vec<u64> {
    let var = |name: &str| std::env::var(name).ok().and_then(|s| s.parse::<u64>().ok());
    match (var("SLUICE_XDS_SEED"), var("SLUICE_XDS_CASES")) {
        (Some(seed), _) => vec![seed],
        (None, cases) => (0..cases.unwrap_or(CASES)).collect(),
    }
}

/// One resource of a generated config, encoded once and decoded.
struct Case {
    seed: u64,
    resource: Resource,
    any: Any,
    decoded: Result<Vec<Resource>, DecodeError>,
}

/// The generated configs, each with its seed, and their resources.
struct Cases {
    configs: Vec<(u64, Config)>,
    resources: Vec<Case>,
}

/// The configs of [`seeds`] and every resource of each encoded and decoded, computed once for
/// the tests below (generating, validating and decoding is most of their time).
fn cases() -> &'static Cases {
    static CASES: std::sync::OnceLock<Cases> = std::sync::OnceLock::new();
    CASES.get_or_init(|| {
        let one = |seed: u64| {
            let config = valid_config(seed);
            let cases: Vec<Case> = config
                .resources()
                .into_values()
                .chain(valid_secrets(seed))
                .map(|resource| {
                    let any = encode(&resource);
                    let decoded = decode(&any.type_url, &any);
                    Case {
                        seed,
                        resource,
                        any,
                        decoded,
                    }
                })
                .collect();
            ((seed, config), cases)
        };
        // Two threads (the seeds alternate).
        let seeds = seeds();
        let (even, odd): (Vec<u64>, Vec<u64>) = seeds.iter().partition(|s| *s % 2 == 0);
        let (even, odd) = std::thread::scope(|s| {
            let odd = s.spawn(|| odd.into_iter().map(one).collect::<Vec<_>>());
            let even: Vec<_> = even.into_iter().map(one).collect();
            (
                even,
                odd.join().unwrap_or_else(|e| std::panic::resume_unwind(e)),
            )
        });
        let mut configs = Vec::new();
        let mut cases = Vec::new();
        for (config, c) in even.into_iter().chain(odd) {
            configs.push(config);
            cases.extend(c);
        }
        configs.sort_by_key(|(seed, _)| *seed);
        cases.sort_by_key(|c| c.seed); // stable: each config's resources stay in order
        Cases {
            configs,
            resources: cases,
        }
    })
}

/// The model as YAML lines, for a readable difference in failures.
fn yaml_of(r: &Resource) -> String {
    let text = match r {
        Resource::Listener(l) => serde_yaml_ng::to_string(l),
        Resource::RouteTable(t) => serde_yaml_ng::to_string(t),
        Resource::Cluster(c) => serde_yaml_ng::to_string(c),
        Resource::Endpoints(e) => serde_yaml_ng::to_string(e),
        // Not serializable (and its `Debug` hides the key, which is fake here).
        Resource::Secret(s) => {
            return match &s.kind {
                SecretKind::Certificate {
                    cert_chain,
                    private_key,
                } => format!(
                    "name: {:?}\ncert_chain: {cert_chain:?}\nprivate_key: {:?}\n",
                    s.name, private_key.0
                ),
                SecretKind::TrustBundle { ca } => format!("name: {:?}\nca: {ca:?}\n", s.name),
            };
        }
    };
    text.unwrap_or_else(|e| format!("(not serializable: {e})"))
}

/// What differs between `want` and `got` (their YAML lines that are not in the other).
fn difference(want: &Resource, got: &[Resource]) -> String {
    let [got] = got else {
        return format!("decoded {} resources: {got:#?}", got.len());
    };
    let (w, g) = (yaml_of(want), yaml_of(got));
    let gl: BTreeSet<&str> = g.lines().collect();
    let wl: BTreeSet<&str> = w.lines().collect();
    let lost: Vec<&str> = w.lines().filter(|l| !gl.contains(l)).collect();
    let added: Vec<&str> = g.lines().filter(|l| !wl.contains(l)).collect();
    format!("lines lost: {lost:#?}\nlines gained: {added:#?}\n(full YAML of the original:)\n{w}")
}

#[test]
fn generated_configs_are_valid_and_varied() {
    // The generator is tested too: it makes valid configs (checked in `valid_config`), and
    // over the default seeds it reaches every kind of thing it is meant to cover.
    let configs = &cases().configs;
    if configs.len() < usize::try_from(CASES).unwrap_or(usize::MAX) {
        return; // a single seed or a few: nothing to say about variety
    }
    let mut seen = BTreeSet::new();
    for (_, config) in configs {
        for l in &config.listeners {
            seen.insert(match (&l.kind, &l.tls) {
                (ListenerKind::Http(_), Some(_)) => "https listener",
                (ListenerKind::Http(_), None) => "http listener",
                (ListenerKind::Tcp(t), _) if t.sni.is_empty() => "tcp listener",
                (ListenerKind::Tcp(_), _) => "sni listener",
            });
            if let Some(t) = &l.tls {
                if t.certificates.iter().any(|c| c.secret.is_some()) {
                    seen.insert("sds listener certificate");
                }
                if t.client_ca_secret.is_some() {
                    seen.insert("sds client ca");
                }
            }
        }
        for r in config
            .route_tables
            .iter()
            .flat_map(|t| &t.virtual_hosts)
            .flat_map(|v| &v.routes)
        {
            seen.insert(match r.action {
                RouteAction::Cluster(_) => "cluster route",
                RouteAction::WeightedClusters(_) => "weighted route",
                RouteAction::Redirect(_) => "redirect route",
                RouteAction::DirectResponse(_) => "direct route",
            });
            if r.fault.is_some() {
                seen.insert("fault");
            }
            if !r.hash_policy.is_empty() {
                seen.insert("hash policy");
            }
            if r.rewrite.as_ref().is_some_and(|w| w.regex.is_some()) {
                seen.insert("regex rewrite");
            }
        }
        for c in &config.clusters {
            seen.insert(match c.lb_policy {
                LbPolicy::PeakEwma => "peak_ewma",
                LbPolicy::RoundRobin => "round_robin",
                LbPolicy::Random => "random",
                LbPolicy::LeastRequest => "least_request",
                LbPolicy::RingHash => "ring_hash",
                LbPolicy::Maglev => "maglev",
            });
            if let Some(d) = &c.discovery {
                seen.insert(d.kind.as_str());
            }
            if let Some(hc) = &c.health_checks {
                seen.insert(match hc.kind() {
                    Some(crate::HealthCheckKind::Http(_)) => "http health check",
                    Some(crate::HealthCheckKind::Grpc(_)) => "grpc health check",
                    _ => "tcp health check",
                });
            }
            if let Some(t) = &c.tls {
                seen.insert("upstream tls");
                if t.cert_secret.is_some() {
                    seen.insert("sds upstream certificate");
                }
                if t.ca_secret.is_some() {
                    seen.insert("sds upstream ca");
                }
            }
            if c.endpoints.iter().any(|e| e.address.is_ipv6()) {
                seen.insert("ipv6 endpoint");
            }
        }
    }
    let want = [
        "https listener",
        "http listener",
        "tcp listener",
        "sni listener",
        "cluster route",
        "weighted route",
        "redirect route",
        "direct route",
        "fault",
        "hash policy",
        "regex rewrite",
        "peak_ewma",
        "round_robin",
        "random",
        "least_request",
        "ring_hash",
        "maglev",
        "strict_dns",
        "logical_dns",
        "dns_srv",
        "http health check",
        "grpc health check",
        "tcp health check",
        "upstream tls",
        "ipv6 endpoint",
        "sds listener certificate",
        "sds client ca",
        "sds upstream certificate",
        "sds upstream ca",
        "certificate secret",
        "trust bundle secret",
    ];
    for c in &cases().resources {
        if let Resource::Secret(s) = &c.resource {
            seen.insert(match s.kind {
                SecretKind::Certificate { .. } => "certificate secret",
                SecretKind::TrustBundle { .. } => "trust bundle secret",
            });
        }
    }
    let missing: Vec<_> = want.iter().filter(|w| !seen.contains(**w)).collect();
    assert!(missing.is_empty(), "never generated: {missing:?}");
}

#[test]
fn generated_configs_round_trip() {
    // Every failure is collected (the first few shown in full), so one run shows them all.
    let Cases {
        configs,
        resources: cases,
    } = cases();
    let mut failures = Vec::new();
    for c in cases {
        let (seed, r) = (c.seed, &c.resource);
        if c.any.type_url != type_url(r.kind()) {
            failures.push(format!(
                "seed {seed}: {} {}: type URL {}",
                r.kind(),
                r.name(),
                c.any.type_url
            ));
            continue;
        }
        match &c.decoded {
            Err(e) => failures.push(format!(
                "seed {seed}: {} {}: {e}\n{r:#?}",
                r.kind(),
                r.name()
            )),
            Ok(back) if back.as_slice() != std::slice::from_ref(r) => failures.push(format!(
                "seed {seed}: {} {} did not round-trip\n{}\n{r:#?}",
                r.kind(),
                r.name(),
                difference(r, back)
            )),
            Ok(_) => {}
        }
    }
    // Every config has a listener, a route table and a cluster at least.
    assert!(
        cases.len() >= 3 * configs.len(),
        "{} resources",
        cases.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} resources did not round-trip; the first:\n\n{}",
        failures.len(),
        cases.len(),
        failures
            .iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n\n")
    );
}

#[test]
fn encoding_twice_decodes_the_same() {
    // What the control plane's content hash relies on. Bytes may differ (protobuf maps, such
    // as per-filter configs and metadata, are hash maps), models must not.
    for c in &cases().resources {
        let again = encode(&c.resource);
        assert_eq!(again.type_url, c.any.type_url);
        assert_eq!(
            decode(&again.type_url, &again),
            c.decoded,
            "seed {}: {} {}",
            c.seed,
            c.resource.kind(),
            c.resource.name()
        );
    }
}

#[test]
fn generated_route_tables_round_trip_inline_in_listeners() {
    // Envoy's own configs often carry the route table in the listener (`route_config` instead
    // of `rds`): decoding gives the listener and the table, both unchanged.
    let mut failures = Vec::new();
    let mut count = 0;
    // A third of the seeds: the table's own decoding is the same code as over RDS, which
    // every seed meets above; this covers the wrapping.
    for (seed, config) in cases().configs.iter().filter(|(seed, _)| seed % 3 == 0) {
        for l in &config.listeners {
            let ListenerKind::Http(h) = &l.kind else {
                continue;
            };
            let Some(t) = config.route_tables.iter().find(|t| t.name == h.route_table) else {
                continue;
            };
            let (l, t) = (
                Resource::Listener(l.clone()),
                Resource::RouteTable(t.clone()),
            );
            let any = inline_route_config(&encode(&l), &encode(&t));
            let want = vec![l, t];
            match decode(LISTENER, &any) {
                Ok(back) if back == want => {}
                Ok(back) => failures.push(format!(
                    "seed {seed}: {:?} did not round-trip\n{}\n{}",
                    want[0].name(),
                    difference(&want[0], back.get(..1).unwrap_or_default()),
                    difference(&want[1], back.get(1..).unwrap_or_default()),
                )),
                Err(e) => failures.push(format!("seed {seed}: {e}")),
            }
            count += 1;
        }
    }
    assert!(
        count > 0 || cases().configs.len() < 10,
        "no HTTP listener generated"
    );
    assert!(
        failures.is_empty(),
        "{} of {count} listeners did not round-trip; the first:\n\n{}",
        failures.len(),
        failures
            .iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n\n")
    );
}
