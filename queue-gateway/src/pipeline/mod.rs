//! A request's path through the gateway, written once, in order. Both ways in feed it: the
//! lane (requests of the common HTTP/1.1 shape, [`Gateway::lane`]) and hyper (everything else:
//! h2c, chunked or large bodies, [`Gateway::service`]). The trust decision ([`decide`]) exists
//! here only; the lane and hyper differ in codec, not in rules (the relay's bytes or hyper's
//! client, and the lane bounds a relayed request by the upstream timeout on its own timer).
//!
//! # Phases, in the order a request meets them
//! 1. **Screen** ([`screen::screen`]), every request: refused methods, `Connection` naming
//!    end-to-end headers, underscored names, the canonical path written into the URI so that
//!    every later phase and the backend read one path. Refused: `400`/`405`, the connection
//!    closed (on h2c, the stream).
//! 2. **Route** ([`crate::api::route`]): the gateway's own routes ([`crate::api::ROUTES`]) go to
//!    their handlers (status polls past the router); anything else is proxied, phases 3–8.
//! 3. **Replay marker** ([`gate::check_marker`]): a request that carries one must carry a
//!    valid one (`403` otherwise); a valid one skips phase 5.
//! 4. **Admission** ([`admit`]): under a room's protected prefixes, an admission token bound to
//!    the caller's ticket (`403 not_admitted`, or `303` to the waiting page for browsers);
//!    elsewhere nothing. The token checked is the one passed on.
//! 5. **Gate** ([`gated`]): under a gate's prefixes, a permit, a hold, the log (`202`) or `503`.
//! 6. **Upstream request** ([`forward::ForwardPlan`]): what the backend receives instead of the
//!    client's head (headers dropped, added and overwritten); rendered by hyper's client
//!    ([`forward`]) or as bytes by the relay ([`relay`]) from the same plan.
//! 7. **Response** ([`crate::http1::response_keeps`], [`crate::http1::client`]): the backend's head
//!    read strictly (ambiguous framing, an unasked `101`, a head over 64 KiB: `502`), hop-by-hop
//!    headers out; no answer in time: `504`; connections reused only when clean
//!    ([`crate::upstream`]).
//! 8. **Logging**: `waitingroom_http_requests_total` and duration by route and status, the
//!    upstream's duration; errors logged once, where they become a status ([`crate::error`]).
//!
//! # Layout
//! - this module: the phases' driver ([`Gateway`], [`decide`], [`admit`]).
//! - [`forward`]: the upstream request plan, and forwarding through hyper's client.
//! - [`relay`]: the lane's forwarding, byte for byte over kept-alive sockets.
//! - [`gated`]: requests under a gate: permits, holds, the log.

pub mod forward;
pub mod gated;
pub mod relay;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tower::ServiceExt;

use crate::api::{self, PROXIED_ROUTE, ROUTES, STATUS_ROUTE};
use crate::error::GatewayError;
use crate::policy::gate::{self, Gate};
use crate::policy::{admission, screen};
use crate::state::App;
use crate::transport::{Conn, Handler, PeerAddr, Served};

/// The gateway as the transport sees it: the phases above behind [`Handler`].
#[derive(Clone)]
pub struct Gateway<S> {
    app: Arc<App>,
    svc: S,
}

impl<S> std::fmt::Debug for Gateway<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

/// The gateway's handler for the transport.
pub fn gateway(app: Arc<App>) -> Gateway<impl Served + Sync> {
    Gateway { svc: service(app.clone()), app }
}

impl<S: Served + Sync> Handler for Gateway<S> {
    type Service = S;

    fn service(&self) -> S {
        self.svc.clone()
    }

    /// An event stream's path, as received and once canonical: a path only shaped like one
    /// (`/api/v1/rooms/../../book/x/events`) is a request like any other, under the request
    /// timeout.
    fn is_stream(&self, path: &[u8]) -> bool {
        api::is_events_path(path)
            && std::str::from_utf8(path)
                .ok()
                .and_then(|p| screen::canonical_path(p).ok())
                .is_some_and(|p| api::is_events_path(p.as_bytes()))
    }

