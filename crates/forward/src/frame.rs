//! Frames: a 4-byte big-endian body length, then the body (a protobuf [`Frame`]).

use bytes::{Buf, BufMut, BytesMut};
use prost::Message;

use crate::proto::Frame;

/// Largest body accepted by default: a batch of about a million series.
pub const DEFAULT_MAX_FRAME: usize = 256 << 20;

/// Why bytes could not be read as frames. Either way the connection is finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// A body longer than the bound.
    TooLarge {
        /// Its announced length.
        length: usize,
        /// The bound.
        max: usize,
    },
    /// A body that is not a `Frame`, or a frame with no message.
    Malformed(String),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge { length, max } => write!(f, "frame of {length} bytes exceeds the {max}-byte bound"),
            FrameError::Malformed(why) => write!(f, "malformed frame: {why}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Appends `frame`, length first, to `out`.
pub fn encode(frame: &Frame, out: &mut BytesMut) {
    let len = frame.encoded_len();
    out.reserve(4 + len);
    out.put_u32(len as u32);
    // Cannot fail: the buffer was grown to fit.
    let _ = frame.encode(out);
}

/// Takes bytes as they arrive and yields whole frames.
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    max: usize,
}

impl Decoder {
    /// A decoder refusing bodies longer than `max` bytes.
    pub fn new(max: usize) -> Decoder {
        Decoder { buf: BytesMut::new(), max }
    }

    /// Where to read the next bytes into (then call [`decode`](Self::decode)).
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Bytes received but not yet part of a whole frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed.
    pub fn decode(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let length = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if length > self.max {
            return Err(FrameError::TooLarge { length, max: self.max });
        }
        if self.buf.len() < 4 + length {
            self.buf.reserve(4 + length - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(4);
        let body = self.buf.split_to(length);
        let frame = Frame::decode(body.freeze()).map_err(|e| FrameError::Malformed(e.to_string()))?;
        if frame.kind.is_none() {
            return Err(FrameError::Malformed("no message in the frame".into()));
        }
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{frame::Kind, Ack, Batch, Hello, Series};

    fn frames() -> Vec<Frame> {
        vec![
            Frame { kind: Some(Kind::Hello(Hello { version: 1, agent_id: "web-1".into(), session: 42 })) },
            Frame {
                kind: Some(Kind::Batch(Batch {
                    seq: 7,
                    interval_start_ms: 1_700_000_000_000,
                    interval_ms: 10_000,
                    series: vec![Series {
                        key: b"hits;env=prod".to_vec(),
                        value: Some(crate::proto::series::Value::Counter(3.0)),
                    }],
                })),
            },
            Frame { kind: Some(Kind::Ack(Ack { seq: 7 })) },
        ]
    }

    #[test]
    fn frames_survive_any_split() {
        let mut wire = BytesMut::new();
        for f in frames() {
            encode(&f, &mut wire);
        }
        for chunk in [1, 2, 3, 7, 1000] {
            let mut d = Decoder::new(DEFAULT_MAX_FRAME);
            let mut got = Vec::new();
            for piece in wire.chunks(chunk) {
                d.buffer().extend_from_slice(piece);
                while let Some(f) = d.decode().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got, frames());
            assert_eq!(d.pending(), 0);
        }
    }

    #[test]
    fn oversize_and_garbage_are_errors() {
        let mut d = Decoder::new(100);
        d.buffer().extend_from_slice(&1000u32.to_be_bytes());
        assert_eq!(d.decode(), Err(FrameError::TooLarge { length: 1000, max: 100 }));
        let mut d = Decoder::new(100);
        d.buffer().extend_from_slice(&[0, 0, 0, 3, 0xff, 0xff, 0xff]);
        assert!(matches!(d.decode(), Err(FrameError::Malformed(_))));
        let mut d = Decoder::new(100);
        d.buffer().extend_from_slice(&[0, 0, 0, 0]);
        assert!(matches!(d.decode(), Err(FrameError::Malformed(_))), "an empty frame carries no message");
    }

    proptest::proptest! {
        /// Whatever bytes arrive, the decoder answers without panicking.
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2000)) {
            let mut d = Decoder::new(1 << 16);
            d.buffer().extend_from_slice(&bytes);
            while let Ok(Some(_)) = d.decode() {}
        }
    }
}
