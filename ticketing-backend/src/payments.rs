//! Payments in the Toss Payments style, run as a saga.
//!
//! `prepare` stores an order (id and amount after the coupon). `confirm` refuses an amount
//! other than the stored one (`400 amount_mismatch`) before anything else, then runs the saga
//! recorded on the order row, step by step: seats held (the reservation) → coupon used →
//! charged by the provider → seats sold and the reservation paid. Any failure or timeout runs
//! the compensations of the steps done (refund, restore the coupon, release the seats); a
//! compensation that cannot finish now (provider down) is left marked and retried by
//! [`recovery_loop`], which also finishes sagas a crashed process left mid-way: if the
//! provider charged the order, forward; otherwise, back. `Idempotency-Key` on confirm and
//! cancel replays the first answer.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Row;
use sqlx::any::AnyRow;
use tokio::sync::watch;

use crate::db::now_ms;
use crate::error::{ApiError, Context};
use crate::state::AppState;
use crate::users::CurrentUser;

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// What the provider said to a confirm.
#[derive(Debug)]
pub enum Charge {
    /// Charged.
    Done,
    /// Refused (nothing charged).
    Rejected(String),
    /// No answer (timeout, broken connection): it may or may not have charged.
    Unknown(String),
}

/// The payment provider's client (Toss's confirm, cancel and lookup API).
#[derive(Clone, Debug)]
pub struct Provider {
    base: String,
    auth: HeaderValue,
    client: crate::outbound::JsonClient,
    timeout: Duration,
}

impl Provider {
    /// A client for `base` (e.g. `https://api.tosspayments.com`) with the secret key.
    pub fn new(base: &str, secret_key: &str, timeout: Duration) -> Self {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{secret_key}:"));
        let mut auth = HeaderValue::from_str(&format!("Basic {token}")).expect("base64 is a valid header");
        auth.set_sensitive(true);
        Provider {
            base: base.trim_end_matches('/').to_owned(),
            auth,
            client: crate::outbound::client(),
            timeout,
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        idem: Option<&str>,
    ) -> Result<(u16, Value), String> {
        let mut headers = vec![("authorization", self.auth.clone())];
        if let Some(k) = idem.and_then(|k| HeaderValue::from_str(k).ok()) {
            headers.push(("idempotency-key", k));
        }
        crate::outbound::call(
            &self.client,
            method,
            &format!("{}{path}", self.base),
            &headers,
            body.as_ref(),
            self.timeout,
        )
        .await
    }

    /// `POST /v1/payments/confirm` under the idempotency key `idem` (one per reservation
    /// attempt, so a retry of the attempt is never a second charge). An answer about another
    /// order or amount is not a charge of this one.
    pub async fn confirm(&self, payment_key: &str, order_id: &str, amount: i64, idem: &str) -> Charge {
        let body = json!({"paymentKey": payment_key, "orderId": order_id, "amount": amount});
        match self.call("POST", "/v1/payments/confirm", Some(body), Some(idem)).await {
            Ok((200, v))
                if v["status"] == "DONE" && v["orderId"] == order_id && v["totalAmount"] == amount =>
            {
                Charge::Done
            }
            Ok((200, v)) => Charge::Unknown(format!("the provider answered about another payment: {v}")),
            // A refusal; 408, 409, 425 and 429 are "not now" and say nothing of a charge.
            Ok((s, v)) if (400..500).contains(&s) && ![408, 409, 425, 429].contains(&s) => Charge::Rejected(
                format!("{}: {}", v["code"].as_str().unwrap_or("?"), v["message"].as_str().unwrap_or("")),
            ),
            Ok((s, _)) => Charge::Unknown(format!("the provider answered {s}")),
            Err(e) => Charge::Unknown(e),
        }
    }

    /// Refunds whatever the provider charged for `order_id`: looks the order's payment up
    /// (never trusting a client's payment key), then cancels it. An order the provider never
    /// charged, or already refunded, needs nothing.
    pub async fn refund(&self, order_id: &str, reason: &str) -> Result<(), String> {
        let Some(p) = self.payment_of(order_id).await? else { return Ok(()) };
        if p.status != "DONE" {
            return Ok(());
        }
        let path = format!("/v1/payments/{}/cancel", encode(&p.payment_key));
        match self
            .call("POST", &path, Some(json!({"cancelReason": reason})), Some(&format!("cancel-{order_id}")))
            .await?
        {
            (200, _) | (404, _) => Ok(()),
            (s, v) => Err(format!("cancel answered {s}: {v}")),
        }
    }

    /// Whether the provider holds a charge for `order_id` now (`DONE`, not cancelled).
    pub async fn charged(&self, order_id: &str) -> Result<bool, String> {
        Ok(self.payment_of(order_id).await?.is_some_and(|p| p.status == "DONE"))
    }

    /// The provider's payment for `order_id` (`GET /v1/payments/orders/{orderId}`).
    pub async fn payment_of(&self, order_id: &str) -> Result<Option<ProviderPayment>, String> {
        match self.call("GET", &format!("/v1/payments/orders/{}", encode(order_id)), None, None).await? {
            (200, v) => ProviderPayment::of(&v).map(Some).ok_or_else(|| format!("unreadable payment: {v}")),
            (404, _) => Ok(None),
            (s, v) => Err(format!("lookup answered {s}: {v}")),
        }
    }

    /// The provider's ledger: payments with a transaction in `[from_ms, to_ms)`
    /// (`GET /v1/transactions`, paged with `startingAfter`), one entry per payment in its
    /// latest state.
    pub async fn ledger(&self, from_ms: i64, to_ms: i64) -> Result<Vec<ProviderPayment>, String> {
        let date = |ms: i64| crate::catalog::rfc3339(ms).as_str().map(str::to_owned).unwrap_or_default();
        let (from, to) = (date(from_ms), date(to_ms));
        let mut out: Vec<ProviderPayment> = Vec::new();
        let mut at: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        let mut after = String::new();
        for _ in 0..1_000 {
            let mut path =
                format!("/v1/transactions?startDate={}&endDate={}&limit=1000", encode(&from), encode(&to));
            if !after.is_empty() {
                path.push_str(&format!("&startingAfter={}", encode(&after)));
            }
            let page = match self.call("GET", &path, None, None).await? {
                (200, Value::Array(page)) => page,
                (s, v) => return Err(format!("transactions answered {s}: {v}")),
            };
            let full = page.len() >= 1000;
            after = page.last().and_then(|t| t["transactionKey"].as_str()).unwrap_or_default().to_owned();
            for t in &page {
                let p = ProviderPayment::of(t).ok_or_else(|| format!("unreadable transaction: {t}"))?;
                match at.get(&p.payment_key) {
                    Some(&i) => out[i] = p,
                    None => {
                        at.insert(p.payment_key.clone(), out.len());
                        out.push(p);
                    }
                }
            }
            if !full || after.is_empty() {
                return Ok(out);
            }
        }
        Err("the ledger has more than a million transactions in the window".into())
    }
}

/// One payment as the provider sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderPayment {
    /// The provider's key.
    pub payment_key: String,
    /// Our order.
    pub order_id: String,
    /// `DONE` (charged) or `CANCELED` (refunded), or another provider state.
    pub status: String,
    /// The amount charged.
    pub amount: i64,
}

