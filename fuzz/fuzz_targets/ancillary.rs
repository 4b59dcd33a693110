//! Any bytes as a `recvmsg` control buffer: the control-message walk (credentials, passed
//! descriptors, anything else) stays inside the buffer and ends — no panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    floodgate_ancillary::exercise(data);
});
