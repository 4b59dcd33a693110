//! The flusher: on a fixed schedule, swap out every shard, merge into the store, compute Etsy
//! statsd's flush and hand the Graphite payload to the sink and each aggregator its share.
//! Runs on its own thread so a large merge never stalls the async runtime.
//!
//! The schedule is start + k × interval (flushes never drift), or, for agents that forward
//! and for aggregators, wall-clock multiples of the interval (so every agent's interval is
//! the same and its batches reach the aggregators together); an aggregator flushes `grace`
//! after the boundary, to let the agents' batches in, and stamps the flush with the boundary.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use parking_lot::RwLock;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use floodgate_forward::proto;
use floodgate_statsd::{FlushView, Store};
use tokio::sync::mpsc::UnboundedSender;

use crate::aggregation::Aggregation;
use crate::clock::{unix_ms, unix_now};
use crate::config::Config;
use crate::metrics::{Describe, Families, Report, StatusPlace};

/// A finished flush for one sink.
#[derive(Debug)]
pub struct Payload {
    /// Bytes to deliver.
    pub bytes: Vec<u8>,
    /// Metrics in it.
    pub metrics: usize,
    /// Told once the destination has taken the payload.
    pub delivered: Option<tokio::sync::oneshot::Sender<()>>,
    /// Holds agents' batches that are acknowledged once it is delivered: never dropped to make
    /// room (the sink reports itself full instead, and the aggregator stops taking batches).
    pub pinned: bool,
    /// Holds agents' batches, for one node of a cluster: while this node is down, the payload
    /// held in its own buffer counts as taken, so the acknowledgement waits for the healthy
    /// nodes only and one dead node does not stop the cluster (its share waits in its buffer,
    /// the oldest dropped and counted past it).
    pub held_is_enough: bool,
}

/// One flush's share for an aggregator.
#[derive(Debug)]
pub struct Share {
    /// Start of the flush interval, Unix ms.
    pub interval_start_ms: i64,
    /// The interval.
    pub interval_ms: u32,
    /// Changed series owned by this aggregator.
    pub series: Vec<proto::Series>,
}

/// Input acknowledged to its senders once a flush holding it has been delivered (agents'
/// batches, by the aggregator).
pub trait Acknowledged: Send + Sync {
    /// Taken for writing by a flush while it merges: no input is half merged meanwhile.
    fn gate(&self) -> &RwLock<()>;

    /// With the gate held: what runs once every sink has taken this flush, acknowledging
    /// what it holds (`None`: it holds nothing to acknowledge).
    fn receipt(self: Arc<Self>) -> Option<Box<dyn FnOnce() + Send>>;
}

/// A flush rendered for one sink: a payload (its bytes, and how many metrics they hold) per
/// queue of the sink, in the order of its queues; empty when the sink has nothing this flush.
/// A payload holding no metric is not sent.
pub type Rendered = Vec<(Vec<u8>, usize)>;

/// How a flush sink turns a flush into its payloads.
pub trait Render: Send {
    /// From the flush itself, while the store is held (Graphite: this interval's values).
    fn render_view(&self, _view: &FlushView<'_>, _config: &Config) -> Rendered {
        Vec::new()
    }

    /// From the store as it stands after the flush, as a scrape would see it (remote-write:
    /// cumulative counters).
    fn render_store(&self, _store: &Store, _timestamp: i64) -> Rendered {
        Vec::new()
    }
}

/// A sink the flusher hands each flush to.
pub struct FlushSink {
    /// The sink's delivery queues, one per destination.
    pub queues: Vec<UnboundedSender<Payload>>,
    /// Its rendering.
    pub render: Box<dyn Render>,
}

/// Where flushes go (each sink and source that takes part plugs itself in when it is built).
#[derive(Default)]
pub struct Outputs {
    /// The flush sinks (Graphite, remote-write).
    pub sinks: Vec<FlushSink>,
    /// The forward links, one per aggregator, with the ring that spreads series over them.
    pub forward: Option<(floodgate_forward::ring::Ring, Vec<UnboundedSender<Share>>)>,
    /// Input acknowledged once a flush holding it is delivered (the aggregator role).
    pub acknowledged: Option<Arc<dyn Acknowledged>>,
    /// Wall-clock aligned flushes, `grace` after each boundary.
    pub aligned: Option<Duration>,
}

