//! The Grafana dashboard in `dashboards/`: valid JSON, well-formed panels, and every metric a
//! query names is one floodgate exports (checked against a floodgate running every feature).

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::*;

fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "query" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

/// Metric names in a PromQL expression (floodgate's and conntrack's prefixes).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut word = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
        } else {
            if word.starts_with("floodgate_") || word.starts_with("conntrack_") {
                names.push(std::mem::take(&mut word));
            }
            word.clear();
        }
    }
    names
}

#[test]
fn every_dashboard_query_names_a_metric_floodgate_exports() {
    let text = std::fs::read_to_string(repo_root().join("dashboards/floodgate.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let panels = dash["panels"].as_array().expect("panels");
    let ids: BTreeSet<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids repeat");
    for p in panels {
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()), "{p}");
        assert!(p["gridPos"]["w"].as_u64().unwrap() <= 24);
        if p["type"] != "row" {
            assert!(!p["targets"].as_array().unwrap().is_empty(), "{}", p["title"]);
        }
    }
    let mut all = Vec::new();
    exprs(&dash, &mut all);
    let wanted: BTreeSet<String> = all.iter().flat_map(|e| metric_names(e)).collect();
    assert!(wanted.len() > 30, "{wanted:?}");

    let (_fg, body, _dir) = everything_on();
    let exported: BTreeSet<String> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(String::from)
        .collect();
    let missing: Vec<&String> = wanted.iter().filter(|m| !exported.contains(*m)).collect();
    assert!(missing.is_empty(), "the dashboard queries metrics floodgate does not export: {missing:?}");
    // The alert rules too (the names in their expressions; the test file's series are theirs).
    let rules = std::fs::read_to_string(repo_root().join("dashboards/floodgate-alerts.yml")).unwrap();
    let named: BTreeSet<String> =
        rules.lines().filter_map(|l| l.trim_start().strip_prefix("expr:")).flat_map(metric_names).collect();
    assert!(named.len() >= 6, "{named:?}");
    let missing: Vec<&String> = named.iter().filter(|m| !exported.contains(*m)).collect();
    assert!(missing.is_empty(), "the alert rules name metrics floodgate does not export: {missing:?}");
}

/// A floodgate with every feature on — StatsD and syslog over UDP, TCP and TLS, forward,
/// aggregator, remote-write, conntrack (ctnetlink: the tests run as root) — and some input of
/// every StatsD type, so every metric family is rendered. Returns it, its `/metrics` and its
/// folder.
fn everything_on() -> (Floodgate, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "all");
    let (cert, key) = pki.issue("server", "localhost");
    let (syslog, syslog_tls, statsd_tls, agg, dead) = (free_port(), free_port(), free_port(), free_port(), free_port());
    let fg = Floodgate::start(
        &format!("flush_interval = \"200ms\"\ntls_listen = [\"127.0.0.1:{statsd_tls}\"]\ntls = {{ cert = \"{cert}\", key = \"{key}\" }}"),
        &format!(
            "[syslog]\nudp = [\"127.0.0.1:{syslog}\"]\ntcp = [\"127.0.0.1:{syslog}\"]\n\
             tls = [{{ listen = \"127.0.0.1:{syslog_tls}\", cert = \"{cert}\", key = \"{key}\" }}]\n\
             output = {{ kind = \"file\", path = \"{}\" }}\n\
             [forward]\naggregators = [\"127.0.0.1:{dead}\"]\n\
             [aggregator]\nlisten = \"127.0.0.1:{agg}\"\nstate_dir = \"{}\"\n\
             [prometheus_remote_write]\nurl = \"http://127.0.0.1:{dead}/api/v1/write\"\n\
             [conntrack]\nenabled = true\n",
            dir.path().join("syslog.jsonl").display(),
            dir.path().join("state").display()
        ),
    );
    fg.send_udp(
        b"all.req:1|c|#env:prod,code:200\nall.lat:5|ms\nall.depth:4|g\nall.users:a|s\nweird name/x:1|c\n9digit:1|c",
    );
    fg.wait_sample("floodgate_flushes_total", &[], |n| n >= 2.0);
    // The table's health is read by the conntrack thread once it has dumped the table.
    let body = wait_for("conntrack's table health on /metrics", Duration::from_secs(30), || {
        let (_, body) = http_get(fg.http, "/metrics").ok()?;
        body.contains("\nconntrack_table_entries ").then_some(body)
    });
    (fg, body, dir)
}

/// Every family floodgate can export — its own, conntrack's, the StatsD series — is valid
/// exposition text by Prometheus' own checker.
#[test]
fn every_metric_family_passes_promtool_with_every_feature_on() {
    let (_fg, body, _dir) = everything_on();
    for family in [
        "floodgate_aggregator_",
        "floodgate_forward_",
        "floodgate_syslog_output_",
        "conntrack_",
        "floodgate_tls_handshakes_total",
    ] {
        assert!(body.contains(family), "{family} not rendered:\n{body}");
    }
    promtool_check(&body);
}

/// The alert rules in `dashboards/` are valid (`promtool check rules`) and each fires on the
/// series it is meant for and on no other (`promtool test rules`, with series that fire and
/// that do not fire each alert).
#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let dir = repo_root().join("dashboards");
    for args in [["check", "rules", "floodgate-alerts.yml"], ["test", "rules", "floodgate-alerts.test.yml"]] {
        let out = std::process::Command::new(require_tool("promtool")).args(args).current_dir(&dir).output().unwrap();
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
