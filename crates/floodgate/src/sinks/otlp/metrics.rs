//! A flush as an `ExportMetricsServiceRequest`: the store's series (named by the mapping file
//! when a rule matches, else as sent with their tags as attributes) in OTLP's data model.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use floodgate_otlp::proto::{self, metric::Data, AggregationTemporality, KeyValue};
use floodgate_statsd::prometheus::{Labels, Named, Namer, SeriesKind};
use floodgate_statsd::store::interval_summary;
use floodgate_statsd::FlushView;
use parking_lot::Mutex;
use prost::Message;

use super::config::{Compression, OtlpConfig, Temporality};

/// Renders each flush.
pub struct Render {
    naming: Arc<crate::naming::Naming>,
    temporality: Temporality,
    compression: Compression,
    max_buckets: usize,
    resource: proto::Resource,
    starts: Mutex<Starts>,
}

/// When each series' cumulative points start, and when the last flush was (a delta point's
/// start).
struct Starts {
    /// By the series' [`series_id`].
    by_series: HashMap<u64, u64>,
    last_flush_ns: u64,
}

/// A series' identity in [`Starts`]: a 64-bit hash of its type and key (two series sharing one
/// would share a start time; at 2^-64 a pair, kept so the map holds no copy of every key).
fn series_id(kind: SeriesKind, key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(key, kind as u64)
}

impl Render {
    /// The rendering `[otlp]` asks for; `agent` is this agent's id when it forwards.
    pub fn new(naming: Arc<crate::naming::Naming>, config: &OtlpConfig, agent: Option<String>) -> Render {
        let host = crate::sys::host_name();
        let mut attributes: BTreeMap<String, String> = BTreeMap::new();
        attributes.insert("service.name".into(), "floodgate".into());
        attributes.insert("service.version".into(), env!("CARGO_PKG_VERSION").into());
        attributes.insert("host.name".into(), host.clone());
        attributes.insert("service.instance.id".into(), agent.unwrap_or(host));
        attributes.extend(config.resource.clone());
        let resource =
            proto::Resource { attributes: attributes.into_iter().map(|(k, v)| KeyValue::string(k, v)).collect() };
        Render {
            naming,
            temporality: config.temporality,
            compression: config.compression,
            max_buckets: config.histogram_max_buckets,
            resource,
            starts: Mutex::new(Starts {
                by_series: HashMap::new(),
                last_flush_ns: u64::try_from(crate::clock::unix_ms()).unwrap_or(0) * 1_000_000,
            }),
        }
    }

    /// The request for one flush, and how many data points it holds.
    pub fn request(&self, view: &FlushView<'_>) -> (proto::ExportMetricsServiceRequest, usize) {
        // The flush's own timestamp is whole seconds (Graphite's); points need finer.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let mut starts = self.starts.lock();
        let previous = std::mem::take(&mut starts.by_series);
        let mut points = Points {
            view,
            now,
            interval_start: starts.last_flush_ns.min(now),
            temporality: self.temporality,
            max_buckets: self.max_buckets,
            previous,
            starts: HashMap::new(),
            metrics: Vec::new(),
            index: Default::default(),
            count: 0,
        };
        self.naming.with_namer(|namer| points.all(namer));
        starts.by_series = std::mem::take(&mut points.starts);
        starts.last_flush_ns = now;
        // Sorted by name (and kind), so one flush reads like the next.
        let mut metrics = points.metrics;
        metrics.sort_by(|a, b| a.name.cmp(&b.name));
        let scope = proto::InstrumentationScope { name: "floodgate".into(), version: env!("CARGO_PKG_VERSION").into() };
        let request = proto::ExportMetricsServiceRequest {
            resource_metrics: vec![proto::ResourceMetrics {
                resource: Some(self.resource.clone()),
                scope_metrics: vec![proto::ScopeMetrics { scope: Some(scope), metrics }],
            }],
        };
        (request, points.count)
    }
}

impl crate::flush::Render for Render {
    fn render_view(&self, view: &FlushView<'_>, _config: &crate::config::Config) -> crate::flush::Rendered {
        let (request, count) = self.request(view);
        let body = super::compress(request.encode_to_vec(), self.compression);
        vec![(body, count)]
    }
}

/// One flush's points as they are gathered, by metric.
struct Points<'v, 'a> {
    view: &'v FlushView<'a>,
    now: u64,
    interval_start: u64,
    temporality: Temporality,
    max_buckets: usize,
    previous: HashMap<u64, u64>,
    starts: HashMap<u64, u64>,
    /// The metrics so far, and where each is, by kind and name (a name may be a counter and a
    /// gauge; OTLP keeps them apart).
    metrics: Vec<proto::Metric>,
    index: [HashMap<String, usize>; 4],
    count: usize,
}

