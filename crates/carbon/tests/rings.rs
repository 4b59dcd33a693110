//! The ring against graphite-carbon's own: `fixtures/rings.txt` holds, for several clusters, the
//! nodes Carbon's `ConsistentHashRing` and router pick for each metric (written by
//! `fixtures/make_rings.py` from Debian's graphite-carbon 1.1.7; rerun it to check another
//! version).

use floodgate_carbon::{Destination, HashType, Ring};

#[test]
fn every_metric_lands_where_carbon_puts_it() {
    let text = include_str!("fixtures/rings.txt");
    let mut ring = None;
    let (mut replication, mut diverse, mut checked, mut cases) = (1, true, 0, 0);
    for line in text.lines() {
        if let Some(header) = line.strip_prefix("# ") {
            let mut words = header.split(' ');
            let hash: HashType = words.next().unwrap().parse().unwrap();
            replication = words.next().unwrap().parse().unwrap();
            diverse = words.next().unwrap() == "1";
            let dests: Vec<Destination> = words.map(|w| w.parse().unwrap()).collect();
            ring = Some(Ring::new(&dests, hash).unwrap());
            cases += 1;
            continue;
        }
        let (name, nodes) = line.split_once('\t').unwrap();
        let want: Vec<usize> = nodes.split(',').filter(|n| !n.is_empty()).map(|n| n.parse().unwrap()).collect();
        let ring = ring.as_ref().unwrap();
        assert_eq!(ring.destinations(name.as_bytes(), replication, diverse), want, "{name:?} ({:?})", ring.hash_type());
        checked += 1;
    }
    assert_eq!(cases, 7);
    assert!(checked > 5000, "{checked}");
}
