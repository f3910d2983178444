//! What the handlers, the pipeline and the background loops share: [`App`].

use std::net::IpAddr;
use std::sync::Arc;

use axum::http::HeaderMap;
use queue_core::Store;
use queue_core::token::KeySet;
use tokio::sync::watch;

use crate::api::sse::Hub;
use crate::config::GatewayConfig;
use crate::metrics::Metrics;
use crate::policy::admission::{CookieKey, UserAuth};
use crate::policy::rate_limit::Limiters;
use crate::policy::rooms::RoomCache;
use crate::upstream::Upstream;

/// The gateway's shared state.
#[derive(Debug)]
pub struct App {
    /// The configuration it started with.
    pub cfg: GatewayConfig,
    /// Memory or Redis.
    pub store: Arc<dyn Store>,
    /// Admission token keys.
    pub keys: KeySet,
    /// Admissions already checked in full.
    pub admitted: crate::policy::admission::AdmittedCache,
    /// Admissions ended by a leave while their tokens are live.
    pub revoked: crate::policy::admission::Revoked,
    /// Ticket cookie secrets.
    pub cookies: CookieKey,
    /// User JWTs.
    pub users: UserAuth,
    /// Live room configs.
    pub rooms: RoomCache,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Rate limits.
    pub limiters: Arc<Limiters>,
    /// SSE fan-out.
    pub hub: Arc<Hub>,
    /// Status polls, coalesced into batched store reads.
    pub polls: crate::api::polls::Polls,
    /// Batched "seen" marks.
    pub touches: Arc<crate::background::touch::Touches>,
    /// The backend.
    pub upstream: Upstream,
    /// The overload gates' log (memory or Redis Streams).
    pub gate_log: Arc<dyn queue_core::gate::GateLog>,
    /// Offsets and replay markers.
    pub gate_secret: queue_core::gate::GateSecret,
    /// Live gates.
    pub gates: crate::policy::gate::Gates,
    /// This gateway's consumer name in the gate logs' consumer group.
    pub instance: String,
    /// Turns true when the gateway shuts down.
    pub shutdown: watch::Receiver<bool>,
}

impl App {
    /// The client's IP: the peer, or the first `X-Forwarded-For` hop when trusted.
    pub fn client_ip(&self, peer: Option<crate::transport::PeerAddr>, headers: &HeaderMap) -> IpAddr {
        if self.cfg.trust_forwarded
            && let Some(ip) = headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .and_then(|v| v.trim().parse().ok())
        {
            return ip;
        }
        peer.map(|p| p.0.ip()).unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }
}
