//! One GCRA cell for a whole listening port, shared by its receive threads without a lock.
//!
//! Priority: sources the guard has tracked for a while ("established") may fill the whole
//! burst; newcomers only half of it. Under a flood of spoofed addresses, each new to the table,
//! the newcomers keep the cell half full and are refused beyond that, while established
//! sources still find room — the total stays within the port's rate either way.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::gcra::Limit;

/// The per-port limit: one budget for every source together.
#[derive(Debug, Default)]
pub struct PortLimiter {
    tat: AtomicU64,
}

impl PortLimiter {
    /// A fresh limiter (full bucket).
    pub fn new() -> PortLimiter {
        PortLimiter::default()
    }

    /// Starts the cell as a port busy with newcomers leaves it (half its burst taken), not
    /// full: a cell taking over from another budget (a shared port falling back to its
    /// share) gives no fresh burst on top of what the other already let through.
    pub fn start_busy(&self, limit: &Limit, now_ns: u64) {
        self.tat.store(now_ns + limit.tolerance_ns() / 2, Ordering::Relaxed);
    }

    /// Charges `n` messages at `now_ns`; true when allowed. `established` sources may use the
    /// whole burst, others half of it.
    #[inline]
    pub fn check(&self, limit: &Limit, now_ns: u64, n: u64, established: bool) -> bool {
        if limit.is_unlimited() {
            return true;
        }
        let tolerance = if established { limit.tolerance_ns() } else { limit.tolerance_ns() / 2 };
        let mut current = self.tat.load(Ordering::Relaxed);
        loop {
            let mut tat = current;
            if !limit.check_within(&mut tat, now_ns, n, tolerance) {
                return false;
            }
            match self.tat.compare_exchange_weak(current, tat, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(seen) => current = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn threads_share_one_budget() {
        let limit = Limit::new(10_000, 1_000_000_000);
        let port = Arc::new(PortLimiter::new());
        let allowed: usize = (0..4)
            .map(|_| {
                let port = port.clone();
                std::thread::spawn(move || (0..10_000).filter(|_| port.check(&limit, 5_000_000_000, 1, true)).count())
            })
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(allowed, 10_000);
    }

    #[test]
    fn newcomers_leave_room_for_established_sources() {
        const SEC: u64 = 1_000_000_000;
        let limit = Limit::new(1000, SEC);
        let port = PortLimiter::new();
        // A flood of newcomers takes half the burst, then the rate; established traffic at a
        // tenth of the rate is always served, and the total never passes rate + burst.
        let mut served = 0;
        let mut total = 0;
        for ms in 0..10_000u64 {
            let now = 100 * SEC + ms * 1_000_000;
            for _ in 0..50 {
                total += port.check(&limit, now, 1, false) as u64;
            }
            if ms % 10 == 0 {
                let ok = port.check(&limit, now, 1, true);
                served += ok as u64;
                total += ok as u64;
            }
        }
        assert_eq!(served, 1000, "every established message served");
        assert!(total <= 1000 * 10 + 1000, "{total}");
    }
}
