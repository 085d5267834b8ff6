//! The delta client against the real control plane (`sluice_control_plane::AdsServer` on
//! 127.0.0.1:0), through a relay that records every request and response in order and can cut
//! the stream. Resources are the SotW tests' fixtures (their decoder: clusters and endpoints;
//! listeners and route tables as Sluice YAML).

use super::tests::{Harness, cla, cluster, options, test_decode, writer, yaml_any, yaml_decode};
use super::*;
use envoy_types::pb::envoy::config::cluster::v3::Cluster as PbCluster;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment as PbCla, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::util::pack_any;
use sluice_config::{Resource, ResourceType};
use sluice_control_plane::{AdsServer, Snapshot, SnapshotCache};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// A failsafe only: every wait ends as soon as the awaited message arrives.
const FAILSAFE: Duration = Duration::from_secs(10);

/// Listeners and route tables as YAML, the rest as the SotW fixtures.
fn mixed_decode(type_url: &str, any: &Any) -> Result<Vec<Resource>, String> {
    match type_url {
        LISTENER | ROUTE => yaml_decode(type_url, any),
        _ => test_decode(type_url, any),
    }
}

/// What the relay saw, in order.
#[derive(Debug)]
enum Seen {
    Request(Box<DeltaDiscoveryRequest>),
    Response(Box<DeltaDiscoveryResponse>),
}

/// Forwards delta streams to the control plane, recording both directions.
struct Relay {
    upstream: String,
    seen: mpsc::UnboundedSender<Seen>,
    /// Ends the current stream with UNAVAILABLE.
    cut: Arc<Notify>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Relay {
    type StreamAggregatedResourcesStream =
        UnboundedReceiverStream<Result<DiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        _request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "the delta tests expect a delta stream",
        ))
    }

    type DeltaAggregatedResourcesStream =
        UnboundedReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let mut inbound = request.into_inner();
        let (up_tx, up_rx) = mpsc::unbounded_channel();
        let seen = self.seen.clone();
        tokio::spawn(async move {
            while let Ok(Some(r)) = inbound.message().await {
                let _ = seen.send(Seen::Request(Box::new(r.clone())));
                if up_tx.send(r).is_err() {
                    break;
                }
            }
        });
        let mut client = AggregatedDiscoveryServiceClient::connect(self.upstream.clone())
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let mut responses = client
            .delta_aggregated_resources(UnboundedReceiverStream::new(up_rx))
            .await?
            .into_inner();
        let (tx, rx) = mpsc::unbounded_channel();
        let seen = self.seen.clone();
        let cut = Arc::clone(&self.cut);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = cut.notified() => {
                        let _ = tx.send(Err(Status::unavailable("cut by the test")));
                        break;
                    }
                    r = responses.message() => match r {
                        Ok(Some(r)) => {
                            let _ = seen.send(Seen::Response(Box::new(r.clone())));
                            if tx.send(Ok(r)).is_err() {
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(status) => {
                            let _ = tx.send(Err(status));
                            break;
                        }
                    },
                }
            }
        });
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }
}

/// The control plane, the relay in front of it, and the delta client behind it.
struct Setup {
    server: AdsServer,
    cut: Arc<Notify>,
    seen: mpsc::UnboundedReceiver<Seen>,
    pending: VecDeque<Seen>,
    client: Harness,
}

impl Setup {
    async fn start(snapshot: Snapshot) -> Setup {
        let server = AdsServer::new(SnapshotCache::new());
        server.cache().set("*", snapshot);
        let cp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cp_addr = cp.local_addr().unwrap();
        tokio::spawn(sluice_control_plane::serve(cp, server.clone()));

        let (seen_tx, seen) = mpsc::unbounded_channel();
        let cut = Arc::new(Notify::new());
        let relay = Relay {
            upstream: format!("http://{cp_addr}"),
            seen: seen_tx,
            cut: Arc::clone(&cut),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AggregatedDiscoveryServiceServer::new(relay))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let mut o = options(addr);
        o.delta = true;
        o.decode = mixed_decode;
        Setup {
            server,
            cut,
            seen,
            pending: VecDeque::new(),
            client: Harness::start(o, writer()),
        }
    }

