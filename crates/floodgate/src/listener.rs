//! What a listener is: its [`Kind`] (protocol × transport), its [`Counters`], and the table of
//! per-listener metrics every listener shares ([`Listeners`]). A protocol adds its own families
//! (StatsD lines, syslog messages) through [`Listener::extra`]; nothing here names a source.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use floodgate_guard::Reason;
use parking_lot::Mutex;

use crate::metrics::{Describe, Families, Report, StatusPlace, Value};

pub use crate::kind::{Address, Kind, Protocol, Transport};

/// Counters of one receive thread or one listener's connection tasks (relaxed atomics that
/// only their owner writes, so counting costs no shared cache line on the hot path; a scrape
/// sums them by listener).
#[derive(Debug, Default)]
pub struct Counters {
    /// Datagrams (UDP) or reads with complete lines (TCP).
    pub packets: AtomicU64,
    /// Bytes received.
    pub bytes: AtomicU64,
    /// Messages: non-empty StatsD lines, syslog messages.
    pub lines: AtomicU64,
    /// Of those, bad ones (StatsD values that could not be parsed; syslog messages kept with
    /// a parse error).
    pub bad_lines: AtomicU64,
    /// Of those, values whose key or set member was over `max_key_length`.
    pub key_too_long: AtomicU64,
    /// Datagrams longer than the listener's maximum, or stream lines/frames longer than it.
    pub oversize: AtomicU64,
    /// Syslog frames with a bad length field, or cut by the end of the stream.
    pub framing_errors: AtomicU64,
    /// TCP connections accepted.
    pub connections: AtomicU64,
    /// Refused by the guard, by [`Reason`] (messages for datagrams, connections for streams).
    pub dropped: [AtomicU64; Reason::ALL.len()],
    /// TCP connections closed for idleness.
    pub idle_closed: AtomicU64,
    /// Nanoseconds stream readers waited to hold sources to `tcp_per_source`.
    pub paced_ns: AtomicU64,
    /// TLS handshakes started (only ever on connections the guard admitted).
    pub tls_handshakes: AtomicU64,
    /// TLS handshakes that failed or timed out.
    pub tls_handshake_failures: AtomicU64,
    /// Open TCP connections.
    pub open_connections: AtomicI64,
    /// StatsD datagrams from senders past `origin_max`, tagged `other`.
    pub origin_other: AtomicU64,
    /// Descriptors senders attached to datagrams on a Unix socket (`SCM_RIGHTS`), closed
    /// unread (where the kernel cannot refuse them itself).
    pub passed_descriptors: AtomicU64,
    /// Reads of a Unix datagram socket that took a full kernel queue's worth of datagrams at
    /// once: senders were held then, and those that do not block dropped on their side.
    pub queue_full: AtomicU64,
    /// Records (DogStatsD events, service checks) dropped because the record output had no
    /// room (a full disk, a stalled destination).
    pub records_dropped: AtomicU64,
}

impl Counters {
    /// Adds to a counter (relaxed: only totals matter).
    pub fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Relaxed);
        }
    }

    /// Adds guard refusals.
    pub fn add_dropped(&self, reason: Reason, n: u64) {
        Self::add(&self.dropped[reason as usize], n);
    }
}

/// A protocol's own per-listener families, written for one listener (or one of its threads).
pub type ExtraFamilies = fn(&Listener, &mut Families);

/// A registered listener (or one receive thread of it).
#[derive(Debug, Clone)]
pub struct Listener {
    /// What it is.
    pub kind: Kind,
    /// Bound address (or socket path).
    pub address: String,
    /// Its counters.
    pub counters: Arc<Counters>,
    /// Receive buffer granted by the kernel (datagram sockets), 0 otherwise.
    pub receive_buffer: usize,
    /// Local UDP port, for reading the kernel's drop counters.
    pub udp_port: Option<u16>,
    /// Unix datagram sockets: the kernel's queue limit (`net.unix.max_dgram_qlen` when the
    /// socket was made), 0 otherwise.
    pub datagram_queue: u32,
    /// The protocol's own families (messages, parse errors, its drop reasons).
    pub extra: Option<ExtraFamilies>,
    /// Its guard (UDP: the kernel layer's drops are read from it).
    pub guard: Option<Arc<crate::guard::ListenerGuard>>,
    /// Its receive spread (UDP, when attached), shared by its sockets.
    pub spread: Option<Arc<crate::net::spread::Spread>>,
}

