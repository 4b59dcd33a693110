//! Large responses shared by the requests that want them: `/metrics`, `/api/status`,
//! `/offenders` and the console's `counters`, `gauges` and `timers` each render the store or
//! the guard's table whole. A client that asks and never reads keeps its response until its
//! connection times out; rendered once per request, 60 such requests held 2 GiB (200,000
//! series). Here every request of one kind that arrives while a rendering newer than itself is
//! alive gets that one, and at most [`MAX_ALIVE`] renderings are alive at once: what unread
//! responses hold is a few renderings, whatever the number of connections.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::Instant;

use parking_lot::Mutex;

/// Renderings alive at once, all kinds together.
pub const MAX_ALIVE: usize = 6;

/// What a response renders: one kind of page (and its variant, such as a limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseKind {
    /// `/metrics` in the text format.
    MetricsText,
    /// `/metrics` in the protobuf format.
    MetricsProtobuf,
    /// `/api/status`.
    Status,
    /// `/offenders?limit=N`.
    Offenders(usize),
    /// `/api/cardinality?limit=N`.
    Cardinality(usize),
    /// A console command's reply (`counters`, `gauges`, `timers`).
    Console(&'static str),
}

/// How a request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Rendered for it (and whoever asks while it is alive).
    Rendered,
    /// A rendering that started after the request arrived, rendered for another.
    Shared,
    /// The newest rendering of its kind, older than the request: [`MAX_ALIVE`] were held.
    Stale,
    /// Nothing: [`MAX_ALIVE`] were held, none of its kind.
    Refused,
}

/// A rendering given out: its kind, when it started, and the rendering while anyone holds it.
type Given = (ResponseKind, Instant, Weak<Vec<u8>>);

/// The renderings alive, and the figures.
#[derive(Default)]
pub struct SharedResponses {
    /// One rendering at a time (a scrape renders the whole store).
    rendering: Mutex<()>,
    /// The renderings given out; dead ones pruned.
    alive: Mutex<Vec<Given>>,
    /// Answers by [`Outcome`].
    pub outcomes: [AtomicU64; 4],
}

impl SharedResponses {
    /// The response of `kind` for a request that arrived at `asked`: a rendering started at
    /// or after it, shared if one is alive, rendered by `render` otherwise; the newest of its
    /// kind if [`MAX_ALIVE`] are alive already; `None` if none of them is of its kind. Blocks
    /// while another rendering runs (call it off the async runtime).
    pub fn get(&self, kind: ResponseKind, asked: Instant, render: impl FnOnce() -> Vec<u8>) -> Option<Arc<Vec<u8>>> {
        let _one_at_a_time = self.rendering.lock();
        {
            let mut alive = self.alive.lock();
            alive.retain(|(_, _, w)| w.strong_count() > 0);
            let newest = alive.iter().rev().find(|(k, ..)| *k == kind).and_then(|(_, at, w)| Some((*at, w.upgrade()?)));
            match newest {
                Some((started, body)) if started >= asked => return Some(self.count(Outcome::Shared, body)),
                Some((_, body)) if alive.len() >= MAX_ALIVE => return Some(self.count(Outcome::Stale, body)),
                None if alive.len() >= MAX_ALIVE => {
                    self.outcomes[Outcome::Refused as usize].fetch_add(1, Relaxed);
                    return None;
                }
                _ => {}
            }
        }
        let started = Instant::now();
        let body = Arc::new(render());
        self.alive.lock().push((kind, started, Arc::downgrade(&body)));
        Some(self.count(Outcome::Rendered, body))
    }

    fn count(&self, outcome: Outcome, body: Arc<Vec<u8>>) -> Arc<Vec<u8>> {
        self.outcomes[outcome as usize].fetch_add(1, Relaxed);
        body
    }

    /// Renderings alive now.
    pub fn alive(&self) -> usize {
        self.alive.lock().iter().filter(|(_, _, w)| w.strong_count() > 0).count()
    }
}

impl Outcome {
    /// Every outcome, in the order of [`SharedResponses::outcomes`].
    pub const ALL: [Outcome; 4] = [Outcome::Rendered, Outcome::Shared, Outcome::Stale, Outcome::Refused];

    /// Its label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Rendered => "rendered",
            Outcome::Shared => "shared",
            Outcome::Stale => "stale",
            Outcome::Refused => "refused",
        }
    }
}

impl crate::metrics::Report for SharedResponses {
    fn report(&self, out: &mut crate::metrics::Families) {
        use crate::metrics::Describe;
        let answers = Describe::counter(
            "floodgate_shared_responses_total",
            "Large responses (/metrics, /api/status, /offenders, console dumps) by how they were answered: \
             rendered, shared with a request that came after it started, stale (the newest of its kind: \
             too many held unread), refused.",
        );
        out.family(answers);
        for outcome in Outcome::ALL {
            out.add(answers, &[("outcome", outcome.as_str())], self.outcomes[outcome as usize].load(Relaxed));
        }
        out.one(
            Describe::gauge("floodgate_shared_responses_alive", "Large responses held now (rendered, not yet sent)."),
            self.alive() as u64,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_share_a_newer_rendering_and_unread_ones_are_capped() {
        let responses = SharedResponses::default();
        let renders = std::cell::Cell::new(0);
        let render = || {
            renders.set(renders.get() + 1);
            vec![0u8; 1000]
        };
        let asked = Instant::now();
        let a = responses.get(ResponseKind::MetricsText, asked, render).unwrap();
        // Asked before `a` started: shares it.
        let b = responses.get(ResponseKind::MetricsText, asked, render).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(renders.get(), 1);
        // Asked after: a new rendering, while the old ones are held.
        let mut held = vec![a, b];
        for _ in 0..MAX_ALIVE - 1 {
            held.push(responses.get(ResponseKind::MetricsText, Instant::now(), render).unwrap());
        }
        assert_eq!((renders.get(), responses.alive()), (MAX_ALIVE, MAX_ALIVE));
        // Past the cap: the newest of its kind, however late the request; another kind: none.
        let stale = responses.get(ResponseKind::MetricsText, Instant::now(), render).unwrap();
        assert!(Arc::ptr_eq(&stale, held.last().unwrap()));
        assert!(responses.get(ResponseKind::Status, Instant::now(), render).is_none());
        assert_eq!(renders.get(), MAX_ALIVE);
        // Once read (dropped), room again.
        drop(held);
        drop(stale);
        assert!(responses.get(ResponseKind::Status, Instant::now(), render).is_some());
        assert_eq!(responses.outcomes.each_ref().map(|o| o.load(Relaxed)), [MAX_ALIVE as u64 + 1, 1, 1, 1]);
    }
}
