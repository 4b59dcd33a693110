//! Self-metrics: one table, two renderings.
//!
//! Every component that has figures to show implements [`Report`] and is added to the
//! [`Registry`] when it starts. At a scrape each one writes its [`Family`]s into one
//! [`Families`] table; [`prometheus`] renders that table as the `/metrics` text and [`status`]
//! as the `/api/status` JSON, so a counter is named, described and read in exactly one place
//! (its component's `report`), and this module names no component.
//!
//! Counting itself stays where it is cheap: components keep relaxed atomics that only their
//! own threads write, and `report` reads them.

pub mod prometheus;
pub mod protobuf;
pub mod status;

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;

/// A Prometheus metric type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    /// Only goes up (resets at restart).
    Counter,
    /// Goes up and down.
    Gauge,
}

impl Type {
    /// The name in a `# TYPE` line.
    pub fn as_str(self) -> &'static str {
        match self {
            Type::Counter => "counter",
            Type::Gauge => "gauge",
        }
    }
}

/// A sample's value: counts stay integers (exact past 2^53), durations are fractions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// A count.
    Count(u64),
    /// Seconds, a ratio.
    Real(f64),
}

impl Value {
    fn add(self, other: Value) -> Value {
        match (self, other) {
            (Value::Count(a), Value::Count(b)) => Value::Count(a.saturating_add(b)),
            (a, b) => Value::Real(a.as_f64() + b.as_f64()),
        }
    }

    fn as_f64(self) -> f64 {
        match self {
            Value::Count(n) => n as f64,
            Value::Real(x) => x,
        }
    }
}

impl From<u64> for Value {
    fn from(n: u64) -> Value {
        Value::Count(n)
    }
}

impl From<f64> for Value {
    fn from(x: f64) -> Value {
        Value::Real(x)
    }
}

/// Where a family's samples appear in `/api/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusPlace {
    /// The top-level key (`listeners`, `flush`, ...).
    pub section: &'static str,
    /// Whether the section is a list of rows (one per distinct label set) or one object.
    pub many: bool,
    /// The key of the value in its row.
    pub key: &'static str,
    /// A label whose values become the keys of a nested object under `key` (`reason` turns
    /// `floodgate_dropped_total` into `"dropped": {"oversize": 0, ...}`); the other labels
    /// name the row.
    pub by: Option<&'static str>,
}

impl StatusPlace {
    /// One object `section`, value under `key`.
    pub const fn one(section: &'static str, key: &'static str) -> StatusPlace {
        StatusPlace { section, many: false, key, by: None }
    }

    /// A list `section` with a row per label set, value under `key`.
    pub const fn many(section: &'static str, key: &'static str) -> StatusPlace {
        StatusPlace { section, many: true, key, by: None }
    }

    /// The same place, with `label`'s values as the keys of a nested object.
    pub const fn by(self, label: &'static str) -> StatusPlace {
        StatusPlace { by: Some(label), ..self }
    }
}

/// What a family is: its name, type and help, and where `/api/status` shows it (if it does).
#[derive(Debug, Clone, Copy)]
pub struct Describe {
    /// The metric name.
    pub name: &'static str,
    /// Counter or gauge.
    pub kind: Type,
    /// The `# HELP` text.
    pub help: &'static str,
    /// Its place in `/api/status`; `None`: only on `/metrics`.
    pub status: Option<StatusPlace>,
}

impl Describe {
    /// A counter shown only on `/metrics`.
    pub const fn counter(name: &'static str, help: &'static str) -> Describe {
        Describe { name, kind: Type::Counter, help, status: None }
    }

    /// A gauge shown only on `/metrics`.
    pub const fn gauge(name: &'static str, help: &'static str) -> Describe {
        Describe { name, kind: Type::Gauge, help, status: None }
    }

    /// Also shown in `/api/status`, at `place`.
    pub const fn status(self, place: StatusPlace) -> Describe {
        Describe { status: Some(place), ..self }
    }
}

