//! Real StatsD client libraries — Python `statsd` and `datadog`, npm `hot-shots` — sending to
//! floodgate over UDP, TCP and a Unix datagram socket; what they sent must come out of the
//! flush.

use std::process::Command;
use std::time::Duration;

use crate::common::*;

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
    let dir = tempfile::tempdir().unwrap();
    let records = dir.path().join("records.jsonl");
    // No syslog listener at all: the client's event and service check still go to the record
    // output that [syslog] names.
    let fg = Floodgate::start(
        "flush_interval = \"500ms\"",
        &format!(
            "[graphite]\naddress = \"127.0.0.1:{}\"\n[syslog]\nudp = []\ntcp = []\noutput = {{ kind = \"file\", path = \"{}\" }}\n",
            carbon.port,
            records.display()
        ),
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
            ("stats_counts.dogstatsd.events;alert_type=error", "1"),
            ("stats.gauges.service_check;check=db.up;env=prod", "2"),
        ]),
    );
    // The client's event and service check are not bad lines (Etsy statsd counted them so).
    assert_eq!(fg.sample("floodgate_bad_lines_total", &["listener=\"statsd_udp\""]), 0.0);
    // They are records in the log output, field by field.
    let found = wait_for("the event and the service check in the record output", Duration::from_secs(20), || {
        let text = std::fs::read_to_string(&records).unwrap_or_default();
        let found: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        (found.len() >= 2).then_some(found)
    });
    assert_eq!(found.len(), 2, "{found:?}");
    let event = found.iter().find(|r| r["kind"] == "event").expect("an event record");
    assert_eq!(event["title"], "Deploy", "{event}");
    assert_eq!(event["text"], "v1.2.3 is out\nall green", "the client's escaped newline is a newline: {event}");
    assert_eq!(event["alert_type"], "error");
    assert_eq!(event["priority"], "normal");
    assert_eq!(event["tags"], serde_json::json!(["env:prod"]));
    assert_eq!(event["listener"], "statsd_udp");
    assert_eq!(event["transport"], "udp");
    assert!(event["source"].as_str().unwrap().starts_with("127.0.0.1:"), "{event}");
    assert!(event["received_at"].as_str().unwrap().ends_with('Z'), "{event}");
    let check = found.iter().find(|r| r["kind"] == "service_check").expect("a service check record");
    assert_eq!(check["check"], "db.up", "{check}");
    assert_eq!(check["status"], 2);
    assert_eq!(check["status_name"], "critical");
    assert_eq!(check["message"], "replica lag");
    assert_eq!(check["tags"], serde_json::json!(["env:prod"]));
}

