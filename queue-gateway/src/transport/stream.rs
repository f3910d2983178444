//! HTTP/1.1 event streams served beside hyper, not through it.
//!
//! hyper keeps an 8 KiB read buffer and an 8 KiB header write buffer for the whole life of an
//! HTTP/1 connection (there is no server setting for either). An SSE stream holds its
//! connection for as long as its ticket waits, so on a gateway holding tens of thousands of
//! streams those two buffers were two thirds of the memory. A new connection whose first
//! request line is `GET <a path the handler calls a stream> HTTP/1.1` is therefore read and
//! answered here:
//! the head is read by the codec's server role into a buffer freed before the stream starts,
//! the request goes through the same service as every other request (screen, routing, limits,
//! metrics), and the response is written with chunked encoding; the connection closes when the
//! stream ends. A head the codec does not take (too large, malformed, with a body) is refused
//! here with the contract's error body. Everything else, including a stream asked for on a kept-alive connection, stays
//! with hyper.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode};
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tower::ServiceExt;

use crate::config::Limits;
use crate::error::error_body;
use crate::http1::server::{Parsed, Unfit, read_request, write_response};
use crate::transport::{Handler, PeerAddr};

/// Whether a new connection's first request is an event stream this module serves, judged
/// from the bytes already received without consuming them: a request line that has not
/// arrived whole in the first segment is left to the lane.
pub(crate) async fn is_event_stream(stream: &TcpStream, handler: &impl Handler) -> std::io::Result<bool> {
    let mut buf = [0u8; 512];
    let n = stream.peek(&mut buf).await?;
    Ok(is_stream_line(&buf[..n], |path| handler.is_stream(path)))
}

fn is_stream_line(bytes: &[u8], is_stream: impl Fn(&[u8]) -> bool) -> bool {
    let Some(end) = bytes.iter().position(|&b| b == b'\n') else { return false };
    let line = bytes[..end].strip_suffix(b"\r").unwrap_or(&bytes[..end]);
    let Some(target) = line.strip_prefix(b"GET ").and_then(|l| l.strip_suffix(b" HTTP/1.1")) else {
        return false;
    };
    is_stream(target.split(|&b| b == b'?').next().unwrap_or(target))
}

/// The answer to a first request whose head did not arrive in time.
pub(crate) fn head_timeout() -> axum::response::Response {
    error_body(StatusCode::REQUEST_TIMEOUT, "request_timeout", "the request headers did not arrive in time")
}

/// `req` with its target and header values copied out of the read buffer.
fn detached(req: axum::http::Request<()>) -> axum::http::Request<Body> {
    let (mut parts, ()) = req.into_parts();
    parts.uri = parts.uri.to_string().parse().unwrap_or_default();
    for value in parts.headers.values_mut() {
        *value = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| HeaderValue::from_static(""));
    }
    axum::http::Request::from_parts(parts, Body::empty())
}

/// Reads the request head (which must have arrived by `deadline`), runs it through the
/// handler's service and writes the response, then closes the connection.
pub(crate) async fn serve<H: Handler>(
    mut stream: TcpStream,
    peer: SocketAddr,
    handler: &H,
    limits: &Limits,
    deadline: Instant,
) {
    let mut buf = BytesMut::with_capacity(1024.min(limits.max_header_bytes));
    let read = read_request(&mut stream, &mut buf, limits.max_header_bytes, |p| !handler.is_stream(p));
    let response = match tokio::time::timeout_at(deadline, read).await {
        Err(_) => head_timeout(),
        Ok(None) => return,
        Ok(Some(Parsed::HandOff(Unfit::TooLarge))) => error_body(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            "the request headers are too large",
        ),
        // The request line was a stream's (it chose this connection): what else does not fit
        // is a body, or headers asking for one.
        Ok(Some(Parsed::HandOff(Unfit::Shape))) => {
            error_body(StatusCode::BAD_REQUEST, "bad_request", "an event stream request has no body")
        }
        Ok(Some(Parsed::HandOff(Unfit::Malformed) | Parsed::Bad | Parsed::Partial)) => {
            error_body(StatusCode::BAD_REQUEST, "bad_request", "malformed request head")
        }
        Ok(Some(Parsed::Ready { body, .. })) if !body.is_empty() => {
            error_body(StatusCode::BAD_REQUEST, "bad_request", "an event stream request has no body")
        }
        Ok(Some(Parsed::Ready { req, .. })) => {
            // Owned copies: the head's bytes are slices of the read buffer, which a stream
            // that kept any of them (its cookie, say) would hold for its whole life.
            let mut req = detached(req);
            drop(buf);
            req.extensions_mut().insert(PeerAddr(peer));
            let timeout = Duration::from_millis(limits.request_timeout_ms);
            // Boxed: the router's future is large and done with once the head is out.
            match tokio::time::timeout(timeout, Box::pin(handler.service().oneshot(req))).await {
                Ok(Ok(r)) => r,
                Ok(Err(never)) => match never {},
                Err(_) => crate::transport::timed_out(),
            }
        }
    };
    if let Err(e) = write_response(&mut stream, response, false, true, true).await {
        tracing::debug!(%peer, error = %e, "event stream ended early");
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(path: &[u8]) -> bool {
        path.starts_with(b"/api/v1/rooms/") && path.ends_with(b"/events")
    }

    #[test]
    fn only_whole_event_stream_request_lines_are_taken() {
        let yes: [&[u8]; 3] = [
            b"GET /api/v1/rooms/r/tickets/t/events HTTP/1.1\r\nhost: x\r\n",
            b"GET /api/v1/rooms/r/tickets/t/events?x=1 HTTP/1.1\r\n",
            b"GET /api/v1/rooms/r/tickets/t/events HTTP/1.1\n",
        ];
        for line in yes {
            assert!(is_stream_line(line, events), "{}", String::from_utf8_lossy(line));
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
            assert!(!is_stream_line(line, events), "{}", String::from_utf8_lossy(line));
        }
    }
}
