//! A fixed-capacity table of sources, each with its GCRA cell and offender record.
//!
//! Capacity is set once (`tracked_sources`) and split over shards, each a small mutex-guarded
//! map and slot array: lookups allocate nothing, and a flood of spoofed random sources recycles
//! slots instead of growing memory. A full shard evicts with the CLOCK algorithm (an
//! approximation of least-recently-seen: each repeat visit sets a bit, the hand clears bits and
//! evicts the first entry found clear; a new entry starts clear, so sources seen once go first). Receive threads share the table, so a source's budget is one
//! budget whichever `SO_REUSEPORT` socket its packets land on; two threads contend only when
//! they touch the same shard at the same instant.
//!
//! Fairness under eviction: an evicted source comes back with a full bucket, so while the table
//! churns a heavy source can get up to one extra burst per eviction. The per-port limit, which
//! is not in the table, still bounds the total. A source tracked for [`ESTABLISHED_NS`] without
//! being evicted is *established*: it has first claim on the port's budget (see
//! [`crate::PortLimiter`]), which is what keeps steady senders served while spoofed one-shot sources
//! churn through the table.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;

use parking_lot::Mutex;

use crate::gcra::Limit;
use crate::shared::Port;

/// How long a source must stay tracked to count as established.
pub const ESTABLISHED_NS: u64 = 1_000_000_000;

/// Why the guard refused something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The source is outside the allow-list.
    NotAllowed,
    /// The source sent more messages than its own limit.
    SourceLimit,
    /// The listening port as a whole was over its limit.
    PortLimit,
    /// The source opened connections faster than its limit.
    ConnectionRate,
    /// The source already holds as many open connections as it may.
    SourceConnections,
    /// The listener already holds as many open connections as it may.
    ConnectionLimit,
    /// The TLS listener was at its cap of handshakes in flight or per second.
    HandshakeLimit,
    /// A PROXY protocol header was missing where required (a balancer's connection), sent where
    /// not allowed, malformed, longer than its bound, or not finished in time.
    ProxyHeader,
}

impl Reason {
    /// Every reason, for exposition.
    pub const ALL: [Reason; 8] = [
        Reason::NotAllowed,
        Reason::SourceLimit,
        Reason::PortLimit,
        Reason::ConnectionRate,
        Reason::SourceConnections,
        Reason::ConnectionLimit,
        Reason::HandshakeLimit,
        Reason::ProxyHeader,
    ];

    /// True for the rate limits (`floodgate_limited_total`), as opposed to the allow-list and
    /// the caps on open connections.
    pub fn is_rate_limit(self) -> bool {
        matches!(self, Reason::SourceLimit | Reason::PortLimit | Reason::ConnectionRate | Reason::HandshakeLimit)
    }

    /// The name used in metrics, logs and `/offenders`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NotAllowed => "not_allowed",
            Reason::SourceLimit => "source_limit",
            Reason::PortLimit => "port_limit",
            Reason::ConnectionRate => "connection_rate",
            Reason::SourceConnections => "source_connections",
            Reason::ConnectionLimit => "connection_limit",
            Reason::HandshakeLimit => "handshake_limit",
            Reason::ProxyHeader => "proxy_header",
        }
    }
}

/// Which listener and which source: IPv4 addresses whole, IPv6 by their /64 (one host usually
/// owns a whole /64, so keying by address would let it rotate through 2^64 keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceKey {
    /// The listener's index.
    pub listener: u16,
    /// The address as a number: IPv4 in the low 32 bits, IPv6 with the bits past its prefix
    /// cleared.
    pub addr: u128,
    /// 32 for IPv4; for IPv6 the prefix the key stands for: 64 (one host's network), or
    /// [`SourceKey::V6_AGGREGATE`] (the whole allocation of one customer); [`SourceKey::UID`]
    /// for a local user (`addr` is the uid); [`SourceKey::LOCAL`] for every process of this
    /// host at once.
    pub prefix: u8,
}

impl SourceKey {
    /// The IPv6 prefix whose /64s share one aggregate budget: an ISP hands a customer a /56
    /// (or more), so one sender can rotate through 256 /64s and would otherwise get 256
    /// budgets.
    pub const V6_AGGREGATE: u8 = 56;

    /// [`SourceKey::prefix`] of a key that is a local user, not an address.
    pub const UID: u8 = 0;

    /// [`SourceKey::prefix`] of the key that stands for this host's own processes, whatever
    /// address they send from: a local process may take any of 127.0.0.0/8 and every address
    /// of the host, so keying them apart would let it multiply its budget.
    pub const LOCAL: u8 = 1;

