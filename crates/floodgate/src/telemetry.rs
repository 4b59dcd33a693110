//! floodgate's own metrics, written as Prometheus text (0.0.4) on `/metrics`.
//!
//! Each receive thread and connection task owns its [`ListenerCounters`] (relaxed atomics that
//! only it writes), so counting costs no shared cache line on the hot path; a scrape sums them
//! by listener. Written by hand rather than with prometheus-client because the same response
//! also carries the aggregated StatsD series, and one writer keeps the whole exposition in one
//! format that `promtool check metrics` accepts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use floodgate_guard::Reason;
use parking_lot::Mutex;

use crate::guard::Guard;

/// Counters of one receive thread or one listener's connection tasks.
#[derive(Debug, Default)]
pub struct ListenerCounters {
    /// Datagrams (UDP) or reads with complete lines (TCP).
    pub packets: AtomicU64,
    /// Bytes received.
    pub bytes: AtomicU64,
    /// Non-empty lines.
    pub lines: AtomicU64,
    /// Bad values.
    pub bad_lines: AtomicU64,
    /// Of those, values whose key or set member was over `max_key_length`.
    pub key_too_long: AtomicU64,
    /// Datagrams longer than `max_datagram`, or TCP lines longer than `max_line_length`.
    pub oversize: AtomicU64,
    /// Syslog frames with a bad length field, or cut by the end of the stream.
    pub framing_errors: AtomicU64,
    /// TCP connections accepted.
    pub connections: AtomicU64,
    /// Refused by the guard, by [`Reason`] (messages for UDP, connections for TCP).
    pub dropped: [AtomicU64; Reason::ALL.len()],
    /// TCP connections closed for idleness.
    pub idle_closed: AtomicU64,
    /// TLS handshakes started (only ever on connections the guard admitted).
    pub tls_handshakes: AtomicU64,
    /// TLS handshakes that failed or timed out.
    pub tls_handshake_failures: AtomicU64,
    /// Open TCP connections.
    pub open_connections: AtomicI64,
}

impl ListenerCounters {
    /// Adds to a counter (relaxed: only totals matter).
    pub fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Relaxed);
        }
    }

    /// Adds guard refusals.
    pub fn add_dropped(&self, reason: Reason, n: u64) {
        Self::add(&self.dropped[reason as usize], n);
    }
}

/// A registered listener.
#[derive(Debug, Clone)]
pub struct Listener {
    /// `statsd_udp`, `statsd_tcp`, ...
    pub kind: &'static str,
    /// Bound address.
    pub address: String,
    /// Its counters.
    pub counters: Arc<ListenerCounters>,
    /// Receive buffer granted by the kernel (UDP), 0 otherwise.
    pub receive_buffer: usize,
    /// Local port, for reading the kernel's drop counters (UDP).
    pub udp_port: Option<u16>,
}

/// The Graphite sink's figures.
#[derive(Debug, Default)]
pub struct SinkCounters {
    /// Payloads (flushes) delivered.
    pub sent_payloads: AtomicU64,
    /// Bytes delivered.
    pub sent_bytes: AtomicU64,
    /// Metrics (lines) delivered.
    pub sent_metrics: AtomicU64,
    /// Failed connection or write attempts.
    pub errors: AtomicU64,
    /// Payloads dropped because the buffer was full.
    pub dropped_payloads: AtomicU64,
    /// Bytes dropped because the buffer was full.
    pub dropped_bytes: AtomicU64,
    /// Bytes waiting.
    pub buffer_bytes: AtomicU64,
    /// Payloads waiting.
    pub buffer_payloads: AtomicU64,
    /// The buffer is at its bound with flushes that may not be dropped: an aggregator takes no
    /// agent batches until it drains.
    pub full: std::sync::atomic::AtomicBool,
}

/// Flush figures.
#[derive(Debug, Default)]
pub struct FlushCounters {
    /// Flushes done.
    pub flushes: AtomicU64,
    /// Duration of the last flush (merge + compute + render), microseconds.
    pub last_duration_us: AtomicU64,
    /// Series held after the last flush.
    pub series: AtomicU64,
    /// New series refused by `max_series`, total.
    pub dropped_max_series: AtomicU64,
    /// New series refused by `max_memory`, total.
    pub dropped_max_memory: AtomicU64,
    /// Refusals for memory happened in the last interval (for the log lines).
    pub memory_limited: std::sync::atomic::AtomicBool,
    /// The aggregation state's estimated bytes after the last flush.
    pub memory_bytes: AtomicU64,
    /// `max_memory` (0: none).
    pub memory_limit: AtomicU64,
    /// Series an agent did not forward because an aggregator would refuse them (a sum that
    /// overflowed), total.
    pub forward_invalid_series: AtomicU64,
}

