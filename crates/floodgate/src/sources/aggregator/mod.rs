//! The aggregator side of the forward hop (`docs/forward-protocol.md`): agents connect
//! (through the guard, then TLS), say hello, and send batches that are merged into this
//! host's store — the same store its own StatsD listeners feed, so an aggregator is also the
//! agent of its own host.
//!
//! Exactly-once: per `(agent_id, session)` the aggregator keeps the highest batch merged (in
//! memory) and the highest handled (also in `state_dir/sessions.json`). A batch at or below the
//! merged mark is a retry and is skipped. At each flush the flusher takes the merged marks
//! under the store lock (so they describe exactly what the flush holds); once the flush is
//! delivered the marks become handled, are written to disk, and only then acknowledged.

pub mod config;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use floodgate_forward::batch::{Applied, BatchView};
use floodgate_forward::frame::{self, Decoder, Incoming, HELLO_MAX_FRAME};
use floodgate_forward::proto::{self, frame::Kind, Frame};
use floodgate_statsd::valid::Invalid;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::component::{Shared, Wiring};
use crate::guard::ListenerGuard;
use crate::listener::Counters;
use crate::net::stream::{Connection, Peer};
use crate::net::tls::SharedServerConfig;

/// An agent process: who it is and the random number it chose at start.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionId {
    /// With mutual TLS, the name on the agent's certificate: an agent can only ever touch
    /// sessions under its own certificate's name, whatever `agent_id` it claims.
    pub identity: Option<String>,
    /// The name the agent gave in `Hello`.
    pub agent_id: String,
    /// Its random session number.
    pub session: u64,
}

#[derive(Debug, Default)]
struct Session {
    merged: u64,
    handled: u64,
    /// Last Hello or acknowledgement, Unix seconds (sessions silent for [`FORGET_AFTER`] are
    /// dropped from the state file: each agent restart starts a new one).
    last_seen: u64,
    /// The connection serving it now, for acknowledgements.
    conn: Option<(u64, mpsc::UnboundedSender<u64>)>,
}

/// Figures of the aggregator port.
#[derive(Debug, Default)]
pub struct AggregatorCounters {
    /// Batches merged.
    pub batches: AtomicU64,
    /// Series merged.
    pub series: AtomicU64,
    /// Series refused by `max_series`.
    pub refused_series: AtomicU64,
    /// Series refused by the validity rule, by [`Invalid`] reason.
    pub invalid_series: [AtomicU64; Invalid::ALL.len()],
    /// Batches that were not well-formed messages (refused whole; the agent drops one after a
    /// few tries).
    pub refused_batches: AtomicU64,
    /// Hellos refused: a new session past `max_agents`, or an `agent_id` too long.
    pub refused_sessions: AtomicU64,
    /// Retried batches skipped (already merged).
    pub duplicates: AtomicU64,
    /// Connections closed for a protocol error (bad frame, bad batch, wrong version).
    pub protocol_errors: AtomicU64,
    /// Connections closed because a frame took too long to arrive, or nothing came at all.
    pub timeouts: AtomicU64,
    /// Hellos and batches turned away while a sink's buffer was full (the agents hold them
    /// and send them again later).
    pub busy: AtomicU64,
    /// Agents connected now.
    pub connected: AtomicU64,
}

/// The aggregator's limits (`[aggregator]`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest frame after `Hello`.
    pub max_frame: usize,
    /// Sessions remembered at most.
    pub max_agents: usize,
    /// A frame started must be complete within this.
    pub read_timeout: Duration,
    /// A connection with no frame for this long is closed (agents send one every interval).
    pub idle_timeout: Duration,
}

/// The aggregator's sessions and their marks.
#[derive(Debug)]
pub struct Aggregator {
    sessions: Mutex<HashMap<SessionId, Session>>,
    /// Held (shared) while a batch is merged, taken (exclusive) by the flusher: a flush holds
    /// every batch whole or not at all, with the marks that say so.
    pub merge_gate: RwLock<()>,
    /// One state-file writer at a time (the file is written outside the sessions lock).
    state_writer: Mutex<()>,
    state_file: PathBuf,
    /// The state directory is this aggregator's while it runs.
    _lock: std::fs::File,
    next_conn: AtomicU64,
    /// Figures.
    pub counters: AggregatorCounters,
    limits: Limits,
    id: String,
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    sessions: Vec<SavedSession>,
}