impl ProviderPayment {
    fn of(v: &Value) -> Option<Self> {
        Some(ProviderPayment {
            payment_key: v["paymentKey"].as_str()?.to_owned(),
            order_id: v["orderId"].as_str()?.to_owned(),
            status: v["status"].as_str()?.to_owned(),
            amount: v["totalAmount"].as_i64().or_else(|| v["amount"].as_i64())?,
        })
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn new_order_id() -> String {
    format!("o{:024x}", rand::random::<u128>() >> 32)
}

fn valid_id(id: &str, prefix: char) -> bool {
    id.len() == 25 && id.starts_with(prefix) && id[1..].bytes().all(|b| b.is_ascii_hexdigit())
}

fn conflict(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::client(StatusCode::CONFLICT, code, message)
}

/// Most orders prepared for one reservation (`409 too_many_orders` after).
pub const MAX_ORDERS_PER_RESERVATION: i64 = 20;

/// `POST /api/v1/payments/prepare` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prepare {
    reservation_id: String,
    coupon_id: Option<String>,
}

/// `POST /api/v1/payments/prepare`: `{order_id, amount}` (the reservation's amount after the
/// coupon). Nothing is spent yet.
pub async fn prepare(
    State(s): State<AppState>,
    user: CurrentUser,
    b: std::result::Result<Json<Prepare>, axum::extract::rejection::JsonRejection>,
) -> Result<Response> {
    let p = crate::catalog::body(b)?;
    if !valid_id(&p.reservation_id, 'r') {
        return Err(crate::catalog::not_found("reservation"));
    }
    let r = sqlx::query(
        "SELECT r.user_id, r.amount, r.status, r.expires_at, r.schedule_id, s.concert_id \
         FROM reservations r JOIN schedules s ON s.id = r.schedule_id WHERE r.id = $1",
    )
    .bind(&p.reservation_id)
    .fetch_optional(&s.db.pool)
    .await
    .context("loading a reservation")?
    .filter(|r| r.get::<i64, _>(0) == user.id)
    .ok_or_else(|| crate::catalog::not_found("reservation"))?;
    let (amount, status, expires): (i64, String, i64) = (r.get(1), r.get(2), r.get(3));
    if status != "held" || expires <= now_ms() {
        return Err(conflict("reservation_not_payable", "only a held, unexpired reservation can be paid"));
    }
    if let Some(live) = live_order_of(&s, &p.reservation_id).await? {
        return Err(live_conflict(&live));
    }
    let discount = match &p.coupon_id {
        Some(c) => coupon_discount(&s, c, user.id, amount, (r.get(5), r.get(4))).await?,
        None => 0,
    };
    let total = (amount - discount).max(0);
    let order = new_order_id();
    let now = now_ms();
    let mut tx = s.db.pool.begin().await.context("starting an order")?;
    // Taking the reservation's row first serialises the orders of one reservation.
    let held = sqlx::query(
        "UPDATE reservations SET updated_at = $1 WHERE id = $2 AND user_id = $3 AND status = 'held' AND expires_at > $1",
    )
    .bind(now)
    .bind(&p.reservation_id)
    .bind(user.id)
    .execute(&mut *tx)
    .await
    .context("locking a reservation")?;
    if held.rows_affected() == 0 {
        return Err(conflict("reservation_not_payable", "only a held, unexpired reservation can be paid"));
    }
    // Orders are rows kept for the books: a reservation gets a bounded number.
    let orders: i64 = sqlx::query("SELECT COUNT(*) FROM payments WHERE reservation_id = $1")
        .bind(&p.reservation_id)
        .fetch_one(&mut *tx)
        .await
        .context("counting a reservation's orders")?
        .get(0);
    if orders >= MAX_ORDERS_PER_RESERVATION {
        return Err(conflict(
            "too_many_orders",
            format!("a reservation takes at most {MAX_ORDERS_PER_RESERVATION} orders; hold the seats again"),
        ));
    }
    // One open order per reservation: a new one supersedes those not yet confirmed.
    sqlx::query(
        "UPDATE payments SET status = 'failed', step = 'superseded', last_error = 'superseded by a newer order', updated_at = $1 \
         WHERE reservation_id = $2 AND status = 'ready'",
    )
    .bind(now)
    .bind(&p.reservation_id)
    .execute(&mut *tx)
    .await
    .context("superseding older orders")?;
    sqlx::query(
        "INSERT INTO payments (order_id, reservation_id, user_id, amount, coupon_id, status, step, attempts, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, 'ready', 'prepared', 0, $6, $6)",
    )
    .bind(&order)
    .bind(&p.reservation_id)
    .bind(user.id)
    .bind(total)
    .bind(&p.coupon_id)
    .bind(now)
    .execute(&mut *tx)
    .await
    .context("inserting an order")?;
    tx.commit().await.context("committing an order")?;
    Ok(Json(
        json!({"order_id": order, "amount": total, "discount": discount, "reservation_id": p.reservation_id}),
    )
    .into_response())
}

/// The order of a reservation that is being confirmed, is paid, or is being compensated or
/// refunded (at most one: `payments_one_live`).
pub async fn live_order_of(s: &AppState, reservation_id: &str) -> Result<Option<Order>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ORDER_COLUMNS} FROM payments WHERE reservation_id = $1 \
         AND (status IN ('confirming', 'paid') OR step = 'compensating')"
    )))
    .bind(reservation_id)
    .fetch_optional(&s.db.pool)
    .await
    .context("loading a reservation's live order")?;
    Ok(row.as_ref().map(order_of))
}

