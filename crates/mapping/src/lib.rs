//! statsd_exporter's mapping files, read unchanged: rules that turn a StatsD name such as
//! `api.prod.get.users.200` into a Prometheus name and labels
//! (`http_requests_total{env="prod",method="get",route="users",code="200"}`).
//!
//! The semantics are statsd_exporter's:
//! - A rule is a glob (the default; fields separated by `.`, `*` capturing one whole field) or
//!   a regular expression (`match_type: regex`, unanchored, as Go's `regexp` searches).
//! - Glob rules are tried before regex rules, whatever their order in the file. Among the glob
//!   rules that match, the first defined wins. With `defaults.glob_disable_ordering` the most
//!   specific one wins instead: a literal field beats `*`, earliest field first. Regex rules
//!   are tried in order.
//! - `match_metric_type` limits a rule to counters, gauges or observers (timers, histograms,
//!   distributions).
//! - `$1`, `${1}` in `name` and label values are captures. Glob templates expand as
//!   statsd_exporter's glob formatter does; regex templates as Go's `Regexp.Expand` does,
//!   which Rust's `regex` follows.
//! - `$0` is the whole name, in glob and regex templates alike.
//! - `scale` multiplies a rule's values (`processed_kilobytes` → `processed_bytes`).
//! - `action: drop` drops the metric. A name matched by no rule is escaped
//!   ([`escape_metric_name`]).
//! - The file is checked as statsd_exporter checks it: a rule without a name, a name or label
//!   name Prometheus cannot take, a bad glob or regex, and histogram and summary options on
//!   one rule are errors naming the rule.

pub mod config;
pub mod glob;

use std::collections::BTreeMap;
use std::time::Duration;

use config::{MappingFile, Objective, Rule};
use glob::Glob;

/// The StatsD type a rule may be limited to (`match_metric_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MetricType {
    /// `c`.
    Counter,
    /// `g` (and sets, which statsd_exporter does not have: floodgate exports them as gauges).
    Gauge,
    /// `ms`, `h`, `d`.
    Observer,
}

/// How a timer or distribution is exposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObserverType {
    /// Quantiles, `_sum`, `_count`.
    Summary,
    /// `_bucket{le}`, `_sum`, `_count`.
    Histogram,
}

/// A native histogram's resolution: Prometheus' exponential schema (bucket bounds are powers
/// of `2^(2^-schema)`), and the most buckets before it is lowered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NativeOptions {
    /// -4 to 8.
    pub schema: i32,
    /// 0: no limit.
    pub max_buckets: u32,
}

impl NativeOptions {
    /// The schema client_golang picks for a bucket factor (the largest whose growth factor
    /// does not pass it); `None` for a factor of 1 or less (no native histogram).
    pub fn from_factor(factor: f64, max_buckets: u32) -> Option<NativeOptions> {
        if factor.is_nan() || factor <= 1.0 {
            return None;
        }
        let floor = factor.log2().log2().floor();
        let schema = if floor <= -8.0 {
            8
        } else if floor >= 4.0 {
            -4
        } else {
            -(floor as i32)
        };
        Some(NativeOptions { schema, max_buckets })
    }
}

/// What a rule says beyond the name: the options of the rule that matched, or the defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleOptions {
    /// Its index in the file (`None`: the `defaults` block, for names no rule matched).
    pub index: Option<usize>,
    /// `help`.
    pub help: Option<String>,
    /// `observer_type` (after defaults); `None`: the exporter's own default.
    pub observer_type: Option<ObserverType>,
    /// Histogram buckets (after defaults).
    pub buckets: Vec<f64>,
    /// Histograms: also native, at this resolution (after defaults).
    pub native: Option<NativeOptions>,
    /// Summary quantiles (after defaults).
    pub quantiles: Vec<f64>,
    /// `ttl` (after defaults); `None`: never expires.
    pub ttl: Option<Duration>,
    /// The metric's own tags win over the rule's labels.
    pub honor_labels: bool,
    /// `scale`: every value is multiplied by it (a timer's after milliseconds become
    /// seconds), as statsd_exporter does; `None`: unscaled.
    pub scale: Option<f64>,
}

