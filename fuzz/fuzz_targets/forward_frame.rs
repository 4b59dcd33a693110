//! Any bytes as frames from a peer on the agent → aggregator port: decode, convert every
//! sketch and set, query and merge them; nothing may panic or allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    floodgate_forward::exercise(data);
});
