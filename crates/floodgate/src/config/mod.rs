//! The TOML configuration: every key optional, defaults safe (loopback only), unknown keys and
//! bad values rejected with the file, line and key.
//!
//! Each section's struct mirrors the SPEC; conversions to the pure crates' option types live
//! here so the rest of the runtime never re-reads raw config.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use floodgate_statsd::graphite::{GraphiteNaming, Protocol};
use floodgate_statsd::{AggregationConfig, HistogramRule};
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[statsd]`
    pub statsd: StatsdConfig,
    /// `[graphite]`
    pub graphite: GraphiteConfig,
    /// `[admin]`
    pub admin: AdminConfig,
    /// `[http]`
    pub http: HttpConfig,
    /// `[syslog]`
    pub syslog: SyslogConfig,
    /// `[limits]`
    pub limits: LimitsConfig,
    /// `[conntrack]`
    pub conntrack: ConntrackConfig,
    /// `[forward]`: this agent ships its flushes to aggregators.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward: Option<ForwardConfig>,
    /// `[aggregator]`: this host accepts agents' flushes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregator: Option<AggregatorConfig>,
    /// `[prometheus_remote_write]`: each flush to a remote-write endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prometheus_remote_write: Option<RemoteWriteConfig>,
}

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

/// `[forward]`: ship each flush, pre-aggregated, to aggregators over TCP/TLS.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ForwardConfig {
    /// `host:port` of every aggregator; series are spread over them by consistent hashing.
    pub aggregators: Vec<String>,
    /// TLS to the aggregators (`ca`, and `cert` + `key` for mutual TLS); absent = plain TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ForwardTls>,
    /// Name of this agent (default: the host name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Unacknowledged batches held per aggregator; the oldest are dropped (and counted) past it.
    #[serde(default = "default_forward_buffer", with = "size")]
    pub buffer: u64,
    /// Where unacknowledged batches are kept on disk (and the agent's session), so a restart
    /// or a crash loses none of them.
    #[serde(default = "default_state_dir")]
    pub state_dir: std::path::PathBuf,
    /// When those files are synced to disk.
    #[serde(default, skip_serializing_if = "is_never")]
    pub fsync: Fsync,
}

fn default_forward_buffer() -> u64 {
    256 << 20
}

/// The agent side of TLS.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ForwardTls {
    /// PEM CA certificates the aggregators' certificates must chain to.
    pub ca: std::path::PathBuf,
    /// PEM client certificate chain (for aggregators that require one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<std::path::PathBuf>,
    /// Its PEM private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<std::path::PathBuf>,
    /// Name to check the aggregators' certificates against (default: the host of each address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

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
    #[serde(default = "default_state_dir")]
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

fn default_state_dir() -> std::path::PathBuf {
    "floodgate-state".into()
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
    /// Mode of those socket files (octal). The default lets any local user send, as UDP on
    /// loopback does; `"0620"` with `unix_group` limits it to one group.
    pub unix_mode: String,
    /// Owner of the socket files (name or number); unchanged when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unix_owner: Option<String>,
    /// Group of the socket files (name or number); unchanged when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unix_group: Option<String>,
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
            unix_mode: "0622".into(),
            unix_owner: None,
            unix_group: None,
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

/// `[graphite]`: the Carbon output and Etsy's naming options.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GraphiteConfig {
    /// `host:port` of Carbon; absent = no Graphite output.
    pub address: Option<String>,
    /// `"plaintext"` or `"pickle"`.
    pub protocol: GraphiteProtocol,
    /// statsd `graphite.legacyNamespace`.
    pub legacy_namespace: bool,
    /// statsd `graphite.globalPrefix`.
    pub global_prefix: String,
    /// statsd `graphite.prefixCounter`.
    pub prefix_counter: String,
    /// statsd `graphite.prefixTimer`.
    pub prefix_timer: String,
    /// statsd `graphite.prefixGauge`.
    pub prefix_gauge: String,
    /// statsd `graphite.prefixSet`.
    pub prefix_set: String,
    /// statsd `graphite.globalSuffix`.
    pub global_suffix: String,
    /// statsd `flush_counts`.
    pub flush_counts: bool,
    /// Payload bytes held while Carbon is unreachable; the oldest are dropped past it.
    #[serde(with = "size")]
    pub buffer: u64,
    /// Connect and write timeout for one flush.
    #[serde(with = "duration")]
    pub timeout: Duration,
}

impl Default for GraphiteConfig {
    fn default() -> Self {
        GraphiteConfig {
            address: None,
            protocol: GraphiteProtocol::Plaintext,
            legacy_namespace: true,
            global_prefix: "stats".into(),
            prefix_counter: "counters".into(),
            prefix_timer: "timers".into(),
            prefix_gauge: "gauges".into(),
            prefix_set: "sets".into(),
            global_suffix: String::new(),
            flush_counts: true,
            buffer: 64 << 20,
            timeout: Duration::from_secs(5),
        }
    }
}

/// Graphite wire format.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum GraphiteProtocol {
    /// Line protocol.
    Plaintext,
    /// Pickle protocol.
    Pickle,
}

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
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9318))),
            reload: false,
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// `[syslog]`: listeners and where the records go.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SyslogConfig {
    /// UDP listen addresses (`[]` disables): one message per datagram.
    pub udp: Vec<SocketAddr>,
    /// TCP listen addresses: octet-counting (RFC 6587) or newline framing, per connection.
    pub tcp: Vec<SocketAddr>,
    /// TLS listeners, each with its certificate (and optional client CA for mutual TLS).
    pub tls: Vec<SyslogTlsListener>,
    /// Longest message: longer frames are skipped and counted, longer datagrams truncated and
    /// flagged.
    #[serde(with = "size")]
    pub max_message: u64,
    /// Where records go.
    pub output: SyslogOutput,
    /// Add each message as received (`raw`) to its record.
    pub raw: bool,
    /// Receive threads (and `SO_REUSEPORT` sockets) per UDP address; 0 = one per core.
    pub receive_threads: usize,
    /// Socket receive buffer asked of the kernel for each UDP socket.
    #[serde(with = "size")]
    pub receive_buffer: u64,
    /// Open TCP/TLS connections accepted at once (per listener).
    pub tcp_max_connections: usize,
    /// A connection silent this long is closed; so is one that takes longer than this to
    /// finish a message it started (a slowloris sender).
    #[serde(with = "duration")]
    pub tcp_idle_timeout: Duration,
}

impl Default for SyslogConfig {
    fn default() -> Self {
        SyslogConfig {
            udp: vec![SocketAddr::from(([127, 0, 0, 1], 5514))],
            tcp: vec![SocketAddr::from(([127, 0, 0, 1], 5514))],
            tls: Vec::new(),
            max_message: 64 << 10,
            output: SyslogOutput::File { path: "floodgate-syslog.jsonl".into(), fsync: Fsync::Never },
            raw: false,
            receive_threads: 0,
            receive_buffer: 32 << 20,
            tcp_max_connections: 10_000,
            tcp_idle_timeout: Duration::from_secs(300),
        }
    }
}

/// One syslog TLS listener: `{ listen = "127.0.0.1:6514", cert, key, client_ca }`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SyslogTlsListener {
    /// Listen address.
    pub listen: SocketAddr,
    /// PEM certificate chain, leaf first.
    pub cert: std::path::PathBuf,
    /// PEM private key.
    pub key: std::path::PathBuf,
    /// PEM CA certificates; when set, clients must present a certificate it signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<std::path::PathBuf>,
}

impl SyslogTlsListener {
    /// The certificate part.
    pub fn tls(&self) -> crate::net::tls::TlsConfig {
        crate::net::tls::TlsConfig { cert: self.cert.clone(), key: self.key.clone(), client_ca: self.client_ca.clone() }
    }
}

/// When a file floodgate writes is synced to disk (`fsync`): `"never"` (the kernel writes it
/// back in its own time; nothing is lost when floodgate restarts, only if the machine fails),
/// `"always"` (after every batch of writes), or a duration such as `"1s"` (at most that long
/// after a write).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Fsync {
    /// Never asked for.
    #[default]
    Never,
    /// After every batch of writes.
    Always,
    /// At most this long after a write.
    Interval(Duration),
}

impl Serialize for Fsync {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Fsync::Never => s.serialize_str("never"),
            Fsync::Always => s.serialize_str("always"),
            Fsync::Interval(d) => s.serialize_str(&format!("{}ms", d.as_millis())),
        }
    }
}

impl<'de> Deserialize<'de> for Fsync {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match text.as_str() {
            "never" => Ok(Fsync::Never),
            "always" => Ok(Fsync::Always),
            other => parse_duration(other).filter(|d| !d.is_zero()).map(Fsync::Interval).ok_or_else(|| {
                de::Error::custom(format!("`{other}` is not \"never\", \"always\" or a duration such as \"1s\""))
            }),
        }
    }
}

/// Where syslog records go: `"stdout"`, `{ kind = "file", path = ... }`, or
/// `{ kind = "forward", address = "host:port", tls = { ca = ... } }`.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SyslogOutput {
    /// JSON lines appended to a file (reopened on SIGHUP, for logrotate).
    File {
        /// The file.
        path: std::path::PathBuf,
        /// When it is synced to disk.
        #[serde(default, skip_serializing_if = "is_never")]
        fsync: Fsync,
    },
    /// JSON lines on standard output.
    Stdout,
    /// The messages as received, re-sent with octet counting over TCP or TLS.
    Forward(SyslogForward),
}

/// The forward output.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SyslogForward {
    /// `host:port` of the syslog server.
    pub address: String,
    /// TLS to it (`ca`, and `cert` + `key` if it wants a client certificate); absent = TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ForwardTls>,
    /// Bytes held in memory while the server is down.
    #[serde(default = "default_syslog_buffer", with = "size")]
    pub buffer: u64,
    /// A file to spill to when the memory buffer is full (absent = drop, counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spill: Option<std::path::PathBuf>,
    /// Most bytes the spill file may hold; past it messages are dropped and counted.
    #[serde(default = "default_syslog_spill_max", with = "size")]
    pub spill_max: u64,
    /// When the spill file is synced to disk.
    #[serde(default, skip_serializing_if = "is_never")]
    pub fsync: Fsync,
}

fn is_never(f: &Fsync) -> bool {
    *f == Fsync::Never
}

fn default_syslog_buffer() -> u64 {
    64 << 20
}

fn default_syslog_spill_max() -> u64 {
    1 << 30
}

impl<'de> Deserialize<'de> for SyslogOutput {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
        enum Table {
            File {
                path: std::path::PathBuf,
                #[serde(default)]
                fsync: Fsync,
            },
            Stdout,
            Forward(SyslogForward),
        }
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = SyslogOutput;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"stdout\", or a table with kind = \"file\" | \"stdout\" | \"forward\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SyslogOutput, E> {
                match v {
                    "stdout" => Ok(SyslogOutput::Stdout),
                    "file" => Ok(SyslogOutput::File { path: "floodgate-syslog.jsonl".into(), fsync: Fsync::Never }),
                    _ => Err(E::custom(format!("unknown output `{v}`: \"stdout\", \"file\" or a table"))),
                }
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<SyslogOutput, A::Error> {
                Ok(match Table::deserialize(de::value::MapAccessDeserializer::new(map))? {
                    Table::File { path, fsync } => SyslogOutput::File { path, fsync },
                    Table::Stdout => SyslogOutput::Stdout,
                    Table::Forward(f) => SyslogOutput::Forward(f),
                })
            }
        }
        d.deserialize_any(Visitor)
    }
}

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

/// `[limits]`: the guard in front of every listener. A rate of 0 turns that limit off.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Messages per second per source IP (IPv6: per /64), per listener. For StatsD a message is
    /// a line: a 20-line datagram is 20 messages.
    pub udp_per_source: u64,
    /// Messages per second per listening port, all sources together.
    pub udp_per_port: u64,
    /// New TCP connections per second per source IP, per listening port, checked at accept.
    pub tcp_connections_per_source: u64,
    /// Open TCP connections one source IP may hold on one listener (0 = no cap).
    pub tcp_open_per_source: usize,
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
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            udp_per_source: 3000,
            udp_per_port: 10_000,
            tcp_connections_per_source: 10,
            tcp_open_per_source: 100,
            burst: Duration::from_secs(1),
            allow: Vec::new(),
            tracked_sources: 100_000,
            tls_handshakes_per_second: 200,
            tls_handshakes_in_flight: 64,
        }
    }
}

/// A configuration error, already phrased for the user.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text.as_bytes()[..s.start.min(text.len())].iter().filter(|b| **b == b'\n').count() + 1);
            let message = e.message();
            match line {
                Some(line) => {
                    let source = text.lines().nth(line - 1).unwrap_or("").trim();
                    ConfigError(format!("{origin}:{line}: {message}\n    {line} | {source}"))
                }
                None => ConfigError(format!("{origin}: {message}")),
            }
        })?;
        config.validate().map_err(|(key, why)| {
            let line = find_key_line(text, key);
            match line {
                Some(line) => ConfigError(format!("{origin}:{line}: key `{key}`: {why}")),
                None => ConfigError(format!("{origin}: key `{key}`: {why}")),
            }
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        let s = &self.statsd;
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
        if u32::from_str_radix(s.unix_mode.trim_start_matches("0o"), 8).map_or(true, |m| m > 0o7777) {
            return Err(("statsd.unix_mode", format!("`{}` is not an octal file mode like \"0660\"", s.unix_mode)));
        }
        if s.unix.iter().any(|p| p.as_os_str().len() > 107) {
            return Err(("statsd.unix", "a socket path is at most 107 bytes".into()));
        }
        if !s.tls_listen.is_empty() && s.tls.is_none() {
            return Err(("statsd.tls_listen", "needs `tls = { cert = \"...\", key = \"...\" }` in [statsd]".into()));
        }
        if s.tcp_max_connections == 0 {
            return Err(("statsd.tcp_max_connections", "must be at least 1".into()));
        }
        if self.admin.max_connections == 0 {
            return Err(("admin.max_connections", "must be at least 1".into()));
        }
        if self.http.max_connections == 0 {
            return Err(("http.max_connections", "must be at least 1".into()));
        }
        if self.admin.idle_timeout < Duration::from_millis(100) {
            return Err(("admin.idle_timeout", "must be at least 100ms".into()));
        }
        if self.http.header_timeout < Duration::from_millis(100) {
            return Err(("http.header_timeout", "must be at least 100ms".into()));
        }
        let y = &self.syslog;
        if !(480..=(64 << 20)).contains(&y.max_message) {
            return Err(("syslog.max_message", "must be between 480 bytes (RFC 5424's minimum) and 64MiB".into()));
        }
        if y.tcp_max_connections == 0 {
            return Err(("syslog.tcp_max_connections", "must be at least 1".into()));
        }
        if let SyslogOutput::Forward(f) = &y.output {
            if f.address.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
                return Err(("syslog.output", format!("forward address `{}` is not host:port", f.address)));
            }
            if f.tls.as_ref().is_some_and(|t| t.cert.is_some() != t.key.is_some()) {
                return Err(("syslog.output", "forward tls: `cert` and `key` go together".into()));
            }
            if f.buffer < y.max_message {
                return Err(("syslog.output", "forward buffer must hold at least one max_message".into()));
            }
        }
        if let Err(e) = floodgate_guard::AllowList::parse(&self.limits.allow) {
            return Err(("limits.allow", e.to_string()));
        }
        if self.conntrack.max_remote_hosts == 0 {
            return Err(("conntrack.max_remote_hosts", "must be at least 1".into()));
        }
        if self.limits.tls_handshakes_in_flight == 0 {
            return Err(("limits.tls_handshakes_in_flight", "must be at least 1".into()));
        }
        if self.limits.tracked_sources < 64 {
            return Err(("limits.tracked_sources", "must be at least 64".into()));
        }
        if let Some(f) = &self.forward {
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
        }
        if let Some(a) = &self.aggregator {
            if a.grace.is_some_and(|g| g >= self.statsd.flush_interval) {
                return Err(("aggregator.grace", "must be shorter than statsd.flush_interval".into()));
            }
            if !((2 << 20)..=(1 << 30)).contains(&a.max_frame) {
                return Err(("aggregator.max_frame", "must be between 2MiB (an agent's batch) and 1GiB".into()));
            }
            if a.max_agents == 0 {
                return Err(("aggregator.max_agents", "must be at least 1".into()));
            }
        }
        if let Some(rw) = &self.prometheus_remote_write {
            match rw.url.parse::<hyper::Uri>() {
                Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {}
                _ => {
                    return Err((
                        "prometheus_remote_write.url",
                        format!("`{}` is not an http:// or https:// URL", rw.url),
                    ))
                }
            }
            for (name, value) in &rw.headers {
                if hyper::header::HeaderName::try_from(name.as_str()).is_err()
                    || hyper::header::HeaderValue::try_from(value.as_str()).is_err()
                {
                    return Err(("prometheus_remote_write.headers", format!("`{name}` is not a valid HTTP header")));
                }
            }
        }
        if let Some(address) = &self.graphite.address {
            if address.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
                return Err(("graphite.address", format!("`{address}` is not host:port")));
            }
        }
        Ok(())
    }

    /// Etsy statsd's aggregation options.
    pub fn aggregation(&self) -> AggregationConfig {
        let s = &self.statsd;
        let idle = s.delete_idle_stats;
        AggregationConfig {
            flush_interval_ms: s.flush_interval.as_millis() as u64,
            percentiles: s.percentiles.clone(),
            histograms: s
                .histograms
                .iter()
                .map(|h| HistogramRule { metric: h.metric.clone(), bins: h.bins.iter().map(|b| b.0).collect() })
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
        }
    }

    /// The StatsD key rule (`max_key_length`, `key_name_sanitize`): what the parser accepts,
    /// what an agent forwards and what an aggregator takes.
    pub fn key_rule(&self) -> floodgate_statsd::KeyRule {
        floodgate_statsd::KeyRule { max_length: self.statsd.max_key_length, sanitized: self.statsd.key_name_sanitize }
    }

    /// Etsy statsd's Graphite naming options.
    pub fn graphite_naming(&self) -> GraphiteNaming {
        let g = &self.graphite;
        GraphiteNaming {
            legacy_namespace: g.legacy_namespace,
            global_prefix: g.global_prefix.clone(),
            prefix_counter: g.prefix_counter.clone(),
            prefix_timer: g.prefix_timer.clone(),
            prefix_gauge: g.prefix_gauge.clone(),
            prefix_set: g.prefix_set.clone(),
            global_suffix: g.global_suffix.clone(),
            prefix_stats: self.statsd.prefix_stats.clone(),
            flush_counts: g.flush_counts,
            sanitize_names: !self.statsd.key_name_sanitize,
        }
    }

    /// The Graphite wire format.
    pub fn graphite_protocol(&self) -> Protocol {
        match self.graphite.protocol {
            GraphiteProtocol::Plaintext => Protocol::Plaintext,
            GraphiteProtocol::Pickle => Protocol::Pickle,
        }
    }

    /// The effective configuration as TOML, secrets included (for round trips in tests).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// The effective configuration as TOML with every secret replaced by `"<redacted>"`: what
    /// `floodgate check` (whose output lands in the journal), the console's `config` and
    /// `/api/status` show. Secrets are header values, any key named like a token, password,
    /// secret or authorization, and the password of a URL.
    pub fn to_toml_redacted(&self) -> String {
        match toml::Value::try_from(self) {
            Ok(mut v) => {
                redact(&mut v, false);
                toml::to_string_pretty(&v).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
            }
            Err(e) => format!("# cannot render: {e}\n"),
        }
    }

    /// Listener addresses not on loopback with no allow-list in front (warned about at start).
    pub fn public_listeners(&self) -> Vec<SocketAddr> {
        let mut all: Vec<SocketAddr> = Vec::new();
        if self.limits.allow.is_empty() {
            all.extend(self.statsd.udp.iter().chain(&self.statsd.tcp).chain(&self.statsd.tls_listen));
            all.extend(self.syslog.udp.iter().chain(&self.syslog.tcp));
            all.extend(self.syslog.tls.iter().map(|t| &t.listen));
            all.extend(self.admin.listen);
            all.extend(self.http.listen);
            let open_aggregator =
                self.aggregator.as_ref().filter(|a| a.tls.as_ref().is_none_or(|t| t.client_ca.is_none()));
            all.extend(open_aggregator.map(|a| a.listen));
        }
        all.into_iter().filter(|a| !a.ip().is_loopback()).collect()
    }
}

