//! Mapping behaviour, from statsd_exporter's documented examples.

use super::*;

fn rule(mapped: &Mapped) -> (&str, Vec<(&str, &str)>) {
    match mapped {
        Mapped::Rule { name, labels, .. } => {
            (name.as_str(), labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect())
        }
        other => panic!("not mapped by a rule: {other:?}"),
    }
}

const README_EXAMPLE: &str = r#"
mappings:
- match: "test.dispatcher.*.*.*"
  name: "dispatcher_events_total"
  labels:
    processor: "$1"
    action: "$2"
    outcome: "$3"
    job: "test_dispatcher"
- match: "*.signup.*.*"
  name: "signup_events_total"
  labels:
    provider: "$2"
    outcome: "$3"
    job: "${1}_server"
"#;

#[test]
fn globs_capture_fields_into_name_and_labels() {
    let m = Mapper::from_yaml(README_EXAMPLE).unwrap();
    let got = m.map("test.dispatcher.FooProcessor.send.success", MetricType::Counter);
    assert_eq!(
        rule(&got),
        (
            "dispatcher_events_total",
            vec![("action", "send"), ("job", "test_dispatcher"), ("outcome", "success"), ("processor", "FooProcessor")]
        )
    );
    let got = m.map("foo_product.signup.facebook.failure", MetricType::Counter);
    assert_eq!(
        rule(&got),
        ("signup_events_total", vec![("job", "foo_product_server"), ("outcome", "failure"), ("provider", "facebook")])
    );
    // A different number of fields is not a match.
    assert_eq!(m.map("test.dispatcher.a.b", MetricType::Counter), Mapped::Unmapped("test_dispatcher_a_b".into()));
}

#[test]
fn the_first_matching_glob_wins_unless_ordering_is_disabled() {
    let rules = r#"
mappings:
- match: "a.*.*"
  name: "first"
- match: "a.b.*"
  name: "specific"
"#;
    let m = Mapper::from_yaml(rules).unwrap();
    assert_eq!(rule(&m.map("a.b.c", MetricType::Gauge)).0, "first");
    let m = Mapper::from_yaml(&format!("defaults:\n  glob_disable_ordering: true\n{rules}")).unwrap();
    assert_eq!(rule(&m.map("a.b.c", MetricType::Gauge)).0, "specific");
    assert_eq!(rule(&m.map("a.x.c", MetricType::Gauge)).0, "first");
}

#[test]
fn globs_come_before_regexes_and_regexes_go_in_order() {
    let m = Mapper::from_yaml(
        r#"
mappings:
- match: "(.*)\\.(.*)\\.(.*)"
  match_type: regex
  name: "regex_${1}"
  labels:
    rest: "$2_$3"
- match: "x\\.(.*)"
  match_type: regex
  name: "never_$1"
- match: "x.*.*"
  name: "glob_wins"
"#,
    )
    .unwrap();
    assert_eq!(rule(&m.map("x.y.z", MetricType::Counter)).0, "glob_wins");
    // Regexes search (unanchored, greedy), first rule first; `$2_$3` reads a group named `2_`
    // (nothing), then group 3.
    assert_eq!(rule(&m.map("pq.r.s", MetricType::Counter)), ("regex_pq", vec![("rest", "s")]));
    // A name that expands to something Prometheus cannot take is refused, not exported.
    assert_eq!(m.map("p.q.r.s", MetricType::Counter), Mapped::Invalid("regex_p.q".into()));
}

#[test]
fn match_metric_type_and_drop() {
    let m = Mapper::from_yaml(
        r#"
mappings:
- match: "app.*.timing"
  match_metric_type: observer
  name: "app_duration_seconds"
  labels: { op: "$1" }
- match: "app.*.timing"
  name: "app_other"
- match: "."
  match_type: regex
  action: drop
  name: "dropped"
"#,
    )
    .unwrap();
    assert_eq!(rule(&m.map("app.get.timing", MetricType::Observer)).0, "app_duration_seconds");
    assert_eq!(rule(&m.map("app.get.timing", MetricType::Counter)).0, "app_other");
    assert_eq!(m.map("anything.else", MetricType::Gauge), Mapped::Dropped);
}

