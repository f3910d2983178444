//! Test helpers: a gateway on port 0, a recording upstream, and a tiny HTTP client with a
//! cookie jar (no mocks: real sockets, real stores).
#![allow(dead_code)]

pub mod capacity;
pub mod http;
pub mod raw;

pub use http::*;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use queue_gateway::config::{GatewayConfig, Rate, RateLimits};
use serde_json::Value;

pub const USER_SECRET: &str = "user-jwt-secret-0123456789abcdef0123";
/// A fixed signing key, shared by gateways of one test (base64 seed).
pub const SIGNING_KEY: &str = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";

/// An upstream that answers every request with what it received, `/slow` after 3 s.
pub async fn upstream() -> SocketAddr {
    let app = axum::Router::new().fallback(|req: Request<Body>| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        let headers: BTreeMap<String, String> = req
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let method = req.method().to_string();
        let uri = req.uri().to_string();
        let body = req.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
        axum::Json(serde_json::json!({"method": method, "uri": uri, "headers": headers, "body_len": body}))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

pub fn config(upstream: SocketAddr, redis: Option<String>) -> GatewayConfig {
    let generous = Rate { per_second: 10_000, burst: 10_000 };
    GatewayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream: Some(format!("http://{upstream}")),
        redis_url: redis,
        admin_token: Some(ADMIN.into()),
        signing_key: Some(SIGNING_KEY.into()),
        user_jwt_secret: Some(USER_SECRET.into()),
        rate_limits: RateLimits { join_per_ip: generous, status_per_ip: generous, per_user: generous },
        ..GatewayConfig::default()
    }
}

pub fn user_token(sub: &str) -> String {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": sub, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(USER_SECRET.as_bytes()),
    )
    .unwrap()
}

/// Puts a room through the admin API.
pub async fn put_room(http: &mut Http, room: &str, cfg: Value) {
    let r = http.admin(Method::PUT, &format!("/admin/v1/rooms/{room}"), Some(cfg)).await;
    assert!(r.status.is_success(), "{}", r.text);
}

/// A gateway process on one Redis in front of `upstream`, with the shared signing key.
pub fn start_gateway(redis: &str, upstream: SocketAddr, config_file: &std::path::Path) -> (Proc, SocketAddr) {
    let port = queue_core::testkit::free_port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_queue-gateway"))
        .env("WR_LISTEN", format!("127.0.0.1:{port}"))
        .env("WR_REDIS_URL", redis)
        .env("WR_UPSTREAM", format!("http://{upstream}"))
        .env("WR_ADMIN_TOKEN", ADMIN)
        .env("WR_SIGNING_KEY", SIGNING_KEY)
        .env("WR_CONFIG", config_file)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start queue-gateway");
    (Proc(child), format!("127.0.0.1:{port}").parse().unwrap())
}

/// Waits until the gateway at `addr` answers `/readyz`.
pub async fn wait_ready(addr: SocketAddr) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok()
            && Http::new(addr).get("/readyz").await.status == StatusCode::OK
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("gateway {addr} did not become ready");
}