/// The outcome of mapping one name.
#[derive(Debug, Clone, PartialEq)]
pub enum Mapped {
    /// No rule matched: the name escaped, no labels.
    Unmapped(String),
    /// A rule said `action: drop`.
    Dropped,
    /// A rule matched, but its name expanded to one Prometheus cannot take (a capture held a
    /// `.`, say): not exported, and counted.
    Invalid(String),
    /// A rule matched.
    Rule {
        /// The Prometheus name.
        name: String,
        /// The rule's labels, expanded, sorted by name.
        labels: Vec<(String, String)>,
        /// The rule's options.
        options: Box<RuleOptions>,
    },
}

/// A bad mapping file: which rule, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

enum Matcher {
    Glob(Glob),
    Regex(regex::Regex),
}

struct CompiledRule {
    matcher: Matcher,
    metric_type: Option<MetricType>,
    name: String,
    labels: Vec<(String, String)>,
    drop: bool,
    options: RuleOptions,
}

/// A loaded mapping file.
pub struct Mapper {
    rules: Vec<CompiledRule>,
    defaults: RuleOptions,
    disable_ordering: bool,
    /// Keys of the file that were not read (reported once at load).
    pub unused_keys: Vec<String>,
}

impl std::fmt::Debug for Mapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapper").field("rules", &self.rules.len()).finish_non_exhaustive()
    }
}

/// Prometheus' default histogram buckets (client_golang's `DefBuckets`), statsd_exporter's
/// default.
pub const DEFAULT_BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// statsd_exporter's default summary quantiles.
pub const DEFAULT_QUANTILES: [f64; 3] = [0.5, 0.9, 0.99];

impl Mapper {
    /// Reads and checks a mapping file's text.
    pub fn from_yaml(text: &str) -> Result<Mapper, Error> {
        let file: MappingFile = serde_yaml_ng::from_str(text).map_err(|e| Error(format!("not a mapping file: {e}")))?;
        let unused_keys = file.unused();
        let d = &file.defaults;
        let default_match = match d.match_type.as_deref() {
            None | Some("") | Some("glob") => MatchType::Glob,
            Some("regex") => MatchType::Regex,
            Some(other) => return Err(Error(format!("defaults: invalid match_type {other:?}"))),
        };
        let default_observer = observer_type(d.observer_type.as_deref().or(d.timer_type.as_deref()))
            .map_err(|e| Error(format!("defaults: {e}")))?;
        let defaults = RuleOptions {
            index: None,
            help: None,
            observer_type: default_observer,
            buckets: buckets_of(d.histogram_options.as_ref(), d.buckets.as_ref(), &DEFAULT_BUCKETS),
            native: native_of(d.histogram_options.as_ref(), None).map_err(|e| Error(format!("defaults: {e}")))?,
            quantiles: quantiles_of(d.summary_options.as_ref(), d.quantiles.as_ref(), &DEFAULT_QUANTILES),
            ttl: ttl(d.ttl.as_deref()).map_err(|e| Error(format!("defaults: {e}")))?,
            honor_labels: false,
            scale: None,
        };
        if let Some(q) = defaults.quantiles.iter().find(|q| !(0.0..=1.0).contains(*q)) {
            return Err(Error(format!("defaults: quantile {q} is not between 0 and 1")));
        }
        let mut rules = Vec::with_capacity(file.mappings.len());
        for (i, r) in file.mappings.iter().enumerate() {
            let rule = compile(i, r, default_match, &defaults)
                .map_err(|e| Error(format!("mappings[{i}] (match {:?}): {e}", r.pattern)))?;
            rules.push(rule);
        }
        Ok(Mapper { rules, defaults, disable_ordering: d.glob_disable_ordering, unused_keys })
    }

