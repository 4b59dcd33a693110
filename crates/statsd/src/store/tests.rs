use super::*;
use crate::Parser;

fn store_with(cfg: AggregationConfig) -> Store {
    Store::new(cfg)
}

fn feed(store: &mut Store, text: &str) {
    let mut shard = Shard::new(1_000_000);
    let counts = Parser::new(true).parse_packet(text.as_bytes(), &mut shard);
    shard.packets += 1;
    shard.lines += counts.lines;
    shard.bad_lines += counts.bad;
    store.merge(&mut shard);
}

/// Flushes and returns every value by its name (`kind:key[.stat]`).
fn flush(store: &mut Store, ts: i64) -> BTreeMap<String, f64> {
    store.flush(ts, |v| {
        let mut out = BTreeMap::new();
        let s = |k: &[u8]| String::from_utf8_lossy(k).into_owned();
        for (k, val) in v.counters() {
            out.insert(format!("c:{}", s(k)), val);
        }
        for (k, stats) in &v.timers {
            for (name, val) in stats {
                out.insert(format!("t:{}.{name}", s(k)), *val);
            }
        }
        for (k, val) in v.gauges() {
            out.insert(format!("g:{}", s(k)), val);
        }
        for (k, n) in v.sets() {
            out.insert(format!("s:{}", s(k)), n as f64);
        }
        out.insert("numStats".into(), v.num_stats as f64);
        out
    })
}
use std::collections::BTreeMap;

#[test]
fn timer_statistics_match_etsy() {
    let mut store = store_with(AggregationConfig { percentiles: vec![90.0, -10.0, 99.9], ..Default::default() });
    let values: String = (1..=10).rev().map(|v| format!("t:{v}|ms\n")).collect();
    feed(&mut store, &values);
    let f = flush(&mut store, 100);
    let t = |k: &str| f[&format!("t:t.{k}")];
    assert_eq!(t("count_90"), 9.0);
    assert_eq!(t("upper_90"), 9.0);
    assert_eq!(t("sum_90"), 45.0);
    assert_eq!(t("mean_90"), 5.0);
    assert_eq!(t("sum_squares_90"), 285.0);
    assert_eq!(t("count_top10"), 1.0);
    assert_eq!(t("lower_top10"), 10.0);
    assert_eq!(t("sum_top10"), 10.0);
    assert_eq!(t("count_99_9"), 10.0);
    assert_eq!(t("upper"), 10.0);
    assert_eq!(t("lower"), 1.0);
    assert_eq!(t("count"), 10.0);
    assert_eq!(t("count_ps"), 1.0);
    assert_eq!(t("sum"), 55.0);
    assert_eq!(t("mean"), 5.5);
    assert_eq!(t("median"), 5.5);
    assert_eq!(t("std"), 8.25f64.sqrt());
}

#[test]
fn negative_percentile_of_everything_is_nan_as_in_etsy() {
    let mut store = store_with(AggregationConfig { percentiles: vec![-100.0], ..Default::default() });
    feed(&mut store, "t:1|ms\nt:2|ms");
    let f = flush(&mut store, 100);
    assert!(f["t:t.sum_top100"].is_nan());
    assert_eq!(f["t:t.lower_top100"], 1.0);
}

#[test]
fn sampled_timers_count_by_rate_and_small_percentiles_are_skipped() {
    let mut store = store_with(AggregationConfig { percentiles: vec![10.0], ..Default::default() });
    feed(&mut store, "t:5|ms|@0.5\nt:7|ms|@0.5\nt:9|ms|@0.5");
    let f = flush(&mut store, 100);
    assert_eq!(f["t:t.count"], 6.0);
    // round(0.1 * 3) = 0: Etsy skips the percentile.
    assert!(!f.contains_key("t:t.count_10"));
}

#[test]
fn histograms_with_inf_and_first_match() {
    let cfg = AggregationConfig {
        histograms: vec![
            HistogramRule { metric: "foo".into(), bins: vec![] },
            HistogramRule { metric: "render".into(), bins: vec![0.01, 0.1, 1.0, 10.0, f64::INFINITY] },
        ],
        ..Default::default()
    };
    let mut store = store_with(cfg);
    feed(
        &mut store,
        "page.render:0.005|ms\npage.render:0.05|ms\npage.render:0.1|ms\npage.render:50|ms\nfoo.render:1|ms",
    );
    let f = flush(&mut store, 100);
    assert_eq!(f["t:page.render.histogram.bin_0_01"], 1.0);
    assert_eq!(f["t:page.render.histogram.bin_0_1"], 1.0);
    assert_eq!(f["t:page.render.histogram.bin_1"], 1.0);
    assert_eq!(f["t:page.render.histogram.bin_10"], 0.0);
    assert_eq!(f["t:page.render.histogram.bin_inf"], 1.0);
    assert!(!f.keys().any(|k| k.starts_with("t:foo.render.histogram")));
}

