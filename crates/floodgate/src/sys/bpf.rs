//! The `bpf(2)` calls the kernel guard and the receive spread need: create maps, read and
//! write their entries, load a socket filter or a `SO_REUSEPORT` selector (with the verifier's
//! log when it refuses), attach it to a socket.
//!
//! Written against the raw syscall with libc: the attribute block is a 128-byte buffer whose
//! fields are set at their `union bpf_attr` offsets (include/uapi/linux/bpf.h), so nothing
//! depends on a crate's idea of the kernel's layout.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const MAP_CREATE: libc::c_long = 0;
const MAP_LOOKUP_ELEM: libc::c_long = 1;
const MAP_UPDATE_ELEM: libc::c_long = 2;
const MAP_DELETE_ELEM: libc::c_long = 3;
const MAP_GET_NEXT_KEY: libc::c_long = 4;
/// `BPF_F_NO_PREALLOC`: required of a longest-prefix-match map.
const NO_PREALLOC: u32 = 1;
const PROG_LOAD: libc::c_long = 5;
const PROG_TYPE_SOCKET_FILTER: u32 = 1;
const PROG_TYPE_SK_REUSEPORT: u32 = 21;
const SO_ATTACH_BPF: libc::c_int = 50;
const SO_ATTACH_REUSEPORT_EBPF: libc::c_int = 52;

/// Map kinds used.
#[derive(Debug, Clone, Copy)]
pub enum MapKind {
    /// `BPF_MAP_TYPE_ARRAY`.
    Array = 2,
    /// `BPF_MAP_TYPE_PERCPU_ARRAY`.
    PerCpuArray = 6,
    /// `BPF_MAP_TYPE_LRU_HASH`.
    LruHash = 9,
    /// `BPF_MAP_TYPE_LPM_TRIE`.
    LpmTrie = 11,
    /// `BPF_MAP_TYPE_REUSEPORT_SOCKARRAY`: sockets of a `SO_REUSEPORT` group (set by fd).
    ReuseportSockarray = 20,
}

/// The attribute block.
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 128])
    }
    fn u32(&mut self, at: usize, v: u32) -> &mut Attr {
        self.0[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, at: usize, v: u64) -> &mut Attr {
        self.0[at..at + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn name(&mut self, at: usize, name: &str) -> &mut Attr {
        let n = name.len().min(15);
        self.0[at..at + n].copy_from_slice(&name.as_bytes()[..n]);
        self
    }
    fn call(&mut self, cmd: libc::c_long) -> io::Result<libc::c_long> {
        // SAFETY: the attribute block is 128 valid bytes, and every pointer written into it
        // (keys, values, instructions, license, log) points to memory the caller keeps alive
        // and sized as the command reads or writes it for the duration of this call.
        let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, self.0.as_mut_ptr(), self.0.len()) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r)
        }
    }
}

fn fd_of(r: libc::c_long) -> OwnedFd {
    // SAFETY: a successful MAP_CREATE or PROG_LOAD returns a new file descriptor that nothing
    // else owns.
    unsafe { OwnedFd::from_raw_fd(r as RawFd) }
}

/// A BPF map.
#[derive(Debug)]
pub struct Map {
    fd: OwnedFd,
    key_size: usize,
    value_size: usize,
    max_entries: usize,
}

impl Map {
    /// Creates a map (`name` is shown by `bpftool`).
    pub fn create(kind: MapKind, key_size: u32, value_size: u32, max_entries: u32, name: &str) -> io::Result<Map> {
        let r = Attr::new()
            .u32(0, kind as u32)
            .u32(4, key_size)
            .u32(8, value_size)
            .u32(12, max_entries)
            .u32(16, if matches!(kind, MapKind::LpmTrie) { NO_PREALLOC } else { 0 })
            .name(28, name)
            .call(MAP_CREATE)?;
        Ok(Map {
            fd: fd_of(r),
            key_size: key_size as usize,
            value_size: value_size as usize,
            max_entries: max_entries as usize,
        })
    }

