//! Finds `Content-Length` and `Transfer-Encoding` in a raw HTTP/1.1 request head. hyper quietly
//! drops `Content-Length` when both are present (the RFC's tolerant path), which leaves no trace
//! in the parsed headers; Sluice instead rejects the request with 400 and closes the connection,
//! as Envoy and nginx do. The scan jumps from line to line with `memchr` and stops at the end of
//! the head, so it costs a few comparisons per header line.
//!
//! [`H1Scan`] runs it over every head of a connection, pipelined or not: after each head it
//! follows the body (`Content-Length` bytes, or a chunked body to its end) to the next head, so
//! a second request in the same read is policed like the first.

use crate::http::chunked::{ChunkedScan, Fed};

const CL: &[u8] = b"content-length:";
const TE: &[u8] = b"transfer-encoding:";
/// Longest name prefix we need to see per line.
const WANT: usize = 18;

/// Where the scanner is within the head (one byte, with the parsing state folded in: every
/// connection carries this scanner).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Mode {
    /// Not scanning a head (it ended, or none was started).
    #[default]
    Done,
    /// Before the request line: empty lines are skipped (as hyper's parser does).
    Leading,
    /// Collecting the start of a line.
    Collecting,
    /// Skipping to the end of a line.
    Skipping,
    /// Parsing a `Content-Length` value.
    Value(Value),
}

/// A `Content-Length` value is a comma-separated list of equal decimal numbers with optional
/// whitespace around each (what hyper accepts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Value {
    Start,
    Digits,
    Trail,
    Cr,
}

/// Streaming scanner over the bytes of one request head.
#[derive(Debug, Default)]
pub(crate) struct HeadScan {
    /// First bytes of the current line (lowercased), while still collecting them.
    line: [u8; WANT],
    /// `u8`: every connection carries this scanner, and a byte fits `WANT`.
    line_len: u8,
    mode: Mode,
    saw_cl: bool,
    saw_te: bool,
    /// A `Content-Length` value hyper would refuse (or lists that disagree).
    cl_invalid: bool,
    /// A `Content-Length` number was parsed.
    cl_set: bool,
    /// The `Content-Length` value (valid once `cl_set` and not `cl_invalid`).
    cl: u64,
    /// The number being parsed.
    cur: u64,
}

