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

#[cfg(test)]
mod tests {
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
