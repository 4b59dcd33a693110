//! floodgate's records (one JSON object each: a syslog message, a DogStatsD event or service
//! check) as OTLP log records, as the OpenTelemetry log data model and its syslog mapping
//! define them:
//!
//! - syslog: the message's own time is `time_unix_nano`, the receive time
//!   `observed_time_unix_nano`; the severity becomes a `SeverityNumber` (emerg FATAL, alert
//!   ERROR3, crit ERROR2, err ERROR, warning WARN, notice INFO2, info INFO, debug DEBUG) with its
//!   name as `severity_text`; the message is the body; `HOSTNAME` and `APP-NAME` are the
//!   resource's `host.name` and `service.name`; facility, procid, msgid and each
//!   structured-data parameter are `syslog.*` attributes.
//! - DogStatsD events: the text is the body, the title, priority and alert type are
//!   attributes, the alert type the severity (error ERROR, warning WARN, info and success
//!   INFO); service checks: the message (or the check's name) is the body, the status the
//!   severity (OK INFO, WARNING WARN, CRITICAL ERROR, UNKNOWN unspecified); tags are attributes.
//! - Where it came from (source address, listener, transport, the sending process) is kept as
//!   `floodgate.*` attributes.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::proto::{self, AnyValue, KeyValue, LogRecord};

/// The resource a record belongs to: (`host.name`, `service.name`), each possibly empty.
pub type ResourceKey = (String, String);

/// `SeverityNumber` of a syslog severity name, as the data model's syslog mapping gives it.
pub fn syslog_severity(name: &str) -> i32 {
    match name {
        "emerg" => 21,
        "alert" => 19,
        "crit" => 18,
        "err" => 17,
        "warning" => 13,
        "notice" => 10,
        "info" => 9,
        "debug" => 5,
        _ => 0,
    }
}

/// A record's JSON as a log record and the resource it belongs to; `offset_seconds` is the
/// zone of a message time written without one (RFC 3164: the receiving host's).
pub fn record(json: &Value, offset_seconds: i32) -> (ResourceKey, LogRecord) {
    let text = |k: &str| json.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    let mut log = LogRecord {
        observed_time_unix_nano: json.get("received_at").and_then(|v| time(v, 0)).unwrap_or(0),
        ..Default::default()
    };
    let mut attributes: BTreeMap<String, String> = BTreeMap::new();
    let mut put = |k: &str, v: &Value| {
        let s = match v {
            Value::Null => return,
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        attributes.insert(k.to_string(), s);
    };
    for (k, v) in
        [("source", "floodgate.source"), ("listener", "floodgate.listener"), ("transport", "floodgate.transport")]
    {
        if let Some(value) = json.get(k).filter(|v| v.as_str().is_some_and(|s| !s.is_empty())) {
            put(v, value);
        }
    }
    for k in ["peer_pid", "peer_uid", "peer_gid", "peer_program"] {
        if let Some(value) = json.get(k) {
            put(&format!("floodgate.{k}"), value);
        }
    }
    let kind = json.get("kind").and_then(Value::as_str);
    let host = text("hostname");
    let mut service = String::new();
    match kind {
        Some("event") => {
            log.time_unix_nano = json.get("timestamp").and_then(|v| time(v, 0)).unwrap_or(0);
            let alert = text("alert_type");
            log.severity_number = match alert.as_str() {
                "error" => 17,
                "warning" => 13,
                _ => 9,
            };
            log.severity_text = alert;
            log.body = Some(string(text("text")));
            for k in ["title", "priority", "aggregation_key", "source_type_name", "container_id"] {
                if let Some(v) = json.get(k) {
                    put(&format!("dogstatsd.{k}"), v);
                }
            }
            put("dogstatsd.kind", &Value::from("event"));
            tags(json, &mut attributes);
        }
        Some("service_check") => {
            log.time_unix_nano = json.get("timestamp").and_then(|v| time(v, 0)).unwrap_or(0);
            let status = json.get("status").and_then(Value::as_i64).unwrap_or(3);
            log.severity_number = match status {
                0 => 9,
                1 => 13,
                2 => 17,
                _ => 0,
            };
            log.severity_text = text("status_name");
            let message = text("message");
            log.body = Some(string(if message.is_empty() { text("check") } else { message }));
            put("dogstatsd.check", json.get("check").unwrap_or(&Value::Null));
            put("dogstatsd.container_id", json.get("container_id").unwrap_or(&Value::Null));
            put("dogstatsd.kind", &Value::from("service_check"));
            tags(json, &mut attributes);
        }
        _ => {
            log.time_unix_nano = json.get("timestamp").and_then(|v| time(v, offset_seconds)).unwrap_or(0);
            let severity = text("severity");
            log.severity_number = syslog_severity(&severity);
            log.severity_text = severity;
            log.body = Some(string(text("message")));
            service = text("app_name");
            for k in ["facility", "procid", "msgid", "raw", "parse_error"] {
                if let Some(v) = json.get(k) {
                    put(&format!("syslog.{k}"), v);
                }
            }
            if let Some(Value::Object(sd)) = json.get("structured_data") {
                for (id, params) in sd {
                    for (name, value) in params.as_object().into_iter().flatten() {
                        put(&format!("syslog.structured_data.{id}.{name}"), value);
                    }
                }
            }
        }
    }
    log.attributes = attributes.into_iter().map(|(k, v)| KeyValue::string(k, v)).collect();
    ((host, service), log)
}

/// DogStatsD tags (`["k:v", "flag"]`) as attributes (`flag` with an empty value).
fn tags(json: &Value, attributes: &mut BTreeMap<String, String>) {
    for tag in json.get("tags").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
        let (k, v) = tag.split_once(':').unwrap_or((tag, ""));
        attributes.insert(k.to_string(), v.to_string());
    }
}

