//! HTTP: `/healthz` (200 once every listener is bound and health is up, 503 otherwise),
//! `/metrics` (floodgate's self-metrics and the aggregated StatsD series, Prometheus text),
//! `/offenders`, `/api/status`, `/ui`, and `POST /-/reload` when allowed.
//!
//! A listener like any other: connections pass the guard first (allow-list, connection rate,
//! open connections per source and in all), a request's head must arrive within
//! `header_timeout` (which also closes idle keep-alive connections), and a response nobody
//! reads is abandoned after it. hyper is driven directly for those timeouts (axum's `serve`
//! sets none).

mod browse;
pub mod config;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::component::{Shared, Wiring};
use crate::guard::ListenerGuard;
use crate::listener::Counters;
use crate::net::stream::Stalled;

/// Largest request head (request line and headers) read.
const MAX_HEAD: usize = 16 << 10;

/// `[http] listen`: binds it and starts serving; `None` when it is off.
pub fn build(
    shared: &Arc<Shared>,
    config: &crate::config::Config,
    _wiring: &mut Wiring,
) -> anyhow::Result<Option<Box<dyn crate::sources::Source>>> {
    use crate::listener::{Kind, Protocol, Transport};
    let Some(addr) = config.http.listen else { return Ok(None) };
    let kind = Kind::new(Protocol::Http, Transport::Tcp);
    let (shared, limit) = (shared.clone(), config.http.header_timeout);
    let max_open = config.http.max_connections;
    let started =
        crate::sources::running::start_accept_task(&shared.clone(), (kind, addr), max_open, "http", |l, g, c| {
            serve(l, shared, g, c, limit)
        })?;
    Ok(Some(started))
}

/// Serves until aborted.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    guard: Arc<ListenerGuard>,
    counters: Arc<Counters>,
    header_timeout: Duration,
) {
    let app = router(shared);
    crate::net::stream::serve(listener, guard, counters, None, None, "http", move |conn, peer| {
        let app = app.clone();
        let client = ClientAddress(peer.addr.map(|a| a.ip()));
        async move {
            let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(client);
                tower_service::Service::call(&mut app.clone(), request)
            });
            let io = TokioIo::new(Stalled::new(conn, header_timeout));
            hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(MAX_HEAD.max(8192))
                .serve_connection(io, service)
                .await
                .map_err(|e| {
                    // A head not sent in time, or a peer that stalled: counted as idle.
                    let stalled = e.is_timeout() || e.to_string().contains("stalled");
                    let kind = if stalled { std::io::ErrorKind::TimedOut } else { std::io::ErrorKind::Other };
                    std::io::Error::new(kind, e)
                })
        }
    })
    .await
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/offenders", get(offenders))
        .route("/api/status", get(status))
        .route("/api/cardinality", get(cardinality))
        .route("/api/tap", get(tap))
        .route("/api/series", get(series))
        .route("/api/config", get(config_table))
        .route("/ui", get(ui))
        .route("/-/reload", axum::routing::post(reload))
        .route("/", get(index))
        .layer(axum::middleware::from_fn_with_state(shared.clone(), host_check))
        .with_state(shared)
}

/// The DNS-rebinding guard. A web page whose name an attacker points at this host's address
/// is "same origin" to the browser: it could read every page and send `POST /-/reload` with
/// any header. Its requests carry that name in `Host`, so a browser's request (one with
/// `Origin` or `Sec-Fetch-Site`, which browsers send and scrapers and `curl` do not) and every
/// reload must name this host: an IP address, `localhost`, this host's name, or one of
/// `[http] hosts`. Others get 421.
async fn host_check(
    State(shared): State<Arc<Shared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let headers = request.headers();
    let from_browser = headers.contains_key(header::ORIGIN) || headers.contains_key("sec-fetch-site");
    let is_reload = request.uri().path() == "/-/reload";
    if from_browser || is_reload {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
        let allowed = shared.config.read().http.hosts.clone();
        if !host_allowed(host, &allowed) {
            return (
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "Host `{host}` is not a name of this host (a page's DNS name rebound here?); \
                     reach it by IP address or localhost, or add the name to [http] hosts\n"
                ),
            )
                .into_response();
        }
    }
    next.run(request).await
}