fn live_conflict(live: &Order) -> ApiError {
    if live.status == "paid" {
        conflict("already_paid", "this reservation is paid; cancel it for a refund")
    } else {
        conflict("payment_in_progress", "a payment for this reservation is being confirmed or undone")
    }
}

/// What `coupon` takes off `amount` for a reservation of `(concert, round)`.
async fn coupon_discount(s: &AppState, coupon: &str, user: i64, amount: i64, of: (i64, i64)) -> Result<i64> {
    let row = sqlx::query(
        "SELECT c.user_id, c.status, k.discount_kind, k.discount, k.valid_until, k.id FROM coupons c \
         JOIN coupon_campaigns k ON k.id = c.campaign_id WHERE c.id = $1",
    )
    .bind(coupon)
    .fetch_optional(&s.db.pool)
    .await
    .context("loading a coupon")?
    .filter(|r| r.get::<i64, _>(0) == user)
    .ok_or_else(|| crate::catalog::not_found("coupon"))?;
    let (status, kind, discount, until): (String, String, i64, i64) =
        (row.get(1), row.get(2), row.get(3), row.get(4));
    if status != "issued" || until <= now_ms() {
        return Err(conflict("coupon_unavailable", "this coupon is used or expired"));
    }
    crate::coupons::applies(s, row.get(5), of.0, of.1).await?;
    Ok(if kind == "percent" { amount * discount / 100 } else { discount.min(amount) })
}

/// `POST /api/v1/payments/confirm` body (Toss's success redirect parameters).
#[derive(Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Confirm {
    payment_key: String,
    order_id: String,
    amount: i64,
}

/// The columns [`order_of`] reads.
const ORDER_COLUMNS: &str =
    "order_id, reservation_id, user_id, amount, coupon_id, status, step, payment_key, attempt, updated_at";

/// An order row.
#[derive(Clone, Debug)]
pub struct Order {
    order_id: String,
    reservation_id: String,
    user_id: i64,
    amount: i64,
    coupon_id: Option<String>,
    status: String,
    step: String,
    payment_key: Option<String>,
    attempt: Option<i64>,
    updated_at: i64,
}

fn order_of(r: &AnyRow) -> Order {
    Order {
        order_id: r.get("order_id"),
        reservation_id: r.get("reservation_id"),
        user_id: r.get("user_id"),
        amount: r.get("amount"),
        coupon_id: r.get("coupon_id"),
        status: r.get("status"),
        step: r.get("step"),
        payment_key: r.get("payment_key"),
        attempt: r.get("attempt"),
        updated_at: r.get("updated_at"),
    }
}

async fn load_order(s: &AppState, order_id: &str) -> Result<Option<Order>> {
    let row =
        sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {ORDER_COLUMNS} FROM payments WHERE order_id = $1")))
            .bind(order_id)
            .fetch_optional(&s.db.pool)
            .await
            .context("loading an order")?;
    Ok(row.as_ref().map(order_of))
}

async fn users_order(s: &AppState, order_id: &str, user: &CurrentUser) -> Result<Order> {
    let missing = || crate::catalog::not_found("order");
    if !valid_id(order_id, 'o') {
        return Err(missing());
    }
    load_order(s, order_id).await?.filter(|o| o.user_id == user.id).ok_or_else(missing)
}

fn paid(o: &Order) -> (StatusCode, Value) {
    (
        StatusCode::OK,
        json!({"status": "paid", "order_id": o.order_id, "amount": o.amount, "reservation_id": o.reservation_id}),
    )
}

