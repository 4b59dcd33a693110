//! The StatsD line protocol, read exactly as Etsy statsd 0.9.0 reads it.
//!
//! `name:value|type[|@rate][|#tag:v,tag2][|T<unix ts>]`, several lines per packet separated by
//! `\n`, several values per line (`name:1|c:2|c`). The parser borrows the packet and hands
//! each metric to a [`MetricSink`]; it allocates nothing after its key buffers have grown.
//!
//! Differences from Etsy statsd, all on lines it mishandles:
//! - `h` and `d` are timers (Etsy statsd counts them as counters), and accept negative values.
//! - A `|T<unix ts>` field is accepted and ignored (Etsy statsd calls the line bad), as are
//!   DogStatsD's origin fields `|c:` (container id), `|e:` (external data) and `|card:`.
//! - DogStatsD events (`_e{…}`) and service checks (`_sc|…`) are read ([`crate::dogstatsd`]),
//!   handed to the sink whole and counted: `dogstatsd.events;alert_type=…` (a counter) and
//!   `service_check;check=…;tags` (a gauge holding the status). Etsy statsd calls both bad.
//! - A sample rate that reads as zero, or whose digits Etsy statsd cannot extract (`@+1`),
//!   makes the value bad (Etsy statsd would count infinity, or throw).
//! - In the tag section anything from a following `|` on (DogStatsD extension fields) is
//!   dropped rather than mangled into the last tag.
//! - Keys and values must pass [the validity rule](crate::valid): a key whose name is empty
//!   (`:1|c`, or `%%:1|c` once sanitised), a key or set member longer than `max_key_length`,
//!   and a value that is not a finite number within ±1e150 (`Infinity`, `1e400`, a timer
//!   whose square would overflow) make the value bad. Etsy statsd takes them and writes
//!   `Infinity`, `NaN` or an empty name to Graphite.

use crate::dogstatsd::{parse_event, parse_service_check, Event, Reason, ServiceCheck};
use crate::number::{is_js_number, js_trim, leading_space_len, parse_js_number};
use crate::valid::{self, KeyRule};

/// The aggregate a value feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `c` (and any unknown type, as Etsy statsd does): summed, scaled by 1/rate.
    Counter,
    /// `g`: last value wins; a leading `+`/`-` is a delta.
    Gauge,
    /// `ms`, `h`, `d`: every value kept for percentiles.
    Timer,
    /// `s`: distinct members counted.
    Set,
}

/// One parsed value, borrowed from the packet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metric<'a> {
    /// The sanitised series key, Graphite-style tags (`;k=v`) included.
    pub key: &'a [u8],
    /// Which aggregate it feeds.
    pub kind: Kind,
    /// Numeric value (counters, gauges, timers); 0 for sets.
    pub value: f64,
    /// `@rate`, 1 when absent.
    pub sample_rate: f64,
    /// For gauges: the value started with `+` or `-`.
    pub gauge_delta: bool,
    /// For sets: the member (`"0"` for an empty value, as Etsy statsd).
    pub set_member: &'a [u8],
    /// For timers: sent as DogStatsD's `h` or `d` (no unit) rather than `ms`.
    pub unitless: bool,
}

