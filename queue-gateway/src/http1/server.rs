//! The server role: a client's request head read (the lane's shape, or left to hyper), and a
//! response written back with the framing the gateway chooses.

use std::cell::RefCell;
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use axum::http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use tokio::net::TcpStream;

use super::{CodecError, MAX_HEADERS, MAX_LANE_BODY, content_length, peer_gone, read_some, write_all};

#[allow(clippy::large_enum_variant)]
pub(crate) enum Parsed {
    Partial,
    /// Not of the lane's shape: hyper's to serve (or, on a connection that serves one kind
    /// of request, the reason to refuse it).
    HandOff(Unfit),
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

/// Reads from `stream` until `buf` holds a request head [`parse`] can judge (taken out of
/// `buf` when it is `Ready`); `None`: the peer went away. (Read as [`read_some`] reads, so a
/// connection's next look at its socket waits for the kernel's word rather than asking it.)
pub(crate) async fn read_request(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    max_head: usize,
    hand_off: impl Fn(&[u8]) -> bool,
) -> Option<Parsed> {
    loop {
        if !buf.is_empty() {
            match parse(buf, max_head, &hand_off) {
                Parsed::Partial => {}
                done => return Some(done),
            }
        }
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(4096);
        }
        if matches!(read_some(stream, buf).await, Ok(0) | Err(_)) {
            return None;
        }
    }
}

/// Why a head is not of the lane's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unfit {
    /// Over the head limit, or too many header lines.
    TooLarge,
    /// Not a request head the `http` types take.
    Malformed,
    /// A valid head of another shape (a body to stream, another version, a target or header
    /// the lane leaves to hyper).
    Shape,
}

/// The request at the start of `buf`, if it is whole and of the lane's shape (HTTP/1.1, an
/// origin-form target whose path `hand_off` does not claim, no `Transfer-Encoding`, `Expect` or
/// `Upgrade`, a body of at most [`MAX_LANE_BODY`] that came with its head); a `Ready` request's
/// bytes are taken out of `buf`. Its path, header values and body are slices of those bytes,
/// not copies: a copy was an allocation per header value.
pub(crate) fn parse(buf: &mut BytesMut, max_head: usize, hand_off: impl Fn(&[u8]) -> bool) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < max_head => return Parsed::Partial,
        // Too large, too many headers, malformed, HTTP/2's preface: hyper answers those.
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
            return Parsed::HandOff(Unfit::TooLarge);
        }
        Err(_) => return Parsed::HandOff(Unfit::Malformed),
    };
    if head_len > max_head {
        return Parsed::HandOff(Unfit::TooLarge);
    }
    if parsed.version != Some(1) {
        return Parsed::HandOff(Unfit::Shape);
    }
    let (Some(method), Some(target)) = (parsed.method, parsed.path) else {
        return Parsed::HandOff(Unfit::Malformed);
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else { return Parsed::HandOff(Unfit::Malformed) };
    if !target.starts_with('/') || hand_off(target.split('?').next().unwrap_or("").as_bytes()) {
        return Parsed::HandOff(Unfit::Shape);
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
        let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
            return Parsed::HandOff(Unfit::Malformed);
        };
        if name == CONTENT_LENGTH {
            let digits = h.value;
            let Some(n) = std::str::from_utf8(digits).ok().filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
            else {
                return Parsed::HandOff(Unfit::Shape);
            };
            match n.parse::<usize>() {
                Ok(n) if n <= MAX_LANE_BODY && !names.iter().any(|(n, _)| *n == CONTENT_LENGTH) => {
                    body_len = n
                }
                _ => return Parsed::HandOff(Unfit::Shape),
            }
        } else if name == TRANSFER_ENCODING
            || name == axum::http::header::EXPECT
            || name == axum::http::header::UPGRADE
        {
            return Parsed::HandOff(Unfit::Shape);
        } else if name == CONNECTION {
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return Parsed::HandOff(Unfit::Shape);
                }
            }
        }
        names.push((name, span(h.value)));
    }
    let used = head_len + body_len;
    if buf.len() < used {
        // A body not sent with its head: hyper streams it (and refuses a declared length
        // over the limit before reading any of it).
        return Parsed::HandOff(Unfit::Shape);
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

/// Writes a response: head and body, the body with its length when known, else chunked. A
/// whole body goes out with its head in one write, a body still coming frame by frame as each
/// arrives. `close` says `connection: close` (so does a response that asks for it). With
/// `watch_peer` (a connection that closes after this response: an event stream) the writer
/// stops as soon as the client goes away rather than at its next write. True when the
/// connection can take the next request.
pub(crate) async fn write_response(
    stream: &mut TcpStream,
    response: Response,
    head_only: bool,
    close: bool,
    watch_peer: bool,
) -> Result<bool, CodecError> {
    let (parts, mut body) = response.into_parts();
    let close = close
        || parts.headers.get_all(CONNECTION).iter().any(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    let length = body.size_hint().exact();
    let mut out = Vec::with_capacity(256 + length.unwrap_or(0).min(64 * 1024) as usize);
    let chunked = response_head(&parts, length, head_only, close, &mut out);
    if !head_only && has_body(parts.status) {
        loop {
            let frame = if watch_peer && !out.is_empty() {
                // Nothing waits on the client here: the head (or a frame) goes out first, and
                // its buffer goes too (a stream waits long between frames).
                write_all(stream, &out).await?;
                out = Vec::new();
                continue;
            } else if watch_peer {
                tokio::select! {
                    frame = body.frame() => frame,
                    gone = peer_gone(stream) => if gone { return Ok(false) } else { continue },
                }
            } else {
                body.frame().await
            };
            let Some(frame) = frame else { break };
            let Ok(data) = frame.map_err(|e| CodecError::Io(std::io::Error::other(e)))?.into_data() else {
                continue;
            };
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
            if !body.is_end_stream() {
                write_all(stream, &out).await?;
                out.clear();
            }
        }
        if chunked {
            out.extend_from_slice(b"0\r\n\r\n");
        }
    }
    write_all(stream, &out).await?;
    Ok(!close)
}

/// Whether a response of this status carries a body at all.
pub(crate) fn has_body(status: StatusCode) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What the lane leaves to others: event streams.
    fn lane_rule(path: &[u8]) -> bool {
        path.ends_with(b"/events")
    }

    /// `super::parse` on `head`, and how many bytes it took out.
    fn parse_counted(head: &[u8], max_head: usize) -> (Parsed, usize) {
        let mut buf = BytesMut::from(head);
        let parsed = super::parse(&mut buf, max_head, lane_rule);
        let used = head.len() - buf.len();
        assert_eq!(&buf[..], &head[used..]);
        // Hyper reads a handed-off connection from the first byte of its request; a bad
        // head closes the connection, so what it took does not matter.
        if matches!(parsed, Parsed::Partial | Parsed::HandOff(_)) {
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
            (Parsed::HandOff(_), _) => panic!("handed off: {}", String::from_utf8_lossy(head)),
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
        let big = format!("POST /x HTTP/1.1\r\ncontent-length: {}\r\n\r\n", MAX_LANE_BODY + 1);
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
            assert!(matches!(parse(head, 8192), Parsed::HandOff(_)), "{}", String::from_utf8_lossy(head));
        }
        // A head that outgrows the limit is hyper's to refuse (431).
        let long = format!("GET /x HTTP/1.1\r\nx: {}", "y".repeat(200));
        assert!(matches!(parse(long.as_bytes(), 100), Parsed::HandOff(Unfit::TooLarge)));
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
                Parsed::HandOff(_) | Parsed::Bad => {}
            }
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
