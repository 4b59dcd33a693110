//! The forward output: octet-counted messages over TCP or TLS to a syslog server, held in
//! memory and then in the spill file while it is down, in order.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::spill::Spill;
use super::{Chunk, OutputCounters};
use crate::config::SyslogForward;
use crate::net::stream::{Connection, ReadNow};
use crate::sinks::delivery::backoff::Backoff;
use crate::sinks::delivery::inbox::Inbox;
use crate::sinks::delivery::queue::{Bounded, Entry};

const TIMEOUT: Duration = Duration::from_secs(10);

impl Entry for Chunk {
    fn bytes(&self) -> u64 {
        self.bytes.len() as u64
    }
}

/// The forward output's queue: memory first, then the spill file; always in order.
struct Queue {
    memory: Bounded<Chunk>,
    spill: Option<Spill>,
    /// The chunk last taken out came from the spill file (its write moves the saved position).
    popped_from_spill: bool,
    counters: Arc<OutputCounters>,
}

impl Queue {
    fn is_empty(&self) -> bool {
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
        tracing::warn!(messages = chunk.messages, why, "syslog forward: dropping messages");
        self.counters.dropped_messages.fetch_add(chunk.messages, Relaxed);
    }

    /// The oldest chunk, taken out (memory holds the oldest; the spill what came after).
    fn pop(&mut self) -> Option<Chunk> {
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
    fn written(&mut self) {
        if std::mem::take(&mut self.popped_from_spill) {
            if let Some(spill) = &mut self.spill {
                if let Err(e) = spill.commit() {
                    tracing::error!(path = %spill.path().display(), error = %e, "syslog spill: cannot save the read position");
                }
            }
        }
    }

    /// Puts back a chunk that could not be written (it stays first).
    fn unpop(&mut self, chunk: Chunk) {
        self.popped_from_spill = false;
        self.memory.push_front(chunk);
        self.publish();
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

/// The forward output's task.
pub(super) struct Forwarder {
    address: String,
    tls: Option<crate::net::TlsTarget>,
    queue: Queue,
    counters: Arc<OutputCounters>,
}

impl Forwarder {
    pub(super) fn new(config: &SyslogForward, counters: Arc<OutputCounters>) -> Result<Forwarder> {
        let tls = match &config.tls {
            Some(tls) => Some(crate::net::tls_target(tls, &config.address)?),
            None => None,
        };
        let spill = match &config.spill {
            // Records are whole octet-counted messages: what an earlier run left is sent first.
            Some(path) => Some(Spill::open(path, config.spill_max, config.fsync)?),
            None => None,
        };
        let queue =
            Queue { memory: Bounded::new(config.buffer), spill, popped_from_spill: false, counters: counters.clone() };
        queue.publish();
        Ok(Forwarder { address: config.address.clone(), tls, queue, counters })
    }

    pub(super) async fn run(mut self, rx: mpsc::Receiver<Chunk>, drain: Duration) {
        let mut conn: Option<Connection> = None;
        let mut backoff = Backoff::default();
        // The channel closes at shutdown: from then on the drain runs, whether or not the
        // queue is empty (a server that accepts but never reads must not hold shutdown up
        // forever).
        let mut inbox = Inbox::new(rx, drain);
        loop {
            inbox.take_ready(|c| self.queue.push(c));
            // Connects and writes wait at most until the drain's end once closing.
            let patience = inbox.patience(TIMEOUT);
            if self.queue.is_empty() {
                if inbox.closing() {
                    break;
                }
                if let Some(c) = &mut conn {
                    // Idle: make sure everything written has left before waiting.
                    let _ = c.flush().await;
                }
                if let Some(c) = inbox.next().await {
                    self.queue.push(c);
                }
                continue;
            }
            if inbox.drain_over() {
                match self.queue.keep() {
                    Some(kept) => {
                        tracing::warn!(messages = kept, "syslog forward: server still unreachable at shutdown; messages kept in the spill file for the next start");
                    }
                    None => {
                        let held = self.counters.buffer_messages.load(Relaxed);
                        tracing::error!(
                            messages = held,
                            "syslog forward: shutdown drain timed out; messages lost (set a spill file to keep them)"
                        );
                        self.counters.dropped_messages.fetch_add(held, Relaxed);
                    }
                }
                break;
            }
            if conn.as_mut().is_some_and(server_closed) {
                conn = None;
                self.counters.connected.store(0, Relaxed);
                tracing::warn!(address = %self.address, "syslog forward: server closed the connection");
            }
            let Some(c) = &mut conn else {
                match crate::net::dial(&self.address, self.tls.as_ref(), patience).await {
                    Ok(c) => {
                        tracing::info!(address = %self.address, "syslog forward: connected");
                        conn = Some(c);
                        backoff.succeeded();
                        self.counters.connected.store(1, Relaxed);
                    }
                    Err(e) => {
                        self.counters.errors.fetch_add(1, Relaxed);
                        let retry_in = backoff.failed();
                        tracing::warn!(address = %self.address, error = %e, ?retry_in, "syslog forward: cannot connect");
                        // Keep taking chunks while waiting, so listeners are not held up.
                        inbox.wait(retry_in, |c| self.queue.push(c)).await;
                    }
                }
                continue;
            };
            let Some(chunk) = self.queue.pop() else { continue };
            // A write to a server that stopped reading blocks until its timeout; meanwhile
            // chunks keep coming in, and shutdown starts the drain clock at once.
            let write = tokio::time::timeout(patience, c.write_all(&chunk.bytes));
            tokio::pin!(write);
            let result: std::result::Result<(), String> = loop {
                let drain_over = inbox.until_drain_over();
                tokio::select! {
                    r = &mut write => break match r {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err("write timed out".into()),
                    },
                    more = inbox.next(), if !inbox.closing() => {
                        if let Some(more) = more {
                            self.queue.push(more);
                        }
                    },
                    _ = drain_over => break Err("shutdown drain over".into()),
                }
            };
            match result {
                Ok(()) => {
                    self.queue.written();
                    self.counters.written_messages.fetch_add(chunk.messages, Relaxed);
                    self.counters.written_bytes.fetch_add(chunk.bytes.len() as u64, Relaxed);
                }
                Err(error) => {
                    tracing::warn!(address = %self.address, %error, "syslog forward: write failed; resending");
                    self.counters.errors.fetch_add(1, Relaxed);
                    self.counters.connected.store(0, Relaxed);
                    conn = None;
                    self.queue.unpop(chunk);
                }
            }
        }
        if let Some(mut c) = conn {
            // What the drain left (a second at least) to flush and close politely.
            let left = inbox
                .drain_ends()
                .map_or(TIMEOUT, |end| end.saturating_duration_since(tokio::time::Instant::now()))
                .max(Duration::from_secs(1));
            let _ = tokio::time::timeout(left, async {
                let _ = c.flush().await;
                let _ = c.shutdown().await;
            })
            .await;
        }
        self.counters.connected.store(0, Relaxed);
    }
}

/// Whether the server has closed (or reset) the connection: reads polled without waiting.
/// Data from the server (TLS session tickets aside, which the TLS layer consumes) is ignored.
fn server_closed(conn: &mut Connection) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match crate::net::stream::read_now(conn, &mut buf) {
            ReadNow::Data(_) => continue,
            ReadNow::Eof | ReadNow::Error => return true,
            ReadNow::Pending => return false,
        }
    }
}
