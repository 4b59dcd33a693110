//! `[limits] tcp_per_source`: stream senders paced, not dropped. A sender at full speed over
//! TCP is held to its rate by floodgate reading it more slowly (its kernel then blocks its
//! writes); everything it sent arrives, in order, later; a quiet sender on another connection
//! is not slowed by it. Records are forwarded to a receiver in the test, which notes when
//! each arrives.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;

const RATE: f64 = 20_000.0;
const FLOOD: usize = 120_000;
const QUIET: usize = 400;

/// Receives the forward output (octet-counted frames): each message with its arrival time.
fn receive(listener: TcpListener, got: Arc<Mutex<Vec<(Instant, String)>>>) {
    let (stream, _) = listener.accept().unwrap();
    let mut reader = BufReader::new(stream);
    let mut len = Vec::new();
    loop {
        len.clear();
        if reader.read_until(b' ', &mut len).unwrap_or(0) == 0 {
            return;
        }
        let n: usize = std::str::from_utf8(&len[..len.len() - 1]).unwrap().parse().unwrap();
        let mut frame = vec![0u8; n];
        reader.read_exact(&mut frame).unwrap();
        got.lock().unwrap().push((Instant::now(), String::from_utf8(frame).unwrap()));
    }
}

fn connect(from: [u8; 4], port: u16) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from((from, 0)).into()).unwrap();
    socket.connect(&SocketAddr::from(([127, 0, 0, 1], port)).into()).unwrap();
    socket.into()
}

#[test]
fn a_stream_sender_is_paced_to_its_rate_and_loses_nothing() {
    let receiver = TcpListener::bind("127.0.0.1:0").unwrap();
    let to = receiver.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let arrivals = got.clone();
    std::thread::spawn(move || receive(receiver, arrivals));
    let port = free_port();
    // The defaults, but: syslog on one TCP listener, records forwarded to the test's
    // receiver, the pacing on, and this host's addresses taken as sources of their own (the
    // two senders are two processes of one host here).
    let fg = Floodgate::start(
        "",
        &format!(
            "[limits]\ntcp_per_source = {RATE}\nlocal_senders = \"by_address\"\n\
             [syslog]\nudp = []\ntcp = [\"127.0.0.1:{port}\"]\noutput = {{ kind = \"forward\", address = \"{to}\" }}\n"
        ),
    );

    // The flood: 200-byte messages as fast as the socket takes them, from 127.0.0.2.
    let flooder = std::thread::spawn(move || {
        let mut s = connect([127, 0, 0, 2], port);
        let mut batch = Vec::new();
        for i in 0..FLOOD {
            batch.extend_from_slice(format!("<13>flood-{i:07} {:180}\n", "").as_bytes());
            if batch.len() > 64 * 1024 {
                s.write_all(&batch).unwrap();
                batch.clear();
            }
        }
        s.write_all(&batch).unwrap();
    });
    // The quiet sender: a message every 10 ms from 127.0.0.3, each its send time noted.
    let quiet = std::thread::spawn(move || {
        let mut s = connect([127, 0, 0, 3], port);
        s.set_nodelay(true).unwrap();
        (0..QUIET)
            .map(|i| {
                std::thread::sleep(Duration::from_millis(10));
                let sent = Instant::now();
                s.write_all(format!("<13>quiet-{i:05}\n").as_bytes()).unwrap();
                sent
            })
            .collect::<Vec<Instant>>()
    });
    let sent_quiet = quiet.join().unwrap();
    flooder.join().unwrap();
    wait_until("every message forwarded", Duration::from_secs(60), || {
        let n = got.lock().unwrap().len();
        (n == FLOOD + QUIET).then_some(()).ok_or(format!("{n} of {}", FLOOD + QUIET))
    });
    let got = got.lock().unwrap();

    // All of the flood, in order.
    let flood: Vec<&(Instant, String)> = got.iter().filter(|(_, m)| m.contains("flood-")).collect();
    assert_eq!(flood.len(), FLOOD);
    for (i, (_, m)) in flood.iter().enumerate() {
        assert!(m.contains(&format!("flood-{i:07} ")), "#{i}: {m}");
    }
    // Held to its rate: from 1.5 s after its first message (its burst of one second's worth
    // taken), for three seconds.
    let start = flood[0].0 + Duration::from_millis(1500);
    let end = start + Duration::from_secs(3);
    let in_window = flood.iter().filter(|(t, _)| *t >= start && *t < end).count() as f64 / 3.0;
    eprintln!("flood: {in_window:.0}/s over 3 s, all {FLOOD} in {:?}", flood[FLOOD - 1].0 - flood[0].0);
    assert!((in_window - RATE).abs() <= RATE * 0.05, "paced at {in_window:.0}/s, limit {RATE}");

    // The quiet sender: every message, each within 50 ms at p99.
    let mut latencies: Vec<Duration> = got
        .iter()
        .filter_map(|(t, m)| {
            let i: usize = m.split("quiet-").nth(1)?.trim().parse().ok()?;
            Some(t.saturating_duration_since(sent_quiet[i]))
        })
        .collect();
    assert_eq!(latencies.len(), QUIET);
    latencies.sort();
    let p99 = latencies[QUIET * 99 / 100];
    eprintln!("quiet sender: p50 {:?}, p99 {p99:?}", latencies[QUIET / 2]);
    assert!(p99 < Duration::from_millis(50), "quiet sender p99 {p99:?}");

    // Counted as paced time, not as drops.
    let m = fg.self_metrics();
    assert!(sample(&m, "floodgate_paced_seconds_total", &["listener=\"syslog_tcp\""]) > 1.0, "{m}");
    assert_eq!(metric(&m, "floodgate_dropped_total", &["listener=\"syslog_tcp\"", "reason=\"source_limit\""]), None);
}

/// StatsD over TCP is paced the same way. 20,000 lines sent at once against 5,000/s: all are
/// counted, and not before (20,000 − a second's burst − one read's worth) / 5,000 s. A read
/// (64 KiB: it must hold a longest line, about 4,096 of these lines) is admitted whole, and the
/// wait comes before the next one.
#[test]
fn statsd_over_tcp_is_paced_and_loses_nothing() {
    // The defaults, but the pacing on.
    let fg = Floodgate::start("", "[limits]\ntcp_per_source = 5000\n");
    let text: String = (0..20_000).map(|_| "paced.lines:1|c\n").collect();
    let start = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", fg.statsd)).unwrap();
    s.write_all(text.as_bytes()).unwrap();
    drop(s);
    fg.wait_counter("paced.lines", "20000");
    let took = start.elapsed();
    let least = Duration::from_secs_f64((20_000.0 - 5_000.0 - 65_537.0 / 16.0) / 5_000.0);
    assert!(took >= least, "20,000 lines at 5,000/s took {took:?}, less than {least:?}");
    assert!(fg.sample("floodgate_paced_seconds_total", &["listener=\"statsd_tcp\""]) > 1.0);
}
