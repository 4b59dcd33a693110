//! Agents → aggregators → a real carbon-cache: counters from several hosts add up instead of
//! overwriting each other, every series lands at exactly one aggregator, and an aggregator
//! killed mid-run loses and doubles nothing.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use crate::common::*;

/// Flush interval of every process here; the aggregators wait half of it for the agents.
const INTERVAL_MS: u64 = 2000;

fn aggregator(carbon: &Carbon, port: u16, state_dir: &std::path::Path) -> Floodgate {
    Floodgate::start(
        &format!("flush_interval = \"{INTERVAL_MS}ms\""),
        &format!(
            "[graphite]\naddress = \"127.0.0.1:{}\"\n\n[aggregator]\nlisten = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\n",
            carbon.line_port,
            state_dir.display()
        ),
    )
}

/// An agent: its host's applications send it everything from loopback, past the default
/// 3,000 lines/s per source, so its UDP rates are off as the README's sizing advice says.
fn agent(name: &str, aggregators: &[u16]) -> Floodgate {
    let list: Vec<String> = aggregators.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    Floodgate::start(
        &format!("flush_interval = \"{INTERVAL_MS}ms\""),
        &format!("[forward]\naggregators = [{}]\nagent_id = \"{name}\"\n{BULK_UDP}", list.join(", ")),
    )
}

fn wait_connected(agent: &Floodgate, aggregators: &[u16]) {
    for p in aggregators {
        let label = format!("aggregator=\"127.0.0.1:{p}\"");
        agent.wait_sample("floodgate_forward_connected", &[&label], |v| v == 1.0);
    }
}

/// Sleeps until a quarter into the next flush interval, so what is sent next lands in one
/// interval on every agent.
fn just_after_a_boundary() {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let next = (now / INTERVAL_MS + 1) * INTERVAL_MS + INTERVAL_MS / 4;
    std::thread::sleep(Duration::from_millis(next - now));
}

fn send_to(fg: &Floodgate, text: &str) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.send_to(text.as_bytes(), SocketAddr::from(([127, 0, 0, 1], fg.statsd))).unwrap();
}

/// Three agents each count `hits` (and 20 other counters) once per interval for five
/// intervals; two aggregators share the series and write to one Carbon.
#[test]
fn counters_from_three_agents_add_up_at_carbon() {
    let carbon = Carbon::start();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let ports = [free_port(), free_port()];
    let _aggs: Vec<Floodgate> = (0..2).map(|i| aggregator(&carbon, ports[i], dirs[i].path())).collect();
    let agents: Vec<Floodgate> = (0..3).map(|i| agent(&format!("agent{i}"), &ports)).collect();
    for a in &agents {
        wait_connected(a, &ports);
    }
    let mut text = String::from("hits:1|c\n");
    for k in 0..20 {
        text.push_str(&format!("svc{k}.requests:1|c\n"));
    }
    for _ in 0..5 {
        just_after_a_boundary();
        for a in &agents {
            send_to(a, &text);
        }
    }
    let check = |name: &str| {
        let points = carbon.wait(name, |p| p.iter().sum::<f64>() >= 15.0);
        let nonzero: Vec<f64> = points.into_iter().filter(|v| *v != 0.0).collect();
        assert_eq!(nonzero, vec![3.0; 5], "{name}: one point of 3 per interval");
    };
    check("stats_counts.hits");
    for k in 0..20 {
        check(&format!("stats_counts.svc{k}.requests"));
    }
    // Both aggregators took a share, and every agent's batches were acknowledged.
    for (i, agg) in _aggs.iter().enumerate() {
        let m = agg.self_metrics();
        let series = metric(&m, "floodgate_aggregator_series_total", &[]).unwrap();
        assert!(series > 0.0, "aggregator {i} merged nothing");
    }
    for a in &agents {
        for p in &ports {
            let label = format!("aggregator=\"127.0.0.1:{p}\"");
            a.wait_sample("floodgate_forward_queued_batches", &[&label], |v| v == 0.0);
        }
    }
}

