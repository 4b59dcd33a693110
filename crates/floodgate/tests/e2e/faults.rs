//! Faults that spread (issue 27): one failing output (a full disk, a dead Carbon node) must
//! degrade only itself — never a receive path, never the shutdown's budget.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use crate::common::*;

const WAIT: Duration = Duration::from_secs(60);

/// A small tmpfs of the test's own (root), unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(ok.success(), "mount a tmpfs (root)");
        SmallDisk { dir }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Item 8: the record output's disk fills up. It used to stop the StatsD receive thread that
/// also writes DogStatsD events (450 of 1,000 other senders' counters counted) and hang
/// SIGTERM past the unit's 60 s without a final flush. Now the StatsD listener drops the
/// records it cannot hand on (counted, `output_full`) and reads on; at SIGTERM the output
/// gives up on the disk after a few tries, counts what it drops, and the final flush delivers
/// every counter.
#[test]
fn a_full_disk_degrades_the_record_output_only() {
    let disk = SmallDisk::mount("256k");
    let carbon = Capture::start();
    // 4,000 events and 1,000 counters from one address at once: the guard is not under test.
    let mut fg = Floodgate::start(
        "flush_interval = \"1h\"",
        &format!(
            "[graphite]\naddress = \"127.0.0.1:{}\"\n{BULK_UDP}\n[syslog]\noutput = {{ kind = \"file\", path = \"{}\" }}\n",
            carbon.port,
            disk.path().join("records.jsonl").display()
        ),
    );
    let events = UdpSocket::bind("127.0.0.1:0").unwrap();
    let text = "x".repeat(1000);
    let event = format!("_e{{5,{}}}:title|{text}", text.len());
    // Until the disk is full and the output's queue with it (records dropped at the listener).
    let full = wait_for("the record output stuck on a full disk", WAIT, || {
        for _ in 0..200 {
            events.send_to(event.as_bytes(), fg.udp_addr()).unwrap();
        }
        let m = fg.self_metrics();
        let dropped = metric(&m, "floodgate_dropped_total", &["listener=\"statsd_udp\"", "reason=\"output_full\""]);
        dropped.filter(|d| *d > 0.0).map(|_| m)
    });
    assert!(sample(&full, "floodgate_syslog_output_errors_total", &[]) > 0.0, "the disk is full");
    // Other senders' counters are all read meanwhile.
    let senders: Vec<UdpSocket> = (0..1000).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    for s in &senders {
        s.send_to(b"others.hits:1|c", fg.udp_addr()).unwrap();
    }
    fg.wait_counter("others.hits", "1000");
    // SIGTERM: out within the unit's budget, the final flush delivered.
    let stopped = Instant::now();
    assert_eq!(fg.terminate(), Some(0), "{}", fg.stderr());
    assert!(stopped.elapsed() < Duration::from_secs(30), "stopping took {:?}", stopped.elapsed());
    carbon.wait_seen(WAIT, &[("stats_counts.others.hits".to_string(), "1000".to_string())]);
    assert!(fg.stderr().contains("records dropped"), "the loss is said: {}", fg.stderr());
}