    fn set(&self, snapshot: Snapshot) {
        self.server.cache().set("*", snapshot);
    }

    /// The next recorded message `pick` takes (earlier ones it does not take stay queued).
    async fn next<T>(&mut self, pick: impl Fn(&Seen) -> bool, take: fn(Seen) -> Option<T>) -> T {
        if let Some(i) = self.pending.iter().position(&pick) {
            let seen = self.pending.remove(i).unwrap();
            return take(seen).unwrap();
        }
        loop {
            let seen = tokio::time::timeout(FAILSAFE, self.seen.recv())
                .await
                .expect("nothing in time")
                .expect("relay gone");
            if pick(&seen) {
                return take(seen).unwrap();
            }
            self.pending.push_back(seen);
        }
    }

    /// The client's next request of `type_url`.
    async fn request(&mut self, type_url: &str) -> DeltaDiscoveryRequest {
        self.next(
            |s| matches!(s, Seen::Request(r) if r.type_url == type_url),
            |s| match s {
                Seen::Request(r) => Some(*r),
                Seen::Response(_) => None,
            },
        )
        .await
    }

    /// The server's next response of `type_url`.
    async fn response(&mut self, type_url: &str) -> DeltaDiscoveryResponse {
        self.next(
            |s| matches!(s, Seen::Response(r) if r.type_url == type_url),
            take_response,
        )
        .await
    }

    /// The server's next response, whatever its type.
    async fn any_response(&mut self) -> DeltaDiscoveryResponse {
        self.next(|s| matches!(s, Seen::Response(_)), take_response)
            .await
    }

    /// Expects the ACK of `response`.
    async fn acked(&mut self, response: &DeltaDiscoveryResponse) {
        let ack = self.request(&response.type_url).await;
        assert_eq!(ack.response_nonce, response.nonce, "{ack:?}");
        assert!(ack.error_detail.is_none(), "unexpected NACK: {ack:?}");
        assert!(ack.resource_names_subscribe.is_empty() && ack.node.is_none());
    }

    /// The initial fetch of clusters `a`, `b` and their endpoints; returns the CDS and EDS
    /// responses.
    async fn initial(&mut self) -> [DeltaDiscoveryResponse; 2] {
        let cds = self.request(CLUSTER).await;
        assert!(cds.node.as_ref().is_some_and(|n| n.id == "node-1"));
        assert!(cds.resource_names_subscribe.is_empty(), "CDS is a wildcard");
        assert!(cds.initial_resource_versions.is_empty());
        let lds = self.request(LISTENER).await;
        assert!(
            lds.node.is_none(),
            "only the first request carries the node"
        );
        assert!(lds.resource_names_subscribe.is_empty(), "LDS is a wildcard");

        let r = self.response(CLUSTER).await;
        assert_eq!(names(&r), ["a", "b"]);
        self.acked(&r).await;
        let eds = self.request(ENDPOINT).await;
        assert_eq!(eds.resource_names_subscribe, ["a", "b"]);
        let e = self.response(ENDPOINT).await;
        assert_eq!(names(&e), ["a", "b"]);
        self.acked(&e).await;
        assert_eq!(self.client.endpoints("a"), [1]);
        assert_eq!(self.client.endpoints("b"), [2]);
        [r, e]
    }
}

fn take_response(s: Seen) -> Option<DeltaDiscoveryResponse> {
    match s {
        Seen::Response(r) => Some(*r),
        Seen::Request(_) => None,
    }
}

/// Name → version of a response's resources.
fn versions(r: &DeltaDiscoveryResponse) -> HashMap<String, String> {
    r.resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect()
}

fn names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
    r.resources.iter().map(|r| r.name.as_str()).collect()
}

