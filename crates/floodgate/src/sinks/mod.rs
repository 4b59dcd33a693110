//! Outputs. Each sink builds itself from the configuration and plugs into the flusher
//! ([`crate::flush::Outputs`]) or, for the syslog output, hands the syslog listeners its
//! [`RecordPipe`](crate::record::RecordPipe); at shutdown each finishes after the final flush.
//!
//! Adding a sink: a module here with a `build` function, and one line in [`SINKS`].
//!
//! Graphite and remote-write share one delivery loop ([`deliver_all`]): payloads in order, a
//! bounded queue (the oldest dropped and counted past it), retries with the one back-off
//! ([`delivery::backoff`]),
//! a last try at shutdown, and a `delivered` signal per payload (aggregators acknowledge
//! agents on it). The forward links ([`forward`]) keep their own queue: theirs is emptied by
//! acknowledgements, not by writes.

pub mod delivery;
pub mod forward;
pub mod graphite;
pub mod remote_write;
pub mod syslog;

/// A running sink.
pub trait Sink: Send {
    /// Its name, for logs.
    fn name(&self) -> &'static str;

    /// SIGHUP: `config` is now in force (a new address, a file to reopen). What cannot change
    /// while running is logged, not applied.
    fn reload(&mut self, _config: &crate::config::Config) {}

    /// Shutdown, after the final flush: deliver what is held (bounded in time), then end.
    fn finish(self: Box<Self>) -> crate::component::Stopping;
}

/// Builds a sink from the configuration: `None` when it is off.
pub type Build = fn(
    &Arc<crate::component::Shared>,
    &crate::config::Config,
    &mut crate::component::Wiring,
) -> anyhow::Result<Option<Box<dyn Sink>>>;

/// Every sink: the one place a new sink is added. Sinks start before sources (the syslog
/// listeners write into the syslog output).
pub const SINKS: &[Build] = &[graphite::build, remote_write::build, forward::build, syslog::build];

/// Delivery tasks as a [`Sink`]: each ends once its queue's sender is gone and the queue is
/// delivered (or its last-try deadline passed).
pub struct DeliveryTask {
    /// For logs.
    pub name: &'static str,
    /// The tasks, one per destination.
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Sink for DeliveryTask {
    fn name(&self) -> &'static str {
        self.name
    }

    fn finish(self: Box<Self>) -> crate::component::Stopping {
        Box::pin(async move {
            for task in self.tasks {
                let _ = task.await;
            }
        })
    }
}

/// Starts the delivery loops of a flush sink, one per destination, each with its own queue of
/// up to `buffer` bytes, back-off and counters (labelled by destination when there are
/// several); payloads rendered by `render` each flush, one per destination in this order.
pub fn start_flush_sink<D: Deliver + 'static>(
    shared: &crate::component::Shared,
    wiring: &mut crate::component::Wiring,
    destinations: Vec<D>,
    buffer: u64,
    render: Box<dyn crate::flush::Render>,
) -> Box<dyn Sink> {
    let name = destinations.first().map_or("none", Deliver::name);
    let (mut queues, mut tasks) = (Vec::new(), Vec::new());
    for deliver in destinations {
        let counters = Arc::new(SinkCounters::default());
        shared.sinks_full.add(counters.full.clone());
        let destination = deliver.destination();
        shared.metrics.add(Arc::new(SinkReport { name, destination: destination.clone(), counters: counters.clone() }));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        queues.push(tx);
        let span = match &destination {
            Some(d) => tracing::info_span!("destination", address = %d),
            None => tracing::Span::none(),
        };
        let run = async move { deliver_all(deliver, rx, buffer, &counters, Duration::from_secs(10)).await };
        tasks.push(tokio::spawn(tracing::Instrument::instrument(run, span)));
    }
    wiring.flush.sinks.push(crate::flush::FlushSink { queues, render });
    Box::new(DeliveryTask { name, tasks })
}

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::flush::Payload;
use crate::metrics::{Describe, Families, Report, StatusPlace};

/// Why a delivery failed.
#[derive(Debug)]
pub struct DeliverError {
    /// Worth trying again later (unreachable, timeout, 5xx); else the payload is dropped.
    pub retry: bool,
    /// What happened.
    pub message: String,
}

impl From<std::io::Error> for DeliverError {
    fn from(e: std::io::Error) -> Self {
        DeliverError { retry: true, message: e.to_string() }
    }
}

/// A destination.
pub trait Deliver: Send + Sync {
    /// Its name in logs and metrics (`sink="..."`).
    fn name(&self) -> &'static str;
    /// Which of the sink's destinations it is (`destination="..."`), when it has several.
    fn destination(&self) -> Option<String> {
        None
    }
    /// Delivers one payload.
    fn deliver(&self, payload: &Payload) -> impl Future<Output = Result<(), DeliverError>> + Send;
}

