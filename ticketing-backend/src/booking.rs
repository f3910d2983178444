//! Booking: reservations hold seats (all or none, one winner per seat) for `hold_ttl_s`; the
//! database row is the truth for confirmed bookings.
//!
//! A reservation is made in two steps: the hold ([`crate::holds`], atomic over the schedule),
//! then the row, in one transaction that also retires expired holds on the same seats. A
//! partial unique index on the active seats of a schedule backs the hold store up: even a wiped
//! Redis cannot sell a seat twice. If the row cannot be written, the hold is released.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::catalog::{body, not_found, parse_id, rfc3339};
use crate::db::now_ms;
use crate::error::{ApiError, Context};
use crate::holds::HoldOutcome;
use crate::state::AppState;
use crate::users::{AdminUser, CurrentUser, Role};

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Most seats in one reservation.
pub const MAX_SEATS_PER_RESERVATION: usize = 10;

/// `POST /api/v1/reservations` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewReservation {
    schedule_id: i64,
    seat_ids: Vec<i64>,
}

fn new_id() -> String {
    format!("r{:024x}", rand::random::<u128>() >> 32)
}

fn placeholders(from: usize, n: usize) -> String {
    (from..from + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

struct Schedule {
    room: Option<String>,
    cap: Option<i64>,
}

async fn live_schedule(s: &AppState, id: i64) -> Result<Schedule> {
    let row = sqlx::query(
        "SELECT c.room, c.max_seats_per_buyer FROM schedules s JOIN concerts c ON c.id = s.concert_id \
         WHERE s.id = $1 AND c.deleted_at IS NULL",
    )
    .bind(id)
    .fetch_optional(&s.db.pool)
    .await
    .context("loading a schedule")?;
    let row = row.ok_or_else(|| not_found("schedule"))?;
    Ok(Schedule { room: row.get::<Option<String>, _>(0), cap: row.get::<Option<i64>, _>(1) })
}

/// Whom a hold counts against: the buyer in this round, and the admission it came with.
struct Limits {
    user: i64,
    schedule: i64,
    admission: Option<String>,
    cap: i64,
}

/// Seats that count against a limit: sold, held and unexpired, or held by a reservation whose
/// payment is under way (its hold may run out while the provider answers, and the saga still
/// books it).
const LIVE_SEAT: &str = "rs.active = 1 AND (r.status = 'paid' OR (r.status = 'held' AND (r.expires_at > $1 \
     OR EXISTS (SELECT 1 FROM payments p WHERE p.reservation_id = r.id AND (p.status = 'confirming' OR p.step = 'compensating')))))";

impl Limits {
    /// `409 seat_limit` (or `admission_seat_limit`) when `adding` more seats would pass
    /// the cap. Decisive only inside the insert's transaction, after [`Limits::lock`].
    async fn check(&self, conn: &mut sqlx::AnyConnection, adding: usize) -> Result<()> {
        let now = now_ms();
        let sql = format!(
            "SELECT COUNT(*) FROM reservation_seats rs JOIN reservations r ON r.id = rs.reservation_id \
             WHERE {LIVE_SEAT} AND r.user_id = $2 AND r.schedule_id = $3"
        );
        let mine: i64 = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .bind(self.user)
            .bind(self.schedule)
            .fetch_one(&mut *conn)
            .await
            .context("counting a buyer's seats")?
            .get(0);
        if mine + adding as i64 > self.cap {
            return Err(ApiError::client(
                StatusCode::CONFLICT,
                "seat_limit",
                format!("at most {} seats per buyer for this round; you hold or bought {mine}", self.cap),
            ));
        }
        let Some(jti) = &self.admission else { return Ok(()) };
        let sql = format!(
            "SELECT COUNT(*) FROM reservation_seats rs JOIN reservations r ON r.id = rs.reservation_id \
             WHERE {LIVE_SEAT} AND r.admission_jti = $2"
        );
        let admitted: i64 = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .bind(jti)
            .fetch_one(&mut *conn)
            .await
            .context("counting an admission's seats")?
            .get(0);
        if admitted + adding as i64 > self.cap {
            return Err(ApiError::client(
                StatusCode::CONFLICT,
                "admission_seat_limit",
                format!(
                    "at most {} seats per admission; {admitted} are held or bought with this one",
                    self.cap
                ),
            ));
        }
        Ok(())
    }

    /// Serialises the holds of one buyer in one round, and of one admission, until the
    /// transaction ends (a row each in `limit_locks`), so that concurrent holds are counted
    /// one after another.
    async fn lock(&self, conn: &mut sqlx::AnyConnection) -> Result<()> {
        let buyer = format!("buyer:{}:{}", self.user, self.schedule);
        let admission = self.admission.as_ref().map(|j| format!("admission:{j}"));
        for key in std::iter::once(buyer).chain(admission) {
            sqlx::query(
                "INSERT INTO limit_locks (key, touched_at) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET touched_at = $2",
            )
            .bind(key)
            .bind(now_ms())
            .execute(&mut *conn)
            .await
            .context("taking a limit lock")?;
        }
        Ok(())
    }
}

/// The requested seats' prices, checking every one belongs to the schedule.
async fn seat_prices(s: &AppState, schedule: i64, seats: &[i64]) -> Result<i64> {
    let sql = format!(
        "SELECT id, price FROM seats WHERE schedule_id = $1 AND id IN ({})",
        placeholders(2, seats.len())
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(schedule);
    for id in seats {
        q = q.bind(*id);
    }
    let rows = q.fetch_all(&s.db.pool).await.context("loading seats")?;
    if rows.len() != seats.len() {
        let found: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        let missing: Vec<i64> = seats.iter().copied().filter(|s| !found.contains(s)).collect();
        return Err(ApiError::invalid("seat_ids", format!("not seats of schedule {schedule}: {missing:?}")));
    }
    Ok(rows.iter().map(|r| r.get::<i64, _>(1)).sum())
}

fn check_seats(seats: &[i64]) -> Result<Vec<i64>> {
    if seats.is_empty() || seats.len() > MAX_SEATS_PER_RESERVATION {
        return Err(ApiError::invalid(
            "seat_ids",
            format!("must name 1 to {MAX_SEATS_PER_RESERVATION} seats"),
        ));
    }
    let mut sorted = seats.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != seats.len() || sorted[0] <= 0 {
        return Err(ApiError::invalid("seat_ids", "must be distinct positive ids"));
    }
    Ok(sorted)
}

fn seat_taken(seats: &[i64]) -> ApiError {
    ApiError::client(
        StatusCode::CONFLICT,
        "seat_taken",
        format!("seats {seats:?} are held or sold; nothing was held"),
    )
}

/// `POST /api/v1/reservations`: `201 {reservation_id, status: "held", expires_at, amount}`,
/// `409 seat_taken` (nothing held), `409 seat_limit` / `admission_seat_limit` past the
/// concert's seats per buyer per round (and per admission), `403 not_admitted` for a queued
/// concert without an admission, `403 admission_not_yours` with another account's.
pub async fn create(
    State(s): State<AppState>,
    user: CurrentUser,
    headers: HeaderMap,
    b: std::result::Result<Json<NewReservation>, JsonRejection>,
) -> Result<Response> {
    let req = body(b)?;
    if req.schedule_id <= 0 {
        return Err(ApiError::invalid("schedule_id", "must be a positive integer"));
    }
    let seats = check_seats(&req.seat_ids)?;
    let schedule = live_schedule(&s, req.schedule_id).await?;
    let admission = match &schedule.room {
        Some(room) => Some(s.admission.require_for(&headers, room, &user).await?),
        None => None,
    };
    let limits = Limits {
        user: user.id,
        schedule: req.schedule_id,
        admission: admission.map(|c| c.jti.clone()),
        cap: schedule.cap.unwrap_or(s.seats_per_buyer),
    };
    // Refused before anything is held; the count that decides is in the insert's transaction.
    let mut conn = s.db.pool.acquire().await.context("counting seats")?;
    limits.check(&mut conn, seats.len()).await?;
    drop(conn);
    let amount = seat_prices(&s, req.schedule_id, &seats).await?;
    let id = new_id();
    let expires =
        match s.holds.hold(req.schedule_id, &seats, &id, s.hold_ttl_ms).await.context("holding seats")? {
            HoldOutcome::Held { expires_at_ms } => expires_at_ms,
            HoldOutcome::Taken(taken) => return Err(seat_taken(&taken)),
        };
    if let Err(e) = insert(&s, &id, &limits, &seats, amount, expires).await {
        // The row is the truth: without it, the hold must not stay.
        if let Err(re) = s.holds.release(req.schedule_id, &seats, &id).await {
            tracing::error!(error = %re, reservation = %id, "releasing a hold after a failed insert failed; it expires on its own");
        }
        return Err(e);
    }
    s.metrics.reservations_held.inc();
    let v = json!({
        "reservation_id": id, "status": "held", "expires_at": rfc3339(expires), "amount": amount,
        "schedule_id": req.schedule_id, "seat_ids": seats,
    });
    s.notifier.publish(user.id, "reservation.held", v.clone()).await;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

async fn insert(
    s: &AppState,
    id: &str,
    limits: &Limits,
    seats: &[i64],
    amount: i64,
    expires: i64,
) -> Result<()> {
    let (user, schedule) = (limits.user, limits.schedule);
    let now = now_ms();
    let mut tx = s.db.pool.begin().await.context("starting a reservation")?;
    limits.lock(&mut tx).await?;
    limits.check(&mut tx, seats.len()).await?;
    // Holds that expired on these seats give them up in the database too.
    let sql = format!(
        "UPDATE reservations SET status = 'expired', updated_at = $1 WHERE status = 'held' AND expires_at <= $1 \
         AND id IN (SELECT reservation_id FROM reservation_seats WHERE schedule_id = $2 AND active = 1 AND seat_id IN ({}))",
        placeholders(3, seats.len())
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now).bind(schedule);
    for seat in seats {
        q = q.bind(*seat);
    }
    q.execute(&mut *tx).await.context("retiring expired holds")?;
    // Every seat of a dead reservation, not only the requested ones: a dead reservation
    // holds no seat.
    let sql = format!(
        "UPDATE reservation_seats SET active = 0 WHERE active = 1 AND reservation_id IN (\
         SELECT r.id FROM reservations r JOIN reservation_seats x ON x.reservation_id = r.id \
         WHERE x.schedule_id = $1 AND x.active = 1 AND x.seat_id IN ({}) AND r.status IN ('expired', 'cancelled'))",
        placeholders(2, seats.len())
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(schedule);
    for seat in seats {
        q = q.bind(*seat);
    }
    q.execute(&mut *tx).await.context("freeing seats of expired holds")?;
    sqlx::query(
        "INSERT INTO reservations (id, user_id, schedule_id, amount, status, expires_at, created_at, updated_at, admission_jti) \
         VALUES ($1, $2, $3, $4, 'held', $5, $6, $6, $7)",
    )
    .bind(id)
    .bind(user)
    .bind(schedule)
    .bind(amount)
    .bind(expires)
    .bind(now)
    .bind(&limits.admission)
    .execute(&mut *tx)
    .await
    .context("inserting a reservation")?;
    for seat in seats {
        let r = sqlx::query("INSERT INTO reservation_seats (reservation_id, schedule_id, seat_id, active) VALUES ($1, $2, $3, 1)")
            .bind(id)
            .bind(schedule)
            .bind(*seat)
            .execute(&mut *tx)
            .await;
        match r {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => return Err(seat_taken(&[*seat])),
            Err(e) => return Err(e).context("inserting reserved seats"),
        }
    }
    tx.commit().await.context("committing a reservation")
}

fn reservation_json(r: &AnyRow, seats: Vec<i64>) -> Value {
    let expires: i64 = r.get("expires_at");
    let mut status: String = r.get("status");
    if status == "held" && expires <= now_ms() {
        status = "expired".into();
    }
    json!({
        "reservation_id": r.get::<String, _>("id"),
        "schedule_id": r.get::<i64, _>("schedule_id"),
        "seat_ids": seats,
        "status": status,
        "amount": r.get::<i64, _>("amount"),
        "expires_at": rfc3339(expires),
        "created_at": rfc3339(r.get("created_at")),
    })
}

async fn load(s: &AppState, id: &str, user: &CurrentUser) -> Result<(AnyRow, Vec<i64>)> {
    let bad = || not_found("reservation");
    if id.len() != 25 || !id.starts_with('r') || !id[1..].bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let row = sqlx::query(
        "SELECT id, user_id, schedule_id, amount, status, expires_at, created_at FROM reservations WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&s.db.pool)
    .await
    .context("loading a reservation")?
    .ok_or_else(bad)?;
    // Someone else's reservation does not exist, as far as this caller can tell.
    if row.get::<i64, _>("user_id") != user.id && user.role != Role::Admin {
        return Err(bad());
    }
    Ok((row, seat_ids(s, id).await?))
}

/// The seats of a reservation, in id order.
pub(crate) async fn seat_ids(s: &AppState, reservation: &str) -> Result<Vec<i64>> {
    Ok(sqlx::query("SELECT seat_id FROM reservation_seats WHERE reservation_id = $1 ORDER BY seat_id")
        .bind(reservation)
        .fetch_all(&s.db.pool)
        .await
        .context("loading reserved seats")?
        .iter()
        .map(|r| r.get::<i64, _>(0))
        .collect())
}

fn reservation_id(p: std::result::Result<Path<String>, PathRejection>) -> Result<String> {
    p.map(|Path(id)| id).map_err(|_| not_found("reservation"))
}

/// `GET /api/v1/reservations/{id}` (its owner or an admin).
pub async fn get(
    State(s): State<AppState>,
    user: CurrentUser,
    p: std::result::Result<Path<String>, PathRejection>,
) -> Result<Response> {
    let (row, seats) = load(&s, &reservation_id(p)?, &user).await?;
    Ok(Json(reservation_json(&row, seats)).into_response())
}

/// `DELETE /api/v1/reservations/{id}`: cancels a hold and returns its seats, or refunds a paid
/// reservation; `409 payment_in_progress` while a payment of it runs. Cancelling a cancelled
/// or expired reservation answers its state again.
pub async fn cancel(
    State(s): State<AppState>,
    user: CurrentUser,
    p: std::result::Result<Path<String>, PathRejection>,
) -> Result<Response> {
    let id = reservation_id(p)?;
    let (row, seats) = load(&s, &id, &user).await?;
    if row.get::<String, _>("status") == "held" {
        cancel_held(&s, &id, row.get("schedule_id"), &seats, row.get("user_id")).await?;
    }
    // Paid, perhaps meanwhile: cancelling it is its refund.
    let (row, _) = load(&s, &id, &user).await?;
    if row.get::<String, _>("status") == "paid"
        && let Some(order) = crate::payments::paid_order_of(&s, &id).await?
    {
        crate::payments::refund_order(&s, order).await?;
    }
    let (row, seats) = load(&s, &id, &user).await?;
    Ok(Json(reservation_json(&row, seats)).into_response())
}

/// Cancels a held reservation, its seats and its unconfirmed orders; `409
/// payment_in_progress` while an order of it is being confirmed or undone (that saga decides
/// its seats); `false` if it is no longer held. The reservation's row is taken first, as a
/// confirmation's claim takes it, so the two never both go ahead.
async fn cancel_held(s: &AppState, id: &str, schedule: i64, seats: &[i64], user: i64) -> Result<bool> {
    let now = now_ms();
    let mut tx = s.db.pool.begin().await.context("starting a cancellation")?;
    let held = sqlx::query("UPDATE reservations SET updated_at = $1 WHERE id = $2 AND status = 'held'")
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await
        .context("locking a reservation")?;
    if held.rows_affected() == 0 {
        return Ok(false);
    }
    let busy = sqlx::query(
        "SELECT 1 FROM payments WHERE reservation_id = $1 AND (status = 'confirming' OR step = 'compensating')",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await
    .context("looking for a payment under way")?;
    if busy.is_some() {
        return Err(ApiError::client(
            StatusCode::CONFLICT,
            "payment_in_progress",
            "a payment for this reservation is being confirmed; cancel after it ends",
        ));
    }
    sqlx::query("UPDATE reservations SET status = 'cancelled', updated_at = $1 WHERE id = $2")
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await
        .context("cancelling a reservation")?;
    sqlx::query("UPDATE reservation_seats SET active = 0 WHERE reservation_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await
        .context("freeing reserved seats")?;
    sqlx::query(
        "UPDATE payments SET status = 'failed', step = 'compensated', last_error = 'reservation cancelled', \
         updated_at = $1 WHERE reservation_id = $2 AND status = 'ready'",
    )
    .bind(now)
    .bind(id)
    .execute(&mut *tx)
    .await
    .context("closing unconfirmed orders")?;
    tx.commit().await.context("committing a cancellation")?;
    s.holds.release(schedule, seats, id).await.context("releasing seats")?;
    s.notifier.publish(user, "reservation.cancelled", json!({"reservation_id": id})).await;
    Ok(true)
}

/// `GET /api/v1/me/reservations`: the caller's reservations, newest first.
pub async fn mine(State(s): State<AppState>, user: CurrentUser) -> Result<Response> {
    // What was paid (after any coupon) comes from the reservation's paid order.
    let rows = sqlx::query(
        "SELECT r.id, r.user_id, r.schedule_id, r.amount, r.status, r.expires_at, r.created_at, \
         (SELECT p.amount FROM payments p WHERE p.reservation_id = r.id AND p.status = 'paid' LIMIT 1) AS paid_amount \
         FROM reservations r WHERE r.user_id = $1 ORDER BY r.created_at DESC, r.id DESC LIMIT 100",
    )
    .bind(user.id)
    .fetch_all(&s.db.pool)
    .await
    .context("listing reservations")?;
    let items: Vec<Value> = rows
        .iter()
        .map(|r| {
            let mut v = reservation_json(r, Vec::new());
            if let Some(paid) = r.get::<Option<i64>, _>("paid_amount") {
                v["paid_amount"] = json!(paid);
            }
            v
        })
        .collect();
    Ok(Json(json!({ "items": items })).into_response())
}

/// `GET /admin/v1/reservations` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    concert_id: Option<String>,
    status: Option<String>,
    page: Option<String>,
    size: Option<String>,
}

/// `GET /admin/v1/reservations?concert_id=&status=&page=&size=` (admins), newest first.
pub async fn admin_list(
    State(s): State<AppState>,
    _admin: AdminUser,
    q: std::result::Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response> {
    let Query(q) = q.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let page = q.page.as_deref().map(|p| parse_id(p, "page")).transpose()?.unwrap_or(1);
    let size = q.size.as_deref().map(|p| parse_id(p, "size")).transpose()?.unwrap_or(20);
    if page > 10_000 || size > 100 {
        return Err(ApiError::invalid("page", "page ≤ 10000 and size ≤ 100"));
    }
    let concert = q.concert_id.as_deref().map(|c| parse_id(c, "concert_id")).transpose()?;
    if let Some(st) = &q.status
        && !["held", "paid", "cancelled", "expired"].contains(&st.as_str())
    {
        return Err(ApiError::invalid("status", "must be held, paid, cancelled or expired"));
    }
    let rows = sqlx::query(
        "SELECT r.id, r.user_id, r.schedule_id, r.amount, r.status, r.expires_at, r.created_at \
         FROM reservations r JOIN schedules s ON s.id = r.schedule_id \
         WHERE ($1 = 0 OR s.concert_id = $1) AND ($2 = '' OR r.status = $2) \
         ORDER BY r.created_at DESC, r.id DESC LIMIT $3 OFFSET $4",
    )
    .bind(concert.unwrap_or(0))
    .bind(q.status.clone().unwrap_or_default())
    .bind(size)
    .bind((page - 1) * size)
    .fetch_all(&s.db.pool)
    .await
    .context("listing reservations")?;
    let items: Vec<Value> = rows
        .iter()
        .map(|r| {
            let mut v = reservation_json(r, Vec::new());
            v["user_id"] = json!(r.get::<i64, _>("user_id"));
            v.as_object_mut().map(|o| o.remove("seat_ids"));
            v
        })
        .collect();
    Ok(Json(json!({ "items": items, "page": page, "size": size })).into_response())
}
