//! `waiting-room`: the whole system in one process, a thin composition of the gateway
//! library (`queue-gateway`) and the ticketing backend (`ticketing-backend`).
//!
//! This is what `cargo run --release` starts: the backend on `TB_LISTEN` (embedded SQLite
//! under `./data`, the demo catalog, the payment simulator) and the gateway on `WR_LISTEN` in
//! front of it, the backend verifying admissions against the gateway's JWKS and sharing its
//! user-token secret. The demo room `demo` (protecting `/book/` and `/api/v1/reservations`,
//! where the demo catalog's hot concert is sold) exists only here, and only with the memory
//! store and no rooms of the operator's: a gateway in front of someone else's backend never
//! protects a path nobody asked it to.
//!
//! Neither library depends on the other; a production gateway build (`queue-gateway`) links
//! no backend code.
//!
//! # Layout
//! - this file: [`Config`] (the two binaries' configs, read as each reads its own), [`run`],
//!   and the demo room.
#![forbid(unsafe_code)]

use std::net::SocketAddr;

use queue_gateway::config::GatewayConfig;
use ticketing_backend::config::BackendConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Why the system could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value was refused (the gateway's `WR_*` or the backend's `TB_*`).
    #[error("{0}")]
    Config(String),
    /// The gateway failed.
    #[error("gateway: {0}")]
    Gateway(#[from] queue_gateway::StartError),
    /// A socket failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// The two configurations: the gateway's (`WR_CONFIG`, `WR_*`) and the backend's
/// (`TB_CONFIG`, `TB_*`), each loaded by its own crate. The gateway's `upstream` is the
/// in-process backend, so `WR_UPSTREAM` is refused here.
#[derive(Debug, Clone)]
pub struct Config {
    /// The gateway's.
    pub gateway: GatewayConfig,
    /// The backend's.
    pub backend: BackendConfig,
}

/// Where the in-process backend is, before it is bound (replaced at start).
const BACKEND_PLACEHOLDER: &str = "http://127.0.0.1:8081";

impl Config {
    /// Both configurations from the environment (and the files it names).
    pub fn load() -> Result<Self, Error> {
        let vars: std::collections::BTreeMap<String, String> =
            std::env::vars().filter(|(k, _)| k.starts_with("WR_")).collect();
        if vars.contains_key("WR_UPSTREAM") {
            return Err(Error::Config(
                "WR_UPSTREAM is set, but the all-in-one system runs its own backend: to put the \
                 gateway in front of another backend, run the `queue-gateway` binary"
                    .into(),
            ));
        }
        let mut gateway_vars = vars;
        gateway_vars.insert("WR_UPSTREAM".into(), BACKEND_PLACEHOLDER.into());
        let gateway = GatewayConfig::load_from(&gateway_vars).map_err(|e| Error::Config(e.to_string()))?;
        let backend = BackendConfig::load().map_err(|e| Error::Config(e.to_string()))?;
        Ok(Config { gateway, backend })
    }

    /// Whether the demo room is created: the memory store and no rooms of the operator's (on
    /// Redis, rooms outlive the process and belong to whoever configured them).
    pub fn has_demo_room(&self) -> bool {
        self.gateway.redis_url.is_none() && self.gateway.rooms.is_empty()
    }
}

/// The room the demo catalog's hot concert is sold through.
fn demo_room() -> toml::Value {
    toml::toml! {
        protect = ["/book/", "/api/v1/reservations"]
        target = "/book/"
        batch_size = 5
        tick_interval_ms = 5000
        free_pass = 0
    }
    .into()
}

/// What the binary prints once both listeners are bound.
pub fn banner(gateway: SocketAddr, backend: SocketAddr, demo: bool) -> String {
    let room = if demo { "  (room `demo` protects /book/ and /api/v1/reservations)" } else { "" };
    format!(
        "\n  The whole system on embedded defaults:\n\
         \x20   gateway  http://{gateway}{room}\n\
         \x20   backend  http://{backend}  (SQLite under ./data, demo catalog, payment simulator)\n\
         \x20 Open http://{gateway}/book/ to queue for the hot concert (waiting page: http://{gateway}/rooms/demo);\n\
         \x20 the catalog is at http://{gateway}/api/v1/concerts\n"
    )
}

/// Runs the backend on `backend` and the gateway on `gateway` in front of it until `shutdown`
/// resolves; the gateway drains first, then the backend stops.
pub async fn run(
    gateway: TcpListener,
    backend: TcpListener,
    mut cfg: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let gateway_addr = gateway.local_addr()?;
    let backend_addr = backend.local_addr()?;
    if cfg.has_demo_room() {
        cfg.gateway.rooms.insert("demo".into(), demo_room());
    }
    // The backend binds tickets to the users the gateway's user tokens name, and checks
    // admissions against this gateway's keys.
    let secret = cfg.gateway.user_jwt_secret.get_or_insert_with(|| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
    });
    let jwks_host = if gateway_addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], gateway_addr.port()))
    } else {
        gateway_addr
    };
    cfg.backend.listen = backend_addr;
    cfg.backend.jwt_secret = Some(secret.clone());
    cfg.backend.admission_jwks_url = Some(format!("http://{jwks_host}/.well-known/jwks.json"));
    cfg.gateway.upstream = Some(format!("http://{backend_addr}"));

    let (stop_backend, mut backend_stopped) = watch::channel(false);
    let backend_task = tokio::spawn(ticketing_backend::run(backend, cfg.backend, async move {
        let _ = backend_stopped.changed().await;
    }));
    tracing::info!(%backend_addr, "all-in-one: the ticketing backend runs in process");
    let served = queue_gateway::run(gateway, cfg.gateway, shutdown).await;
    let _ = stop_backend.send(true);
    match backend_task.await {
        Ok(Err(e)) => tracing::error!(error = %e, "the in-process backend stopped with an error"),
        Err(e) => tracing::error!(error = %e, "the in-process backend panicked"),
        Ok(Ok(())) => {}
    }
    Ok(served?)
}