    /// Whether any rule exposes observers as histograms (they then need every value since
    /// start).
    pub fn uses_histograms(&self) -> bool {
        self.defaults.observer_type == Some(ObserverType::Histogram)
            || self.rules.iter().any(|r| !r.drop && r.options.observer_type == Some(ObserverType::Histogram))
    }

    /// Every quantile a summary may be asked for: the defaults' and each rule's, ascending.
    pub fn summary_quantiles(&self) -> Vec<f64> {
        let mut all: Vec<f64> = self.defaults.quantiles.clone();
        for r in self.rules.iter().filter(|r| !r.drop) {
            all.extend_from_slice(&r.options.quantiles);
        }
        all.sort_by(f64::total_cmp);
        all.dedup();
        all
    }

    /// The `defaults` block's options: what applies to a name no rule matched.
    pub fn defaults(&self) -> &RuleOptions {
        &self.defaults
    }

    /// Rules in the file.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True when the file has no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Maps a StatsD name of type `kind`.
    pub fn map(&self, name: &str, kind: MetricType) -> Mapped {
        let fields: Vec<&str> = name.split('.').collect();
        // Globs first.
        let mut best: Option<(&CompiledRule, Vec<&str>)> = None;
        for rule in &self.rules {
            let Matcher::Glob(g) = &rule.matcher else { continue };
            if rule.metric_type.is_some_and(|t| t != kind) {
                continue;
            }
            let Some(caps) = g.captures(&fields) else { continue };
            match &best {
                None => best = Some((rule, caps)),
                Some((current, _)) if self.disable_ordering && more_specific(g, current) => best = Some((rule, caps)),
                Some(_) => {}
            }
            if !self.disable_ordering {
                break;
            }
        }
        if let Some((rule, caps)) = best {
            let mut out = String::new();
            glob::expand(&rule.name, name, &caps, &mut out);
            let labels = rule
                .labels
                .iter()
                .map(|(k, v)| {
                    let mut value = String::new();
                    glob::expand(v, name, &caps, &mut value);
                    (k.clone(), value)
                })
                .collect();
            return finish(rule, out, labels);
        }
        for rule in &self.rules {
            let Matcher::Regex(re) = &rule.matcher else { continue };
            let Some(caps) = re.captures(name) else { continue };
            if rule.metric_type.is_some_and(|t| t != kind) {
                continue;
            }
            let mut out = String::new();
            caps.expand(&rule.name, &mut out);
            let labels = rule
                .labels
                .iter()
                .map(|(k, v)| {
                    let mut value = String::new();
                    caps.expand(v, &mut value);
                    (k.clone(), value)
                })
                .collect();
            return finish(rule, out, labels);
        }
        Mapped::Unmapped(escape_metric_name(name))
    }
}

/// With ordering off, whether glob `a` is more specific than the current best: at the first
/// field where they differ, `a` has a literal and the other a `*` (statsd_exporter's state
/// machine takes the literal transition first).
fn more_specific(a: &Glob, current: &CompiledRule) -> bool {
    let Matcher::Glob(b) = &current.matcher else { return false };
    for (x, y) in a.fields.iter().zip(&b.fields) {
        match (x, y) {
            (glob::Field::Literal(_), glob::Field::Star) => return true,
            (glob::Field::Star, glob::Field::Literal(_)) => return false,
            _ => {}
        }
    }
    false
}

fn finish(rule: &CompiledRule, name: String, labels: Vec<(String, String)>) -> Mapped {
    if rule.drop {
        return Mapped::Dropped;
    }
    if !valid_metric_name(&name) {
        return Mapped::Invalid(name);
    }
    Mapped::Rule { name, labels, options: Box::new(rule.options.clone()) }
}

#[derive(Clone, Copy, PartialEq)]
enum MatchType {
    Glob,
    Regex,
}

fn observer_type(s: Option<&str>) -> Result<Option<ObserverType>, String> {
    match s {
        None | Some("") => Ok(None),
        Some("summary") => Ok(Some(ObserverType::Summary)),
        Some("histogram") => Ok(Some(ObserverType::Histogram)),
        Some(other) => Err(format!("invalid observer_type {other:?} (summary or histogram)")),
    }
}

