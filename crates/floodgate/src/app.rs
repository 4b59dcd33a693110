//! Wiring: bind every listener, start receive threads, the flusher, the sinks, the console and
//! HTTP; report ready; then wait for signals (SIGTERM/SIGINT: stop and flush; SIGHUP: reload).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use floodgate_statsd::graphite::GraphiteStats;
use floodgate_statsd::Store;
use parking_lot::{Mutex, RwLock};
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinHandle;

use crate::config::{Config, Health};
use crate::flush::FlushCounters;
use crate::guard::Guard;
use crate::listener::{Counters, Kind, Listener, Listeners, Protocol, Transport};
use crate::metrics::Registry;
use crate::net::datagram::UdpWorker;
use crate::sinks::graphite::{unix_now, GraphiteSink};
use crate::sinks::SinkCounters;
use crate::sources::statsd::tcp::TcpOptions;
use crate::sources::statsd::udp::StatsdDatagrams;
use crate::sources::statsd::SharedShard;
use crate::sys::UdpReceiver;

/// State shared by every part of the running agent.
pub struct Shared {
    /// The configuration in force.
    pub config: RwLock<Config>,
    /// Where it came from (reloaded on SIGHUP).
    pub config_path: Option<PathBuf>,
    /// Aggregated StatsD state.
    pub store: Mutex<Store>,
    /// Every receive shard (UDP threads, TCP listeners).
    pub shards: Mutex<Vec<SharedShard>>,
    /// Every component's figures (`/metrics`, `/api/status`).
    pub metrics: Arc<Registry>,
    /// Every listener, for the per-listener figures.
    pub listeners: Arc<Listeners>,
    /// The flusher's figures.
    pub flush: Arc<FlushCounters>,
    /// The flush sinks' figures (an aggregator takes no batches while one is full).
    pub sinks: Mutex<Vec<Arc<SinkCounters>>>,
    /// Admission in front of every listener.
    pub guard: Arc<Guard>,
    /// The StatsD TLS listeners' certificate (replaced on SIGHUP).
    pub statsd_tls: Mutex<Option<crate::net::tls::SharedServerConfig>>,
    /// The StatsD listeners running now (SIGHUP adds and removes them).
    pub statsd_listeners: Mutex<StatsdListeners>,
    /// The Graphite address the sink delivers to (SIGHUP may change it).
    pub graphite_address: Arc<RwLock<String>>,
    /// The syslog TLS listeners' certificates by address (replaced on SIGHUP).
    pub syslog_tls: Mutex<std::collections::BTreeMap<SocketAddr, crate::net::tls::SharedServerConfig>>,
    /// The syslog listeners running now (SIGHUP adds and removes them).
    pub syslog_listeners: Mutex<Option<SyslogListeners>>,
    /// Set on SIGHUP: the syslog file output reopens its file.
    pub syslog_reopen: Mutex<Option<Arc<AtomicBool>>>,
    /// The Graphite backend's statistics (written into each payload).
    pub graphite_stats: Arc<Mutex<GraphiteStats>>,
    /// Operator health (`health up|down` on the console).
    pub health_up: AtomicBool,
    /// Every listener is bound.
    pub ready: AtomicBool,
    /// Start time, Unix seconds.
    pub started_unix: i64,
    /// Start instant (gauge ordering epoch).
    pub epoch: Instant,
    /// Last time a StatsD packet was seen, Unix seconds (console `stats`).
    pub last_msg_seen: std::sync::atomic::AtomicI64,
    /// The epoch as Unix nanoseconds: turns gauge stamps into wall-clock times.
    pub epoch_wall_ns: i64,
    /// The async runtime (for the flusher thread's follow-up work).
    pub runtime: tokio::runtime::Handle,
    /// Turns true at shutdown: connections read what their senders already sent, then end.
    pub stopping: tokio::sync::watch::Sender<bool>,
}

