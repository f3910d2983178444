//! Phase 6, the upstream request, and forwarding through hyper's client (phase 7 on that
//! way).
//!
//! [`ForwardPlan`] is the one description of what the backend receives instead of the
//! client's head: the target under the upstream's base path; the client's headers less the
//! hop-by-hop ones (and any its `Connection` names), its framing (ours to say, from the body
//! sent), the gateway's own cookies and anything the gateway sets itself; then `Host`,
//! `X-Forwarded-For`/`-Proto`/`-Host` and the admission token. hyper's client gets it as a
//! header map ([`ForwardPlan::render`]), the relay as bytes ([`crate::pipeline::relay`]):
//! both walk [`ForwardPlan::each_header`].

use std::borrow::Cow;

use axum::extract::Request;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri, header};
use axum::response::Response;

use crate::error::GatewayError;
use crate::policy::admission::{self, ADMISSION_HEADER};
use crate::state::App;
use crate::transport::PeerAddr;
use crate::upstream::Upstream;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers some backends read as the client's address, scheme or prefix (besides the
/// `X-Forwarded-For`/`-Proto`/`-Host` the plan sets itself): by length first.
fn is_forwarding(name: &[u8]) -> bool {
    let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
    match name.len() {
        9 => is("forwarded") || is("x-real-ip"),
        15 => is("x-forwarded-ssl"),
        16 => is("x-forwarded-port"),
        18 => is("x-forwarded-prefix") || is("x-forwarded-scheme"),
        _ => false,
    }
}

/// A header value as a plan gives it: the client's own, a constant, or made for this request.
#[derive(Debug)]
pub(crate) enum Value<'v> {
    Same(&'v HeaderValue),
    Static(&'static str),
    New(Cow<'v, [u8]>),
}

impl Value<'_> {
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            Value::Same(v) => v.as_bytes(),
            Value::Static(s) => s.as_bytes(),
            Value::New(b) => b,
        }
    }

    fn into_header(self) -> Option<HeaderValue> {
        match self {
            Value::Same(v) => Some(v.clone()),
            Value::Static(s) => Some(HeaderValue::from_static(s)),
            Value::New(b) => HeaderValue::from_bytes(&b).ok(),
        }
    }
}

/// Phase 6: the backend's request head, planned from the client's (screened) head.
#[derive(Debug)]
pub(crate) struct ForwardPlan<'a> {
    headers: &'a HeaderMap,
    /// The backend's request target (origin form).
    pub target: Uri,
    host: &'a HeaderValue,
    /// The client's `X-Forwarded-For`, when its peer is trusted to have set it.
    previous_for: Option<&'a [u8]>,
    peer_ip: &'a str,
    https: bool,
    trusted: bool,
    token: Option<&'a HeaderValue>,
    named: Vec<&'a [u8]>,
}

impl<'a> ForwardPlan<'a> {
    /// The plan for `head` from a peer at `peer_ip` (`trusted`: its `X-Forwarded-*` are
    /// believed), passing `token` on. `Err`: a path the upstream's base cannot take.
    pub(crate) fn new(
        up: &'a Upstream,
        trusted: bool,
        head: &'a Parts,
        peer_ip: &'a str,
        token: Option<&'a HeaderValue>,
    ) -> Result<Self, GatewayError> {
        let headers = &head.headers;
        Ok(ForwardPlan {
            headers,
            target: up.uri_for(&head.uri)?,
            host: up.host(),
            previous_for: if trusted {
                headers.get(X_FORWARDED_FOR).map(HeaderValue::as_bytes)
            } else {
                None
            },
            peer_ip,
            https: trusted && admission::is_https(headers),
            trusted,
            token,
            named: crate::http1::connection_named(
                headers.get_all(header::CONNECTION).iter().map(HeaderValue::as_bytes),
            ),
        })
    }

