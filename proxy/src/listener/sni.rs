//! TLS passthrough (Envoy's `tls_inspector` listener filter and `server_names` filter chain
//! match): reads the client's first TLS record, finds the server name (SNI) and ALPN list in the
//! ClientHello without terminating TLS, and picks the cluster for the connection. The bytes read
//! are forwarded to the upstream first, unchanged, so the TLS session is the client's and the
//! upstream's.
//!
//! Only a ClientHello that fits in its first record is read (a record holds up to 16 KiB, which
//! every common client's ClientHello does, post-quantum key shares included); a ClientHello
//! split across records is treated as one without SNI (`malformed`), and goes to the default
//! cluster.

use crate::cluster::{ClusterHandle, Registry};
use crate::metrics::{Metrics, SniCounters};
use prometheus_client::metrics::counter::Counter;
use sluice_config as config;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// TLS record content type of handshake messages.
const HANDSHAKE: u8 = 0x16;
/// Handshake message type of a ClientHello.
const CLIENT_HELLO: u8 = 1;
/// Largest TLS plaintext record body (RFC 8446 §5.1).
const MAX_RECORD_BODY: usize = 1 << 14;
/// Largest first record, header included: the most the inspector reads.
pub(crate) const MAX_RECORD: usize = 5 + MAX_RECORD_BODY;
/// `server_name` extension (RFC 6066 §3).
const EXT_SERVER_NAME: u16 = 0;
/// `application_layer_protocol_negotiation` extension (RFC 7301).
const EXT_ALPN: u16 = 16;

/// What the first bytes of a connection are.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Inspected {
    /// Too few bytes to tell yet.
    Incomplete,
    /// Not a TLS handshake record.
    NotTls,
    /// A TLS handshake record that holds no readable ClientHello (malformed, not a ClientHello,
    /// or a ClientHello split across records).
    Malformed,
    /// A ClientHello.
    Hello(ClientHello),
}

/// What the inspector reads from a ClientHello.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ClientHello {
    /// The `host_name` of the `server_name` extension, lower-cased, one trailing dot removed.
    pub(crate) server_name: Option<String>,
    /// The ALPN protocols offered, in the client's order.
    pub(crate) alpn: Vec<Vec<u8>>,
}

