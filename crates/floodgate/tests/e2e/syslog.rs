//! Syslog end to end: real `logger` and rsyslog as clients, rsyslog as the forward target,
//! 100,000 messages exactly once over TCP and TLS, and bad input of every kind.

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

/// floodgate with syslog on UDP and TCP at `port` (and `extra` inside `[syslog]`), writing to
/// `out` (a file) unless `extra` sets the output.
fn start(port: u16, out: &Path, extra: &str, sections: &str) -> Floodgate {
    let output = if extra.contains("output") {
        String::new()
    } else {
        format!("output = {{ kind = \"file\", path = \"{}\" }}\n", out.display())
    };
    Floodgate::start(
        "",
        &format!("[syslog]\nudp = [\"127.0.0.1:{port}\"]\ntcp = [\"127.0.0.1:{port}\"]\n{output}{extra}\n{sections}"),
    )
}

/// Every complete record in the output file (a last line still being written, without its
/// newline yet, is left for the next read).
fn records(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.split_inclusive('\n')
        .filter_map(|l| l.strip_suffix('\n'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Polls a file until `read` finds at least `n` items in it; returns them.
fn wait_file<T>(path: &Path, n: usize, read: fn(&Path) -> Vec<T>) -> Vec<T> {
    wait_for(&format!("{n} items in {}", path.display()), WAIT, || {
        let items = read(path);
        (items.len() >= n).then_some(items)
    })
}

/// Polls the output file until it holds at least `n` records; returns them.
fn wait_records(path: &Path, n: usize) -> Vec<Value> {
    wait_file(path, n, records)
}

/// A `/metrics` sample (0 when absent).
/// A self-metric that must be exported (a missing one fails the test, never reads as 0).
fn sample(fg: &Floodgate, name: &str, labels: &[&str]) -> f64 {
    fg.sample(name, labels)
}

fn wait_sample(fg: &Floodgate, name: &str, labels: &[&str], want: f64) {
    fg.wait_sample(name, labels, |v| v == want);
}

fn logger(port: u16, args: &[&str], message: &str) {
    let status = Command::new(require_tool("logger"))
        .args(["-n", "127.0.0.1", "-P", &port.to_string()])
        .args(args)
        .arg(message)
        .status()
        .unwrap();
    assert!(status.success(), "logger {args:?}");
}

fn find<'a>(records: &'a [Value], message: &str) -> &'a Value {
    records.iter().find(|r| r["message"] == message).unwrap_or_else(|| panic!("no record `{message}` in {records:#?}"))
}

/// util-linux `logger` over UDP and TCP, RFC 5424 and RFC 3164, newline and octet-counting
/// framing: every field it sets is in the record.
#[test]
fn logger_over_udp_and_tcp_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let port = free_port();
    let fg = start(port, &out, "", "");
    let sd = ["--sd-id", "zoo@32473", "--sd-param", "tiger=\"hungry\"", "--sd-param", "zebra=\"running\""];
    logger(
        port,
        &[&["-d", "--rfc5424", "-t", "app5424", "-p", "local3.warning", "--id=4242", "--msgid", "ID47"][..], &sd]
            .concat(),
        "udp 5424",
    );
    logger(port, &["-d", "--rfc3164", "-t", "app3164", "-p", "mail.err", "--id=77"], "udp 3164");
    logger(port, &["-T", "--rfc5424", "-t", "tcp5424", "-p", "auth.info", "--msgid", "LOGIN"], "tcp 5424");
    logger(port, &["-T", "--rfc3164", "-t", "tcp3164", "-p", "daemon.debug"], "tcp 3164");
    logger(
        port,
        &[&["-T", "--octet-count", "--rfc5424", "-t", "counted", "-p", "local7.crit"][..], &sd].concat(),
        "octet 5424",
    );
    logger(port, &["-T", "--octet-count", "--rfc3164", "-t", "counted3164"], "octet 3164");
    let r = wait_records(&out, 6);
    assert_eq!(r.len(), 6, "{r:#?}");

    let a = find(&r, "udp 5424");
    assert_eq!((a["listener"].as_str(), a["transport"].as_str()), (Some("syslog_udp"), Some("udp")));
    assert_eq!((a["facility"].as_str(), a["severity"].as_str()), (Some("local3"), Some("warning")));
    assert_eq!(
        (a["app_name"].as_str(), a["procid"].as_str(), a["msgid"].as_str()),
        (Some("app5424"), Some("4242"), Some("ID47"))
    );
    assert_eq!(a["structured_data"]["zoo@32473"]["tiger"], "hungry");
    assert_eq!(a["structured_data"]["zoo@32473"]["zebra"], "running");
    assert!(a["timestamp"].as_str().unwrap().starts_with("20"), "{a}");
    assert!(a["source"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(a["received_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(a["parse_error"], Value::Null);
    let host = a["hostname"].as_str().unwrap().to_string();
    assert!(!host.is_empty());

    let b = find(&r, "udp 3164");
    assert_eq!((b["facility"].as_str(), b["severity"].as_str()), (Some("mail"), Some("err")));
    assert_eq!((b["app_name"].as_str(), b["procid"].as_str()), (Some("app3164"), Some("77")));
    assert_eq!(b["hostname"].as_str(), Some(host.as_str()));
    let c = find(&r, "tcp 5424");
    assert_eq!(
        (c["transport"].as_str(), c["facility"].as_str(), c["msgid"].as_str()),
        (Some("tcp"), Some("auth"), Some("LOGIN"))
    );
    let d = find(&r, "tcp 3164");
    assert_eq!((d["app_name"].as_str(), d["severity"].as_str()), (Some("tcp3164"), Some("debug")));
    let e = find(&r, "octet 5424");
    assert_eq!((e["app_name"].as_str(), e["severity"].as_str()), (Some("counted"), Some("crit")));
    assert_eq!(e["structured_data"]["zoo@32473"]["tiger"], "hungry");
    let f = find(&r, "octet 3164");
    assert_eq!(f["app_name"].as_str(), Some("counted3164"));
    for rec in &r {
        assert_eq!(rec["parse_error"], Value::Null, "{rec}");
    }
    let tcp = ["listener=\"syslog_tcp\""];
    assert_eq!(sample(&fg, "floodgate_syslog_messages_total", &tcp), 4.0);
    assert_eq!(sample(&fg, "floodgate_syslog_parsed_total", &tcp), 4.0);
    assert_eq!(sample(&fg, "floodgate_syslog_messages_total", &["listener=\"syslog_udp\""]), 2.0);
    assert_eq!(sample(&fg, "floodgate_syslog_output_messages_total", &[]), 6.0);
}

/// `count` octet-counted messages `<tag>-<i>` in one buffer.
fn numbered(tag: &str, count: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..count {
        let msg = format!("<134>1 2026-11-22T10:00:00Z host app 1 - - {tag}-{i}");
        write!(out, "{} {msg}", msg.len()).unwrap();
    }
    out
}

/// Every `<tag>-<i>` for i < count appears exactly once.
fn assert_exactly_once(records: &[Value], tag: &str, count: usize) {
    let mut seen = vec![0u32; count];
    let prefix = format!("{tag}-");
    for r in records {
        if let Some(i) = r["message"].as_str().and_then(|m| m.strip_prefix(&prefix)) {
            seen[i.parse::<usize>().unwrap()] += 1;
        }
    }
    let missing = seen.iter().filter(|n| **n == 0).count();
    let doubled = seen.iter().filter(|n| **n > 1).count();
    assert_eq!((missing, doubled), (0, 0), "{tag}: {missing} missing, {doubled} more than once");
}

/// 100,000 messages over TCP and 100,000 over mutual TLS: each in the output exactly once.
#[test]
fn hundred_thousand_messages_exactly_once_over_tcp_and_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "syslog");
    let (cert, key) = pki.issue("server", "syslog.test");
    let (ccert, ckey) = pki.issue("client", "client.test");
    let ca = dir.path().join("syslog-ca.pem").display().to_string();
    let out = dir.path().join("out.jsonl");
    let (port, tls_port) = (free_port(), free_port());
    let fg = start(
        port,
        &out,
        &format!("tls = [{{ listen = \"127.0.0.1:{tls_port}\", cert = \"{cert}\", key = \"{key}\", client_ca = \"{ca}\" }}]\n"),
        "",
    );
    const N: usize = 100_000;
    let tcp = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        for piece in numbered("tcp", N).chunks(7919) {
            s.write_all(piece).unwrap();
        }
    });
    let client = tls_client(&ca, Some((&ccert, &ckey)));
    let tls = std::thread::spawn(move || {
        let tcp = TcpStream::connect(("127.0.0.1", tls_port)).unwrap();
        let conn = rustls::ClientConnection::new(client, "syslog.test".try_into().unwrap()).unwrap();
        let mut s = rustls::StreamOwned::new(conn, tcp);
        for piece in numbered("tls", N).chunks(7919) {
            s.write_all(piece).unwrap();
        }
        s.flush().unwrap();
        s.conn.send_close_notify();
        let _ = s.flush();
    });
    tcp.join().unwrap();
    tls.join().unwrap();
    let r = wait_records(&out, 2 * N);
    assert_eq!(r.len(), 2 * N);
    assert_exactly_once(&r, "tcp", N);
    assert_exactly_once(&r, "tls", N);
    assert!(r.iter().any(|x| x["transport"] == "tls" && x["listener"] == "syslog_tls"));
    assert_eq!(sample(&fg, "floodgate_syslog_messages_total", &["listener=\"syslog_tls\""]), N as f64);
    assert_eq!(sample(&fg, "floodgate_tls_handshake_failures_total", &["listener=\"syslog_tls\""]), 0.0);
}

