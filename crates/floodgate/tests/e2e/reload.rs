//! Reload: SIGHUP adds a StatsD listener and raises a limit while counters flow,
//! `POST /-/reload` (when enabled) refuses a broken config and the old one keeps serving, and
//! every increment sent reaches Carbon (a real carbon-cache) exactly once; a listener the new
//! file drops stops taking connections but drains what its socket and open connections hold;
//! a changed `receive_threads` applies to listeners that start, and the log says so.

use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(30);

/// `[statsd]` keys: UDP on `ports`, no TCP, a 1 s flush (and a key the loader refuses when
/// `broken`).
fn statsd(ports: &[u16], broken: bool) -> String {
    let udp: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    format!(
        "udp = [{}]\ntcp = []\nflush_interval = \"1s\"\n{}",
        udp.join(", "),
        if broken { "flushInterval = 5\n" } else { "" }
    )
}

/// Graphite to `carbon`, reload over HTTP on, `udp_per_source` at `per_source`.
fn sections(carbon: u16, per_source: u64) -> String {
    format!(
        "[graphite]\naddress = \"127.0.0.1:{carbon}\"\n[http]\nreload = true\n\
         [limits]\nudp_per_source = {per_source}\nudp_per_port = 0\n"
    )
}

fn post_reload(fg: &Floodgate) -> (u16, String) {
    http_post(fg.http, "/-/reload", &["X-Floodgate-Reload: 1"], "").unwrap()
}

/// `reload.hits:1|c` to `port`, 1,000 a second.
fn sender(port: u16) -> Sender {
    Sender::start("127.0.0.1", SocketAddr::from(([127, 0, 0, 1], port)), "reload.hits:1|c", 1000, 1)
}

fn api_status(fg: &Floodgate) -> serde_json::Value {
    serde_json::from_str(&http_get(fg.http, "/api/status").unwrap().1).unwrap()
}

#[test]
fn reload_under_traffic_adds_a_listener_and_loses_nothing() {
    let carbon = Carbon::start();
    let (a, b) = (free_port(), free_port());
    let fg = Floodgate::start(&statsd(&[a], false), &sections(carbon.line_port, 1_000_000));
    let first = sender(a);
    first.wait_more(500);

    // SIGHUP: a second UDP listener, and a higher limit.
    fg.reload(&statsd(&[a, b], false), &sections(carbon.line_port, 2_000_000));
    wait_for("the reload in force", WAIT, || {
        let v = api_status(&fg);
        let listening = v["listeners"].as_array().unwrap().iter().any(|l| l["address"] == format!("127.0.0.1:{b}"));
        (listening && v["config"]["limits"]["udp_per_source"] == 2_000_000).then_some(())
    });
    let second = sender(b);
    second.wait_more(500);

    // A broken config over HTTP: refused with its reason; both listeners keep serving.
    fg.rewrite_config(&statsd(&[a, b], true), &sections(carbon.line_port, 1));
    let (code, body) = post_reload(&fg);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("flushInterval"), "{body}");
    second.wait_more(500);
    let total = (first.stop() + second.stop()) as f64;
    carbon.wait("stats_counts.reload.hits", |p| p.iter().sum::<f64>() == total);
    assert!(fg.stderr().contains("config refused"), "{}", fg.stderr());
    assert_eq!(api_status(&fg)["config"]["limits"]["udp_per_source"], 2_000_000, "the refused file changed nothing");

    // Removing a listener over HTTP: its port is released, the other keeps it.
    fg.rewrite_config(&statsd(&[b], false), &sections(carbon.line_port, 2_000_000));
    let (code, body) = post_reload(&fg);
    assert_eq!(code, 200, "{body}");
    wait_for(&format!("127.0.0.1:{a} released"), WAIT, || UdpSocket::bind(("127.0.0.1", a)).ok());
    assert!(UdpSocket::bind(("127.0.0.1", b)).is_err(), "the remaining listener's port is free");
}

/// A reload that drops the UDP and TCP listeners on one port: datagrams already queued on its
/// socket are still counted, and a TCP connection open at the reload keeps being read until
/// its sender closes it; new connections to the port are refused.
#[test]
fn a_removed_listener_drains_its_socket_and_open_connections() {
    let (a, b) = (free_port(), free_port());
    let both = |p: u16| format!("udp = [\"127.0.0.1:{p}\"]\ntcp = [\"127.0.0.1:{p}\"]\n");
    // A burst of 20,000 from one address: draining, not the guard, is under test.
    let fg = Floodgate::start(
        &format!("udp = [\"127.0.0.1:{a}\", \"127.0.0.1:{b}\"]\ntcp = [\"127.0.0.1:{a}\"]\n"),
        BULK_UDP,
    );
    let mut open = TcpStream::connect(("127.0.0.1", a)).unwrap();
    open.write_all(&b"drain.tcp:1|c\n".repeat(100)).unwrap();
    fg.wait_counter("drain.tcp", "100");
    // A burst on UDP, then the reload at once: what is still queued must be drained.
    const BURST: usize = 20_000;
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..BURST {
        udp.send_to(b"drain.udp:1|c", ("127.0.0.1", a)).unwrap();
    }
    fg.reload(&both(b), BULK_UDP);
    wait_for(&format!("127.0.0.1:{a} closed to new connections"), WAIT, || {
        TcpStream::connect(("127.0.0.1", a)).is_err().then_some(())
    });
    wait_for(&format!("udp 127.0.0.1:{a} released"), WAIT, || UdpSocket::bind(("127.0.0.1", a)).ok());
    // The connection opened before the reload is still read.
    open.write_all(&b"drain.tcp:1|c\n".repeat(100)).unwrap();
    drop(open);
    fg.wait_counter("drain.tcp", "200");
    // (The 64 MiB default receive buffer holds the whole burst: no kernel drops.)
    fg.wait_counter("drain.udp", &BURST.to_string());
}

