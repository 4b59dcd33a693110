//! One listening address's guard ([`ListenerGuard`]): the admission of each datagram,
//! connection and TLS handshake, asked before anything is read or parsed, and the permits an
//! admitted connection or handshake holds.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use floodgate_guard::{Port, PortLimiter, Reason, SharedPort, SourceKey, Verdict};
use parking_lot::Mutex;

use super::{config, kernel, Guard, Policy};
use crate::config::LimitsConfig;
use crate::kind::Kind;

#[derive(Debug, Default)]
pub(super) struct OpenConnections {
    pub(super) total: usize,
    pub(super) by_source: HashMap<SourceKey, OpenSource>,
}

/// A source with connections open on a listener.
#[derive(Debug, Default)]
pub(super) struct OpenSource {
    connections: usize,
    /// Its pacing cell (`tcp_per_source`), shared by its connections: a GCRA theoretical
    /// arrival time. It lives as long as the source has a connection open.
    tat: u64,
}

/// The guard of one listening address.
pub struct ListenerGuard {
    pub(super) id: u16,
    pub(super) kind: Kind,
    pub(super) address: String,
    pub(super) port: PortLimiter,
    /// The port's leases from the fleet's budget (`[limits] shared`).
    pub(super) shared: SharedPort,
    /// Hosts serving this port, as Redis last counted them (0: not yet).
    pub(super) shared_hosts: AtomicU64,
    pub(super) port_limited: AtomicBool,
    pub(super) port_last_ns: AtomicU64,
    pub(super) port_dropped: AtomicU64,
    pub(super) port_dropped_at_start: AtomicU64,
    pub(super) open: Mutex<OpenConnections>,
    pub(super) max_open: usize,
    pub(super) handshakes: PortLimiter,
    pub(super) handshakes_in_flight: Arc<std::sync::atomic::AtomicUsize>,
    /// An operator's port (the console, HTTP): the host itself always passes the allow-list
    /// and the per-source limits (an operator on the host keeps their management ports
    /// whatever `allow` lets in from the network and however often they poll).
    pub(super) operator: bool,
    /// Unix listeners: the program each limited uid was sending from, read when its limit
    /// started (cold: once a limited period), for the log line and `/offenders`. Bounded.
    pub(super) programs: Mutex<HashMap<u32, String>>,
    /// The kernel layer, when it is attached to this listener's sockets.
    pub(super) kernel: std::sync::OnceLock<kernel::KernelGuard>,
    pub(super) guard: std::sync::Weak<Guard>,
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
    /// The listener's kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Puts the kernel layer on this listener's UDP sockets when `[limits] kernel` allows and
    /// the kernel takes it; says in the log which layer limits the listener.
    pub fn attach_kernel(&self, sockets: &[std::os::fd::RawFd]) {
        self.attach_kernel_with(sockets, kernel::KernelGuard::new);
    }

    /// [`ListenerGuard::attach_kernel`] with another loader (tests: one the verifier refuses).
    pub(super) fn attach_kernel_with(
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

    /// Which budget the port's limit is taken from: `local` (this host's own), `shared` (the
    /// fleet's, in Redis) or `shared_fallback` (this host's share while Redis is away).
    pub fn budget(&self) -> &'static str {
        let shared = self.has_port_limit() && self.guard.upgrade().is_some_and(|g| g.policy().shared);
        match (shared, self.shared.is_fallen_back()) {
            (false, _) => "local",
            (true, false) => "shared",
            (true, true) => "shared_fallback",
        }
    }

