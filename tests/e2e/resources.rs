//! Updates through the state's one writer (`Proxy::apply`, the seam xDS uses): an endpoint
//! change keeps the pooled connections to every other endpoint and touches no route table, a
//! route table change keeps every pool, an invalid resource is rejected by name while the
//! others apply, and a route to a cluster that is not (yet) known answers 503 with the `NC`
//! flag until the cluster arrives.

use crate::support::*;
use sluice_config::{ClusterLoadAssignment, Endpoint, Resource, ResourceType, Update};
use std::net::SocketAddr;

fn yaml(a: SocketAddr) -> String {
    format!(
        r#"
listeners:
  - {{ name: l, address: 127.0.0.1:0, http: {{ route_table: t }} }}
route_tables:
  - name: t
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - {{ match: {{ prefix: / }}, cluster: c }}
clusters:
  # Round robin: the test needs the new endpoint picked at once (peak EWMA would keep the
  # warm endpoint while the new one costs its default RTT).
  - {{ name: c, lb_policy: round_robin, endpoints: [{a}] }}
"#
    )
}

fn endpoints(cluster: &str, addrs: &[SocketAddr]) -> Resource {
    Resource::Endpoints(ClusterLoadAssignment {
        cluster_name: cluster.into(),
        endpoints: addrs
            .iter()
            .map(|&address| Endpoint {
                address,
                weight: 1,
                zone: None,
            })
            .collect(),
    })
}

fn upsert(resources: Vec<Resource>) -> Update {
    Update {
        upserts: resources,
        removals: Vec::new(),
    }
}

/// Upstream connections the proxy has opened for cluster `c`.
fn connections(p: &InProcess) -> f64 {
    metric_value(
        &p.metrics(),
        r#"sluice_upstream_connections_total{cluster="c"}"#,
    )
}

fn route_table(cluster: &str, header: &str) -> Resource {
    let cfg = sluice_config::parse(
        &format!(
            "route_tables:\n  - name: t\n    virtual_hosts:\n      - name: all\n        domains: ['*']\n        response_headers: {{ set: {{ x-table: '{header}' }} }}\n        routes:\n          - {{ match: {{ prefix: / }}, cluster: {cluster} }}\nclusters:\n  - {{ name: {cluster}, endpoints: [127.0.0.1:9] }}\n"
        ),
        "update.yaml",
    )
    .unwrap();
    Resource::RouteTable(cfg.route_tables[0].clone())
}

#[test]
fn an_endpoint_change_keeps_other_endpoints_connections() {
    let (a, b) = (echo("a"), echo("b"));
    let p = InProcess::start(&yaml(a));
    let mut client = KeepAlive::new(p.addr("l"));
    for _ in 0..3 {
        let r = client.get("/").unwrap();
        assert_eq!(r.header("x-upstream"), Some("a"));
    }
    assert_eq!(connections(&p), 1.0);
    let applied = p
        .proxy()
        .apply(upsert(vec![endpoints("c", &[a, b])]))
        .unwrap();
    assert!(applied.is_ok(), "{applied:?}");
    let mut seen = Vec::new();
    for _ in 0..6 {
        let r = client.get("/").unwrap();
        seen.push(r.header("x-upstream").unwrap().to_string());
    }
    assert!(
        seen.iter().any(|u| u == "a") && seen.iter().any(|u| u == "b"),
        "{seen:?}"
    );
    assert_eq!(
        connections(&p),
        2.0,
        "only the new endpoint was connected to"
    );
    // And removing b leaves a's connection alone too.
    p.proxy().apply(upsert(vec![endpoints("c", &[a])])).unwrap();
    for _ in 0..3 {
        assert_eq!(client.get("/").unwrap().header("x-upstream"), Some("a"));
    }
    assert_eq!(connections(&p), 2.0);
}

