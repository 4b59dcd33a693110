//! Per-receiver aggregation: what one receive thread has read since the last flush.
//!
//! Each receive thread owns one [`Shard`] and is the only writer, so the hot path takes no
//! shared lock. At flush the runtime swaps the shard for an empty one and merges it into the
//! [`Store`](crate::Store). Counters are summed here already (so one series costs one map slot
//! per interval, however many packets update it); timer values and set members are kept, as
//! percentiles and distinct counts need them — up to a cap per series ([`ShardLimits`]), past
//! which timer values go into a sketch and set members into a HyperLogLog, so one series cannot
//! grow without bound in an interval.
//!
//! Memory is budgeted in bytes too: each shard counts an estimate of what it holds (keys,
//! timer values, set members) against an allowance the flusher hands out from the aggregation
//! state's `max_memory`; past it new series are refused (counted) and timer values summarised.

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::sync::Arc;

use crate::budget::{kind_index, Sender, SeriesBudgets};

use floodgate_sketch::Distinct;

use crate::forwarded::TimerSummary;
use crate::parse::{Kind, Metric, MetricSink};

/// Series key: the sanitised name with its tags.
pub type Key = Box<[u8]>;
/// The hash map used for series: foldhash is fast on short keys and seeded per map.
pub type Map<V> = hashbrown::HashMap<Key, V, foldhash::fast::RandomState>;

/// Who made the new series a shard charged, by [`owner_hash`] of their keys: no copy of the
/// key (the series map holds one). Two keys of one type with the same 64-bit hash in one
/// interval (about 1 in 10^10 at 100,000 new series) would share an entry.
pub type Owners = hashbrown::HashMap<u64, Sender, nohash_hasher::BuildNoHashHasher<u64>>;

/// The hash a key's owner is kept under (the same in every shard and the store).
#[inline]
pub fn owner_hash(key: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0x6f77_6e65_7273).hash_one(key)
}

/// A shard's counters: one lookup per counter line on the receive path, so its own table.
/// A key is hashed from its bytes alone (`Hash for [u8]` adds its length first, one more
/// multiply per line in foldhash; the length is in the compare), the table seeded per map
/// as [`Map`] is, keys compared by [`same_bytes`].
#[derive(Default)]
pub struct CounterMap {
    table: hashbrown::HashTable<(Key, f64)>,
    state: foldhash::fast::RandomState,
}

impl std::fmt::Debug for CounterMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CounterMap").field("len", &self.table.len()).finish()
    }
}

/// A key's bytes, hashed without a length prefix.
struct Bytes<'a>(&'a [u8]);

impl std::hash::Hash for Bytes<'_> {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write(self.0);
    }
}

impl CounterMap {
    #[inline(always)]
    fn hash(state: &foldhash::fast::RandomState, key: &[u8]) -> u64 {
        state.hash_one(Bytes(key))
    }

    /// The value of `key`, to add to.
    #[inline(always)]
    pub fn get_mut(&mut self, key: &[u8]) -> Option<&mut f64> {
        let hash = Self::hash(&self.state, key);
        self.table.find_mut(hash, |(k, _)| same_bytes(key, k)).map(|(_, v)| v)
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<f64> {
        let hash = Self::hash(&self.state, key);
        self.table.find(hash, |(k, _)| same_bytes(key, k)).map(|(_, v)| *v)
    }

    /// Adds `key`, which is not held, with `value`.
    pub fn insert_new(&mut self, key: &[u8], value: f64) {
        let hash = Self::hash(&self.state, key);
        let state = &self.state;
        self.table.insert_unique(hash, (key.into(), value), |(k, _)| Self::hash(state, k));
    }

    /// Counters held.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True when none is held.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Empties it, keeping its capacity.
    pub fn clear(&mut self) {
        self.table.clear();
    }

    /// Every counter, taken out.
    pub fn drain(&mut self) -> impl Iterator<Item = (Key, f64)> + '_ {
        self.table.drain()
    }
}

/// A key to look up in a [`Map`]: hashes as the key does, and compares short keys with two
/// word loads instead of a `memcmp` call (the receive path looks one up per line).
#[derive(Clone, Copy)]
pub struct KeyRef<'a>(pub &'a [u8]);

impl std::hash::Hash for KeyRef<'_> {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // Exactly as `Box<[u8]>` hashes.
        self.0.hash(state);
    }
}

