//! Bad input over real sockets: every case gets the right 4xx/408, nothing panics, and the
//! store is unchanged.

mod common;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends `bytes` and reads what comes back until the gateway closes the socket (within 5 s).
async fn closed_after(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("socket held open")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(resp: &str) -> u16 {
    resp.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_change_nothing() {
    let up = upstream().await;
    let mut cfg = config(up, None);
    cfg.limits.header_read_timeout_ms = 500;
    cfg.limits.max_body_bytes = 4096;
    cfg.limits.max_header_bytes = 8192;
    let gw = queue_gateway::spawn(cfg).await.unwrap();
    let mut http = Http::new(gw.addr);
    put_room(&mut http, "bad", json!({"protect": ["/book/"], "paused": true})).await;
    http.post("/api/v1/rooms/bad/tickets").await;
    let before = http.get("/api/v1/rooms/bad").await.json();

    // Slow headers: 408, not a held socket.
    let text = closed_after(gw.addr, b"GET /healthz HTTP/1.1\r\nhost: x\r\n").await;
    assert_eq!(status_of(&text), 408, "{text}");

    // That limit is for a new connection's first request: a kept-alive connection may idle
    // past it (up to keep_alive_idle_ms) and be used again.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut first = Vec::new();
    while !String::from_utf8_lossy(&first).contains('}') {
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed after one request");
        first.extend_from_slice(&buf[..n]);
    }
    assert_eq!(status_of(&String::from_utf8_lossy(&first)), 200);
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
    let mut second = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut second)).await.unwrap().unwrap();
    assert_eq!(status_of(&String::from_utf8_lossy(&second)), 200, "{}", String::from_utf8_lossy(&second));

    // Oversized headers.
    let big = format!("GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n", "a".repeat(20_000));
    assert_eq!(status_of(&raw(gw.addr, big.as_bytes()).await), 431);

    // Invalid UTF-8 and garbage request lines.
    let r =
        raw(gw.addr, b"GET /api/v1/rooms/\xff\xfe HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await;
    assert!((400..500).contains(&status_of(&r)), "{r}");
    let r = raw(gw.addr, b"\x00\x01\x02 nonsense\r\n\r\n").await;
    assert!(r.is_empty() || (400..500).contains(&status_of(&r)), "{r}");

    // Paths with no one meaning, plain and encoded, are refused; dot segments that stay below
    // the root are resolved, and the resolved path is the one checked (and forwarded).
    for path in ["/book%2f1", "/a//book/1", "/book/..%5c1", "/../book/1", "/x/..;/book/1", "/%2562ook/1"] {
        let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        let r = raw(gw.addr, req.as_bytes()).await;
        assert_eq!(status_of(&r), 400, "{path}: {r}");
    }
    for (path, status) in
        [("/book/../admin", 200), ("/x/%2e%2e/book/1", 403), ("/%62ook/1", 403), ("/BOOK/1", 403)]
    {
        let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        let r = raw(gw.addr, req.as_bytes()).await;
        assert_eq!(status_of(&r), status, "{path}: {r}");
    }
    let r = raw(gw.addr, b"GET /book/../admin HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await;
    assert!(r.contains(r#""uri":"/admin""#), "the backend gets the path that was checked: {r}");

    // Oversized bodies: proxied (declared and streamed) and admin.
    // The declared size alone is refused, before any of the body is read (the body is not
    // sent: a refusal with unread bytes in the socket would close it with a reset, which can
    // race the answer on the client's side).
    let declared = "POST /api/v1/anything HTTP/1.1\r\nhost: x\r\ncontent-length: 10000\r\n\r\n";
    let r = closed_after(gw.addr, declared.as_bytes()).await;
    assert_eq!(status_of(&r), 413, "{r}");
    let chunked = format!(
        "POST /api/v1/anything HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n2000\r\n{}\r\n0\r\n\r\n",
        "y".repeat(0x2000)
    );
    let r = raw(gw.addr, chunked.as_bytes()).await;
    assert_eq!(status_of(&r), 413, "{r}");
    let r = http
        .admin(
            Method::PUT,
            "/admin/v1/rooms/bad",
            Some(json!({"target": format!("/{}", "a".repeat(100_000))})),
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.json()["error"]["code"], "payload_too_large", "the contract's error body: {}", r.text);
    // The unread rest of the body ends the connection; a client must not pool it.
    assert_eq!(r.headers.get("connection").map(|v| v.to_str().unwrap()), Some("close"));

    // Malformed JSON, wrong types, unknown rooms, wrong methods.
    let auth = format!("Bearer {ADMIN}");
    let r = http
        .send(
            Method::PUT,
            "/admin/v1/rooms/bad",
            &[("authorization", &auth)],
            Some("{\"batch_size\":".into()),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = http
        .send(Method::POST, "/admin/v1/rooms/bad/admit", &[("authorization", &auth)], Some("[1,2]".into()))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(http.post("/api/v1/rooms/nope/tickets").await.status, StatusCode::NOT_FOUND);
    let long_room = format!("/api/v1/rooms/{}/tickets", "a".repeat(65));
    assert_eq!(http.post(&long_room).await.status, StatusCode::BAD_REQUEST);
    let r = http.send(Method::PATCH, "/api/v1/rooms/bad/tickets", &[], None).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.error_code(), "method_not_allowed");
    // A second room may not claim a prefix another room protects.
    let r = http.admin(Method::PUT, "/admin/v1/rooms/bad2", Some(json!({"protect": ["/book/"]}))).await;
    assert_eq!(r.status, StatusCode::CONFLICT);

    // The store is unchanged and the gateway still serves.
    let after = http.get("/api/v1/rooms/bad").await.json();
    assert_eq!(before, after);
    let cfg = http.admin(Method::GET, "/admin/v1/rooms/bad", None).await.json();
    assert_eq!(cfg["target"], "/");
    assert_eq!(http.admin(Method::GET, "/admin/v1/rooms/bad2", None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(http.get("/healthz").await.status, StatusCode::OK);
    gw.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_with_retry_after() {
    let up = upstream().await;
    let mut cfg = config(up, None);
    cfg.rate_limits.join_per_ip = queue_gateway::config::Rate { per_second: 1, burst: 3 };
    let gw = queue_gateway::spawn(cfg).await.unwrap();
    let mut http = Http::new(gw.addr);
    put_room(&mut http, "rl", json!({"paused": true})).await;
    let mut codes = Vec::new();
    for _ in 0..6 {
        let mut fresh = Http::new(gw.addr);
        let r = fresh.post("/api/v1/rooms/rl/tickets").await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            assert!(r.headers.get("retry-after").is_some());
            assert_eq!(r.error_code(), "rate_limited");
        }
        codes.push(r.status.as_u16());
    }
    assert_eq!(codes.iter().filter(|c| **c == 201).count(), 3, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 429).count(), 3, "{codes:?}");
    assert_eq!(http.get("/api/v1/rooms/rl").await.json()["waiting"], 3, "refused joins made no tickets");
    // The waiting page's join is the same join: limited and counted alike.
    // A browser gets it as a page that reloads itself when Retry-After says (not a JSON body
    // that strands a crowd refreshing its waiting pages); an API client gets the JSON error.
    let browser = [("accept", "text/html,application/xhtml+xml,*/*;q=0.8"), ("accept-language", "ko")];
    let page = Http::new(gw.addr).send(Method::GET, "/rooms/rl", &browser, None).await;
    assert_eq!(page.status, StatusCode::TOO_MANY_REQUESTS);
    let retry = page.headers.get("retry-after").unwrap().to_str().unwrap().to_owned();
    assert!(page.headers["content-type"].to_str().unwrap().starts_with("text/html"), "{:?}", page.headers);
    assert!(page.text.contains(&format!("http-equiv=\"refresh\" content=\"{retry}\"")), "{}", page.text);
    assert!(page.text.contains("접속이 많습니다"), "{}", page.text);
    let api = Http::new(gw.addr).send(Method::GET, "/rooms/rl", &[("accept", "*/*")], None).await;
    assert_eq!((api.status, api.error_code().as_str()), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"));
    let m = http.get("/metrics").await.text;
    assert!(m.contains("waitingroom_rate_limited_total 5"), "{m}");
    assert_eq!(http.get("/api/v1/rooms/rl").await.json()["waiting"], 3, "refused pages made no tickets");
    gw.stop().await.unwrap();
}

/// An event stream asked for on a new connection is read and answered outside hyper: its head
/// is held to the same limits, and every refusal is a complete response on a closed connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_stream_requests_are_held_to_the_same_limits() {
    let up = upstream().await;
    let mut cfg = config(up, None);
    cfg.limits.header_read_timeout_ms = 500;
    cfg.limits.max_header_bytes = 8192;
    let gw = queue_gateway::spawn(cfg).await.unwrap();
    let mut http = Http::new(gw.addr);
    put_room(&mut http, "es", json!({"paused": true})).await;
    let ticket = http.post("/api/v1/rooms/es/tickets").await.json()["ticket"].as_str().unwrap().to_owned();
    let before = http.get("/api/v1/rooms/es").await.json();
    let line = format!("GET /api/v1/rooms/es/tickets/{ticket}/events HTTP/1.1\r\n");

    // Slow headers: 408 after the first request's limit, then the socket closes.
    let text = closed_after(gw.addr, format!("{line}host: x\r\n").as_bytes()).await;
    assert_eq!(status_of(&text), 408, "{text}");
    assert!(text.contains("\"request_timeout\""), "{text}");

    let cases = [
        (format!("{line}host: x\r\nx-big: {}\r\n\r\n", "a".repeat(20_000)), 431),
        // Whole in one segment and only just over the limit: still refused, not read past it.
        (format!("{line}host: x\r\nx-big: {}\r\n\r\n", "a".repeat(8_200)), 431),
        (format!("{line}host: x\r\nno colon here\r\n\r\n"), 400),
        (format!("{line}host: x\r\ncontent-length: 5\r\n\r\nhello"), 400),
        (format!("{line}host: x\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"), 400),
        ("GET /api/v1/rooms/es/tickets/nonsense/events HTTP/1.1\r\nhost: x\r\n\r\n".to_owned(), 400),
        ("GET /api/v1/rooms/NO/tickets/x/events HTTP/1.1\r\nhost: x\r\n\r\n".to_owned(), 400),
        // Without the ticket's cookie: the holder alone may follow it.
        (format!("{line}host: x\r\n\r\n"), 403),
    ];
    for (req, status) in cases {
        let r = raw(gw.addr, req.as_bytes()).await;
        assert_eq!(status_of(&r), status, "{req:.120}: {r}");
        assert!(r.contains("connection: close") && r.contains("\"error\""), "{r}");
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        let length = head.lines().find_map(|l| l.strip_prefix("content-length: ")).unwrap();
        assert_eq!(length.parse::<usize>().unwrap(), body.len(), "{r}");
    }

    // The store is unchanged and the gateway still serves.
    assert_eq!(http.get("/api/v1/rooms/es").await.json(), before);
    assert_eq!(http.get("/healthz").await.status, StatusCode::OK);
    gw.stop().await.unwrap();
}