/// SIGHUP re-reads the StatsD TLS certificate (renewed files keep their names): new
/// connections get the new one; a broken file refuses the reload and the running one stays.
#[test]
fn sighup_applies_a_renewed_statsd_tls_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (old_ca, new_ca) = (Pki::new(dir.path(), "old"), Pki::new(dir.path(), "new"));
    let (cert, key) = old_ca.issue("server", "statsd.test");
    let (old, new) = (dir.path().join("old-ca.pem"), dir.path().join("new-ca.pem"));
    let tls_port = free_port();
    let statsd = format!("tls_listen = [\"127.0.0.1:{tls_port}\"]\ntls = {{ cert = \"{cert}\", key = \"{key}\" }}\n");
    let fg = Floodgate::start(&statsd, "");
    let ok = |ca: &std::path::Path| tls_handshake_ok(tls_port, tls_client(ca, None), "statsd.test");
    assert!(ok(&old) && !ok(&new));
    let reloaded =
        |n: usize| wait_for("the reload", WAIT, || (fg.stderr().matches("config reloaded").count() >= n).then_some(()));
    new_ca.issue("server", "statsd.test");
    fg.reload(&statsd, "");
    reloaded(1);
    assert!(ok(&new) && !ok(&old), "the renewed certificate is served");
    // A broken file: the whole reload is refused (as `floodgate check` and a start would
    // refuse it), naming the key; the running certificate stays.
    std::fs::write(&cert, "not a certificate").unwrap();
    fg.reload(&statsd, "");
    wait_for("the reload refused", WAIT, || fg.stderr().contains("config refused").then_some(()));
    assert!(fg.stderr().contains("key `statsd.tls`"), "{}", fg.stderr());
    assert_eq!(fg.stderr().matches("config reloaded").count(), 1);
    assert!(ok(&new), "the running certificate stays");
}

/// Issue 27 item 13: SIGHUP applies `unix_mode`, `unix_owner` and `unix_group` to the socket
/// files of listeners that stay (it used to leave them as they were until a restart: an
/// operator closing a socket to other users was not obeyed).
#[test]
fn sighup_applies_a_unix_sockets_mode_and_owner() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let (statsd, syslog) = (dir.path().join("statsd.sock"), dir.path().join("log.sock"));
    let sections = |extra: &str| format!("[syslog]\nunix = [\"{}\"]\n{extra}", syslog.display());
    let statsd_extra = |extra: &str| format!("unix = [\"{}\"]\n{extra}", statsd.display());
    let fg = Floodgate::start(&statsd_extra(""), &sections(""));
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!((mode(&statsd), mode(&syslog)), (0o622, 0o622));
    let closed = "unix_mode = \"0620\"\nunix_group = \"65534\"\n";
    fg.reload(&statsd_extra(closed), &sections(closed));
    wait_for("the new modes", WAIT, || (mode(&statsd) == 0o620 && mode(&syslog) == 0o620).then_some(()));
    assert_eq!(std::fs::metadata(&statsd).unwrap().gid(), 65534);
    assert_eq!(std::fs::metadata(&syslog).unwrap().gid(), 65534);
}

/// UDP sockets bound to `port` on loopback (`SO_REUSEPORT`: one a receive thread).
fn udp_sockets(port: u16) -> usize {
    let out = std::process::Command::new(require_tool("ss"))
        .args(["-H", "-uln", &format!("sport = :{port}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "ss: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// A reload that changes `receive_threads`: the running listener keeps its sockets (they are
/// made at its start), a listener the same reload adds starts with the new count, and the log
/// says so rather than leaving the key silently ignored.
#[test]
fn receive_threads_changed_by_a_reload_apply_to_listeners_that_start() {
    let (a, b) = (free_port(), free_port());
    // Two threads (the default is one a core), reload over HTTP on for a synchronous answer.
    let udp = |ports: &[u16], threads: u32| {
        let udp: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
        format!("udp = [{}]\ntcp = []\nreceive_threads = {threads}\n", udp.join(", "))
    };
    let fg = Floodgate::start(&udp(&[a], 2), "[http]\nreload = true\n");
    assert_eq!(udp_sockets(a), 2);
    assert!(!fg.stderr().contains("take effect when a listener starts"), "{}", fg.stderr());

    fg.rewrite_config(&udp(&[a, b], 3), "[http]\nreload = true\n");
    let (code, body) = post_reload(&fg);
    assert_eq!(code, 200, "{body}");
    assert!(
        fg.stderr().contains("receive_threads, receive_buffer and receive_spread take effect when a listener starts"),
        "{}",
        fg.stderr()
    );
    wait_for(&format!("127.0.0.1:{b} listening"), WAIT, || (udp_sockets(b) > 0).then_some(()));
    assert_eq!((udp_sockets(a), udp_sockets(b)), (2, 3), "the kept listener's sockets, the new one's");
}
