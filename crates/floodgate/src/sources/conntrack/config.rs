//! `[conntrack]`: following the kernel's connection table.

use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

use crate::units::{duration, size};

/// `[conntrack]`: the host's connections per remote endpoint and state.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConntrackConfig {
    /// `"auto"` (ctnetlink, else sock_diag, else off with a log line), `true` (fail to start
    /// if neither works), `false`.
    pub enabled: Enabled,
    /// Log every connection event.
    pub log_events: bool,
    /// `"netfilter"` (the conntrack tool's lines) or `"json"`.
    pub log_events_format: EventFormat,
    /// Where events are logged: `"stdout"` or a file path.
    pub log_events_output: String,
    /// Most `host` label values; connections to further remotes are counted as `other`.
    pub max_remote_hosts: usize,
    /// Receive buffer of the event socket (a burst beyond it loses events and forces a resync).
    #[serde(with = "size")]
    pub event_buffer: u64,
    /// How often the fallback (sock_diag) re-reads the host's sockets.
    #[serde(with = "duration")]
    pub poll_interval: Duration,
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        ConntrackConfig {
            enabled: Enabled::Auto,
            log_events: false,
            log_events_format: EventFormat::Netfilter,
            log_events_output: "stdout".into(),
            max_remote_hosts: 10_000,
            event_buffer: 16 << 20,
            poll_interval: Duration::from_secs(5),
        }
    }
}

/// `enabled = "auto" | true | false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enabled {
    /// Use what the kernel allows, say which.
    Auto,
    /// Required: a start-up error if neither source works.
    On,
    /// Off.
    Off,
}

impl Serialize for Enabled {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Enabled::Auto => s.serialize_str("auto"),
            Enabled::On => s.serialize_bool(true),
            Enabled::Off => s.serialize_bool(false),
        }
    }
}

impl<'de> Deserialize<'de> for Enabled {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(true) => Ok(Enabled::On),
            Raw::Bool(false) => Ok(Enabled::Off),
            Raw::Text(t) if t == "auto" => Ok(Enabled::Auto),
            _ => Err(de::Error::custom("expected \"auto\", true or false")),
        }
    }
}

/// `log_events_format`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EventFormat {
    /// The conntrack tool's lines (`conntrack -E`).
    Netfilter,
    /// One JSON object per event.
    Json,
}

impl ConntrackConfig {
    /// Checks the values serde cannot: ranges, combinations. The error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.max_remote_hosts == 0 {
            return Err(("conntrack.max_remote_hosts", "must be at least 1".into()));
        }
        Ok(())
    }
}