/// A cluster whose bytes (so version) vary with `tag`; the fixture decoder reads the name only.
fn tagged_cluster(name: &str, tag: &str) -> Any {
    pack_any(PbCluster {
        name: name.into(),
        alt_stat_name: tag.into(),
        ..PbCluster::default()
    })
}

/// Clusters and their endpoints (one port each).
fn snapshot(clusters: &[(&str, Any)], endpoints: &[(&str, u16)]) -> Snapshot {
    Snapshot::new()
        .with(
            CLUSTER,
            clusters
                .iter()
                .map(|(n, any)| ((*n).to_string(), any.clone())),
        )
        .with(
            ENDPOINT,
            endpoints
                .iter()
                .map(|(n, port)| ((*n).to_string(), cla(n, &[(*port, 1)]))),
        )
}

fn two() -> Snapshot {
    snapshot(
        &[("a", cluster("a")), ("b", cluster("b"))],
        &[("a", 1), ("b", 2)],
    )
}

// ---- tests ----------------------------------------------------------------------------------

#[tokio::test]
async fn xds_delta_initial_wildcard_fetch_applies_acks_and_reports_ready() {
    let listener = "listeners:\n  - { name: l, address: 127.0.0.1:0, http: { route_table: t1 } }\n\
                    route_tables:\n  - { name: t1, virtual_hosts: [] }\n";
    let mut s = Setup::start(
        two()
            .with(LISTENER, [("l".to_string(), yaml_any(listener))])
            .with(ROUTE, [("t1".to_string(), yaml_any(listener))]),
    )
    .await;
    s.initial().await;
    let l = s.response(LISTENER).await;
    assert_eq!(names(&l), ["l"]);
    s.acked(&l).await;
    let rds = s.request(ROUTE).await;
    assert_eq!(
        rds.resource_names_subscribe,
        ["t1"],
        "RDS follows the listeners"
    );
    let r = s.response(ROUTE).await;
    assert_eq!(names(&r), ["t1"]);
    assert_eq!(s.client.ready.recv().await, Some(false), "complete: ready");
    s.acked(&r).await;
    for (kind, name) in [
        (ResourceType::Cluster, "a"),
        (ResourceType::Cluster, "b"),
        (ResourceType::Listener, "l"),
        (ResourceType::RouteTable, "t1"),
    ] {
        assert!(s.client.has(kind, name), "{kind} {name}");
    }
    let text = s.client.metrics.encode_text();
    assert!(
        text.contains(r#"sluice_xds_updates_total{type="cluster",result="ack"} 1"#),
        "{text}"
    );
    assert_eq!(s.client.metrics.xds.connected.get(), 1);

    // The listener goes: removed, its route table unsubscribed and dropped.
    s.set(two());
    let l = s.response(LISTENER).await;
    assert_eq!(l.removed_resources, ["l"]);
    s.acked(&l).await;
    let unsub = s.request(ROUTE).await;
    assert_eq!(unsub.resource_names_unsubscribe, ["t1"], "{unsub:?}");
    assert!(!s.client.has(ResourceType::Listener, "l"));
    assert!(!s.client.has(ResourceType::RouteTable, "t1"));
    assert!(s.client.has(ResourceType::Cluster, "a"));
}

#[tokio::test]
async fn xds_delta_changes_arrive_alone_and_removals_unsubscribe_endpoints() {
    let mut s = Setup::start(two()).await;
    s.initial().await;

    // a's cluster and endpoints change: only they are sent, and they apply.
    s.set(snapshot(
        &[("a", tagged_cluster("a", "v2")), ("b", cluster("b"))],
        &[("a", 3), ("b", 2)],
    ));
    let c = s.response(CLUSTER).await;
    assert_eq!(names(&c), ["a"], "only the changed cluster");
    assert!(c.removed_resources.is_empty());
    s.acked(&c).await;
    let e = s.response(ENDPOINT).await;
    assert_eq!(names(&e), ["a"], "only the changed endpoints");
    s.acked(&e).await;
    assert_eq!(s.client.endpoints("a"), [3]);
    assert_eq!(s.client.endpoints("b"), [2]);

    // b goes: removed with its endpoints, and its EDS name unsubscribed.
    s.set(snapshot(&[("a", tagged_cluster("a", "v2"))], &[("a", 3)]));
    let c = s.response(CLUSTER).await;
    assert!(c.resources.is_empty());
    assert_eq!(c.removed_resources, ["b"]);
    s.acked(&c).await;
    let unsub = s.request(ENDPOINT).await;
    assert_eq!(unsub.resource_names_unsubscribe, ["b"], "{unsub:?}");
    assert!(unsub.resource_names_subscribe.is_empty());
    assert!(unsub.response_nonce.is_empty());
    assert!(!s.client.has(ResourceType::Cluster, "b"));
    assert!(!s.client.has(ResourceType::Endpoints, "b"));
    assert!(s.client.has(ResourceType::Cluster, "a"));
    assert_eq!(s.client.endpoints("a"), [3]);
}

#[tokio::test]
async fn xds_delta_nack_keeps_the_last_good_resource() {
    let mut s = Setup::start(two()).await;
    s.initial().await;

    // a's endpoints become invalid (an endpoint without an address): NACK, a keeps port 1.
    let bad = pack_any(PbCla {
        cluster_name: "a".into(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: vec![LbEndpoint::default()],
            ..LocalityLbEndpoints::default()
        }],
        ..PbCla::default()
    });
    s.set(
        snapshot(&[("a", cluster("a")), ("b", cluster("b"))], &[("b", 2)]).with(
            ENDPOINT,
            [
                ("a".to_string(), bad),
                ("b".to_string(), cla("b", &[(2, 1)])),
            ],
        ),
    );
    let e = s.response(ENDPOINT).await;
    assert_eq!(names(&e), ["a"]);
    let nack = s.request(ENDPOINT).await;
    assert_eq!(nack.response_nonce, e.nonce);
    let status = nack.error_detail.expect("a NACK");
    assert_eq!(status.code, 3);
    assert!(
        status.message.contains("endpoint without address"),
        "{status:?}"
    );
    assert_eq!(s.client.endpoints("a"), [1], "the last good endpoints stay");
    let text = s.client.metrics.encode_text();
    assert!(text.contains(r#"result="nack"} 1"#), "{text}");

    // A good version after it applies.
    s.set(two().with(
        ENDPOINT,
        [
            ("a".to_string(), cla("a", &[(4, 1)])),
            ("b".to_string(), cla("b", &[(2, 1)])),
        ],
    ));
    let e = s.response(ENDPOINT).await;
    s.acked(&e).await;
    assert_eq!(s.client.endpoints("a"), [4]);
}

#[tokio::test]
async fn xds_delta_reconnect_sends_initial_versions_and_gets_nothing_unchanged() {
    let mut s = Setup::start(two()).await;
    let [clusters, endpoints] = s.initial().await;

    s.cut.notify_one();
    let cds = s.request(CLUSTER).await;
    assert!(cds.node.is_some(), "a new stream sends the node again");
    assert!(cds.response_nonce.is_empty());
    assert_eq!(cds.initial_resource_versions, versions(&clusters));
    let _lds = s.request(LISTENER).await;
    let eds = s.request(ENDPOINT).await;
    assert_eq!(eds.resource_names_subscribe, ["a", "b"]);
    assert_eq!(eds.initial_resource_versions, versions(&endpoints));
    assert_eq!(s.client.metrics.xds.reconnects.get(), 1);

    // Nothing unchanged comes back: the first response after the reconnection is the change.
    s.set(snapshot(
        &[("a", tagged_cluster("a", "v2")), ("b", cluster("b"))],
        &[("a", 1), ("b", 2)],
    ));
    let next = s.any_response().await;
    assert_eq!(next.type_url, CLUSTER, "{next:?}");
    assert_eq!(names(&next), ["a"]);
    s.acked(&next).await;
    assert!(s.client.has(ResourceType::Cluster, "b"));
    assert_eq!(s.client.endpoints("a"), [1]);
}
