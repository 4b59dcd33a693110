//! The syslog output: records from every syslog listener, in chunks, to one destination.
//!
//! - `file` / `stdout`: JSON lines written by one thread; the file is reopened after SIGHUP
//!   (logrotate's `postrotate`), so a renamed file is let go and a new one created.
//! - `forward`: the messages as received, octet-counted (RFC 6587 §3.4.1), over TCP or TLS to
//!   a syslog server. While it is down chunks wait in a bounded memory queue, then (if
//!   configured) in a spill file, in order; past both, chunks are dropped and counted. Before
//!   each write the connection is checked for a close from the server (a syslog server never
//!   writes, so anything readable means it is going away): a write into a connection the
//!   server already closed would be lost without an error.
//!
//! Listeners send [`Chunk`]s over a bounded channel: when the destination cannot keep up, TCP
//! senders are slowed (their reads wait) rather than anything accepted being dropped.

pub mod config;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::config::{Fsync, SyslogForward, SyslogOutput};
use crate::net::stream::{Connection, ReadNow};
pub use crate::record::{Chunk, Encoding};
use crate::sinks::delivery::backoff::Backoff;
use crate::sinks::delivery::disk_log::{DiskLog, Head};
use crate::sinks::delivery::inbox::Inbox;
use crate::sinks::delivery::queue::{Bounded, Entry};

/// Chunks waiting in the channel at most (each up to a TCP read's or a UDP batch's worth).
const CHANNEL: usize = 256;

/// The output's figures.
#[derive(Debug, Default)]
pub struct OutputCounters {
    /// Messages written (or forwarded).
    pub written_messages: AtomicU64,
    /// Bytes written.
    pub written_bytes: AtomicU64,
    /// Failed writes, connects and lost connections.
    pub errors: AtomicU64,
    /// Messages dropped: buffer and spill full, or still held when a shutdown gave up.
    pub dropped_messages: AtomicU64,
    /// Bytes held in memory.
    pub buffer_bytes: AtomicU64,
    /// Messages held (memory and spill).
    pub buffer_messages: AtomicU64,
    /// Bytes held in the spill file.
    pub spill_bytes: AtomicU64,
    /// 1 while connected (forward).
    pub connected: AtomicU64,
}

/// The running output.
pub struct Output {
    /// Where listeners send chunks (the output ends once every clone is dropped).
    pub sender: mpsc::Sender<Chunk>,
    /// How they encode.
    pub encoding: Encoding,
    /// Figures.
    pub counters: Arc<OutputCounters>,
    /// `file`: set by SIGHUP, taken by the writer before its next write.
    reopen: Arc<AtomicBool>,
    task: OutputTask,
    /// What it writes to, for logs.
    pub describe: String,
}

enum OutputTask {
    Thread(std::thread::JoinHandle<()>),
    Task(tokio::task::JoinHandle<()>),
}

impl Output {
    /// Opens the destination (a file must be writable now) and starts the writer. `drain` is
    /// how long a forward output keeps trying at shutdown; `stopping` turns true when the
    /// shutdown begins (a file writer then stops retrying a failing disk for long).
    pub fn start(config: &SyslogOutput, raw: bool, drain: Duration, stopping: Arc<AtomicBool>) -> Result<Output> {
        let (sender, rx) = mpsc::channel(CHANNEL);
        let counters = Arc::new(OutputCounters::default());
        let reopen = Arc::new(AtomicBool::new(false));
        let (task, encoding, describe) = match config {
            SyslogOutput::File { path, fsync } => {
                let file = open_append(path)?;
                let (c, r, path2, fsync) = (counters.clone(), reopen.clone(), path.clone(), *fsync);
                let handle = tokio::runtime::Handle::current();
                let stop = stopping.clone();
                let thread = std::thread::Builder::new()
                    .name("syslog-out".into())
                    .spawn(move || write_lines(rx, Out::File(file), Some((path2, r)), fsync, &c, &stop, &handle))?;
                (OutputTask::Thread(thread), Encoding::Json { raw }, format!("file {}", path.display()))
            }
            SyslogOutput::Stdout => {
                let c = counters.clone();
                let handle = tokio::runtime::Handle::current();
                let thread = std::thread::Builder::new().name("syslog-out".into()).spawn(move || {
                    write_lines(rx, Out::Stdout(std::io::stdout()), None, Fsync::Never, &c, &stopping, &handle)
                })?;
                (OutputTask::Thread(thread), Encoding::Json { raw }, "stdout".to_string())
            }
            SyslogOutput::Forward(f) => {
                let target = Forwarder::new(f, counters.clone())?;
                let describe = format!("forward {}{}", f.address, if f.tls.is_some() { " (tls)" } else { "" });
                (OutputTask::Task(tokio::spawn(target.run(rx, drain))), Encoding::OctetCounted, describe)
            }
        };
        Ok(Output { sender, encoding, counters, reopen, task, describe })
    }

