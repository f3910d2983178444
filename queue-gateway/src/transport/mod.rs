//! The connection layer: one accept loop handing connections to worker threads (each a
//! single-threaded runtime); HTTP/1.1 by [`lane`] (and [`stream`]), with hyper for h2c
//! (prior knowledge) and the HTTP/1.1 requests the lane leaves to it; keep-alive, header size
//! limits, a header read timeout for a new connection's first request that answers `408`, a
//! longer idle timeout between requests on a kept-alive connection, a whole-request timeout,
//! and graceful shutdown (stop accepting, let in-flight requests finish within the grace
//! period, then close what is left).
//!
//! It knows connections, the codec ([`crate::http1`]) and timeouts, and nothing of what a
//! request means: whatever serves requests implements [`Handler`] (the gateway's is
//! [`crate::pipeline::Gateway`]), as hyper's server takes a `Service`. This module imports no
//! policy, pipeline or API module.

pub mod lane;
pub mod stream;

use std::cell::Cell;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::Response;
use bytes::{Buf, Bytes};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::util::Oneshot;
use tower::{Service, ServiceExt};

use crate::config::Limits;
use crate::error::error_body;

/// A service the transport runs requests through ([`Handler::Service`]).
pub trait Served:
    Service<Request<Body>, Response = Response, Error = Infallible, Future: Send + 'static>
    + Clone
    + Send
    + 'static
{
}

impl<S> Served for S where
    S: Service<Request<Body>, Response = Response, Error = Infallible, Future: Send + 'static>
        + Clone
        + Send
        + 'static
{
}

/// The peer address of a connection, put into each request's extensions.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

/// What the transport hands requests to. The transport reads and writes HTTP; the handler
/// says what a request means.
pub trait Handler: Clone + Send + Sync + 'static {
    /// The service hyper runs (h2c, and HTTP/1.1 requests not of the lane's shape), and event
    /// streams on their own connections: it screens every request itself.
    type Service: Served;

    /// The service.
    fn service(&self) -> Self::Service;

    /// Whether a request to `path` (as received) is a long-lived stream: served on its own
    /// connection ([`stream`]) and never under the request timeout. (Judged before the
    /// handler has seen the request: it must not call a path a stream that the handler will
    /// read as something else.)
    fn is_stream(&self, path: &[u8]) -> bool;

    /// A request of the lane's shape with its whole body, answered on `conn`. True when the
    /// connection can take the next request.
    fn lane<'a>(
        &'a self,
        req: Request<()>,
        body: bytes::Bytes,
        conn: Conn<'a, Self::Service>,
    ) -> impl std::future::Future<Output = bool> + Send + 'a;
}

/// The lane's connection, lent to [`Handler::lane`] for one request.
#[derive(Debug)]
pub struct Conn<'a, S: Served> {
    /// The client's socket.
    pub stream: &'a mut TcpStream,
    /// The client's address, and as text (formatted once per connection).
    pub peer: SocketAddr,
    pub peer_ip: &'a str,
    /// The client asked for the connection to close after this request (or the gateway is
    /// shutting down).
    pub close: bool,
    /// The connection's one timer, to bound this request (moved on, never re-filed).
    pub timer: Pin<&'a mut tokio::time::Sleep>,
    /// How long a request may take.
    pub request_timeout: Duration,
    slot: &'a mut Slot<S>,
}

impl<S: Served> Conn<'_, S> {
    /// Runs `req` through `svc` bounded by the request timeout (streams excepted), reusing
    /// the connection's box for the service's future ([`dispatch_in`]).
    pub async fn dispatch(&mut self, svc: S, req: Request<Body>, streaming: bool) -> Response {
        dispatch_in(self.slot, svc, req, self.request_timeout, streaming).await
    }

    /// `answer`, bounded by the request timeout on the connection's timer (moved on, not a
    /// timer filed per request).
    pub async fn within_timeout(&mut self, answer: impl std::future::Future<Output = Response>) -> Response {
        self.timer.as_mut().reset(Instant::now() + self.request_timeout);
        tokio::select! {
            biased;
            resp = answer => resp,
            _ = self.timer.as_mut() => timed_out(),
        }
    }

    /// Writes `resp` (a `HEAD` answer when `head_only`); true when the connection can take
    /// the next request.
    pub async fn answer(&mut self, resp: Response, head_only: bool) -> bool {
        crate::http1::server::write_response(self.stream, resp, head_only, self.close, false)
            .await
            .unwrap_or(false)
    }
}

