//! `[graphite]`: where flushes go and Etsy statsd's Graphite naming.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use floodgate_carbon::{Destination, HashType, Ring};

use crate::units::{duration, size};

/// `[graphite]`: the Carbon output and Etsy's naming options.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GraphiteConfig {
    /// `host:port` of Carbon (or of a relay); absent, and no `destinations`: no Graphite output.
    pub address: Option<String>,
    /// A Carbon cluster, in Carbon's `DESTINATIONS` syntax (`host:port` or
    /// `host:port:instance`): each metric goes to the node(s) Carbon's relay would pick.
    /// Instead of `address`.
    pub destinations: Vec<Destination>,
    /// The cluster's ring: `"carbon_ch"` (Carbon's default) or `"fnv1a_ch"`.
    pub hashing: HashType,
    /// Nodes each metric goes to (Carbon's `REPLICATION_FACTOR`).
    pub replication: usize,
    /// Replicas on distinct hosts only (Carbon's `DIVERSE_REPLICAS`).
    pub diverse_replicas: bool,
    /// `"plaintext"` or `"pickle"`.
    pub protocol: GraphiteProtocol,
    /// statsd `graphite.legacyNamespace`.
    pub legacy_namespace: bool,
    /// statsd `graphite.globalPrefix`.
    pub global_prefix: String,
    /// statsd `graphite.prefixCounter`.
    pub prefix_counter: String,
    /// statsd `graphite.prefixTimer`.
    pub prefix_timer: String,
    /// statsd `graphite.prefixGauge`.
    pub prefix_gauge: String,
    /// statsd `graphite.prefixSet`.
    pub prefix_set: String,
    /// statsd `graphite.globalSuffix`.
    pub global_suffix: String,
    /// statsd `flush_counts`.
    pub flush_counts: bool,
    /// Payload bytes held while Carbon is unreachable (per destination); the oldest are
    /// dropped past it.
    #[serde(with = "size")]
    pub buffer: u64,
    /// Connect and write timeout for one flush.
    #[serde(with = "duration")]
    pub timeout: Duration,
}

impl Default for GraphiteConfig {
    fn default() -> Self {
        GraphiteConfig {
            address: None,
            destinations: Vec::new(),
            hashing: HashType::CarbonCh,
            replication: 1,
            diverse_replicas: true,
            protocol: GraphiteProtocol::Plaintext,
            legacy_namespace: true,
            global_prefix: "stats".into(),
            prefix_counter: "counters".into(),
            prefix_timer: "timers".into(),
            prefix_gauge: "gauges".into(),
            prefix_set: "sets".into(),
            global_suffix: String::new(),
            flush_counts: true,
            buffer: 64 << 20,
            timeout: Duration::from_secs(5),
        }
    }
}

/// Graphite wire format.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum GraphiteProtocol {
    /// Line protocol.
    Plaintext,
    /// Pickle protocol.
    Pickle,
}

impl GraphiteConfig {
    /// Checks the values serde cannot: ranges, combinations. The error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(address) = &self.address {
            if address.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
                return Err(("graphite.address", format!("`{address}` is not host:port")));
            }
            if !self.destinations.is_empty() {
                return Err((
                    "graphite.destinations",
                    "set either address (one Carbon or a relay) or destinations (a sharded cluster), not both".into(),
                ));
            }
        }
        if self.replication == 0 {
            return Err(("graphite.replication", "must be at least 1".into()));
        }
        self.ring().map_err(|e| ("graphite.destinations", e))?;
        Ok(())
    }

    /// The cluster's ring (`None` without `destinations`).
    pub fn ring(&self) -> Result<Option<Ring>, String> {
        if self.destinations.is_empty() {
            return Ok(None);
        }
        Ring::new(&self.destinations, self.hashing).map(Some)
    }
}

impl GraphiteConfig {
    /// Etsy statsd's Graphite naming options (two of them are `[statsd]`'s).
    pub fn naming(&self, statsd: &crate::config::StatsdConfig) -> floodgate_statsd::graphite::GraphiteNaming {
        let g = self;
        floodgate_statsd::graphite::GraphiteNaming {
            legacy_namespace: g.legacy_namespace,
            global_prefix: g.global_prefix.clone(),
            prefix_counter: g.prefix_counter.clone(),
            prefix_timer: g.prefix_timer.clone(),
            prefix_gauge: g.prefix_gauge.clone(),
            prefix_set: g.prefix_set.clone(),
            global_suffix: g.global_suffix.clone(),
            prefix_stats: statsd.prefix_stats.clone(),
            flush_counts: g.flush_counts,
            sanitize_names: !statsd.key_name_sanitize,
        }
    }

    /// The Graphite wire format.
    pub fn wire_protocol(&self) -> floodgate_statsd::graphite::Protocol {
        match self.protocol {
            GraphiteProtocol::Plaintext => floodgate_statsd::graphite::Protocol::Plaintext,
            GraphiteProtocol::Pickle => floodgate_statsd::graphite::Protocol::Pickle,
        }
    }
}
