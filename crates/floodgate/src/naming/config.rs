//! `[prometheus]`: how the StatsD series are named for Prometheus (`/metrics` and
//! remote-write; Graphite keeps Etsy's names).

use serde::{Deserialize, Serialize};

/// `[prometheus]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PrometheusConfig {
    /// A statsd_exporter mapping file (`--statsd.mapping-config`), read unchanged; re-read on
    /// SIGHUP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mapping_config: Option<std::path::PathBuf>,
}
