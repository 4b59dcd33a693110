//! The NATS JetStream output: each record (a JSON line) published on `subject`, with at most
//! `max_in_flight` awaiting JetStream's acknowledgement.
//!
//! Exactly once: every record carries a message id (`Nats-Msg-Id`) fixed when its chunk
//! enters the output: `<run>.<chunk>.<record>`. A chunk is taken off the queue only when every
//! one of its records is acknowledged; if any fails, the whole chunk is published again, and
//! the stream's duplicate window drops what it already holds. The id of a chunk is written at
//! its head (`#<run>.<chunk>` on a line of its own, which no JSON record starts with), so a
//! chunk kept in the spill file across a restart is published with the ids it had.
//!
//! While NATS is unreachable chunks wait in the memory queue, then the spill file, in order
//! (the same queue as the forward output's); the client reconnects by itself, and publishing
//! resumes on the back-off.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::jetstream;
use tokio::sync::mpsc;

use super::queue::Queue;
use super::{Chunk, OutputCounters};
use crate::config::SyslogNats;
use crate::sinks::delivery::backoff::Backoff;
use crate::sinks::delivery::inbox::Inbox;

/// How long one acknowledgement (or the stream's creation) may take.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// The NATS output's task.
pub(super) struct NatsOutput {
    config: SyslogNats,
    queue: Queue,
    counters: Arc<OutputCounters>,
    /// This run's part of every message id.
    run: String,
    /// The next chunk's number.
    next_chunk: u64,
    /// The servers `url` names.
    servers: Vec<async_nats::ServerAddr>,
}

impl NatsOutput {
    pub(super) fn new(config: &SyslogNats, counters: Arc<OutputCounters>) -> Result<NatsOutput> {
        let queue = Queue::open(config.buffer, config.spill.as_deref(), config.spill_max, config.fsync, &counters)?;
        if config.max_in_flight == 0 {
            anyhow::bail!("max_in_flight must be at least 1");
        }
        let run = format!("{}-{:016x}", crate::sys::host_name(), fastrand::u64(..));
        let servers = config
            .url
            .split(',')
            .map(|u| u.trim().parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("url `{}`", crate::config::redact_url(&config.url)))?;
        Ok(NatsOutput { config: config.clone(), queue, counters, run, next_chunk: 0, servers })
    }

    /// The connection's options: credentials and TLS (the client connects in the background,
    /// and again after every loss).
    async fn options(&self) -> Result<async_nats::ConnectOptions> {
        let c = &self.config;
        let mut options = async_nats::ConnectOptions::new()
            .name("floodgate")
            .retry_on_initial_connect()
            .connection_timeout(ACK_TIMEOUT)
            .max_reconnects(None);
        if let Some(token) = &c.token {
            options = options.token(token.clone());
        }
        if let Some(seed) = &c.nkey {
            options = options.nkey(seed.clone());
        }
        if let Some(path) = &c.credentials {
            options = options
                .credentials_file(path)
                .await
                .with_context(|| format!("cannot read NATS credentials {}", path.display()))?;
        }
        if let Some(tls) = &c.tls {
            let config = crate::net::tls::client_config(tls)?;
            options = options.require_tls(true).tls_client_config((*config).clone());
        }
        Ok(options)
    }

    /// Queues a chunk arriving from the listeners, its id written at its head (`works` as in
    /// [`Queue::take`]).
    fn take(&mut self, chunk: Chunk, works: bool) {
        let chunk = stamp(&self.run, &mut self.next_chunk, chunk);
        self.queue.take(chunk, works);
    }

