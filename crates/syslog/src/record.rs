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

use serde::Serialize;

use crate::parse::Record;

/// Where and when a message came in.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    /// RFC 3339 receive time.
    pub at: &'a str,
    /// Sender `ip:port`.
    pub source: &'a str,
    /// Listener kind (`syslog_udp`, `syslog_tcp`, `syslog_tls`).
    pub listener: &'a str,
    /// `udp`, `tcp` or `tls`.
    pub transport: &'a str,
}

/// Facility names, as rsyslog and syslog-ng print them.
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
    "security",
    "console",
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

#[derive(Serialize)]
struct Line<'a> {
    received_at: &'a str,
    source: &'a str,
    listener: &'a str,
    transport: &'a str,
    facility: Option<&'static str>,
    severity: Option<&'static str>,
    timestamp: Option<&'a str>,
    hostname: Option<&'a str>,
    app_name: Option<&'a str>,
    procid: Option<&'a str>,
    msgid: Option<&'a str>,
    structured_data: std::collections::BTreeMap<&'a str, std::collections::BTreeMap<&'a str, &'a str>>,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw: Option<std::borrow::Cow<'a, str>>,
    parse_error: Option<&'a str>,
}

/// Appends the record's JSON line (with its `\n`) to `out`.
pub fn write_json(record: &Record, received: &Received<'_>, raw: Option<&[u8]>, out: &mut Vec<u8>) {
    let line = Line {
        received_at: received.at,
        source: received.source,
        listener: received.listener,
        transport: received.transport,
        facility: record.facility.and_then(|f| FACILITIES.get(usize::from(f)).copied()),
        severity: record.severity.and_then(|s| SEVERITIES.get(usize::from(s)).copied()),
        timestamp: record.timestamp.as_deref(),
        hostname: record.hostname.as_deref(),
        app_name: record.app_name.as_deref(),
        procid: record.procid.as_deref(),
        msgid: record.msgid.as_deref(),
        structured_data: record
            .structured_data
            .iter()
            .map(|e| (e.id.as_str(), e.params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()))
            .collect(),
        message: &record.message,
        raw: raw.map(String::from_utf8_lossy),
        parse_error: record.parse_error.as_deref(),
    };
    // Serialising these types into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &line);
    out.push(b'\n');
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
        let (year, month, ..) = civil(unix_secs);
        crate::parse::Now { year: year as i32, month }
    }
}

#[cfg(test)]
mod tests {
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
        let record = parse(msg, Now { year: 2026, month: 1 });
        let received = Received {
            at: "2026-11-22T10:00:00.000Z",
            source: "127.0.0.1:5000",
            listener: "syslog_tcp",
            transport: "tcp",
        };
        let mut out = Vec::new();
        write_json(&record, &received, Some(msg), &mut out);
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["facility"], "local4");
        assert_eq!(v["severity"], "notice");
        assert_eq!(v["structured_data"]["ex@1"]["b"], "x\"y");
        assert_eq!(v["message"], "\"quoted\" and \\ back");
        assert_eq!(v["msgid"], "ID47");
        assert_eq!(v["procid"], serde_json::Value::Null);
        assert_eq!(v["raw"].as_str().unwrap().as_bytes(), msg);
        assert_eq!(v["parse_error"], serde_json::Value::Null);
        let bad = parse(b"<999>x", Now { year: 2026, month: 1 });
        let mut out = Vec::new();
        write_json(&bad, &received, None, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["message"], "<999>x");
        assert!(v["parse_error"].is_string());
        assert!(v.get("raw").is_none());
    }
}
