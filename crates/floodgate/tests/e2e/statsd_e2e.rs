//! End-to-end tests of the StatsD path through the real binary: UDP and TCP in, Graphite out,
//! the console, /metrics, bad input, max_series, Carbon outages and shutdown.

use std::io::Write;
use std::net::{TcpStream, UdpSocket};
use std::time::Duration;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(20);

fn graphite_section(port: u16, extra: &str) -> String {
    format!("[graphite]\naddress = \"127.0.0.1:{port}\"\n{extra}\n")
}

#[test]
fn udp_and_tcp_lines_are_aggregated_and_flushed() {
    let carbon = Capture::start();
    // One flush, at shutdown, so UDP and TCP input land in the same payload.
    let mut fg =
        Floodgate::start("flush_interval = \"1h\"\npercentiles = [90, -50]", &graphite_section(carbon.port, ""));
    fg.send_udp(b"e2e.hits:1|c\ne2e.hits:2|c|@0.5\ne2e.temp:20|g\ne2e.temp:-5|g\ne2e.lat:10|ms\ne2e.lat:30|ms\ne2e.users:ann|s\ne2e.users:bob|s\ne2e.users:ann|s");
    let mut tcp = TcpStream::connect(("127.0.0.1", fg.statsd)).unwrap();
    tcp.write_all(b"e2e.hits:10|c\ne2e.tagged:1|c|#env:prod,az:1\n").unwrap();
    tcp.write_all(b"e2e.partial:1").unwrap();
    tcp.write_all(b"|c\n").unwrap();
    drop(tcp);
    fg.wait_counter("e2e.partial", "1");
    fg.wait_counter("e2e.hits", "15");
    assert_eq!(fg.terminate(), Some(0));
    let payload = carbon.next(WAIT).expect("the flush");
    for (name, value) in [
        ("stats_counts.e2e.hits", "15"),
        ("stats.gauges.e2e.temp", "15"),
        ("stats.timers.e2e.lat.upper_90", "30"),
        ("stats.timers.e2e.lat.lower_top50", "30"),
        ("stats.timers.e2e.lat.mean", "20"),
        ("stats.timers.e2e.lat.count", "2"),
        ("stats.sets.e2e.users.count", "2"),
        ("stats_counts.e2e.tagged;env=prod;az=1", "1"),
    ] {
        assert!(has(&payload, name, value), "{name} {value} missing in\n{}", String::from_utf8_lossy(&payload));
    }
}

#[test]
fn bad_input_is_counted_and_good_lines_around_it_are_kept() {
    let carbon = Capture::start();
    let mut fg =
        Floodgate::start("flush_interval = \"1h\"\nmax_datagram = \"8KiB\"", &graphite_section(carbon.port, ""));
    let mut mixed = Vec::new();
    mixed.extend_from_slice(b"good.a:1|c\nno_type:1\nno_value:|c\n\xff\xfe:1|c\nbad.rate:1|c|@abc\n");
    mixed.extend_from_slice(
        b"nan:NaN|c\ninf:Infinity|g\nhuge.rate:1|c|@1e308\nneg.timer:-1|ms\nbad\xc3(utf8:2|c\ngood.b:2|c\n",
    );
    fg.send_udp(&mixed);
    // Random bytes.
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for _ in 0..50 {
        let junk: Vec<u8> = (0..200)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        fg.send_udp(&junk);
    }
    // An oversize datagram: its complete lines before the cut are kept.
    let mut big = Vec::new();
    for _ in 0..1000 {
        big.extend_from_slice(b"good.big:1|c\n");
    }
    fg.send_udp(&big);
    fg.send_udp(b"good.after:1|c");
    fg.wait_counter("good.after", "1");
    let (_, metrics) = http_get(fg.http, "/metrics").unwrap();
    let oversize = metric(&metrics, "floodgate_dropped_total", &["listener=\"statsd_udp\"", "reason=\"oversize\""]);
    assert_eq!(oversize, Some(1.0), "oversize datagram counted:\n{metrics}");
    assert_eq!(fg.terminate(), Some(0));
    let payload = carbon.next(WAIT).expect("the flush");
    let lines = parse_plaintext(&payload);
    assert_eq!(value_of(&lines, "stats_counts.good.a"), Some("1"));
    assert_eq!(value_of(&lines, "stats_counts.good.b"), Some("2"));
    // 8 KiB of 13-byte lines: 630 whole lines survive the cut.
    assert_eq!(value_of(&lines, "stats_counts.good.big"), Some(&*(8192 / 13).to_string()));
    // The validity rule: no Infinity gauge (Etsy statsd would write one), no empty name.
    assert_eq!(value_of(&lines, "stats.gauges.inf"), None);
    assert!(lines.iter().all(|(n, _, _)| !n.ends_with("counters.") && !n.contains("..")), "{lines:?}");
    let bad: f64 = value_of(&lines, "stats_counts.statsd.bad_lines_seen").unwrap().parse().unwrap();
    assert!(bad >= 7.0, "bad lines counted: {bad}");
}

