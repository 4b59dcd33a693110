//! Series budgets per sender: one client that puts a request id in its metric names must not
//! take every other sender's series. Each new series is charged to the sender whose line
//! created it (its address, its uid on a Unix socket, its certificate's name, its agent on an
//! aggregator); past `series_per_source` live series, or `new_series_per_source` new ones in a
//! minute, its new series are refused (or folded into one overflow series per metric), and
//! everyone else's still arrive.
//!
//! Live counts are exact: a series is charged when a shard first holds it, the charge is
//! returned when another shard had created it first (the store keeps one owner per series), and
//! when the store lets the series go.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

/// Who sent a line: what a series is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Sender {
    /// Not known (a test, an internal series): never charged.
    #[default]
    Unknown,
    /// A network source's address.
    Address(IpAddr),
    /// A local process's user, on a Unix socket.
    Uid(u32),
    /// A client certificate's name or an agent's id, by its 64-bit hash (the text is kept by
    /// [`SeriesBudgets::name`]).
    Named(u64),
}

impl Sender {
    /// A sender known by a name (certificate, agent).
    pub fn named(name: &str) -> Sender {
        use std::hash::BuildHasher;
        Sender::Named(foldhash::fast::FixedState::with_seed(0x5e4d).hash_one(name))
    }
}

/// The budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BudgetLimits {
    /// Live series one sender may have created (0: no limit).
    pub series_per_sender: u64,
    /// New series one sender may create in a minute (0: no limit).
    pub new_series_per_minute: u64,
    /// Over budget, values go to one overflow series per metric (`name;overflow=true`)
    /// instead of being dropped.
    pub fold: bool,
    /// Every loopback address is one sender (the guard's `local_senders = "one_source"`).
    pub loopback_as_one: bool,
}

impl BudgetLimits {
    /// Whether any budget is set.
    pub fn any(&self) -> bool {
        self.series_per_sender > 0 || self.new_series_per_minute > 0
    }

    /// Whether a sender with `series` is at one of its budgets (its next new series refused).
    pub fn reached(&self, series: &SenderSeries) -> bool {
        (self.series_per_sender > 0 && series.live >= self.series_per_sender)
            || (self.new_series_per_minute > 0 && series.new_this_minute >= self.new_series_per_minute)
    }
}

/// One sender's series.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SenderSeries {
    /// Series it created that the store (or a shard) holds.
    pub live: u64,
    /// New series it created in the current minute.
    pub new_this_minute: u64,
    /// Which minute that is (minutes since the budgets were made).
    minute: u64,
    /// New series refused (or folded) since start.
    pub refused: u64,
}

/// Shards in the table: new series from different receive threads rarely wait on each other.
const SHARDS: usize = 16;

/// Most senders tracked; past it, a new sender is charged to no one until some leave (their
/// series gone), and counted.
pub const MAX_SENDERS: usize = 1 << 16;

/// Every sender's series, shared by the shards and the store.
#[derive(Debug)]
pub struct SeriesBudgets {
    /// The limits, as atomics: read at every new series (and once a datagram for `folding`)
    /// by every receive thread, so without a lock.
    series_per_sender: AtomicU64,
    new_series_per_minute: AtomicU64,
    fold: AtomicBool,
    loopback_as_one: AtomicBool,
    /// `fold` and a budget set: values over a budget are folded.
    folding: AtomicBool,
    table: [Mutex<HashMap<Sender, SenderSeries>>; SHARDS],
    names: Mutex<HashMap<u64, Box<str>>>,
    epoch: Instant,
}

impl SeriesBudgets {
    /// Budgets with these limits.
    pub fn new(limits: BudgetLimits) -> SeriesBudgets {
        let budgets = SeriesBudgets {
            series_per_sender: AtomicU64::new(0),
            new_series_per_minute: AtomicU64::new(0),
            fold: AtomicBool::new(false),
            loopback_as_one: AtomicBool::new(false),
            folding: AtomicBool::new(false),
            table: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            names: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
        };
        budgets.set_limits(limits);
        budgets
    }

    /// Minutes since the budgets were made (the clock of the per-minute budget).
    pub fn minute(&self) -> u64 {
        self.epoch.elapsed().as_secs() / 60
    }

    /// The limits in force.
    pub fn limits(&self) -> BudgetLimits {
        BudgetLimits {
            series_per_sender: self.series_per_sender.load(Relaxed),
            new_series_per_minute: self.new_series_per_minute.load(Relaxed),
            fold: self.fold.load(Relaxed),
            loopback_as_one: self.loopback_as_one.load(Relaxed),
        }
    }

