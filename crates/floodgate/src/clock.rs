//! Time, read in one place: Unix seconds as Etsy statsd rounds them, Unix milliseconds, and
//! the monotonic nanoseconds since start that order gauge sets across receive threads.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Unix time in whole seconds, rounded as Etsy statsd does (`Math.round(ms / 1000)`).
pub fn unix_now() -> i64 {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    ((ms + 500) / 1000) as i64
}

/// Unix time in milliseconds.
pub fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Unix time in nanoseconds.
pub fn unix_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// Monotonic nanoseconds since `epoch` (the agent's start): orders gauge sets across shards.
pub fn since(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}