#[test]
fn calculated_timer_metrics_filter() {
    let cfg = AggregationConfig {
        calculated_timer_metrics: vec!["count".into(), "upper_percent".into()],
        percentiles: vec![90.0, -10.0],
        ..Default::default()
    };
    let mut store = store_with(cfg);
    feed(&mut store, "t:1|ms\nt:2|ms");
    let f = flush(&mut store, 100);
    let keys: Vec<&str> = f.keys().filter(|k| k.starts_with("t:")).map(|k| k.as_str()).collect();
    assert_eq!(keys, ["t:t.count", "t:t.upper_90"]);
}

#[test]
fn counters_persist_at_zero_and_internals_count() {
    let mut store = store_with(AggregationConfig::default());
    feed(&mut store, "a:1|c\na:2|c|@0.5\nbad\n");
    let f = flush(&mut store, 100);
    assert_eq!(f["c:a"], 5.0);
    assert_eq!(f["c:statsd.metrics_received"], 3.0);
    assert_eq!(f["c:statsd.bad_lines_seen"], 1.0);
    assert_eq!(f["c:statsd.packets_received"], 1.0);
    assert_eq!(f["numStats"], 4.0);
    let f = flush(&mut store, 110);
    assert_eq!(f["c:a"], 0.0);
    // timestamp_lag appears from the second flush.
    assert_eq!(f["g:statsd.timestamp_lag"], 0.0);
    assert_eq!(f["numStats"], 5.0);
}

#[test]
fn delete_idle_stats() {
    let cfg = AggregationConfig {
        delete_counters: true,
        delete_timers: true,
        delete_sets: true,
        delete_gauges: true,
        gauges_max_ttl: 2,
        ..Default::default()
    };
    let mut store = store_with(cfg);
    feed(&mut store, "a:1|c\nt:1|ms\ns:x|s\ng:4|g");
    let f = flush(&mut store, 100);
    assert_eq!(f["numStats"], 4.0 + 3.0);
    let f = flush(&mut store, 110);
    // Counters, timers and sets are gone; the gauge lives two flushes; internals stay.
    assert!(!f.contains_key("c:a") && !f.contains_key("t:t.count") && !f.contains_key("s:s"));
    assert_eq!(f["g:g"], 4.0);
    assert_eq!(f["c:statsd.packets_received"], 0.0);
    let f = flush(&mut store, 120);
    assert!(!f.contains_key("g:g"));
}

#[test]
fn gauges_set_and_delta_across_flushes() {
    let mut store = store_with(AggregationConfig::default());
    feed(&mut store, "g:10|g\ng:+5|g\ng:-2|g");
    assert_eq!(flush(&mut store, 100)["g:g"], 13.0);
    feed(&mut store, "g:+0.1|g\ng:+0.2|g");
    assert_eq!(flush(&mut store, 110)["g:g"], 13.0 + 0.1 + 0.2);
    feed(&mut store, "h:-3|g");
    assert_eq!(flush(&mut store, 120)["g:h"], -3.0);
}

#[test]
fn later_gauge_set_wins_across_shards() {
    let mut store = store_with(AggregationConfig::default());
    let mut a = Shard::new(10);
    let mut b = Shard::new(10);
    b.clock = 2;
    Parser::new(true).parse_packet(b"g:2|g", &mut b);
    a.clock = 1;
    Parser::new(true).parse_packet(b"g:1|g", &mut a);
    store.merge(&mut b);
    store.merge(&mut a);
    assert_eq!(flush(&mut store, 100)["g:g"], 2.0);
}

#[test]
fn max_series_bounds_the_store() {
    let mut store = store_with(AggregationConfig { max_series: 5, ..Default::default() });
    feed(&mut store, "a:1|c\nb:1|c\nc:1|c\nd:1|c");
    assert_eq!(store.series(), 5);
    assert_eq!(store.dropped_max_series, 2);
}