/// Every self-metric.
#[derive(Debug, Default)]
pub struct Telemetry {
    listeners: Mutex<Vec<Listener>>,
    guard: Mutex<Option<Arc<Guard>>>,
    forward: Mutex<Vec<(String, Arc<crate::sinks::forward::LinkCounters>)>>,
    aggregator: Mutex<Option<Arc<crate::sources::aggregator::Aggregator>>>,
    syslog_output: Mutex<Option<(String, Arc<crate::sinks::syslog::OutputCounters>)>>,
    conntrack: Mutex<Option<Arc<crate::sources::conntrack::Conntrack>>>,
    /// The Graphite sink.
    pub graphite: SinkCounters,
    /// The remote-write sink.
    pub remote_write: SinkCounters,
    /// Flushing.
    pub flush: FlushCounters,
}

impl Telemetry {
    /// Reports the guard's table and top offenders too.
    pub fn set_guard(&self, guard: Arc<Guard>) {
        *self.guard.lock() = Some(guard);
    }

    /// Reports a forward link (one per aggregator).
    pub fn add_forward_link(&self, aggregator: String, counters: Arc<crate::sinks::forward::LinkCounters>) {
        self.forward.lock().push((aggregator, counters));
    }

    /// Reports the aggregator role.
    pub fn set_aggregator(&self, aggregator: Arc<crate::sources::aggregator::Aggregator>) {
        *self.aggregator.lock() = Some(aggregator);
    }

    /// Reports the host's connections (conntrack).
    pub fn set_conntrack(&self, conntrack: Arc<crate::sources::conntrack::Conntrack>) {
        *self.conntrack.lock() = Some(conntrack);
    }

    /// Reports the syslog output.
    pub fn set_syslog_output(&self, describe: String, counters: Arc<crate::sinks::syslog::OutputCounters>) {
        *self.syslog_output.lock() = Some((describe, counters));
    }

    /// Registers a listener (or one receive thread of it).
    pub fn register(&self, listener: Listener) {
        self.listeners.lock().push(listener);
    }

    /// Connections open now on the listeners whose kind starts with `prefix`.
    pub fn open_connections(&self, prefix: &str) -> i64 {
        let listeners = self.listeners.lock();
        listeners.iter().filter(|l| l.kind.starts_with(prefix)).map(|l| l.counters.open_connections.load(Relaxed)).sum()
    }

    /// Sums of `f` over all counters of each listener.
    pub fn by_listener(&self, f: impl Fn(&ListenerCounters) -> u64) -> BTreeMap<(String, String), u64> {
        let mut out = BTreeMap::new();
        for l in self.listeners.lock().iter() {
            *out.entry((l.kind.to_string(), l.address.clone())).or_insert(0) += f(&l.counters);
        }
        out
    }

