//! The guard as the listeners see it: the policy from `[limits]` (swapped whole on SIGHUP), one
//! [`ListenerGuard`] per listening address, the start/stop log lines and `/offenders`.
//!
//! The decisions themselves (allow-list, GCRA cells, the bounded source table) are in the
//! IO-free `floodgate-guard` crate. Receive threads read the policy through an [`ArcSwap`]
//! (no lock, no shared write) once per batch; the source table is shared by every thread of a
//! listener, so a source's budget is one budget whichever `SO_REUSEPORT` socket the kernel
//! hands its datagrams to, and threads meet only when they touch the same table shard at the
//! same instant.

pub mod config;
pub mod kernel;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use floodgate_guard::{AllowList, Limit, Offender, PortLimiter, Reason, SourceKey, SourceTable, Verdict};
use parking_lot::Mutex;
use serde::Serialize;

use crate::config::LimitsConfig;
use crate::kind::Kind;

/// An IPv6 /56 (one customer's allocation) gets this many sources' budgets in all, however
/// many of its 256 /64s it sends from.
pub const V6_AGGREGATE_SOURCES: u64 = 4;

/// A source not limited for this long has stopped being limited (and is logged once).
const QUIET: Duration = Duration::from_secs(3);

/// At most this many "source limited" log lines per second; the rest are counted and reported
/// with the next sweep, so a flood of offenders cannot flood the log.
const LOG_LINES_PER_SECOND: u64 = 10;

/// The policy in force: `[limits]` made ready for the hot path.
#[derive(Debug)]
pub struct Policy {
    allow: AllowList,
    udp_source: Limit,
    /// An IPv6 /56's budget, all its /64s together.
    udp_aggregate: Limit,
    udp_port: Limit,
    /// A local user's budget on one Unix listener.
    unix_uid: Limit,
    tcp_rate: Limit,
    tcp_aggregate: Limit,
    tcp_open_per_source: usize,
    handshake_rate: Limit,
    handshakes_in_flight: usize,
    /// The bounded table of sources.
    pub table: Arc<SourceTable>,
    /// No check at all is configured (no allow-list, every rate 0).
    udp_off: bool,
    /// `local_senders = "one_source"`: this host's interfaces' addresses (loopback is always
    /// this host's), whose senders are one source.
    local: Option<Box<[IpAddr]>>,
}

/// This host's interfaces' addresses (loopback aside), as the sweeper last read them. A
/// datagram or connection from one of them, or from loopback, came from a process of this
/// host: the kernel drops a packet that claims a local source and arrives from outside
/// ("martian source").
fn host_addresses() -> Vec<IpAddr> {
    let mut addresses: Vec<IpAddr> =
        crate::sys::interface_addresses().into_iter().map(|a| a.to_canonical()).filter(|a| !a.is_loopback()).collect();
    addresses.sort_unstable();
    addresses.dedup();
    addresses
}

impl Policy {
    fn new(limits: &LimitsConfig, table: Arc<SourceTable>, host: &[IpAddr]) -> Policy {
        let burst = limits.burst.as_nanos() as u64;
        // Validated when the config was read.
        let allow = AllowList::parse(&limits.allow).unwrap_or_default();
        let udp_source = Limit::new(limits.udp_per_source, burst);
        let udp_port = Limit::new(limits.udp_per_port, burst);
        Policy {
            udp_off: allow.is_empty() && udp_source.is_unlimited() && udp_port.is_unlimited(),
            allow,
            udp_source,
            udp_aggregate: Limit::new(limits.udp_per_source.saturating_mul(V6_AGGREGATE_SOURCES), burst),
            udp_port,
            unix_uid: Limit::new(limits.unix_per_uid, burst),
            tcp_rate: Limit::new(limits.tcp_connections_per_source, burst),
            tcp_aggregate: Limit::new(limits.tcp_connections_per_source.saturating_mul(V6_AGGREGATE_SOURCES), burst),
            tcp_open_per_source: limits.tcp_open_per_source,
            handshake_rate: Limit::new(limits.tls_handshakes_per_second, burst),
            handshakes_in_flight: limits.tls_handshakes_in_flight,
            table,
            local: (limits.local_senders == config::LocalSenders::OneSource).then(|| host.into()),
        }
    }

