//! Any bytes as a syslog TCP stream (framed in pieces of every size) and as a datagram: no
//! panic, no frame past the bound, and the datagram's record is valid JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let json = floodgate_syslog::exercise(data);
    if let Err(e) = serde_json::from_slice::<serde_json::Value>(&json) {
        panic!("record is not JSON ({e}): {}", String::from_utf8_lossy(&json));
    }
});
