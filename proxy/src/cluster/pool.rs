//! Per-worker upstream connection pools, one per (endpoint address, transport settings), so a
//! change to a cluster's endpoint set keeps the connections to every endpoint that stays, and
//! clusters with the same endpoints and transport share connections. Nothing here is shared
//! between threads, so there are no locks: HTTP/1.1 keeps a LIFO stack of idle keep-alive
//! connections, HTTP/2 a few multiplexed connections opened as concurrency needs them.

use crate::breaker::Threshold;
use crate::cluster::connect::Connector;
use crate::cluster::{Endpoint, EndpointState, Transport};
use crate::endpoint::EndpointGroup;
use crate::error::ProxyError;
use crate::exec::LocalExec;
use crate::metrics::ClusterMetrics;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::TokioIo;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Most times a request that was refused unsent is tried on another connection.
const MAX_UNSENT_ATTEMPTS: usize = 8;

/// Request body type sent upstream: the downstream body, streamed (and kept for a retry when
/// the retry policy may resend it).
pub(crate) use crate::message::replay::UpstreamBody;

/// A request that failed; `request` is handed back when it was provably not sent (the
/// connection could not be opened), so another attempt may send it elsewhere.
#[derive(Debug)]
pub(crate) struct SendError {
    pub(crate) error: ProxyError,
    pub(crate) request: Option<Request<UpstreamBody>>,
}

impl SendError {
    fn sent(error: ProxyError) -> Self {
        SendError {
            error,
            request: None,
        }
    }
}

/// The protocol chosen for one upstream request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UpstreamProtocol {
    Http1,
    Http2,
}

type PoolMap = HashMap<(SocketAddr, u64), Rc<EndpointPool>, BuildHasherDefault<IdHasher>>;

/// All pools of one worker.
#[derive(Debug, Default)]
pub(crate) struct Pools {
    map: RefCell<PoolMap>,
}

impl Pools {
    /// The pool for `endpoint` under `transport`. A pool whose endpoint left every endpoint
    /// set (and came back) starts afresh.
    pub(crate) fn endpoint(&self, endpoint: &Endpoint, transport: &Transport) -> Rc<EndpointPool> {
        let key = (endpoint.address, transport.key);
        if let Some(p) = self.map.borrow().get(&key)
            && p.endpoint.strong_count() > 0
        {
            return Rc::clone(p);
        }
        let pool = Rc::new(EndpointPool::new(endpoint, transport));
        self.map.borrow_mut().insert(key, Rc::clone(&pool));
        pool
    }

    /// Closes idle connections past their idle timeout and every idle connection of endpoints
    /// no endpoint set holds any more, and forgets the pools of such endpoints once nothing
    /// uses them. Called periodically by the worker.
    pub(crate) fn sweep(&self) {
        let now = Instant::now();
        self.map.borrow_mut().retain(|_, pool| {
            pool.sweep(now);
            pool.endpoint.strong_count() > 0 || !pool.is_empty() || Rc::strong_count(pool) > 1
        });
    }
}

/// Connections to one endpoint.
#[derive(Debug)]
pub(crate) struct EndpointPool {
    addr: SocketAddr,
    /// Alive while some endpoint set holds the endpoint.
    endpoint: Weak<EndpointState>,
    connector: Connector,
    idle_timeout: Duration,
    max_idle: usize,
    max_h2_streams: u32,
    /// A connection this old takes no new request.
    max_age: Option<Duration>,
    /// Most bytes read ahead per connection (HTTP/1.1) or stream (HTTP/2).
    buffer_limit: usize,
    idle_h1: RefCell<Vec<IdleH1>>,
    h2: RefCell<Vec<H2Conn>>,
    h2_connecting: Cell<bool>,
    h2_connected: Notify,
}

#[derive(Debug)]
struct IdleH1 {
    sender: http1::SendRequest<UpstreamBody>,
    since: Instant,
    /// When the connection was opened.
    born: Instant,
}

#[derive(Debug)]
struct H2Conn {
    sender: http2::SendRequest<UpstreamBody>,
    active: Rc<Cell<u32>>,
    idle_since: Rc<Cell<Instant>>,
    /// When the connection was opened.
    born: Instant,
}