    async fn lane<'a>(&'a self, mut req: Request<()>, body: Bytes, mut conn: Conn<'a, S>) -> bool {
        let app = &*self.app;
        if let Err(refused) = screen::screen(&mut req) {
            conn.close = true;
            conn.answer(refused.into_response(), false).await;
            return false;
        }
        let (index, segs) = api::route(req.uri().path());
        if index == PROXIED_ROUTE {
            return proxied_lane(app, req, body, conn).await;
        }
        if let Some(ids) = api::plain_poll(req.method(), index, &segs) {
            let answer = poll_lane(app, &req, ids, &mut conn).await;
            return conn.answer(answer, false).await;
        }
        let head_only = req.method() == Method::HEAD;
        // The screened path: an escaped stream path is a stream too, held to no timeout.
        let streaming = self.is_stream(req.uri().path().as_bytes());
        let mut req = req.map(|()| if body.is_empty() { Body::empty() } else { Body::from(body) });
        req.extensions_mut().insert(PeerAddr(conn.peer));
        req.extensions_mut().insert(Routed(index));
        let resp = conn.dispatch(self.svc.clone(), req, streaming).await;
        conn.answer(resp, head_only).await
    }
}

/// The gateway as one service (hyper's way in, and event streams): screen → route → proxied
/// requests to [`proxied`], status polls past the router, the rest through the router. The
/// request's metrics are recorded here.
pub fn service(app: Arc<App>) -> impl Served + Sync {
    let router = api::router(app.clone(), proxied_fallback);
    tower::service_fn(move |mut req: Request| {
        let (app, router) = (app.clone(), router.clone());
        async move {
            let started = Instant::now();
            let (index, poll) = match req.extensions_mut().remove::<Routed>() {
                // The lane screened and routed it, and answered it itself had it been a plain
                // poll: not again.
                Some(Routed(index)) => (index, None),
                None => {
                    if let Err(refused) = screen::screen(&mut req) {
                        return Ok::<_, Infallible>(refused.into_response());
                    }
                    let (index, segs) = api::route(req.uri().path());
                    (index, api::plain_poll(req.method(), index, &segs))
                }
            };
            // The proxy's and the router's futures are boxed: inline, they made every
            // request's future 3.5 KiB, an allocation too large for malloc's per-thread
            // cache (and one that consolidates its free lists) even for a status poll.
            let resp = if index == PROXIED_ROUTE {
                Box::pin(proxied(&app, req)).await
            } else if let Some(ids) = poll {
                api::room::status_past_router(&app, req, ids).await
            } else {
                Box::pin(router.oneshot(req)).await.unwrap_or_else(|never| match never {})
            };
            let code = resp.status().as_u16();
            app.metrics.request_done(index, ROUTES[index].0, code, started.elapsed().as_secs_f64());
            Ok(resp)
        }
    })
}

/// Phases 1 and 2 done on the lane for a request it hands the service: the route's index.
/// (An extension, set by the gateway only: no client can send one.)
#[derive(Clone, Copy, Debug)]
struct Routed(usize);

/// The router's fallback: a request the route table took for one of ours that no handler
/// serves is proxied as any other.
async fn proxied_fallback(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
    req: Request,
) -> Response {
    proxied(&app, req).await
}

/// What the trust decision (phases 3–5) says of a proxied request.
pub(crate) enum Decision {
    /// Refused before the backend: this is the answer.
    Refuse(Box<Response>),
    /// Under a gate; the admission token to pass on.
    Gate(Arc<Gate>, Option<HeaderValue>),
    /// Straight to the backend; the admission token to pass on.
    Forward(Option<HeaderValue>),
}

/// Phases 3–5 for a screened request head: the one place the gateway decides what may reach
/// the backend. `Err`: a forged replay marker.
pub(crate) fn decide(app: &App, head: &Parts) -> Result<Decision, GatewayError> {
    debug_assert!(
        matches!(screen::canonical_path(head.uri.path()), Ok(std::borrow::Cow::Borrowed(_))),
        "an unscreened request reached the trust decision: {}",
        head.uri
    );
    let replayed = gate::check_marker(&app.gate_secret, head)?;
    let token = match admit(app, &head.uri, &head.headers) {
        Ok(token) => token,
        Err(refused) => return Ok(Decision::Refuse(refused)),
    };
    if !replayed && let Some(gate) = app.gates.find(head.uri.path()) {
        return Ok(Decision::Gate(gate, token));
    }
    Ok(Decision::Forward(token))
}

