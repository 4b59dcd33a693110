//! The connection table floodgate keeps: every tracked entry's label and state, and the
//! per-label counts the metrics report, kept up to date one event at a time (a scrape reads
//! counts; it never walks the connections).
//!
//! - A label is fixed when an entry is first seen, so its counts always add up.
//! - At most `max_remote_hosts` labels; connections to further remotes are counted under
//!   `other` (and in [`Table::folded`]). A label whose connections are all gone is freed.
//! - A connection the kernel dropped stays in `closed` until the next scrape has seen it
//!   (the kernel forgets closed entries within seconds, faster than most scrape intervals).
//! - Resync (after the kernel dropped events, ENOBUFS): [`begin_resync`](Table::begin_resync),
//!   the dump's entries through [`apply`](Table::apply) with `from_dump`, then
//!   [`end_resync`](Table::end_resync): entries the dump did not contain are gone. An entry
//!   destroyed by an event during the dump is not brought back by the dump's older copy.

use std::collections::{HashMap, HashSet};

use crate::ctnetlink::{Counters, Entry, EventType, Phase, IPPROTO_TCP};
use crate::label::{Locality, Remote};

/// A series label: a remote endpoint, or the overflow bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Label {
    /// `host="ip:port"`.
    Host(Remote),
    /// `host="other"`: past `max_remote_hosts`.
    Other,
}

impl Label {
    /// Its conntrack zone, where not the default (`zone` label).
    pub fn zone(&self) -> Option<u16> {
        match self {
            Label::Host(r) if r.zone != 0 => Some(r.zone),
            _ => None,
        }
    }
}

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Label::Host(r) => r.fmt(f),
            Label::Other => f.write_str("other"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Tracked {
    label: Label,
    phase: Option<Phase>,
    proto: u8,
    generation: u64,
    /// Whether the remote opened it (which way is "in").
    inbound: bool,
    /// Its traffic as last read (accounting on).
    traffic: Traffic,
}

/// Bytes and packets between this side and the remote, each way: `out` towards the remote
/// (the original direction of an outbound connection, the reply of an inbound one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Bytes towards the remote.
    pub out_bytes: u64,
    /// Packets towards the remote.
    pub out_packets: u64,
    /// Bytes from the remote.
    pub in_bytes: u64,
    /// Packets from the remote.
    pub in_packets: u64,
}

impl Traffic {
    /// An entry's counters seen from this side.
    pub fn of(c: &Counters, inbound: bool) -> Traffic {
        let (orig, reply) = ((c.orig_bytes, c.orig_packets), (c.reply_bytes, c.reply_packets));
        let ((out_bytes, out_packets), (in_bytes, in_packets)) = if inbound { (reply, orig) } else { (orig, reply) };
        Traffic { out_bytes, out_packets, in_bytes, in_packets }
    }

    /// Adds what grew from `old` to `new` (an entry's counters only grow; a smaller value,
    /// which the kernel does not send, adds nothing rather than going back).
    fn add_growth(&mut self, old: &Traffic, new: &Traffic) {
        self.out_bytes += new.out_bytes.saturating_sub(old.out_bytes);
        self.out_packets += new.out_packets.saturating_sub(old.out_packets);
        self.in_bytes += new.in_bytes.saturating_sub(old.in_bytes);
        self.in_packets += new.in_packets.saturating_sub(old.in_packets);
    }

    /// Each field's larger value: the reading to compare the next one with.
    fn max(&self, other: &Traffic) -> Traffic {
        Traffic {
            out_bytes: self.out_bytes.max(other.out_bytes),
            out_packets: self.out_packets.max(other.out_packets),
            in_bytes: self.in_bytes.max(other.in_bytes),
            in_packets: self.in_packets.max(other.in_packets),
        }
    }
}

