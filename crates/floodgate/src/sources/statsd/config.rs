//! `[statsd]`: the StatsD listeners and Etsy statsd's aggregation options.

use std::net::SocketAddr;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

use crate::units::{duration, size};

/// One tag naming the sender of a metric on a Unix socket.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum OriginTag {
    /// `uid:N`, the sending user.
    Uid,
    /// `program:NAME`, from `/proc/PID/comm`.
    Program,
    /// `container_id:ID`, from the sender's cgroup (DogStatsD's origin detection); absent
    /// outside a container.
    ContainerId,
}

impl OriginTag {
    /// The tag's name.
    pub fn as_str(self) -> &'static str {
        match self {
            OriginTag::Uid => "uid",
            OriginTag::Program => "program",
            OriginTag::ContainerId => "container_id",
        }
    }
}

/// `[statsd]`: listeners and Etsy statsd's aggregation options.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StatsdConfig {
    /// UDP listen addresses (`[]` disables).
    pub udp: Vec<SocketAddr>,
    /// TCP listen addresses, newline-separated lines.
    pub tcp: Vec<SocketAddr>,
    /// TLS listen addresses, newline-separated lines over TLS (needs `tls`).
    pub tls_listen: Vec<SocketAddr>,
    /// Unix datagram socket files (DogStatsD's `socket_path`), one packet a datagram.
    pub unix: Vec<std::path::PathBuf>,
    /// Unix stream socket files: newline-separated lines, as over TCP, one connection per
    /// sender.
    pub unix_stream: Vec<std::path::PathBuf>,
    /// Mode of those socket files (octal). The default lets any local user send, as UDP on
    /// loopback does; `"0620"` with `unix_group` limits it to one group.
    pub unix_mode: String,
    /// Owner of the socket files (name or number); unchanged when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unix_owner: Option<String>,
    /// Group of the socket files (name or number); unchanged when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unix_group: Option<String>,
    /// The TCP and TLS listeners sit behind a balancer that sends PROXY protocol headers (v1 or
    /// v2): a connection from `proxy_from` must start with one, and is judged and recorded as
    /// the client it names; from anywhere else a header is refused.
    pub proxy_protocol: bool,
    /// The balancers' addresses (CIDRs), required with `proxy_protocol`.
    pub proxy_from: Vec<String>,
    /// Tags naming the sending process, added to every metric from a Unix socket, from the
    /// kernel's credentials (never from the datagram): `uid`, `program`, `container_id`.
    /// Empty (the default): none.
    pub origin_tags: Vec<OriginTag>,
    /// Most distinct origins (tag combinations) one Unix listener tags with; past it, new
    /// senders are tagged `other` (a program can rename itself, so a bound is needed).
    pub origin_max: usize,
    /// Certificate, key and optional client CA of the TLS listeners.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::net::tls::TlsConfig>,
    /// Flush interval (statsd `flushInterval`).
    #[serde(with = "duration")]
    pub flush_interval: Duration,
    /// Timer percentiles (statsd `percentThreshold`); negative = lowest N%.
    pub percentiles: Vec<f64>,
    /// Timer histograms (statsd `histogram`).
    pub histograms: Vec<HistogramConfig>,
    /// statsd `deleteIdleStats`: the default of the four `delete_*` below.
    pub delete_idle_stats: bool,
    /// statsd `deleteCounters`.
    pub delete_counters: Option<bool>,
    /// statsd `deleteGauges`.
    pub delete_gauges: Option<bool>,
    /// statsd `deleteTimers`.
    pub delete_timers: Option<bool>,
    /// statsd `deleteSets`.
    pub delete_sets: Option<bool>,
    /// statsd `gaugesMaxTTL`.
    pub gauges_max_ttl: u32,
    /// statsd `keyNameSanitize`.
    pub key_name_sanitize: bool,
    /// statsd `prefixStats`.
    pub prefix_stats: String,
    /// statsd `calculatedTimerMetrics` (`[]` = all).
    pub calculated_timer_metrics: Vec<String>,
    /// Series bound: new series beyond it are dropped and counted.
    pub max_series: usize,
    /// Longest key (name and tags) and set member in bytes: longer ones are bad lines, counted.
    pub max_key_length: usize,
    /// Raw values held per timer per interval: Etsy's statistics are exact up to it; past it
    /// the rest are summarised (count, sum, mean, std, upper, lower stay exact; median and
    /// percentiles within 1 %).
    pub max_timer_samples: usize,
    /// Members counted exactly per set per interval; past it the count is estimated (±0.4 %).
    pub max_set_members: usize,
    /// Estimated bytes the aggregation state may hold (keys, timer values, set members); past
    /// it new series are refused (counted, logged) and timer values summarised. `0`: no limit.
    #[serde(with = "size")]
    pub max_memory: u64,
    /// Receive threads (and `SO_REUSEPORT` sockets) per UDP address; 0 = one per core.
    pub receive_threads: usize,
    /// `auto`: a client socket sending more than 25,600 datagrams a second is read by every
    /// receive thread (an eBPF `SO_REUSEPORT` program), where the kernel takes it; `off`: the
    /// kernel's 4-tuple hash alone, one client socket to one thread.
    pub receive_spread: crate::net::spread::ReceiveSpread,
    /// Socket receive buffer asked of the kernel (`SO_RCVBUFFORCE` as root, else up to
    /// `net.core.rmem_max`).
    #[serde(with = "size")]
    pub receive_buffer: u64,
    /// Largest datagram read whole; longer ones are truncated, counted, and their complete
    /// lines kept.
    #[serde(with = "size")]
    pub max_datagram: u64,
    /// Longest TCP line; longer lines are skipped and counted, the connection kept.
    #[serde(with = "size")]
    pub max_line_length: u64,
    /// Open TCP connections accepted at once (per listener).
    pub tcp_max_connections: usize,
    /// A TCP connection silent this long is closed.
    #[serde(with = "duration")]
    pub tcp_idle_timeout: Duration,
}

