//! Batch jobs: expire unpaid holds, expire coupons, settle a day's payments per host, clean up
//! old performances, reconcile the provider's ledger ([`crate::reconcile`], on its own timer). Each runs as a CLI subcommand (`ticketing-backend jobs <name>`) and on
//! the in-process scheduler; each is idempotent and takes a lease (`job_leases`) so that any
//! number of instances can run it at once and one does the work.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use sqlx::Row;
use tokio::sync::watch;

use crate::db::now_ms;
use crate::error::{ApiError, Context};
use crate::state::AppState;

type Result<T, E = ApiError> = std::result::Result<T, E>;

const DAY_MS: i64 = 86_400_000;
/// Payments read per page while settling (keyset pagination on `(paid_at, order_id)`).
pub const SETTLE_PAGE: i64 = 5_000;
/// Settlement rows written per statement.
const INSERT_CHUNK: usize = 500;
/// Performances are cleaned up this long after they ended.
pub const RETENTION_MS: i64 = 180 * DAY_MS;

/// What a job run did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// This instance did the work.
    Done {
        /// Rows changed (or payments settled).
        count: u64,
    },
    /// A reconciliation ran: what it found and repaired.
    Reconciled(crate::reconcile::Report),
    /// Another instance holds the lease, or the work was already done.
    Skipped {
        /// Why.
        reason: String,
    },
}

/// Takes the lease `name` for `ttl`, or `false` if another holder has it.
pub async fn lease(s: &AppState, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
    let now = now_ms();
    let until = now + ttl.as_millis() as i64;
    let taken = sqlx::query(
        "UPDATE job_leases SET holder = $1, until_ms = $2 WHERE name = $3 AND (until_ms < $4 OR holder = $1)",
    )
    .bind(holder)
    .bind(until)
    .bind(name)
    .bind(now)
    .execute(&s.db.pool)
    .await
    .context("taking a job lease")?;
    if taken.rows_affected() == 1 {
        return Ok(true);
    }
    match sqlx::query("INSERT INTO job_leases (name, holder, until_ms) VALUES ($1, $2, $3)")
        .bind(name)
        .bind(holder)
        .bind(until)
        .execute(&s.db.pool)
        .await
    {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
        Err(e) => Err(e).context("creating a job lease"),
    }
}

async fn release(s: &AppState, name: &str, holder: &str) {
    let r = sqlx::query("UPDATE job_leases SET until_ms = 0 WHERE name = $1 AND holder = $2")
        .bind(name)
        .bind(holder)
        .execute(&s.db.pool)
        .await;
    if let Err(e) = r {
        tracing::warn!(error = %e, job = name, "releasing a lease failed; it expires");
    }
}

async fn leased<F, Fut>(s: &AppState, name: &str, holder: &str, work: F) -> Result<Outcome>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Outcome>>,
{
    if !lease(s, name, holder, Duration::from_secs(600)).await? {
        return Ok(Outcome::Skipped { reason: format!("another instance holds the {name} lease") });
    }
    let out = work().await;
    release(s, name, holder).await;
    out
}

/// Expires holds past their time: reservations `expired`, their seats freed, their unpaid
/// orders closed, the hold maps swept.
pub async fn expire_holds(s: &AppState, holder: &str) -> Result<Outcome> {
    leased(s, "expire-holds", holder, || async {
        let now = now_ms();
        let rows = sqlx::query("SELECT id, schedule_id FROM reservations WHERE status = 'held' AND expires_at <= $1 LIMIT 10000")
            .bind(now)
            .fetch_all(&s.db.pool)
            .await
            .context("finding expired holds")?;
        let mut schedules = std::collections::BTreeSet::new();
        for r in &rows {
            let id: String = r.get(0);
            schedules.insert(r.get::<i64, _>(1));
            let mut tx = s.db.pool.begin().await.context("expiring a hold")?;
            let expired = sqlx::query("UPDATE reservations SET status = 'expired', updated_at = $1 WHERE id = $2 AND status = 'held'")
                .bind(now)
                .bind(&id)
                .execute(&mut *tx)
                .await
                .context("expiring a reservation")?;
            if expired.rows_affected() == 0 {
                // Paid or cancelled meanwhile: its seats are not this job's to free.
                continue;
            }
            sqlx::query("UPDATE reservation_seats SET active = 0 WHERE reservation_id = $1")
                .bind(&id)
                .execute(&mut *tx)
                .await
                .context("freeing expired seats")?;
            sqlx::query("UPDATE payments SET status = 'failed', step = 'compensated', last_error = 'hold expired', updated_at = $1 WHERE reservation_id = $2 AND status = 'ready'")
                .bind(now)
                .bind(&id)
                .execute(&mut *tx)
                .await
                .context("closing orders of an expired hold")?;
            tx.commit().await.context("committing an expiry")?;
        }
        for schedule in schedules {
            s.holds.sweep(schedule).await.context("sweeping holds")?;
        }
        // The rows that serialised a buyer's holds are needed only while they are made, and
        // idempotency keys are kept a day.
        for sql in ["DELETE FROM limit_locks WHERE touched_at < $1", "DELETE FROM idempotency WHERE created_at < $1"] {
            sqlx::query(sql).bind(now - DAY_MS).execute(&s.db.pool).await.context("forgetting old rows")?;
        }
        free_cancelled_holds(s, now).await?;
        Ok(Outcome::Done { count: rows.len() as u64 })
    })
    .await
}

