//! Prometheus remote-write 1.0: each flush, every series as a sample stamped with the flush
//! time, in a protobuf `WriteRequest` compressed with snappy (block format), POSTed over HTTP
//! — what Prometheus (`--web.enable-remote-write-receiver`), Mimir, Thanos and
//! VictoriaMetrics accept. Series are named as on `/metrics` (one traversal serves both).
//!
//! The protobuf messages are written here as prost structs (four small messages; no `protoc`).
//! https endpoints are verified against the system's CA certificates plus an optional `ca`
//! file; `headers` carry authentication or a tenant (`X-Scope-OrgID`).

pub mod config;
use bytes::Bytes;
use floodgate_statsd::prometheus::{Exposition, Labels, Series};
use floodgate_statsd::Store;
use prost::Message;

use crate::sinks::delivery::flushes::{Deliver, DeliverError};
use crate::sinks::delivery::http::HttpEndpoint;
// `prometheus.BucketSpan` has the same fields as client_model's.
use crate::flush::Payload;
use crate::metrics::protobuf::{spans, BucketSpan};

/// `prometheus.WriteRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    /// The series.
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

/// `prometheus.TimeSeries`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    /// Sorted by name, `__name__` included.
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    /// Samples, oldest first.
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
    /// Native histogram samples, oldest first.
    #[prost(message, repeated, tag = "4")]
    pub histograms: Vec<Histogram>,
}

/// `prometheus.Histogram`: a native histogram sample (integer counts).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Histogram {
    /// `count_int` (field 1 of the `count` oneof).
    #[prost(uint64, optional, tag = "1")]
    pub count_int: Option<u64>,
    /// Sum of the values.
    #[prost(double, tag = "3")]
    pub sum: f64,
    /// The schema.
    #[prost(sint32, tag = "4")]
    pub schema: i32,
    /// The zero bucket's width.
    #[prost(double, tag = "5")]
    pub zero_threshold: f64,
    /// `zero_count_int` (field 6 of the `zero_count` oneof).
    #[prost(uint64, optional, tag = "6")]
    pub zero_count_int: Option<u64>,
    /// Negative spans.
    #[prost(message, repeated, tag = "8")]
    pub negative_spans: Vec<BucketSpan>,
    /// Negative counts as deltas.
    #[prost(sint64, repeated, tag = "9")]
    pub negative_deltas: Vec<i64>,
    /// Positive spans.
    #[prost(message, repeated, tag = "11")]
    pub positive_spans: Vec<BucketSpan>,
    /// Positive counts as deltas.
    #[prost(sint64, repeated, tag = "12")]
    pub positive_deltas: Vec<i64>,
    /// Unix milliseconds.
    #[prost(int64, tag = "15")]
    pub timestamp: i64,
}

/// `prometheus.Label`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    /// Name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Value.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `prometheus.Sample`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    /// Value.
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Unix milliseconds.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

struct Collect {
    timestamp_ms: i64,
    series: Vec<TimeSeries>,
}

impl Collect {
    /// The series' labels with `__name__` (and the bound's label), sorted.
    fn labels(key: Labels<'_>, name: String, bound: Option<(&'static str, f64)>) -> Vec<Label> {
        let mut labels: Vec<Label> = key.pairs().into_iter().map(|(name, value)| Label { name, value }).collect();
        labels.push(Label { name: "__name__".into(), value: name });
        if let Some((label, v)) = bound {
            let value = if v == f64::INFINITY { "+Inf".to_string() } else { v.to_string() };
            labels.push(Label { name: label.into(), value });
        }
        labels.sort_by(|a, b| a.name.cmp(&b.name));
        labels
    }
}

impl Exposition for Collect {
    fn family(&mut self, _: &str, _: &'static str, _: &str) {}

    fn series(&mut self, name: &str, key: Labels<'_>, value: &Series<'_>) {
        // A native histogram goes as one histogram sample in place of the classic series, as
        // Prometheus stores a scraped one by default.
        if let Series::Histogram { sum, native: Some(n), .. } = *value {
            let (positive_spans, positive_deltas) = spans(&n.positive);
            let (negative_spans, negative_deltas) = spans(&n.negative);
            let histogram = Histogram {
                count_int: Some(n.count()),
                sum,
                schema: n.schema,
                zero_threshold: n.zero_threshold,
                zero_count_int: Some(n.zero_count),
                negative_spans,
                negative_deltas,
                positive_spans,
                positive_deltas,
                timestamp: self.timestamp_ms,
            };
            let labels = Collect::labels(key, name.to_string(), None);
            self.series.push(TimeSeries { labels, samples: Vec::new(), histograms: vec![histogram] });
            return;
        }
        value.samples(|suffix, bound, value| {
            if value.is_nan() {
                return; // NaN is Prometheus' staleness marker's kin: leave the gap instead.
            }
            let labels = Collect::labels(key, format!("{name}{suffix}"), bound.map(|b| (b.label(), b.value())));
            let samples = vec![Sample { value, timestamp: self.timestamp_ms }];
            self.series.push(TimeSeries { labels, samples, histograms: Vec::new() });
        });
    }
}

/// The store's series after a flush as one compressed `WriteRequest`; also how many.
pub fn encode(store: &Store, timestamp_ms: i64, naming: &crate::naming::Naming) -> (Vec<u8>, usize) {
    let mut collect = Collect { timestamp_ms, series: Vec::with_capacity(store.series()) };
    naming.expose(store, &mut collect);
    let n = collect.series.len();
    let raw = WriteRequest { timeseries: collect.series }.encode_to_vec();
    // Cannot fail for an in-memory buffer below snappy's 4 GiB bound; an empty body if it did.
    let body = snap::raw::Encoder::new().compress_vec(&raw).unwrap_or_default();
    (body, n)
}

/// The sink.
pub struct RemoteWriteSink {
    url: hyper::Uri,
    endpoint: HttpEndpoint,
}

impl RemoteWriteSink {
    /// A sink for `[prometheus_remote_write]`.
    pub fn new(config: &crate::config::RemoteWriteConfig) -> anyhow::Result<RemoteWriteSink> {
        use anyhow::Context;
        let endpoint = HttpEndpoint::new("remote-write", config.timeout, config.ca.as_deref(), &config.headers)?;
        Ok(RemoteWriteSink { url: config.url.parse().context("prometheus_remote_write.url")?, endpoint })
    }
}

impl Deliver for RemoteWriteSink {
    fn name(&self) -> &'static str {
        "remote_write"
    }