/// SIGTERM right after a sender finished: everything it sent is in the file before exit.
#[test]
fn sigterm_hands_on_everything_held() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let port = free_port();
    let mut fg = start(port, &out, "", "");
    const N: usize = 20_000;
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(&numbered("term", N)).unwrap();
    drop(s);
    assert_eq!(fg.terminate(), Some(0));
    let r = records(&out);
    assert_eq!(r.len(), N);
    assert_exactly_once(&r, "term", N);
}

/// Records gathered over whole receive batches are handed on when the listener goes quiet:
/// 640 datagrams queued while floodgate is stopped are read as ten full batches of 64 (one
/// receive thread, so every read is whole), and nothing follows them. Every record reaches the
/// file without another datagram or a shutdown to push it out.
#[test]
fn records_of_full_batches_are_written_when_the_listener_goes_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let port = free_port();
    // One receive thread: the test needs whole batches of 64 on one socket.
    let fg = start(port, &out, "receive_threads = 1\n", "");
    const N: usize = 640;
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    fg.signal("STOP");
    for i in 0..N {
        let msg = format!("<134>1 2026-11-22T10:00:00Z host app 1 - - quiet-{i}");
        socket.send_to(msg.as_bytes(), ("127.0.0.1", port)).unwrap();
    }
    fg.signal("CONT");
    let r = wait_records(&out, N);
    assert_exactly_once(&r, "quiet", N);
    wait_sample(&fg, "floodgate_received_packets_total", &["listener=\"syslog_udp\""], N as f64);
}

/// A running rsyslogd with its own config, work directory and pid file.
struct Rsyslog {
    child: Child,
    dir: PathBuf,
    conf: PathBuf,
}

impl Rsyslog {
    /// Starts rsyslogd on `body` (module loads, inputs, actions); waits until `port` accepts
    /// when given.
    fn start(dir: &Path, name: &str, body: &str, port: Option<u16>) -> Rsyslog {
        let work = dir.join(format!("{name}-work"));
        std::fs::create_dir_all(&work).unwrap();
        let conf = dir.join(format!("{name}.conf"));
        std::fs::write(&conf, format!("global(workDirectory=\"{}\")\n{body}", work.display())).unwrap();
        let mut r = Rsyslog { child: Self::spawn(dir, name, &conf), dir: dir.to_path_buf(), conf };
        if let Some(port) = port {
            r.wait_port(port);
        }
        r
    }

