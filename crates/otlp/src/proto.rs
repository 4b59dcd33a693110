//! The OTLP/protobuf messages floodgate sends and reads, as prost structs with the field
//! numbers of `opentelemetry-proto` (v1): `common`, `resource`, `metrics`, `logs` and the two
//! collector services' requests and responses. Fields floodgate never sets (exemplars, trace
//! ids, schema URLs) are left out: a decoder skips what it does not know and defaults what is
//! absent, so leaving them out is the same as sending them empty.

/// `opentelemetry.proto.common.v1.AnyValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AnyValue {
    /// The value.
    #[prost(oneof = "any_value::Value", tags = "1, 2, 3, 4")]
    pub value: Option<any_value::Value>,
}

/// `AnyValue`'s oneof.
pub mod any_value {
    /// The kinds of value floodgate sends.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        /// `string_value`.
        #[prost(string, tag = "1")]
        String(String),
        /// `bool_value`.
        #[prost(bool, tag = "2")]
        Bool(bool),
        /// `int_value`.
        #[prost(int64, tag = "3")]
        Int(i64),
        /// `double_value`.
        #[prost(double, tag = "4")]
        Double(f64),
    }
}

/// `opentelemetry.proto.common.v1.KeyValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    /// The key.
    #[prost(string, tag = "1")]
    pub key: String,
    /// The value.
    #[prost(message, optional, tag = "2")]
    pub value: Option<AnyValue>,
}

impl KeyValue {
    /// A string attribute.
    pub fn string(key: impl Into<String>, value: impl Into<String>) -> KeyValue {
        KeyValue { key: key.into(), value: Some(AnyValue { value: Some(any_value::Value::String(value.into())) }) }
    }

    /// An integer attribute.
    pub fn int(key: impl Into<String>, value: i64) -> KeyValue {
        KeyValue { key: key.into(), value: Some(AnyValue { value: Some(any_value::Value::Int(value)) }) }
    }
}

/// `opentelemetry.proto.common.v1.InstrumentationScope`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InstrumentationScope {
    /// `name`.
    #[prost(string, tag = "1")]
    pub name: String,
    /// `version`.
    #[prost(string, tag = "2")]
    pub version: String,
}

/// `opentelemetry.proto.resource.v1.Resource`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Resource {
    /// `attributes`.
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
}

/// `opentelemetry.proto.collector.metrics.v1.ExportMetricsServiceRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExportMetricsServiceRequest {
    /// `resource_metrics`.
    #[prost(message, repeated, tag = "1")]
    pub resource_metrics: Vec<ResourceMetrics>,
}

/// `opentelemetry.proto.metrics.v1.ResourceMetrics`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ResourceMetrics {
    /// `resource`.
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    /// `scope_metrics`.
    #[prost(message, repeated, tag = "2")]
    pub scope_metrics: Vec<ScopeMetrics>,
}

/// `opentelemetry.proto.metrics.v1.ScopeMetrics`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ScopeMetrics {
    /// `scope`.
    #[prost(message, optional, tag = "1")]
    pub scope: Option<InstrumentationScope>,
    /// `metrics`.
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
}

/// `opentelemetry.proto.metrics.v1.Metric`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Metric {
    /// `name`.
    #[prost(string, tag = "1")]
    pub name: String,
    /// `description`.
    #[prost(string, tag = "2")]
    pub description: String,
    /// `unit` (UCUM: `s`, `By`, `1`).
    #[prost(string, tag = "3")]
    pub unit: String,
    /// The data.
    #[prost(oneof = "metric::Data", tags = "5, 7, 9, 10")]
    pub data: Option<metric::Data>,
}

/// `Metric`'s oneof.
pub mod metric {
    /// The kinds of data floodgate sends.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Data {
        /// `gauge`.
        #[prost(message, tag = "5")]
        Gauge(super::Gauge),
        /// `sum`.
        #[prost(message, tag = "7")]
        Sum(super::Sum),
        /// `histogram`.
        #[prost(message, tag = "9")]
        Histogram(super::Histogram),
        /// `exponential_histogram`.
        #[prost(message, tag = "10")]
        ExponentialHistogram(super::ExponentialHistogram),
    }
}

