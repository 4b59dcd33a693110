//! The agent side of the forward hop: one task per aggregator, holding that aggregator's
//! batches until it acknowledges them (`docs/forward-protocol.md`).
//!
//! Each flush hands every task its share of the changed series; the task numbers it (the
//! next `seq`), encodes it once, queues it and writes it if connected. Acknowledged batches
//! leave the queue; after a reconnection the aggregator's `Welcome` says how far it got and
//! the rest is sent again, oldest first. While an aggregator is down its share waits here —
//! it is never re-hashed onto another aggregator mid-interval — up to `buffer` bytes, past
//! which the oldest batches are dropped and counted. Every batch is also written to a journal
//! on disk ([`journal`]) until acknowledged, so a restart or a crash of the agent loses
//! none of them.

pub mod config;
pub mod journal;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use floodgate_forward::frame::{self, Decoder};
use floodgate_forward::proto::{self, frame::Kind, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::flush::Share;
use crate::sinks::delivery::backoff::Backoff;
use crate::sinks::delivery::inbox::Inbox;
use crate::sinks::delivery::queue::{Bounded, Entry};

/// Figures of one aggregator's link.
#[derive(Debug, Default)]
pub struct LinkCounters {
    /// Batches acknowledged.
    pub acked_batches: AtomicU64,
    /// Bytes of batches written (retries included).
    pub sent_bytes: AtomicU64,
    /// Series sent in batches acknowledged.
    pub acked_series: AtomicU64,
    /// Batches dropped: the buffer was full, or the aggregator refused one several times.
    pub dropped_batches: AtomicU64,
    /// Of those, batches the aggregator said it could not read ([`MAX_REFUSALS`] times).
    pub refused_batches: AtomicU64,
    /// Connection attempts that failed, and connections lost.
    pub errors: AtomicU64,
    /// Batches waiting for an acknowledgement.
    pub queued_batches: AtomicU64,
    /// Their bytes.
    pub queued_bytes: AtomicU64,
    /// 1 while connected.
    pub connected: AtomicU64,
}

/// How to reach one aggregator.
pub struct Link {
    /// `host:port`.
    pub address: String,
    /// TLS client configuration and the name to verify, or plain TCP.
    pub tls: Option<crate::net::TlsTarget>,
    /// This agent's name.
    pub agent_id: String,
    /// Chosen when the agent first ran with this state (see [`journal::session`]).
    pub session: u64,
    /// Bytes of unacknowledged batches held at most.
    pub buffer: u64,
    /// Figures.
    pub counters: Arc<LinkCounters>,
    /// The batches on disk (and what an earlier run left there).
    pub journal: Option<(journal::Journal, journal::Recovered)>,
}

struct Queued {
    seq: u64,
    series: usize,
    frame: bytes::Bytes,
}

impl Entry for Queued {
    fn bytes(&self) -> u64 {
        self.frame.len() as u64
    }
}

/// A batch the aggregator refuses this many times is dropped (and counted), so it never blocks
/// the batches behind it.
pub const MAX_REFUSALS: u32 = 3;
const TIMEOUT: Duration = Duration::from_secs(10);

/// Batches waiting for an acknowledgement: in memory, and on disk when there is a journal.
struct Held {
    queue: Bounded<Queued>,
    next_seq: u64,
    /// Acknowledged or given up through this sequence number.
    through: u64,
    journal: Option<journal::Journal>,
    /// The batch the aggregator last refused, and how many times in a row.
    refusals: (u64, u32),
    address: String,
    counters: Arc<LinkCounters>,
}

/// Series in an encoded batch frame (for the figures of a batch read back from disk).
fn series_in(frame: &bytes::Bytes) -> usize {
    match frame::incoming(frame.slice(4.min(frame.len())..)) {
        Ok(frame::Incoming::Batch(body)) => floodgate_forward::batch::BatchView::parse(&body).map_or(0, |v| v.series),
        _ => 0,
    }
}

impl Held {
    fn new(link: &mut Link) -> Held {
        let mut held = Held {
            queue: Bounded::new(link.buffer),
            next_seq: 1,
            through: 0,
            journal: None,
            refusals: (0, 0),
            address: link.address.clone(),
            counters: link.counters.clone(),
        };
        if let Some((journal, recovered)) = link.journal.take() {
            held.through = recovered.through;
            held.next_seq = recovered.through + 1;
            for (seq, frame) in recovered.batches {
                held.next_seq = held.next_seq.max(seq + 1);
                // All of them, even past the buffer: they were taken under an earlier one.
                held.queue.restore(Queued { seq, series: series_in(&frame), frame });
            }
            if !held.queue.is_empty() {
                tracing::info!(aggregator = %held.address, batches = held.queue.len(), bytes = held.queue.bytes(), "batches left unacknowledged by the last run: sending them again");
            }
            held.journal = Some(journal);
        }
        held.publish();
        held
    }

    fn publish(&self) {
        self.counters.queued_batches.store(self.queue.len() as u64, Relaxed);
        self.counters.queued_bytes.store(self.queue.bytes(), Relaxed);
    }

    /// Records on disk that everything through `seq` is done with.
    fn mark(&mut self, seq: u64) {
        self.through = self.through.max(seq);
        if let Some(j) = &mut self.journal {
            let left = self.queue.iter().map(|q| (q.seq, &q.frame));
            if let Err(e) = j.through(self.through, self.queue.bytes(), left) {
                tracing::error!(aggregator = %self.address, error = %e, "forward journal: cannot record acknowledged batches");
            }
        }
    }

    /// Cuts a share into batches of about [`BATCH_BYTES`](floodgate_forward::frame::BATCH_BYTES),
    /// numbers, encodes, journals and queues each (dropping the oldest past the buffer);
    /// returns the encoded frames.
    fn push(&mut self, share: Share) -> Vec<bytes::Bytes> {
        let (mut frames, mut dropped) = (Vec::new(), None);
        for series in floodgate_forward::batch::cut(share.series, floodgate_forward::frame::BATCH_BYTES) {
            let seq = self.next_seq;
            self.next_seq += 1;
            let n = series.len();
            let batch = proto::Batch {
                seq,
                interval_start_ms: share.interval_start_ms,
                interval_ms: share.interval_ms,
                series,
            };
            let mut buf = BytesMut::new();
            frame::encode(&Frame { kind: Some(Kind::Batch(batch)) }, &mut buf);
            let frame = buf.freeze();
            if let Some(j) = &mut self.journal {
                if let Err(e) = j.append(seq, &frame) {
                    tracing::error!(aggregator = %self.address, error = %e, "forward journal: cannot write a batch (it is held in memory only)");
                }
            }
            let (counters, address) = (&self.counters, &self.address);
            self.queue.push(Queued { seq, series: n, frame: frame.clone() }, |old| {
                counters.dropped_batches.fetch_add(1, Relaxed);
                tracing::warn!(aggregator = %address, seq = old.seq, "forward buffer full: dropped the oldest batch");
                dropped = Some(old.seq);
            });
            frames.push(frame);
        }
        if let Some(seq) = dropped {
            self.mark(seq);
        }
        self.publish();
        frames
    }

    /// The aggregator has handled everything through `seq`.
    fn acked(&mut self, seq: u64) {
        let mut any = false;
        let counters = &self.counters;
        self.queue.pop_acknowledged(
            |q| q.seq <= seq,
            |q| {
                counters.acked_batches.fetch_add(1, Relaxed);
                counters.acked_series.fetch_add(q.series as u64, Relaxed);
                any = true;
            },
        );
        if any || seq > self.through {
            self.mark(seq);
        }
        self.publish();
    }

    /// The aggregator could not read batch `seq`: after [`MAX_REFUSALS`] refusals in a row it
    /// is dropped and counted.
    fn refused(&mut self, seq: u64) {
        self.refusals = if self.refusals.0 == seq { (seq, self.refusals.1 + 1) } else { (seq, 1) };
        if self.refusals.1 < MAX_REFUSALS {
            return;
        }
        if let Some((i, q)) = self.queue.remove_first(|q| q.seq == seq) {
            self.counters.dropped_batches.fetch_add(1, Relaxed);
            self.counters.refused_batches.fetch_add(1, Relaxed);
            tracing::error!(aggregator = %self.address, seq, series = q.series, refusals = self.refusals.1, "the aggregator cannot read this batch: dropped");
            if i == 0 {
                self.mark(seq);
            }
        }
        self.refusals = (0, 0);
        self.publish();
    }
}

impl Link {
    /// Runs until `rx` closes and everything held is acknowledged (or `drain` has passed);
    /// what is still unacknowledged then stays in the journal for the next start.
    pub async fn run(mut self, rx: mpsc::UnboundedReceiver<Share>, drain: Duration) {
        let mut held = Held::new(&mut self);
        let mut inbox = Inbox::new(rx, drain);
        let mut backoff = Backoff::default();
        // The wait before the next attempt, when a failure already drew it (for the log).
        let mut wait = None;
        let c = self.counters.clone();
        loop {
            // Connect (and say hello) unless shutting down with nothing left.
            if inbox.drain_over() || (inbox.closing() && held.queue.is_empty()) {
                break;
            }
            let conn = match self.connect().await {
                Ok((stream, acked_through, decoder)) => {
                    held.acked(acked_through);
                    backoff.succeeded();
                    c.connected.store(1, Relaxed);
                    tracing::info!(aggregator = %self.address, acked_through, queued = held.queue.len(), "connected to aggregator");
                    Some((stream, decoder))
                }
                Err(e) => {
                    c.errors.fetch_add(1, Relaxed);
                    let retry_in = *wait.insert(backoff.failed());
                    tracing::warn!(aggregator = %self.address, error = %e, ?retry_in, "aggregator unreachable; holding its batches");
                    None
                }
            };
            if let Some((stream, mut decoder)) = conn {
                let (mut reader, writer) = tokio::io::split(stream);
                // An aggregator that stops reading (its outputs are full, or it hangs) makes a
                // write wait: past TIMEOUT the connection counts as lost and its batches wait
                // here, where new shares still arrive.
                let mut writer = crate::net::stream::Stalled::new(writer, TIMEOUT);
                let result: std::io::Result<()> = async {
                    for q in held.queue.iter() {
                        writer.write_all(&q.frame).await?;
                        c.sent_bytes.fetch_add(q.frame.len() as u64, Relaxed);
                    }
                    writer.flush().await?;
                    loop {
                        // Frames already buffered first.
                        while let Some(f) = decoder.decode().map_err(std::io::Error::other)? {
                            match f.kind {
                                Some(Kind::Ack(a)) => held.acked(a.seq),
                                Some(Kind::Error(e)) => {
                                    if e.refused_seq != 0 {
                                        held.refused(e.refused_seq);
                                    }
                                    return Err(std::io::Error::other(format!("aggregator said: {}", e.message)));
                                }
                                _ => {}
                            }
                        }
                        if inbox.closing() && held.queue.is_empty() {
                            return Ok(());
                        }
                        let drain_over = inbox.until_drain_over();
                        tokio::select! {
                            share = inbox.next(), if !inbox.closing() => {
                                // None: the drain has begun; the loop goes on until it ends.
                                if let Some(share) = share {
                                    for q in held.push(share) {
                                        writer.write_all(&q).await?;
                                        c.sent_bytes.fetch_add(q.len() as u64, Relaxed);
                                    }
                                    writer.flush().await?;
                                }
                            },
                            n = reader.read_buf(decoder.buffer()) => {
                                if n? == 0 {
                                    return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "aggregator closed the connection"));
                                }
                            }
                            _ = drain_over => return Ok(()),
                        }
                    }
                }
                .await;
                c.connected.store(0, Relaxed);
                if let Err(e) = result {
                    c.errors.fetch_add(1, Relaxed);
                    tracing::warn!(aggregator = %self.address, error = %e, "aggregator connection lost; will resend what it has not acknowledged");
                } else if inbox.closing() {
                    break;
                }
            }
            // Back off, still taking new shares meanwhile (they wait in the queue).
            let retry_in = wait.take().unwrap_or_else(|| backoff.failed());
            inbox
                .wait(retry_in, |share| {
                    held.push(share);
                })
                .await;
        }
        if !held.queue.is_empty() {
            if held.journal.is_some() {
                tracing::warn!(aggregator = %self.address, batches = held.queue.len(), "batches not acknowledged at shutdown: kept on disk for the next start");
            } else {
                c.dropped_batches.fetch_add(held.queue.len() as u64, Relaxed);
                tracing::error!(aggregator = %self.address, batches = held.queue.len(), "batches never acknowledged at shutdown");
            }
        }
        c.queued_batches.store(0, Relaxed);
        c.queued_bytes.store(0, Relaxed);
    }

    /// Connects, says hello, and returns the stream with the aggregator's handled mark.
    async fn connect(&self) -> std::io::Result<(crate::net::stream::Connection, u64, Decoder)> {
        let mut stream = crate::net::dial(&self.address, self.tls.as_ref(), TIMEOUT).await?;
        let hello = Frame {
            kind: Some(Kind::Hello(proto::Hello {
                version: floodgate_forward::VERSION,
                agent_id: self.agent_id.clone(),
                session: self.session,
            })),
        };
        let mut buf = BytesMut::new();
        frame::encode(&hello, &mut buf);
        stream.write_all(&buf).await?;
        stream.flush().await?;
        let mut decoder = Decoder::new(1 << 20);
        let welcome = tokio::time::timeout(TIMEOUT, async {
            loop {
                if let Some(f) = decoder.decode().map_err(std::io::Error::other)? {
                    return Ok::<Frame, std::io::Error>(f);
                }
                if stream.read_buf(decoder.buffer()).await? == 0 {
                    return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before Welcome"));
                }
            }
        })
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no Welcome"))??;
        match welcome.kind {
            Some(Kind::Welcome(w)) => Ok((stream, w.acked_through, decoder)),
            Some(Kind::Error(e)) => Err(std::io::Error::other(format!("aggregator refused: {}", e.message))),
            _ => Err(std::io::Error::other("expected Welcome")),
        }
    }
}

