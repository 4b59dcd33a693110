//! `[otlp]` against a receiver that decodes each request with OpenTelemetry's own protobuf
//! definitions (Python's `opentelemetry-proto`, `tests/otlp/receiver.py`), checked field by
//! field: sums and their temporality over three flushes, start times, exponential histograms
//! (scale, zero count, both signs, count and sum exact, quantiles within the stated bound),
//! attributes and resource; retries on 503 and 429 with `Retry-After` that lose and double
//! nothing; a 400 and a partial success; and three agents' timers as one histogram from an
//! aggregator. Each floodgate starts from the defaults plus `[otlp]` (and a short flush
//! interval, so the test does not wait ten seconds per flush).

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(30);

/// The Python receiver, killed when dropped.
struct Receiver {
    port: u16,
    out: PathBuf,
    _peer: Peer,
    _dir: tempfile::TempDir,
}

impl Receiver {
    /// A receiver answering `answers` first (see receiver.py), then 200.
    fn start(answers: &str) -> Receiver {
        Receiver::start_with(answers, &[])
    }

    /// The same with more arguments (`--tls CERT KEY`).
    fn start_with(answers: &str, args: &[&std::ffi::OsStr]) -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let (port_file, out) = (dir.path().join("port"), dir.path().join("requests.jsonl"));
        let script = repo_root().join("crates/floodgate/tests/otlp/receiver.py");
        let child = Command::new(require_tool("python3"))
            .arg(script)
            .args(args)
            .arg(&port_file)
            .arg(&out)
            .arg(answers)
            .spawn()
            .unwrap();
        let peer = Peer(child);
        let port = wait_for("the receiver's port", WAIT, || std::fs::read_to_string(&port_file).ok()?.parse().ok());
        Receiver { port, out, _peer: peer, _dir: dir }
    }

    /// Every request so far, in arrival order.
    fn requests(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// The requests the receiver took (answered 200).
    fn taken(&self) -> Vec<Value> {
        self.requests().into_iter().filter(|r| r["answered"] == "200").collect()
    }
}

/// floodgate with `[otlp]` at `receiver` (the rest: the defaults, a 300 ms flush).
fn with_otlp(receiver: &Receiver, otlp: &str, sections: &str) -> Floodgate {
    Floodgate::start(
        "flush_interval = \"300ms\"",
        &format!("[otlp]\nendpoint = \"http://127.0.0.1:{}\"\n{otlp}\n{sections}", receiver.port),
    )
}

/// The metrics of a request.
fn metrics(request: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for rm in request["request"]["resourceMetrics"].as_array().into_iter().flatten() {
        for sm in rm["scopeMetrics"].as_array().into_iter().flatten() {
            out.extend(sm["metrics"].as_array().into_iter().flatten());
        }
    }
    out
}

/// The data points of metric `name` in a request, with the metric's data kind.
fn points<'a>(request: &'a Value, name: &str) -> Vec<(&'a str, &'a Value, &'a Value)> {
    let mut out = Vec::new();
    for m in metrics(request).into_iter().filter(|m| m["name"] == name) {
        for kind in ["sum", "gauge", "histogram", "exponentialHistogram"] {
            for p in m[kind]["dataPoints"].as_array().into_iter().flatten() {
                out.push((kind, &m[kind], p));
            }
        }
    }
    out
}

/// A 64-bit integer field (the JSON mapping writes them as strings; absent is 0).
fn int(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.parse().unwrap(),
        Value::Number(n) => n.as_u64().unwrap(),
        _ => 0,
    }
}

fn attributes(point: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = point["attributes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| (a["key"].as_str().unwrap().to_string(), a["value"]["stringValue"].as_str().unwrap_or("").to_string()))
        .collect();
    out.sort();
    out
}

fn send(fg: &Floodgate, text: &str) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.send_to(text.as_bytes(), SocketAddr::from(([127, 0, 0, 1], fg.statsd))).unwrap();
}

/// The `hits` values taken so far, with each point's request index.
fn hits(receiver: &Receiver) -> Vec<(usize, f64, u64, u64)> {
    let taken = receiver.taken();
    let mut out = Vec::new();
    for (i, r) in taken.iter().enumerate() {
        for (_, _, p) in points(r, "hits") {
            out.push((i, p["asDouble"].as_f64().unwrap(), int(&p["startTimeUnixNano"]), int(&p["timeUnixNano"])));
        }
    }
    out
}

