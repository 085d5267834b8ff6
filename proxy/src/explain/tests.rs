//! `explain` over the bundled demo config: the "why not" of each earlier route, every kind of
//! action, normalization, TCP listeners, and the text form in full.

use super::*;

const DEMO: &str = include_str!("../../../examples/demo.yaml");

fn demo() -> Config {
    sluice_config::parse(DEMO, "demo.yaml").expect("the demo config is valid")
}

fn ask(method: &str, url: &str, headers: &[(&str, &str)]) -> Explanation {
    let q = Query {
        method: method.into(),
        url: url.into(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    explain(&demo(), &q).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn a_forwarded_request_in_full_text() {
    let e = ask("GET", "http://localhost:8080/api/users?id=7", &[]);
    assert_eq!(
        e.text(),
        "\
request:      GET http://localhost:8080/api/users?id=7
listener:     web (http on 127.0.0.1:8080; it listens on port 8080)
route table:  demo
virtual host: everything
  route #0 health: no — path `/api/users` is not `/healthz`
  route #1 old-pages: no — path `/api/users` does not start with `/old/`
  route #2 api: MATCH
outcome:      forward
              path rewritten: `/api/users` → `/v1/users`
              timeout 5s until the response headers
              retries: the default policy
cluster:      api (100%): http2, lb peak_ewma, connect timeout 1s
                endpoint 127.0.0.1:9004 (weight 1)
"
    );
}

#[test]
fn header_conditions_and_weighted_splits_say_why() {
    let e = ask("GET", "http://localhost:8080/hello", &[]);
    assert_eq!(e.route.as_deref(), Some("default"));
    assert_eq!(
        e.routes[3].why_not.as_deref(),
        Some("header `x-canary` is absent (wanted: exactly `1`)")
    );
    let shares: Vec<(&str, f64)> = e
        .clusters
        .iter()
        .map(|c| (c.name.as_str(), c.share_percent))
        .collect();
    assert_eq!(shares, [("web", 90.0), ("web-canary", 10.0)]);
    let e = ask("GET", "http://localhost:8080/hello", &[("x-canary", "2")]);
    assert_eq!(
        e.routes[3].why_not.as_deref(),
        Some("header `x-canary` is `2` (wanted: exactly `1`)")
    );
    let e = ask("GET", "http://localhost:8080/hello", &[("x-canary", "1")]);
    assert_eq!(e.route.as_deref(), Some("canary"));
    assert_eq!(e.clusters[0].name, "web-canary");
}

#[test]
fn redirects_direct_responses_and_normalized_paths() {
    let e = ask("GET", "http://localhost:8080/old/page?x=1", &[]);
    assert_eq!(
        e.outcome,
        "redirect 301 to `http://localhost:8080/new/page?x=1`"
    );
    let e = ask("GET", "http://localhost:8080/a/../healthz", &[]);
    assert_eq!(e.normalized_path.as_deref(), Some("/healthz"));
    assert_eq!(e.outcome, "direct response 200");
    assert_eq!(e.details, ["body: \"ok\\n\""]);
    let e = ask("GET", "http://localhost:8080/a%2Fb", &[]);
    assert!(
        e.outcome.starts_with("redirect 307 to `/a/b`"),
        "{}",
        e.outcome
    );
}

#[test]
fn tcp_listeners_and_listener_choice() {
    let e = ask("CONNECT", "tcp://127.0.0.1:8081", &[]);
    assert_eq!(
        (e.listener.as_str(), e.protocol.as_str()),
        ("echo-tcp", "tcp")
    );
    assert_eq!(e.clusters[0].name, "tcp-echo");
    // No listener on the URL's port: the first HTTP one, and the reason says so.
    let e = ask("GET", "http://example.com/hello", &[]);
    assert_eq!(e.listener, "web");
    assert!(
        e.listener_reason.starts_with("the first HTTP listener"),
        "{}",
        e.listener_reason
    );
    let q = Query {
        method: "GET".into(),
        url: "http://x/".into(),
        listener: Some("nope".into()),
        ..Default::default()
    };
    assert_eq!(
        explain(&demo(), &q).unwrap_err(),
        "no listener `nope` in the config"
    );
}

#[test]
fn the_json_form_round_trips() {
    let e = ask("POST", "http://localhost:8080/api/x", &[("x-canary", "1")]);
    let json = serde_json::to_string(&e).expect("json");
    let back: Explanation = serde_json::from_str(&json).expect("parse");
    assert_eq!(back, e);
}

#[test]
fn breakers_faults_and_authorization_join_the_explanation() {
    let config = sluice_config::parse(
        "listeners:\n  - { name: l, address: 127.0.0.1:0, http: { route_table: t } }\n\
         route_tables:\n  - name: t\n    virtual_hosts:\n      - name: v\n        domains: ['*']\n        routes:\n\
         \x20         - match: { prefix: / }\n            cluster: c\n            circuit_breakers: { max_requests: 7 }\n\
         \x20           fault: { abort: { http_status: 503, percentage: 5 } }\n\
         \x20           authorization: { allow: ['spiffe://corp/ns/web/*'] }\n\
         clusters:\n  - { name: c, endpoints: [127.0.0.1:1] }\n",
        "t.yaml",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let q = Query {
        method: "GET".into(),
        url: "http://x/".into(),
        ..Default::default()
    };
    let e = explain(&config, &q).unwrap();
    let details = e.details.join("\n");
    assert!(
        details.contains("route circuit breakers: {\"max_requests\":7"),
        "{details}"
    );
    assert!(details.contains("fault injection: {\"abort\""), "{details}");
    assert!(
        details.contains("route authorization by verified client SPIFFE ID: {\"allow\":[\"spiffe://corp/ns/web/*\"]"),
        "{details}"
    );
}
