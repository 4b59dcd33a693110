//! The sender: prebuilt datagrams of counter lines, sent in `sendmmsg` batches, paced to a
//! rate, with a progress line on stderr.

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use floodgate::sys::SendBatch;

/// What to send.
#[derive(Debug, Clone)]
pub struct Load {
    /// Lines per second; 0 = as fast as possible.
    pub rate: u64,
    /// Lines per datagram.
    pub lines: usize,
    /// Distinct counter names.
    pub cardinality: usize,
    /// Sender threads, each from its own source address (127.0.0.2 onwards).
    pub sources: usize,
    /// Metric name prefix (`PREFIX.kN:1|c`).
    pub prefix: String,
}

/// What was sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sent {
    /// Lines the kernel accepted (each a `:1|c` increment).
    pub lines: u64,
    /// Datagrams.
    pub datagrams: u64,
    /// Time spent.
    pub elapsed: Duration,
}

const BATCH: usize = 64;

/// The datagrams cycled through: every name appears, `lines` per datagram.
pub fn pool(load: &Load) -> Vec<Vec<u8>> {
    let count = (load.cardinality.div_ceil(load.lines)).max(BATCH);
    let mut key = 0;
    (0..count)
        .map(|_| {
            let mut d = Vec::with_capacity(load.lines * 24);
            for _ in 0..load.lines {
                d.extend_from_slice(format!("{}.k{}:1|c\n", load.prefix, key % load.cardinality).as_bytes());
                key += 1;
            }
            d.pop(); // no trailing newline, as clients send
            d
        })
        .collect()
}

/// Sends for `duration`, one thread per source address; `label` prefixes the progress line.
pub fn send(target: SocketAddr, load: &Load, duration: Duration, label: &str) -> Sent {
    let pool = pool(load);
    let threads = load.sources.max(1);
    let total_lines = AtomicU64::new(0);
    let results: Vec<Sent> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let (pool, total_lines) = (&pool, &total_lines);
                let rate = load.rate / threads as u64;
                let show = (i == 0).then_some(label);
                scope.spawn(move || send_from(target, pool, load.lines as u64, rate, i, duration, show, total_lines))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("sender thread")).collect()
    });
    eprint!("\r{:100}\r", "");
    Sent {
        lines: results.iter().map(|r| r.lines).sum(),
        datagrams: results.iter().map(|r| r.datagrams).sum(),
        elapsed: results.iter().map(|r| r.elapsed).max().unwrap_or_default(),
    }
}

/// One sender thread: from 127.0.0.(2 + `source`), `rate` lines/s (0 = as fast as the kernel
/// takes them); the thread with a `label` prints progress for all (`total_lines`).
#[allow(clippy::too_many_arguments)]
fn send_from(
    target: SocketAddr,
    pool: &[Vec<u8>],
    lines_each: u64,
    rate: u64,
    source: usize,
    duration: Duration,
    label: Option<&str>,
    total_lines: &AtomicU64,
) -> Sent {
    let sock = UdpSocket::bind(format!("127.0.0.{}:0", 2 + source)).expect("bind a 127.0.0.x source");
    let _ = socket2::SockRef::from(&sock).set_send_buffer_size(8 << 20);
    let mut batch = SendBatch::new(target);
    let start = Instant::now();
    let mut sent = Sent::default();
    let mut next_progress = Duration::from_secs(1);
    let mut idx = source * 7919;
    let mut refs: Vec<&[u8]> = Vec::with_capacity(BATCH);
    while start.elapsed() < duration {
        let elapsed = start.elapsed();
        let mut n = BATCH;
        if rate > 0 {
            let due = (rate as f64 * elapsed.as_secs_f64() / lines_each as f64) as u64;
            let owed = due.saturating_sub(sent.datagrams) as usize;
            if owed == 0 {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            n = owed.min(BATCH);
        }
        refs.clear();
        for _ in 0..n {
            refs.push(&pool[idx % pool.len()]);
            idx += 1;
        }
        match batch.send(sock.as_raw_fd(), &refs) {
            Ok(k) => {
                sent.datagrams += k as u64;
                sent.lines += k as u64 * lines_each;
                total_lines.fetch_add(k as u64 * lines_each, Ordering::Relaxed);
                // Whatever the kernel did not take is not counted as sent; resend from there.
                idx -= n - k;
            }
            Err(e) if e.raw_os_error() == Some(libc_enobufs()) || e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("send failed: {e}"),
        }
        if let Some(label) = label.filter(|_| elapsed >= next_progress) {
            let lines = total_lines.load(Ordering::Relaxed);
            eprint!(
                "\r  {label}: {:>4.1}s  sent {:>6.2}M lines  {:>6.3}M lines/s   ",
                elapsed.as_secs_f64(),
                lines as f64 / 1e6,
                lines as f64 / elapsed.as_secs_f64() / 1e6
            );
            let _ = std::io::stderr().flush();
            next_progress += Duration::from_secs(1);
        }
    }
    sent.elapsed = start.elapsed();
    sent
}

/// ENOBUFS: the send queue is momentarily full; try again.
fn libc_enobufs() -> i32 {
    105
}
