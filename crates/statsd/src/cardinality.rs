//! Who makes the series: the metric names and name prefixes with the most new series a
//! minute, and for each the senders that made them, kept in heavy-hitter sketches of a fixed
//! size ([`TopK`]) whatever the number of names; and the same by live series, counted from the
//! store when asked.

use floodgate_sketch::TopK;

use crate::budget::{Sender, SeriesBudgets};

/// Keys kept by each sketch.
pub const TOP_KEYS: usize = 256;

/// New series a minute counted one by one; past it, sampled (see [`SAMPLE_RATE`]).
pub const SAMPLE_FROM: u64 = 10_000;

/// Past [`SAMPLE_FROM`] new series in a minute, one series in this many is counted, this many
/// times.
pub const SAMPLE_RATE: u64 = 8;

/// One minute's new series: by name, by prefix, and by (name, sender).
#[derive(Debug)]
struct Minute {
    names: TopK,
    prefixes: TopK,
    senders: TopK,
}

impl Minute {
    fn new() -> Minute {
        Minute { names: TopK::new(TOP_KEYS), prefixes: TopK::new(TOP_KEYS), senders: TopK::new(TOP_KEYS) }
    }

    fn clear(&mut self) {
        self.names.clear();
        self.prefixes.clear();
        self.senders.clear();
    }

    fn bytes(&self) -> u64 {
        self.names.bytes() + self.prefixes.bytes() + self.senders.bytes()
    }
}

/// New series by name and sender, this minute and the one before.
#[derive(Debug)]
pub struct Attribution {
    current: Minute,
    previous: Minute,
    minute: u64,
    /// The (name, sender) key being counted, reused.
    scratch: String,
}

impl Default for Attribution {
    fn default() -> Self {
        Attribution { current: Minute::new(), previous: Minute::new(), minute: 0, scratch: String::new() }
    }
}

/// A name (or prefix) and how many series it has, with its heaviest senders.
#[derive(Debug, Clone, PartialEq)]
pub struct Heavy {
    /// The metric name or prefix.
    pub name: String,
    /// Series (live, or new in the last full minute), at most `error` too many.
    pub series: u64,
    /// How much of `series` may belong to other names (the sketch's bound).
    pub error: u64,
    /// The senders that made most of them, with their counts.
    pub senders: Vec<(String, u64)>,
}

/// A series' metric name (its key before the tags).
pub fn name_of(key: &[u8]) -> &[u8] {
    key.split(|b| *b == b';').next().unwrap_or(key)
}

/// A name's prefix: its first two dotted fields (`api.requests` of `api.requests.get.200`),
/// the first of a name of two (`flood` of `flood.8123`: an id in the last field still groups).
pub fn prefix_of(name: &[u8]) -> &[u8] {
    let mut dots = name.iter().enumerate().filter(|(_, b)| **b == b'.').map(|(i, _)| i);
    match (dots.next(), dots.next()) {
        (Some(_), Some(second)) => &name[..second],
        (Some(first), None) => &name[..first],
        _ => name,
    }
}

impl Attribution {
    /// A new series `key`, made by `sender`, in `minute` (minutes since some epoch).
    pub fn new_series(&mut self, key: &[u8], sender: Sender, minute: u64, budgets: &SeriesBudgets) {
        if minute != self.minute {
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.clear();
            if minute > self.minute + 1 {
                self.previous.clear();
            }
            self.minute = minute;
        }
        // Past SAMPLE_FROM new series in the minute, one in SAMPLE_RATE (by the key's hash, so
        // a series is in or out whatever shard made it) is counted SAMPLE_RATE times: a flood of
        // new series costs an eighth of the sketch updates, and a name making thousands is still
        // counted within a few per cent.
        let weight = if self.current.names.total() < SAMPLE_FROM {
            1
        } else if xxhash_rust::xxh3::xxh3_64(key).is_multiple_of(SAMPLE_RATE) {
            SAMPLE_RATE
        } else {
            return;
        };
        let name = String::from_utf8_lossy(name_of(key));
        self.current.names.add(&name, weight);
        self.current.prefixes.add(&String::from_utf8_lossy(prefix_of(name.as_bytes())), weight);
        self.scratch.clear();
        self.scratch.push_str(&name);
        self.scratch.push('\u{0}');
        budgets.describe_into(budgets.counted_as(sender), &mut self.scratch);
        self.current.senders.add(&self.scratch, weight);
    }