/// Histogram buckets: `histogram_options.buckets`, else the old top-level `buckets`, else
/// `fallback` (an empty list counts as none, as in statsd_exporter).
fn buckets_of(options: Option<&config::HistogramOptions>, legacy: Option<&Vec<f64>>, fallback: &[f64]) -> Vec<f64> {
    options
        .and_then(|h| h.buckets.as_ref())
        .or(legacy)
        .filter(|b| !b.is_empty())
        .map_or_else(|| fallback.to_vec(), Clone::clone)
}

/// Summary quantiles: `summary_options.quantiles`, else the old top-level `quantiles`, else
/// `fallback`.
fn quantiles_of(
    options: Option<&config::SummaryOptions>,
    legacy: Option<&Vec<Objective>>,
    fallback: &[f64],
) -> Vec<f64> {
    options
        .and_then(|s| s.quantiles.as_ref())
        .or(legacy)
        .filter(|q| !q.is_empty())
        .map_or_else(|| fallback.to_vec(), |q| q.iter().map(|o| o.quantile).collect())
}

/// A Go duration (`30s`, `1m30s`, `2h`, `500ms`); `0` or `0s` is none.
fn ttl(s: Option<&str>) -> Result<Option<Duration>, String> {
    let Some(s) = s.map(str::trim).filter(|s| !s.is_empty()) else { return Ok(None) };
    let d = parse_go_duration(s).ok_or_else(|| format!("invalid ttl {s:?} (a duration like \"30s\" or \"1m30s\")"))?;
    Ok((!d.is_zero()).then_some(d))
}

fn parse_go_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += n * scale;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).ok()
}

/// A native histogram's options: the rule's `histogram_options`, else the defaults' (per key).
fn native_of(
    options: Option<&config::HistogramOptions>,
    defaults: Option<NativeOptions>,
) -> Result<Option<NativeOptions>, String> {
    let factor = options.and_then(|h| h.native_histogram_bucket_factor);
    let max = options.and_then(|h| h.native_histogram_max_buckets);
    if let Some(f) = factor.filter(|f| !f.is_finite()) {
        return Err(format!("native_histogram_bucket_factor {f} is not a number"));
    }
    Ok(match (factor, defaults) {
        (Some(f), d) => NativeOptions::from_factor(f, max.or(d.map(|d| d.max_buckets)).unwrap_or(0)),
        (None, Some(d)) => Some(NativeOptions { max_buckets: max.unwrap_or(d.max_buckets), ..d }),
        (None, None) => None,
    })
}

