//! What attacks cost floodgate, and what the defences cost the hot path.
//!
//! - `attack`: for each listener, an attack sends some bytes; the table gives floodgate's peak
//!   resident memory growth (`VmHWM`, read from the kernel) against them. With `--baseline`, the
//!   same attacks against another build (the one before the defences) in the same run.
//! - `hotpath`: StatsD lines processed per CPU-second of floodgate, measured so the sender
//!   cannot limit it: floodgate is stopped (SIGSTOP) with a 1 GiB receive buffer, the datagrams
//!   pile up in the kernel, then it is resumed and its CPU time to drain them is read from
//!   `/proc`. With `--baseline`, both builds alternate, three rounds each, medians reported.

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::targets::{free_port, metric_sum, proc_status, spawn_with, BenchOptions, Running, GUARD_OFF};

pub(crate) fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
}

/// Datagrams floodgate's StatsD UDP threads have read.
pub(crate) fn read_datagrams(http: u16) -> f64 {
    metric_sum(http, "floodgate_received_packets_total{", &["statsd_udp"])
}

/// What one drain measured.
pub(crate) struct Drain {
    /// Datagrams the receiver counted.
    pub datagrams: f64,
    /// This process's CPU-seconds to queue them (on loopback the kernel's receive path runs in
    /// the send call).
    pub sender_cpu: f64,
    /// The receiver's CPU-seconds to drain them (every thread's `schedstat`, in ns).
    pub receiver_cpu: f64,
}

/// Stops `pid` and queues `n` datagrams (`payloads` in turn) from one socket at 127.0.0.2 to
/// `port`; returns this process's CPU-seconds to queue them (on loopback the kernel's receive
/// path, socket filters and `SO_REUSEPORT` programs included, runs in the send call).
pub(crate) fn queue(pid: u32, port: u16, payloads: &[&[u8]], n: usize) -> f64 {
    signal(pid, "STOP");
    let socket = UdpSocket::bind("127.0.0.2:0").unwrap();
    let own = crate::targets::cpu_ns(std::process::id());
    for i in 0..n {
        let _ = socket.send_to(payloads[i % payloads.len()], ("127.0.0.1", port));
    }
    crate::targets::cpu_ns(std::process::id()).saturating_sub(own) as f64 / 1e9
}

/// The drain method: [`queue`], then resumes `pid` and waits until `count()` stops moving.
pub(crate) fn drain(pid: u32, port: u16, payloads: &[&[u8]], n: usize, mut count: impl FnMut() -> f64) -> Drain {
    let sender_cpu = queue(pid, port, payloads, n);
    let before = crate::targets::cpu_ns(pid);
    signal(pid, "CONT");
    let mut last = -1.0;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = count();
        if now == last {
            break;
        }
        last = now;
    }
    let receiver_cpu = crate::targets::cpu_ns(pid).saturating_sub(before) as f64 / 1e9;
    Drain { datagrams: last, sender_cpu, receiver_cpu }
}

/// `floodgate-load raw-recv` on a free port: the raw receive loop, its count read from a file.
pub(crate) struct RawRecv {
    child: std::process::Child,
    /// Its port.
    pub port: u16,
    dir: std::path::PathBuf,
}

