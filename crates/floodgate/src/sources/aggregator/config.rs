//! `[aggregator]`: this host accepts agents' flushes.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::units::{duration, opt_duration, size};

/// `[aggregator]`: accept agents, merge, flush on this host's interval.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AggregatorConfig {
    /// Listen address for agents.
    pub listen: SocketAddr,
    /// Certificate, key and (for mutual TLS) client CA; absent = plain TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::net::tls::TlsConfig>,
    /// Where the handled marks of agents' sessions are kept across restarts.
    #[serde(default = "crate::units::default_state_dir")]
    pub state_dir: std::path::PathBuf,
    /// How long after an interval ends the aggregator waits for agents' batches before it
    /// flushes (default: half the interval, at most 5 s).
    #[serde(default, with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub grace: Option<Duration>,
    /// Largest frame accepted from an agent that has said hello (agents write batches of about
    /// 1 MiB); before `Hello` the bound is 4 KiB.
    #[serde(default = "default_max_frame", with = "size")]
    pub max_frame: u64,
    /// Agent sessions remembered at most (a restarted agent starts a new one; silent ones are
    /// forgotten after 7 days): a new session past it is refused.
    #[serde(default = "default_max_agents")]
    pub max_agents: usize,
    /// A frame (and the first one, `Hello`, within at most 10 s) must arrive whole within this
    /// once it has started; a slow sender is cut off.
    #[serde(default = "default_read_timeout", with = "duration")]
    pub read_timeout: Duration,
}

fn default_read_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_max_frame() -> u64 {
    floodgate_forward::frame::DEFAULT_MAX_FRAME as u64
}

fn default_max_agents() -> usize {
    10_000
}

impl AggregatorConfig {
    /// Checks the values serde cannot: ranges, combinations. The error names the key.
    pub fn validate(&self, flush_interval: Duration) -> Result<(), (&'static str, String)> {
        let a = self;
        if a.grace.is_some_and(|g| g >= flush_interval) {
            return Err(("aggregator.grace", "must be shorter than statsd.flush_interval".into()));
        }
        if !((2 << 20)..=(1 << 30)).contains(&a.max_frame) {
            return Err(("aggregator.max_frame", "must be between 2MiB (an agent's batch) and 1GiB".into()));
        }
        if a.max_agents == 0 {
            return Err(("aggregator.max_agents", "must be at least 1".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_must_fit_in_the_flush_interval() {
        let a: AggregatorConfig = toml::from_str("listen = \"127.0.0.1:8127\"\ngrace = \"10s\"").unwrap();
        assert_eq!(a.validate(Duration::from_secs(10)).unwrap_err().0, "aggregator.grace");
        assert!(a.validate(Duration::from_secs(11)).is_ok());
    }
}