#[test]
fn delete_commands() {
    let mut store = store_with(AggregationConfig::default());
    feed(&mut store, "app.a:1|c\napp.b:1|c\nother:1|c");
    let mut deleted = store.delete_counters("app.*");
    deleted.sort();
    assert_eq!(deleted, ["app.a", "app.b"]);
    assert_eq!(store.delete_counters("other"), ["other"]);
    assert!(store.delete_counters("nothing").is_empty());
}

/// Flushes `agent` and hands what changed to `aggregator`, as the forward hop does (gauge
/// stamps stand in for wall-clock times).
fn forward(agent: &mut Store, aggregator: &mut Store, ts: i64) {
    agent.flush(ts, |v| {
        for (k, val) in v.changed_counters() {
            assert!(aggregator.add_forwarded_counter(k, val));
        }
        for (k, change) in v.changed_gauges() {
            match change {
                GaugeChange::Delta(d) => assert!(aggregator.add_forwarded_gauge(k, d, true, 0)),
                GaugeChange::Set { value, stamp } => {
                    assert!(aggregator.add_forwarded_gauge(k, value, false, stamp as i64))
                }
            }
        }
        for (k, d) in v.changed_sets() {
            assert!(aggregator.add_forwarded_set(k, &d));
        }
        for (k, t) in v.changed_timers() {
            assert!(aggregator.add_forwarded_timer(k, &t));
        }
    });
}

#[test]
fn forwarded_state_merges_like_one_statsd() {
    let cfg = AggregationConfig {
        percentiles: vec![90.0, 99.0, -10.0],
        histograms: vec![HistogramRule { metric: "lat".into(), bins: vec![10.0, 100.0, f64::INFINITY] }],
        ..AggregationConfig::default()
    };
    let mut single = store_with(cfg.clone());
    let mut aggregator = store_with(cfg.clone());
    let mut agents: Vec<Store> = (0..3).map(|_| store_with(cfg.clone())).collect();
    let mut all_lat = Vec::new();
    for (i, agent) in agents.iter_mut().enumerate() {
        let mut text = String::new();
        for j in 0..2000 {
            let v = ((i * 7919 + j * 104_729) % 1000) as f64 / 3.0 + i as f64 * 50.0;
            all_lat.push(v);
            text.push_str(&format!("lat:{v}|ms\nhits:1|c\nusers:u{}|s\n", j % (300 + i * 100)));
        }
        text.push_str("rate:1|c|@0.5\nq:+3|g\n");
        feed(agent, &text);
        feed(&mut single, &text);
    }
    // A set gauge on one agent, after the others' deltas.
    feed(&mut agents[1], "temp:21|g\n");
    feed(&mut single, "temp:21|g\n");
    for agent in agents.iter_mut() {
        forward(agent, &mut aggregator, 100);
    }
    let got = flush(&mut aggregator, 100);
    let want = flush(&mut single, 100);
    for exact in [
        "c:hits",
        "c:rate",
        "g:q",
        "g:temp",
        "t:lat.count",
        "t:lat.count_ps",
        "t:lat.upper",
        "t:lat.lower",
        "t:lat.count_90",
        "t:lat.count_top10",
    ] {
        assert_eq!(got.get(exact), want.get(exact), "{exact}");
    }
    for close in ["t:lat.sum", "t:lat.mean", "t:lat.sum_squares", "t:lat.std"] {
        let (g, w) = (got[close], want[close]);
        assert!((g - w).abs() <= 1e-9 * w.abs().max(1.0), "{close}: {g} vs {w}");
    }
    // Sets of up to 1024 members merge exactly.
    assert_eq!(got["s:users"], 500.0);
    // Percentiles and the median: within the sketch's 1 %.
    for stat in ["t:lat.upper_90", "t:lat.upper_99", "t:lat.lower_top10", "t:lat.median"] {
        let (g, w) = (got[stat], want[stat]);
        assert!((g - w).abs() <= 0.01 * w.abs(), "{stat}: {g} vs {w}");
    }
    // Histogram bins count every sample once.
    let bins: f64 = ["bin_10", "bin_100", "bin_inf"].iter().map(|b| got[&format!("t:lat.histogram.{b}")]).sum();
    assert_eq!(bins, all_lat.len() as f64);
    // The next interval starts empty on both sides.
    let after = flush(&mut aggregator, 110);
    assert_eq!(after["c:hits"], 0.0);
    assert_eq!(after["t:lat.count"], 0.0);
}