#[test]
fn max_series_bounds_memory_and_keeps_existing_series() {
    let carbon = Capture::start();
    let fg = Floodgate::start("flush_interval = \"1s\"\nmax_series = 1000", &graphite_section(carbon.port, ""));
    fg.send_udp(b"kept.series:1|c");
    // Make sure it is in before the flood.
    carbon.wait_for(WAIT, |p| has(p, "stats_counts.kept.series", "1"));
    // A million new names over TCP (nothing lost on the way, so the accounting is exact).
    let mut tcp = TcpStream::connect(("127.0.0.1", fg.statsd)).unwrap();
    let mut text = String::new();
    for batch in 0..1000u32 {
        text.clear();
        for i in 0..1000 {
            text.push_str(&format!("flood.{}:1|c\n", batch * 1000 + i));
        }
        tcp.write_all(text.as_bytes()).unwrap();
    }
    tcp.write_all(b"kept.series:5|c\n").unwrap();
    drop(tcp);
    let payload = carbon.wait_for(Duration::from_secs(60), |p| has(p, "stats_counts.kept.series", "5"));
    let lines = parse_plaintext(&payload);
    let num_stats: usize = value_of(&lines, "statsd.numStats").unwrap().parse().unwrap();
    // max_series, plus Etsy's timestamp_lag gauge, which the flush itself adds.
    assert!(num_stats <= 1001, "numStats {num_stats} within max_series");
    // Every name past the bound refused and counted; the store holds max_series at most.
    let dropped = fg.sample("floodgate_statsd_dropped_series_total", &["reason=\"max_series\""]);
    assert!((1_000_000.0 - 1000.0..=1_000_000.0).contains(&dropped), "dropped series counted: {dropped}");
    assert!(fg.sample("floodgate_statsd_series", &[]) <= 1001.0);
}

#[test]
fn tcp_skips_oversize_lines_and_keeps_the_connection() {
    let carbon = Capture::start();
    // 50 connections from one address at once, past the default 10 new connections/s per source.
    let mut fg = Floodgate::start(
        "flush_interval = \"1h\"\nmax_line_length = 100",
        &format!("{}[limits]\ntcp_connections_per_source = 0\n", graphite_section(carbon.port, "")),
    );
    let mut conns: Vec<TcpStream> = (0..50).map(|_| TcpStream::connect(("127.0.0.1", fg.statsd)).unwrap()).collect();
    for c in conns.iter_mut() {
        c.write_all(b"tcp.many:1|c\n").unwrap();
    }
    let c = &mut conns[0];
    c.write_all(b"tcp.before:1|c\n").unwrap();
    c.write_all(format!("tcp.{}:1|c\n", "x".repeat(200)).as_bytes()).unwrap();
    // Longer than the whole read buffer too.
    c.write_all(format!("tcp.{}:1|c\n", "y".repeat(200_000)).as_bytes()).unwrap();
    c.write_all(b"tcp.after:1|c\n").unwrap();
    fg.wait_counter("tcp.after", "1");
    fg.wait_counter("tcp.many", "50");
    let (_, metrics) = http_get(fg.http, "/metrics").unwrap();
    let oversize = metric(&metrics, "floodgate_dropped_total", &["listener=\"statsd_tcp\"", "reason=\"oversize\""]);
    assert_eq!(oversize, Some(2.0), "{metrics}");
    assert_eq!(
        metric(&metrics, "floodgate_tcp_open_connections", &["listener=\"statsd_tcp\""]),
        Some(50.0),
        "{metrics}"
    );
    drop(conns);
    assert_eq!(fg.terminate(), Some(0));
    let payload = carbon.next(WAIT).expect("the flush");
    assert!(has(&payload, "stats_counts.tcp.before", "1"));
    assert!(has(&payload, "stats_counts.tcp.after", "1"));
    assert!(has(&payload, "stats_counts.tcp.many", "50"));
    assert!(!String::from_utf8_lossy(&payload).contains("xxxx"));
}

