//! StatsD over TCP, TLS and Unix stream sockets: newline-separated lines, a maximum line length (longer lines are skipped
//! and counted, the connection kept) and an idle timeout. Each accepted connection is put to
//! the guard before anything is read from it; a refused one is reset at once. At shutdown each
//! connection reads on what its sender already sent (until it pauses, 2 s at most) and takes a
//! last line without its newline too, so everything read is in the final flush.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use floodgate_statsd::{KeyRule, PacketCounts};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpListener;

use super::decode::Decoder;
use super::{publish, SharedShard};
use crate::clock::since as clock;
use crate::guard::ListenerGuard;
use crate::listener::Counters;
use crate::net::stream::{DRAIN_LIMIT, DRAIN_PAUSE};
use crate::net::tls::SharedServerConfig;

/// Options of one TCP listener.
#[derive(Clone)]
pub struct TcpOptions {
    /// Where values go (one shard per listener, shared by its connections).
    pub shard: SharedShard,
    /// Self-metrics.
    pub counters: Arc<Counters>,
    /// `max_key_length` and Etsy's `keyNameSanitize`.
    pub key_rule: KeyRule,
    /// The listener's kind (for event records).
    pub kind: crate::listener::Kind,
    /// The record output, for events and service checks.
    pub records: Option<crate::record::RecordPipe>,
    /// Origin tags (Unix stream sockets, when `origin_tags` asks).
    pub origin: Option<super::decode::OriginTags>,
    /// Longest line accepted.
    pub max_line_length: usize,
    /// This listener's place in the guard (which also caps its open connections).
    pub guard: Arc<ListenerGuard>,
    /// Close after this long without data.
    pub idle_timeout: Duration,
    /// Gauge ordering epoch.
    pub epoch: Instant,
    /// Turns true at shutdown.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Where PROXY headers come from (TCP and TLS, with `proxy_protocol`).
    pub proxy: Option<crate::net::stream::ProxyProtocol>,
    /// Series budgets: a client certificate's name is a sender of its own (mutual TLS).
    pub budgets: Arc<floodgate_statsd::budget::SeriesBudgets>,
}

/// Accepts connections until the task is aborted; with `tls`, each admitted connection is
/// a TLS server connection.
pub async fn serve(listener: TcpListener, opts: TcpOptions, tls: Option<SharedServerConfig>) {
    let (guard, counters) = (opts.guard.clone(), opts.counters.clone());
    crate::net::stream::serve(listener, guard, counters, tls, opts.proxy.clone(), "statsd", move |conn, peer| {
        let mut opts = opts.clone();
        async move { read_lines(conn, &mut opts, peer).await }
    })
    .await
}

/// Accepts connections on a Unix stream socket until the task is aborted.
pub async fn serve_unix(listener: tokio::net::UnixListener, opts: TcpOptions) {
    let (guard, counters, kind) = (opts.guard.clone(), opts.counters.clone(), opts.kind);
    crate::net::stream::serve_unix(listener, guard, counters, kind.as_str(), move |conn, peer| {
        let mut opts = opts.clone();
        async move { read_lines(conn, &mut opts, peer).await }
    })
    .await
}