/// Holds an upstream connection (HTTP/1.1) or stream slot (HTTP/2) for the life of one response.
#[derive(Debug)]
pub(crate) enum Lease {
    /// An HTTP/1.1 connection, returned to `pool` by [`Lease::release`], closed on drop otherwise.
    H1 {
        sender: Option<http1::SendRequest<UpstreamBody>>,
        pool: Rc<EndpointPool>,
        /// When the connection was opened.
        born: Instant,
    },
    /// A stream on a shared HTTP/2 connection.
    H2 {
        active: Rc<Cell<u32>>,
        idle_since: Rc<Cell<Instant>>,
    },
    /// Nothing to give back (upgraded connections).
    None,
}

impl Lease {
    /// The response ended cleanly: an HTTP/1.1 connection may serve the next request.
    pub(crate) fn release(&mut self) {
        if let Lease::H1 { sender, pool, born } = self
            && let Some(s) = sender.take()
        {
            pool.put_h1(s, *born);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Lease::H2 { active, idle_since } = self {
            let n = active.get().saturating_sub(1);
            active.set(n);
            if n == 0 {
                idle_since.set(crate::clock::coarse_now());
            }
        }
        // An unreleased HTTP/1.1 sender is dropped here, which closes its connection: its
        // response was not read to the end, so the connection's framing state is unknown.
    }
}

impl EndpointPool {
    fn new(endpoint: &Endpoint, t: &Transport) -> Self {
        EndpointPool {
            addr: endpoint.address,
            endpoint: Arc::downgrade(&endpoint.state),
            connector: t.connector.clone(),
            idle_timeout: t.idle_timeout,
            max_idle: t.max_idle,
            max_h2_streams: t.max_h2_streams,
            max_age: t.max_age,
            buffer_limit: t.buffer_limit,
            idle_h1: RefCell::new(Vec::new()),
            h2: RefCell::new(Vec::new()),
            h2_connecting: Cell::new(false),
            h2_connected: Notify::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.idle_h1.borrow().is_empty() && self.h2.borrow().is_empty()
    }

    fn sweep(&self, now: Instant) {
        // The endpoint left every endpoint set: close its idle connections now.
        let timeout = if self.endpoint.strong_count() == 0 {
            Duration::ZERO
        } else {
            self.idle_timeout
        };
        self.idle_h1
            .borrow_mut()
            .retain(|c| !c.sender.is_closed() && now.duration_since(c.since) < timeout);
        self.h2.borrow_mut().retain(|c| {
            !c.sender.is_closed()
                && (c.active.get() > 0
                    || (now.duration_since(c.idle_since.get()) < timeout
                        && !self.too_old(c.born, now)))
        });
    }

    /// True when a connection opened at `born` may take no new request.
    fn too_old(&self, born: Instant, now: Instant) -> bool {
        self.max_age.is_some_and(|a| now.duration_since(born) >= a)
    }

    fn put_h1(&self, sender: http1::SendRequest<UpstreamBody>, born: Instant) {
        let now = crate::clock::coarse_now();
        let mut idle = self.idle_h1.borrow_mut();
        // A connection past its age is dropped here, which closes it.
        if idle.len() < self.max_idle && !sender.is_closed() && !self.too_old(born, now) {
            idle.push(IdleH1 {
                sender,
                since: now,
                born,
            });
        }
    }

    fn take_h1(&self) -> Option<(http1::SendRequest<UpstreamBody>, Instant)> {
        let mut idle = self.idle_h1.borrow_mut();
        let now = crate::clock::coarse_now();
        while let Some(c) = idle.pop() {
            if !c.sender.is_closed()
                && now.duration_since(c.since) < self.idle_timeout
                && !self.too_old(c.born, now)
            {
                return Some((c.sender, c.born));
            }
        }
        None
    }

    /// Sends `req` and returns the response head with the lease that owns its connection.
    pub(crate) async fn send(
        self: &Rc<Self>,
        req: Request<UpstreamBody>,
        proto: UpstreamProtocol,
        via: Via<'_>,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        via.metrics.requests.inc();
        match proto {
            UpstreamProtocol::Http1 => self.send_h1(req, via).await,
            UpstreamProtocol::Http2 => self.send_h2(req, via).await,
        }
    }

    async fn send_h1(
        self: &Rc<Self>,
        mut req: Request<UpstreamBody>,
        via: Via<'_>,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        loop {
            let (mut sender, reused, born) = match self.take_h1() {
                Some((s, born)) => (s, true, born),
                // Boxed: connecting is rare, and its future would otherwise inflate every
                // request's (and every idle connection's) state.
                None => match Box::pin(self.connect_h1(false, via)).await {
                    Ok(s) => (s, false, crate::clock::coarse_now()),
                    Err(error) => {
                        return Err(SendError {
                            error,
                            request: Some(req),
                        });
                    }
                },
            };
            if reused && sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let lease = Lease::H1 {
                        sender: Some(sender),
                        pool: Rc::clone(self),
                        born,
                    };
                    return Ok((resp, lease));
                }
                Err(mut e) => match e.take_message() {
                    // Not written: a pooled connection closed under us. Try another.
                    Some(r) if reused => req = r,
                    // Counted by the upstream call (`cluster::call`), which can tell a failure
                    // of the downstream request body (the client's fault) from the upstream's.
                    _ => return Err(SendError::sent(ProxyError::Upstream(e.into_error()))),
                },
            }
        }
    }

    /// Opens a dedicated HTTP/1.1 connection for an upgrade (WebSocket); never pooled.
    pub(crate) async fn send_upgrade(
        &self,
        req: Request<UpstreamBody>,
        via: Via<'_>,
    ) -> Result<Response<Incoming>, ProxyError> {
        via.metrics.requests.inc();
        let mut sender = self.connect_h1(true, via).await?;
        sender.send_request(req).await.map_err(|e| {
            via.metrics.error("request");
            ProxyError::Upstream(e)
        })
    }

    async fn connect_h1(
        &self,
        upgrades: bool,
        via: Via<'_>,
    ) -> Result<http1::SendRequest<UpstreamBody>, ProxyError> {
        let (stream, slot) =
            open_counted(&self.connector, self.addr, via, crate::tls::Alpn::Http1).await?;
        let io = TokioIo::new(stream);
        // hyper's default limit of 100 response headers: setting any limit explicitly would
        // make it allocate a header vector per response. The read buffer is bounded by the
        // cluster's buffer limit (hyper's default, ~400KiB, is what a client that never reads
        // would otherwise pin per connection); hyper stops reading while the response body is
        // not taken, so the upstream is paused (validated ≥ 8KiB, hyper's minimum).
        let (sender, conn) = http1::Builder::new()
            .max_buf_size(self.buffer_limit)
            .handshake(io)
            .await
            .map_err(|source| ProxyError::Handshake {
                addr: self.addr,
                source,
            })?;
        let addr = self.addr;
        if upgrades {
            tokio::task::spawn_local(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(%addr, error = %e, "upstream connection ended");
                }
                drop(slot);
            });
        } else {
            tokio::task::spawn_local(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%addr, error = %e, "upstream connection ended");
                }
                drop(slot);
            });
        }
        Ok(sender)
    }

    async fn send_h2(
        self: &Rc<Self>,
        mut req: Request<UpstreamBody>,
        via: Via<'_>,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        let metrics = via.metrics;
        // Each failed attempt removes a connection that refused the request unsent; bound the
        // attempts anyway so a misbehaving upstream cannot spin this loop.
        for _ in 0..MAX_UNSENT_ATTEMPTS {
            if let Some((mut sender, active, idle_since)) = self.pick_h2() {
                active.set(active.get() + 1);
                let lease = Lease::H2 { active, idle_since };
                match sender.try_send_request(req).await {
                    Ok(resp) => return Ok((resp, lease)),
                    Err(mut e) => match e.take_message() {
                        // Not sent (the connection is going away): use another.
                        Some(r) => {
                            req = r;
                            self.h2
                                .borrow_mut()
                                .retain(|c| !c.sender.is_closed() && c.sender.is_ready());
                            continue;
                        }
                        // Counted by the upstream call (see `send_h1`).
                        None => {
                            return Err(SendError::sent(ProxyError::Upstream(e.into_error())));
                        }
                    },
                }
            }
            if self.h2_connecting.get() {
                // Another request is opening a connection; wait for it rather than opening many.
                self.h2_connected.notified().await;
                continue;
            }
            let _connecting = ConnectingGuard(self);
            self.h2_connecting.set(true);
            match Box::pin(self.connect_h2(via)).await {
                Ok(conn) => self.h2.borrow_mut().push(conn),
                Err(error) => {
                    return Err(SendError {
                        error,
                        request: Some(req),
                    });
                }
            }
        }
        metrics.error("request");
        Err(SendError::sent(ProxyError::NoEndpoint(
            metrics.name().to_string(),
        )))
    }

    #[allow(clippy::type_complexity)]
    fn pick_h2(
        &self,
    ) -> Option<(
        http2::SendRequest<UpstreamBody>,
        Rc<Cell<u32>>,
        Rc<Cell<Instant>>,
    )> {
        let mut conns = self.h2.borrow_mut();
        conns.retain(|c| !c.sender.is_closed());
        let now = crate::clock::coarse_now();
        conns
            .iter()
            .find(|c| {
                c.active.get() < self.max_h2_streams
                    && c.sender.is_ready()
                    && !self.too_old(c.born, now)
            })
            .map(|c| {
                (
                    c.sender.clone(),
                    Rc::clone(&c.active),
                    Rc::clone(&c.idle_since),
                )
            })
    }

    async fn connect_h2(&self, via: Via<'_>) -> Result<H2Conn, ProxyError> {
        let (stream, slot) =
            open_counted(&self.connector, self.addr, via, crate::tls::Alpn::Http2).await?;
        let io = TokioIo::new(stream);
        // A stream's window is what the upstream may send that nobody has taken yet: bounded
        // by the buffer limit (never below the protocol default), as is the send buffer.
        let window = u32::try_from(self.buffer_limit)
            .unwrap_or(u32::MAX)
            .max(65_535);
        let (sender, conn) = http2::Builder::new(LocalExec)
            .initial_stream_window_size(window)
            .initial_connection_window_size(1 << 20)
            .max_header_list_size(64 << 10)
            .max_concurrent_reset_streams(50)
            .max_send_buf_size(self.buffer_limit)
            .adaptive_window(false)
            .handshake(io)
            .await
            .map_err(|source| ProxyError::Handshake {
                addr: self.addr,
                source,
            })?;
        let addr = self.addr;
        tokio::task::spawn_local(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "upstream HTTP/2 connection ended");
            }
            drop(slot);
        });
        Ok(H2Conn {
            sender,
            active: Rc::new(Cell::new(0)),
            idle_since: Rc::new(Cell::new(Instant::now())),
            born: crate::clock::coarse_now(),
        })
    }
}

