//! The syslog source: UDP (one message a datagram, through the shared receive loop), TCP and
//! TLS (through the shared accept loop, framed by [`floodgate_syslog::Framer`]). Every message
//! is parsed and encoded for the output in use ([`Encoding`]) into a [`Chunk`] per batch
//! (a `recvmmsg` batch, or a TCP read), which goes to the output's channel.

pub mod config;
pub mod tcp;
pub mod udp;
pub mod zone;

use std::fmt::Write as _;
use std::net::SocketAddr;

use floodgate_syslog::record::{json_prefix, rfc3339_millis, write_json_after, Received};
use floodgate_syslog::{parse, Now};

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Result;

use crate::component::Stopping;
use crate::component::{Shared, Wiring};
use crate::config::{Config, SyslogConfig};
use crate::listener::{Address, Transport};
use crate::net::tls::SharedServerConfig;
use crate::record::{Chunk, Encoding, RecordPipe};
use crate::sources::running::{bind_stream, start_datagrams, DatagramSizes, ListenerSet, Running, Spec};
use crate::sources::Source;

/// Turns messages into output records, for one listener thread or connection.
pub struct Encoder {
    encoding: Encoding,
    /// Where an RFC 3164 time without a zone is read.
    zone: jiff::tz::TimeZone,
    kind: crate::listener::Kind,
    listener: &'static str,
    transport: &'static str,
    received_at: String,
    now: Now,
    source: String,
    source_addr: Option<SocketAddr>,
    /// The sending process (Unix sockets) and its program name.
    peer: Option<(crate::sys::Credentials, String)>,
    /// Program names by pid, read once each.
    peers: crate::net::unix::Peers,
    /// The records' common start (time, source, listener), rendered when one of them changes.
    prefix: Vec<u8>,
}

impl Encoder {
    /// An encoder for a listener of kind `kind`, reading zone-less times in `zone`.
    pub fn new(encoding: Encoding, kind: crate::listener::Kind, zone: jiff::tz::TimeZone) -> Encoder {
        let mut e = Encoder {
            encoding,
            zone,
            kind,
            listener: kind.as_str(),
            transport: kind.transport_name(),
            received_at: String::new(),
            now: Now { year: 1970, month: 1, offset_minutes: 0 },
            source: String::new(),
            source_addr: None,
            peer: None,
            peers: crate::net::unix::Peers::default(),
            prefix: Vec::new(),
        };
        e.stamp();
        e
    }

    /// Takes the time: the messages encoded until the next call were received now.
    pub fn stamp(&mut self) {
        let ms = crate::clock::unix_ms();
        self.received_at = rfc3339_millis(ms);
        self.now = Now::at_unix_in(ms.div_euclid(1000), zone::offset_minutes(&self.zone, ms));
        self.render_prefix();
    }

    /// The sender of the messages that follow.
    pub fn set_source(&mut self, source: SocketAddr) {
        if self.source_addr == Some(source) {
            return;
        }
        self.source_addr = Some(source);
        self.source.clear();
        let _ = write!(self.source, "{source}");
        self.render_prefix();
    }

    /// The process that sent the messages that follow (Unix sockets: the kernel's word, not
    /// the message's).
    pub fn set_peer(&mut self, peer: crate::sys::Credentials) {
        if self.peer.as_ref().is_some_and(|(p, _)| *p == peer) {
            return;
        }
        let program = self.peers.get(peer.pid, false).program.clone();
        self.peer = Some((peer, program));
        self.render_prefix();
    }

    fn render_prefix(&mut self) {
        self.prefix.clear();
        let received = Received {
            at: &self.received_at,
            source: &self.source,
            listener: self.listener,
            transport: self.transport,
            peer: self.peer.as_ref().map(|(p, program)| floodgate_syslog::record::Peer {
                pid: p.pid,
                uid: p.uid,
                gid: p.gid,
                program,
            }),
        };
        json_prefix(&received, &mut self.prefix);
    }

