//! A hostile or broken backend behind both lanes (the gateway's own relay and hyper's
//! client): conflicting or malformed framing, unsolicited `101`, `1xx`, truncated bodies,
//! huge heads, extra responses. For every case the client gets one clean response, a `502`
//! (or `504` for a stall), or a response cut short with its connection closed, never two
//! responses and never bytes of one meant for nobody; a refused response's backend
//! connection is closed; and the client's next request gets its own answer.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::raw::{answers, exchange};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the client may see for a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// One whole response of this status, with this body.
    Clean(u16, &'static str),
    /// `502`, or `504` for a stall: the backend's answer is not passed on.
    Refused(u16),
    /// The head went out, then the body broke off: the client's connection closes.
    Cut,
}

/// A case: (name, the backend's bytes, whether it then closes, what the client may see).
type Case = (&'static str, Vec<u8>, bool, Expect);

fn cases() -> Vec<Case> {
    use Expect::*;
    let ok = |extra: &str| format!("HTTP/1.1 200 OK\r\n{extra}content-length: 5\r\n\r\nhello").into_bytes();
    let big = format!("HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 5\r\n\r\nhello", "b".repeat(70_000));
    let many: String = (0..200).map(|i| format!("x-h{i}: {i}\r\n")).collect();
    vec![
        ("CL and TE", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(), false, Refused(502)),
        ("TE and CL", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(), false, Refused(502)),
        ("CL +5", b"HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\nhello".to_vec(), false, Refused(502)),
        ("CL -1", b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\nhello".to_vec(), false, Refused(502)),
        ("CL twice differing", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 3\r\n\r\nhello".to_vec(), false, Refused(502)),
        ("CL twice same", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\nhello".to_vec(), false, Refused(502)),
        ("CL list", b"HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\nhello".to_vec(), false, Refused(502)),
        ("CL huge", b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\nhello".to_vec(), false, Refused(502)),
        ("TE identity with CL", b"HTTP/1.1 200 OK\r\ntransfer-encoding: identity\r\ncontent-length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nextra".to_vec(), false, Refused(502)),
        ("TE gzip", b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nhello".to_vec(), true, Refused(502)),
        ("TE twice", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(), false, Refused(502)),
        ("unsolicited 101", b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\nraw bytes".to_vec(), false, Refused(502)),
        ("100 then 200", [b"HTTP/1.1 100 Continue\r\n\r\n".to_vec(), ok("")].concat(), false, Clean(200, "hello")),
        ("103 then 200", [b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n".to_vec(), ok("")].concat(), false, Clean(200, "hello")),
        ("truncated length", b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhello".to_vec(), true, Cut),
        ("truncated chunked", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n".to_vec(), true, Cut),
        ("bad chunk size", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".to_vec(), false, Cut),
        ("huge head", big.into_bytes(), false, Refused(502)),
        ("200 headers", format!("HTTP/1.1 200 OK\r\n{many}content-length: 5\r\n\r\nhello").into_bytes(), false, Refused(502)),
        ("two responses at once", [ok(""), ok("x-second: 1\r\n")].concat(), false, Clean(200, "hello")),
        ("invalid status line", b"HTTX/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello".to_vec(), false, Refused(502)),
        ("status 099", b"HTTP/1.1 099 Low\r\ncontent-length: 5\r\n\r\nhello".to_vec(), false, Refused(502)),
        ("status 4 digits", b"HTTP/1.1 2000 OK\r\ncontent-length: 5\r\n\r\nhello".to_vec(), false, Refused(502)),
        ("bare LF head", b"HTTP/1.1 200 OK\ncontent-length: 5\n\nhello".to_vec(), false, Clean(200, "hello")),
        ("obs-fold", b"HTTP/1.1 200 OK\r\nx-a: a\r\n b\r\ncontent-length: 5\r\n\r\nhello".to_vec(), false, Refused(502)),
        ("NUL in value", b"HTTP/1.1 200 OK\r\nx-a: a\0b\r\ncontent-length: 5\r\n\r\nhello".to_vec(), false, Refused(502)),
        ("space in name", b"HTTP/1.1 200 OK\r\nx a: b\r\ncontent-length: 5\r\n\r\nhello".to_vec(), false, Refused(502)),
        ("no framing then close", b"HTTP/1.1 200 OK\r\n\r\nhello".to_vec(), true, Clean(200, "hello")),
        ("HTTP/1.0 until close", b"HTTP/1.0 200 OK\r\n\r\nhello".to_vec(), true, Clean(200, "hello")),
        ("CL 0 then bytes", b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nextra".to_vec(), false, Clean(200, "")),
        ("204 with body", b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nextra".to_vec(), false, Clean(204, "")),
        ("304 with length", b"HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n".to_vec(), false, Clean(304, "")),
        ("Connection names CL", b"HTTP/1.1 200 OK\r\nconnection: content-length\r\ncontent-length: 5\r\n\r\nhello".to_vec(), false, Clean(200, "hello")),
        ("Connection names TE", b"HTTP/1.1 200 OK\r\nconnection: transfer-encoding\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(), false, Clean(200, "hello")),
        ("chunked with trailers", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-t: 1\r\n\r\n".to_vec(), false, Clean(200, "hello")),
        ("close without answer", vec![], true, Refused(502)),
        // A body that comes after a bodiless answer, in a later segment (`<LATE>` marks the
        // pause: a framework answering HEAD as GET): never anyone's answer. `HEAD` cases are
        // asked with HEAD. (A backend that sends a whole unasked response later cannot be told
        // from the answer to the next request on that connection, by any HTTP/1.1 proxy.)
        ("HEAD answered with a late body", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n<LATE>hello".to_vec(), false, Clean(200, "")),
        ("204 with length", b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n<LATE>hello".to_vec(), false, Refused(502)),
        ("304 with a late body", b"HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n<LATE>hello".to_vec(), false, Clean(304, "")),
        ("stall", b"HTTP/1.1 200 OK\r\n".to_vec(), false, Refused(504)),
    ]
}

/// An upstream that answers `/case/{i}` with case `i`'s bytes (`/ok` cleanly) and records,
/// per case, whether the gateway closed that connection within a second.
struct Hostile {
    addr: SocketAddr,
    closed: Arc<Mutex<Vec<(usize, bool)>>>,
}

async fn hostile(cases: Arc<Vec<Case>>) -> Hostile {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let closed: Arc<Mutex<Vec<(usize, bool)>>> = Arc::default();
    let record = closed.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve_hostile(s, cases.clone(), record.clone()));
        }
    });
    Hostile { addr, closed }
}

async fn serve_hostile(mut s: TcpStream, cases: Arc<Vec<Case>>, closed: Arc<Mutex<Vec<(usize, bool)>>>) {
    let mut buf = vec![];
    loop {
        let mut chunk = [0u8; 8192];
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            match s.read(&mut chunk).await {
                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return,
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        let target = head.split(' ').nth(1).unwrap_or("").split('?').next().unwrap_or("").to_owned();
        let Some(i) = target.strip_prefix("/case/").and_then(|i| i.parse::<usize>().ok()) else {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nx-ok: 1\r\ncontent-length: 2\r\n\r\nok").await;
            continue;
        };
        let (_, bytes, close, expect) = &cases[i];
        let late = bytes.windows(6).position(|w| w == b"<LATE>");
        let (now, later) = late.map_or((&bytes[..], &[][..]), |at| (&bytes[..at], &bytes[at + 6..]));
        let _ = s.write_all(now).await;
        if late.is_some() {
            tokio::time::sleep(Duration::from_millis(30)).await;
            let _ = s.write_all(later).await;
        }
        if *close {
            return;
        }
        if let Expect::Refused(_) = expect {
            // The gateway must hang up on a backend whose answer it refused.
            let gone = matches!(
                tokio::time::timeout(Duration::from_secs(4), s.read(&mut chunk)).await,
                Ok(Ok(0)) | Ok(Err(_))
            );
            closed.lock().unwrap().push((i, gone));
            return;
        }
    }
}

/// A gateway (`fast_lane` on or off) in front of `up`.
async fn gateway(up: SocketAddr, fast_lane: bool) -> queue_gateway::Running {
    let mut cfg = config(up, None);
    cfg.limits.fast_lane = fast_lane;
    cfg.limits.upstream_timeout_ms = 1_500;
    queue_gateway::spawn(cfg).await.unwrap()
}

/// Checks one case's answer (`closed`: the gateway closed the connection after it); the
/// failure, in words.
fn check(name: &str, expect: Expect, got: &[u8], closed: bool) -> Option<String> {
    let parsed = answers(got, &[name.starts_with("HEAD ")]);
    let statuses: Vec<u16> = parsed.answers.iter().map(|a| a.status).collect();
    // A response the client can delimit: by its framing, or by the close that ends it.
    let framed = |a: &common::raw::Answer| {
        closed || a.header("content-length").is_some() || a.header("transfer-encoding").is_some()
    };
    let fine = match expect {
        Expect::Clean(status, body) => {
            statuses == [status]
                && parsed.broken.is_none()
                && parsed.answers[0].body == body.as_bytes()
                && (status == 204 || status == 304 || name.starts_with("HEAD ") || framed(&parsed.answers[0]))
        }
        Expect::Refused(status) => statuses == [status] && parsed.broken.is_none(),
        // A head (or nothing) and a body that stops, then the close: no whole second response.
        Expect::Cut => statuses.is_empty() && closed && (got.is_empty() || got.starts_with(b"HTTP/1.1 200")),
    };
    (!fine).then(|| {
        format!(
            "{name}: expected {expect:?}, the client read {:?} (closed: {closed})",
            String::from_utf8_lossy(got)
        )
    })
}

/// Case `i` on its own connection, then on the same connection (if the gateway kept it) a
/// plain request, which must get its own answer, not what the backend left behind.
async fn run_case(gw: SocketAddr, i: usize, name: &str, expect: Expect) -> Vec<String> {
    let mut failures = vec![];
    let mut s = TcpStream::connect(gw).await.unwrap();
    let method = if name.starts_with("HEAD ") { "HEAD" } else { "GET" };
    let first = format!("{method} /case/{i} HTTP/1.1\r\nhost: gw\r\n\r\n");
    s.write_all(first.as_bytes()).await.unwrap();
    let (got, closed) = read_quiet(&mut s, Duration::from_millis(2_500)).await;
    failures.extend(check(name, expect, &got, closed));
    let next = b"GET /ok HTTP/1.1\r\nhost: gw\r\n\r\n";
    let after = if closed {
        exchange(gw, next, Duration::from_millis(1_000), Duration::from_secs(5)).await
    } else {
        let _ = s.write_all(next).await;
        read_quiet(&mut s, Duration::from_millis(1_000)).await.0
    };
    let parsed = answers(&after, &[]);
    let clean = parsed.answers.len() == 1
        && parsed.broken.is_none()
        && parsed.answers[0].header("x-ok") == Some("1")
        && parsed.answers[0].body == b"ok";
    if !clean {
        failures.push(format!("{name}: the next request read {:?}", String::from_utf8_lossy(&after)));
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_backend_gets_one_clean_answer_or_a_502_to_the_client() {
    let cases = Arc::new(cases());
    let up = hostile(cases.clone()).await;
    let mut failures = vec![];
    for fast_lane in [true, false] {
        let lane = if fast_lane { "fast lane" } else { "hyper" };
        let gw = gateway(up.addr, fast_lane).await;
        let mut runs = tokio::task::JoinSet::new();
        for (i, (name, _, _, expect)) in cases.iter().enumerate() {
            let (name, expect) = (*name, *expect);
            runs.spawn(async move { run_case(gw.addr, i, name, expect).await });
        }
        while let Some(done) = runs.join_next().await {
            failures.extend(done.unwrap().into_iter().map(|f| format!("[{lane}] {f}")));
        }
        gw.stop().await.unwrap();
    }
    // The backend's side gives the gateway 4 s to hang up on each refused answer.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for (i, gone) in up.closed.lock().unwrap().iter() {
        if !gone {
            failures.push(format!("{}: the gateway kept the connection of a refused answer", cases[*i].0));
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

/// Reads until `quiet` passes without a byte; whether the peer closed.
async fn read_quiet(s: &mut TcpStream, quiet: Duration) -> (Vec<u8>, bool) {
    let mut out = vec![];
    let mut chunk = [0u8; 16384];
    loop {
        match tokio::time::timeout(quiet, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&chunk[..n]),
            Ok(_) => return (out, true),
            Err(_) => return (out, false),
        }
    }
}
