//! A small built-in upstream for the embedded demo (`cargo run --release` with no
//! `WR_UPSTREAM`): a home page, a protected booking page and a JSON echo. The real backend
//! replaces it by setting `WR_UPSTREAM`.

use std::net::SocketAddr;

use axum::Router;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{Html, IntoResponse, Json};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

fn router() -> Router {
    Router::new().route("/", axum::routing::get(home)).fallback(echo)
}

async fn home() -> Html<&'static str> {
    Html(
        "<!doctype html><html lang=en><meta charset=utf-8><meta name=viewport content='width=device-width'>\
         <title>Demo backend</title><h1>Demo on-sale</h1><p>The booking page is behind the waiting room \
         <code>demo</code>.</p><p><a href='/book/'>Book a seat</a></p></html>",
    )
}

async fn echo(method: Method, uri: Uri, headers: HeaderMap) -> impl IntoResponse {
    if uri.path().starts_with("/book/") {
        let admitted = headers.contains_key("x-admission-token");
        return Html(format!(
            "<!doctype html><html lang=en><meta charset=utf-8><title>Booking</title><h1>Booking</h1>\
             <p>You are through the waiting room{}.</p><p>Path: <code>{}</code></p></html>",
            if admitted { " (admission token received)" } else { "" },
            html_escape(uri.path())
        ))
        .into_response();
    }
    Json(json!({
        "method": method.as_str(),
        "path": uri.path(),
        "query": uri.query(),
        "admission_token": headers.contains_key("x-admission-token"),
        "forwarded_for": headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()),
    }))
    .into_response()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Starts the demo upstream on a free loopback port; it stops with the gateway.
pub async fn start(mut shutdown: watch::Receiver<bool>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let stop = async move {
            let _ = shutdown.changed().await;
        };
        if let Err(e) = axum::serve(listener, router()).with_graceful_shutdown(stop).await {
            tracing::warn!(error = %e, "demo upstream stopped");
        }
    });
    Ok(addr)
}
