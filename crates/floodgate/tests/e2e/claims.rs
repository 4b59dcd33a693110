//! README claims that had no test of their own, one test each: what the README says is what a
//! test checks here, with exact accounting rather than rates.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use crate::common::*;

/// `POST /-/reload` is refused (403) unless `[http] reload = true`.
#[test]
fn reload_over_http_is_off_by_default() {
    let fg = Floodgate::start("", "");
    let (code, body) = http_post(fg.http, "/-/reload", &["X-Floodgate-Reload: 1"], "").unwrap();
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("reload = true"), "{body}");
}

/// A socket bound to `source` (127.0.0.0/8 is all local).
fn udp_from(source: &str) -> UdpSocket {
    UdpSocket::bind((source, 0)).unwrap()
}

/// `/offenders?limit=N` returns the N sources that dropped most, most first.
#[test]
fn offenders_are_limited_to_what_is_asked() {
    // The user-space guard's report (refill bounds, first and last seen): its kernel layer,
    // which would drop first, reports its own (kernel_guard.rs). Five loopback addresses stand
    // for five hosts (`by_address`).
    let fg = Floodgate::start(
        "flush_interval = \"1h\"",
        "[limits]\nudp_per_source = 2\nudp_per_port = 0\nkernel = \"off\"\nlocal_senders = \"by_address\"\n",
    );
    // Five sources over their limit of 2/s (a burst of 2): source i sends 20 + 10 i lines.
    let started = std::time::Instant::now();
    for i in 0..5u32 {
        let s = udp_from(&format!("127.0.0.{}", 10 + i));
        for _ in 0..(20 + 10 * i) {
            s.send_to(b"off:1|c", fg.udp_addr()).unwrap();
        }
    }
    // Every datagram decided (admitted + dropped = sent) before the report is read.
    let sent = (0..5).map(|i| 20 + 10 * i).sum::<u64>() as f64;
    wait_for("every datagram admitted or dropped", Duration::from_secs(30), || {
        let body = fg.self_metrics();
        let admitted = metric(&body, "floodgate_received_lines_total", &["listener=\"statsd_udp\""]).unwrap_or(0.0);
        let dropped = metric(&body, "floodgate_dropped_total", &["listener=\"statsd_udp\"", "reason=\"source_limit\""])
            .unwrap_or(0.0);
        (admitted + dropped == sent).then_some(())
    });
    let (_, body) = http_get(fg.http, "/offenders").unwrap();
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["offenders"].as_array().unwrap().len(), 5, "{report}");
    // Each dropped all past its burst, but for what the limit refilled while the datagrams were
    // being decided (a bound from the time taken, not a hope that it was quick).
    let refill = (2.0 * started.elapsed().as_secs_f64()).ceil() as u64 + 1;
    let by_source: Vec<(String, u64)> = report["offenders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["source"].as_str().unwrap().to_string(), o["dropped"].as_u64().unwrap()))
        .collect();
    for (source, dropped) in &by_source {
        let i: u64 = source.rsplit('.').next().unwrap().parse::<u64>().unwrap() - 10;
        let over = 20 + 10 * i - 2;
        assert!(
            (over.saturating_sub(refill)..=over).contains(dropped),
            "{source}: {dropped} of {over} (refill {refill})"
        );
    }
    if refill < 10 {
        let order: Vec<&str> = by_source.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(order, ["127.0.0.14", "127.0.0.13", "127.0.0.12", "127.0.0.11", "127.0.0.10"], "most first");
    }
    let (_, body) = http_get(fg.http, "/offenders?limit=2").unwrap();
    let two: serde_json::Value = serde_json::from_str(&body).unwrap();
    let sources: Vec<&str> =
        two["offenders"].as_array().unwrap().iter().map(|o| o["source"].as_str().unwrap()).collect();
    assert_eq!(sources, ["127.0.0.14", "127.0.0.13"]);
}

