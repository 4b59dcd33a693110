//! Any bytes as the start of a connection on a listener that takes PROXY headers: parsing
//! ends with a bounded answer — no panic, a header found lies within the bytes and the bound.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    floodgate_proxy::exercise(data);
});
