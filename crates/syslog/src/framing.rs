//! RFC 6587 framing. A connection whose first byte is a digit 1–9 uses octet counting
//! (`MSG-LEN SP MSG`, the length in decimal); any other first byte means non-transparent
//! framing: a message ends at LF (a CR before it is dropped) or NUL.
//!
//! Bounds: a message longer than `max` is skipped — in octet counting exactly its announced
//! length, without buffering it; in newline framing up to its end — and reported, and the
//! frames after it still come. A length field that is not a number is reported and ends the
//! stream (nothing after it can be trusted to be a frame boundary); every frame before it has
//! already been returned.

/// How a connection frames its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `LEN SP MSG`.
    OctetCounting,
    /// `MSG LF` (or `MSG NUL`).
    NonTransparent,
}

/// Something the stream did wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// A message longer than the bound; `length` bytes were skipped (in newline framing, the
    /// bytes seen before the bound was passed; the rest of the line is skipped too).
    TooLong {
        /// Its length (announced, or seen).
        length: usize,
    },
    /// An octet-counting length field that is not `1-9 *DIGIT SP`; the stream ends here.
    BadLength {
        /// Up to 16 bytes where the length should have been.
        found: Vec<u8>,
    },
    /// The stream ended inside an octet-counted frame: `have` of `want` bytes arrived.
    Truncated {
        /// Bytes received.
        have: usize,
        /// Bytes announced.
        want: usize,
    },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLong { length } => write!(f, "message of {length} bytes exceeds max_message; skipped"),
            FrameError::BadLength { found } => {
                write!(f, "octet count expected, found {:?}; closing", String::from_utf8_lossy(found))
            }
            FrameError::Truncated { have, want } => write!(f, "stream ended {have} bytes into a {want}-byte message"),
        }
    }
}

/// Longest length field read (`max` below 10^9 fits in it).
const MAX_LEN_DIGITS: usize = 10;

/// Splits one connection's bytes into messages.
#[derive(Debug)]
pub struct Framer {
    framing: Option<Framing>,
    max: usize,
    /// Bytes held are `buf[pos..end]`; past `end`, room a connection reads into
    /// ([`Framer::spare`]), so what it reads is framed where it landed, not copied.
    buf: Vec<u8>,
    /// Start of unread bytes in `buf`.
    pos: usize,
    /// End of the bytes held.
    end: usize,
    /// Bytes of an oversize message still to skip (octet counting), or `usize::MAX` while
    /// skipping to the end of an oversize line.
    skip: usize,
    /// After a `BadLength`: nothing more is framed.
    broken: bool,
}

impl Framer {
    /// A framer for one connection, refusing messages longer than `max` bytes.
    pub fn new(max: usize) -> Framer {
        Framer { framing: None, max, buf: Vec::new(), pos: 0, end: 0, skip: 0, broken: false }
    }

    /// The framing chosen (after the first byte).
    pub fn framing(&self) -> Option<Framing> {
        self.framing
    }

    /// True once the stream can no longer be framed (after [`FrameError::BadLength`]).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Bytes held, waiting for the rest of a message.
    pub fn pending(&self) -> usize {
        self.end - self.pos
    }

    /// Adds received bytes; call [`next_frame`](Self::next_frame) until it returns `None`.
    pub fn push(&mut self, data: &[u8]) {
        self.spare(data.len()).copy_from_slice(data);
        self.filled(data.len());
    }

    /// Room for `want` more bytes after those held, to read into; then call
    /// [`filled`](Self::filled) with how many were read. The room stays allocated between
    /// reads (it is the connection's read buffer).
    pub fn spare(&mut self, want: usize) -> &mut [u8] {
        if self.pos == self.end {
            (self.pos, self.end) = (0, 0);
        } else if self.pos > 64 * 1024 && self.pos * 2 > self.end {
            self.buf.copy_within(self.pos..self.end, 0);
            (self.pos, self.end) = (0, self.end - self.pos);
        }
        if self.buf.len() < self.end + want {
            if self.end == 0 {
                // Nothing held: a fresh zeroed buffer (`calloc`: a large one's pages are only
                // touched as reads fill them, so an idle connection holds little).
                self.buf = vec![0; want];
            } else {
                self.buf.resize(self.end + want, 0);
            }
        }
        &mut self.buf[self.end..self.end + want]
    }

    /// `n` bytes were read into [`spare`](Self::spare)'s room.
    pub fn filled(&mut self, n: usize) {
        if self.broken {
            return;
        }
        let n = n.min(self.buf.len() - self.end);
        // Skipping an oversize octet-counted message: drop its bytes as they come.
        let mut skipped = 0;
        if self.skip > 0 && self.skip != usize::MAX {
            skipped = self.skip.min(n);
            self.skip -= skipped;
            self.buf.copy_within(self.end + skipped..self.end + n, self.end);
        }
        self.end += n - skipped;
    }

