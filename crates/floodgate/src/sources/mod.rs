//! Inputs. Each source is a folder (or file) that builds itself from the configuration, binds
//! its listeners through the shared lifecycle ([`running`]), puts every datagram and
//! connection to the guard, decodes, and feeds aggregation (StatsD, agents' batches) or the
//! record output (syslog). The receive loops they share are in [`crate::net`].
//!
//! Adding a source: a module here with a `build` function, and one line in [`SOURCES`].

pub mod admin;
pub mod aggregator;
pub mod conntrack;
pub mod http;
pub mod running;
pub mod statsd;
pub mod syslog;

use std::sync::Arc;

use anyhow::Result;

use crate::component::{Shared, Stopping, Wiring};
use crate::config::Config;

/// A running source (or any listening component: the console and HTTP use the same model).
pub trait Source: Send {
    /// Its name, for logs.
    fn name(&self) -> &'static str;

    /// SIGHUP: `config` is now in force. Start the listeners it adds, stop those it removes,
    /// re-read certificates. What cannot change while running is logged, not applied.
    fn reload(&mut self, _shared: &Arc<Shared>, _config: &Config) {}

    /// Shutdown: stop taking input and hand on everything already taken (queued datagrams,
    /// what connected senders already sent) before the returned future ends. Every source
    /// stops before the final flush.
    fn stop(self: Box<Self>) -> Stopping;
}

/// Builds a source from the configuration: `None` when it is off.
pub type Build = fn(&Arc<Shared>, &Config, &mut Wiring) -> Result<Option<Box<dyn Source>>>;

/// Every source, in start-up order: the one place a new source is added.
pub const SOURCES: &[Build] = &[
    statsd::build,
    syslog::build,
    aggregator::build,
    conntrack::build,
    crate::sources::admin::build,
    crate::sources::http::build,
];
