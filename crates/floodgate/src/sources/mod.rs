//! Inputs: each source binds its listeners, decodes, and feeds aggregation.

pub mod aggregator;
pub mod listen;
pub mod statsd;
