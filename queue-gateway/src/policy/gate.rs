//! The overload gate (DESIGN §5): per route group, a limit of in-flight requests to the
//! backend; past it, requests wait FIFO up to `hold_ms`, then are logged for replay (`202` and
//! an offset) or refused (`503`).
//!
//! - [`Permits`]: the in-flight count with two FIFO lanes of waiters; replays of the log go
//!   before new arrivals (they are older), and new arrivals go straight to the log while it
//!   has a backlog, so the backend sees requests in offset order.
//! - [`Gates`]: the live gate configs (from the gate log's store, reloaded every second and
//!   after admin changes), each with its permits and one consumer task per gateway.
//! - [`check_marker`]: a replay marker's check.
//!
//! The request path under a gate is [`crate::pipeline::gated`]; refreshes and the replay
//! consumers are [`crate::background::gates`]; `GET /api/v1/gate/{offset}` is
//! [`crate::api::gates`].

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use axum::http::request::Parts;
use prometheus_client::metrics::gauge::Gauge;
use queue_core::gate::GateSecret;
use queue_core::gate::marker::REPLAY_HEADER;
use queue_core::gate::{GateConfig, GateId};
use tokio::sync::{Notify, oneshot};

use crate::error::GatewayError;

/// Which queue a waiter joins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// Replays of the log: served first.
    Replay,
    /// Requests arriving now.
    Live,
}

#[derive(Debug, Default)]
struct PermitState {
    inflight: u32,
    limit: u32,
    replay: VecDeque<oneshot::Sender<Permit>>,
    live: VecDeque<oneshot::Sender<Permit>>,
    overloaded: bool,
}

#[derive(Debug)]
struct PermitShared {
    gate: String,
    state: Mutex<PermitState>,
    inflight_gauge: Gauge,
    overloaded_gauge: Gauge,
}

/// In-flight accounting of one gate in this gateway.
#[derive(Clone, Debug)]
pub struct Permits(Arc<PermitShared>);

/// One in-flight request; dropping it frees the slot for the next waiter.
#[derive(Debug)]
pub struct Permit(Arc<PermitShared>);

impl Drop for Permit {
    fn drop(&mut self) {
        let handed = {
            let mut st = self.0.lock();
            st.inflight -= 1;
            self.0.hand_out(&mut st)
        };
        deliver_permits(handed);
    }
}

/// Sends permits outside the lock: a permit whose waiter gave up comes back through `Drop`,
/// which takes the lock again.
fn deliver_permits(handed: Vec<(oneshot::Sender<Permit>, Permit)>) {
    for (tx, permit) in handed {
        let _ = tx.send(permit);
    }
}

impl PermitShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, PermitState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn hand_out(self: &Arc<Self>, st: &mut PermitState) -> Vec<(oneshot::Sender<Permit>, Permit)> {
        let mut out = Vec::new();
        while st.inflight < st.limit {
            let Some(tx) = st.replay.pop_front().or_else(|| st.live.pop_front()) else { break };
            if tx.is_closed() {
                continue;
            }
            st.inflight += 1;
            out.push((tx, Permit(self.clone())));
        }
        self.observe(st);
        out
    }

    /// Keeps the gauges and the overload flag: on when demand finds no permit, off once the
    /// gate is below its limit with nobody waiting.
    fn observe(&self, st: &mut PermitState) {
        let waiting = !st.replay.is_empty() || !st.live.is_empty();
        let over = if waiting {
            true
        } else if st.inflight < st.limit {
            false
        } else {
            st.overloaded
        };
        if over != st.overloaded {
            st.overloaded = over;
            if over {
                tracing::warn!(gate = %self.gate, inflight = st.inflight, limit = st.limit, "gate overloaded");
            } else {
                tracing::info!(gate = %self.gate, inflight = st.inflight, limit = st.limit, "gate below its limit again");
            }
        }
        self.inflight_gauge.set(st.inflight.into());
        self.overloaded_gauge.set(i64::from(over));
    }
}

impl Permits {
    pub(crate) fn new(gate: &str, limit: u32, inflight_gauge: Gauge, overloaded_gauge: Gauge) -> Self {
        let st = PermitState { limit, ..PermitState::default() };
        Permits(Arc::new(PermitShared {
            gate: gate.to_owned(),
            state: Mutex::new(st),
            inflight_gauge,
            overloaded_gauge,
        }))
    }

