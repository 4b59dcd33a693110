//! The TOML configuration: every key optional, defaults safe (loopback only), unknown keys and
//! bad values rejected with the file, line and key.
//!
//! Each section's struct mirrors the SPEC; conversions to the pure crates' option types live
//! here so the rest of the runtime never re-reads raw config.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use floodgate_statsd::graphite::{GraphiteNaming, Protocol};
use floodgate_statsd::AggregationConfig;
use serde::{Deserialize, Serialize};

pub use crate::guard::config::LimitsConfig;
pub use crate::net::tls::ClientTls as ForwardTls;
pub use crate::sinks::forward::config::ForwardConfig;
pub use crate::sinks::graphite::config::{GraphiteConfig, GraphiteProtocol};
pub use crate::sinks::otlp::config::OtlpConfig;
pub use crate::sinks::remote_write::config::RemoteWriteConfig;
pub use crate::sinks::syslog::config::{SyslogForward, SyslogNats, SyslogOutput};
pub use crate::sources::admin::config::{AdminConfig, Health};
pub use crate::sources::aggregator::config::AggregatorConfig;
pub use crate::sources::conntrack::config::{ConntrackConfig, Enabled, EventFormat};
pub use crate::sources::http::config::HttpConfig;
pub use crate::sources::statsd::config::{Bin, HistogramConfig, StatsdConfig};
pub use crate::sources::syslog::config::{SyslogConfig, SyslogTlsListener};
pub use crate::units::{parse_duration, parse_size, Fsync};

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[statsd]`
    pub statsd: StatsdConfig,
    /// `[graphite]`
    pub graphite: GraphiteConfig,
    /// `[admin]`
    pub admin: AdminConfig,
    /// `[http]`
    pub http: HttpConfig,
    /// `[syslog]`
    pub syslog: SyslogConfig,
    /// `[limits]`
    pub limits: LimitsConfig,
    /// `[conntrack]`
    pub conntrack: ConntrackConfig,
    /// `[forward]`: this agent ships its flushes to aggregators.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward: Option<ForwardConfig>,
    /// `[aggregator]`: this host accepts agents' flushes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregator: Option<AggregatorConfig>,
    /// `[prometheus_remote_write]`: each flush to a remote-write endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prometheus_remote_write: Option<RemoteWriteConfig>,
    /// `[prometheus]`: the Prometheus names of the StatsD series (`/metrics`, remote-write).
    pub prometheus: crate::naming::PrometheusConfig,
    /// `[otlp]`: each flush to an OpenTelemetry (OTLP/HTTP) endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp: Option<OtlpConfig>,
}

/// A configuration error, already phrased for the user.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads a file, parses and validates it, and loads the files it names ([`Config::check_files`]).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))?;
        let origin = path.display().to_string();
        let config = Config::parse(&text, &origin)?;
        config.check_files().map_err(|(key, e)| match find_key_line(&text, key) {
            Some(line) => ConfigError(format!("{origin}:{line}: key `{key}`: {e:#}")),
            None => ConfigError(format!("{origin}: key `{key}`: {e:#}")),
        })?;
        Ok(config)
    }

    /// Loads every certificate, key and CA the configuration names, as the components will:
    /// `check`, start-up and reload (all through [`Config::load`]) refuse the same files.
    pub fn check_files(&self) -> Result<(), (&'static str, anyhow::Error)> {
        use crate::net::tls::{client_config, server_config};
        if let Some(tls) = &self.statsd.tls {
            server_config(tls).map_err(|e| ("statsd.tls", e))?;
        }
        for t in &self.syslog.tls {
            server_config(&t.tls()).map_err(|e| ("syslog.tls", e))?;
        }
        match &self.syslog.output {
            SyslogOutput::Forward(SyslogForward { tls: Some(tls), .. })
            | SyslogOutput::Nats(SyslogNats { tls: Some(tls), .. }) => {
                client_config(tls).map_err(|e| ("syslog.output", e))?;
            }
            _ => {}
        }
        if let Some(tls) = self.aggregator.as_ref().and_then(|a| a.tls.as_ref()) {
            server_config(tls).map_err(|e| ("aggregator.tls", e))?;
        }
        if let Some(tls) = self.forward.as_ref().and_then(|f| f.tls.as_ref()) {
            client_config(tls).map_err(|e| ("forward.tls", e))?;
        }
        if let Some(rw) = &self.prometheus_remote_write {
            rw.check_files().map_err(|e| ("prometheus_remote_write.ca", e))?;
        }
        if let Some(otlp) = &self.otlp {
            otlp.check_files().map_err(|e| ("otlp.ca", e))?;
        }
        crate::naming::load(&self.prometheus).map_err(|e| ("prometheus.mapping_config", e))?;
        Ok(())
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text.as_bytes()[..s.start.min(text.len())].iter().filter(|b| **b == b'\n').count() + 1);
            let message = e.message();
            match line {
                Some(line) => {
                    let source = text.lines().nth(line - 1).unwrap_or("").trim();
                    ConfigError(format!("{origin}:{line}: {message}\n    {line} | {source}"))
                }
                None => ConfigError(format!("{origin}: {message}")),
            }
        })?;
        config.validate().map_err(|(key, why)| {
            let line = find_key_line(text, key);
            match line {
                Some(line) => ConfigError(format!("{origin}:{line}: key `{key}`: {why}")),
                None => ConfigError(format!("{origin}: key `{key}`: {why}")),
            }
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        self.statsd.validate()?;
        self.admin.validate()?;
        self.http.validate()?;
        self.syslog.validate()?;
        self.limits.validate()?;
        self.conntrack.validate()?;
        self.graphite.validate()?;
        if let Some(f) = &self.forward {
            f.validate()?;
        }
        if let Some(a) = &self.aggregator {
            a.validate(self.statsd.flush_interval)?;
        }
        if let Some(rw) = &self.prometheus_remote_write {
            rw.validate()?;
        }
        if let Some(otlp) = &self.otlp {
            otlp.validate()?;
        }
        Ok(())
    }

    /// Etsy statsd's aggregation options.
    pub fn aggregation(&self) -> AggregationConfig {
        let mut a = self.statsd.aggregation();
        // Timers keep a sketch of every value since start only when a mapping rule exposes
        // them as histograms, and the quantiles its summaries ask for (the file was checked
        // when the configuration was read).
        if let Some(mapper) = crate::naming::load(&self.prometheus).ok().flatten() {
            a.cumulative_sketches = mapper.uses_histograms();
            a.summary_quantiles = mapper.summary_quantiles();
        }
        // Cumulative OTLP histograms hold every value since start.
        if self.otlp.as_ref().is_some_and(|o| o.temporality == crate::sinks::otlp::Temporality::Cumulative) {
            a.cumulative_sketches = true;
        }
        a
    }

    /// The StatsD key rule (`max_key_length`, `key_name_sanitize`): what the parser accepts,
    /// what an agent forwards and what an aggregator takes.
    pub fn key_rule(&self) -> floodgate_statsd::KeyRule {
        floodgate_statsd::KeyRule {
            max_length: self.statsd.max_key_length,
            sanitized: self.statsd.key_name_sanitize,
            // statsd_exporter's rules see names as sent: kept when a mapping file is in use.
            sent_names: self.statsd.key_name_sanitize && self.prometheus.mapping_config.is_some(),
        }
    }

    /// Etsy statsd's Graphite naming options.
    pub fn graphite_naming(&self) -> GraphiteNaming {
        self.graphite.naming(&self.statsd)
    }

    /// The Graphite wire format.
    pub fn graphite_protocol(&self) -> Protocol {
        self.graphite.wire_protocol()
    }

    /// The effective configuration as TOML, secrets included (for round trips in tests).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// The effective configuration as TOML with every secret replaced by `"<redacted>"`: what
    /// `floodgate check` (whose output lands in the journal), the console's `config` and
    /// `/api/status` show. Secrets are header values, any key named like a token, password,
    /// secret or authorization, and the password of a URL.
    pub fn to_toml_redacted(&self) -> String {
        // Through TOML first (what TOML cannot hold, a `None`, is left out as in the file),
        // then redacted as JSON: one walk for both views.
        let rendered = toml::Value::try_from(self)
            .and_then(|v| serde_json::to_value(v).map_err(serde::ser::Error::custom))
            .and_then(|mut v| {
                redact_json(&mut v);
                toml::Value::try_from(v)
            })
            .and_then(|v| toml::to_string_pretty(&v));
        rendered.unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// Listener addresses not on loopback with no allow-list in front (warned about at start).
    pub fn public_listeners(&self) -> Vec<SocketAddr> {
        let mut all: Vec<SocketAddr> = Vec::new();
        if self.limits.allow.is_empty() {
            all.extend(self.statsd.udp.iter().chain(&self.statsd.tcp).chain(&self.statsd.tls_listen));
            all.extend(self.syslog.udp.iter().chain(&self.syslog.tcp));
            all.extend(self.syslog.tls.iter().map(|t| &t.listen));
            all.extend(self.admin.listen);
            all.extend(self.http.listen);
            let open_aggregator =
                self.aggregator.as_ref().filter(|a| a.tls.as_ref().is_none_or(|t| t.client_ca.is_none()));
            all.extend(open_aggregator.map(|a| a.listen));
        }
        all.into_iter().filter(|a| !a.ip().is_loopback()).collect()
    }
}

/// The text that replaces a secret.
pub const REDACTED: &str = "<redacted>";

/// True for a key whose value is a secret.
fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["token", "password", "passwd", "secret", "authorization", "api_key", "apikey", "cookie", "nkey"]
        .iter()
        .any(|s| k.contains(s))
}

/// `scheme://user:password@host/...` with the password replaced.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:{REDACTED}@{host}{path}")
        }
        None => url.to_string(),
    }
}