/// The flush sinks' buffers: while one is full of flushes holding agents' batches, the
/// aggregator takes no more batches (agents keep them and resend).
#[derive(Default)]
pub struct SinksFull(parking_lot::Mutex<Vec<Arc<AtomicBool>>>);

impl SinksFull {
    /// Watches a sink.
    pub fn add(&self, full: Arc<AtomicBool>) {
        self.0.lock().push(full);
    }

    /// Whether any sink's buffer is full now.
    pub fn any(&self) -> bool {
        self.0.lock().iter().any(|full| full.load(Relaxed))
    }
}

/// What the flusher works with: the aggregation state, the configuration in force (re-read
/// each interval: SIGHUP may change naming and the interval), its figures.
#[derive(Clone)]
pub struct Flusher {
    /// The store and its shards.
    pub aggregation: Arc<Aggregation>,
    /// The configuration in force.
    pub config: Arc<RwLock<Config>>,
    /// Its figures.
    pub counters: Arc<FlushCounters>,
    /// The agent's start as Unix nanoseconds: turns gauge stamps into wall-clock times.
    pub epoch_wall_ns: i64,
    /// The async runtime, for acknowledging agents once a flush is delivered.
    pub runtime: tokio::runtime::Handle,
    /// The Prometheus naming, whose cache of names counts against `max_memory`.
    pub naming: Arc<crate::naming::Naming>,
}

/// One flush at `timestamp` (Unix seconds) for the interval ending at `boundary_ms`.
pub fn flush_once(f: &Flusher, out: &Outputs, timestamp: i64, boundary_ms: i64) {
    let started = Instant::now();
    let config = f.config.read().clone();
    let (interval, rule) = (config.statsd.flush_interval, config.key_rule());
    // No batch is half merged while the gate is held: the marks are exactly what this flush holds.
    let gate = out.acknowledged.as_ref().map(|a| a.gate().write());
    let mut store = f.aggregation.store.lock();
    f.aggregation.merge_shards(&mut store);
    let receipt = out.acknowledged.clone().and_then(|a| a.receipt());
    let interval_ms = interval.as_millis() as i64;
    let epoch_wall_ns = f.epoch_wall_ns;
    let payload = store.flush(timestamp, |view| {
        if let Some((ring, links)) = &out.forward {
            let wall_ns = |stamp| epoch_wall_ns + stamp as i64;
            let parts = floodgate_forward::batch::split(view, ring, links.len(), wall_ns, &rule);
            f.counters.forward_invalid_series.fetch_add(parts.invalid, Relaxed);
            for (link, series) in links.iter().zip(parts.shares) {
                let share =
                    Share { interval_start_ms: boundary_ms - interval_ms, interval_ms: interval_ms as u32, series };
                let _ = link.send(share);
            }
        }
        out.sinks.iter().map(|sink| sink.render.render_view(view, &config)).collect::<Vec<_>>()
    });
    let payloads: Vec<_> = out
        .sinks
        .iter()
        .zip(payload)
        .map(|(sink, during)| if during.is_empty() { sink.render.render_store(&store, timestamp) } else { during })
        .collect();
    let naming_bytes = f.naming.cache_bytes();
    f.aggregation.share_budgets(&mut store, naming_bytes);
    let memory = store.memory_bytes() + naming_bytes;
    let limit = store.config().max_memory;
    let t = &f.counters;
    let refused_before = t.dropped_max_memory.swap(store.dropped_max_memory, Relaxed);
    if store.dropped_max_memory > refused_before && !t.memory_limited.swap(true, Relaxed) {
        tracing::warn!(max_memory = limit, estimated = memory, "aggregation memory limit reached: new series refused, timer values summarised (raise [statsd] max_memory if this is legitimate)");
    } else if store.dropped_max_memory == refused_before && t.memory_limited.swap(false, Relaxed) {
        tracing::info!(estimated = memory, "aggregation memory back under its limit");
    }
    t.memory_bytes.store(memory, Relaxed);
    t.memory_limit.store(limit, Relaxed);
    t.series.store(store.series() as u64, Relaxed);
    t.dropped_max_series.store(store.dropped_max_series, Relaxed);
    t.dropped_series_budget.store(store.dropped_series_budget, Relaxed);
    t.folded_series_budget.store(store.folded_series_budget, Relaxed);
    drop(store);
    drop(gate);
    let mut deliveries = Vec::new();
    // A flush holding agents' batches is acknowledged to them once delivered: to a single
    // destination it may wait in the buffer, never be dropped from it; to a cluster, each node
    // delivers its share or, while down, holds it (see `Payload::held_is_enough`).
    let holds_batches = receipt.is_some();
    let mut send = |tx: &UnboundedSender<Payload>, bytes: Vec<u8>, metrics: usize, cluster: bool| {
        let (done, delivered) = tokio::sync::oneshot::channel();
        let (pinned, held_is_enough) = (holds_batches && !cluster, holds_batches && cluster);
        let _ = tx.send(Payload { bytes, metrics, delivered: Some(done), pinned, held_is_enough });
        deliveries.push(delivered);
    };
    for (sink, parts) in out.sinks.iter().zip(payloads) {
        let cluster = sink.queues.len() > 1;
        for (queue, (bytes, metrics)) in sink.queues.iter().zip(parts) {
            if metrics > 0 {
                send(queue, bytes, metrics, cluster);
            }
        }
    }
    if let Some(receipt) = receipt {
        // Acknowledged once what was sent is out of this process, every sink.
        f.runtime.spawn(async move {
            for delivered in deliveries {
                if delivered.await.is_err() {
                    return; // Dropped (buffer full or shutdown): the senders will resend.
                }
            }
            receipt();
        });
    }
    t.flushes.fetch_add(1, Relaxed);
    t.last_duration_us.store(started.elapsed().as_micros() as u64, Relaxed);
}

