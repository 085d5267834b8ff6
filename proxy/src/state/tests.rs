//! The writer applies updates per resource and recompiles only dependents.

use super::*;
use crate::cluster::Change;
use crate::listener::Reconciler;
use sluice_config::{Config, Resource, ResourceType, Update};
use std::sync::Mutex;
use std::time::Duration;

fn writer() -> Writer {
    let live = Arc::new(Live::new(Snapshot::default(), Arc::new(Metrics::new())));
    let reconciler = Reconciler::new(Vec::new(), Duration::ZERO, Arc::new(Mutex::default()));
    Writer::new(live, Default::default(), 1, reconciler, Vec::new())
}

fn config(endpoints: &str, prefix: &str) -> Config {
    sluice_config::parse(
        &format!(
            "listeners:\n  - {{ name: l, address: 127.0.0.1:0, http: {{ route_table: t }} }}\n\
             route_tables:\n  - name: t\n    virtual_hosts:\n      - name: v\n        domains: ['*']\n        routes:\n          - {{ match: {{ prefix: {prefix} }}, cluster: c }}\n\
             clusters:\n  - {{ name: c, endpoints: [{endpoints}] }}\n  - {{ name: d, endpoints: [127.0.0.1:9] }}\n"
        ),
        "t.yaml",
    )
    .unwrap()
}

fn apply(w: &mut Writer, c: &Config) -> Applied {
    let update = sluice_config::diff(w.resources(), &c.resources());
    w.apply(update)
}

fn table(w: &Writer) -> Arc<RouteTable> {
    Arc::clone(&w.live.snapshot().route_tables["t"])
}

#[test]
fn an_endpoint_change_touches_no_route_table_and_keeps_other_endpoints() {
    let mut w = writer();
    assert!(apply(&mut w, &config("127.0.0.1:1, 127.0.0.1:2", "/")).is_ok());
    let t = table(&w);
    let c = Arc::clone(w.registry().get("c").unwrap());
    let settings = c.settings().unwrap();
    let kept = Arc::clone(
        &c.endpoints()
            .get("127.0.0.1:2".parse().unwrap())
            .unwrap()
            .state,
    );
    let applied = apply(&mut w, &config("127.0.0.1:2, 127.0.0.1:3", "/"));
    assert!(applied.is_ok());
    assert_eq!(
        applied
            .results
            .iter()
            .map(|r| (r.kind, r.name.as_str()))
            .collect::<Vec<_>>(),
        vec![(ResourceType::Endpoints, "c")]
    );
    assert!(Arc::ptr_eq(&t, &table(&w)), "route table not recompiled");
    assert!(
        Arc::ptr_eq(&settings, &c.settings().unwrap()),
        "settings untouched"
    );
    let now = c.endpoints();
    assert!(Arc::ptr_eq(
        &now.get("127.0.0.1:2".parse().unwrap()).unwrap().state,
        &kept
    ));
    assert_eq!(now.endpoints.len(), 2);
}

#[test]
fn a_route_table_change_touches_no_cluster() {
    let mut w = writer();
    apply(&mut w, &config("127.0.0.1:1", "/"));
    let c = Arc::clone(w.registry().get("c").unwrap());
    let (settings, endpoints) = (c.settings().unwrap(), c.endpoints());
    let t = table(&w);
    let l = Arc::clone(&w.live.snapshot().listeners["l"]);
    let applied = apply(&mut w, &config("127.0.0.1:1", "/x"));
    assert_eq!(
        applied
            .results
            .iter()
            .map(|r| (r.kind, r.name.as_str()))
            .collect::<Vec<_>>(),
        vec![(ResourceType::RouteTable, "t")]
    );
    assert!(!Arc::ptr_eq(&t, &table(&w)));
    let l2 = Arc::clone(&w.live.snapshot().listeners["l"]);
    assert!(
        !Arc::ptr_eq(&l, &l2),
        "the listener using the table is recompiled"
    );
    assert_eq!(l2.route_table(), Some("t"));
    assert!(Arc::ptr_eq(&settings, &c.settings().unwrap()));
    assert!(Arc::ptr_eq(&endpoints, &c.endpoints()));
}

