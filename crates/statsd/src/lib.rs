//! StatsD for floodgate, with no IO: the line protocol, per-thread aggregation, the flush
//! semantics of Etsy statsd 0.9.0, and the Graphite and Prometheus renderings of a flush.
//!
//! The runtime reads packets, feeds them to a [`Parser`] with a [`Shard`] as sink (one per
//! receive thread), merges shards into the [`Store`] at each flush, and renders the resulting
//! [`FlushView`] with [`graphite::render`]. [`prometheus::render`] exposes the store for scrapes.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod budget;
pub mod cardinality;
pub mod dogstatsd;
pub mod forwarded;
pub mod graphite;
pub mod number;
pub mod parse;
pub mod prometheus;
pub mod shard;
pub mod store;
pub mod valid;

pub use parse::{Kind, Metric, MetricSink, PacketCounts, Parser};
pub use shard::Shard;
pub use store::{AggregationConfig, FlushView, HistogramRule, Store};
pub use valid::{Invalid, KeyRule};

/// Runs any bytes through the whole pipeline — parse (sanitising and not), aggregate, flush,
/// render Graphite (both protocols, both namespaces) and Prometheus — checking invariants.
/// Used by the fuzz target and its regression corpus; panics only on a bug.
#[doc(hidden)]
pub fn exercise(data: &[u8]) {
    use graphite::{GraphiteNaming, GraphiteStats, Protocol};
    let lines = data.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count() as u64;
    for sanitize in [true, false] {
        let cfg = AggregationConfig {
            percentiles: vec![90.0, -10.0, 99.9, 100.0, -100.0],
            histograms: vec![HistogramRule { metric: String::new(), bins: vec![0.5, 10.0, f64::INFINITY] }],
            max_series: 64,
            ..Default::default()
        };
        let mut store = Store::new(cfg);
        let mut shard = Shard::new(64);
        let counts = Parser::with_rule(KeyRule { sanitized: sanitize, sent_names: sanitize, ..KeyRule::default() })
            .parse_packet(data, &mut shard);
        assert_eq!(counts.lines, lines);
        assert!(shard.series() <= 64);
        store.merge(&mut shard);
        // The same packet with origin tags: the sender's, and each line's `|c:` container id
        // within a bound of 2.
        let mut origin = Parser::with_rule(KeyRule { sanitized: sanitize, sent_names: sanitize, ..KeyRule::default() });
        origin.reserve_tag_names(b"uid,program,container_id");
        origin.set_extra_tags(b"uid:0,program:fuzz");
        origin.set_client_containers(Some(parse::ClientContainers::new(2, std::sync::Arc::default())));
        let tagged = origin.parse_packet(data, &mut OriginChecked(&mut shard));
        assert_eq!(tagged.lines, lines);
        assert!(tagged.origin_other <= lines);
        assert!(shard.series() <= 64);
        store.merge(&mut shard);
        for (legacy, protocol) in [(true, Protocol::Plaintext), (false, Protocol::Pickle)] {
            let naming = GraphiteNaming { legacy_namespace: legacy, sanitize_names: !sanitize, ..Default::default() };
            let payload = store.flush(1, |view| graphite::render(view, &naming, protocol, &GraphiteStats::default()));
            assert!(!payload.is_empty());
        }
        let mut text = String::new();
        prometheus::render(&store, &mut text);
    }
}

/// A sink that checks every key of a parser with origin tags before the shard takes it: the
/// sender's `uid` and `program` appear once each, with the values the listener gave, whatever
/// the line said (a line cannot claim or contradict them).
struct OriginChecked<'a>(&'a mut Shard);

impl OriginChecked<'_> {
    fn check(key: &[u8]) {
        // Each tag as Graphite's naming would sanitise it later.
        let tags: Vec<Vec<u8>> = key
            .split(|b| *b == b';')
            .skip(1)
            .map(|t| {
                let mut clean = Vec::new();
                parse::sanitize_into(t, &mut clean);
                clean
            })
            .collect();
        for (name, value) in [(&b"uid="[..], &b"uid=0"[..]), (b"program=", b"program=fuzz")] {
            let found: Vec<&[u8]> = tags.iter().map(Vec::as_slice).filter(|t| t.starts_with(name)).collect();
            assert_eq!(found, [value], "key {}", String::from_utf8_lossy(key));
        }
    }
}

impl MetricSink for OriginChecked<'_> {
    fn metric(&mut self, metric: &Metric<'_>) {
        OriginChecked::check(metric.key);
        self.0.metric(metric);
    }

    fn bad_line(&mut self, line: &[u8]) {
        self.0.bad_line(line);
    }

    fn sent_name(&mut self, stored: &[u8], sent: &[u8]) {
        self.0.sent_name(stored, sent);
    }
}

#[cfg(test)]
mod regressions {
    /// Every input the fuzzer ever crashed on (and seeds) still runs cleanly.
    #[test]
    fn fuzz_regressions_replay() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions/statsd");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("fuzz/regressions/statsd") {
            let data = std::fs::read(entry.expect("entry").path()).expect("read");
            crate::exercise(&data);
            n += 1;
        }
        assert!(n > 0, "the regression corpus is empty");
    }
}
