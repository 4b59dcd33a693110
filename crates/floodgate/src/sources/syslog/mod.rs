//! The syslog source: UDP (one message a datagram, through the shared receive loop), TCP and
//! TLS (through the shared accept loop, framed by [`floodgate_syslog::Framer`]). Every message
//! is parsed and encoded for the output in use ([`Encoding`]) into a [`Chunk`] per batch
//! (a `recvmmsg` batch, or a TCP read), which goes to the output's channel.

pub mod tcp;
pub mod udp;

use std::fmt::Write as _;
use std::net::SocketAddr;

use floodgate_syslog::record::{json_prefix, rfc3339_millis, write_json_after, Received};
use floodgate_syslog::{parse, Now};

use crate::record::{Chunk, Encoding};

/// Turns messages into output records, for one listener thread or connection.
pub struct Encoder {
    encoding: Encoding,
    listener: &'static str,
    transport: &'static str,
    received_at: String,
    now: Now,
    source: String,
    source_addr: Option<SocketAddr>,
    /// The records' common start (time, source, listener), rendered when one of them changes.
    prefix: Vec<u8>,
}

impl Encoder {
    /// An encoder for a listener of kind `kind`.
    pub fn new(encoding: Encoding, kind: crate::listener::Kind) -> Encoder {
        let mut e = Encoder {
            encoding,
            listener: kind.as_str(),
            transport: kind.transport_name(),
            received_at: String::new(),
            now: Now { year: 1970, month: 1 },
            source: String::new(),
            source_addr: None,
            prefix: Vec::new(),
        };
        e.stamp();
        e
    }

    /// Takes the time: the messages encoded until the next call were received now.
    pub fn stamp(&mut self) {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        self.received_at = rfc3339_millis(ms);
        self.now = Now::at_unix(ms.div_euclid(1000));
        self.render_prefix();
    }

    /// The sender of the messages that follow.
    pub fn set_source(&mut self, source: SocketAddr) {
        if self.source_addr == Some(source) {
            return;
        }
        self.source_addr = Some(source);
        self.source.clear();
        let _ = write!(self.source, "{source}");
        self.render_prefix();
    }

    fn render_prefix(&mut self) {
        self.prefix.clear();
        let received = Received {
            at: &self.received_at,
            source: &self.source,
            listener: self.listener,
            transport: self.transport,
        };
        json_prefix(&received, &mut self.prefix);
    }

    /// Adds one message to `chunk`; `note` flags something the listener noticed (a truncated
    /// datagram) as a parse error. Returns whether it parsed cleanly; empty messages are not
    /// messages (`None`).
    pub fn encode(&mut self, message: &[u8], note: Option<&str>, chunk: &mut Chunk) -> Option<bool> {
        let trimmed = trim_end(message);
        if trimmed.is_empty() {
            return None;
        }
        let mut record = parse(trimmed, self.now);
        if let Some(note) = note {
            record.parse_error = Some(match record.parse_error.take() {
                Some(e) => format!("{note}; {e}"),
                None => note.to_string(),
            });
        }
        let clean = record.parse_error.is_none();
        match self.encoding {
            Encoding::Json { raw } => {
                write_json_after(&self.prefix, &record, raw.then_some(trimmed), &mut chunk.bytes);
            }
            Encoding::OctetCounted => {
                let _ = write!(Bytes(&mut chunk.bytes), "{} ", trimmed.len());
                chunk.bytes.extend_from_slice(trimmed);
            }
        }
        chunk.messages += 1;
        Some(clean)
    }
}

/// A message's trailing line ending or NUL is framing, not content.
fn trim_end(mut s: &[u8]) -> &[u8] {
    while let [rest @ .., b'\n' | b'\r' | 0] = s {
        s = rest;
    }
    s
}

/// `write!` into a byte vector.
struct Bytes<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Bytes<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Syslog's own per-listener families: messages, parsed, parse errors, and framing errors on
/// streams.
pub fn listener_families(l: &crate::listener::Listener, out: &mut crate::metrics::Families) {
    use crate::listener::row;
    use crate::metrics::Describe;
    use std::sync::atomic::Ordering::Relaxed;
    let c = &l.counters;
    let (messages, bad) = (c.lines.load(Relaxed), c.bad_lines.load(Relaxed));
    let rows = [
        (
            Describe::counter("floodgate_syslog_messages_total", "Syslog messages received and handed to the output.")
                .status(row("messages")),
            messages,
        ),
        (
            Describe::counter("floodgate_syslog_parsed_total", "Syslog messages parsed cleanly."),
            messages.saturating_sub(bad),
        ),
        (
            Describe::counter(
                "floodgate_syslog_parse_errors_total",
                "Syslog messages kept whole with parse_error set.",
            )
            .status(row("bad")),
            bad,
        ),
    ];
    for (describe, v) in rows {
        out.add(describe, &l.labels(), v);
    }
    if l.kind.is_stream() {
        l.dropped(out, "framing", c.framing_errors.load(Relaxed));
    }
}