/// Whether `Host` (`name[:port]`) names this host: an IP address, `localhost`, this host's
/// name, or one of `allowed`.
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = match host.strip_prefix('[') {
        // [v6]:port
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host
            .rsplit_once(':')
            .map_or(host, |(n, port)| if port.bytes().all(|b| b.is_ascii_digit()) { n } else { host }),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    !name.is_empty()
        && (name.parse::<std::net::IpAddr>().is_ok()
            || name == "localhost"
            || name == crate::sys::host_name().to_ascii_lowercase()
            || allowed.iter().any(|a| a.trim_end_matches('.').eq_ignore_ascii_case(&name)))
}

async fn healthz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    if !shared.ready.load(Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    } else if !shared.health_up.load(Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "down\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}

/// `/metrics`; `/metrics?only=floodgate` leaves out the StatsD series (cheap with many series).
/// Text, or the protobuf format when the scraper asks for it (native histograms need it). The
/// full page is rendered once for the requests that arrive while it is alive
/// ([`SharedResponses`](crate::net::shared_response::SharedResponses)): unread responses hold
/// a few renderings, not one each.
async fn metrics(State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap) -> impl IntoResponse {
    use crate::metrics::protobuf;
    use crate::net::shared_response::ResponseKind;
    let asked = std::time::Instant::now();
    let self_only = uri.query().is_some_and(|q| q.split('&').any(|p| p == "only=floodgate"));
    let proto = headers.get_all(header::ACCEPT).iter().any(|v| v.to_str().is_ok_and(protobuf::accepted));
    let content_type = if proto { protobuf::CONTENT_TYPE } else { "text/plain; version=0.0.4; charset=utf-8" };
    let body = tokio::task::spawn_blocking(move || {
        let render = || {
            let families = shared.metrics.collect();
            // Every line received before the scrape: the receive shards are merged in first (as
            // the console's `counters` does). The per-interval values Graphite gets are unchanged.
            let store = (!self_only).then(|| {
                let mut store = shared.aggregation.store.lock();
                shared.aggregation.merge_shards(&mut store);
                store
            });
            if proto {
                let mut out = protobuf::Protobuf::default();
                out.add_families(&families);
                if let Some(store) = &store {
                    shared.naming.expose(store, &mut out);
                }
                drop(store);
                out.encode()
            } else {
                let mut out = String::with_capacity(64 * 1024);
                crate::metrics::prometheus::render(&families, &mut out);
                if let Some(store) = &store {
                    shared.naming.render(store, &mut out);
                }
                out.into_bytes()
            }
        };
        if self_only {
            // floodgate's own figures: small, rendered for each request.
            return Some(Arc::new(render()));
        }
        let kind = if proto { ResponseKind::MetricsProtobuf } else { ResponseKind::MetricsText };
        shared.responses.get(kind, asked, render)
    })
    .await
    .ok()
    .flatten();
    shared_body(body, content_type)
}

/// A rendering shared with other responses, as bytes for a body.
struct SharedBytes(Arc<Vec<u8>>);

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// How much of a shared rendering a response hands hyper at once.
const BODY_SLICE: usize = 64 << 10;

/// A shared rendering sent in [`BODY_SLICE`] slices. hyper copies what it writes into its own
/// buffer (a connection here has no vectored writes), so handed the page whole it would keep
/// a copy per connection; a slice at a time, a connection holds one slice of it.
struct SlicedBody(bytes::Bytes);

impl http_body::Body for SlicedBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        if self.0.is_empty() {
            return std::task::Poll::Ready(None);
        }
        let n = self.0.len().min(BODY_SLICE);
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(self.0.split_to(n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.0.len() as u64)
    }
}

/// A shared rendering as a response body, or 503 when too many are held unread.
fn shared_body(body: Option<Arc<Vec<u8>>>, content_type: &'static str) -> axum::response::Response {
    match body {
        Some(body) => {
            let body = axum::body::Body::new(SlicedBody(bytes::Bytes::from_owner(SharedBytes(body))));
            ([(header::CONTENT_TYPE, content_type)], body).into_response()
        }
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "busy: too many large responses are held by clients that do not read them; try again\n",
        )
            .into_response(),
    }
}

