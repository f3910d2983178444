//! Test and benchmark support (feature `testkit`): rows written straight to the database, in
//! bulk, for the settlement and job tests and the booking bench (which all need the same
//! shape of data and none of the API's checks).

use sqlx::AnyPool;

/// One day, ms.
pub const DAY_MS: i64 = 86_400_000;
/// The day seeded payments are paid on: 2024-10-04 UTC, Unix ms.
pub const SEED_DAY: i64 = 20_000 * DAY_MS;

/// A user (password hash `x`, role `user`); returns its id.
pub async fn user(pool: &AnyPool, email: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO users (email, name, password_hash, role, created_at) VALUES ($1, 'S', 'x', 'user', 0) RETURNING id",
    )
    .bind(email)
    .fetch_one(pool)
    .await
}

/// A venue, a concert of `host` titled `title` in 1970, and one round of it; returns
/// `(concert, schedule)`.
pub async fn round(pool: &AnyPool, host: &str, title: &str) -> Result<(i64, i64), sqlx::Error> {
    let venue: i64 = sqlx::query_scalar(
        "INSERT INTO venues (name, address, created_at) VALUES ('V', 'A', 0) RETURNING id",
    )
    .fetch_one(pool)
    .await?;
    let concert: i64 = sqlx::query_scalar(
        "INSERT INTO concerts (title, artists, category, description, starts_on, ends_on, venue_id, host, created_at, updated_at) \
         VALUES ($1, '[]', 'concert', '', 0, 1, $2, $3, 0, 0) RETURNING id",
    )
    .bind(title)
    .bind(venue)
    .bind(host)
    .fetch_one(pool)
    .await?;
    let schedule: i64 = sqlx::query_scalar(
        "INSERT INTO schedules (concert_id, starts_at, created_at) VALUES ($1, 0, 0) RETURNING id",
    )
    .bind(concert)
    .fetch_one(pool)
    .await?;
    Ok((concert, schedule))
}

/// What [`seed_payments`] writes.
#[derive(Clone, Copy, Debug)]
pub struct PaymentsSeed {
    /// Paid reservations, each with its paid payment.
    pub payments: usize,
    /// Rounds they are spread over, round-robin.
    pub rounds: usize,
    /// Hosts the rounds' concerts belong to, round-robin.
    pub hosts: usize,
    /// Payment `i` is paid on [`SEED_DAY`] when `i % 100` is below this, else the day after.
    pub on_day_percent: usize,
}

/// The amount of seeded payment `i`, KRW.
pub fn amount(i: usize) -> i64 {
    1_000 + ((i as i64 * 7_919) % 200) * 1_000
}

/// One user, `rounds` rounds and `payments` paid reservations with their payments, in bulk
/// inserts of 500 rows inside one transaction.
pub async fn seed_payments(pool: &AnyPool, seed: PaymentsSeed) -> Result<(), sqlx::Error> {
    let user = user(pool, "seed@example.com").await?;
    let mut rounds = Vec::with_capacity(seed.rounds);
    for r in 0..seed.rounds {
        rounds.push(round(pool, &format!("host-{}", r % seed.hosts), "C").await?.1);
    }
    let mut tx = pool.begin().await?;
    for chunk in (0..seed.payments).collect::<Vec<_>>().chunks(500) {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO reservations (id, user_id, schedule_id, amount, status, expires_at, created_at, updated_at) VALUES {}",
            placeholders(chunk.len(), 4, "'paid', 0, 0, 0")
        )));
        for &i in chunk {
            q = q.bind(format!("r{i:024x}")).bind(user).bind(rounds[i % seed.rounds]).bind(amount(i));
        }
        q.execute(&mut *tx).await?;
        let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO payments (order_id, reservation_id, user_id, amount, paid_at, updated_at, status, step, attempts, created_at) VALUES {}",
            placeholders(chunk.len(), 6, "'paid', 'done', 0, 0")
        )));
        for &i in chunk {
            let day = if i % 100 < seed.on_day_percent { SEED_DAY } else { SEED_DAY + DAY_MS };
            let paid_at = day + (i as i64 * 997) % DAY_MS;
            q = q
                .bind(format!("o{i:024x}"))
                .bind(format!("r{i:024x}"))
                .bind(user)
                .bind(amount(i))
                .bind(paid_at)
                .bind(paid_at);
        }
        q.execute(&mut *tx).await?;
    }
    tx.commit().await
}

/// `($1, …, $n, fixed), (…)` for `rows` rows of `n` bound values each.
fn placeholders(rows: usize, n: usize, fixed: &str) -> String {
    (0..rows)
        .map(|r| {
            let vals: Vec<String> = (1..=n).map(|k| format!("${}", r * n + k)).collect();
            format!("({}, {fixed})", vals.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}
