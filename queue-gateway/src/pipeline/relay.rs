//! Admitted HTTP/1.1 requests forwarded byte for byte, past hyper's client.
//!
//! [`crate::transport::lane`] hands over a request it has parsed and [`crate::pipeline::forward`] has checked and
//! prepared; its head is written to a plain kept-alive backend socket, the backend's response
//! head is parsed with httparse and written to the client without its hop-by-hop headers, and
//! the body is relayed as it arrives, its framing (length, chunked, or until the backend
//! closes) followed only to know where it ends. Each step a hyper client and server take per
//! request (a request sent to the connection's task, a header map built from the response and
//! taken apart again by the server, a body polled frame by frame) costs more than the bytes;
//! on a forwarding gateway those steps were most of its work.

use std::pin::Pin;
use std::time::{Duration, Instant};

use axum::http::header::{CONNECTION, CONTENT_LENGTH, COOKIE, HOST};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode};
use bytes::{Buf, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::error::{GatewayError, UpstreamFailure};
use crate::pipeline::forward::{self as proxy, Upstream};
use crate::pipeline::upstream::UpstreamError;
use crate::policy::admission::ADMISSION_HEADER;
use crate::policy::screen::BodyEnd;
use crate::state::App;

/// Response header lines read from the backend at most.
const MAX_HEADERS: usize = 100;
/// Largest response head taken from the backend (on both paths).
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// Bytes read from the backend at a time.
const READ_CHUNK: usize = 16 * 1024;

/// How a relayed response ended for the client's connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Relayed {
    /// The response was written whole: the connection can take the next request.
    KeepAlive,
    /// The response ended with the connection (or failed half-way): close it.
    Close,
}

/// How the backend's response body is delimited.
pub(crate) enum Framing {
    None,
    Length(u64),
    Chunked(Chunked),
    UntilClose,
}

/// Forwards a client's request (checked: path and admission; `token` is the one to pass on)
/// with its whole `body`, and relays the answer to `client`. `close` asks the client's
/// connection to close after this response. On `Err` nothing has been written to the
/// client yet: the error is the answer.
/// The client side of a relayed request.
pub(crate) struct Client<'a> {
    pub stream: &'a mut TcpStream,
    /// The client asked to close after this request.
    pub close: bool,
    /// Its address, for `X-Forwarded-For`.
    pub peer_ip: &'a str,
}

/// Relays one request. `timer` bounds the backend's answer: the connection's own wait
/// timer, moved on rather than a timer filed and removed per request.
pub(crate) async fn forward(
    app: &App,
    parts: &Parts,
    body: &[u8],
    token: Option<&HeaderValue>,
    Client { stream: client, close, peer_ip }: Client<'_>,
    mut timer: Pin<&mut tokio::time::Sleep>,
    started: Instant,
) -> Result<Relayed, GatewayError> {
    let up = &app.upstream;
    let request = request_head(up, app.cfg.trust_forwarded, parts, peer_ip, token, body)?;
    let asked = Instant::now();
    timer.as_mut().reset(tokio::time::Instant::from_std(asked) + up.timeout());
    let exchanged = tokio::select! {
        biased;
        got = exchange(app, &request, &parts.method) => Some(got),
        _ = timer => None,
    };
    app.metrics.upstream_duration.observe(asked.elapsed().as_secs_f64());
    let (mut backend, mut buf, head) = match exchanged {
        None => return Err(GatewayError::Upstream(UpstreamFailure::Timeout)),
        Some(Err(e)) => return Err(GatewayError::Upstream(UpstreamFailure::Unreachable(e))),
        Some(Ok(got)) => got,
    };
    let head_only = parts.method == Method::HEAD;
    let framing = head.framing(head_only);
    let client_close = close || matches!(framing, Framing::UntilClose);
    let mut out = Vec::with_capacity(head.client.len() + 96 + buf.len().min(READ_CHUNK));
    head.write_for_client(&framing, client_close, &mut out);
    buf.advance(head.len);
    app.metrics.request_done(crate::PROXIED_ROUTE, "proxy", head.status, started.elapsed().as_secs_f64());
    let ended = relay_body(app, &mut backend, buf, framing, out, client).await;
    let reusable = head.reusable && crate::policy::screen::reusable_after(head_only, head.status, head.end);
    match ended {
        Ok(true) if reusable => app.upstream.connections().sockets().put(backend),
        Ok(_) => {}
        Err(e) => {
            tracing::debug!(error = %e, "relayed response ended early");
            return Ok(Relayed::Close);
        }
    }
    Ok(if client_close { Relayed::Close } else { Relayed::KeepAlive })
}

