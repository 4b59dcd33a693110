//! `floodgate tap`: reads a running floodgate's `GET /api/tap` and prints each line or record
//! with what became of it, one to a terminal line (or the events' JSON with `--json`).
//!
//! A blocking HTTP/1.0 read over one TCP connection: the response is the raw event stream
//! until either side closes, which needs no HTTP client library.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// What to ask for and how to print it.
#[derive(Debug, Clone, Default)]
pub struct TapRequest {
    /// `listener=`.
    pub listener: Option<String>,
    /// `source=`.
    pub source: Option<String>,
    /// `name=`.
    pub name: Option<String>,
    /// `rate=`.
    pub rate: Option<u32>,
    /// Print each event's JSON as it came.
    pub json: bool,
    /// Stop after this many lines (0: until interrupted).
    pub count: u64,
}

impl TapRequest {
    /// The request's path and query.
    pub fn path(&self) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (key, value) in [("listener", &self.listener), ("source", &self.source), ("name", &self.name)] {
            if let Some(v) = value {
                query.append_pair(key, v);
            }
        }
        if let Some(rate) = self.rate {
            query.append_pair("rate", &rate.to_string());
        }
        format!("/api/tap?{}", query.finish())
    }
}

/// Connects to `http` and prints events to `out` until the stream ends or `count` lines came.
pub fn run(http: SocketAddr, request: &TapRequest, out: &mut dyn Write) -> anyhow::Result<()> {
    use anyhow::Context;
    let mut stream =
        TcpStream::connect_timeout(&http, Duration::from_secs(5)).with_context(|| format!("connect to {http}"))?;
    let host = match http {
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
        SocketAddr::V4(a) => a.ip().to_string(),
    };
    write!(stream, "GET {} HTTP/1.0\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n", request.path())?;
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status)?;
    let code = status.split_whitespace().nth(1).unwrap_or("");
    let mut line = String::new();
    // The head ends at an empty line.
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
            break;
        }
    }
    if code != "200" {
        let mut body = String::new();
        let _ = std::io::Read::read_to_string(&mut reader, &mut body);
        anyhow::bail!("{http} answered {}: {}", status.trim_end(), body.trim_end());
    }
    eprintln!("floodgate tap: watching {http}{} (Ctrl-C stops)", request.path());
    let (mut event, mut shown, mut last_loss) = (String::new(), 0u64, (0u64, 0u64));
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let text = line.trim_end_matches(['\r', '\n']);
        if let Some(name) = text.strip_prefix("event: ") {
            event = name.to_string();
        } else if let Some(data) = text.strip_prefix("data: ") {
            let value: serde_json::Value = serde_json::from_str(data).unwrap_or_default();
            if event == "line" {
                if request.json {
                    writeln!(out, "{data}")?;
                } else {
                    writeln!(out, "{}", human(&value))?;
                }
                out.flush()?;
                shown += 1;
                if request.count > 0 && shown >= request.count {
                    return Ok(());
                }
            } else if event == "stats" {
                let loss = (value["skipped"].as_u64().unwrap_or(0), value["missed"].as_u64().unwrap_or(0));
                if loss != last_loss {
                    eprintln!(
                        "floodgate tap: {} not shown over the rate (--rate), {} missed (read too slowly)",
                        loss.0, loss.1
                    );
                    last_loss = loss;
                }
            }
        }
    }
}

/// One event on one line: time, listener, sender, decision, the line; and why, if dropped.
fn human(e: &serde_json::Value) -> String {
    let ms = e["time_ms"].as_i64().unwrap_or(0);
    let time =
        jiff::Timestamp::from_millisecond(ms).map(|t| t.strftime("%H:%M:%S%.3f").to_string()).unwrap_or_default();
    let decision = match e["reason"].as_str() {
        Some(reason) => format!("dropped({reason})"),
        None => e["decision"].as_str().unwrap_or("").to_string(),
    };
    let mut s = format!(
        "{time} {:<11} {:<22} {:<10} {}",
        e["listener"].as_str().unwrap_or(""),
        e["source"].as_str().unwrap_or(""),
        decision,
        e["text"].as_str().unwrap_or("")
    );
    if let Some(why) = e["why"].as_str() {
        s.push_str("  # ");
        s.push_str(why);
    }
    s
}
