//! What the client's TLS identity decides, first in the configured chain:
//!
//! 1. **Misdirected requests**: over TLS with SNI, a request whose `Host` picks a different
//!    virtual host than its SNI would gets 421 (RFC 9110 §15.5.20): the certificate the client
//!    checked was not for that host, and a reused HTTP/2 connection must not reach it.
//! 2. **Authorization**: the listener's, then the route's, allow and deny lists of SPIFFE IDs
//!    (deny wins; a non-empty allow needs a match). Refused: 403, or gRPC `PERMISSION_DENIED`
//!    in a trailers-only answer; counted in `sluice_authz_denied_total{listener, scope}`.
//! 3. **`x-forwarded-client-cert`** (Envoy's XFCC): removed, passed, appended to or replaced,
//!    as the listener's `tls.forward_client_cert` says (removed when there is no TLS, unless
//!    `always_forward_only`).

use super::{RequestHead, ResponseFlag, Verdict};
use crate::http::grpc;
use crate::metrics::ListenerMetrics;
use crate::route::{Policy, RouteTable};
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderName, HeaderValue, Response, StatusCode};
use sluice_config::{self as config, ForwardClientCert};
use std::sync::Arc;

static XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// The identity filter of one HTTP listener.
#[derive(Debug)]
pub struct Identity {
    policy: Option<Box<Policy>>,
    xfcc: ForwardClientCert,
    /// This proxy's SPIFFE ID (`By=` in XFCC), following certificate rotation.
    by: Option<Arc<arc_swap::ArcSwapOption<String>>>,
    /// The listener's route table, to find the virtual host the SNI picks.
    routes: Arc<RouteTable>,
    metrics: ListenerMetrics,
}

impl Identity {
    /// The filter for a listener with these settings.
    pub fn new(
        authorization: &config::Authorization,
        tls: Option<&crate::tls::ServerTls>,
        routes: Arc<RouteTable>,
        metrics: ListenerMetrics,
    ) -> Self {
        Identity {
            policy: Policy::compile(authorization),
            xfcc: tls.map_or(ForwardClientCert::Sanitize, |t| {
                t.settings.forward_client_cert
            }),
            by: tls.map(crate::tls::ServerTls::identity),
            routes,
            metrics,
        }
    }

    fn deny(&self, req: &RequestHead<'_>, scope: &'static str) -> Verdict {
        self.metrics.authz_denied(scope);
        tracing::info!(
            listener = %self.routes.name,
            route = %req.route.name,
            peer = %req.conn.peer,
            identity = req.conn.peer_identity().unwrap_or("-"),
            scope,
            "request denied by authorization"
        );
        Verdict::Respond(denied(grpc::is_grpc(req.headers)))
    }

    fn forward_client_cert(&self, req: &mut RequestHead<'_>) {
        let tls = req.conn.tls.as_deref();
        match (self.xfcc, tls) {
            (ForwardClientCert::AlwaysForwardOnly, _) => {}
            (ForwardClientCert::ForwardOnly, Some(_)) => {}
            (ForwardClientCert::AppendForward | ForwardClientCert::SanitizeSet, Some(t)) => {
                let Some(mine) = self.details(t) else {
                    if self.xfcc == ForwardClientCert::SanitizeSet {
                        req.headers.remove(&XFCC);
                    }
                    return;
                };
                let value = match (self.xfcc, req.headers.get(&XFCC)) {
                    (ForwardClientCert::AppendForward, Some(prev)) => {
                        let mut v = prev.as_bytes().to_vec();
                        v.push(b',');
                        v.extend_from_slice(mine.as_bytes());
                        HeaderValue::from_bytes(&v)
                    }
                    _ => HeaderValue::from_str(&mine),
                };
                match value {
                    Ok(v) => {
                        req.headers.insert(XFCC.clone(), v);
                    }
                    Err(_) => {
                        req.headers.remove(&XFCC);
                    }
                }
            }
            _ => {
                req.headers.remove(&XFCC);
            }
        }
    }

    /// `By=…;Hash=…;URI=…` for a client that presented a certificate.
    fn details(&self, t: &crate::http::TlsInfo) -> Option<String> {
        let hash = t.peer_cert_sha256.as_deref()?;
        let mut s = String::with_capacity(160);
        if let Some(by) = self.by.as_ref().and_then(|b| b.load_full()) {
            s.push_str("By=");
            s.push_str(&by);
            s.push(';');
        }
        s.push_str("Hash=");
        s.push_str(hash);
        if let Some(uri) = &t.peer_identity {
            s.push_str(";URI=");
            s.push_str(uri);
        }
        Some(s)
    }
}

impl super::HttpFilter for Identity {
    fn on_request(&self, req: &mut RequestHead<'_>) -> Verdict {
        if let Some(sni) = req.conn.tls.as_deref().and_then(|t| t.sni.as_deref())
            && let Some(by_sni) = self.routes.virtual_host_for(sni)
            && !std::ptr::eq(by_sni, req.virtual_host)
        {
            self.metrics.rejected("misdirected_request");
            tracing::debug!(sni, virtual_host = %req.virtual_host.name, "SNI and Host pick different virtual hosts: 421");
            return Verdict::Respond(misdirected());
        }
        if let Some(p) = &self.policy
            && !p.allows(req.conn.peer_identity())
        {
            return self.deny(req, "listener");
        }
        if let Some(p) = &req.route.authorization
            && !p.allows(req.conn.peer_identity())
        {
            return self.deny(req, "route");
        }
        self.forward_client_cert(req);
        Verdict::Continue
    }
}

fn denied(grpc_request: bool) -> Response<Bytes> {
    let mut r = if grpc_request {
        crate::http::respond::grpc_error(HeaderValue::from_static("7"), "RBAC: access denied")
    } else {
        let mut r = Response::new(Bytes::from_static(b"RBAC: access denied\n"));
        *r.status_mut() = StatusCode::FORBIDDEN;
        r.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    r.extensions_mut().insert(ResponseFlag("RBAC"));
    r
}

fn misdirected() -> Response<Bytes> {
    let mut r = Response::new(Bytes::from_static(b"misdirected request\n"));
    *r.status_mut() = StatusCode::MISDIRECTED_REQUEST;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denials_are_403_or_grpc_permission_denied() {
        assert_eq!(denied(false).status(), 403);
        let g = denied(true);
        assert_eq!(g.status(), 200);
        assert_eq!(g.headers()["grpc-status"], "7");
    }
}
