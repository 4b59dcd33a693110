//! The guard's kernel layer (an eBPF socket filter) through the real binary: it loads where
//! the kernel allows (the test command runs as root), says so in the log and the metrics, and
//! past what floodgate can read it keeps a legitimate sender whole while a flood from another
//! source fills what is left — which the user-space guard alone cannot, since the kernel drops
//! from a full socket buffer without looking at the source.

use std::time::{Duration, Instant};

use crate::common::*;

struct Outcome {
    legit_sent: u64,
    legit_received: f64,
    flood_sent: u64,
    flood_received: f64,
    seconds: f64,
    buffer_drops: f64,
    kernel_source_drops: f64,
}

/// floodgate held to 10 % of a core; one source floods as fast as it can, another sends 500
/// lines a second (its limit is 2,000) for 10 s; what reached Carbon from each.
fn beyond_capacity(kernel: &str) -> Outcome {
    let carbon = Carbon::start();
    // The flood's and the legitimate sender's loopback addresses stand for two hosts.
    let mut fg = Floodgate::start(
        "flush_interval = \"2s\"\nreceive_threads = 1\nreceive_buffer = \"1MiB\"",
        &format!(
            "[graphite]\naddress = \"127.0.0.1:{}\"\n\n[limits]\nudp_per_source = 2000\nudp_per_port = 0\nkernel = \"{kernel}\"\n\
             local_senders = \"by_address\"\n",
            carbon.line_port
        ),
    );
    let share = cgroup::CpuShare::confine(fg.child.id(), 10, "floodgate-test");
    let to = fg.udp_addr();
    let start = Instant::now();
    let flood = Sender::start("127.0.0.2", to, "flood.hits:1|c", 0, 4);
    let legit = Sender::start("127.0.0.3", to, "legit.hits:1|c", 500, 1);
    std::thread::sleep(Duration::from_secs(10));
    let (flood_sent, legit_sent) = (flood.stop(), legit.stop());
    let seconds = start.elapsed().as_secs_f64();
    // Everything queued is read, flushed, and in Whisper once the sums stop moving.
    let sum = |name: &str| carbon.fetch(name).iter().sum::<f64>();
    let mut last = (-1.0, -1.0);
    let (legit_received, flood_received) = wait_for("Carbon's sums to settle", Duration::from_secs(120), || {
        std::thread::sleep(Duration::from_secs(3));
        let now = (sum("stats_counts.legit.hits"), sum("stats_counts.flood.hits"));
        let settled = now == last && now.0 > 0.0;
        last = now;
        settled.then_some(now)
    });
    let m = fg.self_metrics();
    let buffer_drops = metric(&m, "floodgate_dropped_total", &["reason=\"kernel_receive_buffer\""]).unwrap_or(0.0);
    let kernel_source_drops = metric(&m, "floodgate_dropped_total", &["reason=\"kernel_source_limit\""]).unwrap_or(0.0);
    if kernel == "auto" {
        let outcome = ["outcome=\"source_limit\""];
        assert_eq!(metric(&m, "floodgate_kernel_guard_datagrams_total", &outcome), Some(kernel_source_drops));
        assert_eq!(metric(&m, "floodgate_kernel_guard_attached", &[]), Some(1.0));
        // The limited source is in /offenders, from the kernel's map.
        let (_, offenders) = http_get(fg.http, "/offenders").unwrap();
        assert!(offenders.contains("\"kernel_source_limit\"") && offenders.contains("127.0.0.2"), "{offenders}");
        // And /api/status, which /ui draws from.
        let (_, status) = http_get(fg.http, "/api/status").unwrap();
        assert!(status.contains("\"kernel_source_limit\"") && status.contains("127.0.0.2"), "{status}");
    }
    let log = fg.stderr();
    if kernel == "auto" {
        assert!(log.contains("kernel guard attached"), "{log}");
    } else {
        assert!(log.contains("kernel guard off"), "{log}");
    }
    fg.signal("TERM");
    let _ = fg.child.wait();
    drop(share);
    Outcome { legit_sent, legit_received, flood_sent, flood_received, seconds, buffer_drops, kernel_source_drops }
}

/// Past what floodgate can read: with the kernel layer the legitimate source loses nothing and
/// the flood is held to its limit; without it (same run) the socket buffer overflows and the
/// kernel drops without regard to source, the legitimate sender's datagrams included.
#[test]
fn beyond_capacity_the_kernel_layer_keeps_the_legitimate_sender_whole() {
    let with = beyond_capacity("auto");
    let without = beyond_capacity("off");
    for (name, o) in [("kernel layer", &with), ("user space only", &without)] {
        eprintln!(
            "{name}: legit {}/{} ({:.2} % lost), flood {}/{} in {:.1} s, socket buffer drops {}, kernel source drops {}",
            o.legit_received,
            o.legit_sent,
            (1.0 - o.legit_received / o.legit_sent as f64) * 100.0,
            o.flood_received,
            o.flood_sent,
            o.seconds,
            o.buffer_drops,
            o.kernel_source_drops
        );
    }
    assert_eq!(with.legit_received, with.legit_sent as f64, "the legitimate source lost nothing");
    assert!(with.flood_received <= 2000.0 * (with.seconds + 1.0), "the flood held to its limit");
    assert!(with.kernel_source_drops > 0.0, "the kernel dropped the flood");
    // The effect: without the kernel layer the buffer overflowed (what was lost of the
    // legitimate sender's is printed above).
    assert!(without.buffer_drops > 0.0, "the flood was beyond what floodgate could read");
}

