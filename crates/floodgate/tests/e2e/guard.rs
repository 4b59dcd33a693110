//! The guard end to end: a flooding source limited while its neighbours lose nothing (sums
//! read back from a real carbon-cache), the allow-list, and a TCP connection storm refused
//! before a byte is read. The spoofing test, which needs a network namespace, is in
//! `guard_spoof.rs`.

use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use crate::common::*;

fn offenders(fg: &Floodgate) -> serde_json::Value {
    let (code, body) = http_get(fg.http, "/offenders").unwrap();
    assert_eq!(code, 200);
    serde_json::from_str(&body).unwrap()
}

fn wait_log(fg: &Floodgate, needle: &str, count: usize) -> String {
    wait_for(&format!("{count}× `{needle}` logged"), Duration::from_secs(30), || {
        let log = fg.stderr();
        (log.lines().filter(|l| l.contains(needle)).count() >= count).then_some(log)
    })
}

/// 127.0.0.2 floods far past its limit while 127.0.0.3 and .4 send at half of theirs, all
/// under the default limits: the two lose nothing (exact sums in Whisper), every line of the
/// flood is either in Whisper or counted as dropped, never more got in than the limit allows
/// over the run (a bound, so a busy machine cannot fail it), and it is reported once when it
/// starts and once when it stops.
#[test]
fn a_flooding_source_is_held_to_its_limit_and_its_neighbours_lose_nothing() {
    let carbon = Carbon::start();
    // 2-second flushes: each lands in its own 1-second Whisper point whatever the jitter. The
    // user-space guard's accounting, log lines and report are under test: its kernel layer,
    // which would drop the flood first, is off (kernel_guard.rs tests it). The three loopback
    // addresses stand for three hosts (`by_address`).
    let fg = Floodgate::start(
        "flush_interval = \"2s\"",
        &format!(
            "[graphite]\naddress = \"127.0.0.1:{}\"\n\n[limits]\nkernel = \"off\"\nlocal_senders = \"by_address\"\n",
            carbon.line_port
        ),
    );
    let to = fg.udp_addr();
    let start = Instant::now();
    let flood = Sender::start("127.0.0.2", to, "flood.hits:1|c", 100_000, 1);
    let legit3 = Sender::start("127.0.0.3", to, "legit3.hits:1|c", 1500, 1);
    let legit4 = Sender::start("127.0.0.4", to, "legit4.hits:1|c", 1500, 1);
    // Long enough for several flushes and a limited period that starts and ends.
    std::thread::sleep(Duration::from_secs(14));
    let (flood, legit3, legit4) = (flood.stop(), legit3.stop(), legit4.stop());

    carbon.wait("stats_counts.legit3.hits", |p| p.iter().sum::<f64>() == legit3 as f64);
    carbon.wait("stats_counts.legit4.hits", |p| p.iter().sum::<f64>() == legit4 as f64);

    // Exact accounting: what reached Whisper plus what was dropped is what was sent.
    let source_limit = ["listener=\"statsd_udp\"", "reason=\"source_limit\""];
    let (accepted, dropped) = wait_for("the flood accounted for", Duration::from_secs(60), || {
        let dropped = fg.sample("floodgate_dropped_total", &source_limit);
        let accepted: f64 = carbon.fetch("stats_counts.flood.hits").iter().sum();
        (accepted + dropped == flood as f64).then_some((accepted, dropped))
    });
    assert!(dropped > 0.0, "the flood was over its limit");
    // Never more than the limit lets through: a second's burst, then 3,000/s from the start
    // until now (every datagram has been decided on by now, however late a busy machine
    // read it).
    let elapsed = start.elapsed().as_secs_f64();
    assert!(accepted <= 3000.0 * (elapsed + 1.0), "{accepted} lines of the flood got in over {elapsed} s");
    assert!(accepted >= 3000.0, "at least its burst got in: {accepted}");
    let m = fg.self_metrics();
    assert_eq!(metric(&m, "floodgate_dropped_total", &["reason=\"port_limit\""]), Some(0.0));
    assert_eq!(sample(&m, "floodgate_limited_total", &["listener=\"statsd_udp\""]), dropped);
    assert_eq!(
        sample(&m, "floodgate_offender_dropped_total", &["listener=\"statsd_udp\"", "source=\"127.0.0.2\""]),
        dropped
    );

    let report = offenders(&fg);
    let list = report["offenders"].as_array().unwrap();
    assert_eq!(list.len(), 1, "only the flood is an offender: {report}");
    assert_eq!(list[0]["source"], "127.0.0.2");
    assert_eq!(list[0]["listener"], "statsd_udp");
    assert_eq!(list[0]["reason"], "source_limit");
    assert_eq!(list[0]["dropped"].as_f64(), Some(dropped));
    assert!(list[0]["first_seen"].as_str().unwrap().ends_with('Z'));

    // One line when it started, one when it stopped (with what it dropped), none per packet.
    let log = wait_log(&fg, "source no longer limited", 1);
    let started: Vec<&str> = log.lines().filter(|l| l.contains("source over its limit")).collect();
    assert_eq!(started.len(), 1, "{log}");
    assert!(started[0].contains("127.0.0.2"), "{log}");
    let stopped: Vec<&str> = log.lines().filter(|l| l.contains("source no longer limited")).collect();
    assert_eq!(stopped.len(), 1, "{log}");
    assert!(stopped[0].contains(&format!("dropped={dropped}")), "dropped {dropped}: {log}");
    let report = offenders(&fg);
    assert_eq!(report["offenders"][0]["currently_limited"], false);
}

