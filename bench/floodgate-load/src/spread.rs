//! `--only spread`: one client socket, read by one receive thread or spread over two
//! (`receive_spread`). The drain method of `hotpath`: floodgate is stopped with a 1 GiB buffer
//! per socket, one socket of the sender queues the datagrams (the spread program chooses the
//! socket as each is queued), then floodgate is resumed; the figure is datagrams per
//! wall-second from the resume to the last datagram read, so what counts is how many threads
//! read at once. Lines counted by floodgate are checked against lines sent.

use std::time::{Duration, Instant};

use crate::hostile::{read_datagrams, signal};
use crate::targets::{free_port, metric_sum, spawn_with, BenchOptions, GUARD_OFF};

/// Datagrams per trial (a 1 GiB buffer holds about 450,000 whatever their size).
const DATAGRAMS: usize = 400_000;

struct Trial {
    wall: f64,
    spread: f64,
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
    let pid = fg.child.id();
    signal(pid, "STOP");
    let socket = std::net::UdpSocket::bind("127.0.0.2:0").unwrap();
    for i in 0..DATAGRAMS {
        let _ = socket.send_to(&pool[i % pool.len()].bytes, ("127.0.0.1", fg.port));
    }
    let start = Instant::now();
    signal(pid, "CONT");
    let mut last = (start, 0.0);
    loop {
        // Each look is a scrape: not so often that it takes the threads' time.
        std::thread::sleep(Duration::from_millis(20));
        let n = read_datagrams(http);
        if n != last.1 {
            last = (Instant::now(), n);
        }
        if n >= DATAGRAMS as f64 || last.0.elapsed() > Duration::from_millis(500) {
            break;
        }
    }
    let lines_read = metric_sum(http, "floodgate_received_lines_total{", &["statsd_udp"]);
    let spread_count = metric_sum(http, "floodgate_udp_spread_datagrams_total{", &[]);
    drop(fg);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(last.1 as usize, DATAGRAMS, "datagrams read");
    assert_eq!(lines_read as usize, DATAGRAMS * lines, "lines counted");
    Trial { wall: last.0.duration_since(start).as_secs_f64(), spread: spread_count }
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
        let mut walls = vec![Vec::new(); setups.len()];
        let mut spread_share = 0.0;
        for round in 0..5 {
            for (s, (threads, mode, name)) in setups.iter().enumerate() {
                let t = trial(opts, lines, *threads, mode);
                eprintln!("  round {round}, {lines} line(s): {name}: {:.3} s, {} spread", t.wall, t.spread);
                if *mode == "auto" {
                    spread_share = t.spread / DATAGRAMS as f64;
                }
                walls[s].push(t.wall);
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        };
        let medians: Vec<f64> = walls.iter_mut().map(median).collect();
        println!("| lines/datagram | setup | datagrams per wall-second (median of 5) | vs 1 thread |");
        println!("|---|---|---|---|");
        for (s, (_, _, name)) in setups.iter().enumerate() {
            println!(
                "| {lines} | {name} | {:.2}M | {:.2}× |",
                DATAGRAMS as f64 / medians[s] / 1e6,
                medians[0] / medians[s]
            );
        }
        println!(
            "\nWith the spread, {:.1} % of the datagrams were spread (the rest came before the flow was hot).\n",
            spread_share * 100.0
        );
    }
}
