//! StatsD over a Unix datagram socket against loopback UDP, same run, 1 and 20 lines a
//! datagram: lines a second, floodgate's CPU and lines per CPU-second (what it costs to take
//! the same traffic each way), and loss. A Unix datagram sender cannot lose silently: a
//! blocking one waits while floodgate's queue is full (measured here), a non-blocking one gets
//! EAGAIN (counted here, in a burst that does not retry).

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use crate::carbon::CarbonStandIn;
use crate::sender::{self, Load, Sent};
use crate::targets::{cpu_ticks, settle, spawn_floodgate, terminate, BenchOptions, Running, PREFIX};

/// Both listeners with every limit off: the trials measure the path, not the guard.
const LIMITS_OFF: &str = "[limits]\nudp_per_source = 0\nudp_per_port = 0\nunix_per_uid = 0\n";

struct Outcome {
    sent: Sent,
    received: f64,
    cpu_seconds: f64,
    /// The benchmark process's own CPU meanwhile (the sender; the Carbon stand-in is idle but
    /// for a flush a second): loopback UDP runs the IP stack in the sender's send call.
    sender_cpu_seconds: f64,
    /// Non-blocking burst: sends that got EAGAIN, of those tried.
    eagain: Option<(u64, u64)>,
}

/// One trial: floodgate started fresh, sent to for the trial duration, SIGTERM (which flushes
/// everything), the Carbon stand-in's sums read.
fn trial(opts: &BenchOptions, lines: usize, unix: bool, rate: u64) -> Outcome {
    let carbon = CarbonStandIn::start(PREFIX);
    let dir = std::env::temp_dir().join(format!("floodgate-bench-uds-{}", crate::targets::free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("statsd.sock");
    let extra = format!("flush_interval = \"1s\"\nreceive_threads = 1\nunix = [\"{}\"]\n", sock.display());
    let sections = format!("[graphite]\naddress = \"127.0.0.1:{}\"\n{LIMITS_OFF}", carbon.port);
    let mut running: Running = spawn_floodgate(opts, &dir, "floodgate", &extra, &sections);
    let load = Load::counters(0, lines, 1000, 1, "load");
    let pool = sender::pool(&load);
    let label = format!("{} {lines} line(s)/datagram, rate {rate}", if unix { "unix" } else { "udp" });
    let dest = std::net::SocketAddr::from(([127, 0, 0, 1], running.port));
    let ticks = cpu_ticks(running.child.id());
    let own = cpu_ticks(std::process::id());
    let mut sent = if unix {
        send_unix(&sock, &pool, lines as u64, rate, opts.trial)
    } else {
        sender::send_pool(dest, &pool, lines as u64, rate, 1, 1, opts.trial, &label)
    };
    let cpu_seconds = (cpu_ticks(running.child.id()) - ticks) as f64 / 100.0;
    let sender_cpu_seconds = (cpu_ticks(std::process::id()) - own) as f64 / 100.0;
    // The non-blocking burst after the measured traffic, under other names (not summed).
    let eagain = unix.then(|| eagain_burst(&sock, lines));
    terminate(&mut running);
    settle(&carbon, sent.counters as f64, Duration::from_millis(500));
    let _ = std::fs::remove_dir_all(&dir);
    sent.elapsed = sent.elapsed.max(Duration::from_millis(1));
    Outcome { sent, received: carbon.sum(), cpu_seconds, sender_cpu_seconds, eagain }
}

/// A blocking Unix datagram sender, one thread: `sendto` waits while the queue is full.
/// `rate` lines/s (0: as fast as it goes).
fn send_unix(
    path: &std::path::Path,
    pool: &[sender::Datagram],
    lines_each: u64,
    rate: u64,
    duration: Duration,
) -> Sent {
    let socket = UnixDatagram::unbound().unwrap();
    socket.connect(path).unwrap();
    let start = Instant::now();
    let mut sent = Sent::default();
    let mut i = 0;
    while start.elapsed() < duration {
        // A clock read every 64 sends keeps it out of the measurement.
        let mut n = 64;
        if rate > 0 {
            let due = (rate as f64 * start.elapsed().as_secs_f64() / lines_each as f64) as u64;
            n = due.saturating_sub(sent.datagrams).min(64);
            if n == 0 {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
        }
        for _ in 0..n {
            let d = &pool[i % pool.len()];
            socket.send(&d.bytes).expect("a blocking Unix datagram send");
            sent.datagrams += 1;
            sent.lines += lines_each;
            sent.counters += d.counters;
            i += 1;
        }
    }
    sent.elapsed = start.elapsed();
    sent
}

/// 100,000 non-blocking sends as fast as possible, none retried: how many the kernel refused
/// with EAGAIN (what a non-blocking client drops on its own side, where it can count it).
fn eagain_burst(path: &std::path::Path, lines: usize) -> (u64, u64) {
    let socket = UnixDatagram::unbound().unwrap();
    socket.connect(path).unwrap();
    socket.set_nonblocking(true).unwrap();
    let payload = vec!["burst.k:1|c"; lines].join("\n");
    let (mut refused, tries) = (0, 100_000u64);
    for _ in 0..tries {
        match socket.send(payload.as_bytes()) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => refused += 1,
            Err(e) => panic!("unix send: {e}"),
        }
    }
    (refused, tries)
}

/// `bench --only uds`.
pub fn unix_vs_udp(opts: &BenchOptions) {
    let qlen = std::fs::read_to_string("/proc/sys/net/unix/max_dgram_qlen").unwrap_or_default();
    println!(
        "\n## StatsD over a Unix datagram socket vs loopback UDP (one sender thread, one receive thread, limits off; net.unix.max_dgram_qlen = {})",
        qlen.trim()
    );
    println!("| lines/datagram | transport | lines/s sent | loss | floodgate CPU (of one core) | lines per floodgate CPU-second | vs UDP | sender CPU | lines per CPU-second, sender + floodgate | vs UDP | non-blocking burst: EAGAIN |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for &lines in &opts.lines {
        // As fast as each goes, then both at the same rate (80% of the slower): the CPU each
        // transport costs floodgate for the same traffic.
        let udp = trial(opts, lines, false, 0);
        let unix = trial(opts, lines, true, 0);
        let slower = udp.sent.lines.min(unix.sent.lines) as f64 / udp.sent.elapsed.as_secs_f64();
        let rate = (slower * 0.8) as u64;
        let udp_paced = trial(opts, lines, false, rate);
        let unix_paced = trial(opts, lines, true, rate);
        let per_cpu = |o: &Outcome| o.received / o.cpu_seconds.max(0.01);
        let per_total = |o: &Outcome| o.received / (o.cpu_seconds + o.sender_cpu_seconds).max(0.01);
        let rows = [
            ("UDP, max", &udp, &udp),
            ("Unix, max", &unix, &udp),
            ("UDP, paced", &udp_paced, &udp_paced),
            ("Unix, paced", &unix_paced, &udp_paced),
        ];
        for (name, o, base) in rows {
            let secs = o.sent.elapsed.as_secs_f64();
            let loss = 1.0 - o.received / o.sent.counters.max(1) as f64;
            let eagain = o.eagain.map(|(r, t)| format!("{r} of {t}")).unwrap_or_default();
            println!(
                "| {lines} | {name} | {:.0} | {:.3}% | {:.0}% | {:.2}M | {:.2}x | {:.0}% | {:.2}M | {:.2}x | {eagain} |",
                o.sent.lines as f64 / secs,
                loss * 100.0,
                o.cpu_seconds / secs * 100.0,
                per_cpu(o) / 1e6,
                per_cpu(o) / per_cpu(base),
                o.sender_cpu_seconds / secs * 100.0,
                per_total(o) / 1e6,
                per_total(o) / per_total(base),
            );
        }
    }
}
