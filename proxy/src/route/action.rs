//! What a matched route does: forward (to one cluster or a weighted split, with rewrites and a
//! timeout), redirect, or answer directly. The decisions here are pure functions.

use super::CompileError;
use crate::cluster::{ClusterHandle, Registry};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use regex::Regex;
use sluice_config::{self as config, RouteAction};
use std::sync::Arc;
use std::time::Duration;

/// A route's action.
#[derive(Debug)]
pub enum Action {
    /// Proxy the request upstream.
    Forward(Forward),
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Answer with a fixed status and body.
    Direct {
        /// Status.
        status: StatusCode,
        /// Body.
        body: Bytes,
    },
}

/// Forwarding settings.
#[derive(Debug)]
pub struct Forward {
    /// Where requests go.
    pub backends: Backends,
    /// Path rewrite.
    pub path_rewrite: Option<PathRewrite>,
    /// New `Host`/`:authority`.
    pub host_rewrite: Option<HeaderValue>,
    /// Time allowed until the upstream's response headers (`None`: no limit).
    pub timeout: Option<Duration>,
    /// When requests are tried again.
    pub retry: Box<crate::cluster::retry::RetryPolicy>,
    /// The route's own circuit breakers.
    pub breaker: Option<Box<crate::breaker::RouteBreaker>>,
    /// The request hash for hash-based balancers (`None`: the route has no `hash_policy`).
    pub hash_policy: Option<Box<super::RequestHash>>,
}

/// One cluster or a weighted split.
#[derive(Debug)]
pub enum Backends {
    /// All requests to one cluster.
    Single(Arc<ClusterHandle>),
    /// Requests split by weight; `total` is the sum of the weights.
    Weighted {
        /// Clusters with cumulative weight upper bounds.
        clusters: Vec<(Arc<ClusterHandle>, u64)>,
        /// Sum of weights (> 0).
        total: u64,
    },
}

/// How the path is rewritten before forwarding.
#[derive(Debug)]
pub enum PathRewrite {
    /// Replace the matched prefix.
    Prefix(String),
    /// Replace every match of the regex.
    Regex(Regex, String),
}

/// A compiled redirect.
#[derive(Debug)]
pub struct Redirect {
    scheme: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    path: Option<String>,
    prefix_rewrite: Option<String>,
    /// Redirect status.
    pub status: StatusCode,
    strip_query: bool,
}

impl Action {
    pub(super) fn compile(
        r: &config::Route,
        name: &str,
        clusters: &mut Registry,
    ) -> Result<Self, CompileError> {
        let backends = match &r.action {
            RouteAction::DirectResponse(d) => {
                return Ok(Action::Direct {
                    status: StatusCode::from_u16(d.status)
                        .map_err(|_| CompileError::Invalid("status"))?,
                    body: Bytes::from(d.body.clone().unwrap_or_default()),
                });
            }
            RouteAction::Redirect(rd) => {
                return Ok(Action::Redirect(Redirect {
                    scheme: rd.scheme.clone(),
                    host: rd.host.clone(),
                    port: rd.port,
                    path: rd.path.clone(),
                    prefix_rewrite: rd.prefix_rewrite.clone(),
                    status: StatusCode::from_u16(rd.code)
                        .map_err(|_| CompileError::Invalid("redirect code"))?,
                    strip_query: rd.strip_query,
                }));
            }
            RouteAction::Cluster(c) => Backends::Single(clusters.handle(c)),
            RouteAction::WeightedClusters(wcs) => {
                let mut total = 0u64;
                let mut list = Vec::with_capacity(wcs.len());
                for w in wcs.iter().filter(|w| w.weight > 0) {
                    total += u64::from(w.weight);
                    list.push((clusters.handle(&w.cluster), total));
                }
                if total == 0 {
                    return Err(CompileError::Invalid(
                        "weighted clusters with zero total weight",
                    ));
                }
                Backends::Weighted {
                    clusters: list,
                    total,
                }
            }
        };
        let rw = r.rewrite.clone().unwrap_or_default();
        let path_rewrite = match (rw.prefix, rw.regex) {
            (Some(p), _) => Some(PathRewrite::Prefix(p)),
            (None, Some(re)) => Some(PathRewrite::Regex(
                config::search_regex(&re.pattern).map_err(CompileError::Regex)?,
                re.substitution,
            )),
            (None, None) => None,
        };
        let host_rewrite = rw
            .host
            .map(|h| HeaderValue::from_str(&h).map_err(|_| CompileError::Invalid("host rewrite")))
            .transpose()?;
        let timeout = r.timeout.unwrap_or(config::DEFAULT_ROUTE_TIMEOUT).get();
        Ok(Action::Forward(Forward {
            backends,
            path_rewrite,
            host_rewrite,
            timeout: (!timeout.is_zero()).then_some(timeout),
            retry: Box::new(
                r.retry_policy
                    .as_ref()
                    .map(crate::cluster::retry::RetryPolicy::compile)
                    .unwrap_or_default(),
            ),
            breaker: r.circuit_breakers.as_ref().map(|b| {
                Box::new(crate::breaker::RouteBreaker::new(
                    name.to_string(),
                    b,
                    clusters.metrics(),
                ))
            }),
            hash_policy: super::RequestHash::compile(&r.hash_policy)?,
        }))
    }
}

