//! Syslog over TCP, TLS and Unix stream sockets (RFC 6587): octet counting or newline
//! framing, chosen from the connection's first byte. A message longer than `max_message` is skipped and counted, the
//! connection kept; a length field that is not a number closes the connection after every
//! message before it has been handed on. A connection silent for `idle_timeout`, or one that
//! takes longer than that to finish a message it started (slowloris), is closed.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use floodgate_syslog::{FrameError, Framer};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::Encoder;
use crate::guard::ListenerGuard;
use crate::listener::{Counters, Kind};
use crate::net::stream::{read_now, Connection, Peer, ReadNow, DRAIN_LIMIT, DRAIN_PAUSE};
use crate::net::tls::SharedServerConfig;
use crate::record::{Chunk, Encoding};

/// Options of one syslog TCP or TLS listener.
#[derive(Clone)]
pub struct TcpOptions {
    /// Syslog over TCP or TLS.
    pub kind: Kind,
    /// Where an RFC 3164 time without a zone is read.
    pub zone: jiff::tz::TimeZone,
    /// Where chunks go.
    pub output: mpsc::Sender<Chunk>,
    /// How records are encoded.
    pub encoding: Encoding,
    /// Self-metrics (shared by the listener's connections).
    pub counters: Arc<Counters>,
    /// Longest message.
    pub max_message: usize,
    /// Silence, or an unfinished message, this long closes the connection.
    pub idle_timeout: Duration,
    /// This listener's place in the guard.
    pub guard: Arc<ListenerGuard>,
    /// Becomes `true` at shutdown: connections stop reading and hand on what they have.
    pub shutdown: watch::Receiver<bool>,
    /// Where PROXY headers come from (TCP and TLS, with `proxy_protocol`).
    pub proxy: Option<crate::net::stream::ProxyProtocol>,
}

/// Accepts connections until the task is aborted.
pub async fn serve(listener: TcpListener, opts: TcpOptions, tls: Option<SharedServerConfig>) {
    let (guard, counters, kind) = (opts.guard.clone(), opts.counters.clone(), opts.kind);
    crate::net::stream::serve(listener, guard, counters, tls, opts.proxy.clone(), kind.as_str(), move |conn, peer| {
        let opts = opts.clone();
        async move { read_frames(conn, peer, opts).await }
    })
    .await
}

/// Accepts connections on a Unix stream socket until the task is aborted (each record names
/// the connecting process, as the kernel tells it).
pub async fn serve_unix(listener: tokio::net::UnixListener, opts: TcpOptions) {
    let (guard, counters, kind) = (opts.guard.clone(), opts.counters.clone(), opts.kind);
    crate::net::stream::serve_unix(listener, guard, counters, kind.as_str(), move |conn, peer| {
        let opts = opts.clone();
        async move { read_frames(conn, peer, opts).await }
    })
    .await
}