/// Only the allow-listed source is served, over UDP and TCP; the other is dropped before
/// parsing and counted.
#[test]
fn sources_outside_the_allow_list_are_dropped_and_counted() {
    let fg = Floodgate::start("flush_interval = \"1h\"", "[limits]\nallow = [\"127.0.0.3/32\", \"::1\"]\n");
    let to = fg.udp_addr();
    let outside = UdpSocket::bind("127.0.0.2:0").unwrap();
    let inside = UdpSocket::bind("127.0.0.3:0").unwrap();
    for _ in 0..5 {
        outside.send_to(b"outside:1|c\nbad line", to).unwrap();
        inside.send_to(b"inside:1|c", to).unwrap();
    }
    fg.wait_counter("inside", "5");
    // Over TCP the outside source is reset at accept.
    let mut served = connect_from("127.0.0.3", fg.statsd);
    served.write_all(b"inside_tcp:1|c\n").unwrap();
    drop(served);
    fg.wait_counter("inside_tcp", "1");
    let refused = try_connect_from("127.0.0.2", fg.statsd);
    assert!(refused.is_none_or(is_reset), "the outside source's connection must be reset");

    // Two lines per datagram: messages are counted, not datagrams.
    // Over UDP the guard's kernel layer (on by default) drops them before they are queued and
    // counts datagrams (it does not parse), two lines each; user space counts lines.
    wait_for("10 lines dropped as not allowed", Duration::from_secs(30), || {
        let m = fg.self_metrics();
        let dropped = |reason: &str| {
            metric(&m, "floodgate_dropped_total", &["listener=\"statsd_udp\"", &format!("reason=\"{reason}\"")])
                .unwrap_or(0.0)
        };
        (dropped("not_allowed") + 2.0 * dropped("kernel_not_allowed") == 10.0).then_some(())
    });
    fg.wait_sample("floodgate_dropped_total", &["listener=\"statsd_tcp\"", "reason=\"not_allowed\""], |v| v == 1.0);
    let counters = fg.admin("counters\n");
    assert!(!counters.contains("outside"), "{counters}");
    assert!(counters.contains("'statsd.bad_lines_seen': 0"), "dropped before parsing: {counters}");
}

/// A connection from `source`; `None` when the server's reset already arrived while
/// connecting (it accepted and refused the connection before `connect` returned here).
fn try_connect_from(source: &str, port: u16) -> Option<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from((source.parse::<std::net::Ipv4Addr>().unwrap(), 0)).into()).unwrap();
    match socket.connect(&SocketAddr::from(([127, 0, 0, 1], port)).into()) {
        Ok(()) => Some(socket.into()),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => None,
        Err(e) => panic!("connect from {source}: {e}"),
    }
}

fn connect_from(source: &str, port: u16) -> TcpStream {
    try_connect_from(source, port).unwrap_or_else(|| panic!("the connection from {source} was reset"))
}

/// True when the server reset the connection without sending anything.
fn is_reset(mut s: TcpStream) -> bool {
    use std::io::Read;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Err(e) if e.kind() == ErrorKind::ConnectionReset)
}

