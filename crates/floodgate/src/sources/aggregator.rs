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

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use floodgate_forward::frame::{self, Decoder, DEFAULT_MAX_FRAME};
use floodgate_forward::proto::{self, frame::Kind, Frame};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::app::Shared;
use crate::guard::ListenerGuard;
use crate::sources::listen::Connection;
use crate::telemetry::ListenerCounters;
use crate::tls::SharedServerConfig;

/// An agent process: its name and the random number it chose at start.
pub type SessionId = (String, u64);

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
    /// Retried batches skipped (already merged).
    pub duplicates: AtomicU64,
    /// Connections closed for a protocol error (bad frame, bad batch, wrong version).
    pub protocol_errors: AtomicU64,
    /// Agents connected now.
    pub connected: AtomicU64,
}

/// The aggregator's sessions and their marks.
#[derive(Debug)]
pub struct Aggregator {
    sessions: Mutex<HashMap<SessionId, Session>>,
    state_file: PathBuf,
    next_conn: AtomicU64,
    /// Figures.
    pub counters: AggregatorCounters,
    id: String,
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    sessions: Vec<SavedSession>,
}

#[derive(Serialize, Deserialize)]
struct SavedSession {
    agent_id: String,
    session: u64,
    handled: u64,
    #[serde(default)]
    last_seen: u64,
}

/// A session neither connected nor heard from for this long is forgotten.
const FORGET_AFTER: u64 = 7 * 24 * 3600;

fn unix_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Aggregator {
    /// The aggregator, with the handled marks saved in `state_dir` by an earlier run.
    pub fn load(state_dir: &std::path::Path, id: String) -> anyhow::Result<Arc<Aggregator>> {
        use anyhow::Context;
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("cannot create aggregator state_dir {}", state_dir.display()))?;
        let state_file = state_dir.join("sessions.json");
        let mut sessions = HashMap::new();
        match std::fs::read(&state_file) {
            Ok(bytes) => {
                let saved: StateFile = serde_json::from_slice(&bytes)
                    .with_context(|| format!("{} is not an aggregator state file", state_file.display()))?;
                for s in saved.sessions {
                    let session = Session { merged: s.handled, handled: s.handled, last_seen: s.last_seen, conn: None };
                    sessions.insert((s.agent_id, s.session), session);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", state_file.display())),
        }
        tracing::info!(sessions = sessions.len(), file = %state_file.display(), "aggregator state loaded");
        Ok(Arc::new(Aggregator {
            sessions: Mutex::new(sessions),
            state_file,
            next_conn: AtomicU64::new(1),
            counters: AggregatorCounters::default(),
            id,
        }))
    }

    /// The merged marks: call with the store locked, just before it flushes.
    pub fn merged_marks(&self) -> Vec<(SessionId, u64)> {
        self.sessions
            .lock()
            .iter()
            .filter(|(_, s)| s.merged > s.handled)
            .map(|(id, s)| (id.clone(), s.merged))
            .collect()
    }

    /// A flush holding `marks` was delivered: record them, save, then acknowledge.
    pub fn handled(&self, marks: Vec<(SessionId, u64)>) {
        if marks.is_empty() {
            return;
        }
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
                .map(|((agent_id, session), s)| SavedSession {
                    agent_id: agent_id.clone(),
                    session: *session,
                    handled: s.handled,
                    last_seen: s.last_seen,
                })
                .collect(),
        };
        if let Err(e) = write_atomically(&self.state_file, &saved) {
            // Without the record a restart could count these batches twice: do not ack them.
            tracing::error!(file = %self.state_file.display(), error = %e, "cannot save aggregator state; not acknowledging");
            return;
        }
        for (id, _) in &marks {
            if let Some(Session { handled, conn: Some((_, tx)), .. }) = sessions.get(id) {
                let _ = tx.send(*handled);
            }
        }
    }
}