/// Runs flushes until `stop` fires (or its sender is dropped), then flushes once more.
pub fn run(f: Flusher, out: Outputs, stop: Receiver<()>) {
    let start = Instant::now();
    loop {
        let interval = f.config.read().statsd.flush_interval;
        let (wait, boundary_ms) = match out.aligned {
            Some(grace) => next_aligned_flush(unix_ms(), interval, grace),
            None => (next_flush_in(start.elapsed(), interval), 0),
        };
        let timestamp = |boundary_ms: i64| if out.aligned.is_some() { boundary_ms / 1000 } else { unix_now() };
        match stop.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => flush_once(&f, &out, timestamp(boundary_ms), boundary_ms),
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                // The last, partial interval: stamped now.
                let now = unix_ms();
                flush_once(&f, &out, timestamp(now), now);
                tracing::info!("final flush done");
                return;
            }
        }
    }
}

/// For wall-clock aligned flushes: the wait until `grace` after the next interval boundary
/// still ahead, and that boundary (Unix ms).
pub fn next_aligned_flush(now_ms: i64, interval: Duration, grace: Duration) -> (Duration, i64) {
    let interval_ms = (interval.as_millis() as i64).max(1);
    let grace_ms = grace.as_millis() as i64;
    let mut boundary = (now_ms - grace_ms).div_euclid(interval_ms) * interval_ms + interval_ms;
    if boundary + grace_ms <= now_ms {
        boundary += interval_ms;
    }
    (Duration::from_millis((boundary + grace_ms - now_ms) as u64), boundary)
}

/// Time from `elapsed` (since start) to the next flush at start + k × interval: flushes keep
/// to that grid however long each takes (no drift), and a flush that overran whole intervals
/// skips them rather than running back to back.
pub fn next_flush_in(elapsed: Duration, interval: Duration) -> Duration {
    let interval_ns = interval.as_nanos().max(1);
    let k = elapsed.as_nanos() / interval_ns + 1;
    let next = Duration::from_nanos((k * interval_ns).min(u64::MAX as u128) as u64);
    next.saturating_sub(elapsed)
}

