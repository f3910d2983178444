//! Raw HTTP/1.1 over sockets for the adversarial suites: a logging upstream that reads what
//! the gateway sends with a strict reference parser (httparse for heads, its own framing
//! rules), and a reader of the responses a client gets back. Neither shares code with the
//! gateway's own parsers: they are what the gateway is checked against.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as the upstream read it.
#[derive(Debug, Clone)]
pub struct Logged {
    /// The upstream connection it came on (numbered from 0).
    pub conn: u64,
    /// Its number among all the upstream's requests; the response carries it.
    pub seq: u64,
    pub method: String,
    pub target: String,
    /// Names lowercased, values as sent, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    /// The exact bytes of the message (head and framed body).
    pub raw: Vec<u8>,
    /// Why the message is not a well-framed HTTP/1.1 request, if it is not.
    pub malformed: Option<String>,
    /// The connection ended inside the message's body, after a well-formed head: a request
    /// the gateway began streaming and gave up (its client's body broke off). Nobody answers it.
    pub aborted: bool,
}

impl Logged {
    /// Bytes that are no request, and why.
    fn malformed(raw: Vec<u8>, why: String) -> Self {
        Logged {
            conn: 0,
            seq: 0,
            method: String::new(),
            target: String::new(),
            headers: vec![],
            body: vec![],
            raw,
            malformed: Some(why),
            aborted: false,
        }
    }

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }

    /// The value of query parameter `t` (the suites' tag of the case that sent it).
    pub fn tag(&self) -> Option<&str> {
        tag_of(&self.target)
    }
}

/// The `t=` parameter of a target's query.
pub fn tag_of(target: &str) -> Option<&str> {
    let query = target.split_once('?')?.1;
    query.split('&').find_map(|p| p.strip_prefix("t="))
}

/// An upstream that logs every request and answers each with `200`, `x-echo-seq` (its
/// number) and `x-echo-target`, the target as a body.
#[derive(Clone)]
pub struct LoggingUpstream {
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Vec<Logged>>>,
}

impl LoggingUpstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log: Arc<Mutex<Vec<Logged>>> = Arc::default();
        let shared = log.clone();
        tokio::spawn(async move {
            let mut conn = 0;
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_logged(stream, conn, shared.clone()));
                conn += 1;
            }
        });
        LoggingUpstream { addr, log }
    }

    pub fn entries(&self) -> Vec<Logged> {
        self.log.lock().unwrap().clone()
    }
}

async fn serve_logged(mut stream: TcpStream, conn: u64, log: Arc<Mutex<Vec<Logged>>>) {
    let mut buf = Vec::new();
    loop {
        let read = match read_request(&mut stream, &mut buf).await {
            Some(r) => r,
            None => return,
        };
        let mut logged = read;
        logged.conn = conn;
        let bad = logged.malformed.is_some();
        let seq = {
            let mut log = log.lock().unwrap();
            logged.seq = log.len() as u64;
            log.push(logged.clone());
            logged.seq
        };
        let resp = if bad {
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_vec()
        } else {
            let body = logged.target.as_bytes();
            let mut r = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-echo-seq: {seq}\r\nx-echo-target: {}\r\ncontent-length: {}\r\n\r\n",
                logged.target,
                body.len()
            )
            .into_bytes();
            if logged.method != "HEAD" {
                r.extend_from_slice(body);
            }
            r
        };
        if stream.write_all(&resp).await.is_err() || bad {
            return;
        }
    }
}