    /// Writes the exposition text.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP floodgate_build_info floodgate version.");
        let _ = writeln!(out, "# TYPE floodgate_build_info gauge");
        let _ = writeln!(out, "floodgate_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));

        let listeners = self.listeners.lock().clone();
        for m in PER_LISTENER {
            let _ = writeln!(out, "# HELP {} {}", m.name, m.help);
            let _ = writeln!(out, "# TYPE {} {}", m.name, m.kind);
            let mut sums: BTreeMap<(&str, &str), u64> = BTreeMap::new();
            for l in listeners.iter().filter(|l| (m.applies)(l)) {
                *sums.entry((l.kind, l.address.as_str())).or_insert(0) += (m.value)(l);
            }
            for ((kind, address), v) in sums {
                let _ = writeln!(out, "{}{{listener=\"{kind}\",address=\"{address}\"}} {v}", m.name);
            }
        }

        let _ = writeln!(out, "# HELP floodgate_dropped_total Input dropped, by listener and reason.");
        let _ = writeln!(out, "# TYPE floodgate_dropped_total counter");
        let mut drops: BTreeMap<(&str, &str, &str), u64> = BTreeMap::new();
        let mut kernel_ports: BTreeMap<(&str, &str), u16> = BTreeMap::new();
        for l in &listeners {
            let c = &l.counters;
            *drops.entry((l.kind, &l.address, "oversize")).or_insert(0) += c.oversize.load(Relaxed);
            if l.kind.starts_with("statsd") {
                *drops.entry((l.kind, &l.address, "key_too_long")).or_insert(0) += c.key_too_long.load(Relaxed);
            }
            let tcp = l.udp_port.is_none();
            for reason in Reason::ALL {
                let applies = match reason {
                    Reason::NotAllowed => true,
                    Reason::SourceLimit | Reason::PortLimit => !tcp,
                    Reason::ConnectionRate | Reason::SourceConnections | Reason::ConnectionLimit => tcp,
                    Reason::HandshakeLimit => l.kind.ends_with("_tls"),
                };
                if applies {
                    *drops.entry((l.kind, &l.address, reason.as_str())).or_insert(0) +=
                        c.dropped[reason as usize].load(Relaxed);
                }
            }
            if tcp {
                *drops.entry((l.kind, &l.address, "idle_timeout")).or_insert(0) += c.idle_closed.load(Relaxed);
            }
            if tcp && is_syslog(l) {
                *drops.entry((l.kind, &l.address, "framing")).or_insert(0) += c.framing_errors.load(Relaxed);
            }
            if let Some(port) = l.udp_port {
                kernel_ports.insert((l.kind, &l.address), port);
            }
        }
        for ((kind, address), port) in kernel_ports {
            // The kernel counts per socket; every socket on the port is ours (SO_REUSEPORT).
            drops.insert((kind, address, "kernel_receive_buffer"), crate::sys::kernel_udp_drops(port));
        }
        for ((kind, address, reason), v) in &drops {
            let _ = writeln!(
                out,
                "floodgate_dropped_total{{listener=\"{kind}\",address=\"{address}\",reason=\"{reason}\"}} {v}"
            );
        }
        if let Some(guard) = self.guard.lock().as_ref() {
            render_guard(guard, out);
        }
        render_forward(&self.forward.lock(), out);
        if let Some((describe, c)) = self.syslog_output.lock().as_ref() {
            render_syslog_output(describe, c, out);
        }
        if let Some(c) = self.conntrack.lock().as_ref() {
            render_conntrack(c, out);
        }
        if let Some(a) = self.aggregator.lock().as_ref() {
            let c = &a.counters;
            let rows: [(&str, &str, &str, &AtomicU64); 10] = [
                ("floodgate_aggregator_batches_total", "counter", "Agent batches merged.", &c.batches),
                ("floodgate_aggregator_series_total", "counter", "Series merged from agents.", &c.series),
                (
                    "floodgate_aggregator_refused_series_total",
                    "counter",
                    "Agent series refused by max_series.",
                    &c.refused_series,
                ),
                (
                    "floodgate_aggregator_duplicate_batches_total",
                    "counter",
                    "Retried batches skipped (already merged).",
                    &c.duplicates,
                ),
                (
                    "floodgate_aggregator_protocol_errors_total",
                    "counter",
                    "Agent connections closed for a protocol error.",
                    &c.protocol_errors,
                ),
                (
                    "floodgate_aggregator_refused_batches_total",
                    "counter",
                    "Agent batches refused whole: not a well-formed message.",
                    &c.refused_batches,
                ),
                (
                    "floodgate_aggregator_refused_sessions_total",
                    "counter",
                    "Agent hellos refused: max_agents reached, or an agent_id too long.",
                    &c.refused_sessions,
                ),
                (
                    "floodgate_aggregator_busy_total",
                    "counter",
                    "Agent hellos and batches turned away while an output's buffer was full (agents resend).",
                    &c.busy,
                ),
                (
                    "floodgate_aggregator_timeouts_total",
                    "counter",
                    "Agent connections closed: idle, or a frame too slow to arrive.",
                    &c.timeouts,
                ),
                ("floodgate_aggregator_agents_connected", "gauge", "Agent connections open now.", &c.connected),
            ];
            for (name, kind, help, v) in rows {
                family(out, (name, kind, help), [("", v.load(Relaxed))]);
            }
            family(
                out,
                (
                    "floodgate_aggregator_invalid_series_total",
                    "counter",
                    "Agent series refused by the validity rule, by reason.",
                ),
                floodgate_statsd::Invalid::ALL
                    .map(|r| (format!("reason=\"{}\"", r.as_str()), c.invalid_series[r as usize].load(Relaxed))),
            );
        }
        let f = &self.flush;
        family(
            out,
            (
                "floodgate_statsd_dropped_series_total",
                "counter",
                "New StatsD series refused, by the bound that refused them.",
            ),
            [
                ("reason=\"max_series\"", f.dropped_max_series.load(Relaxed)),
                ("reason=\"max_memory\"", f.dropped_max_memory.load(Relaxed)),
            ],
        );
        family(
            out,
            (
                "floodgate_statsd_memory_bytes",
                "gauge",
                "Estimated bytes of the aggregation state after the last flush (keys, timer values, set members).",
            ),
            [("", f.memory_bytes.load(Relaxed))],
        );
        family(
            out,
            (
                "floodgate_statsd_memory_limit_bytes",
                "gauge",
                "max_memory: the aggregation state's byte budget (0: none).",
            ),
            [("", f.memory_limit.load(Relaxed))],
        );
        family(
            out,
            (
                "floodgate_forward_invalid_series_total",
                "counter",
                "Series not forwarded because an aggregator would refuse them (a sum that overflowed).",
            ),
            [("", f.forward_invalid_series.load(Relaxed))],
        );
        let _ = writeln!(out, "# HELP floodgate_statsd_series StatsD series held after the last flush.");
        let _ = writeln!(out, "# TYPE floodgate_statsd_series gauge");
        let _ = writeln!(out, "floodgate_statsd_series {}", f.series.load(Relaxed));
        let _ = writeln!(out, "# HELP floodgate_flushes_total StatsD flushes done.");
        let _ = writeln!(out, "# TYPE floodgate_flushes_total counter");
        let _ = writeln!(out, "floodgate_flushes_total {}", f.flushes.load(Relaxed));
        let _ = writeln!(
            out,
            "# HELP floodgate_flush_duration_seconds Duration of the last flush (merge, compute, render)."
        );
        let _ = writeln!(out, "# TYPE floodgate_flush_duration_seconds gauge");
        let _ = writeln!(out, "floodgate_flush_duration_seconds {}", f.last_duration_us.load(Relaxed) as f64 / 1e6);

        type Field = fn(&SinkCounters) -> &AtomicU64;
        let rows: [(&str, &str, &str, Field); 8] = [
            ("floodgate_sink_sent_payloads_total", "counter", "Flush payloads delivered.", |c| &c.sent_payloads),
            ("floodgate_sink_sent_bytes_total", "counter", "Bytes delivered.", |c| &c.sent_bytes),
            ("floodgate_sink_sent_metrics_total", "counter", "Metrics delivered.", |c| &c.sent_metrics),
            ("floodgate_sink_errors_total", "counter", "Failed connection or write attempts.", |c| &c.errors),
            ("floodgate_sink_dropped_payloads_total", "counter", "Payloads dropped: buffer full, or refused.", |c| {
                &c.dropped_payloads
            }),
            ("floodgate_sink_dropped_bytes_total", "counter", "Bytes dropped: buffer full, or refused.", |c| {
                &c.dropped_bytes
            }),
            ("floodgate_sink_buffer_bytes", "gauge", "Bytes waiting to be delivered.", |c| &c.buffer_bytes),
            ("floodgate_sink_buffer_payloads", "gauge", "Payloads waiting to be delivered.", |c| &c.buffer_payloads),
        ];
        for (name, kind, help, field) in rows {
            let sinks = [("graphite", &self.graphite), ("remote_write", &self.remote_write)];
            family(
                out,
                (name, kind, help),
                sinks.map(|(sink, c)| (format!("sink=\"{sink}\""), field(c).load(Relaxed))),
            );
        }
    }
}

