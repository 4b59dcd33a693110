//! README "Running a fleet": the worked configuration in `examples/fleet` runs as written, in
//! a network namespace this test creates (so its fixed loopback ports are free): HAProxy in
//! front (`haproxy.cfg`, unchanged), two floodgate hosts (`floodgate.toml`; the second with its
//! own address, as the file says), one redis-server for the shared limits and one
//! `nats-server -js` for the records. Two clients send through HAProxy; every record reaches
//! the stream once, naming its real client, and both hosts share the ports' budgets.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

fn quiet(mut c: Command) -> Peer {
    Peer(c.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start a peer"))
}

fn listening(addr: &str) {
    wait_for(&format!("{addr} listening"), Duration::from_secs(30), || TcpStream::connect(addr).ok());
}

#[test]
fn the_readmes_fleet_runs_as_written() {
    let ns = Namespace::create("fleet");
    let dir = tempfile::tempdir().unwrap();
    let example = repo_root().join("examples/fleet");

    let mut redis = ns.command(&require_tool("redis-server"));
    redis.args(["--bind", "127.0.0.1", "--port", "6379", "--save", "", "--appendonly", "no", "--dir"]).arg(dir.path());
    let _redis = quiet(redis);
    let mut nats = ns.command(&require_tool("nats-server"));
    nats.args(["-a", "127.0.0.1", "-p", "4222", "-js", "-sd"]).arg(dir.path().join("js"));
    let _nats = quiet(nats);
    let mut haproxy = ns.command(&require_tool("haproxy"));
    haproxy.arg("-db").arg("-f").arg(example.join("haproxy.cfg"));
    let _haproxy = quiet(haproxy);
    ns.run(|| ["127.0.0.1:6379", "127.0.0.1:4222", "127.0.0.1:5514"].map(listening));

    let config = std::fs::read_to_string(example.join("floodgate.toml")).unwrap();
    let hosts: Vec<Running> = ["127.0.0.11", "127.0.0.12"]
        .iter()
        .enumerate()
        .map(|(i, address)| {
            let home = dir.path().join(format!("ingest-{}", i + 1));
            std::fs::create_dir(&home).unwrap();
            let path = home.join("floodgate.toml");
            std::fs::write(&path, config.replace("127.0.0.11", address)).unwrap();
            let mut command = ns.command(std::path::Path::new(env!("CARGO_BIN_EXE_floodgate")));
            command.arg("--config").arg(&path).current_dir(&home);
            let http = format!("{address}:9318");
            ns.run(|| Running::ready(command, http.as_str(), &home.join("stderr.log")))
        })
        .collect();

    // Two clients through HAProxy, 100 records each.
    ns.run(|| {
        for client in [21u8, 22] {
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            socket.bind(&SocketAddr::from(([127, 0, 0, client], 0)).into()).unwrap();
            socket.connect(&SocketAddr::from(([127, 0, 0, 1], 5514)).into()).unwrap();
            let mut s: TcpStream = socket.into();
            let text: String = (0..100).map(|i| format!("<13>client-{client}-{i:03}\n")).collect();
            s.write_all(text.as_bytes()).unwrap();
        }
    });

    // Every record in the stream once, naming its client (not HAProxy, 127.0.0.1).
    let records: Vec<serde_json::Value> = ns.run(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let js = async_nats::jetstream::new(async_nats::connect("127.0.0.1:4222").await.unwrap());
            let mut held = 0;
            for _ in 0..300 {
                if let Ok(mut s) = js.get_stream("LOGS").await {
                    held = s.info().await.map_or(0, |i| i.state.messages);
                    if held >= 200 {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(held, 200, "records in the stream");
            let s = js.get_stream("LOGS").await.unwrap();
            let mut records = Vec::new();
            for seq in 1..=held {
                let m = s.get_raw_message(seq).await.unwrap();
                records.push(serde_json::from_slice(&m.payload).unwrap());
            }
            records
        })
    });
    for client in [21, 22] {
        let mine: Vec<&serde_json::Value> = records
            .iter()
            .filter(|r| r["message"].as_str().unwrap_or_default().starts_with(&format!("client-{client}-")))
            .collect();
        assert_eq!(mine.len(), 100, "client {client}: {records:?}");
        for (i, r) in mine.iter().enumerate() {
            assert_eq!(r["message"], format!("client-{client}-{i:03}"));
            assert!(r["source"].as_str().unwrap().starts_with(&format!("127.0.0.{client}:")), "{r}");
        }
    }

    // Both hosts take the ports' budgets from Redis: each counts two hosts on its StatsD port.
    for (host, address) in hosts.iter().zip(["127.0.0.11", "127.0.0.12"]) {
        ns.run(|| {
            wait_until("two hosts share the StatsD port's budget", Duration::from_secs(30), || {
                let m = http_get_at((address, 9318), "/metrics").map(|r| r.1).unwrap_or_default();
                let hosts = metric(&m, "floodgate_guard_shared_hosts", &["listener=\"statsd_udp\""]);
                let fallen = metric(&m, "floodgate_guard_shared_fallback", &["listener=\"statsd_udp\""]);
                (hosts == Some(2.0) && fallen == Some(0.0)).then_some(()).ok_or(format!("{hosts:?} {fallen:?}"))
            })
        });
        assert!(!host.log().contains("ERROR"), "{}", host.log());
    }
}
