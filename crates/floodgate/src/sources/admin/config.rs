//! `[admin]`: the console.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::units::duration;

/// `[admin]`: the statsd-compatible management console.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Listen address; absent disables the console.
    pub listen: Option<SocketAddr>,
    /// Initial health (`"up"` or `"down"`, statsd `healthStatus`).
    pub health: Health,
    /// Console sessions open at once (the guard's `[limits]` apply too).
    pub max_connections: usize,
    /// A session that sends nothing (or reads nothing) for this long is closed.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 8126))),
            health: Health::Up,
            max_connections: 64,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Health reported by the console and `/healthz`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Serving.
    Up,
    /// Marked down by an operator (load balancers drain it).
    Down,
}

impl AdminConfig {
    /// Checks the values serde cannot: ranges, combinations. The error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.max_connections == 0 {
            return Err(("admin.max_connections", "must be at least 1".into()));
        }
        if self.idle_timeout < Duration::from_millis(100) {
            return Err(("admin.idle_timeout", "must be at least 100ms".into()));
        }
        Ok(())
    }
}