fn compile(index: usize, r: &Rule, default_match: MatchType, defaults: &RuleOptions) -> Result<CompiledRule, String> {
    for k in r.labels.keys() {
        if !valid_label_name(k) {
            return Err(format!("invalid label name {k:?}"));
        }
    }
    if r.name.is_empty() {
        return Err("the rule sets no metric name".into());
    }
    if !valid_metric_template(&r.name) {
        return Err(format!("metric name {:?} is not a valid Prometheus name (with $N captures)", r.name));
    }
    let match_type = match r.match_type.as_deref() {
        None | Some("") => default_match,
        Some("glob") => MatchType::Glob,
        Some("regex") => MatchType::Regex,
        Some(other) => return Err(format!("invalid match_type {other:?}")),
    };
    let matcher = match match_type {
        MatchType::Glob => {
            Matcher::Glob(Glob::parse(&r.pattern).ok_or_else(|| format!("invalid glob {:?}", r.pattern))?)
        }
        MatchType::Regex => {
            Matcher::Regex(regex::Regex::new(&r.pattern).map_err(|e| format!("invalid regex {:?}: {e}", r.pattern))?)
        }
    };
    let drop = match r.action.as_deref() {
        None | Some("") | Some("map") => false,
        Some("drop") => true,
        Some(other) => return Err(format!("invalid action {other:?} (map or drop)")),
    };
    let metric_type = match r.match_metric_type.as_deref() {
        None | Some("") => None,
        Some("counter") => Some(MetricType::Counter),
        Some("gauge") => Some(MetricType::Gauge),
        Some("observer") | Some("timer") | Some("histogram") | Some("distribution") => Some(MetricType::Observer),
        Some(other) => return Err(format!("invalid match_metric_type {other:?}")),
    };
    let observer = observer_type(r.observer_type.as_deref().or(r.timer_type.as_deref()))?.or(defaults.observer_type);
    match observer {
        Some(ObserverType::Histogram) if r.summary_options.is_some() => {
            return Err("histogram observer_type with summary_options".into())
        }
        Some(ObserverType::Summary) if r.histogram_options.is_some() => {
            return Err("summary observer_type with histogram_options".into())
        }
        _ => {}
    }
    if r.histogram_options.as_ref().is_some_and(|h| h.buckets.is_some()) && r.buckets.is_some() {
        return Err("buckets both at the top level and in histogram_options".into());
    }
    if r.summary_options.as_ref().is_some_and(|s| s.quantiles.is_some()) && r.quantiles.is_some() {
        return Err("quantiles both at the top level and in summary_options".into());
    }
    let buckets = buckets_of(r.histogram_options.as_ref(), r.buckets.as_ref(), &defaults.buckets);
    let native = native_of(r.histogram_options.as_ref(), defaults.native)?;
    let quantiles = quantiles_of(r.summary_options.as_ref(), r.quantiles.as_ref(), &defaults.quantiles);
    if let Some(q) = quantiles.iter().find(|q| !(0.0..=1.0).contains(*q)) {
        return Err(format!("quantile {q} is not between 0 and 1"));
    }
    let ttl = ttl(r.ttl.as_deref())?.or(defaults.ttl);
    if let Some(s) = r.scale.filter(|s| !s.0.is_finite()) {
        return Err(format!("scale {} is not a finite number", s.0));
    }
    Ok(CompiledRule {
        matcher,
        metric_type,
        name: r.name.clone(),
        labels: r.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<BTreeMap<_, _>>().into_iter().collect(),
        drop,
        options: RuleOptions {
            index: Some(index),
            help: r.help.clone(),
            observer_type: observer,
            buckets,
            native,
            quantiles,
            ttl,
            honor_labels: r.honor_labels,
            scale: r.scale.map(|s| s.0),
        },
    })
}

/// `[a-zA-Z_][a-zA-Z0-9_]+`, as statsd_exporter checks label names.
fn valid_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 2
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b[1..].iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// `^([a-zA-Z_]|$N|${N})([a-zA-Z0-9_]|$N|${N})*$`, as statsd_exporter checks names.
fn valid_metric_template(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    let mut first = true;
    while i < b.len() {
        if b[i] == b'$' {
            let mut j = i + 1;
            let braced = b.get(j) == Some(&b'{');
            if braced {
                j += 1;
            }
            let start = j;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            if j == start {
                return false;
            }
            if b.get(j) == Some(&b'}') {
                j += 1;
            }
            i = j;
        } else {
            let ok = b[i].is_ascii_alphabetic() || b[i] == b'_' || (!first && b[i].is_ascii_digit());
            if !ok {
                return false;
            }
            i += 1;
        }
        first = false;
    }
    !b.is_empty()
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`: a name Prometheus takes.
pub fn valid_metric_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_' || b[0] == b':')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b':')
}

/// statsd_exporter's escaping of a name no rule matched: every character but `[a-zA-Z0-9_]`
/// becomes `_` (one for each character, however many bytes it takes), the second of two
/// dashes in a row disappears, and a leading digit gets a `_` before it.
pub fn escape_metric_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 1);
    if name.as_bytes().first().is_some_and(u8::is_ascii_digit) {
        out.push('_');
    }
    let mut previous = '\0';
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            out.push(c);
        } else if !(c == '-' && previous == '-') {
            out.push('_');
        }
        previous = c;
    }
    out
}

#[cfg(test)]
mod tests;