#[derive(Serialize, Deserialize)]
struct SavedSession {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    identity: Option<String>,
    agent_id: String,
    session: u64,
    handled: u64,
    #[serde(default)]
    last_seen: u64,
}

/// Longest `agent_id` accepted.
pub const MAX_AGENT_ID: usize = 255;

/// Reads per batch chunk: the store lock is held per chunk of about this many encoded bytes.
const CHUNK_BYTES: usize = 256 << 10;

/// A session silent this long may make room for a new one when `max_agents` is reached.
const EVICTABLE_AFTER: u64 = 3600;

/// A session neither connected nor heard from for this long is forgotten.
const FORGET_AFTER: u64 = 7 * 24 * 3600;

fn unix_secs() -> u64 {
    crate::clock::unix_ms().max(0) as u64 / 1000
}

impl Aggregator {
    /// The aggregator, with the handled marks saved in `state_dir` by an earlier run.
    pub fn load(state_dir: &std::path::Path, id: String, limits: Limits) -> anyhow::Result<Arc<Aggregator>> {
        use anyhow::Context;
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("cannot create aggregator state_dir {}", state_dir.display()))?;
        let lock = crate::files::lock_dir(state_dir, "aggregator").context("aggregator state_dir")?;
        let state_file = state_dir.join("sessions.json");
        let mut sessions = HashMap::new();
        match crate::files::read_all(&state_file) {
            Ok(bytes) => {
                let saved: StateFile = serde_json::from_slice(&bytes)
                    .with_context(|| format!("{} is not an aggregator state file", state_file.display()))?;
                for s in saved.sessions {
                    let session = Session { merged: s.handled, handled: s.handled, last_seen: s.last_seen, conn: None };
                    let id = SessionId { identity: s.identity, agent_id: s.agent_id, session: s.session };
                    sessions.insert(id, session);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", state_file.display())),
        }
        tracing::info!(sessions = sessions.len(), file = %state_file.display(), "aggregator state loaded");
        Ok(Arc::new(Aggregator {
            sessions: Mutex::new(sessions),
            merge_gate: RwLock::new(()),
            state_writer: Mutex::new(()),
            state_file,
            _lock: lock,
            next_conn: AtomicU64::new(1),
            counters: AggregatorCounters::default(),
            limits,
            id,
        }))
    }

    /// The merged marks: call with the merge gate held exclusively, just before the flush.
    pub fn merged_marks(&self) -> Vec<(SessionId, u64)> {
        self.sessions
            .lock()
            .iter()
            .filter(|(_, s)| s.merged > s.handled)
            .map(|(id, s)| (id.clone(), s.merged))
            .collect()
    }

    /// A flush holding `marks` was delivered: record them, save, then acknowledge. The file is
    /// written outside the sessions lock, so merging never waits for the disk.
    pub fn handled(&self, marks: Vec<(SessionId, u64)>) {
        if marks.is_empty() {
            return;
        }
        let _writer = self.state_writer.lock();
        let (saved, acks) = {
            let mut sessions = self.sessions.lock();
            let now = unix_secs();
            for (id, mark) in &marks {
                if let Some(s) = sessions.get_mut(id) {
                    s.handled = s.handled.max(*mark);
                    s.last_seen = now;
                }
            }
            sessions.retain(|_, s| s.conn.is_some() || now.saturating_sub(s.last_seen) < FORGET_AFTER);
            let saved = StateFile {
                sessions: sessions
                    .iter()
                    .map(|(id, s)| SavedSession {
                        identity: id.identity.clone(),
                        agent_id: id.agent_id.clone(),
                        session: id.session,
                        handled: s.handled,
                        last_seen: s.last_seen,
                    })
                    .collect(),
            };
            let acks: Vec<(mpsc::UnboundedSender<u64>, u64)> = marks
                .iter()
                .filter_map(|(id, _)| match sessions.get(id) {
                    Some(Session { handled, conn: Some((_, tx)), .. }) => Some((tx.clone(), *handled)),
                    _ => None,
                })
                .collect();
            (saved, acks)
        };
        if let Err(e) = write_atomically(&self.state_file, &saved) {
            // Without the record a restart could count these batches twice: do not ack them.
            tracing::error!(file = %self.state_file.display(), error = %e, "cannot save aggregator state; not acknowledging");
            return;
        }
        for (tx, seq) in acks {
            let _ = tx.send(seq);
        }
    }

    /// Registers a connection's session (a `Hello`): its handled mark, or why it is refused.
    fn open_session(
        &self,
        id: &SessionId,
        conn_id: u64,
        acks: mpsc::UnboundedSender<u64>,
    ) -> Result<u64, &'static str> {
        if id.agent_id.len() > MAX_AGENT_ID {
            return Err("agent_id longer than 255 bytes");
        }
        let mut sessions = self.sessions.lock();
        let now = unix_secs();
        if !sessions.contains_key(id) && sessions.len() >= self.limits.max_agents {
            // Room from a session long silent, if any; never from one that may still resend.
            let evictable = sessions
                .iter()
                .filter(|(_, s)| s.conn.is_none() && now.saturating_sub(s.last_seen) >= EVICTABLE_AFTER)
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(id, _)| id.clone());
            match evictable {
                Some(old) => {
                    sessions.remove(&old);
                }
                None => return Err("too many agent sessions (max_agents)"),
            }
        }
        let s = sessions.entry(id.clone()).or_default();
        s.conn = Some((conn_id, acks));
        s.last_seen = now;
        Ok(s.handled)
    }
}

