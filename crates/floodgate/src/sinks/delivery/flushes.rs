//! The delivery loop of a sink that hands on each flush as one request (Graphite,
//! remote-write; OTLP next): payloads in order, a bounded queue ([`Bounded`]: the oldest
//! dropped and counted past it, never a flush holding agents' batches), retries with the one
//! back-off ([`Backoff`]), a last try within the drain at shutdown ([`Inbox`]), and a
//! `delivered` signal per payload (aggregators acknowledge agents on it). Such a sink is its
//! encoder and a [`Deliver`]; [`start_flush_sink`] does the rest.

use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::backoff::Backoff;
use super::inbox::{Inbox, Receive};
use super::queue::{Bounded, Entry};
use crate::flush::Payload;
use crate::metrics::{Describe, Families, Report, StatusPlace};
use crate::sinks::Sink;

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

/// How long a flush sink keeps trying at shutdown.
const DRAIN: Duration = Duration::from_secs(10);

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
        let inbox = Inbox::new(rx, DRAIN);
        let run = async move { deliver_all(deliver, inbox, buffer, &counters).await };
        tasks.push(tokio::spawn(tracing::Instrument::instrument(run, span)));
    }
    wiring.flush.sinks.push(crate::flush::FlushSink { queues, render });
    Box::new(DeliveryTask { name, tasks })
}

/// Why a delivery failed.
#[derive(Debug)]
pub struct DeliverError {
    /// Worth trying again later (unreachable, timeout, 5xx); else the payload is dropped.
    pub retry: bool,
    /// What happened.
    pub message: String,
    /// When to try again, if the destination said (`Retry-After`); else the back-off's.
    pub retry_after: Option<Duration>,
}

impl DeliverError {
    /// A failure worth a retry after the back-off.
    pub fn retry(message: impl Into<String>) -> DeliverError {
        DeliverError { retry: true, message: message.into(), retry_after: None }
    }

    /// A payload the destination will never take: dropped.
    pub fn dropped(message: impl Into<String>) -> DeliverError {
        DeliverError { retry: false, message: message.into(), retry_after: None }
    }
}

