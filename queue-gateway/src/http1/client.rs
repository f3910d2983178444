//! The client role: what the backend's response head says (status, framing, whether the
//! connection can carry another request), read strictly, and its chunked bodies followed to
//! their end. What of the head reaches the client is the pipeline's to say.

use axum::http::StatusCode;
use axum::http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use bytes::{Buf, BytesMut};
use tokio::net::TcpStream;

use super::{CodecError, MAX_HEADERS, MAX_RESPONSE_HEAD, read_some};

/// A final response head as parsed, its bytes still in the caller's buffer.
#[derive(Debug)]
pub(crate) struct ResponseView<'b> {
    /// Length of the head.
    pub len: usize,
    pub status: StatusCode,
    /// The reason phrase as sent.
    pub reason: &'b str,
    pub headers: &'b [httparse::Header<'b>],
    /// Where the body ends, by the framing headers.
    pub end: BodyEnd,
    /// The tokens of its `Connection` headers (the headers they name are hop-by-hop).
    pub named: Vec<&'b [u8]>,
    /// HTTP/1.1 without `Connection: close`: the connection may carry another request.
    pub keep_alive: bool,
}

/// Parses the response head at the start of `buf`, giving a final one to `take`; `Ok(None)`
/// while it is incomplete.
fn parse_response<T>(
    buf: &[u8],
    take: &mut impl FnMut(&ResponseView<'_>) -> T,
) -> Result<Option<Parsed<T>>, CodecError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(CodecError::Invalid("the backend's response head is malformed")),
    };
    // httparse reads any three digits; below 100 is no status.
    let Some(status) = resp.code.and_then(|c| StatusCode::from_u16(c).ok()) else {
        return Err(CodecError::Invalid("the backend's response status is invalid"));
    };
    if status.is_informational() {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(CodecError::Invalid("the backend switched protocols unasked"));
        }
        return Ok(Some(Parsed::Informational(len)));
    }
    let end = status_framing(status.as_u16(), resp.headers.iter().map(|h| (h.name.as_bytes(), h.value)))
        .map_err(CodecError::Invalid)?;
    let named = super::connection_named(
        resp.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("connection")).map(|h| h.value),
    );
    let close = named.iter().any(|t| t.eq_ignore_ascii_case(b"close"));
    let view = ResponseView {
        len,
        status,
        reason: resp.reason.unwrap_or(""),
        headers: resp.headers,
        end,
        keep_alive: resp.version == Some(1) && !close,
        named,
    };
    Ok(Some(Parsed::Final(take(&view))))
}

enum Parsed<T> {
    Informational(usize),
    Final(T),
}

/// The final response head at the start of `buf`, given to `take` (informational ones
/// skipped); `Ok(None)` while it is incomplete.
pub(crate) fn response_head<T>(
    buf: &mut BytesMut,
    take: &mut impl FnMut(&ResponseView<'_>) -> T,
) -> Result<Option<T>, CodecError> {
    loop {
        match parse_response(buf, take)? {
            None => return Ok(None),
            Some(Parsed::Informational(len)) => buf.advance(len),
            Some(Parsed::Final(t)) => return Ok(Some(t)),
        }
    }
}

/// Reads from the backend until a final response head is whole, gives it to `take`, and
/// returns the buffer (the head still at its start, then what of the body came with it).
pub(crate) async fn read_response_head<T>(
    backend: &mut TcpStream,
    chunk: usize,
    mut take: impl FnMut(&ResponseView<'_>) -> T,
) -> Result<(BytesMut, T), CodecError> {
    let mut buf = BytesMut::with_capacity(chunk);
    loop {
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(chunk);
        }
        if read_some(backend, &mut buf).await? == 0 {
            return Err(if buf.is_empty() {
                CodecError::Closed
            } else {
                CodecError::Invalid("the backend closed mid-head")
            });
        }
        if let Some(t) = response_head(&mut buf, &mut take)? {
            return Ok((buf, t));
        }
        if buf.len() >= MAX_RESPONSE_HEAD {
            return Err(CodecError::Invalid("the backend's response head is too large"));
        }
    }
}

/// How a backend response's body ends, from its framing headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyEnd {
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Neither: the body runs until the backend closes.
    Close,
}

