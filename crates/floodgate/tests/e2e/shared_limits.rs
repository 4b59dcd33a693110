//! `[limits] shared`: three floodgate hosts serve one StatsD port (127.0.0.1–3:8125, in a
//! network namespace this test creates) and share its limit of 10,000/s through one real
//! `redis-server`. Each host is flooded from forged sources (a raw socket, 198.18.0.0/15) at
//! 8,000/s, 24,000/s in all, while one legitimate sender on each host sends 200/s:
//! - with Redis, the three together accept 10,000/s (±5 %);
//! - with Redis killed, each host holds the port to its share (10,000 / 3, ±5 %), and says so;
//! - with Redis back, the fleet's 10,000/s again;
//! - throughout, no legitimate message is lost and no host stops.

use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;

const HOSTS: usize = 3;
const PORT_LIMIT: f64 = 10_000.0;

struct Host {
    admin: String,
    http: String,
    fg: Running,
}

impl Host {
    fn counter(&self, name: &str) -> f64 {
        console_counter(&self.admin, name).unwrap_or(0.0)
    }

    fn metrics(&self) -> String {
        http_get_at(&self.http, "/metrics?only=floodgate_guard").map(|r| r.1).unwrap_or_default()
    }
}

fn start_redis(ns: &Namespace, dir: &std::path::Path) -> Peer {
    let redis = ns
        .command(&require_tool("redis-server"))
        .args(["--bind", "127.0.0.1", "--port", "6379", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server");
    ns.run(|| {
        wait_for("redis answers PING", Duration::from_secs(20), || {
            use std::io::{Read, Write};
            let mut s = TcpStream::connect("127.0.0.1:6379").ok()?;
            s.write_all(b"PING\r\n").ok()?;
            let mut buf = [0u8; 7];
            s.read_exact(&mut buf).ok()?;
            (&buf == b"+PONG\r\n").then_some(())
        })
    });
    Peer(redis)
}

/// Every host's accepted lines (forged and legitimate), at one instant.
fn accepted(hosts: &[Host]) -> (Instant, Vec<f64>) {
    let counts = hosts.iter().map(|h| h.counter("spoof") + h.counter("legit")).collect();
    (Instant::now(), counts)
}

/// Each host's accepted lines per second over `window`.
fn rates(hosts: &[Host], window: Duration) -> Vec<f64> {
    let (t0, a) = accepted(hosts);
    std::thread::sleep(window);
    let (t1, b) = accepted(hosts);
    let seconds = (t1 - t0).as_secs_f64();
    a.iter().zip(&b).map(|(a, b)| (b - a) / seconds).collect()
}

fn within(what: &str, got: f64, want: f64, tolerance: f64) {
    assert!(
        (got - want).abs() <= want * tolerance,
        "{what}: {got:.0}/s, wanted {want:.0}/s ±{:.0} %",
        tolerance * 100.0
    );
}

fn wait_fallback(hosts: &[Host], state: u8) {
    for h in hosts {
        // Every 250 ms: the test is a remote source to the namespace's floodgate, held to
        // 10 connections a second.
        let every = Duration::from_millis(250);
        wait_until_every(&format!("floodgate_guard_shared_fallback {state}"), Duration::from_secs(20), every, || {
            let m = h.metrics();
            match metric(&m, "floodgate_guard_shared_fallback", &[]) {
                Some(v) if v == state as f64 => Ok(()),
                _ => Err(m),
            }
        });
    }
}

#[test]
fn three_hosts_share_one_port_limit_through_redis() {
    let ns = Namespace::create("redis");
    let dir = tempfile::tempdir().unwrap();
    let redis = start_redis(&ns, dir.path());

    let hosts: Vec<Host> = (1..=HOSTS)
        .map(|i| {
            let (admin, http) = (format!("{}:{}", ns.inside, 18125 + i), format!("{}:{}", ns.inside, 19317 + i));
            let config = dir.path().join(format!("host{i}.toml"));
            // From the defaults (udp_per_port = 10,000), only: this host's address (and no
            // syslog listeners: the three would take one port on 127.0.0.1); counters
            // kept for the test to read (no flush); a limiter table of 10,000, as in the
            // spoofing test, so forged sources that come back stay newcomers as one-shot
            // spoofed sources are; and the shared budget.
            std::fs::write(
                &config,
                format!(
                    "[statsd]\nudp = [\"127.0.0.{i}:8125\"]\ntcp = []\nflush_interval = \"1h\"\n\
                     [syslog]\nudp = []\ntcp = []\n[admin]\nlisten = \"{admin}\"\n[http]\nlisten = \"{http}\"\n\
                     [limits]\ntracked_sources = 10_000\nshared = {{ redis = \"redis://127.0.0.1:6379\" }}\n"
                ),
            )
            .unwrap();
            let mut command = ns.command(std::path::Path::new(env!("CARGO_BIN_EXE_floodgate")));
            command.arg("--config").arg(&config).current_dir(dir.path());
            let fg = Running::ready(command, http.as_str(), &dir.path().join(format!("host{i}.log")));
            Host { admin, http, fg }
        })
        .collect();

    // The legitimate senders: 200/s to each host from a process of the host itself, started
    // before the flood, counted, and then established (tracked for the guard's 1 s).
    let legit: Vec<Sender> = (1..=HOSTS)
        .map(|i| {
            let to: SocketAddr = format!("127.0.0.{i}:8125").parse().unwrap();
            ns.run(|| Sender::start("127.0.0.1", to, "legit:1|c", 200, 1))
        })
        .collect();
    for h in &hosts {
        wait_for("the legitimate sender counted", Duration::from_secs(30), || (h.counter("legit") > 0.0).then_some(()));
    }
    std::thread::sleep(Duration::from_nanos(floodgate_guard::ESTABLISHED_NS) + Duration::from_millis(100));

    // The flood: 32,768 forged sources per host, five times each, 8,000/s per host (~20 s).
    let script = repo_root().join("scripts/spoof-udp.py");
    let blocks = ["198.18.0.0/17", "198.18.128.0/17", "198.19.0.0/17"];
    let mut flood: Vec<Peer> = blocks
        .iter()
        .enumerate()
        .map(|(i, block)| {
            ns.command(&require_tool("python3"))
                .arg(&script)
                .args(["--to", &format!("127.0.0.{}:8125", i + 1), "--sources", block, "--passes", "5"])
                .args(["--rate", "8000"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map(Peer)
                .unwrap()
        })
        .collect();
    // Measurement windows, not waits for readiness: each window starts 2 s after a change
    // (the flood's start, Redis back), once the burst a GCRA cell allows on top of its rate has
    // been taken, and measures the rate over the next three.
    let settle = Duration::from_secs(2);
    std::thread::sleep(settle);
    let shared = rates(&hosts, Duration::from_secs(3));
    let total: f64 = shared.iter().sum();
    eprintln!("shared: {shared:.0?} = {total:.0}/s");
    within("the fleet, sharing through Redis", total, PORT_LIMIT, 0.05);
    let report: serde_json::Value =
        serde_json::from_str(&http_get_at(&hosts[0].http, "/offenders").unwrap().1).unwrap();
    assert_eq!(report["ports"][0]["budget"], "shared", "{report}");
    assert_eq!(report["ports"][0]["hosts"], HOSTS, "{report}");
    assert_eq!(report["shared"]["state"], "shared", "{report}");

    // Redis killed: each host falls back to its share.
    drop(redis);
    wait_fallback(&hosts, 1);
    let fallen = rates(&hosts, Duration::from_secs(3));
    eprintln!("Redis away: {fallen:.0?}");
    for (i, r) in fallen.iter().enumerate() {
        within(&format!("host {} alone, on its share", i + 1), *r, PORT_LIMIT / HOSTS as f64, 0.05);
    }
    let report: serde_json::Value =
        serde_json::from_str(&http_get_at(&hosts[1].http, "/api/status").unwrap().1).unwrap();
    let guard = &report["guard"];
    assert_eq!(guard["ports"][0]["budget"], "shared_fallback", "{report}");
    assert_eq!(guard["ports"][0]["share"], 3334, "{report}");
    assert_eq!(guard["shared"]["state"], "fallback", "{report}");
    assert!(hosts[1].fg.log().contains("Redis cannot be reached"), "{}", hosts[1].fg.log());

    // Redis back (empty: it kept nothing): the fleet's budget again.
    let redis = start_redis(&ns, dir.path());
    wait_fallback(&hosts, 0);
    std::thread::sleep(settle);
    let back = rates(&hosts, Duration::from_secs(3));
    let total: f64 = back.iter().sum();
    eprintln!("Redis back: {back:.0?} = {total:.0}/s");
    within("the fleet, Redis back", total, PORT_LIMIT, 0.05);
    for (i, f) in flood.iter_mut().enumerate() {
        assert!(
            f.0.try_wait().unwrap().is_none(),
            "flood {i} ended before the last window: the windows measured less than a flood"
        );
    }

    // The flood ends: every forged line accepted or counted as dropped, on every host.
    for (h, mut f) in hosts.iter().zip(flood) {
        let status = f.0.wait().unwrap();
        let mut summary = String::new();
        std::io::Read::read_to_string(&mut f.0.stdout.take().unwrap(), &mut summary).unwrap();
        assert!(status.success() && summary.contains("sent=163840"), "{status}: {summary}");
        wait_until_every("every forged line decided on", Duration::from_secs(30), Duration::from_millis(250), || {
            let m = http_get_at(&h.http, "/metrics?only=floodgate_dropped").unwrap().1;
            let dropped: f64 = ["port_limit", "kernel_port_limit", "kernel_source_limit"]
                .iter()
                .map(|r| metric(&m, "floodgate_dropped_total", &[&format!("reason=\"{r}\"")]).unwrap_or(0.0))
                .sum();
            let spoof = h.counter("spoof");
            let offenders = http_get_at(&h.http, "/offenders").unwrap().1;
            (spoof + dropped == 163_840.0).then_some(()).ok_or(format!("{spoof} + {dropped}: {offenders}"))
        });
    }
    // No legitimate line lost, no host down.
    for (h, sender) in hosts.iter().zip(legit) {
        let sent = sender.stop();
        wait_until_every("every legitimate line counted", Duration::from_secs(30), Duration::from_millis(250), || {
            let counted = h.counter("legit");
            (counted == sent as f64).then_some(()).ok_or(format!("sent {sent}, counted {counted}"))
        });
        assert_eq!(http_get_at(&h.http, "/healthz").unwrap().0, 200);
    }
    drop(redis);
}