/// A listener on a non-loopback address with no allow-list is warned about at start; with one,
/// it is not.
#[test]
fn a_public_listener_without_an_allow_list_is_warned_about() {
    let port = free_port();
    let fg = Floodgate::start("", &format!("[syslog]\nudp = [\"0.0.0.0:{port}\"]\ntcp = []\n"));
    let warning = format!("listening on a non-loopback address with no allow-list addr=0.0.0.0:{port}");
    assert!(fg.stderr().contains(&warning), "{}", fg.stderr());
    let port = free_port();
    let fg = Floodgate::start(
        "",
        &format!("[syslog]\nudp = [\"0.0.0.0:{port}\"]\ntcp = []\n[limits]\nallow = [\"10.0.0.0/8\"]\n"),
    );
    assert!(!fg.stderr().contains("non-loopback address"), "{}", fg.stderr());
}

/// IPv6 end to end: StatsD over UDP and TCP and syslog over UDP on `[::1]`, with the guard
/// keying IPv6 sources by /64.
#[test]
fn ipv6_listeners_end_to_end() {
    let (statsd, syslog) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("syslog.jsonl");
    let fg = Floodgate::start(
        &format!("flush_interval = \"1h\"\nudp = [\"[::1]:{statsd}\"]\ntcp = [\"[::1]:{statsd}\"]"),
        &format!(
            "[syslog]\nudp = [\"[::1]:{syslog}\"]\ntcp = []\noutput = {{ kind = \"file\", path = \"{}\" }}\n",
            out.display()
        ),
    );
    UdpSocket::bind("[::1]:0").unwrap().send_to(b"v6.udp:1|c", ("::1", statsd)).unwrap();
    let mut tcp = TcpStream::connect(("::1", statsd)).unwrap();
    tcp.write_all(b"v6.tcp:2|c\n").unwrap();
    drop(tcp);
    fg.wait_counter("v6.udp", "1");
    fg.wait_counter("v6.tcp", "2");
    UdpSocket::bind("[::1]:0").unwrap().send_to(b"<13>Nov 22 10:00:00 host app: over ipv6", ("::1", syslog)).unwrap();
    let record = wait_for("the syslog record", Duration::from_secs(30), || {
        std::fs::read_to_string(&out).ok().filter(|t| t.contains("over ipv6"))
    });
    assert!(record.contains("\"source\":\"[::1]:"), "{record}");
}

/// `[statsd] tcp_max_connections` caps a listener's open connections: past it, connections
/// are reset at accept and counted (`connection_limit`).
#[test]
fn tcp_max_connections_caps_a_listener() {
    let fg = Floodgate::start("tcp_max_connections = 5", "");
    let mut held = Vec::new();
    for i in 0..10 {
        // From different sources, so the per-source cap is not what refuses them.
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.bind(&SocketAddr::from(([127, 0, 0, 20 + i], 0)).into()).unwrap();
        socket.connect(&SocketAddr::from(([127, 0, 0, 1], fg.statsd)).into()).unwrap();
        held.push(TcpStream::from(socket));
    }
    fg.wait_sample("floodgate_dropped_total", &["listener=\"statsd_tcp\"", "reason=\"connection_limit\""], |v| {
        v == 5.0
    });
    assert_eq!(fg.sample("floodgate_tcp_open_connections", &["listener=\"statsd_tcp\""]), 5.0);
    // The refused ones were reset without a byte read.
    let mut reset = 0;
    for s in &mut held {
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let mut buf = [0u8; 1];
        if matches!(s.read(&mut buf), Err(e) if e.kind() == ErrorKind::ConnectionReset) {
            reset += 1;
        }
    }
    assert_eq!(reset, 5);
}