fn render_forward(links: &[(String, Arc<crate::sinks::forward::LinkCounters>)], out: &mut String) {
    if links.is_empty() {
        return;
    }
    type Field = fn(&crate::sinks::forward::LinkCounters) -> &AtomicU64;
    let rows: [(&str, &str, &str, Field); 9] = [
        (
            "floodgate_forward_refused_batches_total",
            "counter",
            "Batches dropped after the aggregator refused them 3 times.",
            |c| &c.refused_batches,
        ),
        ("floodgate_forward_acked_batches_total", "counter", "Batches an aggregator acknowledged.", |c| {
            &c.acked_batches
        }),
        ("floodgate_forward_acked_series_total", "counter", "Series in acknowledged batches.", |c| &c.acked_series),
        ("floodgate_forward_sent_bytes_total", "counter", "Batch bytes written (retries included).", |c| &c.sent_bytes),
        (
            "floodgate_forward_dropped_batches_total",
            "counter",
            "Batches dropped: buffer full, refused by the aggregator, or unacknowledged at shutdown.",
            |c| &c.dropped_batches,
        ),
        ("floodgate_forward_errors_total", "counter", "Failed connections and lost ones.", |c| &c.errors),
        ("floodgate_forward_queued_batches", "gauge", "Batches waiting for an acknowledgement.", |c| &c.queued_batches),
        ("floodgate_forward_queued_bytes", "gauge", "Bytes of those batches.", |c| &c.queued_bytes),
        ("floodgate_forward_connected", "gauge", "1 while connected to the aggregator.", |c| &c.connected),
    ];
    for (name, kind, help, field) in rows {
        let samples = links.iter().map(|(a, c)| (format!("aggregator=\"{a}\""), field(c).load(Relaxed)));
        family(out, (name, kind, help), samples);
    }
}

