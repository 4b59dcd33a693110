//! The guard's kernel layer: the eBPF socket filter of `floodgate_guard::kernel`, loaded once
//! per UDP listener and attached to each of its sockets, so the per-source and per-port limits
//! hold before a datagram is queued. Where the kernel refuses (no privilege, no BPF, a
//! verifier rejection) the listener runs with the user-space guard alone, and the log says
//! which is in use.

use floodgate_guard::kernel::{
    self, Config, Maps, SourceCell, Stat, ALLOW_KEY_SIZE, SOURCE_KEY_SIZE, SOURCE_VALUE_SIZE,
};
use floodgate_guard::{AllowList, Limit};

/// Most allow-list blocks the kernel layer holds; a longer list stays in user space alone.
const ALLOW_MAX: u32 = 4096;
/// Most of this host's addresses the kernel layer knows (loopback included); past it, a local
/// sender on a further address is keyed by its address there (user space still knows it).
const HOST_MAX: u32 = 256;

use super::config::LimitsConfig;
use crate::sys::bpf::{Map, MapKind, Program};

/// One listener's program and maps.
#[derive(Debug)]
pub struct KernelGuard {
    program: Program,
    config: Map,
    sources: Map,
    stats: Map,
    allow: Map,
    /// This host's addresses (see [`KernelGuard::set_host`]).
    host: Map,
    // Kept open: the program refers to it.
    _port: Map,
    /// The last walk of the sources map: when, and its top offenders.
    offenders: parking_lot::Mutex<Option<(std::time::Instant, Vec<SourceCell>)>>,
}

/// Walks of the sources map are at least this far apart.
const OFFENDERS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// Offenders a walk keeps (`/offenders` shows at most 10,000).
const OFFENDERS_KEPT: usize = 10_000;

impl KernelGuard {
    /// Creates the maps (the sources map holds `limits.tracked_sources`) and loads the program;
    /// an error says why the kernel layer is not available.
    pub fn new(limits: &LimitsConfig) -> Result<KernelGuard, String> {
        KernelGuard::with_program(limits, kernel::program)
    }

    /// [`KernelGuard::new`] with another program (tests: one the verifier rejects).
    pub(crate) fn with_program(
        limits: &LimitsConfig,
        program: fn(Maps) -> Vec<kernel::Insn>,
    ) -> Result<KernelGuard, String> {
        let entries = limits.tracked_sources.clamp(1, u32::MAX as usize) as u32;
        let map =
            |kind, key, value, n, name| Map::create(kind, key, value, n, name).map_err(|e| format!("{name}: {e}"));
        let config = map(MapKind::Array, 4, Config::SIZE, 1, "fg_config")?;
        let allow = map(MapKind::LpmTrie, ALLOW_KEY_SIZE, 1, ALLOW_MAX, "fg_allow")?;
        let host = map(MapKind::LpmTrie, ALLOW_KEY_SIZE, 1, HOST_MAX, "fg_host")?;
        let sources = map(MapKind::LruHash, SOURCE_KEY_SIZE, SOURCE_VALUE_SIZE, entries, "fg_sources")?;
        let port = map(MapKind::Array, 4, 8, 1, "fg_port")?;
        let stats = map(MapKind::PerCpuArray, 4, 8, Stat::COUNT, "fg_stats")?;
        let maps = Maps {
            config: config.fd(),
            sources: sources.fd(),
            port: port.fd(),
            stats: stats.fd(),
            allow: allow.fd(),
            host: host.fd(),
        };
        let insns: Vec<u8> = program(maps).into_iter().flat_map(|i| i.to_bytes()).collect();
        let program = Program::load_socket_filter(&insns, "fg_guard").map_err(|e| {
            let tail: Vec<&str> = e.log.lines().rev().take(3).collect();
            format!("{} (verifier: {})", e.error, tail.into_iter().rev().collect::<Vec<_>>().join(" / "))
        })?;
        let guard =
            KernelGuard { program, config, sources, stats, allow, host, _port: port, offenders: Default::default() };
        guard.configure(limits).map_err(|e| format!("fg_config: {e}"))?;
        guard.set_host(&[]).map_err(|e| format!("fg_host: {e}"))?;
        Ok(guard)
    }