    /// The key of this host's processes on `listener` (see [`SourceKey::LOCAL`]).
    pub fn local(listener: u16) -> SourceKey {
        SourceKey { listener, addr: 0, prefix: Self::LOCAL }
    }

    /// The key of a local user (the sender's uid on a Unix socket, as the kernel tells it) on
    /// `listener`.
    pub fn uid(listener: u16, uid: u32) -> SourceKey {
        SourceKey { listener, addr: u128::from(uid), prefix: Self::UID }
    }

    /// The uid of a [`SourceKey::uid`] key.
    pub fn as_uid(&self) -> Option<u32> {
        (self.prefix == Self::UID).then_some(self.addr as u32)
    }

    /// The key of `ip` on `listener`.
    pub fn new(listener: u16, ip: IpAddr) -> SourceKey {
        match ip {
            IpAddr::V4(v4) => SourceKey { listener, addr: u128::from(u32::from(v4)), prefix: 32 },
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceKey { listener, addr: u128::from(u32::from(v4)), prefix: 32 },
                None => SourceKey { listener, addr: u128::from(v6) & !u128::from(u64::MAX), prefix: 64 },
            },
        }
    }

    /// True for an IPv6 key.
    pub fn is_v6(&self) -> bool {
        self.prefix == 64 || self.prefix == Self::V6_AGGREGATE
    }

    /// For an IPv6 key, the key of its /56 (the aggregate budget of its allocation).
    pub fn aggregate(&self) -> Option<SourceKey> {
        let keep = Self::V6_AGGREGATE as u32;
        self.is_v6().then(|| SourceKey {
            listener: self.listener,
            addr: self.addr & !(u128::MAX >> keep),
            prefix: Self::V6_AGGREGATE,
        })
    }

    /// The source as text: the IPv4 address, the IPv6 prefix, `uid:N`, or `local`.
    pub fn source(&self) -> String {
        if let Some(uid) = self.as_uid() {
            format!("uid:{uid}")
        } else if self.prefix == Self::LOCAL {
            "local".to_string()
        } else if self.is_v6() {
            format!("{}/{}", std::net::Ipv6Addr::from(self.addr), self.prefix)
        } else {
            std::net::Ipv4Addr::from(self.addr as u32).to_string()
        }
    }
}

/// What the table says of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limit.
    Allowed,
    /// Over a limit; `started` is true on the first drop of a new limited period (log it once).
    Limited {
        /// Which limit.
        reason: Reason,
        /// The source was not limited just before.
        started: bool,
    },
}

/// An offender's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offender {
    /// Who.
    pub key: SourceKey,
    /// The limit it hit last.
    pub reason: Reason,
    /// Messages (or connections) dropped since it was first limited (while tracked).
    pub dropped: u64,
    /// First time it was limited (ns, the caller's clock).
    pub first_seen_ns: u64,
    /// Last time it was limited.
    pub last_seen_ns: u64,
    /// Limited within the quiet period.
    pub currently_limited: bool,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: SourceKey,
    tat: u64,
    referenced: bool,
    since_ns: u64,
    reason: Reason,
    dropped: u64,
    first_limited_ns: u64,
    last_limited_ns: u64,
    limited: bool,
}

#[derive(Debug)]
struct Shard {
    index: HashMap<SourceKey, u32, foldhash::fast::RandomState>,
    entries: Vec<Entry>,
    capacity: usize,
    hand: usize,
    evicted: u64,
}

impl Shard {
    fn slot(&mut self, key: SourceKey, now_ns: u64) -> &mut Entry {
        if let Some(&i) = self.index.get(&key) {
            let e = &mut self.entries[i as usize];
            e.referenced = true;
            return e;
        }
        // New entries start unreferenced: a source seen once (a spoofed one-shot) is the first
        // to go; one seen again survives the hand's next pass.
        let fresh = Entry {
            key,
            tat: 0,
            referenced: false,
            since_ns: now_ns,
            reason: Reason::SourceLimit,
            dropped: 0,
            first_limited_ns: 0,
            last_limited_ns: 0,
            limited: false,
        };
        let i = if self.entries.len() < self.capacity {
            self.entries.push(fresh);
            self.entries.len() - 1
        } else {
            // CLOCK: clear reference bits until an unreferenced entry comes round.
            loop {
                let i = self.hand;
                self.hand = (self.hand + 1) % self.entries.len();
                let e = &mut self.entries[i];
                if e.referenced {
                    e.referenced = false;
                } else {
                    self.index.remove(&e.key);
                    *e = fresh;
                    self.evicted += 1;
                    break i;
                }
            }
        };
        self.index.insert(key, i as u32);
        &mut self.entries[i]
    }
}

