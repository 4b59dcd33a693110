//! The forward hop under load.
//!
//! - `aggregator_merge`: one aggregator (TLS) and 10 synthetic agents speaking the protocol
//!   (`floodgate-forward`), each sending pre-encoded batches of 10,000 counters as fast as
//!   the connection takes them; the rate at which the aggregator merges series, and the bytes
//!   per series on the wire.
//! - `end_to_end`: three real floodgate agents fed by the load generator at about 1M
//!   metrics/s in total, one aggregator, the Carbon stand-in: the flushed sum against what
//!   was sent.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use floodgate_forward::frame;
use floodgate_forward::proto::{self, frame::Kind, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::carbon::CarbonStandIn;
use crate::sender::{self, Load};
use crate::targets::{free_port, metric, settle, spawn_floodgate, terminate, BenchOptions, Running, GUARD_OFF, PREFIX};

const AGENTS: usize = 10;
const SERIES_PER_BATCH: usize = 10_000;
const BATCHES: usize = 60;

/// A floodgate for this benchmark: 2 s flushes, the guard off, then `body`.
fn start(opts: &BenchOptions, dir: &Path, name: &str, body: &str) -> Running {
    let statsd = "flush_interval = \"2s\"\nreceive_buffer = \"64MiB\"";
    spawn_floodgate(opts, dir, name, statsd, &format!("{GUARD_OFF}{body}"))
}

/// A CA-signed certificate for `aggregator.bench`: (CA PEM path, cert path, key path).
pub(crate) fn certificates(dir: &Path) -> (String, String, String) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["aggregator.bench".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let path = |f: &str| dir.join(f).display().to_string();
    std::fs::write(path("ca.pem"), ca.pem()).unwrap();
    std::fs::write(path("agg.pem"), leaf.pem()).unwrap();
    std::fs::write(path("agg.key"), leaf_key.serialize_pem()).unwrap();
    (path("ca.pem"), path("agg.pem"), path("agg.key"))
}

fn encode(kind: Kind) -> bytes::Bytes {
    let mut buf = BytesMut::new();
    frame::encode(&Frame { kind: Some(kind) }, &mut buf);
    buf.freeze()
}

/// Merge throughput of one aggregator fed by 10 agents over TLS.
pub fn aggregator_merge(opts: &BenchOptions) {
    let dir = std::env::temp_dir().join(format!("floodgate-bench-agg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = certificates(&dir);
    let listen = free_port();
    let agg = start(
        opts,
        &dir,
        "aggregator",
        &format!(
            "[aggregator]\nlisten = \"127.0.0.1:{listen}\"\nstate_dir = \"{}\"\ntls = {{ cert = \"{cert}\", key = \"{key}\" }}\n",
            dir.join("state").display()
        ),
    );
    let http = agg.http.unwrap_or(0);
    let tls = floodgate::net::tls::client_config(&floodgate::config::ForwardTls {
        ca: ca.into(),
        cert: None,
        key: None,
        server_name: None,
    })
    .expect("client TLS config");
    // Pre-encoded batches: the agents' own cost stays out of the measurement.
    let batches: Vec<Vec<bytes::Bytes>> = (0..AGENTS)
        .map(|a| {
            (1..=BATCHES as u64)
                .map(|seq| {
                    let series = (0..SERIES_PER_BATCH)
                        .map(|i| proto::Series {
                            key: format!("bench.agent{a}.series{i}").into_bytes(),
                            value: Some(proto::series::Value::Counter(1.0)),
                        })
                        .collect();
                    encode(Kind::Batch(proto::Batch { seq, interval_start_ms: 0, interval_ms: 2000, series }))
                })
                .collect()
        })
        .collect();
    let wire_bytes: usize = batches.iter().flatten().map(|b| b.len()).sum();
    let total_series = (AGENTS * BATCHES * SERIES_PER_BATCH) as f64;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let before = metric(http, "floodgate_aggregator_series_total");
    let started = Instant::now();
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for (a, frames) in batches.into_iter().enumerate() {
            let tls = tls.clone();
            tasks.push(tokio::spawn(async move {
                let tcp = tokio::net::TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], listen))).await.unwrap();
                let name = rustls_pki_types::ServerName::try_from("aggregator.bench").unwrap();
                let mut s =
                    tokio_rustls::TlsConnector::from(Arc::new((*tls).clone())).connect(name, tcp).await.unwrap();
                let hello = Kind::Hello(proto::Hello {
                    version: floodgate_forward::VERSION,
                    agent_id: format!("bench{a}"),
                    session: 1,
                });
                s.write_all(&encode(hello)).await.unwrap();
                let mut welcome = [0u8; 256];
                let _ = s.read(&mut welcome).await.unwrap();
                for f in frames {
                    s.write_all(&f).await.unwrap();
                }
                s.flush().await.unwrap();
                s
            }));
        }
        let mut open = Vec::new();
        for t in tasks {
            open.push(t.await.unwrap());
        }
        // Keep the connections until the aggregator has merged everything.
        let deadline = Instant::now() + Duration::from_secs(120);
        while metric(http, "floodgate_aggregator_series_total") - before < total_series {
            assert!(Instant::now() < deadline, "the aggregator did not merge everything");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    drop(agg);
    let _ = std::fs::remove_dir_all(&dir);
    println!("\n## Aggregator merge rate: 10 agents over TLS, batches of 10,000 counters");
    println!("| series merged | seconds | series/s | bytes per series on the wire |");
    println!("|---|---|---|---|");
    println!(
        "| {total_series:.0} | {elapsed:.2} | {:.0} | {:.1} |",
        total_series / elapsed,
        wire_bytes as f64 / total_series
    );
}

