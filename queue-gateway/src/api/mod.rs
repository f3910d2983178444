//! The gateway's own HTTP API: the waiting room (join, status, leave, streams, the waiting
//! page), the overload gate's polls, the admin API and console, keys, metrics and health. Every
//! route is in one table, [`ROUTES`]: the router is built from it, [`route`] reads it for the
//! pipeline and the metrics' labels are its paths.
//!
//! # Layout
//! - this module: the route table, the router, the small handlers (JWKS, metrics, health).
//! - [`room`]: join, status, leave, room state; [`polls`]: status reads coalesced per store
//!   round trip; [`sse`]: live updates; [`page`]: the waiting page and browser errors.
//! - [`gates`]: `GET /api/v1/gate/{offset}`, a logged request's answer.
//! - [`admin`]: the admin API; [`console`]: the ops console page at `/admin/`.

pub mod admin;
pub mod console;
pub mod gates;
pub mod page;
pub mod polls;
pub mod room;
pub mod sse;

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};

use crate::error::{self, GatewayError};
use crate::state::App;

/// The gateway's own routes, by index: the path (axum's syntax; also the metrics' `route`
/// label) and its handlers. Index 0 is everything else: the proxy.
#[allow(clippy::type_complexity)]
pub(crate) const ROUTES: [(&str, fn() -> MethodRouter<Arc<App>>); 17] = [
    ("proxy", MethodRouter::new),
    ("/api/v1/rooms/{room}/tickets", || post(room::join)),
    ("/api/v1/rooms/{room}/tickets/{ticket}", || get(room::status).delete(room::leave)),
    ("/api/v1/rooms/{room}/tickets/{ticket}/events", || get(sse::events)),
    ("/api/v1/rooms/{room}", || get(room::room_state)),
    ("/rooms/{room}", || get(page::page)),
    ("/.well-known/jwks.json", || get(jwks)),
    ("/metrics", || get(metrics_text)),
    ("/healthz", || get(healthz)),
    ("/readyz", || get(readyz)),
    ("/admin/v1/rooms", || get(admin::list)),
    ("/admin/v1/rooms/{room}", || get(admin::get).put(admin::put).delete(admin::delete)),
    ("/admin/v1/rooms/{room}/{action}", || post(admin::action)),
    ("/api/v1/gate/{offset}", || get(gates::poll)),
    ("/admin/", || get(console::page)),
    ("/admin/v1/gates", || get(admin::list_gates)),
    ("/admin/v1/gates/{gate}", || get(admin::get_gate).put(admin::put_gate).delete(admin::delete_gate)),
];
const _: () = assert!(ROUTES.len() <= crate::metrics::MAX_ROUTES);
/// Everything that is not the gateway's own.
pub(crate) const PROXIED_ROUTE: usize = 0;
/// Status polls (GET) and leaves (DELETE).
pub(crate) const STATUS_ROUTE: usize = 2;

