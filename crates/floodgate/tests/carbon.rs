//! Real Carbon: Debian's carbon-cache on loopback with a temporary storage directory and
//! 1-second retention; floodgate flushes to it (plaintext and pickle) and the Whisper files
//! are read back with `whisper-fetch`.

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Carbon {
    child: Child,
    dir: tempfile::TempDir,
    line_port: u16,
    pickle_port: u16,
}

impl Drop for Carbon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Carbon {
    fn start() -> Carbon {
        let bin = require_tool("carbon-cache");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let (line_port, pickle_port, query_port) = (free_port(), free_port(), free_port());
        std::fs::write(
            dir.path().join("carbon.conf"),
            format!(
                "[cache]\nSTORAGE_DIR = {d}/storage\nLOCAL_DATA_DIR = {d}/storage/whisper\nWHITELISTS_DIR = {d}/lists\n\
                 CONF_DIR = {d}\nLOG_DIR = {d}/log\nPID_DIR = {d}\nUSER =\nMAX_CACHE_SIZE = inf\n\
                 MAX_UPDATES_PER_SECOND = inf\nMAX_CREATES_PER_MINUTE = inf\n\
                 LINE_RECEIVER_INTERFACE = 127.0.0.1\nLINE_RECEIVER_PORT = {line_port}\n\
                 PICKLE_RECEIVER_INTERFACE = 127.0.0.1\nPICKLE_RECEIVER_PORT = {pickle_port}\n\
                 CACHE_QUERY_INTERFACE = 127.0.0.1\nCACHE_QUERY_PORT = {query_port}\nENABLE_UDP_LISTENER = False\n"
            ),
        )
        .unwrap();
        // One-second steps: with Carbon's default 60 s, several flushes a minute overwrite each other.
        std::fs::write(dir.path().join("storage-schemas.conf"), "[all]\npattern = .*\nretentions = 1s:1h\n").unwrap();
        let child = Command::new(bin)
            .arg(format!("--config={d}/carbon.conf"))
            .args(["--nodaemon", "start"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start carbon-cache");
        let carbon = Carbon { child, dir, line_port, pickle_port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", pickle_port)).is_err()
            || TcpStream::connect(("127.0.0.1", line_port)).is_err()
        {
            assert!(Instant::now() < deadline, "carbon-cache did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        carbon
    }

    fn whisper(&self, metric: &str) -> PathBuf {
        let mut p = self.dir.path().join("storage/whisper");
        for part in metric.split('.') {
            p.push(part);
        }
        p.set_extension("wsp");
        p
    }

    /// Non-empty points of a metric over the last 10 minutes.
    fn fetch(&self, metric: &str) -> Vec<f64> {
        let path = self.whisper(metric);
        if !Path::new(&path).exists() {
            return Vec::new();
        }
        let out = Command::new(require_tool("whisper-fetch"))
            .arg("--from")
            .arg((unix_now() - 600).to_string())
            .arg(&path)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .collect()
    }

    /// Polls until `check` holds for the metric's points (Carbon writes asynchronously).
    fn wait(&self, metric: &str, check: impl Fn(&[f64]) -> bool) -> Vec<f64> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let points = self.fetch(metric);
            if check(&points) {
                return points;
            }
            assert!(Instant::now() < deadline, "{metric}: points {points:?} never satisfied the check");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn flush_to_carbon(pickle: bool) {
    let carbon = Carbon::start();
    let (port, protocol) = if pickle { (carbon.pickle_port, "pickle") } else { (carbon.line_port, "plaintext") };
    let fg = Floodgate::start(
        "flush_interval = \"1s\"\npercentiles = [90]",
        &format!("[graphite]\naddress = \"127.0.0.1:{port}\"\nprotocol = \"{protocol}\"\n"),
    );
    // Three bursts, each in its own flush and so its own Whisper point.
    let mut total = 0;
    for burst in 1..=3 {
        let mut d = String::new();
        for _ in 0..burst * 10 {
            d.push_str("carbon.hits:1|c\n");
            total += 1;
        }
        d.push_str(&format!("carbon.temp:{}|g\n", burst * 10));
        fg.send_udp(d.as_bytes());
        // The burst is in Whisper before the next one is sent, so each lands in its own flush.
        carbon.wait("stats_counts.carbon.hits", |p| p.iter().sum::<f64>() == total as f64);
    }
    fg.send_udp(b"carbon.lat:10|ms\ncarbon.lat:20|ms\ncarbon.lat:30|ms\ncarbon.lat:40|ms\ncarbon.users:a|s\ncarbon.users:b|s\ncarbon.users:c|s\ncarbon.users:a|s");

    let hits = carbon.wait("stats_counts.carbon.hits", |p| p.iter().sum::<f64>() == total as f64);
    assert_eq!(hits.iter().filter(|v| **v > 0.0).count(), 3, "one point per burst: {hits:?}");
    // The per-second rate for a 1 s interval equals the count.
    carbon.wait("stats.carbon.hits", |p| p.iter().sum::<f64>() == total as f64);
    carbon.wait("stats.gauges.carbon.temp", |p| p.last() == Some(&30.0));
    carbon.wait("stats.timers.carbon.lat.upper", |p| p.contains(&40.0));
    carbon.wait("stats.timers.carbon.lat.upper_90", |p| p.contains(&40.0));
    carbon.wait("stats.timers.carbon.lat.mean", |p| p.contains(&25.0));
    carbon.wait("stats.timers.carbon.lat.count", |p| p.iter().sum::<f64>() == 4.0);
    carbon.wait("stats.sets.carbon.users.count", |p| p.contains(&3.0));
    carbon.wait("statsd.numStats", |p| !p.is_empty());
}

#[test]
fn plaintext_to_real_carbon() {
    flush_to_carbon(false);
}

#[test]
fn pickle_to_real_carbon() {
    flush_to_carbon(true);
}