#[test]
fn a_route_table_change_keeps_every_pool() {
    let a = echo("a");
    let p = InProcess::start(&yaml(a));
    let mut client = KeepAlive::new(p.addr("l"));
    client.get("/").unwrap();
    let applied = p
        .proxy()
        .apply(upsert(vec![route_table("c", "2")]))
        .unwrap();
    assert!(applied.is_ok(), "{applied:?}");
    let r = client.get("/").unwrap();
    assert_eq!(r.header("x-table"), Some("2"), "new table serves");
    assert_eq!(r.header("x-upstream"), Some("a"));
    assert_eq!(connections(&p), 1.0, "the pooled connection was reused");
}

#[test]
fn an_invalid_resource_is_rejected_by_name_while_the_others_apply() {
    let (a, b) = (echo("a"), echo("b"));
    let p = InProcess::start(&yaml(a));
    let bad = endpoints("d", &["127.0.0.1:0".parse().unwrap()]);
    let applied = p
        .proxy()
        .apply(upsert(vec![endpoints("c", &[b]), bad]))
        .unwrap();
    let rejected: Vec<String> = applied.rejected().map(ToString::to_string).collect();
    assert_eq!(
        rejected,
        vec![r#"endpoints "d" rejected: endpoints[0]: port must not be 0"#.to_string()]
    );
    let c = curl(&["-s", "-D", "-", &p.url("l", "/")]);
    assert_eq!(
        c.header("x-upstream"),
        Some("b"),
        "the valid update applied"
    );
    let metrics = p.metrics();
    assert_eq!(
        metric_value(
            &metrics,
            r#"sluice_config_resource_updates_total{type="endpoints",result="rejected"}"#
        ),
        1.0
    );
}

#[test]
fn a_route_to_an_unknown_cluster_answers_503_nc_until_it_arrives() {
    let (a, g) = (echo("a"), echo("ghost"));
    let p = InProcess::start(&yaml(a));
    let applied = p
        .proxy()
        .apply(upsert(vec![route_table("ghost", "1")]))
        .unwrap();
    assert!(
        applied.is_ok(),
        "a dynamic route may name a cluster not yet known"
    );
    let c = curl(&["-s", "-D", "-", &p.url("l", "/")]);
    assert_eq!(c.status, 503);
    assert!(c.text().contains("no cluster"), "{}", c.text());
    assert_eq!(
        metric_value(
            &p.metrics(),
            r#"sluice_downstream_error_responses_total{listener="l",flag="NC"}"#
        ),
        1.0
    );
    let cluster = sluice_config::parse(
        &format!("clusters:\n  - {{ name: ghost, endpoints: [{g}] }}\n"),
        "c.yaml",
    )
    .unwrap()
    .resources();
    let applied = p
        .proxy()
        .apply(upsert(cluster.into_values().collect()))
        .unwrap();
    assert!(applied.is_ok(), "{applied:?}");
    let c = curl(&["-s", "-D", "-", &p.url("l", "/")]);
    assert_eq!(c.status, 200);
    assert_eq!(c.header("x-upstream"), Some("ghost"));
    // Removing the cluster's endpoints: 503 with UH, no panic, no hang.
    let removal = Update {
        upserts: Vec::new(),
        removals: vec![(ResourceType::Endpoints, "ghost".into())],
    };
    p.proxy().apply(removal).unwrap();
    let c = curl(&["-s", "-D", "-", &p.url("l", "/")]);
    assert_eq!(c.status, 503);
    assert!(c.text().contains("no healthy upstream"));
}

#[test]
fn a_grpc_request_gets_a_grpc_status_for_a_local_failure() {
    let a = echo("a");
    let p = InProcess::start(&yaml(a));
    p.proxy()
        .apply(upsert(vec![route_table("ghost", "1")]))
        .unwrap();
    let url = p.url("l", "/helloworld.Greeter/SayHello");
    let c = curl(&[
        "--http2-prior-knowledge",
        "-X",
        "POST",
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        &url,
    ]);
    assert_eq!(c.status, 200);
    assert_eq!(
        c.header("grpc-status"),
        Some("14"),
        "UNAVAILABLE for 503 NC"
    );
    assert_eq!(c.header("grpc-message"), Some("no cluster"));
    // A plain request to the same route still gets the HTTP answer.
    assert_eq!(curl(&[&p.url("l", "/")]).status, 503);
}
