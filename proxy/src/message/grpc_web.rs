//! gRPC-Web (Envoy's `envoy.filters.http.grpc_web`), enabled per HTTP listener with
//! `grpc_web: true`: a gRPC-Web request (`application/grpc-web`, `-web+proto`, `-web-text`,
//! `-web-text+proto`) goes to the (HTTP/2) upstream as gRPC — `content-type: application/grpc`,
//! `te: trailers`, a text body base64-decoded as it streams — and the gRPC response comes back
//! as gRPC-Web: its trailers become a final length-prefixed frame with flag `0x80`
//! (`grpc-status: 0\r\ngrpc-message: …\r\n`), a text response is base64-encoded as it streams,
//! and the content type is mapped back. A trailers-only response keeps its status in the head.
//! CORS preflights are the route's business (they are not gRPC-Web requests).
//!
//! It runs ahead of the filter chain (as Envoy places it first): the request filters see a gRPC
//! request. It is not an `HttpFilter` object because it rewrites bodies, which that
//! trait does not see: the request path calls [`Mode::of`] and the body codecs here. Nothing is
//! buffered beyond base64 alignment (at most 3 bytes of text in, 2 bytes out).
//!
//! It lives in `message/` (not `http/filters/`) because the request body (`message/reqbody.rs`)
//! decodes with it and `message` must not depend on `http`.

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, TE};
use http::{HeaderMap, HeaderValue};

/// How a gRPC-Web request is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mode {
    /// `-text`: base64 bodies.
    pub(crate) text: bool,
    /// `+proto` was named.
    proto: bool,
}

impl Mode {
    /// The request's gRPC-Web mode, if its content type is one.
    pub(crate) fn of(headers: &HeaderMap) -> Option<Mode> {
        let ct = headers.get(CONTENT_TYPE)?.as_bytes();
        let rest = ct.strip_prefix(b"application/grpc-web")?;
        let (text, rest) = match rest.strip_prefix(b"-text") {
            Some(r) => (true, r),
            None => (false, rest),
        };
        let proto = match rest {
            b"" => false,
            b"+proto" => true,
            _ => return None,
        };
        Some(Mode { text, proto })
    }

    /// The `mode` label of `sluice_grpc_web_requests_total`.
    pub(crate) fn as_str(self) -> &'static str {
        if self.text { "text" } else { "binary" }
    }

    /// Rewrites the request head for the gRPC upstream.
    pub(crate) fn request_head(self, headers: &mut HeaderMap) {
        let ct = if self.proto {
            "application/grpc+proto"
        } else {
            "application/grpc"
        };
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
        headers.insert(TE, HeaderValue::from_static("trailers"));
        if self.text {
            // The decoded body is shorter.
            headers.remove(CONTENT_LENGTH);
        }
    }

    /// Rewrites a response head for the gRPC-Web client: the content type mapped back, no
    /// length (the body changes).
    pub(crate) fn response_head(self, headers: &mut HeaderMap) {
        let ct = match (self.text, self.proto) {
            (false, false) => "application/grpc-web",
            (false, true) => "application/grpc-web+proto",
            (true, false) => "application/grpc-web-text",
            (true, true) => "application/grpc-web-text+proto",
        };
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
        headers.remove(CONTENT_LENGTH);
    }
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn sextet(c: u8) -> Option<u8> {
    Some(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    })
}

/// Invalid base64 in a gRPC-Web text request body.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid base64 in a grpc-web-text request body")]
pub(crate) struct InvalidText;

/// Streaming base64 decoder for text request bodies: decodes whole quads as they arrive (each
/// may end in padding: clients may send separately padded chunks), keeps at most 3 characters.
#[derive(Debug, Default)]
pub(crate) struct TextDecoder {
    quad: [u8; 4],
    have: usize,
}

impl TextDecoder {
    /// Decodes a chunk; the bytes of every quad completed by it.
    pub(crate) fn decode(&mut self, input: &[u8]) -> Result<Bytes, InvalidText> {
        let mut out = BytesMut::with_capacity((self.have + input.len()) / 4 * 3);
        for &c in input {
            if c.is_ascii_whitespace() {
                continue;
            }
            let Some(slot) = self.quad.get_mut(self.have) else {
                return Err(InvalidText);
            };
            *slot = c;
            self.have += 1;
            if self.have == 4 {
                self.have = 0;
                decode_quad(self.quad, &mut out)?;
            }
        }
        Ok(out.freeze())
    }

    /// The body ended: characters left over are an incomplete quad.
    pub(crate) fn finish(&self) -> Result<(), InvalidText> {
        if self.have == 0 {
            Ok(())
        } else {
            Err(InvalidText)
        }
    }
}

