//! Finds `Content-Length` and `Transfer-Encoding` in a raw HTTP/1.1 request head. hyper quietly
//! drops `Content-Length` when both are present (the RFC's tolerant path), which leaves no trace
//! in the parsed headers; Sluice instead rejects the request with 400 and closes the connection,
//! as Envoy and nginx do. The scan jumps from line to line with `memchr` and stops at the end of
//! the head, so it costs a few comparisons per header line.

const CL: &[u8] = b"content-length:";
const TE: &[u8] = b"transfer-encoding:";
/// Longest name prefix we need to see per line.
const WANT: usize = 18;

/// Streaming scanner over the bytes of one request head.
#[derive(Debug, Default)]
pub(crate) struct HeadScan {
    active: bool,
    /// First bytes of the current line (lowercased), while still collecting them.
    line: [u8; WANT],
    /// `u8`: every connection carries this scanner, and a byte fits `WANT`.
    line_len: u8,
    collecting: bool,
    saw_cl: bool,
    saw_te: bool,
}

impl HeadScan {
    /// Starts scanning a new head.
    pub(crate) fn start(&mut self) {
        *self = HeadScan {
            active: true,
            collecting: true,
            ..HeadScan::default()
        };
    }

    /// Feeds bytes read from the connection; returns true once the head has shown both headers.
    #[cfg(test)]
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> bool {
        self.feed_split(bytes).0
    }

    /// Like [`HeadScan::feed`]; also returns, when the head ends within `bytes`, the bytes after
    /// it (the start of the body, possibly empty).
    pub(crate) fn feed_split<'a>(&mut self, mut bytes: &'a [u8]) -> (bool, Option<&'a [u8]>) {
        let was_active = self.active;
        while self.active && !bytes.is_empty() {
            if self.collecting {
                bytes = self.collect(bytes);
            } else {
                match memchr::memchr(b'\n', bytes) {
                    Some(i) => {
                        bytes = bytes.get(i + 1..).unwrap_or_default();
                        self.collecting = true;
                        self.line_len = 0;
                    }
                    None => break,
                }
            }
        }
        let rest = (was_active && !self.active).then_some(bytes);
        (self.saw_cl && self.saw_te, rest)
    }

    /// The head had a `Transfer-Encoding` header: hyper accepts such a request only with a
    /// chunked body.
    pub(crate) fn saw_transfer_encoding(&self) -> bool {
        self.saw_te
    }

    /// Collects the start of a line; returns the unconsumed rest.
    fn collect<'a>(&mut self, bytes: &'a [u8]) -> &'a [u8] {
        for (i, &b) in bytes.iter().enumerate() {
            if b == b'\n' {
                // An empty line (or a lone CR) ends the head.
                if self.line_len == 0 || (self.line_len == 1 && self.line[0] == b'\r') {
                    self.active = false;
                    return bytes.get(i + 1..).unwrap_or_default();
                }
                self.line_len = 0;
                return bytes.get(i + 1..).unwrap_or_default();
            }
            // Only lines starting with `c` or `t` can be either header (or a CR ending the
            // head); skip the rest of any other line at memchr speed.
            if self.line_len == 0 && !matches!(b, b'c' | b'C' | b't' | b'T' | b'\r') {
                self.collecting = false;
                return bytes.get(i + 1..).unwrap_or_default();
            }
            if let Some(slot) = self.line.get_mut(usize::from(self.line_len)) {
                *slot = b.to_ascii_lowercase();
                self.line_len += 1;
            }
            if usize::from(self.line_len) == WANT || b == b':' {
                let start = self
                    .line
                    .get(..usize::from(self.line_len))
                    .unwrap_or_default();
                if start.starts_with(CL) {
                    self.saw_cl = true;
                } else if start.starts_with(TE) {
                    self.saw_te = true;
                }
                self.collecting = false;
                return bytes.get(i + 1..).unwrap_or_default();
            }
        }
        &[]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> bool {
        let mut s = HeadScan::default();
        s.start();
        chunks.iter().fold(false, |_, c| s.feed(c))
    }

    #[test]
    fn finds_both_in_either_order_and_case() {
        assert!(scan(&[b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"]));
        assert!(scan(&[
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\nCONTENT-LENGTH: 5\r\n\r\n"
        ]));
    }

    #[test]
    fn one_alone_is_fine() {
        assert!(!scan(&[
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
        ]));
        assert!(!scan(&[
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        ]));
        assert!(!scan(&[
            b"GET / HTTP/1.1\r\nX-Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        ]));
    }

    #[test]
    fn split_across_reads() {
        assert!(scan(&[
            b"POST / HTTP/1.1\r\nConte",
            b"nt-Len",
            b"gth: 5\r\nTransfer-",
            b"Encoding: chunked\r\n\r\n"
        ]));
        assert!(scan(&[
            b"POST / HTTP/1.1\r",
            b"\nContent-Length: 5\r\n",
            b"Transfer-Encoding: x\r\n",
            b"\r\n"
        ]));
    }

    #[test]
    fn the_body_start_is_returned_once() {
        let mut s = HeadScan::default();
        s.start();
        assert_eq!(
            s.feed_split(b"POST / HTTP/1.1\r\nTransfer-Enc"),
            (false, None)
        );
        assert_eq!(
            s.feed_split(b"oding: chunked\r\n\r\n5\r\nhel"),
            (false, Some(&b"5\r\nhel"[..]))
        );
        assert!(s.saw_transfer_encoding());
        assert_eq!(s.feed_split(b"lo\r\n"), (false, None));
        s.start();
        assert_eq!(s.feed_split(b"GET / HTTP/1.1\r\n\r"), (false, None));
        assert_eq!(s.feed_split(b"\n"), (false, Some(&b""[..])));
        assert!(!s.saw_transfer_encoding());
    }

    #[test]
    fn body_after_head_is_not_scanned() {
        assert!(!scan(&[
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"20\r\n\r\nContent-Length: 5\r\n\r\n"
        ]));
        assert!(!scan(&[
            b"POST / HTTP/1.1\nTransfer-Encoding: chunked\n\nContent-Length: 5\n"
        ]));
    }
}
