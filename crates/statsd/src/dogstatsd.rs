//! DogStatsD's two non-metric datagrams, as its datagram format documentation defines them:
//! events (`_e{title_len,text_len}:title|text|d:…|h:…|k:…|p:…|s:…|t:…|#tags`) and service
//! checks (`_sc|name|status|d:…|h:…|#tags|m:message`). Both borrow the packet.
//!
//! Lengths are in bytes of UTF-8; an event's text has its newlines escaped as `\n` by the
//! client (kept as received here). Unknown `x:` fields are skipped, as the Datadog agent
//! does; a field that cannot be read (a bad timestamp, priority, alert type or status) makes
//! the whole line bad, with the reason.

/// An event's alert type (`t:`; `info` when absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertType {
    /// `info`
    Info,
    /// `warning`
    Warning,
    /// `error`
    Error,
    /// `success`
    Success,
}

impl AlertType {
    /// Its name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertType::Info => "info",
            AlertType::Warning => "warning",
            AlertType::Error => "error",
            AlertType::Success => "success",
        }
    }
}

/// An event's priority (`p:`; `normal` when absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// `normal`
    Normal,
    /// `low`
    Low,
}

impl Priority {
    /// Its name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

/// A service check's status: 0 OK, 1 warning, 2 critical, 3 unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckStatus {
    /// 0
    Ok,
    /// 1
    Warning,
    /// 2
    Critical,
    /// 3
    Unknown,
}

impl CheckStatus {
    /// The number on the wire (the gauge's value).
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Ok => "ok",
            CheckStatus::Warning => "warning",
            CheckStatus::Critical => "critical",
            CheckStatus::Unknown => "unknown",
        }
    }
}

/// Origin fields a client may add to any datagram.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Origin<'a> {
    /// `c:` — the sender's container id (DogStatsD origin detection).
    pub container_id: &'a [u8],
    /// `e:` — the external data an admission controller injected.
    pub external: &'a [u8],
    /// `card:` — the tag cardinality the client asks for.
    pub cardinality: &'a [u8],
}

/// A DogStatsD event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event<'a> {
    /// Its title.
    pub title: &'a [u8],
    /// Its text (newlines as the client escaped them, `\n`).
    pub text: &'a [u8],
    /// `d:` — when it happened, Unix seconds.
    pub timestamp: Option<i64>,
    /// `h:`
    pub hostname: &'a [u8],
    /// `k:`
    pub aggregation_key: &'a [u8],
    /// `p:`
    pub priority: Priority,
    /// `s:`
    pub source_type: &'a [u8],
    /// `t:`
    pub alert_type: AlertType,
    /// `#` — the tags as sent, comma-separated.
    pub tags: &'a [u8],
    /// `c:`, `e:`, `card:`.
    pub origin: Origin<'a>,
}

/// A DogStatsD service check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceCheck<'a> {
    /// The check's name.
    pub name: &'a [u8],
    /// Its status.
    pub status: CheckStatus,
    /// `d:` — Unix seconds.
    pub timestamp: Option<i64>,
    /// `h:`
    pub hostname: &'a [u8],
    /// `#` — the tags as sent, comma-separated.
    pub tags: &'a [u8],
    /// `m:` — the message (always the last field: it may hold `|`).
    pub message: &'a [u8],
    /// `c:`, `e:`, `card:`.
    pub origin: Origin<'a>,
}

/// Why a DogStatsD line could not be read.
pub type Reason = &'static str;