fn write_atomically(path: &std::path::Path, state: &StateFile) -> std::io::Result<()> {
    crate::files::write_atomically(path, &serde_json::to_vec(state).map_err(std::io::Error::other)?)
}

/// A `Hello` must arrive within this (or `read_timeout`, if shorter).
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts agents until the task is aborted.
pub async fn serve(
    listener: TcpListener,
    guard: Arc<ListenerGuard>,
    counters: Arc<Counters>,
    tls: Option<SharedServerConfig>,
    aggregator: Arc<Aggregator>,
    target: MergeTarget,
) {
    let c = counters.clone();
    crate::net::stream::serve(listener, guard, counters, tls, None, "aggregator", move |conn, peer| {
        let (aggregator, target, counters) = (aggregator.clone(), target.clone(), c.clone());
        async move {
            aggregator.counters.connected.fetch_add(1, Relaxed);
            if let Err(e) = agent(conn, &peer, &aggregator, &target, &counters).await {
                tracing::warn!(peer = %peer, error = %e, "agent connection closed");
            }
            aggregator.counters.connected.fetch_sub(1, Relaxed);
            Ok(())
        }
    })
    .await
}

async fn send(stream: &mut (impl AsyncWrite + Unpin), kind: Kind) -> std::io::Result<()> {
    let mut buf = BytesMut::new();
    frame::encode(&Frame { kind: Some(kind) }, &mut buf);
    stream.write_all(&buf).await?;
    stream.flush().await
}

/// Why a connection ends early.
enum End {
    /// The connection failed or timed out: nothing to tell the peer.
    Io(std::io::Error),
    /// The agent broke the protocol: told in an `Error` frame before closing.
    Refused {
        message: String,
        /// The batch that could not be read, if one.
        refused_seq: u64,
    },
}

impl End {
    fn refused(message: impl Into<String>) -> End {
        End::Refused { message: message.into(), refused_seq: 0 }
    }
}

/// Reads the next frame body: within `deadline` of its first byte (`started` carries that
/// moment across calls, so an acknowledgement sent meanwhile does not restart the clock),
/// within `idle` while nothing of it has arrived.
async fn next_body<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut R,
    decoder: &mut Decoder,
    started: &mut Option<tokio::time::Instant>,
    counters: &Counters,
    idle: Duration,
    deadline: Duration,
) -> std::io::Result<Option<bytes::Bytes>> {
    let timed_out = |what: &str| std::io::Error::new(std::io::ErrorKind::TimedOut, what.to_string());
    if decoder.pending() == 0 {
        *started = None;
    } else {
        started.get_or_insert_with(tokio::time::Instant::now);
    }
    loop {
        if let Some(body) =
            decoder.decode_body().map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?
        {
            // The next frame, if it has begun, began now.
            *started = (decoder.pending() > 0).then(tokio::time::Instant::now);
            return Ok(Some(body));
        }
        let until = match *started {
            Some(t) => t + deadline,
            None => tokio::time::Instant::now() + idle,
        };
        let n = tokio::time::timeout_at(until, reader.read_buf(decoder.buffer()))
            .await
            .map_err(|_| timed_out(if started.is_some() { "a frame took too long to arrive" } else { "idle" }))??;
        Counters::add(&counters.bytes, n as u64);
        if n == 0 {
            return match decoder.pending() {
                0 => Ok(None),
                _ => Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed in the middle of a frame")),
            };
        }
        started.get_or_insert_with(tokio::time::Instant::now);
    }
}

