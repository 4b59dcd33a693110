//! The output record: one JSON object per message (a line of `floodgate-syslog.jsonl`).
//!
//! ```json
//! {"received_at":"2026-11-22T10:05:01.123Z","source":"10.0.0.7:51514","listener":"syslog_tcp",
//!  "transport":"tcp","facility":"auth","severity":"info","timestamp":"2026-11-22T10:05:01",
//!  "hostname":"web-1","app_name":"sshd","procid":"99","msgid":null,"structured_data":{},
//!  "message":"Accepted publickey","parse_error":null}
//! ```
//!
//! `structured_data` maps each SD-ID to its parameters (a repeated parameter name keeps its
//! last value); `raw` (the message as received) is added when configured.

use crate::parse::Record;

/// The process that sent a message on a Unix socket, from the kernel's credentials.
#[derive(Debug, Clone, Copy)]
pub struct Peer<'a> {
    /// Process id.
    pub pid: i32,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Its program name (`/proc/PID/comm`), empty when it has already exited.
    pub program: &'a str,
}

/// Where and when a message came in.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    /// RFC 3339 receive time.
    pub at: &'a str,
    /// Sender `ip:port`.
    pub source: &'a str,
    /// Listener kind (`syslog_udp`, `syslog_tcp`, `syslog_tls`).
    pub listener: &'a str,
    /// The sending process as the kernel saw it (Unix sockets), beside the `procid` the
    /// message claims.
    pub peer: Option<Peer<'a>>,
    /// `udp`, `tcp` or `tls`.
    pub transport: &'a str,
}

/// Facility names, as rsyslog and syslog-ng print them; 13 and 14 by RFC 5424's table ("log
/// audit", "log alert": on Linux `security` is an old name of `auth`, so it would mislead).
pub const FACILITIES: [&str; 24] = [
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "audit",
    "alert",
    "solaris-cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
];

/// Severity names.
pub const SEVERITIES: [&str; 8] = ["emerg", "alert", "crit", "err", "warning", "notice", "info", "debug"];

/// Appends the record's JSON line (with its `\n`) to `out`.
///
/// Written by hand rather than through serde: this runs once per message on the hot path, and
/// a direct writer with a word-at-a-time escape scan and no intermediate maps is several
/// times cheaper (measured with the syslog benchmark).
pub fn write_json(record: &Record, received: &Received<'_>, raw: Option<&[u8]>, out: &mut Vec<u8>) {
    let start = out.len();
    json_prefix(received, out);
    let prefix = out[start..].to_vec();
    out.truncate(start);
    write_json_after(&prefix, record, raw, out);
}

/// The part of every record that depends only on where and when it came in:
/// `{"received_at":...,"transport":"..."` (no closing brace). A listener renders it once a
/// batch and passes it to [`write_json_after`].
pub fn json_prefix(received: &Received<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"received_at\":");
    json_str(out, received.at);
    out.extend_from_slice(b",\"source\":");
    json_str(out, received.source);
    out.extend_from_slice(b",\"listener\":");
    json_str(out, received.listener);
    out.extend_from_slice(b",\"transport\":");
    json_str(out, received.transport);
    if let Some(p) = received.peer {
        out.extend_from_slice(
            format!(",\"peer_pid\":{},\"peer_uid\":{},\"peer_gid\":{}", p.pid, p.uid, p.gid).as_bytes(),
        );
        out.extend_from_slice(b",\"peer_program\":");
        json_str(out, p.program);
    }
}

