//! State-of-the-world ADS.

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::google::rpc::Status as RpcStatus;

use super::*;
use crate::snapshot::type_url::SECRET;

/// A request that always gets a response (a type nobody asked for yet on the stream): when
/// its response is the next message, nothing else was sent before it.
async fn probe(stream: &mut Sotw, names: &[&str]) -> DiscoveryResponse {
    stream.send(request(SECRET, names)).await;
    let response = stream.recv().await;
    assert_eq!(
        response.type_url, SECRET,
        "something was sent before the probe's answer"
    );
    response
}

#[tokio::test]
async fn ack_is_recorded_in_status_and_metrics() {
    let h = Harness::start().await;
    h.set("*", full("v1"));
    let mut s = h.sotw(first("n1", CLUSTER, &[])).await;
    let r = s.recv().await;
    assert_eq!(r.type_url, CLUSTER);
    assert_eq!(r.version_info, full("v1").version(CLUSTER));
    assert!(!r.nonce.is_empty());
    s.ack(&r, &[]).await;
    probe(&mut s, &["x"]).await;

    let status = h.server.status();
    assert_eq!(status.len(), 1);
    let p = &status[0];
    assert_eq!(p.node_id, "n1");
    assert_eq!(p.cluster, "test");
    assert_eq!(p.snapshot_key.as_deref(), Some("*"));
    let c = &p.types["cluster"];
    assert_eq!(c.acked_version.as_deref(), Some(r.version_info.as_str()));
    assert_eq!(c.sent_version.as_deref(), Some(r.version_info.as_str()));
    assert!(c.last_nack.is_none());
    assert!(c.last_push_ms.is_some());
    let mut registry = prometheus_client::registry::Registry::default();
    h.server.metrics().register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("sluice_xds_push_latency_seconds_count 1"),
        "{text}"
    );
    assert_eq!(h.server.metrics().connected_proxies.get(), 1);
    let json = h.server.status_board().to_json();
    assert!(json.contains("\"acked_version\""), "{json}");
}

#[tokio::test]
async fn nack_is_recorded_and_the_same_version_not_resent() {
    let h = Harness::start().await;
    h.set("*", full("v1"));
    let mut s = h.sotw(first("n1", CLUSTER, &[])).await;
    let v1 = s.recv().await;
    s.send(DiscoveryRequest {
        version_info: String::new(),
        response_nonce: v1.nonce.clone(),
        error_detail: Some(RpcStatus {
            code: 3,
            message: "cluster a: field lb_policy unsupported".to_owned(),
            details: vec![],
        }),
        ..request(CLUSTER, &[])
    })
    .await;
    // The rejected version is not sent again.
    probe(&mut s, &["x"]).await;
    let p = &h.server.status()[0];
    let nack = p.types["cluster"].last_nack.clone().unwrap();
    assert_eq!(nack.version, v1.version_info);
    assert_eq!(nack.error, "cluster a: field lb_policy unsupported");
    assert_eq!(nack.code, 3);
    assert_eq!(p.types["cluster"].acked_version, None);
    let nacks = h
        .server
        .metrics()
        .nacks
        .get_or_create(&vec![("type", "cluster")])
        .get();
    assert_eq!(nacks, 1);

    // A new snapshot is sent.
    h.set("*", full("v2"));
    let v2 = s.recv().await;
    assert_eq!(v2.type_url, CLUSTER);
    assert_eq!(v2.version_info, full("v2").version(CLUSTER));
    assert_ne!(v2.version_info, v1.version_info);
}

#[tokio::test]
async fn a_stale_nonce_is_ignored() {
    let h = Harness::start().await;
    h.set("*", full("v1"));
    let mut s = h.sotw(first("n1", ENDPOINT, &["a"])).await;
    let r1 = s.recv().await;
    assert_eq!(names(&r1), ["a"]);
    h.set("*", full("v22"));
    let r2 = s.recv().await;
    assert_ne!(r1.nonce, r2.nonce);
    // A request answering the older response (even with a new subscription) is ignored...
    s.send(DiscoveryRequest {
        version_info: r1.version_info.clone(),
        response_nonce: r1.nonce.clone(),
        ..request(ENDPOINT, &["a", "b"])
    })
    .await;
    probe(&mut s, &["x"]).await;
    assert_eq!(h.server.status()[0].types["endpoint"].acked_version, None);
    // ...while the same request with the latest nonce is answered.
    s.send(DiscoveryRequest {
        version_info: r2.version_info.clone(),
        response_nonce: r2.nonce.clone(),
        ..request(ENDPOINT, &["a", "b"])
    })
    .await;
    let r3 = s.recv().await;
    assert_eq!(names(&r3), ["a", "b"]);
}

