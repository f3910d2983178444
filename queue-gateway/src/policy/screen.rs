//! What every request passes before anything reads it, on every path into the gateway (its
//! own HTTP/1.1 loop and hyper, HTTP/1.1 and h2c alike): methods a proxy must not relay,
//! `Connection` headers that name end-to-end headers, header names with underscores, and the
//! one canonical form of the path. After it, the rest of the gateway (routing, the prefix
//! check, gates, the forwarded request) sees and sends exactly one path, so "the path the
//! prefix check read" and "the path the backend gets" cannot differ.
//!
//! (The rules for a backend response's framing are the codec's: [`crate::http1::client`].)

use std::borrow::Cow;

use axum::http::header::{CONNECTION, HOST};
use axum::http::uri::PathAndQuery;
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::error::GatewayError;

/// Why a request was refused before it was read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// `CONNECT`, `TRACE` or `TRACK`, in any case: a gateway neither tunnels nor echoes (`405`).
    #[error("the method {0} is not allowed here")]
    Method(&'static str),
    /// `Connection` names a header the message's framing, routing or trust depends on.
    #[error("Connection may not name {0}")]
    ConnectionNames(String),
    /// More than one `Host` (RFC 9112 §3.2).
    #[error("more than one Host header")]
    Hosts,
    /// The path has no one meaning.
    #[error(transparent)]
    Path(#[from] BadPath),
}

/// Why a path has no canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadPath {
    #[error("the path does not start with /")]
    NotOrigin,
    #[error("the path has a % not followed by two hex digits")]
    BadEscape,
    #[error("the path has an encoded /, \\, % or control character")]
    EncodedSeparator,
    #[error("the path has a backslash or a control character")]
    BadByte,
    #[error("the path has an empty segment")]
    EmptySegment,
    #[error("the path climbs above the root")]
    AboveRoot,
    #[error("the path has a segment of dots with parameters, spaces or more dots")]
    DottedParameters,
    #[error("the path's escapes are not UTF-8 (or are an overlong form of it)")]
    Overlong,
}

/// The answer: `405` for methods, `400` otherwise, closing the connection (a client that
/// sent this may not agree with us about where its next request starts).
impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let err = match &self {
            Refused::Method(_) => {
                GatewayError::client(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", self.to_string())
            }
            _ => GatewayError::bad_request(self.to_string()),
        };
        let mut r = err.into_response();
        r.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        r
    }
}

/// Headers a `Connection` header may not name: dropping them would change the message's
/// framing (`Content-Length`, `Transfer-Encoding`), its target (`Host`) or what the gateway
/// and the backend decide on (the gateway's own headers, the caller's credentials).
const END_TO_END: [&str; 11] = [
    "content-length",
    "transfer-encoding",
    "host",
    "cookie",
    "authorization",
    "x-admission-token",
    "x-gate-replay",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
];

/// Screens a request in place: refuses what no path may take, drops header names with an
/// underscore (nginx's default: CGI-style backends read `X_Admission_Token` as
/// `X-Admission-Token`) and the headers that override a path ([`is_path_override`]), and puts
/// the canonical path into the URI.
pub fn screen<B>(req: &mut Request<B>) -> Result<(), Refused> {
    // In any case: methods are case-sensitive, but a backend that matches them otherwise
    // would tunnel `connect` or echo `trace` (and IIS's `TRACK`).
    let method = req.method().as_str();
    if let Some(m) = ["CONNECT", "TRACE", "TRACK"].into_iter().find(|m| method.eq_ignore_ascii_case(m)) {
        return Err(Refused::Method(m));
    }
    check_headers(req.headers_mut())?;
    if let Some(uri) = canonical_uri(req.uri())? {
        *req.uri_mut() = uri;
    }
    Ok(())
}

/// One pass over the headers (two lookups and a pass cost twice as much on every request).
fn check_headers(headers: &mut HeaderMap) -> Result<(), Refused> {
    let (mut hosts, mut dropped) = (0, false);
    for (name, value) in headers.iter() {
        if name == CONNECTION {
            for token in value.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if let Some(named) = END_TO_END.iter().find(|n| token.eq_ignore_ascii_case(n.as_bytes())) {
                    return Err(Refused::ConnectionNames((*named).to_owned()));
                }
            }
        } else if name == HOST {
            hosts += 1;
        }
        // A plain loop: names are short, and `contains` calls memchr for each (~70
        // instructions a name).
        dropped |= name.as_str().bytes().any(|b| b == b'_') || is_path_override(name);
    }
    if hosts > 1 {
        return Err(Refused::Hosts);
    }
    if dropped {
        let old = std::mem::take(headers);
        let mut name = None;
        for (n, v) in old {
            // `into_iter` names a header once, then gives its further values without it.
            if n.is_some() {
                name = n;
            }
            if let Some(n) = name.as_ref().filter(|n| !n.as_str().contains('_') && !is_path_override(n)) {
                headers.append(n.clone(), v);
            }
        }
    }
    Ok(())
}