/// Receives what the parser reads.
pub trait MetricSink {
    /// A valid value.
    fn metric(&mut self, metric: &Metric<'_>);
    /// A line (or one value of a multi-value line) that could not be read.
    fn bad_line(&mut self, line: &[u8]);
    /// A DogStatsD event (its `dogstatsd.events` counter has gone to [`MetricSink::metric`]).
    fn event(&mut self, _event: &Event<'_>) {}
    /// A DogStatsD service check (its `service_check` gauge has gone to [`MetricSink::metric`]).
    fn service_check(&mut self, _check: &ServiceCheck<'_>) {}
    /// Why a DogStatsD event or service check line was bad (after [`MetricSink::bad_line`]).
    fn bad_reason(&mut self, _line: &[u8], _reason: Reason) {}
    /// A name as sent, when sanitising changed it: `stored` is the name part of the keys the
    /// metrics went under (once per line whose name sanitising changed, when the
    /// [`KeyRule`]'s `sent_names` asks for it).
    fn sent_name(&mut self, _stored: &[u8], _sent: &[u8]) {}
    /// An unsampled counter value: the same as [`MetricSink::metric`] with it, which is what
    /// it does unless a sink has a shorter path for the commonest line.
    #[inline]
    fn counter(&mut self, key: &[u8], value: f64) {
        let kind = Kind::Counter;
        self.metric(&Metric {
            key,
            kind,
            value,
            sample_rate: 1.0,
            gauge_delta: false,
            set_member: &[],
            unitless: false,
        });
    }
}

/// Counts from one [`Parser::parse_packet`] call.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PacketCounts {
    /// Non-empty lines (Etsy's `metrics_received`).
    pub lines: u64,
    /// Bad values (Etsy's `bad_lines_seen`).
    pub bad: u64,
    /// Of those, values refused because their key or set member was over `max_key_length`.
    pub too_long: u64,
    /// Lines whose client-declared container id was past the bound (tagged `other`).
    pub origin_other: u64,
}

/// A reusable StatsD parser: owns the scratch buffers used to build sanitised keys.
#[derive(Debug, Clone)]
pub struct Parser {
    sanitize: bool,
    rule: KeyRule,
    raw_key: Vec<u8>,
    key: Vec<u8>,
    /// Tags added to every key (`k:v,k:v`, as DogStatsD writes them): the sender's origin.
    extra_tags: Vec<u8>,
    /// Tag names only the listener may set (`k,k`): the origin tags it adds, whether or not
    /// the current sender has a value for each. A line's own tag of such a name is dropped.
    reserved: Vec<u8>,
    /// Client-declared container ids (`|c:`) become a `container_id` tag, bounded.
    containers: Option<Box<ClientContainers>>,
    /// Any of the three above is set: keys take the out-of-line path.
    origin: bool,
    /// Lines tagged `container_id:other` since the last packet's counts.
    origin_other: u64,
}

/// The bound on client-declared container ids (`|c:`) a listener tags with: the ids tagged so
/// far, shared by the listener's threads and connections, with each parser's own copy of the
/// ones it has met (so the shared set is only locked for an id new to this parser).
#[derive(Debug, Clone)]
pub struct ClientContainers {
    max: usize,
    shared: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<Vec<u8>>>>,
    known: std::collections::HashSet<Vec<u8>>,
}

impl ClientContainers {
    /// At most `max` distinct ids in `shared` (one set per listener); past it, `other`.
    pub fn new(max: usize, shared: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<Vec<u8>>>>) -> Self {
        ClientContainers { max, shared, known: std::collections::HashSet::new() }
    }

    /// Whether `id` may be a tag value (it is known, or there is room for it).
    fn admit(&mut self, id: &[u8]) -> bool {
        if self.known.contains(id) {
            return true;
        }
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        let fits = shared.contains(id) || shared.len() < self.max;
        if fits {
            shared.insert(id.to_vec());
            drop(shared);
            if self.known.len() >= self.max {
                self.known.clear();
            }
            self.known.insert(id.to_vec());
        }
        fits
    }
}

impl Parser {
    /// A parser; `sanitize` mirrors Etsy's `keyNameSanitize`; keys up to the default length.
    pub fn new(sanitize: bool) -> Self {
        Parser::with_rule(KeyRule { sanitized: sanitize, ..KeyRule::default() })
    }

    /// A parser applying `rule` (its `sanitized` is Etsy's `keyNameSanitize`).
    pub fn with_rule(rule: KeyRule) -> Self {
        Parser {
            sanitize: rule.sanitized,
            rule,
            raw_key: Vec::with_capacity(256),
            key: Vec::with_capacity(256),
            extra_tags: Vec::new(),
            reserved: Vec::new(),
            containers: None,
            origin: false,
            origin_other: 0,
        }
    }

    /// Tags each line's client-declared container id (`|c:`, as DogStatsD clients send it;
    /// a `ci-` prefix dropped) as `container_id`, within `bound`; `None` turns it off.
    pub fn set_client_containers(&mut self, bound: Option<ClientContainers>) {
        self.containers = bound.map(Box::new);
        self.update_origin();
    }

    /// Tags (`k:v,k:v`) added to every key parsed from now on, after the line's own (the
    /// runtime sets the sending process's origin, per datagram); empty for none.
    pub fn set_extra_tags(&mut self, tags: &[u8]) {
        self.extra_tags.clear();
        self.extra_tags.extend_from_slice(tags);
        self.update_origin();
    }

    /// Tag names (`k,k`) only the listener sets: the origin tags it is configured to add. A
    /// line's own tags of these names (DogStatsD `#k:v`, or `;k=v` in the name) are dropped,
    /// so what the kernel says of a sender cannot be claimed or contradicted from the wire,
    /// even for a sender with no value of its own (a process outside any container).
    pub fn reserve_tag_names(&mut self, names: &[u8]) {
        self.reserved.clear();
        self.reserved.extend_from_slice(names);
        self.update_origin();
    }

    fn update_origin(&mut self) {
        self.origin = !self.extra_tags.is_empty() || !self.reserved.is_empty() || self.containers.is_some();
    }

    /// Parses every `\n`-separated line of a packet.
    pub fn parse_packet<S: MetricSink>(&mut self, packet: &[u8], sink: &mut S) -> PacketCounts {
        let mut counts = PacketCounts::default();
        let mut rest = packet;
        loop {
            // The common line, with its end found in the same pass.
            if !self.origin {
                if let Some((metric, end)) = parse_common_prefix(rest, self.rule.max_length) {
                    counts.lines += 1;
                    match metric.kind {
                        Kind::Counter => sink.counter(metric.key, metric.value),
                        _ => sink.metric(&metric),
                    }
                    if end >= rest.len() {
                        counts.origin_other = std::mem::take(&mut self.origin_other);
                        return counts;
                    }
                    rest = &rest[end + 1..];
                    continue;
                }
            }
            let (line, next) = match memchr::memchr(b'\n', rest) {
                Some(i) => (&rest[..i], Some(&rest[i + 1..])),
                None => (rest, None),
            };
            if !line.is_empty() {
                counts.lines += 1;
                let (bad, too_long) = self.parse_line_counted(line, sink);
                counts.bad += bad;
                counts.too_long += too_long;
            }
            match next {
                Some(n) => rest = n,
                None => {
                    counts.origin_other = std::mem::take(&mut self.origin_other);
                    return counts;
                }
            }
        }
    }

    /// Parses one line; returns how many of its values were bad.
    pub fn parse_line<S: MetricSink>(&mut self, line: &[u8], sink: &mut S) -> u64 {
        self.parse_line_counted(line, sink).0
    }

    /// Parses one line; returns how many of its values were bad, and how many of those for a
    /// key or member over the length bound.
    #[inline]
    fn parse_line_counted<S: MetricSink>(&mut self, line: &[u8], sink: &mut S) -> (u64, u64) {
        if !self.origin {
            if let Some(metric) = parse_common(line, self.rule.max_length) {
                sink.metric(&metric);
                return (0, 0);
            }
        }
        self.parse_line_general(line, sink)
    }

    /// Any line: what [`parse_common`] does not take.
    #[inline(never)]
    fn parse_line_general<S: MetricSink>(&mut self, line: &[u8], sink: &mut S) -> (u64, u64) {
        if line.starts_with(b"_e{") || line.starts_with(b"_sc|") {
            return self.parse_dogstatsd(line, sink);
        }
        let (head, tags) = match find2(line, b'|', b'#') {
            Some(i) => {
                let rest = &line[i + 2..];
                let section = match find2(rest, b'|', b'#') {
                    Some(j) => &rest[..j],
                    None => rest,
                };
                (&line[..i], cut_at(section, b'|'))
            }
            None => (line, &[][..]),
        };
        // The name, then the values (`1|c`, or `1|c:2|ms` on a multi-value line). Values are
        // short: only when they hold another `:` can they carry origin fields.
        let is_colon: fn(&u8) -> bool = |b| *b == b':';
        let (name, values, skip) = match head.iter().position(is_colon) {
            Some(i) => {
                let values = &head[i + 1..];
                let values = if values.iter().any(is_colon) { &values[..origin_fields_start(values)] } else { values };
                (&head[..i], values, 0)
            }
            // No `:`: no values (skipping the one piece a split of the name gives).
            None => (head, head, 1),
        };
        let parts = values.split(is_colon).skip(skip);
        let key: &[u8] = if self.origin {
            // The sender's origin tags: off the common path (kept out of line).
            let container = match self.containers.as_deref_mut().zip(client_container(line)) {
                Some((bound, id)) => Some(if bound.admit(id) {
                    id
                } else {
                    self.origin_other += 1;
                    &b"other"[..]
                }),
                None => None,
            };
            let reserved =
                Reserved { names: &self.reserved, extra: &self.extra_tags, container: self.containers.is_some() };
            let key = origin_key(&mut self.raw_key, &mut self.key, self.sanitize, name, tags, reserved, container);
            if self.rule.sent_names && !is_clean(name) {
                sink.sent_name(name_of(key), name);
            }
            key
        } else if tags.is_empty() && (!self.sanitize || is_clean(name)) {
            name
        } else {
            if self.rule.sent_names && !is_clean(name) {
                self.key.clear();
                sanitize_into(name, &mut self.key);
                sink.sent_name(&self.key, name);
            }
            self.raw_key.clear();
            self.raw_key.extend_from_slice(name);
            if !tags.is_empty() {
                for tag in tags.split(|b| *b == b',') {
                    self.raw_key.push(b';');
                    push_tag(&mut self.raw_key, tag);
                }
            }
            if self.sanitize {
                self.key.clear();
                sanitize_into(&self.raw_key, &mut self.key);
                &self.key
            } else {
                &self.raw_key
            }
        };
        let max = self.rule.max_length;
        let (mut bad, mut too_long) = (0, 0);
        let mut any = false;
        match self.rule.check_built(key) {
            Ok(()) => {
                for part in parts {
                    any = true;
                    match parse_value(key, part) {
                        Some(metric) if metric.set_member.len() <= max => sink.metric(&metric),
                        long_member => {
                            bad += 1;
                            too_long += u64::from(long_member.is_some());
                            sink.bad_line(line);
                        }
                    }
                }
            }
            Err(why) => {
                for _ in parts {
                    any = true;
                    bad += 1;
                    too_long += u64::from(why == valid::Invalid::TooLong);
                    sink.bad_line(line);
                }
            }
        }
        if !any {
            // Etsy statsd reads a line without ':' as the value "1" with no type: bad.
            sink.bad_line(line);
            bad += 1;
        }
        (bad, too_long)
    }
}

impl Parser {
    /// An event or a service check: handed to the sink whole, and counted as a metric of its
    /// own (`dogstatsd.events` by alert type; `service_check` by check and tags, the status as
    /// a gauge). Returns (bad, too long) as for a metric line. Cold: kept out of the metric
    /// path.
    #[cold]
    #[inline(never)]
    fn parse_dogstatsd<S: MetricSink>(&mut self, line: &[u8], sink: &mut S) -> (u64, u64) {
        let bad = |sink: &mut S, reason| {
            sink.bad_line(line);
            sink.bad_reason(line, reason);
            (1, 0)
        };
        if line.starts_with(b"_e{") {
            let event = match parse_event(line) {
                Ok(e) => e,
                Err(reason) => return bad(sink, reason),
            };
            let alert = [b"alert_type:".as_slice(), event.alert_type.as_str().as_bytes()].concat();
            match self.build_key(b"dogstatsd.events", [alert.as_slice()].into_iter()) {
                Ok(key) => sink.metric(&Metric::counter(key, 1.0)),
                Err(_) => return bad(sink, "the event's key is not valid"),
            }
            sink.event(&event);
        } else {
            let check = match parse_service_check(line) {
                Ok(c) => c,
                Err(reason) => return bad(sink, reason),
            };
            let named = [b"check:".as_slice(), check.name].concat();
            let tags =
                std::iter::once(named.as_slice()).chain(check.tags.split(|b| *b == b',').filter(|t| !t.is_empty()));
            match self.build_key(b"service_check", tags) {
                Ok(key) => sink.metric(&Metric::gauge(key, f64::from(check.status.code()))),
                Err(valid::Invalid::TooLong) => {
                    sink.bad_line(line);
                    sink.bad_reason(line, "the service check's key is over max_key_length");
                    return (1, 1);
                }
                Err(_) => return bad(sink, "the service check's key is not valid"),
            }
            sink.service_check(&check);
        }
        (0, 0)
    }

    /// `name` with `tags` (`k:v`, as DogStatsD sends them) as Etsy statsd builds a key,
    /// sanitised when configured, checked by the key rule.
    fn build_key<'t>(&mut self, name: &[u8], tags: impl Iterator<Item = &'t [u8]>) -> Result<&[u8], valid::Invalid> {
        self.raw_key.clear();
        self.raw_key.extend_from_slice(name);
        for tag in tags {
            self.raw_key.push(b';');
            push_tag(&mut self.raw_key, tag);
        }
        let reserved =
            Reserved { names: &self.reserved, extra: &self.extra_tags, container: self.containers.is_some() };
        let key = with_origin(&mut self.raw_key, &mut self.key, self.sanitize, reserved, None);
        self.rule.check_built(key)?;
        Ok(key)
    }
}

impl<'a> Metric<'a> {
    fn counter(key: &'a [u8], value: f64) -> Metric<'a> {
        Metric {
            key,
            kind: Kind::Counter,
            value,
            sample_rate: 1.0,
            gauge_delta: false,
            set_member: &[],
            unitless: false,
        }
    }

    fn gauge(key: &'a [u8], value: f64) -> Metric<'a> {
        Metric { key, kind: Kind::Gauge, value, sample_rate: 1.0, gauge_delta: false, set_member: &[], unitless: false }
    }
}

/// A key with the line's own tags and then the origin tags, built in `raw_key` (and sanitised
/// into `key` when asked).
#[inline(never)]
fn origin_key<'k>(
    raw_key: &'k mut Vec<u8>,
    key: &'k mut Vec<u8>,
    sanitize: bool,
    name: &[u8],
    tags: &[u8],
    reserved: Reserved<'_>,
    container: Option<&[u8]>,
) -> &'k [u8] {
    raw_key.clear();
    raw_key.extend_from_slice(name);
    for tag in tags.split(|b| *b == b',').filter(|t| !t.is_empty()) {
        raw_key.push(b';');
        push_tag(raw_key, tag);
    }
    with_origin(raw_key, key, sanitize, reserved, container)
}

/// Finishes a key whose name and the line's own tags are in `raw_key`: sanitised into `key`
/// when asked, the line's tags of reserved names dropped (from the key as it will be, so no
/// byte sanitising removes can hide a name), then the origin tags (`reserved.extra`) and the
/// container id added.
fn with_origin<'k>(
    raw_key: &'k mut Vec<u8>,
    key: &'k mut Vec<u8>,
    sanitize: bool,
    reserved: Reserved<'_>,
    container: Option<&[u8]>,
) -> &'k [u8] {
    let push_origin = |out: &mut Vec<u8>| {
        for tag in reserved.extra.split(|b| *b == b',').filter(|t| !t.is_empty()) {
            out.push(b';');
            push_tag(out, tag);
        }
        if let Some(id) = container {
            out.extend_from_slice(b";container_id=");
            // A client's own word: nothing in it may start another tag.
            out.extend(id.iter().map(|b| if matches!(b, b';' | b'=' | b',') { b'_' } else { *b }));
        }
    };
    if sanitize {
        key.clear();
        sanitize_into(raw_key, key);
        reserved.drop_from(key);
        // Sanitised on their own: a `;` starts them, so no run of spaces spans the join.
        raw_key.clear();
        push_origin(raw_key);
        sanitize_into(raw_key, key);
        key
    } else {
        reserved.drop_from(raw_key);
        push_origin(raw_key);
        raw_key
    }
}

