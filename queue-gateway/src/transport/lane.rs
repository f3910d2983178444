//! HTTP/1.1 connections read and answered by the gateway's own loop; hyper serves the rest.
//!
//! A connection's requests are parsed with httparse (hyper's own parser) into the same
//! `Request` the service takes. Requests of the common shape (HTTP/1.1, no body or a small
//! one that came with its head, no `Expect` or `Upgrade`) are served here: admitted traffic
//! to the backend by [`crate::pipeline::relay`], everything else by the service, its response written
//! back here. At the first request of any other shape (chunked bodies, large bodies, HTTP/1.0,
//! h2c's preface, an event stream on a kept-alive connection, a head hyper would refuse, a
//! body that did not come with its head) the connection goes to hyper with the bytes read so far, for the rest of its life; so every
//! odd case is still answered by hyper, as before this lane existed.
//!
//! Why: per forwarded request, hyper's server and client dispatchers, the header maps of the
//! backend's response and the tasks between them cost several times the gateway's own work.

use std::cell::RefCell;
use std::io::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use axum::http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version};
use axum::response::{IntoResponse, Response};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::Limits;
use crate::state::{App, PeerAddr};
use crate::transport::{Served, Slot, dispatch_in};

/// Header lines a request may carry here (hyper's default limit; more go to hyper).
const MAX_HEADERS: usize = 100;
/// Largest request body read here; larger ones are streamed by hyper.
const MAX_BODY: usize = 64 * 1024;
/// Read buffer of a connection, grown for a larger head or body.
const BUF: usize = 4096;

/// What came next on a connection. (Returned once per request and matched at once: boxing
/// the request would only add an allocation per request.)
#[allow(clippy::large_enum_variant)]
enum Next {
    /// A request of the lane's shape and its whole body; `close` when the client asked for
    /// the connection to close after it.
    Request { req: Request<()>, body: Bytes, close: bool },
    /// Anything else: hyper takes the connection with the bytes read so far.
    HandOff,
    /// The client went away.
    Gone,
    /// A head the lane cannot represent: answered `400` and closed.
    Bad,
}

/// Serves `stream` until it closes, times out, is handed to hyper, or the gateway stops.
/// `first_request` is when the first request's head must have arrived; later requests get
/// the keep-alive idle limit. `app` enables the relay (plain services go without it).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve<S: Served>(
    mut stream: TcpStream,
    peer: SocketAddr,
    svc: S,
    app: Option<Arc<App>>,
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
    let mut slot: Slot<S> = None;
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
            next = read_request(&mut stream, &mut buf, limits.max_header_bytes) => Some(next),
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
            Some(Next::Gone) => return,
            Some(Next::Bad) => {
                let bad = crate::error::error_body(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "malformed request head",
                );
                let _ = write_response(&mut stream, bad, false, true).await;
                return;
            }
            Some(Next::HandOff) => {
                // Not kept for the rest of the connection (an event stream, say).
                drop(slot);
                let io = Rewind { pending: buf.freeze(), stream };
                // hyper's header timer runs whenever it waits for a request head, idle or
                // not: here it is the keep-alive idle limit (the first request's was ours).
                let heads = Duration::from_millis(limits.keep_alive_idle_ms);
                return crate::transport::with_hyper(io, peer, svc, limits, shutdown, heads).await;
            }
            Some(Next::Request { mut req, body, close }) => {
                if let Err(refused) = crate::policy::screen::screen(&mut req) {
                    let _ = write_response(&mut stream, refused.into_response(), false, true).await;
                    let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
                    return;
                }
                (req, body, close)
            }
        };
        first = false;
        let close = close || *shutdown.borrow();
        let (index, segs) = crate::route(req.uri().path());
        let poll = crate::plain_poll(req.method(), index, &segs);
        let kept = match &app {
            Some(app) if crate::pipeline::forward::relayable(app, index, &req) => {
                relay(app, req, &body, &peer_ip, &mut stream, close, wait.as_mut()).await
            }
            Some(app) if let Some(ids) = poll => {
                let answer = status(app, &req, ids, peer, request_timeout, wait.as_mut()).await;
                write_response(&mut stream, answer, false, close).await.unwrap_or(false)
            }
            _ => {
                let head_only = req.method() == Method::HEAD;
                let mut req = req.map(|()| if body.is_empty() { Body::empty() } else { Body::from(body) });
                req.extensions_mut().insert(PeerAddr(peer));
                let resp = dispatch_in(&mut slot, svc.clone(), req, request_timeout).await;
                write_response(&mut stream, resp, head_only, close).await.unwrap_or(false)
            }
        };
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

