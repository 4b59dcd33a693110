//! The NATS JetStream records output against real `nats-server -js` (Debian's): every record
//! in the stream exactly once and in order, checked by stream sequence and content, across a
//! 10 s outage (the records spill, then all arrive, none doubled) and across the loss of one
//! node of a three-node cluster holding an R3 stream. The stream is read back with the
//! official Rust client.

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_nats::jetstream;

use crate::common::*;

/// A nats-server killed when the test ends.
struct Nats {
    child: Child,
    args: Vec<String>,
}

impl Nats {
    fn start(args: Vec<String>, port: u16) -> Nats {
        let child = spawn(&args);
        wait_port(port);
        Nats { child, args }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn restart(&mut self, port: u16) {
        self.child = spawn(&self.args);
        wait_port(port);
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn(args: &[String]) -> Child {
    Command::new(require_tool("nats-server")).args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()
}

fn wait_port(port: u16) {
    wait_for("nats-server listening", Duration::from_secs(20), || TcpStream::connect(("127.0.0.1", port)).ok());
}

/// One server's arguments: client port, JetStream store, and (in a cluster) its routes.
fn server(name: &str, port: u16, store: &Path, cluster: Option<(u16, &[u16])>) -> Vec<String> {
    let mut args: Vec<String> =
        ["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-n", name, "-sd"].iter().map(|s| s.to_string()).collect();
    args.push(store.display().to_string());
    if let Some((cluster_port, routes)) = cluster {
        let routes: Vec<String> = routes.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect();
        args.extend(["--cluster_name".into(), "fg".into(), "--cluster".into()]);
        args.push(format!("nats://127.0.0.1:{cluster_port}"));
        args.extend(["--routes".into(), routes.join(",")]);
    }
    args
}

/// floodgate with syslog on one TCP port, its records to NATS. From the defaults, only that.
fn floodgate(syslog_port: u16, output: &str) -> Floodgate {
    Floodgate::start(
        "",
        &format!("[syslog]\nudp = []\ntcp = [\"127.0.0.1:{syslog_port}\"]\noutput = {{ kind = \"nats\", {output} }}\n"),
    )
}

fn send(port: u16, from: usize, to: usize) {
    write_records(&mut TcpStream::connect(("127.0.0.1", port)).unwrap(), from, to);
}

fn write_records(s: &mut TcpStream, from: usize, to: usize) {
    let mut batch = String::new();
    for i in from..to {
        batch.push_str(&format!("<13>record-{i:06}\n"));
        if batch.len() > 16 * 1024 {
            s.write_all(batch.as_bytes()).unwrap();
            batch.clear();
        }
    }
    s.write_all(batch.as_bytes()).unwrap();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Waits until the stream holds `n` records, then checks each by sequence: sequence `s` holds
/// `record-(s-1)`, with a message id, and nothing more is there.
fn assert_exactly_once_in_order(url: &str, stream: &str, n: u64) {
    assert_exactly_once(url, stream, n, true);
}

/// Waits until the stream holds `n` records, then checks that each of `record-0` …
/// `record-(n-1)` is there exactly once, with a message id; with `in_order`, at its place
/// (sequence `s` holds `record-(s-1)`).
fn assert_exactly_once(url: &str, stream: &str, n: u64, in_order: bool) {
    runtime().block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let js = jetstream::new(client);
        let mut held = 0;
        for _ in 0..600 {
            if let Ok(mut s) = js.get_stream(stream).await {
                if let Ok(info) = s.info().await {
                    held = info.state.messages;
                    if held >= n {
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(held, n, "records in the stream");
        let s = js.get_stream(stream).await.unwrap();
        let mut seen = vec![false; n as usize];
        for seq in 1..=n {
            let m = s.get_raw_message(seq).await.unwrap_or_else(|e| panic!("sequence {seq}: {e}"));
            let record: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            let message = record["message"].as_str().unwrap_or_default();
            if in_order {
                let want = format!("record-{:06}", seq - 1);
                assert_eq!(message, want.as_str(), "sequence {seq}: {record}");
            }
            let k: usize = message.trim_start_matches("record-").parse().expect("a record's number");
            assert!(
                k < n as usize && !std::mem::replace(&mut seen[k], true),
                "sequence {seq}: {message} twice or unknown"
            );
            assert!(m.headers.get("Nats-Msg-Id").is_some(), "sequence {seq} has no message id");
        }
    });
}

/// The name of the node leading the stream's replicas.
fn stream_leader(url: &str, stream: &str) -> String {
    runtime().block_on(async {
        let js = jetstream::new(async_nats::connect(url).await.unwrap());
        let mut s = js.get_stream(stream).await.unwrap();
        let info = s.info().await.unwrap();
        info.cluster.as_ref().and_then(|c| c.leader.clone()).expect("an R3 stream has a leader")
    })
}

#[test]
fn every_record_reaches_jetstream_once_and_in_order_through_an_outage() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut nats = Nats::start(server("solo", port, &dir.path().join("js"), None), port);
    let syslog_port = free_port();
    // A memory buffer of 64 KiB, so an outage goes to the spill file.
    let fg = floodgate(
        syslog_port,
        &format!(
            "url = \"nats://127.0.0.1:{port}\", subject = \"logs.test\", stream = \"LOGS\", buffer = \"64KiB\", spill = \"{}\"",
            dir.path().join("spill").display()
        ),
    );
    send(syslog_port, 0, 5_000);
    fg.wait_sample("floodgate_syslog_output_messages_total", &[], |v| v >= 5_000.0);

    // Ten seconds without NATS: records keep coming, and spill. Enough of them (1.1 MB) to
    // make at least five chunks (a connection reads 256 KiB at most): while a publish is in
    // flight the memory queue takes one more chunk past its bound, so with two chunks
    // everything could wait in memory and nothing need spill (it happened, 1 run in 12).
    nats.stop();
    send(syslog_port, 5_000, 65_000);
    fg.wait_sample("floodgate_syslog_output_spill_bytes", &[], |v| v > 0.0);
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(fg.sample("floodgate_syslog_output_dropped_total", &[]), 0.0);
    nats.restart(port);
    fg.wait_sample("floodgate_syslog_output_messages_total", &[], |v| v >= 65_000.0);
    assert_exactly_once_in_order(&format!("nats://127.0.0.1:{port}"), "LOGS", 65_000);
    assert!(fg.sample("floodgate_syslog_output_errors_total", &[]) > 0.0, "the outage was seen");
}

/// A stream slower than the sender (acknowledged publishes against a TCP sender at full
/// speed), with a memory buffer of 256 KiB and no spill file: the sender is slowed (floodgate
/// stops reading it while the buffer is full), and nothing is dropped.
#[test]
fn a_stream_slower_than_the_sender_slows_it_and_drops_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _nats = Nats::start(server("slow", port, &dir.path().join("js"), None), port);
    let syslog_port = free_port();
    let fg = floodgate(
        syslog_port,
        &format!("url = \"nats://127.0.0.1:{port}\", subject = \"logs.slow\", stream = \"SLOW\", buffer = \"256KiB\""),
    );
    send(syslog_port, 0, 100_000);
    fg.wait_sample("floodgate_syslog_output_messages_total", &[], |v| v >= 100_000.0);
    assert_eq!(fg.sample("floodgate_syslog_output_dropped_total", &[]), 0.0);
    assert_exactly_once_in_order(&format!("nats://127.0.0.1:{port}"), "SLOW", 100_000);
}

/// A record larger than the server's `max_payload` (2 KiB here) is dropped and counted, not
/// retried: the records around it are stored, and the output goes on.
#[test]
fn a_record_over_the_servers_max_payload_is_dropped_and_the_output_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("nats.conf");
    std::fs::write(&conf, "max_payload: 2048\n").unwrap();
    let port = free_port();
    let mut args = server("small", port, &dir.path().join("js"), None);
    args.extend(["-c".to_string(), conf.display().to_string()]);
    let _nats = Nats::start(args, port);
    let syslog_port = free_port();
    let fg =
        floodgate(syslog_port, &format!("url = \"nats://127.0.0.1:{port}\", subject = \"logs.big\", stream = \"BIG\""));
    let mut s = TcpStream::connect(("127.0.0.1", syslog_port)).unwrap();
    write_records(&mut s, 0, 1);
    s.write_all(format!("<13>{}\n", "x".repeat(4096)).as_bytes()).unwrap();
    drop(s);
    fg.wait_sample("floodgate_syslog_output_dropped_total", &[], |v| v == 1.0);
    send(syslog_port, 1, 2);
    fg.wait_sample("floodgate_syslog_output_messages_total", &[], |v| v >= 2.0);
    assert_exactly_once_in_order(&format!("nats://127.0.0.1:{port}"), "BIG", 2);
    assert!(fg.stderr().contains("larger than the server's max_payload"), "{}", fg.stderr());
}

/// Acknowledgements lost (the server frozen with SIGSTOP while publishes reach its socket):
/// the chunk is published again after the thaw, and the stream's duplicate window, keyed by
/// each record's `Nats-Msg-Id`, keeps one of each.
#[test]
fn a_chunk_published_again_after_lost_acknowledgements_is_not_doubled() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let nats = Nats::start(server("frozen", port, &dir.path().join("js"), None), port);
    let syslog_port = free_port();
    let fg =
        floodgate(syslog_port, &format!("url = \"nats://127.0.0.1:{port}\", subject = \"logs.dup\", stream = \"DUP\""));
    send(syslog_port, 0, 1_000);
    fg.wait_sample("floodgate_syslog_output_messages_total", &[], |v| v >= 1_000.0);
    signal(&nats.child, "STOP");
    send(syslog_port, 1_000, 2_000);
    // The acknowledgements time out (5 s): the chunk is held to be published again.
    fg.wait_sample("floodgate_syslog_output_errors_total", &[], |v| v >= 1.0);
    signal(&nats.child, "CONT");
    fg.wait_sample("floodgate_syslog_output_messages_total", &[], |v| v >= 2_000.0);
    assert_exactly_once_in_order(&format!("nats://127.0.0.1:{port}"), "DUP", 2_000);
    assert!(fg.stderr().contains("were not stored again"), "the retry found what the stream held: {}", fg.stderr());
}

/// TLS (the server's certificate checked against the configured CA) and a token: records
/// arrive; the token is redacted wherever the configuration is shown (`floodgate check`,
/// `/api/status`).
#[test]
fn tls_and_a_token_and_the_token_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("nats.pem"), dir.path().join("nats.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let port = free_port();
    let mut args = server("tls", port, &dir.path().join("js"), None);
    args.extend(["--tls", "--tlscert"].map(String::from));
    args.push(cert_path.display().to_string());
    args.push("--tlskey".into());
    args.push(key_path.display().to_string());
    args.extend(["--auth", "s3cret-token"].map(String::from));
    let _nats = Nats::start(args, port);
    let syslog_port = free_port();
    let fg = floodgate(
        syslog_port,
        &format!(
            "url = \"tls://127.0.0.1:{port}\", subject = \"logs.tls\", stream = \"TLS\", token = \"s3cret-token\", tls = {{ ca = \"{}\" }}",
            cert_path.display()
        ),
    );
    send(syslog_port, 0, 100);
    fg.wait_sample("floodgate_syslog_output_messages_total", &[], |v| v >= 100.0);
    runtime().block_on(async {
        let client = async_nats::ConnectOptions::with_token("s3cret-token".into())
            .add_root_certificates(cert_path.clone())
            .require_tls(true)
            .connect(format!("tls://127.0.0.1:{port}"))
            .await
            .unwrap();
        let mut stream = jetstream::new(client).get_stream("TLS").await.unwrap();
        assert_eq!(stream.info().await.unwrap().state.messages, 100);
    });
    let shown = floodgate_check(&fg.dir().join("floodgate.toml"));
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains("token = \"<redacted>\"") && !text.contains("s3cret"), "{text}");
    let status = http_get(fg.http, "/api/status").unwrap().1;
    assert!(!status.contains("s3cret"), "{status}");
}

#[test]
fn an_r3_stream_loses_nothing_and_doubles_nothing_when_a_node_fails() {
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut nodes: Vec<Nats> = (0..3)
        .map(|i| {
            let store = dir.path().join(format!("js{i}"));
            Nats::start(server(&format!("n{i}"), ports[i], &store, Some((routes[i], &routes))), ports[i])
        })
        .collect();
    let urls: Vec<String> = ports.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect();
    let syslog_port = free_port();
    let fg = floodgate(
        syslog_port,
        &format!("url = \"{}\", subject = \"logs.r3\", stream = \"LOGS3\", replicas = 3", urls.join(",")),
    );
    send(syslog_port, 0, 10_000);
    fg.wait_sample("floodgate_syslog_output_messages_total", &[], |v| v >= 10_000.0);
    // 20,000 more over a second, on one connection, while the node goes.
    let sender = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", syslog_port)).unwrap();
        for k in 0..20 {
            write_records(&mut s, 10_000 + k * 1_000, 11_000 + k * 1_000);
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    // The stream's leader (the node that orders its writes) is lost mid-stream.
    let leader = stream_leader(&urls[0], "LOGS3");
    let lost: usize = leader.trim_start_matches('n').parse().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    nodes[lost].stop();
    sender.join().unwrap();
    fg.wait_sample("floodgate_syslog_output_messages_total", &[], |v| v >= 30_000.0);
    // Every record once, but not necessarily in order: with publishes in flight when the leader
    // goes, some after a failed one can be stored by the new leader before the failed ones are
    // published again (seen once in CI: record 13,567 stored after 13,739).
    assert_exactly_once(&urls[(lost + 1) % 3], "LOGS3", 30_000, false);
    let now = stream_leader(&urls[(lost + 1) % 3], "LOGS3");
    assert_ne!(now, leader, "a new leader took over");
    assert_eq!(fg.sample("floodgate_syslog_output_dropped_total", &[]), 0.0);
}