/// Which cluster a request goes through: its metrics and its shared state (breakers).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Via<'a> {
    pub(crate) metrics: &'a ClusterMetrics,
    pub(crate) shared: &'a Arc<EndpointGroup>,
}

/// A breaker overflow, counted.
fn overflow(via: Via<'_>, t: Threshold) -> ProxyError {
    via.metrics.overflows.inc(t.as_str());
    tracing::debug!(cluster = %via.metrics.name(), breaker = t.as_str(), "circuit breaker overflow");
    ProxyError::Overflow {
        scope: "cluster",
        breaker: t.as_str(),
    }
}

/// Opens a connection under the cluster's `max_pending_requests` and `max_connections`
/// breakers (for the pools and the TCP proxy); the slot counts the connection until dropped
/// (with the connection's task, or the tunnel).
pub(crate) async fn open_counted(
    connector: &Connector,
    addr: SocketAddr,
    via: Via<'_>,
    alpn: crate::tls::Alpn,
) -> Result<(super::connect::CountedIo, ConnSlot), ProxyError> {
    let breakers = &via.shared.breakers;
    if !breakers.pending.try_acquire() {
        return Err(overflow(via, Threshold::Pending));
    }
    let pending = ConnSlot(Arc::clone(via.shared), Threshold::Pending);
    if !breakers.connections.try_acquire() {
        return Err(overflow(via, Threshold::Connections));
    }
    let slot = ConnSlot(Arc::clone(via.shared), Threshold::Connections);
    let stream = connector.connect(addr, via.metrics, alpn).await?;
    drop(pending);
    Ok((stream, slot))
}

/// One unit of a cluster breaker (an open connection, or a request waiting for one).
#[derive(Debug)]
pub(crate) struct ConnSlot(Arc<EndpointGroup>, Threshold);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.breakers.gauge(self.1).release();
    }
}

/// Clears the "connecting" flag and wakes waiters even if the connecting request is cancelled.
struct ConnectingGuard<'a>(&'a EndpointPool);

impl Drop for ConnectingGuard<'_> {
    fn drop(&mut self) {
        self.0.h2_connecting.set(false);
        self.0.h2_connected.notify_waiters();
    }
}

/// A fast hasher for small integer keys (cluster id, endpoint index).
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}
