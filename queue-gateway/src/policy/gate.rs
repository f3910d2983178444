//! The overload gate (DESIGN §5): per route group, a limit of in-flight requests to the
//! backend; past it, requests wait FIFO up to `hold_ms`, then are logged for replay (`202` and
//! an offset) or refused (`503`).
//!
//! - [`Permits`]: the in-flight count with two FIFO lanes of waiters; replays of the log go
//!   before new arrivals (they are older), and new arrivals go straight to the log while it
//!   has a backlog, so the backend sees requests in offset order.
//! - [`Gates`]: the live gate configs (from the gate log's store, reloaded every second and
//!   after admin changes), each with its permits and one consumer task per gateway.
//! - [`handle`]: the request path; [`replay`]: consumers, delivery and dead letters;
//!   [`poll`]: `GET /api/v1/gate/{offset}`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Limited};
use prometheus_client::metrics::gauge::Gauge;
use queue_core::gate::marker::REPLAY_HEADER;
use queue_core::gate::{Delivery, GateConfig, GateId, LoggedRequest, Polled, StoredResponse};
use serde_json::json;
use tokio::sync::{Notify, oneshot, watch};

use crate::error::GatewayError;
use crate::metrics::GateLabel;
use crate::pipeline::forward as proxy;
use crate::policy::rate_limit::Api;
use crate::state::{App, PeerAddr};

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
    fn new(gate: &str, limit: u32, inflight_gauge: Gauge, overloaded_gauge: Gauge) -> Self {
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
    cfg: RwLock<Arc<GateConfig>>,
    /// In-flight accounting.
    pub permits: Permits,
    /// Woken when this gateway logs an entry (other gateways' entries are found by polling).
    pub logged: Notify,
    /// The last read of the log found entries: new arrivals go to its end, in order.
    pub backlog: AtomicBool,
    removed: AtomicBool,
}

impl Gate {
    /// The current config.
    pub fn cfg(&self) -> Arc<GateConfig> {
        self.cfg.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }
}

type PrefixIndex = Vec<(String, Arc<Gate>)>;