impl Shared {
    fn new(config: Config, config_path: Option<PathBuf>) -> Shared {
        let started_unix = unix_now();
        let epoch = Instant::now();
        let epoch_wall_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        let guard = Guard::new(&config.limits, epoch);
        let (metrics, listeners, flush) =
            (Arc::new(Registry::default()), Arc::new(Listeners::default()), Arc::default());
        metrics.add(listeners.clone());
        metrics.add(guard.clone());
        metrics.add(Arc::clone(&flush) as Arc<FlushCounters>);
        Shared {
            store: Mutex::new(Store::new(config.aggregation())),
            shards: Mutex::new(Vec::new()),
            metrics,
            listeners,
            flush,
            sinks: Mutex::new(Vec::new()),
            guard,
            statsd_tls: Mutex::new(None),
            statsd_listeners: Mutex::new(StatsdListeners::default()),
            graphite_address: Arc::new(RwLock::new(config.graphite.address.clone().unwrap_or_default())),
            syslog_tls: Mutex::new(Default::default()),
            syslog_listeners: Mutex::new(None),
            syslog_reopen: Mutex::new(None),
            graphite_stats: Arc::new(Mutex::new(GraphiteStats { last_flush: started_unix, ..Default::default() })),
            health_up: AtomicBool::new(config.admin.health == Health::Up),
            ready: AtomicBool::new(false),
            started_unix,
            epoch,
            last_msg_seen: std::sync::atomic::AtomicI64::new(started_unix),
            config: RwLock::new(config),
            config_path,
            epoch_wall_ns,
            runtime: tokio::runtime::Handle::current(),
            stopping: tokio::sync::watch::channel(false).0,
        }
    }

    fn new_shard(&self) -> SharedShard {
        // Until the next flush shares the budget out, a new shard may use an eighth of it.
        let allowance = match self.config.read().statsd.max_memory {
            0 => u64::MAX,
            limit => limit / 8,
        };
        let shard = Arc::new(Mutex::new(self.store.lock().new_shard(allowance)));
        self.shards.lock().push(shard.clone());
        shard
    }
}