/// Item 9: one Carbon node of an aggregator's cluster is down. Its buffer filled with flushes
/// holding agents' batches, the aggregator answered every agent `busy`, and the healthy nodes
/// got nothing new until the node came back. Now the down node holds its own share (in its
/// buffer, the oldest dropped and counted past it) and the acknowledgement waits for the
/// healthy nodes only: the aggregator never turns agents away, and every increment of the
/// names the healthy nodes own reaches them, exactly.
#[test]
fn a_dead_carbon_node_holds_only_its_own_share() {
    let (a, b) = (Capture::start_on("127.0.0.1"), Capture::start_on("127.0.0.2"));
    let dead = free_port(); // nothing listens on 127.0.0.3:dead
    let (port, dir) = (free_port(), tempfile::tempdir().unwrap());
    let aggregator = Floodgate::start(
        "flush_interval = \"1s\"",
        &format!(
            "[graphite]\ndestinations = [\"127.0.0.1:{}:a\", \"127.0.0.2:{}:b\", \"127.0.0.3:{dead}:c\"]\nbuffer = \"64KiB\"\n\
             [aggregator]\nlisten = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\n",
            a.port,
            b.port,
            dir.path().display()
        ),
    );
    // An agent on its own host's traffic: the UDP rates are off (README's sizing advice).
    let agent = Floodgate::start(
        "flush_interval = \"1s\"",
        &format!("[forward]\naggregators = [\"127.0.0.1:{port}\"]\nagent_id = \"web-1\"\n{BULK_UDP}"),
    );
    let names = 600;
    let rounds = 10;
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..rounds {
        for chunk in 0..names / 20 {
            let text: String = (0..20).map(|i| format!("cluster.name{}:1|c\n", chunk * 20 + i)).collect();
            u.send_to(text.as_bytes(), agent.udp_addr()).unwrap();
        }
        // One round per agent flush (each lands in its own interval).
        let flushes = agent.sample("floodgate_flushes_total", &[]);
        agent.wait_sample("floodgate_flushes_total", &[], |f| f > flushes);
    }
    // Every line in the agent's flushes, every batch acknowledged: nothing left queued.
    wait_until("the agent's batches all acknowledged", WAIT, || {
        let queued = agent.sample("floodgate_forward_queued_batches", &[]);
        if queued == 0.0 {
            Ok(())
        } else {
            Err(format!("{queued} batches queued"))
        }
    });
    assert_eq!(aggregator.sample("floodgate_aggregator_busy_total", &[]), 0.0, "agents were turned away");
    // The healthy nodes' names: each exactly `rounds`, summed over the payloads they got.
    let mut totals = std::collections::HashMap::<String, f64>::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    for capture in [&a, &b] {
        while let Some(p) = capture.next(deadline.saturating_duration_since(Instant::now())) {
            for (name, value, _) in parse_plaintext(&p) {
                if let Some(n) = name.strip_prefix("stats_counts.cluster.") {
                    *totals.entry(n.to_string()).or_default() += value.parse::<f64>().unwrap();
                }
            }
        }
    }
    assert!(totals.len() > names / 2, "the two healthy nodes own {} of {names} names", totals.len());
    let short: Vec<_> = totals.iter().filter(|(_, v)| **v != rounds as f64).collect();
    assert!(short.is_empty(), "names not exactly {rounds} on the healthy nodes: {short:?}");
    // The dead node's share waited in its buffer, the oldest dropped and counted.
    let c = "destination=\"127.0.0.3:".to_string() + &dead.to_string() + ":c\"";
    assert!(aggregator.sample("floodgate_sink_dropped_payloads_total", &[&c]) > 0.0);
}

/// Item 8, the byte half: a source's volume is bounded in bytes, not only in messages. 200
/// syslog messages of 60 KiB from one address are 200 messages, far under the default
/// 3,000/s, and used to be written whole (control bytes escaped six times larger on top).
/// Now each costs 60 of the source's budget: a second's burst lets about 50 through.
#[test]
fn a_source_is_held_to_a_volume_in_bytes_too() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("records.jsonl");
    let fg = Floodgate::start(
        "",
        &format!(
            "[syslog]\nmax_message = \"64KiB\"\noutput = {{ kind = \"file\", path = \"{}\" }}\n",
            output.display()
        ),
    );
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut message = b"<13>Dec  6 10:00:00 host app: ".to_vec();
    message.resize(60 << 10, 0x01);
    let started = Instant::now();
    for _ in 0..200 {
        s.send_to(&message, ("127.0.0.1", fg.syslog)).unwrap();
    }
    let took = started.elapsed().as_secs_f64();
    let udp = "listener=\"syslog_udp\"";
    let written = wait_for("all 200 decided", WAIT, || {
        let m = fg.self_metrics();
        let dropped: f64 = ["source_limit", "kernel_source_limit"]
            .iter()
            .filter_map(|r| metric(&m, "floodgate_dropped_total", &[udp, &format!("reason=\"{r}\"")]))
            .sum();
        let messages = metric(&m, "floodgate_syslog_messages_total", &[udp]).unwrap_or(0.0);
        (messages + dropped == 200.0).then_some(messages)
    });
    // 3,000 units a second, 60 a message: a burst of 50, then 50 a second.
    assert!(written <= 50.0 + 50.0 * (took + 1.0), "{written} messages of 60 KiB admitted in {took:.2} s");
    assert!(written >= 1.0);
}