/// The text that replaces a secret.
pub const REDACTED: &str = "<redacted>";

/// True for a key whose value is a secret.
fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["token", "password", "passwd", "secret", "authorization", "api_key", "apikey", "cookie"]
        .iter()
        .any(|s| k.contains(s))
}

/// `scheme://user:password@host/...` with the password replaced.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:{REDACTED}@{host}{path}")
        }
        None => url.to_string(),
    }
}

/// Replaces secrets in a config value: every value under a `headers` table, every key named
/// like a secret, and URL passwords.
fn redact(v: &mut toml::Value, all: bool) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                if all || is_secret_key(k) {
                    *v = toml::Value::String(REDACTED.into());
                } else {
                    redact(v, k == "headers");
                }
            }
        }
        toml::Value::Array(a) => a.iter_mut().for_each(|v| redact(v, all)),
        toml::Value::String(s) if all => *s = REDACTED.into(),
        toml::Value::String(s) if s.contains("://") => *s = redact_url(s),
        _ => {}
    }
}

/// The line of `section.key` in the text, for errors found after parsing.
fn find_key_line(text: &str, dotted: &str) -> Option<usize> {
    let (section, key) = dotted.split_once('.')?;
    let mut in_section = false;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            in_section = t.trim_matches(|c| c == '[' || c == ']').trim() == section;
        } else if in_section && t.split('=').next().map(str::trim) == Some(key) {
            return Some(i + 1);
        }
    }
    None
}

