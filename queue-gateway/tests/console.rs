//! The ops console page.

mod common;

use axum::http::{Method, StatusCode};
use common::*;

/// The ops console is one page whose script drives the admin API; it is served to anyone (the
/// data needs the token) with a strict content security policy.
#[tokio::test]
async fn the_ops_console_is_served() {
    let up = upstream().await;
    let gw = queue_gateway::spawn(config(up, None)).await.unwrap();
    let r = Http::new(gw.addr).send(Method::GET, "/admin/", &[("accept", "text/html")], None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text.contains("Ops console") && r.text.contains("/admin/v1/rooms") && r.text.contains("Admit"));
    assert!(r.headers["content-security-policy"].to_str().unwrap().contains("default-src 'none'"));
    gw.stop().await.unwrap();
}