#[test]
fn flushes_are_buffered_while_carbon_is_down_and_sent_in_order() {
    let port = free_port();
    let fg = Floodgate::start("flush_interval = \"300ms\"", &graphite_section(port, ""));
    let mut flushes = next_flush(&fg, 0.0);
    for i in 1..=3 {
        fg.send_udp(format!("outage.c{i}:1|c").as_bytes());
        fg.wait_counter(&format!("outage.c{i}"), "1");
        flushes = next_flush(&fg, flushes);
    }
    let held = fg.sample("floodgate_sink_buffer_payloads", &["sink=\"graphite\""]) as usize;
    assert!(held >= 3, "flushes held while Carbon is down: {held}");
    // Carbon comes back on the same port.
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let payloads = accept_payloads(&listener, WAIT, |p| p.len() >= held);
    let stamps: Vec<i64> = payloads.iter().map(|p| parse_plaintext(p)[0].2.parse().unwrap()).collect();
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "sent in order: {stamps:?}");
    for i in 1..=3 {
        let name = format!("stats_counts.outage.c{i}");
        assert!(payloads.iter().any(|p| has(p, &name, "1")), "{name} delivered after the outage");
    }
}

/// Waits until the flusher has run once more than `seen` times; returns the new count.
fn next_flush(fg: &Floodgate, seen: f64) -> f64 {
    fg.wait_sample("floodgate_flushes_total", &[], |n| n > seen)
}

/// Carbon unreachable, a 2 KiB buffer: past the bound the *oldest* flushes are dropped (and
/// counted); when Carbon is back what is delivered is the newest flushes, in order, with no
/// gap. Each flush is told apart by a gauge set to its number just before it.
#[test]
fn buffer_bound_drops_the_oldest_flushes_and_counts_them() {
    let port = free_port();
    let fg = Floodgate::start("flush_interval = \"200ms\"", &graphite_section(port, "buffer = \"2KiB\""));
    let graphite = ["sink=\"graphite\""];
    let mut flushes = next_flush(&fg, 0.0);
    let mut k = 0;
    while fg.sample("floodgate_sink_dropped_payloads_total", &graphite) < 3.0 {
        k += 1;
        assert!(k < 100, "no flush dropped at the buffer bound");
        fg.send_udp(format!("drop.flush:{k}|g").as_bytes());
        let want = format!("'drop.flush': {k}");
        wait_for("the gauge set", WAIT, || fg.admin("gauges\n").contains(&want).then_some(()));
        flushes = next_flush(&fg, flushes);
        let bytes = fg.sample("floodgate_sink_buffer_bytes", &graphite);
        let held = fg.sample("floodgate_sink_buffer_payloads", &graphite);
        // Within the bound, or a single payload larger than the bound (never dropped alone).
        assert!(bytes <= 2048.0 || held == 1.0, "{bytes} bytes in {held} payloads");
    }
    let last = k;
    // Carbon comes back: every held flush arrives, oldest first.
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let payloads = accept_payloads(&listener, WAIT, |p| {
        p.iter().any(|p| value_of(&parse_plaintext(p), "stats.gauges.drop.flush") == Some(&*last.to_string()))
    });
    let seen: Vec<u64> = payloads
        .iter()
        .filter_map(|p| value_of(&parse_plaintext(p), "stats.gauges.drop.flush").map(|v| v.parse().unwrap()))
        .collect();
    let (first, newest) = (seen[0], *seen.last().unwrap());
    assert!(first > 1, "the oldest flushes were dropped, not delivered: {seen:?}");
    assert_eq!(newest, last, "the newest flush is delivered: {seen:?}");
    assert!(seen.windows(2).all(|w| w[1] == w[0] || w[1] == w[0] + 1), "in order, without a gap: {seen:?}");
}

#[test]
fn sigterm_flushes_what_is_held_and_exits_0() {
    let carbon = Capture::start();
    let mut fg = Floodgate::start("flush_interval = \"1h\"", &graphite_section(carbon.port, ""));
    fg.send_udp(b"shutdown.held:7|c");
    fg.wait_counter("shutdown.held", "7");
    assert_eq!(fg.terminate(), Some(0));
    let payload = carbon.next(WAIT).expect("final flush delivered");
    assert!(has(&payload, "stats_counts.shutdown.held", "7"));
}