/// Parses `"200ms"`, `"10s"`, `"1.5s"`, `"5m"`, `"1h"`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(n * scale).ok()
}

/// Parses `"64MiB"`, `"4KiB"`, `"1GiB"`, `"512B"`, `"10MB"` (decimal), or a byte count.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '_')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.replace('_', "").parse().ok()?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// Serde for durations written as strings (`"10s"`).
mod duration {
    use super::*;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        let ms = d.as_millis();
        if ms.is_multiple_of(1000) {
            s.serialize_str(&format!("{}s", ms / 1000))
        } else {
            s.serialize_str(&format!("{ms}ms"))
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)
            .map_err(|_| de::Error::custom("expected a duration string such as \"10s\" or \"200ms\""))?;
        parse_duration(&text)
            .ok_or_else(|| de::Error::custom(format!("`{text}` is not a duration such as \"10s\" or \"200ms\"")))
    }
}

/// Serde for byte sizes written as strings (`"64MiB"`) or integers.
mod opt_duration {
    use super::*;

    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&format!("{}ms", d.as_millis())),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text)
            .map(Some)
            .ok_or_else(|| de::Error::custom(format!("`{text}` is not a duration such as \"500ms\" or \"2s\"")))
    }
}

mod size {
    use super::*;

    pub fn serialize<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        let text = match *v {
            v if v >= 1 << 30 && v % (1 << 30) == 0 => format!("{}GiB", v >> 30),
            v if v >= 1 << 20 && v % (1 << 20) == 0 => format!("{}MiB", v >> 20),
            v if v >= 1 << 10 && v % (1 << 10) == 0 => format!("{}KiB", v >> 10),
            v => format!("{v}B"),
        };
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d).map_err(|_| de::Error::custom("expected a size such as \"64MiB\""))? {
            Raw::Int(v) => Ok(v),
            Raw::Text(t) => {
                parse_size(&t).ok_or_else(|| de::Error::custom(format!("`{t}` is not a size such as \"64MiB\"")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        let c = Config::parse("", "t.toml").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.statsd.udp, vec!["127.0.0.1:8125".parse().unwrap()]);
        assert!(c.graphite.address.is_none());
    }

    #[test]
    fn spec_example_parses() {
        let text = r#"
[statsd]
udp = ["127.0.0.1:8125"]
tcp = ["127.0.0.1:8125"]
flush_interval = "10s"
percentiles = [90.0, -10, 99.9]
histograms = [{ metric = "render", bins = [0.01, 0.1, 1, 10, "inf"] }]
delete_idle_stats = false
gauges_max_ttl = 1
key_name_sanitize = true
prefix_stats = "statsd"
calculated_timer_metrics = []
max_series = 1_000_000

[graphite]
address = "127.0.0.1:2003"
protocol = "pickle"
legacy_namespace = true
global_prefix = "stats"
flush_counts = true
buffer = "64MiB"

[admin]
listen = "127.0.0.1:8126"
health = "up"

[http]
listen = "127.0.0.1:9318"

[syslog]
udp = ["127.0.0.1:5514"]
tcp = ["127.0.0.1:5514"]
tls = [{ listen = "127.0.0.1:6514", cert = "server.pem", key = "server.key", client_ca = "ca.pem" }]
max_message = "64KiB"
output = { kind = "file", path = "floodgate-syslog.jsonl" }

[limits]
udp_per_source = 3000
udp_per_port = 10000
tcp_connections_per_source = 10
burst = "1s"
allow = []
tracked_sources = 100_000
"#;
        let c = Config::parse(text, "t.toml").unwrap();
        assert_eq!(c.statsd.histograms[0].bins[4].0, f64::INFINITY);
        assert_eq!(c.graphite.buffer, 64 << 20);
        assert_eq!(c.graphite_protocol(), Protocol::Pickle);
        assert_eq!(c.aggregation().percentiles, vec![90.0, -10.0, 99.9]);
        assert_eq!(c.syslog.tls[0].listen.port(), 6514);
        assert_eq!(c.syslog.tls[0].tls().client_ca.as_deref(), Some(Path::new("ca.pem")));
        assert_eq!(c.syslog.max_message, 64 << 10);
        // The effective config reads back to itself.
        assert_eq!(Config::parse(&c.to_toml(), "round-trip").unwrap(), c);
    }

    #[test]
    fn syslog_outputs() {
        let stdout = Config::parse("[syslog]\noutput = \"stdout\"\n", "t").unwrap();
        assert_eq!(stdout.syslog.output, SyslogOutput::Stdout);
        let text = "[syslog]\noutput = { kind = \"forward\", address = \"127.0.0.1:514\", \
                    tls = { ca = \"ca.pem\" }, buffer = \"1MiB\", spill = \"/var/spool/x\" }\n";
        let forward = Config::parse(text, "t").unwrap();
        let SyslogOutput::Forward(f) = &forward.syslog.output else { panic!("not forward") };
        assert_eq!((f.buffer, f.spill_max), (1 << 20, 1 << 30));
        assert_eq!(Config::parse(&forward.to_toml(), "round-trip").unwrap(), forward);
        let err = Config::parse("[syslog]\noutput = { kind = \"forward\", adress = \"x:1\" }\n", "t.toml");
        assert!(err.unwrap_err().0.contains("adress"));
        let err = Config::parse("\n[syslog]\noutput = { kind = \"forward\", address = \"nope\" }\n", "t.toml");
        assert!(err.unwrap_err().0.starts_with("t.toml:3: key `syslog.output`"));
        let err = Config::parse("[syslog]\noutput = \"kafka\"\n", "t.toml").unwrap_err().0;
        assert!(err.contains("t.toml:2") && err.contains("kafka"), "{err}");
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = Config::parse("[statsd]\nflush_interval = \"1s\"\nflushInterval = 5\n", "f.toml").unwrap_err();
        assert!(err.0.starts_with("f.toml:3:"), "{err}");
        assert!(err.0.contains("flushInterval"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = Config::parse("[statsd]\n\nflush_interval = \"soon\"\n", "f.toml").unwrap_err();
        assert!(err.0.starts_with("f.toml:3:") && err.0.contains("flush_interval"), "{err}");
        let err = Config::parse("[statsd]\npercentiles = [150]\n", "f.toml").unwrap_err();
        assert!(err.0.starts_with("f.toml:2: key `statsd.percentiles`"), "{err}");
        let err = Config::parse("[graphite]\naddress = \"nohost\"\n", "f.toml").unwrap_err();
        assert!(err.0.contains("graphite.address"), "{err}");
        let err =
            Config::parse("[statsd]\nhistograms = [{ metric = \"x\", bins = [1, \"big\"] }]\n", "f.toml").unwrap_err();
        assert!(err.0.contains("inf"), "{err}");
        let err = Config::parse("[limits]\nallow = [\"10.0.0.0/8\", \"10.1/40\"]\n", "f.toml").unwrap_err();
        assert!(err.0.starts_with("f.toml:2: key `limits.allow`") && err.0.contains("10.1/40"), "{err}");
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("200ms"), Some(Duration::from_millis(200)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_size("64MiB"), Some(64 << 20));
        assert_eq!(parse_size("1_000"), Some(1000));
        assert_eq!(parse_size("3 KiB"), Some(3072));
        assert_eq!(parse_size("lots"), None);
    }
}
