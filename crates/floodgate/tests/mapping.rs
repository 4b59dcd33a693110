//! statsd_exporter's mapping files through the real binary: `[prometheus] mapping_config`
//! names `/metrics` series (and remote-write's: the same naming) by glob and regex rules,
//! checked by `promtool`, re-read on SIGHUP, and a bad file is refused naming the rule.

mod common;

use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(20);

const MAPPING: &str = r#"
defaults:
  ttl: 0s
mappings:
- match: "api.*.*.*.*"
  name: "http_requests_total"
  help: "HTTP requests by route."
  labels:
    env: "$1"
    method: "$2"
    route: "$3"
    code: "$4"
- match: "api.*.*.*.*"
  name: "never_used"
- match: "queue.*.depth"
  match_metric_type: gauge
  name: "queue_depth"
  labels:
    queue: "$1"
- match: "honor.me"
  name: "honored"
  honor_labels: true
  labels:
    env: "mapping"
- match: "override.me"
  name: "overridden"
  labels:
    env: "mapping"
- match: "debug\\..*"
  match_type: regex
  action: drop
  name: "dropped"
- match: "job\\.([a-z]+)\\.runs"
  match_type: regex
  name: "job_runs_total"
  labels:
    job: "${1}"
"#;

fn mapping_floodgate(dir: &std::path::Path, mapping: &str) -> (Floodgate, std::path::PathBuf) {
    let path = dir.join("statsd_mapping.yml");
    std::fs::write(&path, mapping).unwrap();
    let fg = Floodgate::start(
        "flush_interval = \"300ms\"",
        &format!("[prometheus]\nmapping_config = \"{}\"\n", path.display()),
    );
    (fg, path)
}

fn scrape(fg: &Floodgate, want: &str) -> String {
    wait_for(&format!("{want} in /metrics"), WAIT, || {
        let (_, body) = http_get(fg.http, "/metrics").ok()?;
        body.lines().any(|l| l == want).then_some(body)
    })
}

#[test]
fn a_statsd_exporter_mapping_file_names_the_series() {
    let dir = tempfile::tempdir().unwrap();
    let (fg, _) = mapping_floodgate(dir.path(), MAPPING);
    fg.send_udp(
        b"api.prod.get.users.200:3|c\nqueue.mail.depth:7|g\nqueue.mail.depth:1|c\nhonor.me:1|g|#env:tagged\n\
override.me:1|g|#env:tagged\ndebug.noise:1|c\njob.backup.runs:2|c\nunmapped.name-x:5|g\nweird--name:1|c",
    );
    let body = scrape(&fg, "http_requests_total{code=\"200\",env=\"prod\",method=\"get\",route=\"users\"} 3");
    for want in [
        "# HELP http_requests_total HTTP requests by route.",
        "# TYPE http_requests_total counter",
        "queue_depth{queue=\"mail\"} 7",
        // The counter of the same name matched no gauge-only rule: escaped, `_total` added.
        "queue_mail_depth_total 1",
        "honored{env=\"tagged\"} 1",
        "overridden{env=\"mapping\"} 1",
        "job_runs_total{job=\"backup\"} 2",
        "unmapped_name_x 5",
        "weird_name_total 1",
    ] {
        assert!(body.lines().any(|l| l == want), "{want} missing:\n{body}");
    }
    assert!(!body.contains("never_used"), "the first matching glob wins:\n{body}");
    assert!(!body.lines().any(|l| l.starts_with("debug_noise") || l.starts_with("dropped")), "action: drop:\n{body}");
    promtool_check(&body);
}

