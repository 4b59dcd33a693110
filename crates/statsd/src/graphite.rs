//! Graphite payloads with Etsy statsd 0.9.0's names, in plaintext or pickle.
//!
//! Names follow its graphite backend: the legacy namespace (`stats.NAME`, `stats_counts.NAME`,
//! `stats.timers.NAME.upper_90`, `statsd.numStats`) or the new one built from `global_prefix`,
//! `prefix_counter`, ... and `global_suffix`; tags (`;k=v`) go after the suffix. The pickle
//! payload is byte-for-byte what Etsy statsd sends (protocol 0, values as strings).

use std::time::Instant;

use crate::number::write_js_number;
use crate::parse::sanitize_into;
use crate::store::FlushView;

/// Graphite naming options (Etsy's `graphite.*`, `prefixStats`, `flush_counts`).
#[derive(Debug, Clone, PartialEq)]
pub struct GraphiteNaming {
    /// `legacyNamespace`.
    pub legacy_namespace: bool,
    /// `globalPrefix`.
    pub global_prefix: String,
    /// `prefixCounter`.
    pub prefix_counter: String,
    /// `prefixTimer`.
    pub prefix_timer: String,
    /// `prefixGauge`.
    pub prefix_gauge: String,
    /// `prefixSet`.
    pub prefix_set: String,
    /// `globalSuffix` (empty = none).
    pub global_suffix: String,
    /// `prefixStats`.
    pub prefix_stats: String,
    /// `flush_counts`.
    pub flush_counts: bool,
    /// Sanitise names on output: Etsy's backend does so when `keyNameSanitize` is off.
    pub sanitize_names: bool,
}

impl Default for GraphiteNaming {
    fn default() -> Self {
        GraphiteNaming {
            legacy_namespace: true,
            global_prefix: "stats".into(),
            prefix_counter: "counters".into(),
            prefix_timer: "timers".into(),
            prefix_gauge: "gauges".into(),
            prefix_set: "sets".into(),
            global_suffix: String::new(),
            prefix_stats: "statsd".into(),
            flush_counts: true,
            sanitize_names: false,
        }
    }
}

/// Graphite wire formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `name value timestamp\n` lines (Carbon's line receiver, port 2003).
    Plaintext,
    /// Pickled list of `(name, (timestamp, value))`, length-prefixed (port 2004).
    Pickle,
}

/// The Graphite backend's own statistics, written in every payload as `graphiteStats.*`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GraphiteStats {
    /// Unix time of the last failed send (0 = never).
    pub last_exception: i64,
    /// Unix time of the last successful send (start time before the first).
    pub last_flush: i64,
    /// Milliseconds the last send took.
    pub flush_time: u64,
    /// Bytes of the last payload.
    pub flush_length: u64,
}

/// Namespaces resolved from the options.
struct Namespaces<'a> {
    global: Vec<&'a str>,
    counter: Vec<&'a str>,
    timer: Vec<&'a str>,
    gauge: Vec<&'a str>,
    set: Vec<&'a str>,
}

impl GraphiteNaming {
    fn namespaces<'a>(&'a self) -> Namespaces<'a> {
        if self.legacy_namespace {
            return Namespaces {
                global: vec!["stats"],
                counter: vec!["stats"],
                timer: vec!["stats", "timers"],
                gauge: vec!["stats", "gauges"],
                set: vec!["stats", "sets"],
            };
        }
        let base: Vec<&str> = [self.global_prefix.as_str()].into_iter().filter(|p| !p.is_empty()).collect();
        let with = |p: &'a str| -> Vec<&'a str> {
            let mut v = base.clone();
            if !p.is_empty() {
                v.push(p);
            }
            v
        };
        Namespaces {
            global: base.clone(),
            counter: with(&self.prefix_counter),
            timer: with(&self.prefix_timer),
            gauge: with(&self.prefix_gauge),
            set: with(&self.prefix_set),
        }
    }

    fn suffix(&self) -> String {
        if self.global_suffix.is_empty() {
            String::new()
        } else {
            format!(".{}", self.global_suffix)
        }
    }
}

/// The payloads of one flush being built, one per destination. Each metric goes to the
/// destinations `route` picks for its name (one destination: always the first).
struct Payloads<R> {
    protocol: Protocol,
    /// Each destination's bytes and metric count.
    out: Vec<(Vec<u8>, usize)>,
    /// The metric being written: its name (filled by the caller), number, and encoding.
    name: Vec<u8>,
    number: String,
    encoded: Vec<u8>,
    picks: Vec<usize>,
    route: R,
}

