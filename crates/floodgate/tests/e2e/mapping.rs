//! statsd_exporter's mapping files through the real binary: `[prometheus] mapping_config`
//! names `/metrics` series (and remote-write's: the same naming) by glob and regex rules,
//! checked by `promtool`, re-read on SIGHUP, and a bad file is refused naming the rule; timers
//! as classic and native histograms, into a real Prometheus.

use std::time::Duration;

use crate::common::*;

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
- match: "svc.*.queue"
  name: "svc_queue_seconds"
  summary_options:
    quantiles: [{ quantile: 0.75, error: 0.01 }]
  labels: { svc: "$1" }
"#;
    let (fg, _) = mapping_floodgate(dir.path(), mapping);
    fg.send_udp(
        b"svc.web.latency:5|ms\nsvc.web.latency:50|ms\nsvc.web.latency:500|ms\nsvc.web.size:3|ms\n\
                  svc.web.queue:1000|ms\nsvc.web.queue:2000|ms\nsvc.web.queue:3000|ms\nsvc.web.queue:4000|ms",
    );
    // Counts, sums and buckets show every value at once; a summary's quantiles are the last
    // flush interval's, so the scrape waits for the flush.
    let body = scrape(&fg, "svc_request_latency_count{svc=\"web\"} 3");
    assert!(body.lines().any(|l| l == "svc_queue_seconds_count{svc=\"web\"} 4"), "{body}");
    let body = scrape(&fg, "svc_queue_seconds{svc=\"web\",quantile=\"0.75\"} 3");
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
    // Summaries take the rule's quantiles, else the defaults' (0.5, 0.9, 0.99), over the last
    // flush interval.
    let quantiles = |name: &str| -> Vec<String> {
        body.lines().filter(|l| l.starts_with(name) && l.contains("quantile=")).map(String::from).collect()
    };
    assert_eq!(
        quantiles("svc_size{"),
        [0.5, 0.9, 0.99].map(|q| format!("svc_size{{svc=\"web\",quantile=\"{q}\"}} 0.003")),
        "{body}"
    );
    assert_eq!(quantiles("svc_queue_seconds{"), ["svc_queue_seconds{svc=\"web\",quantile=\"0.75\"} 3"], "{body}");
    // More values add up: the buckets are cumulative since start.
    fg.send_udp(b"svc.web.latency:7|ms");
    let body = scrape(&fg, "svc_request_latency_count{svc=\"web\"} 4");
    assert!(body.lines().any(|l| l == "svc_request_latency_bucket{svc=\"web\",le=\"0.01\"} 2"), "{body}");
    promtool_check(&body);
}