/// The tag names a line may not set itself: those the listener reserves, those of the origin
/// tags it adds, and `container_id` when it tags client-declared container ids.
#[derive(Clone, Copy)]
struct Reserved<'a> {
    /// `k,k`.
    names: &'a [u8],
    /// The origin tags added (`k:v,k:v`).
    extra: &'a [u8],
    container: bool,
}

impl Reserved<'_> {
    /// Whether `name`, as any later stage may sanitise it (Etsy's key sanitising, which
    /// Graphite's naming applies to unsanitised keys), is reserved.
    fn contains(&self, name: &[u8]) -> bool {
        let is = |reserved: &[u8]| !reserved.is_empty() && sanitizes_to(name, reserved);
        (self.container && is(b"container_id"))
            || self.names.split(|b| *b == b',').any(is)
            || self.extra.split(|b| *b == b',').any(|e| is(&e[..tag_name_len(e)]))
    }

    /// Drops from `raw_key` (a name, then `;`-separated tags: from the name itself or from
    /// the line's `#` tags) every tag of a reserved name: what the kernel says of a sender
    /// cannot also be said, or contradicted, from the wire.
    fn drop_from(&self, raw_key: &mut Vec<u8>) {
        let Some(name_end) = raw_key.iter().position(|b| *b == b';') else { return };
        // Compacted in place: each kept tag is moved down over the dropped ones.
        let mut write = name_end;
        let mut read = name_end;
        while read < raw_key.len() {
            // raw_key[read] is a `;`; the tag runs to the next one.
            let start = read + 1;
            let end = raw_key[start..].iter().position(|b| *b == b';').map_or(raw_key.len(), |i| start + i);
            let tag = &raw_key[start..end];
            if !self.contains(&tag[..tag_name_len(tag)]) {
                raw_key.copy_within(read..end, write);
                write += end - read;
            }
            read = end;
        }
        raw_key.truncate(write);
    }
}

