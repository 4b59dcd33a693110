//! The host's connection table, live: subscribe to ctnetlink's NEW/UPDATE/DESTROY events
//! first, then dump the table (processed as it streams in, never held whole), then follow
//! the events; when the kernel drops events for us (`ENOBUFS`), dump again and reconcile.
//! floodgate only ever sends dump requests: it never flushes or changes the kernel's table.
//!
//! One thread owns both sockets and updates the [`Table`] (a mutex it and a scrape share;
//! a scrape copies the per-label counts, it never walks the connections).
//!
//! Where ctnetlink cannot be read (no `CAP_NET_ADMIN`, no `nf_conntrack`), the fallback
//! polls the host's own TCP sockets through sock_diag every `poll_interval` and reconciles
//! the same table with each poll (a socket gone since the last poll shows as closed once).

pub mod config;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use floodgate_conntrack::ctnetlink::{self, GROUP_DESTROY, GROUP_NEW, GROUP_UPDATE};
use floodgate_conntrack::netlink::{self, AF_UNSPEC};
use floodgate_conntrack::stats::{self, TableHealth};
use floodgate_conntrack::{log, Locality, Remote, Table};
use parking_lot::Mutex;

use crate::config::{ConntrackConfig, Enabled, EventFormat};
use crate::sys::NetlinkSocket;

/// How often the host's addresses and listening ports are re-read (for the inbound rule).
const LOCALITY_REFRESH: Duration = Duration::from_secs(5);
/// How often the table's health (size, limit, statistics) is read: two small requests the
/// kernel answers from counters, whatever the table's size.
const HEALTH_REFRESH: Duration = Duration::from_secs(5);

/// Figures of the conntrack source.
#[derive(Debug, Default)]
pub struct ConntrackCounters {
    /// Events applied, by [`EventType`] (new, update, destroy).
    pub events: [AtomicU64; 3],
    /// Re-dumps after the kernel dropped events.
    pub resyncs: AtomicU64,
    /// Entries found gone at a resync (their DESTROY event was among those lost).
    pub resync_removed: AtomicU64,
    /// Messages that could not be decoded.
    pub malformed: AtomicU64,
    /// How long the last dump (or sock_diag poll) took, microseconds.
    pub last_dump_us: AtomicU64,
    /// Full reads of the table (the first, resyncs, accounting refreshes).
    pub dumps: AtomicU64,
}

/// The running conntrack source, shared with `/metrics`.
#[derive(Debug)]
pub struct Conntrack {
    /// Labels and counts.
    pub table: Mutex<Table>,
    /// Figures.
    pub counters: ConntrackCounters,
    /// `ctnetlink` or `sock_diag`.
    pub source: &'static str,
    /// The kernel's figures for the table, last read (ctnetlink only).
    pub health: Mutex<Option<TableHealth>>,
    /// The namespace's `netns` label; `None` for floodgate's own.
    pub netns: Option<String>,
}

/// The conntrack source as a component: its threads stop when `shutdown` is set.
struct ConntrackSource {
    shutdown: Arc<AtomicBool>,
}

/// `[conntrack]`: starts following the kernel's table unless it is off.
pub fn build(
    shared: &Arc<crate::component::Shared>,
    config: &crate::config::Config,
    _wiring: &mut crate::component::Wiring,
) -> anyhow::Result<Option<Box<dyn crate::sources::Source>>> {
    let shutdown = Arc::new(AtomicBool::new(false));
    let tables = start(&config.conntrack, shutdown.clone())?;
    if tables.is_empty() {
        return Ok(None);
    }
    for conntrack in tables {
        shared.metrics.add(conntrack);
    }
    Ok(Some(Box::new(ConntrackSource { shutdown })))
}

impl crate::sources::Source for ConntrackSource {
    fn name(&self) -> &'static str {
        "conntrack"
    }

    fn stop(self: Box<Self>) -> crate::component::Stopping {
        self.shutdown.store(true, Relaxed);
        Box::pin(async {})
    }
}

