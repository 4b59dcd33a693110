//! The listener lifecycle every source shares: bind a listener (datagram receive threads or a
//! stream accept task), keep the set of running ones equal to what the configuration names
//! (SIGHUP starts the new ones and stops the removed ones), and stop them all at shutdown.
//! A source only says how to start one listener of each kind.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::component::Shared;
use crate::listener::{Address, Counters, ExtraFamilies, Kind, Listener};
use crate::net::datagram::{DatagramHandler, UdpWorker};
use crate::sys::UdpReceiver;

/// A listener a source wants: its kind and address.
pub type Spec = (Kind, Address);

/// One running listener.
pub enum Running {
    /// Datagram receive threads and the switch that stops them.
    Threads(Arc<AtomicBool>, Vec<std::thread::JoinHandle<()>>),
    /// A stream listener's accept task (its connections are tasks of their own).
    Task(tokio::task::JoinHandle<()>),
}

impl Running {
    /// Stops taking input: threads read what is already queued and exit, the accept task ends
    /// (open connections go on until they end or the source's drain stops them). Returns the
    /// threads to wait for.
    fn stop(self) -> Vec<std::thread::JoinHandle<()>> {
        match self {
            Running::Threads(stop, threads) => {
                stop.store(true, Ordering::SeqCst);
                threads
            }
            Running::Task(task) => {
                task.abort();
                Vec::new()
            }
        }
    }
}

/// The listeners of one source, by what they are.
#[derive(Default)]
pub struct ListenerSet {
    running: BTreeMap<Spec, Running>,
}

impl ListenerSet {
    /// At start-up: starts every listener of `wanted` (one that cannot start is an error).
    pub fn start_all(&mut self, wanted: &[Spec], mut start: impl FnMut(&Spec) -> Result<Running>) -> Result<()> {
        for spec in wanted {
            let running = start(spec)?;
            self.running.insert(spec.clone(), running);
        }
        Ok(())
    }

    /// SIGHUP: makes the running set equal `wanted`: the listeners no longer wanted are stopped
    /// (`stopped` is told each one; their threads finish on their own), the new ones started
    /// (one that cannot start is logged; the others still start).
    pub fn reconcile(
        &mut self,
        wanted: &[Spec],
        mut start: impl FnMut(&Spec) -> Result<Running>,
        mut stopped: impl FnMut(&Spec),
    ) {
        let gone: Vec<Spec> = self.running.keys().filter(|k| !wanted.contains(k)).cloned().collect();
        for spec in gone {
            if let Some(running) = self.running.remove(&spec) {
                let threads = running.stop();
                remove_socket_file(&spec.1);
                std::thread::spawn(move || threads.into_iter().for_each(|t| drop(t.join())));
                stopped(&spec);
                tracing::info!(listener = %spec.0, address = %spec.1, "SIGHUP: listener stopped (open connections finish)");
            }
        }
        for spec in wanted {
            if !self.running.contains_key(spec) {
                match start(spec) {
                    Ok(running) => {
                        self.running.insert(spec.clone(), running);
                    }
                    Err(e) => {
                        tracing::error!(listener = %spec.0, address = %spec.1, error = %format!("{e:#}"), "SIGHUP: listener not started")
                    }
                }
            }
        }
    }

    /// Stops every stream listener's accepting (their open connections go on).
    pub fn stop_accepting(&mut self) {
        let streams: Vec<Spec> =
            self.running.iter().filter(|(_, r)| matches!(r, Running::Task(_))).map(|(k, _)| k.clone()).collect();
        for spec in streams {
            if let Some(running) = self.running.remove(&spec) {
                running.stop();
                remove_socket_file(&spec.1);
            }
        }
    }

    /// Stops everything and waits (off the async runtime) until every receive thread has read
    /// what was queued and exited.
    pub async fn stop_all(self) {
        let mut threads = Vec::new();
        for (spec, running) in self.running {
            threads.extend(running.stop());
            remove_socket_file(&spec.1);
        }
        let _ = tokio::task::spawn_blocking(move || threads.into_iter().for_each(|t| drop(t.join()))).await;
    }
}

/// A Unix listener's socket file goes when the listener does (its receive thread keeps the
/// open socket until it has read what was queued; new senders find no file instead of a dead
/// socket).
fn remove_socket_file(address: &Address) {
    if let Address::Path(path) = address {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove the socket file");
        }
    }
}

