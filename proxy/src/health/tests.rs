//! Health checking: the threshold state machine, jitter bounds, the gRPC messages, and the
//! supervisor against real sockets (start, endpoint changes, health kept by address, stop).

use super::*;
use sluice_config::{ClusterLoadAssignment, Endpoint as ConfiguredEndpoint};
use std::time::Duration;

const T: Thresholds = Thresholds {
    healthy: 2,
    unhealthy: 3,
};

/// Feeds results to a tracker, flipping the endpoint's flag on each verdict as the probe task
/// does; returns the verdicts.
fn run(tracker: &mut Tracker, failed: &mut bool, results: &[bool]) -> Vec<Option<Verdict>> {
    results
        .iter()
        .map(|&ok| {
            let v = tracker.record(ok, *failed);
            match v {
                Some(Verdict::Healthy) => *failed = false,
                Some(Verdict::Unhealthy) => *failed = true,
                None => {}
            }
            v
        })
        .collect()
}

#[test]
fn a_pending_endpoint_comes_in_on_its_first_success() {
    let mut failed = true;
    let got = run(&mut Tracker::new(T), &mut failed, &[true]);
    assert_eq!(got, [Some(Verdict::Healthy)]);
}

#[test]
fn a_pending_endpoint_that_fails_first_needs_the_healthy_threshold() {
    let mut failed = true;
    let got = run(&mut Tracker::new(T), &mut failed, &[false, true, true]);
    assert_eq!(got, [None, None, Some(Verdict::Healthy)]);
}

#[test]
fn failures_mark_unhealthy_at_the_threshold_and_a_success_resets_the_count() {
    let mut failed = false;
    let mut t = Tracker::new(T);
    let got = run(
        &mut t,
        &mut failed,
        &[false, false, true, false, false, false],
    );
    assert_eq!(
        got,
        [None, None, None, None, None, Some(Verdict::Unhealthy)]
    );
    assert!(failed);
    // Further failures change nothing; successes must be consecutive to bring it back.
    let got = run(&mut t, &mut failed, &[false, true, false, true, true]);
    assert_eq!(got, [None, None, None, None, Some(Verdict::Healthy)]);
    assert!(!failed);
}

#[test]
fn thresholds_of_one_flip_on_every_change() {
    let mut failed = false;
    let one = Thresholds {
        healthy: 1,
        unhealthy: 1,
    };
    let got = run(
        &mut Tracker::new(one),
        &mut failed,
        &[true, false, false, true],
    );
    assert_eq!(
        got,
        [None, Some(Verdict::Unhealthy), None, Some(Verdict::Healthy)]
    );
}

#[test]
fn jitter_stays_within_the_interval_plus_or_minus_the_percentage() {
    let i = Duration::from_secs(10);
    assert_eq!(jittered(i, 10, 0.0), Duration::from_secs(9));
    assert_eq!(jittered(i, 10, 0.5), i);
    assert_eq!(jittered(i, 10, 1.0), Duration::from_secs(11));
    assert_eq!(jittered(i, 0, 0.9), i);
    for _ in 0..1000 {
        let d = jittered(i, 20, fastrand::f64());
        assert!(
            (Duration::from_secs(8)..=Duration::from_secs(12)).contains(&d),
            "{d:?}"
        );
    }
}

#[test]
fn the_request_message_is_a_length_prefixed_service_field() {
    assert_eq!(&grpc::encode_request("")[..], &[0, 0, 0, 0, 0]);
    assert_eq!(
        &grpc::encode_request("echo")[..],
        &[0, 0, 0, 0, 6, 0x0a, 4, b'e', b'c', b'h', b'o']
    );
    let long = "s".repeat(200);
    let m = grpc::encode_request(&long);
    // 200 needs a two-byte varint: 0xc8 0x01.
    assert_eq!(&m[..8], &[0, 0, 0, 0, 203, 0x0a, 0xc8, 0x01]);
}

#[test]
fn the_response_status_is_decoded_and_unknown_fields_skipped() {
    let serving = [0, 0, 0, 0, 2, 0x08, 0x01];
    assert_eq!(grpc::decode_response(&serving), Ok(grpc::SERVING));
    assert_eq!(grpc::decode_response(&[0, 0, 0, 0, 2, 0x08, 0x02]), Ok(2));
    // An empty message is the default status, UNKNOWN (0).
    assert_eq!(grpc::decode_response(&[0, 0, 0, 0, 0]), Ok(0));
    // Unknown fields of every wire type around the status.
    let msg = [
        0x12, 2, b'h', b'i', // field 2, bytes
        0x18, 0x96, 0x01, // field 3, varint 150
        0x21, 1, 2, 3, 4, 5, 6, 7, 8, // field 4, fixed64
        0x2d, 1, 2, 3, 4, // field 5, fixed32
        0x08, 0x01, // status SERVING
    ];
    let mut body = vec![0, 0, 0, 0, msg.len() as u8];
    body.extend_from_slice(&msg);
    assert_eq!(grpc::decode_response(&body), Ok(1));
}