/// Three agents at about 1M metrics/s in total → one aggregator → the Carbon stand-in.
pub fn end_to_end(opts: &BenchOptions) {
    let dir = std::env::temp_dir().join(format!("floodgate-bench-fwd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let carbon = CarbonStandIn::start(PREFIX);
    let listen = free_port();
    let mut agg = start(
        opts,
        &dir,
        "aggregator",
        &format!(
            "[graphite]\naddress = \"127.0.0.1:{}\"\n[aggregator]\nlisten = \"127.0.0.1:{listen}\"\nstate_dir = \"{}\"\n",
            carbon.port,
            dir.join("state").display()
        ),
    );
    let mut agents: Vec<Running> = (0..3)
        .map(|i| {
            start(
                opts,
                &dir,
                &format!("agent{i}"),
                // Each agent its own state directory: one is locked by the agent using it.
                &format!(
                    "[forward]\naggregators = [\"127.0.0.1:{listen}\"]\nagent_id = \"agent{i}\"\nstate_dir = \"{}\"\n",
                    dir.join(format!("agent{i}-state")).display()
                ),
            )
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let duration = opts.trial;
    let sent: Vec<sender::Sent> = std::thread::scope(|scope| {
        let handles: Vec<_> = agents
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let dest = SocketAddr::from(([127, 0, 0, 1], a.port));
                let load = Load::counters(333_334, 20, 1000, 1, "load");
                let label = format!("agent{i} at 333k lines/s");
                scope.spawn(move || sender::send(dest, &load, duration, &label))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let increments: u64 = sent.iter().map(|s| s.counters).sum();
    let rate = sent.iter().map(|s| s.lines as f64 / s.elapsed.as_secs_f64()).sum::<f64>();
    // Agents flush what they hold and wait for its acknowledgement; then the aggregator.
    for a in agents.iter_mut() {
        terminate(a);
    }
    terminate(&mut agg);
    settle(&carbon, increments as f64, Duration::from_secs(3));
    let got = carbon.sum();
    let _ = std::fs::remove_dir_all(&dir);
    println!("\n## End to end: 3 agents → 1 aggregator → Carbon stand-in, 20 lines/datagram");
    println!("| offered lines/s (3 agents) | increments sent | flushed at Carbon | error |");
    println!("|---|---|---|---|");
    println!("| {rate:.0} | {increments} | {got:.0} | {:.0} |", got - increments as f64);
}
