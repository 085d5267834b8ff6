//! gRPC health checks: the standard `grpc.health.v1.Health/Check` over HTTP/2 cleartext (prior
//! knowledge). The request and response messages are tiny, so they are encoded by hand:
//! `HealthCheckRequest { string service = 1; }` and
//! `HealthCheckResponse { ServingStatus status = 1; }` (`SERVING` = 1). Healthy means a 200
//! with a gRPC content type, a `SERVING` answer and `grpc-status` 0.

use super::http::{Client, USER_AGENT_VALUE, read_body, send};
use super::{Failure, Spec};
use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_TYPE, TE, USER_AGENT};
use http::{HeaderMap, Request};
use http_body_util::Full;
use std::net::SocketAddr;

/// The health service's method.
const PATH: &str = "/grpc.health.v1.Health/Check";

/// `ServingStatus.SERVING`.
pub(crate) const SERVING: u64 = 1;

/// One gRPC check.
pub(super) async fn check(
    slot: &mut Option<Client>,
    spec: &Spec,
    addr: SocketAddr,
    service: &str,
    authority: &str,
) -> Result<(), Failure> {
    let body = encode_request(service);
    let uri = format!("http://{authority}{PATH}");
    let make = || {
        Request::post(uri.as_str())
            .header(CONTENT_TYPE, "application/grpc")
            .header(TE, "trailers")
            .header(USER_AGENT, USER_AGENT_VALUE)
            .body(Full::new(body.clone()))
            .unwrap_or_default()
    };
    if make().uri().path() != PATH {
        return Err(Failure::Request(format!(
            "`{authority}` is not a valid :authority"
        )));
    }
    let (client, resp) = send(slot, spec, addr, true, make).await?;
    let status = resp.status().as_u16();
    let is_grpc = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    let head = resp.headers().clone();
    let collected = read_body(resp.into_body()).await?;
    *slot = Some(client);
    if status != 200 {
        return Err(Failure::Status(status));
    }
    if !is_grpc {
        return Err(Failure::Protocol("not a gRPC content type".into()));
    }
    // Trailers, or the headers of a trailers-only answer.
    let trailers = collected.trailers().cloned();
    check_grpc_status(trailers.as_ref().unwrap_or(&head))?;
    match decode_response(&collected.to_bytes()).map_err(Failure::Protocol)? {
        SERVING => Ok(()),
        other => Err(Failure::NotServing(other)),
    }
}

fn check_grpc_status(h: &HeaderMap) -> Result<(), Failure> {
    match h.get("grpc-status").map(|v| v.as_bytes()) {
        Some(b"0") => Ok(()),
        Some(code) => {
            let message = h
                .get("grpc-message")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            Err(Failure::GrpcStatus(format!(
                "{} {message}",
                String::from_utf8_lossy(code)
            )))
        }
        None => Err(Failure::Protocol("no grpc-status".into())),
    }
}

/// The name of a `ServingStatus`.
pub(crate) fn status_name(status: u64) -> &'static str {
    match status {
        0 => "UNKNOWN",
        1 => "SERVING",
        2 => "NOT_SERVING",
        3 => "SERVICE_UNKNOWN",
        _ => "unrecognised",
    }
}

/// A length-prefixed, uncompressed gRPC message holding `HealthCheckRequest { service }`.
pub(crate) fn encode_request(service: &str) -> Bytes {
    let mut msg = Vec::with_capacity(service.len() + 6);
    if !service.is_empty() {
        msg.push(0x0a); // field 1, length-delimited
        put_varint(&mut msg, service.len() as u64);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut out = BytesMut::with_capacity(5 + msg.len());
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&u32::try_from(msg.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&msg);
    out.freeze()
}

/// The `status` of the first message of a gRPC response body (0, `UNKNOWN`, when absent, as
/// protobuf defaults it).
pub(crate) fn decode_response(body: &[u8]) -> Result<u64, String> {
    let (&flag, rest) = body.split_first().ok_or("empty body")?;
    if flag != 0 {
        return Err("compressed message".into());
    }
    let (len, rest) = rest.split_at_checked(4).ok_or("truncated message prefix")?;
    let len = u32::from_be_bytes(len.try_into().map_err(|_| "truncated message prefix")?) as usize;
    let mut msg = rest.get(..len).ok_or("truncated message")?;
    let mut status = 0;
    while !msg.is_empty() {
        let key = take_varint(&mut msg)?;
        match key & 7 {
            0 => {
                let v = take_varint(&mut msg)?;
                if key >> 3 == 1 {
                    status = v;
                }
            }
            1 => msg = msg.get(8..).ok_or("truncated field")?,
            2 => {
                let n = usize::try_from(take_varint(&mut msg)?).map_err(|_| "field too long")?;
                msg = msg.get(n..).ok_or("truncated field")?;
            }
            5 => msg = msg.get(4..).ok_or("truncated field")?,
            t => return Err(format!("unsupported wire type {t}")),
        }
    }
    Ok(status)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_varint(buf: &mut &[u8]) -> Result<u64, String> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first().ok_or("truncated varint")?;
        *buf = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint too long".into())
}