impl Default for StatsdConfig {
    fn default() -> Self {
        StatsdConfig {
            udp: vec![SocketAddr::from(([127, 0, 0, 1], 8125))],
            tcp: vec![SocketAddr::from(([127, 0, 0, 1], 8125))],
            tls_listen: Vec::new(),
            unix: Vec::new(),
            unix_stream: Vec::new(),
            unix_mode: "0622".into(),
            unix_owner: None,
            unix_group: None,
            proxy_protocol: false,
            proxy_from: Vec::new(),
            origin_tags: Vec::new(),
            origin_max: 1000,
            tls: None,
            flush_interval: Duration::from_secs(10),
            percentiles: vec![90.0],
            histograms: Vec::new(),
            delete_idle_stats: false,
            delete_counters: None,
            delete_gauges: None,
            delete_timers: None,
            delete_sets: None,
            gauges_max_ttl: 1,
            key_name_sanitize: true,
            prefix_stats: "statsd".into(),
            calculated_timer_metrics: Vec::new(),
            max_series: 1_000_000,
            max_key_length: floodgate_statsd::valid::DEFAULT_MAX_KEY_LENGTH,
            max_timer_samples: 100_000,
            max_set_members: 100_000,
            max_memory: 512 << 20,
            receive_threads: 0,
            receive_spread: Default::default(),
            receive_buffer: 32 << 20,
            max_datagram: 65_536,
            max_line_length: 65_536,
            tcp_max_connections: 10_000,
            tcp_idle_timeout: Duration::from_secs(300),
        }
    }
}

/// One `histograms` entry.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HistogramConfig {
    /// Substring of the timer key.
    pub metric: String,
    /// Ascending exclusive upper bounds; `"inf"` for a catch-all last bin.
    pub bins: Vec<Bin>,
}

/// A histogram bound: a number or `"inf"`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bin(pub f64);

impl<'de> Deserialize<'de> for Bin {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(v) if v.is_finite() => Ok(Bin(v)),
            Raw::Text(s) if s == "inf" => Ok(Bin(f64::INFINITY)),
            _ => Err(de::Error::custom("a histogram bin is a number or \"inf\"")),
        }
    }
}

impl Serialize for Bin {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.is_infinite() {
            s.serialize_str("inf")
        } else {
            s.serialize_f64(self.0)
        }
    }
}