#[test]
fn defaults_and_options_reach_the_rule() {
    let m = Mapper::from_yaml(
        r#"
defaults:
  observer_type: histogram
  histogram_options:
    buckets: [0.1, 1, 10]
  ttl: 45s
mappings:
- match: "a.b"
  name: "ab"
  help: "A and B."
- match: "c.d"
  name: "cd"
  observer_type: summary
  summary_options:
    quantiles:
      - quantile: 0.99
        error: 0.001
  ttl: 1m30s
  honor_labels: true
"#,
    )
    .unwrap();
    let Mapped::Rule { options, .. } = m.map("a.b", MetricType::Observer) else { panic!() };
    assert_eq!(options.observer_type, Some(ObserverType::Histogram));
    assert_eq!(options.buckets, [0.1, 1.0, 10.0]);
    assert_eq!(options.ttl, Some(Duration::from_secs(45)));
    assert_eq!(options.help.as_deref(), Some("A and B."));
    let Mapped::Rule { options, .. } = m.map("c.d", MetricType::Observer) else { panic!() };
    assert_eq!(options.observer_type, Some(ObserverType::Summary));
    assert_eq!(options.quantiles, [0.99]);
    assert_eq!(options.ttl, Some(Duration::from_secs(90)));
    assert!(options.honor_labels);
}

#[test]
fn bad_files_name_the_rule() {
    for (text, want) in [
        ("mappings:\n- match: a.b\n", "mappings[0] (match \"a.b\"): the rule sets no metric name"),
        ("mappings:\n- match: a.b\n  name: 1bad\n", "is not a valid Prometheus name"),
        ("mappings:\n- match: a.b\n  name: ok\n- match: 1a\n  name: x\n", "mappings[1] (match \"1a\"): invalid glob"),
        ("mappings:\n- match: \"(\"\n  match_type: regex\n  name: x\n", "invalid regex"),
        ("mappings:\n- match: a.b\n  name: x\n  labels: { \"bad-label\": v }\n", "invalid label name"),
        ("mappings:\n- match: a.b\n  name: x\n  action: keep\n", "invalid action"),
        (
            "mappings:\n- match: a.b\n  name: x\n  observer_type: histogram\n  summary_options: { quantiles: [] }\n",
            "histogram observer_type with summary_options",
        ),
        ("mappings:\n- match: a.b\n  name: x\n  ttl: soon\n", "invalid ttl"),
        ("mappings: [", "not a mapping file"),
    ] {
        let err = Mapper::from_yaml(text).unwrap_err().to_string();
        assert!(err.contains(want), "{text:?}: {err}");
    }
}

#[test]
fn unknown_keys_are_kept_aside_not_refused() {
    let m = Mapper::from_yaml("mappings:\n- match: a.b\n  name: x\n  unheard_of: 2\n").unwrap();
    assert_eq!(m.unused_keys, ["mappings[0].unheard_of"]);
}

#[test]
fn unmapped_names_are_escaped_as_statsd_exporter_does() {
    for (name, want) in [
        ("foo.bar", "foo_bar"),
        ("0foo", "_0foo"),
        ("foo--bar", "foo_bar"),
        ("foo---bar", "foo_bar"),
        ("foo-bar", "foo_bar"),
        ("héllo", "h_llo"),
        ("a:b", "a_b"),
    ] {
        assert_eq!(escape_metric_name(name), want, "{name}");
    }
}

#[test]
fn native_histograms_take_client_golangs_schema_for_the_bucket_factor() {
    for (factor, schema) in [(1.1, 3), (2.0, 0), (1.01, 7), (1.0001, 8), (65537.0, -4), (4.0, -1)] {
        assert_eq!(NativeOptions::from_factor(factor, 0).map(|n| n.schema), Some(schema), "{factor}");
    }
    assert_eq!(NativeOptions::from_factor(1.0, 0), None);
    let m = Mapper::from_yaml(
        r#"
defaults:
  observer_type: histogram
  histogram_options:
    native_histogram_bucket_factor: 1.1
    native_histogram_max_buckets: 100
mappings:
- match: "a.*"
  name: "a"
- match: "b.*"
  name: "b"
  histogram_options:
    native_histogram_bucket_factor: 2
- match: "c.*"
  name: "c"
  histogram_options:
    native_histogram_bucket_factor: 1
"#,
    )
    .unwrap();
    let native = |name: &str| match m.map(name, MetricType::Observer) {
        Mapped::Rule { options, .. } => options.native,
        other => panic!("{other:?}"),
    };
    assert_eq!(native("a.x"), Some(NativeOptions { schema: 3, max_buckets: 100 }));
    // A rule's factor with the defaults' limit.
    assert_eq!(native("b.x"), Some(NativeOptions { schema: 0, max_buckets: 100 }));
    // A factor of 1 turns native off for the rule.
    assert_eq!(native("c.x"), None);
    // Names no rule matched take the defaults, as in statsd_exporter.
    assert!(matches!(m.map("z.x", MetricType::Observer), Mapped::Unmapped(_)));
    assert_eq!(m.defaults().observer_type, Some(ObserverType::Histogram));
    assert_eq!(m.defaults().native, Some(NativeOptions { schema: 3, max_buckets: 100 }));
    assert!(m.uses_histograms());
}
