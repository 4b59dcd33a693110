//! `receive_spread`: the `SK_REUSEPORT` program of `floodgate_guard::spread` on a UDP
//! listener's socket group, so one hot client socket is read by every receive thread instead
//! of the one its 4-tuple hashes to. Where the kernel refuses (no privilege, no BPF, a
//! verifier rejection) the listener runs with the kernel's hash alone, and the log says so,
//! as with the guard's kernel layer.

use std::os::fd::RawFd;

use floodgate_guard::spread::{self, SpreadMaps, FLOWS, FLOW_VALUE_SIZE, SPREAD_COUNTED};
use serde::{Deserialize, Serialize};

use crate::sys::bpf::{Map, MapKind, Program};

/// `[statsd]`/`[syslog]` `receive_spread`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiveSpread {
    /// Spread a hot client socket over the receive threads where the kernel takes the program.
    #[default]
    Auto,
    /// The kernel's 4-tuple hash alone: one client socket, one thread.
    Off,
}

/// One listener's spread program and maps.
#[derive(Debug)]
pub struct Spread {
    stats: Map,
    // Kept open beside the attached program (the group holds it too).
    _program: Program,
    _flows: Map,
    _sockets: Map,
}

impl Spread {
    /// Loads the program for the group `sockets` (bound, `SO_REUSEPORT`) and attaches it; an
    /// error says why it is not available.
    pub fn attach(sockets: &[RawFd]) -> Result<Spread, String> {
        let n = u32::try_from(sockets.len()).map_err(|_| "too many sockets".to_string())?;
        let map = |kind, key, value, entries, name| {
            Map::create(kind, key, value, entries, name).map_err(|e| format!("{name}: {e}"))
        };
        let flows = map(MapKind::Array, 4, FLOW_VALUE_SIZE, FLOWS, "fg_flows")?;
        let group = map(MapKind::ReuseportSockarray, 4, 8, n, "fg_sockets")?;
        let stats = map(MapKind::PerCpuArray, 4, 8, 1, "fg_spread")?;
        for (i, fd) in (0u32..).zip(sockets) {
            group.update(&i.to_ne_bytes(), &(*fd as u64).to_ne_bytes()).map_err(|e| format!("fg_sockets: {e}"))?;
        }
        let maps = SpreadMaps { flows: flows.fd(), sockets: group.fd(), stats: stats.fd() };
        let insns: Vec<u8> = spread::program(maps, n).into_iter().flat_map(|i| i.to_bytes()).collect();
        let program = Program::load_reuseport(&insns, "fg_spread").map_err(|e| {
            let tail: Vec<&str> = e.log.lines().rev().take(3).collect();
            format!("{} (verifier: {})", e.error, tail.into_iter().rev().collect::<Vec<_>>().join(" / "))
        })?;
        let first = sockets.first().ok_or("no sockets")?;
        program.attach_reuseport(*first).map_err(|e| format!("SO_ATTACH_REUSEPORT_EBPF: {e}"))?;
        Ok(Spread { stats, _program: program, _flows: flows, _sockets: group })
    }

    /// Datagrams the program sent to the next socket in turn (their flow was hot).
    pub fn spread_datagrams(&self) -> u64 {
        self.stats.per_cpu_sum(SPREAD_COUNTED)
    }
}

/// Puts the spread on a UDP listener's `sockets` as `mode` says, and logs which is in use.
pub fn start(mode: ReceiveSpread, address: &std::net::SocketAddr, sockets: &[RawFd]) -> Option<Spread> {
    if sockets.len() < 2 {
        return None;
    }
    if mode == ReceiveSpread::Off {
        tracing::info!(%address, "receive spread off (receive_spread = \"off\"): each client socket is read by one thread");
        return None;
    }
    match Spread::attach(sockets) {
        Ok(s) => {
            tracing::info!(
                %address,
                sockets = sockets.len(),
                "receive spread attached: a client socket sending more than {} datagrams a second is read by every receive thread",
                spread::HOT_DATAGRAMS * 1_000_000_000 / spread::WINDOW_NS
            );
            Some(s)
        }
        Err(e) => {
            tracing::warn!(
                %address,
                error = %e,
                "receive spread unavailable (it needs root or CAP_BPF, and a kernel whose verifier takes it): each client socket is read by one thread"
            );
            None
        }
    }
}
