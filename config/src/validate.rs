//! Semantic validation: what deserialisation cannot check (one-of fields, references between
//! resources, duplicate names, address clashes, syntax of paths, regexes and header names).
//! Collects every problem rather than stopping at the first.

use crate::QueryParameterMatcher;
use crate::cluster::{Cluster, Endpoint};
use crate::error::Issue;
use crate::listener::{HttpListener, TcpListener};
use crate::raw::{RawConfig, RawListener, RawRoute, RawRouteTable};
use crate::resource::Resource;
use crate::route::{HeaderMatcher, HeaderMutation, Redirect, RouteMatch};
use crate::units::ByteSize;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

/// Largest compiled size of one regular expression in a config (bounds memory and build time).
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Compiles `pattern` so that it must match the whole input.
pub fn full_match_regex(pattern: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("invalid regex `{pattern}`: {}", first_line(&e.to_string())))
}

/// Compiles `pattern` for searching (used by rewrites).
pub fn search_regex(pattern: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("invalid regex `{pattern}`: {}", first_line(&e.to_string())))
}

fn first_line(s: &str) -> String {
    // regex errors are multi-line with a caret diagram; keep the explanation.
    s.lines()
        .rfind(|l| l.starts_with("error:"))
        .unwrap_or_else(|| s.lines().next().unwrap_or(s))
        .trim_start_matches("error: ")
        .to_string()
}

/// Checks a deserialised config; returns every problem found (empty when valid).
pub fn validate(config: &RawConfig) -> Vec<Issue> {
    validate_with(config, &crate::ParseOptions::default())
}

/// [`validate`] with options (the control plane's directory lets clusters list no endpoints:
/// the registry may supply them).
pub fn validate_with(config: &RawConfig, options: &crate::ParseOptions) -> Vec<Issue> {
    let mut v = Validator::default();
    let clusters = Refs::Known(config.clusters.iter().map(|c| c.name.as_str()).collect());
    let tables = Refs::Known(
        config
            .route_tables
            .iter()
            .map(|t| t.name.as_str())
            .collect(),
    );

    v.unique_names(
        "listeners",
        config.listeners.iter().map(|l| l.name.as_str()),
    );
    v.unique_names(
        "route_tables",
        config.route_tables.iter().map(|t| t.name.as_str()),
    );
    v.unique_names("clusters", config.clusters.iter().map(|c| c.name.as_str()));
    v.addresses(config);
    crate::lb::check_node(&config.node, &mut v.issues);

    for (i, l) in config.listeners.iter().enumerate() {
        v.listener(&format!("listeners[{i}]"), l, &tables, &clusters);
    }
    for (i, t) in config.route_tables.iter().enumerate() {
        v.route_table(&format!("route_tables[{i}]"), t, &clusters);
    }
    for (i, c) in config.clusters.iter().enumerate() {
        v.cluster(&format!("clusters[{i}]"), c);
        if c.endpoints.is_empty() && c.discovery.is_none() && !options.endpoints_optional {
            v.err(
                format!("clusters[{i}].endpoints"),
                "must list at least one endpoint",
            );
        }
        v.endpoints(&format!("clusters[{i}].endpoints"), &c.endpoints);
    }
    v.issues
}

/// Checks one resource on its own, as a dynamic update (xDS, or one resource of a file) is
/// checked: everything but references to other resources, which may arrive later (a route to a
/// cluster not yet known answers 503 until it does). Paths start at the resource.
pub fn validate_resource(resource: &Resource) -> Vec<Issue> {
    let mut v = Validator::default();
    match resource {
        Resource::Listener(l) => v.listener("listener", &l.clone().into(), &Refs::Any, &Refs::Any),
        Resource::RouteTable(t) => v.route_table("route_table", &t.clone().into(), &Refs::Any),
        Resource::Cluster(c) => v.cluster("cluster", c),
        Resource::Endpoints(e) => v.endpoints("endpoints", &e.endpoints),
        Resource::Secret(s) => crate::secret::check("secret", s, &mut v.issues),
    }
    v.issues
}

/// Names other resources may refer to: a known set (a whole file) or anything (one resource
/// checked on its own).
enum Refs<'a> {
    Known(HashSet<&'a str>),
    Any,
}

