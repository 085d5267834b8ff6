//! Route matching and action tests: pure functions, no sockets.

use super::*;
use crate::metrics::Metrics;
use http::{HeaderName, HeaderValue};

fn table(yaml: &str) -> RouteTable {
    let src = format!(
        "route_tables:\n  - name: t\n    virtual_hosts:\n{yaml}\nclusters:\n  - {{ name: a, endpoints: [127.0.0.1:1] }}\n  - {{ name: b, endpoints: [127.0.0.1:2] }}\n"
    );
    let cfg = sluice_config::parse(&src, "t.yaml").unwrap_or_else(|e| panic!("{e}\n{src}"));
    let mut clusters = crate::cluster::Registry::new(std::sync::Arc::new(Metrics::new()), 1);
    for c in &cfg.clusters {
        clusters.set_settings(c).unwrap();
    }
    RouteTable::compile(&cfg.route_tables[0], &mut clusters).unwrap()
}

struct Req {
    method: Method,
    host: String,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
}

fn req(host: &str, target: &str) -> Req {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    Req {
        method: Method::GET,
        host: host.into(),
        path,
        query,
        headers: HeaderMap::new(),
    }
}

impl Req {
    fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
        self
    }
    fn method(mut self, m: Method) -> Self {
        self.method = m;
        self
    }
}

/// The name of the route that takes the request, or "-" for none.
fn route_of(t: &RouteTable, r: &Req) -> String {
    let head = RequestHead {
        method: &r.method,
        host: &r.host,
        path: &r.path,
        query: r.query.as_deref(),
        headers: &r.headers,
    };
    t.find(&head)
        .map_or("-".into(), |(_, route)| route.name.clone())
}

const PATHS: &str = "      - name: v
        domains: ['*']
        routes:
          - { name: exact, match: { path: /exact }, cluster: a }
          - { name: regex, match: { regex: '/items/[0-9]+' }, cluster: a }
          - { name: prefix, match: { prefix: /api/ }, cluster: a }
          - { name: root, match: { prefix: / }, cluster: b }";

#[test]
fn path_matching_in_order() {
    let t = table(PATHS);
    assert_eq!(route_of(&t, &req("x", "/exact")), "exact");
    assert_eq!(
        route_of(&t, &req("x", "/exact?q=1")),
        "exact",
        "query is not part of the path"
    );
    assert_eq!(route_of(&t, &req("x", "/exact/more")), "root");
    assert_eq!(route_of(&t, &req("x", "/items/42")), "regex");
    assert_eq!(
        route_of(&t, &req("x", "/items/42x")),
        "root",
        "regex must match the whole path"
    );
    assert_eq!(route_of(&t, &req("x", "/api/users")), "prefix");
    assert_eq!(
        route_of(&t, &req("x", "/API/users")),
        "root",
        "prefix is case-sensitive"
    );
}

#[test]
fn no_route_and_no_virtual_host() {
    let t = table(
        "      - name: v
        domains: [a.com]
        routes:
          - { name: only, match: { prefix: /x }, cluster: a }",
    );
    assert_eq!(route_of(&t, &req("a.com", "/y")), "-");
    assert_eq!(route_of(&t, &req("b.com", "/x")), "-");
    assert_eq!(route_of(&t, &req("A.COM:80", "/x")), "only");
}

#[test]
fn virtual_hosts_by_host() {
    let t = table(
        "      - { name: api, domains: [api.example.com], routes: [{ name: api, match: { prefix: / }, cluster: a }] }
      - { name: wild, domains: ['*.example.com'], routes: [{ name: wild, match: { prefix: / }, cluster: a }] }
      - { name: pre, domains: ['www.*'], routes: [{ name: pre, match: { prefix: / }, cluster: a }] }
      - { name: any, domains: ['*'], routes: [{ name: any, match: { prefix: / }, cluster: b }] }",
    );
    assert_eq!(route_of(&t, &req("api.example.com", "/")), "api");
    assert_eq!(route_of(&t, &req("api.example.com:8443", "/")), "api");
    assert_eq!(route_of(&t, &req("shop.example.com", "/")), "wild");
    assert_eq!(route_of(&t, &req("www.other.net", "/")), "pre");
    assert_eq!(route_of(&t, &req("other.net", "/")), "any");
}

