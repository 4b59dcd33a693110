//! floodgate's end-to-end tests, as one test binary: each module is one area, run against the
//! real `floodgate` binary and real counterparts (see README.md here for what each holds and
//! where a new test goes). One binary, so the shared harness (`common`) compiles once.

mod common;

mod carbon;
mod cardinality;
mod claims;
mod clients;
mod conntrack;
mod dashboard;
mod etsy_differential;
mod faults;
mod fleet_example;
mod forward;
mod guard;
mod guard_spoof;
mod hostile;
mod kernel_guard;
mod local_attacks;
mod mapping;
mod nats_output;
mod otlp;
mod pacing;
mod packaging;
mod proxy_protocol;
mod reload;
mod remote_write;
mod restart;
mod shared_limits;
mod soak;
mod spread;
mod statsd_e2e;
mod syslog;
mod tap;
mod ui;