    /// Set it (SIGHUP) and a file output reopens its path before the next write.
    pub fn reopen_flag(&self) -> Arc<AtomicBool> {
        self.reopen.clone()
    }

    /// Waits for the writer to hand on everything sent (call after every sender is dropped;
    /// this drops the output's own).
    pub async fn finish(self) {
        drop(self.sender);
        match self.task {
            OutputTask::Thread(t) => {
                let _ = tokio::task::spawn_blocking(move || t.join()).await;
            }
            OutputTask::Task(t) => {
                let _ = t.await;
            }
        }
    }
}

fn open_append(path: &std::path::Path) -> Result<std::fs::File> {
    crate::files::append(path).with_context(|| format!("cannot open syslog output {}", path.display()))
}

/// Where the file/stdout writer writes.
enum Out {
    File(std::fs::File),
    Stdout(std::io::Stdout),
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Out::File(f) => f.write(buf),
            Out::Stdout(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Out::File(f) => f.flush(),
            Out::Stdout(s) => s.flush(),
        }
    }
}

/// Flushes, then syncs a file to disk (retrying, as writes do).
fn sync(out: &mut std::io::BufWriter<Out>, retry: &mut Retry<'_>) {
    flush_retrying(out, retry);
    if let Out::File(f) = out.get_ref() {
        while let Err(e) = f.sync_data() {
            if !retry.again("fsync", &e) {
                return;
            }
        }
    }
}

/// How the file writer retries a write that fails (a full disk): every second for as long as
/// it takes, so nothing accepted is lost while floodgate runs; once it is stopping, three
/// more tries in all, then what cannot be written is dropped and counted, so a full disk
/// cannot hold the shutdown past its budget (the receive threads waiting on this output, and
/// the final flush after them).
struct Retry<'a> {
    counters: &'a OutputCounters,
    stopping: &'a AtomicBool,
    tries_left: u32,
}

impl Retry<'_> {
    /// After a failed `what`: waits to try again (true), or gives up (false).
    fn again(&mut self, what: &str, e: &std::io::Error) -> bool {
        self.counters.errors.fetch_add(1, Relaxed);
        if self.stopping.load(Relaxed) {
            if self.tries_left == 0 {
                return false;
            }
            self.tries_left -= 1;
        }
        tracing::error!(error = %e, "syslog output {what} failed; retrying in 1s");
        std::thread::sleep(Duration::from_secs(1));
        true
    }
}

