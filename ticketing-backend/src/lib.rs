//! `ticketing-backend`: the booking system behind the waiting room.
//!
//! So far: configuration, the database (one portable SQL path over PostgreSQL and SQLite,
//! embedded migrations), users with argon2 passwords and role-bearing JWTs, the catalog,
//! admission verification with `queue-core`'s verifier, health, readiness, metrics and
//! graceful shutdown. Search, ranking, booking, coupons and payments follow.
//!
//! # Layout
//! - [`config`]: `TB_*` variables and the TOML file.
//! - [`db`]: pool, dialects, migrations.
//! - [`users`]: sign-up, login (limited per client), user tokens, the
//!   `CurrentUser`/`AdminUser` extractors; [`client`]: the client's address (`ClientIp`)
//!   behind trusted proxies.
//! - [`catalog`]: venues, performers, concerts, schedules and seat maps; [`ranking`]: views,
//!   once per client per window;
//!   [`cache`]: list and detail cache; [`posters`]: poster uploads behind a storage trait;
//!   [`search`]: tantivy search over concerts, performers and venues.
//! - [`admission`]: admission-token checks for routes the gateway protects, replay markers.
//! - [`booking`]: reservations; [`holds`]: atomic seat holds (memory or Redis).
//! - [`coupons`]: campaigns and first-come issuance (memory or Redis).
//! - [`payments`]: Toss-style prepare/confirm/cancel run as a saga with compensations and
//!   recovery; [`paysim`]: the local provider simulator (`payments-sim`); [`reconcile`]: the
//!   provider's ledger against the database (orphan charges refunded, the rest reported).
//! - [`outbound`]: JSON calls to other services (the provider, `reindex`).
//! - [`notify`]: per-user SSE notifications (Redis pub/sub fan-out) and the ops webhook.
//! - [`tickets`]: tickets issued after payment from a queue (Redis Stream or in process).
//! - [`storefront`]: the storefront (`/`, `/concerts/{id}`, `/me`) and the booking pages
//!   behind the waiting room (`/book/`), their scripts and stylesheet (`/assets/`), a strict CSP.
//! - [`jobs`]: batch jobs (hold and coupon expiry, settlement, cleanup) with leases.
//! - [`seed`]: demo data for the embedded default.
//! - `testkit` (feature `testkit`): bulk rows for tests and benches.
//! - [`metrics`], [`error`], [`state`].
#![forbid(unsafe_code)]

pub mod admission;
pub mod booking;
pub mod cache;
pub mod catalog;
pub mod client;
pub mod config;
pub mod coupons;
pub mod db;
pub mod error;
pub mod holds;
pub mod jobs;
pub mod metrics;
pub mod notify;
pub mod outbound;
pub mod payments;
pub mod paysim;
pub mod posters;
pub mod ranking;
pub mod reconcile;
pub mod search;
pub mod seed;
pub mod state;
pub mod storefront;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod tickets;
pub mod users;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use tokio::net::TcpListener;

use crate::admission::Admission;
use crate::config::BackendConfig;
use crate::db::Db;
use crate::metrics::{Metrics, RouteCode, RouteLabel};
use crate::state::{App, AppState};
use crate::users::Auth;
use queue_core::gate::GateSecret;
use queue_core::gate::marker::REPLAY_HEADER;