/// Reads one connection to its end (or to shutdown).
async fn read_frames(mut conn: Connection, peer: Peer, mut opts: TcpOptions) -> std::io::Result<()> {
    let mut encoder = Encoder::new(opts.encoding, opts.kind, opts.zone.clone());
    if let Some(addr) = peer.addr {
        encoder.set_source(addr);
    }
    if let Some(credentials) = peer.credentials {
        encoder.set_peer(credentials);
    }
    let mut framer = Framer::new(opts.max_message);
    // When the message now arriving began (None between messages).
    let mut started: Option<Instant> = None;
    // Shutting down: read on until the sender pauses or this deadline passes.
    let mut draining: Option<Instant> = None;
    let c = opts.counters.clone();
    // Paced (`tcp_per_source`): smaller reads, so the waits between them stay short.
    let paced = peer.pacer.as_ref().is_some_and(|p| p.is_on());
    // Large reads: fewer hand-offs to the output per message at high rates. Read into the
    // framer's own room, so frames are cut where the bytes landed.
    let read_size = if paced { PACED_READ } else { READ };
    // Bytes of records per byte read, as far as this connection has shown.
    let mut expansion = 2;
    loop {
        if draining.is_none() && *opts.shutdown.borrow() {
            draining = Some(Instant::now() + DRAIN_LIMIT);
        }
        let buf = framer.spare(read_size);
        let n = if let Some(until) = draining {
            // What the sender already wrote is in our socket buffer: take it, then stop.
            let deadline = until.min(Instant::now() + DRAIN_PAUSE);
            match tokio::time::timeout_at(deadline, conn.read(&mut *buf)).await {
                Ok(r) => r?,
                Err(_) => return Ok(()),
            }
        } else {
            let deadline = started.unwrap_or_else(Instant::now) + opts.idle_timeout;
            tokio::select! {
                r = tokio::time::timeout_at(deadline, conn.read(&mut *buf)) => match r {
                    Ok(r) => r?,
                    Err(_) => {
                        c.idle_closed.fetch_add(1, Relaxed);
                        if started.is_some() {
                            tracing::debug!(%peer, "syslog: message not finished within idle_timeout; closing");
                        }
                        return Ok(());
                    }
                },
                // Shutdown (or its sender gone, which is the same thing).
                _ = opts.shutdown.changed() => {
                    draining = Some(Instant::now() + DRAIN_LIMIT);
                    continue;
                }
            }
        };
        let mut n = n;
        let mut eof = n == 0;
        if !eof && !paced {
            let (more, ended) = read_ready(&mut conn, &mut buf[n..]);
            n += more;
            eof = ended;
        }
        Counters::add(&c.bytes, n as u64);
        encoder.stamp();
        // Room for what the last read made per byte read (JSON records are about three times
        // their messages; octet-counted frames their size), so the chunk rarely grows.
        let mut chunk = Chunk::with_room(n * expansion + 4096);
        let mut bad = 0;
        let mut take = |result: Result<&[u8], FrameError>, chunk: &mut Chunk| match result {
            Ok(frame) => {
                if encoder.encode(frame, None, chunk) == Some(false) {
                    bad += 1;
                }
            }
            Err(FrameError::TooLong { .. }) => {
                c.oversize.fetch_add(1, Relaxed);
            }
            Err(e) => {
                c.framing_errors.fetch_add(1, Relaxed);
                tracing::debug!(%peer, error = %e, "syslog framing error");
            }
        };
        framer.filled(n);
        while let Some(result) = framer.next_frame() {
            take(result, &mut chunk);
        }
        if eof {
            if let Some(result) = framer.finish() {
                take(result, &mut chunk);
            }
        }
        started = match framer.pending() {
            0 => None,
            _ => started.or_else(|| Some(Instant::now())),
        };
        c.packets.fetch_add(1, Relaxed);
        Counters::add(&c.lines, chunk.messages);
        Counters::add(&c.bad_lines, bad);
        let messages = chunk.messages;
        // At most 4: a reservation is a guess, and tiny messages (a few bytes each, several
        // hundred as records) must not make every later read reserve a hundred times its size.
        expansion = chunk.bytes.len().div_ceil(n.max(1)).clamp(1, 4);
        if chunk.messages > 0 && opts.output.send(chunk).await.is_err() {
            return Ok(()); // The output is gone: shutting down.
        }
        if eof || framer.is_broken() {
            return Ok(());
        }
        if paced && draining.is_none() {
            if crate::net::stream::pace(&peer, messages, &c, &mut opts.shutdown).await {
                draining = Some(Instant::now() + DRAIN_LIMIT);
            }
            // A message begun before the wait is not late because of it.
            started = started.map(|_| Instant::now());
        }
    }
}

/// A connection's reads.
const READ: usize = 256 * 1024;

/// A paced connection's reads (`tcp_per_source`): small, so it waits little at a time.
const PACED_READ: usize = 16 * 1024;

/// Reads whatever more is ready now, without waiting; returns the bytes read and whether the
/// stream ended. A TLS stream yields one record (16 KiB at most) a read, and handing each to
/// the output on its own costs more than parsing it. An error is left for the next (waiting)
/// read to report.
fn read_ready(conn: &mut Connection, buf: &mut [u8]) -> (usize, bool) {
    let mut n = 0;
    while n < buf.len() {
        match read_now(conn, &mut buf[n..]) {
            ReadNow::Data(k) => n += k,
            ReadNow::Eof => return (n, true),
            ReadNow::Error | ReadNow::Pending => break,
        }
    }
    (n, false)
}
