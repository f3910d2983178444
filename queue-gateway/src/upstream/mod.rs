//! The backend's side: its address ([`Upstream`]), kept-alive connections to it, the one rule
//! for sending a request again ([`may_resend`]), the one error ([`UpstreamError`]), and
//! sending a request through hyper's client with the answer's head checked ([`send`]).
//! Connections are HTTP/1.1 over TCP, kept alive in one idle list per serving thread: hyper's
//! handles for [`send`], plain sockets for the relay ([`crate::pipeline::relay`]).
//!
//! hyper-util's pooled client cost each forwarded request a spawned task (to put the
//! connection back once its response body was read), a lock of a pool shared by key, and a
//! race between checkout and a lazy connect. Here a connection goes back to its thread's
//! list when the backend's response body ends ([`Release`]), the next request on that thread
//! takes the most recently used one, and the lists need no key: there is one backend.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::Response;
use hyper::Request;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use axum::http::request::Parts;
use axum::http::uri::{Authority, PathAndQuery};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use http_body_util::Limited;

use crate::error::CodecError;
use crate::error::GatewayError;
pub use crate::error::UpstreamError;
use crate::http1::MAX_RESPONSE_HEAD;
use crate::http1::client::{reusable_after, status_framing};
use crate::metrics::Metrics;

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

/// A connection idle longer than this is closed rather than reused (the backend may have
/// dropped it already; nginx's default keep-alive timeout is 75 s).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Most idle connections kept per serving thread; more are closed when they come back.
const MAX_IDLE: usize = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The one rule for sending a request again on a new connection after it failed on its
/// first before any byte of an answer: only when that connection was an idle one reused
/// (the backend may have closed it meanwhile; a new connection's failure is the backend's
/// answer), and only when the request never left (`sent == false`) or may be seen twice (an
/// idempotent method). Both ways to the backend ask it (hyper's client, which can resend only
/// what it never wrote, and the relay).
pub(crate) fn may_resend(reused: bool, sent: bool, method: &hyper::Method) -> bool {
    use hyper::Method;
    let idempotent = matches!(
        *method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE
    );
    reused && (!sent || idempotent)
}

/// A kept-alive backend connection: hyper's handle on one, or a plain socket the relay
/// writes requests to itself ([`crate::pipeline::relay`]).
pub(crate) trait Pooled {
    /// False once the backend is known to have closed it.
    fn usable(&self) -> bool;
}

impl Pooled for SendRequest<Body> {
    fn usable(&self) -> bool {
        !self.is_closed()
    }
}

