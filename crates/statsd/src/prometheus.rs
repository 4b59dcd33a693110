//! The aggregated StatsD series in Prometheus text exposition format (0.0.4).
//!
//! Names: `.` and every other character Prometheus does not allow become `_`. Tags
//! (`name;k=v`, and DogStatsD tags, which arrive as the same) become labels. Counters are
//! cumulative `<name>_total`; gauges and sets (distinct members at the last flush) are gauges;
//! timers are summaries with one quantile per configured percentile (a negative percentile
//! -N is the quantile 1-N/100), from the last flush, and cumulative `_sum`/`_count`.
//! Two series whose names collide across types keep the first type; the rest are left out, as
//! is a second series with the same name and labels (two keys that sanitise or map to one):
//! a scrape never fails over them, and [`Dropped`] says how many.
//!
//! A [`Namer`] (statsd_exporter's mapping files, in `floodgate-mapping`) may name the series
//! instead: its own family name (no `_total` added), extra labels and help, or drop the series.

use std::fmt::Write as _;
use std::ops::Range;

pub use floodgate_sketch::Exponential;

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
    /// The kind a [`Namer`] is asked about.
    fn series_kind(&self) -> SeriesKind {
        match self {
            Value::Counter(_) => SeriesKind::Counter,
            Value::Gauge(_) => SeriesKind::Gauge,
            Value::Set(_) => SeriesKind::Set,
            Value::Timer(_) => SeriesKind::Timer,
        }
    }
    /// Flushes since the series last received a value.
    fn idle(&self) -> crate::store::Idle {
        match self {
            Value::Counter(c) => c.idle,
            Value::Gauge(g) => g.idle,
            Value::Set(s) => s.idle,
            Value::Timer(t) => t.idle,
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

/// One series: its family name (a range of the shared name arena), key, value, and what a
/// [`Namer`] said of it.
struct Row<'a> {
    name: Range<usize>,
    key: &'a [u8],
    value: Value<'a>,
    named: Option<std::sync::Arc<Named>>,
}

/// The StatsD type of a series, as a [`Namer`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SeriesKind {
    /// A counter.
    Counter,
    /// A gauge.
    Gauge,
    /// A set (its size).
    Set,
    /// A timer, histogram or distribution.
    Timer,
}

/// A series as a [`Namer`] names it.
#[derive(Debug, Clone, PartialEq)]
pub struct Named {
    /// The family name (valid for Prometheus).
    pub name: String,
    /// Labels added to the series' own tags.
    pub labels: Vec<(String, String)>,
    /// `HELP` text, instead of the default.
    pub help: Option<String>,
    /// On a clash, the series' own tag wins over the namer's label (else the namer's does).
    pub honor_labels: bool,
    /// Timers: expose as a histogram (from the timer's cumulative sketch, when the store keeps
    /// one) instead of a summary.
    pub histogram: Option<HistogramLayout>,
    /// Timers: values are multiplied by this (statsd_exporter exposes `ms` timers in seconds:
    /// 0.001).
    pub timer_scale: f64,
    /// Every value is multiplied by this (a mapping rule's `scale`; a timer's after
    /// `timer_scale`): 1 for none.
    pub scale: f64,
    /// Timers as summaries: these quantiles (0 to 1; each must be among the store's
    /// `summary_quantiles`) instead of the store's `percentiles`.
    pub quantiles: Option<Vec<f64>>,
    /// Left out once it has received nothing for this long (statsd_exporter's `ttl`).
    pub ttl: Option<std::time::Duration>,
}

/// How a timer is exposed as a histogram.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramLayout {
    /// Classic buckets' upper bounds, finite and ascending ([`HistogramLayout::new`]; `+Inf`
    /// is added).
    pub buckets: Vec<f64>,
    /// Also a native histogram: its schema and most buckets (0: no limit).
    pub native: Option<(i32, usize)>,
}

