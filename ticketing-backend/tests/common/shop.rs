//! A shop to test against: the payment simulator, a backend on a real socket, one HTTP
//! exchange, and a round with seats and a coupon campaign.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use ticketing_backend::config::BackendConfig;

pub const SECRET: &str = "test_sk_payments_suite";
pub const JWT: &str = "payments-test-jwt-secret-0123456789abcdef";

/// One HTTP exchange over a real socket.
pub async fn http(
    method: &str,
    url: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> (StatusCode, Value, HeaderMap) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req =
        axum::http::Request::builder().method(method).uri(url).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.map(|b| b.to_string()).unwrap_or_default()))).unwrap();
    let resp = client.request(req).await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null), headers)
}

pub async fn simulator() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    ticketing_backend::paysim::start(l, SECRET).await.unwrap()
}

pub async fn sim_stats(sim: SocketAddr) -> Value {
    http("GET", &format!("http://{sim}/_sim/stats"), None, &[]).await.1
}

/// A backend on a real socket (in process).
pub struct Backend {
    pub base: String,
}

impl Backend {
    pub async fn start_with(db: String, sim: SocketAddr, tweak: impl FnOnce(&mut BackendConfig)) -> Backend {
        let mut cfg = BackendConfig {
            database_url: Some(db),
            jwt_secret: Some(JWT.into()),
            admin_email: Some("admin@example.com".into()),
            admin_password: Some("admin-password-123".into()),
            payments_base_url: Some(format!("http://{sim}")),
            payments_secret_key: SECRET.into(),
            payments_timeout_ms: 1_000,
            demo_data: false,
            ..BackendConfig::default()
        };
        tweak(&mut cfg);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(ticketing_backend::run(listener, cfg, std::future::pending()));
        Backend { base: format!("http://{addr}") }
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        token: &str,
        extra: &[(&str, &str)],
    ) -> (StatusCode, Value, HeaderMap) {
        let auth = format!("Bearer {token}");
        let mut headers = vec![("authorization", auth.as_str())];
        headers.extend_from_slice(extra);
        http(method, &format!("{}{path}", self.base), body, &headers).await
    }
}

pub fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// Admin and buyer tokens, a 10-seat round at 10,000 each, and a 5,000-off campaign.
pub struct World {
    pub admin: String,
    pub buyer: String,
    pub schedule: i64,
    pub seats: Vec<i64>,
    pub campaign: i64,
}

/// The configured admin's token.
pub async fn admin_token(b: &Backend) -> String {
    let (s, v, _) = http(
        "POST",
        &format!("{}/api/v1/auth/login", b.base),
        Some(json!({"email": "admin@example.com", "password": "admin-password-123"})),
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["token"].as_str().unwrap().to_owned()
}

/// A new buyer: (id, token).
pub async fn signup(b: &Backend, email: &str) -> (i64, String) {
    let (s, v, _) = http(
        "POST",
        &format!("{}/api/v1/auth/signup", b.base),
        Some(json!({"email": email, "password": "buyer password", "name": "B"})),
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    (v["id"].as_i64().unwrap(), v["token"].as_str().unwrap().to_owned())
}

/// A gateway's admission key set, its JWKS served over HTTP: (keys, JWKS URL).
pub async fn gateway_keys() -> (queue_core::token::KeySet, String) {
    use queue_core::token::{KeySet, SigningKey};
    let keys = KeySet::new("gw", SigningKey::generate().unwrap());
    let jwks = serde_json::to_value(keys.jwks()).unwrap();
    let app = axum::Router::new()
        .route("/.well-known/jwks.json", axum::routing::get(move || async move { axum::Json(jwks) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (keys, format!("http://{addr}/.well-known/jwks.json"))
}

pub async fn world(b: &Backend, email: &str) -> World {
    let admin = admin_token(b).await;
    let (_, buyer) = signup(b, email).await;
    let (_, venue, _) = b
        .call("POST", "/admin/v1/venues", Some(json!({"name": "Hall", "address": "Seoul"})), &admin, &[])
        .await;
    let concert = json!({"title": "Pay test", "category": "concert", "description": "", "starts_on": "2026-09-01T19:00:00Z",
        "ends_on": "2026-09-01T22:00:00Z", "venue_id": venue["id"], "host": "h"});
    let (_, c, _) = b.call("POST", "/admin/v1/concerts", Some(concert), &admin, &[]).await;
    let sched = json!({"starts_at": "2026-09-01T19:00:00Z", "sections": [{"name": "A", "rows": 1, "seats_per_row": 10, "grade": "R", "price": 10000}]});
    let (s, v, _) =
        b.call("POST", &format!("/admin/v1/concerts/{}/schedules", c["id"]), Some(sched), &admin, &[]).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let schedule = v["id"].as_i64().unwrap();
    let (_, map, _) = b.call("GET", &format!("/api/v1/schedules/{schedule}/seats"), None, &buyer, &[]).await;
    let seats = map.as_array().unwrap().iter().map(|s| s["seat_id"].as_i64().unwrap()).collect();
    let camp = json!({"name": "5k off", "discount_kind": "amount", "discount": 5000, "stock": 100,
        "valid_from": "2020-01-01T00:00:00Z", "valid_until": "2099-01-01T00:00:00Z"});
    let (_, v, _) = b.call("POST", "/admin/v1/coupon-campaigns", Some(camp), &admin, &[]).await;
    World { admin, buyer, schedule, seats, campaign: v["id"].as_i64().unwrap() }
}

impl World {
    /// Holds `seats`, gets the coupon, prepares: (reservation, coupon, order, amount).
    pub async fn order(&self, b: &Backend, seats: &[i64]) -> (String, String, String, i64) {
        let (s, r, _) = b
            .call(
                "POST",
                "/api/v1/reservations",
                Some(json!({"schedule_id": self.schedule, "seat_ids": seats})),
                &self.buyer,
                &[],
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{r}");
        let reservation = r["reservation_id"].as_str().unwrap().to_owned();
        // One coupon per buyer: issued the first time, reused once an undo gives it back.
        let coupon = match b
            .call("POST", &format!("/api/v1/coupons/{}/issue", self.campaign), None, &self.buyer, &[])
            .await
        {
            (StatusCode::CREATED, v, _) => v["coupon_id"].as_str().unwrap().to_owned(),
            (StatusCode::CONFLICT, _, _) => {
                let (_, mine, _) = b.call("GET", "/api/v1/me/coupons", None, &self.buyer, &[]).await;
                mine["items"][0]["coupon_id"].as_str().unwrap().to_owned()
            }
            (_, v, _) => panic!("{v}"),
        };
        let (s, o, _) = b
            .call(
                "POST",
                "/api/v1/payments/prepare",
                Some(json!({"reservation_id": reservation, "coupon_id": coupon})),
                &self.buyer,
                &[],
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{o}");
        (reservation, coupon, o["order_id"].as_str().unwrap().to_owned(), o["amount"].as_i64().unwrap())
    }

    pub async fn seat_status(&self, b: &Backend, seat: i64) -> String {
        let (_, map, _) = b
            .call("GET", &format!("/api/v1/schedules/{}/seats", self.schedule), None, &self.buyer, &[])
            .await;
        map.as_array().unwrap().iter().find(|s| s["seat_id"] == seat).unwrap()["status"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn coupon_status(&self, b: &Backend, coupon: &str) -> String {
        let (_, mine, _) = b.call("GET", "/api/v1/me/coupons", None, &self.buyer, &[]).await;
        mine["items"].as_array().unwrap().iter().find(|c| c["coupon_id"] == coupon).unwrap()["status"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}
