//! The `/api/status` rendering of the [`Families`] table: each family placed by its
//! [`StatusPlace`](super::StatusPlace) (a section, a row per label set, a key), so `/ui` reads
//! the same counters `/metrics` shows.

use serde_json::{Map, Value as Json};

use super::{Families, Value};

/// A row of a list section: its section, the labels that name it, its fields.
type Row = (&'static str, Vec<(&'static str, String)>, Map<String, Json>);

/// The sections of every family that has a place in `/api/status`.
pub fn render(families: &Families) -> Map<String, Json> {
    // Rows of a list section, in the order first seen: the row's labels, then its values.
    let mut lists: Map<String, Json> = Map::new();
    let mut rows: Vec<Row> = Vec::new();
    let mut objects: Map<String, Json> = Map::new();
    for f in families.iter() {
        let Some(place) = f.describe.status else { continue };
        for (labels, value) in &f.samples {
            let value = match value {
                Value::Count(n) => Json::from(*n),
                Value::Real(x) => Json::from(*x),
            };
            let nested = place.by.and_then(|by| labels.iter().find(|(k, _)| *k == by).map(|(_, v)| v.clone()));
            let identity: Vec<(&'static str, String)> =
                labels.iter().filter(|(k, _)| Some(*k) != place.by).cloned().collect();
            let row: &mut Map<String, Json> = if place.many {
                let at = rows.iter().position(|(s, l, _)| *s == place.section && *l == identity);
                let at = at.unwrap_or_else(|| {
                    let mut fields = Map::new();
                    for (k, v) in &identity {
                        fields.insert(k.to_string(), Json::from(v.clone()));
                    }
                    rows.push((place.section, identity.clone(), fields));
                    rows.len() - 1
                });
                &mut rows[at].2
            } else {
                let object = objects.entry(place.section).or_insert_with(|| Json::Object(Map::new()));
                let Json::Object(object) = object else { continue };
                for (k, v) in &identity {
                    object.insert(k.to_string(), Json::from(v.clone()));
                }
                object
            };
            match nested {
                Some(inner) => {
                    let slot = row.entry(place.key).or_insert_with(|| Json::Object(Map::new()));
                    if let Json::Object(map) = slot {
                        map.insert(inner, value);
                    }
                }
                None => {
                    row.insert(place.key.to_string(), value);
                }
            }
        }
        if place.many && !lists.contains_key(place.section) {
            lists.insert(place.section.to_string(), Json::Array(Vec::new()));
        }
    }
    for (section, _, row) in rows {
        if let Some(Json::Array(list)) = lists.get_mut(section) {
            list.push(Json::Object(row));
        }
    }
    objects.extend(lists);
    objects
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Describe, StatusPlace};

    #[test]
    fn rows_by_label_set_with_nested_reasons_and_one_object_sections() {
        let mut t = Families::default();
        let rows = StatusPlace::many("listeners", "packets");
        t.add(Describe::counter("p_total", "P.").status(rows), &[("listener", "a"), ("address", "x")], 3u64);
        t.add(Describe::counter("p_total", "P.").status(rows), &[("listener", "b"), ("address", "y")], 4u64);
        let dropped = Describe::counter("d_total", "D.").status(StatusPlace::many("listeners", "dropped").by("reason"));
        t.add(dropped, &[("listener", "a"), ("address", "x"), ("reason", "oversize")], 1u64);
        t.add(Describe::gauge("f", "F.").status(StatusPlace::one("flush", "series")), &[], 9u64);
        t.add(Describe::gauge("hidden", "H."), &[], 1u64);
        let v = Json::Object(render(&t));
        assert_eq!(
            v,
            serde_json::json!({
                "listeners": [
                    {"listener": "a", "address": "x", "packets": 3, "dropped": {"oversize": 1}},
                    {"listener": "b", "address": "y", "packets": 4},
                ],
                "flush": {"series": 9},
            })
        );
    }
}
