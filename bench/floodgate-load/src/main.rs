//! `floodgate-load`: the StatsD load generator and benchmark harness.
//!
//! - `send`: counters at a chosen rate (or as fast as the kernel takes them) with `sendmmsg`,
//!   K lines per datagram, chosen cardinality, from several 127.0.0.x sources, with a
//!   progress line.
//! - `bench`: in one run on this machine, measures the highest rate with < 0.1% loss over the
//!   trial duration for a raw `recvmmsg` sink (the physical limit), floodgate and Etsy statsd
//!   0.9.0, at 1 and 20 lines per datagram; then floodgate's memory and flush time with 1M
//!   series and its CPU use idle and at 10k metrics/s; the guard's cost (off, on, dropping)
//!   and floodgate's memory after a million spoofed sources. Loss = counter increments sent vs the
//!   counter sums flushed to a Carbon stand-in.

#![deny(unsafe_code)]

mod carbon;
mod cardinality;
mod conntrack;
mod fleet;
mod forward;
mod hostile;
mod kernel;
mod otlp;
mod prometheus;
mod sender;
mod spoof;
mod spread;
mod syslog;
mod targets;
mod unix;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "floodgate-load", version, about = "StatsD load generator and benchmark harness for floodgate")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send counters to a StatsD server.
    Send {
        /// Destination.
        #[arg(long, default_value = "127.0.0.1:8125")]
        target: std::net::SocketAddr,
        /// Lines per second; 0 = as fast as possible.
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Lines per datagram.
        #[arg(long, default_value_t = 20)]
        lines: usize,
        /// Distinct names per type.
        #[arg(long, default_value_t = 1000)]
        cardinality: usize,
        /// Sender threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Source addresses 127.0.0.2, .3, ... (spread over the threads, one per batch in turn).
        #[arg(long, default_value_t = 1)]
        sources: usize,
        /// Type mix by weight: c (counters), ms (timers), g (gauges), s (sets).
        #[arg(long, default_value = "c=1")]
        mix: sender::Mix,
        /// Seconds to send.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
    /// Parse and aggregate prebuilt datagrams in this process, on one core: floodgate's
    /// processing capacity without the kernel or a sender in the way.
    Parse {
        /// Lines per datagram.
        #[arg(long, default_value_t = 20)]
        lines: usize,
        /// Distinct counter names.
        #[arg(long, default_value_t = 1000)]
        cardinality: usize,
        /// Seconds to run.
        #[arg(long, default_value_t = 3.0)]
        duration: f64,
        /// Also each stage on its own (split, parse, hash, aggregate), in ns a line.
        #[arg(long)]
        stages: bool,
    },
    /// Parse and encode prebuilt syslog messages (the `syslog` part's RFC 5424 messages) into
    /// JSON records in this process, on one core: the record path's CPU without sockets,
    /// threads or the file in the way (the socket trials vary ±8 % with where threads land).
    ParseSyslog {
        /// Seconds to run.
        #[arg(long, default_value_t = 3.0)]
        duration: f64,
    },
    /// The raw receive loop the hot path is measured against: binds `127.0.0.1:PORT` with a
    /// receive buffer of `buffer` bytes and reads with floodgate's own `recvmmsg` batches (64
    /// slots of 64 KiB), counting datagrams and nothing else; the count goes to `count` (a
    /// file, rewritten every 100 ms).
    RawRecv {
        /// The port.
        #[arg(long)]
        port: u16,
        /// Receive buffer bytes (SO_RCVBUFFORCE as root).
        #[arg(long, default_value_t = 1 << 30)]
        buffer: usize,
        /// Where the count goes.
        #[arg(long)]
        count: PathBuf,
    },
    /// Record the kernel's ctnetlink messages as received — events for `seconds`, then a dump
    /// of the table — into `out/events-N.bin` and `out/dump-N.bin` (one file per receive
    /// buffer): fixtures for the decoder's tests. Root; run it in a network namespace that has
    /// traffic and a conntrack rule.
    CaptureCtnetlink {
        /// Folder for the files.
        #[arg(long)]
        out: PathBuf,
        /// Seconds of events to record.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
    },
    /// Run the benchmark suite and print the table for BENCHMARKS.md.
    Bench {
        /// The floodgate binary (build it with --release first).
        #[arg(long, default_value = "target/release/floodgate")]
        floodgate: PathBuf,
        /// Etsy statsd 0.9.0's unpacked npm package.
        #[arg(long, default_value = "target/peers/statsd-0.9.0")]
        etsy: PathBuf,
        /// Another floodgate build to measure beside this one (`hotpath`, `attack`): the
        /// build before a change, for before/after figures in one run.
        #[arg(long)]
        baseline: Option<PathBuf>,
        /// Seconds per trial.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Which parts: sink, floodgate, etsy, headroom (two senders), memory, cpu, guard (its
        /// cost and drop path), sources (memory with 1M spoofed sources; root, netns),
        /// aggregator (merge rate from 10 agents over TLS), forward (3 agents → aggregator →
        /// Carbon stand-in at 1M metrics/s), syslog (TCP/TLS against rsyslog), syslogudp (UDP against
        /// the raw sink, sustained and drained), proxy (syslog TCP with and without PROXY headers), conntrack (100k
        /// entries, 5k new/s; root, netns), hotpath (lines per
        /// CPU-second draining a full 1 GiB socket buffer; root), spread (one client
        /// socket drained by one receive thread, by two, by two with `receive_spread`; root),
        /// attack (what each listener's
        /// attacks cost in memory), uds (StatsD over a Unix datagram socket vs loopback UDP),
        /// prometheus (a 50-rule mapping file's cost per line; scraping 100k histogram series),
        /// scrape (scrapes that merge the receive shards, against `--baseline`),
        /// kernel (the guard's eBPF layer: CPU per dropped datagram, the largest flood a
        /// legitimate sender survives at 10 % of a core; root), fanout (Graphite: one Carbon vs
        /// three sharded by Carbon's ring), cthealth (the conntrack table's health read with
        /// 100k entries; root, netns), otlp (OTLP vs remote-write per flush), cardinality (series
        /// budgets and attribution on vs off at 1M lines/s; attribution memory at 10M names).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "sink,floodgate,etsy,headroom,memory,cpu,guard,sources,aggregator,forward,syslog,syslogudp,proxy,nats,shared,paced,conntrack,hotpath,spread,attack,uds,prometheus,kernel,fanout,cthealth"
        )]
        only: Vec<String>,
        /// Lines per datagram to measure.
        #[arg(long, value_delimiter = ',', default_value = "1,20")]
        lines: Vec<usize>,
    },
}

