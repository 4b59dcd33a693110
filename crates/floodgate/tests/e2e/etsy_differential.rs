//! Differential test against Etsy statsd 0.9.0 (the real one, run with node): the same
//! generated traffic — every type, sample rates, DogStatsD and Graphite tags, several values
//! per line, names to sanitise, bad lines — goes to both over UDP, and their Graphite output
//! must match line for line (timestamps and timing figures aside), flush after flush, in
//! both namespaces, plaintext and pickle, with and without the delete_* options.
//!
//! Flush boundaries: each daemon flushes on its own fixed schedule. A round's traffic is sent
//! at the moment farthest from both daemons' next flushes (learned from when their payloads
//! arrive) and is bracketed by begin/end marker counters; a round that one daemon still split
//! across two flushes is detected by the markers and repeated with fresh names.

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::common::*;

const INTERVAL: Duration = Duration::from_millis(2000);

struct Scenario {
    /// Keys inside floodgate's [statsd].
    floodgate_statsd: &'static str,
    /// Further floodgate sections (the [graphite] address is added).
    floodgate_graphite: &'static str,
    /// Etsy config entries (JavaScript object members).
    etsy: &'static str,
    pickle: bool,
    /// Metric name prefix of the begin/end markers as each namespace writes a counter's count.
    marker_count_name: fn(&str) -> String,
}

fn etsy_dir() -> PathBuf {
    let dir = std::env::var_os("ETSY_STATSD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/peers/statsd-0.9.0"));
    assert!(
        dir.join("stats.js").is_file(),
        "Etsy statsd 0.9.0 not at {}: run ./scripts/test.sh (it fetches it with npm pack)",
        dir.display()
    );
    dir
}

struct Etsy {
    child: Child,
}

impl Drop for Etsy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_etsy(port: u16, carbon: u16, entries: &str, pickle: bool) -> Etsy {
    let node = require_tool("node");
    let dir = tempfile::tempdir().unwrap().keep();
    let mgmt = free_port();
    let protocol = if pickle { "pickle" } else { "text" };
    let config = format!(
        "{{\n port: {port}, address: \"127.0.0.1\", mgmt_port: {mgmt}, mgmt_address: \"127.0.0.1\",\n \
         graphiteHost: \"127.0.0.1\", graphitePort: {carbon}, graphitePicklePort: {carbon}, graphiteProtocol: \"{protocol}\",\n \
         flushInterval: {}, automaticConfigReload: false,\n {entries}\n}}\n",
        INTERVAL.as_millis()
    );
    let path = dir.join("config.js");
    std::fs::write(&path, config).unwrap();
    let child = Command::new(node)
        .arg(etsy_dir().join("stats.js"))
        .arg(&path)
        .current_dir(etsy_dir())
        .stdout(std::fs::File::create(dir.join("etsy.log")).unwrap())
        .stderr(std::fs::File::create(dir.join("etsy.err")).unwrap())
        .spawn()
        .expect("start Etsy statsd");
    eprintln!("Etsy statsd logs in {}", dir.display());
    // Ready when its UDP port is taken (it has no readiness signal of its own).
    wait_for(&format!("Etsy statsd bound to {port}"), Duration::from_secs(30), || {
        UdpSocket::bind(("127.0.0.1", port)).is_err().then_some(())
    });
    Etsy { child }
}

