//! Process lifecycle and protocols: h2c, keep-alive, and a graceful SIGTERM (in-flight
//! requests finish, SSE streams are told to reconnect, then the process exits 0).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use queue_core::testkit::free_port;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_h2c_with_prior_knowledge() {
    let up = upstream().await;
    let gw = queue_gateway::spawn(config(up, None)).await.unwrap();
    let client = Client::builder(TokioExecutor::new()).http2_only(true).build_http::<Body>();
    for path in ["/healthz", "/api/v1/anything"] {
        let req = Request::get(format!("http://{}{path}", gw.addr)).body(Body::empty()).unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.version(), axum::http::Version::HTTP_2);
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(!body.is_empty());
    }
    gw.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_work_and_ends_streams() {
    let up = upstream().await;
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_queue-gateway"))
        .env("WR_LISTEN", addr.to_string())
        .env("WR_UPSTREAM", format!("http://{up}"))
        .env("WR_ADMIN_TOKEN", ADMIN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "gateway did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut http = Http::new(addr);
    put_room(&mut http, "life", json!({"protect": ["/life/"], "paused": true})).await;
    let ticket = http.post("/api/v1/rooms/life/tickets").await.json()["ticket"].as_str().unwrap().to_owned();
    let cookie = format!("wr_life={}", http.cookies["wr_life"]);

    // An open SSE stream...
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "GET /api/v1/rooms/life/tickets/{ticket}/events HTTP/1.1\r\nhost: x\r\ncookie: {cookie}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut lines = BufReader::new(s).lines();
    while let Some(l) = lines.next_line().await.unwrap() {
        if l == "event: position" {
            break;
        }
    }
    // ... and a slow request in flight (the upstream answers /slow after 3 s).
    let mut slow_client = Http::new(addr);
    let slow = tokio::spawn(async move { slow_client.get("/slow").await.status });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let term = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(term.success());
    // The stream is told and ends.
    let mut told = false;
    while let Ok(Ok(Some(l))) = tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await {
        if l == "event: shutdown" {
            told = true;
        }
    }
    assert!(told, "the SSE stream was not told about the shutdown");
    // New connections are refused while draining.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "still accepting after SIGTERM");
    // The in-flight request completes.
    assert_eq!(slow.await.unwrap(), StatusCode::OK);
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert!(status.success(), "exit status {status}");
}

/// `queue-gateway check-config`, as an operator runs it: exit 0 and the effective settings
/// (secrets redacted) for a good file, non-zero and the bad field's name for a bad one —
/// without the secret it holds.
#[test]
fn check_config_names_the_bad_field() {
    let dir = std::env::temp_dir().join(format!("wr-check-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_queue-gateway"))
            .arg("check-config")
            .env("WR_CONFIG", &path)
            .env_remove("WR_ADMIN_TOKEN")
            .env_remove("WR_LISTEN")
            .output()
            .unwrap();
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code(), text)
    };
    let (code, out) = run(
        "good.toml",
        "upstream = \"http://127.0.0.1:9\"\nadmin_token = \"an-admin-token-of-32-bytes-or-more\"\n[limits]\nworkers = 2\n",
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("workers: 2") && !out.contains("an-admin-token"), "{out}");
    for (text, field) in [
        ("admin_token = \"an-admin-token-of-32-bytes-or-more\"\n", "`upstream`"),
        ("[limits]\nworkers = \"two\"\n", "`limits.workers`"),
        ("listen = \"nowhere\"\n", "`listen`"),
        ("[rooms.summer]\nbatch_size = 0\n", "`rooms.summer.batch_size`"),
        ("admin_token = 1234567890987654321\n", "`admin_token`"),
    ] {
        let (code, out) = run("bad.toml", text);
        assert_ne!(code, Some(0), "{text}: {out}");
        assert!(out.contains(field), "{text}: {out}");
        assert!(!out.contains("1234567890987654321"), "a secret echoed: {out}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