/// 1,000 connection attempts a second from one source: about 10 a second are served, every
/// other one is reset before a byte of it is read, and another source is served meanwhile.
#[test]
fn a_connection_storm_is_refused_at_accept() {
    // The storm's and the other source's loopback addresses stand for two hosts.
    let fg = Floodgate::start("flush_interval = \"1h\"", "[limits]\nlocal_senders = \"by_address\"\n");
    let secs = 3.0;
    let start = Instant::now();
    let (mut attempts, mut legit_served) = (0u64, false);
    while start.elapsed().as_secs_f64() < secs {
        let due = (start.elapsed().as_secs_f64() * 1000.0) as u64;
        while attempts < due {
            // Written before the server decides: a reset connection's bytes are never read.
            if let Some(mut s) = try_connect_from("127.0.0.2", fg.statsd) {
                let _ = s.write_all(b"storm:1|c\n");
            }
            attempts += 1;
        }
        if !legit_served && start.elapsed() > Duration::from_secs(1) {
            let mut s = connect_from("127.0.0.3", fg.statsd);
            s.write_all(b"legit_tcp:1|c\n").unwrap();
            legit_served = true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(attempts > 100, "the storm did not happen: {attempts} attempts");
    fg.wait_counter("legit_tcp", "1");

    let (admitted, refused) = wait_for("every attempt admitted or refused", Duration::from_secs(30), || {
        let m = fg.self_metrics();
        let admitted = metric(&m, "floodgate_tcp_connections_total", &["listener=\"statsd_tcp\""])? - 1.0;
        let refused =
            metric(&m, "floodgate_dropped_total", &["listener=\"statsd_tcp\"", "reason=\"connection_rate\""])?;
        (admitted + refused == attempts as f64).then_some((admitted, refused))
    });
    // Every decision was taken by now: at most a burst of 10 and 10 a second since the start
    // (however the machine's load spread the attempts), and at least the burst.
    let elapsed = start.elapsed().as_secs_f64();
    assert!(admitted <= 10.0 * elapsed + 10.0 + 1.0, "{admitted} admitted in {elapsed}s");
    assert!(admitted >= 10.0, "{admitted} admitted: not even the burst");
    let m = fg.self_metrics();
    assert_eq!(metric(&m, "floodgate_limited_total", &["listener=\"statsd_tcp\""]), Some(refused));
    fg.wait_counter("storm", &admitted.to_string());
    // Nothing was read from the refused ones: the bytes received are the admitted lines'.
    let m = fg.self_metrics();
    let bytes = metric(&m, "floodgate_received_bytes_total", &["listener=\"statsd_tcp\""]).unwrap();
    assert_eq!(bytes, admitted * 10.0 + 14.0);
    let report = offenders(&fg);
    assert_eq!(report["offenders"][0]["source"], "127.0.0.2");
    assert_eq!(report["offenders"][0]["reason"], "connection_rate");
    assert_eq!(report["offenders"][0]["listener"], "statsd_tcp");
}

/// A TLS listener under the same storm: refused connections are reset before a handshake
/// starts (the server never answers their ClientHello); admitted ones handshake and are read.
#[test]
fn a_tls_listener_never_handshakes_with_a_refused_connection() {
    // The storm's and the other source's loopback addresses stand for two hosts.
    let (fg, tls_port, cert) = start_with_tls("[limits]\nlocal_senders = \"by_address\"\n");
    let client = tls_client_trusting(cert.cert.der());
    // Sends one line over TLS from `source`; Ok(true) when served, Ok(false) when reset.
    let attempt = |source: &str, line: &[u8]| -> bool {
        let Some(tcp) = try_connect_from(source, tls_port) else { return false };
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let conn = rustls::ClientConnection::new(client.clone(), "localhost".try_into().unwrap()).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let result = tls.write_all(line).and_then(|_| {
            tls.conn.send_close_notify();
            tls.flush()
        });
        match result {
            Ok(()) => true,
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => false,
            Err(e) => panic!("unexpected TLS client error: {e}"),
        }
    };
    let start = Instant::now();
    let (mut attempts, mut served) = (0u64, 0u64);
    while start.elapsed() < Duration::from_secs(2) {
        let due = (start.elapsed().as_secs_f64() * 1000.0) as u64;
        while attempts < due {
            served += attempt("127.0.0.2", b"tls_storm:1|c\n") as u64;
            attempts += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(attempt("127.0.0.3", b"tls_legit:1|c\n"), "another source is served during the storm");
    fg.wait_counter("tls_legit", "1");
    fg.wait_counter("tls_storm", &served.to_string());
    let elapsed = start.elapsed().as_secs_f64();
    assert!(served as f64 <= 10.0 * elapsed + 10.0 + 1.0 && served >= 10, "{served} served of {attempts}");
    let m = fg.self_metrics();
    let l = "listener=\"statsd_tls\"";
    assert_eq!(metric(&m, "floodgate_tls_handshakes_total", &[l]), Some((served + 1) as f64), "handshakes");
    assert_eq!(metric(&m, "floodgate_tls_handshake_failures_total", &[l]), Some(0.0));
    assert_eq!(
        metric(&m, "floodgate_dropped_total", &[l, "reason=\"connection_rate\""]),
        Some((attempts - served) as f64),
        "every refused connection counted"
    );
}

/// SIGHUP applies new `[limits]` to the running listeners: an open TCP connection survives
/// and UDP input is judged by the new limits at once.
#[test]
fn limits_reload_on_sighup_without_dropping_listeners() {
    let statsd = "flush_interval = \"1h\"";
    // A burst of 10 and then one a second.
    let fg = Floodgate::start(statsd, "[limits]\nudp_per_source = 1\nburst = \"10s\"\n");
    let mut open = connect_from("127.0.0.1", fg.statsd);
    open.write_all(b"before:1|c\n").unwrap();
    fg.wait_counter("before", "1");
    // Every datagram decided: read, or dropped by the guard's kernel layer (on by default)
    // before it was queued.
    let datagrams = |n: f64| {
        wait_for(&format!("{n} datagrams read or dropped in the kernel"), Duration::from_secs(30), || {
            let m = fg.self_metrics();
            let read = sample(&m, "floodgate_received_packets_total", &["listener=\"statsd_udp\""]);
            let kernel =
                metric(&m, "floodgate_dropped_total", &["listener=\"statsd_udp\"", "reason=\"kernel_source_limit\""]);
            (read + kernel.unwrap_or(0.0) == n).then_some(())
        });
    };
    for _ in 0..50 {
        fg.send_udp(b"limited:1|c");
    }
    datagrams(50.0);
    let counted = |name: &str| -> u64 {
        let out = fg.admin("counters\n");
        let prefix = format!("'{name}': ");
        out.lines().find_map(|l| l.trim().strip_prefix(&prefix)?.trim_end_matches(',').parse().ok()).unwrap_or(0)
    };
    let first = counted("limited");
    assert!((10..=12).contains(&first), "{first} of 50 admitted under a burst of 10");

    fg.reload(statsd, "[limits]\nudp_per_source = 0\n");
    let log = wait_log(&fg, "new limits in force", 1);
    assert!(log.contains("udp_per_source: 0"), "{log}");
    for _ in 0..50 {
        fg.send_udp(b"limited:1|c");
    }
    datagrams(100.0);
    assert_eq!(counted("limited"), first + 50, "no limit after the reload");
    open.write_all(b"after:1|c\n").unwrap();
    fg.wait_counter("after", "1");
}

/// Bad `[limits]` and TLS settings stop `floodgate check` with the file, line and key; garbage
/// instead of a ClientHello is a counted handshake failure that harms no other connection.
#[test]
fn bad_limits_tls_files_and_garbage_tls_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("f.toml");
    std::fs::write(&cfg, "[limits]\nudp_per_source = 10\nallow = [\"10.0.0.0/33\"]\n").unwrap();
    let out = floodgate_check(&cfg);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("f.toml:3: key `limits.allow`") && err.contains("10.0.0.0/33"), "{err}");
    std::fs::write(
        &cfg,
        "[statsd]\ntls_listen = [\"127.0.0.1:1\"]\ntls = { cert = \"/nonexistent.pem\", key = \"/k\" }\n",
    )
    .unwrap();
    let out = floodgate_check(&cfg);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("statsd.tls") && err.contains("/nonexistent.pem"), "{err}");

    let (fg, tls_port, _) = start_with_tls("");
    let mut garbage = connect_from("127.0.0.2", tls_port);
    garbage.write_all(b"deploys:1|c\n\x00\xff not a ClientHello\r\n").unwrap();
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut garbage, &mut rest);
    fg.wait_sample("floodgate_tls_handshake_failures_total", &["listener=\"statsd_tls\""], |v| v == 1.0);
    let counters = fg.admin("counters\n");
    assert!(!counters.contains("deploys"), "nothing of a failed handshake is parsed: {counters}");
    fg.send_udp(b"still_serving:1|c");
    fg.wait_counter("still_serving", "1");
}