impl HistogramLayout {
    /// Classic `buckets` (sorted, repeats and non-finite bounds left out) and the native
    /// layout, if any.
    pub fn new(buckets: &[f64], native: Option<(i32, usize)>) -> HistogramLayout {
        let mut buckets: Vec<f64> = buckets.iter().copied().filter(|b| b.is_finite()).collect();
        buckets.sort_by(f64::total_cmp);
        buckets.dedup();
        HistogramLayout { buckets, native }
    }
}

/// One series' value as an [`Exposition`] receives it.
#[derive(Debug, Clone, Copy)]
pub enum Series<'a> {
    /// A cumulative counter.
    Counter(f64),
    /// A gauge.
    Gauge(f64),
    /// A summary: (quantile, value) pairs, `_sum`, `_count`.
    Summary {
        /// Quantile and value.
        quantiles: &'a [(f64, f64)],
        /// Sum of every value since start.
        sum: f64,
        /// Values since start.
        count: f64,
    },
    /// A histogram: classic buckets as (upper bound, cumulative count), `+Inf` last; and the
    /// native layout when asked for.
    Histogram {
        /// Upper bound and cumulative count.
        buckets: &'a [(f64, f64)],
        /// Sum of every value since start.
        sum: f64,
        /// Values since start.
        count: f64,
        /// The native histogram.
        native: Option<&'a Exponential>,
    },
}

impl Series<'_> {
    /// The text format's samples of the series: suffix (`_sum`, `_count`, `_bucket` or empty),
    /// bound, value.
    pub fn samples(&self, mut sample: impl FnMut(&'static str, Option<Bound>, f64)) {
        match *self {
            Series::Counter(v) | Series::Gauge(v) => sample("", None, v),
            Series::Summary { quantiles, sum, count } => {
                for &(q, v) in quantiles {
                    sample("", Some(Bound::Quantile(q)), v);
                }
                sample("_sum", None, sum);
                sample("_count", None, count);
            }
            Series::Histogram { buckets, sum, count, .. } => {
                for &(le, n) in buckets {
                    sample("_bucket", Some(Bound::Le(le)), n);
                }
                sample("_sum", None, sum);
                sample("_count", None, count);
            }
        }
    }
}

/// The label that sets one sample of a family apart.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    /// A summary's `quantile`.
    Quantile(f64),
    /// A histogram bucket's `le` (upper bound, `+Inf` for the last).
    Le(f64),
}

impl Bound {
    /// The label's name.
    pub fn label(&self) -> &'static str {
        match self {
            Bound::Quantile(_) => "quantile",
            Bound::Le(_) => "le",
        }
    }

    /// Its value.
    pub fn value(&self) -> f64 {
        match self {
            Bound::Quantile(v) | Bound::Le(v) => *v,
        }
    }
}

/// Names series for the exposition (statsd_exporter's mapping files).
pub trait Namer {
    /// What to call the series whose key's name part is `name`: `Some` to rename it, `None`
    /// to drop it.
    fn name(&mut self, name: &str, kind: SeriesKind) -> Option<std::sync::Arc<Named>>;
}

/// A series' labels: its key's tags, and a [`Namer`]'s.
#[derive(Clone, Copy)]
pub struct Labels<'a> {
    /// The key (`name;k=v;...`).
    pub key: &'a [u8],
    /// The namer's labels, and whether the key's tags win a clash.
    pub named: Option<(&'a [(String, String)], bool)>,
}

impl Labels<'_> {
    /// Every label pair, sorted by name: the tags ([`tag_labels`]) and the namer's, a clash
    /// settled by `honor_labels`.
    pub fn pairs(&self) -> Vec<(String, String)> {
        let mut pairs = tag_labels(self.key);
        if let Some((extra, honor)) = self.named {
            for (k, v) in extra {
                match pairs.iter_mut().find(|(n, _)| n == k) {
                    Some(_) if honor => {}
                    Some(slot) => slot.1 = v.clone(),
                    None => pairs.push((k.clone(), v.clone())),
                }
            }
            pairs.sort_by(|a, b| a.0.cmp(&b.0));
        }
        pairs
    }
}