    async fn deliver(&self, p: &Payload) -> Result<(), DeliverError> {
        let headers = [
            ("content-type", "application/x-protobuf"),
            ("content-encoding", "snappy"),
            ("x-prometheus-remote-write-version", "0.1.0"),
        ];
        let answer = self.endpoint.post(&self.url, &headers, Bytes::from(p.bytes.clone())).await?;
        let status = answer.status;
        if status.is_success() {
            return Ok(());
        }
        // The spec: retry 5xx and 429; any other 4xx will never succeed.
        let retry = status.is_server_error() || status.as_u16() == 429;
        Err(DeliverError { retry, message: answer.message(), retry_after: answer.retry_after })
    }
}

/// `[prometheus_remote_write]`: the sink and its delivery loop; `None` when not set.
pub fn build(
    shared: &std::sync::Arc<crate::component::Shared>,
    config: &crate::config::Config,
    wiring: &mut crate::component::Wiring,
) -> anyhow::Result<Option<Box<dyn super::Sink>>> {
    use anyhow::Context;
    let Some(rw) = &config.prometheus_remote_write else { return Ok(None) };
    let sink = RemoteWriteSink::new(rw).context("prometheus_remote_write")?;
    tracing::info!(url = %crate::config::redact_url(&rw.url), "prometheus remote-write output on");
    let render = Render { naming: shared.naming.clone() };
    Ok(Some(crate::sinks::delivery::flushes::start_flush_sink(shared, wiring, vec![sink], rw.buffer, Box::new(render))))
}

/// Remote-write takes the store as it stands after the flush, as a scrape would, named as
/// `/metrics` names it.
struct Render {
    naming: std::sync::Arc<crate::naming::Naming>,
}

impl crate::flush::Render for Render {
    fn render_store(&self, store: &Store, timestamp: i64) -> crate::flush::Rendered {
        vec![encode(store, timestamp * 1000, &self.naming)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use floodgate_statsd::{AggregationConfig, Parser, Shard};

    #[test]
    fn every_series_with_sorted_labels() {
        let mut store = Store::new(AggregationConfig::default());
        let mut shard = Shard::new(100);
        Parser::new(true).parse_packet(b"api.hits:2|c|#env:prod,zone:a\napi.lat:10|ms\n", &mut shard);
        store.merge(&mut shard);
        store.flush(1, |_| ());
        let (body, n) = encode(&store, 1_700_000_000_000, &crate::naming::Naming::default());
        let raw = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
        let req = WriteRequest::decode(&raw[..]).unwrap();
        assert_eq!(req.timeseries.len(), n);
        let hits = req
            .timeseries
            .iter()
            .find(|t| t.labels.iter().any(|l| l.name == "__name__" && l.value == "api_hits_total"))
            .unwrap();
        let names: Vec<&str> = hits.labels.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["__name__", "env", "zone"]);
        assert_eq!(hits.samples, vec![Sample { value: 2.0, timestamp: 1_700_000_000_000 }]);
        assert!(req.timeseries.iter().any(|t| t.labels.iter().any(|l| l.name == "quantile")));
    }

    /// Remote-write names series as `/metrics` does: the mapping file's names and labels.
    #[test]
    fn a_mapping_file_names_remote_write_series() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.yml");
        std::fs::write(&file, "mappings:\n- match: api.*.hits\n  name: hits_total\n  labels: { env: $1 }\n").unwrap();
        let naming = crate::naming::Naming::new(&crate::naming::PrometheusConfig { mapping_config: Some(file) });
        let mut store = Store::new(AggregationConfig::default());
        let mut shard = Shard::new(100);
        Parser::new(true).parse_packet(b"api.prod.hits:2|c|#zone:a\n", &mut shard);
        store.merge(&mut shard);
        store.flush(1, |_| ());
        let (body, _) = encode(&store, 1_700_000_000_000, &naming);
        let raw = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
        let req = WriteRequest::decode(&raw[..]).unwrap();
        let hits = req
            .timeseries
            .iter()
            .find(|t| t.labels.iter().any(|l| l.name == "__name__" && l.value == "hits_total"))
            .expect("the mapped series");
        let labels: Vec<(&str, &str)> = hits.labels.iter().map(|l| (l.name.as_str(), l.value.as_str())).collect();
        assert_eq!(labels, [("__name__", "hits_total"), ("env", "prod"), ("zone", "a")]);
    }
}
