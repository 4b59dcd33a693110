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
    /// When the kernel counts traffic (`nf_conntrack_acct=1`), how often the table is re-read
    /// to bring live connections' bytes and packets up to date (the kernel reports them in
    /// dumps and at a connection's end, not in its other events); `"0s"`: at the end only.
    #[serde(with = "duration")]
    pub accounting_interval: Duration,
    /// Other network namespaces whose tables are read too (`/run/netns/NAME`,
    /// `/proc/PID/ns/net`), each by its own thread, its metrics labelled `netns`.
    pub netns: Vec<std::path::PathBuf>,
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
            accounting_interval: Duration::from_secs(15),
            netns: Vec::new(),
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
        let mut names = std::collections::HashSet::new();
        for path in &self.netns {
            if !names.insert(namespace_label(path)) {
                return Err((
                    "conntrack.netns",
                    format!("{} has the same label as another namespace ({})", path.display(), namespace_label(path)),
                ));
            }
        }
        Ok(())
    }
}

/// The `netns` label of a namespace file: its name under `/run/netns`, `pid:PID` for
/// `/proc/PID/ns/net`, else the path.
pub fn namespace_label(path: &std::path::Path) -> String {
    let text = path.display().to_string();
    if let Some(pid) = text.strip_prefix("/proc/").and_then(|r| r.strip_suffix("/ns/net")) {
        return format!("pid:{pid}");
    }
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name))
            if dir == std::path::Path::new("/run/netns") || dir == std::path::Path::new("/var/run/netns") =>
        {
            name.to_string_lossy().into_owned()
        }
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_labelled_by_name_and_two_alike_are_refused() {
        use std::path::Path;
        assert_eq!(namespace_label(Path::new("/run/netns/web")), "web");
        assert_eq!(namespace_label(Path::new("/var/run/netns/db")), "db");
        assert_eq!(namespace_label(Path::new("/proc/4242/ns/net")), "pid:4242");
        assert_eq!(namespace_label(Path::new("/srv/ns/x")), "/srv/ns/x");
        let twice =
            ConntrackConfig { netns: vec!["/run/netns/a".into(), "/var/run/netns/a".into()], ..Default::default() };
        assert_eq!(twice.validate().unwrap_err().0, "conntrack.netns");
    }
}