/// What an exposition does with the series: the text format writes them, remote-write
/// collects them, the protobuf format encodes them.
pub trait Exposition {
    /// A new metric family starts (`kind`: `counter`, `gauge`, `summary` or `histogram`).
    fn family(&mut self, name: &str, kind: &'static str, help: &str);
    /// One series of the current family.
    fn series(&mut self, name: &str, labels: Labels<'_>, value: &Series<'_>);
}

/// Series an exposition left out, by why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Their family name was already taken by a series of another type.
    pub conflicting_type: usize,
    /// A series with the same name and labels came first.
    pub duplicate: usize,
}

impl Dropped {
    /// Both.
    pub fn total(&self) -> usize {
        self.conflicting_type + self.duplicate
    }
}

/// Renders `store` to `out`; returns what was left out.
pub fn render(store: &Store, out: &mut String) -> Dropped {
    render_named(store, None, out)
}

/// [`render`], with series named by `namer` when there is one.
pub fn render_named(store: &Store, namer: Option<&mut dyn Namer>, out: &mut String) -> Dropped {
    let mut text = Text { out, labels: String::new() };
    visit_named(store, namer, &mut text)
}

struct Text<'a> {
    out: &'a mut String,
    labels: String,
}

impl Exposition for Text<'_> {
    fn series(&mut self, name: &str, labels: Labels<'_>, value: &Series<'_>) {
        self.labels.clear();
        match labels.named {
            None => write_labels(&mut self.labels, labels.key),
            Some(_) => write_pairs(&mut self.labels, &labels.pairs()),
        }
        let (out, labels) = (&mut *self.out, self.labels.as_str());
        value.samples(|suffix, bound, v| sample(out, name, suffix, labels, bound, v));
    }

    fn family(&mut self, name: &str, kind: &'static str, help: &str) {
        self.out.push_str("# HELP ");
        self.out.push_str(name);
        self.out.push(' ');
        // The text format escapes backslash and newline in HELP.
        for c in help.chars() {
            match c {
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                c => self.out.push(c),
            }
        }
        self.out.push('\n');
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }
}

/// Every series of `store`, in exposition order, to `sink`; returns what was left out.
///
/// Built for a million series: family names go into one shared arena, rows are sorted so each
/// family is contiguous, and samples go straight to the sink.
pub fn visit(store: &Store, sink: &mut impl Exposition) -> Dropped {
    visit_named(store, None, sink)
}