/// Serves one agent connection to its end.
async fn agent(
    stream: Connection,
    peer: &Peer,
    aggregator: &Aggregator,
    target: &MergeTarget,
    counters: &Counters,
) -> std::io::Result<()> {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let limits = aggregator.limits;
    // Before a valid Hello a peer is unknown: it can make us hold 4 KiB, for 10 s at most.
    let mut decoder = Decoder::new(HELLO_MAX_FRAME);
    let c = &aggregator.counters;
    let fail = |e: std::io::Error| {
        match e.kind() {
            std::io::ErrorKind::TimedOut => c.timeouts.fetch_add(1, Relaxed),
            std::io::ErrorKind::InvalidData => c.protocol_errors.fetch_add(1, Relaxed),
            _ => 0,
        };
        e
    };
    let hello_wait = HELLO_TIMEOUT.min(limits.read_timeout);
    let mut frame_started = None;
    let first = match next_body(&mut reader, &mut decoder, &mut frame_started, counters, hello_wait, hello_wait).await {
        Ok(Some(body)) => frame::incoming(body).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Ok(None) => return Ok(()),
        Err(e) => Err(e),
    };
    let hello = match first {
        Ok(Incoming::Message(Frame { kind: Some(Kind::Hello(hello)) })) => hello,
        Ok(_) => {
            let _ = send(&mut writer, error("expected Hello")).await;
            return Err(fail(std::io::Error::new(std::io::ErrorKind::InvalidData, "first frame was not Hello")));
        }
        Err(e) => {
            let e = fail(e);
            if e.kind() == std::io::ErrorKind::InvalidData {
                let _ = send(&mut writer, error(&e.to_string())).await;
            }
            return Err(e);
        }
    };
    if hello.version != floodgate_forward::VERSION {
        let message =
            format!("protocol version {} not spoken here (this is {})", hello.version, floodgate_forward::VERSION);
        let _ = send(&mut writer, error(&message)).await;
        return Err(fail(std::io::Error::new(std::io::ErrorKind::InvalidData, message)));
    }
    if target.sinks_full.any() {
        c.busy.fetch_add(1, Relaxed);
        let _ = send(&mut writer, error(BUSY)).await;
        return Ok(());
    }
    let id = SessionId { identity: peer.identity.clone(), agent_id: hello.agent_id.clone(), session: hello.session };
    let conn_id = aggregator.next_conn.fetch_add(1, Relaxed);
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
    let handled = match aggregator.open_session(&id, conn_id, ack_tx) {
        Ok(handled) => handled,
        Err(why) => {
            c.refused_sessions.fetch_add(1, Relaxed);
            let _ = send(&mut writer, error(why)).await;
            return Err(std::io::Error::other(why));
        }
    };
    decoder.set_max(limits.max_frame);
    tracing::info!(agent = %hello.agent_id, identity = ?peer.identity, session = hello.session, acked_through = handled, "agent connected");
    send(
        &mut writer,
        Kind::Welcome(proto::Welcome {
            version: floodgate_forward::VERSION,
            aggregator_id: aggregator.id.clone(),
            acked_through: handled,
        }),
    )
    .await?;
    let result: Result<(), End> = async {
        loop {
            tokio::select! {
                body = next_body(&mut reader, &mut decoder, &mut frame_started, counters, limits.idle_timeout, limits.read_timeout) => {
                    let body = match body.map_err(fail) {
                        Ok(Some(body)) => body,
                        Ok(None) => return Ok(()),
                        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => return Err(End::refused(e.to_string())),
                        Err(e) => return Err(End::Io(e)),
                    };
                    match frame::incoming(body) {
                        Ok(Incoming::Batch(batch)) => {
                            merge(aggregator, target, &id, &batch)?;
                            counters.packets.fetch_add(1, Relaxed);
                        }
                        Ok(Incoming::Message(_)) => {
                            c.protocol_errors.fetch_add(1, Relaxed);
                            return Err(End::refused("expected Batch"));
                        }
                        Err(e) => {
                            c.protocol_errors.fetch_add(1, Relaxed);
                            return Err(End::refused(e.to_string()));
                        }
                    }
                }
                seq = ack_rx.recv() => match seq {
                    Some(seq) => send(&mut writer, Kind::Ack(proto::Ack { seq })).await.map_err(End::Io)?,
                    None => return Ok(()),
                },
            }
        }
    }
    .await;
    if let Some(s) = aggregator.sessions.lock().get_mut(&id) {
        if s.conn.as_ref().is_some_and(|(c, _)| *c == conn_id) {
            s.conn = None;
        }
    }
    match result {
        Ok(()) => Ok(()),
        Err(End::Io(e)) => Err(e),
        Err(End::Refused { message, refused_seq }) => {
            let _ = send(&mut writer, Kind::Error(proto::Error { message: message.clone(), refused_seq })).await;
            Err(std::io::Error::new(std::io::ErrorKind::InvalidData, message))
        }
    }
}