/// The file/stdout writer: chunks as they come, flushed whenever the channel runs dry, synced
/// to disk as `fsync` says.
fn write_lines(
    mut rx: mpsc::Receiver<Chunk>,
    out: Out,
    reopen: Option<(PathBuf, Arc<AtomicBool>)>,
    fsync: Fsync,
    counters: &OutputCounters,
    stopping: &AtomicBool,
    runtime: &tokio::runtime::Handle,
) {
    let mut retry = Retry { counters, stopping, tries_left: 3 };
    let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
    // Written but not yet synced since (with an interval policy).
    let mut unsynced_since: Option<Instant> = None;
    loop {
        let first = match (fsync, unsynced_since) {
            (Fsync::Interval(every), Some(since)) => {
                let left = every.saturating_sub(since.elapsed());
                match runtime.block_on(async { tokio::time::timeout(left, rx.recv()).await }) {
                    Ok(Some(c)) => c,
                    Ok(None) => break,
                    Err(_) => {
                        sync(&mut out, &mut retry);
                        unsynced_since = None;
                        continue;
                    }
                }
            }
            _ => match rx.blocking_recv() {
                Some(c) => c,
                None => break,
            },
        };
        if let Some((path, flag)) = &reopen {
            if flag.swap(false, Relaxed) {
                if fsync == Fsync::Never {
                    flush_retrying(&mut out, &mut retry);
                } else {
                    sync(&mut out, &mut retry);
                }
                match open_append(path) {
                    Ok(f) => {
                        out = std::io::BufWriter::with_capacity(1 << 20, Out::File(f));
                        tracing::info!(path = %path.display(), "syslog output reopened");
                    }
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "syslog output: reopen failed; writing on"),
                }
            }
        }
        let mut chunk = Some(first);
        while let Some(c) = chunk.take().or_else(|| rx.try_recv().ok()) {
            if write_retrying(&mut out, &c.bytes, &mut retry) {
                counters.written_messages.fetch_add(c.messages, Relaxed);
                counters.written_bytes.fetch_add(c.bytes.len() as u64, Relaxed);
            } else {
                counters.dropped_messages.fetch_add(c.messages, Relaxed);
                tracing::error!(messages = c.messages, "stopping: syslog output still failing; records dropped");
            }
        }
        match fsync {
            Fsync::Never => flush_retrying(&mut out, &mut retry),
            Fsync::Always => sync(&mut out, &mut retry),
            Fsync::Interval(every) => {
                flush_retrying(&mut out, &mut retry);
                let since = *unsynced_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= every {
                    sync(&mut out, &mut retry);
                    unsynced_since = None;
                }
            }
        }
    }
    if fsync == Fsync::Never {
        flush_retrying(&mut out, &mut retry);
    } else {
        sync(&mut out, &mut retry);
    }
}

/// A full disk must not lose records: retry (and count, and say so) until the write goes, or
/// (stopping) [`Retry`] gives up: false.
fn write_retrying(out: &mut impl Write, bytes: &[u8], retry: &mut Retry<'_>) -> bool {
    let mut written = 0;
    while written < bytes.len() {
        match out.write(&bytes[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                if !retry.again("write", &e) {
                    return false;
                }
            }
        }
    }
    true
}

fn flush_retrying(out: &mut impl Write, retry: &mut Retry<'_>) {
    while let Err(e) = out.flush() {
        if !retry.again("flush", &e) {
            return;
        }
    }
}

const TIMEOUT: Duration = Duration::from_secs(10);

impl Entry for Chunk {
    fn bytes(&self) -> u64 {
        self.bytes.len() as u64
    }
}

/// The forward output's queue: memory first, then the spill file; always in order.
struct Queue {
    memory: Bounded<Chunk>,
    spill: Option<Spill>,
    /// The chunk last taken out came from the spill file (its write moves the saved position).
    popped_from_spill: bool,
    counters: Arc<OutputCounters>,
}

/// Chunks on disk: `u32 length, u64 messages, bytes` records (big-endian) in a [`DiskLog`],
/// read from its start. Where the unsent records start is saved in `<spill>.pos` (8 bytes,
/// little-endian) each time a chunk from the file has been written to the server, so the next
/// run sends what this one did not: after a restart nothing is lost, and after a crash at most
/// the chunk in flight is sent twice. The file is emptied when everything in it has been sent.
struct Spill {
    log: DiskLog<ChunkHead>,
    held_messages: u64,
}

