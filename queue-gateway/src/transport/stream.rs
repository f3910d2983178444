//! HTTP/1.1 event streams served beside hyper, not through it.
//!
//! hyper keeps an 8 KiB read buffer and an 8 KiB header write buffer for the whole life of an
//! HTTP/1 connection (there is no server setting for either). An SSE stream holds its
//! connection for as long as its ticket waits, so on a gateway holding tens of thousands of
//! streams those two buffers were two thirds of the memory. A new connection whose first
//! request line is `GET /api/v1/rooms/…/events HTTP/1.1` is therefore read and answered here:
//! the head is parsed with httparse (hyper's own parser) into a buffer freed before the stream
//! starts, the request goes through the same service as every other request (routing, limits,
//! metrics), and the response is written with chunked encoding; the connection closes when the
//! stream ends. Everything else, including a stream asked for on a kept-alive connection, stays
//! with hyper.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use axum::http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version};
use axum::response::Response;
use bytes::{BufMut, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tower::ServiceExt;

use crate::config::Limits;
use crate::error::error_body;
use crate::state::PeerAddr;
use crate::transport::Served;

/// Header lines a stream request may carry (hyper's default limit).
const MAX_HEADERS: usize = 100;
/// A client that takes in nothing of an event for this long is dropped.
const WRITE_STALL: Duration = Duration::from_secs(30);

/// Whether a new connection's first request is an event stream this module serves, judged
/// from the bytes already received without consuming them: a request line that has not
/// arrived whole in the first segment is left to hyper.
pub(crate) async fn is_event_stream(stream: &TcpStream) -> std::io::Result<bool> {
    let mut buf = [0u8; 512];
    let n = stream.peek(&mut buf).await?;
    Ok(is_stream_line(&buf[..n]))
}

fn is_stream_line(bytes: &[u8]) -> bool {
    let Some(end) = bytes.iter().position(|&b| b == b'\n') else { return false };
    let line = bytes[..end].strip_suffix(b"\r").unwrap_or(&bytes[..end]);
    let Some(target) = line.strip_prefix(b"GET ").and_then(|l| l.strip_suffix(b" HTTP/1.1")) else {
        return false;
    };
    is_events_path(target.split(|&b| b == b'?').next().unwrap_or(target))
}

/// A ticket's event stream path (`/api/v1/rooms/{room}/tickets/{ticket}/events`): it runs
/// as long as the ticket waits, so no request timeout applies to it.
pub(crate) fn is_events_path(path: &[u8]) -> bool {
    path.starts_with(b"/api/v1/rooms/") && path.ends_with(b"/events")
}

/// The answer to a first request whose head did not arrive in time.
pub(crate) fn head_timeout() -> Response {
    error_body(StatusCode::REQUEST_TIMEOUT, "request_timeout", "the request headers did not arrive in time")
}

/// Why a request head could not be read.
enum HeadError {
    /// The client went away or the socket failed: nothing to answer.
    Gone,
    TooLarge,
    Malformed(&'static str),
}

/// Reads the request head (the first byte of which must arrive by `deadline`), runs it through
/// `svc` and writes the response, then closes the connection.
pub(crate) async fn serve<S: Served>(
    mut stream: TcpStream,
    peer: SocketAddr,
    svc: S,
    limits: &Limits,
    deadline: Instant,
) {
    let request_timeout = Duration::from_millis(limits.request_timeout_ms);
    let head = read_head(&mut stream, limits.max_header_bytes);
    let response = match tokio::time::timeout_at(deadline, head).await {
        Err(_) => head_timeout(),
        Ok(Err(HeadError::Gone)) => return,
        Ok(Err(HeadError::TooLarge)) => error_body(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            "the request headers are too large",
        ),
        Ok(Err(HeadError::Malformed(why))) => error_body(StatusCode::BAD_REQUEST, "bad_request", why),
        // The same screen as every other way in: the path the router and the prefix check
        // read is the canonical one (a raw `/api/v1/rooms/../../book/1#/events` looks like a
        // stream here and is `/book/1`), whatever the first bytes looked like.
        Ok(Ok(mut req)) => match crate::policy::screen::screen(&mut req) {
            Err(refused) => axum::response::IntoResponse::into_response(refused),
            Ok(()) => {
                req.extensions_mut().insert(PeerAddr(peer));
                // Boxed: the router's future is large and done with once the head is out.
                match tokio::time::timeout(request_timeout, Box::pin(svc.oneshot(req))).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(never)) => match never {},
                    Err(_) => error_body(
                        StatusCode::REQUEST_TIMEOUT,
                        "request_timeout",
                        "the request took too long",
                    ),
                }
            }
        },
    };
    if let Err(e) = write_response(&mut stream, response).await {
        tracing::debug!(%peer, error = %e, "event stream ended early");
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
}

/// Reads until the head is complete; the buffer is dropped once the request is built.
/// Read as the lane reads ([`crate::transport::lane::read_some`]), so the stream's first look for the
/// client's close waits for the kernel's word rather than asking it.
async fn read_head(stream: &mut TcpStream, max: usize) -> Result<Request<Body>, HeadError> {
    let mut buf = BytesMut::with_capacity(1024.min(max));
    loop {
        if buf.len() >= max {
            return Err(HeadError::TooLarge);
        }
        if buf.capacity() == buf.len() {
            buf.reserve((max - buf.len()).min(4096));
        }
        // Never past `max`: what a client sends beyond it is not read.
        let room = max - buf.len();
        if matches!(
            crate::transport::lane::read_some(stream, &mut (&mut buf).limit(room)).await,
            Ok(0) | Err(_)
        ) {
            return Err(HeadError::Gone);
        }
        if let Some(req) = parse_head(&buf)? {
            return Ok(req);
        }
    }
}

/// The request, once `buf` holds all of its head; `None` while more is to come.
fn parse_head(buf: &[u8]) -> Result<Option<Request<Body>>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    // Bytes after the head can only be pipelined requests: they go unanswered, as the
    // connection closes after the stream (a client retries them on a new one).
    match parsed.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed("malformed request head")),
    }
    let target = parsed.path.unwrap_or("/");
    let uri = Uri::try_from(target).map_err(|_| HeadError::Malformed("malformed request target"))?;
    let mut req = Request::new(Body::empty());
    *req.method_mut() = Method::GET;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| HeadError::Malformed("malformed header name"))?;
        let value =
            HeaderValue::from_bytes(h.value).map_err(|_| HeadError::Malformed("malformed header value"))?;
        req.headers_mut().append(name, value);
    }
    let has_body = req.headers().contains_key(TRANSFER_ENCODING)
        || req.headers().get(CONTENT_LENGTH).is_some_and(|v| v.as_bytes() != b"0");
    if has_body {
        return Err(HeadError::Malformed("an event stream request has no body"));
    }
    Ok(Some(req))
}