/// `/offenders[?limit=N]`: the guard's table size and the sources that dropped most (100 by
/// default, at most 10,000), JSON; shared as `/metrics` is.
async fn offenders(State(shared): State<Arc<Shared>>, uri: Uri) -> impl IntoResponse {
    use crate::net::shared_response::ResponseKind;
    let asked = std::time::Instant::now();
    let limit = uri
        .query()
        .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("limit=")))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(100)
        .min(10_000);
    let body = tokio::task::spawn_blocking(move || {
        shared.responses.get(ResponseKind::Offenders(limit), asked, || {
            let mut report = serde_json::to_value(shared.guard.report(limit)).unwrap_or_default();
            if let Some(o) = report.as_object_mut() {
                o.insert("series".into(), series_offenders(&shared, limit));
            }
            serde_json::to_vec_pretty(&report).unwrap_or_else(|_| b"{}".to_vec())
        })
    })
    .await
    .ok()
    .flatten();
    shared_body(body, "application/json")
}

/// Senders whose series' name prefixes `/offenders` lists.
const PREFIXES_FOR: usize = 20;

/// `/offenders`' `series`: the senders holding the most StatsD series, and what their series
/// budgets refused, with the budgets (`[limits] series_per_source`).
fn series_offenders(shared: &Shared, limit: usize) -> serde_json::Value {
    let budgets = &shared.aggregation.budgets;
    let limits = budgets.limits();
    let top = budgets.top(limit);
    // The name prefixes of the series the first few hold: what an operator looks for (an id in
    // a name shows as one prefix with many series).
    let shown: Vec<floodgate_statsd::budget::Sender> = top.iter().take(PREFIXES_FOR).map(|(s, _)| *s).collect();
    let prefixes = {
        // Merged first: a series is charged when a receive thread meets it, and its owner is
        // known to the store from the next merge.
        let mut store = shared.aggregation.store.lock();
        shared.aggregation.merge_shards(&mut store);
        store.top_prefixes_by_sender(&shown, 5)
    };
    let senders: Vec<serde_json::Value> = top
        .into_iter()
        .enumerate()
        .map(|(i, (sender, s))| {
            let top_prefixes: Vec<serde_json::Value> = prefixes
                .get(i)
                .into_iter()
                .flatten()
                .map(|(prefix, n)| serde_json::json!({ "prefix": prefix, "series": n }))
                .collect();
            serde_json::json!({
                "sender": budgets.describe(sender),
                "top_prefixes": top_prefixes,
                "live_series": s.live,
                "new_series_this_minute": s.new_this_minute,
                "refused": s.refused,
                "over_budget": limits.reached(&s),
            })
        })
        .collect();
    serde_json::json!({
        "series_per_source": limits.series_per_sender,
        "new_series_per_source": limits.new_series_per_minute,
        "overflow": if limits.fold { "fold" } else { "drop" },
        "senders": senders,
    })
}

/// `/api/cardinality[?limit=N]`: the metric names and prefixes with the most live series and
/// the most new series in the last minute, each new-series row with its top senders, and the
/// senders with the most series (JSON; 20 rows by default, at most 256).
async fn cardinality(State(shared): State<Arc<Shared>>, uri: Uri) -> impl IntoResponse {
    let limit = uri
        .query()
        .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("limit=")))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(20)
        .min(floodgate_statsd::cardinality::TOP_KEYS);
    use crate::net::shared_response::ResponseKind;
    let asked = std::time::Instant::now();
    // Shared as /metrics is: concurrent askers get one rendering, and the walk of every series
    // under the store's lock is done once for them all.
    let body = tokio::task::spawn_blocking(move || {
        shared.responses.get(ResponseKind::Cardinality(limit), asked, || cardinality_json(&shared, limit))
    })
    .await
    .ok()
    .flatten();
    shared_body(body, "application/json")
}

