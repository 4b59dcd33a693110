//! The StatsD aggregation state: the store and every receive shard feeding it. Receive
//! threads write their own shards, the flusher merges them into the store each interval, the
//! aggregator merges agents' batches into the store, and the console and `/metrics` read it.
//! Each of them gets this handle rather than the whole running state.

use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::Arc;

use floodgate_statsd::{AggregationConfig, Shard, Store};
use parking_lot::Mutex;

use crate::clock::unix_now;

/// A shard shared between its one writer (a receive thread or the TCP tasks of a listener)
/// and the flusher, which swaps it out once per interval.
pub type SharedShard = Arc<Mutex<Shard>>;

/// The store and its shards.
pub struct Aggregation {
    /// Aggregated state.
    pub store: Mutex<Store>,
    /// Every receive shard.
    shards: Mutex<Vec<SharedShard>>,
    /// Last time a StatsD packet was merged, Unix seconds (console `stats`).
    pub last_msg_seen: AtomicI64,
    /// Series budgets per sender (`[limits] series_per_source`), shared by the store and the
    /// shards.
    pub budgets: Arc<floodgate_statsd::budget::SeriesBudgets>,
}

impl Aggregation {
    /// Empty, with Etsy statsd's options.
    pub fn new(config: AggregationConfig, budgets: floodgate_statsd::budget::BudgetLimits) -> Aggregation {
        let budgets = Arc::new(floodgate_statsd::budget::SeriesBudgets::new(budgets));
        let mut store = Store::new(config);
        store.set_series_budgets(Some(budgets.clone()));
        Aggregation {
            store: Mutex::new(store),
            shards: Mutex::new(Vec::new()),
            last_msg_seen: AtomicI64::new(unix_now()),
            budgets,
        }
    }

    /// A new receive shard, merged at every flush.
    pub fn new_shard(&self) -> SharedShard {
        // Until the next flush shares the budget out, a new shard may use an eighth of it.
        let allowance = match self.store.lock().config().max_memory {
            0 => u64::MAX,
            limit => limit / 8,
        };
        let shard = Arc::new(Mutex::new(self.store.lock().new_shard(allowance)));
        self.shards.lock().push(shard.clone());
        shard
    }

    /// Merges every shard into `store` (the flusher each interval; the console before showing
    /// live values).
    pub fn merge_shards(&self, store: &mut Store) {
        let shards = self.shards.lock().clone();
        // New series merged now were first seen now (to the merge).
        store.set_clock(unix_now());
        for shard in shards {
            // Swap under the lock (cheap), merge outside it so the receiver is not held up.
            let mut taken = shard.lock().take();
            if taken.packets > 0 {
                self.last_msg_seen.store(unix_now(), Relaxed);
            }
            store.merge(&mut taken);
        }
        // The shards learn the series merged now: a series merged between flushes (a scrape, a
        // console read) is not new to them any more, so they do not charge its sender again.
        if let Some(known) = store.known_series() {
            for shard in self.shards.lock().iter() {
                shard.lock().set_known(known.clone());
            }
        }
    }

    /// After a flush: tells every shard which series exist (for `max_series`) and gives each
    /// an equal share of what `max_memory` leaves until the next flush, after the store and
    /// `elsewhere` (state kept per series outside it: the mapping file's cache of names).
    pub fn share_budgets(&self, store: &mut Store, elsewhere: u64) {
        let shards = self.shards.lock();
        if let Some(known) = store.known_series() {
            for shard in shards.iter() {
                shard.lock().set_known(known.clone());
            }
        }
        // What max_series leaves for new series until the next flush, shared by every shard.
        store.refill_budget();
        let allowance = match store.config().max_memory {
            0 => u64::MAX,
            limit => limit.saturating_sub(store.memory_bytes() + elsewhere) / shards.len().max(1) as u64,
        };
        let limits = store.shard_limits(allowance);
        for shard in shards.iter() {
            shard.lock().set_limits(limits);
        }
    }

    /// SIGHUP: new aggregation options for the store and the shards' limits.
    pub fn reconfigure(&self, config: AggregationConfig) {
        let unlimited = config.max_memory == 0;
        let mut store = self.store.lock();
        store.reconfigure(config);
        for shard in self.shards.lock().iter() {
            let mut shard = shard.lock();
            let allowance = if unlimited { u64::MAX } else { shard.limits().memory_allowance };
            shard.set_limits(store.shard_limits(allowance));
        }
    }
}

/// Senders and names shown as labelled self-metrics: only this many, so labels stay bounded.
const TOP_LABELLED: usize = 5;

/// Cardinality attribution as self-metrics: the senders holding the most series, how many are
/// over their budget, and the names making the most new series (`/api/cardinality` has more).
impl crate::metrics::Report for Aggregation {
    fn report(&self, out: &mut crate::metrics::Families) {
        use crate::metrics::Describe;
        let over = self.budgets.at_budget();
        out.one(
            Describe::gauge(
                "floodgate_statsd_senders_over_series_budget",
                "Senders at their series budget ([limits] series_per_source, new_series_per_source) now.",
            ),
            over as u64,
        );
        let live = Describe::gauge(
            "floodgate_statsd_sender_series",
            "Live StatsD series created by each of the 5 senders holding the most (see /api/cardinality).",
        );
        out.family(live);
        for (sender, s) in self.budgets.top(TOP_LABELLED) {
            out.add(live, &[("sender", self.budgets.describe(sender).as_str())], s.live);
        }
        let new = Describe::gauge(
            "floodgate_statsd_new_series_by_name",
            "New StatsD series in the last full minute for each of the 5 metric names making the most (heavy-hitter              estimate; see /api/cardinality).",
        );
        out.family(new);
        let names = self.store.lock().attribution().top_new(TOP_LABELLED, false);
        for h in names {
            out.add(new, &[("name", h.name.as_str())], h.series);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use floodgate_statsd::budget::{BudgetLimits, Sender};
    use floodgate_statsd::{KeyRule, Parser};

    /// A series merged between flushes (a scrape) is charged to its sender once: the shards
    /// learn it at that merge, so its next value is not a new series to them.
    #[test]
    fn a_series_merged_between_flushes_is_not_charged_again() {
        let limits = BudgetLimits { series_per_sender: 100, new_series_per_minute: 100, ..Default::default() };
        let aggregation = Aggregation::new(AggregationConfig::default(), limits);
        let shard = aggregation.new_shard();
        let sender = Sender::Address("198.18.0.9".parse().unwrap());
        let mut parser = Parser::with_rule(KeyRule::default());
        let mut send = |line: &[u8]| {
            let mut s = shard.lock();
            s.sender = sender;
            parser.parse_packet(line, &mut *s);
        };
        send(b"scraped.a:1|c\n");
        aggregation.merge_shards(&mut aggregation.store.lock());
        send(b"scraped.a:1|c\n");
        assert_eq!(aggregation.budgets.get(sender).live, 1, "charged once, before the next merge too");
        aggregation.merge_shards(&mut aggregation.store.lock());
        assert_eq!(aggregation.budgets.get(sender).live, 1);
    }
}
