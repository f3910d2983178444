//! How many SSE streams one gateway holds, what each costs, and how fast a broadcast
//! reaches them all.
//!
//! `queue-gateway/benches/sse_bench.sh [N=20000]` (raises the file-descriptor limit, builds,
//! runs this). It starts `target/release/queue-gateway` (memory store, or `WR_REDIS_URL` if
//! set), makes N tickets, opens N streams, and reports the gateway's RSS growth per stream,
//! the time for a position change (the first ticket leaves) to reach every stream, and the
//! time for an admission of the first in line to move everyone else up, and the time for an
//! admission of all N to reach every stream.
//!
//! `-- N --h2` opens the streams over h2c instead, 200 per connection (the gateway allows 256
//! at once on one connection), as a TLS-terminating proxy or a browser on HTTP/2 would carry
//! them: what a stream costs without a connection of its own.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

const ADMIN: &str = "sse-bench-admin-token-0123456789";

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:").and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// One HTTP/1.1 request on a fresh connection; returns (status line + headers, body).
async fn request(addr: &str, req: String) -> (String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.to_owned(), body.to_owned())
}

async fn join(addr: &str) -> (String, String) {
    let (head, body) = request(addr, "POST /api/v1/rooms/sse/tickets HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 0\r\n\r\n".into()).await;
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: ").and_then(|c| c.split(';').next()))
        .expect("ticket cookie")
        .to_owned();
    let ticket =
        body.split("\"ticket\":\"").nth(1).and_then(|r| r.split('"').next()).expect("ticket").to_owned();
    (ticket, cookie)
}

#[derive(Clone)]
struct Counters {
    opened: Arc<AtomicUsize>,
    second_position: Arc<AtomicUsize>,
    third_position: Arc<AtomicUsize>,
    admitted: Arc<AtomicUsize>,
}

