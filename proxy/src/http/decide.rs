//! The request path's decisions, as pure functions of plain values (no hyper types, no I/O), so
//! they are unit-tested directly: which protocol goes upstream, which responses carry no body,
//! and when trailers must be announced to an HTTP/1.1 peer.

use crate::cluster::UpstreamProtocol;
use http::{StatusCode, Version};
use sluice_config::UpstreamProtocol as Configured;
use std::time::Duration;

/// The protocol of the upstream request: the cluster's, or with `auto` the downstream's.
pub(crate) fn upstream_protocol(configured: Configured, downstream: Version) -> UpstreamProtocol {
    match configured {
        Configured::Http1 => UpstreamProtocol::Http1,
        Configured::Http2 => UpstreamProtocol::Http2,
        Configured::Auto if downstream == Version::HTTP_2 => UpstreamProtocol::Http2,
        Configured::Auto => UpstreamProtocol::Http1,
    }
}

/// The timeout of the upstream call: the route's, or a gRPC client's deadline (`grpc-timeout`)
/// when that is sooner; the route's timeout caps what a client may ask for (`None`: the route
/// has none, so the client's deadline is used as sent).
pub(crate) fn route_timeout(route: Option<Duration>, grpc: Option<Duration>) -> Option<Duration> {
    match (route, grpc) {
        (Some(r), Some(g)) => Some(r.min(g)),
        (None, g) => g,
        (r, None) => r,
    }
}

/// The protocol on the wire: upgrades always use an HTTP/1.1 connection of their own.
pub(crate) fn wire_protocol(proto: UpstreamProtocol, upgrade: bool) -> UpstreamProtocol {
    if upgrade {
        UpstreamProtocol::Http1
    } else {
        proto
    }
}

/// Responses to HEAD and 204/304 responses have no body whatever the upstream sends
/// (RFC 9110 §6.4.1).
pub(crate) fn bodyless(head_request: bool, status: StatusCode) -> bool {
    head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED
}

/// An HTTP/2 request with a body and no `Trailer` header going to an HTTP/1.1 upstream: its
/// trailers must be found (read ahead) and announced, or hyper drops them.
pub(crate) fn announce_request_trailers(
    downstream: Version,
    wire: UpstreamProtocol,
    has_body: bool,
    has_trailer_header: bool,
) -> bool {
    downstream == Version::HTTP_2
        && wire == UpstreamProtocol::Http1
        && has_body
        && !has_trailer_header
}

/// A response that may end with trailers (from an HTTP/2 upstream, or chunked from an HTTP/1.1
/// one) going to an HTTP/1.1 client that accepts them (`TE: trailers`), with a body and no
/// `Trailer` header: its trailers must be found and announced.
pub(crate) fn announce_response_trailers(
    client_wants_trailers: bool,
    downstream: Version,
    upstream_http2: bool,
    has_content_length: bool,
    has_trailer_header: bool,
    body_ended: bool,
) -> bool {
    client_wants_trailers
        && downstream != Version::HTTP_2
        && (upstream_http2 || !has_content_length)
        && !has_trailer_header
        && !body_ended
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_follows_the_downstream_and_upgrades_use_http1() {
        use UpstreamProtocol::*;
        assert_eq!(upstream_protocol(Configured::Auto, Version::HTTP_2), Http2);
        assert_eq!(upstream_protocol(Configured::Auto, Version::HTTP_11), Http1);
        assert_eq!(
            upstream_protocol(Configured::Http2, Version::HTTP_11),
            Http2
        );
        assert_eq!(upstream_protocol(Configured::Http1, Version::HTTP_2), Http1);
        assert_eq!(wire_protocol(Http2, true), Http1);
        assert_eq!(wire_protocol(Http2, false), Http2);
    }

    #[test]
    fn a_grpc_deadline_shortens_the_route_timeout_but_never_extends_it() {
        let s = Duration::from_secs;
        assert_eq!(route_timeout(Some(s(15)), Some(s(2))), Some(s(2)));
        assert_eq!(route_timeout(Some(s(15)), Some(s(60))), Some(s(15)));
        assert_eq!(route_timeout(None, Some(s(60))), Some(s(60)));
        assert_eq!(route_timeout(Some(s(15)), None), Some(s(15)));
        assert_eq!(route_timeout(None, None), None);
    }

    #[test]
    fn head_204_and_304_have_no_body() {
        assert!(bodyless(true, StatusCode::OK));
        assert!(bodyless(false, StatusCode::NO_CONTENT));
        assert!(bodyless(false, StatusCode::NOT_MODIFIED));
        assert!(!bodyless(false, StatusCode::OK));
        assert!(!bodyless(false, StatusCode::RESET_CONTENT));
    }

    #[test]
    fn trailers_are_announced_only_where_hyper_would_drop_them() {
        use UpstreamProtocol::*;
        assert!(announce_request_trailers(
            Version::HTTP_2,
            Http1,
            true,
            false
        ));
        assert!(!announce_request_trailers(
            Version::HTTP_2,
            Http1,
            true,
            true
        ));
        assert!(!announce_request_trailers(
            Version::HTTP_2,
            Http2,
            true,
            false
        ));
        assert!(!announce_request_trailers(
            Version::HTTP_11,
            Http1,
            true,
            false
        ));
        assert!(!announce_request_trailers(
            Version::HTTP_2,
            Http1,
            false,
            false
        ));
        let v11 = Version::HTTP_11;
        assert!(announce_response_trailers(
            true, v11, true, true, false, false
        ));
        assert!(announce_response_trailers(
            true, v11, false, false, false, false
        ));
        assert!(
            !announce_response_trailers(true, v11, false, true, false, false),
            "fixed length"
        );
        assert!(
            !announce_response_trailers(false, v11, true, false, false, false),
            "no TE"
        );
        assert!(!announce_response_trailers(
            true,
            Version::HTTP_2,
            true,
            false,
            false,
            false
        ));
        assert!(
            !announce_response_trailers(true, v11, true, false, true, false),
            "announced"
        );
        assert!(
            !announce_response_trailers(true, v11, true, false, false, true),
            "no body"
        );
    }
}
