//! The fleet's engines under load (issue 29), each against its single-host counterpart in
//! the same run:
//! - `nats`: syslog over TCP into NATS JetStream (real `nats-server -js`, one stream,
//!   acknowledged publishes) against into a file: messages/s and floodgate's CPU.
//! - `shared`: three hosts (syslog over UDP on 127.0.0.1–3, one port) sharing one port limit
//!   of 10,000/s through a real `redis-server`, flooded at 8,000/s each, against one host
//!   alone flooded at 24,000/s: the accepted rate's error, and the calls Redis gets.
//! - `paced`: one TCP sender at full speed against `tcp_per_source`: its accepted rate.

use std::io::Write;
use std::net::{TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::syslog::{octet_counted, LineCounter};
use crate::targets::{cpu_ticks, free_port, metric, metric_sum, spawn_floodgate, BenchOptions, Running, GUARD_OFF};

/// A peer (nats-server, redis-server) killed when done.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn peer(program: &str, args: &[&str], port: u16) -> Peer {
    let child = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e} (./scripts/test.sh installs it)"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{program} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Peer(child)
}

fn bench_dir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("floodgate-bench-{what}-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Messages per NATS trial.
const NATS_MESSAGES: usize = 300_000;

pub fn nats(opts: &BenchOptions) {
    let dir = bench_dir("nats");
    let nats_port = free_port();
    let store = dir.join("js");
    let _nats = peer(
        "nats-server",
        &["-a", "127.0.0.1", "-p", &nats_port.to_string(), "-js", "-sd", store.to_str().unwrap()],
        nats_port,
    );
    println!("\n## Records into NATS JetStream vs into a file: syslog over one TCP connection, {NATS_MESSAGES} messages, guard off");
    println!("| output | messages/s | floodgate CPU (of one core) | messages per CPU-second |");
    println!("|---|---|---|---|");
    let payload = octet_counted(NATS_MESSAGES);
    for (label, kind) in [("file (JSON lines)", "file"), ("NATS JetStream (acknowledged, exactly once)", "nats")] {
        let port = free_port();
        let file = dir.join("records.jsonl");
        let output = match kind {
            "file" => format!("{{ kind = \"file\", path = \"{}\" }}", file.display()),
            _ => format!("{{ kind = \"nats\", url = \"nats://127.0.0.1:{nats_port}\", subject = \"bench\", stream = \"BENCH\" }}"),
        };
        let fg = spawn_floodgate(
            opts,
            &dir,
            kind,
            "",
            &format!("{GUARD_OFF}[syslog]\nudp = []\ntcp = [\"127.0.0.1:{port}\"]\noutput = {output}\n"),
        );
        let http = fg.http.unwrap();
        let mut lines = LineCounter::new(&file);
        let written = |lines: &mut LineCounter| match kind {
            "file" => lines.count() as f64,
            _ => metric_sum(http, "floodgate_syslog_output_messages_total", &[]),
        };
        let ticks = cpu_ticks(fg.child.id());
        let start = Instant::now();
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(&payload).unwrap();
        drop(s);
        let deadline = Instant::now() + Duration::from_secs(120);
        while written(&mut lines) < NATS_MESSAGES as f64 {
            assert!(Instant::now() < deadline, "{label}: not all written");
            std::thread::sleep(Duration::from_millis(10));
        }
        let secs = start.elapsed().as_secs_f64();
        let cpu = (cpu_ticks(fg.child.id()) - ticks) as f64 / 100.0;
        println!(
            "| {label} | {:.0} | {:.0}% | {:.0} |",
            NATS_MESSAGES as f64 / secs,
            cpu / secs * 100.0,
            NATS_MESSAGES as f64 / cpu
        );
        drop(fg);
        let _ = std::fs::remove_file(&file);
    }
}

/// A UDP sender of syslog messages at `rate`/s from 127.0.0.1 to `to`, for `seconds`.
fn udp_flood(to: (std::net::Ipv4Addr, u16), rate: f64, seconds: f64) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed().as_secs_f64() < seconds {
            let due = (start.elapsed().as_secs_f64() * rate) as u64;
            while sent < due {
                if socket.send_to(b"<13>flood", to).is_ok() {
                    sent += 1;
                }
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        sent
    })
}

