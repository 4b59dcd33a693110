//! Real Carbon: Debian's carbon-cache on loopback with a temporary storage directory and
//! 1-second retention; floodgate flushes to it (plaintext and pickle) and the Whisper files
//! are read back with `whisper-fetch`. Then a cluster of three: floodgate's own sharding
//! checked against graphite-carbon's router and Debian's carbon-c-relay.

use std::io::Write;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::*;

fn flush_to_carbon(pickle: bool) {
    let carbon = Carbon::start();
    let (port, protocol) = if pickle { (carbon.pickle_port, "pickle") } else { (carbon.line_port, "plaintext") };
    let fg = Floodgate::start(
        "flush_interval = \"1s\"\npercentiles = [90]",
        &format!("[graphite]\naddress = \"127.0.0.1:{port}\"\nprotocol = \"{protocol}\"\n"),
    );
    // Three bursts, each in its own flush and so its own Whisper point.
    let mut total = 0;
    for burst in 1..=3 {
        let mut d = String::new();
        for _ in 0..burst * 10 {
            d.push_str("carbon.hits:1|c\n");
            total += 1;
        }
        d.push_str(&format!("carbon.temp:{}|g\n", burst * 10));
        fg.send_udp(d.as_bytes());
        // The burst is in Whisper before the next one is sent, so each lands in its own flush.
        carbon.wait("stats_counts.carbon.hits", |p| p.iter().sum::<f64>() == total as f64);
    }
    fg.send_udp(b"carbon.lat:10|ms\ncarbon.lat:20|ms\ncarbon.lat:30|ms\ncarbon.lat:40|ms\ncarbon.users:a|s\ncarbon.users:b|s\ncarbon.users:c|s\ncarbon.users:a|s");

    let hits = carbon.wait("stats_counts.carbon.hits", |p| p.iter().sum::<f64>() == total as f64);
    assert_eq!(hits.iter().filter(|v| **v > 0.0).count(), 3, "one point per burst: {hits:?}");
    // The per-second rate for a 1 s interval equals the count.
    carbon.wait("stats.carbon.hits", |p| p.iter().sum::<f64>() == total as f64);
    carbon.wait("stats.gauges.carbon.temp", |p| p.last() == Some(&30.0));
    carbon.wait("stats.timers.carbon.lat.upper", |p| p.contains(&40.0));
    carbon.wait("stats.timers.carbon.lat.upper_90", |p| p.contains(&40.0));
    carbon.wait("stats.timers.carbon.lat.mean", |p| p.contains(&25.0));
    carbon.wait("stats.timers.carbon.lat.count", |p| p.iter().sum::<f64>() == 4.0);
    carbon.wait("stats.sets.carbon.users.count", |p| p.contains(&3.0));
    carbon.wait("statsd.numStats", |p| !p.is_empty());
}

#[test]
fn plaintext_to_real_carbon() {
    flush_to_carbon(false);
}

#[test]
fn pickle_to_real_carbon() {
    flush_to_carbon(true);
}

/// graphite-carbon's own router (`carbon.routers.ConsistentHashingRouter`, from the installed
/// package, given the settings Carbon's relay reads): for each name, the indexes of the
/// destinations it goes to.
const CARBON_ROUTER: &str = r#"
import json, sys
from carbon.routers import ConsistentHashingRouter
from carbon.util import parseDestinations
req = json.load(sys.stdin)
class Settings(object):
    REPLICATION_FACTOR = req["replication"]
    DIVERSE_REPLICAS = True
    ROUTER_HASH_TYPE = req["hashing"]
router = ConsistentHashingRouter(Settings)
dests = parseDestinations(req["destinations"])
for d in dests:
    router.addDestination(d)
print(json.dumps([[dests.index(d) for d in router.getDestinations(n)] for n in req["names"]]))
"#;

/// Three carbon-caches, each on its own loopback address (Carbon's ring is keyed by host and
/// instance), started side by side.
fn three_caches() -> Vec<Carbon> {
    let starting: Vec<_> =
        ["127.0.0.1", "127.0.0.2", "127.0.0.3"].map(|ip| std::thread::spawn(move || Carbon::start_on(ip))).into();
    starting.into_iter().map(|t| t.join().unwrap()).collect()
}