/// Whether Etsy's sanitising ([`sanitize_into`]) turns `raw` into exactly `want`, compared as
/// it goes (no allocation: this runs for every tag of every line on the origin path).
fn sanitizes_to(raw: &[u8], want: &[u8]) -> bool {
    let mut want = want.iter();
    let (mut i, mut in_space) = (0, false);
    while i < raw.len() {
        let space = leading_space_len(&raw[i..]);
        let out = if space > 0 {
            i += space;
            if in_space {
                continue;
            }
            in_space = true;
            b'_'
        } else {
            in_space = false;
            let b = raw[i];
            i += 1;
            match b {
                b'/' => b'-',
                b if is_allowed(b) => b,
                _ => continue,
            }
        };
        if want.next() != Some(&out) {
            return false;
        }
    }
    want.next().is_none()
}

/// The length of a tag's name: up to its `=` (Graphite) or `:` (DogStatsD), or all of it.
fn tag_name_len(tag: &[u8]) -> usize {
    tag.iter().position(|b| *b == b'=' || *b == b':').unwrap_or(tag.len())
}

/// The container id a client declared on a line (`|c:ID` or `|c:ci-ID`), if any: a `c:`
/// field after the value's type (right after a bare value, `|c:2` is Etsy's next value of a
/// multi-value line, as in [`origin_fields_start`]). Ids longer than 128 bytes are ignored.
fn client_container(line: &[u8]) -> Option<&[u8]> {
    // Field 0 is `name:value`; field 1 its type (or, as `c:2`, the next value).
    let field = line.split(|b| *b == b'|').skip(2).find(|f| f.starts_with(b"c:"))?;
    let id = &field[2..];
    let id = id.strip_prefix(b"ci-").unwrap_or(id);
    (!id.is_empty() && id.len() <= 128).then_some(id)
}

/// Where DogStatsD's origin fields (`|c:`, `|e:`, `|card:`) begin in a line's values (their
/// length when there are none). They hold `:`, which would split the value list, so they end
/// the head. A `|c:` is such a field only after a value that already has its type (`1|c|c:id`);
/// right after a bare value it is Etsy's next value of a multi-value line (`1|c:2|c`).
fn origin_fields_start(head: &[u8]) -> usize {
    let mut from = 0;
    while let Some(i) = memchr::memchr(b'|', &head[from..]).map(|i| from + i) {
        let rest = &head[i + 1..];
        if rest.starts_with(b"c:") || rest.starts_with(b"e:") || rest.starts_with(b"card:") {
            let value_start = head[..i].iter().rposition(|b| *b == b':').map_or(0, |c| c + 1);
            if head[value_start..i].contains(&b'|') {
                return i;
            }
        }
        from = i + 1;
    }
    head.len()
}

