//! Unix socket files: who may send to one is its mode and owner (`unix_mode`, `unix_owner`,
//! `unix_group` in `[statsd]` and `[syslog]`), set right after binding.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Who may use a socket file: its mode (octal text), owner and group (names or numbers).
#[derive(Debug, Clone, Copy)]
pub struct Access<'a> {
    /// `"0622"`.
    pub mode: &'a str,
    /// Unchanged when `None`.
    pub owner: Option<&'a str>,
    /// Unchanged when `None`.
    pub group: Option<&'a str>,
}

impl<'a> Access<'a> {
    /// From a section's `unix_mode`, `unix_owner` and `unix_group`.
    pub fn of(mode: &'a str, owner: &'a Option<String>, group: &'a Option<String>) -> Access<'a> {
        Access { mode, owner: owner.as_deref(), group: group.as_deref() }
    }
}

/// Whether `mode` is an octal file mode (`"0660"`, `"0o660"`).
pub fn valid_mode(mode: &str) -> bool {
    u32::from_str_radix(mode.trim_start_matches("0o"), 8).is_ok_and(|m| m <= 0o7777)
}

/// Gives the socket file at `path` the configured mode, owner and group.
///
/// The file is first opened as itself (`O_PATH | O_NOFOLLOW`) and must be a socket; the mode
/// and owner are then set on that inode (through `/proc/self/fd`), never on a path looked up
/// again. In a directory someone else can write into, a link swapped in after `bind` would
/// otherwise have made a root-run floodgate give a file of its choosing the socket's mode and
/// owner.
pub fn set_access(path: &Path, access: Access<'_>) -> Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let mode = u32::from_str_radix(access.mode.trim_start_matches("0o"), 8)
        .with_context(|| format!("unix_mode `{}` is not an octal mode", access.mode))?;
    let uid = access.owner.map(|o| id_of(o, Path::new("/etc/passwd"))).transpose()?;
    let gid = access.group.map(|g| id_of(g, Path::new("/etc/group"))).transpose()?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    if !file.metadata().context("cannot read what it is")?.file_type().is_socket() {
        bail!("{} is no longer the socket floodgate bound (a link or another file was put there)", path.display());
    }
    let itself = format!("/proc/self/fd/{}", file.as_raw_fd());
    std::fs::set_permissions(&itself, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set mode {:o}", mode))?;
    if uid.is_some() || gid.is_some() {
        std::os::unix::fs::chown(&itself, uid, gid).context("cannot change the owner")?;
    }
    Ok(())
}

/// A user or group as a number: given as one, or looked up by name in `database` (`name:x:id:...`
/// lines: /etc/passwd, /etc/group).
fn id_of(name: &str, database: &Path) -> Result<u32> {
    if let Ok(id) = name.parse() {
        return Ok(id);
    }
    let text = std::fs::read_to_string(database).with_context(|| format!("cannot read {}", database.display()))?;
    for line in text.lines() {
        let mut fields = line.split(':');
        if fields.next() == Some(name) {
            if let Some(id) = fields.nth(1).and_then(|f| f.parse().ok()) {
                return Ok(id);
            }
        }
    }
    bail!("no `{name}` in {}", database.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attack: the socket file replaced by a link to a root-owned 0600 file between `bind`
    /// and this call. Refused, and the file keeps its mode and owner.
    #[test]
    fn a_link_in_place_of_the_socket_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("shadow");
        std::fs::write(&victim, b"secret").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        let sock = dir.path().join("statsd.sock");
        let bound = std::os::unix::net::UnixDatagram::bind(&sock).unwrap();
        let access = Access { mode: "0622", owner: Some("65534"), group: Some("65534") };
        set_access(&sock, access).unwrap();
        assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o7777, 0o622);
        std::fs::remove_file(&sock).unwrap();
        std::os::unix::fs::symlink(&victim, &sock).unwrap();
        let e = set_access(&sock, access).unwrap_err();
        assert!(format!("{e:#}").contains("no longer the socket"), "{e:#}");
        let m = std::fs::metadata(&victim).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o600);
        assert_eq!(std::os::unix::fs::MetadataExt::uid(&m), 0);
        drop(bound);
    }

    #[test]
    fn names_and_numbers_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("passwd");
        std::fs::write(&db, "root:x:0:0::/root:/bin/sh\nfloodgate:x:998:998::/:/usr/sbin/nologin\n").unwrap();
        assert_eq!(id_of("floodgate", &db).unwrap(), 998);
        assert_eq!(id_of("1234", &db).unwrap(), 1234);
        assert!(id_of("nobody-here", &db).unwrap_err().to_string().contains("no `nobody-here`"));
    }
}

/// Whether other users' processes are hidden from this one in /proc (mounted with `hidepid`, as
/// systemd's `ProtectProc=invisible` does): the origin tags `program` and `container_id`, read
/// from the sender's /proc/PID, then come out empty for senders running as another user. Told
/// by trying what origin tags do on PID 1, which belongs to root.
pub fn proc_hides_other_users() -> bool {
    std::fs::read_to_string("/proc/1/comm").is_err() && std::path::Path::new("/proc/self/comm").exists()
}