/// Counts of one label.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// TCP connections by [`Phase`] (indexed as [`Phase::ALL`]).
    pub phases: [u64; 4],
    /// Dropped by the kernel since the last scrape (shown as closed).
    pub recently_closed: u64,
    /// Entries of any protocol under this label.
    pub entries: u64,
    /// Traffic of its connections since the label appeared: those gone (their last reading)
    /// and those live (as last read). Never decreases while the label lives.
    pub traffic: Traffic,
}

impl Counts {
    fn is_empty(&self) -> bool {
        self.entries == 0 && self.recently_closed == 0
    }
}

/// The table.
#[derive(Debug)]
pub struct Table {
    entries: HashMap<u32, Tracked>,
    labels: HashMap<Label, Counts>,
    by_protocol: HashMap<u8, u64>,
    max_remote_hosts: usize,
    folded: u64,
    generation: u64,
    resyncing: bool,
    destroyed_during_resync: HashSet<u32>,
    accounting: bool,
}

fn index(p: Phase) -> usize {
    p as usize
}

impl Table {
    /// An empty table holding at most `max_remote_hosts` labels besides `other`.
    pub fn new(max_remote_hosts: usize) -> Table {
        Table {
            entries: HashMap::new(),
            labels: HashMap::new(),
            by_protocol: HashMap::new(),
            max_remote_hosts,
            folded: 0,
            generation: 0,
            resyncing: false,
            destroyed_during_resync: HashSet::new(),
            accounting: false,
        }
    }

    /// Entries tracked now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Connections counted under `other` because `max_remote_hosts` was reached (total).
    pub fn folded(&self) -> u64 {
        self.folded
    }

    /// Whether the kernel counts traffic (an entry came with counters: `nf_conntrack_acct`).
    pub fn accounting(&self) -> bool {
        self.accounting
    }

    /// Entries tracked now, by IP protocol number.
    pub fn by_protocol(&self) -> &HashMap<u8, u64> {
        &self.by_protocol
    }

    /// Applies one message (an event, or a dump entry with `from_dump`); returns the entry's
    /// label.
    pub fn apply(&mut self, event: EventType, entry: &Entry, local: &Locality, from_dump: bool) -> Label {
        let tcp = entry.orig.proto == IPPROTO_TCP;
        if from_dump && self.resyncing && self.destroyed_during_resync.contains(&entry.id) {
            return self.label_for(entry, local, false);
        }
        self.accounting |= entry.counters.is_some();
        if event == EventType::Destroy {
            if self.resyncing {
                self.destroyed_during_resync.insert(entry.id);
            }
            return match self.entries.remove(&entry.id) {
                Some(old) => {
                    // The final reading, when the kernel sent one.
                    if let (Some(counters), Some(c)) = (&entry.counters, self.labels.get_mut(&old.label)) {
                        c.traffic.add_growth(&old.traffic, &Traffic::of(counters, old.inbound));
                    }
                    self.forget(&old, true);
                    old.label
                }
                None => self.label_for(entry, local, false),
            };
        }
        let phase = if tcp { entry.phase() } else { None };
        let generation = self.generation;
        match self.entries.get_mut(&entry.id) {
            Some(t) => {
                let (old_phase, label) = (t.phase, t.label);
                t.phase = phase;
                t.generation = generation;
                let c = self.labels.entry(label).or_default();
                if let Some(p) = old_phase {
                    c.phases[index(p)] -= 1;
                }
                if let Some(p) = phase {
                    c.phases[index(p)] += 1;
                }
                if let Some(counters) = &entry.counters {
                    let now = Traffic::of(counters, t.inbound);
                    c.traffic.add_growth(&t.traffic, &now);
                    t.traffic = t.traffic.max(&now);
                }
                label
            }
            None => {
                let inbound = Remote::of(entry, local).inbound;
                let label = self.label_for(entry, local, true);
                let traffic = entry.counters.map(|c| Traffic::of(&c, inbound)).unwrap_or_default();
                let c = self.labels.entry(label).or_default();
                c.entries += 1;
                if let Some(p) = phase {
                    c.phases[index(p)] += 1;
                }
                c.traffic.add_growth(&Traffic::default(), &traffic);
                *self.by_protocol.entry(entry.orig.proto).or_insert(0) += 1;
                let tracked = Tracked { label, phase, proto: entry.orig.proto, generation, inbound, traffic };
                self.entries.insert(entry.id, tracked);
                label
            }
        }
    }