/// [`visit`], with series named by `namer` when there is one (a series it drops is not
/// visited, nor counted as left out).
pub fn visit_named<'s>(store: &'s Store, mut namer: Option<&mut dyn Namer>, sink: &mut impl Exposition) -> Dropped {
    let mut arena = String::new();
    let mut rows: Vec<Row<'s>> = Vec::with_capacity(store.series());
    let interval_ms = store.config().flush_interval_ms;
    let mut add = |key: &'s [u8], suffix: &str, value: Value<'s>| -> Option<Row<'s>> {
        let start = arena.len();
        let named = match namer.as_deref_mut() {
            Some(n) => {
                // The name as the client sent it, when sanitising changed it (statsd_exporter's
                // rules see raw names).
                let name = name_part(key);
                let sent = store.sent_name(name).unwrap_or(name);
                let named = n.name(&String::from_utf8_lossy(sent), value.series_kind())?;
                if named.ttl.is_some_and(|ttl| u128::from(value.idle().for_ms(interval_ms)) >= ttl.as_millis()) {
                    return None;
                }
                arena.push_str(&named.name);
                Some(named)
            }
            None => {
                push_metric_name(&mut arena, name_part(key));
                arena.push_str(suffix);
                None
            }
        };
        Some(Row { name: start..arena.len(), key, value, named })
    };
    rows.extend(store.counters().filter_map(|(key, c)| add(key, "_total", Value::Counter(c))));
    rows.extend(store.gauges().filter_map(|(key, g)| add(key, "", Value::Gauge(g))));
    rows.extend(store.sets().filter_map(|(key, s)| add(key, "", Value::Set(s))));
    rows.extend(store.timers().filter_map(|(key, t)| add(key, "", Value::Timer(t))));
    rows.sort_unstable_by(|a, b| arena[a.name.clone()].cmp(&arena[b.name.clone()]).then_with(|| a.key.cmp(b.key)));

    let percentiles = &store.config().percentiles;
    let mut dropped = Dropped::default();
    let mut family: Option<(&str, &'static str)> = None;
    let mut pairs = Vec::new();
    // The label sets of the current family so far, when it has more than one series.
    let mut label_sets: std::collections::HashSet<Vec<(String, String)>> = std::collections::HashSet::new();
    for (i, row) in rows.iter().enumerate() {
        let name = &arena[row.name.clone()];
        let histogram = match (row.value, row.named.as_ref().and_then(|n| n.histogram.as_ref())) {
            (Value::Timer(t), Some(layout)) => t.cumulative.as_deref().map(|c| (t, c, layout)),
            _ => None,
        };
        let kind = if histogram.is_some() { "histogram" } else { row.value.prom_type() };
        match family {
            Some((f, k)) if f == name => {
                if k != kind {
                    dropped.conflicting_type += 1;
                    continue;
                }
            }
            _ => {
                label_sets.clear();
                let default_help =
                    if histogram.is_some() { "StatsD timer: all values since start." } else { row.value.help() };
                let help = row.named.as_ref().and_then(|n| n.help.as_deref()).unwrap_or(default_help);
                sink.family(name, kind, help);
                family = Some((name, kind));
            }
        }
        let key = Labels { key: row.key, named: row.named.as_ref().map(|n| (n.labels.as_slice(), n.honor_labels)) };
        let shares_family = |r: Option<&Row<'_>>| r.is_some_and(|r| arena[r.name.clone()] == *name);
        if (shares_family(i.checked_sub(1).map(|j| &rows[j])) || shares_family(rows.get(i + 1)))
            && !label_sets.insert(key.pairs())
        {
            dropped.duplicate += 1;
            continue;
        }
        // Only `ms` values are in a unit to convert: DogStatsD's `h` and `d` carry none.
        let unit = match row.value {
            Value::Timer(t) if !t.units.unitless_only() => row.named.as_ref().map_or(1.0, |n| n.timer_scale),
            _ => 1.0,
        };
        let scale = unit * row.named.as_ref().map_or(1.0, |n| n.scale);
        pairs.clear();
        let native;
        let series = match row.value {
            Value::Counter(c) => Series::Counter(c.total * scale),
            Value::Gauge(g) => Series::Gauge(g.value * scale),
            Value::Set(s) => Series::Gauge(s.last_size as f64 * scale),
            Value::Timer(t) => match histogram {
                Some((_, sketch, layout)) => {
                    classic_buckets(t, sketch, &layout.buckets, scale, &mut pairs);
                    let weight = t.total_count / sketch.count().max(1) as f64;
                    native = layout.native.map(|(schema, max)| sketch.to_exponential(schema, max, scale, weight));
                    Series::Histogram {
                        buckets: &pairs,
                        sum: t.total_sum * scale,
                        count: t.total_count,
                        native: native.as_ref(),
                    }
                }
                None => {
                    // The namer's quantiles (computed per flush for those the store was told
                    // of: one it does not compute yet, after a reload, is left out), else the
                    // store's percentiles (`-N` is quantile 1 - N/100).
                    let mut push = |q: f64, value: Option<f64>| {
                        if (0.0..=1.0).contains(&q) && !pairs.iter().any(|(seen, _)| *seen == q) {
                            pairs.push((q, value.map_or(f64::NAN, |v| v * scale)));
                        }
                    };
                    match row.named.as_ref().and_then(|n| n.quantiles.as_deref()) {
                        Some(wanted) => {
                            let have = &store.config().summary_quantiles;
                            for q in wanted {
                                if let Some(i) = have.iter().position(|h| h == q) {
                                    push(*q, t.last_quantiles.get(i).copied().flatten());
                                }
                            }
                        }
                        None => {
                            for (pct, bound) in percentiles.iter().zip(&t.last_bounds) {
                                push(if *pct > 0.0 { pct / 100.0 } else { 1.0 + pct / 100.0 }, *bound);
                            }
                        }
                    }
                    Series::Summary { quantiles: &pairs, sum: t.total_sum * scale, count: t.total_count }
                }
            },
        };
        sink.series(name, key, &series);
    }
    dropped
}

