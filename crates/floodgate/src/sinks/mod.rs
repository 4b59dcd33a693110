//! Outputs. Each sink builds itself from the configuration and plugs into the flusher
//! ([`crate::flush::Outputs`]) or, for the syslog output, hands the syslog listeners its
//! [`RecordPipe`](crate::record::RecordPipe); at shutdown each finishes after the final flush.
//!
//! Adding a sink: a module here with a `build` function, and one line in [`SINKS`]. How a
//! sink queues, retries, spills and syncs is [`delivery`]'s, shared by all of them: a sink
//! that delivers each flush as one request (Graphite, remote-write) is its encoder, a
//! [`Deliver`](delivery::flushes::Deliver) and [`start_flush_sink`](delivery::flushes::start_flush_sink).

pub mod delivery;
pub mod forward;
pub mod graphite;
pub mod otlp;
pub mod remote_write;
pub mod syslog;

use std::sync::Arc;

/// A running sink.
pub trait Sink: Send {
    /// Its name, for logs.
    fn name(&self) -> &'static str;

    /// SIGHUP: `config` is now in force (a new address, a file to reopen). What cannot change
    /// while running is logged, not applied.
    fn reload(&mut self, _config: &crate::config::Config) {}

    /// Shutdown, after the final flush: deliver what is held (bounded in time), then end.
    fn finish(self: Box<Self>) -> crate::component::Stopping;
}

/// Builds a sink from the configuration: `None` when it is off.
pub type Build = fn(
    &Arc<crate::component::Shared>,
    &crate::config::Config,
    &mut crate::component::Wiring,
) -> anyhow::Result<Option<Box<dyn Sink>>>;

/// Every sink: the one place a new sink is added. Sinks start before sources (the syslog
/// listeners write into the syslog output).
pub const SINKS: &[Build] = &[graphite::build, remote_write::build, otlp::build, forward::build, syslog::build];
