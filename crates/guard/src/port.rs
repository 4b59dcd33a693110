//! One GCRA cell for a whole listening port, shared by its receive threads without a lock.

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

    /// Charges `n` messages at `now_ns`; true when allowed.
    #[inline]
    pub fn check(&self, limit: &Limit, now_ns: u64, n: u64) -> bool {
        if limit.is_unlimited() {
            return true;
        }
        let mut current = self.tat.load(Ordering::Relaxed);
        loop {
            let mut tat = current;
            if !limit.check(&mut tat, now_ns, n) {
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
                std::thread::spawn(move || (0..10_000).filter(|_| port.check(&limit, 5_000_000_000, 1)).count())
            })
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(allowed, 10_000);
    }
}
