//! Faults, not only bytes (issue 27): a small fleet runs for over five minutes while faults
//! follow one another, and nothing accepted is lost or doubled, and nothing grows.
//!
//! Three agents, each in a network namespace of its own (joined to the host by veth), each
//! fed StatsD counters from inside its namespace; one of them also takes syslog over TCP
//! from `logger` and from rsyslog, writing it to a small tmpfs. They ship to an aggregator on
//! the host, which writes to a cluster of three real carbon-caches (127.0.0.1–3). Every
//! feature is on as shipped (the guard and its kernel layer, connection tracking). The faults,
//! one after another:
//! 1. a Carbon node down for 30 s, then back;
//! 2. the aggregator SIGKILLed, then started again;
//! 3. the syslog output's disk full for 30 s;
//! 4. one agent cut off (its link down) for 30 s;
//! 5. a SIGHUP storm: twenty to every process over ten seconds.
//!
//! At the end every counter line the agents read is exactly in Whisper, every syslog message
//! floodgate read is in the output once, and each process's descriptors, threads and memory
//! (sampled every second all along) are flat.

use std::io::{BufRead, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;

const WAIT: Duration = Duration::from_secs(180);
const FLUSH: &str = "flush_interval = \"2s\"";
/// How often the test polls a process's HTTP (within the guard's 10 connections a second).
const POLL: Duration = Duration::from_millis(250);

fn wait_for_every<T>(what: &str, probe: impl FnMut() -> Option<T>) -> T {
    let mut probe = probe;
    wait_until_every(what, WAIT, POLL, || probe().ok_or_else(String::new))
}

/// A floodgate started by hand from `config`, in a namespace or not, that can be killed and
/// started again.
struct Process {
    name: String,
    command: Box<dyn Fn() -> Command>,
    http: (String, u16),
    log: std::path::PathBuf,
    running: Option<Running>,
}

impl Process {
    fn start(name: &str, dir: &std::path::Path, netns: Option<&str>, http: (String, u16), config: String) -> Process {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config).unwrap();
        let (netns, workdir) = (netns.map(str::to_string), dir.to_path_buf());
        let command = Box::new(move || {
            let mut c = match &netns {
                Some(ns) => {
                    let mut c = Command::new(require_tool("ip"));
                    c.args(["netns", "exec", ns]).arg(env!("CARGO_BIN_EXE_floodgate"));
                    c
                }
                None => Command::new(env!("CARGO_BIN_EXE_floodgate")),
            };
            c.arg("--config").arg(&path).current_dir(&workdir);
            c
        });
        let mut p = Process { name: name.into(), command, http, log: dir.join(format!("{name}.log")), running: None };
        p.respawn();
        p
    }

    fn respawn(&mut self) {
        self.running = Some(Running::ready((self.command)(), (self.http.0.as_str(), self.http.1), &self.log));
    }

    /// The floodgate process itself (`ip netns exec` execs it: same pid).
    fn pid(&self) -> u32 {
        self.running.as_ref().unwrap().child.id()
    }

    fn kill(&mut self) {
        if let Some(mut r) = self.running.take() {
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
    }

    fn signal(&self, name: &str) {
        signal(&self.running.as_ref().unwrap().child, name);
    }

    /// Its self-metrics. The test reaches an agent from outside its namespace, a remote source
    /// to the guard (10 new connections a second): a refused connection is tried again.
    fn metrics(&self) -> String {
        for _ in 0..20 {
            match http_get_at((self.http.0.as_str(), self.http.1), "/metrics?only=floodgate") {
                Ok((200, body)) => return body,
                _ => std::thread::sleep(Duration::from_millis(150)),
            }
        }
        String::new()
    }

    fn sample(&self, name: &str, labels: &[&str]) -> f64 {
        metric(&self.metrics(), name, labels).unwrap_or(f64::NAN)
    }
}

/// A Python StatsD sender inside namespace `ns`: ten `NAME:1|c` lines a datagram, a hundred
/// datagrams a second, to the agent's loopback port, until its stdin closes; then prints how
/// many lines it sent.
fn counter_sender(ns: &str, name: &str) -> Child {
    let script = "import select, socket, sys, time\n\
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
        data = ((sys.argv[1] + ':1|c\\n') * 10).encode()\n\
        n = 0\n\
        while not select.select([sys.stdin], [], [], 0.01)[0]:\n\
        \x20   s.sendto(data, ('127.0.0.1', 8125))\n\
        \x20   n += 10\n\
        print(n, flush=True)\n";
    Command::new(require_tool("ip"))
        .args(["netns", "exec", ns])
        .arg(require_tool("python3"))
        .args(["-c", script, name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

fn stop_sender(mut child: Child) -> u64 {
    drop(child.stdin.take());
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let _ = child.wait();
    line.trim().parse().unwrap()
}

/// Each process's usage over time, by name.
type Samples = std::collections::HashMap<String, Vec<(Instant, Usage)>>;

/// Every second, each process's open descriptors, threads and resident memory.
#[derive(Default, Clone, Copy, Debug)]
struct Usage {
    fds: usize,
    threads: usize,
    rss_kb: u64,
}

fn usage(pid: u32) -> Option<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status.lines().find_map(|l| l.strip_prefix(name))?.split_whitespace().next()?.parse().ok()
    };
    Some(Usage {
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count(),
        threads: field("Threads:")? as usize,
        rss_kb: field("VmRSS:")?,
    })
}

/// Flat: the last minute's highest use against the first minute's (after start-up), with room
/// for what a steady process varies by.
fn assert_flat(name: &str, samples: &[(Instant, Usage)], since: Instant) {
    let samples: Vec<&Usage> = samples.iter().filter(|(t, _)| *t >= since).map(|(_, u)| u).collect();
    assert!(samples.len() >= 100, "{name}: {} samples", samples.len());
    let (first, last) = (&samples[..60], &samples[samples.len() - 60..]);
    let max = |s: &[&Usage], f: fn(&Usage) -> u64| s.iter().map(|u| f(u)).max().unwrap_or(0);
    let (fds, threads, rss) = (|u: &Usage| u.fds as u64, |u: &Usage| u.threads as u64, |u: &Usage| u.rss_kb);
    eprintln!(
        "{name}: first minute / last minute highest: descriptors {} / {}, threads {} / {}, RSS {} / {} kB",
        max(first, fds),
        max(last, fds),
        max(first, threads),
        max(last, threads),
        max(first, rss),
        max(last, rss)
    );
    assert!(max(last, fds) <= max(first, fds) + 16, "{name}: descriptors {} then {}", max(first, fds), max(last, fds));
    assert!(
        max(last, threads) <= max(first, threads) + 4,
        "{name}: threads {} then {}",
        max(first, threads),
        max(last, threads)
    );
    assert!(
        max(last, rss) <= max(first, rss) * 3 / 2 + 32 * 1024,
        "{name}: RSS {} kB then {} kB",
        max(first, rss),
        max(last, rss)
    );
}

/// A child killed when dropped, so a failed run leaves no rsyslogd behind.
struct KilledOnDrop(Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Takes a Carbon node down without taking anything it accepted with it. carbon-cache keeps
/// points in memory until its writer reaches them, and a flush is delivered once written
/// (plaintext Carbon acknowledges nothing), so a node killed at a random moment loses what
/// it held: Carbon's loss, which neither floodgate nor the test could see (a run lost one
/// flush of the series that node owns). So: the aggregator is paused while no flush to the
/// node is open (no connection but closed ones: the node read all of each), the node's
/// cache is seen empty for its metrics, then it is killed, and the aggregator goes on, now
/// facing a dead node.
fn take_down(aggregator: &Process, cache: &mut Carbon) {
    loop {
        aggregator.signal("STOP");
        wait_for_every("the aggregator paused", || all_threads_stopped(aggregator.pid()).then_some(()));
        if cache.open_connections().is_empty() {
            break;
        }
        // A flush is on its way: let it finish.
        aggregator.signal("CONT");
        std::thread::sleep(Duration::from_millis(50));
    }
    let metrics = cache.metrics();
    // Empty twice, one writer pass (it sleeps a second between passes) apart: a point taken
    // from the cache just before the first look is in Whisper by the second.
    wait_until("the node's cache written to Whisper", WAIT, || {
        let held = cache.cached_points(&metrics);
        std::thread::sleep(Duration::from_millis(1100));
        match (held, cache.cached_points(&metrics)) {
            (0, 0) => Ok(()),
            (a, b) => Err(format!("{a} then {b} points held")),
        }
    });
    cache.stop();
    aggregator.signal("CONT");
}

#[test]
fn a_fleet_under_faults_loses_and_doubles_nothing_and_grows_nothing() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let caches: Vec<Carbon> = ["127.0.0.1", "127.0.0.2", "127.0.0.3"].iter().map(|ip| Carbon::start_on(ip)).collect();
    let mut caches = caches;
    let destinations: Vec<String> =
        caches.iter().enumerate().map(|(i, c)| format!("\"{}:{}:c{i}\"", c.ip, c.line_port)).collect();
    let (agg_port, agg_http) = (free_port(), free_port());
    // The aggregator: agents reach it over their veths, so it listens on every address, with
    // the allow-list an exposed port wants.
    let mut aggregator = Process::start(
        "aggregator",
        dir.path(),
        None,
        ("127.0.0.1".into(), agg_http),
        config_text(
            Ports { http: agg_http, ..Ports::free() },
            FLUSH,
            &format!(
                "[graphite]\ndestinations = [{}]\n\
                 [aggregator]\nlisten = \"0.0.0.0:{agg_port}\"\nstate_dir = \"{}\"\n\
                 [limits]\nallow = [\"10.0.0.0/8\", \"127.0.0.0/8\"]\n",
                destinations.join(", "),
                dir.path().join("aggregator-state").display()
            ),
        ),
    );
    // The syslog output's disk.
    let disk = dir.path().join("disk");
    std::fs::create_dir_all(&disk).unwrap();
    assert!(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&disk)
        .status()
        .unwrap()
        .success());
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(disk.clone());
    let output = disk.join("records.jsonl");

    let names = ["xagent", "yagent", "zagent"];
    let namespaces: Vec<Namespace> = names.iter().map(|n| Namespace::create(n)).collect();
    let mut agents: Vec<Process> = names
        .iter()
        .zip(&namespaces)
        .map(|(name, ns)| {
            let syslog = if *name == "xagent" {
                format!("[syslog]\noutput = {{ kind = \"file\", path = \"{}\" }}\n", output.display())
            } else {
                String::new()
            };
            // In its own namespace the defaults' ports are its own; HTTP on the veth so the
            // test can read it.
            Process::start(
                name,
                dir.path(),
                Some(&ns.name),
                (ns.inside.clone(), 9318),
                format!(
                    "[statsd]\n{FLUSH}\n[http]\nlisten = \"{}:9318\"\n[limits]\nallow = [\"127.0.0.0/8\", \"10.0.0.0/8\"]\n\
                     [forward]\naggregators = [\"{}:{agg_port}\"]\nagent_id = \"{name}\"\nstate_dir = \"{}\"\n{syslog}",
                    ns.inside,
                    ns.host,
                    dir.path().join(format!("{name}-state")).display()
                ),
            )
        })
        .collect();
    for a in &agents {
        wait_for_every("the agent connected", || (a.sample("floodgate_forward_connected", &[]) == 1.0).then_some(()));
    }

    // Resource samples, every second, of whichever process runs under each name.
    let pids: Arc<Mutex<Vec<(String, u32)>>> = Arc::new(Mutex::new(
        agents.iter().map(|a| (a.name.clone(), a.pid())).chain([("aggregator".into(), aggregator.pid())]).collect(),
    ));
    let samples: Arc<Mutex<Samples>> = Arc::default();
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (pids, samples, sampling) = (pids.clone(), samples.clone(), sampling.clone());
        std::thread::spawn(move || {
            while sampling.load(Relaxed) {
                for (name, pid) in pids.lock().unwrap().clone() {
                    if let Some(u) = usage(pid) {
                        samples.lock().unwrap().entry(name).or_default().push((Instant::now(), u));
                    }
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };

    // Traffic: counters into every agent; syslog into xagent from logger (TCP, directly) and
    // from rsyslog (its own UDP input, forwarded over TCP).
    let senders: Vec<Child> =
        names.iter().zip(&namespaces).map(|(n, ns)| counter_sender(&ns.name, &format!("soak.{n}.hits"))).collect();
    let rsyslog_port = 20514;
    let work = dir.path().join("rsyslog-work");
    std::fs::create_dir_all(&work).unwrap();
    let rsyslog_conf = dir.path().join("rsyslog.conf");
    std::fs::write(
        &rsyslog_conf,
        format!(
            "global(workDirectory=\"{}\")\nmodule(load=\"imudp\")\ninput(type=\"imudp\" port=\"{rsyslog_port}\" address=\"127.0.0.1\")\n\
             action(type=\"omfwd\" target=\"127.0.0.1\" port=\"5514\" protocol=\"tcp\" action.resumeRetryCount=\"-1\" \
             queue.type=\"LinkedList\" queue.size=\"100000\")\n",
            work.display()
        ),
    )
    .unwrap();
    let mut rsyslog = KilledOnDrop(
        Command::new(require_tool("ip"))
            .args(["netns", "exec", &namespaces[0].name])
            .arg(require_tool("rsyslogd"))
            .args(["-n", "-f"])
            .arg(&rsyslog_conf)
            .arg("-i")
            .arg(dir.path().join("rsyslog.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let logging = Arc::new(AtomicBool::new(true));
    let logger = {
        let (logging, ns) = (logging.clone(), namespaces[0].name.clone());
        std::thread::spawn(move || {
            let mut sent_direct = Vec::new();
            let mut i = 0u64;
            while logging.load(Relaxed) {
                i += 1;
                let direct = Command::new(require_tool("ip"))
                    .args(["netns", "exec", &ns, "logger", "--tcp", "-n", "127.0.0.1", "-P", "5514", "-t", "soak"])
                    .arg(format!("soak-logger-{i}"))
                    .status()
                    .unwrap();
                if direct.success() {
                    sent_direct.push(i);
                }
                let _ = Command::new(require_tool("ip"))
                    .args(["netns", "exec", &ns, "logger", "-d", "-n", "127.0.0.1", "-P", &rsyslog_port.to_string()])
                    .args(["-t", "soak"])
                    .arg(format!("soak-rsyslog-{i}"))
                    .status();
                std::thread::sleep(Duration::from_millis(250));
            }
            (i, sent_direct)
        })
    };
    let steady = Instant::now();
    std::thread::sleep(Duration::from_secs(90));

    // 1. A Carbon node down, then back; its held shares delivered.
    eprintln!("fault 1 at {:?}: carbon node 3 down", started.elapsed());
    take_down(&aggregator, &mut caches[2]);
    std::thread::sleep(Duration::from_secs(30));
    caches[2].restart();
    let third = format!("destination=\"{}:{}:c2\"", caches[2].ip, caches[2].line_port);
    wait_until("the third node's held shares delivered", WAIT, || {
        let held = aggregator.sample("floodgate_sink_buffer_payloads", &[&third]);
        if held == 0.0 {
            Ok(())
        } else {
            Err(format!("{held} held"))
        }
    });

    // 2. The aggregator SIGKILLed (away from the moment a flush acknowledges: the window the
    // agent-aggregator protocol leaves, as hostile.rs's kill test), then started again.
    eprintln!("fault 2 at {:?}: aggregator SIGKILL", started.elapsed());
    loop {
        let phase = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() % 2000;
        if !(900..1200).contains(&phase) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    aggregator.kill();
    std::thread::sleep(Duration::from_secs(5));
    aggregator.respawn();
    let respawned = Instant::now();
    pids.lock().unwrap().retain(|(n, _)| n != "aggregator");
    pids.lock().unwrap().push(("aggregator".into(), aggregator.pid()));
    for a in &agents {
        wait_for_every("the agent reconnected", || (a.sample("floodgate_forward_connected", &[]) == 1.0).then_some(()));
    }
    std::thread::sleep(Duration::from_secs(15));

    // 3. The syslog output's disk full for 30 s.
    eprintln!("fault 3 at {:?}: disk full", started.elapsed());
    let filler = disk.join("filler");
    let _ = Command::new("dd").args(["if=/dev/zero", "bs=64k"]).arg(format!("of={}", filler.display())).output();
    std::thread::sleep(Duration::from_secs(30));
    std::fs::remove_file(&filler).unwrap();
    std::thread::sleep(Duration::from_secs(10));

    // 4. One agent cut off: its link down for 30 s.
    eprintln!("fault 4 at {:?}: yagent cut off", started.elapsed());
    ip(&["link", "set", &namespaces[1].veth, "down"]);
    std::thread::sleep(Duration::from_secs(30));
    ip(&["link", "set", &namespaces[1].veth, "up"]);
    wait_for_every("the cut agent reconnected", || {
        (agents[1].sample("floodgate_forward_connected", &[]) == 1.0).then_some(())
    });

    // 5. A SIGHUP storm.
    eprintln!("fault 5 at {:?}: SIGHUP storm", started.elapsed());
    for _ in 0..20 {
        for a in &agents {
            a.signal("HUP");
        }
        aggregator.signal("HUP");
        std::thread::sleep(Duration::from_millis(500));
    }
    // Steady again (the resource samples' last minute and a half).
    std::thread::sleep(Duration::from_secs(90));
    eprintln!("traffic stops at {:?}", started.elapsed());

    // Everything sent, then settled.
    let sent: Vec<u64> = senders.into_iter().map(stop_sender).collect();
    logging.store(false, Relaxed);
    let (logger_rounds, direct_sent) = logger.join().unwrap();
    for (a, sent) in agents.iter().zip(&sent) {
        // What the agent read of it (UDP on loopback in its namespace: the guard's defaults
        // admit it all; a line the kernel dropped was never accepted).
        let read = wait_until_every("the agent read what was sent", WAIT, POLL, || {
            let m = a.metrics();
            let read = metric(&m, "floodgate_received_lines_total", &["listener=\"statsd_udp\""]).unwrap_or(0.0);
            if read >= *sent as f64 * 0.999 {
                Ok(read)
            } else {
                Err(format!("{read} of {sent}"))
            }
        });
        wait_until_every("the agent's batches acknowledged", WAIT, POLL, || {
            let queued = a.sample("floodgate_forward_queued_batches", &[]);
            if queued == 0.0 {
                Ok(())
            } else {
                Err(format!("{queued} queued"))
            }
        });
        assert_eq!(a.sample("floodgate_forward_dropped_batches_total", &[]), 0.0, "{}", a.name);
        let name = format!("stats_counts.soak.{}.hits", a.name);
        let total = |caches: &[Carbon]| caches.iter().map(|c| c.fetch(&name).iter().sum::<f64>()).sum::<f64>();
        let got = wait_until(&format!("{name} in Whisper"), WAIT, || {
            let t = total(&caches);
            if t >= read {
                Ok(t)
            } else {
                Err(format!("{t} of {read}"))
            }
        });
        assert_eq!(got, read, "{}: Whisper has {got}, the agent read {read} (sent {sent})", a.name);
        eprintln!("{}: sent {sent} increments, read {read}, in Whisper {got}", a.name);
    }
    // A doubled batch would show after more flushes: two more, then the same sums.
    std::thread::sleep(Duration::from_secs(5));
    for a in &agents {
        let name = format!("stats_counts.soak.{}.hits", a.name);
        let total: f64 = caches.iter().map(|c| c.fetch(&name).iter().sum::<f64>()).sum();
        let read = metric(&a.metrics(), "floodgate_received_lines_total", &["listener=\"statsd_udp\""]).unwrap();
        assert_eq!(total, read, "{} after more flushes", a.name);
    }

    // Syslog: every message xagent read is in the output once; every logger message sent
    // directly is there.
    let _ = Command::new("kill").args(["-TERM", &rsyslog.0.id().to_string()]).status();
    let _ = rsyslog.0.wait();
    let x = &agents[0];
    let records = wait_until_every("every syslog message read is written", WAIT, POLL, || {
        let m = x.metrics();
        let read: f64 = ["syslog_tcp", "syslog_udp"]
            .iter()
            .map(|l| metric(&m, "floodgate_syslog_messages_total", &[&format!("listener=\"{l}\"")]).unwrap_or(0.0))
            .sum();
        let text = std::fs::read_to_string(&output).unwrap_or_default();
        let records: Vec<String> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|r| r["message"].as_str().map(str::to_string))
            .collect();
        if records.len() as f64 == read {
            Ok(records)
        } else {
            Err(format!("{} records, {read} read", records.len()))
        }
    });
    let mut seen = std::collections::HashMap::<&str, usize>::new();
    for r in &records {
        *seen.entry(r.as_str()).or_default() += 1;
    }
    let doubled: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "records written twice: {doubled:?}");
    let missing: Vec<&u64> =
        direct_sent.iter().filter(|i| !seen.contains_key(format!("soak-logger-{i}").as_str())).collect();
    assert!(missing.is_empty(), "logger messages sent and not written: {missing:?}");
    assert!(
        direct_sent.len() as u64 > logger_rounds / 2,
        "{} of {logger_rounds} logger messages sent",
        direct_sent.len()
    );
    // rsyslog re-forms the header (`soak soak-rsyslog-N`, its tag without the colon).
    let from_rsyslog = seen.keys().filter(|k| k.contains("soak-rsyslog-")).count();
    assert!(from_rsyslog as u64 > logger_rounds / 2, "{from_rsyslog} of {logger_rounds} messages through rsyslog");
    assert!(x.sample("floodgate_syslog_output_errors_total", &[]) > 0.0, "the disk was full");
    eprintln!(
        "syslog: {} records written once each; {} of {logger_rounds} logger messages sent directly, {from_rsyslog} through rsyslog",
        records.len(),
        direct_sent.len()
    );

    // Resources flat.
    sampling.store(false, Relaxed);
    sampler.join().unwrap();
    let samples = samples.lock().unwrap();
    for a in &agents {
        assert_flat(&a.name, &samples[&a.name], steady);
    }
    assert_flat("aggregator", &samples["aggregator"], respawned);
    eprintln!("soak done in {:?}", started.elapsed());
    for a in &mut agents {
        a.kill();
    }
    aggregator.kill();
    drop(caches.drain(..));
    let _ = Write::flush(&mut std::io::stderr());
}
