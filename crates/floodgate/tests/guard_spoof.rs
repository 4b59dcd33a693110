//! Spoofed sources: in a network namespace this test creates, a raw socket sends StatsD
//! datagrams to floodgate from every address of 198.18.0.0/15 (131,072 sources, twice over),
//! while a legitimate sender outside the namespace reaches it over a veth pair. The limiter
//! table stays within `tracked_sources`, the per-port limit holds, the legitimate sender loses
//! nothing and `/offenders` stays bounded.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB").parse().unwrap()
}

fn get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

fn counter(admin: &str, name: &str) -> f64 {
    let mut s = TcpStream::connect(admin).unwrap();
    s.write_all(b"counters\nquit\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let prefix = format!("'{name}': ");
    out.lines().find_map(|l| l.trim().strip_prefix(&prefix)).map_or(0.0, |v| v.trim_end_matches(',').parse().unwrap())
}

#[test]
fn spoofed_sources_cannot_grow_memory_or_starve_a_real_sender() {
    let ns = Namespace::create("spoof");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("floodgate.toml");
    let http = format!("{}:9318", ns.inside);
    let admin = format!("{}:8126", ns.inside);
    std::fs::write(
        &config,
        format!(
            "[statsd]\nudp = [\"0.0.0.0:8125\"]\ntcp = []\nflush_interval = \"1h\"\n\
             [admin]\nlisten = \"{admin}\"\n[http]\nlisten = \"{http}\"\n\
             [limits]\ntracked_sources = 10_000\n[syslog]\nudp = []\ntcp = []\n"
        ),
    )
    .unwrap();
    let stderr = dir.path().join("stderr.log");
    let fg = Running(
        ns.command(std::path::Path::new(env!("CARGO_BIN_EXE_floodgate")))
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap(),
    );
    let log = || std::fs::read_to_string(&stderr).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !TcpStream::connect(&http).is_ok_and(|_| get(&http, "/healthz").starts_with("ok")) {
        assert!(Instant::now() < deadline, "floodgate did not start in the namespace: {}", log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let baseline = rss_kib(fg.0.id());

    // The real sender: 1,000 datagrams a second from outside the namespace, starting before
    // the flood and ending after it.
    let to: SocketAddr = format!("{}:8125", ns.inside).parse().unwrap();
    let legit = {
        let socket = UdpSocket::bind((ns.host.as_str(), 0)).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = std::thread::spawn(move || {
            let start = Instant::now();
            let mut sent = 0u64;
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                let due = (start.elapsed().as_secs_f64() * 1000.0) as u64;
                while sent < due {
                    socket.send_to(b"legit:1|c", to).unwrap();
                    sent += 1;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            sent
        });
        (stop, handle)
    };
    std::thread::sleep(Duration::from_millis(1500));

    // Each of the 131,072 addresses sends twice, 60,000 datagrams a second (6× the port's limit).
    let script = repo_root().join("scripts/spoof-udp.py");
    let flood_start = Instant::now();
    let out = ns
        .command(&require_tool("python3"))
        .arg(&script)
        .args(["--to", "127.0.0.1:8125", "--sources", "198.18.0.0/15", "--passes", "2", "--rate", "60000"])
        .output()
        .unwrap();
    let flood_secs = flood_start.elapsed().as_secs_f64();
    assert!(out.status.success(), "spoof-udp.py: {}", String::from_utf8_lossy(&out.stderr));
    let summary = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(summary.contains("sent=262144 sources=131072"), "{summary}");
    let after_flood = rss_kib(fg.0.id());

    std::thread::sleep(Duration::from_millis(500));
    legit.0.store(true, std::sync::atomic::Ordering::Relaxed);
    let legit_sent = legit.1.join().unwrap();

    // Every legitimate datagram was counted.
    let deadline = Instant::now() + Duration::from_secs(20);
    while counter(&admin, "legit") != legit_sent as f64 {
        assert!(
            Instant::now() < deadline,
            "legit: sent {legit_sent}, counted {}; {}",
            counter(&admin, "legit"),
            get(&http, "/metrics?only=floodgate")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The port's limit held for the spoofed traffic: 10,000/s plus half a burst for newcomers.
    let spoofed = counter(&admin, "spoof");
    assert!(spoofed > 0.0);
    assert!(spoofed <= 10_000.0 * flood_secs + 5_000.0, "{spoofed} spoofed lines accepted in {flood_secs}s");
    let m = get(&http, "/metrics?only=floodgate");
    let dropped = metric(&m, "floodgate_dropped_total", &["reason=\"port_limit\""]).unwrap();
    assert_eq!(dropped + spoofed, 262_144.0, "every spoofed datagram accepted or counted");

    // Bounded state: the table, the report, the log. (What that costs in memory is measured by
    // the benchmark, `floodgate-load bench --only sources`, not asserted here.)
    let tracked = metric(&m, "floodgate_guard_tracked_sources", &[]).unwrap();
    assert!(tracked <= 10_048.0, "{tracked} sources tracked");
    let report: serde_json::Value = serde_json::from_str(&get(&http, "/offenders")).unwrap();
    assert!(report["offenders"].as_array().unwrap().len() <= 100);
    assert_eq!(report["ports"][0]["currently_limited"], true, "{report}");
    let limited_lines = log().lines().filter(|l| l.contains("over its limit")).count();
    assert!(limited_lines <= 3, "one line for the port, not one per source:\n{}", log());
    eprintln!(
        "{summary}: legit {legit_sent} all counted; spoofed accepted {spoofed} ({:.0}/s), dropped {dropped}; \
         tracked {tracked}; RSS {baseline} KiB -> {after_flood} KiB",
        spoofed / flood_secs
    );
}