/// Reads an event line (it starts with `_e{`).
pub fn parse_event(line: &[u8]) -> Result<Event<'_>, Reason> {
    let rest = line.strip_prefix(b"_e{").ok_or("not an event")?;
    let close = rest.iter().position(|b| *b == b'}').ok_or("event lengths not closed with `}`")?;
    let (lengths, rest) = (&rest[..close], &rest[close + 1..]);
    let comma = lengths.iter().position(|b| *b == b',').ok_or("event lengths need `title,text`")?;
    let title_len = number(&lengths[..comma]).ok_or("event title length is not a number")?;
    let text_len = number(&lengths[comma + 1..]).ok_or("event text length is not a number")?;
    let rest = rest.strip_prefix(b":").ok_or("event lengths must be followed by `:`")?;
    if title_len == 0 {
        return Err("event title is empty");
    }
    if rest.len() < title_len + 1 + text_len {
        return Err("event shorter than its lengths say");
    }
    let title = &rest[..title_len];
    if rest[title_len] != b'|' {
        return Err("event title length does not end at a `|`");
    }
    let text = &rest[title_len + 1..title_len + 1 + text_len];
    let fields = &rest[title_len + 1 + text_len..];
    if !fields.is_empty() && fields[0] != b'|' {
        return Err("event text length does not end at a `|` or the line's end");
    }
    let mut event = Event {
        title,
        text,
        timestamp: None,
        hostname: b"",
        aggregation_key: b"",
        priority: Priority::Normal,
        source_type: b"",
        alert_type: AlertType::Info,
        tags: b"",
        origin: Origin::default(),
    };
    for field in fields.split(|b| *b == b'|').skip(1) {
        if let Some(tags) = field.strip_prefix(b"#") {
            event.tags = tags;
        } else if let Some(v) = field.strip_prefix(b"d:") {
            event.timestamp = Some(timestamp(v).ok_or("event `d:` is not a Unix time")?);
        } else if let Some(v) = field.strip_prefix(b"h:") {
            event.hostname = v;
        } else if let Some(v) = field.strip_prefix(b"k:") {
            event.aggregation_key = v;
        } else if let Some(v) = field.strip_prefix(b"s:") {
            event.source_type = v;
        } else if let Some(v) = field.strip_prefix(b"p:") {
            event.priority = match v {
                b"normal" => Priority::Normal,
                b"low" => Priority::Low,
                _ => return Err("event `p:` is neither normal nor low"),
            };
        } else if let Some(v) = field.strip_prefix(b"t:") {
            event.alert_type = match v {
                b"info" => AlertType::Info,
                b"warning" => AlertType::Warning,
                b"error" => AlertType::Error,
                b"success" => AlertType::Success,
                _ => return Err("event `t:` is not info, warning, error or success"),
            };
        } else {
            origin_field(field, &mut event.origin);
        }
    }
    Ok(event)
}

/// Reads a service check line (it starts with `_sc|`).
pub fn parse_service_check(line: &[u8]) -> Result<ServiceCheck<'_>, Reason> {
    let rest = line.strip_prefix(b"_sc|").ok_or("not a service check")?;
    // `m:` is last and may hold `|`: split it off first.
    let (head, message) = match find(rest, b"|m:") {
        Some(i) => (&rest[..i], &rest[i + 3..]),
        None => (rest, &b""[..]),
    };
    let mut fields = head.split(|b| *b == b'|');
    let name = fields.next().filter(|n| !n.is_empty()).ok_or("service check name is empty")?;
    let status = match fields.next() {
        Some(b"0") => CheckStatus::Ok,
        Some(b"1") => CheckStatus::Warning,
        Some(b"2") => CheckStatus::Critical,
        Some(b"3") => CheckStatus::Unknown,
        Some(_) => return Err("service check status is not 0, 1, 2 or 3"),
        None => return Err("service check has no status"),
    };
    let mut check =
        ServiceCheck { name, status, timestamp: None, hostname: b"", tags: b"", message, origin: Origin::default() };
    for field in fields {
        if let Some(tags) = field.strip_prefix(b"#") {
            check.tags = tags;
        } else if let Some(v) = field.strip_prefix(b"d:") {
            check.timestamp = Some(timestamp(v).ok_or("service check `d:` is not a Unix time")?);
        } else if let Some(v) = field.strip_prefix(b"h:") {
            check.hostname = v;
        } else {
            origin_field(field, &mut check.origin);
        }
    }
    Ok(check)
}

