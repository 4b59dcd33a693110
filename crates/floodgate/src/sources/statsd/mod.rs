//! The StatsD source: UDP receive threads (one `SO_REUSEPORT` socket and one shard each),
//! Unix datagram sockets, and TCP and TLS listeners, all parsing into [`Shard`]s that the
//! flusher merges.

pub mod config;
pub mod decode;
pub mod tcp;
pub mod udp;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use floodgate_statsd::PacketCounts;

use crate::component::Stopping;
use crate::component::{Shared, Wiring};
use crate::config::{Config, StatsdConfig};
use crate::listener::{Address, Kind, Protocol, Transport};
use crate::net::tls::SharedServerConfig;
use crate::sources::running::{
    bind_stream, bind_unix_stream, start_datagrams, DatagramSizes, ListenerSet, Running, Spec,
};
use crate::sources::Source;

use crate::listener::Counters;
use decode::{Decoder, OriginTags};

pub use crate::aggregation::SharedShard;

/// Publishes a batch's line counts.
pub fn publish(counters: &Counters, total: PacketCounts) {
    Counters::add(&counters.lines, total.lines);
    Counters::add(&counters.bad_lines, total.bad);
    Counters::add(&counters.key_too_long, total.too_long);
    Counters::add(&counters.origin_other, total.origin_other);
}

/// The part of `data` up to and including its last `\n` (nothing if there is none).
pub fn complete_lines(data: &[u8]) -> &[u8] {
    match data.iter().rposition(|b| *b == b'\n') {
        Some(i) => &data[..=i],
        None => &[],
    }
}

/// StatsD's own per-listener families: lines, bad lines, and keys over `max_key_length`.
pub fn listener_families(l: &crate::listener::Listener, out: &mut crate::metrics::Families) {
    use crate::listener::row;
    use crate::metrics::Describe;
    use std::sync::atomic::Ordering::Relaxed;
    let c = &l.counters;
    let lines =
        Describe::counter("floodgate_received_lines_total", "Non-empty lines received.").status(row("messages"));
    let bad =
        Describe::counter("floodgate_bad_lines_total", "Lines or values that could not be parsed.").status(row("bad"));
    out.add(lines, &l.labels(), c.lines.load(Relaxed));
    out.add(bad, &l.labels(), c.bad_lines.load(Relaxed));
    l.dropped(out, "key_too_long", c.key_too_long.load(Relaxed));
    let other = Describe::counter(
        "floodgate_statsd_origin_other_total",
        "Datagrams (Unix sockets) or lines (a client's |c: container id) past origin_max, tagged other.",
    );
    out.add(other, &l.labels(), c.origin_other.load(Relaxed));
}

/// The StatsD listeners and what they share.
struct StatsdSource {
    shared: Arc<Shared>,
    listeners: ListenerSet,
    /// The TLS listeners' certificate (re-read on SIGHUP).
    tls: Option<SharedServerConfig>,
    /// Turns true at shutdown: connections read what their senders already sent, then end.
    stopping: tokio::sync::watch::Sender<bool>,
    /// The record output (events and service checks), when open.
    records: Option<crate::record::RecordPipe>,
}

/// `[statsd]`: every listener it names (none is fine: SIGHUP may add some).
pub fn build(shared: &Arc<Shared>, config: &Config, wiring: &mut Wiring) -> Result<Option<Box<dyn Source>>> {
    let tls = match &config.statsd.tls {
        Some(tls) => Some(Arc::new(arc_swap::ArcSwap::new(crate::net::tls::server_config(tls).context("statsd tls")?))),
        None => None,
    };
    let mut source = StatsdSource {
        shared: shared.clone(),
        listeners: ListenerSet::default(),
        tls,
        stopping: tokio::sync::watch::channel(false).0,
        // Cloned: the syslog source takes the wiring's (and the output stays open while
        // either holds it).
        records: wiring.records.clone(),
    };
    let mut listeners = std::mem::take(&mut source.listeners);
    listeners.start_all(&config.statsd.listening().specs(), |spec| source.start(spec))?;
    source.listeners = listeners;
    Ok(Some(Box::new(source)))
}