/// The backend's request, head and body, written straight from the client's head: what
/// [`proxy::prepare`] makes of it in a header map (hop-by-hop headers out, `Host`,
/// `X-Forwarded-*` and the admission token set), without building one.
pub(crate) fn request_head(
    up: &Upstream,
    trusted: bool,
    parts: &Parts,
    peer_ip: &str,
    token: Option<&HeaderValue>,
    body: &[u8],
) -> Result<Vec<u8>, GatewayError> {
    if body.len() > up.max_body() {
        return Err(proxy::too_large());
    }
    let uri = up.uri_for(&parts.uri)?;
    let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let headers = &parts.headers;
    let https = trusted && crate::policy::admission::is_https(headers);
    // Headers a `Connection` header names are hop-by-hop too.
    let named: Vec<&str> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let size = 64
        + target.len()
        + headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum::<usize>()
        + up.host().len()
        + peer_ip.len()
        + token.map_or(0, HeaderValue::len)
        + 128
        + body.len();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let (mut prev_for, mut host) = (None, None);
    for (name, value) in headers {
        let n = name.as_str();
        if proxy::is_hop_by_hop(n.as_bytes()) || named.iter().any(|c| c.eq_ignore_ascii_case(n)) {
            continue;
        }
        if *name == CONTENT_LENGTH {
            // The framing is ours to say, from the body we send (below).
            continue;
        } else if *name == proxy::X_FORWARDED_FOR {
            prev_for = prev_for.or(Some(value));
        } else if *name == HOST {
            host = host.or(Some(value));
        } else if *name == COOKIE {
            if let Some(kept) = crate::policy::admission::backend_cookies(value.as_bytes()) {
                line(&mut out, n, &kept);
            }
        } else if *name != proxy::X_FORWARDED_PROTO
            && *name != proxy::X_FORWARDED_HOST
            && *name != ADMISSION_HEADER
        {
            line(&mut out, n, value.as_bytes());
        }
    }
    line(&mut out, "host", up.host().as_bytes());
    out.extend_from_slice(b"x-forwarded-for: ");
    if let Some(prev) = prev_for.filter(|_| trusted).and_then(|v| v.to_str().ok()) {
        out.extend_from_slice(prev.as_bytes());
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(peer_ip.as_bytes());
    out.extend_from_slice(b"\r\n");
    line(&mut out, "x-forwarded-proto", if https { b"https" } else { b"http" });
    if let Some(host) = host {
        line(&mut out, "x-forwarded-host", host.as_bytes());
    }
    if let Some(token) = token {
        line(&mut out, ADMISSION_HEADER.as_str(), token.as_bytes());
    }
    if !body.is_empty() {
        // As hyper's client frames a body of known length (none for an empty one).
        out.extend_from_slice(b"content-length: ");
        crate::transport::lane::push_decimal(&mut out, body.len() as u64);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    Ok(out)
}

fn line(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Methods a backend may see twice: a request lost on a connection the backend had closed is
/// sent again on a new one only if it is one of these or was never written.
fn idempotent(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE)
}

/// Writes the request on an idle connection of this thread (or a new one) and reads the
/// response head.
async fn exchange(app: &App, request: &[u8], method: &Method) -> Result<(TcpStream, BytesMut, Head), String> {
    let conns = app.upstream.connections();
    loop {
        let (mut backend, reused) = match conns.sockets().take() {
            Some(s) => (s, true),
            None => (conns.open().await.map_err(|e: UpstreamError| e.to_string())?, false),
        };
        if let Err(e) = backend.write_all(request).await {
            if reused {
                continue;
            }
            return Err(format!("write to the backend: {e}"));
        }
        match read_head(&mut backend).await {
            Ok((buf, head)) => return Ok((backend, buf, head)),
            Err(HeadError::Closed) if reused && idempotent(method) => continue,
            Err(HeadError::Closed) => return Err("the backend closed the connection".into()),
            Err(HeadError::Io(e))
                if reused && idempotent(method) && e.kind() == std::io::ErrorKind::ConnectionReset =>
            {
                continue;
            }
            Err(HeadError::Io(e)) => return Err(format!("read from the backend: {e}")),
            Err(HeadError::Invalid(why)) => return Err(why.into()),
        }
    }
}

pub(crate) enum HeadError {
    /// The backend closed the connection before a byte of the response.
    Closed,
    Io(std::io::Error),
    Invalid(&'static str),
}

/// What the relay needs of a parsed response head (the bytes stay in the read buffer).
pub(crate) struct Head {
    /// Length of the head in the buffer.
    pub(crate) len: usize,
    pub(crate) status: u16,
    /// Where the body ends, by its framing headers.
    end: BodyEnd,
    /// HTTP/1.1 without `Connection: close`.
    reusable: bool,
    /// The client's status line and headers.
    client: Vec<u8>,
    /// The backend sent a `Date`.
    dated: bool,
}

async fn read_head(backend: &mut TcpStream) -> Result<(BytesMut, Head), HeadError> {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(READ_CHUNK);
        }
        let n = crate::transport::lane::read_some(backend, &mut buf).await.map_err(HeadError::Io)?;
        if n == 0 {
            return Err(if buf.is_empty() {
                HeadError::Closed
            } else {
                HeadError::Invalid("the backend closed mid-head")
            });
        }
        // Informational answers (100 Continue, 103 Early Hints) are not passed on.
        while let Some(head) = parse_head(&buf)? {
            if (100..200).contains(&head.status) {
                if head.status == 101 {
                    return Err(HeadError::Invalid("the backend switched protocols unasked"));
                }
                buf.advance(head.len);
                continue;
            }
            return Ok((buf, head));
        }
        if buf.len() >= MAX_HEAD {
            return Err(HeadError::Invalid("the backend's response head is too large"));
        }
    }
}

/// Parses a response head, keeping what the client will get of it: the status line and the
/// end-to-end headers (hop-by-hop ones, and any a `Connection` header names, left out).
pub(crate) fn parse_head(buf: &[u8]) -> Result<Option<Head>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(HeadError::Invalid("the backend's response head is malformed")),
    };
    // httparse reads any three digits; below 100 is no status.
    let Some(status) = resp.code.and_then(|c| StatusCode::from_u16(c).ok()) else {
        return Err(HeadError::Invalid("the backend's response status is invalid"));
    };
    let mut head = Head {
        len,
        status: status.as_u16(),
        end: BodyEnd::Close,
        reusable: resp.version == Some(1),
        client: Vec::with_capacity(len + 128),
        dated: false,
    };
    head.client.extend_from_slice(b"HTTP/1.1 ");
    head.client.extend_from_slice(status.as_str().as_bytes());
    head.client.push(b' ');
    head.client.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    head.client.extend_from_slice(b"\r\n");
    head.end = crate::policy::screen::status_framing(
        head.status,
        resp.headers.iter().map(|h| (h.name.as_bytes(), h.value)),
    )
    .map_err(HeadError::Invalid)?;
    let mut named: Vec<&[u8]> = Vec::new();
    for h in resp.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("connection")) {
        named.extend(h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii));
    }
    head.reusable &= !named.iter().any(|t| t.eq_ignore_ascii_case(b"close"));
    for h in resp.headers.iter() {
        let name = h.name;
        // The framing is written by us from `end` (a `Connection` header that names
        // `Content-Length` must not leave the client without one).
        if proxy::is_hop_by_hop(name.as_bytes())
            || name.eq_ignore_ascii_case("content-length")
            || named.iter().any(|n| n.eq_ignore_ascii_case(name.as_bytes()))
        {
            continue;
        }
        head.dated |= name.eq_ignore_ascii_case("date");
        line(&mut head.client, name, h.value);
    }
    Ok(Some(head))
}

