//! Frames: a 4-byte big-endian body length, then the body (a protobuf [`Frame`]).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;

use crate::proto::Frame;

/// Largest body an aggregator accepts by default once an agent has said hello (`[aggregator]
/// max_frame`): agents write batches of about [`BATCH_BYTES`], so this leaves ample room.
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;

/// Largest body accepted before a valid `Hello` (a `Hello` is a few dozen bytes): what an
/// unauthenticated peer can make an aggregator hold.
pub const HELLO_MAX_FRAME: usize = 4 << 10;

/// The size agents aim their batches at: a flush's share is cut into batches of about this
/// many bytes (each at most this plus one series).
pub const BATCH_BYTES: usize = 1 << 20;

/// Bytes read ahead at most per read: the buffer grows with what arrives, never to a length
/// a peer merely announced.
const READ_CHUNK: usize = 64 << 10;

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

/// A frame as an aggregator reads it: a batch is left encoded (walked series by series with
/// [`crate::batch::BatchView`]); the other messages are small and decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A `Batch` message's bytes.
    Batch(Bytes),
    /// Any other message.
    Message(Frame),
}

/// Reads a frame body without decoding a batch it carries.
pub fn incoming(body: Bytes) -> Result<Incoming, FrameError> {
    // The message is the last of the oneof's fields (1..=5), as protobuf reads a oneof.
    let mut batch = None;
    for field in crate::scan::fields(&body) {
        match field {
            Ok((3, crate::scan::Value::Bytes(b))) => {
                let start = b.as_ptr() as usize - body.as_ptr() as usize;
                batch = Some(start..start + b.len());
            }
            Ok((1..=5, _)) => batch = None,
            Ok(_) => {}
            Err(_) => return Err(FrameError::Malformed("not a protobuf message".into())),
        }
    }
    match batch {
        Some(range) => Ok(Incoming::Batch(body.slice(range))),
        None => {
            let frame = Frame::decode(body).map_err(|e| FrameError::Malformed(e.to_string()))?;
            if frame.kind.is_none() {
                return Err(FrameError::Malformed("no message in the frame".into()));
            }
            Ok(Incoming::Message(frame))
        }
    }
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

    /// Changes the bound (an aggregator raises it once a peer has said hello).
    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// Where to read the next bytes into (then call [`decode`](Self::decode)). The buffer grows
    /// with what has arrived — doubling, from 4 KiB, never past the frame in progress — so it
    /// holds at most about twice what the peer actually sent, whatever length it announced.
    pub fn buffer(&mut self) -> &mut BytesMut {
        let (len, cap) = (self.buf.len(), self.buf.capacity());
        if cap - len < 4096 {
            let target = match self.announced() {
                Some(length) if length <= self.max && len < 4 + length => {
                    (4 + length).min((2 * cap).max(len + READ_CHUNK))
                }
                _ => len + 4096,
            };
            // A new buffer of exactly this size (BytesMut::reserve would round up by doubling
            // again, past the frame).
            let mut grown = BytesMut::with_capacity(target.max(len + 1));
            grown.extend_from_slice(&self.buf);
            self.buf = grown;
        }
        &mut self.buf
    }

    /// Bytes received but not yet part of a whole frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Bytes of memory the decoder holds (its buffer's capacity).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The length the frame in progress announced, once its 4 bytes are in.
    fn announced(&self) -> Option<usize> {
        (self.buf.len() >= 4).then(|| u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize)
    }

    /// The next whole frame's body, `Ok(None)` if more bytes are needed.
    pub fn decode_body(&mut self) -> Result<Option<Bytes>, FrameError> {
        let Some(length) = self.announced() else { return Ok(None) };
        if length > self.max {
            return Err(FrameError::TooLarge { length, max: self.max });
        }
        if self.buf.len() < 4 + length {
            return Ok(None);
        }
        self.buf.advance(4);
        Ok(Some(self.buf.split_to(length).freeze()))
    }

    /// The next whole frame, decoded, `Ok(None)` if more bytes are needed.
    pub fn decode(&mut self) -> Result<Option<Frame>, FrameError> {
        let Some(body) = self.decode_body()? else { return Ok(None) };
        let frame = Frame::decode(body).map_err(|e| FrameError::Malformed(e.to_string()))?;
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

    #[test]
    fn an_announced_length_reserves_nothing() {
        // A peer announcing 16 MiB and sending 5 bytes costs what it sent, not what it announced.
        let mut d = Decoder::new(DEFAULT_MAX_FRAME);
        d.buffer().extend_from_slice(&(16u32 << 20).to_be_bytes());
        d.buffer().extend_from_slice(&[0x1a]);
        assert_eq!(d.decode(), Ok(None));
        let _ = d.buffer();
        assert!(d.capacity() <= 2 * READ_CHUNK, "capacity {}", d.capacity());
        // Sent in full, a frame's buffer ends exactly at its size.
        let body = vec![0u8; 3 << 20];
        let mut d = Decoder::new(DEFAULT_MAX_FRAME);
        d.buffer().extend_from_slice(&(body.len() as u32).to_be_bytes());
        for piece in body.chunks(1000) {
            let b = d.buffer();
            assert!(b.capacity() - b.len() >= piece.len().min(4096));
            b.extend_from_slice(piece);
            assert!(d.capacity() <= 2 * d.pending().max(4096) + READ_CHUNK, "{} for {}", d.capacity(), d.pending());
        }
        assert_eq!(d.capacity(), 4 + body.len());
        // Before Hello the bound is small; raised once the peer is known.
        let mut d = Decoder::new(HELLO_MAX_FRAME);
        d.buffer().extend_from_slice(&(HELLO_MAX_FRAME as u32 + 1).to_be_bytes());
        assert!(matches!(d.decode(), Err(FrameError::TooLarge { .. })));
        d.set_max(DEFAULT_MAX_FRAME);
        assert_eq!(d.decode(), Ok(None));
    }

    #[test]
    fn batches_stay_encoded() {
        for f in frames() {
            let body = Bytes::from(f.encode_to_vec());
            match (incoming(body).unwrap(), &f.kind) {
                (Incoming::Batch(b), Some(Kind::Batch(batch))) => assert_eq!(b, Bytes::from(batch.encode_to_vec())),
                (Incoming::Message(m), Some(Kind::Batch(_))) => panic!("a batch was decoded: {m:?}"),
                (Incoming::Message(m), _) => assert_eq!(m, f),
                (Incoming::Batch(_), _) => panic!("not a batch"),
            }
        }
        assert!(incoming(Bytes::from_static(&[0x1a, 0x05, 0x00])).is_err(), "a cut field");
        assert!(incoming(Bytes::new()).is_err(), "no message");
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