    /// The names (or prefixes, `by_prefix`) with the most new series in the last full minute
    /// (this one's so far when none), each with its top senders.
    pub fn top_new(&self, n: usize, by_prefix: bool) -> Vec<Heavy> {
        let m = if self.previous.names.total() > 0 { &self.previous } else { &self.current };
        let keys = if by_prefix { &m.prefixes } else { &m.names };
        let pairs = m.senders.top(TOP_KEYS);
        keys.top(n)
            .into_iter()
            .map(|h| {
                let senders = pairs
                    .iter()
                    .filter_map(|p| {
                        let (name, who) = p.key.split_once('\u{0}')?;
                        let matches =
                            if by_prefix { prefix_of(name.as_bytes()) == h.key.as_bytes() } else { name == h.key };
                        matches.then(|| (who.to_string(), p.count))
                    })
                    .take(5)
                    .collect();
                Heavy { name: h.key, series: h.count, error: h.error, senders }
            })
            .collect()
    }

    /// The memory it takes: fixed.
    pub fn bytes(&self) -> u64 {
        self.current.bytes() + self.previous.bytes()
    }
}

/// The names and the prefixes holding the most series in `keys` (a walk of the store's
/// series, done once for both), counted in sketches of fixed size.
pub fn top_live<'k>(keys: impl Iterator<Item = &'k [u8]>, n: usize) -> (Vec<Heavy>, Vec<Heavy>) {
    let (mut names, mut prefixes) = (TopK::new(TOP_KEYS), TopK::new(TOP_KEYS));
    for key in keys {
        let name = name_of(key);
        names.add(&String::from_utf8_lossy(name), 1);
        prefixes.add(&String::from_utf8_lossy(prefix_of(name)), 1);
    }
    let rows = |top: TopK| {
        top.top(n)
            .into_iter()
            .map(|h| Heavy { name: h.key, series: h.count, error: h.error, senders: Vec::new() })
            .collect()
    };
    (rows(names), rows(prefixes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::BudgetLimits;

    /// Counted one by one up to SAMPLE_FROM new series a minute; past it, sampled by the key's
    /// hash and weighted: a flood's name is still counted within a few per cent, and a small
    /// name before the flood exactly.
    #[test]
    fn a_flood_of_new_series_is_counted_by_sample_within_a_few_per_cent() {
        let budgets = SeriesBudgets::new(BudgetLimits { series_per_sender: 1, ..Default::default() });
        let mut a = Attribution::default();
        let sender = Sender::Address("198.18.0.5".parse().unwrap());
        for i in 0..40 {
            a.new_series(format!("db.pool.size;pool=p{i}").as_bytes(), sender, 1, &budgets);
        }
        for i in 0..80_000 {
            a.new_series(format!("api.requests;request_id=r{i}").as_bytes(), sender, 1, &budgets);
        }
        let top = a.top_new(2, false);
        assert_eq!(top[0].name, "api.requests");
        let estimate = top[0].series as f64;
        assert!((estimate / 80_000.0 - 1.0).abs() < 0.03, "{estimate}");
        assert_eq!((top[1].name.as_str(), top[1].series), ("db.pool.size", 40));
        assert_eq!(top[0].senders[0].0, "198.18.0.5");
        let prefixes = a.top_new(1, true);
        assert_eq!(prefixes[0].name, "api", "a two-field name's prefix is its first field");
    }
}
