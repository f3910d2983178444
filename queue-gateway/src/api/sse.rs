//! Live ticket updates over SSE, fanned out in process.
//!
//! A gateway holds one store subscription (admissions and leaves of every room) and, once a
//! second and soon after each admission or leave in a room (when positions move; at most twice
//! a second per room), one `watch` call per room for all of its open streams (which also keeps
//! their tickets seen): never a store connection per client. Each stream gets `position` at
//! most once a second and only when it changed, `admitted` with its token as soon as the admission is
//! published, and `expired` when the ticket is over; comments keep idle proxies from closing
//! the stream. `admitted` and `expired` end the stream (nothing more will come, and the
//! gateway frees the connection as the crowd goes in); `admitted` carries a long `retry` so
//! an `EventSource` that does not close itself does not hurry back. On shutdown every stream gets `event: shutdown` and ends.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use queue_core::{RoomEvent, RoomId, TicketId, TicketState, TicketStatus};
use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::api::room::{self, Holder};
use crate::error::GatewayError;
use crate::state::App;
use crate::transport::PeerAddr;

/// What a stream is told.
#[derive(Debug)]
enum Msg {
    Position { position: Option<u64>, eta_seconds: Option<u64> },
    Admitted { token: String, expires_at_ms: u64 },
    Expired,
    Shutdown,
}

#[derive(Debug)]
struct Client {
    ticket: TicketId,
    holder_sub: String,
    secret: Vec<u8>,
    tx: mpsc::Sender<Msg>,
    last_position: Option<Option<u64>>,
    /// When the last `position` went out (the first is the stream's opening message).
    last_sent: std::time::Instant,
    admitted: bool,
}

/// The streams of one gateway.
#[derive(Debug, Default)]
pub struct Hub {
    rooms: Mutex<HashMap<RoomId, HashMap<u64, Client>>>,
    next_id: AtomicU64,
    open: AtomicU64,
}

/// Removes its stream from the hub when the stream is dropped (client gone).
struct Registration {
    hub: Arc<Hub>,
    room: RoomId,
    id: u64,
    app: Arc<App>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut rooms = self.hub.rooms.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(clients) = rooms.get_mut(&self.room) {
            clients.remove(&self.id);
            if clients.is_empty() {
                rooms.remove(&self.room);
            }
        }
        self.hub.open.fetch_sub(1, Ordering::Relaxed);
        self.app.metrics.sse_connections.dec();
    }
}

impl Hub {
    /// Open streams.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    fn clients_of(&self, room: &RoomId) -> Vec<(u64, TicketId)> {
        let rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        rooms.get(room).map(|c| c.iter().map(|(id, c)| (*id, c.ticket)).collect()).unwrap_or_default()
    }

    fn has_clients(&self, room: &RoomId) -> bool {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner()).contains_key(room)
    }

    fn rooms(&self) -> Vec<RoomId> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect()
    }

    /// Runs `f` on a client, if it is still connected.
    fn with_client<T>(&self, room: &RoomId, id: u64, f: impl FnOnce(&mut Client) -> T) -> Option<T> {
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        rooms.get_mut(room).and_then(|c| c.get_mut(&id)).map(f)
    }

    fn end_all(&self) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        for clients in rooms.values() {
            for c in clients.values() {
                let _ = c.tx.try_send(Msg::Shutdown);
            }
        }
        rooms.clear();
    }
}

fn sign(app: &App, room: &RoomId, c: &Client, until: u64) -> Option<String> {
    let cnf = queue_core::token::cnf_of(&c.secret);
    let now_s = room::now_ms() / 1000;
    app.keys.sign(room.as_str(), &c.holder_sub, &c.ticket.to_string(), &cnf, now_s, until / 1000).ok()
}

