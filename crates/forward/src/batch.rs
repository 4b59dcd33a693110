//! From an agent's flush to batches, and from a batch into an aggregator's store.
//!
//! Both directions apply [the validity rule](floodgate_statsd::valid): an agent leaves out
//! (and counts) a series an aggregator would refuse, and an aggregator refuses one series at a
//! time — never a whole batch for one bad series, so one bad line can never stop an agent's
//! forwarding. A batch is read in place ([`BatchView`]): its shape is checked without
//! allocating, then its series are decoded a chunk at a time, so what a batch costs to read is
//! bounded by its own size plus a constant.

use floodgate_statsd::forwarded::{GaugeChange, TimerSummary};
use floodgate_statsd::valid::{self, Invalid, KeyRule};
use floodgate_statsd::{FlushView, Store};
use prost::Message;

use crate::convert::{self, BadState};
use crate::proto::{self, series::Value};
use crate::ring::Ring;
use crate::scan;

/// Largest encoded series an aggregator decodes: a key of 64 KiB and a timer sketch with both
/// stores full (2 × 4096 bins) fit well within it. Bigger ones are refused unread.
pub const MAX_SERIES_BYTES: usize = 256 << 10;

/// An agent's flush, split: one list of series per aggregator, and how many series the
/// validity rule left out.
#[derive(Debug, Default)]
pub struct Split {
    /// Series per aggregator, in ring order.
    pub shares: Vec<Vec<proto::Series>>,
    /// Series left out because an aggregator would refuse them (a counter sum that overflowed).
    pub invalid: u64,
}

/// What changed in `view`, one list of series per aggregator of `ring` (`aggregators` of
/// them). `wall_ns` turns the runtime's gauge stamps into Unix nanoseconds; `rule` is this
/// agent's key rule (the aggregators should use the same).
pub fn split(
    view: &FlushView<'_>,
    ring: &Ring,
    aggregators: usize,
    wall_ns: impl Fn(u64) -> i64,
    rule: &KeyRule,
) -> Split {
    let mut out = Split { shares: (0..aggregators).map(|_| Vec::new()).collect(), invalid: 0 };
    let mut push = |key: &[u8], value: Value, state: Result<(), Invalid>| {
        if state.and_then(|()| rule.check(key)).is_err() {
            out.invalid += 1;
            return;
        }
        if let Some(i) = ring.owner(key) {
            out.shares[i].push(proto::Series { key: key.to_vec(), value: Some(value) });
        }
    };
    for (key, v) in view.changed_counters() {
        push(key, Value::Counter(v), valid::counter_state(v));
    }
    for (key, change) in view.changed_gauges() {
        let g = match change {
            GaugeChange::Delta(d) => proto::Gauge { value: d, delta: true, set_at_ns: 0 },
            GaugeChange::Set { value, stamp } => proto::Gauge { value, delta: false, set_at_ns: wall_ns(stamp) },
        };
        let state = valid::gauge_state(g.value);
        push(key, Value::Gauge(g), state);
    }
    for (key, d) in view.changed_sets() {
        push(key, Value::Set(convert::set_to_wire(&d)), Ok(()));
    }
    for (key, t) in view.changed_timers() {
        push(key, Value::Timer(timer_to_wire(&t)), valid::timer_state(&t));
    }
    out
}

/// Cuts one aggregator's share into batches of about `target` encoded bytes (at least one
/// series each), so no frame grows with the number of series.
pub fn cut(series: Vec<proto::Series>, target: usize) -> Vec<Vec<proto::Series>> {
    let mut batches = vec![Vec::new()];
    let mut bytes = 0;
    for s in series {
        let len = s.encoded_len() + 4;
        if bytes + len > target && !batches.last().is_some_and(Vec::is_empty) {
            batches.push(Vec::new());
            bytes = 0;
        }
        bytes += len;
        if let Some(b) = batches.last_mut() {
            b.push(s);
        }
    }
    batches
}

fn timer_to_wire(t: &TimerSummary) -> proto::Timer {
    proto::Timer {
        count: t.count,
        sum: t.sum,
        sum_squares: t.sum_squares,
        min: t.min,
        max: t.max,
        sketch: Some(convert::sketch_to_wire(&t.sketch)),
        unitless: t.unitless,
    }
}