#[test]
fn an_invalid_resource_is_rejected_by_name_while_the_rest_apply() {
    let mut w = writer();
    apply(&mut w, &config("127.0.0.1:1", "/"));
    let good = match &config("127.0.0.1:5", "/").resources()[&(ResourceType::Endpoints, "c".into())]
    {
        Resource::Endpoints(e) => e.clone(),
        _ => unreachable!(),
    };
    let mut bad = good.clone();
    bad.cluster_name = "d".into();
    bad.endpoints[0].weight = 0;
    let applied = w.apply(Update {
        upserts: vec![Resource::Endpoints(good), Resource::Endpoints(bad)],
        removals: Vec::new(),
    });
    let rejected: Vec<_> = applied.rejected().collect();
    assert_eq!(rejected.len(), 1);
    assert_eq!(
        (rejected[0].kind, rejected[0].name.as_str()),
        (ResourceType::Endpoints, "d")
    );
    assert!(
        rejected[0]
            .to_string()
            .contains("endpoints \"d\" rejected: endpoints[0].weight: must be at least 1"),
        "{}",
        rejected[0]
    );
    let c = w.registry().get("c").unwrap().endpoints();
    assert_eq!(
        c.endpoints[0].address,
        "127.0.0.1:5".parse().unwrap(),
        "the valid one applied"
    );
    let d = w.registry().get("d").unwrap().endpoints();
    assert_eq!(
        d.endpoints[0].address,
        "127.0.0.1:9".parse().unwrap(),
        "the old d keeps serving"
    );
    assert_eq!(
        w.live
            .metrics
            .encode_text()
            .lines()
            .filter(|l| l.starts_with(
                "sluice_config_resource_updates_total{type=\"endpoints\",result=\"rejected\"} 1"
            ))
            .count(),
        1
    );
}

#[test]
fn a_route_to_a_cluster_not_yet_known_gets_a_handle_without_settings() {
    let mut w = writer();
    apply(&mut w, &config("127.0.0.1:1", "/"));
    let removal = Update {
        upserts: Vec::new(),
        removals: vec![(ResourceType::Cluster, "c".into())],
    };
    let applied = w.apply(removal);
    assert_eq!(applied.results[0].outcome, Ok(Change::Removed));
    let c = w.registry().get("c").unwrap();
    assert!(c.settings().is_none(), "routes to it now answer 503 NC");
    let applied = apply(&mut w, &config("127.0.0.1:1", "/"));
    assert!(applied.is_ok());
    assert!(
        w.registry().get("c").unwrap().settings().is_some(),
        "and recover when it returns"
    );
}

fn cluster_resource(name: &str) -> Resource {
    let mut c = config("127.0.0.1:1", "/").clusters.remove(0);
    c.name = name.to_string();
    c.endpoints.clear();
    Resource::Cluster(c)
}

#[test]
fn xds_cannot_replace_or_remove_static_resources_and_the_file_cannot_touch_xds_ones() {
    let mut w = writer();
    let file = config("127.0.0.1:1", "/");
    assert!(apply(&mut w, &file).is_ok());

    // xDS names a static cluster: rejected by name; its own cluster applies.
    let applied = w.apply_from(
        Origin::Xds,
        Update {
            upserts: vec![cluster_resource("c"), cluster_resource("x")],
            removals: vec![(ResourceType::Cluster, "d".into())],
        },
    );
    let rejected: Vec<String> = applied.rejected().map(ToString::to_string).collect();
    assert_eq!(
        rejected,
        [r#"cluster "c" rejected: a static resource (from the bootstrap file) has this name"#]
    );
    assert!(
        applied
            .results
            .iter()
            .any(|r| r.name == "d" && r.outcome == Ok(Change::Unchanged)),
        "xDS cannot remove a static resource"
    );
    assert!(
        w.resources()
            .contains_key(&(ResourceType::Cluster, "d".into()))
    );
    assert!(
        w.resources()
            .contains_key(&(ResourceType::Cluster, "x".into()))
    );

    // Discovered endpoints of xDS's cluster are xDS's.
    assert!(
        w.apply_from(
            Origin::Discovered,
            Update {
                upserts: vec![Resource::Endpoints(sluice_config::ClusterLoadAssignment {
                    cluster_name: "x".into(),
                    endpoints: Vec::new(),
                })],
                removals: Vec::new(),
            },
        )
        .is_ok()
    );
    let xds = w.resources_from(Origin::Xds);
    assert_eq!(
        xds.keys().cloned().collect::<Vec<_>>(),
        [
            (ResourceType::Cluster, "x".to_string()),
            (ResourceType::Endpoints, "x".to_string())
        ]
    );

    // The file's next version diffs against its own resources: xDS's stay.
    let next = config("127.0.0.1:2", "/");
    let update = sluice_config::diff(&w.resources_from(Origin::File), &next.resources());
    assert!(update.removals.is_empty(), "{update:?}");
    assert!(w.apply(update).is_ok());
    assert!(
        w.resources()
            .contains_key(&(ResourceType::Cluster, "x".into()))
    );

    // And the file may not take xDS's name.
    let applied = w.apply(Update {
        upserts: vec![cluster_resource("x")],
        removals: Vec::new(),
    });
    assert_eq!(
        applied
            .rejected()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        [r#"cluster "x" rejected: a dynamic resource (from xDS) has this name"#]
    );
}
