//! The waiting-room API (DESIGN §4): join, status, leave, public room state.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use queue_core::{RoomConfig, RoomId, TicketId, TicketState, TicketStatus, UserKey};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::GatewayError;
use crate::http1::push_decimal;
use crate::metrics::{DropLabel, Metrics};
use crate::policy::admission::{self, User};
use crate::policy::rate_limit::Api;
use crate::state::App;
use crate::transport::PeerAddr;

type Result<T, E = GatewayError> = std::result::Result<T, E>;

pub(crate) fn room_id(raw: &str) -> Result<RoomId> {
    RoomId::parse(raw).map_err(GatewayError::from)
}

pub(crate) fn path_err(e: PathRejection) -> GatewayError {
    GatewayError::bad_request(format!("invalid path: {}", e.body_text()))
}

pub(crate) use crate::policy::now_ms;

pub(crate) fn rfc3339_ms(ms: u64) -> Value {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .map_or(Value::Null, Value::String)
}

/// How long a client should wait before polling again.
pub fn poll_after_ms(st: &TicketStatus, cfg: Option<&RoomConfig>) -> u64 {
    if st.state != TicketState::Waiting {
        return 0;
    }
    let interval = cfg.map_or(1000, |c| c.tick_interval_ms);
    let batch = cfg.map_or(100, |c| c.batch_size as u64);
    match (st.position, st.eta) {
        (Some(p), _) if p <= batch.saturating_mul(2) => (interval / 2).clamp(1000, 5000),
        (_, Some(eta)) => (eta.seconds * 100).clamp(2000, 15_000),
        _ => 5000,
    }
}

/// Who may see a ticket's admission token: its cookie holder, or its bound user.
#[derive(Clone)]
pub struct Holder {
    /// The ticket secret, when the caller holds the ticket cookie (or is its bound user).
    pub secret: Option<Vec<u8>>,
    /// The ticket's bound user, when the caller is that user (the `sub` of its tokens;
    /// anonymous tickets get one derived from the ticket, made only when a token is).
    pub user: Option<String>,
    /// True when the caller proved ownership via a user JWT but has no cookie yet.
    pub needs_cookie: bool,
}

impl std::fmt::Debug for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Holder")
            .field("user", &self.user)
            .field("needs_cookie", &self.needs_cookie)
            .finish_non_exhaustive()
    }
}

/// The caller's claim on `st`: its ticket cookie, or `user` (already verified) being the
/// ticket's bound user. The cookie of a ticket a signed-in user joined is no claim without
/// that user: its admission is that account's alone, never re-issued as an anonymous one.
pub(crate) fn holder(
    app: &App,
    headers: &HeaderMap,
    st: &TicketStatus,
    user: Option<&str>,
) -> Option<Holder> {
    let bound_user = user.filter(|sub| admission::user_owner(sub).owner_hash() == st.owner);
    let cookie = app
        .cookies
        .ticket_cookie(headers, &st.room)
        .filter(|c| c.ticket == st.ticket && (!c.bound || bound_user.is_some()));
    let user = bound_user.map(str::to_owned);
    match (cookie, bound_user) {
        (Some(c), _) => Some(Holder { secret: Some(c.secret), user, needs_cookie: false }),
        (None, Some(_)) => Some(Holder {
            secret: Some(app.cookies.secret_for(&st.room, st.ticket, true)),
            user,
            needs_cookie: true,
        }),
        (None, None) => None,
    }
}

impl Holder {
    /// The `sub` of this holder's admission tokens for `ticket`.
    pub fn sub(&self, ticket: TicketId) -> String {
        token_sub(self.user.as_deref(), ticket)
    }
}

/// The `sub` of an admission token: the user, or an anonymous id derived from the ticket.
pub(crate) fn token_sub(user: Option<&str>, ticket: TicketId) -> String {
    user.map_or_else(|| format!("anon:{ticket}"), str::to_owned)
}

/// The ticket this browser's cookie holds, if it is still live (anonymous callers only: a
/// signed-in user's ticket is found by the store from the user). Marks it seen.
pub(crate) async fn existing_ticket(
    app: &App,
    headers: &HeaderMap,
    room: &RoomId,
    user: Option<&str>,
) -> Option<TicketStatus> {
    if user.is_some() {
        return None;
    }
    let ticket = app.cookies.ticket_cookie(headers, room).filter(|c| !c.bound)?.ticket;
    let st = app.polls.status(room, ticket).await.ok().filter(|s| s.state.is_live())?;
    if st.state == TicketState::Waiting {
        app.touches.mark(room, ticket);
    }
    Some(st)
}