    /// The label a new entry gets (`fold`: count it if it lands in `other`).
    fn label_for(&mut self, entry: &Entry, local: &Locality, fold: bool) -> Label {
        let label = Label::Host(Remote::of(entry, local));
        if self.labels.contains_key(&label)
            || self.labels.len() < self.max_remote_hosts + self.labels.contains_key(&Label::Other) as usize
        {
            label
        } else {
            if fold {
                self.folded += 1;
            }
            Label::Other
        }
    }

    fn forget(&mut self, old: &Tracked, closed: bool) {
        if let Some(c) = self.labels.get_mut(&old.label) {
            c.entries -= 1;
            if let Some(p) = old.phase {
                c.phases[index(p)] -= 1;
            }
            if closed && old.proto == IPPROTO_TCP {
                c.recently_closed += 1;
            }
        }
        if let Some(n) = self.by_protocol.get_mut(&old.proto) {
            *n -= 1;
            if *n == 0 {
                self.by_protocol.remove(&old.proto);
            }
        }
    }

    /// Starts a resync: the dump that follows says what exists.
    pub fn begin_resync(&mut self) {
        self.generation += 1;
        self.resyncing = true;
        self.destroyed_during_resync.clear();
    }

    /// Ends a resync: entries neither the dump nor an event mentioned since
    /// [`begin_resync`](Self::begin_resync) are gone (shown as closed once). Returns how many.
    pub fn end_resync(&mut self) -> usize {
        let generation = self.generation;
        let stale: Vec<u32> =
            self.entries.iter().filter(|(_, t)| t.generation < generation).map(|(id, _)| *id).collect();
        for id in &stale {
            if let Some(old) = self.entries.remove(id) {
                self.forget(&old, true);
            }
        }
        self.resyncing = false;
        self.destroyed_during_resync.clear();
        stale.len()
    }

    /// The counts of every label, for a scrape; then the recently closed are cleared (they
    /// have been seen) and labels with nothing left are freed.
    pub fn scrape(&mut self) -> Vec<(Label, Counts)> {
        let mut out: Vec<(Label, Counts)> = self.labels.iter().map(|(l, c)| (*l, *c)).collect();
        out.sort_by_key(|(label, _)| *label);
        for c in self.labels.values_mut() {
            c.recently_closed = 0;
        }
        self.labels.retain(|_, c| !c.is_empty());
        out
    }

    /// The counts of every label as a scrape would show them, without marking anything seen
    /// (for status pages; `/metrics` uses [`scrape`](Self::scrape)).
    pub fn snapshot(&self) -> Vec<(Label, Counts)> {
        let mut out: Vec<(Label, Counts)> = self.labels.iter().map(|(l, c)| (*l, *c)).collect();
        out.sort_by_key(|(label, _)| *label);
        out
    }

