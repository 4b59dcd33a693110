//! Spoofed sources: in a network namespace this test creates, a raw socket sends StatsD
//! datagrams to floodgate from every address of 198.18.0.0/15 (131,072 sources, twice over),
//! while a legitimate sender outside the namespace reaches it over a veth pair. The limiter
//! table stays within `tracked_sources`, the per-port limit holds, the legitimate sender loses
//! nothing and `/offenders` stays bounded — with the guard's kernel layer (the flood is then
//! refused before it is queued; its source map is an LRU of `tracked_sources` entries) and with
//! the user-space layer alone.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::*;

fn get(addr: &str, path: &str) -> String {
    http_get_at(addr, path).unwrap().1
}

fn counter(admin: &str, name: &str) -> f64 {
    console_counter(admin, name).unwrap_or(0.0)
}

#[test]
fn spoofed_sources_cannot_grow_memory_or_starve_a_real_sender() {
    spoofed_sources("off");
}

#[test]
fn spoofed_sources_are_refused_in_the_kernel() {
    spoofed_sources("auto");
}

fn spoofed_sources(kernel: &str) {
    let ns = Namespace::create(if kernel == "auto" { "spoofk" } else { "spoof" });
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("floodgate.toml");
    let http = format!("{}:9318", ns.inside);
    let admin = format!("{}:8126", ns.inside);
    std::fs::write(
        &config,
        format!(
            "[statsd]\nudp = [\"0.0.0.0:8125\"]\ntcp = []\nflush_interval = \"1h\"\n\
             [admin]\nlisten = \"{admin}\"\n[http]\nlisten = \"{http}\"\n\
             [limits]\ntracked_sources = 10_000\ntcp_connections_per_source = 0\nkernel = \"{kernel}\"\n"
        ),
    )
    .unwrap();
    let mut command = ns.command(std::path::Path::new(env!("CARGO_BIN_EXE_floodgate")));
    command.arg("--config").arg(&config);
    let fg = Running::ready(command, http.as_str(), &dir.path().join("stderr.log"));
    let log = || fg.log();

    // The real sender: 1,000 datagrams a second from outside the namespace, starting before
    // the flood and ending after it.
    let to: SocketAddr = format!("{}:8125", ns.inside).parse().unwrap();
    let legit = Sender::start(&ns.host, to, "legit:1|c", 1000, 1);
    // The real sender is counted before the flood starts, and is established by then: tracked
    // for the guard's 1 s (`ESTABLISHED_NS`). It was first seen before it was counted, so a
    // wait of that second from then is the feature's own definition, not a guess.
    wait_for("the real sender counted", Duration::from_secs(30), || (counter(&admin, "legit") > 0.0).then_some(()));
    std::thread::sleep(Duration::from_nanos(floodgate_guard::ESTABLISHED_NS) + Duration::from_millis(100));

    // Each of the 131,072 addresses sends twice, 60,000 datagrams a second (6× the port's limit).
    let script = repo_root().join("scripts/spoof-udp.py");
    let flood_start = Instant::now();
    let out = ns
        .command(&require_tool("python3"))
        .arg(&script)
        .args(["--to", "127.0.0.1:8125", "--sources", "198.18.0.0/15", "--passes", "2", "--rate", "60000"])
        .output()
        .unwrap();
    assert!(out.status.success(), "spoof-udp.py: {}", String::from_utf8_lossy(&out.stderr));
    let summary = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(summary.contains("sent=262144 sources=131072"), "{summary}");

    // ...and after it ends.
    legit.wait_more(500);
    let legit_sent = legit.stop();

    // Every legitimate datagram was counted.
    wait_until("every real datagram counted", Duration::from_secs(30), || {
        let counted = counter(&admin, "legit");
        if counted == legit_sent as f64 {
            Ok(())
        } else {
            Err(format!("sent {legit_sent}, counted {counted}; {}", get(&http, "/metrics?only=floodgate")))
        }
    });
    // Every spoofed datagram accepted or counted as dropped.
    let (spoofed, dropped, m) = wait_until("every spoofed datagram decided on", Duration::from_secs(30), || {
        let spoofed = counter(&admin, "spoof");
        let m = get(&http, "/metrics?only=floodgate");
        // In user space, and (with the kernel layer) before the datagram was queued.
        let dropped = ["port_limit", "kernel_port_limit", "kernel_source_limit"]
            .iter()
            .map(|r| metric(&m, "floodgate_dropped_total", &[&format!("reason=\"{r}\"")]).unwrap_or(0.0))
            .sum::<f64>();
        if dropped + spoofed == 262_144.0 {
            Ok((spoofed, dropped, m))
        } else {
            Err(format!("{spoofed} + {dropped}"))
        }
    });
    // The port's limit held for the spoofed traffic: 10,000/s from the flood's start until
    // every datagram was decided on, plus half a burst for newcomers.
    let flood_secs = flood_start.elapsed().as_secs_f64();
    assert!(spoofed > 0.0);
    assert!(spoofed <= 10_000.0 * flood_secs + 5_000.0, "{spoofed} spoofed lines accepted in {flood_secs}s");

    // Bounded state: the table, the report, the log. (What that costs in memory is measured by
    // the benchmark, `floodgate-load bench --only sources`, not asserted here.)
    let tracked = sample(&m, "floodgate_guard_tracked_sources", &[]);
    assert!(tracked <= 10_048.0, "{tracked} sources tracked");
    let report: serde_json::Value = serde_json::from_str(&get(&http, "/offenders")).unwrap();
    assert!(report["offenders"].as_array().unwrap().len() <= 100);
    if kernel == "auto" {
        assert!(log().contains("kernel guard attached"), "{}", log());
        assert!(sample(&m, "floodgate_dropped_total", &["reason=\"kernel_port_limit\""]) > 0.0, "{m}");
    } else {
        assert_eq!(report["ports"][0]["currently_limited"], true, "{report}");
    }
    let limited_lines = log().lines().filter(|l| l.contains("over its limit")).count();
    assert!(limited_lines <= 3, "one line for the port, not one per source:\n{}", log());
    eprintln!(
        "{summary}: legit {legit_sent} all counted; spoofed accepted {spoofed}, dropped {dropped}; tracked {tracked}"
    );
}
