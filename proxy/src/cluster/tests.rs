//! Registry tests: handles survive, endpoint state is kept by address, changes are reported.

use super::*;
use crate::lb::PickContext;
use sluice_config::Endpoint as ConfiguredEndpoint;

fn registry() -> Registry {
    Registry::new(Arc::new(Metrics::new()), 2)
}

fn cluster(name: &str) -> config::Cluster {
    sluice_config::parse(
        &format!("clusters:\n  - {{ name: {name}, endpoints: [127.0.0.1:1] }}\n"),
        "t.yaml",
    )
    .unwrap()
    .clusters
    .remove(0)
}

fn cla(name: &str, ports: &[u16]) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: name.into(),
        endpoints: ports
            .iter()
            .map(|&p| ConfiguredEndpoint {
                address: SocketAddrV4(p),
                weight: 1,
                zone: None,
            })
            .collect(),
    }
}

#[allow(non_snake_case)]
fn SocketAddrV4(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

#[test]
fn a_handle_outlives_settings_and_endpoint_changes() {
    let mut r = registry();
    let early = r.handle("c");
    assert!(
        early.settings().is_none(),
        "known by name before it is configured"
    );
    assert_eq!(r.set_settings(&cluster("c")).unwrap(), Change::Added);
    assert_eq!(r.set_settings(&cluster("c")).unwrap(), Change::Unchanged);
    assert_eq!(r.set_endpoints(&cla("c", &[1, 2])), Change::Added);
    assert_eq!(r.set_endpoints(&cla("c", &[1, 2])), Change::Unchanged);
    assert!(Arc::ptr_eq(&early, &r.handle("c")));
    assert_eq!(early.endpoints().endpoints.len(), 2);
    let mut slower = cluster("c");
    slower.connect_timeout = sluice_config::Duration::from_secs(5);
    assert_eq!(r.set_settings(&slower).unwrap(), Change::Updated);
    assert_eq!(
        early.endpoints().endpoints.len(),
        2,
        "settings keep the endpoints"
    );
    assert_eq!(r.remove_settings("c"), Change::Removed);
    assert!(early.settings().is_none());
}

#[test]
fn endpoints_that_stay_keep_their_state() {
    let mut r = registry();
    r.set_settings(&cluster("c")).unwrap();
    r.set_endpoints(&cla("c", &[1, 2]));
    let before = r.handle("c").endpoints();
    let kept = Arc::clone(&before.get(SocketAddrV4(2)).unwrap().state);
    kept.set_unhealthy(Health::FAILED_OUTLIER);
    r.set_endpoints(&cla("c", &[2, 3]));
    let after = r.handle("c").endpoints();
    assert!(after.version > before.version);
    assert!(Arc::ptr_eq(
        &after.get(SocketAddrV4(2)).unwrap().state,
        &kept
    ));
    assert!(!after.get(SocketAddrV4(2)).unwrap().state.is_healthy());
    assert!(after.get(SocketAddrV4(1)).is_none());
    assert!(after.get(SocketAddrV4(3)).unwrap().state.is_healthy());
}

#[test]
fn unreferenced_unconfigured_handles_are_collected() {
    let mut r = registry();
    drop(r.handle("ghost"));
    r.set_settings(&cluster("kept")).unwrap();
    let held = r.handle("held");
    r.collect_garbage();
    assert!(r.get("ghost").is_none());
    assert!(r.get("kept").is_some());
    assert!(r.get("held").is_some());
    drop(held);
}

#[test]
fn active_requests_are_counted_per_endpoint() {
    let state = Arc::new(EndpointState::default());
    let a = state.admit();
    let b = state.admit();
    assert_eq!(state.active_requests(), 2);
    drop(a);
    drop(b);
    assert_eq!(state.active_requests(), 0);
}

#[test]
fn zones_and_balancing_settings_rebuild_the_set_and_the_local_zone_is_preferred() {
    let mut r = registry();
    r.set_zone(Some("a"));
    let metrics = Arc::clone(&r.metrics);
    r.set_settings(&cluster("c")).unwrap();
    let mut zoned = cla("c", &[1, 2, 3, 4, 5, 6]);
    for (i, e) in zoned.endpoints.iter_mut().enumerate() {
        e.zone = Some(if i < 2 { "a" } else { "b" }.into());
    }
    assert_eq!(r.set_endpoints(&zoned), Change::Added);
    assert_eq!(r.set_endpoints(&zoned), Change::Unchanged);
    // Only the local zone (ports 1 and 2) is picked, and the gauge says so.
    let set = r.handle("c").endpoints();
    for _ in 0..50 {
        let port = set.pick(&PickContext::default()).unwrap().address.port();
        assert!(port == 1 || port == 2, "{port}");
    }
    assert!(
        metrics
            .encode_text()
            .contains("sluice_upstream_lb_local_zone{cluster=\"c\"} 1")
    );
    // A zone change alone is a change.
    zoned.endpoints[0].zone = None;
    assert_eq!(r.set_endpoints(&zoned), Change::Updated);
    // A balancing setting change rebuilds the set (keeping the endpoints' state).
    let state = Arc::clone(&r.handle("c").endpoints().endpoints[1].state);
    let before = r.handle("c").endpoints().version;
    let mut hashed = cluster("c");
    hashed.lb_policy = sluice_config::LbPolicy::Maglev;
    assert_eq!(r.set_settings(&hashed).unwrap(), Change::Updated);
    let after = r.handle("c").endpoints();
    assert!(after.version > before);
    assert!(Arc::ptr_eq(&after.endpoints[1].state, &state));
    // One local endpoint left (of 1): 100% healthy, still local only.
    for _ in 0..50 {
        let ctx = PickContext {
            hash: Some(fastrand::u64(..)),
            ..PickContext::default()
        };
        assert_eq!(after.pick(&ctx).unwrap().address.port(), 2);
    }
}
