//! `/metrics` in Prometheus' protobuf exposition format (`io.prometheus.client.MetricFamily`,
//! length-delimited): the only format that carries native histograms, asked for by a scraper
//! that sends `Accept: application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;
//! encoding=delimited` (Prometheus with `--enable-feature=native-histograms`).
//!
//! The messages are written here as prost structs (client_model's `metrics.proto`, proto2:
//! repeated numbers unpacked, as Go's generated code writes them; no `protoc`).

use floodgate_statsd::prometheus::{Exponential, Exposition, Labels, Series};
use prost::Message;

use super::{Families, Type, Value};

/// The media type a scraper asks for and the response is labelled with.
pub const CONTENT_TYPE: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

/// Whether an `Accept` header offers the delimited protobuf format (with a quality above 0).
pub fn accepted(accept: &str) -> bool {
    accept.split(',').any(|range| {
        let mut params = range.split(';').map(str::trim);
        params.next().is_some_and(|t| t.eq_ignore_ascii_case("application/vnd.google.protobuf")) && {
            let params: Vec<&str> = params.collect();
            params.iter().any(|p| p.eq_ignore_ascii_case("proto=io.prometheus.client.MetricFamily"))
                && params.iter().any(|p| p.eq_ignore_ascii_case("encoding=delimited"))
                && !params.iter().any(|p| p.strip_prefix("q=").and_then(|q| q.parse::<f64>().ok()) == Some(0.0))
        }
    })
}

/// `MetricFamily`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetricFamily {
    /// The family name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// `HELP`.
    #[prost(string, tag = "2")]
    pub help: String,
    /// `MetricType`: 0 counter, 1 gauge, 2 summary, 4 histogram.
    #[prost(int32, tag = "3")]
    pub r#type: i32,
    /// The series.
    #[prost(message, repeated, tag = "4")]
    pub metric: Vec<Metric>,
}

/// `Metric`: one series.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Metric {
    /// Labels.
    #[prost(message, repeated, tag = "1")]
    pub label: Vec<LabelPair>,
    /// A gauge's value.
    #[prost(message, optional, tag = "2")]
    pub gauge: Option<Scalar>,
    /// A counter's value.
    #[prost(message, optional, tag = "3")]
    pub counter: Option<Scalar>,
    /// A summary.
    #[prost(message, optional, tag = "4")]
    pub summary: Option<Summary>,
    /// A histogram.
    #[prost(message, optional, tag = "7")]
    pub histogram: Option<Histogram>,
}

/// `LabelPair`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LabelPair {
    /// Name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Value.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `Gauge` and `Counter` (both a double in field 1).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Scalar {
    /// The value.
    #[prost(double, tag = "1")]
    pub value: f64,
}

/// `Summary`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    /// `_count`.
    #[prost(uint64, tag = "1")]
    pub sample_count: u64,
    /// `_sum`.
    #[prost(double, tag = "2")]
    pub sample_sum: f64,
    /// Quantiles.
    #[prost(message, repeated, tag = "3")]
    pub quantile: Vec<Quantile>,
}

/// `Quantile`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Quantile {
    /// 0 to 1.
    #[prost(double, tag = "1")]
    pub quantile: f64,
    /// The value.
    #[prost(double, tag = "2")]
    pub value: f64,
}

/// `Histogram`: classic buckets and the native layout.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Histogram {
    /// `_count`.
    #[prost(uint64, tag = "1")]
    pub sample_count: u64,
    /// `_sum`.
    #[prost(double, tag = "2")]
    pub sample_sum: f64,
    /// Classic buckets (`+Inf` left out: it is the count).
    #[prost(message, repeated, tag = "3")]
    pub bucket: Vec<Bucket>,
    /// Native: the schema.
    #[prost(sint32, tag = "5")]
    pub schema: i32,
    /// Native: the zero bucket's width.
    #[prost(double, tag = "6")]
    pub zero_threshold: f64,
    /// Native: values in the zero bucket.
    #[prost(uint64, tag = "7")]
    pub zero_count: u64,
    /// Native: negative spans.
    #[prost(message, repeated, tag = "9")]
    pub negative_span: Vec<BucketSpan>,
    /// Native: negative counts as deltas.
    #[prost(sint64, repeated, packed = "false", tag = "10")]
    pub negative_delta: Vec<i64>,
    /// Native: positive spans.
    #[prost(message, repeated, tag = "12")]
    pub positive_span: Vec<BucketSpan>,
    /// Native: positive counts as deltas.
    #[prost(sint64, repeated, packed = "false", tag = "13")]
    pub positive_delta: Vec<i64>,
}

/// `Bucket` (classic).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Bucket {
    /// Values at or below the bound.
    #[prost(uint64, tag = "1")]
    pub cumulative_count: u64,
    /// `le`.
    #[prost(double, tag = "2")]
    pub upper_bound: f64,
}