/// Runs floodgate until SIGTERM or SIGINT.
pub async fn run(config: Config, config_path: Option<PathBuf>) -> Result<()> {
    for addr in config.public_listeners() {
        tracing::warn!(%addr, "listening on a non-loopback address with no allow-list");
    }
    match crate::sys::raise_open_files_limit() {
        Ok(n) if n < 4096 => tracing::warn!(
            open_files = n,
            "the open-files limit is low: connections past it wait in the backlog (raise LimitNOFILE / ulimit -n)"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open-files limit"),
    }
    let shared = Arc::new(Shared::new(config.clone(), config_path));
    let shutdown = Arc::new(AtomicBool::new(false));
    let s = &config.statsd;

    // Bind everything first: a listener that cannot bind is a start-up error.
    for addr in &s.udp {
        let running = start_statsd_udp(&shared, *addr)?;
        shared.statsd_listeners.lock().udp.insert(*addr, running);
    }
    let syslog = start_syslog(&config, &shared)?;
    let statsd_tls = match &s.tls {
        Some(tls) => Some(Arc::new(ArcSwap::new(crate::net::tls::server_config(tls).context("statsd tls")?))),
        None => None,
    };
    *shared.statsd_tls.lock() = statsd_tls.clone();
    for (kind, addr) in s.tcp.iter().map(|a| (STATSD_TCP, a)).chain(s.tls_listen.iter().map(|a| (STATSD_TLS, a))) {
        let task = start_statsd_tcp(&shared, kind, *addr)?;
        shared.statsd_listeners.lock().tcp.insert((kind, *addr), task);
    }
    let aggregator_listener = match &config.aggregator {
        Some(a) => {
            let listener = bind_tcp(a.listen).with_context(|| format!("cannot bind aggregator {}", a.listen))?;
            let tls = match &a.tls {
                Some(tls) => {
                    Some(Arc::new(ArcSwap::new(crate::net::tls::server_config(tls).context("aggregator tls")?)))
                }
                None => None,
            };
            let id = format!("{}@{}", host_name(), listener.local_addr()?);
            let limits = crate::sources::aggregator::Limits {
                max_frame: a.max_frame as usize,
                max_agents: a.max_agents,
                read_timeout: a.read_timeout,
                idle_timeout: (s.flush_interval * 3).max(Duration::from_secs(60)).max(a.read_timeout),
            };
            let aggregator = crate::sources::aggregator::Aggregator::load(&a.state_dir, id, limits)?;
            tracing::info!(address = %listener.local_addr()?, tls = tls.is_some(), mutual = a.tls.as_ref().is_some_and(|t| t.client_ca.is_some()), "aggregator listening for agents");
            Some((listener, tls, aggregator))
        }
        None => None,
    };
    let admin_listener = match config.admin.listen {
        Some(addr) => Some(bind_tcp(addr).with_context(|| format!("cannot bind admin console {addr}"))?),
        None => None,
    };
    let http_listener = match config.http.listen {
        Some(addr) => Some(bind_tcp(addr).with_context(|| format!("cannot bind http {addr}"))?),
        None => None,
    };

    // Start.
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    let mut aggregator = None;
    if let Some((listener, tls, agg)) = aggregator_listener {
        let address = listener.local_addr()?;
        let transport = if tls.is_some() { Transport::Tls } else { Transport::Tcp };
        let kind = Kind::new(Protocol::Aggregator, transport);
        let counters = shared.listeners.register_stream(kind, address.to_string(), None);
        shared.metrics.add(agg.clone());
        let guard = shared.guard.listener(kind, address, s.tcp_max_connections);
        tasks.push(tokio::spawn(crate::sources::aggregator::serve(
            listener,
            guard,
            counters,
            tls,
            agg.clone(),
            shared.clone(),
        )));
        aggregator = Some(agg);
    }
    let mut link_tasks = Vec::new();
    let forward = match &config.forward {
        Some(f) => {
            let agent_id = f.agent_id.clone().unwrap_or_else(host_name);
            let fresh = {
                use std::hash::BuildHasher;
                std::collections::hash_map::RandomState::new().hash_one(shared.epoch_wall_ns)
            };
            let session = crate::sinks::journal::session(&f.state_dir, &agent_id, &f.aggregators, fresh)
                .with_context(|| format!("forward state_dir {}", f.state_dir.display()))?;
            // The last batches are acknowledged after the aggregators' next flush; what is not
            // by then stays in the journal, so the wait is bounded to fit a service manager's
            // stop timeout (systemd's is 90 s).
            let drain = (s.flush_interval + Duration::from_secs(10)).min(Duration::from_secs(30));
            let mut links = Vec::new();
            let report = Arc::new(crate::sinks::forward::LinksReport::default());
            shared.metrics.add(report.clone());
            for address in &f.aggregators {
                let tls = match &f.tls {
                    Some(tls) => Some(crate::net::tls_target(tls, address).context("forward tls")?),
                    None => None,
                };
                let counters = Arc::new(crate::sinks::forward::LinkCounters::default());
                report.links.lock().push((address.clone(), counters.clone()));
                let journal = crate::sinks::journal::Journal::open(&f.state_dir, address, session, f.fsync)
                    .with_context(|| format!("forward journal in {}", f.state_dir.display()))?;
                let link = crate::sinks::forward::Link {
                    address: address.clone(),
                    tls,
                    agent_id: agent_id.clone(),
                    session,
                    buffer: f.buffer,
                    counters,
                    journal: Some(journal),
                };
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                link_tasks.push(tokio::spawn(link.run(rx, drain)));
                links.push(tx);
            }
            tracing::info!(aggregators = ?f.aggregators, %agent_id, tls = f.tls.is_some(), "forwarding flushes to aggregators");
            Some((floodgate_forward::ring::Ring::new(&f.aggregators), links))
        }
        None => None,
    };
    if let Some(listener) = admin_listener {
        tracing::info!(address = %listener.local_addr()?, "admin console listening");
        let address = listener.local_addr()?;
        let kind = Kind::new(Protocol::Admin, Transport::Tcp);
        let counters = shared.listeners.register_stream(kind, address.to_string(), None);
        let guard = shared.guard.listener(kind, address, config.admin.max_connections);
        let idle = config.admin.idle_timeout;
        tasks.push(tokio::spawn(crate::admin::serve(listener, shared.clone(), guard, counters, idle)));
    }
    if let Some(listener) = http_listener {
        tracing::info!(address = %listener.local_addr()?, "http listening (/ui, /api/status, /metrics, /healthz, /offenders)");
        let address = listener.local_addr()?;
        let kind = Kind::new(Protocol::Http, Transport::Tcp);
        let counters = shared.listeners.register_stream(kind, address.to_string(), None);
        let guard = shared.guard.listener(kind, address, config.http.max_connections);
        let timeout = config.http.header_timeout;
        tasks.push(tokio::spawn(crate::http::serve(listener, shared.clone(), guard, counters, timeout)));
    }
    let mut sink_tasks = Vec::new();
    let graphite_tx = match &config.graphite.address {
        Some(address) => {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let sink = GraphiteSink {
                address: shared.graphite_address.clone(),
                timeout: config.graphite.timeout,
                stats: shared.graphite_stats.clone(),
            };
            tracing::info!(%address, protocol = ?config.graphite.protocol, "graphite output on");
            let (buffer, counters) = (config.graphite.buffer, sink_counters(&shared, "graphite"));
            sink_tasks.push(tokio::spawn(async move {
                crate::sinks::deliver_all(sink, rx, buffer, &counters, Duration::from_secs(10)).await
            }));
            Some(tx)
        }
        None => {
            tracing::info!("graphite output off (set [graphite] address)");
            None
        }
    };
    let remote_write_tx = match &config.prometheus_remote_write {
        Some(rw) => {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let sink = crate::sinks::remote_write::RemoteWriteSink::new(rw).context("prometheus_remote_write")?;
            tracing::info!(url = %rw.url, "prometheus remote-write output on");
            let (buffer, counters) = (rw.buffer, sink_counters(&shared, "remote_write"));
            sink_tasks.push(tokio::spawn(async move {
                crate::sinks::deliver_all(sink, rx, buffer, &counters, Duration::from_secs(10)).await
            }));
            Some(tx)
        }
        None => None,
    };
    let aligned = match (&config.aggregator, &forward) {
        (Some(a), _) => Some(a.grace.unwrap_or_else(|| (s.flush_interval / 2).min(Duration::from_secs(5)))),
        (None, Some(_)) => Some(Duration::ZERO),
        (None, None) => None,
    };
    let outputs =
        crate::flush::Outputs { graphite: graphite_tx, remote_write: remote_write_tx, forward, aggregator, aligned };
    let (stop_flush, stop_rx) = std::sync::mpsc::channel();
    let flusher = {
        let shared = shared.clone();
        std::thread::Builder::new().name("flusher".into()).spawn(move || crate::flush::run(shared, outputs, stop_rx))?
    };
    if let Some(conntrack) = crate::sources::conntrack::start(&config.conntrack, shutdown.clone())? {
        shared.metrics.add(conntrack);
    }
    let sweeper = shared.guard.spawn_sweeper(shutdown.clone())?;
    shared.ready.store(true, Ordering::SeqCst);
    tracing::info!(flush_interval = ?s.flush_interval, "ready");

    // Wait for signals.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => { let _ = reload(&shared); }
        }
    }

    // Stop receiving, flush everything held, deliver it, exit.
    tracing::info!("stopping: no new input, flushing what is held");
    shared.ready.store(false, Ordering::SeqCst);
    shutdown.store(true, Ordering::SeqCst);
    for t in &tasks {
        t.abort();
    }
    let statsd = std::mem::take(&mut *shared.statsd_listeners.lock());
    for task in statsd.tcp.values() {
        task.abort();
    }
    // Open StatsD connections take what their senders already sent, then end: all of it is
    // in the final flush.
    let _ = shared.stopping.send(true);
    let drained = Instant::now() + crate::net::stream::DRAIN_LIMIT + Duration::from_secs(1);
    while shared.listeners.open_connections(Protocol::Statsd) > 0 && Instant::now() < drained {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (stop, _) in statsd.udp.values() {
        stop.store(true, Ordering::SeqCst);
    }
    let mut syslog_threads = Vec::new();
    if let Some(rt) = shared.syslog_listeners.lock().take() {
        // Dropping `rt` drops its sender: the output ends once the threads and connections do.
        for task in rt.tcp.values() {
            task.abort();
        }
        for (stop, threads) in rt.udp.into_values() {
            stop.store(true, Ordering::SeqCst);
            syslog_threads.extend(threads);
        }
    }
    tokio::task::spawn_blocking(move || {
        let statsd_threads = statsd.udp.into_values().flat_map(|(_, threads)| threads);
        for h in statsd_threads.chain(syslog_threads) {
            let _ = h.join();
        }
        let _ = stop_flush.send(());
        let _ = flusher.join();
        let _ = sweeper.join();
    })
    .await?;
    if let Some((output, stop_connections)) = syslog {
        // Connections stop reading and hand on what they hold; the output then empties.
        let _ = stop_connections.send(true);
        tracing::info!(output = %output.describe, "syslog: handing on what is held");
        output.finish().await;
    }
    for task in sink_tasks {
        let _ = task.await;
    }
    for task in link_tasks {
        let _ = task.await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// The StatsD listeners running now, by address.
#[derive(Default)]
pub struct StatsdListeners {
    /// UDP: the listener's stop switch and its receive threads.
    udp: std::collections::BTreeMap<SocketAddr, (Arc<AtomicBool>, Vec<std::thread::JoinHandle<()>>)>,
    /// TCP and TLS: the accept task.
    tcp: std::collections::BTreeMap<(Kind, SocketAddr), JoinHandle<()>>,
}

/// A running UDP listener: its stop switch and its receive threads.
type RunningUdp = (Arc<AtomicBool>, Vec<std::thread::JoinHandle<()>>);

/// Binds a UDP address of listener `kind` and starts one receive thread per socket, each with
/// the handler `make` builds for its counters. The returned switch stops them: they drain what
/// is queued and exit (a StatsD thread's shard is merged at the next flush).
fn start_udp<H: crate::net::datagram::DatagramHandler>(
    shared: &Shared,
    kind: Kind,
    addr: SocketAddr,
    (threads, buffer, max_datagram): (usize, u64, usize),
    extra: crate::listener::ExtraFamilies,
    make: impl Fn(Arc<Counters>) -> H,
) -> Result<RunningUdp> {
    let (listener, sockets) = bind_udp(shared, kind, addr, threads, buffer, extra)?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut running = Vec::new();
    for (i, (socket, counters)) in sockets.into_iter().enumerate() {
        let worker = UdpWorker {
            socket,
            handler: make(counters.clone()),
            counters,
            guard: shared.guard.clone(),
            listener: listener.clone(),
            max_datagram,
            shutdown: stop.clone(),
        };
        running.push(worker.spawn(format!("{kind}-{}-{i}", addr.port()))?);
    }
    Ok((stop, running))
}

/// Stops a UDP listener; nothing waits for its threads here.
fn stop_udp((stop, threads): RunningUdp) {
    stop.store(true, Ordering::SeqCst);
    std::thread::spawn(move || threads.into_iter().for_each(|t| drop(t.join())));
}

/// Binds a StatsD UDP address and starts its receive threads.
fn start_statsd_udp(shared: &Arc<Shared>, addr: SocketAddr) -> Result<RunningUdp> {
    let (s, rule) = {
        let config = shared.config.read();
        (config.statsd.clone(), config.key_rule())
    };
    let sizes = (threads_for(s.receive_threads), s.receive_buffer, s.max_datagram as usize);
    let extra = crate::sources::statsd::listener_families;
    start_udp(shared, STATSD_UDP, addr, sizes, extra, |counters| {
        StatsdDatagrams::new(shared.new_shard(), counters, rule)
    })
}

/// Makes `running` hold exactly the `wanted` keys: those no longer wanted are passed to
/// `stop`, the new ones started with `start` (a failure is logged; the others still start).
fn reconcile<K: Ord + Copy + std::fmt::Debug, V>(
    running: &mut std::collections::BTreeMap<K, V>,
    wanted: &[K],
    mut start: impl FnMut(K) -> Result<V>,
    stop: impl Fn(K, V),
) {
    let gone: Vec<K> = running.keys().filter(|k| !wanted.contains(k)).copied().collect();
    for key in gone {
        if let Some(v) = running.remove(&key) {
            stop(key, v);
            tracing::info!(listener = ?key, "SIGHUP: listener stopped (open connections finish)");
        }
    }
    for key in wanted {
        if !running.contains_key(key) {
            match start(*key) {
                Ok(v) => {
                    running.insert(*key, v);
                }
                Err(e) => tracing::error!(listener = ?key, error = %format!("{e:#}"), "SIGHUP: listener not started"),
            }
        }
    }
}

/// Binds a StatsD TCP (`statsd_tcp`) or TLS (`statsd_tls`) address and starts accepting.
fn start_statsd_tcp(shared: &Arc<Shared>, kind: Kind, addr: SocketAddr) -> Result<JoinHandle<()>> {
    let s = shared.config.read().statsd.clone();
    let what = kind.as_str().replace('_', " ");
    let listener = bind_tcp(addr).with_context(|| format!("cannot bind {what} {addr}"))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, "{what} listening");
    let counters =
        shared.listeners.register_stream(kind, address.to_string(), Some(crate::sources::statsd::listener_families));
    let opts = TcpOptions {
        shard: shared.new_shard(),
        counters,
        key_rule: shared.config.read().key_rule(),
        max_line_length: s.max_line_length as usize,
        guard: shared.guard.listener(kind, address, s.tcp_max_connections),
        idle_timeout: s.tcp_idle_timeout,
        epoch: shared.epoch,
        shutdown: shared.stopping.subscribe(),
    };
    let tls = if kind.is_tls() {
        let tls = shared.statsd_tls.lock().clone();
        anyhow::ensure!(tls.is_some(), "{what} {addr} needs [statsd] tls");
        tls
    } else {
        None
    };
    Ok(tokio::spawn(crate::sources::statsd::tcp::serve(listener, opts, tls)))
}

/// SIGHUP: starts the StatsD listeners the new config names and stops those it no longer does.
fn reconcile_statsd_listeners(shared: &Arc<Shared>, new: &crate::config::StatsdConfig) {
    let mut running = shared.statsd_listeners.lock();
    let running = &mut *running;
    reconcile(&mut running.udp, &new.udp, |addr| start_statsd_udp(shared, addr), |_, r| stop_udp(r));
    let tcp: Vec<(Kind, SocketAddr)> =
        new.tcp.iter().map(|a| (STATSD_TCP, *a)).chain(new.tls_listen.iter().map(|a| (STATSD_TLS, *a))).collect();
    reconcile(&mut running.tcp, &tcp, |(kind, addr)| start_statsd_tcp(shared, kind, addr), |_, task| task.abort());
}

/// A bound UDP socket and its registered counters.
type UdpSocketCounted = (UdpReceiver, Arc<Counters>);

/// Binds one UDP address as `threads` `SO_REUSEPORT` sockets, each with its own registered
/// counters, sharing one place in the guard.
fn bind_udp(
    shared: &Shared,
    kind: Kind,
    addr: SocketAddr,
    threads: usize,
    buffer: u64,
    extra: crate::listener::ExtraFamilies,
) -> Result<(Arc<crate::guard::ListenerGuard>, Vec<UdpSocketCounted>)> {
    let what = kind.as_str().replace('_', " ");
    let group = UdpReceiver::bind_group(addr, threads, buffer as usize, Duration::from_millis(200))
        .with_context(|| format!("cannot bind {what} {addr}"))?;
    let bound = group[0].local_addr()?;
    let granted = group[0].granted_buffer;
    tracing::info!(address = %bound, sockets = threads, receive_buffer = granted, "{what} listening");
    if (granted as u64) < buffer {
        tracing::warn!(
            asked = buffer,
            granted,
            "kernel granted a smaller receive buffer (raise net.core.rmem_max or run as root)"
        );
    }
    let sockets = group
        .into_iter()
        .map(|socket| {
            let counters = Arc::new(Counters::default());
            shared.listeners.register(Listener {
                kind,
                address: bound.to_string(),
                counters: counters.clone(),
                receive_buffer: socket.granted_buffer,
                udp_port: Some(bound.port()),
                extra: Some(extra),
            });
            (socket, counters)
        })
        .collect();
    Ok((shared.guard.listener(kind, bound, 0), sockets))
}

fn threads_for(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        n => n,
    }
}