#[test]
fn management_console_commands() {
    let fg = Floodgate::start("", "");
    fg.send_udp(b"con.a:1|c\ncon.b:2|c\ncon.t:5|ms\ncon.g:3|g");
    fg.wait_counter("con.b", "2");
    assert_eq!(fg.admin("health\n"), "health: up\n");
    assert_eq!(fg.admin("health down\n"), "health: down\n");
    assert_eq!(http_get(fg.http, "/healthz").unwrap().0, 503);
    assert_eq!(fg.admin("health up\n"), "health: up\n");
    assert_eq!(http_get(fg.http, "/healthz").unwrap().0, 200);
    assert!(fg.admin("timers\n").contains("'con.t': [ 5 ]"));
    assert!(fg.admin("gauges\n").contains("'con.g': 3"));
    assert_eq!(fg.admin("delcounters con.*\n").lines().filter(|l| l.starts_with("deleted: con.")).count(), 2);
    assert!(fg.admin("delgauges nope\n").contains("metric nope not found"));
    assert!(fg.admin("stats\n").starts_with("uptime: "));
    assert!(fg.admin("config\n").contains("flush_interval = \"10s\""));
    assert_eq!(fg.admin("bogus\n"), "ERROR\n");
    assert!(fg.admin("help\n").starts_with("Commands:"));
}

#[test]
fn metrics_exposition_passes_promtool() {
    let carbon = Capture::start();
    let fg =
        Floodgate::start("flush_interval = \"300ms\"\npercentiles = [90, 99, -10]", &graphite_section(carbon.port, ""));
    fg.send_udp(b"api.req:1|c|#env:prod,code:200\napi.req:1|c|#env:dev\napi.lat:5|ms\napi.lat:7|ms\nq.depth:4|g\nq.users:a|s\nweird name/with:chars:1|c\n9starts.with.digit:1|c");
    carbon.wait_for(WAIT, |p| has(p, "stats_counts.api.req;env=dev", "1"));
    let (code, body) = http_get(fg.http, "/metrics").unwrap();
    assert_eq!(code, 200);
    for want in [
        "api_req_total{env=\"prod\",code=\"200\"} 1",
        "api_lat{quantile=\"0.9\"} 7",
        "q_depth 4",
        "floodgate_received_lines_total{",
    ] {
        assert!(body.contains(want), "{want} missing:\n{body}");
    }
    promtool_check(&body);
}

#[test]
fn cli_check_help_and_version() {
    let bin = env!("CARGO_BIN_EXE_floodgate");
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[statsd]\nflush_interval = \"2s\"\n").unwrap();
    let out = floodgate_check(&good);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("flush_interval = \"2s\""));
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[statsd]\nflush_interval = \"2s\"\n\n[graphite]\nadress = \"x:1\"\n").unwrap();
    let out = floodgate_check(&bad);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:5") && err.contains("adress"), "{err}");
    let out = std::process::Command::new(bin).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("check"));
    let out = std::process::Command::new(bin).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("floodgate "));
    // A listener that cannot bind is a clear start-up error.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cfg = dir.path().join("busy.toml");
    std::fs::write(&cfg, config_text(Ports::free(), &format!("udp = []\ntcp = [\"127.0.0.1:{port}\"]"), "")).unwrap();
    let out = std::process::Command::new(bin).args(["run", "--config"]).arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("cannot bind statsd tcp 127.0.0.1:{port}")));
    // A UDP port another process holds is refused too, not silently shared via SO_REUSEPORT.
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    std::fs::write(&cfg, config_text(Ports::free(), &format!("udp = [\"127.0.0.1:{port}\"]\ntcp = []"), "")).unwrap();
    let out = std::process::Command::new(bin).args(["run", "--config"]).arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("cannot bind statsd udp 127.0.0.1:{port}")));
}

#[test]
fn json_logs_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("f.toml");
    let ports = Ports::free();
    let http = ports.http;
    std::fs::write(&cfg, config_text(ports, "", "")).unwrap();
    let log = dir.path().join("stderr");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_floodgate"));
    command.args(["--log-format", "json", "--config"]).arg(&cfg);
    let mut fg = Running::ready(command, ("127.0.0.1", http), &log);
    assert_eq!(fg.terminate(), Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 3, "{text}");
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v.get("level").is_some() && v.get("fields").is_some(), "{line}");
    }
    assert!(text.contains("receive_buffer"), "granted receive buffer reported at start: {text}");
}

