//! Distinct counts for StatsD sets: exact up to [`Distinct::EXACT_MAX`] members, then a
//! HyperLogLog (Flajolet et al. 2007) with `2^P` one-byte registers.
//!
//! Members are hashed with xxh3-64 (seed 0) of their UTF-8 bytes, so every process hashes a
//! member the same way and a union is a union of hashes. Register `j` is the top `P` bits of
//! the hash; its value the position of the first 1 bit in the remaining `64 − P` bits
//! (1-based; `65 − P` when they are all 0). The estimate uses linear counting while it is
//! below `2.5 · 2^P` and empty registers remain, else the raw HyperLogLog estimate (no
//! large-range correction is needed with 64-bit hashes).

use std::collections::HashSet;

/// Register index bits.
pub const P: u32 = 16;
/// Registers.
pub const REGISTERS: usize = 1 << P;

/// A set's distinct members, exactly or estimated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Distinct {
    /// Up to [`Distinct::EXACT_MAX`] member hashes.
    Exact(HashSet<u64>),
    /// HyperLogLog registers (`REGISTERS` bytes).
    Registers(Box<[u8]>),
}

impl Default for Distinct {
    fn default() -> Self {
        Distinct::Exact(HashSet::new())
    }
}

impl Distinct {
    /// Past this many members the exact form turns into registers (8 KiB of hashes, against
    /// 64 KiB of registers).
    pub const EXACT_MAX: usize = 1024;

    /// The hash of a member.
    pub fn hash(member: &[u8]) -> u64 {
        xxhash_rust::xxh3::xxh3_64(member)
    }

    /// Adds a member.
    pub fn insert(&mut self, member: &[u8]) {
        self.insert_hash(Self::hash(member));
    }

    /// Adds a member by its hash.
    pub fn insert_hash(&mut self, h: u64) {
        match self {
            Distinct::Exact(set) => {
                set.insert(h);
                if set.len() > Self::EXACT_MAX {
                    let mut regs = vec![0u8; REGISTERS].into_boxed_slice();
                    for h in set.iter() {
                        register(&mut regs, *h);
                    }
                    *self = Distinct::Registers(regs);
                }
            }
            Distinct::Registers(regs) => register(regs, h),
        }
    }

    /// The union with `other`.
    pub fn merge(&mut self, other: &Distinct) {
        match other {
            Distinct::Exact(set) => {
                for h in set {
                    self.insert_hash(*h);
                }
            }
            Distinct::Registers(theirs) => {
                if let Distinct::Exact(set) = self {
                    let mut regs = vec![0u8; REGISTERS].into_boxed_slice();
                    for h in set.iter() {
                        register(&mut regs, *h);
                    }
                    *self = Distinct::Registers(regs);
                }
                if let Distinct::Registers(mine) = self {
                    for (m, t) in mine.iter_mut().zip(theirs.iter()) {
                        *m = (*m).max(*t);
                    }
                }
            }
        }
    }

    /// Distinct members: exact, or the HyperLogLog estimate (rounded).
    pub fn count(&self) -> u64 {
        match self {
            Distinct::Exact(set) => set.len() as u64,
            Distinct::Registers(regs) => estimate(regs),
        }
    }

    /// Registers from their bytes; `None` unless there are exactly [`REGISTERS`] of them, each
    /// a possible value.
    pub fn from_registers(bytes: &[u8]) -> Option<Distinct> {
        (bytes.len() == REGISTERS && bytes.iter().all(|r| u32::from(*r) <= 65 - P))
            .then(|| Distinct::Registers(bytes.to_vec().into_boxed_slice()))
    }
}

fn register(regs: &mut [u8], h: u64) {
    let j = (h >> (64 - P)) as usize;
    let rest = h << P;
    let rank = if rest == 0 { 65 - P } else { rest.leading_zeros() + 1 };
    regs[j] = regs[j].max(rank as u8);
}

fn estimate(regs: &[u8]) -> u64 {
    let m = regs.len() as f64;
    let zeros = regs.iter().filter(|r| **r == 0).count();
    let sum: f64 = regs.iter().map(|r| 2f64.powi(-i32::from(*r))).sum();
    let alpha = 0.7213 / (1.0 + 1.079 / m);
    let raw = alpha * m * m / sum;
    let e = if raw <= 2.5 * m && zeros > 0 { m * (m / zeros as f64).ln() } else { raw };
    e.round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_until_the_threshold() {
        let mut d = Distinct::default();
        for i in 0..1000 {
            d.insert(format!("user{}", i % 700).as_bytes());
        }
        assert_eq!(d.count(), 700);
        assert!(matches!(d, Distinct::Exact(_)));
    }

    #[test]
    fn estimates_within_two_percent_and_merges_as_a_union() {
        for n in [2_000u64, 50_000, 1_000_000] {
            // Three parts that overlap: the union has n members.
            let mut parts = vec![Distinct::default(), Distinct::default(), Distinct::default()];
            for i in 0..n {
                parts[(i % 3) as usize].insert(format!("member-{i}").as_bytes());
                if i % 5 == 0 {
                    parts[((i + 1) % 3) as usize].insert(format!("member-{i}").as_bytes());
                }
            }
            let mut union = Distinct::default();
            for p in &parts {
                union.merge(p);
            }
            let est = union.count() as f64;
            assert!((est - n as f64).abs() / n as f64 <= 0.02, "{n}: {est}");
        }
    }

    #[test]
    fn registers_round_trip_and_bad_bytes_are_refused() {
        let mut d = Distinct::default();
        for i in 0..5000 {
            d.insert(&u32::to_le_bytes(i));
        }
        let Distinct::Registers(regs) = &d else { panic!("still exact") };
        assert_eq!(Distinct::from_registers(regs), Some(d.clone()));
        assert!(Distinct::from_registers(&regs[1..]).is_none());
        let mut bad = regs.to_vec();
        bad[7] = 200;
        assert!(Distinct::from_registers(&bad).is_none());
    }
}
