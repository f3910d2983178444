//! `queue-gateway`: the waiting room's HTTP front door.
//!
//! It serves the waiting-room API, the waiting page and its live stream, signs admission
//! tokens, and forwards everything else to the backend, but only admitted traffic under a
//! room's protected prefixes. Any number of gateways can run against one Redis: they share no
//! state but the store, tick every room (ticks are idempotent) and follow config changes
//! within a second.
//!
//! # Layout (in the order a request meets them)
//! - [`server`]: connections (HTTP/1.1, h2c), limits, timeouts, graceful shutdown;
//!   [`h1`]: HTTP/1.1 requests of the common shape read and answered by the gateway's own
//!   loop (hyper takes a connection at its first request of any other shape);
//!   [`h1_stream`]: event streams on their own HTTP/1.1 connections.
//! - [`screen`]: what every request passes first on every path (refused methods,
//!   `Connection` naming end-to-end headers, underscored header names, the canonical path).
//! - [`admission`]: ticket cookies, user JWTs, admission-token checks on protected paths.
//! - [`rate_limit`]: per-IP and per-user token buckets (governor).
//! - [`room`]: join, status, leave, room state ([`polls`] coalesces status reads); [`sse`]:
//!   live updates; [`page`]: the waiting page.
//! - [`gate`]: the overload gate (in-flight limits, hold, log and replay) on gated routes.
//! - [`proxy`]: protection and the reverse proxy to the backend; [`relay`]: admitted
//!   requests forwarded byte for byte from [`h1`]; [`upstream`]: kept-alive backend
//!   connections.
//! - [`admin`]: the admin API; [`console`]: the ops console page at `/admin/`; [`metrics`]: Prometheus; [`rooms`]: live configs and tickers.
//! - [`touch`]: batched "seen" marks.
//! - [`config`], [`error`], [`state`], [`demo`] (built-in demo upstream), [`capacity`] (a
//!   fixed-capacity upstream for overload drills and the gate benchmark), `fuzzing` (hidden:
//!   the entry points of the fuzz targets in `queue-gateway/fuzz`).
#![forbid(unsafe_code)]

pub mod api;
pub mod background;
pub mod config;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod state;
pub mod transport;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use queue_core::gate::{GateLog, GateSecret, MemoryGateLog};
use queue_core::token::{KeySet, SigningKey};
use queue_core::{MemoryStore, RedisStore, Store};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::{Service, ServiceExt};