/// Starts the source as configured: the host's table, then each of `netns`; none when off
/// (or unavailable with `auto`, which is logged); an error when required (`enabled = true`)
/// and unavailable.
pub fn start(config: &ConntrackConfig, shutdown: Arc<AtomicBool>) -> anyhow::Result<Vec<Arc<Conntrack>>> {
    if config.enabled == Enabled::Off {
        tracing::info!("connection tracking off ([conntrack] enabled = false)");
        return Ok(Vec::new());
    }
    let mut tables: Vec<Arc<Conntrack>> = start_host(config, shutdown.clone())?.into_iter().collect();
    for path in &config.netns {
        match start_in_namespace(config, path, shutdown.clone()) {
            Ok(table) => tables.push(table),
            Err(e) if config.enabled == Enabled::Auto => {
                tracing::warn!(netns = %path.display(), error = %format!("{e:#}"), "connection tracking: namespace not read")
            }
            Err(e) => return Err(e),
        }
    }
    Ok(tables)
}

/// ctnetlink's event socket (subscribed) and dump socket, in the calling thread's namespace.
fn open_ctnetlink(config: &ConntrackConfig) -> std::io::Result<(NetlinkSocket, NetlinkSocket)> {
    NetlinkSocket::netfilter(
        &[GROUP_NEW, GROUP_UPDATE, GROUP_DESTROY],
        config.event_buffer as usize,
        Duration::from_millis(500),
    )
    .and_then(|events| Ok((events, NetlinkSocket::netfilter(&[], 4 << 20, Duration::from_secs(5))?)))
}

/// Another namespace's table, read by a thread of its own that enters it first (its sockets
/// and the addresses and ports that make a connection inbound are then the namespace's).
fn start_in_namespace(
    config: &ConntrackConfig,
    path: &std::path::Path,
    shutdown: Arc<AtomicBool>,
) -> anyhow::Result<Arc<Conntrack>> {
    let label = crate::sources::conntrack::config::namespace_label(path);
    let file = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("[conntrack] netns {}: {e}", path.display()))?;
    let (config, name) = (config.clone(), label.clone());
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new().name(format!("conntrack {label}")).spawn(move || {
        let opened = crate::sys::enter_network_namespace(&file)
            .map_err(|e| anyhow::anyhow!("cannot enter it (needs CAP_SYS_ADMIN): {e}"))
            .and_then(|()| open_ctnetlink(&config).map_err(|e| anyhow::anyhow!("ctnetlink: {e}")))
            .and_then(|(events, dumps)| follower(&config, events, dumps, Some(name)));
        match opened {
            Ok((state, mut follower)) => {
                let _ = tx.send(Ok(state));
                follower.run(&shutdown);
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        }
    })?;
    let state = rx
        .recv()
        .map_err(|_| anyhow::anyhow!("the namespace's thread ended"))?
        .map_err(|e| e.context(format!("[conntrack] netns {}", path.display())))?;
    tracing::info!(netns = %label, path = %path.display(), "connection tracking on in another network namespace");
    Ok(state)
}

/// The host's own table: ctnetlink, else sock_diag.
fn start_host(config: &ConntrackConfig, shutdown: Arc<AtomicBool>) -> anyhow::Result<Option<Arc<Conntrack>>> {
    let opened = open_ctnetlink(config);
    let (events, dumps) = match opened {
        Ok(s) => s,
        Err(e) => {
            let ctnetlink_error = e;
            return match NetlinkSocket::sock_diag(Duration::from_secs(5)) {
                Ok(socket) => {
                    tracing::warn!(
                        error = %ctnetlink_error,
                        interval = ?config.poll_interval,
                        "connection tracking from sock_diag (this host's own TCP sockets): ctnetlink cannot be opened (it needs CAP_NET_ADMIN and nf_conntrack)"
                    );
                    let state = Arc::new(Conntrack {
                        table: Mutex::new(Table::new(config.max_remote_hosts)),
                        counters: ConntrackCounters::default(),
                        source: "sock_diag",
                        health: Mutex::new(None),
                        netns: None,
                    });
                    let poller = Poller { state: state.clone(), socket, interval: config.poll_interval, seq: 1, buf: vec![0u8; 1 << 20] };
                    std::thread::Builder::new().name("conntrack".into()).spawn(move || poller.run(&shutdown))?;
                    Ok(Some(state))
                }
                Err(e) if config.enabled == Enabled::Auto => {
                    tracing::warn!(ctnetlink = %ctnetlink_error, sock_diag = %e, "connection tracking off: neither ctnetlink nor sock_diag can be opened");
                    Ok(None)
                }
                Err(e) => anyhow::bail!(
                    "[conntrack] enabled = true, but neither ctnetlink ({ctnetlink_error}) nor sock_diag ({e}) can be opened"
                ),
            };
        }
    };
    tracing::info!(source = "ctnetlink", event_buffer = events.recv_buffer(), "connection tracking on");
    let (state, mut follower) = follower(config, events, dumps, None)?;
    std::thread::Builder::new().name("conntrack".into()).spawn(move || follower.run(&shutdown))?;
    Ok(Some(state))
}