fn decode_quad(q: [u8; 4], out: &mut BytesMut) -> Result<(), InvalidText> {
    let [a, b, c, d] = q;
    let (a, b) = (sextet(a).ok_or(InvalidText)?, sextet(b).ok_or(InvalidText)?);
    out.put_u8((a << 2) | (b >> 4));
    match (c, d) {
        (b'=', b'=') => {}
        (c, b'=') => {
            let c = sextet(c).ok_or(InvalidText)?;
            out.put_u8((b << 4) | (c >> 2));
        }
        (c, d) => {
            let (c, d) = (sextet(c).ok_or(InvalidText)?, sextet(d).ok_or(InvalidText)?);
            out.put_u8((b << 4) | (c >> 2));
            out.put_u8((c << 6) | d);
        }
    }
    Ok(())
}

fn encode_into(input: &[u8], out: &mut BytesMut) {
    let sym = |i: u32| ALPHABET.get((i & 63) as usize).copied().unwrap_or(b'=');
    let mut chunks = input.chunks_exact(3);
    for c in &mut chunks {
        let &[x, y, z] = c else { continue };
        let n = (u32::from(x) << 16) | (u32::from(y) << 8) | u32::from(z);
        out.put_slice(&[sym(n >> 18), sym(n >> 12), sym(n >> 6), sym(n)]);
    }
    match *chunks.remainder() {
        [a] => {
            let n = u32::from(a) << 16;
            out.put_slice(&[sym(n >> 18), sym(n >> 12), b'=', b'=']);
        }
        [a, b] => {
            let n = (u32::from(a) << 16) | (u32::from(b) << 8);
            out.put_slice(&[sym(n >> 18), sym(n >> 12), sym(n >> 6), b'=']);
        }
        _ => {}
    }
}

/// The response side: passes gRPC messages through (base64-encoded in text mode, carrying at
/// most 2 bytes to the next chunk so the output is one unpadded stream until its end) and turns
/// the trailers into the final `0x80` frame.
#[derive(Debug)]
pub(crate) struct ResponseEncoder {
    text: bool,
    carry: BytesMut,
    /// The final frame (or the end) has been produced.
    pub(crate) done: bool,
}

impl ResponseEncoder {
    pub(crate) fn new(mode: Mode) -> Self {
        ResponseEncoder {
            text: mode.text,
            carry: BytesMut::new(),
            done: false,
        }
    }

    /// A data chunk from the upstream; `None` when nothing is ready to send yet.
    pub(crate) fn data(&mut self, chunk: Bytes) -> Option<Bytes> {
        if !self.text {
            return Some(chunk);
        }
        self.carry.extend_from_slice(&chunk);
        let whole = self.carry.len() / 3 * 3;
        if whole == 0 {
            return None;
        }
        let ready = self.carry.split_to(whole);
        let mut out = BytesMut::with_capacity(whole / 3 * 4);
        encode_into(&ready, &mut out);
        Some(out.freeze())
    }

    /// The upstream's trailers: the final frame (after any carried bytes, in text mode).
    pub(crate) fn trailers(&mut self, trailers: &HeaderMap) -> Bytes {
        let mut block = Vec::new();
        for (name, value) in trailers {
            block.extend_from_slice(name.as_str().as_bytes());
            block.extend_from_slice(b": ");
            block.extend_from_slice(value.as_bytes());
            block.extend_from_slice(b"\r\n");
        }
        let mut frame = BytesMut::with_capacity(5 + block.len());
        frame.put_u8(0x80);
        frame.put_u32(u32::try_from(block.len()).unwrap_or(u32::MAX));
        frame.put_slice(&block);
        self.done = true;
        if !self.text {
            return frame.freeze();
        }
        self.carry.extend_from_slice(&frame);
        let all = std::mem::take(&mut self.carry);
        let mut out = BytesMut::with_capacity(all.len().div_ceil(3) * 4);
        encode_into(&all, &mut out);
        out.freeze()
    }