    /// A permit now, or a place in `lane`'s queue.
    pub fn try_acquire(&self, lane: Lane) -> Result<Permit, oneshot::Receiver<Permit>> {
        let mut st = self.0.lock();
        let ahead = match lane {
            Lane::Replay => !st.replay.is_empty(),
            Lane::Live => !st.replay.is_empty() || !st.live.is_empty(),
        };
        if !ahead && st.inflight < st.limit {
            st.inflight += 1;
            self.0.observe(&mut st);
            return Ok(Permit(self.0.clone()));
        }
        let (tx, rx) = oneshot::channel();
        match lane {
            Lane::Replay => st.replay.push_back(tx),
            Lane::Live => st.live.push_back(tx),
        }
        self.0.observe(&mut st);
        Err(rx)
    }

    /// Waits for a permit in `lane` (None if the gate went away).
    pub async fn acquire(&self, lane: Lane) -> Option<Permit> {
        match self.try_acquire(lane) {
            Ok(p) => Some(p),
            Err(rx) => rx.await.ok(),
        }
    }

    /// Changes the limit (live config); more room is handed to waiters at once.
    pub fn set_limit(&self, limit: u32) {
        let handed = {
            let mut st = self.0.lock();
            st.limit = limit;
            self.0.hand_out(&mut st)
        };
        deliver_permits(handed);
    }

    /// `(in flight, overloaded)` in this gateway.
    pub fn load(&self) -> (u32, bool) {
        let st = self.0.lock();
        (st.inflight, st.overloaded)
    }
}

/// One gate in this gateway.
#[derive(Debug)]
pub struct Gate {
    /// Its id.
    pub id: GateId,
    pub(crate) cfg: RwLock<Arc<GateConfig>>,
    /// In-flight accounting.
    pub permits: Permits,
    /// Woken when this gateway logs an entry (other gateways' entries are found by polling).
    pub logged: Notify,
    /// The last read of the log found entries: new arrivals go to its end, in order.
    pub backlog: AtomicBool,
    pub(crate) removed: AtomicBool,
}

impl Gate {
    /// The current config.
    pub fn cfg(&self) -> Arc<GateConfig> {
        self.cfg.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }
}

pub(crate) type PrefixIndex = Vec<(String, Arc<Gate>)>;

/// Every gate, live.
#[derive(Debug, Default)]
pub struct Gates {
    pub(crate) by_id: RwLock<HashMap<GateId, Arc<Gate>>>,
    /// A refresh that read the log before another must not undo it.
    pub(crate) order: crate::policy::rooms::RefreshOrder,
    /// `(prefix, gate)`, longest prefix first.
    pub(crate) prefixes: RwLock<Arc<PrefixIndex>>,
    /// Held while lost gates are put back: two refreshes at once put each back once.
    pub(crate) restoring: tokio::sync::Mutex<()>,
}

impl Gates {
    /// The gate guarding `path` (longest matching prefix).
    pub fn find(&self, path: &str) -> Option<Arc<Gate>> {
        // Searched under the read lock, not on a copy of the list: every request asks, and
        // most find nothing.
        let list = self.prefixes.read().unwrap_or_else(|e| e.into_inner());
        list.iter().find(|(p, _)| crate::policy::screen::under(path, p)).map(|(_, g)| g.clone())
    }

    /// A gate by id.
    pub fn get(&self, id: &GateId) -> Option<Arc<Gate>> {
        self.by_id.read().unwrap_or_else(|e| e.into_inner()).get(id).cloned()
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Checks a replay marker a request arrived with: true when valid (the request skips the
/// gate); a marker that does not verify is refused, so no client can pass for a replay.
pub fn check_marker(secret: &GateSecret, head: &Parts) -> Result<bool, GatewayError> {
    let Some(v) = head.headers.get(REPLAY_HEADER) else { return Ok(false) };
    let path = head.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let v = v.to_str().map_err(|_| forged("the replay marker is not text"))?;
    secret.verify_marker(v, head.method.as_str(), path, unix_now()).map_err(forged)?;
    Ok(true)
}

fn forged(why: &str) -> GatewayError {
    GatewayError::client(
        StatusCode::FORBIDDEN,
        "invalid_replay_marker",
        format!("{why}; replay markers are set by the gateway only"),
    )
}
