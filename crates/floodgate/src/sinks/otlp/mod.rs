//! OpenTelemetry out (`[otlp]`): each flush's StatsD series as one OTLP/HTTP protobuf export
//! request, gzipped, POSTed to `{endpoint}/v1/metrics`; queued, retried and buffered by the
//! delivery kit. Counters are monotonic sums, gauges gauges, sets gauges of their count,
//! timers exponential histograms from their DDSketch (or classic histograms where the mapping
//! file asks for buckets); tags are attributes, the host and agent resource attributes. On an
//! aggregator each timer's histogram is the fleet's, merged exactly from the agents' sketches.
//!
//! The endpoint's answers are OTLP's: 429, 502, 503 and 504 are retried (after
//! `Retry-After` when it says), a partial success is counted, any other refusal drops the
//! flush with the endpoint's reason.

pub mod config;
pub mod metrics;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use floodgate_otlp::proto;
use prost::Message;

use crate::flush::Payload;
use crate::metrics::{Describe, Families, Report};
use crate::sinks::delivery::flushes::{Deliver, DeliverError};
use crate::sinks::delivery::http::HttpEndpoint;
pub use config::{Compression, OtlpConfig, Temporality};

/// What endpoints said beyond success.
#[derive(Debug, Default)]
pub struct OtlpCounters {
    /// Data points an endpoint took the request of but rejected (partial success).
    pub rejected_points: AtomicU64,
    /// Responses that were a partial success.
    pub partial_successes: AtomicU64,
}

impl Report for OtlpCounters {
    fn report(&self, out: &mut Families) {
        let rejected = Describe::counter(
            "floodgate_otlp_rejected_points_total",
            "Data points an OTLP endpoint accepted the request of but rejected (partial success).",
        );
        out.add(rejected, &[], self.rejected_points.load(Relaxed));
        let partial =
            Describe::counter("floodgate_otlp_partial_successes_total", "OTLP responses that were a partial success.");
        out.add(partial, &[], self.partial_successes.load(Relaxed));
    }
}

/// The sink: one endpoint.
pub struct OtlpSink {
    url: hyper::Uri,
    endpoint: HttpEndpoint,
    compression: Compression,
    counters: Arc<OtlpCounters>,
}

impl OtlpSink {
    /// A sink for `[otlp]`.
    pub fn new(config: &OtlpConfig) -> anyhow::Result<OtlpSink> {
        use anyhow::Context;
        let endpoint = HttpEndpoint::new("otlp", config.timeout, config.ca.as_deref(), &config.headers)?;
        Ok(OtlpSink {
            url: config.url("metrics").parse().context("otlp.endpoint")?,
            endpoint,
            compression: config.compression,
            counters: Arc::default(),
        })
    }
}

impl Deliver for OtlpSink {
    fn name(&self) -> &'static str {
        "otlp"
    }

    async fn deliver(&self, p: &Payload) -> Result<(), DeliverError> {
        let answer = self.endpoint.post(&self.url, &headers(self.compression), Bytes::from(p.bytes.clone())).await?;
        match outcome(&answer) {
            Outcome::Taken => {
                // An empty body, or one that is not the protobuf response, is a full success.
                if let Some(partial) = proto::ExportMetricsServiceResponse::decode(&answer.body[..])
                    .ok()
                    .and_then(|r| r.partial_success)
                    .filter(|p| p.rejected_data_points > 0)
                {
                    self.counters.partial_successes.fetch_add(1, Relaxed);
                    self.counters.rejected_points.fetch_add(partial.rejected_data_points as u64, Relaxed);
                    tracing::warn!(
                        rejected = partial.rejected_data_points,
                        reason = %partial.error_message,
                        "otlp: the endpoint rejected part of a flush"
                    );
                }
                Ok(())
            }
            Outcome::Retry(message) => Err(DeliverError { retry: true, message, retry_after: answer.retry_after }),
            Outcome::Refused(message) => Err(DeliverError::dropped(message)),
        }
    }
}

/// The headers of an OTLP/HTTP protobuf request.
pub(crate) fn headers(compression: Compression) -> Vec<(&'static str, &'static str)> {
    let mut headers = vec![("content-type", "application/x-protobuf")];
    if compression == Compression::Gzip {
        headers.push(("content-encoding", "gzip"));
    }
    headers
}

/// A request body, compressed as configured.
pub(crate) fn compress(raw: Vec<u8>, compression: Compression) -> Vec<u8> {
    use std::io::Write;
    match compression {
        Compression::None => raw,
        Compression::Gzip => {
            let mut gz = flate2::write::GzEncoder::new(Vec::with_capacity(raw.len() / 4), flate2::Compression::fast());
            // Writing to memory cannot fail.
            let _ = gz.write_all(&raw);
            gz.finish().unwrap_or_default()
        }
    }
}

/// What an OTLP/HTTP answer means.
pub(crate) enum Outcome {
    /// Taken (its body may still report a partial success).
    Taken,
    /// Worth another try (429, 502, 503, 504), after `Retry-After` if it says.
    Retry(String),
    /// Refused for good, with the endpoint's reason.
    Refused(String),
}

/// OTLP/HTTP's rules: only 429, 502, 503 and 504 are worth a retry; a refusal's body is a
/// `google.rpc.Status` whose message says why.
pub(crate) fn outcome(answer: &crate::sinks::delivery::http::Answer) -> Outcome {
    let status = answer.status;
    if status.is_success() {
        return Outcome::Taken;
    }
    let message = match proto::Status::decode(&answer.body[..]) {
        Ok(s) if !s.message.is_empty() => format!("HTTP {status}: {}", s.message),
        _ => answer.message(),
    };
    if matches!(status.as_u16(), 429 | 502 | 503 | 504) {
        Outcome::Retry(message)
    } else {
        Outcome::Refused(message)
    }
}

/// `[otlp]`: the sink and its delivery loop; `None` when not set.
pub fn build(
    shared: &Arc<crate::component::Shared>,
    config: &crate::config::Config,
    wiring: &mut crate::component::Wiring,
) -> anyhow::Result<Option<Box<dyn super::Sink>>> {
    use anyhow::Context;
    let Some(otlp) = &config.otlp else { return Ok(None) };
    let sink = OtlpSink::new(otlp).context("otlp")?;
    shared.metrics.add(sink.counters.clone());
    tracing::info!(endpoint = %crate::config::redact_url(&otlp.endpoint), temporality = ?otlp.temporality, "otlp output on");
    let agent = config.forward.as_ref().and_then(|f| f.agent_id.clone());
    let render = metrics::Render::new(shared.naming.clone(), otlp, agent);
    Ok(Some(crate::sinks::delivery::flushes::start_flush_sink(
        shared,
        wiring,
        vec![sink],
        otlp.buffer,
        Box::new(render),
    )))
}
