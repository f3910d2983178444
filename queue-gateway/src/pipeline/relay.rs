//! The lane's forwarding: a decided request (phases 3–5) sent to the backend byte for byte,
//! past hyper's client.
//!
//! The plan ([`ForwardPlan`]) is written as bytes to a plain kept-alive backend socket, the
//! backend's response head is read by the codec's client role ([`crate::http1::client`]) and
//! written to the client with the headers phase 7 keeps ([`crate::http1::response_keeps`]), and the
//! body is relayed as it arrives, its framing (length, chunked, or until the backend closes)
//! followed only to know where it ends. Each step a hyper client and server take per request
//! (a request sent to the connection's task, a header map built from the response and taken
//! apart again by the server, a body polled frame by frame) costs more than the bytes; on a
//! forwarding gateway those steps were most of its work.

use std::time::Instant;

use axum::http::request::Parts;
use axum::http::{HeaderValue, Method};
use bytes::{Buf, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::api::{PROXIED_ROUTE, ROUTES};
use crate::error::GatewayError;
use crate::http1::client::{BodyEnd, Chunked, Framing, ResponseView, read_response_head, reusable_after};
use crate::http1::server::write_date;
use crate::http1::{CodecError, content_length, header_line, read_some, write_all};
use crate::pipeline::forward::ForwardPlan;
use crate::state::App;
use crate::transport::{Conn, Served};
use crate::upstream::{UpstreamError, may_resend};

/// Bytes read from the backend at a time.
const READ_CHUNK: usize = 16 * 1024;

/// Relays one decided request with its whole `body` (`token`: the admission token to pass
/// on) and its answer to the client on `conn`, bounded by the connection's timer (moved on,
/// not a timer filed and removed per request). `Ok`: whether the client's connection can take
/// the next request. `Err`: nothing has been written to the client; the error is the answer.
pub(crate) async fn forward<S: Served>(
    app: &App,
    parts: &Parts,
    body: &[u8],
    token: Option<&HeaderValue>,
    conn: &mut Conn<'_, S>,
    started: Instant,
) -> Result<bool, GatewayError> {
    let up = &app.upstream;
    if body.len() > up.max_body() {
        return Err(GatewayError::too_large());
    }
    let plan = ForwardPlan::new(up, app.cfg.trust_forwarded, parts, conn.peer_ip, token)?;
    let request = request_bytes(&plan, &parts.method, body);
    let asked = Instant::now();
    conn.timer.as_mut().reset(tokio::time::Instant::from_std(asked) + up.timeout());
    let exchanged = tokio::select! {
        biased;
        got = exchange(app, &request, &parts.method) => got,
        _ = conn.timer.as_mut() => Err(UpstreamError::Timeout),
    };
    app.metrics.upstream_duration.observe(asked.elapsed().as_secs_f64());
    let (mut backend, mut buf, head) = exchanged?;
    let head_only = parts.method == Method::HEAD;
    let framing = head.framing(head_only);
    let client_close = conn.close || matches!(framing, Framing::UntilClose);
    let mut out = Vec::with_capacity(head.client.len() + 96 + buf.len().min(READ_CHUNK));
    head.write_for_client(&framing, client_close, &mut out);
    buf.advance(head.len);
    app.metrics.request_done(
        PROXIED_ROUTE,
        ROUTES[PROXIED_ROUTE].0,
        head.status,
        started.elapsed().as_secs_f64(),
    );
    let ended = relay_body(app, &mut backend, buf, framing, out, conn.stream).await;
    let reusable = head.keep_alive && reusable_after(head_only, head.status, head.end);
    match ended {
        Ok(true) if reusable => app.upstream.connections().sockets().put(backend),
        Ok(_) => {}
        Err(e) => {
            tracing::debug!(error = %e, "relayed response ended early");
            return Ok(false);
        }
    }
    Ok(!client_close)
}

/// The backend's request as bytes: the plan's head, its framing from the body (as hyper's
/// client frames a body of known length: none for an empty one), then the body.
pub(crate) fn request_bytes(plan: &ForwardPlan<'_>, method: &Method, body: &[u8]) -> Vec<u8> {
    let target = plan.target.path_and_query().map_or("/", |pq| pq.as_str());
    let mut out = Vec::with_capacity(32 + plan.head_size() + body.len());
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    plan.each_header(|name, value| header_line(&mut out, name.as_str(), value.as_bytes()));
    if !body.is_empty() {
        content_length(&mut out, body.len() as u64);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// Writes the request on an idle connection of this thread (or a new one) and reads the
/// response head; a failure before any byte of an answer is sent again as
/// [`may_resend`] allows.
async fn exchange(
    app: &App,
    request: &[u8],
    method: &Method,
) -> Result<(TcpStream, BytesMut, Head), UpstreamError> {
    let conns = app.upstream.connections();
    loop {
        let (mut backend, reused) = match conns.sockets().take() {
            Some(s) => (s, true),
            None => (conns.open().await?, false),
        };
        // A failed write on a reused connection found it closed: nothing reached a backend
        // that had closed it.
        if let Err(e) = backend.write_all(request).await {
            if may_resend(reused, false, method) {
                continue;
            }
            return Err(CodecError::Io(e).into());
        }
        match read_response_head(&mut backend, READ_CHUNK, Head::new).await {
            Ok((buf, head)) => return Ok((backend, buf, head)),
            Err(CodecError::Closed) if may_resend(reused, true, method) => continue,
            Err(CodecError::Io(e))
                if e.kind() == std::io::ErrorKind::ConnectionReset && may_resend(reused, true, method) =>
            {
                continue;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The final response head in `raw` as the relay keeps it, and where it starts (past any
/// informational heads). The fuzz targets' and the tests' entry.
pub(crate) fn parse_head(raw: &[u8]) -> Result<Option<(usize, Head)>, CodecError> {
    let mut buf = BytesMut::from(raw);
    let head = crate::http1::client::response_head(&mut buf, &mut Head::new)?;
    Ok(head.map(|h| (raw.len() - buf.len(), h)))
}

/// What the relay keeps of the backend's response head (the bytes stay in the read buffer).
pub(crate) struct Head {
    /// Length of the head in the buffer.
    pub(crate) len: usize,
    pub(crate) status: u16,
    /// Where the body ends, by its framing headers.
    end: BodyEnd,
    /// The connection may carry another request.
    keep_alive: bool,
    /// The client's status line and headers.
    client: Vec<u8>,
    /// The backend sent a `Date`.
    dated: bool,
}

impl Head {
    /// The head the client gets of `view`: the status line and the headers phase 7 keeps
    /// (the framing is written by us from `end`: a `Connection` header that names
    /// `Content-Length` must not leave the client without one).
    fn new(view: &ResponseView<'_>) -> Head {
        let mut head = Head {
            len: view.len,
            status: view.status.as_u16(),
            end: view.end,
            keep_alive: view.keep_alive,
            client: Vec::with_capacity(view.len + 128),
            dated: false,
        };
        head.client.extend_from_slice(b"HTTP/1.1 ");
        head.client.extend_from_slice(view.status.as_str().as_bytes());
        head.client.push(b' ');
        head.client.extend_from_slice(view.reason.as_bytes());
        head.client.extend_from_slice(b"\r\n");
        for h in view.headers {
            if !crate::http1::response_keeps(h.name.as_bytes(), &view.named)
                || h.name.eq_ignore_ascii_case("content-length")
            {
                continue;
            }
            head.dated |= h.name.eq_ignore_ascii_case("date");
            header_line(&mut head.client, h.name, h.value);
        }
        head
    }

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
            write_date(out);
        }
        match (framing, self.end) {
            (Framing::Chunked(_), _) => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
            (Framing::Length(_) | Framing::None, BodyEnd::Length(n)) if self.status != 204 => {
                content_length(out, n);
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
) -> Result<bool, CodecError> {
    let stall = app.upstream.timeout();
    loop {
        let (take, done) = match &mut framing {
            Framing::None => (0, true),
            Framing::Length(left) => {
                let take = (*left).min(buf.len() as u64) as usize;
                *left -= take as u64;
                (take, *left == 0)
            }
            Framing::Chunked(c) => match c.feed(&buf).map_err(CodecError::Invalid)? {
                Some(end) => (end, true),
                None => (buf.len(), false),
            },
            Framing::UntilClose => (buf.len(), false),
        };
        out.extend_from_slice(&buf[..take]);
        buf.advance(take);
        if !out.is_empty() {
            write_all(client, &out).await?;
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
        let n = match tokio::time::timeout(stall, read_some(backend, &mut buf)).await {
            Ok(r) => r?,
            Err(_) => return Err(CodecError::Invalid("the backend stalled mid-body")),
        };
        if n == 0 {
            return match framing {
                Framing::UntilClose => Ok(false),
                _ => Err(CodecError::Invalid("the backend closed mid-body")),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The relay's bytes say what hyper's client is given (one plan, two renderings), and
    /// what the plan says: hop-by-hop and `Connection`-named headers, forged gateway headers
    /// and the gateway's cookies gone, `X-Forwarded-*` by trust; for trusted and untrusted
    /// peers, with and without a token and a base path.
    #[test]
    fn relayed_heads_match_prepared_ones() {
        use crate::upstream::Upstream;
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
        for base in ["http://127.0.0.1:9", "http://127.0.0.1:9/prefix"] {
            let up = Upstream::new(base, std::time::Duration::from_secs(1), 1024, 1).unwrap();
            for trusted in [false, true] {
                for extra in [
                    "",
                    "X-Forwarded-For: 1.1.1.1, 2.2.2.2\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: spoofed\r\nForwarded: for=1.1.1.1\r\nX-Real-IP: 1.1.1.1\r\nX-Forwarded-Port: 443\r\n",
                ] {
                    for token in [None, Some(&token)] {
                        let client = head(extra);
                        let plan = || ForwardPlan::new(&up, trusted, &client, "10.1.2.3", token).unwrap();
                        let relayed = request_bytes(&plan(), &Method::GET, b"");
                        let (uri, prepared) = plan().render();
                        let (target, map, body) = as_map(&relayed);
                        let case = format!("{base} trusted={trusted} extra={extra:?} token={token:?}");
                        assert_eq!(target, uri.to_string(), "{case}");
                        assert_eq!(sorted(&map), sorted(&prepared), "{case}");
                        assert!(body.is_empty());
                        let want_target = if base.ends_with("/prefix") {
                            "/prefix/book/seat?x=1"
                        } else {
                            "/book/seat?x=1"
                        };
                        assert_eq!(target, want_target, "{case}");
                        for gone in ["connection", "keep-alive", "te", "x-private"] {
                            assert!(!map.contains_key(gone), "{case}: {gone}");
                        }
                        let cookies: Vec<&[u8]> =
                            map.get_all("cookie").iter().map(HeaderValue::as_bytes).collect();
                        assert_eq!(cookies, [&b"a=b"[..]], "{case}: the gateway's cookies stay here");
                        assert_eq!(map.get("x-admission-token"), token, "{case}: never the client's");
                        assert_eq!(map["host"], "127.0.0.1:9", "{case}");
                        assert_eq!(map["x-forwarded-host"], "gw.example", "{case}");
                        let spoofed = !extra.is_empty();
                        let (xff, proto) = match (trusted, spoofed) {
                            (true, true) => ("1.1.1.1, 2.2.2.2, 10.1.2.3", "https"),
                            _ => ("10.1.2.3", "http"),
                        };
                        assert_eq!(
                            (&map["x-forwarded-for"], &map["x-forwarded-proto"]),
                            (&xff.parse().unwrap(), &proto.parse().unwrap()),
                            "{case}"
                        );
                        for spoofable in ["forwarded", "x-real-ip", "x-forwarded-port"] {
                            assert_eq!(
                                map.contains_key(spoofable),
                                trusted && spoofed,
                                "{case}: {spoofable}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn response_heads_say_their_framing_and_lose_hop_by_hop_headers() {
        let raw = b"HTTP/1.1 200 OK\r\nConnection: x-private, keep-alive\r\nKeep-Alive: timeout=5\r\nX-Private: 1\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\nDate: Mon, 30 Nov 2026 00:00:00 GMT\r\n\r\nbody";
        let Ok(Some((_, head))) = parse_head(raw) else { panic!("parses") };
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
        let Ok(Some((_, head))) = parse_head(plain) else { panic!("parses") };
        assert!(!head.keep_alive);
        assert!(matches!(head.framing(false), Framing::Length(3)));
        let until_close = b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n";
        let Ok(Some((_, head))) = parse_head(until_close) else { panic!("parses") };
        assert!(!head.keep_alive && matches!(head.framing(false), Framing::UntilClose));
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
                matches!(parse_head(bad), Err(CodecError::Invalid(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
