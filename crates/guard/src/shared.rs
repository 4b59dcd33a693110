//! A listening port's budget shared by several hosts: the local half, with no IO.
//!
//! The port's GCRA cell lives elsewhere (in Redis, kept by the runtime). Each host takes
//! *leases* from it — batches of messages it may admit — a few times a second, sized to what
//! it was asked for lately, and admits from its local store of leased messages with one atomic
//! per datagram. So the per-message cost stays local and the cell sees a few calls per port
//! per second, whatever the traffic.
//!
//! Priority: as on a single host ([`crate::PortLimiter`]), sources the guard has tracked for a
//! while ("established") come first. Newcomers may not take the last of the store: a reserve,
//! sized from what established sources asked for lately, is theirs.
//!
//! When the cell cannot be reached the host *falls back* to a local cell of its share of the
//! rate (the port's rate divided by the hosts that took leases recently), until the cell
//! answers again.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};

use crate::gcra::Limit;
use crate::port::PortLimiter;

/// How the port's budget is decided for one check.
#[derive(Debug, Clone, Copy)]
pub enum Port<'a> {
    /// This host's own cell (`udp_per_port` on one host).
    Local(&'a PortLimiter, &'a Limit),
    /// The fleet's cell, through this host's leases; the limit is the whole fleet's.
    Shared(&'a SharedPort, &'a Limit),
}

impl Port<'_> {
    /// Whether the port has no limit at all.
    #[inline]
    pub fn is_unlimited(&self) -> bool {
        match self {
            Port::Local(_, l) | Port::Shared(_, l) => l.is_unlimited(),
        }
    }

    /// Charges `n` messages at `now_ns`; true when allowed.
    #[inline]
    pub fn check(&self, now_ns: u64, n: u64, established: bool) -> bool {
        match self {
            Port::Local(cell, limit) => cell.check(limit, now_ns, n, established),
            Port::Shared(shared, limit) => shared.check(limit, now_ns, n, established),
        }
    }
}

/// One port's local store of leased messages, and its fallback cell.
///
/// Until its first lease a port is held to the port's whole limit on its own (as one host
/// would be, for the few hundred milliseconds until the cell answers), so a sender is not
/// refused only because this host has just started.
#[derive(Debug)]
pub struct SharedPort {
    /// Leased messages not yet admitted.
    store: AtomicI64,
    /// Messages newcomers must leave in the store (for established sources).
    reserve: AtomicI64,
    /// Messages asked for since the last lease, by newcomers and by established sources.
    asked_new: AtomicU64,
    asked_established: AtomicU64,
    /// True while the shared cell cannot be reached (or has not answered yet).
    fallen_back: AtomicBool,
    /// The rate this host holds itself to while fallen back (messages/s); 0 before the first
    /// answer or fallback: the port's whole limit.
    share: AtomicU64,
    fallback: PortLimiter,
}

impl Default for SharedPort {
    fn default() -> Self {
        SharedPort::new()
    }
}

/// What to ask the shared cell for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRequest {
    /// Messages wanted now (0: only say this host is alive).
    pub want: u64,
    /// Messages asked for since the last lease, all sources.
    pub asked: u64,
}

impl SharedPort {
    /// A port with an empty store, waiting for its first lease.
    pub fn new() -> SharedPort {
        SharedPort {
            store: AtomicI64::new(0),
            reserve: AtomicI64::new(0),
            asked_new: AtomicU64::new(0),
            asked_established: AtomicU64::new(0),
            fallen_back: AtomicBool::new(true),
            share: AtomicU64::new(0),
            fallback: PortLimiter::new(),
        }
    }

    /// Charges `n` messages at `now_ns` against the store (or, fallen back, the local cell of
    /// this host's share, with `limit`'s burst); true when allowed. Not inlined: it is the
    /// fleet's path, kept out of the single host's (see [`crate::SourceTable::admit`]).
    #[inline(never)]
    pub fn check(&self, limit: &Limit, now_ns: u64, n: u64, established: bool) -> bool {
        if limit.is_unlimited() {
            return true;
        }
        if established {
            self.asked_established.fetch_add(n, Relaxed);
        } else {
            self.asked_new.fetch_add(n, Relaxed);
        }
        if self.fallen_back.load(Relaxed) {
            let share = match self.share.load(Relaxed) {
                0 => *limit,
                share => Limit::new(share, limit.tolerance_ns()),
            };
            return self.fallback.check(&share, now_ns, n, established);
        }
        let floor = if established { 0 } else { self.reserve.load(Relaxed) };
        let n = n as i64;
        let mut current = self.store.load(Relaxed);
        loop {
            if current - n < floor {
                return false;
            }
            match self.store.compare_exchange_weak(current, current - n, Relaxed, Relaxed) {
                Ok(_) => return true,
                Err(seen) => current = seen,
            }
        }
    }