/// A spill record's head.
struct ChunkHead {
    messages: u64,
}

impl Head for ChunkHead {
    const LEN: usize = 12;

    fn encode(&self, body_len: u32, out: &mut [u8]) {
        out[..4].copy_from_slice(&body_len.to_be_bytes());
        out[4..12].copy_from_slice(&self.messages.to_be_bytes());
    }

    fn decode(bytes: &[u8]) -> (Self, u64) {
        let len = u32::from_be_bytes(bytes[..4].try_into().unwrap_or_default());
        let messages = u64::from_be_bytes(bytes[4..12].try_into().unwrap_or_default());
        (ChunkHead { messages }, u64::from(len))
    }

    /// A chunk holds at least one message, and never more messages than bytes.
    fn plausible(&self, body_len: u64, _: Option<&Self>) -> bool {
        self.messages >= 1 && self.messages <= body_len.max(1)
    }
}

impl Spill {
    /// Opens the spill file, keeping what an earlier run left unsent (what cannot be read as
    /// records is set aside).
    fn open(path: &std::path::Path, max: u64, fsync: Fsync) -> Result<Spill> {
        let pos_path = PathBuf::from(format!("{}.pos", path.display()));
        let mut log: DiskLog<ChunkHead> = DiskLog::open(path, &pos_path, max, fsync, "syslog-fsync")
            .with_context(|| format!("cannot open syslog spill file {}", path.display()))?;
        let mut saved = [0u8; 8];
        let read_at = if log.mark(&mut saved) { u64::from_le_bytes(saved) } else { 0 };
        let found = log.recover(read_at).with_context(|| format!("syslog spill file {}", path.display()))?;
        let held_messages = found.iter().map(|f| f.head.messages).sum();
        if held_messages > 0 {
            tracing::info!(path = %path.display(), messages = held_messages, bytes = log.held(), "syslog spill file: sending what the last run left unsent");
        }
        Ok(Spill { log, held_messages })
    }

    /// Appends a chunk; false when the file is full.
    fn push(&mut self, chunk: &Chunk) -> std::io::Result<bool> {
        let taken = self.log.append(&ChunkHead { messages: chunk.messages }, &chunk.bytes)?;
        if taken {
            self.held_messages += chunk.messages;
        }
        Ok(taken)
    }

    fn pop(&mut self) -> std::io::Result<Option<Chunk>> {
        let Some((head, bytes)) = self.log.first()? else { return Ok(None) };
        self.log.advance()?;
        self.held_messages -= head.messages.min(self.held_messages);
        Ok(Some(Chunk { bytes, messages: head.messages }))
    }

    /// What was taken out has been written to the server: save the position (and empty the file
    /// once all of it has been).
    fn commit(&mut self) -> std::io::Result<()> {
        if self.log.is_empty() {
            self.log.clear()?;
        }
        self.log.set_mark(&self.log.start().to_le_bytes())?;
        self.log.settle()
    }

    /// Rewrites the file as `first` followed by what it still holds unsent (at shutdown: the
    /// memory queue is older than the file's records), so the next run sends it all in order.
    fn keep(&mut self, first: &mut Bounded<Chunk>) -> std::io::Result<u64> {
        let older: u64 = first.iter().map(|c| c.messages).sum();
        self.log.rewrite(first.iter().map(|c| (ChunkHead { messages: c.messages }, &c.bytes[..])), true)?;
        first.drain().for_each(drop);
        self.log.set_mark_synced(&0u64.to_le_bytes())?;
        self.held_messages += older;
        Ok(self.held_messages)
    }

    fn held(&self) -> u64 {
        self.log.held()
    }
}

impl Queue {
    fn is_empty(&self) -> bool {
        self.memory.is_empty() && self.spill.as_ref().is_none_or(|s| s.held() == 0)
    }