/// `BucketSpan`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BucketSpan {
    /// Gap before the run.
    #[prost(sint32, tag = "1")]
    pub offset: i32,
    /// Buckets in the run.
    #[prost(uint32, tag = "2")]
    pub length: u32,
}

/// Collects families, then writes them length-delimited.
#[derive(Default)]
pub struct Protobuf {
    families: Vec<MetricFamily>,
}

impl Protobuf {
    /// floodgate's own families.
    pub fn add_families(&mut self, families: &Families) {
        for f in families.iter() {
            let d = &f.describe;
            let kind = match d.kind {
                Type::Counter => "counter",
                Type::Gauge => "gauge",
            };
            self.family(d.name, kind, d.help);
            let Some(family) = self.families.last_mut() else { continue };
            for (labels, value) in &f.samples {
                let value = Some(Scalar {
                    value: match value {
                        Value::Count(n) => *n as f64,
                        Value::Real(x) => *x,
                    },
                });
                let label = labels.iter().map(|(k, v)| LabelPair { name: (*k).into(), value: v.clone() }).collect();
                let (counter, gauge) = if d.kind == Type::Counter { (value, None) } else { (None, value) };
                family.metric.push(Metric { label, counter, gauge, ..Metric::default() });
            }
        }
    }

    /// Every family, each preceded by its length as a varint.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.families.iter().map(|f| f.encoded_len() + 5).sum());
        for f in &self.families {
            // Cannot fail: a Vec grows as needed.
            let _ = f.encode_length_delimited(&mut out);
        }
        out
    }
}

/// Native buckets as spans and deltas (remote-write's `BucketSpan` is the same message).
pub fn spans(buckets: &[(i32, u64)]) -> (Vec<BucketSpan>, Vec<i64>) {
    let (spans, deltas) = Exponential::encode(buckets);
    (spans.into_iter().map(|s| BucketSpan { offset: s.offset, length: s.length }).collect(), deltas)
}

impl Exposition for Protobuf {
    fn family(&mut self, name: &str, kind: &'static str, help: &str) {
        let r#type = match kind {
            "counter" => 0,
            "gauge" => 1,
            "summary" => 2,
            "histogram" => 4,
            _ => 3,
        };
        self.families.push(MetricFamily { name: name.into(), help: help.into(), r#type, metric: Vec::new() });
    }

    fn series(&mut self, _name: &str, labels: Labels<'_>, value: &Series<'_>) {
        let Some(family) = self.families.last_mut() else { return };
        let label = labels.pairs().into_iter().map(|(name, value)| LabelPair { name, value }).collect();
        let mut metric = Metric { label, ..Metric::default() };
        match *value {
            Series::Counter(v) => metric.counter = Some(Scalar { value: v }),
            Series::Gauge(v) => metric.gauge = Some(Scalar { value: v }),
            Series::Summary { quantiles, sum, count } => {
                metric.summary = Some(Summary {
                    sample_count: count as u64,
                    sample_sum: sum,
                    quantile: quantiles.iter().map(|&(quantile, value)| Quantile { quantile, value }).collect(),
                })
            }
            Series::Histogram { buckets, sum, count, native } => {
                let mut h = Histogram {
                    sample_count: count as u64,
                    sample_sum: sum,
                    bucket: buckets
                        .iter()
                        .filter(|(le, _)| le.is_finite())
                        .map(|&(upper_bound, n)| Bucket { cumulative_count: n as u64, upper_bound })
                        .collect(),
                    ..Histogram::default()
                };
                if let Some(n) = native {
                    // The native count is its buckets' (sampled counts are rounded per bucket).
                    h.sample_count = n.count();
                    h.schema = n.schema;
                    h.zero_threshold = n.zero_threshold;
                    h.zero_count = n.zero_count;
                    (h.positive_span, h.positive_delta) = spans(&n.positive);
                    (h.negative_span, h.negative_delta) = spans(&n.negative);
                }
                metric.histogram = Some(h);
            }
        }
        family.metric.push(metric);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_accept_headers() {
        // What Prometheus 2.42 sends with native histograms on, and without.
        assert!(accepted(
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,\
             text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
        ));
        assert!(!accepted("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"));
        assert!(!accepted(
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0"
        ));
        assert!(!accepted("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text"));
    }

    #[test]
    fn families_round_trip() {
        let mut p = Protobuf::default();
        let mut t = Families::default();
        t.add(super::super::Describe::counter("x_total", "An x."), &[("listener", "a")], 2u64);
        p.add_families(&t);
        let bytes = p.encode();
        let f = MetricFamily::decode_length_delimited(&bytes[..]).unwrap();
        assert_eq!(f.name, "x_total");
        assert_eq!(f.r#type, 0);
        assert_eq!(f.metric[0].counter, Some(Scalar { value: 2.0 }));
        assert_eq!(f.metric[0].label, [LabelPair { name: "listener".into(), value: "a".into() }]);
    }
}