/// Joins as `user` (or a fresh anonymous owner) and counts new tickets.
pub(crate) async fn join_new(
    app: &App,
    room: &RoomId,
    user: Option<&str>,
) -> Result<queue_core::JoinOutcome> {
    let owner: UserKey = match user {
        Some(sub) => admission::user_owner(sub),
        None => admission::anonymous_owner(),
    };
    let out = app.polls.store().join(room, &owner).await?;
    if out.created {
        app.metrics.tickets_joined.get_or_create(&Metrics::room(room.as_str())).inc();
    }
    Ok(out)
}

/// A signed admission for an admitted ticket: `(token, expires_at_ms)`.
pub(crate) fn admission_token(app: &App, st: &TicketStatus, h: &Holder) -> Result<Option<(String, u64)>> {
    let (TicketState::Admitted, Some(until), Some(secret)) = (st.state, st.admitted_until_ms, &h.secret)
    else {
        return Ok(None);
    };
    let cnf = queue_core::token::cnf_of(secret);
    let now_s = st.now_ms / 1000;
    let token = app
        .keys
        .sign(st.room.as_str(), &h.sub(st.ticket), &st.ticket.to_string(), &cnf, now_s, until / 1000)
        .map_err(|e| GatewayError::Internal(e.to_string()))?;
    Ok(Some((token, until)))
}

/// The JSON of a ticket (DESIGN §4), with the admission when `admission` is given. Written
/// by [`TicketBody::write_json`]; serde's derive is the reference its tests compare with.
#[derive(Debug)]
#[cfg_attr(test, derive(serde::Serialize))]
pub struct TicketBody<'a> {
    ticket: TicketId,
    room: &'a str,
    state: &'static str,
    position: Option<u64>,
    eta_seconds: Option<u64>,
    eta_range: Option<[u64; 2]>,
    poll_after_ms: u64,
    room_state: &'static str,
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    admission: Option<AdmissionBody<'a>>,
}

/// A ticket's `state` as the public contract names it: `waiting`, `admitted`, `expired` or
/// `dropped`. A ticket that left is `dropped` there (as in `waitingroom_dropped_total`, whose
/// reasons are `idle` and `left`): clients written against the contract know four states, and
/// for them both mean the same thing, out of the queue and free to join again.
pub(crate) fn public_state(state: TicketState) -> &'static str {
    match state {
        TicketState::Left => TicketState::Dropped.as_str(),
        other => other.as_str(),
    }
}

/// `admission` of a ticket body.
#[derive(Debug)]
#[cfg_attr(test, derive(serde::Serialize))]
pub struct AdmissionBody<'a> {
    token: &'a str,
    expires_at: Value,
}

impl<'a> TicketBody<'a> {
    /// The body of `st`.
    pub fn new(st: &'a TicketStatus, cfg: Option<&RoomConfig>, admission: Option<&'a (String, u64)>) -> Self {
        TicketBody {
            ticket: st.ticket,
            room: st.room.as_str(),
            state: public_state(st.state),
            position: st.position,
            eta_seconds: st.eta.map(|e| e.seconds),
            eta_range: st.eta.map(|e| [e.low_seconds, e.high_seconds]),
            poll_after_ms: poll_after_ms(st, cfg),
            room_state: st.phase.as_str(),
            admission: admission
                .map(|(token, until)| AdmissionBody { token, expires_at: rfc3339_ms(*until) }),
        }
    }

    /// Appends the body's JSON to `out`. By hand: serde_json escapes every key and string
    /// byte by byte and writes the ticket id through a formatter, a tenth of a poll's
    /// instructions (callgrind); here every field is known and only strings are checked.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"ticket\":\"");
        out.extend_from_slice(&self.ticket.to_hex());
        out.extend_from_slice(b"\",\"room\":");
        json_str(out, self.room);
        out.extend_from_slice(b",\"state\":");
        json_str(out, self.state);
        out.extend_from_slice(b",\"position\":");
        json_opt_u64(out, self.position);
        out.extend_from_slice(b",\"eta_seconds\":");
        json_opt_u64(out, self.eta_seconds);
        out.extend_from_slice(b",\"eta_range\":");
        match self.eta_range {
            Some([low, high]) => {
                out.push(b'[');
                push_decimal(out, low);
                out.push(b',');
                push_decimal(out, high);
                out.push(b']');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"poll_after_ms\":");
        push_decimal(out, self.poll_after_ms);
        out.extend_from_slice(b",\"room_state\":");
        json_str(out, self.room_state);
        if let Some(a) = &self.admission {
            out.extend_from_slice(b",\"admission\":{\"token\":");
            json_str(out, a.token);
            out.extend_from_slice(b",\"expires_at\":");
            match &a.expires_at {
                Value::String(t) => json_str(out, t),
                other => out.extend_from_slice(other.to_string().as_bytes()),
            }
            out.push(b'}');
        }
        out.push(b'}');
    }
}