    /// The upstream body ended without trailers: what is still carried (text mode).
    pub(crate) fn finish(&mut self) -> Option<Bytes> {
        self.done = true;
        if self.carry.is_empty() {
            return None;
        }
        let all = std::mem::take(&mut self.carry);
        let mut out = BytesMut::with_capacity(4);
        encode_into(&all, &mut out);
        Some(out.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(input: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode_into(input, &mut out);
        out.to_vec()
    }

    #[test]
    fn modes_from_content_types() {
        let mode = |ct: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
            Mode::of(&h)
        };
        let m = |text, proto| Some(Mode { text, proto });
        assert_eq!(mode("application/grpc-web"), m(false, false));
        assert_eq!(mode("application/grpc-web+proto"), m(false, true));
        assert_eq!(mode("application/grpc-web-text"), m(true, false));
        assert_eq!(mode("application/grpc-web-text+proto"), m(true, true));
        assert_eq!(mode("application/grpc"), None);
        assert_eq!(mode("application/grpc-web+json"), None);
        assert_eq!(mode("application/grpc-webx"), None);
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/grpc-web-text"),
        );
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("12"));
        let text = Mode::of(&h).unwrap();
        text.request_head(&mut h);
        assert_eq!(h[CONTENT_TYPE], "application/grpc");
        assert_eq!(h[TE], "trailers");
        assert!(!h.contains_key(CONTENT_LENGTH));
        let mut r = HeaderMap::new();
        r.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        r.insert(CONTENT_LENGTH, HeaderValue::from_static("7"));
        text.response_head(&mut r);
        assert_eq!(r[CONTENT_TYPE], "application/grpc-web-text");
        assert!(!r.contains_key(CONTENT_LENGTH));
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(b64(plain.as_bytes()), enc.as_bytes());
            let mut d = TextDecoder::default();
            assert_eq!(&d.decode(enc.as_bytes()).unwrap()[..], plain.as_bytes());
            assert_eq!(d.finish(), Ok(()));
        }
    }

    #[test]
    fn text_decoding_in_every_split() {
        let plain: Vec<u8> = (0..=255u8).chain(0..40).collect();
        // Two separately padded segments, as a client may send them, with a line break.
        let mut text = b64(&plain[..100]);
        text.extend_from_slice(b"\r\n");
        text.extend_from_slice(&b64(&plain[100..]));
        for split in 0..=text.len() {
            let mut d = TextDecoder::default();
            let mut out = d.decode(&text[..split]).unwrap().to_vec();
            out.extend_from_slice(&d.decode(&text[split..]).unwrap());
            assert_eq!(out, plain, "split at {split}");
            assert_eq!(d.finish(), Ok(()));
        }
        // Byte by byte.
        let mut d = TextDecoder::default();
        let out: Vec<u8> = text
            .iter()
            .flat_map(|c| d.decode(&[*c]).unwrap().to_vec())
            .collect();
        assert_eq!(out, plain);
        for bad in [&b"ab*d"[..], b"a===", b"=abc", b"ab=c"] {
            assert_eq!(
                TextDecoder::default().decode(bad),
                Err(InvalidText),
                "{bad:?}"
            );
        }
        let mut d = TextDecoder::default();
        d.decode(b"Zm9").unwrap();
        assert_eq!(
            d.finish(),
            Err(InvalidText),
            "an incomplete quad at the end"
        );
    }

    fn trailers() -> HeaderMap {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        t.insert("grpc-message", HeaderValue::from_static("fine"));
        t
    }

    const FINAL: &[u8] = b"\x80\0\0\0\x24grpc-status: 0\r\ngrpc-message: fine\r\n";

    #[test]
    fn binary_responses_end_with_the_trailer_frame() {
        let mut e = ResponseEncoder::new(Mode {
            text: false,
            proto: false,
        });
        let msg = Bytes::from_static(b"\0\0\0\0\x02hi");
        assert_eq!(e.data(msg.clone()), Some(msg));
        assert!(!e.done);
        assert_eq!(&e.trailers(&trailers())[..], FINAL);
        assert!(e.done);
    }

    #[test]
    fn text_responses_are_one_base64_stream_in_every_split() {
        let msg: Vec<u8> = b"\0\0\0\0\x0bhello world".to_vec();
        let mut whole = msg.clone();
        whole.extend_from_slice(FINAL);
        let want = b64(&whole);
        for split in 0..=msg.len() {
            let mut e = ResponseEncoder::new(Mode {
                text: true,
                proto: true,
            });
            let mut out = Vec::new();
            for part in [&msg[..split], &msg[split..]] {
                if let Some(b) = e.data(Bytes::copy_from_slice(part)) {
                    out.extend_from_slice(&b);
                }
            }
            assert!(e.carry.len() < 3, "at most 2 bytes carried");
            out.extend_from_slice(&e.trailers(&trailers()));
            assert_eq!(out, want, "split at {split}");
        }
        // Without trailers the carried bytes are flushed, padded.
        let mut e = ResponseEncoder::new(Mode {
            text: true,
            proto: false,
        });
        assert_eq!(e.data(Bytes::from_static(b"ab")), None);
        assert_eq!(e.finish().as_deref(), Some(&b"YWI="[..]));
    }
}
