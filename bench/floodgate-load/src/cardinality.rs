//! `--only cardinality`: what series budgets and attribution cost (issue 31).
//! - CPU per line with budgets and attribution on (the defaults) vs off, at 1M lines/s, 20
//!   lines a datagram, in the same run: a steady workload (1,000 names) with a stream of new
//!   series (a request id in a name) at three rates: none, 1,000 a second, and 3,125 a second
//!   (187,500 a minute, near the most one sender may make under the default
//!   `new_series_per_source`, 250,000 a minute). Known series cost budgets nothing; each new
//!   one is charged, owned and attributed;
//! - the memory of attribution as distinct names grow to 10M.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::sender::{send_pool, Datagram};
use crate::targets::{cpu_ns, http_get, metric_sum, spawn_with, BenchOptions, GUARD_OFF};

/// Lines a second sent.
const RATE: u64 = 1_000_000;
/// Lines a datagram.
const LINES: usize = 20;
/// Seconds of sending per trial.
const SECONDS: u64 = 8;
/// New series a second in each workload: all under the default `new_series_per_source`
/// (250,000 a minute), so nothing is refused and both configurations aggregate the same series.
const NEW_PER_SECOND: [usize; 3] = [0, 1_000, 3_125];
/// Trials of each configuration.
const ROUNDS: usize = 5;

