//! What one StatsD receive thread or connection decodes with: the parser, the sender's origin
//! tags (Unix sockets, when `origin_tags` asks), and where DogStatsD events and service checks
//! go as records (the record output, when it is open and writes JSON).
//!
//! Metrics go straight into the shard: [`Decoder::ingest`] hands the parser a sink that
//! passes metrics on inline and only adds a cold path for events and checks.

use floodgate_statsd::budget::Sender;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use floodgate_statsd::dogstatsd::{Event, ServiceCheck};
use floodgate_statsd::parse::ClientContainers;
use floodgate_statsd::shard::Folding;
use floodgate_statsd::{KeyRule, Metric, MetricSink, PacketCounts, Parser, Shard};
use serde_json::Value;

use super::config::OriginTag;
use crate::listener::{Counters, Kind};
use crate::net::unix::Peers;
use crate::record::{Chunk, Encoding, RecordPipe};
use crate::sys::Credentials;

/// The decoding state of one receive thread or connection.
pub struct Decoder {
    parser: Parser,
    origin: Option<Origin>,
    records: Option<EventRecords>,
    /// Who the series the next lines make are charged to (series budgets).
    charged: Sender,
    /// The listener, and the sender as the tap shows it.
    kind: Kind,
    tap_source: crate::tap::TapSource,
}

impl Decoder {
    /// A decoder for a listener of `kind` with the key rule of `[statsd]`; `origin` tags its
    /// metrics by sender: the kernel's word on Unix sockets, the lines' own `|c:` container
    /// ids elsewhere; `records` is the record output, if open.
    pub fn new(kind: Kind, rule: KeyRule, origin: Option<Origin>, records: Option<&RecordPipe>) -> Decoder {
        let records = records.filter(|p| matches!(p.encoding, Encoding::Json { .. })).map(|p| EventRecords {
            output: p.sender.clone(),
            chunk: Chunk::default(),
            listener: kind.as_str(),
            transport: kind.transport_name(),
            source: None,
            peer: None,
            peers: Peers::default(),
        });
        let mut parser = Parser::with_rule(rule);
        let origin = match origin {
            Some(o) if !kind.is_local() => {
                // No kernel word here: a client's own `|c:` is the container id, if asked.
                parser.set_client_containers(o.shared.client_containers());
                None
            }
            Some(o) => {
                // The kernel's word: a line may not set these tags itself.
                let names: Vec<&str> = o.shared.tags.iter().map(|t| t.as_str()).collect();
                parser.reserve_tag_names(names.join(",").as_bytes());
                Some(o)
            }
            None => None,
        };
        Decoder { parser, origin, records, charged: Sender::Unknown, kind, tap_source: crate::tap::TapSource::Unknown }
    }

    /// The sender of the data that follows: its address, or (Unix sockets) the process the
    /// kernel names.
    pub fn sender(&mut self, source: Option<SocketAddr>, peer: Option<Credentials>) {
        // Who new series are charged to: the local user on a Unix socket, else the address.
        self.charged = match (peer, source) {
            (Some(p), _) => Sender::Uid(p.uid),
            (None, Some(a)) => Sender::Address(a.ip()),
            (None, None) => Sender::Unknown,
        };
        self.tap_source = crate::tap::TapSource::new(source, peer);
        if let (Some(origin), Some(peer)) = (self.origin.as_mut(), peer) {
            if origin.current != Some(peer) {
                origin.current = Some(peer);
                self.parser.set_extra_tags(origin.tags_of(peer));
            }
            if origin.is_other {
                origin.counters.origin_other.fetch_add(1, Relaxed);
            }
        }
        if let Some(r) = self.records.as_mut() {
            r.source = source;
            r.peer = peer;
        }
    }

    /// Charges the series the next lines make to `sender` (a client certificate's name)
    /// rather than to the address or user [`Self::sender`] named.
    pub fn charge_to(&mut self, sender: Sender) {
        self.charged = sender;
    }