impl Backends {
    /// Picks a cluster; `roll` yields a number uniform over `u64` (random in production) and
    /// is only called for a split. `None` only for an empty split, which compilation refuses.
    pub fn pick(&self, roll: impl FnOnce() -> u64) -> Option<&Arc<ClusterHandle>> {
        match self {
            Backends::Single(c) => Some(c),
            Backends::Weighted { clusters, total } => {
                let point = roll() % total;
                // Cumulative bounds: the first bound above `point` owns it.
                let i = clusters.partition_point(|(_, bound)| *bound <= point);
                clusters.get(i).map(|(c, _)| c)
            }
        }
    }
}

impl PathRewrite {
    /// The rewritten path (without query). `matched_prefix` is the route's prefix match.
    pub fn apply(&self, path: &str, matched_prefix: Option<&str>) -> String {
        match self {
            PathRewrite::Prefix(new) => {
                let rest = matched_prefix
                    .and_then(|p| path.strip_prefix(p))
                    .unwrap_or(path);
                let mut out = String::with_capacity(new.len() + rest.len() + 1);
                out.push_str(new);
                // `/api/` → `/` on `/api/x` gives `/x`; `/api` → `` on `/api/x` gives `/x`;
                // never produce `//` or an empty path.
                if out.ends_with('/') && rest.starts_with('/') {
                    out.pop();
                }
                out.push_str(rest);
                if !out.starts_with('/') {
                    out.insert(0, '/');
                }
                out
            }
            PathRewrite::Regex(re, sub) => {
                let out = re.replace_all(path, sub.as_str()).into_owned();
                if out.starts_with('/') {
                    out
                } else {
                    format!("/{out}")
                }
            }
        }
    }
}

impl Redirect {
    /// The `Location` for a request with this scheme, host (validated by the normalize step)
    /// and path/query; `None` when there is no host to redirect to (an HTTP/1.0 request without
    /// `Host` and no configured host): a `Location` is never built from an empty host.
    pub fn location(
        &self,
        scheme: &str,
        host: &str,
        path: &str,
        query: Option<&str>,
        matched_prefix: Option<&str>,
    ) -> Option<String> {
        let new_scheme = self.scheme.as_deref().unwrap_or(scheme);
        let bare = super::strip_port(host);
        let orig_port = host.get(bare.len() + 1..).filter(|p| !p.is_empty());
        let new_host = self.host.as_deref().unwrap_or(bare);
        if new_host.is_empty() {
            return None;
        }
        let port = match (self.port, orig_port) {
            (Some(p), _) => Some(p.to_string()),
            // Keep a non-default port only when neither scheme nor host changes.
            (None, Some(p)) if self.scheme.is_none() && self.host.is_none() => Some(p.to_string()),
            _ => None,
        };
        let port =
            port.filter(|p| !matches!((new_scheme, p.as_str()), ("http", "80") | ("https", "443")));
        let new_path = match (&self.path, &self.prefix_rewrite) {
            (Some(p), _) => p.clone(),
            (None, Some(pr)) => PathRewrite::Prefix(pr.clone()).apply(path, matched_prefix),
            (None, None) => path.to_string(),
        };
        let mut loc = format!("{new_scheme}://{new_host}");
        if let Some(p) = port {
            loc.push(':');
            loc.push_str(&p);
        }
        loc.push_str(&new_path);
        if let Some(q) =
            query.filter(|q| !self.strip_query && !q.is_empty() && !new_path.contains('?'))
        {
            loc.push('?');
            loc.push_str(q);
        }
        Some(loc)
    }
}

/// Compiled header changes: remove, then set, then add.
#[derive(Debug, Default)]
pub struct HeaderOps {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderOps {
    pub(super) fn compile(m: &config::HeaderMutation) -> Result<Self, CompileError> {
        let pair = |(n, v): &(String, String)| {
            Ok((
                HeaderName::from_bytes(n.as_bytes())
                    .map_err(|_| CompileError::Invalid("header name"))?,
                HeaderValue::from_str(v).map_err(|_| CompileError::Invalid("header value"))?,
            ))
        };
        Ok(HeaderOps {
            remove: m
                .remove
                .iter()
                .map(|n| {
                    HeaderName::from_bytes(n.as_bytes())
                        .map_err(|_| CompileError::Invalid("header name"))
                })
                .collect::<Result<_, _>>()?,
            set: m
                .set
                .0
                .iter()
                .map(pair)
                .collect::<Result<_, CompileError>>()?,
            add: m
                .add
                .0
                .iter()
                .map(pair)
                .collect::<Result<_, CompileError>>()?,
        })
    }

    /// True when there is nothing to do (the common case; callers skip the call).
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    /// Applies the changes.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for n in &self.remove {
            headers.remove(n);
        }
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
    }
}
