//! Real StatsD client libraries — Python `statsd` and `datadog`, npm `hot-shots` — sending to
//! floodgate over UDP and TCP; what they sent must come out of the flush.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn owned(want: &[(&str, &str)]) -> Vec<(String, String)> {
    want.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
}

fn run_client(program: &str, args: &[&str]) {
    let out = Command::new(require_tool(program)).args(args).output().unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("sent"),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn python_statsd_and_datadog_clients() {
    let carbon = Capture::start();
    let fg = Floodgate::start(
        "flush_interval = \"500ms\"",
        &format!("[graphite]\naddress = \"127.0.0.1:{}\"\n", carbon.port),
    );
    let script = repo_root().join("crates/floodgate/tests/clients/send_python.py");
    run_client("python3", &[script.to_str().unwrap(), &fg.statsd.to_string()]);
    carbon.wait_seen(
        Duration::from_secs(20),
        &owned(&[
            ("stats_counts.py.tcp.hits", "4"),
            ("stats_counts.dd.hits;env=prod;az=b", "2"),
            ("stats_counts.py.udp.hits", "3"),
            ("stats_counts.py.udp.sampled", "1"),
            ("stats_counts.py.udp.piped", "7"),
            ("stats.gauges.py.udp.temp", "23"),
            ("stats.timers.py.udp.lat.upper", "30"),
            ("stats.timers.py.udp.lat.lower", "12"),
            ("stats.sets.py.udp.users.count", "2"),
            ("stats.gauges.py.tcp.temp", "7"),
            ("stats.timers.py.tcp.lat.upper", "9"),
            ("stats.sets.py.tcp.users.count", "1"),
            ("stats.gauges.dd.temp;env=prod", "3.25"),
            // DogStatsD histograms and distributions are timers in floodgate.
            ("stats.timers.dd.hist.upper", "5"),
            ("stats.timers.dd.dist.upper", "7"),
            ("stats.timers.dd.lat.upper", "11"),
            ("stats.sets.dd.users.count", "1"),
        ]),
    );
}

#[test]
fn npm_hot_shots_over_udp_and_tcp() {
    let carbon = Capture::start();
    let fg = Floodgate::start(
        "flush_interval = \"500ms\"",
        &format!("[graphite]\naddress = \"127.0.0.1:{}\"\n", carbon.port),
    );
    let module = repo_root().join("target/peers/js/node_modules/hot-shots");
    assert!(module.exists(), "hot-shots not installed: run ./scripts/test.sh");
    let script = repo_root().join("crates/floodgate/tests/clients/send_hotshots.js");
    run_client("node", &[script.to_str().unwrap(), &fg.statsd.to_string(), module.to_str().unwrap()]);
    let mut want = Vec::new();
    for proto in ["udp", "tcp"] {
        for (name, value) in [
            ("stats_counts.js.PROTO.hits;env=prod", "4"),
            ("stats.gauges.js.PROTO.temp", "12.5"),
            ("stats.timers.js.PROTO.lat.upper", "42"),
            ("stats.timers.js.PROTO.hist.upper", "8"),
            ("stats.timers.js.PROTO.dist.upper", "9"),
            ("stats.sets.js.PROTO.users.count", "1"),
        ] {
            want.push((name.replace("PROTO", proto), value.to_string()));
        }
    }
    carbon.wait_seen(Duration::from_secs(20), &want);
}