impl RawRecv {
    /// Starts it and waits until it counts.
    pub(crate) fn start() -> RawRecv {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("floodgate-raw-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new(std::env::current_exe().expect("this binary"))
            .args(["raw-recv", "--port", &port.to_string(), "--count"])
            .arg(dir.join("count"))
            .spawn()
            .expect("start raw-recv");
        let raw = RawRecv { child, port, dir };
        while raw.read().is_none() {
            std::thread::sleep(Duration::from_millis(20));
        }
        raw
    }

    fn read(&self) -> Option<f64> {
        std::fs::read_to_string(self.dir.join("count")).ok().and_then(|s| s.trim().parse::<f64>().ok())
    }

    /// Datagrams it has read.
    pub(crate) fn count(&self) -> f64 {
        self.read().unwrap_or(0.0)
    }

    /// Its process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RawRecv {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `names` counters (the throughput trials use 1,000), `lines` a datagram.
fn payloads(lines: usize, names: usize) -> Vec<Vec<u8>> {
    let load = crate::sender::Load::counters(0, lines, names, 1, "load");
    crate::sender::pool(&load).into_iter().map(|d| d.bytes).collect()
}

/// Lines per CPU-second floodgate `bin` takes to drain `datagrams` datagrams of `lines` lines
/// each, queued while it was stopped.
fn drain_rate(bin: &Path, lines: usize, names: usize, datagrams: usize, limits: &str) -> f64 {
    let dir = std::env::temp_dir().join(format!("floodgate-hotpath-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let fg = spawn_with(
        bin,
        &dir,
        "hotpath",
        "flush_interval = \"1h\"\nreceive_threads = 1\nreceive_buffer = \"1GiB\"",
        &format!("{limits}[conntrack]\nenabled = false\n"),
    );
    let http = fg.http.unwrap_or(0);
    let pool = payloads(lines, names);
    let refs: Vec<&[u8]> = pool.iter().map(Vec::as_slice).collect();
    let d = drain(fg.child.id(), fg.port, &refs, datagrams, || read_datagrams(http));
    let _ = std::fs::remove_dir_all(&dir);
    drop(fg);
    eprintln!("  {} of {datagrams} datagrams drained in {:.2} CPU-s", d.datagrams, d.receiver_cpu);
    d.datagrams * lines as f64 / d.receiver_cpu.max(0.01)
}

/// Lines per CPU-second of the raw receive loop draining the same queue: what reading alone
/// costs.
fn raw_drain_rate(lines: usize, names: usize, datagrams: usize) -> f64 {
    let raw = RawRecv::start();
    let pool = payloads(lines, names);
    let refs: Vec<&[u8]> = pool.iter().map(Vec::as_slice).collect();
    let d = drain(raw.pid(), raw.port, &refs, datagrams, || raw.count());
    eprintln!("  raw: {} of {datagrams} datagrams drained in {:.2} CPU-s", d.datagrams, d.receiver_cpu);
    d.datagrams * lines as f64 / d.receiver_cpu.max(0.01)
}

/// StatsD lines per CPU-second, this build against `--baseline` and the raw receive loop.
pub fn hot_path(opts: &BenchOptions) {
    println!("\n## Hot path: StatsD lines per CPU-second (1 GiB receive buffer filled while floodgate is stopped, then drained; one receive thread, guard off)");
    // The kernel layer attached with no limit: what it costs a datagram it passes (it runs when
    // the datagram is queued, in the sender's send call on loopback, so the drain does not pay
    // it: see `--only kernel`).
    const KERNEL_PASSING: &str = "[limits]\nudp_per_source = 0\nudp_per_port = 0\nkernel = \"auto\"\n";
    let mut builds: Vec<(&str, Option<std::path::PathBuf>, &str)> = vec![("raw recvmmsg loop", None, "")];
    if let Some(b) = &opts.baseline {
        builds.push(("baseline", Some(b.clone()), GUARD_OFF));
    }
    builds.push(("this build, kernel layer attached", Some(opts.floodgate.clone()), KERNEL_PASSING));
    builds.push(("this build", Some(opts.floodgate.clone()), GUARD_OFF));
    builds.push(("this build, budgets off", Some(opts.floodgate.clone()), "[limits]\nudp_per_source = 0\nudp_per_port = 0\nkernel = \"off\"\nseries_per_source = 0\nnew_series_per_source = 0\n"));
    // As many datagrams as a 1 GiB buffer holds (about 2 KiB each, whatever their size); 1,000
    // names as the throughput trials, and 100,000 (the shard's map no longer in the caches).
    let mut cases = vec![(1usize, 1000usize, 450_000usize), (20, 1000, 450_000), (20, 100_000, 450_000)];
    // `--lines` picks the cases; `FLOODGATE_HOTPATH_QUICK=1` keeps 1,000 names, raw and this
    // build (budgets on) and three rounds: a quick check while working on the hot path.
    cases.retain(|(lines, _, _)| opts.lines.contains(lines));
    let quick = std::env::var_os("FLOODGATE_HOTPATH_QUICK").is_some();
    let rounds = if quick { 3 } else { 5 };
    if quick {
        cases.retain(|(_, names, _)| *names == 1000);
        builds.retain(|(name, _, _)| *name == "raw recvmmsg loop" || *name == "baseline" || *name == "this build");
    }
    let mut results: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); cases.len()]; builds.len()];
    for round in 0..rounds {
        for (c, (lines, names, datagrams)) in cases.iter().enumerate() {
            for (b, (name, bin, limits)) in builds.iter().enumerate() {
                let rate = match bin {
                    Some(bin) => drain_rate(bin, *lines, *names, *datagrams, limits),
                    None => raw_drain_rate(*lines, *names, *datagrams),
                };
                eprintln!("round {round}: {name}, {lines} line(s)/datagram, {names} names: {rate:.0} lines/CPU-s");
                results[b][c].push(rate);
            }
        }
    }
    let median = |v: &Vec<f64>| {
        let mut v = v.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let mut header = String::from("| lines/datagram | names |");
    for (name, _, _) in &builds {
        header += &format!(" {name}: lines/CPU-s (median of {rounds}) |");
    }
    header += " this build ÷ raw |";
    if opts.baseline.is_some() {
        header += " this build ÷ baseline |";
    }
    println!("\n{header}");
    println!("|---|---|{}---|{}", "---|".repeat(builds.len()), if opts.baseline.is_some() { "---|" } else { "" });
    for (c, (lines, names, _)) in cases.iter().enumerate() {
        let medians: Vec<f64> = (0..builds.len()).map(|b| median(&results[b][c])).collect();
        // "this build" (guard off, budgets on: the defaults but for the guard).
        let this = medians[builds.iter().position(|(name, _, _)| *name == "this build").unwrap_or(0)];
        let cells: Vec<String> = medians.iter().map(|m| format!("{:.2}M", m / 1e6)).collect();
        let mut row = format!("| {lines} | {names} | {} | {:.1} % |", cells.join(" | "), this / medians[0] * 100.0);
        if opts.baseline.is_some() {
            row += &format!(" {:.1} % |", this / medians[1] * 100.0);
        }
        println!("{row}");
    }
}

/// One attack's result.
struct Cost {
    listener: &'static str,
    attack: &'static str,
    sent: u64,
    grown: u64,
}

/// Peak resident bytes so far.
fn peak(pid: u32) -> u64 {
    proc_status(pid, "VmHWM:") * 1024
}

/// A frame with a batch of `n` empty series (two bytes each), as an attacker builds it.
fn empty_series_frame(n: usize) -> Vec<u8> {
    let batch: Vec<u8> = [0x08, 0x01].into_iter().chain(std::iter::repeat_n([0x22u8, 0x00], n).flatten()).collect();
    let mut body = vec![0x1a];
    let mut len = batch.len();
    while len >= 0x80 {
        body.push((len as u8) | 0x80);
        len >>= 7;
    }
    body.push(len as u8);
    body.extend_from_slice(&batch);
    let mut wire = (body.len() as u32).to_be_bytes().to_vec();
    wire.extend_from_slice(&body);
    wire
}

/// A `Hello` for session `session` (each connection of an agent session replaces the last, so
/// an attack holding many connections needs as many sessions).
fn hello(session: u64) -> Vec<u8> {
    use floodgate_forward::proto::{frame::Kind, Frame, Hello};
    let mut buf = bytes::BytesMut::new();
    floodgate_forward::frame::encode(
        &Frame { kind: Some(Kind::Hello(Hello { version: 1, agent_id: "attacker".into(), session })) },
        &mut buf,
    );
    buf.to_vec()
}

/// Waits until `pid`'s peak resident set stops growing (the attack's work is done).
fn settled(pid: u32) -> u64 {
    let mut last = 0;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = peak(pid);
        if now == last {
            return now;
        }
        last = now;
    }
}

