//! A [`DDSketch`] in Prometheus' native histogram layout (the "exponential" schemas).
//!
//! At schema `s` bucket `i` holds the values in `(b^(i-1), b^i]` with `b = 2^(2^-s)`
//! (schema -4 to 8: `b` from 65536 down to 1.0027); negative values go to mirrored buckets by
//! magnitude, and a zero bucket holds what is within `zero_threshold` of zero.
//!
//! Each sketch bin's count goes to the bucket holding the bin's representative value, which is
//! within α (1 %) of every value the bin holds. So a quantile Prometheus estimates from the
//! result (somewhere in the bucket holding the true value's representative) is within
//! [`Exponential::relative_error`] = `(1 + α)·b − 1` of the true value: 3.2 % at schema 5,
//! 10.1 % at schema 3 (client_golang's bucket factor 1.1).

use crate::ddsketch::{DDSketch, MIN_INDEXABLE};

/// Lowest and highest schema Prometheus takes.
pub const SCHEMAS: std::ops::RangeInclusive<i32> = -4..=8;

/// A native histogram: schema, zero bucket and the non-empty buckets of each sign.
#[derive(Debug, Clone, PartialEq)]
pub struct Exponential {
    /// The resolution (see the module docs).
    pub schema: i32,
    /// Values with a smaller magnitude are in the zero bucket.
    pub zero_threshold: f64,
    /// Values in the zero bucket.
    pub zero_count: u64,
    /// Positive buckets as (index, count), ascending by index, counts above zero.
    pub positive: Vec<(i32, u64)>,
    /// Negative buckets by magnitude, the same way.
    pub negative: Vec<(i32, u64)>,
}

/// A run of consecutive buckets in Prometheus' sparse encoding: `offset` is the gap from the
/// end of the previous span (from index 0 for the first), `length` the buckets in the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Gap before the run.
    pub offset: i32,
    /// Buckets in the run.
    pub length: u32,
}

impl Exponential {
    /// Every value counted.
    pub fn count(&self) -> u64 {
        let sum = |b: &[(i32, u64)]| b.iter().fold(0u64, |a, (_, c)| a.saturating_add(*c));
        self.zero_count.saturating_add(sum(&self.positive)).saturating_add(sum(&self.negative))
    }

    /// The upper bound of positive bucket `index` at `schema`: `2^(index·2^-schema)`.
    pub fn upper_bound(schema: i32, index: i32) -> f64 {
        (f64::from(index) * 2f64.powi(-schema)).exp2()
    }

    /// How far a quantile estimated from buckets at `schema` may be from the true value, as a
    /// fraction of it.
    pub fn relative_error(schema: i32) -> f64 {
        (1.0 + DDSketch::RELATIVE_ACCURACY) * 2f64.powf(2f64.powi(-schema)) - 1.0
    }

    /// The bucket of a magnitude at `schema`.
    fn index(schema: i32, magnitude: f64) -> i32 {
        (magnitude.log2() * 2f64.powi(schema)).ceil() as i32
    }

    /// Buckets in Prometheus' encoding: spans, and each count as the difference from the one
    /// before (the first from zero), as the protobuf formats carry them.
    pub fn encode(buckets: &[(i32, u64)]) -> (Vec<Span>, Vec<i64>) {
        let mut spans: Vec<Span> = Vec::new();
        let mut deltas = Vec::with_capacity(buckets.len());
        let (mut previous_index, mut previous_count) = (None::<i32>, 0i64);
        for &(index, count) in buckets {
            match previous_index {
                Some(p) if index == p + 1 => {
                    if let Some(last) = spans.last_mut() {
                        last.length += 1;
                    }
                }
                Some(p) => spans.push(Span { offset: index - p - 1, length: 1 }),
                None => spans.push(Span { offset: index, length: 1 }),
            }
            let count = i64::try_from(count).unwrap_or(i64::MAX);
            deltas.push(count.wrapping_sub(previous_count));
            previous_index = Some(index);
            previous_count = count;
        }
        (spans, deltas)
    }
}