impl Counters {
    /// Counts one stream's events from its text; returns whether it is over.
    fn saw(&self, positions: &mut usize, line: &str) -> bool {
        if line == "event: position" {
            *positions += 1;
            match *positions {
                1 => self.opened.fetch_add(1, Ordering::Relaxed),
                2 => self.second_position.fetch_add(1, Ordering::Relaxed),
                3 => self.third_position.fetch_add(1, Ordering::Relaxed),
                _ => 0,
            };
        } else if line == "event: admitted" {
            self.admitted.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        false
    }
}

/// One stream on its own HTTP/1.1 connection; the permit (pacing connects) goes once open.
async fn h1_stream(addr: &str, ticket: &str, cookie: &str, c: Counters, permit: OwnedSemaphorePermit) {
    let mut permit = Some(permit);
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "GET /api/v1/rooms/sse/tickets/{ticket}/events HTTP/1.1\r\nhost: x\r\ncookie: {cookie}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut lines = BufReader::new(s).lines();
    let mut positions = 0;
    while let Ok(Some(l)) = lines.next_line().await {
        if c.saw(&mut positions, &l) {
            break;
        }
        if positions == 1 {
            permit.take();
        }
    }
}

/// Many streams on one h2c connection.
async fn h2_streams(addr: &str, tickets: Vec<(String, String)>, c: Counters, permit: OwnedSemaphorePermit) {
    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(conn);
    drop(permit);
    for (ticket, cookie) in tickets {
        let (mut send, c) = (send.clone(), c.clone());
        tokio::spawn(async move {
            let req = hyper::Request::get(format!("http://x/api/v1/rooms/sse/tickets/{ticket}/events"))
                .header("cookie", cookie)
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            send.ready().await.unwrap();
            let mut body = send.send_request(req).await.unwrap().into_body();
            let (mut text, mut positions) = (String::new(), 0);
            while let Some(Ok(frame)) = body.frame().await {
                let Ok(data) = frame.into_data() else { continue };
                text.push_str(&String::from_utf8_lossy(&data));
                while let Some(i) = text.find('\n') {
                    let line: String = text.drain(..=i).collect();
                    if c.saw(&mut positions, line.trim_end()) {
                        return;
                    }
                }
            }
        });
    }
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let dir = std::env::temp_dir().join(format!("wr-sse-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("gw.toml");
    std::fs::write(
        &cfg,
        "[limits]\nmax_sse_streams = 1000000\n[rate_limits]\njoin_per_ip = { per_second = 10000000, burst = 10000000 }\nstatus_per_ip = { per_second = 10000000, burst = 10000000 }\n",
    )
    .unwrap();
    let mut gw = Command::new("target/release/queue-gateway")
        .env("WR_LISTEN", &addr)
        .env("WR_ADMIN_TOKEN", ADMIN)
        // No request here goes past the gateway: nothing needs to listen there.
        .env("WR_UPSTREAM", "http://127.0.0.1:9")
        .env("WR_CONFIG", &cfg)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("build first: cargo build --release -p queue-gateway");
    let pid = gw.id();
    while TcpStream::connect(&addr).await.is_err() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let put = "{\"paused\":true,\"batch_size\":1000000,\"session_ttl_s\":3600,\"idle_timeout_s\":3600}";
    request(&addr, format!("PUT /admin/v1/rooms/sse HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ADMIN}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{put}", put.len())).await;

    let t = Instant::now();
    let gate = Arc::new(Semaphore::new(64));
    let mut joins = Vec::with_capacity(n);
    for _ in 0..n {
        let (gate, addr) = (gate.clone(), addr.clone());
        joins.push(tokio::spawn(async move {
            let _p = gate.acquire().await.unwrap();
            join(&addr).await
        }));
    }
    let mut tickets = Vec::with_capacity(n);
    for j in joins {
        tickets.push(j.await.unwrap());
    }
    println!("joined {n} in {:.1} s", t.elapsed().as_secs_f64());
    // Join order is the store's: the first in line is the lowest sequence number (the id's
    // hex prefix), whose leaving moves everyone else up.
    tickets.sort();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid);

    // Open every stream; each task counts position events and notes admission.
    let opened = Arc::new(AtomicUsize::new(0));
    let second_position = Arc::new(AtomicUsize::new(0));
    let third_position = Arc::new(AtomicUsize::new(0));
    let admitted = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(256));
    let t = Instant::now();
    let counters = Counters {
        opened: opened.clone(),
        second_position: second_position.clone(),
        third_position: third_position.clone(),
        admitted: admitted.clone(),
    };
    if std::env::args().any(|a| a == "--h2") {
        for chunk in tickets[1..].chunks(200) {
            let (chunk, addr, counters) = (chunk.to_vec(), addr.clone(), counters.clone());
            let permit = gate.clone().acquire_owned().await.unwrap();
            tokio::spawn(async move { h2_streams(&addr, chunk, counters, permit).await });
        }
    } else {
        for (ticket, cookie) in tickets[1..].iter() {
            let (ticket, cookie) = (ticket.clone(), cookie.clone());
            let (addr, gate, counters) = (addr.clone(), gate.clone(), counters.clone());
            tokio::spawn(async move {
                let permit = gate.acquire_owned().await.unwrap();
                h1_stream(&addr, &ticket, &cookie, counters, permit).await
            });
        }
    }
    let streams = n - 1;
    while opened.load(Ordering::Relaxed) < streams {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if t.elapsed() > Duration::from_secs(120) {
            panic!("only {} streams opened", opened.load(Ordering::Relaxed));
        }
    }
    println!("opened {streams} streams in {:.1} s", t.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid);
    println!(
        "gateway RSS {} MiB -> {} MiB: {:.1} KiB per stream",
        before / 1024,
        after / 1024,
        (after.saturating_sub(before)) as f64 / streams as f64
    );

    // Position broadcast: the first ticket leaves, everyone moves up one.
    let (first, cookie) = &tickets[0];
    let t = Instant::now();
    request(&addr, format!("DELETE /api/v1/rooms/sse/tickets/{first} HTTP/1.1\r\nhost: x\r\ncookie: {cookie}\r\nconnection: close\r\n\r\n")).await;
    while second_position.load(Ordering::Relaxed) < streams && t.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "position change reached {}/{streams} streams in {:.2} s (pushed on the leave)",
        second_position.load(Ordering::Relaxed),
        t.elapsed().as_secs_f64()
    );

    // A tick's worth of movement: admit the first in line; everyone behind moves up (pushed
    // right after the admission; a stream gets at most one position a second, so wait that out).
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let t = Instant::now();
    let one = "{\"count\":1}";
    request(&addr, format!("POST /admin/v1/rooms/sse/admit HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ADMIN}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{one}", one.len())).await;
    while third_position.load(Ordering::Relaxed) < streams - 1 && t.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "admitting the first in line moved {}/{} streams up in {:.2} s",
        third_position.load(Ordering::Relaxed),
        streams - 1,
        t.elapsed().as_secs_f64()
    );

    // Admission broadcast: admit everyone.
    let body = format!("{{\"count\":{n}}}");
    let t = Instant::now();
    request(&addr, format!("POST /admin/v1/rooms/sse/admit HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ADMIN}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}", body.len())).await;
    while admitted.load(Ordering::Relaxed) < streams && t.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "admission (token signed per stream) reached {}/{streams} streams in {:.2} s",
        admitted.load(Ordering::Relaxed),
        t.elapsed().as_secs_f64()
    );
    let _ = gw.kill();
    let _ = gw.wait();
    let _ = std::fs::remove_dir_all(dir);
}