/// `POST /api/v1/payments/confirm`: `{status: "paid"}`, `400 amount_mismatch`, or the failure
/// after compensation (`402 payment_rejected`, `504 payment_timeout`, `409 ...`).
pub async fn confirm(
    State(s): State<AppState>,
    user: CurrentUser,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    idempotent(&s, &user, "confirm", &headers, &raw, confirm_inner(&s, &user, &raw)).await
}

async fn confirm_inner(s: &AppState, user: &CurrentUser, raw: &[u8]) -> Result<(StatusCode, Value)> {
    let c: Confirm = serde_json::from_slice(raw).map_err(|e| ApiError::invalid("body", e.to_string()))?;
    if c.payment_key.is_empty()
        || c.payment_key.len() > 200
        || !c.payment_key.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(ApiError::invalid("payment_key", "must be 1 to 200 printable ASCII characters"));
    }
    let order = users_order(s, &c.order_id, user).await?;
    match order.status.as_str() {
        "paid" => return Ok(paid(&order)),
        "confirming" => return Err(conflict("payment_in_progress", "this order is being confirmed")),
        "ready" => {}
        _ => {
            return Err(conflict(
                "order_closed",
                "this order failed, was refunded or was superseded by a newer one; prepare a new one",
            ));
        }
    }
    if c.amount != order.amount {
        return Err(ApiError::client(
            StatusCode::BAD_REQUEST,
            "amount_mismatch",
            format!("the amount {} differs from the order's {}", c.amount, order.amount),
        ));
    }
    // The claim: one order of a reservation at a time (`payments_one_live` refuses a second),
    // numbered per reservation for the provider's idempotency key. The reservation's row is
    // taken first, as a cancellation takes it, so a cancel and a confirm never both go ahead.
    let mut tx = s.db.pool.begin().await.context("starting a confirmation")?;
    let held = sqlx::query("UPDATE reservations SET updated_at = $1 WHERE id = $2 AND status = 'held'")
        .bind(now_ms())
        .bind(&order.reservation_id)
        .execute(&mut *tx)
        .await
        .context("locking a reservation")?;
    if held.rows_affected() == 0 {
        drop(tx);
        return Err(match live_order_of(s, &order.reservation_id).await? {
            Some(live) => live_conflict(&live),
            None => conflict("reservation_not_payable", "the reservation was cancelled or expired"),
        });
    }
    let claimed = sqlx::query(
        "UPDATE payments SET status = 'confirming', step = 'started', payment_key = $1, updated_at = $2, \
         attempt = (SELECT COALESCE(MAX(p.attempt), 0) + 1 FROM payments p WHERE p.reservation_id = $4) \
         WHERE order_id = $3 AND status = 'ready'",
    )
    .bind(&c.payment_key)
    .bind(now_ms())
    .bind(&order.order_id)
    .bind(&order.reservation_id)
    .execute(&mut *tx)
    .await;
    match claimed {
        Ok(r) if r.rows_affected() == 1 => tx.commit().await.context("claiming an order")?,
        Ok(_) => return Err(conflict("payment_in_progress", "this order is being confirmed")),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            drop(tx);
            return Err(match live_order_of(s, &order.reservation_id).await? {
                Some(live) => live_conflict(&live),
                None => {
                    conflict("payment_in_progress", "another order of this reservation is being confirmed")
                }
            });
        }
        Err(e) => return Err(e).context("starting a confirmation"),
    }
    let order = load_order(s, &order.order_id).await?.ok_or_else(|| crate::catalog::not_found("order"))?;
    saga::forward(s, order).await
}

/// `POST /api/v1/payments/{order_id}/cancel`: refunds a paid order (its seats return, its
/// coupon comes back); abandons an unconfirmed one.
pub async fn cancel(
    State(s): State<AppState>,
    user: CurrentUser,
    headers: HeaderMap,
    p: std::result::Result<Path<String>, PathRejection>,
) -> Response {
    let id = p.map(|Path(id)| id).unwrap_or_default();
    idempotent(&s, &user, "cancel", &headers, id.as_bytes(), cancel_inner(&s, &user, &id)).await
}

async fn cancel_inner(s: &AppState, user: &CurrentUser, order_id: &str) -> Result<(StatusCode, Value)> {
    let order = users_order(s, order_id, user).await?;
    refund_order(s, order).await
}

/// Refunds (paid) or abandons (ready) an order; used by the payment cancel and by cancelling
/// a paid reservation.
pub async fn refund_order(s: &AppState, order: Order) -> Result<(StatusCode, Value)> {
    let answer = |status: &str| {
        (StatusCode::OK, json!({"status": status, "order_id": order.order_id, "amount": order.amount}))
    };
    match order.status.as_str() {
        "ready" => {
            sqlx::query("UPDATE payments SET status = 'failed', step = 'compensated', last_error = 'abandoned', updated_at = $1 WHERE order_id = $2 AND status = 'ready'")
                .bind(now_ms())
                .bind(&order.order_id)
                .execute(&s.db.pool)
                .await
                .context("abandoning an order")?;
            Ok(answer("cancelled"))
        }
        "refunded" => Ok(answer("refunded")),
        "paid" => {
            // The intent first: a crash from here on is finished by the recovery loop.
            sqlx::query("UPDATE payments SET step = 'refunding', updated_at = $1 WHERE order_id = $2 AND status = 'paid'")
                .bind(now_ms())
                .bind(&order.order_id)
                .execute(&s.db.pool)
                .await
                .context("starting a refund")?;
            saga::refund(s, &order, "cancelled by the buyer").await?;
            Ok(answer("refunded"))
        }
        _ => Err(conflict("not_refundable", format!("this order is {}", order.status))),
    }
}