/// Headers with which some backends (IIS URL Rewrite, older Symfony and Zend) replace the
/// request's path after the gateway checked it: dropped.
fn is_path_override(name: &axum::http::HeaderName) -> bool {
    let n = name.as_str();
    n.len() > 12 && (n == "x-original-url" || n == "x-rewrite-url")
}

/// The URI with its path made canonical, `None` when it already is. The query is kept as
/// it came; an absolute-form target becomes origin-form (the backend gets origin-form anyway).
pub fn canonical_uri(uri: &Uri) -> Result<Option<Uri>, BadPath> {
    let path = uri.path();
    let Cow::Owned(canon) = canonical_path(path)? else { return Ok(None) };
    let pq = match uri.query() {
        Some(q) => format!("{canon}?{q}"),
        None => canon,
    };
    // Every byte of a canonical path was in a valid path already, or is an unreserved one.
    let pq = PathAndQuery::try_from(pq).map_err(|_| BadPath::BadByte)?;
    Ok(Some(Uri::from(pq)))
}

/// The canonical form of a request path (RFC 3986 §6.2.2): percent-escapes of unreserved
/// characters decoded, other escapes in upper case, dot segments resolved. Refused, as
/// forms a backend could read otherwise than this gateway: encoded `/`, `\`, `%` (double
/// encoding) and control characters, a raw `\`, empty segments (`//`), dot segments that
/// climb above the root or carry `;` parameters (`..;`, which Tomcat reads as `..`), and
/// overlong UTF-8 escapes (`%C0%AF`). Borrowed when the path is canonical already.
pub fn canonical_path(path: &str) -> Result<Cow<'_, str>, BadPath> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(BadPath::NotOrigin);
    }
    if !needs_work(bytes) {
        return Ok(Cow::Borrowed(path));
    }
    if !decodes_to_utf8(bytes) {
        return Err(BadPath::Overlong);
    }
    let decoded = decode_unreserved(bytes)?;
    let resolved = resolve_dots(&decoded)?;
    // Only ASCII was written: escapes stay escapes, decoded bytes are unreserved.
    let text = String::from_utf8(resolved).map_err(|_| BadPath::BadByte)?;
    Ok(if text == path { Cow::Borrowed(path) } else { Cow::Owned(text) })
}

/// Whether a path may be other than canonical: an escape, a dot or slash right after a
/// slash, a backslash, DEL or a control byte. Most paths have none, and this runs on every
/// request: eight bytes at a time (a byte loop cost ~10 instructions a byte, memchr per
/// slash ~60 a slash; callgrind).
fn needs_work(bytes: &[u8]) -> bool {
    let mut words = bytes.chunks_exact(8);
    // Whether the byte before this word was a slash.
    let mut after_slash = 0u64;
    for w in words.by_ref() {
        let x = u64::from_le_bytes(w.try_into().unwrap_or_default());
        let slash = bytes_equal(x, b'/');
        let odd = bytes_equal(x, b'%') | bytes_equal(x, b'\\') | bytes_equal(x, 0x7f);
        // A slash's high bit moved to the next byte's: set where that byte is `.` or `/`.
        let doubled = ((slash << 8) | after_slash) & (slash | bytes_equal(x, b'.'));
        if odd | doubled != 0 || below(x, 0x21) {
            return true;
        }
        after_slash = slash >> 56;
    }
    let mut prev = if after_slash != 0 { b'/' } else { 0 };
    for &b in words.remainder() {
        if matches!(b, b'%' | b'\\' | 0x7f | 0..=0x20) || (prev == b'/' && matches!(b, b'.' | b'/')) {
            return true;
        }
        prev = b;
    }
    false
}

const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;

/// The high bit of each byte of `x` that equals `c`, exactly (no borrow crosses bytes).
fn bytes_equal(x: u64, c: u8) -> u64 {
    let y = x ^ (u64::from(c) * 0x0101_0101_0101_0101);
    !(((y & LOW7) + LOW7) | y | LOW7)
}

/// Whether any byte of `x` is below `n` (n ≤ 128): a borrow sets the high bit of the lowest
/// such byte where `x`'s was clear (bit-twiddling hacks' `hasless`).
fn below(x: u64, n: u8) -> bool {
    x.wrapping_sub(u64::from(n) * 0x0101_0101_0101_0101) & !x & 0x8080_8080_8080_8080 != 0
}

