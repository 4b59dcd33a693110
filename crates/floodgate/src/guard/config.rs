//! `[limits]`: the guard's allow-list and limits.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::units::duration;

/// `[limits]`: the guard in front of every listener. A rate of 0 turns that limit off.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Messages per second per source IP (IPv6: per /64), per listener. For StatsD a message is
    /// a line: a 20-line datagram is 20 messages.
    pub udp_per_source: u64,
    /// Messages per second per listening port, all sources together (Unix datagram listeners
    /// too).
    pub udp_per_port: u64,
    /// Messages per second per local user (the sender's uid, as the kernel tells it) on each
    /// Unix datagram listener.
    pub unix_per_uid: u64,
    /// New TCP connections per second per source IP, per listening port, checked at accept.
    pub tcp_connections_per_source: u64,
    /// Open TCP connections one source IP may hold on one listener (0 = no cap).
    pub tcp_open_per_source: usize,
    /// Messages per second one source may send over stream connections (TCP, TLS; on Unix
    /// stream sockets, one local user), all its connections to one listener together. Held by
    /// reading more slowly: the sender's kernel then blocks it. Nothing is dropped. 0 = off.
    pub tcp_per_source: u64,
    /// How much of a rate may arrive at once: `burst × rate` messages.
    #[serde(with = "duration")]
    pub burst: Duration,
    /// CIDR blocks allowed to send; when set, other sources are dropped before parsing.
    pub allow: Vec<String>,
    /// Most sources the limiter remembers; least recently seen are forgotten first.
    pub tracked_sources: usize,
    /// TLS handshakes started per second on one TLS listener, all sources together: a storm
    /// from many sources, each under its own connection limit, cannot take the CPU (0 = no cap).
    pub tls_handshakes_per_second: u64,
    /// TLS handshakes in progress at once on one TLS listener; connections past it are reset.
    pub tls_handshakes_in_flight: usize,
    /// The kernel layer: `auto` applies `allow`, `udp_per_source` and `udp_per_port` to UDP datagrams
    /// in the kernel too (an eBPF socket filter, before the datagram is queued) where the
    /// kernel allows it (the default), else the user-space guard alone, logged; `off` never
    /// tries.
    pub kernel: KernelMode,
    /// `one_source` (the default): every process of this host is one source, whichever of
    /// the host's addresses it sends from (any of 127.0.0.0/8, `::1`, the interfaces' own), so
    /// a local process cannot multiply its budget by choosing addresses; `by_address` keys
    /// them apart like remote hosts.
    pub local_senders: LocalSenders,
    /// Port limits (`udp_per_port`) shared by every host that names the same Redis: the
    /// fleet's ports each take `udp_per_port` in all, not per host. Per-source limits stay
    /// local (a balancer sends a source to one host).
    pub shared: Option<SharedLimits>,
    /// StatsD series one sender may have made that floodgate holds: a source address (this
    /// host's processes as one with `local_senders = "one_source"`), a local user on a Unix
    /// socket. Past it, its new series are refused (`series_budget`), everyone else's still
    /// arrive. 0 = off.
    pub series_per_source: u64,
    /// New StatsD series one sender may make in a minute (0 = off).
    pub new_series_per_source: u64,
    /// What a sender's series past its budget become: `drop` (refused and counted) or `fold`
    /// (their values go to one overflow series per metric, `name;overflow=true`).
    pub series_budget_overflow: SeriesOverflow,
}

/// `[limits] series_budget_overflow`.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SeriesOverflow {
    /// Refused and counted.
    #[default]
    Drop,
    /// Folded into `name;overflow=true`.
    Fold,
}

impl LimitsConfig {
    /// The series budgets `[limits]` sets.
    pub fn series_budgets(&self) -> floodgate_statsd::budget::BudgetLimits {
        floodgate_statsd::budget::BudgetLimits {
            series_per_sender: self.series_per_source,
            new_series_per_minute: self.new_series_per_source,
            fold: self.series_budget_overflow == SeriesOverflow::Fold,
            loopback_as_one: self.local_senders == LocalSenders::OneSource,
        }
    }
}

/// `[limits] shared`: where the fleet's port budgets are kept.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SharedLimits {
    /// `redis://[user:password@]host:port[/db]` (a password is redacted wherever the
    /// configuration is shown).
    pub redis: String,
    /// How often each port takes its next lease of messages (and says this host is alive).
    #[serde(with = "duration", default = "SharedLimits::default_period")]
    pub period: Duration,
    /// How long a call to Redis may take before this host falls back to its share.
    #[serde(with = "duration", default = "SharedLimits::default_timeout")]
    pub timeout: Duration,
    /// Hosts assumed to share each port until Redis has said how many do (the fallback's
    /// divisor if Redis is down when floodgate starts).
    #[serde(default = "SharedLimits::default_hosts")]
    pub hosts: u64,
    /// Prefix of the Redis keys (one fleet per prefix).
    #[serde(default = "SharedLimits::default_prefix")]
    pub key_prefix: String,
}

impl SharedLimits {
    fn default_period() -> Duration {
        Duration::from_millis(200)
    }
    fn default_timeout() -> Duration {
        Duration::from_millis(250)
    }
    fn default_hosts() -> u64 {
        1
    }
    fn default_prefix() -> String {
        "floodgate".into()
    }
}

/// `[limits] local_senders`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LocalSenders {
    /// This host's processes share one source's budget.
    #[default]
    OneSource,
    /// Each local address is a source of its own.
    ByAddress,
}

/// `[limits] kernel`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelMode {
    /// Use the kernel layer where it loads.
    #[default]
    Auto,
    /// User space only.
    Off,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            udp_per_source: 3000,
            udp_per_port: 10_000,
            unix_per_uid: 3000,
            tcp_connections_per_source: 10,
            tcp_open_per_source: 100,
            tcp_per_source: 0,
            burst: Duration::from_secs(1),
            allow: Vec::new(),
            tracked_sources: 100_000,
            tls_handshakes_per_second: 200,
            tls_handshakes_in_flight: 64,
            kernel: KernelMode::Auto,
            local_senders: LocalSenders::OneSource,
            shared: None,
            series_per_source: 250_000,
            new_series_per_source: 250_000,
            series_budget_overflow: SeriesOverflow::Drop,
        }
    }
}

impl LimitsConfig {
    /// Checks the values serde cannot: ranges, combinations. The error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Err(e) = floodgate_guard::AllowList::parse(&self.allow) {
            return Err(("limits.allow", e.to_string()));
        }
        if self.tls_handshakes_in_flight == 0 {
            return Err(("limits.tls_handshakes_in_flight", "must be at least 1".into()));
        }
        if self.tracked_sources < 64 {
            return Err(("limits.tracked_sources", "must be at least 64".into()));
        }
        if let Some(shared) = &self.shared {
            if let Err(e) = redis::Client::open(shared.redis.as_str()) {
                return Err(("limits.shared.redis", format!("{}: {e}", crate::config::redact_url(&shared.redis))));
            }
            if shared.period < Duration::from_millis(10) || shared.period > Duration::from_secs(10) {
                return Err(("limits.shared.period", "must be between 10ms and 10s".into()));
            }
            if shared.timeout.is_zero() {
                return Err(("limits.shared.timeout", "must be more than 0".into()));
            }
            if shared.hosts == 0 {
                return Err(("limits.shared.hosts", "must be at least 1".into()));
            }
        }
        Ok(())
    }
}
