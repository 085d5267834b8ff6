//! HTTP/1.1 upgrades (WebSocket). The upstream handshake runs on a dedicated connection; only
//! once the upstream answers `101 Switching Protocols` is the client switched, and then bytes
//! flow both ways until either side closes.

use crate::cluster::Lease;
use crate::cluster::call::{self, Call, Upstream};
use crate::drain::Drain;
use crate::error::ProxyError;
use crate::http::body::ResponseBody;
use crate::http::finish::{ResponseMeta, finish};
use crate::http::headers;
use crate::message::reqbody::RequestBody;
use crate::tunnel::{self, Ended};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// Sends an upgrade request on a dedicated connection; switches on 101, otherwise returns the
/// upstream's answer as a normal response.
pub(crate) async fn forward(
    call: Call<'_>,
    req: Request<RequestBody>,
    downstream: OnUpgrade,
    drain: &Drain,
    meta: ResponseMeta<'_>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let (resp, active, endpoint) = call::send_upgrade(call, req).await?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        Ok(switch(resp, downstream, drain, &meta))
    } else {
        call::check_response(&resp, &call.cluster.metrics)?;
        let upstream = Upstream {
            response: resp,
            lease: Lease::None,
            active,
            endpoint,
            attempts: 1,
            retries_exhausted: false,
        };
        Ok(finish(&meta, upstream))
    }
}

/// Passes the upstream's 101 to the client and starts the tunnel in the background.
fn switch(
    mut upstream: Response<Incoming>,
    downstream: OnUpgrade,
    drain: &Drain,
    meta: &ResponseMeta<'_>,
) -> Response<ResponseBody> {
    let upstream_io = hyper::upgrade::on(&mut upstream);
    let tracked = drain.track();
    let watch = drain.watch();
    let route_name = meta.route.name.clone();
    tokio::task::spawn_local(async move {
        let _tracked = tracked;
        let (down, up) = match tokio::try_join!(downstream, upstream_io) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(route = %route_name, error = %e, "upgrade failed");
                return;
            }
        };
        // WebSocket has its own pings; an idle limit would cut quiet but healthy sockets.
        let spliced = tunnel::splice(TokioIo::new(down), TokioIo::new(up), None, watch, None).await;
        match spliced.ended {
            Ended::Closed(sent, received) => {
                tracing::debug!(route = %route_name, sent, received, "upgraded connection closed");
            }
            Ended::Error(e) => {
                tracing::debug!(route = %route_name, error = %e, "upgraded connection failed")
            }
            Ended::Idle | Ended::Drained => {
                tracing::debug!(route = %route_name, "upgraded connection closed by proxy")
            }
        }
    });
    let (mut parts, _) = upstream.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, true);
    let status = parts.status;
    meta.filters
        .on_response(status, &mut parts.headers, meta.vh, meta.route);
    Response::from_parts(parts, ResponseBody::empty())
}
