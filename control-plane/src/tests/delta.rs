//! Incremental (delta) ADS.

use std::collections::HashMap;

use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use envoy_types::pb::google::rpc::Status as RpcStatus;

use super::*;
use crate::snapshot::type_url::SECRET;

fn sub(type_url: &str, subscribe: &[&str], unsubscribe: &[&str]) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url.to_owned(),
        resource_names_subscribe: subscribe.iter().map(|n| (*n).to_owned()).collect(),
        resource_names_unsubscribe: unsubscribe.iter().map(|n| (*n).to_owned()).collect(),
        ..Default::default()
    }
}

fn first(id: &str, type_url: &str, subscribe: &[&str]) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: Some(node(id)),
        ..sub(type_url, subscribe, &[])
    }
}

fn resource_names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
    r.resources.iter().map(|r| r.name.as_str()).collect()
}

/// Subscribing to a name that does not exist always gets an answer (its removal): when that
/// answer is the next message, nothing else was sent before it.
async fn probe(d: &mut Delta, name: &str) {
    d.send(sub(SECRET, &[name], &[])).await;
    let r = d.recv().await;
    assert_eq!(
        r.type_url, SECRET,
        "something was sent before the probe's answer"
    );
    assert_eq!(r.removed_resources, [name]);
}

#[tokio::test]
async fn wildcard_then_only_changes_and_removals() {
    let h = Harness::start().await;
    h.set("*", full("v1"));
    let mut d = h.delta(first("n1", CLUSTER, &[])).await;
    let r1 = d.recv().await;
    assert_eq!(resource_names(&r1), ["a", "b"]);
    assert!(r1.removed_resources.is_empty());
    assert_eq!(r1.system_version_info, full("v1").version(CLUSTER));
    assert!(
        r1.resources
            .iter()
            .all(|r| !r.version.is_empty() && r.resource.is_some())
    );
    d.ack(&r1).await;

    // b changes, a disappears, c appears: only b and c are sent, a is removed.
    h.set(
        "*",
        Snapshot::new().with(CLUSTER, [cluster("b", "v2"), cluster("c", "v2")]),
    );
    let r2 = d.recv().await;
    assert_eq!(resource_names(&r2), ["b", "c"]);
    assert_eq!(r2.removed_resources, ["a"]);
    d.ack(&r2).await;
    probe(&mut d, "p1").await;
    let p = &h.server.status()[0];
    assert_eq!(
        p.types["cluster"].acked_version.as_deref(),
        Some(r2.system_version_info.as_str())
    );

    // A snapshot change elsewhere sends nothing for clusters.
    h.set(
        "*",
        Snapshot::new()
            .with(CLUSTER, [cluster("b", "v2"), cluster("c", "v2")])
            .with(ROUTE, [route("r", "v3")]),
    );
    probe(&mut d, "p2").await;
}

#[tokio::test]
async fn explicit_subscribe_and_unsubscribe() {
    let h = Harness::start().await;
    h.set("*", full("v1"));
    let mut d = h.delta(first("n1", ENDPOINT, &["a"])).await;
    let r1 = d.recv().await;
    assert_eq!(resource_names(&r1), ["a"]);
    d.ack(&r1).await;
    // Subscribing adds only the new name (and says a missing one does not exist).
    d.send(sub(ENDPOINT, &["b", "nope"], &[])).await;
    let r2 = d.recv().await;
    assert_eq!(resource_names(&r2), ["b"]);
    assert_eq!(r2.removed_resources, ["nope"]);
    d.ack(&r2).await;
    // Unsubscribed names get no more updates.
    d.send(sub(ENDPOINT, &[], &["a"])).await;
    probe(&mut d, "p0").await;
    h.set("*", full("v2"));
    let r3 = d.recv().await;
    assert_eq!(resource_names(&r3), ["b"]);
    assert!(r3.removed_resources.is_empty());
    d.ack(&r3).await;
    probe(&mut d, "p").await;
    // Resubscribing sends it again.
    d.send(sub(ENDPOINT, &["a"], &[])).await;
    assert_eq!(resource_names(&d.recv().await), ["a"]);
}