/// The aggregator is SIGKILLed mid-run and started again: the agents hold what it had not
/// acknowledged and send it again; Carbon's sum is every increment sent, once.
#[test]
fn an_aggregator_killed_mid_run_loses_and_doubles_nothing() {
    let carbon = Carbon::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut agg = aggregator(&carbon, port, dir.path());
    let agents: Vec<Floodgate> = (0..2).map(|i| agent(&format!("agent{i}"), &[port])).collect();
    for a in &agents {
        wait_connected(a, &[port]);
    }
    let senders: Vec<Sender> =
        agents.iter().map(|a| Sender::start("127.0.0.1", a.udp_addr(), "crash.hits:1|c", 50, 1)).collect();
    // Mid-run: Carbon already holds part of the count.
    carbon.wait("stats_counts.crash.hits", |p| p.iter().sum::<f64>() > 0.0);
    agg.kill();
    // The agents keep counting while it is down (about 2 s), and after it is back.
    senders.iter().for_each(|s| s.wait_more(100));
    agg.respawn();
    senders.iter().for_each(|s| s.wait_more(100));
    let sent: u64 = senders.into_iter().map(Sender::stop).sum();
    let points = carbon.wait("stats_counts.crash.hits", |p| p.iter().sum::<f64>() >= sent as f64);
    // Two more flushes written (each writes a point, 0 or not): a doubled batch would be in them.
    let points = carbon.wait("stats_counts.crash.hits", |p| p.len() >= points.len() + 2);
    assert_eq!(points.iter().sum::<f64>(), sent as f64, "points {points:?}");
    let log = agg.stderr();
    assert!(log.contains("aggregator state loaded sessions=2"), "the handled marks survived the crash: {log}");
}

/// A connection that sends garbage after its Hello is closed and counted; the agent next to
/// it is not disturbed.
#[test]
fn a_garbage_frame_closes_only_its_connection() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let agg = Floodgate::start(
        &format!("flush_interval = \"{INTERVAL_MS}ms\""),
        &format!("[aggregator]\nlisten = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\n", dir.path().display()),
    );
    let a = agent("good", &[port]);
    wait_connected(&a, &[port]);
    let sender = Sender::start("127.0.0.1", a.udp_addr(), "calm:1|c", 50, 1);
    // The good agent's batches are flowing before the bad connection arrives.
    wait_for("calm: first batch aggregated", Duration::from_secs(30), || {
        metric(&http_get(agg.http, "/metrics").unwrap().1, "calm_total", &[]).filter(|v| *v > 0.0)
    });
    // A valid Hello, then a frame whose body is not protobuf.
    let mut bad = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let hello = [0u8, 0, 0, 8, 0x0a, 0x06, 0x08, 0x01, 0x12, 0x02, b'x', b'y'];
    std::io::Write::write_all(&mut bad, &hello).unwrap();
    std::io::Write::write_all(&mut bad, &[0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff]).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut bad, &mut answer);
    assert!(String::from_utf8_lossy(&answer).contains("malformed frame"), "an Error frame says why: {answer:?}");
    // The good agent goes on being served after the bad connection is gone.
    sender.wait_more(50);
    let sent = sender.stop();
    let all = wait_for(&format!("calm: {sent} aggregated"), Duration::from_secs(30), || {
        let all = http_get(agg.http, "/metrics").unwrap().1;
        (metric(&all, "calm_total", &[]) == Some(sent as f64)).then_some(all)
    });
    assert_eq!(sample(&all, "floodgate_aggregator_protocol_errors_total", &[]), 1.0);
}

