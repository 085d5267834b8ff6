//! HTTP filters: an ordered chain compiled per listener that sees each forwarded request's head
//! (and may continue, answer now, or wait on a future — the shape external authorization and
//! rate limiting need), each response head, and the request's completion (status, body bytes,
//! duration, upstream endpoint, response flag, how it ended) — the hook access logs,
//! histograms, outlier detection and EWMA use. One file per filter.
//!
//! Filters read their per-route settings from the matched route (as Envoy's
//! `typed_per_filter_config`): the header-operation filter applies the virtual host's and the
//! route's operations, the fault filter the route's faults.

pub(crate) mod access_log;
mod fault;
mod forwarded;
pub(crate) use crate::message::grpc_web;
mod header_ops;
mod identity;
mod request_id;

pub(crate) use access_log::ConnRecord;
pub use access_log::{AccessLog, RequestRecord};
pub use fault::{Fault, FaultCounters, FaultMetrics};
pub use forwarded::Forwarded;
pub use header_ops::HeaderOps;
pub use identity::Identity;
pub use request_id::RequestId;

use crate::http::ConnContext;
use crate::metrics::ListenerMetrics;
use crate::route::{Route, VirtualHost};
use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode, Uri};
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// A filter's pending decision.
pub type WaitFuture = Pin<Box<dyn Future<Output = Verdict>>>;

/// What a request filter decides.
pub enum Verdict {
    /// Go on with the next filter (and then upstream).
    Continue,
    /// Answer the request now with this (small, complete) response; later filters and the
    /// upstream are skipped.
    Respond(Response<Bytes>),
    /// Wait for the future (an authorization or rate-limit service, say), then act on its
    /// verdict.
    Wait(WaitFuture),
}

impl fmt::Debug for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Continue => f.write_str("Continue"),
            Verdict::Respond(r) => write!(f, "Respond({})", r.status()),
            Verdict::Wait(_) => f.write_str("Wait"),
        }
    }
}

/// The response flag of a filter's own answer (in the response's extensions): counted in
/// `sluice_downstream_error_responses_total` and given to the completion hook like the flag
/// of an error Sluice answered (a fault abort is `FI`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseFlag(pub &'static str);

/// What a request filter sees: the routed request's head, which it may change.
#[derive(Debug)]
pub struct RequestHead<'a> {
    /// Method.
    pub method: &'a Method,
    /// Target as received.
    pub uri: &'a Uri,
    /// Headers (hop-by-hop headers already removed).
    pub headers: &'a mut HeaderMap,
    /// The downstream connection.
    pub conn: &'a ConnContext,
    /// The client's IP, formatted once per connection.
    pub client_ip: &'a http::HeaderValue,
    /// The matched virtual host.
    pub virtual_host: &'a VirtualHost,
    /// The matched route.
    pub route: &'a Route,
}

/// What a response filter sees: the response head on its way downstream.
#[derive(Debug)]
pub struct ResponseHead<'a> {
    /// Status.
    pub status: StatusCode,
    /// Headers (hop-by-hop headers already removed).
    pub headers: &'a mut HeaderMap,
    /// The matched virtual host.
    pub virtual_host: &'a VirtualHost,
    /// The matched route.
    pub route: &'a Route,
}

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The response body was sent to its end.
    Complete,
    /// The upstream's body failed midway (reset or protocol error).
    UpstreamReset,
    /// The downstream went away (or reset the stream) before the body ended.
    DownstreamGone,
}

/// A finished request, as the completion hook sees it.
#[derive(Clone, Debug)]
pub struct Completion {
    /// Status sent downstream.
    pub status: StatusCode,
    /// Response body bytes handed to the downstream connection.
    pub body_bytes: u64,
    /// From the request head's arrival to the end of the response.
    pub duration: Duration,
    /// The upstream endpoint that answered, for forwarded requests.
    pub upstream: Option<SocketAddr>,
    /// Envoy-style response flag of a failure Sluice answered (`NR`, `UF`, …).
    pub flag: Option<&'static str>,
    /// How it ended.
    pub outcome: Outcome,
    /// The access log's record of the request (when the listener logs and sampled it).
    pub record: Option<Arc<RequestRecord>>,
}