/// Datagrams the kernel dropped because floodgate's receive buffer was full are counted
/// (`reason="kernel_receive_buffer"`): with floodgate stopped, what was sent is what it read
/// plus what the kernel dropped.
#[test]
fn kernel_receive_buffer_drops_are_counted() {
    // A burst of 5,000 from one source, past the default 3,000/s: the socket buffer, not the
    // guard, is what this test fills.
    let mut fg = Floodgate::start(
        "flush_interval = \"1h\"\nreceive_threads = 1\nreceive_buffer = \"64KiB\"",
        "[limits]\nudp_per_source = 0\nudp_per_port = 0\n",
    );
    let read_before = fg.sample("floodgate_received_packets_total", &["listener=\"statsd_udp\""]);
    fg.signal("STOP");
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sent = 5000u64;
    for _ in 0..sent {
        s.send_to(b"kernel.drop:1|c", fg.udp_addr()).unwrap();
    }
    fg.signal("CONT");
    let labels = ["listener=\"statsd_udp\"", "reason=\"kernel_receive_buffer\""];
    let (read, dropped) = wait_for("every datagram read or dropped", Duration::from_secs(30), || {
        let read = fg.sample("floodgate_received_packets_total", &["listener=\"statsd_udp\""]) - read_before;
        let dropped = fg.sample("floodgate_dropped_total", &labels);
        (read + dropped == sent as f64).then_some((read, dropped))
    });
    assert!(dropped > 0.0 && read > 0.0, "read {read}, dropped {dropped}");
    fg.wait_counter("kernel.drop", &read.to_string());
    assert_eq!(fg.terminate(), Some(0));
}

/// One budget per source however the kernel spreads its datagrams over a listener's
/// `SO_REUSEPORT` sockets: 64 sockets of one source address (64 source ports, so the kernel
/// hashes them over the 4 receive sockets) get one source's budget between them.
#[test]
fn one_budget_per_source_across_reuseport_sockets() {
    // The user-space table shared by the receive threads is the claim (the kernel layer has one
    // map per listener by construction and would drop first).
    let fg = Floodgate::start(
        "flush_interval = \"1h\"\nreceive_threads = 4",
        "[limits]\nudp_per_source = 100\nudp_per_port = 0\nkernel = \"off\"\n",
    );
    let sockets: Vec<UdpSocket> = (0..64).map(|_| udp_from("127.0.0.2")).collect();
    let started = std::time::Instant::now();
    for _ in 0..20 {
        for s in &sockets {
            s.send_to(b"budget:1|c\n", fg.udp_addr()).unwrap();
        }
    }
    let sent = 64.0 * 20.0;
    let labels = ["listener=\"statsd_udp\"", "reason=\"source_limit\""];
    let (admitted, dropped) = wait_for("every line admitted or dropped", Duration::from_secs(30), || {
        let admitted = console_counter(("127.0.0.1", fg.admin), "budget").unwrap_or(0.0);
        let dropped = fg.sample("floodgate_dropped_total", &labels);
        (admitted + dropped == sent).then_some((admitted, dropped))
    });
    // One source's burst (100) and its rate from the first datagram until every one was
    // decided on; four times as much if each socket had a budget of its own.
    let elapsed = started.elapsed().as_secs_f64();
    assert!(admitted <= 100.0 + 100.0 * elapsed, "{admitted} admitted in {elapsed:.2} s ({dropped} dropped)");
    assert!(dropped > 0.0);
}

/// The guard's log lines are capped at 10 a second; the sources past the cap are summed up in
/// one line: every source that started being limited is in one or the other.
#[test]
fn the_guards_log_lines_are_capped_and_summarised() {
    // The user-space guard's log lines (the kernel layer, which would drop first, logs none).
    // Loopback addresses stand for 40 hosts (`by_address`).
    let fg = Floodgate::start(
        "flush_interval = \"1h\"",
        "[limits]\nudp_per_source = 1\nudp_per_port = 0\nkernel = \"off\"\nlocal_senders = \"by_address\"\n",
    );
    let sources = 40;
    for i in 0..sources {
        let s = udp_from(&format!("127.0.1.{}", i + 1));
        for _ in 0..3 {
            s.send_to(b"chatty:1|c", fg.udp_addr()).unwrap();
        }
    }
    let log = wait_for("the summary line", Duration::from_secs(30), || {
        let log = fg.stderr();
        log.contains("log lines suppressed").then_some(log)
    });
    let logged = log.lines().filter(|l| l.contains("source over its limit")).count();
    let suppressed: usize = log
        .lines()
        .filter(|l| l.contains("log lines suppressed"))
        .filter_map(|l| l.split("suppressed=").nth(1)?.split_whitespace().next()?.parse::<usize>().ok())
        .sum();
    assert!(logged <= 20, "{logged} lines: the cap is 10 a second");
    assert_eq!(logged + suppressed, sources, "logged {logged}, suppressed {suppressed}:\n{log}");
}