/// floodgate for one trial, in a folder of its own (removed by the caller): `statsd_extra` in
/// `[statsd]`, `limits` as `[limits]`, connection tracking off (not what is measured).
fn start(
    opts: &BenchOptions,
    name: &str,
    statsd_extra: &str,
    limits: &str,
) -> (crate::targets::Running, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("floodgate-cardinality-{name}-{}", crate::targets::free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let fg = spawn_with(&opts.floodgate, &dir, name, statsd_extra, &format!("{limits}[conntrack]\nenabled = false\n"));
    (fg, dir)
}

/// StatsD lines floodgate's UDP listener has received.
fn lines_received(http: u16) -> f64 {
    metric_sum(http, "floodgate_received_lines_total{", &["statsd_udp"])
}

/// Waits until `count()` stops moving (looked at every `every`) and returns it.
fn settled(count: impl Fn() -> f64, every: Duration) -> f64 {
    let mut last = count();
    loop {
        std::thread::sleep(every);
        let now = count();
        if now == last {
            return now;
        }
        last = now;
    }
}

/// Datagrams for one trial with `new_per_second` new series a second (never a repeated
/// request id, so every one is a new series).
fn pool(new_per_second: usize) -> Vec<Datagram> {
    pool_of((RATE as usize / LINES) * SECONDS as usize, new_per_second)
}

/// `count` datagrams with `new_per_second` new series in every second's worth at [`RATE`].
fn pool_of(count: usize, new_per_second: usize) -> Vec<Datagram> {
    let per_second = RATE as usize / LINES;
    let mut id = 0u64;
    (0..count)
        .map(|d| {
            let mut bytes = Vec::with_capacity(LINES * 24);
            // Spread evenly: datagram d carries one when the running count steps up.
            let new = (d + 1) * new_per_second / per_second > d * new_per_second / per_second;
            for l in 0..LINES {
                if l == 0 && new {
                    bytes.extend_from_slice(format!("checkout.request.{id}:1|c\n").as_bytes());
                    id += 1;
                } else {
                    bytes.extend_from_slice(format!("load.k{}:1|c\n", (d * LINES + l) % 1000).as_bytes());
                }
            }
            bytes.pop();
            Datagram { bytes, counters: LINES as u64 }
        })
        .collect()
}

/// One trial: floodgate with `limits`, the pool sent at [`RATE`], then drained and flushed
/// (the merge is where new series are attributed). Returns (lines received, CPU seconds).
fn trial(opts: &BenchOptions, pool: &[Datagram], limits: &str) -> (f64, f64) {
    // A flush a second, so every new series is merged (and attributed) inside the measured
    // window.
    let (fg, dir) = start(opts, "paced", "flush_interval = \"1s\"\nreceive_buffer = \"256MiB\"", limits);
    let http = fg.http.unwrap_or(0);
    let pid = fg.child.id();
    let target = SocketAddr::from(([127, 0, 0, 1], fg.port));
    let before = cpu_ns(pid);
    let sent = send_pool(target, pool, LINES as u64, RATE, 1, 1, Duration::from_secs(SECONDS), "sending");
    // Drained: the line count stops moving; then one more flush, which merges the last of them.
    let last = settled(|| lines_received(http), Duration::from_millis(300));
    let flushes = metric_sum(http, "floodgate_flushes_total", &[]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric_sum(http, "floodgate_flushes_total", &[]) < flushes + 1.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let cpu = (cpu_ns(pid) - before) as f64 / 1e9;
    let series = http_get(http, "/api/status").ok().and_then(|(_, b)| serde_json_value(&b)).map_or(0.0, |v| v);
    eprintln!("  sent {} lines, received {last:.0}, {cpu:.2} CPU-s, {series:.0} series held", sent.lines);
    drop(fg);
    let _ = std::fs::remove_dir_all(&dir);
    (last, cpu)
}

/// `flush.series` of `/api/status`.
fn serde_json_value(body: &str) -> Option<f64> {
    let at = body.find("\"series\":")?;
    body[at + 9..].split([',', '}']).next()?.trim().parse().ok()
}

/// The benchmark.
pub fn cardinality(opts: &BenchOptions) {
    println!(
        "\n## Series budgets and attribution: CPU per line at 1M lines/s, 20 lines a datagram, one sender \
         (1,000 steady names and a stream of new series), on (the defaults) vs off, same run"
    );
    const OFF: &str = "series_per_source = 0\nnew_series_per_source = 0\n";
    let configs = [("off", OFF), ("on", "")];
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let mut table = Vec::new();
    for new_per_second in NEW_PER_SECOND {
        let pool = pool(new_per_second);
        let mut ns: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
        for round in 0..ROUNDS {
            // Alternating which goes first, so drift over the run does not favour one.
            let order: Vec<usize> = if round % 2 == 0 { vec![0, 1] } else { vec![1, 0] };
            for i in order {
                let (name, extra) = configs[i];
                let (lines, cpu) = trial(opts, &pool, &format!("{GUARD_OFF}{extra}"));
                let per_line = cpu / lines.max(1.0) * 1e9;
                eprintln!("{new_per_second} new/s, round {round}: budgets {name}: {per_line:.1} ns per line");
                ns[i].push(per_line);
            }
        }
        let pairs: Vec<String> =
            (0..ROUNDS).map(|r| format!("{:+.1} %", (ns[1][r] / ns[0][r] - 1.0) * 100.0)).collect();
        let (off, on) = (median(&ns[0]), median(&ns[1]));
        // The difference spread over the new series: what one costs.
        let per_new = if new_per_second > 0 { (on - off) * RATE as f64 / new_per_second as f64 } else { f64::NAN };
        table.push(format!(
            "| {new_per_second} | {off:.1} ns | {on:.1} ns | {:+.1} % | {} | {} |",
            (on / off - 1.0) * 100.0,
            pairs.join(", "),
            if per_new.is_nan() { "–".to_string() } else { format!("{:.0} ns", per_new) }
        ));
    }
    println!("\n| new series a second | CPU per line, off (median of {ROUNDS}) | on (the defaults) | on vs off | round by round | per new series |");
    println!("|---|---|---|---|---|---|");
    for row in table {
        println!("{row}");
    }
    drained(opts);
    attribution_memory();
}

/// The same streams by the drain method (a 1 GiB socket buffer filled while floodgate is
/// stopped, then drained by one receive thread): lines per CPU-second of the whole process,
/// precise to about a per cent where the paced trials above swing by ten.
fn drained(opts: &BenchOptions) {
    println!(
        "\n### The same, drained: 450,000 datagrams of 20 lines queued while floodgate is stopped, then \
         read by one receive thread (a flush every 250 ms during the drain)"
    );
    const OFF: &str = "series_per_source = 0\nnew_series_per_source = 0\n";
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    println!("\n| new series per 1M lines | off: lines/CPU-s (median of {ROUNDS}) | on | on vs off (CPU per line) | round by round |");
    println!("|---|---|---|---|---|");
    for new_per_million in NEW_PER_SECOND {
        let pool = pool_of(450_000, new_per_million);
        let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        for round in 0..ROUNDS {
            let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                let extra = if i == 0 { OFF } else { "" };
                let rate = drain_trial(opts, &pool, &format!("{GUARD_OFF}{extra}"));
                eprintln!(
                    "drained, {new_per_million} new per 1M lines, round {round}, budgets {}: {rate:.0} lines/CPU-s",
                    if i == 0 { "off" } else { "on" }
                );
                rates[i].push(rate);
            }
        }
        let pairs: Vec<String> =
            (0..ROUNDS).map(|r| format!("{:+.1} %", (rates[0][r] / rates[1][r] - 1.0) * 100.0)).collect();
        let (off, on) = (median(&rates[0]), median(&rates[1]));
        println!(
            "| {new_per_million} | {:.2}M | {:.2}M | {:+.1} % | {} |",
            off / 1e6,
            on / 1e6,
            (off / on - 1.0) * 100.0,
            pairs.join(", ")
        );
    }
}

/// One drain: lines per CPU-second (every thread's `schedstat`) floodgate with `limits` takes to
/// read `pool`, queued while it was stopped, and merge it.
fn drain_trial(opts: &BenchOptions, pool: &[Datagram], limits: &str) -> f64 {
    let (fg, dir) =
        start(opts, "drain", "flush_interval = \"250ms\"\nreceive_threads = 1\nreceive_buffer = \"1GiB\"", limits);
    let http = fg.http.unwrap_or(0);
    let pid = fg.child.id();
    crate::hostile::signal(pid, "STOP");
    let socket = std::net::UdpSocket::bind("127.0.0.2:0").unwrap();
    for d in pool {
        let _ = socket.send_to(&d.bytes, ("127.0.0.1", fg.port));
    }
    let before = cpu_ns(pid);
    crate::hostile::signal(pid, "CONT");
    let last = settled(|| lines_received(http), Duration::from_millis(400));
    let cpu = (cpu_ns(pid) - before) as f64 / 1e9;
    drop(fg);
    let _ = std::fs::remove_dir_all(&dir);
    last / cpu.max(1e-3)
}

/// Attribution's memory as distinct names grow to 10M: its own count of its bytes, and the
/// process's resident memory.
fn attribution_memory() {
    use floodgate_statsd::budget::{BudgetLimits, Sender, SeriesBudgets};
    use floodgate_statsd::cardinality::Attribution;
    println!("\n## Attribution memory as distinct names grow (new series, one a name, from 1,000 senders)");
    println!("\n| distinct names | attribution bytes | process resident growth | time |");
    println!("|---|---|---|---|");
    let limits = BudgetLimits { series_per_sender: 0, new_series_per_minute: 1, fold: false, loopback_as_one: false };
    let budgets = SeriesBudgets::new(limits);
    let mut attribution = Attribution::default();
    let rss = || crate::targets::proc_status(std::process::id(), "VmRSS:") * 1024;
    let start_rss = rss();
    let started = Instant::now();
    let mut done = 0u64;
    let mut key = Vec::with_capacity(64);
    for target in [100_000u64, 1_000_000, 10_000_000] {
        while done < target {
            key.clear();
            use std::io::Write;
            let _ = write!(key, "app{}.requests.by_id.{done}", done % 97);
            let sender =
                Sender::Address(std::net::IpAddr::V4(std::net::Ipv4Addr::from(0xc612_0000 + (done % 1000) as u32)));
            // All in one minute: the sketches see every name at once.
            attribution.new_series(&key, sender, 1, &budgets);
            done += 1;
        }
        println!(
            "| {target} | {} | {:.1} MiB | {:.1} s |",
            attribution.bytes(),
            (rss().saturating_sub(start_rss)) as f64 / (1 << 20) as f64,
            started.elapsed().as_secs_f64()
        );
    }
}
