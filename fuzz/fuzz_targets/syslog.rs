//! Any bytes as a syslog TCP stream (framed in pieces of every size) and as a datagram: no
//! panic, no frame past the bound.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    floodgate_syslog::exercise(data);
});