impl Refs<'_> {
    fn contains(&self, name: &str) -> bool {
        match self {
            Refs::Known(set) => set.contains(name),
            Refs::Any => true,
        }
    }
}

#[derive(Default)]
struct Validator {
    issues: Vec<Issue>,
}

impl Validator {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.issues.push(Issue {
            path: path.into(),
            message: message.into(),
        });
    }

    fn unique_names<'a>(&mut self, list: &str, names: impl Iterator<Item = &'a str>) {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, name) in names.enumerate() {
            let path = format!("{list}[{i}].name");
            if name.is_empty() {
                self.err(path, "must not be empty");
            } else if let Some(first) = seen.insert(name, i) {
                self.err(
                    path,
                    format!("duplicate name `{name}` (also used by {list}[{first}])"),
                );
                seen.insert(name, first);
            }
        }
    }

    fn addresses(&mut self, config: &RawConfig) {
        if let Some(t) = &config.tracing {
            let mut errs = Vec::new();
            crate::trace::check(t, &mut errs);
            for (path, message) in errs {
                self.err(path, message);
            }
        }
        if config.admin.max_connections == 0 {
            self.err("admin.max_connections", "must be at least 1");
        }
        if config.admin.max_series_per_family < 10 {
            self.err("admin.max_series_per_family", "must be at least 10");
        }
        if config.admin.request_header_timeout.is_zero() {
            self.err("admin.request_header_timeout", "must be greater than 0s");
        }
        if !config.admin.address.ip().is_loopback() && !config.admin.allow_remote {
            self.err(
                "admin.address",
                format!(
                    "{} is not a loopback address; the admin API has no authentication, so bind \
                     it to 127.0.0.1 or ::1, or set `admin.allow_remote: true` to expose it",
                    config.admin.address
                ),
            );
        }
        let mut bound: Vec<(SocketAddr, String)> = vec![(config.admin.address, "admin".into())];
        for (i, l) in config.listeners.iter().enumerate() {
            let path = format!("listeners[{i}].address");
            if l.address.port() != 0
                && let Some((_, other)) = bound.iter().find(|(a, _)| clashes(*a, l.address))
            {
                self.err(path, format!("address {} clashes with {other}", l.address));
                continue;
            }
            bound.push((l.address, format!("listeners[{i}] ({})", l.name)));
        }
    }

    fn listener(&mut self, p: &str, l: &RawListener, tables: &Refs<'_>, clusters: &Refs<'_>) {
        match (&l.http, &l.tcp) {
            (Some(h), None) => self.http_listener(&format!("{p}.http"), h, tables),
            (None, Some(t)) => self.tcp_listener(&format!("{p}.tcp"), t, clusters),
            (Some(_), Some(_)) => self.err(p, "set only one of `http` or `tcp`"),
            (None, None) => self.err(p, "one of `http` or `tcp` is required"),
        }
        if let Some(tls) = &l.tls {
            if l.tcp.is_some() {
                self.err(
                    format!("{p}.tls"),
                    "TLS termination is for `http` listeners (a `tcp` listener passes TLS through)",
                );
            }
            crate::tls::check_downstream(&format!("{p}.tls"), tls, &mut self.issues);
        }
        if let Some(h) = &l.http
            && !h.authorization.is_empty()
            && l.tls
                .as_ref()
                .is_none_or(|t| t.client_certificate == crate::tls::ClientCertificate::None)
        {
            self.err(
                format!("{p}.http.authorization"),
                "needs client certificates: set `tls.client_certificate` to `optional` or `required`",
            );
        }
    }

    fn tcp_listener(&mut self, p: &str, t: &TcpListener, clusters: &Refs<'_>) {
        self.access_log(p, t.access_log.as_deref());
        if t.access_log.as_ref().is_some_and(|a| a.min_status != 0) {
            self.err(
                format!("{p}.access_log.min_status"),
                "applies to HTTP listeners only (a TCP connection has no status); remove it",
            );
        }
        match &t.cluster {
            Some(c) if !clusters.contains(c) => {
                self.err(format!("{p}.cluster"), format!("unknown cluster `{c}`"));
            }
            Some(_) => {}
            None if t.sni.is_empty() => self.err(
                p,
                "`cluster` is required (or `sni` routes, with `cluster` as their optional default)",
            ),
            None => {}
        }
        if t.tls_inspector_timeout.is_zero() {
            self.err(
                format!("{p}.tls_inspector_timeout"),
                "must be greater than 0s",
            );
        }
        // Names are compared lower-cased, as SNI is matched.
        let mut seen: HashMap<String, (usize, usize)> = HashMap::new();
        for (i, route) in t.sni.iter().enumerate() {
            let rp = format!("{p}.sni[{i}]");
            if !clusters.contains(route.cluster.as_str()) {
                self.err(
                    format!("{rp}.cluster"),
                    format!("unknown cluster `{}`", route.cluster),
                );
            }
            if route.server_names.is_empty() {
                self.err(
                    format!("{rp}.server_names"),
                    "must list at least one server name",
                );
            }
            for (j, name) in route.server_names.iter().enumerate() {
                let np = format!("{rp}.server_names[{j}]");
                if let Err(e) = check_server_name(name) {
                    self.err(np, e);
                    continue;
                }
                let key = name.to_ascii_lowercase();
                if let Some((fi, fj)) = seen.get(&key) {
                    self.err(
                        np,
                        format!(
                            "duplicate server name `{name}` (also in {p}.sni[{fi}].server_names[{fj}])"
                        ),
                    );
                } else {
                    seen.insert(key, (i, j));
                }
            }
        }
    }

    fn access_log(&mut self, p: &str, a: Option<&crate::AccessLog>) {
        if let Some(a) = a {
            let mut errs = Vec::new();
            crate::access_log::check(&format!("{p}.access_log"), a, &mut errs);
            for (path, message) in errs {
                self.err(path, message);
            }
        }
    }

    fn http_listener(&mut self, p: &str, h: &HttpListener, tables: &Refs<'_>) {
        self.access_log(p, h.access_log.as_deref());
        crate::tls::check_authorization(
            &format!("{p}.authorization"),
            &h.authorization,
            &mut self.issues,
        );
        if !tables.contains(h.route_table.as_str()) {
            self.err(
                format!("{p}.route_table"),
                format!("unknown route table `{}`", h.route_table),
            );
        }
        if h.max_request_header_bytes.bytes() < 1024 {
            self.err(
                format!("{p}.max_request_header_bytes"),
                "must be at least 1KiB",
            );
        }
        if h.max_request_header_bytes.bytes() > 1 << 20 {
            self.err(
                format!("{p}.max_request_header_bytes"),
                "must be at most 1MiB",
            );
        }
        if h.max_request_headers == 0 || h.max_request_headers > 1000 {
            self.err(
                format!("{p}.max_request_headers"),
                "must be between 1 and 1000",
            );
        }
        if h.request_header_timeout.is_zero() {
            self.err(
                format!("{p}.request_header_timeout"),
                "must be greater than 0s",
            );
        }
        if h.idle_timeout.is_zero() {
            self.err(format!("{p}.idle_timeout"), "must be greater than 0s");
        }
        for (i, name) in h.trust.internal_headers.iter().enumerate() {
            let bare = name.strip_suffix('*').unwrap_or(name);
            if bare.is_empty() || !is_token(bare) {
                self.err(
                    format!("{p}.trust.internal_headers[{i}]"),
                    format!("`{name}` is not a header name (or a prefix written `x-corp-*`)"),
                );
            } else if matches!(
                bare.to_ascii_lowercase().as_str(),
                "host" | "content-length" | "transfer-encoding" | "te" | "connection"
            ) {
                self.err(
                    format!("{p}.trust.internal_headers[{i}]"),
                    format!("`{name}` frames the request and cannot be stripped"),
                );
            }
        }
        if h.graceful_close_timeout.is_zero() {
            self.err(
                format!("{p}.graceful_close_timeout"),
                "must be greater than 0s",
            );
        }
        self.buffer_limit(p, h.per_connection_buffer_limit_bytes);
        let h2 = &h.http2;
        let pp = format!("{p}.http2");
        if h2.max_concurrent_streams == 0 {
            self.err(format!("{pp}.max_concurrent_streams"), "must be at least 1");
        }
        for (field, value) in [
            ("initial_stream_window_size", h2.initial_stream_window_size),
            (
                "initial_connection_window_size",
                h2.initial_connection_window_size,
            ),
        ] {
            if !(65_535..=(1 << 31) - 1).contains(&value.bytes()) {
                self.err(
                    format!("{pp}.{field}"),
                    "must be between 65535 bytes and 2GiB - 1 (RFC 9113 §6.9.2)",
                );
            }
        }
        if !(16_384..=16_777_215).contains(&h2.max_frame_size.bytes()) {
            self.err(
                format!("{pp}.max_frame_size"),
                "must be between 16KiB and 16MiB - 1 (RFC 9113 §6.5.2)",
            );
        }
    }

    fn route_table(&mut self, p: &str, t: &RawRouteTable, clusters: &Refs<'_>) {
        let vh_names = t.virtual_hosts.iter().map(|v| v.name.as_str());
        self.unique_names(&format!("{p}.virtual_hosts"), vh_names);
        let mut domains: HashMap<String, usize> = HashMap::new();
        for (i, vh) in t.virtual_hosts.iter().enumerate() {
            let vp = format!("{p}.virtual_hosts[{i}]");
            if vh.domains.is_empty() {
                self.err(
                    format!("{vp}.domains"),
                    "must list at least one domain (`*` for any)",
                );
            }
            for (j, d) in vh.domains.iter().enumerate() {
                let dp = format!("{vp}.domains[{j}]");
                if let Err(m) = check_domain(d) {
                    self.err(&dp, m);
                }
                if let Some(prev) = domains.insert(d.to_ascii_lowercase(), i) {
                    self.err(
                        dp,
                        format!("domain `{d}` is already served by {p}.virtual_hosts[{prev}]"),
                    );
                }
            }
            self.mutation(&format!("{vp}.request_headers"), &vh.request_headers, true);
            self.mutation(
                &format!("{vp}.response_headers"),
                &vh.response_headers,
                false,
            );
            for (j, r) in vh.routes.iter().enumerate() {
                self.route(&format!("{vp}.routes[{j}]"), r, clusters);
            }
        }
    }

    fn route(&mut self, p: &str, r: &RawRoute, clusters: &Refs<'_>) {
        self.route_match(&format!("{p}.match"), &r.matcher);
        crate::tls::check_authorization(
            &format!("{p}.authorization"),
            &r.authorization,
            &mut self.issues,
        );
        crate::resilience::validate_route(
            r.retry_policy.as_ref(),
            r.circuit_breakers.as_ref(),
            |f, m| self.err(format!("{p}.{f}"), m),
        );
        let actions = [
            r.cluster.is_some(),
            r.weighted_clusters.is_some(),
            r.redirect.is_some(),
            r.direct_response.is_some(),
        ];
        match actions.iter().filter(|a| **a).count() {
            0 => self.err(
                p,
                "needs an action: one of `cluster`, `weighted_clusters`, `redirect`, `direct_response`",
            ),
            1 => {}
            _ => self.err(
                p,
                "set only one of `cluster`, `weighted_clusters`, `redirect`, `direct_response`",
            ),
        }
        if let Some(c) = &r.cluster
            && !clusters.contains(c.as_str())
        {
            self.err(format!("{p}.cluster"), format!("unknown cluster `{c}`"));
        }
        if let Some(wcs) = &r.weighted_clusters {
            if wcs.is_empty() {
                self.err(
                    format!("{p}.weighted_clusters"),
                    "must list at least one cluster",
                );
            } else if wcs.iter().map(|w| u64::from(w.weight)).sum::<u64>() == 0 {
                self.err(
                    format!("{p}.weighted_clusters"),
                    "weights must not all be 0",
                );
            }
            for (i, w) in wcs.iter().enumerate() {
                if !clusters.contains(w.cluster.as_str()) {
                    self.err(
                        format!("{p}.weighted_clusters[{i}].cluster"),
                        format!("unknown cluster `{}`", w.cluster),
                    );
                }
            }
        }
        let forwards = r.cluster.is_some() || r.weighted_clusters.is_some();
        if let Some(f) = &r.fault {
            self.issues
                .extend(crate::fault::check(&format!("{p}.fault"), f, forwards));
        }
        if let Some(rw) = &r.rewrite {
            let rp = format!("{p}.rewrite");
            if !forwards {
                self.err(
                    &rp,
                    "only applies to routes with `cluster` or `weighted_clusters`",
                );
            }
            if rw.prefix.is_some() && rw.regex.is_some() {
                self.err(&rp, "set only one of `prefix` or `regex`");
            }
            if let Some(prefix) = &rw.prefix {
                if r.matcher.prefix.is_none() && r.matcher.path_prefix.is_none() {
                    self.err(
                        format!("{rp}.prefix"),
                        "needs the route to match by `prefix` or `path_prefix`",
                    );
                }
                if !prefix.starts_with('/') && !prefix.is_empty() {
                    self.err(format!("{rp}.prefix"), "must start with '/'");
                }
                if !valid_path_chars(prefix) {
                    self.err(
                        format!("{rp}.prefix"),
                        "contains characters not allowed in a path",
                    );
                }
            }
            if let Some(re) = &rw.regex
                && let Err(m) = search_regex(&re.pattern)
            {
                self.err(format!("{rp}.regex.pattern"), m);
            }
            if let Some(h) = &rw.host
                && let Err(m) = check_domain(h).and_then(|_| {
                    if h.contains('*') {
                        Err("must be a host name, not a pattern".to_string())
                    } else {
                        Ok(())
                    }
                })
            {
                self.err(format!("{rp}.host"), m);
            }
        }
        if r.timeout.is_some() && !forwards {
            self.err(
                format!("{p}.timeout"),
                "only applies to routes with `cluster` or `weighted_clusters`",
            );
        }
        if let Some(rd) = &r.redirect {
            self.redirect(&format!("{p}.redirect"), rd, &r.matcher);
        }
        if let Some(d) = &r.direct_response
            && !(200..=599).contains(&d.status)
        {
            self.err(
                format!("{p}.direct_response.status"),
                "must be between 200 and 599",
            );
        }
        self.mutation(&format!("{p}.request_headers"), &r.request_headers, true);
        self.mutation(&format!("{p}.response_headers"), &r.response_headers, false);
        crate::lb::check_hash_policies(p, &r.hash_policy, forwards, &mut self.issues);
    }

    fn route_match(&mut self, p: &str, m: &RouteMatch) {
        let n = [
            m.prefix.is_some(),
            m.path_prefix.is_some(),
            m.path.is_some(),
            m.regex.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if n == 0 {
            self.err(p, "needs one of `prefix`, `path_prefix`, `path` or `regex`");
        } else if n > 1 {
            self.err(
                p,
                "set only one of `prefix`, `path_prefix`, `path` or `regex`",
            );
        }
        for (field, value) in [
            ("prefix", &m.prefix),
            ("path_prefix", &m.path_prefix),
            ("path", &m.path),
        ] {
            if let Some(v) = value {
                if !v.starts_with('/') {
                    self.err(format!("{p}.{field}"), "must start with '/'");
                } else if !valid_path_chars(v) {
                    self.err(
                        format!("{p}.{field}"),
                        "contains characters not allowed in a path",
                    );
                }
            }
        }
        if let Some(re) = &m.regex
            && let Err(msg) = full_match_regex(re)
        {
            self.err(format!("{p}.regex"), msg);
        }
        for (i, method) in m.methods.iter().enumerate() {
            if !is_token(method) {
                self.err(
                    format!("{p}.methods[{i}]"),
                    format!("`{method}` is not a valid method"),
                );
            }
        }
        for (i, h) in m.headers.iter().enumerate() {
            self.header_matcher(&format!("{p}.headers[{i}]"), h);
        }
        for (i, q) in m.query_parameters.iter().enumerate() {
            self.query_matcher(&format!("{p}.query_parameters[{i}]"), q);
        }
    }

    fn header_matcher(&mut self, p: &str, h: &HeaderMatcher) {
        if !is_token(&h.name) {
            self.err(
                format!("{p}.name"),
                format!("`{}` is not a valid header name", h.name),
            );
        }
        let n = [
            h.exact.is_some(),
            h.prefix.is_some(),
            h.suffix.is_some(),
            h.regex.is_some(),
            h.present.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if n != 1 {
            self.err(
                p,
                "set exactly one of `exact`, `prefix`, `suffix`, `regex` or `present`",
            );
        }
        if let Some(re) = &h.regex
            && let Err(msg) = full_match_regex(re)
        {
            self.err(format!("{p}.regex"), msg);
        }
    }

    fn query_matcher(&mut self, p: &str, q: &QueryParameterMatcher) {
        if q.name.is_empty() {
            self.err(format!("{p}.name"), "must not be empty");
        }
        let n = [
            q.exact.is_some(),
            q.prefix.is_some(),
            q.regex.is_some(),
            q.present.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if n != 1 {
            self.err(
                p,
                "set exactly one of `exact`, `prefix`, `regex` or `present`",
            );
        }
        if let Some(re) = &q.regex
            && let Err(msg) = full_match_regex(re)
        {
            self.err(format!("{p}.regex"), msg);
        }
    }

    fn redirect(&mut self, p: &str, r: &Redirect, m: &RouteMatch) {
        if !matches!(r.code, 301 | 302 | 303 | 307 | 308) {
            self.err(format!("{p}.code"), "must be 301, 302, 303, 307 or 308");
        }
        if let Some(s) = &r.scheme
            && s != "http"
            && s != "https"
        {
            self.err(format!("{p}.scheme"), "must be `http` or `https`");
        }
        if let Some(h) = &r.host
            && (h.is_empty() || h.contains(['*', ':', '/']) || check_domain(h).is_err())
        {
            self.err(format!("{p}.host"), format!("`{h}` is not a host name"));
        }
        if r.path.is_some() && r.prefix_rewrite.is_some() {
            self.err(p, "set only one of `path` or `prefix_rewrite`");
        }
        if let Some(path) = &r.path {
            if !path.starts_with('/') {
                self.err(format!("{p}.path"), "must start with '/'");
            } else if !valid_path_chars(path) {
                self.err(
                    format!("{p}.path"),
                    "contains characters not allowed in a path",
                );
            }
        }
        if let Some(pr) = &r.prefix_rewrite {
            if m.prefix.is_none() && m.path_prefix.is_none() {
                self.err(
                    format!("{p}.prefix_rewrite"),
                    "needs the route to match by `prefix` or `path_prefix`",
                );
            }
            if !valid_path_chars(pr) {
                self.err(
                    format!("{p}.prefix_rewrite"),
                    "contains characters not allowed in a path",
                );
            }
        }
    }

    fn mutation(&mut self, p: &str, m: &HeaderMutation, request: bool) {
        for (field, list) in [("add", &m.add), ("set", &m.set)] {
            for (name, value) in &list.0 {
                let fp = format!("{p}.{field}.{name}");
                self.mutable_header(&fp, name, request);
                if !valid_header_value(value) {
                    self.err(
                        fp,
                        "value contains characters not allowed in a header (control characters)",
                    );
                }
            }
        }
        for (i, name) in m.remove.iter().enumerate() {
            self.mutable_header(&format!("{p}.remove[{i}]"), name, request);
        }
    }

    fn mutable_header(&mut self, p: &str, name: &str, request: bool) {
        if !is_token(name) {
            self.err(p, format!("`{name}` is not a valid header name"));
            return;
        }
        let lower = name.to_ascii_lowercase();
        let hop_by_hop = matches!(
            lower.as_str(),
            "connection"
                | "keep-alive"
                | "proxy-connection"
                | "transfer-encoding"
                | "upgrade"
                | "te"
        );
        if hop_by_hop || lower == "content-length" || (request && lower == "host") {
            let hint = if lower == "host" {
                " (use `rewrite.host`)"
            } else {
                ""
            };
            self.err(
                p,
                format!("header `{name}` cannot be changed by configuration{hint}"),
            );
        }
    }

    fn cluster(&mut self, p: &str, c: &Cluster) {
        crate::resilience::validate_cluster(
            &c.retry_budget,
            &c.circuit_breakers,
            &c.outlier_detection,
            |f, m| self.err(format!("{p}.{f}"), m),
        );
        if c.connect_timeout.is_zero() {
            self.err(format!("{p}.connect_timeout"), "must be greater than 0s");
        }
        self.buffer_limit(p, c.per_connection_buffer_limit_bytes);
        self.issues.extend(crate::health::validate(p, c));
        self.issues.extend(crate::discovery::check(p, c));
        if c.pool.max_connection_age.is_some_and(|d| d.is_zero()) {
            self.err(
                format!("{p}.pool.max_connection_age"),
                "must be greater than 0s (leave it out for none)",
            );
        }
        if c.pool.max_requests_per_http2_connection == 0 {
            self.err(
                format!("{p}.pool.max_requests_per_http2_connection"),
                "must be at least 1",
            );
        }
        crate::lb::check_cluster(p, c, &mut self.issues);
        if let Some(tls) = &c.tls {
            crate::tls::check_upstream(
                &format!("{p}.tls"),
                tls,
                c.discovery.is_some(),
                &mut self.issues,
            );
        }
    }

    /// hyper refuses buffer limits under 8KiB; above 16MiB a limit no longer limits much.
    fn buffer_limit(&mut self, p: &str, limit: ByteSize) {
        if !(8 << 10..=16 << 20).contains(&limit.bytes()) {
            self.err(
                format!("{p}.per_connection_buffer_limit_bytes"),
                "must be between 8KiB and 16MiB",
            );
        }
    }

    fn endpoints(&mut self, p: &str, endpoints: &[Endpoint]) {
        let mut seen = HashSet::new();
        for (i, e) in endpoints.iter().enumerate() {
            if e.weight == 0 {
                self.err(format!("{p}[{i}].weight"), "must be at least 1");
            }
            if e.address.port() == 0 {
                self.err(format!("{p}[{i}]"), "port must not be 0");
            }
            if e.address.ip().is_unspecified() {
                self.err(
                    format!("{p}[{i}]"),
                    format!("{} is not a connectable address", e.address.ip()),
                );
            }
            crate::lb::check_endpoint_zone(
                &format!("{p}[{i}]"),
                e.zone.as_deref(),
                &mut self.issues,
            );
            if !seen.insert(e.address) {
                self.err(
                    format!("{p}[{i}]"),
                    format!("duplicate endpoint {}", e.address),
                );
            }
        }
    }
}

/// True when two bind addresses would collide: same port and either the same IP or one of them
/// a wildcard.
fn clashes(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// RFC 9110 `token` (header names, methods).
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn valid_header_value(s: &str) -> bool {
    s.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// Characters allowed in a request target path (RFC 3986 pchar, `/`, `%`).
fn valid_path_chars(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%".contains(&b))
}

/// Domain patterns: `*`, `*.suffix` / `*-suffix`, `prefix.*`, or a host with an optional port.
fn check_domain(d: &str) -> Result<(), String> {
    if d == "*" {
        return Ok(());
    }
    if d.is_empty() {
        return Err("domain must not be empty".into());
    }
    let body = d
        .strip_prefix('*')
        .or_else(|| d.strip_suffix('*'))
        .unwrap_or(d);
    if body.is_empty() || body.contains('*') {
        return Err(format!(
            "domain `{d}`: a wildcard must be `*`, a leading `*` (suffix match) or a trailing `*` (prefix match)"
        ));
    }
    let ok = body
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b));
    if !ok {
        return Err(format!(
            "domain `{d}` contains characters not allowed in a host name"
        ));
    }
    Ok(())
}

/// TLS passthrough server names: a host name (`api.example.com`) or `*.` and a host name
/// (`*.example.com`); no port, no other wildcard.
fn check_server_name(n: &str) -> Result<(), String> {
    if n.is_empty() {
        return Err("server name must not be empty".into());
    }
    let host = n.strip_prefix("*.").unwrap_or(n);
    if host.contains('*') || host.is_empty() {
        return Err(format!(
            "server name `{n}`: a wildcard must be a leading `*.` (`*.example.com`); \
             connections no name matches go to the listener's `cluster`"
        ));
    }
    let labels_ok = host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !labels_ok {
        return Err(format!(
            "server name `{n}` is not a host name (letters, digits, `-` and `_` in dot-separated labels)"
        ));
    }
    Ok(())
}
