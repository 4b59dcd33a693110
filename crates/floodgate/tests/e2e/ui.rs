//! The `/ui` page in headless Chromium (Debian's `chromium`), with every request that would
//! leave loopback made to fail: it renders live rates while traffic flows and lists a flooding
//! source as an offender. A screenshot is saved as a test artifact
//! (`target/test-artifacts/ui.png`). `/api/status` is checked on its own.

use std::io::Write;
use std::net::{TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;

/// StatsD over TCP from 127.0.0.1 and a UDP flood from 127.0.0.2 until `stop`.
fn traffic(fg: &Floodgate, stop: Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<()>> {
    let port = fg.statsd;
    let s1 = stop.clone();
    let tcp = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        while !s1.load(Ordering::Relaxed) {
            if s.write_all(b"ui.hits:1|c\nui.time:12|ms\n").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    });
    let flood = Sender::start("127.0.0.2", fg.udp_addr(), "flood:1|c", 0, 1);
    let stop_flood = std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
        }
        flood.stop();
    });
    vec![tcp, stop_flood]
}

fn chromium(args: &[&str], url: &str) -> std::process::Output {
    Command::new(require_tool("chromium"))
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
        // Any name other than loopback fails to resolve, and everything but loopback (which
        // Chromium never proxies) goes to a proxy that does not exist: the page must work with
        // loopback alone.
        .args(["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--proxy-server=127.0.0.1:9"])
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium")
}

