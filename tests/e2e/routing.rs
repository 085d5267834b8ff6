//! Every routing feature, through a proxy in this process, driven by curl.

use crate::support::*;

fn config(a: std::net::SocketAddr, b: std::net::SocketAddr, h2: std::net::SocketAddr) -> String {
    format!(
        r#"
listeners:
  - name: main
    address: 127.0.0.1:0
    http: {{ route_table: main }}
route_tables:
  - name: main
    virtual_hosts:
      - name: api
        domains: [api.example.com, "*.api.example.com"]
        request_headers:
          set: {{ x-vhost: api }}
        response_headers:
          add: {{ x-vhost-resp: api }}
        routes:
          - name: api-all
            match: {{ prefix: / }}
            cluster: b
      - name: prefixed
        domains: ["www.*"]
        routes:
          - {{ match: {{ prefix: / }}, direct_response: {{ status: 200, body: "prefix wildcard\n" }} }}
      - name: default
        domains: ["*"]
        routes:
          - name: exact
            match: {{ path: /exact }}
            direct_response: {{ status: 202, body: "exact\n" }}
          - name: regex
            match: {{ regex: '/items/[0-9]+' }}
            direct_response: {{ status: 200, body: "regex\n" }}
          - name: delete-only
            match: {{ prefix: /method, methods: [DELETE] }}
            direct_response: {{ status: 200, body: "delete\n" }}
          - name: header-exact
            match: {{ prefix: /hm, headers: [{{ name: x-user, exact: admin }}] }}
            direct_response: {{ status: 200, body: "header exact\n" }}
          - name: header-prefix
            match: {{ prefix: /hm, headers: [{{ name: x-user, prefix: dev- }}] }}
            direct_response: {{ status: 200, body: "header prefix\n" }}
          - name: header-regex
            match: {{ prefix: /hm, headers: [{{ name: x-user, regex: 'u[0-9]+' }}] }}
            direct_response: {{ status: 200, body: "header regex\n" }}
          - name: header-present
            match: {{ prefix: /hm, headers: [{{ name: x-flag, present: true }}] }}
            direct_response: {{ status: 200, body: "header present\n" }}
          - name: header-absent-inverted
            match: {{ prefix: /hm, headers: [{{ name: x-user, present: false }}, {{ name: x-mode, exact: slow, invert: true }}] }}
            direct_response: {{ status: 200, body: "no user, not slow\n" }}
          - name: query
            match: {{ prefix: /q, query_parameters: [{{ name: v, exact: "2" }}] }}
            direct_response: {{ status: 200, body: "query v2\n" }}
          - name: query-regex
            match: {{ prefix: /q, query_parameters: [{{ name: id, regex: '[a-f]+' }}] }}
            direct_response: {{ status: 200, body: "query regex\n" }}
          - name: split
            match: {{ prefix: /split }}
            weighted_clusters: [{{ cluster: a, weight: 3 }}, {{ cluster: b, weight: 1 }}]
          - name: redirect-https
            match: {{ prefix: /secure }}
            redirect: {{ scheme: https, code: 308 }}
          - name: redirect-prefix
            match: {{ prefix: /old/ }}
            redirect: {{ prefix_rewrite: /new/ }}
          - name: redirect-host
            match: {{ prefix: /moved }}
            redirect: {{ host: example.org, path: /landing, code: 302, strip_query: true }}
          - name: rewrite-prefix
            match: {{ prefix: /svc/ }}
            cluster: a
            rewrite: {{ prefix: /internal/, host: backend.local }}
          - name: rewrite-regex
            match: {{ prefix: /users/ }}
            cluster: a
            rewrite: {{ regex: {{ pattern: '^/users/([0-9]+)/profile$', substitution: '/profiles/$1' }} }}
          - name: h2-upstream
            match: {{ prefix: /h2 }}
            cluster: h2
          - name: headers
            match: {{ prefix: /headers }}
            cluster: a
            request_headers:
              add: {{ x-added: one }}
              set: {{ x-set: fixed }}
              remove: [x-secret]
            response_headers:
              set: {{ x-route: headers }}
              remove: [x-upstream]
          - name: teapot
            match: {{ prefix: /teapot }}
            direct_response: {{ status: 418, body: "short and stout\n" }}
            response_headers:
              set: {{ content-type: text/teapot }}
clusters:
  - {{ name: a, endpoints: [{a}] }}
  - {{ name: b, endpoints: [{b}] }}
  - {{ name: h2, protocol: http2, endpoints: [{h2}] }}
"#
    )
}