/// Appends a record's JSON line given its rendered [`json_prefix`].
pub fn write_json_after(prefix: &[u8], record: &Record, raw: Option<&[u8]>, out: &mut Vec<u8>) {
    out.extend_from_slice(prefix);
    out.extend_from_slice(b",\"facility\":");
    json_name(out, record.facility.and_then(|f| FACILITIES.get(usize::from(f)).copied()));
    out.extend_from_slice(b",\"severity\":");
    json_name(out, record.severity.and_then(|s| SEVERITIES.get(usize::from(s)).copied()));
    // The numbers too: a store filters and sorts on them without a name table.
    for (key, code) in [(&b",\"facility_code\":"[..], record.facility), (b",\"severity_code\":", record.severity)] {
        out.extend_from_slice(key);
        match code {
            // itoa: no allocation (`to_string` made two a message).
            Some(n) => out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
            None => out.extend_from_slice(b"null"),
        }
    }
    out.extend_from_slice(b",\"timestamp\":");
    json_opt(out, record.timestamp.as_deref());
    out.extend_from_slice(b",\"hostname\":");
    json_opt(out, record.hostname.as_deref());
    out.extend_from_slice(b",\"app_name\":");
    json_opt(out, record.app_name.as_deref());
    out.extend_from_slice(b",\"procid\":");
    json_opt(out, record.procid.as_deref());
    out.extend_from_slice(b",\"msgid\":");
    json_opt(out, record.msgid.as_deref());
    out.extend_from_slice(b",\"structured_data\":");
    structured_data(out, &record.structured_data);
    out.extend_from_slice(b",\"message\":");
    json_str(out, &record.message);
    if let Some(raw) = raw {
        out.extend_from_slice(b",\"raw\":");
        json_str(out, &String::from_utf8_lossy(raw));
    }
    out.extend_from_slice(b",\"parse_error\":");
    json_opt(out, record.parse_error.as_deref());
    out.extend_from_slice(b"}\n");
}

/// Elements and parameters past this many are de-duplicated through a map (a repeated
/// SD-ID or parameter name keeps its last value either way).
const SD_LINEAR: usize = 16;

/// `{"id":{"name":"value",...},...}`; a repeated id or name keeps its last value.
fn structured_data(out: &mut Vec<u8>, elements: &[crate::SdElement]) {
    if elements.len() > SD_LINEAR || elements.iter().any(|e| e.params.len() > SD_LINEAR) {
        use std::collections::BTreeMap;
        let map: BTreeMap<&str, BTreeMap<&str, &str>> =
            elements.iter().map(|e| (&*e.id, e.params.iter().map(|(k, v)| (&**k, &**v)).collect())).collect();
        out.push(b'{');
        for (i, (id, params)) in map.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json_str(out, id);
            out.extend_from_slice(b":{");
            for (j, (k, v)) in params.iter().enumerate() {
                if j > 0 {
                    out.push(b',');
                }
                json_str(out, k);
                out.push(b':');
                json_str(out, v);
            }
            out.push(b'}');
        }
        out.push(b'}');
        return;
    }
    out.push(b'{');
    let mut first = true;
    for (i, e) in elements.iter().enumerate() {
        if elements[i + 1..].iter().any(|later| later.id == e.id) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        json_str(out, &e.id);
        out.extend_from_slice(b":{");
        let mut first_param = true;
        for (j, (k, v)) in e.params.iter().enumerate() {
            if e.params[j + 1..].iter().any(|(later, _)| later == k) {
                continue;
            }
            if !first_param {
                out.push(b',');
            }
            first_param = false;
            json_str(out, k);
            out.push(b':');
            json_str(out, v);
        }
        out.push(b'}');
    }
    out.push(b'}');
}

