//! Everything not served by the gateway itself: the protection check on rooms' prefixes,
//! then the reverse proxy to the backend over kept-alive connections ([`crate::pipeline::upstream`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, HttpBody as _};
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::uri::{Authority, PathAndQuery};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use http_body_util::Limited;
use queue_core::RoomId;

use crate::error::{GatewayError, UpstreamFailure, error_body};
use crate::pipeline::upstream::{Connections, UpstreamError};
use crate::policy::admission::{self, ADMISSION_HEADER};
use crate::state::{App, PeerAddr};

/// The backend: its base URL and the connections to it.
#[derive(Debug, Clone)]
pub struct Upstream {
    connections: Arc<Connections>,
    authority: Authority,
    /// `Host` for the backend.
    host: HeaderValue,
    base_path: String,
    timeout: Duration,
    max_body: usize,
}

impl Upstream {
    /// The backend at `base` (`http://host:port[/prefix]`), with idle connections kept for
    /// each of `workers` serving threads.
    pub fn new(base: &str, timeout: Duration, max_body: usize, workers: usize) -> Result<Self, GatewayError> {
        let uri: Uri = base.parse().map_err(|_| GatewayError::Internal(format!("bad upstream {base:?}")))?;
        let authority =
            uri.authority().cloned().ok_or_else(|| GatewayError::Internal("upstream has no host".into()))?;
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|_| GatewayError::Internal(format!("bad upstream host in {base:?}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(GatewayError::Internal(format!("upstream {base:?} is not http://")));
        }
        let addr = match authority.port_u16() {
            Some(_) => authority.as_str().to_owned(),
            None => format!("{}:80", authority.as_str()),
        };
        Ok(Upstream {
            connections: Arc::new(Connections::new(addr, workers)),
            authority,
            host,
            base_path: uri.path().trim_end_matches('/').to_owned(),
            timeout,
            max_body,
        })
    }

    /// `host:port` of the backend.
    pub fn authority(&self) -> &str {
        self.authority.as_str()
    }

    /// How long the backend gets to answer.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(crate) fn connections(&self) -> &Connections {
        &self.connections
    }

    /// `Host` for the backend.
    pub(crate) fn host(&self) -> &HeaderValue {
        &self.host
    }

    /// Largest request body passed on.
    pub(crate) fn max_body(&self) -> usize {
        self.max_body
    }

    /// The backend's request target (origin-form, `/prefix/path?query`) for a client's URI.
    pub(crate) fn uri_for(&self, original: &Uri) -> Result<Uri, GatewayError> {
        let refused = || GatewayError::bad_request("the request path cannot be forwarded");
        let path_and_query = match (self.base_path.as_str(), original.path_and_query()) {
            ("", Some(pq)) => pq.clone(),
            (base, pq) => {
                let pq = pq.map_or("/", |pq| pq.as_str());
                PathAndQuery::try_from(format!("{base}{pq}")).map_err(|_| refused())?
            }
        };
        Ok(Uri::from(path_and_query))
    }
}

/// True when `Accept` prefers HTML over JSON (browsers navigating).
pub fn prefers_html(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else { return false };
    let q = |wanted: &str| -> Option<(f32, usize)> {
        accept.split(',').enumerate().find_map(|(i, part)| {
            let mut it = part.split(';');
            let media = it.next()?.trim();
            if media != wanted {
                return None;
            }
            let q = it.find_map(|p| p.trim().strip_prefix("q=")).and_then(|v| v.parse().ok()).unwrap_or(1.0);
            Some((q, i))
        })
    };
    match (q("text/html"), q("application/json")) {
        (Some((h, _)), None) => h > 0.0,
        (Some((h, hi)), Some((j, ji))) => h > j || (h == j && hi < ji),
        _ => false,
    }
}

fn not_admitted(room: &RoomId, uri: &Uri, headers: &HeaderMap) -> Response {
    if prefers_html(headers) {
        let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
        let location = format!("/rooms/{room}?return={}", encode_component(target));
        let mut r = StatusCode::SEE_OTHER.into_response();
        if let Ok(v) = HeaderValue::from_str(&location) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return r;
    }
    error_body(
        StatusCode::FORBIDDEN,
        "not_admitted",
        &format!("this path needs an admission to room `{room}`"),
    )
}