    /// What to ask the shared cell for, every `period_ns`, for a port of `limit`: twice what
    /// was asked for since the last call (room to grow), the reserve, and a tenth of a
    /// period's rate (a new sender on a quiet port is not refused while its demand is first
    /// seen), less what is still in the store, and at most two periods of the port's whole
    /// rate. Also sets the reserve: twice what established sources asked for in the last
    /// period, and at least a tenth of a period's rate.
    pub fn lease_request(&self, limit: &Limit, period_ns: u64) -> LeaseRequest {
        let new = self.asked_new.swap(0, Relaxed);
        let established = self.asked_established.swap(0, Relaxed);
        if limit.is_unlimited() {
            return LeaseRequest { want: 0, asked: new + established };
        }
        let per_period = (period_ns / limit.interval_ns()).max(1);
        let reserve = (2 * established).max(per_period / 10).min(per_period);
        self.reserve.store(reserve as i64, Relaxed);
        let target = (2 * (new + established) + reserve + per_period / 10).min(2 * per_period);
        let held = self.store.load(Relaxed).max(0) as u64;
        LeaseRequest { want: target.saturating_sub(held), asked: new + established }
    }

    /// Adds `n` granted messages to the store, and leaves the fallback (the cell answered).
    /// True when this ends a fallback.
    pub fn granted(&self, n: u64) -> bool {
        self.store.fetch_add(n as i64, Relaxed);
        self.fallen_back.swap(false, Relaxed) && self.share.load(Relaxed) != 0
    }

    /// Holds this host to `share` messages/s from `now_ns`, with `limit`'s burst (the cell
    /// cannot be reached). True when this starts a fallback; the local cell then starts half
    /// full, as a busy port's: no fresh burst on top of the leases just used, and what is
    /// left of those is dropped (it was leased for then, not for when the cell answers again).
    pub fn fall_back(&self, share: u64, limit: &Limit, now_ns: u64) -> bool {
        let before = self.share.swap(share.max(1), Relaxed);
        if self.fallen_back.load(Relaxed) && before != 0 {
            return false;
        }
        self.fallback.start_busy(&Limit::new(share.max(1), limit.tolerance_ns()), now_ns);
        // Fallen back first: a check between the two must not find an empty store.
        self.fallen_back.store(true, Relaxed);
        self.store.store(0, Relaxed);
        true
    }

    /// Whether the port is held to its local share now (not before the first answer).
    pub fn is_fallen_back(&self) -> bool {
        self.fallen_back.load(Relaxed) && self.share.load(Relaxed) != 0
    }

    /// The rate held to while fallen back.
    pub fn share(&self) -> u64 {
        self.share.load(Relaxed)
    }

    /// Leased messages not yet used.
    pub fn stored(&self) -> i64 {
        self.store.load(Relaxed)
    }
}