impl Head {
    pub(crate) fn framing(&self, head_only: bool) -> Framing {
        if head_only || self.status == 204 || self.status == 304 {
            return Framing::None;
        }
        match self.end {
            BodyEnd::Chunked => Framing::Chunked(Chunked::default()),
            BodyEnd::Length(n) => Framing::Length(n),
            BodyEnd::Close => Framing::UntilClose,
        }
    }

    /// The head as the client gets it: the kept headers, then the framing and the
    /// connection's fate in headers of ours, and `Date` when the backend gave none. A
    /// bodiless answer (HEAD, 304) keeps the length the backend gave (a GET's), 204 none.
    pub(crate) fn write_for_client(&self, framing: &Framing, close: bool, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.client);
        if !self.dated {
            crate::transport::lane::write_date(out);
        }
        match (framing, self.end) {
            (Framing::Chunked(_), _) => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
            (Framing::Length(_) | Framing::None, BodyEnd::Length(n)) if self.status != 204 => {
                out.extend_from_slice(b"content-length: ");
                crate::transport::lane::push_decimal(out, n);
                out.extend_from_slice(b"\r\n");
            }
            _ => {}
        }
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// Relays the body: `buf` holds what came with the head, `out` the client's head. `Ok(true)`
/// when the body ended where its framing said and the backend sent nothing more.
async fn relay_body(
    app: &App,
    backend: &mut TcpStream,
    mut buf: BytesMut,
    mut framing: Framing,
    mut out: Vec<u8>,
    client: &mut TcpStream,
) -> std::io::Result<bool> {
    let stall = app.upstream.timeout();
    loop {
        let (take, done) = match &mut framing {
            Framing::None => (0, true),
            Framing::Length(left) => {
                let take = (*left).min(buf.len() as u64) as usize;
                *left -= take as u64;
                (take, *left == 0)
            }
            Framing::Chunked(c) => match c.feed(&buf).map_err(std::io::Error::other)? {
                Some(end) => (end, true),
                None => (buf.len(), false),
            },
            Framing::UntilClose => (buf.len(), false),
        };
        out.extend_from_slice(&buf[..take]);
        buf.advance(take);
        if !out.is_empty() {
            write_client(client, &out).await?;
            out.clear();
        }
        if done {
            // Bytes past the response: a backend that cannot be trusted with the next one.
            return Ok(buf.is_empty());
        }
        buf.clear();
        if buf.capacity() < READ_CHUNK {
            buf.reserve(READ_CHUNK);
        }
        let n = match tokio::time::timeout(stall, crate::transport::lane::read_some(backend, &mut buf)).await
        {
            Ok(r) => r?,
            Err(_) => return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the backend stalled")),
        };
        if n == 0 {
            return match framing {
                Framing::UntilClose => Ok(false),
                _ => {
                    Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the backend closed mid-body"))
                }
            };
        }
    }
}

/// A client that takes in nothing of a response for this long is dropped.
const WRITE_STALL: Duration = Duration::from_secs(30);

async fn write_client(client: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    match tokio::time::timeout(WRITE_STALL, client.write_all(bytes)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the client stopped reading")),
    }
}

/// Follows a chunked body (RFC 9112 §7.1) to find its end; the bytes pass on unchanged.
/// Strict, as hyper's client is on the other lane: CRLF line ends only, whitespace after a
/// size only before `;` or the line's end; anything else ends the relay with the client's
/// connection (a client reading the bytes could split them elsewhere).
#[derive(Debug, Default)]
pub(crate) struct Chunked {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy)]
enum ChunkState {
    /// Reading a chunk size; `digits` hex digits so far.
    #[default]
    Size,
    SizeDigits {
        size: u64,
    },
    /// Whitespace after the size.
    SizeSpace {
        size: u64,
    },
    /// After the size: extensions, up to the line's end.
    Extension {
        size: u64,
    },
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// A trailer line (or the final blank line) of `len` bytes so far; `colon` once its name
    /// has ended.
    Trailer {
        len: usize,
        colon: bool,
    },
    TrailerLf {
        len: usize,
    },
}

