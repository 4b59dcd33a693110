//! The Debian package (`cargo deb -p floodgate`, built by the test command first): the files it
//! installs, the conffile, the packaged config passing `floodgate check` with the packaged
//! binary, the unit's capabilities and hardening, its maintainer scripts enabling the unit,
//! and `systemd-analyze verify` on the unit.

use std::process::Command;
use std::time::Duration;

use crate::common::*;

fn deb() -> std::path::PathBuf {
    let dir = repo_root().join("target/debian");
    std::fs::read_dir(&dir)
        .ok()
        .and_then(|d| d.flatten().map(|e| e.path()).find(|p| p.extension().is_some_and(|x| x == "deb")))
        .unwrap_or_else(|| {
            panic!("no .deb in {}: run ./scripts/test.sh (it runs `cargo deb -p floodgate`)", dir.display())
        })
}

fn dpkg_deb(args: &[&str]) -> String {
    let out = Command::new(require_tool("dpkg-deb")).args(args).output().unwrap();
    assert!(out.status.success(), "dpkg-deb {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_debian_package_installs_binary_unit_and_a_config_that_checks() {
    let deb = deb();
    let deb_s = deb.to_str().unwrap();
    let listing = dpkg_deb(&["-c", deb_s]);
    for file in [
        "./usr/bin/floodgate",
        "./usr/lib/systemd/system/floodgate.service",
        "./etc/floodgate/floodgate.toml",
        "./usr/share/doc/floodgate/README.md",
        "./usr/share/doc/floodgate/deployment.md",
        "./usr/share/floodgate/dashboards/floodgate.json",
        "./usr/lib/sysusers.d/floodgate.conf",
    ] {
        assert!(listing.lines().any(|l| l.ends_with(file)), "{file} not in the package:\n{listing}");
    }
    // The config may hold credentials: not world-readable.
    let config = listing.lines().find(|l| l.ends_with("./etc/floodgate/floodgate.toml")).unwrap();
    assert!(config.starts_with("-rw-r-----"), "{config}");
    let root = tempfile::tempdir().unwrap();
    let status = Command::new(require_tool("dpkg-deb")).args(["-x", deb_s]).arg(root.path()).status().unwrap();
    assert!(status.success());
    let control = root.path().join("DEBIAN");
    let status = Command::new(require_tool("dpkg-deb")).args(["-e", deb_s]).arg(&control).status().unwrap();
    assert!(status.success());
    assert_eq!(std::fs::read_to_string(control.join("conffiles")).unwrap().trim(), "/etc/floodgate/floodgate.toml");
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
    assert!(postinst.contains("floodgate.service") && postinst.contains("enable"), "{postinst}");
    // The user exists before the config is given to its group and before the unit starts.
    let user = postinst.find("systemd-sysusers floodgate.conf").expect("postinst makes the user");
    let chown =
        postinst.find("chown root:floodgate /etc/floodgate/floodgate.toml").expect("postinst chowns the config");
    let chmod = postinst.find("chmod 0640 /etc/floodgate/floodgate.toml").expect("postinst restricts the config");
    let enable = postinst.find("floodgate.service").unwrap();
    assert!(user < chown && chown < enable && chmod < enable, "{postinst}");
    let syntax = Command::new("sh").arg("-n").arg(control.join("postinst")).output().unwrap();
    assert!(syntax.status.success(), "postinst: {}", String::from_utf8_lossy(&syntax.stderr));
    let sysusers = std::fs::read_to_string(root.path().join("usr/lib/sysusers.d/floodgate.conf")).unwrap();
    assert!(sysusers.lines().any(|l| l.starts_with("u floodgate ")), "{sysusers}");

    // The packaged binary accepts the packaged config.
    let bin = root.path().join("usr/bin/floodgate");
    let out = Command::new(&bin)
        .args(["check", "--config"])
        .arg(root.path().join("etc/floodgate/floodgate.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "floodgate check: {}", String::from_utf8_lossy(&out.stderr));

    // The unit: check before start, only the capabilities conntrack and low ports need, hardened.
    let unit = std::fs::read_to_string(root.path().join("usr/lib/systemd/system/floodgate.service")).unwrap();
    for line in [
        "Type=notify",
        "ExecStartPre=/usr/bin/floodgate check --quiet --config /etc/floodgate/floodgate.toml",
        "ExecStart=/usr/bin/floodgate run --config /etc/floodgate/floodgate.toml",
        "ExecReload=/usr/bin/floodgate reload --config /etc/floodgate/floodgate.toml --pid $MAINPID",
        "SystemCallFilter=@system-service bpf",
        "RuntimeDirectory=floodgate",
        "AmbientCapabilities=CAP_NET_ADMIN CAP_NET_BIND_SERVICE CAP_BPF",
        "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE CAP_BPF",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "User=floodgate",
        "Group=floodgate",
        "MemoryHigh=1G",
        "MemoryMax=2G",
        "TasksMax=512",
        "LimitNOFILE=65536",
    ] {
        assert!(unit.lines().any(|l| l == line), "unit lacks `{line}`");
    }
    // systemd-analyze verify (the test command installs systemd) on the unit pointing at the
    // extracted binary.
    let analyze = require_tool("systemd-analyze");
    let copy = root.path().join("floodgate.service");
    std::fs::write(&copy, unit.replace("/usr/bin/floodgate", bin.to_str().unwrap())).unwrap();
    let out = Command::new(analyze).arg("verify").arg(&copy).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let ours: Vec<&str> = text.lines().filter(|l| l.contains("floodgate")).collect();
    assert!(out.status.success() && ours.is_empty(), "systemd-analyze verify:\n{text}");
}

/// A minimal Debian 12 root (debootstrap's minbase with systemd, from Debian's own packages),
/// made once and kept in `target/boot/` for later runs.
fn debian_root() -> std::path::PathBuf {
    let boot = repo_root().join("target/boot");
    let base = boot.join("bookworm-minbase");
    if base.join(".complete").exists() {
        return base;
    }
    let building = boot.join(format!("building-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&building);
    std::fs::create_dir_all(&boot).unwrap();
    let out = Command::new(require_tool("debootstrap"))
        .args(["--variant=minbase", "--include=systemd,systemd-sysv,dbus", "bookworm"])
        .arg(&building)
        .arg(debian_mirror())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "debootstrap: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(building.join(".complete"), b"").unwrap();
    let _ = std::fs::remove_dir_all(&base);
    std::fs::rename(&building, &base).unwrap();
    base
}

/// The Debian mirror this machine's apt uses (a CI runner may have its own), else Debian's.
fn debian_mirror() -> String {
    let mut sources = String::new();
    for file in ["/etc/apt/sources.list", "/etc/apt/sources.list.d/debian.sources"] {
        sources.push_str(&std::fs::read_to_string(file).unwrap_or_default());
        sources.push('\n');
    }
    sources
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.split_whitespace())
        .find(|w| {
            (w.starts_with("http://") || w.starts_with("https://")) && w.trim_end_matches('/').ends_with("/debian")
        })
        .unwrap_or("http://deb.debian.org/debian")
        .to_string()
}

/// A copy of the Debian root booted with systemd as PID 1 (systemd-nspawn), in a network
/// namespace of the test's own; halted and deleted when dropped.
struct Booted {
    nspawn: std::process::Child,
    /// The container's systemd, as the host sees it (for nsenter).
    leader: u32,
    root: std::path::PathBuf,
    console: std::path::PathBuf,
    netns: String,
}

impl Booted {
    fn boot(base: &std::path::Path, netns: &Namespace) -> Booted {
        let root = base.with_file_name(format!("run-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let copy = Command::new("cp").arg("-a").arg(base).arg(&root).status().unwrap();
        assert!(copy.success(), "cp -a {}", base.display());
        let console = root.with_extension("console.log");
        // The namespace the test made: floodgate's loopback listeners there are the
        // container's own (no clash with other tests), and the host reaches it over the veth.
        // nspawn keeps a container from CAP_BPF and bpf(2) unless asked (its own filter); a
        // real host gives the unit what it asks for, so the container is told to pass them on.
        let nspawn = Command::new(require_tool("systemd-nspawn"))
            .args(["-q", "-b", "--register=no", "--keep-unit", "--console=pipe"])
            .arg(format!("--network-namespace-path=/run/netns/{}", netns.name))
            .args(["--capability=CAP_NET_ADMIN,CAP_BPF", "--system-call-filter=bpf", "-D"])
            .arg(&root)
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&console).unwrap())
            .stderr(std::process::Stdio::from(std::fs::File::create(root.with_extension("stderr.log")).unwrap()))
            .spawn()
            .expect("systemd-nspawn");
        let id = nspawn.id();
        // nspawn's child becomes the container's PID 1 once it has exec'd systemd.
        let leader = wait_for("the container's systemd", Duration::from_secs(30), || {
            let children = std::fs::read_to_string(format!("/proc/{id}/task/{id}/children")).ok()?;
            let pid = children.split_whitespace().next()?.parse::<u32>().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            (comm.trim() == "systemd").then_some(pid)
        });
        let booted = Booted { nspawn, leader, root, console, netns: netns.name.clone() };
        // `is-system-running --wait` returns once start-up is over (running, or degraded);
        // until systemd listens on its socket it fails at once.
        wait_until("the container's start-up", Duration::from_secs(60), || {
            let out = booted.run(&["systemctl", "is-system-running", "--wait"]);
            match String::from_utf8_lossy(&out.stdout).trim() {
                "running" | "degraded" => Ok(()),
                state => {
                    std::thread::sleep(Duration::from_millis(200));
                    Err(format!("`{state}`: {}\n{}", String::from_utf8_lossy(&out.stderr), booted.console_log()))
                }
            }
        });
        booted
    }

    /// A command inside the container (its mount, pid, IPC, UTS and network namespaces).
    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(require_tool("nsenter"))
            .args(["-t", &self.leader.to_string(), "-m", "-u", "-i", "-p", "-n", "--"])
            .args(["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"])
            .args(args)
            .output()
            .unwrap()
    }

    /// [`Booted::run`], which must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}{}\njournal:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.journal()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A host program run in the container's network namespace (curl, bash's /dev/udp, logger).
    fn on_its_network(&self, args: &[&str]) -> std::process::Output {
        Command::new(require_tool("ip")).args(["netns", "exec", &self.netns]).args(args).output().unwrap()
    }

    /// GET `path` from the container's floodgate (the packaged 127.0.0.1:9318): status, body.
    fn http_get(&self, path: &str) -> (u16, String) {
        let url = format!("http://127.0.0.1:9318{path}");
        let out = self.on_its_network(&["curl", "-s", "-m", "5", "-w", "\n%{http_code}", &url]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// One property of floodgate.service (`systemctl show -p`).
    fn unit(&self, property: &str) -> String {
        self.ok(&["systemctl", "show", "floodgate", "-p", property, "--value"]).trim().to_string()
    }

    /// floodgate.service's journal, messages only.
    fn journal(&self) -> String {
        let out = self.run(&["journalctl", "-u", "floodgate", "-o", "cat", "--no-pager"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// floodgate.service's journal lines at error priority or above (floodgate's own, which
    /// it marks for journald, and systemd's about the unit), after `cursor` if given.
    fn errors(&self, cursor: Option<&str>) -> Vec<String> {
        let mut args = vec!["journalctl", "-u", "floodgate", "-p", "err", "-o", "cat", "--no-pager"];
        let after = cursor.map(|c| format!("--after-cursor={c}"));
        args.extend(after.as_deref());
        let out = self.ok(&args);
        out.lines().filter(|l| !l.contains("-- No entries --")).map(str::to_string).collect()
    }

    /// The journal's position now.
    fn cursor(&self) -> String {
        let out = self.ok(&["journalctl", "-u", "floodgate", "-n", "0", "--show-cursor", "--no-pager"]);
        out.lines().find_map(|l| l.strip_prefix("-- cursor: ")).expect("a cursor").trim().to_string()
    }

    /// A file in the container, as the host sees its root.
    fn path(&self, inside: &str) -> std::path::PathBuf {
        self.root.join(inside.trim_start_matches('/'))
    }

    fn console_log(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }
}

impl Drop for Booted {
    fn drop(&mut self) {
        // SIGTERM to nspawn halts the container (systemd stops every unit first).
        let _ = Command::new("kill").args(["-TERM", &self.nspawn.id().to_string()]).status();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
        let _ = std::fs::remove_dir_all(&self.root);
        // The container's console and nspawn's own log stay for a failed test to read.
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.console);
            let _ = std::fs::remove_file(self.root.with_extension("stderr.log"));
        }
    }
}

/// The package as a user gets it: a minimal Debian 12 booted with systemd, the `.deb`
/// installed with `dpkg -i`, the service started by the package on its packaged config (the
/// product's defaults), and everything an operator does to it: use, reload, reinstall, stop,
/// purge. Catches: the syscall filter killing the kernel guard's bpf(2), a reload that needs a
/// program the system lacks, the config printed into the journal, a receive buffer the
/// capabilities should have granted, a socket directory the sandbox keeps read-only.
#[test]
fn the_package_runs_under_systemd_as_shipped() {
    let deb = deb();
    let base = debian_root();
    let netns = Namespace::create("boot");
    let c = Booted::boot(&base, &netns);
    std::fs::copy(&deb, c.path("/root/floodgate.deb")).unwrap();

    // Installed on a running system: the package makes its user and starts the service.
    c.ok(&["dpkg", "-i", "/root/floodgate.deb"]);
    assert_eq!(c.unit("ActiveState"), "active", "{}", c.journal());
    assert_eq!(c.unit("SubState"), "running");
    assert_eq!(c.unit("NRestarts"), "0", "restarted:\n{}", c.journal());
    // Type=notify: active means ready, so /healthz answers at once.
    assert_eq!(c.http_get("/healthz"), (200, "ok\n".to_string()));
    let first_pid = c.unit("MainPID");

    // A StatsD line over UDP shows on /metrics at the next scrape (no flush needed).
    let sent = c.on_its_network(&["bash", "-c", "echo 'deploys:1|c|#env:prod' > /dev/udp/127.0.0.1/8125"]);
    assert!(sent.status.success());
    wait_until("the StatsD line on /metrics", Duration::from_secs(30), || {
        let (_, body) = c.http_get("/metrics");
        match metric(&body, "deploys_total", &["env=\"prod\""]) {
            Some(1.0) => Ok(()),
            got => Err(format!("deploys_total = {got:?}")),
        }
    });
    // A syslog message lands in the packaged output file.
    let logged = c.on_its_network(&["logger", "-n", "127.0.0.1", "-P", "5514", "-d", "--", "hello from the boot test"]);
    assert!(logged.status.success());
    let output = c.path("/var/log/floodgate/syslog.jsonl");
    wait_until("the syslog record in the output file", Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&output).unwrap_or_default();
        if text.lines().any(|l| l.contains("hello from the boot test")) {
            Ok(())
        } else {
            Err(text)
        }
    });

    // The journal: the kernel guard and the receive spread attached on both UDP listeners (the
    // unit's CAP_BPF and its bpf(2) in the syscall filter), connection tracking from
    // ctnetlink, the receive buffer the unit's CAP_NET_ADMIN forces (32 MiB, read back as
    // twice that), no config printed by ExecStartPre, nothing at warning or above.
    let journal = c.journal();
    assert_eq!(journal.matches("kernel guard attached").count(), 2, "{journal}");
    assert_eq!(journal.matches("receive spread attached").count(), 2, "{journal}");
    assert!(journal.contains("connection tracking on source=\"ctnetlink\""), "{journal}");
    assert!(
        journal.contains("statsd udp listening address=127.0.0.1:8125 sockets=2 receive_buffer=67108864"),
        "{journal}"
    );
    assert!(!journal.contains("flush_interval = "), "the effective config went to the journal:\n{journal}");
    let warnings = c.ok(&["journalctl", "-u", "floodgate", "-p", "warning", "-o", "cat", "--no-pager"]);
    assert!(warnings.trim().is_empty() || warnings.trim() == "-- No entries --", "warnings or errors:\n{warnings}");
    assert_eq!(c.errors(None), Vec::<String>::new());

    // `systemctl reload` after a config change: a Unix syslog socket in /run/floodgate (the
    // unit's runtime directory), reachable by any local user; and a StatsD one with origin
    // tags, which warns that ProtectProc=invisible hides other users' programs.
    let config_path = c.path("/etc/floodgate/floodgate.toml");
    let packaged = std::fs::read_to_string(&config_path).unwrap();
    let with_socket = packaged.replace("[syslog]\n", "[syslog]\nunix = [\"/run/floodgate/log.sock\"]\n").replace(
        "[statsd]\n",
        "[statsd]\nunix = [\"/run/floodgate/statsd.sock\"]\norigin_tags = [\"uid\", \"program\"]\n",
    );
    assert_eq!(with_socket.matches("/run/floodgate/").count(), 2);
    std::fs::write(&config_path, &with_socket).unwrap();
    c.ok(&["systemctl", "reload", "floodgate"]);
    wait_for("the new Unix socket", Duration::from_secs(30), || {
        c.run(&["test", "-S", "/run/floodgate/log.sock"]).status.success().then_some(())
    });
    let _ = wait_until("a record from the new socket", Duration::from_secs(30), || {
        // As `nobody`: the socket's mode lets any local user log, as /dev/log does.
        let sent = c.run(&[
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "logger",
            "-u",
            "/run/floodgate/log.sock",
            "from a local user",
        ]);
        let text = std::fs::read_to_string(&output).unwrap_or_default();
        match text.lines().find(|l| l.contains("from a local user")) {
            Some(line) => Ok(line.to_string()),
            None => Err(format!("logger: {}", String::from_utf8_lossy(&sent.stderr))),
        }
    });
    assert_eq!(c.unit("MainPID"), first_pid, "a reload is not a restart");
    let journal = c.journal();
    assert!(
        journal.contains("origin tags `program` and `container_id` cannot see senders running as other users"),
        "{journal}"
    );
    // A config that does not validate: the reload fails with the reason, the service runs on.
    std::fs::write(&config_path, format!("{with_socket}\n[statsd]\nflush_interval = \"soon\"\n")).unwrap();
    let refused = c.run(&["systemctl", "reload", "floodgate"]);
    assert!(!refused.status.success(), "a bad config reloaded");
    assert_eq!((c.unit("ActiveState"), c.unit("MainPID")), ("active".to_string(), first_pid.clone()));
    let refusal = c.errors(None);
    assert!(refusal.iter().any(|l| l.contains("config error")), "the reason at error priority: {refusal:?}");
    let after_refusal = c.cursor();

    // Reinstalling the same package keeps the edited config and restarts the service on it:
    // Graphite on (a change that needs a restart), to a capture on the host's side of the veth.
    let carbon = Capture::start_on(&netns.host);
    let edited = format!(
        "{}\n",
        with_socket.replace("[graphite]\n", &format!("[graphite]\naddress = \"{}:{}\"\n", netns.host, carbon.port))
    );
    std::fs::write(&config_path, &edited).unwrap();
    c.ok(&["dpkg", "-i", "/root/floodgate.deb"]);
    assert_eq!(std::fs::read_to_string(&config_path).unwrap(), edited, "dpkg replaced the edited config");
    assert_eq!(c.unit("ActiveState"), "active", "{}", c.journal());
    assert_ne!(c.unit("MainPID"), first_pid, "the upgrade restarted the service");
    assert_eq!(c.unit("NRestarts"), "0");
    assert_eq!(c.http_get("/healthz").0, 200);

    // `systemctl stop`: a final flush delivers what was received, then exit 0.
    let sent = c.on_its_network(&["bash", "-c", "echo 'shutdown.hits:7|c' > /dev/udp/127.0.0.1/8125"]);
    assert!(sent.status.success());
    wait_until("the line received", Duration::from_secs(30), || {
        let (_, body) = c.http_get("/metrics");
        if metric(&body, "shutdown_hits_total", &[]) == Some(7.0) {
            Ok(())
        } else {
            Err(body)
        }
    });
    c.ok(&["systemctl", "stop", "floodgate"]);
    assert_eq!(c.unit("ExecMainStatus"), "0", "{}", c.journal());
    assert_eq!(c.unit("Result"), "success");
    carbon.wait_seen(Duration::from_secs(10), &[("stats_counts.shutdown.hits".to_string(), "7".to_string())]);
    let journal = c.journal();
    assert!(journal.contains("stopped"), "{journal}");
    // Nothing at error priority since the refused reload (and nothing before it, above).
    assert_eq!(c.errors(Some(&after_refusal)), Vec::<String>::new(), "{journal}");

    // Purge: the service, its unit, config, state and logs go; the system user stays.
    c.ok(&["apt-get", "purge", "-y", "-q", "floodgate"]);
    for gone in [
        "/usr/bin/floodgate",
        "/lib/systemd/system/floodgate.service",
        "/etc/floodgate/floodgate.toml",
        "/var/lib/floodgate",
        "/var/log/floodgate",
        "/etc/systemd/system/multi-user.target.wants/floodgate.service",
    ] {
        assert!(!c.path(gone).exists() && std::fs::symlink_metadata(c.path(gone)).is_err(), "{gone} left after purge");
    }
    assert_ne!(c.unit("ActiveState"), "active");
}