    fn spawn(dir: &Path, name: &str, conf: &Path) -> Child {
        Command::new(require_tool("rsyslogd"))
            .args(["-n", "-f"])
            .arg(conf)
            .arg("-i")
            .arg(dir.join(format!("{name}.pid")))
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("{name}.log"))).unwrap(),
            )
            .spawn()
            .expect("start rsyslogd")
    }

    fn wait_port(&mut self, port: u16) {
        wait_for(&format!("rsyslogd listening on {port}"), WAIT, || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("rsyslogd exited with {status}; config {}", self.conf.display());
            }
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
    }

    fn stop(&mut self) {
        signal(&self.child, "TERM");
        let _ = self.child.wait();
    }

    fn restart(&mut self, name: &str, port: u16) {
        self.child = Self::spawn(&self.dir, name, &self.conf);
        self.wait_port(port);
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Complete lines of a file (empty when it does not exist yet; a last line still being
/// written is left for the next read).
fn lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.split_inclusive('\n').filter_map(|l| l.strip_suffix('\n')).map(str::to_string).collect()
}

fn wait_lines(path: &Path, n: usize) -> Vec<String> {
    wait_file(path, n, lines)
}

/// rsyslog (Debian, rsyslog-gnutls) relays `logger` messages to floodgate over TLS: with a
/// client certificate to a listener that requires one, and without one to a listener that
/// does not.
#[test]
fn rsyslog_forwards_to_floodgate_over_tls_with_and_without_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "syslog");
    let (cert, key) = pki.issue("server", "syslog.test");
    let (ccert, ckey) = pki.issue("client", "relay.test");
    let ca = dir.path().join("syslog-ca.pem").display().to_string();
    let out = dir.path().join("out.jsonl");
    let (port, mutual, plain_tls) = (free_port(), free_port(), free_port());
    let fg = start(
        port,
        &out,
        &format!(
            "tls = [{{ listen = \"127.0.0.1:{mutual}\", cert = \"{cert}\", key = \"{key}\", client_ca = \"{ca}\" }}, \
             {{ listen = \"127.0.0.1:{plain_tls}\", cert = \"{cert}\", key = \"{key}\" }}]\n"
        ),
        "",
    );
    let relay = |name: &str, to: u16, client: Option<(&str, &str)>| {
        let input = free_port();
        let files = match client {
            Some((c, k)) => format!(
                "DefaultNetstreamDriverCAFile=\"{ca}\" DefaultNetstreamDriverCertFile=\"{c}\" DefaultNetstreamDriverKeyFile=\"{k}\""
            ),
            None => format!("DefaultNetstreamDriverCAFile=\"{ca}\""),
        };
        let body = format!(
            "global({files})\n\
             module(load=\"imtcp\")\n\
             input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{input}\")\n\
             action(type=\"omfwd\" target=\"127.0.0.1\" port=\"{to}\" protocol=\"tcp\" TCP_Framing=\"octet-counted\" \
                    StreamDriver=\"gtls\" StreamDriverMode=\"1\" StreamDriverAuthMode=\"x509/name\" \
                    StreamDriverPermittedPeers=\"syslog.test\")\n"
        );
        (Rsyslog::start(dir.path(), name, &body, Some(input)), input)
    };
    let (_with_cert, in1) = relay("relay-mutual", mutual, Some((&ccert, &ckey)));
    let (_without, in2) = relay("relay-anon", plain_tls, None);
    let (_refused, in3) = relay("relay-refused", mutual, None);
    logger(in3, &["-T", "--rfc3164", "-t", "relayed"], "no-cert-to-mutual");
    for i in 0..5 {
        logger(in1, &["-T", "--rfc3164", "-t", "relayed"], &format!("with-cert-{i}"));
        logger(in2, &["-T", "--rfc3164", "-t", "relayed"], &format!("no-cert-{i}"));
    }
    let r = wait_records(&out, 10);
    for i in 0..5 {
        for m in [format!("with-cert-{i}"), format!("no-cert-{i}")] {
            let rec = find(&r, &m);
            assert_eq!((rec["transport"].as_str(), rec["app_name"].as_str()), (Some("tls"), Some("relayed")), "{rec}");
        }
    }
    // The relay without a certificate is refused at the handshake by the mutual listener.
    let mutual_label = format!("address=\"127.0.0.1:{mutual}\"");
    fg.wait_sample("floodgate_tls_handshake_failures_total", &[&mutual_label], |v| v >= 1.0);
    assert_eq!(sample(&fg, "floodgate_syslog_messages_total", &[&mutual_label]), 5.0);
    assert!(!records(&out).iter().any(|r| r["message"] == "no-cert-to-mutual"));
}

/// The forward output over TLS to rsyslog's gtls listener.
#[test]
fn forward_output_over_tls_to_rsyslog() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "syslog");
    let (cert, key) = pki.issue("rsyslog", "central.test");
    let ca = dir.path().join("syslog-ca.pem").display().to_string();
    let target_port = free_port();
    let file = dir.path().join("rsyslog-out.log");
    let body = format!(
        "global(DefaultNetstreamDriverCAFile=\"{ca}\" DefaultNetstreamDriverCertFile=\"{cert}\" \
                DefaultNetstreamDriverKeyFile=\"{key}\")\n\
         module(load=\"imtcp\" StreamDriver.Name=\"gtls\" StreamDriver.Mode=\"1\" StreamDriver.AuthMode=\"anon\")\n\
         input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{target_port}\")\n\
         template(name=\"raw\" type=\"string\" string=\"%rawmsg%\\n\")\n\
         action(type=\"omfile\" file=\"{}\" template=\"raw\")\n",
        file.display()
    );
    let _rsyslog = Rsyslog::start(dir.path(), "tls-target", &body, Some(target_port));
    let port = free_port();
    let fg = start(
        port,
        Path::new("unused"),
        &format!(
            "output = {{ kind = \"forward\", address = \"127.0.0.1:{target_port}\", \
             tls = {{ ca = \"{ca}\", server_name = \"central.test\" }} }}\n"
        ),
        "",
    );
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let line = |i: usize| format!("<165>1 2026-11-22T10:00:00Z host app - - [x@1 k=\"v\"] over tls {i}");
    for i in 0..500 {
        let m = line(i);
        write!(s, "{} {m}", m.len()).unwrap();
    }
    let got = wait_lines(&file, 500);
    assert_eq!(got.len(), 500);
    for (i, got) in got.iter().enumerate() {
        assert_eq!(got, &line(i));
    }
    assert_eq!(sample(&fg, "floodgate_syslog_output_connected", &[]), 1.0);
}

/// The forward output re-sends to a real rsyslog (imtcp → file) message by message; rsyslog
/// stopped for 10 s and started again still gets every message, in order.
#[test]
fn forward_output_reaches_rsyslog_through_an_outage() {
    let dir = tempfile::tempdir().unwrap();
    let target_port = free_port();
    let file = dir.path().join("rsyslog-out.log");
    let body = format!(
        "module(load=\"imtcp\")\n\
         input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{target_port}\")\n\
         template(name=\"raw\" type=\"string\" string=\"%rawmsg%\\n\")\n\
         action(type=\"omfile\" file=\"{}\" template=\"raw\")\n",
        file.display()
    );
    let mut rsyslog = Rsyslog::start(dir.path(), "target", &body, Some(target_port));
    let port = free_port();
    let spill = dir.path().join("spill");
    let fg = start(
        port,
        Path::new("unused"),
        &format!(
            "output = {{ kind = \"forward\", address = \"127.0.0.1:{target_port}\", buffer = \"64KiB\", spill = \"{}\" }}\n",
            spill.display()
        ),
        "",
    );
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let send = |from: usize, to: usize| {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        for i in from..to {
            // Newline framing in; floodgate re-frames with octet counts.
            writeln!(s, "<13>Nov 22 10:00:00 host app[1]: message {i} with \"quotes\" and \\ slashes").unwrap();
        }
        // One over UDP as well.
        sender
            .send_to(format!("<13>Nov 22 10:00:00 host app[1]: udp after {to}").as_bytes(), ("127.0.0.1", port))
            .unwrap();
    };
    send(0, 1000);
    wait_lines(&file, 1001);
    rsyslog.stop();
    // While it is down: enough to overflow the 64 KiB memory buffer into the spill file.
    send(1000, 3000);
    wait_sample(&fg, "floodgate_syslog_output_buffer_messages", &[], 2001.0);
    assert!(sample(&fg, "floodgate_syslog_output_spill_bytes", &[]) > 0.0, "nothing spilled");
    std::thread::sleep(Duration::from_secs(10));
    rsyslog.restart("target", target_port);
    send(3000, 4000);
    let got = wait_lines(&file, 4003);
    let want: Vec<String> = (0..4000)
        .map(|i| format!("<13>Nov 22 10:00:00 host app[1]: message {i} with \"quotes\" and \\ slashes"))
        .collect();
    let tcp_lines: Vec<&String> = got.iter().filter(|l| l.contains(": message ")).collect();
    assert_eq!(tcp_lines.len(), 4000, "duplicates or losses");
    for (g, w) in tcp_lines.iter().zip(&want) {
        assert_eq!(*g, w);
    }
    for to in [1000, 3000, 4000] {
        assert_eq!(got.iter().filter(|l| l.ends_with(&format!("udp after {to}"))).count(), 1);
    }
    assert_eq!(sample(&fg, "floodgate_syslog_output_dropped_total", &[]), 0.0);
    assert!(sample(&fg, "floodgate_syslog_output_errors_total", &[]) > 0.0);
}

