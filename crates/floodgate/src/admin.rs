//! The management console, line-oriented like Etsy statsd's (`[admin] listen`, default
//! 127.0.0.1:8126): `help`, `health [up|down]`, `config`, `stats`, `counters`, `gauges`,
//! `timers`, `delcounters NAME|PREFIX.*`, `delgauges`, `deltimers`, `quit`.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use floodgate_statsd::number::js_number;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::app::Shared;
use crate::sinks::graphite::unix_now;

/// Longest command line accepted.
const MAX_COMMAND: usize = 4096;

/// Accepts console connections until aborted.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(e) = session(stream, &shared).await {
                        tracing::debug!(error = %e, "admin console session ended");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn session(stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        // Bounded: a client that never sends a newline cannot make us buffer without end.
        let n = (&mut reader).take(MAX_COMMAND as u64 + 1).read_until(b'\n', &mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        if buf.len() > MAX_COMMAND {
            write.write_all(b"ERROR: command too long\n").await?;
            return Ok(());
        }
        let line = String::from_utf8_lossy(&buf);
        let mut words = line.split_whitespace();
        let Some(cmd) = words.next() else { continue };
        let args: Vec<&str> = words.collect();
        if cmd == "quit" {
            return Ok(());
        }
        let reply = command(shared, cmd, &args);
        write.write_all(reply.as_bytes()).await?;
    }
}

/// Runs one command and returns its reply.
pub fn command(shared: &Shared, cmd: &str, args: &[&str]) -> String {
    let mut out = String::new();
    match cmd {
        "help" => out.push_str(
            "Commands: stats, counters, timers, gauges, delcounters, deltimers, delgauges, health, config, quit\n\n",
        ),
        "health" => {
            match args.first().map(|a| a.to_ascii_lowercase()).as_deref() {
                Some("up") => shared.health_up.store(true, Relaxed),
                Some("down") => shared.health_up.store(false, Relaxed),
                _ => {}
            }
            let h = if shared.health_up.load(Relaxed) { "up" } else { "down" };
            let _ = writeln!(out, "health: {h}");
        }
        "config" => {
            out.push('\n');
            out.push_str(&shared.config.read().to_toml());
            out.push_str("END\n\n");
        }
        "stats" => {
            let now = unix_now();
            let _ = writeln!(out, "uptime: {}", now - shared.started_unix);
            let _ = writeln!(out, "messages.last_msg_seen: {}", now - shared.last_msg_seen.load(Relaxed));
            let bad: u64 = shared.telemetry.by_listener(|c| c.bad_lines.load(Relaxed)).values().sum();
            let _ = writeln!(out, "messages.bad_lines_seen: {bad}");
            let g = *shared.graphite_stats.lock();
            let _ = writeln!(out, "graphite.last_flush: {}", now - g.last_flush);
            let _ = writeln!(
                out,
                "graphite.last_exception: {}",
                if g.last_exception == 0 { 0 } else { now - g.last_exception }
            );
            let _ = writeln!(out, "graphite.flush_time: {}", g.flush_time);
            let _ = writeln!(out, "graphite.flush_length: {}", g.flush_length);
            out.push_str("END\n\n");
        }
        "counters" | "gauges" | "timers" => {
            let mut store = shared.store.lock();
            crate::flush::merge_shards(shared, &mut store);
            let mut rows: Vec<(String, String)> = match cmd {
                "counters" => store.counters().map(|(k, c)| (key(k), js_number(c.value))).collect(),
                "gauges" => store.gauges().map(|(k, g)| (key(k), js_number(g.value))).collect(),
                _ => store
                    .timers()
                    .map(|(k, t)| {
                        let values: Vec<String> = t.values.iter().map(|v| js_number(*v)).collect();
                        (key(k), format!("[ {} ]", values.join(", ")))
                    })
                    .collect(),
            };
            drop(store);
            rows.sort();
            out.push_str("{\n");
            for (i, (k, v)) in rows.iter().enumerate() {
                let comma = if i + 1 < rows.len() { "," } else { "" };
                let _ = writeln!(out, "  '{k}': {v}{comma}");
            }
            out.push_str("}\nEND\n\n");
        }
        "delcounters" | "delgauges" | "deltimers" => {
            let mut store = shared.store.lock();
            crate::flush::merge_shards(shared, &mut store);
            for pattern in args {
                let deleted = match cmd {
                    "delcounters" => store.delete_counters(pattern),
                    "delgauges" => store.delete_gauges(pattern),
                    _ => store.delete_timers(pattern),
                };
                if deleted.is_empty() {
                    let _ = writeln!(out, "metric {pattern} not found");
                }
                for k in deleted {
                    let _ = writeln!(out, "deleted: {k}");
                }
            }
            out.push_str("END\n\n");
        }
        _ => out.push_str("ERROR\n"),
    }
    out
}

fn key(k: &[u8]) -> String {
    String::from_utf8_lossy(k).replace('\'', "\\'")
}