impl StatsdConfig {
    /// Its listener keys, for what StatsD and syslog work out alike.
    pub fn listening(&self) -> crate::sources::running::Listening<'_> {
        crate::sources::running::Listening {
            protocol: crate::kind::Protocol::Statsd,
            udp: &self.udp,
            tcp: &self.tcp,
            tls: self.tls_listen.clone(),
            unix: &self.unix,
            unix_stream: &self.unix_stream,
            access: crate::net::unix::Access::of(&self.unix_mode, &self.unix_owner, &self.unix_group),
            proxy_protocol: self.proxy_protocol,
            proxy_from: &self.proxy_from,
        }
    }

    /// Checks the values serde cannot: ranges, combinations. The error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let s = self;
        if s.flush_interval < Duration::from_millis(1) {
            return Err(("statsd.flush_interval", "must be at least 1ms".into()));
        }
        for p in &s.percentiles {
            if !(p.is_finite() && *p != 0.0 && p.abs() <= 100.0) {
                return Err(("statsd.percentiles", format!("{p} is not a percentage in [-100, 0) or (0, 100]")));
            }
        }
        for h in &s.histograms {
            if h.bins.windows(2).any(|w| w[0].0 >= w[1].0) {
                return Err(("statsd.histograms", format!("bins of `{}` must ascend", h.metric)));
            }
        }
        if s.max_series == 0 {
            return Err(("statsd.max_series", "must be at least 1".into()));
        }
        if s.max_timer_samples == 0 {
            return Err(("statsd.max_timer_samples", "must be at least 1".into()));
        }
        if s.max_set_members == 0 {
            return Err(("statsd.max_set_members", "must be at least 1".into()));
        }
        if s.max_memory != 0 && s.max_memory < 1 << 20 {
            return Err(("statsd.max_memory", "must be 0 (no limit) or at least 1MiB".into()));
        }
        if !(16..=65_536).contains(&s.max_key_length) {
            return Err(("statsd.max_key_length", "must be between 16 bytes and 64KiB".into()));
        }
        if !(512..=65_536).contains(&s.max_datagram) {
            return Err(("statsd.max_datagram", "must be between 512 bytes and 64KiB".into()));
        }
        if s.max_line_length < 64 {
            return Err(("statsd.max_line_length", "must be at least 64 bytes".into()));
        }
        s.listening().validate("statsd.unix_mode", "statsd.unix", "statsd.proxy_from")?;
        if !s.tls_listen.is_empty() && s.tls.is_none() {
            return Err(("statsd.tls_listen", "needs `tls = { cert = \"...\", key = \"...\" }` in [statsd]".into()));
        }
        if s.tcp_max_connections == 0 {
            return Err(("statsd.tcp_max_connections", "must be at least 1".into()));
        }
        Ok(())
    }
}

impl StatsdConfig {
    /// Whether any StatsD listener is configured: DogStatsD events and service checks can then
    /// arrive, and they go to the record output.
    pub fn has_listeners(&self) -> bool {
        self.listening().any()
    }

    /// Etsy statsd's aggregation options.
    pub fn aggregation(&self) -> floodgate_statsd::AggregationConfig {
        let s = self;
        let idle = s.delete_idle_stats;
        floodgate_statsd::AggregationConfig {
            flush_interval_ms: s.flush_interval.as_millis() as u64,
            percentiles: s.percentiles.clone(),
            histograms: s
                .histograms
                .iter()
                .map(|h| floodgate_statsd::HistogramRule {
                    metric: h.metric.clone(),
                    bins: h.bins.iter().map(|b| b.0).collect(),
                })
                .collect(),
            delete_counters: s.delete_counters.unwrap_or(idle),
            delete_gauges: s.delete_gauges.unwrap_or(idle),
            delete_timers: s.delete_timers.unwrap_or(idle),
            delete_sets: s.delete_sets.unwrap_or(idle),
            gauges_max_ttl: s.gauges_max_ttl.max(1),
            prefix_stats: s.prefix_stats.clone(),
            calculated_timer_metrics: s.calculated_timer_metrics.clone(),
            max_series: s.max_series,
            max_timer_samples: s.max_timer_samples,
            max_set_members: s.max_set_members,
            max_memory: s.max_memory,
            cumulative_sketches: false,
            summary_quantiles: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_modes_and_paths_are_checked() {
        let bad = StatsdConfig { unix_mode: "rw-rw----".into(), ..StatsdConfig::default() };
        assert_eq!(bad.validate().unwrap_err().0, "statsd.unix_mode");
        let long = StatsdConfig { unix: vec![std::path::PathBuf::from("/".repeat(108))], ..StatsdConfig::default() };
        assert_eq!(long.validate().unwrap_err().0, "statsd.unix");
        assert!(StatsdConfig { unix_mode: "0660".into(), ..StatsdConfig::default() }.validate().is_ok());
    }
}