/// Why the backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// Connects, migrates and builds the shared state.
pub async fn build(cfg: &BackendConfig) -> Result<AppState, StartError> {
    if cfg.database_url.is_none() {
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(|e| StartError::Other(format!("cannot create {}: {e}", cfg.data_dir.display())))?;
    }
    let db = Db::connect(&cfg.database_url()).await?;
    let secret = match &cfg.jwt_secret {
        Some(s) => s.as_bytes().to_vec(),
        None => {
            tracing::warn!("no TB_JWT_SECRET: generated one; user tokens die with this process");
            rand::random::<[u8; 32]>().to_vec()
        }
    };
    let verifier = match &cfg.admission_jwks_url {
        Some(u) => {
            Some(queue_core::verify::Verifier::from_url(u).map_err(|e| StartError::Other(e.to_string()))?)
        }
        None => {
            tracing::warn!("no TB_ADMISSION_JWKS_URL: routes the gateway protects will refuse everyone");
            None
        }
    };
    if let (Some(email), Some(password)) = (&cfg.admin_email, &cfg.admin_password) {
        users::ensure_admin(&db, email, password).await.map_err(|e| StartError::Other(e.to_string()))?;
    }
    let (views, cache, holds, coupons) = match &cfg.redis_url {
        Some(url) => {
            let redis_err = |e: redis::RedisError| StartError::Other(format!("redis: {e}"));
            (
                ranking::Views::redis(url).await.map_err(redis_err)?.with_window(cfg.view_dedup_window_s),
                cache::Cache::redis(url).await.map_err(redis_err)?,
                holds::Holds::redis(url).await.map_err(redis_err)?,
                coupons::Issuer::redis(url).await.map_err(redis_err)?,
            )
        }
        None => (
            ranking::Views::memory().with_window(cfg.view_dedup_window_s),
            cache::Cache::memory(),
            holds::Holds::memory_from(&db)
                .await
                .map_err(|e| StartError::Other(format!("restoring holds: {e}")))?,
            coupons::Issuer::memory_from(&db)
                .await
                .map_err(|e| StartError::Other(format!("restoring coupons: {e}")))?,
        ),
    };
    let payments_base = match &cfg.payments_base_url {
        Some(u) => u.clone(),
        None => {
            let listener =
                TcpListener::bind("127.0.0.1:0").await.map_err(|e| StartError::Other(e.to_string()))?;
            let addr = paysim::start(listener, &cfg.payments_secret_key)
                .await
                .map_err(|e| StartError::Other(e.to_string()))?;
            tracing::warn!(%addr, "no TB_PAYMENTS_BASE_URL: payments go to the built-in simulator");
            format!("http://{addr}")
        }
    };
    let provider = payments::Provider::new(
        &payments_base,
        &cfg.payments_secret_key,
        Duration::from_millis(cfg.payments_timeout_ms),
    );
    let notifier = notify::Notifier::new(cfg.redis_url.as_deref(), cfg.ops_webhook_url.clone())
        .await
        .map_err(|e| StartError::Other(format!("redis: {e}")))?
        .with_streams_per_user(cfg.notify_streams_per_user);
    let tickets = match &cfg.redis_url {
        Some(url) => {
            tickets::Queue::redis(url).await.map_err(|e| StartError::Other(format!("redis: {e}")))?
        }
        None => tickets::Queue::memory(),
    };
    let state = Arc::new(App {
        tickets,
        notifier,
        provider,
        search: search::Search::new().map_err(|e| StartError::Other(e.to_string()))?,
        posters: Box::new(posters::DiskStore::new(cfg.data_dir.join("posters"))),
        cache,
        views,
        holds,
        layouts: catalog::Layouts::default(),
        coupons,
        hold_ttl_ms: i64::from(cfg.hold_ttl_s) * 1000,
        reconcile_grace: Duration::from_secs(cfg.reconcile_grace_s),
        seats_per_buyer: cfg.seats_per_buyer,
        // The built-in simulator's ledger starts empty with each process.
        reconcile_since_ms: if cfg.payments_base_url.is_none() { db::now_ms() } else { 0 },
        trusted_proxies: cfg.trusted_proxies.clone(),
        db,
        auth: Arc::new(Auth::new(&secret, users::Limits::from(cfg))),
        admission: Admission::new(
            verifier,
            cfg.gate_secret.as_deref().map(|s| GateSecret::new(s.as_bytes())),
        ),
        metrics: Metrics::default(),
    });
    if cfg.database_url.is_none() && cfg.demo_data {
        seed::seed_if_empty(&state)
            .await
            .map_err(|e| StartError::Other(format!("seeding demo data: {e}")))?;
    }
    Ok(state)
}