/// The state a table's follower keeps up to date, and the follower. Events are logged for
/// floodgate's own namespace only.
fn follower(
    config: &ConntrackConfig,
    events: NetlinkSocket,
    dumps: NetlinkSocket,
    netns: Option<String>,
) -> anyhow::Result<(Arc<Conntrack>, Follower)> {
    let log: Option<(EventFormat, Box<dyn Write + Send>)> = if config.log_events && netns.is_none() {
        let out: Box<dyn Write + Send> =
            if config.log_events_output == "stdout" {
                Box::new(std::io::stdout())
            } else {
                Box::new(crate::files::append(std::path::Path::new(&config.log_events_output)).map_err(|e| {
                    anyhow::anyhow!("cannot open conntrack event log {}: {e}", config.log_events_output)
                })?)
            };
        Some((config.log_events_format, out))
    } else {
        None
    };
    let state = Arc::new(Conntrack {
        table: Mutex::new(Table::new(config.max_remote_hosts)),
        counters: ConntrackCounters::default(),
        source: "ctnetlink",
        health: Mutex::new(None),
        netns,
    });
    let follower = Follower {
        state: state.clone(),
        events,
        dumps,
        local: read_locality(),
        local_at: Instant::now(),
        health_at: None,
        accounting_interval: config.accounting_interval,
        dumped_at: Instant::now(),
        seq: 1,
        buf: vec![0u8; 1 << 20],
        log: log.map(|(f, w)| (f, std::io::BufWriter::new(w))),
    };
    Ok((state, follower))
}

struct Follower {
    state: Arc<Conntrack>,
    events: NetlinkSocket,
    dumps: NetlinkSocket,
    local: Locality,
    local_at: Instant,
    /// When the table's health was last read.
    health_at: Option<Instant>,
    /// How often, with accounting on, the table is re-read for live counters (zero: never).
    accounting_interval: Duration,
    /// When it was last read whole.
    dumped_at: Instant,
    seq: u32,
    buf: Vec<u8>,
    log: Option<(EventFormat, std::io::BufWriter<Box<dyn Write + Send>>)>,
}

