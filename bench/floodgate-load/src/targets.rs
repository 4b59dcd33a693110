//! The benchmark runs: each target started fresh per trial, fed by the sender, its flushed
//! counter sums read back from the Carbon stand-in.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::carbon::{CarbonStandIn, RawSink};
use crate::sender::{self, Load, Sent};

/// `bench` options.
pub struct BenchOptions {
    pub floodgate: PathBuf,
    /// Another floodgate build measured beside it (`hotpath`, `attack`).
    pub baseline: Option<PathBuf>,
    pub etsy: PathBuf,
    pub trial: Duration,
    pub only: Vec<String>,
    pub lines: Vec<usize>,
}

/// Loss below this is "sustained".
const MAX_LOSS: f64 = 0.001;
const CARDINALITY: usize = 1000;
pub(crate) const PREFIX: &str = "stats_counts.load.";

#[derive(Clone, Copy, PartialEq)]
enum Target {
    Sink,
    /// Guard off (every limit 0): the throughput trials.
    Floodgate,
    /// Guard on, limits far above the load: every datagram is checked and passes.
    FloodgateGuarded,
    /// Default limits, one source far over its limit: almost every datagram is read and
    /// dropped by the guard. Loss = datagrams floodgate did not read.
    FloodgateDropping,
    /// `--baseline`: another build, guard off, for before/after rates in one run.
    Baseline,
    Etsy,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Sink => "raw recvmmsg sink",
            Target::Floodgate => "floodgate",
            Target::FloodgateGuarded => "floodgate, guard on (limits not reached)",
            Target::FloodgateDropping => "floodgate, guard dropping (one source over its limit)",
            Target::Etsy => "Etsy statsd 0.9.0",
            Target::Baseline => "floodgate, baseline build",
        }
    }

    fn limits(self) -> &'static str {
        match self {
            Target::FloodgateGuarded => "[limits]\nudp_per_source = 1_000_000_000\nudp_per_port = 1_000_000_000\n",
            Target::FloodgateDropping => "[limits]\n",
            _ => GUARD_OFF,
        }
    }
}

/// One trial's outcome.
#[derive(Debug, Clone, Copy)]
struct Trial {
    sent: Sent,
    received_lines: f64,
    /// CPU the target used while the measured traffic was sent, in cores (None: in-process sink).
    cpu_cores: Option<f64>,
}

impl Trial {
    fn loss(&self) -> f64 {
        if self.sent.counters == 0 {
            return 1.0;
        }
        1.0 - self.received_lines / self.sent.counters as f64
    }
    fn rate(&self) -> f64 {
        self.sent.lines as f64 / self.sent.elapsed.as_secs_f64()
    }
}