impl Telemetry {
    /// The `/api/status` document (see the README): per-listener totals, the guard's top
    /// offenders, flush and sink health, connection states. Counters are totals since start;
    /// a client derives rates from two samples.
    pub fn status(&self) -> serde_json::Value {
        use serde_json::json;
        let listeners = self.listeners.lock().clone();
        let mut by: BTreeMap<(&str, &str), serde_json::Map<String, serde_json::Value>> = BTreeMap::new();
        for l in &listeners {
            let e = by.entry((l.kind, l.address.as_str())).or_default();
            let c = &l.counters;
            let mut add = |k: &str, v: u64| {
                let cur = e.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
                e.insert(k.to_string(), json!(cur + v));
            };
            add("packets", c.packets.load(Relaxed));
            add("bytes", c.bytes.load(Relaxed));
            add("messages", c.lines.load(Relaxed));
            add("bad", c.bad_lines.load(Relaxed));
            add("open_connections", c.open_connections.load(Relaxed).max(0) as u64);
            add("dropped_oversize", c.oversize.load(Relaxed));
            add("dropped_idle_timeout", c.idle_closed.load(Relaxed));
            add("dropped_framing", c.framing_errors.load(Relaxed));
            add("dropped_key_too_long", c.key_too_long.load(Relaxed));
            for r in Reason::ALL {
                add(&format!("dropped_{}", r.as_str()), c.dropped[r as usize].load(Relaxed));
            }
        }
        let listeners: Vec<serde_json::Value> = by
            .into_iter()
            .map(|((kind, address), m)| {
                let mut dropped = serde_json::Map::new();
                let mut rest = serde_json::Map::new();
                for (k, v) in m {
                    match k.strip_prefix("dropped_") {
                        Some(reason) => {
                            dropped.insert(reason.to_string(), v);
                        }
                        None => {
                            rest.insert(k, v);
                        }
                    }
                }
                json!({"listener": kind, "address": address, "totals": rest, "dropped": dropped})
            })
            .collect();
        let sink = |name: &str, c: &SinkCounters| {
            json!({"sink": name, "sent_metrics": c.sent_metrics.load(Relaxed), "sent_payloads": c.sent_payloads.load(Relaxed),
                   "errors": c.errors.load(Relaxed), "dropped_payloads": c.dropped_payloads.load(Relaxed),
                   "buffer_bytes": c.buffer_bytes.load(Relaxed), "buffer_payloads": c.buffer_payloads.load(Relaxed)})
        };
        let forward: Vec<serde_json::Value> = self
            .forward
            .lock()
            .iter()
            .map(|(a, c)| {
                json!({"aggregator": a, "connected": c.connected.load(Relaxed) == 1, "acked_series": c.acked_series.load(Relaxed),
                       "queued_batches": c.queued_batches.load(Relaxed), "queued_bytes": c.queued_bytes.load(Relaxed),
                       "dropped_batches": c.dropped_batches.load(Relaxed), "errors": c.errors.load(Relaxed)})
            })
            .collect();
        let syslog_output = self.syslog_output.lock().as_ref().map(|(d, c)| {
            json!({"output": d, "messages": c.written_messages.load(Relaxed), "errors": c.errors.load(Relaxed),
                   "dropped": c.dropped_messages.load(Relaxed), "buffer_bytes": c.buffer_bytes.load(Relaxed),
                   "buffer_messages": c.buffer_messages.load(Relaxed), "connected": c.connected.load(Relaxed) == 1})
        });
        let conntrack = self.conntrack.lock().as_ref().map(|c| {
            let rows = c.table.lock().snapshot();
            let mut states = [0u64; 4];
            for (_, counts) in &rows {
                for (i, v) in counts.phases.iter().enumerate() {
                    states[i] += v;
                }
                states[3] += counts.recently_closed;
            }
            let mut top: Vec<_> = rows.iter().filter(|(_, c)| c.entries > 0).collect();
            top.sort_by_key(|(_, c)| std::cmp::Reverse(c.phases.iter().sum::<u64>()));
            let top: Vec<serde_json::Value> = top
                .iter()
                .take(10)
                .map(|(l, c)| json!({"host": l.to_string(), "opening": c.phases[0], "open": c.phases[1], "closing": c.phases[2], "closed": c.phases[3] + c.recently_closed}))
                .collect();
            json!({"source": c.source, "states": {"opening": states[0], "open": states[1], "closing": states[2], "closed": states[3]},
                   "top_hosts": top, "resyncs": c.counters.resyncs.load(Relaxed)})
        });
        let guard = self.guard.lock().as_ref().map(|g| serde_json::to_value(g.report(10)).unwrap_or_default());
        let f = &self.flush;
        json!({
            "listeners": listeners,
            "guard": guard,
            "flush": {"flushes": f.flushes.load(Relaxed), "last_duration_seconds": f.last_duration_us.load(Relaxed) as f64 / 1e6,
                      "series": f.series.load(Relaxed), "dropped_series": f.dropped_max_series.load(Relaxed)},
            "sinks": [sink("graphite", &self.graphite), sink("remote_write", &self.remote_write)],
            "forward": forward,
            "syslog_output": syslog_output,
            "conntrack": conntrack,
        })
    }
}

