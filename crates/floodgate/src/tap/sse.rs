//! `GET /api/tap`: a viewer's events as server-sent events (what `floodgate tap` and `/ui`
//! read). Each event is `event: line` with the [`Event`](super::Event) as JSON; once a second
//! an `event: stats` says what the viewer was sent, what its rate skipped and what it missed by
//! reading slowly (which also keeps proxies from closing a quiet stream).

use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use serde::Deserialize;

use super::{Event, Filter, Subscription, TAP};

/// Bytes of events put in one body frame at most.
const FRAME: usize = 32 << 10;

/// The query of `GET /api/tap`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct TapQuery {
    /// `statsd`, `syslog`, or one listener kind (`statsd_udp`).
    pub listener: Option<String>,
    /// An address, a CIDR block, or `uid:N`.
    pub source: Option<String>,
    /// A glob on the metric name (StatsD) or program (syslog).
    pub name: Option<String>,
    /// Events a second (default 100, at most [`super::MAX_RATE`]).
    pub rate: Option<u32>,
}

/// The response to `GET /api/tap` from `peer`: the stream, or why not. `tap_from` and
/// `max_viewers` are `[http]`'s.
pub fn respond(
    peer: Option<std::net::IpAddr>,
    query: TapQuery,
    tap_from: &[String],
    max_viewers: usize,
) -> axum::response::Response {
    let allowed = floodgate_guard::AllowList::parse(tap_from).unwrap_or_default();
    let permitted = !tap_from.is_empty() && peer.is_some_and(|ip| allowed.allows(ip));
    if !permitted {
        let who = peer.map_or("this client".to_string(), |p| p.to_string());
        return (StatusCode::FORBIDDEN, format!("the tap shows what senders send; {who} is not in [http] tap_from\n"))
            .into_response();
    }
    let filter = match Filter::parse(query.listener.as_deref(), query.source.as_deref(), query.name.as_deref()) {
        Ok(f) => f,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    match TAP.subscribe(filter, query.rate.unwrap_or(100), max_viewers) {
        Ok((subscription, events)) => {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let body = TapBody { subscription, events, tick, started: false };
            (
                [(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")],
                axum::body::Body::new(body),
            )
                .into_response()
        }
        Err(super::TooManyViewers(n)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            format!("{n} viewers already watch ([http] tap_viewers); try again later\n"),
        )
            .into_response(),
    }
}

/// The event stream of one viewer; dropping it (the client went) removes the viewer.
struct TapBody {
    subscription: Subscription,
    events: tokio::sync::mpsc::Receiver<Event>,
    tick: tokio::time::Interval,
    started: bool,
}

impl http_body::Body for TapBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let mut out = Vec::new();
        if !self.started {
            self.started = true;
            // The stream is open: a client sees it before the first line arrives.
            out.extend_from_slice(b": floodgate tap\nretry: 2000\n\n");
        }
        while out.len() < FRAME {
            match self.events.poll_recv(cx) {
                Poll::Ready(Some(event)) => {
                    out.extend_from_slice(b"event: line\ndata: ");
                    let _ = serde_json::to_writer(&mut out, &event);
                    out.extend_from_slice(b"\n\n");
                }
                // Never: the viewer holds the sender until the subscription goes.
                Poll::Ready(None) => break,
                Poll::Pending => break,
            }
        }
        if self.tick.poll_tick(cx).is_ready() {
            let v = self.subscription.viewer();
            let stats = serde_json::json!({
                "sent": v.sent.load(Relaxed),
                "skipped": v.skipped.load(Relaxed),
                "missed": v.missed.load(Relaxed),
            });
            out.extend_from_slice(format!("event: stats\ndata: {stats}\n\n").as_bytes());
        }
        if out.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(Some(Ok(http_body::Frame::data(out.into()))))
        }
    }
}
