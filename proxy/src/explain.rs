//! `sluice explain`: which listener, virtual host, route and cluster a request gets under a
//! config, why each earlier route did not take it, and what the route then does. It runs the
//! data path's own parts — the listener's path normalization, the compiled route table's host
//! index and matchers, the compiled rewrite and redirect, the TLS passthrough SNI table — so
//! the answer cannot drift from what the proxy does. The CLI explains a file; the admin API's `GET /explain` explains the live
//! config (so it reflects hot reloads and xDS) and adds each endpoint's state now (health,
//! ejection, requests), and the CLI's `--admin` form asks it.

use crate::cluster::Registry;
use crate::http::normalize::{Normalized, normalize};
use crate::metrics::Metrics;
use crate::route::{Action, Backends, RequestHead, RouteTable};
use serde::{Deserialize, Serialize};
use sluice_config::{Config, ListenerKind, RouteAction};
use std::fmt::Write as _;
use std::sync::Arc;

/// The request to explain.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query {
    /// `GET`, `POST`, ...
    pub method: String,
    /// `http://host[:port]/path?query`, or `tcp://host:port` for a TCP listener.
    pub url: String,
    /// Request headers (`Host` overrides the URL's authority).
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// The listener to use; by default the one whose port the URL names, else the first of
    /// the URL's kind (HTTP or TCP).
    #[serde(default)]
    pub listener: Option<String>,
    /// For a TLS passthrough (TCP) listener: the ClientHello's server name.
    #[serde(default)]
    pub sni: Option<String>,
}

/// One route tried.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteVerdict {
    /// Its position in the virtual host.
    pub index: usize,
    /// Its name (configured, or `virtual_host/index`).
    pub name: String,
    /// The first condition the request failed; `None` for the route that took it.
    pub why_not: Option<String>,
}

/// A cluster the request may go to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// Name.
    pub name: String,
    /// Share of requests in percent (a weighted split), else 100.
    pub share_percent: f64,
    /// Upstream protocol (HTTP clusters).
    pub protocol: Option<String>,
    /// Load-balancing policy.
    pub lb_policy: String,
    /// Connect timeout.
    pub connect_timeout: String,
    /// Static endpoints (`address` and weight), or where they come from.
    pub endpoints: Vec<String>,
    /// Active health checks configured.
    pub health_checks: bool,
    /// TLS to the upstream.
    pub tls: bool,
    /// Not defined in the config (requests to it get 503).
    pub missing: bool,
    /// A running proxy's view of the endpoints now (health, requests in flight, errors);
    /// `None` when explaining a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_endpoints: Option<Vec<String>>,
}

/// The explanation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    /// The request as understood.
    pub request: String,
    /// The listener, its address and protocol (`http` or `tcp`).
    pub listener: String,
    /// Its configured address.
    pub address: String,
    /// `http` or `tcp`.
    pub protocol: String,
    /// Why this listener.
    pub listener_reason: String,
    /// The HTTP listener's route table.
    pub route_table: Option<String>,
    /// The path routing sees, when normalization changed it.
    pub normalized_path: Option<String>,
    /// The virtual host the host name picked.
    pub virtual_host: Option<String>,
    /// The routes tried, in order; the last one took the request when `route` is set.
    pub routes: Vec<RouteVerdict>,
    /// The route that took the request.
    pub route: Option<String>,
    /// What happens: `forward`, `redirect`, `direct_response`, or the refusal.
    pub outcome: String,
    /// Details of the outcome, one line each (rewrites, timeout, retries, redirect target).
    pub details: Vec<String>,
    /// The clusters it may go to.
    pub clusters: Vec<ClusterInfo>,
}

