//! Listeners: binding (one `SO_REUSEPORT` socket per worker, so the kernel spreads connections
//! across workers), the accept loop, protocol detection, and handing each connection to the
//! HTTP server or the TCP proxy.

pub(crate) mod detect;
mod reconcile;
pub(crate) mod sni;
mod spec;
mod tcp;

pub use reconcile::{BoundListener, Command, Reconciler, WorkerSink};
pub use sni::SniRoutes;
pub use spec::{ListenerKind, ListenerSpec, TcpSpec};

use crate::drain::Drain;
use crate::http::{ConnContext, CurrentSpec, HttpConn, HttpSpec};
use crate::local::Worker;
use socket2::{Domain, Protocol, Socket, Type};
use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tracing::Instrument;

/// What a socket is bound for: named in every bind error.
#[derive(Clone, Copy, Debug)]
pub enum BindOwner<'a> {
    /// A configured listener, by name.
    Listener(&'a str),
    /// The admin API.
    Admin,
}

impl std::fmt::Display for BindOwner<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BindOwner::Listener(name) => write!(f, "listener {name:?}"),
            BindOwner::Admin => f.write_str("admin"),
        }
    }
}

/// Why a listener (or the admin API) could not be bound: `listener "public": address
/// 127.0.0.1:18080 already in use`. The cause is part of the message, not a `source()`, so an
/// error-chain printer (`{:#}`) shows it once.
#[derive(Debug, thiserror::Error)]
#[error("{owner}: {kind}")]
pub struct BindError {
    /// `listener "NAME"` or `admin`.
    pub owner: String,
    /// What went wrong.
    pub kind: BindErrorKind,
}

/// The cause of a [`BindError`].
#[derive(Debug, thiserror::Error)]
pub enum BindErrorKind {
    /// Another socket holds the address.
    #[error("address {0} already in use")]
    InUse(SocketAddr),
    /// Privileged port without the capability.
    #[error("permission denied binding {0} (ports below 1024 need CAP_NET_BIND_SERVICE)")]
    Permission(SocketAddr),
    /// The IP is not one of this host's.
    #[error("address {0} is not available on this host")]
    NotAvailable(SocketAddr),
    /// Anything else.
    #[error("cannot bind {addr}: {error}")]
    Other {
        /// Address.
        addr: SocketAddr,
        /// Cause (in the message, deliberately not a `source`).
        error: io::Error,
    },
}

impl BindError {
    fn new(owner: BindOwner<'_>, addr: SocketAddr, e: io::Error) -> Self {
        let kind = match e.kind() {
            io::ErrorKind::AddrInUse => BindErrorKind::InUse(addr),
            io::ErrorKind::PermissionDenied => BindErrorKind::Permission(addr),
            io::ErrorKind::AddrNotAvailable => BindErrorKind::NotAvailable(addr),
            _ => BindErrorKind::Other { addr, error: e },
        };
        BindError {
            owner: owner.to_string(),
            kind,
        }
    }

    /// `addr` is already in use.
    pub fn in_use(owner: BindOwner<'_>, addr: SocketAddr) -> Self {
        BindError {
            owner: owner.to_string(),
            kind: BindErrorKind::InUse(addr),
        }
    }
}

/// Binds a configured listener's `count` sockets (see [`bind`]).
pub fn bind_spec(
    spec: &ListenerSpec,
    count: usize,
) -> Result<(Vec<std::net::TcpListener>, SocketAddr), BindError> {
    bind(BindOwner::Listener(&spec.name), spec.address, count)
}

/// Binds the admin API's one socket.
pub fn bind_admin(addr: SocketAddr) -> Result<(std::net::TcpListener, SocketAddr), BindError> {
    let (mut sockets, bound) = bind(BindOwner::Admin, addr, 1)?;
    let socket = sockets
        .pop()
        .ok_or_else(|| BindError::in_use(BindOwner::Admin, addr))?;
    Ok((socket, bound))
}

/// Binds `count` sockets to `addr` with `SO_REUSEPORT`. With port 0 the first socket picks the
/// port and the others join it. Returns the sockets and the bound address.
pub fn bind(
    owner: BindOwner<'_>,
    addr: SocketAddr,
    count: usize,
) -> Result<(Vec<std::net::TcpListener>, SocketAddr), BindError> {
    let mut sockets = Vec::with_capacity(count.max(1));
    let mut bound = addr;
    for _ in 0..count.max(1) {
        let s = bind_one(bound).map_err(|e| BindError::new(owner, addr, e))?;
        bound = s.local_addr().map_err(|e| BindError::new(owner, addr, e))?;
        sockets.push(s);
    }
    Ok((sockets, bound))
}

