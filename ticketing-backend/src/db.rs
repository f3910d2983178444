//! The database: one portable SQL code path over sqlx's `Any` driver (PostgreSQL in
//! production, SQLite embedded), `$N` placeholders everywhere, times as Unix ms and money as
//! minor units in BIGINT. Migrations are embedded per dialect (only DDL differs) and applied
//! in order at start, each in its own transaction.

use sqlx::AnyPool;
use sqlx::any::{AnyPoolOptions, install_default_drivers};

/// Which SQL dialect a URL speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// `postgres://`
    Postgres,
    /// `sqlite:`
    Sqlite,
}

impl Dialect {
    /// The dialect of a database URL.
    pub fn of(url: &str) -> Option<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Dialect::Postgres)
        } else if url.starts_with("sqlite:") {
            Some(Dialect::Sqlite)
        } else {
            None
        }
    }
}

/// One version. A migration both dialects read alike lives once under `migrations/shared/`;
/// the others have a file per dialect.
struct Migration {
    version: i64,
    name: &'static str,
    sqlite: &'static str,
    postgres: &'static str,
}

impl Migration {
    const fn shared(version: i64, name: &'static str, sql: &'static str) -> Self {
        Migration { version, name, sqlite: sql, postgres: sql }
    }
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "users",
        sqlite: include_str!("../migrations/sqlite/0001_users.sql"),
        postgres: include_str!("../migrations/postgres/0001_users.sql"),
    },
    Migration {
        version: 2,
        name: "catalog",
        sqlite: include_str!("../migrations/sqlite/0002_catalog.sql"),
        postgres: include_str!("../migrations/postgres/0002_catalog.sql"),
    },
    Migration::shared(3, "booking", include_str!("../migrations/shared/0003_booking.sql")),
    Migration {
        version: 4,
        name: "coupons",
        sqlite: include_str!("../migrations/sqlite/0004_coupons.sql"),
        postgres: include_str!("../migrations/postgres/0004_coupons.sql"),
    },
    Migration::shared(5, "payments", include_str!("../migrations/shared/0005_payments.sql")),
    Migration::shared(6, "tickets", include_str!("../migrations/shared/0006_tickets.sql")),
    Migration::shared(7, "jobs", include_str!("../migrations/shared/0007_jobs.sql")),
    Migration {
        version: 8,
        name: "integrity",
        sqlite: include_str!("../migrations/sqlite/0008_integrity.sql"),
        postgres: include_str!("../migrations/postgres/0008_integrity.sql"),
    },
    Migration::shared(9, "limits", include_str!("../migrations/shared/0009_limits.sql")),
];

/// The advisory lock PostgreSQL instances take turns migrating under.
const MIGRATION_LOCK: i64 = 0x7462_6d69_6772;

/// A connected, migrated database.
#[derive(Clone, Debug)]
pub struct Db {
    /// The pool.
    pub pool: AnyPool,
    /// Its dialect.
    pub dialect: Dialect,
}

impl Db {
    /// Connects and applies pending migrations.
    pub async fn connect(url: &str) -> Result<Self, sqlx::Error> {
        install_default_drivers();
        let dialect =
            Dialect::of(url).ok_or_else(|| sqlx::Error::Configuration("unsupported database URL".into()))?;
        let max = if dialect == Dialect::Sqlite { 4 } else { 16 };
        let pool = AnyPoolOptions::new().max_connections(max).connect(url).await?;
        if dialect == Dialect::Sqlite {
            // Readers do not block the writer; writers wait instead of failing at once.
            sqlx::query("PRAGMA journal_mode = WAL").execute(&pool).await?;
            sqlx::query("PRAGMA busy_timeout = 5000").execute(&pool).await?;
        }
        let db = Db { pool, dialect };
        db.migrate().await?;
        Ok(db)
    }

    /// Applies pending migrations. Instances starting together on one database take turns
    /// (a PostgreSQL advisory lock; SQLite's single writer, and a migration another process
    /// applied meanwhile is skipped rather than failed).
    async fn migrate(&self) -> Result<(), sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        if self.dialect == Dialect::Postgres {
            sqlx::query("SELECT pg_advisory_lock($1)").bind(MIGRATION_LOCK).execute(&mut *conn).await?;
        }
        let result = self.migrate_on(&mut conn).await;
        if self.dialect == Dialect::Postgres {
            sqlx::query("SELECT pg_advisory_unlock($1)").bind(MIGRATION_LOCK).execute(&mut *conn).await?;
        }
        result
    }

    async fn migrate_on(&self, conn: &mut sqlx::AnyConnection) -> Result<(), sqlx::Error> {
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)")
            .execute(&mut *conn)
            .await?;
        for m in MIGRATIONS {
            if Self::applied(conn, m.version).await? {
                continue;
            }
            let sql = match self.dialect {
                Dialect::Sqlite => m.sqlite,
                Dialect::Postgres => m.postgres,
            };
            if let Err(e) = Self::apply(conn, m, sql).await {
                if Self::applied(conn, m.version).await? {
                    continue;
                }
                return Err(e);
            }
            tracing::info!(version = m.version, name = m.name, "migration applied");
        }
        Ok(())
    }

    async fn applied(conn: &mut sqlx::AnyConnection, version: i64) -> Result<bool, sqlx::Error> {
        let row = sqlx::query("SELECT 1 FROM schema_migrations WHERE version = $1")
            .bind(version)
            .fetch_optional(&mut *conn)
            .await?;
        Ok(row.is_some())
    }

    async fn apply(conn: &mut sqlx::AnyConnection, m: &Migration, sql: &str) -> Result<(), sqlx::Error> {
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        for stmt in statements(sql) {
            sqlx::query(sqlx::AssertSqlSafe(stmt)).execute(&mut *tx).await?;
        }
        sqlx::query("INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)")
            .bind(m.version)
            .bind(m.name)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }

    /// Fails when the database does not answer (readiness).
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map(|_| ())
    }
}

/// The statements of a migration: split at `;`, except inside a PostgreSQL `$$` body or a
/// SQLite trigger's `BEGIN … END`, with `--` comment lines dropped.
fn statements(sql: &str) -> Vec<String> {
    let text: String =
        sql.lines().filter(|l| !l.trim_start().starts_with("--")).map(|l| format!("{l}\n")).collect();
    let mut out = Vec::new();
    let mut cur = String::new();
    for piece in text.split(';') {
        if !cur.is_empty() {
            cur.push(';');
        }
        cur.push_str(piece);
        let upper = cur.to_ascii_uppercase();
        let in_body = cur.matches("$$").count() % 2 == 1
            || (upper.contains("CREATE TRIGGER")
                && upper.contains("BEGIN")
                && !upper.trim_end().ends_with("END"));
        if !in_body {
            if !cur.trim().is_empty() {
                out.push(cur.trim().to_owned());
            }
            cur.clear();
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_owned());
    }
    out
}

/// Unix time in ms.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::statements;

    #[test]
    fn bodies_stay_whole() {
        let sql = "-- a comment; with a semicolon\nCREATE TABLE a (x INT);\n\
                   CREATE TRIGGER t BEFORE INSERT ON a BEGIN SELECT RAISE(ABORT, 'no'); END;\n\
                   CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;\n\
                   CREATE INDEX i ON a (x)";
        let got = statements(sql);
        assert_eq!(got.len(), 4, "{got:#?}");
        assert!(got[1].ends_with("END") && got[1].contains("RAISE(ABORT, 'no');"));
        assert!(got[2].ends_with("$$") && got[2].contains("RETURN NEW;"));
        assert_eq!(got[3], "CREATE INDEX i ON a (x)");
    }
}