/// What a section's listener keys say, by transport: StatsD and syslog both have `udp`, `tcp`,
/// TLS addresses, `unix`, `unix_stream` and the socket files' access. Each section keeps its
/// own TOML keys (serde cannot flatten a shared block into a section that refuses unknown
/// keys) and lends them here, so the listeners wanted, and who may write to a socket file,
/// are worked out once: a new transport is one more field and one more line below.
#[derive(Debug, Clone)]
pub struct Listening<'a> {
    /// The protocol the listeners speak.
    pub protocol: crate::kind::Protocol,
    /// `udp`.
    pub udp: &'a [std::net::SocketAddr],
    /// `tcp`.
    pub tcp: &'a [std::net::SocketAddr],
    /// The TLS listeners' addresses.
    pub tls: Vec<std::net::SocketAddr>,
    /// `unix`.
    pub unix: &'a [std::path::PathBuf],
    /// `unix_stream`.
    pub unix_stream: &'a [std::path::PathBuf],
    /// `unix_mode`, `unix_owner`, `unix_group`.
    pub access: crate::net::unix::Access<'a>,
    /// `proxy_protocol`.
    pub proxy_protocol: bool,
    /// `proxy_from`.
    pub proxy_from: &'a [String],
}

impl Listening<'_> {
    /// Whether any listener is named.
    pub fn any(&self) -> bool {
        [self.udp, self.tcp, &self.tls[..]].iter().any(|a| !a.is_empty())
            || [self.unix, self.unix_stream].iter().any(|p| !p.is_empty())
    }

    /// Checks the keys every listening section shares; an error names `mode_key` (the
    /// section's `unix_mode`) or `path_key` (its `unix`).
    pub fn validate(
        &self,
        mode_key: &'static str,
        path_key: &'static str,
        proxy_key: &'static str,
    ) -> Result<(), (&'static str, String)> {
        if let Err(e) = floodgate_guard::AllowList::parse(self.proxy_from) {
            return Err((proxy_key, format!("`{}` is not a CIDR", e.0)));
        }
        if self.proxy_protocol == self.proxy_from.is_empty() {
            return Err((proxy_key, "`proxy_protocol = true` and `proxy_from` (the balancers) go together".into()));
        }
        if !crate::net::unix::valid_mode(self.access.mode) {
            return Err((mode_key, format!("`{}` is not an octal file mode like \"0660\"", self.access.mode)));
        }
        // sun_path holds 108 bytes with its terminating NUL.
        if self.unix.iter().chain(self.unix_stream).any(|p| p.as_os_str().len() > 107) {
            return Err((path_key, "a socket path is at most 107 bytes".into()));
        }
        Ok(())
    }

    /// Where the TCP and TLS listeners take PROXY headers from; `None` without `proxy_protocol`.
    pub fn proxy(&self) -> Option<crate::net::stream::ProxyProtocol> {
        let from = floodgate_guard::AllowList::parse(self.proxy_from).ok()?;
        self.proxy_protocol.then(|| crate::net::stream::ProxyProtocol { from: std::sync::Arc::new(from) })
    }

    /// Every listener the keys name, as (kind, address).
    pub fn specs(&self) -> Vec<Spec> {
        use crate::kind::Transport;
        let kind = |t| Kind::new(self.protocol, t);
        let inet = [(Transport::Udp, self.udp), (Transport::Tcp, self.tcp), (Transport::Tls, &self.tls[..])];
        let paths = [(Transport::Unix, self.unix), (Transport::UnixStream, self.unix_stream)];
        let mut out: Vec<Spec> =
            inet.iter().flat_map(|(t, addrs)| addrs.iter().map(move |a| (kind(*t), Address::Inet(*a)))).collect();
        out.extend(paths.iter().flat_map(|(t, ps)| ps.iter().map(move |p| (kind(*t), Address::Path(p.clone())))));
        out
    }
}

/// SIGHUP: gives the socket files of `specs` (Unix listeners, kept or new) the access in
/// force, so a changed `unix_mode`, `unix_owner` or `unix_group` applies without a restart.
pub fn reapply_access(specs: &[Spec], access: crate::net::unix::Access<'_>) {
    for (kind, address) in specs {
        if let Address::Path(path) = address {
            if let Err(e) = crate::net::unix::set_access(path, access) {
                tracing::error!(listener = kind.as_str(), path = %path.display(), error = %format!("{e:#}"), "SIGHUP: cannot set the socket's mode and owner");
            }
        }
    }
}

