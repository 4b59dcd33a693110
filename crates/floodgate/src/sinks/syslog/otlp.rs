//! The OTLP logs output: each chunk of records (JSON lines) as one OTLP/HTTP export request
//! of log records (`floodgate_otlp::logs` maps them), POSTed to `{endpoint}/v1/logs`. Held in
//! memory and then in the spill file while the endpoint is down or asks to wait, in order;
//! 429, 502, 503 and 504 are retried (after `Retry-After` when it says), a partial success's
//! rejected records and a refused chunk's are counted as dropped, with the endpoint's reason.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use floodgate_otlp::proto::{self, KeyValue};
use prost::Message;
use tokio::sync::mpsc;

use super::config::SyslogOtlp;
use super::queue::Queue;
use super::{Chunk, OutputCounters};
use crate::sinks::delivery::backoff::Backoff;
use crate::sinks::delivery::http::HttpEndpoint;
use crate::sinks::delivery::inbox::Inbox;
use crate::sinks::otlp::{Compression, Outcome};

impl SyslogOtlp {
    /// Where records go: `{endpoint}/v1/logs`.
    pub fn url(&self) -> String {
        format!("{}/v1/logs", self.endpoint.trim_end_matches('/'))
    }
}

/// The OTLP logs output's task.
pub(super) struct OtlpLogs {
    target: Target,
    queue: Queue,
    counters: Arc<OutputCounters>,
}

/// Where and how requests go.
struct Target {
    url: hyper::Uri,
    endpoint: HttpEndpoint,
    compression: Compression,
    resource: Vec<KeyValue>,
}

/// How one request came out.
enum Sent {
    /// Taken; this many records rejected (partial success).
    Taken(u64),
    /// Refused for good: dropped, with the endpoint's reason.
    Refused(String),
    /// Worth another try (after this long, if the endpoint said).
    Retry(String, Option<Duration>),
}

impl OtlpLogs {
    pub(super) fn new(config: &SyslogOtlp, counters: Arc<OutputCounters>) -> Result<OtlpLogs> {
        let url = config.url().parse().with_context(|| format!("endpoint `{}`", config.endpoint))?;
        let endpoint = HttpEndpoint::new("syslog otlp", config.timeout, config.ca.as_deref(), &config.headers)?;
        let queue = Queue::open(config.buffer, config.spill.as_deref(), config.spill_max, config.fsync, &counters)?;
        let mut resource = vec![KeyValue::string("host.name", crate::sys::host_name())];
        for (k, v) in &config.resource {
            resource.retain(|kv| &kv.key != k);
            resource.push(KeyValue::string(k, v));
        }
        Ok(OtlpLogs { target: Target { url, endpoint, compression: config.compression, resource }, queue, counters })
    }

    pub(super) async fn run(mut self, rx: mpsc::Receiver<Chunk>, drain: Duration) {
        let mut backoff = Backoff::default();
        let mut inbox = Inbox::new(rx, drain);
        loop {
            let working = !backoff.is_failing();
            self.counters.connected.store(working as u64, Relaxed);
            self.queue.take_ready(&mut inbox, working, |c| c);
            if self.queue.is_empty() {
                if inbox.closing() {
                    break;
                }
                if let Some(chunk) = inbox.next().await {
                    self.queue.take(chunk, working);
                }
                continue;
            }
            if inbox.drain_over() {
                self.queue.give_up("syslog otlp");
                break;
            }
            let Some(chunk) = self.queue.pop() else { continue };
            let body = self.target.body(&chunk);
            let result = {
                let send = self.target.send(body);
                tokio::pin!(send);
                loop {
                    let drain_over = inbox.until_drain_over();
                    tokio::select! {
                        r = &mut send => break r,
                        more = inbox.next(), if !inbox.closing() && self.queue.has_room() => {
                            if let Some(more) = more {
                                self.queue.take(more, true);
                            }
                        },
                        _ = drain_over => break Sent::Retry("shutdown drain over".into(), None),
                    }
                }
            };
            match result {
                Sent::Taken(rejected) => {
                    backoff.succeeded();
                    self.queue.written();
                    self.counters.written_messages.fetch_add(chunk.messages.saturating_sub(rejected), Relaxed);
                    self.counters.written_bytes.fetch_add(chunk.bytes.len() as u64, Relaxed);
                    self.counters.dropped_messages.fetch_add(rejected.min(chunk.messages), Relaxed);
                }
                Sent::Refused(reason) => {
                    backoff.succeeded();
                    self.queue.written();
                    self.counters.errors.fetch_add(1, Relaxed);
                    self.counters.dropped_messages.fetch_add(chunk.messages, Relaxed);
                    tracing::error!(records = chunk.messages, %reason, "syslog otlp: the endpoint refused records; dropped");
                }
                Sent::Retry(error, retry_after) => {
                    self.queue.unpop(chunk);
                    self.counters.errors.fetch_add(1, Relaxed);
                    let wait = backoff.failed();
                    let retry_in = inbox.patience(retry_after.unwrap_or(wait));
                    tracing::warn!(%error, ?retry_in, "syslog otlp: not delivered; records kept, sending again");
                    inbox.wait(retry_in, |c| self.queue.take(c, false)).await;
                }
            }
        }
        self.counters.connected.store(0, Relaxed);
    }
}

impl Target {
    /// A chunk's records as one request body (compressed as configured). A line that is not
    /// a JSON record (none should be) is left out.
    fn body(&self, chunk: &Chunk) -> Bytes {
        let offset = jiff::tz::TimeZone::system().to_offset(jiff::Timestamp::now()).seconds();
        let records = chunk
            .bytes
            .split(|b| *b == b'\n')
            .filter_map(|line| serde_json::from_slice::<serde_json::Value>(line).ok())
            .map(|json| floodgate_otlp::logs::record(&json, offset))
            .collect();
        let scope = proto::InstrumentationScope { name: "floodgate".into(), version: env!("CARGO_PKG_VERSION").into() };
        let raw = floodgate_otlp::logs::request(records, &self.resource, &scope).encode_to_vec();
        Bytes::from(crate::sinks::otlp::compress(raw, self.compression))
    }

    async fn send(&self, body: Bytes) -> Sent {
        let headers = crate::sinks::otlp::headers(self.compression);
        let answer = match self.endpoint.post(&self.url, &headers, body).await {
            Ok(a) => a,
            Err(e) => return Sent::Retry(e.message, None),
        };
        match crate::sinks::otlp::outcome(&answer) {
            Outcome::Taken => {
                let rejected = proto::ExportLogsServiceResponse::decode(&answer.body[..])
                    .ok()
                    .and_then(|r| r.partial_success)
                    .filter(|p| p.rejected_log_records > 0);
                if let Some(p) = &rejected {
                    tracing::warn!(rejected = p.rejected_log_records, reason = %p.error_message, "syslog otlp: the endpoint rejected part of a chunk");
                }
                Sent::Taken(rejected.map_or(0, |p| p.rejected_log_records as u64))
            }
            Outcome::Retry(message) => Sent::Retry(message, answer.retry_after),
            Outcome::Refused(message) => Sent::Refused(message),
        }
    }
}