/// Percent-encodes a URL component (RFC 3986 unreserved characters stay).
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The fallback route: protection, then forwarding.
pub async fn handle(State(app): State<Arc<App>>, req: Request) -> Response {
    match handle_inner(&app, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn handle_inner(app: &App, req: Request) -> Result<Response, GatewayError> {
    // Every way in screens first (`server::with_hyper`, `h1::serve`).
    debug_assert!(
        matches!(crate::policy::screen::canonical_path(req.uri().path()), Ok(std::borrow::Cow::Borrowed(_))),
        "an unscreened request reached the proxy: {}",
        req.uri()
    );
    let replayed = crate::policy::gate::check_marker(app, &req)?;
    let token = match admit(app, req.uri(), req.headers()) {
        Ok(token) => token,
        Err(refused) => return Ok(*refused),
    };
    if !replayed && let Some(gate) = app.gates.find(req.uri().path()) {
        return crate::policy::gate::handle(app, gate, req, token).await;
    }
    forward(app, req, token).await
}

/// The protection check: on a room's protected prefixes, a valid admission token bound to
/// the caller's ticket cookie, passed on to the backend (`Ok(Some)`); elsewhere nothing to
/// check (`Ok(None)`). `Err` is the answer for a caller not admitted.
pub(crate) fn admit(app: &App, uri: &Uri, headers: &HeaderMap) -> Result<Option<HeaderValue>, Box<Response>> {
    let snapshot = app.rooms.snapshot();
    let Some(room) = snapshot.protecting(uri.path()) else { return Ok(None) };
    let checked =
        admission::check_admitted(&app.keys, &app.cookies, &app.admitted, &app.revoked, headers, room);
    let result = checked.as_ref().map_or_else(|reason| *reason, |_| "ok");
    app.metrics.token_checked(result);
    match checked {
        Ok(admitted) => Ok(Some(admitted.header)),
        Err(_) => Err(Box::new(not_admitted(room, uri, headers))),
    }
}

/// Whether [`crate::transport::lane`] may relay `req` itself ([`crate::pipeline::relay`]): a proxied path that no
/// gate guards, without a replay marker (gated and replayed requests take the service).
/// `index`: the request's route ([`crate::route`]).
pub(crate) fn relayable<B>(app: &App, index: usize, req: &axum::http::Request<B>) -> bool {
    let path = req.uri().path();
    index == crate::PROXIED_ROUTE
        && req.method() != axum::http::Method::CONNECT
        && !req.headers().contains_key(queue_core::gate::marker::REPLAY_HEADER)
        && app.gates.find(path).is_none()
}

const HOP_BY_HOP_COUNT: usize = 8;
/// Connection first: its value names more.
static HOP_BY_HOP: [HeaderName; HOP_BY_HOP_COUNT] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Whether a header name (any case) is one of [`HOP_BY_HOP`]: by length first, as nearly
/// every name is none of them.
pub(crate) fn is_hop_by_hop(name: &[u8]) -> bool {
    let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
    match name.len() {
        2 => is("te"),
        7 => is("trailer") || is("upgrade"),
        10 => is("connection") || is("keep-alive"),
        17 => is("transfer-encoding"),
        18 => is("proxy-authenticate"),
        19 => is("proxy-authorization"),
        _ => false,
    }
}

pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names finds the few present (a removal costs a hash and a probe, and
    // most messages carry one of these at most).
    let mut present = [false; HOP_BY_HOP_COUNT];
    for name in headers.keys().filter(|n| is_hop_by_hop(n.as_str().as_bytes())) {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present[i] = true;
        }
    }
    if present[0] {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        headers.remove(name);
    }
}

/// Forwards a request to the backend.
pub(crate) async fn forward(
    app: &App,
    req: Request,
    token: Option<HeaderValue>,
) -> Result<Response, GatewayError> {
    let peer = req.extensions().get::<PeerAddr>().copied();
    let (mut parts, body) = req.into_parts();
    prepare(app, &mut parts, peer, token)?;
    send(app, parts, body).await
}

/// Turns a client's request head into the backend's: size check, hop-by-hop headers out,
/// `X-Forwarded-*` and the admission token in, the URI pointed at the upstream. (The relay
/// writes the same head as bytes: [`crate::pipeline::relay`]'s `request_head`, tested against this.)
pub(crate) fn prepare(
    app: &App,
    parts: &mut Parts,
    peer: Option<PeerAddr>,
    token: Option<HeaderValue>,
) -> Result<(), GatewayError> {
    prepare_for(&app.upstream, app.cfg.trust_forwarded, parts, peer, token)
}

/// [`prepare`] for `up`, trusting the client's `X-Forwarded-*` when `trusted`.
pub(crate) fn prepare_for(
    up: &Upstream,
    trusted: bool,
    parts: &mut Parts,
    peer: Option<PeerAddr>,
    token: Option<HeaderValue>,
) -> Result<(), GatewayError> {
    if let Some(len) =
        parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && len > up.max_body as u64
    {
        return Err(too_large());
    }
    let original_host = parts.headers.get(header::HOST).cloned();
    let https = trusted && admission::is_https(&parts.headers);
    let headers = &mut parts.headers;
    // The framing is hyper's to say, from the body it sends (a length known from the
    // client's, else chunked): never the client's header, which a `Connection` header or a
    // second value could make disagree with the bytes.
    headers.remove(header::CONTENT_LENGTH);
    strip_hop_by_hop(headers);
    strip_own_cookies(headers);
    match token {
        Some(t) => headers.insert(ADMISSION_HEADER, t),
        None => headers.remove(ADMISSION_HEADER),
    };
    let peer_ip = peer.map_or(std::net::IpAddr::from([0, 0, 0, 0]), |p| p.0.ip());
    let forwarded_for = match headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if trusted => format!("{prev}, {peer_ip}"),
        _ => peer_ip.to_string(),
    };
    headers.insert(X_FORWARDED_FOR, HeaderValue::from_str(&forwarded_for).expect("ip is a valid header"));
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(if https { "https" } else { "http" }));
    match original_host {
        Some(h) => headers.insert(X_FORWARDED_HOST, h),
        None => headers.remove(X_FORWARDED_HOST),
    };
    headers.insert(header::HOST, up.host.clone());
    parts.uri = up.uri_for(&parts.uri)?;
    parts.version = hyper::Version::HTTP_11;
    Ok(())
}

