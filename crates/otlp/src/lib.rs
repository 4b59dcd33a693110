//! OpenTelemetry's OTLP, the part floodgate sends: the protobuf messages of the metrics and
//! logs export requests and their responses ([`proto`]), and StatsD timers' DDSketches as
//! exponential histograms ([`exponential`]). No IO: the runtime's `otlp` sink POSTs what is
//! built here.

pub mod logs;
pub mod proto;

use floodgate_sketch::{DDSketch, Exponential};

/// The finest scale floodgate sends (Prometheus' native histograms stop there too; past it
/// the sketch's own 1 % dominates the error).
pub const MAX_SCALE: i32 = 8;

/// A DDSketch as an OTLP exponential histogram data point's buckets, at the finest scale up
/// to [`MAX_SCALE`] at which the populated range fits `max_buckets` (0: no limit), values
/// multiplied by `scale` and counts by `weight` (sampled values). `count` is the sum of the
/// buckets and `zero_count`, as OTLP requires.
///
/// A quantile estimated from the buckets is within [`relative_error`] of the true value: each
/// sketch bin goes to the bucket of its representative, which is within the sketch's 1 % of
/// every value in the bin.
pub fn exponential(
    sketch: &DDSketch,
    max_buckets: usize,
    scale: f64,
    weight: f64,
) -> proto::ExponentialHistogramDataPoint {
    let mut h = sketch.to_exponential(MAX_SCALE, max_buckets, scale, weight);
    // OTLP's buckets are dense: lower the resolution until the populated range fits.
    while max_buckets > 0 && dense_len(&h.positive).max(dense_len(&h.negative)) > max_buckets && h.lower() {}
    proto::ExponentialHistogramDataPoint {
        count: h.count(),
        scale: h.schema,
        zero_count: h.zero_count,
        zero_threshold: h.zero_threshold,
        positive: Some(dense(&h.positive)),
        negative: Some(dense(&h.negative)),
        ..Default::default()
    }
}

/// How far a quantile estimated from an [`exponential`] histogram at `scale` may be from the
/// true value, as a fraction of it.
pub fn relative_error(scale: i32) -> f64 {
    Exponential::relative_error(scale)
}

/// Buckets from the first populated index to the last.
fn dense_len(buckets: &[(i32, u64)]) -> usize {
    match (buckets.first(), buckets.last()) {
        (Some((a, _)), Some((b, _))) => (b - a) as usize + 1,
        _ => 0,
    }
}

/// Prometheus' sparse buckets (bucket `j` is `(base^(j-1), base^j]`) as OTLP's dense ones
/// (bucket `i` is `(base^i, base^(i+1)]`): index `j` is OTLP's `j - 1`.
fn dense(buckets: &[(i32, u64)]) -> proto::Buckets {
    let Some(&(first, _)) = buckets.first() else { return proto::Buckets::default() };
    let mut counts = vec![0u64; dense_len(buckets)];
    for &(j, c) in buckets {
        counts[(j - first) as usize] = c;
    }
    proto::Buckets { offset: first - 1, bucket_counts: counts }
}

/// A classic histogram's cumulative-free bucket counts for ascending `bounds` (the last count
/// is above every bound), from the sketch: each bin counted in the first bucket whose bound
/// its representative does not pass (values multiplied by `scale`, counts by `weight`).
pub fn explicit_counts(sketch: &DDSketch, bounds: &[f64], scale: f64, weight: f64) -> Vec<u64> {
    let mut counts = vec![0u64; bounds.len() + 1];
    for (value, c) in sketch.bins() {
        let v = value * scale;
        let i = bounds.iter().position(|b| v <= *b).unwrap_or(bounds.len());
        counts[i] = counts[i].saturating_add(if weight == 1.0 { c } else { (c as f64 * weight).round() as u64 });
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value at `rank` (0-based) estimated from dense OTLP buckets: the bucket's
    /// midpoint, as the error bound assumes a point anywhere in it.
    fn estimate(p: &proto::ExponentialHistogramDataPoint, rank: u64) -> f64 {
        let base = 2f64.powf(2f64.powi(-p.scale));
        let positive = p.positive.as_ref().unwrap();
        let mut seen = p.zero_count;
        for (k, c) in positive.bucket_counts.iter().enumerate() {
            seen += c;
            if seen > rank {
                let i = positive.offset + k as i32;
                let (lo, hi) = (base.powi(i), base.powi(i + 1));
                return (lo + hi) / 2.0;
            }
        }
        f64::NAN
    }

    #[test]
    fn quantiles_from_the_buckets_are_within_the_stated_bound() {
        let mut sketch = DDSketch::new();
        let mut values: Vec<f64> = (1..=10_000).map(|i| ((i * 7919) % 10_000) as f64 / 3.0 + 0.25).collect();
        for v in &values {
            sketch.add(*v);
        }
        values.sort_by(f64::total_cmp);
        for max in [0, 160, 40] {
            let p = exponential(&sketch, max, 1.0, 1.0);
            assert_eq!(p.count, values.len() as u64);
            let dense = p.positive.as_ref().unwrap().bucket_counts.len();
            assert!(max == 0 || dense <= max, "{dense} buckets for at most {max}");
            assert_eq!(p.positive.as_ref().unwrap().bucket_counts.iter().sum::<u64>() + p.zero_count, p.count);
            let bound = relative_error(p.scale);
            for q in [0.01, 0.5, 0.9, 0.99] {
                let rank = (q * (values.len() - 1) as f64) as u64;
                let (est, exact) = (estimate(&p, rank), values[rank as usize]);
                assert!(
                    (est - exact).abs() <= bound * exact,
                    "scale {} q{q}: {est} vs {exact} (bound {bound})",
                    p.scale
                );
            }
        }
    }

    #[test]
    fn negative_values_and_zeros_have_their_own_buckets() {
        let mut sketch = DDSketch::new();
        for v in [-4.0, -4.0, 0.0, 2.0] {
            sketch.add(v);
        }
        let p = exponential(&sketch, 160, 1.0, 1.0);
        assert_eq!((p.count, p.zero_count), (4, 1));
        assert_eq!(p.negative.as_ref().unwrap().bucket_counts.iter().sum::<u64>(), 2);
        assert_eq!(p.positive.as_ref().unwrap().bucket_counts.iter().sum::<u64>(), 1);
        // 4 lies in (base^i, base^(i+1)] of the negative side's offset bucket.
        let base = 2f64.powf(2f64.powi(-p.scale));
        let neg = p.negative.as_ref().unwrap();
        assert!(base.powi(neg.offset) < 4.0 * 1.011 && 4.0 * 0.989 <= base.powi(neg.offset + 1));
    }

    #[test]
    fn explicit_buckets_count_each_value_once() {
        let mut sketch = DDSketch::new();
        for v in [0.5, 1.0, 3.0, 50.0, 1e6] {
            sketch.add(v);
        }
        assert_eq!(explicit_counts(&sketch, &[1.0, 10.0, 100.0], 1.0, 1.0), [2, 1, 1, 1]);
        assert_eq!(explicit_counts(&sketch, &[1.0, 10.0, 100.0], 0.001, 2.0), [8, 0, 0, 2]);
    }
}