#[test]
fn the_live_page_shows_rates_and_the_flooding_source() {
    // Connection tracking on (the tests run as root): the page shows the table's fill.
    // The page names the flooding address: loopback addresses stand for hosts (`by_address`).
    let fg = Floodgate::start(
        "",
        "[limits]\nudp_per_source = 200\nudp_per_port = 0\nlocal_senders = \"by_address\"\n[conntrack]\nenabled = true\n",
    );
    let stop = Arc::new(AtomicBool::new(false));
    let threads = traffic(&fg, stop.clone());
    // The flood is an offender before the page loads (the page is not what is being waited on).
    wait_for("the flood listed as an offender", Duration::from_secs(30), || {
        http_get(fg.http, "/offenders").unwrap().1.contains("127.0.0.2").then_some(())
    });
    wait_for("the conntrack table's health read", Duration::from_secs(30), || {
        let (_, body) = http_get(fg.http, "/api/status").ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["conntrack"]["table"]["fill_ratio"].as_f64().map(|_| ())
    });
    let url = format!("http://127.0.0.1:{}/ui", fg.http);
    let (_, html) = http_get(fg.http, "/ui").unwrap();
    for external in ["http://", "https://", "src=\"//", "href=\"//", "@import"] {
        assert!(!html.contains(external), "the page references something external: {external}");
    }
    let out = chromium(&["--virtual-time-budget=8000", "--dump-dom"], &url);
    let dom = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(dom.contains("statsd_tcp"), "no listener rows:\n{dom}");
    let rates: Vec<f64> =
        dom.split("data-rate=\"").skip(1).filter_map(|s| s.split('"').next()?.parse::<f64>().ok()).collect();
    assert!(rates.iter().any(|r| *r > 0.0), "no non-zero rate in {rates:?}:\n{dom}");
    assert!(dom.contains("127.0.0.2") && dom.contains("limited now"), "the flooding source is not listed:\n{dom}");
    assert!(dom.contains("source_limit"), "drops by reason missing:\n{dom}");
    let fill = dom.split("id=\"ctFill\" data-fill=\"").nth(1).and_then(|s| s.split('"').next()?.parse::<f64>().ok());
    assert!(fill.is_some_and(|f| (0.0..=1.0).contains(&f)), "the conntrack table's fill is not shown:\n{dom}");
    let artifacts = repo_root().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("ui.png");
    let _ = std::fs::remove_file(&shot);
    let out = chromium(
        &["--virtual-time-budget=8000", "--window-size=1400,1100", &format!("--screenshot={}", shot.display())],
        &url,
    );
    assert!(shot.exists(), "no screenshot: {}", String::from_utf8_lossy(&out.stderr));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn api_status_reports_listeners_guard_and_outputs() {
    // A Graphite sink with nothing listening: it is listed, with its errors.
    let graphite = format!("[graphite]\naddress = \"127.0.0.1:{}\"\n", free_port());
    // The offender is named by its address: loopback addresses stand for hosts (`by_address`).
    let fg = Floodgate::start(
        "",
        &format!("[limits]\nudp_per_source = 50\nudp_per_port = 0\nlocal_senders = \"by_address\"\n{graphite}"),
    );
    let sock = UdpSocket::bind("127.0.0.2:0").unwrap();
    for _ in 0..500 {
        sock.send_to(b"a:1|c", fg.udp_addr()).unwrap();
    }
    let (v, udp) = wait_until("all 500 accounted for in /api/status", Duration::from_secs(30), || {
        let (code, body) = http_get(fg.http, "/api/status").unwrap();
        assert_eq!(code, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let udp = v["listeners"].as_array().unwrap().iter().find(|l| l["listener"] == "statsd_udp").cloned().unwrap();
        // Dropped by the guard in user space, or by its kernel layer (on by default) first.
        let dropped =
            udp["dropped"]["source_limit"].as_u64().unwrap() + udp["dropped"]["kernel_source_limit"].as_u64().unwrap();
        let got = udp["messages"].as_u64().unwrap() + dropped;
        if got == 500 {
            Ok((v, udp))
        } else {
            Err(format!("{got} of 500: {body}"))
        }
    });
    assert!(
        udp["dropped"]["source_limit"].as_u64().unwrap() + udp["dropped"]["kernel_source_limit"].as_u64().unwrap() > 0
    );
    let offenders = v["guard"]["offenders"].as_array().unwrap();
    assert_eq!(offenders[0]["source"], "127.0.0.2");
    assert_eq!(v["ready"], true);
    assert!(v["version"].is_string() && v["uptime_seconds"].is_u64());
    assert_eq!(v["config"]["statsd"]["udp"][0], fg.udp_addr().to_string());
    let sinks = v["sinks"].as_array().unwrap();
    assert_eq!(sinks.len(), 1, "only the sinks in use: {sinks:?}");
    assert_eq!(sinks[0]["sink"], "graphite");
    assert!(sinks[0]["errors"].is_u64() && sinks[0]["buffer_bytes"].is_u64());
    assert!(v["flush"]["flushes"].is_u64());
    assert!(v["flush"]["dropped_series"]["max_series"].is_u64());
    assert_eq!(v["forward"], serde_json::json!([]));
    // The defaults' syslog output and connection tracking (ctnetlink: the suite runs as root).
    assert_eq!(v["syslog_output"]["output"], "file", "{v}");
    assert_eq!(v["conntrack"]["source"], "ctnetlink", "{v}");
}

/// `/ui` driven in real headless Chromium by playwright-core (`tests/ui/explains.cjs`): the
/// series browser, the tap, an offender over its series budget named in words and on the
/// cardinality view, the configuration with its non-defaults marked. Screenshots are kept in
/// `target/test-artifacts/ui-*.png`. Changed from the defaults: a series budget of 500 (the
/// default, 250,000, would take long to reach) and local addresses as separate senders (two
/// loopback addresses stand for two hosts).
#[test]
fn the_page_explains_who_sends_what_in_real_chromium() {
    let fg = Floodgate::start("", "[limits]\nseries_per_source = 500\nlocal_senders = \"by_address\"\n");
    let modules = repo_root().join("target/peers/js/node_modules");
    assert!(modules.join("playwright-core").exists(), "playwright-core not installed: run ./scripts/test.sh");
    let artifacts = repo_root().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let out = Command::new(require_tool("node"))
        .arg(repo_root().join("tests/ui/explains.cjs"))
        .env("NODE_PATH", &modules)
        .env("FLOODGATE_HTTP", format!("127.0.0.1:{}", fg.http))
        .env("FLOODGATE_STATSD", fg.statsd.to_string())
        .env("SCREENSHOTS", &artifacts)
        .env("CHROMIUM", require_tool("chromium"))
        .output()
        .expect("run node");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{said}");
    assert!(said.ends_with("ok\n"), "{said}");
    for shot in ["series", "tap", "overview", "cardinality", "config"] {
        assert!(artifacts.join(format!("ui-{shot}.png")).exists(), "no screenshot of {shot}");
    }
}
