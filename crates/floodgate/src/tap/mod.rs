//! The tap: a live, sampled view of the lines and records arriving, each with what became of
//! it (admitted, or dropped and why), for `floodgate tap` and `/ui` (`GET /api/tap`, server-sent
//! events). The model is `vector tap`.
//!
//! Every receive path offers what it sees to [`TAP`], but only while someone watches: with no
//! viewer the cost is one relaxed atomic load a datagram (or a block of stream lines). A viewer
//! is bounded three ways, so a slow or greedy one costs ingestion nothing it could notice:
//! - at most its rate of events a second (the rest are counted as `skipped`);
//! - a queue of [`QUEUE`] events, each at most [`MAX_TEXT`] bytes of text; what does not fit
//!   because the viewer reads slowly is counted as `missed`, never waited for;
//! - at most `[http] tap_viewers` viewers at once.
//!
//! A process-wide static, as a `tracing` dispatcher is: every receive path observes it and no
//! component owns it, and the idle check is a load with no pointer to follow.

pub mod client;
pub mod sse;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

use floodgate_guard::AllowList;
use serde::Serialize;

use crate::kind::{Kind, Protocol};

/// Events a viewer's queue holds before what arrives is counted as missed.
pub const QUEUE: usize = 256;

/// Bytes of a line or record shown (longer ones are cut, and say so).
pub const MAX_TEXT: usize = 512;

/// The largest rate a viewer may ask for, events a second.
pub const MAX_RATE: u32 = 1_000;

/// Every viewer, process-wide.
pub static TAP: Tap = Tap {
    watching: AtomicUsize::new(0),
    viewers: RwLock::new(Vec::new()),
    totals: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
};

/// The viewers, and whether there are any.
pub struct Tap {
    /// How many viewers there are: the receive paths' one check.
    watching: AtomicUsize,
    viewers: RwLock<Vec<Arc<Viewer>>>,
    /// Events sent, skipped (over a viewer's rate) and missed (a viewer's queue full), for
    /// every viewer since start.
    totals: [AtomicU64; 3],
}

const SENT: usize = 0;
const SKIPPED: usize = 1;
const MISSED: usize = 2;

/// Who sent what a tap shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapSource {
    /// An address (UDP, TCP, TLS).
    Address(SocketAddr),
    /// A local process (Unix sockets), as the kernel names it.
    Local {
        /// Its user.
        uid: u32,
        /// Its process.
        pid: i32,
    },
    /// Not known (a Unix socket without credentials).
    Unknown,
}

impl TapSource {
    /// From what the receive paths know: an address, else the process on a Unix socket.
    pub fn new(address: Option<SocketAddr>, peer: Option<crate::sys::Credentials>) -> TapSource {
        match (address, peer) {
            (Some(a), _) => TapSource::Address(a),
            (None, Some(p)) => TapSource::Local { uid: p.uid, pid: p.pid },
            (None, None) => TapSource::Unknown,
        }
    }

    fn ip(self) -> Option<IpAddr> {
        match self {
            TapSource::Address(a) => Some(a.ip()),
            _ => None,
        }
    }
}

impl std::fmt::Display for TapSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TapSource::Address(a) => write!(f, "{a}"),
            TapSource::Local { uid, pid } => write!(f, "uid {uid} pid {pid}"),
            TapSource::Unknown => f.write_str("local"),
        }
    }
}

/// What became of a line or record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Taken in (and aggregated, or written out).
    Admitted,
    /// Taken in, but its value went to the metric's overflow series (its sender is over its
    /// series budget).
    Folded,
    /// Not taken: the reason's key (`source_limit`, `series_budget`, `bad_line`...) and the
    /// reason in words.
    Dropped {
        /// The reason's key.
        reason: &'static str,
        /// The reason in words.
        why: String,
    },
}