/// `[syslog]` forward output: past the memory buffer and `spill_max`, messages are dropped and
/// counted — everything sent is held or counted.
#[test]
fn the_syslog_spill_file_is_bounded_and_overflow_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (port, dead) = (free_port(), free_port());
    let fg = Floodgate::start(
        "",
        &format!(
            "[syslog]\nudp = []\ntcp = [\"127.0.0.1:{port}\"]\nmax_message = \"1KiB\"\n\
             output = {{ kind = \"forward\", address = \"127.0.0.1:{dead}\", buffer = \"1KiB\", spill = \"{}\", spill_max = \"4KiB\" }}\n",
            dir.path().join("spill").display()
        ),
    );
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let sent = 300;
    for i in 0..sent {
        writeln!(s, "<13>Nov 22 10:00:00 host app: overflow {i:04}").unwrap();
    }
    drop(s);
    let accounted = wait_for("every message held or dropped", Duration::from_secs(30), || {
        let held = fg.sample("floodgate_syslog_output_buffer_messages", &[]);
        let dropped = fg.sample("floodgate_syslog_output_dropped_total", &[]);
        (held + dropped == sent as f64).then_some((held, dropped))
    });
    assert!(accounted.1 > 0.0, "some dropped past spill_max: {accounted:?}");
    assert!(fg.sample("floodgate_syslog_output_spill_bytes", &[]) <= 4096.0);
    assert!(std::fs::metadata(dir.path().join("spill")).unwrap().len() <= 4096);
}

/// A TLS client that connects and never finishes its handshake is cut off after 10 s and
/// counted as a failed handshake.
#[test]
fn a_silent_tls_client_is_cut_off_after_ten_seconds() {
    let (fg, tls_port, _) = start_with_tls("");
    let mut s = TcpStream::connect(("127.0.0.1", tls_port)).unwrap();
    let started = std::time::Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = [0u8; 16];
    let closed = matches!(s.read(&mut buf), Ok(0) | Err(_));
    let after = started.elapsed();
    assert!(closed, "the connection was closed");
    assert!(after >= Duration::from_secs(9) && after < Duration::from_secs(25), "closed after {after:?}");
    fg.wait_sample("floodgate_tls_handshake_failures_total", &["listener=\"statsd_tls\""], |v| v == 1.0);
}

fn forwarding_agent(aggregators: &[u16], extra: &str) -> Floodgate {
    let list: Vec<String> = aggregators.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    Floodgate::start(
        "flush_interval = \"1s\"",
        &format!("[forward]\naggregators = [{}]\nagent_id = \"claims\"\n{extra}", list.join(", ")),
    )
}

fn an_aggregator(port: u16, state: &std::path::Path, sections: &str) -> Floodgate {
    Floodgate::start(
        "flush_interval = \"1s\"",
        &format!("[aggregator]\nlisten = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\n{sections}", state.display()),
    )
}