/// Delivers payloads from `rx` until it closes, then tries what is left once more within
/// `drain_deadline`.
pub async fn deliver_all<D: Deliver>(
    sink: D,
    mut rx: mpsc::UnboundedReceiver<Payload>,
    buffer: u64,
    counters: &SinkCounters,
    drain_deadline: Duration,
) {
    let name = sink.name();
    let mut queue: VecDeque<Payload> = VecDeque::new();
    let mut queued_bytes: u64 = 0;
    let mut backoff = delivery::backoff::Backoff::default();
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut failing_since: Option<Instant> = None;
    let c = counters;
    loop {
        let wait = async {
            match retry_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(mut p) => {
                    if failing_since.is_some() {
                        held(&mut p);
                    }
                    queued_bytes += p.bytes.len() as u64;
                    queue.push_back(p);
                    // Past the bound the oldest flushes go, but never one holding agents'
                    // batches (pinned): those wait, and the aggregator stops taking more.
                    while queued_bytes > buffer && queue.len() > 1 {
                        let Some(i) = queue.iter().take(queue.len() - 1).position(|p| !p.pinned) else { break };
                        if let Some(old) = queue.remove(i) {
                            queued_bytes -= old.bytes.len() as u64;
                            c.dropped_payloads.fetch_add(1, Relaxed);
                            c.dropped_bytes.fetch_add(old.bytes.len() as u64, Relaxed);
                            tracing::warn!(sink = name, bytes = old.bytes.len(), "buffer full: dropped the oldest flush");
                        }
                    }
                }
                None => break,
            },
            _ = wait => { retry_at = None; }
        }
        if retry_at.is_none() {
            while let Some(front) = queue.front() {
                let result = sink.deliver(front).await;
                if result.is_err() {
                    c.errors.fetch_add(1, Relaxed);
                }
                c.reachable.store(result.as_ref().map_or_else(|e| !e.retry, |_| true), Relaxed);
                match result {
                    Ok(()) => {
                        if let Some(since) = failing_since.take() {
                            tracing::info!(sink = name, down_for = ?since.elapsed(), queued = queue.len(), "reachable again");
                        }
                        if let Some(p) = queue.pop_front() {
                            queued_bytes -= p.bytes.len() as u64;
                            delivered(p, c);
                        }
                        backoff.succeeded();
                    }
                    Err(e) if !e.retry => {
                        tracing::error!(sink = name, error = %e.message, "flush refused by the destination; dropped");
                        if let Some(p) = queue.pop_front() {
                            queued_bytes -= p.bytes.len() as u64;
                            c.dropped_payloads.fetch_add(1, Relaxed);
                            c.dropped_bytes.fetch_add(p.bytes.len() as u64, Relaxed);
                        }
                    }
                    Err(e) => {
                        if failing_since.is_none() {
                            tracing::warn!(sink = name, error = %e.message, "destination unreachable; buffering flushes");
                            failing_since = Some(Instant::now());
                            queue.iter_mut().for_each(held);
                        }
                        retry_at = Some(tokio::time::Instant::now() + backoff.failed());
                        break;
                    }
                }
            }
        }
        c.buffer_bytes.store(queued_bytes, Relaxed);
        c.buffer_payloads.store(queue.len() as u64, Relaxed);
        // Full only of what may not be dropped: a cluster node's held shares may.
        let full = queued_bytes >= buffer && queue.iter().any(|p| p.pinned);
        if c.full.swap(full, Relaxed) != full {
            if full {
                tracing::warn!(
                    sink = name,
                    buffer,
                    "buffer full of flushes holding agents' batches: taking no more batches until it drains"
                );
            } else {
                tracing::info!(sink = name, "buffer below its bound again: taking agents' batches");
            }
        }
    }
    // Shutting down: one more try for each held payload, in order, within the deadline.
    let deadline = Instant::now() + drain_deadline;
    while let Some(p) = queue.pop_front() {
        if Instant::now() >= deadline {
            queue.push_front(p);
            break;
        }
        if let Err(e) = sink.deliver(&p).await {
            tracing::error!(sink = name, error = %e.message, "unreachable at shutdown");
            queue.push_front(p);
            break;
        }
        delivered(p, c);
    }
    if !queue.is_empty() {
        let bytes: usize = queue.iter().map(|p| p.bytes.len()).sum();
        c.dropped_payloads.fetch_add(queue.len() as u64, Relaxed);
        tracing::error!(sink = name, flushes = queue.len(), bytes, "flushes lost at shutdown");
    }
    c.buffer_bytes.store(0, Relaxed);
    c.buffer_payloads.store(0, Relaxed);
}