/// Whether the path with every escape decoded is UTF-8: overlong forms (`%C0%AF`,
/// `%E0%80%AF` for `/`) and stray bytes are not, and lax decoders read them as `/` or `.`.
fn decodes_to_utf8(bytes: &[u8]) -> bool {
    std::str::from_utf8(&percent_decoded(bytes)).is_ok()
}

/// Every escape decoded (an incomplete one left as it is).
fn percent_decoded(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(hi << 4 | lo);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Escapes of unreserved characters decoded, the others upper-cased, the refused ones
/// refused.
fn decode_unreserved(bytes: &[u8]) -> Result<Vec<u8>, BadPath> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'\\' || b < 0x21 || b == 0x7f {
            return Err(BadPath::BadByte);
        }
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) =
            (bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex))
        else {
            return Err(BadPath::BadEscape);
        };
        let v = hi << 4 | lo;
        match v {
            b'/' | b'\\' | b'%' | 0x00..=0x1f | 0x7f => return Err(BadPath::EncodedSeparator),
            v if is_unreserved(v) => out.push(v),
            v => out.extend_from_slice(&[
                b'%',
                b"0123456789ABCDEF"[usize::from(v >> 4)],
                b"0123456789ABCDEF"[usize::from(v & 15)],
            ]),
        }
        i += 3;
    }
    Ok(out)
}

/// RFC 3986 §5.2.4 on a path of segments, refusing empty segments, dot segments with
/// parameters and climbs above the root (a backend that clamps them at the root would serve
/// what the check did not see).
fn resolve_dots(path: &[u8]) -> Result<Vec<u8>, BadPath> {
    let segments: Vec<&[u8]> = path[1..].split(|&b| b == b'/').collect();
    let last = segments.len() - 1;
    let mut kept: Vec<&[u8]> = Vec::with_capacity(segments.len());
    // A path that ends in a dot segment names a directory: it keeps its trailing slash.
    let mut trailing = false;
    for (i, seg) in segments.iter().enumerate() {
        // A segment a lax backend reads as `.` or `..` (parameters, encoded or not, and
        // trailing spaces or dots dropped: `..;x`, `..%3B`, `..%20`, `...`) must be exactly that.
        let lax = std::str::from_utf8(seg).map(loose).unwrap_or("x");
        if matches!(lax, "" | "." | "..") && !matches!(*seg, b"" | b"." | b"..") {
            return Err(BadPath::DottedParameters);
        }
        match *seg {
            b"." => trailing = i == last,
            b".." => {
                kept.pop().ok_or(BadPath::AboveRoot)?;
                trailing = i == last;
            }
            b"" if i == last => trailing = true,
            b"" => return Err(BadPath::EmptySegment),
            seg => {
                kept.push(seg);
                trailing = false;
            }
        }
    }
    let mut out = Vec::with_capacity(path.len());
    for seg in &kept {
        out.push(b'/');
        out.extend_from_slice(seg);
    }
    if trailing || kept.is_empty() {
        out.push(b'/');
    }
    Ok(out)
}

/// Whether `path` (canonical) lies under `prefix`, as any backend might route it: ASCII case
/// ignored (a case-insensitive backend serves `/BOOK/` as `/book/`), a segment's `;`
/// parameters skipped, raw or encoded (Tomcat and Jetty serve `/book;x/1` as `/book/1`), and
/// trailing spaces and dots of a segment ignored (Windows servers serve `/book./1` and
/// `/book%20/1` as `/book/1`). Protection errs on the side of more: a path under a prefix in
/// some backend's reading is under it here.
pub fn under(path: &str, prefix: &str) -> bool {
    under_ascii(path, prefix) || unicode_view(path).is_some_and(|view| under_ascii(&view, prefix))
}

/// A path with non-ASCII characters as a Unicode-aware backend may compare it: decoded, NFKC
/// (fullwidth `ｂ` and `／` are `b` and `/`; `ſ` is `s`; the Kelvin sign is `K`), lower
/// case. `None` for an ASCII path (nearly all: nothing to do).
fn unicode_view(path: &str) -> Option<String> {
    use unicode_normalization::UnicodeNormalization;
    let bytes = path.as_bytes();
    // This runs for every prefix a request is checked against: ASCII without escapes (all
    // but a few paths) is told in a word-at-a-time pass and a memchr. (Escapes are upper
    // case here: the path is canonical.)
    let high_escape = || {
        memchr::memchr_iter(b'%', bytes).any(|i| matches!(bytes.get(i + 1), Some(b'8'..=b'9' | b'A'..=b'F')))
    };
    if bytes.is_ascii() && !high_escape() {
        return None;
    }
    let text = String::from_utf8(percent_decoded(bytes)).ok()?;
    Some(text.nfkc().flat_map(char::to_lowercase).collect())
}