use crate::api::sse::Hub;
use crate::api::{admin, console, page, polls, room, sse};
use crate::background::rooms::RoomCache;
use crate::background::{rooms, touch};
use crate::config::GatewayConfig;
use crate::metrics::Metrics;
use crate::pipeline::forward as proxy;
use crate::pipeline::forward::Upstream;
use crate::policy::admission::{self, CookieKey, UserAuth};
use crate::policy::rate_limit::Limiters;
use crate::policy::{gate, rate_limit};
use crate::state::App;
use crate::transport as server;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] error::ConfigError),
    /// The store could not be reached.
    #[error("store: {0}")]
    Store(#[from] queue_core::Error),
    /// A socket could not be bound.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// Builds the shared state: store, keys, rooms from the config, upstream. Background work
/// that in-flight requests need (the poll coalescer) runs until `drained` turns true.
pub async fn build(
    cfg: GatewayConfig,
    shutdown: watch::Receiver<bool>,
    drained: watch::Receiver<bool>,
) -> Result<Arc<App>, StartError> {
    let (store, gate_log): (Arc<dyn Store>, Arc<dyn GateLog>) = match &cfg.redis_url {
        Some(urls) => {
            let redis = RedisStore::connect(urls).await?;
            let log = Arc::new(redis.gate_log().await?);
            (Arc::new(redis), log)
        }
        None => (Arc::new(MemoryStore::new()), Arc::new(MemoryGateLog::new())),
    };
    let signing = match &cfg.signing_key {
        Some(k) => SigningKey::parse(k).map_err(|e| error::ConfigError::new("signing_key", e.to_string()))?,
        None => {
            let k = SigningKey::generate().map_err(|e| StartError::Other(e.to_string()))?;
            tracing::warn!(
                kid = k.kid(),
                "no WR_SIGNING_KEY: generated a signing key; tokens die with this process and other gateways cannot verify them"
            );
            k
        }
    };
    let cookies = CookieKey::new(&signing.derive_secret("wr-ticket-cookie-v1"));
    let gate_secret = match &cfg.gate_secret {
        Some(s) => GateSecret::new(s.as_bytes()),
        None => GateSecret::new(&signing.derive_secret("wr-gate-replay-v1")),
    };
    let mut keys = KeySet::new(cfg.issuer.clone(), signing);
    for k in &cfg.previous_signing_keys {
        let old = SigningKey::parse(k)
            .map_err(|e| error::ConfigError::new("previous_signing_keys", e.to_string()))?;
        keys.add_verify_key(old.public_key());
    }
    for (room, rcfg) in cfg.rooms()? {
        store.put_room(&room, &rcfg).await?;
        tracing::info!(room = %room, "room from config file");
    }
    for (gate, gcfg) in cfg.gates()? {
        gate_log.put_gate(&gate, &gcfg).await?;
        tracing::info!(gate = %gate, "gate from config file");
    }
    let upstream_url = cfg.upstream.clone().ok_or_else(|| error::ConfigError::new("upstream", "required"))?;
    let workers = cfg.limits.worker_threads();
    let upstream = Upstream::new(
        &upstream_url,
        Duration::from_millis(cfg.limits.upstream_timeout_ms),
        cfg.limits.max_body_bytes,
        workers,
    )
    .map_err(|e| StartError::Other(e.to_string()))?;
    let polls_store = store.clone();
    let app = Arc::new(App {
        users: UserAuth::new(cfg.user_jwt_secret.as_deref()),
        limiters: Arc::new(Limiters::new(&cfg.rate_limits)),
        cfg,
        store,
        keys,
        admitted: admission::AdmittedCache::default(),
        revoked: admission::Revoked::default(),
        cookies,
        rooms: RoomCache::default(),
        metrics: Metrics::new(),
        hub: Arc::new(Hub::default()),
        polls: polls::Polls::start(polls_store, workers, drained),
        touches: Arc::new(touch::Touches::default()),
        upstream,
        gate_log,
        gate_secret,
        gates: gate::Gates::default(),
        instance: format!("gw-{}-{:08x}", std::process::id(), rand::random::<u32>()),
        shutdown,
    });
    rooms::reload(&app).await?;
    gate::refresh(&app).await?;
    Ok(app)
}

/// The whole gateway as one service. In order: request metrics → proxied paths (all but the
/// gateway's own routes, and on a busy gateway nearly all requests) straight to the
/// protection check and proxy, status polls straight to their handler, the rest through the
/// router → (per route) body limit → handler. Rate limits and admission checks run inside
/// the handlers that need them.
pub fn service(
    app: Arc<App>,
) -> impl Service<Request, Response = Response, Error = Infallible, Future: Send + 'static> + Clone + Send + 'static
{
    let router = router(app.clone());
    tower::service_fn(move |req: Request| {
        let (app, router) = (app.clone(), router.clone());
        async move {
            let started = Instant::now();
            let (index, segs) = route(req.uri().path());
            let poll = plain_poll(req.method(), index, &segs);
            // The proxy's and the router's futures are boxed: inline, they made every
            // request's future 3.5 KiB, an allocation too large for malloc's per-thread
            // cache (and one that consolidates its free lists) even for a status poll.
            let resp = if index == PROXIED_ROUTE {
                Box::pin(proxy::handle(State(app.clone()), req)).await
            } else if let Some(ids) = poll {
                room::status_past_router(&app, req, ids).await
            } else {
                Box::pin(router.oneshot(req)).await.unwrap_or_else(|never| match never {})
            };
            let code = resp.status().as_u16();
            app.metrics.request_done(index, ROUTES[index], code, started.elapsed().as_secs_f64());
            Ok(resp)
        }
    })
}

/// The router of the gateway's own routes; anything else falls back to the proxy.
pub fn router(app: Arc<App>) -> Router {
    let api = Router::new()
        .route("/api/v1/rooms/{room}/tickets", post(room::join))
        .route("/api/v1/rooms/{room}/tickets/{ticket}", get(room::status).delete(room::leave))
        .route("/api/v1/rooms/{room}/tickets/{ticket}/events", get(sse::events))
        .route("/api/v1/rooms/{room}", get(room::room_state))
        .route("/rooms/{room}", get(page::page))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/admin/", get(console::page))
        .route("/admin/v1/rooms", get(admin::list))
        .route("/admin/v1/rooms/{room}", get(admin::get).put(admin::put).delete(admin::delete))
        .route("/admin/v1/rooms/{room}/pause", post(admin::pause))
        .route("/admin/v1/rooms/{room}/resume", post(admin::resume))
        .route("/admin/v1/rooms/{room}/admit", post(admin::admit))
        .route("/api/v1/gate/{offset}", get(gate::poll))
        .route("/admin/v1/gates", get(admin::list_gates))
        .route("/admin/v1/gates/{gate}", get(admin::get_gate).put(admin::put_gate).delete(admin::delete_gate))
        .layer(DefaultBodyLimit::max(queue_core::config::limits::MAX_BODY_BYTES));
    Router::new()
        .merge(api)
        .fallback(proxy::handle)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app)
}

