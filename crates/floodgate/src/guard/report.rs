//! What the guard reports: `/offenders` (the limiter table, ports over their limit, the
//! sources that dropped most, the user-space table's and the kernel layer's), and the guard's
//! families on `/metrics`.

use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use floodgate_guard::Offender;
use serde::Serialize;

use super::Guard;

impl Guard {
    fn wall(&self, ns: u64) -> String {
        humantime::format_rfc3339_millis(self.epoch_wall + Duration::from_nanos(ns)).to_string()
    }

    /// The `max` sources that dropped most, for `/offenders` and the labelled metric: the
    /// user-space table's, and the kernel layer's (`reason` `kernel_*`).
    pub fn offenders(&self, max: usize) -> Vec<OffenderReport> {
        use floodgate_guard::Reason;
        let listeners = self.listeners.lock().clone();
        let policy = self.policy();
        let mut kernel: Vec<OffenderReport> = listeners
            .iter()
            .filter_map(|lg| Some((lg, lg.kernel.get()?)))
            .flat_map(|(lg, k)| {
                k.offenders(max).into_iter().map(|cell| {
                    let source = match cell.ip() {
                        _ if cell.is_local() => "local".to_string(),
                        IpAddr::V6(a) => format!("{a}/64"),
                        a => a.to_string(),
                    };
                    OffenderReport {
                        source,
                        uid: None,
                        program: None,
                        listener: lg.kind.as_str(),
                        address: lg.address.clone(),
                        reason: "kernel_source_limit",
                        limit_key: Some("udp_per_source"),
                        limit: Some(policy.udp_source.rate().round() as u64),
                        dropped: cell.dropped,
                        first_seen: String::new(),
                        last_seen: String::new(),
                        currently_limited: false,
                    }
                })
            })
            .collect();
        let mut all: Vec<OffenderReport> = policy
            .table
            .offenders(max)
            .into_iter()
            .filter_map(|o: Offender| {
                let lg = listeners.get(o.key.listener as usize)?;
                let rate = |l: &floodgate_guard::Limit| l.rate().round() as u64;
                let limit = match o.reason {
                    Reason::SourceLimit if o.key.as_uid().is_some() => Some(("unix_per_uid", rate(&policy.unix_uid))),
                    Reason::SourceLimit if lg.kind.is_stream() => Some(("tcp_per_source", rate(&policy.tcp_source))),
                    Reason::SourceLimit => Some(("udp_per_source", rate(&policy.udp_source))),
                    Reason::ConnectionRate => Some(("tcp_connections_per_source", rate(&policy.tcp_rate))),
                    Reason::SourceConnections => Some(("tcp_open_per_source", policy.tcp_open_per_source as u64)),
                    _ => None,
                };
                Some(OffenderReport {
                    source: o.key.source(),
                    uid: o.key.as_uid(),
                    program: lg.program_of(o.key),
                    listener: lg.kind.as_str(),
                    address: lg.address.clone(),
                    reason: o.reason.as_str(),
                    limit_key: limit.map(|(k, _)| k),
                    limit: limit.map(|(_, v)| v),
                    dropped: o.dropped,
                    first_seen: self.wall(o.first_seen_ns),
                    last_seen: self.wall(o.last_seen_ns),
                    currently_limited: o.currently_limited,
                })
            })
            .collect();
        all.append(&mut kernel);
        all.sort_by_key(|o| std::cmp::Reverse(o.dropped));
        all.truncate(max);
        all
    }

    /// Each listener with the kernel layer attached: its stats (passed, dropped by source, by
    /// port, outside the allow-list).
    pub fn kernel_stats(&self) -> Vec<(&'static str, String, [u64; 4])> {
        self.listeners
            .lock()
            .iter()
            .filter_map(|lg| Some((lg.kind.as_str(), lg.address.clone(), lg.kernel.get()?.stats())))
            .collect()
    }

    /// The `/offenders` document.
    pub fn report(&self, max: usize) -> GuardReport {
        let policy = self.policy();
        let ports = self
            .listeners
            .lock()
            .iter()
            .filter(|lg| lg.port_dropped.load(Relaxed) > 0)
            .map(|lg| PortReport {
                listener: lg.kind.as_str(),
                address: lg.address.clone(),
                dropped: lg.port_dropped.load(Relaxed),
                currently_limited: lg.port_limited.load(Relaxed),
                budget: lg.budget(),
                limit: policy.udp_port.rate().round() as u64,
                share: lg.shared.is_fallen_back().then(|| lg.shared.share()),
                hosts: Some(lg.shared_hosts.load(Relaxed)).filter(|h| policy.shared && *h > 0),
            })
            .collect();
        GuardReport {
            tracked_sources: policy.table.len(),
            tracked_sources_capacity: policy.table.capacity(),
            ports,
            shared: self.shared_report(),
            offenders: self.offenders(max),
        }
    }
}

/// `/offenders`.
#[derive(Debug, Serialize)]
pub struct GuardReport {
    /// Sources in the limiter table now.
    pub tracked_sources: usize,
    /// The table's bound.
    pub tracked_sources_capacity: usize,
    /// Listening ports that have been over their own limit.
    pub ports: Vec<PortReport>,
    /// `[limits] shared`: the fleet's budgets in Redis.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared: Option<super::shared::SharedReport>,
    /// Sources that hit a limit, most dropped first.
    pub offenders: Vec<OffenderReport>,
}

