//! The ADS client against a real tonic ADS server over loopback (a small hand-written one:
//! each stream is handed to the test, which reads the client's requests and sends responses).
//!
//! The decoder here is a TEST FIXTURE, not the real mapping (that lives in
//! `sluice_config::xds`): it turns an Envoy `Cluster` into an EDS cluster with the default
//! settings (name only) and a `ClusterLoadAssignment` into endpoints (address, port, weight);
//! every other type is an error.

use super::state::{AdsState, backoff, node};
use super::*;
use crate::listener::Reconciler;
use crate::metrics::Metrics;
use crate::state::{Live, Origin, Snapshot, Writer};
use envoy_types::pb::envoy::config::cluster::v3::Cluster as PbCluster;
use envoy_types::pb::envoy::config::core::v3::{
    Address, SocketAddress, address, node::UserAgentVersionType, socket_address::PortSpecifier,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment as PbCla, Endpoint as PbEndpoint, LbEndpoint, LocalityLbEndpoints,
    lb_endpoint::HostIdentifier,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::UInt32Value;
use envoy_types::util::pack_any;
use prost::{Message, Name};
use sluice_config::{ClusterLoadAssignment, Endpoint, Resource, ResourceType};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

// ---- the test decoder (fixture) -------------------------------------------------------------

pub(super) fn test_decode(type_url: &str, any: &Any) -> Result<Vec<Resource>, String> {
    match type_url {
        CLUSTER => {
            let c = PbCluster::decode(&*any.value).map_err(|e| e.to_string())?;
            // The file schema wants an endpoint; a cluster resource carries none.
            let yaml = format!(
                "clusters:\n  - {{ name: \"{}\", endpoints: [127.0.0.1:1] }}\n",
                c.name
            );
            let mut config = sluice_config::parse(&yaml, "xds").map_err(|e| e.to_string())?;
            let mut cluster = config.clusters.pop().ok_or("no cluster")?;
            cluster.endpoints.clear();
            Ok(vec![Resource::Cluster(cluster)])
        }
        ENDPOINT => {
            let cla = PbCla::decode(&*any.value).map_err(|e| e.to_string())?;
            let mut endpoints = Vec::new();
            for lb in cla.endpoints.iter().flat_map(|l| &l.lb_endpoints) {
                let Some(HostIdentifier::Endpoint(e)) = &lb.host_identifier else {
                    return Err("endpoint without address".into());
                };
                let Some(address::Address::SocketAddress(sa)) =
                    e.address.as_ref().and_then(|a| a.address.as_ref())
                else {
                    return Err("not a socket address".into());
                };
                let Some(PortSpecifier::PortValue(port)) = sa.port_specifier else {
                    return Err("no port".into());
                };
                let ip: std::net::IpAddr = sa.address.parse().map_err(|_| "bad ip")?;
                endpoints.push(Endpoint {
                    address: SocketAddr::new(ip, u16::try_from(port).map_err(|_| "bad port")?),
                    weight: lb.load_balancing_weight.as_ref().map_or(1, |w| w.value),
                    zone: None,
                });
            }
            Ok(vec![Resource::Endpoints(ClusterLoadAssignment {
                cluster_name: cla.cluster_name,
                endpoints,
            })])
        }
        other => Err(format!("the test decoder does not handle {other}")),
    }
}

pub(crate) fn cluster(name: &str) -> Any {
    pack_any(PbCluster {
        name: name.into(),
        ..PbCluster::default()
    })
}

/// A `ClusterLoadAssignment` with endpoints `(port on 127.0.0.1, weight)`.
pub(crate) fn cla(name: &str, endpoints: &[(u16, u32)]) -> Any {
    let lb_endpoints = endpoints
        .iter()
        .map(|(port, weight)| LbEndpoint {
            host_identifier: Some(HostIdentifier::Endpoint(PbEndpoint {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: "127.0.0.1".into(),
                        port_specifier: Some(PortSpecifier::PortValue(u32::from(*port))),
                        ..SocketAddress::default()
                    })),
                }),
                ..PbEndpoint::default()
            })),
            load_balancing_weight: Some(UInt32Value { value: *weight }),
            ..LbEndpoint::default()
        })
        .collect();
    pack_any(PbCla {
        cluster_name: name.into(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints,
            ..LocalityLbEndpoints::default()
        }],
        ..PbCla::default()
    })
}

