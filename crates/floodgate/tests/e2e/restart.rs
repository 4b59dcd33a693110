//! Nothing accepted is lost at a restart: what TCP senders already sent is in the final flush,
//! the syslog spill file is replayed by the next run, an agent's unacknowledged batches are
//! kept on disk and sent again after it restarts.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use crate::common::*;

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
    fg.wait_sample("floodgate_received_bytes_total", &["listener=\"statsd_tcp\""], |v| v >= first.len() as f64);
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

/// An agent SIGKILLed after flushing while its aggregator is unreachable, then both started:
/// the batches it had journaled reach Carbon, each increment exactly once.
#[test]
fn an_agents_journaled_batches_survive_a_crash() {
    let carbon = Carbon::start();
    let port = free_port();
    let mut agent = Floodgate::start(
        "flush_interval = \"1s\"",
        &format!("[forward]\naggregators = [\"127.0.0.1:{port}\"]\nagent_id = \"crashy\"\n"),
    );
    let flushes = |fg: &Floodgate| metric(&fg.self_metrics(), "floodgate_flushes_total", &[]).unwrap_or(0.0);
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let n = 300;
    for _ in 0..n {
        sender.send_to(b"journal.hits:1|c", ("127.0.0.1", agent.statsd)).unwrap();
    }
    sender.send_to(b"journal.sent:1|c", ("127.0.0.1", agent.statsd)).unwrap();
    agent.wait_counter("journal.sent", "1");
    // Two flushes later everything sent is in a batch, on disk.
    let seen = flushes(&agent);
    agent.wait_sample("floodgate_flushes_total", &[], |n| n >= seen + 2.0);
    assert!(agent.sample("floodgate_forward_queued_batches", &[]) >= 1.0);
    agent.kill();
    let dir = tempfile::tempdir().unwrap();
    let _aggregator = Floodgate::start(
        "flush_interval = \"1s\"",
        &format!(
            "[graphite]\naddress = \"127.0.0.1:{}\"\n\n[aggregator]\nlisten = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\n",
            carbon.line_port,
            dir.path().display()
        ),
    );
    agent.respawn();
    assert!(agent.stderr().contains("sending them again"), "{}", agent.stderr());
    let points = carbon.wait("stats_counts.journal.hits", |p| p.iter().sum::<f64>() >= n as f64);
    agent.wait_sample("floodgate_forward_queued_batches", &[], |v| v == 0.0);
    // Two more flushes written (each writes a point, 0 or not): a doubled batch would be in them.
    let points = carbon.wait("stats_counts.journal.hits", |p| p.len() >= points.len() + 2);
    assert_eq!(points.iter().sum::<f64>(), n as f64, "{points:?}");
}
