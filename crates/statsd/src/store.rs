//! The aggregated state between flushes, with Etsy statsd 0.9.0's flush semantics.
//!
//! Shards are merged in at flush; [`Store::flush`] computes what Etsy statsd's
//! `process_metrics` computes (counter rates, timer statistics, histograms), hands it to the
//! caller's writers as a [`FlushView`], then clears the state the way Etsy statsd does
//! (counters to 0, timers and sets emptied, gauges kept; or deleted with the `delete_*`
//! options and `gauges_max_ttl`).

use std::cmp::Ordering;
use std::time::Instant;

use crate::number::js_number;
use std::sync::Arc;

use floodgate_sketch::Distinct;

use crate::budget::{Sender, SeriesBudgets};
use crate::cardinality::Attribution;
use crate::forwarded::{GaugeChange, TimerSummary};

use crate::parse::Kind;
use crate::shard::{apply_gauge_delta, EntryRef, Key, KnownSeries, Map, MemberSet, Shard, ShardLimits};

/// One histogram rule (Etsy's `histogram` option): the first rule whose `metric` is a substring
/// of a timer's key gives its bins.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramRule {
    /// Substring to match in the key.
    pub metric: String,
    /// Upper bounds, exclusive, ascending; `f64::INFINITY` for `"inf"`.
    pub bins: Vec<f64>,
}

/// Aggregation options, mirroring Etsy statsd's.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregationConfig {
    /// `flushInterval`, in milliseconds (rates are per second of it).
    pub flush_interval_ms: u64,
    /// `percentThreshold`; negative means the lowest N%.
    pub percentiles: Vec<f64>,
    /// `histogram`.
    pub histograms: Vec<HistogramRule>,
    /// `deleteCounters`.
    pub delete_counters: bool,
    /// `deleteGauges`.
    pub delete_gauges: bool,
    /// `deleteTimers`.
    pub delete_timers: bool,
    /// `deleteSets`.
    pub delete_sets: bool,
    /// `gaugesMaxTTL` (forced to 1 unless an integer > 1, as Etsy does).
    pub gauges_max_ttl: u32,
    /// `prefixStats`.
    pub prefix_stats: String,
    /// `calculatedTimerMetrics`; empty = all.
    pub calculated_timer_metrics: Vec<String>,
    /// Series bound; new series beyond it are dropped and counted.
    pub max_series: usize,
    /// Raw values held per timer per interval; past it values are summarised (moments exact,
    /// percentiles from a 1 % sketch).
    pub max_timer_samples: usize,
    /// Exact members per set per interval; past it a HyperLogLog (±0.4 %).
    pub max_set_members: usize,
    /// Estimated bytes the whole aggregation state may hold (0: no limit); past it new series
    /// are refused and timer values summarised.
    pub max_memory: u64,
    /// Keep every timer's values since start in a sketch ([`TimerEntry::cumulative`]), for
    /// Prometheus histograms (cumulative bucket counts).
    pub cumulative_sketches: bool,
    /// Quantiles (0 to 1) Prometheus summaries ask for besides `percentiles` (a mapping file's
    /// `quantiles`), computed per timer at each flush ([`TimerEntry::last_quantiles`]).
    pub summary_quantiles: Vec<f64>,
}

impl Default for AggregationConfig {
    fn default() -> Self {
        AggregationConfig {
            flush_interval_ms: 10_000,
            percentiles: vec![90.0],
            histograms: Vec::new(),
            delete_counters: false,
            delete_gauges: false,
            delete_timers: false,
            delete_sets: false,
            gauges_max_ttl: 1,
            prefix_stats: "statsd".into(),
            calculated_timer_metrics: Vec::new(),
            max_series: 1_000_000,
            max_timer_samples: 100_000,
            max_set_members: 100_000,
            max_memory: 0,
            cumulative_sketches: false,
            summary_quantiles: Vec::new(),
        }
    }
}

/// A counter's state.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CounterEntry {
    /// Sum this interval.
    pub value: f64,
    /// Sum since start (for Prometheus, whose counters are cumulative).
    pub total: f64,
    /// Flushes since it last received a value (see [`Idle`]).
    pub idle: Idle,
    /// The sender its series budget charge is held for (series budgets).
    pub owner: Owner,
}

/// Flushes since a series last received a value: 0 until the flush that carries the value, 1
/// right after it, then one more per flush. A mapping rule's `ttl` hides a series from
/// Prometheus once it has been idle that long.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Idle(pub u32);

impl Idle {
    /// How long it has been idle, at `interval_ms` per flush (zero before the next flush).
    pub fn for_ms(self, interval_ms: u64) -> u64 {
        u64::from(self.0.saturating_sub(1)) * interval_ms
    }
}

/// A gauge's state.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GaugeEntry {
    /// Current value.
    pub value: f64,
    /// Stamp of the absolute value last applied (orders sets from different shards).
    set_stamp: u64,
    /// Flushes left before deletion (`delete_gauges`); `None` when not tracked.
    ttl: Option<u32>,
    /// How it changed this interval (for forwarding).
    interval: Option<GaugeChange>,
    /// Time of the forwarded set last applied (Unix ns; aggregators).
    forwarded_stamp: i64,
    /// Flushes since it last received a value.
    pub idle: Idle,
    /// The sender its series budget charge is held for (series budgets).
    pub owner: Owner,
}

/// A timer's state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TimerEntry {
    /// Values this interval.
    pub values: Vec<f64>,
    /// Samples this interval (sum of 1/rate).
    pub count: f64,
    /// Samples since start (Prometheus summary `_count`).
    pub total_count: f64,
    /// Sum of values since start (Prometheus summary `_sum`).
    pub total_sum: f64,
    /// Percentile bounds of the last flush, one per configured percentile (`None` if skipped).
    pub last_bounds: Vec<Option<f64>>,
    /// What agents forwarded this interval (aggregators), and values past
    /// `max_timer_samples`, summarised; the raw values join it at flush.
    pub forwarded: Option<TimerSummary>,
    /// Every value since start, when [`AggregationConfig::cumulative_sketches`] asks (merged
    /// exactly from agents' sketches at an aggregator).
    pub cumulative: Option<Box<floodgate_sketch::DDSketch>>,
    /// The StatsD types its values came as, since start.
    pub units: TimerUnits,
    /// The last flush's value at each of [`AggregationConfig::summary_quantiles`].
    pub last_quantiles: Vec<Option<f64>>,
    /// Flushes since it last received a value.
    pub idle: Idle,
    /// The sender its series budget charge is held for (series budgets).
    pub owner: Owner,
}

impl TimerEntry {
    /// Counts a summary's values (forwarded by an agent, or folded past `max_timer_samples`)
    /// in the since-start totals, and its sketch in the cumulative one when kept.
    fn add_to_totals(&mut self, summary: &TimerSummary, cumulative_sketches: bool) {
        self.total_count += summary.count;
        self.total_sum += summary.sum;
        if cumulative_sketches {
            self.cumulative.get_or_insert_with(Default::default).merge(&summary.sketch);
        }
    }
}