/// An admitted (or unprotected) request for the backend (screened: [`crate::policy::screen`]):
/// checked and prepared as the proxy does, then relayed, bounded by the connection's
/// `timer`. True when the connection can take the next request.
async fn relay(
    app: &App,
    req: Request<()>,
    body: &[u8],
    peer_ip: &str,
    stream: &mut TcpStream,
    close: bool,
    timer: Pin<&mut tokio::time::Sleep>,
) -> bool {
    let started = std::time::Instant::now();
    let head_only = req.method() == Method::HEAD;
    let (parts, ()) = req.into_parts();
    let resp = match crate::pipeline::forward::admit(app, &parts.uri, &parts.headers) {
        Err(refused) => *refused,
        Ok(token) => {
            let client = crate::pipeline::relay::Client { stream, close, peer_ip };
            let relayed =
                crate::pipeline::relay::forward(app, &parts, body, token.as_ref(), client, timer, started);
            match relayed.await {
                Ok(relayed) => return relayed == crate::pipeline::relay::Relayed::KeepAlive,
                Err(e) => e.into_response(),
            }
        }
    };
    let code = resp.status().as_u16();
    app.metrics.request_done(crate::PROXIED_ROUTE, "proxy", code, started.elapsed().as_secs_f64());
    write_response(stream, resp, head_only, close).await.unwrap_or(false)
}

/// A status poll answered here, as the service would answer it past its router (the
/// busiest route after forwarding: the service's layers, a second look at the route and a
/// timer of its own were a sixth of a poll answered from memory). Bounded by the
/// connection's `timer`, as the service bounds a request.
async fn status(
    app: &App,
    req: &Request<()>,
    ids: Result<(queue_core::RoomId, queue_core::TicketId), crate::error::GatewayError>,
    peer: SocketAddr,
    timeout: Duration,
    mut timer: Pin<&mut tokio::time::Sleep>,
) -> Response {
    let started = std::time::Instant::now();
    timer.as_mut().reset(Instant::now() + timeout);
    let peer = Some(crate::state::PeerAddr(peer));
    let resp = tokio::select! {
        biased;
        resp = crate::api::room::status_answer(app, peer, req.headers(), ids) => resp,
        _ = timer => crate::transport::timed_out(),
    };
    let index = crate::STATUS_ROUTE;
    let code = resp.status().as_u16();
    app.metrics.request_done(index, crate::ROUTES[index], code, started.elapsed().as_secs_f64());
    resp
}

/// Reads until `buf` holds a whole request of the lane's shape (taken out of `buf`), or
/// shows the connection is hyper's.
async fn read_request(stream: &mut TcpStream, buf: &mut BytesMut, max_head: usize) -> Next {
    loop {
        if !buf.is_empty() {
            match parse(buf, max_head) {
                Parsed::Partial => {}
                Parsed::HandOff => return Next::HandOff,
                Parsed::Bad => return Next::Bad,
                Parsed::Ready { req, body, close } => return Next::Request { req, body, close },
            }
        }
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(BUF);
        }
        if matches!(read_some(stream, buf).await, Ok(0) | Err(_)) {
            return Next::Gone;
        }
    }
}