/// Inspects the bytes a connection sent so far. Never panics; decides as early as it can (the
/// first byte tells a non-TLS client).
pub(crate) fn inspect(buf: &[u8]) -> Inspected {
    let Some(&first) = buf.first() else {
        return Inspected::Incomplete;
    };
    if first != HANDSHAKE {
        return Inspected::NotTls;
    }
    // Legacy record version: 3.x (SSL 3.0 to TLS 1.3 all write 0x03 here).
    match buf.get(1) {
        None => return Inspected::Incomplete,
        Some(3) => {}
        Some(_) => return Inspected::NotTls,
    }
    let Some(&[_, _, _, hi, lo]) = buf.get(..5) else {
        return Inspected::Incomplete;
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if len == 0 || len > MAX_RECORD_BODY {
        return Inspected::Malformed;
    }
    if buf.get(5).is_some_and(|&t| t != CLIENT_HELLO) {
        return Inspected::Malformed;
    }
    let Some(body) = buf.get(5..5 + len) else {
        return Inspected::Incomplete;
    };
    match parse_handshake(body) {
        Some(hello) => Inspected::Hello(hello),
        None => Inspected::Malformed,
    }
}

/// A cursor over big-endian TLS fields; every read checks its bounds.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.bytes(1)?.first().copied()
    }
    fn u16(&mut self) -> Option<u16> {
        let b = self.bytes(2)?;
        Some(u16::from_be_bytes([*b.first()?, *b.get(1)?]))
    }
    fn u24(&mut self) -> Option<usize> {
        let b = self.bytes(3)?;
        Some(
            usize::from(*b.first()?) << 16 | usize::from(*b.get(1)?) << 8 | usize::from(*b.get(2)?),
        )
    }
    /// A vector with a one-byte length.
    fn vec8(&mut self) -> Option<Reader<'a>> {
        let n = usize::from(self.u8()?);
        Some(Reader(self.bytes(n)?))
    }
    /// A vector with a two-byte length.
    fn vec16(&mut self) -> Option<Reader<'a>> {
        let n = usize::from(self.u16()?);
        Some(Reader(self.bytes(n)?))
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Parses a handshake message that must be a whole ClientHello (RFC 8446 §4.1.2).
fn parse_handshake(record: &[u8]) -> Option<ClientHello> {
    let mut r = Reader(record);
    if r.u8()? != CLIENT_HELLO {
        return None;
    }
    let len = r.u24()?;
    // Shorter than its length: the rest is in later records (not read; see the module docs).
    let mut body = Reader(r.bytes(len)?);
    let _legacy_version = body.u16()?;
    let _random = body.bytes(32)?;
    let session_id = body.vec8()?;
    if session_id.0.len() > 32 {
        return None;
    }
    let suites = body.vec16()?;
    if suites.0.is_empty() || suites.0.len() % 2 != 0 {
        return None;
    }
    if body.vec8()?.is_empty() {
        return None;
    }
    let mut hello = ClientHello::default();
    if body.is_empty() {
        // No extensions (SSL 3.0-style hello): no SNI.
        return Some(hello);
    }
    let mut extensions = body.vec16()?;
    if !body.is_empty() {
        return None;
    }
    let mut seen_sni = false;
    let mut seen_alpn = false;
    while !extensions.is_empty() {
        let kind = extensions.u16()?;
        let mut data = extensions.vec16()?;
        match kind {
            EXT_SERVER_NAME => {
                if std::mem::replace(&mut seen_sni, true) {
                    return None;
                }
                hello.server_name = server_name(&mut data)?;
            }
            EXT_ALPN => {
                if std::mem::replace(&mut seen_alpn, true) {
                    return None;
                }
                let mut list = data.vec16()?;
                if !data.is_empty() {
                    return None;
                }
                while !list.is_empty() {
                    let proto = list.vec8()?;
                    if proto.is_empty() {
                        return None;
                    }
                    hello.alpn.push(proto.0.to_vec());
                }
            }
            _ => {}
        }
    }
    Some(hello)
}

/// The `host_name` of a `server_name` extension body: `None` inside when it names none, `None`
/// outside when the extension is malformed or the name is not a host name.
fn server_name(data: &mut Reader<'_>) -> Option<Option<String>> {
    let mut list = data.vec16()?;
    if !data.is_empty() {
        return None;
    }
    let mut found = None;
    while !list.is_empty() {
        let kind = list.u8()?;
        let name = list.vec16()?;
        // Only `host_name` (0) is defined; RFC 6066 allows one name of each type.
        if kind == 0 && found.is_none() {
            found = Some(host_name(name.0)?);
        }
    }
    Some(found)
}

/// A host name as SNI carries it (ASCII, no trailing dot per RFC 6066, tolerated), lower-cased.
fn host_name(raw: &[u8]) -> Option<String> {
    let raw = raw.strip_suffix(b".").unwrap_or(raw);
    let ok = !raw.is_empty()
        && raw.len() <= 253
        && raw
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    ok.then(|| String::from_utf8_lossy(raw).to_ascii_lowercase())
}

/// Why a connection went to the default cluster or was closed (the `reason` label of
/// `sluice_tcp_sni_unmatched_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unmatched {
    /// A ClientHello without a server name.
    NoSni,
    /// A server name no route lists.
    NoMatch,
    /// The first bytes were not TLS.
    NotTls,
    /// A TLS record without a readable ClientHello (or one split across records).
    Malformed,
    /// No decision within `tls_inspector_timeout`.
    Timeout,
    /// The client closed before sending a byte, or its connection failed before a decision
    /// (always closed, never forwarded).
    ClientClosed,
}

impl Unmatched {
    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Unmatched::NoSni => "no_sni",
            Unmatched::NoMatch => "no_match",
            Unmatched::NotTls => "not_tls",
            Unmatched::Malformed => "malformed",
            Unmatched::Timeout => "timeout",
            Unmatched::ClientClosed => "client_closed",
        }
    }
}