/// A payload waiting in the buffer of a destination that is down: where holding it there is
/// enough (a cluster node), it counts as taken now.
fn held(p: &mut Payload) {
    if p.held_is_enough {
        if let Some(tx) = p.delivered.take() {
            let _ = tx.send(());
        }
    }
}

fn delivered(mut p: Payload, c: &SinkCounters) {
    c.sent_payloads.fetch_add(1, Relaxed);
    c.sent_bytes.fetch_add(p.bytes.len() as u64, Relaxed);
    c.sent_metrics.fetch_add(p.metrics as u64, Relaxed);
    if let Some(tx) = p.delivered.take() {
        let _ = tx.send(());
    }
}

/// A flush sink's figures (Graphite, remote-write).
#[derive(Debug)]
pub struct SinkCounters {
    /// Payloads (flushes) delivered.
    pub sent_payloads: AtomicU64,
    /// Bytes delivered.
    pub sent_bytes: AtomicU64,
    /// Metrics (lines) delivered.
    pub sent_metrics: AtomicU64,
    /// Failed connection or write attempts.
    pub errors: AtomicU64,
    /// Payloads dropped because the buffer was full.
    pub dropped_payloads: AtomicU64,
    /// Bytes dropped because the buffer was full.
    pub dropped_bytes: AtomicU64,
    /// Bytes waiting.
    pub buffer_bytes: AtomicU64,
    /// Payloads waiting.
    pub buffer_payloads: AtomicU64,
    /// The buffer is at its bound with flushes that may not be dropped: an aggregator takes no
    /// agent batches until it drains.
    pub full: Arc<AtomicBool>,
    /// The last attempt succeeded (true until one fails).
    pub reachable: AtomicBool,
}

impl Default for SinkCounters {
    fn default() -> Self {
        SinkCounters {
            sent_payloads: AtomicU64::new(0),
            sent_bytes: AtomicU64::new(0),
            sent_metrics: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            dropped_payloads: AtomicU64::new(0),
            dropped_bytes: AtomicU64::new(0),
            buffer_bytes: AtomicU64::new(0),
            buffer_payloads: AtomicU64::new(0),
            full: Arc::default(),
            reachable: AtomicBool::new(true),
        }
    }
}

/// A flush sink's figures under its name (`sink="graphite"`) and destination.
pub struct SinkReport {
    /// The `sink` label.
    pub name: &'static str,
    /// The `destination` label, for a sink with several.
    pub destination: Option<String>,
    /// Its counters.
    pub counters: Arc<SinkCounters>,
}

impl Report for SinkReport {
    fn report(&self, out: &mut Families) {
        type Field = fn(&SinkCounters) -> &AtomicU64;
        let place = |key| StatusPlace::many("sinks", key);
        let rows: [(Describe, Field); 8] = [
            (
                Describe::counter("floodgate_sink_sent_payloads_total", "Flush payloads delivered.")
                    .status(place("sent_payloads")),
                |c| &c.sent_payloads,
            ),
            (Describe::counter("floodgate_sink_sent_bytes_total", "Bytes delivered."), |c| &c.sent_bytes),
            (
                Describe::counter("floodgate_sink_sent_metrics_total", "Metrics delivered.")
                    .status(place("sent_metrics")),
                |c| &c.sent_metrics,
            ),
            (
                Describe::counter("floodgate_sink_errors_total", "Failed connection or write attempts.")
                    .status(place("errors")),
                |c| &c.errors,
            ),
            (
                Describe::counter(
                    "floodgate_sink_dropped_payloads_total",
                    "Payloads dropped: buffer full, or refused.",
                )
                .status(place("dropped_payloads")),
                |c| &c.dropped_payloads,
            ),
            (Describe::counter("floodgate_sink_dropped_bytes_total", "Bytes dropped: buffer full, or refused."), |c| {
                &c.dropped_bytes
            }),
            (
                Describe::gauge("floodgate_sink_buffer_bytes", "Bytes waiting to be delivered.")
                    .status(place("buffer_bytes")),
                |c| &c.buffer_bytes,
            ),
            (
                Describe::gauge("floodgate_sink_buffer_payloads", "Payloads waiting to be delivered.")
                    .status(place("buffer_payloads")),
                |c| &c.buffer_payloads,
            ),
        ];
        let mut labels = vec![("sink", self.name)];
        if let Some(d) = &self.destination {
            labels.push(("destination", d));
        }
        for (describe, field) in rows {
            out.add(describe, &labels, field(&self.counters).load(Relaxed));
        }
        out.add(
            Describe::gauge(
                "floodgate_sink_reachable",
                "1 while the destination takes deliveries, 0 from a failed attempt until one succeeds.",
            )
            .status(place("reachable")),
            &labels,
            u64::from(self.counters.reachable.load(Relaxed)),
        );
    }
}
