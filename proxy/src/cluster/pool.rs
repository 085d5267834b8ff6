//! Per-worker upstream connection pools, one per (cluster, endpoint). Nothing here is shared
//! between threads, so there are no locks: HTTP/1.1 keeps a LIFO stack of idle keep-alive
//! connections, HTTP/2 a few multiplexed connections opened as concurrency needs them.

use crate::cluster::Cluster;
use crate::error::ProxyError;
use crate::rt::LocalExec;
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
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Most times a request that was refused unsent is tried on another connection.
const MAX_UNSENT_ATTEMPTS: usize = 8;

/// Request body type sent upstream: the downstream body, streamed.
pub(crate) type UpstreamBody = crate::http::reqbody::RequestBody;

/// The protocol chosen for one upstream request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UpstreamProtocol {
    Http1,
    Http2,
}

type PoolMap = HashMap<(u64, usize), Rc<EndpointPool>, BuildHasherDefault<IdHasher>>;

/// All pools of one worker.
#[derive(Debug, Default)]
pub(crate) struct Pools {
    map: RefCell<PoolMap>,
}

impl Pools {
    /// The pool for endpoint `index` of `cluster`.
    pub(crate) fn endpoint(
        &self,
        cluster: &Arc<Cluster>,
        index: usize,
        addr: SocketAddr,
    ) -> Rc<EndpointPool> {
        let key = (cluster.id, index);
        if let Some(p) = self.map.borrow().get(&key) {
            return Rc::clone(p);
        }
        let pool = Rc::new(EndpointPool::new(cluster, addr));
        self.map.borrow_mut().insert(key, Rc::clone(&pool));
        pool
    }

    /// Closes idle connections past their idle timeout and forgets pools of clusters that no
    /// config references any more. Called periodically by the worker.
    pub(crate) fn sweep(&self) {
        let now = Instant::now();
        self.map.borrow_mut().retain(|_, pool| {
            pool.sweep(now);
            pool.cluster.strong_count() > 0 || !pool.is_empty()
        });
    }
}

/// Connections to one endpoint.
#[derive(Debug)]
pub(crate) struct EndpointPool {
    addr: SocketAddr,
    cluster: Weak<Cluster>,
    cluster_name: String,
    metrics: crate::metrics::ClusterMetrics,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    max_h2_streams: u32,
    idle_h1: RefCell<Vec<IdleH1>>,
    h2: RefCell<Vec<H2Conn>>,
    h2_connecting: Cell<bool>,
    h2_connected: Notify,
}

#[derive(Debug)]
struct IdleH1 {
    sender: http1::SendRequest<UpstreamBody>,
    since: Instant,
}

#[derive(Debug)]
struct H2Conn {
    sender: http2::SendRequest<UpstreamBody>,
    active: Rc<Cell<u32>>,
    idle_since: Rc<Cell<Instant>>,
}

/// Holds an upstream connection (HTTP/1.1) or stream slot (HTTP/2) for the life of one response.
#[derive(Debug)]
pub(crate) enum Lease {
    /// An HTTP/1.1 connection, returned to `pool` by [`Lease::release`], closed on drop otherwise.
    H1 {
        sender: Option<http1::SendRequest<UpstreamBody>>,
        pool: Rc<EndpointPool>,
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
        if let Lease::H1 { sender, pool } = self
            && let Some(s) = sender.take()
        {
            pool.put_h1(s);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Lease::H2 { active, idle_since } = self {
            let n = active.get().saturating_sub(1);
            active.set(n);
            if n == 0 {
                idle_since.set(crate::rt::coarse_now());
            }
        }
        // An unreleased HTTP/1.1 sender is dropped here, which closes its connection: its
        // response was not read to the end, so the connection's framing state is unknown.
    }
}

impl EndpointPool {
    fn new(cluster: &Arc<Cluster>, addr: SocketAddr) -> Self {
        let pool = &cluster.config.pool;
        EndpointPool {
            addr,
            cluster: Arc::downgrade(cluster),
            cluster_name: cluster.name.clone(),
            metrics: cluster.metrics.clone(),
            connect_timeout: cluster.config.connect_timeout.get(),
            idle_timeout: pool.idle_timeout.get(),
            max_idle: pool.max_idle_per_endpoint as usize,
            max_h2_streams: pool.max_requests_per_http2_connection,
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
        let timeout = self.idle_timeout;
        self.idle_h1
            .borrow_mut()
            .retain(|c| !c.sender.is_closed() && now.duration_since(c.since) < timeout);
        self.h2.borrow_mut().retain(|c| {
            !c.sender.is_closed()
                && (c.active.get() > 0 || now.duration_since(c.idle_since.get()) < timeout)
        });
    }

    fn put_h1(&self, sender: http1::SendRequest<UpstreamBody>) {
        let mut idle = self.idle_h1.borrow_mut();
        if idle.len() < self.max_idle && !sender.is_closed() {
            idle.push(IdleH1 {
                sender,
                since: crate::rt::coarse_now(),
            });
        }
    }

    fn take_h1(&self) -> Option<http1::SendRequest<UpstreamBody>> {
        let mut idle = self.idle_h1.borrow_mut();
        while let Some(c) = idle.pop() {
            if !c.sender.is_closed()
                && crate::rt::coarse_now().duration_since(c.since) < self.idle_timeout
            {
                return Some(c.sender);
            }
        }
        None
    }

    /// Sends `req` and returns the response head with the lease that owns its connection.
    pub(crate) async fn send(
        self: &Rc<Self>,
        req: Request<UpstreamBody>,
        proto: UpstreamProtocol,
    ) -> Result<(Response<Incoming>, Lease), ProxyError> {
        self.metrics.requests.inc();
        match proto {
            UpstreamProtocol::Http1 => self.send_h1(req).await,
            UpstreamProtocol::Http2 => self.send_h2(req).await,
        }
    }

    async fn send_h1(
        self: &Rc<Self>,
        mut req: Request<UpstreamBody>,
    ) -> Result<(Response<Incoming>, Lease), ProxyError> {
        loop {
            let (mut sender, reused) = match self.take_h1() {
                Some(s) => (s, true),
                // Boxed: connecting is rare, and its future would otherwise inflate every
                // request's (and every idle connection's) state.
                None => (Box::pin(self.connect_h1(false)).await?, false),
            };
            if reused && sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let lease = Lease::H1 {
                        sender: Some(sender),
                        pool: Rc::clone(self),
                    };
                    return Ok((resp, lease));
                }
                Err(mut e) => match e.take_message() {
                    // Not written: a pooled connection closed under us. Try another.
                    Some(r) if reused => req = r,
                    // Counted by the request path, which can tell a failure of the downstream
                    // request body (the client's fault) from the upstream's.
                    _ => return Err(ProxyError::Upstream(e.into_error())),
                },
            }
        }
    }