thread_local! {
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The index of the serving thread this code runs on (`None` off the workers: the accept
/// loop, background loops, tests' own runtimes).
pub fn current_worker() -> Option<usize> {
    WORKER.with(Cell::get)
}

/// One serving thread: a single-threaded runtime that owns the connections handed to it.
struct Worker {
    tx: mpsc::UnboundedSender<(std::net::TcpStream, SocketAddr)>,
    open: Arc<AtomicUsize>,
    done: oneshot::Receiver<()>,
}

impl Worker {
    fn start<H: Handler>(
        index: usize,
        handler: H,
        limits: Limits,
        shutdown: watch::Receiver<bool>,
    ) -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (done_tx, done) = oneshot::channel();
        let open = Arc::new(AtomicUsize::new(0));
        let counted = open.clone();
        std::thread::Builder::new().name(format!("wr-worker-{index}")).spawn(move || {
            WORKER.with(|w| w.set(Some(index)));
            runtime.block_on(worker_loop(rx, handler, limits, shutdown, counted));
            let _ = done_tx.send(());
        })?;
        Ok(Worker { tx, open, done })
    }
}

/// Serves `handler` on `listener` until `shutdown` turns true, then drains.
///
/// The accept loop hands each connection to the worker thread with the fewest open
/// connections; a worker's runtime is single-threaded, so the connection's requests, their
/// upstream calls and the pooled upstream connections they use never hop between threads
/// (on a busy gateway most of the cost of a multi-threaded runtime is those hops).
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: H,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let workers = (0..limits.worker_threads())
        .map(|i| Worker::start(i, handler.clone(), limits.clone(), shutdown.clone()))
        .collect::<io::Result<Vec<_>>>()?;
    let mut next = 0;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(std) = stream.into_std() else { continue };
                    let w = least_loaded(&workers, next);
                    next = (w + 1) % workers.len();
                    workers[w].open.fetch_add(1, Ordering::Relaxed);
                    let _ = workers[w].tx.send((std, peer));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    let open: usize = workers.iter().map(|w| w.open.load(Ordering::Relaxed)).sum();
    tracing::info!(open, grace_ms = limits.shutdown_grace_ms, "stopped accepting; draining");
    for w in workers {
        drop(w.tx);
        let _ = w.done.await;
    }
    Ok(())
}

/// The worker with the fewest open connections, ties going to the first from `start`.
fn least_loaded(workers: &[Worker], start: usize) -> usize {
    (0..workers.len())
        .map(|k| (start + k) % workers.len())
        .min_by_key(|&i| workers[i].open.load(Ordering::Relaxed))
        .unwrap_or(0)
}

async fn worker_loop<H: Handler>(
    mut incoming: mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
    handler: H,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
    open: Arc<AtomicUsize>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            handed = incoming.recv() => match handed {
                Some((stream, peer)) => {
                    conns.spawn(connection(stream, peer, handler.clone(), limits.clone(), shutdown.clone()));
                }
                None => break,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {
                open.fetch_sub(1, Ordering::Relaxed);
            }
            _ = shutdown.changed() => break,
        }
    }
    let grace = Duration::from_millis(limits.shutdown_grace_ms);
    let drained = tokio::time::timeout(grace, async {
        while conns.join_next().await.is_some() {
            open.fetch_sub(1, Ordering::Relaxed);
        }
    });
    if drained.await.is_err() {
        tracing::warn!(open = conns.len(), "grace period over; closing the remaining connections");
        conns.abort_all();
    }
}

/// Serves one connection: an event stream on a new connection by [`stream`], anything
/// else by [`lane`]; each hands to hyper what it does not serve itself. A connection task
/// lives as long as its connection and is sized by its largest state, so the others are
/// boxed: an event stream's task stays small.
async fn connection<H: Handler>(
    std: std::net::TcpStream,
    peer: SocketAddr,
    handler: H,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = std.set_nodelay(true);
    let Ok(stream) = TcpStream::from_std(std) else { return };
    if !limits.fast_lane {
        // hyper's one header timer covers the first request and the idle waits after it.
        let heads = Duration::from_millis(limits.header_read_timeout_ms);
        return Box::pin(with_hyper(stream, peer, handler, limits, shutdown, heads)).await;
    }
    // Nothing is consumed before the first request's deadline: the first bytes decide who
    // serves the connection.
    let first_request = Instant::now() + Duration::from_millis(limits.header_read_timeout_ms);
    let peeked = tokio::select! {
        p = tokio::time::timeout_at(first_request, stream::is_event_stream(&stream, &handler)) => p,
        _ = shutdown.changed() => return,
    };
    match peeked {
        Err(_) => request_timeout_answer(stream).await,
        Ok(Err(_)) => {}
        // Inline, not boxed: a stream holds its connection for as long as its ticket waits,
        // and a box of its own cost each ~1 KiB more (BENCHMARKS.md, SSE).
        Ok(Ok(true)) => stream::serve(stream, peer, &handler, &limits, first_request).await,
        Ok(Ok(false)) => Box::pin(lane::serve(stream, peer, handler, limits, shutdown, first_request)).await,
    }
}

