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

/// Renders `store` to `out`; returns how many series were skipped for name collisions.
///
/// Built for a million series: family names go into one shared arena, rows are sorted so each
/// family is contiguous, and samples are written straight into `out`.
pub fn render(store: &Store, out: &mut String) -> usize {
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
    let mut labels = String::new();
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
                let _ = writeln!(out, "# HELP {name} {}", row.value.help());
                let _ = writeln!(out, "# TYPE {name} {kind}");
                family = Some((name, kind));
            }
        }
        labels.clear();
        write_labels(&mut labels, row.key);
        match row.value {
            Value::Counter(c) => sample(out, name, "", &labels, None, c.total),
            Value::Gauge(g) => sample(out, name, "", &labels, None, g.value),
            Value::Set(s) => sample(out, name, "", &labels, None, s.last_size as f64),
            Value::Timer(t) => {
                let mut seen: Vec<u64> = Vec::new();
                for (pct, bound) in percentiles.iter().zip(&t.last_bounds) {
                    let q = if *pct > 0.0 { pct / 100.0 } else { 1.0 + pct / 100.0 };
                    if !(0.0..=1.0).contains(&q) || seen.contains(&q.to_bits()) {
                        continue;
                    }
                    seen.push(q.to_bits());
                    sample(out, name, "", &labels, Some(q), bound.unwrap_or(f64::NAN));
                }
                sample(out, name, "_sum", &labels, None, t.total_sum);
                sample(out, name, "_count", &labels, None, t.total_count);
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

/// The key's tags (`;k=v`) as `k="v",...`: names sanitised, valueless tags and repeated names
/// (and `quantile`, which summaries own) dropped.
fn write_labels(out: &mut String, key: &[u8]) {
    let mut tags = key.split(|b| *b == b';');
    tags.next();
    let mut names: Vec<Range<usize>> = Vec::new();
    for tag in tags {
        let (k, v) = match tag.iter().position(|b| *b == b'=') {
            Some(i) => (&tag[..i], &tag[i + 1..]),
            None => continue,
        };
        if v.is_empty() {
            continue;
        }
        let mark = out.len();
        if !out.is_empty() {
            out.push(',');
        }
        let start = out.len();
        if k.first().is_none_or(|b| b.is_ascii_digit()) || k.starts_with(b"__") {
            out.push('l');
        }
        out.extend(k.iter().map(|&b| if b.is_ascii_alphanumeric() || b == b'_' { b as char } else { '_' }));
        let end = out.len();
        let label = &out[start..end];
        if label == "quantile" || names.iter().any(|r| &out[r.clone()] == label) {
            out.truncate(mark);
            continue;
        }
        names.push(start..end);
        out.push_str("=\"");
        for c in String::from_utf8_lossy(v).chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
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
