//! The sender: prebuilt datagrams of StatsD lines (a chosen mix of types), sent in `sendmmsg`
//! batches from several 127.0.0.x sources and threads, paced to a rate, with a progress line
//! on stderr.

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
    /// Distinct names per type.
    pub cardinality: usize,
    /// Sender threads.
    pub threads: usize,
    /// Source addresses (127.0.0.2 onwards), spread over the threads, rotated per batch.
    pub sources: usize,
    /// Metric name prefix (`PREFIX.kN:1|c`, `PREFIX.tN:V|ms`, `PREFIX.gN:V|g`, `PREFIX.sN:uV|s`).
    pub prefix: String,
    /// Type mix.
    pub mix: Mix,
}

impl Load {
    /// Counters only, from `threads` threads and as many sources.
    pub fn counters(rate: u64, lines: usize, cardinality: usize, threads: usize, prefix: &str) -> Load {
        Load { rate, lines, cardinality, threads, sources: threads, prefix: prefix.into(), mix: Mix::COUNTERS }
    }
}

/// Relative weights of the line types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    /// Counters (`c`, value 1: these are what loss is measured on).
    pub counter: u32,
    /// Timers (`ms`).
    pub timer: u32,
    /// Gauges (`g`).
    pub gauge: u32,
    /// Sets (`s`).
    pub set: u32,
}

impl Mix {
    /// Counters only.
    pub const COUNTERS: Mix = Mix { counter: 1, timer: 0, gauge: 0, set: 0 };

    fn total(&self) -> u32 {
        self.counter + self.timer + self.gauge + self.set
    }
}

impl std::str::FromStr for Mix {
    type Err = String;

    /// `c=80,ms=10,g=5,s=5`.
    fn from_str(text: &str) -> Result<Mix, String> {
        let mut mix = Mix { counter: 0, timer: 0, gauge: 0, set: 0 };
        for part in text.split(',') {
            let (k, v) = part.split_once('=').ok_or(format!("`{part}`: expected TYPE=WEIGHT"))?;
            let v: u32 = v.parse().map_err(|_| format!("`{v}` is not a weight"))?;
            match k {
                "c" => mix.counter = v,
                "ms" => mix.timer = v,
                "g" => mix.gauge = v,
                "s" => mix.set = v,
                _ => return Err(format!("unknown type `{k}` (c, ms, g, s)")),
            }
        }
        if mix.total() == 0 {
            return Err("all weights are 0".into());
        }
        Ok(mix)
    }
}

/// One prebuilt datagram.
pub struct Datagram {
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// Counter increments in it.
    pub counters: u64,
}

/// What was sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sent {
    /// Lines the kernel accepted.
    pub lines: u64,
    /// Counter increments among them (each `:1|c`).
    pub counters: u64,
    /// Datagrams.
    pub datagrams: u64,
    /// Time spent.
    pub elapsed: Duration,
}

const BATCH: usize = 64;

/// The datagrams cycled through: every name appears, `lines` per datagram, types interleaved
/// by their weights.
pub fn pool(load: &Load) -> Vec<Datagram> {
    let count = (load.cardinality.div_ceil(load.lines)).max(BATCH);
    let total = load.mix.total().max(1);
    let mut j: u64 = 0;
    (0..count)
        .map(|_| {
            let mut d = Datagram { bytes: Vec::with_capacity(load.lines * 24), counters: 0 };
            for _ in 0..load.lines {
                let key = j % load.cardinality as u64;
                let slot = (j % u64::from(total)) as u32;
                let m = load.mix;
                let p = &load.prefix;
                let line = if slot < m.counter {
                    d.counters += 1;
                    format!("{p}.k{key}:1|c\n")
                } else if slot < m.counter + m.timer {
                    format!("{p}.t{key}:{}|ms\n", j % 997)
                } else if slot < m.counter + m.timer + m.gauge {
                    format!("{p}.g{key}:{}|g\n", j % 101)
                } else {
                    format!("{p}.s{key}:u{}|s\n", j % 5003)
                };
                d.bytes.extend_from_slice(line.as_bytes());
                j += 1;
            }
            d.bytes.pop(); // no trailing newline, as clients send
            d
        })
        .collect()
}

/// Sends for `duration` from `load.threads` threads; `label` prefixes the progress line.
pub fn send(target: SocketAddr, load: &Load, duration: Duration, label: &str) -> Sent {
    let pool = pool(load);
    send_pool(target, &pool, load.lines as u64, load.rate, load.threads, load.sources, duration, label)
}

/// Sends datagrams from `pool` in turn (each holding `lines_each` lines) at `rate` lines/s
/// (0 = as fast as the kernel takes them) from `threads` threads and `sources` addresses.
#[allow(clippy::too_many_arguments)]
pub fn send_pool(
    target: SocketAddr,
    pool: &[Datagram],
    lines_each: u64,
    rate: u64,
    threads: usize,
    sources: usize,
    duration: Duration,
    label: &str,
) -> Sent {
    let threads = threads.max(1);
    let sources = sources.max(threads);
    let total_lines = AtomicU64::new(0);
    let results: Vec<Sent> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let total_lines = &total_lines;
                let rate = rate / threads as u64;
                let show = (i == 0).then_some(label);
                let mine: Vec<usize> = (i..sources).step_by(threads).collect();
                scope.spawn(move || send_from(target, pool, lines_each, rate, &mine, duration, show, total_lines))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("sender thread")).collect()
    });
    eprint!("\r{:100}\r", "");
    Sent {
        lines: results.iter().map(|r| r.lines).sum(),
        counters: results.iter().map(|r| r.counters).sum(),
        datagrams: results.iter().map(|r| r.datagrams).sum(),
        elapsed: results.iter().map(|r| r.elapsed).max().unwrap_or_default(),
    }
}

/// One sender thread: from the addresses 127.0.0.(2 + `sources[i]`), one per batch in turn,
/// `rate` lines/s (0 = as fast as the kernel takes them); the thread with a `label` prints
/// progress for all (`total_lines`).
#[allow(clippy::too_many_arguments)]
fn send_from(
    target: SocketAddr,
    pool: &[Datagram],
    lines_each: u64,
    rate: u64,
    sources: &[usize],
    duration: Duration,
    label: Option<&str>,
    total_lines: &AtomicU64,
) -> Sent {
    let sockets: Vec<UdpSocket> = sources
        .iter()
        .map(|s| {
            let ip = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(127, 0, 0, 2)) + *s as u32);
            let sock = UdpSocket::bind((ip, 0)).expect("bind a 127.x.x.x source");
            let _ = socket2::SockRef::from(&sock).set_send_buffer_size(8 << 20);
            sock
        })
        .collect();
    let source = sources.first().copied().unwrap_or(0);
    let mut batch = SendBatch::new(target);
    let mut turn = 0;
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
        for i in 0..n {
            refs.push(&pool[(idx + i) % pool.len()].bytes);
        }
        let sock = &sockets[turn % sockets.len()];
        turn += 1;
        match batch.send(sock.as_raw_fd(), &refs) {
            Ok(k) => {
                sent.datagrams += k as u64;
                sent.lines += k as u64 * lines_each;
                sent.counters += (0..k).map(|i| pool[(idx + i) % pool.len()].counters).sum::<u64>();
                idx += k;
                // Whatever the kernel did not take is not counted; it is sent again next.
                total_lines.fetch_add(k as u64 * lines_each, Ordering::Relaxed);
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
