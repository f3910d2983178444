//! Connections to the backend: HTTP/1.1 over TCP, kept alive in one idle list per serving
//! thread.
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
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A connection idle longer than this is closed rather than reused (the backend may have
/// dropped it already; nginx's default keep-alive timeout is 75 s).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Most idle connections kept per serving thread; more are closed when they come back.
const MAX_IDLE: usize = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the backend gave no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("connect to {0}: timed out")]
    ConnectTimeout(String),
    #[error(transparent)]
    Http(#[from] hyper::Error),
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
                if reused {
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
                    Some(unsent) if reused => req = unsent,
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
