//! The HTTP/1.1 codec: request heads read and response heads written for clients (the server
//! role, [`server`]), request heads written and response heads read for the backend (the client
//! role, [`client`]), one set of limits, one error type, and the socket reads and writes both
//! roles share. It knows nothing of rooms, tokens or routes: the transport and the pipeline
//! decide what a message means; this module only says where it begins and ends.
//!
//! httparse (hyper's own parser) reads every head; what it accepts and the `http` types refuse
//! is refused too.

pub mod client;
pub mod server;

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use bytes::BufMut;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;

/// Header lines a message may carry (hyper's default limit): requests with more go to hyper
/// (which answers `431`), responses with more are refused.
pub const MAX_HEADERS: usize = 100;
/// Largest request body read with its head; larger ones are streamed by hyper.
pub const MAX_LANE_BODY: usize = 64 * 1024;
/// Largest response head taken from the backend (on every path to it).
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// A peer that takes in nothing of what is written to it for this long is dropped.
pub const WRITE_STALL: Duration = Duration::from_secs(30);

pub use crate::error::CodecError;

/// One read of at least a byte (`Ok(0)`: the peer closed): `readable`, then
/// [`read_drained`]. Not `read_buf`: its polling machinery cost ~1,000 instructions per read.
pub async fn read_some(stream: &TcpStream, buf: &mut impl BufMut) -> std::io::Result<usize> {
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
pub fn read_drained(stream: &TcpStream, buf: &mut impl BufMut) -> std::io::Result<usize> {
    let room = buf.chunk_mut().len();
    let n = stream.try_read_buf(buf)?;
    if n > 0 && n < room {
        // What tokio's own `poll_read` does after a short read; a segment that arrived
        // since is not lost: its readiness event comes with the runtime's next poll.
        let _ = stream.try_io(Interest::READABLE, || Err::<(), _>(std::io::ErrorKind::WouldBlock.into()));
    }
    Ok(n)
}

/// Writes all of `bytes`, or fails once the peer has taken in nothing for [`WRITE_STALL`].
pub(crate) async fn write_all(stream: &mut TcpStream, bytes: &[u8]) -> Result<(), CodecError> {
    // Most writes fit the socket's buffer at once: no timer for those (filing one cost a
    // request a few hundred instructions).
    let sent = match stream.try_write(bytes) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e.into()),
    };
    if sent == bytes.len() {
        return Ok(());
    }
    match tokio::time::timeout(WRITE_STALL, stream.write_all(&bytes[sent..])).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(CodecError::Stalled),
    }
}

/// Waits until the socket is readable: `true` if the peer closed it (or it failed), `false`
/// if it only sent more bytes, which are discarded (for a connection that closes after its
/// response: a stream).
pub(crate) async fn peer_gone(stream: &TcpStream) -> bool {
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

/// Appends a header line.
#[inline]
pub(crate) fn header_line(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in decimal, without a formatter (heads and ticket answers).
#[inline]
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

/// Appends a `content-length:` line (without `fmt`: this runs on every message).
pub(crate) fn content_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    push_decimal(out, n);
    out.extend_from_slice(b"\r\n");
}

/// Whether a header name (any case) is hop-by-hop (RFC 9110 §7.6.1: `Connection`,
/// `Keep-Alive`, `Proxy-Authenticate`, `Proxy-Authorization`, `TE`, `Trailer`,
/// `Transfer-Encoding`, `Upgrade`): by length first, as nearly every name is none of them.
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

/// The names a message's `Connection` headers list (hop-by-hop by their word).
pub(crate) fn connection_named<'h>(values: impl Iterator<Item = &'h [u8]>) -> Vec<&'h [u8]> {
    values.flat_map(|v| v.split(|&b| b == b',')).map(<[u8]>::trim_ascii).filter(|n| !n.is_empty()).collect()
}

/// A proxy's rule for the backend's response headers (the pipeline's phase 7): whether the
/// client gets this one (not hop-by-hop, not named by the response's `Connection`). The
/// framing is the writer's.
pub(crate) fn response_keeps(name: &[u8], named: &[&[u8]]) -> bool {
    !is_hop_by_hop(name) && !named.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// [`response_keeps`] on a header map: what it refuses goes.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named = connection_named(headers.get_all(header::CONNECTION).iter().map(HeaderValue::as_bytes));
    // One pass finds the few to drop (a removal costs a hash and a probe, and most messages
    // carry one of these at most).
    let gone: Vec<HeaderName> =
        headers.keys().filter(|n| !response_keeps(n.as_str().as_bytes(), &named)).cloned().collect();
    for name in gone {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use tokio::io::AsyncWriteExt;

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

    #[test]
    fn content_lengths_are_decimal() {
        for n in [0, 7, 10, 171, 65_536, u64::MAX] {
            let mut out = Vec::new();
            content_length(&mut out, n);
            assert_eq!(out, format!("content-length: {n}\r\n").into_bytes());
        }
    }

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
}
