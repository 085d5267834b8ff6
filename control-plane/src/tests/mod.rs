//! In-process tests: a real tonic ADS client against the server on 127.0.0.1:0.

mod ca;
mod delta;
mod sotw;

use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LocalityLbEndpoints};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

use crate::snapshot::type_url::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use crate::{AdsServer, Snapshot, SnapshotCache};

/// A failsafe only: every wait below ends as soon as the awaited message arrives.
const FAILSAFE: Duration = Duration::from_secs(10);

pub(super) struct Harness {
    pub(super) server: AdsServer,
    addr: SocketAddr,
}

impl Harness {
    pub(super) async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = AdsServer::new(SnapshotCache::new());
        tokio::spawn(crate::serve(listener, server.clone()));
        Self { server, addr }
    }

    pub(super) fn set(&self, key: &str, snapshot: Snapshot) {
        self.server.cache().set(key, snapshot);
    }

    pub(super) async fn client(&self) -> AggregatedDiscoveryServiceClient<Channel> {
        AggregatedDiscoveryServiceClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }

    /// Opens a SotW stream whose first request is `first`.
    pub(super) async fn sotw(&self, first: DiscoveryRequest) -> Sotw {
        let (tx, rx) = mpsc::channel(16);
        tx.send(first).await.unwrap();
        let response = self
            .client()
            .await
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap();
        Sotw {
            tx,
            rx: response.into_inner(),
        }
    }

    /// Opens a SotW stream presenting `token` (`authorization: Bearer`); the server's refusal
    /// as an error.
    pub(super) async fn sotw_with_token(
        &self,
        first: DiscoveryRequest,
        token: &str,
    ) -> Result<Sotw, tonic::Status> {
        let (tx, rx) = mpsc::channel(16);
        tx.send(first).await.unwrap();
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let response = self
            .client()
            .await
            .stream_aggregated_resources(request)
            .await?;
        Ok(Sotw {
            tx,
            rx: response.into_inner(),
        })
    }

    /// Opens a delta stream whose first request is `first`.
    pub(super) async fn delta(&self, first: DeltaDiscoveryRequest) -> Delta {
        let (tx, rx) = mpsc::channel(16);
        tx.send(first).await.unwrap();
        let response = self
            .client()
            .await
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap();
        Delta {
            tx,
            rx: response.into_inner(),
        }
    }
}

pub(super) struct Sotw {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
}

impl Sotw {
    pub(super) async fn send(&self, request: DiscoveryRequest) {
        self.tx.send(request).await.unwrap();
    }

    pub(super) async fn recv(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(FAILSAFE, self.rx.message())
            .await
            .expect("no response in time")
            .unwrap()
            .expect("stream ended")
    }

    /// ACKs `response`.
    pub(super) async fn ack(&self, response: &DiscoveryResponse, names: &[&str]) {
        self.send(DiscoveryRequest {
            version_info: response.version_info.clone(),
            response_nonce: response.nonce.clone(),
            ..request(&response.type_url, names)
        })
        .await;
    }
}

pub(super) struct Delta {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
}

impl Delta {
    pub(super) async fn send(&self, request: DeltaDiscoveryRequest) {
        self.tx.send(request).await.unwrap();
    }

    pub(super) async fn recv(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(FAILSAFE, self.rx.message())
            .await
            .expect("no response in time")
            .unwrap()
            .expect("stream ended")
    }

    pub(super) async fn ack(&self, response: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        })
        .await;
    }
}

pub(super) fn node(id: &str) -> Node {
    Node {
        id: id.to_owned(),
        cluster: "test".to_owned(),
        ..Default::default()
    }
}

/// A request for `type_url` with `names` (no node).
pub(super) fn request(type_url: &str, names: &[&str]) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: type_url.to_owned(),
        resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
        ..Default::default()
    }
}

/// The first request of a stream: `request` with a node.
pub(super) fn first(id: &str, type_url: &str, names: &[&str]) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(node(id)),
        ..request(type_url, names)
    }
}

pub(super) fn cluster(name: &str, tag: &str) -> (String, Any) {
    let c = Cluster {
        name: name.to_owned(),
        alt_stat_name: tag.to_owned(),
        ..Default::default()
    };
    (name.to_owned(), pack_any(c))
}

pub(super) fn endpoints(name: &str, priority: u32) -> (String, Any) {
    let cla = ClusterLoadAssignment {
        cluster_name: name.to_owned(),
        endpoints: vec![LocalityLbEndpoints {
            priority,
            ..Default::default()
        }],
        ..Default::default()
    };
    (name.to_owned(), pack_any(cla))
}

pub(super) fn listener(name: &str, tag: &str) -> (String, Any) {
    let l = Listener {
        name: name.to_owned(),
        stat_prefix: tag.to_owned(),
        ..Default::default()
    };
    (name.to_owned(), pack_any(l))
}

pub(super) fn route(name: &str, tag: &str) -> (String, Any) {
    let r = RouteConfiguration {
        name: name.to_owned(),
        internal_only_headers: vec![tag.to_owned()],
        ..Default::default()
    };
    (name.to_owned(), pack_any(r))
}

/// A snapshot of all four types; `tag` varies every resource's content.
pub(super) fn full(tag: &str) -> Snapshot {
    let priority = tag.bytes().map(u32::from).sum();
    Snapshot::new()
        .with(CLUSTER, [cluster("a", tag), cluster("b", tag)])
        .with(
            ENDPOINT,
            [endpoints("a", priority), endpoints("b", priority)],
        )
        .with(LISTENER, [listener("l1", tag), listener("l2", tag)])
        .with(ROUTE, [route("r1", tag), route("r2", tag)])
}

/// The names inside a SotW response (decoded by type).
pub(super) fn names(response: &DiscoveryResponse) -> Vec<String> {
    use prost::Message;
    response
        .resources
        .iter()
        .map(|any| match any.type_url.as_str() {
            CLUSTER => Cluster::decode(&*any.value).unwrap().name,
            ENDPOINT => {
                ClusterLoadAssignment::decode(&*any.value)
                    .unwrap()
                    .cluster_name
            }
            LISTENER => Listener::decode(&*any.value).unwrap().name,
            ROUTE => RouteConfiguration::decode(&*any.value).unwrap().name,
            other => panic!("unexpected type {other}"),
        })
        .collect()
}