    fn push(&mut self, chunk: Chunk) {
        let spilling = self.spill.as_ref().is_some_and(|s| s.held() > 0);
        if !spilling && self.memory.fits(chunk.bytes.len() as u64) {
            self.memory.push(chunk, |_| {});
        } else if let Some(spill) = &mut self.spill {
            match spill.push(&chunk) {
                Ok(true) => {}
                Ok(false) => self.drop_chunk(&chunk, "spill file full"),
                Err(e) => {
                    tracing::error!(path = %spill.log.path().display(), error = %e, "syslog spill write failed");
                    self.drop_chunk(&chunk, "spill write failed");
                }
            }
        } else {
            self.drop_chunk(&chunk, "buffer full");
        }
        self.publish();
    }

    fn drop_chunk(&self, chunk: &Chunk, why: &str) {
        tracing::warn!(messages = chunk.messages, why, "syslog forward: dropping messages");
        self.counters.dropped_messages.fetch_add(chunk.messages, Relaxed);
    }

    /// The oldest chunk, taken out (memory holds the oldest; the spill what came after).
    fn pop(&mut self) -> Option<Chunk> {
        self.popped_from_spill = false;
        let chunk = match self.memory.pop_front() {
            Some(c) => Some(c),
            None => match self.spill.as_mut().map(Spill::pop) {
                Some(Ok(c)) => {
                    self.popped_from_spill = c.is_some();
                    c
                }
                Some(Err(e)) => {
                    tracing::error!(error = %e, "syslog spill read failed; its contents are lost");
                    if let Some(s) = &mut self.spill {
                        self.counters.dropped_messages.fetch_add(s.held_messages, Relaxed);
                        let _ = s.log.clear();
                        s.held_messages = 0;
                        let _ = s.commit();
                    }
                    None
                }
                None => None,
            },
        };
        self.publish();
        chunk
    }

    /// The chunk last taken out was written to the server.
    fn written(&mut self) {
        if std::mem::take(&mut self.popped_from_spill) {
            if let Some(spill) = &mut self.spill {
                if let Err(e) = spill.commit() {
                    tracing::error!(path = %spill.log.path().display(), error = %e, "syslog spill: cannot save the read position");
                }
            }
        }
    }

    /// Puts back a chunk that could not be written (it stays first).
    fn unpop(&mut self, chunk: Chunk) {
        self.popped_from_spill = false;
        self.memory.push_front(chunk);
        self.publish();
    }

    /// At shutdown, what is still held goes into the spill file for the next run; returns the
    /// messages kept, or `None` without a spill file.
    fn keep(&mut self) -> Option<u64> {
        let spill = self.spill.as_mut()?;
        match spill.keep(&mut self.memory) {
            Ok(kept) => Some(kept),
            Err(e) => {
                tracing::error!(path = %spill.log.path().display(), error = %e, "syslog spill: cannot keep the held messages");
                None
            }
        }
    }

    fn publish(&self) {
        let memory_messages: u64 = self.memory.iter().map(|c| c.messages).sum();
        let spill = self.spill.as_ref();
        self.counters.buffer_bytes.store(self.memory.bytes(), Relaxed);
        self.counters.spill_bytes.store(spill.map_or(0, Spill::held), Relaxed);
        self.counters.buffer_messages.store(memory_messages + spill.map_or(0, |s| s.held_messages), Relaxed);
    }
}

/// The forward output's task.
struct Forwarder {
    address: String,
    tls: Option<crate::net::TlsTarget>,
    queue: Queue,
    counters: Arc<OutputCounters>,
}

impl Forwarder {
    fn new(config: &SyslogForward, counters: Arc<OutputCounters>) -> Result<Forwarder> {
        let tls = match &config.tls {
            Some(tls) => Some(crate::net::tls_target(tls, &config.address)?),
            None => None,
        };
        let spill = match &config.spill {
            // Records are whole octet-counted messages: what an earlier run left is sent first.
            Some(path) => Some(Spill::open(path, config.spill_max, config.fsync)?),
            None => None,
        };
        let queue =
            Queue { memory: Bounded::new(config.buffer), spill, popped_from_spill: false, counters: counters.clone() };
        queue.publish();
        Ok(Forwarder { address: config.address.clone(), tls, queue, counters })
    }

