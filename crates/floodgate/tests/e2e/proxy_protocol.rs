//! The PROXY protocol on the TCP listeners: a balancer's header names the client, which is
//! what the record says and the guard judges; a connection from anywhere else may not send
//! one, and a balancer's must. First with headers written by hand, byte for byte as the
//! specification lays them out, then with real HAProxy in front.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::common::*;
use serde_json::Value;

/// A TCP connection to `port` on 127.0.0.1 from the local address `from`.
fn connect_from(from: [u8; 4], port: u16) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from((from, 0)).into()).unwrap();
    socket.connect(&SocketAddr::from(([127, 0, 0, 1], port)).into()).unwrap();
    socket.into()
}

fn send(from: [u8; 4], port: u16, bytes: &[u8]) {
    let mut s = connect_from(from, port);
    s.write_all(bytes).unwrap();
}

/// A v2 header for a TCP-over-IPv4 client.
fn v2_header(client: [u8; 4], client_port: u16, port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    h.extend_from_slice(&client);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&client_port.to_be_bytes());
    h.extend_from_slice(&port.to_be_bytes());
    h
}

/// floodgate from its defaults, changing only what these tests need: syslog on one TCP
/// listener at `port` behind a balancer at `balancer`, a file output at `out` to read the
/// records, and `limits` (a `[limits]` section, or nothing).
fn syslog_behind_balancer(limits: &str, port: u16, balancer: &str, out: &std::path::Path) -> Floodgate {
    Floodgate::start(
        "",
        &format!(
            "{limits}[syslog]\nudp = []\ntcp = [\"127.0.0.1:{port}\"]\nproxy_protocol = true\n\
             proxy_from = [\"{balancer}/32\"]\noutput = {{ kind = \"file\", path = \"{}\" }}\n",
            out.display()
        ),
    )
}

fn records(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Syslog over TCP behind a balancer at 127.0.0.1: its v1 and v2 headers name the clients
/// the records carry; its connection without a header is refused; 127.0.0.2, not a balancer,
/// is refused when it sends a header and taken as itself when it does not.
#[test]
fn a_balancers_header_names_the_client_and_no_one_else_may_send_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("records.jsonl");
    let port = free_port();
    // The defaults, but syslog on one TCP listener (127.0.0.2 connects to it as itself) behind
    // a balancer at 127.0.0.1, and a file output to read the records.
    let fg = syslog_behind_balancer("", port, "127.0.0.1", &out);
    let tcp = ["listener=\"syslog_tcp\""];
    send([127, 0, 0, 1], port, format!("PROXY TCP4 198.18.0.7 127.0.0.1 40000 {port}\r\n<13>via-v1\n").as_bytes());
    let mut v2 = v2_header([198, 18, 0, 9], 40001, port);
    v2.extend_from_slice(b"<13>via-v2\n");
    send([127, 0, 0, 1], port, &v2);
    send([127, 0, 0, 1], port, b"<13>balancer-without-header\n");
    send([127, 0, 0, 2], port, format!("PROXY TCP4 198.18.0.8 127.0.0.1 40002 {port}\r\n<13>forged\n").as_bytes());
    send([127, 0, 0, 2], port, b"<13>direct\n");
    let r = wait_for("three records", Duration::from_secs(30), || {
        let r = records(&out);
        (r.len() >= 3).then_some(r)
    });
    fg.wait_sample("floodgate_dropped_total", &[tcp[0], "reason=\"proxy_header\""], |v| v == 2.0);
    let source = |message: &str| {
        let rec = r.iter().find(|x| x["message"] == message).unwrap_or_else(|| panic!("no `{message}` in {r:#?}"));
        rec["source"].as_str().unwrap().to_string()
    };
    assert_eq!(source("via-v1"), "198.18.0.7:40000");
    assert_eq!(source("via-v2"), "198.18.0.9:40001");
    assert!(source("direct").starts_with("127.0.0.2:"), "{}", source("direct"));
    // Both refused connections are counted, so no record of theirs can still come.
    assert_eq!(records(&out).len(), 3, "{:#?}", records(&out));
}