impl hashbrown::Equivalent<Key> for KeyRef<'_> {
    #[inline]
    fn equivalent(&self, key: &Key) -> bool {
        same_bytes(self.0, key)
    }
}

/// `a == b`, inline for 4 to 16 bytes (two overlapping loads from each).
#[inline(always)]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    if let (Some(a0), Some(b0), Some(a1), Some(b1)) =
        (a.first_chunk::<8>(), b.first_chunk::<8>(), a.last_chunk::<8>(), b.last_chunk::<8>())
    {
        if a.len() <= 16 {
            return u64::from_ne_bytes(*a0) == u64::from_ne_bytes(*b0)
                && u64::from_ne_bytes(*a1) == u64::from_ne_bytes(*b1);
        }
    } else if let (Some(a0), Some(b0), Some(a1), Some(b1)) =
        (a.first_chunk::<4>(), b.first_chunk::<4>(), a.last_chunk::<4>(), b.last_chunk::<4>())
    {
        return u32::from_ne_bytes(*a0) == u32::from_ne_bytes(*b0)
            && u32::from_ne_bytes(*a1) == u32::from_ne_bytes(*b1);
    }
    a == b
}

/// Estimated bytes one series costs beyond its key (map slots in a shard and the store, the
/// entry, the key's allocation).
pub const SERIES_OVERHEAD: u64 = 128;
/// Estimated bytes per timer value held.
pub const TIMER_VALUE_BYTES: u64 = 8;
/// Estimated bytes per exact set member held (its hash in a hash set).
pub const SET_MEMBER_BYTES: u64 = 16;

/// A set's members in one interval: their hashes (xxh3-64, as on the forward hop), exactly, up
/// to a cap; past it a HyperLogLog of them (64 KiB, ±0.4 %). Hashes, not the members' bytes:
/// a member costs 8 bytes however long it is, and two members are the same when their 64-bit
/// hashes are (a collision is about 1 in 10^8 at a million members).
#[derive(Debug, Clone, Default)]
pub struct MemberSet {
    exact: HashSet<u64, foldhash::fast::RandomState>,
    folded: Option<Distinct>,
}

impl PartialEq for MemberSet {
    fn eq(&self, other: &Self) -> bool {
        self.exact == other.exact && self.folded == other.folded
    }
}

impl MemberSet {
    /// Adds a member's hash; returns true when the exact set grew (for the byte estimate).
    #[inline]
    pub fn insert(&mut self, h: u64, cap: usize) -> bool {
        if let Some(d) = &mut self.folded {
            d.insert_hash(h);
            return false;
        }
        let grew = self.exact.insert(h);
        if self.exact.len() > cap {
            self.fold();
        }
        grew
    }

    /// Moves the exact hashes into a HyperLogLog.
    fn fold(&mut self) {
        let d = self.folded.get_or_insert_with(Distinct::default);
        for h in self.exact.drain() {
            d.insert_hash(h);
        }
        self.exact = HashSet::default();
    }

    /// Distinct members (estimated once folded).
    pub fn len(&self) -> usize {
        match &self.folded {
            Some(d) => d.count() as usize,
            None => self.exact.len(),
        }
    }

    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.folded.is_none() && self.exact.is_empty()
    }

    /// Adds another interval's members.
    pub fn merge(&mut self, other: MemberSet, cap: usize) {
        if let Some(d) = other.folded {
            self.fold();
            if let Some(mine) = &mut self.folded {
                mine.merge(&d);
            }
        }
        for h in other.exact {
            self.insert(h, cap);
        }
    }

    /// Adds what an agent forwarded: exact hashes stay exact (up to the cap).
    pub fn merge_distinct(&mut self, d: &Distinct, cap: usize) {
        match d {
            Distinct::Exact(hashes) => hashes.iter().for_each(|h| {
                self.insert(*h, cap);
            }),
            Distinct::Registers(_) => {
                self.fold();
                if let Some(mine) = &mut self.folded {
                    mine.merge(d);
                }
            }
        }
    }

    /// The members in the forward hop's form.
    pub fn to_distinct(&self) -> Distinct {
        let mut d = self.folded.clone().unwrap_or_default();
        for h in &self.exact {
            d.insert_hash(*h);
        }
        d
    }

    /// Estimated bytes held.
    pub fn bytes(&self) -> u64 {
        self.exact.len() as u64 * SET_MEMBER_BYTES
            + self.folded.as_ref().map_or(0, |_| floodgate_sketch::distinct::REGISTERS as u64)
    }
}