fn string(s: String) -> AnyValue {
    AnyValue { value: Some(proto::any_value::Value::String(s)) }
}

/// A time as Unix nanoseconds: RFC 3339 (without an offset: `offset_seconds` from UTC), or a
/// number of Unix seconds.
fn time(v: &Value, offset_seconds: i32) -> Option<u64> {
    let nanos = match v {
        Value::Number(n) => (n.as_f64()? * 1e9) as i128,
        Value::String(s) => match s.parse::<jiff::Timestamp>() {
            Ok(t) => t.as_nanosecond(),
            Err(_) => {
                let civil: jiff::civil::DateTime = s.parse().ok()?;
                let offset = jiff::tz::Offset::from_seconds(offset_seconds).ok()?;
                offset.to_timestamp(civil).ok()?.as_nanosecond()
            }
        },
        _ => return None,
    };
    u64::try_from(nanos).ok()
}

/// Records grouped by resource, as one export request; `base` holds the resource attributes
/// every group has (the host's and agent's), a record's own host and service override them.
pub fn request(
    records: Vec<(ResourceKey, LogRecord)>,
    base: &[KeyValue],
    scope: &proto::InstrumentationScope,
) -> proto::ExportLogsServiceRequest {
    let mut groups: BTreeMap<ResourceKey, Vec<LogRecord>> = BTreeMap::new();
    for (key, log) in records {
        groups.entry(key).or_default().push(log);
    }
    let resource_logs = groups
        .into_iter()
        .map(|((host, service), log_records)| {
            let mut attributes: BTreeMap<String, KeyValue> =
                base.iter().map(|kv| (kv.key.clone(), kv.clone())).collect();
            if !host.is_empty() {
                attributes.insert("host.name".into(), KeyValue::string("host.name", host));
            }
            if !service.is_empty() {
                attributes.insert("service.name".into(), KeyValue::string("service.name", service));
            }
            proto::ResourceLogs {
                resource: Some(proto::Resource { attributes: attributes.into_values().collect() }),
                scope_logs: vec![proto::ScopeLogs { scope: Some(scope.clone()), log_records }],
            }
        })
        .collect();
    proto::ExportLogsServiceRequest { resource_logs }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr<'a>(log: &'a LogRecord, key: &str) -> Option<&'a str> {
        log.attributes.iter().find(|a| a.key == key).and_then(|a| match &a.value.as_ref()?.value {
            Some(proto::any_value::Value::String(s)) => Some(s.as_str()),
            _ => None,
        })
    }

    #[test]
    fn a_syslog_record_as_the_data_model_maps_it() {
        let json: Value = serde_json::from_str(
            r#"{"received_at":"2026-11-22T10:05:01.123Z","source":"10.0.0.7:51514","listener":"syslog_tcp",
            "transport":"tcp","facility":"auth","severity":"crit","timestamp":"2026-11-22T10:05:01+01:00",
            "hostname":"web-1","app_name":"sshd","procid":"99","msgid":null,
            "structured_data":{"origin@1":{"ip":"10.1.1.1"}},"message":"Accepted publickey","parse_error":null}"#,
        )
        .unwrap();
        let ((host, service), log) = record(&json, 0);
        assert_eq!((host.as_str(), service.as_str()), ("web-1", "sshd"));
        assert_eq!((log.severity_number, log.severity_text.as_str()), (18, "crit"));
        assert_eq!(log.time_unix_nano, 1_795_338_301_000_000_000);
        assert_eq!(log.observed_time_unix_nano, 1_795_341_901_123_000_000);
        assert_eq!(log.body, Some(string("Accepted publickey".into())));
        assert_eq!(attr(&log, "syslog.facility"), Some("auth"));
        assert_eq!(attr(&log, "syslog.procid"), Some("99"));
        assert_eq!(attr(&log, "syslog.msgid"), None, "null is left out");
        assert_eq!(attr(&log, "syslog.structured_data.origin@1.ip"), Some("10.1.1.1"));
        assert_eq!(attr(&log, "floodgate.source"), Some("10.0.0.7:51514"));
        // RFC 3164 times carry no zone: the host's.
        let json: Value = serde_json::from_str(r#"{"timestamp":"2026-11-22T10:05:01","severity":"info"}"#).unwrap();
        assert_eq!(record(&json, 3600).1.time_unix_nano, 1_795_338_301_000_000_000);
    }

    #[test]
    fn every_syslog_severity_has_its_number() {
        let names = ["debug", "info", "notice", "warning", "err", "crit", "alert", "emerg"];
        let numbers: Vec<i32> = names.iter().map(|n| syslog_severity(n)).collect();
        assert_eq!(numbers, [5, 9, 10, 13, 17, 18, 19, 21]);
    }

    #[test]
    fn events_and_service_checks() {
        let event: Value = serde_json::from_str(
            r#"{"kind":"event","title":"Deploy","text":"v2 out","timestamp":1700000000,"hostname":"h",
            "priority":"normal","alert_type":"warning","tags":["env:prod","canary"]}"#,
        )
        .unwrap();
        let ((host, _), log) = record(&event, 0);
        assert_eq!(host, "h");
        assert_eq!((log.severity_number, log.time_unix_nano), (13, 1_700_000_000_000_000_000));
        assert_eq!(log.body, Some(string("v2 out".into())));
        assert_eq!(attr(&log, "dogstatsd.title"), Some("Deploy"));
        assert_eq!((attr(&log, "env"), attr(&log, "canary")), (Some("prod"), Some("")));
        let check: Value = serde_json::from_str(
            r#"{"kind":"service_check","check":"db.up","status":2,"status_name":"CRITICAL","message":null}"#,
        )
        .unwrap();
        let (_, log) = record(&check, 0);
        assert_eq!((log.severity_number, log.severity_text.as_str()), (17, "CRITICAL"));
        assert_eq!(log.body, Some(string("db.up".into())));
    }
}
