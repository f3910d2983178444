//! Tickets, issued asynchronously after payment, at least once and idempotently.
//!
//! A ticket is `valid` until its order is refunded, then `revoked`; the database keeps one
//! valid ticket per seat and issues none for an order that is not paid.
//!
//! A paid order is queued (a Redis Stream `tb:tickets` read by consumer group `issuers` on
//! every instance; an in-process channel without Redis). Issuing inserts one ticket per seat
//! with `UNIQUE (reservation_id, seat_id)`, so a repeat changes nothing; the stream entry is
//! acknowledged after the insert, and entries a dead instance held are claimed. A sweep of paid
//! orders without tickets (at start and every 30 s) catches anything a queue lost, such as a
//! crash between the payment's commit and the enqueue.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use redis::streams::{StreamAutoClaimReply, StreamReadReply};
use serde_json::json;
use sqlx::Row;
use tokio::sync::{Notify, mpsc, watch};

use crate::catalog::rfc3339;
use crate::db::now_ms;
use crate::error::{ApiError, Context};
use crate::state::AppState;
use crate::users::CurrentUser;

const STREAM: &str = "tb:tickets";
const GROUP: &str = "issuers";

/// The issuing queue.
pub struct Queue {
    inner: Inner,
    wake: Notify,
}

enum Inner {
    Memory(mpsc::UnboundedSender<String>, tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>),
    Redis(redis::aio::ConnectionManager),
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.inner {
            Inner::Memory(..) => "tickets::Queue::Memory",
            Inner::Redis(_) => "tickets::Queue::Redis",
        })
    }
}

impl Queue {
    /// In process.
    pub fn memory() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Queue { inner: Inner::Memory(tx, tokio::sync::Mutex::new(rx)), wake: Notify::new() }
    }

    /// A Redis Stream shared by every instance.
    pub async fn redis(url: &str) -> redis::RedisResult<Self> {
        let conn = redis::Client::open(url)?.get_connection_manager().await?;
        create_group(&conn).await?;
        Ok(Queue { inner: Inner::Redis(conn), wake: Notify::new() })
    }

    /// Queues a paid order for issuing. A failure is logged: the sweep issues it later.
    pub async fn enqueue(&self, order_id: &str) {
        match &self.inner {
            Inner::Memory(tx, _) => {
                let _ = tx.send(order_id.to_owned());
            }
            Inner::Redis(c) => {
                let r: redis::RedisResult<String> = redis::cmd("XADD")
                    .arg(STREAM)
                    .arg("*")
                    .arg("order")
                    .arg(order_id)
                    .query_async(&mut c.clone())
                    .await;
                if let Err(e) = r {
                    tracing::warn!(error = %e, order = order_id, "queueing tickets failed; the sweep issues them");
                }
            }
        }
        self.wake.notify_one();
    }
}

/// Creates the stream and its consumer group unless they exist: at start, and again when a
/// Redis that lost its data answers `NOGROUP` (the sweep issues what was queued then).
async fn create_group(conn: &redis::aio::ConnectionManager) -> redis::RedisResult<()> {
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(STREAM)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn.clone())
        .await;
    match created {
        Err(e) if e.code() != Some("BUSYGROUP") => Err(e),
        _ => Ok(()),
    }
}

/// Issues the tickets of a paid order; returns how many were new. The order's row is taken
/// first, as a refund takes it, so a ticket is never issued beside a refund in flight; the
/// database refuses a ticket for an order that is not paid (`integrity_ticket_paid`).
pub async fn issue(s: &AppState, order_id: &str) -> Result<usize, ApiError> {
    let mut tx = s.db.pool.begin().await.context("starting to issue tickets")?;
    let locked =
        sqlx::query("UPDATE payments SET updated_at = updated_at WHERE order_id = $1 AND status = 'paid'")
            .bind(order_id)
            .execute(&mut *tx)
            .await
            .context("locking a paid order")?;
    if locked.rows_affected() == 0 {
        return Ok(0);
    }
    let order = sqlx::query("SELECT reservation_id, user_id FROM payments WHERE order_id = $1")
        .bind(order_id)
        .fetch_one(&mut *tx)
        .await
        .context("loading a paid order")?;
    let (reservation, user): (String, i64) = (order.get(0), order.get(1));
    let seats: Vec<i64> =
        sqlx::query("SELECT seat_id FROM reservation_seats WHERE reservation_id = $1 ORDER BY seat_id")
            .bind(&reservation)
            .fetch_all(&mut *tx)
            .await
            .context("loading seats to ticket")?
            .iter()
            .map(|r| r.get(0))
            .collect();
    let mut new = Vec::new();
    for seat in seats {
        let id = format!("t{:024x}", rand::random::<u128>() >> 32);
        let r = sqlx::query(
            "INSERT INTO tickets (id, order_id, reservation_id, seat_id, user_id, issued_at, status) \
             VALUES ($1, $2, $3, $4, $5, $6, 'valid') ON CONFLICT (reservation_id, seat_id) DO NOTHING",
        )
        .bind(&id)
        .bind(order_id)
        .bind(&reservation)
        .bind(seat)
        .bind(user)
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .context("issuing a ticket")?;
        if r.rows_affected() == 1 {
            new.push(json!({"ticket_id": id, "seat_id": seat}));
        }
    }
    tx.commit().await.context("committing tickets")?;
    if !new.is_empty() {
        s.metrics.tickets_issued.inc_by(new.len() as u64);
        s.notifier
            .publish(
                user,
                "ticket.issued",
                json!({"order_id": order_id, "reservation_id": reservation, "tickets": new}),
            )
            .await;
    }
    Ok(new.len())
}

