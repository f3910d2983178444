//! JSON over HTTP to other services (the payment provider, a running instance for `reindex`),
//! with one client type and a deadline on the whole exchange.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderValue;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// A pooled plain-HTTP client for JSON calls.
pub type JsonClient = Client<HttpConnector, Full<Bytes>>;

/// A new client.
pub fn client() -> JsonClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends `body` (JSON) with `headers` and returns the status and the JSON answer (`Null` when
/// the answer is not JSON); transport failures and the `timeout` are errors.
pub async fn call(
    client: &JsonClient,
    method: &str,
    url: &str,
    headers: &[(&str, HeaderValue)],
    body: Option<&Value>,
    timeout: Duration,
) -> Result<(u16, Value), String> {
    let mut req =
        axum::http::Request::builder().method(method).uri(url).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, v.clone());
    }
    let req = req
        .body(Full::new(Bytes::from(body.map(|b| b.to_string()).unwrap_or_default())))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok::<_, String>((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| format!("{url} did not answer in time"))?
}
