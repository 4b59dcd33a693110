//! The aggregated StatsD series in Prometheus text exposition format (0.0.4).
//!
//! Names: `.` and every other character Prometheus does not allow become `_`. Tags
//! (`name;k=v`, and DogStatsD tags, which arrive as the same) become labels. Counters are
//! cumulative `<name>_total`; gauges and sets (distinct members at the last flush) are gauges;
//! timers are summaries with one quantile per configured percentile (a negative percentile
//! -N is the quantile 1-N/100), from the last flush, and cumulative `_sum`/`_count`.
//! Two series whose names collide across types keep the first type; the rest are skipped.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::store::Store;

/// Renders `store` to `out`; returns how many series were skipped for name collisions.
pub fn render(store: &Store, out: &mut String) -> usize {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut skipped = 0;
    let mut add = |name: String, kind: &'static str, help: &'static str, sample: String| {
        let family = families.entry(name).or_insert_with(|| Family { kind, help, samples: Vec::new() });
        if family.kind == kind {
            family.samples.push(sample);
        } else {
            skipped += 1;
        }
    };
    for (key, c) in store.counters() {
        let (name, labels) = split_key(key);
        add(
            format!("{name}_total"),
            "counter",
            "StatsD counter (sum since start).",
            format!("{name}_total{labels} {}", fmt(c.total)),
        );
    }
    for (key, g) in store.gauges() {
        let (name, labels) = split_key(key);
        add(name.clone(), "gauge", "StatsD gauge.", format!("{name}{labels} {}", fmt(g.value)));
    }
    for (key, s) in store.sets() {
        let (name, labels) = split_key(key);
        add(
            name.clone(),
            "gauge",
            "StatsD set: distinct members in the last flush interval.",
            format!("{name}{labels} {}", s.last_size),
        );
    }
    let percentiles = &store.config().percentiles;
    for (key, t) in store.timers() {
        let (name, labels) = split_key(key);
        let mut samples = String::new();
        let mut seen = Vec::new();
        for (pct, bound) in percentiles.iter().zip(&t.last_bounds) {
            let q = if *pct > 0.0 { pct / 100.0 } else { 1.0 + pct / 100.0 };
            if !(0.0..=1.0).contains(&q) || seen.contains(&q.to_bits()) {
                continue;
            }
            seen.push(q.to_bits());
            let value = bound.map_or_else(|| "NaN".to_string(), fmt);
            let _ = writeln!(samples, "{name}{} {value}", with_label(&labels, "quantile", &fmt(q)));
        }
        let _ = writeln!(samples, "{name}_sum{labels} {}", fmt(t.total_sum));
        let _ = write!(samples, "{name}_count{labels} {}", fmt(t.total_count));
        add(name, "summary", "StatsD timer: quantiles of the last flush interval.", samples);
    }
    for (name, family) in families {
        let _ = writeln!(out, "# HELP {name} {}", family.help);
        let _ = writeln!(out, "# TYPE {name} {}", family.kind);
        for s in family.samples {
            out.push_str(&s);
            out.push('\n');
        }
    }
    skipped
}

struct Family {
    kind: &'static str,
    help: &'static str,
    samples: Vec<String>,
}

fn fmt(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// A metric name from the key's name part, and the `{...}` label set from its tags.
fn split_key(key: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(key);
    let mut parts = text.split(';');
    let name = metric_name(parts.next().unwrap_or_default());
    let mut labels: Vec<(String, String)> = Vec::new();
    for tag in parts {
        let (k, v) = tag.split_once('=').unwrap_or((tag, ""));
        let k = label_name(k);
        if v.is_empty() || k == "quantile" || labels.iter().any(|(have, _)| *have == k) {
            continue;
        }
        labels.push((k, v.to_string()));
    }
    let mut set = String::new();
    if !labels.is_empty() {
        set.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                set.push(',');
            }
            let _ = write!(set, "{k}=\"{}\"", escape(v));
        }
        set.push('}');
    }
    (name, set)
}

fn with_label(labels: &str, k: &str, v: &str) -> String {
    match labels.strip_suffix('}') {
        Some(open) => format!("{open},{k}=\"{v}\"}}"),
        None => format!("{{{k}=\"{v}\"}}"),
    }
}

fn metric_name(s: &str) -> String {
    let mut out: String =
        s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == ':' { c } else { '_' }).collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

fn label_name(s: &str) -> String {
    let mut out: String = s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) || out.starts_with("__") {
        out.insert(0, 'l');
    }
    out
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
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