fn under_ascii(path: &str, prefix: &str) -> bool {
    let (bytes, want) = (path.as_bytes(), prefix.as_bytes());
    if bytes.len() >= want.len() && bytes[..want.len()].eq_ignore_ascii_case(want) {
        return true;
    }
    if !bytes.iter().any(|&b| matches!(b, b';' | b'%' | b'.')) {
        return false;
    }
    let mut segments = path.get(1..).unwrap_or("").split('/');
    let wanted: Vec<&str> = prefix.get(1..).unwrap_or("").split('/').collect();
    for (i, w) in wanted.iter().enumerate() {
        let Some(seg) = segments.next() else { return false };
        let seg = loose(seg).as_bytes();
        let last = i + 1 == wanted.len();
        let matched = if last {
            seg.len() >= w.len() && seg[..w.len()].eq_ignore_ascii_case(w.as_bytes())
        } else {
            seg.eq_ignore_ascii_case(w.as_bytes())
        };
        if !matched {
            return false;
        }
    }
    true
}

/// A segment as a lax backend reads it: up to its first `;` (or `%3B`), without trailing
/// spaces (`%20`) and dots.
fn loose(seg: &str) -> &str {
    let upto = seg.find(';').unwrap_or(seg.len()).min(find_ignore_case(seg, "%3B").unwrap_or(seg.len()));
    let mut s = &seg[..upto];
    loop {
        let t = s.trim_end_matches(['.', ' ']);
        let t = t.strip_suffix("%20").unwrap_or(t);
        if t.len() == s.len() {
            return s;
        }
        s = t;
    }
}