#[test]
fn methods_headers_and_query() {
    let t = table(
        "      - name: v
        domains: ['*']
        routes:
          - { name: post, match: { prefix: /, methods: [POST, PUT] }, cluster: a }
          - { name: exact, match: { prefix: /, headers: [{ name: x-a, exact: one }] }, cluster: a }
          - { name: prefix, match: { prefix: /, headers: [{ name: x-b, prefix: pre }] }, cluster: a }
          - { name: suffix, match: { prefix: /, headers: [{ name: x-b, suffix: fix }] }, cluster: a }
          - { name: regex, match: { prefix: /, headers: [{ name: x-c, regex: 'v[0-9]+' }] }, cluster: a }
          - { name: present, match: { prefix: /, headers: [{ name: x-d, present: true }] }, cluster: a }
          - { name: inverted, match: { prefix: /inv, headers: [{ name: x-e, exact: no, invert: true }] }, cluster: a }
          - { name: absent, match: { prefix: /abs, headers: [{ name: x-f, present: false }] }, cluster: a }
          - { name: query, match: { prefix: /, query_parameters: [{ name: debug, exact: 'on air' }] }, cluster: a }
          - { name: query-re, match: { prefix: /, query_parameters: [{ name: id, regex: '[0-9]+' }] }, cluster: a }
          - { name: query-present, match: { prefix: /, query_parameters: [{ name: flag, present: true }] }, cluster: a }
          - { name: fallback, match: { prefix: / }, cluster: b }",
    );
    assert_eq!(route_of(&t, &req("h", "/").method(Method::PUT)), "post");
    assert_eq!(route_of(&t, &req("h", "/").header("x-a", "one")), "exact");
    assert_eq!(
        route_of(&t, &req("h", "/").header("x-a", "two")),
        "fallback"
    );
    assert_eq!(
        route_of(&t, &req("h", "/").header("x-b", "prefixed")),
        "prefix"
    );
    assert_eq!(
        route_of(&t, &req("h", "/").header("x-b", "a-suffix")),
        "suffix"
    );
    assert_eq!(route_of(&t, &req("h", "/").header("x-c", "v12")), "regex");
    assert_eq!(
        route_of(&t, &req("h", "/").header("x-c", "v12b")),
        "fallback"
    );
    assert_eq!(route_of(&t, &req("h", "/").header("x-d", "")), "present");
    assert_eq!(
        route_of(&t, &req("h", "/inv")),
        "inverted",
        "absent header is not `no`"
    );
    assert_eq!(
        route_of(&t, &req("h", "/inv").header("x-e", "no")),
        "fallback"
    );
    assert_eq!(route_of(&t, &req("h", "/abs")), "absent");
    assert_eq!(
        route_of(&t, &req("h", "/abs").header("x-f", "1")),
        "fallback"
    );
    assert_eq!(route_of(&t, &req("h", "/?a=1&debug=on%20air")), "query");
    assert_eq!(route_of(&t, &req("h", "/?debug=on+air")), "query");
    assert_eq!(route_of(&t, &req("h", "/?id=42")), "query-re");
    assert_eq!(route_of(&t, &req("h", "/?id=4x")), "fallback");
    assert_eq!(route_of(&t, &req("h", "/?flag")), "query-present");
}

#[test]
fn repeated_headers_are_joined() {
    let t = table(
        "      - name: v
        domains: ['*']
        routes:
          - { name: joined, match: { prefix: /, headers: [{ name: x-a, exact: '1,2' }] }, cluster: a }
          - { name: fallback, match: { prefix: / }, cluster: b }",
    );
    assert_eq!(
        route_of(&t, &req("h", "/").header("x-a", "1").header("x-a", "2")),
        "joined"
    );
}

fn forward_of<'a>(t: &'a RouteTable, r: &Req) -> (&'a Route, &'a Forward) {
    let head = RequestHead {
        method: &r.method,
        host: &r.host,
        path: &r.path,
        query: r.query.as_deref(),
        headers: &r.headers,
    };
    let (_, route) = t.find(&head).unwrap();
    match &route.action {
        Action::Forward(f) => (route, f),
        other => panic!("not a forward: {other:?}"),
    }
}

#[test]
fn prefix_and_regex_rewrites() {
    let t = table(
        "      - name: v
        domains: ['*']
        routes:
          - { match: { prefix: /api/ }, cluster: a, rewrite: { prefix: /v1/ } }
          - { match: { prefix: /strip }, cluster: a, rewrite: { prefix: / } }
          - { match: { prefix: /re/ }, cluster: a, rewrite: { regex: { pattern: '^/re/([a-z]+)/(\\d+)$', substitution: '/$2/$1' } } }",
    );
    let r = req("h", "/api/users");
    let (route, f) = forward_of(&t, &r);
    let rw = f.path_rewrite.as_ref().unwrap();
    assert_eq!(rw.apply("/api/users", route.matched_prefix()), "/v1/users");
    let r = req("h", "/strip/x");
    let (route, f) = forward_of(&t, &r);
    assert_eq!(
        f.path_rewrite
            .as_ref()
            .unwrap()
            .apply("/strip/x", route.matched_prefix()),
        "/x"
    );
    assert_eq!(
        f.path_rewrite
            .as_ref()
            .unwrap()
            .apply("/strip", route.matched_prefix()),
        "/"
    );
    let r = req("h", "/re/item/7");
    let (route, f) = forward_of(&t, &r);
    assert_eq!(
        f.path_rewrite
            .as_ref()
            .unwrap()
            .apply("/re/item/7", route.matched_prefix()),
        "/7/item"
    );
}

