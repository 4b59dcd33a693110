//! Control groups for tests, on either layout a Debian host has: the unified cgroup v2
//! hierarchy alone (stock Debian 12 under systemd) or the hybrid one (v1 controllers such as
//! `cpu` in their own hierarchies, v2 mounted beside them without controllers).

use std::path::{Path, PathBuf};
use std::time::Duration;

/// One mounted hierarchy: where, and whether it is v2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub mount: PathBuf,
    pub v2: bool,
    /// v1: the controllers (mount options such as `cpu`, `name=systemd`); v2: those its root
    /// offers (`cgroup.controllers`).
    pub controllers: Vec<String>,
}

/// The cgroup hierarchies in a `/proc/mounts` text; a v2 hierarchy's controllers are read by
/// `controllers_of` (its root's `cgroup.controllers`).
pub fn hierarchies_in(mounts: &str, controllers_of: impl Fn(&Path) -> String) -> Vec<Hierarchy> {
    mounts
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (mount, fstype, options) = (f.get(1)?, f.get(2)?, f.get(3)?);
            let mount = PathBuf::from(mount);
            match *fstype {
                "cgroup2" => {
                    let controllers = controllers_of(&mount).split_whitespace().map(str::to_string).collect();
                    Some(Hierarchy { mount, v2: true, controllers })
                }
                "cgroup" => {
                    let controllers = options
                        .split(',')
                        .filter(|o| !matches!(*o, "rw" | "ro" | "relatime" | "nosuid" | "nodev" | "noexec"))
                        .map(str::to_string)
                        .collect();
                    Some(Hierarchy { mount, v2: false, controllers })
                }
                _ => None,
            }
        })
        .collect()
}

/// This host's hierarchies.
pub fn hierarchies() -> Vec<Hierarchy> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    hierarchies_in(&mounts, |m| std::fs::read_to_string(m.join("cgroup.controllers")).unwrap_or_default())
}

/// Where the `cpu` controller is: its v1 hierarchy if it has one (a hybrid host), else the v2
/// hierarchy that offers it.
pub fn cpu_hierarchy(all: &[Hierarchy]) -> Option<&Hierarchy> {
    let has_cpu = |h: &&Hierarchy| h.controllers.iter().any(|c| c == "cpu");
    all.iter().filter(|h| !h.v2).find(has_cpu).or_else(|| all.iter().filter(|h| h.v2).find(has_cpu))
}

/// Where to make a group that only needs to show in `/proc/PID/cgroup` (a container's id):
/// the v2 hierarchy, else v1's `name=systemd`, else any v1 hierarchy.
pub fn naming_hierarchy(all: &[Hierarchy]) -> Option<&Hierarchy> {
    all.iter()
        .find(|h| h.v2)
        .or_else(|| all.iter().find(|h| h.controllers.iter().any(|c| c == "name=systemd")))
        .or_else(|| all.first())
}

/// A group holding a process to a share of one core (the `cpu` controller: v1's
/// `cpu.cfs_quota_us`, or v2's `cpu.max`); removed when dropped.
pub struct CpuShare {
    dir: PathBuf,
}

impl CpuShare {
    /// Moves `pid` (every thread of it) into a new group allowed `percent` % of a core.
    pub fn confine(pid: u32, percent: u32, name: &str) -> CpuShare {
        let all = hierarchies();
        let h = cpu_hierarchy(&all).unwrap_or_else(|| panic!("no cgroup hierarchy with the cpu controller: {all:?}"));
        let dir = h.mount.join(format!("{name}-{pid}"));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let period = 100_000;
        let quota = percent * 1000;
        if h.v2 {
            // A v2 group's controllers are those its parent hands down.
            std::fs::write(h.mount.join("cgroup.subtree_control"), "+cpu").unwrap();
            std::fs::write(dir.join("cpu.max"), format!("{quota} {period}")).unwrap();
            // v2 moves a whole process, every thread with it.
            std::fs::write(dir.join("cgroup.procs"), pid.to_string()).unwrap();
        } else {
            std::fs::write(dir.join("cpu.cfs_period_us"), period.to_string()).unwrap();
            std::fs::write(dir.join("cpu.cfs_quota_us"), quota.to_string()).unwrap();
            // v1 moves threads one by one.
            for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
                let tid = task.unwrap().file_name();
                std::fs::write(dir.join("tasks"), tid.to_string_lossy().as_bytes()).unwrap();
            }
        }
        CpuShare { dir }
    }
}

impl Drop for CpuShare {
    fn drop(&mut self) {
        // Empty once the process has exited.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A group named as Docker's systemd driver names a container's (`docker-<64 hex>.scope`),
/// inside one of the test's own; removed when dropped.
pub struct ContainerCgroup {
    dir: PathBuf,
    pub id: String,
}

impl ContainerCgroup {
    pub fn create() -> ContainerCgroup {
        let all = hierarchies();
        let h = naming_hierarchy(&all).expect("a cgroup hierarchy (the container id is read from /proc/PID/cgroup)");
        let id = format!("{:064x}", u128::from(std::process::id()) * 0x9e37_79b9_7f4a_7c15 + 0xfeed);
        let dir = h.mount.join(format!("floodgate-test-{}/docker-{id}.scope", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        ContainerCgroup { dir, id }
    }

    /// Moves process `pid` into it.
    pub fn enter(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for ContainerCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
        let _ = std::fs::remove_dir(self.dir.parent().unwrap());
    }
}
