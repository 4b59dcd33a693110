//! The memory queue every delivering sink holds its data in while the destination is slow or
//! down: in order, bounded in bytes, with the rules the sinks promise.
//!
//! - **Drop-oldest**: past the bound the oldest entries go (the owner counts them, and may
//!   record it: the agent's journal marks a dropped batch as given up); the newest is always
//!   kept, so a lone entry larger than the bound still goes out.
//! - **Hold-acknowledged**: an entry leaves when the destination has taken it
//!   ([`Bounded::pop_front`] after a write, [`Bounded::pop_acknowledged`] for a protocol that
//!   acknowledges, like the forward hop), not when it is sent.
//! - **Never-drop**: an entry that may not be dropped ([`Entry::droppable`]: an aggregator's
//!   flush that holds agents' batches) stays however full the queue is; the owner sees the
//!   queue [`Bounded::full_of_kept`] and stops taking more upstream instead.

use std::collections::VecDeque;

/// What a queue holds.
pub trait Entry {
    /// Its size against the bound.
    fn bytes(&self) -> u64;
    /// Whether it may be dropped to make room.
    fn droppable(&self) -> bool {
        true
    }
}

/// A queue bounded in bytes.
#[derive(Debug)]
pub struct Bounded<T> {
    entries: VecDeque<T>,
    bytes: u64,
    limit: u64,
}

impl<T: Entry> Bounded<T> {
    /// An empty queue holding at most `limit` bytes (its newest entry aside).
    pub fn new(limit: u64) -> Bounded<T> {
        Bounded { entries: VecDeque::new(), bytes: 0, limit }
    }

    /// Whether `bytes` more fit under the bound.
    pub fn fits(&self, bytes: u64) -> bool {
        self.bytes + bytes <= self.limit
    }

    /// Appends `entry`; past the bound the oldest droppable entries are handed to `dropped`
    /// (never the one just appended), until it fits or none is left to drop.
    pub fn push(&mut self, entry: T, mut dropped: impl FnMut(T)) {
        self.bytes += entry.bytes();
        self.entries.push_back(entry);
        while self.bytes > self.limit && self.entries.len() > 1 {
            let older = self.entries.len() - 1;
            let Some(i) = self.entries.iter().take(older).position(Entry::droppable) else { break };
            if let Some(old) = self.entries.remove(i) {
                self.bytes -= old.bytes();
                dropped(old);
            }
        }
    }

    /// Appends `entry` without dropping anything, past the bound if need be: what an earlier
    /// run held (read back from disk) was taken under its own bound.
    pub fn restore(&mut self, entry: T) {
        self.bytes += entry.bytes();
        self.entries.push_back(entry);
    }

    /// The oldest entry, taken out (it was delivered, or is being written).
    pub fn pop_front(&mut self) -> Option<T> {
        let entry = self.entries.pop_front()?;
        self.bytes -= entry.bytes();
        Some(entry)
    }

    /// Puts back an entry taken out whose write failed: it stays first.
    pub fn push_front(&mut self, entry: T) {
        self.bytes += entry.bytes();
        self.entries.push_front(entry);
    }

    /// Takes out the oldest entries while `acknowledged` says so, handing each to `done`.
    pub fn pop_acknowledged(&mut self, acknowledged: impl Fn(&T) -> bool, mut done: impl FnMut(T)) {
        while self.entries.front().is_some_and(&acknowledged) {
            if let Some(entry) = self.pop_front() {
                done(entry);
            }
        }
    }

    /// Takes out the first entry `which` picks, wherever it is (a batch the destination
    /// refused for good).
    pub fn remove_first(&mut self, which: impl Fn(&T) -> bool) -> Option<(usize, T)> {
        let i = self.entries.iter().position(which)?;
        let entry = self.entries.remove(i)?;
        self.bytes -= entry.bytes();
        Some((i, entry))
    }

    /// Takes every entry out, oldest first.
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.bytes = 0;
        self.entries.drain(..)
    }

    /// At the bound with entries that may not be dropped: the owner takes no more upstream
    /// until it drains.
    pub fn full_of_kept(&self) -> bool {
        self.bytes >= self.limit && self.entries.iter().any(|e| !e.droppable())
    }

    /// The oldest entry.
    pub fn front(&self) -> Option<&T> {
        self.entries.front()
    }

    /// The entries, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.entries.iter()
    }

    /// The entries, oldest first, to change in place (not their size).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.entries.iter_mut()
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The bound.
    pub fn limit(&self) -> u64 {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct E(u64, bool);

    impl Entry for E {
        fn bytes(&self) -> u64 {
            self.0
        }
        fn droppable(&self) -> bool {
            !self.1
        }
    }

    fn sizes(q: &Bounded<E>) -> Vec<u64> {
        q.iter().map(|e| e.0).collect()
    }

    #[test]
    fn past_the_bound_the_oldest_go_and_the_newest_stays() {
        let mut q = Bounded::new(100);
        let mut dropped = Vec::new();
        for size in [40, 41, 42] {
            q.push(E(size, false), |e| dropped.push(e.0));
        }
        assert_eq!((sizes(&q), dropped.clone()), (vec![41, 42], vec![40]));
        q.push(E(500, false), |e| dropped.push(e.0));
        assert_eq!((sizes(&q), q.bytes()), (vec![500], 500), "a lone entry past the bound still goes out");
        assert_eq!(dropped, [40, 41, 42]);
    }

    #[test]
    fn entries_that_may_not_be_dropped_stay_and_the_queue_says_it_is_full() {
        let mut q = Bounded::new(100);
        let mut dropped = Vec::new();
        q.push(E(60, true), |e| dropped.push(e.0));
        q.push(E(30, false), |e| dropped.push(e.0));
        assert!(!q.full_of_kept());
        q.push(E(50, true), |e| dropped.push(e.0));
        assert_eq!((sizes(&q), dropped), (vec![60, 50], vec![30]), "the droppable one went, the kept stayed");
        assert!(q.full_of_kept());
        q.pop_front();
        assert!(!q.full_of_kept());
    }

    #[test]
    fn entries_leave_when_acknowledged_and_a_failed_write_goes_back_first() {
        let mut q = Bounded::new(1000);
        for size in 1..=5 {
            q.push(E(size, false), |_| unreachable!());
        }
        let mut done = Vec::new();
        q.pop_acknowledged(|e| e.0 <= 2, |e| done.push(e.0));
        assert_eq!((done, sizes(&q), q.bytes()), (vec![1, 2], vec![3, 4, 5], 12));
        let first = q.pop_front().unwrap();
        q.push_front(first);
        assert_eq!((sizes(&q), q.bytes()), (vec![3, 4, 5], 12));
        assert_eq!(q.remove_first(|e| e.0 == 4), Some((1, E(4, false))));
        assert_eq!(q.drain().map(|e| e.0).collect::<Vec<_>>(), [3, 5]);
        // Restored from disk: in order, past the bound, nothing dropped.
        let mut q = Bounded::new(10);
        for size in [6, 7, 8] {
            q.restore(E(size, false));
        }
        assert_eq!((sizes(&q), q.bytes()), (vec![6, 7, 8], 21));
        q.drain().for_each(drop);
        assert_eq!((q.len(), q.bytes()), (0, 0));
        assert!(q.fits(10) && !q.fits(11));
    }
}