impl<R: FnMut(&[u8], &mut Vec<usize>)> Payloads<R> {
    fn new(protocol: Protocol, destinations: usize, capacity: usize, route: R) -> Self {
        let each = capacity / destinations.max(1);
        let out = (0..destinations)
            .map(|_| {
                let mut buf = Vec::with_capacity(each);
                if protocol == Protocol::Pickle {
                    buf.extend_from_slice(&[0, 0, 0, 0]); // length, filled in by `finish`
                    buf.extend_from_slice(b"(l");
                }
                (buf, 0)
            })
            .collect();
        Payloads {
            protocol,
            out,
            name: Vec::with_capacity(128),
            number: String::with_capacity(32),
            encoded: Vec::with_capacity(192),
            picks: Vec::with_capacity(destinations),
            route,
        }
    }

    /// Adds the metric whose name is in `self.name` to the payloads of its destinations.
    fn push(&mut self, value: f64, ts: i64) {
        self.number.clear();
        write_js_number(&mut self.number, value);
        let mut ts_buf = itoa::Buffer::new();
        let ts = ts_buf.format(ts).as_bytes();
        let e = &mut self.encoded;
        e.clear();
        match self.protocol {
            Protocol::Plaintext => {
                e.extend_from_slice(&self.name);
                e.push(b' ');
                e.extend_from_slice(self.number.as_bytes());
                e.push(b' ');
                e.extend_from_slice(ts);
                e.push(b'\n');
            }
            Protocol::Pickle => {
                e.extend_from_slice(b"(S'");
                e.extend_from_slice(&self.name);
                e.extend_from_slice(b"'\n(L");
                e.extend_from_slice(ts);
                e.extend_from_slice(b"L\nS'");
                e.extend_from_slice(self.number.as_bytes());
                e.extend_from_slice(b"'\ntta");
            }
        }
        (self.route)(&self.name, &mut self.picks);
        for &i in &self.picks {
            if let Some((buf, metrics)) = self.out.get_mut(i) {
                buf.extend_from_slice(&self.encoded);
                *metrics += 1;
            }
        }
    }

    fn finish(mut self) -> Vec<(Vec<u8>, usize)> {
        if self.protocol == Protocol::Pickle {
            for (buf, _) in &mut self.out {
                buf.push(b'.');
                let len = (buf.len() - 4) as u32;
                buf[..4].copy_from_slice(&len.to_be_bytes());
            }
        }
        self.out
    }
}

/// Etsy's `format(namespace, key, ...extras)`: namespace, name, extras joined by `.`, then the
/// suffix, then the key's tags.
fn write_name(out: &mut Vec<u8>, namespace: &[&str], key: &[u8], extras: &[&str], suffix: &str, sanitize: bool) {
    out.clear();
    let (name, tags) = match key.iter().position(|b| *b == b';') {
        Some(i) => (&key[..i], &key[i..]),
        None => (key, &[][..]),
    };
    for ns in namespace {
        out.extend_from_slice(ns.as_bytes());
        out.push(b'.');
    }
    if sanitize {
        sanitize_into(name, out);
    } else {
        out.extend_from_slice(name);
    }
    for e in extras {
        out.push(b'.');
        out.extend_from_slice(e.as_bytes());
    }
    out.extend_from_slice(suffix.as_bytes());
    out.extend_from_slice(tags);
}

/// Builds the whole payload of one flush, as Etsy statsd's graphite backend would send it.
pub fn render(view: &FlushView<'_>, naming: &GraphiteNaming, protocol: Protocol, stats: &GraphiteStats) -> Vec<u8> {
    let only = |_: &[u8], picks: &mut Vec<usize>| {
        picks.clear();
        picks.push(0);
    };
    render_sharded(view, naming, protocol, stats, 1, only).pop().map(|(bytes, _)| bytes).unwrap_or_default()
}

