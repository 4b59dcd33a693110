//! The Graphite/Carbon sink: one connection per flush, one payload per connection (as Etsy
//! statsd does, so a flush is atomic at Carbon), sent in order.
//!
//! Queueing, retries and back-off are [`super::deliver_all`]'s; nothing here ever blocks the
//! flusher or the receive path.

pub mod config;
use std::sync::Arc;
use std::time::{Duration, Instant};

use floodgate_statsd::graphite::GraphiteStats;
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{Deliver, DeliverError, Sink};
use crate::clock::unix_now;
use crate::component::{Shared, Wiring};
use crate::config::Config;
use crate::flush::Payload;

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

/// `[graphite] address`: the sink, its delivery loop and its rendering; `None` when unset.
pub fn build(shared: &Arc<Shared>, config: &Config, wiring: &mut Wiring) -> anyhow::Result<Option<Box<dyn Sink>>> {
    let Some(address) = &config.graphite.address else {
        tracing::info!("graphite output off (set [graphite] address)");
        return Ok(None);
    };
    tracing::info!(%address, protocol = ?config.graphite.protocol, "graphite output on");
    let address = Arc::new(parking_lot::RwLock::new(address.clone()));
    let stats = shared.graphite_stats.clone();
    let sink = GraphiteSink { address: address.clone(), timeout: config.graphite.timeout, stats: stats.clone() };
    let delivery = super::start_flush_sink(shared, wiring, sink, config.graphite.buffer, Box::new(Render { stats }));
    Ok(Some(Box::new(Graphite { address, delivery })))
}

/// Graphite's plaintext or pickle payload of a flush, with Etsy's `graphiteStats`.
struct Render {
    stats: Arc<Mutex<GraphiteStats>>,
}

impl crate::flush::Render for Render {
    fn render_view(&self, view: &floodgate_statsd::FlushView<'_>, config: &Config) -> Option<(Vec<u8>, usize)> {
        let (naming, protocol, stats) = (config.graphite_naming(), config.graphite_protocol(), *self.stats.lock());
        let bytes = floodgate_statsd::graphite::render(view, &naming, protocol, &stats);
        let metrics = floodgate_statsd::graphite::count_metrics(&bytes, protocol);
        Some((bytes, metrics))
    }
}

/// The running Graphite sink.
struct Graphite {
    address: Arc<parking_lot::RwLock<String>>,
    delivery: Box<dyn Sink>,
}

impl Sink for Graphite {
    fn name(&self) -> &'static str {
        "graphite"
    }

    fn reload(&mut self, config: &Config) {
        match &config.graphite.address {
            Some(new) if *new != *self.address.read() => {
                *self.address.write() = new.clone();
                tracing::info!(address = %new, "SIGHUP: graphite output now goes to the new address");
            }
            Some(_) => {}
            None => tracing::warn!("SIGHUP: switching Graphite off takes effect at the next restart"),
        }
    }

    fn finish(self: Box<Self>) -> crate::component::Stopping {
        self.delivery.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flush::Render as _;

    #[test]
    fn a_flush_renders_etsy_names_and_counts_its_metrics() {
        let config = Config::default();
        let mut store = floodgate_statsd::Store::new(config.aggregation());
        let mut shard = store.new_shard(u64::MAX);
        floodgate_statsd::Parser::with_rule(config.key_rule()).parse_packet(b"deploys:3|c\nload:0.5|g", &mut shard);
        store.merge(&mut shard);
        let render = Render { stats: Arc::new(Mutex::new(GraphiteStats::default())) };
        let (bytes, metrics) = store.flush(1_700_000_000, |view| render.render_view(view, &config)).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("stats_counts.deploys 3 1700000000\n"), "{text}");
        assert!(text.contains("stats.gauges.load 0.5 1700000000\n"), "{text}");
        assert_eq!(metrics, text.lines().count());
    }
}