/// The gateway's own cookies stop here ([`admission::backend_cookies`]); headers without
/// any are left as they are.
fn strip_own_cookies(headers: &mut HeaderMap) {
    let mut kept = Vec::new();
    let mut changed = false;
    for v in headers.get_all(header::COOKIE) {
        match admission::backend_cookies(v.as_bytes()) {
            Some(std::borrow::Cow::Borrowed(_)) => kept.push(v.clone()),
            // Pairs of a valid value joined by "; ": valid too.
            Some(std::borrow::Cow::Owned(c)) => {
                changed = true;
                kept.extend(HeaderValue::from_bytes(&c).ok());
            }
            None => changed = true,
        }
    }
    if !changed {
        return;
    }
    headers.remove(header::COOKIE);
    for v in kept {
        headers.append(header::COOKIE, v);
    }
}

pub(crate) fn too_large() -> GatewayError {
    GatewayError::client(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "the request body is too large")
}

/// Sends a prepared request to the backend and returns its answer (hop-by-hop headers out).
pub(crate) async fn send(app: &App, parts: Parts, body: Body) -> Result<Response, GatewayError> {
    let up = &app.upstream;
    // Most forwarded requests have no body: nothing to limit, nothing to box.
    let body = if body.is_end_stream() { body } else { Body::new(Limited::new(body, up.max_body)) };
    let started = Instant::now();
    let head_request = parts.method == hyper::Method::HEAD;
    let result =
        tokio::time::timeout(up.timeout, up.connections.send(hyper::Request::from_parts(parts, body))).await;
    app.metrics.upstream_duration.observe(started.elapsed().as_secs_f64());
    let resp = match result {
        Err(_) => return Err(GatewayError::Upstream(UpstreamFailure::Timeout)),
        Ok(Err(e)) => {
            if error_chain(&e).any(|s| s.is::<http_body_util::LengthLimitError>()) {
                return Err(too_large());
            }
            return Err(GatewayError::Upstream(UpstreamFailure::Unreachable(describe(&e))));
        }
        Ok(Ok(r)) => r,
    };
    let (mut parts, mut body) = resp.into_parts();
    // hyper's client read the body its own way; a head another reader could split
    // differently is not passed on, and its connection is not used again.
    let framing = parts.headers.iter().map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()));
    let checked = match crate::policy::screen::status_framing(parts.status.as_u16(), framing) {
        // Upgrades are never forwarded (`Upgrade` is hop-by-hop): a 101 is the backend's own.
        Ok(_) if parts.status == StatusCode::SWITCHING_PROTOCOLS => {
            Err("the backend switched protocols unasked")
        }
        Ok(_) if head_size(&parts.headers) > crate::pipeline::relay::MAX_HEAD => {
            Err("the backend's response head is too large")
        }
        other => other,
    };
    match checked {
        Err(why) => {
            body.discard();
            return Err(GatewayError::Upstream(UpstreamFailure::Unreachable(why.to_owned())));
        }
        Ok(end) if !crate::policy::screen::reusable_after(head_request, parts.status.as_u16(), end) => {
            body.discard()
        }
        Ok(_) => {}
    }
    strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// About the bytes of a head with these headers (the relay's limit applies to both paths).
fn head_size(headers: &HeaderMap) -> usize {
    headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum()
}

/// An upstream failure with its causes, for the log ("connection error: broken pipe").
fn describe(e: &UpstreamError) -> String {
    error_chain(e).map(ToString::to_string).collect::<Vec<_>>().join(": ")
}

fn error_chain<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| e.source())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_the_rest_stay() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "x-private, Keep-Alive"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("content-type", "application/json"),
            ("x-kept", "2"),
            ("cookie", "a=b"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "cookie", "x-kept"]);
        let mut plain = HeaderMap::new();
        plain.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut plain);
        assert_eq!(plain.len(), 1);
    }

    #[test]
    fn accept_negotiation() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT, v.parse().unwrap());
            m
        };
        assert!(prefers_html(&h("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")));
        assert!(!prefers_html(&h("application/json")));
        assert!(!prefers_html(&h("*/*")));
        assert!(!prefers_html(&h("application/json, text/html;q=0.5")));
        assert!(prefers_html(&h("text/html, application/json")));
        assert!(!prefers_html(&HeaderMap::new()));
    }
}
