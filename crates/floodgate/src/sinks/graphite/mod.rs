//! The Graphite/Carbon sink: one connection per flush, one payload per connection (as Etsy
//! statsd does, so a flush is atomic at Carbon), sent in order.
//!
//! With `destinations`, a Carbon cluster: each flush is split by Carbon's consistent-hashing
//! ring ([`floodgate_carbon::Ring`]) into one payload per node, each node with its own queue,
//! back-off and figures. A node that is down holds its own share until it is back (or its
//! buffer overflows, counted): its metrics are never re-hashed onto the others, whose Whisper
//! files would then hold a piece of another node's history.
//!
//! Queueing, retries and back-off are [`deliver_all`](crate::sinks::delivery::flushes::deliver_all)'s; nothing here ever blocks the
//! flusher or the receive path.

pub mod config;
use std::sync::Arc;
use std::time::{Duration, Instant};

use floodgate_carbon::Ring;
use floodgate_statsd::graphite::GraphiteStats;
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::Sink;
use crate::clock::unix_now;
use crate::component::{Shared, Wiring};
use crate::config::Config;
use crate::flush::{Payload, Rendered};
use crate::sinks::delivery::flushes::{Deliver, DeliverError};

/// One Carbon destination.
pub struct GraphiteSink {
    /// `host:port` (SIGHUP may change a lone `address`; the next delivery uses the new one).
    pub address: Arc<parking_lot::RwLock<String>>,
    /// As configured in `destinations` (`host:port:instance`); `None` for a lone `address`.
    pub destination: Option<String>,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Shared with the flusher, which writes them into each payload (`graphiteStats.*`).
    pub stats: Arc<Mutex<GraphiteStats>>,
}

impl Deliver for GraphiteSink {
    fn name(&self) -> &'static str {
        "graphite"
    }

    fn destination(&self) -> Option<String> {
        self.destination.clone()
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

/// `[graphite] address` or `destinations`: the sink, its delivery loops and its rendering;
/// `None` when neither is set.
pub fn build(shared: &Arc<Shared>, config: &Config, wiring: &mut Wiring) -> anyhow::Result<Option<Box<dyn Sink>>> {
    let g = &config.graphite;
    let stats = shared.graphite_stats.clone();
    let sink = |address: String, destination| GraphiteSink {
        address: Arc::new(parking_lot::RwLock::new(address)),
        destination,
        timeout: g.timeout,
        stats: stats.clone(),
    };
    let (destinations, ring, address) = match (&g.address, g.ring().map_err(anyhow::Error::msg)?) {
        (Some(address), _) => {
            tracing::info!(%address, protocol = ?g.protocol, "graphite output on");
            let one = sink(address.clone(), None);
            let shared_address = one.address.clone();
            (vec![one], None, Some(shared_address))
        }
        (None, Some(ring)) => {
            let list: Vec<String> = g.destinations.iter().map(ToString::to_string).collect();
            tracing::info!(
                destinations = ?list,
                hashing = ring.hash_type().name(),
                replication = g.replication,
                diverse_replicas = g.diverse_replicas,
                protocol = ?g.protocol,
                "graphite output on: a Carbon cluster, sharded as Carbon's relay shards it"
            );
            for (position, moved) in ring.collisions() {
                tracing::warn!(
                    position,
                    destination = %g.destinations[*moved],
                    "two destinations share a ring position; floodgate moves the later one up as Carbon does, \
                     carbon-c-relay 3.7 does not: some metrics near it are placed differently by the two"
                );
            }
            let sinks = g.destinations.iter().map(|d| sink(d.address(), Some(d.to_string()))).collect();
            (sinks, Some(ring), None)
        }
        (None, None) => {
            tracing::info!("graphite output off (set [graphite] address or destinations)");
            return Ok(None);
        }
    };
    let route = ring.map(|ring| Route { ring, replication: g.replication, diverse: g.diverse_replicas });
    let render = Box::new(Render { stats, route });
    let delivery = crate::sinks::delivery::flushes::start_flush_sink(shared, wiring, destinations, g.buffer, render);
    Ok(Some(Box::new(Graphite { address, destinations: g.destinations.clone(), delivery })))
}

/// Where a cluster's metrics go: Carbon's ring and router settings.
struct Route {
    ring: Ring,
    replication: usize,
    diverse: bool,
}

/// Graphite's plaintext or pickle payload of a flush, with Etsy's `graphiteStats`; for a
/// cluster, one per node.
struct Render {
    stats: Arc<Mutex<GraphiteStats>>,
    route: Option<Route>,
}

impl crate::flush::Render for Render {
    fn render_view(&self, view: &floodgate_statsd::FlushView<'_>, config: &Config) -> Rendered {
        let (naming, protocol, stats) = (config.graphite_naming(), config.graphite_protocol(), *self.stats.lock());
        match &self.route {
            None => {
                let bytes = floodgate_statsd::graphite::render(view, &naming, protocol, &stats);
                let metrics = floodgate_statsd::graphite::count_metrics(&bytes, protocol);
                vec![(bytes, metrics)]
            }
            Some(Route { ring, replication, diverse }) => {
                let route = |name: &[u8], picks: &mut Vec<usize>| {
                    ring.destinations_into(name, *replication, *diverse, picks);
                };
                floodgate_statsd::graphite::render_sharded(view, &naming, protocol, &stats, ring.len(), route)
            }
        }
    }
}

/// The running Graphite sink.
struct Graphite {
    /// A lone `address`, which SIGHUP may change.
    address: Option<Arc<parking_lot::RwLock<String>>>,
    /// The cluster it started with.
    destinations: Vec<floodgate_carbon::Destination>,
    delivery: Box<dyn Sink>,
}

impl Sink for Graphite {
    fn name(&self) -> &'static str {
        "graphite"
    }

    fn reload(&mut self, config: &Config) {
        let g = &config.graphite;
        match (&self.address, &g.address) {
            (Some(address), Some(new)) if *new != *address.read() => {
                *address.write() = new.clone();
                tracing::info!(address = %new, "SIGHUP: graphite output now goes to the new address");
            }
            (Some(_), Some(_)) => {}
            (None, None) if g.destinations == self.destinations => {}
            _ => tracing::warn!(
                "SIGHUP: switching Graphite on or off, or changing its cluster, takes effect at the next restart"
            ),
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
        let render = Render { stats: Arc::new(Mutex::new(GraphiteStats::default())), route: None };
        let mut parts = store.flush(1_700_000_000, |view| render.render_view(view, &config));
        let (bytes, metrics) = parts.pop().unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("stats_counts.deploys 3 1700000000\n"), "{text}");
        assert!(text.contains("stats.gauges.load 0.5 1700000000\n"), "{text}");
        assert_eq!(metrics, text.lines().count());
    }
}
