//! The messages. Field numbers are the wire contract: never reuse or renumber them.
#![allow(missing_docs)] // Each message is documented in docs/forward-protocol.md.

/// One frame's body: exactly one of the messages.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Frame {
    #[prost(oneof = "frame::Kind", tags = "1, 2, 3, 4, 5")]
    pub kind: Option<frame::Kind>,
}

pub mod frame {
    /// The message a frame carries.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        #[prost(message, tag = "1")]
        Hello(super::Hello),
        #[prost(message, tag = "2")]
        Welcome(super::Welcome),
        #[prost(message, tag = "3")]
        Batch(super::Batch),
        #[prost(message, tag = "4")]
        Ack(super::Ack),
        #[prost(message, tag = "5")]
        Error(super::Error),
    }
}

/// Agent → aggregator, first frame of a connection.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Hello {
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// Stable name of the agent (its host name unless configured).
    #[prost(string, tag = "2")]
    pub agent_id: String,
    /// Random, chosen when the agent process starts: sequence numbers restart with it.
    #[prost(uint64, tag = "3")]
    pub session: u64,
}

/// Aggregator → agent, the answer to `Hello`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Welcome {
    #[prost(uint32, tag = "1")]
    pub version: u32,
    #[prost(string, tag = "2")]
    pub aggregator_id: String,
    /// Every batch of this (agent, session) up to this sequence number is already handled.
    #[prost(uint64, tag = "3")]
    pub acked_through: u64,
}

/// One agent flush's share for this aggregator.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Batch {
    /// 1, 2, 3, … per (agent, session) and aggregator.
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    /// Start of the flush interval, Unix milliseconds, a multiple of `interval_ms`.
    #[prost(int64, tag = "2")]
    pub interval_start_ms: i64,
    #[prost(uint32, tag = "3")]
    pub interval_ms: u32,
    #[prost(message, repeated, tag = "4")]
    pub series: Vec<Series>,
}

/// One series' state for the interval.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Series {
    /// The sanitised StatsD key, Graphite-style tags (`;k=v`) included.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(oneof = "series::Value", tags = "2, 3, 4, 5")]
    pub value: Option<series::Value>,
}

pub mod series {
    /// What kind of series, with its state.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        /// Sum of the increments (already divided by their sample rates).
        #[prost(double, tag = "2")]
        Counter(f64),
        #[prost(message, tag = "3")]
        Gauge(super::Gauge),
        #[prost(message, tag = "4")]
        Set(super::Set),
        #[prost(message, tag = "5")]
        Timer(super::Timer),
    }
}

/// A gauge: set to `value` at `set_at_ns` (Unix ns; later deltas of the interval folded in),
/// or, when `delta`, a change to add to whatever the aggregator holds.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Gauge {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(bool, tag = "2")]
    pub delta: bool,
    #[prost(int64, tag = "3")]
    pub set_at_ns: i64,
}

/// A set: its members' xxh3-64 hashes (up to 1024), or 65,536 HyperLogLog registers.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Set {
    #[prost(fixed64, repeated, tag = "1")]
    pub hashes: Vec<u64>,
    #[prost(bytes = "vec", tag = "2")]
    pub registers: Vec<u8>,
}

/// A timer: exact moments and a quantile sketch of the raw samples.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Timer {
    /// Samples weighted by 1/sample rate (Etsy's `count`).
    #[prost(double, tag = "1")]
    pub count: f64,
    #[prost(double, tag = "2")]
    pub sum: f64,
    #[prost(double, tag = "3")]
    pub sum_squares: f64,
    #[prost(double, tag = "4")]
    pub min: f64,
    #[prost(double, tag = "5")]
    pub max: f64,
    #[prost(message, optional, tag = "6")]
    pub sketch: Option<Sketch>,
    /// Every value came as DogStatsD's `h` or `d` (no unit), none as `ms`.
    #[prost(bool, tag = "7")]
    pub unitless: bool,
}

/// A DDSketch with α = 0.01: bin `offset + k` holds `counts[k]` values.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sketch {
    #[prost(sint32, tag = "1")]
    pub positive_offset: i32,
    #[prost(uint64, repeated, tag = "2")]
    pub positive_counts: Vec<u64>,
    #[prost(sint32, tag = "3")]
    pub negative_offset: i32,
    #[prost(uint64, repeated, tag = "4")]
    pub negative_counts: Vec<u64>,
    #[prost(uint64, tag = "5")]
    pub zeros: u64,
}

/// Aggregator → agent: every batch up to `seq` is handled (cumulative).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Ack {
    #[prost(uint64, tag = "1")]
    pub seq: u64,
}

/// Either way, before closing: why.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Error {
    #[prost(string, tag = "1")]
    pub message: String,
    /// Aggregator → agent: the batch it could not read (0: none in particular). An agent drops
    /// a batch refused this way after a few tries, so it never blocks the batches behind it.
    #[prost(uint64, tag = "2")]
    pub refused_seq: u64,
}
