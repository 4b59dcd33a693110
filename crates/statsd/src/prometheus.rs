//! The aggregated StatsD series in Prometheus text exposition format (0.0.4).
//!
//! Names: `.` and every other character Prometheus does not allow become `_`. Tags
//! (`name;k=v`, and DogStatsD tags, which arrive as the same) become labels. Counters are
//! cumulative `<name>_total`; gauges and sets (distinct members at the last flush) are gauges;
//! timers are summaries with one quantile per configured percentile (a negative percentile
//! -N is the quantile 1-N/100), from the last flush, and cumulative `_sum`/`_count`.
//! Two series whose names collide across types keep the first type; the rest are skipped.

use std::fmt::Write as _;
use std::ops::Range;

use crate::store::{CounterEntry, GaugeEntry, SetEntry, Store, TimerEntry};

/// Where a series' value is.
#[derive(Clone, Copy)]
enum Value<'a> {
    Counter(&'a CounterEntry),
    Gauge(&'a GaugeEntry),
    Set(&'a SetEntry),
    Timer(&'a TimerEntry),
}

impl Value<'_> {
    fn prom_type(&self) -> &'static str {
        match self {
            Value::Counter(_) => "counter",
            Value::Gauge(_) | Value::Set(_) => "gauge",
            Value::Timer(_) => "summary",
        }
    }
    fn help(&self) -> &'static str {
        match self {
            Value::Counter(_) => "StatsD counter (sum since start).",
            Value::Gauge(_) => "StatsD gauge.",
            Value::Set(_) => "StatsD set: distinct members in the last flush interval.",
            Value::Timer(_) => "StatsD timer: quantiles of the last flush interval.",
        }
    }
}

/// One series: its family name (a range of the shared name arena), key and value.
struct Row<'a> {
    name: Range<usize>,
    key: &'a [u8],
    value: Value<'a>,
}

/// What an exposition does with the series: the text format writes them, remote-write
/// collects them.
pub trait Exposition {
    /// A new metric family starts.
    fn family(&mut self, name: &str, kind: &'static str, help: &'static str);
    /// One sample of the current family: `suffix` (`_sum`, `_count` or empty) follows the
    /// family name; `key` carries the tags; `quantile` is set for summary quantiles.
    fn sample(&mut self, name: &str, suffix: &str, key: &[u8], quantile: Option<f64>, value: f64);
}

/// Renders `store` to `out`; returns how many series were skipped for name collisions.
pub fn render(store: &Store, out: &mut String) -> usize {
    let mut text = Text { out, labels: String::new() };
    visit(store, &mut text)
}

struct Text<'a> {
    out: &'a mut String,
    labels: String,
}

impl Exposition for Text<'_> {
    fn family(&mut self, name: &str, kind: &'static str, help: &'static str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, suffix: &str, key: &[u8], quantile: Option<f64>, value: f64) {
        self.labels.clear();
        write_labels(&mut self.labels, key);
        sample(self.out, name, suffix, &self.labels, quantile, value);
    }
}

/// Every series of `store`, in exposition order, to `sink`; returns how many were skipped for
/// name collisions.
///
/// Built for a million series: family names go into one shared arena, rows are sorted so each
/// family is contiguous, and samples go straight to the sink.
pub fn visit(store: &Store, sink: &mut impl Exposition) -> usize {
    let mut arena = String::new();
    let mut rows: Vec<Row<'_>> = Vec::with_capacity(store.series());
    let mut add = |key: &'_ [u8], suffix: &str, value| {
        let start = arena.len();
        push_metric_name(&mut arena, name_part(key));
        arena.push_str(suffix);
        (start..arena.len(), value)
    };
    for (key, c) in store.counters() {
        let (name, value) = add(key, "_total", Value::Counter(c));
        rows.push(Row { name, key, value });
    }
    for (key, g) in store.gauges() {
        let (name, value) = add(key, "", Value::Gauge(g));
        rows.push(Row { name, key, value });
    }
    for (key, s) in store.sets() {
        let (name, value) = add(key, "", Value::Set(s));
        rows.push(Row { name, key, value });
    }
    for (key, t) in store.timers() {
        let (name, value) = add(key, "", Value::Timer(t));
        rows.push(Row { name, key, value });
    }
    rows.sort_unstable_by(|a, b| arena[a.name.clone()].cmp(&arena[b.name.clone()]).then_with(|| a.key.cmp(b.key)));

    let percentiles = &store.config().percentiles;
    let mut skipped = 0;
    let mut family: Option<(&str, &'static str)> = None;
    for row in &rows {
        let name = &arena[row.name.clone()];
        let kind = row.value.prom_type();
        match family {
            Some((f, k)) if f == name => {
                if k != kind {
                    skipped += 1;
                    continue;
                }
            }
            _ => {
                sink.family(name, kind, row.value.help());
                family = Some((name, kind));
            }
        }
        let key = row.key;
        match row.value {
            Value::Counter(c) => sink.sample(name, "", key, None, c.total),
            Value::Gauge(g) => sink.sample(name, "", key, None, g.value),
            Value::Set(s) => sink.sample(name, "", key, None, s.last_size as f64),
            Value::Timer(t) => {
                let mut seen: Vec<u64> = Vec::new();
                for (pct, bound) in percentiles.iter().zip(&t.last_bounds) {
                    let q = if *pct > 0.0 { pct / 100.0 } else { 1.0 + pct / 100.0 };
                    if !(0.0..=1.0).contains(&q) || seen.contains(&q.to_bits()) {
                        continue;
                    }
                    seen.push(q.to_bits());
                    sink.sample(name, "", key, Some(q), bound.unwrap_or(f64::NAN));
                }
                sink.sample(name, "_sum", key, None, t.total_sum);
                sink.sample(name, "_count", key, None, t.total_count);
            }
        }
    }
    skipped
}

