//! Validates the chunked framing of HTTP/1.1 request bodies as their bytes are read (RFC 9112
//! §7.1), where hyper's decoder is more lenient than the grammar: it accepts any byte but CR and
//! LF inside a chunk extension (control bytes, unbalanced quotes, a `;` with no name) and
//! whitespace between the chunk size and the CRLF, and takes trailer lines as they come. Framing
//! a proxy reads differently from the upstream is how requests are smuggled, so `ConnIo` feeds
//! the body bytes of every chunked request here and fails the read at the first byte that
//! breaks the grammar; the request then ends as a 400 like any body hyper rejects.
//!
//! The same scanner skips `Content-Length` bodies ([`ChunkedScan::start_length`]), so the
//! connection's head scan knows where the next pipelined request starts.
//!
//! ```text
//! chunked-body = *chunk last-chunk trailer-section CRLF
//! chunk        = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
//! chunk-ext    = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] )
//! ext-val      = token / quoted-string
//! ```

/// Longest chunk-size in hex digits (a `u64`); more is an overflow.
const MAX_SIZE_DIGITS: u8 = 16;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum State {
    /// Not in a body.
    #[default]
    Idle,
    /// Inside a `Content-Length` body: `size` bytes remain.
    Fixed,
    SizeStart,
    Size,
    /// Whitespace after the size: only a `;` may follow.
    SizeBws,
    ExtNameStart,
    ExtName,
    ExtNameBws,
    ExtValStart,
    ExtToken,
    ExtQuoted,
    ExtQuotedEscape,
    /// After an extension value: whitespace, then `;` or CR.
    ExtValEnd,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerLineStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    /// The body ended; what follows is the next request.
    Done,
    /// A violation was found.
    Invalid,
}

/// What [`ChunkedScan::feed`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fed {
    /// Every byte belongs to the body (or nothing is being scanned); more may follow.
    More,
    /// The body ended; the next request starts at this offset.
    Done(usize),
    /// The byte at this offset breaks the chunked grammar.
    Invalid(usize),
}

/// Streaming validator of one chunked body (or skipper of one `Content-Length` body).
#[derive(Debug, Default)]
pub(crate) struct ChunkedScan {
    state: State,
    size: u64,
    digits: u8,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn is_qdtext(b: u8) -> bool {
    is_ws(b) || b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b) || b >= 0x80
}

impl ChunkedScan {
    /// A chunked body starts with the next byte.
    pub(crate) fn start(&mut self) {
        *self = ChunkedScan {
            state: State::SizeStart,
            ..ChunkedScan::default()
        };
    }

    /// A body of `len` (> 0) bytes starts with the next byte.
    pub(crate) fn start_length(&mut self, len: u64) {
        *self = ChunkedScan {
            state: State::Fixed,
            size: len,
            digits: 0,
        };
    }