impl Listener {
    /// The `listener` and `address` labels.
    pub fn labels(&self) -> [(&'static str, &str); 2] {
        [("listener", self.kind.as_str()), ("address", &self.address)]
    }

    /// Adds one `floodgate_dropped_total` sample for this listener.
    pub fn dropped(&self, out: &mut Families, reason: &str, n: u64) {
        let [l, a] = self.labels();
        out.add(DROPPED, &[l, a, ("reason", reason)], n);
    }
}

/// `floodgate_dropped_total`: input dropped, by listener and reason (`/api/status`: each
/// listener's `dropped`).
pub const DROPPED: Describe = Describe::counter("floodgate_dropped_total", "Input dropped, by listener and reason.")
    .status(StatusPlace::many("listeners", "dropped").by("reason"));

/// A place in the `listeners` rows of `/api/status`.
pub const fn row(key: &'static str) -> StatusPlace {
    StatusPlace::many("listeners", key)
}

/// Every listener, for the metrics every listener has.
#[derive(Debug, Default)]
pub struct Listeners {
    listeners: Mutex<Vec<Listener>>,
}

impl Listeners {
    /// Registers a listener (or one receive thread of it).
    pub fn register(&self, listener: Listener) {
        self.listeners.lock().push(listener);
    }

    /// Registers a stream listener (TCP, TLS) and returns its counters.
    pub fn register_stream(&self, kind: Kind, address: String, extra: Option<ExtraFamilies>) -> Arc<Counters> {
        let counters = Arc::new(Counters::default());
        self.register(Listener {
            kind,
            address,
            counters: counters.clone(),
            receive_buffer: 0,
            udp_port: None,
            datagram_queue: 0,
            extra,
            guard: None,
            spread: None,
        });
        counters
    }

    /// Connections open now on the listeners of `protocol`.
    pub fn open_connections(&self, protocol: Protocol) -> i64 {
        let listeners = self.listeners.lock();
        let open = listeners.iter().filter(|l| l.kind.protocol == protocol);
        open.map(|l| l.counters.open_connections.load(Relaxed)).sum()
    }

