//! Booking benchmarks (BENCHMARKS.md): seat holds under contention and coupon issuance on a
//! real `redis-server` started here, and the settlement of 270,000 payments.
//!
//!   cargo run --release -p ticketing-backend --example booking_bench [-- CONCURRENCY SECONDS]
//!
//! `TB_BENCH_POSTGRES_URL` (an admin URL such as `postgres://postgres@127.0.0.1/postgres`)
//! adds the settlement on a fresh PostgreSQL database.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use queue_core::testkit::RedisServer;
use ticketing_backend::config::BackendConfig;
use ticketing_backend::coupons::{Issue, Issuer};
use ticketing_backend::holds::{HoldOutcome, Holds};
use ticketing_backend::testkit::{self, PaymentsSeed};

fn pct(v: &mut [u64], p: f64) -> f64 {
    v.sort_unstable();
    v.get(((v.len() as f64 - 1.0) * p) as usize).copied().unwrap_or(0) as f64 / 1000.0
}

/// Tasks each hold 1–4 of 1,000 seats (overlapping), releasing what they win, for `secs`.
async fn holds(url: &str, conc: usize, secs: u64) {
    let h = Arc::new(Holds::redis(url).await.unwrap());
    let (held, taken) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..conc)
        .map(|t| {
            let (h, held, taken) = (h.clone(), held.clone(), taken.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut rng = t as u64 * 7_919 + 1;
                let mut i = 0u64;
                while Instant::now() < stop {
                    rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let first = (rng >> 33) % 1000 + 1;
                    let seats: Vec<i64> =
                        (first..first + (rng >> 20) % 4 + 1).map(|s| ((s - 1) % 1000 + 1) as i64).collect();
                    let owner = format!("r{t}-{i}");
                    i += 1;
                    let t0 = Instant::now();
                    match h.hold(1, &seats, &owner, 60_000).await.unwrap() {
                        HoldOutcome::Held { .. } => {
                            lat.push(t0.elapsed().as_micros() as u64);
                            held.fetch_add(1, Ordering::Relaxed);
                            h.release(1, &seats, &owner).await.unwrap();
                        }
                        HoldOutcome::Taken(_) => {
                            lat.push(t0.elapsed().as_micros() as u64);
                            taken.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let (ok, no) = (held.load(Ordering::Relaxed), taken.load(Ordering::Relaxed));
    println!(
        "holds: {conc} tasks, {secs} s: {:.0} hold requests/s ({:.0} held/s, {:.0} taken/s; each win also released), p50 {:.3} ms, p99 {:.3} ms",
        (ok + no) as f64 / secs as f64,
        ok as f64 / secs as f64,
        no as f64 / secs as f64,
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99)
    );
}

/// 200,000 distinct users ask for 100,000 coupons, `conc` at a time.
async fn coupons(url: &str, conc: usize) {
    let issuer = Arc::new(Issuer::redis(url).await.unwrap());
    let next = Arc::new(AtomicU64::new(0));
    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..conc)
        .map(|_| {
            let (issuer, next, issued) = (issuer.clone(), next.clone(), issued.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                loop {
                    let user = next.fetch_add(1, Ordering::Relaxed);
                    if user >= 200_000 {
                        return lat;
                    }
                    let t0 = Instant::now();
                    if issuer.issue(1, 100_000, user as i64).await.unwrap() == Issue::Issued {
                        issued.fetch_add(1, Ordering::Relaxed);
                    }
                    lat.push(t0.elapsed().as_micros() as u64);
                }
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "coupons: 200,000 requests for 100,000 coupons, {conc} at a time: {} issued, {:.0} requests/s, {:.4} ms of wall time per issued coupon, p50 {:.3} ms, p99 {:.3} ms",
        issued.load(Ordering::Relaxed),
        200_000.0 / secs,
        secs * 1000.0 / issued.load(Ordering::Relaxed).max(1) as f64,
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99)
    );
}

async fn settlement(label: &str, url: String, n: usize) {
    let cfg = BackendConfig { database_url: Some(url), demo_data: false, ..BackendConfig::default() };
    let s = ticketing_backend::build(&cfg).await.unwrap();
    let seeding = Instant::now();
    let seed = PaymentsSeed { payments: n, rounds: 50, hosts: 20, on_day_percent: 100 };
    testkit::seed_payments(&s.db.pool, seed).await.unwrap();
    let seeded = seeding.elapsed();
    let t0 = Instant::now();
    let out = ticketing_backend::jobs::settle(&s, "bench", testkit::SEED_DAY).await.unwrap();
    println!(
        "settlement ({label}): {n} payments of one day, 20 hosts: {:.2} s ({out:?}; seeding took {:.1} s)",
        t0.elapsed().as_secs_f64(),
        seeded.as_secs_f64()
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let conc: usize = args.first().and_then(|v| v.parse().ok()).unwrap_or(64);
    let secs: u64 = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(10);
    let redis = RedisServer::start();
    holds(&redis.url(), conc, secs).await;
    coupons(&redis.url(), conc).await;
    let dir = std::env::temp_dir().join(format!("tb-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    settlement("SQLite", format!("sqlite://{}?mode=rwc", dir.join("b.db").display()), 270_000).await;
    if let Ok(admin) = std::env::var("TB_BENCH_POSTGRES_URL") {
        sqlx::any::install_default_drivers();
        let name = format!("tb_bench_{}", std::process::id());
        let mut c = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut c).await.unwrap();
        let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
        settlement("PostgreSQL", url, 270_000).await;
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
            .execute(&mut c)
            .await;
    }
    let _ = std::fs::remove_dir_all(dir);
}