#[tokio::test]
async fn lds_and_cds_wildcards_get_everything_eds_and_rds_only_subscribed_names() {
    let h = Harness::start().await;
    h.set("*", full("v1"));
    let mut s = h.sotw(first("n1", CLUSTER, &[])).await;
    assert_eq!(names(&s.recv().await), ["a", "b"]);
    s.send(request(LISTENER, &["*"])).await;
    assert_eq!(names(&s.recv().await), ["l1", "l2"]);
    s.send(request(ENDPOINT, &["b", "missing"])).await;
    assert_eq!(names(&s.recv().await), ["b"]);
    s.send(request(ROUTE, &["r1"])).await;
    assert_eq!(names(&s.recv().await), ["r1"]);
    // RDS with no names is not a wildcard.
    let mut t = h.sotw(first("n2", ROUTE, &[])).await;
    assert!(t.recv().await.resources.is_empty());
}

#[tokio::test]
async fn a_snapshot_change_reaches_two_clients() {
    let h = Harness::start().await;
    h.set("*", full("v1"));
    let mut a = h.sotw(first("a", CLUSTER, &[])).await;
    let mut b = h.sotw(first("b", CLUSTER, &[])).await;
    let (ra, rb) = (a.recv().await, b.recv().await);
    a.ack(&ra, &[]).await;
    b.ack(&rb, &[]).await;
    h.set("*", Snapshot::new().with(CLUSTER, [cluster("c", "v2")]));
    for s in [&mut a, &mut b] {
        let r = s.recv().await;
        assert_eq!(names(&r), ["c"]);
        assert_ne!(r.version_info, ra.version_info);
    }
}

#[tokio::test]
async fn pushes_go_clusters_endpoints_listeners_routes() {
    let h = Harness::start().await;
    h.set("*", full("v1"));
    // Subscribe in the "wrong" order.
    let mut s = h.sotw(first("n1", ROUTE, &["r1", "r2"])).await;
    let r = s.recv().await;
    s.ack(&r, &["r1", "r2"]).await;
    for (url, names) in [
        (LISTENER, &[][..]),
        (ENDPOINT, &["a", "b"][..]),
        (CLUSTER, &[][..]),
    ] {
        s.send(request(url, names)).await;
        let r = s.recv().await;
        assert_eq!(r.type_url, url);
        s.ack(&r, names).await;
    }
    h.set("*", full("v2"));
    let mut order = Vec::new();
    for _ in 0..4 {
        order.push(s.recv().await.type_url);
    }
    assert_eq!(order, [CLUSTER, ENDPOINT, LISTENER, ROUTE]);
}

#[tokio::test]
async fn only_changed_types_are_pushed() {
    let h = Harness::start().await;
    h.set("*", full("v1"));
    let mut s = h.sotw(first("n1", CLUSTER, &[])).await;
    let c = s.recv().await;
    s.ack(&c, &[]).await;
    s.send(request(LISTENER, &[])).await;
    let l = s.recv().await;
    s.ack(&l, &[]).await;
    // Same clusters, new listeners: only LDS goes out.
    let next = full("v1").with(LISTENER, [listener("l9", "v1")]);
    h.set("*", next);
    let r = s.recv().await;
    assert_eq!(r.type_url, LISTENER);
    assert_eq!(names(&r), ["l9"]);
    probe(&mut s, &["x"]).await;
}

#[tokio::test]
async fn a_reconnecting_proxy_with_the_current_version_is_not_resent_it() {
    let h = Harness::start().await;
    h.set("*", full("v1"));
    let mut s = h
        .sotw(DiscoveryRequest {
            version_info: full("v1").version(CLUSTER),
            ..first("n1", CLUSTER, &[])
        })
        .await;
    probe(&mut s, &["x"]).await;
    h.set("*", full("v2"));
    assert_eq!(s.recv().await.version_info, full("v2").version(CLUSTER));
}

#[tokio::test]
async fn node_id_snapshots_win_over_the_default() {
    let h = Harness::start().await;
    h.set("*", full("v1"));
    h.set(
        "special",
        Snapshot::new().with(CLUSTER, [cluster("s", "v1")]),
    );
    let mut s = h.sotw(first("special", CLUSTER, &[])).await;
    assert_eq!(names(&s.recv().await), ["s"]);
    let mut d = h.sotw(first("other", CLUSTER, &[])).await;
    assert_eq!(names(&d.recv().await), ["a", "b"]);
    // The node's own snapshot goes away: it falls back to the default.
    h.server.cache().clear("special");
    assert_eq!(names(&s.recv().await), ["a", "b"]);
}