/// The paid order of a reservation, if any.
pub async fn paid_order_of(s: &AppState, reservation_id: &str) -> Result<Option<Order>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ORDER_COLUMNS} FROM payments WHERE reservation_id = $1 AND status = 'paid'"
    )))
    .bind(reservation_id)
    .fetch_optional(&s.db.pool)
    .await
    .context("loading a reservation's payment")?;
    Ok(row.as_ref().map(order_of))
}

/// Runs `work` once per `Idempotency-Key` (per user and scope) for a day: a repeat with the
/// same body gets the first answer; with another body `422 idempotency_key_reused`; while the
/// first is running `409 request_in_progress` (a key abandoned by a dead process is free again
/// after [`ABANDONED_AFTER_MS`]). Server errors and "in progress" answers are not kept, so
/// they can be retried.
async fn idempotent(
    s: &AppState,
    user: &CurrentUser,
    scope: &str,
    headers: &HeaderMap,
    request: &[u8],
    work: impl std::future::Future<Output = Result<(StatusCode, Value)>>,
) -> Response {
    let reply = |(status, v): (StatusCode, Value)| (status, Json(v)).into_response();
    let Some(key) = headers.get("idempotency-key") else {
        return reply(work.await.unwrap_or_else(ApiError::parts));
    };
    let key = match key.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()) => k.to_owned(),
        _ => {
            return ApiError::invalid("Idempotency-Key", "must be 1 to 255 printable ASCII characters")
                .into_response();
        }
    };
    let hash = hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, request).as_ref());
    let mut reclaimed = false;
    loop {
        let inserted = sqlx::query(
            "INSERT INTO idempotency (user_id, scope, idem_key, request_hash, status_code, body, created_at) VALUES ($1, $2, $3, $4, 0, '', $5)",
        )
        .bind(user.id)
        .bind(scope)
        .bind(&key)
        .bind(&hash)
        .bind(now_ms())
        .execute(&s.db.pool)
        .await;
        match inserted {
            Ok(_) => break,
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                // A first request that never finished (its process died) gives the key up.
                if !reclaimed && abandoned(s, user.id, scope, &key).await {
                    reclaimed = true;
                    continue;
                }
                return replay(s, user.id, scope, &key, &hash).await;
            }
            Err(e) => {
                return Err::<(), _>(e).context("recording an idempotency key").unwrap_err().into_response();
            }
        }
    }
    let (status, v) = work.await.unwrap_or_else(ApiError::parts);
    // Server errors and "not now" answers are not kept: a retry must run again.
    let transient =
        ["payment_in_progress", "request_in_progress"].contains(&v["error"]["code"].as_str().unwrap_or(""));
    let store = if status.is_server_error() || transient {
        sqlx::query("DELETE FROM idempotency WHERE user_id = $1 AND scope = $2 AND idem_key = $3")
            .bind(user.id)
            .bind(scope)
            .bind(&key)
            .execute(&s.db.pool)
            .await
    } else {
        sqlx::query("UPDATE idempotency SET status_code = $1, body = $2 WHERE user_id = $3 AND scope = $4 AND idem_key = $5")
            .bind(i64::from(status.as_u16()))
            .bind(v.to_string())
            .bind(user.id)
            .bind(scope)
            .bind(&key)
            .execute(&s.db.pool)
            .await
    };
    if let Err(e) = store {
        tracing::error!(error = %e, "keeping an idempotent answer failed");
    }
    reply((status, v))
}

/// An idempotency key still marked running this long after it was taken was abandoned by a
/// process that died: no request runs for minutes.
pub const ABANDONED_AFTER_MS: i64 = 5 * 60_000;

/// Frees `key` if its first request was abandoned; `true` if it did.
async fn abandoned(s: &AppState, user: i64, scope: &str, key: &str) -> bool {
    let freed = sqlx::query(
        "DELETE FROM idempotency WHERE user_id = $1 AND scope = $2 AND idem_key = $3 AND status_code = 0 AND created_at < $4",
    )
    .bind(user)
    .bind(scope)
    .bind(key)
    .bind(now_ms() - ABANDONED_AFTER_MS)
    .execute(&s.db.pool)
    .await;
    matches!(freed, Ok(r) if r.rows_affected() == 1)
}