pub(crate) fn response(
    type_url: &str,
    version: &str,
    nonce: &str,
    resources: Vec<Any>,
) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: version.into(),
        resources,
        type_url: type_url.into(),
        nonce: nonce.into(),
        ..DiscoveryResponse::default()
    }
}

// ---- the test ADS server --------------------------------------------------------------------

/// One ADS stream, as the server sees it.
pub(crate) struct Conn {
    requests: Streaming<DiscoveryRequest>,
    responses: mpsc::UnboundedSender<Result<DiscoveryResponse, Status>>,
}

impl Conn {
    pub(crate) async fn next(&mut self) -> DiscoveryRequest {
        self.requests
            .message()
            .await
            .expect("request stream failed")
            .expect("request stream ended")
    }

    pub(crate) fn send(&self, r: DiscoveryResponse) {
        self.responses.send(Ok(r)).expect("stream gone");
    }
}

struct Ads {
    conns: mpsc::UnboundedSender<Conn>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream =
        UnboundedReceiverStream<Result<DiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.conns.send(Conn {
            requests: request.into_inner(),
            responses: tx,
        });
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }

    type DeltaAggregatedResourcesStream =
        UnboundedReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented("delta"))
    }
}

/// Serves ADS on `listener`; every new stream arrives on the receiver.
fn serve(listener: tokio::net::TcpListener) -> mpsc::UnboundedReceiver<Conn> {
    let (conns, rx) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(Ads { conns }))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    rx
}

pub(crate) async fn server() -> (SocketAddr, mpsc::UnboundedReceiver<Conn>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (addr, serve(listener))
}

// ---- the client with a writer standing in for the control loop ------------------------------

pub(super) struct Harness {
    writer: Arc<Mutex<Writer>>,
    live: Arc<Live>,
    pub(super) ready: mpsc::UnboundedReceiver<bool>,
    pub(super) metrics: Arc<Metrics>,
}

impl Harness {
    /// Starts the client; its updates go to a writer as the control loop would apply them.
    pub(super) fn start(options: XdsOptions, (writer, live): (Writer, Arc<Live>)) -> Harness {
        let metrics = Arc::clone(&live.metrics);
        let writer = Arc::new(Mutex::new(writer));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (ready_tx, ready) = mpsc::unbounded_channel();
        tokio::spawn(run(options, tx, Arc::clone(&metrics)));
        let w = Arc::clone(&writer);
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                match event {
                    XdsEvent::Apply { update, reply } => {
                        let applied = w.lock().unwrap().apply_from(Origin::Xds, update);
                        let _ = reply.send(applied);
                    }
                    XdsEvent::Ready { timed_out, done } => {
                        let _ = ready_tx.send(timed_out);
                        let _ = done.send(());
                    }
                }
            }
        });
        Harness {
            writer,
            live,
            ready,
            metrics,
        }
    }

    pub(super) fn has(&self, kind: ResourceType, name: &str) -> bool {
        self.writer
            .lock()
            .unwrap()
            .resources()
            .contains_key(&(kind, name.to_string()))
    }

    /// The ports of a cluster's live endpoints (as the writer holds them).
    pub(super) fn endpoints(&self, name: &str) -> Vec<u16> {
        match self
            .writer
            .lock()
            .unwrap()
            .resources()
            .get(&(ResourceType::Endpoints, name.to_string()))
        {
            Some(Resource::Endpoints(e)) => e.endpoints.iter().map(|e| e.address.port()).collect(),
            _ => Vec::new(),
        }
    }
}

pub(super) fn writer() -> (Writer, Arc<Live>) {
    let live = Arc::new(Live::new(Snapshot::default(), Arc::new(Metrics::new())));
    let reconciler = Reconciler::new(Vec::new(), Duration::ZERO, Arc::new(Mutex::default()));
    let w = Writer::new(
        Arc::clone(&live),
        Default::default(),
        1,
        reconciler,
        Vec::new(),
    );
    (w, live)
}

