//! Test helpers: a gateway on port 0, a recording upstream, and a tiny HTTP client with a
//! cookie jar (no mocks: real sockets, real stores).
#![allow(dead_code)]

pub mod raw;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use queue_gateway::config::{GatewayConfig, Rate, RateLimits};
use serde_json::Value;

pub const ADMIN: &str = "test-admin-token-0123456789";
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
        demo_room: false,
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

/// A browser-ish client: keeps cookies per name.
#[derive(Clone)]
pub struct Http {
    pub base: String,
    pub cookies: BTreeMap<String, String>,
    client: Client<HttpConnector, Body>,
}

#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or("").to_owned()
    }
}

impl Http {
    pub fn new(addr: SocketAddr) -> Self {
        Http {
            base: format!("http://{addr}"),
            cookies: BTreeMap::new(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> Resp {
        let mut req = Request::builder().method(method).uri(format!("{}{path}", self.base));
        if !self.cookies.is_empty() {
            let c: Vec<String> = self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
            req = req.header("cookie", c.join("; "));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(body.map(Body::from).unwrap_or_else(Body::empty)).unwrap();
        let resp = self.client.request(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        for sc in headers.get_all("set-cookie") {
            let sc = sc.to_str().unwrap();
            let (kv, attrs) = sc.split_once(';').unwrap_or((sc, ""));
            let (k, v) = kv.split_once('=').unwrap();
            if attrs.contains("Max-Age=0") {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_owned(), v.to_owned());
            }
        }
        let text =
            String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned();
        Resp { status, headers, text }
    }

    pub async fn get(&mut self, path: &str) -> Resp {
        self.send(Method::GET, path, &[("accept", "application/json")], None).await
    }

    pub async fn post(&mut self, path: &str) -> Resp {
        self.send(Method::POST, path, &[], None).await
    }

    pub async fn admin(&mut self, method: Method, path: &str, body: Option<Value>) -> Resp {
        let auth = format!("Bearer {ADMIN}");
        self.send(
            method,
            path,
            &[("authorization", &auth), ("content-type", "application/json")],
            body.map(|b| b.to_string()),
        )
        .await
    }
}

/// Puts a room through the admin API.
pub async fn put_room(http: &mut Http, room: &str, cfg: Value) {
    let r = http.admin(Method::PUT, &format!("/admin/v1/rooms/{room}"), Some(cfg)).await;
    assert!(r.status.is_success(), "{}", r.text);
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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

/// The all-in-one system as `cargo run --release` starts it (the gateway process running the
/// real backend), working in `dir`, with an optional config file; returns the gateway's and the
/// backend's addresses once the catalog answers through the gateway.
pub async fn start_all_in_one(
    dir: &std::path::Path,
    config_file: Option<&std::path::Path>,
) -> (Proc, SocketAddr, SocketAddr) {
    std::fs::create_dir_all(dir).unwrap();
    let (port, backend) = (queue_core::testkit::free_port(), queue_core::testkit::free_port());
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_queue-gateway"));
    cmd.current_dir(dir)
        .env("WR_LISTEN", format!("127.0.0.1:{port}"))
        .env("WR_BACKEND_LISTEN", format!("127.0.0.1:{backend}"))
        .env("WR_ADMIN_TOKEN", ADMIN)
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null());
    if let Some(f) = config_file {
        cmd.env("WR_CONFIG", f);
    }
    let proc = Proc(cmd.spawn().expect("start queue-gateway"));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !(tokio::net::TcpStream::connect(addr).await.is_ok()
        && Http::new(addr).get("/api/v1/concerts").await.status == StatusCode::OK)
    {
        assert!(std::time::Instant::now() < deadline, "the all-in-one system did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (proc, addr, format!("127.0.0.1:{backend}").parse().unwrap())
}