    /// Adds one message to `chunk`; `note` flags something the listener noticed (a truncated
    /// datagram) as a parse error. Returns whether it parsed cleanly; empty messages are not
    /// messages (`None`).
    pub fn encode(&mut self, message: &[u8], note: Option<&str>, chunk: &mut Chunk) -> Option<bool> {
        let trimmed = trim_end(message);
        if trimmed.is_empty() {
            return None;
        }
        let mut record = parse(trimmed, self.now);
        if let Some(note) = note {
            record.parse_error = Some(match record.parse_error.take() {
                Some(e) => format!("{note}; {e}"),
                None => note.to_string(),
            });
        }
        let clean = record.parse_error.is_none();
        if crate::tap::TAP.watching() {
            let source = crate::tap::TapSource::new(self.source_addr, self.peer.as_ref().map(|(c, _)| *c));
            if let Some(watchers) = crate::tap::TAP.watchers(self.kind, source) {
                let name = record.app_name.as_deref().unwrap_or("");
                watchers.offer(name.as_bytes(), trimmed, || crate::tap::Decision::Admitted);
            }
        }
        match self.encoding {
            Encoding::Json { raw } => {
                write_json_after(&self.prefix, &record, raw.then_some(trimmed), &mut chunk.bytes);
            }
            Encoding::OctetCounted => {
                let _ = write!(Bytes(&mut chunk.bytes), "{} ", trimmed.len());
                chunk.bytes.extend_from_slice(trimmed);
            }
        }
        chunk.messages += 1;
        Some(clean)
    }
}

/// A message's trailing line ending or NUL is framing, not content.
fn trim_end(mut s: &[u8]) -> &[u8] {
    while let [rest @ .., b'\n' | b'\r' | 0] = s {
        s = rest;
    }
    s
}

/// `write!` into a byte vector.
struct Bytes<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Bytes<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Syslog's own per-listener families: messages, parsed, parse errors, and framing errors on
/// streams.
pub fn listener_families(l: &crate::listener::Listener, out: &mut crate::metrics::Families) {
    use crate::listener::row;
    use crate::metrics::Describe;
    use std::sync::atomic::Ordering::Relaxed;
    let c = &l.counters;
    let (messages, bad) = (c.lines.load(Relaxed), c.bad_lines.load(Relaxed));
    let rows = [
        (
            Describe::counter("floodgate_syslog_messages_total", "Syslog messages received and handed to the output.")
                .status(row("messages")),
            messages,
        ),
        (
            Describe::counter("floodgate_syslog_parsed_total", "Syslog messages parsed cleanly."),
            messages.saturating_sub(bad),
        ),
        (
            Describe::counter(
                "floodgate_syslog_parse_errors_total",
                "Syslog messages kept whole with parse_error set.",
            )
            .status(row("bad")),
            bad,
        ),
    ];
    for (describe, v) in rows {
        out.add(describe, &l.labels(), v);
    }
    if l.kind.is_stream() {
        l.dropped(out, "framing", c.framing_errors.load(Relaxed));
    }
}

/// The syslog listeners and the output they write to.
struct SyslogSource {
    shared: Arc<Shared>,
    /// `None`: syslog had no listeners at start, so no output is open.
    pipe: Option<RecordPipe>,
    listeners: ListenerSet,
    /// The TLS listeners' certificates by address (re-read on SIGHUP).
    tls: BTreeMap<std::net::SocketAddr, SharedServerConfig>,
    /// Turns true at shutdown: connections hand on what they hold, then end.
    stopping: tokio::sync::watch::Sender<bool>,
}

/// `[syslog]`: its listeners, writing to the output the syslog sink opened.
pub fn build(shared: &Arc<Shared>, config: &Config, wiring: &mut Wiring) -> Result<Option<Box<dyn Source>>> {
    // Taken, not cloned: once the listeners end, nothing else holds the output open.
    let pipe = wiring.records.take();
    let mut source = SyslogSource {
        shared: shared.clone(),
        pipe,
        listeners: ListenerSet::default(),
        tls: BTreeMap::new(),
        stopping: tokio::sync::watch::channel(false).0,
    };
    if source.pipe.is_some() {
        let mut listeners = std::mem::take(&mut source.listeners);
        listeners.start_all(&config.syslog.listening().specs(), |spec| source.start(spec, &config.syslog))?;
        source.listeners = listeners;
    }
    Ok(Some(Box::new(source)))
}

