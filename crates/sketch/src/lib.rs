//! Mergeable sketches for the agent → aggregator hop, with no IO.
//!
//! - [`DDSketch`]: quantiles of timer values with a relative-error bound: every quantile it
//!   answers is within [`DDSketch::RELATIVE_ACCURACY`] (1 %) of the true value at that rank,
//!   and two sketches merge exactly (bin counts add).
//! - [`Distinct`]: set cardinality, exact (64-bit member hashes) up to [`Distinct::EXACT_MAX`]
//!   members, then a HyperLogLog with 2^16 registers (standard error 0.4 %); merging is a
//!   union either way.
//! - [`Exponential`]: a DDSketch in Prometheus' native histogram layout, with its error bound.
//!
//! Both are written here rather than taken from a crate because their bytes go on the wire
//! between floodgate processes and must be simple enough for a third party to implement from
//! `docs/forward-protocol.md`: the sketch is its mapping constant, two offsets and two runs of
//! counts; the distinct counter is a list of xxh3 hashes or 65,536 register bytes.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod ddsketch;
pub mod distinct;
pub mod exponential;
pub mod topk;

pub use ddsketch::DDSketch;
pub use distinct::Distinct;
pub use exponential::Exponential;
pub use topk::TopK;