/// Nothing accepted is lost at a restart: with rsyslog down, floodgate is stopped holding
/// messages in memory and in its spill file; at SIGTERM the memory part joins the spill file,
/// and the next run sends all of it, in order, exactly once, to the rsyslog that is back.
#[test]
fn the_spill_file_is_sent_by_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let target_port = free_port();
    let file = dir.path().join("rsyslog-out.log");
    let port = free_port();
    let spill = dir.path().join("spill");
    let mut fg = start(
        port,
        Path::new("unused"),
        &format!(
            "output = {{ kind = \"forward\", address = \"127.0.0.1:{target_port}\", buffer = \"64KiB\", spill = \"{}\", fsync = \"always\" }}\n",
            spill.display()
        ),
        "",
    );
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    for i in 0..2000 {
        writeln!(s, "<13>Nov 22 10:00:00 host app[1]: kept {i}").unwrap();
    }
    drop(s);
    wait_sample(&fg, "floodgate_syslog_output_buffer_messages", &[], 2000.0);
    assert!(sample(&fg, "floodgate_syslog_output_spill_bytes", &[]) > 0.0, "nothing spilled");
    assert_eq!(fg.terminate(), Some(0));
    assert!(fg.stderr().contains("kept in the spill file for the next start"), "{}", fg.stderr());
    let body = format!(
        "module(load=\"imtcp\")\n\
         input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{target_port}\")\n\
         template(name=\"raw\" type=\"string\" string=\"%rawmsg%\\n\")\n\
         action(type=\"omfile\" file=\"{}\" template=\"raw\")\n",
        file.display()
    );
    let _rsyslog = Rsyslog::start(dir.path(), "target", &body, Some(target_port));
    fg.respawn();
    assert!(fg.stderr().contains("sending what the last run left unsent"), "{}", fg.stderr());
    let got = wait_lines(&file, 2000);
    let want: Vec<String> = (0..2000).map(|i| format!("<13>Nov 22 10:00:00 host app[1]: kept {i}")).collect();
    assert_eq!(got, want);
    wait_sample(&fg, "floodgate_syslog_output_buffer_messages", &[], 0.0);
    assert_eq!(std::fs::metadata(&spill).unwrap().len(), 0, "the spill file is emptied once sent");
}

/// rsyslog receiving on `port` (imtcp), writing each raw message as a line of `file`, in the
/// order received (one main-queue worker: with more, rsyslog reorders batches).
fn rsyslog_to_file(dir: &Path, name: &str, port: u16, file: &Path) -> Rsyslog {
    let body = format!(
        "main_queue(queue.workerThreads=\"1\")\n\
         module(load=\"imtcp\")\n\
         input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{port}\")\n\
         template(name=\"raw\" type=\"string\" string=\"%rawmsg%\\n\")\n\
         action(type=\"omfile\" file=\"{}\" template=\"raw\")\n",
        file.display()
    );
    Rsyslog::start(dir, name, &body, Some(port))
}

/// A forward output with a backlog: floodgate (forwarding with `output_extra` to a real
/// rsyslog) has handed rsyslog one message, then rsyslog is stopped with SIGSTOP and
/// `N` messages tagged `tag` are sent, about 17 MB, more than the loopback socket buffers
/// hold, so floodgate is holding some of them.
struct Backlog {
    fg: Floodgate,
    rsyslog: Rsyslog,
    file: PathBuf,
    dir: tempfile::TempDir,
}

impl Backlog {
    const N: usize = 300_000;

    fn build(tag: &str, output_extra: impl Fn(&Path) -> String) -> Backlog {
        let dir = tempfile::tempdir().unwrap();
        let target_port = free_port();
        let file = dir.path().join("rsyslog-out.log");
        let rsyslog = rsyslog_to_file(dir.path(), "target", target_port, &file);
        let port = free_port();
        let output = format!(
            "output = {{ kind = \"forward\", address = \"127.0.0.1:{target_port}\", buffer = \"64MiB\"{} }}\n",
            output_extra(dir.path())
        );
        let fg = start(port, Path::new("unused"), &output, "");
        // One message through first, so the connection is up before rsyslog stops.
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(&numbered("first", 1)).unwrap();
        wait_lines(&file, 1);
        let backlog = Backlog { fg, rsyslog, file, dir };
        backlog.rsyslog_signal("STOP");
        s.write_all(&numbered(tag, Self::N)).unwrap();
        drop(s);
        let fg = &backlog.fg;
        wait_sample(fg, "floodgate_syslog_messages_total", &["listener=\"syslog_tcp\""], (Self::N + 1) as f64);
        let held = sample(fg, "floodgate_syslog_output_buffer_messages", &[]);
        assert!(held > 0.0, "no backlog; the test would prove nothing");
        backlog
    }

    fn rsyslog_signal(&self, name: &str) {
        signal(&self.rsyslog.child, name);
    }
}

/// SIGTERM while the forward output holds a backlog: floodgate keeps sending after the
/// signal and exits only when rsyslog, continued, has every message, in order.
#[test]
fn sigterm_empties_the_forward_output() {
    let mut b = Backlog::build("term", |_| String::new());
    b.fg.signal("TERM");
    // rsyslog reads again only once floodgate is emptying its output for the exit.
    wait_for("the output emptying at shutdown", WAIT, || {
        b.fg.stderr().contains("syslog: handing on what is held").then_some(())
    });
    b.rsyslog_signal("CONT");
    assert_eq!(b.fg.wait_exit(), Some(0));
    let got = wait_lines(&b.file, Backlog::N + 1);
    let want: Vec<String> = std::iter::once("first-0".to_string())
        .chain((0..Backlog::N).map(|i| format!("term-{i}")))
        .map(|m| format!("<134>1 2026-11-22T10:00:00Z host app 1 - - {m}"))
        .collect();
    if let Some(at) = got.iter().zip(&want).position(|(a, b)| a != b) {
        panic!(
            "{} lines; from line {at} got {:?}, want {:?}",
            got.len(),
            &got[at..(at + 3).min(got.len())],
            &want[at..at + 3]
        );
    }
    assert_eq!(got.len(), want.len());
}