/// `[aggregator]`: binds the agents' port and loads the sessions (agents' batches are merged
/// into this host's store, each acknowledged once a flush holding it is delivered); `None`
/// when not set.
pub fn build(
    shared: &Arc<Shared>,
    config: &crate::config::Config,
    wiring: &mut Wiring,
) -> anyhow::Result<Option<Box<dyn crate::sources::Source>>> {
    use crate::listener::{Kind, Protocol, Transport};
    use anyhow::Context;
    let Some(a) = &config.aggregator else { return Ok(None) };
    let tls = match &a.tls {
        Some(tls) => {
            Some(Arc::new(arc_swap::ArcSwap::new(crate::net::tls::server_config(tls).context("aggregator tls")?)))
        }
        None => None,
    };
    let kind = Kind::new(Protocol::Aggregator, if tls.is_some() { Transport::Tls } else { Transport::Tcp });
    let listener = crate::sources::running::bind_stream(kind, a.listen)?;
    let address = listener.local_addr()?;
    let id = format!("{}@{address}", crate::sys::host_name());
    let limits = Limits {
        max_frame: a.max_frame as usize,
        max_agents: a.max_agents,
        read_timeout: a.read_timeout,
        idle_timeout: (config.statsd.flush_interval * 3).max(Duration::from_secs(60)).max(a.read_timeout),
    };
    let aggregator = Aggregator::load(&a.state_dir, id, limits)?;
    let mutual = a.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
    tracing::info!(%address, tls = tls.is_some(), mutual, "aggregator listening for agents");
    let counters = shared.listeners.register_stream(kind, address.to_string(), None);
    shared.metrics.add(aggregator.clone());
    let guard = shared.guard.listener(kind, address, config.statsd.tcp_max_connections);
    let target = MergeTarget {
        aggregation: shared.aggregation.clone(),
        config: shared.config.clone(),
        sinks_full: shared.sinks_full.clone(),
    };
    let accept = tokio::spawn(serve(listener, guard, counters, tls, aggregator.clone(), target));
    wiring.flush.acknowledged = Some(aggregator);
    Ok(Some(Box::new(crate::sources::running::AcceptTask { name: "aggregator", task: accept })))
}

/// Why an agent is turned away while a sink is full.
const BUSY: &str = "busy: the aggregator's outputs are full; hold the batches and retry";

/// Where agents' batches go, and what says whether to take them.
#[derive(Clone)]
pub struct MergeTarget {
    /// The store batches merge target.
    pub aggregation: Arc<crate::aggregation::Aggregation>,
    /// The key rule in force.
    pub config: Arc<RwLock<crate::config::Config>>,
    /// A full flush sink turns agents away.
    pub sinks_full: Arc<crate::flush::SinksFull>,
}

fn error(message: &str) -> Kind {
    Kind::Error(proto::Error { message: message.to_string(), refused_seq: 0 })
}