#[test]
fn malformed_responses_are_errors_not_panics() {
    for bad in [
        &[][..],
        &[0, 0, 0],
        &[1, 0, 0, 0, 2, 0x08, 0x01],
        &[0, 0, 0, 0, 9, 0x08, 0x01],
        &[0, 0, 0, 0, 1, 0x08],
        &[0, 0, 0, 0, 2, 0x12, 5],
        &[0, 0, 0, 0, 1, 0x0b],
        &[
            0, 0, 0, 0, 11, 0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ],
    ] {
        assert!(grpc::decode_response(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn an_http_request_carries_the_host_and_path() {
    let r = http::request(false, "/healthz", "svc.local").unwrap();
    assert_eq!(r.uri(), "/healthz");
    assert_eq!(r.headers()["host"], "svc.local");
    let r = http::request(true, "/healthz", "svc.local:8080").unwrap();
    assert_eq!(r.uri(), "http://svc.local:8080/healthz");
    assert!(http::request(false, "/h", "bad\nhost").is_err());
    assert!(http::request(true, "/h", "bad host").is_err());
}

// The supervisor, with TCP checks against real sockets.

fn cluster(hc: Option<&str>) -> sluice_config::Cluster {
    let hc = hc
        .map(|h| format!("\n    health_checks: {h}"))
        .unwrap_or_default();
    sluice_config::parse(
        &format!("clusters:\n  - name: c\n    endpoints: [127.0.0.1:1]{hc}\n"),
        "t.yaml",
    )
    .unwrap()
    .clusters
    .remove(0)
}

const TCP: &str =
    "{ tcp: {}, interval: 20ms, timeout: 500ms, unhealthy_threshold: 2, healthy_threshold: 2 }";

fn cla(addrs: &[SocketAddr]) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: "c".into(),
        endpoints: addrs
            .iter()
            .map(|&address| ConfiguredEndpoint {
                address,
                weight: 1,
                zone: None,
            })
            .collect(),
    }
}

/// An address nothing listens on.
async fn closed_port() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

fn failed(r: &Registry, a: SocketAddr) -> bool {
    r.get("c")
        .unwrap()
        .endpoints()
        .get(a)
        .unwrap()
        .state
        .has(Health::FAILED_ACTIVE_HC)
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

struct Fixture {
    metrics: Arc<Metrics>,
    registry: Registry,
    supervisor: Supervisor,
}

impl Fixture {
    fn new() -> Self {
        let metrics = Arc::new(Metrics::new());
        Fixture {
            registry: Registry::new(Arc::clone(&metrics), 1),
            metrics,
            supervisor: Supervisor::default(),
        }
    }

    fn apply(&mut self, hc: Option<&str>, endpoints: &[SocketAddr]) {
        self.registry.set_settings(&cluster(hc)).unwrap();
        self.registry.set_endpoints(&cla(endpoints));
        self.supervisor.sync(&self.registry, &self.metrics);
    }

    fn checks(&self, result: &str) -> u64 {
        self.metrics
            .health_checks
            .get_or_create(&vec![("cluster", "c".into()), ("result", result.into())])
            .get()
    }
}

#[tokio::test]
async fn new_endpoints_are_pending_until_checked_and_a_dead_one_stays_out() {
    let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (live, dead) = (up.local_addr().unwrap(), closed_port().await);
    let mut f = Fixture::new();
    f.registry.set_settings(&cluster(Some(TCP))).unwrap();
    f.registry.set_endpoints(&cla(&[live, dead]));
    assert!(
        failed(&f.registry, live) && failed(&f.registry, dead),
        "pending before any check"
    );
    f.supervisor.sync(&f.registry, &f.metrics);
    until("the live endpoint is healthy", || {
        !failed(&f.registry, live)
    })
    .await;
    until("the dead one was checked twice", || {
        f.checks("failure") >= 2
    })
    .await;
    assert!(failed(&f.registry, dead));
    assert!(f.checks("success") >= 1);
}

#[tokio::test]
async fn a_killed_endpoint_leaves_after_the_threshold_and_returns_when_restarted() {
    let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = up.local_addr().unwrap();
    let mut f = Fixture::new();
    f.apply(Some(TCP), &[addr]);
    until("healthy", || !failed(&f.registry, addr)).await;
    drop(up);
    until("unhealthy", || failed(&f.registry, addr)).await;
    let changes = |h: &str| {
        f.metrics
            .health_changes
            .get_or_create(&vec![("cluster", "c".into()), ("health", h.into())])
            .get()
    };
    assert_eq!(changes("unhealthy"), 1);
    let _up = tokio::net::TcpListener::bind(addr).await.unwrap();
    until("healthy again", || !failed(&f.registry, addr)).await;
    assert_eq!(changes("healthy"), 2, "first check, then the return");
}

#[tokio::test]
async fn health_is_kept_for_endpoints_that_stay_and_new_ones_are_checked() {
    let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up2 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (live, dead, added) = (
        up.local_addr().unwrap(),
        closed_port().await,
        up2.local_addr().unwrap(),
    );
    let mut f = Fixture::new();
    f.apply(Some(TCP), &[live, dead]);
    until("live healthy", || !failed(&f.registry, live)).await;
    let state = Arc::clone(
        &f.registry
            .get("c")
            .unwrap()
            .endpoints()
            .get(dead)
            .unwrap()
            .state,
    );
    // A settings change that keeps the health checks and an endpoint update keeping both.
    let mut other = cluster(Some(TCP));
    other.pool.idle_timeout = sluice_config::Duration::from_secs(7);
    assert_eq!(
        f.registry.set_settings(&other).unwrap(),
        crate::cluster::Change::Updated
    );
    f.registry.set_endpoints(&cla(&[live, dead, added]));
    assert!(!failed(&f.registry, live), "kept healthy");
    assert!(failed(&f.registry, dead), "kept unhealthy");
    assert!(failed(&f.registry, added), "new: pending");
    f.supervisor.sync(&f.registry, &f.metrics);
    let kept = f.registry.get("c").unwrap().endpoints();
    assert!(Arc::ptr_eq(&kept.get(dead).unwrap().state, &state));
    until("added healthy", || !failed(&f.registry, added)).await;
    assert!(failed(&f.registry, dead));
    assert!(!failed(&f.registry, live));
}

#[tokio::test]
async fn removing_health_checks_clears_the_flags_and_stops_checking() {
    let dead = closed_port().await;
    let mut f = Fixture::new();
    f.apply(Some(TCP), &[dead]);
    until("checked", || f.checks("failure") >= 1).await;
    assert!(failed(&f.registry, dead));
    f.apply(None, &[dead]);
    assert!(!failed(&f.registry, dead), "flag cleared at once");
    let n = f.checks("failure");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(f.checks("failure"), n, "no more checks");
    assert!(!failed(&f.registry, dead));
}

#[tokio::test]
async fn enabling_checks_on_a_running_cluster_keeps_its_endpoints_in() {
    let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = up.local_addr().unwrap();
    let mut f = Fixture::new();
    f.apply(None, &[addr]);
    f.apply(Some(TCP), &[addr]);
    assert!(!failed(&f.registry, addr));
    until("checked", || f.checks("success") >= 2).await;
    assert!(!failed(&f.registry, addr));
}

#[tokio::test]
async fn changed_settings_restart_the_checker() {
    let dead = closed_port().await;
    let mut f = Fixture::new();
    f.apply(Some(TCP), &[dead]);
    until("checked", || f.checks("failure") >= 1).await;
    // A one-check threshold on a fresh tracker: still unhealthy, and checks go on.
    f.apply(
        Some("{ tcp: {}, interval: 20ms, unhealthy_threshold: 1 }"),
        &[dead],
    );
    assert!(failed(&f.registry, dead));
    let n = f.checks("failure");
    until("checked by the new checker", || f.checks("failure") > n + 1).await;
    assert_eq!(f.supervisor.checkers.len(), 1);
    assert_eq!(f.supervisor.checkers["c"].key.check.unhealthy_threshold, 1);
}

#[test]
fn the_no_traffic_interval_applies_until_the_cluster_sees_a_request() {
    let mut f = Fixture::new();
    f.registry
        .set_settings(&cluster(Some(
            "{ tcp: {}, interval: 1s, no_traffic_interval: 1m, interval_jitter_percent: 0 }",
        )))
        .unwrap();
    let handle = Arc::clone(f.registry.get("c").unwrap());
    let settings = handle.settings().unwrap();
    let key = Key {
        check: settings.config.health_checks.clone().unwrap(),
        protocol: settings.config.protocol,
        connect_timeout: settings.config.connect_timeout,
    };
    let spec = Spec::new(
        "c",
        &key,
        &handle,
        settings.transport.connector.clone(),
        &f.metrics,
    );
    assert_eq!(spec.next_wait(), Duration::from_secs(60));
    handle.metrics.requests.inc();
    assert_eq!(spec.next_wait(), Duration::from_secs(1));
}

#[tokio::test]
async fn an_address_removed_and_added_back_before_the_checker_looked_is_checked_afresh() {
    let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (live, other) = (up.local_addr().unwrap(), closed_port().await);
    let mut f = Fixture::new();
    f.apply(Some(TCP), &[live, other]);
    until("healthy", || !failed(&f.registry, live)).await;
    // Two updates with no await between them: the checker's task never sees the first.
    f.apply(Some(TCP), &[other]);
    f.apply(Some(TCP), &[live, other]);
    assert!(failed(&f.registry, live), "back as a new, pending endpoint");
    until("the new state is checked", || !failed(&f.registry, live)).await;
}

#[tokio::test]
async fn the_endpoint_gauge_counts_every_flag_and_forgets_removed_clusters() {
    let metrics = Arc::new(Metrics::new());
    let mut registry = Registry::new(Arc::clone(&metrics), 1);
    registry.set_settings(&cluster(None)).unwrap();
    registry.set_endpoints(&cla(&[closed_port().await, closed_port().await]));
    let handle = Arc::clone(registry.get("c").unwrap());
    handle.endpoints().endpoints[0]
        .state
        .set_unhealthy(Health::FAILED_OUTLIER);
    let mut clusters = HashMap::new();
    clusters.insert("c".to_string(), Arc::clone(&handle));
    update_endpoint_gauges(&metrics, &clusters);
    let text = metrics.encode_text();
    assert!(
        text.contains("sluice_cluster_endpoints{cluster=\"c\",health=\"healthy\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("sluice_cluster_endpoints{cluster=\"c\",health=\"unhealthy\"} 1"),
        "{text}"
    );
    update_endpoint_gauges(&metrics, &HashMap::new());
    assert!(!metrics.encode_text().contains("sluice_cluster_endpoints{"));
}

/// Checks run by one probe task in `virtual_secs` of paused time, against an address nothing
/// listens on (each check ends within its 1s timeout, whether refused or timed out).
async fn checks_in(hc: &str, virtual_secs: u64) -> u64 {
    let mut f = Fixture::new();
    f.registry.set_settings(&cluster(Some(hc))).unwrap();
    f.registry.set_endpoints(&cla(&[closed_port().await]));
    let handle = Arc::clone(f.registry.get("c").unwrap());
    let settings = handle.settings().unwrap();
    let key = Key {
        check: settings.config.health_checks.clone().unwrap(),
        protocol: settings.config.protocol,
        connect_timeout: settings.config.connect_timeout,
    };
    let spec = Arc::new(Spec::new(
        "c",
        &key,
        &handle,
        settings.transport.connector.clone(),
        &f.metrics,
    ));
    let endpoint = Arc::clone(&handle.endpoints().endpoints[0]);
    let task = AbortOnDrop(tokio::spawn(run_endpoint(endpoint, Arc::clone(&spec))));
    tokio::time::sleep(Duration::from_secs(virtual_secs)).await;
    drop(task);
    f.checks("success") + f.checks("failure") + f.checks("timeout")
}

#[tokio::test(start_paused = true)]
async fn checks_run_at_once_then_every_interval() {
    // At 0, 10, 20 and 30s, each taking at most its 1s timeout: four by 35s.
    let n = checks_in(
        "{ tcp: {}, interval: 10s, interval_jitter_percent: 0, timeout: 1s }",
        35,
    )
    .await;
    assert_eq!(n, 4);
}

#[tokio::test(start_paused = true)]
async fn jittered_waits_stay_within_their_bounds() {
    // Waits of 5s to 15s (10s ± 50%), plus at most 1s per check: between 200/16 and 200/5 + 1.
    let n = checks_in(
        "{ tcp: {}, interval: 10s, interval_jitter_percent: 50, timeout: 1s }",
        200,
    )
    .await;
    assert!((12..=41).contains(&n), "{n} checks");
}