/// One read of at least a byte (`Ok(0)`: the peer closed): `readable`, then
/// [`read_drained`]. Not `read_buf`: its polling machinery cost ~1,000 instructions per read.
pub(crate) async fn read_some(stream: &TcpStream, buf: &mut impl BufMut) -> std::io::Result<usize> {
    loop {
        stream.readable().await?;
        match read_drained(stream, buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

/// One read of what `stream` holds into `buf`'s room (what `chunk_mut` offers: a
/// `BytesMut`'s spare capacity, or less under a `limit`). A read that left room
/// emptied the socket, so the stream stops counting as readable until the next segment
/// arrives: otherwise the next read (a keep-alive connection's next request, which no
/// client sends before it has our answer) would be a system call that finds nothing, one
/// per request (`perf stat` of the status polls: 0.97 such reads per poll).
pub(crate) fn read_drained(stream: &TcpStream, buf: &mut impl BufMut) -> std::io::Result<usize> {
    let room = buf.chunk_mut().len();
    let n = stream.try_read_buf(buf)?;
    if n > 0 && n < room {
        // What tokio's own `poll_read` does after a short read; a segment that arrived
        // since is not lost: its readiness event comes with the runtime's next poll.
        let _ = stream.try_io(Interest::READABLE, || Err::<(), _>(std::io::ErrorKind::WouldBlock.into()));
    }
    Ok(n)
}

#[allow(clippy::large_enum_variant)]
pub(crate) enum Parsed {
    Partial,
    HandOff,
    /// The request's head and body, taken out of the buffer.
    Ready {
        req: Request<()>,
        body: Bytes,
        close: bool,
    },
    /// A head httparse took that the `http` types refuse (they check the same bytes, so
    /// this is not expected): answered `400`.
    Bad,
}

/// The request at the start of `buf`, if it is whole and of the lane's shape; a `Ready`
/// request's bytes are taken out of `buf`. Its path, header values and body are slices of
/// those bytes, not copies: a copy was an allocation per header value.
pub(crate) fn parse(buf: &mut BytesMut, max_head: usize) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < max_head => return Parsed::Partial,
        // Too large, too many headers, malformed, HTTP/2's preface: hyper answers those.
        _ => return Parsed::HandOff,
    };
    if head_len > max_head || parsed.version != Some(1) {
        return Parsed::HandOff;
    }
    let (Some(method), Some(target)) = (parsed.method, parsed.path) else { return Parsed::HandOff };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else { return Parsed::HandOff };
    if !target.starts_with('/')
        || crate::transport::stream::is_events_path(target.split('?').next().unwrap_or("").as_bytes())
    {
        return Parsed::HandOff;
    }
    // Where each kept piece lies in `buf`, to slice it once the bytes are taken out.
    let start = buf.as_ptr() as usize;
    let span = |piece: &[u8]| {
        let at = piece.as_ptr() as usize - start;
        at..at + piece.len()
    };
    let target = span(target.as_bytes());
    let mut names = Vec::with_capacity(parsed.headers.len());
    let mut body_len = 0usize;
    let mut close = false;
    for h in parsed.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else { return Parsed::HandOff };
        if name == CONTENT_LENGTH {
            let digits = h.value;
            let Some(n) = std::str::from_utf8(digits).ok().filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
            else {
                return Parsed::HandOff;
            };
            match n.parse::<usize>() {
                Ok(n) if n <= MAX_BODY && !names.iter().any(|(n, _)| *n == CONTENT_LENGTH) => body_len = n,
                _ => return Parsed::HandOff,
            }
        } else if name == TRANSFER_ENCODING
            || name == axum::http::header::EXPECT
            || name == axum::http::header::UPGRADE
        {
            return Parsed::HandOff;
        } else if name == CONNECTION {
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return Parsed::HandOff;
                }
            }
        }
        names.push((name, span(h.value)));
    }
    let used = head_len + body_len;
    if buf.len() < used {
        // A body not sent with its head: hyper streams it (and refuses a declared length
        // over the limit before reading any of it).
        return Parsed::HandOff;
    }
    let bytes = buf.split_to(used).freeze();
    let mut req = Request::new(());
    // Sized once: grown header by header, the map rehashed itself twice per request.
    *req.headers_mut() = axum::http::HeaderMap::with_capacity(names.len());
    for (name, value) in names {
        let Ok(value) = HeaderValue::from_maybe_shared(bytes.slice(value)) else { return Parsed::Bad };
        req.headers_mut().append(name, value);
    }
    let Ok(uri) = Uri::from_maybe_shared(bytes.slice(target)) else { return Parsed::Bad };
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    Parsed::Ready { req, body: bytes.slice(head_len..used), close }
}