/// The syslog listeners running now and what a new one needs (SIGHUP adds and removes them).
pub struct SyslogListeners {
    sender: tokio::sync::mpsc::Sender<crate::sinks::syslog::Chunk>,
    encoding: crate::sinks::syslog::Encoding,
    stopped: tokio::sync::watch::Receiver<bool>,
    udp: std::collections::BTreeMap<SocketAddr, RunningUdp>,
    tcp: std::collections::BTreeMap<(Kind, SocketAddr), JoinHandle<()>>,
}

/// Binds a syslog UDP address and starts its receive threads.
fn start_syslog_udp(shared: &Shared, rt: &SyslogListeners, addr: SocketAddr) -> Result<RunningUdp> {
    let y = shared.config.read().syslog.clone();
    let sizes = (threads_for(y.receive_threads), y.receive_buffer, y.max_message.min(65_535) as usize);
    start_udp(shared, SYSLOG_UDP, addr, sizes, crate::sources::syslog::listener_families, |counters| {
        crate::sources::syslog::udp::SyslogDatagrams::new(rt.encoding, rt.sender.clone(), counters)
    })
}

/// Binds a syslog TCP or TLS address and starts accepting.
fn start_syslog_tcp(
    shared: &Shared,
    rt: &SyslogListeners,
    kind: Kind,
    addr: SocketAddr,
    tls: Option<crate::net::tls::SharedServerConfig>,
) -> Result<JoinHandle<()>> {
    let y = shared.config.read().syslog.clone();
    let what = kind.as_str().replace('_', " ");
    let listener = bind_tcp(addr).with_context(|| format!("cannot bind {what} {addr}"))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, "{what} listening");
    let opts = crate::sources::syslog::tcp::TcpOptions {
        kind,
        output: rt.sender.clone(),
        encoding: rt.encoding,
        counters: shared.listeners.register_stream(
            kind,
            address.to_string(),
            Some(crate::sources::syslog::listener_families),
        ),
        max_message: y.max_message as usize,
        idle_timeout: y.tcp_idle_timeout,
        guard: shared.guard.listener(kind, address, y.tcp_max_connections),
        shutdown: rt.stopped.clone(),
    };
    Ok(tokio::spawn(crate::sources::syslog::tcp::serve(listener, opts, tls)))
}