pub(crate) fn options(addr: SocketAddr) -> XdsOptions {
    let mut o = XdsOptions::new(format!("http://{addr}"), "node-1", test_decode);
    o.cluster = "mesh".into();
    o.backoff_base = Duration::from_millis(1);
    o.backoff_max = Duration::from_millis(2);
    o
}

pub(crate) fn names(r: &DiscoveryRequest) -> Vec<&str> {
    r.resource_names.iter().map(String::as_str).collect()
}

/// Asserts `r` is the ACK of `type_url` at `version` for `nonce`.
pub(crate) fn assert_ack(r: &DiscoveryRequest, type_url: &str, version: &str, nonce: &str) {
    assert_eq!(r.type_url, type_url);
    assert_eq!(r.version_info, version, "{r:?}");
    assert_eq!(r.response_nonce, nonce);
    assert!(r.error_detail.is_none(), "unexpected NACK: {r:?}");
}

/// Connects, checks the initial subscriptions, and gets clusters `a`, `b` and endpoints for
/// `a` (port 1) accepted at version v1. Returns the stream.
async fn connected_with_a_and_b(conns: &mut mpsc::UnboundedReceiver<Conn>) -> Conn {
    let mut conn = conns.recv().await.unwrap();
    let cds = conn.next().await;
    assert_eq!(cds.type_url, CLUSTER);
    assert!(cds.resource_names.is_empty(), "CDS is a wildcard");
    let n = cds
        .node
        .as_ref()
        .expect("the first request carries the node");
    assert_eq!((n.id.as_str(), n.cluster.as_str()), ("node-1", "mesh"));
    assert_eq!(n.user_agent_name, "sluice");
    assert!(matches!(
        n.user_agent_version_type,
        Some(UserAgentVersionType::UserAgentVersion(_))
    ));
    let lds = conn.next().await;
    assert_eq!(lds.type_url, LISTENER);
    assert!(
        lds.node.is_none(),
        "only the first request carries the node"
    );

    conn.send(response(
        CLUSTER,
        "c1",
        "n1",
        vec![cluster("a"), cluster("b")],
    ));
    assert_ack(&conn.next().await, CLUSTER, "c1", "n1");
    let eds = conn.next().await;
    assert_eq!(eds.type_url, ENDPOINT);
    assert_eq!(names(&eds), ["a", "b"], "EDS follows the clusters");
    conn.send(response(ENDPOINT, "e1", "n2", vec![cla("a", &[(1, 1)])]));
    assert_ack(&conn.next().await, ENDPOINT, "e1", "n2");
    conn
}

// ---- tests ----------------------------------------------------------------------------------

#[test]
fn type_urls_are_the_protos() {
    assert_eq!(CLUSTER, PbCluster::type_url());
    assert_eq!(ENDPOINT, PbCla::type_url());
    assert_eq!(
        LISTENER,
        envoy_types::pb::envoy::config::listener::v3::Listener::type_url()
    );
    assert_eq!(
        ROUTE,
        envoy_types::pb::envoy::config::route::v3::RouteConfiguration::type_url()
    );
}

#[test]
fn xds_backoff_is_full_jitter_doubling_to_the_cap() {
    let base = Duration::from_millis(500);
    let max = Duration::from_secs(30);
    for _ in 0..200 {
        assert!(backoff(1, base, max) <= base);
        assert!(backoff(3, base, max) <= base * 4);
        assert!(backoff(40, base, max) <= max);
    }
    // Jitter: not always the cap.
    assert!((0..50).any(|_| backoff(10, base, max) < max));
}

#[test]
fn xds_reconnect_requests_carry_the_last_good_versions_and_no_nonce() {
    let mut s = AdsState::new(node("n", ""));
    let first = s.reconnect();
    assert_eq!(
        first
            .iter()
            .map(|r| r.type_url.as_str())
            .collect::<Vec<_>>(),
        [CLUSTER, LISTENER],
        "EDS and RDS wait for names"
    );
    assert!(first[0].node.is_some() && first[1].node.is_none());
}

