//! StatsD over UDP: the shared receive loop ([`crate::net::datagram`]) parsing each admitted
//! datagram straight into the thread's own shard.
//!
//! The shard's mutex is taken once per batch and is only ever contended by the flusher's
//! swap (a pointer exchange) once per interval, so receive threads share no lock.

use std::sync::Arc;

use floodgate_statsd::PacketCounts;

use super::decode::Decoder;
use super::{complete_lines, publish, SharedShard};
use crate::guard::count_lines;
use crate::listener::Counters;
use crate::net::datagram::{Admitted, DatagramHandler};

/// Decodes one receive thread's datagrams into its shard.
pub struct StatsdDatagrams {
    shard: SharedShard,
    decoder: Decoder,
    counters: Arc<Counters>,
}

impl StatsdDatagrams {
    /// A receive thread's handler writing into `shard`.
    pub fn new(shard: SharedShard, counters: Arc<Counters>, decoder: Decoder) -> StatsdDatagrams {
        StatsdDatagrams { shard, decoder, counters }
    }
}

impl DatagramHandler for StatsdDatagrams {
    fn messages(data: &[u8]) -> u64 {
        count_lines(data)
    }

    fn handle(&mut self, datagrams: Admitted<'_>, now: u64, publish_batch: &mut dyn FnMut()) {
        let mut lines = PacketCounts::default();
        let mut shard = self.shard.lock();
        shard.clock = now;
        shard.packets += datagrams.received() as u64;
        for d in datagrams.iter() {
            // A truncated datagram keeps its complete lines; the cut one is lost and counted.
            let data = if d.truncated { complete_lines(d.data) } else { d.data };
            self.decoder.sender(d.source, d.peer);
            self.decoder.ingest(&mut shard, data, &mut lines);
        }
        // Published before the shard is released: whoever sees this batch's values (a flush,
        // the console) also sees its counts.
        publish_batch();
        publish(&self.counters, lines);
        drop(shard);
        // Events and service checks, after the shard is released (the output may be slow).
        self.decoder.send_records(&self.counters);
    }
}
