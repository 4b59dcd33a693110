//! `bench --only prometheus`: what statsd_exporter's mapping files and histograms cost.
//!
//! 1. **Mapping cost per line**: the same paced traffic (1M lines/s, 20 lines a datagram of realistic
//!    names, 80 % counters and 20 % timers, 5,000 series) into floodgate without a mapping
//!    file and with a 50-rule one (40 globs, 10 regexes; timers as histograms, classic and
//!    native), `/metrics` scraped every second as Prometheus would: floodgate's CPU per line,
//!    same run. Mapping runs at exposition with each name's outcome cached, so what a line
//!    costs more is the histogram's sketch.
//! 2. **Scrape time and size for 100,000 histogram series**: classic in the text format,
//!    classic and native in the protobuf format (what Prometheus with native histograms asks
//!    for), and the first scrape after a (re)load, when every name is mapped afresh.
//!
//! `bench --only scrape --baseline BUILD`: what a scrape that first merges the receive threads'
//! shards costs (so it shows every line received before it): the same paced traffic into this
//! build and the baseline, `/metrics` scraped ten times a second (a busy poller), CPU per line
//! and scrape time side by side, two rounds alternated.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::carbon::CarbonStandIn;
use crate::sender::{self, Datagram};
use crate::targets::{cpu_ticks, metric, settle, spawn_floodgate, terminate, BenchOptions, PREFIX};

const LIMITS_OFF: &str = "[limits]\nudp_per_source = 0\nudp_per_port = 0\n";
const PROTOBUF: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited";

/// 50 rules in the shapes mapping files have: `service.env.verb.route.status` counters,
/// per-service latency timers, queue gauges, a few regexes for the irregular names.
fn mapping_file() -> String {
    let mut out = String::from(
        "defaults:\n  observer_type: histogram\n  histogram_options:\n    native_histogram_bucket_factor: 1.1\n\
         mappings:\n",
    );
    for i in 0..20 {
        out += &format!(
            "- match: \"load.svc{i}.*.*.*.*\"\n  name: \"svc{i}_requests_total\"\n  \
             labels: {{ env: \"$1\", method: \"$2\", route: \"$3\", code: \"$4\" }}\n"
        );
    }
    for i in 0..20 {
        out += &format!(
            "- match: \"load.svc{i}.*.latency.*\"\n  name: \"svc{i}_latency_seconds\"\n  \
             labels: {{ env: \"$1\", route: \"$2\" }}\n"
        );
    }
    for i in 0..10 {
        out += &format!(
            "- match: \"^load\\\\.legacy{i}\\\\.([a-z]+)\\\\.(.+)$\"\n  match_type: regex\n  \
             name: \"legacy{i}_${{1}}_total\"\n  labels: {{ path: \"$2\" }}\n"
        );
    }
    out
}

/// 5,000 series (4,000 counters, 1,000 timers) in 20-line datagrams.
fn pool() -> Vec<Datagram> {
    let (envs, verbs, routes) = (["prod", "staging"], ["get", "post", "put", "delete"], 25);
    let mut lines = Vec::new();
    for n in 0..5000usize {
        let svc = n % 20;
        let line = if n % 5 == 4 {
            let (env, route) = (envs[n % 2], n / 40 % routes);
            format!("load.svc{svc}.{env}.latency.r{route}:{}|ms", 1 + n % 997)
        } else {
            let (env, verb, route) = (envs[n / 20 % 2], verbs[n / 40 % 4], n / 160 % routes);
            format!("load.svc{svc}.{env}.{verb}.r{route}.{}:1|c", 200 + n % 3 * 100)
        };
        lines.push(line);
    }
    lines
        .chunks(20)
        .map(|c| Datagram {
            bytes: c.join("\n").into_bytes(),
            counters: c.iter().filter(|l| l.ends_with("|c")).count() as u64,
        })
        .collect()
}

/// A GET with an `Accept` header: status, body bytes, time to the last byte.
fn get(port: u16, path: &str, accept: &str) -> (u16, Vec<u8>, Duration) {
    let start = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to /metrics");
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nAccept: {accept}\r\n\r\n").unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let took = start.elapsed();
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n").map_or(resp.len(), |p| p + 4);
    let code = String::from_utf8_lossy(&resp[..split.min(resp.len())])
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, resp[split..].to_vec(), took)
}