/// New series the store and its shards may still add before `max_series`: one count shared by
/// every shard, so the bound is global (each shard on its own could otherwise hold
/// `max_series` new series an interval). Taken only when a series is new to a shard and not
/// already held by the store — rare outside a flood of new names.
#[derive(Debug, Default)]
pub struct SeriesBudget(std::sync::atomic::AtomicI64);

impl SeriesBudget {
    /// Takes one; false (and nothing taken) when none is left.
    #[inline]
    pub fn take(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        if self.0.fetch_sub(1, Relaxed) > 0 {
            true
        } else {
            self.0.fetch_add(1, Relaxed);
            false
        }
    }

    /// Sets what is left (the flusher, once shards are merged).
    pub fn set(&self, left: usize) {
        self.0.store(left.min(i64::MAX as usize) as i64, std::sync::atomic::Ordering::Relaxed);
    }

    /// What is left.
    pub fn left(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// What one shard may hold (from the aggregation options, and the flusher's memory allowance).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardLimits {
    /// Series at most (`max_series`).
    pub max_series: usize,
    /// Raw values per timer per interval; past it they go into the timer's sketch.
    pub max_timer_samples: usize,
    /// Exact members per set per interval; past it a HyperLogLog.
    pub max_set_members: usize,
    /// Estimated bytes this shard may add; past it new series are refused and timer values
    /// summarised. `u64::MAX`: no budget.
    pub memory_allowance: u64,
}

impl Default for ShardLimits {
    fn default() -> Self {
        ShardLimits {
            max_series: usize::MAX,
            max_timer_samples: 100_000,
            max_set_members: 100_000,
            memory_allowance: u64::MAX,
        }
    }
}

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
    /// Every value, unsorted (up to `max_timer_samples`).
    pub values: Vec<f64>,
    /// Samples those values represent: the sum of their 1/rate.
    pub count: f64,
    /// Values past the cap (or past the memory allowance), summarised: exact moments and a
    /// sketch.
    pub folded: Option<Box<TimerSummary>>,
    /// The StatsD types the values came as.
    pub units: crate::store::TimerUnits,
}

/// One receive thread's aggregation since the last flush.
#[derive(Debug, Default)]
pub struct Shard {
    pub(crate) counters: CounterMap,
    pub(crate) gauges: Map<GaugeUpdate>,
    pub(crate) timers: Map<TimerUpdate>,
    pub(crate) sets: Map<MemberSet>,
    /// Names as sent, by the name sanitising made of them (only when the key rule asks).
    pub(crate) sent_names: Map<Key>,
    /// Who sends the lines being parsed (the receive loop sets it per datagram or connection).
    pub sender: Sender,
    /// Series budgets per sender, shared with the store (when any is set).
    budgets: Option<Arc<SeriesBudgets>>,
    /// The new series this shard charged, by kind (counter, gauge, timer, set), and to whom.
    pub(crate) owners: [Owners; 4],
    /// New series refused because their sender was over its series budget.
    pub dropped_series_budget: u64,
    /// Values of new series over their sender's budget folded into the metric's overflow
    /// series (`series_budget_overflow = "fold"`).
    pub folded_series_budget: u64,
    /// Set by `has_room` when it refused a series that is to be folded instead.
    fold_next: bool,
    /// Scratch for an overflow series' key.
    fold_key: Vec<u8>,
    limits: ShardLimits,
    /// Estimated bytes held (see [`ShardLimits::memory_allowance`]).
    bytes: u64,
    known: Option<Arc<KnownSeries>>,
    budget: Option<Arc<SeriesBudget>>,
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
    /// New series refused because the shard was past its memory allowance.
    pub dropped_max_memory: u64,
}

impl Shard {
    /// An empty shard holding at most `max_series` series (other limits at their defaults).
    pub fn new(max_series: usize) -> Self {
        Shard::with_limits(ShardLimits { max_series, ..ShardLimits::default() })
    }

    /// An empty shard with these limits.
    pub fn with_limits(limits: ShardLimits) -> Self {
        Shard { limits, ..Shard::default() }
    }

    /// The series budgets this shard charges against, when any is set.
    pub fn budget_limits(&self) -> Option<crate::budget::BudgetLimits> {
        self.budgets.as_ref().map(|b| b.limits())
    }

    /// Estimated bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Series held (all types).
    pub fn series(&self) -> usize {
        self.counters.len() + self.gauges.len() + self.timers.len() + self.sets.len()
    }

