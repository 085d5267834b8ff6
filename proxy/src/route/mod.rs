//! Compiled route tables. [`RouteTable::find`] is a pure function from a request head to the
//! virtual host and route that take it; [`action`] holds what a route does.

pub(crate) mod action;
mod hash;
mod host;
mod matcher;
mod policy;
#[cfg(test)]
mod tests;

pub use action::{Action, Backends, Forward, HeaderOps};
pub use hash::RequestHash;
pub(crate) use host::strip_port;
pub(crate) use matcher::percent_decode;
pub use policy::Policy;

use crate::cluster::Registry;
use http::{HeaderMap, Method};
use matcher::RouteMatcher;
use sluice_config as config;

/// Why a validated config still could not be compiled (a bug or a resource that vanished).
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// A regex that the validator accepted failed to build.
    #[error("{0}")]
    Regex(String),
    /// A value that validation should have rejected.
    #[error("invalid {0}")]
    Invalid(&'static str),
    /// A route names a cluster that does not exist.
    #[error("unknown cluster `{0}`")]
    UnknownCluster(String),
}

/// What routing looks at: the request line, host and headers.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// Method.
    pub method: &'a Method,
    /// Host from `:authority` or `Host`, as sent (may carry a port).
    pub host: &'a str,
    /// Path without the query.
    pub path: &'a str,
    /// Query string without `?`.
    pub query: Option<&'a str>,
    /// Request headers.
    pub headers: &'a HeaderMap,
}

/// A compiled route table.
#[derive(Debug)]
pub struct RouteTable {
    /// Name from the config.
    pub name: String,
    hosts: host::HostIndex,
    /// Virtual hosts in config order.
    pub virtual_hosts: Vec<VirtualHost>,
}

/// A compiled virtual host.
#[derive(Debug)]
pub struct VirtualHost {
    /// Name from the config.
    pub name: String,
    /// Routes in order.
    pub routes: Vec<Route>,
    /// Request header changes (applied before the route's).
    pub request_headers: HeaderOps,
    /// Response header changes (applied before the route's).
    pub response_headers: HeaderOps,
}

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    /// Name for logs: the configured name or `virtual_host/index`.
    pub name: String,
    matcher: RouteMatcher,
    /// What to do with a matching request.
    pub action: Action,
    /// Request header changes (applied after the virtual host's).
    pub request_headers: HeaderOps,
    /// Response header changes (applied after the virtual host's).
    pub response_headers: HeaderOps,
    /// Fault injection (read by the fault filter).
    pub fault: Option<Box<config::Fault>>,
    /// Who may use it (read by the identity filter); `None`: everyone.
    pub authorization: Option<Box<Policy>>,
    /// gRPC-Web on this route (the listener's setting when unset).
    pub grpc_web: Option<bool>,
    /// Its responses and latency (`sluice_route_*`).
    pub metrics: crate::metrics::RouteMetrics,
}

impl RouteTable {
    /// A table with no virtual host: every request gets 404. Stands in for a table a listener
    /// names that has not arrived (or was removed).
    pub fn empty(name: &str) -> Self {
        let mut hosts = host::HostIndex::default();
        hosts.finish();
        RouteTable {
            name: name.to_string(),
            hosts,
            virtual_hosts: Vec::new(),
        }
    }

    /// Compiles a validated route table, resolving cluster names to long-lived handles (created
    /// empty for clusters not configured yet).
    pub fn compile(
        table: &config::RouteTable,
        clusters: &mut Registry,
    ) -> Result<Self, CompileError> {
        let mut hosts = host::HostIndex::default();
        let mut virtual_hosts = Vec::with_capacity(table.virtual_hosts.len());
        for (i, vh) in table.virtual_hosts.iter().enumerate() {
            for d in &vh.domains {
                hosts.insert(d, i);
            }
            let routes = vh
                .routes
                .iter()
                .enumerate()
                .map(|(j, r)| {
                    let name = r.name.clone().unwrap_or_else(|| format!("{}/{j}", vh.name));
                    let metrics = clusters.metrics().route(&table.name, &vh.name, &name);
                    Ok(Route {
                        matcher: RouteMatcher::compile(&r.matcher)?,
                        action: Action::compile(r, &name, clusters)?,
                        name,
                        request_headers: HeaderOps::compile(&r.request_headers)?,
                        response_headers: HeaderOps::compile(&r.response_headers)?,
                        fault: r.fault.clone().map(Box::new),
                        authorization: Policy::compile(&r.authorization),
                        grpc_web: r.grpc_web,
                        metrics,
                    })
                })
                .collect::<Result<_, CompileError>>()?;
            virtual_hosts.push(VirtualHost {
                name: vh.name.clone(),
                routes,
                request_headers: HeaderOps::compile(&vh.request_headers)?,
                response_headers: HeaderOps::compile(&vh.response_headers)?,
            });
        }
        hosts.finish();
        Ok(RouteTable {
            name: table.name.clone(),
            hosts,
            virtual_hosts,
        })
    }

    /// The virtual host a host name (or SNI) picks.
    pub fn virtual_host_for(&self, host: &str) -> Option<&VirtualHost> {
        self.hosts
            .find(host)
            .and_then(|i| self.virtual_hosts.get(i))
    }

    /// The virtual host and first route that take `req`, or `None` (answered with 404).
    pub fn find(&self, req: &RequestHead<'_>) -> Option<(&VirtualHost, &Route)> {
        self.find_checked(req).ok().flatten()
    }

    /// Like [`RouteTable::find`], but refuses a request in which a query parameter that a
    /// route otherwise matching it tests appears more than once (`Err` names it): the first
    /// occurrence may satisfy a rule while the upstream believes another.
    pub fn find_checked(
        &self,
        req: &RequestHead<'_>,
    ) -> Result<Option<(&VirtualHost, &Route)>, &str> {
        let Some(vh) = self
            .hosts
            .find(req.host)
            .and_then(|i| self.virtual_hosts.get(i))
        else {
            return Ok(None);
        };
        for route in &vh.routes {
            if route.matcher.matches(req)? {
                return Ok(Some((vh, route)));
            }
        }
        Ok(None)
    }
}

/// How a route table took a request, for `sluice explain`: the virtual host, and each route
/// tried in order with the first condition it failed (`None` for the one that took it, which
/// is last).
#[derive(Debug)]
pub struct Trace<'t> {
    /// The virtual host the host picked.
    pub virtual_host: Option<&'t VirtualHost>,
    /// The routes tried, in order.
    pub routes: Vec<(&'t Route, Option<String>)>,
}

impl RouteTable {
    /// [`RouteTable::find`], with the reasons: the same host index and matcher.
    pub fn trace(&self, req: &RequestHead<'_>) -> Trace<'_> {
        let virtual_host = self
            .hosts
            .find(req.host)
            .and_then(|i| self.virtual_hosts.get(i));
        let mut routes = Vec::new();
        for route in virtual_host
            .map(|vh| vh.routes.as_slice())
            .unwrap_or_default()
        {
            let why = route.matcher.why_not(req);
            let taken = why.is_none();
            routes.push((route, why));
            if taken {
                break;
            }
        }
        Trace {
            virtual_host,
            routes,
        }
    }
}

impl Route {
    /// The prefix this route matched by, if it matches by prefix (for prefix rewrites).
    pub fn matched_prefix(&self) -> Option<&str> {
        match &self.matcher.path {
            matcher::PathMatch::Prefix(p) | matcher::PathMatch::Segments(p) => Some(p),
            _ => None,
        }
    }
}
