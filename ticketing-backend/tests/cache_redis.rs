//! Two backend instances sharing Redis: a write on one invalidates what the other cached.

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use queue_core::testkit::RedisServer;
use serde_json::{Value, json};
use ticketing_backend::config::BackendConfig;
use tower::ServiceExt;

async fn call(r: &axum::Router, method: &str, path: &str, body: Option<Value>, token: Option<&str>) -> Value {
    let mut req = Request::builder().method(method).uri(path).header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req.body(body.map(|b| Body::from(b.to_string())).unwrap_or_else(Body::empty)).unwrap();
    let bytes = r.clone().oneshot(req).await.unwrap().into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

#[tokio::test]
async fn writes_on_one_instance_invalidate_the_others_cache() {
    let redis = RedisServer::start();
    let dir = std::env::temp_dir().join(format!("tb-cache-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = BackendConfig {
        database_url: Some(format!("sqlite://{}?mode=rwc", dir.join("t.db").display())),
        redis_url: Some(redis.url()),
        jwt_secret: Some("cache-test-secret-0123456789abcdef0123".into()),
        admin_email: Some("admin@example.com".into()),
        admin_password: Some("admin-password-123".into()),
        ..BackendConfig::default()
    };
    let a = ticketing_backend::router(ticketing_backend::build(&cfg).await.unwrap());
    let b = ticketing_backend::router(ticketing_backend::build(&cfg).await.unwrap());
    let token = call(
        &a,
        "POST",
        "/api/v1/auth/login",
        Some(json!({"email": "admin@example.com", "password": "admin-password-123"})),
        None,
    )
    .await;
    let token = token["token"].as_str().unwrap().to_owned();
    let venue =
        call(&a, "POST", "/admin/v1/venues", Some(json!({"name": "Hall", "address": "Seoul"})), Some(&token))
            .await["id"]
            .clone();
    let concert = |title: &str| json!({"title": title, "category": "c", "starts_on": "2026-07-01T19:00:00Z", "ends_on": "2026-07-01T21:00:00Z", "venue_id": venue, "host": "h"});
    let id =
        call(&a, "POST", "/admin/v1/concerts", Some(concert("Before")), Some(&token)).await["id"].clone();
    // B caches detail and the first page.
    assert_eq!(call(&b, "GET", &format!("/api/v1/concerts/{id}"), None, None).await["title"], "Before");
    assert_eq!(call(&b, "GET", "/api/v1/concerts", None, None).await["items"][0]["title"], "Before");
    assert!(
        redis.command(&format!("EXISTS tb:cache:concert:{id}")).unwrap().contains('1'),
        "the detail is cached in Redis"
    );
    // A writes; B sees it at once.
    call(&a, "PUT", &format!("/admin/v1/concerts/{id}"), Some(concert("After")), Some(&token)).await;
    assert_eq!(call(&b, "GET", &format!("/api/v1/concerts/{id}"), None, None).await["title"], "After");
    assert_eq!(call(&b, "GET", "/api/v1/concerts", None, None).await["items"][0]["title"], "After");
    call(&a, "DELETE", &format!("/admin/v1/concerts/{id}"), None, Some(&token)).await;
    assert_eq!(
        call(&b, "GET", &format!("/api/v1/concerts/{id}"), None, None).await["error"]["code"],
        "not_found"
    );
    assert_eq!(call(&b, "GET", "/api/v1/concerts", None, None).await["total"], 0);
    let _ = std::fs::remove_dir_all(dir);
}
