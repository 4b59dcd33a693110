//! `bench --only otlp`: one flush of 100,000 series as an OTLP export request (gzipped, as
//! the sink sends it; cumulative and delta) and as a remote-write request (snappy), side by
//! side in one run: bytes on the wire and CPU per flush. The encoders run in this process on
//! one thread (what the flusher does each flush), so the figures are the sinks' own work,
//! without a network or a receiver in them. `OTLP_PHASES=1` also prints how the OTLP render
//! splits between building the request and encoding it (the rest is gzip).

use std::sync::Arc;
use std::time::Instant;

use floodgate::sinks::otlp::metrics::Render;
use floodgate::sinks::otlp::OtlpConfig;
use floodgate_statsd::{AggregationConfig, Parser, Shard, Store};

use crate::targets::BenchOptions;

/// 50,000 tagged counters, 30,000 gauges, 20,000 timers with ten values each.
fn store() -> Store {
    let mut store =
        Store::new(AggregationConfig { cumulative_sketches: true, max_series: 200_000, ..Default::default() });
    let mut shard = Shard::new(200_000);
    let mut parser = Parser::new(true);
    let mut lines = String::new();
    for i in 0..50_000 {
        lines.push_str(&format!("api.requests.{}:{}|c|#env:prod,route:r{}\n", i % 5000, i % 7 + 1, i / 5000));
    }
    for i in 0..30_000 {
        lines.push_str(&format!("host.{}.load:{}.5|g\n", i, i % 100));
    }
    for i in 0..20_000 {
        for v in 0..10 {
            lines.push_str(&format!("rpc.{i}.latency:{}|ms\n", (i * 7 + v * 13) % 900 + 1));
        }
    }
    parser.parse_packet(lines.as_bytes(), &mut shard);
    store.merge(&mut shard);
    store
}

fn otlp(temporality: &str) -> Render {
    let config: OtlpConfig =
        toml::from_str(&format!("endpoint = \"http://127.0.0.1:1\"\ntemporality = \"{temporality}\"")).unwrap();
    Render::new(Arc::default(), &config, None)
}

pub fn otlp_vs_remote_write(_opts: &BenchOptions) {
    println!("\n## OTLP vs remote-write: one flush of 100,000 series (50k tagged counters, 30k gauges, 20k timers of 10 values)");
    println!(
        "| output | body | bytes on the wire | data points / series | CPU per flush (ms, one core, median of 5) |"
    );
    println!("|---|---|---|---|---|");
    let naming = floodgate::naming::Naming::default();
    let runs = 5;
    let mut rows: Vec<(String, String, usize, usize, Vec<f64>)> = Vec::new();
    for round in 0..runs {
        for (i, name) in ["remote-write", "OTLP cumulative", "OTLP delta"].iter().enumerate() {
            let mut store = store();
            let (bytes, points, ms) = match i {
                0 => {
                    store.flush(1_700_000_000, |_| ());
                    let start = Instant::now();
                    let (body, n) = floodgate::sinks::remote_write::encode(&store, 1_700_000_000_000, &naming);
                    (body.len(), n, start.elapsed().as_secs_f64() * 1e3)
                }
                _ => {
                    let render = otlp(if i == 1 { "cumulative" } else { "delta" });
                    let config = floodgate::config::Config::default();
                    // The render alone: the flush's own statistics are every sink's.
                    let (out, ms) = store.flush(1_700_000_000, |view| {
                        if std::env::var_os("OTLP_PHASES").is_some() {
                            use prost::Message;
                            let t = Instant::now();
                            let (req, _) = render.request(view);
                            let built = t.elapsed();
                            let raw = req.encode_to_vec();
                            let encoded = t.elapsed();
                            eprintln!("build {built:?} encode {:?} ({} bytes raw)", encoded - built, raw.len());
                        }
                        let start = Instant::now();
                        let out = floodgate::flush::Render::render_view(&render, view, &config);
                        (out, start.elapsed().as_secs_f64() * 1e3)
                    });
                    (out[0].0.len(), out[0].1, ms)
                }
            };
            let body = if i == 0 { "protobuf, snappy" } else { "protobuf, gzip" };
            if round == 0 {
                rows.push((name.to_string(), body.to_string(), bytes, points, Vec::new()));
            }
            rows[i].4.push(ms);
        }
    }
    for (name, body, bytes, points, mut ms) in rows {
        ms.sort_by(f64::total_cmp);
        println!("| {name} | {body} | {bytes} | {points} | {:.1} |", ms[ms.len() / 2]);
    }
}
