//! The file and stdout writer: one thread, chunks as they come, flushed whenever the channel
//! runs dry, synced as `fsync` says, reopened after SIGHUP; a failing disk is retried, never
//! a reason to drop what was accepted while floodgate runs.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::mpsc;

use super::{Chunk, OutputCounters};
use crate::config::Fsync;
use crate::sinks::delivery::file_sync::FileSync;

pub(super) fn open_append(path: &std::path::Path) -> Result<std::fs::File> {
    crate::files::append(path).with_context(|| format!("cannot open syslog output {}", path.display()))
}

/// Where the file/stdout writer writes.
pub(super) enum Out {
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

/// Small chunks (a quiet listener's) are gathered up to this before a write; a chunk this size
/// or larger (a busy listener's: up to 256 KiB of records) is written as it is, not copied
/// into the buffer first (that copy was 2 % of the TCP path's CPU).
const WRITE_BUFFER: usize = 64 * 1024;

/// The file/stdout writer: chunks as they come, flushed whenever the channel runs dry, synced
/// to disk as `fsync` says ([`FileSync`]: `always` before the next chunk is taken, an
/// interval within it of the write even when nothing follows).
pub(super) fn write_lines(
    mut rx: mpsc::Receiver<Chunk>,
    out: Out,
    reopen: Option<(PathBuf, Arc<AtomicBool>)>,
    fsync: Fsync,
    counters: &OutputCounters,
    stopping: &AtomicBool,
) {
    let mut retry = Retry { counters, stopping, tries_left: 3 };
    let file_sync = match &out {
        Out::File(f) => match FileSync::new(fsync, &[f], "syslog-out-sync") {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "syslog output: cannot start its fsync thread; syncing every write");
                FileSync::new(Fsync::Always, &[f], "syslog-out-sync").ok()
            }
        },
        Out::Stdout(_) => None,
    };
    let mut out = std::io::BufWriter::with_capacity(WRITE_BUFFER, out);
    while let Some(first) = rx.blocking_recv() {
        if let Some((path, flag)) = &reopen {
            if flag.swap(false, Relaxed) {
                // What went to the old file is on disk before it is let go.
                if fsync == Fsync::Never {
                    flush_retrying(&mut out, &mut retry);
                } else {
                    sync(&mut out, &mut retry);
                }
                match open_append(path) {
                    Ok(f) => {
                        if let Some(s) = &file_sync {
                            if let Err(e) = s.replaced(&[&f]) {
                                tracing::error!(error = %e, "syslog output: the fsync thread keeps the old file");
                            }
                        }
                        out = std::io::BufWriter::with_capacity(WRITE_BUFFER, Out::File(f));
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
            c.recycle();
        }
        flush_retrying(&mut out, &mut retry);
        if let (Some(s), Out::File(f)) = (&file_sync, out.get_ref()) {
            while let Err(e) = s.written(&[f]) {
                if !retry.again("fsync", &e) {
                    break;
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