    /// Parses a block of complete lines into the shard and adds its line counts to `total`
    /// (the caller counts packets and publishes `total` to its [`Counters`] once per batch).
    pub fn ingest(&mut self, shard: &mut Shard, data: &[u8], total: &mut PacketCounts) {
        if crate::tap::TAP.watching() {
            if let Some(watchers) = crate::tap::TAP.watchers(self.kind, self.tap_source) {
                return self.ingest_watched(shard, data, total, &watchers);
            }
        }
        self.ingest_lines(shard, data, total);
    }

    /// [`Self::ingest`] while a tap watches this sender: the lines a viewer wants are parsed
    /// one at a time, so each is shown with what became of it.
    #[cold]
    fn ingest_watched(
        &mut self,
        shard: &mut Shard,
        data: &[u8],
        total: &mut PacketCounts,
        watchers: &crate::tap::Watchers,
    ) {
        use crate::tap::Decision;
        for line in data.split_inclusive(|b| *b == b'\n') {
            let name = crate::tap::statsd_name(line);
            if !watchers.wants(name) {
                self.ingest_lines(shard, line, total);
                continue;
            }
            let before = (total.bad, total.too_long, shard.dropped_series_budget, shard.folded_series_budget);
            let memory = (shard.dropped_max_series, shard.dropped_max_memory);
            self.ingest_lines(shard, line, total);
            let decision = if total.bad > before.0 {
                Decision::Dropped { reason: "bad_line", why: "not a StatsD line floodgate can read".into() }
            } else if total.too_long > before.1 {
                Decision::Dropped {
                    reason: "key_too_long",
                    why: "its name is longer than [statsd] max_key_length".into(),
                }
            } else if shard.dropped_series_budget > before.2 {
                let limits = shard.budget_limits().unwrap_or_default();
                Decision::Dropped {
                    reason: "series_budget",
                    why: format!(
                        "a new series, and its sender is over its series budget ([limits] series_per_source = {}, \
                         new_series_per_source = {} a minute)",
                        limits.series_per_sender, limits.new_series_per_minute
                    ),
                }
            } else if shard.folded_series_budget > before.3 {
                Decision::Folded
            } else if (shard.dropped_max_series, shard.dropped_max_memory) != memory {
                Decision::Dropped {
                    reason: "max_series",
                    why: "a new series, and the store is full ([limits] max_series or max_memory)".into(),
                }
            } else {
                Decision::Admitted
            };
            watchers.offer(name, line, || decision);
        }
    }

    fn ingest_lines(&mut self, shard: &mut Shard, data: &[u8], total: &mut PacketCounts) {
        shard.sender = self.charged;
        let counts = match self.records.as_mut() {
            // Values over a sender's series budget folded: the shard through its folding sink.
            None if shard.folding() => self.parser.parse_packet(data, &mut Folding(shard)),
            // The shard itself: the sink the parser's hot path is tuned for.
            None => self.parser.parse_packet(data, shard),
            records if shard.folding() => self.parser.parse_packet(data, &mut WithRecords::<true> { shard, records }),
            records => self.parser.parse_packet(data, &mut WithRecords::<false> { shard, records }),
        };
        shard.lines += counts.lines;
        shard.bad_lines += counts.bad;
        total.lines += counts.lines;
        total.bad += counts.bad;
        total.too_long += counts.too_long;
        total.origin_other += counts.origin_other;
    }

    /// The records decoded since the last call, with where they go (none: `None`).
    pub fn take_records(&mut self) -> Option<(tokio::sync::mpsc::Sender<Chunk>, Chunk)> {
        let r = self.records.as_mut()?;
        (r.chunk.messages > 0).then(|| (r.output.clone(), std::mem::take(&mut r.chunk)))
    }