    async fn run(mut self, rx: mpsc::Receiver<Chunk>, drain: Duration) {
        let mut conn: Option<Connection> = None;
        let mut backoff = Backoff::default();
        // The channel closes at shutdown: from then on the drain runs, whether or not the
        // queue is empty (a server that accepts but never reads must not hold shutdown up
        // forever).
        let mut inbox = Inbox::new(rx, drain);
        loop {
            inbox.take_ready(|c| self.queue.push(c));
            // Connects and writes wait at most until the drain's end once closing.
            let patience = inbox.patience(TIMEOUT);
            if self.queue.is_empty() {
                if inbox.closing() {
                    break;
                }
                if let Some(c) = &mut conn {
                    // Idle: make sure everything written has left before waiting.
                    let _ = c.flush().await;
                }
                if let Some(c) = inbox.next().await {
                    self.queue.push(c);
                }
                continue;
            }
            if inbox.drain_over() {
                match self.queue.keep() {
                    Some(kept) => {
                        tracing::warn!(messages = kept, "syslog forward: server still unreachable at shutdown; messages kept in the spill file for the next start");
                    }
                    None => {
                        let held = self.counters.buffer_messages.load(Relaxed);
                        tracing::error!(
                            messages = held,
                            "syslog forward: shutdown drain timed out; messages lost (set a spill file to keep them)"
                        );
                        self.counters.dropped_messages.fetch_add(held, Relaxed);
                    }
                }
                break;
            }
            if conn.as_mut().is_some_and(server_closed) {
                conn = None;
                self.counters.connected.store(0, Relaxed);
                tracing::warn!(address = %self.address, "syslog forward: server closed the connection");
            }
            let Some(c) = &mut conn else {
                match crate::net::dial(&self.address, self.tls.as_ref(), patience).await {
                    Ok(c) => {
                        tracing::info!(address = %self.address, "syslog forward: connected");
                        conn = Some(c);
                        backoff.succeeded();
                        self.counters.connected.store(1, Relaxed);
                    }
                    Err(e) => {
                        self.counters.errors.fetch_add(1, Relaxed);
                        let retry_in = backoff.failed();
                        tracing::warn!(address = %self.address, error = %e, ?retry_in, "syslog forward: cannot connect");
                        // Keep taking chunks while waiting, so listeners are not held up.
                        inbox.wait(retry_in, |c| self.queue.push(c)).await;
                    }
                }
                continue;
            };
            let Some(chunk) = self.queue.pop() else { continue };
            // A write to a server that stopped reading blocks until its timeout; meanwhile
            // chunks keep coming in, and shutdown starts the drain clock at once.
            let write = tokio::time::timeout(patience, c.write_all(&chunk.bytes));
            tokio::pin!(write);
            let result: std::result::Result<(), String> = loop {
                let drain_over = inbox.until_drain_over();
                tokio::select! {
                    r = &mut write => break match r {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err("write timed out".into()),
                    },
                    more = inbox.next(), if !inbox.closing() => {
                        if let Some(more) = more {
                            self.queue.push(more);
                        }
                    },
                    _ = drain_over => break Err("shutdown drain over".into()),
                }
            };
            match result {
                Ok(()) => {
                    self.queue.written();
                    self.counters.written_messages.fetch_add(chunk.messages, Relaxed);
                    self.counters.written_bytes.fetch_add(chunk.bytes.len() as u64, Relaxed);
                }
                Err(error) => {
                    tracing::warn!(address = %self.address, %error, "syslog forward: write failed; resending");
                    self.counters.errors.fetch_add(1, Relaxed);
                    self.counters.connected.store(0, Relaxed);
                    conn = None;
                    self.queue.unpop(chunk);
                }
            }
        }
        if let Some(mut c) = conn {
            // What the drain left (a second at least) to flush and close politely.
            let left = inbox
                .drain_ends()
                .map_or(TIMEOUT, |end| end.saturating_duration_since(tokio::time::Instant::now()))
                .max(Duration::from_secs(1));
            let _ = tokio::time::timeout(left, async {
                let _ = c.flush().await;
                let _ = c.shutdown().await;
            })
            .await;
        }
        self.counters.connected.store(0, Relaxed);
    }
}