/// Label pairs in the order written.
pub type Labels = Vec<(&'static str, String)>;

/// One metric family: what it is and its samples, one per label set (samples added under the
/// same labels are summed: the receive threads of one listener report one sample).
#[derive(Debug, Clone)]
pub struct Family {
    /// What it is.
    pub describe: Describe,
    /// Samples in label order.
    pub samples: BTreeMap<Labels, Value>,
}

/// The table every component writes into at a scrape.
#[derive(Debug, Default)]
pub struct Families {
    families: Vec<Family>,
    index: BTreeMap<&'static str, usize>,
}

impl Families {
    /// The family `describe` names (created on first use, so a family that no sample reaches
    /// is still described).
    pub fn family(&mut self, describe: Describe) -> &mut Family {
        let i = *self.index.entry(describe.name).or_insert_with(|| {
            self.families.push(Family { describe, samples: BTreeMap::new() });
            self.families.len() - 1
        });
        &mut self.families[i]
    }

    /// Adds `value` to the sample of `describe` labelled `labels`.
    pub fn add(&mut self, describe: Describe, labels: &[(&'static str, &str)], value: impl Into<Value>) {
        let labels: Labels = labels.iter().map(|(k, v)| (*k, v.to_string())).collect();
        let value = value.into();
        let samples = &mut self.family(describe).samples;
        let slot = samples.entry(labels).or_insert(match value {
            Value::Count(_) => Value::Count(0),
            Value::Real(_) => Value::Real(0.0),
        });
        *slot = slot.add(value);
    }

    /// Adds every family and sample of `other`, each sample with `label` too (the same
    /// figures from several instances of a component, told apart by it).
    pub fn absorb_labelled(&mut self, other: Families, label: (&'static str, &str)) {
        for family in other.families {
            let samples = &mut self.family(family.describe).samples;
            for (mut labels, value) in family.samples {
                labels.push((label.0, label.1.to_string()));
                labels.sort();
                let slot = samples.entry(labels).or_insert(match value {
                    Value::Count(_) => Value::Count(0),
                    Value::Real(_) => Value::Real(0.0),
                });
                *slot = slot.add(value);
            }
        }
    }

    /// A sample without labels.
    pub fn one(&mut self, describe: Describe, value: impl Into<Value>) {
        self.add(describe, &[], value);
    }

    /// Every family, in the order first described.
    pub fn iter(&self) -> impl Iterator<Item = &Family> {
        self.families.iter()
    }

    /// The summed value of every sample of `name` (0 when there is none).
    pub fn total(&self, name: &str) -> u64 {
        let Some(i) = self.index.get(name) else { return 0 };
        self.families[*i].samples.values().map(|v| v.as_f64() as u64).sum()
    }
}

/// A component with figures to show.
pub trait Report: Send + Sync {
    /// Writes this component's families into `out`.
    fn report(&self, out: &mut Families);

    /// Records that are not counters (top offenders, top remote hosts), as a `/api/status`
    /// section: its key and value. Most components have none.
    fn status(&self) -> Option<(&'static str, serde_json::Value)> {
        None
    }
}

/// Every component that reports, in the order they started.
#[derive(Default)]
pub struct Registry {
    reporters: Mutex<Vec<Arc<dyn Report>>>,
}

impl Registry {
    /// Adds a component's report.
    pub fn add(&self, reporter: Arc<dyn Report>) {
        self.reporters.lock().push(reporter);
    }

    /// Takes every component's figures now.
    pub fn collect(&self) -> Families {
        let reporters = self.reporters.lock().clone();
        let mut out = Families::default();
        out.add(
            Describe::gauge("floodgate_build_info", "floodgate version."),
            &[("version", env!("CARGO_PKG_VERSION"))],
            1,
        );
        for r in &reporters {
            r.report(&mut out);
        }
        out
    }

    /// The records sections of `/api/status`.
    pub fn status_records(&self) -> Vec<(&'static str, serde_json::Value)> {
        let reporters = self.reporters.lock().clone();
        reporters.iter().filter_map(|r| r.status()).collect()
    }
}
