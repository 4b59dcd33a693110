//! The forward output: octet-counted messages over TCP or TLS to a syslog server, held in
//! memory and then in the spill file while it is down, in order.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::queue::Queue;
use super::{Chunk, OutputCounters};
use crate::config::SyslogForward;
use crate::net::stream::{Connection, ReadNow};
use crate::sinks::delivery::backoff::Backoff;
use crate::sinks::delivery::inbox::Inbox;

const TIMEOUT: Duration = Duration::from_secs(10);

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
        // Records are whole octet-counted messages: what an earlier run left is sent first.
        let queue = Queue::open(config.buffer, config.spill.as_deref(), config.spill_max, config.fsync, &counters)?;
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
            // Connected, the server sets the pace; not connected, input is held or dropped.
            self.queue.take_ready(&mut inbox, conn.is_some(), |c| c);
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
                    self.queue.take(c, conn.is_some());
                }
                continue;
            }
            if inbox.drain_over() {
                self.queue.give_up("syslog forward");
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
                        inbox.wait(retry_in, |c| self.queue.take(c, false)).await;
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
                    more = inbox.next(), if !inbox.closing() && self.queue.has_room() => {
                        if let Some(more) = more {
                            self.queue.take(more, true);
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