/// Every gate, live.
#[derive(Debug, Default)]
pub struct Gates {
    by_id: RwLock<HashMap<GateId, Arc<Gate>>>,
    /// A refresh that read the log before another must not undo it.
    order: crate::background::rooms::RefreshOrder,
    /// `(prefix, gate)`, longest prefix first.
    prefixes: RwLock<Arc<PrefixIndex>>,
    /// Held while lost gates are put back: two refreshes at once put each back once.
    restoring: tokio::sync::Mutex<()>,
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

/// Brings the gates in line with the log's configs: new gates get permits and a consumer,
/// changed ones their new limit, deleted ones stop. Gates the log lost (neither there nor
/// remembered as deleted) are first put back from the configs this gateway knows, as rooms
/// are ([`crate::background::rooms::RoomCache::refresh`]).
pub async fn refresh(app: &Arc<App>) -> queue_core::Result<()> {
    let number = app.gates.order.begin();
    let known: Vec<(GateId, GateConfig)> = {
        let by_id = app.gates.by_id.read().unwrap_or_else(|e| e.into_inner());
        by_id.iter().map(|(id, g)| (id.clone(), (*g.cfg()).clone())).collect()
    };
    let mut configs = app.gate_log.gates().await?;
    let missing: Vec<_> = known.into_iter().filter(|(id, _)| configs.iter().all(|(c, _)| c != id)).collect();
    let _turn = if missing.is_empty() {
        None
    } else {
        let turn = app.gates.restoring.lock().await;
        // What a refresh that had the turn first put back is there now.
        configs = app.gate_log.gates().await?;
        Some(turn)
    };
    for (id, cfg) in missing {
        if configs.iter().any(|(c, _)| *c == id) || app.gate_log.was_deleted(&id).await? {
            continue;
        }
        app.gate_log.put_gate(&id, &cfg).await?;
        tracing::error!(
            gate = %id,
            "the gate log lost this gate (Redis restarted without persistence, was flushed, or failed over to an empty replica): put back from this gateway's last known config; requests it had logged are gone"
        );
        app.metrics.restored("gate").inc();
        configs.push((id, cfg));
    }
    let mut spawned = Vec::new();
    {
        let mut by_id = app.gates.by_id.write().unwrap_or_else(|e| e.into_inner());
        if !app.gates.order.admit(number) {
            return Ok(());
        }
        let live: std::collections::HashSet<&GateId> = configs.iter().map(|(id, _)| id).collect();
        by_id.retain(|id, g| {
            let keep = live.contains(id);
            if !keep {
                g.removed.store(true, Ordering::Relaxed);
                g.logged.notify_one();
            }
            keep
        });
        for (id, cfg) in &configs {
            match by_id.get(id) {
                Some(g) => {
                    if *g.cfg() != *cfg {
                        *g.cfg.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(cfg.clone());
                        g.permits.set_limit(cfg.max_inflight);
                    }
                }
                None => {
                    let label = GateLabel { gate: id.to_string() };
                    for family in
                        [&app.metrics.gate_logged, &app.metrics.gate_replayed, &app.metrics.gate_dead_letters]
                    {
                        let _ = family.get_or_create(&label);
                    }
                    let permits = Permits::new(
                        id.as_str(),
                        cfg.max_inflight,
                        app.metrics.gate_inflight.get_or_create(&label).clone(),
                        app.metrics.gate_overloaded.get_or_create(&label).clone(),
                    );
                    let gate = Arc::new(Gate {
                        id: id.clone(),
                        cfg: RwLock::new(Arc::new(cfg.clone())),
                        permits,
                        logged: Notify::new(),
                        backlog: AtomicBool::new(false),
                        removed: AtomicBool::new(false),
                    });
                    by_id.insert(id.clone(), gate.clone());
                    spawned.push(gate);
                }
            }
        }
        let mut list: Vec<(String, Arc<Gate>)> = by_id
            .values()
            .flat_map(|g| g.cfg().prefixes.iter().map(|p| (p.clone(), g.clone())).collect::<Vec<_>>())
            .collect();
        list.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        *app.gates.prefixes.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(list);
    }
    for gate in spawned {
        tokio::spawn(replay::consume(app.clone(), gate, app.shutdown.clone()));
    }
    Ok(())
}

/// Request headers kept in the log: what the backend needs to authenticate, route and
/// deduplicate the replay. Everything else (cookies of other sites, caching, hop-by-hop) is
/// dropped.
const LOGGED_HEADERS: [&str; 13] = [
    "accept",
    "accept-language",
    "authorization",
    "content-type",
    "cookie",
    "idempotency-key",
    "traceparent",
    "user-agent",
    "x-request-id",
    "x-admission-token",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
];

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Checks a replay marker a request arrived with: true when valid (the request skips the
/// gate); a marker that does not verify is refused, so no client can pass for a replay.
pub fn check_marker(app: &App, req: &Request) -> Result<bool, GatewayError> {
    let Some(v) = req.headers().get(REPLAY_HEADER) else { return Ok(false) };
    let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let v = v.to_str().map_err(|_| forged("the replay marker is not text"))?;
    app.gate_secret.verify_marker(v, req.method().as_str(), path, unix_now()).map_err(forged)?;
    Ok(true)
}

fn forged(why: &str) -> GatewayError {
    GatewayError::client(
        StatusCode::FORBIDDEN,
        "invalid_replay_marker",
        format!("{why}; replay markers are set by the gateway only"),
    )
}

/// A gated request: forward it with a permit, or hold it, then log or refuse it.
pub async fn handle(
    app: &App,
    gate: Arc<Gate>,
    req: Request,
    token: Option<HeaderValue>,
) -> Result<Response, GatewayError> {
    let cfg = gate.cfg();
    let peer = req.extensions().get::<PeerAddr>().copied();
    let (mut parts, body) = req.into_parts();
    if cfg.replayable {
        check_length(&parts.headers, cfg.max_body_bytes)?;
    }
    let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str()).to_owned();
    proxy::prepare(app, &mut parts, peer, token)?;
    let to_log = cfg.replayable && gate.backlog.load(Ordering::Relaxed);
    let waiter = if to_log { None } else { Some(gate.permits.try_acquire(Lane::Live)) };
    if let Some(Ok(permit)) = waiter {
        let body = if cfg.replayable { Body::from(read_body(body, cfg.max_body_bytes).await?) } else { body };
        return forward_with(app, parts, body, permit).await;
    }
    let body = if cfg.replayable { Some(read_body(body, cfg.max_body_bytes).await?) } else { None };
    if let Some(Err(rx)) = waiter
        && let Ok(Ok(permit)) = tokio::time::timeout(Duration::from_millis(cfg.hold_ms), rx).await
    {
        let body = body.map_or_else(Body::empty, Body::from);
        return forward_with(app, parts, body, permit).await;
    }
    let Some(body) = body else {
        return Err(GatewayError::Unavailable {
            code: "overloaded",
            message: format!("the backend is at capacity for this route (gate `{}`); retry shortly", gate.id),
            retry_after_s: 1,
        });
    };
    log(app, &gate, &cfg, &parts.method, &path, &parts.headers, body).await
}

fn check_length(headers: &HeaderMap, max: u32) -> Result<(), GatewayError> {
    match headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok()) {
        Some(len) if len > u64::from(max) => Err(proxy::too_large()),
        _ => Ok(()),
    }
}