pub(crate) fn free_port() -> u16 {
    loop {
        let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = t.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub(crate) struct Running {
    pub(crate) child: Child,
    pub(crate) port: u16,
    pub(crate) http: Option<u16>,
    pub(crate) admin: Option<u16>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_floodgate(opts: &BenchOptions, carbon: u16, statsd_extra: &str) -> Running {
    start_floodgate_with(opts, carbon, statsd_extra, GUARD_OFF)
}

/// Datagrams floodgate's UDP receive threads have read (accepted or dropped).
fn datagrams_read(http: u16) -> f64 {
    metric_sum(http, "floodgate_received_packets_total{", &["statsd_udp"])
}

/// Waits until the read-datagram count stops moving (the socket queue is drained).
fn drained(http: u16) -> f64 {
    let mut last = datagrams_read(http);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = datagrams_read(http);
        if now == last {
            return now;
        }
        last = now;
    }
}

/// The guard switched off: throughput trials send far past its default limits from one source.
pub(crate) const GUARD_OFF: &str = "[limits]\nudp_per_source = 0\nudp_per_port = 0\nkernel = \"off\"\n";

fn start_floodgate_with(opts: &BenchOptions, carbon: u16, statsd_extra: &str, limits: &str) -> Running {
    start_build(&opts.floodgate, carbon, statsd_extra, limits)
}

fn start_build(bin: &std::path::Path, carbon: u16, statsd_extra: &str, limits: &str) -> Running {
    let dir = std::env::temp_dir().join(format!("floodgate-bench-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    spawn_with(
        bin,
        &dir,
        "floodgate",
        &format!("flush_interval = \"1s\"\n{statsd_extra}"),
        &format!("[graphite]\naddress = \"127.0.0.1:{carbon}\"\n{limits}"),
    )
}

/// Starts floodgate from `dir/name.toml` — StatsD UDP, console and HTTP on free ports,
/// `statsd_extra` inside `[statsd]`, then `sections` — logging to `dir/name.log`; returns once
/// `/healthz` answers (the process is killed if it never does).
pub(crate) fn spawn_floodgate(
    opts: &BenchOptions,
    dir: &std::path::Path,
    name: &str,
    statsd_extra: &str,
    sections: &str,
) -> Running {
    spawn_with(&opts.floodgate, dir, name, statsd_extra, sections)
}

/// [`spawn_floodgate`] with a given binary.
pub(crate) fn spawn_with(
    bin: &std::path::Path,
    dir: &std::path::Path,
    name: &str,
    statsd_extra: &str,
    sections: &str,
) -> Running {
    let (port, admin, http) = (free_port(), free_port(), free_port());
    let cfg = dir.join(format!("{name}.toml"));
    // Syslog's default listeners off unless the benchmark configures them.
    let syslog = if sections.contains("[syslog]") { "" } else { "\n[syslog]\nudp = []\ntcp = []\n" };
    let tcp = if statsd_extra.contains("tcp =") { "" } else { "tcp = []\n" };
    std::fs::write(
        &cfg,
        format!(
            "[statsd]\nudp = [\"127.0.0.1:{port}\"]\n{tcp}{statsd_extra}\n\
             [admin]\nlisten = \"127.0.0.1:{admin}\"\n[http]\nlisten = \"127.0.0.1:{http}\"\n{sections}{syslog}"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    // It runs in `dir`: a relative path to the binary must not depend on that.
    let bin = std::fs::canonicalize(bin).unwrap_or_else(|_| bin.to_path_buf());
    let child = Command::new(&bin)
        .arg("--config")
        .arg(&cfg)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e} (cargo build --release first)", bin.display()));
    let running = Running { child, port, http: Some(http), admin: Some(admin) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(http, "/healthz").map(|(c, _)| c != 200).unwrap_or(true) {
        assert!(Instant::now() < deadline, "{name} did not become ready (see {})", dir.display());
        std::thread::sleep(Duration::from_millis(20));
    }
    running
}

fn start_etsy(opts: &BenchOptions, carbon: u16) -> Running {
    let (port, mgmt) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("etsy-bench-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("config.js");
    std::fs::write(
        &cfg,
        format!(
            "{{ port: {port}, address: \"127.0.0.1\", mgmt_port: {mgmt}, mgmt_address: \"127.0.0.1\", graphiteHost: \"127.0.0.1\", \
             graphitePort: {carbon}, flushInterval: 1000, automaticConfigReload: false }}\n"
        ),
    )
    .unwrap();
    let etsy = opts
        .etsy
        .canonicalize()
        .unwrap_or_else(|e| panic!("{}: {e} (./scripts/test.sh fetches it)", opts.etsy.display()));
    let child = Command::new("node")
        .arg(etsy.join("stats.js"))
        .arg(&cfg)
        .current_dir(&etsy)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start node (Etsy statsd)");
    let deadline = Instant::now() + Duration::from_secs(30);
    while UdpSocket::bind(("127.0.0.1", port)).is_ok() {
        assert!(Instant::now() < deadline, "Etsy statsd did not bind");
        std::thread::sleep(Duration::from_millis(20));
    }
    Running { child, port, http: None, admin: None }
}

pub(crate) fn terminate(r: &mut Running) {
    let _ = Command::new("kill").arg("-TERM").arg(r.child.id().to_string()).status();
    let _ = r.child.wait();
}

/// Waits until the stand-in's sum reaches `want` or stops changing for `quiet`.
pub(crate) fn settle(carbon: &CarbonStandIn, want: f64, quiet: Duration) {
    let mut last = (carbon.sum(), Instant::now());
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let sum = carbon.sum();
        if sum >= want {
            return;
        }
        if sum != last.0 {
            last = (sum, Instant::now());
        } else if last.1.elapsed() >= quiet {
            return;
        }
    }
}

fn trial(opts: &BenchOptions, target: Target, lines: usize, senders: usize, rate: u64) -> Trial {
    let load = Load::counters(rate, lines, CARDINALITY, senders, "load");
    let label = format!(
        "{} {} line(s)/datagram, rate {}",
        target.name(),
        lines,
        if rate == 0 { "max".into() } else { rate.to_string() }
    );
    match target {
        Target::Sink => {
            let sink = RawSink::start();
            let sent = sender::send(sink.addr, &load, opts.trial, &label);
            let got = sink.finish();
            Trial { sent, received_lines: (got * lines as u64) as f64, cpu_cores: None }
        }
        Target::FloodgateDropping => {
            let carbon = CarbonStandIn::start(PREFIX);
            let running = start_floodgate_with(opts, carbon.port, "", target.limits());
            let http = running.http.unwrap_or(0);
            let dest = SocketAddr::from(([127, 0, 0, 1], running.port));
            // The warm-up spends the source's burst: what follows is over its limit.
            let warm = Load { prefix: "warm".into(), ..load.clone() };
            sender::send(dest, &warm, Duration::from_secs(2), &format!("{label} (warm-up)"));
            let before = drained(http);
            let ticks = cpu_ticks(running.child.id());
            let sent = sender::send(dest, &load, opts.trial, &label);
            let cpu_cores = (cpu_ticks(running.child.id()) - ticks) as f64 / 100.0 / sent.elapsed.as_secs_f64();
            let read = drained(http) - before;
            let dropped = metric_sum(http, "floodgate_dropped_total{", &["statsd_udp", "source_limit"]);
            assert!(dropped > 0.0, "the guard dropped nothing: is the load over the default limit?");
            let received = read / sent.datagrams.max(1) as f64 * sent.counters as f64;
            Trial { sent, received_lines: received, cpu_cores: Some(cpu_cores) }
        }
        Target::Floodgate | Target::FloodgateGuarded | Target::Baseline | Target::Etsy => {
            let carbon = CarbonStandIn::start(PREFIX);
            let mut running = match (target, &opts.baseline) {
                (Target::Etsy, _) => start_etsy(opts, carbon.port),
                (Target::Baseline, Some(bin)) => start_build(bin, carbon.port, "", target.limits()),
                _ => start_floodgate_with(opts, carbon.port, "", target.limits()),
            };
            let dest = SocketAddr::from(([127, 0, 0, 1], running.port));
            // Warm-up at the same rate under other names (not summed): node's JIT drops a few
            // dozen datagrams in its first second, which is not what the trial measures.
            let warm = Load { prefix: "warm".into(), ..load.clone() };
            sender::send(dest, &warm, Duration::from_secs(2), &format!("{label} (warm-up)"));
            let ticks = cpu_ticks(running.child.id());
            let sent = sender::send(dest, &load, opts.trial, &label);
            let cpu_cores = (cpu_ticks(running.child.id()) - ticks) as f64 / 100.0 / sent.elapsed.as_secs_f64();
            if target != Target::Etsy {
                // SIGTERM flushes everything held and delivers it before exit.
                terminate(&mut running);
                settle(&carbon, sent.counters as f64, Duration::from_millis(500));
            } else {
                settle(&carbon, sent.counters as f64, Duration::from_millis(2500));
                terminate(&mut running);
            }
            Trial { sent, received_lines: carbon.sum(), cpu_cores: Some(cpu_cores) }
        }
    }
}

/// Highest rate with loss under 0.1%: at full speed first, then a bisection below it.
fn sustained(opts: &BenchOptions, target: Target, lines: usize, senders: usize) -> (f64, Trial) {
    let max = trial(opts, target, lines, senders, 0);
    println!("    {} at full speed: {:.0} lines/s offered, loss {:.3}%", target.name(), max.rate(), max.loss() * 100.0);
    if max.loss() < MAX_LOSS {
        return (max.rate(), max);
    }
    let (mut lo, mut hi) = (0.0f64, max.rate());
    let mut best = max;
    let mut best_rate = 0.0;
    for _ in 0..6 {
        let mid = (lo + hi) / 2.0;
        let t = trial(opts, target, lines, senders, mid as u64);
        println!("    {} at {:.0} lines/s: loss {:.3}%", target.name(), t.rate(), t.loss() * 100.0);
        if t.loss() < MAX_LOSS {
            lo = mid;
            best = t;
            best_rate = t.rate();
        } else {
            hi = mid;
        }
    }
    (best_rate, best)
}

/// Runs everything asked and prints the tables.
pub fn bench(opts: &BenchOptions) {
    let want = |s: &str| opts.only.iter().any(|o| o == s);
    println!(
        "# floodgate benchmark, {} s trials, {} distinct counters, loss = sent increments vs flushed sums",
        opts.trial.as_secs_f64(),
        CARDINALITY
    );
    let mut rows = Vec::new();
    for &lines in &opts.lines {
        let mut results = Vec::new();
        for target in [Target::Sink, Target::Floodgate, Target::Baseline, Target::Etsy] {
            let key = match target {
                Target::Sink => "sink",
                Target::Etsy => "etsy",
                _ => "floodgate",
            };
            if !want(key) || (target == Target::Baseline && opts.baseline.is_none()) {
                continue;
            }
            let (rate, t) = sustained(opts, target, lines, 1);
            results.push((target, rate, t));
        }
        let find = |t: Target| results.iter().find(|r| r.0 == t).map(|r| r.1);
        for (target, rate, t) in &results {
            let vs_sink = find(Target::Sink).map(|s| format!("{:.0}%", rate / s * 100.0)).unwrap_or_default();
            let vs_etsy =
                find(Target::Etsy).filter(|e| *e > 0.0).map(|e| format!("{:.1}x", rate / e)).unwrap_or_default();
            let (cpu, per_core) = match t.cpu_cores {
                Some(c) if c > 0.0 => (format!("{:.0}%", c * 100.0), format!("{:.2}M", t.rate() / c / 1e6)),
                _ => (String::new(), String::new()),
            };
            rows.push(format!(
                "| {lines} | {} | {:.0} | {:.3}% | {} | {} | {cpu} | {per_core} |",
                target.name(),
                rate,
                t.loss() * 100.0,
                vs_sink,
                vs_etsy
            ));
        }
    }
    if !rows.is_empty() {
        println!(
            "\n| lines/datagram | target | sustained lines/s (< 0.1% loss) | loss at that rate | vs raw sink | vs Etsy | target CPU at that rate (of one core) | lines/s per core |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        for r in &rows {
            println!("{r}");
        }
    }
    if want("headroom") {
        headroom(opts);
    }
    if want("guard") {
        guard(opts);
    }
    if want("sources") {
        crate::spoof::sources_memory(opts);
    }
    if want("aggregator") {
        crate::forward::aggregator_merge(opts);
    }
    if want("forward") {
        crate::forward::end_to_end(opts);
    }
    if want("proxy") {
        crate::syslog::proxy(opts);
    }
    if want("nats") {
        crate::fleet::nats(opts);
    }
    if want("shared") {
        crate::fleet::shared(opts);
    }
    if want("paced") {
        crate::fleet::paced(opts);
    }
    if want("syslog") {
        crate::syslog::syslog(opts);
    }
    if want("syslogudp") {
        crate::syslog::syslog_udp(opts);
    }
    if want("conntrack") {
        crate::conntrack::conntrack(opts);
    }
    if want("memory") {
        memory(opts);
    }
    if want("cpu") {
        cpu(opts);
    }
    if want("hotpath") {
        crate::hostile::hot_path(opts);
    }
    if want("spread") {
        crate::spread::spread(opts);
    }
    if want("attack") {
        crate::hostile::attack_cost(opts);
    }
    if want("uds") {
        crate::unix::unix_vs_udp(opts);
    }
    if want("prometheus") {
        crate::prometheus::prometheus(opts);
    }
    if want("scrape") {
        crate::prometheus::scrape_merge(opts);
    }
    if want("kernel") {
        crate::kernel::kernel_guard(opts);
    }
    if want("cthealth") {
        crate::conntrack::health(opts);
    }
    if want("fanout") {
        crate::carbon::fanout(opts);
    }
    if want("otlp") {
        crate::otlp::otlp_vs_remote_write(opts);
    }
    if want("cardinality") {
        crate::cardinality::cardinality(opts);
    }
}

pub(crate) fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let code = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

pub(crate) fn proc_status(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

pub(crate) fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// CPU time of every thread of `pid` so far, in nanoseconds (`schedstat`: finer than the
/// 10 ms ticks of `/proc/PID/stat`, which would be ±2 % of a trial).
pub(crate) fn cpu_ns(pid: u32) -> u64 {
    threads_cpu_ns(pid, "")
}

/// [`cpu_ns`] of the threads of `pid` whose name starts with `name` (`statsd_udp`: the StatsD
/// receive threads).
pub(crate) fn threads_cpu_ns(pid: u32, name: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .filter_map(|t| t.ok())
        .filter(|t| {
            name.is_empty() || std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with(name))
        })
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Sum of the self-metric samples whose line starts with `name` and contains every `parts`.
pub(crate) fn metric_sum(port: u16, name: &str, parts: &[&str]) -> f64 {
    let body = http_get(port, "/metrics?only=floodgate").map(|(_, b)| b).unwrap_or_default();
    body.lines()
        .filter(|l| l.starts_with(name) && parts.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub(crate) fn metric(port: u16, name: &str) -> f64 {
    metric_sum(port, &format!("{name} "), &[])
}

/// 20 lines per datagram from two sender threads: what floodgate sustains once one sender
/// thread is no longer the limit (the two senders and floodgate share the two cores).
fn headroom(opts: &BenchOptions) {
    println!("\n## 20 lines/datagram, two sender threads (sources 127.0.0.2 and .3)");
    println!("| target | sustained lines/s (< 0.1% loss) | loss at that rate | target CPU (of one core) |");
    println!("|---|---|---|---|");
    for target in [Target::Sink, Target::Floodgate] {
        let (rate, t) = sustained(opts, target, 20, 2);
        let cpu = t.cpu_cores.map(|c| format!("{:.0}%", c * 100.0)).unwrap_or_default();
        println!("| {} | {rate:.0} | {:.3}% | {cpu} |", target.name(), t.loss() * 100.0);
    }
    let capacity = parse_capacity(&Load::counters(0, 20, CARDINALITY, 1, "load"), Duration::from_secs(3));
    println!("\nParse + aggregate in memory, one core, 20-line datagrams: {capacity:.0} lines/s");
}

/// The guard's cost, 1 line per datagram (its worst case: one check per line), same run:
/// the raw sink, floodgate with the guard off, on but not limiting, and dropping a source
/// far over its limit.
fn guard(opts: &BenchOptions) {
    // Off and on alternate, best of three each: both are sender-bound here, and the sender's
    // rate varies from trial to trial by more than the guard costs.
    let mut results: Vec<(Target, f64, Trial)> = Vec::new();
    for target in [
        Target::Sink,
        Target::Floodgate,
        Target::FloodgateGuarded,
        Target::FloodgateGuarded,
        Target::Floodgate,
        Target::Floodgate,
        Target::FloodgateGuarded,
        Target::FloodgateDropping,
    ] {
        let (rate, t) = sustained(opts, target, 1, 1);
        match results.iter_mut().find(|r| r.0 == target) {
            Some(best) if best.1 >= rate => {}
            Some(best) => *best = (target, rate, t),
            None => results.push((target, rate, t)),
        }
    }
    println!("\n## The guard, 1 line/datagram, one source (127.0.0.2); guard off and on: best of three, alternating");
    println!("| target | sustained datagrams/s (< 0.1% unread or lost) | loss at that rate | vs raw sink | vs guard off | target CPU (of one core) | datagrams/s per core |");
    println!("|---|---|---|---|---|---|---|");
    let of = |t: Target| results.iter().find(|r| r.0 == t).map(|r| r.1).unwrap_or(0.0);
    for (target, rate, t) in &results {
        let cpu = t.cpu_cores.map(|c| format!("{:.0}%", c * 100.0)).unwrap_or_default();
        let per_core =
            t.cpu_cores.filter(|c| *c > 0.0).map(|c| format!("{:.2}M", t.rate() / c / 1e6)).unwrap_or_default();
        let vs_off = if *target == Target::Sink {
            String::new()
        } else {
            format!("{:.0}%", rate / of(Target::Floodgate) * 100.0)
        };
        println!(
            "| {} | {rate:.0} | {:.3}% | {:.0}% | {vs_off} | {cpu} | {per_core} |",
            target.name(),
            t.loss() * 100.0,
            rate / of(Target::Sink) * 100.0
        );
    }
    let (checks, parses) = guard_capacity(Duration::from_secs(3));
    println!(
        "\nIn memory, one core: {checks:.0} guard checks/s ({:.0} ns each, 1000 sources, limits not reached) vs {parses:.0} \
         one-line datagrams parsed and aggregated/s ({:.0} ns each)",
        1e9 / checks,
        1e9 / parses
    );
}

/// What one core does in memory: guard checks (1000 sources round-robin, limits far above
/// the load) and, for scale, parsing one-line datagrams.
fn guard_capacity(duration: Duration) -> (f64, f64) {
    let limits = floodgate::config::LimitsConfig {
        udp_per_source: 1_000_000_000,
        udp_per_port: 1_000_000_000,
        ..Default::default()
    };
    let guard = floodgate::guard::Guard::new(&limits, Instant::now());
    let listener = guard.listener(
        floodgate::listener::Kind::new(floodgate::listener::Protocol::Statsd, floodgate::listener::Transport::Udp),
        SocketAddr::from(([127, 0, 0, 1], 8125)),
        0,
    );
    let sources: Vec<std::net::IpAddr> =
        (0..1000u32).map(|i| std::net::IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i))).collect();
    let data = b"load.k1:1|c";
    let start = Instant::now();
    let mut checks = 0u64;
    while start.elapsed() < duration {
        let policy = guard.policy();
        let now = guard.now_ns();
        for ip in &sources {
            let ok =
                listener.admit_datagram(&policy, *ip, data.len(), || floodgate::guard::count_lines(data), now).is_ok();
            checks += ok as u64;
        }
    }
    let checks = checks as f64 / start.elapsed().as_secs_f64();
    (checks, parse_capacity(&Load::counters(0, 1, CARDINALITY, 1, "load"), duration))
}

/// 1M distinct counters: peak RSS, flush duration, and no loss of a steady stream meanwhile.
fn memory(opts: &BenchOptions) {
    let carbon = CarbonStandIn::start(PREFIX);
    // One sender makes all 1M series: its series budget (250,000 by default) is off too.
    let limits = format!("{GUARD_OFF}series_per_source = 0\nnew_series_per_source = 0\n");
    let mut fg = start_floodgate_with(opts, carbon.port, "max_series = 2_000_000", &limits);
    let dest = SocketAddr::from(([127, 0, 0, 1], fg.port));
    let http = fg.http.unwrap_or(0);
    let series = Load::counters(500_000, 20, 1_000_000, 1, "load.series");
    let steady = Load::counters(50_000, 20, 100, 1, "load.steady");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let watcher = std::thread::spawn(move || {
        let mut worst: f64 = 0.0;
        let mut flushes = 0.0;
        while !s2.load(std::sync::atomic::Ordering::Relaxed) {
            worst = worst.max(metric(http, "floodgate_flush_duration_seconds"));
            flushes = metric(http, "floodgate_flushes_total");
            std::thread::sleep(Duration::from_millis(250));
        }
        (worst, flushes)
    });
    let steady_thread =
        std::thread::spawn(move || sender::send(dest, &steady, Duration::from_secs(8), "steady stream"));
    let a = sender::send(dest, &series, Duration::from_secs(2), "1M series");
    let b = steady_thread.join().unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let rss_kb = proc_status(fg.child.id(), "VmHWM:");
    let drops = metric_sum(http, "floodgate_dropped_total{", &["statsd_udp", "kernel_receive_buffer"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (worst_flush, flushes) = watcher.join().unwrap();
    let held = metric(http, "floodgate_statsd_series");
    // One full Prometheus scrape of all 1M series, as a Prometheus server would do.
    let scrape_started = Instant::now();
    let scraped = http_get(http, "/metrics").map(|(_, b)| b.len()).unwrap_or(0);
    let scrape = scrape_started.elapsed();
    let rss_after_scrape = proc_status(fg.child.id(), "VmHWM:");
    terminate(&mut fg);
    let want = (a.counters + b.counters) as f64;
    settle(&carbon, want, Duration::from_millis(1000));
    let got = carbon.sum();
    println!("\n## 1M distinct counter series (floodgate)");
    println!(
        "| series held | peak RSS | slowest flush (merge+compute+render) | flushes | increments sent | flushed | loss | kernel drops | full /metrics scrape | peak RSS with the scrape |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {held:.0} | {:.0} MB | {:.3} s | {flushes:.0} | {want:.0} | {got:.0} | {:.4}% | {drops:.0} | {:.2} s, {:.0} MB | {:.0} MB |",
        rss_kb as f64 / 1024.0,
        worst_flush,
        (1.0 - got / want) * 100.0,
        scrape.as_secs_f64(),
        scraped as f64 / 1e6,
        rss_after_scrape as f64 / 1024.0
    );
}

/// CPU use idle and at 10k metrics/s, over 10 s each.
fn cpu(opts: &BenchOptions) {
    let carbon = CarbonStandIn::start(PREFIX);
    let fg = start_floodgate(opts, carbon.port, "");
    let pid = fg.child.id();
    std::thread::sleep(Duration::from_secs(1));
    let window = Duration::from_secs(10);
    let t0 = cpu_ticks(pid);
    std::thread::sleep(window);
    let idle = (cpu_ticks(pid) - t0) as f64 / 100.0 / window.as_secs_f64() * 100.0;
    let dest = SocketAddr::from(([127, 0, 0, 1], fg.port));
    let t1 = cpu_ticks(pid);
    let load = Load::counters(10_000, 1, CARDINALITY, 1, "load");
    sender::send(dest, &load, window, "10k metrics/s");
    let busy = (cpu_ticks(pid) - t1) as f64 / 100.0 / window.as_secs_f64() * 100.0;
    println!("\n## CPU (floodgate, 1 s flush interval, % of one core over 10 s)");
    println!("| idle | 10k metrics/s (1 line/datagram) |");
    println!("|---|---|");
    println!("| {idle:.2}% | {busy:.2}% |");
}

/// Where a line's time goes in memory, stage by stage: nanoseconds a line to split the
/// datagrams into lines (`memchr`), to parse them (into a sink that keeps nothing), to parse
/// them and hash each key (foldhash, as the shard's table does), and to parse and aggregate
/// them (the shard: [`parse_capacity`]). The floor under the receive thread's own work.
pub fn parse_stages(load: &Load, duration: Duration) -> Vec<(&'static str, f64)> {
    use floodgate_statsd::{Metric, MetricSink, Parser, Shard};
    use std::hash::BuildHasher;
    /// Keeps nothing but a sum the compiler cannot drop.
    #[derive(Default)]
    struct Discard(u64, Option<foldhash::fast::RandomState>);
    impl MetricSink for Discard {
        fn metric(&mut self, m: &Metric<'_>) {
            self.counter(m.key, m.value);
        }
        fn bad_line(&mut self, _: &[u8]) {}
        #[inline]
        fn counter(&mut self, key: &[u8], value: f64) {
            let h = match &self.1 {
                Some(state) => state.hash_one(key),
                None => key.len() as u64,
            };
            self.0 = self.0.wrapping_add(h ^ value.to_bits());
        }
    }
    let pool = sender::pool(load);
    let per_line = |f: &mut dyn FnMut(&[u8]) -> u64| {
        let start = Instant::now();
        let mut lines = 0u64;
        while start.elapsed() < duration {
            for d in &pool {
                lines += f(&d.bytes);
            }
        }
        start.elapsed().as_nanos() as f64 / lines.max(1) as f64
    };
    let split = per_line(&mut |d| memchr::memchr_iter(b'\n', d).count() as u64 + 1);
    let mut parser = Parser::new(true);
    let mut discard = Discard::default();
    let parse = per_line(&mut |d| parser.parse_packet(d, &mut discard).lines);
    let mut hashed = Discard(0, Some(foldhash::fast::RandomState::default()));
    let hash = per_line(&mut |d| parser.parse_packet(d, &mut hashed).lines);
    std::hint::black_box((discard.0, hashed.0));
    let mut shard = Shard::new(10_000_000);
    let aggregate = per_line(&mut |d| parser.parse_packet(d, &mut shard).lines);
    vec![
        ("split into lines", split),
        ("parse", parse),
        ("parse and hash the key", hash),
        ("parse and aggregate (the shard)", aggregate),
    ]
}

/// Lines per second one thread parses and aggregates from memory (the receive thread's work
/// minus the syscall).
pub fn parse_capacity(load: &Load, duration: Duration) -> f64 {
    use floodgate_statsd::{Parser, Shard};
    let pool = sender::pool(load);
    let mut parser = Parser::new(true);
    let mut shard = Shard::new(10_000_000);
    let start = Instant::now();
    let mut lines = 0u64;
    while start.elapsed() < duration {
        for d in &pool {
            lines += parser.parse_packet(&d.bytes, &mut shard).lines;
        }
    }
    lines as f64 / start.elapsed().as_secs_f64()
}