/// Whether the server has closed (or reset) the connection: reads polled without waiting.
/// Data from the server (TLS session tickets aside, which the TLS layer consumes) is ignored.
fn server_closed(conn: &mut Connection) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match crate::net::stream::read_now(conn, &mut buf) {
            ReadNow::Data(_) => continue,
            ReadNow::Eof | ReadNow::Error => return true,
            ReadNow::Pending => return false,
        }
    }
}

/// The output's figures, labelled by its kind (`output="forward"`).
pub struct OutputReport {
    /// `file`, `stdout` or `forward`.
    pub kind: String,
    /// Its counters.
    pub counters: Arc<OutputCounters>,
}

impl crate::metrics::Report for OutputReport {
    fn report(&self, out: &mut crate::metrics::Families) {
        use crate::metrics::{Describe, StatusPlace};
        let c = &self.counters;
        let place = |key| StatusPlace::one("syslog_output", key);
        let rows: [(Describe, &AtomicU64); 8] = [
            (
                Describe::counter("floodgate_syslog_output_messages_total", "Syslog records written or forwarded.")
                    .status(place("messages")),
                &c.written_messages,
            ),
            (Describe::counter("floodgate_syslog_output_bytes_total", "Bytes written or forwarded."), &c.written_bytes),
            (
                Describe::counter(
                    "floodgate_syslog_output_errors_total",
                    "Failed writes, connects and lost connections.",
                )
                .status(place("errors")),
                &c.errors,
            ),
            (
                Describe::counter(
                    "floodgate_syslog_output_dropped_total",
                    "Messages dropped: buffer and spill full, or held past the shutdown drain.",
                )
                .status(place("dropped")),
                &c.dropped_messages,
            ),
            (
                Describe::gauge("floodgate_syslog_output_buffer_bytes", "Bytes waiting in memory.")
                    .status(place("buffer_bytes")),
                &c.buffer_bytes,
            ),
            (
                Describe::gauge("floodgate_syslog_output_buffer_messages", "Messages waiting (memory and spill).")
                    .status(place("buffer_messages")),
                &c.buffer_messages,
            ),
            (
                Describe::gauge("floodgate_syslog_output_spill_bytes", "Bytes waiting in the spill file."),
                &c.spill_bytes,
            ),
            (
                Describe::gauge("floodgate_syslog_output_connected", "1 while the forward output is connected.")
                    .status(place("connected")),
                &c.connected,
            ),
        ];
        for (describe, v) in rows {
            out.add(describe, &[("output", &self.kind)], v.load(Relaxed));
        }
    }
}

/// The record output (`[syslog] output`), open while anything can produce records: syslog
/// listeners, and StatsD listeners (DogStatsD events and service checks are records too, and
/// go to the configured output whether or not syslog listens). Records go through the
/// [`RecordPipe`](crate::record::RecordPipe) this puts in the wiring.
pub fn build(
    shared: &Arc<crate::component::Shared>,
    config: &crate::config::Config,
    wiring: &mut crate::component::Wiring,
) -> Result<Option<Box<dyn super::Sink>>> {
    let y = &config.syslog;
    if !y.has_listeners() && !config.statsd.has_listeners() {
        return Ok(None);
    }
    let output =
        Output::start(&y.output, y.raw, Duration::from_secs(10), shared.stopping.clone()).context("[syslog] output")?;
    tracing::info!(output = %output.describe, "syslog output");
    let kind = output.describe.split(' ').next().unwrap_or_default().to_string();
    shared.metrics.add(Arc::new(OutputReport { kind, counters: output.counters.clone() }));
    wiring.records = Some(crate::record::RecordPipe { sender: output.sender.clone(), encoding: output.encoding });
    Ok(Some(Box::new(RecordOutput { reopen: output.reopen_flag(), running: y.output.clone(), output })))
}

