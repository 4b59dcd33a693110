//! `[syslog] output`: where syslog records go.

use std::fmt;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

use crate::units::{size, Fsync};

/// Where syslog records go: `"stdout"`, `{ kind = "file", path = ... }`,
/// `{ kind = "forward", address = "host:port", tls = { ca = ... } }`,
/// `{ kind = "nats", url = "nats://host:4222", subject = ..., stream = ... }`, or
/// `{ kind = "otlp", endpoint = "http://host:4318" }`.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SyslogOutput {
    /// JSON lines appended to a file (reopened on SIGHUP, for logrotate).
    File {
        /// The file.
        path: std::path::PathBuf,
        /// When it is synced to disk.
        #[serde(default, skip_serializing_if = "crate::units::is_never")]
        fsync: Fsync,
    },
    /// JSON lines on standard output.
    Stdout,
    /// The messages as received, re-sent with octet counting over TCP or TLS.
    Forward(SyslogForward),
    /// Each record (JSON) published to a NATS JetStream stream, acknowledged, exactly once.
    Nats(SyslogNats),
    /// Records as OpenTelemetry log records, POSTed to an OTLP/HTTP endpoint.
    Otlp(SyslogOtlp),
}

/// The OTLP logs output.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SyslogOtlp {
    /// The endpoint's base URL (`http://127.0.0.1:4318`): records go to `{endpoint}/v1/logs`.
    pub endpoint: String,
    /// `gzip` (default) or `none`.
    #[serde(default)]
    pub compression: crate::sinks::otlp::Compression,
    /// Per-request timeout.
    #[serde(default = "default_otlp_timeout", with = "crate::units::duration")]
    pub timeout: std::time::Duration,
    /// Extra PEM CA certificates for an https endpoint (the system's are trusted too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<std::path::PathBuf>,
    /// Headers sent with every request (an API key, a tenant).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub headers: std::collections::BTreeMap<String, String>,
    /// Resource attributes every record's resource has (its own `host.name` and
    /// `service.name`, from the message, win).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub resource: std::collections::BTreeMap<String, String>,
    /// Bytes held in memory while the endpoint is down.
    #[serde(default = "default_syslog_buffer", with = "size")]
    pub buffer: u64,
    /// A file to spill to when the memory buffer is full (absent = drop, counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spill: Option<std::path::PathBuf>,
    /// Most bytes the spill file may hold; past it records are dropped and counted.
    #[serde(default = "default_syslog_spill_max", with = "size")]
    pub spill_max: u64,
    /// When the spill file is synced to disk.
    #[serde(default, skip_serializing_if = "crate::units::is_never")]
    pub fsync: Fsync,
}

fn default_otlp_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}

/// The NATS JetStream output.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SyslogNats {
    /// `nats://host:4222` (or `tls://`), several separated by commas (a cluster's members).
    pub url: String,
    /// The subject records are published on.
    pub subject: String,
    /// The stream that takes `subject`: created if missing (taking `subject`, with
    /// `replicas`). Absent: a stream must already take the subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// Replicas of a stream this creates (1, or 3 or 5 on a cluster).
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// Publishes awaiting their acknowledgement at most.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// An authentication token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// A `.creds` file (a user JWT and its NKey seed, as `nsc` writes them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<std::path::PathBuf>,
    /// An NKey seed (`SU…`) to sign in with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nkey: Option<String>,
    /// TLS to the servers (`ca`, and `cert` + `key` if they want a client certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::net::tls::ClientTls>,
    /// Bytes held in memory while NATS is unreachable.
    #[serde(default = "default_syslog_buffer", with = "size")]
    pub buffer: u64,
    /// A file to spill to when the memory buffer is full (absent = drop, counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spill: Option<std::path::PathBuf>,
    /// Most bytes the spill file may hold; past it records are dropped and counted.
    #[serde(default = "default_syslog_spill_max", with = "size")]
    pub spill_max: u64,
    /// When the spill file is synced to disk.
    #[serde(default, skip_serializing_if = "crate::units::is_never")]
    pub fsync: Fsync,
}

fn default_replicas() -> usize {
    1
}

fn default_in_flight() -> usize {
    256
}

/// The forward output.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SyslogForward {
    /// `host:port` of the syslog server.
    pub address: String,
    /// TLS to it (`ca`, and `cert` + `key` if it wants a client certificate); absent = TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::net::tls::ClientTls>,
    /// Bytes held in memory while the server is down.
    #[serde(default = "default_syslog_buffer", with = "size")]
    pub buffer: u64,
    /// A file to spill to when the memory buffer is full (absent = drop, counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spill: Option<std::path::PathBuf>,
    /// Most bytes the spill file may hold; past it messages are dropped and counted.
    #[serde(default = "default_syslog_spill_max", with = "size")]
    pub spill_max: u64,
    /// When the spill file is synced to disk.
    #[serde(default, skip_serializing_if = "crate::units::is_never")]
    pub fsync: Fsync,
}

fn default_syslog_buffer() -> u64 {
    64 << 20
}

fn default_syslog_spill_max() -> u64 {
    1 << 30
}

impl<'de> Deserialize<'de> for SyslogOutput {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
        enum Table {
            File {
                path: std::path::PathBuf,
                #[serde(default)]
                fsync: Fsync,
            },
            Stdout,
            Forward(SyslogForward),
            Nats(SyslogNats),
            Otlp(SyslogOtlp),
        }
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = SyslogOutput;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "\"stdout\", or a table with kind = \"file\" | \"stdout\" | \"forward\" | \"nats\" | \"otlp\"",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SyslogOutput, E> {
                match v {
                    "stdout" => Ok(SyslogOutput::Stdout),
                    "file" => Ok(SyslogOutput::File { path: "floodgate-syslog.jsonl".into(), fsync: Fsync::Never }),
                    _ => Err(E::custom(format!("unknown output `{v}`: \"stdout\", \"file\" or a table"))),
                }
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<SyslogOutput, A::Error> {
                Ok(match Table::deserialize(de::value::MapAccessDeserializer::new(map))? {
                    Table::File { path, fsync } => SyslogOutput::File { path, fsync },
                    Table::Stdout => SyslogOutput::Stdout,
                    Table::Forward(f) => SyslogOutput::Forward(f),
                    Table::Nats(n) => SyslogOutput::Nats(n),
                    Table::Otlp(o) => SyslogOutput::Otlp(o),
                })
            }
        }
        d.deserialize_any(Visitor)
    }
}