/// How a datagram listener is sized.
#[derive(Debug, Clone, Copy)]
pub struct DatagramSizes {
    /// Receive threads (one `SO_REUSEPORT` socket each); 0: one per CPU.
    pub threads: usize,
    /// Receive buffer asked of the kernel, per socket.
    pub buffer: u64,
    /// Longest datagram read whole.
    pub max_datagram: usize,
    /// Whether a hot client socket is spread over the threads.
    pub spread: crate::net::spread::ReceiveSpread,
}

/// Binds a datagram listener (a UDP address as a `SO_REUSEPORT` group, or a Unix socket path)
/// and starts a receive thread per socket, each with the handler `make` builds for its
/// counters. `extra` are the protocol's own per-listener families.
pub fn start_datagrams<H: DatagramHandler>(
    shared: &Shared,
    (kind, address): &Spec,
    sizes: DatagramSizes,
    extra: ExtraFamilies,
    mut make: impl FnMut(Arc<Counters>) -> H,
) -> Result<Running> {
    let what = kind.as_str().replace('_', " ");
    let threads = match sizes.threads {
        0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        n => n,
    };
    let timeout = Duration::from_millis(200);
    let (sockets, bound, udp_port, datagram_queue) = match address {
        Address::Inet(addr) => {
            let group = UdpReceiver::bind_group(*addr, threads, sizes.buffer as usize, timeout)
                .with_context(|| format!("cannot bind {what} {addr}"))?;
            let bound = group[0].local_addr()?;
            (group, Address::Inet(bound), Some(bound.port()), 0)
        }
        Address::Path(path) => {
            let socket = UdpReceiver::bind_unix(path, sizes.buffer as usize, timeout)
                .with_context(|| format!("cannot bind {what} {}", path.display()))?;
            // The socket took the limit in force when it was made (this network namespace's).
            let qlen = std::fs::read_to_string("/proc/sys/net/unix/max_dgram_qlen")
                .ok()
                .and_then(|q| q.trim().parse::<u32>().ok());
            if let Some(qlen) = qlen.filter(|q| *q < 512) {
                tracing::warn!(
                    max_dgram_qlen = qlen,
                    "the kernel queues few datagrams for a Unix socket: a client that does not block drops past it (sysctl -w net.unix.max_dgram_qlen=512)"
                );
            }
            // The kernel refuses a datagram once more than the limit wait: the queue holds one more.
            (vec![socket], address.clone(), None, qlen.map_or(0, |q| q.saturating_add(1)))
        }
    };
    let granted = sockets[0].granted_buffer;
    tracing::info!(address = %bound, sockets = sockets.len(), receive_buffer = granted, "{what} listening");
    if (granted as u64) < sizes.buffer {
        // SO_RCVBUFFORCE needs CAP_NET_ADMIN in the process's effective set: the packaged unit
        // grants it, but a container runtime whose bounding set lacks it (systemd-nspawn's
        // default without --private-network, Docker's default) takes it away silently.
        let why = if sockets[0].forced {
            "the kernel capped the forced size"
        } else {
            "SO_RCVBUFFORCE refused (no CAP_NET_ADMIN): capped at twice net.core.rmem_max; grant \
             CAP_NET_ADMIN (a container must pass it on) or raise net.core.rmem_max"
        };
        tracing::warn!(asked = sizes.buffer, granted, "kernel granted a smaller receive buffer: {why}");
    }
    // A socket file has no source addresses: its senders are limited by uid (the file's mode
    // says who may send at all).
    let listener = shared.guard.listener(*kind, &bound, 0);
    let mut spread = None;
    if let (Some(_), Address::Inet(addr)) = (udp_port, &bound) {
        let fds: Vec<std::os::fd::RawFd> = sockets.iter().map(|s| s.fd()).collect();
        listener.attach_kernel(&fds);
        spread = crate::net::spread::start(sizes.spread, addr, &fds).map(Arc::new);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut running = Vec::new();
    for (i, socket) in sockets.into_iter().enumerate() {
        let counters = Arc::new(Counters::default());
        shared.listeners.register(Listener {
            kind: *kind,
            address: bound.to_string(),
            counters: counters.clone(),
            receive_buffer: socket.granted_buffer,
            udp_port,
            datagram_queue,
            extra: Some(extra),
            guard: Some(listener.clone()),
            spread: spread.clone(),
        });
        let worker = UdpWorker {
            socket,
            handler: make(counters.clone()),
            counters,
            guard: shared.guard.clone(),
            listener: listener.clone(),
            max_datagram: sizes.max_datagram,
            shutdown: stop.clone(),
            coalesce: udp_port.is_some(),
            datagram_queue,
        };
        let name = match udp_port {
            Some(port) => format!("{kind}-{port}-{i}"),
            None => format!("{kind}-{i}"),
        };
        running.push(worker.spawn(name)?);
    }
    Ok(Running::Threads(stop, running))
}

/// Binds a Unix stream listener at `path` (replacing a stale socket file) and sets who may
/// connect (the file's mode and owner).
pub fn bind_unix_stream(
    kind: Kind,
    path: &std::path::Path,
    access: crate::net::unix::Access<'_>,
) -> Result<tokio::net::UnixListener> {
    let what = kind.as_str().replace('_', " ");
    crate::sys::clear_stale_socket(path).with_context(|| format!("cannot bind {what} {}", path.display()))?;
    let listener =
        tokio::net::UnixListener::bind(path).with_context(|| format!("cannot bind {what} {}", path.display()))?;
    crate::sys::refuse_passed_descriptors(std::os::fd::AsRawFd::as_raw_fd(&listener));
    crate::net::unix::set_access(path, access).with_context(|| format!("{what} {}", path.display()))?;
    tracing::info!(address = %path.display(), "{what} listening");
    Ok(listener)
}

/// Binds a stream listener (TCP; TLS runs over it) with the backlog every listener gets.
pub fn bind_stream(kind: Kind, addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    let what = kind.as_str().replace('_', " ");
    let bind = || -> std::io::Result<tokio::net::TcpListener> {
        let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        tokio::net::TcpListener::from_std(socket.into())
    };
    let listener = bind().with_context(|| format!("cannot bind {what} {addr}"))?;
    tracing::info!(address = %listener.local_addr()?, "{what} listening");
    Ok(listener)
}

/// Binds a stream listener that is one accept task (the console, HTTP): registered, behind
/// the guard with `max_open` connections at most, served by `serve`.
pub fn start_accept_task<F>(
    shared: &Shared,
    (kind, addr): (Kind, SocketAddr),
    max_open: usize,
    name: &'static str,
    serve: impl FnOnce(tokio::net::TcpListener, Arc<crate::guard::ListenerGuard>, Arc<Counters>) -> F,
) -> Result<Box<dyn crate::sources::Source>>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = bind_stream(kind, addr)?;
    let address = listener.local_addr()?;
    let counters = shared.listeners.register_stream(kind, address.to_string(), None);
    let guard = shared.guard.listener(kind, address, max_open);
    Ok(Box::new(AcceptTask { name, task: tokio::spawn(serve(listener, guard, counters)) }))
}

