//! `[prometheus_remote_write]`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::units::{duration, size};

/// `[prometheus_remote_write]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RemoteWriteConfig {
    /// Endpoint, e.g. `http://127.0.0.1:9090/api/v1/write`.
    pub url: String,
    /// Per-request timeout.
    #[serde(default = "default_remote_write_timeout", with = "duration")]
    pub timeout: Duration,
    /// Flushes held while the endpoint is down; the oldest are dropped (and counted) past it.
    #[serde(default = "default_remote_write_buffer", with = "size")]
    pub buffer: u64,
    /// Extra PEM CA certificates for an https endpoint (the system's are trusted too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<std::path::PathBuf>,
    /// Headers sent with every request: `Authorization`, `X-Scope-OrgID` (Mimir tenants), ...
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub headers: std::collections::BTreeMap<String, String>,
}

fn default_remote_write_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_remote_write_buffer() -> u64 {
    64 << 20
}

impl RemoteWriteConfig {
    /// Checks the values serde cannot: ranges, combinations. The error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let rw = self;
        match rw.url.parse::<hyper::Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {}
            _ => {
                return Err(("prometheus_remote_write.url", format!("`{}` is not an http:// or https:// URL", rw.url)))
            }
        }
        for (name, value) in &rw.headers {
            if hyper::header::HeaderName::try_from(name.as_str()).is_err()
                || hyper::header::HeaderValue::try_from(value.as_str()).is_err()
            {
                return Err(("prometheus_remote_write.headers", format!("`{name}` is not a valid HTTP header")));
            }
        }
        Ok(())
    }
}

impl RemoteWriteConfig {
    /// Loads the CA file (and builds the client) as the sink will.
    pub fn check_files(&self) -> anyhow::Result<()> {
        super::RemoteWriteSink::new(self).map(drop)
    }
}
