//! The Graphite/Carbon sink: one connection per flush, one payload per connection (as Etsy
//! statsd does, so a flush is atomic at Carbon), sent in order.
//!
//! Queueing, retries and back-off are [`super::deliver_all`]'s; nothing here ever blocks the
//! flusher or the receive path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use floodgate_statsd::graphite::GraphiteStats;
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{Deliver, DeliverError, Payload};

/// The sink's settings.
pub struct GraphiteSink {
    /// `host:port` (SIGHUP may change it; the next delivery uses the new one).
    pub address: Arc<parking_lot::RwLock<String>>,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Shared with the flusher, which writes them into each payload (`graphiteStats.*`).
    pub stats: Arc<Mutex<GraphiteStats>>,
}

impl Deliver for GraphiteSink {
    fn name(&self) -> &'static str {
        "graphite"
    }

    async fn deliver(&self, p: &Payload) -> Result<(), DeliverError> {
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, async {
            let address = self.address.read().clone();
            let mut stream = TcpStream::connect(&address).await?;
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
            }
            Err(_) => stats.last_exception = now,
        }
        Ok(result?)
    }
}

/// Unix time in whole seconds, rounded as Etsy statsd does (`Math.round(ms / 1000)`).
pub fn unix_now() -> i64 {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    ((ms + 500) / 1000) as i64
}
