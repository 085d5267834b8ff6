//! A minimal WebSocket echo endpoint (RFC 6455): accepts the handshake and echoes text and
//! binary messages, answers pings, and returns close frames. Enough for a real client to talk to.

use http::header::{CONNECTION, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Largest message the echo accepts.
const MAX_PAYLOAD: u64 = 1 << 20;

/// Answers the handshake and echoes on the upgraded connection.
pub(super) fn accept(
    mut req: Request<Incoming>,
) -> Response<http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, hyper::Error>> {
    let empty = || Empty::new().map_err(|never| match never {}).boxed_unsync();
    let Some(key) = req.headers().get(SEC_WEBSOCKET_KEY).cloned() else {
        let mut r = Response::new(empty());
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::task::spawn_local(async move {
        if let Ok(io) = upgrade.await {
            let _ = echo_frames(TokioIo::new(io)).await;
        }
    });
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept_key(key.as_bytes())) {
        h.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

/// `Sec-WebSocket-Accept` for a client key.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID);
    base64(&sha.finalize())
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = c
            .iter()
            .chain(std::iter::repeat(&0))
            .take(3)
            .fold(0u32, |n, &b| (n << 8) | u32::from(b));
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            let sym = T.get(((n >> shift) & 63) as usize).copied().unwrap_or(b'=');
            out.push(if i <= c.len() { sym as char } else { '=' });
        }
    }
    out
}

async fn echo_frames<S: AsyncRead + AsyncWrite + Unpin>(mut io: S) -> std::io::Result<()> {
    loop {
        let [b0, b1] = {
            let mut head = [0u8; 2];
            io.read_exact(&mut head).await?;
            head
        };
        let opcode = b0 & 0x0f;
        let masked = b1 & 0x80 != 0;
        let mut len = u64::from(b1 & 0x7f);
        if len == 126 {
            len = u64::from(io.read_u16().await?);
        } else if len == 127 {
            len = io.read_u64().await?;
        }
        if len > MAX_PAYLOAD {
            return Ok(());
        }
        let mut mask = [0u8; 4];
        if masked {
            io.read_exact(&mut mask).await?;
        }
        let mut payload = vec![0u8; len as usize];
        io.read_exact(&mut payload).await?;
        if masked {
            for (b, m) in payload.iter_mut().zip(mask.iter().cycle()) {
                *b ^= m;
            }
        }
        let reply_opcode = match opcode {
            0x9 => 0xA,      // ping → pong
            0xA => continue, // unsolicited pong
            op => op,        // text, binary, continuation, close
        };
        let mut frame = vec![(b0 & 0x80) | reply_opcode];
        match payload.len() {
            n if n < 126 => frame.push(n as u8),
            n if n <= 0xffff => {
                frame.push(126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&payload);
        io.write_all(&frame).await?;
        if opcode == 0x8 {
            return io.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc6455_example_key() {
        assert_eq!(
            super::accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
