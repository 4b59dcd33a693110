//! Reload under traffic: SIGHUP adds a StatsD listener and raises a limit while counters flow,
//! `POST /-/reload` (when enabled) refuses a broken config and the old one keeps serving, and
//! every increment sent reaches Carbon (a real carbon-cache) exactly once.

mod common;

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

fn config(statsd: &[u16], admin: u16, http: u16, carbon: u16, per_source: u64, broken: bool) -> String {
    let udp: Vec<String> = statsd.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    format!(
        "[statsd]\nudp = [{}]\ntcp = []\nflush_interval = \"1s\"\n{}\
         [graphite]\naddress = \"127.0.0.1:{carbon}\"\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\n[http]\nlisten = \"127.0.0.1:{http}\"\nreload = true\n\
         [limits]\nudp_per_source = {per_source}\nudp_per_port = 0\n{NO_SYSLOG}{NO_CONNTRACK}",
        udp.join(", "),
        if broken { "flushInterval = 5\n" } else { "" }
    )
}

fn post(port: u16, path: &str) -> (u16, String) {
    http_post(port, path, &["X-Floodgate-Reload: 1"], "").unwrap()
}

/// Sends `reload.hits:1|c` to `port` about 1,000 times a second until `stop`; counts in `sent`.
fn sender(port: u16, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        while !stop.load(Ordering::Relaxed) {
            for _ in 0..10 {
                sock.send_to(b"reload.hits:1|c", ("127.0.0.1", port)).unwrap();
                sent.fetch_add(1, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    })
}

#[test]
fn reload_under_traffic_adds_a_listener_and_loses_nothing() {
    let carbon = Carbon::start();
    let dir = tempfile::tempdir().unwrap();
    let (a, b, admin, http) = (free_port(), free_port(), free_port(), free_port());
    let path = dir.path().join("floodgate.toml");
    std::fs::write(&path, config(&[a], admin, http, carbon.line_port, 1_000_000, false)).unwrap();
    let log = dir.path().join("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_floodgate"))
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(http, "/healthz").map(|(c, _)| c != 200).unwrap_or(true) {
        assert!(Instant::now() < deadline, "not ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (stop, sent) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let first = sender(a, stop.clone(), sent.clone());
    std::thread::sleep(Duration::from_millis(500));

    // SIGHUP: a second UDP listener, and a higher limit.
    std::fs::write(&path, config(&[a, b], admin, http, carbon.line_port, 2_000_000, false)).unwrap();
    Command::new("kill").arg("-HUP").arg(child.id().to_string()).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = http_get(http, "/api/status").unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let listening = v["listeners"].as_array().unwrap().iter().any(|l| l["address"] == format!("127.0.0.1:{b}"));
        if listening && v["config"]["limits"]["udp_per_source"] == 2_000_000 {
            break;
        }
        assert!(Instant::now() < deadline, "reload not in force: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = sender(b, stop.clone(), sent.clone());
    std::thread::sleep(Duration::from_millis(500));

    // A broken config over HTTP: refused with its reason; both listeners keep serving.
    std::fs::write(&path, config(&[a, b], admin, http, carbon.line_port, 1, true)).unwrap();
    let (code, body) = post(http, "/-/reload");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("flushInterval"), "{body}");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    first.join().unwrap();
    second.join().unwrap();
    let total = sent.load(Ordering::Relaxed) as f64;
    assert!(total > 1000.0);
    carbon.wait("stats_counts.reload.hits", |p| p.iter().sum::<f64>() == total);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("SIGHUP: config refused"), "{text}");

    // Removing a listener over HTTP: its port is released.
    std::fs::write(&path, config(&[b], admin, http, carbon.line_port, 2_000_000, false)).unwrap();
    let (code, body) = post(http, "/-/reload");
    assert_eq!(code, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while UdpSocket::bind(("127.0.0.1", a)).is_err() {
        assert!(Instant::now() < deadline, "127.0.0.1:{a} still bound after its listener was removed");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(UdpSocket::bind(("127.0.0.1", b)).is_err(), "the remaining listener's port is free");
    let _ = child.kill();
    let _ = child.wait();
}