    /// The key `ip` is counted under on `listener`: this host's processes as one
    /// ([`SourceKey::local`], with `local_senders = "one_source"`), others by address.
    #[inline]
    fn source_key(&self, listener: u16, ip: IpAddr) -> SourceKey {
        match &self.local {
            Some(host) if ip.to_canonical().is_loopback() || host.contains(&ip.to_canonical()) => {
                SourceKey::local(listener)
            }
            _ => SourceKey::new(listener, ip),
        }
    }
}

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

    fn wall(&self, ns: u64) -> String {
        humantime::format_rfc3339_millis(self.epoch_wall + Duration::from_nanos(ns)).to_string()
    }

    /// The `max` sources that dropped most, for `/offenders` and the labelled metric: the
    /// user-space table's, and the kernel layer's (`reason` `kernel_*`).
    pub fn offenders(&self, max: usize) -> Vec<OffenderReport> {
        let listeners = self.listeners.lock().clone();
        let mut kernel: Vec<OffenderReport> = listeners
            .iter()
            .filter_map(|lg| Some((lg, lg.kernel.get()?)))
            .flat_map(|(lg, k)| {
                k.offenders(max).into_iter().map(|cell| {
                    let source = match cell.ip() {
                        _ if cell.is_local() => "local".to_string(),
                        IpAddr::V6(a) => format!("{a}/64"),
                        a => a.to_string(),
                    };
                    OffenderReport {
                        source,
                        uid: None,
                        program: None,
                        listener: lg.kind.as_str(),
                        address: lg.address.clone(),
                        reason: "kernel_source_limit",
                        dropped: cell.dropped,
                        first_seen: String::new(),
                        last_seen: String::new(),
                        currently_limited: false,
                    }
                })
            })
            .collect();
        let mut all: Vec<OffenderReport> = self
            .policy()
            .table
            .offenders(max)
            .into_iter()
            .filter_map(|o: Offender| {
                let lg = listeners.get(o.key.listener as usize)?;
                Some(OffenderReport {
                    source: o.key.source(),
                    uid: o.key.as_uid(),
                    program: lg.program_of(o.key),
                    listener: lg.kind.as_str(),
                    address: lg.address.clone(),
                    reason: o.reason.as_str(),
                    dropped: o.dropped,
                    first_seen: self.wall(o.first_seen_ns),
                    last_seen: self.wall(o.last_seen_ns),
                    currently_limited: o.currently_limited,
                })
            })
            .collect();
        all.append(&mut kernel);
        all.sort_by_key(|o| std::cmp::Reverse(o.dropped));
        all.truncate(max);
        all
    }

    /// Each listener with the kernel layer attached: its stats (passed, dropped by source, by
    /// port, outside the allow-list).
    pub fn kernel_stats(&self) -> Vec<(&'static str, String, [u64; 4])> {
        self.listeners
            .lock()
            .iter()
            .filter_map(|lg| Some((lg.kind.as_str(), lg.address.clone(), lg.kernel.get()?.stats())))
            .collect()
    }

    /// The `/offenders` document.
    pub fn report(&self, max: usize) -> GuardReport {
        let policy = self.policy();
        let ports = self
            .listeners
            .lock()
            .iter()
            .filter(|lg| lg.port_dropped.load(Relaxed) > 0)
            .map(|lg| PortReport {
                listener: lg.kind.as_str(),
                address: lg.address.clone(),
                dropped: lg.port_dropped.load(Relaxed),
                currently_limited: lg.port_limited.load(Relaxed),
            })
            .collect();
        GuardReport {
            tracked_sources: policy.table.len(),
            tracked_sources_capacity: policy.table.capacity(),
            ports,
            offenders: self.offenders(max),
        }
    }
}

/// `/offenders`.
#[derive(Debug, Serialize)]
pub struct GuardReport {
    /// Sources in the limiter table now.
    pub tracked_sources: usize,
    /// The table's bound.
    pub tracked_sources_capacity: usize,
    /// Listening ports that have been over their own limit.
    pub ports: Vec<PortReport>,
    /// Sources that hit a limit, most dropped first.
    pub offenders: Vec<OffenderReport>,
}

/// One port in `/offenders`.
#[derive(Debug, Serialize)]
pub struct PortReport {
    /// Listener kind.
    pub listener: &'static str,
    /// Listening address.
    pub address: String,
    /// Messages dropped by the port limit, total.
    pub dropped: u64,
    /// Over its limit within the last few seconds.
    pub currently_limited: bool,
}

