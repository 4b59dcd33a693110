//! The agent → aggregator protocol, with no IO (`docs/forward-protocol.md` is its reference):
//!
//! - [`proto`]: the messages, protobuf (proto3), written as prost structs so no `protoc` is
//!   needed; `docs/forward.proto` is the same schema for other implementations.
//! - [`frame`]: length-delimited frames with a size bound, and a decoder that takes bytes as
//!   they arrive.
//! - [`ring`]: consistent hashing of series keys over aggregators, with virtual nodes.
//! - [`convert`]: sketches to and from their wire form, refusing malformed ones.
//! - [`batch`]: an agent's flush split into per-aggregator batches of bounded size; a batch
//!   read in place and merged into an aggregator's store series by series, under the same
//!   validity rule the agent's parser applies.
//! - [`scan`]: protobuf fields read in place, so a batch is checked before anything of it is
//!   allocated.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod batch;
pub mod convert;
pub mod frame;
pub mod proto;
pub mod ring;
pub mod scan;

/// The protocol version this crate speaks (in `Hello` and `Welcome`).
pub const VERSION: u32 = 1;

/// Reads `data` as frames from a peer and everything in them the way an aggregator would
/// (sketches and sets decoded, queried and merged). Used by the fuzz target and its
/// regression corpus: nothing here may panic, whatever the bytes.
pub fn exercise(data: &[u8]) {
    use floodgate_sketch::{DDSketch, Distinct};
    let mut decoder = frame::Decoder::new(1 << 20);
    decoder.buffer().extend_from_slice(data);
    let mut timers = DDSketch::new();
    let mut sets = Distinct::default();
    let mut store = floodgate_statsd::Store::new(floodgate_statsd::AggregationConfig {
        percentiles: vec![90.0, -10.0, 100.0],
        histograms: vec![floodgate_statsd::HistogramRule { metric: String::new(), bins: vec![1.0, f64::INFINITY] }],
        ..Default::default()
    });
    while let Ok(Some(body)) = decoder.decode_body() {
        let Ok(frame::Incoming::Batch(body)) = frame::incoming(body) else { continue };
        let rule = floodgate_statsd::KeyRule::default();
        if let Ok(view) = batch::BatchView::parse(&body) {
            let merged: u64 = view.chunks(rule, 4096).map(|c| c.merge_into(&mut store).merged).sum();
            assert!(merged as usize <= view.series);
        }
        let _ = batch::apply(&mut store, &body, floodgate_statsd::KeyRule { sanitized: false, ..rule });
        // The sketches and sets inside, however the series around them look.
        use prost::Message;
        let Ok(batch) = proto::Batch::decode(&body[..]) else { continue };
        for series in &batch.series {
            match &series.value {
                Some(proto::series::Value::Timer(t)) => {
                    if let Some(Ok(s)) = t.sketch.as_ref().map(convert::sketch_from_wire) {
                        let n = s.count();
                        let _ = s.value_at_rank(n / 2);
                        let _ = s.bins().count();
                        timers.merge(&s);
                    }
                }
                Some(proto::series::Value::Set(w)) => {
                    if let Ok(d) = convert::set_from_wire(w) {
                        let _ = d.count();
                        sets.merge(&d);
                    }
                }
                _ => {}
            }
        }
    }
    let _ = timers.value_at_rank(timers.count().saturating_sub(1));
    let _ = sets.count();
    let naming = floodgate_statsd::graphite::GraphiteNaming::default();
    let stats = floodgate_statsd::graphite::GraphiteStats::default();
    store.flush(1, |view| {
        let _ =
            floodgate_statsd::graphite::render(view, &naming, floodgate_statsd::graphite::Protocol::Plaintext, &stats);
    });
    let mut out = String::new();
    floodgate_statsd::prometheus::render(&store, &mut out);
}

#[cfg(test)]
mod regressions {
    /// Every input the fuzzer ever crashed on (and the seeds) still runs cleanly.
    #[test]
    fn fuzz_regressions_replay() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions/forward");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("fuzz/regressions/forward") {
            let data = std::fs::read(entry.expect("entry").path()).expect("read");
            crate::exercise(&data);
            n += 1;
        }
        assert!(n > 0, "the regression corpus is empty");
    }

    /// Writes the seed corpus (a valid batch of every kind of series).
    #[test]
    fn seed_is_a_valid_batch() {
        use crate::proto::{frame::Kind, series::Value, Batch, Frame, Series, Set, Timer};
        let mut sketch = floodgate_sketch::DDSketch::new();
        for v in [1.0, 2.5, -4.0, 0.0, 1e3] {
            sketch.add(v);
        }
        let batch = Frame {
            kind: Some(Kind::Batch(Batch {
                seq: 1,
                interval_start_ms: 1_700_000_000_000,
                interval_ms: 10_000,
                series: vec![
                    Series { key: b"hits".to_vec(), value: Some(Value::Counter(3.0)) },
                    Series {
                        key: b"users".to_vec(),
                        value: Some(Value::Set(Set { hashes: vec![1, 2, 3], registers: vec![] })),
                    },
                    Series {
                        key: b"lat".to_vec(),
                        value: Some(Value::Timer(Timer {
                            count: 5.0,
                            sum: 999.5,
                            sum_squares: 1e6,
                            min: -4.0,
                            max: 1e3,
                            sketch: Some(crate::convert::sketch_to_wire(&sketch)),
                            unitless: false,
                        })),
                    },
                ],
            })),
        };
        let mut wire = bytes::BytesMut::new();
        crate::frame::encode(&batch, &mut wire);
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions/forward/seed-batch");
        if std::env::var_os("FLOODGATE_WRITE_SEED").is_some() {
            std::fs::write(&path, &wire).expect("write the seed");
        }
        let on_disk = std::fs::read(&path).expect("fuzz/regressions/forward/seed-batch");
        assert_eq!(
            on_disk,
            wire.to_vec(),
            "the seed is this batch's encoding (FLOODGATE_WRITE_SEED=1 cargo test rewrites it)"
        );
    }
}