async fn method_not_allowed() -> Response {
    error::error_body(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this path")
}

/// The route labels of metrics, by the index [`route`] gives.
pub(crate) const ROUTES: [&str; 17] = [
    "proxy",
    "/api/v1/rooms/{room}/tickets",
    "/api/v1/rooms/{room}/tickets/{ticket}",
    "/api/v1/rooms/{room}/tickets/{ticket}/events",
    "/api/v1/rooms/{room}",
    "/rooms/{room}",
    "/.well-known/jwks.json",
    "/metrics",
    "/healthz",
    "/readyz",
    "/admin/v1/rooms",
    "/admin/v1/rooms/{room}",
    "/admin/v1/rooms/{room}/{action}",
    "/api/v1/gate/{offset}",
    "/admin/",
    "/admin/v1/gates",
    "/admin/v1/gates/{gate}",
];
const _: () = assert!(ROUTES.len() <= metrics::MAX_ROUTES);
/// Everything that is not the gateway's own.
pub(crate) const PROXIED_ROUTE: usize = 0;
/// Status polls (GET) and leaves (DELETE).
pub(crate) const STATUS_ROUTE: usize = 2;

/// The route of `path` as an index into [`ROUTES`], and the path's first segments (what a
/// route's handler reads its ids from, so the path is split once).
pub(crate) fn route(path: &str) -> (usize, [&str; 8]) {
    // No allocation, and no `split`: this runs on every request (twice for the gateway's
    // own routes). A `str` searcher per segment, a byte loop and `position` all cost 6 to 15
    // instructions a byte (callgrind), memchr ~45 per `/`; `slash_mask` finds them all in
    // a few instructions per eight bytes.
    let mut segs = [""; 8];
    let mut n = 0;
    let rest = &path[path.bytes().position(|b| b != b'/').unwrap_or(path.len())..];
    let mut start = 0;
    for (c, chunk) in rest.as_bytes().chunks(64).enumerate() {
        let mut mask = slash_mask(chunk);
        while mask != 0 {
            let i = c * 64 + mask.trailing_zeros() as usize;
            mask &= mask - 1;
            if n == segs.len() {
                return (PROXIED_ROUTE, segs);
            }
            segs[n] = &rest[start..i];
            n += 1;
            start = i + 1;
        }
    }
    if n == segs.len() {
        return (PROXIED_ROUTE, segs);
    }
    segs[n] = &rest[start..];
    n += 1;
    let index = match &segs[..n] {
        ["api", "v1", "rooms", _, "tickets"] => 1,
        ["api", "v1", "rooms", _, "tickets", _] => STATUS_ROUTE,
        ["api", "v1", "rooms", _, "tickets", _, "events"] => 3,
        ["api", "v1", "rooms", _] => 4,
        ["rooms", _] => 5,
        [".well-known", "jwks.json"] => 6,
        ["metrics"] => 7,
        ["healthz"] => 8,
        ["readyz"] => 9,
        ["admin", "v1", "rooms"] => 10,
        ["admin", "v1", "rooms", _] => 11,
        ["admin", "v1", "rooms", _, _] => 12,
        ["api", "v1", "gate", _] => 13,
        ["admin", ""] => 14,
        ["admin", "v1", "gates"] => 15,
        ["admin", "v1", "gates", _] => 16,
        _ => PROXIED_ROUTE,
    };
    (index, segs)
}

/// The ids of a status poll that can skip the router ([`room::plain_status_ids`]), given
/// its route.
pub(crate) fn plain_poll(
    method: &axum::http::Method,
    index: usize,
    segs: &[&str; 8],
) -> Option<Result<(queue_core::RoomId, queue_core::TicketId), error::GatewayError>> {
    (index == STATUS_ROUTE).then(|| room::plain_status_ids(method, segs[3], segs[5])).flatten()
}

/// Bit `i` set where `chunk[i]` is `/` (`chunk` at most 64 bytes), found eight bytes at a
/// time in a word (memchr costs ~45 instructions per `/` found on paths this short).
fn slash_mask(chunk: &[u8]) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let mut block = [0u8; 64];
    block[..chunk.len()].copy_from_slice(chunk);
    let mut mask = 0u64;
    for (w, word) in block.chunks_exact(8).take(chunk.len().div_ceil(8)).enumerate() {
        let x = u64::from_le_bytes(word.try_into().unwrap_or_default()) ^ u64::from_le_bytes([b'/'; 8]);
        // The high bit of each byte that is zero (a `/`), exactly: no borrow crosses bytes.
        let zero = !(((x & LOW7) + LOW7) | x | LOW7);
        // Gathers the eight high bits into the top byte, byte j's as bit j.
        let bits = (zero >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56;
        mask |= bits << (8 * w);
    }
    mask
}

async fn jwks(State(app): State<Arc<App>>) -> Response {
    let mut r = axum::Json(app.keys.jwks()).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=60"));
    r
}

async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    let mut r = app.metrics.encode().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    r
}