    /// Writes the limits and the allow-list into the program's maps (start and reload); the
    /// cells stay.
    pub fn configure(&self, limits: &LimitsConfig) -> std::io::Result<()> {
        let burst = limits.burst.as_nanos().min(u128::from(u64::MAX)) as u64;
        let (source_interval_ns, source_tolerance_ns) = kernel::gcra(&Limit::new(limits.udp_per_source, burst));
        let (port_interval_ns, port_tolerance_ns) = kernel::gcra(&Limit::new(limits.udp_per_port, burst));
        let blocks = AllowList::parse(&limits.allow).unwrap_or_default().as_v6_prefixes();
        let allow_on = !blocks.is_empty() && blocks.len() <= ALLOW_MAX as usize;
        if blocks.len() > ALLOW_MAX as usize {
            tracing::warn!(
                blocks = blocks.len(),
                "allow-list longer than the kernel layer holds: it is applied in user space only"
            );
        }
        // Off while the map is rewritten, so no datagram meets a half-written list.
        let local_one_source = u64::from(limits.local_senders == super::config::LocalSenders::OneSource);
        let mut config = Config {
            source_interval_ns,
            source_tolerance_ns,
            port_interval_ns,
            port_tolerance_ns,
            allow_on: 0,
            local_one_source,
        };
        self.config.update(&0u32.to_ne_bytes(), &config.to_bytes())?;
        for key in self.allow.keys() {
            self.allow.delete(&key)?;
        }
        if allow_on {
            for (len, addr) in &blocks {
                self.allow.update(&kernel::allow_key(*len, addr), &[1])?;
            }
            config.allow_on = 1;
            self.config.update(&0u32.to_ne_bytes(), &config.to_bytes())?;
        }
        Ok(())
    }

    /// Writes this host's addresses into the host map: loopback (127.0.0.0/8, ::1) and
    /// `addresses` (its interfaces'; at most [`HOST_MAX`] in all). A datagram that came over
    /// loopback from one of them is from this host.
    pub fn set_host(&self, addresses: &[std::net::IpAddr]) -> std::io::Result<()> {
        let loopback =
            [(104, std::net::Ipv4Addr::new(127, 0, 0, 0).to_ipv6_mapped()), (128, std::net::Ipv6Addr::LOCALHOST)];
        let own = addresses.iter().map(|a| match a.to_canonical() {
            std::net::IpAddr::V4(v4) => (128, v4.to_ipv6_mapped()),
            std::net::IpAddr::V6(v6) => (128, v6),
        });
        let wanted: std::collections::BTreeSet<[u8; 20]> = loopback
            .into_iter()
            .chain(own)
            .take(HOST_MAX as usize)
            .map(|(len, a)| kernel::allow_key(len, &a.octets()))
            .collect();
        for key in self.host.keys() {
            if !key.as_slice().try_into().is_ok_and(|k: [u8; 20]| wanted.contains(&k)) {
                self.host.delete(&key)?;
            }
        }
        for key in &wanted {
            self.host.update(key, &[1])?;
        }
        Ok(())
    }

    /// Attaches the program to a socket of the listener.
    pub fn attach(&self, socket: std::os::fd::RawFd) -> std::io::Result<()> {
        self.program.attach(socket)
    }

    /// Datagrams passed and dropped so far, by [`Stat`] (summed over CPUs).
    pub fn stats(&self) -> [u64; Stat::COUNT as usize] {
        let mut out = [0u64; Stat::COUNT as usize];
        for stat in Stat::ALL {
            out[stat as usize] = self.stats.per_cpu_sum(stat as u32);
        }
        out
    }