/// HAProxy 2.6 in TCP mode, in the foreground: one frontend per `(port, backend, send)`, each
/// to floodgate's `backend` port, connecting from `source` and sending `send` (`send-proxy` or
/// `send-proxy-v2`).
struct Haproxy {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    fn start(frontends: &[(u16, u16, &str)], source: &str) -> Haproxy {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("haproxy.cfg");
        let mut text = String::from(
            "global\n  maxconn 1000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n",
        );
        for (port, backend, send) in frontends {
            text += &format!(
                "frontend f{port}\n  bind 127.0.0.1:{port}\n  default_backend b{port}\n\
                 backend b{port}\n  server fg 127.0.0.1:{backend} {send} source {source}\n"
            );
        }
        std::fs::write(&config, text).unwrap();
        let child = std::process::Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("haproxy (Debian package haproxy; scripts/test.sh installs it)");
        for (port, ..) in frontends {
            wait_for(&format!("haproxy listening on {port}"), Duration::from_secs(30), || {
                TcpStream::connect(("127.0.0.1", *port)).ok()
            });
        }
        Haproxy { child, _dir: dir }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Real HAProxy in front of syslog over TCP, with `send-proxy` on one frontend and
/// `send-proxy-v2` on the other: every record names the client that connected to HAProxy,
/// not HAProxy. One client opening connections as fast as it can is held to its own
/// connection rate, and the other client's messages all arrive.
#[test]
fn real_haproxy_in_front_names_each_client_and_one_flood_is_limited_alone() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("records.jsonl");
    let (port, v1, v2) = (free_port(), free_port(), free_port());
    // The defaults, but: syslog on one TCP listener behind HAProxy at 127.0.0.3, a file output
    // to read the records, and loopback addresses keyed apart (they stand in for remote hosts
    // here; by default all local addresses are one source).
    let fg = syslog_behind_balancer("[limits]\nlocal_senders = \"by_address\"\n", port, "127.0.0.3", &out);
    let _haproxy = Haproxy::start(&[(v1, port, "send-proxy"), (v2, port, "send-proxy-v2")], "127.0.0.3");
    send([127, 0, 0, 4], v1, b"<13>client-4-via-v1\n");
    send([127, 0, 0, 5], v2, b"<13>client-5-via-v2\n");
    let r = wait_for("two records", Duration::from_secs(30), || {
        let r = records(&out);
        (r.len() >= 2).then_some(r)
    });
    let source = |r: &[Value], message: &str| {
        let rec = r.iter().find(|x| x["message"] == message).unwrap_or_else(|| panic!("no `{message}` in {r:#?}"));
        rec["source"].as_str().unwrap().to_string()
    };
    assert!(source(&r, "client-4-via-v1").starts_with("127.0.0.4:"), "{r:#?}");
    assert!(source(&r, "client-5-via-v2").starts_with("127.0.0.5:"), "{r:#?}");

