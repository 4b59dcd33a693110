//! Interval state in mergeable form, for the agent → aggregator hop.
//!
//! An agent's flush yields, per changed series, what an aggregator needs to merge it exactly
//! with other agents' ([`GaugeChange`], [`TimerSummary`], a [`Distinct`] per set); an
//! aggregator's [`Store`](crate::Store) takes them back in (`Store::add_forwarded_*`) and
//! computes Etsy's statistics over the merged form ([`timer_stats`]). Local input never
//! goes through this: an agent's own Graphite output stays exact.

use floodgate_sketch::{DDSketch, Distinct};

use crate::store::PercentileNames;

/// How a gauge changed during an interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GaugeChange {
    /// Only changed by deltas: their sum.
    Delta(f64),
    /// Set (its value now, later deltas included) at `stamp` (the runtime's clock, ns).
    Set {
        /// Value at the end of the interval.
        value: f64,
        /// When it was last set.
        stamp: u64,
    },
}

/// A timer's interval in mergeable form: exact moments and a sketch of the raw values.
#[derive(Debug, Clone, PartialEq)]
pub struct TimerSummary {
    /// Samples weighted by 1/sample rate (Etsy's `count`).
    pub count: f64,
    /// Sum of the raw values.
    pub sum: f64,
    /// Sum of their squares.
    pub sum_squares: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// The raw values.
    pub sketch: DDSketch,
    /// Every value came as `h` or `d` (no unit), none as `ms`.
    pub unitless: bool,
}

impl Default for TimerSummary {
    fn default() -> Self {
        TimerSummary {
            count: 0.0,
            sum: 0.0,
            sum_squares: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            sketch: DDSketch::new(),
            unitless: false,
        }
    }
}

impl TimerSummary {
    /// The summary of raw `values` representing `count` weighted samples.
    pub fn from_values(values: &[f64], count: f64) -> TimerSummary {
        let mut s = TimerSummary { count, ..TimerSummary::default() };
        for &v in values {
            s.sum += v;
            s.sum_squares += v * v;
            s.min = s.min.min(v);
            s.max = s.max.max(v);
            s.sketch.add(v);
        }
        s
    }

    /// Adds one raw value standing for `weight` samples (1/rate).
    #[inline]
    pub fn add(&mut self, v: f64, weight: f64) {
        self.count += weight;
        self.sum += v;
        self.sum_squares += v * v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.sketch.add(v);
    }

    /// Adds another summary.
    pub fn merge(&mut self, other: &TimerSummary) {
        self.count += other.count;
        self.sum += other.sum;
        self.sum_squares += other.sum_squares;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sketch.merge(&other.sketch);
    }

    /// Raw values summarised.
    pub fn samples(&self) -> u64 {
        self.sketch.count()
    }

    /// The value of rank `rank`, from the sketch, kept within the exact extremes.
    pub fn value_at_rank(&self, rank: u64) -> f64 {
        self.sketch.value_at_rank(rank).map_or(f64::NAN, |v| within(v, self.min, self.max))
    }

    /// Sum and sum of squares of the `n` lowest (or, with `from_top`, highest) values, each
    /// taken as its bin's value; the exact sums when `n` is every value.
    fn partial_sums(&self, bins: &[(f64, u64)], n: u64, from_top: bool) -> (f64, f64) {
        if n >= self.samples() {
            return (self.sum, self.sum_squares);
        }
        let (mut left, mut sum, mut sq) = (n, 0.0, 0.0);
        let ordered: Box<dyn Iterator<Item = &(f64, u64)>> =
            if from_top { Box::new(bins.iter().rev()) } else { Box::new(bins.iter()) };
        for (v, c) in ordered {
            if left == 0 {
                break;
            }
            let k = (*c).min(left);
            let v = within(*v, self.min, self.max);
            sum += v * k as f64;
            sq += v * v * k as f64;
            left -= k;
        }
        (sum, sq)
    }
}

