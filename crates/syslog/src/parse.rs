//! Lenient parsing of RFC 5424 and RFC 3164 messages.
//!
//! RFC 5424 (`<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG`) is parsed strictly
//! enough to take its fields (`-` is "none", structured data with `\"`, `\\`, `\]` escapes, a
//! UTF-8 BOM before the message dropped). Anything else is read as RFC 3164 and its common
//! variants: no PRI; `Mmm dd hh:mm:ss`, with a year (`Mmm dd yyyy hh:mm:ss`), milliseconds or a
//! trailing `:`; an ISO 8601 timestamp; no timestamp; no hostname; Cisco sequence numbers
//! (`<189>123: `) and `%FACILITY-SEV-MNEMONIC:` tags; `app[pid]:` tags. A message that breaks
//! the rules it claims (a bad PRI, bad structured data) is kept whole with `parse_error` set —
//! never dropped.

/// Which grammar a message was read with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// RFC 5424.
    Rfc5424,
    /// RFC 3164 or a variant of it.
    #[default]
    Rfc3164,
}

use std::borrow::Cow;

/// A text field: borrowed from the input when it is valid UTF-8 as it stands (the common
/// case, and no allocation), owned when bytes had to be replaced or unescaped.
pub type Text<'a> = Cow<'a, str>;

/// One structured-data element: `[id name="value" ...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdElement<'a> {
    /// SD-ID.
    pub id: Text<'a>,
    /// Parameters, in order, unescaped.
    pub params: Vec<(Text<'a>, Text<'a>)>,
}

/// A parsed message, borrowing from its input. Text fields are UTF-8 (invalid bytes
/// replaced).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Record<'a> {
    /// Grammar used.
    pub format: Format,
    /// Facility (PRI / 8), if there was a PRI.
    pub facility: Option<u8>,
    /// Severity (PRI % 8).
    pub severity: Option<u8>,
    /// As given (RFC 5424), or as RFC 3339 (RFC 3164: the year added when missing, the zone's
    /// offset always: a known abbreviation, else the configured zone).
    pub timestamp: Option<Text<'a>>,
    /// HOSTNAME.
    pub hostname: Option<Text<'a>>,
    /// APP-NAME, or the RFC 3164 tag's program.
    pub app_name: Option<Text<'a>>,
    /// PROCID, or the tag's `[pid]`.
    pub procid: Option<Text<'a>>,
    /// MSGID, or a Cisco mnemonic (`LINK-3-UPDOWN`).
    pub msgid: Option<Text<'a>>,
    /// RFC 5424 structured data.
    pub structured_data: Vec<SdElement<'a>>,
    /// The message (the whole input when it could not be parsed).
    pub message: Text<'a>,
    /// Why it could not be parsed, if so.
    pub parse_error: Option<String>,
}

/// What the parser needs to know of the present: RFC 3164 timestamps have no year and
/// usually no zone.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// The current year, in the configured zone.
    pub year: i32,
    /// The current month (1–12): a December message read in January belongs to last year.
    pub month: u32,
    /// The configured zone's offset from UTC now, in minutes: an RFC 3164 time without a zone
    /// is read in it (messages are read as they are sent, so the offset in force now is the
    /// one their senders used, but for the hour around a daylight-saving change).
    pub offset_minutes: i32,
}

/// Parses one message (a frame, or a datagram without its trailing newline).
pub fn parse(input: &[u8], now: Now) -> Record<'_> {
    let input = trim_end(input);
    let src = Src { bytes: input, whole: std::str::from_utf8(input).ok(), now };
    let (pri, rest) = match pri(input) {
        Ok(p) => p,
        Err(why) => return src.unparsed(input, why),
    };
    // No PRI and not text (control bytes, invalid UTF-8): noise, not a message. Kept, flagged.
    if pri.is_none() && (src.whole.is_none() || rest.iter().any(|b| *b < 0x20 && *b != b'\t')) {
        return src.unparsed(input, "no PRI, and not text");
    }
    let (facility, severity) = match pri {
        Some(p) => (Some((p / 8) as u8), Some((p % 8) as u8)),
        None => (None, None),
    };
    let mut record = if let Some(after) = rest.strip_prefix(b"1 ") {
        match src.rfc5424(after) {
            Ok(r) => r,
            Err(why) => return Record { facility, severity, ..src.unparsed(input, why) },
        }
    } else {
        src.rfc3164(rest)
    };
    record.facility = facility;
    record.severity = severity;
    record
}