    /// Whether the client's header `name` is dropped: hop-by-hop, named by its
    /// `Connection`, its framing, one the plan sets itself, or (from a peer not trusted) one a
    /// backend may read as the client's address or scheme.
    fn drops(&self, name: &HeaderName) -> bool {
        let n = name.as_str().as_bytes();
        crate::http1::is_hop_by_hop(n)
            || (!self.trusted && is_forwarding(n))
            || *name == header::CONTENT_LENGTH
            || *name == X_FORWARDED_FOR
            || *name == X_FORWARDED_PROTO
            || *name == X_FORWARDED_HOST
            || *name == ADMISSION_HEADER
            || self.named.iter().any(|c| c.eq_ignore_ascii_case(n))
    }

    /// Every header of the backend's request, in order: the client's kept ones (its cookies
    /// without the gateway's own), then the plan's.
    pub(crate) fn each_header(&self, mut f: impl FnMut(&HeaderName, Value<'_>)) {
        let mut original_host = None;
        for (name, value) in self.headers {
            if *name == header::HOST {
                original_host = original_host.or(Some(value));
                continue;
            }
            if self.drops(name) {
                continue;
            }
            if *name == header::COOKIE {
                match admission::backend_cookies(value.as_bytes()) {
                    Some(Cow::Borrowed(_)) => f(name, Value::Same(value)),
                    Some(kept) => f(name, Value::New(kept)),
                    None => {}
                }
            } else {
                f(name, Value::Same(value));
            }
        }
        f(&header::HOST, Value::Same(self.host));
        let forwarded_for = match self.previous_for {
            Some(prev) => Value::New(Cow::Owned([prev, b", ", self.peer_ip.as_bytes()].concat())),
            None => Value::New(Cow::Borrowed(self.peer_ip.as_bytes())),
        };
        f(&X_FORWARDED_FOR, forwarded_for);
        f(&X_FORWARDED_PROTO, Value::Static(if self.https { "https" } else { "http" }));
        if let Some(host) = original_host {
            f(&X_FORWARDED_HOST, Value::Same(host));
        }
        if let Some(token) = self.token {
            f(&ADMISSION_HEADER, Value::Same(token));
        }
    }

    /// At least the bytes of the head [`ForwardPlan::each_header`] gives, as lines.
    pub(crate) fn head_size(&self) -> usize {
        let client: usize = self.headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
        let prev = self.previous_for.map_or(0, <[u8]>::len);
        let ours = self.host.len() + self.peer_ip.len() + prev + self.token.map_or(0, HeaderValue::len);
        self.target.path_and_query().map_or(1, |pq| pq.as_str().len()) + client + ours + 160
    }

    /// The plan as hyper's client takes it: the target and a header map.
    pub(crate) fn render(self) -> (Uri, HeaderMap) {
        let mut headers = HeaderMap::with_capacity(self.headers.len() + 4);
        self.each_header(|name, value| {
            if let Some(v) = value.into_header() {
                headers.append(name.clone(), v);
            }
        });
        (self.target, headers)
    }
}

/// Forwards a request (decided: phases 3–5) through hyper's client.
pub(crate) async fn forward(
    app: &App,
    req: Request,
    token: Option<HeaderValue>,
) -> Result<Response, GatewayError> {
    let peer = req.extensions().get::<PeerAddr>().copied();
    let (mut parts, body) = req.into_parts();
    prepare(app, &mut parts, peer, token.as_ref())?;
    crate::upstream::send(&app.upstream, &app.metrics, parts, body).await
}

/// Turns a client's request head into the backend's ([`ForwardPlan`]), refusing a declared
/// body over the limit.
pub(crate) fn prepare(
    app: &App,
    parts: &mut Parts,
    peer: Option<PeerAddr>,
    token: Option<&HeaderValue>,
) -> Result<(), GatewayError> {
    let up = &app.upstream;
    if let Some(len) =
        parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && len > up.max_body() as u64
    {
        return Err(GatewayError::too_large());
    }
    let peer_ip = peer.map_or(std::net::IpAddr::from([0, 0, 0, 0]), |p| p.0.ip()).to_string();
    let (target, headers) = ForwardPlan::new(up, app.cfg.trust_forwarded, parts, &peer_ip, token)?.render();
    parts.uri = target;
    parts.headers = headers;
    parts.version = hyper::Version::HTTP_11;
    Ok(())
}
