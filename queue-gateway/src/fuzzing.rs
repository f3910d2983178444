//! Entry points for the fuzz targets (`queue-gateway/fuzz`) and the corpus replay test: each
//! runs one parser of the front door on arbitrary bytes and panics if an invariant breaks.
//! Not part of the gateway's API.
//!
//! Where an invariant needs a second opinion it comes from somewhere else than the code under
//! test: httparse reads the heads again, and chunked bodies, cookie names and dot segments
//! have small reference readings here, written from the RFCs rather than from the gateway.

use std::borrow::Cow;

use axum::http::header::{CONNECTION, CONTENT_LENGTH, COOKIE, EXPECT, TRANSFER_ENCODING, UPGRADE};
use axum::http::uri::PathAndQuery;
use axum::http::{HeaderMap, HeaderValue, Method, Request, Uri};
use bytes::BytesMut;

use crate::http1::client::Framing;
use crate::http1::server::Parsed;
use crate::policy::screen::canonical_path;

/// Header slots for httparse's second reading: more than the lane's and the relay's 100, so
/// a head they took is never too large for the check (the relay adds up to three lines).
const HEADERS: usize = 128;

/// The HTTP/1.1 lane's request parser: the first two bytes choose the head limit, the rest
/// is what the client sent. Mirrors `h1`'s proptest `no_head_breaks_the_lane`, then screens
/// the request as the lane does.
pub fn request_head(data: &[u8]) {
    let Some((limit, head)) = data.split_first_chunk::<2>() else { return };
    // 16..=8192: small limits reach the too-large hand-off, large ones whole requests.
    let max_head = 16 + usize::from(u16::from_le_bytes(*limit)) % (8192 - 16 + 1);
    let mut buf = BytesMut::from(head);
    let parsed = crate::http1::server::parse(&mut buf, max_head, crate::api::is_events_path);
    let used = head.len() - buf.len();
    assert_eq!(&buf[..], &head[used..], "what is left is the rest of the bytes, unchanged");
    match parsed {
        Parsed::Ready { mut req, body, close } => {
            same_as_httparse(head, &req, &body, used, max_head);
            assert_eq!(close, asks_close(&req), "the connection closes after a request that asks to");
            screened(&mut req);
        }
        // Hyper reads a handed-off connection from its first byte: nothing may be taken.
        Parsed::HandOff(_) => assert_eq!(used, 0, "a handed-off request stays in the buffer"),
        Parsed::Partial => assert!(used == 0 && head.len() < max_head, "waits only below the limit"),
        // A bad head closes the connection: what was taken does not matter.
        Parsed::Bad => {}
    }
}

/// A request the lane took is the one httparse reads: same method, target (as `Uri` reads
/// it, which drops a `#fragment`, as hyper does), header count, and exactly the declared
/// body, with nothing the lane must leave to hyper.
fn same_as_httparse(head: &[u8], req: &Request<()>, body: &[u8], used: usize, max_head: usize) {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS];
    let mut check = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(n)) = check.parse(head) else {
        panic!("httparse refuses what the lane took: {:?}", String::from_utf8_lossy(head));
    };
    assert!(n <= max_head, "a head over the limit is hyper's to refuse");
    assert_eq!(used, n + body.len(), "exactly one request's bytes were taken");
    assert_eq!(check.method, Some(req.method().as_str()));
    let target = check.path.map(|p| p.parse::<Uri>().expect("the lane's target is a Uri"));
    assert_eq!(target.as_ref(), Some(req.uri()));
    assert_eq!(check.headers.len(), req.headers().len());
    let declared = req.headers().get(CONTENT_LENGTH).map(|v| v.to_str().ok().and_then(|v| v.parse().ok()));
    assert_eq!(declared.unwrap_or(Some(0)), Some(body.len()), "the body is the declared length");
    for name in [TRANSFER_ENCODING, EXPECT, UPGRADE] {
        assert!(!req.headers().contains_key(&name), "{name} is hyper's");
    }
}

/// A `Connection` header of the request has the token `close`.
fn asks_close(req: &Request<()>) -> bool {
    let values = req.headers().get_all(CONNECTION).into_iter();
    let mut tokens = values.flat_map(|v| v.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii));
    tokens.any(|t| t.eq_ignore_ascii_case(b"close"))
}