/// `AggregationTemporality`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum AggregationTemporality {
    /// `AGGREGATION_TEMPORALITY_UNSPECIFIED`.
    Unspecified = 0,
    /// Each point holds what happened since the point before.
    Delta = 1,
    /// Each point holds everything since its start time.
    Cumulative = 2,
}

/// `opentelemetry.proto.metrics.v1.Gauge`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Gauge {
    /// `data_points`.
    #[prost(message, repeated, tag = "1")]
    pub data_points: Vec<NumberDataPoint>,
}

/// `opentelemetry.proto.metrics.v1.Sum`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sum {
    /// `data_points`.
    #[prost(message, repeated, tag = "1")]
    pub data_points: Vec<NumberDataPoint>,
    /// `aggregation_temporality`.
    #[prost(enumeration = "AggregationTemporality", tag = "2")]
    pub aggregation_temporality: i32,
    /// `is_monotonic`.
    #[prost(bool, tag = "3")]
    pub is_monotonic: bool,
}

/// `opentelemetry.proto.metrics.v1.Histogram`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Histogram {
    /// `data_points`.
    #[prost(message, repeated, tag = "1")]
    pub data_points: Vec<HistogramDataPoint>,
    /// `aggregation_temporality`.
    #[prost(enumeration = "AggregationTemporality", tag = "2")]
    pub aggregation_temporality: i32,
}

/// `opentelemetry.proto.metrics.v1.ExponentialHistogram`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExponentialHistogram {
    /// `data_points`.
    #[prost(message, repeated, tag = "1")]
    pub data_points: Vec<ExponentialHistogramDataPoint>,
    /// `aggregation_temporality`.
    #[prost(enumeration = "AggregationTemporality", tag = "2")]
    pub aggregation_temporality: i32,
}

/// `opentelemetry.proto.metrics.v1.NumberDataPoint`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NumberDataPoint {
    /// `start_time_unix_nano`.
    #[prost(fixed64, tag = "2")]
    pub start_time_unix_nano: u64,
    /// `time_unix_nano`.
    #[prost(fixed64, tag = "3")]
    pub time_unix_nano: u64,
    /// `as_double` (the `value` oneof's, field 4; floodgate's values are doubles).
    #[prost(double, optional, tag = "4")]
    pub as_double: Option<f64>,
    /// `attributes`.
    #[prost(message, repeated, tag = "7")]
    pub attributes: Vec<KeyValue>,
}

/// `opentelemetry.proto.metrics.v1.HistogramDataPoint`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HistogramDataPoint {
    /// `start_time_unix_nano`.
    #[prost(fixed64, tag = "2")]
    pub start_time_unix_nano: u64,
    /// `time_unix_nano`.
    #[prost(fixed64, tag = "3")]
    pub time_unix_nano: u64,
    /// `count`.
    #[prost(fixed64, tag = "4")]
    pub count: u64,
    /// `sum`.
    #[prost(double, optional, tag = "5")]
    pub sum: Option<f64>,
    /// `bucket_counts`: one more than `explicit_bounds` (the last is above every bound).
    #[prost(fixed64, repeated, tag = "6")]
    pub bucket_counts: Vec<u64>,
    /// `explicit_bounds`, ascending.
    #[prost(double, repeated, tag = "7")]
    pub explicit_bounds: Vec<f64>,
    /// `attributes`.
    #[prost(message, repeated, tag = "9")]
    pub attributes: Vec<KeyValue>,
}

/// `opentelemetry.proto.metrics.v1.ExponentialHistogramDataPoint`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExponentialHistogramDataPoint {
    /// `attributes`.
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
    /// `start_time_unix_nano`.
    #[prost(fixed64, tag = "2")]
    pub start_time_unix_nano: u64,
    /// `time_unix_nano`.
    #[prost(fixed64, tag = "3")]
    pub time_unix_nano: u64,
    /// `count`: `zero_count` plus every bucket's.
    #[prost(fixed64, tag = "4")]
    pub count: u64,
    /// `sum`.
    #[prost(double, optional, tag = "5")]
    pub sum: Option<f64>,
    /// `scale`: bucket bounds are powers of `2^(2^-scale)`.
    #[prost(sint32, tag = "6")]
    pub scale: i32,
    /// `zero_count`.
    #[prost(fixed64, tag = "7")]
    pub zero_count: u64,
    /// `positive`.
    #[prost(message, optional, tag = "8")]
    pub positive: Option<Buckets>,
    /// `negative` (by magnitude).
    #[prost(message, optional, tag = "9")]
    pub negative: Option<Buckets>,
    /// `min`.
    #[prost(double, optional, tag = "12")]
    pub min: Option<f64>,
    /// `max`.
    #[prost(double, optional, tag = "13")]
    pub max: Option<f64>,
    /// `zero_threshold`.
    #[prost(double, tag = "14")]
    pub zero_threshold: f64,
}