/// A syslog TLS listener's certificate, registered for SIGHUP's re-read.
fn syslog_tls(shared: &Shared, t: &crate::config::SyslogTlsListener) -> Result<crate::net::tls::SharedServerConfig> {
    let tls = Arc::new(ArcSwap::new(
        crate::net::tls::server_config(&t.tls()).with_context(|| format!("syslog tls {}", t.listen))?,
    ));
    shared.syslog_tls.lock().insert(t.listen, tls.clone());
    Ok(tls)
}

/// Opens the syslog output and starts `[syslog]`'s listeners (nothing when none is set).
/// Returns the output and the switch that stops the connections at shutdown.
fn start_syslog(
    config: &Config,
    shared: &Arc<Shared>,
) -> Result<Option<(crate::sinks::syslog::Output, tokio::sync::watch::Sender<bool>)>> {
    let y = &config.syslog;
    if y.udp.is_empty() && y.tcp.is_empty() && y.tls.is_empty() {
        return Ok(None);
    }
    let output =
        crate::sinks::syslog::Output::start(&y.output, y.raw, Duration::from_secs(10)).context("[syslog] output")?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut rt = SyslogListeners {
        sender: output.sender.clone(),
        encoding: output.encoding,
        stopped,
        udp: Default::default(),
        tcp: Default::default(),
    };
    for addr in &y.udp {
        let running = start_syslog_udp(shared, &rt, *addr)?;
        rt.udp.insert(*addr, running);
    }
    for addr in &y.tcp {
        let task = start_syslog_tcp(shared, &rt, SYSLOG_TCP, *addr, None)?;
        rt.tcp.insert((SYSLOG_TCP, *addr), task);
    }
    for t in &y.tls {
        let tls = syslog_tls(shared, t)?;
        let task = start_syslog_tcp(shared, &rt, SYSLOG_TLS, t.listen, Some(tls))?;
        rt.tcp.insert((SYSLOG_TLS, t.listen), task);
    }
    tracing::info!(output = %output.describe, "syslog output");
    *shared.syslog_reopen.lock() = Some(output.reopen_flag());
    let kind = output.describe.split(' ').next().unwrap_or_default().to_string();
    shared.metrics.add(Arc::new(crate::sinks::syslog::OutputReport { kind, counters: output.counters.clone() }));
    *shared.syslog_listeners.lock() = Some(rt);
    Ok(Some((output, stop)))
}