    /// Sums of `f` over all counters of each listener.
    pub fn by_listener(&self, f: impl Fn(&Counters) -> u64) -> BTreeMap<(String, String), u64> {
        let mut out = BTreeMap::new();
        for l in self.listeners.lock().iter() {
            *out.entry((l.kind.as_str().to_string(), l.address.clone())).or_insert(0) += f(&l.counters);
        }
        out
    }
}

const PACKETS: Describe =
    Describe::counter("floodgate_received_packets_total", "Datagrams, or TCP reads holding complete lines, received.")
        .status(row("packets"));
const BYTES: Describe = Describe::counter("floodgate_received_bytes_total", "Bytes received.").status(row("bytes"));
const LIMITED: Describe =
    Describe::counter("floodgate_limited_total", "Messages (UDP) or connections (TCP) refused by a rate limit.");
const CONNECTIONS: Describe =
    Describe::counter("floodgate_tcp_connections_total", "Stream connections accepted (TCP, TLS, Unix stream).");
const OPEN: Describe =
    Describe::gauge("floodgate_tcp_open_connections", "TCP connections open now.").status(row("open_connections"));
const PACED: Describe = Describe::counter(
    "floodgate_paced_seconds_total",
    "Seconds stream connections were not read, holding their sources to [limits] tcp_per_source (summed over connections).",
);
const HANDSHAKES: Describe =
    Describe::counter("floodgate_tls_handshakes_total", "TLS handshakes started (on admitted connections only).");
const HANDSHAKE_FAILURES: Describe =
    Describe::counter("floodgate_tls_handshake_failures_total", "TLS handshakes that failed or timed out.");
const PASSED_DESCRIPTORS: Describe = Describe::counter(
    "floodgate_unix_passed_descriptors_total",
    "Descriptors senders attached to datagrams on a Unix socket (SCM_RIGHTS), closed unread.",
);
const QUEUE_LIMIT: Describe = Describe::gauge(
    "floodgate_unix_datagram_queue_limit",
    "Datagrams the kernel queues for a Unix datagram socket (net.unix.max_dgram_qlen, plus one); a sender past it waits, or gets EAGAIN.",
);
const QUEUE_FULL: Describe = Describe::counter(
    "floodgate_unix_queue_full_total",
    "Reads of a Unix datagram socket that found its kernel queue full (counted when the queue holds at most 64): senders then waited, or dropped on their side.",
);
const SPREAD: Describe = Describe::counter(
    "floodgate_udp_spread_datagrams_total",
    "Datagrams of a hot client socket the receive spread sent to the next receive thread in turn (receive_spread = \"auto\").",
);
const RECEIVE_BUFFER: Describe = Describe::gauge(
    "floodgate_udp_receive_buffer_bytes",
    "Socket receive buffer granted by the kernel, summed over the listener's sockets.",
);

/// A listener's guard, as the report reads it.
type GuardRef = Arc<crate::guard::ListenerGuard>;

impl Report for Listeners {
    fn report(&self, out: &mut Families) {
        let listeners = self.listeners.lock().clone();
        for d in [
            PACKETS,
            BYTES,
            LIMITED,
            CONNECTIONS,
            OPEN,
            PACED,
            HANDSHAKES,
            HANDSHAKE_FAILURES,
            PASSED_DESCRIPTORS,
            QUEUE_LIMIT,
            QUEUE_FULL,
            RECEIVE_BUFFER,
            SPREAD,
            DROPPED,
        ] {
            out.family(d);
        }
        let mut kernel_ports: BTreeMap<(Kind, &str), (u16, Option<&GuardRef>)> = BTreeMap::new();
        let mut spreads: BTreeMap<(Kind, &str), &crate::net::spread::Spread> = BTreeMap::new();
        for l in &listeners {
            let (c, labels, kind) = (&l.counters, l.labels(), l.kind);
            out.add(PACKETS, &labels, c.packets.load(Relaxed));
            out.add(BYTES, &labels, c.bytes.load(Relaxed));
            let limited = Reason::ALL.iter().filter(|r| r.is_rate_limit());
            out.add(LIMITED, &labels, limited.map(|r| c.dropped[*r as usize].load(Relaxed)).sum::<u64>());
            l.dropped(out, "oversize", c.oversize.load(Relaxed));
            for reason in Reason::ALL {
                let applies = match reason {
                    Reason::NotAllowed => true,
                    Reason::SourceLimit | Reason::PortLimit => !kind.is_stream(),
                    Reason::ConnectionRate | Reason::SourceConnections | Reason::ConnectionLimit => kind.is_stream(),
                    Reason::HandshakeLimit => kind.is_tls(),
                    Reason::ProxyHeader => kind.takes_proxy_headers(),
                };
                if applies {
                    l.dropped(out, reason.as_str(), c.dropped[reason as usize].load(Relaxed));
                }
            }
            if kind.is_stream() {
                out.add(CONNECTIONS, &labels, c.connections.load(Relaxed));
                out.add(OPEN, &labels, c.open_connections.load(Relaxed).max(0) as u64);
                l.dropped(out, "idle_timeout", c.idle_closed.load(Relaxed));
                if matches!(kind.protocol, Protocol::Statsd | Protocol::Syslog) {
                    out.add(PACED, &labels, Value::Real(c.paced_ns.load(Relaxed) as f64 / 1e9));
                }
            }
            if kind.transport == Transport::Unix {
                out.add(PASSED_DESCRIPTORS, &labels, c.passed_descriptors.load(Relaxed));
            }
            if l.datagram_queue > 0 {
                out.add(QUEUE_LIMIT, &labels, l.datagram_queue as u64);
                out.add(QUEUE_FULL, &labels, c.queue_full.load(Relaxed));
            }
            if kind.protocol == Protocol::Statsd {
                l.dropped(out, "output_full", c.records_dropped.load(Relaxed));
            }
            if kind.is_tls() {
                out.add(HANDSHAKES, &labels, c.tls_handshakes.load(Relaxed));
                out.add(HANDSHAKE_FAILURES, &labels, c.tls_handshake_failures.load(Relaxed));
            }
            if let Some(port) = l.udp_port {
                out.add(RECEIVE_BUFFER, &labels, l.receive_buffer as u64);
                kernel_ports.insert((kind, &l.address), (port, l.guard.as_ref()));
            }
            if let Some(spread) = &l.spread {
                spreads.insert((kind, &l.address), spread);
            }
            if let Some(extra) = l.extra {
                extra(l, out);
            }
        }
        // One program per listener, shared by its sockets: reported once.
        for ((kind, address), spread) in spreads {
            out.add(SPREAD, &[("listener", kind.as_str()), ("address", address)], spread.spread_datagrams());
        }
        for ((kind, address), (port, guard)) in kernel_ports {
            // The kernel counts per socket; every socket on the port is ours (SO_REUSEPORT). Its
            // count includes what the guard's kernel layer filtered out, reported apart.
            let filtered = guard.and_then(|g| g.kernel_dropped());
            let label = |reason| [("listener", kind.as_str()), ("address", address), ("reason", reason)];
            let all = crate::sys::kernel_udp_drops(port);
            let [by_source, by_port, not_allowed] = filtered.unwrap_or_default();
            out.add(DROPPED, &label("kernel_receive_buffer"), all.saturating_sub(by_source + by_port + not_allowed));
            if filtered.is_some() {
                out.add(DROPPED, &label("kernel_source_limit"), by_source);
                out.add(DROPPED, &label("kernel_port_limit"), by_port);
                out.add(DROPPED, &label("kernel_not_allowed"), not_allowed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_keep_their_label_names() {
        use Protocol::*;
        use Transport::*;
        let names: Vec<&str> = [
            Kind::new(Statsd, Udp),
            Kind::new(Statsd, Tls),
            Kind::new(Syslog, Tcp),
            Kind::new(Aggregator, Tls),
            Kind::new(Admin, Tcp),
            Kind::new(Http, Tcp),
            Kind::new(Statsd, Unix),
        ]
        .iter()
        .map(|k| k.as_str())
        .collect();
        assert_eq!(names, ["statsd_udp", "statsd_tls", "syslog_tcp", "aggregator_tls", "admin", "http", "statsd_unix"]);
    }

    #[test]
    fn a_listener_is_reported_once_summed_over_its_threads_with_its_reasons() {
        let listeners = Listeners::default();
        let kind = Kind::new(Protocol::Statsd, Transport::Udp);
        for n in [2, 3] {
            let counters = Arc::new(Counters::default());
            counters.packets.store(n, Relaxed);
            counters.dropped[Reason::SourceLimit as usize].store(1, Relaxed);
            listeners.register(Listener {
                kind,
                address: "127.0.0.1:9".into(),
                counters,
                receive_buffer: 10,
                udp_port: None,
                datagram_queue: 0,
                extra: None,
                guard: None,
                spread: None,
            });
        }
        let mut out = Families::default();
        listeners.report(&mut out);
        assert_eq!(out.total("floodgate_received_packets_total"), 5);
        let dropped = out.iter().find(|f| f.describe.name == "floodgate_dropped_total").unwrap();
        let reasons: Vec<&str> = dropped.samples.keys().map(|l| l[2].1.as_str()).collect();
        assert!(reasons.contains(&"source_limit") && !reasons.contains(&"connection_rate"), "{reasons:?}");
        assert_eq!(out.total("floodgate_tcp_connections_total"), 0);
    }
}
