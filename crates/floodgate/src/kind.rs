//! What a listener is: its [`Kind`] (protocol × transport) and its [`Address`]. A leaf: it
//! names nothing else of the crate, so the guard and the listener table (which holds each
//! listener's guard) both use it without using each other.

use std::fmt;

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// StatsD lines (DogStatsD extensions included).
    Statsd,
    /// Syslog messages.
    Syslog,
    /// Agents' forwarded batches.
    Aggregator,
    /// The operator console.
    Admin,
    /// `/metrics`, `/ui`, `/api/status`.
    Http,
}

/// How it is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Transport {
    /// UDP datagrams.
    Udp,
    /// A TCP byte stream.
    Tcp,
    /// TLS over TCP.
    Tls,
    /// Unix datagrams (a socket file).
    Unix,
    /// A Unix stream socket (a socket file), one connection per sender.
    UnixStream,
}

/// A listener's kind: protocol × transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Kind {
    /// What it speaks.
    pub protocol: Protocol,
    /// How it is reached.
    pub transport: Transport,
}

impl Kind {
    /// `protocol` over `transport`.
    pub const fn new(protocol: Protocol, transport: Transport) -> Kind {
        Kind { protocol, transport }
    }

    /// The `listener` label: `statsd_udp`, `syslog_tls`, `aggregator_tcp`, `admin`, `http`, ...
    pub fn as_str(self) -> &'static str {
        use Protocol::*;
        use Transport::*;
        match (self.protocol, self.transport) {
            (Statsd, Udp) => "statsd_udp",
            (Statsd, Tcp) => "statsd_tcp",
            (Statsd, Tls) => "statsd_tls",
            (Statsd, Unix) => "statsd_unix",
            (Statsd, UnixStream) => "statsd_unix_stream",
            (Syslog, Udp) => "syslog_udp",
            (Syslog, Tcp) => "syslog_tcp",
            (Syslog, Tls) => "syslog_tls",
            (Syslog, Unix) => "syslog_unix",
            (Syslog, UnixStream) => "syslog_unix_stream",
            (Aggregator, Tls) => "aggregator_tls",
            (Aggregator, _) => "aggregator_tcp",
            (Admin, _) => "admin",
            (Http, _) => "http",
        }
    }

    /// The transport's name (`udp`, `tcp`, `tls`, `unix`).
    pub fn transport_name(self) -> &'static str {
        match self.transport {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Unix => "unix",
            Transport::UnixStream => "unix_stream",
        }
    }

    /// Connections (TCP, TLS, Unix stream) rather than datagrams.
    pub fn is_stream(self) -> bool {
        matches!(self.transport, Transport::Tcp | Transport::Tls | Transport::UnixStream)
    }

    /// A socket file (Unix datagram or stream), whose senders the kernel names.
    pub fn is_local(self) -> bool {
        matches!(self.transport, Transport::Unix | Transport::UnixStream)
    }

    /// TLS handshakes happen on it.
    pub fn is_tls(self) -> bool {
        self.transport == Transport::Tls
    }

    /// A StatsD or syslog TCP or TLS listener, which can sit behind a balancer that sends
    /// PROXY protocol headers (`proxy_protocol`).
    pub fn takes_proxy_headers(self) -> bool {
        matches!(self.protocol, Protocol::Statsd | Protocol::Syslog)
            && matches!(self.transport, Transport::Tcp | Transport::Tls)
    }

    /// An operator's port (console, HTTP): the host itself always passes its allow-list.
    pub fn is_operator(self) -> bool {
        matches!(self.protocol, Protocol::Admin | Protocol::Http)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a listener listens: an IP address and port, or a socket file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Address {
    /// UDP or TCP.
    Inet(std::net::SocketAddr),
    /// A Unix socket file.
    Path(std::path::PathBuf),
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Inet(a) => write!(f, "{a}"),
            Address::Path(p) => write!(f, "{}", p.display()),
        }
    }
}