/// Runs every attack against `bin`.
fn attacks(bin: &Path) -> Vec<Cost> {
    let dir = std::env::temp_dir().join(format!("floodgate-attack-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut out = Vec::new();
    let start = |name: &str, extra_sections: &str| -> (Running, u16, u16, u16) {
        let (syslog, agg) = (free_port(), free_port());
        let fg = spawn_with(
            bin,
            &dir,
            name,
            "flush_interval = \"1s\"\ntcp = [\"127.0.0.1:0\"]",
            &format!(
                "{GUARD_OFF}tcp_connections_per_source = 0\ntcp_open_per_source = 0\n[conntrack]\nenabled = false\n[syslog]\nudp = []\ntcp = [\"127.0.0.1:{syslog}\"]\noutput = \"stdout\"\n\
                 [aggregator]\nlisten = \"127.0.0.1:{agg}\"\nstate_dir = \"{}\"\n{extra_sections}",
                dir.join(format!("{name}-state")).display()
            ),
        );
        let admin = fg.admin.unwrap_or(0);
        (fg, syslog, agg, admin)
    };
    let mut run_with =
        |listener: &'static str, attack: &'static str, sections: &str, f: &dyn Fn(&Running, u16, u16, u16) -> u64| {
            let (fg, syslog, agg, admin) = start("attack", sections);
            let pid = fg.child.id();
            std::thread::sleep(Duration::from_millis(500));
            let before = settled(pid);
            let sent = f(&fg, syslog, agg, admin);
            let after = settled(pid);
            eprintln!("{listener}: {attack}: {sent} bytes sent, peak RSS +{}", after.saturating_sub(before));
            out.push(Cost { listener, attack, sent, grown: after.saturating_sub(before) });
        };
    let mut run = |listener: &'static str, attack: &'static str, f: &dyn Fn(&Running, u16, u16, u16) -> u64| {
        run_with(listener, attack, "", f)
    };
    run("statsd UDP", "8,000 keys of 60 KB", &|fg, _, _, _| {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let key = "k".repeat(60_000);
        let mut sent = 0;
        for i in 0..8000 {
            let line = format!("{key}{i}:1|c");
            sent += s.send_to(line.as_bytes(), ("127.0.0.1", fg.port)).unwrap_or(0) as u64;
            if i % 500 == 0 {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        sent
    });
    run("statsd UDP", "one timer, 5M values", &|fg, _, _, _| {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut sent = 0;
        for i in 0..250_000u64 {
            let text: String = (0..20).map(|j| format!("attack.t:{}|ms\n", (i * 20 + j) % 1000)).collect();
            sent += s.send_to(text.as_bytes(), ("127.0.0.1", fg.port)).unwrap_or(0) as u64;
            if i % 5000 == 0 {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        sent
    });
    let new_series = |fg: &Running, n: u64| {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut sent = 0;
        for i in 0..n / 20 {
            let text: String = (0..20).map(|j| format!("a.{}:1|c\n", i * 20 + j)).collect();
            sent += s.send_to(text.as_bytes(), ("127.0.0.1", fg.port)).unwrap_or(0) as u64;
            if i % 2000 == 0 {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        sent
    };
    run("statsd UDP", "2M new series (filling max_series)", &|fg, _, _, _| new_series(fg, 2_000_000));
    run("statsd UDP", "20M new series (past max_series)", &|fg, _, _, _| new_series(fg, 20_000_000));
    run("statsd TCP", "one 100 MB line", &|fg, _, _, _| {
        let tcp_port = tcp_listener_port(fg);
        let mut s = TcpStream::connect(("127.0.0.1", tcp_port)).unwrap();
        let chunk = vec![b'x'; 1 << 20];
        let mut sent = 0;
        for _ in 0..100 {
            if s.write_all(&chunk).is_err() {
                break;
            }
            sent += chunk.len() as u64;
        }
        sent
    });
    run("syslog TCP", "a 100 MB octet-counted frame", &|_, syslog, _, _| {
        let mut s = TcpStream::connect(("127.0.0.1", syslog)).unwrap();
        let _ = s.write_all(b"100000000 <13>");
        let chunk = vec![b'x'; 1 << 20];
        let mut sent = 14;
        for _ in 0..95 {
            if s.write_all(&chunk).is_err() {
                break;
            }
            sent += chunk.len() as u64;
        }
        sent
    });
    run("aggregator", "a 16 MiB frame before Hello", &|_, _, agg, _| {
        let wire = empty_series_frame((8 << 20) - 64);
        let mut s = TcpStream::connect(("127.0.0.1", agg)).unwrap();
        let _ = s.write_all(&wire);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
        wire.len() as u64
    });
    run("aggregator", "a 16 MiB frame of 8M empty series after Hello", &|_, _, agg, _| {
        let wire = empty_series_frame((8 << 20) - 64);
        let mut s = TcpStream::connect(("127.0.0.1", agg)).unwrap();
        let h = hello(1);
        let _ = s.write_all(&h);
        let _ = s.write_all(&wire);
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf);
        std::thread::sleep(Duration::from_secs(3));
        (h.len() + wire.len()) as u64
    });
    run("aggregator", "50 sessions: Hello, then half of a 16 MiB frame, held", &|_, _, agg, _| {
        let mut held = Vec::new();
        let mut sent = 0;
        for i in 0..50 {
            let Ok(mut s) = TcpStream::connect(("127.0.0.1", agg)) else { continue };
            let half = [hello(i + 1), (16u32 << 20).to_be_bytes().to_vec(), vec![0u8; 8 << 20]].concat();
            if s.write_all(&half).is_ok() {
                sent += half.len() as u64;
            }
            held.push(s);
        }
        std::thread::sleep(Duration::from_secs(2));
        sent
    });
    run("console", "100 sessions, 4 KiB of a command each, held", &|_, _, _, admin| {
        let mut held = Vec::new();
        let mut sent = 0;
        for _ in 0..100 {
            let Ok(mut s) = TcpStream::connect(("127.0.0.1", admin)) else { continue };
            if s.write_all(&[b'a'; 4000]).is_ok() {
                sent += 4000;
            }
            held.push(s);
        }
        std::thread::sleep(Duration::from_secs(2));
        sent
    });
    run("HTTP", "200 requests with 12 KiB of headers, never finished", &|fg, _, _, _| {
        let http = fg.http.unwrap_or(0);
        let mut held = Vec::new();
        let mut sent = 0;
        let head = format!("GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n", "p".repeat(12_000));
        for _ in 0..200 {
            let Ok(mut s) = TcpStream::connect(("127.0.0.1", http)) else { continue };
            if s.write_all(head.as_bytes()).is_ok() {
                sent += head.len() as u64;
            }
            held.push(s);
        }
        std::thread::sleep(Duration::from_secs(2));
        sent
    });
    // A remote-write endpoint that answers every request 503 with a body that never ends
    // (bytes sent: what it managed to write before floodgate let the connection go).
    let endless = endless_error_endpoint();
    run_with(
        "remote-write sink",
        "every answer a 503 with an endless body, 5 s",
        &format!(
            "[prometheus_remote_write]\nurl = \"http://127.0.0.1:{}/api/v1/write\"\ntimeout = \"5s\"\n",
            endless.0
        ),
        &|fg, _, _, _| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            let _ = s.send_to(b"rw.hits:1|c", ("127.0.0.1", fg.port));
            std::thread::sleep(Duration::from_secs(5));
            endless.1.load(std::sync::atomic::Ordering::Relaxed)
        },
    );
    let _ = std::fs::remove_dir_all(&dir);
    out
}

/// An HTTP server on a free port that reads each request and answers 503 with a chunked body
/// it writes for as long as the client reads; returns its port and the bytes written.
fn endless_error_endpoint() -> (u16, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let total = written.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let total = total.clone();
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && s.read_exact(&mut byte).is_ok() {
                    head.push(byte[0]);
                }
                let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let len: usize = text
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0u8; len];
                let _ = s.read_exact(&mut body);
                let _ = s.write_all(b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n");
                let chunk = format!("1000\r\n{}\r\n", "x".repeat(4096));
                while s.write_all(chunk.as_bytes()).is_ok() {
                    total.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    (port, written)
}

/// The StatsD TCP listener's port (bound to port 0 by the attack config), from `/metrics`.
fn tcp_listener_port(fg: &Running) -> u16 {
    let body =
        crate::targets::http_get(fg.http.unwrap_or(0), "/metrics?only=floodgate").map(|(_, b)| b).unwrap_or_default();
    body.lines()
        .filter(|l| l.contains("listener=\"statsd_tcp\""))
        .find_map(|l| l.split("address=\"127.0.0.1:").nth(1)?.split('"').next()?.parse().ok())
        .unwrap_or(0)
}

/// The attack-cost table.
pub fn attack_cost(opts: &BenchOptions) {
    println!("\n## Attack cost: bytes an attacker sends vs floodgate's peak RSS growth (VmHWM)");
    let now = attacks(&opts.floodgate);
    let before = opts.baseline.as_ref().map(|b| attacks(b));
    match &before {
        Some(_) => {
            println!("\n| listener | attack | bytes sent | baseline: peak RSS growth (× bytes) | this build: peak RSS growth (× bytes) |");
            println!("|---|---|---|---|---|");
        }
        None => {
            println!("\n| listener | attack | bytes sent | peak RSS growth | × bytes sent |");
            println!("|---|---|---|---|---|");
        }
    }
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1 << 20) as f64);
    for (i, c) in now.iter().enumerate() {
        let ratio = |grown: u64, sent: u64| grown as f64 / sent.max(1) as f64;
        match &before {
            Some(b) => println!(
                "| {} | {} | {} | {} ({:.2}×) | {} ({:.2}×) |",
                c.listener,
                c.attack,
                mib(c.sent),
                mib(b[i].grown),
                ratio(b[i].grown, b[i].sent),
                mib(c.grown),
                ratio(c.grown, c.sent)
            ),
            None => println!(
                "| {} | {} | {} | {} | {:.2}× |",
                c.listener,
                c.attack,
                mib(c.sent),
                mib(c.grown),
                ratio(c.grown, c.sent)
            ),
        }
    }
    let _ = Instant::now();
}
