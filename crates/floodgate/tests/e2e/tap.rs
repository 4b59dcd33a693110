//! The tap (`floodgate tap`, `GET /api/tap`): a filtered tap sees exactly the lines that
//! match, each with what became of it; a tap client that stops reading never slows ingestion,
//! and is cut off after `header_timeout`; syslog records from util-linux `logger` show with
//! their program.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(30);

/// `floodgate tap --json` against a running floodgate, its events read on a thread.
struct TapCli {
    child: Child,
    events: mpsc::Receiver<Value>,
}

impl TapCli {
    /// Starts it with `args` and returns once it says it is watching (the server has added the
    /// viewer before it answers, so every line sent after this is offered to it).
    fn start(http: u16, args: &[&str]) -> TapCli {
        let mut child = Command::new(env!("CARGO_BIN_EXE_floodgate"))
            .args(["tap", "--json", "--http", &format!("127.0.0.1:{http}")])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("floodgate tap");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        assert!(line.contains("watching"), "floodgate tap did not start: {line}");
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        let stdout = child.stdout.take().unwrap();
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(serde_json::from_str(&line).expect("an event as JSON")).is_err() {
                    return;
                }
            }
        });
        TapCli { child, events }
    }

    /// The next `n` events (fails after [`WAIT`]).
    fn take(&self, n: usize) -> Vec<Value> {
        (0..n).map(|i| self.events.recv_timeout(WAIT).unwrap_or_else(|_| panic!("event {i} of {n}"))).collect()
    }
}