    // Client 4 opens 200 connections at once through HAProxy, over its limit of 10 new
    // connections a second (the default); client 5 sends 20 messages meanwhile, each on a
    // connection of its own, at 5 a second, within its own limit.
    let flood = std::thread::spawn(move || {
        for i in 0..200 {
            let mut s = connect_from([127, 0, 0, 4], v1);
            let _ = s.write_all(format!("<13>flood-{i}\n").as_bytes());
        }
    });
    for i in 0..20 {
        send([127, 0, 0, 5], v2, format!("<13>steady-{i}\n").as_bytes());
        std::thread::sleep(Duration::from_millis(200));
    }
    flood.join().unwrap();
    fg.wait_sample("floodgate_dropped_total", &["listener=\"syslog_tcp\"", "reason=\"connection_rate\""], |v| v > 0.0);
    let r = wait_for("client 5's twenty messages", Duration::from_secs(30), || {
        let r = records(&out);
        let steady = r.iter().filter(|x| x["message"].as_str().is_some_and(|m| m.starts_with("steady-"))).count();
        (steady == 20).then_some(r)
    });
    let flooded = r.iter().filter(|x| x["message"].as_str().is_some_and(|m| m.starts_with("flood-"))).count();
    assert!(flooded < 100, "client 4 was held to its limit: {flooded} of 200 went through");
    assert!(r.iter().all(|x| {
        let m = x["message"].as_str().unwrap_or_default();
        let s = x["source"].as_str().unwrap_or_default();
        !m.starts_with("steady-") || s.starts_with("127.0.0.5:")
    }));
    assert_eq!(fg.sample("floodgate_dropped_total", &["listener=\"syslog_tcp\"", "reason=\"proxy_header\""]), 0.0);
    // /offenders names the client, never the balancer all the connections came from.
    let (code, body) = http_get(fg.http, "/offenders").unwrap();
    assert_eq!(code, 200);
    let report: Value = serde_json::from_str(&body).unwrap();
    let list = report["offenders"].as_array().unwrap();
    assert!(list.iter().any(|o| o["source"] == "127.0.0.4" && o["reason"] == "connection_rate"), "{report}");
    assert!(list.iter().all(|o| o["source"] != "127.0.0.3" && o["source"] != "127.0.0.5"), "{report}");
}

/// HAProxy passing TLS through (TCP mode) to a syslog TLS listener, with `send-proxy-v2`: the
/// header is read before the handshake (mutual TLS, so the client's certificate is checked
/// after it), and the record names the client.
#[test]
fn real_haproxy_in_front_of_tls_names_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "syslog");
    let (cert, key) = pki.issue("server", "syslog.test");
    let (ccert, ckey) = pki.issue("client", "client.test");
    let ca = dir.path().join("syslog-ca.pem").display().to_string();
    let out = dir.path().join("records.jsonl");
    let (tls_port, front) = (free_port(), free_port());
    // The defaults, but syslog on one TLS listener (mutual TLS) behind HAProxy at 127.0.0.3,
    // and a file output to read the records.
    let _fg = Floodgate::start(
        "",
        &format!(
            "[syslog]\nudp = []\ntcp = []\nproxy_protocol = true\nproxy_from = [\"127.0.0.3/32\"]\n\
             tls = [{{ listen = \"127.0.0.1:{tls_port}\", cert = \"{cert}\", key = \"{key}\", client_ca = \"{ca}\" }}]\n\
             output = {{ kind = \"file\", path = \"{}\" }}\n",
            out.display()
        ),
    );
    let _haproxy = Haproxy::start(&[(front, tls_port, "send-proxy-v2")], "127.0.0.3");
    let client = tls_client(&ca, Some((&ccert, &ckey)));
    let tcp = connect_from([127, 0, 0, 4], front);
    let conn = rustls::ClientConnection::new(client, "syslog.test".try_into().unwrap()).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    s.write_all(b"<13>over-tls-via-haproxy\n").unwrap();
    s.flush().unwrap();
    let r = wait_for("the record", Duration::from_secs(30), || {
        let r = records(&out);
        (!r.is_empty()).then_some(r)
    });
    assert_eq!(r[0]["message"], "over-tls-via-haproxy");
    assert!(r[0]["source"].as_str().unwrap().starts_with("127.0.0.4:"), "{r:#?}");
}

/// From the balancer's address: garbage instead of a header is closed at once, and a header
/// that stops halfway is closed at the 10 s deadline; both counted, neither gives a record.
#[test]
fn garbage_and_slow_headers_from_the_balancer_are_closed_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("records.jsonl");
    let port = free_port();
    // The defaults, but syslog on one TCP listener behind a balancer at 127.0.0.1.
    let fg = syslog_behind_balancer("", port, "127.0.0.1", &out);
    let closed_within = |mut s: TcpStream, limit: Duration| {
        use std::io::Read;
        let start = std::time::Instant::now();
        s.set_read_timeout(Some(limit + Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf);
        assert!(matches!(n, Ok(0) | Err(_)), "closed, not answered: {n:?}");
        assert!(start.elapsed() <= limit + Duration::from_secs(2), "closed after {:?}", start.elapsed());
        start.elapsed()
    };
    let mut garbage = connect_from([127, 0, 0, 1], port);
    garbage.write_all(b"\r\n\r\n\0\r\nQUIT\n\x99\x99\x00\x00<13>garbage\n").unwrap();
    closed_within(garbage, Duration::from_secs(1));
    let mut slow = connect_from([127, 0, 0, 1], port);
    slow.write_all(b"PROXY TCP4 198.18.0.7 127.0.0.1 4").unwrap();
    let waited = closed_within(slow, Duration::from_secs(10));
    assert!(waited >= Duration::from_secs(9), "held until the deadline: {waited:?}");
    fg.wait_sample("floodgate_dropped_total", &["listener=\"syslog_tcp\"", "reason=\"proxy_header\""], |v| v == 2.0);
    assert!(records(&out).is_empty());
}

