//! Syslog for floodgate, with no IO.
//!
//! - [`framing`]: messages out of a TCP/TLS byte stream, octet counting (RFC 6587 §3.4.1) or
//!   newline/NUL framing, chosen from the connection's first byte; a bound on a message, and
//!   errors that never lose the frames before them.
//! - [`parse`]: lenient RFC 5424 / RFC 3164 parsing into a [`Record`]; what cannot be parsed
//!   is kept whole with `parse_error` set.
//! - [`record`]: the output record as a JSON line.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod framing;
pub mod parse;
pub mod record;

pub use framing::{FrameError, Framer, Framing};
pub use parse::{parse, Format, Now, Record, SdElement};

/// Runs any bytes through framing (in pieces of every size up to 7) and parses every frame,
/// and the whole input as one datagram, whose JSON record it returns (the caller checks it is
/// JSON). Used by the fuzz target and its regression corpus; panics only on a bug.
#[doc(hidden)]
pub fn exercise(data: &[u8]) -> Vec<u8> {
    let now = Now { year: 2026, month: 6, offset_minutes: 0 };
    let received = record::Received {
        at: "2026-06-01T00:00:00.000Z",
        source: "[::1]:1",
        listener: "l",
        transport: "udp",
        peer: None,
    };
    let mut json = Vec::new();
    record::write_json(&parse(data, now), &received, Some(data), &mut json);
    for piece in 1..=7 {
        let mut f = Framer::new(512);
        for chunk in data.chunks(piece) {
            f.push(chunk);
            while let Some(frame) = f.next_frame() {
                if let Ok(frame) = frame {
                    assert!(frame.len() <= 512, "a frame over the bound");
                    let _ = parse(frame, now);
                }
            }
        }
        let _ = f.finish();
    }
    json
}

#[cfg(test)]
mod regressions {
    /// Every input the fuzzer ever crashed on (and the seeds) still runs cleanly.
    #[test]
    fn fuzz_regressions_replay() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions/syslog");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("fuzz/regressions/syslog") {
            let json = crate::exercise(&std::fs::read(entry.expect("entry").path()).expect("read"));
            serde_json::from_slice::<serde_json::Value>(&json).expect("a record that is not JSON");
            n += 1;
        }
        assert!(n > 0, "the regression corpus is empty");
    }
}
