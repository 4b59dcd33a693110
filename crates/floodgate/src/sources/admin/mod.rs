//! The management console, line-oriented like Etsy statsd's (`[admin] listen`, default
//! 127.0.0.1:8126): `help`, `health [up|down]`, `config`, `stats`, `counters`, `gauges`,
//! `timers`, `delcounters NAME|PREFIX.*`, `delgauges`, `deltimers`, `quit`.

pub mod config;
use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use floodgate_statsd::number::js_number;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::clock::unix_now;
use crate::component::{Shared, Wiring};
use crate::guard::ListenerGuard;
use crate::listener::Counters;
use crate::net::stream::Stalled;

/// Longest command line accepted.
const MAX_COMMAND: usize = 4096;

/// `[admin] listen`: binds it and starts serving; `None` when it is off.
pub fn build(
    shared: &Arc<Shared>,
    config: &crate::config::Config,
    _wiring: &mut Wiring,
) -> anyhow::Result<Option<Box<dyn crate::sources::Source>>> {
    use crate::listener::{Kind, Protocol, Transport};
    let Some(addr) = config.admin.listen else { return Ok(None) };
    let kind = Kind::new(Protocol::Admin, Transport::Tcp);
    let (shared, limit) = (shared.clone(), config.admin.idle_timeout);
    let max_open = config.admin.max_connections;
    let started =
        crate::sources::running::start_accept_task(&shared.clone(), (kind, addr), max_open, "admin", |l, g, c| {
            serve(l, shared, g, c, limit)
        })?;
    Ok(Some(started))
}

/// Accepts console connections until aborted: through the guard (allow-list, connection rate
/// and caps), each session closed after `idle` without input or with a reply nobody reads.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    guard: Arc<ListenerGuard>,
    counters: Arc<Counters>,
    idle: Duration,
) {
    crate::net::stream::serve(listener, guard, counters, None, None, "admin", move |conn, _peer| {
        let shared = shared.clone();
        async move { session(Stalled::new(conn, idle), shared).await }
    })
    .await
}

/// True for a line a browser (or any HTTP client) sends: a request line (`POST / HTTP/1.1`)
/// or a header (`Host: …`). A web page can make a browser connect to the console's port and
/// send a body of its choosing; the request line always comes first, so nothing of it runs.
pub fn is_http(line: &str) -> bool {
    let line = line.trim_end();
    let mut words = line.split(' ');
    let request_line = matches!((words.next(), words.next(), words.next(), words.next()),
        (Some(method), Some(_), Some(version), None)
            if !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase()) && version.starts_with("HTTP/"));
    let header = line.split_once(':').is_some_and(|(name, rest)| {
        !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && (rest.is_empty() || rest.starts_with(' '))
    });
    request_line || header
}

async fn session<S: AsyncRead + AsyncWrite + Unpin>(stream: S, shared: Arc<Shared>) -> std::io::Result<()> {
    let (read, mut write) = tokio::io::split(stream);
    let mut reader = BufReader::new(read);
    let mut buf = Vec::new();
    let mut first = true;
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
        if std::mem::take(&mut first) && is_http(&line) {
            tracing::warn!(
                "admin console: an HTTP request arrived (a web page, or a wrong port?): closed, nothing run"
            );
            return Ok(());
        }
        let mut words = line.split_whitespace();
        let Some(cmd) = words.next() else { continue };
        let args: Vec<&str> = words.collect();
        if cmd == "quit" {
            return Ok(());
        }
        // The dumps of the whole store are shared with other sessions that ask meanwhile: a
        // session that never reads them holds one rendering among a few, not its own.
        let dump = match cmd {
            "counters" => Some("counters"),
            "gauges" => Some("gauges"),
            "timers" => Some("timers"),
            _ => None,
        };
        if let Some(dump) = dump {
            let (asked, shared) = (std::time::Instant::now(), shared.clone());
            let reply = tokio::task::spawn_blocking(move || {
                let kind = crate::net::shared_response::ResponseKind::Console(dump);
                shared.responses.get(kind, asked, || command(&shared, dump, &[]).into_bytes())
            })
            .await
            .ok()
            .flatten();
            match reply {
                Some(reply) => write.write_all(&reply).await?,
                None => write.write_all(b"ERROR: busy: too many replies are held unread; try again\n").await?,
            }
            continue;
        }
        let reply = command(&shared, cmd, &args);
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
            out.push_str(&shared.config.read().to_toml_redacted());
            out.push_str("END\n\n");
        }
        "stats" => {
            let now = unix_now();
            let _ = writeln!(out, "uptime: {}", now - shared.started_unix);
            let _ = writeln!(out, "messages.last_msg_seen: {}", now - shared.aggregation.last_msg_seen.load(Relaxed));
            let bad: u64 = shared.listeners.by_listener(|c| c.bad_lines.load(Relaxed)).values().sum();
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
            let mut store = shared.aggregation.store.lock();
            shared.aggregation.merge_shards(&mut store);
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
            let mut store = shared.aggregation.store.lock();
            shared.aggregation.merge_shards(&mut store);
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

#[cfg(test)]
mod tests {
    use super::is_http;

    #[test]
    fn http_requests_are_recognised() {
        for line in
            ["POST / HTTP/1.1\r\n", "GET /x HTTP/1.0\n", "Host: 127.0.0.1:8126\r\n", "Content-Type: text/plain\n"]
        {
            assert!(is_http(line), "{line:?}");
        }
        for line in ["health down\n", "stats\n", "delcounters a.b.*\n", "counters\r\n", "help\n", "\n"] {
            assert!(!is_http(line), "{line:?}");
        }
    }
}