fn bind_one(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// A bound listener's current settings on one worker, shared by its accept loop and (for HTTP)
/// its connections. The worker replaces them when the reconciler pushes a changed config for
/// the same sockets; a removed or rebound listener's connections keep their last settings while
/// they drain.
#[derive(Debug)]
pub(crate) struct Current {
    spec: RefCell<Arc<ListenerSpec>>,
    http: Option<Rc<CurrentSpec>>,
    /// The socket's bound address, set once by the accept loop: a connection's local address
    /// unless the listener is bound to a wildcard IP.
    bound: Cell<Option<SocketAddr>>,
}

impl Current {
    pub(crate) fn new(spec: Arc<ListenerSpec>) -> Rc<Self> {
        let http = match &spec.kind {
            ListenerKind::Http(h) => Some(CurrentSpec::new(Arc::clone(h))),
            ListenerKind::Tcp(_) => None,
        };
        Rc::new(Current {
            spec: RefCell::new(spec),
            http,
            bound: Cell::new(None),
        })
    }

    /// New settings for the same sockets (the kind never changes: that rebinds).
    pub(crate) fn update(&self, spec: Arc<ListenerSpec>) {
        if let (Some(cell), ListenerKind::Http(h)) = (&self.http, &spec.kind) {
            cell.set(Arc::clone(h));
        }
        *self.spec.borrow_mut() = spec;
    }

    fn get(&self) -> Arc<ListenerSpec> {
        Arc::clone(&self.spec.borrow())
    }

    /// A connection's local address: the bound one, read once per socket, unless that is a
    /// wildcard (then one `getsockname` for this connection).
    fn local_addr(&self, stream: &tokio::net::TcpStream, fallback: SocketAddr) -> SocketAddr {
        match self.bound.get() {
            Some(a) if !a.ip().is_unspecified() => a,
            _ => stream.local_addr().unwrap_or(fallback),
        }
    }
}

/// Accepts connections on one worker's socket until `stop` is notified.
pub(crate) async fn accept_loop(
    listener: tokio::net::TcpListener,
    current: Rc<Current>,
    worker: Rc<Worker>,
    drain: Drain,
    stop: Rc<Notify>,
) {
    current.bound.set(listener.local_addr().ok());
    loop {
        let accepted = tokio::select! {
            _ = stop.notified() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let tracked = drain.track();
                let worker = Rc::clone(&worker);
                let drain = drain.clone();
                let span =
                    tracing::debug_span!("conn", listener = %current.spec.borrow().name, %peer);
                let current = Rc::clone(&current);
                tokio::task::spawn_local(
                    async move {
                        let _tracked = tracked;
                        serve(stream, peer, current, worker, drain).await;
                    }
                    .instrument(span),
                );
            }
            Err(e) => {
                // Out of file descriptors or memory: pause instead of spinning on the error.
                tracing::warn!(listener = %current.spec.borrow().name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serves one accepted connection. Its future is the connection task's, kept for the life of
/// the connection: every argument and every value held across an await costs each connection.
async fn serve(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    current: Rc<Current>,
    worker: Rc<Worker>,
    drain: Drain,
) {
    let spec = current.get();
    spec.metrics.connections.inc();
    spec.metrics.active.inc();
    match (&spec.kind, current.http.clone()) {
        // Boxed: this future is every connection's task, and the TLS arm (rustls' connection
        // state, the HTTP server over a TLS stream) would otherwise size it for plaintext
        // connections too.
        (ListenerKind::Http(_), Some(http_current)) if spec.tls.is_some() => {
            Box::pin(serve_tls(
                stream,
                peer,
                &spec,
                &current,
                http_current,
                worker,
                drain,
            ))
            .await
        }
        (ListenerKind::Http(http), Some(http_current)) => {
            if let Some(http2) = detect_protocol(&stream, peer, http, &spec).await {
                let local = current.local_addr(&stream, spec.address);
                let ctx = ConnContext::plaintext(peer, local);
                let conn = HttpConn::new(worker, drain, ctx, http_current, http2);
                crate::http::server::serve(stream, conn).await;
            }
        }
        (ListenerKind::Tcp(tcp), _) => tcp::proxy(stream, peer, &spec, tcp, &worker, &drain).await,
        // Unreachable: HTTP listeners always have their settings cell.
        (ListenerKind::Http(_), None) => {}
    }
    spec.metrics.active.dec();
    spec.metrics.closed.inc();
}

/// Terminates TLS, then serves HTTP over it: ALPN `h2` is HTTP/2, anything else (or no ALPN)
/// HTTP/1.1. The handshake is bounded by the listener's `tls.handshake_timeout`.
async fn serve_tls(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    spec: &ListenerSpec,
    current: &Current,
    http_current: Rc<CurrentSpec>,
    worker: Rc<Worker>,
    drain: Drain,
) {
    let Some(tls) = &spec.tls else { return };
    let local = current.local_addr(&stream, spec.address);
    match crate::tls::accept(stream, tls).await {
        Ok((stream, info)) => {
            spec.metrics.tls_handshake("ok");
            let http2 = info.alpn.as_deref() == Some(b"h2");
            let ctx = ConnContext::tls(peer, local, info);
            let conn = HttpConn::new(worker, drain, ctx, http_current, http2);
            crate::http::server::serve(stream, conn).await;
        }
        Err(crate::tls::AcceptError::Timeout) => {
            spec.metrics.tls_handshake("timeout");
            tracing::debug!(%peer, "TLS handshake timed out");
        }
        Err(crate::tls::AcceptError::Failed(e)) => {
            spec.metrics.tls_handshake("failed");
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
        }
    }
}

/// Waits (within the header timeout) for the first bytes and tells HTTP/2 (the client preface)
/// from HTTP/1.x, without consuming anything. `None`: the connection closed, failed or timed out.
async fn detect_protocol(
    stream: &tokio::net::TcpStream,
    peer: SocketAddr,
    http: &HttpSpec,
    spec: &ListenerSpec,
) -> Option<bool> {
    let header_timeout = http.settings.request_header_timeout.get();
    match tokio::time::timeout(header_timeout, detect::detect(stream)).await {
        Ok(Ok(Some(h2))) => Some(h2),
        Ok(Ok(None)) => None,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "read failed before the first request");
            None
        }
        Err(_) => {
            spec.metrics.rejected("header_timeout");
            tracing::debug!(%peer, "no request within the header timeout");
            None
        }
    }
}