/// Etsy's timer statistics (same names, same order as for raw values) over a summary:
/// `count`, `count_ps`, `sum`, `sum_squares`, `mean`, `std`, `upper`, `lower` exact;
/// `median` and the percentile bounds within the sketch's 1 %; `mean_N`, `sum_N`,
/// `sum_squares_N` and histogram bins over the sketch's bins.
pub(crate) fn timer_stats<'a>(
    s: &TimerSummary,
    pct_names: &'a [PercentileNames],
    histogram: Option<(&[f64], &'a [String])>,
    interval_secs: f64,
) -> Vec<(&'a str, f64)> {
    let count = s.samples();
    if count == 0 {
        return vec![("count", 0.0), ("count_ps", 0.0)];
    }
    let bins: Vec<(f64, u64)> = s.sketch.bins().collect();
    let mut out = Vec::with_capacity(9 + 5 * pct_names.len());
    let (mut sum, mut sum_squares, mut mean, mut bound) = (s.min, s.min * s.min, s.min, s.max);
    for names in pct_names {
        let pct = names.pct;
        let mut n = count;
        if count > 1 {
            n = (pct.abs() / 100.0 * count as f64).round() as u64;
            if n == 0 {
                continue;
            }
            if pct > 0.0 {
                bound = s.value_at_rank(n - 1);
                (sum, sum_squares) = s.partial_sums(&bins, n, false);
            } else {
                bound = s.value_at_rank(count - n);
                (sum, sum_squares) = s.partial_sums(&bins, n, true);
            }
            mean = sum / n as f64;
        }
        names.push(&mut out, n as f64, [mean, bound, sum, sum_squares]);
    }
    let mean = s.sum / count as f64;
    let variance = (s.sum_squares / count as f64 - mean * mean).max(0.0);
    let mid = count / 2;
    let median =
        if count % 2 == 1 { s.value_at_rank(mid) } else { (s.value_at_rank(mid - 1) + s.value_at_rank(mid)) / 2.0 };
    out.push(("std", variance.sqrt()));
    out.push(("upper", s.max));
    out.push(("lower", s.min));
    out.push(("count", s.count));
    out.push(("count_ps", s.count / interval_secs));
    out.push(("sum", s.sum));
    out.push(("sum_squares", s.sum_squares));
    out.push(("mean", mean));
    out.push(("median", median));
    if let Some((bounds, names)) = histogram {
        let mut i = 0;
        for (b, bound) in bounds.iter().enumerate() {
            let mut freq = 0u64;
            while i < bins.len() && (bound.is_infinite() || within(bins[i].0, s.min, s.max) < *bound) {
                freq = freq.saturating_add(bins[i].1);
                i += 1;
            }
            out.push((names[b].as_str(), freq as f64));
        }
    }
    out
}

/// The percentile bounds of a summary (for Prometheus), as for raw values.
pub(crate) fn percentile_bounds(s: &TimerSummary, percentiles: &[f64]) -> Vec<Option<f64>> {
    let count = s.samples();
    percentiles
        .iter()
        .map(|&pct| match count {
            0 => None,
            1 => Some(s.min),
            _ => match (pct.abs() / 100.0 * count as f64).round() as u64 {
                0 => None,
                n if pct > 0.0 => Some(s.value_at_rank(n - 1)),
                n => Some(s.value_at_rank(count - n)),
            },
        })
        .collect()
}

/// `v` kept within `[lo, hi]`; unlike `f64::clamp` never panics (a forwarded summary may
/// claim `min > max`).
fn within(v: f64, lo: f64, hi: f64) -> f64 {
    v.max(lo).min(hi)
}

/// A set's members as a mergeable distinct count.
pub fn distinct_of<'a>(members: impl IntoIterator<Item = &'a [u8]>) -> Distinct {
    let mut d = Distinct::default();
    for m in members {
        d.insert(m);
    }
    d
}