/// Paid orders without tickets (anything a queue lost).
async fn sweep(s: &AppState) -> Result<(), ApiError> {
    let rows = sqlx::query(
        "SELECT p.order_id FROM payments p WHERE p.status = 'paid' \
         AND NOT EXISTS (SELECT 1 FROM tickets t WHERE t.order_id = p.order_id) ORDER BY p.updated_at LIMIT 200",
    )
    .fetch_all(&s.db.pool)
    .await
    .context("finding orders without tickets")?;
    for r in rows {
        issue(s, &r.get::<String, _>(0)).await?;
    }
    Ok(())
}

/// Issues queued tickets until shutdown; `consumer` names this instance in the group.
pub async fn worker(s: AppState, consumer: String, mut shutdown: watch::Receiver<bool>) {
    let mut last_sweep = tokio::time::Instant::now() - Duration::from_secs(3600);
    loop {
        if *shutdown.borrow() {
            return;
        }
        if last_sweep.elapsed() >= Duration::from_secs(30) {
            last_sweep = tokio::time::Instant::now();
            if let Err(e) = sweep(&s).await {
                tracing::warn!(error = %e, "ticket sweep failed");
            }
            claim(&s, &consumer).await;
        }
        let worked = match drain(&s, &consumer).await {
            Ok(n) => n > 0,
            Err(e) => {
                tracing::warn!(error = %e, "issuing tickets failed; retrying");
                false
            }
        };
        if !worked {
            tokio::select! {
                _ = s.tickets.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Takes what is queued now; returns how many orders it handled.
async fn drain(s: &AppState, consumer: &str) -> Result<usize, ApiError> {
    match &s.tickets.inner {
        Inner::Memory(_, rx) => {
            let mut rx = rx.lock().await;
            let mut n = 0;
            while let Ok(order) = rx.try_recv() {
                issue(s, &order).await?;
                n += 1;
            }
            Ok(n)
        }
        Inner::Redis(c) => {
            let read: redis::RedisResult<Option<StreamReadReply>> = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(GROUP)
                .arg(consumer)
                .arg("COUNT")
                .arg(20)
                .arg("STREAMS")
                .arg(STREAM)
                .arg(">")
                .query_async(&mut c.clone())
                .await;
            if let Err(e) = &read
                && e.code() == Some("NOGROUP")
            {
                tracing::warn!("the ticket queue's group is gone (Redis lost its data): creating it again");
                create_group(c).await.context("creating the ticket queue again")?;
                return Ok(0);
            }
            let reply = read.context("reading the ticket queue")?;
            let entries: Vec<_> = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids).collect();
            for e in &entries {
                handle_entry(s, c, &e.id, e.get::<String>("order")).await?;
            }
            Ok(entries.len())
        }
    }
}

async fn handle_entry(
    s: &AppState,
    c: &redis::aio::ConnectionManager,
    id: &str,
    order: Option<String>,
) -> Result<(), ApiError> {
    if let Some(order) = order {
        issue(s, &order).await?;
    }
    // Acknowledged only once the tickets are in the database.
    let _: i64 = redis::cmd("XACK")
        .arg(STREAM)
        .arg(GROUP)
        .arg(id)
        .query_async(&mut c.clone())
        .await
        .context("acknowledging")?;
    let _: i64 = redis::cmd("XDEL")
        .arg(STREAM)
        .arg(id)
        .query_async(&mut c.clone())
        .await
        .context("trimming the queue")?;
    Ok(())
}

/// Takes over entries another instance left unacknowledged for a minute.
async fn claim(s: &AppState, consumer: &str) {
    let Inner::Redis(c) = &s.tickets.inner else { return };
    let reply: redis::RedisResult<StreamAutoClaimReply> = redis::cmd("XAUTOCLAIM")
        .arg(STREAM)
        .arg(GROUP)
        .arg(consumer)
        .arg(60_000)
        .arg("0-0")
        .arg("COUNT")
        .arg(50)
        .query_async(&mut c.clone())
        .await;
    match reply {
        Ok(r) => {
            for e in r.claimed {
                if let Err(err) = handle_entry(s, c, &e.id, e.get::<String>("order")).await {
                    tracing::warn!(error = %err, "issuing claimed tickets failed");
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "claiming ticket entries failed"),
    }
}

/// `GET /api/v1/me/tickets`: the caller's valid tickets, newest first (a refund revokes a
/// ticket, and a revoked ticket is no longer the caller's).
pub async fn mine(State(s): State<AppState>, user: CurrentUser) -> Result<Response, ApiError> {
    let rows = sqlx::query(
        "SELECT id, order_id, reservation_id, seat_id, issued_at FROM tickets WHERE user_id = $1 AND status = 'valid' ORDER BY issued_at DESC, id LIMIT 500",
    )
    .bind(user.id)
    .fetch_all(&s.db.pool)
    .await
    .context("listing tickets")?;
    let items: Vec<_> = rows
        .iter()
        .map(|r| {
            json!({"ticket_id": r.get::<String, _>(0), "order_id": r.get::<String, _>(1), "reservation_id": r.get::<String, _>(2),
                "seat_id": r.get::<i64, _>(3), "issued_at": rfc3339(r.get(4)), "status": "valid"})
        })
        .collect();
    Ok(Json(json!({ "items": items })).into_response())
}
