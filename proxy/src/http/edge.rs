//! The normalize step between parsing and routing: what the request head must look like before
//! any route sees it. It validates `Host`/`:authority` ([`authority`]), normalizes the path
//! ([`normalize`]), refuses transfer codings other than `chunked`, enforces the header count on
//! HTTP/2 (hyper enforces it on HTTP/1.1), and applies header trust: underscore names, client
//! forwarding headers, `x-request-id` and internal headers from untrusted peers.
//!
//! Routing and the upstream then see the same, normalized request. Everything here is compiled
//! once per listener ([`EdgePolicy`]) and costs one pass over the header names and one over the
//! path on the common path, with no allocation unless something has to change.

use crate::error::ProxyError;
use crate::http::{authority, normalize};
use crate::message::fields;
use crate::metrics::{ListenerMetrics, Sanitized};
use http::header::{self, HeaderName};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Uri, Version};
use sluice_config::{self as config, Cidr, PathNormalization, UnderscoreAction};
use std::borrow::Cow;
use std::net::IpAddr;

/// Longest `x-request-id` kept from a trusted peer; a longer or odd one is replaced.
pub(crate) const MAX_REQUEST_ID_LEN: usize = 128;

/// Header name prefixes that are always internal: stripped from untrusted peers' requests.
const BUILTIN_INTERNAL_PREFIXES: [&str; 2] = ["x-envoy-", "x-sluice-"];

/// One listener's compiled request-head policy.
#[derive(Debug)]
pub struct EdgePolicy {
    path: PathNormalization,
    underscores: UnderscoreAction,
    strip_trailing_host_dot: bool,
    trusted_hops: u32,
    trusted_peers: Vec<Cidr>,
    internal_exact: Vec<HeaderName>,
    /// Lower-case prefixes, the built-in ones first.
    internal_prefixes: Vec<String>,
    max_headers: usize,
    /// Every internal name starts with `x`, so other names can be skipped at their first byte.
    x_only: bool,
}

/// What the step decided besides the checks: the request's authority for routing and
/// forwarding, and a redirect to answer instead of routing.
#[derive(Debug)]
pub enum Checked {
    /// Route it. `authority`: the validated host when it differs from the one passed in (one
    /// trailing dot stripped); `None`: the one passed in is valid as it is.
    Route { authority: Option<HeaderValue> },
    /// Answer `307` with this `Location` (path and query): the path had escaped slashes.
    Redirect(String),
}

impl EdgePolicy {
    /// Compiles a listener's settings.
    pub fn compile(s: &config::HttpListener) -> Self {
        let mut internal_exact = Vec::new();
        let mut internal_prefixes: Vec<String> = BUILTIN_INTERNAL_PREFIXES
            .iter()
            .map(|p| (*p).to_string())
            .collect();
        for name in &s.trust.internal_headers {
            let lower = name.to_ascii_lowercase();
            match lower.strip_suffix('*') {
                Some(prefix) => internal_prefixes.push(prefix.to_string()),
                // Validated as a token; a name that still does not parse is skipped.
                None => internal_exact.extend(HeaderName::from_bytes(lower.as_bytes()).ok()),
            }
        }
        let x_only =
            internal_exact.is_empty() && internal_prefixes.iter().all(|p| p.starts_with('x'));
        EdgePolicy {
            x_only,
            path: s.path_normalization.clone(),
            underscores: s.headers_with_underscores,
            strip_trailing_host_dot: s.strip_trailing_host_dot,
            trusted_hops: s.trust.trusted_hops,
            trusted_peers: s.trust.trusted_peers.clone(),
            internal_exact,
            internal_prefixes,
            max_headers: s.max_request_headers as usize,
        }
    }

    /// True when requests from `peer` are trusted (their request id and internal headers are
    /// kept).
    pub fn trusts(&self, peer: IpAddr) -> bool {
        self.trusted_peers.iter().any(|c| c.contains(peer))
    }

