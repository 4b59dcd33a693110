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

use std::collections::VecDeque;
use std::io::{Read, Seek, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::config::{SyslogForward, SyslogOutput};
use crate::sources::listen::{Connection, ReadNow};

/// Encoded records from one batch of input.
#[derive(Debug, Default)]
pub struct Chunk {
    /// JSON lines, or octet-counted frames.
    pub bytes: Vec<u8>,
    /// Messages in it.
    pub messages: u64,
}

/// How listeners encode records for the output in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// One JSON object per line; `raw` adds the message as received.
    Json {
        /// Add `raw`.
        raw: bool,
    },
    /// `LEN SP MSG`, the message as received.
    OctetCounted,
}

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
    /// how long a forward output keeps trying at shutdown.
    pub fn start(config: &SyslogOutput, raw: bool, drain: Duration) -> Result<Output> {
        let (sender, rx) = mpsc::channel(CHANNEL);
        let counters = Arc::new(OutputCounters::default());
        let reopen = Arc::new(AtomicBool::new(false));
        let (task, encoding, describe) = match config {
            SyslogOutput::File { path } => {
                let file = open_append(path)?;
                let (c, r, path2) = (counters.clone(), reopen.clone(), path.clone());
                let thread = std::thread::Builder::new()
                    .name("syslog-out".into())
                    .spawn(move || write_lines(rx, Box::new(file), Some((path2, r)), &c))?;
                (OutputTask::Thread(thread), Encoding::Json { raw }, format!("file {}", path.display()))
            }
            SyslogOutput::Stdout => {
                let c = counters.clone();
                let thread = std::thread::Builder::new()
                    .name("syslog-out".into())
                    .spawn(move || write_lines(rx, Box::new(std::io::stdout()), None, &c))?;
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
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open syslog output {}", path.display()))
}

/// The file/stdout writer: chunks as they come, flushed whenever the channel runs dry.
fn write_lines(
    mut rx: mpsc::Receiver<Chunk>,
    out: Box<dyn Write + Send>,
    reopen: Option<(PathBuf, Arc<AtomicBool>)>,
    counters: &OutputCounters,
) {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
    while let Some(first) = rx.blocking_recv() {
        if let Some((path, flag)) = &reopen {
            if flag.swap(false, Relaxed) {
                let _ = out.flush();
                match open_append(path) {
                    Ok(f) => {
                        out = std::io::BufWriter::with_capacity(1 << 20, Box::new(f));
                        tracing::info!(path = %path.display(), "syslog output reopened");
                    }
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "syslog output: reopen failed; writing on"),
                }
            }
        }
        let mut chunk = Some(first);
        while let Some(c) = chunk.take().or_else(|| rx.try_recv().ok()) {
            write_retrying(&mut out, &c.bytes, counters);
            counters.written_messages.fetch_add(c.messages, Relaxed);
            counters.written_bytes.fetch_add(c.bytes.len() as u64, Relaxed);
        }
        flush_retrying(&mut out, counters);
    }
    flush_retrying(&mut out, counters);
}

/// A full disk must not lose records: retry (and count, and say so) until the write goes.
fn write_retrying(out: &mut impl Write, bytes: &[u8], counters: &OutputCounters) {
    let mut written = 0;
    while written < bytes.len() {
        match out.write(&bytes[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                counters.errors.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "syslog output write failed; retrying in 1s");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

fn flush_retrying(out: &mut impl Write, counters: &OutputCounters) {
    while let Err(e) = out.flush() {
        counters.errors.fetch_add(1, Relaxed);
        tracing::error!(error = %e, "syslog output flush failed; retrying in 1s");
        std::thread::sleep(Duration::from_secs(1));
    }
}

const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
const TIMEOUT: Duration = Duration::from_secs(10);

/// The forward output's queue: memory first, then the spill file; always in order.
struct Queue {
    memory: VecDeque<Chunk>,
    memory_bytes: u64,
    limit: u64,
    spill: Option<Spill>,
    counters: Arc<OutputCounters>,
}

/// Chunks on disk: `u32 length, u64 messages, bytes` records appended at the end and read from
/// `read_at`; the file is emptied when everything in it has been read.
struct Spill {
    path: PathBuf,
    file: std::fs::File,
    read_at: u64,
    len: u64,
    max: u64,
    held_messages: u64,
}

impl Spill {
    fn push(&mut self, chunk: &Chunk) -> std::io::Result<bool> {
        let size = 12 + chunk.bytes.len() as u64;
        if self.len - self.read_at + size > self.max {
            return Ok(false);
        }
        self.file.seek(std::io::SeekFrom::Start(self.len))?;
        self.file.write_all(&(chunk.bytes.len() as u32).to_be_bytes())?;
        self.file.write_all(&chunk.messages.to_be_bytes())?;
        self.file.write_all(&chunk.bytes)?;
        self.len += size;
        self.held_messages += chunk.messages;
        Ok(true)
    }

    fn pop(&mut self) -> std::io::Result<Option<Chunk>> {
        if self.read_at >= self.len {
            return Ok(None);
        }
        self.file.seek(std::io::SeekFrom::Start(self.read_at))?;
        let mut head = [0u8; 12];
        self.file.read_exact(&mut head)?;
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let messages = u64::from_be_bytes([head[4], head[5], head[6], head[7], head[8], head[9], head[10], head[11]]);
        let mut bytes = vec![0u8; len];
        self.file.read_exact(&mut bytes)?;
        self.read_at += 12 + len as u64;
        self.held_messages -= messages;
        if self.read_at >= self.len {
            self.file.set_len(0)?;
            (self.read_at, self.len) = (0, 0);
        }
        Ok(Some(Chunk { bytes, messages }))
    }

    fn held(&self) -> u64 {
        self.len - self.read_at
    }
}

impl Queue {
    fn is_empty(&self) -> bool {
        self.memory.is_empty() && self.spill.as_ref().is_none_or(|s| s.held() == 0)
    }

    fn push(&mut self, chunk: Chunk) {
        let spilling = self.spill.as_ref().is_some_and(|s| s.held() > 0);
        if !spilling && self.memory_bytes + chunk.bytes.len() as u64 <= self.limit {
            self.memory_bytes += chunk.bytes.len() as u64;
            self.memory.push_back(chunk);
        } else if let Some(spill) = &mut self.spill {
            match spill.push(&chunk) {
                Ok(true) => {}
                Ok(false) => self.drop_chunk(&chunk, "spill file full"),
                Err(e) => {
                    tracing::error!(path = %spill.path.display(), error = %e, "syslog spill write failed");
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
        let chunk = match self.memory.pop_front() {
            Some(c) => {
                self.memory_bytes -= c.bytes.len() as u64;
                Some(c)
            }
            None => match self.spill.as_mut().map(Spill::pop) {
                Some(Ok(c)) => c,
                Some(Err(e)) => {
                    tracing::error!(error = %e, "syslog spill read failed; its contents are lost");
                    if let Some(s) = &mut self.spill {
                        self.counters.dropped_messages.fetch_add(s.held_messages, Relaxed);
                        let _ = s.file.set_len(0);
                        (s.read_at, s.len, s.held_messages) = (0, 0, 0);
                    }
                    None
                }
                None => None,
            },
        };
        self.publish();
        chunk
    }

    /// Puts back a chunk that could not be written (it stays first).
    fn unpop(&mut self, chunk: Chunk) {
        self.memory_bytes += chunk.bytes.len() as u64;
        self.memory.push_front(chunk);
        self.publish();
    }

    fn publish(&self) {
        let memory_messages: u64 = self.memory.iter().map(|c| c.messages).sum();
        let spill = self.spill.as_ref();
        self.counters.buffer_bytes.store(self.memory_bytes, Relaxed);
        self.counters.spill_bytes.store(spill.map_or(0, Spill::held), Relaxed);
        self.counters.buffer_messages.store(memory_messages + spill.map_or(0, |s| s.held_messages), Relaxed);
    }
}

/// The forward output's task.
struct Forwarder {
    address: String,
    tls: Option<crate::sinks::TlsTarget>,
    queue: Queue,
    counters: Arc<OutputCounters>,
}

impl Forwarder {
    fn new(config: &SyslogForward, counters: Arc<OutputCounters>) -> Result<Forwarder> {
        let tls = match &config.tls {
            Some(tls) => Some(crate::sinks::tls_target(tls, &config.address)?),
            None => None,
        };
        let spill = match &config.spill {
            Some(path) => {
                // Anything left from an earlier run is not ours to resend (its framing state is
                // unknown); start empty.
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .read(true)
                    .write(true)
                    .open(path)
                    .with_context(|| format!("cannot open syslog spill file {}", path.display()))?;
                Some(Spill { path: path.clone(), file, read_at: 0, len: 0, max: config.spill_max, held_messages: 0 })
            }
            None => None,
        };
        let queue =
            Queue { memory: VecDeque::new(), memory_bytes: 0, limit: config.buffer, spill, counters: counters.clone() };
        Ok(Forwarder { address: config.address.clone(), tls, queue, counters })
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Chunk>, drain: Duration) {
        let mut conn: Option<Connection> = None;
        let mut backoff = MIN_BACKOFF;
        let mut closing_since: Option<Instant> = None;
        loop {
            while let Ok(c) = rx.try_recv() {
                self.queue.push(c);
            }
            if self.queue.is_empty() {
                if closing_since.is_some() {
                    break;
                }
                if let Some(c) = &mut conn {
                    // Idle: make sure everything written has left before waiting.
                    let _ = c.flush().await;
                }
                match rx.recv().await {
                    Some(c) => self.queue.push(c),
                    None => closing_since = Some(Instant::now()),
                }
                continue;
            }
            if closing_since.is_some_and(|t| t.elapsed() > drain) {
                let held = self.counters.buffer_messages.load(Relaxed);
                tracing::error!(messages = held, "syslog forward: shutdown drain timed out; messages lost");
                self.counters.dropped_messages.fetch_add(held, Relaxed);
                break;
            }
            if conn.as_mut().is_some_and(server_closed) {
                conn = None;
                self.counters.connected.store(0, Relaxed);
                tracing::warn!(address = %self.address, "syslog forward: server closed the connection");
            }
            let Some(c) = &mut conn else {
                match crate::sinks::dial(&self.address, self.tls.as_ref(), TIMEOUT).await {
                    Ok(c) => {
                        tracing::info!(address = %self.address, "syslog forward: connected");
                        conn = Some(c);
                        backoff = MIN_BACKOFF;
                        self.counters.connected.store(1, Relaxed);
                    }
                    Err(e) => {
                        self.counters.errors.fetch_add(1, Relaxed);
                        tracing::warn!(address = %self.address, error = %e, retry_in = ?backoff, "syslog forward: cannot connect");
                        // Keep taking chunks while waiting, so listeners are not held up.
                        let wake = tokio::time::sleep(backoff);
                        tokio::pin!(wake);
                        loop {
                            tokio::select! {
                                _ = &mut wake => break,
                                c = rx.recv(), if closing_since.is_none() => match c {
                                    Some(c) => self.queue.push(c),
                                    None => closing_since = Some(Instant::now()),
                                },
                            }
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
                continue;
            };
            let Some(chunk) = self.queue.pop() else { continue };
            match tokio::time::timeout(TIMEOUT, c.write_all(&chunk.bytes)).await {
                Ok(Ok(())) => {
                    self.counters.written_messages.fetch_add(chunk.messages, Relaxed);
                    self.counters.written_bytes.fetch_add(chunk.bytes.len() as u64, Relaxed);
                }
                result => {
                    let error = match result {
                        Ok(Err(e)) => e.to_string(),
                        _ => "write timed out".into(),
                    };
                    tracing::warn!(address = %self.address, %error, "syslog forward: write failed; resending");
                    self.counters.errors.fetch_add(1, Relaxed);
                    self.counters.connected.store(0, Relaxed);
                    conn = None;
                    self.queue.unpop(chunk);
                }
            }
        }
        if let Some(mut c) = conn {
            let _ = tokio::time::timeout(TIMEOUT, async {
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
        match crate::sources::listen::read_now(conn, &mut buf) {
            ReadNow::Data(_) => continue,
            ReadNow::Eof | ReadNow::Error => return true,
            ReadNow::Pending => return false,
        }
    }
}