/// Replaces secrets in a view of the configuration (`floodgate check`, the console's
/// `config`, `/api/status`): every value under a `headers` table, every key named like a
/// secret, and URL passwords.
pub fn redact_json(v: &mut serde_json::Value) {
    fn walk(v: &mut serde_json::Value, all: bool) {
        match v {
            serde_json::Value::Object(o) => {
                for (k, v) in o.iter_mut() {
                    if (all || is_secret_key(k)) && !v.is_null() {
                        *v = serde_json::Value::String(REDACTED.into());
                    } else {
                        walk(v, k == "headers");
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(|v| walk(v, all)),
            serde_json::Value::String(s) if all => *s = REDACTED.into(),
            serde_json::Value::String(s) if s.contains("://") => *s = redact_url(s),
            _ => {}
        }
    }
    walk(v, false);
}

/// The line of `section.key` in the text, for errors found after parsing.
fn find_key_line(text: &str, dotted: &str) -> Option<usize> {
    let (section, key) = dotted.split_once('.')?;
    let mut in_section = false;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            in_section = t.trim_matches(|c| c == '[' || c == ']').trim() == section;
        } else if in_section && t.split('=').next().map(str::trim) == Some(key) {
            return Some(i + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn empty_file_is_the_defaults() {
        let c = Config::parse("", "t.toml").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.statsd.udp, vec!["127.0.0.1:8125".parse().unwrap()]);
        assert!(c.graphite.address.is_none());
    }

    #[test]
    fn spec_example_parses() {
        let text = r#"
[statsd]
udp = ["127.0.0.1:8125"]
tcp = ["127.0.0.1:8125"]
flush_interval = "10s"
percentiles = [90.0, -10, 99.9]
histograms = [{ metric = "render", bins = [0.01, 0.1, 1, 10, "inf"] }]
delete_idle_stats = false
gauges_max_ttl = 1
key_name_sanitize = true
prefix_stats = "statsd"
calculated_timer_metrics = []
max_series = 1_000_000

[graphite]
address = "127.0.0.1:2003"
protocol = "pickle"
legacy_namespace = true
global_prefix = "stats"
flush_counts = true
buffer = "64MiB"

[admin]
listen = "127.0.0.1:8126"
health = "up"

[http]
listen = "127.0.0.1:9318"

[syslog]
udp = ["127.0.0.1:5514"]
tcp = ["127.0.0.1:5514"]
tls = [{ listen = "127.0.0.1:6514", cert = "server.pem", key = "server.key", client_ca = "ca.pem" }]
max_message = "64KiB"
output = { kind = "file", path = "floodgate-syslog.jsonl" }

[limits]
udp_per_source = 3000
udp_per_port = 10000
tcp_connections_per_source = 10
burst = "1s"
allow = []
tracked_sources = 100_000
"#;
        let c = Config::parse(text, "t.toml").unwrap();
        assert_eq!(c.statsd.histograms[0].bins[4].0, f64::INFINITY);
        assert_eq!(c.graphite.buffer, 64 << 20);
        assert_eq!(c.graphite_protocol(), Protocol::Pickle);
        assert_eq!(c.aggregation().percentiles, vec![90.0, -10.0, 99.9]);
        assert_eq!(c.syslog.tls[0].listen.port(), 6514);
        assert_eq!(c.syslog.tls[0].tls().client_ca.as_deref(), Some(Path::new("ca.pem")));
        assert_eq!(c.syslog.max_message, 64 << 10);
        // The effective config reads back to itself.
        assert_eq!(Config::parse(&c.to_toml(), "round-trip").unwrap(), c);
    }

    #[test]
    fn syslog_outputs() {
        let stdout = Config::parse("[syslog]\noutput = \"stdout\"\n", "t").unwrap();
        assert_eq!(stdout.syslog.output, SyslogOutput::Stdout);
        let text = "[syslog]\noutput = { kind = \"forward\", address = \"127.0.0.1:514\", \
                    tls = { ca = \"ca.pem\" }, buffer = \"1MiB\", spill = \"/var/spool/x\" }\n";
        let forward = Config::parse(text, "t").unwrap();
        let SyslogOutput::Forward(f) = &forward.syslog.output else { panic!("not forward") };
        assert_eq!((f.buffer, f.spill_max), (1 << 20, 1 << 30));
        assert_eq!(Config::parse(&forward.to_toml(), "round-trip").unwrap(), forward);
        let err = Config::parse("[syslog]\noutput = { kind = \"forward\", adress = \"x:1\" }\n", "t.toml");
        assert!(err.unwrap_err().0.contains("adress"));
        let err = Config::parse("\n[syslog]\noutput = { kind = \"forward\", address = \"nope\" }\n", "t.toml");
        assert!(err.unwrap_err().0.starts_with("t.toml:3: key `syslog.output`"));
        let err = Config::parse("[syslog]\noutput = \"kafka\"\n", "t.toml").unwrap_err().0;
        assert!(err.contains("t.toml:2") && err.contains("kafka"), "{err}");
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = Config::parse("[statsd]\nflush_interval = \"1s\"\nflushInterval = 5\n", "f.toml").unwrap_err();
        assert!(err.0.starts_with("f.toml:3:"), "{err}");
        assert!(err.0.contains("flushInterval"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = Config::parse("[statsd]\n\nflush_interval = \"soon\"\n", "f.toml").unwrap_err();
        assert!(err.0.starts_with("f.toml:3:") && err.0.contains("flush_interval"), "{err}");
        let err = Config::parse("[statsd]\npercentiles = [150]\n", "f.toml").unwrap_err();
        assert!(err.0.starts_with("f.toml:2: key `statsd.percentiles`"), "{err}");
        let err = Config::parse("[graphite]\naddress = \"nohost\"\n", "f.toml").unwrap_err();
        assert!(err.0.contains("graphite.address"), "{err}");
        let err =
            Config::parse("[statsd]\nhistograms = [{ metric = \"x\", bins = [1, \"big\"] }]\n", "f.toml").unwrap_err();
        assert!(err.0.contains("inf"), "{err}");
        let err = Config::parse("[limits]\nallow = [\"10.0.0.0/8\", \"10.1/40\"]\n", "f.toml").unwrap_err();
        assert!(err.0.starts_with("f.toml:2: key `limits.allow`") && err.0.contains("10.1/40"), "{err}");
    }

    #[test]
    fn a_graphite_cluster_is_read_in_carbons_syntax_and_checked() {
        let c = Config::parse(
            "[graphite]\ndestinations = [\"10.0.0.1:2004:a\", \"[2001:db8::1]:2004\"]\nhashing = \"fnv1a_ch\"\nreplication = 2\n",
            "f.toml",
        )
        .unwrap();
        let g = &c.graphite;
        assert_eq!(g.destinations[0].to_string(), "10.0.0.1:2004:a");
        assert_eq!(g.destinations[1].address(), "[2001:db8::1]:2004");
        assert_eq!((g.hashing, g.replication, g.diverse_replicas), (floodgate_carbon::HashType::Fnv1aCh, 2, true));
        assert_eq!(g.ring().unwrap().map(|r| r.len()), Some(2));
        for (text, want) in [
            ("destinations = [\"10.0.0.1\"]", "f.toml:2: destination \"10.0.0.1\": no port"),
            ("destinations = [\"h:1:a\", \"h:2:a\"]", "already configured"),
            ("hashing = \"md5\"", "expected `carbon_ch` or `fnv1a_ch`"),
            ("destinations = [\"h:1\"]\nreplication = 0", "graphite.replication"),
            ("address = \"h:1\"\ndestinations = [\"h:1\"]", "not both"),
        ] {
            let err = Config::parse(&format!("[graphite]\n{text}\n"), "f.toml").unwrap_err();
            assert!(err.0.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("200ms"), Some(Duration::from_millis(200)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_size("64MiB"), Some(64 << 20));
        assert_eq!(parse_size("1_000"), Some(1000));
        assert_eq!(parse_size("3 KiB"), Some(3072));
        assert_eq!(parse_size("lots"), None);
    }
}
