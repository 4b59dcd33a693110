//! The guard as the listeners see it, by job: the policy from `[limits]` ([`policy`], swapped
//! whole on SIGHUP), one [`ListenerGuard`] per listening address deciding what it admits
//! ([`admission`]), what the guard reports (`/offenders`, its metrics: [`report`]), and here the
//! [`Guard`] that holds them together, its sweeper and its start/stop log lines.
//!
//! The decisions themselves (allow-list, GCRA cells, the bounded source table) are in the
//! IO-free `floodgate-guard` crate. Receive threads read the policy through an [`ArcSwap`]
//! (no lock, no shared write) once per batch; the source table is shared by every thread of a
//! listener, so a source's budget is one budget whichever `SO_REUSEPORT` socket the kernel
//! hands its datagrams to, and threads meet only when they touch the same table shard at the
//! same instant.

pub mod admission;
pub mod config;
pub mod kernel;
pub mod policy;
pub mod report;
pub mod shared;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use floodgate_guard::{Limit, PortLimiter, Reason, SharedPort, SourceKey, SourceTable};
use parking_lot::Mutex;

pub use admission::{charge, count_lines, ConnectionPermit, HandshakePermit, ListenerGuard, Pacer};
pub use policy::{Policy, V6_AGGREGATE_SOURCES};
pub use report::{GuardReport, OffenderReport, PortReport};

use crate::config::LimitsConfig;
use crate::kind::Kind;
use admission::OpenConnections;
use policy::host_addresses;

/// A source not limited for this long has stopped being limited (and is logged once).
const QUIET: Duration = Duration::from_secs(3);

/// At most this many "source limited" log lines per second; the rest are counted and reported
/// with the next sweep, so a flood of offenders cannot flood the log.
const LOG_LINES_PER_SECOND: u64 = 10;

/// The guard shared by every listener.
pub struct Guard {
    policy: ArcSwap<Policy>,
    /// `[limits]` as configured (the kernel layer is set up from it).
    limits: Mutex<LimitsConfig>,
    listeners: Mutex<Vec<Arc<ListenerGuard>>>,
    epoch: Instant,
    epoch_wall: SystemTime,
    log_cell: PortLimiter,
    log_suppressed: AtomicU64,
    /// This host's interfaces' addresses, as last read (see [`host_addresses`]).
    host: Mutex<Vec<IpAddr>>,
    /// Sweeps since the host's addresses were last read.
    sweeps: AtomicU64,
    /// `[limits] shared`: calls, errors, fallbacks.
    shared_stats: shared::SharedStats,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard").field("policy", &self.policy.load()).finish_non_exhaustive()
    }
}

impl Guard {
    /// A guard applying `limits`, timing everything from `epoch`.
    pub fn new(limits: &LimitsConfig, epoch: Instant) -> Arc<Guard> {
        let table = Arc::new(SourceTable::new(limits.tracked_sources));
        let host = host_addresses();
        Arc::new(Guard {
            policy: ArcSwap::from_pointee(Policy::new(limits, table, &host)),
            host: Mutex::new(host),
            sweeps: AtomicU64::new(0),
            limits: Mutex::new(limits.clone()),
            listeners: Mutex::new(Vec::new()),
            epoch_wall: SystemTime::now() - epoch.elapsed(),
            epoch,
            log_cell: PortLimiter::new(),
            log_suppressed: AtomicU64::new(0),
            shared_stats: Default::default(),
        })
    }

    /// Applies new limits (SIGHUP). The source table is kept unless its size changed.
    pub fn reconfigure(&self, limits: &LimitsConfig) {
        let old = self.policy.load();
        let table = if old.table.capacity() == SourceTable::capacity_for(limits.tracked_sources) {
            old.table.clone()
        } else {
            tracing::info!(tracked_sources = limits.tracked_sources, "limiter table resized: sources start afresh");
            Arc::new(SourceTable::new(limits.tracked_sources))
        };
        {
            // Held while the policy is replaced: a refresh of the host's addresses builds it
            // from the limits too, and must see these.
            let host = self.host.lock();
            *self.limits.lock() = limits.clone();
            self.policy.store(Arc::new(Policy::new(limits, table, &host)));
        }
        // The kernel layer's limits change in place (`kernel = "off"` on reload leaves the
        // programs attached, passing everything).
        for lg in self.listeners.lock().iter() {
            if let Some(k) = lg.kernel.get() {
                let off = LimitsConfig { udp_per_source: 0, udp_per_port: 0, allow: Vec::new(), ..limits.clone() };
                let applied = if limits.kernel == config::KernelMode::Off { &off } else { limits };
                if let Err(e) = k.configure(applied) {
                    tracing::warn!(error = %e, address = %lg.address, "kernel guard: new limits not applied");
                }
            }
        }
    }