    pub(super) async fn run(mut self, rx: mpsc::Receiver<Chunk>, drain: Duration) {
        let describe = crate::config::redact_url(&self.config.url);
        let client = match self.options().await {
            Ok(options) => options.connect(self.servers.clone()).await,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "syslog nats: cannot start; records are kept until shutdown");
                Err(async_nats::ConnectError::with_source(async_nats::ConnectErrorKind::Io, e))
            }
        };
        let client = match client {
            Ok(client) => Some(client),
            Err(e) => {
                tracing::error!(url = %describe, error = %e, "syslog nats: cannot connect");
                None
            }
        };
        let mut js = client.clone().map(jetstream::new);
        if let Some(js) = &mut js {
            js.set_timeout(ACK_TIMEOUT);
        }
        let mut stream_ready = self.config.stream.is_none();
        let mut backoff = Backoff::default();
        let mut inbox = Inbox::new(rx, drain);
        loop {
            let connected =
                client.as_ref().is_some_and(|c| c.connection_state() == async_nats::connection::State::Connected);
            self.counters.connected.store(connected as u64, Relaxed);
            // Working until a publish fails (the client may still be connecting at the start).
            let working = !backoff.is_failing();
            let (run, next) = (&self.run, &mut self.next_chunk);
            self.queue.take_ready(&mut inbox, working, |c| stamp(run, next, c));
            if self.queue.is_empty() {
                if inbox.closing() {
                    break;
                }
                if let Some(chunk) = inbox.next().await {
                    self.take(chunk, working);
                }
                continue;
            }
            if inbox.drain_over() {
                self.queue.give_up("syslog nats");
                break;
            }
            let Some(js) = &js else {
                // Misconfigured beyond retrying (a credentials file that cannot be read):
                // records wait for the shutdown, which keeps them in the spill file.
                let wait = inbox.patience(Duration::from_secs(3600));
                inbox.wait(wait, |c| self.take(c, false)).await;
                continue;
            };
            let attempt = async {
                if !stream_ready {
                    self.ensure_stream(js).await?;
                }
                Ok::<(), String>(())
            };
            if let Err(error) = attempt.await {
                self.failed(&describe, &error, &mut backoff, &mut inbox).await;
                continue;
            }
            stream_ready = true;
            let Some(chunk) = self.queue.pop() else { continue };
            // Input keeps coming while the chunk is published; shutdown starts the drain
            // clock at once.
            let (subject, in_flight) = (self.config.subject.clone(), self.config.max_in_flight);
            let result = {
                let publish = publish(js, &subject, &chunk, in_flight);
                tokio::pin!(publish);
                loop {
                    let drain_over = inbox.until_drain_over();
                    tokio::select! {
                        r = &mut publish => break r,
                        more = inbox.next(), if !inbox.closing() && self.queue.has_room() => {
                            if let Some(more) = more {
                                self.take(more, true);
                            }
                        },
                        _ = drain_over => break Err("shutdown drain over".into()),
                    }
                }
            };
            match result {
                Ok(Published { duplicates, too_large }) => {
                    backoff.succeeded();
                    self.queue.written();
                    let stored = chunk.messages.saturating_sub(too_large);
                    self.counters.written_messages.fetch_add(stored, Relaxed);
                    self.counters.written_bytes.fetch_add(chunk.bytes.len() as u64, Relaxed);
                    if too_large > 0 {
                        self.counters.dropped_messages.fetch_add(too_large, Relaxed);
                        tracing::warn!(
                            records = too_large,
                            "syslog nats: records larger than the server's max_payload dropped (raise max_payload, or lower [syslog] max_message)"
                        );
                    }
                    if duplicates > 0 {
                        tracing::info!(
                            duplicates,
                            "syslog nats: a retried chunk: records the stream already held were not stored again"
                        );
                    }
                }
                Err(error) => {
                    self.queue.unpop(chunk);
                    self.failed(&describe, &error, &mut backoff, &mut inbox).await;
                }
            }
        }
        if let Some(client) = client {
            let _ = tokio::time::timeout(Duration::from_secs(1), client.flush()).await;
        }
        self.counters.connected.store(0, Relaxed);
    }

    /// Counts and logs a failure, then waits the back-off, taking input meanwhile.
    async fn failed(
        &mut self,
        url: &str,
        error: &str,
        backoff: &mut Backoff,
        inbox: &mut Inbox<mpsc::Receiver<Chunk>>,
    ) {
        self.counters.errors.fetch_add(1, Relaxed);
        let retry_in = inbox.patience(backoff.failed());
        tracing::warn!(url, error, ?retry_in, "syslog nats: publish failed; records kept, publishing again");
        inbox.wait(retry_in, |c| self.take(c, false)).await;
    }

    /// Creates the stream if it is missing (taking the subject).
    async fn ensure_stream(&self, js: &jetstream::Context) -> Result<(), String> {
        let Some(name) = &self.config.stream else { return Ok(()) };
        let config = jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![self.config.subject.clone()],
            num_replicas: self.config.replicas,
            ..Default::default()
        };
        js.get_or_create_stream(config).await.map(|_| ()).map_err(|e| format!("stream {name}: {e}"))
    }
}

