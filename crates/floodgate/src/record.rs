//! Log records between the syslog listeners and the record output: the listeners encode
//! each batch into a [`Chunk`] in the output's [`Encoding`]; the output writes chunks in order.
//! Both sides use these types; neither imports the other.

/// Encoded records from one batch of input.
#[derive(Debug, Default)]
pub struct Chunk {
    /// JSON lines, or octet-counted frames.
    pub bytes: Vec<u8>,
    /// Messages in it.
    pub messages: u64,
}

/// Buffers of written chunks, for listeners to fill again. A TCP read of 256 KiB makes close
/// to a megabyte of JSON: a fresh buffer that size each time is fresh pages from the kernel
/// (`mmap`, a page fault and a zeroed page every 4 KiB, `munmap` after the write): several
/// per cent of the syslog TCP path's CPU.
static SPARE: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());
/// Spare buffers kept at most (one per listener thread or busy connection is enough)...
const SPARE_BUFFERS: usize = 8;
/// ...and the largest kept: what a connection's 256 KiB read makes, with room to spare.
const SPARE_CAPACITY: usize = 4 << 20;

impl Chunk {
    /// An empty chunk with room for `bytes` bytes, in a written chunk's buffer when one is
    /// spare.
    pub fn with_room(bytes: usize) -> Chunk {
        let spare = SPARE.lock().ok().and_then(|mut s| s.pop());
        let mut buffer = spare.unwrap_or_default();
        buffer.reserve(bytes);
        Chunk { bytes: buffer, messages: 0 }
    }

    /// Gives the chunk's buffer back once its records are written (see [`Chunk::with_room`]).
    pub fn recycle(self) {
        let mut buffer = self.bytes;
        if buffer.capacity() == 0 || buffer.capacity() > SPARE_CAPACITY {
            return;
        }
        buffer.clear();
        if let Ok(mut spare) = SPARE.lock() {
            if spare.len() < SPARE_BUFFERS {
                spare.push(buffer);
            }
        }
    }
}

/// How listeners encode records for the output in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// One JSON object per line; `raw` adds the message as received.
    Json {
        /// Add `raw`.
        raw: bool,
    },
    /// `LEN SP MSG`, the message as received.
    OctetCounted,
}

/// Where listeners send records: the output's channel and the encoding it wants.
#[derive(Debug, Clone)]
pub struct RecordPipe {
    /// Bounded: a slow output slows stream senders, and datagram threads wait (the kernel
    /// drops, counted).
    pub sender: tokio::sync::mpsc::Sender<Chunk>,
    /// How to encode.
    pub encoding: Encoding,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_chunks_buffers_are_filled_again_empty_and_bounded() {
        let mut chunk = Chunk::with_room(100_000);
        chunk.bytes.extend_from_slice(b"{\"message\":\"a\"}\n");
        chunk.messages = 1;
        let at = chunk.bytes.as_ptr();
        chunk.recycle();
        let again = Chunk::with_room(10);
        assert_eq!((again.bytes.as_ptr(), again.bytes.len(), again.messages), (at, 0, 0));
        assert!(again.bytes.capacity() >= 100_000);
        // One too large to keep idle is let go; the next chunk starts fresh.
        Chunk { bytes: Vec::with_capacity(SPARE_CAPACITY + 1), messages: 0 }.recycle();
        assert!(Chunk::with_room(0).bytes.capacity() < SPARE_CAPACITY);
        // No more than SPARE_BUFFERS are kept.
        let written: Vec<Chunk> = (0..SPARE_BUFFERS * 2).map(|_| Chunk::with_room(64)).collect();
        written.into_iter().for_each(Chunk::recycle);
        let held: Vec<Chunk> = (0..SPARE_BUFFERS * 2).map(|_| Chunk::with_room(0)).collect();
        assert_eq!(held.iter().filter(|c| c.bytes.capacity() > 0).count(), SPARE_BUFFERS);
    }
}