/// One of the constant names above (nothing in them to escape), or `null`.
fn json_name(out: &mut Vec<u8>, name: Option<&'static str>) {
    match name {
        Some(n) => {
            out.push(b'"');
            out.extend_from_slice(n.as_bytes());
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
}

fn json_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// Bytes a JSON string must escape: `"`, `\` and the control characters.
const ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// Whether any of the 8 bytes of `w` must be escaped (a control character, `"` or `\\`):
/// the classic has-zero-byte bit tricks, so clean text is checked a word at a time.
fn word_needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    below_space | has_zero(w ^ (ONES * u64::from(b'"'))) | has_zero(w ^ (ONES * u64::from(b'\\'))) != 0
}

/// Whether `b` has nothing a JSON string must escape, a word at a time (the last word
/// overlapping the one before it; strings under 8 bytes as one word, see [`short_word`]).
#[inline]
fn is_clean(b: &[u8]) -> bool {
    let Some(last) = b.last_chunk::<8>() else { return !word_needs_escape(short_word(b)) };
    let (words, _) = b.as_chunks::<8>();
    // Accumulated without a branch a word: fields are short, and almost all are clean.
    let dirty = words.iter().fold(word_needs_escape(u64::from_le_bytes(*last)), |dirty, w| {
        dirty | word_needs_escape(u64::from_le_bytes(*w))
    });
    !dirty
}

/// A string under 8 bytes as one word that holds each of its bytes at least once (4 to 7:
/// two overlapping halves; 1 to 3: the first, middle and last bytes), padded with `a`. Most
/// fields are this short (an app name, a process id, structured-data names and values).
#[inline]
fn short_word(b: &[u8]) -> u64 {
    if let (Some(head), Some(tail)) = (b.first_chunk::<4>(), b.last_chunk::<4>()) {
        return u64::from(u32::from_le_bytes(*head)) | u64::from(u32::from_le_bytes(*tail)) << 32;
    }
    match b {
        [] => u64::from_le_bytes([b'a'; 8]),
        [first, .., last] => u64::from_le_bytes([*first, b[b.len() / 2], *last, b'a', b'a', b'a', b'a', b'a']),
        [only] => u64::from_le_bytes([*only, b'a', b'a', b'a', b'a', b'a', b'a', b'a']),
    }
}

/// A JSON string: a clean one (almost all) copied whole, others through [`json_escaped`].
#[inline]
fn json_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    if !is_clean(bytes) {
        return json_escaped(out, bytes);
    }
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    out.extend_from_slice(bytes);
    out.push(b'"');
}

/// A JSON string with something to escape: unescaped runs copied whole.
#[inline(never)]
fn json_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    let mut i = 0;
    let clean = |w: &[u8]| w.first_chunk::<8>().is_some_and(|w| !word_needs_escape(u64::from_le_bytes(*w)));
    while i < bytes.len() {
        // A word at a time; the last short stretch as the string's last word (it overlaps
        // bytes already found clean), so short fields skip the byte loop too.
        let take = (bytes.len() - i).min(8);
        if clean(&bytes[i..]) || (take < 8 && clean(&bytes[bytes.len().saturating_sub(8)..])) {
            i += take;
            continue;
        }
        let end = i + take;
        while i < end {
            let b = bytes[i];
            if ESCAPE[usize::from(b)] {
                out.extend_from_slice(&bytes[start..i]);
                match b {
                    b'"' => out.extend_from_slice(b"\\\""),
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    b'\r' => out.extend_from_slice(b"\\r"),
                    b'\t' => out.extend_from_slice(b"\\t"),
                    _ => out.extend_from_slice(&[
                        b'\\',
                        b'u',
                        b'0',
                        b'0',
                        HEX[usize::from(b >> 4)],
                        HEX[usize::from(b & 15)],
                    ]),
                }
                start = i + 1;
            }
            i += 1;
        }
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Year, month, day, hour, minute, second of a Unix time (UTC, proleptic Gregorian).
fn civil(unix_secs: i64) -> (i64, u32, u32, u32, u32, u32) {
    // Howard Hinnant's days-to-civil; no calendar crate needed for one direction in UTC.
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400) as u32;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, secs / 3600, secs / 60 % 60, secs % 60)
}

/// `received_at` for a Unix time in milliseconds: RFC 3339, UTC, milliseconds
/// (`2026-11-22T10:05:01.123Z`).
pub fn rfc3339_millis(unix_millis: i64) -> String {
    let (y, mo, d, h, mi, s) = civil(unix_millis.div_euclid(1000));
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:03}Z", unix_millis.rem_euclid(1000))
}

impl crate::parse::Now {
    /// The parser's idea of the present for a Unix time (UTC).
    pub fn at_unix(unix_secs: i64) -> crate::parse::Now {
        Self::at_unix_in(unix_secs, 0)
    }