fn write_atomically(path: &std::path::Path, state: &StateFile) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec(state).map_err(std::io::Error::other)?;
    {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, &bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts agents until the task is aborted.
pub async fn serve(
    listener: TcpListener,
    guard: Arc<ListenerGuard>,
    counters: Arc<ListenerCounters>,
    tls: Option<SharedServerConfig>,
    aggregator: Arc<Aggregator>,
    shared: Arc<Shared>,
) {
    let c = counters.clone();
    crate::sources::listen::serve(listener, guard, counters, tls, "aggregator", move |conn, peer| {
        let (aggregator, shared, counters) = (aggregator.clone(), shared.clone(), c.clone());
        async move {
            aggregator.counters.connected.fetch_add(1, Relaxed);
            if let Err(e) = agent(conn, &aggregator, &shared, &counters).await {
                tracing::warn!(%peer, error = %e, "agent connection closed");
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

/// Serves one agent connection to its end.
async fn agent(
    stream: Connection,
    aggregator: &Aggregator,
    shared: &Shared,
    counters: &ListenerCounters,
) -> std::io::Result<()> {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut decoder = Decoder::new(DEFAULT_MAX_FRAME);
    let protocol_error = |why: String| {
        aggregator.counters.protocol_errors.fetch_add(1, Relaxed);
        std::io::Error::new(std::io::ErrorKind::InvalidData, why)
    };
    // Hello first.
    let hello = tokio::time::timeout(HELLO_TIMEOUT, async {
        loop {
            if let Some(f) = decoder.decode().map_err(|e| protocol_error(e.to_string()))? {
                return Ok(f);
            }
            let n = reader.read_buf(decoder.buffer()).await?;
            ListenerCounters::add(&counters.bytes, n as u64);
            if n == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before Hello"));
            }
        }
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no Hello"))??;
    let Some(Kind::Hello(hello)) = hello.kind else {
        let _ = send(&mut writer, Kind::Error(proto::Error { message: "expected Hello".into() })).await;
        return Err(protocol_error("first frame was not Hello".into()));
    };
    if hello.version != floodgate_forward::VERSION {
        let message =
            format!("protocol version {} not spoken here (this is {})", hello.version, floodgate_forward::VERSION);
        let _ = send(&mut writer, Kind::Error(proto::Error { message: message.clone() })).await;
        return Err(protocol_error(message));
    }
    let id: SessionId = (hello.agent_id.clone(), hello.session);
    let conn_id = aggregator.next_conn.fetch_add(1, Relaxed);
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
    let handled = {
        let mut sessions = aggregator.sessions.lock();
        let s = sessions.entry(id.clone()).or_default();
        s.conn = Some((conn_id, ack_tx));
        s.last_seen = unix_secs();
        s.handled
    };
    tracing::info!(agent = %hello.agent_id, session = hello.session, acked_through = handled, "agent connected");
    send(
        &mut writer,
        Kind::Welcome(proto::Welcome {
            version: floodgate_forward::VERSION,
            aggregator_id: aggregator.id.clone(),
            acked_through: handled,
        }),
    )
    .await?;
    let result = async {
        loop {
            // Frames already buffered first (a Batch may have come with the Hello).
            while let Some(f) = decoder.decode().map_err(|e| protocol_error(e.to_string()))? {
                match f.kind {
                    Some(Kind::Batch(batch)) => {
                        merge(aggregator, shared, &id, &batch).map_err(protocol_error)?;
                        counters.packets.fetch_add(1, Relaxed);
                    }
                    _ => return Err(protocol_error("expected Batch".into())),
                }
            }
            tokio::select! {
                n = reader.read_buf(decoder.buffer()) => {
                    let n = n?;
                    ListenerCounters::add(&counters.bytes, n as u64);
                    if n == 0 {
                        return Ok(());
                    }
                }
                seq = ack_rx.recv() => match seq {
                    Some(seq) => send(&mut writer, Kind::Ack(proto::Ack { seq })).await?,
                    None => return Ok(()),
                },
            }
        }
    }
    .await;
    if let Err(e) = &result {
        // Protocol errors are told to the peer before closing.
        if e.kind() == std::io::ErrorKind::InvalidData {
            let _ = send(&mut writer, Kind::Error(proto::Error { message: e.to_string() })).await;
        }
    }
    let mut sessions = aggregator.sessions.lock();
    if let Some(s) = sessions.get_mut(&id) {
        if s.conn.as_ref().is_some_and(|(c, _)| *c == conn_id) {
            s.conn = None;
        }
    }
    result
}

/// Merges a batch unless it is a retry. Decoding happens before any lock; the store lock is
/// held while the merged mark moves, so a flush sees both or neither.
fn merge(aggregator: &Aggregator, shared: &Shared, id: &SessionId, batch: &proto::Batch) -> Result<(), String> {
    let is_retry = |sessions: &HashMap<SessionId, Session>| sessions.get(id).is_none_or(|s| batch.seq <= s.merged);
    if is_retry(&aggregator.sessions.lock()) {
        aggregator.counters.duplicates.fetch_add(1, Relaxed);
        return Ok(());
    }
    let decoded = floodgate_forward::batch::decode(batch).map_err(|e| format!("batch {} refused: {e}", batch.seq))?;
    let mut store = shared.store.lock();
    let mut sessions = aggregator.sessions.lock();
    // Checked again under the locks: another connection of the same session may have won.
    if is_retry(&sessions) {
        aggregator.counters.duplicates.fetch_add(1, Relaxed);
        return Ok(());
    }
    let applied = decoded.merge_into(&mut store);
    if let Some(s) = sessions.get_mut(id) {
        s.merged = batch.seq;
    }
    let c = &aggregator.counters;
    c.batches.fetch_add(1, Relaxed);
    c.series.fetch_add(applied.merged, Relaxed);
    c.refused_series.fetch_add(applied.refused, Relaxed);
    Ok(())
}