async fn healthz() -> Response {
    axum::Json(serde_json::json!({"status": "ok"})).into_response()
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    match tokio::time::timeout(Duration::from_secs(2), app.store.ping()).await {
        Ok(Ok(())) => axum::Json(serde_json::json!({"status": "ready"})).into_response(),
        _ => error::error_body(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unreachable",
            "the store does not answer",
        ),
    }
}

/// Runs the gateway on `listener` until `shutdown` resolves, then drains and returns.
pub async fn run(
    listener: TcpListener,
    cfg: GatewayConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    let limits = cfg.limits.clone();
    let (drained_tx, drained) = watch::channel(false);
    let app = build(cfg, rx.clone(), drained).await?;
    let background = [
        tokio::spawn(rooms::config_loop(app.clone(), rx.clone())),
        tokio::spawn(rooms::ticker_loop(app.clone(), rx.clone())),
        tokio::spawn(sse::hub_loop(app.clone(), rx.clone())),
        tokio::spawn(touch::flush_loop(app.touches.clone(), app.store.clone(), rx.clone())),
        tokio::spawn(rate_limit::compact_loop(app.limiters.clone(), Duration::from_secs(60), rx.clone())),
    ];
    let served = server::serve(listener, service(app.clone()), Some(app), limits, rx).await;
    let _ = drained_tx.send(true);
    for task in background {
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
    Ok(served?)
}

/// A gateway running in this process (tests, embedding).
#[derive(Debug)]
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), StartError>>,
}