/// Frees the hold map's entries of reservations cancelled in the last five minutes (by their
/// buyer, a compensation or a refund): each frees them right after its commit, and this
/// catches a store error or a crash in between, which would otherwise leave a seat shown held
/// until its hold ends, or shown sold and never sold again. (Idempotent: only entries those
/// reservations own are removed.)
async fn free_cancelled_holds(s: &AppState, now: i64) -> Result<()> {
    // One read for every reservation and its seats (not one per reservation, every minute).
    let rows = sqlx::query(
        "SELECT r.id, r.schedule_id, rs.seat_id FROM reservations r JOIN reservation_seats rs ON rs.reservation_id = r.id \
         WHERE r.status = 'cancelled' AND r.updated_at > $1 ORDER BY r.id LIMIT 100000",
    )
    .bind(now - 5 * 60_000)
    .fetch_all(&s.db.pool)
    .await
    .context("finding cancelled holds")?;
    let mut owned: BTreeMap<(String, i64), Vec<i64>> = BTreeMap::new();
    for r in &rows {
        owned.entry((r.get(0), r.get(1))).or_default().push(r.get(2));
    }
    for ((id, schedule), seats) in owned {
        s.holds.free(schedule, &seats, &id).await.context("freeing cancelled holds")?;
    }
    Ok(())
}

/// Marks issued coupons of ended campaigns `expired`.
pub async fn expire_coupons(s: &AppState, holder: &str) -> Result<Outcome> {
    leased(s, "expire-coupons", holder, || async {
        let r = sqlx::query(
            "UPDATE coupons SET status = 'expired' WHERE status = 'issued' \
             AND campaign_id IN (SELECT id FROM coupon_campaigns WHERE valid_until <= $1)",
        )
        .bind(now_ms())
        .execute(&s.db.pool)
        .await
        .context("expiring coupons")?;
        Ok(Outcome::Done { count: r.rows_affected() })
    })
    .await
}

/// Settles the UTC day starting at `day_ms`: paid payments per host, read page by page
/// (keyset on `(paid_at, order_id)`), written in bulk, once per day (`settlement_runs`).
pub async fn settle(s: &AppState, holder: &str, day_ms: i64) -> Result<Outcome> {
    let day = day_ms - day_ms.rem_euclid(DAY_MS);
    leased(s, &format!("settle-{day}"), holder, || async {
        let done = sqlx::query("SELECT payments FROM settlement_runs WHERE day = $1")
            .bind(day)
            .fetch_optional(&s.db.pool)
            .await
            .context("checking a settlement")?;
        if done.is_some() {
            return Ok(Outcome::Skipped { reason: "this day is settled".into() });
        }
        let totals = day_totals(s, day).await?;
        let count: i64 = totals.values().map(|t| t.0).sum();
        let mut tx = s.db.pool.begin().await.context("starting a settlement")?;
        let rows: Vec<_> = totals.into_iter().collect();
        let now = now_ms();
        for chunk in rows.chunks(INSERT_CHUNK) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| {
                    format!(
                        "(${}, ${}, ${}, ${}, ${})",
                        i * 5 + 1,
                        i * 5 + 2,
                        i * 5 + 3,
                        i * 5 + 4,
                        i * 5 + 5
                    )
                })
                .collect();
            let sql = format!(
                "INSERT INTO settlements (host, day, payments, gross, created_at) VALUES {}",
                values.join(", ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (host, (n, gross)) in chunk {
                q = q.bind(host.clone()).bind(day).bind(*n).bind(*gross).bind(now);
            }
            q.execute(&mut *tx).await.context("writing settlements")?;
        }
        sqlx::query(
            "INSERT INTO settlement_runs (day, payments, settled_by, completed_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(day)
        .bind(count)
        .bind(holder)
        .bind(now)
        .execute(&mut *tx)
        .await
        .context("recording a settlement")?;
        tx.commit().await.context("committing a settlement")?;
        s.notifier.ops(format!("settled {count} payments of day {day}"));
        Ok(Outcome::Done { count: count as u64 })
    })
    .await
}