impl Follower {
    fn run(&mut self, shutdown: &AtomicBool) {
        // Events first (subscribed when the socket was opened), then the dump: nothing that
        // happens in between is missed.
        if let Err(e) = self.dump() {
            tracing::error!(error = %e, "conntrack: the initial dump failed; following events only");
        }
        while !shutdown.load(Relaxed) {
            if self.local_at.elapsed() > LOCALITY_REFRESH {
                self.local = read_locality();
                self.local_at = Instant::now();
            }
            if self.health_at.is_none_or(|at| at.elapsed() >= HEALTH_REFRESH) {
                self.health_at = Some(Instant::now());
                match self.read_health() {
                    Ok(health) => *self.state.health.lock() = Some(health),
                    Err(e) => tracing::warn!(error = %e, "conntrack: the table's statistics could not be read"),
                }
            }
            // Live connections' counters are only in dumps: with accounting on, re-read the
            // table. Checked once an interval (not at every event batch), on or not.
            if !self.accounting_interval.is_zero() && self.dumped_at.elapsed() >= self.accounting_interval {
                self.dumped_at = Instant::now();
                if self.state.table.lock().accounting() {
                    if let Err(e) = self.dump() {
                        tracing::warn!(error = %e, "conntrack: re-reading the table for its traffic counters failed");
                    }
                }
            }
            match self.events.recv(&mut self.buf) {
                Ok(n) => {
                    let buf = std::mem::take(&mut self.buf);
                    self.apply(&buf[..n], false);
                    self.buf = buf;
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    // The kernel dropped events: what we hold may be wrong. Dump and reconcile.
                    self.state.counters.resyncs.fetch_add(1, Relaxed);
                    tracing::warn!("conntrack: events lost (socket buffer full); re-reading the table");
                    if let Err(e) = self.dump() {
                        tracing::error!(error = %e, "conntrack: resync dump failed");
                    }
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted) => {}
                Err(e) => {
                    tracing::error!(error = %e, "conntrack: event socket failed");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }

    /// Dumps the whole table (IPv4 and IPv6) into the table as a resync.
    fn dump(&mut self) -> std::io::Result<()> {
        let started = Instant::now();
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        self.state.table.lock().begin_resync();
        self.dumps.send(&ctnetlink::dump_request(seq, AF_UNSPEC))?;
        let mut done = false;
        while !done {
            let n = self.dumps.recv(&mut self.buf)?;
            let buf = std::mem::take(&mut self.buf);
            let mut error = None;
            for m in netlink::messages(&buf[..n]).flatten() {
                if m.seq != seq {
                    continue;
                }
                match m.kind {
                    netlink::NLMSG_DONE => done = true,
                    netlink::NLMSG_ERROR => error = m.error_code(),
                    _ => {}
                }
            }
            self.apply(&buf[..n], true);
            self.buf = buf;
            if let Some(code) = error.filter(|c| *c != 0) {
                self.state.table.lock().end_resync();
                return Err(std::io::Error::from_raw_os_error(-code));
            }
        }
        let removed = self.state.table.lock().end_resync();
        self.state.counters.resync_removed.fetch_add(removed as u64, Relaxed);
        let took = started.elapsed();
        self.state.counters.last_dump_us.store(took.as_micros() as u64, Relaxed);
        let entries = self.state.table.lock().len();
        if self.state.counters.dumps.fetch_add(1, Relaxed) == 0 {
            tracing::info!(entries, took = ?took, "conntrack: table read");
        } else {
            tracing::debug!(entries, took = ?took, "conntrack: table read");
        }
        self.dumped_at = Instant::now();
        Ok(())
    }

    /// The table's health, on the dump socket.
    fn read_health(&mut self) -> std::io::Result<TableHealth> {
        read_health(&self.dumps, &mut self.seq, &mut self.buf)
    }

    /// Applies every conntrack message in one buffer (under one lock).
    fn apply(&mut self, buf: &[u8], from_dump: bool) {
        let mut table = self.state.table.lock();
        for m in netlink::messages(buf) {
            let decoded = match m {
                Ok(m) => ctnetlink::decode(&m),
                Err(e) => Err(e),
            };
            match decoded {
                Ok(Some((event, entry))) => {
                    table.apply(event, &entry, &self.local, from_dump);
                    if !from_dump {
                        self.state.counters.events[event as usize].fetch_add(1, Relaxed);
                        if let Some((format, out)) = &mut self.log {
                            let line = match format {
                                EventFormat::Json => log::json(event, &entry, &Remote::of(&entry, &self.local)),
                                EventFormat::Netfilter => log::netfilter(event, &entry),
                            };
                            let _ = writeln!(out, "{line}");
                        }
                    }
                }
                Ok(None) => {}
                Err(_) => {
                    self.state.counters.malformed.fetch_add(1, Relaxed);
                }
            }
        }
        drop(table);
        if let Some((_, out)) = &mut self.log {
            let _ = out.flush();
        }
    }
}

/// The fallback: polls the host's TCP sockets.
struct Poller {
    state: Arc<Conntrack>,
    socket: NetlinkSocket,
    interval: Duration,
    seq: u32,
    buf: Vec<u8>,
}

impl Poller {
    fn run(mut self, shutdown: &AtomicBool) {
        let mut next = Instant::now();
        while !shutdown.load(Relaxed) {
            if Instant::now() >= next {
                if let Err(e) = self.poll() {
                    tracing::error!(error = %e, "conntrack: sock_diag poll failed");
                }
                next = Instant::now() + self.interval;
            }
            std::thread::sleep(Duration::from_millis(100).min(self.interval));
        }
    }

    /// Reads every TCP socket (IPv4, IPv6), then replaces the table's view with it.
    fn poll(&mut self) -> std::io::Result<()> {
        use floodgate_conntrack::sockdiag;
        let started = Instant::now();
        let mut sockets = Vec::new();
        for family in [netlink::AF_INET, netlink::AF_INET6] {
            self.seq = self.seq.wrapping_add(1);
            self.socket.send(&sockdiag::dump_request(self.seq, family))?;
            'dump: loop {
                let n = self.socket.recv(&mut self.buf)?;
                for m in netlink::messages(&self.buf[..n]) {
                    let Ok(m) = m else {
                        self.state.counters.malformed.fetch_add(1, Relaxed);
                        break 'dump;
                    };
                    if m.kind == netlink::NLMSG_DONE || m.kind == netlink::NLMSG_ERROR {
                        break 'dump;
                    }
                    match sockdiag::decode(&m) {
                        Ok(Some(s)) => sockets.push(s),
                        Ok(None) => {}
                        Err(_) => {
                            self.state.counters.malformed.fetch_add(1, Relaxed);
                        }
                    }
                }
            }
        }
        let listening: std::collections::HashSet<u16> =
            sockets.iter().filter(|s| s.state == sockdiag::TCP_LISTEN).map(|s| s.local.1).collect();
        let local =
            Locality::new(crate::sys::interface_addresses(), listening.iter().map(|p| (ctnetlink::IPPROTO_TCP, *p)));
        let mut table = self.state.table.lock();
        table.begin_resync();
        for s in &sockets {
            let inbound = listening.contains(&s.local.1) && s.state != sockdiag::TCP_LISTEN;
            if let Some(entry) = sockdiag::to_entry(s, inbound) {
                table.apply(floodgate_conntrack::EventType::Update, &entry, &local, true);
            }
        }
        table.end_resync();
        self.state.counters.last_dump_us.store(started.elapsed().as_micros() as u64, Relaxed);
        Ok(())
    }
}

/// The table's size, limit and statistics (`conntrack -C`, `conntrack -S`): two requests on
/// a ctnetlink socket (`seq` advanced for each), each read to its end into `buf`. The kernel
/// answers both from counters: the cost does not grow with the table.
pub fn read_health(socket: &NetlinkSocket, seq: &mut u32, buf: &mut [u8]) -> std::io::Result<TableHealth> {
    let mut health = TableHealth::default();
    for request in [stats::cpu_stats_request as fn(u32) -> Vec<u8>, stats::table_size_request] {
        *seq = seq.wrapping_add(1);
        let seq = *seq;
        socket.send(&request(seq))?;
        let mut done = false;
        while !done {
            let n = socket.recv(buf)?;
            for m in netlink::messages(&buf[..n]) {
                let m = m.map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.0))?;
                if m.seq != seq {
                    continue;
                }
                match m.kind {
                    netlink::NLMSG_DONE => done = true,
                    // The acknowledgement (0) that ends the size request, or a refusal.
                    netlink::NLMSG_ERROR => match m.error_code() {
                        Some(0) => done = true,
                        Some(code) => return Err(std::io::Error::from_raw_os_error(-code)),
                        None => return Err(std::io::Error::other("short netlink error message")),
                    },
                    _ => match stats::decode_stats(&m) {
                        Ok(Some(s)) => health.take(s),
                        Ok(None) => {}
                        Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e.0)),
                    },
                }
            }
        }
    }
    Ok(health)
}

