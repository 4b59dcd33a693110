//! What `/ui` reads besides `/api/status`: the series browser (`/api/series`) and the
//! configuration as a table with what differs from the defaults (`/api/config`).

use floodgate_statsd::budget::Sender;
use floodgate_statsd::store::Owner;
use floodgate_statsd::Kind;
use serde_json::{json, Value};

use crate::component::Shared;

/// Rows `/api/series` shows at most.
pub const MAX_ROWS: usize = 1000;

/// `/api/series?match=GLOB&limit=N`: how many series match the glob (`*` any run, `?` one
/// character; every series without one), and the newest `limit` of them (100 by default):
/// name, type, value, first seen and sender (for series charged to a sender's budget).
/// Receive shards are merged first, so a series sent a moment ago is there.
pub fn series_json(shared: &Shared, pattern: &str, limit: usize) -> Result<Vec<u8>, String> {
    let glob = crate::tap::glob(if pattern.is_empty() { "*" } else { pattern })?;
    let matches = |k: &[u8]| std::str::from_utf8(k).is_ok_and(|k| glob.matches(k));
    let limit = limit.min(MAX_ROWS);
    let mut store = shared.aggregation.store.lock();
    shared.aggregation.merge_shards(&mut store);
    let store = &*store;
    // (owner, key, kind) of every match, then the newest `limit`. Each type's map on its own: a
    // name may be a counter and a gauge. The owner comes with the entry walked.
    let all = (store.counters().map(|(k, e)| (e.owner, k, Kind::Counter)))
        .chain(store.gauges().map(|(k, e)| (e.owner, k, Kind::Gauge)))
        .chain(store.timers().map(|(k, e)| (e.owner, k, Kind::Timer)))
        .chain(store.sets().map(|(k, e)| (e.owner, k, Kind::Set)));
    let mut found: Vec<(Owner, &[u8], Kind)> = all.filter(|(_, key, _)| matches(key)).collect();
    let matched = found.len();
    let newest_first =
        |a: &(Owner, &[u8], Kind), b: &(Owner, &[u8], Kind)| b.0.first_seen.cmp(&a.0.first_seen).then(a.1.cmp(b.1));
    if found.len() > limit && limit > 0 {
        found.select_nth_unstable_by(limit - 1, newest_first);
    }
    found.truncate(limit);
    found.sort_unstable_by(newest_first);
    let budgets = &shared.aggregation.budgets;
    let rows: Vec<Value> = found
        .iter()
        .map(|&(owner, key, kind)| {
            let (value, total) = store.value_of(kind, key).unwrap_or((0.0, None));
            let kind_name = match kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Timer => "timer",
                Kind::Set => "set",
            };
            let known = owner.sender != Sender::Unknown;
            json!({
                "name": String::from_utf8_lossy(key),
                "type": kind_name,
                "value": value,
                "total": total,
                "first_seen": known.then_some(owner.first_seen),
                "sender": known.then(|| budgets.describe(owner.sender)),
            })
        })
        .collect();
    let body = json!({ "pattern": pattern, "series": store.series(), "matched": matched, "rows": rows });
    Ok(serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec()))
}

/// `/api/config`: every key of the configuration in force, dotted (`limits.udp_per_source`),
/// with its value, its default, and whether it differs; secrets redacted in both.
pub fn config_json(config: &crate::config::Config) -> Vec<u8> {
    let as_json = |c: &crate::config::Config| {
        let mut v = serde_json::to_value(c).unwrap_or_default();
        crate::config::redact_json(&mut v);
        v
    };
    let (running, defaults) = (as_json(config), as_json(&crate::config::Config::default()));
    let mut rows = Vec::new();
    flatten("", &running, &defaults, &mut rows);
    let changed = rows.iter().filter(|r| r["changed"] == true).count();
    serde_json::to_vec(&json!({ "changed": changed, "keys": rows })).unwrap_or_else(|_| b"{}".to_vec())
}

/// Tables become dotted keys; anything else (lists included) is one value.
fn flatten(prefix: &str, value: &Value, default: &Value, out: &mut Vec<Value>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, default.get(k).unwrap_or(&Value::Null), out);
            }
        }
        _ => out.push(json!({ "key": prefix, "value": value, "default": default, "changed": value != default })),
    }
}
