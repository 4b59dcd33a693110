//! The one validity rule: what an agent accepts from a StatsD line is exactly what an
//! aggregator accepts from the wire, so nothing an agent forwards can be refused upstream.
//!
//! The parser applies [`KeyRule::check`] and [`sample`] to every value it reads; an agent
//! applies the `*_state` checks to each series before forwarding it, and an aggregator applies
//! the same checks to each series it receives (refusing that series, not the batch).
//!
//! Numbers: every value a sample carries into an aggregate (a counter's increment divided by
//! its sample rate, a gauge, a timer value, a timer's `1/rate` weight) must be finite and at
//! most [`MAX_MAGNITUDE`] in size, so that the aggregates built from them (sums, sums of
//! squares) stay finite. Etsy statsd accepts `Infinity` and `1e400`, and then writes
//! `Infinity`, `NaN` or nothing to Graphite; here such lines are bad lines.

use std::fmt;

/// The largest magnitude a sample may have: its square (a timer's `sum_squares`) is at most
/// 1e300, so even 10^8 such samples in one interval add up to a finite number.
pub const MAX_MAGNITUDE: f64 = 1e150;

/// The default longest key (name and tags) in bytes.
pub const DEFAULT_MAX_KEY_LENGTH: usize = 1024;

/// Why a key, value or series was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Invalid {
    /// The name is empty (before or after sanitising; tags alone are not a name).
    EmptyName,
    /// The key (or a set member) is longer than the configured maximum.
    TooLong,
    /// The key holds a byte the key rule does not allow (a newline; with sanitising on, any
    /// byte sanitising would have removed).
    BadKeyByte,
    /// A number that is not finite, or larger than [`MAX_MAGNITUDE`].
    OutOfRange,
    /// A series whose parts disagree (a timer with no samples, or `min > max`).
    Inconsistent,
}

impl Invalid {
    /// Every reason, for counters indexed by reason.
    pub const ALL: [Invalid; 5] =
        [Invalid::EmptyName, Invalid::TooLong, Invalid::BadKeyByte, Invalid::OutOfRange, Invalid::Inconsistent];

    /// Its name in metrics (`reason="..."`).
    pub fn as_str(self) -> &'static str {
        match self {
            Invalid::EmptyName => "empty_name",
            Invalid::TooLong => "key_too_long",
            Invalid::BadKeyByte => "bad_key_byte",
            Invalid::OutOfRange => "value_out_of_range",
            Invalid::Inconsistent => "inconsistent",
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Invalid::EmptyName => "empty name",
            Invalid::TooLong => "key longer than max_key_length",
            Invalid::BadKeyByte => "key byte outside the sanitised set",
            Invalid::OutOfRange => "value that is not a finite number within ±1e150",
            Invalid::Inconsistent => "inconsistent series state",
        })
    }
}

/// What a series key must look like: `[statsd] max_key_length` and `key_name_sanitize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRule {
    /// Longest key in bytes (tags included); also the longest set member.
    pub max_length: usize,
    /// Keys are sanitised (Etsy's `keyNameSanitize`): only `[a-zA-Z0-9_\-.;=]` may remain.
    pub sanitized: bool,
    /// With `sanitized`: a name sanitising changed is also kept as sent
    /// ([`MetricSink::sent_name`](crate::MetricSink::sent_name)), so the Prometheus mapping
    /// sees what the client sent while Graphite sees Etsy's name.
    pub sent_names: bool,
}

impl Default for KeyRule {
    fn default() -> Self {
        KeyRule { max_length: DEFAULT_MAX_KEY_LENGTH, sanitized: true, sent_names: false }
    }
}

impl KeyRule {
    /// Checks a finished key. The parser only needs the cheap part ([`KeyRule::check_built`]):
    /// the bytes of a key it built are right by construction.
    pub fn check(&self, key: &[u8]) -> Result<(), Invalid> {
        self.check_built(key)?;
        let allowed = |b: &u8| if self.sanitized { crate::parse::is_allowed(*b) } else { *b != b'\n' };
        if !key.iter().all(allowed) {
            return Err(Invalid::BadKeyByte);
        }
        Ok(())
    }