/// This namespace's addresses and the ports something listens on
/// (`/proc/thread-self/net/{tcp,udp}{,6}`: TCP in LISTEN, UDP bound without a peer), which
/// make a connection inbound.
fn read_locality() -> Locality {
    let mut listening = Vec::new();
    for (file, proto, state) in [
        ("/proc/thread-self/net/tcp", ctnetlink::IPPROTO_TCP, "0A"),
        ("/proc/thread-self/net/tcp6", ctnetlink::IPPROTO_TCP, "0A"),
        ("/proc/thread-self/net/udp", ctnetlink::IPPROTO_UDP, "07"),
        ("/proc/thread-self/net/udp6", ctnetlink::IPPROTO_UDP, "07"),
    ] {
        let Ok(text) = std::fs::read_to_string(file) else { continue };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.get(3) != Some(&state) {
                continue;
            }
            if let Some(port) =
                cols.get(1).and_then(|a| a.rsplit(':').next()).and_then(|p| u16::from_str_radix(p, 16).ok())
            {
                listening.push((proto, port));
            }
        }
    }
    Locality::new(crate::sys::interface_addresses(), listening)
}

/// Event type names in [`ConntrackCounters::events`] order (`EventType as usize`).
pub const EVENT_NAMES: [&str; 3] = ["new", "update", "destroy"];

impl crate::metrics::Report for Conntrack {
    /// conntrack_exporter's four gauges (same names, help and `host` label), then floodgate's
    /// own; another namespace's with its `netns` label.
    fn report(&self, out: &mut crate::metrics::Families) {
        match &self.netns {
            None => self.report_table(out),
            Some(netns) => {
                let mut own = crate::metrics::Families::default();
                self.report_table(&mut own);
                out.absorb_labelled(own, ("netns", netns));
            }
        }
    }