    /// True when nothing has been recorded since the last take.
    pub fn is_empty(&self) -> bool {
        self.series() == 0 && self.packets == 0 && self.lines == 0 && self.bad_lines == 0
    }

    /// The limits in force.
    pub fn limits(&self) -> ShardLimits {
        self.limits
    }

    /// Changes the limits (reload, and the flusher's memory allowance each interval).
    pub fn set_limits(&mut self, limits: ShardLimits) {
        self.limits = limits;
    }

    /// Moves everything out, leaving an empty shard with the same limits and clock.
    pub fn take(&mut self) -> Shard {
        let fresh = Shard {
            limits: self.limits,
            clock: self.clock,
            known: self.known.clone(),
            budget: self.budget.clone(),
            budgets: self.budgets.clone(),
            sender: self.sender,
            ..Shard::default()
        };
        std::mem::replace(self, fresh)
    }

    /// Empties the shard but keeps its maps' capacity (for recycling a merged shard).
    pub fn clear(&mut self) {
        self.counters.clear();
        self.gauges.clear();
        self.timers.clear();
        self.sets.clear();
        self.sent_names.clear();
        self.owners.iter_mut().for_each(Owners::clear);
        self.dropped_series_budget = 0;
        self.folded_series_budget = 0;
        self.packets = 0;
        self.lines = 0;
        self.bad_lines = 0;
        self.dropped_max_series = 0;
        self.dropped_max_memory = 0;
        self.bytes = 0;
    }

    /// Changes the series bound (on reload).
    pub fn set_max_series(&mut self, max_series: usize) {
        self.limits.max_series = max_series;
    }

    /// Makes `max_series` global: new series take from the store's shared budget.
    pub fn set_budget(&mut self, budget: Arc<SeriesBudget>) {
        self.budget = Some(budget);
    }

    /// Charges new series to their senders against these budgets.
    pub fn set_series_budgets(&mut self, budgets: Option<Arc<SeriesBudgets>>) {
        self.budgets = budgets;
    }

    /// Gives the shard the store's series, admitted even when the shard is full.
    pub fn set_known(&mut self, known: Arc<KnownSeries>) {
        self.known = Some(known);
    }

    /// True when the shard holds more than its memory allowance.
    #[inline]
    fn over_budget(&self) -> bool {
        self.bytes >= self.limits.memory_allowance
    }

    /// Whether a new series may be added (the store's series always may), counting it in the
    /// byte estimate if so. Out of line: it runs once per new series, and keeping it out of
    /// `record` keeps the path every known series takes short.
    #[inline(never)]
    fn has_room(&mut self, kind: Kind, key: &[u8]) -> bool {
        if self.known.as_ref().is_some_and(|k| k.contains(kind, key)) {
            self.bytes += key.len() as u64 + SERIES_OVERHEAD;
            return true;
        }
        // A series new to the store: its sender's budget first, then the shared bounds.
        let budgets = self.budgets.as_ref().filter(|b| self.sender != Sender::Unknown && b.limits().any());
        if let Some(b) = budgets {
            if !b.charge(self.sender) {
                if b.folding() {
                    self.folded_series_budget += 1;
                    self.fold_next = true;
                } else {
                    self.dropped_series_budget += 1;
                }
                return false;
            }
        }
        let admitted = if self.over_budget() {
            self.dropped_max_memory += 1;
            false
        } else {
            let room = match &self.budget {
                Some(budget) => budget.take(),
                None => self.series() < self.limits.max_series,
            };
            if !room {
                self.dropped_max_series += 1;
            }
            room
        };
        match (admitted, budgets) {
            (true, Some(_)) => {
                self.owners[kind_index(kind)].insert(owner_hash(key), self.sender);
            }
            (false, Some(b)) => b.uncharge(self.sender),
            _ => {}
        }
        if admitted {
            self.bytes += key.len() as u64 + SERIES_OVERHEAD;
        }
        admitted
    }

    /// Adds to a counter: a lookup and an add (a new series goes out of line). The one path
    /// of every counter value, sampled or not.
    #[inline(always)]
    fn add_counter(&mut self, key: &[u8], add: f64) {
        match self.counters.get_mut(key) {
            Some(v) => *v += add,
            None => self.new_counter(key, add),
        }
    }