fn trim_end(mut s: &[u8]) -> &[u8] {
    while let Some((&last, init)) = s.split_last() {
        if matches!(last, b'\n' | b'\r' | b'\0') {
            s = init;
        } else {
            break;
        }
    }
    s
}

fn text(b: &[u8]) -> Text<'_> {
    // `from_utf8` is the fast check; the lossy path only runs on invalid input.
    match std::str::from_utf8(b) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => Cow::Owned(String::from_utf8_lossy(b).into_owned()),
    }
}

/// One message being parsed. The input is checked for UTF-8 once; when it is valid, every
/// field (a sub-slice cut at ASCII delimiters) is borrowed as text without checking it again.
struct Src<'a> {
    bytes: &'a [u8],
    whole: Option<&'a str>,
    now: Now,
}

impl<'a> Src<'a> {
    fn text(&self, b: &'a [u8]) -> Text<'a> {
        if let Some(whole) = self.whole {
            let start = (b.as_ptr() as usize).wrapping_sub(self.bytes.as_ptr() as usize);
            if let Some(s) = whole.get(start..start.wrapping_add(b.len())) {
                return Cow::Borrowed(s);
            }
        }
        text(b)
    }

    fn unparsed(&self, input: &'a [u8], why: &str) -> Record<'a> {
        Record { message: self.text(input), parse_error: Some(why.to_string()), ..Record::default() }
    }

    fn nil(&self, f: &'a [u8]) -> Option<Text<'a>> {
        (f != b"-").then(|| self.text(f))
    }

    fn rfc5424(&self, s: &'a [u8]) -> Result<Record<'a>, &'static str> {
        let (timestamp, s) = field(s).ok_or("RFC 5424 header cut short")?;
        let (hostname, s) = field(s).ok_or("RFC 5424 header cut short")?;
        let (app_name, s) = field(s).ok_or("RFC 5424 header cut short")?;
        let (procid, s) = field(s).ok_or("RFC 5424 header cut short")?;
        // MSGID may be the last field when there is neither SD nor message.
        let (msgid, s) = field(s).unwrap_or((s, &[]));
        if timestamp != b"-" && !looks_like_rfc3339(timestamp) {
            return Err("RFC 5424 timestamp is not RFC 3339");
        }
        if timestamp != b"-" && !real_date(timestamp) {
            return Err("RFC 5424 timestamp is not a real date and time");
        }
        let (structured_data, s) = self.structured_data(s)?;
        let msg = s.strip_prefix(b" ").unwrap_or(s);
        let msg = msg.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(msg);
        Ok(Record {
            format: Format::Rfc5424,
            timestamp: self.nil(timestamp),
            hostname: self.nil(hostname),
            app_name: self.nil(app_name),
            procid: self.nil(procid),
            msgid: self.nil(msgid),
            structured_data,
            message: self.text(msg),
            ..Record::default()
        })
    }

    /// `-`, or `[...]` elements; returns them and what follows.
    fn structured_data(&self, s: &'a [u8]) -> Result<(Vec<SdElement<'a>>, &'a [u8]), &'static str> {
        if s.is_empty() {
            return Ok((Vec::new(), s));
        }
        if let Some(rest) = s.strip_prefix(b"-") {
            return Ok((Vec::new(), rest));
        }
        let mut out = Vec::new();
        let mut s = s;
        while let Some(rest) = s.strip_prefix(b"[") {
            let id_end = memchr::memchr2(b' ', b']', rest).ok_or("unterminated structured data")?;
            if id_end == 0 {
                return Err("structured data element without an id");
            }
            let mut element = SdElement { id: self.text(&rest[..id_end]), params: Vec::new() };
            let mut r = &rest[id_end..];
            loop {
                match r.first() {
                    Some(b']') => {
                        r = &r[1..];
                        break;
                    }
                    Some(b' ') => {
                        r = &r[1..];
                        let eq = memchr::memchr(b'=', r).ok_or("structured data parameter without '='")?;
                        let name = &r[..eq];
                        if name.is_empty() || name.iter().any(|b| matches!(b, b' ' | b']' | b'"')) {
                            return Err("bad structured data parameter name");
                        }
                        r = r[eq + 1..].strip_prefix(b"\"").ok_or("structured data value without '\"'")?;
                        // The value up to its closing quote; unescaped only if it has escapes.
                        let mut escaped = false;
                        let mut i = 0;
                        loop {
                            // The next quote or backslash (memchr: values run to tens of bytes).
                            i += memchr::memchr2(b'"', b'\\', &r[i..]).ok_or("unterminated structured data value")?;
                            match r.get(i) {
                                Some(b'\\') if matches!(r.get(i + 1), Some(b'"' | b'\\' | b']')) => {
                                    escaped = true;
                                    i += 2;
                                }
                                Some(b'"') => break,
                                _ => i += 1,
                            }
                        }
                        let value =
                            if escaped { Cow::Owned(unescape(&r[..i]).into_owned()) } else { self.text(&r[..i]) };
                        element.params.push((self.text(name), value));
                        r = &r[i + 1..];
                    }
                    _ => return Err("malformed structured data"),
                }
            }
            out.push(element);
            s = r;
        }
        Ok((out, s))
    }

    /// `hh:mm:ss` plus optional `.fraction`; returns the text and the rest.
    fn clock(&self, s: &'a [u8]) -> Option<(Text<'a>, &'a [u8])> {
        if s.len() < 8 || s[2] != b':' || s[5] != b':' {
            return None;
        }
        let (h, m, sec) = (two(&s[0..2])?, two(&s[3..5])?, two(&s[6..8])?);
        if h > 23 || m > 59 || sec > 60 {
            return None;
        }
        let mut end = 8;
        if s.get(8) == Some(&b'.') {
            end = 9 + s[9..].iter().take_while(|b| b.is_ascii_digit()).count();
        }
        Some((self.text(&s[..end]), &s[end..]))
    }

    /// An RFC 3164 timestamp in any of its variants, as ISO 8601; the rest after it (and the
    /// separator: a space, or Cisco's `: `).
    fn timestamp3164(&self, s: &'a [u8]) -> Option<(Text<'a>, &'a [u8])> {
        // ISO 8601 / RFC 3339 (rsyslog's high-precision format).
        if s.len() >= 19 && looks_like_rfc3339(s) {
            let end = s.iter().position(|b| *b == b' ').unwrap_or(s.len());
            let rest = &s[end..];
            let stamp = &s[..end];
            let text = if has_offset(stamp) {
                self.text(stamp)
            } else {
                Cow::Owned(format!("{}{}", self.text(stamp), offset(self.now.offset_minutes)))
            };
            return Some((text, rest.strip_prefix(b" ").unwrap_or(rest)));
        }
        // Cisco marks unsynchronised clocks with `*` and synchronised ones with `.`.
        let s = s.strip_prefix(b"*").or_else(|| s.strip_prefix(b".")).unwrap_or(s);
        let month = MONTHS.iter().position(|m| s.starts_with(*m))? as u32 + 1;
        if s.get(3) != Some(&b' ') {
            return None;
        }
        // The day: `dd`, ` d` (RFC 3164's padding) or `d` (a single space, as many senders write).
        let (day, after) = match (s.get(4), s.get(5)) {
            (Some(d), Some(b' ')) if d.is_ascii_digit() => (u32::from(d - b'0'), 5),
            _ => (two(s.get(4..6)?)?, 6),
        };
        if !(1..=31).contains(&day) || s.get(after) != Some(&b' ') {
            return None;
        }
        let mut r = &s[after + 1..];
        // An explicit year: `Mmm dd yyyy hh:mm:ss`.
        let year = if r.len() > 5 && r[..4].iter().all(u8::is_ascii_digit) && r[4] == b' ' {
            let y = r[..4].iter().fold(0i32, |n, d| n * 10 + i32::from(d - b'0'));
            r = &r[5..];
            y
        } else if month > self.now.month + 1 {
            self.now.year - 1 // December's message read in January.
        } else if month == 1 && self.now.month == 12 {
            self.now.year + 1 // January's message read in December: a clock ahead, or midnight.
        } else {
            self.now.year
        };
        let (time, mut r) = self.clock(r)?;
        // A zone name after the time (Cisco `UTC`, `CET`): read when known, else the time is
        // read in the configured zone (the name stays in the message's raw text).
        let mut minutes = self.now.offset_minutes;
        if r.len() > 1 && r[0] == b' ' && r[1].is_ascii_uppercase() {
            let z = r[1..].iter().take_while(|b| b.is_ascii_uppercase()).count();
            if (2..=5).contains(&z) && matches!(r.get(1 + z), Some(b' ' | b':') | None) {
                if let Some(known) = zone_offset(&r[1..1 + z]) {
                    minutes = known;
                    r = &r[1 + z..];
                }
            }
        }
        let r = r.strip_prefix(b":").unwrap_or(r);
        let r = r.strip_prefix(b" ").unwrap_or(r);
        Some((Cow::Owned(format!("{year:04}-{month:02}-{day:02}T{time}{}", offset(minutes))), r))
    }

    /// A `program[pid]:` tag with the text straight after it (`app[1]:msg`, no space): the tag
    /// (with its `:`) and the text. Only the bracketed form: `word:text` is as likely text.
    fn glued_tag(&self, s: &'a [u8]) -> Option<(Tag<'a>, &'a [u8])> {
        let token = &s[..s.iter().position(|b| *b == b' ').unwrap_or(s.len())];
        let end = token.windows(2).position(|w| w == b"]:")? + 2;
        if end == token.len() {
            return None; // `app[1]: text`: the usual form, read as a field.
        }
        Some((self.tag(&s[..end])?, &s[end..]))
    }

    fn tag(&self, token: &'a [u8]) -> Option<Tag<'a>> {
        let t = token.strip_suffix(b":")?;
        if let Some(mnemonic) = t.strip_prefix(b"%") {
            return Some((None, None, Some(self.text(mnemonic))));
        }
        if t.is_empty() || t.len() > 48 || t.iter().any(|b| *b == b'"' || *b == b'=') {
            return None;
        }
        match t.iter().position(|b| *b == b'[') {
            Some(open) if t.ends_with(b"]") => {
                Some((Some(self.text(&t[..open])), Some(self.text(&t[open + 1..t.len() - 1])), None))
            }
            Some(_) => None,
            None => Some((Some(self.text(t)), None, None)),
        }
    }

    fn rfc3164(&self, s: &'a [u8]) -> Record<'a> {
        let mut r = Record::default();
        let mut s = s;
        // Cisco sequence number: `123: ` before the timestamp.
        let digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits > 0 && s[digits..].starts_with(b": ") {
            s = &s[digits + 2..];
        }
        // Cisco with `logging origin-id`: `host: Mmm dd hh:mm:ss: ...`.
        if let Some((token, rest)) = field(s) {
            if let Some(host) = token.strip_suffix(b":").filter(|h| !h.is_empty() && !h.contains(&b'[')) {
                if let Some((ts, rest)) = self.timestamp3164(rest) {
                    r.hostname = Some(self.text(host));
                    r.timestamp = Some(ts);
                    s = rest;
                }
            }
        }
        if r.timestamp.is_none() {
            if let Some((ts, rest)) = self.timestamp3164(s) {
                r.timestamp = Some(ts);
                s = rest;
            }
        }
        // Hostname, unless the next token is already the tag.
        if let Some(((app, pid, mnemonic), rest)) = self.glued_tag(s) {
            (r.app_name, r.procid, r.msgid) = (app, pid, mnemonic);
            r.message = self.text(rest);
            return r;
        }
        if let Some((token, rest)) = field(s) {
            match self.tag(token) {
                Some((app, pid, mnemonic)) => {
                    (r.app_name, r.procid, r.msgid) = (app, pid, mnemonic);
                    s = rest;
                }
                None if r.timestamp.is_some()
                    && r.hostname.is_none()
                    && !token.is_empty()
                    && !token.contains(&b':') =>
                {
                    r.hostname = Some(self.text(token));
                    s = rest;
                    if let Some(((app, pid, mnemonic), rest)) = self.glued_tag(s) {
                        (r.app_name, r.procid, r.msgid) = (app, pid, mnemonic);
                        s = rest;
                    } else if let Some((t, rest)) = field(s) {
                        if let Some((app, pid, mnemonic)) = self.tag(t) {
                            (r.app_name, r.procid, r.msgid) = (app, pid, mnemonic);
                            s = rest;
                        }
                    }
                }
                None => {}
            }
        }
        r.message = self.text(s);
        r
    }
}

/// `<N>` with N in 0..=191 (no leading zeros but `<0>`); `None` when there is no `<`.
fn pri(input: &[u8]) -> Result<(Option<u32>, &[u8]), &'static str> {
    let Some(rest) = input.strip_prefix(b"<") else { return Ok((None, input)) };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if !(1..=3).contains(&digits) || rest.get(digits) != Some(&b'>') || (digits > 1 && rest[0] == b'0') {
        return Err("bad PRI");
    }
    let value = rest[..digits].iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
    if value > 191 {
        return Err("PRI above 191");
    }
    Ok((Some(value), &rest[digits + 1..]))
}

/// Splits off the next space-separated field.
fn field(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = memchr::memchr(b' ', s)?;
    Some((&s[..end], &s[end + 1..]))
}

fn looks_like_rfc3339(t: &[u8]) -> bool {
    t.len() >= 19
        && t[..4].iter().all(u8::is_ascii_digit)
        && t[4] == b'-'
        && t[7] == b'-'
        && (t[10] == b'T' || t[10] == b't')
        && t[13] == b':'
        && t[16] == b':'
}

/// Whether an RFC 3339 time names a real date and time (month 1–12, a day the month has,
/// hours 0–23, minutes 0–59, seconds 0–60 for a leap second).
fn real_date(t: &[u8]) -> bool {
    let num = |r: std::ops::Range<usize>| {
        t.get(r)
            .filter(|d| d.iter().all(u8::is_ascii_digit))
            .map(|d| d.iter().fold(0u32, |n, b| n * 10 + u32::from(b - b'0')))
    };
    let (Some(y), Some(mo), Some(d), Some(h), Some(mi), Some(sec)) =
        (num(0..4), num(5..7), num(8..10), num(11..13), num(14..16), num(17..19))
    else {
        return false;
    };
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let days = match mo {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&d) && h <= 23 && mi <= 59 && sec <= 60
}

/// A structured-data value without its `\"`, `\\`, `\]` escapes.
fn unescape(raw: &[u8]) -> Text<'static> {
    let mut value = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'\\' && matches!(raw.get(i + 1), Some(b'"' | b'\\' | b']')) {
            i += 1;
        }
        value.push(raw[i]);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&value).into_owned())
}

const MONTHS: [&[u8; 3]; 12] =
    [b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"];

/// `+hh:mm` / `-hh:mm` for an offset in minutes.
fn offset(minutes: i32) -> String {
    let sign = if minutes < 0 { '-' } else { '+' };
    let m = minutes.unsigned_abs();
    format!("{sign}{:02}:{:02}", m / 60, m % 60)
}

/// Whether an ISO 8601 time ends with its zone (`Z`, `+hh:mm`, `-hhmm`).
fn has_offset(stamp: &[u8]) -> bool {
    let Some(t) = stamp.iter().position(|b| *b == b'T' || *b == b' ') else { return false };
    let time = &stamp[t + 1..];
    time.ends_with(b"Z") || time.ends_with(b"z") || time.iter().any(|b| *b == b'+' || *b == b'-')
}

/// Zone abbreviations network devices print after the time, as offsets in minutes. Where an
/// abbreviation is ambiguous the common reading is taken: `CST` is US Central (not China),
/// `IST` India (not Ireland), `BST` British Summer Time.
fn zone_offset(name: &[u8]) -> Option<i32> {
    Some(match name {
        b"UTC" | b"GMT" | b"UT" | b"Z" | b"WET" => 0,
        b"BST" | b"WEST" | b"CET" | b"MET" => 60,
        b"CEST" | b"MEST" | b"EET" | b"SAST" => 120,
        b"EEST" | b"MSK" => 180,
        b"IST" => 330,
        b"SGT" | b"HKT" | b"AWST" => 480,
        b"JST" | b"KST" => 540,
        b"ACST" => 570,
        b"AEST" => 600,
        b"AEDT" => 660,
        b"NZST" => 720,
        b"NZDT" => 780,
        b"EDT" | b"AST" => -240,
        b"EST" | b"CDT" => -300,
        b"CST" | b"MDT" => -360,
        b"MST" | b"PDT" => -420,
        b"PST" | b"AKDT" => -480,
        b"AKST" => -540,
        b"HST" => -600,
        _ => return None,
    })
}

fn two(b: &[u8]) -> Option<u32> {
    match b {
        [a, b] if a.is_ascii_digit() && b.is_ascii_digit() => Some(u32::from(a - b'0') * 10 + u32::from(b - b'0')),
        [b' ', b] if b.is_ascii_digit() => Some(u32::from(b - b'0')),
        _ => None,
    }
}

/// `program[pid]:` or `program:`; a Cisco `%FAC-SEV-MNEMONIC:`.
/// A tag's program, pid and Cisco mnemonic.
type Tag<'a> = (Option<Text<'a>>, Option<Text<'a>>, Option<Text<'a>>);

#[cfg(test)]
mod tests;
