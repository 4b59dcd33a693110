//! Real Carbon: Debian's carbon-cache on loopback with a temporary storage directory and
//! 1-second retention; floodgate flushes to it (plaintext and pickle) and the Whisper files
//! are read back with `whisper-fetch`.

mod common;

use common::*;

fn flush_to_carbon(pickle: bool) {
    let carbon = Carbon::start();
    let (port, protocol) = if pickle { (carbon.pickle_port, "pickle") } else { (carbon.line_port, "plaintext") };
    let fg = Floodgate::start(
        "flush_interval = \"1s\"\npercentiles = [90]",
        &format!("[graphite]\naddress = \"127.0.0.1:{port}\"\nprotocol = \"{protocol}\"\n"),
    );
    // Three bursts, each in its own flush and so its own Whisper point.
    let mut total = 0;
    for burst in 1..=3 {
        let mut d = String::new();
        for _ in 0..burst * 10 {
            d.push_str("carbon.hits:1|c\n");
            total += 1;
        }
        d.push_str(&format!("carbon.temp:{}|g\n", burst * 10));
        fg.send_udp(d.as_bytes());
        // The burst is in Whisper before the next one is sent, so each lands in its own flush.
        carbon.wait("stats_counts.carbon.hits", |p| p.iter().sum::<f64>() == total as f64);
    }
    fg.send_udp(b"carbon.lat:10|ms\ncarbon.lat:20|ms\ncarbon.lat:30|ms\ncarbon.lat:40|ms\ncarbon.users:a|s\ncarbon.users:b|s\ncarbon.users:c|s\ncarbon.users:a|s");

    let hits = carbon.wait("stats_counts.carbon.hits", |p| p.iter().sum::<f64>() == total as f64);
    assert_eq!(hits.iter().filter(|v| **v > 0.0).count(), 3, "one point per burst: {hits:?}");
    // The per-second rate for a 1 s interval equals the count.
    carbon.wait("stats.carbon.hits", |p| p.iter().sum::<f64>() == total as f64);
    carbon.wait("stats.gauges.carbon.temp", |p| p.last() == Some(&30.0));
    carbon.wait("stats.timers.carbon.lat.upper", |p| p.contains(&40.0));
    carbon.wait("stats.timers.carbon.lat.upper_90", |p| p.contains(&40.0));
    carbon.wait("stats.timers.carbon.lat.mean", |p| p.contains(&25.0));
    carbon.wait("stats.timers.carbon.lat.count", |p| p.iter().sum::<f64>() == 4.0);
    carbon.wait("stats.sets.carbon.users.count", |p| p.contains(&3.0));
    carbon.wait("statsd.numStats", |p| !p.is_empty());
}

#[test]
fn plaintext_to_real_carbon() {
    flush_to_carbon(false);
}

#[test]
fn pickle_to_real_carbon() {
    flush_to_carbon(true);
}