/// The running output.
struct RecordOutput {
    output: Output,
    reopen: Arc<AtomicBool>,
    /// The output in force (a change needs a restart).
    running: SyslogOutput,
}

impl super::Sink for RecordOutput {
    fn name(&self) -> &'static str {
        "syslog"
    }

    fn reload(&mut self, config: &crate::config::Config) {
        // A file output reopens its path (logrotate renamed it).
        self.reopen.store(true, Relaxed);
        if config.syslog.output != self.running {
            tracing::warn!("SIGHUP: a change to the syslog output takes effect at the next restart");
        }
    }

    /// Once the listeners have ended (they hold its channel), hands on what is held.
    fn finish(self: Box<Self>) -> crate::component::Stopping {
        Box::pin(async move {
            tracing::info!(output = %self.output.describe, "syslog: handing on what is held");
            self.output.finish().await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 27 item 12: damage in the middle of the spill file (a length field overwritten)
    /// used to cut off every record after it, blamed on a crash. Now the records before it
    /// are kept for sending, the rest is set aside in a `.damaged-` file; a record really cut
    /// short at the end is set aside too, as a crash's.
    #[test]
    fn a_damaged_spill_file_keeps_what_it_can_and_sets_the_rest_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("syslog.spill");
        let mut spill = Spill::open(&path, 1 << 20, Fsync::Never).unwrap();
        for i in 0..5u8 {
            assert!(spill.push(&Chunk { bytes: vec![b'a' + i; 50], messages: 2 }).unwrap());
        }
        drop(spill);
        let third = 2 * (12 + 50);
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, &[0x7f, 0xff, 0xff, 0xff], third).unwrap();
        let spill = Spill::open(&path, 1 << 20, Fsync::Never).unwrap();
        assert_eq!((spill.held_messages, spill.log.len()), (4, third));
        let damaged = |dir: &std::path::Path| {
            std::fs::read_dir(dir)
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().contains(".damaged-"))
                .count()
        };
        assert_eq!(damaged(dir.path()), 1);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), third);
    }

    /// Spill files written by releases before the shared disk log open the same: records
    /// `u32 length, u64 messages` (big-endian) and the position (`u64`, little-endian) are
    /// written here by hand; the first record was already sent.
    #[test]
    fn a_spill_file_in_the_earlier_format_is_sent_from_its_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("syslog.spill");
        let mut file = Vec::new();
        for (messages, bytes) in [(1u64, &b"sent"[..]), (2, b"ab"), (1, b"c")] {
            file.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            file.extend_from_slice(&messages.to_be_bytes());
            file.extend_from_slice(bytes);
        }
        std::fs::write(&path, file).unwrap();
        std::fs::write(dir.path().join("syslog.spill.pos"), 16u64.to_le_bytes()).unwrap();
        let mut spill = Spill::open(&path, 1 << 20, Fsync::Never).unwrap();
        assert_eq!(spill.held_messages, 3);
        let chunk = spill.pop().unwrap().unwrap();
        assert_eq!((chunk.bytes, chunk.messages), (b"ab".to_vec(), 2));
        spill.commit().unwrap();
        assert_eq!(std::fs::read(dir.path().join("syslog.spill.pos")).unwrap(), 30u64.to_le_bytes());
        let chunk = spill.pop().unwrap().unwrap();
        assert_eq!((chunk.bytes, chunk.messages), (b"c".to_vec(), 1));
        spill.commit().unwrap();
        assert!(spill.pop().unwrap().is_none());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "emptied once all sent");
    }
}