/// One flush as [`render`] builds it, split over `destinations` payloads: `route` puts the
/// indexes of a metric's destinations (below `destinations`) into its vector, given the
/// metric's full name. Each payload comes with the number of metrics in it; a payload can be
/// empty (pickle: an empty list).
pub fn render_sharded(
    view: &FlushView<'_>,
    naming: &GraphiteNaming,
    protocol: Protocol,
    stats: &GraphiteStats,
    destinations: usize,
    route: impl FnMut(&[u8], &mut Vec<usize>),
) -> Vec<(Vec<u8>, usize)> {
    let started = Instant::now();
    let ns = naming.namespaces();
    let suffix = naming.suffix();
    let sanitize = naming.sanitize_names;
    let ts = view.timestamp;
    let lines = view.counters().len() * 2 + view.timers.len() * 16 + view.gauges().len() + view.sets().len() + 8;
    let mut p = Payloads::new(protocol, destinations, lines * 48, route);

    for (key, value) in view.counters() {
        let rate = value / view.interval_secs;
        if naming.legacy_namespace {
            write_name(&mut p.name, &ns.counter, key, &[], &suffix, sanitize);
            p.push(rate, ts);
            if naming.flush_counts {
                write_name(&mut p.name, &["stats_counts"], key, &[], &suffix, sanitize);
                p.push(value, ts);
            }
        } else {
            write_name(&mut p.name, &ns.counter, key, &["rate"], &suffix, sanitize);
            p.push(rate, ts);
            if naming.flush_counts {
                write_name(&mut p.name, &ns.counter, key, &["count"], &suffix, sanitize);
                p.push(value, ts);
            }
        }
    }
    for (key, stats) in &view.timers {
        for (stat, value) in stats {
            write_name(&mut p.name, &ns.timer, key, &[stat], &suffix, sanitize);
            p.push(*value, ts);
        }
    }
    for (key, value) in view.gauges() {
        write_name(&mut p.name, &ns.gauge, key, &[], &suffix, sanitize);
        p.push(value, ts);
    }
    for (key, size) in view.sets() {
        write_name(&mut p.name, &ns.set, key, &["count"], &suffix, sanitize);
        p.push(size as f64, ts);
    }

    let prefix = naming.prefix_stats.as_bytes();
    let calculation_ms = started.elapsed().as_millis() as f64;
    let internal: [(&[&str], f64); 3] = [
        (&["numStats"], view.num_stats as f64),
        (&["graphiteStats", "calculationtime"], calculation_ms),
        (&["processing_time"], view.processing_time_ms as f64),
    ];
    for (extras, value) in internal {
        if naming.legacy_namespace {
            // Etsy: prefixStats + '.numStats', 'stats.' + prefixStats + '.graphiteStats...'
            let ns: &[&str] = if extras[0] == "numStats" { &[] } else { &["stats"] };
            write_name(&mut p.name, ns, prefix, extras, &suffix, false);
        } else {
            write_name(&mut p.name, &ns.global, prefix, extras, &suffix, false);
        }
        p.push(value, ts);
    }
    let backend = [
        ("last_exception", stats.last_exception as f64),
        ("last_flush", stats.last_flush as f64),
        ("flush_time", stats.flush_time as f64),
        ("flush_length", stats.flush_length as f64),
    ];
    for (stat, value) in backend {
        // Etsy: globalNamespace.concat(prefixStats).join('.') + '.graphiteStats.' + stat + suffix
        p.name.clear();
        for part in ns.global.iter().map(|s| s.as_bytes()).chain([prefix]) {
            p.name.extend_from_slice(part);
            p.name.push(b'.');
        }
        p.name.extend_from_slice(b"graphiteStats.");
        p.name.extend_from_slice(stat.as_bytes());
        p.name.extend_from_slice(suffix.as_bytes());
        p.push(value, ts);
    }
    p.finish()
}