/// One line or record, as a viewer gets it.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// When it was received, Unix milliseconds.
    pub time_ms: i64,
    /// The listener (`statsd_udp`, `syslog_tcp`...).
    pub listener: &'static str,
    /// The sender.
    pub source: String,
    /// The metric name (StatsD) or the program (syslog APP-NAME), when there is one.
    pub name: String,
    /// The line or record, cut at [`MAX_TEXT`] bytes (invalid UTF-8 replaced).
    pub text: String,
    /// `admitted`, `folded` or `dropped`.
    pub decision: &'static str,
    /// Why it was dropped (a key), when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// Why, in words.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub why: String,
}

/// What a viewer wants to see. Every part given must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Listener kinds: `statsd` (every StatsD listener) or one (`statsd_udp`).
    pub listener: Option<String>,
    /// Senders: addresses or CIDR blocks.
    pub source: Option<AllowList>,
    /// Senders: a local user (Unix sockets).
    pub uid: Option<u32>,
    /// The metric name (StatsD) or program (syslog), a glob: `*` any run, `?` one character.
    pub name: Option<wildmatch::WildMatch>,
}

impl Filter {
    /// From the query of `GET /api/tap`: `listener=`, `source=` (an address, a CIDR block or
    /// `uid:N`), `name=` (a glob). The error names the part.
    pub fn parse(listener: Option<&str>, source: Option<&str>, name: Option<&str>) -> Result<Filter, String> {
        let mut filter =
            Filter { listener: listener.filter(|l| !l.is_empty()).map(str::to_string), ..Filter::default() };
        if let Some(l) = &filter.listener {
            if !["statsd", "syslog"].iter().any(|k| names_listener(l, k)) {
                return Err(format!(
                    "listener `{l}`: a tap sees statsd and syslog listeners (`statsd`, `statsd_udp`, `syslog_tcp`...)"
                ));
            }
        }
        match source.filter(|s| !s.is_empty()) {
            Some(s) if s.starts_with("uid:") => {
                filter.uid = Some(s[4..].parse().map_err(|_| format!("source `{s}`: uid:N wants a number"))?);
            }
            Some(s) => filter.source = Some(AllowList::parse(&[s]).map_err(|e| format!("source: {e}"))?),
            None => {}
        }
        filter.name = name.filter(|n| !n.is_empty()).map(|n| glob(n).map_err(|e| format!("name: {e}"))).transpose()?;
        Ok(filter)
    }

    fn sees(&self, kind: Kind, source: TapSource) -> bool {
        if self.listener.as_deref().is_some_and(|l| !names_listener(kind.as_str(), l)) {
            return false;
        }
        if let Some(list) = &self.source {
            if !source.ip().is_some_and(|ip| list.allows(ip)) {
                return false;
            }
        }
        if let Some(uid) = self.uid {
            if !matches!(source, TapSource::Local { uid: u, .. } if u == uid) {
                return false;
            }
        }
        true
    }

    fn names(&self, name: &[u8]) -> bool {
        match &self.name {
            None => true,
            Some(glob) => std::str::from_utf8(name).is_ok_and(|n| glob.matches(n)),
        }
    }
}

/// One viewer: its filter, its queue, its budget, what it did not get.
pub struct Viewer {
    filter: Filter,
    queue: tokio::sync::mpsc::Sender<Event>,
    /// Events a second.
    rate: u32,
    /// The current second (Unix seconds) and the events sent in it.
    window: parking_lot::Mutex<(i64, u32)>,
    /// Over the rate: not sampled.
    pub skipped: AtomicU64,
    /// The viewer read too slowly: its queue was full.
    pub missed: AtomicU64,
    /// Events queued.
    pub sent: AtomicU64,
}

impl Viewer {
    /// Whether one more event fits this second's budget.
    fn take(&self, now_ms: i64) -> bool {
        let second = now_ms.div_euclid(1000);
        let mut w = self.window.lock();
        if w.0 != second {
            *w = (second, 0);
        }
        if w.1 >= self.rate {
            return false;
        }
        w.1 += 1;
        true
    }
}