    /// Hands the batch's records to the output if it has room, and counts them in
    /// `counters` as dropped (`output_full`) if not. Never waits: events and service checks
    /// are incidental to a StatsD listener, and an output stuck on a full disk must not stop
    /// it reading metrics.
    pub fn send_records(&mut self, counters: &Counters) {
        if let Some((output, chunk)) = self.take_records() {
            let messages = chunk.messages;
            match output.try_send(chunk) {
                Ok(()) => {}
                Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                    counters.records_dropped.fetch_add(messages, Relaxed);
                }
                // The output has ended only at shutdown, after the listeners: nothing to tell.
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
    }
}

/// Metrics into the shard (inline, as without it), events and checks into records (if the
/// output is open).
/// With `FOLD`, values over a sender's series budget are folded (see [`Folding`]); a type of
/// its own, so the common path carries no fold code.
struct WithRecords<'a, const FOLD: bool> {
    shard: &'a mut Shard,
    records: Option<&'a mut EventRecords>,
}

impl<const FOLD: bool> MetricSink for WithRecords<'_, FOLD> {
    #[inline(always)]
    fn metric(&mut self, metric: &Metric<'_>) {
        if FOLD {
            self.shard.record_folding(metric);
        } else {
            self.shard.metric(metric);
        }
    }

    #[inline(always)]
    fn counter(&mut self, key: &[u8], value: f64) {
        if FOLD {
            self.shard.counter_folding(key, value);
        } else {
            self.shard.counter(key, value);
        }
    }

    fn bad_line(&mut self, line: &[u8]) {
        self.shard.bad_line(line);
    }

    fn sent_name(&mut self, stored: &[u8], sent: &[u8]) {
        self.shard.sent_name(stored, sent);
    }

    fn event(&mut self, event: &Event<'_>) {
        if let Some(r) = self.records.as_mut() {
            r.event(event);
        }
    }

    fn service_check(&mut self, check: &ServiceCheck<'_>) {
        if let Some(r) = self.records.as_mut() {
            r.service_check(check);
        }
    }
}

/// Events and service checks as JSON records, one chunk a batch.
struct EventRecords {
    output: tokio::sync::mpsc::Sender<Chunk>,
    chunk: Chunk,
    listener: &'static str,
    transport: &'static str,
    source: Option<SocketAddr>,
    peer: Option<Credentials>,
    peers: Peers,
}

impl EventRecords {
    /// The fields every record starts with: when, from where, and which listener.
    fn received(&mut self, kind: &str) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        m.insert("received_at".into(), floodgate_syslog::record::rfc3339_millis(crate::clock::unix_ms()).into());
        m.insert("source".into(), self.source.map_or(String::new(), |s| s.to_string()).into());
        m.insert("listener".into(), self.listener.into());
        m.insert("transport".into(), self.transport.into());
        if let Some(p) = self.peer {
            m.insert("peer_pid".into(), p.pid.into());
            m.insert("peer_uid".into(), p.uid.into());
            m.insert("peer_gid".into(), p.gid.into());
            m.insert("peer_program".into(), self.peers.get(p.pid, false).program.clone().into());
        }
        m.insert("kind".into(), kind.into());
        m
    }

    #[cold]
    fn event(&mut self, e: &Event<'_>) {
        let mut m = self.received("event");
        m.insert("title".into(), text(e.title).into());
        // Clients escape the text's newlines as `\n`; the record holds the text itself.
        m.insert("text".into(), text(e.text).replace("\\n", "\n").into());
        m.insert("timestamp".into(), timestamp(e.timestamp));
        m.insert("hostname".into(), optional(e.hostname));
        m.insert("aggregation_key".into(), optional(e.aggregation_key));
        m.insert("priority".into(), e.priority.as_str().into());
        m.insert("source_type_name".into(), optional(e.source_type));
        m.insert("alert_type".into(), e.alert_type.as_str().into());
        m.insert("tags".into(), tags(e.tags));
        m.insert("container_id".into(), optional(e.origin.container_id));
        self.push(m);
    }

    #[cold]
    fn service_check(&mut self, c: &ServiceCheck<'_>) {
        let mut m = self.received("service_check");
        m.insert("check".into(), text(c.name).into());
        m.insert("status".into(), c.status.code().into());
        m.insert("status_name".into(), c.status.as_str().into());
        m.insert("timestamp".into(), timestamp(c.timestamp));
        m.insert("hostname".into(), optional(c.hostname));
        m.insert("tags".into(), tags(c.tags));
        m.insert("message".into(), optional(c.message));
        m.insert("container_id".into(), optional(c.origin.container_id));
        self.push(m);
    }

    fn push(&mut self, record: serde_json::Map<String, Value>) {
        // A map of strings and numbers always serialises.
        if serde_json::to_writer(&mut self.chunk.bytes, &Value::Object(record)).is_ok() {
            self.chunk.bytes.push(b'\n');
            self.chunk.messages += 1;
        }
    }
}