#[test]
fn sighup_reloads_settings_keeps_data_and_refuses_a_bad_file() {
    let carbon = Capture::start();
    let graphite = graphite_section(carbon.port, "");
    let mut fg = Floodgate::start("flush_interval = \"1h\"\npercentiles = [90]", &graphite);
    fg.send_udp(b"reload.kept:3|c\nreload.t:1|ms\nreload.t:2|ms\nreload.t:3|ms\nreload.t:4|ms");
    fg.wait_counter("reload.kept", "3");
    fg.reload("flush_interval = \"1h\"\npercentiles = [50]", &graphite);
    wait_for("the reload applied", WAIT, || fg.admin("config\n").contains("percentiles = [50.0]").then_some(()));
    // A broken file is refused; the running config stays and floodgate keeps serving.
    fg.reload("flush_interval = \"1h\"\npercentiles = [50]\nno_such_key = 1", &graphite);
    wait_for("the bad file refused", WAIT, || fg.stderr().contains("config refused").then_some(()));
    assert!(fg.admin("config\n").contains("percentiles = [50.0]"));
    fg.send_udp(b"reload.kept:4|c");
    fg.wait_counter("reload.kept", "7");
    assert_eq!(fg.terminate(), Some(0));
    let payload = carbon.next(WAIT).expect("the flush");
    assert!(has(&payload, "stats_counts.reload.kept", "7"), "{}", String::from_utf8_lossy(&payload));
    assert!(has(&payload, "stats.timers.reload.t.upper_50", "2"));
    assert!(!String::from_utf8_lossy(&payload).contains("upper_90"));
}

/// A Python process that waits for a line on stdin, optionally renames itself (`prctl`, as any
/// program may), sends `lines` to the Unix socket `path`, says "sent", and stays alive until
/// stdin closes (its pid must still be there when floodgate reads who it is).
fn unix_statsd_sender(path: &std::path::Path, rename: &str, lines: &str) -> std::process::Child {
    let script = "import ctypes, socket, sys\n\
        sys.stdin.readline()\n\
        if sys.argv[2]:\n    ctypes.CDLL(None).prctl(15, sys.argv[2].encode(), 0, 0, 0)\n\
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
        s.sendto(sys.argv[3].encode(), sys.argv[1])\n\
        print('sent', flush=True)\n\
        sys.stdin.read()";
    std::process::Command::new(require_tool("python3"))
        .args(["-c", script, path.to_str().unwrap(), rename, lines])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn go_and_wait_sent(child: &mut std::process::Child) {
    writeln!(child.stdin.as_mut().unwrap(), "go").unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.as_mut().unwrap()), &mut line).unwrap();
    assert_eq!(line.trim(), "sent");
}

/// `origin_tags` tags metrics from a Unix socket with the kernel's word on their sender: uid,
/// program and the container id from its cgroup. Off by default; bounded by `origin_max`
/// (a program renamed past it is tagged `other`, and counted). Events from the socket carry the
/// sender in their record too.
#[test]
fn origin_tags_name_the_sending_process_and_container() {
    let carbon = Capture::start();
    let dir = tempfile::tempdir().unwrap();
    let (sock, records) = (dir.path().join("statsd.sock"), dir.path().join("records.jsonl"));
    let syslog = format!(
        "[syslog]\nudp = [\"127.0.0.1:{}\"]\ntcp = []\noutput = {{ kind = \"file\", path = \"{}\" }}\n",
        free_port(),
        records.display()
    );
    let fg = Floodgate::start(
        &format!(
            "flush_interval = \"500ms\"\nunix = [\"{}\"]\norigin_tags = [\"uid\", \"program\", \"container_id\"]\norigin_max = 1",
            sock.display()
        ),
        &format!("{}{syslog}", graphite_section(carbon.port, "")),
    );
    let cgroup = cgroup::ContainerCgroup::create();
    let mut inside = unix_statsd_sender(&sock, "", "origin.hits:2|c|#env:prod\n_e{5,4}:title|text");
    cgroup.enter(inside.id());
    go_and_wait_sent(&mut inside);
    let tags = format!("uid=0;program=python3;container_id={}", cgroup.id);
    carbon.wait_seen(
        WAIT,
        &[
            (format!("stats_counts.origin.hits;env=prod;{tags}"), "2".to_string()),
            (format!("stats_counts.dogstatsd.events;alert_type=info;{tags}"), "1".to_string()),
        ],
    );
    // A second origin (a program renamed itself) is past origin_max = 1: tagged `other`.
    let mut renamed = unix_statsd_sender(&sock, "evil-name", "origin.hits:5|c");
    go_and_wait_sent(&mut renamed);
    carbon.wait_seen(
        WAIT,
        &[("stats_counts.origin.hits;uid=other;program=other;container_id=other".to_string(), "5".to_string())],
    );
    let labels = ["listener=\"statsd_unix\""];
    assert_eq!(fg.sample("floodgate_statsd_origin_other_total", &labels), 1.0);
    // The event's record names its sender as the kernel saw it.
    let text = std::fs::read_to_string(&records).unwrap();
    let event: serde_json::Value = serde_json::from_str(text.lines().next().expect("the event's record")).unwrap();
    assert_eq!(event["kind"], "event");
    assert_eq!(event["listener"], "statsd_unix");
    assert_eq!(event["peer_pid"].as_u64(), Some(u64::from(inside.id())), "{event}");
    assert_eq!(event["peer_uid"], 0);
    assert_eq!(event["peer_program"], "python3");
    for mut child in [inside, renamed] {
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success());
    }
}