/// Flush figures.
#[derive(Debug, Default)]
pub struct FlushCounters {
    /// Flushes done.
    pub flushes: AtomicU64,
    /// Duration of the last flush (merge + compute + render), microseconds.
    pub last_duration_us: AtomicU64,
    /// Series held after the last flush.
    pub series: AtomicU64,
    /// New series refused by `max_series`, total.
    pub dropped_max_series: AtomicU64,
    /// Series refused by their sender's series budget since start.
    pub dropped_series_budget: AtomicU64,
    /// Values of series over their sender's budget folded into overflow series, since start.
    pub folded_series_budget: AtomicU64,
    /// New series refused by `max_memory`, total.
    pub dropped_max_memory: AtomicU64,
    /// Refusals for memory happened in the last interval (for the log lines).
    pub memory_limited: AtomicBool,
    /// The aggregation state's estimated bytes after the last flush.
    pub memory_bytes: AtomicU64,
    /// `max_memory` (0: none).
    pub memory_limit: AtomicU64,
    /// Series an agent did not forward because an aggregator would refuse them (a sum that
    /// overflowed), total.
    pub forward_invalid_series: AtomicU64,
}

impl Report for FlushCounters {
    fn report(&self, out: &mut Families) {
        let place = |key| StatusPlace::one("flush", key);
        let dropped = Describe::counter(
            "floodgate_statsd_dropped_series_total",
            "New StatsD series refused, by the bound that refused them.",
        )
        .status(place("dropped_series").by("reason"));
        out.add(dropped, &[("reason", "max_series")], self.dropped_max_series.load(Relaxed));
        out.add(dropped, &[("reason", "series_budget")], self.dropped_series_budget.load(Relaxed));
        let folded = Describe::counter(
            "floodgate_statsd_series_budget_folded_total",
            "Values of new series over their sender's series budget, folded into the metric's overflow series.",
        );
        out.add(folded, &[], self.folded_series_budget.load(Relaxed));
        out.add(dropped, &[("reason", "max_memory")], self.dropped_max_memory.load(Relaxed));
        let rows = [
            Describe::gauge(
                "floodgate_statsd_memory_bytes",
                "Estimated bytes of the aggregation state after the last flush (keys, timer values, set members).",
            ),
            Describe::gauge(
                "floodgate_statsd_memory_limit_bytes",
                "max_memory: the aggregation state's byte budget (0: none).",
            ),
            Describe::counter(
                "floodgate_forward_invalid_series_total",
                "Series not forwarded because an aggregator would refuse them (a sum that overflowed).",
            ),
            Describe::gauge("floodgate_statsd_series", "StatsD series held after the last flush.")
                .status(place("series")),
            Describe::counter("floodgate_flushes_total", "StatsD flushes done.").status(place("flushes")),
        ];
        let values =
            [&self.memory_bytes, &self.memory_limit, &self.forward_invalid_series, &self.series, &self.flushes];
        for (describe, v) in rows.into_iter().zip(values) {
            out.one(describe, v.load(Relaxed));
        }
        out.one(
            Describe::gauge("floodgate_flush_duration_seconds", "Duration of the last flush (merge, compute, render).")
                .status(place("last_duration_seconds")),
            self.last_duration_us.load(Relaxed) as f64 / 1e6,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flushes_keep_to_the_grid() {
        let s = Duration::from_secs(10);
        assert_eq!(next_flush_in(Duration::ZERO, s), s);
        // A flush that started at 10 s and took 300 ms waits 9.7 s, not 10 s.
        assert_eq!(next_flush_in(Duration::from_millis(10_300), s), Duration::from_millis(9_700));
        // One that overran to 25 s skips the 20 s slot and waits for 30 s.
        assert_eq!(next_flush_in(Duration::from_secs(25), s), Duration::from_secs(5));
        // Exactly on a tick: the next one.
        assert_eq!(next_flush_in(Duration::from_secs(20), s), s);
    }

    #[test]
    fn aligned_flushes_fall_grace_after_each_boundary() {
        let s = Duration::from_secs(10);
        let g = Duration::from_secs(2);
        // At 1000.5 s: the boundary 1000 s was passed but its grace has not: flush at 1002 s.
        assert_eq!(next_aligned_flush(1_000_500, s, g), (Duration::from_millis(1_500), 1_000_000));
        // At 1003 s: the next is 1010 s + 2 s.
        assert_eq!(next_aligned_flush(1_003_000, s, g), (Duration::from_secs(9), 1_010_000));
        // Agents (no grace) flush on the boundary itself, the next one when exactly on it.
        assert_eq!(next_aligned_flush(1_010_000, s, Duration::ZERO), (s, 1_020_000));
    }
}