/// Deterministic traffic for one round.
fn traffic(seed: u64, round: usize) -> Vec<String> {
    let mut x = seed.wrapping_mul(0x9e3779b97f4a7c15) ^ round as u64;
    let mut rnd = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut datagrams = Vec::new();
    let rates = ["", "|@0.5", "|@0.1", "|@0.25", "|@1"];
    for _ in 0..300 {
        let mut d = String::new();
        for _ in 0..1 + rnd(5) {
            let k = rnd(12);
            let line = match rnd(20) {
                0..=3 => format!("diff.c{k}:{}|c{}", 1 + rnd(100), rates[rnd(5) as usize]),
                4 => format!("diff.cf{k}:{}.{}|c", rnd(10), rnd(1000)),
                5 => format!("diff.tagged:{}|c|#env:prod,host:h{k}", 1 + rnd(9)),
                6 => format!("diff.gtag;env=e{k};dc=x:{}|c", 1 + rnd(9)),
                7 => format!("diff.g{k}:{}.{}|g", rnd(500), rnd(100)),
                8 => format!("diff.g{k}:{}{}.{}|g", if rnd(2) == 0 { "+" } else { "-" }, rnd(50), rnd(10)),
                9..=11 => format!("diff.t{k}:{}.{}|ms{}", rnd(1000), rnd(1000), rates[rnd(3) as usize]),
                12 => format!("diff.render.t{k}:{}.{}|ms", rnd(200), rnd(10)),
                13 => format!("diff.s{k}:member{}|s", rnd(30)),
                14 => format!("diff.mv{k}:1|c:{}|c:{}|ms", rnd(9), rnd(99)),
                15 => ["diff.bad", "diff.bad:x|c", "diff.bad:-5|ms", "diff.bad:1|c|@x", "diff.bad:|g", "diff.bad:1"]
                    [rnd(6) as usize]
                    .to_string(),
                16 => format!("diff.we ird/na!me{k}:1|c"),
                17 => format!("diff.unk{k}:{}|x", rnd(9)),
                18 => format!("diff.foo.t{k}:{}|ms", rnd(99)),
                _ => format!("diff.gz{k}:0|g\ndiff.gz{k}:+{}|g", rnd(9)),
            };
            d.push_str(&line);
            d.push('\n');
        }
        datagrams.push(d);
    }
    datagrams
}

/// Lines whose values depend on timing are compared by name only.
fn normalise(lines: Vec<(String, String, String)>) -> BTreeMap<String, Vec<String>> {
    let timing = [
        "calculationtime",
        "flush_time",
        "last_flush",
        "last_exception",
        "flush_length",
        "processing_time",
        "timestamp_lag",
    ];
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value, _ts) in lines {
        let value = if timing.iter().any(|t| name.contains(t)) { "*".to_string() } else { value };
        out.entry(name).or_default().push(value);
    }
    out
}

/// The circular distance of `t` from `phase` on a cycle of `INTERVAL`.
fn distance(t: u128, phase: u128) -> u128 {
    let i = INTERVAL.as_millis();
    let d = (t + i - phase) % i;
    d.min(i - d)
}

fn run(s: Scenario) {
    let etsy_carbon = Capture::start();
    let fg_carbon = Capture::start();
    let etsy_port = free_port();
    let _etsy = start_etsy(etsy_port, etsy_carbon.port, s.etsy, s.pickle);
    let fg = Floodgate::start(
        &format!("flush_interval = \"{}ms\"\n{}", INTERVAL.as_millis(), s.floodgate_statsd),
        &format!("[graphite]\naddress = \"127.0.0.1:{}\"\n{}\n", fg_carbon.port, s.floodgate_graphite),
    );
    let parse = |p: &[u8]| if s.pickle { parse_pickle(p) } else { parse_plaintext(p) };
    let base = Instant::now();
    let wait = Duration::from_secs(30);
    // Two flushes each first, so both have their timestamp_lag gauge and a known phase.
    let mut phase_etsy = 0;
    let mut phase_fg = 0;
    let phase = |c: &Capture| c.last_arrival().unwrap().duration_since(base).as_millis() % INTERVAL.as_millis();
    for _ in 0..2 {
        etsy_carbon.next(wait).expect("Etsy statsd flushes");
        phase_etsy = phase(&etsy_carbon);
        fg_carbon.next(wait).expect("floodgate flushes");
        phase_fg = phase(&fg_carbon);
    }
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut compared_rounds = 0;
    let mut round = 0;
    while compared_rounds < 3 {
        round += 1;
        assert!(round <= 8, "too many rounds split across flushes");
        // The send moment farthest from both daemons' flushes.
        let best = (0..INTERVAL.as_millis())
            .step_by(25)
            .max_by_key(|t| distance(*t, phase_etsy).min(distance(*t, phase_fg)))
            .unwrap();
        let now = base.elapsed().as_millis();
        let wait_ms = (best + INTERVAL.as_millis() - now % INTERVAL.as_millis()) % INTERVAL.as_millis();
        std::thread::sleep(Duration::from_millis(wait_ms as u64));
        let mut datagrams = vec![format!("diff.round{round}.begin:1|c")];
        datagrams.extend(traffic(7, round));
        datagrams.push(format!("diff.round{round}.end:1|c"));
        for d in &datagrams {
            sock.send_to(d.as_bytes(), ("127.0.0.1", etsy_port)).unwrap();
            sock.send_to(d.as_bytes(), ("127.0.0.1", fg.statsd)).unwrap();
            // Paced: node's default receive buffer holds only ~250 datagrams.
            std::thread::sleep(Duration::from_micros(150));
        }
        let end = (s.marker_count_name)(&format!("diff.round{round}.end"));
        let begin = (s.marker_count_name)(&format!("diff.round{round}.begin"));
        let has_end = |p: &[u8]| value_of(&parse(p), &end) == Some("1");
        let e = etsy_carbon.wait_for(wait, has_end);
        phase_etsy = phase(&etsy_carbon);
        let f = fg_carbon.wait_for(wait, has_end);
        phase_fg = phase(&fg_carbon);
        let (e, f) = (parse(&e), parse(&f));
        if value_of(&e, &begin) != Some("1") || value_of(&f, &begin) != Some("1") {
            eprintln!("round {round} was split across flushes by one daemon; repeating with new names");
            continue;
        }
        let (e, f) = (normalise(e), normalise(f));
        assert_eq!(e.keys().collect::<Vec<_>>(), f.keys().collect::<Vec<_>>(), "round {round}: the same metric names");
        for (name, values) in &e {
            assert_eq!(Some(values), f.get(name), "round {round}: {name}");
        }
        // The idle flush after the round (counters at 0, deletions, gauge TTLs) matches too.
        let e = normalise(parse(&etsy_carbon.next(wait).expect("Etsy idle flush")));
        let f = normalise(parse(&fg_carbon.next(wait).expect("floodgate idle flush")));
        assert_eq!(e, f, "round {round}: the idle flush after it");
        compared_rounds += 1;
    }
}