/// SIGTERM with the forward output's server down and no spill file: floodgate tries for the
/// 10 s drain, then exits 0 saying how many messages were lost.
#[test]
fn a_forward_server_down_at_sigterm_is_waited_for_ten_seconds() {
    let port = free_port();
    let mut fg = start(
        port,
        Path::new("unused"),
        &format!("output = {{ kind = \"forward\", address = \"127.0.0.1:{}\" }}\n", free_port()),
        "",
    );
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(&numbered("lost", 100)).unwrap();
    drop(s);
    wait_sample(&fg, "floodgate_syslog_output_buffer_messages", &[], 100.0);
    let stopping = Instant::now();
    assert_eq!(fg.terminate(), Some(0));
    let took = stopping.elapsed();
    assert!(took >= Duration::from_secs(10), "gave up after {took:?}, before the 10 s drain");
    let log = fg.stderr();
    assert!(log.contains("shutdown drain timed out; messages lost") && log.contains("messages=100"), "{log}");
}

/// SIGTERM while the forward output's server accepts but never reads (rsyslog stopped and
/// never continued): the 10 s drain bounds the shutdown all the same (before the fix a
/// blocked write restarted forever and floodgate never exited), and the messages still held
/// are kept in the spill file for the next start.
#[test]
fn a_forward_server_that_stops_reading_cannot_hold_shutdown_up() {
    let spill = |dir: &Path| dir.join("spill");
    let mut b = Backlog::build("stuck", |dir| format!(", spill = \"{}\"", spill(dir).display()));
    let stopping = Instant::now();
    assert_eq!(b.fg.terminate(), Some(0));
    let took = stopping.elapsed();
    assert!(took >= Duration::from_secs(10), "gave up after {took:?}, before the 10 s drain");
    let log = b.fg.stderr();
    assert!(log.contains("kept in the spill file for the next start"), "{log}");
    assert!(std::fs::metadata(spill(b.dir.path())).unwrap().len() > 0);
    b.rsyslog_signal("CONT");
}

/// A size-limited tmpfs mounted for one test; unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .unwrap();
        assert!(ok.success(), "mount tmpfs (the suite runs as root)");
        Tmpfs(path.to_path_buf())
    }

    /// Fills the file system with `filler` until a write fails with ENOSPC.
    fn fill(&self, filler: &Path) {
        let mut f = std::fs::File::create(filler).unwrap();
        for size in [1 << 16, 1 << 10, 1] {
            let block = vec![0u8; size];
            while f.write_all(&block).is_ok() {}
        }
        let e = f.write_all(&[0]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(28), "ENOSPC, not {e}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The output file's disk is full: floodgate retries, says so, drops nothing; once space is
/// freed every record is written, once.
#[test]
fn a_full_disk_is_waited_out_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&dir.path().join("disk"), "16m");
    let out = disk.0.join("out.jsonl");
    let port = free_port();
    let fg = start(port, &out, "", "");
    let filler = disk.0.join("filler");
    disk.fill(&filler);
    // More than the writer's 1 MiB buffer holds, so writes fail as well as flushes.
    const N: usize = 20_000;
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(&numbered("full", N)).unwrap();
    drop(s);
    wait_sample(&fg, "floodgate_syslog_messages_total", &["listener=\"syslog_tcp\""], N as f64);
    // Two failed attempts: it is retrying, not giving up.
    wait_for("two failed writes", WAIT, || {
        (sample(&fg, "floodgate_syslog_output_errors_total", &[]) >= 2.0).then_some(())
    });
    let log = fg.stderr();
    assert!(log.contains("No space left on device") && log.contains("failed; retrying in 1s"), "{log}");
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 0, "nothing fits on a full disk");
    std::fs::remove_file(&filler).unwrap();
    let text = wait_for(&format!("{N} whole records in {}", out.display()), WAIT, || {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        (text.ends_with('\n') && text.lines().count() >= N).then_some(text)
    });
    let r: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    assert_eq!(r.len(), N);
    assert_exactly_once(&r, "full", N);
    assert_eq!(sample(&fg, "floodgate_syslog_output_dropped_total", &[]), 0.0);
}

/// Bad input over TCP: random bytes are kept with `parse_error`; a lying octet count closes
/// only that connection after the frames before it; a 10 MB frame is skipped and counted and
/// the next frame still arrives; garbage instead of a ClientHello is a counted handshake
/// failure; an idle connection and a slowloris sender are closed.
#[test]
fn bad_input_is_kept_counted_or_closed_never_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "syslog");
    let (cert, key) = pki.issue("server", "syslog.test");
    let out = dir.path().join("out.jsonl");
    let (port, tls_port) = (free_port(), free_port());
    let fg = start(
        port,
        &out,
        &format!(
            "tcp_idle_timeout = \"1s\"\nmax_message = \"4KiB\"\n\
             tls = [{{ listen = \"127.0.0.1:{tls_port}\", cert = \"{cert}\", key = \"{key}\" }}]\n"
        ),
        "",
    );
    let tcp = ["listener=\"syslog_tcp\""];
    // Random bytes, newline framed (first byte not a digit): kept whole, flagged.
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut noise = vec![b'x'];
    for _ in 0..3000 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        // Any byte but the two that end a newline-framed message: one message of noise.
        noise.push(match (rng >> 24) as u8 {
            b'\n' | 0 => b'.',
            b => b,
        });
    }
    noise.push(b'\n');
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(&noise).unwrap();
    s.write_all(b"<999>not a pri\nno pri at all, just text\n").unwrap();
    drop(s);
    // A lying count: "12x" is not a length; the frame before it still arrives.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"10 before-lie12x <13>after-lie").unwrap();
    let mut buf = [0u8; 1];
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    assert_eq!(s.read(&mut buf).unwrap_or(0), 0, "the connection is closed after a bad length");
    // A 10 MB frame announced and sent: skipped; the next frame on the same connection arrives.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let big = 10 << 20;
    write!(s, "{big} ").unwrap();
    let chunk = vec![b'a'; 1 << 20];
    for _ in 0..10 {
        s.write_all(&chunk).unwrap();
    }
    s.write_all(b"10 after-big!").unwrap();
    // A count cut by the end of the stream.
    s.write_all(b"50 cut short").unwrap();
    drop(s);
    let r = wait_records(&out, 5);
    // Noise without a PRI is kept whole (invalid UTF-8 replaced) and flagged: not text.
    let noise_record = r.iter().find(|x| x["message"].as_str().is_some_and(|m| m.starts_with('x'))).unwrap();
    assert!(noise_record["message"].as_str().unwrap().chars().count() >= 2000);
    assert_eq!(noise_record["parse_error"], "no PRI, and not text");
    assert!(find(&r, "<999>not a pri")["parse_error"].is_string());
    assert_eq!(find(&r, "no pri at all, just text")["facility"], Value::Null);
    find(&r, "before-lie");
    find(&r, "after-big!");
    assert!(!r.iter().any(|x| x["message"].as_str().is_some_and(|m| m.contains("after-lie"))));
    wait_sample(&fg, "floodgate_dropped_total", &[tcp[0], "reason=\"oversize\""], 1.0);
    wait_sample(&fg, "floodgate_dropped_total", &[tcp[0], "reason=\"framing\""], 2.0);
    assert_eq!(sample(&fg, "floodgate_syslog_parse_errors_total", &tcp), 2.0);
    assert_eq!(sample(&fg, "floodgate_syslog_messages_total", &tcp), 5.0);

    // Garbage instead of a ClientHello.
    let mut g = TcpStream::connect(("127.0.0.1", tls_port)).unwrap();
    g.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    g.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = g.read(&mut [0u8; 64]);
    wait_sample(&fg, "floodgate_tls_handshake_failures_total", &["listener=\"syslog_tls\""], 1.0);

    // Idle: connects, never sends; closed after tcp_idle_timeout.
    let mut idle = TcpStream::connect(("127.0.0.1", port)).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let started = Instant::now();
    assert_eq!(idle.read(&mut buf).unwrap_or(0), 0);
    assert!(started.elapsed() >= Duration::from_millis(900), "closed before the idle timeout");
    // Slowloris: a byte every 200 ms of a message that never ends; closed after about 1 s even
    // though bytes keep coming.
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let started = Instant::now();
    let closed = loop {
        if slow.write_all(b"z").is_err() {
            break true;
        }
        std::thread::sleep(Duration::from_millis(200));
        if started.elapsed() > Duration::from_secs(30) {
            break false;
        }
    };
    assert!(closed, "a slowloris sender was never closed");
    wait_sample(&fg, "floodgate_dropped_total", &[tcp[0], "reason=\"idle_timeout\""], 2.0);
    // Still serving.
    logger(port, &["-T", "--rfc3164"], "still alive");
    let r = wait_records(&out, 6);
    find(&r, "still alive");
}