struct Trial {
    lines: u64,
    cpu_seconds: f64,
    loss: f64,
    scrape_ms: f64,
}

/// One trial of `bin` at `rate` lines/s, with or without the mapping file; a scrape every
/// `scrape_every`.
fn trial(
    opts: &BenchOptions,
    bin: &std::path::Path,
    mapping: bool,
    rate: u64,
    pool: &[Datagram],
    scrape_every: Duration,
) -> Trial {
    let carbon = CarbonStandIn::start(PREFIX);
    let dir = std::env::temp_dir().join(format!("floodgate-bench-prom-{}", crate::targets::free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut sections = format!("[graphite]\naddress = \"127.0.0.1:{}\"\n{LIMITS_OFF}", carbon.port);
    if mapping {
        let file = dir.join("mapping.yml");
        std::fs::write(&file, mapping_file()).unwrap();
        sections += &format!("[prometheus]\nmapping_config = \"{}\"\n", file.display());
    }
    let mut running =
        crate::targets::spawn_with(bin, &dir, "floodgate", "flush_interval = \"1s\"\nreceive_threads = 1\n", &sections);
    let http = running.http.expect("http on");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scraper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut times = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (_, _, took) = get(http, "/metrics", "text/plain");
                times.push(took.as_secs_f64() * 1000.0);
                std::thread::sleep(scrape_every.saturating_sub(took));
            }
            times.iter().sum::<f64>() / times.len().max(1) as f64
        })
    };
    let dest = std::net::SocketAddr::from(([127, 0, 0, 1], running.port));
    let ticks = cpu_ticks(running.child.id());
    let label = format!("prometheus mapping={mapping} rate {rate}");
    let sent = sender::send_pool(dest, pool, 20, rate, 1, 1, opts.trial, &label);
    let cpu_seconds = (cpu_ticks(running.child.id()) - ticks) as f64 / 100.0;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let scrape_ms = scraper.join().unwrap_or(f64::NAN);
    terminate(&mut running);
    settle(&carbon, sent.counters as f64, Duration::from_millis(500));
    let _ = std::fs::remove_dir_all(&dir);
    Trial { lines: sent.lines, cpu_seconds, loss: 1.0 - carbon.sum() / sent.counters.max(1) as f64, scrape_ms }
}