    /// The policy in force (cheap; hold it for a batch, not forever).
    pub fn policy(&self) -> arc_swap::Guard<Arc<Policy>> {
        self.policy.load()
    }

    /// Nanoseconds since the epoch: the clock of every limit.
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Registers a listening address (all its sockets share the result). `max_open` caps its
    /// open connections (TCP).
    pub fn listener(
        self: &Arc<Self>,
        kind: Kind,
        address: impl std::fmt::Display,
        max_open: usize,
    ) -> Arc<ListenerGuard> {
        let mut listeners = self.listeners.lock();
        let lg = Arc::new(ListenerGuard {
            id: listeners.len() as u16,
            kind,
            address: address.to_string(),
            port: PortLimiter::new(),
            shared: SharedPort::new(),
            shared_hosts: AtomicU64::new(0),
            port_limited: AtomicBool::new(false),
            port_last_ns: AtomicU64::new(0),
            port_dropped: AtomicU64::new(0),
            port_dropped_at_start: AtomicU64::new(0),
            open: Mutex::new(OpenConnections::default()),
            max_open,
            handshakes: PortLimiter::new(),
            handshakes_in_flight: Arc::default(),
            operator: kind.is_operator(),
            programs: Mutex::new(HashMap::new()),
            kernel: std::sync::OnceLock::new(),
            guard: Arc::downgrade(self),
        });
        listeners.push(lg.clone());
        lg
    }

    fn listener_by_id(&self, id: u16) -> Option<Arc<ListenerGuard>> {
        self.listeners.lock().get(id as usize).cloned()
    }

    /// One log line when `key` starts being limited, within the log budget.
    fn log_started(&self, lg: &ListenerGuard, key: SourceKey, reason: Reason, now_ns: u64) {
        let budget = Limit::new(LOG_LINES_PER_SECOND, 1_000_000_000);
        if !self.log_cell.check(&budget, now_ns, 1, true) {
            self.log_suppressed.fetch_add(1, Relaxed);
            return;
        }
        let key_name = match reason {
            Reason::ConnectionRate => "tcp_connections_per_source",
            Reason::SourceConnections => "tcp_open_per_source",
            _ if key.as_uid().is_some() => "unix_per_uid",
            _ => "udp_per_source",
        };
        tracing::warn!(
            source = %key.source(),
            program = lg.program_of(key).unwrap_or_default(),
            listener = lg.kind.as_str(),
            address = %lg.address,
            reason = reason.as_str(),
            "source over its limit: dropping its input until it slows down (if it is legitimate, raise [limits] {key_name}; 0 = no limit)"
        );
    }

    /// Ends quiet limited periods and logs them; run about once a second.
    pub fn sweep(&self) {
        // Addresses change rarely (and only by an administrator): every 2 s at 4 sweeps a second.
        if self.sweeps.fetch_add(1, Relaxed) % 8 == 7 {
            self.refresh_host_addresses();
        }
        let now = self.now_ns();
        let quiet = QUIET.as_nanos() as u64;
        for o in self.policy().table.sweep(now, quiet) {
            // Port-limit refusals are logged for the port, not for each (possibly spoofed) source.
            if o.reason == Reason::PortLimit {
                continue;
            }
            let Some(lg) = self.listener_by_id(o.key.listener) else { continue };
            tracing::info!(
                source = %o.key.source(),
                listener = lg.kind.as_str(),
                address = %lg.address,
                reason = o.reason.as_str(),
                dropped = o.dropped,
                limited_for = ?Duration::from_nanos(o.last_seen_ns.saturating_sub(o.first_seen_ns)),
                "source no longer limited"
            );
        }
        for lg in self.listeners.lock().iter() {
            if lg.port_limited.load(Relaxed) && now.saturating_sub(lg.port_last_ns.load(Relaxed)) >= quiet {
                lg.port_limited.store(false, Relaxed);
                let dropped = lg.port_dropped.load(Relaxed) - lg.port_dropped_at_start.load(Relaxed);
                tracing::info!(listener = lg.kind.as_str(), address = %lg.address, dropped, "port no longer over its limit");
            }
        }
        let suppressed = self.log_suppressed.swap(0, Relaxed);
        if suppressed > 0 {
            tracing::warn!(suppressed, "more sources started being limited (log lines suppressed; see /offenders)");
        }
    }

