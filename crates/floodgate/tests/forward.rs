//! Agents → aggregators → a real carbon-cache: counters from several hosts add up instead of
//! overwriting each other, every series lands at exactly one aggregator, and an aggregator
//! killed mid-run loses and doubles nothing.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::*;

/// Flush interval of every process here; the aggregators wait half of it for the agents.
const INTERVAL_MS: u64 = 2000;

fn aggregator(carbon: &Carbon, port: u16, state_dir: &std::path::Path) -> Floodgate {
    Floodgate::start(
        &format!("flush_interval = \"{INTERVAL_MS}ms\""),
        &format!(
            "[graphite]\naddress = \"127.0.0.1:{}\"\n\n[aggregator]\nlisten = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\n",
            carbon.line_port,
            state_dir.display()
        ),
    )
}

fn agent(name: &str, aggregators: &[u16]) -> Floodgate {
    let list: Vec<String> = aggregators.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    Floodgate::start(
        &format!("flush_interval = \"{INTERVAL_MS}ms\""),
        &format!("[forward]\naggregators = [{}]\nagent_id = \"{name}\"\n", list.join(", ")),
    )
}

fn metrics(fg: &Floodgate) -> String {
    http_get(fg.http, "/metrics?only=floodgate").unwrap().1
}

fn wait_connected(agent: &Floodgate, aggregators: &[u16]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for p in aggregators {
        let label = format!("aggregator=\"127.0.0.1:{p}\"");
        while metric(&metrics(agent), "floodgate_forward_connected", &[&label]) != Some(1.0) {
            assert!(Instant::now() < deadline, "agent not connected to {p}: {}", agent.stderr());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Sleeps until a quarter into the next flush interval, so what is sent next lands in one
/// interval on every agent.
fn just_after_a_boundary() {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let next = (now / INTERVAL_MS + 1) * INTERVAL_MS + INTERVAL_MS / 4;
    std::thread::sleep(Duration::from_millis(next - now));
}

fn send_to(fg: &Floodgate, text: &str) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.send_to(text.as_bytes(), SocketAddr::from(([127, 0, 0, 1], fg.statsd))).unwrap();
}

/// Three agents each count `hits` (and 20 other counters) once per interval for five
/// intervals; two aggregators share the series and write to one Carbon.
#[test]
fn counters_from_three_agents_add_up_at_carbon() {
    let carbon = Carbon::start();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let ports = [free_port(), free_port()];
    let _aggs: Vec<Floodgate> = (0..2).map(|i| aggregator(&carbon, ports[i], dirs[i].path())).collect();
    let agents: Vec<Floodgate> = (0..3).map(|i| agent(&format!("agent{i}"), &ports)).collect();
    for a in &agents {
        wait_connected(a, &ports);
    }
    let mut text = String::from("hits:1|c\n");
    for k in 0..20 {
        text.push_str(&format!("svc{k}.requests:1|c\n"));
    }
    for _ in 0..5 {
        just_after_a_boundary();
        for a in &agents {
            send_to(a, &text);
        }
    }
    let check = |name: &str| {
        let points = carbon.wait(name, |p| p.iter().sum::<f64>() >= 15.0);
        let nonzero: Vec<f64> = points.into_iter().filter(|v| *v != 0.0).collect();
        assert_eq!(nonzero, vec![3.0; 5], "{name}: one point of 3 per interval");
    };
    check("stats_counts.hits");
    for k in 0..20 {
        check(&format!("stats_counts.svc{k}.requests"));
    }
    // Both aggregators took a share, and every agent's batches were acknowledged.
    for (i, agg) in _aggs.iter().enumerate() {
        let m = metrics(agg);
        let series = metric(&m, "floodgate_aggregator_series_total", &[]).unwrap();
        assert!(series > 0.0, "aggregator {i} merged nothing");
    }
    for a in &agents {
        for p in &ports {
            let label = format!("aggregator=\"127.0.0.1:{p}\"");
            let deadline = Instant::now() + Duration::from_secs(20);
            while metric(&metrics(a), "floodgate_forward_queued_batches", &[&label]) != Some(0.0) {
                assert!(Instant::now() < deadline, "batches never acknowledged by {p}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}
