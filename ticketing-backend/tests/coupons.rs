//! Coupons over the HTTP API (in process), with the in-process issuer and with Redis: campaign
//! validation, windows, one per user, and 10,000 concurrent requests from 2,000 users for 500
//! coupons.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use queue_core::testkit::RedisServer;
use serde_json::{Value, json};
use ticketing_backend::config::BackendConfig;
use ticketing_backend::state::AppState;
use ticketing_backend::users::Role;
use tower::ServiceExt;

struct Api {
    state: AppState,
    router: axum::Router,
    _dir: std::path::PathBuf,
}

async fn api(redis: Option<String>) -> Api {
    let dir =
        std::env::temp_dir().join(format!("tb-coupons-{}-{}", std::process::id(), rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = BackendConfig {
        database_url: Some(format!("sqlite://{}?mode=rwc", dir.join("t.db").display())),
        redis_url: redis,
        demo_data: false,
        ..BackendConfig::default()
    };
    let state = ticketing_backend::build(&cfg).await.unwrap();
    Api { router: ticketing_backend::router(state.clone()), state, _dir: dir }
}

impl Api {
    async fn call(&self, method: &str, path: &str, body: Option<Value>, token: &str) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {token}"))
            .body(body.map(|b| Body::from(b.to_string())).unwrap_or_else(Body::empty))
            .unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// `n` users inserted directly (no password hashing), with their tokens.
    async fn users(&self, n: usize, role: Role) -> Vec<(i64, String)> {
        let mut out = Vec::new();
        let mut tx = self.state.db.pool.begin().await.unwrap();
        for i in 0..n {
            let email = format!(
                "{}-{i}-{}@example.com",
                if role == Role::Admin { "admin" } else { "user" },
                rand::random::<u32>()
            );
            let role_s = if role == Role::Admin { "admin" } else { "user" };
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO users (email, name, password_hash, role, created_at) VALUES ($1, 'U', 'x', $2, 0) RETURNING id",
            )
            .bind(email)
            .bind(role_s)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
            out.push((id, self.state.auth.issue(id, role).unwrap()));
        }
        tx.commit().await.unwrap();
        out
    }
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

async fn campaign(api: &Api, admin: &str, stock: i64, from: &str, until: &str) -> i64 {
    let body = json!({"name": "Launch", "discount_kind": "amount", "discount": 5000, "stock": stock, "valid_from": from, "valid_until": until});
    let (s, v) = api.call("POST", "/admin/v1/coupon-campaigns", Some(body), admin).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v["id"].as_i64().unwrap()
}

async fn rules(redis: Option<String>) {
    let api = api(redis).await;
    let admin = api.users(1, Role::Admin).await.remove(0).1;
    let users = api.users(3, Role::User).await;
    let c = campaign(&api, &admin, 2, "2020-01-01T00:00:00Z", "2099-01-01T00:00:00Z").await;
    let path = format!("/api/v1/coupons/{c}/issue");
    let (s, v) = api.call("POST", &path, None, &users[0].1).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert!(v["coupon_id"].as_str().unwrap().starts_with('c'));
    let (s, v) = api.call("POST", &path, None, &users[0].1).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "already_issued"));
    assert_eq!(api.call("POST", &path, None, &users[1].1).await.0, StatusCode::CREATED);
    let (s, v) = api.call("POST", &path, None, &users[2].1).await;
    assert_eq!((s, code(&v)), (StatusCode::GONE, "sold_out"));
    let (_, mine) = api.call("GET", "/api/v1/me/coupons", None, &users[0].1).await;
    assert_eq!(mine["items"].as_array().unwrap().len(), 1);
    assert_eq!(mine["items"][0]["status"], "issued");

    let later = campaign(&api, &admin, 5, "2098-01-01T00:00:00Z", "2099-01-01T00:00:00Z").await;
    let (s, v) = api.call("POST", &format!("/api/v1/coupons/{later}/issue"), None, &users[2].1).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "not_started"));
    let ended = campaign(&api, &admin, 5, "2020-01-01T00:00:00Z", "2021-01-01T00:00:00Z").await;
    let (s, v) = api.call("POST", &format!("/api/v1/coupons/{ended}/issue"), None, &users[2].1).await;
    assert_eq!((s, code(&v)), (StatusCode::GONE, "campaign_ended"));
    assert_eq!(
        api.call("POST", "/api/v1/coupons/424242/issue", None, &users[2].1).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.call("POST", "/api/v1/coupons/abc/issue", None, &users[2].1).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(api.call("POST", &path, None, "not-a-token").await.0, StatusCode::UNAUTHORIZED);

    // Buyers see the open campaigns (not the future or ended ones) with the stock left.
    let (s, open) = api.call("GET", "/api/v1/coupons", None, "").await;
    assert_eq!(s, StatusCode::OK, "{open}");
    let ids: Vec<i64> =
        open["items"].as_array().unwrap().iter().map(|i| i["campaign_id"].as_i64().unwrap()).collect();
    assert!(ids.contains(&c) && !ids.contains(&later) && !ids.contains(&ended), "{open}");
    let item = open["items"].as_array().unwrap().iter().find(|i| i["campaign_id"] == c).unwrap();
    assert_eq!((item["remaining"].as_i64(), item["name"].as_str()), (Some(0), Some("Launch")), "{item}");

    // Campaign validation names the field; users cannot create campaigns.
    let ok = json!({"name": "X", "discount_kind": "percent", "discount": 10, "stock": 1, "valid_from": "2020-01-01T00:00:00Z", "valid_until": "2099-01-01T00:00:00Z"});
    assert_eq!(
        api.call("POST", "/admin/v1/coupon-campaigns", Some(ok.clone()), &users[0].1).await.0,
        StatusCode::FORBIDDEN
    );
    for (field, value) in [
        ("discount_kind", json!("free")),
        ("discount", json!(101)),
        ("discount", json!(0)),
        ("stock", json!(0)),
        ("valid_until", json!("2019-01-01T00:00:00Z")),
        ("valid_from", json!("soon")),
        ("name", json!("")),
    ] {
        let mut b = ok.clone();
        b[field] = value;
        let (s, v) = api.call("POST", "/admin/v1/coupon-campaigns", Some(b), &admin).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{field}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().starts_with(field), "{v}");
    }
}

