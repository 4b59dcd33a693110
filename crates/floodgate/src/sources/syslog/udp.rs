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

/// Records gathered over full batches before they go to the output. One hand-over per batch
/// woke the output's thread 64 messages at a time; the wake-ups (both threads' scheduler
/// work) cost about a seventh of the CPU per message under load (profiled). A batch that
/// drained the queue, or a read that timed out, hands over at once, so a quiet listener's
/// records wait no longer than before.
const GATHER_BYTES: usize = 256 * 1024;

/// Decodes one receive thread's datagrams into output chunks.
pub struct SyslogDatagrams {
    encoder: Encoder,
    output: mpsc::Sender<Chunk>,
    counters: Arc<Counters>,
    /// Records not handed to the output yet.
    pending: Chunk,
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
        SyslogDatagrams { encoder: Encoder::new(encoding, kind, zone), output, counters, pending: Chunk::default() }
    }

    /// Hands the gathered records to the output. Blocks while the output is behind: the
    /// socket buffer then fills and the kernel drops (counted as `kernel_receive_buffer`),
    /// rather than this thread dropping what it has accepted.
    fn hand_over(&mut self) {
        if self.pending.messages > 0 {
            // The next records go into a written chunk's buffer when one is spare.
            let _ = self.output.blocking_send(std::mem::replace(&mut self.pending, Chunk::with_room(0)));
        }
    }
}

impl DatagramHandler for SyslogDatagrams {
    fn messages(_: &[u8]) -> u64 {
        1
    }

    fn handle(&mut self, datagrams: Admitted<'_>, _now: u64, publish: &mut dyn FnMut()) {
        self.encoder.stamp();
        let chunk = &mut self.pending;
        chunk.bytes.reserve(datagrams.received() * 512);
        let before = chunk.messages;
        let mut bad = 0;
        for d in datagrams.iter() {
            if let Some(source) = d.source {
                self.encoder.set_source(source);
            }
            if let Some(peer) = d.peer {
                self.encoder.set_peer(peer);
            }
            if self.encoder.encode(d.data, d.truncated.then_some(TRUNCATED), chunk) == Some(false) {
                bad += 1;
            }
        }
        let messages = chunk.messages - before;
        let gathered = chunk.bytes.len();
        publish();
        Counters::add(&self.counters.lines, messages);
        Counters::add(&self.counters.bad_lines, bad);
        if !datagrams.full() || gathered >= GATHER_BYTES {
            self.hand_over();
        }
    }

    fn idle(&mut self) {
        self.hand_over();
    }

    fn finish(&mut self) {
        self.hand_over();
    }
}