    /// The present at `unix_secs` in a zone `offset_minutes` from UTC.
    pub fn at_unix_in(unix_secs: i64, offset_minutes: i32) -> crate::parse::Now {
        let (year, month, ..) = civil(unix_secs + i64::from(offset_minutes) * 60);
        crate::parse::Now { year: year as i32, month, offset_minutes }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn strings_escape_like_serde_json() {
        let samples = [
            "plain",
            "a much longer plain string, well past eight bytes",
            "0123456\"89abcdef\\x",
            "q\"uote",
            "back\\slash",
            "nl\ncr\rtab\t",
            "\u{1}\u{1f}\u{7f}",
            "ünïcödé \u{2028}",
            "",
        ];
        for s in samples {
            let mut out = Vec::new();
            json_str(&mut out, s);
            assert_eq!(serde_json::from_slice::<String>(&out).unwrap(), s);
            assert_eq!(out, serde_json::to_vec(s).unwrap());
        }
    }

    proptest::proptest! {
        /// The word-at-a-time escaper (short tails padded) against serde_json, on strings
        /// made of the bytes it must tell apart, at every length and position.
        #[test]
        fn any_string_escapes_like_serde_json(s in "[a \"\\\\\\n\\t\u{1}\u{1f}\u{7f}é\u{2028}]{0,40}") {
            let mut out = Vec::new();
            json_str(&mut out, &s);
            proptest::prop_assert_eq!(out, serde_json::to_vec(&s).unwrap());
        }
    }

    #[test]
    fn repeated_ids_and_names_keep_the_last_value() {
        let msg = br#"<13>1 - h a - - [x a="1" a="2" b="3"][y c="4"][x a="5"] m"#;
        let record = parse(msg, Now { year: 2026, month: 1, offset_minutes: 0 });
        let received = Received { at: "t", source: "s", listener: "l", transport: "udp", peer: None };
        let mut out = Vec::new();
        write_json(&record, &received, None, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["structured_data"], serde_json::json!({"x": {"a": "5"}, "y": {"c": "4"}}));
        let many: String = (0..40).map(|i| format!(" p{}=\"{i}\"", i % 20)).collect();
        let msg = format!("<13>1 - h a - - [x{many}] m");
        let record = parse(msg.as_bytes(), Now { year: 2026, month: 1, offset_minutes: 0 });
        let mut out = Vec::new();
        write_json(&record, &received, None, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["structured_data"]["x"]["p3"], "23");
        assert_eq!(v["structured_data"]["x"].as_object().unwrap().len(), 20);
    }

    #[test]
    fn received_at_is_rfc3339_utc() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(1_795_341_901_123), "2026-11-22T10:05:01.123Z");
        assert_eq!(rfc3339_millis(951_782_400_000), "2000-02-29T00:00:00.000Z");
        let now = crate::parse::Now::at_unix(1_795_341_901);
        assert_eq!((now.year, now.month), (2026, 11));
    }

    use super::*;
    use crate::parse::{parse, Now};

    #[test]
    fn one_json_line_per_record() {
        let msg = br#"<165>1 2003-10-11T22:14:15.003Z host app - ID47 [ex@1 a="1" b="x\"y"] "quoted" and \ back"#;
        let record = parse(msg, Now { year: 2026, month: 1, offset_minutes: 0 });
        let received = Received {
            at: "2026-11-22T10:00:00.000Z",
            source: "127.0.0.1:5000",
            listener: "syslog_tcp",
            transport: "tcp",
            peer: None,
        };
        let mut out = Vec::new();
        write_json(&record, &received, Some(msg), &mut out);
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["facility"], "local4");
        assert_eq!(v["severity"], "notice");
        assert_eq!((v["facility_code"].as_u64(), v["severity_code"].as_u64()), (Some(20), Some(5)));
        // RFC 5424's names for 13 and 14 (not `security`, an old Linux name of `auth`).
        assert_eq!((FACILITIES[13], FACILITIES[14]), ("audit", "alert"));
        assert_eq!(v["structured_data"]["ex@1"]["b"], "x\"y");
        assert_eq!(v["message"], "\"quoted\" and \\ back");
        assert_eq!(v["msgid"], "ID47");
        assert_eq!(v["procid"], serde_json::Value::Null);
        assert_eq!(v["raw"].as_str().unwrap().as_bytes(), msg);
        assert_eq!(v["parse_error"], serde_json::Value::Null);
        let bad = parse(b"<999>x", Now { year: 2026, month: 1, offset_minutes: 0 });
        let mut out = Vec::new();
        write_json(&bad, &received, None, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["message"], "<999>x");
        assert!(v["parse_error"].is_string());
        assert!(v.get("raw").is_none());
    }
}