impl Chunked {
    /// Feeds the next bytes: `Some(n)` when the body ends after the first `n` of them.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, &'static str> {
        use ChunkState::*;
        const BAD: &str = "the backend's chunked body is malformed";
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            self.state = match self.state {
                Size | SizeDigits { .. } => {
                    let size = match self.state {
                        SizeDigits { size } => size,
                        _ => 0,
                    };
                    let digit = (b as char).to_digit(16);
                    match (digit, self.state) {
                        (Some(d), _) => {
                            let size =
                                size.checked_mul(16).and_then(|s| s.checked_add(u64::from(d))).ok_or(BAD)?;
                            SizeDigits { size }
                        }
                        (None, SizeDigits { size }) => match b {
                            b'\r' => SizeLf { size },
                            b';' => Extension { size },
                            b' ' | b'\t' => SizeSpace { size },
                            _ => return Err(BAD),
                        },
                        _ => return Err(BAD),
                    }
                }
                // Whitespace after the size only before `;` or the line's end (hyper's rule).
                SizeSpace { size } => match b {
                    b' ' | b'\t' => SizeSpace { size },
                    b';' => Extension { size },
                    b'\r' => SizeLf { size },
                    _ => return Err(BAD),
                },
                Extension { size } => match b {
                    b'\r' => SizeLf { size },
                    b'\n' => return Err(BAD),
                    _ => Extension { size },
                },
                SizeLf { size } if b == b'\n' => after_size(size),
                SizeLf { .. } => return Err(BAD),
                Data { left } => {
                    let take = (left as usize).min(bytes.len() - i);
                    i += take;
                    let left = left - take as u64;
                    self.state = if left == 0 { DataCr } else { Data { left } };
                    continue;
                }
                DataCr if b == b'\r' => DataLf,
                DataLf if b == b'\n' => Size,
                DataCr | DataLf => return Err(BAD),
                // A trailer line is a field: a token, then `:` (a line without one, such as a
                // status line, is no trailer a client should be handed).
                Trailer { len, colon } => match b {
                    b'\r' if len > 0 && !colon => return Err(BAD),
                    b'\r' => TrailerLf { len },
                    b'\n' => return Err(BAD),
                    b':' if !colon && len > 0 => Trailer { len: len + 1, colon: true },
                    b if !colon && !is_tchar(b) => return Err(BAD),
                    _ => Trailer { len: len + 1, colon },
                },
                TrailerLf { len: 0 } if b == b'\n' => return Ok(Some(i + 1)),
                TrailerLf { .. } if b == b'\n' => Trailer { len: 0, colon: false },
                TrailerLf { .. } => return Err(BAD),
            };
            i += 1;
        }
        Ok(None)
    }
}

