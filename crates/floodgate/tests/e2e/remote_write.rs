//! The remote-write output's contract with an endpoint, checked on the wire: the request's
//! headers and body as sent, 5xx and 429 retried (the same flush again), other 4xx dropped and
//! counted, the buffer's bound while the endpoint is down. The endpoint is a recording test
//! double (a real Prometheus receives remote-write in `forward.rs`), answering with the status
//! codes each test scripts.

use std::time::Duration;

use crate::common::*;

fn start(endpoint: u16, extra: &str) -> Floodgate {
    Floodgate::start(
        "flush_interval = \"200ms\"",
        &format!(
            "[prometheus_remote_write]\nurl = \"http://127.0.0.1:{endpoint}/api/v1/write\"\ntimeout = \"2s\"\n\
             headers = {{ \"X-Scope-OrgID\" = \"tenant-7\", Authorization = \"Bearer wire-token\" }}\n{extra}"
        ),
    )
}

/// What a request carries: the protocol's headers, the configured ones, a snappy-compressed
/// protobuf `WriteRequest` with the series.
#[test]
fn a_request_on_the_wire_carries_the_protocol_and_the_configured_headers() {
    let endpoint = Endpoint::start(Vec::new());
    let fg = start(endpoint.port, "");
    fg.send_udp(b"wire.hits:3|c|#env:prod");
    let request = wait_for("a request with wire_hits", Duration::from_secs(30), || {
        endpoint.requests().into_iter().find(|r| {
            snap::raw::Decoder::new()
                .decompress_vec(&r.body)
                .is_ok_and(|raw| String::from_utf8_lossy(&raw).contains("wire_hits_total"))
        })
    });
    assert!(request.head.starts_with("POST /api/v1/write HTTP/1.1"), "{}", request.head);
    assert_eq!(request.header("content-encoding").as_deref(), Some("snappy"));
    assert_eq!(request.header("content-type").as_deref(), Some("application/x-protobuf"));
    assert_eq!(request.header("x-prometheus-remote-write-version").as_deref(), Some("0.1.0"));
    assert_eq!(request.header("x-scope-orgid").as_deref(), Some("tenant-7"));
    assert_eq!(request.header("authorization").as_deref(), Some("Bearer wire-token"));
    assert!(request.header("user-agent").is_some_and(|u| u.starts_with("floodgate/")));
    let raw = snap::raw::Decoder::new().decompress_vec(&request.body).unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.contains("env") && text.contains("prod"), "the tag is a label");
}

/// 503 and 429 are retried — the same flush, sent again — and the flush is then delivered;
/// 400 is not retried: that flush is dropped and counted.
#[test]
fn server_errors_and_429_are_retried_other_client_errors_dropped() {
    let endpoint = Endpoint::start(vec![503, 429, 400]);
    let fg = start(endpoint.port, "");
    let rw = ["sink=\"remote_write\""];
    fg.wait_sample("floodgate_sink_sent_payloads_total", &rw, |v| v >= 2.0);
    let requests = endpoint.requests();
    // The first flush: refused with 503, then 429, then sent again and refused with 400, which
    // drops it; every later one is delivered.
    assert_eq!(requests[0].body, requests[1].body, "a 503 is retried with the same flush");
    assert_eq!(requests[1].body, requests[2].body, "a 429 is retried with the same flush");
    assert_ne!(requests[2].body, requests[3].body, "a 400 is not retried");
    assert_eq!(fg.sample("floodgate_sink_dropped_payloads_total", &rw), 1.0);
    assert!(fg.sample("floodgate_sink_errors_total", &rw) >= 3.0);
}

/// While the endpoint is down, flushes wait up to `buffer` bytes; past it the oldest are
/// dropped and counted; the buffer never holds more than its bound (or one flush).
#[test]
fn the_buffer_is_bounded_while_the_endpoint_is_down() {
    let dead = free_port();
    let fg = start(dead, "buffer = \"4KiB\"\n");
    let rw = ["sink=\"remote_write\""];
    for i in 0..50 {
        fg.send_udp(format!("rw.series{i}:1|c").as_bytes());
    }
    fg.wait_sample("floodgate_sink_dropped_payloads_total", &rw, |v| v >= 3.0);
    let bytes = fg.sample("floodgate_sink_buffer_bytes", &rw);
    let held = fg.sample("floodgate_sink_buffer_payloads", &rw);
    assert!(bytes <= 4096.0 || held == 1.0, "{bytes} bytes in {held} flushes against a 4 KiB bound");
    assert_eq!(fg.sample("floodgate_sink_sent_payloads_total", &rw), 0.0);
}