/// Series refused, by [`Invalid`] reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refused(pub [u64; Invalid::ALL.len()]);

impl Refused {
    fn add(&mut self, why: Invalid) {
        self.0[why as usize] += 1;
    }

    /// All reasons together.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Adds another count.
    pub fn merge(&mut self, other: &Refused) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }
}

/// What applying a batch (or a chunk of it) did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Series merged.
    pub merged: u64,
    /// Series refused by `max_series`.
    pub refused: u64,
    /// Series refused by the validity rule, by reason.
    pub invalid: Refused,
}

impl Applied {
    /// Adds another count.
    pub fn merge(&mut self, other: &Applied) {
        self.merged += other.merged;
        self.refused += other.refused;
        self.invalid.merge(&other.invalid);
    }
}

enum Series {
    Counter(Vec<u8>, f64),
    Gauge(Vec<u8>, proto::Gauge),
    Set(Vec<u8>, floodgate_sketch::Distinct),
    Timer(Vec<u8>, TimerSummary),
}

/// Decodes and checks one encoded series.
fn decode_series(bytes: &[u8], rule: &KeyRule) -> Result<Series, Invalid> {
    if bytes.len() > MAX_SERIES_BYTES {
        return Err(Invalid::TooLong);
    }
    let s = proto::Series::decode(bytes).map_err(|_| Invalid::Inconsistent)?;
    rule.check(&s.key)?;
    let bad_state = |_: BadState| Invalid::Inconsistent;
    Ok(match s.value {
        None => return Err(Invalid::Inconsistent),
        Some(Value::Counter(v)) => {
            valid::counter_state(v)?;
            Series::Counter(s.key, v)
        }
        Some(Value::Gauge(g)) => {
            valid::gauge_state(g.value)?;
            Series::Gauge(s.key, g)
        }
        Some(Value::Set(w)) => Series::Set(s.key, convert::set_from_wire(&w).map_err(bad_state)?),
        Some(Value::Timer(t)) => {
            let sketch =
                convert::sketch_from_wire(t.sketch.as_ref().ok_or(Invalid::Inconsistent)?).map_err(bad_state)?;
            let summary = TimerSummary {
                count: t.count,
                sum: t.sum,
                sum_squares: t.sum_squares,
                min: t.min,
                max: t.max,
                sketch,
                unitless: t.unitless,
            };
            valid::timer_state(&summary)?;
            Series::Timer(s.key, summary)
        }
    })
}

/// A batch read in place: its header, and its series still encoded. Making one checks the
/// whole batch's shape (every field readable) and allocates nothing.
#[derive(Debug, Clone, Copy)]
pub struct BatchView<'a> {
    /// The batch's sequence number.
    pub seq: u64,
    /// Start of its interval, Unix ms.
    pub interval_start_ms: i64,
    /// Its interval.
    pub interval_ms: u32,
    /// Series in it.
    pub series: usize,
    body: &'a [u8],
}

impl<'a> BatchView<'a> {
    /// Reads a `Batch` message's bytes. A batch that is not a well-formed message, or has no
    /// sequence number, is refused whole: nothing of it is merged.
    pub fn parse(body: &'a [u8]) -> Result<BatchView<'a>, BadState> {
        let mut view = BatchView { seq: 0, interval_start_ms: 0, interval_ms: 0, series: 0, body };
        for field in scan::fields(body) {
            match field.map_err(|_| BadState("a batch that is not a protobuf message"))? {
                (1, scan::Value::Varint(v)) => view.seq = v,
                (2, scan::Value::Varint(v)) => view.interval_start_ms = v as i64,
                (3, scan::Value::Varint(v)) => view.interval_ms = v as u32,
                (4, scan::Value::Bytes(_)) => view.series += 1,
                (1..=4, _) => return Err(BadState("a batch field of the wrong wire type")),
                _ => {}
            }
        }
        if view.seq == 0 {
            return Err(BadState("a batch without a sequence number"));
        }
        Ok(view)
    }

    fn encoded_series(&self) -> impl Iterator<Item = &'a [u8]> {
        scan::fields(self.body).filter_map(|f| match f {
            Ok((4, scan::Value::Bytes(b))) => Some(b),
            _ => None,
        })
    }