impl Drop for TapCli {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn send_from(source: &str, to: u16, lines: &[String], per_datagram: usize) {
    let socket = UdpSocket::bind((source, 0)).unwrap();
    for chunk in lines.chunks(per_datagram) {
        socket.send_to(chunk.join("\n").as_bytes(), ("127.0.0.1", to)).unwrap();
    }
}

fn texts(events: &[Value]) -> std::collections::BTreeSet<String> {
    events.iter().map(|e| e["text"].as_str().unwrap().to_string()).collect()
}

/// Three senders, two of them sending both names the filter wants and names it does not. The
/// filter (`--listener statsd_udp --source 127.0.0.2 --name 'api.*'`) must pass exactly the
/// `api.*` lines of 127.0.0.2. The defaults hold, but for the tap's rate: 1,000 a second, so
/// the test sees every line rather than a sample.
#[test]
fn a_filtered_tap_sees_exactly_the_lines_that_match() {
    let fg = Floodgate::start("", "");
    let filtered = TapCli::start(
        fg.http,
        &["--listener", "statsd_udp", "--source", "127.0.0.2", "--name", "api.*", "--rate", "1000"],
    );
    // A second viewer of the other sender only: once it has seen all of that sender's lines,
    // they have all been offered, and none went to the first viewer.
    let other = TapCli::start(fg.http, &["--source", "127.0.0.3", "--rate", "1000"]);
    let wanted: Vec<String> = (0..60).map(|i| format!("api.requests.{i}:{i}|c")).collect();
    let mut mixed = Vec::new();
    for (i, line) in wanted.iter().enumerate() {
        mixed.push(line.clone());
        mixed.push(format!("web.requests.{i}:1|c"));
        mixed.push(format!("apix.{i}:1|g"));
    }
    send_from("127.0.0.2", fg.statsd, &mixed, 7);
    let elsewhere: Vec<String> = (0..40).map(|i| format!("api.requests.{i}:1|c")).collect();
    send_from("127.0.0.3", fg.statsd, &elsewhere, 5);
    // The same api.* names over TCP from 127.0.0.2's neighbour and from 127.0.0.1: another
    // listener and other sources.
    TcpStream::connect(("127.0.0.1", fg.statsd)).unwrap().write_all(b"api.requests.1:1|c\n").unwrap();
    let seen_elsewhere = other.take(40);
    assert_eq!(texts(&seen_elsewhere), elsewhere.iter().cloned().collect());
    assert!(seen_elsewhere.iter().all(|e| e["source"].as_str().unwrap().starts_with("127.0.0.3:")));
    // The last line, from the same socket as the others (so after them on its receive thread).
    send_from("127.0.0.2", fg.statsd, &["api.end:1|c".to_string()], 1);
    let events = filtered.take(wanted.len() + 1);
    let mut expected: std::collections::BTreeSet<String> = wanted.iter().cloned().collect();
    expected.insert("api.end:1|c".into());
    assert_eq!(texts(&events), expected, "exactly the api.* lines of 127.0.0.2");
    for e in &events {
        assert_eq!(e["listener"], "statsd_udp");
        assert!(e["source"].as_str().unwrap().starts_with("127.0.0.2:"), "{e}");
        assert_eq!(e["decision"], "admitted", "{e}");
        assert!(e["name"].as_str().unwrap().starts_with("api."), "{e}");
    }
    assert!(filtered.events.recv_timeout(Duration::from_millis(500)).is_err(), "nothing more");
}

/// Each line with its decision: admitted; dropped by the sender's series budget (with the
/// budget named); dropped by the guard's per-source rate. Changed from the defaults: a series
/// budget of 5 and a rate of 10 lines a second (small enough to reach with a few lines),
/// local addresses as separate senders (two loopback addresses stand for two hosts), and the
/// guard's kernel layer off: a datagram it drops never reaches floodgate, so no tap could
/// show it.
#[test]
fn each_line_shows_what_became_of_it() {
    let fg = Floodgate::start(
        "",
        "[limits]\nseries_per_source = 5\nlocal_senders = \"by_address\"\nkernel = \"off\"\nudp_per_source = 10\nudp_per_port = 0\n",
    );
    let tap = TapCli::start(fg.http, &["--listener", "statsd", "--rate", "1000"]);
    let lines: Vec<String> = (0..8).map(|i| format!("budget.s{i}:1|c")).collect();
    // One datagram of 8 lines: 8 of the source's 10 a second, every line admitted by the guard.
    send_from("127.0.0.2", fg.statsd, &lines, 8);
    let events = tap.take(8);
    let admitted: Vec<&Value> = events.iter().filter(|e| e["decision"] == "admitted").collect();
    let dropped: Vec<&Value> = events.iter().filter(|e| e["decision"] == "dropped").collect();
    assert_eq!((admitted.len(), dropped.len()), (5, 3), "{events:#?}");
    for d in &dropped {
        assert_eq!(d["reason"], "series_budget");
        assert!(d["why"].as_str().unwrap().contains("series_per_source = 5"), "{d}");
    }
    // Another sender, over its rate: 30 lines in one second from 127.0.0.4.
    let flood: Vec<String> = (0..30).map(|_| "budget.s0:1|c".to_string()).collect();
    send_from("127.0.0.4", fg.statsd, &flood, 1);
    let events = tap.take(30);
    let limited = events.iter().filter(|e| e["reason"] == "source_limit").count();
    assert!(limited >= 15, "most of the 30 over the 10 a second: {events:#?}");
    assert!(events
        .iter()
        .filter(|e| e["reason"] == "source_limit")
        .all(|e| e["why"].as_str().unwrap().contains("per-source")));
}

/// A viewer that stops reading: ingestion goes on at full count, the viewer's events are
/// skipped or missed (counted, never waited for), and the viewer is cut off once its response
/// has gone unread for `header_timeout`. Changed from the defaults: `header_timeout` = 1 s,
/// so the test does not wait 10 s for the cut.
#[test]
fn a_tap_client_that_stops_reading_never_slows_ingestion() {
    let fg = Floodgate::start("", "[http]\nheader_timeout = \"1s\"\n");
    let mut stalled = TcpStream::connect(("127.0.0.1", fg.http)).unwrap();
    socket2::SockRef::from(&stalled).set_recv_buffer_size(4096).unwrap();
    stalled.write_all(b"GET /api/tap?rate=1000 HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut head = [0u8; 12];
    stalled.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.0 200", "the tap answered");
    fg.wait_sample("floodgate_tap_viewers", &[], |v| v == 1.0);
    // 200,000 lines over TCP (no loss on the way: every one must be counted), each offered to
    // the viewer that does not read.
    let mut tcp = TcpStream::connect(("127.0.0.1", fg.statsd)).unwrap();
    let block: String = (0..1000).map(|i| format!("tapped.{i}:1|c\n")).collect();
    let started = std::time::Instant::now();
    for _ in 0..200 {
        tcp.write_all(block.as_bytes()).unwrap();
    }
    drop(tcp);
    fg.wait_sample("floodgate_received_lines_total", &["listener=\"statsd_tcp\""], |v| v == 200_000.0);
    let taken = started.elapsed();
    // The viewer is cut off while its client still holds the connection open.
    fg.wait_sample("floodgate_tap_viewers", &[], |v| v == 0.0);
    let metrics = fg.self_metrics();
    let outcome = |o: &str| sample(&metrics, "floodgate_tap_events_total", &[&format!("outcome=\"{o}\"")]);
    assert_eq!(outcome("sent") + outcome("skipped") + outcome("missed"), 200_000.0, "every line offered once");
    // At most its rate a second, and at most its queue beyond what the sockets took.
    let seconds = taken.as_secs_f64().ceil() + 1.0;
    assert!(outcome("sent") <= 1000.0 * seconds, "sent {} in {taken:?}", outcome("sent"));
    drop(stalled);
}

/// Syslog from util-linux `logger` over TCP, shown with its program; the filter's glob is on
/// the program name.
#[test]
fn syslog_records_show_with_their_program() {
    let fg = Floodgate::start("", "");
    let tap = TapCli::start(fg.http, &["--listener", "syslog", "--name", "billing*"]);
    let logger = require_tool("logger");
    for (tag, message) in [("web", "not shown"), ("billing-worker", "invoice 7 sent")] {
        let status = Command::new(&logger)
            .args(["--server", "127.0.0.1", "--port", &fg.syslog.to_string(), "--tcp", "--rfc5424", "-t", tag, message])
            .status()
            .unwrap();
        assert!(status.success());
    }
    let e = &tap.take(1)[0];
    assert_eq!(e["listener"], "syslog_tcp");
    assert_eq!(e["name"], "billing-worker");
    assert!(e["text"].as_str().unwrap().ends_with("invoice 7 sent"), "{e}");
    assert_eq!(e["decision"], "admitted");
    assert!(tap.events.recv_timeout(Duration::from_millis(500)).is_err(), "the web record is not shown");
}