/// One HTTP filter. Every method has a do-nothing default.
pub trait HttpFilter: fmt::Debug + Send + Sync {
    /// Called for each request about to be forwarded, in chain order.
    fn on_request(&self, _req: &mut RequestHead<'_>) -> Verdict {
        Verdict::Continue
    }

    /// Called for each response head on its way downstream (forwarded, direct and redirect
    /// responses), in chain order.
    fn on_response(&self, _resp: &mut ResponseHead<'_>) {}

    /// True when [`HttpFilter::on_complete`] does something (the request path only tracks
    /// completion when some filter asks).
    fn wants_completion(&self) -> bool {
        false
    }

    /// Called once per request when its response ends, fails or is abandoned.
    fn on_complete(&self, _done: &Completion) {}
}

/// An ordered, compiled filter chain.
#[derive(Clone, Debug, Default)]
pub struct FilterChain {
    filters: Arc<[Arc<dyn HttpFilter>]>,
    completion: bool,
}

impl FilterChain {
    /// A chain of these filters, in order.
    pub fn new(filters: Vec<Arc<dyn HttpFilter>>) -> Self {
        let completion = filters.iter().any(|f| f.wants_completion());
        FilterChain {
            filters: filters.into(),
            completion,
        }
    }

    /// The standard chain of an HTTP listener: `extra` (embedders' and tests' filters) first,
    /// then identity (421, authorization, `x-forwarded-client-cert`: nothing else runs for a
    /// request it refuses), fault injection (first of the rest, as Envoy requires), header
    /// operations, `x-forwarded-*`, request ids when enabled, and the access log when the
    /// listener has one.
    pub fn standard(
        extra: &[Arc<dyn HttpFilter>],
        identity: Identity,
        request_ids: bool,
        metrics: &ListenerMetrics,
        access_log: Option<Arc<AccessLog>>,
    ) -> Self {
        let mut filters: Vec<Arc<dyn HttpFilter>> = extra.to_vec();
        filters.push(Arc::new(identity));
        filters.push(Arc::new(Fault::new(metrics.clone())));
        filters.push(Arc::new(HeaderOps));
        filters.push(Arc::new(Forwarded));
        if request_ids {
            filters.push(Arc::new(RequestId));
        }
        if let Some(log) = access_log {
            filters.push(log);
        }
        FilterChain::new(filters)
    }

    /// Runs the request filters from index `from`. `Err((future, next))` when filter
    /// `next - 1` asked to wait.
    pub(crate) fn on_request(
        &self,
        req: &mut RequestHead<'_>,
        from: usize,
    ) -> Result<Option<Response<Bytes>>, (WaitFuture, usize)> {
        for (i, f) in self.filters.iter().enumerate().skip(from) {
            match f.on_request(req) {
                Verdict::Continue => {}
                Verdict::Respond(r) => return Ok(Some(r)),
                Verdict::Wait(fut) => return Err((fut, i + 1)),
            }
        }
        Ok(None)
    }

    /// Runs the response filters on a response head for the matched route.
    pub(crate) fn on_response(
        &self,
        status: StatusCode,
        headers: &mut HeaderMap,
        virtual_host: &VirtualHost,
        route: &Route,
    ) {
        let mut head = ResponseHead {
            status,
            headers,
            virtual_host,
            route,
        };
        for f in self.filters.iter() {
            f.on_response(&mut head);
        }
    }

    /// True when some filter has a completion hook.
    pub(crate) fn wants_completion(&self) -> bool {
        self.completion
    }

    pub(crate) fn on_complete(&self, done: &Completion) {
        for f in self.filters.iter().filter(|f| f.wants_completion()) {
            f.on_complete(done);
        }
    }
}

#[cfg(test)]
mod tests;
