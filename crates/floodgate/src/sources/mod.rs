//! Inputs: each source binds its listeners, puts every datagram and connection to the guard,
//! decodes, and feeds aggregation (StatsD) or the record output (syslog). The receive skeletons they share are in
//! [`crate::net`].

pub mod aggregator;
pub mod conntrack;
pub mod statsd;
pub mod syslog;