/// Writes a response of the service: head and body, the body with its length when known,
/// else chunked. True when the connection can take the next request.
pub(crate) async fn write_response(
    stream: &mut TcpStream,
    response: Response,
    head_only: bool,
    close: bool,
) -> std::io::Result<bool> {
    let (parts, mut body) = response.into_parts();
    let close = close
        || parts.headers.get_all(CONNECTION).iter().any(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    let length = body.size_hint().exact();
    let mut out = Vec::with_capacity(256 + length.unwrap_or(0).min(64 * 1024) as usize);
    let chunked = response_head(&parts, length, head_only, close, &mut out);
    let bodiless = head_only || !has_body(parts.status);
    if !bodiless {
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.map_err(std::io::Error::other)?.into_data() else { continue };
            if data.is_empty() {
                continue;
            }
            if chunked {
                let _ = write!(out, "{:x}\r\n", data.len());
            }
            out.extend_from_slice(&data);
            if chunked {
                out.extend_from_slice(b"\r\n");
            }
            // A whole body goes out with its head in one write; a stream, frame by frame.
            if !body.is_end_stream() {
                stream.write_all(&out).await?;
                out.clear();
            }
        }
        if chunked {
            out.extend_from_slice(b"0\r\n\r\n");
        }
    }
    stream.write_all(&out).await?;
    Ok(!close)
}

/// Whether a response of this status carries a body at all.
fn has_body(status: StatusCode) -> bool {
    !(status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED)
}