impl Running {
    /// Stops it and waits for the drain.
    pub async fn stop(mut self) -> Result<(), StartError> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.await.map_err(|e| StartError::Other(e.to_string()))?
    }
}

/// Binds `cfg.listen` (port 0 for a free port) and runs the gateway in the background.
pub async fn spawn(cfg: GatewayConfig) -> Result<Running, StartError> {
    let listener = TcpListener::bind(cfg.listen).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(run(listener, cfg, async move {
        let _ = stopped.await;
    }));
    Ok(Running { addr, stop: Some(stop), task })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_outside_the_routes_go_straight_to_the_proxy() {
        // Every route of `router` with the label its metrics carry (the fast paths must never
        // take one of them, and the numbered table must name each as the router does).
        for (path, label) in [
            ("/api/v1/rooms/r/tickets", "/api/v1/rooms/{room}/tickets"),
            ("/api/v1/rooms/r/tickets/t", "/api/v1/rooms/{room}/tickets/{ticket}"),
            ("/api/v1/rooms/r/tickets/t/events", "/api/v1/rooms/{room}/tickets/{ticket}/events"),
            ("/api/v1/rooms/r", "/api/v1/rooms/{room}"),
            ("/rooms/r", "/rooms/{room}"),
            ("/.well-known/jwks.json", "/.well-known/jwks.json"),
            ("/metrics", "/metrics"),
            ("/healthz", "/healthz"),
            ("/readyz", "/readyz"),
            ("/admin/", "/admin/"),
            ("/admin/v1/rooms", "/admin/v1/rooms"),
            ("/admin/v1/rooms/r", "/admin/v1/rooms/{room}"),
            ("/admin/v1/rooms/r/pause", "/admin/v1/rooms/{room}/{action}"),
            ("/admin/v1/rooms/r/resume", "/admin/v1/rooms/{room}/{action}"),
            ("/admin/v1/rooms/r/admit", "/admin/v1/rooms/{room}/{action}"),
            ("/api/v1/gate/1", "/api/v1/gate/{offset}"),
            ("/admin/v1/gates", "/admin/v1/gates"),
            ("/admin/v1/gates/g", "/admin/v1/gates/{gate}"),
        ] {
            assert_eq!(ROUTES[route(path).0], label, "{path}");
        }
        let (index, segs) = route("/api/v1/rooms/r/tickets/t");
        assert_eq!((index, segs[3], segs[5]), (STATUS_ROUTE, "r", "t"), "the ids a poll is read from");
        for path in
            ["/", "/book/1", "/api/v1/concerts", "/api/v1/rooms/r/tickets/t/events/x", "/a/b/c/d/e/f/g/h/i"]
        {
            assert_eq!(route(path).0, PROXIED_ROUTE, "{path}");
        }
        // Slashes are found in any bytes, past the first 64 too.
        let mut seed = 7u64;
        for len in 0..=130 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed =
                        seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                    [b'/', b'.', b'0', 0x00, 0xff, 0xaf, b'/' + 1][(seed >> 33) as usize % 7]
                })
                .collect();
            for (c, chunk) in bytes.chunks(64).enumerate() {
                let want = chunk.iter().enumerate().fold(0u64, |m, (i, &b)| m | (u64::from(b == b'/') << i));
                assert_eq!(slash_mask(chunk), want, "length {len}, chunk {c}");
            }
        }
        // The segments are `split('/')`'s after the leading slashes, up to eight.
        let long = format!("/{}/{}/x", "a".repeat(62), "b".repeat(70));
        for path in ["", "/", "//a", "/a/", "/a//b", "a/b", "/a/b/c/d/e/f/g/h", "/é/ü", &long] {
            let want: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            let (_, segs) = route(path);
            assert_eq!(&segs[..want.len()], &want[..], "{path:?}");
            assert!(segs[want.len()..].iter().all(|s| s.is_empty()), "{path:?}");
        }
    }
}