#[test]
fn datadog_client_over_a_unix_socket_is_counted_like_any_listener() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let carbon = Capture::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("statsd.sock");
    // A stale socket file from an earlier run is replaced; the mode is the one configured.
    drop(std::os::unix::net::UnixDatagram::bind(&path).unwrap());
    let records = dir.path().join("records.jsonl");
    let fg = Floodgate::start(
        &format!("flush_interval = \"500ms\"\nunix = [\"{}\"]\nunix_mode = \"0660\"", path.display()),
        &format!(
            "[graphite]\naddress = \"127.0.0.1:{}\"\n[syslog]\nudp = [\"127.0.0.1:{}\"]\ntcp = []\noutput = {{ kind = \"file\", path = \"{}\" }}\n",
            carbon.port,
            free_port(),
            records.display()
        ),
    );
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
    let script = repo_root().join("crates/floodgate/tests/clients/send_unix.py");
    run_client("python3", &[script.to_str().unwrap(), path.to_str().unwrap()]);
    carbon.wait_seen(
        Duration::from_secs(20),
        &owned(&[
            ("stats_counts.uds.hits;env=prod", "100"),
            ("stats.gauges.uds.temp", "3.5"),
            ("stats.timers.uds.hist.upper", "5"),
            ("stats.timers.uds.dist.upper", "7"),
            ("stats.timers.uds.lat.upper", "11"),
            ("stats.sets.uds.users.count", "2"),
            ("stats_counts.dogstatsd.events;alert_type=success", "1"),
            ("stats.gauges.service_check;check=uds.check", "1"),
        ]),
    );
    // Counted like any listener, on /metrics and /api/status.
    let address = path.display().to_string();
    let labels = ["listener=\"statsd_unix\"".to_string(), format!("address=\"{address}\"")];
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    assert_eq!(fg.sample("floodgate_received_lines_total", &labels), 58.0);
    assert_eq!(fg.sample("floodgate_bad_lines_total", &labels), 0.0);
    assert!(fg.sample("floodgate_received_packets_total", &labels) >= 1.0);
    let status: serde_json::Value = serde_json::from_str(&http_get(fg.http, "/api/status").unwrap().1).unwrap();
    let row = status["listeners"].as_array().unwrap().iter().find(|l| l["listener"] == "statsd_unix").cloned();
    let row = row.expect("a statsd_unix row in /api/status");
    assert_eq!(row["address"], address.as_str());
    assert_eq!(row["messages"], 58);
    // The event and the service check are records naming the client's process.
    let found = wait_for("two records", Duration::from_secs(20), || {
        let text = std::fs::read_to_string(&records).unwrap_or_default();
        let found: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        (found.len() >= 2).then_some(found)
    });
    let event = found.iter().find(|r| r["kind"] == "event").expect("an event record");
    assert_eq!(
        (&event["title"], &event["text"], &event["alert_type"], &event["priority"]),
        (&"Backup done".into(), &"3 files".into(), &"success".into(), &"low".into()),
        "{event}"
    );
    assert_eq!(event["tags"], serde_json::json!(["job:nightly"]));
    assert_eq!(event["listener"], "statsd_unix");
    assert_eq!(event["transport"], "unix");
    assert!(event["peer_pid"].as_u64().is_some_and(|p| p > 0), "{event}");
    assert_eq!(event["peer_uid"], 0);
    let check = found.iter().find(|r| r["kind"] == "service_check").expect("a service check record");
    assert_eq!(
        (&check["check"], &check["status"], &check["status_name"]),
        (&"uds.check".into(), &1.into(), &"warning".into())
    );
    assert_eq!(check["message"], "slow disk");
}

#[test]
fn npm_hot_shots_over_udp_tcp_and_a_unix_socket() {
    let carbon = Capture::start();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("statsd.sock");
    let fg = Floodgate::start(
        &format!("flush_interval = \"500ms\"\nunix = [\"{}\"]", sock.display()),
        &format!("[graphite]\naddress = \"127.0.0.1:{}\"\n", carbon.port),
    );
    let module = repo_root().join("target/peers/js/node_modules/hot-shots");
    assert!(module.exists(), "hot-shots not installed: run ./scripts/test.sh");
    let script = repo_root().join("crates/floodgate/tests/clients/send_hotshots.js");
    let args = [script.to_str().unwrap(), &fg.statsd.to_string(), module.to_str().unwrap(), sock.to_str().unwrap()];
    run_client("node", &args);
    let mut want = Vec::new();
    for proto in ["udp", "tcp", "uds"] {
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

/// With `origin_tags = ["container_id"]`, a UDP client's own `|c:` container id (the Python
/// `datadog` client's `container_id`) becomes the `container_id` tag; without it, the field is
/// read and dropped.
#[test]
fn datadog_client_container_id_over_udp() {
    let carbon = Capture::start();
    let graphite = format!("[graphite]\naddress = \"127.0.0.1:{}\"\n", carbon.port);
    let script = repo_root().join("crates/floodgate/tests/clients/send_container.py");
    let id = "6f1d2c3b4a59687f0e1d2c3b4a5968778695a4b3c2d1e0f9e8d7c6b5a4938271";
    for (extra, want) in [
        ("origin_tags = [\"container_id\"]", format!("stats_counts.ctr.hits;env=prod;container_id={id}")),
        ("", "stats_counts.ctr.hits;env=prod".to_string()),
    ] {
        let fg = Floodgate::start(&format!("flush_interval = \"500ms\"\n{extra}"), &graphite);
        run_client("python3", &[script.to_str().unwrap(), &fg.statsd.to_string(), id]);
        carbon.wait_seen(Duration::from_secs(20), &[(want, "4".to_string())]);
        assert_eq!(fg.sample("floodgate_bad_lines_total", &["listener=\"statsd_udp\""]), 0.0);
    }
}
