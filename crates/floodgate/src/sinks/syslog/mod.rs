//! The syslog output: records from every syslog listener, in chunks, to one destination.
//!
//! - `file` / `stdout`: JSON lines written by one thread; the file is reopened after SIGHUP
//!   (logrotate's `postrotate`), so a renamed file is let go and a new one created.
//! - `forward`: the messages as received, octet-counted (RFC 6587 §3.4.1), over TCP or TLS to
//!   a syslog server. While it is down chunks wait in a bounded memory queue, then (if
//!   configured) in a spill file, in order; past both, chunks are dropped and counted. Before
//!   each write the connection is checked for a close from the server (a syslog server never
//!   writes, so anything readable means it is going away): a write into a connection the
//!   server already closed would be lost without an error.
//!
//! Listeners send [`Chunk`]s over a bounded channel: when the destination cannot keep up, TCP
//! senders are slowed (their reads wait) rather than anything accepted being dropped.

//!
//! Here: the output and its figures; `file.rs` the file/stdout writer; `forward.rs` the
//! forwarder and its queue; `spill.rs` the spill file (a [`DiskLog`](crate::sinks::delivery::disk_log::DiskLog)).

pub mod config;
mod file;
mod forward;
mod nats;
mod otlp;
mod queue;
mod spill;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::mpsc;

use crate::config::{Fsync, SyslogOutput};
pub use crate::record::{Chunk, Encoding};
use file::{open_append, write_lines, Out};
use forward::Forwarder;

/// Chunks waiting in the channel at most (each up to a TCP read's or a UDP batch's worth).
const CHANNEL: usize = 256;

/// The output's figures.
#[derive(Debug, Default)]
pub struct OutputCounters {
    /// Messages written (or forwarded).
    pub written_messages: AtomicU64,
    /// Bytes written.
    pub written_bytes: AtomicU64,
    /// Failed writes, connects and lost connections.
    pub errors: AtomicU64,
    /// Messages dropped: buffer and spill full, or still held when a shutdown gave up.
    pub dropped_messages: AtomicU64,
    /// Bytes held in memory.
    pub buffer_bytes: AtomicU64,
    /// Messages held (memory and spill).
    pub buffer_messages: AtomicU64,
    /// Bytes held in the spill file.
    pub spill_bytes: AtomicU64,
    /// 1 while connected (forward).
    pub connected: AtomicU64,
}

/// The running output.
pub struct Output {
    /// Where listeners send chunks (the output ends once every clone is dropped).
    pub sender: mpsc::Sender<Chunk>,
    /// How they encode.
    pub encoding: Encoding,
    /// Figures.
    pub counters: Arc<OutputCounters>,
    /// `file`: set by SIGHUP, taken by the writer before its next write.
    reopen: Arc<AtomicBool>,
    task: OutputTask,
    /// What it writes to, for logs.
    pub describe: String,
}

enum OutputTask {
    Thread(std::thread::JoinHandle<()>),
    Task(tokio::task::JoinHandle<()>),
}

impl Output {
    /// Opens the destination (a file must be writable now) and starts the writer. `drain` is
    /// how long a forward output keeps trying at shutdown; `stopping` turns true when the
    /// shutdown begins (a file writer then stops retrying a failing disk for long).
    pub fn start(config: &SyslogOutput, raw: bool, drain: Duration, stopping: Arc<AtomicBool>) -> Result<Output> {
        let (sender, rx) = mpsc::channel(CHANNEL);
        let counters = Arc::new(OutputCounters::default());
        let reopen = Arc::new(AtomicBool::new(false));
        let (task, encoding, describe) = match config {
            SyslogOutput::File { path, fsync } => {
                let file = open_append(path)?;
                let (c, r, path2, fsync) = (counters.clone(), reopen.clone(), path.clone(), *fsync);
                let stop = stopping.clone();
                let thread = std::thread::Builder::new()
                    .name("syslog-out".into())
                    .spawn(move || write_lines(rx, Out::File(file), Some((path2, r)), fsync, &c, &stop))?;
                (OutputTask::Thread(thread), Encoding::Json { raw }, format!("file {}", path.display()))
            }
            SyslogOutput::Stdout => {
                let c = counters.clone();
                let thread = std::thread::Builder::new().name("syslog-out".into()).spawn(move || {
                    write_lines(rx, Out::Stdout(std::io::stdout()), None, Fsync::Never, &c, &stopping)
                })?;
                (OutputTask::Thread(thread), Encoding::Json { raw }, "stdout".to_string())
            }
            SyslogOutput::Forward(f) => {
                let target = Forwarder::new(f, counters.clone())?;
                let describe = format!("forward {}{}", f.address, if f.tls.is_some() { " (tls)" } else { "" });
                (OutputTask::Task(tokio::spawn(target.run(rx, drain))), Encoding::OctetCounted, describe)
            }
            SyslogOutput::Nats(n) => {
                let target = nats::NatsOutput::new(n, counters.clone())?;
                let describe = format!("nats {} subject {}", crate::config::redact_url(&n.url), n.subject);
                (OutputTask::Task(tokio::spawn(target.run(rx, drain))), Encoding::Json { raw }, describe)
            }
            SyslogOutput::Otlp(o) => {
                let target = otlp::OtlpLogs::new(o, counters.clone())?;
                let describe = format!("otlp {}", crate::config::redact_url(&o.url()));
                (OutputTask::Task(tokio::spawn(target.run(rx, drain))), Encoding::Json { raw }, describe)
            }
        };
        Ok(Output { sender, encoding, counters, reopen, task, describe })
    }