/// A series' OTLP identity: its metric name, attributes and what its values are multiplied by.
struct Identity<'k> {
    name: Cow<'k, str>,
    attributes: Vec<KeyValue>,
    scale: f64,
    unit: &'static str,
    named: Option<Arc<Named>>,
}

impl<'a> Points<'_, 'a> {
    fn all(&mut self, mut namer: Option<&mut dyn Namer>) {
        let view = self.view;
        let delta = self.temporality == Temporality::Delta;
        for (key, c) in view.counter_entries() {
            // A delta sum holds what came this flush: a counter that got nothing has no point.
            if delta && c.idle.0 != 0 {
                continue;
            }
            let Some(id) = self.identity(&mut namer, key, SeriesKind::Counter, false) else { continue };
            let value = if delta { c.value } else { c.total } * id.scale;
            let start = self.start(SeriesKind::Counter, key);
            let point = proto::NumberDataPoint {
                start_time_unix_nano: start,
                time_unix_nano: self.now,
                as_double: Some(value),
                attributes: id.attributes,
            };
            let temporality = self.temporality();
            match &mut self.metric(id.name, 0, id.unit).data {
                Some(Data::Sum(sum)) => sum.data_points.push(point),
                data => {
                    *data = Some(Data::Sum(proto::Sum {
                        data_points: vec![point],
                        aggregation_temporality: temporality as i32,
                        is_monotonic: true,
                    }))
                }
            }
        }
        let gauges = view.gauge_entries().map(|(k, g)| (k, g.value, SeriesKind::Gauge));
        let sets = view.set_entries().map(|(k, s)| (k, s.size() as f64, SeriesKind::Set));
        for (key, value, kind) in gauges.chain(sets).collect::<Vec<_>>() {
            let Some(id) = self.identity(&mut namer, key, kind, false) else { continue };
            let point = proto::NumberDataPoint {
                start_time_unix_nano: 0,
                time_unix_nano: self.now,
                as_double: Some(value * id.scale),
                attributes: id.attributes,
            };
            match &mut self.metric(id.name, 1, id.unit).data {
                Some(Data::Gauge(g)) => g.data_points.push(point),
                data => *data = Some(Data::Gauge(proto::Gauge { data_points: vec![point] })),
            }
        }
        for (key, t) in view.timer_entries() {
            self.timer(&mut namer, key, t);
        }
    }

    fn temporality(&self) -> AggregationTemporality {
        match self.temporality {
            Temporality::Cumulative => AggregationTemporality::Cumulative,
            Temporality::Delta => AggregationTemporality::Delta,
        }
    }

    /// A point's start: the flush before for delta; for cumulative, the start of the flush
    /// interval in which the series first had a value (kept while the series lives).
    fn start(&mut self, kind: SeriesKind, key: &[u8]) -> u64 {
        if self.temporality == Temporality::Delta {
            return self.interval_start;
        }
        let id = series_id(kind, key);
        let start = self.previous.remove(&id).unwrap_or(self.interval_start);
        self.starts.insert(id, start);
        start
    }

    fn metric(&mut self, name: Cow<'_, str>, kind: u8, unit: &'static str) -> &mut proto::Metric {
        self.count += 1;
        let index = &mut self.index[usize::from(kind)];
        let at = match index.get(name.as_ref()) {
            Some(at) => *at,
            None => {
                let name = name.into_owned();
                index.insert(name.clone(), self.metrics.len());
                self.metrics.push(proto::Metric { name, unit: unit.into(), ..Default::default() });
                self.metrics.len() - 1
            }
        };
        &mut self.metrics[at]
    }

    /// The series' name and attributes: the mapping rule's when one matches (its scale, and
    /// seconds for `ms` timers as statsd_exporter), else the StatsD name and tags as sent;
    /// `None` when a rule drops it.
    fn identity<'k>(
        &self,
        namer: &mut Option<&mut dyn Namer>,
        key: &'k [u8],
        kind: SeriesKind,
        milliseconds: bool,
    ) -> Option<Identity<'k>>
    where
        'a: 'k,
    {
        let name = key.split(|b| *b == b';').next().unwrap_or(key);
        let sent = self.view.sent_name(name).unwrap_or(name);
        let Some(namer) = namer.as_deref_mut() else {
            let unit = if milliseconds { "ms" } else { "" };
            let attributes = tag_attributes(key);
            return Some(Identity { name: String::from_utf8_lossy(sent), attributes, scale: 1.0, unit, named: None });
        };
        let named = namer.name(&String::from_utf8_lossy(sent), kind)?;
        let labels = Labels { key, named: Some((&named.labels, named.honor_labels)) };
        let attributes = labels.pairs().into_iter().map(|(k, v)| KeyValue::string(k, v)).collect();
        let (scale, unit) = if milliseconds { (named.timer_scale * named.scale, "s") } else { (named.scale, "") };
        Some(Identity { name: Cow::Owned(named.name.clone()), attributes, scale, unit, named: Some(named) })
    }

    fn timer(&mut self, namer: &mut Option<&mut dyn Namer>, key: &[u8], t: &floodgate_statsd::store::TimerEntry) {
        let delta = self.temporality == Temporality::Delta;
        let summary = if delta {
            match interval_summary(t) {
                Some(s) => Some(s),
                None => return,
            }
        } else {
            None
        };
        let milliseconds = !t.units.unitless_only();
        let Some(id) = self.identity(namer, key, SeriesKind::Timer, milliseconds) else { return };
        // The values: this flush's (delta), or every value since start (cumulative; the store
        // keeps the sketch when [otlp] asks for cumulative points).
        let (sketch, count, sum, min, max) = match &summary {
            Some(s) => (&s.sketch, s.count, s.sum, Some(s.min), Some(s.max)),
            None => match t.cumulative.as_deref() {
                Some(c) => (c, t.total_count, t.total_sum, None, None),
                None => return,
            },
        };
        let weight = if sketch.count() == 0 { 1.0 } else { count / sketch.count() as f64 };
        let start = self.start(SeriesKind::Timer, key);
        let temporality = self.temporality() as i32;
        let (scale, attributes) = (id.scale, id.attributes);
        // Min and max flip when the scale is negative; OTLP wants them as the values are.
        let (min, max) = match (min, max) {
            (Some(a), Some(b)) if scale >= 0.0 => (Some(a * scale), Some(b * scale)),
            (Some(a), Some(b)) => (Some(b * scale), Some(a * scale)),
            _ => (None, None),
        };
        let buckets = id.named.as_ref().and_then(|n| n.histogram.as_ref()).map(|l| l.buckets.clone());
        match buckets {
            // The mapping file asks for these buckets: a classic histogram.
            Some(bounds) => {
                let bucket_counts = floodgate_otlp::explicit_counts(sketch, &bounds, scale, weight);
                let point = proto::HistogramDataPoint {
                    start_time_unix_nano: start,
                    time_unix_nano: self.now,
                    count: bucket_counts.iter().sum(),
                    sum: Some(sum * scale),
                    bucket_counts,
                    explicit_bounds: bounds,
                    attributes,
                };
                match &mut self.metric(id.name, 2, id.unit).data {
                    Some(Data::Histogram(h)) => h.data_points.push(point),
                    data => {
                        *data = Some(Data::Histogram(proto::Histogram {
                            data_points: vec![point],
                            aggregation_temporality: temporality,
                        }))
                    }
                }
            }
            None => {
                let mut point = floodgate_otlp::exponential(sketch, self.max_buckets, scale, weight);
                point.start_time_unix_nano = start;
                point.time_unix_nano = self.now;
                point.sum = Some(sum * scale);
                point.min = min;
                point.max = max;
                point.attributes = attributes;
                match &mut self.metric(id.name, 3, id.unit).data {
                    Some(Data::ExponentialHistogram(h)) => h.data_points.push(point),
                    data => {
                        *data = Some(Data::ExponentialHistogram(proto::ExponentialHistogram {
                            data_points: vec![point],
                            aggregation_temporality: temporality,
                        }))
                    }
                }
            }
        }
    }
}

