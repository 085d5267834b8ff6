//! Header normalisation between downstream and upstream, as pure functions: hop-by-hop removal
//! (RFC 9110 §7.6.1), `x-forwarded-for`/`x-forwarded-proto`, `x-request-id`, and WebSocket
//! upgrade detection.

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Version};

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1 plus the legacy
/// `proxy-connection` and HTTP/2's `http2-settings`).
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    HeaderName::from_static("http2-settings"),
];

/// The bit of a hop-by-hop name: its index in [`HOP_BY_HOP`], or the one after for `te`.
/// A string match compiles to a length switch and one comparison, cheaper than comparing the
/// name with each entry.
fn hop_bit(name: &HeaderName) -> u16 {
    match name.as_str() {
        "connection" => 1,
        "keep-alive" => 1 << 1,
        "proxy-connection" => 1 << 2,
        "transfer-encoding" => 1 << 3,
        "upgrade" => 1 << 4,
        "proxy-authenticate" => 1 << 5,
        "http2-settings" => 1 << 6,
        "te" => 1 << 7,
        _ => 0,
    }
}

pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Removes hop-by-hop headers and every header the `Connection` header names. `TE` survives
/// only as `te: trailers` (the one value HTTP/2 allows, needed by gRPC). With `keep_upgrade`
/// (a WebSocket handshake) `Connection: upgrade` and `Upgrade` are kept.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names finds which hop-by-hop headers are present (usually none, or
    // `Connection: keep-alive`); only those are looked up and removed.
    let present = headers.keys().fold(0u16, |bits, name| bits | hop_bit(name));
    if present == 0 {
        return;
    }
    // `Connection: keep-alive` / `close` (what most upstreams send) names no other header.
    let plain = |v: &HeaderValue| {
        let b = v.as_bytes();
        b.eq_ignore_ascii_case(b"keep-alive") || b.eq_ignore_ascii_case(b"close")
    };
    if let Some(conn) = headers.get(header::CONNECTION).filter(|v| !plain(v)) {
        // Tokens naming other headers; the common `keep-alive`/`close`/`upgrade` name none
        // that is not already handled, so they cost no allocation.
        let named: Vec<HeaderName> = conn
            .to_str()
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|t| {
                !t.is_empty()
                    && !t.eq_ignore_ascii_case("keep-alive")
                    && !t.eq_ignore_ascii_case("close")
                    && !t.eq_ignore_ascii_case("upgrade")
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .filter(|n| !protected(n))
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    let upgrade = if keep_upgrade {
        headers.remove(header::UPGRADE)
    } else {
        None
    };
    for (i, h) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(h);
        }
    }
    if present & (1 << HOP_BY_HOP.len()) != 0
        && let Some(te) = headers.remove(header::TE)
        && has_token(&te, "trailers")
    {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(up) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, up);
    }
}

/// Headers a `Connection` header cannot remove: the ones the proxy itself sets or vouches for
/// (`Host`, the forwarding headers, the request id, internal headers) and framing. Otherwise
/// `Connection: x-forwarded-for` would strip what a trusted proxy in front added.
fn protected(name: &HeaderName) -> bool {
    let s = name.as_str();
    matches!(s, "host" | "content-length" | "x-request-id")
        || crate::http::edge::is_forwarding(s)
        || s.starts_with("x-envoy-")
        || s.starts_with("x-sluice-")
}

/// True for an HTTP/1.1 `GET` asking to upgrade to WebSocket (RFC 6455 §4.1).
pub(crate) fn is_websocket_upgrade(method: &Method, version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && method == Method::GET
        && headers
            .get(header::UPGRADE)
            .is_some_and(|v| has_token(v, "websocket"))
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| has_token(v, "upgrade"))
}