async fn read_body(body: Body, max: u32) -> Result<Bytes, GatewayError> {
    match Limited::new(body, max as usize).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(proxy::too_large()),
        Err(e) => Err(GatewayError::bad_request(format!("the request body could not be read: {e}"))),
    }
}

/// Forwards with `permit` held until the response body is done.
async fn forward_with(
    app: &App,
    parts: axum::http::request::Parts,
    body: Body,
    permit: Permit,
) -> Result<Response, GatewayError> {
    let resp = proxy::send(app, parts, body).await?;
    let (parts, body) = resp.into_parts();
    let body = body.map_frame(move |f| {
        let _held = &permit;
        f
    });
    Ok(Response::from_parts(parts, Body::new(body)))
}

async fn log(
    app: &App,
    gate: &Gate,
    cfg: &GateConfig,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, GatewayError> {
    let headers = LOGGED_HEADERS
        .iter()
        .filter_map(|n| Some((n.to_string(), headers.get(*n)?.to_str().ok()?.to_owned())))
        .collect();
    let req = LoggedRequest { method: method.to_string(), path: path.to_owned(), headers, body };
    let appended = match app.gate_log.append(&gate.id, &req, cfg.max_logged).await {
        Ok(a) => a,
        Err(queue_core::Error::LogFull(_)) => {
            return Err(GatewayError::Unavailable {
                code: "gate_log_full",
                message: format!(
                    "gate `{}` has {} requests waiting already; retry later",
                    gate.id, cfg.max_logged
                ),
                retry_after_s: 5,
            });
        }
        Err(e) => return Err(e.into()),
    };
    gate.backlog.store(true, Ordering::Relaxed);
    gate.logged.notify_one();
    app.metrics.gate_logged.get_or_create(&GateLabel { gate: gate.id.to_string() }).inc();
    let offset = app.gate_secret.offset(&gate.id, appended.id);
    Ok(pending(&offset, appended.position))
}

/// `202 {"offset", "position", "poll"}`.
fn pending(offset: &str, position: u64) -> Response {
    let poll = format!("/api/v1/gate/{offset}");
    let mut r =
        (StatusCode::ACCEPTED, axum::Json(json!({ "offset": offset, "position": position, "poll": poll })))
            .into_response();
    let h = r.headers_mut();
    h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&poll) {
        h.insert(header::LOCATION, v);
    }
    r
}

/// `GET /api/v1/gate/{offset}`: `202` with the position while pending, the stored response
/// once replayed, `404` for unknown or expired offsets.
pub async fn poll(
    State(app): State<Arc<App>>,
    path: Result<Path<String>, PathRejection>,
    req: Request,
) -> Response {
    poll_inner(&app, path, req).await.unwrap_or_else(IntoResponse::into_response)
}

async fn poll_inner(
    app: &App,
    path: Result<Path<String>, PathRejection>,
    req: Request,
) -> Result<Response, GatewayError> {
    let peer = req.extensions().get::<PeerAddr>().copied();
    crate::api::room::limit(app, Api::Status, peer, req.headers(), None)?;
    let unknown = || GatewayError::not_found("unknown_offset", "no such offset, or its response has expired");
    let offset = path.map_err(|_| unknown())?.0;
    let (gate, id) = app.gate_secret.parse_offset(&offset).ok_or_else(unknown)?;
    match app.gate_log.poll(&gate, id).await? {
        Polled::Pending { position } => Ok(pending(&offset, position)),
        Polled::Done(stored) => Ok(stored_response(stored)),
        Polled::Unknown => Err(unknown()),
    }
}