#[test]
fn an_agent_forwards_only_what_changed_and_no_internal_counters() {
    let mut agent = store_with(AggregationConfig::default());
    feed(&mut agent, "a:1|c\ng:5|g\n");
    agent.flush(10, |v| {
        assert_eq!(v.changed_counters().map(|(k, _)| k.to_vec()).collect::<Vec<_>>(), vec![b"a".to_vec()]);
        assert_eq!(v.changed_gauges().count(), 1);
    });
    // Nothing new: nothing to forward, though Etsy still flushes the counter at 0.
    feed(&mut agent, "");
    agent.flush(20, |v| {
        assert_eq!(v.changed_counters().count(), 0);
        assert_eq!(v.changed_gauges().count(), 0, "timestamp_lag is internal");
        assert_eq!(v.changed_timers().count() + v.changed_sets().count(), 0);
    });
    feed(&mut agent, "g:-2|g\ng:+1|g\n");
    agent.flush(30, |v| {
        let changes: Vec<_> = v.changed_gauges().collect();
        assert_eq!(changes, vec![(&b"g"[..], GaugeChange::Delta(-1.0))]);
    });
}

#[test]
fn past_the_sample_cap_moments_stay_exact() {
    let cfg = AggregationConfig { max_timer_samples: 10, max_set_members: 5, ..Default::default() };
    let mut store = store_with(cfg);
    // Three shards of 8 values: the first two fit (16 > 10? no: 8, then 8 more is 16 > 10, so
    // the second is summarised), the third too.
    for shard in 0..3 {
        let text: String = (0..8).map(|i| format!("t:{}|ms\nu:{shard}-{i}|s\n", shard * 8 + i)).collect();
        feed(&mut store, &text);
    }
    let f = flush(&mut store, 1);
    assert_eq!(f["t:t.count"], 24.0);
    assert_eq!(f["t:t.sum"], (0..24).sum::<i32>() as f64);
    assert_eq!(f["t:t.lower"], 0.0);
    assert_eq!(f["t:t.upper"], 23.0);
    assert_eq!(f["t:t.mean"], 11.5);
    // Percentiles from the sketch: within 1 % of the exact 21.
    assert!((f["t:t.upper_90"] - 21.0).abs() <= 0.21 + 1e-9, "{}", f["t:t.upper_90"]);
    // 24 distinct members, past the exact cap of 5: estimated within 2 %.
    assert!((f["s:u"] - 24.0).abs() <= 0.5, "{}", f["s:u"]);
    // The next interval starts exact again.
    feed(&mut store, "t:1|ms\nt:2|ms\nu:a|s\n");
    let f = flush(&mut store, 2);
    assert_eq!((f["t:t.count"], f["t:t.upper_90"], f["s:u"]), (2.0, 2.0, 1.0));
}

/// An agent forwards what a timer received past `max_timer_samples` too: the interval's
/// summary (what `changed_timers` gives the forward batch) holds every value, not only the
/// ones kept raw.
#[test]
fn a_forwarded_summary_holds_the_values_past_the_sample_cap() {
    let mut store = store_with(AggregationConfig { max_timer_samples: 10, ..Default::default() });
    for shard in 0..3 {
        let text: String = (0..8).map(|i| format!("t:{}|ms\n", shard * 8 + i)).collect();
        feed(&mut store, &text);
    }
    let (count, sum) = store.flush(1, |v| {
        let (_, s) = v.changed_timers().find(|(k, _)| *k == b"t").expect("t changed");
        (s.count, s.sum)
    });
    assert_eq!((count, sum), (24.0, (0..24).sum::<i32>() as f64));
}

#[test]
fn memory_is_estimated_in_bytes() {
    let mut store = store_with(AggregationConfig::default());
    let empty = store.memory_bytes();
    feed(&mut store, &(0..1000).map(|i| format!("key.number.{i}:1|c\n")).collect::<String>());
    let grown = store.memory_bytes() - empty;
    assert!((1000 * 128..1000 * 160).contains(&grown), "{grown}");
    assert_eq!(store.shard_limits(77).memory_allowance, 77);
}

