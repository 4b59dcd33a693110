//! Any bytes as a StatsD packet: parse, aggregate, flush and render both outputs; nothing may
//! panic, and the line count must match the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    floodgate_statsd::exercise(data);
});
