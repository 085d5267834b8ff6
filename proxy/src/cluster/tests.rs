//! Registry tests: handles survive, endpoint state is kept by address, changes are reported.

use super::*;
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
    assert_eq!(r.set_settings(&cluster("c")), Change::Added);
    assert_eq!(r.set_settings(&cluster("c")), Change::Unchanged);
    assert_eq!(r.set_endpoints(&cla("c", &[1, 2])), Change::Added);
    assert_eq!(r.set_endpoints(&cla("c", &[1, 2])), Change::Unchanged);
    assert!(Arc::ptr_eq(&early, &r.handle("c")));
    assert_eq!(early.endpoints().endpoints.len(), 2);
    let mut slower = cluster("c");
    slower.connect_timeout = sluice_config::Duration::from_secs(5);
    assert_eq!(r.set_settings(&slower), Change::Updated);
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
    r.set_settings(&cluster("c"));
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
    r.set_settings(&cluster("kept"));
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
