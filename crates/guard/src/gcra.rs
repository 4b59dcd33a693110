//! GCRA (the generic cell rate algorithm): a token bucket kept as one timestamp.
//!
//! A limit of `rate` messages per second with a burst of `burst` (a duration) lets a source
//! send `rate × burst` messages at once, then `rate` per second. The state is the theoretical
//! arrival time (TAT) of the next message: a request for `n` messages at `now` is allowed when
//! `max(TAT, now) + n × T − now ≤ burst`, with `T = 1 / rate`, and then moves TAT forward.
//! Written here rather than taken from governor because the state must live inside our
//! fixed-capacity table (governor's keyed limiter grows without bound) and be one `u64`.

/// A rate limit: messages per second and the burst allowed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Nanoseconds per message (`T`); 0 = unlimited.
    interval_ns: u64,
    /// Burst tolerance in nanoseconds (`τ`).
    tolerance_ns: u64,
}

impl Limit {
    /// `rate` messages per second (0 = unlimited), `burst_ns` of them at once.
    pub fn new(rate: u64, burst_ns: u64) -> Limit {
        if rate == 0 {
            return Limit { interval_ns: 0, tolerance_ns: 0 };
        }
        // Rounded up: the limit never lets more than `rate` through (rounding down gave, for
        // 99,999/s, 100,000/s).
        let interval_ns = 1_000_000_000u64.div_ceil(rate).max(1);
        // At least one message must always fit, whatever the burst.
        Limit { interval_ns, tolerance_ns: burst_ns.max(interval_ns) }
    }

    /// No limit at all.
    pub const UNLIMITED: Limit = Limit { interval_ns: 0, tolerance_ns: 0 };

    /// True when this limit lets everything through.
    pub fn is_unlimited(&self) -> bool {
        self.interval_ns == 0
    }

    /// Nanoseconds per message (0: unlimited).
    pub fn interval_ns(&self) -> u64 {
        self.interval_ns
    }

    /// The burst tolerance, nanoseconds.
    pub fn tolerance_ns(&self) -> u64 {
        self.tolerance_ns
    }

    /// Messages per second.
    pub fn rate(&self) -> f64 {
        if self.interval_ns == 0 {
            f64::INFINITY
        } else {
            1e9 / self.interval_ns as f64
        }
    }

    /// Decides a request for `n` messages at `now_ns` against the cell `tat` (theoretical
    /// arrival time, ns); updates `tat` when allowed.
    #[inline]
    pub fn check(&self, tat: &mut u64, now_ns: u64, n: u64) -> bool {
        self.check_within(tat, now_ns, n, self.tolerance_ns)
    }

    /// [`check`](Self::check) with a burst tolerance of `tolerance_ns` instead of the limit's
    /// own (the port limiter gives newcomers half of it).
    #[inline]
    pub fn check_within(&self, tat: &mut u64, now_ns: u64, n: u64, tolerance_ns: u64) -> bool {
        if self.interval_ns == 0 {
            return true;
        }
        let start = (*tat).max(now_ns);
        let new_tat = start.saturating_add(n.saturating_mul(self.interval_ns));
        if new_tat - now_ns <= tolerance_ns.max(self.interval_ns) {
            *tat = new_tat;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn burst_then_rate() {
        let l = Limit::new(100, SEC);
        let mut tat = 0;
        let now = 10 * SEC;
        let allowed = (0..1000).filter(|_| l.check(&mut tat, now, 1)).count();
        assert_eq!(allowed, 100, "a one-second burst of a 100/s limit");
        // 0.5 s later, 50 more.
        let allowed = (0..1000).filter(|_| l.check(&mut tat, now + SEC / 2, 1)).count();
        assert_eq!(allowed, 50);
    }

    #[test]
    fn batches_count_every_message() {
        let l = Limit::new(100, SEC);
        let mut tat = 0;
        assert!(l.check(&mut tat, SEC, 60));
        assert!(!l.check(&mut tat, SEC, 60), "120 > 100");
        assert!(l.check(&mut tat, SEC, 40));
    }

    #[test]
    fn never_over_a_rate_that_does_not_divide_a_second() {
        // 99,999/s: an interval rounded down would let 100,000 a second through.
        let l = Limit::new(99_999, 0);
        let mut tat = 0;
        let allowed = (0..10_000_000u64).filter(|us| l.check(&mut tat, SEC + us * 1000, 1)).count();
        assert!(allowed <= 999_990 + 1, "{allowed} in 10 s");
    }

    #[test]
    fn unlimited_and_tiny_bursts() {
        let mut tat = 0;
        assert!((0..10_000).all(|_| Limit::UNLIMITED.check(&mut tat, 5, 1)));
        let l = Limit::new(10, 0);
        assert!(l.check(&mut tat, SEC, 1), "one message always fits");
        assert!(!l.check(&mut tat, SEC, 1));
    }

    proptest::proptest! {
        /// A sender keeping to the rate is never refused, whatever the burst.
        #[test]
        fn a_sender_within_the_rate_is_never_refused(rate in 1u64..100_000, burst_ms in 0u64..3000, n in 1usize..500) {
            let l = Limit::new(rate, burst_ms * 1_000_000);
            let mut tat = 0;
            let every = 1_000_000_000u64.div_ceil(rate);
            for i in 0..n as u64 {
                proptest::prop_assert!(l.check(&mut tat, SEC + i * every, 1), "message {} refused", i);
            }
        }

        /// Over any window, what is allowed never exceeds rate × window + burst.
        #[test]
        fn never_more_than_rate_plus_burst(rate in 1u64..100_000, burst_ms in 0u64..3000, gaps in proptest::collection::vec(0u64..5_000_000, 1..2000)) {
            let l = Limit::new(rate, burst_ms * 1_000_000);
            let mut tat = 0;
            let mut now = SEC;
            let start = now;
            let mut allowed = 0u64;
            for g in gaps {
                now += g;
                if l.check(&mut tat, now, 1) {
                    allowed += 1;
                }
            }
            // The bound from the configuration, not from the `Limit` under test: a bug in
            // `Limit::new` must not move it.
            let window = (now - start) as f64 / 1e9;
            let burst = (rate as f64 * burst_ms as f64 / 1000.0).max(1.0);
            let bound = rate as f64 * window + burst + 1.0;
            proptest::prop_assert!(allowed as f64 <= bound, "{} > {}", allowed, bound);
        }
    }
}