/// 100,000 timer series, five values each, then scrapes of each kind.
fn scrape_sizes(opts: &BenchOptions) {
    let dir = std::env::temp_dir().join(format!("floodgate-bench-prom-{}", crate::targets::free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("mapping.yml");
    println!(
        "\n### Scraping 100,000 histogram series (each timer five values; default buckets, \
         native bucket factor 1.1: schema 3)"
    );
    println!("| mapping | format | body | scrape time (first) | scrape time (median of 5 after) |");
    println!("|---|---|---|---|---|");
    for (label, native) in [("classic only", false), ("classic + native", true)] {
        let factor = if native { "  histogram_options:\n    native_histogram_bucket_factor: 1.1\n" } else { "" };
        std::fs::write(&file, format!("defaults:\n  observer_type: histogram\n{factor}mappings: []\n")).unwrap();
        let sections = format!("{LIMITS_OFF}[prometheus]\nmapping_config = \"{}\"\n", file.display());
        let mut running =
            spawn_floodgate(opts, &dir, "floodgate", "flush_interval = \"1s\"\nmax_timer_samples = 100\n", &sections);
        let http = running.http.expect("http on");
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for chunk in 0..25_000u64 {
            let lines: Vec<String> =
                (0..20).map(|j| format!("h.t{}:{}|ms", (chunk * 20 + j) % 100_000, 1 + (chunk + j) % 2000)).collect();
            while socket.send_to(lines.join("\n").as_bytes(), ("127.0.0.1", running.port)).is_err() {
                std::thread::sleep(Duration::from_millis(1));
            }
            if chunk % 2000 == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while metric(http, "floodgate_statsd_series") < 100_000.0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_millis(1500)); // one more flush: every value in the sketches
        for (format, accept) in [("text", "text/plain"), ("protobuf", PROTOBUF)] {
            // Each format's first scrape after SIGHUP maps every name afresh.
            let _ = std::process::Command::new("kill").arg("-HUP").arg(running.child.id().to_string()).status();
            std::thread::sleep(Duration::from_millis(500));
            let (code, body, first) = get(http, "/metrics", accept);
            assert_eq!(code, 200, "scrape {format}");
            let mut times: Vec<f64> = (0..5).map(|_| get(http, "/metrics", accept).2.as_secs_f64() * 1000.0).collect();
            times.sort_by(f64::total_cmp);
            println!(
                "| {label} | {format} | {:.1} MB | {:.0} ms | {:.0} ms |",
                body.len() as f64 / 1e6,
                first.as_secs_f64() * 1000.0,
                times[2]
            );
        }
        terminate(&mut running);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `bench --only prometheus`.
pub fn prometheus(opts: &BenchOptions) {
    let pool = pool();
    // A rate one receive thread takes without loss on this machine, the same for both; two
    // rounds, alternated, so drift in the machine falls on both alike.
    let rate = 1_000_000;
    println!(
        "\n## Prometheus: statsd_exporter mapping file (50 rules: 40 globs, 10 regexes; timers as classic + native \
         histograms) vs none, same run ({rate} lines/s, 20 lines/datagram, 5,000 series, /metrics scraped every second)"
    );
    println!("| round | mapping | lines/s | loss | floodgate CPU (of one core) | ns of CPU per line | vs none | mean scrape time |");
    println!("|---|---|---|---|---|---|---|---|");
    compare_rounds(opts, "", ["none", "50 rules"], || {
        [false, true].map(|mapping| trial(opts, &opts.floodgate, mapping, rate, &pool, Duration::from_secs(1)))
    });
    scrape_sizes(opts);
}

/// `bench --only scrape --baseline BUILD`: this build, whose scrape merges the receive shards
/// first, against a build whose scrape does not, under one load: a scrape a second (as often
/// as Prometheus is set to scrape) and ten a second (a busy poller), two rounds each.
pub fn scrape_merge(opts: &BenchOptions) {
    let Some(baseline) = opts.baseline.clone() else {
        println!("\n(scrape: needs --baseline BUILD, the build to compare with)");
        return;
    };
    let pool = pool();
    let rate = 1_000_000;
    println!(
        "\n## Scrapes that merge the receive shards: this build vs the baseline, same run ({rate} lines/s, \
         20 lines/datagram, 5,000 series, flush every 1 s)"
    );
    println!(
        "| scrape every | round | build | lines/s | loss | floodgate CPU (of one core) | ns of CPU per line | vs baseline | mean scrape time |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for every in [Duration::from_secs(1), Duration::from_millis(100)] {
        compare_rounds(opts, &format!("{} ms | ", every.as_millis()), ["baseline", "this build"], || {
            [&baseline, &opts.floodgate].map(|bin| trial(opts, bin, false, rate, &pool, every))
        });
    }
}

/// Two rounds of two trials (alternated, so drift in the machine falls on both alike): a row
/// per trial, the second's CPU per line against the first's, then a row of both rounds'
/// means. `lead` starts each row (the columns before `round`).
fn compare_rounds(opts: &BenchOptions, lead: &str, names: [&str; 2], mut run: impl FnMut() -> [Trial; 2]) {
    let per_line = |t: &Trial| t.cpu_seconds * 1e9 / t.lines.max(1) as f64;
    let secs = opts.trial.as_secs_f64();
    let mut sums = [0.0f64; 2];
    for round in 1..=2 {
        let trials = run();
        for (i, t) in trials.iter().enumerate() {
            sums[i] += per_line(t);
            println!(
                "| {lead}{round} | {} | {:.0} | {:.3}% | {:.0}% | {:.0} | {:+.1}% | {:.1} ms |",
                names[i],
                t.lines as f64 / secs,
                t.loss * 100.0,
                t.cpu_seconds / secs * 100.0,
                per_line(t),
                (per_line(t) / per_line(&trials[0]) - 1.0) * 100.0,
                t.scrape_ms
            );
        }
    }
    println!(
        "| {lead}both | {} vs {} | | | | {:.0} vs {:.0} | {:+.1}% | |",
        names[1],
        names[0],
        sums[1] / 2.0,
        sums[0] / 2.0,
        (sums[1] / sums[0] - 1.0) * 100.0
    );
}