/// Which StatsD types a timer's values came as: `ms`, or DogStatsD's unitless `h` and `d`
/// (statsd_exporter turns `ms` into seconds and leaves the others as sent).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimerUnits(u8);

impl TimerUnits {
    const MILLISECONDS: u8 = 1;
    const UNITLESS: u8 = 2;

    /// One more value, unitless (`h`, `d`) or not (`ms`).
    #[inline]
    pub fn add(&mut self, unitless: bool) {
        self.0 |= if unitless { Self::UNITLESS } else { Self::MILLISECONDS };
    }

    /// Both sets of types.
    pub fn merge(&mut self, other: TimerUnits) {
        self.0 |= other.0;
    }

    /// Every value came as `h` or `d`: none is in milliseconds.
    pub fn unitless_only(self) -> bool {
        self.0 == Self::UNITLESS
    }
}

/// A set's state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SetEntry {
    /// Members this interval, local and forwarded by agents.
    pub members: MemberSet,
    /// Distinct members at the last flush.
    pub last_size: usize,
    /// Flushes since it last received a value.
    pub idle: Idle,
    /// The sender its series budget charge is held for (series budgets).
    pub owner: Owner,
}

impl SetEntry {
    /// Distinct members this interval (estimated once past `max_set_members`, or when an agent
    /// forwarded an estimate).
    pub fn size(&self) -> usize {
        self.members.len()
    }
}

/// Names of one percentile's timer statistics (`count_90`, `mean_90`, `upper_90`, ...).
#[derive(Debug, Clone)]
pub(crate) struct PercentileNames {
    pub(crate) pct: f64,
    pub(crate) count: String,
    pub(crate) mean: String,
    pub(crate) bound: String,
    pub(crate) sum: String,
    pub(crate) sum_squares: String,
}

impl PercentileNames {
    /// Appends one percentile's statistics in Etsy's order: `count_N`, then `mean`, `bound`,
    /// `sum`, `sum_squares` as given.
    pub(crate) fn push<'a>(
        &'a self,
        out: &mut Vec<(&'a str, f64)>,
        count: f64,
        [mean, bound, sum, sum_squares]: [f64; 4],
    ) {
        out.push((self.count.as_str(), count));
        out.push((self.mean.as_str(), mean));
        out.push((self.bound.as_str(), bound));
        out.push((self.sum.as_str(), sum));
        out.push((self.sum_squares.as_str(), sum_squares));
    }
}

/// The aggregated state.
#[derive(Debug)]
pub struct Store {
    cfg: AggregationConfig,
    pct_names: Vec<PercentileNames>,
    bin_names: Vec<Vec<String>>,
    counters: Map<CounterEntry>,
    gauges: Map<GaugeEntry>,
    timers: Map<TimerEntry>,
    sets: Map<SetEntry>,
    /// Names as sent, by the name sanitising made of them: what the Prometheus mapping sees
    /// ([`KeyRule::sent_names`](crate::KeyRule)). At most one per series name.
    sent_names: Map<Key>,
    /// Series budgets per sender (when any is set), and who created each series they charged.
    budgets: Option<Arc<SeriesBudgets>>,
    /// The time new series are first seen at (Unix seconds; the runtime sets it before it
    /// merges, and each flush).
    now: u32,
    /// Who the forwarded series being merged come from (an aggregator's agent).
    forward_sender: Sender,
    /// New series by name and sender, for `/api/cardinality` (fixed memory).
    attribution: Attribution,
    /// Series refused by a sender's series budget since start (shards' refusals).
    pub dropped_series_budget: u64,
    /// Values of series over their sender's budget folded into overflow series, since start.
    pub folded_series_budget: u64,
    key_bad_lines: Key,
    key_packets: Key,
    key_metrics: Key,
    key_timestamp_lag: Key,
    old_timestamp: i64,
    known_seed: u64,
    keys_changed: bool,
    /// Series refused by `max_series` since start (shards' refusals included).
    pub dropped_max_series: u64,
    /// Series refused by `max_memory` since start (shards' refusals).
    pub dropped_max_memory: u64,
    /// New series still allowed under `max_series`, shared with the shards.
    budget: Arc<crate::shard::SeriesBudget>,
}

/// Who made a series, and when the store first held it (`Sender::Unknown`: nobody's charge).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Owner {
    /// The sender its charge is held for.
    pub sender: Sender,
    /// Unix seconds (to the merge: a flush, a scrape or a console read).
    pub first_seen: u32,
}

/// One timer's statistics: Etsy's names (`upper_90`, `histogram.bin_0_1`, ...) and values.
pub type TimerStats<'a> = Vec<(&'a str, f64)>;

/// What one flush computed, for the writers (Graphite, console); borrowed from the store.
#[derive(Debug)]
pub struct FlushView<'a> {
    /// Flush time, Unix seconds.
    pub timestamp: i64,
    /// Flush interval in seconds (the divisor of rates).
    pub interval_secs: f64,
    counters: &'a Map<CounterEntry>,
    /// Timers: key and their statistics, Etsy names (`histogram.bin_X` for histogram bins).
    pub timers: Vec<(&'a [u8], TimerStats<'a>)>,
    gauges: &'a Map<GaugeEntry>,
    sets: &'a Map<SetEntry>,
    timer_entries: &'a Map<TimerEntry>,
    sent_names: &'a Map<Key>,
    internal: [&'a [u8]; 4],
    /// Etsy's `numStats`: counters + timers + gauges + sets.
    pub num_stats: usize,
    /// Etsy's `processing_time` (ms spent computing).
    pub processing_time_ms: u64,
}