#[tokio::test]
async fn xds_ack_applies_the_update_and_reports_ready_when_complete() {
    let (addr, mut conns) = server().await;
    let mut h = Harness::start(options(addr), writer());
    let conn = connected_with_a_and_b(&mut conns).await;
    let mut conn = conn;
    assert!(h.has(ResourceType::Cluster, "a") && h.has(ResourceType::Cluster, "b"));
    assert_eq!(h.endpoints("a"), [1]);
    assert_eq!(h.metrics.xds.connected.get(), 1);

    // LDS arrives, but `b`'s endpoints have not: not complete yet.
    conn.send(response(LISTENER, "l1", "n3", vec![]));
    assert_ack(&conn.next().await, LISTENER, "l1", "n3");
    assert!(h.ready.try_recv().is_err(), "b's endpoints are missing");

    conn.send(response(
        ENDPOINT,
        "e2",
        "n4",
        vec![cla("a", &[(1, 1)]), cla("b", &[(2, 1)])],
    ));
    assert_ack(&conn.next().await, ENDPOINT, "e2", "n4");
    assert_eq!(
        h.ready.try_recv(),
        Ok(false),
        "complete: ready, not timed out"
    );
    assert_eq!(h.endpoints("b"), [2]);
    let text = h.metrics.encode_text();
    assert!(
        text.contains(r#"sluice_xds_updates_total{type="endpoints",result="ack"} 2"#),
        "{text}"
    );
}

#[tokio::test]
async fn xds_nack_names_the_rejected_resource_and_keeps_the_last_good_config() {
    let (addr, mut conns) = server().await;
    let h = Harness::start(options(addr), writer());
    let mut conn = connected_with_a_and_b(&mut conns).await;
    let live = Arc::clone(&h.live);
    let handle = Arc::clone(&live.snapshot().clusters["a"]);
    assert_eq!(handle.endpoints().endpoints.len(), 1);

    // A weight-0 endpoint is invalid: NACK at the last good version, a's endpoints kept.
    conn.send(response(ENDPOINT, "e2", "n3", vec![cla("a", &[(5, 0)])]));
    let nack = conn.next().await;
    assert_eq!(nack.type_url, ENDPOINT);
    assert_eq!(nack.version_info, "e1", "the last good version");
    assert_eq!(nack.response_nonce, "n3");
    let status = nack.error_detail.expect("error_detail");
    assert_eq!(status.code, 3);
    assert!(
        status.message.starts_with(r#"endpoints "a" rejected: "#),
        "{}",
        status.message
    );
    assert_eq!(h.endpoints("a"), [1]);
    let served = handle.endpoints();
    assert_eq!(served.endpoints.len(), 1);
    assert_eq!(served.endpoints[0].address.port(), 1);

    // A decode error NACKs the whole response and applies nothing of it.
    let mut garbage = cluster("zzz");
    garbage.value = vec![0xff, 0xff, 0xff];
    conn.send(response(CLUSTER, "c2", "n4", vec![cluster("c"), garbage]));
    let nack = conn.next().await;
    assert_eq!(
        (nack.version_info.as_str(), nack.type_url.as_str()),
        ("c1", CLUSTER)
    );
    assert!(nack.error_detail.is_some());
    assert!(!h.has(ResourceType::Cluster, "c"), "nothing of it applied");

    // A complete CDS response without `b` removes it (and its endpoints subscription).
    conn.send(response(CLUSTER, "c3", "n5", vec![cluster("a")]));
    assert_ack(&conn.next().await, CLUSTER, "c3", "n5");
    let eds = conn.next().await;
    assert_eq!(names(&eds), ["a"]);
    assert_eq!(
        (eds.version_info.as_str(), eds.response_nonce.as_str()),
        ("e1", "n3")
    );
    assert!(!h.has(ResourceType::Cluster, "b"));
    assert!(h.has(ResourceType::Cluster, "a"));
    let text = h.metrics.encode_text();
    assert!(
        text.contains(r#"sluice_xds_updates_total{type="endpoints",result="nack"} 1"#)
            && text.contains(r#"sluice_xds_updates_total{type="cluster",result="nack"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn xds_reconnects_after_the_stream_drops_and_resends_the_last_good_versions() {
    let (addr, mut conns) = server().await;
    let h = Harness::start(options(addr), writer());
    let conn = connected_with_a_and_b(&mut conns).await;
    drop(conn); // the server ends the stream

    let mut conn = conns.recv().await.unwrap();
    let cds = conn.next().await;
    assert_eq!(cds.type_url, CLUSTER);
    assert!(cds.node.is_some(), "a new stream sends the node again");
    assert_eq!(cds.version_info, "c1");
    assert_eq!(cds.response_nonce, "", "nonces do not survive a stream");
    let eds = conn.next().await;
    assert_eq!(eds.type_url, ENDPOINT);
    assert_eq!(
        (eds.version_info.as_str(), names(&eds)),
        ("e1", vec!["a", "b"])
    );
    let lds = conn.next().await;
    assert_eq!(
        (lds.type_url.as_str(), lds.version_info.as_str()),
        (LISTENER, "")
    );
    // The last good config kept serving through the outage.
    assert!(h.has(ResourceType::Cluster, "a") && h.has(ResourceType::Cluster, "b"));
    assert_eq!(h.endpoints("a"), [1]);
    assert_eq!(h.metrics.xds.reconnects.get(), 1);

    // And the new stream works.
    conn.send(response(ENDPOINT, "e2", "m1", vec![cla("a", &[(3, 1)])]));
    assert_ack(&conn.next().await, ENDPOINT, "e2", "m1");
    assert_eq!(h.endpoints("a"), [3]);
}

#[tokio::test(start_paused = true)]
async fn xds_outage_at_start_is_ready_only_after_the_initial_fetch_timeout() {
    // A port with nothing listening (reserved, then released).
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut o = options(addr);
    o.backoff_base = Duration::from_millis(500);
    o.backoff_max = Duration::from_secs(1);
    let start = tokio::time::Instant::now();
    let mut h = Harness::start(o, writer());
    assert!(
        tokio::time::timeout(Duration::from_secs(14), h.ready.recv())
            .await
            .is_err(),
        "not ready before the initial fetch timeout"
    );
    assert_eq!(h.ready.recv().await, Some(true), "ready by timeout");
    assert!(start.elapsed() >= Duration::from_secs(15));
    assert!(h.metrics.xds.reconnects.get() >= 1);
    assert_eq!(h.metrics.xds.connected.get(), 0);

    // The server comes up: the client connects and applies the config.
    tokio::time::resume();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let mut conns = serve(listener);
    let mut conn = conns.recv().await.unwrap();
    assert_eq!(conn.next().await.type_url, CLUSTER);
    assert_eq!(conn.next().await.type_url, LISTENER);
    conn.send(response(CLUSTER, "c1", "n1", vec![cluster("a")]));
    assert_ack(&conn.next().await, CLUSTER, "c1", "n1");
    assert!(h.has(ResourceType::Cluster, "a"));
    assert!(h.ready.try_recv().is_err(), "readiness is reported once");
}

/// A second fixture decoder, for the protocol state alone: the `Any`'s bytes are a Sluice YAML
/// config, and its resources of the response's type are the decoded ones.
pub(super) fn yaml_decode(type_url: &str, any: &Any) -> Result<Vec<Resource>, String> {
    let text = std::str::from_utf8(&any.value).map_err(|e| e.to_string())?;
    let config = sluice_config::parse(text, "xds").map_err(|e| e.to_string())?;
    Ok(config
        .resources()
        .into_values()
        .filter(|r| super::state::type_url(r.kind()) == type_url)
        .collect())
}

pub(super) fn yaml_any(text: &str) -> Any {
    Any {
        type_url: String::new(),
        value: text.as_bytes().to_vec(),
    }
}

#[tokio::test]
async fn xds_listeners_subscribe_their_route_tables_and_unreferenced_ones_go() {
    let (mut w, _live) = writer();
    let mut s = AdsState::new(node("n", ""));
    let _ = s.reconnect();
    let step = |s: &mut AdsState, w: &mut Writer, r: DiscoveryResponse| {
        let prepared = s.prepare(&r, yaml_decode).expect("decodes");
        let applied = w.apply_from(Origin::Xds, prepared.update.clone());
        let finished = s.finish(prepared, &applied);
        if !finished.cleanup.is_empty() {
            assert!(w.apply_from(Origin::Xds, finished.cleanup).is_ok());
        }
        (finished.requests, finished.nack)
    };
    let listener = |table: &str| {
        format!(
            "listeners:\n  - {{ name: l, address: 127.0.0.1:0, http: {{ route_table: {table} }} }}\n\
             route_tables:\n  - {{ name: {table}, virtual_hosts: [] }}\n"
        )
    };
    let (requests, nack) = step(
        &mut s,
        &mut w,
        response(LISTENER, "l1", "n1", vec![yaml_any(&listener("t1"))]),
    );
    assert_eq!(nack, None);
    assert!(!s.complete(), "no CDS response yet");
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_ack(&requests[0], LISTENER, "l1", "n1");
    assert_eq!(
        (requests[1].type_url.as_str(), names(&requests[1])),
        (ROUTE, vec!["t1"])
    );
    let (requests, _) = step(
        &mut s,
        &mut w,
        response(ROUTE, "r1", "n2", vec![yaml_any(&listener("t1"))]),
    );
    assert_ack(&requests[0], ROUTE, "r1", "n2");
    assert!(
        w.resources()
            .contains_key(&(ResourceType::RouteTable, "t1".into()))
    );

    // The listener moves to t2: RDS re-subscribes and t1, no longer referenced, goes.
    let (requests, _) = step(
        &mut s,
        &mut w,
        response(LISTENER, "l2", "n3", vec![yaml_any(&listener("t2"))]),
    );
    assert_eq!(names(&requests[1]), ["t2"]);
    assert_eq!(requests[1].version_info, "r1");
    assert!(
        !w.resources()
            .contains_key(&(ResourceType::RouteTable, "t1".into()))
    );
    assert!(!s.complete(), "t2 not received, no CDS");
    let (_, _) = step(
        &mut s,
        &mut w,
        response(ROUTE, "r2", "n4", vec![yaml_any(&listener("t2"))]),
    );
    let (_, _) = step(&mut s, &mut w, response(CLUSTER, "c1", "n5", vec![]));
    assert!(s.complete());

    // An empty LDS response removes the listener and unsubscribes RDS (empty names).
    let (requests, _) = step(&mut s, &mut w, response(LISTENER, "l3", "n6", vec![]));
    assert!(
        !w.resources()
            .contains_key(&(ResourceType::Listener, "l".into()))
    );
    assert!(
        !w.resources()
            .contains_key(&(ResourceType::RouteTable, "t2".into()))
    );
    assert_eq!(requests[1].type_url, ROUTE);
    assert!(requests[1].resource_names.is_empty());
}

#[test]
fn xds_unknown_types_and_duplicate_names_are_nacked_whole() {
    let mut s = AdsState::new(node("n", ""));
    let _ = s.reconnect();
    let refused = s
        .prepare(
            &response("type.googleapis.com/x.Y", "1", "n1", vec![]),
            test_decode,
        )
        .expect_err("unknown type");
    assert_eq!(refused.kind, None);
    assert_eq!(refused.nack.type_url, "type.googleapis.com/x.Y");
    assert_eq!(refused.nack.response_nonce, "n1");
    assert_eq!(refused.nack.error_detail.map(|e| e.code), Some(3));

    let refused = s
        .prepare(
            &response(CLUSTER, "2", "n2", vec![cluster("a"), cluster("a")]),
            test_decode,
        )
        .expect_err("a name twice");
    assert_eq!(refused.kind, Some(ResourceType::Cluster));
    assert_eq!(refused.nack.version_info, "", "no good version yet");
    assert_eq!(refused.nack.response_nonce, "n2");
    assert_eq!(
        refused.nack.error_detail.map(|e| e.message),
        Some(r#"cluster "a" appears twice"#.to_string())
    );
    // An endpoints resource in a CDS response.
    let refused = s
        .prepare(
            &response(CLUSTER, "3", "n3", vec![cla("a", &[(1, 1)])]),
            |_, a| test_decode(ENDPOINT, a),
        )
        .expect_err("wrong type");
    assert!(
        refused.why == r#"cluster response holds endpoints "a""#,
        "{}",
        refused.why
    );
}

/// A self-signed certificate (PEM chain, PEM key), made once.
fn test_cert() -> &'static (String, String) {
    static CERT: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    CERT.get_or_init(|| {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["backend.example".to_string()]).unwrap();
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    })
}

/// YAML for listeners, route tables and clusters; for SDS, each `Any`'s value names a
/// certificate secret holding [`test_cert`] (a fixture: the real mapping is in
/// `sluice_config::xds`).
fn sds_decode(type_url: &str, any: &Any) -> Result<Vec<Resource>, String> {
    if type_url != SECRET {
        return yaml_decode(type_url, any);
    }
    let (cert_chain, key) = test_cert().clone();
    Ok(vec![Resource::Secret(sluice_config::Secret {
        name: String::from_utf8(any.value.clone()).map_err(|e| e.to_string())?,
        kind: sluice_config::SecretKind::Certificate {
            cert_chain,
            private_key: sluice_config::PrivateKeyPem(key),
        },
    })])
}

#[tokio::test]
async fn xds_tls_secrets_are_subscribed_by_what_the_listeners_name_and_go_with_them() {
    let (mut w, _live) = writer();
    let mut s = AdsState::new(node("n", ""));
    let _ = s.reconnect();
    let step = |s: &mut AdsState, w: &mut Writer, r: DiscoveryResponse| {
        let prepared = s.prepare(&r, sds_decode).expect("decodes");
        let applied = w.apply_from(Origin::Xds, prepared.update.clone());
        let finished = s.finish(prepared, &applied);
        if !finished.cleanup.is_empty() {
            assert!(w.apply_from(Origin::Xds, finished.cleanup).is_ok());
        }
        (finished.requests, finished.nack)
    };
    let listener = "listeners:\n  - name: l\n    address: 127.0.0.1:0\n    http: { route_table: t }\n    tls: { certificates: [{ secret: default }] }\nroute_tables:\n  - { name: t, virtual_hosts: [] }\n";
    let (_, _) = step(&mut s, &mut w, response(CLUSTER, "c1", "n0", vec![]));
    let (requests, nack) = step(
        &mut s,
        &mut w,
        response(LISTENER, "l1", "n1", vec![yaml_any(listener)]),
    );
    // Accepted while its certificate has not come (Envoy warms it the same way).
    assert_eq!(nack, None);
    assert_ack(&requests[0], LISTENER, "l1", "n1");
    let sds = requests
        .iter()
        .find(|r| r.type_url == SECRET)
        .unwrap_or_else(|| panic!("no SDS subscription in {requests:?}"));
    assert_eq!(names(sds), ["default"]);
    let (_, _) = step(
        &mut s,
        &mut w,
        response(ROUTE, "r1", "n2", vec![yaml_any(listener)]),
    );
    assert!(!s.complete(), "the secret has not come");

    let (requests, nack) = step(
        &mut s,
        &mut w,
        response(
            SECRET,
            "s1",
            "n3",
            vec![Any {
                type_url: String::new(),
                value: b"default".to_vec(),
            }],
        ),
    );
    assert_eq!(nack, None);
    assert_ack(&requests[0], SECRET, "s1", "n3");
    assert!(s.complete());
    assert!(
        w.resources()
            .contains_key(&(ResourceType::Secret, "default".into()))
    );

    // The listener goes: SDS unsubscribes and the secret goes with it.
    let (requests, _) = step(&mut s, &mut w, response(LISTENER, "l2", "n4", vec![]));
    let sds = requests
        .iter()
        .find(|r| r.type_url == SECRET)
        .unwrap_or_else(|| panic!("no SDS change in {requests:?}"));
    assert!(sds.resource_names.is_empty());
    assert!(
        !w.resources()
            .contains_key(&(ResourceType::Secret, "default".into()))
    );
}

#[test]
fn a_config_file_may_not_name_sds_secrets() {
    let (mut w, _live) = writer();
    let config = sluice_config::parse(
        "listeners:\n  - name: l\n    address: 127.0.0.1:0\n    http: { route_table: t }\n    tls: { certificates: [{ secret: default }] }\nroute_tables:\n  - { name: t, virtual_hosts: [] }\n",
        "f.yaml",
    )
    .unwrap();
    let applied = w.apply(sluice_config::Update {
        upserts: config.resources().into_values().collect(),
        removals: Vec::new(),
    });
    let why = applied
        .rejected()
        .map(ToString::to_string)
        .collect::<Vec<_>>();
    assert_eq!(why.len(), 1, "{why:?}");
    assert!(why[0].contains("names SDS secrets (default)"), "{why:?}");
}
