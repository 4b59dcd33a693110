//! One back-off for every sink that retries a destination: Graphite, remote-write, the
//! forward links and the syslog forwarder.
//!
//! The first retry comes after 0.2 s, and each failure doubles the step up to 10 s. A
//! destination back from a short outage is then found within 10 s, and a long outage costs a
//! connection attempt every 10 s at most. Each wait is the step times a random factor in
//! [0.5, 1]: a fleet of agents that lost their aggregator at one instant does not come back
//! in lockstep when it restarts (equal jitter, as in AWS's "Exponential Backoff and Jitter").
//! A success starts over from the first step.

use std::time::Duration;

/// The first step.
pub const FIRST: Duration = Duration::from_millis(200);
/// The longest step.
pub const LONGEST: Duration = Duration::from_secs(10);

/// The back-off of one destination.
#[derive(Debug, Clone)]
pub struct Backoff {
    step: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { step: FIRST }
    }
}

impl Backoff {
    /// A failure: how long to wait before the next attempt (the step, jittered); the step
    /// then doubles, up to [`LONGEST`].
    pub fn failed(&mut self) -> Duration {
        let wait = self.step.mul_f64(0.5 + fastrand::f64() * 0.5);
        self.step = (self.step * 2).min(LONGEST);
        wait
    }

    /// A success: the next failure waits the first step again.
    pub fn succeeded(&mut self) {
        self.step = FIRST;
    }

    /// Whether the last attempt failed (no success since): the destination is away.
    pub fn is_failing(&self) -> bool {
        self.step != FIRST
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_double_up_to_the_longest_each_jittered_down_to_half() {
        let mut b = Backoff::default();
        let steps = [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0, 10.0];
        for step in steps {
            let wait = b.failed().as_secs_f64();
            assert!((step / 2.0..=step).contains(&wait), "{wait} s for a step of {step} s");
        }
        b.succeeded();
        assert!(b.failed() <= FIRST);
    }

    #[test]
    fn waits_are_spread() {
        let waits: std::collections::BTreeSet<Duration> = (0..20).map(|_| Backoff { step: LONGEST }.failed()).collect();
        assert!(waits.len() > 10, "{waits:?}");
    }
}