    /// Reads this host's addresses again; when they changed, the policy and every kernel
    /// layer take the new ones (addresses change rarely, and only by an administrator).
    fn refresh_host_addresses(&self) {
        let addresses = host_addresses();
        let mut host = self.host.lock();
        if *host == addresses {
            return;
        }
        *host = addresses;
        let old = self.policy.load();
        self.policy.store(Arc::new(Policy::new(&self.limits.lock(), old.table.clone(), &host)));
        for lg in self.listeners.lock().iter() {
            if let Some(Err(e)) = lg.kernel.get().map(|k| k.set_host(&host)) {
                tracing::warn!(error = %e, address = %lg.address, "kernel guard: this host's addresses not updated");
            }
        }
    }

    /// Runs [`sweep`](Self::sweep) every second until `stop` is set.
    pub fn spawn_sweeper(self: &Arc<Self>, stop: Arc<AtomicBool>) -> std::io::Result<std::thread::JoinHandle<()>> {
        let guard = self.clone();
        std::thread::Builder::new().name("guard-sweep".into()).spawn(move || {
            while !stop.load(Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
                guard.sweep();
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::{Protocol, Transport};

    fn limits(f: impl FnOnce(&mut LimitsConfig)) -> LimitsConfig {
        let mut l = LimitsConfig::default();
        f(&mut l);
        l
    }

    #[test]
    fn lines_are_messages() {
        assert_eq!(count_lines(b"a:1|c"), 1);
        assert_eq!(count_lines(b"a:1|c\n"), 1);
        assert_eq!(count_lines(b"a:1|c\nb:2|c"), 2);
        assert_eq!(count_lines(b"a:1|c\nb:2|c\n"), 2);
        assert_eq!(count_lines(b""), 1);
    }

    /// A program the verifier refuses leaves the listener on the user-space guard: nothing is
    /// attached to its socket, which still receives, and the user-space limits hold.
    #[test]
    fn a_verifier_rejection_falls_back_to_the_user_space_guard() {
        use std::os::fd::AsRawFd;
        let g = Guard::new(&limits(|l| l.udp_per_source = 10), Instant::now());
        let lg = g.listener(Kind::new(Protocol::Statsd, Transport::Udp), "127.0.0.1:8125", 0);
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        lg.attach_kernel_with(&[socket.as_raw_fd()], |l| {
            kernel::KernelGuard::with_program(l, kernel::tests::rejected_program)
        });
        assert!(!lg.kernel_attached());
        assert_eq!(lg.kernel_dropped(), None);
        // Not filtered: 20 datagrams from one source all arrive (the program would hold 10).
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..20 {
            sender.send_to(b"a:1|c", socket.local_addr().unwrap()).unwrap();
        }
        socket.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        for _ in 0..20 {
            socket.recv(&mut buf).expect("a datagram the rejected program would not have filtered");
        }
        let p = g.policy();
        let a: IpAddr = "198.18.0.1".parse().unwrap();
        assert_eq!(lg.admit_datagram(&p, a, 0, || 10, 5_000_000_000), Ok(()));
        assert_eq!(lg.admit_datagram(&p, a, 0, || 1, 5_000_000_000), Err((Reason::SourceLimit, 1)));
    }

    #[test]
    fn datagrams_limited_by_source_then_port() {
        let g = Guard::new(&limits(|l| l.udp_per_port = 5), Instant::now());
        let lg = g.listener(Kind::new(Protocol::Statsd, Transport::Udp), "127.0.0.1:8125", 0);
        let p = g.policy();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let now = 5_000_000_000;
        // A newcomer gets half the port's burst of 5.
        let verdicts: Vec<_> = (0..4).map(|_| lg.admit_datagram(&p, a, 0, || 1, now)).collect();
        assert_eq!(verdicts, vec![Ok(()), Ok(()), Err((Reason::PortLimit, 1)), Err((Reason::PortLimit, 1))]);
        let g = Guard::new(&limits(|l| l.udp_per_source = 10), Instant::now());
        let lg = g.listener(Kind::new(Protocol::Statsd, Transport::Udp), "127.0.0.1:8125", 0);
        let p = g.policy();
        assert_eq!(lg.admit_datagram(&p, a, 0, || 10, now), Ok(()));
        assert_eq!(lg.admit_datagram(&p, a, 0, || 1, now), Err((Reason::SourceLimit, 1)));
        let report = g.report(10);
        assert_eq!(report.offenders[0].source, "10.0.0.1");
        assert_eq!(report.offenders[0].reason, "source_limit");
        assert!(report.offenders[0].currently_limited);
    }

    /// Issue 27 item 14: this host's processes are one source, whichever local address they
    /// send from (127.0.0.0/8, `::1`, an interface's own address); a remote one is apart.
    /// `local_senders = "by_address"` keys them apart again.
    #[test]
    fn every_local_address_is_one_source() {
        let now = 5_000_000_000;
        let own = crate::sys::interface_addresses().into_iter().find(|a| !a.is_loopback());
        let local: Vec<IpAddr> = ["127.0.0.1", "127.0.0.2", "127.9.9.9", "::1", "::ffff:127.0.0.3"]
            .iter()
            .map(|a| a.parse().unwrap())
            .chain(own)
            .collect();
        let g = Guard::new(&limits(|l| l.udp_per_source = 10), Instant::now());
        let lg = g.listener(Kind::new(Protocol::Statsd, Transport::Udp), "0.0.0.0:8125", 0);
        let p = g.policy();
        let admitted = |ips: &[IpAddr]| {
            ips.iter().cycle().take(100).filter(|ip| lg.admit_datagram(&p, **ip, 0, || 1, now).is_ok()).count()
        };
        assert_eq!(admitted(&local), 10, "one budget for {local:?}");
        assert_eq!(admitted(&["198.18.0.1".parse().unwrap()]), 10, "a remote source has its own");
        let report = g.report(10);
        assert!(report.offenders.iter().any(|o| o.source == "local" && o.dropped == 90), "{:?}", report.offenders);

        let g = Guard::new(
            &limits(|l| {
                l.udp_per_source = 10;
                l.local_senders = config::LocalSenders::ByAddress;
            }),
            Instant::now(),
        );
        let lg = g.listener(Kind::new(Protocol::Statsd, Transport::Udp), "0.0.0.0:8125", 0);
        let p = g.policy();
        let loopback: Vec<IpAddr> = (1..=5).map(|i| IpAddr::from([127, 0, 0, i])).collect();
        let admitted = loopback.iter().cycle().take(100).filter(|ip| lg.admit_datagram(&p, **ip, 0, || 1, now).is_ok());
        assert_eq!(admitted.count(), 50, "by address: five budgets");
    }

    #[test]
    fn an_ipv6_allocation_shares_one_aggregate_budget() {
        let g = Guard::new(&limits(|l| l.udp_per_source = 10), Instant::now());
        let lg = g.listener(Kind::new(Protocol::Statsd, Transport::Udp), "[::1]:8125", 0);
        let p = g.policy();
        let now = 5_000_000_000;
        // 128 /64s of one /57: each could send 10 a second, together they get 40.
        let admitted: u64 = (0x80..0x100u32)
            .map(|net| {
                let ip: IpAddr = format!("2001:db8:0:{net:x}::1").parse().unwrap();
                (0..10).filter(|_| lg.admit_datagram(&p, ip, 0, || 1, now).is_ok()).count() as u64
            })
            .sum();
        assert_eq!(admitted, 10 * V6_AGGREGATE_SOURCES);
        // Another allocation is not affected.
        assert!(lg.admit_datagram(&p, "2001:db8:1::1".parse().unwrap(), 0, || 1, now).is_ok());
        let report = g.report(10);
        assert_eq!(report.offenders[0].source, "2001:db8::/56");
    }

    #[test]
    fn allow_list_and_off() {
        let g = Guard::new(&limits(|l| l.allow = vec!["10.0.0.0/8".into()]), Instant::now());
        let lg = g.listener(Kind::new(Protocol::Statsd, Transport::Udp), "127.0.0.1:8125", 0);
        let p = g.policy();
        assert_eq!(lg.admit_datagram(&p, "11.0.0.1".parse().unwrap(), 0, || 3, 1), Err((Reason::NotAllowed, 3)));
        assert_eq!(lg.admit_datagram(&p, "10.9.0.1".parse().unwrap(), 0, || 1, 1), Ok(()));
        g.reconfigure(&limits(|l| {
            l.udp_per_source = 0;
            l.udp_per_port = 0;
        }));
        let p = g.policy();
        assert!(p.udp_off);
        assert_eq!(lg.admit_datagram(&p, "11.0.0.1".parse().unwrap(), 0, || unreachable!(), 1), Ok(()));
    }

    #[test]
    fn connections_capped_per_source_and_in_total() {
        let g = Guard::new(
            &limits(|l| {
                l.tcp_connections_per_source = 0;
                l.tcp_open_per_source = 2;
            }),
            Instant::now(),
        );
        let lg = g.listener(Kind::new(Protocol::Statsd, Transport::Tcp), "127.0.0.1:8125", 3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let local: IpAddr = "10.0.0.100".parse().unwrap();
        let p1 = lg.admit_connection(a, local).unwrap();
        let _p2 = lg.admit_connection(a, local).unwrap();
        assert_eq!(lg.admit_connection(a, local).err(), Some(Reason::SourceConnections));
        let _p3 = lg.admit_connection(b, local).unwrap();
        assert_eq!(lg.admit_connection(b, local).err(), Some(Reason::ConnectionLimit));
        drop(p1);
        assert!(lg.admit_connection(a, local).is_ok(), "a closed connection gives its place back");
    }

    #[test]
    fn handshakes_capped_in_flight_and_per_second() {
        let g = Guard::new(
            &limits(|l| {
                l.tls_handshakes_in_flight = 2;
                l.tls_handshakes_per_second = 5;
            }),
            Instant::now(),
        );
        let lg = g.listener(Kind::new(Protocol::Statsd, Transport::Tls), "127.0.0.1:8125", 1000);
        let a = lg.admit_handshake().unwrap();
        let _b = lg.admit_handshake().unwrap();
        assert_eq!(lg.admit_handshake().err(), Some(Reason::HandshakeLimit), "two in flight");
        drop(a);
        let admitted = (0..20).filter_map(|_| lg.admit_handshake().ok()).count();
        assert!(admitted <= 4, "a second's burst of 5, four of them left: {admitted}");
    }

    /// A datagram costs at least one message per KiB: a source's volume is bounded in bytes.
    #[test]
    fn large_datagrams_are_charged_by_the_kib() {
        let g = Guard::new(
            &limits(|l| {
                l.udp_per_source = 10;
                l.udp_per_port = 0;
            }),
            Instant::now(),
        );
        let lg = g.listener(Kind::new(Protocol::Syslog, Transport::Udp), "127.0.0.1:5514", 0);
        let p = g.policy();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let now = 5_000_000_000;
        // One message of 8 KiB costs 8 of a second's burst of 10; the second is refused and
        // counted as the one message it is.
        assert_eq!(lg.admit_datagram(&p, a, 8 << 10, || 1, now), Ok(()));
        assert_eq!(lg.admit_datagram(&p, a, 8 << 10, || 1, now), Err((Reason::SourceLimit, 1)));
        assert_eq!(lg.admit_datagram(&p, a, 100, || 1, now), Ok(()), "small ones still fit");
        assert_eq!((charge(20, 600), charge(1, 1024), charge(1, 1025), charge(1, 0)), (20, 1, 2, 1));
    }

    /// `tcp_per_source`: a source's connections share one pacing cell (a second's burst, then
    /// a wait for what is over it); another source, or another local user on a Unix stream
    /// socket, has its own. Nothing is refused.
    #[test]
    fn stream_sources_are_paced_across_their_connections() {
        let g = Guard::new(
            &limits(|l| {
                l.tcp_per_source = 1000;
                l.tcp_connections_per_source = 0;
            }),
            Instant::now(),
        );
        let lg = g.listener(Kind::new(Protocol::Syslog, Transport::Tcp), "127.0.0.1:5514", 1000);
        let (a, b, local): (IpAddr, IpAddr, IpAddr) =
            ("198.18.0.1".parse().unwrap(), "198.18.0.2".parse().unwrap(), "10.0.0.100".parse().unwrap());
        let (one, two) = (lg.admit_connection(a, local).unwrap(), lg.admit_connection(a, local).unwrap());
        assert_eq!(one.pacer().charge(600), Duration::ZERO, "within the burst");
        let wait = two.pacer().charge(600);
        assert!(wait > Duration::from_millis(150) && wait <= Duration::from_millis(200), "{wait:?}: one cell for both");
        let other = lg.admit_connection(b, local).unwrap();
        assert_eq!(other.pacer().charge(600), Duration::ZERO, "another source");
        let unix = g.listener(Kind::new(Protocol::Syslog, Transport::UnixStream), "/run/x.sock", 1000);
        let (u1, u2) = (unix.admit_local_connection(1000, 1).unwrap(), unix.admit_local_connection(1000, 2).unwrap());
        let u3 = unix.admit_local_connection(1001, 3).unwrap();
        assert_eq!(u1.pacer().charge(1000), Duration::ZERO);
        assert!(u2.pacer().charge(500) >= Duration::from_millis(450), "one user's connections share a cell");
        assert_eq!(u3.pacer().charge(1000), Duration::ZERO, "another user");
        g.reconfigure(&limits(|l| l.tcp_per_source = 0));
        assert_eq!(two.pacer().charge(1_000_000), Duration::ZERO, "off");
    }

    #[test]
    fn connection_rate() {
        let g = Guard::new(&limits(|l| l.tcp_connections_per_source = 10), Instant::now());
        let lg = g.listener(Kind::new(Protocol::Statsd, Transport::Tcp), "127.0.0.1:8125", 1000);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let local: IpAddr = "10.0.0.100".parse().unwrap();
        let admitted = (0..100).filter_map(|_| lg.admit_connection(a, local).ok()).count();
        assert_eq!(admitted, 10, "a burst of one second at 10/s");
    }

    /// The console and HTTP: the host itself (loopback, IPv4 or IPv6, or a connection from the
    /// address it came to) is not held to the connection rate, only to the caps on open
    /// connections; a remote source is held to both, as on any listener. StatsD over TCP holds
    /// loopback to its rate like anyone.
    #[test]
    fn operator_ports_do_not_rate_limit_the_host_itself() {
        let g = Guard::new(
            &limits(|l| {
                l.tcp_connections_per_source = 10;
                l.tcp_open_per_source = 2;
            }),
            Instant::now(),
        );
        let http = g.listener(Kind::new(Protocol::Http, Transport::Tcp), "0.0.0.0:9318", 1000);
        let local: IpAddr = "10.0.0.100".parse().unwrap();
        for source in ["127.0.0.1", "::1", "::ffff:127.0.0.1", "10.0.0.100"] {
            let ip: IpAddr = source.parse().unwrap();
            for n in 0..100 {
                // One at a time, as a poller connects: 100 in a moment, past the rate of 10/s.
                drop(http.admit_connection(ip, local).unwrap_or_else(|r| panic!("{source} #{n}: {r:?}")));
            }
            let held: Vec<_> = (0..5).filter_map(|_| http.admit_connection(ip, local).ok()).collect();
            assert_eq!(held.len(), 2, "{source}: still its cap on open connections");
        }
        let remote: IpAddr = "10.0.0.1".parse().unwrap();
        let admitted = (0..100).filter_map(|_| http.admit_connection(remote, local).ok()).count();
        assert_eq!(admitted, 10, "a remote source: its rate, a second's burst at 10/s");
        let statsd = g.listener(Kind::new(Protocol::Statsd, Transport::Tcp), "127.0.0.1:8125", 1000);
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let admitted = (0..100).filter_map(|_| statsd.admit_connection(loopback, loopback).ok()).count();
        assert_eq!(admitted, 10, "StatsD: loopback is a source like any other");
    }
}
