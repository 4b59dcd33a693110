//! Syslog over UDP (RFC 5426) and Unix datagram sockets (as `/dev/log`): each admitted
//! datagram is one message. A datagram longer than
//! `max_message` is kept as far as it was read, with `parse_error` saying it was cut.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::Encoder;
use crate::listener::{Counters, Kind};
use crate::net::datagram::{Admitted, DatagramHandler};
use crate::record::{Chunk, Encoding};

/// Flag on a datagram cut at the slot size.
const TRUNCATED: &str = "datagram longer than max_message; truncated";

/// Decodes one receive thread's datagrams into output chunks.
pub struct SyslogDatagrams {
    encoder: Encoder,
    output: mpsc::Sender<Chunk>,
    counters: Arc<Counters>,
}

impl SyslogDatagrams {
    /// A decoder for a listener of `kind` (UDP, or a Unix socket) sending to `output`.
    pub fn new(
        kind: Kind,
        encoding: Encoding,
        output: mpsc::Sender<Chunk>,
        counters: Arc<Counters>,
        zone: jiff::tz::TimeZone,
    ) -> SyslogDatagrams {
        SyslogDatagrams { encoder: Encoder::new(encoding, kind, zone), output, counters }
    }
}

impl DatagramHandler for SyslogDatagrams {
    fn messages(_: &[u8]) -> u64 {
        1
    }

    fn handle(&mut self, datagrams: Admitted<'_>, _now: u64, publish: &mut dyn FnMut()) {
        self.encoder.stamp();
        let mut chunk = Chunk { bytes: Vec::with_capacity(datagrams.received() * 512), messages: 0 };
        let mut bad = 0;
        for d in datagrams.iter() {
            if let Some(source) = d.source {
                self.encoder.set_source(source);
            }
            if let Some(peer) = d.peer {
                self.encoder.set_peer(peer);
            }
            if self.encoder.encode(d.data, d.truncated.then_some(TRUNCATED), &mut chunk) == Some(false) {
                bad += 1;
            }
        }
        publish();
        Counters::add(&self.counters.lines, chunk.messages);
        Counters::add(&self.counters.bad_lines, bad);
        if chunk.messages > 0 {
            // Blocks while the output is behind: the socket buffer then fills and the kernel
            // drops (counted as `kernel_receive_buffer`), rather than this thread dropping
            // what it has accepted.
            let _ = self.output.blocking_send(chunk);
        }
    }
}