impl<'a> FlushView<'a> {
    /// Counters: key, value this interval.
    pub fn counters(&self) -> impl ExactSizeIterator<Item = (&'a [u8], f64)> + 'a {
        self.counters.iter().map(|(k, c)| (&k[..], c.value))
    }
    /// Gauges: key, value.
    pub fn gauges(&self) -> impl ExactSizeIterator<Item = (&'a [u8], f64)> + 'a {
        self.gauges.iter().map(|(k, g)| (&k[..], g.value))
    }
    /// Sets: key, distinct members.
    pub fn sets(&self) -> impl ExactSizeIterator<Item = (&'a [u8], usize)> + 'a {
        self.sets.iter().map(|(k, s)| (&k[..], s.size()))
    }

    /// True for the store's own counters and gauges (`statsd.packets_received`, ...), which
    /// an agent does not forward.
    pub fn is_internal(&self, key: &[u8]) -> bool {
        self.internal.iter().any(|k| &k[..] == key)
    }

    /// Counters that changed this interval, without the internal ones (for forwarding).
    pub fn changed_counters(&self) -> impl Iterator<Item = (&'a [u8], f64)> + '_ {
        self.counters().filter(move |(k, v)| *v != 0.0 && !self.is_internal(k))
    }

    /// Gauges that changed this interval and how, without the internal ones.
    pub fn changed_gauges(&self) -> impl Iterator<Item = (&'a [u8], GaugeChange)> + '_ {
        self.gauges.iter().filter(move |(k, _)| !self.is_internal(k)).filter_map(|(k, g)| Some((&k[..], g.interval?)))
    }

    /// Timers that received values this interval, as summaries.
    pub fn changed_timers(&self) -> impl Iterator<Item = (&'a [u8], TimerSummary)> + 'a {
        self.timer_entries.iter().filter_map(|(k, t)| Some((&k[..], interval_summary(t)?)))
    }

    /// The name a series name was sent as, when sanitising changed it (see
    /// [`Store::sent_name`]).
    pub fn sent_name(&self, name: &[u8]) -> Option<&'a [u8]> {
        self.sent_names.get(&crate::shard::KeyRef(name)).map(|v| &v[..])
    }

    /// Counters and their state (this interval's value, the total since start).
    pub fn counter_entries(&self) -> impl Iterator<Item = (&'a [u8], &'a CounterEntry)> + 'a {
        self.counters.iter().map(|(k, c)| (&k[..], c))
    }

    /// Gauges and their state.
    pub fn gauge_entries(&self) -> impl Iterator<Item = (&'a [u8], &'a GaugeEntry)> + 'a {
        self.gauges.iter().map(|(k, g)| (&k[..], g))
    }

    /// Sets and their state (this interval's members).
    pub fn set_entries(&self) -> impl Iterator<Item = (&'a [u8], &'a SetEntry)> + 'a {
        self.sets.iter().map(|(k, s)| (&k[..], s))
    }

    /// Timers and their state (the since-start totals and sketch, when kept).
    pub fn timer_entries(&self) -> impl Iterator<Item = (&'a [u8], &'a TimerEntry)> + 'a {
        self.timer_entries.iter().map(|(k, t)| (&k[..], t))
    }

    /// Sets that received members this interval, as distinct counts.
    pub fn changed_sets(&self) -> impl Iterator<Item = (&'a [u8], Distinct)> + 'a {
        self.sets.iter().filter(|(_, s)| !s.members.is_empty()).map(|(k, s)| (&k[..], s.members.to_distinct()))
    }
}

/// What a timer received this interval, as one summary (at flush: an aggregator's agents'
/// summaries, and values folded past `max_timer_samples`, merged with the raw values); `None`
/// when it received nothing.
pub fn interval_summary(t: &TimerEntry) -> Option<TimerSummary> {
    let mut summary = match &t.forwarded {
        Some(f) => f.clone(),
        None if t.values.is_empty() => return None,
        None => TimerSummary::from_values(&t.values, t.count),
    };
    summary.unitless = t.units.unitless_only();
    Some(summary)
}

impl Store {
    /// An empty store with Etsy statsd's internal counters in place.
    pub fn new(cfg: AggregationConfig) -> Self {
        let prefix = cfg.prefix_stats.clone();
        let k = |s: &str| -> Key { format!("{prefix}.{s}").into_bytes().into_boxed_slice() };
        let mut store = Store {
            pct_names: Vec::new(),
            bin_names: Vec::new(),
            counters: Map::default(),
            gauges: Map::default(),
            timers: Map::default(),
            sets: Map::default(),
            sent_names: Map::default(),
            budgets: None,
            now: 0,
            forward_sender: Sender::Unknown,
            attribution: Attribution::default(),
            dropped_series_budget: 0,
            folded_series_budget: 0,
            key_bad_lines: k("bad_lines_seen"),
            key_packets: k("packets_received"),
            key_metrics: k("metrics_received"),
            key_timestamp_lag: k("timestamp_lag"),
            old_timestamp: 0,
            known_seed: {
                use std::hash::BuildHasher;
                std::collections::hash_map::RandomState::new().hash_one(0u8)
            },
            keys_changed: true,
            dropped_max_series: 0,
            dropped_max_memory: 0,
            budget: Arc::default(),
            cfg: AggregationConfig::default(),
        };
        store.reconfigure(cfg);
        for key in [&store.key_bad_lines, &store.key_packets, &store.key_metrics] {
            store.counters.insert(key.clone(), CounterEntry::default());
        }
        store.refill_budget();
        store
    }

    /// Applies new options (reload); the aggregated data is kept.
    pub fn reconfigure(&mut self, mut cfg: AggregationConfig) {
        cfg.gauges_max_ttl = cfg.gauges_max_ttl.max(1);
        self.budget.set(cfg.max_series.saturating_sub(self.series()));
        self.pct_names = cfg.percentiles.iter().map(|&pct| percentile_names(pct)).collect();
        self.bin_names = cfg
            .histograms
            .iter()
            .map(|h| h.bins.iter().map(|b| format!("histogram.{}", bin_name(*b))).collect())
            .collect();
        self.cfg = cfg;
    }

    /// The options in force.
    pub fn config(&self) -> &AggregationConfig {
        &self.cfg
    }

    /// Series held (all types, internal ones included).
    pub fn series(&self) -> usize {
        self.counters.len() + self.gauges.len() + self.timers.len() + self.sets.len()
    }

    fn has_room(&mut self) -> bool {
        if self.series() < self.cfg.max_series {
            true
        } else {
            self.dropped_max_series += 1;
            false
        }
    }

    /// Merges a shard in, draining it (its maps keep their capacity for reuse).
    pub fn merge(&mut self, shard: &mut Shard) {
        let before = self.series();
        // Who made which new series, taken before the merge recycles the shard: each series the
        // store takes in as new keeps its charge (`adopt`); the rest are given back.
        let mut owners: [crate::shard::Owners; 4] = std::mem::take(&mut shard.owners);
        let minute = self.budgets.as_ref().map_or(0, |b| b.minute());
        self.merge_inner(shard, &mut owners, minute);
        self.give_back_charges(owners);
        self.keys_changed |= self.series() != before;
    }

    /// A series the store is taking in as new: if a shard charged it to its sender, the store
    /// keeps that charge (the owner it returns goes into the series' entry), and attributes it.
    fn adopt(&mut self, kind: usize, key: &[u8], owners: &mut [crate::shard::Owners; 4], minute: u64) -> Owner {
        if owners[kind].is_empty() {
            return Owner::default();
        }
        let (Some(budgets), Some(sender)) =
            (self.budgets.as_ref(), owners[kind].remove(&crate::shard::owner_hash(key)))
        else {
            return Owner::default();
        };
        self.attribution.new_series(key, sender, minute, budgets);
        Owner { sender, first_seen: self.now }
    }

    /// The charges of series a shard made that the store did not take in as new (another
    /// shard's first, held since an earlier merge, or refused here): given back.
    fn give_back_charges(&mut self, owners: [crate::shard::Owners; 4]) {
        let Some(budgets) = &self.budgets else { return };
        for (_, sender) in owners.into_iter().flatten() {
            budgets.uncharge(sender);
        }
    }

    /// Gives back the charge a series the store let go held.
    fn release(budgets: &Option<Arc<SeriesBudgets>>, owner: Owner) {
        if let (Some(b), true) = (budgets, owner.sender != Sender::Unknown) {
            b.refund(owner.sender);
        }
    }

    /// Charges new series to their senders against `budgets` (shards made after take them
    /// too); `None` stops it.
    pub fn set_series_budgets(&mut self, budgets: Option<Arc<SeriesBudgets>>) {
        if budgets.is_none() {
            self.counters.values_mut().for_each(|e| e.owner = Owner::default());
            self.gauges.values_mut().for_each(|e| e.owner = Owner::default());
            self.timers.values_mut().for_each(|e| e.owner = Owner::default());
            self.sets.values_mut().for_each(|e| e.owner = Owner::default());
        }
        self.budgets = budgets;
    }

    /// Sets the time new series are first seen at (Unix seconds).
    pub fn set_clock(&mut self, unix_seconds: i64) {
        self.now = unix_seconds.clamp(0, u32::MAX as i64) as u32;
    }

    /// Who made a series and when the store first held it (series charged to a sender's
    /// budget; `None` for the others, and when budgets are off).
    pub fn owner(&self, kind: crate::Kind, key: &[u8]) -> Option<Owner> {
        let key = crate::shard::KeyRef(key);
        let owner = match kind {
            crate::Kind::Counter => self.counters.get(&key).map(|e| e.owner),
            crate::Kind::Gauge => self.gauges.get(&key).map(|e| e.owner),
            crate::Kind::Timer => self.timers.get(&key).map(|e| e.owner),
            crate::Kind::Set => self.sets.get(&key).map(|e| e.owner),
        };
        owner.filter(|o| o.sender != Sender::Unknown)
    }

    /// A series' value now (counters: this interval's sum; gauges: the value; timers: this
    /// interval's samples; sets: this interval's distinct members) and its total since start
    /// (counters and timers), if the store holds it.
    pub fn value_of(&self, kind: crate::Kind, key: &[u8]) -> Option<(f64, Option<f64>)> {
        let key = crate::shard::KeyRef(key);
        match kind {
            crate::Kind::Counter => self.counters.get(&key).map(|c| (c.value, Some(c.total))),
            crate::Kind::Gauge => self.gauges.get(&key).map(|g| (g.value, None)),
            crate::Kind::Timer => self.timers.get(&key).map(|t| (t.count, Some(t.total_count))),
            crate::Kind::Set => self.sets.get(&key).map(|s| (s.size() as f64, None)),
        }
    }

    /// For each of `senders`, the name prefixes (first two fields) of the live series it made,
    /// the `n` with the most (one walk of the charged series; counted in sketches of fixed size,
    /// so an estimate past [`crate::cardinality::TOP_KEYS`] prefixes).
    pub fn top_prefixes_by_sender(&self, senders: &[Sender], n: usize) -> Vec<Vec<(String, u64)>> {
        use crate::cardinality::{name_of, prefix_of, TOP_KEYS};
        let mut sketches: Vec<floodgate_sketch::TopK> =
            senders.iter().map(|_| floodgate_sketch::TopK::new(TOP_KEYS)).collect();
        let index: std::collections::HashMap<Sender, usize> =
            senders.iter().enumerate().map(|(i, s)| (*s, i)).collect();
        let Some(budgets) = &self.budgets else { return vec![Vec::new(); senders.len()] };
        let owned = (self.counters.iter().map(|(k, e)| (k, e.owner)))
            .chain(self.gauges.iter().map(|(k, e)| (k, e.owner)))
            .chain(self.timers.iter().map(|(k, e)| (k, e.owner)))
            .chain(self.sets.iter().map(|(k, e)| (k, e.owner)))
            .filter(|(_, o)| o.sender != Sender::Unknown);
        for (key, owner) in owned {
            if let Some(&i) = index.get(&budgets.counted_as(owner.sender)) {
                sketches[i].add(&String::from_utf8_lossy(prefix_of(name_of(key))), 1);
            }
        }
        sketches.into_iter().map(|t| t.top(n).into_iter().map(|h| (h.key, h.count)).collect()).collect()
    }

    /// New series by name and sender (when budgets are on).
    pub fn attribution(&self) -> &Attribution {
        &self.attribution
    }

    /// Every series' key, all types.
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        (self.counters.keys().chain(self.gauges.keys()).chain(self.timers.keys()).chain(self.sets.keys()))
            .map(|k| &k[..])
    }

    /// The series budgets in force.
    pub fn series_budgets(&self) -> Option<&Arc<SeriesBudgets>> {
        self.budgets.as_ref()
    }

    /// Charges the forwarded series merged from now on that the store does not hold yet to
    /// `sender` (an aggregator's agent); `Sender::Unknown` charges no one.
    pub fn set_forward_sender(&mut self, sender: Sender) {
        self.forward_sender = sender;
    }

    /// Merges one forwarded series (`merge`), a `new` one charged to the agent first: refused
    /// (false, counted) when the agent is over its budget; its owner kept if the store took it,
    /// the charge taken back if not.
    fn charged_forwarded(&mut self, kind: usize, new: bool, key: &[u8], merge: impl FnOnce(&mut Self) -> bool) -> bool {
        if new && !self.charge_forwarded() {
            return false;
        }
        let done = merge(self);
        if new {
            self.settle_forwarded(kind, key, done);
        }
        done
    }

    /// A forwarded series new to the store: charged to the agent; false (refused, counted) when
    /// the agent is over its budget.
    fn charge_forwarded(&mut self) -> bool {
        match self.budgets.as_ref().filter(|b| b.limits().any()) {
            Some(b) if self.forward_sender != Sender::Unknown && !b.charge(self.forward_sender) => {
                self.dropped_series_budget += 1;
                false
            }
            _ => true,
        }
    }

    /// After a charged forwarded series: its owner, or the charge back if it was refused.
    fn settle_forwarded(&mut self, kind: usize, key: &[u8], held: bool) {
        let Some(b) = self.budgets.as_ref().filter(|b| b.limits().any()) else { return };
        if self.forward_sender == Sender::Unknown {
            return;
        }
        if held {
            self.attribution.new_series(key, self.forward_sender, b.minute(), b);
            let owner = Owner { sender: self.forward_sender, first_seen: self.now };
            let key = crate::shard::KeyRef(key);
            match kind {
                0 => self.counters.get_mut(&key).map(|e| e.owner = owner),
                1 => self.gauges.get_mut(&key).map(|e| e.owner = owner),
                2 => self.timers.get_mut(&key).map(|e| e.owner = owner),
                _ => self.sets.get_mut(&key).map(|e| e.owner = owner),
            };
        } else {
            b.uncharge(self.forward_sender);
        }
    }

    /// Adds a counter increment forwarded by an agent; false when `max_series` refused it.
    pub fn add_forwarded_counter(&mut self, key: &[u8], value: f64) -> bool {
        let new = !self.counters.contains_key(key);
        self.charged_forwarded(0, new, key, |store| store.merge_forwarded_counter(key, value))
    }

    fn merge_forwarded_counter(&mut self, key: &[u8], value: f64) -> bool {
        let room = self.series() < self.cfg.max_series;
        let (dropped, changed) = (&mut self.dropped_max_series, &mut self.keys_changed);
        let Some(c) = entry_within(&mut self.counters, key, room, dropped, changed, Default::default) else {
            return false;
        };
        c.value += value;
        c.total += value;
        c.idle = Idle(0);
        true
    }

    /// Applies a gauge change forwarded by an agent: a delta adds; a set replaces the value
    /// unless a later forwarded set (`set_at_ns`, Unix ns) was applied already.
    pub fn add_forwarded_gauge(&mut self, key: &[u8], value: f64, delta: bool, set_at_ns: i64) -> bool {
        let new = !self.gauges.contains_key(key);
        self.charged_forwarded(1, new, key, |store| store.merge_forwarded_gauge(key, value, delta, set_at_ns))
    }

    fn merge_forwarded_gauge(&mut self, key: &[u8], value: f64, delta: bool, set_at_ns: i64) -> bool {
        let ttl = self.cfg.delete_gauges.then_some(self.cfg.gauges_max_ttl);
        let room = self.series() < self.cfg.max_series;
        let (dropped, changed) = (&mut self.dropped_max_series, &mut self.keys_changed);
        let unset = || GaugeEntry { value: f64::NAN, ..Default::default() };
        let Some(g) = entry_within(&mut self.gauges, key, room, dropped, changed, unset) else { return false };
        let current = (!g.value.is_nan()).then_some(g.value);
        if delta {
            g.value = apply_gauge_delta(current, value);
        } else if current.is_none() || set_at_ns >= g.forwarded_stamp {
            g.value = value;
            g.forwarded_stamp = set_at_ns;
        }
        g.ttl = ttl;
        g.idle = Idle(0);
        true
    }

    /// Adds a set's members forwarded by an agent (a union).
    pub fn add_forwarded_set(&mut self, key: &[u8], members: &Distinct) -> bool {
        let new = !self.sets.contains_key(key);
        self.charged_forwarded(3, new, key, |store| store.merge_forwarded_set(key, members))
    }

    fn merge_forwarded_set(&mut self, key: &[u8], members: &Distinct) -> bool {
        let room = self.series() < self.cfg.max_series;
        let (dropped, changed) = (&mut self.dropped_max_series, &mut self.keys_changed);
        let Some(s) = entry_within(&mut self.sets, key, room, dropped, changed, Default::default) else { return false };
        s.members.merge_distinct(members, self.cfg.max_set_members);
        s.idle = Idle(0);
        true
    }

    /// Adds a timer summary forwarded by an agent.
    pub fn add_forwarded_timer(&mut self, key: &[u8], summary: &TimerSummary) -> bool {
        let new = !self.timers.contains_key(key);
        self.charged_forwarded(2, new, key, |store| store.merge_forwarded_timer(key, summary))
    }

    fn merge_forwarded_timer(&mut self, key: &[u8], summary: &TimerSummary) -> bool {
        let room = self.series() < self.cfg.max_series;
        let (dropped, changed) = (&mut self.dropped_max_series, &mut self.keys_changed);
        let Some(t) = entry_within(&mut self.timers, key, room, dropped, changed, Default::default) else {
            return false;
        };
        match &mut t.forwarded {
            Some(f) => f.merge(summary),
            None => t.forwarded = Some(summary.clone()),
        }
        t.add_to_totals(summary, self.cfg.cumulative_sketches);
        t.units.add(summary.unitless);
        t.idle = Idle(0);
        true
    }

    /// The series held, for shards (see [`KnownSeries`]); `None` when unchanged since the
    /// last call.
    pub fn known_series(&mut self) -> Option<Arc<KnownSeries>> {
        if !std::mem::take(&mut self.keys_changed) {
            return None;
        }
        let mut known = KnownSeries::new(self.known_seed);
        for k in self.counters.keys() {
            known.insert(Kind::Counter, k);
        }
        for k in self.gauges.keys() {
            known.insert(Kind::Gauge, k);
        }
        for k in self.timers.keys() {
            known.insert(Kind::Timer, k);
        }
        for k in self.sets.keys() {
            known.insert(Kind::Set, k);
        }
        Some(Arc::new(known))
    }

    fn merge_inner(&mut self, shard: &mut Shard, owners: &mut [crate::shard::Owners; 4], minute: u64) {
        for (key, add) in [
            (&self.key_packets, shard.packets),
            (&self.key_metrics, shard.lines),
            (&self.key_bad_lines, shard.bad_lines),
        ] {
            let c = self.counters.entry_ref_or_default(key);
            c.value += add as f64;
            c.total += add as f64;
            c.idle = Idle(0);
        }
        self.dropped_max_series += shard.dropped_max_series;
        self.dropped_max_memory += shard.dropped_max_memory;
        self.dropped_series_budget += shard.dropped_series_budget;
        self.folded_series_budget += shard.folded_series_budget;
        for (stored, sent) in shard.sent_names.drain() {
            self.sent_names.entry(stored).or_insert(sent);
        }
        for (key, add) in shard.counters.drain() {
            if let Some(c) = self.counters.get_mut(&key) {
                c.value += add;
                c.total += add;
                c.idle = Idle(0);
            } else if self.series() < self.cfg.max_series {
                let owner = self.adopt(0, &key, owners, minute);
                self.counters.insert(key, CounterEntry { value: 0.0 + add, total: add, idle: Idle(0), owner });
            } else {
                self.dropped_max_series += 1;
            }
        }
        let ttl = self.cfg.delete_gauges.then_some(self.cfg.gauges_max_ttl);
        for (key, update) in shard.gauges.drain() {
            let mut owner = None;
            if !self.gauges.contains_key(&key) {
                if !self.has_room() {
                    continue;
                }
                owner = Some(self.adopt(1, &key, owners, minute));
            }
            let g = self.gauges.entry(key).or_insert(GaugeEntry { value: f64::NAN, ..Default::default() });
            if let Some(owner) = owner {
                g.owner = owner;
            }
            let mut current = (!g.value.is_nan()).then_some(g.value);
            let mut deltas = 0.0;
            for d in update.pending_deltas {
                current = Some(apply_gauge_delta(current, d));
                deltas += d;
            }
            let mut set = false;
            if let Some((stamp, value)) = update.last_set {
                if stamp >= g.set_stamp {
                    current = Some(value);
                    g.set_stamp = stamp;
                    set = true;
                }
            }
            g.value = current.unwrap_or(0.0);
            g.ttl = ttl;
            g.idle = Idle(0);
            g.interval = match g.interval {
                _ if set => Some(GaugeChange::Set { value: g.value, stamp: g.set_stamp }),
                Some(GaugeChange::Set { stamp, .. }) => Some(GaugeChange::Set { value: g.value, stamp }),
                Some(GaugeChange::Delta(d)) => Some(GaugeChange::Delta(d + deltas)),
                None => Some(GaugeChange::Delta(deltas)),
            };
        }
        for (key, update) in shard.timers.drain() {
            let mut owner = None;
            if !self.timers.contains_key(&key) {
                if !self.has_room() {
                    continue;
                }
                owner = Some(self.adopt(2, &key, owners, minute));
            }
            let cap = self.cfg.max_timer_samples;
            let t = self.timers.entry(key).or_default();
            if let Some(owner) = owner {
                t.owner = owner;
            }
            t.units.merge(update.units);
            t.idle = Idle(0);
            // The since-start totals count a value when it reaches the store, so a scrape
            // between flushes sees every value merged before it.
            t.total_count += update.count;
            t.total_sum += update.values.iter().sum::<f64>();
            if self.cfg.cumulative_sketches {
                let c = t.cumulative.get_or_insert_with(Default::default);
                update.values.iter().for_each(|v| c.add(*v));
            }
            if let Some(folded) = &update.folded {
                t.add_to_totals(folded, self.cfg.cumulative_sketches);
            }
            if t.values.is_empty() {
                t.values = update.values;
                t.count += update.count;
            } else if t.values.len() + update.values.len() <= cap {
                t.values.extend_from_slice(&update.values);
                t.count += update.count;
            } else {
                // Past the cap across shards: this shard's values are summarised instead.
                let summary = TimerSummary::from_values(&update.values, update.count);
                t.forwarded.get_or_insert_with(Default::default).merge(&summary);
            }
            if let Some(folded) = update.folded {
                t.forwarded.get_or_insert_with(Default::default).merge(&folded);
            }
        }
        let cap = self.cfg.max_set_members;
        for (key, members) in shard.sets.drain() {
            let mut owner = None;
            if !self.sets.contains_key(&key) {
                if !self.has_room() {
                    continue;
                }
                owner = Some(self.adopt(3, &key, owners, minute));
            }
            let s = self.sets.entry(key).or_default();
            if let Some(owner) = owner {
                s.owner = owner;
            }
            s.idle = Idle(0);
            if s.members.is_empty() {
                s.members = members;
            } else {
                s.members.merge(members, cap);
            }
        }
        shard.clear();
    }

    /// Runs one flush at `timestamp` (Unix seconds): computes, hands the result to `write`,
    /// then clears as Etsy statsd does.
    pub fn flush<R>(&mut self, timestamp: i64, write: impl FnOnce(&FlushView<'_>) -> R) -> R {
        let started = Instant::now();
        self.set_clock(timestamp);
        let interval_secs = self.cfg.flush_interval_ms as f64 / 1000.0;
        if self.old_timestamp > 0 {
            let lag = (timestamp - self.old_timestamp) as f64 - interval_secs;
            let g = self.gauges.entry(self.key_timestamp_lag.clone()).or_default();
            g.value = lag;
            g.idle = Idle(0);
        }
        self.old_timestamp = timestamp;

        // Sorted once here; the Prometheus totals and percentile bounds are kept as we go.
        let quantile_pcts: Vec<f64> = self.cfg.summary_quantiles.iter().map(|q| q * 100.0).collect();
        for t in self.timers.values_mut() {
            sort_js(&mut t.values);
            // The since-start totals were kept as values were merged (see `merge_inner`).
            if let Some(f) = &mut t.forwarded {
                // Forwarded state: local values join the summary, statistics come from it.
                f.merge(&TimerSummary::from_values(&t.values, t.count));
                t.last_bounds = crate::forwarded::percentile_bounds(f, &self.cfg.percentiles);
                t.last_quantiles = crate::forwarded::percentile_bounds(f, &quantile_pcts);
                continue;
            }
            t.last_bounds = percentile_bounds(&t.values, &self.cfg.percentiles);
            t.last_quantiles = percentile_bounds(&t.values, &quantile_pcts);
        }
        let cfg = &self.cfg;
        let pct_names = &self.pct_names;
        let bin_names = &self.bin_names;
        let timers: Vec<(&[u8], TimerStats<'_>)> = self
            .timers
            .iter()
            .map(|(key, t)| {
                let mut stats = match &t.forwarded {
                    Some(f) => {
                        let rule = cfg.histograms.iter().position(|h| contains(key, h.metric.as_bytes()));
                        let histogram = rule.map(|r| (&cfg.histograms[r].bins[..], &bin_names[r][..]));
                        crate::forwarded::timer_stats(f, pct_names, histogram, interval_secs)
                    }
                    None => timer_stats(key, t, cfg, pct_names, bin_names, interval_secs),
                };
                if !cfg.calculated_timer_metrics.is_empty() {
                    stats.retain(|(name, _)| keep_timer_metric(name, &cfg.calculated_timer_metrics));
                }
                (&key[..], stats)
            })
            .collect();
        let view = FlushView {
            timestamp,
            interval_secs,
            counters: &self.counters,
            gauges: &self.gauges,
            sets: &self.sets,
            timer_entries: &self.timers,
            sent_names: &self.sent_names,
            internal: [&self.key_bad_lines, &self.key_packets, &self.key_metrics, &self.key_timestamp_lag],
            num_stats: self.series(),
            processing_time_ms: started.elapsed().as_millis() as u64,
            timers,
        };
        let result = write(&view);
        drop(view);
        self.clear_after_flush();
        result
    }

    fn clear_after_flush(&mut self) {
        let before = self.series();
        self.clear_idle();
        if self.series() != before {
            self.keys_changed = true;
            self.prune_sent_names();
        }
    }

    fn clear_idle(&mut self) {
        if self.cfg.delete_counters {
            let keep = |k: &[u8]| {
                [&b"packets_received"[..], b"metrics_received", b"bad_lines_seen"]
                    .iter()
                    .any(|s| k.windows(s.len()).any(|w| w == *s))
            };
            let budgets = &self.budgets;
            self.counters.retain(|k, c| {
                let kept = keep(k);
                if !kept {
                    Self::release(budgets, c.owner);
                }
                kept
            });
        }
        for c in self.counters.values_mut() {
            c.value = 0.0;
            c.idle.0 = c.idle.0.saturating_add(1);
        }
        if self.cfg.delete_timers {
            self.timers.values().for_each(|t| Self::release(&self.budgets, t.owner));
            self.timers.clear();
        } else {
            for t in self.timers.values_mut() {
                t.values.clear();
                t.count = 0.0;
                t.forwarded = None;
                t.idle.0 = t.idle.0.saturating_add(1);
            }
        }
        if self.cfg.delete_sets {
            self.sets.values().for_each(|e| Self::release(&self.budgets, e.owner));
            self.sets.clear();
        } else {
            for s in self.sets.values_mut() {
                s.last_size = s.size();
                s.members = MemberSet::default();
                s.idle.0 = s.idle.0.saturating_add(1);
            }
        }
        for g in self.gauges.values_mut() {
            g.interval = None;
            g.idle.0 = g.idle.0.saturating_add(1);
        }
        if self.cfg.delete_gauges {
            let budgets = &self.budgets;
            self.gauges.retain(|_, g| match &mut g.ttl {
                Some(ttl) => {
                    *ttl -= 1;
                    let keep = *ttl >= 1;
                    if !keep {
                        Self::release(budgets, g.owner);
                    }
                    keep
                }
                None => true,
            });
        }
    }

    /// A shard for a receive thread: this store's limits, `allowance` estimated bytes, and the
    /// shared series budget (so `max_series` bounds the store and its shards together).
    pub fn new_shard(&self, allowance: u64) -> Shard {
        let mut shard = Shard::with_limits(self.shard_limits(allowance));
        shard.set_budget(self.budget.clone());
        shard.set_series_budgets(self.budgets.clone());
        shard
    }

    /// Sets the shared series budget to what `max_series` leaves once every shard is merged
    /// (the flusher, after merging; reload).
    pub fn refill_budget(&self) {
        self.budget.set(self.cfg.max_series.saturating_sub(self.series()));
    }

    /// The limits a shard works under: the aggregation options, and `allowance` estimated bytes.
    pub fn shard_limits(&self, allowance: u64) -> ShardLimits {
        ShardLimits {
            max_series: self.cfg.max_series,
            max_timer_samples: self.cfg.max_timer_samples,
            max_set_members: self.cfg.max_set_members,
            memory_allowance: allowance,
        }
    }

    /// An estimate of the bytes the state holds: keys, a fixed cost per series, timer values,
    /// exact set members, sketches. Walks every series (the flusher calls it once per flush).
    pub fn memory_bytes(&self) -> u64 {
        use crate::shard::{SERIES_OVERHEAD, TIMER_VALUE_BYTES};
        let per_key = |k: &Key| k.len() as u64 + SERIES_OVERHEAD;
        let counters: u64 = self.counters.keys().map(per_key).sum();
        let gauges: u64 = self.gauges.keys().map(per_key).sum();
        let timers: u64 = self
            .timers
            .iter()
            .map(|(k, t)| {
                let sketch = t.forwarded.as_ref().map_or(0, |f| 64 + 8 * f.sketch.bins().count() as u64);
                per_key(k) + t.values.capacity() as u64 * TIMER_VALUE_BYTES + sketch
            })
            .sum();
        let sets: u64 = self.sets.iter().map(|(k, s)| per_key(k) + s.members.bytes()).sum();
        let sent: u64 = self.sent_names.iter().map(|(k, v)| per_key(k) + v.len() as u64).sum();
        // A series' owner is a field of its entry (in SERIES_OVERHEAD).
        let attribution = if self.budgets.is_some() { self.attribution.bytes() } else { 0 };
        counters + gauges + timers + sets + sent + attribution
    }

    /// The name a series name (a key's part before its tags) was sent as, when sanitising
    /// changed it and the key rule kept it.
    pub fn sent_name(&self, name: &[u8]) -> Option<&[u8]> {
        if self.sent_names.is_empty() {
            return None;
        }
        self.sent_names.get(&crate::shard::KeyRef(name)).map(|v| &v[..])
    }

    /// Lets go of the names as sent of series no longer held (after a flush deleted some).
    fn prune_sent_names(&mut self) {
        if self.sent_names.is_empty() {
            return;
        }
        // The live names borrowed from the keys, not copied.
        fn name(k: &Key) -> &[u8] {
            k.split(|b| *b == b';').next().unwrap_or(k)
        }
        let live: std::collections::HashSet<&[u8]> = (self.counters.keys().map(name))
            .chain(self.gauges.keys().map(name))
            .chain(self.timers.keys().map(name))
            .chain(self.sets.keys().map(name))
            .collect();
        self.sent_names.retain(|k, _| live.contains(&k[..]));
    }

    /// Counters (key, state).
    pub fn counters(&self) -> impl Iterator<Item = (&[u8], &CounterEntry)> {
        self.counters.iter().map(|(k, v)| (&k[..], v))
    }
    /// Gauges (key, state).
    pub fn gauges(&self) -> impl Iterator<Item = (&[u8], &GaugeEntry)> {
        self.gauges.iter().map(|(k, v)| (&k[..], v))
    }
    /// Timers (key, state).
    pub fn timers(&self) -> impl Iterator<Item = (&[u8], &TimerEntry)> {
        self.timers.iter().map(|(k, v)| (&k[..], v))
    }
    /// Sets (key, state).
    pub fn sets(&self) -> impl Iterator<Item = (&[u8], &SetEntry)> {
        self.sets.iter().map(|(k, v)| (&k[..], v))
    }

    /// Deletes counters named `pattern`, or starting with it when it ends in `.*` (statsd's
    /// `delcounters`); returns the deleted keys.
    pub fn delete_counters(&mut self, pattern: &str) -> Vec<String> {
        delete_matching(&mut self.counters, pattern, |e| Self::release(&self.budgets, e.owner))
    }
    /// `delgauges`.
    pub fn delete_gauges(&mut self, pattern: &str) -> Vec<String> {
        delete_matching(&mut self.gauges, pattern, |e| Self::release(&self.budgets, e.owner))
    }
    /// `deltimers`.
    pub fn delete_timers(&mut self, pattern: &str) -> Vec<String> {
        delete_matching(&mut self.timers, pattern, |e| Self::release(&self.budgets, e.owner))
    }
}

/// Deletes the series `pattern` names (see [`Store::delete_counters`]), handing each deleted
/// entry to `gone` (its budget charge is given back).
fn delete_matching<V>(map: &mut Map<V>, pattern: &str, mut gone: impl FnMut(&V)) -> Vec<String> {
    // Deleting only shrinks the set; shards admitting a deleted series until the next
    // flush is harmless.
    let mut deleted = Vec::new();
    let p = pattern.as_bytes();
    if let Some(entry) = map.remove(p) {
        gone(&entry);
        deleted.push(pattern.to_string());
    }
    if let Some(folder) = pattern.strip_suffix('*').filter(|_| pattern.ends_with(".*")) {
        let folder = folder.as_bytes();
        map.retain(|k, v| {
            let hit = k.starts_with(folder);
            if hit {
                gone(v);
                deleted.push(String::from_utf8_lossy(k).into_owned());
            }
            !hit
        });
    }
    deleted
}

/// JavaScript's `values.sort((a, b) => a - b)`: numeric, stable (so -0 and 0 keep their order).
fn sort_js(values: &mut [f64]) {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(Ordering::Equal));
}

/// `Math.round(Math.abs(pct) / 100 * count)` for non-negative arguments.
fn num_in_threshold(pct: f64, count: usize) -> usize {
    (pct.abs() / 100.0 * count as f64).round() as usize
}

fn percentile_bounds(sorted: &[f64], percentiles: &[f64]) -> Vec<Option<f64>> {
    let count = sorted.len();
    percentiles
        .iter()
        .map(|&pct| {
            if count == 0 {
                return None;
            }
            if count == 1 {
                return Some(sorted[0]);
            }
            match num_in_threshold(pct, count) {
                0 => None,
                n if pct > 0.0 => Some(sorted[n - 1]),
                n => Some(sorted[count - n]),
            }
        })
        .collect()
}

/// The statistics Etsy statsd's `process_metrics` computes for one timer, in its order.
fn timer_stats<'a>(
    key: &[u8],
    t: &TimerEntry,
    cfg: &AggregationConfig,
    pct_names: &'a [PercentileNames],
    bin_names: &'a [Vec<String>],
    interval_secs: f64,
) -> Vec<(&'a str, f64)> {
    let values = &t.values;
    let count = values.len();
    if count == 0 {
        return vec![("count", 0.0), ("count_ps", 0.0)];
    }
    let mut out = Vec::with_capacity(9 + 5 * pct_names.len());
    let min = values[0];
    let max = values[count - 1];
    let mut cumulative = Vec::with_capacity(count);
    let mut cumulative_sq = Vec::with_capacity(count);
    cumulative.push(min);
    cumulative_sq.push(min * min);
    for i in 1..count {
        cumulative.push(values[i] + cumulative[i - 1]);
        cumulative_sq.push(values[i] * values[i] + cumulative_sq[i - 1]);
    }
    // JavaScript reads past the start of an array as `undefined`, and arithmetic on it is NaN.
    let at = |v: &[f64], i: isize| if i < 0 { f64::NAN } else { v[i as usize] };

    let (mut sum, mut sum_squares, mut mean, mut bound) = (min, min * min, min, max);
    for names in pct_names {
        let pct = names.pct;
        let mut n = count;
        if count > 1 {
            n = num_in_threshold(pct, count);
            if n == 0 {
                continue;
            }
            if pct > 0.0 {
                bound = values[n - 1];
                sum = cumulative[n - 1];
                sum_squares = cumulative_sq[n - 1];
            } else {
                let before = count as isize - n as isize - 1;
                bound = values[count - n];
                sum = cumulative[count - 1] - at(&cumulative, before);
                sum_squares = cumulative_sq[count - 1] - at(&cumulative_sq, before);
            }
            mean = sum / n as f64;
        }
        names.push(&mut out, n as f64, [mean, bound, sum, sum_squares]);
    }
    let sum = cumulative[count - 1];
    let sum_squares = cumulative_sq[count - 1];
    let mean = sum / count as f64;
    let mut sum_of_diffs = 0.0;
    for v in values {
        sum_of_diffs += (v - mean) * (v - mean);
    }
    let mid = count / 2;
    let median = if count % 2 == 1 { values[mid] } else { (values[mid - 1] + values[mid]) / 2.0 };
    out.push(("std", (sum_of_diffs / count as f64).sqrt()));
    out.push(("upper", max));
    out.push(("lower", min));
    out.push(("count", t.count));
    out.push(("count_ps", t.count / interval_secs));
    out.push(("sum", sum));
    out.push(("sum_squares", sum_squares));
    out.push(("mean", mean));
    out.push(("median", median));

    let rule = cfg.histograms.iter().position(|h| contains(key, h.metric.as_bytes()));
    if let Some(r) = rule {
        let bins = &cfg.histograms[r].bins;
        let mut i = 0;
        for (b, bin) in bins.iter().enumerate() {
            let mut freq = 0.0;
            while i < count && (bin.is_infinite() || values[i] < *bin) {
                freq += 1.0;
                i += 1;
            }
            out.push((bin_names[r][b].as_str(), freq));
        }
    }
    out
}

/// The entry of `key`, created with `new()` when `room` is left under `max_series` (setting
/// `changed`); without room a new key is refused and counted in `dropped`.
fn entry_within<'m, V>(
    map: &'m mut Map<V>,
    key: &[u8],
    room: bool,
    dropped: &mut u64,
    changed: &mut bool,
    new: impl FnOnce() -> V,
) -> Option<&'m mut V> {
    if !map.contains_key(key) {
        if !room {
            *dropped += 1;
            return None;
        }
        map.insert(key.into(), new());
        *changed = true;
    }
    map.get_mut(key)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// `calculatedTimerMetrics` filter: `upper_90` matches `upper_percent`, `lower_top10`