#[test]
fn max_series_is_one_bound_for_the_store_and_all_its_shards() {
    let mut store = store_with(AggregationConfig { max_series: 100, ..Default::default() });
    let held = store.series();
    let (mut a, mut b) = (store.new_shard(u64::MAX), store.new_shard(u64::MAX));
    for (name, shard) in [("a", &mut a), ("b", &mut b)] {
        let text: String = (0..100).map(|i| format!("{name}.{i}:1|c\n")).collect();
        Parser::new(true).parse_packet(text.as_bytes(), shard);
    }
    assert_eq!(a.series() + b.series(), 100 - held, "shards share what max_series leaves");
    store.merge(&mut a);
    store.merge(&mut b);
    store.refill_budget();
    assert_eq!(store.series(), 100);
    let mut c = store.new_shard(u64::MAX);
    c.set_known(store.known_series().unwrap());
    Parser::new(true).parse_packet(b"new:1|c\na.0:1|c", &mut c);
    assert_eq!(c.series(), 1, "a series the store holds still gets in; a new one does not");
    assert_eq!(c.dropped_max_series, 1);
}

/// The since-start totals Prometheus reads count a value as soon as it is merged (a scrape
/// between flushes sees it), and a flush does not count it again: local values, values
/// summarised past the sample cap, and an agent's forwarded summary alike.
#[test]
fn timer_totals_count_values_at_merge_once() {
    let cfg = AggregationConfig { max_timer_samples: 4, cumulative_sketches: true, ..Default::default() };
    let mut store = store_with(cfg.clone());
    let totals = |s: &Store| {
        let t = s.timers().find(|(k, _)| *k == b"t").map(|(_, t)| t).expect("timer t");
        (t.total_count, t.total_sum, t.cumulative.as_ref().map_or(0, |c| c.count()))
    };
    feed(&mut store, "t:1|ms\nt:2|ms|@0.5\n");
    assert_eq!(totals(&store), (3.0, 3.0, 2), "merged, not yet flushed");
    // Past the cap of 4: this shard's values are summarised, still counted once.
    feed(&mut store, "t:10|ms\nt:20|ms\nt:30|ms\n");
    assert_eq!(totals(&store), (6.0, 63.0, 5));
    flush(&mut store, 1);
    assert_eq!(totals(&store), (6.0, 63.0, 5), "the flush adds nothing");
    // An aggregator: a forwarded summary counts when it arrives.
    let mut agent = store_with(cfg.clone());
    feed(&mut agent, "t:5|ms\nt:7|ms\n");
    forward(&mut agent, &mut store, 2);
    assert_eq!(totals(&store), (8.0, 75.0, 7));
    flush(&mut store, 3);
    assert_eq!(totals(&store), (8.0, 75.0, 7));
}

/// With `sent_names`, a name sanitising changed is kept as sent (once, whatever the tags),
/// for the Prometheus mapping; Graphite's keys stay Etsy's. It goes with its series.
#[test]
fn names_as_sent_are_kept_beside_the_sanitised_keys() {
    let rule = crate::KeyRule { sent_names: true, ..crate::KeyRule::default() };
    let mut store = Store::new(AggregationConfig { delete_counters: true, ..AggregationConfig::default() });
    let mut shard = Shard::new(100);
    crate::Parser::with_rule(rule)
        .parse_packet(b"get/users ok:1|c\nget/users ok:2|c|#zone:a\nclean.name:1|c\nother:1|g", &mut shard);
    store.merge(&mut shard);
    assert!(store.counters().any(|(k, _)| k == b"get-users_ok"));
    assert_eq!(store.sent_name(b"get-users_ok"), Some(&b"get/users ok"[..]));
    assert_eq!(store.sent_name(b"clean.name"), None, "clean names are not kept twice");
    // Without the rule's word nothing is kept.
    let mut plain = Store::new(AggregationConfig::default());
    let mut shard = Shard::new(100);
    crate::Parser::new(true).parse_packet(b"get/users ok:1|c", &mut shard);
    plain.merge(&mut shard);
    assert_eq!(plain.sent_name(b"get-users_ok"), None);
    // The counters go at the flush (delete_counters): their names as sent go too.
    store.flush(1, |_| ());
    assert_eq!(store.sent_name(b"get-users_ok"), None);
}

mod series_budgets {
    use super::*;
    use crate::budget::{BudgetLimits, Sender, SeriesBudgets};
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::Arc;

    fn sender(last: u8) -> Sender {
        Sender::Address(IpAddr::V4(Ipv4Addr::new(198, 18, 0, last)))
    }

