//! The PROXY protocol on the TCP listeners: a balancer's header names the client, which is
//! what the record says and the guard judges; a connection from anywhere else may not send
//! one, and a balancer's must. (Real HAProxy in front comes with the rest of issue 29; here
//! the headers are written by hand, byte for byte as the specification lays them out.)

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
    let fg = Floodgate::start(
        "",
        &format!(
            "[syslog]\nudp = []\ntcp = [\"127.0.0.1:{port}\"]\nproxy_protocol = true\nproxy_from = [\"127.0.0.1/32\"]\n\
             output = {{ kind = \"file\", path = \"{}\" }}\n",
            out.display()
        ),
    );
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