/// SIGHUP: starts the syslog listeners the new config names and stops those it no longer
/// does (while an output is open, i.e. syslog had listeners at start).
fn reconcile_syslog_listeners(shared: &Arc<Shared>, new: &crate::config::SyslogConfig) {
    let mut guard = shared.syslog_listeners.lock();
    let Some(rt) = guard.as_mut() else {
        if !new.udp.is_empty() || !new.tcp.is_empty() || !new.tls.is_empty() {
            tracing::warn!("SIGHUP: syslog was off at start; its listeners start at the next restart");
        }
        return;
    };
    let mut udp = std::mem::take(&mut rt.udp);
    reconcile(&mut udp, &new.udp, |addr| start_syslog_udp(shared, rt, addr), |_, r| stop_udp(r));
    rt.udp = udp;
    let tcp: Vec<(Kind, SocketAddr)> =
        new.tcp.iter().map(|a| (SYSLOG_TCP, *a)).chain(new.tls.iter().map(|t| (SYSLOG_TLS, t.listen))).collect();
    let mut tasks = std::mem::take(&mut rt.tcp);
    let start = |(kind, addr): (Kind, SocketAddr)| {
        let tls = match new.tls.iter().find(|t| kind == SYSLOG_TLS && t.listen == addr) {
            Some(t) => Some(syslog_tls(shared, t)?),
            None => None,
        };
        start_syslog_tcp(shared, rt, kind, addr, tls)
    };
    let stop = |(_, addr): (Kind, SocketAddr), task: JoinHandle<()>| {
        task.abort();
        shared.syslog_tls.lock().remove(&addr);
    };
    reconcile(&mut tasks, &tcp, start, stop);
    rt.tcp = tasks;
}