/// A viewer's place: dropping it (the HTTP response ended) removes the viewer.
pub struct Subscription {
    viewer: Arc<Viewer>,
}

impl Subscription {
    /// The viewer's figures.
    pub fn viewer(&self) -> &Viewer {
        &self.viewer
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut viewers = TAP.viewers.write().unwrap_or_else(|e| e.into_inner());
        viewers.retain(|v| !Arc::ptr_eq(v, &self.viewer));
        TAP.watching.store(viewers.len(), Relaxed);
    }
}

/// More viewers than `[http] tap_viewers` allows.
#[derive(Debug)]
pub struct TooManyViewers(pub usize);

impl Tap {
    /// Whether anyone watches: the receive paths' check before anything else.
    #[inline]
    pub fn watching(&self) -> bool {
        self.watching.load(Relaxed) > 0
    }

    /// Adds a viewer seeing `filter` at `rate` events a second (at most [`MAX_RATE`]), unless
    /// `max_viewers` already watch.
    pub fn subscribe(
        &self,
        filter: Filter,
        rate: u32,
        max_viewers: usize,
    ) -> Result<(Subscription, tokio::sync::mpsc::Receiver<Event>), TooManyViewers> {
        let (queue, events) = tokio::sync::mpsc::channel(QUEUE);
        let viewer = Arc::new(Viewer {
            filter,
            queue,
            rate: rate.clamp(1, MAX_RATE),
            window: parking_lot::Mutex::new((0, 0)),
            skipped: AtomicU64::new(0),
            missed: AtomicU64::new(0),
            sent: AtomicU64::new(0),
        });
        let mut viewers = self.viewers.write().unwrap_or_else(|e| e.into_inner());
        if viewers.len() >= max_viewers {
            return Err(TooManyViewers(max_viewers));
        }
        viewers.push(viewer.clone());
        self.watching.store(viewers.len(), Relaxed);
        Ok((Subscription { viewer }, events))
    }

    /// The viewers that see `kind` from `source` (none: `None`, and nothing more to do).
    pub fn watchers(&self, kind: Kind, source: TapSource) -> Option<Watchers> {
        if !self.watching() {
            return None;
        }
        let viewers = self.viewers.read().unwrap_or_else(|e| e.into_inner());
        // Most datagrams are nobody's while a filtered tap is open: no allocation for them.
        if !viewers.iter().any(|v| v.filter.sees(kind, source)) {
            return None;
        }
        let seeing: Vec<Arc<Viewer>> = viewers.iter().filter(|v| v.filter.sees(kind, source)).cloned().collect();
        Some(Watchers { kind, source, viewers: seeing, time_ms: crate::clock::unix_ms() })
    }

    /// A datagram the guard refused, shown line by line (StatsD) or whole (syslog).
    pub fn refused(&self, kind: Kind, source: TapSource, data: &[u8], reason: floodgate_guard::Reason) {
        let Some(w) = self.watchers(kind, source) else { return };
        let decision = || Decision::Dropped { reason: reason.as_str(), why: guard_words(reason) };
        if kind.protocol == Protocol::Statsd {
            for line in data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                w.offer(statsd_name(line), line, decision);
            }
        } else {
            w.offer(syslog_name(data).as_bytes(), data, decision);
        }
    }

    /// A connection the guard refused (nothing read from it).
    pub fn refused_connection(&self, kind: Kind, source: TapSource, reason: floodgate_guard::Reason) {
        if let Some(w) = self.watchers(kind, source) {
            w.offer(b"", b"(connection refused before anything was read)", || Decision::Dropped {
                reason: reason.as_str(),
                why: guard_words(reason),
            });
        }
    }
}

/// The tap's self-metrics: `floodgate_tap_viewers`, `floodgate_tap_events_total{outcome}`.
pub struct TapMetrics;