/// Position of the two-byte sequence `a b`.
fn find2(s: &[u8], a: u8, b: u8) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = memchr::memchr(a, &s[from..]) {
        let at = from + i;
        if s.get(at + 1) == Some(&b) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

fn cut_at(s: &[u8], sep: u8) -> &[u8] {
    match s.iter().position(|b| *b == sep) {
        Some(i) => &s[..i],
        None => s,
    }
}

/// A DogStatsD tag as Etsy statsd rewrites it: the first `;` becomes `_`, the first `:` `=`.
fn push_tag(out: &mut Vec<u8>, tag: &[u8]) {
    let start = out.len();
    out.extend_from_slice(tag);
    let t = &mut out[start..];
    if let Some(i) = t.iter().position(|b| *b == b';') {
        t[i] = b'_';
    }
    if let Some(i) = t.iter().position(|b| *b == b':') {
        t[i] = b'=';
    }
}

/// `[a-zA-Z0-9_\-.;=]`, as a table: checked for every byte of every key.
const ALLOWED: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b';' | b'=');
        b += 1;
    }
    t
};

#[inline]
pub(crate) fn is_allowed(b: u8) -> bool {
    ALLOWED[b as usize]
}

/// True when sanitising would not change the key.
/// The name part of a key (before its tags).
fn name_of(key: &[u8]) -> &[u8] {
    key.split(|b| *b == b';').next().unwrap_or(key)
}

fn is_clean(key: &[u8]) -> bool {
    key.iter().all(|b| is_allowed(*b))
}

/// Etsy statsd's key sanitiser: runs of white space become `_`, `/` becomes `-`, and anything
/// outside `[a-zA-Z0-9_\-.;=]` is removed (after the first two steps, so a removed character
/// splits a run of white space).
pub fn sanitize_into(raw: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    let mut in_space = false;
    while i < raw.len() {
        let space = leading_space_len(&raw[i..]);
        if space > 0 {
            if !in_space {
                out.push(b'_');
                in_space = true;
            }
            i += space;
            continue;
        }
        in_space = false;
        let b = raw[i];
        if b == b'/' {
            out.push(b'-');
        } else if is_allowed(b) {
            out.push(b);
        }
        // One byte at a time: a non-ASCII byte is never kept, and stepping over a whole
        // sequence by its lead byte would swallow the ASCII after a cut one (`\xc3;` lost
        // its `;`, merging the next tag into the name). Etsy's JavaScript reads a cut
        // sequence as U+FFFD and keeps what follows, as this does.
        i += 1;
    }
}

/// 10^k for k ≤ 15, exact as doubles.
const POW10: [f64; 16] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15];

/// The line almost every client sends, read in one pass: `name:value|type` where the name's
/// bytes are all ones sanitising keeps (so the key is the name, sanitised or not), the value
/// is digits with at most one `.` inside and at most 15 digits in all, and the type is `c`,
/// `ms`, `g`, `h` or `d` ending the line. `None` for anything else (tags, sample rates, signs,
/// sets, several values, odd spacing), which the general path reads; for what this takes, the
/// general path gives the same metric (a property test holds them together).
///
/// Written by hand because this is the receive path's inner loop: the general path walks a
/// line five or six times (tags, `:`, origin fields, sanitising, the value, the type).
#[inline]
fn parse_common(line: &[u8], max_length: usize) -> Option<Metric<'_>> {
    parse_common_prefix(line, max_length).filter(|(_, end)| *end == line.len()).map(|(m, _)| m)
}

/// [`parse_common`] on the first line of `buf`: the metric and where the line ends (the `\n`,
/// or the end of `buf`), so the packet loop needs no separate search for the newline.
#[inline]
fn parse_common_prefix(buf: &[u8], max_length: usize) -> Option<(Metric<'_>, usize)> {
    let colon = buf.iter().position(|b| !is_allowed(*b))?;
    if buf[colon] != b':' || colon == 0 || colon > max_length || buf[0] == b';' {
        return None;
    }
    let key = &buf[..colon];
    // The value: digits, then perhaps `.` and digits; 15 digits at most, so the integer and
    // the power of ten are exact and their quotient is the correctly rounded value, as
    // Number() reads it.
    let (mut mantissa, mut digits, mut fraction, mut dot) = (0u64, 0usize, 0usize, false);
    let mut i = colon + 1;
    loop {
        match *buf.get(i)? {
            b @ b'0'..=b'9' => {
                mantissa = mantissa * 10 + u64::from(b - b'0');
                digits += 1;
                fraction += usize::from(dot);
                if digits > 15 {
                    return None;
                }
            }
            b'.' if !dot && digits > 0 => dot = true,
            b'|' => break,
            _ => return None,
        }
        i += 1;
    }
    if digits == 0 || (dot && fraction == 0) {
        return None;
    }
    // The type, up to the end of the line.
    let at = |k: usize| buf.get(i + k).copied().unwrap_or(b'\n');
    let (kind, unitless, len) = match (at(1), at(2)) {
        (b'c', b'\n') => (Kind::Counter, false, 1),
        (b'g', b'\n') => (Kind::Gauge, false, 1),
        (b'h' | b'd', b'\n') => (Kind::Timer, true, 1),
        (b'm', b's') if at(3) == b'\n' => (Kind::Timer, false, 2),
        _ => return None,
    };
    let value = mantissa as f64 / POW10[fraction];
    let metric = Metric { key, kind, value, sample_rate: 1.0, gauge_delta: false, set_member: &[], unitless };
    Some((metric, (i + 1 + len).min(buf.len())))
}

