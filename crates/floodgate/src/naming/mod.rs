//! The Prometheus names of the StatsD series: statsd_exporter's mapping file when
//! `[prometheus] mapping_config` names one (`floodgate-mapping` reads it), else the built-in
//! naming (`.` → `_`, `_total` on counters). Shared by `/metrics` and remote-write; swapped
//! whole on SIGHUP.
//!
//! Mapping runs when the series are exposed, not per line, and each name's outcome is cached
//! until the file changes, so a scrape maps each series once.

pub mod config;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use anyhow::{Context, Result};
use arc_swap::ArcSwapOption;
use floodgate_mapping::{Mapped, Mapper, MetricType, ObserverType, RuleOptions};
use floodgate_statsd::prometheus::{Dropped, Exposition, HistogramLayout, Named, Namer, SeriesKind};
use floodgate_statsd::Store;

use crate::metrics::{Describe, Families, Report};
use parking_lot::Mutex;

pub use config::PrometheusConfig;

/// Most names cached; past it the cache starts afresh (a flood of distinct names cannot grow
/// it without bound).
const CACHE_MAX: usize = 1 << 20;

/// Estimated bytes one cached name costs (measured about 580: the name, the outcome's names
/// and labels, the map's slot), counted against `[statsd] max_memory`.
pub const CACHE_ENTRY_BYTES: u64 = 600;

/// The cache starts afresh once it holds this many names per series the store has (plus a
/// margin): names of series long gone are not kept.
const CACHE_PER_SERIES: usize = 2;

/// Each name's outcome (`None`: dropped), by name and type.
type Outcomes = HashMap<(String, SeriesKind), Option<Arc<Named>>>;

/// A loaded mapping file and its outcomes so far.
pub struct Mapping {
    mapper: Mapper,
    cache: Mutex<Outcomes>,
    /// Series a rule matched but whose name expanded to one Prometheus cannot take.
    invalid: AtomicU64,
}

/// The naming in force, and what the expositions left out.
#[derive(Default)]
pub struct Naming {
    current: ArcSwapOption<Mapping>,
    /// Series left out of the last exposition (scrape or remote-write) for a type conflict.
    last_conflicting_type: AtomicU64,
    /// ... for being a duplicate of a series before them.
    last_duplicate: AtomicU64,
    /// Names a rule mapped to something Prometheus cannot take, counted once per name and load.
    invalid_total: AtomicU64,
    /// Most names cached (0: [`CACHE_MAX`]; tests set less).
    cache_max: usize,
}

/// Reads and checks the mapping file `[prometheus]` names (none: `Ok(None)`).
pub fn load(config: &PrometheusConfig) -> Result<Option<Mapper>> {
    let Some(path) = &config.mapping_config else { return Ok(None) };
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mapper = Mapper::from_yaml(&text).with_context(|| path.display().to_string())?;
    Ok(Some(mapper))
}

impl Naming {
    /// The naming `[prometheus]` asks for (the file was checked with the configuration).
    pub fn new(config: &PrometheusConfig) -> Naming {
        let naming = Naming::default();
        naming.apply(config);
        naming
    }

    /// Puts `config`'s mapping in force (SIGHUP). A file that cannot be read keeps the one in
    /// force, said in the log.
    pub fn apply(&self, config: &PrometheusConfig) {
        match load(config) {
            Ok(mapper) => {
                if let Some(m) = &mapper {
                    if !m.unused_keys.is_empty() {
                        tracing::warn!(keys = ?m.unused_keys, "mapping file: keys floodgate does not use are ignored");
                    }
                    tracing::info!(rules = m.len(), "prometheus mapping file in force");
                }
                let old = self.current.swap(mapper.map(|mapper| {
                    Arc::new(Mapping { mapper, cache: Mutex::new(HashMap::new()), invalid: AtomicU64::new(0) })
                }));
                if let Some(old) = old {
                    self.invalid_total.fetch_add(old.invalid.load(Relaxed), Relaxed);
                }
            }
            Err(e) => tracing::error!(error = %format!("{e:#}"), "mapping file refused; the one in force stays"),
        }
    }

