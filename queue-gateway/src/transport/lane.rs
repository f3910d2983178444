//! HTTP/1.1 connections read and answered by the gateway's own loop; hyper serves the rest.
//!
//! A connection's requests are read by the codec's server role ([`crate::http1::server`]) into
//! the same `Request` the service takes. Requests of the common shape (HTTP/1.1, no body or a
//! small one that came with its head, no `Expect` or `Upgrade`) are given to the handler's
//! lane ([`Handler::lane`]), which answers on the connection itself. At the first request of
//! any other shape (chunked bodies, large bodies, HTTP/1.0, h2c's preface, an event stream on a
//! kept-alive connection, a head hyper would refuse, a body that did not come with its head)
//! the connection goes to hyper with the bytes read so far, for the rest of its life; so every
//! odd case is still answered by hyper, as before this lane existed.
//!
//! Why: per forwarded request, hyper's server and client dispatchers, the header maps of the
//! backend's response and the tasks between them cost several times the gateway's own work.

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::StatusCode;
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::Limits;
use crate::http1::server::{Parsed, read_request, write_response};
use crate::transport::{Conn, Handler, Rewind, Slot};

/// Read buffer of a connection (grown for a larger head or body, and shrunk back).
const BUF: usize = 4096;

/// Serves `stream` until it closes, times out, is handed to hyper, or the gateway stops.
/// `first_request` is when the first request's head must have arrived; later requests get
/// the keep-alive idle limit.
pub(crate) async fn serve<H: Handler>(
    mut stream: TcpStream,
    peer: SocketAddr,
    handler: H,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
    first_request: Instant,
) {
    let request_timeout = Duration::from_millis(limits.request_timeout_ms);
    let idle = Duration::from_millis(limits.keep_alive_idle_ms);
    let mut buf = BytesMut::with_capacity(BUF);
    // `X-Forwarded-For`'s last hop, formatted once per connection.
    let peer_ip = peer.ip().to_string();
    let mut deadline = first_request;
    let mut first = true;
    // Whether a shutdown can still be signalled (a dropped sender never will).
    let mut watching = true;
    let mut slot: Slot<H::Service> = None;
    // One timer for the connection's life, moved on for each wait: a timer moved later is
    // only marked (tokio re-files it when it comes due), where a new one per request was
    // filed into the timer wheel and taken out again every time.
    let wait = tokio::time::sleep_until(deadline.min(Instant::now() + request_timeout));
    tokio::pin!(wait);
    loop {
        if *shutdown.borrow() {
            return;
        }
        // The wait is cut into spans no longer than a request's timeout: tokio wakes its
        // driver (a system call) whenever a timer is set earlier than every other, so an idle
        // limit longer than the request timeout cost one on every request.
        let span = deadline.min(Instant::now() + request_timeout);
        wait.as_mut().reset(span);
        let next = tokio::select! {
            next = read_request(&mut stream, &mut buf, limits.max_header_bytes, |p| handler.is_stream(p)) => Some(next),
            _ = &mut wait => {
                if span < deadline {
                    // Idle for a while: the service future's box goes until the next request.
                    slot = None;
                    continue;
                }
                None
            }
            changed = shutdown.changed(), if watching => {
                watching = changed.is_ok();
                continue;
            }
        };
        let (req, body, close) = match next {
            // Nothing at all on a kept-alive connection is an idle client; a head begun and
            // not finished (or a first request that never came) is a slow one.
            None if !first && buf.is_empty() => return,
            None => return crate::transport::request_timeout_answer(stream).await,
            Some(None) => return,
            Some(Some(Parsed::Bad | Parsed::Partial)) => {
                let bad = crate::error::error_body(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "malformed request head",
                );
                let _ = write_response(&mut stream, bad, false, true, false).await;
                return;
            }
            Some(Some(Parsed::HandOff(_))) => {
                // Not kept for the rest of the connection (an event stream, say).
                drop(slot);
                let io = Rewind { pending: buf.freeze(), stream };
                // hyper's header timer runs whenever it waits for a request head, idle or
                // not: here it is the keep-alive idle limit (the first request's was ours).
                let heads = Duration::from_millis(limits.keep_alive_idle_ms);
                return crate::transport::with_hyper(io, peer, handler, limits, shutdown, heads).await;
            }
            Some(Some(Parsed::Ready { req, body, close })) => (req, body, close),
        };
        first = false;
        let close = close || *shutdown.borrow();
        let conn = Conn {
            stream: &mut stream,
            peer,
            peer_ip: &peer_ip,
            close,
            timer: wait.as_mut(),
            request_timeout,
            slot: &mut slot,
        };
        let kept = handler.lane(req, body, conn).await;
        if !kept {
            let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
            return;
        }
        deadline = Instant::now() + idle;
        if buf.capacity() > 4 * BUF && buf.is_empty() {
            // A large head or body does not keep its buffer for the connection's life.
            buf = BytesMut::with_capacity(BUF);
        }
    }
}