    /// A counter not held yet: held if there is room.
    #[inline(never)]
    fn new_counter(&mut self, key: &[u8], add: f64) {
        if self.has_room(Kind::Counter, key) {
            self.counters.insert_new(key, 0.0 + add);
        }
    }

    /// The overflow series' key of `key` (`name;overflow=true`) in the scratch buffer, taken
    /// out (put it back with `self.fold_key = key`).
    fn overflow_key(&mut self, key: &[u8]) -> Vec<u8> {
        let mut k = std::mem::take(&mut self.fold_key);
        k.clear();
        k.extend_from_slice(key.split(|b| *b == b';').next().unwrap_or(key));
        k.extend_from_slice(b";overflow=true");
        k
    }

    /// A counter value of a series over its sender's budget, into the metric's overflow
    /// series, which no sender is charged for. (Not through `add_counter`: the receive path's
    /// functions call no function that calls them back, so they inline.)
    #[inline(never)]
    fn fold_counter(&mut self, key: &[u8], add: f64) {
        let k = self.overflow_key(key);
        let sender = std::mem::replace(&mut self.sender, Sender::Unknown);
        match self.counters.get_mut(&k) {
            Some(v) => *v += add,
            None => {
                if self.has_room(Kind::Counter, &k) {
                    self.counters.insert_new(&k, 0.0 + add);
                }
            }
        }
        self.sender = sender;
        self.fold_key = k;
    }

    /// A value of a series over its sender's budget, into the metric's overflow series
    /// (`name;overflow=true`, its tags dropped), which no sender is charged for.
    #[inline(never)]
    fn fold(&mut self, m: &Metric<'_>) {
        let key = self.overflow_key(m.key);
        let sender = std::mem::replace(&mut self.sender, Sender::Unknown);
        let _ = self.record_kind(&Metric { key: &key, ..*m });
        self.sender = sender;
        self.fold_key = key;
    }

    /// Records one parsed value.
    #[inline]
    pub fn record(&mut self, m: &Metric<'_>) {
        let _ = self.record_kind(m);
    }

    /// Whether values over a sender's budget are folded (`series_budget_overflow = "fold"`):
    /// then the receive path parses into [`Folding`] instead of the shard itself. (Kept out of
    /// [`Shard::record`]: a fold call there cost a quarter of the 20-line throughput.)
    pub fn folding(&self) -> bool {
        self.budgets.as_ref().is_some_and(|b| b.folding())
    }

    /// [`Shard::record`]'s work; true when the value's series was refused by its sender's
    /// budget and is to be folded.
    #[inline]
    fn record_kind(&mut self, m: &Metric<'_>) -> bool {
        match m.kind {
            Kind::Counter => {
                // No division for the common unsampled line (x * 1.0 is x).
                let add = if m.sample_rate == 1.0 { m.value } else { m.value * (1.0 / m.sample_rate) };
                self.add_counter(m.key, add);
                return std::mem::take(&mut self.fold_next);
            }
            Kind::Timer => {
                if !self.timers.contains_key(&KeyRef(m.key)) && !self.has_room(Kind::Timer, m.key) {
                    return std::mem::take(&mut self.fold_next);
                }
                let over = self.over_budget();
                let t = self.timers.entry_ref_or_default(m.key);
                let weight = 1.0 / m.sample_rate;
                t.units.add(m.unitless);
                if t.values.len() < self.limits.max_timer_samples && !over {
                    t.values.push(m.value);
                    t.count += weight;
                    self.bytes += TIMER_VALUE_BYTES;
                } else {
                    t.folded.get_or_insert_with(Default::default).add(m.value, weight);
                }
            }
            Kind::Gauge => {
                if !self.gauges.contains_key(&KeyRef(m.key)) && !self.has_room(Kind::Gauge, m.key) {
                    return std::mem::take(&mut self.fold_next);
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
                if !self.sets.contains_key(&KeyRef(m.key)) && !self.has_room(Kind::Set, m.key) {
                    return std::mem::take(&mut self.fold_next);
                }
                let cap = self.limits.max_set_members;
                let s = self.sets.entry_ref_or_default(m.key);
                if s.insert(Distinct::hash(m.set_member), cap) {
                    self.bytes += SET_MEMBER_BYTES;
                }
            }
        }
        false
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
        let k = KeyRef(key);
        if !self.contains_key(&k) {
            self.insert(key.into(), V::default());
        }
        // The key is present: inserted above or already there.
        self.get_mut(&k).expect("key inserted above")
    }
}

/// The shard as the parser's sink when values over a sender's budget are folded: the shard's
/// own paths, then the fold of what they refused.
pub struct Folding<'a>(pub &'a mut Shard);