/// One sample line; `labels` is the inside of the braces (may be empty).
fn sample(out: &mut String, name: &str, suffix: &str, labels: &str, quantile: Option<f64>, value: f64) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() || quantile.is_some() {
        out.push('{');
        out.push_str(labels);
        if let Some(q) = quantile {
            if !labels.is_empty() {
                out.push(',');
            }
            out.push_str("quantile=\"");
            push_value(out, q);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    push_value(out, value);
    out.push('\n');
}

/// A sample value as Prometheus writes it (`NaN`, `+Inf`, `-Inf`, else the shortest decimal).
fn push_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{v}");
    }
}

/// The name part of a key (before the first `;`).
fn name_part(key: &[u8]) -> &[u8] {
    match key.iter().position(|b| *b == b';') {
        Some(i) => &key[..i],
        None => key,
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`: other characters become `_`; a leading digit gets a `_` before it.
fn push_metric_name(out: &mut String, name: &[u8]) {
    if name.first().is_none_or(u8::is_ascii_digit) {
        out.push('_');
    }
    out.extend(name.iter().map(|&b| if b.is_ascii_alphanumeric() || b == b'_' || b == b':' { b as char } else { '_' }));
}

/// The key's tags (`;k=v`) as `k="v",...` (see [`tag_labels`]).
fn write_labels(out: &mut String, key: &[u8]) {
    for (k, v) in tag_labels(key) {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(&k);
        out.push_str("=\"");
        escape_label_value(&v, out);
        out.push('"');
    }
}

/// A label value as the text format wants it: backslash, double quote and newline escaped.
pub fn escape_label_value(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// The key's tags (`;k=v`) as label pairs: names sanitised (`[a-zA-Z0-9_]`, an `l` before a
/// leading digit or `__`); valueless tags, repeated names and `quantile` (which summaries own)
/// dropped. No allocation for a key without tags.
pub fn tag_labels(key: &[u8]) -> Vec<(String, String)> {
    let mut tags = key.split(|b| *b == b';');
    tags.next();
    let mut labels: Vec<(String, String)> = Vec::new();
    for tag in tags {
        let (k, v) = match tag.iter().position(|b| *b == b'=') {
            Some(i) => (&tag[..i], &tag[i + 1..]),
            None => continue,
        };
        if v.is_empty() {
            continue;
        }
        let mut name = String::with_capacity(k.len() + 1);
        if k.first().is_none_or(|b| b.is_ascii_digit()) || k.starts_with(b"__") {
            name.push('l');
        }
        name.extend(k.iter().map(|&b| if b.is_ascii_alphanumeric() || b == b'_' { b as char } else { '_' }));
        if name == "quantile" || labels.iter().any(|(n, _)| *n == name) {
            continue;
        }
        labels.push((name, String::from_utf8_lossy(v).into_owned()));
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AggregationConfig, Parser, Shard};

    #[test]
    fn renders_every_type() {
        let mut store = Store::new(AggregationConfig::default());
        let mut shard = Shard::new(100);
        Parser::new(true).parse_packet(
            b"api.hits:2|c|#env:prod\napi.temp:3.5|g\napi.lat:10|ms\napi.lat:20|ms\nusers:a|s",
            &mut shard,
        );
        store.merge(&mut shard);
        store.flush(1, |_| ());
        let mut out = String::new();
        assert_eq!(render(&store, &mut out), 0);
        for want in [
            "# TYPE api_hits_total counter",
            "api_hits_total{env=\"prod\"} 2",
            "api_temp 3.5",
            "api_lat{quantile=\"0.9\"} 20",
            "api_lat_sum 30",
            "api_lat_count 2",
            "users 1",
            "statsd_packets_received_total 0",
        ] {
            assert!(out.lines().any(|l| l == want), "missing {want:?} in\n{out}");
        }
    }
}