/// UDP: random bytes are kept (flagged), a datagram over max_message is truncated and flagged,
/// and the guard's per-source limit applies to syslog as to StatsD (dropped ones counted).
#[test]
fn udp_bad_datagrams_and_the_guard() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let port = free_port();
    let fg = start(
        port,
        &out,
        "max_message = \"1KiB\"\n",
        "[limits]\nudp_per_source = 100\nudp_per_port = 0\nburst = \"1s\"\n",
    );
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.send_to(&[0xff, 0xfe, b'<', b'1', 0, 0x80, b'\n'], ("127.0.0.1", port)).unwrap();
    let mut long = b"<14>Nov 22 10:00:00 host app: ".to_vec();
    long.resize(3000, b'L');
    s.send_to(&long, ("127.0.0.1", port)).unwrap();
    let r = wait_records(&out, 2);
    assert!(r.iter().any(|x| x["message"].as_str().is_some_and(|m| m.contains('\u{fffd}'))), "{r:#?}");
    let cut = r.iter().find(|x| x["app_name"] == "app").expect("the long datagram");
    assert!(cut["parse_error"].as_str().unwrap().contains("truncated"));
    assert!(cut["message"].as_str().unwrap().len() < 1024);
    // 1,000 datagrams at once from one source: its burst (100) and its rate for as long as the
    // sending took are admitted, the rest dropped and counted.
    let started = Instant::now();
    for i in 0..1000 {
        s.send_to(format!("<14>flood {i}").as_bytes(), ("127.0.0.1", port)).unwrap();
    }
    let took = started.elapsed().as_secs_f64();
    let udp = "listener=\"syslog_udp\"";
    // Dropped by the guard in user space, or by its kernel layer (on by default) before they
    // were queued: every datagram is one or the other, or a message.
    let messages = wait_for("every datagram a message or dropped", WAIT, || {
        let m = fg.self_metrics();
        let dropped = |reason: &str| metric(&m, "floodgate_dropped_total", &[udp, reason]).unwrap_or(0.0);
        let limited = dropped("reason=\"source_limit\"") + dropped("reason=\"kernel_source_limit\"");
        let messages = metric(&m, "floodgate_syslog_messages_total", &[udp]).unwrap_or(0.0);
        (messages + limited == 1002.0).then_some(messages)
    });
    assert!(messages >= 100.0, "at least the burst: {messages}");
    assert!(messages <= 100.0 + 100.0 * (took + 0.5) + 2.0, "{messages} admitted in {took:.2} s");
}

/// logrotate: the file is renamed, SIGHUP, and new records go to a new file at the old path.
#[test]
fn sighup_reopens_the_output_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let port = free_port();
    let fg = start(port, &out, "", "");
    logger(port, &["-T"], "before rotation");
    wait_records(&out, 1);
    let rotated = dir.path().join("out.jsonl.1");
    std::fs::rename(&out, &rotated).unwrap();
    fg.signal("HUP");
    wait_for("the reload", WAIT, || fg.stderr().contains("config reloaded").then_some(()));
    logger(port, &["-T"], "after rotation");
    let r = wait_records(&out, 1);
    assert_eq!(r[0]["message"], "after rotation");
    let old = records(&rotated);
    assert_eq!((old.len(), old[0]["message"].as_str()), (1, Some("before rotation")));
}

/// `output = "stdout"`: one JSON record per line on standard output.
#[test]
fn stdout_output_writes_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let (port, ports) = (free_port(), Ports::free());
    let http = ports.http;
    let cfg = dir.path().join("f.toml");
    let syslog = format!("[syslog]\nudp = [\"127.0.0.1:{port}\"]\ntcp = []\noutput = \"stdout\"\n");
    std::fs::write(&cfg, config_text(ports, "", &syslog)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_floodgate"))
        .arg("--config")
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("ready", WAIT, || http_get(http, "/healthz").ok().filter(|(c, _)| *c == 200));
    logger(port, &["-d", "--rfc5424", "-t", "to-stdout"], "hello stdout");
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let record: Value = serde_json::from_str(&line).unwrap();
    assert_eq!((record["message"].as_str(), record["app_name"].as_str()), (Some("hello stdout"), Some("to-stdout")));
}

/// A TLS handshake against `port` trusting only `ca`: whether it succeeds.
fn handshake_ok(port: u16, ca: &str) -> bool {
    tls_handshake_ok(port, tls_client(ca, None), "syslog.test")
}

