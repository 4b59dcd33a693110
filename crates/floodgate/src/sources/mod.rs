//! Inputs: each source binds its listeners, puts every datagram and connection to the guard,
//! decodes, and feeds aggregation (StatsD) or the record output (syslog). `udp` and `listen`
//! are the two receive skeletons every source shares.

pub mod aggregator;
pub mod conntrack;
pub mod listen;
pub mod statsd;
pub mod syslog;
pub mod udp;