/// `/api/cardinality`'s body. The store's lock is held for one walk of its keys and the copy
/// of the attribution's rows, not for the rendering.
fn cardinality_json(shared: &Shared, limit: usize) -> Vec<u8> {
    use floodgate_statsd::cardinality::{top_live, Heavy};
    let rows = |rows: Vec<Heavy>| -> serde_json::Value {
        rows.into_iter()
            .map(|h| {
                let senders: Vec<serde_json::Value> =
                    h.senders.into_iter().map(|(s, n)| serde_json::json!({ "sender": s, "series": n })).collect();
                serde_json::json!({ "name": h.name, "series": h.series, "error": h.error, "senders": senders })
            })
            .collect()
    };
    let (series, (live_names, live_prefixes), new_names, new_prefixes) = {
        let store = shared.aggregation.store.lock();
        let a = store.attribution();
        (store.series(), top_live(store.keys(), limit), a.top_new(limit, false), a.top_new(limit, true))
    };
    let value = serde_json::json!({
        "live_series": series,
        "by_live_series": { "names": rows(live_names), "prefixes": rows(live_prefixes) },
        "by_new_series_a_minute": { "names": rows(new_names), "prefixes": rows(new_prefixes) },
        "senders": series_offenders(shared, limit)["senders"].clone(),
    });
    serde_json::to_vec_pretty(&value).unwrap_or_else(|_| b"{}".to_vec())
}

/// `GET /api/series?match=GLOB&limit=N`: the series browser (see [`browse::series_json`]).
async fn series(
    State(shared): State<Arc<Shared>>,
    query: axum::extract::Query<SeriesQuery>,
) -> axum::response::Response {
    // One walk of every series at a time (it holds the store's lock while it looks): a client
    // asking over and over cannot keep the flusher waiting; the others are told to come back.
    static WALKING: parking_lot::Mutex<()> = parking_lot::const_mutex(());
    let SeriesQuery { r#match, limit } = query.0;
    let body = tokio::task::spawn_blocking(move || {
        let _walk = WALKING.try_lock()?;
        Some(browse::series_json(&shared, &r#match, limit.unwrap_or(100)))
    })
    .await
    .ok()
    .flatten();
    match body {
        Some(Ok(body)) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Some(Err(e)) => (StatusCode::BAD_REQUEST, format!("match: {e}\n")).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "busy: another series search is running; try again\n",
        )
            .into_response(),
    }
}

/// The query of `/api/series`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct SeriesQuery {
    r#match: String,
    limit: Option<usize>,
}

/// `GET /api/config`: the configuration in force, key by key, with the defaults and what
/// differs (secrets redacted).
async fn config_table(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let body = browse::config_json(&shared.config.read());
    ([(header::CONTENT_TYPE, "application/json")], body)
}

/// The address a request came from (the `/api/tap` allow-list checks it).
#[derive(Debug, Clone, Copy)]
struct ClientAddress(Option<std::net::IpAddr>);

/// `GET /api/tap[?listener=&source=&name=&rate=]`: the lines and records arriving, live, as
/// server-sent events; only for `[http] tap_from`.
async fn tap(
    State(shared): State<Arc<Shared>>,
    client: Option<axum::Extension<ClientAddress>>,
    query: axum::extract::Query<crate::tap::sse::TapQuery>,
) -> axum::response::Response {
    let peer = client.and_then(|c| c.0 .0);
    let (tap_from, viewers) = {
        let config = shared.config.read();
        (config.http.tap_from.clone(), config.http.tap_viewers)
    };
    crate::tap::sse::respond(peer, query.0, &tap_from, viewers)
}

async fn index() -> impl IntoResponse {
    "floodgate: /ui (live page), /metrics (Prometheus), /healthz, /offenders (JSON), /api/status (JSON), /api/cardinality (JSON), /api/tap (live lines, server-sent events), /api/series, /api/config\n"
}

/// `/api/status`: what `/ui` shows, as JSON (totals since start; rates are for the client);
/// shared as `/metrics` is.
async fn status(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let asked = std::time::Instant::now();
    let body = tokio::task::spawn_blocking(move || {
        let render = || status_json(&shared).into_bytes();
        shared.responses.get(crate::net::shared_response::ResponseKind::Status, asked, render)
    })
    .await
    .ok()
    .flatten();
    shared_body(body, "application/json")
}

/// `/api/status`'s JSON.
fn status_json(shared: &Shared) -> String {
    {
        let mut v = status_counters(shared);
        let config = shared.config.read();
        v["version"] = env!("CARGO_PKG_VERSION").into();
        v["uptime_seconds"] = (crate::clock::unix_now() - shared.started_unix).max(0).into();
        v["ready"] = shared.ready.load(Relaxed).into();
        let redacted_url = |u: &String| crate::config::redact_url(u);
        let mut shown = serde_json::json!({
            "statsd": {"udp": config.statsd.udp, "tcp": config.statsd.tcp, "tls": config.statsd.tls_listen,
                       "flush_interval": humantime::format_duration(config.statsd.flush_interval).to_string()},
            "syslog": {"udp": config.syslog.udp, "tcp": config.syslog.tcp,
                       "tls": config.syslog.tls.iter().map(|t| t.listen).collect::<Vec<_>>(), "output": config.syslog.output},
            "graphite": match (&config.graphite.address, &config.graphite.destinations) {
                (Some(address), _) => serde_json::json!(address),
                (None, cluster) if !cluster.is_empty() => serde_json::json!({"destinations": cluster,
                    "hashing": config.graphite.hashing, "replication": config.graphite.replication}),
                _ => serde_json::Value::Null,
            },
            "forward": config.forward.as_ref().map(|f| &f.aggregators),
            "aggregator": config.aggregator.as_ref().map(|a| a.listen),
            "remote_write": config.prometheus_remote_write.as_ref().map(|r| redacted_url(&r.url)),
            "limits": config.limits,
            "conntrack": config.conntrack.enabled != crate::config::Enabled::Off,
        });
        // Secrets (an output's token, a password in a URL) never leave.
        crate::config::redact_json(&mut shown);
        v["config"] = shown;
        serde_json::to_string(&v).unwrap_or_else(|_| "{}".into())
    }
}

/// The header `POST /-/reload` must carry. A cross-site form or `fetch` without CORS cannot
/// set a custom header (it would need a preflight, which floodgate never answers), so a web
/// page a user happens to open cannot reload floodgate.
pub const RELOAD_HEADER: &str = "x-floodgate-reload";

/// `POST /-/reload`: re-read the config as SIGHUP does (only with `[http] reload = true`, and
/// with an `X-Floodgate-Reload` header); 200 when the new config is in force, 400 with the
/// reason when it was refused.
async fn reload(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> impl IntoResponse {
    if !shared.config.read().http.reload {
        return (StatusCode::FORBIDDEN, "reload over HTTP is off ([http] reload = true turns it on)\n".to_string());
    }
    if !headers.contains_key(RELOAD_HEADER) {
        return (
            StatusCode::FORBIDDEN,
            "POST /-/reload needs an `X-Floodgate-Reload: 1` header (a web page cannot send one)\n".to_string(),
        );
    }
    let (reply, outcome) = tokio::sync::oneshot::channel();
    if shared.reload_requests.send(reply).is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".to_string());
    }
    match outcome.await {
        Ok(Ok(())) => (StatusCode::OK, "reloaded\n".to_string()),
        Ok(Err(e)) => (StatusCode::BAD_REQUEST, format!("config refused; the running one stays: {e}\n")),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".to_string()),
    }
}

/// `/ui`: one self-contained page (no external assets) that polls `/api/status`.
async fn ui() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], include_str!("ui.html"))
}

