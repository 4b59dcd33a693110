//! `[otlp]`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::units::{duration, size};

/// `[otlp]`: each flush's series to an OpenTelemetry collector (or any OTLP/HTTP endpoint).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// The endpoint's base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT`: metrics are POSTed to
    /// `{endpoint}/v1/metrics` (`http://127.0.0.1:4318` for a local collector).
    pub endpoint: String,
    /// `cumulative` (each point holds everything since its start time, what Prometheus-style
    /// backends take) or `delta` (each point holds one flush: Datadog, Dynatrace).
    #[serde(default)]
    pub temporality: Temporality,
    /// `gzip` (default) or `none`.
    #[serde(default)]
    pub compression: Compression,
    /// Per-request timeout.
    #[serde(default = "default_timeout", with = "duration")]
    pub timeout: Duration,
    /// Flushes held while the endpoint is down or refusing; the oldest are dropped (and
    /// counted) past it.
    #[serde(default = "default_buffer", with = "size")]
    pub buffer: u64,
    /// Extra PEM CA certificates for an https endpoint (the system's are trusted too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<std::path::PathBuf>,
    /// Headers sent with every request (an API key, a tenant).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Most buckets of a timer's exponential histogram (per sign); past it the resolution
    /// halves until the values fit (the OpenTelemetry SDKs' default is 160).
    #[serde(default = "default_max_buckets")]
    pub histogram_max_buckets: usize,
    /// Resource attributes added to `service.name`, `host.name` and `service.instance.id`
    /// (which these may replace).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resource: BTreeMap<String, String>,
}

/// How sums and histograms accumulate.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Temporality {
    /// Since each series' start.
    #[default]
    Cumulative,
    /// Since the flush before.
    Delta,
}

/// Request body compression.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// `Content-Encoding: gzip`.
    #[default]
    Gzip,
    /// Uncompressed.
    None,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_buffer() -> u64 {
    64 << 20
}

fn default_max_buckets() -> usize {
    160
}

impl OtlpConfig {
    /// Checks the values serde cannot. The error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        match self.endpoint.parse::<hyper::Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {}
            _ => return Err(("otlp.endpoint", format!("`{}` is not an http:// or https:// URL", self.endpoint))),
        }
        for (name, value) in &self.headers {
            if hyper::header::HeaderName::try_from(name.as_str()).is_err()
                || hyper::header::HeaderValue::try_from(value.as_str()).is_err()
            {
                return Err(("otlp.headers", format!("`{name}` is not a valid HTTP header")));
            }
        }
        if !(2..=10_000).contains(&self.histogram_max_buckets) {
            return Err(("otlp.histogram_max_buckets", "must be between 2 and 10000".into()));
        }
        Ok(())
    }

    /// The URL a signal goes to: `{endpoint}/v1/{signal}`.
    pub fn url(&self, signal: &str) -> String {
        format!("{}/v1/{signal}", self.endpoint.trim_end_matches('/'))
    }

    /// Loads the CA file (and builds the client) as the sink will.
    pub fn check_files(&self) -> anyhow::Result<()> {
        super::OtlpSink::new(self).map(drop)
    }
}