/// `ExponentialHistogramDataPoint.Buckets`: dense counts from bucket `offset`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Buckets {
    /// `offset`: the index of the first count (bucket `i` is `(base^i, base^(i+1)]`).
    #[prost(sint32, tag = "1")]
    pub offset: i32,
    /// `bucket_counts`.
    #[prost(uint64, repeated, tag = "2")]
    pub bucket_counts: Vec<u64>,
}

/// `opentelemetry.proto.collector.metrics.v1.ExportMetricsServiceResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExportMetricsServiceResponse {
    /// `partial_success`.
    #[prost(message, optional, tag = "1")]
    pub partial_success: Option<ExportMetricsPartialSuccess>,
}

/// `ExportMetricsPartialSuccess`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExportMetricsPartialSuccess {
    /// `rejected_data_points`.
    #[prost(int64, tag = "1")]
    pub rejected_data_points: i64,
    /// `error_message`.
    #[prost(string, tag = "2")]
    pub error_message: String,
}

/// `opentelemetry.proto.collector.logs.v1.ExportLogsServiceRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExportLogsServiceRequest {
    /// `resource_logs`.
    #[prost(message, repeated, tag = "1")]
    pub resource_logs: Vec<ResourceLogs>,
}

/// `opentelemetry.proto.logs.v1.ResourceLogs`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ResourceLogs {
    /// `resource`.
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    /// `scope_logs`.
    #[prost(message, repeated, tag = "2")]
    pub scope_logs: Vec<ScopeLogs>,
}

/// `opentelemetry.proto.logs.v1.ScopeLogs`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ScopeLogs {
    /// `scope`.
    #[prost(message, optional, tag = "1")]
    pub scope: Option<InstrumentationScope>,
    /// `log_records`.
    #[prost(message, repeated, tag = "2")]
    pub log_records: Vec<LogRecord>,
}

/// `opentelemetry.proto.logs.v1.LogRecord`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LogRecord {
    /// `time_unix_nano`: when the event happened (the message's own time), 0 if unknown.
    #[prost(fixed64, tag = "1")]
    pub time_unix_nano: u64,
    /// `severity_number` (`SeverityNumber`: 1 TRACE … 21 FATAL).
    #[prost(int32, tag = "2")]
    pub severity_number: i32,
    /// `severity_text`: the severity as the source names it.
    #[prost(string, tag = "3")]
    pub severity_text: String,
    /// `body`.
    #[prost(message, optional, tag = "5")]
    pub body: Option<AnyValue>,
    /// `attributes`.
    #[prost(message, repeated, tag = "6")]
    pub attributes: Vec<KeyValue>,
    /// `observed_time_unix_nano`: when floodgate received it.
    #[prost(fixed64, tag = "11")]
    pub observed_time_unix_nano: u64,
}

/// `opentelemetry.proto.collector.logs.v1.ExportLogsServiceResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExportLogsServiceResponse {
    /// `partial_success`.
    #[prost(message, optional, tag = "1")]
    pub partial_success: Option<ExportLogsPartialSuccess>,
}

/// `ExportLogsPartialSuccess`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExportLogsPartialSuccess {
    /// `rejected_log_records`.
    #[prost(int64, tag = "1")]
    pub rejected_log_records: i64,
    /// `error_message`.
    #[prost(string, tag = "2")]
    pub error_message: String,
}

/// `google.rpc.Status`: what an OTLP/HTTP endpoint sends with a 4xx or 5xx.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Status {
    /// `code` (a gRPC code).
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// `message`.
    #[prost(string, tag = "2")]
    pub message: String,
}