/// One source in `/offenders`.
#[derive(Debug, Serialize)]
pub struct OffenderReport {
    /// IPv4 address, IPv6 /64, or `uid:N` (a local user on a Unix socket).
    pub source: String,
    /// A local user's uid (Unix sockets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// The program a limited local user was sending from when it was limited
    /// (`/proc/PID/comm`; empty if it had already exited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,
    /// Listener kind.
    pub listener: &'static str,
    /// Listening address.
    pub address: String,
    /// The limit it hit last.
    pub reason: &'static str,
    /// Messages (UDP) or connections (TCP) dropped while tracked.
    pub dropped: u64,
    /// First drop (RFC 3339).
    pub first_seen: String,
    /// Last drop.
    pub last_seen: String,
    /// Dropped within the last few seconds.
    pub currently_limited: bool,
}

#[derive(Debug, Default)]
struct OpenConnections {
    total: usize,
    by_source: HashMap<SourceKey, usize>,
}

/// The guard of one listening address.
pub struct ListenerGuard {
    id: u16,
    kind: Kind,
    address: String,
    port: PortLimiter,
    port_limited: AtomicBool,
    port_last_ns: AtomicU64,
    port_dropped: AtomicU64,
    port_dropped_at_start: AtomicU64,
    open: Mutex<OpenConnections>,
    max_open: usize,
    handshakes: PortLimiter,
    handshakes_in_flight: Arc<std::sync::atomic::AtomicUsize>,
    /// An operator's port (the console, HTTP): the host itself always passes the allow-list
    /// and the per-source limits (an operator on the host keeps their management ports
    /// whatever `allow` lets in from the network and however often they poll).
    operator: bool,
    /// Unix listeners: the program each limited uid was sending from, read when its limit
    /// started (cold: once a limited period), for the log line and `/offenders`. Bounded.
    programs: Mutex<HashMap<u32, String>>,
    /// The kernel layer, when it is attached to this listener's sockets.
    kernel: std::sync::OnceLock<kernel::KernelGuard>,
    guard: std::sync::Weak<Guard>,
}

impl std::fmt::Debug for ListenerGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerGuard")
            .field("kind", &self.kind)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl ListenerGuard {
    /// Puts the kernel layer on this listener's UDP sockets when `[limits] kernel` allows and
    /// the kernel takes it; says in the log which layer limits the listener.
    pub fn attach_kernel(&self, sockets: &[std::os::fd::RawFd]) {
        self.attach_kernel_with(sockets, kernel::KernelGuard::new);
    }

    /// [`ListenerGuard::attach_kernel`] with another loader (tests: one the verifier refuses).
    fn attach_kernel_with(
        &self,
        sockets: &[std::os::fd::RawFd],
        load: impl FnOnce(&LimitsConfig) -> Result<kernel::KernelGuard, String>,
    ) {
        let Some(guard) = self.guard.upgrade() else { return };
        let limits = guard.limits.lock().clone();
        if limits.kernel == config::KernelMode::Off {
            tracing::info!(address = %self.address, "kernel guard off ([limits] kernel = \"off\"): the user-space guard limits this listener");
            return;
        }
        let loaded = load(&limits).and_then(|k| {
            k.set_host(&guard.host.lock()).map_err(|e| format!("fg_host: {e}"))?;
            for fd in sockets {
                k.attach(*fd).map_err(|e| format!("SO_ATTACH_BPF: {e}"))?;
            }
            Ok(k)
        });
        match loaded {
            Ok(k) => {
                tracing::info!(
                    address = %self.address,
                    sockets = sockets.len(),
                    "kernel guard attached: allow, udp_per_source and udp_per_port also hold in the kernel, per datagram, before it is queued"
                );
                let _ = self.kernel.set(k);
            }
            Err(e) => tracing::warn!(
                address = %self.address,
                error = %e,
                "kernel guard unavailable (it needs root or CAP_BPF, and a kernel whose verifier takes it): the user-space guard alone limits this listener"
            ),
        }
    }

    /// Whether the kernel layer is attached.
    pub fn kernel_attached(&self) -> bool {
        self.kernel.get().is_some()
    }

    /// Datagrams the kernel layer dropped: by the source limit, the port limit, the
    /// allow-list (`None`: not attached).
    pub fn kernel_dropped(&self) -> Option<[u64; 3]> {
        let s = self.kernel.get()?.stats();
        use floodgate_guard::kernel::Stat;
        Some([s[Stat::SourceLimit as usize], s[Stat::PortLimit as usize], s[Stat::NotAllowed as usize]])
    }
}

