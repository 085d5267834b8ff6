//! The Aggregated Discovery Service: one gRPC stream per proxy carrying every resource type,
//! state of the world (`sotw.rs`) or incremental (`delta.rs`).
//!
//! Each stream is one task that owns the stream's state (per type: subscription, last nonce,
//! sent / ACKed versions) and waits on two things: the proxy's next request and a change of
//! the snapshot its node maps to ([`crate::cache::NodeWatch`]). Responses go out through a
//! small bounded channel, so a slow proxy slows only its own task.

mod delta;
mod sotw;

use std::pin::Pin;
use std::sync::Arc;
use tokio::time::Instant;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::cache::{NodeKey, SnapshotCache};
use crate::metrics::AdsMetrics;
use crate::status::{Protocol, ProxyStatus, StatusBoard, StreamEntry};

/// Responses queued per stream before the stream's task waits for the proxy to read.
const STREAM_QUEUE: usize = 16;

/// The ADS server: the snapshot cache it serves, the status board and the metrics. Cheap to
/// clone (everything inside is shared).
#[derive(Debug, Clone, Default)]
pub struct AdsServer {
    cache: SnapshotCache,
    status: StatusBoard,
    metrics: AdsMetrics,
    /// Set to true to end every open stream (shutdown).
    closing: Arc<watch::Sender<bool>>,
    /// The CA issuing certificates to streams that prove their identity.
    ca: Option<crate::ca::Ca>,
}

impl AdsServer {
    /// A server for `cache`, with its own status board and (unregistered) metrics.
    pub fn new(cache: SnapshotCache) -> Self {
        Self {
            cache,
            status: StatusBoard::new(),
            metrics: AdsMetrics::new(),
            closing: Arc::default(),
            ca: None,
        }
    }

    /// Issues certificates from `ca` (SDS secrets `default` and `ROOTCA`) to streams that
    /// present a token granting an identity.
    #[must_use]
    pub fn with_ca(mut self, ca: crate::ca::Ca) -> Self {
        self.ca = Some(ca);
        self
    }

    /// Uses `metrics` (e.g. already registered in the admin registry).
    #[must_use]
    pub fn with_metrics(mut self, metrics: AdsMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The snapshot cache (set snapshots here).
    pub fn cache(&self) -> &SnapshotCache {
        &self.cache
    }

    /// The CA, if one issues certificates.
    pub fn ca(&self) -> Option<&crate::ca::Ca> {
        self.ca.as_ref()
    }

    /// The metrics.
    pub fn metrics(&self) -> &AdsMetrics {
        &self.metrics
    }

    /// The status board (shared with the server; JSON via [`StatusBoard::to_json`]).
    pub fn status_board(&self) -> &StatusBoard {
        &self.status
    }

    /// Every connected stream's status.
    pub fn status(&self) -> Vec<ProxyStatus> {
        self.status.status()
    }

    /// Ends every open stream with UNAVAILABLE (so proxies reconnect, to this server once it
    /// serves again or to another one) and every stream opened later. Used at shutdown:
    /// tonic's graceful shutdown waits for open streams, which otherwise never end.
    pub fn close_streams(&self) {
        self.closing.send_replace(true);
    }

    /// The tonic service to add to a `Server` (message size limits raised to 64 MiB: a full
    /// snapshot of a large mesh is one message).
    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    /// What every stream task needs: the cache watch for its node, its status entry (which
    /// also counts it in the connected gauge) and the outbound channel.
    fn open<R>(
        &self,
        node: &Node,
        protocol: Protocol,
        token: Option<&str>,
    ) -> Result<Opened<R>, Status> {
        let key = NodeKey {
            id: node.id.clone(),
            cluster: node.cluster.clone(),
        };
        let identity = match &self.ca {
            None => None,
            Some(ca) => ca.authorize(token, &key).map_err(|r| {
                tracing::warn!(node = %node.id, refusal = ?r, "ADS stream refused: its token does not grant an identity to this node");
                match r {
                    crate::ca::Refusal::UnknownToken => {
                        Status::unauthenticated("the bootstrap token grants no identity")
                    }
                    crate::ca::Refusal::NodeNotAllowed { identity } => Status::permission_denied(
                        format!("node `{}` may not hold {identity}", node.id),
                    ),
                }
            })?,
        };
        let (identity, secrets) = match identity {
            Some((id, rx)) => (Some(id), Some(rx)),
            None => (None, None),
        };
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        self.metrics.connected_proxies.inc();
        let entry = self.status.connect(&node.id, &node.cluster, protocol);
        entry.update(|s| s.identity = identity);
        let stream = Stream {
            watch: self.cache.watch(&key).with_secrets(secrets),
            shared: Arc::new(Shared {
                entry,
                metrics: self.metrics.clone(),
            }),
            tx,
            next_nonce: 0,
            closing: self.closing.subscribe(),
        };
        Ok((stream, ReceiverStream::new(rx)))
    }
}

/// A stream's task state and the response stream tonic sends from.
type Opened<R> = (Stream<R>, ReceiverStream<Result<R, Status>>);

/// The parts of a stream task that outlive its loop's borrows.
#[derive(Debug)]
struct Shared {
    entry: StreamEntry,
    metrics: AdsMetrics,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.metrics.connected_proxies.dec();
    }
}