async fn replay(s: &AppState, user: i64, scope: &str, key: &str, hash: &str) -> Response {
    let row = sqlx::query("SELECT request_hash, status_code, body FROM idempotency WHERE user_id = $1 AND scope = $2 AND idem_key = $3")
        .bind(user)
        .bind(scope)
        .bind(key)
        .fetch_optional(&s.db.pool)
        .await;
    let row = match row {
        Ok(Some(r)) => r,
        Ok(None) => return conflict("request_in_progress", "retry in a moment").into_response(),
        Err(e) => return Err::<(), _>(e).context("reading an idempotency key").unwrap_err().into_response(),
    };
    if row.get::<String, _>(0) != hash {
        return ApiError::client(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used with another request",
        )
        .into_response();
    }
    let code: i64 = row.get(1);
    if code == 0 {
        return conflict(
            "request_in_progress",
            "the first request with this Idempotency-Key is still running",
        )
        .into_response();
    }
    let body: Value = serde_json::from_str(&row.get::<String, _>(2)).unwrap_or(Value::Null);
    let mut r = (StatusCode::from_u16(code as u16).unwrap_or(StatusCode::OK), Json(body)).into_response();
    r.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    r
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Finishes sagas left mid-way (a crashed process, a refund the provider refused) until
/// shutdown: every `every`, orders stuck in `confirming` for longer than `stale` and orders
/// whose compensation did not finish.
pub async fn recovery_loop(
    s: AppState,
    every: Duration,
    stale: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if let Err(e) = saga::recover(&s, stale).await {
            tracing::warn!(error = %e, "saga recovery round failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
    }
}

pub mod saga {
    //! The saga's steps and compensations, recorded on the order row (`step`), so any
    //! instance can finish what another began. Steps: `started` → `coupon_used` → `charged`
    //! → `done` (paid); on failure `compensating` → `compensated`; a paid order's refund
    //! `refunding` → `refunded`. Compensations only ever touch an order that is not paid, and
    //! its reservation only while it is held; the database refuses anything else (migration
    //! `0008_integrity`).

    use super::*;

    async fn set_step(s: &AppState, order: &str, step: &str) -> Result<()> {
        sqlx::query(
            "UPDATE payments SET step = $1, updated_at = $2 WHERE order_id = $3 AND status = 'confirming'",
        )
        .bind(step)
        .bind(now_ms())
        .bind(order)
        .execute(&s.db.pool)
        .await
        .context("recording a saga step")?;
        Ok(())
    }

    struct Reserved {
        schedule: i64,
        seats: Vec<i64>,
        status: String,
        expires_at: i64,
    }

    async fn reservation(s: &AppState, id: &str) -> Result<Reserved> {
        let r = sqlx::query("SELECT schedule_id, status, expires_at FROM reservations WHERE id = $1")
            .bind(id)
            .fetch_one(&s.db.pool)
            .await
            .context("loading an order's reservation")?;
        let seats = crate::booking::seat_ids(s, id).await?;
        Ok(Reserved { schedule: r.get(0), status: r.get(1), expires_at: r.get(2), seats })
    }

    /// The provider's idempotency key of an order's attempt: one per reservation attempt, so
    /// that no retry of it, by this instance or another, is ever a second charge.
    pub fn attempt_key(order: &Order) -> String {
        format!("confirm-{}-{}", order.reservation_id, order.attempt.unwrap_or(0))
    }

    /// Runs the remaining steps from `order.step`; on failure compensates and answers why.
    pub async fn forward(s: &AppState, order: Order) -> Result<(StatusCode, Value)> {
        let res = reservation(s, &order.reservation_id).await?;
        let mut step = order.step.clone();
        if step == "started" {
            if res.status != "held" || res.expires_at <= now_ms() {
                compensate(s, &order, false, "the reservation expired").await?;
                return Err(conflict(
                    "reservation_expired",
                    "the reservation's hold expired; its seats were released",
                ));
            }
            if let Some(c) = &order.coupon_id
                && !use_coupon(s, &order, c).await?
            {
                compensate(s, &order, false, "the coupon was used or expired").await?;
                return Err(conflict(
                    "coupon_unavailable",
                    "the coupon was used or expired; nothing was charged",
                ));
            }
            set_step(s, &order.order_id, "coupon_used").await?;
            step = "coupon_used".into();
        }
        if step == "coupon_used" {
            charge(s, &order).await?;
            set_step(s, &order.order_id, "charged").await?;
        }
        if let Err(lost) =
            s.holds.sell(res.schedule, &res.seats, &order.reservation_id).await.context("selling seats")?
        {
            compensate(s, &order, true, "seats lost after the hold expired").await?;
            return Err(conflict(
                "seat_lost",
                format!("seats {lost:?} were taken after the hold expired; the payment is refunded"),
            ));
        }
        if !book(s, &order).await? {
            if let Some(done) = load_order(s, &order.order_id).await?.filter(|o| o.status == "paid") {
                return Ok(paid(&done));
            }
            compensate(
                s,
                &order,
                true,
                "the reservation was cancelled or expired before the payment completed",
            )
            .await?;
            return Err(conflict(
                "reservation_expired",
                "the reservation was cancelled or expired before the payment completed; the payment is refunded",
            ));
        }
        s.metrics.payments_confirmed.inc();
        let answer = paid(&order);
        s.notifier.publish(order.user_id, "payment.paid", answer.1.clone()).await;
        s.tickets.enqueue(&order.order_id).await;
        Ok(answer)
    }

    async fn use_coupon(s: &AppState, order: &Order, coupon: &str) -> Result<bool> {
        let used = sqlx::query(
            "UPDATE coupons SET status = 'used', order_id = $1, used_at = $2 WHERE id = $3 AND user_id = $4 AND status = 'issued' \
             AND campaign_id IN (SELECT id FROM coupon_campaigns WHERE valid_until > $2)",
        )
        .bind(&order.order_id)
        .bind(now_ms())
        .bind(coupon)
        .bind(order.user_id)
        .execute(&s.db.pool)
        .await
        .context("using a coupon")?;
        Ok(used.rows_affected() == 1)
    }

    /// Asks the provider to charge; on a refusal or no answer, compensates and answers why.
    async fn charge(s: &AppState, order: &Order) -> Result<()> {
        if order.amount == 0 {
            return Ok(());
        }
        let key = order.payment_key.clone().unwrap_or_default();
        match s.provider.confirm(&key, &order.order_id, order.amount, &attempt_key(order)).await {
            Charge::Done => Ok(()),
            Charge::Rejected(why) => {
                compensate(s, order, false, &why).await?;
                Err(ApiError::client(
                    StatusCode::PAYMENT_REQUIRED,
                    "payment_rejected",
                    format!("the provider refused: {why}"),
                ))
            }
            Charge::Unknown(why) => {
                compensate(s, order, true, &why).await?;
                Err(ApiError::client(
                    StatusCode::GATEWAY_TIMEOUT,
                    "payment_timeout",
                    format!(
                        "the provider did not confirm ({why}); any charge is refunded and the seats released"
                    ),
                ))
            }
        }
    }

    /// The reservation and the order paid, together; `false` when the reservation is no
    /// longer held (cancelled or expired meanwhile), and then nothing changed.
    async fn book(s: &AppState, order: &Order) -> Result<bool> {
        let now = now_ms();
        let mut tx = s.db.pool.begin().await.context("starting the booking")?;
        let booked = sqlx::query(
            "UPDATE reservations SET status = 'paid', updated_at = $1 WHERE id = $2 AND status = 'held'",
        )
        .bind(now)
        .bind(&order.reservation_id)
        .execute(&mut *tx)
        .await
        .context("marking a reservation paid")?;
        if booked.rows_affected() == 0 {
            return Ok(false);
        }
        let marked = sqlx::query(
            "UPDATE payments SET status = 'paid', step = 'done', updated_at = $1, paid_at = $1 \
             WHERE order_id = $2 AND status = 'confirming'",
        )
        .bind(now)
        .bind(&order.order_id)
        .execute(&mut *tx)
        .await
        .context("marking an order paid")?;
        if marked.rows_affected() == 0 {
            return Ok(false);
        }
        tx.commit().await.context("committing the booking")?;
        Ok(true)
    }

    /// Undoes the steps of an order that is not paid: refund (when asked or when the
    /// provider may have charged), restore the coupon, release the seats of a reservation
    /// still held. Leaves the order `compensating` if the refund cannot be made now;
    /// [`recover`] retries it. A paid order is never compensated.
    pub async fn compensate(s: &AppState, order: &Order, refund: bool, why: &str) -> Result<()> {
        let started = sqlx::query(
            "UPDATE payments SET status = 'failed', step = 'compensating', last_error = $1, updated_at = $2 \
             WHERE order_id = $3 AND (status IN ('ready', 'confirming') OR step = 'compensating')",
        )
        .bind(why)
        .bind(now_ms())
        .bind(&order.order_id)
        .execute(&s.db.pool)
        .await
        .context("starting a compensation")?;
        if started.rows_affected() == 0 {
            tracing::warn!(order = %order.order_id, reason = why, "not compensating an order that is paid or closed");
            return Ok(());
        }
        if refund
            && order.amount > 0
            && let Err(e) = s.provider.refund(&order.order_id, why).await
        {
            tracing::warn!(order = %order.order_id, error = %e, "refund failed; the recovery loop retries it");
            s.notifier.ops(format!("refund of order {} failed ({e}); retrying", order.order_id));
            return Ok(());
        }
        undo_unpaid(s, order).await?;
        s.metrics.sagas_compensated.inc();
        tracing::info!(order = %order.order_id, reason = why, "saga compensated");
        s.notifier
            .publish(
                order.user_id,
                "payment.failed",
                json!({"order_id": order.order_id, "reason": why, "reservation_id": order.reservation_id}),
            )
            .await;
        s.notifier.ops(format!("order {} compensated: {why}", order.order_id));
        Ok(())
    }

    /// Restores the coupon and, if the reservation is still held, cancels it and frees its
    /// seats; closes the order. Never touches a paid reservation or its sold seats.
    async fn undo_unpaid(s: &AppState, order: &Order) -> Result<()> {
        let now = now_ms();
        let mut tx = s.db.pool.begin().await.context("starting an undo")?;
        restore_coupon(&mut tx, order).await?;
        let cancelled = sqlx::query(
            "UPDATE reservations SET status = 'cancelled', updated_at = $1 WHERE id = $2 AND status = 'held'",
        )
        .bind(now)
        .bind(&order.reservation_id)
        .execute(&mut *tx)
        .await
        .context("cancelling a reservation")?;
        sqlx::query(
            "UPDATE reservation_seats SET active = 0 WHERE reservation_id = $1 AND active = 1 \
             AND (SELECT status FROM reservations WHERE id = $1) IN ('cancelled', 'expired')",
        )
        .bind(&order.reservation_id)
        .execute(&mut *tx)
        .await
        .context("freeing reserved seats")?;
        sqlx::query("UPDATE payments SET step = 'compensated', updated_at = $1 WHERE order_id = $2 AND status = 'failed'")
            .bind(now)
            .bind(&order.order_id)
            .execute(&mut *tx)
            .await
            .context("closing an order")?;
        tx.commit().await.context("committing an undo")?;
        let res = reservation(s, &order.reservation_id).await?;
        if cancelled.rows_affected() == 1 || res.status != "paid" {
            s.holds.free(res.schedule, &res.seats, &order.reservation_id).await.context("releasing seats")?;
        }
        Ok(())
    }

    async fn restore_coupon(tx: &mut sqlx::Transaction<'_, sqlx::Any>, order: &Order) -> Result<()> {
        if let Some(c) = &order.coupon_id {
            sqlx::query("UPDATE coupons SET status = 'issued', order_id = NULL, used_at = NULL WHERE id = $1 AND order_id = $2")
                .bind(c)
                .bind(&order.order_id)
                .execute(&mut **tx)
                .await
                .context("restoring a coupon")?;
        }
        Ok(())
    }

    /// Refunds a paid order whose step is `refunding`: the provider's refund, then in one
    /// transaction its tickets revoked, the order refunded, the coupon back, the reservation
    /// cancelled and its seats freed; only then the seats go back on sale. A refund the
    /// provider refuses now leaves the order `refunding` for [`recover`] (`502 refund_failed`).
    pub async fn refund(s: &AppState, order: &Order, why: &str) -> Result<()> {
        if order.amount > 0 {
            s.provider.refund(&order.order_id, why).await.map_err(|e| {
                ApiError::client(
                    StatusCode::BAD_GATEWAY,
                    "refund_failed",
                    format!("the refund did not go through yet ({e}); it is retried"),
                )
            })?;
        }
        let now = now_ms();
        let mut tx = s.db.pool.begin().await.context("starting a refund")?;
        // The order's row first: ticket issuing takes it first too, so the two serialise.
        let locked =
            sqlx::query("UPDATE payments SET updated_at = $1 WHERE order_id = $2 AND status = 'paid'")
                .bind(now)
                .bind(&order.order_id)
                .execute(&mut *tx)
                .await
                .context("locking an order")?;
        if locked.rows_affected() == 0 {
            return Ok(());
        }
        sqlx::query(
            "UPDATE tickets SET status = 'revoked', revoked_at = $1 WHERE order_id = $2 AND status = 'valid'",
        )
        .bind(now)
        .bind(&order.order_id)
        .execute(&mut *tx)
        .await
        .context("revoking tickets")?;
        sqlx::query(
            "UPDATE payments SET status = 'refunded', step = 'refunded', updated_at = $1 WHERE order_id = $2",
        )
        .bind(now)
        .bind(&order.order_id)
        .execute(&mut *tx)
        .await
        .context("marking an order refunded")?;
        restore_coupon(&mut tx, order).await?;
        sqlx::query(
            "UPDATE reservations SET status = 'cancelled', updated_at = $1 WHERE id = $2 AND status = 'paid'",
        )
        .bind(now)
        .bind(&order.reservation_id)
        .execute(&mut *tx)
        .await
        .context("cancelling a refunded reservation")?;
        sqlx::query("UPDATE reservation_seats SET active = 0 WHERE reservation_id = $1")
            .bind(&order.reservation_id)
            .execute(&mut *tx)
            .await
            .context("freeing refunded seats")?;
        tx.commit().await.context("committing a refund")?;
        let res = reservation(s, &order.reservation_id).await?;
        s.holds.free(res.schedule, &res.seats, &order.reservation_id).await.context("releasing seats")?;
        s.metrics.payments_refunded.inc();
        s.notifier
            .publish(
                order.user_id,
                "payment.refunded",
                json!({"order_id": order.order_id, "amount": order.amount}),
            )
            .await;
        Ok(())
    }

    /// One recovery round; see [`recovery_loop`].
    pub async fn recover(s: &AppState, stale: Duration) -> Result<()> {
        let cutoff = now_ms() - stale.as_millis() as i64;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ORDER_COLUMNS} FROM payments \
             WHERE (status = 'confirming' OR step IN ('refunding', 'compensating')) AND updated_at < $1 \
             ORDER BY updated_at LIMIT 100"
        )))
        .bind(cutoff)
        .fetch_all(&s.db.pool)
        .await
        .context("finding unfinished sagas")?;
        for order in rows.iter().map(order_of) {
            // A lease: the instance whose update lands takes the order for this round.
            let claimed =
                sqlx::query("UPDATE payments SET updated_at = $1 WHERE order_id = $2 AND updated_at = $3")
                    .bind(now_ms())
                    .bind(&order.order_id)
                    .bind(order.updated_at)
                    .execute(&s.db.pool)
                    .await
                    .context("claiming a saga")?;
            if claimed.rows_affected() == 0 {
                continue;
            }
            if let Err(e) = finish(s, order).await {
                tracing::info!(error = %e, "an unfinished saga ended with a failure (compensated or retried)");
            }
        }
        Ok(())
    }

    /// Finishes one order left mid-way: a refund is redone; a confirmation goes forward if
    /// the provider charged the order, back otherwise.
    async fn finish(s: &AppState, order: Order) -> Result<()> {
        if order.step == "refunding" {
            return refund(s, &order, "finishing a refund").await;
        }
        let charged = s.provider.charged(&order.order_id).await.map_err(|e| {
            ApiError::client(
                StatusCode::BAD_GATEWAY,
                "provider_unavailable",
                format!("provider lookup failed: {e}"),
            )
        })?;
        tracing::info!(order = %order.order_id, step = %order.step, charged, "finishing a saga left mid-way");
        if order.step == "compensating" {
            compensate(s, &order, true, "retrying the compensation").await
        } else if charged {
            forward(s, Order { step: "charged".into(), ..order }).await.map(|_| ())
        } else {
            // Not charged (or charged too late to see: reconciliation refunds that).
            compensate(s, &order, true, "the process stopped before the provider charged").await
        }
    }
}