/// The routes by their number of segments: each route's index and its path as segments,
/// `None` where a `{parameter}` takes any segment (routes 1..).
#[allow(clippy::type_complexity)]
static PATTERNS: LazyLock<[Vec<(usize, Vec<Option<&'static str>>)>; 9]> = LazyLock::new(|| {
    let mut by_len: [Vec<(usize, Vec<Option<&'static str>>)>; 9] = Default::default();
    for (index, (path, _)) in ROUTES.iter().enumerate().skip(1) {
        let segs: Vec<_> = path
            .trim_start_matches('/')
            .split('/')
            .map(|seg| if seg.starts_with('{') { None } else { Some(seg) })
            .collect();
        by_len[segs.len()].push((index, segs));
    }
    by_len
});

/// The router of the gateway's own routes ([`ROUTES`]); anything else goes to `fallback`.
pub fn router<H, T>(app: Arc<App>, fallback: H) -> Router
where
    H: axum::handler::Handler<T, Arc<App>>,
    T: 'static,
{
    let api = ROUTES[1..]
        .iter()
        .fold(Router::new(), |r, (path, handlers)| r.route(path, handlers()))
        .layer(DefaultBodyLimit::max(queue_core::config::limits::MAX_BODY_BYTES));
    Router::new()
        .merge(api)
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app)
}

async fn method_not_allowed() -> Response {
    error::error_body(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this path")
}

/// A ticket's event stream path (`/api/v1/rooms/{room}/tickets/{ticket}/events`): it runs
/// as long as the ticket waits, so no request timeout applies to it.
pub(crate) fn is_events_path(path: &[u8]) -> bool {
    path.starts_with(b"/api/v1/rooms/") && path.ends_with(b"/events")
}

/// The route of `path` as an index into [`ROUTES`], and the path's first segments (what a
/// route's handler reads its ids from, so the path is split once).
pub(crate) fn route(path: &str) -> (usize, [&str; 8]) {
    // No allocation, and no `split`: this runs on every request (twice for the gateway's
    // own routes). A `str` searcher per segment, a byte loop and `position` all cost 6 to 15
    // instructions a byte (callgrind), memchr ~45 per `/`; `slash_mask` finds them all in
    // a few instructions per eight bytes.
    let mut segs = [""; 8];
    let mut n = 0;
    let rest = &path[path.bytes().position(|b| b != b'/').unwrap_or(path.len())..];
    let mut start = 0;
    for (c, chunk) in rest.as_bytes().chunks(64).enumerate() {
        let mut mask = slash_mask(chunk);
        while mask != 0 {
            let i = c * 64 + mask.trailing_zeros() as usize;
            mask &= mask - 1;
            if n == segs.len() {
                return (PROXIED_ROUTE, segs);
            }
            segs[n] = &rest[start..i];
            n += 1;
            start = i + 1;
        }
    }
    if n == segs.len() {
        return (PROXIED_ROUTE, segs);
    }
    segs[n] = &rest[start..];
    n += 1;
    let segs_n = &segs[..n];
    let matches = |p: &[Option<&str>]| p.iter().zip(segs_n).all(|(p, s)| p.is_none_or(|p| p == *s));
    let index = PATTERNS[n].iter().find(|(_, p)| matches(p)).map_or(PROXIED_ROUTE, |(i, _)| *i);
    (index, segs)
}

/// The ids of a status poll that can skip the router ([`room::plain_status_ids`]), given
/// its route.
pub(crate) fn plain_poll(
    method: &axum::http::Method,
    index: usize,
    segs: &[&str; 8],
) -> Option<Result<(queue_core::RoomId, queue_core::TicketId), GatewayError>> {
    (index == STATUS_ROUTE).then(|| room::plain_status_ids(method, segs[3], segs[5])).flatten()
}

/// Bit `i` set where `chunk[i]` is `/` (`chunk` at most 64 bytes), found eight bytes at a
/// time in a word (memchr costs ~45 instructions per `/` found on paths this short).
fn slash_mask(chunk: &[u8]) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let mut block = [0u8; 64];
    block[..chunk.len()].copy_from_slice(chunk);
    let mut mask = 0u64;
    for (w, word) in block.chunks_exact(8).take(chunk.len().div_ceil(8)).enumerate() {
        let x = u64::from_le_bytes(word.try_into().unwrap_or_default()) ^ u64::from_le_bytes([b'/'; 8]);
        // The high bit of each byte that is zero (a `/`), exactly: no borrow crosses bytes.
        let zero = !(((x & LOW7) + LOW7) | x | LOW7);
        // Gathers the eight high bits into the top byte, byte j's as bit j.
        let bits = (zero >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56;
        mask |= bits << (8 * w);
    }
    mask
}

async fn jwks(State(app): State<Arc<App>>) -> Response {
    let mut r = axum::Json(app.keys.jwks()).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=60"));
    r
}

async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    let mut r = app.metrics.encode().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    r
}

async fn healthz() -> Response {
    axum::Json(serde_json::json!({"status": "ok"})).into_response()
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    match tokio::time::timeout(Duration::from_secs(2), app.store.ping()).await {
        Ok(Ok(())) => axum::Json(serde_json::json!({"status": "ready"})).into_response(),
        _ => error::error_body(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unreachable",
            "the store does not answer",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_outside_the_routes_go_straight_to_the_proxy() {
        // Every route of `router` with the label its metrics carry (the fast paths must never
        // take one of them, and the numbered table must name each as the router does).
        for (path, label) in [
            ("/api/v1/rooms/r/tickets", "/api/v1/rooms/{room}/tickets"),
            ("/api/v1/rooms/r/tickets/t", "/api/v1/rooms/{room}/tickets/{ticket}"),
            ("/api/v1/rooms/r/tickets/t/events", "/api/v1/rooms/{room}/tickets/{ticket}/events"),
            ("/api/v1/rooms/r", "/api/v1/rooms/{room}"),
            ("/rooms/r", "/rooms/{room}"),
            ("/.well-known/jwks.json", "/.well-known/jwks.json"),
            ("/metrics", "/metrics"),
            ("/healthz", "/healthz"),
            ("/readyz", "/readyz"),
            ("/admin/", "/admin/"),
            ("/admin/v1/rooms", "/admin/v1/rooms"),
            ("/admin/v1/rooms/r", "/admin/v1/rooms/{room}"),
            ("/admin/v1/rooms/r/pause", "/admin/v1/rooms/{room}/{action}"),
            ("/admin/v1/rooms/r/resume", "/admin/v1/rooms/{room}/{action}"),
            ("/admin/v1/rooms/r/admit", "/admin/v1/rooms/{room}/{action}"),
            ("/api/v1/gate/1", "/api/v1/gate/{offset}"),
            ("/admin/v1/gates", "/admin/v1/gates"),
            ("/admin/v1/gates/g", "/admin/v1/gates/{gate}"),
        ] {
            assert_eq!(ROUTES[route(path).0].0, label, "{path}");
        }
        let (index, segs) = route("/api/v1/rooms/r/tickets/t");
        assert_eq!((index, segs[3], segs[5]), (STATUS_ROUTE, "r", "t"), "the ids a poll is read from");
        for path in
            ["/", "/book/1", "/api/v1/concerts", "/api/v1/rooms/r/tickets/t/events/x", "/a/b/c/d/e/f/g/h/i"]
        {
            assert_eq!(route(path).0, PROXIED_ROUTE, "{path}");
        }
        // Slashes are found in any bytes, past the first 64 too.
        let mut seed = 7u64;
        for len in 0..=130 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed =
                        seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                    [b'/', b'.', b'0', 0x00, 0xff, 0xaf, b'/' + 1][(seed >> 33) as usize % 7]
                })
                .collect();
            for (c, chunk) in bytes.chunks(64).enumerate() {
                let want = chunk.iter().enumerate().fold(0u64, |m, (i, &b)| m | (u64::from(b == b'/') << i));
                assert_eq!(slash_mask(chunk), want, "length {len}, chunk {c}");
            }
        }
        // The segments are `split('/')`'s after the leading slashes, up to eight.
        let long = format!("/{}/{}/x", "a".repeat(62), "b".repeat(70));
        for path in ["", "/", "//a", "/a/", "/a//b", "a/b", "/a/b/c/d/e/f/g/h", "/é/ü", &long] {
            let want: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            let (_, segs) = route(path);
            assert_eq!(&segs[..want.len()], &want[..], "{path:?}");
            assert!(segs[want.len()..].iter().all(|s| s.is_empty()), "{path:?}");
        }
    }
}
