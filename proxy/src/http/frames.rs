//! HTTP/2 frame boundaries on a downstream connection's read side, for the header timeout: a
//! header block (a HEADERS or PUSH_PROMISE frame and the CONTINUATION frames up to the one
//! flagged END_HEADERS) cannot interleave with other frames (RFC 9113 §4.3), so walking the
//! 9-byte frame headers and skipping payloads by their length tells exactly when a block is in
//! progress. So does the connection's start: the client preface and its first frame (which
//! must be SETTINGS). A few comparisons per frame; payload bytes are never looked at.

/// The client preface's length (RFC 9113 §3.4); detection has already checked its bytes.
const PREFACE_LEN: u8 = 24;
const FRAME_HEADER_LEN: u8 = 9;
const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

/// Streaming frame-boundary tracker over the bytes a server reads.
#[derive(Debug)]
pub(crate) struct FrameScan {
    /// Preface bytes still to skip.
    preface_left: u8,
    /// The frame header being collected.
    header: [u8; FRAME_HEADER_LEN as usize],
    header_len: u8,
    /// Payload bytes of the current frame still to skip.
    payload_left: u32,
    /// The current frame ends the header block (or the connection's start) once read.
    ends_block: bool,
    /// A header block (or the preface and first frame) is in progress.
    in_block: bool,
    /// The first frame after the preface has not been seen yet.
    first: bool,
}

impl Default for FrameScan {
    fn default() -> Self {
        FrameScan {
            preface_left: PREFACE_LEN,
            header: [0; FRAME_HEADER_LEN as usize],
            header_len: 0,
            payload_left: 0,
            ends_block: false,
            // The preface and the first SETTINGS are timed like a header block.
            in_block: true,
            first: true,
        }
    }
}

/// What one read left behind.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Blocks {
    /// A header block is in progress at the end of the read.
    pub(crate) in_block: bool,
    /// A header block started within the read (and is the one in progress, if any).
    pub(crate) started: bool,
}

impl FrameScan {
    /// Feeds the bytes of one read.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) -> Blocks {
        let mut started = false;
        while !bytes.is_empty() {
            if self.preface_left > 0 {
                let skip = bytes.len().min(usize::from(self.preface_left));
                self.preface_left -= skip as u8;
                bytes = bytes.get(skip..).unwrap_or_default();
                continue;
            }
            if self.payload_left > 0 {
                let skip =
                    usize::try_from(self.payload_left).map_or(bytes.len(), |p| p.min(bytes.len()));
                self.payload_left -= skip as u32;
                bytes = bytes.get(skip..).unwrap_or_default();
                self.frame_done_if_read();
                continue;
            }
            let want = usize::from(FRAME_HEADER_LEN - self.header_len);
            let take = want.min(bytes.len());
            let (head, rest) = bytes.split_at(take);
            let at = usize::from(self.header_len);
            if let Some(slot) = self.header.get_mut(at..at + take) {
                slot.copy_from_slice(head);
            }
            self.header_len += take as u8;
            bytes = rest;
            if self.header_len == FRAME_HEADER_LEN {
                self.header_len = 0;
                started |= self.frame_header();
            }
        }
        Blocks {
            in_block: self.in_block,
            started: started && self.in_block,
        }
    }

    /// A complete frame header; returns true when it starts a header block.
    fn frame_header(&mut self) -> bool {
        let [l0, l1, l2, kind, flags, ..] = self.header;
        self.payload_left = u32::from_be_bytes([0, l0, l1, l2]);
        let mut starts = false;
        if self.first {
            self.first = false;
            self.ends_block = true;
        } else {
            match kind {
                HEADERS | PUSH_PROMISE => {
                    starts = !self.in_block;
                    self.in_block = true;
                    self.ends_block = flags & END_HEADERS != 0;
                }
                CONTINUATION => self.ends_block = flags & END_HEADERS != 0,
                // Anything else inside a block is a connection error for the h2 crate.
                _ => self.ends_block = false,
            }
        }
        self.frame_done_if_read();
        starts
    }

    /// The current frame has been read whole: a block it ends is over.
    fn frame_done_if_read(&mut self) {
        if self.payload_left == 0 && self.ends_block {
            self.ends_block = false;
            self.in_block = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 1];
        f.extend_from_slice(payload);
        f
    }

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    #[test]
    fn the_start_is_a_block_until_the_first_frame_is_read() {
        let mut s = FrameScan::default();
        assert!(s.feed(&PREFACE[..10]).in_block);
        assert!(s.feed(&PREFACE[10..]).in_block);
        let settings = frame(0x4, 0, &[0, 3, 0, 0, 0, 100]);
        assert!(s.feed(&settings[..12]).in_block);
        let b = s.feed(&settings[12..]);
        assert_eq!((b.in_block, b.started), (false, false));
    }

    fn started() -> FrameScan {
        let mut s = FrameScan::default();
        let mut start = PREFACE.to_vec();
        start.extend(frame(0x4, 0, &[]));
        assert!(!s.feed(&start).in_block);
        s
    }

    #[test]
    fn a_header_block_lasts_until_end_headers_is_read() {
        let mut s = started();
        let headers = frame(HEADERS, 0, &[1, 2, 3]);
        let cont = frame(CONTINUATION, 0, &[4]);
        let last = frame(CONTINUATION, END_HEADERS, &[5, 6]);
        assert_eq!(
            s.feed(&headers[..9]),
            Blocks {
                in_block: true,
                started: true
            }
        );
        assert_eq!(
            s.feed(&headers[9..]),
            Blocks {
                in_block: true,
                started: false
            }
        );
        assert!(s.feed(&cont).in_block);
        assert!(s.feed(&last[..10]).in_block);
        assert!(!s.feed(&last[10..]).in_block);
        // DATA frames are skipped by length, whatever they hold.
        let data = frame(0x0, 0, &frame(HEADERS, 0, &[0; 4]));
        assert!(!s.feed(&data).in_block);
    }

    #[test]
    fn a_whole_block_in_one_read_is_not_in_progress() {
        let mut s = started();
        let mut bytes = frame(HEADERS, END_HEADERS, &[1, 2, 3]);
        bytes.extend(frame(0x0, 1, &[9; 20]));
        assert_eq!(
            s.feed(&bytes),
            Blocks {
                in_block: false,
                started: false
            }
        );
        // One ends and the next starts in the same read: the new one is timed.
        let mut bytes = frame(HEADERS, 0, &[1]);
        assert!(s.feed(&bytes).started);
        bytes = frame(CONTINUATION, END_HEADERS, &[]);
        bytes.extend(frame(PUSH_PROMISE, 0, &[0; 4]));
        assert_eq!(
            s.feed(&bytes),
            Blocks {
                in_block: true,
                started: true
            }
        );
    }

    #[test]
    fn any_split_gives_the_same_answer() {
        let mut all = PREFACE.to_vec();
        all.extend(frame(0x4, 0, &[0, 3, 0, 0, 0, 100]));
        all.extend(frame(HEADERS, 0, &[1, 2, 3]));
        all.extend(frame(CONTINUATION, END_HEADERS, &[4]));
        all.extend(frame(0x0, 1, &[7; 30]));
        for i in 0..all.len() {
            let mut s = FrameScan::default();
            s.feed(&all[..i]);
            assert!(!s.feed(&all[i..]).in_block, "split at {i}");
        }
    }
}
