//! A tiny HTTP client with a cookie jar, and child processes that die with their test. Shared
//! with the all-in-one tests (`queue-gateway/all-in-one/tests`).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// The admin token of test gateways.
pub const ADMIN: &str = "test-admin-token-0123456789";

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

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
