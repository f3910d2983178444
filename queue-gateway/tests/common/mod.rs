//! Test helpers: a gateway on port 0, a recording upstream, and a tiny HTTP client with a
//! cookie jar (no mocks: real sockets, real stores).
#![allow(dead_code)]

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