/// A balancer opens connections in bursts (every client's come through it): 1,000 at once
/// are all admitted, each judged as its own client. They used to fall under the TLS handshake
/// caps (64 in flight), which the burst overran before their tasks ran (found by `bench
/// --only proxy`).
#[test]
fn a_burst_of_connections_from_the_balancer_is_all_taken() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("records.jsonl");
    let port = free_port();
    // The defaults, but syslog on one TCP listener behind a balancer at 127.0.0.1, and a file
    // output to read the records.
    let fg = syslog_behind_balancer("", port, "127.0.0.1", &out);
    const N: usize = 1000;
    // Each connection names another client (198.18.x.y), as a busy balancer's do, so no
    // client's own connection rate is reached.
    let streams: Vec<TcpStream> = (0..N)
        .map(|i| {
            let mut s = connect_from([127, 0, 0, 1], port);
            let client = format!("198.18.{}.{}", i / 250, i % 250 + 1);
            s.write_all(format!("PROXY TCP4 {client} 127.0.0.1 40000 {port}\r\n<13>burst-{i}\n").as_bytes()).unwrap();
            s
        })
        .collect();
    drop(streams);
    wait_for("every record of the burst", Duration::from_secs(60), || (records(&out).len() >= N).then_some(()));
    assert_eq!(records(&out).len(), N);
    assert_eq!(fg.sample("floodgate_limited_total", &["listener=\"syslog_tcp\""]), 0.0);
}

/// StatsD over TCP behind a balancer: the allow-list judges the client the header names, not
/// the balancer.
#[test]
fn statsd_tcp_behind_a_balancer_is_judged_by_the_client() {
    // The defaults, but the StatsD TCP listener behind a balancer at 127.0.0.1, and an
    // allow-list with one remote client (and loopback, which the harness itself uses).
    let fg = Floodgate::start(
        "proxy_protocol = true\nproxy_from = [\"127.0.0.1/32\"]\n",
        "[limits]\nallow = [\"198.18.0.7/32\", \"127.0.0.0/8\"]\n",
    );
    let port = fg.statsd;
    send(
        [127, 0, 0, 1],
        port,
        format!("PROXY TCP4 198.18.0.8 127.0.0.1 40000 {port}\r\nproxied.refused:1|c\n").as_bytes(),
    );
    send([127, 0, 0, 1], port, format!("PROXY TCP4 198.18.0.7 127.0.0.1 40001 {port}\r\nproxied.ok:1|c\n").as_bytes());
    fg.wait_counter("proxied.ok", "1");
    fg.wait_sample("floodgate_dropped_total", &["listener=\"statsd_tcp\"", "reason=\"not_allowed\""], |v| v == 1.0);
    let (_, metrics) = http_get(fg.http, "/metrics").unwrap();
    assert!(!metrics.contains("proxied_refused"), "the client outside the allow-list got nothing in");
}

/// StatsD over TCP behind real HAProxy (`send-proxy-v2`, connecting from 127.0.0.3): the
/// allow-list (127.0.0.4, and 127.0.0.1 whose readiness probe HAProxy passes on) judges each
/// client HAProxy names. 127.0.0.4's line is counted;
/// 127.0.0.5's connection is refused as `not_allowed`; HAProxy itself is not in the allow-list
/// and nothing of its own is judged.
#[test]
fn statsd_tcp_behind_real_haproxy_is_judged_by_each_client() {
    // The defaults, but the StatsD TCP listener behind the balancer at 127.0.0.3, and an
    // allow-list of one client and the harness (its probe that HAProxy listens).
    let fg = Floodgate::start(
        "proxy_protocol = true\nproxy_from = [\"127.0.0.3/32\"]\n",
        "[limits]\nallow = [\"127.0.0.4/32\", \"127.0.0.1/32\"]\n",
    );
    let front = free_port();
    let _haproxy = Haproxy::start(&[(front, fg.statsd, "send-proxy-v2")], "127.0.0.3");
    send([127, 0, 0, 5], front, b"via.haproxy.five:1|c\n");
    fg.wait_sample("floodgate_dropped_total", &["listener=\"statsd_tcp\"", "reason=\"not_allowed\""], |v| v == 1.0);
    send([127, 0, 0, 4], front, b"via.haproxy.four:1|c\n");
    fg.wait_counter("via.haproxy.four", "1");
    let (_, metrics) = http_get(fg.http, "/metrics").unwrap();
    assert!(!metrics.contains("via_haproxy_five"), "the client outside the allow-list got nothing in");
    assert_eq!(
        sample(&metrics, "floodgate_dropped_total", &["listener=\"statsd_tcp\"", "reason=\"proxy_header\""]),
        0.0
    );
}