/// What the rest of the gateway may rely on after a request passed the screen.
fn screened(req: &mut Request<()>) {
    if crate::policy::screen::screen(req).is_err() {
        return;
    }
    let path = req.uri().path();
    assert!(matches!(canonical_path(path), Ok(Cow::Borrowed(p)) if p == path), "not canonical: {path}");
    assert!(req.headers().keys().all(|n| !n.as_str().contains('_')), "an underscored name passed");
    assert!(![Method::CONNECT, Method::TRACE].contains(req.method()), "a refused method passed");
}

/// The relay's chunked-body follower: where the body ends must not depend on how reads split
/// it, and where a strict reading of RFC 9112 §7.1 finds an end, the follower finds the same.
pub fn chunked(data: &[u8]) {
    let whole = crate::http1::client::chunked_end(data, data.len().max(1));
    let first = usize::from(data.first().copied().unwrap_or(0));
    let last = usize::from(data.last().copied().unwrap_or(0));
    for step in [1, 2, 3, first % 16 + 1, last % 97 + 1] {
        assert_eq!(crate::http1::client::chunked_end(data, step), whole, "fed {step} bytes at a time");
    }
    if let Ok(Some(n)) = whole {
        // "0\r\n\r\n" is the shortest body (its lines end in CRLF only; chunk data may hold
        // any bytes, LFs included).
        assert!(n <= data.len(), "end {n} past the {} bytes fed", data.len());
        assert!(n >= 5, "a body of {n} bytes");
        assert_eq!(&data[n - 2..n], b"\r\n", "a body that does not end in CRLF");
    }
    if let Some(n) = strict_chunked_end(data) {
        assert_eq!(whole, Ok(Some(n)), "a strictly read body ends elsewhere");
    }
}

/// RFC 9112 §7.1 read strictly: lines end in CRLF, a size is hex digits, an extension starts
/// with `;`. The end of the first complete body in `data`, `None` if there is none.
fn strict_chunked_end(data: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let line = crlf_line(data, at)?;
        at += line.len() + 2;
        let digits = &line[..line.iter().position(|&b| b == b';').unwrap_or(line.len())];
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        let size = digits
            .iter()
            .try_fold(0u64, |n, &d| n.checked_mul(16)?.checked_add(u64::from((d as char).to_digit(16)?)))?;
        if size == 0 {
            break;
        }
        at = at.checked_add(usize::try_from(size).ok()?)?;
        data.get(at..)?.starts_with(b"\r\n").then_some(())?;
        at += 2;
    }
    // Trailer fields (a token, then `:`), then the empty line.
    loop {
        let line = crlf_line(data, at)?;
        at += line.len() + 2;
        if line.is_empty() {
            return Some(at);
        }
        let name = &line[..line.iter().position(|&b| b == b':')?];
        let tchar = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
        if name.is_empty() || !name.iter().all(tchar) {
            return None;
        }
    }
}

/// The bytes from `at` to the next CRLF; `None` without one, or if a bare CR or LF comes first.
fn crlf_line(data: &[u8], at: usize) -> Option<&[u8]> {
    let rest = data.get(at..)?;
    let line = &rest[..rest.windows(2).position(|w| w == b"\r\n")?];
    (!line.contains(&b'\r') && !line.contains(&b'\n')).then_some(line)
}

/// The relay's response-head parser: the head the client gets is one whole head that frames
/// the body as the relay follows it, with no hop-by-hop header of the backend's.
pub fn response_head(data: &[u8]) {
    let Ok(Some((start, head))) = crate::pipeline::relay::parse_head(data) else { return };
    assert!(start + head.len <= data.len());
    let named = connection_tokens(&data[start..start + head.len]);
    for head_only in [false, true] {
        for close in [false, true] {
            let framing = head.framing(head_only);
            let mut out = Vec::new();
            head.write_for_client(&framing, close, &mut out);
            client_head(&out, head.status, &framing, close, &named);
        }
    }
}

/// The tokens of the backend's `Connection` headers (as httparse reads the head again).
fn connection_tokens(head: &[u8]) -> Vec<Vec<u8>> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    assert!(matches!(resp.parse(head), Ok(httparse::Status::Complete(n)) if n == head.len()));
    let values = resp.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("connection"));
    values.flat_map(|h| h.value.split(|&b| b == b',').map(|t| t.trim_ascii().to_ascii_lowercase())).collect()
}

