//! The topology: build every sink, then every source, from the configuration (each through
//! its registry: [`crate::sinks::SINKS`], [`crate::sources::SOURCES`]), start the flusher,
//! report ready, wait for signals, and stop in order — sources first (each hands on what it
//! took), then the final flush, then the sinks (each delivers what it holds).
//!
//! Nothing here names a source or a sink.

mod reload;

pub use crate::component::{Shared, Stopping, Wiring};
pub use reload::reload;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::sinks::Sink;
use crate::sources::Source;

/// The running components, for reload and shutdown.
#[derive(Default)]
pub struct Components {
    sources: Vec<Box<dyn Source>>,
    sinks: Vec<Box<dyn Sink>>,
}

/// Tells systemd (a `Type=notify` unit: `NOTIFY_SOCKET` is set) how the service stands, so
/// `systemctl start` returns once every listener is bound and `systemctl reload` shows the
/// unit reloading. Nothing happens outside systemd.
fn notify_service_manager(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}

/// [`reload`], with the service manager told while it runs.
fn reload_notified(shared: &Arc<Shared>, components: &mut Components) -> Result<(), String> {
    notify_service_manager(&[sd_notify::NotifyState::Reloading]);
    let result = reload(shared, components);
    notify_service_manager(&[sd_notify::NotifyState::Ready]);
    result
}

/// Runs floodgate until SIGTERM or SIGINT.
pub async fn run(config: Config, config_path: Option<PathBuf>) -> Result<()> {
    for addr in config.public_listeners() {
        tracing::warn!(%addr, "listening on a non-loopback address with no allow-list");
    }
    match crate::sys::raise_open_files_limit() {
        Ok(n) if n < 4096 => tracing::warn!(
            open_files = n,
            "the open-files limit is low: connections past it wait in the backlog (raise LimitNOFILE / ulimit -n)"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open-files limit"),
    }
    let shared = Arc::new(Shared::new(config.clone(), config_path));

    // Sinks first: sources write into them. A component that cannot start is a start-up error.
    let mut wiring = Wiring::default();
    let mut sinks = Vec::new();
    for build in crate::sinks::SINKS {
        sinks.extend(build(&shared, &config, &mut wiring)?);
    }
    let mut sources = Vec::new();
    for build in crate::sources::SOURCES {
        sources.extend(build(&shared, &config, &mut wiring)?);
    }
    let Wiring { flush: mut outputs, .. } = wiring;
    let s = &config.statsd;
    // Agents and aggregators flush on wall-clock boundaries, so batches from every agent meet
    // in one interval; an aggregator waits `grace` past each boundary for them.
    outputs.aligned = match (&config.aggregator, &config.forward) {
        (Some(a), _) => Some(a.grace.unwrap_or_else(|| (s.flush_interval / 2).min(Duration::from_secs(5)))),
        (None, Some(_)) => Some(Duration::ZERO),
        (None, None) => None,
    };
    let (stop_flush, stop_rx) = std::sync::mpsc::channel();
    let flusher = {
        let handles = shared.flusher();
        std::thread::Builder::new()
            .name("flusher".into())
            .spawn(move || crate::flush::run(handles, outputs, stop_rx))?
    };
    let sweeper_stop = Arc::new(AtomicBool::new(false));
    let sweeper = shared.guard.spawn_sweeper(sweeper_stop.clone())?;
    let leases = shared.guard.spawn_shared(sweeper_stop.clone())?;
    let mut components = Components { sources, sinks };
    let mut reload_requests = shared.reload_queue.lock().take().context("started twice")?;
    shared.ready.store(true, Ordering::SeqCst);
    tracing::info!(flush_interval = ?s.flush_interval, "ready");
    notify_service_manager(&[sd_notify::NotifyState::Ready]);

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => { let _ = reload_notified(&shared, &mut components); }
            Some(reply) = reload_requests.recv() => { let _ = reply.send(reload_notified(&shared, &mut components)); }
        }
    }

    tracing::info!("stopping: no new input, flushing what is held");
    notify_service_manager(&[sd_notify::NotifyState::Stopping]);
    shared.ready.store(false, Ordering::SeqCst);
    shared.stopping.store(true, Ordering::SeqCst);
    let Components { sources, sinks } = components;
    // Every source at once: each reads what its senders already sent, bounded in time.
    let stopping: Vec<_> = sources.into_iter().map(|s| tokio::spawn(s.stop())).collect();
    for s in stopping {
        let _ = s.await;
    }
    tokio::task::spawn_blocking(move || {
        let _ = stop_flush.send(());
        let _ = flusher.join();
        sweeper_stop.store(true, Ordering::SeqCst);
        let _ = sweeper.join();
        let _ = leases.join();
    })
    .await?;
    // The flusher dropped its queues: each sink delivers what it holds, then ends.
    let finishing: Vec<_> = sinks.into_iter().map(|s| tokio::spawn(s.finish())).collect();
    for s in finishing {
        let _ = s.await;
    }
    tracing::info!("stopped");
    Ok(())
}