    /// Opens a dedicated HTTP/1.1 connection for an upgrade (WebSocket); never pooled.
    pub(crate) async fn send_upgrade(
        &self,
        req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        self.metrics.requests.inc();
        let mut sender = self.connect_h1(true).await?;
        sender.send_request(req).await.map_err(|e| {
            self.metrics.error("request");
            ProxyError::Upstream(e)
        })
    }

    async fn connect_h1(
        &self,
        upgrades: bool,
    ) -> Result<http1::SendRequest<UpstreamBody>, ProxyError> {
        let io = TokioIo::new(self.connect_tcp().await?);
        // hyper's default limit of 100 response headers: setting any limit explicitly would
        // make it allocate a header vector per response.
        let (sender, conn) = http1::Builder::new()
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
            });
        } else {
            tokio::task::spawn_local(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%addr, error = %e, "upstream connection ended");
                }
            });
        }
        Ok(sender)
    }

    async fn send_h2(
        self: &Rc<Self>,
        mut req: Request<UpstreamBody>,
    ) -> Result<(Response<Incoming>, Lease), ProxyError> {
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
                        // Counted by the request path (see `send_h1`).
                        None => return Err(ProxyError::Upstream(e.into_error())),
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
            let conn = Box::pin(self.connect_h2()).await?;
            self.h2.borrow_mut().push(conn);
        }
        self.metrics.error("request");
        Err(ProxyError::NoEndpoint(self.cluster_name.clone()))
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
        conns
            .iter()
            .find(|c| c.active.get() < self.max_h2_streams && c.sender.is_ready())
            .map(|c| {
                (
                    c.sender.clone(),
                    Rc::clone(&c.active),
                    Rc::clone(&c.idle_since),
                )
            })
    }

    async fn connect_h2(&self) -> Result<H2Conn, ProxyError> {
        let io = TokioIo::new(self.connect_tcp().await?);
        let (sender, conn) = http2::Builder::new(LocalExec)
            .initial_stream_window_size(65_535 * 4)
            .initial_connection_window_size(1 << 20)
            .max_header_list_size(64 << 10)
            .max_concurrent_reset_streams(50)
            .max_send_buf_size(256 << 10)
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
        });
        Ok(H2Conn {
            sender,
            active: Rc::new(Cell::new(0)),
            idle_since: Rc::new(Cell::new(Instant::now())),
        })
    }

    async fn connect_tcp(&self) -> Result<TcpStream, ProxyError> {
        let addr = self.addr;
        let result = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await;
        let stream = match result {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => {
                self.metrics.connect_failures.inc();
                tracing::debug!(cluster = %self.cluster_name, %addr, error = %source, "upstream connect failed");
                return Err(ProxyError::ConnectFailed { addr, source });
            }
            Err(_) => {
                self.metrics.connect_failures.inc();
                tracing::debug!(cluster = %self.cluster_name, %addr, "upstream connect timed out");
                return Err(ProxyError::ConnectTimeout {
                    addr,
                    timeout: self.connect_timeout,
                });
            }
        };
        // Requests are written whole by hyper; Nagle would only delay them.
        let _ = stream.set_nodelay(true);
        self.metrics.connections.inc();
        Ok(stream)
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