impl crate::metrics::Report for TapMetrics {
    fn report(&self, out: &mut crate::metrics::Families) {
        use crate::metrics::Describe;
        out.one(
            Describe::gauge("floodgate_tap_viewers", "Tap viewers watching now (/api/tap, floodgate tap)."),
            TAP.watching.load(Relaxed) as u64,
        );
        let events = Describe::counter(
            "floodgate_tap_events_total",
            "Lines and records offered to tap viewers: sent, skipped (over the viewer's rate) or missed \
             (the viewer read too slowly; never waited for).",
        );
        out.family(events);
        for (outcome, i) in [("sent", SENT), ("skipped", SKIPPED), ("missed", MISSED)] {
            out.add(events, &[("outcome", outcome)], TAP.totals[i].load(Relaxed));
        }
    }
}

/// The viewers of one block of lines from one sender.
pub struct Watchers {
    kind: Kind,
    source: TapSource,
    viewers: Vec<Arc<Viewer>>,
    time_ms: i64,
}

impl Watchers {
    /// Whether a viewer wants lines named `name` (a cheap check before decoding one apart).
    pub fn wants(&self, name: &[u8]) -> bool {
        self.viewers.iter().any(|v| v.filter.names(name))
    }

    /// Shows `text` (named `name`) to the viewers whose glob matches, within their budgets.
    pub fn offer(&self, name: &[u8], text: &[u8], decision: impl FnOnce() -> Decision) {
        let mut event: Option<Event> = None;
        let mut decision = Some(decision);
        for v in &self.viewers {
            if !v.filter.names(name) {
                continue;
            }
            if !v.take(self.time_ms) {
                v.skipped.fetch_add(1, Relaxed);
                TAP.totals[SKIPPED].fetch_add(1, Relaxed);
                continue;
            }
            let e = event.get_or_insert_with(|| {
                let d = decision.take().map_or(Decision::Admitted, |f| f());
                self.event(name, text, d)
            });
            match v.queue.try_send(e.clone()) {
                Ok(()) => {
                    v.sent.fetch_add(1, Relaxed);
                    TAP.totals[SENT].fetch_add(1, Relaxed);
                }
                Err(_) => {
                    v.missed.fetch_add(1, Relaxed);
                    TAP.totals[MISSED].fetch_add(1, Relaxed);
                }
            }
        }
    }

    fn event(&self, name: &[u8], text: &[u8], decision: Decision) -> Event {
        let trimmed = match text {
            [rest @ .., b'\n'] => rest,
            t => t,
        };
        let mut shown = String::from_utf8_lossy(&trimmed[..trimmed.len().min(MAX_TEXT)]).into_owned();
        if trimmed.len() > MAX_TEXT {
            shown.push_str(&format!("… ({} bytes)", trimmed.len()));
        }
        let (decision, reason, why) = match decision {
            Decision::Admitted => ("admitted", None, String::new()),
            Decision::Folded => {
                ("folded", None, "its sender is over its series budget: counted in the overflow series".into())
            }
            Decision::Dropped { reason, why } => ("dropped", Some(reason), why),
        };
        Event {
            time_ms: self.time_ms,
            listener: self.kind.as_str(),
            source: self.source.to_string(),
            name: String::from_utf8_lossy(&name[..name.len().min(MAX_TEXT)]).into_owned(),
            text: shown,
            decision,
            reason,
            why,
        }
    }
}

/// Whether `kind` (`statsd_udp`) is `wanted`: the same kind, or its protocol (`statsd`).
fn names_listener(kind: &str, wanted: &str) -> bool {
    kind == wanted || kind.strip_prefix(wanted).is_some_and(|rest| rest.starts_with('_'))
}

/// Longest name glob taken (the tap's `name`, `/api/series?match`): a metric name is at most
/// `max_key_length` (a few hundred bytes), and a glob is matched against every line a viewer
/// sees or every series a search walks.
pub const MAX_GLOB: usize = 512;

