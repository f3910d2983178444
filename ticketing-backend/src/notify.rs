//! Notifications: per-user events (reservations, payments, coupons, tickets) streamed over
//! SSE at `GET /api/v1/me/notifications/stream`, fanned out across backend instances through
//! Redis pub/sub (`tb:events`; in process without Redis), and ops events posted to a
//! Slack-compatible webhook (`TB_OPS_WEBHOOK_URL`, `{"text": …}`), best effort.
//!
//! A user holds at most `notify_streams_per_user` streams open on one instance; the next is
//! a `429 too_many_streams`, and a slot frees when its stream's body is dropped (the client
//! went away or the server stops). The count is per instance even with Redis: what a stream
//! costs (a socket, a task, a broadcast receiver) is the instance's, so that is where the cap
//! protects, and a count shared in Redis would leak the slots of an instance that died and
//! lock its users out. Behind N instances a user may so hold N times the cap.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::error::ApiError;
use crate::state::AppState;

const CHANNEL: &str = "tb:events";

/// One event for one user.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// Whose.
    pub user_id: i64,
    /// `reservation.held`, `payment.paid`, `coupon.issued`, `ticket.issued`, …
    pub kind: String,
    /// Details.
    pub data: Value,
    /// When (Unix ms).
    pub at: i64,
}

/// Publishes events to every instance and hands them to local streams.
pub struct Notifier {
    local: broadcast::Sender<Arc<Event>>,
    redis: Option<redis::aio::ConnectionManager>,
    webhook: Option<(String, Client<HttpConnector, Full<Bytes>>)>,
    listener: Option<tokio::task::JoinHandle<()>>,
    streams: Arc<Streams>,
}

/// Open streams per user on this instance.
#[derive(Debug)]
struct Streams {
    per_user: usize,
    open: Mutex<HashMap<i64, usize>>,
}

/// One open stream's place in its user's count; dropping it frees the place.
#[derive(Debug)]
pub struct StreamSlot {
    streams: Arc<Streams>,
    user: i64,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.streams.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                // Users who closed everything take no memory.
                open.remove(&self.user);
            }
        }
    }
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("redis", &self.redis.is_some())
            .field("webhook", &self.webhook.is_some())
            .finish()
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        if let Some(l) = &self.listener {
            l.abort();
        }
    }
}

impl Notifier {
    /// In process, or through Redis pub/sub when `redis_url` is given.
    pub async fn new(redis_url: Option<&str>, webhook: Option<String>) -> redis::RedisResult<Self> {
        let (local, _) = broadcast::channel(4096);
        let (redis, listener) = match redis_url {
            Some(url) => {
                let client = redis::Client::open(url)?;
                let conn = client.get_connection_manager().await?;
                (Some(conn), Some(tokio::spawn(listen(client, local.clone()))))
            }
            None => (None, None),
        };
        let webhook = webhook.map(|u| (u, Client::builder(TokioExecutor::new()).build_http()));
        let streams = Arc::new(Streams { per_user: 5, open: Mutex::default() });
        Ok(Notifier { local, redis, webhook, listener, streams })
    }

    /// At most `n` (≥ 1) open streams per user on this instance (5 unless set).
    pub fn with_streams_per_user(mut self, n: u32) -> Self {
        self.streams = Arc::new(Streams { per_user: n.max(1) as usize, open: Mutex::default() });
        self
    }

    /// A place for one more stream of `user`, if the user has one left.
    pub fn open_stream(&self, user: i64) -> Option<StreamSlot> {
        let mut open = self.streams.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(user).or_default();
        if *n >= self.streams.per_user {
            return None;
        }
        *n += 1;
        Some(StreamSlot { streams: self.streams.clone(), user })
    }

