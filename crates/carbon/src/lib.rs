//! Carbon's consistent hashing: which Graphite node(s) a metric belongs on.
//!
//! An installation that outgrows one carbon-cache runs several. carbon-relay (and
//! carbon-c-relay's `carbon_ch` and `fnv1a_ch` clusters) puts each metric on the nodes a hash
//! ring picks. A sender that shards by itself must pick the same nodes, or every metric's
//! history is split across caches. This crate is that ring, written from graphite-carbon's own
//! `carbon.hashing.ConsistentHashRing` and `carbon.routers.ConsistentHashingRouter` (1.1.x), and
//! Carbon's `DESTINATIONS` syntax ([`Destination`]). The tests compare it with rings computed by
//! the installed graphite-carbon package.
//!
//! How the ring is built, as Carbon builds it:
//! - Each node is its `(server, instance)` pair. It gets 100 positions on a ring of 16-bit
//!   hashes, from a replica key per position:
//!   - `carbon_ch`: Python's `"%s:%d" % ((server, instance), i)`, e.g. `('10.0.0.1', 'a'):0`;
//!   - `fnv1a_ch`: `"%d-%s" % (i, instance)`, the instance alone.
//! - A position already taken moves up by one until it is free. So the order destinations are
//!   listed in matters, as it does for Carbon.
//! - A metric's position is the hash of its name. Its nodes are the ring's entries from the
//!   first at or after that position onwards, skipping nodes already picked.
//! - With `diverse_replicas` (Carbon's default), also skipping servers already picked.
//!
//! No I/O here: the Graphite sink connects to what this picks.

use std::collections::HashSet;
use std::fmt;

use md5::{Digest, Md5};

/// Positions each node takes on the ring (Carbon's `replica_count`).
pub const REPLICAS: usize = 100;

/// The ring's hash (Carbon's `ROUTER_HASH_TYPE`, carbon-c-relay's cluster type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HashType {
    /// The first 16 bits of MD5 (Carbon's default).
    #[default]
    CarbonCh,
    /// 32-bit FNV-1a folded to 16 bits; replica keys name only the instance.
    Fnv1aCh,
}

impl HashType {
    /// The name Carbon's configuration uses.
    pub fn name(self) -> &'static str {
        match self {
            HashType::CarbonCh => "carbon_ch",
            HashType::Fnv1aCh => "fnv1a_ch",
        }
    }

    /// A key's position on the ring (Carbon's `carbonHash`).
    pub fn position(self, key: &[u8]) -> u32 {
        match self {
            HashType::CarbonCh => {
                let digest = Md5::digest(key);
                u32::from(u16::from_be_bytes([digest[0], digest[1]]))
            }
            HashType::Fnv1aCh => {
                let h = fnv1a_32(key);
                (h >> 16) ^ (h & 0xffff)
            }
        }
    }
}

impl std::str::FromStr for HashType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "carbon_ch" => Ok(HashType::CarbonCh),
            "fnv1a_ch" => Ok(HashType::Fnv1aCh),
            other => Err(format!("unknown hashing {other:?}: use \"carbon_ch\" or \"fnv1a_ch\"")),
        }
    }
}

/// 32-bit FNV-1a (Carbon's `fnv32a`, seed 0x811c9dc5). Six lines: not worth a dependency.
fn fnv1a_32(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
}

/// One Carbon destination: `host:port` or `host:port:instance`, an IPv6 host in brackets
/// (`[::1]:2004:a`), as Carbon's `parseDestination` reads it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Destination {
    /// The server, as written (a name or an address).
    pub host: String,
    /// The port (Carbon's pickle or line receiver; floodgate sends the line protocol).
    pub port: u16,
    /// The instance name (`None`: none given). Part of the ring key.
    pub instance: Option<String>,
}

impl Destination {
    /// `host:port`, an IPv6 host in brackets: where to connect.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl TryFrom<String> for Destination {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<Destination> for String {
    fn from(d: Destination) -> String {
        d.to_string()
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.address())?;
        match &self.instance {
            Some(i) => write!(f, ":{i}"),
            None => Ok(()),
        }
    }
}