/// Writes the head, then the body as it comes (chunked unless its length is known), ending
/// early if the client goes away or stops taking data in.
pub(crate) async fn write_response(stream: &mut TcpStream, response: Response) -> std::io::Result<()> {
    let (parts, mut body) = response.into_parts();
    let mut head = Vec::with_capacity(256);
    let chunked =
        crate::transport::lane::response_head(&parts, body.size_hint().exact(), false, true, &mut head);
    send(stream, &head).await?;
    drop(head);
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            gone = client_gone(stream) => {
                if gone {
                    return Ok(());
                }
                continue;
            }
        };
        let Some(frame) = frame else { break };
        let Ok(data) = frame.map_err(std::io::Error::other)?.into_data() else { continue };
        if data.is_empty() {
            continue;
        }
        if !chunked {
            send(stream, &data).await?;
        } else {
            let mut chunk = Vec::with_capacity(data.len() + 12);
            write!(chunk, "{:x}\r\n", data.len())?;
            chunk.extend_from_slice(&data);
            chunk.extend_from_slice(b"\r\n");
            send(stream, &chunk).await?;
        }
    }
    if chunked {
        send(stream, b"0\r\n\r\n").await?;
    }
    Ok(())
}

async fn send(stream: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    match tokio::time::timeout(WRITE_STALL, stream.write_all(bytes)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "client stopped reading")),
    }
}

/// Waits until the socket is readable: `true` if the client closed it (or it failed), `false`
/// if it only sent more bytes (discarded: the connection closes after this response anyway).
async fn client_gone(stream: &TcpStream) -> bool {
    if stream.readable().await.is_err() {
        return true;
    }
    let mut sink = [0u8; 256];
    match stream.try_read(&mut sink) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_event_stream_request_lines_are_taken() {
        let yes: [&[u8]; 3] = [
            b"GET /api/v1/rooms/r/tickets/t/events HTTP/1.1\r\nhost: x\r\n",
            b"GET /api/v1/rooms/r/tickets/t/events?x=1 HTTP/1.1\r\n",
            b"GET /api/v1/rooms/r/tickets/t/events HTTP/1.1\n",
        ];
        for line in yes {
            assert!(is_stream_line(line), "{}", String::from_utf8_lossy(line));
        }
        let no: [&[u8]; 7] = [
            b"GET /api/v1/rooms/r/tickets/t/events HTTP/1.1",
            b"GET /api/v1/rooms/r/tickets/t/events HTTP/1.0\r\n",
            b"POST /api/v1/rooms/r/tickets/t/events HTTP/1.1\r\n",
            b"GET /api/v1/rooms/r/tickets/t HTTP/1.1\r\n",
            b"GET /book/events HTTP/1.1\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"",
        ];
        for line in no {
            assert!(!is_stream_line(line), "{}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn heads_parse_into_requests_and_bad_ones_are_refused() {
        let ok = b"GET /api/v1/rooms/r/tickets/t/events HTTP/1.1\r\nhost: x\r\ncookie: a=b\r\n\r\n";
        let req = parse_head(ok).ok().flatten().unwrap();
        assert_eq!(req.uri().path(), "/api/v1/rooms/r/tickets/t/events");
        assert_eq!(req.headers()["cookie"], "a=b");
        assert!(matches!(parse_head(&ok[..ok.len() - 2]), Ok(None)));
        let bad: [&[u8]; 3] = [
            b"GET /api/v1/rooms/r/tickets/t/events HTTP/1.1\r\nno colon\r\n\r\n",
            b"GET /api/v1/rooms/r/tickets/t/events HTTP/1.1\r\ncontent-length: 4\r\n\r\nabcd",
            b"GET /api/v1/rooms/r/tickets/t/events HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
        ];
        for head in bad {
            assert!(
                matches!(parse_head(head), Err(HeadError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
        let many = format!(
            "GET /api/v1/rooms/r/tickets/t/events HTTP/1.1\r\n{}\r\n",
            "x: y\r\n".repeat(MAX_HEADERS + 1)
        );
        assert!(matches!(parse_head(many.as_bytes()), Err(HeadError::TooLarge)));
    }
}