/// Where the kernel refuses (here: floodgate run as `nobody` with no capabilities), the
/// user-space guard limits the listener alone, and the log and metrics say so.
#[test]
fn without_privilege_the_user_space_guard_runs_and_says_so() {
    let wrapper =
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"];
    let fg = Floodgate::start_as(&wrapper, "", "[limits]\nudp_per_source = 5\nkernel = \"auto\"\n");
    let log = fg.stderr();
    assert!(log.contains("kernel guard unavailable"), "{log}");
    assert!(!log.contains("kernel guard attached"), "{log}");
    let m = fg.self_metrics();
    assert_eq!(metric(&m, "floodgate_kernel_guard_attached", &[]), None);
    // And the user-space guard limits: 20 lines from one source, 5 in.
    let socket = std::net::UdpSocket::bind("127.0.0.2:0").unwrap();
    for _ in 0..20 {
        socket.send_to(b"x:1|c", fg.udp_addr()).unwrap();
    }
    fg.wait_sample("floodgate_dropped_total", &["listener=\"statsd_udp\"", "reason=\"source_limit\""], |v| v == 15.0);
}

/// SIGHUP changes the kernel layer's limits in place: the program stays attached, its maps
/// take the new rates.
#[test]
fn limits_change_in_the_kernel_on_sighup() {
    let sections = |rate: u32| format!("[limits]\nudp_per_source = {rate}\nudp_per_port = 0\nkernel = \"auto\"\n");
    let fg = Floodgate::start("", &sections(5));
    assert!(fg.stderr().contains("kernel guard attached"), "{}", fg.stderr());
    let socket = std::net::UdpSocket::bind("127.0.0.2:0").unwrap();
    let send = |n: usize| {
        for _ in 0..n {
            socket.send_to(b"x:1|c", fg.udp_addr()).unwrap();
        }
    };
    let outcome = |o: &str| format!("outcome=\"{o}\"");
    send(20);
    fg.wait_sample("floodgate_kernel_guard_datagrams_total", &[&outcome("source_limit")], |v| v == 15.0);
    fg.reload("", &sections(100_000));
    wait_for("the reload", Duration::from_secs(20), || fg.stderr().contains("config reloaded").then_some(()));
    send(20);
    fg.wait_sample("floodgate_kernel_guard_datagrams_total", &[&outcome("passed")], |v| v == 25.0);
    assert_eq!(fg.sample("floodgate_kernel_guard_datagrams_total", &[&outcome("source_limit")]), 15.0);
}

/// The cgroup helpers find the `cpu` controller and a place for a container's group on each
/// layout a Debian host has, so this suite runs on a unified (v2-only) host as on a hybrid one.
mod cgroup_layouts {
    use super::cgroup::*;
    use std::path::Path;

    const HYBRID: &str = "tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";
    const UNIFIED: &str =
        "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate,memory_recursiveprot 0 0\n";
    const V1_ONLY: &str = "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,nodev,noexec,relatime,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,nosuid,nodev,noexec,relatime,xattr,name=systemd 0 0
";

    fn offering(text: &'static str) -> impl Fn(&Path) -> String {
        move |_| text.to_string()
    }

    #[test]
    fn a_hybrid_host_uses_v1_cpu_and_v2_for_names() {
        // The hybrid v2 mount offers no controllers: they are bound to v1.
        let all = hierarchies_in(HYBRID, offering(""));
        assert_eq!(cpu_hierarchy(&all).unwrap().mount, Path::new("/sys/fs/cgroup/cpu"));
        assert_eq!(naming_hierarchy(&all).unwrap().mount, Path::new("/sys/fs/cgroup/unified"));
    }

    #[test]
    fn a_unified_host_uses_v2_for_both() {
        let all = hierarchies_in(UNIFIED, offering("cpuset cpu io memory pids\n"));
        let cpu = cpu_hierarchy(&all).unwrap();
        assert!(cpu.v2 && cpu.mount == Path::new("/sys/fs/cgroup"));
        assert_eq!(naming_hierarchy(&all).unwrap().mount, Path::new("/sys/fs/cgroup"));
        // Without the cpu controller offered there is nothing to confine with.
        assert!(cpu_hierarchy(&hierarchies_in(UNIFIED, offering("memory pids"))).is_none());
    }

    #[test]
    fn a_v1_only_host_names_in_systemds_hierarchy() {
        let all = hierarchies_in(V1_ONLY, offering(""));
        assert_eq!(cpu_hierarchy(&all).unwrap().mount, Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(naming_hierarchy(&all).unwrap().mount, Path::new("/sys/fs/cgroup/systemd"));
    }
}
