//! The queue of an output that sends records elsewhere (forward, NATS): memory first, then
//! the spill file, always in order; past both, chunks are dropped and counted.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::spill::Spill;
use tokio::sync::mpsc;

use super::{Chunk, OutputCounters};
use crate::sinks::delivery::inbox::Inbox;
use crate::sinks::delivery::queue::{Bounded, Entry};

impl Entry for Chunk {
    fn bytes(&self) -> u64 {
        self.bytes.len() as u64
    }
}

/// The forward output's queue: memory first, then the spill file; always in order.
pub(super) struct Queue {
    memory: Bounded<Chunk>,
    spill: Option<Spill>,
    /// The chunk last taken out came from the spill file (its write moves the saved position).
    popped_from_spill: bool,
    counters: Arc<OutputCounters>,
}

impl Queue {
    /// A queue of `buffer` bytes in memory, then the spill file at `spill` if any (what an
    /// earlier run left in it comes first).
    pub(super) fn open(
        buffer: u64,
        spill: Option<&std::path::Path>,
        spill_max: u64,
        fsync: crate::config::Fsync,
        counters: &Arc<OutputCounters>,
    ) -> anyhow::Result<Queue> {
        let spill = match spill {
            Some(path) => Some(Spill::open(path, spill_max, fsync)?),
            None => None,
        };
        let queue = Queue { memory: Bounded::new(buffer), spill, popped_from_spill: false, counters: counters.clone() };
        queue.publish();
        Ok(queue)
    }

    /// Whether more input should be taken while the destination is working: what is held
    /// (memory and spill) is under the memory bound. Past it, input waits for the destination
    /// (backpressure); only while the destination is away does input go on into the spill
    /// file, then get dropped.
    pub(super) fn has_room(&self) -> bool {
        self.memory.bytes() + self.spill.as_ref().map_or(0, Spill::held) < self.memory.limit()
    }

    /// Takes what the listeners have sent, without waiting. While the destination `works`:
    /// only while there is room ([`Queue::has_room`]), so a destination slower than the
    /// senders slows the senders (their sends wait) and nothing accepted is dropped. While it
    /// is away: everything ready, into memory, then the spill file, then dropped (counted).
    /// `prepare` readies each chunk (the NATS output writes its id at its head).
    pub(super) fn take_ready(
        &mut self,
        inbox: &mut Inbox<mpsc::Receiver<Chunk>>,
        works: bool,
        mut prepare: impl FnMut(Chunk) -> Chunk,
    ) {
        if works {
            while self.has_room() {
                let Some(chunk) = inbox.try_take() else { break };
                self.take(prepare(chunk), true);
            }
        } else {
            inbox.take_ready(|chunk| self.take(prepare(chunk), false));
        }
    }

    /// Appends one chunk taken from the listeners, `works` as in [`Queue::take_ready`].
    pub(super) fn take(&mut self, chunk: Chunk, works: bool) {
        if works {
            self.push_taken(chunk);
        } else {
            self.push(chunk);
        }
    }

    /// Appends a chunk taken while the destination works and the queue had room: kept whatever
    /// its size (so at most one chunk past the bound), behind what is spilled if anything is.
    fn push_taken(&mut self, chunk: Chunk) {
        if self.spill.as_ref().is_some_and(|s| s.held() > 0) {
            self.push(chunk);
        } else {
            self.memory.restore(chunk);
            self.publish();
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.memory.is_empty() && self.spill.as_ref().is_none_or(|s| s.held() == 0)
    }

    fn push(&mut self, chunk: Chunk) {
        let spilling = self.spill.as_ref().is_some_and(|s| s.held() > 0);
        if !spilling && self.memory.fits(chunk.bytes.len() as u64) {
            self.memory.push(chunk, |_| {});
        } else if let Some(spill) = &mut self.spill {
            match spill.push(&chunk) {
                Ok(true) => {}
                Ok(false) => self.drop_chunk(&chunk, "spill file full"),
                Err(e) => {
                    tracing::error!(path = %spill.path().display(), error = %e, "syslog spill write failed");
                    self.drop_chunk(&chunk, "spill write failed");
                }
            }
        } else {
            self.drop_chunk(&chunk, "buffer full");
        }
        self.publish();
    }

    fn drop_chunk(&self, chunk: &Chunk, why: &str) {
        tracing::warn!(messages = chunk.messages, why, "syslog output: dropping messages");
        self.counters.dropped_messages.fetch_add(chunk.messages, Relaxed);
    }

    /// The oldest chunk, taken out (memory holds the oldest; the spill what came after).
    pub(super) fn pop(&mut self) -> Option<Chunk> {
        self.popped_from_spill = false;
        let chunk = match self.memory.pop_front() {
            Some(c) => Some(c),
            None => match self.spill.as_mut().map(Spill::pop) {
                Some(Ok(c)) => {
                    self.popped_from_spill = c.is_some();
                    c
                }
                Some(Err(e)) => {
                    tracing::error!(error = %e, "syslog spill read failed; its contents are lost");
                    if let Some(s) = &mut self.spill {
                        self.counters.dropped_messages.fetch_add(s.lost(), Relaxed);
                    }
                    None
                }
                None => None,
            },
        };
        self.publish();
        chunk
    }

    /// The chunk last taken out was written to the server.
    pub(super) fn written(&mut self) {
        if std::mem::take(&mut self.popped_from_spill) {
            if let Some(spill) = &mut self.spill {
                if let Err(e) = spill.commit() {
                    tracing::error!(path = %spill.path().display(), error = %e, "syslog spill: cannot save the read position");
                }
            }
        }
    }

    /// Puts back a chunk that could not be written (it stays first).
    pub(super) fn unpop(&mut self, chunk: Chunk) {
        self.popped_from_spill = false;
        self.memory.push_front(chunk);
        self.publish();
    }

    /// The shutdown drain is over and the destination still does not take what is held: it
    /// goes into the spill file for the next run, or (with none) is lost, logged and counted.
    /// `output` names the output in the log.
    pub(super) fn give_up(&mut self, output: &str) {
        match self.keep() {
            Some(kept) => {
                tracing::warn!(messages = kept, "{output}: destination still unreachable at shutdown; messages kept in the spill file for the next start");
            }
            None => {
                let held = self.counters.buffer_messages.load(Relaxed);
                tracing::error!(
                    messages = held,
                    "{output}: shutdown drain timed out; messages lost (set a spill file to keep them)"
                );
                self.counters.dropped_messages.fetch_add(held, Relaxed);
            }
        }
    }

    /// At shutdown, what is still held goes into the spill file for the next run; returns the
    /// messages kept, or `None` without a spill file.
    fn keep(&mut self) -> Option<u64> {
        let spill = self.spill.as_mut()?;
        match spill.keep(&mut self.memory) {
            Ok(kept) => Some(kept),
            Err(e) => {
                tracing::error!(path = %spill.path().display(), error = %e, "syslog spill: cannot keep the held messages");
                None
            }
        }
    }

    fn publish(&self) {
        let memory_messages: u64 = self.memory.iter().map(|c| c.messages).sum();
        let spill = self.spill.as_ref();
        self.counters.buffer_bytes.store(self.memory.bytes(), Relaxed);
        self.counters.spill_bytes.store(spill.map_or(0, Spill::held), Relaxed);
        self.counters.buffer_messages.store(memory_messages + spill.map_or(0, Spill::held_messages), Relaxed);
    }
}
