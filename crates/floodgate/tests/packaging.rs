//! The Debian package (`cargo deb -p floodgate`, built by the test command first): the files it
//! installs, the conffile, the packaged config passing `floodgate check` with the packaged
//! binary, the unit's capabilities and hardening, its maintainer scripts enabling the unit,
//! and `systemd-analyze verify` on the unit.

mod common;

use std::process::Command;

use common::*;

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
        "ExecStartPre=/usr/bin/floodgate check --config /etc/floodgate/floodgate.toml",
        "ExecStart=/usr/bin/floodgate run --config /etc/floodgate/floodgate.toml",
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