#[tokio::test]
async fn the_first_request_must_carry_a_node() {
    let h = Harness::start().await;
    let (tx, rx) = mpsc::channel(1);
    tx.send(request(CLUSTER, &[])).await.unwrap();
    let err = h
        .client()
        .await
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("node"), "{}", err.message());
}

#[tokio::test]
async fn a_closed_stream_leaves_the_status_board() {
    let h = Harness::start().await;
    h.set("*", full("v1"));
    let mut s = h.sotw(first("n1", CLUSTER, &[])).await;
    s.recv().await;
    assert_eq!(h.server.status().len(), 1);
    drop(s);
    // The server notices the end of the stream; wait for it without sleeping blindly.
    tokio::time::timeout(FAILSAFE, async {
        while !h.server.status().is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    assert_eq!(h.server.metrics().connected_proxies.get(), 0);
}

#[tokio::test]
async fn stale_clusters_are_removed_last() {
    let h = Harness::start().await;
    h.set("*", full("v1"));
    let mut s = h.sotw(first("n1", CLUSTER, &[])).await;
    let r = s.recv().await;
    s.ack(&r, &[]).await;
    s.send(request(LISTENER, &[])).await;
    let r = s.recv().await;
    s.ack(&r, &[]).await;
    // Cluster b goes away while the listeners change: CDS keeps b until LDS went out.
    let next = Snapshot::new()
        .with(CLUSTER, [cluster("a", "v1"), cluster("c", "v2")])
        .with(LISTENER, [listener("l1", "v2")]);
    h.set("*", next.clone());
    let first_cds = s.recv().await;
    assert_eq!(first_cds.type_url, CLUSTER);
    let mut kept = names(&first_cds);
    kept.sort();
    assert_eq!(kept, ["a", "b", "c"]);
    assert_eq!(
        first_cds.version_info,
        format!("{}+stale", next.version(CLUSTER))
    );
    let lds = s.recv().await;
    assert_eq!(lds.type_url, LISTENER);
    let final_cds = s.recv().await;
    assert_eq!(final_cds.type_url, CLUSTER);
    assert_eq!(names(&final_cds), ["a", "c"]);
    assert_eq!(final_cds.version_info, next.version(CLUSTER));
    // The ACK of the intermediate response is stale; the final one counts.
    s.ack(&first_cds, &[]).await;
    s.ack(&final_cds, &[]).await;
    probe(&mut s, &["x"]).await;
    assert_eq!(
        h.server.status()[0].types["cluster"]
            .acked_version
            .as_deref(),
        Some(final_cds.version_info.as_str())
    );
}

#[tokio::test]
async fn a_removed_cluster_alone_is_removed_at_once() {
    let h = Harness::start().await;
    h.set("*", full("v1"));
    let mut s = h.sotw(first("n1", CLUSTER, &[])).await;
    let r = s.recv().await;
    s.ack(&r, &[]).await;
    h.set("*", full("v1").with(CLUSTER, [cluster("a", "v1")]));
    assert_eq!(names(&s.recv().await), ["a"]);
    probe(&mut s, &["x"]).await;
}

#[tokio::test]
async fn shutdown_ends_open_streams_with_unavailable() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = AdsServer::new(SnapshotCache::new());
    server.cache().set("*", full("v1"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(crate::serve_with_shutdown(
        listener,
        server.clone(),
        async {
            let _ = stopped.await;
        },
    ));
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(4);
    tx.send(first("n1", CLUSTER, &[])).await.unwrap();
    let mut responses = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert!(responses.message().await.unwrap().is_some());
    stop.send(()).unwrap();
    let err = responses.message().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    drop((tx, responses, client));
    tokio::time::timeout(FAILSAFE, serving)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn named_subscriptions_hear_only_about_their_own_resources() {
    let h = Harness::start().await;
    h.set("*", full("v1"));
    let mut s = h.sotw(first("n1", ENDPOINT, &["a"])).await;
    let r1 = s.recv().await;
    assert_eq!(
        r1.version_info,
        full("v1")
            .resources(ENDPOINT)
            .unwrap()
            .subset_version(&["a".to_owned()])
    );
    s.ack(&r1, &["a"]).await;
    // Only b's endpoints change: nothing for this stream.
    h.set(
        "*",
        full("v1").with(ENDPOINT, [endpoints("a", 167), endpoints("b", 1)]),
    );
    probe(&mut s, &["x"]).await;
    // a's change: sent.
    h.set(
        "*",
        full("v1").with(ENDPOINT, [endpoints("a", 2), endpoints("b", 1)]),
    );
    let r2 = s.recv().await;
    assert_eq!(r2.type_url, ENDPOINT);
    assert_ne!(r2.version_info, r1.version_info);
}