impl std::str::FromStr for Destination {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let s = text.trim();
        let bad = |why: &str| {
            Err(format!("destination {text:?}: {why} (Carbon's syntax: host:port or host:port:instance, an IPv6 host in brackets)"))
        };
        let (host, rest) = match (s.strip_prefix('['), s.rfind("]:")) {
            (Some(_), Some(b)) => (&s[1..b], &s[b + 2..]),
            _ => match s.split_once(':') {
                Some(parts) => parts,
                None => return bad("no port"),
            },
        };
        let (port, instance) = match rest.split_once(':') {
            Some((p, i)) => (p, Some(i)),
            None => (rest, None),
        };
        if host.is_empty() {
            return bad("no host");
        }
        // The ring key is Python's text of the pair; keep to what it prints as written.
        let plain = |t: &str| t.bytes().all(|b| b.is_ascii_graphic() && b != b'\'' && b != b'"' && b != b'\\');
        if !plain(host) || !instance.is_none_or(plain) {
            return bad("host and instance must be printable ASCII without quotes or backslashes");
        }
        let Ok(port) = port.parse::<u16>() else { return bad("the port is not a number from 0 to 65535") };
        Ok(Destination { host: host.to_string(), port, instance: instance.map(str::to_string) })
    }
}

/// The ring over a list of destinations.
#[derive(Debug, Clone)]
pub struct Ring {
    /// (position, destination index), sorted by position; positions are unique.
    entries: Vec<(u32, usize)>,
    /// Each destination's server, as an index shared by destinations on the same host.
    servers: Vec<usize>,
    hash: HashType,
    /// Positions two destinations' replica keys hashed to: (position, the destination whose
    /// entry Carbon moved up).
    collisions: Vec<(u32, usize)>,
}

impl Ring {
    /// The ring Carbon builds from `destinations`, in their order. Two destinations with the
    /// same host and instance are an error, as in Carbon.
    pub fn new(destinations: &[Destination], hash: HashType) -> Result<Ring, String> {
        let mut seen = HashSet::new();
        for d in destinations {
            if !seen.insert((&d.host, &d.instance)) {
                return Err(format!(
                    "destination {d}: host {} with instance {} is already configured (Carbon keys the ring by host and instance)",
                    d.host,
                    d.instance.as_deref().unwrap_or("(none)")
                ));
            }
        }
        let mut taken = HashSet::new();
        let mut collisions = Vec::new();
        let mut entries = Vec::with_capacity(destinations.len() * REPLICAS);
        for (index, d) in destinations.iter().enumerate() {
            for i in 0..REPLICAS {
                let mut position = hash.position(replica_key(hash, d, i).as_bytes());
                if taken.contains(&position) {
                    collisions.push((position, index));
                }
                while !taken.insert(position) {
                    position += 1;
                }
                entries.push((position, index));
            }
        }
        entries.sort_unstable();
        let servers = destinations
            .iter()
            .map(|d| destinations.iter().position(|o| o.host == d.host).unwrap_or_default())
            .collect();
        Ok(Ring { entries, servers, hash, collisions })
    }

    /// Where two destinations' replica keys hash to the same position: `(position, index)` of
    /// the destination whose entry moved up to the next free one, as Carbon moves it. Routers
    /// that do not move it (carbon-c-relay 3.7 keeps one entry per position) place some
    /// metrics near such a position elsewhere; worth a warning.
    pub fn collisions(&self) -> &[(u32, usize)] {
        &self.collisions
    }

    /// The hash in use.
    pub fn hash_type(&self) -> HashType {
        self.hash
    }

    /// Destinations on the ring.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// True for a ring with no destination.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// The indexes of the destinations `metric` goes to, at most `replication` of them, in
    /// Carbon's order. With `diverse`, at most one destination per host (Carbon's
    /// `DIVERSE_REPLICAS`, on by default). Carbon with one destination and a replication
    /// above 1 sends it the same datapoint twice; this picks it once.
    pub fn destinations(&self, metric: &[u8], replication: usize, diverse: bool) -> Vec<usize> {
        let mut picked = Vec::with_capacity(replication.min(self.len()));
        self.destinations_into(metric, replication, diverse, &mut picked);
        picked
    }

    /// [`Ring::destinations`] into the caller's `picked` (cleared first): no allocation per
    /// metric once it has grown to `replication`.
    pub fn destinations_into(&self, metric: &[u8], replication: usize, diverse: bool, picked: &mut Vec<usize>) {
        picked.clear();
        if self.entries.is_empty() {
            return;
        }
        let position = self.hash.position(metric);
        let len = self.entries.len();
        let mut index = self.entries.partition_point(|(p, _)| *p < position) % len;
        let last = (index + len - 1) % len;
        // As Carbon's get_nodes: from the first entry at or after the position, round the
        // ring, stopping one short of where it started.
        while picked.len() < replication && index != last {
            let node = self.entries[index].1;
            let new_node = !picked.contains(&node);
            let new_server = !diverse || !picked.iter().any(|p| self.servers[*p] == self.servers[node]);
            if new_node && new_server {
                picked.push(node);
            }
            index = (index + 1) % len;
        }
    }
}