/// The counter sections of `/api/status` (one per reporting component) and its record
/// sections (the guard's offenders, conntrack's top hosts). Lists that are empty when their
/// component is off (`sinks`, `forward`) are still there.
fn status_counters(shared: &Shared) -> serde_json::Value {
    let mut v = crate::metrics::status::render(&shared.metrics.collect());
    for (section, value) in shared.metrics.status_records() {
        v.insert(section.to_string(), value);
    }
    for list in ["listeners", "sinks", "forward"] {
        v.entry(list).or_insert_with(|| serde_json::Value::Array(Vec::new()));
    }
    serde_json::Value::Object(v)
}

#[cfg(test)]
mod host_tests {
    use super::host_allowed;

    #[test]
    fn only_names_of_this_host_are_allowed() {
        let allowed = vec!["metrics.example.com".to_string()];
        for ok in
            ["127.0.0.1:9318", "[::1]:9318", "10.0.0.5", "localhost:9318", "LOCALHOST", "metrics.example.com:9318"]
        {
            assert!(host_allowed(ok, &allowed), "{ok}");
        }
        for refused in ["evil.example:9318", "", "127.0.0.1.evil.example", "localhost.evil.example:9318"] {
            assert!(!host_allowed(refused, &allowed), "{refused}");
        }
    }
}
