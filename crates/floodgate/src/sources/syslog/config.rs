//! `[syslog]`: the syslog listeners (the output's keys are the syslog sink's).

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::*;
use crate::units::{duration, size, Fsync};

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
    /// Unix datagram sockets (as `/dev/log` is): one message a datagram, e.g.
    /// `logger --socket PATH`.
    pub unix: Vec<std::path::PathBuf>,
    /// Unix stream sockets: octet-counting or newline framing per connection, as over TCP
    /// (`logger --socket PATH --socket-errors=on -T`, rsyslog's `omuxsock`-style senders).
    pub unix_stream: Vec<std::path::PathBuf>,
    /// Mode of those socket files (octal); the default lets any local user send.
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
    /// Longest message: longer frames are skipped and counted, longer datagrams truncated and
    /// flagged.
    #[serde(with = "size")]
    pub max_message: u64,
    /// Where records go.
    pub output: SyslogOutput,
    /// Add each message as received (`raw`) to its record.
    pub raw: bool,
    /// The zone an RFC 3164 time without one is read in: `"local"` (the host's), `"UTC"`, an
    /// offset (`"+05:30"`) or an IANA name (`"Europe/Paris"`).
    pub timezone: String,
    /// Receive threads (and `SO_REUSEPORT` sockets) per UDP address; 0 = one per core.
    pub receive_threads: usize,
    /// `auto`: a client socket sending more than 25,600 datagrams a second is read by every
    /// receive thread (its messages then interleave between threads' records); `off`: one
    /// client socket to one thread.
    pub receive_spread: crate::net::spread::ReceiveSpread,
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
            unix: Vec::new(),
            unix_stream: Vec::new(),
            unix_mode: "0622".into(),
            unix_owner: None,
            unix_group: None,
            proxy_protocol: false,
            proxy_from: Vec::new(),
            max_message: 64 << 10,
            output: SyslogOutput::File { path: "floodgate-syslog.jsonl".into(), fsync: Fsync::Never },
            raw: false,
            timezone: "local".into(),
            receive_threads: 0,
            receive_spread: Default::default(),
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

impl SyslogConfig {
    /// Its listener keys, for what StatsD and syslog work out alike.
    pub fn listening(&self) -> crate::sources::running::Listening<'_> {
        crate::sources::running::Listening {
            protocol: crate::kind::Protocol::Syslog,
            udp: &self.udp,
            tcp: &self.tcp,
            tls: self.tls.iter().map(|t| t.listen).collect(),
            unix: &self.unix,
            unix_stream: &self.unix_stream,
            access: crate::net::unix::Access::of(&self.unix_mode, &self.unix_owner, &self.unix_group),
            proxy_protocol: self.proxy_protocol,
            proxy_from: &self.proxy_from,
        }
    }

    /// Checks the values serde cannot: ranges, combinations. The error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let y = self;
        if let Err(e) = crate::sources::syslog::zone::parse(&y.timezone) {
            return Err(("syslog.timezone", e));
        }
        y.listening().validate("syslog.unix_mode", "syslog.unix", "syslog.proxy_from")?;
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
        Ok(())
    }
}

impl SyslogConfig {
    /// Whether any listener is named (the output opens only then).
    pub fn has_listeners(&self) -> bool {
        self.listening().any()
    }
}