    fn budgeted(limits: BudgetLimits, cfg: AggregationConfig) -> (Store, Arc<SeriesBudgets>) {
        let budgets = Arc::new(SeriesBudgets::new(limits));
        let mut store = Store::new(cfg);
        store.set_series_budgets(Some(budgets.clone()));
        (store, budgets)
    }

    fn feed_from(store: &mut Store, from: Sender, text: &str) -> Shard {
        let mut shard = store.new_shard(u64::MAX);
        shard.sender = from;
        // As the receive path does: through the folding sink when values are folded.
        if shard.folding() {
            Parser::new(true).parse_packet(text.as_bytes(), &mut crate::shard::Folding(&mut shard));
        } else {
            Parser::new(true).parse_packet(text.as_bytes(), &mut shard);
        }
        shard
    }

    /// One sender making a thousand series is held to its hundred exactly; another's new
    /// series all arrive.
    #[test]
    fn a_sender_is_held_to_its_budget_and_others_are_not() {
        let limits =
            BudgetLimits { series_per_sender: 100, new_series_per_minute: 0, fold: false, loopback_as_one: false };
        let (mut store, budgets) = budgeted(limits, AggregationConfig::default());
        let flood: String = (0..1000).map(|i| format!("req.{i}:1|c\n")).collect();
        let mut shard = feed_from(&mut store, sender(7), &flood);
        assert_eq!(shard.dropped_series_budget, 900);
        store.merge(&mut shard);
        let calm: String = (0..50).map(|i| format!("calm.{i}:1|c\n")).collect();
        let mut shard = feed_from(&mut store, sender(8), &calm);
        store.merge(&mut shard);
        let names: Vec<String> = store.counters().map(|(k, _)| String::from_utf8_lossy(k).into_owned()).collect();
        assert_eq!(names.iter().filter(|n| n.starts_with("req.")).count(), 100);
        assert_eq!(names.iter().filter(|n| n.starts_with("calm.")).count(), 50);
        assert_eq!((budgets.get(sender(7)).live, budgets.get(sender(7)).refused), (100, 900));
        assert_eq!(budgets.get(sender(8)).live, 50);
        assert_eq!(store.dropped_series_budget, 900);
        // Values of series it already has still count: the shard knows the store's series
        // (the flusher tells every shard after each flush).
        let known = store.known_series().expect("series changed");
        let mut shard = store.new_shard(u64::MAX);
        shard.sender = sender(7);
        shard.set_known(known);
        Parser::new(true).parse_packet(b"req.3:5|c\n", &mut shard);
        assert_eq!(shard.dropped_series_budget, 0);
        store.merge(&mut shard);
        assert_eq!(store.counters().find(|(k, _)| *k == b"req.3").unwrap().1.value, 6.0);
        assert_eq!(budgets.top(1)[0].0, sender(7));
    }

    /// Two receive threads making the same series in one interval: one owner, one charge.
    #[test]
    fn a_series_two_shards_made_is_charged_once() {
        let limits =
            BudgetLimits { series_per_sender: 10, new_series_per_minute: 0, fold: false, loopback_as_one: false };
        let (mut store, budgets) = budgeted(limits, AggregationConfig::default());
        let mut a = feed_from(&mut store, sender(1), "same:1|c\n");
        let mut b = feed_from(&mut store, sender(2), "same:1|c\n");
        store.merge(&mut a);
        store.merge(&mut b);
        assert_eq!((budgets.get(sender(1)).live, budgets.get(sender(2)).live), (1, 0));
    }

    /// Series the store lets go give their charge back.
    #[test]
    fn deleted_series_give_their_charge_back() {
        let limits =
            BudgetLimits { series_per_sender: 10, new_series_per_minute: 0, fold: false, loopback_as_one: false };
        let cfg = AggregationConfig { delete_counters: true, delete_timers: true, ..Default::default() };
        let (mut store, budgets) = budgeted(limits, cfg);
        let mut shard = feed_from(&mut store, sender(3), "a:1|c\nb:1|c\nt:4|ms\n");
        store.merge(&mut shard);
        assert_eq!(budgets.get(sender(3)).live, 3);
        store.flush(1, |_| ());
        assert_eq!(budgets.get(sender(3)).live, 0);
    }

