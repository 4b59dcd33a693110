//! The flusher: on a fixed schedule (start + k × interval, so flushes never drift), swap out
//! every shard, merge into the store, compute Etsy statsd's flush and hand the Graphite payload
//! to the sink. Runs on its own thread so a large merge never stalls the async runtime.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use floodgate_statsd::graphite;
use tokio::sync::mpsc::UnboundedSender;

use crate::app::Shared;
use crate::sinks::graphite::{unix_now, Payload};

/// Merges every shard into the store (the flusher does this each interval; the console does
/// it before showing live values).
pub fn merge_shards(shared: &Shared, store: &mut floodgate_statsd::Store) {
    let shards = shared.shards.lock().clone();
    for shard in shards {
        // Swap under the lock (cheap), merge outside it so the receiver is not held up.
        let mut taken = shard.lock().take();
        if taken.packets > 0 {
            shared.last_msg_seen.store(unix_now(), Relaxed);
        }
        store.merge(&mut taken);
    }
}

/// One flush at `timestamp`.
pub fn flush_once(shared: &Shared, graphite_tx: Option<&UnboundedSender<Payload>>, timestamp: i64) {
    let started = Instant::now();
    let (naming, protocol) = {
        let config = shared.config.read();
        (config.graphite_naming(), config.graphite_protocol())
    };
    let gstats = *shared.graphite_stats.lock();
    let mut store = shared.store.lock();
    merge_shards(shared, &mut store);
    let payload =
        store.flush(timestamp, |view| graphite_tx.map(|_| graphite::render(view, &naming, protocol, &gstats)));
    if let Some(known) = store.known_series() {
        for shard in shared.shards.lock().iter() {
            shard.lock().set_known(known.clone());
        }
    }
    let t = &shared.telemetry.flush;
    t.series.store(store.series() as u64, Relaxed);
    t.dropped_max_series.store(store.dropped_max_series, Relaxed);
    drop(store);
    if let (Some(tx), Some(bytes)) = (graphite_tx, payload) {
        let metrics = graphite::count_metrics(&bytes, protocol);
        let _ = tx.send(Payload { bytes, metrics });
    }
    t.flushes.fetch_add(1, Relaxed);
    t.last_duration_us.store(started.elapsed().as_micros() as u64, Relaxed);
}

/// Runs flushes until `stop` fires (or its sender is dropped), then flushes once more.
pub fn run(shared: std::sync::Arc<Shared>, graphite_tx: Option<UnboundedSender<Payload>>, stop: Receiver<()>) {
    let start = Instant::now();
    loop {
        let interval = shared.config.read().statsd.flush_interval;
        let wait = next_flush_in(start.elapsed(), interval);
        match stop.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => flush_once(&shared, graphite_tx.as_ref(), unix_now()),
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                flush_once(&shared, graphite_tx.as_ref(), unix_now());
                tracing::info!("final flush done");
                return;
            }
        }
    }
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
}