/// The bounded table of sources.
#[derive(Debug)]
pub struct SourceTable {
    shards: Box<[Mutex<Shard>]>,
    hasher: foldhash::fast::RandomState,
    capacity: usize,
}

/// Shards: enough that receive threads rarely meet, few enough that each holds many sources.
const SHARDS: usize = 64;

impl SourceTable {
    /// Sources a table asked to track `requested` will hold: whole shards' worth.
    pub fn capacity_for(requested: usize) -> usize {
        requested.div_ceil(SHARDS).max(1) * SHARDS
    }

    /// A table tracking at most `capacity` sources (at least one per shard).
    pub fn new(capacity: usize) -> SourceTable {
        let per_shard = capacity.div_ceil(SHARDS).max(1);
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    index: HashMap::with_capacity_and_hasher(per_shard, Default::default()),
                    entries: Vec::with_capacity(per_shard),
                    capacity: per_shard,
                    hand: 0,
                    evicted: 0,
                })
            })
            .collect();
        SourceTable { shards, hasher: Default::default(), capacity: per_shard * SHARDS }
    }

    /// Sources the table can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Sources held now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().entries.len()).sum()
    }

    /// Sources forgotten to make room for others, since the table was made.
    pub fn evicted(&self) -> u64 {
        self.shards.iter().map(|s| s.lock().evicted).sum()
    }

    /// True when no source is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, key: &SourceKey) -> &Mutex<Shard> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    /// Charges `n` messages from `key` at `now_ns` against its own `limit`.
    #[inline]
    pub fn check(&self, key: SourceKey, limit: &Limit, now_ns: u64, n: u64) -> Verdict {
        self.admit(key, limit, Reason::SourceLimit, None, now_ns, n)
    }

    /// Charges `n` messages from `key` at `now_ns`: first against the source's own `limit`
    /// (refused as `reason`), then against the listening port's, if any (refused as
    /// [`Reason::PortLimit`]; the source's budget is then given back). Established sources
    /// have first claim on the port's budget.
    ///
    /// Always inlined: each caller passes a known kind of port budget, and inlined the check
    /// is specialised to it. Left to the compiler, it stopped inlining this once the shared
    /// budget was added, and a guard check went from 30 to 48 ns
    /// (`floodgate-load bench --only guard`, "In memory").
    #[inline(always)]
    pub fn admit(
        &self,
        key: SourceKey,
        limit: &Limit,
        reason: Reason,
        port: Option<Port<'_>>,
        now_ns: u64,
        n: u64,
    ) -> Verdict {
        let port = port.filter(|p| !p.is_unlimited());
        if limit.is_unlimited() && port.is_none() {
            return Verdict::Allowed;
        }
        let mut shard = self.shard(&key).lock();
        let e = shard.slot(key, now_ns);
        let before = e.tat;
        let refused = if !limit.check(&mut e.tat, now_ns, n) {
            reason
        } else {
            match port {
                Some(p) if !p.check(now_ns, n, now_ns.saturating_sub(e.since_ns) >= ESTABLISHED_NS) => {
                    e.tat = before;
                    Reason::PortLimit
                }
                _ => return Verdict::Allowed,
            }
        };
        Verdict::Limited { reason: refused, started: record(e, refused, now_ns, n) }
    }

    /// Records `n` refusals of `key` for a reason decided elsewhere (an open-connection cap);
    /// true when this starts a limited period.
    pub fn record(&self, key: SourceKey, reason: Reason, now_ns: u64, n: u64) -> bool {
        let mut shard = self.shard(&key).lock();
        record(shard.slot(key, now_ns), reason, now_ns, n)
    }

    /// Ends the limited period of sources not limited for `quiet_ns`; returns them (each once)
    /// with what they dropped, for the "stopped being limited" log line.
    pub fn sweep(&self, now_ns: u64, quiet_ns: u64) -> Vec<Offender> {
        let mut ended = Vec::new();
        for shard in self.shards.iter() {
            for e in shard.lock().entries.iter_mut() {
                if e.limited && now_ns.saturating_sub(e.last_limited_ns) >= quiet_ns {
                    e.limited = false;
                    ended.push(offender(e));
                }
            }
        }
        ended
    }

    /// The `max` sources that dropped most (bounded, for `/offenders` and labelled metrics).
    pub fn offenders(&self, max: usize) -> Vec<Offender> {
        let mut all: Vec<Offender> = Vec::new();
        for shard in self.shards.iter() {
            all.extend(shard.lock().entries.iter().filter(|e| e.dropped > 0).map(offender));
            if all.len() > 4 * max.max(1) {
                all.sort_unstable_by_key(|o| std::cmp::Reverse(o.dropped));
                all.truncate(max);
            }
        }
        all.sort_unstable_by(|a, b| b.dropped.cmp(&a.dropped).then(a.key.cmp(&b.key)));
        all.truncate(max);
        all
    }
}

