//! Batch jobs on SQLite and PostgreSQL: settlement of 100,000 payments equals a direct SQL sum
//! and two instances running it at once settle once; hold and coupon expiry; cleanup; the CLI.

mod common;

use std::time::Duration;

use common::{PgDb, sqlite_url};
use sqlx::Row;
use ticketing_backend::config::BackendConfig;
use ticketing_backend::jobs::{self, Outcome};
use ticketing_backend::state::AppState;
use ticketing_backend::testkit::{self, PaymentsSeed};

const DAY: i64 = testkit::DAY_MS;
const D: i64 = testkit::SEED_DAY;

async fn state(url: String, tweak: impl FnOnce(&mut BackendConfig)) -> AppState {
    let mut cfg = BackendConfig { database_url: Some(url), demo_data: false, ..BackendConfig::default() };
    tweak(&mut cfg);
    ticketing_backend::build(&cfg).await.unwrap()
}

async fn settlement(url: String) {
    let s = state(url, |_| {}).await;
    // 4 hosts with a round each; 70 % paid on day D, the rest the day after.
    let seed = PaymentsSeed { payments: 100_000, rounds: 4, hosts: 4, on_day_percent: 70 };
    testkit::seed_payments(&s.db.pool, seed).await.unwrap();
    // Two instances at once: one settles, the other stands aside.
    let (a, b) = tokio::join!(
        jobs::settle(&s, "instance-a", D + 3_600_000),
        jobs::settle(&s, "instance-b", D + 7_200_000)
    );
    let outcomes = [a.unwrap(), b.unwrap()];
    let done: Vec<_> = outcomes.iter().filter(|o| matches!(o, Outcome::Done { .. })).collect();
    assert_eq!(done.len(), 1, "{outcomes:?}");
    assert_eq!(*done[0], Outcome::Done { count: 70_000 });
    assert!(
        matches!(jobs::settle(&s, "instance-c", D).await.unwrap(), Outcome::Skipped { .. }),
        "settled once"
    );
    let expected = sqlx::query(
        "SELECT c.host, COUNT(*), CAST(SUM(p.amount) AS BIGINT) FROM payments p JOIN reservations r ON r.id = p.reservation_id \
         JOIN schedules sc ON sc.id = r.schedule_id JOIN concerts c ON c.id = sc.concert_id \
         WHERE p.status = 'paid' AND p.paid_at >= $1 AND p.paid_at < $2 GROUP BY c.host ORDER BY c.host",
    )
    .bind(D)
    .bind(D + DAY)
    .fetch_all(&s.db.pool)
    .await
    .unwrap();
    let got = sqlx::query("SELECT host, payments, gross FROM settlements WHERE day = $1 ORDER BY host")
        .bind(D)
        .fetch_all(&s.db.pool)
        .await
        .unwrap();
    assert_eq!(got.len(), 4);
    for (e, g) in expected.iter().zip(&got) {
        assert_eq!(e.get::<String, _>(0), g.get::<String, _>(0));
        assert_eq!(e.get::<i64, _>(1), g.get::<i64, _>(1));
        assert_eq!(e.get::<i64, _>(2), g.get::<i64, _>(2), "totals equal the direct SQL sum");
    }
    let runs: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM settlement_runs").fetch_one(&s.db.pool).await.unwrap();
    assert_eq!(runs, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_settlement() {
    settlement(sqlite_url()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_settlement() {
    let (_db, url) = PgDb::create().await;
    settlement(url).await
}

async fn expiry_and_cleanup(url: String) {
    let s = state(url, |c| c.hold_ttl_s = 1).await;
    let pool = &s.db.pool;
    let user = testkit::user(pool, "e@x").await.unwrap();
    let (old, sc) = testkit::round(pool, "h", "Old").await.unwrap();
    let now = ticketing_backend::db::now_ms();
    sqlx::query("INSERT INTO reservations (id, user_id, schedule_id, amount, status, expires_at, created_at, updated_at) VALUES ('r000000000000000000000001', $1, $2, 1, 'held', $3, 0, 0)")
        .bind(user)
        .bind(sc)
        .bind(now - 1)
        .execute(pool)
        .await
        .unwrap();
    let campaign: i64 = sqlx::query_scalar(
        "INSERT INTO coupon_campaigns (name, discount_kind, discount, stock, valid_from, valid_until, created_at) VALUES ('K', 'amount', 1, 1, 0, $1, 0) RETURNING id",
    )
    .bind(now - 1)
    .fetch_one(pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO coupons (id, campaign_id, user_id, status, issued_at) VALUES ('c1', $1, $2, 'issued', 0)")
        .bind(campaign)
        .bind(user)
        .execute(pool)
        .await
        .unwrap();
    assert_eq!(jobs::expire_holds(&s, "x").await.unwrap(), Outcome::Done { count: 1 });
    assert_eq!(jobs::expire_holds(&s, "x").await.unwrap(), Outcome::Done { count: 0 }, "idempotent");
    let st: String = sqlx::query_scalar("SELECT status FROM reservations").fetch_one(pool).await.unwrap();
    assert_eq!(st, "expired");
    assert_eq!(jobs::expire_coupons(&s, "x").await.unwrap(), Outcome::Done { count: 1 });
    assert_eq!(jobs::expire_coupons(&s, "x").await.unwrap(), Outcome::Done { count: 0 });
    assert_eq!(jobs::cleanup_performances(&s, "x").await.unwrap(), Outcome::Done { count: 1 });
    assert_eq!(jobs::cleanup_performances(&s, "x").await.unwrap(), Outcome::Done { count: 0 });
    let gone: Option<i64> = sqlx::query_scalar("SELECT deleted_at FROM concerts WHERE id = $1")
        .bind(old)
        .fetch_one(pool)
        .await
        .unwrap();
    assert!(gone.is_some());
    // A lease held by someone else makes a run stand aside.
    assert!(jobs::lease(&s, "expire-holds", "other", Duration::from_secs(60)).await.unwrap());
    assert!(matches!(jobs::expire_holds(&s, "x").await.unwrap(), Outcome::Skipped { .. }));
}

#[tokio::test]
async fn sqlite_expiry_and_cleanup() {
    expiry_and_cleanup(sqlite_url()).await
}

#[tokio::test]
async fn postgres_expiry_and_cleanup() {
    let (_db, url) = PgDb::create().await;
    expiry_and_cleanup(url).await
}

#[test]
fn the_cli_runs_a_job_and_refuses_unknown_ones() {
    let url = sqlite_url();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ticketing-backend"))
            .args(args)
            .env("TB_DATABASE_URL", &url)
            .env("RUST_LOG", "error")
            .output()
            .unwrap()
    };
    let out = run(&["jobs", "settle", "--day", "2024-10-04"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), r#"{"outcome":"done","count":0}"#);
    let again = run(&["jobs", "settle", "--day", "2024-10-04"]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("skipped"));
    assert_eq!(run(&["jobs", "bogus"]).status.code(), Some(2));
    assert_eq!(run(&["jobs", "settle", "--day", "yesterday"]).status.code(), Some(2));
    assert_eq!(run(&["nope"]).status.code(), Some(2));
}

/// `ticketing-backend reindex` asks a running instance to rebuild its index, as the admin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reindex_command_rebuilds_a_running_instances_index() {
    let cfg = BackendConfig {
        database_url: Some(sqlite_url()),
        admin_email: Some("admin@example.com".into()),
        admin_password: Some("admin-password-123".into()),
        jwt_secret: Some("reindex-test-secret-0123456789abcdef".into()),
        demo_data: false,
        ..BackendConfig::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(ticketing_backend::run(listener, cfg, std::future::pending()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let run = |password: &'static str| {
        let url = format!("http://{addr}");
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_ticketing-backend"))
                .args(["reindex", "--url", &url])
                .env("TB_ADMIN_EMAIL", "admin@example.com")
                .env("TB_ADMIN_PASSWORD", password)
                .env("RUST_LOG", "error")
                .output()
                .unwrap()
        })
    };
    let out = run("admin-password-123").await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"indexed\""));
    let out = run("wrong-password-000").await.unwrap();
    assert!(!out.status.success(), "a wrong password fails");
}

/// `ticketing-backend seed-demo` loads the demo catalog into an empty PostgreSQL database
/// (the production layout's load tests start from it), once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_demo_command_loads_postgres_once() {
    let (_db, url) = PgDb::create().await;
    let run = || {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_ticketing-backend"))
                .arg("seed-demo")
                .env("TB_DATABASE_URL", url)
                .env("TB_DATA_DIR", std::env::temp_dir().join(format!("tb-seed-{}", std::process::id())))
                .env("RUST_LOG", "error")
                .output()
                .unwrap()
        })
    };
    let out = run().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "demo catalog loaded");
    let again = run().await.unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing loaded"));
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move { sqlx::query(sql).fetch_one(&pool).await.unwrap().get::<i64, _>(0) }
    };
    assert_eq!(count("SELECT COUNT(*) FROM concerts").await, 51);
    assert_eq!(count("SELECT COUNT(*) FROM concerts WHERE room = 'demo'").await, 1);
    assert_eq!(count("SELECT COUNT(*) FROM seats").await, 50 * 100 + 2 * 1000);
    assert_eq!(count("SELECT COUNT(*) FROM coupon_campaigns").await, 1);
}