    /// Connections by state, the ten remote hosts with the most, and the table's fill (of
    /// floodgate's own namespace; other namespaces are on `/metrics` only).
    fn status(&self) -> Option<(&'static str, serde_json::Value)> {
        if self.netns.is_some() {
            return None;
        }
        self.status_table()
    }
}

impl Conntrack {
    fn report_table(&self, out: &mut crate::metrics::Families) {
        use crate::metrics::Describe;
        use floodgate_conntrack::Phase;
        let (rows, protocols, folded, accounting) = {
            let mut table = self.table.lock();
            let protocols: Vec<(u8, u64)> = table.by_protocol().iter().map(|(p, n)| (*p, *n)).collect();
            (table.scrape(), protocols, table.folded(), table.accounting())
        };
        let families = [
            (
                Phase::Opening,
                Describe::gauge(
                    "conntrack_opening_connections",
                    "How many connections to the remote host are currently opening?",
                ),
            ),
            (
                Phase::Open,
                Describe::gauge(
                    "conntrack_open_connections",
                    "How many open connections are there to the remote host?",
                ),
            ),
            (
                Phase::Closing,
                Describe::gauge(
                    "conntrack_closing_connections",
                    "How many connections to the remote host are currently closing?",
                ),
            ),
            (
                Phase::Closed,
                Describe::gauge(
                    "conntrack_closed_connections",
                    "How many connections to the remote host have recently closed?",
                ),
            ),
        ];
        // `host`, and `zone` where the connection is in a non-default conntrack zone.
        let labelled: Vec<(String, Option<String>)> =
            rows.iter().map(|(l, _)| (l.to_string(), l.zone().map(|z| z.to_string()))).collect();
        // Row `i`'s labels: `host`, `zone` where set, then `more`.
        let labels = |i: usize, more: Option<(&'static str, &'static str)>| -> Vec<(&'static str, &str)> {
            let (host, zone) = &labelled[i];
            [Some(("host", host.as_str())), zone.as_deref().map(|z| ("zone", z)), more].into_iter().flatten().collect()
        };
        for (phase, describe) in families {
            out.family(describe);
            for (i, (_, counts)) in rows.iter().enumerate() {
                let mut v = counts.phases[phase as usize];
                if phase == Phase::Closed {
                    v += counts.recently_closed;
                }
                out.add(describe, &labels(i, None), v);
            }
        }
        if accounting {
            let bytes = Describe::counter(
                "conntrack_bytes_total",
                "Bytes of the connections to and from the remote host (out: towards it), with nf_conntrack_acct=1.",
            );
            let packets = Describe::counter(
                "conntrack_packets_total",
                "Packets of the connections to and from the remote host (out: towards it), with nf_conntrack_acct=1.",
            );
            for (i, (_, counts)) in rows.iter().enumerate() {
                let t = &counts.traffic;
                for (direction, b, p) in [("out", t.out_bytes, t.out_packets), ("in", t.in_bytes, t.in_packets)] {
                    out.add(bytes, &labels(i, Some(("direction", direction))), b);
                    out.add(packets, &labels(i, Some(("direction", direction))), p);
                }
            }
        }
        let entries = Describe::gauge("conntrack_entries", "Connections the kernel tracks now, by protocol.");
        out.family(entries);
        for (p, n) in protocols {
            out.add(entries, &[("protocol", log::protocol_name(p))], n);
        }
        let events = Describe::counter("conntrack_events_total", "Connection events applied, by type.");
        for (name, n) in EVENT_NAMES.iter().zip(&self.counters.events) {
            out.add(events, &[("type", name)], n.load(Relaxed));
        }
        out.one(
            Describe::counter(
                "conntrack_resyncs_total",
                "Re-reads of the whole table after the kernel dropped events.",
            ),
            self.counters.resyncs.load(Relaxed),
        );
        out.one(
            Describe::counter(
                "conntrack_folded_connections_total",
                "Connections counted under host=\"other\" (max_remote_hosts reached).",
            ),
            folded,
        );
        out.one(
            Describe::gauge("conntrack_dump_duration_seconds", "How long the last full read of the table took."),
            self.counters.last_dump_us.load(Relaxed) as f64 / 1e6,
        );
        if let Some(health) = *self.health.lock() {
            report_health(out, &health);
        }
        out.add(
            Describe::gauge("conntrack_source_info", "Where connections are read from (ctnetlink or sock_diag)."),
            &[("source", self.source)],
            1,
        );
    }