/// A CA and certificates it signs, as PEM files in `dir`.
/// Mutual TLS: an agent with a certificate from the aggregator's client CA is served; one
/// whose certificate another CA signed is refused at the handshake and nothing of it counts.
#[test]
fn mutual_tls_refuses_an_agent_without_a_valid_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "fleet");
    let rogue = Pki::new(dir.path(), "rogue");
    let (server_cert, server_key) = pki.issue("aggregator", "aggregator.test");
    let (good_cert, good_key) = pki.issue("good-agent", "good-agent.test");
    let (bad_cert, bad_key) = rogue.issue("bad-agent", "bad-agent.test");
    let ca = dir.path().join("fleet-ca.pem").display().to_string();
    let port = free_port();
    let agg = Floodgate::start(
        &format!("flush_interval = \"{INTERVAL_MS}ms\""),
        &format!(
            "[aggregator]\nlisten = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\n\
             tls = {{ cert = \"{server_cert}\", key = \"{server_key}\", client_ca = \"{ca}\" }}\n",
            dir.path().join("state").display()
        ),
    );
    let tls_agent = |name: &str, cert: &str, key: &str| {
        Floodgate::start(
            &format!("flush_interval = \"{INTERVAL_MS}ms\""),
            &format!(
                "[forward]\naggregators = [\"127.0.0.1:{port}\"]\nagent_id = \"{name}\"\n\
                 tls = {{ ca = \"{ca}\", cert = \"{cert}\", key = \"{key}\", server_name = \"aggregator.test\" }}\n"
            ),
        )
    };
    let good = tls_agent("good", &good_cert, &good_key);
    let bad = tls_agent("bad", &bad_cert, &bad_key);
    wait_connected(&good, &[port]);
    let good_sender = Sender::start("127.0.0.1", good.udp_addr(), "good:1|c", 20, 1);
    let bad_sender = Sender::start("127.0.0.1", bad.udp_addr(), "bad:1|c", 20, 1);
    // The refused agent has flushed and holds its batches; its handshakes failed.
    bad.wait_sample("floodgate_forward_queued_batches", &[], |v| v >= 1.0);
    agg.wait_sample("floodgate_tls_handshake_failures_total", &["listener=\"aggregator_tls\""], |v| v >= 1.0);
    good_sender.wait_more(20);
    let (sent_good, _) = (good_sender.stop(), bad_sender.stop());
    let all = wait_for(&format!("good: {sent_good} aggregated"), Duration::from_secs(30), || {
        let all = http_get(agg.http, "/metrics").unwrap().1;
        (metric(&all, "good_total", &[]) == Some(sent_good as f64)).then_some(all)
    });
    assert_eq!(metric(&all, "bad_total", &[]), None, "nothing from the refused agent");
    let failures = sample(&all, "floodgate_tls_handshake_failures_total", &["listener=\"aggregator_tls\""]);
    assert!(failures >= 1.0, "the bad agent's handshakes failed: {failures}");
    let m = bad.self_metrics();
    assert_eq!(metric(&m, "floodgate_forward_connected", &[]), Some(0.0));
    assert!(metric(&m, "floodgate_forward_errors_total", &[]).unwrap() >= 1.0);
    assert!(metric(&m, "floodgate_forward_queued_batches", &[]).unwrap() >= 1.0, "the refused agent holds its batches");
}