/// SIGHUP re-reads a TLS listener's certificate (renewed files keep their names): new
/// connections get the new one; a broken file leaves the old one serving.
#[test]
fn sighup_reloads_the_tls_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let old_ca = Pki::new(dir.path(), "old");
    let new_ca = Pki::new(dir.path(), "new");
    let (cert, key) = old_ca.issue("server", "syslog.test");
    let (old, new) =
        (dir.path().join("old-ca.pem").display().to_string(), dir.path().join("new-ca.pem").display().to_string());
    let (port, tls_port) = (free_port(), free_port());
    let fg = start(
        port,
        &dir.path().join("out.jsonl"),
        &format!("tls = [{{ listen = \"127.0.0.1:{tls_port}\", cert = \"{cert}\", key = \"{key}\" }}]\n"),
        "",
    );
    assert!(handshake_ok(tls_port, &old) && !handshake_ok(tls_port, &new));
    let hup_and_wait = |n: usize| {
        fg.signal("HUP");
        wait_for("the reload", WAIT, || (fg.stderr().matches("config reloaded").count() >= n).then_some(()));
    };
    // Renewed by another CA, same file names.
    new_ca.issue("server", "syslog.test");
    hup_and_wait(1);
    assert!(handshake_ok(tls_port, &new) && !handshake_ok(tls_port, &old));
    // A broken certificate file: refused, the running certificate stays.
    std::fs::write(&cert, "not a certificate").unwrap();
    fg.signal("HUP");
    wait_for("the reload refused", WAIT, || fg.stderr().contains("config refused").then_some(()));
    assert!(fg.stderr().contains("key `syslog.tls`"), "{}", fg.stderr());
    assert!(handshake_ok(tls_port, &new));
}

/// SIGHUP adds a syslog TCP listener and removes the UDP one; records keep going to the same
/// output.
#[test]
fn sighup_adds_and_removes_syslog_listeners() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let (port, added) = (free_port(), free_port());
    let fg = start(port, &out, "", "");
    logger(port, &["-d"], "before reload");
    wait_records(&out, 1);
    let text = format!(
        "[syslog]\nudp = []\ntcp = [\"127.0.0.1:{port}\", \"127.0.0.1:{added}\"]\noutput = {{ kind = \"file\", path = \"{}\" }}\n",
        out.display()
    );
    fg.reload("", &text);
    wait_for("the listeners reconciled", WAIT, || {
        (TcpStream::connect(("127.0.0.1", added)).is_ok() && UdpSocket::bind(("127.0.0.1", port)).is_ok()).then_some(())
    });
    logger(added, &["-T"], "to the added listener");
    let r = wait_records(&out, 2);
    assert_eq!(r[1]["message"], "to the added listener");
    assert_eq!(r[1]["listener"], "syslog_tcp");
}

/// `logger --socket` (util-linux), as the host's own programs write to `/dev/log`: messages over
/// a Unix datagram socket become records like any listener's, and are counted as `syslog_unix`.
#[test]
fn logger_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let (out, sock) = (dir.path().join("out.jsonl"), dir.path().join("log.sock"));
    let fg = start(free_port(), &out, &format!("unix = [\"{}\"]\nunix_mode = \"0600\"\n", sock.display()), "");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o7777, 0o600);
    for (args, message) in [(&["--rfc3164"][..], "from logger 3164"), (&["--rfc5424"][..], "from logger 5424")] {
        let status = Command::new(require_tool("logger"))
            .args(["--socket", sock.to_str().unwrap(), "--socket-errors=on", "-t", "unixapp", "-i"])
            .args(args)
            .arg(message)
            .status()
            .unwrap();
        assert!(status.success(), "logger {args:?}");
    }
    let records = wait_records(&out, 2);
    for message in ["from logger 3164", "from logger 5424"] {
        let r = find(&records, message);
        assert_eq!(r["listener"], "syslog_unix", "{r}");
        assert_eq!(r["transport"], "unix", "{r}");
        assert_eq!(r["app_name"], "unixapp", "{r}");
        assert!(r["procid"].as_str().is_some_and(|p| p.parse::<u32>().is_ok()), "logger -i sends its pid: {r}");
        assert_eq!(r["parse_error"], Value::Null, "{r}");
        // The kernel's word on who sent it: logger's own pid, as it claimed.
        assert_eq!(r["peer_pid"].to_string(), r["procid"].as_str().unwrap(), "{r}");
        // (logger has exited by the time its program name could be read: that is the forger's
        // check below, which stays alive until its record is written.)
        assert_eq!(r["peer_uid"].as_u64(), Some(0), "{r}");
    }
    // A sender that claims another PID: the claim is kept, and the kernel's pid beside it shows
    // the forgery.
    // It stays alive (reading stdin) until its record is written, so its program name can be read.
    let forger = "import os, socket, sys\n\
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
        s.sendto(b'<13>Feb  5 17:32:18 web-1 sshd[1]: Accepted password for root', sys.argv[1])\n\
        sys.stdin.read()";
    let mut py = Command::new(require_tool("python3"))
        .args(["-c", forger, sock.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let real_pid = u64::from(py.id());
    let records = wait_records(&out, 3);
    drop(py.stdin.take());
    assert!(py.wait().unwrap().success());
    let forged = find(&records, "Accepted password for root");
    assert_eq!(forged["procid"], "1", "the claimed PID is kept: {forged}");
    assert_eq!(forged["peer_pid"].as_u64(), Some(real_pid), "{forged}");
    assert_eq!(forged["peer_program"], "python3", "{forged}");
    assert_eq!(forged["app_name"], "sshd");
    let labels = ["listener=\"syslog_unix\"".to_string(), format!("address=\"{}\"", sock.display())];
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    assert_eq!(sample(&fg, "floodgate_syslog_messages_total", &labels), 3.0);
}

/// Every record's `timestamp` is RFC 3339 with an offset: an RFC 3164 time without a zone is
/// read in `[syslog] timezone`, a known abbreviation in its own zone.
#[test]
fn rfc3164_times_get_the_configured_zone() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let port = free_port();
    let _fg = start(port, &out, "timezone = \"+05:30\"\n", "");
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.send_to(b"<13>Feb  5 17:32:18 web-1 app: zoneless", ("127.0.0.1", port)).unwrap();
    udp.send_to(b"<13>Feb  5 17:32:18 PST web-1 app: pacific", ("127.0.0.1", port)).unwrap();
    let records = wait_records(&out, 2);
    let stamp = |m: &str| find(&records, m)["timestamp"].as_str().unwrap().to_string();
    assert!(stamp("zoneless").ends_with("-02-05T17:32:18+05:30"), "{records:?}");
    assert!(stamp("pacific").ends_with("-02-05T17:32:18-08:00"), "{records:?}");
}

/// A Python sender over a Unix datagram socket, run as `uid` (`setpriv`): sends `count`
/// messages tagged `tag` (blocking sends: none lost before floodgate reads them), then waits
/// for its stdin to close, so it is alive while floodgate reads its program name.
fn unix_sender_as(uid: u32, sock: &Path, tag: &str, count: usize) -> Child {
    let script = "import socket, sys\n\
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
        path, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])\n\
        for i in range(n):\n    s.sendto(f'<13>Feb  5 17:32:18 host {tag}: {i}'.encode(), path)\n\
        print('sent', flush=True)\n\
        sys.stdin.read()";
    // Debian's own Python: another user may not be able to run one under root's home (pyenv).
    let python = Path::new("/usr/bin/python3");
    assert!(python.exists(), "/usr/bin/python3 is missing (apt-get install python3)");
    Command::new(require_tool("setpriv"))
        .args([format!("--reuid={uid}"), format!("--regid={uid}"), "--clear-groups".into()])
        .arg(python)
        .args(["-c", script, sock.to_str().unwrap(), tag, &count.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a [`unix_sender_as`] to say it has sent everything.
fn wait_sent(child: &mut Child) {
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.as_mut().unwrap()), &mut line).unwrap();
    if line.trim() != "sent" {
        let mut err = String::new();
        child.stderr.as_mut().unwrap().read_to_string(&mut err).unwrap();
        panic!("the sender failed: {line} {err}");
    }
}