/// Every forward link's figures, by aggregator address.
#[derive(Default)]
pub struct LinksReport {
    /// One entry per aggregator.
    pub links: parking_lot::Mutex<Vec<(String, Arc<LinkCounters>)>>,
}

impl crate::metrics::Report for LinksReport {
    fn report(&self, out: &mut crate::metrics::Families) {
        use crate::metrics::{Describe, StatusPlace};
        type Field = fn(&LinkCounters) -> &AtomicU64;
        let place = |key| StatusPlace::many("forward", key);
        let rows: [(Describe, Field); 9] = [
            (
                Describe::counter(
                    "floodgate_forward_refused_batches_total",
                    "Batches dropped after the aggregator refused them 3 times.",
                ),
                |c| &c.refused_batches,
            ),
            (Describe::counter("floodgate_forward_acked_batches_total", "Batches an aggregator acknowledged."), |c| {
                &c.acked_batches
            }),
            (
                Describe::counter("floodgate_forward_acked_series_total", "Series in acknowledged batches.")
                    .status(place("acked_series")),
                |c| &c.acked_series,
            ),
            (Describe::counter("floodgate_forward_sent_bytes_total", "Batch bytes written (retries included)."), |c| {
                &c.sent_bytes
            }),
            (
                Describe::counter(
                    "floodgate_forward_dropped_batches_total",
                    "Batches dropped: buffer full, refused by the aggregator, or unacknowledged at shutdown.",
                )
                .status(place("dropped_batches")),
                |c| &c.dropped_batches,
            ),
            (
                Describe::counter("floodgate_forward_errors_total", "Failed connections and lost ones.")
                    .status(place("errors")),
                |c| &c.errors,
            ),
            (
                Describe::gauge("floodgate_forward_queued_batches", "Batches waiting for an acknowledgement.")
                    .status(place("queued_batches")),
                |c| &c.queued_batches,
            ),
            (
                Describe::gauge("floodgate_forward_queued_bytes", "Bytes of those batches.")
                    .status(place("queued_bytes")),
                |c| &c.queued_bytes,
            ),
            (
                Describe::gauge("floodgate_forward_connected", "1 while connected to the aggregator.")
                    .status(place("connected")),
                |c| &c.connected,
            ),
        ];
        for (address, c) in self.links.lock().iter() {
            for (describe, field) in &rows {
                out.add(*describe, &[("aggregator", address)], field(c).load(Relaxed));
            }
        }
    }
}