/// A JSON string: copied as is when nothing in it needs escaping (ids, states, tokens and
/// times never do), else through serde_json.
fn json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

fn json_opt_u64(out: &mut Vec<u8>, n: Option<u64>) {
    match n {
        Some(n) => push_decimal(out, n),
        None => out.extend_from_slice(b"null"),
    }
}

/// Adds the cookies a holder should get: the ticket cookie and, when admitted, the token.
/// Whether a ticket cookie to set is for a ticket a signed-in user joined.
#[derive(Clone, Copy, Debug)]
struct Bound(bool);

fn with_cookies(
    mut resp: Response,
    app: &App,
    headers: &HeaderMap,
    st: &TicketStatus,
    set_ticket: Option<Bound>,
    admission: Option<&(String, u64)>,
) -> Response {
    let secure = admission::is_https(headers);
    let room = &st.room;
    if let Some(Bound(bound)) = set_ticket {
        let ttl = 24 * 3600;
        let v = admission::set_cookie(
            &admission::ticket_cookie_name(room),
            &app.cookies.cookie_value_for(room, st.ticket, bound),
            ttl,
            secure,
        );
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    if let Some((token, until)) = admission {
        let max_age = until.saturating_sub(st.now_ms) / 1000;
        let v = admission::set_cookie(&admission::admission_cookie_name(room), token, max_age, secure);
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp.headers_mut().insert(header::CACHE_CONTROL, "no-store".parse().expect("static header"));
    resp
}

pub(crate) fn limit(
    app: &App,
    api: Api,
    peer: Option<PeerAddr>,
    headers: &HeaderMap,
    user: Option<&str>,
) -> Result<()> {
    let ip = app.client_ip(peer, headers);
    app.limiters.check_request(api, ip, user).inspect_err(|_| {
        app.metrics.rate_limited.inc();
    })
}

pub(crate) fn known_user(app: &App, headers: &HeaderMap) -> Result<Option<String>> {
    match app.users.user(headers) {
        User::Invalid => {
            Err(GatewayError::client(StatusCode::UNAUTHORIZED, "invalid_token", "the user token is invalid"))
        }
        User::Known(sub) => Ok(Some(sub)),
        User::Anonymous => Ok(None),
    }
}

/// `POST /api/v1/rooms/{room}/tickets`
pub async fn join(
    State(app): State<Arc<App>>,
    peer: Option<axum::Extension<PeerAddr>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response> {
    let room = room_id(&path.map_err(path_err)?.0)?;
    let user = known_user(&app, &headers)?;
    limit(&app, Api::Join, peer.map(|p| p.0), &headers, user.as_deref())?;
    let cfg = app.rooms.get(&room);
    // An anonymous browser that already holds a live ticket gets it back.
    if let Some(st) = existing_ticket(&app, &headers, &room, user.as_deref()).await {
        return respond_ticket(&app, &headers, st, cfg.as_ref(), user.as_deref(), StatusCode::OK, false);
    }
    let out = join_new(&app, &room, user.as_deref()).await?;
    let status = if out.created { StatusCode::CREATED } else { StatusCode::OK };
    respond_ticket(&app, &headers, out.status, cfg.as_ref(), user.as_deref(), status, true)
}

fn respond_ticket(
    app: &App,
    headers: &HeaderMap,
    st: TicketStatus,
    cfg: Option<&RoomConfig>,
    user: Option<&str>,
    code: StatusCode,
    set_ticket: bool,
) -> Result<Response> {
    // The joiner holds the ticket: it may see the admission (free passes) right away.
    let holder = Holder {
        secret: Some(app.cookies.secret_for(&st.room, st.ticket, user.is_some())),
        user: user.map(str::to_owned),
        needs_cookie: true,
    };
    let admission = admission_token(app, &st, &holder)?;
    let body = TicketBody::new(&st, cfg, admission.as_ref());
    let resp = ticket_json(code, &body);
    let set_ticket = set_ticket.then_some(Bound(user.is_some()));
    Ok(with_cookies(resp, app, headers, &st, set_ticket, admission.as_ref()))
}

fn ids(raw: Result<Path<(String, String)>, PathRejection>) -> Result<(RoomId, TicketId)> {
    let Path((room, ticket)) = raw.map_err(path_err)?;
    Ok((room_id(&room)?, TicketId::parse(&ticket)?))
}

/// `GET /api/v1/rooms/{room}/tickets/{ticket}`, through the router (paths with
/// percent-escapes; the rest come by [`status_past_router`]).
pub async fn status(
    State(app): State<Arc<App>>,
    peer: Option<axum::Extension<PeerAddr>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response> {
    let (room, ticket) = ids(path)?;
    status_of(&app, peer.map(|p| p.0), &headers, room, ticket).await
}

/// The ids of a status poll that need not go through the router: a GET whose room and
/// ticket segments are plain (a percent-escape goes through the router, which decodes it).
/// `None`: route it.
pub fn plain_status_ids(method: &Method, room: &str, ticket: &str) -> Option<Result<(RoomId, TicketId)>> {
    let plain = |seg: &str| !seg.is_empty() && !seg.contains('%');
    if method != Method::GET || !plain(room) || !plain(ticket) {
        return None;
    }
    Some(room_id(room).and_then(|r| Ok((r, TicketId::parse(ticket)?))))
}

/// A status poll taken past the router, with the ids [`plain_status_ids`] read. Polls are
/// the busiest route after forwarding, and the router's matching, path extraction, copied
/// headers and per-request boxes (some 20 allocations) cost more than the rest of a poll
/// answered from memory.
pub async fn status_past_router(app: &App, req: Request, ids: Result<(RoomId, TicketId)>) -> Response {
    let peer = req.extensions().get::<PeerAddr>().copied();
    let (parts, _) = req.into_parts();
    status_answer(app, peer, &parts.headers, ids).await
}

/// A status poll's answer from its ids (as [`plain_status_ids`] read them) and headers.
pub(crate) async fn status_answer(
    app: &App,
    peer: Option<PeerAddr>,
    headers: &HeaderMap,
    ids: Result<(RoomId, TicketId)>,
) -> Response {
    let answer = match ids {
        Ok((room, ticket)) => status_of(app, peer, headers, room, ticket).await,
        Err(e) => Err(e),
    };
    answer.unwrap_or_else(IntoResponse::into_response)
}

async fn status_of(
    app: &App,
    peer: Option<PeerAddr>,
    headers: &HeaderMap,
    room: RoomId,
    ticket: TicketId,
) -> Result<Response> {
    let user = known_user(app, headers)?;
    limit(app, Api::Status, peer, headers, user.as_deref())?;
    let st = app.polls.status(&room, ticket).await?;
    let holder = holder(app, headers, &st, user.as_deref());
    if holder.is_some() && st.state == TicketState::Waiting {
        // A holder's poll keeps the ticket seen (others' polls do not).
        app.touches.mark(&room, ticket);
    }
    let admission = match &holder {
        Some(h) => admission_token(app, &st, h)?,
        None => None,
    };
    // The config is read in place (a copy costs allocations on every poll).
    let rooms = app.rooms.snapshot();
    let body = TicketBody::new(&st, rooms.rooms.get(&room), admission.as_ref());
    let resp = ticket_json(StatusCode::OK, &body);
    let set_ticket = holder.as_ref().filter(|h| h.needs_cookie).map(|h| Bound(h.user.is_some()));
    Ok(with_cookies(resp, app, headers, &st, set_ticket, admission.as_ref()))
}

/// A ticket's JSON answer, written straight into a buffer that holds it (axum's `Json`
/// starts at 128 bytes, a ticket's answer is longer, and it writes through an adapter that
/// checks capacity at every token; this runs on every poll).
fn ticket_json(status: StatusCode, body: &TicketBody<'_>) -> Response {
    let mut buf = Vec::with_capacity(384);
    body.write_json(&mut buf);
    let mut resp = Response::new(axum::body::Body::from(buf));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// `DELETE /api/v1/rooms/{room}/tickets/{ticket}`
pub async fn leave(
    State(app): State<Arc<App>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response> {
    let (room, ticket) = ids(path)?;
    let user = known_user(&app, &headers)?;
    let store = app.polls.store();
    let st = store.status(&room, ticket).await?;
    if holder(&app, &headers, &st, user.as_deref()).is_none() {
        return Err(GatewayError::client(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only the ticket's holder may leave with it",
        ));
    }
    let before = store.leave(&room, ticket).await?;
    if before == TicketState::Admitted
        && let Some(until) = st.admitted_until_ms
    {
        // Refused here at once; other gateways within a second ([`crate::background::rooms`]).
        app.revoked.add(&room, [(ticket, until)]);
    }
    if before.is_live() {
        app.metrics.dropped.get_or_create(&DropLabel { room: room.to_string(), reason: "left" }).inc();
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let secure = admission::is_https(&headers);
    for name in [admission::ticket_cookie_name(&room), admission::admission_cookie_name(&room)] {
        resp.headers_mut().append(header::SET_COOKIE, admission::set_cookie(&name, "", 0, secure));
    }
    Ok(resp)
}

/// `GET /api/v1/rooms/{room}`
pub async fn room_state(
    State(app): State<Arc<App>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response> {
    let room = room_id(&path.map_err(path_err)?.0)?;
    let st = app.store.stats(&room).await?;
    let body = json!({
        "room": room.as_str(),
        "state": st.phase.as_str(),
        "waiting": st.waiting,
        "active": st.active,
        "admitted_per_minute": (st.admitted_per_minute * 10.0).round() / 10.0,
        "opens_at": st.opens_at_ms.map_or(Value::Null, rfc3339_ms),
    });
    Ok(Json(body).into_response())
}

#[cfg(test)]
mod tests {
    use queue_core::eta::Eta;
    use queue_core::{OwnerHash, RoomPhase};

    use super::*;

    fn status(state: TicketState, position: Option<u64>, eta: Option<Eta>, phase: RoomPhase) -> TicketStatus {
        TicketStatus {
            ticket: TicketId::new(0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210),
            room: RoomId::parse("spring-sale-2").unwrap(),
            state,
            position,
            eta,
            owner: OwnerHash::of("someone"),
            admitted_until_ms: None,
            joined_at_ms: 1,
            phase,
            now_ms: 2,
        }
    }

    #[test]
    fn tickets_show_the_contracts_four_states() {
        let shown = |state| {
            let st = status(state, None, None, RoomPhase::Open);
            let mut out = Vec::new();
            TicketBody::new(&st, None, None).write_json(&mut out);
            serde_json::from_slice::<serde_json::Value>(&out).unwrap()["state"].as_str().unwrap().to_owned()
        };
        let all = [
            TicketState::Waiting,
            TicketState::Admitted,
            TicketState::Expired,
            TicketState::Left,
            TicketState::Dropped,
        ];
        let shown: Vec<String> = all.into_iter().map(shown).collect();
        assert_eq!(shown, ["waiting", "admitted", "expired", "dropped", "dropped"]);
    }

    #[test]
    fn hand_written_ticket_json_is_serdes() {
        let eta = Some(Eta { seconds: 90, low_seconds: 60, high_seconds: 120 });
        let cfg = RoomConfig::default();
        let statuses = [
            status(TicketState::Waiting, Some(1), eta, RoomPhase::Open),
            status(TicketState::Waiting, Some(u64::MAX), None, RoomPhase::Paused),
            status(TicketState::Waiting, None, None, RoomPhase::Scheduled),
            status(TicketState::Admitted, None, None, RoomPhase::Open),
            status(TicketState::Dropped, None, None, RoomPhase::Open),
        ];
        let token = ("eyJhbGciOiJIUzI1NiJ9.e30.sig-_0".to_owned(), 1_700_000_000_123);
        // Strings that need escaping take serde_json's path; a time that cannot be shown is null.
        let odd_token = ("a\"b\\c\n\u{1}é".to_owned(), u64::MAX);
        for st in &statuses {
            for cfg in [None, Some(&cfg)] {
                for admission in [None, Some(&token), Some(&odd_token)] {
                    let body = TicketBody::new(st, cfg, admission);
                    let mut ours = Vec::new();
                    body.write_json(&mut ours);
                    let want = serde_json::to_vec(&body).unwrap();
                    assert_eq!(String::from_utf8(ours).unwrap(), String::from_utf8(want).unwrap());
                }
            }
        }
    }
}