#[tokio::test]
async fn initial_resource_versions_are_honoured() {
    let h = Harness::start().await;
    let snapshot = full("v1");
    h.set("*", snapshot.clone());
    let clusters = snapshot.resources(CLUSTER).unwrap();
    let mut initial = HashMap::new();
    // The proxy has a at the current version, b at an old one, and a cluster now gone.
    initial.insert("a".to_owned(), clusters.get("a").unwrap().version.clone());
    initial.insert("b".to_owned(), "old".to_owned());
    initial.insert("gone".to_owned(), "old".to_owned());
    let mut d = h
        .delta(DeltaDiscoveryRequest {
            initial_resource_versions: initial,
            ..first("n1", CLUSTER, &["*"])
        })
        .await;
    let r = d.recv().await;
    assert_eq!(resource_names(&r), ["b"]);
    assert_eq!(r.removed_resources, ["gone"]);
}

#[tokio::test]
async fn nack_is_recorded_and_not_resent_and_stale_nonces_still_subscribe() {
    let h = Harness::start().await;
    h.set("*", full("v1"));
    let mut d = h.delta(first("n1", ROUTE, &["r1"])).await;
    let r1 = d.recv().await;
    d.send(DeltaDiscoveryRequest {
        response_nonce: r1.nonce.clone(),
        error_detail: Some(RpcStatus {
            code: 3,
            message: "route r1: bad regex".to_owned(),
            details: vec![],
        }),
        ..sub(ROUTE, &[], &[])
    })
    .await;
    probe(&mut d, "p").await;
    let nack = h.server.status()[0].types["route"]
        .last_nack
        .clone()
        .unwrap();
    assert_eq!(nack.error, "route r1: bad regex");
    assert_eq!(nack.version, r1.system_version_info);
    // A stale nonce: the subscription change is honoured, the ACK is not counted.
    d.send(DeltaDiscoveryRequest {
        response_nonce: "stale".to_owned(),
        ..sub(ROUTE, &["r2"], &[])
    })
    .await;
    let r2 = d.recv().await;
    assert_eq!(resource_names(&r2), ["r2"]);
    assert_eq!(h.server.status()[0].types["route"].acked_version, None);
}

#[tokio::test]
async fn delta_pushes_in_order_and_requires_a_node() {
    let h = Harness::start().await;
    h.set("*", full("v1"));
    let mut d = h.delta(first("n1", ROUTE, &["*"])).await;
    d.recv().await;
    for url in [LISTENER, ENDPOINT, CLUSTER] {
        d.send(sub(url, &["*"], &[])).await;
        let r = d.recv().await;
        assert_eq!(r.type_url, url);
        d.ack(&r).await;
    }
    h.set("*", full("v2"));
    let mut order = Vec::new();
    for _ in 0..4 {
        order.push(d.recv().await.type_url);
    }
    assert_eq!(order, [CLUSTER, ENDPOINT, LISTENER, ROUTE]);

    let (tx, rx) = mpsc::channel(1);
    tx.send(sub(CLUSTER, &[], &[])).await.unwrap();
    let err = h
        .client()
        .await
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn removed_clusters_go_last() {
    let h = Harness::start().await;
    h.set("*", full("v1"));
    let mut d = h.delta(first("n1", CLUSTER, &["*"])).await;
    let r = d.recv().await;
    d.ack(&r).await;
    for url in [ENDPOINT, LISTENER] {
        d.send(sub(url, &["*"], &[])).await;
        let r = d.recv().await;
        d.ack(&r).await;
    }
    // Cluster b and its endpoints go away while the listeners change.
    h.set(
        "*",
        Snapshot::new()
            .with(CLUSTER, [cluster("a", "v1"), cluster("c", "v2")])
            .with(ENDPOINT, [endpoints("a", 1), endpoints("c", 1)])
            .with(LISTENER, [listener("l1", "v2")]),
    );
    let mut seen = Vec::new();
    for _ in 0..5 {
        let r = d.recv().await;
        seen.push((
            r.type_url.clone(),
            resource_names(&r).join(","),
            r.removed_resources.join(","),
        ));
    }
    let s = |t: &str, n: &str, r: &str| (t.to_owned(), n.to_owned(), r.to_owned());
    assert_eq!(
        seen,
        [
            s(CLUSTER, "c", ""),
            s(ENDPOINT, "a,c", ""),
            s(LISTENER, "l1", "l2"),
            s(CLUSTER, "", "b"),
            s(ENDPOINT, "", "b"),
        ]
    );
}