/// The time of any point of a request (every point of a flush has the flush's time).
fn request_time(request: &Value) -> u64 {
    let m = metrics(request);
    let data = ["sum", "gauge", "exponentialHistogram", "histogram"].iter().find_map(|k| m.first()?.get(k));
    int(&data.unwrap()["dataPoints"][0]["timeUnixNano"])
}

#[test]
fn sums_over_three_flushes_cumulative_and_delta_with_their_start_times() {
    for temporality in ["cumulative", "delta"] {
        let receiver = Receiver::start("");
        let fg = with_otlp(&receiver, &format!("temporality = \"{temporality}\""), "");
        let mut total = 0.0;
        for n in [3.0, 4.0, 5.0] {
            send(&fg, &format!("hits:{n}|c|#env:prod,zone:a"));
            total += n;
            // Wait for the flush that carries it before sending the next.
            wait_for(&format!("{temporality}: hits after {total}"), WAIT, || {
                let seen = hits(&receiver);
                let got = if temporality == "delta" { seen.iter().map(|h| h.1).sum() } else { seen.last()?.1 };
                (got == total).then_some(())
            });
        }
        let seen = hits(&receiver);
        let taken = receiver.taken();
        let (_, sum, point) = points(&taken[seen.last().unwrap().0], "hits")[0];
        assert_eq!(sum["isMonotonic"], true);
        assert_eq!(attributes(point), [("env".to_string(), "prod".to_string()), ("zone".into(), "a".into())]);
        if temporality == "cumulative" {
            assert_eq!(sum["aggregationTemporality"], "AGGREGATION_TEMPORALITY_CUMULATIVE");
            // Every flush repeats the total, from one start time before the first point.
            let start = seen[0].2;
            assert!(seen.iter().all(|h| h.2 == start && start < h.3), "{seen:?}");
            assert!(seen.windows(2).all(|w| w[0].1 <= w[1].1 && w[0].3 < w[1].3), "{seen:?}");
            let values: Vec<f64> = seen.iter().map(|h| h.1).collect();
            for v in [3.0, 7.0, 12.0] {
                assert!(values.contains(&v), "{values:?}");
            }
        } else {
            assert_eq!(sum["aggregationTemporality"], "AGGREGATION_TEMPORALITY_DELTA");
            // One point per flush that got values, each from the flush before (the first
            // flush's from the start).
            let values: Vec<f64> = seen.iter().map(|h| h.1).collect();
            assert_eq!(values, [3.0, 4.0, 5.0]);
            for (i, _, start, time) in &seen {
                if *i > 0 {
                    assert_eq!(*start, request_time(&taken[i - 1]), "a delta point starts at the flush before");
                }
                assert!(start < time);
            }
        }
        // The resource says who sent it.
        let resource = &taken[0]["request"]["resourceMetrics"][0]["resource"];
        let keys: Vec<&str> =
            resource["attributes"].as_array().unwrap().iter().map(|a| a["key"].as_str().unwrap()).collect();
        for k in ["host.name", "service.instance.id", "service.name"] {
            assert!(keys.contains(&k), "{k} missing: {keys:?}");
        }
    }
}

/// The value at `rank` from an OTLP exponential histogram's buckets: the midpoint of the
/// bucket holding it (negative buckets first, by magnitude descending, then zero, then
/// positive), as a reader of the histogram would estimate.
fn estimate(p: &Value, rank: u64) -> f64 {
    let scale = p["scale"].as_i64().unwrap_or(0) as i32;
    let base = 2f64.powf(2f64.powi(-scale));
    let counts = |side: &str| -> (i32, Vec<u64>) {
        let b = &p[side];
        (
            b["offset"].as_i64().unwrap_or(0) as i32,
            b["bucketCounts"].as_array().into_iter().flatten().map(int).collect(),
        )
    };
    let mid = |i: i32| (base.powi(i) + base.powi(i + 1)) / 2.0;
    let (neg_offset, neg) = counts("negative");
    let mut seen = 0;
    for (k, c) in neg.iter().enumerate().rev() {
        seen += c;
        if seen > rank {
            return -mid(neg_offset + k as i32);
        }
    }
    seen += int(&p["zeroCount"]);
    if seen > rank {
        return 0.0;
    }
    let (pos_offset, pos) = counts("positive");
    for (k, c) in pos.iter().enumerate() {
        seen += c;
        if seen > rank {
            return mid(pos_offset + k as i32);
        }
    }
    f64::NAN
}