/// Reads one request with the reference rules; `None` when the connection ended cleanly.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Logged> {
    loop {
        match parse_request(buf) {
            Parse::Done(logged, used) => {
                buf.drain(..used);
                return Some(logged);
            }
            Parse::Bad(why) => return Some(Logged::malformed(std::mem::take(buf), why)),
            Parse::More => {}
        }
        let mut chunk = [0u8; 16384];
        match tokio::time::timeout(Duration::from_secs(30), stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) if buf.is_empty() => return None,
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Some(aborted(std::mem::take(buf))),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// What a connection that ended inside a message left: an aborted request when its head was
/// whole and well-framed (the body broke off), else a malformed message.
fn aborted(raw: Vec<u8>) -> Logged {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    let mut logged = Logged::malformed(raw.clone(), "the connection ended inside a message".into());
    if let Ok(httparse::Status::Complete(_)) = req.parse(&raw) {
        logged.method = req.method.unwrap_or("").to_owned();
        logged.target = req.path.unwrap_or("").to_owned();
        logged.headers =
            req.headers.iter().map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec())).collect();
        logged.malformed = None;
        logged.aborted = true;
    }
    logged
}

enum Parse {
    Done(Logged, usize),
    More,
    Bad(String),
}

/// A request under RFC 9112's rules for a recipient that trusts nothing: CRLF only, one
/// `Content-Length` of digits or one `Transfer-Encoding: chunked` (never both), no
/// underscores in names.
fn parse_request(buf: &[u8]) -> Parse {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    let head = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parse::More,
        Err(e) => return Parse::Bad(format!("head: {e}")),
    };
    if buf[..head].windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r') || buf.starts_with(b"\n") {
        return Parse::Bad("a bare LF in the head".into());
    }
    if req.version != Some(1) {
        return Parse::Bad("not HTTP/1.1".into());
    }
    let mut lengths = vec![];
    let mut codings = vec![];
    let mut list = vec![];
    for h in req.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        if name.contains('_') {
            return Parse::Bad(format!("a header name with an underscore: {name}"));
        }
        match name.as_str() {
            "content-length" => lengths.push(h.value.to_vec()),
            "transfer-encoding" => codings.push(h.value.to_vec()),
            _ => {}
        }
        list.push((name, h.value.to_vec()));
    }
    let framing = match (lengths.as_slice(), codings.as_slice()) {
        ([], []) => Framing::Length(0),
        ([l], []) => match std::str::from_utf8(l).ok().filter(|s| s.bytes().all(|b| b.is_ascii_digit())) {
            Some(s) if !s.is_empty() => Framing::Length(s.parse().unwrap_or(u64::MAX) as usize),
            _ => return Parse::Bad("an invalid Content-Length".into()),
        },
        ([], [c]) if c.eq_ignore_ascii_case(b"chunked") => Framing::Chunked,
        _ => return Parse::Bad("ambiguous framing".into()),
    };
    let (body, end) = match framing {
        Framing::Length(n) if buf.len() >= head + n => (buf[head..head + n].to_vec(), head + n),
        Framing::Length(_) => return Parse::More,
        Framing::Chunked => match dechunk(&buf[head..]) {
            Ok(Some((body, used))) => (body, head + used),
            Ok(None) => return Parse::More,
            Err(e) => return Parse::Bad(e),
        },
    };
    Parse::Done(
        Logged {
            conn: 0,
            seq: 0,
            method: req.method.unwrap_or("").to_owned(),
            target: req.path.unwrap_or("").to_owned(),
            headers: list,
            body,
            raw: buf[..end].to_vec(),
            malformed: None,
            aborted: false,
        },
        end,
    )
}

enum Framing {
    Length(usize),
    Chunked,
}