/// Messages in a StatsD datagram: its lines (a last line without `\n` counts).
#[inline]
pub fn count_lines(data: &[u8]) -> u64 {
    let newlines = memchr::memchr_iter(b'\n', data).count() as u64;
    let unterminated = data.last().is_some_and(|b| *b != b'\n') as u64;
    (newlines + unterminated).max(1)
}

/// What a datagram of `messages` messages and `bytes` bytes costs a source's and a port's
/// budget: its messages, or one per KiB if that is more.
#[inline]
pub fn charge(messages: u64, bytes: usize) -> u64 {
    messages.max(bytes.div_ceil(1024) as u64)
}

impl ListenerGuard {
    /// Decides one datagram of `bytes` from `ip` at `now_ns`; `messages` counts what it holds
    /// (called at most once, and only when a check needs it). A refusal says why and how many
    /// messages it dropped.
    ///
    /// The budgets are in messages, but a datagram is charged at least one message per KiB
    /// ([`charge`]): a source's volume is bounded in bytes as well, so large messages (which an
    /// output may also write several times larger, escaped) cannot multiply what one source
    /// puts downstream.
    #[inline]
    pub fn admit_datagram(
        &self,
        policy: &Policy,
        ip: IpAddr,
        bytes: usize,
        messages: impl FnOnce() -> u64,
        now_ns: u64,
    ) -> Result<(), (Reason, u64)> {
        if policy.udp_off {
            return Ok(());
        }
        let n = messages();
        let cost = charge(n, bytes);
        if !policy.allow.allows(ip) {
            return Err((Reason::NotAllowed, n));
        }
        let key = policy.source_key(self.id, ip);
        // IPv6: the /56 as a whole first, then the /64 (and the port).
        let verdict = match key.aggregate() {
            Some(aggregate) => {
                policy.table.admit(aggregate, &policy.udp_aggregate, Reason::SourceLimit, None, now_ns, cost)
            }
            None => Verdict::Allowed,
        };
        let (key, verdict) = match verdict {
            Verdict::Allowed => (
                key,
                policy.table.admit(
                    key,
                    &policy.udp_source,
                    Reason::SourceLimit,
                    Some((&self.port, &policy.udp_port)),
                    now_ns,
                    cost,
                ),
            ),
            limited => (key.aggregate().unwrap_or(key), limited),
        };
        match verdict {
            Verdict::Allowed => Ok(()),
            Verdict::Limited { reason, started } => {
                if reason == Reason::PortLimit {
                    self.port_refused(now_ns);
                } else if started {
                    if let Some(g) = self.guard.upgrade() {
                        g.log_started(self, key, reason, now_ns);
                    }
                }
                Err((reason, n))
            }
        }
    }

    /// Decides one datagram a local process sent on a Unix socket, by the kernel's word on who
    /// sent it: its user's budget (`unix_per_uid`, so one program's flood cannot starve
    /// another user's) and the listener's (`udp_per_port`). `pid` names the program in the log
    /// line and `/offenders` when a limit starts (read only then).
    #[inline]
    pub fn admit_local(
        &self,
        policy: &Policy,
        uid: u32,
        pid: i32,
        bytes: usize,
        messages: impl FnOnce() -> u64,
        now_ns: u64,
    ) -> Result<(), (Reason, u64)> {
        if policy.unix_uid.is_unlimited() && policy.udp_port.is_unlimited() {
            return Ok(());
        }
        let n = messages();
        let key = SourceKey::uid(self.id, uid);
        let port = Some((&self.port, &policy.udp_port));
        match policy.table.admit(key, &policy.unix_uid, Reason::SourceLimit, port, now_ns, charge(n, bytes)) {
            Verdict::Allowed => Ok(()),
            Verdict::Limited { reason, started } => {
                if reason == Reason::PortLimit {
                    self.port_refused(now_ns);
                } else if started {
                    self.note_program(uid, pid);
                    if let Some(g) = self.guard.upgrade() {
                        g.log_started(self, key, reason, now_ns);
                    }
                }
                Err((reason, n))
            }
        }
    }