fn main() {
    match Cli::parse().command {
        Command::Send { target, rate, lines, cardinality, threads, sources, mix, duration } => {
            let load = sender::Load { rate, lines, cardinality, threads, sources, prefix: "load".into(), mix };
            let stats = sender::send(target, &load, Duration::from_secs_f64(duration), "send");
            println!(
                "{{\"lines\": {}, \"counter_increments\": {}, \"datagrams\": {}, \"seconds\": {:.3}, \"lines_per_second\": {:.0}}}",
                stats.lines,
                stats.counters,
                stats.datagrams,
                stats.elapsed.as_secs_f64(),
                stats.lines as f64 / stats.elapsed.as_secs_f64()
            );
        }
        Command::Parse { lines, cardinality, duration, stages } => {
            let load = sender::Load::counters(0, lines, cardinality, 1, "load");
            if stages {
                for (stage, ns) in targets::parse_stages(&load, Duration::from_secs_f64(duration)) {
                    println!("{{\"stage\": \"{stage}\", \"ns_per_line\": {ns:.2}}}");
                }
                return;
            }
            let rate = targets::parse_capacity(&load, Duration::from_secs_f64(duration));
            println!("{{\"lines_per_datagram\": {lines}, \"lines_per_second_one_core\": {rate:.0}}}");
        }
        Command::ParseSyslog { duration } => {
            let rate = syslog::parse_capacity(Duration::from_secs_f64(duration));
            println!("{{\"messages_per_second_one_core\": {rate:.0}, \"ns_per_message\": {:.1}}}", 1e9 / rate);
        }
        Command::RawRecv { port, buffer, count } => raw_recv(port, buffer, &count),
        Command::CaptureCtnetlink { out, seconds } => capture_ctnetlink(&out, Duration::from_secs_f64(seconds)),
        Command::Bench { floodgate, etsy, baseline, duration, only, lines } => {
            targets::bench(&targets::BenchOptions {
                floodgate,
                baseline,
                etsy,
                trial: Duration::from_secs_f64(duration),
                only,
                lines,
            });
        }
    }
}

/// `raw-recv`: read and count, nothing else.
fn raw_recv(port: u16, buffer: usize, count: &std::path::Path) {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let socket = floodgate::sys::UdpReceiver::bind(addr, buffer, Duration::from_millis(100)).expect("bind");
    let total = std::sync::Arc::new(AtomicU64::new(0));
    let (seen, path) = (total.clone(), count.to_path_buf());
    std::thread::spawn(move || loop {
        let _ = std::fs::write(&path, seen.load(Relaxed).to_string());
        std::thread::sleep(Duration::from_millis(100));
    });
    let _ = std::fs::write(count, "0");
    let mut batch = floodgate::sys::RecvBatch::new(64, 65_536);
    loop {
        if let Ok(n) = batch.recv(socket.fd()) {
            total.fetch_add(n as u64, Relaxed);
        }
    }
}

/// `capture-ctnetlink`: the kernel's bytes, as they come, one file per receive.
fn capture_ctnetlink(out: &std::path::Path, seconds: Duration) {
    use floodgate::sys::NetlinkSocket;
    use floodgate_conntrack::ctnetlink::{self, GROUP_DESTROY, GROUP_NEW, GROUP_UPDATE};
    std::fs::create_dir_all(out).expect("create the output folder");
    let events =
        NetlinkSocket::netfilter(&[GROUP_NEW, GROUP_UPDATE, GROUP_DESTROY], 4 << 20, Duration::from_millis(200))
            .expect("ctnetlink (root, conntrack loaded)");
    let mut buf = vec![0u8; 1 << 20];
    let start = std::time::Instant::now();
    let mut n = 0;
    while start.elapsed() < seconds {
        if let Ok(len) = events.recv(&mut buf) {
            std::fs::write(out.join(format!("events-{n:03}.bin")), &buf[..len]).unwrap();
            n += 1;
        }
    }
    let dumps = NetlinkSocket::netfilter(&[], 4 << 20, Duration::from_secs(2)).unwrap();
    dumps.send(&ctnetlink::dump_request(1, 0)).unwrap();
    let mut d = 0;
    while let Ok(len) = dumps.recv(&mut buf) {
        std::fs::write(out.join(format!("dump-{d:03}.bin")), &buf[..len]).unwrap();
        d += 1;
        // NLMSG_DONE (type 3) ends the dump.
        if len >= 6 && u16::from_ne_bytes([buf[4], buf[5]]) == 3 {
            break;
        }
    }
    println!("{n} event buffers, {d} dump buffers in {}", out.display());
}