/// One `value|type[|@rate]` part; `None` when Etsy statsd would call it bad (or see module docs).
fn parse_value<'a>(key: &'a [u8], part: &'a [u8]) -> Option<Metric<'a>> {
    let mut fields = part.split(|b| *b == b'|');
    let value = fields.next()?;
    let raw_type = fields.next()?;
    let mut sample_rate = 1.0;
    let (mut rate_seen, mut time_seen) = (false, false);
    for extra in fields {
        match extra.first() {
            Some(b'@') if !rate_seen && extra.len() > 1 && is_js_number(&extra[1..]) && extra[1] != b'-' => {
                rate_seen = true;
                // Etsy: Number(field.match(/^@([\d\.]+)/)[1])
                let digits = &extra[1..];
                let run = digits.iter().take_while(|b| b.is_ascii_digit() || **b == b'.').count();
                sample_rate = parse_js_number(&digits[..run]).filter(|_| run > 0)?;
                if sample_rate == 0.0 || !sample_rate.is_finite() {
                    return None;
                }
            }
            Some(b'T') if !time_seen && extra.len() > 1 && extra[1..].iter().all(u8::is_ascii_digit) => {
                time_seen = true
            }
            _ => return None,
        }
    }
    let numeric = match raw_type {
        b"s" => None,
        b"g" => Some(parse_js_number(value).filter(|_| !value.is_empty())?),
        b"ms" => Some(parse_js_number(value).filter(|v| !value.is_empty() && *v >= 0.0)?),
        _ => Some(parse_js_number(value).filter(|_| !value.is_empty())?),
    };
    let trimmed_type = js_trim(raw_type);
    let unitless = matches!(trimmed_type, b"h" | b"d");
    let kind = match trimmed_type {
        b"ms" | b"h" | b"d" => Kind::Timer,
        b"g" => Kind::Gauge,
        b"s" => Kind::Set,
        _ => Kind::Counter,
    };
    let gauge_delta = kind == Kind::Gauge && matches!(value.first(), Some(b'+' | b'-'));
    let (value, set_member) = match kind {
        // A set's value is not validated (type `s` exactly); a trimmed `s ` still is.
        Kind::Set => (0.0, if value.is_empty() { &b"0"[..] } else { value }),
        _ => (numeric?, &[][..]),
    };
    valid::sample(value, sample_rate).ok()?;
    Some(Metric { key, kind, value, sample_rate, gauge_delta, set_member, unitless })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect {
        metrics: Vec<(String, Kind, f64, f64, bool, String)>,
        bad: usize,
        events: Vec<String>,
        checks: Vec<String>,
        reasons: Vec<Reason>,
    }
    impl MetricSink for Collect {
        fn metric(&mut self, m: &Metric<'_>) {
            self.metrics.push((
                String::from_utf8_lossy(m.key).into_owned(),
                m.kind,
                m.value,
                m.sample_rate,
                m.gauge_delta,
                String::from_utf8_lossy(m.set_member).into_owned(),
            ));
        }
        fn bad_line(&mut self, _: &[u8]) {
            self.bad += 1;
        }
        fn event(&mut self, e: &Event<'_>) {
            self.events.push(String::from_utf8_lossy(e.title).into_owned());
        }
        fn service_check(&mut self, c: &ServiceCheck<'_>) {
            self.checks.push(String::from_utf8_lossy(c.name).into_owned());
        }
        fn bad_reason(&mut self, _: &[u8], reason: Reason) {
            self.reasons.push(reason);
        }
    }

    fn sanitize(raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        sanitize_into(raw, &mut out);
        out
    }

    fn parse(s: &str) -> Collect {
        let mut c = Collect::default();
        Parser::new(true).parse_packet(s.as_bytes(), &mut c);
        c
    }

    #[test]
    fn reads_every_type() {
        let c = parse("a:1|c\nb:2.5|g\nc:-3|g\nd:+4|g\ne:10|ms\nf:7|h\ng:8|d\nh:x|s\ni:5|c|@0.5");
        assert_eq!(c.bad, 0);
        let kinds: Vec<Kind> = c.metrics.iter().map(|m| m.1).collect();
        use Kind::*;
        assert_eq!(kinds, [Counter, Gauge, Gauge, Gauge, Timer, Timer, Timer, Set, Counter]);
        assert!(!c.metrics[1].4 && c.metrics[2].4 && c.metrics[3].4);
        assert_eq!(c.metrics[7].5, "x");
        assert_eq!(c.metrics[8].3, 0.5);
    }

    #[test]
    fn several_values_per_line_and_bad_ones_alone() {
        let c = parse("a:1|c:2|c:x|c:3|ms");
        assert_eq!(c.metrics.len(), 3);
        assert_eq!(c.bad, 1);
        assert_eq!(c.metrics[2].1, Kind::Timer);
    }

    #[test]
    fn bad_lines_do_not_hide_good_ones() {
        let c = parse("good:1|c\nnocolon\nnotype:1\n:|\nneg:-1|ms\nrate:1|c|@x\nrate2:1|c|@-1\nok:2|c\n\n");
        assert_eq!(c.metrics.len(), 2);
        assert_eq!(c.bad, 6);
    }

    #[test]
    fn dogstatsd_and_graphite_tags() {
        let c = parse("req:1|c|#env:prod,region:eu;1\nreq;env=prod:1|c");
        assert_eq!(c.metrics[0].0, "req;env=prod;region=eu_1");
        assert_eq!(c.metrics[1].0, "req;env=prod");
        let c = parse("req:1|c|@0.5|#a:b|T1700000000");
        assert_eq!(c.metrics[0].0, "req;a=b");
        assert_eq!(c.metrics[0].3, 0.5);
        let c = parse("req:1|c|T1700000000");
        assert_eq!(c.bad, 0);
    }

    #[test]
    fn sanitises_like_etsy() {
        let mut out = Vec::new();
        sanitize_into("a b\t\tc/d!é:e \u{a0}f é g".as_bytes(), &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "a_b_c-de_f__g");
        let c = parse("my key/x:1|c");
        assert_eq!(c.metrics[0].0, "my_key-x");
        let mut unsanitised = Collect::default();
        Parser::new(false).parse_packet(b"my key:1|c", &mut unsanitised);
        assert_eq!(unsanitised.metrics[0].0, "my key");
    }

    #[test]
    fn javascript_number_quirks() {
        let c = parse("a:0x10|c\nb: 3 |g\nc:1e2|ms\ne:NaN|c\nf:|s\ng:|c\nh:1|c|@1e-3");
        assert_eq!(c.bad, 2);
        assert_eq!(c.metrics[0].2, 16.0);
        assert_eq!(c.metrics[1].2, 3.0);
        assert_eq!(c.metrics[2].2, 100.0);
        assert_eq!(c.metrics[3].5, "0");
        // Etsy extracts only the leading digits of a rate: "@1e-3" is rate 1.
        assert_eq!(c.metrics[4].3, 1.0);
    }

    #[test]
    fn the_validity_rule() {
        // Etsy statsd takes all of these; none can be aggregated into a finite, named series.
        let c = parse(
            "d:Infinity|c\nd:-Infinity|g\nd:1e400|c\nt:1e200|ms\nr:1e149|c|@0.001\n:1|c\n%%:1|c\n;a=b:1|c\n:1|c|#a:b",
        );
        assert_eq!((c.bad, c.metrics.len()), (9, 0), "{:?}", c.metrics);
        let c = parse("ok:1e150|ms\nok2:-1e150|g\n%ok%:1|c|#env:x");
        assert_eq!((c.bad, c.metrics.len()), (0, 3));
        assert_eq!(c.metrics[2].0, "ok;env=x");
        // Keys and set members over max_key_length.
        let mut p = Parser::with_rule(KeyRule { max_length: 10, sanitized: true, sent_names: false });
        let mut c = Collect::default();
        let counts = p.parse_packet(
            b"abcdefghij:1|c\nabcdefghijk:1|c:2|c\nu:0123456789|s\nu:0123456789a|s\nx:1|c|#t:abcdefgh",
            &mut c,
        );
        assert_eq!(c.metrics.len(), 2);
        assert_eq!((counts.bad, counts.too_long), (4, 4));
        // Unsanitised keys keep their bytes, but not an empty name.
        let mut c = Collect::default();
        Parser::new(false).parse_packet(b"a b:1|c\n:1|c", &mut c);
        assert_eq!((c.metrics.len(), c.bad), (1, 1));
    }

    #[test]
    fn zero_sample_rate_is_bad() {
        assert_eq!(parse("a:1|c|@0").bad, 1);
        assert_eq!(parse("a:1|c|@0x5").bad, 1);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// A packet read with the one-pass reader (which also finds each line's end) gives the
        /// same metrics and counts as every line read by the general path.
        #[test]
        fn packets_read_the_same_either_way(
            lines in proptest::collection::vec("[a-z.;=]{0,6}:[0-9.]{0,4}\\|(c|ms|g|h|d|s|c:2\\|c|c\\|@0.5)?|\\r?|[a-z]{0,3}", 0..8),
            trailing in proptest::bool::ANY,
        ) {
            let mut packet = lines.join("\n");
            if trailing {
                packet.push('\n');
            }
            let mut fast = Collect::default();
            let counts = Parser::new(true).parse_packet(packet.as_bytes(), &mut fast);
            let mut reference = Collect::default();
            let mut parser = Parser::new(true);
            let (mut n, mut bad) = (0, 0);
            for line in packet.split('\n').filter(|l| !l.is_empty()) {
                n += 1;
                bad += parser.parse_line_general(line.as_bytes(), &mut reference).0;
            }
            proptest::prop_assert_eq!(&fast.metrics, &reference.metrics, "{:?}", packet);
            proptest::prop_assert_eq!((counts.lines, counts.bad), (n, bad), "{:?}", packet);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(5000))]
        /// Whatever the one-pass reader takes, the general path reads the same.
        #[test]
        fn the_common_path_agrees_with_the_general_one(
            name in "[a-z;=._/ -]{0,12}",
            value in "[0-9]{0,17}(\\.[0-9]{0,4})?|[+-]?[0-9.]{1,6}",
            kind in "c|ms|g|h|d|s|x|c |",
            sanitize in proptest::bool::ANY,
        ) {
            let line = format!("{name}:{value}|{kind}");
            let mut parser = Parser::new(sanitize);
            let mut general = Collect::default();
            parser.parse_line_general(line.as_bytes(), &mut general);
            if let Some(m) = parse_common(line.as_bytes(), parser.rule.max_length) {
                let mut common = Collect::default();
                common.metric(&m);
                proptest::prop_assert_eq!(&common.metrics, &general.metrics, "{}", line);
                proptest::prop_assert_eq!(general.bad, 0);
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_counts_lines(data in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let mut c = Collect::default();
            let counts = Parser::new(true).parse_packet(&data, &mut c);
            let lines = data.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count() as u64;
            proptest::prop_assert_eq!(counts.lines, lines);
            proptest::prop_assert_eq!(counts.bad as usize, c.bad);
        }

        #[test]
        fn valid_counters_always_parse(name in "[a-z][a-z0-9_.]{0,20}", v in -1e9f64..1e9, rate in 0.01f64..1.0) {
            let line = format!("{name}:{v}|c|@{rate}");
            let c = parse(&line);
            proptest::prop_assert_eq!(c.bad, 0);
            proptest::prop_assert_eq!(&c.metrics[0].0, &name);
            proptest::prop_assert_eq!(c.metrics[0].2, v);
        }

        #[test]
        fn sanitised_keys_are_clean(raw in proptest::collection::vec(proptest::num::u8::ANY, 0..60)) {
            let out = sanitize(&raw);
            proptest::prop_assert!(is_clean(&out));
            proptest::prop_assert_eq!(sanitize(&out), out);
        }
    }

    #[test]
    fn dogstatsd_origin_fields_and_timestamps_are_never_bad_lines() {
        for line in [
            "a:1|c|c:0123abcd",
            "a:1|c|#env:prod|c:0123abcd|e:it-false,cn-x,pu-y|card:high",
            "a:1|c|@0.5|T1700000000",
            "a:1|c|T1700000000|@0.5",
            "a:1|c|c:ci-1|#env:prod",
            "a:1|c|card:orchestrator",
        ] {
            let c = parse(line);
            assert_eq!((c.bad, c.metrics.len()), (0, 1), "{line}");
            assert!(c.metrics[0].0.starts_with('a'), "{line}: {:?}", c.metrics);
        }
        assert_eq!(parse("a:1|c|@0.5|#env:prod|c:x").metrics[0].0, "a;env=prod");
        // Etsy's multi-value lines keep their `|c:` (the next value), an origin field after them.
        let multi = parse("a:1|c:2|c|c:0123abcd");
        assert_eq!((multi.bad, multi.metrics.len()), (0, 2));
        // Two rates, or an unknown field, are still bad.
        assert_eq!(parse("a:1|c|@0.5|@0.5").bad, 1);
        assert_eq!(parse("a:1|c|zz").bad, 1);
    }

    #[test]
    fn events_and_service_checks_are_counted_not_bad() {
        let c = parse("_e{6,6}:deploy|v1.2.3|t:error|#env:prod\n_sc|db.up|2|#env:prod,az:b|m:down\n_e{2,2}:ok|ok");
        assert_eq!(
            (c.bad, c.events.clone(), c.checks.clone()),
            (0, vec!["deploy".to_string(), "ok".into()], vec!["db.up".to_string()])
        );
        let keys: Vec<(&str, Kind, f64)> = c.metrics.iter().map(|m| (m.0.as_str(), m.1, m.2)).collect();
        assert_eq!(
            keys,
            [
                ("dogstatsd.events;alert_type=error", Kind::Counter, 1.0),
                ("service_check;check=db.up;env=prod;az=b", Kind::Gauge, 2.0),
                ("dogstatsd.events;alert_type=info", Kind::Counter, 1.0),
            ]
        );
        let bad = parse("_e{9,2}:short|ab\n_sc|x|7");
        assert_eq!((bad.bad, bad.metrics.len()), (2, 0));
        assert_eq!(bad.reasons.len(), 2, "each bad DogStatsD line says why: {:?}", bad.reasons);
    }

    #[test]
    fn extra_tags_go_on_every_key_after_the_lines_own() {
        let mut parser = Parser::new(true);
        parser.set_extra_tags(b"uid:1000,program:web");
        let mut c = Collect::default();
        parser.parse_packet(b"hits:1|c\nlat:2|ms|#env:prod\n_sc|db|0|#az:b\n_e{1,1}:t|x", &mut c);
        let keys: Vec<&str> = c.metrics.iter().map(|m| m.0.as_str()).collect();
        assert_eq!(
            keys,
            [
                "hits;uid=1000;program=web",
                "lat;env=prod;uid=1000;program=web",
                "service_check;check=db;az=b;uid=1000;program=web",
                "dogstatsd.events;alert_type=info;uid=1000;program=web",
            ]
        );
        parser.set_extra_tags(b"");
        let mut c = Collect::default();
        parser.parse_packet(b"hits:1|c", &mut c);
        assert_eq!(c.metrics[0].0, "hits");
    }

    /// What the kernel says of a sender cannot be said from the wire: a line's own `uid`,
    /// `program` or `container_id` tags (DogStatsD `#` tags, Graphite `;k=v` in the name, or
    /// smuggled through a tag value's second `;`) are dropped, and only the kernel's remain.
    #[test]
    fn origin_tags_cannot_be_claimed_from_the_wire() {
        for sanitize in [true, false] {
            let mut parser = Parser::new(sanitize);
            parser.reserve_tag_names(b"uid,program,container_id");
            parser.set_extra_tags(b"uid:65534,program:web");
            parser.set_client_containers(Some(ClientContainers::new(10, std::sync::Arc::default())));
            let mut c = Collect::default();
            parser.parse_packet(
                b"billing.charge:100|c|#uid:0,program:payroll,container_id:feed,env:prod\n\
                  billing.charge;uid=0;program=payroll;az=b:1|c\n\
                  billing.charge:1|c|#env:a;b;uid=0\n\
                  billing.charge:1|c|#uid,program\n\
                  _sc|db|0|#uid:0,az:b\n\
                  billing.charge:1|c|#pro\xffgram:payroll,ui\xc3\xa9d:0\n\
                  billing.charge:1|c|c:real-container",
                &mut c,
            );
            let keys: Vec<&str> = c.metrics.iter().map(|m| m.0.as_str()).collect();
            assert_eq!(
                keys,
                [
                    "billing.charge;env=prod;uid=65534;program=web",
                    "billing.charge;az=b;uid=65534;program=web",
                    "billing.charge;env=a_b;uid=65534;program=web",
                    "billing.charge;uid=65534;program=web",
                    "service_check;check=db;az=b;uid=65534;program=web",
                    "billing.charge;uid=65534;program=web",
                    "billing.charge;uid=65534;program=web;container_id=real-container",
                ],
                "sanitize {sanitize}"
            );
        }
    }

    #[test]
    fn client_container_ids_are_tags_within_their_bound() {
        let shared = std::sync::Arc::default();
        let mut parser = Parser::new(true);
        parser.set_client_containers(Some(ClientContainers::new(2, std::sync::Arc::clone(&shared))));
        let mut c = Collect::default();
        let counts = parser.parse_packet(
            b"a:1|c|#env:prod|c:ci-abc\nb:1|c|c:def\nm:1|c:2|c\nd:1|c|c:ghi\ne:1|c|@0.5|c:abc\nplain:1|c",
            &mut c,
        );
        let keys: Vec<&str> = c.metrics.iter().map(|m| m.0.as_str()).collect();
        assert_eq!(
            keys,
            [
                "a;env=prod;container_id=abc",
                "b;container_id=def",
                // `c:2` right after a bare value is the next value, not a container id.
                "m",
                "m",
                "d;container_id=other",
                "e;container_id=abc",
                "plain",
            ]
        );
        assert_eq!((counts.bad, counts.origin_other), (0, 1));
        assert_eq!(shared.lock().unwrap().len(), 2);
        // Another parser of the same listener shares the bound.
        let mut other = Parser::new(true);
        other.set_client_containers(Some(ClientContainers::new(2, shared)));
        let mut c = Collect::default();
        other.parse_packet(b"x:1|c|c:zzz\ny:1|c|c:def", &mut c);
        assert_eq!(c.metrics[0].0, "x;container_id=other");
        assert_eq!(c.metrics[1].0, "y;container_id=def");
    }
}