    /// Remembers which program `uid` sent from (cold: when a limit starts).
    #[cold]
    fn note_program(&self, uid: u32, pid: i32) {
        let program = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let mut programs = self.programs.lock();
        if programs.len() >= 4096 && !programs.contains_key(&uid) {
            programs.clear();
        }
        programs.insert(uid, program.trim_end().to_string());
    }

    /// The program a limited local user sent from.
    fn program_of(&self, key: SourceKey) -> Option<String> {
        self.programs.lock().get(&key.as_uid()?).cloned()
    }

    /// Adds a batch's port-limit refusals (once per batch, not per datagram).
    pub fn add_port_dropped(&self, n: u64) {
        if n > 0 {
            self.port_dropped.fetch_add(n, Relaxed);
        }
    }

    fn port_refused(&self, now_ns: u64) {
        // Written at most every 100ms: the sweep only needs to know it is recent.
        if now_ns.saturating_sub(self.port_last_ns.load(Relaxed)) > 100_000_000 {
            self.port_last_ns.store(now_ns, Relaxed);
        }
        if !self.port_limited.load(Relaxed) && !self.port_limited.swap(true, Relaxed) {
            self.port_dropped_at_start.store(self.port_dropped.load(Relaxed), Relaxed);
            tracing::warn!(
                listener = self.kind.as_str(),
                address = %self.address,
                "port over its limit (udp_per_port): sources tracked for a second keep priority, newcomers are dropped"
            );
        }
    }

    /// Decides a connection just accepted from `ip` on the local address `local`: the
    /// allow-list, the source's connection rate, its open connections and the listener's.
    /// Nothing has been read from it yet.
    ///
    /// On the console and HTTP the host itself (a loopback source, or a connection from the
    /// very address it came to: a process of this host reaching its own interface address)
    /// passes the allow-list and is not held to the connection rate: an operator's `watch`, a
    /// local agent or a harness may poll as often as it likes. TCP cannot be spoofed past the
    /// handshake, so no remote sender passes as the host. The caps on open connections (per
    /// source and per listener) still hold for everyone.
    pub fn admit_connection(self: &Arc<Self>, ip: IpAddr, local: IpAddr) -> Result<ConnectionPermit, Reason> {
        let Some(guard) = self.guard.upgrade() else { return Err(Reason::ConnectionLimit) };
        let policy = guard.policy();
        let ip = ip.to_canonical();
        let host_itself = self.operator && (ip.is_loopback() || ip == local.to_canonical());
        if !(policy.allow.allows(ip) || host_itself) {
            return Err(Reason::NotAllowed);
        }
        let key = policy.source_key(self.id, ip);
        let now = guard.now_ns();
        if host_itself {
            return self.admit_open(&guard, &policy, key, now);
        }
        let checks = key.aggregate().map(|a| (a, &policy.tcp_aggregate)).into_iter().chain([(key, &policy.tcp_rate)]);
        for (k, limit) in checks {
            if let Verdict::Limited { reason, started } =
                policy.table.admit(k, limit, Reason::ConnectionRate, None, now, 1)
            {
                if started {
                    guard.log_started(self, k, reason, now);
                }
                return Err(reason);
            }
        }
        self.admit_open(&guard, &policy, key, now)
    }

    /// Decides a connection a local process opened on a Unix stream socket, by the kernel's
    /// word on its user (`SO_PEERCRED`): the user's connection rate and open connections (the
    /// TCP limits, per uid instead of per address) and the listener's.
    pub fn admit_local_connection(self: &Arc<Self>, uid: u32, pid: i32) -> Result<ConnectionPermit, Reason> {
        let Some(guard) = self.guard.upgrade() else { return Err(Reason::ConnectionLimit) };
        let policy = guard.policy();
        let key = SourceKey::uid(self.id, uid);
        let now = guard.now_ns();
        if let Verdict::Limited { reason, started } =
            policy.table.admit(key, &policy.tcp_rate, Reason::ConnectionRate, None, now, 1)
        {
            if started {
                self.note_program(uid, pid);
                guard.log_started(self, key, reason, now);
            }
            return Err(reason);
        }
        self.admit_open(&guard, &policy, key, now)
    }

