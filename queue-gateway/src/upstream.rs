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

/// One thread's idle connections, most recently used at the back.
#[derive(Debug, Default)]
struct Idle(Mutex<VecDeque<(SendRequest<Body>, Instant)>>);

impl Idle {
    fn take(&self) -> Option<SendRequest<Body>> {
        let mut idle = self.0.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((conn, _)) = idle.pop_back() {
            if !conn.is_closed() {
                return Some(conn);
            }
        }
        None
    }

    fn put(&self, conn: SendRequest<Body>) {
        if conn.is_closed() {
            return;
        }
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

/// The backend's address and one idle list per serving thread (and one for other threads).
#[derive(Debug)]
pub struct Connections {
    /// `host:port` to connect to.
    addr: String,
    idle: Box<[Arc<Idle>]>,
}

impl Connections {
    /// Connections to `addr` (`host:port`) for `workers` serving threads.
    pub fn new(addr: String, workers: usize) -> Self {
        Connections { addr, idle: (0..=workers).map(|_| Arc::default()).collect() }
    }

    /// The calling thread's idle list: a connection's task runs on the thread that opened it,
    /// so a request must stay on that thread too.
    fn idle(&self) -> &Arc<Idle> {
        let rest = self.idle.len() - 1;
        let i = crate::server::current_worker().map_or(rest, |w| w % rest.max(1));
        &self.idle[i]
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

    async fn connect(&self) -> Result<SendRequest<Body>, UpstreamError> {
        let addr = &self.addr;
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| UpstreamError::ConnectTimeout(addr.clone()))?
            .map_err(|source| UpstreamError::Connect { addr: addr.clone(), source })?;
        // Small requests and responses: waiting to coalesce them only adds latency.
        let _ = stream.set_nodelay(true);
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
    conn: Option<(SendRequest<Body>, Arc<Idle>)>,
}

impl Release {
    fn release(&mut self) {
        if let Some((conn, idle)) = self.conn.take() {
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