/// RFC 9110 §7.6.1's hop-by-hop headers, and `keep-alive`/`proxy-*` from RFC 2616 §13.5.1.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "transfer-encoding",
    "proxy-authenticate",
    "proxy-authorization",
];

/// `out` as a client reads it: one head, all of it; `transfer-encoding` and `connection`
/// only as the relay adds them; the body's end where the relay's `framing` puts it.
fn client_head(out: &[u8], status: u16, framing: &Framing, close: bool, named: &[Vec<u8>]) {
    let text = String::from_utf8_lossy(out);
    let mut headers = [httparse::EMPTY_HEADER; HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let parsed = resp.parse(out);
    assert!(matches!(parsed, Ok(httparse::Status::Complete(n)) if n == out.len()), "not one head: {text:?}");
    assert_eq!(resp.code, Some(status));
    let (mut lengths, mut codings, mut connections) = (vec![], vec![], vec![]);
    for h in resp.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        match name.as_str() {
            "content-length" => lengths.push(h.value),
            "transfer-encoding" => codings.push(h.value),
            "connection" => connections.push(h.value),
            // Ours when the backend gave none (even if its `Connection` named it).
            "date" => {}
            _ => {
                assert!(!HOP_BY_HOP.contains(&name.as_str()), "hop-by-hop {name} passed: {text:?}");
                assert!(!named.contains(&name.into_bytes()), "a header Connection named passed: {text:?}");
            }
        }
    }
    assert!(lengths.len() + codings.len() <= 1, "two framings: {text:?}");
    let chunked = matches!(framing, Framing::Chunked(_));
    assert_eq!(codings, if chunked { vec![&b"chunked"[..]] } else { vec![] }, "{text:?}");
    assert_eq!(connections, if close { vec![&b"close"[..]] } else { vec![] }, "{text:?}");
    let length = lengths.first().map(|v| std::str::from_utf8(v).ok().and_then(|v| v.parse::<u64>().ok()));
    match framing {
        // The client must find the end where the relay stops: else the next response on
        // the connection is read as this one's body (or this body as the next response).
        Framing::Length(n) => assert_eq!(length, Some(Some(*n)), "length {n} not said: {text:?}"),
        Framing::UntilClose | Framing::Chunked(_) => assert_eq!(length, None, "{text:?}"),
        Framing::None => {}
    }
}

/// The `Cookie` handling of the admission module. `name\nvalue` also looks up cookie
/// `name` in `value`; without a newline, all of it is the value.
pub fn cookies(data: &[u8]) {
    let (name, value) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b"wr_demo"[..], data),
    };
    let kept = crate::policy::admission::backend_cookies(value);
    let theirs: Vec<&[u8]> = pairs(value).filter(|p| !p.is_empty() && !own_cookie(p)).collect();
    match &kept {
        None => assert!(theirs.is_empty(), "dropped cookies that are not ours"),
        Some(kept) => {
            let left: Vec<&[u8]> = pairs(kept).filter(|p| !p.is_empty()).collect();
            assert_eq!(left, theirs, "exactly the cookies that are not ours, in order");
            let again = crate::policy::admission::backend_cookies(kept);
            assert_eq!(again.as_deref(), Some(&kept[..]), "a second pass changes nothing");
        }
    }
    named_cookie(name, value);
}

/// A `Cookie` value's pairs, trimmed of ASCII white space (empty ones included).
fn pairs(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b';').map(<[u8]>::trim_ascii)
}

/// A pair's name and value, split at the first `=`.
fn name_value(pair: &[u8]) -> Option<(&[u8], &[u8])> {
    let eq = pair.iter().position(|&b| b == b'=')?;
    Some((&pair[..eq], &pair[eq + 1..]))
}