/// A server-name route, compiled.
#[derive(Debug)]
struct Route {
    cluster: Arc<ClusterHandle>,
    /// `sluice_tcp_sni_routed_total{listener, cluster}`.
    routed: Counter,
}

/// A listener's compiled SNI routes.
#[derive(Debug)]
pub struct SniRoutes {
    /// Exact names, lower-cased.
    exact: HashMap<String, Arc<Route>>,
    /// Wildcards by suffix, lower-cased, with the leading dot (`*.a.com` → `.a.com`).
    wildcard: HashMap<String, Arc<Route>>,
    /// `tls_inspector_timeout`.
    pub(crate) timeout: Duration,
    counters: SniCounters,
}

impl SniRoutes {
    /// Compiles a TCP listener's `sni` routes; `None` when it has none.
    pub(crate) fn compile(
        listener: &str,
        t: &config::TcpListener,
        clusters: &mut Registry,
        metrics: &Metrics,
    ) -> Option<SniRoutes> {
        if t.sni.is_empty() {
            return None;
        }
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for r in &t.sni {
            let route = Arc::new(Route {
                cluster: clusters.handle(&r.cluster),
                routed: metrics.sni.routed(listener, &r.cluster),
            });
            for name in &r.server_names {
                let name = name.to_ascii_lowercase();
                // Validation rejects duplicates; the first route keeps a name regardless.
                match name.strip_prefix('*') {
                    Some(suffix) => wildcard
                        .entry(suffix.to_string())
                        .or_insert_with(|| Arc::clone(&route)),
                    None => exact.entry(name).or_insert_with(|| Arc::clone(&route)),
                };
            }
        }
        let action = if t.cluster.is_some() {
            "default"
        } else {
            "closed"
        };
        Some(SniRoutes {
            exact,
            wildcard,
            timeout: t.tls_inspector_timeout.get(),
            counters: metrics.sni.unmatched(listener, action),
        })
    }

    /// The cluster for a server name (already lower-cased): the exact name, else the longest
    /// wildcard suffix (Envoy's order: `a.b.c.com`, `*.b.c.com`, `*.c.com`, `*.com`). Counts
    /// the match.
    pub(crate) fn route(&self, name: &str) -> Option<&Arc<ClusterHandle>> {
        let route = self.exact.get(name).or_else(|| {
            name.match_indices('.')
                .find_map(|(i, _)| name.get(i..).and_then(|s| self.wildcard.get(s)))
        })?;
        route.routed.inc();
        Some(&route.cluster)
    }

    /// Counts a connection no route matched.
    pub(crate) fn unmatched(&self, why: Unmatched) {
        self.counters.inc(why.as_str());
    }
}

/// Reads from `stream` until [`inspect`] decides or `timeout` passes. Returns the bytes read
/// (to be sent upstream first) and the decision: `None` when the timeout passed first,
/// `Incomplete` when the client ended its stream before the bytes decided anything (an empty
/// buffer: it closed without sending a byte).
pub(crate) async fn read_client_hello(
    stream: &mut TcpStream,
    timeout: Duration,
) -> std::io::Result<(Vec<u8>, Option<Inspected>)> {
    let mut buf = Vec::with_capacity(2048);
    let read = async {
        loop {
            if buf.len() >= MAX_RECORD {
                // Not reached (a whole record is always decided), but never read without bound.
                return Ok::<_, std::io::Error>(Inspected::Malformed);
            }
            buf.reserve(MAX_RECORD - buf.len());
            let n = stream.read_buf(&mut buf).await?;
            let decided = inspect(&buf);
            if n == 0 || decided != Inspected::Incomplete {
                return Ok(decided);
            }
        }
    };
    let decided = match tokio::time::timeout(timeout, read).await {
        Ok(r) => Some(r?),
        Err(_) => None,
    };
    Ok((buf, decided))
}

#[cfg(test)]
mod tests;
