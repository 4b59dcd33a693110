//! Per-receiver aggregation: what one receive thread has read since the last flush.
//!
//! Each receive thread owns one [`Shard`] and is the only writer, so the hot path takes no
//! shared lock. At flush the runtime swaps the shard for an empty one and merges it into the
//! [`Store`](crate::Store). Counters are summed here already (so one series costs one map slot
//! per interval, however many packets update it); timer values and set members are kept, as
//! percentiles and distinct counts need them.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::Arc;

use crate::parse::{Kind, Metric, MetricSink};

/// Series key: the sanitised name with its tags.
pub type Key = Box<[u8]>;
/// The hash map used for series: foldhash is fast on short keys and seeded per map.
pub type Map<V> = HashMap<Key, V, foldhash::fast::RandomState>;
/// Set members.
pub type Members = HashSet<Key, foldhash::fast::RandomState>;

/// The series the store already holds, by hash, so a shard that is full (a flood of new
/// names) still takes values for series that exist: `max_series` refuses new series only.
#[derive(Debug, Clone, Default)]
pub struct KnownSeries {
    state: foldhash::fast::FixedState,
    hashes: HashSet<u64, foldhash::fast::RandomState>,
}

impl KnownSeries {
    /// An empty set hashing with `seed`.
    pub fn new(seed: u64) -> Self {
        KnownSeries { state: foldhash::fast::FixedState::with_seed(seed), hashes: HashSet::default() }
    }

    fn hash(&self, kind: Kind, key: &[u8]) -> u64 {
        self.state.hash_one((kind as u8, key))
    }

    /// Adds a series.
    pub fn insert(&mut self, kind: Kind, key: &[u8]) {
        let h = self.hash(kind, key);
        self.hashes.insert(h);
    }

    /// True if the series is (probably: 64-bit hashes) held.
    pub fn contains(&self, kind: Kind, key: &[u8]) -> bool {
        self.hashes.contains(&self.hash(kind, key))
    }

    /// Series in the set.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }
}

/// Deltas kept one by one before they are folded, so their sum is added in arrival order
/// (Etsy adds each delta to the gauge in turn; float addition is not associative).
const MAX_PENDING_DELTAS: usize = 64;

/// What a shard saw for one gauge this interval.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GaugeUpdate {
    /// Deltas that arrived before any absolute value in this shard, in order.
    pub pending_deltas: Vec<f64>,
    /// The latest absolute value (with the deltas after it applied) and when it was set.
    pub last_set: Option<(u64, f64)>,
}

/// What a shard saw for one timer this interval.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TimerUpdate {
    /// Every value, unsorted.
    pub values: Vec<f64>,
    /// Samples represented: the sum of 1/rate.
    pub count: f64,
}

/// One receive thread's aggregation since the last flush.
#[derive(Debug, Default)]
pub struct Shard {
    pub(crate) counters: Map<f64>,
    pub(crate) gauges: Map<GaugeUpdate>,
    pub(crate) timers: Map<TimerUpdate>,
    pub(crate) sets: Map<Members>,
    max_series: usize,
    known: Option<Arc<KnownSeries>>,
    /// Ordering stamp for gauge sets (the runtime sets it, monotonic, per batch).
    pub clock: u64,
    /// Packets (datagrams, or TCP reads with complete lines) received.
    pub packets: u64,
    /// Non-empty lines received.
    pub lines: u64,
    /// Bad values seen.
    pub bad_lines: u64,
    /// New series refused because the shard already held `max_series`.
    pub dropped_max_series: u64,
}

impl Shard {
    /// An empty shard holding at most `max_series` series.
    pub fn new(max_series: usize) -> Self {
        Shard { max_series, ..Shard::default() }
    }

    /// Series held (all types).
    pub fn series(&self) -> usize {
        self.counters.len() + self.gauges.len() + self.timers.len() + self.sets.len()
    }

    /// True when nothing has been recorded since the last take.
    pub fn is_empty(&self) -> bool {
        self.series() == 0 && self.packets == 0 && self.lines == 0 && self.bad_lines == 0
    }

    /// Moves everything out, leaving an empty shard with the same limits and clock.
    pub fn take(&mut self) -> Shard {
        let fresh =
            Shard { max_series: self.max_series, clock: self.clock, known: self.known.clone(), ..Shard::default() };
        std::mem::replace(self, fresh)
    }

    /// Empties the shard but keeps its maps' capacity (for recycling a merged shard).
    pub fn clear(&mut self) {
        self.counters.clear();
        self.gauges.clear();
        self.timers.clear();
        self.sets.clear();
        self.packets = 0;
        self.lines = 0;
        self.bad_lines = 0;
        self.dropped_max_series = 0;
    }

    /// Changes the series bound (on reload).
    pub fn set_max_series(&mut self, max_series: usize) {
        self.max_series = max_series;
    }

    /// Gives the shard the store's series, admitted even when the shard is full.
    pub fn set_known(&mut self, known: Arc<KnownSeries>) {
        self.known = Some(known);
    }