/// Three agents → an aggregator → remote-write into a real Prometheus with native histograms
/// on, which also scrapes the aggregator's `/metrics` (in the protobuf format it then asks
/// for). Over the fleet's native histogram, `histogram_count` is exact and
/// `histogram_quantile` is within the stated error ((1 + 1 %)·base − 1) of the exact quantile
/// of all 9,000 samples, by both paths; the text `/metrics` has the classic histogram.
#[test]
fn native_histograms_from_three_agents_into_a_real_prometheus() {
    const INTERVAL: &str = "flush_interval = \"2000ms\"";
    let dir = tempfile::tempdir().unwrap();
    let mapping = dir.path().join("mapping.yml");
    std::fs::write(
        &mapping,
        "defaults:\n  observer_type: histogram\n  histogram_options:\n    buckets: [0.01, 0.05, 0.1]\n    \
         native_histogram_bucket_factor: 1.02\n\
         mappings:\n- match: fleet.lat\n  name: fleet_latency_seconds\n  help: Request latency.\n",
    )
    .unwrap();
    let (aggregator_port, prometheus_port) = (free_port(), free_port());
    let agg = Floodgate::start(
        INTERVAL,
        &format!(
            "[aggregator]\nlisten = \"127.0.0.1:{aggregator_port}\"\nstate_dir = \"{}\"\n\n\
             [prometheus]\nmapping_config = \"{}\"\n\n\
             [prometheus_remote_write]\nurl = \"http://127.0.0.1:{prometheus_port}/api/v1/write\"\n",
            dir.path().display(),
            mapping.display()
        ),
    );
    let options = PrometheusOptions { native_histograms: true, scrape: vec![agg.http], port: Some(prometheus_port) };
    let prom = Prometheus::start(None, &options);
    let agents: Vec<Floodgate> = (0..3)
        .map(|i| {
            Floodgate::start(
                INTERVAL,
                &format!("[forward]\naggregators = [\"127.0.0.1:{aggregator_port}\"]\nagent_id = \"agent{i}\"\n"),
            )
        })
        .collect();
    let label = format!("aggregator=\"127.0.0.1:{aggregator_port}\"");
    for a in &agents {
        a.wait_sample("floodgate_forward_connected", &[&label], |v| v == 1.0);
    }
    // Three distributions of milliseconds: uniform, long-tailed, clustered.
    let mut all = Vec::new();
    for (k, a) in agents.iter().enumerate() {
        let mut lines = Vec::new();
        for i in 0..3000u64 {
            let u = ((i * 2_654_435_761) % 1_000_003) as f64 / 1_000_003.0;
            let ms = match k {
                0 => 1.0 + (u * 990.0).round() / 10.0,
                1 => 1.0 + (-(1.0 - u).ln() * 250.0).round() / 10.0,
                _ => 30.0 + ((u - 0.5) * (u - 0.5) * 400.0).round() / 10.0,
            };
            all.push(ms / 1000.0);
            lines.push(format!("fleet.lat:{ms}|ms"));
        }
        for chunk in lines.chunks(20) {
            a.send_udp(chunk.join("\n").as_bytes());
        }
    }
    all.sort_by(f64::total_cmp);
    let n = all.len() as f64;
    for job in ["", "floodgate"] {
        let series = format!("fleet_latency_seconds{{job=\"{job}\"}}");
        wait_for(&format!("histogram_count({series}) = 9000"), Duration::from_secs(60), || {
            (prom.query(&promql(&format!("histogram_count({series})"))) == Some(n)).then_some(())
        });
        let sum = prom.query(&promql(&format!("histogram_sum({series})"))).unwrap();
        let exact_sum: f64 = all.iter().sum();
        assert!((sum - exact_sum).abs() <= 1e-6 * exact_sum, "{job}: sum {sum} vs {exact_sum}");
        // Factor 1.02 is schema 6: base 2^(1/64).
        let bound = 1.01 * 2f64.powf(1.0 / 64.0) - 1.0;
        for q in [0.1, 0.5, 0.9, 0.99] {
            let got = prom.query(&promql(&format!("histogram_quantile({q}, {series})"))).unwrap();
            let exact = all[((q * n).ceil() as usize).max(1) - 1];
            eprintln!("{job:>9} q{q}: prometheus {got}, exact {exact}, error {:.4}", (got - exact).abs() / exact);
            assert!((got - exact).abs() <= bound * exact, "{job} q{q}: {got} vs exact {exact} (bound {bound})");
        }
    }
    // The classic histogram in the text format, checked by promtool.
    let body = http_get(agg.http, "/metrics").unwrap().1;
    assert_eq!(sample(&body, "fleet_latency_seconds_count", &[]), n, "{body}");
    assert_eq!(sample(&body, "fleet_latency_seconds_bucket", &["le=\"+Inf\""]), n);
    let below = |le: f64| all.iter().filter(|v| **v <= le).count() as f64;
    let got = sample(&body, "fleet_latency_seconds_bucket", &["le=\"0.05\""]);
    assert!((got - below(0.05)).abs() <= below(0.0505) - below(0.0495), "le 0.05: {got} vs {}", below(0.05));
    promtool_check(&body);
}

/// Names that collide across types, two keys mapped to one series, different tag keys under
/// one name and a rule that makes an invalid name, all at once: every scrape (text and
/// protobuf) answers 200 with the rest, and the self-metrics say what was left out and why.
#[test]
fn conflicts_never_fail_a_scrape_and_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mapping = r#"
mappings:
- match: "conflict.*"
  name: "conflicted_total"
- match: "dup.*"
  name: "duplicated"
- match: "^bad\\.(.*)$"
  match_type: regex
  name: "bad_$1"