/// Appends a response head to `out`: the status line, the response's own headers (less the
/// framing and connection headers, which are ours to say), `Date` unless it has one, the
/// framing (`length`, else chunked), and `connection: close` when `close`. A HEAD answer keeps
/// the length a GET would get (the handler's own header, else its body's). True when the
/// body is to be sent chunked.
pub(crate) fn response_head(
    parts: &axum::http::response::Parts,
    length: Option<u64>,
    head_only: bool,
    close: bool,
    out: &mut Vec<u8>,
) -> bool {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut dated = false;
    let given_length = parts.headers.contains_key(CONTENT_LENGTH);
    for (name, value) in &parts.headers {
        if name == CONNECTION || name == TRANSFER_ENCODING || (name == CONTENT_LENGTH && !head_only) {
            continue;
        }
        dated |= name == DATE;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !dated {
        write_date(out);
    }
    let has_body = has_body(parts.status);
    match length {
        _ if !has_body => {}
        Some(n) if head_only && !given_length && n > 0 => content_length(out, n),
        _ if head_only => {}
        Some(n) => content_length(out, n),
        None => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    has_body && !head_only && length.is_none()
}

/// Appends a `content-length:` line (without `fmt`: this runs on every response).
fn content_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    push_decimal(out, n);
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in decimal, without a formatter (response heads and ticket answers).
pub(crate) fn push_decimal(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut left = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (left % 10) as u8;
        left /= 10;
        if left == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

thread_local! {
    /// The `Date` line of the current second (formatting one costs more than a request's
    /// other headers together).
    static DATE_LINE: RefCell<(u64, Vec<u8>)> = const { RefCell::new((0, Vec::new())) };
}

/// Appends a `date:` header line for now.
pub(crate) fn write_date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE_LINE.with_borrow_mut(|(at, line)| {
        if *at != secs || line.is_empty() {
            line.clear();
            let _ = write!(line, "date: {}\r\n", httpdate::fmt_http_date(now));
            *at = secs;
        }
        out.extend_from_slice(line);
    });
}

/// A connection handed to hyper: the bytes the lane read first, then the socket.
struct Rewind {
    pending: Bytes,
    stream: TcpStream,
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

    /// A read that empties the socket leaves it not readable, so the next read waits for
    /// the kernel's word instead of asking it, and the next bytes still wake the reader; a
    /// read that fills the buffer leaves it readable (more may be waiting). Real time
    /// bounds the waits only: no bytes are coming in the first, and the second ends as soon
    /// as they are there.
    #[tokio::test]
    async fn a_drained_socket_waits_for_its_next_bytes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let readable = |wait| tokio::time::timeout(Duration::from_millis(wait), stream.readable());
        peer.write_all(b"GET").await.unwrap();
        stream.readable().await.unwrap();
        let mut buf = BytesMut::with_capacity(64);
        assert_eq!(read_drained(&stream, &mut buf).unwrap(), 3);
        assert!(readable(100).await.is_err(), "a drained socket is not readable");
        peer.write_all(b" /x").await.unwrap();
        assert!(readable(10_000).await.is_ok(), "the next bytes wake it");
        assert_eq!(read_drained(&stream, &mut buf).unwrap(), 3);
        assert_eq!(&buf[..], b"GET /x");

        peer.write_all(&[b'a'; 100]).await.unwrap();
        readable(10_000).await.unwrap().unwrap();
        let mut full = BytesMut::with_capacity(8);
        let room = full.capacity();
        assert_eq!(read_drained(&stream, &mut full).unwrap(), room);
        assert!(readable(100).await.is_ok(), "a full read leaves the socket readable");
        let mut rest = BytesMut::with_capacity(256);
        assert_eq!(read_drained(&stream, &mut rest).unwrap(), 100 - room);
    }

    /// `super::parse` on `head`, and how many bytes it took out.
    fn parse_counted(head: &[u8], max_head: usize) -> (Parsed, usize) {
        let mut buf = BytesMut::from(head);
        let parsed = super::parse(&mut buf, max_head);
        let used = head.len() - buf.len();
        assert_eq!(&buf[..], &head[used..]);
        // Hyper reads a handed-off connection from the first byte of its request; a bad
        // head closes the connection, so what it took does not matter.
        if matches!(parsed, Parsed::Partial | Parsed::HandOff) {
            assert_eq!(used, 0, "a partial or handed-off request stays in the buffer");
        }
        (parsed, used)
    }

    fn parse(head: &[u8], max_head: usize) -> Parsed {
        parse_counted(head, max_head).0
    }

    fn ready(head: &[u8]) -> (Request<()>, usize, bool) {
        match parse_counted(head, 8192) {
            (Parsed::Ready { req, close, .. }, used) => (req, used, close),
            (Parsed::Partial, _) => panic!("partial: {}", String::from_utf8_lossy(head)),
            (Parsed::HandOff, _) => panic!("handed off: {}", String::from_utf8_lossy(head)),
            (Parsed::Bad, _) => panic!("bad: {}", String::from_utf8_lossy(head)),
        }
    }

    #[test]
    fn common_requests_are_the_lanes() {
        let (req, used, close) =
            ready(b"GET /book/seat?x=1 HTTP/1.1\r\nhost: a\r\ncookie: a=b\r\n\r\nGET /next");
        assert_eq!(
            (req.method(), req.uri().path(), req.uri().query(), used, close),
            (&Method::GET, "/book/seat", Some("x=1"), 53, false)
        );
        assert_eq!(req.headers()["cookie"], "a=b");
        let (req, used, close) = ready(
            b"POST /api/v1/rooms/r/tickets HTTP/1.1\r\ncontent-length: 2\r\nconnection: Close\r\n\r\n{}",
        );
        assert_eq!((req.method(), used, close), (&Method::POST, 81, true));
        let Parsed::Ready { body, .. } = parse(b"POST /x HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}GET", 8192)
        else {
            panic!("not ready")
        };
        assert_eq!(&body[..], b"{}", "the body, not what follows it");
        assert!(matches!(parse(b"GET /x HTTP/1.1\r\nhost: a\r\n", 8192), Parsed::Partial));
    }

    #[test]
    fn everything_else_is_hypers() {
        let big = format!("POST /x HTTP/1.1\r\ncontent-length: {}\r\n\r\n", MAX_BODY + 1);
        let many = format!("GET /x HTTP/1.1\r\n{}\r\n", "a: b\r\n".repeat(MAX_HEADERS + 1));
        let cases: [&[u8]; 13] = [
            b"POST /x HTTP/1.1\r\ncontent-length: 5\r\n\r\nab",
            b"GET /x HTTP/1.0\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"POST /x HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
            b"POST /x HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n",
            b"GET /x HTTP/1.1\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
            b"POST /x HTTP/1.1\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nab",
            b"POST /x HTTP/1.1\r\ncontent-length: +2\r\n\r\nab",
            b"GET http://a/x HTTP/1.1\r\n\r\n",
            b"GET /api/v1/rooms/r/tickets/t/events HTTP/1.1\r\n\r\n",
            b"GET /x HTTP/1.1\r\nno colon\r\n\r\n",
            big.as_bytes(),
            many.as_bytes(),
        ];
        for head in cases {
            assert!(matches!(parse(head, 8192), Parsed::HandOff), "{}", String::from_utf8_lossy(head));
        }
        // A head that outgrows the limit is hyper's to refuse (431).
        let long = format!("GET /x HTTP/1.1\r\nx: {}", "y".repeat(200));
        assert!(matches!(parse(long.as_bytes(), 100), Parsed::HandOff));
    }

    /// Requests the lane takes, to be mangled below.
    const SEEDS: [&[u8]; 4] = [
        b"GET /book/seat?x=1 HTTP/1.1\r\nhost: a\r\ncookie: wr_r=abc; x=y\r\n\r\n",
        b"POST /api/v1/rooms/r/tickets HTTP/1.1\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
        b"DELETE /api/v1/rooms/r/tickets/00 HTTP/1.1\r\nx-forwarded-for: 1.2.3.4\r\n\r\n",
        b"PUT /admin/v1/rooms/r HTTP/1.1\r\ncontent-length: 0\r\n\r\nGET / HTTP/1.1\r\n\r\n",
    ];

    /// A seed with bytes replaced, inserted and removed, then maybe cut short.
    fn mangled() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let edit = (any::<prop::sample::Index>(), 0u8..3, any::<u8>());
        (0..SEEDS.len(), prop::collection::vec(edit, 0..8), any::<prop::sample::Index>(), any::<bool>())
            .prop_map(|(seed, edits, cut, cut_it)| {
                let mut head = SEEDS[seed].to_vec();
                for (at, kind, byte) in edits {
                    let i = at.index(head.len() + 1);
                    match kind {
                        0 if i < head.len() => head[i] = byte,
                        1 if i < head.len() => drop(head.remove(i)),
                        _ => head.insert(i, byte),
                    }
                }
                if cut_it {
                    head.truncate(cut.index(head.len() + 1));
                }
                head
            })
    }

    proptest::proptest! {
        /// Whatever a client sends, the lane's parser does not panic, takes out exactly one
        /// request's bytes (none when it waits for more or hands the connection to hyper),
        /// and a request it takes is one httparse reads the same way, its body exactly the
        /// declared length, with nothing it would have to hand to hyper.
        #[test]
        fn no_head_breaks_the_lane(head in proptest::prop_oneof![
            mangled(),
            proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
        ], max_head in 16usize..512) {
            let (parsed, used) = parse_counted(&head, max_head);
            match parsed {
                Parsed::Ready { req, body, .. } => {
                    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    let mut check = httparse::Request::new(&mut headers);
                    let Ok(httparse::Status::Complete(n)) = check.parse(&head) else {
                        panic!("httparse refuses what the lane took: {:?}", String::from_utf8_lossy(&head));
                    };
                    proptest::prop_assert!(n <= max_head);
                    proptest::prop_assert_eq!(used, n + body.len());
                    proptest::prop_assert_eq!(check.method, Some(req.method().as_str()));
                    // The target as `Uri` reads it (which drops a `#fragment`, here as in hyper).
                    let target = check.path.map(|p| p.parse::<Uri>().unwrap());
                    proptest::prop_assert_eq!(target.as_ref(), Some(req.uri()));
                    proptest::prop_assert_eq!(check.headers.len(), req.headers().len());
                    let declared = req.headers().get(CONTENT_LENGTH).map(|v| v.to_str().unwrap().parse::<usize>().unwrap());
                    proptest::prop_assert_eq!(declared.unwrap_or(0), body.len());
                    for name in [TRANSFER_ENCODING, axum::http::header::EXPECT, axum::http::header::UPGRADE] {
                        proptest::prop_assert!(!req.headers().contains_key(name));
                    }
                }
                Parsed::Partial => proptest::prop_assert!(head.len() < max_head),
                Parsed::HandOff | Parsed::Bad => {}
            }
        }
    }

    #[test]
    fn content_lengths_are_decimal() {
        for n in [0, 7, 10, 171, 65_536, u64::MAX] {
            let mut out = Vec::new();
            content_length(&mut out, n);
            assert_eq!(out, format!("content-length: {n}\r\n").into_bytes());
        }
    }

    #[test]
    fn date_lines_are_http_dates() {
        let mut out = Vec::new();
        write_date(&mut out);
        let line = String::from_utf8(out).unwrap();
        let value = line.strip_prefix("date: ").and_then(|l| l.strip_suffix("\r\n")).unwrap();
        assert!(httpdate::parse_http_date(value).is_ok(), "{line}");
    }
}