fn find_ignore_case(hay: &str, needle: &str) -> Option<usize> {
    hay.as_bytes().windows(needle.len()).position(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_paths() {
        for (raw, canon) in [
            ("/", "/"),
            ("/book/1", "/book/1"),
            ("/%62ook/x", "/book/x"),
            ("/api/v1/%72eservations", "/api/v1/reservations"),
            ("/%61pi/v1/reservations", "/api/v1/reservations"),
            ("/a/%2e%2E/book/1", "/book/1"),
            ("/a/./b", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/x/../book/", "/book/"),
            ("/a%3bb", "/a%3Bb"),
            ("/a%20b/", "/a%20b/"),
            ("/%7euser", "/~user"),
            ("/book;jsessionid=1/x", "/book;jsessionid=1/x"),
            ("/..a/.b", "/..a/.b"),
            ("/é", "/é"),
            ("/%EC%97%AC%EB%A6%84", "/%EC%97%AC%EB%A6%84"),
        ] {
            assert_eq!(canonical_path(raw).as_deref(), Ok(canon), "{raw}");
        }
        for (raw, why) in [
            ("x", BadPath::NotOrigin),
            ("*", BadPath::NotOrigin),
            ("", BadPath::NotOrigin),
            ("/a%2fb", BadPath::EncodedSeparator),
            ("/a%2Fb", BadPath::EncodedSeparator),
            ("/a%5cb", BadPath::EncodedSeparator),
            ("/a%00", BadPath::EncodedSeparator),
            ("/%2562ook", BadPath::EncodedSeparator),
            ("/a%0d%0aX:1", BadPath::EncodedSeparator),
            ("/a%", BadPath::BadEscape),
            ("/a%6", BadPath::BadEscape),
            ("/a%zz", BadPath::BadEscape),
            ("/a\\b", BadPath::BadByte),
            ("/a//b", BadPath::EmptySegment),
            ("//book/1", BadPath::EmptySegment),
            ("/..", BadPath::AboveRoot),
            ("/../book/1", BadPath::AboveRoot),
            ("/a/../../b", BadPath::AboveRoot),
            ("/%2e%2e/x", BadPath::AboveRoot),
            ("/x/..;/book/1", BadPath::DottedParameters),
            ("/x/.;a/book", BadPath::DottedParameters),
            ("/x/..%3B/book/1", BadPath::DottedParameters),
            ("/x/..%3b/book/1", BadPath::DottedParameters),
            ("/x/..%20/book/1", BadPath::DottedParameters),
            ("/x/.../book/1", BadPath::DottedParameters),
            ("/x/. ./book/1", BadPath::BadByte),
            ("/%c0%af", BadPath::Overlong),
            ("/book%E0%80%AF1", BadPath::Overlong),
            ("/book%F0%80%80%AF1", BadPath::Overlong),
            ("/a%ff", BadPath::Overlong),
        ] {
            assert_eq!(canonical_path(raw), Err(why), "{raw}");
        }
    }

    /// The word-at-a-time test agrees with a plain one on every byte, and every pair, in
    /// every position (word boundaries included).
    #[test]
    fn needs_work_agrees_with_a_byte_loop() {
        let plain = |bytes: &[u8]| {
            bytes.iter().any(|&b| matches!(b, b'%' | b'\\' | 0x7f | 0..=0x20))
                || bytes.windows(2).any(|w| w[0] == b'/' && matches!(w[1], b'.' | b'/'))
        };
        for len in 1..20 {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = b;
                    assert_eq!(needs_work(&bytes), plain(&bytes), "{b:#x} at {at} of {len}");
                    if at + 1 < len {
                        bytes[at] = b'/';
                        bytes[at + 1] = b;
                        assert_eq!(needs_work(&bytes), plain(&bytes), "/{b:#x} at {at} of {len}");
                    }
                }
            }
        }
    }

    #[test]
    fn canonical_paths_are_fixed_points() {
        for raw in ["/%62ook/%2e/x/..", "/a%3bb/./c", "/A/%7E/", "/x/y/../../z"] {
            let once = canonical_path(raw).unwrap().into_owned();
            assert_eq!(canonical_path(&once).as_deref(), Ok(once.as_str()), "{raw}");
        }
    }

    #[test]
    fn prefixes_are_matched_as_backends_route() {
        for (path, prefix) in [
            ("/book/1", "/book/"),
            ("/BOOK/1", "/book/"),
            ("/Api/V1/Reservations", "/api/v1/reservations"),
            ("/book;x=1/1", "/book/"),
            ("/api;a/v1;b/reservations;c", "/api/v1/reservations"),
            ("/book/", "/book/"),
            ("/book%3Bx/1", "/book/"),
            ("/book%20/1", "/book/"),
            ("/book./1", "/book/"),
            ("/book.%20./1", "/book/"),
            ("/api/v1/reservations./x", "/api/v1/reservations"),
            ("/boo%E2%84%AA/1", "/book/"),
            ("/api/v1/re%C5%BFervations", "/api/v1/reservations"),
            ("/\u{ff42}\u{ff4f}\u{ff4f}\u{ff4b}/1", "/book/"),
            ("/book%EF%BC%8F1", "/book/"),
        ] {
            assert!(under(path, prefix), "{path} under {prefix}");
        }
        for (path, prefix) in [
            ("/boo/k", "/book/"),
            ("/book", "/book/"),
            ("/x/book/", "/book/"),
            ("/book;/", "/book/x"),
            ("/books/1", "/book/"),
            ("/book.html", "/book/"),
        ] {
            assert!(!under(path, prefix), "{path} not under {prefix}");
        }
    }

    #[test]
    fn screening_refuses_and_rewrites() {
        let req = |method: &str, target: &str, headers: &[(&str, &str)]| {
            let mut b = Request::builder().method(method).uri(target);
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            b.body(()).unwrap()
        };
        let mut r =
            req("GET", "/%62ook/x?q=%2e", &[("x_admission_token", "t"), ("x-kept", "1"), ("a_b", "2")]);
        screen(&mut r).unwrap();
        assert_eq!(r.uri(), "/book/x?q=%2e");
        let names: Vec<&str> = r.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
        for (method, headers) in [
            ("CONNECT", &[][..]),
            ("TRACE", &[]),
            ("GET", &[("connection", "keep-alive, Content-Length")]),
            ("GET", &[("connection", "transfer-encoding")]),
            ("GET", &[("connection", "X-Admission-Token")]),
            ("GET", &[("host", "a"), ("host", "b")]),
        ] {
            let mut r = req(method, "/x", headers);
            assert!(screen(&mut r).is_err(), "{method} {headers:?}");
        }
        for method in ["connect", "Trace", "TRACK", "track"] {
            assert!(screen(&mut req(method, "/x", &[])).is_err(), "{method}");
        }
        let mut r =
            req("GET", "/x", &[("x-original-url", "/book/1"), ("X-Rewrite-URL", "/book/1"), ("x-kept", "1")]);
        screen(&mut r).unwrap();
        assert_eq!(r.headers().keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);
        let mut ok = req("GET", "/x", &[("connection", "keep-alive, x-private, upgrade"), ("host", "a")]);
        assert!(screen(&mut ok).is_ok());
    }
}