/// `unix_per_uid` keys the limit by the kernel's uid: one user flooding a Unix socket is
/// limited (and named in `/offenders` with its program) while another user's messages all get
/// through; every datagram is either written or counted as dropped.
#[test]
fn a_flooding_user_is_limited_by_uid_and_another_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (out, sock) = (dir.path().join("out.jsonl"), dir.path().join("log.sock"));
    let limits = "[limits]\nunix_per_uid = 100\nburst = \"1s\"\nudp_per_source = 0\nudp_per_port = 0\n";
    let fg = start(free_port(), &out, &format!("unix = [\"{}\"]\nunix_mode = \"0666\"\n", sock.display()), limits);
    let (flood_uid, quiet_uid, flood_n, quiet_n) = (65534, 65533, 5000, 60);
    let started = Instant::now();
    let mut flooder = unix_sender_as(flood_uid, &sock, "flood", flood_n);
    let mut quiet = unix_sender_as(quiet_uid, &sock, "quiet", quiet_n);
    wait_sent(&mut flooder);
    wait_sent(&mut quiet);
    // Every datagram is decided: written, or dropped by the flooder's limit.
    let labels = ["listener=\"syslog_unix\"", "reason=\"source_limit\""];
    let by_uid = |records: &[Value], uid: u32| records.iter().filter(|r| r["peer_uid"] == uid).count();
    let records = wait_for("every datagram written or dropped", WAIT, || {
        let records = records(&out);
        let dropped = fg.self_metrics();
        let dropped = metric(&dropped, "floodgate_dropped_total", &labels).unwrap_or(0.0) as usize;
        (records.len() + dropped == flood_n + quiet_n).then_some(records)
    });
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(by_uid(&records, quiet_uid), quiet_n, "the quiet user loses nothing");
    let admitted = by_uid(&records, flood_uid);
    // Its burst (100) and what the limit refilled while it sent.
    assert!(admitted >= 100 && admitted as f64 <= 100.0 + 100.0 * elapsed + 1.0, "{admitted} in {elapsed:.1}s");
    assert!(records.iter().all(|r| r["peer_uid"] == flood_uid || r["peer_uid"] == quiet_uid));
    let (_, body) = http_get(fg.http, "/offenders").unwrap();
    let report: Value = serde_json::from_str(&body).unwrap();
    let offenders = report["offenders"].as_array().unwrap();
    assert_eq!(offenders.len(), 1, "only the flooding user: {report}");
    let o = &offenders[0];
    assert_eq!(o["source"], format!("uid:{flood_uid}"), "{o}");
    assert_eq!(o["uid"], flood_uid, "{o}");
    assert_eq!(o["program"], "python3", "{o}");
    assert_eq!(o["listener"], "syslog_unix", "{o}");
    assert_eq!(o["dropped"].as_u64(), Some((flood_n - admitted) as u64), "{o}");
    for mut child in [flooder, quiet] {
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success());
    }
}

/// The socket file's mode is the kernel's access check: a user it does not let in gets
/// "Permission denied" from `sendto` and nothing of theirs arrives; a user it lets in is read.
#[test]
fn the_socket_mode_decides_who_may_send() {
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (out, closed, open) =
        (dir.path().join("out.jsonl"), dir.path().join("closed.sock"), dir.path().join("open.sock"));
    let unix = format!("unix = [\"{}\"]\nunix_mode = \"0600\"\n", closed.display());
    let fg = start(free_port(), &out, &unix, "");
    let mut refused = unix_sender_as(65534, &closed, "refused", 1);
    let status = refused.wait().unwrap();
    let mut err = String::new();
    refused.stderr.as_mut().unwrap().read_to_string(&mut err).unwrap();
    assert!(!status.success() && err.contains("PermissionError"), "{status} {err}");
    // The same user on a socket whose mode lets others write.
    drop(fg);
    let unix = format!("unix = [\"{}\"]\nunix_mode = \"0622\"\n", open.display());
    let _fg = start(free_port(), &out, &unix, "");
    let mut allowed = unix_sender_as(65534, &open, "allowed", 1);
    wait_sent(&mut allowed);
    let records = wait_records(&out, 1);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["app_name"], "allowed");
    assert_eq!(records[0]["peer_uid"], 65534);
    drop(allowed.stdin.take());
    assert!(allowed.wait().unwrap().success());
}

/// A Unix stream listener: `logger --socket PATH -T` (newline framing, and octet counting with
/// `--octet-count`) in both formats; each record names the connecting process from the
/// kernel (`SO_PEERCRED`), and the listener is counted as `syslog_unix_stream`.
#[test]
fn logger_over_a_unix_stream_socket() {
    let dir = tempfile::tempdir().unwrap();
    let (out, sock) = (dir.path().join("out.jsonl"), dir.path().join("log-stream.sock"));
    let fg = start(free_port(), &out, &format!("unix_stream = [\"{}\"]\n", sock.display()), "");
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let meta = std::fs::metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o622);
    let sent = [
        (&["--rfc3164"][..], "stream 3164"),
        (&["--rfc5424"][..], "stream 5424"),
        (&["--rfc5424", "--octet-count"][..], "stream counted"),
    ];
    for (args, message) in sent {
        let status = Command::new(require_tool("logger"))
            .args(["--socket", sock.to_str().unwrap(), "--socket-errors=on", "-T", "-t", "streamapp", "-i"])
            .args(args)
            .arg(message)
            .status()
            .unwrap();
        assert!(status.success(), "logger {args:?}");
    }
    let records = wait_records(&out, sent.len());
    for (_, message) in sent {
        let r = find(&records, message);
        assert_eq!(r["listener"], "syslog_unix_stream", "{r}");
        assert_eq!(r["transport"], "unix_stream", "{r}");
        assert_eq!(r["app_name"], "streamapp", "{r}");
        assert_eq!(r["parse_error"], Value::Null, "{r}");
        assert_eq!(r["peer_pid"].to_string(), r["procid"].as_str().unwrap(), "{r}");
        assert_eq!(r["peer_uid"].as_u64(), Some(0), "{r}");
    }
    let labels = ["listener=\"syslog_unix_stream\"".to_string(), format!("address=\"{}\"", sock.display())];
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    assert_eq!(sample(&fg, "floodgate_syslog_messages_total", &labels), sent.len() as f64);
    assert_eq!(sample(&fg, "floodgate_tcp_connections_total", &labels), sent.len() as f64);
}