/// A component that is one accept task (the aggregator port, the console, HTTP): stopping it
/// stops accepting; open connections end with the process.
pub struct AcceptTask {
    /// For logs.
    pub name: &'static str,
    /// The accept loop.
    pub task: tokio::task::JoinHandle<()>,
}

impl crate::sources::Source for AcceptTask {
    fn name(&self) -> &'static str {
        self.name
    }

    fn stop(self: Box<Self>) -> crate::component::Stopping {
        self.task.abort();
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listener::{Protocol, Transport};

    fn spec(port: u16) -> Spec {
        (Kind::new(Protocol::Statsd, Transport::Tcp), Address::Inet(SocketAddr::from(([127, 0, 0, 1], port))))
    }

    /// StatsD's and syslog's keys give the same listeners for the same addresses: one place
    /// turns keys into (kind, address), every transport in the same order.
    #[test]
    fn both_sections_name_their_listeners_alike() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let sock = std::path::PathBuf::from("/run/x.sock");
        let statsd = crate::sources::statsd::config::StatsdConfig {
            udp: vec![a],
            tcp: vec![a],
            tls_listen: vec![a],
            unix: vec![sock.clone()],
            unix_stream: vec![sock.clone()],
            ..Default::default()
        };
        let transports = |specs: Vec<Spec>| specs.into_iter().map(|(k, _)| k.transport).collect::<Vec<_>>();
        let want = [Transport::Udp, Transport::Tcp, Transport::Tls, Transport::Unix, Transport::UnixStream];
        assert_eq!(transports(statsd.listening().specs()), want);
        let syslog = crate::sources::syslog::config::SyslogConfig {
            udp: vec![a],
            tcp: vec![a],
            unix: vec![sock.clone()],
            unix_stream: vec![sock],
            ..Default::default()
        };
        let specs = syslog.listening().specs();
        assert!(specs.iter().all(|(k, _)| k.protocol == Protocol::Syslog));
        assert_eq!(transports(specs), [Transport::Udp, Transport::Tcp, Transport::Unix, Transport::UnixStream]);
    }

    /// The shared keys are checked once, and each section's error names its own key.
    #[test]
    fn both_sections_check_their_shared_keys_alike() {
        use crate::sources::statsd::config::StatsdConfig;
        use crate::sources::syslog::config::SyslogConfig;
        let long = vec![std::path::PathBuf::from("/".repeat(108))];
        let statsd = StatsdConfig { unix_mode: "rw-rw----".into(), ..Default::default() };
        assert_eq!(statsd.validate().unwrap_err().0, "statsd.unix_mode");
        let statsd = StatsdConfig { unix_stream: long.clone(), ..Default::default() };
        assert_eq!(statsd.validate().unwrap_err().0, "statsd.unix");
        let syslog = SyslogConfig { unix_mode: "999".into(), ..Default::default() };
        assert_eq!(syslog.validate().unwrap_err().0, "syslog.unix_mode");
        let syslog = SyslogConfig { unix: long, ..Default::default() };
        assert_eq!(syslog.validate().unwrap_err().0, "syslog.unix");
        let none = SyslogConfig { udp: Vec::new(), tcp: Vec::new(), ..Default::default() };
        assert!(!none.has_listeners() && SyslogConfig::default().has_listeners());
        let none = StatsdConfig { udp: Vec::new(), tcp: Vec::new(), ..Default::default() };
        assert!(!none.has_listeners() && StatsdConfig::default().has_listeners());
    }

    fn idle_task() -> Result<Running> {
        Ok(Running::Task(tokio::spawn(std::future::pending())))
    }

    #[tokio::test]
    async fn reconcile_starts_the_new_stops_the_gone_and_keeps_the_rest() {
        let mut set = ListenerSet::default();
        set.start_all(&[spec(1), spec(2)], |_| idle_task()).unwrap();
        let (mut started, mut stopped) = (Vec::new(), Vec::new());
        set.reconcile(
            &[spec(2), spec(3)],
            |s| {
                started.push(s.clone());
                idle_task()
            },
            |s| stopped.push(s.clone()),
        );
        assert_eq!(started, [spec(3)], "the kept listener is not restarted");
        assert_eq!(stopped, [spec(1)]);
        assert_eq!(set.running.keys().cloned().collect::<Vec<_>>(), [spec(2), spec(3)]);
    }

    #[tokio::test]
    async fn a_listener_that_cannot_start_on_reload_leaves_the_others_running() {
        let mut set = ListenerSet::default();
        set.start_all(&[spec(1)], |_| idle_task()).unwrap();
        set.reconcile(
            &[spec(1), spec(2), spec(3)],
            |s| if *s == spec(2) { Err(anyhow::anyhow!("in use")) } else { idle_task() },
            |_| {},
        );
        assert_eq!(set.running.keys().cloned().collect::<Vec<_>>(), [spec(1), spec(3)]);
        // At start-up, the same failure is an error.
        let mut fresh = ListenerSet::default();
        assert!(fresh.start_all(&[spec(2)], |_| Err(anyhow::anyhow!("in use"))).is_err());
    }

    #[tokio::test]
    async fn stop_accepting_keeps_datagram_threads_and_stop_all_joins_them() {
        let mut set = ListenerSet::default();
        let flag = Arc::new(AtomicBool::new(false));
        let seen = flag.clone();
        let thread = std::thread::spawn(move || {
            while !seen.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        let udp = (Kind::new(Protocol::Statsd, Transport::Udp), Address::Inet(SocketAddr::from(([127, 0, 0, 1], 9))));
        set.running.insert(udp, Running::Threads(flag.clone(), vec![thread]));
        set.start_all(&[spec(1)], |_| idle_task()).unwrap();
        set.stop_accepting();
        assert_eq!(set.running.len(), 1, "only the stream listener stopped");
        assert!(!flag.load(Ordering::SeqCst));
        set.stop_all().await;
        assert!(flag.load(Ordering::SeqCst), "the receive thread was told to stop, and joined");
    }
}
