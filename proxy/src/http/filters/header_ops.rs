//! The route's header operations: the virtual host's, then the route's, request header
//! add/set/remove on the way up and response header add/set/remove on the way down.

use super::{HttpFilter, RequestHead, ResponseHead, Verdict};

/// Applies configured header operations.
#[derive(Debug)]
pub struct HeaderOps;

impl HttpFilter for HeaderOps {
    fn on_request(&self, req: &mut RequestHead<'_>) -> Verdict {
        if !req.virtual_host.request_headers.is_empty() {
            req.virtual_host.request_headers.apply(req.headers);
        }
        if !req.route.request_headers.is_empty() {
            req.route.request_headers.apply(req.headers);
        }
        Verdict::Continue
    }

    fn on_response(&self, resp: &mut ResponseHead<'_>) {
        if !resp.virtual_host.response_headers.is_empty() {
            resp.virtual_host.response_headers.apply(resp.headers);
        }
        if !resp.route.response_headers.is_empty() {
            resp.route.response_headers.apply(resp.headers);
        }
    }
}
