//! What every handler shares.

use std::sync::Arc;

use crate::admission::Admission;
use crate::db::Db;
use crate::metrics::Metrics;
use crate::users::Auth;

/// Shared state (cheap to clone).
pub type AppState = Arc<App>;

/// The backend's shared state.
#[derive(Debug)]
pub struct App {
    /// The database.
    pub db: Db,
    /// User tokens.
    pub auth: Arc<Auth>,
    /// Admission tokens from the gateway.
    pub admission: Admission,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// The search index.
    pub search: crate::search::Search,
    /// Poster storage.
    pub posters: Box<dyn crate::posters::PosterStore>,
    /// Concert list and detail cache.
    pub cache: crate::cache::Cache,
    /// View counts for the ranking.
    pub views: crate::ranking::Views,
    /// The ticket-issuing queue.
    pub tickets: crate::tickets::Queue,
    /// User notifications and ops messages.
    pub notifier: crate::notify::Notifier,
    /// The payment provider.
    pub provider: crate::payments::Provider,
    /// Coupon issuance.
    pub coupons: crate::coupons::Issuer,
    /// Seat holds.
    pub holds: crate::holds::Holds,
    /// Seat layouts of schedules, per instance.
    pub layouts: crate::catalog::Layouts,
    /// How long a hold lasts, ms.
    pub hold_ttl_ms: i64,
    /// Reconciliation spares orders younger than this (their saga may still be running).
    pub reconcile_grace: std::time::Duration,
    /// Reconciliation looks no further back than this (Unix ms): the start of the process
    /// with the built-in simulator, whose ledger lives and dies with it.
    pub reconcile_since_ms: i64,
    /// Seats per buyer per round (and per admission) where a concert sets none.
    pub seats_per_buyer: i64,
    /// Proxies whose `X-Forwarded-For` names the client ([`crate::client::ClientIp`]).
    pub trusted_proxies: Vec<crate::client::Cidr>,
}
