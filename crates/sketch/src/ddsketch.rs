//! DDSketch (Masson, Rim, Lee, VLDB 2019) with a logarithmic mapping and dense stores.
//!
//! A positive value `x` goes to bin `i = ceil(ln(x) / ln(γ))` with `γ = (1 + α) / (1 − α)`;
//! bin `i` stands for `2γ^i / (γ + 1)`, which is within `α` of every value in it. Negative
//! values go to a mirrored store by `|x|`; values closer to zero than [`MIN_INDEXABLE`] are
//! counted as zeros. Each store is a run of counts starting at an offset. Stores are bounded
//! ([`MAX_BINS`]): past it the lowest bins collapse into one (the accuracy of the lowest
//! quantiles is what gives, as in the paper); with α = 1 % that needs values spanning more
//! than 10^35, so timers never see it.

/// Values with a smaller magnitude count as zero.
pub const MIN_INDEXABLE: f64 = 1e-9;

/// Most bins one store holds.
pub const MAX_BINS: usize = 4096;

/// A run of bin counts: bin `offset + k` holds `counts[k]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Store {
    /// Index of the first bin.
    pub offset: i32,
    /// Counts of consecutive bins.
    pub counts: Vec<u64>,
}

impl Store {
    fn add(&mut self, index: i32, n: u64) {
        if self.counts.is_empty() {
            self.offset = index;
            self.counts.push(0);
        }
        let (offset, top) = (i64::from(self.offset), i64::from(self.offset) + self.counts.len() as i64 - 1);
        let mut at = i64::from(index);
        if at > top {
            // Growing up: if the span would pass MAX_BINS the lowest bins fold together.
            let low = (at - MAX_BINS as i64 + 1).max(offset);
            self.fold_below(low);
            self.counts.resize((at - i64::from(self.offset) + 1) as usize, 0);
        } else if at < offset {
            // Growing down, at most to MAX_BINS; what is lower lands in the lowest bin kept.
            at = at.max(top - MAX_BINS as i64 + 1);
            let by = (offset - at) as usize;
            let mut grown = vec![0; by];
            grown.extend_from_slice(&self.counts);
            self.counts = grown;
            self.offset = at as i32;
        }
        let k = (at - i64::from(self.offset)) as usize;
        self.counts[k] = self.counts[k].saturating_add(n);
    }

    /// Folds every bin below `low` into bin `low`, which becomes the first.
    fn fold_below(&mut self, low: i64) {
        let k = low - i64::from(self.offset);
        if k <= 0 {
            return;
        }
        let k = k as usize;
        if k >= self.counts.len() {
            let total = self.counts.iter().fold(0u64, |a, c| a.saturating_add(*c));
            self.counts = vec![total];
        } else {
            let folded = self.counts[..=k].iter().fold(0u64, |a, c| a.saturating_add(*c));
            self.counts.drain(..k);
            self.counts[0] = folded;
        }
        self.offset = low as i32;
    }

    fn merge(&mut self, other: &Store) {
        for (k, &c) in other.counts.iter().enumerate() {
            if c > 0 {
                self.add(other.offset + k as i32, c);
            }
        }
    }

    fn total(&self) -> u64 {
        self.counts.iter().fold(0, |a, c| a.saturating_add(*c))
    }
}

/// A quantile sketch of relative accuracy 1 %.
#[derive(Debug, Clone, PartialEq)]
pub struct DDSketch {
    /// Bins of positive values.
    pub positive: Store,
    /// Bins of negative values, by magnitude.
    pub negative: Store,
    /// Values within [`MIN_INDEXABLE`] of zero.
    pub zeros: u64,
}

impl Default for DDSketch {
    fn default() -> Self {
        DDSketch::new()
    }
}

impl DDSketch {
    /// α: every quantile answered is within this fraction of the true value at that rank.
    pub const RELATIVE_ACCURACY: f64 = 0.01;

    /// γ = (1 + α) / (1 − α), the ratio between consecutive bin bounds.
    pub const GAMMA: f64 = (1.0 + Self::RELATIVE_ACCURACY) / (1.0 - Self::RELATIVE_ACCURACY);

    /// An empty sketch.
    pub fn new() -> DDSketch {
        DDSketch { positive: Store::default(), negative: Store::default(), zeros: 0 }
    }

    fn index(magnitude: f64) -> i32 {
        (magnitude.ln() / Self::GAMMA.ln()).ceil() as i32
    }

    /// The value bin `index` stands for.
    pub fn bin_value(index: i32) -> f64 {
        2.0 * Self::GAMMA.powi(index) / (Self::GAMMA + 1.0)
    }

    /// Adds one value (NaN and infinities are ignored: StatsD never produces them).
    pub fn add(&mut self, value: f64) {
        self.add_n(value, 1);
    }

    /// Adds `n` copies of a value.
    pub fn add_n(&mut self, value: f64, n: u64) {
        if !value.is_finite() || n == 0 {
            return;
        }
        if value.abs() < MIN_INDEXABLE {
            self.zeros = self.zeros.saturating_add(n);
        } else if value > 0.0 {
            self.positive.add(Self::index(value), n);
        } else {
            self.negative.add(Self::index(-value), n);
        }
    }