/// conntrack_exporter's four gauges (same names, help and `host` label), then floodgate's own.
fn render_conntrack(c: &crate::sources::conntrack::Conntrack, out: &mut String) {
    use floodgate_conntrack::Phase;
    let (rows, protocols, folded) = {
        let mut table = c.table.lock();
        let protocols: BTreeMap<u8, u64> = table.by_protocol().iter().map(|(p, n)| (*p, *n)).collect();
        (table.scrape(), protocols, table.folded())
    };
    let families = [
        (
            Phase::Opening,
            "conntrack_opening_connections",
            "How many connections to the remote host are currently opening?",
        ),
        (Phase::Open, "conntrack_open_connections", "How many open connections are there to the remote host?"),
        (
            Phase::Closing,
            "conntrack_closing_connections",
            "How many connections to the remote host are currently closing?",
        ),
        (
            Phase::Closed,
            "conntrack_closed_connections",
            "How many connections to the remote host have recently closed?",
        ),
    ];
    for (phase, name, help) in families {
        let samples = rows.iter().map(|(label, counts)| {
            let mut v = counts.phases[phase as usize];
            if phase == Phase::Closed {
                v += counts.recently_closed;
            }
            (format!("host=\"{label}\""), v)
        });
        family(out, (name, "gauge", help), samples);
    }
    let by_protocol =
        protocols.iter().map(|(p, n)| (format!("protocol=\"{}\"", floodgate_conntrack::log::protocol_name(*p)), *n));
    family(out, ("conntrack_entries", "gauge", "Connections the kernel tracks now, by protocol."), by_protocol);
    let events = crate::sources::conntrack::EVENT_NAMES
        .iter()
        .zip(&c.counters.events)
        .map(|(name, n)| (format!("type=\"{name}\""), n.load(Relaxed)));
    family(out, ("conntrack_events_total", "counter", "Connection events applied, by type."), events);
    family(
        out,
        ("conntrack_resyncs_total", "counter", "Re-reads of the whole table after the kernel dropped events."),
        [("", c.counters.resyncs.load(Relaxed))],
    );
    family(
        out,
        (
            "conntrack_folded_connections_total",
            "counter",
            "Connections counted under host=\"other\" (max_remote_hosts reached).",
        ),
        [("", folded)],
    );
    let _ = writeln!(out, "# HELP conntrack_dump_duration_seconds How long the last full read of the table took.");
    let _ = writeln!(out, "# TYPE conntrack_dump_duration_seconds gauge");
    let _ = writeln!(out, "conntrack_dump_duration_seconds {}", c.counters.last_dump_us.load(Relaxed) as f64 / 1e6);
    family(
        out,
        ("conntrack_source_info", "gauge", "Where connections are read from (ctnetlink or sock_diag)."),
        [(format!("source=\"{}\"", c.source), 1)],
    );
}