/// Text as received, invalid UTF-8 replaced.
fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A field the sender may leave out: `null` then.
fn optional(b: &[u8]) -> Value {
    if b.is_empty() {
        Value::Null
    } else {
        text(b).into()
    }
}

/// `d:` (Unix seconds) as RFC 3339, `null` when absent or out of range.
fn timestamp(t: Option<i64>) -> Value {
    t.filter(|s| (0..253_402_300_800).contains(s))
        .map_or(Value::Null, |s| floodgate_syslog::record::rfc3339_millis(s * 1000).into())
}

/// `#a:b,c` as `["a:b","c"]`.
fn tags(b: &[u8]) -> Value {
    b.split(|c| *c == b',').filter(|t| !t.is_empty()).map(text).collect::<Vec<_>>().into()
}

/// A Unix listener's origin tags: which to add, and the distinct origins tagged so far, shared
/// by its receive thread or connections (the bound is the listener's, however many
/// connections a sender opens).
#[derive(Clone)]
pub struct OriginTags {
    tags: Arc<[OriginTag]>,
    max: usize,
    seen: Arc<parking_lot::Mutex<OriginBound>>,
    /// Client-declared container ids tagged so far (UDP, TCP, TLS listeners).
    containers: Arc<std::sync::Mutex<HashSet<Vec<u8>>>>,
}

impl OriginTags {
    /// Tags `tags` (in that order) for at most `max` distinct origins; `None` when `tags` is
    /// empty (the default: no origin tags).
    pub fn new(tags: &[OriginTag], max: usize) -> Option<OriginTags> {
        (!tags.is_empty()).then(|| OriginTags {
            tags: tags.into(),
            max,
            seen: Arc::new(parking_lot::Mutex::new(OriginBound::new(max))),
            containers: Arc::default(),
        })
    }

    /// The bound on client-declared container ids, when `container_id` is asked for.
    fn client_containers(&self) -> Option<ClientContainers> {
        self.tags.contains(&OriginTag::ContainerId).then(|| ClientContainers::new(self.max, self.containers.clone()))
    }

    /// The state of one receive thread or connection, counting into `counters`.
    pub fn for_connection(&self, counters: Arc<Counters>) -> Option<Origin> {
        Some(Origin {
            shared: self.clone(),
            peers: Peers::default(),
            current: None,
            rendered: Vec::new(),
            is_other: false,
            counters,
        })
    }
}

/// The distinct origins a listener tags, bounded three ways so that no one user can take the
/// bound from the others: at most `max` in all; at most a quarter of it (at least one) per
/// user; and an origin not seen for [`OriginBound::IDLE`] is forgotten, making room again.
pub struct OriginBound {
    max: usize,
    /// Each origin's user and when it was last seen.
    by_origin: std::collections::HashMap<Vec<u8>, (u32, std::time::Instant)>,
    /// Origins held per user.
    per_uid: std::collections::HashMap<u32, usize>,
    /// The last time idle origins were looked for (at most once a second).
    swept: Option<std::time::Instant>,
}

impl OriginBound {
    /// An origin not seen this long is forgotten.
    pub const IDLE: std::time::Duration = std::time::Duration::from_secs(600);

    fn new(max: usize) -> OriginBound {
        OriginBound { max, by_origin: Default::default(), per_uid: Default::default(), swept: None }
    }

    /// Most origins one user may hold.
    fn per_user(&self) -> usize {
        (self.max / 4).max(1)
    }

