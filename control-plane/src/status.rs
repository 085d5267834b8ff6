//! What the server knows about each connected proxy, for the admin endpoint and
//! `sluice control-plane status` (like `istioctl proxy-status`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Which ADS variant a stream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// State of the world (`StreamAggregatedResources`).
    Sotw,
    /// Incremental (`DeltaAggregatedResources`).
    Delta,
}

/// One connected stream.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProxyStatus {
    /// The server's id for the stream (unique while the process lives).
    pub stream_id: u64,
    /// `node.id`.
    pub node_id: String,
    /// `node.cluster`.
    pub cluster: String,
    /// The cache key the node's snapshot comes from (`None` while there is none).
    pub snapshot_key: Option<String>,
    /// SotW or delta.
    pub protocol: Protocol,
    /// The SPIFFE ID the CA issues this stream's certificate for (`None`: no token, or no CA).
    pub identity: Option<String>,
    /// When the stream opened (milliseconds since the Unix epoch).
    pub connected_since_ms: u64,
    /// Per type (short name: `cluster`, `endpoint`, `listener`, `route`, `secret`, or the
    /// type URL for an unknown type).
    pub types: BTreeMap<String, TypeStatus>,
}

/// One type on one stream.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct TypeStatus {
    /// The version last sent (for delta: the response's `system_version_info`).
    pub sent_version: Option<String>,
    /// The nonce of the last response.
    pub sent_nonce: Option<String>,
    /// The last version the proxy ACKed.
    pub acked_version: Option<String>,
    /// The last NACK, if any (kept after later ACKs, so an operator sees what failed).
    pub last_nack: Option<Nack>,
    /// When the last response was sent (ms since the Unix epoch).
    pub last_push_ms: Option<u64>,
}

/// A rejected response.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Nack {
    /// The version the proxy rejected.
    pub version: String,
    /// `error_detail.message`.
    pub error: String,
    /// `error_detail.code`.
    pub code: i32,
    /// When (ms since the Unix epoch).
    pub at_ms: u64,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The status of every connected stream; cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct StatusBoard {
    streams: Arc<Mutex<HashMap<u64, ProxyStatus>>>,
    next_id: Arc<AtomicU64>,
}

impl StatusBoard {
    /// An empty board.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every connected stream, ordered by node id then stream id.
    pub fn status(&self) -> Vec<ProxyStatus> {
        let mut all: Vec<ProxyStatus> = self.lock().values().cloned().collect();
        all.sort_by(|a, b| (&a.node_id, a.stream_id).cmp(&(&b.node_id, b.stream_id)));
        all
    }

    /// The board as JSON (an array of [`ProxyStatus`]).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.status()).unwrap_or_else(|_| "[]".to_owned())
    }

    /// Adds a stream; the returned guard removes it when dropped.
    pub(crate) fn connect(&self, node_id: &str, cluster: &str, protocol: Protocol) -> StreamEntry {
        let stream_id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let status = ProxyStatus {
            stream_id,
            node_id: node_id.to_owned(),
            cluster: cluster.to_owned(),
            snapshot_key: None,
            protocol,
            identity: None,
            connected_since_ms: now_ms(),
            types: BTreeMap::new(),
        };
        self.lock().insert(stream_id, status);
        StreamEntry {
            board: self.clone(),
            stream_id,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, ProxyStatus>> {
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A stream's entry on the board; removed on drop.
#[derive(Debug)]
pub(crate) struct StreamEntry {
    board: StatusBoard,
    stream_id: u64,
}

impl StreamEntry {
    /// Edits the stream's status.
    pub(crate) fn update(&self, f: impl FnOnce(&mut ProxyStatus)) {
        if let Some(status) = self.board.lock().get_mut(&self.stream_id) {
            f(status);
        }
    }

    /// Edits one type's status.
    pub(crate) fn update_type(&self, type_url: &str, f: impl FnOnce(&mut TypeStatus)) {
        let key = type_key(type_url);
        self.update(|s| f(s.types.entry(key).or_default()));
    }
}

impl Drop for StreamEntry {
    fn drop(&mut self) {
        self.board.lock().remove(&self.stream_id);
    }
}

/// The key of a type in [`ProxyStatus::types`].
pub fn type_key(type_url: &str) -> String {
    match crate::snapshot::type_url::short_name(type_url) {
        "other" => type_url.to_owned(),
        short => short.to_owned(),
    }
}
