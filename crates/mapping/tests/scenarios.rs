//! statsd_exporter's own mapper and escaping scenarios (ported as data, source named in each
//! file) run against floodgate's mapper: each scenario is one test case, and a failure names it.

use std::collections::BTreeMap;
use std::time::Duration;

use floodgate_mapping::{escape_metric_name, Mapped, Mapper, MetricType};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    name: String,
    #[serde(default)]
    config: String,
    #[serde(default)]
    bad: bool,
    #[serde(default)]
    mappings: Vec<Expect>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    metric: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    name: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    unmapped: Option<String>,
    #[serde(default)]
    dropped: bool,
    ttl: Option<String>,
    buckets: Option<Vec<f64>>,
    quantiles: Option<Vec<f64>>,
    scale: Option<f64>,
}

fn duration(s: &str) -> Duration {
    let (m, s) = s.split_once('m').map_or((0, s), |(m, rest)| (m.parse().unwrap(), rest));
    Duration::from_secs(m * 60 + s.trim_end_matches('s').parse::<u64>().unwrap_or(0))
}

/// Checks one scenario; `Err` says what differs.
fn check(s: &Scenario) -> Result<(), String> {
    let mapper = match (Mapper::from_yaml(&s.config), s.bad) {
        (Ok(_), true) => return Err("loaded, but statsd_exporter refuses this file".into()),
        (Err(_), true) => return Ok(()),
        (Err(e), false) => return Err(format!("refused: {e}")),
        (Ok(m), false) => m,
    };
    for e in &s.mappings {
        let kind = match e.kind.as_deref() {
            None | Some("counter") => MetricType::Counter,
            Some("gauge") => MetricType::Gauge,
            Some("observer") => MetricType::Observer,
            Some(other) => return Err(format!("unknown type {other}")),
        };
        let got = mapper.map(&e.metric, kind);
        let at = |what: String| format!("{}: {what}", e.metric);
        let options = match (&got, &e.name, &e.unmapped, e.dropped) {
            (Mapped::Rule { name, labels, options }, Some(want), None, false) => {
                if name != want {
                    return Err(at(format!("name {name:?}, want {want:?}")));
                }
                let labels: BTreeMap<String, String> = labels.iter().cloned().collect();
                if labels != e.labels {
                    return Err(at(format!("labels {labels:?}, want {:?}", e.labels)));
                }
                (**options).clone()
            }
            (Mapped::Unmapped(name), None, Some(want), false) if name == want => mapper.defaults().clone(),
            (Mapped::Dropped, None, None, true) => continue,
            (got, ..) => return Err(at(format!("got {got:?}"))),
        };
        if let Some(ttl) = &e.ttl {
            if options.ttl != Some(duration(ttl)) {
                return Err(at(format!("ttl {:?}, want {ttl}", options.ttl)));
            }
        }
        if let Some(b) = &e.buckets {
            if &options.buckets != b {
                return Err(at(format!("buckets {:?}, want {b:?}", options.buckets)));
            }
        }
        if let Some(q) = &e.quantiles {
            if &options.quantiles != q {
                return Err(at(format!("quantiles {:?}, want {q:?}", options.quantiles)));
            }
        }
        if options.scale != e.scale {
            return Err(at(format!("scale {:?}, want {:?}", options.scale, e.scale)));
        }
    }
    Ok(())
}

fn main() {
    let args = libtest_mimic::Arguments::from_args();
    let scenarios: Vec<Scenario> =
        serde_yaml_ng::from_str(include_str!("statsd_exporter_scenarios.yaml")).expect("the scenario file reads");
    let escapes: BTreeMap<String, String> =
        serde_yaml_ng::from_str(include_str!("statsd_exporter_escape.yaml")).expect("the escape file reads");
    let mut trials: Vec<libtest_mimic::Trial> = scenarios
        .into_iter()
        .map(|s| libtest_mimic::Trial::test(format!("mapper: {}", s.name), move || check(&s).map_err(Into::into)))
        .collect();
    trials.extend(escapes.into_iter().map(|(name, want)| {
        libtest_mimic::Trial::test(format!("escape: {name:?}"), move || {
            let got = escape_metric_name(&name);
            if got == want {
                Ok(())
            } else {
                Err(format!("escaped to {got:?}, want {want:?}").into())
            }
        })
    }));
    libtest_mimic::run(&args, trials).exit();
}
