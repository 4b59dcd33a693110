//! The Prometheus text rendering (exposition format 0.0.4) of the [`Families`] table.
//!
//! Written by hand rather than with prometheus-client because the same response also carries
//! the aggregated StatsD series, and one writer keeps the whole exposition in one format that
//! `promtool check metrics` accepts.

use std::fmt::Write as _;

use floodgate_statsd::prometheus::escape_label_value;

use super::{Families, Value};

/// Writes every family: `# HELP`, `# TYPE`, then its samples.
pub fn render(families: &Families, out: &mut String) {
    for f in families.iter() {
        let d = &f.describe;
        let _ = writeln!(out, "# HELP {} {}", d.name, d.help);
        let _ = writeln!(out, "# TYPE {} {}", d.name, d.kind.as_str());
        for (labels, value) in &f.samples {
            out.push_str(d.name);
            if !labels.is_empty() {
                out.push('{');
                for (i, (k, v)) in labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{k}=\"");
                    escape_label_value(v, out);
                    out.push('"');
                }
                out.push('}');
            }
            let _ = match value {
                Value::Count(n) => writeln!(out, " {n}"),
                Value::Real(x) => writeln!(out, " {x}"),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Describe;

    #[test]
    fn samples_under_one_label_set_are_summed_and_labels_escaped() {
        let mut t = Families::default();
        let d = Describe::counter("x_total", "An x.");
        t.add(d, &[("listener", "a\"b")], 2u64);
        t.add(d, &[("listener", "a\"b")], 3u64);
        t.family(Describe::gauge("empty", "Nothing yet."));
        let mut out = String::new();
        render(&t, &mut out);
        assert_eq!(
            out,
            "# HELP x_total An x.\n# TYPE x_total counter\nx_total{listener=\"a\\\"b\"} 5\n\
             # HELP empty Nothing yet.\n# TYPE empty gauge\n"
        );
    }
}