/// A key's tags as attributes, as sent (`k=v`; a tag without a value has an empty one).
fn tag_attributes(key: &[u8]) -> Vec<KeyValue> {
    key.split(|b| *b == b';')
        .skip(1)
        .filter(|t| !t.is_empty())
        .map(|tag| {
            let tag = String::from_utf8_lossy(tag);
            match tag.split_once('=') {
                Some((k, v)) => KeyValue::string(k, v),
                None => KeyValue::string(tag.as_ref(), ""),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use floodgate_statsd::{AggregationConfig, Parser, Shard, Store};

    fn config(temporality: Temporality) -> OtlpConfig {
        let temporality = format!("{temporality:?}").to_lowercase();
        toml::from_str(&format!("endpoint = \"http://127.0.0.1:1\"\ntemporality = \"{temporality}\"")).unwrap()
    }

    /// Two flushes of `lines` each through a render; the requests.
    fn flushes(render: &Render, store: &mut Store, batches: &[&str]) -> Vec<proto::ExportMetricsServiceRequest> {
        batches
            .iter()
            .map(|lines| {
                let mut shard = Shard::new(1000);
                Parser::with_rule(floodgate_statsd::KeyRule { sent_names: true, ..Default::default() })
                    .parse_packet(lines.as_bytes(), &mut shard);
                store.merge(&mut shard);
                store.flush(1, |view| render.request(view).0)
            })
            .collect()
    }

    fn metric<'a>(r: &'a proto::ExportMetricsServiceRequest, name: &str) -> Option<&'a proto::Metric> {
        r.resource_metrics[0].scope_metrics[0].metrics.iter().find(|m| m.name == name)
    }

    #[test]
    fn delta_histograms_hold_one_flush_and_carry_min_and_max() {
        let render = Render::new(Arc::default(), &config(Temporality::Delta), Some("agent-7".into()));
        let mut store = Store::new(AggregationConfig::default());
        let requests = flushes(&render, &mut store, &["lat:10|ms\nlat:30|ms", "lat:5|ms", ""]);
        let point = |i: usize| match metric(&requests[i], "lat").and_then(|m| m.data.clone()) {
            Some(Data::ExponentialHistogram(h)) => {
                assert_eq!(h.aggregation_temporality, AggregationTemporality::Delta as i32);
                Some(h.data_points[0].clone())
            }
            None => None,
            other => panic!("{other:?}"),
        };
        let first = point(0).unwrap();
        assert_eq!((first.count, first.sum, first.min, first.max), (2, Some(40.0), Some(10.0), Some(30.0)));
        let second = point(1).unwrap();
        assert_eq!((second.count, second.sum), (1, Some(5.0)));
        assert_eq!(second.start_time_unix_nano, first.time_unix_nano, "from the flush before");
        assert!(point(2).is_none(), "a flush without values has no delta point");
        assert_eq!(metric(&requests[0], "lat").unwrap().unit, "ms");
        let resource = &requests[0].resource_metrics[0].resource.as_ref().unwrap().attributes;
        assert!(resource.contains(&KeyValue::string("service.instance.id", "agent-7")));
    }

    #[test]
    fn a_mapping_file_names_scales_drops_and_asks_for_classic_buckets() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.yml");
        std::fs::write(
            &file,
            "mappings:\n\
             - match: api.*.latency\n  name: api_latency_seconds\n  observer_type: histogram\n  labels: { route: $1 }\n  \
               histogram_options: { buckets: [0.01, 0.1, 1] }\n\
             - match: disk.kb\n  name: disk_bytes\n  scale: 1024\n\
             - match: noise.*\n  name: x\n  action: drop\n",
        )
        .unwrap();
        let naming =
            Arc::new(crate::naming::Naming::new(&crate::naming::PrometheusConfig { mapping_config: Some(file) }));
        let render = Render::new(naming, &config(Temporality::Cumulative), None);
        let mut store = Store::new(AggregationConfig { cumulative_sketches: true, ..AggregationConfig::default() });
        let requests = flushes(
            &render,
            &mut store,
            &["api.users.latency:5|ms\napi.users.latency:50|ms\napi.users.latency:500|ms\ndisk.kb:3|g\nnoise.a:1|c"],
        );
        let r = &requests[0];
        let Some(Data::Histogram(h)) = metric(r, "api_latency_seconds").and_then(|m| m.data.clone()) else {
            panic!("{r:?}")
        };
        let p = &h.data_points[0];
        assert_eq!(p.explicit_bounds, [0.01, 0.1, 1.0]);
        assert_eq!(p.bucket_counts, [1, 1, 1, 0], "5 ms, 50 ms, 500 ms in seconds");
        assert_eq!(p.attributes, [KeyValue::string("route", "users")]);
        assert_eq!(metric(r, "api_latency_seconds").unwrap().unit, "s");
        let Some(Data::Gauge(g)) = metric(r, "disk_bytes").and_then(|m| m.data.clone()) else { panic!() };
        assert_eq!(g.data_points[0].as_double, Some(3072.0));
        assert!(metric(r, "x").is_none() && metric(r, "noise.a").is_none(), "dropped by the rule");
    }
}