/// Without `origin_tags` (the default) a Unix socket's metrics keep their own names.
#[test]
fn origin_tags_are_off_by_default() {
    let carbon = Capture::start();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("statsd.sock");
    let _fg = Floodgate::start(
        &format!("flush_interval = \"500ms\"\nunix = [\"{}\"]", sock.display()),
        &graphite_section(carbon.port, ""),
    );
    let mut sender = unix_statsd_sender(&sock, "", "plain.hits:3|c");
    go_and_wait_sent(&mut sender);
    carbon.wait_seen(WAIT, &[("stats_counts.plain.hits".to_string(), "3".to_string())]);
    drop(sender.stdin.take());
    assert!(sender.wait().unwrap().success());
}

/// A Unix stream listener: newline-separated lines as over TCP, tagged with the connecting
/// process when `origin_tags` asks; the guard counts open connections per uid
/// (`tcp_open_per_source`), so one user holding its share does not lock another out.
#[test]
fn unix_stream_lines_are_tagged_and_connections_are_limited_per_uid() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixStream;
    let carbon = Capture::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = dir.path().join("statsd-stream.sock");
    let fg = Floodgate::start(
        &format!(
            "flush_interval = \"500ms\"\nunix_stream = [\"{}\"]\nunix_mode = \"0666\"\norigin_tags = [\"uid\", \"program\"]",
            sock.display()
        ),
        &format!("{}[limits]\ntcp_open_per_source = 2\ntcp_connections_per_source = 0\n", graphite_section(carbon.port, "")),
    );
    // Two connections of ours (uid 0) are our share; a third is refused before a byte is read.
    let mut first = UnixStream::connect(&sock).unwrap();
    let _second = UnixStream::connect(&sock).unwrap();
    first.write_all(b"stream.hits:2|c\nstream.hits:3|c\n").unwrap();
    let labels = ["listener=\"statsd_unix_stream\"", "reason=\"source_connections\""];
    let mut third = UnixStream::connect(&sock).unwrap();
    let _ = third.write_all(b"stream.refused:1|c\n");
    fg.wait_sample("floodgate_dropped_total", &labels, |v| v == 1.0);
    // Another user still gets in.
    let script = "import socket, sys\n\
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n\
        s.connect(sys.argv[1])\n\
        s.sendall(b'stream.other:7|c\\n')\n\
        print('sent', flush=True)\n\
        sys.stdin.read()";
    let mut other = std::process::Command::new(require_tool("setpriv"))
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", script])
        .arg(&sock)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(other.stdout.as_mut().unwrap()), &mut line).unwrap();
    assert_eq!(line.trim(), "sent");
    // Our own program name, as the kernel has it (the test binary's, cut to 15 bytes).
    let me = std::fs::read_to_string("/proc/self/comm").unwrap().trim_end().to_string();
    carbon.wait_seen(
        WAIT,
        &[
            (format!("stats_counts.stream.hits;uid=0;program={me}"), "5".to_string()),
            ("stats_counts.stream.other;uid=65534;program=python3".to_string(), "7".to_string()),
        ],
    );
    drop(other.stdin.take());
    assert!(other.wait().unwrap().success());
    // The refused connection's line was never read: three lines in all.
    let lines = ["listener=\"statsd_unix_stream\""];
    assert_eq!(fg.sample("floodgate_received_lines_total", &lines), 3.0);
}