/// `lower_percent` (Etsy: `key.replace(/_(top)?\d+$/, "_percent")`), bins match `histogram`.
fn keep_timer_metric(name: &str, wanted: &[String]) -> bool {
    if name.starts_with("histogram.") {
        return wanted.iter().any(|w| w == "histogram");
    }
    let digits = name.bytes().rev().take_while(u8::is_ascii_digit).count();
    let stem = &name[..name.len() - digits];
    let cleaned = if digits == 0 {
        None
    } else if let Some(s) = stem.strip_suffix("_top") {
        Some(format!("{s}_percent"))
    } else {
        stem.strip_suffix('_').map(|s| format!("{s}_percent"))
    };
    let name = cleaned.as_deref().unwrap_or(name);
    wanted.iter().any(|w| w == name)
}

/// Etsy: `('' + pct).replace('.', '_').replace('-', 'top')`.
fn percentile_names(pct: f64) -> PercentileNames {
    let clean = js_number(pct).replacen('.', "_", 1).replacen('-', "top", 1);
    PercentileNames {
        pct,
        count: format!("count_{clean}"),
        mean: format!("mean_{clean}"),
        bound: format!("{}_{clean}", if pct > 0.0 { "upper" } else { "lower" }),
        sum: format!("sum_{clean}"),
        sum_squares: format!("sum_squares_{clean}"),
    }
}

/// Etsy: `'bin_' + bin.toString().replace('.', '_')`.
fn bin_name(bin: f64) -> String {
    if bin.is_infinite() {
        "bin_inf".into()
    } else {
        format!("bin_{}", js_number(bin).replacen('.', "_", 1))
    }
}

#[cfg(test)]
mod tests;
