//! SIGHUP (and `POST /-/reload`): re-read the file; if it is valid, put it in force and let
//! every component apply what it can while running (listeners added and removed,
//! certificates re-read, the Graphite address, aggregation settings, `[limits]`).

use std::sync::Arc;

use super::{Components, Shared};
use crate::config::Config;

/// Re-reads the configuration file. Returns why it was refused (the running one stays).
pub fn reload(shared: &Arc<Shared>, components: &mut Components) -> Result<(), String> {
    let Some(path) = &shared.config_path else {
        tracing::info!("SIGHUP: no config file to reload (running on defaults)");
        return Err("no config file to reload (running on defaults)".into());
    };
    let new = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: config refused; the running one stays");
            return Err(e.to_string());
        }
    };
    let old = shared.config.read().clone();
    if new.admin.listen != old.admin.listen || new.http.listen != old.http.listen {
        tracing::warn!("SIGHUP: changes to the console and HTTP addresses take effect at the next restart");
    }
    if new.otlp != old.otlp || new.prometheus_remote_write != old.prometheus_remote_write {
        tracing::warn!("SIGHUP: changes to [otlp] and [prometheus_remote_write] take effect at the next restart");
    }
    let receiving = |c: &Config| {
        let (s, y) = (&c.statsd, &c.syslog);
        (s.receive_threads, s.receive_buffer, s.receive_spread, y.receive_threads, y.receive_buffer, y.receive_spread)
    };
    if receiving(&new) != receiving(&old) {
        // A UDP listener's sockets are made at its start: a kept address keeps them.
        tracing::warn!("SIGHUP: changes to receive_threads, receive_buffer and receive_spread take effect when a listener starts (a new address, or the next restart)");
    }
    shared.aggregation.reconfigure(new.aggregation());
    if new.limits != old.limits {
        shared.guard.reconfigure(&new.limits);
        shared.aggregation.budgets.set_limits(new.limits.series_budgets());
        tracing::info!(limits = ?new.limits, "SIGHUP: new limits in force");
    }
    // The mapping file is re-read on every reload: it may have changed under its name.
    shared.naming.apply(&new.prometheus);
    *shared.config.write() = new.clone();
    for sink in &mut components.sinks {
        sink.reload(&new);
    }
    for source in &mut components.sources {
        source.reload(shared, &new);
    }
    tracing::info!(path = %path.display(), "SIGHUP: config reloaded");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_valid_file_is_put_in_force_and_a_bad_one_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("floodgate.toml");
        std::fs::write(&path, "[limits]\nudp_per_source = 100\n").unwrap();
        let shared = Arc::new(Shared::new(Config::load(&path).unwrap(), Some(path.clone())));
        std::fs::write(&path, "[limits]\nudp_per_source = 200\n").unwrap();
        reload(&shared, &mut Components::default()).unwrap();
        assert_eq!(shared.config.read().limits.udp_per_source, 200);
        // A certificate that does not load refuses the whole file, naming the key and line.
        std::fs::write(
            &path,
            "[limits]\nudp_per_source = 300\n[statsd]\ntls = { cert = \"/nope.pem\", key = \"/nope.key\" }\n",
        )
        .unwrap();
        let why = reload(&shared, &mut Components::default()).unwrap_err();
        assert!(why.contains(":4: key `statsd.tls`"), "{why}");
        assert_eq!(shared.config.read().limits.udp_per_source, 200, "the running config stays");
    }

    #[tokio::test]
    async fn without_a_file_there_is_nothing_to_reload() {
        let shared = Arc::new(Shared::new(Config::default(), None));
        assert!(reload(&shared, &mut Components::default()).unwrap_err().contains("no config file"));
    }
}