/// `GET /api/v1/rooms/{room}/tickets/{ticket}/events`
pub async fn events(
    State(app): State<Arc<App>>,
    peer: Option<axum::Extension<PeerAddr>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, GatewayError> {
    let Path((room, ticket)) = path.map_err(room::path_err)?;
    let (room, ticket) = (room::room_id(&room)?, TicketId::parse(&ticket)?);
    let user = room::known_user(&app, &headers)?;
    room::limit(&app, crate::policy::rate_limit::Api::Status, peer.map(|p| p.0), &headers, user.as_deref())?;
    let st = app.polls.status(&room, ticket).await?;
    let Some(Holder { secret: Some(secret), user: bound, .. }) =
        room::holder(&app, &headers, &st, user.as_deref())
    else {
        return Err(GatewayError::client(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only the ticket's holder may follow it",
        ));
    };
    if app.hub.open() as usize >= app.cfg.limits.max_sse_streams {
        return Err(GatewayError::client(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_streams",
            "too many live streams; poll instead",
        ));
    }
    let (tx, rx) = mpsc::channel(8);
    let first = first_message(&app, &st, bound.as_deref(), &secret);
    let id = app.hub.next_id.fetch_add(1, Ordering::Relaxed);
    let client = Client {
        ticket,
        holder_sub: room::token_sub(bound.as_deref(), ticket),
        secret,
        tx,
        last_position: Some(st.position),
        last_sent: std::time::Instant::now(),
        admitted: st.state == TicketState::Admitted,
    };
    app.hub
        .rooms
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(room.clone())
        .or_default()
        .insert(id, client);
    app.hub.open.fetch_add(1, Ordering::Relaxed);
    app.metrics.sse_connections.inc();
    let reg = Registration { hub: app.hub.clone(), room, id, app: app.clone() };
    let sse =
        Sse::new(stream_of(first, rx, reg)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)));
    Ok(sse.into_response())
}

fn first_message(app: &App, st: &TicketStatus, bound: Option<&str>, secret: &[u8]) -> Msg {
    match (st.state, st.admitted_until_ms) {
        (TicketState::Waiting, _) => {
            Msg::Position { position: st.position, eta_seconds: st.eta.map(|e| e.seconds) }
        }
        (TicketState::Admitted, Some(_)) => {
            let h =
                Holder { secret: Some(secret.to_vec()), user: bound.map(str::to_owned), needs_cookie: false };
            match room::admission_token(app, st, &h) {
                Ok(Some((token, until))) => Msg::Admitted { token, expires_at_ms: until },
                _ => Msg::Expired,
            }
        }
        _ => Msg::Expired,
    }
}

fn to_event(m: &Msg) -> Event {
    match m {
        Msg::Position { position, eta_seconds } => Event::default()
            .event("position")
            .data(json!({"position": position, "eta_seconds": eta_seconds}).to_string()),
        Msg::Admitted { token, expires_at_ms } => Event::default()
            .event("admitted")
            .retry(Duration::from_secs(60))
            .data(json!({"token": token, "expires_at": room::rfc3339_ms(*expires_at_ms)}).to_string()),
        Msg::Expired => Event::default().event("expired").data("{}"),
        Msg::Shutdown => Event::default().event("shutdown").retry(Duration::from_secs(2)).data("{}"),
    }
}

fn stream_of(
    first: Msg,
    rx: mpsc::Receiver<Msg>,
    reg: Registration,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    // Nothing follows these.
    let last = |m: &Msg| matches!(m, Msg::Admitted { .. } | Msg::Expired | Msg::Shutdown);
    stream::unfold((Some(first), rx, reg, false), move |(pending, mut rx, reg, done)| async move {
        if done {
            return None;
        }
        let m = match pending {
            Some(m) => m,
            None => rx.recv().await?,
        };
        let end = last(&m);
        Some((Ok(to_event(&m)), (None, rx, reg, end)))
    })
}

/// Delivers admissions as they are published, and positions once a second and soon after
/// anything moves them (an admission or a leave, on any gateway), until shutdown.
pub async fn hub_loop(app: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    let mut events = app.store.subscribe();
    let mut pushes = Pushes::default();
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut soon = tokio::time::interval(PUSH_GAP / 4);
    soon.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ev = events.recv() => {
                let moved = match ev {
                    Ok(RoomEvent::Admitted { room, tickets, expires_at_ms, .. }) => {
                        on_admitted(&app, &room, &tickets, expires_at_ms);
                        room
                    }
                    Ok(RoomEvent::Left { room }) => room,
                    _ => continue,
                };
                // Everyone behind them moved up: tell this gateway's streams now, not at the
                // next poll.
                if !app.hub.has_clients(&moved) {
                    continue;
                }
                if pushes.due(&moved) {
                    poll_room(&app, &moved).await;
                } else {
                    pushes.later.insert(moved);
                }
            }
            _ = soon.tick(), if !pushes.later.is_empty() => {
                for room in pushes.take_due() {
                    poll_room(&app, &room).await;
                }
            }
            _ = every.tick() => {
                poll_positions(&app).await;
                pushes.last.retain(|_, t| t.elapsed() < PUSH_GAP);
            }
            _ = shutdown.changed() => {
                app.hub.end_all();
                return;
            }
        }
    }
}