/// The key of a destination's `i`th position on the ring.
fn replica_key(hash: HashType, d: &Destination, i: usize) -> String {
    // Python's repr of a string: in single quotes (destinations hold no quote or backslash).
    let repr = |s: &Option<String>| s.as_ref().map_or_else(|| "None".to_string(), |s| format!("'{s}'"));
    match hash {
        HashType::CarbonCh => format!("('{}', {}):{i}", d.host, repr(&d.instance)),
        HashType::Fnv1aCh => format!("{i}-{}", d.instance.as_deref().unwrap_or("None")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(s: &str) -> Destination {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn destinations_parse_as_carbon_reads_them() {
        assert_eq!(dest("10.0.0.1:2004"), Destination { host: "10.0.0.1".into(), port: 2004, instance: None });
        assert_eq!(dest(" c1:2104:a "), Destination { host: "c1".into(), port: 2104, instance: Some("a".into()) });
        assert_eq!(dest("[::1]:2004:b"), Destination { host: "::1".into(), port: 2004, instance: Some("b".into()) });
        assert_eq!(dest("[::1]:2004:b").address(), "[::1]:2004");
        assert_eq!(dest("h:2004:").instance.as_deref(), Some(""));
        for bad in ["h", ":2004", "h:port", "h:70000", "h:2004:it's", "ho\\st:1"] {
            assert!(bad.parse::<Destination>().is_err(), "{bad}");
        }
    }

    #[test]
    fn hashes_are_carbons() {
        // md5("foo") = acbd18db..., fnv1a_32("foo") = 0xa9f37ed7 (published test vectors).
        assert_eq!(HashType::CarbonCh.position(b"foo"), 0xacbd);
        assert_eq!(HashType::Fnv1aCh.position(b"foo"), 0xa9f3 ^ 0x7ed7);
        assert_eq!(replica_key(HashType::CarbonCh, &dest("10.0.0.1:2004:a"), 7), "('10.0.0.1', 'a'):7");
        assert_eq!(replica_key(HashType::CarbonCh, &dest("10.0.0.1:2004"), 0), "('10.0.0.1', None):0");
        assert_eq!(replica_key(HashType::Fnv1aCh, &dest("10.0.0.1:2004:a"), 3), "3-a");
    }

    #[test]
    fn a_collision_moves_the_later_entry_up_and_is_reported() {
        // ('127.0.0.1', 'a'):i and ('127.0.0.3', 'c'):j both hash to 26406 (graphite-carbon
        // puts a there and c at 26407, as its ring printed).
        let ds = [dest("127.0.0.1:2104:a"), dest("127.0.0.2:2204:b"), dest("127.0.0.3:2304:c")];
        let ring = Ring::new(&ds, HashType::CarbonCh).unwrap();
        assert!(ring.collisions().contains(&(26406, 2)), "{:?}", ring.collisions());
        assert!(ring.entries.contains(&(26406, 0)) && ring.entries.contains(&(26407, 2)));
        // A metric at 26352 goes to a, then c (carbon-c-relay 3.7 says a, then b).
        assert_eq!(HashType::CarbonCh.position(b"stats_counts.relay.m1"), 26352);
        assert_eq!(ring.destinations(b"stats_counts.relay.m1", 2, true), vec![0, 2]);
    }

    #[test]
    fn a_duplicate_host_and_instance_is_refused() {
        let e = Ring::new(&[dest("h:1:a"), dest("h:2:a")], HashType::CarbonCh).unwrap_err();
        assert!(e.contains("already configured"), "{e}");
        assert!(Ring::new(&[dest("h:1:a"), dest("h:2:b")], HashType::CarbonCh).is_ok());
    }

    #[test]
    fn replicas_are_distinct_and_diverse_by_host() {
        let ds = [dest("a:1:x"), dest("a:2:y"), dest("b:1:x")];
        let ring = Ring::new(&ds, HashType::CarbonCh).unwrap();
        for i in 0..500 {
            let key = format!("stats.counters.k{i}.count");
            let all = ring.destinations(key.as_bytes(), 3, false);
            assert_eq!(all.len(), 3);
            let diverse = ring.destinations(key.as_bytes(), 3, true);
            assert_eq!(diverse.len(), 2, "two hosts");
            assert_eq!(diverse[0], all[0]);
        }
        let one = Ring::new(&ds[..1], HashType::CarbonCh).unwrap();
        assert_eq!(one.destinations(b"x", 2, false), vec![0]);
        assert!(Ring::new(&[], HashType::CarbonCh).unwrap().destinations(b"x", 1, true).is_empty());
    }
}