/// A flush sink's counters, reported under `name` and watched by the aggregator.
fn sink_counters(shared: &Shared, name: &'static str) -> Arc<SinkCounters> {
    let counters = Arc::new(SinkCounters::default());
    shared.sinks.lock().push(counters.clone());
    shared.metrics.add(Arc::new(crate::sinks::SinkReport { name, counters: counters.clone() }));
    counters
}

const STATSD_UDP: Kind = Kind::new(Protocol::Statsd, Transport::Udp);
const STATSD_TCP: Kind = Kind::new(Protocol::Statsd, Transport::Tcp);
const STATSD_TLS: Kind = Kind::new(Protocol::Statsd, Transport::Tls);
const SYSLOG_UDP: Kind = Kind::new(Protocol::Syslog, Transport::Udp);
const SYSLOG_TCP: Kind = Kind::new(Protocol::Syslog, Transport::Tcp);
const SYSLOG_TLS: Kind = Kind::new(Protocol::Syslog, Transport::Tls);

/// This host's name (agent id default).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn bind_tcp(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(tokio::net::TcpListener::from_std(socket.into())?)
}

/// SIGHUP: re-read the file and apply aggregation, naming, flush settings and `[limits]`
/// (listeners keep running). Listener and sink address changes need a restart for now (logged).
pub fn reload(shared: &Arc<Shared>) -> std::result::Result<(), String> {
    let Some(path) = &shared.config_path else {
        tracing::info!("SIGHUP: no config file to reload (running on defaults)");
        return Err("no config file to reload (running on defaults)".into());
    };
    let new = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: config refused; the running one stays");
            return Err(e.to_string());
        }
    };
    let old = shared.config.read().clone();
    // StatsD listeners, limits, aggregation, the Graphite address and certificates apply now;
    // the rest at the next restart.
    if new.graphite.address.is_some() != old.graphite.address.is_some()
        || new.admin.listen != old.admin.listen
        || new.http.listen != old.http.listen
        || new.syslog.output != old.syslog.output
    {
        tracing::warn!(
            "SIGHUP: changes to the syslog output, the console and HTTP addresses, and switching Graphite on or off take effect at the next restart"
        );
    }
    if let (Some(a), Some(b)) = (&old.graphite.address, &new.graphite.address) {
        if a != b {
            *shared.graphite_address.write() = b.clone();
            tracing::info!(address = %b, "SIGHUP: graphite output now goes to the new address");
        }
    }
    if let (Some(tls), Some(live)) = (&new.statsd.tls, shared.statsd_tls.lock().as_ref()) {
        // Certificates are re-read every time: renewed files keep their names.
        match crate::net::tls::server_config(tls) {
            Ok(config) => live.store(config),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "SIGHUP: statsd tls certificate refused; the old one stays")
            }
        }
    }
    if let Some(flag) = shared.syslog_reopen.lock().as_ref() {
        flag.store(true, Ordering::SeqCst);
    }
    for t in &new.syslog.tls {
        let Some(live) = shared.syslog_tls.lock().get(&t.listen).cloned() else { continue };
        match crate::net::tls::server_config(&t.tls()) {
            Ok(config) => live.store(config),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), listen = %t.listen, "SIGHUP: syslog tls certificate refused; the old one stays")
            }
        }
    }
    shared.store.lock().reconfigure(new.aggregation());
    if new.limits != old.limits {
        shared.guard.reconfigure(&new.limits);
        tracing::info!(limits = ?new.limits, "SIGHUP: new limits in force");
    }
    for shard in shared.shards.lock().iter() {
        let mut shard = shard.lock();
        let allowance = if new.statsd.max_memory == 0 { u64::MAX } else { shard.limits().memory_allowance };
        let limits = shared.store.lock().shard_limits(allowance);
        shard.set_limits(limits);
    }
    *shared.config.write() = new.clone();
    reconcile_statsd_listeners(shared, &new.statsd);
    reconcile_syslog_listeners(shared, &new.syslog);
    tracing::info!(path = %path.display(), "SIGHUP: config reloaded");
    Ok(())
}
