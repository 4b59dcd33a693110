//! HTTP: `/healthz` (200 once every listener is bound and health is up, 503 otherwise) and
//! `/metrics` (floodgate's self-metrics and the aggregated StatsD series, Prometheus text).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::app::Shared;

/// Serves until aborted.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/offenders", get(offenders))
        .route("/", get(index))
        .with_state(shared);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "http server stopped");
    }
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
async fn metrics(State(shared): State<Arc<Shared>>, uri: Uri) -> impl IntoResponse {
    let self_only = uri.query().is_some_and(|q| q.split('&').any(|p| p == "only=floodgate"));
    let text = tokio::task::spawn_blocking(move || {
        let mut out = String::with_capacity(64 * 1024);
        shared.telemetry.render(&mut out);
        if !self_only {
            let store = shared.store.lock();
            floodgate_statsd::prometheus::render(&store, &mut out);
        }
        out
    })
    .await
    .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text)
}

/// `/offenders[?limit=N]`: the guard's table size and the sources that dropped most (100 by
/// default, at most 10,000), JSON.
async fn offenders(State(shared): State<Arc<Shared>>, uri: Uri) -> impl IntoResponse {
    let limit = uri
        .query()
        .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("limit=")))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(100)
        .min(10_000);
    let body = tokio::task::spawn_blocking(move || serde_json::to_string_pretty(&shared.guard.report(limit)))
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or_else(|| "{}".into());
    ([(header::CONTENT_TYPE, "application/json")], body)
}

async fn index() -> impl IntoResponse {
    "floodgate: /metrics (Prometheus), /healthz, /offenders (JSON)\n"
}