/// Merges a batch unless it is a retry: its shape is checked first (a malformed batch is
/// refused whole, before anything of it is merged), then its series are decoded and merged a
/// chunk at a time, each series checked by the validity rule on its own. The merge gate is held
/// throughout, so a flush sees the whole batch and its mark, or neither.
fn merge(aggregator: &Aggregator, target: &MergeTarget, id: &SessionId, body: &[u8]) -> Result<(), End> {
    let c = &aggregator.counters;
    let view = match BatchView::parse(body) {
        Ok(view) => view,
        Err(e) => {
            c.refused_batches.fetch_add(1, Relaxed);
            c.protocol_errors.fetch_add(1, Relaxed);
            // Agents send in order: the batch it could not read is the one after the last merged.
            let next = aggregator.sessions.lock().get(id).map_or(0, |s| s.merged + 1);
            let seq = floodgate_forward::scan::fields(body)
                .find_map(|f| match f {
                    Ok((1, floodgate_forward::scan::Value::Varint(v))) => Some(v),
                    _ => None,
                })
                .unwrap_or(next);
            return Err(End::Refused { message: format!("batch {seq} refused: {e}"), refused_seq: seq });
        }
    };
    if target.sinks_full.any() {
        // Not merged, not acknowledged: the agent sends it again once the sinks drain.
        c.busy.fetch_add(1, Relaxed);
        return Err(End::refused(BUSY));
    }
    let rule = target.config.read().key_rule();
    let _gate = aggregator.merge_gate.read();
    {
        // Claimed under the gate: another connection of the same session skips it from now on,
        // and no flush can come between this mark and the data it stands for.
        let mut sessions = aggregator.sessions.lock();
        match sessions.get_mut(id) {
            Some(s) if view.seq > s.merged => s.merged = view.seq,
            _ => {
                c.duplicates.fetch_add(1, Relaxed);
                return Ok(());
            }
        }
    }
    let mut applied = Applied::default();
    // New series are charged to the agent: its certificate's name with mutual TLS, else the
    // name it gave.
    let agent = target.aggregation.budgets.name(id.identity.as_deref().unwrap_or(&id.agent_id));
    for chunk in view.chunks(rule, CHUNK_BYTES) {
        let mut store = target.aggregation.store.lock();
        store.set_forward_sender(agent);
        applied.merge(&chunk.merge_into(&mut store));
        store.set_forward_sender(floodgate_statsd::budget::Sender::Unknown);
    }
    c.batches.fetch_add(1, Relaxed);
    c.series.fetch_add(applied.merged, Relaxed);
    c.refused_series.fetch_add(applied.refused, Relaxed);
    for (counter, n) in c.invalid_series.iter().zip(applied.invalid.0) {
        if n > 0 {
            counter.fetch_add(n, Relaxed);
        }
    }
    Ok(())
}

impl crate::metrics::Report for Aggregator {
    fn report(&self, out: &mut crate::metrics::Families) {
        use crate::metrics::Describe;
        let c = &self.counters;
        let rows: [(Describe, &AtomicU64); 10] = [
            (Describe::counter("floodgate_aggregator_batches_total", "Agent batches merged."), &c.batches),
            (Describe::counter("floodgate_aggregator_series_total", "Series merged from agents."), &c.series),
            (
                Describe::counter("floodgate_aggregator_refused_series_total", "Agent series refused by max_series."),
                &c.refused_series,
            ),
            (
                Describe::counter(
                    "floodgate_aggregator_duplicate_batches_total",
                    "Retried batches skipped (already merged).",
                ),
                &c.duplicates,
            ),
            (
                Describe::counter(
                    "floodgate_aggregator_protocol_errors_total",
                    "Agent connections closed for a protocol error.",
                ),
                &c.protocol_errors,
            ),
            (
                Describe::counter(
                    "floodgate_aggregator_refused_batches_total",
                    "Agent batches refused whole: not a well-formed message.",
                ),
                &c.refused_batches,
            ),
            (
                Describe::counter(
                    "floodgate_aggregator_refused_sessions_total",
                    "Agent hellos refused: max_agents reached, or an agent_id too long.",
                ),
                &c.refused_sessions,
            ),
            (
                Describe::counter(
                    "floodgate_aggregator_busy_total",
                    "Agent hellos and batches turned away while an output's buffer was full (agents resend).",
                ),
                &c.busy,
            ),
            (
                Describe::counter(
                    "floodgate_aggregator_timeouts_total",
                    "Agent connections closed: idle, or a frame too slow to arrive.",
                ),
                &c.timeouts,
            ),
            (Describe::gauge("floodgate_aggregator_agents_connected", "Agent connections open now."), &c.connected),
        ];
        for (describe, v) in rows {
            out.one(describe, v.load(Relaxed));
        }
        let invalid = Describe::counter(
            "floodgate_aggregator_invalid_series_total",
            "Agent series refused by the validity rule, by reason.",
        );
        for r in Invalid::ALL {
            out.add(invalid, &[("reason", r.as_str())], c.invalid_series[r as usize].load(Relaxed));
        }
    }
}

impl crate::flush::Acknowledged for Aggregator {
    fn gate(&self) -> &RwLock<()> {
        &self.merge_gate
    }

    fn receipt(self: Arc<Self>) -> Option<Box<dyn FnOnce() + Send>> {
        let marks = self.merged_marks();
        if marks.is_empty() {
            return None;
        }
        Some(Box::new(move || self.handled(marks)))
    }
}
