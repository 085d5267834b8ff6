//! `x-request-id`: a random UUID v4 when the request has none.

use super::{HttpFilter, RequestHead, Verdict};
use crate::http::headers;

/// Generates request ids.
#[derive(Debug)]
pub struct RequestId;

impl HttpFilter for RequestId {
    fn on_request(&self, req: &mut RequestHead<'_>) -> Verdict {
        headers::ensure_request_id(req.headers);
        Verdict::Continue
    }
}