/// Metrics in a payload (for counting what was sent).
pub fn count_metrics(payload: &[u8], protocol: Protocol) -> usize {
    match protocol {
        Protocol::Plaintext => payload.iter().filter(|b| **b == b'\n').count(),
        // Each metric ends `'\ntta` (two tuples closed, appended to the list).
        Protocol::Pickle => payload.windows(4).filter(|w| w == b"\ntta").count(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AggregationConfig, Parser, Shard, Store};

    fn flush_text(input: &str, naming: &GraphiteNaming, protocol: Protocol) -> Vec<u8> {
        let mut store = Store::new(AggregationConfig::default());
        let mut shard = Shard::new(1000);
        Parser::new(true).parse_packet(input.as_bytes(), &mut shard);
        store.merge(&mut shard);
        store.flush(1_700_000_000, |view| render(view, naming, protocol, &GraphiteStats::default()))
    }

    fn lines(payload: &[u8]) -> Vec<String> {
        let mut l: Vec<String> = String::from_utf8_lossy(payload).lines().map(String::from).collect();
        l.sort();
        l
    }

    #[test]
    fn legacy_names() {
        let out = lines(&flush_text(
            "a:3|c\ng:5|g\nt:1|ms\nu:x|s\nr;env=p:1|c",
            &GraphiteNaming::default(),
            Protocol::Plaintext,
        ));
        for want in [
            "stats.a 0.3 1700000000",
            "stats_counts.a 3 1700000000",
            "stats.gauges.g 5 1700000000",
            "stats.timers.t.upper_90 1 1700000000",
            "stats.timers.t.count_ps 0.1 1700000000",
            "stats.sets.u.count 1 1700000000",
            "stats.r;env=p 0.1 1700000000",
            "statsd.numStats 8 1700000000",
            "stats.statsd.bad_lines_seen 0 1700000000",
            "stats.statsd.graphiteStats.last_flush 0 1700000000",
        ] {
            assert!(out.iter().any(|l| l == want), "missing {want:?} in {out:#?}");
        }
    }

    #[test]
    fn new_namespace_with_suffix() {
        let naming = GraphiteNaming { legacy_namespace: false, global_suffix: "host1".into(), ..Default::default() };
        let out = lines(&flush_text("a:3|c\nr;env=p:1|c", &naming, Protocol::Plaintext));
        for want in [
            "stats.counters.a.rate.host1 0.3 1700000000",
            "stats.counters.a.count.host1 3 1700000000",
            "stats.counters.r.rate.host1;env=p 0.1 1700000000",
            "stats.statsd.numStats.host1 5 1700000000",
            "stats.statsd.graphiteStats.flush_length.host1 0 1700000000",
        ] {
            assert!(out.iter().any(|l| l == want), "missing {want:?} in {out:#?}");
        }
    }

    #[test]
    fn a_sharded_flush_puts_each_metric_in_its_destinations_payloads_only() {
        let input = "a:3|c\ng:5|g\nt:1|ms\nu:x|s\nr;env=p:1|c\nlonger.name:2|c";
        let naming = GraphiteNaming::default();
        // Two of three destinations, chosen by the name's length.
        let route = |name: &[u8], picks: &mut Vec<usize>| {
            picks.clear();
            picks.extend([name.len() % 3, (name.len() + 1) % 3]);
        };
        let mut store = Store::new(AggregationConfig::default());
        let mut shard = Shard::new(1000);
        Parser::new(true).parse_packet(input.as_bytes(), &mut shard);
        store.merge(&mut shard);
        let parts = store.flush(1_700_000_000, |view| {
            render_sharded(view, &naming, Protocol::Plaintext, &GraphiteStats::default(), 3, route)
        });
        let whole = lines(&flush_text(input, &naming, Protocol::Plaintext));
        let parts: Vec<Vec<String>> = parts
            .iter()
            .map(|(bytes, metrics)| {
                assert_eq!(*metrics, count_metrics(bytes, Protocol::Plaintext));
                lines(bytes)
            })
            .collect();
        // The calculation time is measured per render; every other line is the same.
        for line in whole.iter().filter(|l| !l.contains("calculationtime")) {
            let name = line.split(' ').next().unwrap();
            let mut want = vec![name.len() % 3, (name.len() + 1) % 3];
            want.sort();
            let have: Vec<usize> = (0..3).filter(|i| parts[*i].contains(line)).collect();
            assert_eq!(have, want, "{line}");
        }
        assert_eq!(parts.iter().map(Vec::len).sum::<usize>(), whole.len() * 2);
        // Pickle: each part framed on its own, an empty one an empty list.
        let mut store = Store::new(AggregationConfig::default());
        let parts = store.flush(1_700_000_000, |view| {
            let first = |_: &[u8], picks: &mut Vec<usize>| {
                picks.clear();
                picks.push(0);
            };
            render_sharded(view, &naming, Protocol::Pickle, &GraphiteStats::default(), 2, first)
        });
        assert!(parts[0].1 > 0 && parts[0].0.ends_with(b"tta."));
        assert_eq!(parts[1], (b"\0\0\0\x03(l.".to_vec(), 0));
    }

    #[test]
    fn pickle_is_framed() {
        let payload = flush_text("a:1|c", &GraphiteNaming::default(), Protocol::Pickle);
        let len = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) as usize;
        assert_eq!(len, payload.len() - 4);
        assert!(payload[4..].starts_with(b"(l(S'stats.") || payload[4..].starts_with(b"(l(S'"));
        assert!(payload.ends_with(b"tta."));
        let text = flush_text("a:1|c", &GraphiteNaming::default(), Protocol::Plaintext);
        assert_eq!(count_metrics(&payload, Protocol::Pickle), count_metrics(&text, Protocol::Plaintext));
    }
}