/// Explains `q` under `config`; an error when the request cannot be read or names a listener
/// the config lacks.
pub fn explain(config: &Config, q: &Query) -> Result<Explanation, String> {
    let (scheme, rest) = q.url.split_once("://").ok_or_else(|| {
        format!(
            "`{}`: write the URL with its scheme (`http://host/path`)",
            q.url
        )
    })?;
    let (authority, path_and_query) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let tcp = scheme.eq_ignore_ascii_case("tcp");
    let port: Option<u16> = authority
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .or(match scheme {
            "http" => Some(80),
            "https" => Some(443),
            _ => None,
        });
    let (listener, listener_reason) = match &q.listener {
        Some(name) => (
            config
                .listeners
                .iter()
                .find(|l| &l.name == name)
                .ok_or_else(|| format!("no listener `{name}` in the config"))?,
            "named with --listener".to_string(),
        ),
        None => {
            let kind_ok =
                |l: &&sluice_config::Listener| matches!(l.kind, ListenerKind::Tcp(_)) == tcp;
            match config
                .listeners
                .iter()
                .filter(kind_ok)
                .find(|l| Some(l.address.port()) == port && l.address.port() != 0)
            {
                Some(l) => (l, format!("it listens on port {}", l.address.port())),
                None => (
                    config.listeners.iter().find(kind_ok).ok_or_else(|| {
                        format!(
                            "the config has no {} listener",
                            if tcp { "TCP" } else { "HTTP" }
                        )
                    })?,
                    format!(
                        "the first {} listener (no listener on the URL's port; --listener picks one)",
                        if tcp { "TCP" } else { "HTTP" }
                    ),
                ),
            }
        }
    };
    let mut out = Explanation {
        request: format!("{} {}", q.method, q.url),
        listener: listener.name.clone(),
        address: listener.address.to_string(),
        protocol: if tcp { "tcp" } else { "http" }.into(),
        listener_reason,
        route_table: None,
        normalized_path: None,
        virtual_host: None,
        routes: Vec::new(),
        route: None,
        outcome: String::new(),
        details: Vec::new(),
        clusters: Vec::new(),
    };
    let http = match &listener.kind {
        ListenerKind::Tcp(t) => {
            out.protocol = "tcp".into();
            // The data path's own SNI table: the exact name, else the longest wildcard.
            let metrics = Arc::new(Metrics::new());
            let mut registry = Registry::new(Arc::clone(&metrics), 1);
            let table = crate::listener::sni::SniRoutes::compile(
                &listener.name,
                t,
                &mut registry,
                &metrics,
            );
            let by_sni = match (q.sni.as_deref(), &table) {
                (Some(sni), Some(table)) => table.route(&sni.to_ascii_lowercase()).map(|c| {
                    let names = t
                        .sni
                        .iter()
                        .find(|r| r.cluster == c.name)
                        .map(|r| r.server_names.join(", "))
                        .unwrap_or_default();
                    (c.name.clone(), names)
                }),
                _ => None,
            };
            match (by_sni, &t.cluster) {
                (Some((c, names)), _) => {
                    out.outcome = "forward".into();
                    out.details
                        .push(format!("server name matches the SNI route for {names}"));
                    out.clusters.push(cluster_info(config, &c, 100.0));
                }
                (None, Some(c)) => {
                    out.outcome = "forward".into();
                    if !t.sni.is_empty() {
                        out.details.push(match &q.sni {
                            Some(s) => format!("no SNI route names `{s}`: the default cluster"),
                            None => "no server name given (--sni): the default cluster".into(),
                        });
                    }
                    out.clusters.push(cluster_info(config, c, 100.0));
                }
                (None, None) => {
                    out.outcome = "refused: no SNI route matches and the listener has no default cluster (the connection is closed)".into();
                }
            }
            return Ok(out);
        }
        ListenerKind::Http(h) => h,
    };
    if tcp {
        return Err(format!(
            "listener `{}` is HTTP; use an http:// URL",
            listener.name
        ));
    }
    out.route_table = Some(http.route_table.clone());
    let (raw_path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let mut headers = http::HeaderMap::new();
    for (k, v) in &q.headers {
        let name = http::HeaderName::from_bytes(k.trim().as_bytes())
            .map_err(|_| format!("`{k}` is not a header name"))?;
        let value = http::HeaderValue::from_str(v.trim())
            .map_err(|_| format!("header `{k}`: the value is not valid"))?;
        headers.append(name, value);
    }
    let host = headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(authority)
        .to_string();
    let method = http::Method::from_bytes(q.method.as_bytes())
        .map_err(|_| format!("`{}` is not a method", q.method))?;
    let path = match normalize(raw_path, &http.path_normalization) {
        Normalized::Unchanged => raw_path.to_string(),
        Normalized::Changed(p) => {
            out.normalized_path = Some(p.clone());
            p
        }
        Normalized::Redirect(p) => {
            out.outcome = format!(
                "redirect 307 to `{p}` (escaped slashes are unescaped and redirected: \
                 path_normalization.escaped_slashes)"
            );
            return Ok(out);
        }
        Normalized::Reject(why) => {
            out.outcome = format!("refused with 400: {why}");
            return Ok(out);
        }
    };
    let Some(table_config) = config
        .route_tables
        .iter()
        .find(|t| t.name == http.route_table)
    else {
        out.outcome = format!("404: route table `{}` is not defined", http.route_table);
        return Ok(out);
    };
    let mut registry = Registry::new(Arc::new(Metrics::new()), 1);
    let table = RouteTable::compile(table_config, &mut registry).map_err(|e| e.to_string())?;
    let head = RequestHead {
        method: &method,
        host: &host,
        path: &path,
        query,
        headers: &headers,
    };
    let trace = table.trace(&head);
    let Some(vh) = trace.virtual_host else {
        out.outcome = format!("404: no virtual host serves the host `{host}`");
        return Ok(out);
    };
    out.virtual_host = Some(vh.name.clone());
    out.routes = trace
        .routes
        .iter()
        .enumerate()
        .map(|(index, (r, why))| RouteVerdict {
            index,
            name: r.name.clone(),
            why_not: why.clone(),
        })
        .collect();
    let Some((route, None)) = trace.routes.last() else {
        out.outcome = "404: no route matches".into();
        return Ok(out);
    };
    out.route = Some(route.name.clone());
    let index = trace.routes.len() - 1;
    let route_config = table_config
        .virtual_hosts
        .iter()
        .find(|v| v.name == vh.name)
        .and_then(|v| v.routes.get(index));
    match &route.action {
        Action::Direct { status, body } => {
            out.outcome = format!("direct response {}", status.as_u16());
            if !body.is_empty() {
                out.details
                    .push(format!("body: {:?}", String::from_utf8_lossy(body)));
            }
        }
        Action::Redirect(r) => {
            let location = r
                .location("http", &host, &path, query, route.matched_prefix())
                .unwrap_or_else(|| "(no host to redirect to)".into());
            out.outcome = format!("redirect {} to `{location}`", r.status.as_u16());
        }
        Action::Forward(f) => {
            out.outcome = "forward".into();
            if let Some(rw) = &f.path_rewrite {
                out.details.push(format!(
                    "path rewritten: `{path}` → `{}`",
                    rw.apply(&path, route.matched_prefix())
                ));
            }
            if let Some(h) = &f.host_rewrite {
                out.details.push(format!(
                    "host rewritten to `{}`",
                    String::from_utf8_lossy(h.as_bytes())
                ));
            }
            out.details.push(match f.timeout {
                Some(t) => format!("timeout {t:?} until the response headers"),
                None => "no timeout (0s)".into(),
            });
            if let Some(rc) = route_config {
                use erased::Ser;
                if let Some(b) = &rc.circuit_breakers {
                    out.details
                        .push(format!("route circuit breakers: {}", b.text()));
                }
                if let Some(f) = &rc.fault {
                    out.details.push(format!("fault injection: {}", f.text()));
                }
                for (who, a) in [
                    ("listener", &http.authorization),
                    ("route", &rc.authorization),
                ] {
                    if !a.allow.is_empty() || !a.deny.is_empty() {
                        out.details.push(format!(
                            "{who} authorization by verified client SPIFFE ID: {}",
                            a.text()
                        ));
                    }
                }
                match &rc.retry_policy {
                    Some(p) => out.details.push(format!(
                        "retries: up to {} on {}",
                        p.num_retries,
                        p.retry_on
                            .iter()
                            .map(|r| format!("{r:?}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                            .to_lowercase()
                    )),
                    None => out.details.push("retries: the default policy".into()),
                }
            }
            match &f.backends {
                Backends::Single(c) => out.clusters.push(cluster_info(config, &c.name, 100.0)),
                Backends::Weighted { clusters, total } => {
                    let mut prev = 0;
                    for (c, bound) in clusters {
                        let share = (*bound - prev) as f64 * 100.0 / *total as f64;
                        prev = *bound;
                        out.clusters.push(cluster_info(config, &c.name, share));
                    }
                }
            }
        }
    }
    if let Some(RouteAction::WeightedClusters(_)) = route_config.map(|r| &r.action) {
        out.details
            .push("a weighted split: each request picks one cluster at random by weight".into());
    }
    Ok(out)
}

fn cluster_info(config: &Config, name: &str, share_percent: f64) -> ClusterInfo {
    let Some(c) = config.clusters.iter().find(|c| c.name == name) else {
        return ClusterInfo {
            name: name.to_string(),
            share_percent,
            protocol: None,
            lb_policy: String::new(),
            connect_timeout: String::new(),
            endpoints: Vec::new(),
            health_checks: false,
            tls: false,
            missing: true,
            live_endpoints: None,
        };
    };
    let json = |v: &dyn erased::Ser| v.text();
    let endpoints = match &c.discovery {
        Some(d) => vec![format!("discovered: {}", json(d))],
        None if c.endpoints.is_empty() => vec!["none (from the control plane, if any)".into()],
        None => c
            .endpoints
            .iter()
            .map(|e| match &e.zone {
                Some(z) => format!("{} (weight {}, zone {z})", e.address, e.weight),
                None => format!("{} (weight {})", e.address, e.weight),
            })
            .collect(),
    };
    ClusterInfo {
        name: name.to_string(),
        share_percent,
        protocol: Some(json(&c.protocol)),
        lb_policy: json(&c.lb_policy),
        connect_timeout: json(&c.connect_timeout),
        endpoints,
        health_checks: c.health_checks.is_some(),
        tls: c.tls.is_some(),
        missing: false,
        live_endpoints: None,
    }
}

/// Config values as their YAML text (`round_robin`, `1s`), through their `Serialize`.
mod erased {
    pub(super) trait Ser {
        fn text(&self) -> String;
    }
    impl<T: serde::Serialize> Ser for T {
        fn text(&self) -> String {
            match serde_json::to_value(self) {
                Ok(serde_json::Value::String(s)) => s,
                Ok(v) => v.to_string(),
                Err(_) => String::new(),
            }
        }
    }
}

impl Explanation {
    /// Adds a running proxy's endpoint state to each cluster: health (and why not), outlier
    /// ejection, requests in flight, requests and errors so far.
    pub fn with_live(mut self, live: &crate::state::Live) -> Self {
        let snapshot = live.snapshot();
        for c in &mut self.clusters {
            let Some(handle) = snapshot.clusters.get(&c.name) else {
                continue;
            };
            let set = handle.endpoints();
            c.live_endpoints = Some(
                set.endpoints
                    .iter()
                    .map(|e| {
                        let flags = e.state.flag_names();
                        let health = if e.state.is_healthy() {
                            "healthy".to_string()
                        } else {
                            format!("NOT healthy ({})", flags.join(", "))
                        };
                        let (total, errors) = e.state.totals();
                        format!(
                            "{} (weight {}): {health}, {} in flight, {total} requests, {errors} errors",
                            e.address,
                            e.weight,
                            e.state.active_requests()
                        )
                    })
                    .collect(),
            );
        }
        self
    }

    /// The explanation for a person.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "request:      {}", self.request);
        let _ = writeln!(
            s,
            "listener:     {} ({} on {}; {})",
            self.listener, self.protocol, self.address, self.listener_reason
        );
        if let Some(t) = &self.route_table {
            let _ = writeln!(s, "route table:  {t}");
        }
        if let Some(p) = &self.normalized_path {
            let _ = writeln!(s, "path:         normalized to `{p}` before routing");
        }
        if let Some(v) = &self.virtual_host {
            let _ = writeln!(s, "virtual host: {v}");
        }
        for r in &self.routes {
            match &r.why_not {
                Some(why) => {
                    let _ = writeln!(s, "  route #{} {}: no — {why}", r.index, r.name);
                }
                None => {
                    let _ = writeln!(s, "  route #{} {}: MATCH", r.index, r.name);
                }
            }
        }
        let _ = writeln!(s, "outcome:      {}", self.outcome);
        for d in &self.details {
            let _ = writeln!(s, "              {d}");
        }
        for c in &self.clusters {
            if c.missing {
                let _ = writeln!(
                    s,
                    "cluster:      {} ({}%): not defined — requests get 503",
                    c.name,
                    fmt_share(c.share_percent)
                );
                continue;
            }
            let _ = writeln!(
                s,
                "cluster:      {} ({}%): {}lb {}, connect timeout {}{}{}",
                c.name,
                fmt_share(c.share_percent),
                c.protocol
                    .as_deref()
                    .filter(|_| self.protocol == "http")
                    .map(|p| format!("{p}, "))
                    .unwrap_or_default(),
                c.lb_policy,
                c.connect_timeout,
                if c.health_checks {
                    ", health checked"
                } else {
                    ""
                },
                if c.tls { ", TLS" } else { "" },
            );
            match &c.live_endpoints {
                Some(live) if live.is_empty() => {
                    let _ = writeln!(s, "                no endpoints now: requests get 503");
                }
                Some(live) => {
                    for e in live {
                        let _ = writeln!(s, "                endpoint {e}");
                    }
                }
                None => {
                    for e in &c.endpoints {
                        let _ = writeln!(s, "                endpoint {e}");
                    }
                }
            }
        }
        s
    }
}

fn fmt_share(p: f64) -> String {
    if (p - p.round()).abs() < 1e-9 {
        format!("{p:.0}")
    } else {
        format!("{p:.1}")
    }
}

#[cfg(test)]
mod tests;