fn stored_response(stored: StoredResponse) -> Response {
    let mut r = Response::new(Body::from(stored.body));
    *r.status_mut() = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::BAD_GATEWAY);
    for (k, v) in stored.headers {
        if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(&v)) {
            r.headers_mut().append(k, v);
        }
    }
    r
}

/// The `GET /admin/v1/gates/{gate}` view: config plus this gateway's load and the log's counts.
pub async fn gate_json(app: &App, id: &GateId, cfg: &GateConfig) -> Result<serde_json::Value, GatewayError> {
    let mut v = serde_json::to_value(cfg).map_err(|e| GatewayError::Internal(e.to_string()))?;
    let (inflight, overloaded) = app.gates.get(id).map(|g| g.permits.load()).unwrap_or((0, false));
    let counts = app.gate_log.counts(id).await?;
    v["gate"] = json!(id.as_str());
    v["inflight"] = json!(inflight);
    v["overloaded"] = json!(overloaded);
    v["logged"] = json!(counts.logged);
    v["backlog"] = json!(counts.backlog);
    v["dead_letters"] = json!(counts.dead_letters);
    Ok(v)
}

pub mod replay {
    //! Consumers: every gateway runs one per gate, all in one consumer group. A consumer
    //! reads the next entry, waits for a replay permit, and delivers it with that permit
    //! (an entry left unanswered on shutdown or death is claimed by another); entries
    //! a dead gateway left idle are claimed; failures are retried with backoff until
    //! `max_attempts`, then dead-lettered with a stored error response.

    use super::*;

    /// How often a consumer looks for entries of dead consumers, and for entries other
    /// gateways logged while it had nothing to do.
    const IDLE_POLL: Duration = Duration::from_millis(200);

