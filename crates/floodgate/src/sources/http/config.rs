//! `[http]`: `/metrics`, `/ui`, `/api/status`.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::units::duration;

/// `[http]`: `/metrics`, `/healthz`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listen address; absent disables HTTP.
    pub listen: Option<SocketAddr>,
    /// Serve `POST /-/reload` (re-read the config, as SIGHUP does). Off: anyone who can reach
    /// the port could trigger it. On, it also wants an `X-Floodgate-Reload` header, which a web
    /// page cannot send cross-site.
    pub reload: bool,
    /// HTTP connections open at once (the guard's `[limits]` apply too).
    pub max_connections: usize,
    /// A request's head must arrive within this; an idle keep-alive connection is closed after
    /// it; a response nobody reads is abandoned after it.
    #[serde(with = "duration")]
    pub header_timeout: Duration,
    /// Host names a browser may reach these pages by, besides IP addresses, `localhost` and
    /// this host's own name (`Host` is checked on browser requests and on `POST /-/reload`,
    /// so a page that rebinds its DNS name to this host cannot read or drive it).
    pub hosts: Vec<String>,
    /// Who may open the tap (`GET /api/tap`, `floodgate tap`, the tap on `/ui`): addresses or
    /// CIDR blocks. It shows what senders send, so loopback only unless widened; empty turns
    /// it off.
    pub tap_from: Vec<String>,
    /// Tap viewers at once (each holds at most a few hundred events queued).
    pub tap_viewers: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9318))),
            reload: false,
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
            hosts: Vec::new(),
            tap_from: vec!["127.0.0.0/8".into(), "::1".into()],
            tap_viewers: 4,
        }
    }
}

impl HttpConfig {
    /// Checks the values serde cannot: ranges, combinations. The error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.max_connections == 0 {
            return Err(("http.max_connections", "must be at least 1".into()));
        }
        if self.header_timeout < Duration::from_millis(100) {
            return Err(("http.header_timeout", "must be at least 100ms".into()));
        }
        if let Err(e) = floodgate_guard::AllowList::parse(&self.tap_from) {
            return Err(("http.tap_from", e.to_string()));
        }
        Ok(())
    }
}
