//! What the listener hands `http` with each connection's byte stream: the addresses and, once
//! TLS terminates in front of protocol detection, the TLS details (SNI, ALPN, peer identity).
//! The request path takes the scheme from here, never from a literal.

pub use crate::tls::TlsInfo;
use std::net::SocketAddr;

/// What the listener knows about an accepted connection; handed to `http` with the byte stream
/// so that nothing on the request path assumes plaintext TCP.
#[derive(Debug)]
pub struct ConnContext {
    /// The client's address.
    pub peer: SocketAddr,
    /// The address the client connected to.
    pub local: SocketAddr,
    /// TLS details when TLS was terminated in front of protocol detection (`None`: plaintext).
    /// Boxed: every idle connection keeps its context, and most are plaintext.
    pub tls: Option<Box<TlsInfo>>,
}

impl ConnContext {
    /// Context of a plaintext connection.
    pub fn plaintext(peer: SocketAddr, local: SocketAddr) -> Self {
        ConnContext {
            peer,
            local,
            tls: None,
        }
    }

    /// Context of a connection whose TLS was terminated.
    pub fn tls(peer: SocketAddr, local: SocketAddr, tls: TlsInfo) -> Self {
        ConnContext {
            peer,
            local,
            tls: Some(Box::new(tls)),
        }
    }

    /// The verified client SPIFFE ID, if any.
    pub fn peer_identity(&self) -> Option<&str> {
        self.tls.as_ref()?.peer_identity.as_deref()
    }

    /// `https` when TLS was terminated, else `http`: how the client reached the listener.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}