    /// The length and the name of a key the parser built.
    #[inline]
    pub fn check_built(&self, key: &[u8]) -> Result<(), Invalid> {
        if matches!(key.first(), None | Some(b';')) {
            return Err(Invalid::EmptyName);
        }
        if key.len() > self.max_length {
            return Err(Invalid::TooLong);
        }
        Ok(())
    }
}

/// A number within ±[`MAX_MAGNITUDE`] (and not NaN).
#[inline]
pub fn in_range(v: f64) -> bool {
    v.abs() <= MAX_MAGNITUDE
}

/// One sample's value and sample rate, as the parser reads them: the value and `1/rate`
/// (what counters are scaled by and timers count) must both be in range.
#[inline]
pub fn sample(value: f64, sample_rate: f64) -> Result<(), Invalid> {
    // Nearly every sample has no rate: no divisions for it.
    let scaled_in_range = sample_rate == 1.0 || (in_range(value / sample_rate) && in_range(1.0 / sample_rate));
    if in_range(value) && scaled_in_range {
        Ok(())
    } else {
        Err(Invalid::OutOfRange)
    }
}

/// An interval's counter sum (forwarded): finite.
pub fn counter_state(sum: f64) -> Result<(), Invalid> {
    if sum.is_finite() {
        Ok(())
    } else {
        Err(Invalid::OutOfRange)
    }
}

/// A gauge's value or summed delta (forwarded): finite.
pub fn gauge_state(value: f64) -> Result<(), Invalid> {
    counter_state(value)
}

/// A timer's interval summary (forwarded): at least one sample, finite moments, and extremes
/// that samples could have had.
pub fn timer_state(s: &crate::forwarded::TimerSummary) -> Result<(), Invalid> {
    if ![s.count, s.sum, s.sum_squares].iter().all(|v| v.is_finite()) || !in_range(s.min) || !in_range(s.max) {
        return Err(Invalid::OutOfRange);
    }
    if s.samples() == 0 || s.min > s.max || s.count < 0.0 || s.sum_squares < 0.0 {
        return Err(Invalid::Inconsistent);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let rule = KeyRule { max_length: 8, sanitized: true, sent_names: false };
        assert_eq!(rule.check(b"a.b;c=d"), Ok(()));
        assert_eq!(rule.check(b""), Err(Invalid::EmptyName));
        assert_eq!(rule.check(b";env=x"), Err(Invalid::EmptyName));
        assert_eq!(rule.check(b"123456789"), Err(Invalid::TooLong));
        assert_eq!(rule.check(b"a b"), Err(Invalid::BadKeyByte));
        assert_eq!(rule.check(b"a\nb"), Err(Invalid::BadKeyByte));
        let raw = KeyRule { max_length: 8, sanitized: false, sent_names: false };
        assert_eq!(raw.check(b"a b"), Ok(()));
        assert_eq!(raw.check(b"a\nb"), Err(Invalid::BadKeyByte), "a newline would split a Graphite line");
    }

    #[test]
    fn samples() {
        assert_eq!(sample(1.0, 1.0), Ok(()));
        assert_eq!(sample(-1e150, 1.0), Ok(()));
        assert_eq!(sample(f64::INFINITY, 1.0), Err(Invalid::OutOfRange));
        assert_eq!(sample(f64::NAN, 1.0), Err(Invalid::OutOfRange));
        assert_eq!(sample(1e200, 1.0), Err(Invalid::OutOfRange));
        assert_eq!(sample(1e149, 0.001), Err(Invalid::OutOfRange), "scaled by the rate");
        assert_eq!(sample(0.0, 1e-200), Err(Invalid::OutOfRange), "a weight of 1e200");
    }

    #[test]
    fn timer_summaries() {
        use crate::forwarded::TimerSummary;
        assert_eq!(timer_state(&TimerSummary::from_values(&[1.0, 2.0], 2.0)), Ok(()));
        assert_eq!(timer_state(&TimerSummary::default()), Err(Invalid::OutOfRange), "no samples: ±inf extremes");
        let mut s = TimerSummary::from_values(&[1.0, 2.0], 2.0);
        s.min = 3.0;
        assert_eq!(timer_state(&s), Err(Invalid::Inconsistent));
        s.min = 1.0;
        s.sum_squares = f64::INFINITY;
        assert_eq!(timer_state(&s), Err(Invalid::OutOfRange));
    }
}