    /// Sends `kind` with `data` to `user`'s streams on every instance. Best effort: a lost
    /// notification loses nothing the API does not also answer.
    pub async fn publish(&self, user: i64, kind: &str, data: Value) {
        let ev = Event { user_id: user, kind: kind.to_owned(), data, at: crate::db::now_ms() };
        match &self.redis {
            Some(c) => {
                let payload = serde_json::to_string(&ev).unwrap_or_default();
                let sent: redis::RedisResult<i64> =
                    redis::cmd("PUBLISH").arg(CHANNEL).arg(payload).query_async(&mut c.clone()).await;
                if let Err(e) = sent {
                    tracing::warn!(error = %e, "publishing a notification failed");
                }
            }
            None => {
                let _ = self.local.send(Arc::new(ev));
            }
        }
    }

    /// Local events, for one stream.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.local.subscribe()
    }

    /// Posts `text` to the ops webhook, if one is configured (in the background).
    pub fn ops(&self, text: String) {
        let Some((url, client)) = &self.webhook else { return };
        let (url, client) = (url.clone(), client.clone());
        tokio::spawn(async move {
            let req = axum::http::Request::post(&url)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(json!({ "text": text }).to_string())));
            let Ok(req) = req else { return };
            match tokio::time::timeout(Duration::from_secs(5), client.request(req)).await {
                Ok(Ok(r)) if r.status().is_success() => {}
                Ok(Ok(r)) => tracing::warn!(status = %r.status(), "the ops webhook refused a message"),
                Ok(Err(e)) => tracing::warn!(error = %e, "the ops webhook is unreachable"),
                Err(_) => tracing::warn!("the ops webhook timed out"),
            }
        });
    }
}

async fn listen(client: redis::Client, tx: broadcast::Sender<Arc<Event>>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match client.get_async_pubsub().await {
            Ok(mut ps) => {
                if ps.subscribe(CHANNEL).await.is_ok() {
                    backoff = Duration::from_millis(100);
                    let mut msgs = ps.into_on_message();
                    while let Some(m) = msgs.next().await {
                        if let Ok(ev) = serde_json::from_slice::<Event>(m.get_payload_bytes()) {
                            let _ = tx.send(Arc::new(ev));
                        }
                    }
                }
                tracing::warn!("notification subscription ended; reconnecting");
            }
            Err(e) => tracing::warn!(error = %e, "notification subscription failed"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// `?access_token=` for `EventSource`, which cannot send an `Authorization` header.
#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    access_token: Option<String>,
}

/// `GET /api/v1/me/notifications/stream`: the caller's events as SSE (`event: <kind>`,
/// `data: {…}`), heartbeats every 15 s; `429 too_many_streams` past the per-user cap.
pub async fn stream(
    State(s): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let mut headers = headers;
    if let Ok(Query(StreamQuery { access_token: Some(t) })) = q
        && !headers.contains_key(header::AUTHORIZATION)
        && let Ok(v) = format!("Bearer {t}").parse()
    {
        headers.insert(header::AUTHORIZATION, v);
    }
    let user = match s.auth.user_of(&headers) {
        Some(u) => u,
        None => return ApiError::unauthorized("a user token is required").into_response(),
    };
    let Some(slot) = s.notifier.open_stream(user.id) else {
        let n = s.notifier.streams.per_user;
        let message = format!("at most {n} notification streams per user; close one first");
        return ApiError::client(StatusCode::TOO_MANY_REQUESTS, "too_many_streams", message).into_response();
    };
    let rx = s.notifier.subscribe();
    let events = tokio_stream_of(rx).filter_map(move |ev| async move {
        (ev.user_id == user.id).then(|| {
            Ok::<_, Infallible>(
                SseEvent::default()
                    .event(ev.kind.clone())
                    .data(json!({"data": ev.data, "at": ev.at}).to_string()),
            )
        })
    });
    let hello = futures_util::stream::once(async { Ok(SseEvent::default().event("ready").data("{}")) });
    // The slot lives as long as the body: hyper drops the body when the client goes.
    let body = hello.chain(events).map(move |e| {
        let _held = &slot;
        e
    });
    Sse::new(body).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response()
}

fn tokio_stream_of(rx: broadcast::Receiver<Arc<Event>>) -> impl futures_util::Stream<Item = Arc<Event>> {
    futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(ev) => return Some((ev, rx)),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(skipped = n, "a notification stream fell behind")
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}