fn after_size(size: u64) -> ChunkState {
    if size == 0 { ChunkState::Trailer { len: 0, colon: false } } else { ChunkState::Data { left: size } }
}

/// A byte of a field name (RFC 9110 §5.6.2 `tchar`).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end_of(body: &[u8], step: usize) -> Result<Option<usize>, &'static str> {
        let mut c = Chunked::default();
        let mut at = 0;
        for piece in body.chunks(step) {
            if let Some(n) = c.feed(piece)? {
                return Ok(Some(at + n));
            }
            at += piece.len();
        }
        Ok(None)
    }

    #[test]
    fn chunked_bodies_end_where_they_say_fed_whole_or_byte_by_byte() {
        let cases: [(&[u8], usize); 5] = [
            (b"5\r\nhello\r\n0\r\n\r\nNEXT", 15),
            (b"3;ext=1\r\nabc\r\nA\r\n0123456789\r\n0\r\n\r\n", 34),
            (b"3 ;e\r\nabc\r\n0 \r\n\r\n", 17),
            (b"1\r\nx\r\n0\r\nx-trailer: 1\r\n\r\nNEXT", 25),
            (b"0\r\n\r\n", 5),
        ];
        for (body, end) in cases {
            for step in [1, 2, 3, 7, body.len()] {
                assert_eq!(end_of(body, step), Ok(Some(end)), "{} by {step}", String::from_utf8_lossy(body));
            }
        }
        assert_eq!(end_of(b"5\r\nhel", 2), Ok(None));
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloXX",
            b"\r\n",
            b"fffffffffffffffff\r\n",
            b"0\n\n",
            b"5;a\nhello\r\n",
            b"1 0\r\nx\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"0\r\nx-t: 1\n\r\n",
            b"0\r\nHTTP/1.1 200 OK\r\n\r\n",
            b"0\r\n: x\r\n\r\n",
        ] {
            assert!(end_of(bad, 1).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    /// The relay's bytes say what `prepare` says in a header map, for trusted and untrusted
    /// peers, with and without a token and a base path.
    #[test]
    fn relayed_heads_match_prepared_ones() {
        use axum::http::{HeaderMap, Request};
        let head = |extra: &str| {
            let text = format!(
                "GET /book/seat?x=1 HTTP/1.1\r\nHost: gw.example\r\nCookie: a=b; wr_demo=t.s; wr_admission_demo=tok\r\nCookie: wr_demo=t.s\r\nConnection: keep-alive, x-private\r\nX-Private: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nX-Admission-Token: forged\r\nAccept: */*\r\nAccept: text/html\r\n{extra}\r\n"
            );
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            req.parse(text.as_bytes()).unwrap();
            let mut r = Request::builder().method(req.method.unwrap()).uri(req.path.unwrap());
            for h in req.headers.iter() {
                r = r.header(h.name, h.value);
            }
            r.body(()).unwrap().into_parts().0
        };
        let as_map = |bytes: &[u8]| {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            let n = match req.parse(bytes).unwrap() {
                httparse::Status::Complete(n) => n,
                httparse::Status::Partial => panic!("partial"),
            };
            let mut map = HeaderMap::new();
            for h in req.headers.iter() {
                map.append(
                    axum::http::HeaderName::from_bytes(h.name.as_bytes()).unwrap(),
                    HeaderValue::from_bytes(h.value).unwrap(),
                );
            }
            (req.path.unwrap().to_owned(), map, bytes[n..].to_vec())
        };
        let sorted = |m: &HeaderMap| {
            let mut v: Vec<(String, Vec<u8>)> =
                m.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect();
            v.sort();
            v
        };
        let token = HeaderValue::from_static("tok.en.sig");
        let peer = crate::state::PeerAddr("10.1.2.3:4567".parse().unwrap());
        for base in ["http://127.0.0.1:9", "http://127.0.0.1:9/prefix"] {
            let up = Upstream::new(base, Duration::from_secs(1), 1024, 1).unwrap();
            for trusted in [false, true] {
                for extra in [
                    "",
                    "X-Forwarded-For: 1.1.1.1, 2.2.2.2\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: spoofed\r\n",
                ] {
                    for token in [None, Some(&token)] {
                        let mut prepared = head(extra);
                        let relayed = request_head(&up, trusted, &prepared, "10.1.2.3", token, b"").unwrap();
                        proxy::prepare_for(&up, trusted, &mut prepared, Some(peer), token.cloned()).unwrap();
                        let (target, map, body) = as_map(&relayed);
                        let case = format!("{base} trusted={trusted} extra={extra:?} token={token:?}");
                        assert_eq!(target, prepared.uri.to_string(), "{case}");
                        assert_eq!(sorted(&map), sorted(&prepared.headers), "{case}");
                        assert!(body.is_empty());
                    }
                }
            }
        }
        let up = Upstream::new("http://127.0.0.1:9", Duration::from_secs(1), 4, 1).unwrap();
        assert!(
            request_head(&up, false, &head(""), "1.2.3.4", None, b"12345").is_err(),
            "over the body limit"
        );
    }

    #[test]
    fn response_heads_say_their_framing_and_lose_hop_by_hop_headers() {
        let raw = b"HTTP/1.1 200 OK\r\nConnection: x-private, keep-alive\r\nKeep-Alive: timeout=5\r\nX-Private: 1\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\nDate: Mon, 30 Nov 2026 00:00:00 GMT\r\n\r\nbody";
        let Ok(Some(head)) = parse_head(raw) else { panic!("parses") };
        assert_eq!(head.len, raw.len() - 4);
        assert!(matches!(head.framing(false), Framing::Chunked(_)));
        assert!(matches!(head.framing(true), Framing::None));
        let mut out = Vec::new();
        head.write_for_client(&head.framing(false), false, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nDate: Mon, 30 Nov 2026 00:00:00 GMT\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        let plain = b"HTTP/1.0 404 Not Found\r\ncontent-length: 3\r\n\r\n";
        let Ok(Some(head)) = parse_head(plain) else { panic!("parses") };
        assert!(!head.reusable);
        assert!(matches!(head.framing(false), Framing::Length(3)));
        let until_close = b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n";
        let Ok(Some(head)) = parse_head(until_close) else { panic!("parses") };
        assert!(!head.reusable && matches!(head.framing(false), Framing::UntilClose));
        assert!(matches!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-"), Ok(None)));
        // Framing two readers could split differently is no response at all.
        for bad in [
            &b"HTTX/1.1 200 OK\r\n\r\n"[..],
            b"HTTP/1.1 099 Low\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: +3\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: identity\r\ncontent-length: 3\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
        ] {
            assert!(
                matches!(parse_head(bad), Err(HeadError::Invalid(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
