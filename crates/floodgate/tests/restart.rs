//! Nothing accepted is lost at a restart: what TCP senders already sent is in the final flush,
//! the syslog spill file is replayed by the next run, an agent's unacknowledged batches are
//! kept on disk and sent again after it restarts.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

fn metrics(fg: &Floodgate) -> String {
    http_get(fg.http, "/metrics?only=floodgate").unwrap().1
}

/// Data a TCP sender wrote before SIGTERM — a last line without its newline, and bytes still in
/// the socket's receive queue — is in the final flush.
#[test]
fn what_tcp_senders_sent_before_sigterm_is_flushed() {
    let carbon = Capture::start();
    let mut fg =
        Floodgate::start("flush_interval = \"1h\"", &format!("[graphite]\naddress = \"127.0.0.1:{}\"\n", carbon.port));
    let mut a = TcpStream::connect(("127.0.0.1", fg.statsd)).unwrap();
    let first = b"tcp.a:1|c\ntcp.partial:5|c";
    a.write_all(first).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&metrics(&fg), "floodgate_received_bytes_total", &["listener=\"statsd_tcp\""])
        < Some(first.len() as f64)
    {
        assert!(Instant::now() < deadline, "floodgate never read the bytes");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Written, then SIGTERM at once: still in the kernel's queue for floodgate to read.
    let mut b = TcpStream::connect(("127.0.0.1", fg.statsd)).unwrap();
    b.write_all(b"tcp.late:2|c\n").unwrap();
    assert_eq!(fg.terminate(), Some(0));
    let payload = carbon.wait_for(Duration::from_secs(30), |p| has(p, "stats_counts.tcp.a", "1"));
    let lines = parse_plaintext(&payload);
    assert_eq!(value_of(&lines, "stats_counts.tcp.partial"), Some("5"), "the line cut by the shutdown");
    assert_eq!(value_of(&lines, "stats_counts.tcp.late"), Some("2"), "the bytes not yet read");
    drop((a, b));
}