/// Case-insensitive membership of `token` in a comma-separated header value.
pub(crate) fn has_token(v: &HeaderValue, token: &str) -> bool {
    v.to_str()
        .unwrap_or_default()
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Appends the client address to `x-forwarded-for` (one header, comma-separated) and sets
/// `x-forwarded-proto` to the scheme the client used (a client-sent value is not trusted).
pub(crate) fn set_forwarded(headers: &mut HeaderMap, client_ip: &HeaderValue, proto: &'static str) {
    match headers.entry(&X_FORWARDED_FOR) {
        header::Entry::Vacant(v) => {
            v.insert(client_ip.clone());
        }
        header::Entry::Occupied(mut o) => {
            let mut v = Vec::with_capacity(64);
            for prev in o.iter() {
                v.extend_from_slice(prev.as_bytes());
                v.extend_from_slice(b", ");
            }
            v.extend_from_slice(client_ip.as_bytes());
            // Made only of valid header bytes; replaces every previous value.
            if let Ok(joined) = HeaderValue::from_maybe_shared(Bytes::from(v)) {
                o.insert(joined);
            }
        }
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
}

/// Joins several `cookie` fields into one, separated by `; `, as an HTTP/2 request may split
/// them but HTTP/1.1 allows only one (RFC 9113 §8.2.3). One field or none: nothing to do.
pub(crate) fn join_cookies(headers: &mut HeaderMap) {
    if let header::Entry::Occupied(mut o) = headers.entry(header::COOKIE) {
        if o.iter().nth(1).is_none() {
            return;
        }
        let mut v = Vec::with_capacity(128);
        for (i, c) in o.iter().enumerate() {
            if i > 0 {
                v.extend_from_slice(b"; ");
            }
            v.extend_from_slice(c.as_bytes());
        }
        // Made only of valid header bytes; replaces every previous value.
        if let Ok(joined) = HeaderValue::from_maybe_shared(Bytes::from(v)) {
            o.insert(joined);
        }
    }
}

/// Adds a random UUID v4 `x-request-id` unless the request has one.
pub(crate) fn ensure_request_id(headers: &mut HeaderMap) {
    if !headers.contains_key(&X_REQUEST_ID) {
        headers.insert(X_REQUEST_ID.clone(), new_request_id());
    }
}

fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut b = fastrand::u128(..).to_be_bytes();
    if let Some(x) = b.get_mut(6) {
        *x = (*x & 0x0f) | 0x40; // version 4
    }
    if let Some(x) = b.get_mut(8) {
        *x = (*x & 0x3f) | 0x80; // RFC 4122 variant
    }
    let mut out = [0u8; 36];
    let mut slots = out.iter_mut();
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10)
            && let Some(s) = slots.next()
        {
            *s = b'-';
        }
        for nibble in [byte >> 4, byte & 0xf] {
            if let (Some(s), Some(h)) = (slots.next(), HEX.get(usize::from(nibble))) {
                *s = *h;
            }
        }
    }
    // Hex digits and dashes are valid header bytes.
    HeaderValue::from_bytes(&out).unwrap_or(HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAAQAAP__"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip"),
            ("x-keep", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-keep"], "yes");
    }

    #[test]
    fn connection_cannot_name_away_what_the_proxy_vouches_for() {
        let mut h = map(&[
            (
                "connection",
                "x-forwarded-for, X-Request-Id, host, content-length, forwarded, x-envoy-a, x-other",
            ),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-request-id", "id"),
            ("host", "a"),
            ("content-length", "0"),
            ("forwarded", "for=10.0.0.1"),
            ("x-envoy-a", "1"),
            ("x-other", "1"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 6, "{h:?}");
        assert!(h.get("x-other").is_none());
        assert!(h.get("connection").is_none());
    }

    #[test]
    fn hop_bits_match_the_list() {
        for (i, h) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_bit(h), 1 << i, "{h}");
        }
        assert_eq!(hop_bit(&header::TE), 1 << HOP_BY_HOP.len());
        assert_eq!(hop_bit(&header::HOST), 0);
    }

    #[test]
    fn te_trailers_survives() {
        let mut h = map(&[("te", "trailers, deflate")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn websocket_keeps_upgrade() {
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ]);
        assert!(is_websocket_upgrade(&Method::GET, Version::HTTP_11, &h));
        assert!(!is_websocket_upgrade(&Method::POST, Version::HTTP_11, &h));
        assert!(!is_websocket_upgrade(&Method::GET, Version::HTTP_2, &h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["sec-websocket-key"], "k");
    }

    #[test]
    fn forwarded_headers() {
        let ip = HeaderValue::from_static("10.0.0.9");
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-forwarded-proto", "https"),
        ]);
        set_forwarded(&mut h, &ip, "http");
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        let mut h = HeaderMap::new();
        set_forwarded(&mut h, &ip, "http");
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
    }

    #[test]
    fn cookies_are_joined() {
        let mut h = map(&[("cookie", "a=1"), ("cookie", "b=2"), ("cookie", "c=3")]);
        join_cookies(&mut h);
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(h["cookie"], "a=1; b=2; c=3");
        let mut h = map(&[("cookie", "a=1; b=2")]);
        join_cookies(&mut h);
        assert_eq!(h["cookie"], "a=1; b=2");
    }

    #[test]
    fn request_id_is_uuid_v4_and_kept_when_present() {
        let mut h = HeaderMap::new();
        ensure_request_id(&mut h);
        let id = h["x-request-id"].to_str().unwrap().to_string();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"));
        ensure_request_id(&mut h);
        assert_eq!(h["x-request-id"], id.as_str());
        let mut other = HeaderMap::new();
        ensure_request_id(&mut other);
        assert_ne!(other["x-request-id"], id.as_str());
    }
}
