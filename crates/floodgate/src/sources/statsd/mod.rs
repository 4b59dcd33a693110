//! The StatsD source: UDP receive threads (one `SO_REUSEPORT` socket and one shard each) and
//! TCP listeners, all parsing into [`Shard`]s that the flusher merges.

pub mod tcp;
pub mod udp;

use std::sync::Arc;
use std::time::Instant;

use floodgate_statsd::{PacketCounts, Parser, Shard};
use parking_lot::Mutex;

use crate::listener::Counters;

/// A shard shared between its one writer (a receive thread or the TCP tasks of a listener)
/// and the flusher, which swaps it out once per interval.
pub type SharedShard = Arc<Mutex<Shard>>;

/// Parses a block of complete lines into the shard and adds its line counts to `total` (the
/// caller counts packets — a datagram, or a TCP read — and publishes `total` to its
/// [`Counters`] once per batch, not per datagram).
pub fn ingest(parser: &mut Parser, shard: &mut Shard, data: &[u8], total: &mut PacketCounts) {
    let counts = parser.parse_packet(data, shard);
    shard.lines += counts.lines;
    shard.bad_lines += counts.bad;
    total.lines += counts.lines;
    total.bad += counts.bad;
    total.too_long += counts.too_long;
}

/// Publishes a batch's line counts.
pub fn publish(counters: &Counters, total: PacketCounts) {
    Counters::add(&counters.lines, total.lines);
    Counters::add(&counters.bad_lines, total.bad);
    Counters::add(&counters.key_too_long, total.too_long);
}

/// Monotonic nanoseconds since `epoch`: orders gauge sets across shards.
pub fn clock(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

/// The part of `data` up to and including its last `\n` (nothing if there is none).
pub fn complete_lines(data: &[u8]) -> &[u8] {
    match data.iter().rposition(|b| *b == b'\n') {
        Some(i) => &data[..=i],
        None => &[],
    }
}

/// StatsD's own per-listener families: lines, bad lines, and keys over `max_key_length`.
pub fn listener_families(l: &crate::listener::Listener, out: &mut crate::metrics::Families) {
    use crate::listener::row;
    use crate::metrics::Describe;
    use std::sync::atomic::Ordering::Relaxed;
    let c = &l.counters;
    let lines =
        Describe::counter("floodgate_received_lines_total", "Non-empty lines received.").status(row("messages"));
    let bad =
        Describe::counter("floodgate_bad_lines_total", "Lines or values that could not be parsed.").status(row("bad"));
    out.add(lines, &l.labels(), c.lines.load(Relaxed));
    out.add(bad, &l.labels(), c.bad_lines.load(Relaxed));
    l.dropped(out, "key_too_long", c.key_too_long.load(Relaxed));
}
