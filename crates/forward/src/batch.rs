//! From an agent's flush to batches, and from a batch into an aggregator's store.

use floodgate_statsd::forwarded::{GaugeChange, TimerSummary};
use floodgate_statsd::{FlushView, Store};

use crate::convert::{self, BadState};
use crate::proto::{self, series::Value};
use crate::ring::Ring;

/// What changed in `view`, one list of series per aggregator of `ring` (`aggregators` of
/// them). `wall_ns` turns the runtime's gauge stamps into Unix nanoseconds.
pub fn split(
    view: &FlushView<'_>,
    ring: &Ring,
    aggregators: usize,
    wall_ns: impl Fn(u64) -> i64,
) -> Vec<Vec<proto::Series>> {
    let mut out: Vec<Vec<proto::Series>> = (0..aggregators).map(|_| Vec::new()).collect();
    let mut push = |key: &[u8], value: Value| {
        if let Some(i) = ring.owner(key) {
            out[i].push(proto::Series { key: key.to_vec(), value: Some(value) });
        }
    };
    for (key, v) in view.changed_counters() {
        push(key, Value::Counter(v));
    }
    for (key, change) in view.changed_gauges() {
        let g = match change {
            GaugeChange::Delta(d) => proto::Gauge { value: d, delta: true, set_at_ns: 0 },
            GaugeChange::Set { value, stamp } => proto::Gauge { value, delta: false, set_at_ns: wall_ns(stamp) },
        };
        push(key, Value::Gauge(g));
    }
    for (key, d) in view.changed_sets() {
        push(key, Value::Set(convert::set_to_wire(&d)));
    }
    for (key, t) in view.changed_timers() {
        push(key, Value::Timer(timer_to_wire(&t)));
    }
    out
}

fn timer_to_wire(t: &TimerSummary) -> proto::Timer {
    proto::Timer {
        count: t.count,
        sum: t.sum,
        sum_squares: t.sum_squares,
        min: t.min,
        max: t.max,
        sketch: Some(convert::sketch_to_wire(&t.sketch)),
    }
}

/// What applying a batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Series merged.
    pub merged: u64,
    /// Series refused by `max_series`.
    pub refused: u64,
}

enum Series<'a> {
    Counter(&'a [u8], f64),
    Gauge(&'a [u8], &'a proto::Gauge),
    Set(&'a [u8], floodgate_sketch::Distinct),
    Timer(&'a [u8], TimerSummary),
}

/// A batch checked and decoded (sketches and sets rebuilt), ready to merge: the costly part,
/// done before the store is locked.
pub struct Decoded<'a>(Vec<Series<'a>>);

/// Checks and decodes a batch: a malformed series (no value, a bad sketch or set, a value
/// that is not finite) refuses the whole batch.
pub fn decode(batch: &proto::Batch) -> Result<Decoded<'_>, BadState> {
    let mut decoded = Vec::with_capacity(batch.series.len());
    for s in &batch.series {
        let key = &s.key[..];
        if key.is_empty() {
            return Err(BadState("series with an empty key"));
        }
        decoded.push(match &s.value {
            None => return Err(BadState("series without a value")),
            Some(Value::Counter(v)) if v.is_finite() => Series::Counter(key, *v),
            Some(Value::Gauge(g)) if g.value.is_finite() => Series::Gauge(key, g),
            Some(Value::Set(w)) => Series::Set(key, convert::set_from_wire(w)?),
            Some(Value::Timer(t)) if [t.count, t.sum, t.sum_squares].iter().all(|v| v.is_finite()) => {
                let sketch = convert::sketch_from_wire(t.sketch.as_ref().ok_or(BadState("timer without a sketch"))?)?;
                let summary = TimerSummary {
                    count: t.count,
                    sum: t.sum,
                    sum_squares: t.sum_squares,
                    min: t.min,
                    max: t.max,
                    sketch,
                };
                Series::Timer(key, summary)
            }
            Some(_) => return Err(BadState("value that is not a finite number")),
        });
    }
    Ok(Decoded(decoded))
}

impl Decoded<'_> {
    /// Merges into `store` (series past `max_series` are refused and counted).
    pub fn merge_into(self, store: &mut Store) -> Applied {
        let mut applied = Applied::default();
        for s in self.0 {
            let ok = match s {
                Series::Counter(k, v) => store.add_forwarded_counter(k, v),
                Series::Gauge(k, g) => store.add_forwarded_gauge(k, g.value, g.delta, g.set_at_ns),
                Series::Set(k, set) => store.add_forwarded_set(k, &set),
                Series::Timer(k, t) => store.add_forwarded_timer(k, &t),
            };
            if ok {
                applied.merged += 1;
            } else {
                applied.refused += 1;
            }
        }
        applied
    }
}

/// Merges a batch into `store`, all or nothing ([`decode`], then [`Decoded::merge_into`]).
pub fn apply(store: &mut Store, batch: &proto::Batch) -> Result<Applied, BadState> {
    Ok(decode(batch)?.merge_into(store))
}

#[cfg(test)]
mod tests {
    use super::*;
    use floodgate_statsd::{AggregationConfig, Parser, Shard};

    fn agent(text: &str) -> Store {
        let mut store = Store::new(AggregationConfig::default());
        let mut shard = Shard::new(1000);
        Parser::new(true).parse_packet(text.as_bytes(), &mut shard);
        store.merge(&mut shard);
        store
    }

    #[test]
    fn three_agents_two_aggregators_every_counter_once() {
        let ring = Ring::new(&["a:1", "b:1"]);
        let mut aggs = [Store::new(AggregationConfig::default()), Store::new(AggregationConfig::default())];
        let keys: Vec<String> = (0..50).map(|i| format!("svc{i}.hits")).collect();
        for _ in 0..3 {
            let text: String = keys.iter().map(|k| format!("{k}:1|c\nlat:5|ms\n")).collect();
            let mut a = agent(&text);
            let parts = a.flush(10, |v| split(v, &ring, 2, |s| s as i64));
            for (i, series) in parts.into_iter().enumerate() {
                let batch = proto::Batch { seq: 1, interval_start_ms: 0, interval_ms: 10_000, series };
                let applied = apply(&mut aggs[i], &batch).unwrap();
                assert_eq!(applied.refused, 0);
            }
        }
        let mut seen = 0;
        for agg in aggs.iter_mut() {
            agg.flush(20, |v| {
                for (k, val) in v.changed_counters() {
                    if k.ends_with(b".hits") {
                        assert_eq!(val, 3.0, "{}", String::from_utf8_lossy(k));
                        seen += 1;
                    }
                }
            });
        }
        assert_eq!(seen, 50, "every key at exactly one aggregator");
    }

    #[test]
    fn a_malformed_series_refuses_the_whole_batch() {
        let mut store = Store::new(AggregationConfig::default());
        let batch = proto::Batch {
            seq: 1,
            interval_start_ms: 0,
            interval_ms: 1000,
            series: vec![
                proto::Series { key: b"ok".to_vec(), value: Some(Value::Counter(1.0)) },
                proto::Series { key: b"bad".to_vec(), value: Some(Value::Counter(f64::NAN)) },
            ],
        };
        assert!(apply(&mut store, &batch).is_err());
        assert!(store.counters().all(|(k, _)| k != b"ok"), "nothing merged");
        let no_sketch = proto::Batch {
            series: vec![proto::Series {
                key: b"t".to_vec(),
                value: Some(Value::Timer(proto::Timer { count: 1.0, sketch: None, ..Default::default() })),
            }],
            ..batch
        };
        assert!(apply(&mut store, &no_sketch).is_err());
    }
}
