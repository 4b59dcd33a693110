//! The heaviest keys of a stream in a fixed amount of memory: which metric names make the most
//! series, which senders make the most new ones.
//!
//! Filtered Space-Saving (the `topk` crate) keeps `k` counters. A key it keeps is counted
//! from when it came in; a key that came back after being let go starts at the count of the
//! one it replaced, which is its `error`: the true count is within `[count − error, count]`.
//! Any key heavier than `total / k` is always among them. Keys are held as 64-bit hashes;
//! the text of each kept key is kept beside it, cut at [`MAX_KEY`] bytes.

use std::collections::HashMap;

use topk::FilteredSpaceSaving;

/// Longest key text kept, in bytes.
pub const MAX_KEY: usize = 200;

/// Estimated bytes one counter costs (the counter, its hash, the filter's buckets, the map
/// slot, the key text at its longest): what [`TopK::bytes`] charges.
const PER_COUNTER: usize = 160 + MAX_KEY;

/// A heavy key: its text, its count and how much of it may be another key's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heavy {
    /// The key (cut at [`MAX_KEY`] bytes).
    pub key: String,
    /// Its count, at most `error` more than the truth.
    pub count: u64,
    /// Counted before this key was kept (another key's).
    pub error: u64,
}

/// The `k` heaviest keys.
pub struct TopK {
    counts: FilteredSpaceSaving<u64>,
    /// Keyed by the keys' hashes already: hashed again by nothing.
    keys: HashMap<u64, Box<str>, nohash_hasher::BuildNoHashHasher<u64>>,
}

impl std::fmt::Debug for TopK {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopK").field("k", &self.counts.k()).field("total", &self.counts.count()).finish()
    }
}

impl TopK {
    /// Room for `k` keys (at least 1).
    pub fn new(k: usize) -> TopK {
        let k = k.max(1);
        TopK {
            counts: FilteredSpaceSaving::new(k),
            keys: HashMap::with_capacity_and_hasher(2 * k, nohash_hasher::BuildNoHashHasher::default()),
        }
    }

    /// Counts `key` `weight` times.
    pub fn add(&mut self, key: &str, weight: u64) {
        let hash = xxhash_rust::xxh3::xxh3_64(key.as_bytes());
        self.counts.insert(hash, weight);
        if !self.keys.contains_key(&hash) && self.counts.get(&hash).is_some() {
            if self.keys.len() >= 2 * self.counts.k() {
                // Let go of the text of keys no longer kept.
                let kept: std::collections::HashSet<u64> = self.counts.iter().map(|(h, _)| *h).collect();
                self.keys.retain(|h, _| kept.contains(h));
            }
            let end = (0..=key.len().min(MAX_KEY)).rev().find(|i| key.is_char_boundary(*i)).unwrap_or(0);
            self.keys.insert(hash, key[..end].into());
        }
    }

    /// Everything counted, kept or not.
    pub fn total(&self) -> u64 {
        self.counts.count()
    }

    /// The `n` heaviest keys, heaviest first.
    pub fn top(&self, n: usize) -> Vec<Heavy> {
        let mut all: Vec<Heavy> = self
            .counts
            .iter()
            .map(|(h, c)| Heavy {
                key: self.keys.get(h).map_or_else(String::new, |k| k.to_string()),
                count: c.estimated_count(),
                error: c.associated_error(),
            })
            .collect();
        all.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
        all.truncate(n);
        all
    }

    /// Forgets everything (a new period).
    pub fn clear(&mut self) {
        self.counts.clear();
        self.keys.clear();
    }

    /// The memory it takes: at most `2 × k` counters' worth, whatever it has seen.
    pub fn bytes(&self) -> u64 {
        let held = self.counts.iter().count() + self.keys.len();
        (held.min(2 * self.counts.k()) * PER_COUNTER) as u64
    }

    /// The most [`TopK::bytes`] can be.
    pub fn max_bytes(&self) -> u64 {
        (2 * self.counts.k() * PER_COUNTER) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Zipf-distributed stream (exponent 1.1) over `names` keys: key `i` (from 1) comes
    /// with probability proportional to `1 / i^1.1`, drawn by inverting the CDF.
    fn zipf(names: usize, draws: usize, seed: u64) -> Vec<usize> {
        let weights: Vec<f64> = (1..=names).map(|i| 1.0 / (i as f64).powf(1.1)).collect();
        let total: f64 = weights.iter().sum();
        let mut cdf = Vec::with_capacity(names);
        let mut acc = 0.0;
        for w in &weights {
            acc += w / total;
            cdf.push(acc);
        }
        let mut state = seed;
        (0..draws)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let u = (state >> 11) as f64 / (1u64 << 53) as f64;
                cdf.partition_point(|c| *c < u).min(names - 1)
            })
            .collect()
    }

    #[test]
    fn the_top_keys_of_a_skewed_stream_match_exact_counts() {
        let draws = zipf(100_000, 1_000_000, 7);
        let mut exact: HashMap<usize, u64> = HashMap::new();
        let mut top = TopK::new(200);
        for d in &draws {
            *exact.entry(*d).or_default() += 1;
            top.add(&format!("api.route{d}.requests"), 1);
        }
        let mut truth: Vec<(usize, u64)> = exact.into_iter().collect();
        truth.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let got = top.top(20);
        for (i, (name, count)) in truth.iter().take(20).enumerate() {
            let key = format!("api.route{name}.requests");
            let h = got.iter().find(|h| h.key == key).unwrap_or_else(|| panic!("#{i} {key} ({count}) missing"));
            assert!(h.count >= *count && h.count - h.error <= *count, "{key}: {h:?} vs exact {count}");
        }
        assert_eq!(top.total(), 1_000_000);
    }

    #[test]
    fn memory_stays_fixed_as_names_grow_a_hundredfold() {
        let mut small = TopK::new(100);
        let mut large = TopK::new(100);
        for (i, d) in zipf(10_000, 200_000, 1).iter().enumerate() {
            small.add(&format!("n{d}"), 1);
            large.add(&format!("n{d}.{i}"), 1); // every key new: 100x the names
        }
        for d in zipf(1_000_000, 1_000_000, 2) {
            large.add(&format!("m{d}"), 1);
        }
        // The same bound for 10,000 names and for 1.2 million, and the larger within it.
        assert_eq!(small.max_bytes(), large.max_bytes());
        assert!(large.bytes() <= large.max_bytes() && small.bytes() <= small.max_bytes());
        assert!(large.keys.len() <= 2 * 100, "{} key texts held", large.keys.len());
    }

    #[test]
    fn long_keys_are_cut_at_a_character_boundary() {
        let mut top = TopK::new(4);
        let key = "é".repeat(150); // 300 bytes
        top.add(&key, 3);
        let h = &top.top(1)[0];
        assert_eq!(h.key.len(), MAX_KEY);
        assert_eq!(h.count, 3);
    }
}
