//! The Graphite/Carbon sink: one connection per flush, one payload per connection (as Etsy
//! statsd does, so a flush is atomic at Carbon), sent in order.
//!
//! While Carbon is unreachable, payloads queue up to `buffer` bytes (the oldest dropped and
//! counted past it) and are retried with exponential back-off; nothing here ever blocks the
//! flusher or the receive path.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use floodgate_statsd::graphite::GraphiteStats;
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// A finished flush.
#[derive(Debug)]
pub struct Payload {
    /// Bytes to write.
    pub bytes: Vec<u8>,
    /// Metrics in it.
    pub metrics: usize,
    /// Told once Carbon has taken the payload (an aggregator acknowledges agents then).
    pub delivered: Option<tokio::sync::oneshot::Sender<()>>,
}

/// The sink's settings.
pub struct GraphiteSink {
    /// `host:port`.
    pub address: String,
    /// Bytes held at most.
    pub buffer: u64,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Shared with the flusher, which writes them into each payload (`graphiteStats.*`).
    pub stats: Arc<Mutex<GraphiteStats>>,
    /// Self-metrics.
    pub counters: Arc<crate::telemetry::Telemetry>,
}

const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl GraphiteSink {
    /// Delivers payloads from `rx` until it closes, then tries what is left once more within
    /// `drain_deadline` and returns.
    pub async fn run(self, mut rx: mpsc::UnboundedReceiver<Payload>, drain_deadline: Duration) {
        let mut queue: VecDeque<Payload> = VecDeque::new();
        let mut queued_bytes: u64 = 0;
        let mut backoff = MIN_BACKOFF;
        let mut retry_at: Option<tokio::time::Instant> = None;
        let mut failing_since: Option<Instant> = None;
        let c = &self.counters.graphite;
        loop {
            let wait = async {
                match retry_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(p) => {
                        queued_bytes += p.bytes.len() as u64;
                        queue.push_back(p);
                        while queued_bytes > self.buffer && queue.len() > 1 {
                            if let Some(old) = queue.pop_front() {
                                queued_bytes -= old.bytes.len() as u64;
                                c.dropped_payloads.fetch_add(1, Relaxed);
                                c.dropped_bytes.fetch_add(old.bytes.len() as u64, Relaxed);
                                tracing::warn!(bytes = old.bytes.len(), "graphite buffer full: dropped the oldest flush");
                            }
                        }
                    }
                    None => break,
                },
                _ = wait => { retry_at = None; }
            }
            if retry_at.is_none() {
                while let Some(front) = queue.front() {
                    match self.send(front).await {
                        Ok(()) => {
                            if let Some(since) = failing_since.take() {
                                tracing::info!(down_for = ?since.elapsed(), queued = queue.len(), "graphite reachable again");
                            }
                            if let Some(mut p) = queue.pop_front() {
                                queued_bytes -= p.bytes.len() as u64;
                                if let Some(tx) = p.delivered.take() {
                                    let _ = tx.send(());
                                }
                            }
                            backoff = MIN_BACKOFF;
                        }
                        Err(e) => {
                            if failing_since.is_none() {
                                tracing::warn!(address = %self.address, error = %e, "graphite unreachable; buffering flushes");
                                failing_since = Some(Instant::now());
                            }
                            retry_at = Some(tokio::time::Instant::now() + backoff);
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                            break;
                        }
                    }
                }
            }
            c.buffer_bytes.store(queued_bytes, Relaxed);
            c.buffer_payloads.store(queue.len() as u64, Relaxed);
        }
        // Shutting down: one more try for each held payload, in order, within the deadline.
        let deadline = Instant::now() + drain_deadline;
        while let Some(mut p) = queue.pop_front() {
            if Instant::now() >= deadline {
                queue.push_front(p);
                break;
            }
            if let Err(e) = self.send(&p).await {
                tracing::error!(error = %e, "graphite unreachable at shutdown");
                queue.push_front(p);
                break;
            }
            if let Some(tx) = p.delivered.take() {
                let _ = tx.send(());
            }
        }
        if !queue.is_empty() {
            let bytes: usize = queue.iter().map(|p| p.bytes.len()).sum();
            c.dropped_payloads.fetch_add(queue.len() as u64, Relaxed);
            tracing::error!(flushes = queue.len(), bytes, "graphite flushes lost at shutdown");
        }
        c.buffer_bytes.store(0, Relaxed);
        c.buffer_payloads.store(0, Relaxed);
    }

    async fn send(&self, p: &Payload) -> std::io::Result<()> {
        let c = &self.counters.graphite;
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, async {
            let mut stream = TcpStream::connect(&self.address).await?;
            stream.write_all(&p.bytes).await?;
            stream.shutdown().await
        })
        .await
        .unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out")));
        let now = unix_now();
        let mut stats = self.stats.lock();
        match &result {
            Ok(()) => {
                stats.flush_time = started.elapsed().as_millis() as u64;
                stats.flush_length = p.bytes.len() as u64;
                stats.last_flush = now;
                c.sent_payloads.fetch_add(1, Relaxed);
                c.sent_bytes.fetch_add(p.bytes.len() as u64, Relaxed);
                c.sent_metrics.fetch_add(p.metrics as u64, Relaxed);
            }
            Err(_) => {
                stats.last_exception = now;
                c.errors.fetch_add(1, Relaxed);
            }
        }
        result
    }
}

/// Unix time in whole seconds, rounded as Etsy statsd does (`Math.round(ms / 1000)`).
pub fn unix_now() -> i64 {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    ((ms + 500) / 1000) as i64
}