impl Shard {
    /// [`Shard::record`], then the fold of what a sender's budget refused.
    #[inline]
    pub fn record_folding(&mut self, metric: &Metric<'_>) {
        if self.record_kind(metric) {
            self.fold(metric);
        }
    }

    /// An unsampled counter value, then the fold of what a sender's budget refused.
    #[inline]
    pub fn counter_folding(&mut self, key: &[u8], value: f64) {
        self.add_counter(key, value);
        if std::mem::take(&mut self.fold_next) {
            self.fold_counter(key, value);
        }
    }
}

impl MetricSink for Folding<'_> {
    fn metric(&mut self, metric: &Metric<'_>) {
        self.0.record_folding(metric);
    }

    fn bad_line(&mut self, line: &[u8]) {
        self.0.bad_line(line);
    }

    fn sent_name(&mut self, stored: &[u8], sent: &[u8]) {
        self.0.sent_name(stored, sent);
    }

    fn counter(&mut self, key: &[u8], value: f64) {
        self.0.counter_folding(key, value);
    }
}

impl MetricSink for Shard {
    #[inline(always)]
    fn metric(&mut self, metric: &Metric<'_>) {
        self.record(metric);
    }

    fn bad_line(&mut self, _line: &[u8]) {}

    /// Kept once per name and interval, within the memory allowance.
    fn sent_name(&mut self, stored: &[u8], sent: &[u8]) {
        if !self.sent_names.contains_key(&KeyRef(stored)) && !self.over_budget() {
            self.bytes += (stored.len() + sent.len()) as u64 + SERIES_OVERHEAD;
            self.sent_names.insert(stored.into(), sent.into());
        }
    }

    /// Straight to the add, without `record`'s frame and its match on the kind.
    #[inline(always)]
    fn counter(&mut self, key: &[u8], value: f64) {
        self.add_counter(key, value);
    }
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
        assert_eq!(s.counters.get(b"a").unwrap(), 1.0 + 2.0 * 2.0 + 10.0);
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
        assert_eq!(s.counters.get(b"a").unwrap(), 2.0);
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

    #[test]
    fn per_series_caps_fold_into_sketches() {
        let mut s =
            Shard::with_limits(ShardLimits { max_timer_samples: 10, max_set_members: 100, ..Default::default() });
        let text: String = (0..50).map(|i| format!("t:{i}|ms\nu:m{i}x{}|s\n", i * 7)).collect();
        feed(&mut s, &text);
        feed(&mut s, &(0..200).map(|i| format!("u:more{i}|s\n")).collect::<String>());
        let t = &s.timers[&b"t"[..]];
        assert_eq!((t.values.len(), t.count), (10, 10.0));
        let folded = t.folded.as_ref().unwrap();
        assert_eq!((folded.count, folded.min, folded.max, folded.samples()), (40.0, 10.0, 49.0, 40));
        let u = &s.sets[&b"u"[..]];
        assert!(u.folded.is_some() && u.exact.is_empty());
        let n = u.len() as f64;
        assert!((n - 250.0).abs() < 250.0 * 0.02, "{n}");
    }

    #[test]
    fn a_memory_allowance_refuses_new_series_and_summarises_timers() {
        let mut s = Shard::with_limits(ShardLimits { memory_allowance: 1000, ..Default::default() });
        feed(&mut s, &(0..100).map(|i| format!("c{i}:1|c\n")).collect::<String>());
        assert!(s.series() < 10, "{}", s.series());
        assert_eq!(s.dropped_max_memory, 100 - s.series() as u64);
        assert_eq!(s.dropped_max_series, 0);
        // Existing series still count; a timer's values go into its sketch.
        feed(&mut s, "c0:1|c\nc0:1|c");
        assert_eq!(s.counters.get(b"c0").unwrap(), 3.0);
        let before = s.bytes();
        let mut s2 = Shard::with_limits(ShardLimits { memory_allowance: 200, ..Default::default() });
        feed(&mut s2, &(0..100).map(|i| format!("t:{i}|ms\n")).collect::<String>());
        let t = &s2.timers[&b"t"[..]];
        assert!(t.values.len() < 20 && t.folded.as_ref().is_some_and(|f| f.samples() + t.values.len() as u64 == 100));
        assert!(before >= 1000);
    }
}