/// The fair part of what the shared cell holds for one caller: a host takes at most
/// `available / hosts` (rounded up) per call, so hosts that call at the same rate get the same
/// share under a flood, and a host alone still gets the whole rate (the cell fills until a
/// `hosts`-th of it is a period's worth). `hosts` is bounded by `max_divisor` so the cell's
/// burst can hold that fill. The Lua script that keeps the cell does the same arithmetic; this
/// is its reference, tested here.
pub fn fair_grant(want: u64, available: u64, hosts: u64, max_divisor: u64) -> u64 {
    let divisor = hosts.min(max_divisor).max(1);
    want.min(available.div_ceil(divisor))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;
    const PERIOD: u64 = SEC / 5;

    /// A simulated cell: GCRA in microseconds as the script keeps it.
    struct Cell {
        tat_us: f64,
        t_us: f64,
        tau_us: f64,
    }

    impl Cell {
        fn take(&mut self, now_us: f64, want: u64, hosts: u64) -> u64 {
            let tat = self.tat_us.max(now_us);
            let available = ((now_us + self.tau_us - tat) / self.t_us).floor().max(0.0) as u64;
            let grant = fair_grant(want, available, hosts, (self.tau_us / (PERIOD as f64 / 1e3)) as u64);
            self.tat_us = tat + grant as f64 * self.t_us;
            grant
        }
    }

    /// Three hosts, each flooded at 3× the port's rate by newcomers and each with one
    /// established sender at 200/s, lease every 200 ms from one cell of 10,000/s at phases
    /// spread over the period: the fleet admits 10,000/s (±2 %), every established message
    /// gets through, and no host gets less than a quarter.
    #[test]
    fn three_hosts_share_one_rate_and_established_senders_lose_nothing() {
        let limit = Limit::new(10_000, SEC);
        let mut cell = Cell { tat_us: 0.0, t_us: 100.0, tau_us: 1e6 };
        let hosts: Vec<SharedPort> = (0..3).map(|_| SharedPort::new()).collect();
        let (mut admitted, mut legit_refused) = ([0u64; 3], 0);
        let seconds = 20;
        let ms_total = seconds * 1000;
        for ms in 0..ms_total {
            let now = 10 * SEC + ms * 1_000_000;
            for (h, port) in hosts.iter().enumerate() {
                // Leases at phases 0, 67 and 133 ms into each 200 ms.
                if (ms + h as u64 * 67).is_multiple_of(200) {
                    let r = port.lease_request(&limit, PERIOD);
                    port.granted(cell.take(now as f64 / 1e3, r.want, 3));
                }
                for _ in 0..30 {
                    admitted[h] += port.check(&limit, now, 1, false) as u64;
                }
                if ms % 5 == 0 {
                    let ok = port.check(&limit, now, 1, true);
                    admitted[h] += ok as u64;
                    legit_refused += !ok as u64;
                }
            }
        }
        // The first second's start-up (empty stores) aside, the cell's burst included.
        let total: u64 = admitted.iter().sum();
        let expected = 10_000.0 * seconds as f64 + 10_000.0;
        assert!((total as f64 - expected).abs() / expected < 0.02, "{admitted:?} vs {expected}");
        assert!(admitted.iter().all(|a| *a as f64 > total as f64 / 4.0), "{admitted:?}");
        assert_eq!(legit_refused, 0, "established messages refused");
    }

    /// One host alone on the port gets the whole rate.
    #[test]
    fn a_host_alone_gets_the_whole_rate() {
        let limit = Limit::new(10_000, SEC);
        let mut cell = Cell { tat_us: 0.0, t_us: 100.0, tau_us: 1e6 };
        let port = SharedPort::new();
        port.granted(0);
        let mut admitted = 0u64;
        for ms in 0..20_000u64 {
            let now = 10 * SEC + ms * 1_000_000;
            if ms % 200 == 0 {
                let r = port.lease_request(&limit, PERIOD);
                port.granted(cell.take(now as f64 / 1e3, r.want, 3));
            }
            for _ in 0..30 {
                admitted += port.check(&limit, now, 1, false) as u64;
            }
        }
        let rate = admitted as f64 / 20.0;
        assert!(rate > 9_500.0 && rate < 10_600.0, "{rate}/s, with 3 hosts seen but only one asking");
    }

    #[test]
    fn fallen_back_holds_the_share_and_recovers() {
        let limit = Limit::new(7_500, SEC);
        let port = SharedPort::new();
        let now = 10 * SEC;
        assert!(port.fall_back(2_500, &limit, now));
        assert!(!port.fall_back(2_500, &limit, now), "already");
        let admitted = (0..100_000).filter(|_| port.check(&limit, now, 1, false)).count();
        assert_eq!(admitted, 0, "no fresh burst for newcomers");
        let admitted = (0..100_000).filter(|_| port.check(&limit, now, 1, true)).count();
        assert_eq!(admitted, 1_250, "established sources: the half a busy port leaves");
        let now = now + SEC;
        let admitted = (0..100_000).filter(|_| port.check(&limit, now, 1, true)).count();
        assert_eq!(admitted, 2_500, "then the share's rate");
        assert!(port.granted(10));
        assert!(!port.is_fallen_back());
        assert_eq!(port.stored(), 10, "what was leased before the fallback is gone");
        assert_eq!((0..100).filter(|_| port.check(&limit, now, 1, true)).count(), 10);
    }

    #[test]
    fn newcomers_leave_the_reserve() {
        let limit = Limit::new(10_000, SEC);
        let port = SharedPort::new();
        port.granted(0);
        // 100 asked by established sources in the last period: a reserve of 200.
        for _ in 0..100 {
            port.check(&limit, SEC, 1, true);
        }
        let r = port.lease_request(&limit, PERIOD);
        assert_eq!(r.asked, 100);
        assert_eq!(r.want, 200 + 200 + 200);
        port.granted(1000);
        let newcomers = (0..2000).filter(|_| port.check(&limit, SEC, 1, false)).count();
        assert_eq!(newcomers, 800);
        let established = (0..2000).filter(|_| port.check(&limit, SEC, 1, true)).count();
        assert_eq!(established, 200);
    }

    /// Before the cell's first answer a port is held to the whole limit, locally; the first
    /// answer is not logged as a recovery, and a first failure is a fallback like any.
    #[test]
    fn before_the_first_answer() {
        let limit = Limit::new(1_000, SEC);
        let port = SharedPort::new();
        assert!(!port.is_fallen_back());
        assert_eq!((0..5000).filter(|_| port.check(&limit, SEC, 1, true)).count(), 1_000);
        assert!(!port.granted(0), "a first lease is no recovery");
        let port = SharedPort::new();
        assert!(port.fall_back(250, &limit, SEC), "Redis down from the start");
        assert!(port.is_fallen_back());
    }

    #[test]
    fn fair_grants() {
        assert_eq!(fair_grant(1000, 3000, 3, 2), 1000);
        assert_eq!(fair_grant(5000, 3000, 3, 10), 1000);
        assert_eq!(fair_grant(5000, 3000, 0, 10), 3000);
        assert_eq!(fair_grant(5000, 1, 3, 10), 1);
    }
}