impl StatsdSource {
    /// What each connection of a stream listener (TCP, TLS, Unix stream) at `address` needs.
    fn stream_options(
        &self,
        s: &StatsdConfig,
        kind: Kind,
        key_rule: floodgate_statsd::KeyRule,
        counters: Arc<Counters>,
        address: &dyn std::fmt::Display,
    ) -> tcp::TcpOptions {
        let shared = &self.shared;
        tcp::TcpOptions {
            shard: shared.aggregation.new_shard(),
            counters,
            key_rule,
            kind,
            records: self.records.clone(),
            origin: OriginTags::new(&s.origin_tags, s.origin_max),
            max_line_length: s.max_line_length as usize,
            guard: shared.guard.listener(kind, address, s.tcp_max_connections),
            idle_timeout: s.tcp_idle_timeout,
            budgets: shared.aggregation.budgets.clone(),
            epoch: shared.epoch,
            shutdown: self.stopping.subscribe(),
            proxy: s.listening().proxy(),
        }
    }

    /// Binds one listener and starts it.
    fn start(&self, spec: &Spec) -> Result<Running> {
        let shared = &self.shared;
        let (s, rule) = {
            let config = shared.config.read();
            (config.statsd.clone(), config.key_rule())
        };
        let (kind, address) = spec;
        match (kind.transport, address) {
            (Transport::Udp | Transport::Unix, _) => {
                let sizes = DatagramSizes {
                    threads: if kind.transport == Transport::Unix { 1 } else { s.receive_threads },
                    buffer: s.receive_buffer,
                    max_datagram: s.max_datagram as usize,
                    spread: s.receive_spread,
                };
                let tags = OriginTags::new(&s.origin_tags, s.origin_max);
                if kind.transport == Transport::Unix {
                    warn_if_origins_hidden(&s.origin_tags, address);
                }
                let running = start_datagrams(shared, spec, sizes, listener_families, |counters| {
                    let origin = tags.as_ref().and_then(|t| t.for_connection(counters.clone()));
                    let decoder = Decoder::new(*kind, rule, origin, self.records.as_ref());
                    udp::StatsdDatagrams::new(shared.aggregation.new_shard(), counters, decoder)
                })?;
                if let Address::Path(path) = address {
                    crate::net::unix::set_access(path, s.listening().access)
                        .with_context(|| format!("statsd unix socket {}", path.display()))?;
                }
                Ok(running)
            }
            (Transport::UnixStream, Address::Path(path)) => {
                warn_if_origins_hidden(&s.origin_tags, address);
                let listener = bind_unix_stream(*kind, path, s.listening().access)?;
                let address = path.display().to_string();
                let counters = shared.listeners.register_stream(*kind, address.clone(), Some(listener_families));
                let opts = self.stream_options(&s, *kind, rule, counters, &address);
                Ok(Running::Task(tokio::spawn(tcp::serve_unix(listener, opts))))
            }
            (Transport::Tcp | Transport::Tls, Address::Inet(addr)) => {
                let tls = match kind.transport {
                    Transport::Tls => Some(self.tls.clone().context("statsd tls listeners need [statsd] tls")?),
                    _ => None,
                };
                let listener = bind_stream(*kind, *addr)?;
                let address = listener.local_addr()?;
                let counters = shared.listeners.register_stream(*kind, address.to_string(), Some(listener_families));
                let opts = self.stream_options(&s, *kind, rule, counters, &address);
                Ok(Running::Task(tokio::spawn(tcp::serve(listener, opts, tls))))
            }
            (_, Address::Path(_)) => anyhow::bail!("{kind} does not listen on a socket file"),
            (Transport::UnixStream, Address::Inet(_)) => anyhow::bail!("{kind} listens on a socket file"),
        }
    }
}

impl Source for StatsdSource {
    fn name(&self) -> &'static str {
        "statsd"
    }

    fn reload(&mut self, _shared: &Arc<Shared>, config: &Config) {
        if let (Some(tls), Some(live)) = (&config.statsd.tls, &self.tls) {
            // Certificates are re-read every time: renewed files keep their names.
            match crate::net::tls::server_config(tls) {
                Ok(c) => live.store(c),
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "SIGHUP: statsd tls certificate refused; the old one stays")
                }
            }
        }
        let mut listeners = std::mem::take(&mut self.listeners);
        let specs = config.statsd.listening().specs();
        listeners.reconcile(&specs, |spec| self.start(spec), |_| {});
        self.listeners = listeners;
        crate::sources::running::reapply_access(&specs, config.statsd.listening().access);
    }

    fn stop(self: Box<Self>) -> Stopping {
        Box::pin(async move {
            let StatsdSource { shared, mut listeners, stopping, .. } = *self;
            // Open connections take what their senders already sent, then end: all of it is in
            // the final flush.
            listeners.stop_accepting();
            let _ = stopping.send(true);
            let until = Instant::now() + crate::net::stream::DRAIN_LIMIT + Duration::from_secs(1);
            while shared.listeners.open_connections(Protocol::Statsd) > 0 && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            listeners.stop_all().await;
        })
    }
}