/// Phase 4: on a room's protected prefixes, a valid admission token bound to the caller's
/// ticket cookie, passed on to the backend (`Ok(Some)`); elsewhere nothing to check
/// (`Ok(None)`). `Err` is the answer for a caller not admitted.
pub(crate) fn admit(app: &App, uri: &Uri, headers: &HeaderMap) -> Result<Option<HeaderValue>, Box<Response>> {
    let snapshot = app.rooms.snapshot();
    let Some(room) = snapshot.protecting(uri.path()) else { return Ok(None) };
    let checked =
        admission::check_admitted(&app.keys, &app.cookies, &app.admitted, &app.revoked, headers, room);
    let result = checked.as_ref().map_or_else(|reason| *reason, |_| "ok");
    app.metrics.token_checked(result);
    match checked {
        Ok(admitted) => Ok(Some(admitted.header)),
        Err(_) => Err(Box::new(api::page::not_admitted(room, uri, headers))),
    }
}

/// A proxied request on hyper's way in: phases 3–8.
pub(crate) async fn proxied(app: &App, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let decided = decide(app, &parts);
    finish(app, decided, Request::from_parts(parts, body)).await
}

/// Phases 5–7 once decided, through hyper's client.
async fn finish(app: &App, decided: Result<Decision, GatewayError>, req: Request) -> Response {
    let answered = match decided {
        Err(e) => Err(e),
        Ok(Decision::Refuse(answer)) => return *answer,
        Ok(Decision::Gate(gate, token)) => gated::handle(app, gate, req, token).await,
        Ok(Decision::Forward(token)) => forward::forward(app, req, token).await,
    };
    answered.unwrap_or_else(IntoResponse::into_response)
}

/// A proxied request on the lane: the same decision; a request going straight to the backend
/// is relayed byte for byte, anything else finished as on hyper's way in, bounded by the
/// connection's timer.
async fn proxied_lane<S: Served>(app: &App, req: Request<()>, body: Bytes, mut conn: Conn<'_, S>) -> bool {
    let started = Instant::now();
    let head_only = req.method() == Method::HEAD;
    let (parts, ()) = req.into_parts();
    let resp = match decide(app, &parts) {
        Ok(Decision::Forward(token)) => {
            match relay::forward(app, &parts, &body, token.as_ref(), &mut conn, started).await {
                Ok(kept) => return kept,
                Err(e) => e.into_response(),
            }
        }
        decided => {
            let mut req = Request::from_parts(parts, Body::from(body));
            req.extensions_mut().insert(PeerAddr(conn.peer));
            conn.within_timeout(finish(app, decided, req)).await
        }
    };
    let code = resp.status().as_u16();
    app.metrics.request_done(PROXIED_ROUTE, ROUTES[PROXIED_ROUTE].0, code, started.elapsed().as_secs_f64());
    conn.answer(resp, head_only).await
}

/// A status poll on the lane, answered as the service would answer it past its router (the
/// busiest route after forwarding: the service's layers, a second look at the route and a
/// timer of its own were a sixth of a poll answered from memory). Bounded by the
/// connection's timer, as the service bounds a request.
async fn poll_lane<S: Served>(
    app: &App,
    req: &Request<()>,
    ids: Result<(queue_core::RoomId, queue_core::TicketId), GatewayError>,
    conn: &mut Conn<'_, S>,
) -> Response {
    let started = Instant::now();
    let peer = Some(PeerAddr(conn.peer));
    // Raced here, not through `Conn::within_timeout`: moving the poll's future into another
    // cost each poll ~350 instructions (callgrind).
    conn.timer.as_mut().reset(tokio::time::Instant::now() + conn.request_timeout);
    let resp = tokio::select! {
        biased;
        resp = api::room::status_answer(app, peer, req.headers(), ids) => resp,
        _ = conn.timer.as_mut() => crate::transport::timed_out(),
    };
    let code = resp.status().as_u16();
    app.metrics.request_done(STATUS_ROUTE, ROUTES[STATUS_ROUTE].0, code, started.elapsed().as_secs_f64());
    resp
}
