//! Consistent hashing: each aggregator owns [`VNODES`] points on a 64-bit ring; a series goes
//! to the owner of the first point at or after the xxh3-64 hash of its key. Adding an
//! aggregator moves only the keys its new points take (about 1/n of them); the others stay.

/// Points per aggregator: enough that shares differ by a few percent.
pub const VNODES: u32 = 160;

/// A ring over aggregators `0..n`.
#[derive(Debug, Clone)]
pub struct Ring {
    points: Vec<(u64, usize)>,
}

impl Ring {
    /// The ring of the named aggregators (their configured addresses): the same names give the
    /// same ring on every agent.
    pub fn new<S: AsRef<str>>(names: &[S]) -> Ring {
        let mut points: Vec<(u64, usize)> = names
            .iter()
            .enumerate()
            .flat_map(|(i, name)| {
                (0..VNODES).map(move |v| (xxhash_rust::xxh3::xxh3_64(format!("{}#{v}", name.as_ref()).as_bytes()), i))
            })
            .collect();
        points.sort_unstable();
        Ring { points }
    }

    /// The aggregator for `key`; `None` on an empty ring.
    pub fn owner(&self, key: &[u8]) -> Option<usize> {
        let h = xxhash_rust::xxh3::xxh3_64(key);
        let i = self.points.partition_point(|(p, _)| *p < h);
        self.points.get(i).or_else(|| self.points.first()).map(|(_, owner)| *owner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_even_and_adding_one_moves_only_its_share() {
        let three = Ring::new(&["agg1:8127", "agg2:8127", "agg3:8127"]);
        let four = Ring::new(&["agg1:8127", "agg2:8127", "agg3:8127", "agg4:8127"]);
        let n = 100_000;
        let mut shares = [0usize; 4];
        let mut moved = 0;
        for i in 0..n {
            let key = format!("service.{i}.requests");
            let before = three.owner(key.as_bytes()).unwrap();
            let after = four.owner(key.as_bytes()).unwrap();
            shares[before] += 1;
            if before != after {
                assert_eq!(after, 3, "a key only ever moves to the new aggregator");
                moved += 1;
            }
        }
        for s in &shares[..3] {
            let share = *s as f64 / n as f64;
            assert!((share - 1.0 / 3.0).abs() < 0.05, "{shares:?}");
        }
        let moved = moved as f64 / n as f64;
        assert!((moved - 0.25).abs() < 0.05, "{moved}");
        assert_eq!(Ring::new::<&str>(&[]).owner(b"x"), None);
    }
}