pub fn shared(opts: &BenchOptions) {
    const LIMIT: f64 = 10_000.0;
    const SECONDS: f64 = 10.0;
    let dir = bench_dir("shared");
    let redis_port = free_port();
    let redis = peer(
        "redis-server",
        &["--bind", "127.0.0.1", "--port", &redis_port.to_string(), "--save", "", "--appendonly", "no"],
        redis_port,
    );
    println!("\n## One port limit (10,000/s) shared by three hosts through Redis vs one host alone: syslog over UDP, 24,000 messages/s in all, {SECONDS} s, the rate measured from 2 s to 8 s");
    println!("| setup | accepted messages/s | error vs the limit | Redis calls/s (all hosts) | calls/s per host (its two datagram ports) | redis-server CPU (of one core) |");
    println!("|---|---|---|---|---|---|");
    let port = free_port();
    for (label, hosts) in [("one host, local limit", 1usize), ("three hosts, shared through Redis", 3)] {
        let shared = if hosts > 1 {
            format!("shared = {{ redis = \"redis://127.0.0.1:{redis_port}\" }}\n")
        } else {
            String::new()
        };
        let running: Vec<(Running, std::net::Ipv4Addr)> = (1..=hosts as u8)
            .map(|i| {
                let address = std::net::Ipv4Addr::new(127, 0, 0, i);
                // The per-source limit off (one sender socket per host); the port's at 10,000.
                let fg = spawn_floodgate(
                    opts,
                    &dir,
                    &format!("host{i}-{hosts}"),
                    "",
                    &format!(
                        "[limits]\nudp_per_source = 0\nudp_per_port = {LIMIT}\nkernel = \"off\"\n{shared}\
                         [syslog]\nudp = [\"{address}:{port}\"]\ntcp = []\noutput = \"stdout\"\n"
                    ),
                );
                (fg, address)
            })
            .collect();
        let accepted = || -> f64 {
            running
                .iter()
                .map(|(fg, _)| metric_sum(fg.http.unwrap(), "floodgate_syslog_messages_total", &["syslog_udp"]))
                .sum()
        };
        let calls = || -> f64 {
            running.iter().map(|(fg, _)| metric(fg.http.unwrap(), "floodgate_guard_shared_calls_total")).sum()
        };
        let senders: Vec<_> =
            running.iter().map(|(_, a)| udp_flood((*a, port), 24_000.0 / hosts as f64, SECONDS)).collect();
        std::thread::sleep(Duration::from_secs(2));
        let (t0, a0, c0, r0) = (Instant::now(), accepted(), calls(), cpu_ticks(redis.0.id()));
        std::thread::sleep(Duration::from_secs(6));
        let (secs, a1, c1, r1) = (t0.elapsed().as_secs_f64(), accepted(), calls(), cpu_ticks(redis.0.id()));
        for s in senders {
            s.join().unwrap();
        }
        let rate = (a1 - a0) / secs;
        let call_rate = (c1 - c0) / secs;
        let redis_cpu = if hosts > 1 { format!("{:.1}%", (r1 - r0) as f64 / 100.0 / secs * 100.0) } else { "-".into() };
        println!(
            "| {label} | {rate:.0} | {:+.1}% | {call_rate:.1} | {:.1} | {redis_cpu} |",
            (rate - LIMIT) / LIMIT * 100.0,
            call_rate / hosts as f64,
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

pub fn paced(opts: &BenchOptions) {
    const LIMIT: f64 = 50_000.0;
    const MESSAGES: usize = 600_000;
    let dir = bench_dir("paced");
    let port = free_port();
    let file = dir.join("records.jsonl");
    let fg = spawn_floodgate(
        opts,
        &dir,
        "paced",
        "",
        &format!(
            "[limits]\ntcp_per_source = {LIMIT}\n[syslog]\nudp = []\ntcp = [\"127.0.0.1:{port}\"]\n\
             output = {{ kind = \"file\", path = \"{}\" }}\n",
            file.display()
        ),
    );
    println!("\n## A TCP sender at full speed against tcp_per_source = {LIMIT}: {MESSAGES} messages on one connection, accepted rate from 1.5 s to 9.5 s");
    println!("| limit | accepted messages/s | error vs the limit | all delivered | paced seconds |");
    println!("|---|---|---|---|---|");
    let payload = octet_counted(MESSAGES);
    let sender = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(&payload).unwrap();
    });
    let mut lines = LineCounter::new(&file);
    let start = Instant::now();
    while lines.count() == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(1500).saturating_sub(start.elapsed()));
    let (t0, n0) = (Instant::now(), lines.count());
    std::thread::sleep(Duration::from_secs(8));
    let (secs, n1) = (t0.elapsed().as_secs_f64(), lines.count());
    sender.join().unwrap();
    let (_, all) = lines.wait(MESSAGES as u64, Duration::from_secs(10));
    let rate = (n1 - n0) as f64 / secs;
    let paced = metric_sum(fg.http.unwrap(), "floodgate_paced_seconds_total", &["syslog_tcp"]);
    println!(
        "| {LIMIT} | {rate:.0} | {:+.1}% | {} | {paced:.1} |",
        (rate - LIMIT) / LIMIT * 100.0,
        if all == MESSAGES as u64 { "yes".to_string() } else { format!("no: {all}") }
    );
    drop(fg);
    let _ = std::fs::remove_dir_all(&dir);
}