/// A Carbon cluster as `DESTINATIONS` lists it: the caches' line or pickle ports, with
/// `instances`.
fn destinations(caches: &[Carbon], instances: &[String], pickle: bool) -> Vec<String> {
    caches
        .iter()
        .zip(instances)
        .map(|(c, instance)| format!("{}:{}:{instance}", c.ip, if pickle { c.pickle_port } else { c.line_port }))
        .collect()
}

/// Instance names for the three caches: a, b, c, or the first aN, bN, cN whose ring has no
/// two entries on one position. carbon-c-relay 3.7 does not move a colliding entry as Carbon
/// does (floodgate follows Carbon; `Ring::collisions` and the start-up warning cover it), so
/// the relay is compared on a ring without one.
fn instances(hashing: &str, without_collision: bool) -> Vec<String> {
    let hash: floodgate_carbon::HashType = hashing.parse().unwrap();
    (0..)
        .map(|n| ["a", "b", "c"].map(|i| if n == 0 { i.to_string() } else { format!("{i}{n}") }).to_vec())
        .find(|names| {
            let ring: Vec<floodgate_carbon::Destination> = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
                .iter()
                .zip(names)
                .map(|(ip, i)| format!("{ip}:2003:{i}").parse().unwrap())
                .collect();
            !without_collision || floodgate_carbon::Ring::new(&ring, hash).unwrap().collisions().is_empty()
        })
        .unwrap()
}