"#;
    let (fg, _) = mapping_floodgate(dir.path(), mapping);
    fg.send_udp(b"conflict.a:1|c\nconflict.b:2|g\ndup.a:1|g\ndup.b:2|g\nlbl:1|g|#k:1\nlbl:2|g|#j:2\nbad.a.b:1|c");
    let body = scrape(&fg, "lbl{j=\"2\"} 2");
    assert!(body.lines().any(|l| l == "lbl{k=\"1\"} 1"), "{body}");
    assert_eq!(body.lines().filter(|l| l.starts_with("conflicted_total")).count(), 1, "{body}");
    assert_eq!(body.lines().filter(|l| l.starts_with("duplicated ")).count(), 1, "{body}");
    assert!(!body.lines().any(|l| l.starts_with("bad_")), "{body}");
    promtool_check(&body);
    // The scrape above recorded what it left out.
    let left_out = |reason: &str| fg.sample("floodgate_prometheus_series_left_out", &[&format!("reason=\"{reason}\"")]);
    assert_eq!(left_out("conflicting_type"), 1.0);
    assert_eq!(left_out("duplicate"), 1.0);
    assert_eq!(fg.sample("floodgate_prometheus_invalid_mapped_names_total", &[]), 1.0);
    assert_eq!(fg.sample("floodgate_prometheus_mapping_rules", &[]), 3.0);

    // The protobuf format, as Prometheus asks for it with native histograms on.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", fg.http)).unwrap();
    std::io::Write::write_all(
        &mut s,
        b"GET /metrics HTTP/1.0\r\nAccept: application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;\
          encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3\r\n\r\n",
    )
    .unwrap();
    let mut response = Vec::new();
    std::io::Read::read_to_end(&mut s, &mut response).unwrap();
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&response[..split]).to_lowercase();
    assert!(head.starts_with("http/1.0 200") || head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: application/vnd.google.protobuf"), "{head}");
    let mut rest = &response[split + 4..];
    let mut families = std::collections::HashMap::new();
    while !rest.is_empty() {
        let f = <floodgate::metrics::protobuf::MetricFamily as prost::Message>::decode_length_delimited(&mut rest)
            .expect("a length-delimited MetricFamily");
        families.insert(f.name.clone(), f);
    }
    assert_eq!(families["conflicted_total"].metric.len(), 1);
    assert_eq!(families["duplicated"].metric.len(), 1);
    assert_eq!(families["lbl"].metric.len(), 2);
    assert!(families.contains_key("floodgate_prometheus_series_left_out"));
}

/// A rule's `ttl`: a series that receives nothing for that long leaves `/metrics` (as in
/// statsd_exporter), and comes back, still cumulative, with its next value.
#[test]
fn a_rules_ttl_takes_idle_series_off_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let mapping =
        "mappings:\n- match: \"job.*.runs\"\n  name: \"job_runs_total\"\n  ttl: 1s\n  labels: { job: \"$1\" }\n";
    let (fg, _) = mapping_floodgate(dir.path(), mapping);
    fg.send_udp(b"job.nightly.runs:1|c\nother:1|c");
    scrape(&fg, "job_runs_total{job=\"nightly\"} 1");
    let body = wait_for("the idle series to leave /metrics", WAIT, || {
        let (_, body) = http_get(fg.http, "/metrics").ok()?;
        (!body.contains("job_runs_total{")).then_some(body)
    });
    assert!(body.lines().any(|l| l == "other_total 1"), "series without a ttl stay:\n{body}");
    fg.send_udp(b"job.nightly.runs:1|c");
    scrape(&fg, "job_runs_total{job=\"nightly\"} 2");
}

/// With `key_name_sanitize = false`, rules see names exactly as sent (statsd_exporter does
/// not sanitise): a `/` in a name reaches a regex rule (globs, as statsd_exporter's, take
/// only letters, digits, `_` and `-`).
#[test]
fn unsanitised_names_reach_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("statsd_mapping.yml");
    std::fs::write(
        &path,
        "mappings:\n- match: \"^api/v1\\\\.(.+)$\"\n  match_type: regex\n  name: \"api_v1_total\"\n  labels: { route: \"$1\" }\n",
    )
    .unwrap();
    let fg = Floodgate::start(
        "flush_interval = \"300ms\"\nkey_name_sanitize = false",
        &format!("[prometheus]\nmapping_config = \"{}\"\n", path.display()),
    );
    fg.send_udp(b"api/v1.users:2|c");
    scrape(&fg, "api_v1_total{route=\"users\"} 2");
}