    /// Series deleted from the console (`delcounters`, `deltimers`) give their charge back too,
    /// and the store answers who made a series and when.
    #[test]
    fn series_deleted_from_the_console_give_their_charge_back() {
        let limits =
            BudgetLimits { series_per_sender: 10, new_series_per_minute: 0, fold: false, loopback_as_one: false };
        let (mut store, budgets) = budgeted(limits, AggregationConfig::default());
        store.set_clock(1_800_000_000);
        let mut shard = feed_from(&mut store, sender(4), "app.a:1|c\napp.b:1|c\nother:1|c\nt:4|ms\n");
        store.merge(&mut shard);
        assert_eq!(budgets.get(sender(4)).live, 4);
        let owner = store.owner(crate::Kind::Counter, b"app.a").expect("an owner");
        assert_eq!((owner.sender, owner.first_seen), (sender(4), 1_800_000_000));
        assert_eq!(store.delete_counters("app.*").len(), 2);
        assert_eq!(store.delete_timers("t"), vec!["t".to_string()]);
        assert_eq!(budgets.get(sender(4)).live, 1);
        assert_eq!(store.top_prefixes_by_sender(&[sender(4)], 5)[0], vec![("other".to_string(), 1)]);
    }

    /// Folded, a sender's series past its budget go to one overflow series per metric: every
    /// value is still counted, so totals (what Graphite sums) stay exact.
    #[test]
    fn folded_series_keep_the_totals() {
        let limits =
            BudgetLimits { series_per_sender: 3, new_series_per_minute: 0, fold: true, loopback_as_one: false };
        let (mut store, budgets) = budgeted(limits, AggregationConfig::default());
        let lines: String = (0..10).map(|i| format!("hits:{}|c|#req:{i}\nlat:{i}|ms|#req:{i}\n", i + 1)).collect();
        let mut shard = feed_from(&mut store, sender(9), &lines);
        // Admitted: hits;req=0, lat;req=0, hits;req=1. Folded: 8 counters' and 9 timers' values.
        assert_eq!(shard.folded_series_budget, 17);
        store.merge(&mut shard);
        let total: f64 = store.counters().filter(|(k, _)| k.starts_with(b"hits")).map(|(_, c)| c.value).sum();
        assert_eq!(total, 55.0, "every increment counted");
        let overflow = store.counters().find(|(k, _)| *k == b"hits;overflow=true").unwrap().1.value;
        assert_eq!(overflow, (3..=10).sum::<i32>() as f64);
        let timer = store.timers().find(|(k, _)| *k == b"lat;overflow=true").unwrap().1;
        assert_eq!(timer.values.len(), 9);
        assert_eq!(budgets.get(sender(9)).live, 3);
        assert_eq!(store.dropped_series_budget, 0);
    }

    /// On an aggregator, the series an agent forwards are charged to the agent.
    #[test]
    fn forwarded_series_are_charged_to_their_agent() {
        let limits =
            BudgetLimits { series_per_sender: 5, new_series_per_minute: 0, fold: false, loopback_as_one: false };
        let (mut store, budgets) = budgeted(limits, AggregationConfig::default());
        let (web1, web2) = (budgets.name("web-1"), budgets.name("web-2"));
        store.set_forward_sender(web1);
        let taken = (0..8).filter(|i| store.add_forwarded_counter(format!("req.{i}").as_bytes(), 1.0)).count();
        assert_eq!(taken, 5);
        assert!(store.add_forwarded_counter(b"req.1", 2.0), "a series it has still takes values");
        store.set_forward_sender(web2);
        assert!((0..5).all(|i| store.add_forwarded_counter(format!("other.{i}").as_bytes(), 1.0)));
        assert_eq!((budgets.get(web1).live, budgets.get(web1).refused, budgets.get(web2).live), (5, 3, 5));
        assert_eq!(budgets.describe(web1), "web-1");
        assert_eq!(store.dropped_series_budget, 3);
    }

    /// New series a minute: the eleventh in the minute is refused.
    #[test]
    fn new_series_a_minute() {
        let limits =
            BudgetLimits { series_per_sender: 0, new_series_per_minute: 10, fold: false, loopback_as_one: false };
        let (mut store, budgets) = budgeted(limits, AggregationConfig::default());
        let lines: String = (0..25).map(|i| format!("n{i}:1|g\n")).collect();
        let mut shard = feed_from(&mut store, sender(4), &lines);
        store.merge(&mut shard);
        assert_eq!(store.gauges().count(), 10);
        assert_eq!(budgets.get(sender(4)).refused, 15);
    }
}