#[test]
fn the_mapping_file_is_reread_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let (fg, path) = mapping_floodgate(
        dir.path(),
        "mappings:\n- match: \"svc.*.hits\"\n  name: \"hits_v1_total\"\n  labels: { svc: \"$1\" }\n",
    );
    fg.send_udp(b"svc.web.hits:1|c");
    scrape(&fg, "hits_v1_total{svc=\"web\"} 1");
    std::fs::write(
        &path,
        "mappings:\n- match: \"svc.*.hits\"\n  name: \"hits_v2_total\"\n  labels: { service: \"$1\" }\n",
    )
    .unwrap();
    fg.signal("HUP");
    let body = scrape(&fg, "hits_v2_total{service=\"web\"} 1");
    assert!(!body.contains("hits_v1_total"), "{body}");
    // A broken file on SIGHUP is refused: the one in force stays.
    std::fs::write(&path, "mappings:\n- match: \"svc.*.hits\"\n").unwrap();
    fg.signal("HUP");
    wait_for("the refusal in the log", WAIT, || fg.stderr().contains("config refused").then_some(()));
    scrape(&fg, "hits_v2_total{service=\"web\"} 1");
}

#[test]
fn a_bad_mapping_file_is_a_config_error_naming_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let mapping = dir.path().join("bad.yml");
    std::fs::write(&mapping, "mappings:\n- match: \"a.*\"\n  name: \"ok_total\"\n- match: \"b.*\"\n  name: \"9bad\"\n")
        .unwrap();
    let config = dir.path().join("floodgate.toml");
    std::fs::write(&config, format!("[prometheus]\nmapping_config = \"{}\"\n", mapping.display())).unwrap();
    let out = floodgate_check(&config);
    let err = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("prometheus.mapping_config") && err.contains("mappings[1]") && err.contains("9bad"), "{err}");
}

/// `observer_type: histogram` exposes a timer as a classic histogram: cumulative `_bucket`
/// counts over every value since start (from the timer's sketch), `+Inf`, `_sum`, `_count`;
/// a rule without it keeps the summary. Values are in seconds, as statsd_exporter exposes `ms`
/// timers. `promtool` accepts both.
#[test]
fn observer_type_histogram_exposes_buckets() {
    let dir = tempfile::tempdir().unwrap();
    let mapping = r#"
mappings:
- match: "svc.*.latency"
  name: "svc_request_latency"
  observer_type: histogram
  histogram_options:
    buckets: [0.01, 0.1, 1]
  labels: { svc: "$1" }
- match: "svc.*.size"
  name: "svc_size"
  labels: { svc: "$1" }
"#;
    let (fg, _) = mapping_floodgate(dir.path(), mapping);
    fg.send_udp(b"svc.web.latency:5|ms\nsvc.web.latency:50|ms\nsvc.web.latency:500|ms\nsvc.web.size:3|ms");
    let body = scrape(&fg, "svc_request_latency_count{svc=\"web\"} 3");
    for want in [
        "# TYPE svc_request_latency histogram",
        "svc_request_latency_bucket{svc=\"web\",le=\"0.01\"} 1",
        "svc_request_latency_bucket{svc=\"web\",le=\"0.1\"} 2",
        "svc_request_latency_bucket{svc=\"web\",le=\"1\"} 3",
        "svc_request_latency_bucket{svc=\"web\",le=\"+Inf\"} 3",
        "# TYPE svc_size summary",
    ] {
        assert!(body.lines().any(|l| l == want), "{want} missing:\n{body}");
    }
    let sum = sample(&body, "svc_request_latency_sum", &["svc=\"web\""]);
    assert!((sum - 0.555).abs() < 1e-9, "{sum}");
    assert!((sample(&body, "svc_size_sum", &["svc=\"web\""]) - 0.003).abs() < 1e-9, "{body}");
    // More values add up: the buckets are cumulative since start.
    fg.send_udp(b"svc.web.latency:7|ms");
    let body = scrape(&fg, "svc_request_latency_count{svc=\"web\"} 4");
    assert!(body.lines().any(|l| l == "svc_request_latency_bucket{svc=\"web\",le=\"0.01\"} 2"), "{body}");
    promtool_check(&body);
}
