//! `--only spread`: one client socket, read by one receive thread or spread over two
//! (`receive_spread`). The drain method of `hotpath`: floodgate is stopped with a 1 GiB buffer
//! per socket, one socket of the sender queues the datagrams (the spread program chooses the
//! socket as each is queued), then floodgate is resumed; the figure is datagrams per
//! wall-second from the resume to the last CPU the receive threads used (watched in `/proc`),
//! so what counts is how many threads read at once. Datagrams and lines counted by floodgate
//! are checked against those sent.

use std::time::{Duration, Instant};

use crate::hostile::{queue, read_datagrams, signal};
use crate::targets::{free_port, metric_sum, spawn_with, threads_cpu_ns, BenchOptions, GUARD_OFF};

/// Datagrams per trial (a 1 GiB buffer holds about 450,000 whatever their size).
const DATAGRAMS: usize = 400_000;

struct Trial {
    wall: f64,
    spread: f64,
    /// CPU-seconds to queue the datagrams (the kernel's receive path, the program included).
    queue: f64,
}

fn trial(opts: &BenchOptions, lines: usize, threads: usize, spread: &str) -> Trial {
    let dir = std::env::temp_dir().join(format!("floodgate-spread-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let fg = spawn_with(
        &opts.floodgate,
        &dir,
        "spread",
        &format!(
            "flush_interval = \"1h\"\nreceive_threads = {threads}\nreceive_spread = \"{spread}\"\nreceive_buffer = \"1GiB\""
        ),
        &format!("{GUARD_OFF}[conntrack]\nenabled = false\n"),
    );
    let http = fg.http.unwrap_or(0);
    let load = crate::sender::Load::counters(0, lines, 1000, 1, "load");
    let pool = crate::sender::pool(&load);
    let payloads: Vec<&[u8]> = pool.iter().map(|d| d.bytes.as_slice()).collect();
    let pid = fg.child.id();
    let queue_cpu = queue(pid, fg.port, &payloads, DATAGRAMS);
    let start = Instant::now();
    signal(pid, "CONT");
    // The drain has ended when the receive threads stop using CPU: watched in /proc every
    // millisecond (a scrape that often would take the threads' CPU), then the count checked.
    // (An idle thread wakes every 200 ms for a few microseconds: a millisecond with less than
    // 100 µs of CPU is idle.)
    let (mut busy_until, mut before) = (start, threads_cpu_ns(pid, "statsd_udp"));
    loop {
        std::thread::sleep(Duration::from_millis(1));
        let cpu = threads_cpu_ns(pid, "statsd_udp");
        if cpu.saturating_sub(before) > 100_000 {
            busy_until = Instant::now();
        }
        before = cpu;
        if busy_until.elapsed() > Duration::from_millis(300) {
            break;
        }
    }
    let read = read_datagrams(http);
    let lines_read = metric_sum(http, "floodgate_received_lines_total{", &["statsd_udp"]);
    let spread_count = metric_sum(http, "floodgate_udp_spread_datagrams_total{", &[]);
    drop(fg);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(read as usize, DATAGRAMS, "datagrams read");
    assert_eq!(lines_read as usize, DATAGRAMS * lines, "lines counted");
    Trial { wall: busy_until.duration_since(start).as_secs_f64(), spread: spread_count, queue: queue_cpu }
}

/// One sender socket: 1 receive thread, 2 without the spread, 2 with it.
pub fn spread(opts: &BenchOptions) {
    println!("\n## One client socket over the receive threads ({DATAGRAMS} datagrams from one socket queued while floodgate is stopped, then drained; guard off)\n");
    let setups = [
        (1usize, "off", "1 thread"),
        (2, "off", "2 threads, receive_spread = \"off\""),
        (2, "auto", "2 threads, receive_spread = \"auto\""),
    ];
    for &lines in &opts.lines {
        let (mut walls, mut queues) = (vec![Vec::new(); setups.len()], vec![Vec::new(); setups.len()]);
        let mut spread_share = 0.0;
        for round in 0..5 {
            for (s, (threads, mode, name)) in setups.iter().enumerate() {
                let t = trial(opts, lines, *threads, mode);
                eprintln!("  round {round}, {lines} line(s): {name}: {:.3} s, {} spread", t.wall, t.spread);
                if *mode == "auto" {
                    spread_share = t.spread / DATAGRAMS as f64;
                }
                walls[s].push(t.wall);
                queues[s].push(t.queue);
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        };
        let medians: Vec<f64> = walls.iter_mut().map(median).collect();
        let queued: Vec<f64> = queues.iter_mut().map(median).collect();
        println!("| lines/datagram | setup | datagrams per wall-second (median of 5) | vs 1 thread | sender's CPU to queue a datagram (kernel receive path, program included) |");
        println!("|---|---|---|---|---|");
        for (s, (_, _, name)) in setups.iter().enumerate() {
            println!(
                "| {lines} | {name} | {:.2}M | {:.2}× | {:.0} ns |",
                DATAGRAMS as f64 / medians[s] / 1e6,
                medians[0] / medians[s],
                queued[s] / DATAGRAMS as f64 * 1e9
            );
        }
        println!(
            "\nWith the spread, {:.1} % of the datagrams were spread (the rest came before the flow was hot).\n",
            spread_share * 100.0
        );
    }
}