    pub(crate) async fn consume(app: Arc<App>, gate: Arc<Gate>, mut shutdown: watch::Receiver<bool>) {
        let claim_idle = Duration::from_millis(app.cfg.replay.claim_idle_ms);
        let mut last_claim = tokio::time::Instant::now();
        while !gate.removed() && !*shutdown.borrow() {
            if last_claim.elapsed() >= claim_idle / 4 {
                last_claim = tokio::time::Instant::now();
                match app.gate_log.claim(&gate.id, &app.instance, claim_idle, 16).await {
                    Ok(claimed) => {
                        for d in claimed {
                            tracing::info!(gate = %gate.id, offset = %d.id, "claimed an entry a dead consumer left");
                            tokio::spawn(deliver(app.clone(), gate.clone(), d, None));
                        }
                    }
                    Err(e) => tracing::warn!(gate = %gate.id, error = %e, "claiming idle entries failed"),
                }
            }
            match app.gate_log.next(&gate.id, &app.instance).await {
                Ok(Some(d)) => {
                    // One entry at a time: the next is read only once this one has capacity,
                    // so replays start in offset order.
                    gate.backlog.store(true, Ordering::Relaxed);
                    let permit = tokio::select! {
                        p = gate.permits.acquire(Lane::Replay) => p,
                        _ = shutdown.changed() => break,
                    };
                    let Some(permit) = permit else { break };
                    tokio::spawn(deliver(app.clone(), gate.clone(), d, Some(permit)));
                }
                Ok(None) => {
                    gate.backlog.store(false, Ordering::Relaxed);
                    tokio::select! {
                        _ = gate.logged.notified() => {}
                        _ = tokio::time::sleep(IDLE_POLL) => {}
                        _ = shutdown.changed() => break,
                    }
                }
                Err(e) => {
                    tracing::warn!(gate = %gate.id, error = %e, "reading the gate log failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Delivers one entry until it is answered or dead-lettered.
    async fn deliver(app: Arc<App>, gate: Arc<Gate>, d: Delivery, mut permit: Option<Permit>) {
        let label = GateLabel { gate: gate.id.to_string() };
        loop {
            // The permit first: the attempt resets the entry's idle clock, which must not run
            // out while this consumer waits for capacity.
            let held = match permit.take() {
                Some(p) => Some(p),
                None => gate.permits.acquire(Lane::Replay).await,
            };
            let attempt = match app.gate_log.attempt(&gate.id, &app.instance, d.id).await {
                Ok(Some(n)) => n,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(gate = %gate.id, offset = %d.id, error = %e, "could not start a delivery; another consumer will claim it");
                    return;
                }
            };
            let cfg = gate.cfg();
            let outcome = if attempt > cfg.max_attempts {
                Err("delivery attempts exhausted".to_owned())
            } else {
                send(&app, &gate, &d).await
            };
            drop(held);
            match outcome {
                Ok(resp) => {
                    finish(&app, &gate, &d, &resp, None, &cfg).await;
                    app.metrics.gate_replayed.get_or_create(&label).inc();
                    return;
                }
                Err(reason) if attempt >= cfg.max_attempts => {
                    tracing::warn!(gate = %gate.id, offset = %d.id, attempt, %reason, "dead-lettered");
                    let body = json!({"error": {"code": "replay_failed", "message": format!(
                        "the request could not be delivered after {attempt} attempts ({reason}); retrying it with the same Idempotency-Key is safe")}});
                    let resp = StoredResponse {
                        status: 502,
                        headers: vec![("content-type".into(), "application/json".into())],
                        body: Bytes::from(body.to_string()),
                    };
                    if finish(&app, &gate, &d, &resp, Some(&reason), &cfg).await {
                        app.metrics.gate_dead_letters.get_or_create(&label).inc();
                    }
                    return;
                }
                Err(reason) => {
                    tracing::info!(gate = %gate.id, offset = %d.id, attempt, %reason, "replay failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt.min(20)))).await;
                }
            }
        }
    }

    async fn finish(
        app: &App,
        gate: &Gate,
        d: &Delivery,
        resp: &StoredResponse,
        dead: Option<&str>,
        cfg: &GateConfig,
    ) -> bool {
        let ttl = Duration::from_secs(cfg.response_ttl_s.into());
        for wait in [0, 100, 500, 2_000] {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            match app.gate_log.finish(&gate.id, d.id, resp, ttl, dead).await {
                Ok(done) => return done,
                Err(e) => {
                    tracing::warn!(gate = %gate.id, offset = %d.id, error = %e, "storing a replay's response failed")
                }
            }
        }
        // Unacknowledged: another consumer claims it later (Idempotency-Key guards the repeat).
        false
    }

    /// One delivery attempt: the response, or why it failed (transport errors, timeouts and
    /// 502/503/504 from the backend are failures worth retrying).
    async fn send(app: &App, gate: &Gate, d: &Delivery) -> Result<StoredResponse, String> {
        let r = &d.request;
        let method = Method::from_bytes(r.method.as_bytes()).map_err(|_| "unreplayable method".to_owned())?;
        let uri: axum::http::Uri = r.path.parse().map_err(|_| "unreplayable path".to_owned())?;
        let mut builder = axum::http::Request::builder()
            .method(method)
            .uri(app.upstream.uri_for(&uri).map_err(|e| e.to_string())?);
        for (k, v) in &r.headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        let offset = app.gate_secret.offset(&gate.id, d.id);
        let expires = unix_now() + app.cfg.limits.upstream_timeout_ms / 1000 + 60;
        builder = builder.header(REPLAY_HEADER, app.gate_secret.marker(&offset, &r.method, &r.path, expires));
        builder = builder.header(header::HOST, app.upstream.authority());
        let req =
            builder.body(Body::from(r.body.clone())).map_err(|e| format!("unreplayable request: {e}"))?;
        let (parts, body) = req.into_parts();
        let resp = proxy::send(app, parts, body).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        if matches!(status.as_u16(), 502..=504) {
            return Err(format!("backend answered {status}"));
        }
        let (parts, body) = resp.into_parts();
        let max = app.cfg.replay.max_response_bytes;
        let body = match tokio::time::timeout(app.upstream.timeout(), Limited::new(body, max).collect()).await
        {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                let msg = json!({"error": {"code": "response_too_large", "message": format!(
                    "the backend answered {status} with a body over {max} bytes, which is not kept")}});
                return Ok(StoredResponse {
                    status: 502,
                    headers: vec![("content-type".into(), "application/json".into())],
                    body: Bytes::from(msg.to_string()),
                });
            }
            Ok(Err(e)) => return Err(format!("reading the backend's answer failed: {e}")),
            Err(_) => return Err("the backend's answer timed out".to_owned()),
        };
        let headers = parts
            .headers
            .iter()
            .filter(|(k, _)| *k != header::CONTENT_LENGTH)
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        Ok(StoredResponse { status: status.as_u16(), headers, body })
    }
}