/// A chunk with its id (`#<run>.<n>`, then a newline) written at its head.
fn stamp(run: &str, next: &mut u64, chunk: Chunk) -> Chunk {
    let mut bytes = format!("#{run}.{next}\n").into_bytes();
    *next += 1;
    bytes.extend_from_slice(&chunk.bytes);
    let messages = chunk.messages;
    // Copied: its buffer goes back to the listeners, as the file output's do.
    chunk.recycle();
    Chunk { bytes, messages }
}

/// What one chunk's publishing came to.
struct Published {
    /// Records the stream already held (a retry).
    duplicates: u64,
    /// Records larger than the server takes (`max_payload`): dropped, not retried, or one
    /// such record would hold the output up for ever.
    too_large: u64,
}

/// Publishes every record of `chunk` with its id, at most `in_flight` unacknowledged; the
/// first other error fails the chunk (it is published again).
async fn publish(js: &jetstream::Context, subject: &str, chunk: &Chunk, in_flight: usize) -> Result<Published, String> {
    use jetstream::context::{PublishAckFuture, PublishErrorKind};
    // One copy of the chunk; each record's payload is a slice of it, and the subject is shared.
    let bytes = bytes::Bytes::copy_from_slice(&chunk.bytes);
    let subject = async_nats::Subject::from(subject);
    let (id, records) = split(&bytes);
    let mut pending: std::collections::VecDeque<PublishAckFuture> =
        std::collections::VecDeque::with_capacity(in_flight);
    let mut done = Published { duplicates: 0, too_large: 0 };
    let mut settle = |ack: Result<jetstream::publish::PublishAck, jetstream::context::PublishError>| match ack {
        Ok(ack) => {
            done.duplicates += ack.duplicate as u64;
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    };
    let mut too_large = 0;
    for (i, record) in records.enumerate() {
        if pending.len() >= in_flight {
            let ack = pending.pop_front().ok_or("no publish in flight")?;
            settle(ack.await)?;
        }
        let message = jetstream::message::PublishMessage::build()
            .payload(bytes.slice_ref(record))
            .message_id(format!("{id}.{i}"));
        match js.send_publish(subject.clone(), message).await {
            Ok(ack) => pending.push_back(ack),
            // Refused by the client before it is sent: no acknowledgement to wait for.
            Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => too_large += 1,
            Err(e) => return Err(e.to_string()),
        }
    }
    while let Some(ack) = pending.pop_front() {
        settle(ack.await)?;
    }
    done.too_large = too_large;
    Ok(done)
}

/// A stamped chunk's id and its records (one JSON line each).
fn split(bytes: &[u8]) -> (&str, impl Iterator<Item = &[u8]>) {
    let (id, rest) = match bytes.strip_prefix(b"#") {
        Some(after) => {
            let end = memchr::memchr(b'\n', after).unwrap_or(after.len());
            (std::str::from_utf8(&after[..end]).unwrap_or("unnamed"), after.get(end + 1..).unwrap_or_default())
        }
        None => ("unnamed", bytes),
    };
    (id, rest.split(|b| *b == b'\n').filter(|r| !r.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamped_chunk_gives_back_its_id_and_records() {
        let (id, records) = split(b"#host-00ab.7\n{\"a\":1}\n{\"b\":2}\n");
        assert_eq!(id, "host-00ab.7");
        assert_eq!(records.collect::<Vec<_>>(), vec![&b"{\"a\":1}"[..], &b"{\"b\":2}"[..]]);
    }
}