/// Pushes outside the once-a-second poll are at most this often per room, however fast the
/// room ticks or its tickets leave.
const PUSH_GAP: Duration = Duration::from_millis(500);

/// When each room's positions were last pushed, and the rooms whose push waits for the gap.
#[derive(Default)]
struct Pushes {
    last: HashMap<RoomId, std::time::Instant>,
    later: HashSet<RoomId>,
}

impl Pushes {
    /// Whether `room` may be pushed now (and if so, counts it pushed).
    fn due(&mut self, room: &RoomId) -> bool {
        let now = std::time::Instant::now();
        if self.last.get(room).is_some_and(|t| now.duration_since(*t) < PUSH_GAP) {
            return false;
        }
        self.last.insert(room.clone(), now);
        self.later.remove(room);
        true
    }

    /// The waiting rooms whose gap is over.
    fn take_due(&mut self) -> Vec<RoomId> {
        let waiting: Vec<RoomId> = self.later.iter().cloned().collect();
        waiting.into_iter().filter(|r| self.due(r)).collect()
    }
}

fn on_admitted(app: &App, room: &RoomId, tickets: &[TicketId], until: u64) {
    let clients = app.hub.clients_of(room);
    if clients.is_empty() {
        return;
    }
    let admitted: HashSet<&TicketId> = tickets.iter().collect();
    for (id, ticket) in clients {
        if !admitted.contains(&ticket) {
            continue;
        }
        app.hub.with_client(room, id, |c| {
            if !c.admitted
                && let Some(token) = sign(app, room, c, until)
            {
                c.admitted = true;
                let _ = c.tx.try_send(Msg::Admitted { token, expires_at_ms: until });
            }
        });
    }
}

async fn poll_positions(app: &App) {
    for room in app.hub.rooms() {
        poll_room(app, &room).await;
    }
}

async fn poll_room(app: &App, room: &RoomId) {
    let clients = app.hub.clients_of(room);
    if clients.is_empty() {
        return;
    }
    let tickets: Vec<TicketId> =
        clients.iter().map(|(_, t)| *t).collect::<HashSet<_>>().into_iter().collect();
    let mut states = HashMap::new();
    for chunk in tickets.chunks(queue_core::store::MAX_TOUCH_BATCH) {
        match app.store.watch(room, chunk).await {
            Ok(w) => states.extend(chunk.iter().copied().zip(w)),
            Err(e) => {
                tracing::warn!(room = %room, error = %e, "watch failed");
                continue;
            }
        }
    }
    let stats = app.store.stats(room).await.ok();
    let cfg = app.rooms.get(room);
    for (id, ticket) in clients {
        let Some(Some(w)) = states.get(&ticket) else { continue };
        app.hub.with_client(room, id, |c| update(app, room, c, w, stats.as_ref(), cfg.as_ref()));
    }
}

fn update(
    app: &App,
    room: &RoomId,
    c: &mut Client,
    w: &queue_core::Watched,
    stats: Option<&queue_core::RoomStats>,
    cfg: Option<&queue_core::RoomConfig>,
) {
    match w.state {
        TicketState::Waiting => {
            // A change within a second of the last one waits for a later poll.
            if c.last_position != Some(w.position) && c.last_sent.elapsed() >= Duration::from_secs(1) {
                c.last_position = Some(w.position);
                c.last_sent = std::time::Instant::now();
                let eta = match (w.position, stats, cfg) {
                    (Some(p), Some(s), Some(cfg)) => {
                        queue_core::eta::estimate(p, s.admitted_per_minute, cfg, s.phase, s.now_ms)
                            .map(|e| e.seconds)
                    }
                    _ => None,
                };
                let _ = c.tx.try_send(Msg::Position { position: w.position, eta_seconds: eta });
            }
        }
        TicketState::Admitted => {
            if !c.admitted
                && let Some(until) = w.admitted_until_ms
                && let Some(token) = sign(app, room, c, until)
            {
                c.admitted = true;
                let _ = c.tx.try_send(Msg::Admitted { token, expires_at_ms: until });
            }
        }
        _ => {
            let _ = c.tx.try_send(Msg::Expired);
        }
    }
}