/// A response's framing from its `Content-Length` and `Transfer-Encoding` values: one
/// length of digits only, or one `chunked`, never both; anything else (a sign, a space,
/// duplicates, `identity`, `gzip` alone) is a response two readers could split differently,
/// answered `502` (as nginx does) with the backend connection closed.
pub(crate) fn response_framing<'a>(
    headers: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> Result<BodyEnd, &'static str> {
    let (mut length, mut chunked) = (None, None);
    for (name, value) in headers {
        if name.eq_ignore_ascii_case(CONTENT_LENGTH.as_str().as_bytes()) {
            if length.is_some() {
                return Err("the backend sent more than one Content-Length");
            }
            length = Some(decimal(value.trim_ascii()).ok_or("the backend sent an invalid Content-Length")?);
        } else if name.eq_ignore_ascii_case(TRANSFER_ENCODING.as_str().as_bytes()) {
            if chunked.is_some() || !value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err("the backend sent a Transfer-Encoding other than chunked");
            }
            chunked = Some(());
        }
    }
    match (length, chunked) {
        (Some(_), Some(())) => Err("the backend sent both Content-Length and Transfer-Encoding"),
        (Some(n), None) => Ok(BodyEnd::Length(n)),
        (None, Some(())) => Ok(BodyEnd::Chunked),
        (None, None) => Ok(BodyEnd::Close),
    }
}

/// [`response_framing`] for a response of `status`: a `204` (or `1xx`) may announce no body
/// at all (RFC 9110 §8.6), so one that does is refused like any other ambiguous framing.
pub(crate) fn status_framing<'a>(
    status: u16,
    headers: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> Result<BodyEnd, &'static str> {
    let end = response_framing(headers)?;
    if (status == 204 || status < 200) && end != BodyEnd::Close {
        return Err("the backend announced a body on a response that has none");
    }
    Ok(end)
}

/// Whether a backend connection may carry another request after this response ended where
/// its framing said. Not after a bodiless answer (to HEAD, or a `304`) whose head announced a
/// body: a backend that sends that body anyway (a framework answering HEAD as GET) would have
/// its bytes read as the next client's response.
pub(crate) fn reusable_after(head_request: bool, status: u16, end: BodyEnd) -> bool {
    let bodiless = head_request || status == 304;
    !(bodiless && end != BodyEnd::Close && end != BodyEnd::Length(0))
}

/// A decimal of 1 to 19 digits (no sign, no space: what `Content-Length` allows).
pub(crate) fn decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')))
}
/// How the backend's response body is delimited.
pub(crate) enum Framing {
    None,
    Length(u64),
    Chunked(Chunked),
    UntilClose,
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

/// Where a chunked body ends in `data` fed `step` bytes at a time, as the relay feeds its
/// reads (the tests' and the fuzz targets' entry).
pub(crate) fn chunked_end(data: &[u8], step: usize) -> Result<Option<usize>, &'static str> {
    let mut body = Chunked::default();
    let mut at = 0;
    for piece in data.chunks(step) {
        if let Some(n) = body.feed(piece)? {
            return Ok(Some(at + n));
        }
        at += piece.len();
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

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
                assert_eq!(
                    chunked_end(body, step),
                    Ok(Some(end)),
                    "{} by {step}",
                    String::from_utf8_lossy(body)
                );
            }
        }
        assert_eq!(chunked_end(b"5\r\nhel", 2), Ok(None));
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
            assert!(chunked_end(bad, 1).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn bodiless_answers_announcing_a_body_are_refused_or_not_reused() {
        let f = |status, h: &[(&str, &str)]| {
            status_framing(status, h.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())))
        };
        assert!(f(204, &[("content-length", "60")]).is_err());
        assert!(f(204, &[("transfer-encoding", "chunked")]).is_err());
        assert_eq!(f(204, &[]), Ok(BodyEnd::Close));
        assert_eq!(f(304, &[("content-length", "60")]), Ok(BodyEnd::Length(60)));
        assert!(!reusable_after(false, 304, BodyEnd::Length(60)));
        assert!(!reusable_after(true, 200, BodyEnd::Chunked));
        assert!(reusable_after(true, 200, BodyEnd::Length(0)));
        assert!(reusable_after(false, 200, BodyEnd::Length(60)));
    }

    #[test]
    fn response_framing_is_one_number_or_chunked() {
        let f = |h: &[(&str, &str)]| response_framing(h.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())));
        assert_eq!(f(&[("Content-Length", "5")]), Ok(BodyEnd::Length(5)));
        assert_eq!(f(&[("transfer-encoding", "Chunked")]), Ok(BodyEnd::Chunked));
        assert_eq!(f(&[("x", "y")]), Ok(BodyEnd::Close));
        for bad in [
            &[("content-length", "+5")][..],
            &[("content-length", "5, 5")],
            &[("content-length", "5"), ("content-length", "5")],
            &[("content-length", "-1")],
            &[("content-length", "")],
            &[("content-length", "99999999999999999999")],
            &[("transfer-encoding", "identity")],
            &[("transfer-encoding", "gzip, chunked")],
            &[("transfer-encoding", "chunked"), ("transfer-encoding", "chunked")],
            &[("transfer-encoding", "chunked"), ("content-length", "5")],
        ] {
            assert!(f(bad).is_err(), "{bad:?}");
        }
    }
}