/// Three agents, 100,000 timer samples each from different distributions and 50,000 set
/// members spread over them: the aggregator's percentiles are within the sketch's 1 % of the
/// exact ones over all 300,000 samples, and the set's size within 2 %.
#[test]
fn global_percentiles_and_set_sizes_from_three_agents() {
    let capture = Capture::start();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let _agg = Floodgate::start(
        &format!("flush_interval = \"{INTERVAL_MS}ms\"\npercentiles = [90, 99]"),
        &format!(
            "[graphite]\naddress = \"127.0.0.1:{}\"\n\n[aggregator]\nlisten = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\n",
            capture.port,
            dir.path().display()
        ),
    );
    let agents: Vec<Floodgate> = (0..3).map(|i| agent(&format!("agent{i}"), &[port])).collect();
    for a in &agents {
        wait_connected(a, &[port]);
    }
    // Deterministic samples: uniform, skewed, and clustered.
    let sample = |agent: usize, i: u64| -> f64 {
        let u = ((i * 2_654_435_761) % 1_000_003) as f64 / 1_000_003.0;
        match agent {
            0 => (u * 1000.0).round() / 10.0,
            1 => (-(1.0 - u).ln() * 250.0).round() / 10.0,
            _ => (400.0 + (u - 0.5) * (u - 0.5) * 800.0).round() / 10.0,
        }
    };
    let mut all = Vec::with_capacity(300_000);
    just_after_a_boundary();
    for (k, a) in agents.iter().enumerate() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = SocketAddr::from(([127, 0, 0, 1], a.statsd));
        let mut lines = Vec::new();
        for i in 0..100_000u64 {
            let v = sample(k, i);
            all.push(v);
            lines.push(format!("lat:{v}|ms"));
        }
        for m in (k as u64 * 15_000)..(k as u64 * 15_000 + 20_000) {
            lines.push(format!("users:member-{m}|s"));
        }
        for chunk in lines.chunks(20) {
            socket.send_to(chunk.join("\n").as_bytes(), to).unwrap();
        }
    }
    all.sort_by(f64::total_cmp);
    let exact = |pct: f64| all[(pct / 100.0 * all.len() as f64).round() as usize - 1];
    let payload = capture.wait_for(Duration::from_secs(30), |p| has(p, "stats.timers.lat.count", "300000"));
    let lines = parse_plaintext(&payload);
    let value = |name: &str| value_of(&lines, name).unwrap_or_else(|| panic!("{name} missing")).parse::<f64>().unwrap();
    for pct in [90.0, 99.0] {
        let got = value(&format!("stats.timers.lat.upper_{pct}"));
        let want = exact(pct);
        eprintln!("upper_{pct}: aggregated {got}, exact {want}");
        assert!((got - want).abs() <= 0.01 * want, "upper_{pct}: {got} vs exact {want}");
    }
    assert_eq!(value("stats.timers.lat.upper"), all[all.len() - 1]);
    assert_eq!(value("stats.timers.lat.lower"), all[0]);
    let mean = all.iter().sum::<f64>() / all.len() as f64;
    assert!((value("stats.timers.lat.mean") - mean).abs() <= 1e-9 * mean);
    let users = value("stats.sets.users.count");
    eprintln!("users: aggregated {users}, exact 50000");
    assert!((users - 50_000.0).abs() <= 0.02 * 50_000.0, "{users} distinct users, 50000 sent");
}

/// Agents → aggregator → remote-write into a real Prometheus, queried back over its HTTP API:
/// the cumulative counter is the sum over both agents, tags are labels, timers are summaries.
#[test]
fn remote_write_into_a_real_prometheus() {
    let prom = Prometheus::start(None, &PrometheusOptions::default());
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let _agg = Floodgate::start(
        &format!("flush_interval = \"{INTERVAL_MS}ms\""),
        &format!(
            "[aggregator]\nlisten = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\n\n\
             [prometheus_remote_write]\nurl = \"http://127.0.0.1:{}/api/v1/write\"\n",
            dir.path().display(),
            prom.port
        ),
    );
    let agents: Vec<Floodgate> = (0..2).map(|i| agent(&format!("agent{i}"), &[port])).collect();
    for a in &agents {
        wait_connected(a, &[port]);
    }
    for a in &agents {
        send_to(a, "rw.hits:3|c|#env:prod\nrw.lat:10|ms\nrw.lat:30|ms\nrw.temp:7|g\n");
    }
    wait_for("rw_hits_total{env=\"prod\"} = 6 in Prometheus", Duration::from_secs(60), || {
        (prom.query("rw_hits_total%7Benv%3D%22prod%22%7D") == Some(6.0)).then_some(())
    });
    assert_eq!(prom.query("rw_lat_count"), Some(4.0));
    assert_eq!(prom.query("rw_lat_sum"), Some(80.0));
    assert_eq!(prom.query("rw_temp"), Some(7.0));
    let q = prom.query("rw_lat%7Bquantile%3D%220.9%22%7D").unwrap();
    assert!((q - 30.0).abs() <= 0.3, "90th percentile {q}");
}

