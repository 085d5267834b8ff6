//! Compiled HTTP listener settings: the route table, the filter chain and hyper's connection
//! builders with the listener's limits (HTTP/1.1 prebuilt; HTTP/2 built per connection, whose
//! executor carries the connection's stream idle timeout); and [`CurrentSpec`], through which a
//! worker's connections of one listener see the listener's current settings.

use crate::http::edge::EdgePolicy;
use crate::http::filters::{AccessLog, FilterChain, HttpFilter};
use crate::metrics::ListenerMetrics;
use crate::route::RouteTable;
use hyper::server::conn::{http1, http2};
use sluice_config as config;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

/// Compiled HTTP listener settings.
#[derive(Debug)]
pub struct HttpSpec {
    /// The listener's name.
    pub name: String,
    /// The listener's metric handles.
    pub metrics: ListenerMetrics,
    /// The route table.
    pub routes: Arc<RouteTable>,
    /// Settings from the config.
    pub settings: config::HttpListener,
    /// The listener's filter chain.
    pub filters: FilterChain,
    /// The normalize step's policy (path, host, header trust).
    pub(crate) edge: EdgePolicy,
    pub(crate) h1: http1::Builder,
    /// The stream idle timeout (`None`: disabled).
    pub(crate) stream_idle: Option<std::time::Duration>,
    /// The access log (also in the filter chain, whose completion hook writes the lines).
    pub(crate) access_log: Option<Arc<AccessLog>>,
    /// The tracer, when tracing is on.
    pub(crate) tracer: Option<Arc<crate::otel::Tracer>>,
}

/// What an HTTP listener reports each request to besides metrics.
#[derive(Debug, Default)]
pub struct Telemetry {
    /// The listener's access log.
    pub access_log: Option<Arc<AccessLog>>,
    /// The proxy's tracer (`tracing` in the config).
    pub tracer: Option<Arc<crate::otel::Tracer>>,
}

/// hyper's own HTTP/1.1 header-count limit.
const HYPER_DEFAULT_MAX_HEADERS: u32 = 100;

impl HttpSpec {
    /// Compiles an HTTP listener's settings with its route table.
    pub fn compile(
        name: &str,
        metrics: ListenerMetrics,
        routes: Arc<RouteTable>,
        s: &config::HttpListener,
        extra_filters: &[Arc<dyn HttpFilter>],
        tls: Option<&crate::tls::ServerTls>,
        telemetry: Telemetry,
    ) -> HttpSpec {
        let Telemetry { access_log, tracer } = telemetry;
        let mut h1 = http1::Builder::new();
        // hyper parses up to 100 headers in a stack array; an explicit limit (even 100) makes it
        // allocate and fill a vector per request, so it is only set when it differs.
        if s.max_request_headers != HYPER_DEFAULT_MAX_HEADERS {
            h1.max_headers(s.max_request_headers as usize);
        }
        // hyper has one buffer limit per HTTP/1.1 connection: the read buffer (which must hold
        // a whole request head) and the queue of response bytes not yet written, so the write
        // queue is bounded by the larger of the buffer limit and what the head limit needs.
        let head_buf = (s.max_request_header_bytes.bytes() as usize).max(8192) + 8192;
        let buffer_limit = s.per_connection_buffer_limit_bytes.bytes() as usize;
        h1.keep_alive(true)
            .half_close(false)
            // Validation bounds it to 1MiB; the same limit caps chunked trailers.
            .max_header_size(s.max_request_header_bytes.bytes() as usize)
            .max_buf_size(head_buf.max(buffer_limit))
            // The connection timer enforces the header timeout (one timer per connection, not a
            // boxed sleep per request).
            .header_read_timeout(None);
        HttpSpec {
            name: name.to_string(),
            filters: FilterChain::standard(
                extra_filters,
                crate::http::filters::Identity::new(
                    &s.authorization,
                    tls,
                    Arc::clone(&routes),
                    metrics.clone(),
                ),
                s.generate_request_id,
                &metrics,
                access_log.clone(),
            ),
            metrics,
            routes,
            settings: s.clone(),
            edge: EdgePolicy::compile(s),
            h1,
            stream_idle: (!s.stream_idle_timeout.is_zero()).then(|| s.stream_idle_timeout.get()),
            access_log,
            tracer,
        }
    }

    /// hyper's HTTP/2 builder with the listener's limits, spawning streams on `exec`. Built per
    /// connection (a few field stores) because the executor is the connection's own.
    pub(crate) fn h2<E>(&self, exec: E) -> http2::Builder<E> {
        let s = &self.settings;
        let h2s = &s.http2;
        let mut h2 = http2::Builder::new(exec);
        h2.max_concurrent_streams(h2s.max_concurrent_streams)
            .max_header_list_size(s.max_request_header_bytes.bytes() as u32)
            .initial_stream_window_size(h2s.initial_stream_window_size.bytes() as u32)
            .initial_connection_window_size(h2s.initial_connection_window_size.bytes() as u32)
            .max_frame_size(h2s.max_frame_size.bytes() as u32)
            .adaptive_window(false)
            // Response bytes h2 queues per stream beyond what the socket took: a client with a
            // huge window that does not read holds this much per stream, then the response
            // body is no longer polled (backpressure to the upstream).
            .max_send_buf_size(s.per_connection_buffer_limit_bytes.bytes() as usize)
            // Rapid-reset (CVE-2023-44487) and MadeYouReset bounds, stricter than h2's defaults.
            .max_pending_accept_reset_streams(20)
            .max_local_error_reset_streams(100)
            .keep_alive_interval(None);
        h2
    }
}

/// The current settings of one bound HTTP listener on one worker, shared by its accept loop and
/// its connections. The worker replaces them when the listener's config changes (pushed by the
/// listener reconciler), so a request reads them with a `RefCell` borrow and an `Rc` clone: no
/// atomic, no look-up in the live state.
#[derive(Debug)]
#[allow(clippy::redundant_allocation)] // the `Rc` makes the per-request clone non-atomic
pub(crate) struct CurrentSpec(RefCell<Rc<Arc<HttpSpec>>>);

impl CurrentSpec {
    pub(crate) fn new(spec: Arc<HttpSpec>) -> Rc<Self> {
        Rc::new(CurrentSpec(RefCell::new(Rc::new(spec))))
    }

    /// The current settings. `Rc` around the shared `Arc` so the per-request clone is a
    /// non-atomic increment rather than an atomic one on a counter every worker touches.
    #[allow(clippy::redundant_allocation)]
    pub(crate) fn get(&self) -> Rc<Arc<HttpSpec>> {
        Rc::clone(&self.0.borrow())
    }

    /// Replaces the settings; requests already running keep the ones they started with.
    pub(crate) fn set(&self, spec: Arc<HttpSpec>) {
        *self.0.borrow_mut() = Rc::new(spec);
    }
}