#[test]
fn legacy_namespace_plaintext() {
    run(Scenario {
        floodgate_statsd: "",
        floodgate_graphite: "",
        etsy: "",
        pickle: false,
        marker_count_name: |k| format!("stats_counts.{k}"),
    });
}

#[test]
fn new_namespace_pickle_percentiles_histograms() {
    run(Scenario {
        floodgate_statsd: "percentiles = [90, 99.5, -25]\nprefix_stats = \"mystatsd\"\n\
                           histograms = [{ metric = \"foo\", bins = [] }, { metric = \"render\", bins = [0.5, 10, 100, \"inf\"] }]",
        floodgate_graphite: "protocol = \"pickle\"\nlegacy_namespace = false\nglobal_prefix = \"pfx\"\nprefix_counter = \"cnt\"\n\
                             prefix_timer = \"tmr\"\nprefix_gauge = \"gge\"\nprefix_set = \"sts\"\nglobal_suffix = \"sfx\"",
        etsy: "percentThreshold: [90, 99.5, -25], prefixStats: \"mystatsd\",\n \
               histogram: [{ metric: \"foo\", bins: [] }, { metric: \"render\", bins: [0.5, 10, 100, \"inf\"] }],\n \
               graphite: { legacyNamespace: false, globalPrefix: \"pfx\", prefixCounter: \"cnt\", prefixTimer: \"tmr\",\n \
               prefixGauge: \"gge\", prefixSet: \"sts\", globalSuffix: \"sfx\" }",
        pickle: true,
        marker_count_name: |k| format!("pfx.cnt.{k}.count.sfx"),
    });
}

#[test]
fn delete_idle_stats_ttl_filters_and_no_sanitising() {
    run(Scenario {
        floodgate_statsd: "delete_idle_stats = true\ngauges_max_ttl = 2\nkey_name_sanitize = false\n\
                           calculated_timer_metrics = [\"count\", \"mean\", \"upper_percent\", \"histogram\"]\n\
                           percentiles = [50, -10]\nhistograms = [{ metric = \"t1\", bins = [100, 500] }]",
        floodgate_graphite:
            "legacy_namespace = false\nglobal_prefix = \"\"\nprefix_counter = \"\"\nflush_counts = true",
        etsy: "deleteIdleStats: true, gaugesMaxTTL: 2, keyNameSanitize: false,\n \
               calculatedTimerMetrics: [\"count\", \"mean\", \"upper_percent\", \"histogram\"],\n \
               percentThreshold: [50, -10], histogram: [{ metric: \"t1\", bins: [100, 500] }],\n \
               graphite: { legacyNamespace: false, globalPrefix: \"\", prefixCounter: \"\" }",
        pickle: false,
        marker_count_name: |k| format!("{k}.count"),
    });
}