impl DDSketch {
    /// The sketch as a native histogram at `schema` (clamped to [`SCHEMAS`]), values multiplied
    /// by `scale` (milliseconds to seconds, say) and counts by `weight` (sampled values stand
    /// for `1/rate` each; rounded). Past `max_buckets` buckets (0: no limit) the schema is
    /// lowered, each step merging pairs of buckets, until they fit or the schema is -4.
    pub fn to_exponential(&self, schema: i32, max_buckets: usize, scale: f64, weight: f64) -> Exponential {
        let scale = if scale.is_finite() && scale > 0.0 { scale } else { 1.0 };
        let weighted = |c: u64| if weight == 1.0 { c } else { (c as f64 * weight).round() as u64 };
        let schema = schema.clamp(*SCHEMAS.start(), *SCHEMAS.end());
        let place = |store: &crate::ddsketch::Store, schema: i32| -> Vec<(i32, u64)> {
            let mut out: Vec<(i32, u64)> = Vec::new();
            for (k, &c) in store.counts.iter().enumerate() {
                let c = weighted(c);
                if c == 0 {
                    continue;
                }
                let value = DDSketch::bin_value(store.offset + k as i32) * scale;
                let index = Exponential::index(schema, value);
                // Bins ascend, so their buckets never descend.
                match out.last_mut() {
                    Some((i, n)) if *i == index => *n = n.saturating_add(c),
                    _ => out.push((index, c)),
                }
            }
            out
        };
        let positive = place(&self.positive, schema);
        let negative = place(&self.negative, schema);
        let mut h = Exponential {
            schema,
            zero_threshold: MIN_INDEXABLE * scale,
            zero_count: weighted(self.zeros),
            positive,
            negative,
        };
        while max_buckets > 0 && h.positive.len() + h.negative.len() > max_buckets && h.lower() {}
        h
    }
}

impl Exponential {
    /// Halves the resolution: schema − 1, each bucket merged into the one holding it (bucket
    /// i at schema s lies within bucket ceil(i/2) at s − 1). False at the lowest schema.
    pub fn lower(&mut self) -> bool {
        if self.schema <= *SCHEMAS.start() {
            return false;
        }
        self.schema -= 1;
        for buckets in [&mut self.positive, &mut self.negative] {
            let mut merged: Vec<(i32, u64)> = Vec::with_capacity(buckets.len());
            for &(i, c) in buckets.iter() {
                let j = (i + 1) >> 1;
                match merged.last_mut() {
                    Some((m, n)) if *m == j => *n = n.saturating_add(c),
                    _ => merged.push((j, c)),
                }
            }
            *buckets = merged;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Prometheus' estimate of the value at rank `rank` (0-based) from the buckets: linear
    /// interpolation inside the bucket that holds it, as `histogram_quantile` does.
    fn estimate(h: &Exponential, rank: f64) -> f64 {
        let mut seen = 0.0;
        assert!(h.negative.is_empty() && h.zero_count == 0);
        for &(i, c) in &h.positive {
            let (lo, hi) = (Exponential::upper_bound(h.schema, i - 1), Exponential::upper_bound(h.schema, i));
            if seen + c as f64 > rank {
                return lo + (hi - lo) * (rank - seen + 1.0) / c as f64;
            }
            seen += c as f64;
        }
        f64::NAN
    }

    #[test]
    fn quantiles_from_the_buckets_are_within_the_stated_error() {
        let mut sketch = DDSketch::new();
        let mut values: Vec<f64> = (1..=20_000).map(|i| ((i * 7919) % 20_000) as f64 / 7.0 + 0.5).collect();
        for v in &values {
            sketch.add(*v);
        }
        values.sort_by(f64::total_cmp);
        for schema in [0, 3, 5, 8] {
            let h = sketch.to_exponential(schema, 0, 1.0, 1.0);
            assert_eq!(h.count(), values.len() as u64);
            let bound = Exponential::relative_error(schema);
            for q in [0.01, 0.25, 0.5, 0.9, 0.99, 0.999] {
                let rank = (q * (values.len() - 1) as f64).round();
                let (est, exact) = (estimate(&h, rank), values[rank as usize]);
                assert!((est - exact).abs() <= bound * exact, "schema {schema} q {q}: {est} vs {exact} (±{bound})");
            }
        }
    }

    #[test]
    fn scale_weight_and_the_bucket_limit() {
        let mut sketch = DDSketch::new();
        for v in [1500.0, 3000.0, 6000.0, 0.0, -12000.0] {
            sketch.add(v);
        }
        // Milliseconds to seconds: 1.5 s is in (1, 2], bucket 1 at schema 0.
        let h = sketch.to_exponential(0, 0, 0.001, 1.0);
        assert_eq!(h.positive.iter().map(|b| b.0).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(h.negative, [(4, 1)]);
        assert_eq!(h.zero_count, 1);
        // Sampled at 1/10: each value stands for ten.
        assert_eq!(sketch.to_exponential(0, 0, 0.001, 10.0).count(), 50);
        // Two buckets at most: the schema drops until they fit.
        let h = sketch.to_exponential(0, 2, 0.001, 1.0);
        assert!(h.positive.len() + h.negative.len() <= 2, "{h:?}");
        assert_eq!(h.count(), 5);
        assert!(h.schema < 0);
    }

    #[test]
    fn spans_and_deltas() {
        let (spans, deltas) = Exponential::encode(&[(-2, 3), (-1, 5), (3, 1), (4, 1), (10, 7)]);
        assert_eq!(
            spans,
            [Span { offset: -2, length: 2 }, Span { offset: 3, length: 2 }, Span { offset: 5, length: 1 }]
        );
        assert_eq!(deltas, [3, 2, -4, 0, 6]);
        assert_eq!(Exponential::encode(&[]), (vec![], vec![]));
    }
}
