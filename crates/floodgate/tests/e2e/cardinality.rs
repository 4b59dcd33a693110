//! Cardinality is the other flood: series budgets per sender (`[limits] series_per_source`).
//! One sender making many series is held to its budget, exactly, while another's new series
//! all arrive; `/offenders` names it with its counts and the budget.

use std::net::UdpSocket;
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(30);

fn send_from(source: &str, to: u16, lines: &[String]) {
    let socket = UdpSocket::bind((source, 0)).unwrap();
    for chunk in lines.chunks(20) {
        socket.send_to(chunk.join("\n").as_bytes(), ("127.0.0.1", to)).unwrap();
        // Paced a little: the test is about series, not the receive buffer.
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// 100,000 new series from 127.0.0.2 (over TCP: none may be lost on the way, the count must
/// be exact) against a budget of 1,000; 500 from 127.0.0.3. The
/// defaults change only where the test needs: the budget itself (its default, 250,000, would
/// take too long to reach), local addresses kept apart (`by_address`: the two senders are both
/// on this host), and the per-source and per-port rates off (the flood is fast, and is about
/// series, not lines).
#[test]
fn a_sender_is_held_to_its_series_budget_while_another_gets_all_of_its_own() {
    let fg = Floodgate::start(
        "flush_interval = \"500ms\"",
        "[limits]\nseries_per_source = 1000\nlocal_senders = \"by_address\"\nudp_per_source = 0\nudp_per_port = 0\n",
    );
    let flood: String = (0..100_000).map(|i| format!("flood.{i}:1|c\n")).collect();
    let calm: Vec<String> = (0..500).map(|i| format!("calm.{i}:1|c")).collect();
    {
        use std::io::Write;
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.bind(&std::net::SocketAddr::from(([127, 0, 0, 2], 0)).into()).unwrap();
        socket.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], fg.statsd)).into()).unwrap();
        let mut tcp: std::net::TcpStream = socket.into();
        tcp.write_all(flood.as_bytes()).unwrap();
    }
    send_from("127.0.0.3", fg.statsd, &calm);
    fg.wait_sample("floodgate_statsd_dropped_series_total", &["reason=\"series_budget\""], |v| v == 99_000.0);
    let body = wait_for("every admitted series on /metrics", WAIT, || {
        let (_, body) = http_get(fg.http, "/metrics").ok()?;
        let count = |prefix: &str| body.lines().filter(|l| l.starts_with(prefix)).count();
        (count("flood_") == 1000 && count("calm_") == 500).then_some(body)
    });
    assert!(body.lines().filter(|l| l.starts_with("flood_")).all(|l| l.ends_with(" 1")), "each admitted once");
    let (_, offenders) = http_get(fg.http, "/offenders").unwrap();
    let report: Value = serde_json::from_str(&offenders).unwrap();
    let series = &report["series"];
    assert_eq!(series["series_per_source"], 1000);
    let top = &series["senders"][0];
    assert_eq!(top["sender"], "127.0.0.2", "{series:#}");
    assert_eq!((top["live_series"].as_u64(), top["refused"].as_u64()), (Some(1000), Some(99_000)));
    assert_eq!(top["over_budget"], true);
    assert_eq!(top["top_prefixes"][0], serde_json::json!({"prefix": "flood", "series": 1000}), "{top}");
    let calm_sender = series["senders"].as_array().unwrap().iter().find(|s| s["sender"] == "127.0.0.3").unwrap();
    assert_eq!((calm_sender["live_series"].as_u64(), calm_sender["refused"].as_u64()), (Some(500), Some(0)));
    // The same on /metrics, for the alert rule (FloodgateSeriesBudgetExceeded) and dashboards.
    let metrics = fg.self_metrics();
    assert_eq!(sample(&metrics, "floodgate_statsd_senders_over_series_budget", &[]), 1.0);
    assert_eq!(sample(&metrics, "floodgate_statsd_sender_series", &["sender=\"127.0.0.2\""]), 1000.0);
    assert_eq!(sample(&metrics, "floodgate_statsd_sender_series", &["sender=\"127.0.0.3\""]), 500.0);
}