/// One metric family: HELP, TYPE, then a sample per `(labels, value)` (labels without braces;
/// empty for none).
fn family<L: std::fmt::Display>(
    out: &mut String,
    (name, kind, help): (&str, &str, &str),
    samples: impl IntoIterator<Item = (L, u64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        let labels = labels.to_string();
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

fn render_syslog_output(describe: &str, c: &crate::sinks::syslog::OutputCounters, out: &mut String) {
    let kind = describe.split(' ').next().unwrap_or(describe);
    let rows: [(&str, &str, &str, &AtomicU64); 8] = [
        (
            "floodgate_syslog_output_messages_total",
            "counter",
            "Syslog records written or forwarded.",
            &c.written_messages,
        ),
        ("floodgate_syslog_output_bytes_total", "counter", "Bytes written or forwarded.", &c.written_bytes),
        ("floodgate_syslog_output_errors_total", "counter", "Failed writes, connects and lost connections.", &c.errors),
        (
            "floodgate_syslog_output_dropped_total",
            "counter",
            "Messages dropped: buffer and spill full, or held past the shutdown drain.",
            &c.dropped_messages,
        ),
        ("floodgate_syslog_output_buffer_bytes", "gauge", "Bytes waiting in memory.", &c.buffer_bytes),
        (
            "floodgate_syslog_output_buffer_messages",
            "gauge",
            "Messages waiting (memory and spill).",
            &c.buffer_messages,
        ),
        ("floodgate_syslog_output_spill_bytes", "gauge", "Bytes waiting in the spill file.", &c.spill_bytes),
        ("floodgate_syslog_output_connected", "gauge", "1 while the forward output is connected.", &c.connected),
    ];
    for (name, kind_, help, v) in rows {
        family(out, (name, kind_, help), [(format!("output=\"{kind}\""), v.load(Relaxed))]);
    }
}

/// Offenders labelled by source: only this many, so labels stay bounded.
const TOP_OFFENDERS: usize = 10;

fn render_guard(guard: &Guard, out: &mut String) {
    let report = guard.report(TOP_OFFENDERS);
    let _ = writeln!(out, "# HELP floodgate_guard_tracked_sources Sources in the limiter table.");
    let _ = writeln!(out, "# TYPE floodgate_guard_tracked_sources gauge");
    let _ = writeln!(out, "floodgate_guard_tracked_sources {}", report.tracked_sources);
    let _ =
        writeln!(out, "# HELP floodgate_guard_tracked_sources_capacity Bound of the limiter table (tracked_sources).");
    let _ = writeln!(out, "# TYPE floodgate_guard_tracked_sources_capacity gauge");
    let _ = writeln!(out, "floodgate_guard_tracked_sources_capacity {}", report.tracked_sources_capacity);
    let _ = writeln!(
        out,
        "# HELP floodgate_offender_dropped_total Dropped from the {TOP_OFFENDERS} sources that dropped most (see /offenders)."
    );
    let _ = writeln!(out, "# TYPE floodgate_offender_dropped_total counter");
    for o in &report.offenders {
        let _ = writeln!(
            out,
            "floodgate_offender_dropped_total{{listener=\"{}\",address=\"{}\",source=\"{}\"}} {}",
            o.listener, o.address, o.source, o.dropped
        );
    }
    let _ = writeln!(out, "# HELP floodgate_offender_limited Whether a top offender is being limited now.");
    let _ = writeln!(out, "# TYPE floodgate_offender_limited gauge");
    for o in &report.offenders {
        let _ = writeln!(
            out,
            "floodgate_offender_limited{{listener=\"{}\",address=\"{}\",source=\"{}\"}} {}",
            o.listener, o.address, o.source, o.currently_limited as u8
        );
    }
}

/// One per-listener metric family.
struct ListenerMetric {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    applies: fn(&Listener) -> bool,
    value: fn(&Listener) -> u64,
}

fn any(_: &Listener) -> bool {
    true
}

fn is_tcp(l: &Listener) -> bool {
    l.udp_port.is_none()
}

fn is_udp(l: &Listener) -> bool {
    l.udp_port.is_some()
}

fn is_tls(l: &Listener) -> bool {
    l.kind.ends_with("tls")
}

fn is_syslog(l: &Listener) -> bool {
    l.kind.starts_with("syslog")
}

fn is_statsd(l: &Listener) -> bool {
    !is_syslog(l) && !matches!(l.kind, "admin" | "http")
}

const PER_LISTENER: [ListenerMetric; 13] = [
    ListenerMetric {
        name: "floodgate_received_packets_total",
        kind: "counter",
        help: "Datagrams, or TCP reads holding complete lines, received.",
        applies: any,
        value: |l| l.counters.packets.load(Relaxed),
    },
    ListenerMetric {
        name: "floodgate_received_bytes_total",
        kind: "counter",
        help: "Bytes received.",
        applies: any,
        value: |l| l.counters.bytes.load(Relaxed),
    },
    ListenerMetric {
        name: "floodgate_received_lines_total",
        kind: "counter",
        help: "Non-empty lines received.",
        applies: is_statsd,
        value: |l| l.counters.lines.load(Relaxed),
    },
    ListenerMetric {
        name: "floodgate_bad_lines_total",
        kind: "counter",
        help: "Lines or values that could not be parsed.",
        applies: is_statsd,
        value: |l| l.counters.bad_lines.load(Relaxed),
    },
    ListenerMetric {
        name: "floodgate_syslog_messages_total",
        kind: "counter",
        help: "Syslog messages received and handed to the output.",
        applies: is_syslog,
        value: |l| l.counters.lines.load(Relaxed),
    },
    ListenerMetric {
        name: "floodgate_syslog_parsed_total",
        kind: "counter",
        help: "Syslog messages parsed cleanly.",
        applies: is_syslog,
        value: |l| l.counters.lines.load(Relaxed).saturating_sub(l.counters.bad_lines.load(Relaxed)),
    },
    ListenerMetric {
        name: "floodgate_syslog_parse_errors_total",
        kind: "counter",
        help: "Syslog messages kept whole with parse_error set.",
        applies: is_syslog,
        value: |l| l.counters.bad_lines.load(Relaxed),
    },
    ListenerMetric {
        name: "floodgate_limited_total",
        kind: "counter",
        help: "Messages (UDP) or connections (TCP) refused by a rate limit.",
        applies: any,
        value: |l| {
            Reason::ALL
                .iter()
                .filter(|r| r.is_rate_limit())
                .map(|r| l.counters.dropped[*r as usize].load(Relaxed))
                .sum()
        },
    },
    ListenerMetric {
        name: "floodgate_tcp_connections_total",
        kind: "counter",
        help: "TCP connections accepted.",
        applies: is_tcp,
        value: |l| l.counters.connections.load(Relaxed),
    },
    ListenerMetric {
        name: "floodgate_tcp_open_connections",
        kind: "gauge",
        help: "TCP connections open now.",
        applies: is_tcp,
        value: |l| l.counters.open_connections.load(Relaxed).max(0) as u64,
    },
    ListenerMetric {
        name: "floodgate_tls_handshakes_total",
        kind: "counter",
        help: "TLS handshakes started (on admitted connections only).",
        applies: is_tls,
        value: |l| l.counters.tls_handshakes.load(Relaxed),
    },
    ListenerMetric {
        name: "floodgate_tls_handshake_failures_total",
        kind: "counter",
        help: "TLS handshakes that failed or timed out.",
        applies: is_tls,
        value: |l| l.counters.tls_handshake_failures.load(Relaxed),
    },
    ListenerMetric {
        name: "floodgate_udp_receive_buffer_bytes",
        kind: "gauge",
        help: "Socket receive buffer granted by the kernel, summed over the listener's sockets.",
        applies: is_udp,
        value: |l| l.receive_buffer as u64,
    },
];