    /// New limits (reload); the counts are kept.
    pub fn set_limits(&self, limits: BudgetLimits) {
        self.series_per_sender.store(limits.series_per_sender, Relaxed);
        self.new_series_per_minute.store(limits.new_series_per_minute, Relaxed);
        self.fold.store(limits.fold, Relaxed);
        self.loopback_as_one.store(limits.loopback_as_one, Relaxed);
        self.folding.store(limits.fold && limits.any(), Relaxed);
    }

    /// Whether values over a budget are folded rather than dropped.
    pub fn folding(&self) -> bool {
        self.folding.load(Relaxed)
    }

    /// The sender a series is charged to: loopback addresses as one when asked.
    /// The sender a charge is held for: loopback as one (`loopback_as_one`), an IPv4-mapped
    /// address as IPv4, an IPv6 address as its /64 (as the guard counts it: a host given a /64
    /// can send from any of its addresses).
    fn canonical(&self, sender: Sender, limits: &BudgetLimits) -> Sender {
        match sender {
            Sender::Address(ip) if limits.loopback_as_one && ip.to_canonical().is_loopback() => {
                Sender::Address(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
            }
            Sender::Address(ip) => match ip.to_canonical() {
                IpAddr::V6(v6) if !v6.is_loopback() => {
                    Sender::Address(IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()))
                }
                other => Sender::Address(other),
            },
            other => other,
        }
    }

    /// The sender `sender`'s series are counted under (see [`Self::canonical`]).
    pub fn counted_as(&self, sender: Sender) -> Sender {
        self.canonical(sender, &self.limits())
    }