/// The router. Layers, outermost first: request metrics → replay markers → body limit →
/// handler (auth and admission checks are extractors of the handlers that need them).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/auth/signup", post(users::signup))
        .route("/api/v1/auth/login", post(users::login))
        .route("/api/v1/concerts", get(catalog::list_concerts))
        .route("/api/v1/concerts/{id}", get(catalog::get_concert))
        .route("/api/v1/concerts/{id}/schedules", get(catalog::list_schedules))
        .route("/api/v1/schedules/{id}/seats", get(catalog::seats))
        .route("/api/v1/rankings/concerts", get(catalog::rankings))
        .route("/api/v1/search", get(search::handler))
        .route("/api/v1/reservations", post(booking::create))
        .route("/api/v1/reservations/{id}", get(booking::get).delete(booking::cancel))
        .route("/admin/v1/reservations", get(booking::admin_list))
        .route("/api/v1/coupons/{campaign_id}/issue", post(coupons::issue))
        .route("/api/v1/coupons", get(coupons::open))
        .route("/api/v1/me/coupons", get(coupons::mine))
        .route("/admin/v1/coupon-campaigns", post(coupons::create_campaign))
        .route("/api/v1/payments/prepare", post(payments::prepare))
        .route("/api/v1/payments/confirm", post(payments::confirm))
        .route("/api/v1/payments/{order_id}/cancel", post(payments::cancel))
        .route("/api/v1/me/notifications/stream", get(notify::stream))
        .route("/api/v1/me/tickets", get(tickets::mine))
        .route("/", get(storefront::home))
        .route("/concerts/{id}", get(storefront::concert))
        .route("/me", get(storefront::me))
        .route("/api/v1/me/reservations", get(booking::mine))
        .route("/book/", get(storefront::index))
        .route("/book/{schedule}", get(storefront::seats))
        .route("/assets/{name}", get(storefront::asset))
        .route("/admin/v1/search/reindex", post(reindex))
        .route("/admin/v1/venues", post(catalog::create_venue))
        .route("/admin/v1/performers", post(catalog::create_performer))
        .route("/admin/v1/concerts", post(catalog::create_concert))
        .route("/admin/v1/concerts/{id}", put(catalog::update_concert).delete(catalog::delete_concert))
        .route("/admin/v1/concerts/{id}/schedules", post(catalog::create_schedule))
        .route(
            "/admin/v1/concerts/{id}/poster",
            post(posters::upload).layer(DefaultBodyLimit::max(posters::MAX_BYTES)),
        )
        .route("/posters/{key}", get(posters::serve))
        .route("/healthz", get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .fallback(|| async { error::body(StatusCode::NOT_FOUND, "not_found", "no such route") })
        // After every route: it applies to the routes registered before it. axum keeps the
        // `Allow` header it sets on a 405.
        .method_not_allowed_fallback(|| async {
            error::body(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(64 * 1024))
        .layer(middleware::from_fn_with_state(state.clone(), replay_marker))
        .layer(middleware::from_fn_with_state(state.clone(), record))
        .with_state(state)
}

/// Replays of the gateway's overload gate carry an HMAC'd marker: a genuine one becomes a
/// [`admission::Replayed`] extension, a forged one a `403`; the header never reaches handlers.
async fn replay_marker(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str()).to_owned();
    match state.admission.replayed(req.method().as_str(), &path, req.headers()) {
        Ok(replayed) => {
            req.headers_mut().remove(REPLAY_HEADER);
            if let Some(r) = replayed {
                req.extensions_mut().insert(r);
            }
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

async fn record(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |m| m.as_str()).to_owned();
    let started = Instant::now();
    let resp = next.run(req).await;
    let m = &state.metrics;
    m.http_requests.get_or_create(&RouteCode { route: route.clone(), code: resp.status().as_u16() }).inc();
    m.http_duration.get_or_create(&RouteLabel { route }).observe(started.elapsed().as_secs_f64());
    resp
}

async fn reindex(State(state): State<AppState>, _a: users::AdminUser) -> Result<Response, error::ApiError> {
    let n = state.search.rebuild(&state.db).await?;
    Ok(axum::Json(serde_json::json!({"indexed": n})).into_response())
}

async fn readyz(State(state): State<AppState>) -> Response {
    match tokio::time::timeout(Duration::from_secs(2), state.db.ping()).await {
        Ok(Ok(())) => axum::Json(serde_json::json!({"status": "ready"})).into_response(),
        _ => error::body(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unreachable",
            "the database does not answer",
        ),
    }
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    let mut r = state.metrics.encode().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    r
}

/// Serves until `shutdown` resolves, then drains in-flight requests.
pub async fn run(
    listener: TcpListener,
    cfg: BackendConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let state = build(&cfg).await?;
    let auth = state.auth.clone();
    let compactor = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            every.tick().await;
            users::compact(&auth);
        }
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let timeout = Duration::from_millis(cfg.payments_timeout_ms);
    let recovery = tokio::spawn(payments::recovery_loop(
        state.clone(),
        Duration::from_secs(2),
        timeout + Duration::from_secs(5),
        stop_rx,
    ));
    let instance = format!("tb-{}-{:08x}", std::process::id(), rand::random::<u32>());
    let issuer = tokio::spawn(tickets::worker(state.clone(), instance.clone(), stop_tx.subscribe()));
    let reconciler = tokio::spawn(reconcile::worker(
        state.clone(),
        instance.clone(),
        Duration::from_secs(cfg.reconcile_every_s),
        Duration::from_secs(cfg.reconcile_grace_s),
        stop_tx.subscribe(),
    ));
    let scheduler = tokio::spawn(jobs::scheduler(state.clone(), instance, stop_tx.subscribe()));
    // The peer's address feeds `client::ClientIp`.
    let app = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    let result = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), recovery).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), issuer).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), scheduler).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), reconciler).await;
    compactor.abort();
    result.map_err(|e| StartError::Other(e.to_string()))
}

/// Asks a running instance at `base` to rebuild its search index (the `reindex` command):
/// signs in as the admin, calls `POST /admin/v1/search/reindex`, returns its answer.
pub async fn admin_reindex(base: &str, email: &str, password: &str) -> Result<String, String> {
    let client = outbound::client();
    let base = base.trim_end_matches('/');
    let timeout = Duration::from_secs(60);
    let login = serde_json::json!({"email": email, "password": password});
    let (status, v) =
        outbound::call(&client, "POST", &format!("{base}/api/v1/auth/login"), &[], Some(&login), timeout)
            .await?;
    let token = match v["token"].as_str() {
        Some(t) if status == 200 => t.to_owned(),
        _ => return Err(format!("sign-in answered {status}: {v}")),
    };
    let bearer = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| e.to_string())?;
    let url = format!("{base}/admin/v1/search/reindex");
    let (status, v) =
        outbound::call(&client, "POST", &url, &[("authorization", bearer)], None, timeout).await?;
    if status != 200 {
        return Err(format!("reindex answered {status}: {v}"));
    }
    Ok(v.to_string())
}