/// Remote-write over https to a Prometheus serving TLS, its certificate trusted through `ca`.
#[test]
fn remote_write_over_https() {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let prom = Prometheus::start(Some(&cert), &PrometheusOptions::default());
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), cert.cert.pem()).unwrap();
    let fg = Floodgate::start(
        "flush_interval = \"1s\"",
        &format!(
            "[prometheus_remote_write]\nurl = \"https://127.0.0.1:{}/api/v1/write\"\nca = \"{}\"\n\
             headers = {{ \"X-Scope-OrgID\" = \"tenant-1\" }}\n",
            prom.port,
            ca.path().display()
        ),
    );
    fg.send_udp(b"secure.hits:5|c");
    wait_for("secure_hits_total = 5 in Prometheus", Duration::from_secs(60), || {
        (prom.query("secure_hits_total") == Some(5.0)).then_some(())
    });
}

/// The README's OpenSSL commands make certificates an agent and an aggregator accept for
/// mutual TLS (the worked example, run as written).
#[test]
fn the_readme_certificate_commands_work() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let after = readme.split("Certificates, made once with OpenSSL").nth(1).expect("the worked example");
    let script = after.split("```sh\n").nth(1).and_then(|s| s.split("```").next()).expect("its sh block");
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("bash")
        .arg("-ec")
        .arg(script)
        .current_dir(dir.path())
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .unwrap();
    assert!(out.status.success(), "README commands failed: {}", String::from_utf8_lossy(&out.stderr));
    let f = |name: &str| dir.path().join(name).display().to_string();
    let port = free_port();
    let agg = Floodgate::start(
        &format!("flush_interval = \"{INTERVAL_MS}ms\""),
        &format!(
            "[aggregator]\nlisten = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\n\
             tls = {{ cert = \"{}\", key = \"{}\", client_ca = \"{}\" }}\n",
            f("state"),
            f("agg1.internal.pem"),
            f("agg1.internal.key"),
            f("ca.pem")
        ),
    );
    let web = Floodgate::start(
        &format!("flush_interval = \"{INTERVAL_MS}ms\""),
        &format!(
            "[forward]\naggregators = [\"127.0.0.1:{port}\"]\n\
             tls = {{ ca = \"{}\", cert = \"{}\", key = \"{}\", server_name = \"agg1.internal\" }}\n",
            f("ca.pem"),
            f("web-1.internal.pem"),
            f("web-1.internal.key")
        ),
    );
    wait_connected(&web, &[port]);
    send_to(&web, "readme.example:1|c");
    wait_for("readme_example_total at the aggregator", Duration::from_secs(30), || {
        (metric(&http_get(agg.http, "/metrics").unwrap().1, "readme_example_total", &[]) == Some(1.0)).then_some(())
    });
}

/// Issue 27 item 5: two agents on one `state_dir` (the default is a relative path) used to
/// share a session: the aggregator took one's batch N for the other's retry, and 100 of 100
/// increments were lost, acknowledged. Now the directory is locked: the second agent refuses
/// to start and names the first.
#[test]
fn two_agents_cannot_share_a_state_directory() {
    let dir = tempfile::tempdir().unwrap();
    let state = format!("state_dir = \"{}\"\n", dir.path().display());
    let port = free_port();
    let first = Floodgate::start("", &format!("[forward]\naggregators = [\"127.0.0.1:{port}\"]\n{state}"));
    let (code, stderr) = run_to_exit(&config_text(
        Ports::free(),
        "",
        &format!("[forward]\naggregators = [\"127.0.0.1:{port}\"]\n{state}"),
    ));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(&format!("in use by another floodgate (pid {})", first.child.id())), "{stderr}");
    // An aggregator has its own lock in the same folder.
    let aggregator = |port: u16| format!("[aggregator]\nlisten = \"127.0.0.1:{port}\"\n{state}");
    let agg = Floodgate::start("", &aggregator(free_port()));
    let (code, stderr) = run_to_exit(&config_text(Ports::free(), "", &aggregator(free_port())));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(&format!("in use by another floodgate (pid {})", agg.child.id())), "{stderr}");
}