/// Notes a refusal in the entry; true when it starts a limited period.
fn record(e: &mut Entry, reason: Reason, now_ns: u64, n: u64) -> bool {
    let started = !e.limited;
    if e.dropped == 0 {
        e.first_limited_ns = now_ns;
    }
    e.limited = true;
    e.reason = reason;
    e.dropped += n;
    e.last_limited_ns = now_ns;
    started
}

fn offender(e: &Entry) -> Offender {
    Offender {
        key: e.key,
        reason: e.reason,
        dropped: e.dropped,
        first_seen_ns: e.first_limited_ns,
        last_seen_ns: e.last_limited_ns,
        currently_limited: e.limited,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::PortLimiter;

    const SEC: u64 = 1_000_000_000;

    fn key(i: u32) -> SourceKey {
        SourceKey::new(0, IpAddr::V4(std::net::Ipv4Addr::from(i)))
    }

    #[test]
    fn one_budget_per_source_and_listener() {
        let t = SourceTable::new(1000);
        let l = Limit::new(10, SEC);
        let a = key(1);
        let allowed = (0..100).filter(|_| t.check(a, &l, SEC, 1) == Verdict::Allowed).count();
        assert_eq!(allowed, 10);
        // Another source, and the same source on another listener, have their own budgets.
        assert_eq!(t.check(key(2), &l, SEC, 1), Verdict::Allowed);
        let other_listener = SourceKey { listener: 1, ..a };
        assert_eq!(t.check(other_listener, &l, SEC, 1), Verdict::Allowed);
    }

    #[test]
    fn a_uid_is_a_source_of_its_own_never_an_address() {
        let t = SourceTable::new(1000);
        let l = Limit::new(10, SEC);
        let uid = SourceKey::uid(0, 1000);
        assert_eq!(
            (uid.as_uid(), uid.is_v6(), uid.aggregate(), uid.source()),
            (Some(1000), false, None, "uid:1000".into())
        );
        // uid 1000 and the address 0.0.3.232 (1000 as a number) are different budgets.
        let allowed = (0..100).filter(|_| t.check(uid, &l, SEC, 1) == Verdict::Allowed).count();
        assert_eq!(allowed, 10);
        assert_eq!(t.check(key(1000), &l, SEC, 1), Verdict::Allowed);
        assert_eq!(key(1000).as_uid(), None);
    }

    #[test]
    fn limited_periods_start_once_and_end_after_quiet() {
        let t = SourceTable::new(100);
        let l = Limit::new(1, SEC);
        let a = key(7);
        assert_eq!(t.check(a, &l, SEC, 1), Verdict::Allowed);
        assert_eq!(t.check(a, &l, SEC, 1), Verdict::Limited { reason: Reason::SourceLimit, started: true });
        assert_eq!(t.check(a, &l, SEC, 1), Verdict::Limited { reason: Reason::SourceLimit, started: false });
        assert!(t.sweep(SEC + SEC / 2, SEC).is_empty(), "not quiet long enough");
        let ended = t.sweep(3 * SEC, SEC);
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].dropped, 2);
        assert!(t.sweep(4 * SEC, SEC).is_empty(), "reported once");
        let o = t.offenders(10);
        assert_eq!(o[0].key.source(), "0.0.0.7");
        assert!(!o[0].currently_limited);
    }

    #[test]
    fn memory_is_bounded_under_a_flood_of_sources() {
        let t = SourceTable::new(1000);
        let l = Limit::new(3000, SEC);
        for i in 0..200_000u32 {
            t.check(key(i), &l, SEC, 1);
        }
        assert!(t.len() <= t.capacity());
        assert!(t.capacity() < 1100);
        assert_eq!(t.capacity(), SourceTable::capacity_for(1000));
    }

    #[test]
    fn a_steady_source_survives_a_flood_of_one_shot_sources() {
        let t = SourceTable::new(640);
        let l = Limit::new(1, SEC);
        let steady = key(u32::MAX);
        assert_eq!(t.check(steady, &l, SEC, 1), Verdict::Allowed);
        // The steady source is over its limit and stays tracked (and limited) while spoofed
        // one-shot sources churn through its shard, because it keeps being seen.
        for i in 0..100_000u32 {
            t.check(key(i), &l, SEC, 1);
            if i % 5 == 0 {
                assert!(matches!(t.check(steady, &l, SEC, 1), Verdict::Limited { .. }), "evicted at {i}");
            }
        }
    }

    #[test]
    fn port_limit_gives_the_source_budget_back_and_favours_established_sources() {
        let t = SourceTable::new(1000);
        let own = Limit::new(100, SEC);
        let port_limit = Limit::new(10, SEC);
        let port = PortLimiter::new();
        let a = key(1);
        let first = t.admit(a, &own, Reason::SourceLimit, Some(Port::Local(&port, &port_limit)), SEC, 1);
        assert_eq!(first, Verdict::Allowed);
        // A newcomer gets half the port's burst.
        let allowed = (0..20)
            .filter(|_| {
                t.admit(a, &own, Reason::SourceLimit, Some(Port::Local(&port, &port_limit)), SEC, 1) == Verdict::Allowed
            })
            .count();
        assert_eq!(allowed, 4);
        assert_eq!(t.offenders(1)[0].reason, Reason::PortLimit);
        // Once established (tracked a second) the source may fill the burst; its own budget
        // was not spent by the refusals.
        let later = 2 * SEC;
        let allowed = (0..20)
            .filter(|_| {
                t.admit(a, &own, Reason::SourceLimit, Some(Port::Local(&port, &port_limit)), later, 1)
                    == Verdict::Allowed
            })
            .count();
        assert_eq!(allowed, 10);
    }

    #[test]
    fn ipv6_is_keyed_by_its_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(SourceKey::new(0, a), SourceKey::new(0, b));
        assert_ne!(SourceKey::new(0, a), SourceKey::new(0, c));
        assert_eq!(SourceKey::new(0, a).source(), "2001:db8:1:2::/64");
        let in_57: IpAddr = "2001:db8:0:ff::9".parse().unwrap();
        let aggregate = SourceKey::new(0, in_57).aggregate().unwrap();
        assert_eq!(aggregate.source(), "2001:db8::/56");
        assert_eq!(SourceKey::new(0, "2001:db8:0:80::1".parse().unwrap()).aggregate(), Some(aggregate));
        assert_ne!(aggregate, SourceKey::new(0, "2001:db8::1".parse().unwrap()), "a /56 is not its first /64");
        assert_eq!(SourceKey::new(0, "10.0.0.1".parse().unwrap()).aggregate(), None);
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(SourceKey::new(0, mapped).source(), "10.1.2.3");
    }

    #[test]
    fn offenders_are_bounded_and_sorted() {
        let t = SourceTable::new(10_000);
        let l = Limit::new(1, SEC);
        for i in 0..1000u32 {
            for _ in 0..=(i % 50) + 1 {
                t.check(key(i), &l, SEC, 1);
            }
        }
        let o = t.offenders(100);
        assert_eq!(o.len(), 100);
        assert!(o.windows(2).all(|w| w[0].dropped >= w[1].dropped));
        assert_eq!(o[0].dropped, 50);
    }

    proptest::proptest! {
        /// Whatever arrives, the table never holds more than its capacity, and a source never
        /// gets more than its burst at one instant.
        #[test]
        fn bounded_and_fair(keys in proptest::collection::vec(0u32..5000, 1..3000), cap in 64usize..2000) {
            let t = SourceTable::new(cap);
            let l = Limit::new(5, SEC);
            let mut allowed = std::collections::HashMap::new();
            for k in keys {
                if t.check(key(k), &l, SEC, 1) == Verdict::Allowed {
                    *allowed.entry(k).or_insert(0u32) += 1;
                }
            }
            proptest::prop_assert!(t.len() <= t.capacity());
            // A source gets its burst of 5, and one more burst only after being evicted: all
            // the excess over 5 per source is paid for by evictions, whatever the churn.
            let excess: u64 = allowed.values().map(|n| u64::from(n.saturating_sub(5))).sum();
            proptest::prop_assert!(excess <= 5 * t.evicted(), "{} over the bursts, {} evictions", excess, t.evicted());
        }

        /// Few sources in a roomy table: none is evicted, and none gets more than its burst.
        #[test]
        fn without_churn_a_burst_is_a_burst(keys in proptest::collection::vec(0u32..16, 1..3000)) {
            let t = SourceTable::new(100_000);
            let l = Limit::new(5, SEC);
            let mut allowed = std::collections::HashMap::new();
            for k in keys {
                if t.check(key(k), &l, SEC, 1) == Verdict::Allowed {
                    *allowed.entry(k).or_insert(0u32) += 1;
                }
            }
            proptest::prop_assert_eq!(t.evicted(), 0);
            proptest::prop_assert!(allowed.values().all(|n| *n <= 5), "{:?}", allowed);
        }
    }
}