    /// Runs `f` with the namer in force (`None`: the built-in naming).
    pub fn with_namer<R>(&self, f: impl FnOnce(Option<&mut dyn Namer>) -> R) -> R {
        let Some(mapping) = self.current.load_full() else { return f(None) };
        let mut cache = mapping.cache.lock();
        let cache_max = if self.cache_max == 0 { CACHE_MAX } else { self.cache_max };
        if cache.len() >= cache_max {
            cache.clear();
        }
        let mut namer = CachedNamer { mapping: &mapping, cache: &mut cache };
        f(Some(&mut namer))
    }

    /// Estimated bytes of the cache of names ([`CACHE_ENTRY_BYTES`] each), for `max_memory`.
    pub fn cache_bytes(&self) -> u64 {
        self.current.load_full().map_or(0, |m| m.cache.lock().len() as u64 * CACHE_ENTRY_BYTES)
    }

    /// Lets the cache go when it holds far more names than `store` has series (names of
    /// series since deleted), so what it costs follows the series `max_memory` admits.
    fn trim_cache(&self, store: &Store) {
        if let Some(mapping) = self.current.load_full() {
            let mut cache = mapping.cache.lock();
            if cache.len() > store.series() * CACHE_PER_SERIES + 1024 {
                cache.clear();
            }
        }
    }

    /// Every series of `store` to `sink`, named; what was left out is kept for the
    /// self-metrics.
    pub fn expose(&self, store: &Store, sink: &mut impl Exposition) -> Dropped {
        self.trim_cache(store);
        let dropped = self.with_namer(|namer| floodgate_statsd::prometheus::visit_named(store, namer, sink));
        self.record(dropped);
        dropped
    }

    /// [`Naming::expose`] in the text format.
    pub fn render(&self, store: &Store, out: &mut String) -> Dropped {
        self.trim_cache(store);
        let dropped = self.with_namer(|namer| floodgate_statsd::prometheus::render_named(store, namer, out));
        self.record(dropped);
        dropped
    }

    fn record(&self, dropped: Dropped) {
        self.last_conflicting_type.store(dropped.conflicting_type as u64, Relaxed);
        self.last_duplicate.store(dropped.duplicate as u64, Relaxed);
        if dropped.total() > 0 {
            tracing::debug!(?dropped, "series left out of the Prometheus exposition");
        }
    }
}

impl Report for Naming {
    fn report(&self, out: &mut Families) {
        let left_out = Describe::gauge(
            "floodgate_prometheus_series_left_out",
            "StatsD series left out of the last Prometheus exposition (scrape or remote-write), by why: \
             conflicting_type (the name is another type's), duplicate (same name and labels as one before).",
        );
        out.add(left_out, &[("reason", "conflicting_type")], self.last_conflicting_type.load(Relaxed));
        out.add(left_out, &[("reason", "duplicate")], self.last_duplicate.load(Relaxed));
        let invalid = Describe::counter(
            "floodgate_prometheus_invalid_mapped_names_total",
            "StatsD names a mapping rule turned into a name Prometheus cannot take (not exported), once per name.",
        );
        let counted = self.current.load().as_ref().map_or(0, |m| m.invalid.load(Relaxed));
        out.add(invalid, &[], self.invalid_total.load(Relaxed) + counted);
        let rules = Describe::gauge("floodgate_prometheus_mapping_rules", "Rules of the mapping file in force.");
        out.add(rules, &[], self.current.load().as_ref().map_or(0, |m| m.mapper.len() as u64));
    }
}

/// statsd_exporter exposes timers in seconds; StatsD clients send milliseconds.
const TIMER_SCALE: f64 = 0.001;

