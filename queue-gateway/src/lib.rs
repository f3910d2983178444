//! `queue-gateway`: the waiting room's HTTP front door.
//!
//! It serves the waiting-room API, the waiting page and its live stream, signs admission
//! tokens, and forwards everything else to the backend, but only admitted traffic under a
//! room's protected prefixes. Any number of gateways can run against one Redis: they share no
//! state but the store, tick every room (ticks are idempotent) and follow config changes
//! within a second.
//!
//! # Layout, by layer (a module imports only from its own layer or those below)
//! 1. This file: [`build`] the shared state, [`run`] the gateway (the transport serving the
//!    pipeline, and the background loops), [`spawn`] one in process.
//! 2. [`pipeline`]: a request's path, written once as documented phases (screen → route →
//!    replay marker → admission → gate → upstream request → response → logging); the
//!    gateway's [`transport::Handler`].
//! 3. [`api`]: the gateway's own routes in one table (waiting room, page, streams, gate polls,
//!    admin, console, keys, metrics, health); [`background`]: the loops (room and gate
//!    configs, tickers, replay consumers, touches); [`state`]: the [`App`](state::App) they
//!    share.
//! 4. [`policy`]: screen, admission, rate limits, gate permits, live room configs: narrow
//!    arguments, never the whole state; [`upstream`]: the backend's connections, its one
//!    error and retry rule.
//! 5. [`transport`]: connections (accept loop, workers, the HTTP/1.1 lane, event-stream
//!    connections, hyper for h2c and the rest), knowing nothing of what a request means;
//!    [`http1`]: the HTTP/1.1 codec (server and client roles, one set of limits).
//! 6. [`config`], [`error`] (who caused it, retry safety, the one mapping to a status),
//!    [`metrics`].
//!
//! `fuzzing` (hidden, with this file at the top): the fuzz targets' entry points
//! (`queue-gateway/fuzz`).
//!
//! `tests/layers.rs` checks the layering from the sources.
#![forbid(unsafe_code)]

pub mod api;
pub mod background;
pub mod config;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod http1;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod state;
pub mod transport;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use queue_core::gate::{GateLog, GateSecret, MemoryGateLog};
use queue_core::token::{KeySet, SigningKey};
use queue_core::{MemoryStore, RedisStore, Store};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::polls::Polls;
use crate::api::sse::{self, Hub};
use crate::background::{rooms, touch};
use crate::config::GatewayConfig;
use crate::metrics::Metrics;
use crate::policy::admission::{self, CookieKey, UserAuth};
use crate::policy::rate_limit::{self, Limiters};
use crate::policy::rooms::RoomCache;
use crate::state::App;
use crate::upstream::Upstream;

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
        polls: Polls::start(polls_store, workers, drained),
        touches: Arc::new(touch::Touches::default()),
        upstream,
        gate_log,
        gate_secret,
        gates: policy::gate::Gates::default(),
        instance: format!("gw-{}-{:08x}", std::process::id(), rand::random::<u32>()),
        shutdown,
    });
    rooms::reload(&app).await?;
    background::gates::refresh(&app).await?;
    Ok(app)
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
    let served = transport::serve(listener, pipeline::gateway(app), limits, rx).await;
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
