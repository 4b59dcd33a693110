//! `bench --only kernel`: the guard's kernel layer (an eBPF socket filter) against its
//! user-space layer, as root.
//!
//! 1. **CPU per dropped datagram**: one source sends 400,000 one-line datagrams over its limit
//!    (1/s) while floodgate is stopped (SIGSTOP), then floodgate drains what was queued. The
//!    cost of a datagram is the sender's CPU (on loopback the kernel's receive path, the filter
//!    included, runs in the sender's send call) plus floodgate's CPU to drain. With the kernel
//!    layer the filter drops at enqueue and nothing is queued; without it, each datagram is
//!    queued, read and dropped by the user-space guard; the raw loop reads and counts.
//! 2. **The largest flood under which a legitimate source loses nothing**, floodgate held to
//!    10 % of a core by a cgroup (v1 `cpu` controller): one source floods at a rising rate, a
//!    legitimate one sends 500 lines a second under its limit, 5 s a trial; the legitimate
//!    lines reaching the Carbon stand-in are counted exactly.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use crate::carbon::CarbonStandIn;
use crate::hostile::{drain, read_datagrams, RawRecv};
use crate::targets::{free_port, spawn_floodgate, terminate, BenchOptions, Running, PREFIX};

fn floodgate(
    opts: &BenchOptions,
    kernel: &str,
    per_source: u64,
    extra: &str,
    carbon: Option<u16>,
) -> (Running, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("floodgate-bench-kernel-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let graphite = carbon.map(|p| format!("[graphite]\naddress = \"127.0.0.1:{p}\"\n")).unwrap_or_default();
    // The flood (127.0.0.2) and the legitimate sender (127.0.0.3) stand for two hosts.
    let sections = format!(
        "{graphite}[limits]\nudp_per_source = {per_source}\nudp_per_port = 0\nkernel = \"{kernel}\"\n\
         local_senders = \"by_address\"\n[conntrack]\nenabled = false\n"
    );
    let running = spawn_floodgate(opts, &dir, "floodgate", &format!("receive_threads = 1\n{extra}"), &sections);
    (running, dir)
}

/// Sender CPU-seconds and floodgate CPU-seconds for `n` datagrams over the limit.
fn drop_cost(opts: &BenchOptions, kernel: &str, n: usize) -> (f64, f64) {
    let (fg, dir) = floodgate(opts, kernel, 1, "flush_interval = \"1h\"\nreceive_buffer = \"1GiB\"", None);
    let http = fg.http.unwrap_or(0);
    let d = drain(fg.child.id(), fg.port, &[b"flood.x:1|c"], n, || read_datagrams(http));
    drop(fg);
    let _ = std::fs::remove_dir_all(&dir);
    (d.sender_cpu, d.receiver_cpu)
}

/// The raw loop's cost for the same datagrams: the sender's CPU and the loop's.
fn raw_cost(n: usize) -> (f64, f64) {
    let raw = RawRecv::start();
    let d = drain(raw.pid(), raw.port, &[b"flood.x:1|c"], n, || raw.count());
    (d.sender_cpu, d.receiver_cpu)
}

/// A cgroup holding a process's threads to `percent` % of a core.
struct CpuShare(std::path::PathBuf);

impl CpuShare {
    fn confine(pid: u32, percent: u32) -> CpuShare {
        let dir = std::path::PathBuf::from(format!("/sys/fs/cgroup/cpu/floodgate-bench-{pid}"));
        std::fs::create_dir_all(&dir).expect("a cpu cgroup (cgroup v1, root)");
        std::fs::write(dir.join("cpu.cfs_period_us"), "100000").unwrap();
        std::fs::write(dir.join("cpu.cfs_quota_us"), (percent * 1000).to_string()).unwrap();
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
            let _ = std::fs::write(dir.join("tasks"), task.file_name().to_string_lossy().as_bytes());
        }
        CpuShare(dir)
    }
}

impl Drop for CpuShare {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// One trial: legitimate lines lost (of those sent) with a flood at `rate` datagrams/s.
fn trial(opts: &BenchOptions, kernel: &str, rate: u64) -> (u64, u64, f64) {
    let carbon = CarbonStandIn::start(PREFIX);
    let (mut fg, dir) =
        floodgate(opts, kernel, 2000, "flush_interval = \"1s\"\nreceive_buffer = \"1MiB\"", Some(carbon.port));
    let share = CpuShare::confine(fg.child.id(), 10);
    let to = std::net::SocketAddr::from(([127, 0, 0, 1], fg.port));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let socket = UdpSocket::bind("127.0.0.2:0").unwrap();
            let start = Instant::now();
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
                while sent < due {
                    let _ = socket.send_to(b"flood.x:1|c", to);
                    sent += 1;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            sent as f64 / start.elapsed().as_secs_f64()
        })
    };
    let legit = UdpSocket::bind("127.0.0.3:0").unwrap();
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < Duration::from_secs(5) {
        let due = (start.elapsed().as_secs_f64() * 500.0) as u64;
        while sent < due {
            let _ = legit.send_to(b"load.legit:1|c", to);
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let flood_rate = flood.join().unwrap_or(0.0);
    // Let it drain what it holds, then flush on SIGTERM.
    std::thread::sleep(Duration::from_secs(3));
    terminate(&mut fg);
    drop(share);
    let deadline = Instant::now() + Duration::from_secs(10);
    while carbon.sum() < sent as f64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_dir_all(&dir);
    (sent.saturating_sub(carbon.sum() as u64), sent, flood_rate)
}

/// `bench --only kernel`.
pub fn kernel_guard(opts: &BenchOptions) {
    let n = 400_000;
    println!("\n## The guard's kernel layer: CPU per dropped datagram ({n} one-line datagrams from one source over its limit of 1/s; sender + receiver CPU)");
    println!("| path | sender CPU | receiver CPU | total per datagram |");
    println!("|---|---|---|---|");
    let rows = [
        ("kernel layer (dropped at enqueue)", drop_cost(opts, "auto", n)),
        ("user-space guard (queued, read, dropped)", drop_cost(opts, "off", n)),
        ("raw recvmmsg loop (queued, read, counted)", raw_cost(n)),
    ];
    for (name, (sender, receiver)) in rows {
        println!("| {name} | {sender:.2} s | {receiver:.2} s | {:.0} ns |", (sender + receiver) * 1e9 / n as f64);
    }
    println!("\n## The largest flood under which a legitimate source (500 lines/s, limit 2,000/s) loses nothing, floodgate held to 10 % of a core (5 s a trial)");
    println!("| flood offered (datagrams/s) | kernel layer: legitimate lost | user space only: legitimate lost |");
    println!("|---|---|---|");
    let (mut largest, mut whole) = ([0u64; 2], [true; 2]);
    for rate in [5_000u64, 20_000, 50_000, 100_000, 200_000, 400_000] {
        let mut cells = Vec::new();
        for (i, kernel) in ["auto", "off"].into_iter().enumerate() {
            let (lost, sent, offered) = trial(opts, kernel, rate);
            eprintln!("  {kernel} at {rate}/s (offered {offered:.0}): legit lost {lost} of {sent}");
            whole[i] &= lost == 0;
            if whole[i] {
                largest[i] = rate;
            }
            cells.push(format!("{lost} of {sent}"));
        }
        println!("| {rate} | {} | {} |", cells[0], cells[1]);
    }
    println!("\nLargest flood with no legitimate loss: kernel layer {} datagrams/s, user space only {} datagrams/s (of those tried).", largest[0], largest[1]);
}