/// A rule's (or the defaults') histogram, when it asks for one.
fn histogram_layout(options: &RuleOptions) -> Option<HistogramLayout> {
    (options.observer_type == Some(ObserverType::Histogram))
        .then(|| HistogramLayout::new(&options.buckets, options.native.map(|n| (n.schema, n.max_buckets as usize))))
}

struct CachedNamer<'a> {
    mapping: &'a Mapping,
    cache: &'a mut Outcomes,
}

impl Namer for CachedNamer<'_> {
    fn name(&mut self, name: &str, kind: SeriesKind) -> Option<Arc<Named>> {
        if let Some(hit) = self.cache.get(&(name.to_string(), kind)) {
            return hit.clone();
        }
        let metric_type = match kind {
            SeriesKind::Counter => MetricType::Counter,
            SeriesKind::Gauge | SeriesKind::Set => MetricType::Gauge,
            SeriesKind::Timer => MetricType::Observer,
        };
        let named = match self.mapping.mapper.map(name, metric_type) {
            Mapped::Unmapped(mut name) => {
                // Escaped as statsd_exporter does; a counter keeps floodgate's `_total` (the
                // Prometheus convention promtool checks), as it has without a mapping file.
                if kind == SeriesKind::Counter {
                    name.push_str("_total");
                }
                Some(Arc::new(Named {
                    name,
                    labels: Vec::new(),
                    help: None,
                    honor_labels: false,
                    histogram: histogram_layout(self.mapping.mapper.defaults()),
                    timer_scale: TIMER_SCALE,
                    scale: 1.0,
                    quantiles: Some(self.mapping.mapper.defaults().quantiles.clone()),
                    ttl: self.mapping.mapper.defaults().ttl,
                }))
            }
            Mapped::Dropped => None,
            Mapped::Invalid(bad) => {
                self.mapping.invalid.fetch_add(1, Relaxed);
                tracing::debug!(name = %bad, "mapped name is not a valid Prometheus name: series not exported");
                None
            }
            Mapped::Rule { name, labels, options } => Some(Arc::new(Named {
                name,
                labels,
                histogram: histogram_layout(&options),
                quantiles: Some(options.quantiles.clone()),
                ttl: options.ttl,
                help: options.help,
                honor_labels: options.honor_labels,
                timer_scale: TIMER_SCALE,
                scale: options.scale.unwrap_or(1.0),
            })),
        };
        self.cache.insert((name.to_string(), kind), named.clone());
        named
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use floodgate_statsd::{AggregationConfig, Parser, Shard};

    /// A flood of distinct names cannot grow the cache past its bound: it starts afresh, and
    /// names are still mapped.
    #[test]
    fn the_cache_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.yml");
        std::fs::write(&file, "mappings:\n- match: \"n.*\"\n  name: \"n_total\"\n  labels: { id: $1 }\n").unwrap();
        let naming = Naming { cache_max: 100, ..Naming::default() };
        naming.apply(&PrometheusConfig { mapping_config: Some(file) });
        // Names come and go: each flush forgets the interval's counters.
        let mut store = Store::new(AggregationConfig { delete_counters: true, ..AggregationConfig::default() });
        for round in 0..5 {
            let mut shard = Shard::new(10_000);
            let text: Vec<String> = (0..80).map(|i| format!("n.{}:1|c", round * 80 + i)).collect();
            Parser::new(true).parse_packet(text.join("\n").as_bytes(), &mut shard);
            store.merge(&mut shard);
            let mut out = String::new();
            naming.render(&store, &mut out);
            let cached = naming.current.load_full().map_or(0, |m| m.cache.lock().len());
            // At most the bound, plus what one scrape adds after starting afresh (400 names
            // were seen in all).
            assert!(cached <= 100 + store.series(), "round {round}: {cached} names cached");
            assert!(out.contains(&format!("n_total{{id=\"{}\"}} 1", round * 80 + 79)), "{out}");
            store.flush(1, |_| ());
        }
    }
}