/// Takes `c:`, `e:` and `card:` into `origin`; anything else is skipped (as the agent does).
pub fn origin_field<'a>(field: &'a [u8], origin: &mut Origin<'a>) -> bool {
    if let Some(v) = field.strip_prefix(b"c:") {
        origin.container_id = v;
    } else if let Some(v) = field.strip_prefix(b"e:") {
        origin.external = v;
    } else if let Some(v) = field.strip_prefix(b"card:") {
        origin.cardinality = v;
    } else {
        return false;
    }
    true
}

fn number(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() || digits.len() > 9 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn timestamp(digits: &[u8]) -> Option<i64> {
    if digits.is_empty() || digits.len() > 12 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_with_every_field() {
        let line =
            "_e{6,12}:Déjà|hello\\nthere|d:1700000000|h:web1|k:deploy|p:low|s:jenkins|t:error|#env:prod,az:b|c:abc123";
        let e = parse_event(line.as_bytes()).unwrap();
        assert_eq!(e.title, "Déjà".as_bytes());
        assert_eq!(e.text, b"hello\\nthere");
        assert_eq!(e.timestamp, Some(1_700_000_000));
        assert_eq!((e.hostname, e.aggregation_key, e.source_type), (&b"web1"[..], &b"deploy"[..], &b"jenkins"[..]));
        assert_eq!((e.priority, e.alert_type), (Priority::Low, AlertType::Error));
        assert_eq!(e.tags, b"env:prod,az:b");
        assert_eq!(e.origin.container_id, b"abc123");
    }

    #[test]
    fn an_event_whose_text_holds_a_bar_is_cut_by_its_length() {
        let e = parse_event(b"_e{1,3}:t|a|b|t:success").unwrap();
        assert_eq!((e.title, e.text, e.alert_type), (&b"t"[..], &b"a|b"[..], AlertType::Success));
        let bare = parse_event(b"_e{2,0}:hi|").unwrap();
        assert_eq!((bare.text, bare.alert_type, bare.priority), (&b""[..], AlertType::Info, Priority::Normal));
    }

    #[test]
    fn bad_events_say_why() {
        for (line, why) in [
            (&b"_e{5,2}:ab|cd"[..], "shorter"),
            (b"_e{2,2}:abc|d", "title length"),
            (b"_e{x,2}:ab|cd", "title length is not a number"),
            (b"_e{2,2}:ab|cd|t:fatal", "`t:`"),
            (b"_e{2,2}:ab|cd|d:yesterday", "`d:`"),
            (b"_e{0,2}:|cd", "empty"),
            (b"_e{2,1}:ab|cd", "text length"),
        ] {
            let err = parse_event(line).unwrap_err();
            assert!(err.contains(why), "{}: {err}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn a_service_check_with_every_field_and_a_message_holding_bars() {
        let c = parse_service_check(b"_sc|db.up|2|d:1700000000|h:db1|#env:prod|c:ci-1|m:down | since 3am").unwrap();
        assert_eq!((c.name, c.status.code(), c.timestamp), (&b"db.up"[..], 2, Some(1_700_000_000)));
        assert_eq!((c.hostname, c.tags, c.message), (&b"db1"[..], &b"env:prod"[..], &b"down | since 3am"[..]));
        assert_eq!(c.origin.container_id, b"ci-1");
        assert_eq!(parse_service_check(b"_sc|x|0").unwrap().status, CheckStatus::Ok);
        assert!(parse_service_check(b"_sc|x|4").unwrap_err().contains("status"));
        assert!(parse_service_check(b"_sc||0").unwrap_err().contains("name"));
        assert!(parse_service_check(b"_sc|x").unwrap_err().contains("no status"));
    }
}