/// `[forward]`: a link (with its journal) to each aggregator, fed by the flusher with each
/// aggregator's share of a flush; `None` when not set.
pub fn build(
    shared: &Arc<crate::component::Shared>,
    config: &crate::config::Config,
    wiring: &mut crate::component::Wiring,
) -> anyhow::Result<Option<Box<dyn super::Sink>>> {
    use anyhow::Context;
    let Some(f) = &config.forward else { return Ok(None) };
    let agent_id = f.agent_id.clone().unwrap_or_else(crate::sys::host_name);
    let fresh = {
        use std::hash::BuildHasher;
        std::collections::hash_map::RandomState::new().hash_one(shared.epoch_wall_ns)
    };
    let lock = crate::files::lock_dir(&f.state_dir, "forward").context("forward state_dir")?;
    let session = journal::session(&f.state_dir, &agent_id, &f.aggregators, fresh)
        .with_context(|| format!("forward state_dir {}", f.state_dir.display()))?;
    // The last batches are acknowledged after the aggregators' next flush; what is not by then
    // stays in the journal, so the wait is bounded to fit a service manager's stop timeout
    // (systemd's is 90 s).
    let drain = (config.statsd.flush_interval + Duration::from_secs(10)).min(Duration::from_secs(30));
    let report = Arc::new(LinksReport::default());
    shared.metrics.add(report.clone());
    let (mut queues, mut tasks) = (Vec::new(), Vec::new());
    for address in &f.aggregators {
        let tls = match &f.tls {
            Some(tls) => Some(crate::net::tls_target(tls, address).context("forward tls")?),
            None => None,
        };
        let counters = Arc::new(LinkCounters::default());
        report.links.lock().push((address.clone(), counters.clone()));
        let journal = journal::Journal::open(&f.state_dir, address, session, f.fsync)
            .with_context(|| format!("forward journal in {}", f.state_dir.display()))?;
        let link = Link {
            address: address.clone(),
            tls,
            agent_id: agent_id.clone(),
            session,
            buffer: f.buffer,
            counters,
            journal: Some(journal),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        tasks.push(tokio::spawn(link.run(rx, drain)));
        queues.push(tx);
    }
    tracing::info!(aggregators = ?f.aggregators, %agent_id, tls = f.tls.is_some(), "forwarding flushes to aggregators");
    wiring.flush.forward = Some((floodgate_forward::ring::Ring::new(&f.aggregators), queues));
    Ok(Some(Box::new(Links { tasks, _lock: lock })))
}

/// The running links.
struct Links {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The state directory is this agent's while it runs.
    _lock: std::fs::File,
}

impl super::Sink for Links {
    fn name(&self) -> &'static str {
        "forward"
    }

    /// Each link empties its queue (bounded) once the flusher has dropped its sender.
    fn finish(self: Box<Self>) -> crate::component::Stopping {
        Box::pin(async move {
            let Links { tasks, _lock } = *self;
            for task in tasks {
                let _ = task.await;
            }
            drop(_lock);
        })
    }
}