/// `series_budget_overflow = "fold"`: past its budget, a sender's values go to one overflow
/// series per metric, so the Graphite sums stay exact. Graphite is the only other change
/// from the test above (the capture stands for Carbon).
#[test]
fn folded_series_keep_the_graphite_sum_exact() {
    let carbon = Capture::start();
    let fg = Floodgate::start(
        "flush_interval = \"500ms\"",
        &format!(
            "[graphite]\naddress = \"127.0.0.1:{}\"\n[limits]\nseries_per_source = 100\nseries_budget_overflow = \"fold\"\n\
             local_senders = \"by_address\"\nudp_per_source = 0\nudp_per_port = 0\n",
            carbon.port
        ),
    );
    let lines: Vec<String> = (0..2000).map(|i| format!("orders:{}|c|#request_id:r{i}", i % 7 + 1)).collect();
    let sent: u64 = (0..2000).map(|i| i % 7 + 1).sum();
    send_from("127.0.0.2", fg.statsd, &lines);
    fg.wait_sample("floodgate_statsd_series_budget_folded_total", &[], |v| v == 1900.0);
    let mut total = 0.0;
    let mut series = std::collections::BTreeSet::new();
    while total < sent as f64 {
        let payload = carbon.next(WAIT).expect("a flush");
        for (name, value, _) in parse_plaintext(&payload) {
            if name.starts_with("stats_counts.orders") {
                total += value.parse::<f64>().unwrap();
                series.insert(name);
            }
        }
    }
    assert_eq!(total, sent as f64, "every increment reached Graphite once");
    assert!(series.contains("stats_counts.orders;overflow=true"), "{series:?}");
    assert_eq!(series.len(), 101, "the 100 admitted and the overflow series");
}

/// `/api/cardinality` names who makes the series: the metric with the most new series, its
/// prefix, and the sender that made them, next to the live counts. The budget is off here
/// (set to 0: this test is about attribution alone); local addresses kept apart as above.
#[test]
fn the_cardinality_api_names_the_metric_and_the_sender_behind_new_series() {
    let fg = Floodgate::start(
        "flush_interval = \"500ms\"",
        "[limits]\nseries_per_source = 0\nlocal_senders = \"by_address\"\nudp_per_source = 0\nudp_per_port = 0\n",
    );
    let requests: Vec<String> = (0..3000).map(|i| format!("api.requests.by_id:1|c|#request_id:r{i}")).collect();
    let steady: Vec<String> = (0..40).map(|i| format!("db.pool.size:{i}|g|#pool:p{i}")).collect();
    send_from("127.0.0.2", fg.statsd, &requests);
    send_from("127.0.0.3", fg.statsd, &steady);
    // Ready when both senders' lines are all in: the requests are a burst that may be spread
    // over the receive threads, and the gauges, sent after them, read after them.
    let report: Value = wait_for("attribution of 3,040 new series", WAIT, || {
        let (_, body) = http_get(fg.http, "/api/cardinality").ok()?;
        let v: Value = serde_json::from_str(&body).ok()?;
        let names = &v["by_new_series_a_minute"]["names"];
        (names[0]["series"] == 3000 && names[1]["series"] == 40).then_some(v)
    });
    let top = &report["by_new_series_a_minute"]["names"][0];
    assert_eq!(top["name"], "api.requests.by_id");
    assert_eq!(top["error"], 0);
    assert_eq!(top["senders"][0]["sender"], "127.0.0.2");
    assert_eq!(top["senders"][0]["series"], 3000);
    assert_eq!(report["by_new_series_a_minute"]["prefixes"][0]["name"], "api.requests");
    let second = &report["by_new_series_a_minute"]["names"][1];
    assert_eq!((second["name"].as_str(), second["series"].as_u64()), (Some("db.pool.size"), Some(40)));
    assert_eq!(second["senders"][0]["sender"], "127.0.0.3");
    let live = &report["by_live_series"]["names"][0];
    assert_eq!((live["name"].as_str(), live["series"].as_u64()), (Some("api.requests.by_id"), Some(3000)));
    // The series browser counts them by glob, and refuses a glob longer than any name.
    let (code, body) = http_get(fg.http, "/api/series?match=db.pool.*&limit=5").unwrap();
    let found: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((code, found["matched"].as_u64(), found["rows"].as_array().map(Vec::len)), (200, Some(40), Some(5)));
    assert_eq!(found["rows"][0]["sender"], "127.0.0.3", "{found}");
    let (code, _) = http_get(fg.http, &format!("/api/series?match={}", "*".repeat(600))).unwrap();
    assert_eq!(code, 400, "a 600-byte glob");
    let metrics = fg.self_metrics();
    assert_eq!(sample(&metrics, "floodgate_statsd_new_series_by_name", &["name=\"api.requests.by_id\""]), 3000.0);
    assert_eq!(sample(&metrics, "floodgate_statsd_new_series_by_name", &["name=\"db.pool.size\""]), 40.0);
}