#[test]
fn weighted_split_follows_weights() {
    let t = table(
        "      - name: v
        domains: ['*']
        routes:
          - { match: { prefix: / }, weighted_clusters: [{ cluster: a, weight: 3 }, { cluster: b, weight: 1 }, { cluster: a, weight: 0 }] }",
    );
    let r = req("h", "/");
    let (_, f) = forward_of(&t, &r);
    let picks: Vec<String> = (0..8u64)
        .map(|roll| f.backends.pick(|| roll).unwrap().name.clone())
        .collect();
    assert_eq!(picks, ["a", "a", "a", "b", "a", "a", "a", "b"]);
}

#[test]
fn redirect_locations() {
    let t = table(
        "      - name: v
        domains: ['*']
        routes:
          - { name: https, match: { prefix: /secure }, redirect: { scheme: https } }
          - { name: host, match: { prefix: /elsewhere }, redirect: { host: example.org, port: 8443, code: 302 } }
          - { name: path, match: { prefix: /p }, redirect: { path: /new, strip_query: true } }
          - { name: prefix, match: { prefix: /old/ }, redirect: { prefix_rewrite: /new/, code: 308 } }",
    );
    let loc = |target: &str, host: &str| {
        let r = req(host, target);
        let head = RequestHead {
            method: &r.method,
            host: &r.host,
            path: &r.path,
            query: r.query.as_deref(),
            headers: &r.headers,
        };
        let (_, route) = t.find(&head).unwrap();
        match &route.action {
            Action::Redirect(rd) => (
                rd.status.as_u16(),
                rd.location(
                    "http",
                    host,
                    &r.path,
                    r.query.as_deref(),
                    route.matched_prefix(),
                )
                .unwrap(),
            ),
            _ => panic!("not a redirect"),
        }
    };
    assert_eq!(
        loc("/secure?a=1", "a.com:8080"),
        (301, "https://a.com/secure?a=1".into())
    );
    assert_eq!(
        loc("/elsewhere", "a.com"),
        (302, "http://example.org:8443/elsewhere".into())
    );
    assert_eq!(
        loc("/p?x=1", "a.com:8080"),
        (301, "http://a.com:8080/new".into())
    );
    assert_eq!(
        loc("/old/page?q", "a.com"),
        (308, "http://a.com/new/page?q".into())
    );
}

#[test]
fn header_ops_remove_set_add() {
    let t = table(
        "      - name: v
        domains: ['*']
        routes:
          - match: { prefix: / }
            cluster: a
            request_headers:
              add: { x-multi: two }
              set: { x-set: new }
              remove: [x-gone]",
    );
    let r = req("h", "/");
    let head = RequestHead {
        method: &r.method,
        host: &r.host,
        path: &r.path,
        query: None,
        headers: &r.headers,
    };
    let (_, route) = t.find(&head).unwrap();
    let mut h = HeaderMap::new();
    h.insert("x-multi", HeaderValue::from_static("one"));
    h.insert("x-set", HeaderValue::from_static("old"));
    h.insert("x-gone", HeaderValue::from_static("bye"));
    route.request_headers.apply(&mut h);
    assert_eq!(
        h.get_all("x-multi").iter().collect::<Vec<_>>(),
        ["one", "two"]
    );
    assert_eq!(h["x-set"], "new");
    assert!(!h.contains_key("x-gone"));
}

#[test]
fn default_timeout_and_disabled_timeout() {
    let t = table(
        "      - name: v
        domains: ['*']
        routes:
          - { match: { prefix: /none }, cluster: a, timeout: 0s }
          - { match: { prefix: / }, cluster: a }",
    );
    let r = req("h", "/none");
    assert_eq!(forward_of(&t, &r).1.timeout, None);
    let r = req("h", "/x");
    assert_eq!(
        forward_of(&t, &r).1.timeout,
        Some(std::time::Duration::from_secs(15))
    );
}