/// Issue 27 item 16: the mapping file's cache of names (about 580 bytes a name) used to sit
/// outside `max_memory`. Now it counts: 20,000 names scraped through a mapping file fill an
/// 8 MiB budget that the series alone (about 3 MiB) would not, and new series are refused.
#[test]
fn the_mapping_cache_counts_against_max_memory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("statsd_mapping.yml");
    std::fs::write(
        &path,
        "mappings:\n- match: \"cache.*.*\"\n  name: \"cache_total\"\n  labels: { svc: \"$1\", item: \"$2\" }\n",
    )
    .unwrap();
    // 20,000 names from one address at once: the guard is not under test.
    let fg = Floodgate::start(
        "flush_interval = \"300ms\"\nmax_memory = \"8MiB\"",
        &format!("[prometheus]\nmapping_config = \"{}\"\n{BULK_UDP}", path.display()),
    );
    let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    // In waves of 2,000 names, a flush apart: until the first flush a receive shard may use an
    // eighth of the budget.
    for wave in 0..10 {
        for chunk in 0..100 {
            let text: String = (0..20).map(|i| format!("cache.n{}.m{i}:1|c\n", wave * 100 + chunk)).collect();
            u.send_to(text.as_bytes(), fg.udp_addr()).unwrap();
        }
        let flushes = fg.sample("floodgate_flushes_total", &[]);
        fg.wait_sample("floodgate_flushes_total", &[], |f| f > flushes + 1.0);
    }
    let (_, body) = http_get(fg.http, "/metrics").unwrap();
    assert_eq!(body.lines().filter(|l| l.starts_with("cache_total{")).count(), 20_000);
    // After a flush the cache is in the estimate, and the budget is spent.
    let memory = fg.wait_sample("floodgate_statsd_memory_bytes", &[], |v| v > 20_000.0 * 500.0);
    assert!(memory > (8u64 << 20) as f64, "{memory}");
    for i in 0..100 {
        u.send_to(format!("late.series{i}:1|c").as_bytes(), fg.udp_addr()).unwrap();
    }
    fg.wait_sample("floodgate_statsd_dropped_series_total", &["reason=\"max_memory\""], |v| v > 0.0);
}

/// statsd_exporter's rules see the name as sent: the Prometheus path maps
/// `request_time.get/threads/1/posts.200` from the raw name while Graphite, on floodgate's
/// default `key_name_sanitize`, keeps Etsy's `get-threads-1-posts`. A rule's `scale`
/// multiplies the values; names no rule matched are escaped as statsd_exporter escapes them
/// (one `_` per character, an emoji included). Only `[graphite]` and the mapping file differ
/// from the defaults: this is what both outputs get from one datagram.
#[test]
fn rules_see_names_as_sent_while_graphite_sees_etsys() {
    let carbon = Capture::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("statsd_mapping.yml");
    std::fs::write(
        &path,
        r#"
mappings:
- match: "request_time\\.(.*)\\.(\\d+)$"
  match_type: regex
  name: "http_requests_total"
  labels:
    method_and_path: "$1"
    code: "$2"
- match: "app.processed_kilobytes"
  name: "app_processed_bytes_total"
  scale: 1024
- match: "app.latency"
  name: "app_latency_seconds"
  scale: 1e-3
"#,
    )
    .unwrap();
    let fg = Floodgate::start(
        "flush_interval = \"300ms\"",
        &format!(
            "[graphite]\naddress = \"127.0.0.1:{}\"\n[prometheus]\nmapping_config = \"{}\"\n",
            carbon.port,
            path.display()
        ),
    );
    fg.send_udp(
        "request_time.get/threads/1/posts.200:3|c\napp.processed_kilobytes:2|c\napp.latency:7|g\nwith😱emoji:5|g\nwith.*.multiple:1|g"
            .as_bytes(),
    );
    let body = scrape(&fg, "http_requests_total{code=\"200\",method_and_path=\"get/threads/1/posts\"} 3");
    for want in ["app_processed_bytes_total 2048", "app_latency_seconds 0.007", "with_emoji 5", "with___multiple 1"] {
        assert!(body.lines().any(|l| l == want), "{want} missing:\n{body}");
    }
    promtool_check(&body);
    // Graphite keeps Etsy's sanitised names (and unscaled values).
    carbon.wait_seen(
        WAIT,
        &owned(&[
            ("stats_counts.request_time.get-threads-1-posts.200", "3"),
            ("stats_counts.app.processed_kilobytes", "2"),
            ("stats.gauges.withemoji", "5"),
            ("stats.gauges.with..multiple", "1"),
        ]),
    );
}