#[test]
fn timers_are_exponential_histograms_exact_in_count_and_sum_and_within_the_bound() {
    let receiver = Receiver::start("");
    let fg = with_otlp(&receiver, "", "");
    // 2,000 positive milliseconds (and 40 zeros); 500 negative unitless values.
    let mut lat: Vec<f64> = (0..2000u64).map(|i| ((i * 7919) % 2000) as f64 / 4.0 + 0.5).collect();
    lat.extend(std::iter::repeat_n(0.0, 40));
    let temp: Vec<f64> = (1..=500u64).map(|i| -(((i * 31) % 997) as f64) / 10.0 - 1.0).collect();
    let lines: Vec<String> = lat
        .iter()
        .map(|v| format!("lat:{v}|ms|#team:core"))
        .chain(temp.iter().map(|v| format!("temp:{v}|h")))
        .collect();
    for chunk in lines.chunks(25) {
        send(&fg, &chunk.join("\n"));
    }
    let request = wait_for("every value in one histogram", WAIT, || {
        receiver.taken().into_iter().rev().find(|r| {
            points(r, "lat").first().is_some_and(|(_, _, p)| int(&p["count"]) == lat.len() as u64)
                && points(r, "temp").first().is_some_and(|(_, _, p)| int(&p["count"]) == temp.len() as u64)
        })
    });
    let m = metrics(&request);
    let lat_metric = m.iter().find(|m| m["name"] == "lat").unwrap();
    assert_eq!(lat_metric["unit"], "ms");
    assert_eq!(lat_metric["exponentialHistogram"]["aggregationTemporality"], "AGGREGATION_TEMPORALITY_CUMULATIVE");
    for (name, values) in [("lat", &lat), ("temp", &temp)] {
        let (kind, _, p) = points(&request, name)[0];
        assert_eq!(kind, "exponentialHistogram");
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        let sum: f64 = values.iter().sum();
        let got_sum = p["sum"].as_f64().unwrap();
        assert!((got_sum - sum).abs() <= 1e-9 * sum.abs(), "{name}: sum {got_sum} vs {sum}");
        let zeros = values.iter().filter(|v| **v == 0.0).count() as u64;
        assert_eq!(int(&p["zeroCount"]), zeros, "{name}: zero count");
        let bucket_sum =
            |side: &str| -> u64 { p[side]["bucketCounts"].as_array().into_iter().flatten().map(int).sum() };
        let positives = values.iter().filter(|v| **v > 0.0).count() as u64;
        assert_eq!(bucket_sum("positive"), positives, "{name}: positive buckets");
        assert_eq!(bucket_sum("negative"), values.len() as u64 - positives - zeros, "{name}: negative buckets");
        let scale = p["scale"].as_i64().unwrap_or(0) as i32;
        assert!(scale > 0, "{name}: scale {scale}: the histogram keeps a useful resolution");
        let bound = floodgate_otlp::relative_error(scale);
        for q in [0.01, 0.25, 0.5, 0.9, 0.99] {
            let rank = (q * (sorted.len() - 1) as f64).round() as u64;
            let (est, exact) = (estimate(p, rank), sorted[rank as usize]);
            assert!((est - exact).abs() <= bound * exact.abs(), "{name} q{q}: {est} vs {exact}, bound {bound}");
        }
    }
    let (_, _, p) = points(&request, "lat")[0];
    assert_eq!(attributes(p), [("team".to_string(), "core".to_string())]);
}

#[test]
fn a_503_then_a_429_with_retry_after_then_200_loses_nothing_and_doubles_nothing() {
    let receiver = Receiver::start("503,429:2");
    let fg = with_otlp(&receiver, "temporality = \"delta\"", "");
    let mut sent = 0.0;
    for n in [7.0, 5.0, 2.0] {
        send(&fg, &format!("hits:{n}|c"));
        sent += n;
        wait_for(&format!("hits {sent} taken"), WAIT, || {
            (hits(&receiver).iter().map(|h| h.1).sum::<f64>() == sent).then_some(())
        });
    }
    // Every flush was taken once: the taken deltas add up to what was sent, no more.
    let taken: f64 = hits(&receiver).iter().map(|h| h.1).sum();
    assert_eq!(taken, sent);
    let all = receiver.requests();
    let answered: Vec<&str> = all.iter().map(|r| r["answered"].as_str().unwrap()).collect();
    assert_eq!(&answered[..3], ["503", "429", "200"], "{answered:?}");
    let times: Vec<u64> = all.iter().map(request_time).collect();
    assert_eq!(times[1], times[2], "the refused flush was sent again, not a newer one");
    // The retry after the 429 waited the two seconds it asked for (the back-off alone would
    // have waited 400 ms).
    let gap = all[2]["at"].as_f64().unwrap() - all[1]["at"].as_f64().unwrap();
    assert!(gap >= 1.9, "retried {gap:.2} s after a 429 with Retry-After: 2");
    assert!(fg.stderr().contains("destination unreachable"), "{}", fg.stderr());
}

