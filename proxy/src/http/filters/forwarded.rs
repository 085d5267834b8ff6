//! `x-forwarded-for` (the client address appended) and `x-forwarded-proto` (the scheme the
//! client used; a client-sent value is replaced).

use super::{HttpFilter, RequestHead, Verdict};
use crate::http::headers;

/// Sets the forwarding headers.
#[derive(Debug)]
pub struct Forwarded;

impl HttpFilter for Forwarded {
    fn on_request(&self, req: &mut RequestHead<'_>) -> Verdict {
        headers::set_forwarded(req.headers, req.client_ip, req.conn.scheme());
        Verdict::Continue
    }
}