    /// Checks and normalizes the request head in place. `authority` is the request's raw
    /// authority (`:authority`, absolute-form target or `Host`), empty for an HTTP/1.0 request
    /// without one.
    pub fn check(
        &self,
        parts: &mut Parts,
        authority: &HeaderValue,
        peer: IpAddr,
        metrics: &ListenerMetrics,
    ) -> Result<Checked, ProxyError> {
        let http2 = parts.version == Version::HTTP_2;
        if http2 && parts.headers.len() > self.max_headers {
            // hyper counts HTTP/1.1 headers itself (431); HTTP/2 only bounds the list's size.
            return Err(ProxyError::TooManyHeaders);
        }
        let saw_transfer_encoding = self.headers(&mut parts.headers, peer, metrics)?;
        if saw_transfer_encoding && !http2 && !fields::only_chunked(&parts.headers) {
            return Err(ProxyError::UnsupportedTransferCoding);
        }
        let authority = self.authority(parts, authority, metrics)?;
        match normalize::normalize(parts.uri.path(), &self.path) {
            normalize::Normalized::Unchanged => {}
            normalize::Normalized::Changed(path) => {
                tracing::debug!(from = %parts.uri.path(), to = %path, "path normalized");
                metrics.sanitized(Sanitized::PathNormalized);
                parts.uri = with_path(&parts.uri, &path)?;
            }
            normalize::Normalized::Redirect(path) => {
                metrics.sanitized(Sanitized::PathRedirected);
                let mut loc = path;
                if let Some(q) = parts.uri.query() {
                    loc.push('?');
                    loc.push_str(q);
                }
                tracing::debug!(from = %parts.uri.path(), to = %loc, "escaped slashes: redirecting");
                return Ok(Checked::Redirect(loc));
            }
            normalize::Normalized::Reject(why) => return Err(ProxyError::InvalidPath(why)),
        }
        if self.path.normalize
            && let Some(q) = parts.uri.query()
            && !normalize::valid_query(q)
        {
            return Err(ProxyError::InvalidPath("byte above 0x7f in the query"));
        }
        Ok(Checked::Route { authority })
    }

    /// Validates the authority; on HTTP/2 a `Host` header must agree with `:authority`.
    fn authority(
        &self,
        parts: &Parts,
        raw: &HeaderValue,
        metrics: &ListenerMetrics,
    ) -> Result<Option<HeaderValue>, ProxyError> {
        // HTTP/1.0 without Host: nothing to check (and nothing to build a Location from).
        if raw.is_empty() && parts.version == Version::HTTP_10 && parts.uri.authority().is_none() {
            return Ok(None);
        }
        let text = raw
            .to_str()
            .map_err(|_| ProxyError::InvalidHost("not visible ASCII"))?;
        let checked = authority::check(text, self.strip_trailing_host_dot).ok_or(
            ProxyError::InvalidHost("not a host name or address with a port"),
        )?;
        if parts.version == Version::HTTP_2
            && let Some(host) = parts.headers.get(header::HOST)
            && host.as_bytes() != raw.as_bytes()
        {
            // RFC 9113 §8.3.1: a Host that differs from :authority makes the request malformed.
            return Err(ProxyError::InvalidHost("Host differs from :authority"));
        }
        Ok(match checked {
            Cow::Borrowed(_) => None,
            Cow::Owned(s) => {
                metrics.sanitized(Sanitized::HostDotStripped);
                Some(HeaderValue::from_str(&s).map_err(|_| ProxyError::InvalidHost("invalid"))?)
            }
        })
    }

    /// One pass over the header names: underscores, internal headers, forwarding headers and
    /// the request id; removals only when something matched. Returns whether the request has a
    /// `Transfer-Encoding` header.
    fn headers(
        &self,
        headers: &mut HeaderMap,
        peer: IpAddr,
        metrics: &ListenerMetrics,
    ) -> Result<bool, ProxyError> {
        let mut transfer_encoding = false;
        let trusted = !self.trusted_peers.is_empty() && self.trusts(peer);
        let keep_forwarding = trusted || self.trusted_hops > 0;
        let mut remove: Vec<(HeaderName, Sanitized)> = Vec::new();
        for name in headers.keys() {
            let s = name.as_str();
            let b = s.as_bytes();
            // No early exit, so the compiler vectorizes it (names are short; a `memchr` call or a
            // byte-at-a-time search costs more).
            if b.iter().fold(false, |seen, &c| seen | (c == b'_')) {
                match self.underscores {
                    UnderscoreAction::Allow => {}
                    UnderscoreAction::Drop => {
                        remove.push((name.clone(), Sanitized::UnderscoreHeaderDropped));
                        continue;
                    }
                    UnderscoreAction::Reject => return Err(ProxyError::UnderscoreHeader),
                }
            }
            // Every name below starts with `x-` or `f`; most headers are skipped by that test.
            let first = b.first().copied();
            if first == Some(b't') && name == header::TRANSFER_ENCODING {
                transfer_encoding = true;
            }
            if first != Some(b'x') && first != Some(b'f') && self.x_only {
                continue;
            }
            if !keep_forwarding && is_forwarding(s) {
                remove.push((name.clone(), Sanitized::ForwardingHeaderStripped));
            } else if !trusted && self.is_internal(name) {
                remove.push((name.clone(), Sanitized::InternalHeaderStripped));
            } else if s == "x-request-id" {
                let keep = trusted && headers.get_all(name).iter().count() == 1 && {
                    headers.get(name).is_some_and(valid_request_id)
                };
                if !keep {
                    remove.push((name.clone(), Sanitized::RequestIdReplaced));
                }
            }
        }
        for (name, action) in remove {
            tracing::debug!(header = %name, action = action.as_str(), "request header removed before routing");
            headers.remove(&name);
            metrics.sanitized(action);
        }
        Ok(transfer_encoding)
    }