/// One port in `/offenders`.
#[derive(Debug, Serialize)]
pub struct PortReport {
    /// Listener kind.
    pub listener: &'static str,
    /// Listening address.
    pub address: String,
    /// Messages dropped by the port limit, total.
    pub dropped: u64,
    /// Over its limit within the last few seconds.
    pub currently_limited: bool,
    /// Which budget its drops came from: `local` (this host's `udp_per_port`), `shared` (the
    /// fleet's, in Redis) or `shared_fallback` (this host's share while Redis is away).
    pub budget: &'static str,
    /// The port's limit, messages/s (the fleet's, when shared).
    pub limit: u64,
    /// While fallen back: this host's share, messages/s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub share: Option<u64>,
    /// When shared: the hosts serving the port, as Redis last counted them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hosts: Option<u64>,
}

/// One source in `/offenders`.
#[derive(Debug, Serialize)]
pub struct OffenderReport {
    /// IPv4 address, IPv6 /64, or `uid:N` (a local user on a Unix socket).
    pub source: String,
    /// A local user's uid (Unix sockets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// The program a limited local user was sending from when it was limited
    /// (`/proc/PID/comm`; empty if it had already exited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,
    /// Listener kind.
    pub listener: &'static str,
    /// Listening address.
    pub address: String,
    /// The limit it hit last.
    pub reason: &'static str,
    /// That limit's key in `[limits]` (`udp_per_source`...), when it is a rate or a count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_key: Option<&'static str>,
    /// Its value: messages or connections a second, or open connections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Messages (UDP) or connections (TCP) dropped while tracked.
    pub dropped: u64,
    /// First drop (RFC 3339).
    pub first_seen: String,
    /// Last drop.
    pub last_seen: String,
    /// Dropped within the last few seconds.
    pub currently_limited: bool,
}
/// Offenders labelled by source: only this many, so labels stay bounded.
const TOP_OFFENDERS: usize = 10;

impl crate::metrics::Report for Guard {
    fn report(&self, out: &mut crate::metrics::Families) {
        use crate::metrics::Describe;
        let report = self.report(TOP_OFFENDERS);
        out.one(
            Describe::gauge("floodgate_guard_tracked_sources", "Sources in the limiter table."),
            report.tracked_sources as u64,
        );
        out.one(
            Describe::gauge(
                "floodgate_guard_tracked_sources_capacity",
                "Bound of the limiter table (tracked_sources).",
            ),
            report.tracked_sources_capacity as u64,
        );
        let attached = Describe::gauge(
            "floodgate_kernel_guard_attached",
            "1 where the kernel layer of the guard (an eBPF socket filter) limits a UDP listener.",
        );
        let kernel = Describe::counter(
            "floodgate_kernel_guard_datagrams_total",
            "Datagrams the kernel layer of the guard saw, by outcome: passed, source_limit, port_limit, not_allowed.",
        );
        out.family(attached);
        out.family(kernel);
        for (listener, address, stats) in self.kernel_stats() {
            out.add(attached, &[("listener", listener), ("address", address.as_str())], 1u64);
            for (outcome, n) in ["passed", "source_limit", "port_limit", "not_allowed"].into_iter().zip(stats) {
                out.add(kernel, &[("listener", listener), ("address", address.as_str()), ("outcome", outcome)], n);
            }
        }
        if let Some(shared) = &report.shared {
            for (name, help, value) in [
                (
                    "floodgate_guard_shared_calls_total",
                    "Calls to Redis for leases of the fleet's port budgets ([limits] shared).",
                    shared.calls,
                ),
                (
                    "floodgate_guard_shared_errors_total",
                    "Calls to Redis that failed or took longer than [limits] shared.timeout.",
                    shared.errors,
                ),
                (
                    "floodgate_guard_shared_fallbacks_total",
                    "Times a port fell back to this host's share of its limit (Redis away).",
                    shared.fallbacks,
                ),
                (
                    "floodgate_guard_shared_granted_total",
                    "Messages leased from the fleet's port budgets.",
                    shared.granted,
                ),
            ] {
                out.one(Describe::counter(name, help), value);
            }
            let fallen = Describe::gauge(
                "floodgate_guard_shared_fallback",
                "1 while a port is held to this host's share of its limit because Redis cannot be reached.",
            );
            let hosts = Describe::gauge(
                "floodgate_guard_shared_hosts",
                "Hosts sharing a port's budget, as Redis last counted them.",
            );
            out.family(fallen);
            out.family(hosts);
            for lg in self.listeners.lock().iter().filter(|lg| lg.budget() != "local") {
                let labels = [("listener", lg.kind.as_str()), ("address", lg.address.as_str())];
                out.add(fallen, &labels, lg.shared.is_fallen_back() as u64);
                out.add(hosts, &labels, lg.shared_hosts.load(Relaxed));
            }
        }
        let dropped = Describe::counter(
            "floodgate_offender_dropped_total",
            "Dropped from the 10 sources that dropped most (see /offenders).",
        );
        let limited = Describe::gauge("floodgate_offender_limited", "Whether a top offender is being limited now.");
        out.family(dropped);
        out.family(limited);
        for o in &report.offenders {
            let labels = [("listener", o.listener), ("address", o.address.as_str()), ("source", o.source.as_str())];
            out.add(dropped, &labels, o.dropped);
            out.add(limited, &labels, o.currently_limited as u64);
        }
    }

    /// The limiter table and the top offenders, as `/offenders` shows them.
    fn status(&self) -> Option<(&'static str, serde_json::Value)> {
        Some(("guard", serde_json::to_value(self.report(TOP_OFFENDERS)).unwrap_or_default()))
    }
}
