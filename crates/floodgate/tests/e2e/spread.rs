//! `receive_spread`: one client socket read by every receive thread, through the real binary.
//! The program loads where the kernel allows (the test command runs as root) and falls back
//! where it does not; under spreading the per-source limit stays exact, Carbon's sums stay
//! exact, and a reload and a shutdown leave nothing queued on either socket.
//!
//! Each test asks for two receive threads (`receive_threads = 2`), whatever the machine's core
//! count, so one client socket has two sockets to be spread over.

use std::net::UdpSocket;
use std::time::Duration;

use crate::common::*;

/// Two receive threads, so there is something to spread over; a short flush for Carbon.
const TWO_THREADS: &str = "flush_interval = \"1s\"\nreceive_threads = 2";

fn spread_datagrams(fg: &Floodgate) -> f64 {
    fg.sample("floodgate_udp_spread_datagrams_total", &["listener=\"statsd_udp\""])
}

/// One client socket at 100,000 datagrams a second (past the 25,600 that make a flow hot):
/// the program spreads it, every line reaches Carbon once, and the per-source limit
/// (20,000 lines a second) holds across both threads exactly: admitted + dropped = sent.
#[test]
fn a_hot_client_socket_is_spread_and_its_limit_stays_exact() {
    let carbon = Carbon::start();
    let fg = Floodgate::start(
        TWO_THREADS,
        // The limit under test; the kernel layer stays on (the default), so some of the flood
        // is refused in the kernel and counted there.
        &format!(
            "[graphite]\naddress = \"127.0.0.1:{}\"\n\n[limits]\nudp_per_source = 20000\nudp_per_port = 0\n\
             local_senders = \"by_address\"\n",
            carbon.line_port
        ),
    );
    assert!(fg.stderr().contains("receive spread attached"), "{}", fg.stderr());
    let sender = Sender::start("127.0.0.2", fg.udp_addr(), "spread.hits:1|c", 100_000, 1);
    std::thread::sleep(Duration::from_secs(3));
    let sent = sender.stop() as f64;
    let dropped = |reason: &str| {
        fg.self_metrics()
            .lines()
            .filter(|l| l.starts_with("floodgate_dropped_total{") && l.contains("statsd_udp"))
            .filter(|l| l.contains(&format!("reason=\"{reason}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    // Everything sent is accounted for once it is read: admitted (lines), refused by the
    // guard in user space or in the kernel. Nothing overflowed a socket buffer.
    let lines = fg.wait_sample("floodgate_received_lines_total", &["listener=\"statsd_udp\""], |lines| {
        lines + dropped("source_limit") + dropped("kernel_source_limit") >= sent
    });
    let (user, kernel) = (dropped("source_limit"), dropped("kernel_source_limit"));
    assert_eq!(dropped("kernel_receive_buffer"), 0.0, "no socket buffer overflowed");
    assert_eq!(lines + user + kernel, sent, "admitted {lines} + dropped {user} + {kernel} in the kernel = sent");
    assert!(spread_datagrams(&fg) > sent / 2.0, "the flow was spread: {}", spread_datagrams(&fg));
    // 3 s at 20,000 a second, plus the burst (1 s of the rate) and a flush's slack.
    assert!(lines <= 20_000.0 * 5.0, "the limit held: {lines} admitted");
    assert!(lines >= 20_000.0 * 2.0, "the limit admitted its rate: {lines}");
    let sum = wait_for("Carbon's sum", Duration::from_secs(60), || {
        let s: f64 = carbon.fetch("stats_counts.spread.hits").iter().sum();
        (s >= lines).then_some(s)
    });
    assert_eq!(sum, lines, "every admitted line counted once at Carbon");
}

/// Datagrams queued on both sockets while floodgate is stopped are all read: through a SIGHUP
/// (the program stays on the group), and at shutdown, which drains every socket. Carbon's sum
/// is exactly what was sent.
#[test]
fn a_reload_and_a_shutdown_drain_every_socket() {
    let carbon = Carbon::start();
    // No limits: this is about the sockets, not the guard.
    let sections = format!(
        "[graphite]\naddress = \"127.0.0.1:{}\"\n\n[limits]\nudp_per_source = 0\nudp_per_port = 0\n",
        carbon.line_port
    );
    let mut fg = Floodgate::start(&format!("{TWO_THREADS}\nreceive_buffer = \"256MiB\""), &sections);
    let socket = UdpSocket::bind("127.0.0.2:0").unwrap();
    let queue = |n: usize, name: &str| {
        fg.signal("STOP");
        for _ in 0..n {
            socket.send_to(format!("{name}:1|c").as_bytes(), fg.udp_addr()).unwrap();
        }
    };
    // 1: queued, then a reload as it resumes.
    queue(50_000, "drain.reload");
    fg.signal("HUP");
    fg.signal("CONT");
    fg.wait_sample("floodgate_received_lines_total", &["listener=\"statsd_udp\""], |v| v == 50_000.0);
    assert!(spread_datagrams(&fg) > 40_000.0, "spread over both sockets: {}", spread_datagrams(&fg));
    // 2: queued, then a shutdown as it resumes: every socket is drained before the last flush.
    queue(50_000, "drain.shutdown");
    fg.signal("TERM");
    fg.signal("CONT");
    let status = fg.child.wait().unwrap();
    assert!(status.success(), "{status}: {}", fg.stderr());
    for name in ["stats_counts.drain.reload", "stats_counts.drain.shutdown"] {
        let sum = wait_for(name, Duration::from_secs(60), || {
            let s: f64 = carbon.fetch(name).iter().sum();
            (s >= 50_000.0).then_some(s)
        });
        assert_eq!(sum, 50_000.0, "{name}");
    }
}

/// Where the kernel refuses (floodgate run as `nobody` with no capabilities), the listener
/// runs on the kernel's hash and the log says so; with `receive_spread = "off"` it says that.
#[test]
fn without_privilege_or_when_off_it_falls_back_and_says_so() {
    let wrapper =
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"];
    let fg = Floodgate::start_as(&wrapper, TWO_THREADS, "");
    let log = fg.stderr();
    assert!(log.contains("receive spread unavailable"), "{log}");
    assert!(!log.contains("receive spread attached"), "{log}");
    // It still reads.
    let socket = UdpSocket::bind("127.0.0.2:0").unwrap();
    socket.send_to(b"x:1|c", fg.udp_addr()).unwrap();
    fg.wait_sample("floodgate_received_lines_total", &["listener=\"statsd_udp\""], |v| v == 1.0);
    drop(fg);
    let fg = Floodgate::start(&format!("{TWO_THREADS}\nreceive_spread = \"off\""), "");
    let log = fg.stderr();
    assert!(log.contains("receive spread off"), "{log}");
    let statsd = ["listener=\"statsd_udp\""];
    assert_eq!(metric(&fg.self_metrics(), "floodgate_udp_spread_datagrams_total", &statsd), None);
}