#[test]
fn a_400_drops_the_flush_with_its_reason_and_a_partial_success_is_counted() {
    let receiver = Receiver::start("400,partial:2");
    let fg = with_otlp(&receiver, "", "");
    send(&fg, "hits:1|c");
    fg.wait_sample("floodgate_otlp_rejected_points_total", &[], |v| v == 2.0);
    fg.wait_sample("floodgate_sink_dropped_payloads_total", &["sink=\"otlp\""], |v| v == 1.0);
    assert!(fg.stderr().contains("test says 400"), "the endpoint's reason is logged:\n{}", fg.stderr());
    assert_eq!(fg.sample("floodgate_otlp_partial_successes_total", &[]), 1.0);
    wait_for("a later flush taken", WAIT, || (receiver.taken().len() >= 2).then_some(()));
}

/// Three agents → one aggregator → OTLP: one histogram per series for the whole fleet, its
/// count exactly what the agents were sent.
#[test]
fn three_agents_through_an_aggregator_give_one_merged_histogram() {
    let receiver = Receiver::start("");
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let _aggregator = Floodgate::start(
        "flush_interval = \"1s\"",
        &format!(
            "[otlp]\nendpoint = \"http://127.0.0.1:{}\"\n[aggregator]\nlisten = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\n",
            receiver.port,
            dir.path().display()
        ),
    );
    let agents: Vec<Floodgate> = (0..3)
        .map(|i| {
            Floodgate::start(
                "flush_interval = \"1s\"",
                &format!("[forward]\naggregators = [\"127.0.0.1:{port}\"]\nagent_id = \"agent{i}\"\n{BULK_UDP}"),
            )
        })
        .collect();
    let mut all = Vec::new();
    for (k, a) in agents.iter().enumerate() {
        a.wait_sample("floodgate_forward_connected", &[&format!("aggregator=\"127.0.0.1:{port}\"")], |v| v == 1.0);
        let values: Vec<f64> = (0..1000u64).map(|i| ((i * 7 + k as u64 * 13) % 500) as f64 + 1.0).collect();
        let lines: Vec<String> = values.iter().map(|v| format!("rpc:{v}|ms")).collect();
        for chunk in lines.chunks(25) {
            send(a, &chunk.join("\n"));
        }
        all.extend(values);
    }
    let (seen, request) = wait_for("the fleet's histogram", WAIT, || {
        let taken = receiver.taken();
        let at =
            taken.iter().position(|r| points(r, "rpc").first().is_some_and(|(_, _, p)| int(&p["count"]) == 3000))?;
        Some((at + 1, taken[at].clone()))
    });
    let rpc = points(&request, "rpc");
    assert_eq!(rpc.len(), 1, "one histogram for the fleet");
    let sum: f64 = all.iter().sum();
    assert!((rpc[0].2["sum"].as_f64().unwrap() - sum).abs() <= 1e-9 * sum);
    // The next flush (cumulative: it carries the histogram again) still counts exactly what
    // was sent: nothing came twice.
    let later = wait_for("a later flush", WAIT, || receiver.taken().get(seen).cloned());
    let rpc = points(&later, "rpc");
    assert_eq!(rpc.len(), 1, "one histogram for the fleet, again");
    assert_eq!(int(&rpc[0].2["count"]), 3000);
}

/// The log records of every request taken.
fn log_records(receiver: &Receiver) -> Vec<(Value, Value)> {
    let mut out = Vec::new();
    for r in receiver.taken().into_iter().filter(|r| r["path"] == "/v1/logs") {
        for rl in r["request"]["resourceLogs"].as_array().into_iter().flatten() {
            for sl in rl["scopeLogs"].as_array().into_iter().flatten() {
                for lr in sl["logRecords"].as_array().into_iter().flatten() {
                    out.push((rl["resource"].clone(), lr.clone()));
                }
            }
        }
    }
    out
}