    #[inline]
    fn has_room(&mut self, kind: Kind, key: &[u8]) -> bool {
        if self.series() < self.max_series || self.known.as_ref().is_some_and(|k| k.contains(kind, key)) {
            true
        } else {
            self.dropped_max_series += 1;
            false
        }
    }

    /// Records one parsed value.
    #[inline]
    pub fn record(&mut self, m: &Metric<'_>) {
        match m.kind {
            Kind::Counter => {
                let add = m.value * (1.0 / m.sample_rate);
                if let Some(v) = self.counters.get_mut(m.key) {
                    *v += add;
                } else if self.has_room(Kind::Counter, m.key) {
                    self.counters.insert(m.key.into(), 0.0 + add);
                }
            }
            Kind::Timer => {
                if !self.timers.contains_key(m.key) && !self.has_room(Kind::Timer, m.key) {
                    return;
                }
                let t = self.timers.entry_ref_or_default(m.key);
                t.values.push(m.value);
                t.count += 1.0 / m.sample_rate;
            }
            Kind::Gauge => {
                if !self.gauges.contains_key(m.key) && !self.has_room(Kind::Gauge, m.key) {
                    return;
                }
                let clock = self.clock;
                let g = self.gauges.entry_ref_or_default(m.key);
                match (&mut g.last_set, m.gauge_delta) {
                    (Some((_, v)), true) => *v = apply_gauge_delta(Some(*v), m.value),
                    (last_set, false) => *last_set = Some((clock, m.value)),
                    (None, true) => {
                        if g.pending_deltas.len() >= MAX_PENDING_DELTAS {
                            let folded: f64 = g.pending_deltas.drain(..).sum();
                            g.pending_deltas.push(folded);
                        }
                        g.pending_deltas.push(m.value);
                    }
                }
            }
            Kind::Set => {
                if !self.sets.contains_key(m.key) && !self.has_room(Kind::Set, m.key) {
                    return;
                }
                let s = self.sets.entry_ref_or_default(m.key);
                if !s.contains(m.set_member) {
                    s.insert(m.set_member.into());
                }
            }
        }
    }
}

/// Etsy statsd: `gauges[key] && /^[-+]/` → add, else set. A gauge at 0 (or NaN) is "unset".
pub fn apply_gauge_delta(current: Option<f64>, delta: f64) -> f64 {
    match current {
        Some(v) if v != 0.0 && !v.is_nan() => v + delta,
        _ => delta,
    }
}

/// `entry(key.into()).or_default()` without allocating the key when it is already present.
pub(crate) trait EntryRef<V> {
    fn entry_ref_or_default(&mut self, key: &[u8]) -> &mut V;
}

impl<V: Default> EntryRef<V> for Map<V> {
    #[inline]
    fn entry_ref_or_default(&mut self, key: &[u8]) -> &mut V {
        if !self.contains_key(key) {
            self.insert(key.into(), V::default());
        }
        // The key is present: inserted above or already there.
        self.get_mut(key).expect("key inserted above")
    }
}

impl MetricSink for Shard {
    #[inline]
    fn metric(&mut self, metric: &Metric<'_>) {
        self.record(metric);
    }

    fn bad_line(&mut self, _line: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::Parser;

    fn feed(shard: &mut Shard, text: &str) {
        let counts = Parser::new(true).parse_packet(text.as_bytes(), shard);
        shard.packets += 1;
        shard.lines += counts.lines;
        shard.bad_lines += counts.bad;
    }

    #[test]
    fn counters_scale_by_rate() {
        let mut s = Shard::new(100);
        feed(&mut s, "a:1|c\na:2|c|@0.5\na:1|c|@0.1");
        assert_eq!(s.counters[&b"a"[..]], 1.0 + 2.0 * 2.0 + 10.0);
    }

    #[test]
    fn gauges_track_sets_and_deltas() {
        let mut s = Shard::new(100);
        feed(&mut s, "g:+1|g\ng:-3|g");
        assert_eq!(s.gauges[&b"g"[..]].pending_deltas, vec![1.0, -3.0]);
        s.clock = 7;
        feed(&mut s, "g:10|g\ng:+2|g");
        assert_eq!(s.gauges[&b"g"[..]].last_set, Some((7, 12.0)));
    }

    #[test]
    fn max_series_bounds_the_shard() {
        let mut s = Shard::new(3);
        feed(&mut s, "a:1|c\nb:1|ms\nc:1|g\nd:1|s\na:1|c\nb:2|ms");
        assert_eq!(s.series(), 3);
        assert_eq!(s.dropped_max_series, 1);
        assert_eq!(s.counters[&b"a"[..]], 2.0);
        // Series the store holds still get in when the shard is full.
        let mut known = KnownSeries::new(1);
        known.insert(Kind::Set, b"d");
        s.set_known(Arc::new(known));
        feed(&mut s, "d:1|s\ne:1|s");
        assert_eq!(s.series(), 4);
        assert_eq!(s.dropped_max_series, 2);
    }

    #[test]
    fn sets_count_distinct_members() {
        let mut s = Shard::new(100);
        feed(&mut s, "u:a|s\nu:b|s\nu:a|s\nu:|s");
        assert_eq!(s.sets[&b"u"[..]].len(), 3);
    }
}