/// A timer's classic histogram buckets (ascending `buckets`) as (upper bound, cumulative
/// count), `+Inf` last: from
/// its sketch of every value since start (values multiplied by `scale`; a value within the
/// sketch's 1 % of a bound may land in the bucket next to it), scaled to the
/// sample-rate-weighted count.
fn classic_buckets(
    t: &TimerEntry,
    sketch: &floodgate_sketch::DDSketch,
    buckets: &[f64],
    scale: f64,
    out: &mut Vec<(f64, f64)>,
) {
    let raw = sketch.count().max(1) as f64;
    let weight = t.total_count / raw;
    let mut bins = sketch.bins().peekable();
    let mut below = 0u64;
    for &le in buckets {
        while let Some((v, c)) = bins.peek() {
            if v * scale > le {
                break;
            }
            below += c;
            bins.next();
        }
        out.push((le, (below as f64 * weight).round()));
    }
    out.push((f64::INFINITY, t.total_count));
}

/// One sample line; `labels` is the inside of the braces (may be empty).
fn sample(out: &mut String, name: &str, suffix: &str, labels: &str, bound: Option<Bound>, value: f64) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() || bound.is_some() {
        out.push('{');
        out.push_str(labels);
        if let Some(b) = bound {
            if !labels.is_empty() {
                out.push(',');
            }
            out.push_str(b.label());
            out.push_str("=\"");
            push_value(out, b.value());
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

/// Label pairs as `k="v",...`.
fn write_pairs(out: &mut String, pairs: &[(String, String)]) {
    for (k, v) in pairs {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        escape_label_value(v, out);
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
        assert_eq!(render(&store, &mut out), Dropped::default());
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

    /// A namer from a function.
    struct FnNamer<F>(F);

    impl<F: FnMut(&str, SeriesKind) -> Option<Named>> Namer for FnNamer<F> {
        fn name(&mut self, name: &str, kind: SeriesKind) -> Option<std::sync::Arc<Named>> {
            (self.0)(name, kind).map(std::sync::Arc::new)
        }
    }

    /// The built-in name, nothing else.
    fn plain(name: &str) -> Named {
        Named {
            name: name.replace('.', "_"),
            labels: Vec::new(),
            help: None,
            honor_labels: false,
            histogram: None,
            timer_scale: 1.0,
            scale: 1.0,
            quantiles: None,
            ttl: None,
        }
    }

    #[test]
    fn a_namer_renames_drops_and_makes_histograms_from_the_cumulative_sketch() {
        let mut store = Store::new(AggregationConfig { cumulative_sketches: true, ..AggregationConfig::default() });
        for packet in [&b"lat:5|ms\nlat:50|ms\ndrop.me:1|c\nhits:1|c|#team:b"[..], b"lat:500|ms\nlat:9|ms"] {
            let mut shard = Shard::new(100);
            Parser::new(true).parse_packet(packet, &mut shard);
            store.merge(&mut shard);
            store.flush(1, |_| ());
        }
        let mut out = String::new();
        let mut histograms = FnNamer(|name: &str, kind| {
            (name != "drop.me").then(|| Named {
                labels: vec![("team".into(), "a".into())],
                help: Some("Mapped.".into()),
                histogram: (kind == SeriesKind::Timer).then(|| HistogramLayout::new(&[100.0, 10.0], Some((0, 0)))),
                ..plain(name)
            })
        });
        render_named(&store, Some(&mut histograms), &mut out);
        for want in [
            "# HELP lat Mapped.",
            "# TYPE lat histogram",
            "lat_bucket{team=\"a\",le=\"10\"} 2",
            "lat_bucket{team=\"a\",le=\"100\"} 3",
            "lat_bucket{team=\"a\",le=\"+Inf\"} 4",
            "lat_sum{team=\"a\"} 564",
            "lat_count{team=\"a\"} 4",
            // The namer's label wins over the tag unless honor_labels.
            "hits{team=\"a\"} 1",
        ] {
            assert!(out.lines().any(|l| l == want), "missing {want:?} in\n{out}");
        }
        assert!(!out.contains("drop_me"), "{out}");
    }

    #[test]
    fn colliding_names_and_duplicate_series_are_left_out_and_counted() {
        let mut store = Store::new(AggregationConfig::default());
        let mut shard = Shard::new(100);
        // `a.b` and `a_b` are one series in Prometheus; `x.total` (a gauge) takes the counter
        // `x`'s name. Different tag keys under one name are fine.
        Parser::new(true).parse_packet(b"a.b:1|g\na_b:2|g\nx:1|c\nx.total:5|g\nl:1|g|#k:1\nl:2|g|#j:2", &mut shard);
        store.merge(&mut shard);
        store.flush(1, |_| ());
        let mut out = String::new();
        let dropped = render(&store, &mut out);
        assert_eq!(dropped, Dropped { conflicting_type: 1, duplicate: 1 }, "{out}");
        assert_eq!(out.lines().filter(|l| l.starts_with("a_b ")).count(), 1, "{out}");
        assert!(out.lines().any(|l| l == "l{k=\"1\"} 1") && out.lines().any(|l| l == "l{j=\"2\"} 2"), "{out}");
    }

    #[test]
    fn only_millisecond_timers_are_scaled() {
        let mut store = Store::new(AggregationConfig::default());
        let mut shard = Shard::new(100);
        Parser::new(true).parse_packet(b"lat:500|ms\nsize:500|d\nbytes:500|h\nmixed:500|h\nmixed:500|ms", &mut shard);
        store.merge(&mut shard);
        store.flush(1, |_| ());
        let mut out = String::new();
        let mut seconds = FnNamer(|name: &str, _| Some(Named { timer_scale: 0.001, ..plain(name) }));
        render_named(&store, Some(&mut seconds), &mut out);
        for want in ["lat_sum 0.5", "size_sum 500", "bytes_sum 500", "mixed_sum 1"] {
            assert!(out.lines().any(|l| l == want), "missing {want:?} in\n{out}");
        }
    }

    #[test]
    fn a_ttl_hides_series_idle_that_long_until_they_come_back() {
        let mut store = Store::new(AggregationConfig { flush_interval_ms: 1000, ..AggregationConfig::default() });
        let mut flush = |packet: &[u8]| {
            let mut shard = Shard::new(100);
            Parser::new(true).parse_packet(packet, &mut shard);
            store.merge(&mut shard);
            store.flush(1, |_| ());
            let mut out = String::new();
            let mut expiring = FnNamer(|name: &str, _| {
                Some(Named { ttl: Some(std::time::Duration::from_millis(1500)), ..plain(name) })
            });
            render_named(&store, Some(&mut expiring), &mut out);
            out.lines().find(|l| l.starts_with("hits ")).map(String::from)
        };
        assert_eq!(flush(b"hits:1|c").as_deref(), Some("hits 1"));
        assert_eq!(flush(b"").as_deref(), Some("hits 1"), "idle 1 s");
        assert_eq!(flush(b""), None, "idle 2 s: past the ttl");
        assert_eq!(flush(b"hits:1|c").as_deref(), Some("hits 2"), "back, still cumulative");
    }
}
