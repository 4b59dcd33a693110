//! Connection tracking against the real kernel: in a network namespace this test creates
//! (joined to this one by a veth pair, with an nftables rule so the kernel tracks its
//! connections), real TCP connections are opened, held, half-closed and closed in both
//! directions and a UDP flow sent; floodgate's per-state gauges must equal what
//! `conntrack -L` reports, with inbound connections labelled by client IP and service port;
//! events are logged in both formats; a burst through a tiny event buffer forces a resync that
//! recovers the counts; and the kernel table is never flushed.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{ChildStdin, ChildStdout, Stdio};
use std::time::Duration;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(60);

/// A namespace with connection tracking switched on by an nftables rule.
fn tracked_namespace(what: &str) -> Namespace {
    let ns = Namespace::create(what);
    for rule in [
        vec!["add", "table", "inet", "fgtest"],
        vec!["add", "chain", "inet", "fgtest", "out", "{ type filter hook output priority 0; }"],
        vec!["add", "rule", "inet", "fgtest", "out", "ct", "state", "new", "counter"],
    ] {
        let out = ns.command(&require_tool("nft")).args(&rule).output().unwrap();
        assert!(out.status.success(), "nft {rule:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    ns
}

/// floodgate's scrapes on port 9318 inside `ns` are not tracked, so the table holds still
/// while it is compared.
fn untrack_scrapes(ns: &Namespace) {
    for rule in [
        vec!["add", "chain", "inet", "fgtest", "raw_in", "{ type filter hook prerouting priority -300; }"],
        vec!["add", "rule", "inet", "fgtest", "raw_in", "tcp", "dport", "9318", "notrack"],
        vec!["add", "chain", "inet", "fgtest", "raw_out", "{ type filter hook output priority -300; }"],
        vec!["add", "rule", "inet", "fgtest", "raw_out", "tcp", "sport", "9318", "notrack"],
    ] {
        let out = ns.command(&require_tool("nft")).args(&rule).output().unwrap();
        assert!(out.status.success(), "nft {rule:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// The table's health on floodgate's `/metrics` (port 9318 inside `ns`) equals the kernel's
/// own figures for the namespace: the count and limit from `/proc/sys/net/netfilter`, the
/// statistics from `conntrack -S` summed over CPUs (read every 5 s, so waited for).
fn table_health_is_the_kernels(ns: &Namespace) {
    untrack_scrapes(ns);
    let read = |path: &str| -> f64 {
        let out = ns.command(&require_tool("cat")).arg(path).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    let stats = || -> BTreeMap<String, f64> {
        let out = ns.command(&require_tool("conntrack")).arg("-S").output().unwrap();
        let mut sums = BTreeMap::new();
        for word in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Some((k, v)) = word.split_once('=') {
                if k != "cpu" {
                    let k = if k == "chaintoolong" { "chain_toolong" } else { k };
                    *sums.entry(k.to_string()).or_default() += v.parse::<f64>().unwrap();
                }
            }
        }
        sums
    };
    // A scrape every 250 ms: the figures change between two reads, so this may take many.
    wait_until_every("floodgate's table health equal to the kernel's", WAIT, Duration::from_millis(250), || {
        let body = get(ns, 9318, "/metrics").unwrap_or_default();
        let got = |name: &str| metric(&body, name, &[]).ok_or(format!("{name} not exported"));
        let (count, max, want) = (
            read("/proc/sys/net/netfilter/nf_conntrack_count"),
            read("/proc/sys/net/netfilter/nf_conntrack_max"),
            stats(),
        );
        if want.is_empty() {
            return Err("conntrack -S printed nothing".into());
        }
        let mut differ = vec![];
        if got("conntrack_table_entries")? != count {
            differ.push(format!("entries {} vs {count}", got("conntrack_table_entries")?));
        }
        if got("conntrack_entries_limit")? != max {
            differ.push(format!("limit {} vs {max}", got("conntrack_entries_limit")?));
        }
        if (got("conntrack_table_fill_ratio")? - got("conntrack_table_entries")? / max).abs() > 1e-12 {
            differ.push("fill ratio".into());
        }
        for (stat, v) in &want {
            let name = format!("conntrack_stat_{stat}_total");
            if got(&name)? != *v {
                differ.push(format!("{name} {} vs conntrack -S {v}", got(&name)?));
            }
        }
        if differ.is_empty() {
            Ok(())
        } else {
            Err(differ.join("; "))
        }
    });
}

/// floodgate inside `ns`, HTTP on `inside:http`, with `[conntrack]` keys `extra`.
fn start(ns: &Namespace, dir: &std::path::Path, name: &str, http: u16, admin: u16, extra: &str) -> Running {
    start_with(ns, dir, name, http, admin, extra, true, &[])
}

/// As [`start`]; without `net_admin`, floodgate runs without CAP_NET_ADMIN (ctnetlink denied);
/// `run_args` go after `floodgate run` (conntrack_exporter's flags). With `--listen-port`, the
/// config's HTTP port is a placeholder the flag must replace.
#[allow(clippy::too_many_arguments)]
fn start_with(
    ns: &Namespace,
    dir: &std::path::Path,
    name: &str,
    http: u16,
    admin: u16,
    extra: &str,
    net_admin: bool,
    run_args: &[&str],
) -> Running {
    let config_http = if run_args.contains(&"--listen-port") { 1 } else { http };
    let cfg = dir.join(format!("{name}.toml"));
    // Connection tracking is under test, and a test may run two floodgates in one namespace:
    // the StatsD and syslog listeners are off so their default ports do not clash.
    std::fs::write(
        &cfg,
        format!(
            "[statsd]\nudp = []\ntcp = []\n[syslog]\nudp = []\ntcp = []\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
             [http]\nlisten = \"{}:{config_http}\"\n[conntrack]\nenabled = true\n{extra}\n",
            ns.inside
        ),
    )
    .unwrap();
    let floodgate = std::path::Path::new(env!("CARGO_BIN_EXE_floodgate"));
    let mut command = if net_admin {
        ns.command(floodgate)
    } else {
        let mut c = ns.command(&require_tool("setpriv"));
        c.arg("--bounding-set=-net_admin").arg(floodgate);
        c
    };
    command.arg("run").args(run_args).arg("--config").arg(&cfg);
    Running::ready(command, (ns.inside.as_str(), http), &dir.join(format!("{name}.log")))
}

fn get(ns: &Namespace, port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect((ns.inside.as_str(), port)).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
    let mut body = String::new();
    std::io::Read::read_to_string(&mut s, &mut body).ok()?;
    (body.split_whitespace().nth(1) == Some("200"))
        .then(|| body.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

/// The peer script inside the namespace.
struct Peer {
    _child: Running,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Peer {
    fn start(ns: &Namespace) -> Peer {
        let mut child = ns
            .command(&require_tool("python3"))
            .arg(repo_root().join("scripts/conntrack-peer.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (stdin, stdout) = (child.stdin.take().unwrap(), BufReader::new(child.stdout.take().unwrap()));
        Peer { _child: Running { child, stderr: std::path::PathBuf::new() }, stdin, stdout }
    }

    fn run(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ok", "peer: {command}");
    }
}

/// `conntrack -L` inside the namespace: one map of key → value per entry (the first `src`,
/// `dst`, `sport`, `dport` are the original direction's), plus `proto` and `state`.
fn conntrack_list(ns: &Namespace) -> Vec<BTreeMap<String, String>> {
    let out = ns.command(&require_tool("conntrack")).arg("-L").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let mut m = BTreeMap::new();
            let mut words = line.split_whitespace();
            m.insert("proto".to_string(), words.next().unwrap_or("").to_string());
            for w in words {
                match w.split_once('=') {
                    Some((k, v)) => {
                        m.entry(k.to_string()).or_insert_with(|| v.to_string());
                    }
                    None if w.chars().all(|c| c.is_ascii_uppercase() || c == '_') && w.len() > 3 => {
                        m.entry("state".to_string()).or_insert_with(|| w.to_string());
                    }
                    None => {}
                }
            }
            m
        })
        .collect()
}

fn phase(state: &str) -> &'static str {
    match state {
        "SYN_SENT" | "SYN_RECV" | "SYN_SENT2" => "opening",
        "ESTABLISHED" => "open",
        "FIN_WAIT" | "CLOSE_WAIT" | "LAST_ACK" | "TIME_WAIT" => "closing",
        _ => "closed",
    }
}

/// (label, phase) → count from `conntrack -L`, labelled with floodgate's rule for the given
/// inside address and listening ports.
fn expected(ns: &Namespace, listening: &[u16]) -> BTreeMap<(String, &'static str), u64> {
    let mut out = BTreeMap::new();
    for e in conntrack_list(ns).iter().filter(|e| e["proto"] == "tcp") {
        let dport: u16 = e["dport"].parse().unwrap();
        let host = |ip: &str| if ip.contains(':') { format!("[{ip}]") } else { ip.to_string() };
        let local = e["dst"] == ns.inside || e["dst"] == "::1" || e["dst"].starts_with("127.");
        let label = if local && listening.contains(&dport) {
            format!("{}:{dport}", host(&e["src"]))
        } else {
            format!("{}:{dport}", host(&e["dst"]))
        };
        *out.entry((label, phase(e.get("state").map_or("", String::as_str)))).or_insert(0) += 1;
    }
    out
}

/// Outbound connections' far end: a listener in the test's namespace that accepts and holds
/// whatever connects.
fn hold_incoming(host: &str, port: u16) -> std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>> {
    let listener = TcpListener::bind((host, port)).unwrap();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let h = held.clone();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            h.lock().unwrap().push(s);
        }
    });
    held
}

/// The expected counts for `label`: phase → value (0 where the kernel has none).
fn per_phase(want: &BTreeMap<(String, &'static str), u64>, label: &str) -> BTreeMap<&'static str, u64> {
    ["opening", "open", "closing", "closed"]
        .into_iter()
        .map(|p| (p, want.get(&(label.to_string(), p)).copied().unwrap_or(0)))
        .collect()
}

/// floodgate's gauges for `label`: phase → value.
fn gauges(body: &str, label: &str) -> BTreeMap<&'static str, u64> {
    let mut out = BTreeMap::new();
    for p in ["opening", "open", "closing", "closed"] {
        let v = metric(body, &format!("conntrack_{p}_connections"), &[&format!("host=\"{label}\"")]).unwrap_or(0.0);
        out.insert(p, v as u64);
    }
    out
}

#[test]
fn gauges_equal_the_kernel_table_and_events_are_logged() {
    let ns = tracked_namespace("ct");
    let dir = tempfile::tempdir().unwrap();
    let host = ns.host.clone();
    // Outbound target: a listener here, in the test's namespace, holding what connects.
    let _held_here = hold_incoming(&host, 7100);
    let mut peer = Peer::start(&ns);
    peer.run("serve 7000");
    peer.run("serve6 7001");
    // A connection that exists before floodgate starts: it must still exist after it exits.
    peer.run(&format!("connect {host} 7100 1"));
    let before = conntrack_list(&ns);
    assert!(before.iter().any(|e| e["dport"] == "7100"), "the namespace tracks nothing: {before:?}");

    let json = dir.path().join("events.jsonl");
    let netfilter = dir.path().join("events.log");
    // This one is configured by conntrack_exporter's flags.
    let fg = start_with(
        &ns,
        dir.path(),
        "json",
        9318,
        8126,
        &format!("log_events_output = \"{}\"", json.display()),
        true,
        &["--listen-port", "9318", "--log-events", "--log-events-format", "json"],
    );
    let fg2 = start(
        &ns,
        dir.path(),
        "netfilter",
        9319,
        8127,
        &format!(
            "log_events = true\nlog_events_format = \"netfilter\"\nlog_events_output = \"{}\"",
            netfilter.display()
        ),
    );

    // Inbound: three clients from here to the service inside; one closes.
    let mut inbound: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect((ns.inside.as_str(), 7000)).unwrap()).collect();
    // Outbound: two more from inside to here; one half-closed. A UDP flow.
    peer.run(&format!("connect {host} 7100 2"));
    peer.run("halfclose 1");
    peer.run(&format!("udp {host} 7200"));
    // IPv6, inside the namespace: two connections to [::1]:7001.
    peer.run("connect ::1 7001 2");
    drop(inbound.remove(0));

    let (in_label, out_label) = (format!("{host}:7000"), format!("{host}:7100"));
    let (body, got_in, got_out, got_v6) = wait_until("floodgate's gauges equal to conntrack -L", WAIT, || {
        let body = get(&ns, 9318, "/metrics").unwrap_or_default();
        let want = expected(&ns, &[7000, 7001, 9318, 9319]);
        let pick = |label: &str| per_phase(&want, label);
        let (got_in, got_out) = (gauges(&body, &in_label), gauges(&body, &out_label));
        let got_v6 = gauges(&body, "[::1]:7001");
        if got_in == pick(&in_label) && got_out == pick(&out_label) && got_v6 == pick("[::1]:7001") {
            return Ok((body, got_in, got_out, got_v6));
        }
        Err(format!(
            "floodgate {in_label} {got_in:?} / {out_label} {got_out:?}; conntrack -L {:?} / {:?}",
            pick(&in_label),
            pick(&out_label)
        ))
    });
    assert_eq!(got_v6["open"], 2, "{body}");
    // And what the test did: 2 open + 1 closing inbound; 2 open + 1 closing outbound.
    assert_eq!((got_in["open"], got_in["closing"]), (2, 1), "{body}");
    assert_eq!((got_out["open"], got_out["closing"]), (2, 1), "{body}");
    assert!(sample(&body, "conntrack_entries", &["protocol=\"udp\""]) >= 1.0);
    assert!(sample(&body, "conntrack_events_total", &["type=\"new\""]) >= 5.0);
    table_health_is_the_kernels(&ns);

    // The JSON log: the inbound connections' events carry the service label.
    let events = wait_until("three inbound `new` events in the JSON log", WAIT, || {
        let text = std::fs::read_to_string(&json).unwrap_or_default();
        // Whole lines only: the last may be half written.
        let events: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let new_inbound = events
            .iter()
            .filter(|e| e["event_type"] == "new" && e["remote_host"] == in_label.as_str())
            .map(|e| e["original_source_host"].as_str().unwrap().to_string())
            .collect::<std::collections::BTreeSet<_>>();
        if new_inbound.len() >= 3 {
            Ok(events)
        } else {
            Err(format!("inbound new events: {new_inbound:?}"))
        }
    });
    for e in &events {
        for key in ["original_destination_host", "reply_source_host", "remote_host", "state", "event_type"] {
            assert!(e.get(key).is_some(), "{key} missing in {e}");
        }
    }
    // The conntrack tool's format, parsed back.
    let text = wait_until("three [NEW] lines for port 7000 in the netfilter log", WAIT, || {
        let text = std::fs::read_to_string(&netfilter).unwrap_or_default();
        let new_7000 = text
            .lines()
            .filter(|l| l.trim_start().starts_with("[NEW] tcp      6 "))
            .filter(|l| l.split_whitespace().any(|w| w == "dport=7000"))
            .filter(|l| l.contains("SYN_SENT") && l.contains("[UNREPLIED]"))
            .count();
        if new_7000 >= 3 {
            Ok(text)
        } else {
            Err(text)
        }
    });
    assert!(text.lines().any(|l| l.starts_with(" [UPDATE] tcp      6 ") && l.contains("ESTABLISHED")), "{text}");

    // Stopping floodgate leaves the kernel's table as it was.
    drop(fg);
    drop(fg2);
    let after = conntrack_list(&ns);
    let first = before.iter().find(|e| e["dport"] == "7100").unwrap();
    assert!(
        after.iter().any(|e| e["sport"] == first["sport"] && e["dport"] == "7100"),
        "the entry that existed before floodgate is gone"
    );
    assert!(after.len() >= before.len(), "entries vanished: {} before, {} after", before.len(), after.len());
}

/// Two other namespaces read at once (`netns`), from floodgate in a third: each one's
/// connections and table health under its own `netns` label, equal to its own kernel table,
/// and nothing of one under the other's label or floodgate's own; connections in a
/// non-default conntrack zone counted under their `zone` label.
#[test]
fn other_namespaces_are_read_each_under_its_own_label() {
    let home = tracked_namespace("nshome");
    let (b, c) = (tracked_namespace("bns"), tracked_namespace("dns"));
    // Entries put straight into each table (as a busy container would have them): b holds
    // three to 10.2.0.1:443, c five to 10.3.0.1:443.
    for (ns, remote, count) in [(&b, "10.2.0.1", 3), (&c, "10.3.0.1", 5)] {
        for i in 0..count {
            let out = ns
                .command(&require_tool("conntrack"))
                .args(["-I", "-p", "tcp", "-s", "10.1.0.1", "-d", remote, "--sport", &(40_000 + i).to_string()])
                .args(["--dport", "443", "--state", "ESTABLISHED", "-t", "3600", "-u", "SEEN_REPLY,ASSURED"])
                .output()
                .unwrap();
            assert!(out.status.success(), "conntrack -I: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    // Two more in c to the same remote, in conntrack zone 7: a series of their own.
    for i in 0..2 {
        let out = c
            .command(&require_tool("conntrack"))
            .args([
                "-I",
                "-w",
                "7",
                "-p",
                "tcp",
                "-s",
                "10.1.0.1",
                "-d",
                "10.3.0.1",
                "--sport",
                &(41_000 + i).to_string(),
            ])
            .args(["--dport", "443", "--state", "ESTABLISHED", "-t", "3600", "-u", "SEEN_REPLY,ASSURED"])
            .output()
            .unwrap();
        assert!(out.status.success(), "conntrack -I -w 7: {}", String::from_utf8_lossy(&out.stderr));
    }
    let dir = tempfile::tempdir().unwrap();
    let netns = format!("netns = [\"/run/netns/{}\", \"/run/netns/{}\"]", b.name, c.name);
    let _fg = start(&home, dir.path(), "netns", 9318, 8126, &netns);
    let count = |ns: &Namespace| -> f64 {
        let out = ns.command(&require_tool("cat")).arg("/proc/sys/net/netfilter/nf_conntrack_count").output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    wait_until_every("each namespace under its own label", WAIT, Duration::from_millis(250), || {
        let body = get(&home, 9318, "/metrics").unwrap_or_default();
        let mut differ = vec![];
        for (ns, remote, want, other) in
            [(&b, "10.2.0.1:443", 3.0, "10.3.0.1:443"), (&c, "10.3.0.1:443", 5.0, "10.2.0.1:443")]
        {
            let label = format!("netns=\"{}\"", ns.name);
            // The default zone's series carries no zone label.
            let open = body
                .lines()
                .find(|l| {
                    l.starts_with("conntrack_open_connections{")
                        && l.contains(&format!("host=\"{remote}\""))
                        && l.contains(&label)
                        && !l.contains("zone=")
                })
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
            if open != Some(want) {
                differ.push(format!("{}: {open:?} open to {remote}, want {want}", ns.name));
            }
            if metric(&body, "conntrack_open_connections", &[&format!("host=\"{other}\""), &label]).is_some() {
                differ.push(format!("{}: holds {other}, the other namespace's", ns.name));
            }
            let entries = metric(&body, "conntrack_table_entries", &[&label]);
            if entries != Some(count(ns)) {
                differ.push(format!("{}: conntrack_table_entries {entries:?}, the kernel {}", ns.name, count(ns)));
            }
            if metric(&body, "conntrack_source_info", &[&label]) != Some(1.0) {
                differ.push(format!("{}: no conntrack_source_info", ns.name));
            }
        }
        let zoned = metric(
            &body,
            "conntrack_open_connections",
            &["host=\"10.3.0.1:443\"", "zone=\"7\"", &format!("netns=\"{}\"", c.name)],
        );
        if zoned != Some(2.0) {
            differ.push(format!("zone 7 in {}: {zoned:?}, want 2", c.name));
        }
        // floodgate's own namespace: no label, none of the others' connections.
        for remote in ["10.2.0.1:443", "10.3.0.1:443"] {
            let unlabelled = body
                .lines()
                .any(|l| l.starts_with("conntrack_open_connections{") && l.contains(remote) && !l.contains("netns="));
            if unlabelled {
                differ.push(format!("{remote} in floodgate's own table"));
            }
        }
        if differ.is_empty() {
            Ok(())
        } else {
            Err(differ.join("; "))
        }
    });
}

/// With the kernel's accounting on in the namespace, bytes and packets per remote and
/// direction equal the sums of `conntrack -L -o extended` for that remote, before and after
/// more traffic on a live connection (which only a re-read of the table shows).
#[test]
fn bytes_and_packets_per_remote_equal_the_kernels_accounting() {
    let ns = tracked_namespace("acct");
    let out = ns.command(&require_tool("sysctl")).args(["-w", "net.netfilter.nf_conntrack_acct=1"]).output().unwrap();
    assert!(out.status.success(), "sysctl: {}", String::from_utf8_lossy(&out.stderr));
    untrack_scrapes(&ns);
    let host = ns.host.clone();
    let _held = hold_incoming(&host, 7200);
    let mut peer = Peer::start(&ns);
    peer.run(&format!("connect {host} 7200 3"));
    peer.run("send 0 10000");
    peer.run("send 1 3000");
    peer.run("send 2 5000");
    peer.run("close 2");
    let dir = tempfile::tempdir().unwrap();
    let _fg = start(&ns, dir.path(), "acct", 9318, 8126, "accounting_interval = \"1s\"");
    let label = format!("{host}:7200");
    // (direction, bytes or packets) → sum over the kernel's entries to the remote.
    let kernel = || -> BTreeMap<(&'static str, &'static str), f64> {
        let out = ns.command(&require_tool("conntrack")).args(["-L", "-o", "extended", "-p", "tcp"]).output().unwrap();
        let mut sums = BTreeMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains("dport=7200")) {
            let values = |key: &str| -> Vec<f64> {
                line.split_whitespace().filter_map(|w| w.strip_prefix(key)?.parse().ok()).collect()
            };
            let (bytes, packets) = (values("bytes="), values("packets="));
            assert_eq!((bytes.len(), packets.len()), (2, 2), "no accounting in: {line}");
            // Outbound: the original direction goes towards the remote.
            for (i, direction) in ["out", "in"].into_iter().enumerate() {
                *sums.entry((direction, "bytes")).or_default() += bytes[i];
                *sums.entry((direction, "packets")).or_default() += packets[i];
            }
        }
        sums
    };
    let equal = |what: &str| {
        wait_until_every(what, WAIT, Duration::from_millis(250), || {
            let body = get(&ns, 9318, "/metrics").unwrap_or_default();
            let want = kernel();
            let mut differ = vec![];
            for ((direction, unit), v) in &want {
                let labels = [format!("host=\"{label}\""), format!("direction=\"{direction}\"")];
                let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
                let got = metric(&body, &format!("conntrack_{unit}_total"), &labels);
                if got != Some(*v) {
                    differ.push(format!("{unit} {direction}: {got:?} vs conntrack -L {v}"));
                }
            }
            if want.is_empty() || !differ.is_empty() {
                return Err(format!("{want:?}: {}", differ.join("; ")));
            }
            Ok(want)
        })
    };
    let before = equal("floodgate's traffic per remote equal to the kernel's accounting");
    assert!(before[&("out", "bytes")] > 18_000.0, "{before:?}");
    peer.run("send 0 20000");
    let after = equal("more traffic on a live connection, read again");
    assert!(after[&("out", "bytes")] >= before[&("out", "bytes")] + 20_000.0, "{before:?} → {after:?}");
}

#[test]
fn lost_events_force_a_resync_that_recovers_the_counts() {
    let ns = tracked_namespace("rs");
    let dir = tempfile::tempdir().unwrap();
    let mut peer = Peer::start(&ns);
    peer.run("serve 7000");
    let fg = start(&ns, dir.path(), "tiny", 9318, 8126, "event_buffer = \"4KiB\"");
    // A burst of 3,000 connections while floodgate is stopped: its 4 KiB event buffer
    // overflows for certain, and the kernel reports ENOBUFS when it reads again.
    signal(&fg.child, "STOP");
    peer.run("burst 127.0.0.1 7000 3000");
    signal(&fg.child, "CONT");
    let label = "127.0.0.1:7000";
    wait_until("a resync, then the gauges equal to conntrack -L", WAIT, || {
        let body = get(&ns, 9318, "/metrics").unwrap_or_default();
        let resyncs = metric(&body, "conntrack_resyncs_total", &[]).unwrap_or(0.0);
        let got: u64 = gauges(&body, label).values().sum();
        let want = conntrack_list(&ns).iter().filter(|e| e["proto"] == "tcp" && e["dport"] == "7000").count() as u64;
        let seen = format!("resyncs {resyncs}, floodgate {got}, conntrack -L {want}");
        if resyncs >= 1.0 && got == want && want >= 3000 {
            Ok(())
        } else {
            Err(seen)
        }
    });
}

/// ss's state names → the four.
fn ss_phase(state: &str) -> Option<&'static str> {
    Some(match state {
        "SYN-SENT" | "SYN-RECV" => "opening",
        "ESTAB" => "open",
        "FIN-WAIT-1" | "FIN-WAIT-2" | "CLOSE-WAIT" | "LAST-ACK" | "TIME-WAIT" | "CLOSING" => "closing",
        "CLOSE" | "UNCONN" => "closed",
        _ => return None,
    })
}

/// With ctnetlink denied (no CAP_NET_ADMIN), floodgate falls back to sock_diag, says so, and
/// its gauges equal what `ss -tan` shows of the namespace's own sockets.
#[test]
fn without_net_admin_the_sock_diag_fallback_matches_ss() {
    let ns = tracked_namespace("sd");
    let dir = tempfile::tempdir().unwrap();
    let host = ns.host.clone();
    let _held_here = hold_incoming(&host, 7100);
    let mut peer = Peer::start(&ns);
    peer.run("serve 7000");
    let _fg = start_with(&ns, dir.path(), "fallback", 9318, 8126, "poll_interval = \"200ms\"", false, &[]);
    let log = std::fs::read_to_string(dir.path().join("fallback.log")).unwrap();
    assert!(log.contains("connection tracking from sock_diag"), "{log}");
    let mut inbound: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect((ns.inside.as_str(), 7000)).unwrap()).collect();
    peer.run(&format!("connect {host} 7100 2"));
    peer.run("halfclose 1");
    drop(inbound.remove(0));
    let (in_label, out_label) = (format!("{host}:7000"), format!("{host}:7100"));
    let body = wait_until("floodgate's gauges equal to ss", WAIT, || {
        let body = get(&ns, 9318, "/metrics").unwrap_or_default();
        let ss = ns.command(&require_tool("ss")).arg("-tanH").output().unwrap();
        let mut want: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
        let text = String::from_utf8_lossy(&ss.stdout).to_string();
        let listening: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with("LISTEN"))
            .filter_map(|l| l.split_whitespace().nth(3).and_then(|a| a.rsplit_once(':')).map(|(_, p)| p.to_string()))
            .collect();
        for line in text.lines() {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(phase), Some(local), Some(peer_addr)) = (ss_phase(cols[0]), cols.get(3), cols.get(4)) else {
                continue;
            };
            let ((_, lport), (pip, pport)) = (local.rsplit_once(':').unwrap(), peer_addr.rsplit_once(':').unwrap());
            let label =
                if listening.iter().any(|p| p == lport) { format!("{pip}:{lport}") } else { format!("{pip}:{pport}") };
            *want.entry((label, phase)).or_insert(0) += 1;
        }
        let pick = |label: &str| per_phase(&want, label);
        let (got_in, got_out) = (gauges(&body, &in_label), gauges(&body, &out_label));
        if got_in == pick(&in_label) && got_out == pick(&out_label) && got_in["open"] == 2 && got_out["open"] == 1 {
            assert_eq!(got_in["closing"], 1, "{body}");
            assert_eq!(got_out["closing"], 1, "{body}");
            return Ok(body);
        }
        Err(format!(
            "floodgate {in_label} {got_in:?} / {out_label} {got_out:?}; ss {:?} / {:?}\n{text}",
            pick(&in_label),
            pick(&out_label)
        ))
    });
    assert_eq!(sample(&body, "conntrack_source_info", &["source=\"sock_diag\""]), 1.0, "{body}");
}
