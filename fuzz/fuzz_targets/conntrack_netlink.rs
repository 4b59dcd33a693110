//! Any bytes as a netlink receive buffer: ctnetlink entries and sock_diag sockets decoded,
//! applied to a table, logged in both formats — no panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    floodgate_conntrack::exercise(data);
});