/// With mutual TLS the client certificate names the sender: two services on one host (one
/// address) each get their own series budget. Changed from the defaults: a TLS listener with a
/// client CA (there is none by default), and a budget of 100.
#[test]
fn client_certificates_are_senders_of_their_own() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "services");
    let (server_cert, server_key) = pki.issue("server", "statsd.test");
    let (a_cert, a_key) = pki.issue("checkout", "checkout.test");
    let (b_cert, b_key) = pki.issue("search", "search.test");
    let ca = dir.path().join("services-ca.pem");
    let tls_port = free_port();
    let fg = Floodgate::start(
        &format!(
            "tls_listen = [\"127.0.0.1:{tls_port}\"]\ntls = {{ cert = \"{server_cert}\", key = \"{server_key}\", client_ca = \"{}\" }}",
            ca.display()
        ),
        "[limits]\nseries_per_source = 100\n",
    );
    let send = |cert: &str, key: &str, prefix: &str, n: usize| {
        let tcp = std::net::TcpStream::connect(("127.0.0.1", tls_port)).unwrap();
        let conn = rustls::ClientConnection::new(tls_client(&ca, Some((cert, key))), "statsd.test".try_into().unwrap())
            .unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let lines: String = (0..n).map(|i| format!("{prefix}.{i}:1|c\n")).collect();
        tls.write_all(lines.as_bytes()).unwrap();
        tls.flush().unwrap();
        tls.conn.send_close_notify();
        let _ = tls.flush();
    };
    send(&a_cert, &a_key, "checkout.cart", 300);
    send(&b_cert, &b_key, "search.query", 50);
    fg.wait_sample("floodgate_received_lines_total", &["listener=\"statsd_tls\""], |v| v == 350.0);
    let senders = wait_for("both certificates charged", WAIT, || {
        let (_, body) = http_get(fg.http, "/offenders").ok()?;
        let v: Value = serde_json::from_str(&body).ok()?;
        let senders = v["series"]["senders"].as_array()?.clone();
        (senders.len() == 2 && senders[1]["live_series"] == 50).then_some(senders)
    });
    assert_eq!(senders[0]["sender"], "checkout.test", "{senders:?}");
    assert_eq!((senders[0]["live_series"].as_u64(), senders[0]["refused"].as_u64()), (Some(100), Some(200)));
    assert_eq!(senders[1]["sender"], "search.test");
    assert_eq!(senders[1]["refused"], 0);
}

/// On an aggregator each agent is a sender (its `agent_id` here; its certificate's name with
/// mutual TLS): one agent's flood of series is held to the budget while another's all arrive.
/// Changed from the defaults: the aggregator's listener and a budget of 100 on it; the agents
/// forward to it every 500 ms.
#[test]
fn budgets_hold_per_agent_on_an_aggregator() {
    let state = tempfile::tempdir().unwrap();
    let port = free_port();
    let aggregator = Floodgate::start(
        "flush_interval = \"500ms\"",
        &format!(
            "[aggregator]\nlisten = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\n[limits]\nseries_per_source = 100\n",
            state.path().display()
        ),
    );
    let agent = |name: &str| {
        Floodgate::start(
            "flush_interval = \"500ms\"",
            &format!("[forward]\naggregators = [\"127.0.0.1:{port}\"]\nagent_id = \"{name}\"\n{BULK_UDP}"),
        )
    };
    let (web1, web2) = (agent("web-1"), agent("web-2"));
    send_from("127.0.0.1", web1.statsd, &(0..300).map(|i| format!("sessions.by_id.{i}:1|c")).collect::<Vec<_>>());
    send_from("127.0.0.1", web2.statsd, &(0..50).map(|i| format!("orders.placed.{i}:1|c")).collect::<Vec<_>>());
    let senders = wait_for("both agents charged on the aggregator", WAIT, || {
        let (_, body) = http_get(aggregator.http, "/offenders").ok()?;
        let v: Value = serde_json::from_str(&body).ok()?;
        let senders = v["series"]["senders"].as_array()?.clone();
        let done = senders.len() == 2 && senders[0]["refused"] == 200 && senders[1]["live_series"] == 50;
        done.then_some(senders)
    });
    assert_eq!((senders[0]["sender"].as_str(), senders[0]["live_series"].as_u64()), (Some("web-1"), Some(100)));
    assert_eq!((senders[1]["sender"].as_str(), senders[1]["refused"].as_u64()), (Some("web-2"), Some(0)));
    aggregator.wait_sample("floodgate_statsd_dropped_series_total", &["reason=\"series_budget\""], |v| v == 200.0);
}
