//! `[forward]`: this agent ships its flushes to aggregators.

use serde::{Deserialize, Serialize};

use crate::units::{size, Fsync};

/// `[forward]`: ship each flush, pre-aggregated, to aggregators over TCP/TLS.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ForwardConfig {
    /// `host:port` of every aggregator; series are spread over them by consistent hashing.
    pub aggregators: Vec<String>,
    /// TLS to the aggregators (`ca`, and `cert` + `key` for mutual TLS); absent = plain TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::net::tls::ClientTls>,
    /// Name of this agent (default: the host name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Unacknowledged batches held per aggregator; the oldest are dropped (and counted) past it.
    #[serde(default = "default_forward_buffer", with = "size")]
    pub buffer: u64,
    /// Where unacknowledged batches are kept on disk (and the agent's session), so a restart
    /// or a crash loses none of them.
    #[serde(default = "crate::units::default_state_dir")]
    pub state_dir: std::path::PathBuf,
    /// When those files are synced to disk.
    #[serde(default)]
    pub fsync: Fsync,
}

fn default_forward_buffer() -> u64 {
    256 << 20
}

impl ForwardConfig {
    /// Checks the values serde cannot: ranges, combinations. The error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let f = self;
        if f.aggregators.is_empty() {
            return Err(("forward.aggregators", "needs at least one host:port".into()));
        }
        for a in &f.aggregators {
            if a.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
                return Err(("forward.aggregators", format!("`{a}` is not host:port")));
            }
        }
        if let Some(t) = &f.tls {
            if t.cert.is_some() != t.key.is_some() {
                return Err(("forward.tls", "`cert` and `key` go together".into()));
            }
        }
        Ok(())
    }
}