/// The counters (`NAME_total` on `/metrics`) an aggregator holds whose name starts with `prefix`.
fn totals(fg: &Floodgate, prefix: &str) -> std::collections::BTreeMap<String, f64> {
    let (_, body) = http_get(fg.http, "/metrics").unwrap();
    body.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| {
            let (name, v) = l.rsplit_once(' ')?;
            Some((name.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// The agent's `[forward] buffer`: while its aggregator is down, unacknowledged batches are
/// held up to the bound; past it the *oldest* are dropped and counted. When the aggregator
/// comes, it gets the newest.
#[test]
fn the_agents_forward_buffer_drops_the_oldest_batches() {
    let port = free_port();
    let a = forwarding_agent(&[port], "buffer = \"6KiB\"\n");
    let link = format!("aggregator=\"127.0.0.1:{port}\"");
    let mut flushes = a.wait_sample("floodgate_flushes_total", &[], |n| n >= 1.0);
    // Each interval a batch of 100 new counters (about 2.5 KiB), named by the interval.
    let mut k = 0;
    while a.sample("floodgate_forward_dropped_batches_total", &[&link]) < 2.0 {
        k += 1;
        assert!(k < 30, "nothing dropped at the bound");
        let text: String = (0..100).map(|i| format!("buf.f{k:02}.c{i}:1|c\n")).collect();
        a.send_udp(text.as_bytes());
        a.wait_counter(&format!("buf.f{k:02}.c99"), "1");
        flushes = a.wait_sample("floodgate_flushes_total", &[], |n| n > flushes);
        let queued = a.sample("floodgate_forward_queued_bytes", &[&link]);
        assert!(queued <= 6144.0 + 4096.0, "{queued} bytes held against a 6 KiB bound");
    }
    let dir = tempfile::tempdir().unwrap();
    let agg = an_aggregator(port, dir.path(), "");
    a.wait_sample("floodgate_forward_queued_batches", &[&link], |v| v == 0.0);
    let got = wait_for("the held batches merged", Duration::from_secs(30), || {
        let got = totals(&agg, "buf_f");
        got.keys().any(|n| n.starts_with(&format!("buf_f{k:02}_"))).then_some(got)
    });
    let intervals: std::collections::BTreeSet<u32> =
        got.keys().filter_map(|n| n.strip_prefix("buf_f")?.get(..2)?.parse().ok()).collect();
    let first = *intervals.iter().next().unwrap();
    assert!(first > 1, "the oldest batches were dropped: {intervals:?}");
    assert_eq!(*intervals.iter().last().unwrap(), k, "the newest arrived: {intervals:?}");
    assert_eq!(intervals.len() as u32, k - first + 1, "no gap: {intervals:?}");
}

/// With several aggregators, a down one's share is held for it, not re-hashed onto the
/// others: the one that is up never receives a series the ring gives to the other, and the
/// other gets its share once it is up — each series at exactly one aggregator.
#[test]
fn a_down_aggregators_share_is_held_not_rehashed() {
    let (up, down) = (free_port(), free_port());
    let a = forwarding_agent(&[up, down], "");
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let agg_up = an_aggregator(up, dirs.0.path(), "");
    let names: Vec<String> = (0..50).map(|i| format!("share.s{i}")).collect();
    let text: String = names.iter().map(|n| format!("{n}:1|c\n")).collect();
    a.send_udp(text.as_bytes());
    let ring = floodgate_forward::ring::Ring::new(&[format!("127.0.0.1:{up}"), format!("127.0.0.1:{down}")]);
    let prom = |n: &str| format!("{}_total", n.replace('.', "_"));
    let mine: Vec<String> = names.iter().filter(|n| ring.owner(n.as_bytes()) == Some(0)).map(|n| prom(n)).collect();
    let theirs: Vec<String> = names.iter().filter(|n| ring.owner(n.as_bytes()) == Some(1)).map(|n| prom(n)).collect();
    assert!(!mine.is_empty() && !theirs.is_empty());
    let got_up = wait_for("the up aggregator's share", Duration::from_secs(30), || {
        let got = totals(&agg_up, "share_");
        mine.iter().all(|n| got.contains_key(n)).then_some(got)
    });
    let down_link = format!("aggregator=\"127.0.0.1:{down}\"");
    a.wait_sample("floodgate_forward_queued_batches", &[&down_link], |v| v >= 1.0);
    assert!(theirs.iter().all(|n| !got_up.contains_key(n)), "re-hashed onto the up aggregator: {got_up:?}");
    let agg_down = an_aggregator(down, dirs.1.path(), "");
    let got_down = wait_for("the held share delivered", Duration::from_secs(30), || {
        let got = totals(&agg_down, "share_");
        theirs.iter().all(|n| got.contains_key(n)).then_some(got)
    });
    assert!(got_down.values().all(|v| *v == 1.0) && got_up.values().all(|v| *v == 1.0));
    assert!(mine.iter().all(|n| !got_down.contains_key(n)), "{got_down:?}");
}

/// SIGTERM flushes every sink: Graphite, remote-write and the forward link all get the last
/// (partial) interval before the process exits 0.
#[test]
fn sigterm_flushes_every_sink() {
    let carbon = Capture::start();
    let endpoint = Endpoint::start(Vec::new());
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let agg = Floodgate::start(
        "flush_interval = \"1s\"",
        &format!("[aggregator]\nlisten = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\n", dir.path().display()),
    );
    let mut a = Floodgate::start(
        "flush_interval = \"1h\"",
        &format!(
            "[graphite]\naddress = \"127.0.0.1:{}\"\n\n[prometheus_remote_write]\nurl = \"http://127.0.0.1:{}/api/v1/write\"\n\n\
             [forward]\naggregators = [\"127.0.0.1:{port}\"]\nagent_id = \"last\"\n",
            carbon.port, endpoint.port
        ),
    );
    a.wait_sample("floodgate_forward_connected", &[], |v| v == 1.0);
    a.send_udp(b"last.interval:7|c");
    a.wait_counter("last.interval", "7");
    assert_eq!(a.terminate(), Some(0));
    assert!(has(
        &carbon.wait_for(Duration::from_secs(30), |p| has(p, "stats_counts.last.interval", "7")),
        "stats_counts.last.interval",
        "7"
    ));
    assert!(
        endpoint.requests().iter().any(|r| {
            snap::raw::Decoder::new()
                .decompress_vec(&r.body)
                .is_ok_and(|raw| String::from_utf8_lossy(&raw).contains("last_interval_total"))
        }),
        "remote-write got the last flush"
    );
    wait_for("the aggregator merged the last batch", Duration::from_secs(30), || {
        (totals(&agg, "last_interval_total").values().next() == Some(&7.0)).then_some(())
    });
}

/// The README's configuration reference is the binary's: every key it shows uncommented has
/// the value `floodgate check` prints for an empty file (plus the one key that switches each of
/// `[forward]`, `[aggregator]` and `[prometheus_remote_write]` on, its value taken from the
/// README too), and every key `check` prints is in the reference.
#[test]
fn the_readme_configuration_reference_shows_the_binarys_defaults() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let section_at = readme.find("\n## Configuration\n").expect("the README's Configuration section");
    let block = readme[section_at..].find("```toml\n").map(|i| section_at + i + "```toml\n".len()).unwrap();
    let reference = &readme[block..block + readme[block..].find("```").unwrap()];

    // (section, key, value) for every uncommented key; each section's whole text.
    let mut shown: Vec<(String, String, toml::Value)> = Vec::new();
    let mut texts: std::collections::BTreeMap<String, String> = Default::default();
    let mut section = String::new();
    for line in reference.lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix('[').and_then(|r| r.split_once(']')).map(|(n, _)| n) {
            section = name.to_string();
            continue;
        }
        texts.entry(section.clone()).or_default().push_str(&format!("{t}\n"));
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let table: toml::Table = toml::from_str(t).unwrap_or_else(|e| panic!("README [{section}] `{t}`: {e}"));
        shown.extend(table.into_iter().map(|(k, v)| (section.clone(), k, v)));
    }
    assert!(shown.len() > 80, "only {} keys read from the reference", shown.len());

    let value = |section: &str, key: &str| {
        shown.iter().find(|(s, k, _)| s == section && k == key).map(|(_, _, v)| v.clone()).unwrap()
    };
    let mut enabling = toml::Table::new();
    for (section, key) in
        [("forward", "aggregators"), ("aggregator", "listen"), ("prometheus_remote_write", "url"), ("otlp", "endpoint")]
    {
        let mut t = toml::Table::new();
        t.insert(key.to_string(), value(section, key));
        enabling.insert(section.to_string(), toml::Value::Table(t));
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("floodgate.toml");
    std::fs::write(&config, toml::to_string(&enabling).unwrap()).unwrap();
    let out = floodgate_check(&config);
    assert!(out.status.success(), "floodgate check: {}", String::from_utf8_lossy(&out.stderr));
    let effective: toml::Table = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();

    let mut differ = Vec::new();
    for (section, key, want) in &shown {
        let got = effective.get(section.as_str()).and_then(|s| s.get(key.as_str()));
        if got != Some(want) {
            differ.push(format!(
                "[{section}] {key}: README {want}, floodgate check {}",
                got.map_or("nothing".into(), |g| g.to_string())
            ));
        }
    }
    assert!(differ.is_empty(), "the README's defaults differ from the binary's:\n{}", differ.join("\n"));

    // Every key the binary has is documented in its section (uncommented or in a comment).
    let mut undocumented = Vec::new();
    for (section, keys) in &effective {
        let text = texts.get(section.as_str()).map(String::as_str).unwrap_or("");
        for key in keys.as_table().into_iter().flat_map(|t| t.keys()) {
            let word = |i: usize| {
                text[i + key.len()..].starts_with(|c: char| !(c.is_alphanumeric() || c == '_'))
                    && !text[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_')
            };
            if !text.match_indices(key.as_str()).any(|(i, _)| word(i)) {
                undocumented.push(format!("[{section}] {key}"));
            }
        }
    }
    assert!(undocumented.is_empty(), "keys missing from the README's reference: {undocumented:?}");
}

/// The README's quick start, as a new user types it: floodgate on its built-in defaults (what
/// `cargo run --release` runs: the binary, no arguments, in a folder of its own), then each
/// `$` command of the quick start run verbatim by bash in that folder, and what it prints
/// compared with what the README shows. In a network namespace of the test's own, so the
/// default ports are its alone. Before a command whose output is shown, the test waits until
/// floodgate has read what the commands before it sent (its own counters say so, without
/// touching what the command reads), so each output is checked once, not polled for.
#[test]
fn the_readme_quick_start_prints_what_it_shows() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let at = readme.find("\n## Quick start\n").expect("the README's Quick start");
    let block = readme[at..].find("```console\n").map(|i| at + i + "```console\n".len()).unwrap();
    let session = &readme[block..block + readme[block..].find("```").unwrap()];
    // (command, what it prints)
    let mut steps: Vec<(String, String)> = Vec::new();
    for line in session.lines() {
        match line.strip_prefix("$ ") {
            Some(command) => steps.push((command.to_string(), String::new())),
            None => {
                let (_, out) = steps.last_mut().expect("output before any command");
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    assert!(steps.len() >= 5, "{steps:?}");

    let ns = Namespace::create("quick");
    let dir = tempfile::tempdir().unwrap();
    // `./target/release/floodgate` in the commands: the binary under test.
    std::fs::create_dir_all(dir.path().join("target/release")).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_floodgate"), dir.path().join("target/release/floodgate")).unwrap();
    let stderr = dir.path().join("stderr.log");
    let child = ns
        .command(std::path::Path::new(env!("CARGO_BIN_EXE_floodgate")))
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let fg = Running { child, stderr };
    // The defaults listen on 127.0.0.1 in the namespace: the test asks there (curl).
    let get = |path: &str| {
        let url = format!("http://127.0.0.1:9318{path}");
        let out = ns.command(&require_tool("curl")).args(["-s", &url]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    wait_until("floodgate ready (/healthz)", Duration::from_secs(30), || {
        if get("/healthz") == "ok\n" {
            Ok(())
        } else {
            Err(fg.log())
        }
    });
    let self_metrics = || get("/metrics?only=floodgate");
    let (mut statsd_sent, mut syslog_sent) = (0.0, 0.0);
    for (command, shown) in &steps {
        if !shown.is_empty() {
            wait_until("floodgate has read what was sent", Duration::from_secs(30), || {
                let m = self_metrics();
                let read = metric(&m, "floodgate_received_packets_total", &["listener=\"statsd_udp\""]).unwrap_or(0.0);
                let written = metric(&m, "floodgate_syslog_output_messages_total", &[]).unwrap_or(0.0);
                if read == statsd_sent && written == syslog_sent {
                    Ok(())
                } else {
                    Err(format!("{read}, {written}: {}", fg.log()))
                }
            });
        }
        let out = ns.command(&require_tool("bash")).arg("-c").arg(command).current_dir(dir.path()).output().unwrap();
        assert!(out.status.success(), "`{command}`: {}", String::from_utf8_lossy(&out.stderr));
        let printed = String::from_utf8_lossy(&out.stdout);
        assert_eq!(printed.trim_end(), shown.trim_end(), "`{command}` printed something else than the README shows");
        statsd_sent += command.matches("/dev/udp/127.0.0.1/8125").count() as f64;
        syslog_sent += command.matches("logger ").count() as f64;
    }
}

/// The console and HTTP do not rate-limit the host itself: from inside the namespace it runs
/// in, 50 new connections at once to each, from 127.0.0.1 and from the namespace's own
/// address, are all served (`watch`, a local agent or a harness polls like that). A remote
/// source (the host, seen from the namespace) is still held to 10 new connections a second.
#[test]
fn the_host_itself_may_poll_http_and_the_console_as_often_as_it_likes() {
    let ns = Namespace::create("poll");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("floodgate.toml");
    // Both on every address of the namespace, so the host can reach them as a remote source.
    std::fs::write(&config, "[admin]\nlisten = \"0.0.0.0:8126\"\n[http]\nlisten = \"0.0.0.0:9318\"\n").unwrap();
    let mut command = ns.command(std::path::Path::new(env!("CARGO_BIN_EXE_floodgate")));
    command.arg("--config").arg(&config).current_dir(dir.path());
    let fg = Running::ready(command, (ns.inside.as_str(), 9318), &dir.path().join("stderr.log"));
    for address in ["127.0.0.1", ns.inside.as_str()] {
        let script = format!(
            "for i in $(seq 50); do curl -s -o /dev/null -w '%{{http_code}}\\n' http://{address}:9318/healthz; done; \
             for i in $(seq 50); do exec 3<>/dev/tcp/{address}/8126; printf 'health\\nquit\\n' >&3; cat <&3; exec 3<&-; done"
        );
        let out = ns.command(&require_tool("bash")).arg("-c").arg(&script).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text.lines().filter(|l| *l == "200").count(), 50, "HTTP from {address}: {text}\n{}", fg.log());
        assert_eq!(text.lines().filter(|l| *l == "health: up").count(), 50, "console from {address}: {text}");
    }
    // From the host, a remote source here: its burst of 10 and what the rate refills.
    let started = std::time::Instant::now();
    let served =
        (0..50).filter(|_| http_get_at((ns.inside.as_str(), 9318), "/healthz").is_ok_and(|(c, _)| c == 200)).count();
    let bound = 10.0 + 10.0 * started.elapsed().as_secs_f64() + 1.0;
    assert!(served >= 1 && served as f64 <= bound, "{served} of 50 served from a remote source (bound {bound})");
    // Read from inside (the host's own budget is spent).
    let metrics =
        ns.command(&require_tool("curl")).args(["-s", "http://127.0.0.1:9318/metrics?only=floodgate"]).output();
    let metrics = String::from_utf8_lossy(&metrics.unwrap().stdout).into_owned();
    let refused = sample(&metrics, "floodgate_dropped_total", &["listener=\"http\"", "reason=\"connection_rate\""]);
    assert_eq!(refused as usize, 50 - served);
}