fn resource_attribute(resource: &Value, key: &str) -> Option<String> {
    let attributes = resource["attributes"].as_array()?;
    attributes.iter().find(|a| a["key"] == key).map(|a| a["value"]["stringValue"].as_str().unwrap_or("").to_string())
}

/// Syslog from util-linux `logger` (RFC 5424 over TCP, RFC 3164 over UDP) and a DogStatsD
/// event and service check, through `[syslog] output = { kind = "otlp" }`: severity numbers,
/// times, bodies, attributes and resources as the OpenTelemetry log data model maps syslog;
/// a 503 first loses nothing and doubles nothing.
#[test]
fn syslog_records_events_and_service_checks_as_otlp_log_records() {
    let receiver = Receiver::start("503");
    let fg = Floodgate::start(
        "",
        &format!("[syslog]\noutput = {{ kind = \"otlp\", endpoint = \"http://127.0.0.1:{}\" }}\n", receiver.port),
    );
    let logger = |args: &[&str], message: &str| {
        let status = Command::new(require_tool("logger"))
            .args(["-n", "127.0.0.1", "-P", &fg.syslog.to_string()])
            .args(args)
            .arg(message)
            .status()
            .unwrap();
        assert!(status.success(), "logger {args:?}");
    };
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    logger(
        &[
            "-T",
            "--rfc5424",
            "-t",
            "sshd",
            "-p",
            "auth.crit",
            "--msgid",
            "LOGIN",
            "--sd-id",
            "origin@1",
            "--sd-param",
            "ip=\"10.1.1.1\"",
        ],
        "Accepted publickey",
    );
    logger(&["-d", "--rfc3164", "-t", "cron", "-p", "cron.info"], "job done");
    send(&fg, "_e{6,6}:Deploy|v2 out|t:warning|#env:prod");
    send(&fg, "_sc|db.up|2|m:replica down");
    let records = wait_for("four log records", WAIT, || {
        let r = log_records(&receiver);
        (r.len() >= 4).then_some(r)
    });
    assert_eq!(records.len(), 4, "each record once, after the 503: {records:#?}");
    assert_eq!(receiver.requests()[0]["answered"], "503");
    let find = |body: &str| {
        records
            .iter()
            .find(|(_, r)| r["body"]["stringValue"] == body)
            .unwrap_or_else(|| panic!("no `{body}` in {records:#?}"))
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let (resource, ssh) = find("Accepted publickey");
    assert_eq!(ssh["severityNumber"], "SEVERITY_NUMBER_ERROR2");
    assert_eq!(ssh["severityText"], "crit");
    let (time, observed) = (int(&ssh["timeUnixNano"]), int(&ssh["observedTimeUnixNano"]));
    // logger stamps microseconds; the receive time is floodgate's, in milliseconds.
    assert!(before - 1_000_000 <= time && time <= observed + 1_000_000 && observed <= now, "{time} {observed}");
    let attrs = attributes(ssh);
    for want in
        [("syslog.facility", "auth"), ("syslog.msgid", "LOGIN"), ("syslog.structured_data.origin@1.ip", "10.1.1.1")]
    {
        assert!(attrs.contains(&(want.0.into(), want.1.into())), "{want:?} in {attrs:?}");
    }
    assert!(attrs.iter().any(|(k, v)| k == "floodgate.transport" && v == "tcp"), "{attrs:?}");
    assert_eq!(resource_attribute(resource, "service.name").as_deref(), Some("sshd"));
    assert!(resource_attribute(resource, "host.name").is_some_and(|h| !h.is_empty()));
    let (resource, cron) = find("job done");
    assert_eq!(cron["severityNumber"], "SEVERITY_NUMBER_INFO");
    assert_eq!(resource_attribute(resource, "service.name").as_deref(), Some("cron"));
    // RFC 3164 times have whole seconds and the host's zone.
    let time = int(&cron["timeUnixNano"]);
    assert!(before - 2_000_000_000 <= time && time <= now, "{time}");
    let (_, event) = find("v2 out");
    assert_eq!(event["severityNumber"], "SEVERITY_NUMBER_WARN");
    let attrs = attributes(event);
    assert!(attrs.contains(&("dogstatsd.title".into(), "Deploy".into())), "{attrs:?}");
    assert!(attrs.contains(&("env".into(), "prod".into())), "{attrs:?}");
    let (_, check) = find("replica down");
    assert_eq!(check["severityNumber"], "SEVERITY_NUMBER_ERROR");
    assert_eq!(check["severityText"], "critical");
    assert!(attributes(check).contains(&("dogstatsd.check".into(), "db.up".into())));
    fg.wait_sample("floodgate_syslog_output_messages_total", &["output=\"otlp\""], |v| v == 4.0);
}

/// README "OpenTelemetry (OTLP)": `examples/otlp/floodgate.toml` as written, in a network
/// namespace (its ports are fixed: the receiver on 4318, floodgate's defaults for the rest),
/// with the receiver the README names. Only the flush interval is shortened (1 s), so the
/// test does not wait the default 10 s.
#[test]
fn the_readmes_otlp_example_runs_as_written() {
    let ns = Namespace::create("otlpex");
    let dir = tempfile::tempdir().unwrap();
    let (port_file, out) = (dir.path().join("port"), dir.path().join("requests.jsonl"));
    let mut receiver = ns.command(&require_tool("python3"));
    receiver.arg(repo_root().join("crates/floodgate/tests/otlp/receiver.py")).args(["--port", "4318"]);
    receiver.arg(&port_file).arg(&out);
    let _receiver = Peer(receiver.spawn().unwrap());
    wait_for("the receiver", WAIT, || std::fs::read_to_string(&port_file).ok());
    let config = std::fs::read_to_string(repo_root().join("examples/otlp/floodgate.toml")).unwrap();
    let path = dir.path().join("floodgate.toml");
    std::fs::write(&path, format!("{config}\n[statsd]\nflush_interval = \"1s\"\n")).unwrap();
    let mut command = ns.command(std::path::Path::new(env!("CARGO_BIN_EXE_floodgate")));
    command.arg("--config").arg(&path).current_dir(dir.path());
    let _floodgate = ns.run(|| Running::ready(command, "127.0.0.1:9318", &dir.path().join("stderr.log")));
    ns.run(|| {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.send_to(b"deploys:1|c|#team:web", "127.0.0.1:8125").unwrap();
    });
    let status = ns
        .command(&require_tool("logger"))
        .args(["-n", "127.0.0.1", "-P", "5514", "-d", "--rfc5424", "-t", "shop", "-p", "user.warning"])
        .arg("payment slow")
        .status()
        .unwrap();
    assert!(status.success());
    wait_for("the counter and the log record at the receiver", WAIT, || {
        let text = std::fs::read_to_string(&out).ok()?;
        let requests: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let counter = requests
            .iter()
            .any(|r| points(r, "deploys").iter().any(|(kind, _, p)| *kind == "sum" && p["asDouble"] == 1.0));
        let log = text.contains("payment slow") && text.contains("SEVERITY_NUMBER_WARN");
        (counter && log).then_some(())
    });
}

/// OTLP over https: the endpoint's certificate verified against `ca`, the configured headers
/// sent (and redacted from every view of the configuration, tested in `hostile.rs`).
#[test]
fn metrics_over_https_with_a_private_ca() {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let receiver = Receiver::start_with("", &["--tls".as_ref(), cert_path.as_os_str(), key_path.as_os_str()]);
    let fg = Floodgate::start(
        "flush_interval = \"300ms\"",
        &format!(
            "[otlp]\nendpoint = \"https://127.0.0.1:{}\"\nca = \"{}\"\nheaders = {{ api-key = \"k-1\" }}\n",
            receiver.port,
            cert_path.display()
        ),
    );
    send(&fg, "secure.hits:5|c");
    wait_for("secure.hits over https", WAIT, || {
        receiver
            .taken()
            .iter()
            .any(|r| points(r, "secure.hits").iter().any(|(_, _, p)| p["asDouble"] == 5.0))
            .then_some(())
    });
    assert_eq!(fg.sample("floodgate_sink_errors_total", &["sink=\"otlp\""]), 0.0);
    let headers = &receiver.taken()[0]["headers"];
    assert_eq!(headers["api-key"], "k-1");
    assert_eq!(headers["content-encoding"], "gzip");
    assert_eq!(headers["content-type"], "application/x-protobuf");
}
