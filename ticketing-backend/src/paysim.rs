//! A local payment provider speaking the Toss Payments API subset the backend uses, for the
//! demo and tests (the `payments-sim` binary, or in process).
//!
//! - `POST /v1/payments/confirm` `{paymentKey, orderId, amount}` → `200 {paymentKey, orderId,
//!   status: "DONE", totalAmount, approvedAt}`; an `Idempotency-Key` replays the first answer.
//! - `POST /v1/payments/{paymentKey}/cancel` `{cancelReason}` → `status: "CANCELED"`.
//! - `GET /v1/payments/{paymentKey}`, `GET /v1/payments/orders/{orderId}`.
//! - `GET /_sim/stats`: charges and cancels (per order too).
//!
//! Behaviour by `paymentKey` prefix: `fail_` is rejected (`400 REJECT_CARD_PAYMENT`);
//! `timeout_` is charged but answered only after 30 s (an answer lost on the way); `slow_` is
//! answered after 1.5 s. Requests need `Authorization: Basic base64(secretKey + ":")`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;

#[derive(Clone, Debug)]
struct Payment {
    order_id: String,
    amount: i64,
    status: &'static str,
}

#[derive(Default)]
struct Sim {
    secret: String,
    payments: Mutex<HashMap<String, Payment>>,
    idempotent: Mutex<HashMap<String, (StatusCode, Value)>>,
    charges: Mutex<HashMap<String, u64>>,
    cancels: Mutex<HashMap<String, u64>>,
}

type S = Arc<Sim>;

fn err(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"code": code, "message": message}))).into_response()
}

fn authorized(sim: &Sim, headers: &HeaderMap) -> bool {
    let expected =
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{}:", sim.secret)));
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(expected.as_str())
}

fn payment_json(key: &str, p: &Payment) -> Value {
    json!({"paymentKey": key, "orderId": p.order_id, "status": p.status, "totalAmount": p.amount,
        "method": "카드", "approvedAt": "2026-01-01T00:00:00+09:00"})
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Confirm {
    payment_key: String,
    order_id: String,
    amount: i64,
}

async fn confirm(State(sim): State<S>, headers: HeaderMap, body: Json<Confirm>) -> Response {
    if !authorized(&sim, &headers) {
        return err(StatusCode::UNAUTHORIZED, "UNAUTHORIZED_KEY", "invalid secret key");
    }
    let idem = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_owned);
    if let Some(k) = &idem
        && let Some((s, v)) = sim.idempotent.lock().unwrap_or_else(|e| e.into_inner()).get(k).cloned()
    {
        return (s, Json(v)).into_response();
    }
    let c = body.0;
    if c.payment_key.starts_with("slow_") {
        tokio::time::sleep(Duration::from_millis(1_500)).await;
    }
    let (status, v) = if c.payment_key.starts_with("fail_") {
        (StatusCode::BAD_REQUEST, json!({"code": "REJECT_CARD_PAYMENT", "message": "the card was declined"}))
    } else if c.amount <= 0 {
        (StatusCode::BAD_REQUEST, json!({"code": "INVALID_AMOUNT", "message": "amount must be positive"}))
    } else {
        let mut payments = sim.payments.lock().unwrap_or_else(|e| e.into_inner());
        let p = payments
            .entry(c.payment_key.clone())
            .or_insert_with(|| {
                *sim.charges
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(c.order_id.clone())
                    .or_default() += 1;
                Payment { order_id: c.order_id.clone(), amount: c.amount, status: "DONE" }
            })
            .clone();
        if p.order_id != c.order_id || p.amount != c.amount {
            (
                StatusCode::BAD_REQUEST,
                json!({"code": "INVALID_REQUEST", "message": "paymentKey already used for another order"}),
            )
        } else {
            (StatusCode::OK, payment_json(&c.payment_key, &p))
        }
    };
    if let Some(k) = idem {
        sim.idempotent.lock().unwrap_or_else(|e| e.into_inner()).insert(k, (status, v.clone()));
    }
    if c.payment_key.starts_with("timeout_") {
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    (status, Json(v)).into_response()
}

async fn cancel(State(sim): State<S>, headers: HeaderMap, Path(key): Path<String>) -> Response {
    if !authorized(&sim, &headers) {
        return err(StatusCode::UNAUTHORIZED, "UNAUTHORIZED_KEY", "invalid secret key");
    }
    let mut payments = sim.payments.lock().unwrap_or_else(|e| e.into_inner());
    let Some(p) = payments.get_mut(&key) else {
        return err(StatusCode::NOT_FOUND, "NOT_FOUND_PAYMENT", "no such payment");
    };
    if p.status != "CANCELED" {
        p.status = "CANCELED";
        *sim.cancels.lock().unwrap_or_else(|e| e.into_inner()).entry(p.order_id.clone()).or_default() += 1;
    }
    Json(payment_json(&key, p)).into_response()
}

async fn by_key(State(sim): State<S>, headers: HeaderMap, Path(key): Path<String>) -> Response {
    if !authorized(&sim, &headers) {
        return err(StatusCode::UNAUTHORIZED, "UNAUTHORIZED_KEY", "invalid secret key");
    }
    let payments = sim.payments.lock().unwrap_or_else(|e| e.into_inner());
    match payments.get(&key) {
        Some(p) => Json(payment_json(&key, p)).into_response(),
        None => err(StatusCode::NOT_FOUND, "NOT_FOUND_PAYMENT", "no such payment"),
    }
}

async fn by_order(State(sim): State<S>, headers: HeaderMap, Path(order): Path<String>) -> Response {
    if !authorized(&sim, &headers) {
        return err(StatusCode::UNAUTHORIZED, "UNAUTHORIZED_KEY", "invalid secret key");
    }
    let payments = sim.payments.lock().unwrap_or_else(|e| e.into_inner());
    match payments.iter().find(|(_, p)| p.order_id == order) {
        Some((k, p)) => Json(payment_json(k, p)).into_response(),
        None => err(StatusCode::NOT_FOUND, "NOT_FOUND_PAYMENT", "no such payment"),
    }
}

async fn stats(State(sim): State<S>) -> Response {
    let charges = sim.charges.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let cancels = sim.cancels.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Json(json!({"charges": charges.values().sum::<u64>(), "cancels": cancels.values().sum::<u64>(),
        "charges_by_order": charges, "cancels_by_order": cancels}))
    .into_response()
}

/// Serves the simulator on `listener` with `secret_key`; returns its address.
pub async fn start(listener: TcpListener, secret_key: &str) -> std::io::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    let sim = Arc::new(Sim { secret: secret_key.to_owned(), ..Sim::default() });
    let app = axum::Router::new()
        .route("/v1/payments/confirm", post(confirm))
        .route("/v1/payments/{key}/cancel", post(cancel))
        .route("/v1/payments/{key}", get(by_key))
        .route("/v1/payments/orders/{order}", get(by_order))
        .route("/_sim/stats", get(stats))
        .with_state(sim);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "payment simulator stopped");
        }
    });
    Ok(addr)
}
