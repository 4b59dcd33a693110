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