    /// Whether this listener's messages are held to a port limit (datagrams: UDP and Unix).
    pub fn has_port_limit(&self) -> bool {
        matches!(self.kind.transport, crate::kind::Transport::Udp | crate::kind::Transport::Unix)
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
                    Some(self.port_budget(policy)),
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
        let port = Some(self.port_budget(policy));
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

    /// The port's budget: this host's own, or its leases of the fleet's (`[limits] shared`).
    #[inline]
    fn port_budget<'a>(&'a self, policy: &'a Policy) -> Port<'a> {
        if policy.shared {
            Port::Shared(&self.shared, &policy.udp_port)
        } else {
            Port::Local(&self.port, &policy.udp_port)
        }
    }

    /// Remembers which program `uid` sent from (cold: when a limit starts).
    #[cold]
    pub(super) fn note_program(&self, uid: u32, pid: i32) {
        let program = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let mut programs = self.programs.lock();
        if programs.len() >= 4096 && !programs.contains_key(&uid) {
            programs.clear();
        }
        programs.insert(uid, program.trim_end().to_string());
    }

    /// The program a limited local user sent from.
    pub(super) fn program_of(&self, key: SourceKey) -> Option<String> {
        self.programs.lock().get(&key.as_uid()?).cloned()
    }

    /// Adds a batch's port-limit refusals (once per batch, not per datagram).
    pub fn add_port_dropped(&self, n: u64) {
        if n > 0 {
            self.port_dropped.fetch_add(n, Relaxed);
        }
    }

    pub(super) fn port_refused(&self, now_ns: u64) {
        // Written at most every 100ms: the sweep only needs to know it is recent.
        if now_ns.saturating_sub(self.port_last_ns.load(Relaxed)) > 100_000_000 {
            self.port_last_ns.store(now_ns, Relaxed);
        }
        if !self.port_limited.load(Relaxed) && !self.port_limited.swap(true, Relaxed) {
            self.port_dropped_at_start.store(self.port_dropped.load(Relaxed), Relaxed);
            tracing::warn!(
                listener = self.kind.as_str(),
                address = %self.address,
                budget = self.budget(),
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
        let mine = open.by_source.get(&key).map_or(0, |s| s.connections);
        if policy.tcp_open_per_source > 0 && mine >= policy.tcp_open_per_source {
            drop(open);
            if policy.table.record(key, Reason::SourceConnections, now, 1) {
                guard.log_started(self, key, Reason::SourceConnections, now);
            }
            return Err(Reason::SourceConnections);
        }
        open.total += 1;
        open.by_source.entry(key).or_default().connections += 1;
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

impl ListenerGuard {
    /// A plain TCP connection from a balancer (`proxy_from`), before its PROXY header names
    /// the client. Not the TLS handshake caps (200/s, 64 in flight by default): every client's
    /// connection comes through the balancer, in bursts, and each client's own limits are
    /// checked once its header is read. What bounds the connections held unadmitted (1 KiB
    /// each at most, 10 s at most) is the listener's cap on open connections.
    pub fn admit_unnamed(&self) -> Result<HandshakePermit, Reason> {
        let in_flight = self.handshakes_in_flight.fetch_add(1, Relaxed);
        let permit = HandshakePermit(self.handshakes_in_flight.clone());
        if in_flight >= self.max_open {
            return Err(Reason::ConnectionLimit);
        }
        Ok(permit)
    }
}

/// An admitted connection's place in its listener's counts; given back when dropped.
pub struct ConnectionPermit {
    listener: Arc<ListenerGuard>,
    key: SourceKey,
}

impl ConnectionPermit {
    /// The handle its reader paces the source with (`tcp_per_source`).
    pub fn pacer(&self) -> Pacer {
        Pacer { listener: self.listener.clone(), key: self.key }
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut open = self.listener.open.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(s) = open.by_source.get_mut(&self.key) {
            s.connections -= 1;
            if s.connections == 0 {
                open.by_source.remove(&self.key);
            }
        }
    }
}

/// Paces one source's stream connections to `tcp_per_source`: all its connections to a
/// listener charge one cell, and a reader that has gone past it waits before reading again,
/// so the sender's kernel blocks the sender (TCP's own flow control). Nothing is dropped.
#[derive(Clone)]
pub struct Pacer {
    listener: Arc<ListenerGuard>,
    key: SourceKey,
}

impl std::fmt::Debug for Pacer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pacer").field("source", &self.key.source()).finish()
    }
}

impl Pacer {
    /// Charges `messages` just read; returns how long the reader must wait before reading
    /// again (zero while the source is within its rate and burst, or with no limit).
    pub fn charge(&self, messages: u64) -> std::time::Duration {
        let Some(guard) = self.listener.guard.upgrade() else { return std::time::Duration::ZERO };
        let limit = guard.policy().tcp_source;
        if limit.is_unlimited() || messages == 0 {
            return std::time::Duration::ZERO;
        }
        let now = guard.now_ns();
        let mut open = self.listener.open.lock();
        let Some(source) = open.by_source.get_mut(&self.key) else { return std::time::Duration::ZERO };
        // Always charged (nothing is refused), so a source's later reads wait for what it
        // has already sent.
        source.tat = source.tat.max(now).saturating_add(messages.saturating_mul(limit.interval_ns()));
        std::time::Duration::from_nanos((source.tat - now).saturating_sub(limit.tolerance_ns()))
    }

    /// Whether pacing is configured (`tcp_per_source` > 0).
    pub fn is_on(&self) -> bool {
        self.listener.guard.upgrade().is_some_and(|g| !g.policy().tcp_source.is_unlimited())
    }
}