    /// Feeds body bytes: where the body ends, or the first byte that breaks the grammar.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Fed {
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            match self.state {
                State::Idle | State::Done => return Fed::More,
                State::Invalid => return Fed::Invalid(i),
                State::Fixed => {
                    let left = bytes.len() - i;
                    let take = usize::try_from(self.size).map_or(left, |s| s.min(left));
                    self.size -= take as u64;
                    i += take;
                    if self.size == 0 {
                        self.state = State::Done;
                        return Fed::Done(i);
                    }
                    continue;
                }
                State::Data => {
                    // Skip the chunk's data at once.
                    let left = bytes.len() - i;
                    let take = usize::try_from(self.size).map_or(left, |s| s.min(left));
                    self.size -= take as u64;
                    i += take;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                _ => {}
            }
            self.state = self.step(b);
            i += 1;
            match self.state {
                State::Invalid => return Fed::Invalid(i - 1),
                State::Done => return Fed::Done(i),
                _ => {}
            }
        }
        Fed::More
    }

    fn step(&mut self, b: u8) -> State {
        use State::*;
        match (self.state, b) {
            (SizeStart | Size, b) if b.is_ascii_hexdigit() => {
                self.digits += 1;
                if self.digits > MAX_SIZE_DIGITS {
                    return Invalid;
                }
                // Cannot overflow: at most 16 hex digits.
                let digit = char::from(b).to_digit(16).unwrap_or_default();
                self.size = (self.size << 4) | u64::from(digit);
                Size
            }
            (Size, b';') | (SizeBws, b';') => ExtNameStart,
            (Size, b) if is_ws(b) => SizeBws,
            (SizeBws, b) if is_ws(b) => SizeBws,
            (Size, b'\r') => SizeLf,
            (ExtNameStart, b) if is_ws(b) => ExtNameStart,
            (ExtNameStart | ExtName, b) if is_tchar(b) => ExtName,
            (ExtName | ExtNameBws, b) if is_ws(b) => ExtNameBws,
            (ExtName | ExtNameBws, b'=') => ExtValStart,
            (ExtName | ExtNameBws | ExtValEnd | ExtToken, b';') => ExtNameStart,
            (ExtName | ExtToken | ExtValEnd, b'\r') => SizeLf,
            (ExtValStart, b) if is_ws(b) => ExtValStart,
            (ExtValStart, b'"') => ExtQuoted,
            (ExtValStart | ExtToken, b) if is_tchar(b) => ExtToken,
            (ExtToken | ExtValEnd, b) if is_ws(b) => ExtValEnd,
            (ExtQuoted, b'"') => ExtValEnd,
            (ExtQuoted, b'\\') => ExtQuotedEscape,
            (ExtQuoted, b) if is_qdtext(b) => ExtQuoted,
            (ExtQuotedEscape, b) if is_ws(b) || (0x21..=0x7e).contains(&b) || b >= 0x80 => {
                ExtQuoted
            }
            (SizeLf, b'\n') if self.size == 0 => TrailerLineStart,
            (SizeLf, b'\n') => Data,
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => {
                self.digits = 0;
                SizeStart
            }
            (TrailerLineStart, b'\r') => EndLf,
            // A field line: no bare LF, no control bytes but HTAB, and no obs-fold.
            (TrailerLineStart, b) if is_ws(b) => Invalid,
            (TrailerLineStart | TrailerLine, b) if b == b'\t' || (b >= 0x20 && b != 0x7f) => {
                TrailerLine
            }
            (TrailerLine, b'\r') => TrailerLf,
            (TrailerLf, b'\n') => TrailerLineStart,
            (EndLf, b'\n') => Done,
            _ => Invalid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(chunks: &[&[u8]]) -> Option<usize> {
        let mut s = ChunkedScan::default();
        s.start();
        let mut offset = 0;
        for c in chunks {
            match s.feed(c) {
                Fed::Invalid(i) => return Some(offset + i),
                Fed::Done(_) => return None,
                Fed::More => {}
            }
            offset += c.len();
        }
        None
    }

    #[test]
    fn the_end_of_the_body_is_reported() {
        let mut s = ChunkedScan::default();
        s.start();
        assert_eq!(s.feed(b"5\r\nhello\r\n0\r\n\r\nGET"), Fed::Done(15));
        s.start();
        assert_eq!(s.feed(b"0\r\n\r"), Fed::More);
        assert_eq!(s.feed(b"\nGET"), Fed::Done(1));
        s.start_length(5);
        assert_eq!(s.feed(b"hel"), Fed::More);
        assert_eq!(s.feed(b"loGET"), Fed::Done(2));
        s.start_length(3);
        assert_eq!(s.feed(b"abc"), Fed::Done(3));
    }

    #[test]
    fn valid_bodies_pass_in_any_split() {
        let body: &[u8] =
            b"5\r\nhello\r\na;n=v;q=\"x y\\\"z\" ; m\r\n0123456789\r\n0\r\nx-t: 1\r\n\r\nGET";
        assert_eq!(check(&[body]), None);
        for i in 0..body.len() {
            let (a, b) = body.split_at(i);
            assert_eq!(check(&[a, b]), None, "split at {i}");
        }
        assert_eq!(check(&[b"0\r\n\r\n"]), None);
        assert_eq!(check(&[b"5 ;a=b\r\nhello\r\n0\r\n\r\n"]), None);
    }

    #[test]
    fn violations_are_found_at_their_byte() {
        for (body, at) in [
            (&b"zz\r\n"[..], 0),
            (b"\r\nhello", 0),
            (b" 5\r\n", 0),
            (b"0x5\r\n", 1),
            (b"10000000000000000\r\n", 16),
            (b"5 \r\nhello", 2),
            (b"5;a\rb\r\n", 4),
            (b"5;\x01\r\n", 2),
            (b"5;a=\"x\r\n", 6),
            (b"5;\r\n", 2),
            (b"5\nhello", 1),
            (b"5\r\nhello\n", 8),
            (b"0\r\nx: 1\n\r\n", 7),
            (b"0\r\n x: 1\r\n\r\n", 3),
            (b"0\r\nx: \x00\r\n\r\n", 6),
        ] {
            assert_eq!(
                check(&[body]),
                Some(at),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn idle_scan_sees_nothing() {
        let mut s = ChunkedScan::default();
        assert_eq!(s.feed(b"\x00\x01 garbage"), Fed::More);
        s.start();
        assert_eq!(s.feed(b"0\r\n\r\n"), Fed::Done(5));
        assert_eq!(s.feed(b"anything after the end"), Fed::More);
    }
}