impl Pooled for TcpStream {
    /// A readable idle connection has been closed (or sent bytes nobody asked for): either
    /// way it cannot carry a request. The kernel is asked every time (a peek, one system
    /// call): the runtime's own readiness lags bytes that arrived since it last polled, and a
    /// backend that sends a late extra response (a body after a HEAD answer, a second
    /// response) would otherwise have it read as the next client's answer, and every answer
    /// on that connection after it shifted by one.
    fn usable(&self) -> bool {
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        matches!(socket2::SockRef::from(self).peek(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

/// One thread's idle connections, most recently used at the back.
#[derive(Debug)]
pub(crate) struct Idle<C>(Mutex<VecDeque<(C, Instant)>>);

/// A thread's idle connections of hyper's client.
type HyperIdle = Idle<SendRequest<Body>>;

impl<C> Default for Idle<C> {
    fn default() -> Self {
        Idle(Mutex::default())
    }
}

impl<C: Pooled> Idle<C> {
    pub(crate) fn take(&self) -> Option<C> {
        let mut idle = self.0.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((conn, _)) = idle.pop_back() {
            if conn.usable() {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps `conn`, which its last response left ready for the next request.
    pub(crate) fn put(&self, conn: C) {
        let now = Instant::now();
        let mut idle = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // The oldest are at the front; a busy thread's list stays short of stale entries
        // without a timer.
        while idle.front().is_some_and(|(_, since)| now.duration_since(*since) > IDLE_TIMEOUT) {
            idle.pop_front();
        }
        if idle.len() < MAX_IDLE {
            idle.push_back((conn, now));
        }
    }
}

/// The backend's address and, per serving thread (and one for other threads), one idle
/// list of hyper's connections and one of plain sockets for the relay.
#[derive(Debug)]
pub struct Connections {
    /// `host:port` to connect to.
    addr: String,
    idle: Box<[Arc<HyperIdle>]>,
    sockets: Box<[Idle<TcpStream>]>,
}

impl Connections {
    /// Connections to `addr` (`host:port`) for `workers` serving threads.
    pub fn new(addr: String, workers: usize) -> Self {
        Connections {
            addr,
            idle: (0..=workers).map(|_| Arc::default()).collect(),
            sockets: (0..=workers).map(|_| Idle::default()).collect(),
        }
    }

    /// The calling thread's slot: a connection is registered with the runtime of the thread
    /// that opened it (and hyper's runs as a task there), so it must stay on that thread.
    fn slot(&self) -> usize {
        let rest = self.idle.len() - 1;
        crate::transport::current_worker().map_or(rest, |w| w % rest.max(1))
    }

    fn idle(&self) -> &Arc<HyperIdle> {
        &self.idle[self.slot()]
    }

    /// The calling thread's idle plain sockets.
    pub(crate) fn sockets(&self) -> &Idle<TcpStream> {
        &self.sockets[self.slot()]
    }

    /// Sends `req` (origin-form URI, `Host` set) on an idle connection of the calling thread,
    /// or a new one. A request refused by an idle connection before it was written (the
    /// backend closed it meanwhile) is sent again on the next one.
    pub async fn send(&self, mut req: Request<Body>) -> Result<Response<Release>, UpstreamError> {
        let idle = self.idle();
        loop {
            let (mut conn, reused) = match idle.take() {
                Some(conn) => (conn, true),
                None => (self.connect().await?, false),
            };
            if reused {
                // Its task gets a turn first: bytes the backend sent past its last response
                // (already in hyper's buffer) close it there, rather than being read as the
                // answer to this request.
                tokio::task::yield_now().await;
                if conn.is_closed() {
                    continue;
                }
            }
            // Usually ready at once; a connection whose last response body just ended may
            // need its task to run first.
            if let Err(e) = conn.ready().await {
                if may_resend(reused, false, req.method()) {
                    continue;
                }
                return Err(e.into());
            }
            match conn.try_send_request(req).await {
                Ok(resp) => {
                    let (parts, body) = resp.into_parts();
                    let body = Release { body, conn: Some((conn, idle.clone())) };
                    return Ok(Response::from_parts(parts, body));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if may_resend(reused, false, unsent.method()) => req = unsent,
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }

    /// A new plain connection to the backend.
    pub(crate) async fn open(&self) -> Result<TcpStream, UpstreamError> {
        let addr = &self.addr;
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| UpstreamError::ConnectTimeout(addr.clone()))?
            .map_err(|source| UpstreamError::Connect { addr: addr.clone(), source })?;
        // Small requests and responses: waiting to coalesce them only adds latency.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    async fn connect(&self) -> Result<SendRequest<Body>, UpstreamError> {
        let stream = self.open().await?;
        let (conn, task) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(e) = task.await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(conn)
    }
}

/// Sends a prepared request to the backend and returns its answer, checked (phase 7).
/// Sends a prepared request (origin-form target, `Host` set) to the backend and returns its
/// answer, its head checked: a head another reader could split differently, an unasked `101`
/// or a head over [`MAX_RESPONSE_HEAD`] is no answer (`502`), and a connection whose answer
/// may leave bytes behind is not used again. Hop-by-hop headers are left out
/// ([`crate::http1::response_keeps`]).
pub(crate) async fn send(
    up: &Upstream,
    metrics: &Metrics,
    parts: Parts,
    body: Body,
) -> Result<Response, GatewayError> {
    // Most forwarded requests have no body: nothing to limit, nothing to box.
    let body = if body.is_end_stream() { body } else { Body::new(Limited::new(body, up.max_body())) };
    let started = Instant::now();
    let head_request = parts.method == hyper::Method::HEAD;
    let result =
        tokio::time::timeout(up.timeout(), up.connections().send(hyper::Request::from_parts(parts, body)))
            .await;
    metrics.upstream_duration.observe(started.elapsed().as_secs_f64());
    let resp = match result {
        Err(_) => return Err(UpstreamError::Timeout.into()),
        Ok(Err(e)) if e.is_length_limit() => return Err(GatewayError::too_large()),
        Ok(Err(e)) => return Err(e.into()),
        Ok(Ok(r)) => r,
    };
    let (mut parts, mut body) = resp.into_parts();
    // hyper's client read the body its own way; a head another reader could split
    // differently is not passed on, and its connection is not used again.
    let framing = parts.headers.iter().map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()));
    let checked = match status_framing(parts.status.as_u16(), framing) {
        // Upgrades are never forwarded (`Upgrade` is hop-by-hop): a 101 is the backend's own.
        Ok(_) if parts.status == StatusCode::SWITCHING_PROTOCOLS => {
            Err("the backend switched protocols unasked")
        }
        Ok(_) if head_size(&parts.headers) > MAX_RESPONSE_HEAD => {
            Err("the backend's response head is too large")
        }
        other => other,
    };
    match checked {
        Err(why) => {
            body.discard();
            return Err(UpstreamError::Codec(CodecError::Invalid(why)).into());
        }
        Ok(end) if !reusable_after(head_request, parts.status.as_u16(), end) => body.discard(),
        Ok(_) => {}
    }
    crate::http1::strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// About the bytes of a head with these headers (the relay's limit applies to both paths).
fn head_size(headers: &HeaderMap) -> usize {
    headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum()
}

/// A backend response body that hands its connection back to the idle list once it has been
/// read to the end (a body dropped half-read takes its connection with it, as it must: the
/// rest of the response is still on the wire).
#[derive(Debug)]
pub struct Release {
    body: Incoming,
    conn: Option<(SendRequest<Body>, Arc<HyperIdle>)>,
}

impl Release {
    /// Closes the connection instead of keeping it: its response was refused.
    pub(crate) fn discard(&mut self) {
        self.conn = None;
    }

    fn release(&mut self) {
        if let Some((conn, idle)) = self.conn.take()
            && !conn.is_closed()
        {
            idle.put(conn);
        }
    }
}

impl hyper::body::Body for Release {
    type Data = hyper::body::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
        match &frame {
            None => self.release(),
            Some(Ok(_)) if self.body.is_end_stream() => self.release(),
            Some(Ok(_)) => {}
            Some(Err(_)) => self.conn = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        // hyper's server stops polling a body that says it has ended, so the last frame
        // (or an empty body) may be seen here rather than in `poll_frame`.
        if self.body.is_end_stream() {
            self.release();
        }
    }
}