impl HeadScan {
    /// Starts scanning a new head.
    pub(crate) fn start(&mut self) {
        *self = HeadScan {
            mode: Mode::Leading,
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
        let was_active = self.is_active();
        while self.is_active() && !bytes.is_empty() {
            bytes = match self.mode {
                Mode::Done => break,
                Mode::Leading => {
                    let skip = bytes
                        .iter()
                        .take_while(|&&b| b == b'\r' || b == b'\n')
                        .count();
                    if skip < bytes.len() {
                        self.mode = Mode::Collecting;
                    }
                    bytes.get(skip..).unwrap_or_default()
                }
                Mode::Collecting => self.collect(bytes),
                Mode::Skipping => match memchr::memchr(b'\n', bytes) {
                    Some(i) => {
                        self.new_line();
                        bytes.get(i + 1..).unwrap_or_default()
                    }
                    None => break,
                },
                Mode::Value(v) => self.value(v, bytes),
            };
        }
        let rest = (was_active && !self.is_active()).then_some(bytes);
        (self.saw_cl && self.saw_te, rest)
    }

    /// The head had a `Transfer-Encoding` header: hyper accepts such a request only with a
    /// chunked body.
    pub(crate) fn saw_transfer_encoding(&self) -> bool {
        self.saw_te
    }

    /// The head's `Content-Length`, if it had a valid one.
    pub(crate) fn content_length(&self) -> Option<u64> {
        (self.cl_set && !self.cl_invalid).then_some(self.cl)
    }

    /// The head had a `Content-Length` hyper refuses (so the scan cannot follow its body).
    pub(crate) fn content_length_invalid(&self) -> bool {
        self.cl_invalid
    }

    fn is_active(&self) -> bool {
        self.mode != Mode::Done
    }

    fn new_line(&mut self) {
        self.mode = Mode::Collecting;
        self.line_len = 0;
    }

    /// Collects the start of a line; returns the unconsumed rest.
    fn collect<'a>(&mut self, bytes: &'a [u8]) -> &'a [u8] {
        for (i, &b) in bytes.iter().enumerate() {
            if b == b'\n' {
                // An empty line (or a lone CR) ends the head.
                if self.line_len == 0 || (self.line_len == 1 && self.line[0] == b'\r') {
                    self.mode = Mode::Done;
                    return bytes.get(i + 1..).unwrap_or_default();
                }
                self.line_len = 0;
                return bytes.get(i + 1..).unwrap_or_default();
            }
            // Only lines starting with `c` or `t` can be either header (or a CR ending the
            // head); skip the rest of any other line at memchr speed.
            if self.line_len == 0 && !matches!(b, b'c' | b'C' | b't' | b'T' | b'\r') {
                self.mode = Mode::Skipping;
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
                self.mode = Mode::Skipping;
                if start.starts_with(CL) {
                    self.saw_cl = true;
                    self.cur = 0;
                    self.mode = Mode::Value(Value::Start);
                } else if start.starts_with(TE) {
                    self.saw_te = true;
                }
                return bytes.get(i + 1..).unwrap_or_default();
            }
        }
        &[]
    }

    /// Parses a `Content-Length` value; returns the unconsumed rest.
    fn value<'a>(&mut self, mut state: Value, bytes: &'a [u8]) -> &'a [u8] {
        for (i, &b) in bytes.iter().enumerate() {
            let next = match (state, b) {
                (Value::Start, b'\n') => None,
                (_, b'\n') => {
                    self.element();
                    self.new_line();
                    return bytes.get(i + 1..).unwrap_or_default();
                }
                (Value::Start | Value::Trail, b' ' | b'\t') => Some(state),
                (Value::Start | Value::Digits, b'0'..=b'9') => self
                    .cur
                    .checked_mul(10)
                    .and_then(|n| n.checked_add(u64::from(b - b'0')))
                    .map(|n| {
                        self.cur = n;
                        Value::Digits
                    }),
                (Value::Digits, b' ' | b'\t') => Some(Value::Trail),
                (Value::Digits | Value::Trail, b',') => {
                    self.element();
                    self.cur = 0;
                    Some(Value::Start)
                }
                (Value::Digits | Value::Trail, b'\r') => Some(Value::Cr),
                _ => None,
            };
            match next {
                Some(n) => state = n,
                None => {
                    self.cl_invalid = true;
                    if b == b'\n' {
                        self.new_line();
                    } else {
                        self.mode = Mode::Skipping;
                    }
                    return bytes.get(i + 1..).unwrap_or_default();
                }
            }
        }
        self.mode = Mode::Value(state);
        &[]
    }

    /// One number of a `Content-Length` list: every one must be the same.
    fn element(&mut self) {
        if self.cl_set && self.cl != self.cur {
            self.cl_invalid = true;
        }
        self.cl = self.cur;
        self.cl_set = true;
    }
}

/// The scan of an HTTP/1.1 connection's request stream: every head is scanned for
/// `Content-Length` with `Transfer-Encoding`, and every body is followed (a `Content-Length`
/// body skipped by its length, a chunked one checked by [`ChunkedScan`]) to find where the next
/// pipelined head starts. A head and its body are never scanned at once, so they share the
/// storage (every connection's task carries this).
#[derive(Debug)]
pub(crate) enum H1Scan {
    Head(HeadScan),
    Body(ChunkedScan),
    /// Stopped for good: a CL+TE head (the connection closes), a body grammar violation, or a
    /// `Content-Length` hyper refuses.
    Stopped,
}

/// What [`H1Scan::feed`] found in one read.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Found {
    /// The number of a head with both `Content-Length` and `Transfer-Encoding`.
    pub(crate) cl_te_head: Option<u32>,
    /// The offset of the first byte that breaks a chunked body's grammar.
    pub(crate) invalid_at: Option<usize>,
}

/// The next head number (skipping 0, which means "none").
pub(crate) fn next_head(n: u32) -> u32 {
    n.wrapping_add(1).max(1)
}

fn new_head() -> H1Scan {
    let mut head = HeadScan::default();
    head.start();
    H1Scan::Head(head)
}

impl Default for H1Scan {
    fn default() -> Self {
        new_head()
    }
}

