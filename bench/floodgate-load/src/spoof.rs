//! Memory with a million spoofed sources: floodgate runs in a network namespace made for the
//! run, `scripts/spoof-udp.py` sends one datagram from each of 1,000,000 forged sources to it
//! through a raw socket there (the traffic never leaves the namespace): all 131,072 addresses
//! of the benchmarking range 198.18.0.0/15, and 868,928 /64s of the documentation prefix
//! 2001:db8::/32 (forged sources come from nowhere else). floodgate's RSS is read before and
//! after. Needs root, `ip`, `curl` and `python3`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::targets::{proc_status, BenchOptions};

const SOURCES: u64 = 1_000_000;

fn ip(args: &[&str]) -> bool {
    Command::new("ip").args(args).status().map(|s| s.success()).unwrap_or(false)
}

/// Runs `curl` inside the namespace.
fn get(ns: &str, path: &str) -> Option<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-sf", &format!("http://127.0.0.1:9318{path}")])
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sample(body: &str, name: &str, part: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(name) && l.contains(part))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Prints the table row for BENCHMARKS.md.
pub fn sources_memory(opts: &BenchOptions) {
    let ns = format!("fg-bench-{}", std::process::id());
    assert!(ip(&["netns", "add", &ns]), "ip netns add failed (run as root)");
    ip(&["-n", &ns, "link", "set", "lo", "up"]);
    let dir = std::env::temp_dir().join(&ns);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("floodgate.toml");
    // Default [limits] (tracked_sources = 100,000); the console is not needed.
    std::fs::write(&cfg, "[statsd]\nudp = [\"127.0.0.1:8125\", \"[::1]:8125\"]\ntcp = []\n[admin]\n").unwrap();
    let mut fg = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(&opts.floodgate)
        .arg("--config")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start floodgate in the namespace");
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(&ns, "/healthz").is_none() {
        assert!(Instant::now() < deadline, "floodgate did not start in {ns}");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let pid = fg.id();
    let baseline = proc_status(pid, "VmRSS:");
    let script = Path::new("scripts/spoof-udp.py");
    let v4 = 1u64 << 17;
    let mut summary = Vec::new();
    for (to, sources, count) in [("127.0.0.1:8125", "198.18.0.0/15", v4), ("[::1]:8125", "2001:db8::/32", SOURCES - v4)]
    {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns, "python3"])
            .arg(script)
            .args(["--to", to, "--sources", sources, "--count", &count.to_string()])
            .output()
            .expect("run scripts/spoof-udp.py");
        summary.push(format!("{sources}: {}", String::from_utf8_lossy(&out.stdout).trim()));
    }
    let summary = summary.join("; ");
    std::thread::sleep(Duration::from_secs(1));
    let after = proc_status(pid, "VmRSS:");
    let peak = proc_status(pid, "VmHWM:");
    let m = get(&ns, "/metrics?only=floodgate").unwrap_or_default();
    let tracked = sample(&m, "floodgate_guard_tracked_sources ", "");
    let read = sample(&m, "floodgate_received_packets_total{", "statsd_udp");
    let dropped = sample(&m, "floodgate_dropped_total{", "port_limit");
    let _ = fg.kill();
    let _ = fg.wait();
    ip(&["netns", "del", &ns]);
    let _ = std::fs::remove_dir_all(&dir);
    println!("\n## 1M spoofed sources (default limits, tracked_sources = 100,000)");
    println!("| sender | datagrams read | dropped by the port limit | sources tracked | RSS before | RSS after | growth | peak RSS |");
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {summary} | {read:.0} | {dropped:.0} | {tracked:.0} | {:.1} MB | {:.1} MB | {:.1} MB | {:.1} MB |",
        baseline as f64 / 1024.0,
        after as f64 / 1024.0,
        after.saturating_sub(baseline) as f64 / 1024.0,
        peak as f64 / 1024.0
    );
}