async fn contention(redis: Option<String>) {
    let api = Arc::new(api(redis).await);
    let admin = api.users(1, Role::Admin).await.remove(0).1;
    let users = Arc::new(api.users(2_000, Role::User).await);
    let c = campaign(&api, &admin, 500, "2020-01-01T00:00:00Z", "2099-01-01T00:00:00Z").await;
    let tasks: Vec<_> = (0..10_000)
        .map(|i| {
            let (api, users) = (api.clone(), users.clone());
            tokio::spawn(async move {
                let token = &users[(i * 7919) % users.len()].1;
                let (s, v) = api.call("POST", &format!("/api/v1/coupons/{c}/issue"), None, token).await;
                (s, code(&v).to_owned())
            })
        })
        .collect();
    let (mut issued, mut already, mut sold_out) = (0, 0, 0);
    for t in tasks {
        match t.await.unwrap() {
            (StatusCode::CREATED, _) => issued += 1,
            (StatusCode::CONFLICT, c) if c == "already_issued" => already += 1,
            (StatusCode::GONE, c) if c == "sold_out" => sold_out += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!(issued, 500, "exactly the stock ({already} already issued, {sold_out} sold out)");
    let (rows, holders): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT user_id) FROM coupons WHERE campaign_id = $1")
            .bind(c)
            .fetch_one(&api.state.db.pool)
            .await
            .unwrap();
    assert_eq!((rows, holders), (500, 500), "no user with two");
}

#[tokio::test]
async fn memory_rules() {
    rules(None).await
}

#[tokio::test]
async fn redis_rules() {
    let server = RedisServer::start();
    rules(Some(server.url())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn memory_contention() {
    contention(None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn redis_contention() {
    let server = RedisServer::start();
    contention(Some(server.url())).await
}