    fn status_table(&self) -> Option<(&'static str, serde_json::Value)> {
        use serde_json::json;
        let rows = self.table.lock().snapshot();
        let mut states = [0u64; 4];
        for (_, counts) in &rows {
            for (i, v) in counts.phases.iter().enumerate() {
                states[i] += v;
            }
            states[3] += counts.recently_closed;
        }
        let mut top: Vec<_> = rows.iter().filter(|(_, c)| c.entries > 0).collect();
        top.sort_by_key(|(_, c)| std::cmp::Reverse(c.phases.iter().sum::<u64>()));
        let top: Vec<serde_json::Value> = top
            .iter()
            .take(10)
            .map(|(l, c)| json!({"host": l.to_string(), "opening": c.phases[0], "open": c.phases[1], "closing": c.phases[2], "closed": c.phases[3] + c.recently_closed}))
            .collect();
        let value = json!({"source": self.source, "states": {"opening": states[0], "open": states[1], "closing": states[2], "closed": states[3]},
                           "top_hosts": top, "resyncs": self.counters.resyncs.load(Relaxed),
                           "table": self.health.lock().map(|h| json!({"entries": h.entries, "limit": h.limit,
                               "fill_ratio": h.fill_ratio(), "drop": h.stats.drop, "early_drop": h.stats.early_drop,
                               "insert_failed": h.stats.insert_failed}))});
        Some(("conntrack", value))
    }
}

/// The table's health: node_exporter's `node_nf_conntrack_entries_limit` and
/// `node_nf_conntrack_stat_*` as `conntrack_entries_limit` and `conntrack_stat_*_total`
/// (counters, as they are), and the fill ratio alerts page on.
fn report_health(out: &mut crate::metrics::Families, health: &TableHealth) {
    use crate::metrics::Describe;
    out.one(
        Describe::gauge("conntrack_entries_limit", "Entries the kernel's table may hold (nf_conntrack_max)."),
        u64::from(health.limit),
    );
    out.one(
        Describe::gauge(
            "conntrack_table_entries",
            "Entries in the kernel's table now, as the kernel counts them (nf_conntrack_count).",
        ),
        u64::from(health.entries),
    );
    if let Some(ratio) = health.fill_ratio() {
        out.one(
            Describe::gauge("conntrack_table_fill_ratio", "conntrack_table_entries / conntrack_entries_limit."),
            ratio,
        );
    }
    // The same order as `CpuStats::named` (a test holds them together).
    for ((_, value), (_, metric, help)) in health.stats.named().into_iter().zip(STAT_METRICS) {
        out.one(Describe::counter(metric, help), value);
    }
}

/// Each kernel statistic's name, metric and help, in `CpuStats::named`'s order.
const STAT_METRICS: [(&str, &str, &str); 10] = [
    ("found", "conntrack_stat_found_total", "Lookups that found an entry (summed over CPUs)."),
    ("invalid", "conntrack_stat_invalid_total", "Packets conntrack could not track."),
    ("insert", "conntrack_stat_insert_total", "Entries inserted (0 on kernels from 5.10)."),
    ("insert_failed", "conntrack_stat_insert_failed_total", "Inserts that failed (a race, or the table full)."),
    ("drop", "conntrack_stat_drop_total", "Packets dropped because no entry could be made (table full)."),
    ("early_drop", "conntrack_stat_early_drop_total", "Entries evicted to make room in a full table."),
    ("error", "conntrack_stat_error_total", "ICMP errors conntrack could not match."),
    ("search_restart", "conntrack_stat_search_restart_total", "Lookups restarted by a table resize."),
    ("clash_resolve", "conntrack_stat_clash_resolve_total", "Insert races resolved by reusing the other entry."),
    ("chain_toolong", "conntrack_stat_chain_toolong_total", "Hash chains found too long."),
];

#[cfg(test)]
mod tests {
    #[test]
    fn every_statistic_has_its_own_metric() {
        let named = floodgate_conntrack::stats::CpuStats::default().named();
        for ((name, _), (stat, metric, _)) in named.iter().zip(super::STAT_METRICS) {
            assert_eq!(*name, stat);
            assert_eq!(metric, format!("conntrack_stat_{name}_total"));
        }
    }
}