/// Origin tags that read the sender's /proc/PID (`program`, `container_id`) cannot see senders
/// running as other users when /proc hides them (the packaged unit's `ProtectProc=invisible`):
/// said once per listener at start, with the fix, rather than left to tags that come out empty.
fn warn_if_origins_hidden(tags: &[config::OriginTag], address: &Address) {
    use config::OriginTag;
    if tags.iter().any(|t| matches!(t, OriginTag::Program | OriginTag::ContainerId))
        && crate::net::unix::proc_hides_other_users()
    {
        tracing::warn!(
            %address,
            "origin tags `program` and `container_id` cannot see senders running as other users: /proc hides \
             their processes (systemd ProtectProc=invisible; add ProtectProc=default in a drop-in)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn every_listener_the_section_names_is_wanted() {
        let mut s = StatsdConfig { udp: vec!["127.0.0.1:1".parse().unwrap()], ..StatsdConfig::default() };
        s.tcp = vec!["127.0.0.1:2".parse().unwrap()];
        s.tls_listen = vec!["127.0.0.1:3".parse().unwrap()];
        s.unix = vec!["/run/x.sock".into()];
        s.unix_stream = vec!["/run/y.sock".into()];
        let kinds: Vec<&str> = s.listening().specs().iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(kinds, ["statsd_udp", "statsd_tcp", "statsd_tls", "statsd_unix", "statsd_unix_stream"]);
    }

    /// The source end to end in-process: lines over UDP, TCP and a Unix socket reach the
    /// shards, and stopping drains them (nothing read is left behind).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lines_over_every_transport_reach_the_shards_and_stop_drains() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let mut config = Config::default();
        config.statsd.udp = vec!["127.0.0.1:0".parse().unwrap()];
        config.statsd.tcp = vec!["127.0.0.1:0".parse().unwrap()];
        config.statsd.unix = vec![path.clone()];
        let stream_path = dir.path().join("stream.sock");
        config.statsd.unix_stream = vec![stream_path.clone()];
        config.statsd.receive_threads = 1;
        config.limits.udp_per_source = 0;
        let shared = Arc::new(Shared::new(config.clone(), None));
        let source = build(&shared, &config, &mut Wiring::default()).unwrap().unwrap();
        let address = |kind: &str| {
            let by = shared.listeners.by_listener(|_| 0);
            by.keys().find(|(k, _)| k == kind).map(|(_, a)| a.clone()).unwrap()
        };
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.send_to(b"t.udp:1|c", address("statsd_udp")).unwrap();
        let mut tcp = std::net::TcpStream::connect(address("statsd_tcp")).unwrap();
        tcp.write_all(b"t.tcp:2|c\n").unwrap();
        let unix = std::os::unix::net::UnixDatagram::unbound().unwrap();
        unix.send_to(b"t.unix:3|c", &path).unwrap();
        let mut stream = std::os::unix::net::UnixStream::connect(&stream_path).unwrap();
        stream.write_all(b"t.stream:4|c\n").unwrap();
        let lines = || shared.listeners.by_listener(|c| c.lines.load(std::sync::atomic::Ordering::Relaxed));
        let deadline = Instant::now() + Duration::from_secs(10);
        while lines().values().sum::<u64>() < 4 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop((tcp, stream));
        source.stop().await;
        assert!(!path.exists() && !stream_path.exists(), "the socket files go with their listeners");
        let by = lines();
        for kind in ["statsd_udp", "statsd_tcp", "statsd_unix", "statsd_unix_stream"] {
            let n: u64 = by.iter().filter(|((k, _), _)| k == kind).map(|(_, v)| v).sum();
            assert_eq!(n, 1, "{kind}: {by:?}");
        }
        let mut store = shared.aggregation.store.lock();
        shared.aggregation.merge_shards(&mut store);
        let mut text = String::new();
        floodgate_statsd::prometheus::render(&store, &mut text);
        for name in ["t_udp", "t_tcp", "t_unix", "t_stream"] {
            assert!(text.lines().any(|l| l.starts_with(name)), "{name} not in the store:\n{text}");
        }
    }
}
