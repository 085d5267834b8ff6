//! The live config: an immutable [`Snapshot`] compiled off the request path and swapped in
//! atomically. This is the only place live config changes. Requests read the current snapshot
//! (through a per-connection cache keyed by [`Live::generation`]); in-flight requests keep the
//! snapshot they started with.

use crate::cluster::{self, Cluster};
use crate::metrics::{ListenerMetrics, Metrics};
use crate::route::{CompileError, RouteTable};
use crate::rt::LocalExec;
use arc_swap::ArcSwap;
use hyper::server::conn::{http1, http2};
use sluice_config::{self as config, Config};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// One compiled, immutable config.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases with every swap.
    pub generation: u64,
    /// The config it was compiled from.
    pub config: Arc<Config>,
    /// Listeners by name.
    pub listeners: HashMap<String, Arc<ListenerSpec>>,
    /// Route tables by name.
    pub route_tables: HashMap<String, Arc<RouteTable>>,
    /// Clusters by name.
    pub clusters: HashMap<String, Arc<Cluster>>,
}

/// A compiled listener.
#[derive(Debug)]
pub struct ListenerSpec {
    /// Name.
    pub name: String,
    /// Configured address (port may be 0).
    pub address: SocketAddr,
    /// HTTP or TCP.
    pub kind: ListenerKind,
    /// Metric handles.
    pub metrics: ListenerMetrics,
}

/// What a listener does with its connections.
#[derive(Debug)]
pub enum ListenerKind {
    /// Serve HTTP and route.
    Http(Box<HttpSpec>),
    /// Proxy bytes to a cluster.
    Tcp(TcpSpec),
}

/// Compiled HTTP listener settings.
#[derive(Debug)]
pub struct HttpSpec {
    /// The route table.
    pub routes: Arc<RouteTable>,
    /// Settings from the config.
    pub settings: config::HttpListener,
    pub(crate) h1: http1::Builder,
    pub(crate) h2: http2::Builder<LocalExec>,
}

/// Compiled TCP listener settings.
#[derive(Debug)]
pub struct TcpSpec {
    /// Destination cluster.
    pub cluster: Arc<Cluster>,
    /// Idle timeout, if any.
    pub idle_timeout: Option<Duration>,
}

impl ListenerSpec {
    /// `"http"` or `"tcp"`.
    pub fn protocol(&self) -> &'static str {
        match self.kind {
            ListenerKind::Http(_) => "http",
            ListenerKind::Tcp(_) => "tcp",
        }
    }
}

impl Snapshot {
    /// Compiles a validated config, reusing clusters of `previous` whose config is unchanged.
    pub fn compile(
        config: Config,
        previous: Option<&Snapshot>,
        metrics: &Metrics,
        generation: u64,
    ) -> Result<Self, CompileError> {
        let empty = HashMap::new();
        let clusters = cluster::build_registry(
            &config.clusters,
            previous.map_or(&empty, |p| &p.clusters),
            metrics,
        );
        let route_tables: HashMap<String, Arc<RouteTable>> = config
            .route_tables
            .iter()
            .map(|t| Ok((t.name.clone(), Arc::new(RouteTable::compile(t, &clusters)?))))
            .collect::<Result<_, CompileError>>()?;
        let mut listeners = HashMap::new();
        for l in &config.listeners {
            let kind = match (&l.http, &l.tcp) {
                (Some(h), _) => {
                    let routes = route_tables
                        .get(&h.route_table)
                        .cloned()
                        .ok_or(CompileError::Invalid("listener route table"))?;
                    ListenerKind::Http(Box::new(http_spec(routes, h)))
                }
                (None, Some(t)) => ListenerKind::Tcp(TcpSpec {
                    cluster: clusters
                        .get(&t.cluster)
                        .cloned()
                        .ok_or_else(|| CompileError::UnknownCluster(t.cluster.clone()))?,
                    idle_timeout: (!t.idle_timeout.is_zero()).then(|| t.idle_timeout.get()),
                }),
                (None, None) => return Err(CompileError::Invalid("listener without http or tcp")),
            };
            let spec = ListenerSpec {
                name: l.name.clone(),
                address: l.address,
                kind,
                metrics: metrics.listener(&l.name),
            };
            listeners.insert(l.name.clone(), Arc::new(spec));
        }
        Ok(Snapshot {
            generation,
            config: Arc::new(config),
            listeners,
            route_tables,
            clusters,
        })
    }
}

/// hyper's own HTTP/1.1 header-count limit.
const HYPER_DEFAULT_MAX_HEADERS: u32 = 100;

fn http_spec(routes: Arc<RouteTable>, s: &config::HttpListener) -> HttpSpec {
    let mut h1 = http1::Builder::new();
    // hyper parses up to 100 headers in a stack array; an explicit limit (even 100) makes it
    // allocate and fill a vector per request, so it is only set when it differs.
    if s.max_request_headers != HYPER_DEFAULT_MAX_HEADERS {
        h1.max_headers(s.max_request_headers as usize);
    }
    h1.keep_alive(true)
        .half_close(false)
        // Validation bounds it to 1MiB; the same limit caps chunked trailers.
        .max_header_size(s.max_request_header_bytes.bytes() as usize)
        .max_buf_size((s.max_request_header_bytes.bytes() as usize).max(8192) + 8192)
        // The connection timer enforces the header timeout (one timer per connection, not a
        // boxed sleep per request).
        .header_read_timeout(None);
    let mut h2 = http2::Builder::new(LocalExec);
    let h2s = &s.http2;
    h2.max_concurrent_streams(h2s.max_concurrent_streams)
        .max_header_list_size(s.max_request_header_bytes.bytes() as u32)
        .initial_stream_window_size(h2s.initial_stream_window_size.bytes() as u32)
        .initial_connection_window_size(h2s.initial_connection_window_size.bytes() as u32)
        .max_frame_size(h2s.max_frame_size.bytes() as u32)
        .adaptive_window(false)
        .max_send_buf_size(256 << 10)
        // Rapid-reset (CVE-2023-44487) and MadeYouReset bounds, stricter than h2's defaults.
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(100)
        .keep_alive_interval(None);
    HttpSpec {
        routes,
        settings: s.clone(),
        h1,
        h2,
    }
}

/// The live state shared by every worker, the admin API and the reloader.
#[derive(Debug)]
pub struct Live {
    current: ArcSwap<Snapshot>,
    generation: AtomicU64,
    ready: AtomicBool,
    draining: AtomicBool,
    /// Metric families.
    pub metrics: Arc<Metrics>,
}

impl Live {
    /// Live state starting with `snapshot`.
    pub fn new(snapshot: Snapshot, metrics: Arc<Metrics>) -> Self {
        Live {
            generation: AtomicU64::new(snapshot.generation),
            current: ArcSwap::from_pointee(snapshot),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            metrics,
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The current generation: one atomic load, for cheap "has anything changed" checks.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Compiles `config` against the current snapshot (so unchanged clusters carry over).
    pub fn compile(&self, config: Config) -> Result<Snapshot, CompileError> {
        let current = self.current.load();
        Snapshot::compile(
            config,
            Some(&current),
            &self.metrics,
            current.generation + 1,
        )
    }

    /// Makes `snapshot` current. New requests see it; in-flight requests finish on the old one.
    pub fn swap(&self, snapshot: Snapshot) {
        let generation = snapshot.generation;
        self.current.store(Arc::new(snapshot));
        self.generation.store(generation, Ordering::Release);
    }

    /// True once listeners are bound and not draining.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.is_draining()
    }

    /// True while shutting down.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub(crate) fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub(crate) fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
}