    fn is_internal(&self, name: &HeaderName) -> bool {
        let s = name.as_str();
        self.internal_prefixes
            .iter()
            .any(|p| s.starts_with(p.as_str()))
            || self.internal_exact.contains(name)
    }
}

/// Headers that say who the client is or how it connected; believed only from trusted hops.
pub(crate) fn is_forwarding(name: &str) -> bool {
    matches!(
        name,
        "x-forwarded-for"
            | "x-forwarded-proto"
            | "x-forwarded-host"
            | "x-forwarded-port"
            | "x-forwarded-prefix"
            | "forwarded"
            | "x-real-ip"
    )
}

/// A request id worth propagating: bounded, and made of characters ids use (UUIDs, hex, base64,
/// W3C trace ids).
fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_REQUEST_ID_LEN
        && b.iter().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':' | b'+' | b'/' | b'=')
        })
}

/// `uri` with its path replaced by `path` (the query kept).
fn with_path(uri: &Uri, path: &str) -> Result<Uri, ProxyError> {
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let pq = PathAndQuery::from_maybe_shared(bytes::Bytes::from(pq))
        .map_err(|_| ProxyError::InvalidPath("normalized path is not a valid target"))?;
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq);
    Uri::from_parts(parts)
        .map_err(|_| ProxyError::InvalidPath("normalized path is not a valid target"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn policy(f: impl FnOnce(&mut config::HttpListener)) -> EdgePolicy {
        let mut s = config::HttpListener::new("t");
        f(&mut s);
        EdgePolicy::compile(&s)
    }

    fn request(target: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().uri(target);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 9));

    fn run(p: &EdgePolicy, parts: &mut Parts) -> Result<Checked, ProxyError> {
        let host = parts
            .headers
            .get("host")
            .cloned()
            .unwrap_or(HeaderValue::from_static("a.example"));
        p.check(parts, &host, PEER, &Metrics::new().listener("t"))
    }

    #[test]
    fn untrusted_clients_lose_forwarding_internal_and_id_headers() {
        let p = policy(|s| s.trust.internal_headers = vec!["x-internal".into(), "x-corp-*".into()]);
        let mut r = request(
            "/",
            &[
                ("x-forwarded-for", "1.2.3.4"),
                ("forwarded", "for=1.2.3.4"),
                ("x-real-ip", "1.2.3.4"),
                ("x-forwarded-proto", "https"),
                ("x-envoy-original-path", "/x"),
                ("x-sluice-debug", "1"),
                ("x-internal", "1"),
                ("x-corp-user", "admin"),
                ("x-request-id", "abc"),
                ("x_internal_token", "t"),
                ("x-keep", "1"),
            ],
        );
        run(&p, &mut r).unwrap();
        let left: Vec<&str> = r.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-keep"]);
    }

    #[test]
    fn trusted_peers_and_hops() {
        let p = policy(|s| {
            s.trust.trusted_peers = vec![config::parse_cidr("203.0.113.0/24").unwrap()];
            s.trust.internal_headers = vec!["x-internal".into()];
        });
        let long = "a".repeat(MAX_REQUEST_ID_LEN + 1);
        let mut r = request(
            "/",
            &[
                ("x-forwarded-for", "1.2.3.4"),
                ("x-internal", "1"),
                ("x-request-id", "id-1"),
            ],
        );
        run(&p, &mut r).unwrap();
        assert_eq!(r.headers.len(), 3, "{:?}", r.headers);
        let mut r = request("/", &[("x-request-id", &long)]);
        run(&p, &mut r).unwrap();
        assert!(
            r.headers.get("x-request-id").is_none(),
            "too long: replaced"
        );
        let mut r = request("/", &[("x-request-id", "a b")]);
        run(&p, &mut r).unwrap();
        assert!(
            r.headers.get("x-request-id").is_none(),
            "odd characters: replaced"
        );
        // Hops trust forwarding headers only.
        let p = policy(|s| s.trust.trusted_hops = 1);
        let mut r = request(
            "/",
            &[("x-forwarded-for", "1.2.3.4"), ("x-request-id", "id")],
        );
        run(&p, &mut r).unwrap();
        assert_eq!(r.headers["x-forwarded-for"], "1.2.3.4");
        assert!(r.headers.get("x-request-id").is_none());
    }

    #[test]
    fn underscore_actions() {
        let mut r = request("/", &[("x_a", "1")]);
        run(&policy(|_| {}), &mut r).unwrap();
        assert!(r.headers.is_empty());
        let mut r = request("/", &[("x_a", "1")]);
        let p = policy(|s| s.headers_with_underscores = UnderscoreAction::Reject);
        assert!(matches!(run(&p, &mut r), Err(ProxyError::UnderscoreHeader)));
        let mut r = request("/", &[("x_a", "1")]);
        let p = policy(|s| s.headers_with_underscores = UnderscoreAction::Allow);
        run(&p, &mut r).unwrap();
        assert_eq!(r.headers.len(), 1);
    }

    #[test]
    fn transfer_codings_other_than_chunked_are_refused() {
        for te in [
            "gzip, chunked",
            "identity, chunked",
            "chunked, chunked",
            "gzip",
        ] {
            let mut r = request("/", &[("transfer-encoding", te)]);
            assert!(
                matches!(
                    run(&policy(|_| {}), &mut r),
                    Err(ProxyError::UnsupportedTransferCoding)
                ),
                "{te}"
            );
        }
        let mut r = request("/", &[("transfer-encoding", "Chunked")]);
        run(&policy(|_| {}), &mut r).unwrap();
    }

    #[test]
    fn http2_host_must_agree_with_authority() {
        let p = policy(|_| {});
        let metrics = Metrics::new().listener("t");
        let h2 = |host: Option<&str>| {
            let mut b = http::Request::get("http://a.example/x").version(Version::HTTP_2);
            if let Some(h) = host {
                b = b.header("host", h);
            }
            b.body(()).unwrap().into_parts().0
        };
        let authority = HeaderValue::from_static("a.example");
        let mut r = h2(Some("b.example"));
        assert!(matches!(
            p.check(&mut r, &authority, PEER, &metrics),
            Err(ProxyError::InvalidHost(_))
        ));
        let mut r = h2(Some("a.example"));
        assert!(p.check(&mut r, &authority, PEER, &metrics).is_ok());
        let mut r = h2(None);
        assert!(p.check(&mut r, &authority, PEER, &metrics).is_ok());
        // Too many fields on HTTP/2 (hyper counts HTTP/1.1's).
        let mut r = h2(None);
        for i in 0..101 {
            r.headers.insert(
                HeaderName::from_bytes(format!("x-{i}").as_bytes()).unwrap(),
                HeaderValue::from_static("v"),
            );
        }
        assert!(matches!(
            p.check(&mut r, &authority, PEER, &metrics),
            Err(ProxyError::TooManyHeaders)
        ));
    }

    #[test]
    fn path_and_host() {
        let mut r = request("/a/../b?q=1", &[]);
        run(&policy(|_| {}), &mut r).unwrap();
        assert_eq!(r.uri, "/b?q=1");
        let mut r = request("/a%2Fb?q=1", &[]);
        match run(&policy(|_| {}), &mut r).unwrap() {
            Checked::Redirect(l) => assert_eq!(l, "/a/b?q=1"),
            other => panic!("{other:?}"),
        }
        let mut r = request("/", &[("host", "evil.com/.corp.example.com")]);
        assert!(matches!(
            run(&policy(|_| {}), &mut r),
            Err(ProxyError::InvalidHost(_))
        ));
        let mut r = request("/", &[("host", "api.example.com.")]);
        match run(&policy(|_| {}), &mut r).unwrap() {
            Checked::Route { authority } => assert_eq!(
                authority.as_ref().map(HeaderValue::as_bytes),
                Some(&b"api.example.com"[..])
            ),
            other => panic!("{other:?}"),
        }
    }
}
