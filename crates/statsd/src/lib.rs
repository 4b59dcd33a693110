//! StatsD for floodgate, with no IO: the line protocol, per-thread aggregation, the flush
//! semantics of Etsy statsd 0.9.0, and the Graphite and Prometheus renderings of a flush.
//!
//! The runtime reads packets, feeds them to a [`Parser`] with a [`Shard`] as sink (one per
//! receive thread), merges shards into the [`Store`] at each flush, and renders the resulting
//! [`FlushView`] with [`graphite::render`]. [`prometheus::render`] exposes the store for scrapes.

#![warn(missing_docs)]

pub mod graphite;
pub mod number;
pub mod parse;
pub mod prometheus;
pub mod shard;
pub mod store;

pub use parse::{Kind, Metric, MetricSink, PacketCounts, Parser};
pub use shard::Shard;
pub use store::{AggregationConfig, FlushView, HistogramRule, Store};