    /// Its file descriptor (for the program's map loads).
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Sets `key` to `value` (flags: 0 any).
    pub fn update(&self, key: &[u8], value: &[u8]) -> io::Result<()> {
        if key.len() != self.key_size || value.len() != self.value_size {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "map key or value of the wrong size"));
        }
        Attr::new()
            .u32(0, self.fd() as u32)
            .u64(8, key.as_ptr() as u64)
            .u64(16, value.as_ptr() as u64)
            .call(MAP_UPDATE_ELEM)
            .map(drop)
    }

    /// Removes `key` (absent: nothing to do).
    pub fn delete(&self, key: &[u8]) -> io::Result<()> {
        if key.len() != self.key_size {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "map key of the wrong size"));
        }
        match Attr::new().u32(0, self.fd() as u32).u64(8, key.as_ptr() as u64).call(MAP_DELETE_ELEM) {
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(e),
            _ => Ok(()),
        }
    }

    /// Reads `key` into `value` (a per-CPU map writes one value per possible CPU, so `value`
    /// must hold that many); false when absent.
    pub fn lookup(&self, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
        if key.len() != self.key_size || value.len() < self.value_size {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "map key or value of the wrong size"));
        }
        match Attr::new()
            .u32(0, self.fd() as u32)
            .u64(8, key.as_ptr() as u64)
            .u64(16, value.as_mut_ptr() as u64)
            .call(MAP_LOOKUP_ELEM)
        {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// A per-CPU array's entry `index`, summed over the CPUs (0 when it cannot be read).
    pub fn per_cpu_sum(&self, index: u32) -> u64 {
        let mut values = vec![0u8; self.value_size * possible_cpus()];
        match self.lookup(&index.to_ne_bytes(), &mut values) {
            Ok(true) => values
                .chunks_exact(8)
                .map(|c| u64::from_ne_bytes(c.try_into().unwrap_or([0; 8])))
                .fold(0u64, u64::saturating_add),
            _ => 0,
        }
    }

    /// Every key, at most as many as the map holds. A walk whose current key was removed
    /// meanwhile starts again from the first key, so under churn (an LRU map evicting during a
    /// flood) an unbounded walk might never end: this one stops at the map's size.
    pub fn keys(&self) -> Vec<Vec<u8>> {
        let mut keys: Vec<Vec<u8>> = Vec::new();
        let mut next = vec![0u8; self.key_size];
        while keys.len() < self.max_entries {
            match self.next_key(keys.last().map(Vec::as_slice), &mut next) {
                Ok(true) => keys.push(next.clone()),
                _ => break,
            }
        }
        // A restarted walk meets some keys twice.
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// The key after `key` (the first with `None`) into `next`; false at the end.
    fn next_key(&self, key: Option<&[u8]>, next: &mut [u8]) -> io::Result<bool> {
        if next.len() != self.key_size || key.is_some_and(|k| k.len() != self.key_size) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "map key of the wrong size"));
        }
        match Attr::new()
            .u32(0, self.fd() as u32)
            .u64(8, key.map_or(0, |k| k.as_ptr() as u64))
            .u64(16, next.as_mut_ptr() as u64)
            .call(MAP_GET_NEXT_KEY)
        {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// A loaded program.
#[derive(Debug)]
pub struct Program {
    fd: OwnedFd,
}

/// Why a program did not load.
#[derive(Debug)]
pub struct LoadError {
    /// The syscall's error.
    pub error: io::Error,
    /// The verifier's log (its last lines say why).
    pub log: String,
}

impl Program {
    /// Loads `insns` (8 bytes each) as a socket filter.
    pub fn load_socket_filter(insns: &[u8], name: &str) -> Result<Program, LoadError> {
        Program::load(PROG_TYPE_SOCKET_FILTER, insns, name)
    }

    /// Loads `insns` as a `SO_REUSEPORT` group's socket selector (`BPF_PROG_TYPE_SK_REUSEPORT`).
    pub fn load_reuseport(insns: &[u8], name: &str) -> Result<Program, LoadError> {
        Program::load(PROG_TYPE_SK_REUSEPORT, insns, name)
    }

    fn load(kind: u32, insns: &[u8], name: &str) -> Result<Program, LoadError> {
        let license = b"GPL\0";
        let mut log = vec![0u8; 1 << 16];
        let r = Attr::new()
            .u32(0, kind)
            .u32(4, (insns.len() / 8) as u32)
            .u64(8, insns.as_ptr() as u64)
            .u64(16, license.as_ptr() as u64)
            .u32(24, 1)
            .u32(28, log.len() as u32)
            .u64(32, log.as_mut_ptr() as u64)
            .name(48, name)
            .call(PROG_LOAD);
        match r {
            Ok(fd) => Ok(Program { fd: fd_of(fd) }),
            Err(error) => {
                let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
                Err(LoadError { error, log: String::from_utf8_lossy(&log[..end]).into_owned() })
            }
        }
    }

    /// Attaches it to socket `socket` (`SO_ATTACH_BPF`); it stays until the socket closes.
    pub fn attach(&self, socket: RawFd) -> io::Result<()> {
        self.set_on(socket, SO_ATTACH_BPF)
    }

    /// Attaches it as the selector of the `SO_REUSEPORT` group `socket` is in
    /// (`SO_ATTACH_REUSEPORT_EBPF`); it stays while the group has sockets.
    pub fn attach_reuseport(&self, socket: RawFd) -> io::Result<()> {
        self.set_on(socket, SO_ATTACH_REUSEPORT_EBPF)
    }

    fn set_on(&self, socket: RawFd, option: libc::c_int) -> io::Result<()> {
        let fd: libc::c_int = self.fd.as_raw_fd();
        // SAFETY: `fd` is a valid c_int for the duration of the call and the length given is
        // its size; the kernel only reads it.
        let r = unsafe {
            libc::setsockopt(
                socket,
                libc::SOL_SOCKET,
                option,
                (&fd as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

/// Possible CPUs (the number of values a per-CPU map lookup returns).
pub fn possible_cpus() -> usize {
    // "0-7" or "0,2-3": the highest index plus one.
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| s.trim().split([',', '-']).filter_map(|p| p.parse::<usize>().ok()).max())
        .map_or(1, |m| m + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An LRU map holds at most its size whatever is written (the oldest go), and a walk of it
    /// never yields more keys than that, each once (root: the test command runs as root).
    #[test]
    fn a_walk_is_bounded_by_the_map() {
        let map = Map::create(MapKind::LruHash, 8, 8, 64, "fg_test").expect("bpf map (root)");
        for k in 0u64..1000 {
            map.update(&k.to_ne_bytes(), &k.to_ne_bytes()).unwrap();
        }
        let keys = map.keys();
        assert!(!keys.is_empty() && keys.len() <= 64, "{} keys", keys.len());
        let mut value = [0u8; 8];
        assert!(map.lookup(&999u64.to_ne_bytes(), &mut value).unwrap(), "the newest stays");
        for k in &keys {
            map.delete(k).unwrap();
        }
        assert!(map.keys().is_empty());
    }
}
