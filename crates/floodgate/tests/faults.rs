//! Faults that spread (issue 27): one failing output (a full disk, a dead Carbon node) must
//! degrade only itself — never a receive path, never the shutdown's budget.

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::*;

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