    /// Whether `origin` (sent by `uid`, at `now`) is tagged as itself (else `other`).
    pub fn admit(&mut self, origin: &[u8], uid: u32, now: std::time::Instant) -> bool {
        if let Some((_, seen)) = self.by_origin.get_mut(origin) {
            *seen = now;
            return true;
        }
        let full = |b: &Self| b.by_origin.len() >= b.max || b.per_uid.get(&uid).copied().unwrap_or(0) >= b.per_user();
        if full(self) && self.swept.is_none_or(|t| now.duration_since(t) >= std::time::Duration::from_secs(1)) {
            self.swept = Some(now);
            let per_uid = &mut self.per_uid;
            self.by_origin.retain(|_, (owner, seen)| {
                let keep = now.duration_since(*seen) < Self::IDLE;
                if !keep {
                    if let Some(n) = per_uid.get_mut(owner) {
                        *n -= 1;
                    }
                }
                keep
            });
            per_uid.retain(|_, n| *n > 0);
        }
        if full(self) {
            return false;
        }
        self.by_origin.insert(origin.to_vec(), (uid, now));
        *self.per_uid.entry(uid).or_default() += 1;
        true
    }
}

/// The origin tags of one receive thread or connection: what the kernel says of each sender,
/// rendered once per sender.
pub struct Origin {
    shared: OriginTags,
    peers: Peers,
    /// The sender whose tags the parser holds.
    current: Option<Credentials>,
    rendered: Vec<u8>,
    /// The current sender is past the bound.
    is_other: bool,
    /// Where datagrams tagged `other` are counted.
    counters: Arc<Counters>,
}

impl Origin {
    /// `uid:1000,program:web,container_id:…` for `peer` (`other` for every value past the
    /// bound).
    fn tags_of(&mut self, peer: Credentials) -> &[u8] {
        let tags = &self.shared.tags;
        let info = self.peers.get(peer.pid, tags.contains(&OriginTag::ContainerId));
        let mut out = Vec::with_capacity(64);
        for tag in tags.iter() {
            let value = match tag {
                OriginTag::Uid => peer.uid.to_string(),
                OriginTag::Program => info.program.clone(),
                OriginTag::ContainerId => match &info.container_id {
                    Some(id) => id.clone(),
                    None => continue,
                },
            };
            if !out.is_empty() {
                out.push(b',');
            }
            out.extend_from_slice(tag.as_str().as_bytes());
            out.push(b':');
            // A program may name itself anything: nothing in it may end the tag or the line.
            out.extend(value.bytes().map(|b| if b.is_ascii_graphic() && !b",|#:;=".contains(&b) { b } else { b'_' }));
        }
        let admitted = self.shared.seen.lock().admit(&out, peer.uid, std::time::Instant::now());
        self.is_other = !admitted;
        if !admitted {
            let other: Vec<String> = tags.iter().map(|t| format!("{}:other", t.as_str())).collect();
            out = other.join(",").into_bytes();
        }
        self.rendered = out;
        &self.rendered
    }
}

#[cfg(test)]
mod tests {
    use super::OriginBound;
    use std::time::{Duration, Instant};

    /// One user cannot take the bound from the others: it gets a quarter; what goes idle is
    /// forgotten and makes room.
    #[test]
    fn one_user_cannot_fill_the_origin_bound() {
        let mut bound = OriginBound::new(8);
        let t = Instant::now();
        let admitted = (0..100).filter(|i| bound.admit(format!("program:evil{i}").as_bytes(), 65534, t)).count();
        assert_eq!(admitted, 2, "a quarter of 8");
        assert!(bound.admit(b"program:evil0", 65534, t), "an origin it holds stays");
        for uid in 0..6 {
            assert!(bound.admit(format!("program:web{uid}").as_bytes(), uid, t), "user {uid}");
        }
        assert!(!bound.admit(b"program:late", 7, t), "8 held in all");
        // Idle long enough, the flood's origins are forgotten.
        let later = t + OriginBound::IDLE + Duration::from_secs(1);
        for uid in 0..6 {
            bound.admit(format!("program:web{uid}").as_bytes(), uid, later - Duration::from_secs(5));
        }
        assert!(bound.admit(b"program:late", 7, later));
    }
}