/// `(payments, gross)` per host for one day, reading a page at a time.
async fn day_totals(s: &AppState, day: i64) -> Result<BTreeMap<String, (i64, i64)>> {
    let mut totals: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let (mut after_at, mut after_id) = (day - 1, String::new());
    loop {
        let page = sqlx::query(
            "SELECT p.paid_at, p.order_id, p.amount, c.host FROM payments p \
             JOIN reservations r ON r.id = p.reservation_id JOIN schedules sc ON sc.id = r.schedule_id \
             JOIN concerts c ON c.id = sc.concert_id \
             WHERE p.status = 'paid' AND p.paid_at >= $1 AND p.paid_at < $2 \
             AND (p.paid_at > $3 OR (p.paid_at = $3 AND p.order_id > $4)) \
             ORDER BY p.paid_at, p.order_id LIMIT $5",
        )
        .bind(day)
        .bind(day + DAY_MS)
        .bind(after_at)
        .bind(&after_id)
        .bind(SETTLE_PAGE)
        .fetch_all(&s.db.pool)
        .await
        .context("reading payments to settle")?;
        for r in &page {
            let t = totals.entry(r.get::<String, _>(3)).or_default();
            t.0 += 1;
            t.1 += r.get::<i64, _>(2);
        }
        match page.last() {
            Some(last) if page.len() as i64 == SETTLE_PAGE => {
                after_at = last.get(0);
                after_id = last.get(1);
            }
            _ => return Ok(totals),
        }
    }
}

/// Soft-deletes concerts that ended more than [`RETENTION_MS`] ago: gone from lists and
/// search; their seat-hold maps dropped.
pub async fn cleanup_performances(s: &AppState, holder: &str) -> Result<Outcome> {
    leased(s, "cleanup-performances", holder, || async {
        let now = now_ms();
        let rows =
            sqlx::query("SELECT id FROM concerts WHERE deleted_at IS NULL AND ends_on < $1 LIMIT 10000")
                .bind(now - RETENTION_MS)
                .fetch_all(&s.db.pool)
                .await
                .context("finding old performances")?;
        for r in &rows {
            let id: i64 = r.get(0);
            sqlx::query(
                "UPDATE concerts SET deleted_at = $1, updated_at = $1 WHERE id = $2 AND deleted_at IS NULL",
            )
            .bind(now)
            .bind(id)
            .execute(&s.db.pool)
            .await
            .context("retiring a concert")?;
            s.search.remove("concert", id)?;
            s.cache.invalidate(Some(id)).await;
            let schedules = sqlx::query("SELECT id FROM schedules WHERE concert_id = $1")
                .bind(id)
                .fetch_all(&s.db.pool)
                .await
                .context("listing a concert's schedules")?;
            for sc in schedules {
                s.holds.sweep(sc.get(0)).await.context("sweeping holds")?;
            }
        }
        Ok(Outcome::Done { count: rows.len() as u64 })
    })
    .await
}

/// Reconciles the provider's ledger with the database ([`crate::reconcile`]), sparing
/// orders younger than `grace`.
pub async fn reconcile(s: &AppState, holder: &str, grace: Duration) -> Result<Outcome> {
    leased(s, "reconcile", holder, || async {
        Ok(Outcome::Reconciled(crate::reconcile::run(s, grace.as_millis() as i64).await?))
    })
    .await
}

/// Runs a job by name (the CLI); `day` is for `settle` (default: yesterday, UTC).
pub async fn run_named(s: &AppState, name: &str, holder: &str, day: Option<i64>) -> Result<Outcome> {
    match name {
        "expire-holds" => expire_holds(s, holder).await,
        "expire-coupons" => expire_coupons(s, holder).await,
        "settle" => settle(s, holder, day.unwrap_or_else(|| now_ms() - DAY_MS)).await,
        "cleanup-performances" => cleanup_performances(s, holder).await,
        "reconcile" => reconcile(s, holder, s.reconcile_grace).await,
        other => Err(ApiError::invalid("job", format!("unknown job {other:?}"))),
    }
}

/// The job names.
pub const JOBS: [&str; 5] = ["expire-holds", "expire-coupons", "settle", "cleanup-performances", "reconcile"];

/// The in-process scheduler: hold expiry every minute, coupon expiry every 10 minutes, and
/// yesterday's settlement plus the cleanup every hour (each a no-op once done).
pub async fn scheduler(s: AppState, holder: String, mut shutdown: watch::Receiver<bool>) {
    let mut minute = 0u64;
    loop {
        let mut run = vec!["expire-holds"];
        if minute.is_multiple_of(10) {
            run.push("expire-coupons");
        }
        if minute.is_multiple_of(60) {
            run.extend(["settle", "cleanup-performances"]);
        }
        for job in run {
            match run_named(&s, job, &holder, None).await {
                Ok(Outcome::Done { count }) if count > 0 => tracing::info!(job, count, "job done"),
                Ok(_) => {}
                Err(e) => tracing::warn!(job, error = %e, "job failed"),
            }
        }
        minute += 1;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            _ = shutdown.changed() => return,
        }
    }
}
