//! Connection tracking under load, in a network namespace made for the run (an nftables rule
//! turns tracking on there): 100,000 entries put into the namespace's table with
//! `conntrack -R` (the harness writes them, floodgate only reads), then floodgate's initial
//! dump time against `conntrack -L > /dev/null`, its `/metrics` scrape time and RSS; then
//! 5,000 new entries per second for 30 s and whether floodgate's count equals the kernel's
//! within a second after. Needs root, `ip`, `nft`, `conntrack`, `curl`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::targets::{proc_status, BenchOptions};

const ENTRIES: usize = 100_000;
const RATE: usize = 5_000;
const SECONDS: usize = 30;

fn in_ns(ns: &str, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program]);
    c
}

fn run(mut c: Command) -> String {
    let out = c.output().expect("run a tool (ip, nft, conntrack, curl)");
    assert!(out.status.success(), "{c:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Distinct remote endpoints the entries go to: twice `max_remote_hosts`' default, so the
/// scrape carries the most labels floodgate allows (10,000 hosts + `other`).
const REMOTES: usize = 20_000;

/// `count` insert commands for `conntrack -R`, entries `first..first+count`, all distinct.
fn inserts(first: usize, count: usize) -> String {
    let mut out = String::with_capacity(count * 120);
    for i in first..first + count {
        let (a, b, port) = (i / 60_000 % 250, i / 250 % 240, 1024 + i % 60_000);
        let d = i % REMOTES;
        out.push_str(&format!(
            "-I -p tcp -s 10.1.{a}.{} -d 10.2.{}.{} --sport {port} --dport 443 --state ESTABLISHED -t 3600 -u SEEN_REPLY,ASSURED\n",
            b + 1,
            d / 250,
            d % 250 + 1,
        ));
    }
    out
}

fn load(ns: &str, dir: &std::path::Path, first: usize, count: usize) {
    let file = dir.join(format!("load-{first}.txt"));
    std::fs::write(&file, inserts(first, count)).unwrap();
    let mut c = in_ns(ns, "conntrack");
    c.arg("-R").arg(&file).stdout(Stdio::null());
    run(c);
}

fn kernel_count(ns: &str) -> u64 {
    let mut c = in_ns(ns, "conntrack");
    c.arg("-C");
    run(c).trim().parse().unwrap_or(0)
}

/// `/metrics` from inside the namespace: body and curl's total time.
fn scrape(ns: &str) -> (String, f64) {
    let mut c = in_ns(ns, "curl");
    c.args(["-sf", "-w", "\n%{time_total}", "http://127.0.0.1:9318/metrics"]);
    let out = run(c);
    let (body, time) = out.rsplit_once('\n').unwrap_or((&out, "0"));
    (body.to_string(), time.trim().parse().unwrap_or(0.0))
}

fn sample(body: &str, prefix: &str) -> f64 {
    body.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

/// Prints the tables for BENCHMARKS.md.
pub fn conntrack(opts: &BenchOptions) {
    let ns = format!("fg-bench-ct-{}", std::process::id());
    let ok = Command::new("ip").args(["netns", "add", &ns]).status().map(|s| s.success()).unwrap_or(false);
    assert!(ok, "ip netns add failed (run as root)");
    let dir = std::env::temp_dir().join(&ns);
    std::fs::create_dir_all(&dir).unwrap();
    let result = std::panic::catch_unwind(|| measure(opts, &ns, &dir));
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

fn measure(opts: &BenchOptions, ns: &str, dir: &std::path::Path) {
    run({
        let mut c = Command::new("ip");
        c.args(["-n", ns, "link", "set", "lo", "up"]);
        c
    });
    for rule in [
        &["add", "table", "inet", "fgbench"][..],
        &["add", "chain", "inet", "fgbench", "out", "{ type filter hook output priority 0; }"],
        &["add", "rule", "inet", "fgbench", "out", "ct", "state", "new", "counter"],
    ] {
        let mut c = in_ns(ns, "nft");
        c.args(rule);
        run(c);
    }
    load(ns, dir, 0, ENTRIES);
    let in_kernel = kernel_count(ns);
    // conntrack -L > /dev/null, best of three.
    let list = (0..3)
        .map(|_| {
            let started = Instant::now();
            let mut c = in_ns(ns, "conntrack");
            c.arg("-L").stdout(Stdio::null()).stderr(Stdio::null());
            run(c);
            started.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min);

    let cfg = dir.join("floodgate.toml");
    std::fs::write(
        &cfg,
        "[statsd]\nudp = []\ntcp = []\n[syslog]\nudp = []\ntcp = []\n[admin]\n[conntrack]\nenabled = true\n",
    )
    .unwrap();
    let mut fg = in_ns(ns, opts.floodgate.to_str().unwrap())
        .arg("--config")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("floodgate.log")).unwrap())
        .spawn()
        .expect("start floodgate in the namespace");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut body;
    loop {
        let mut c = in_ns(ns, "curl");
        c.args(["-sf", "http://127.0.0.1:9318/metrics"]);
        body = c.output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        if sample(&body, "conntrack_entries{") >= in_kernel as f64 {
            break;
        }
        assert!(Instant::now() < deadline, "floodgate never read the table");
        std::thread::sleep(Duration::from_millis(100));
    }
    let dump = sample(&body, "conntrack_dump_duration_seconds ");
    let scrapes: Vec<f64> = (0..5).map(|_| scrape(ns).1).collect();
    let (best, worst) = (scrapes.iter().copied().fold(f64::MAX, f64::min), scrapes.iter().copied().fold(0.0, f64::max));
    let pid = fg.id();
    let rss = proc_status(pid, "VmRSS:");
    let peak = proc_status(pid, "VmHWM:");
    println!("\n## Connection tracking: {ENTRIES} entries in a namespace's table");
    println!("| entries (kernel) | floodgate's initial dump | conntrack -L > /dev/null (best of 3) | dump vs conntrack -L | /metrics scrape (best / worst of 5) | host labels | scrape size | RSS after | peak RSS |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let series = body.lines().filter(|l| l.starts_with("conntrack_open_connections{")).count();
    let scrape_bytes = body.len();
    println!(
        "| {in_kernel} | {:.0} ms | {:.0} ms | {:.2}x faster | {:.0} / {:.0} ms | {series} | {:.1} MB | {:.1} MB | {:.1} MB |",
        dump * 1e3,
        list * 1e3,
        list / dump.max(1e-6),
        best * 1e3,
        worst * 1e3,
        scrape_bytes as f64 / 1e6,
        rss as f64 / 1024.0,
        peak as f64 / 1024.0
    );

    // 5,000 new entries a second for 30 s, a second's worth at a time.
    let started = Instant::now();
    for s in 0..SECONDS {
        load(ns, dir, ENTRIES + s * RATE, RATE);
        let due = started + Duration::from_secs(s as u64 + 1);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        eprint!("\r  conntrack: {} s, {} new entries   ", s + 1, (s + 1) * RATE);
    }
    eprint!("\r{:60}\r", "");
    let offered = SECONDS * RATE;
    let burst_seconds = started.elapsed().as_secs_f64();
    let after = Instant::now();
    let kernel = kernel_count(ns);
    let mut caught_up = None;
    let mut last = 0.0;
    while after.elapsed() < Duration::from_secs(10) {
        let (b, _) = scrape(ns);
        last = sample(&b, "conntrack_entries{");
        if last == kernel as f64 {
            caught_up = Some(after.elapsed());
            body = b;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let resyncs = sample(&body, "conntrack_resyncs_total ");
    let new_events = sample(&body, "conntrack_events_total{type=\"new\"}");
    let _ = fg.kill();
    let _ = fg.wait();
    println!("\n| new entries offered | over | kernel entries after | floodgate's count | equal after | resyncs | new events applied |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {offered} | {burst_seconds:.1} s | {kernel} | {last:.0} | {} | {resyncs:.0} | {new_events:.0} |",
        caught_up.map_or("not within 10 s".to_string(), |d| format!("{:.0} ms", d.as_secs_f64() * 1e3))
    );
}

/// A namespace made for the run, with tracking switched on by an nftables rule; deleted on drop.
struct BenchNamespace(String);

impl BenchNamespace {
    fn create(name: String) -> BenchNamespace {
        let ok = Command::new("ip").args(["netns", "add", &name]).status().map(|s| s.success()).unwrap_or(false);
        assert!(ok, "ip netns add failed (run as root)");
        let ns = BenchNamespace(name);
        run({
            let mut c = Command::new("ip");
            c.args(["-n", &ns.0, "link", "set", "lo", "up"]);
            c
        });
        for rule in [
            &["add", "table", "inet", "fgbench"][..],
            &["add", "chain", "inet", "fgbench", "out", "{ type filter hook output priority 0; }"],
            &["add", "rule", "inet", "fgbench", "out", "ct", "state", "new", "counter"],
        ] {
            let mut c = in_ns(&ns.0, "nft");
            c.args(rule);
            run(c);
        }
        ns
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
}

impl Drop for BenchNamespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Mean time of floodgate's health read (`sources::conntrack::read_health`) in `ns`, over
/// `reads`, and the entry count it read.
fn time_health_read(ns: &BenchNamespace, reads: u32) -> (Duration, u32) {
    let file = std::fs::File::open(ns.path()).unwrap();
    std::thread::spawn(move || {
        floodgate::sys::enter_network_namespace(&file).expect("setns");
        let socket = floodgate::sys::NetlinkSocket::netfilter(&[], 4 << 20, Duration::from_secs(5)).expect("ctnetlink");
        let (mut seq, mut buf) = (1u32, vec![0u8; 1 << 20]);
        let mut entries = 0;
        let started = Instant::now();
        for _ in 0..reads {
            entries = floodgate::sources::conntrack::read_health(&socket, &mut seq, &mut buf).expect("health").entries;
        }
        (started.elapsed() / reads, entries)
    })
    .join()
    .unwrap()
}

/// The table's health read with an empty table and with 100k entries (it must not grow: two
/// statistics requests, never a dump), against `conntrack -L`; then what each namespace of
/// `netns` costs: floodgate with 10 namespaces of 1,000 entries each vs with none.
pub fn health(opts: &BenchOptions) {
    let pid = std::process::id();
    let dir = std::env::temp_dir().join(format!("fg-bench-cth-{pid}"));
    std::fs::create_dir_all(&dir).unwrap();
    let ns = BenchNamespace::create(format!("fg-bench-cth-{pid}"));
    let (empty, at_empty) = time_health_read(&ns, 2000);
    load(&ns.0, &dir, 0, ENTRIES);
    let (full, at_full) = time_health_read(&ns, 2000);
    let list = (0..3)
        .map(|_| {
            let started = Instant::now();
            let mut c = in_ns(&ns.0, "conntrack");
            c.arg("-L").stdout(Stdio::null()).stderr(Stdio::null());
            run(c);
            started.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min);
    drop(ns);
    println!("\n## Conntrack table health read (two ctnetlink statistics requests), mean of 2,000");
    println!("| entries | health read | conntrack -L > /dev/null (best of 3) |");
    println!("|---|---|---|");
    println!("| {at_empty} | {:.1} µs | — |", empty.as_secs_f64() * 1e6);
    println!("| {at_full} | {:.1} µs | {:.0} ms |", full.as_secs_f64() * 1e6, list * 1e3);

    const NAMESPACES: usize = 10;
    const EACH: usize = 1_000;
    let namespaces: Vec<BenchNamespace> =
        (0..NAMESPACES).map(|i| BenchNamespace::create(format!("fg-bench-ctn{i}-{pid}"))).collect();
    for (i, ns) in namespaces.iter().enumerate() {
        load(&ns.0, &dir, i * EACH, EACH);
    }
    println!("\n## Conntrack: each namespace of `netns` ({NAMESPACES} namespaces of {EACH} entries, floodgate idle over 10 s)");
    println!("| namespaces read | threads | RSS | CPU (of one core) | /metrics scrape |");
    println!("|---|---|---|---|---|");
    for with in [false, true] {
        let list: Vec<String> =
            if with { namespaces.iter().map(|n| format!("\"{}\"", n.path())).collect() } else { vec![] };
        let sections = format!("[conntrack]\nenabled = true\nnetns = [{}]\n", list.join(", "));
        let fg = crate::targets::spawn_floodgate(opts, &dir, if with { "netns" } else { "own" }, "", &sections);
        let http = fg.http.unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(60);
        while crate::targets::metric_sum(http, "conntrack_table_entries{", &["netns="]) < (list.len() * EACH) as f64 {
            assert!(Instant::now() < deadline, "floodgate never read the namespaces");
            std::thread::sleep(Duration::from_millis(100));
        }
        let pid = fg.child.id();
        let ticks = crate::targets::cpu_ticks(pid);
        std::thread::sleep(Duration::from_secs(10));
        let cpu = (crate::targets::cpu_ticks(pid) - ticks) as f64 / 100.0 / 10.0 * 100.0;
        let started = Instant::now();
        let _ = crate::targets::http_get(http, "/metrics");
        let scrape = started.elapsed();
        println!(
            "| {} | {} | {:.1} MB | {cpu:.2} % | {:.1} ms |",
            list.len(),
            proc_status(pid, "Threads:"),
            proc_status(pid, "VmRSS:") as f64 / 1024.0,
            scrape.as_secs_f64() * 1e3
        );
    }
    drop(namespaces);
    let _ = std::fs::remove_dir_all(&dir);
}
