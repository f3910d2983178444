//! A local payment provider speaking the Toss Payments API subset the backend uses, for the
//! demo and tests (the `payments-sim` binary, or in process).
//!
//! - `POST /v1/payments/confirm` `{paymentKey, orderId, amount}` → `200 {paymentKey, orderId,
//!   status: "DONE", totalAmount, approvedAt}`; an `Idempotency-Key` replays the first answer.
//! - `POST /v1/payments/{paymentKey}/cancel` `{cancelReason}` → `status: "CANCELED"`.
//! - `GET /v1/payments/{paymentKey}`, `GET /v1/payments/orders/{orderId}`.
//! - `GET /v1/transactions?startDate=&endDate=&startingAfter=&limit=`: every charge and
//!   cancel in the window, oldest first (`transactionKey`, `paymentKey`, `orderId`, `status`,
//!   `amount`, `transactionAt`), paged after a `transactionKey`.
//! - `GET /_sim/stats`: charges and cancels (per order too); `GET /_sim/ledger`: every
//!   payment in its current state (what tests compare the database with).
//!
//! As the real provider: an `orderId` is paid by one payment only (`DUPLICATED_ORDER_ID`),
//! and an `Idempotency-Key` reused with another body is refused (`422`).
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

#[derive(Clone, Debug)]
struct Transaction {
    key: String,
    payment_key: String,
    order_id: String,
    status: &'static str,
    amount: i64,
    at_ms: i64,
}

#[derive(Default)]
struct Sim {
    secret: String,
    payments: Mutex<HashMap<String, Payment>>,
    idempotent: Mutex<HashMap<String, (String, StatusCode, Value)>>,
    transactions: Mutex<Vec<Transaction>>,
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Sim {
    fn record(&self, payment_key: &str, p: &Payment) {
        let mut all = lock(&self.transactions);
        let key = format!("tx{:012}", all.len() + 1);
        all.push(Transaction {
            key,
            payment_key: payment_key.to_owned(),
            order_id: p.order_id.clone(),
            status: p.status,
            amount: p.amount,
            at_ms: crate::db::now_ms(),
        });
    }

    /// Charges `c` once per payment key and once per order.
    fn charge(&self, c: &Confirm) -> (StatusCode, Value) {
        if c.payment_key.starts_with("fail_") {
            return (
                StatusCode::BAD_REQUEST,
                json!({"code": "REJECT_CARD_PAYMENT", "message": "the card was declined"}),
            );
        }
        if c.amount <= 0 {
            return (
                StatusCode::BAD_REQUEST,
                json!({"code": "INVALID_AMOUNT", "message": "amount must be positive"}),
            );
        }
        let mut payments = lock(&self.payments);
        if let Some(p) = payments.get(&c.payment_key) {
            if p.order_id != c.order_id || p.amount != c.amount {
                return (
                    StatusCode::BAD_REQUEST,
                    json!({"code": "INVALID_REQUEST", "message": "paymentKey already used for another order"}),
                );
            }
            return (StatusCode::OK, payment_json(&c.payment_key, p));
        }
        if payments.values().any(|p| p.order_id == c.order_id) {
            return (
                StatusCode::BAD_REQUEST,
                json!({"code": "DUPLICATED_ORDER_ID", "message": "this orderId was already paid by another payment"}),
            );
        }
        let p = Payment { order_id: c.order_id.clone(), amount: c.amount, status: "DONE" };
        *lock(&self.charges).entry(c.order_id.clone()).or_default() += 1;
        self.record(&c.payment_key, &p);
        let v = payment_json(&c.payment_key, &p);
        payments.insert(c.payment_key.clone(), p);
        (StatusCode::OK, v)
    }
}

async fn confirm(State(sim): State<S>, headers: HeaderMap, body: Json<Confirm>) -> Response {
    if !authorized(&sim, &headers) {
        return err(StatusCode::UNAUTHORIZED, "UNAUTHORIZED_KEY", "invalid secret key");
    }
    let c = body.0;
    let fingerprint = format!("{}|{}|{}", c.payment_key, c.order_id, c.amount);
    let idem = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_owned);
    if let Some(k) = &idem
        && let Some((f, s, v)) = lock(&sim.idempotent).get(k).cloned()
    {
        if f != fingerprint {
            return err(
                StatusCode::UNPROCESSABLE_ENTITY,
                "INVALID_IDEMPOTENCY_KEY",
                "this Idempotency-Key was used with another request",
            );
        }
        return (s, Json(v)).into_response();
    }
    if c.payment_key.starts_with("slow_") {
        tokio::time::sleep(Duration::from_millis(1_500)).await;
    }
    let (status, v) = sim.charge(&c);
    if let Some(k) = idem {
        lock(&sim.idempotent).insert(k, (fingerprint, status, v.clone()));
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
    let mut payments = lock(&sim.payments);
    let Some(p) = payments.get_mut(&key) else {
        return err(StatusCode::NOT_FOUND, "NOT_FOUND_PAYMENT", "no such payment");
    };
    if p.status != "CANCELED" {
        p.status = "CANCELED";
        *lock(&sim.cancels).entry(p.order_id.clone()).or_default() += 1;
        sim.record(&key, p);
    }
    Json(payment_json(&key, p)).into_response()
}

/// `GET /v1/transactions` query.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TxQuery {
    start_date: String,
    end_date: String,
    starting_after: Option<String>,
    limit: Option<usize>,
}

async fn transactions(
    State(sim): State<S>,
    headers: HeaderMap,
    q: Result<axum::extract::Query<TxQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if !authorized(&sim, &headers) {
        return err(StatusCode::UNAUTHORIZED, "UNAUTHORIZED_KEY", "invalid secret key");
    }
    let parse = |v: &str| {
        time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
            .ok()
            .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
    };
    let Ok(axum::extract::Query(q)) = q else {
        return err(StatusCode::BAD_REQUEST, "INVALID_REQUEST", "startDate and endDate are required");
    };
    let (Some(from), Some(to)) = (parse(&q.start_date), parse(&q.end_date)) else {
        return err(StatusCode::BAD_REQUEST, "INVALID_DATE", "dates must be ISO 8601");
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let after = q.starting_after.unwrap_or_default();
    let all = lock(&sim.transactions);
    let page: Vec<Value> = all
        .iter()
        .filter(|t| t.at_ms >= from && t.at_ms < to && t.key > after)
        .take(limit)
        .map(|t| {
            json!({"transactionKey": t.key, "paymentKey": t.payment_key, "orderId": t.order_id, "status": t.status,
                "amount": t.amount, "transactionAt": crate::catalog::rfc3339(t.at_ms)})
        })
        .collect();
    Json(Value::Array(page)).into_response()
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
    let payments = lock(&sim.payments);
    match payments.iter().find(|(_, p)| p.order_id == order) {
        Some((k, p)) => Json(payment_json(k, p)).into_response(),
        None => err(StatusCode::NOT_FOUND, "NOT_FOUND_PAYMENT", "no such payment"),
    }
}

async fn ledger(State(sim): State<S>) -> Response {
    let payments = lock(&sim.payments);
    let mut all: Vec<Value> = payments.iter().map(|(k, p)| payment_json(k, p)).collect();
    all.sort_by(|a, b| a["orderId"].as_str().cmp(&b["orderId"].as_str()));
    Json(Value::Array(all)).into_response()
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
        .route("/v1/transactions", get(transactions))
        .route("/_sim/stats", get(stats))
        .route("/_sim/ledger", get(ledger))
        .with_state(sim);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "payment simulator stopped");
        }
    });
    Ok(addr)
}