/// A cookie the gateway sets: `wr_{room}` or `wr_admission_{room}`, a room id being
/// `[a-z0-9-]{1,64}` (so `wr_admission_x` is the admission cookie of room `x`).
fn own_cookie(pair: &[u8]) -> bool {
    let room = |id: &[u8]| {
        (1..=64).contains(&id.len()) && id.iter().all(|&b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
    };
    let Some((name, _)) = name_value(pair) else { return false };
    name.strip_prefix(b"wr_admission_").is_some_and(room) || name.strip_prefix(b"wr_").is_some_and(room)
}

/// `cookie(headers, name)` is the first pair named `name` whose value (less its double
/// quotes) is UTF-8, and that value is in the header.
fn named_cookie(name: &[u8], value: &[u8]) {
    let (Ok(name), Ok(header)) = (std::str::from_utf8(name), HeaderValue::from_bytes(value)) else { return };
    let mut headers = HeaderMap::new();
    headers.append(COOKIE, header);
    let want = pairs(value)
        .filter_map(name_value)
        .filter(|(n, _)| *n == name.as_bytes())
        .find_map(|(_, v)| std::str::from_utf8(v).ok().map(|v| v.trim_matches('"')));
    let got = crate::policy::admission::cookie(&headers, name);
    assert_eq!(got, want, "cookie {name:?}");
    if let Some(got) = got {
        assert!(memchr::memmem::find(value, got.as_bytes()).is_some());
    }
}

/// The path canonicaliser: its answer is canonical by every rule it states, a valid path
/// stays one, and it names the resource the path named.
pub fn path(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    let Ok(canon) = canonical_path(raw) else { return };
    assert!(
        matches!(canonical_path(&canon), Ok(Cow::Borrowed(c)) if c == canon),
        "not a fixed point: {canon}"
    );
    assert!(canon.starts_with('/') && !canon.contains("//") && !canon.contains('\\'), "{canon}");
    assert!(canon.split('/').all(|s| s != "." && s != ".."), "dot segment left: {canon}");
    escapes_are_canonical(&canon);
    // The gateway canonicalises `Uri::path()`s, which never hold a `?` or `#`: only an input
    // that is a whole path by the `http` crate's rules has to stay one.
    let is_path = |p: &str| PathAndQuery::try_from(p).is_ok_and(|pq| pq.path() == p);
    assert!(!is_path(raw) || is_path(&canon), "{raw} was a valid path, {canon} is not");
    let meant = remove_dot_segments(&percent_decoded(data));
    assert_eq!(percent_decoded(canon.as_bytes()), meant, "{raw} and {canon} name different paths");
}

/// Every `%` starts an upper-case escape of a byte that must stay escaped (not unreserved)
/// and that the canonicaliser lets through (not `/`, `\`, `%` or a control character).
fn escapes_are_canonical(canon: &str) {
    let bytes = canon.as_bytes();
    for at in (0..bytes.len()).filter(|&i| bytes[i] == b'%') {
        let digits = bytes.get(at + 1..at + 3).expect("two digits after %");
        assert!(digits.iter().all(|&d| matches!(d, b'0'..=b'9' | b'A'..=b'F')), "{canon}");
        let byte = u8::from_str_radix(std::str::from_utf8(digits).unwrap_or(""), 16).expect("hex");
        assert!(!byte.is_ascii_alphanumeric() && !b"-._~".contains(&byte), "unreserved escaped: {canon}");
        assert!(!matches!(byte, b'/' | b'\\' | b'%' | 0x00..=0x1f | 0x7f), "refused byte escaped: {canon}");
    }
}

/// Every valid `%XX` escape decoded (anything else kept as it is).
fn percent_decoded(path: &[u8]) -> Vec<u8> {
    let digit = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        let escape = path.get(i + 1..i + 3).filter(|_| path[i] == b'%');
        match escape.and_then(|d| Some(digit(d[0])? << 4 | digit(d[1])?)) {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(path[i]);
                i += 1;
            }
        }
    }
    out
}

/// RFC 3986 §5.2.4, step by step as the RFC writes it (rules A to E on an input buffer).
fn remove_dot_segments(mut input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    while !input.is_empty() {
        if let Some(rest) = input.strip_prefix(b"../").or_else(|| input.strip_prefix(b"./")) {
            input = rest;
        } else if input.starts_with(b"/./") || input == b"/." {
            input = if input == b"/." { b"/" } else { &input[2..] };
        } else if input.starts_with(b"/../") || input == b"/.." {
            input = if input == b"/.." { b"/" } else { &input[3..] };
            out.truncate(out.iter().rposition(|&b| b == b'/').unwrap_or(0));
        } else if input == b"." || input == b".." {
            input = b"";
        } else {
            let first = usize::from(input[0] == b'/');
            let end = input[first..].iter().position(|&b| b == b'/').map_or(input.len(), |p| p + first);
            out.extend_from_slice(&input[..end]);
            input = &input[end..];
        }
    }
    out
}