    /// The open-connection caps: the source's (`tcp_open_per_source`) and the listener's.
    fn admit_open(
        self: &Arc<Self>,
        guard: &Guard,
        policy: &Policy,
        key: SourceKey,
        now: u64,
    ) -> Result<ConnectionPermit, Reason> {
        let mut open = self.open.lock();
        if open.total >= self.max_open {
            return Err(Reason::ConnectionLimit);
        }
        let mine = open.by_source.get(&key).copied().unwrap_or(0);
        if policy.tcp_open_per_source > 0 && mine >= policy.tcp_open_per_source {
            drop(open);
            if policy.table.record(key, Reason::SourceConnections, now, 1) {
                guard.log_started(self, key, Reason::SourceConnections, now);
            }
            return Err(Reason::SourceConnections);
        }
        open.total += 1;
        open.by_source.insert(key, mine + 1);
        Ok(ConnectionPermit { listener: self.clone(), key })
    }
}

/// A TLS handshake's place among its listener's handshakes in flight; given back when dropped.
pub struct HandshakePermit(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for HandshakePermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl ListenerGuard {
    /// Decides whether an admitted connection may start its TLS handshake: the listener's
    /// handshakes per second (one budget for all sources) and in flight. The handshake is the
    /// expensive step: capping it keeps a storm from many sources, each under its own
    /// connection limit, from taking the CPU.
    pub fn admit_handshake(&self) -> Result<HandshakePermit, Reason> {
        let Some(guard) = self.guard.upgrade() else { return Err(Reason::HandshakeLimit) };
        let policy = guard.policy();
        let in_flight = self.handshakes_in_flight.fetch_add(1, Relaxed);
        let permit = HandshakePermit(self.handshakes_in_flight.clone());
        if in_flight >= policy.handshakes_in_flight
            || !self.handshakes.check(&policy.handshake_rate, guard.now_ns(), 1, true)
        {
            return Err(Reason::HandshakeLimit);
        }
        Ok(permit)
    }
}

/// An admitted connection's place in its listener's counts; given back when dropped.
pub struct ConnectionPermit {
    listener: Arc<ListenerGuard>,
    key: SourceKey,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut open = self.listener.open.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_source.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.by_source.remove(&self.key);
            }
        }
    }
}

/// Offenders labelled by source: only this many, so labels stay bounded.
const TOP_OFFENDERS: usize = 10;

impl crate::metrics::Report for Guard {
    fn report(&self, out: &mut crate::metrics::Families) {
        use crate::metrics::Describe;
        let report = self.report(TOP_OFFENDERS);
        out.one(
            Describe::gauge("floodgate_guard_tracked_sources", "Sources in the limiter table."),
            report.tracked_sources as u64,
        );
        out.one(
            Describe::gauge(
                "floodgate_guard_tracked_sources_capacity",
                "Bound of the limiter table (tracked_sources).",
            ),
            report.tracked_sources_capacity as u64,
        );
        let attached = Describe::gauge(
            "floodgate_kernel_guard_attached",
            "1 where the kernel layer of the guard (an eBPF socket filter) limits a UDP listener.",
        );
        let kernel = Describe::counter(
            "floodgate_kernel_guard_datagrams_total",
            "Datagrams the kernel layer of the guard saw, by outcome: passed, source_limit, port_limit, not_allowed.",
        );
        out.family(attached);
        out.family(kernel);
        for (listener, address, stats) in self.kernel_stats() {
            out.add(attached, &[("listener", listener), ("address", address.as_str())], 1u64);
            for (outcome, n) in ["passed", "source_limit", "port_limit", "not_allowed"].into_iter().zip(stats) {
                out.add(kernel, &[("listener", listener), ("address", address.as_str()), ("outcome", outcome)], n);
            }
        }
        let dropped = Describe::counter(
            "floodgate_offender_dropped_total",
            "Dropped from the 10 sources that dropped most (see /offenders).",
        );
        let limited = Describe::gauge("floodgate_offender_limited", "Whether a top offender is being limited now.");
        out.family(dropped);
        out.family(limited);
        for o in &report.offenders {
            let labels = [("listener", o.listener), ("address", o.address.as_str()), ("source", o.source.as_str())];
            out.add(dropped, &labels, o.dropped);
            out.add(limited, &labels, o.currently_limited as u64);
        }
    }

    /// The limiter table and the top offenders, as `/offenders` shows them.
    fn status(&self) -> Option<(&'static str, serde_json::Value)> {
        Some(("guard", serde_json::to_value(self.report(TOP_OFFENDERS)).unwrap_or_default()))
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