/// A chunked body: `Ok(None)` when incomplete, else the data and the bytes it took.
pub fn dechunk(b: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let mut at = 0;
    let mut out = vec![];
    loop {
        let Some(eol) = find_crlf(&b[at..]) else { return Ok(None) };
        let line = &b[at..at + eol];
        let size_text = line.split(|&c| c == b';').next().unwrap_or(b"");
        let size = std::str::from_utf8(size_text)
            .ok()
            .filter(|s| !s.is_empty() && s.len() <= 15 && s.bytes().all(|c| c.is_ascii_hexdigit()))
            .and_then(|s| usize::from_str_radix(s, 16).ok())
            .ok_or_else(|| format!("a bad chunk size line {:?}", String::from_utf8_lossy(line)))?;
        at += eol + 2;
        if size == 0 {
            // Trailers, then the blank line.
            loop {
                let Some(eol) = find_crlf(&b[at..]) else { return Ok(None) };
                at += eol + 2;
                if eol == 0 {
                    return Ok(Some((out, at)));
                }
            }
        }
        if b.len() < at + size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&b[at..at + size]);
        if &b[at + size..at + size + 2] != b"\r\n" {
            return Err("a chunk without its CRLF".into());
        }
        at += size + 2;
    }
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

/// A response a client read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub headers: BTreeMap<String, Vec<String>>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.first()).map(String::as_str)
    }
}

/// What a client read back: its responses in order, and what was left that is not one.
#[derive(Debug, Default)]
pub struct Answers {
    pub answers: Vec<Answer>,
    /// Bytes after the last whole response (a response cut short, or garbage).
    pub rest: Vec<u8>,
    /// The reason `rest` is not a response.
    pub broken: Option<String>,
}

/// Splits what a client read into responses, by each one's framing: `heads_only[i]` when the
/// i-th request was a HEAD (its response has no body).
pub fn answers(mut bytes: &[u8], heads_only: &[bool]) -> Answers {
    let mut out = Answers::default();
    loop {
        if bytes.is_empty() {
            return out;
        }
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut resp = httparse::Response::new(&mut headers);
        let head = match resp.parse(bytes) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                out.rest = bytes.to_vec();
                out.broken = Some("a response head cut short".into());
                return out;
            }
            Err(e) => {
                out.rest = bytes.to_vec();
                out.broken = Some(format!("not a response: {e}"));
                return out;
            }
        };
        let status = resp.code.unwrap_or(0);
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for h in resp.headers.iter() {
            map.entry(h.name.to_ascii_lowercase())
                .or_default()
                .push(String::from_utf8_lossy(h.value).into_owned());
        }
        let head_only = heads_only.get(out.answers.len()).copied().unwrap_or(false);
        let rest = &bytes[head..];
        let te = map.get("transfer-encoding");
        let cl = map.get("content-length");
        if te.is_some() && cl.is_some() {
            out.rest = bytes.to_vec();
            out.broken = Some("a response with both Content-Length and Transfer-Encoding".into());
            return out;
        }
        let (body, used) = if head_only || (100..200).contains(&status) || status == 204 || status == 304 {
            (vec![], 0)
        } else if te.is_some() {
            match dechunk(rest) {
                Ok(Some(got)) => got,
                _ => {
                    out.rest = bytes.to_vec();
                    out.broken = Some("a chunked body cut short or malformed".into());
                    return out;
                }
            }
        } else if let Some(cl) = cl {
            let n: usize = cl[0].trim().parse().unwrap_or(usize::MAX);
            if cl.len() > 1 || rest.len() < n {
                out.rest = bytes.to_vec();
                out.broken = Some("a body shorter than its Content-Length".into());
                return out;
            }
            (rest[..n].to_vec(), n)
        } else {
            (rest.to_vec(), rest.len())
        };
        if !(100..200).contains(&status) {
            out.answers.push(Answer { status, headers: map, body });
        }
        bytes = &rest[used..];
    }
}

/// Sends `bytes` on a new connection to `addr` and reads until the gateway closes it or
/// `quiet` passes without a byte (at most `cap` in all).
pub async fn exchange(addr: SocketAddr, bytes: &[u8], quiet: Duration, cap: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let deadline = tokio::time::Instant::now() + cap;
    let mut out = vec![];
    let mut chunk = [0u8; 16384];
    loop {
        let wait = quiet.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        match tokio::time::timeout(wait, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&chunk[..n]),
            _ => return out,
        }
    }
}
