//! Syslog under load, floodgate against rsyslog 8.2302 (Debian) in the same run.
//!
//! - TCP: one and four sender connections write pre-built octet-counted RFC 5424 messages as fast as the
//!   connection takes them; the rate is messages / (first byte → last record in the output
//!   file). floodgate writes its JSON records; rsyslog (imtcp, rate limiting off as Debian
//!   ships it) writes `%jsonmesg%` (its JSON of every field), so both parse and write a JSON
//!   line per message. TCP loses nothing (flow control), so "sustained" is just the rate.
//! - TLS: the same against floodgate's TLS listener (rustls client).
//! - UDP: the highest rate with < 0.1% loss (records in the file vs datagrams sent) for the
//!   raw `recvmmsg` sink and floodgate, one message per datagram.

use std::io::{Read, Seek, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::carbon::RawSink;
use crate::sender::{self, Datagram};
use crate::targets::{cpu_ticks, free_port, spawn_floodgate, BenchOptions, Running, GUARD_OFF};

/// Sender connections in the TCP and TLS trials: one (a relay forwarding to us) and four.
const CONNECTIONS: [usize; 2] = [1, 4];
/// Messages per trial.
/// (Larger trials write gigabytes and end up measuring the kernel's dirty-page writeback.)
const MESSAGES: usize = 2_000_000;
const MAX_LOSS: f64 = 0.001;

/// Message `i` (about 150 bytes, RFC 5424 with structured data, as a modern client sends).
fn message(i: usize) -> String {
    format!(
        "<134>1 2026-11-22T10:00:00.{:03}Z web-{}.example.net nginx {} access [req@32473 status=\"200\" bytes=\"{}\"] GET /api/v1/items/{i} HTTP/1.1",
        i % 1000,
        i % 50,
        1000 + i % 7,
        i % 9973
    )
}

/// Messages a second one core parses and encodes as JSON records (`parse-syslog`).
pub(crate) fn parse_capacity(duration: Duration) -> f64 {
    use floodgate_syslog::record::{json_prefix, write_json_after, Received};
    let messages: Vec<String> = (0..4096).map(message).collect();
    let now = floodgate_syslog::Now { year: 2026, month: 11, offset_minutes: 0 };
    let received = Received {
        at: "2026-11-22T10:00:00.000Z",
        source: "127.0.0.1:40000",
        listener: "syslog_tcp",
        transport: "tcp",
        peer: None,
    };
    let mut prefix = Vec::new();
    json_prefix(&received, &mut prefix);
    let mut out = Vec::with_capacity(2 << 20);
    let (start, mut done) = (Instant::now(), 0u64);
    while start.elapsed() < duration {
        for m in &messages {
            let record = floodgate_syslog::parse(m.as_bytes(), now);
            write_json_after(&prefix, &record, None, &mut out);
            if out.len() > 1 << 20 {
                out.clear();
            }
        }
        done += messages.len() as u64;
    }
    std::hint::black_box(&out);
    done as f64 / start.elapsed().as_secs_f64()
}

/// `count` octet-counted messages.
pub(crate) fn octet_counted(count: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(count * 170);
    for i in 0..count {
        let m = message(i);
        write!(out, "{} {m}", m.len()).unwrap();
    }
    out
}

/// Counts the lines of a growing file, reading only what is new each time.
pub(crate) struct LineCounter {
    path: PathBuf,
    offset: u64,
    lines: u64,
    buf: Vec<u8>,
}

impl LineCounter {
    pub(crate) fn new(path: &Path) -> LineCounter {
        LineCounter { path: path.to_path_buf(), offset: 0, lines: 0, buf: vec![0; 4 << 20] }
    }

    pub(crate) fn count(&mut self) -> u64 {
        let Ok(mut f) = std::fs::File::open(&self.path) else { return 0 };
        if f.seek(std::io::SeekFrom::Start(self.offset)).is_err() {
            return self.lines;
        }
        while let Ok(n) = f.read(&mut self.buf) {
            if n == 0 {
                break;
            }
            self.lines += self.buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
            self.offset += n as u64;
        }
        self.lines
    }

    /// Waits until `want` lines are there (or `quiet` passes with no new line); returns when
    /// the last one arrived and the count.
    pub(crate) fn wait(&mut self, want: u64, quiet: Duration) -> (Instant, u64) {
        let mut last = (Instant::now(), self.count());
        loop {
            std::thread::sleep(Duration::from_millis(20));
            let n = self.count();
            if n != last.1 {
                last = (Instant::now(), n);
            }
            if n >= want || last.0.elapsed() > quiet {
                return last;
            }
        }
    }
}

/// Starts rsyslogd on `body`; waits for `port` (TCP) when given.
fn start_rsyslog(dir: &Path, body: &str, port: u16) -> std::process::Child {
    let work = dir.join("rsyslog-work");
    std::fs::create_dir_all(&work).unwrap();
    let conf = dir.join("rsyslog.conf");
    std::fs::write(&conf, format!("global(workDirectory=\"{}\")\n{body}", work.display())).unwrap();
    let child = Command::new("rsyslogd")
        .args(["-n", "-f"])
        .arg(&conf)
        .arg("-i")
        .arg(dir.join("rsyslog.pid"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("rsyslog.log")).unwrap())
        .spawn()
        .expect("start rsyslogd (apt-get install rsyslog)");
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "rsyslogd did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// What a TCP/TLS trial measured.
struct Stream {
    rate: f64,
    delivered: u64,
    cpu_cores: f64,
}

/// Sends `MESSAGES` over `connections` connections to `port` (TLS when `tls` is set); waits
/// for them in `out`.
fn stream_trial(
    label: &str,
    connections: usize,
    pid: u32,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
    out: &Path,
) -> Stream {
    let payload = Arc::new(octet_counted(MESSAGES / connections));
    // Every trial starts with no dirty pages from the one before waiting to be written back.
    let _ = Command::new("sync").status();
    let want = (MESSAGES / connections * connections) as u64;
    let mut counter = LineCounter::new(out);
    let base = counter.count();
    let ticks = cpu_ticks(pid);
    let start = Instant::now();
    let senders: Vec<_> = (0..connections)
        .map(|_| {
            let (payload, tls) = (payload.clone(), tls.clone());
            std::thread::spawn(move || {
                let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
                match tls {
                    Some(config) => {
                        let conn =
                            rustls::ClientConnection::new(config, "aggregator.bench".try_into().unwrap()).unwrap();
                        let mut s = rustls::StreamOwned::new(conn, tcp);
                        for piece in payload.chunks(64 << 10) {
                            s.write_all(piece).unwrap();
                        }
                        s.conn.send_close_notify();
                        s.flush().unwrap();
                    }
                    None => {
                        let mut s = tcp;
                        s.write_all(&payload).unwrap();
                    }
                }
            })
        })
        .collect();
    let mut last_progress = Instant::now();
    let (done_at, got) = loop {
        let (at, n) = counter.wait(base + want, Duration::from_millis(500));
        if n >= base + want || at.elapsed() > Duration::from_secs(5) {
            break (at, n - base);
        }
        if last_progress.elapsed() > Duration::from_secs(1) {
            eprint!("\r  {label}: {:.1}M of {:.1}M records   ", (n - base) as f64 / 1e6, want as f64 / 1e6);
            last_progress = Instant::now();
        }
    };
    eprint!("\r{:100}\r", "");
    for s in senders {
        let _ = s.join();
    }
    let secs = done_at.duration_since(start).as_secs_f64();
    Stream { rate: got as f64 / secs, delivered: got, cpu_cores: (cpu_ticks(pid) - ticks) as f64 / 100.0 / secs }
}

fn floodgate(opts: &BenchOptions, dir: &Path, name: &str, syslog: &str) -> Running {
    spawn_floodgate(opts, dir, name, "", &format!("{GUARD_OFF}[syslog]\n{syslog}"))
}

/// The TCP, TLS and UDP comparisons.
pub fn syslog(opts: &BenchOptions) {
    let dir = std::env::temp_dir().join(format!("floodgate-bench-syslog-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    println!("\n## Syslog over TCP and TLS ({MESSAGES} octet-counted RFC 5424 messages of about 150 bytes; each row the median of 3 trials by messages per CPU-second)\n");
    println!("| connections | target, output | transport | messages/s | delivered | target CPU (of one core) | vs rsyslog, same output | vs rsyslog's fastest | vs floodgate TCP | messages per CPU-second | per CPU-second vs rsyslog's best |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let (ca, cert, key) = crate::forward::certificates(&dir);
    let client = {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_file_iter(&ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    };
    // Each trial writes close to a gigabyte of new file pages, and on this VM what the kernel's
    // copy into them costs moves by up to 4x from one trial to the next (the same build, the
    // same messages): every target runs ROUNDS times, in turn, and the row is its median
    // trial by messages per CPU-second.
    const ROUNDS: usize = 3;
    for connections in CONNECTIONS {
        // rsyslog: imtcp → omfile with its two stock line formats, and a JSON line of every
        // field (%jsonmesg%: the same work floodgate does).
        let formats = [
            ("omfile's default, RSYSLOG_FileFormat", "RSYSLOG_FileFormat", ""),
            ("Debian's RSYSLOG_TraditionalFileFormat", "RSYSLOG_TraditionalFileFormat", ""),
            (
                "JSON of every field, %jsonmesg%",
                "json",
                "template(name=\"json\" type=\"string\" string=\"%jsonmesg%\\n\")\n",
            ),
        ];
        // TCP and TLS each with a floodgate and an output file of their own.
        let trial = |transport: &str, tls: Option<Arc<rustls::ClientConfig>>| {
            let port = free_port();
            let out = dir.join(format!("floodgate-{connections}-{transport}.jsonl"));
            let listener = match &tls {
                None => format!("tcp = [\"127.0.0.1:{port}\"]\n"),
                Some(_) => format!(
                    "tcp = []\ntls = [{{ listen = \"127.0.0.1:{port}\", cert = \"{cert}\", key = \"{key}\" }}]\n"
                ),
            };
            let fg = floodgate(
                opts,
                &dir,
                "floodgate-syslog",
                &format!("udp = []\n{listener}output = {{ kind = \"file\", path = \"{}\" }}\n", out.display()),
            );
            let t = stream_trial(&format!("floodgate {transport}"), connections, fg.child.id(), port, tls, &out);
            drop(fg);
            let _ = std::fs::remove_file(&out);
            t
        };
        // Trials by target: the rsyslog formats, then floodgate over TCP and over TLS.
        let mut trials: Vec<Vec<Stream>> = (0..formats.len() + 2).map(|_| Vec::new()).collect();
        for _ in 0..ROUNDS {
            for (i, (_, template, definition)) in formats.iter().enumerate() {
                let rs_port = free_port();
                let rs_out = dir.join(format!("rsyslog-{connections}-{i}.log"));
                let mut rs = start_rsyslog(
                    &dir,
                    &format!(
                        "module(load=\"imtcp\")\ninput(type=\"imtcp\" address=\"127.0.0.1\" port=\"{rs_port}\")\n\
                         {definition}action(type=\"omfile\" file=\"{}\" template=\"{template}\")\n",
                        rs_out.display()
                    ),
                    rs_port,
                );
                trials[i].push(stream_trial("rsyslog tcp", connections, rs.id(), rs_port, None, &rs_out));
                let _ = rs.kill();
                let _ = rs.wait();
                let _ = std::fs::remove_file(&rs_out);
            }
            trials[formats.len()].push(trial("tcp", None));
            trials[formats.len() + 1].push(trial("tls", Some(client.clone())));
        }
        // What a CPU-second buys: the rates move with the sender on two cores, this less so.
        let per_cpu = |t: &Stream| t.rate / t.cpu_cores.max(1e-9);
        let median = |mut runs: Vec<Stream>| {
            runs.sort_by(|a, b| per_cpu(a).total_cmp(&per_cpu(b)));
            runs.swap_remove(runs.len() / 2)
        };
        let mut medians: Vec<Stream> = trials.into_iter().map(median).collect();
        let tls = medians.pop().expect("tls");
        let tcp = medians.pop().expect("tcp");
        let rsyslog: Vec<(&str, Stream)> = formats.iter().map(|f| f.0).zip(medians).collect();
        let fastest = rsyslog.iter().map(|r| r.1.rate).fold(0.0, f64::max);
        let json = rsyslog.last().map(|r| r.1.rate).unwrap_or(f64::NAN);
        let best_per_cpu = rsyslog.iter().map(|r| per_cpu(&r.1)).fold(0.0, f64::max);
        let rows = rsyslog
            .iter()
            .map(|(format, t)| (format!("rsyslog 8.2302, {format}"), "tcp", t))
            .chain([("floodgate, JSON".to_string(), "tcp", &tcp), ("floodgate, JSON".to_string(), "tls", &tls)]);
        for (name, transport, t) in rows {
            let same = if name.starts_with("floodgate") { format!("{:.2}x", t.rate / json) } else { String::new() };
            println!(
                "| {connections} | {name} | {transport} | {:.0} | {} of {} | {:.0}% | {same} | {:.2}x | {:.0}% | {:.2}M | {:.2}x |",
                t.rate,
                t.delivered,
                MESSAGES / connections * connections,
                t.cpu_cores * 100.0,
                t.rate / fastest,
                t.rate / tcp.rate * 100.0,
                per_cpu(t) / 1e6,
                per_cpu(t) / best_per_cpu
            );
        }
    }

    let _ = std::fs::remove_dir_all(&dir);
}

/// `--only syslogudp`: syslog over UDP, one message a datagram, floodgate (JSON records to a
/// file) against the raw `recvmmsg` sink: the highest rate with < 0.1 % loss from one sender
/// thread, and the CPU each takes to drain the same 400,000 datagrams queued while it was
/// stopped (the drain method of `hotpath`: no sender in the way).
pub fn syslog_udp(opts: &BenchOptions) {
    let dir = std::env::temp_dir().join(format!("floodgate-bench-syslogudp-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    println!("\n## Syslog over UDP: one message a datagram, floodgate (JSON to a file) vs the raw recvmmsg sink\n");
    // UDP: sustained rate with < 0.1% loss, raw sink vs floodgate.
    let pool: Vec<Datagram> = (0..4096).map(|i| Datagram { bytes: message(i).into_bytes(), counters: 1 }).collect();
    let sink = sustained_udp("raw recvmmsg sink", |rate| {
        let sink = RawSink::start();
        let sent = sender::send_pool(sink.addr, &pool, 1, rate, 1, 1, opts.trial, "syslog udp → raw sink");
        let got = sink.finish();
        (sent.datagrams as f64 / sent.elapsed.as_secs_f64(), 1.0 - got as f64 / sent.datagrams.max(1) as f64)
    });
    // Records go to tmpfs, a fresh file each trial: a trial writes gigabytes, and on the disk
    // the kernel's dirty-page writeback, not floodgate, set the figure (and filled the disk).
    let shm = Path::new("/dev/shm").join(format!("floodgate-bench-syslogudp-{}", free_port()));
    std::fs::create_dir_all(&shm).unwrap();
    let mut trial = 0;
    let floodgate_udp = sustained_udp("floodgate", |rate| {
        trial += 1;
        let udp_port = free_port();
        let out = shm.join(format!("udp-{trial}.jsonl"));
        let fg = floodgate(
            opts,
            &dir,
            &format!("floodgate-syslog-udp-{trial}"),
            &format!(
                "udp = [\"127.0.0.1:{udp_port}\"]\ntcp = []\nreceive_buffer = \"64MiB\"\noutput = {{ kind = \"file\", path = \"{}\" }}\n",
                out.display()
            ),
        );
        let mut counter = LineCounter::new(&out);
        let dest = SocketAddr::from(([127, 0, 0, 1], udp_port));
        let sent = sender::send_pool(dest, &pool, 1, rate, 1, 1, opts.trial, "syslog udp → floodgate");
        let (_, got) = counter.wait(sent.datagrams, Duration::from_millis(700));
        drop(fg);
        let _ = std::fs::remove_file(&out);
        (sent.datagrams as f64 / sent.elapsed.as_secs_f64(), 1.0 - got as f64 / sent.datagrams.max(1) as f64)
    });
    let _ = std::fs::remove_dir_all(&shm);
    println!("\n| target | UDP messages/s (< 0.1% loss) | vs raw sink |");
    println!("|---|---|---|");
    println!("| raw recvmmsg sink | {sink:.0} | 100% |");
    println!("| floodgate (JSON to file) | {floodgate_udp:.0} | {:.0}% |", floodgate_udp / sink * 100.0);

    drained(opts, &dir, &pool);
    let _ = std::fs::remove_dir_all(&dir);
}

/// CPU-seconds to drain `DRAINED` queued datagrams, the raw loop against floodgate (1 GiB
/// buffer, one receive thread), median of 5 alternating rounds.
fn drained(opts: &BenchOptions, dir: &Path, pool: &[Datagram]) {
    const DRAINED: usize = 400_000;
    let refs: Vec<&[u8]> = pool.iter().map(|d| d.bytes.as_slice()).collect();
    let (mut raw, mut fg) = (Vec::new(), Vec::new());
    for round in 0..5 {
        let r = crate::hostile::RawRecv::start();
        let d = crate::hostile::drain(r.pid(), r.port, &refs, DRAINED, || r.count());
        drop(r);
        raw.push(d.receiver_cpu / d.datagrams.max(1.0));
        let out = Path::new("/dev/shm").join(format!("floodgate-bench-drained-{round}-{}.jsonl", free_port()));
        let port = free_port();
        let f = floodgate(
            opts,
            dir,
            &format!("floodgate-syslog-drain-{round}"),
            &format!(
                "udp = [\"127.0.0.1:{port}\"]\ntcp = []\nreceive_threads = 1\nreceive_buffer = \"1GiB\"\noutput = {{ kind = \"file\", path = \"{}\" }}\n",
                out.display()
            ),
        );
        let pid = f.child.id();
        let mut counter = LineCounter::new(&out);
        let d = crate::hostile::drain(pid, port, &refs, DRAINED, || counter.count() as f64);
        drop(f);
        let _ = std::fs::remove_file(&out);
        fg.push(d.receiver_cpu / d.datagrams.max(1.0));
        eprintln!(
            "  round {round}: raw {:.0} ns, floodgate {:.0} ns a message ({} of {DRAINED} written)",
            raw[round] * 1e9,
            fg[round] * 1e9,
            d.datagrams
        );
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (raw, fg) = (median(&mut raw), median(&mut fg));
    println!("\n| drained ({DRAINED} datagrams queued while stopped) | CPU a message (median of 5) | messages per CPU-second | vs raw |");
    println!("|---|---|---|---|");
    println!("| raw recvmmsg loop | {:.0} ns | {:.2}M | 100% |", raw * 1e9, 1e-6 / raw);
    println!(
        "| floodgate, JSON to a file (every thread) | {:.0} ns | {:.2}M | {:.0}% |",
        fg * 1e9,
        1e-6 / fg,
        raw / fg * 100.0
    );
}

/// Full speed first, then a bisection below it: the highest rate with loss under 0.1%.
fn sustained_udp(name: &str, mut trial: impl FnMut(u64) -> (f64, f64)) -> f64 {
    let (rate, loss) = trial(0);
    println!("    {name} at full speed: {rate:.0} msgs/s offered, loss {:.3}%", loss * 100.0);
    if loss < MAX_LOSS {
        return rate;
    }
    let (mut lo, mut hi, mut best) = (0.0f64, rate, 0.0);
    for _ in 0..5 {
        let mid = (lo + hi) / 2.0;
        let (rate, loss) = trial(mid as u64);
        println!("    {name} at {rate:.0} msgs/s: loss {:.3}%", loss * 100.0);
        if loss < MAX_LOSS {
            (lo, best) = (mid, rate);
        } else {
            hi = mid;
        }
    }
    best
}

/// `--only proxy`: what the PROXY protocol costs floodgate on a syslog TCP listener. The same
/// messages go to a listener without it and to one behind a balancer at 127.0.0.1, where each
/// connection starts with a v1 header: first as many short connections (10 messages each, the
/// header's cost shows per connection), then as one long connection (one header for all).
pub fn proxy(opts: &BenchOptions) {
    const SHORT: usize = 20_000;
    const PER_SHORT: usize = 10;
    let dir = std::env::temp_dir().join(format!("floodgate-bench-proxy-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    println!(
        "\n## PROXY protocol: syslog over TCP without it and behind a balancer (v1 header per connection), guard off"
    );
    println!("| listener | {SHORT} connections of {PER_SHORT} messages: connections/s | floodgate CPU-s per 1,000 connections | one connection of {MESSAGES} messages: messages/s | floodgate CPU (of one core) | messages per CPU-second |");
    println!("|---|---|---|---|---|---|");
    for (label, proxied) in [("plain TCP", false), ("behind a balancer (proxy_protocol)", true)] {
        let port = free_port();
        let out = dir.join(format!("records-{proxied}.jsonl"));
        let extra = if proxied { "proxy_protocol = true\nproxy_from = [\"127.0.0.1/32\"]\n" } else { "" };
        // The guard off, connection limits included: 20,000 connections from one address in
        // a few seconds is the load here, not an attack.
        let fg = spawn_floodgate(
            opts,
            &dir,
            if proxied { "proxied" } else { "plain" },
            "",
            &format!(
                "{GUARD_OFF}tcp_connections_per_source = 0\ntcp_open_per_source = 1000000\n[syslog]\n\
                 udp = []\ntcp = [\"127.0.0.1:{port}\"]\ntcp_max_connections = 1000000\n{extra}\
                 output = {{ kind = \"file\", path = \"{}\" }}\n",
                out.display()
            ),
        );
        let pid = fg.child.id();
        let header = |p: u16| format!("PROXY TCP4 198.18.0.7 127.0.0.1 {p} {port}\r\n").into_bytes();
        let body = octet_counted(PER_SHORT);
        let mut counter = LineCounter::new(&out);
        let ticks = cpu_ticks(pid);
        let start = Instant::now();
        for i in 0..SHORT {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            if proxied {
                s.write_all(&header(1024 + (i % 60_000) as u16)).unwrap();
            }
            s.write_all(&body).unwrap();
        }
        let (done, got) = counter.wait((SHORT * PER_SHORT) as u64, Duration::from_secs(5));
        let secs = done.duration_since(start).as_secs_f64();
        let short_cpu = (cpu_ticks(pid) - ticks) as f64 / 100.0;
        assert_eq!(got, (SHORT * PER_SHORT) as u64, "{label}: records lost");
        // One long connection: the header once, then every message.
        let mut payload = if proxied { header(40000) } else { Vec::new() };
        payload.extend_from_slice(&octet_counted(MESSAGES));
        let base = counter.count();
        let ticks = cpu_ticks(pid);
        let start = Instant::now();
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(&payload).unwrap();
        drop(s);
        let (done, got) = counter.wait(base + MESSAGES as u64, Duration::from_secs(5));
        let long_secs = done.duration_since(start).as_secs_f64();
        let long_cpu = (cpu_ticks(pid) - ticks) as f64 / 100.0;
        assert_eq!(got - base, MESSAGES as u64, "{label}: records lost");
        println!(
            "| {label} | {:.0} | {:.3} | {:.0} | {:.0}% | {:.2}M |",
            SHORT as f64 / secs,
            short_cpu / SHORT as f64 * 1000.0,
            MESSAGES as f64 / long_secs,
            long_cpu / long_secs * 100.0,
            MESSAGES as f64 / long_cpu / 1e6,
        );
        drop(fg);
        let _ = std::fs::remove_file(&out);
    }
}