/// Serves the rest of a connection with hyper (HTTP/1.1 or h2c): `io` starts with the bytes
/// [`lane`] read before it gave the connection up (or is a new connection, with the fast lane
/// off). `heads`: how long hyper waits for a request head, idle or not.
pub(crate) async fn with_hyper<H: Handler, I>(
    io: I,
    peer: SocketAddr,
    handler: H,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
    heads: Duration,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let request_timeout = Duration::from_millis(limits.request_timeout_ms);
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let svc = handler.service();
        let streaming = handler.is_stream(req.uri().path().as_bytes());
        req.extensions_mut().insert(PeerAddr(peer));
        // Boxed: on h2 each request is a task of its own sized by its largest state, and the
        // service's future is large; a long stream would carry it for nothing.
        async move {
            Ok::<_, Infallible>(
                Box::pin(dispatch_in(&mut None, svc, req.map(Body::new), request_timeout, streaming)).await,
            )
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(heads)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32)
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.as_mut().await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Answers `408` on a connection whose request head did not arrive in time, and closes it.
pub(crate) async fn request_timeout_answer(mut stream: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        crate::http1::server::write_response(&mut stream, stream::head_timeout(), false, true, false)
            .await
            .map_err(std::io::Error::other)?;
        stream.shutdown().await
    })
    .await;
}

/// Where a connection that serves one request at a time keeps its requests' service
/// futures (see [`dispatch_in`]).
pub type Slot<S> = Option<Pin<Box<Oneshot<S, Request<Body>>>>>;

/// Runs one request through the service, bounded by the request timeout unless `streaming`,
/// for a connection that serves its requests one at a time: each request's
/// future goes into the box the one before used. The service's future is ~1.5 KiB, more
/// than malloc keeps per thread, and a fresh box per request cost ~700 instructions of
/// malloc and free (callgrind, a status poll). The box holds nothing between requests (a
/// finished or timed-out future is dropped); the lane frees it when the connection idles
/// or goes to hyper.
pub(crate) async fn dispatch_in<S: Served>(
    slot: &mut Slot<S>,
    svc: S,
    req: Request<Body>,
    timeout: Duration,
    streaming: bool,
) -> Response {
    let fut = svc.oneshot(req);
    let fut = match slot {
        Some(boxed) => {
            boxed.set(fut);
            boxed.as_mut()
        }
        None => slot.insert(Box::pin(fut)).as_mut(),
    };
    let answered = if streaming { Ok(fut.await) } else { tokio::time::timeout(timeout, fut).await };
    match answered {
        Ok(Ok(r)) => r,
        Ok(Err(never)) => match never {},
        Err(_) => {
            *slot = None;
            timed_out()
        }
    }
}

/// The answer to a request that ran past the request timeout.
pub(crate) fn timed_out() -> Response {
    error_body(StatusCode::REQUEST_TIMEOUT, "request_timeout", "the request took too long")
}
/// A connection handed to hyper: the bytes read first, then the socket.
pub(crate) struct Rewind {
    pub(crate) pending: Bytes,
    pub(crate) stream: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.pending.is_empty() {
            let n = self.pending.len().min(out.remaining());
            out.put_slice(&self.pending[..n]);
            self.pending.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, out)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain service as a [`Handler`]: every request through it (the transport alone).
    #[derive(Clone, Debug)]
    pub struct Plain<S>(pub S);

    impl<S: Served + Sync> Handler for Plain<S> {
        type Service = S;

        fn service(&self) -> S {
            self.0.clone()
        }

        fn is_stream(&self, _: &[u8]) -> bool {
            false
        }

        async fn lane<'a>(&'a self, req: Request<()>, body: bytes::Bytes, mut conn: Conn<'a, S>) -> bool {
            let head_only = req.method() == axum::http::Method::HEAD;
            let mut req = req.map(|()| if body.is_empty() { Body::empty() } else { Body::from(body) });
            req.extensions_mut().insert(PeerAddr(conn.peer));
            let resp = conn.dispatch(self.0.clone(), req, false).await;
            conn.answer(resp, head_only).await
        }
    }

    /// A connection's task is sized by the largest state of `connection`: hyper's (5,904 bytes
    /// when it was inline) must stay boxed, so that a task holding an event stream is small.
    #[tokio::test]
    async fn a_connection_task_stays_small() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (std, peer) = listener.accept().unwrap();
        let svc =
            tower::service_fn(|_: Request<Body>| async { Ok::<_, Infallible>(Response::new(Body::empty())) });
        let (_tx, shutdown) = watch::channel(false);
        let task = connection(std, peer, Plain(svc), Limits::default(), shutdown);
        let size = std::mem::size_of_val(&task);
        assert!(size < 2048, "a connection's task takes {size} bytes");
    }
}