impl SyslogSource {
    /// Binds one listener and starts it.
    fn start(&mut self, spec: &Spec, y: &SyslogConfig) -> Result<Running> {
        let Some(pipe) = self.pipe.clone() else { anyhow::bail!("syslog output not open") };
        let shared = &self.shared;
        let (kind, address) = spec;
        let zone = zone::parse(&y.timezone).map_err(|e| anyhow::anyhow!("syslog.timezone: {e}"))?;
        if matches!(kind.transport, Transport::Udp | Transport::Unix) {
            let unix = kind.transport == Transport::Unix;
            let sizes = DatagramSizes {
                threads: if unix { 1 } else { y.receive_threads },
                buffer: y.receive_buffer,
                max_datagram: y.max_message.min(65_535) as usize,
                spread: y.receive_spread,
            };
            let running = start_datagrams(shared, spec, sizes, listener_families, |counters| {
                udp::SyslogDatagrams::new(*kind, pipe.encoding, pipe.sender.clone(), counters, zone.clone())
            })?;
            if let Address::Path(path) = address {
                crate::net::unix::set_access(path, y.listening().access)
                    .map_err(|e| anyhow::anyhow!("syslog unix socket {}: {e:#}", path.display()))?;
            }
            return Ok(running);
        }
        let stream_options = |counters, guard| tcp::TcpOptions {
            zone: zone.clone(),
            kind: *kind,
            output: pipe.sender.clone(),
            encoding: pipe.encoding,
            counters,
            max_message: y.max_message as usize,
            idle_timeout: y.tcp_idle_timeout,
            guard,
            shutdown: self.stopping.subscribe(),
            proxy: y.listening().proxy(),
        };
        if let (Transport::UnixStream, Address::Path(path)) = (kind.transport, address) {
            let listener = crate::sources::running::bind_unix_stream(*kind, path, y.listening().access)?;
            let address = path.display().to_string();
            let counters = shared.listeners.register_stream(*kind, address.clone(), Some(listener_families));
            let opts = stream_options(counters, shared.guard.listener(*kind, &address, y.tcp_max_connections));
            return Ok(Running::Task(tokio::spawn(tcp::serve_unix(listener, opts))));
        }
        let Address::Inet(addr) = address else { anyhow::bail!("{kind} does not listen on a socket file") };
        let tls = match y.tls.iter().find(|t| kind.is_tls() && t.listen == *addr) {
            Some(t) => {
                let config = crate::net::tls::server_config(&t.tls())
                    .map_err(|e| anyhow::anyhow!("syslog tls {}: {e:#}", t.listen))?;
                let live = Arc::new(arc_swap::ArcSwap::new(config));
                self.tls.insert(t.listen, live.clone());
                Some(live)
            }
            None => None,
        };
        let listener = bind_stream(*kind, *addr)?;
        let bound = listener.local_addr()?;
        let counters = shared.listeners.register_stream(*kind, bound.to_string(), Some(listener_families));
        let opts = stream_options(counters, shared.guard.listener(*kind, bound, y.tcp_max_connections));
        Ok(Running::Task(tokio::spawn(tcp::serve(listener, opts, tls))))
    }
}

impl Source for SyslogSource {
    fn name(&self) -> &'static str {
        "syslog"
    }

    fn reload(&mut self, _shared: &Arc<Shared>, config: &Config) {
        let y = &config.syslog;
        if self.pipe.is_none() {
            if y.has_listeners() {
                tracing::warn!("SIGHUP: syslog was off at start; its listeners start at the next restart");
            }
            return;
        }
        for t in &y.tls {
            let Some(live) = self.tls.get(&t.listen) else { continue };
            match crate::net::tls::server_config(&t.tls()) {
                Ok(c) => live.store(c),
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), listen = %t.listen, "SIGHUP: syslog tls certificate refused; the old one stays")
                }
            }
        }
        let mut listeners = std::mem::take(&mut self.listeners);
        let mut removed = Vec::new();
        let specs = y.listening().specs();
        listeners.reconcile(&specs, |spec| self.start(spec, y), |(_, address)| removed.push(address.clone()));
        crate::sources::running::reapply_access(&specs, y.listening().access);
        for address in removed {
            if let Address::Inet(a) = address {
                self.tls.remove(&a);
            }
        }
        self.listeners = listeners;
    }

    fn stop(self: Box<Self>) -> Stopping {
        Box::pin(async move {
            let SyslogSource { mut listeners, stopping, pipe, .. } = *self;
            // Connections read what their senders already sent and hand it on; the output
            // empties once they and the receive threads have ended (they hold its channel).
            listeners.stop_accepting();
            let _ = stopping.send(true);
            drop(pipe);
            listeners.stop_all().await;
        })
    }
}
