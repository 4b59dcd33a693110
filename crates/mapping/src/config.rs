//! The mapping file as statsd_exporter reads it (`--statsd.mapping-config`): `defaults` and
//! `mappings`. Keys this crate does not use are kept aside ([`MappingFile::unused`]) rather than
//! refused: a file written for statsd_exporter must load unchanged.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
pub struct MappingFile {
    /// Settings every rule inherits.
    #[serde(default)]
    pub defaults: Defaults,
    /// The rules, in order.
    #[serde(default)]
    pub mappings: Vec<Rule>,
    /// Top-level keys not read.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_yaml_ng::Value>,
}

/// `defaults`.
#[derive(Debug, Default, Deserialize)]
pub struct Defaults {
    /// `observer_type` (or its old name `timer_type`): `summary` or `histogram`.
    pub observer_type: Option<String>,
    /// The old name of `observer_type`.
    pub timer_type: Option<String>,
    /// Old place of the histogram buckets.
    pub buckets: Option<Vec<f64>>,
    /// Old place of the summary quantiles.
    pub quantiles: Option<Vec<Objective>>,
    /// `histogram_options`.
    pub histogram_options: Option<HistogramOptions>,
    /// `summary_options`.
    pub summary_options: Option<SummaryOptions>,
    /// `glob` (default) or `regex`.
    pub match_type: Option<String>,
    /// Glob rules: the most specific match wins instead of the first defined.
    #[serde(default)]
    pub glob_disable_ordering: bool,
    /// Series not updated for this long are dropped (`0s`: never).
    pub ttl: Option<String>,
    /// Keys not read.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_yaml_ng::Value>,
}

/// One rule.
#[derive(Debug, Default, Deserialize)]
pub struct Rule {
    /// A glob (`a.*.c`) or a regular expression, by `match_type`.
    #[serde(rename = "match", default)]
    pub pattern: String,
    /// The Prometheus name, with `$1`/`${1}` for captures.
    #[serde(default)]
    pub name: String,
    /// Labels, values with captures.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `summary` or `histogram`, for timers and distributions.
    pub observer_type: Option<String>,
    /// The old name of `observer_type`.
    pub timer_type: Option<String>,
    /// Old place of the histogram buckets.
    pub buckets: Option<Vec<f64>>,
    /// Old place of the summary quantiles.
    pub quantiles: Option<Vec<Objective>>,
    /// `histogram_options`.
    pub histogram_options: Option<HistogramOptions>,
    /// `summary_options`.
    pub summary_options: Option<SummaryOptions>,
    /// `glob` or `regex` (default: `defaults.match_type`).
    pub match_type: Option<String>,
    /// `HELP` text.
    pub help: Option<String>,
    /// `map` (default) or `drop`.
    pub action: Option<String>,
    /// Only metrics of this type: `counter`, `gauge`, `observer` (`timer`).
    pub match_metric_type: Option<String>,
    /// Series not updated for this long are dropped.
    pub ttl: Option<String>,
    /// Tags from the metric win over the rule's labels of the same name.
    #[serde(default)]
    pub honor_labels: bool,
    /// Multiplies every value (`1024`, `1e-3`, `0.001`).
    pub scale: Option<Scale>,
    /// Keys not read.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_yaml_ng::Value>,
}

/// `histogram_options`.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct HistogramOptions {
    /// Upper bounds of the classic buckets.
    pub buckets: Option<Vec<f64>>,
    /// Above 1: also a native histogram, each bucket at most this factor wider than the last
    /// (client_golang's `NativeHistogramBucketFactor`).
    pub native_histogram_bucket_factor: Option<f64>,
    /// Most native buckets; past it the resolution halves until they fit (0: no limit).
    pub native_histogram_max_buckets: Option<u32>,
    /// Keys not read.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_yaml_ng::Value>,
}

/// `summary_options`.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct SummaryOptions {
    /// The quantiles.
    pub quantiles: Option<Vec<Objective>>,
    /// Keys not read (`max_age`, `age_buckets`, `buf_cap`).
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_yaml_ng::Value>,
}

/// One summary quantile.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct Objective {
    /// The quantile, 0 to 1.
    pub quantile: f64,
    /// Its allowed error (kept for the file's sake: floodgate's quantiles are exact or from the
    /// sketch).
    #[serde(default)]
    pub error: f64,
}

impl MappingFile {
    /// Every key in the file this crate does not read, as `path.key`.
    pub fn unused(&self) -> Vec<String> {
        let mut out: Vec<String> = self.other.keys().cloned().collect();
        out.extend(self.defaults.other.keys().map(|k| format!("defaults.{k}")));
        for (i, r) in self.mappings.iter().enumerate() {
            out.extend(r.other.keys().map(|k| format!("mappings[{i}].{k}")));
        }
        out
    }
}

/// A rule's `scale`: a YAML number, or a string holding one in scientific notation (`1e3`,
/// which YAML 1.2 reads as a string and Go's YAML reader as a number).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scale(pub f64);

impl<'de> Deserialize<'de> for Scale {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Number {
            Float(f64),
            Text(String),
        }
        match Number::deserialize(d)? {
            Number::Float(f) => Ok(Scale(f)),
            Number::Text(t) => t
                .trim()
                .parse::<f64>()
                .map(Scale)
                .map_err(|_| serde::de::Error::custom(format!("scale {t:?} is not a number"))),
        }
    }
}