impl H1Scan {
    /// Feeds the bytes of one read. `heads` counts the heads seen on the connection (wrapping,
    /// never 0); the request hyper hands over next is matched against it.
    pub(crate) fn feed(&mut self, bytes: &[u8], heads: &mut u32) -> Found {
        let mut found = Found::default();
        let mut at = 0;
        loop {
            let rest = bytes.get(at..).unwrap_or_default();
            let next = match self {
                H1Scan::Stopped => break,
                H1Scan::Head(head) => {
                    let (cl_te, body) = head.feed_split(rest);
                    let Some(body) = body else { break };
                    at = bytes.len() - body.len();
                    *heads = next_head(*heads);
                    if cl_te {
                        found.cl_te_head = Some(*heads);
                        H1Scan::Stopped
                    } else if head.content_length_invalid() {
                        H1Scan::Stopped
                    } else if head.saw_transfer_encoding() {
                        let mut c = ChunkedScan::default();
                        c.start();
                        H1Scan::Body(c)
                    } else if let Some(len) = head.content_length().filter(|&n| n > 0) {
                        let mut c = ChunkedScan::default();
                        c.start_length(len);
                        H1Scan::Body(c)
                    } else {
                        new_head()
                    }
                }
                H1Scan::Body(body) => match body.feed(rest) {
                    Fed::More => break,
                    Fed::Done(i) => {
                        at += i;
                        new_head()
                    }
                    Fed::Invalid(i) => {
                        found.invalid_at = Some(at + i);
                        H1Scan::Stopped
                    }
                },
            };
            *self = next;
            if at >= bytes.len() {
                break;
            }
        }
        found
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

    fn h1(chunks: &[&[u8]]) -> Vec<Found> {
        let mut s = H1Scan::default();
        let mut heads = 0;
        chunks.iter().map(|c| s.feed(c, &mut heads)).collect()
    }

    #[test]
    fn pipelined_heads_are_all_scanned() {
        let two = b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloPOST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(h1(&[two])[0].cl_te_head, Some(2));
        // In any split.
        for i in 0..two.len() {
            let (a, b) = two.split_at(i);
            let f = h1(&[a, b]);
            assert_eq!(f.iter().find_map(|f| f.cl_te_head), Some(2), "split at {i}");
        }
        // After a chunked body, and after bodiless heads (with leading empty lines).
        let three = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n\r\nGET / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(h1(&[three])[0].cl_te_head, Some(3));
    }

    #[test]
    fn leading_empty_lines_do_not_hide_a_head() {
        let f = h1(&[
            b"\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        ]);
        assert_eq!(f[0].cl_te_head, Some(1));
    }

    #[test]
    fn bodies_are_skipped_not_scanned() {
        // A Content-Length body that looks like a head is not one.
        let body = b"Transfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n";
        let req = format!("POST / HTTP/1.1\r\ncontent-length: {}\r\n\r\n", body.len());
        let f = h1(&[req.as_bytes(), body, b"GET / HTTP/1.1\r\n\r\n"]);
        assert!(f.iter().all(|f| *f == Found::default()), "{f:?}");
    }

    #[test]
    fn content_length_values() {
        for (v, want) in [
            ("5", Some(5)),
            (" 5 ", Some(5)),
            ("5, 5", Some(5)),
            ("5,5 ,\t5", Some(5)),
            ("18446744073709551615", Some(u64::MAX)),
            ("5, 6", None),
            ("5,", None),
            ("", None),
            ("+5", None),
            ("0x5", None),
            ("18446744073709551616", None),
        ] {
            let mut s = HeadScan::default();
            s.start();
            let head = format!("POST / HTTP/1.1\r\nContent-Length: {v}\r\nHost: x\r\n\r\n");
            assert!(s.feed_split(head.as_bytes()).1.is_some(), "{v:?}");
            assert_eq!(s.content_length(), want, "{v:?}");
            assert_eq!(s.content_length_invalid(), want.is_none(), "{v:?}");
        }
        // Two lines must agree.
        let mut s = HeadScan::default();
        s.start();
        s.feed(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n");
        assert!(s.content_length_invalid());
    }

    #[test]
    fn a_bad_chunked_body_is_reported_at_its_offset() {
        let f = h1(&[b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello"]);
        assert_eq!(f[0].invalid_at, Some(49));
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