    /// The next message, an error, or `None` when more bytes are needed.
    pub fn next_frame(&mut self) -> Option<Result<&[u8], FrameError>> {
        if self.broken || self.pos >= self.end {
            return None;
        }
        let framing = *self.framing.get_or_insert(match self.buf[self.pos] {
            b'1'..=b'9' => Framing::OctetCounting,
            _ => Framing::NonTransparent,
        });
        match framing {
            Framing::OctetCounting => self.next_counted(),
            Framing::NonTransparent => self.next_line(),
        }
    }

    fn next_counted(&mut self) -> Option<Result<&[u8], FrameError>> {
        if self.skip > 0 {
            return None;
        }
        let rest = &self.buf[self.pos..self.end];
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == rest.len() && digits <= MAX_LEN_DIGITS {
            return None; // The length field is still arriving.
        }
        if digits == 0 || digits > MAX_LEN_DIGITS || rest[0] == b'0' || rest[digits] != b' ' {
            self.broken = true;
            let found = rest[..rest.len().min(16)].to_vec();
            return Some(Err(FrameError::BadLength { found }));
        }
        // At most 10 digits: fits in u64.
        let length = rest[..digits].iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')) as usize;
        let body = self.pos + digits + 1;
        if length > self.max {
            let have = self.end - body;
            if have >= length {
                self.pos = body + length;
            } else {
                self.skip = length - have;
                self.pos = self.end;
            }
            return Some(Err(FrameError::TooLong { length }));
        }
        if self.end - body < length {
            return None;
        }
        self.pos = body + length;
        Some(Ok(&self.buf[body..body + length]))
    }

    fn next_line(&mut self) -> Option<Result<&[u8], FrameError>> {
        // A loop, not recursion: a stream of empty lines must not grow the stack.
        loop {
            let rest = &self.buf[self.pos..self.end];
            let Some(end) = memchr::memchr2(b'\n', 0, rest) else {
                if self.skip == usize::MAX {
                    self.pos = self.end; // Still inside the oversize line.
                } else if rest.len() > self.max {
                    self.skip = usize::MAX;
                    let length = rest.len();
                    self.pos = self.end;
                    return Some(Err(FrameError::TooLong { length }));
                }
                return None;
            };
            let start = self.pos;
            self.pos += end + 1;
            if self.skip == usize::MAX {
                self.skip = 0; // The end of the oversize line.
                continue;
            }
            let mut len = end;
            if len > 0 && self.buf[start + len - 1] == b'\r' {
                len -= 1;
            }
            if len > self.max {
                return Some(Err(FrameError::TooLong { length: len }));
            }
            if len > 0 {
                return Some(Ok(&self.buf[start..start + len]));
            }
            // Blank lines between messages are not messages.
        }
    }