fn setup() -> InProcess {
    InProcess::start(&config(echo("a"), echo("b"), echo("h2")))
}

#[test]
fn virtual_hosts_by_host_header() {
    let p = setup();
    let url = p.url("main", "/anything");
    let r = curl(&["-H", "Host: api.example.com", &url]);
    assert_eq!(r.header("x-upstream"), Some("b"));
    assert_eq!(r.json()["headers"]["x-vhost"][0], "api");
    assert_eq!(r.header("x-vhost-resp"), Some("api"));
    let r = curl(&["-H", "Host: v2.api.example.com:8080", &url]);
    assert_eq!(
        r.header("x-upstream"),
        Some("b"),
        "suffix wildcard with port"
    );
    let r = curl(&["-H", "Host: www.other.org", &url]);
    assert_eq!(r.text(), "prefix wildcard\n");
    let r = curl(&["-H", "Host: API.EXAMPLE.COM", &url]);
    assert_eq!(
        r.header("x-upstream"),
        Some("b"),
        "host matching ignores case"
    );
}

#[test]
fn path_matching_exact_regex_prefix_and_404() {
    let p = setup();
    let r = curl(&[&p.url("main", "/exact")]);
    assert_eq!((r.status, r.text().as_str()), (202, "exact\n"));
    let r = curl(&[&p.url("main", "/exact/not")]);
    assert_eq!(r.status, 404, "no route → 404");
    assert_eq!(r.text(), "no route\n");
    let r = curl(&[&p.url("main", "/items/123")]);
    assert_eq!(r.text(), "regex\n");
    let r = curl(&[&p.url("main", "/items/12a")]);
    assert_eq!(r.status, 404);
    assert!(
        p.metrics()
            .contains("sluice_downstream_responses_total{listener=\"main\",class=\"4xx\"} 2")
    );
}

#[test]
fn method_header_and_query_matchers() {
    let p = setup();
    assert_eq!(
        curl(&["-X", "DELETE", &p.url("main", "/method")]).text(),
        "delete\n"
    );
    assert_eq!(curl(&[&p.url("main", "/method")]).status, 404);
    let h = p.url("main", "/hm");
    assert_eq!(curl(&["-H", "x-user: admin", &h]).text(), "header exact\n");
    assert_eq!(
        curl(&["-H", "x-user: dev-ann", &h]).text(),
        "header prefix\n"
    );
    assert_eq!(curl(&["-H", "x-user: u42", &h]).text(), "header regex\n");
    assert_eq!(
        curl(&["-H", "x-user: someone", "-H", "x-flag;", &h]).text(),
        "header present\n"
    );
    assert_eq!(curl(&[&h]).text(), "no user, not slow\n");
    assert_eq!(
        curl(&["-H", "x-mode: slow", &h]).status,
        404,
        "inverted match"
    );
    assert_eq!(curl(&["-H", "x-user: someone", &h]).status, 404);
    assert_eq!(curl(&[&p.url("main", "/q?a=1&v=2")]).text(), "query v2\n");
    assert_eq!(
        curl(&[&p.url("main", "/q?id=beef")]).text(),
        "query regex\n"
    );
    assert_eq!(curl(&[&p.url("main", "/q?id=xyz&v=3")]).status, 404);
}

#[test]
fn weighted_split_follows_weights() {
    let p = setup();
    let url = p.url("main", "/split");
    let mut a = 0;
    let n = 400;
    for _ in 0..n {
        if curl(&[&url]).header("x-upstream") == Some("a") {
            a += 1;
        }
    }
    // 3:1 split: expect 300 of 400; binomial sd ≈ 8.7, allow ±5 sd.
    assert!((256..=344).contains(&a), "cluster a got {a} of {n}");
}