    /// Count of `phase` for `label` now, plus recently closed for [`Phase::Closed`] (what a
    /// scrape would show).
    pub fn count(&self, label: &Label, phase: Phase) -> u64 {
        self.labels
            .get(label)
            .map_or(0, |c| c.phases[index(phase)] + if phase == Phase::Closed { c.recently_closed } else { 0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctnetlink::{TcpState, Tuple, IPPROTO_UDP};
    use std::net::IpAddr;

    fn e(id: u32, src: &str, sport: u16, dst: &str, dport: u16, state: Option<TcpState>) -> Entry {
        let (s, d): (IpAddr, IpAddr) = (src.parse().unwrap(), dst.parse().unwrap());
        Entry {
            id,
            family: 2,
            orig: Tuple {
                src: s,
                dst: d,
                proto: if state.is_some() { IPPROTO_TCP } else { IPPROTO_UDP },
                sport,
                dport,
            },
            reply: None,
            tcp_state: state,
            status: 0,
            timeout: None,
            mark: None,
            zone: None,
            counters: None,
        }
    }

    fn host(s: &str) -> Label {
        let (ip, port) = s.rsplit_once(':').unwrap();
        Label::Host(Remote { ip: ip.parse().unwrap(), port: port.parse().unwrap(), inbound: false, zone: 0 })
    }

    #[test]
    fn a_connection_moves_through_the_states_and_stays_closed_for_one_scrape() {
        let local = Locality::default();
        let mut t = Table::new(100);
        let db = host("10.0.0.9:5432");
        t.apply(EventType::New, &e(1, "10.0.0.1", 40000, "10.0.0.9", 5432, Some(TcpState::SynSent)), &local, false);
        assert_eq!(t.count(&db, Phase::Opening), 1);
        t.apply(
            EventType::Update,
            &e(1, "10.0.0.1", 40000, "10.0.0.9", 5432, Some(TcpState::Established)),
            &local,
            false,
        );
        assert_eq!((t.count(&db, Phase::Opening), t.count(&db, Phase::Open)), (0, 1));
        t.apply(EventType::Update, &e(1, "10.0.0.1", 40000, "10.0.0.9", 5432, Some(TcpState::TimeWait)), &local, false);
        assert_eq!(t.count(&db, Phase::Closing), 1);
        t.apply(EventType::Destroy, &e(1, "10.0.0.1", 40000, "10.0.0.9", 5432, None), &local, false);
        assert_eq!((t.count(&db, Phase::Closing), t.count(&db, Phase::Closed)), (0, 1));
        let first = t.scrape();
        assert_eq!(
            first,
            vec![(db, Counts { phases: [0, 0, 0, 0], recently_closed: 1, entries: 0, ..Default::default() })]
        );
        assert!(t.scrape().is_empty(), "shown once, then freed");
        assert!(t.is_empty());
    }

    #[test]
    fn remotes_past_the_bound_fold_into_other() {
        let local = Locality::default();
        let mut t = Table::new(2);
        for i in 0..5u32 {
            t.apply(
                EventType::New,
                &e(i, "10.0.0.1", 1000, &format!("10.0.1.{i}"), 80, Some(TcpState::Established)),
                &local,
                false,
            );
        }
        // A second connection to a remote already labelled keeps its label.
        t.apply(EventType::New, &e(9, "10.0.0.1", 1001, "10.0.1.0", 80, Some(TcpState::Established)), &local, false);
        assert_eq!(t.count(&host("10.0.1.0:80"), Phase::Open), 2);
        assert_eq!(t.count(&Label::Other, Phase::Open), 3);
        assert_eq!(t.folded(), 3);
        assert_eq!(t.scrape().len(), 3);
    }

    #[test]
    fn resync_drops_what_the_dump_lacks_and_keeps_what_died_during_it() {
        let local = Locality::default();
        let mut t = Table::new(100);
        let a = e(1, "10.0.0.1", 1, "10.0.0.2", 80, Some(TcpState::Established));
        let b = e(2, "10.0.0.1", 2, "10.0.0.2", 80, Some(TcpState::Established));
        let c = e(3, "10.0.0.1", 3, "10.0.0.2", 80, Some(TcpState::Established));
        for x in [&a, &b, &c] {
            t.apply(EventType::New, x, &local, false);
        }
        t.begin_resync();
        // Event during the dump: c destroyed; the dump's older copy of c must not revive it.
        t.apply(EventType::Destroy, &c, &local, false);
        t.apply(EventType::Update, &a, &local, true);
        t.apply(EventType::Update, &c, &local, true);
        let u = e(4, "10.0.0.1", 4, "10.0.0.2", 80, None);
        t.apply(EventType::Update, &u, &local, true);
        assert_eq!(t.end_resync(), 1); // b: gone while events were lost
        assert_eq!(t.len(), 2);
        let label = host("10.0.0.2:80");
        assert_eq!(t.count(&label, Phase::Open), 1);
        assert_eq!(t.count(&label, Phase::Closed), 2);
        assert_eq!(t.by_protocol().get(&IPPROTO_UDP), Some(&1));
    }

    #[test]
    fn traffic_adds_up_per_remote_each_way_and_never_goes_back() {
        use crate::ctnetlink::Counters;
        let local = Locality::new(["10.0.0.1".parse().unwrap()], [(IPPROTO_TCP, 22)]);
        let mut t = Table::new(100);
        let with = |mut entry: Entry, ob, rb| {
            entry.counters = Some(Counters { orig_packets: 1, orig_bytes: ob, reply_packets: 2, reply_bytes: rb });
            entry
        };
        let out = e(1, "10.0.0.1", 40000, "10.0.0.9", 443, Some(TcpState::Established));
        let inbound = e(2, "10.0.0.7", 50000, "10.0.0.1", 22, Some(TcpState::Established));
        t.apply(EventType::Update, &with(out.clone(), 100, 5000), &local, true);
        t.apply(EventType::Update, &with(inbound.clone(), 700, 90), &local, true);
        t.apply(EventType::Update, &with(out.clone(), 150, 9000), &local, true);
        // A lower reading (never sent by the kernel) does not take the counter back.
        t.apply(EventType::Update, &with(out.clone(), 120, 9000), &local, true);
        let traffic = |t: &Table, l: &Label| t.snapshot().into_iter().find(|(x, _)| x == l).unwrap().1.traffic;
        let web = host("10.0.0.9:443");
        assert_eq!(traffic(&t, &web), Traffic { out_bytes: 150, out_packets: 1, in_bytes: 9000, in_packets: 2 });
        // Inbound: the client's original direction comes in.
        let ssh = Label::Host(Remote { ip: "10.0.0.7".parse().unwrap(), port: 22, inbound: true, zone: 0 });
        assert_eq!(traffic(&t, &ssh), Traffic { out_bytes: 90, out_packets: 2, in_bytes: 700, in_packets: 1 });
        // Its end: the final reading counts, the connection's bytes stay in the total.
        t.apply(EventType::Destroy, &with(out.clone(), 400, 9100), &local, false);
        t.apply(
            EventType::New,
            &with(e(3, "10.0.0.1", 40001, "10.0.0.9", 443, Some(TcpState::SynSent)), 60, 0),
            &local,
            false,
        );
        assert_eq!(traffic(&t, &web).out_bytes, 460);
        assert_eq!(traffic(&t, &web).in_bytes, 9100);
        assert!(t.accounting());
    }

    proptest::proptest! {
        /// Whatever the order of events, the counts equal a recount of the entries held.
        #[test]
        fn counts_always_match_the_entries(ops in proptest::collection::vec((0u32..20, 0u8..10, 0u8..3), 0..300)) {
            let local = Locality::default();
            let mut t = Table::new(3);
            let mut live: HashMap<u32, Option<Phase>> = HashMap::new();
            for (id, state, kind) in ops {
                let s = TcpState::from_u8(state).unwrap_or(TcpState::Established);
                let entry = e(id, "10.0.0.1", id as u16, &format!("10.0.2.{}", id % 7), 80, Some(s));
                let event = match kind { 0 => EventType::New, 1 => EventType::Update, _ => EventType::Destroy };
                t.apply(event, &entry, &local, false);
                if event == EventType::Destroy { live.remove(&id); } else { live.insert(id, s.phase()); }
            }
            proptest::prop_assert_eq!(t.len(), live.len());
            let total: u64 = t.scrape().iter().map(|(_, c)| c.phases.iter().sum::<u64>()).sum();
            proptest::prop_assert_eq!(total, live.values().filter(|p| p.is_some()).count() as u64);
        }
    }
}