/// Where Carbon's router puts each of `names`.
fn carbon_routes(hashing: &str, replication: usize, destinations: &[String], names: &[String]) -> Vec<Vec<usize>> {
    let request = serde_json::json!({"hashing": hashing, "replication": replication,
                                     "destinations": destinations, "names": names});
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", CARBON_ROUTER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("Debian's python3 (graphite-carbon's interpreter)");
    child.stdin.take().unwrap().write_all(request.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "carbon's router failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every Whisper file on every cache is on a node Carbon's router picks for it; returns how
/// many files were checked.
fn assert_placed_as_carbon_places(
    caches: &[Carbon],
    hashing: &str,
    replication: usize,
    destinations: &[String],
) -> usize {
    let held: Vec<Vec<String>> = caches.iter().map(Carbon::metrics).collect();
    let mut names: Vec<String> = held.iter().flatten().cloned().collect();
    names.sort();
    names.dedup();
    let routes = carbon_routes(hashing, replication, destinations, &names);
    let mut files = 0;
    for (node, metrics) in held.iter().enumerate() {
        for metric in metrics {
            let route = &routes[names.binary_search(metric).unwrap()];
            assert!(route.contains(&node), "{metric} is on node {node}; Carbon's router puts it on {route:?}");
            files += 1;
        }
    }
    files
}

/// carbon-c-relay (Debian's) in front of the caches, with the same ring.
struct Relay {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Relay {
    fn start(hashing: &str, replication: usize, caches: &[Carbon], instances: &[String]) -> Relay {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let members: String =
            caches.iter().zip(instances).map(|(c, i)| format!("        {}:{}={i}\n", c.ip, c.line_port)).collect();
        let conf = dir.path().join("relay.conf");
        std::fs::write(
            &conf,
            format!(
                "listen\n    type linemode\n        127.0.0.1:{port} proto tcp\n    ;\n\
                 cluster caches\n    {hashing} replication {replication}\n{members}    ;\n\
                 match * send to caches stop;\n"
            ),
        )
        .unwrap();
        // -s: submission mode, no statistics of its own in the stream.
        let child = Command::new(require_tool("carbon-c-relay"))
            .args(["-s", "-f"])
            .arg(&conf)
            .arg("-l")
            .arg(dir.path().join("relay.log"))
            .spawn()
            .expect("start carbon-c-relay");
        let relay = Relay { child, port, _dir: dir };
        wait_for("carbon-c-relay listening", Duration::from_secs(30), || {
            TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
        });
        relay
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Counters `<prefix>.m1` .. `.m30` with value `i` each: their Graphite names and values.
fn counters(prefix: &str) -> (String, Vec<(String, f64)>) {
    let mut lines = String::new();
    let mut want = Vec::new();
    for i in 1..=30 {
        lines.push_str(&format!("{prefix}.m{i}:{i}|c\n"));
        want.push((format!("stats_counts.{prefix}.m{i}"), i as f64));
        want.push((format!("stats.{prefix}.m{i}"), i as f64)); // a 1 s interval: the rate is the count
    }
    (lines, want)
}

/// floodgate shards over three real carbon-caches; every metric's Whisper file is on exactly
/// the nodes graphite-carbon's router picks, with its whole value on each. With `relay`,
/// Debian's carbon-c-relay in front of the same caches, with the same ring, puts its copy of
/// the traffic on the same nodes; without, the ring has a collision (carbon_ch with instances
/// a, b, c), which floodgate resolves as Carbon does.
fn cluster(hashing: &str, replication: usize, pickle: bool, relay: bool) {
    let caches = three_caches();
    let instances = instances(hashing, relay);
    let direct = destinations(&caches, &instances, pickle);
    // The ring is Carbon's for line-port and pickle-port lists alike (ports are not in the key).
    let ring = destinations(&caches, &instances, false);
    let parsed: Vec<floodgate_carbon::Destination> = ring.iter().map(|d| d.parse().unwrap()).collect();
    let collisions = floodgate_carbon::Ring::new(&parsed, hashing.parse().unwrap()).unwrap().collisions().len();
    assert_eq!(collisions == 0, relay || hashing != "carbon_ch", "{ring:?}: {collisions} collisions");
    let protocol = if pickle { "pickle" } else { "plaintext" };
    let list = direct.iter().map(|d| format!("\"{d}\"")).collect::<Vec<_>>().join(", ");
    let fg = Floodgate::start(
        "flush_interval = \"1s\"",
        &format!(
            "[graphite]\ndestinations = [{list}]\nhashing = \"{hashing}\"\nreplication = {replication}\nprotocol = \"{protocol}\"\n"
        ),
    );
    let (lines, mut want) = counters("direct");
    fg.send_udp(lines.as_bytes());
    let relayed = relay.then(|| {
        let relay = Relay::start(hashing, replication, &caches, &instances);
        let via_relay = Floodgate::start(
            "flush_interval = \"1s\"",
            &format!("[graphite]\naddress = \"127.0.0.1:{}\"\n", relay.port),
        );
        let (lines, relayed) = counters("relay");
        via_relay.send_udp(lines.as_bytes());
        want.extend(relayed);
        (relay, via_relay)
    });

    let names: Vec<String> = want.iter().map(|(n, _)| n.clone()).collect();
    let routes = carbon_routes(hashing, replication, &ring, &names);
    for ((name, value), route) in want.iter().zip(&routes) {
        assert_eq!(route.len(), replication, "{name}: {route:?}");
        for node in route {
            caches[*node].wait(name, |p| p.iter().sum::<f64>() == *value);
        }
        for (node, cache) in caches.iter().enumerate().filter(|(n, _)| !route.contains(n)) {
            assert!(cache.fetch(name).is_empty(), "{name} is on node {node} too; Carbon's router puts it on {route:?}");
        }
    }
    let files = assert_placed_as_carbon_places(&caches, hashing, replication, &ring);
    assert!(files >= want.len() * replication, "{files} files");
    for d in &direct {
        assert_eq!(fg.sample("floodgate_sink_dropped_payloads_total", &[&format!("destination=\"{d}\"")]), 0.0);
        assert_eq!(fg.sample("floodgate_sink_reachable", &[&format!("destination=\"{d}\"")]), 1.0);
    }
    drop(relayed);
}

#[test]
fn a_carbon_cluster_sharded_by_carbon_ch_as_carbon_and_carbon_c_relay_shard_it() {
    cluster("carbon_ch", 1, false, true);
}

#[test]
fn a_carbon_cluster_with_two_replicas_as_carbon_and_carbon_c_relay_place_them() {
    cluster("carbon_ch", 2, false, true);
}

#[test]
fn a_carbon_cluster_over_pickle_whose_ring_has_a_collision_resolved_as_carbon_does() {
    cluster("carbon_ch", 2, true, false);
}

#[test]
fn a_carbon_cluster_sharded_by_fnv1a_ch_with_two_replicas() {
    cluster("fnv1a_ch", 2, false, true);
}

/// One cache stopped: its share waits in its own queue (counted, never re-hashed onto the
/// others, which go on receiving theirs) and arrives once it is back, nothing doubled.
#[test]
fn a_stopped_cache_gets_its_share_after_restart_and_nothing_is_doubled() {
    let mut caches = three_caches();
    let ring = destinations(&caches, &instances("carbon_ch", false), false);
    let list = ring.iter().map(|d| format!("\"{d}\"")).collect::<Vec<_>>().join(", ");
    let fg = Floodgate::start("flush_interval = \"1s\"", &format!("[graphite]\ndestinations = [{list}]\n"));
    let (lines, want) = counters("held");
    let names: Vec<String> = want.iter().map(|(n, _)| n.clone()).collect();
    let routes = carbon_routes("carbon_ch", 1, &ring, &names);
    let arrived = |caches: &[Carbon], times: f64| {
        for ((name, value), route) in want.iter().zip(&routes) {
            caches[route[0]].wait(name, |p| p.iter().sum::<f64>() == value * times);
        }
    };
    fg.send_udp(lines.as_bytes());
    arrived(&caches, 1.0);

    let down = 1;
    assert!(routes.iter().any(|r| r[0] == down) && routes.iter().any(|r| r[0] != down), "{routes:?}");
    caches[down].stop();
    fg.send_udp(lines.as_bytes());
    let b = format!("destination=\"{}\"", ring[down]);
    fg.wait_sample("floodgate_sink_reachable", &[&b], |v| v == 0.0);
    fg.wait_sample("floodgate_sink_buffer_payloads", &[&b], |v| v >= 1.0);
    // The others have their share of the second send while one is down.
    for ((name, value), route) in want.iter().zip(&routes).filter(|(_, r)| r[0] != down) {
        caches[route[0]].wait(name, |p| p.iter().sum::<f64>() == value * 2.0);
    }

    caches[down].restart();
    arrived(&caches, 2.0);
    fg.wait_sample("floodgate_sink_buffer_payloads", &[&b], |v| v == 0.0);
    fg.wait_sample("floodgate_sink_reachable", &[&b], |v| v == 1.0);
    assert_eq!(fg.sample("floodgate_sink_dropped_payloads_total", &[&b]), 0.0);
    assert!(fg.sample("floodgate_sink_errors_total", &[&b]) >= 1.0);
    assert_placed_as_carbon_places(&caches, "carbon_ch", 1, &ring);
}

/// The README's Graphite cluster example: `floodgate check` accepts its configuration, and
/// carbon-c-relay, given its relay configuration, routes a metric to the nodes floodgate's
/// ring picks for the same list.
#[test]
fn the_readme_cluster_example_is_valid_for_floodgate_and_carbon_c_relay() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let section = readme.split("### Graphite clusters").nth(1).expect("the section");
    let toml = section.split("```toml\n").nth(1).and_then(|s| s.split("```").next()).expect("its toml block");
    let relay = section.split("  ```\n").nth(1).expect("its relay block");
    let relay: String = relay.lines().map(|l| l.strip_prefix("  ").unwrap_or(l)).collect::<Vec<_>>().join("\n");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("floodgate.toml");
    std::fs::write(&path, toml).unwrap();
    let out = floodgate_check(&path);
    assert!(out.status.success(), "floodgate check: {}", String::from_utf8_lossy(&out.stderr));

    std::fs::write(dir.path().join("relay.conf"), &relay).unwrap();
    let mut child = Command::new(require_tool("carbon-c-relay"))
        .args(["-t", "-f"])
        .arg(dir.path().join("relay.conf"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let names: Vec<String> = (0..50).map(|i| format!("stats_counts.readme.m{i}")).collect();
    let input: String = names.iter().map(|n| format!("{n} 1 1\n")).collect();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "carbon-c-relay -t: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let config: toml::Value = toml::from_str(toml).unwrap();
    let list: Vec<floodgate_carbon::Destination> = config["graphite"]["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().parse().unwrap())
        .collect();
    let ring = floodgate_carbon::Ring::new(&list, floodgate_carbon::HashType::CarbonCh).unwrap();
    assert!(ring.collisions().is_empty(), "the example's ring has a collision");
    // `-t` prints each metric's match with the members it goes to, one per line.
    assert_eq!(text.matches("    * -> ").count(), names.len(), "{text}");
    for (name, block) in names.iter().zip(text.split("    * -> ").skip(1)) {
        assert!(block.starts_with(&format!("{name}\n")), "{block}");
        let relay_hosts: Vec<&str> =
            block.lines().filter_map(|l| l.trim().split(':').next().filter(|h| h.starts_with("10."))).collect();
        let ours: Vec<&str> =
            ring.destinations(name.as_bytes(), 2, true).iter().map(|i| list[*i].host.as_str()).collect();
        assert_eq!(relay_hosts, ours, "{name}");
    }
}
