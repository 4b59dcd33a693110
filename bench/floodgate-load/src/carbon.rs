//! A Carbon stand-in that sums the flushed counts of the load's counters, the raw `recvmmsg`
//! sink that only counts datagrams (the physical limit of the machine), and the Graphite
//! fan-out benchmark (one Carbon vs a sharded cluster of three).

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use floodgate::sys::{RecvBatch, UdpReceiver};

/// Sums `PREFIX... value ts` lines of plaintext payloads.
pub struct CarbonStandIn {
    /// Where it listens.
    pub port: u16,
    total: Arc<Total>,
}

#[derive(Default)]
struct Total {
    sum: std::sync::Mutex<f64>,
}

impl CarbonStandIn {
    /// Listens on a free loopback port; sums values of names starting with `prefix`.
    pub fn start(prefix: &'static str) -> CarbonStandIn {
        CarbonStandIn::start_on("127.0.0.1", prefix)
    }

    /// [`CarbonStandIn::start`] on `ip` (a 127.0.0.0/8 address).
    pub fn start_on(ip: &str, prefix: &'static str) -> CarbonStandIn {
        let listener = TcpListener::bind((ip, 0)).expect("bind carbon stand-in");
        let port = listener.local_addr().unwrap().port();
        let total = Arc::new(Total::default());
        let t = total.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let t = t.clone();
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    if stream.read_to_end(&mut buf).is_err() {
                        return;
                    }
                    let mut sum = 0.0;
                    for line in buf.split(|b| *b == b'\n') {
                        if !line.starts_with(prefix.as_bytes()) {
                            continue;
                        }
                        let mut parts = line.rsplitn(3, |b| *b == b' ');
                        let _ts = parts.next();
                        if let Some(v) = parts.next().and_then(|v| std::str::from_utf8(v).ok()?.parse::<f64>().ok()) {
                            sum += v;
                        }
                    }
                    *t.sum.lock().unwrap() += sum;
                });
            }
        });
        CarbonStandIn { port, total }
    }

    /// Sum so far.
    pub fn sum(&self) -> f64 {
        *self.total.sum.lock().unwrap()
    }
}

/// A receive-and-count sink on its own thread.
pub struct RawSink {
    /// Bound address.
    pub addr: SocketAddr,
    datagrams: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RawSink {
    /// Binds a free port with a 32 MiB buffer.
    pub fn start() -> RawSink {
        let socket = UdpReceiver::bind("127.0.0.1:0".parse().unwrap(), 32 << 20, Duration::from_millis(100)).unwrap();
        let addr = socket.local_addr().unwrap();
        let datagrams = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (d, s) = (datagrams.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut batch = RecvBatch::new(64, 2048);
            while !s.load(Ordering::Relaxed) {
                if let Ok(n) = batch.recv(socket.fd()) {
                    d.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        });
        RawSink { addr, datagrams, stop, thread: Some(thread) }
    }

    /// Stops and returns the datagram count.
    pub fn finish(mut self) -> u64 {
        std::thread::sleep(Duration::from_millis(300));
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.datagrams.load(Ordering::Relaxed)
    }
}

/// Graphite fan-out: 200k counter series flushed to one Carbon stand-in, then to three
/// sharded by Carbon's ring (replication 1 and 2), in one run: the flush's duration (merge,
/// render, hash and split), floodgate's CPU from the first datagram until every stand-in has
/// its share, and that time.
pub fn fanout(opts: &crate::targets::BenchOptions) {
    use std::net::UdpSocket;
    use std::time::Instant;

    use crate::targets::{cpu_ticks, metric, spawn_floodgate, GUARD_OFF};
    const SERIES: usize = 200_000;
    const PREFIX: &str = "stats_counts.fan.";
    println!("\n## Graphite fan-out: {SERIES} counter series, one flush (floodgate, 2 s interval)");
    println!("| output | counter series delivered (per node) | the flush (merge+render+split) | floodgate CPU, first datagram to all delivered | time to all delivered |");
    println!("|---|---|---|---|---|");
    let setups: [(&str, usize, usize); 3] = [
        ("one Carbon (address)", 1, 1),
        ("three, carbon_ch, replication 1", 3, 1),
        ("three, carbon_ch, replication 2", 3, 2),
    ];
    for (name, nodes, replication) in setups {
        let stand_ins: Vec<CarbonStandIn> = ["127.0.0.1", "127.0.0.2", "127.0.0.3"][..nodes]
            .iter()
            .map(|ip| CarbonStandIn::start_on(ip, PREFIX))
            .collect();
        let graphite = if nodes == 1 {
            format!("[graphite]\naddress = \"127.0.0.1:{}\"\n", stand_ins[0].port)
        } else {
            let list: Vec<String> = stand_ins
                .iter()
                .zip(["127.0.0.1", "127.0.0.2", "127.0.0.3"])
                .zip(["cache1", "cache2", "cache3"])
                .map(|((c, ip), i)| format!("\"{ip}:{}:{i}\"", c.port))
                .collect();
            format!("[graphite]\ndestinations = [{}]\nreplication = {replication}\n", list.join(", "))
        };
        let dir = std::env::temp_dir().join(format!("floodgate-bench-fanout-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fg = spawn_floodgate(
            opts,
            &dir,
            "fanout",
            "flush_interval = \"2s\"\nmax_series = 1_000_000",
            &format!("{graphite}{GUARD_OFF}"),
        );
        let http = fg.http.unwrap_or(0);
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let cpu0 = cpu_ticks(fg.child.id());
        let started = Instant::now();
        for chunk in (0..SERIES).collect::<Vec<_>>().chunks(20) {
            let datagram: String = chunk.iter().map(|i| format!("fan.k{i}:1|c\n")).collect();
            let _ = socket.send_to(datagram.as_bytes(), ("127.0.0.1", fg.port));
            std::thread::sleep(Duration::from_micros(20)); // well inside the receive buffer
        }
        let want = (SERIES * replication) as f64;
        let total = || stand_ins.iter().map(CarbonStandIn::sum).sum::<f64>();
        let deadline = Instant::now() + Duration::from_secs(60);
        while total() < want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let elapsed = started.elapsed();
        let cpu = (cpu_ticks(fg.child.id()) - cpu0) as f64 / 100.0;
        let flush = metric(http, "floodgate_flush_duration_seconds");
        let got = total();
        let shares: Vec<String> = stand_ins.iter().map(|c| format!("{:.0}", c.sum())).collect();
        println!(
            "| {name} | {got:.0} of {want:.0} ({}) | {:.0} ms | {cpu:.2} s | {:.2} s |",
            shares.join(" + "),
            flush * 1000.0,
            elapsed.as_secs_f64()
        );
        drop(fg);
    }
}