/// A process's program name (`/proc/PID/comm`), empty once it has exited.
pub fn program_name(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).map(|c| c.trim_end().to_string()).unwrap_or_default()
}

/// A process's container id, from its cgroup (`/proc/PID/cgroup`), as DogStatsD's origin
/// detection reads it; `None` outside a container or once it has exited.
pub fn container_id(pid: i32) -> Option<String> {
    container_id_in(&std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?)
}

/// The container id in the text of a `/proc/PID/cgroup`: the last path segment holding one
/// (64 hex digits, bare as Docker and Kubernetes' cgroupfs driver write it, or inside a
/// systemd scope: `docker-<id>.scope`, `cri-containerd-<id>.scope`, `crio-<id>.scope`,
/// `libpod-<id>.scope`).
pub fn container_id_in(cgroup: &str) -> Option<String> {
    let is_id = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let mut found = None;
    for path in cgroup.lines().filter_map(|line| line.splitn(3, ':').nth(2)) {
        for segment in path.split('/') {
            let segment = segment.strip_suffix(".scope").unwrap_or(segment);
            let id = segment.rsplit(['-', ':']).next().unwrap_or(segment);
            if is_id(id) {
                found = Some(id.to_ascii_lowercase());
            }
        }
    }
    found
}

/// When process `pid` started (`/proc/PID/stat`'s 22nd field, clock ticks since boot): with
/// the pid, it names one process, where a pid alone is reused once its process has exited.
/// `None` once it has exited.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The program name (field 2) may hold spaces and `)`: the fields after it start after
    // the last `)`, with field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// What the kernel's pid of a Unix socket sender tells about it, read once per process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerInfo {
    /// Its program name (`/proc/PID/comm`).
    pub program: String,
    /// Its container's id, if it runs in one.
    pub container_id: Option<String>,
    /// When the process started ([`start_time`]): the pid's facts hold for this process only.
    started: Option<u64>,
}

/// [`PeerInfo`] by pid, for one receive thread. Bounded: cleared when full, so a sender that
/// forks without end cannot grow it. An entry is checked against the process's start time
/// each time it is asked for (once per change of sender): a process that took a dead one's
/// pid gets its own facts, not the dead one's.
#[derive(Debug, Default)]
pub struct Peers {
    by_pid: std::collections::HashMap<i32, PeerInfo>,
}

impl Peers {
    /// Most pids remembered.
    pub const MAX: usize = 1024;

    /// What `pid` is (read from `/proc` the first time; the container id only when
    /// `container` is asked for).
    pub fn get(&mut self, pid: i32, container: bool) -> &PeerInfo {
        if self.by_pid.len() >= Self::MAX && !self.by_pid.contains_key(&pid) {
            self.by_pid.clear();
        }
        let started = start_time(pid);
        let read = || PeerInfo {
            program: program_name(pid),
            container_id: if container { container_id(pid) } else { None },
            started,
        };
        let entry = self.by_pid.entry(pid).or_insert_with(read);
        if entry.started != started || started.is_none() {
            // Another process under the same pid (or none now): read again, never reuse.
            *entry = read();
        }
        entry
    }
}

#[cfg(test)]
mod peer_tests {
    use super::*;

    #[test]
    fn container_ids_as_docker_kubernetes_and_systemd_write_them() {
        let id = "3f2a9c0d1e4b5a6978f0e1d2c3b4a5968778695a4b3c2d1e0f9e8d7c6b5a4938";
        for text in [
            format!("12:memory:/docker/{id}\n0::/"),
            format!("0::/system.slice/docker-{id}.scope"),
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-{id}.scope"
            ),
            format!("0::/kubepods/besteffort/pod0f1e2d3c/{id}"),
            format!("0::/machine.slice/libpod-{id}.scope/container"),
            format!("0::/kubepods.slice/crio-{}.scope", id.to_uppercase()),
        ] {
            assert_eq!(container_id_in(&text).as_deref(), Some(id), "{text}");
        }
        for text in [
            "0::/",
            "0::/user.slice/user-1000.slice/session-2.scope",
            "4:memory:/process_api/d027b760e109e3cd96f316aeeda35752",
        ] {
            assert_eq!(container_id_in(text), None, "{text}");
        }
    }

    #[test]
    fn peers_are_read_once_and_bounded() {
        let mut peers = Peers::default();
        let me = std::process::id() as i32;
        assert!(!peers.get(me, true).program.is_empty());
        for pid in 0..(Peers::MAX as i32 + 10) {
            peers.get(-pid - 2, false);
        }
        assert!(peers.by_pid.len() <= Peers::MAX);
        assert_eq!(peers.get(-5, false).program, "", "a gone process has no name");
    }
}