/// A name glob (`*` any run, `?` one character), refused past [`MAX_GLOB`] bytes.
pub fn glob(pattern: &str) -> Result<wildmatch::WildMatch, String> {
    if pattern.len() > MAX_GLOB {
        return Err(format!("a glob of {} bytes; at most {MAX_GLOB}", pattern.len()));
    }
    Ok(wildmatch::WildMatch::new(pattern))
}

/// A StatsD line's metric name: up to its first `:` (or `|`; the whole line if neither).
pub fn statsd_name(line: &[u8]) -> &[u8] {
    let end = memchr::memchr2(b':', b'|', line).unwrap_or(line.len());
    &line[..end]
}

/// A syslog message's program: RFC 5424's APP-NAME or RFC 3164's TAG (empty when it has none).
pub fn syslog_name(message: &[u8]) -> String {
    let now = floodgate_syslog::parse::Now { year: 1970, month: 1, offset_minutes: 0 };
    floodgate_syslog::parse::parse(message, now).app_name.map(|a| a.into_owned()).unwrap_or_default()
}

/// A guard refusal in words.
pub fn guard_words(reason: floodgate_guard::Reason) -> String {
    use floodgate_guard::Reason::*;
    match reason {
        NotAllowed => "the sender is not on the allow-list".into(),
        SourceLimit => "the sender is over its per-source rate limit".into(),
        PortLimit => "the listener is over its per-port rate limit".into(),
        other => format!("refused by the guard ({})", other.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::Transport;

    /// A viewer that never reads holds at most its queue; the rest is counted, not kept.
    #[test]
    fn a_viewer_holds_at_most_its_queue_and_its_rate() {
        let filter = Filter::parse(Some("statsd"), Some("198.18.0.0/15"), Some("api.*")).unwrap();
        let (subscription, mut events) = TAP.subscribe(filter, 1000, 4).unwrap();
        let kind = Kind::new(Protocol::Statsd, Transport::Udp);
        let source = TapSource::Address("198.18.0.7:9000".parse().unwrap());
        assert!(TAP.watchers(kind, TapSource::Address("192.0.2.1:1".parse().unwrap())).is_none(), "other source");
        assert!(TAP.watchers(Kind::new(Protocol::Syslog, Transport::Udp), source).is_none(), "other listener");
        let watchers = TAP.watchers(kind, source).expect("watched");
        let long = format!("api.x:1|c|#{}", "t".repeat(2 * MAX_TEXT));
        for _ in 0..2000 {
            watchers.offer(b"api.x", long.as_bytes(), || Decision::Admitted);
            watchers.offer(b"web.x", b"web.x:1|c", || Decision::Admitted);
        }
        let v = subscription.viewer();
        assert_eq!(v.sent.load(Relaxed), QUEUE as u64);
        assert_eq!(v.missed.load(Relaxed), 1000 - QUEUE as u64, "over the queue: missed");
        assert_eq!(v.skipped.load(Relaxed), 1000, "over the rate: skipped");
        let first = events.try_recv().unwrap();
        assert!(first.text.len() < MAX_TEXT + 32 && first.text.ends_with("bytes)"), "{}", first.text);
        drop(subscription);
        assert!(!TAP.watching());
    }

    #[test]
    fn filters_are_checked() {
        assert!(Filter::parse(Some("conntrack"), None, None).is_err());
        assert!(Filter::parse(None, Some("10.0.0.0/33"), None).is_err());
        assert!(Filter::parse(None, Some("uid:x"), None).is_err());
        assert!(Filter::parse(None, None, Some(&"*".repeat(MAX_GLOB + 1))).is_err(), "a glob too long");
        assert!(Filter::parse(Some("statsdx"), None, None).is_err());
        assert_eq!(Filter::parse(Some("syslog_tcp"), Some("uid:1000"), Some("a*")).unwrap().uid, Some(1000));
        assert_eq!(statsd_name(b"a.b:1|c"), b"a.b");
        assert_eq!(syslog_name(b"<13>1 2024-01-01T00:00:00Z h billing 1 - - hi"), "billing");
    }
}