/// Reads one connection to its end.
async fn read_lines<S: AsyncRead + Unpin>(
    mut stream: S,
    opts: &mut TcpOptions,
    peer: crate::net::stream::Peer,
) -> std::io::Result<()> {
    let max = opts.max_line_length;
    let mut buf = vec![0u8; (max + 1).max(64 * 1024)];
    let mut filled = 0;
    // Inside a line longer than the buffer: skip until its end.
    let mut skipping = false;
    let origin = opts.origin.as_ref().and_then(|o| o.for_connection(opts.counters.clone()));
    let mut decoder = Decoder::new(opts.kind, opts.key_rule, origin, opts.records.as_ref());
    decoder.sender(peer.addr, peer.credentials);
    if let Some(name) = &peer.identity {
        // Mutual TLS: the certificate names the sender, wherever it connects from.
        decoder.charge_to(opts.budgets.name(name));
    }
    // Shutting down: read on until the sender pauses or this deadline passes.
    let mut draining: Option<tokio::time::Instant> = None;
    // Paced (`tcp_per_source`): smaller reads, so the waits between them stay short.
    let paced = peer.pacer.as_ref().is_some_and(|p| p.is_on());
    let read_size = if paced { PACED_READ.max(max + 1) } else { buf.len() };
    loop {
        if draining.is_none() && *opts.shutdown.borrow() {
            draining = Some(tokio::time::Instant::now() + DRAIN_LIMIT);
        }
        if filled >= read_size {
            if !skipping {
                opts.counters.oversize.fetch_add(1, Relaxed);
            }
            skipping = true;
            filled = 0;
        }
        let read = match draining {
            Some(until) => {
                let deadline = until.min(tokio::time::Instant::now() + DRAIN_PAUSE);
                tokio::time::timeout_at(deadline, stream.read(&mut buf[filled..read_size])).await.ok()
            }
            None => tokio::select! {
                r = tokio::time::timeout(opts.idle_timeout, stream.read(&mut buf[filled..read_size])) => match r {
                    Ok(r) => Some(r),
                    Err(_) => {
                        opts.counters.idle_closed.fetch_add(1, Relaxed);
                        return Ok(());
                    }
                },
                _ = opts.shutdown.changed() => {
                    draining = Some(tokio::time::Instant::now() + DRAIN_LIMIT);
                    continue;
                }
            },
        };
        // The drain ended (the sender paused): what was read counts, its last line too.
        let n = match read {
            Some(r) => r?,
            None => 0,
        };
        Counters::add(&opts.counters.bytes, n as u64);
        if n == 0 {
            // A last line without its newline is still a line.
            if filled > 0 && !skipping {
                consume(&mut decoder, &buf[..filled], opts);
                decoder.send_records(&opts.counters);
            }
            return Ok(());
        }
        let start_new = filled;
        filled += n;
        let Some(last_nl) = buf[start_new..filled].iter().rposition(|b| *b == b'\n').map(|i| i + start_new) else {
            continue;
        };
        let mut start = 0;
        if skipping {
            // The first newline ends the oversize line.
            let first_nl = buf[..=last_nl].iter().position(|b| *b == b'\n').unwrap_or(last_nl);
            start = first_nl + 1;
            skipping = false;
        }
        let mut lines = 0;
        if start <= last_nl {
            lines = consume(&mut decoder, &buf[start..=last_nl], opts);
            decoder.send_records(&opts.counters);
        }
        buf.copy_within(last_nl + 1..filled, 0);
        filled -= last_nl + 1;
        if paced
            && draining.is_none()
            && crate::net::stream::pace(&peer, lines, &opts.counters, &mut opts.shutdown).await
        {
            draining = Some(tokio::time::Instant::now() + DRAIN_LIMIT);
        }
    }
}

/// A paced connection's reads (`tcp_per_source`): small, so it waits little at a time.
const PACED_READ: usize = 16 * 1024;

/// Parses complete lines, skipping (and counting) those longer than the maximum; returns the
/// non-empty lines taken (what a paced source is charged).
fn consume(decoder: &mut Decoder, block: &[u8], opts: &TcpOptions) -> u64 {
    let max = opts.max_line_length;
    let mut shard = opts.shard.lock();
    shard.clock = clock(opts.epoch);
    shard.packets += 1;
    let mut lines = PacketCounts::default();
    if block.len() <= max || block.split(|b| *b == b'\n').all(|l| l.len() <= max) {
        decoder.ingest(&mut shard, block, &mut lines);
    } else {
        for line in block.split(|b| *b == b'\n') {
            if line.len() > max {
                opts.counters.oversize.fetch_add(1, Relaxed);
            } else if !line.is_empty() {
                decoder.ingest(&mut shard, line, &mut lines);
            }
        }
    }
    let taken = lines.lines;
    // Counted before the shard is released, as in the UDP threads.
    publish(&opts.counters, lines);
    opts.counters.packets.fetch_add(1, Relaxed);
    drop(shard);
    taken
}