impl From<std::io::Error> for DeliverError {
    fn from(e: std::io::Error) -> Self {
        DeliverError::retry(e.to_string())
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

impl Entry for Payload {
    fn bytes(&self) -> u64 {
        self.bytes.len() as u64
    }
    /// A flush holding agents' batches waits; the aggregator stops taking more instead.
    fn droppable(&self) -> bool {
        !self.pinned
    }
}

/// Delivers payloads from `inbox` until it closes, then tries what is left once more within
/// its drain.
pub async fn deliver_all<D: Deliver, R: Receive<Payload>>(
    sink: D,
    mut inbox: Inbox<R>,
    buffer: u64,
    counters: &SinkCounters,
) {
    let name = sink.name();
    let mut queue: Bounded<Payload> = Bounded::new(buffer);
    let mut backoff = Backoff::default();
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut failing_since: Option<Instant> = None;
    let c = counters;
    let dropped = |old: Payload| {
        c.dropped_payloads.fetch_add(1, Relaxed);
        c.dropped_bytes.fetch_add(old.bytes.len() as u64, Relaxed);
        tracing::warn!(sink = name, bytes = old.bytes.len(), "buffer full: dropped the oldest flush");
    };
    loop {
        let wait = async {
            match retry_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            payload = inbox.next() => match payload {
                Some(mut p) => {
                    if failing_since.is_some() {
                        held(&mut p);
                    }
                    queue.push(p, dropped);
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
                            delivered(p, c);
                        }
                        backoff.succeeded();
                    }
                    Err(e) if !e.retry => {
                        tracing::error!(sink = name, error = %e.message, "flush refused by the destination; dropped");
                        if let Some(p) = queue.pop_front() {
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
                        // The destination's word on when, else the back-off (which still grows).
                        let wait = backoff.failed();
                        retry_at = Some(tokio::time::Instant::now() + e.retry_after.unwrap_or(wait));
                        break;
                    }
                }
            }
        }
        c.buffer_bytes.store(queue.bytes(), Relaxed);
        c.buffer_payloads.store(queue.len() as u64, Relaxed);
        // Full only of what may not be dropped: a cluster node's held shares may.
        let full = queue.full_of_kept();
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
    // Shutting down: one more try for each held payload, in order, within the drain.
    while let Some(p) = queue.pop_front() {
        if inbox.drain_over() {
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
        c.dropped_payloads.fetch_add(queue.len() as u64, Relaxed);
        tracing::error!(sink = name, flushes = queue.len(), bytes = queue.bytes(), "flushes lost at shutdown");
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

#[cfg(test)]
mod tests {
    //! The loop against a destination made for the test (the end-to-end tests use real
    //! Carbon and Prometheus), on paused tokio time: retries and drains are checked to the
    //! millisecond without waiting for them.
    use super::*;
    use parking_lot::Mutex;
    use tokio::time::Instant as TokioInstant;

    #[derive(Default)]
    struct Destination {
        up: bool,
        /// The next attempt is refused for good (a 400).
        refuse_next: bool,
        attempts: Vec<TokioInstant>,
        taken: Vec<Vec<u8>>,
    }

    #[derive(Clone, Default)]
    struct Fake(Arc<Mutex<Destination>>);

    impl Deliver for Fake {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn deliver(&self, payload: &Payload) -> impl Future<Output = Result<(), DeliverError>> + Send {
            let mut d = self.0.lock();
            d.attempts.push(TokioInstant::now());
            let result = if std::mem::take(&mut d.refuse_next) {
                Err(DeliverError::dropped("refused"))
            } else if d.up {
                d.taken.push(payload.bytes.clone());
                Ok(())
            } else {
                Err(DeliverError::retry("down"))
            };
            std::future::ready(result)
        }
    }

    fn payload(byte: u8, len: usize) -> Payload {
        Payload { bytes: vec![byte; len], metrics: 1, delivered: None, pinned: false, held_is_enough: false }
    }

    struct Running {
        tx: tokio::sync::mpsc::UnboundedSender<Payload>,
        task: tokio::task::JoinHandle<()>,
        counters: Arc<SinkCounters>,
        fake: Fake,
    }

    fn start(buffer: u64, up: bool) -> Running {
        let fake = Fake::default();
        fake.0.lock().up = up;
        let counters = Arc::new(SinkCounters::default());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (f, c) = (fake.clone(), counters.clone());
        let task = tokio::spawn(async move { deliver_all(f, Inbox::new(rx, DRAIN), buffer, &c).await });
        Running { tx, task, counters, fake }
    }

    /// Closes the input and waits for the loop to end.
    async fn stop(r: Running) -> (Fake, Arc<SinkCounters>) {
        drop(r.tx);
        r.task.await.unwrap();
        (r.fake, r.counters)
    }

    fn taken(r: &Running) -> Vec<u8> {
        r.fake.0.lock().taken.iter().map(|p| p[0]).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_is_retried_on_the_backoff_and_flushes_arrive_in_order() {
        let r = start(1 << 20, false);
        let t0 = TokioInstant::now();
        r.tx.send(payload(1, 10)).unwrap();
        r.tx.send(payload(2, 10)).unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!r.counters.reachable.load(Relaxed));
        assert_eq!(r.counters.buffer_payloads.load(Relaxed), 2);
        r.fake.0.lock().up = true;
        // The next retry (at most 10 s away) delivers both, in order.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(taken(&r), [1, 2]);
        assert!(r.counters.reachable.load(Relaxed));
        let attempts = r.fake.0.lock().attempts.clone();
        // Each wait is its step times [0.5, 1]: 0.2 s, 0.4 s, 0.8 s, …
        let mut step = 0.2f64;
        for pair in attempts.windows(2).take_while(|w| w[1] - t0 <= Duration::from_secs(5)) {
            let gap = (pair[1] - pair[0]).as_secs_f64();
            assert!((step / 2.0..=step + 1e-9).contains(&gap), "waited {gap} s on a step of {step} s");
            step = (step * 2.0).min(10.0);
        }
        // Every failed attempt counted; the two payloads' successes are not.
        assert_eq!(r.counters.errors.load(Relaxed) as usize, attempts.len() - 2);
        assert_eq!((r.counters.sent_payloads.load(Relaxed), r.counters.buffer_payloads.load(Relaxed)), (2, 0));
        drop(r.tx);
        r.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_buffer_the_oldest_flush_goes_but_never_one_holding_agents_batches() {
        let r = start(200, false);
        let mut pinned = payload(1, 100);
        pinned.pinned = true;
        r.tx.send(pinned).unwrap();
        r.tx.send(payload(2, 100)).unwrap();
        r.tx.send(payload(3, 100)).unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!((r.counters.dropped_payloads.load(Relaxed), r.counters.dropped_bytes.load(Relaxed)), (1, 100));
        assert!(r.counters.full.load(Relaxed), "full of a flush that may not be dropped");
        r.fake.0.lock().up = true;
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert_eq!(taken(&r), [1, 3], "the pinned flush kept, the oldest droppable one gone");
        assert!(!r.counters.full.load(Relaxed));
        drop(r.tx);
        r.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_flush_counts_as_taken_only_where_holding_is_enough() {
        let r = start(1 << 20, false);
        let (node_tx, mut node_rx) = tokio::sync::oneshot::channel();
        let (agent_tx, mut agent_rx) = tokio::sync::oneshot::channel();
        let mut node = payload(1, 10);
        (node.delivered, node.pinned, node.held_is_enough) = (Some(node_tx), true, true);
        let mut agent = payload(2, 10);
        (agent.delivered, agent.pinned) = (Some(agent_tx), true);
        r.tx.send(node).unwrap();
        r.tx.send(agent).unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(node_rx.try_recv().is_ok(), "a cluster node's share held while it is down counts as taken");
        assert!(agent_rx.try_recv().is_err(), "an agent's batch is acknowledged only once delivered");
        r.fake.0.lock().up = true;
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(agent_rx.try_recv().is_ok());
        drop(r.tx);
        r.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_flush_is_dropped_and_the_next_delivered() {
        let r = start(1 << 20, true);
        r.fake.0.lock().refuse_next = true;
        r.tx.send(payload(1, 10)).unwrap();
        r.tx.send(payload(2, 10)).unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(taken(&r), [2]);
        assert_eq!((r.counters.dropped_payloads.load(Relaxed), r.counters.errors.load(Relaxed)), (1, 1));
        assert!(r.counters.reachable.load(Relaxed), "a refusal is an answer: the destination is reachable");
        drop(r.tx);
        r.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn at_shutdown_what_is_held_gets_one_more_try_then_is_counted_lost() {
        // Back up just before the shutdown: delivered at once, not at the next retry.
        let r = start(1 << 20, false);
        r.tx.send(payload(1, 10)).unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        r.fake.0.lock().up = true;
        let closed = TokioInstant::now();
        let (fake, _) = stop(r).await;
        assert_eq!(fake.0.lock().taken, [vec![1u8; 10]]);
        assert_eq!(closed.elapsed(), Duration::ZERO);
        // Still down: one try, then both counted lost.
        let r = start(1 << 20, false);
        r.tx.send(payload(1, 10)).unwrap();
        r.tx.send(payload(2, 10)).unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let tries = r.fake.0.lock().attempts.len();
        let (fake, counters) = stop(r).await;
        assert_eq!(fake.0.lock().attempts.len(), tries + 1);
        assert_eq!((counters.dropped_payloads.load(Relaxed), counters.buffer_payloads.load(Relaxed)), (2, 0));
    }
}