    /// The sources the kernel dropped from, most first, at most `max` (a walk of the map:
    /// bounded by its size).
    ///
    /// A walk costs two syscalls a source (a full map of 100,000: about 0.1 s), so it runs at
    /// most once a second ([`OFFENDERS_EVERY`]) however often `/metrics`, `/offenders` and
    /// `/api/status` ask; in between they get the last walk's list.
    pub fn offenders(&self, max: usize) -> Vec<SourceCell> {
        let mut cache = self.offenders.lock();
        if cache.as_ref().is_none_or(|(at, _)| at.elapsed() >= OFFENDERS_EVERY) {
            let mut value = vec![0u8; SOURCE_VALUE_SIZE as usize];
            let mut cells: Vec<SourceCell> = self
                .sources
                .keys()
                .into_iter()
                .filter_map(|key| {
                    let found = self.sources.lookup(&key, &mut value).ok()?;
                    SourceCell::from_bytes(&key, &value).filter(|c| found && c.dropped > 0)
                })
                .collect();
            cells.sort_by_key(|c| std::cmp::Reverse(c.dropped));
            cells.truncate(OFFENDERS_KEPT);
            *cache = Some((std::time::Instant::now(), cells));
        }
        cache.as_ref().map(|(_, cells)| cells.iter().take(max).copied().collect()).unwrap_or_default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::guard::config::LocalSenders;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    /// The guard's program without its last instruction (the `exit`): the verifier refuses it.
    pub(crate) fn rejected_program(maps: Maps) -> Vec<kernel::Insn> {
        let mut insns = kernel::program(maps);
        insns.pop();
        insns
    }

    /// A program the verifier refuses is an error that carries the verifier's own words.
    #[test]
    fn a_verifier_rejection_is_an_error_with_the_verifier_log() {
        let e = KernelGuard::with_program(&LimitsConfig::default(), rejected_program)
            .expect_err("the verifier took a program with no exit");
        assert!(e.contains("(verifier: ") && e.contains("last insn is not an exit or jmp"), "{e}");
        // The real program loads with the same maps (so it was the program that was refused).
        KernelGuard::new(&LimitsConfig::default()).unwrap_or_else(|e| panic!("the kernel guard did not load: {e}"));
    }

    /// Loads in this kernel (root): a source over its limit is dropped in the kernel, counted
    /// in the stats and in its entry; another source is unaffected.
    #[test]
    fn the_kernel_holds_a_source_to_its_limit() {
        // Two loopback addresses stand for two hosts here.
        let limits = LimitsConfig {
            udp_per_source: 10,
            udp_per_port: 0,
            burst: Duration::from_secs(1),
            local_senders: LocalSenders::ByAddress,
            ..LimitsConfig::default()
        };
        // The test command runs as root, where BPF is available.
        let guard = KernelGuard::new(&limits).unwrap_or_else(|e| panic!("the kernel guard did not load: {e}"));
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        guard.attach(socket.as_raw_fd()).unwrap();
        socket.set_nonblocking(true).unwrap();
        let to = socket.local_addr().unwrap();
        let flood = std::net::UdpSocket::bind("127.0.0.2:0").unwrap();
        let other = std::net::UdpSocket::bind("127.0.0.3:0").unwrap();
        for _ in 0..100 {
            flood.send_to(b"x:1|c", to).unwrap();
        }
        for _ in 0..5 {
            other.send_to(b"y:1|c", to).unwrap();
        }
        let (mut from_flood, mut from_other) = (0, 0);
        let mut buf = [0u8; 64];
        while let Ok((_, from)) = socket.recv_from(&mut buf) {
            if from.ip() == flood.local_addr().unwrap().ip() {
                from_flood += 1;
            } else {
                from_other += 1;
            }
        }
        // A burst of one second at 10/s: 10 (and perhaps one more as time passes).
        assert!((10..=11).contains(&from_flood), "{from_flood} of the flood's 100 passed");
        assert_eq!(from_other, 5);
        let stats = guard.stats();
        assert_eq!(stats[Stat::SourceLimit as usize], 100 - from_flood);
        assert_eq!(stats[Stat::Passed as usize], from_flood + 5);
        let offenders = guard.offenders(10);
        assert_eq!(offenders.len(), 1);
        assert_eq!(offenders[0].ip(), flood.local_addr().unwrap().ip());
        assert_eq!(offenders[0].dropped, 100 - from_flood);
    }

    /// Issue 27 item 14: a local process may send from any address of 127.0.0.0/8 (and the
    /// host's own). By default the kernel counts whatever arrived over loopback as one source,
    /// so ten addresses get one budget, and its offender entry says `local`.
    #[test]
    fn the_kernel_counts_every_local_address_as_one_source() {
        let limits = LimitsConfig { udp_per_source: 10, udp_per_port: 0, ..LimitsConfig::default() };
        let guard = KernelGuard::new(&limits).unwrap_or_else(|e| panic!("the kernel guard did not load: {e}"));
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        guard.attach(socket.as_raw_fd()).unwrap();
        socket.set_nonblocking(true).unwrap();
        let to = socket.local_addr().unwrap();
        for i in 2..12 {
            let sender = std::net::UdpSocket::bind(format!("127.0.0.{i}:0")).unwrap();
            for _ in 0..10 {
                sender.send_to(b"x:1|c", to).unwrap();
            }
        }
        let mut buf = [0u8; 64];
        let passed = std::iter::from_fn(|| socket.recv_from(&mut buf).ok()).count() as u64;
        assert!((10..=11).contains(&passed), "{passed} of 100 from ten loopback addresses passed");
        let offenders = guard.offenders(10);
        assert_eq!(offenders.len(), 1);
        assert!(offenders[0].is_local(), "{:?}", offenders[0]);
        assert_eq!(offenders[0].dropped, 100 - passed);
    }

    /// An allow-list in the kernel: a source outside it is dropped before it is queued and
    /// counted; one inside passes; a reload that empties the list lets everyone in.
    #[test]
    fn the_kernel_applies_the_allow_list() {
        let limits = LimitsConfig {
            udp_per_source: 0,
            udp_per_port: 0,
            allow: vec!["127.0.0.3/32".into(), "2001:db8::/32".into()],
            ..LimitsConfig::default()
        };
        let guard = KernelGuard::new(&limits).unwrap_or_else(|e| panic!("the kernel guard did not load: {e}"));
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        guard.attach(socket.as_raw_fd()).unwrap();
        socket.set_nonblocking(true).unwrap();
        let to = socket.local_addr().unwrap();
        let outside = std::net::UdpSocket::bind("127.0.0.2:0").unwrap();
        let inside = std::net::UdpSocket::bind("127.0.0.3:0").unwrap();
        let received = |n_out: usize, n_in: usize| {
            for _ in 0..n_out {
                outside.send_to(b"x:1|c", to).unwrap();
            }
            for _ in 0..n_in {
                inside.send_to(b"y:1|c", to).unwrap();
            }
            let mut buf = [0u8; 64];
            let mut from = Vec::new();
            while let Ok((_, addr)) = socket.recv_from(&mut buf) {
                from.push(addr.ip().to_string());
            }
            from
        };
        let from = received(4, 3);
        assert_eq!(from, vec!["127.0.0.3"; 3]);
        assert_eq!(guard.stats()[Stat::NotAllowed as usize], 4);
        guard.configure(&LimitsConfig { allow: Vec::new(), ..limits.clone() }).unwrap();
        assert_eq!(received(2, 0).len(), 2, "an empty list allows everyone");

        // IPv6: the whole address is looked up.
        let v6 = std::net::UdpSocket::bind("[::1]:0").unwrap();
        guard.attach(v6.as_raw_fd()).unwrap();
        v6.set_nonblocking(true).unwrap();
        let sender = std::net::UdpSocket::bind("[::1]:0").unwrap();
        let through = |allow: &[&str]| {
            let l = LimitsConfig { allow: allow.iter().map(|a| a.to_string()).collect(), ..limits.clone() };
            guard.configure(&l).unwrap();
            sender.send_to(b"z:1|c", v6.local_addr().unwrap()).unwrap();
            let mut buf = [0u8; 64];
            std::iter::from_fn(|| v6.recv_from(&mut buf).ok()).count()
        };
        assert_eq!(through(&["::1"]), 1);
        assert_eq!(through(&["::2", "127.0.0.1"]), 0);
        assert_eq!(through(&["::/1"]), 1);
    }
}