    fn shard(&self, sender: &Sender) -> std::sync::MutexGuard<'_, HashMap<Sender, SenderSeries>> {
        // The same sender always lands in the same shard.
        let index = match sender {
            Sender::Unknown => 0,
            Sender::Address(IpAddr::V4(a)) => u32::from(*a) as usize,
            Sender::Address(IpAddr::V6(a)) => (u128::from(*a) >> 64) as usize,
            Sender::Uid(u) => *u as usize,
            Sender::Named(n) => *n as usize,
        };
        self.table[index % SHARDS].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Charges one new series to `sender`: false when it is over a budget (the series is
    /// refused or folded, and counted against the sender).
    pub fn charge(&self, sender: Sender) -> bool {
        if sender == Sender::Unknown {
            return true;
        }
        let limits = self.limits();
        if !limits.any() {
            return true;
        }
        let sender = self.canonical(sender, &limits);
        let minute = self.epoch.elapsed().as_secs() / 60;
        let mut table = self.shard(&sender);
        let full = table.len() >= MAX_SENDERS / SHARDS;
        let entry = match table.get_mut(&sender) {
            Some(e) => e,
            None if full => return true,
            None => table.entry(sender).or_default(),
        };
        if entry.minute != minute {
            entry.minute = minute;
            entry.new_this_minute = 0;
        }
        let over = (limits.series_per_sender > 0 && entry.live >= limits.series_per_sender)
            || (limits.new_series_per_minute > 0 && entry.new_this_minute >= limits.new_series_per_minute);
        if over {
            entry.refused += 1;
            return false;
        }
        entry.live += 1;
        entry.new_this_minute += 1;
        true
    }

    /// Gives back one series' charge: the series is gone.
    pub fn refund(&self, sender: Sender) {
        self.give_back(sender, false);
    }

    /// Takes back a charge that did not make a series (another bound refused it, or another
    /// shard made it first): it is neither live nor new.
    pub fn uncharge(&self, sender: Sender) {
        self.give_back(sender, true);
    }

    fn give_back(&self, sender: Sender, not_new: bool) {
        if sender == Sender::Unknown {
            return;
        }
        let sender = self.canonical(sender, &self.limits());
        let minute = self.epoch.elapsed().as_secs() / 60;
        let mut table = self.shard(&sender);
        if let Some(e) = table.get_mut(&sender) {
            e.live = e.live.saturating_sub(1);
            if not_new && e.minute == minute {
                e.new_this_minute = e.new_this_minute.saturating_sub(1);
            }
            if e.live == 0 && e.refused == 0 {
                table.remove(&sender);
            }
        }
    }

    /// Remembers the text of a named sender (a certificate's or an agent's name).
    pub fn name(&self, name: &str) -> Sender {
        let sender = Sender::named(name);
        if let Sender::Named(h) = sender {
            let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
            if names.len() < MAX_SENDERS && !names.contains_key(&h) {
                names.insert(h, name.into());
            }
        }
        sender
    }

    /// How a sender reads: its address, `uid 1000`, or its name.
    pub fn describe(&self, sender: Sender) -> String {
        let mut text = String::new();
        self.describe_into(sender, &mut text);
        text
    }

    /// [`Self::describe`], written at the end of `out`.
    pub fn describe_into(&self, sender: Sender, out: &mut String) {
        use std::fmt::Write;
        let _ = match sender {
            Sender::Unknown => out.write_str("unknown"),
            Sender::Address(IpAddr::V6(a)) if !a.is_loopback() => write!(out, "{a}/64"),
            Sender::Address(a) => write!(out, "{a}"),
            Sender::Uid(u) => write!(out, "uid {u}"),
            Sender::Named(h) => {
                let names = self.names.lock().unwrap_or_else(|e| e.into_inner());
                match names.get(&h) {
                    Some(n) => out.write_str(n),
                    None => write!(out, "#{h:016x}"),
                }
            }
        };
    }

    /// The `n` senders with the most live series, with their counts.
    pub fn top(&self, n: usize) -> Vec<(Sender, SenderSeries)> {
        let mut all: Vec<(Sender, SenderSeries)> = Vec::new();
        for shard in &self.table {
            let t = shard.lock().unwrap_or_else(|e| e.into_inner());
            all.extend(t.iter().map(|(s, e)| (*s, e.clone())));
        }
        all.sort_by(|a, b| b.1.live.cmp(&a.1.live).then(b.1.refused.cmp(&a.1.refused)).then(a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }

    /// Senders at one of their budgets now.
    pub fn at_budget(&self) -> usize {
        let limits = self.limits();
        self.table
            .iter()
            .map(|shard| shard.lock().unwrap_or_else(|e| e.into_inner()).values().filter(|s| limits.reached(s)).count())
            .sum()
    }

    /// One sender's series.
    pub fn get(&self, sender: Sender) -> SenderSeries {
        let sender = self.canonical(sender, &self.limits());
        self.shard(&sender).get(&sender).cloned().unwrap_or_default()
    }
}

/// Which of a store's four maps a series is in.
pub(crate) fn kind_index(kind: crate::Kind) -> usize {
    match kind {
        crate::Kind::Counter => 0,
        crate::Kind::Gauge => 1,
        crate::Kind::Timer => 2,
        crate::Kind::Set => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flood of forged senders, each making series, holds at most `MAX_SENDERS` entries;
    /// senders past it are charged to no one (so never refused), and the table lets go of a
    /// sender whose series are all gone.
    #[test]
    fn the_sender_table_is_bounded_under_a_flood_of_senders() {
        let limits =
            BudgetLimits { series_per_sender: 1, new_series_per_minute: 0, fold: false, loopback_as_one: false };
        let b = SeriesBudgets::new(limits);
        for i in 0..(2 * MAX_SENDERS as u32) {
            assert!(b.charge(Sender::Address(IpAddr::V4(std::net::Ipv4Addr::from(0xc612_0000 + i)))));
        }
        let held: usize = b.table.iter().map(|t| t.lock().unwrap().len()).sum();
        assert!(held <= MAX_SENDERS, "{held} senders held");
        let first = Sender::Address(IpAddr::V4(std::net::Ipv4Addr::from(0xc612_0000)));
        assert!(!b.charge(first), "a tracked sender is still held to its budget");
        b.refund(first);
        assert_eq!(b.get(first).live, 0);
    }

    /// An IPv6 sender is its /64: a host given one cannot escape its budget by rotating
    /// addresses; another /64 has a budget of its own.
    #[test]
    fn an_ipv6_sender_is_its_slash_64() {
        let limits =
            BudgetLimits { series_per_sender: 2, new_series_per_minute: 0, fold: false, loopback_as_one: false };
        let b = SeriesBudgets::new(limits);
        let at = |s: &str| Sender::Address(s.parse().unwrap());
        assert!(b.charge(at("2001:db8:1:2::1")));
        assert!(b.charge(at("2001:db8:1:2:ffff::9")));
        assert!(!b.charge(at("2001:db8:1:2::77")), "the same /64, over its budget");
        assert!(b.charge(at("2001:db8:1:3::1")), "another /64");
        let (top, _) = b.top(1)[0];
        assert_eq!(b.describe(top), "2001:db8:1:2::/64");
        assert_eq!(b.get(at("2001:db8:1:2::abcd")).live, 2);
        b.refund(at("2001:db8:1:2::1"));
        assert_eq!(b.get(at("2001:db8:1:2::")).live, 1, "refunded to the /64");
        assert_eq!(b.describe(b.counted_as(at("::ffff:198.18.0.1"))), "198.18.0.1");
    }
}