    /// Set it (SIGHUP) and a file output reopens its path before the next write.
    pub fn reopen_flag(&self) -> Arc<AtomicBool> {
        self.reopen.clone()
    }

    /// Waits for the writer to hand on everything sent (call after every sender is dropped;
    /// this drops the output's own).
    pub async fn finish(self) {
        drop(self.sender);
        match self.task {
            OutputTask::Thread(t) => {
                let _ = tokio::task::spawn_blocking(move || t.join()).await;
            }
            OutputTask::Task(t) => {
                let _ = t.await;
            }
        }
    }
}

/// The output's figures, labelled by its kind (`output="forward"`).
pub struct OutputReport {
    /// `file`, `stdout` or `forward`.
    pub kind: String,
    /// Its counters.
    pub counters: Arc<OutputCounters>,
}

impl crate::metrics::Report for OutputReport {
    fn report(&self, out: &mut crate::metrics::Families) {
        use crate::metrics::{Describe, StatusPlace};
        let c = &self.counters;
        let place = |key| StatusPlace::one("syslog_output", key);
        let rows: [(Describe, &AtomicU64); 8] = [
            (
                Describe::counter("floodgate_syslog_output_messages_total", "Syslog records written or forwarded.")
                    .status(place("messages")),
                &c.written_messages,
            ),
            (Describe::counter("floodgate_syslog_output_bytes_total", "Bytes written or forwarded."), &c.written_bytes),
            (
                Describe::counter(
                    "floodgate_syslog_output_errors_total",
                    "Failed writes, connects and lost connections.",
                )
                .status(place("errors")),
                &c.errors,
            ),
            (
                Describe::counter(
                    "floodgate_syslog_output_dropped_total",
                    "Messages dropped: buffer and spill full, or held past the shutdown drain.",
                )
                .status(place("dropped")),
                &c.dropped_messages,
            ),
            (
                Describe::gauge("floodgate_syslog_output_buffer_bytes", "Bytes waiting in memory.")
                    .status(place("buffer_bytes")),
                &c.buffer_bytes,
            ),
            (
                Describe::gauge("floodgate_syslog_output_buffer_messages", "Messages waiting (memory and spill).")
                    .status(place("buffer_messages")),
                &c.buffer_messages,
            ),
            (
                Describe::gauge("floodgate_syslog_output_spill_bytes", "Bytes waiting in the spill file."),
                &c.spill_bytes,
            ),
            (
                Describe::gauge("floodgate_syslog_output_connected", "1 while the forward output is connected.")
                    .status(place("connected")),
                &c.connected,
            ),
        ];
        for (describe, v) in rows {
            out.add(describe, &[("output", &self.kind)], v.load(Relaxed));
        }
    }
}

/// The record output (`[syslog] output`), open while anything can produce records: syslog
/// listeners, and StatsD listeners (DogStatsD events and service checks are records too, and
/// go to the configured output whether or not syslog listens). Records go through the
/// [`RecordPipe`](crate::record::RecordPipe) this puts in the wiring.
pub fn build(
    shared: &Arc<crate::component::Shared>,
    config: &crate::config::Config,
    wiring: &mut crate::component::Wiring,
) -> Result<Option<Box<dyn super::Sink>>> {
    let y = &config.syslog;
    if !y.has_listeners() && !config.statsd.has_listeners() {
        return Ok(None);
    }
    let output =
        Output::start(&y.output, y.raw, Duration::from_secs(10), shared.stopping.clone()).context("[syslog] output")?;
    tracing::info!(output = %output.describe, "syslog output");
    let kind = output.describe.split(' ').next().unwrap_or_default().to_string();
    shared.metrics.add(Arc::new(OutputReport { kind, counters: output.counters.clone() }));
    wiring.records = Some(crate::record::RecordPipe { sender: output.sender.clone(), encoding: output.encoding });
    Ok(Some(Box::new(RecordOutput { reopen: output.reopen_flag(), running: y.output.clone(), output })))
}

/// The running output.
struct RecordOutput {
    output: Output,
    reopen: Arc<AtomicBool>,
    /// The output in force (a change needs a restart).
    running: SyslogOutput,
}

impl super::Sink for RecordOutput {
    fn name(&self) -> &'static str {
        "syslog"
    }

    fn reload(&mut self, config: &crate::config::Config) {
        // A file output reopens its path (logrotate renamed it).
        self.reopen.store(true, Relaxed);
        if config.syslog.output != self.running {
            tracing::warn!("SIGHUP: a change to the syslog output takes effect at the next restart");
        }
    }

    /// Once the listeners have ended (they hold its channel), hands on what is held.
    fn finish(self: Box<Self>) -> crate::component::Stopping {
        Box::pin(async move {
            tracing::info!(output = %self.output.describe, "syslog: handing on what is held");
            self.output.finish().await;
        })
    }
}