    /// The series decoded and checked in chunks of about `chunk_bytes` encoded bytes, each
    /// merged on its own (the caller holds its store's lock per chunk, not per batch).
    pub fn chunks(&self, rule: KeyRule, chunk_bytes: usize) -> impl Iterator<Item = Chunk> + 'a {
        let mut series = self.encoded_series().peekable();
        std::iter::from_fn(move || {
            series.peek()?;
            let mut chunk = Chunk { series: Vec::new(), invalid: Refused::default() };
            let mut bytes = 0;
            while bytes < chunk_bytes {
                let Some(encoded) = series.next() else { break };
                bytes += encoded.len();
                match decode_series(encoded, &rule) {
                    Ok(s) => chunk.series.push(s),
                    Err(why) => chunk.invalid.add(why),
                }
            }
            Some(chunk)
        })
    }
}

/// Some of a batch's series, decoded and checked, ready to merge.
pub struct Chunk {
    series: Vec<Series>,
    invalid: Refused,
}

impl Chunk {
    /// Merges into `store` (series past `max_series` are refused and counted).
    pub fn merge_into(self, store: &mut Store) -> Applied {
        let mut applied = Applied { invalid: self.invalid, ..Applied::default() };
        for s in self.series {
            let ok = match s {
                Series::Counter(k, v) => store.add_forwarded_counter(&k, v),
                Series::Gauge(k, g) => store.add_forwarded_gauge(&k, g.value, g.delta, g.set_at_ns),
                Series::Set(k, set) => store.add_forwarded_set(&k, &set),
                Series::Timer(k, t) => store.add_forwarded_timer(&k, &t),
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

/// Merges an encoded batch into `store` in one go (tests, fuzzing): refused whole only when
/// it is not a well-formed batch; otherwise series by series.
pub fn apply(store: &mut Store, body: &[u8], rule: KeyRule) -> Result<Applied, BadState> {
    let view = BatchView::parse(body)?;
    let mut applied = Applied::default();
    for chunk in view.chunks(rule, 1 << 20) {
        applied.merge(&chunk.merge_into(store));
    }
    Ok(applied)
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

    fn encode(series: Vec<proto::Series>) -> Vec<u8> {
        proto::Batch { seq: 1, interval_start_ms: 0, interval_ms: 10_000, series }.encode_to_vec()
    }

    #[test]
    fn three_agents_two_aggregators_every_counter_once() {
        let ring = Ring::new(&["a:1", "b:1"]);
        let mut aggs = [Store::new(AggregationConfig::default()), Store::new(AggregationConfig::default())];
        let keys: Vec<String> = (0..50).map(|i| format!("svc{i}.hits")).collect();
        for _ in 0..3 {
            let text: String = keys.iter().map(|k| format!("{k}:1|c\nlat:5|ms\n")).collect();
            let mut a = agent(&text);
            let parts = a.flush(10, |v| split(v, &ring, 2, |s| s as i64, &KeyRule::default()));
            assert_eq!(parts.invalid, 0);
            for (i, series) in parts.shares.into_iter().enumerate() {
                let applied = apply(&mut aggs[i], &encode(series), KeyRule::default()).unwrap();
                assert_eq!((applied.refused, applied.invalid.total()), (0, 0));
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
    fn a_bad_series_is_refused_alone() {
        let mut store = Store::new(AggregationConfig::default());
        let counter = |k: &[u8], v: f64| proto::Series { key: k.to_vec(), value: Some(Value::Counter(v)) };
        let no_sketch = proto::Series {
            key: b"t".to_vec(),
            value: Some(Value::Timer(proto::Timer { count: 1.0, sketch: None, ..Default::default() })),
        };
        let empty_timer = proto::Series {
            key: b"t2".to_vec(),
            value: Some(Value::Timer(proto::Timer { sketch: Some(proto::Sketch::default()), ..Default::default() })),
        };
        let series = vec![
            counter(b"ok", 1.0),
            counter(b"nan", f64::NAN),
            counter(b"inf", f64::INFINITY),
            counter(b"", 1.0),
            counter(b"%%", 1.0),
            counter(b"a\nstats.fake 1e9 0", 1.0),
            counter(&[b'k'; 2000], 1.0),
            proto::Series { key: b"novalue".to_vec(), value: None },
            no_sketch,
            empty_timer,
            counter(b"ok2", 2.0),
        ];
        let applied = apply(&mut store, &encode(series), KeyRule::default()).unwrap();
        assert_eq!(applied.merged, 2);
        let by = |w: Invalid| applied.invalid.0[w as usize];
        assert_eq!(by(Invalid::OutOfRange), 2);
        assert_eq!(by(Invalid::EmptyName), 1);
        assert_eq!(by(Invalid::BadKeyByte), 2, "unsanitised bytes, and a newline that would forge a Graphite line");
        assert_eq!(by(Invalid::TooLong), 1);
        assert_eq!(by(Invalid::Inconsistent), 3);
        assert!(store.counters().any(|(k, c)| k == b"ok2" && c.value == 2.0));
        // Not a batch at all: refused whole, nothing merged.
        let mut fresh = Store::new(AggregationConfig::default());
        let mut cut = encode(vec![counter(b"x", 1.0)]);
        cut.pop();
        assert!(apply(&mut fresh, &cut, KeyRule::default()).is_err());
        assert!(fresh.counters().all(|(k, _)| k != b"x"), "nothing merged");
    }

    #[test]
    fn what_an_agent_sends_an_aggregator_takes() {
        // Values at the edge of the rule, from StatsD lines through the wire and back.
        let mut a = agent("big:1e150|c\nbig:1e150|c\nneg:-1e150|g\nt:1e150|ms\nt:-1e150|ms\nu:x|s\n");
        let ring = Ring::new(&["a:1"]);
        let parts = a.flush(10, |v| split(v, &ring, 1, |s| s as i64, &KeyRule::default()));
        assert_eq!(parts.invalid, 0);
        let n = parts.shares[0].len();
        let mut agg = Store::new(AggregationConfig::default());
        let applied = apply(&mut agg, &encode(parts.shares.into_iter().next().unwrap()), KeyRule::default()).unwrap();
        assert_eq!((applied.merged, applied.invalid.total()), (n as u64, 0));
    }

    #[test]
    fn whether_a_timer_had_a_unit_crosses_the_wire() {
        // `h`/`d` only: unitless; `ms` (alone or mixed): milliseconds.
        let mut a = agent(
            "dist:5|d
hist:5|h
lat:5|ms
mixed:5|h
mixed:5|ms
",
        );
        let ring = Ring::new(&["a:1"]);
        let parts = a.flush(10, |v| split(v, &ring, 1, |s| s as i64, &KeyRule::default()));
        let mut agg = Store::new(AggregationConfig::default());
        apply(&mut agg, &encode(parts.shares.into_iter().next().unwrap()), KeyRule::default()).unwrap();
        let unitless: Vec<(&[u8], bool)> = agg.timers().map(|(k, t)| (k, t.units.unitless_only())).collect();
        for (key, want) in [(&b"dist"[..], true), (b"hist", true), (b"lat", false), (b"mixed", false)] {
            assert!(unitless.contains(&(key, want)), "{}: {unitless:?}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn shares_are_cut_into_bounded_batches() {
        let series: Vec<proto::Series> = (0..10_000)
            .map(|i| proto::Series { key: format!("key.{i}").into_bytes(), value: Some(Value::Counter(1.0)) })
            .collect();
        let batches = cut(series, 16 << 10);
        assert!(batches.len() > 5);
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 10_000);
        for b in &batches {
            assert!(encode(b.clone()).len() <= (16 << 10) + 64);
        }
        assert_eq!(cut(Vec::new(), 1024).len(), 1, "an empty share is one empty batch");
    }

    #[test]
    fn chunks_bound_what_is_decoded_at_once() {
        let series: Vec<proto::Series> = (0..1000)
            .map(|i| proto::Series { key: format!("k{i}").into_bytes(), value: Some(Value::Counter(1.0)) })
            .collect();
        let body = encode(series);
        let view = BatchView::parse(&body).unwrap();
        assert_eq!((view.seq, view.series), (1, 1000));
        let chunks: Vec<Chunk> = view.chunks(KeyRule::default(), 1000).collect();
        assert!(chunks.len() >= 10);
        assert!(chunks.iter().all(|c| c.series.len() <= 100));
    }
}