/// One stream's plumbing, generic over the response type.
#[derive(Debug)]
struct Stream<R> {
    watch: crate::cache::NodeWatch,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Result<R, Status>>,
    next_nonce: u64,
    closing: watch::Receiver<bool>,
}

impl<R> Stream<R> {
    fn nonce(&mut self) -> String {
        self.next_nonce += 1;
        self.next_nonce.to_string()
    }

    /// Records the cache key the node's snapshot now comes from.
    fn note_key(&self) {
        let key = self.watch.key().map(str::to_owned);
        self.shared.entry.update(|s| s.snapshot_key = key);
    }

    /// Sends a response; false when the proxy has gone.
    async fn send(&self, response: R) -> bool {
        self.tx.send(Ok(response)).await.is_ok()
    }
}

/// Resolves when the server closes its streams, after queueing the UNAVAILABLE status the
/// stream ends with. (A free function so it borrows only these two fields of a [`Stream`].)
async fn closed<R>(closing: &mut watch::Receiver<bool>, tx: &mpsc::Sender<Result<R, Status>>) {
    // An error means the server itself is gone: as good a reason to end.
    let _ = closing.wait_for(|closing| *closing).await;
    let _ = tx
        .send(Err(Status::unavailable(
            "the control plane is shutting down",
        )))
        .await;
}

/// What the SotW and delta stream states share: the snapshot they serve, and two handlers.
trait StreamState<Req, Resp> {
    /// Serve this snapshot from now on; `since` starts the push latency of what it causes.
    fn set_current(&mut self, current: Option<Arc<crate::cache::Published>>, since: Instant);
    /// Handles one request; false when the stream should end.
    async fn request(&mut self, stream: &mut Stream<Resp>, request: Req) -> bool;
    /// Pushes every type whose snapshot changed; false when the stream should end.
    async fn push_all(&mut self, stream: &mut Stream<Resp>) -> bool;
}

/// Runs one stream until the proxy goes away: the first request, then snapshot changes and
/// requests as they come.
async fn drive<Req, Resp, S: StreamState<Req, Resp>>(
    state: &mut S,
    mut stream: Stream<Resp>,
    first: Req,
    mut inbound: Streaming<Req>,
) {
    stream.note_key();
    if !state.request(&mut stream, first).await {
        return;
    }
    loop {
        // Biased: shutdown first, then snapshot changes, then requests, so a request that
        // arrives after a snapshot was set is answered from that snapshot.
        tokio::select! {
            biased;
            () = closed(&mut stream.closing, &stream.tx) => return,
            () = stream.watch.changed() => {
                let current = stream.watch.current();
                let since = current.as_ref().map_or_else(Instant::now, |p| p.set_at);
                state.set_current(current, since);
                stream.note_key();
                if !state.push_all(&mut stream).await {
                    return;
                }
            }
            message = inbound.message() => {
                let Ok(Some(request)) = message else { return };
                if !state.request(&mut stream, request).await {
                    return;
                }
            }
        }
    }
}

/// The node of a stream's first request, or the INVALID_ARGUMENT status the stream ends with.
fn first_node(node: Option<&Node>) -> Result<Node, Status> {
    match node {
        Some(node) if !node.id.is_empty() => Ok(node.clone()),
        Some(_) => Err(Status::invalid_argument("node.id is empty")),
        None => Err(Status::invalid_argument(
            "the first request of a stream must carry a node",
        )),
    }
}

/// What opening a stream yields: its task state, its first request, the rest of the
/// proxy's requests, and the response stream tonic sends from.
type Accepted<Req, Resp> = (
    Stream<Resp>,
    Req,
    Streaming<Req>,
    ReceiverStream<Result<Resp, Status>>,
);

impl AdsServer {
    /// Both flavours' opening: the token, the first request with its node, and the stream's
    /// state (or the status the stream ends with).
    async fn accept<Req, Resp>(
        &self,
        request: Request<Streaming<Req>>,
        protocol: Protocol,
        node_of: impl Fn(&Req) -> Option<&Node>,
    ) -> Result<Accepted<Req, Resp>, Status> {
        let token = bearer(request.metadata());
        let mut inbound = request.into_inner();
        let Some(first) = inbound.message().await? else {
            return Err(Status::invalid_argument(
                "the stream ended before a request",
            ));
        };
        let node = first_node(node_of(&first))?;
        let (stream, outbound) = self.open(&node, protocol, token.as_deref())?;
        Ok((stream, first, inbound, outbound))
    }
}

/// The bearer token of a stream (`authorization: Bearer TOKEN`).
fn bearer(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    let value = metadata.get("authorization")?.to_str().ok()?;
    value
        .strip_prefix("Bearer ")
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

type BoxStream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = BoxStream<DiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (stream, first, inbound, outbound) = self
            .accept(request, Protocol::Sotw, |r: &DiscoveryRequest| {
                r.node.as_ref()
            })
            .await?;
        tokio::spawn(sotw::run(stream, first, inbound));
        Ok(Response::new(Box::pin(outbound)))
    }

    type DeltaAggregatedResourcesStream = BoxStream<DeltaDiscoveryResponse>;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (stream, first, inbound, outbound) = self
            .accept(request, Protocol::Delta, |r: &DeltaDiscoveryRequest| {
                r.node.as_ref()
            })
            .await?;
        tokio::spawn(delta::run(stream, first, inbound));
        Ok(Response::new(Box::pin(outbound)))
    }
}