    /// Values added.
    pub fn count(&self) -> u64 {
        self.positive.total().saturating_add(self.negative.total()).saturating_add(self.zeros)
    }

    /// Adds another sketch's values (exact: counts add).
    pub fn merge(&mut self, other: &DDSketch) {
        self.positive.merge(&other.positive);
        self.negative.merge(&other.negative);
        self.zeros = self.zeros.saturating_add(other.zeros);
    }

    /// The value of rank `rank` (0-based, in ascending order), within α of the true one;
    /// `None` when the sketch holds no more than `rank` values.
    pub fn value_at_rank(&self, rank: u64) -> Option<f64> {
        let mut seen = 0u64;
        // Negative values: largest magnitude first.
        for (k, &c) in self.negative.counts.iter().enumerate().rev() {
            seen = seen.saturating_add(c);
            if seen > rank {
                return Some(-Self::bin_value(self.negative.offset + k as i32));
            }
        }
        seen = seen.saturating_add(self.zeros);
        if seen > rank {
            return Some(0.0);
        }
        for (k, &c) in self.positive.counts.iter().enumerate() {
            seen = seen.saturating_add(c);
            if seen > rank {
                return Some(Self::bin_value(self.positive.offset + k as i32));
            }
        }
        None
    }

    /// Every bin as (representative value, count), ascending: for sums and histograms over
    /// the sketch.
    pub fn bins(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        // Empty bins are skipped before their value is computed (a `powi` each).
        let neg = self
            .negative
            .counts
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, &c)| c > 0)
            .map(|(k, &c)| (-Self::bin_value(self.negative.offset + k as i32), c));
        let zero = std::iter::once((0.0, self.zeros));
        let pos = self
            .positive
            .counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(k, &c)| (Self::bin_value(self.positive.offset + k as i32), c));
        neg.chain(zero).chain(pos).filter(|(_, c)| *c > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact_at(sorted: &[f64], rank: usize) -> f64 {
        sorted[rank]
    }

    fn within(estimate: f64, exact: f64) -> bool {
        (estimate - exact).abs() <= DDSketch::RELATIVE_ACCURACY * exact.abs() + 1e-12
    }

    #[test]
    fn every_rank_within_alpha() {
        let mut s = DDSketch::new();
        let mut values: Vec<f64> = (1..=10_000).map(|i| (i as f64).powf(1.7) / 13.0 - 500.0).collect();
        values.push(0.0);
        for v in &values {
            s.add(*v);
        }
        values.sort_by(f64::total_cmp);
        for rank in (0..values.len()).step_by(37) {
            let est = s.value_at_rank(rank as u64).unwrap();
            assert!(within(est, exact_at(&values, rank)), "rank {rank}: {est} vs {}", values[rank]);
        }
        assert_eq!(s.count(), values.len() as u64);
        assert!(s.value_at_rank(values.len() as u64).is_none());
    }

    #[test]
    fn far_apart_bins_collapse_instead_of_allocating() {
        let mut s = DDSketch::new();
        s.merge(&DDSketch {
            positive: Store { offset: -2_000_000_000, counts: vec![1] },
            negative: Store::default(),
            zeros: 0,
        });
        s.merge(&DDSketch { positive: Store { offset: 2_000_000_000, counts: vec![u64::MAX] }, ..DDSketch::new() });
        assert!(s.positive.counts.len() <= MAX_BINS);
        assert_eq!(s.count(), u64::MAX, "counts saturate");
    }

    #[test]
    fn stores_stay_bounded() {
        let mut s = DDSketch::new();
        for e in -300..300 {
            s.add(10f64.powi(e));
        }
        assert!(s.positive.counts.len() <= MAX_BINS);
        assert_eq!(s.count(), 600);
        // The top is still exact to α.
        assert!(within(s.value_at_rank(599).unwrap(), 1e299));
    }

    proptest::proptest! {
        /// Merging sketches of parts answers like one sketch of the whole, and within α.
        #[test]
        fn merge_is_exact(parts in proptest::collection::vec(proptest::collection::vec(-1e6f64..1e6, 0..200), 1..5), q in 0.0f64..1.0) {
            let mut merged = DDSketch::new();
            let mut whole = DDSketch::new();
            let mut all = Vec::new();
            for part in &parts {
                let mut s = DDSketch::new();
                for v in part {
                    s.add(*v);
                    whole.add(*v);
                    all.push(*v);
                }
                merged.merge(&s);
            }
            proptest::prop_assert_eq!(&merged, &whole);
            if !all.is_empty() {
                all.sort_by(f64::total_cmp);
                let rank = ((all.len() - 1) as f64 * q) as usize;
                let est = merged.value_at_rank(rank as u64).unwrap();
                let exact = all[rank];
                proptest::prop_assert!(exact.abs() < MIN_INDEXABLE || within(est, exact), "{} vs {}", est, exact);
            }
        }
    }
}