#[test]
fn redirects() {
    let p = setup();
    let addr = p.addr("main");
    let r = curl(&[&p.url("main", "/secure/x?y=1")]);
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some("https://127.0.0.1/secure/x?y=1".to_string().as_str())
    );
    let r = curl(&[&p.url("main", "/old/a/b?c")]);
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location"),
        Some(format!("http://{addr}/new/a/b?c").as_str())
    );
    let r = curl(&[&p.url("main", "/moved?drop=me")]);
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("http://example.org/landing"));
}

#[test]
fn direct_response_with_response_headers() {
    let p = setup();
    let r = curl(&[&p.url("main", "/teapot")]);
    assert_eq!(r.status, 418);
    assert_eq!(r.text(), "short and stout\n");
    assert_eq!(r.header("content-type"), Some("text/teapot"));
    assert_eq!(r.header("content-length"), Some("16"));
}

#[test]
fn path_and_host_rewrites() {
    let p = setup();
    let r = curl(&[&p.url("main", "/svc/orders?id=4")]);
    let j = r.json();
    assert_eq!(j["path"], "/internal/orders");
    assert_eq!(j["query"], "id=4");
    assert_eq!(j["headers"]["host"][0], "backend.local");
    let j = curl(&[&p.url("main", "/users/77/profile")]).json();
    assert_eq!(j["path"], "/profiles/77");
}

#[test]
fn request_and_response_header_mutations() {
    let p = setup();
    let r = curl(&[
        "-H",
        "x-secret: hunter2",
        "-H",
        "x-added: zero",
        "-H",
        "x-set: client",
        &p.url("main", "/headers"),
    ]);
    let j = r.json();
    assert_eq!(j["headers"]["x-added"], serde_json::json!(["zero", "one"]));
    assert_eq!(j["headers"]["x-set"], serde_json::json!(["fixed"]));
    assert!(
        j["headers"].get("x-secret").is_none(),
        "removed header reached upstream"
    );
    assert_eq!(r.header("x-route"), Some("headers"));
    assert_eq!(r.header("x-upstream"), None, "response header removed");
}

#[test]
fn forwarding_headers_and_request_id() {
    let p = setup();
    let url = p.url("main", "/headers");
    let j = curl(&[
        "-H",
        "x-forwarded-for: 203.0.113.9",
        "-H",
        "x-forwarded-proto: https",
        &url,
    ])
    .json();
    // The client is not a trusted hop (the default): its forwarding headers are replaced.
    assert_eq!(
        j["headers"]["x-forwarded-for"],
        serde_json::json!(["127.0.0.1"])
    );
    assert_eq!(
        j["headers"]["x-forwarded-proto"],
        serde_json::json!(["http"])
    );
    let id = j["headers"]["x-request-id"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(id.len(), 36, "uuid: {id}");
    // An untrusted client's request id is replaced (tests/e2e/edge.rs covers trusted peers).
    let j = curl(&["-H", "x-request-id: keep-me", &url]).json();
    let id = j["headers"]["x-request-id"][0].as_str().unwrap();
    assert_ne!(id, "keep-me");
    assert_eq!(id.len(), 36, "uuid: {id}");
}

#[test]
fn hop_by_hop_headers_are_not_forwarded() {
    let p = setup();
    let j = curl(&[
        "-H",
        "Connection: keep-alive, x-hop",
        "-H",
        "x-hop: secret",
        "-H",
        "Keep-Alive: timeout=5",
        "-H",
        "Proxy-Connection: keep-alive",
        "-H",
        "TE: gzip",
        "-H",
        "x-end-to-end: yes",
        &p.url("main", "/headers"),
    ])
    .json();
    let h = &j["headers"];
    for gone in [
        "x-hop",
        "keep-alive",
        "proxy-connection",
        "te",
        "connection",
    ] {
        assert!(h.get(gone).is_none(), "{gone} was forwarded: {h}");
    }
    assert_eq!(h["x-end-to-end"][0], "yes");
}