    /// The stream ended: a last newline-framed message without its terminator, or the
    /// error of a cut octet-counted one.
    pub fn finish(&mut self) -> Option<Result<&[u8], FrameError>> {
        if self.broken {
            return None;
        }
        let rest = &self.buf[self.pos..self.end];
        match self.framing {
            _ if self.skip == usize::MAX => None,
            Some(Framing::OctetCounting) if self.skip > 0 => None,
            _ if rest.is_empty() => None,
            Some(Framing::NonTransparent) => {
                let start = self.pos;
                let len = rest.strip_suffix(b"\r").unwrap_or(rest).len();
                self.pos = self.end;
                (len > 0 && len <= self.max).then_some(Ok(&self.buf[start..start + len]))
            }
            Some(Framing::OctetCounting) | None => {
                let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
                let want = std::str::from_utf8(&rest[..digits]).ok().and_then(|d| d.parse().ok()).unwrap_or(0);
                let have = rest.len().saturating_sub(digits + 1);
                self.pos = self.end;
                Some(Err(FrameError::Truncated { have, want }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[u8], max: usize, chunk: usize) -> Vec<Result<Vec<u8>, FrameError>> {
        let mut f = Framer::new(max);
        let mut out = Vec::new();
        for piece in input.chunks(chunk.max(1)) {
            f.push(piece);
            while let Some(r) = f.next_frame() {
                out.push(r.map(<[u8]>::to_vec));
            }
            // Once every whole frame is taken, what is held is part of one message (at most
            // `max`) and its length prefix.
            assert!(f.pending() <= max + 24, "{} bytes held with max {max}", f.pending());
        }
        out.extend(f.finish().map(|r| r.map(<[u8]>::to_vec)));
        out
    }

    fn ok(s: &str) -> Result<Vec<u8>, FrameError> {
        Ok(s.as_bytes().to_vec())
    }

    #[test]
    fn octet_counting_whatever_the_split() {
        let input = b"5 hello11 hello world3 a\nb";
        for chunk in 1..input.len() {
            assert_eq!(frames(input, 100, chunk), vec![ok("hello"), ok("hello world"), ok("a\nb")], "chunk {chunk}");
        }
    }

    #[test]
    fn newline_framing_with_crlf_and_nul() {
        let input = b"<13>one\r\n<13>two\0\n<13>three";
        for chunk in 1..input.len() {
            assert_eq!(frames(input, 100, chunk), vec![ok("<13>one"), ok("<13>two"), ok("<13>three")]);
        }
    }

    #[test]
    fn oversize_messages_are_skipped_and_the_next_ones_kept() {
        let mut input = b"3 abc".to_vec();
        input.extend_from_slice(format!("20 {}", "x".repeat(20)).as_bytes());
        input.extend_from_slice(b"2 ok");
        for chunk in [1, 4, 100] {
            assert_eq!(frames(&input, 10, chunk), vec![ok("abc"), Err(FrameError::TooLong { length: 20 }), ok("ok")]);
        }
        let long = format!("<1>short\n<1>{}\n<1>after\n", "y".repeat(50));
        for chunk in [1, 7, 1000] {
            let got = frames(long.as_bytes(), 20, chunk);
            assert_eq!(got.first(), Some(&ok("<1>short")));
            assert_eq!(got.last(), Some(&ok("<1>after")));
            assert_eq!(got.iter().filter(|r| r.is_err()).count(), 1, "{got:?}");
        }
    }

    #[test]
    fn a_bad_length_ends_the_stream_after_the_good_frames() {
        let got = frames(b"2 ok4 fine<13>not counted", 100, 3);
        assert_eq!(got[..2], [ok("ok"), ok("fine")]);
        assert!(matches!(got[2], Err(FrameError::BadLength { .. })));
        assert_eq!(got.len(), 3);
        let got = frames(b"5 abc", 100, 100);
        assert_eq!(got, vec![Err(FrameError::Truncated { have: 3, want: 5 })]);
    }

    /// As [`frames`], but as a connection reads: into the framer's room, larger than what
    /// each read brings.
    fn frames_read(input: &[u8], max: usize, chunk: usize, room: usize) -> Vec<Result<Vec<u8>, FrameError>> {
        let mut f = Framer::new(max);
        let mut out = Vec::new();
        for piece in input.chunks(chunk.max(1)) {
            let spare = f.spare(room.max(piece.len()));
            spare[..piece.len()].copy_from_slice(piece);
            f.filled(piece.len());
            while let Some(r) = f.next_frame() {
                out.push(r.map(<[u8]>::to_vec));
            }
        }
        out.extend(f.finish().map(|r| r.map(<[u8]>::to_vec)));
        out
    }

    #[test]
    fn reads_into_the_framers_room_frame_as_pushed_bytes_do() {
        let mut counted = b"3 abc".to_vec();
        counted.extend_from_slice(format!("20 {}", "x".repeat(20)).as_bytes());
        counted.extend_from_slice(b"2 ok11 hello world");
        let lines = format!("<1>short\r\n<1>{}\n\n<1>after\n<1>last", "y".repeat(50));
        for (input, max) in [(&counted[..], 10), (lines.as_bytes(), 20), (b"2 ok4 fine<13>bad".as_slice(), 100)] {
            for chunk in [1, 3, 7, 64] {
                for room in [1, 16, 4096] {
                    assert_eq!(frames_read(input, max, chunk, room), frames(input, max, chunk), "{chunk} {room}");
                }
            }
        }
    }

    #[test]
    fn ten_megabytes_of_blank_lines() {
        let mut f = Framer::new(1024);
        f.push(b"<1>a\n");
        f.push(&vec![b'\n'; 10 << 20]);
        f.push(b"<1>b\n");
        assert_eq!(f.next_frame().map(|r| r.map(<[u8]>::to_vec)), Some(ok("<1>a")));
        assert_eq!(f.next_frame().map(|r| r.map(<[u8]>::to_vec)), Some(ok("<1>b")));
        assert_eq!(f.next_frame().map(|r| r.map(<[u8]>::to_vec)), None);
    }

    #[test]
    fn a_huge_announced_length_is_skipped_without_buffering() {
        let mut f = Framer::new(1024);
        f.push(b"10000000 ");
        assert_eq!(
            f.next_frame().map(|r| r.map(<[u8]>::to_vec)),
            Some(Err(FrameError::TooLong { length: 10_000_000 }))
        );
        for _ in 0..1000 {
            f.push(&[b'z'; 10_000]);
            assert_eq!(f.next_frame().map(|r| r.map(<[u8]>::to_vec)), None);
        }
        assert_eq!(f.pending(), 0, "skipped bytes are not held");
        f.push(b"2 hi");
        assert_eq!(f.next_frame().map(|r| r.map(<[u8]>::to_vec)), Some(ok("hi")));
    }

    proptest::proptest! {
        /// Whatever arrives, in whatever pieces, the framer neither panics nor holds more than
        /// a bounded amount, and octet-counted messages come back as sent.
        #[test]
        fn any_bytes_any_split(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..4000), chunk in 1usize..64) {
            let _ = frames(&bytes, 256, chunk);
        }

        #[test]
        fn counted_round_trip(msgs in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 1..300), 0..20), chunk in 1usize..50) {
            let mut wire = Vec::new();
            for m in &msgs {
                wire.extend_from_slice(format!("{} ", m.len()).as_bytes());
                wire.extend_from_slice(m);
            }
            let got = frames(&wire, 1000, chunk);
            let want: Vec<Result<Vec<u8>, FrameError>> = msgs.into_iter().map(Ok).collect();
            proptest::prop_assert_eq!(got, want);
        }
    }
}
