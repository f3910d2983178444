//! Every charge has exactly one paid reservation, on SQLite and PostgreSQL, against the real
//! backend and the payment simulator:
//! - the reported breaks, each replayed: a sibling order of a paid reservation, twenty orders
//!   of one reservation confirmed at once, tickets that outlived their refund;
//! - the database refusing, by itself, writes that break the invariants;
//! - reconciliation refunding an orphan charge and reporting what it cannot repair;
//! - a model-based run: random schedules of holds, prepares, confirms (same and different
//!   keys, declined cards, provider timeouts), cancels, refunds and hold expiry, fired
//!   concurrently; after each, the invariants hold and the simulator's ledger matches the
//!   database exactly.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::shop::{Backend, SECRET, World, code, http, signup, simulator, world};
use common::{PgDb, sqlite_url};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sqlx::{AnyPool, Row};

async fn pool(url: &str) -> AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::any::AnyPoolOptions::new().max_connections(2).connect(url).await.unwrap()
}

async fn hold(b: &Backend, w: &World, token: &str, seats: &[i64]) -> (StatusCode, Value) {
    let body = json!({"schedule_id": w.schedule, "seat_ids": seats});
    let (s, v, _) = b.call("POST", "/api/v1/reservations", Some(body), token, &[]).await;
    (s, v)
}

async fn prepare(b: &Backend, token: &str, reservation: &str) -> (StatusCode, Value) {
    let body = json!({"reservation_id": reservation});
    let (s, v, _) = b.call("POST", "/api/v1/payments/prepare", Some(body), token, &[]).await;
    (s, v)
}

async fn confirm(
    b: &Backend,
    token: &str,
    order: &Value,
    key: &str,
    idem: Option<&str>,
) -> (StatusCode, Value) {
    let body = json!({"payment_key": key, "order_id": order["order_id"], "amount": order["amount"]});
    let extra: Vec<(&str, &str)> = idem.map(|k| ("idempotency-key", k)).into_iter().collect();
    let (s, v, _) = b.call("POST", "/api/v1/payments/confirm", Some(body), token, &extra).await;
    (s, v)
}

async fn ledger(sim: SocketAddr) -> Vec<Value> {
    http("GET", &format!("http://{sim}/_sim/ledger"), None, &[]).await.1.as_array().unwrap().clone()
}

/// The provider's payments that hold money now, by order.
async fn charged(sim: SocketAddr) -> BTreeMap<String, i64> {
    ledger(sim)
        .await
        .iter()
        .filter(|p| p["status"] == "DONE")
        .map(|p| (p["orderId"].as_str().unwrap().to_owned(), p["totalAmount"].as_i64().unwrap()))
        .collect()
}

/// Waits until no saga is running, every paid order has its tickets, and the provider holds
/// no money for an order that is not paid (a charge that landed after its saga gave up is
/// reconciliation's to refund).
async fn settle(db: &AnyPool, sim: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let paid: BTreeSet<String> =
            strings(db, "SELECT order_id FROM payments WHERE status = 'paid'").await.into_iter().collect();
        let orphans: Vec<String> = charged(sim).await.into_keys().filter(|o| !paid.contains(o)).collect();
        let busy: i64 = sqlx::query(
            "SELECT COUNT(*) FROM payments WHERE status = 'confirming' OR step IN ('compensating', 'refunding')",
        )
        .fetch_one(db)
        .await
        .unwrap()
        .get(0);
        let untickets: i64 = sqlx::query(
            "SELECT COUNT(*) FROM payments p JOIN reservation_seats rs ON rs.reservation_id = p.reservation_id \
             WHERE p.status = 'paid' AND NOT EXISTS (SELECT 1 FROM tickets t WHERE t.order_id = p.order_id \
             AND t.seat_id = rs.seat_id AND t.status = 'valid')",
        )
        .fetch_one(db)
        .await
        .unwrap()
        .get(0);
        if busy == 0 && untickets == 0 && orphans.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not settled: {busy} sagas running, {untickets} tickets missing, charges without a paid order {orphans:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn strings(db: &AnyPool, sql: &str) -> Vec<String> {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_all(db)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<String, _>(0))
        .collect()
}

/// Every invariant of the money, the seats and the tickets; the violations, if any.
async fn violations(db: &AnyPool, b: &Backend, w: &World, sim: SocketAddr) -> Vec<String> {
    let mut bad = Vec::new();
    let mut expect_none = |what: &str, rows: Vec<String>| {
        if !rows.is_empty() {
            bad.push(format!("{what}: {rows:?}"));
        }
    };
    expect_none(
        "reservations with more than one paid order",
        strings(db, "SELECT reservation_id FROM payments WHERE status = 'paid' GROUP BY reservation_id HAVING COUNT(*) > 1").await,
    );
    expect_none(
        "reservations paid without exactly one paid order, or the reverse",
        strings(
            db,
            "SELECT r.id FROM reservations r WHERE (r.status = 'paid') <> \
             ((SELECT COUNT(*) FROM payments p WHERE p.reservation_id = r.id AND p.status = 'paid') = 1)",
        )
        .await,
    );
    expect_none(
        "seats with two valid tickets",
        strings(db, "SELECT CAST(seat_id AS TEXT) FROM tickets WHERE status = 'valid' GROUP BY seat_id HAVING COUNT(*) > 1").await,
    );
    expect_none(
        "valid tickets of orders that are not paid",
        strings(db, "SELECT t.id FROM tickets t JOIN payments p ON p.order_id = t.order_id WHERE t.status = 'valid' AND p.status <> 'paid'").await,
    );
    expect_none(
        "revoked tickets of orders that were not refunded",
        strings(db, "SELECT t.id FROM tickets t JOIN payments p ON p.order_id = t.order_id WHERE t.status = 'revoked' AND p.status <> 'refunded'").await,
    );
    expect_none(
        "sold seats not active",
        strings(db, "SELECT CAST(rs.seat_id AS TEXT) FROM reservation_seats rs JOIN reservations r ON r.id = rs.reservation_id WHERE r.status = 'paid' AND rs.active = 0").await,
    );
    expect_none(
        "coupons used without a paid order, or held by a paid order and not used",
        strings(
            db,
            "SELECT c.id FROM coupons c LEFT JOIN payments p ON p.order_id = c.order_id \
             WHERE (c.status = 'used') <> (COALESCE(p.status, '') = 'paid')",
        )
        .await,
    );
    // The ledger: money held at the provider exactly for the paid orders, of their amount.
    let money = charged(sim).await;
    let rows = sqlx::query("SELECT order_id, status, amount FROM payments").fetch_all(db).await.unwrap();
    let orders: BTreeMap<String, (String, i64)> =
        rows.iter().map(|r| (r.get::<String, _>(0), (r.get::<String, _>(1), r.get::<i64, _>(2)))).collect();
    for (order, amount) in &money {
        match orders.get(order) {
            Some((status, a)) if status == "paid" && a == amount => {}
            other => {
                bad.push(format!("the provider holds {amount} for order {order}, which is {other:?} here"))
            }
        }
    }
    for (order, (status, amount)) in &orders {
        if status == "paid" && *amount > 0 && !money.contains_key(order) {
            bad.push(format!("order {order} is paid here without a charge at the provider"));
        }
    }
    // The seat map agrees with the database: sold exactly where a reservation is paid.
    let sold: BTreeSet<i64> = sqlx::query(
        "SELECT rs.seat_id FROM reservation_seats rs JOIN reservations r ON r.id = rs.reservation_id \
         WHERE r.status = 'paid' AND r.schedule_id = $1",
    )
    .bind(w.schedule)
    .fetch_all(db)
    .await
    .unwrap()
    .iter()
    .map(|r| r.get::<i64, _>(0))
    .collect();
    let (_, map, _) =
        b.call("GET", &format!("/api/v1/schedules/{}/seats", w.schedule), None, &w.buyer, &[]).await;
    let shown: BTreeSet<i64> = map
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"] == "sold")
        .map(|s| s["seat_id"].as_i64().unwrap())
        .collect();
    if shown != sold {
        bad.push(format!("the seat map sells {shown:?}, the database {sold:?}"));
    }
    bad
}

/// A backend with a short provider timeout, holds of `hold_ttl_s`, reconciliation every
/// second for orders older than a second, and room for many seats per buyer (the caps have
/// their own tests).
async fn start(db: &str, sim: SocketAddr, hold_ttl_s: u32) -> Backend {
    start_with_redis(db, sim, hold_ttl_s, None).await
}

/// [`start`], sharing `redis` if given.
async fn start_with_redis(db: &str, sim: SocketAddr, hold_ttl_s: u32, redis: Option<String>) -> Backend {
    Backend::start_with(db.to_owned(), sim, |c| {
        c.redis_url = redis;
        c.seats_per_buyer = 100;
        c.payments_timeout_ms = 300;
        c.hold_ttl_s = hold_ttl_s;
        c.reconcile_every_s = 1;
        c.reconcile_grace_s = 1;
    })
    .await
}

/// The reported breaks, replayed.
async fn reported(url: String) {
    let sim = simulator().await;
    let b = start(&url, sim, 60).await;
    let db = pool(&url).await;
    let w = world(&b, "one@example.com").await;
    let (_, other) = signup(&b, "two@example.com").await;

    // 1. A sibling order never undoes a paid reservation.
    let (_, r) = hold(&b, &w, &w.buyer, &w.seats[..1]).await;
    let rid = r["reservation_id"].as_str().unwrap();
    let (_, first) = prepare(&b, &w.buyer, rid).await;
    let (_, second) = prepare(&b, &w.buyer, rid).await;
    let (s, v) = confirm(&b, &w.buyer, &second, "pk_second", None).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("paid")), "{v}");
    let (s, v) = confirm(&b, &w.buyer, &first, "pk_first", None).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "order_closed"), "{v}");
    let (s, v) = prepare(&b, &w.buyer, rid).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "reservation_not_payable"), "{v}");
    let (s, v) = hold(&b, &w, &other, &w.seats[..1]).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "seat_taken"), "the sold seat stays sold: {v}");

    // 2. Twenty orders of one reservation confirmed at once: one charge, one paid order.
    let (_, r) = hold(&b, &w, &w.buyer, &w.seats[1..2]).await;
    let rid = r["reservation_id"].as_str().unwrap().to_owned();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let (b, token, rid) = (Backend { base: b.base.clone() }, w.buyer.clone(), rid.clone());
            tokio::spawn(async move {
                let (s, o) = prepare(&b, &token, &rid).await;
                if s != StatusCode::OK {
                    return s;
                }
                confirm(&b, &token, &o, &format!("pk_many_{i}"), None).await.0
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    assert!(answers.iter().filter(|s| **s == StatusCode::OK).count() <= 1, "{answers:?}");
    settle(&db, sim).await;
    let paid = strings(
        &db,
        &format!("SELECT order_id FROM payments WHERE reservation_id = '{rid}' AND status = 'paid'"),
    )
    .await;
    assert_eq!(paid.len(), 1, "the newest order is paid, no other: {paid:?}, answers {answers:?}");
    let money = charged(sim).await;
    let all = strings(&db, &format!("SELECT order_id FROM payments WHERE reservation_id = '{rid}'")).await;
    let held: Vec<&String> = all.iter().filter(|o| money.contains_key(*o)).collect();
    assert_eq!(held, paid.iter().collect::<Vec<_>>(), "the provider holds money exactly for the paid order");

    // 3. A refund revokes the tickets; only then does the seat go back on sale.
    let (_, r) = hold(&b, &w, &w.buyer, &w.seats[2..3]).await;
    let (_, o) = prepare(&b, &w.buyer, r["reservation_id"].as_str().unwrap()).await;
    assert_eq!(confirm(&b, &w.buyer, &o, "pk_refund_me", None).await.0, StatusCode::OK);
    settle(&db, sim).await;
    let tickets = |token: String| {
        let b = Backend { base: b.base.clone() };
        async move {
            b.call("GET", "/api/v1/me/tickets", None, &token, &[]).await.1["items"].as_array().unwrap().len()
        }
    };
    let before = tickets(w.buyer.clone()).await;
    let path = format!("/api/v1/payments/{}/cancel", o["order_id"].as_str().unwrap());
    let (s, v, _) = b.call("POST", &path, None, &w.buyer, &[]).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("refunded")), "{v}");
    assert_eq!(
        tickets(w.buyer.clone()).await,
        before - 1,
        "the refunded ticket is gone from the buyer's list"
    );
    let (s, r2) = hold(&b, &w, &other, &w.seats[2..3]).await;
    assert_eq!(s, StatusCode::CREATED, "the refunded seat is on sale again: {r2}");
    let (_, o2) = prepare(&b, &other, r2["reservation_id"].as_str().unwrap()).await;
    assert_eq!(confirm(&b, &other, &o2, "pk_next_buyer", None).await.0, StatusCode::OK);
    settle(&db, sim).await;
    assert_eq!(tickets(other.clone()).await, 1);
    let seat = w.seats[2];
    let valid =
        strings(&db, &format!("SELECT id FROM tickets WHERE seat_id = {seat} AND status = 'valid'")).await;
    assert_eq!(valid.len(), 1, "one valid ticket for the resold seat");
    assert_eq!(violations(&db, &b, &w, sim).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_reported_breaks_stay_fixed() {
    reported(sqlite_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_reported_breaks_stay_fixed() {
    let (_g, url) = PgDb::create().await;
    reported(url).await;
}

/// The database itself refuses writes that break the invariants, whatever code sends them.
async fn database_refuses(url: String) {
    let sim = simulator().await;
    let b = start(&url, sim, 60).await;
    let db = pool(&url).await;
    let w = world(&b, "db@example.com").await;
    let (_, r) = hold(&b, &w, &w.buyer, &w.seats[..1]).await;
    let rid = r["reservation_id"].as_str().unwrap().to_owned();
    let (_, o) = prepare(&b, &w.buyer, &rid).await;
    assert_eq!(confirm(&b, &w.buyer, &o, "pk_db", None).await.0, StatusCode::OK);
    settle(&db, sim).await;
    let order = o["order_id"].as_str().unwrap();
    let refused = [
        format!("UPDATE reservation_seats SET active = 0 WHERE reservation_id = '{rid}'"),
        format!("UPDATE reservations SET status = 'cancelled' WHERE id = '{rid}'"),
        format!("UPDATE payments SET status = 'failed' WHERE order_id = '{order}'"),
        format!("UPDATE payments SET status = 'refunded' WHERE order_id = '{order}'"),
        format!(
            "INSERT INTO payments (order_id, reservation_id, user_id, amount, status, step, attempts, created_at, updated_at) \
             SELECT 'o_second', reservation_id, user_id, amount, 'paid', 'done', 0, 0, 0 FROM payments WHERE order_id = '{order}'"
        ),
        format!(
            "INSERT INTO tickets (id, order_id, reservation_id, seat_id, user_id, issued_at, status) \
             SELECT 't_second', order_id, reservation_id, seat_id, user_id, 0, 'valid' FROM tickets WHERE order_id = '{order}'"
        ),
    ];
    for sql in &refused {
        refuse(&db, sql).await;
    }
    // A ticket for an order that is not paid, and reviving a revoked ticket.
    let (_, r) = hold(&b, &w, &w.buyer, &w.seats[1..2]).await;
    let (_, o) = prepare(&b, &w.buyer, r["reservation_id"].as_str().unwrap()).await;
    let sql = format!(
        "INSERT INTO tickets (id, order_id, reservation_id, seat_id, user_id, issued_at, status) \
         SELECT 't_unpaid', '{}', id, {}, user_id, 0, 'valid' FROM reservations WHERE id = '{}'",
        o["order_id"].as_str().unwrap(),
        w.seats[1],
        r["reservation_id"].as_str().unwrap(),
    );
    refuse(&db, &sql).await;
    let path = format!("/api/v1/payments/{order}/cancel");
    assert_eq!(b.call("POST", &path, None, &w.buyer, &[]).await.0, StatusCode::OK);
    let revoked =
        strings(&db, &format!("SELECT id FROM tickets WHERE order_id = '{order}' AND status = 'revoked'"))
            .await;
    assert_eq!(revoked.len(), 1);
    refuse(&db, &format!("UPDATE tickets SET status = 'valid' WHERE id = '{}'", revoked[0])).await;
    assert_eq!(violations(&db, &b, &w, sim).await, Vec::<String>::new());
}

/// `sql` fails for an integrity reason (a trigger or a unique index), not another one.
async fn refuse(db: &AnyPool, sql: &str) {
    match sqlx::query(sqlx::AssertSqlSafe(sql.to_owned())).execute(db).await {
        Ok(r) => panic!("the database accepted ({} rows): {sql}", r.rows_affected()),
        Err(e) => {
            let why = e.to_string();
            assert!(why.contains("integrity") || why.to_lowercase().contains("unique"), "{sql}: {why}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_database_refuses_broken_money() {
    database_refuses(sqlite_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_database_refuses_broken_money() {
    let (_g, url) = PgDb::create().await;
    database_refuses(url).await;
}

/// Reconciliation refunds a charge no paid order explains and reports one it cannot repair.
async fn reconciliation(url: String) {
    let sim = simulator().await;
    let b = Backend::start_with(url.clone(), sim, |c| {
        c.payments_timeout_ms = 300;
        c.reconcile_every_s = 1;
        c.reconcile_grace_s = 1;
    })
    .await;
    let w = world(&b, "rec@example.com").await;
    // An orphan: the provider charged an order this database abandoned.
    let (_, r) = hold(&b, &w, &w.buyer, &w.seats[..1]).await;
    let (_, stale) = prepare(&b, &w.buyer, r["reservation_id"].as_str().unwrap()).await;
    let (_, fresh) = prepare(&b, &w.buyer, r["reservation_id"].as_str().unwrap()).await;
    let auth = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("{SECRET}:"))
    );
    let body = json!({"paymentKey": "pk_orphan", "orderId": stale["order_id"], "amount": stale["amount"]});
    let (s, v, _) =
        http("POST", &format!("http://{sim}/v1/payments/confirm"), Some(body), &[("authorization", &auth)])
            .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // A paid order refunded behind the backend's back: reported, not repaired.
    assert_eq!(confirm(&b, &w.buyer, &fresh, "pk_fresh", None).await.0, StatusCode::OK);
    let (s, _, _) = http(
        "POST",
        &format!("http://{sim}/v1/payments/pk_fresh/cancel"),
        Some(json!({})),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    // Another shop's charge on the same provider account: reported, never refunded.
    let body = json!({"paymentKey": "pk_foreign", "orderId": "foreign-shop-order-1", "amount": 5000});
    let (s, v, _) =
        http("POST", &format!("http://{sim}/v1/payments/confirm"), Some(body), &[("authorization", &auth)])
            .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let metrics = get_text(&format!("{}/metrics", b.base)).await;
        let orphan_refunded =
            ledger(sim).await.iter().any(|p| p["orderId"] == stale["order_id"] && p["status"] == "CANCELED");
        let reported = metrics.contains("ticketing_reconcile_discrepancies{kind=\"refunded_at_provider\"} 1");
        let unknown = metrics.contains("ticketing_reconcile_discrepancies{kind=\"unknown_order\"} 1");
        let repaired = metrics.contains("ticketing_reconcile_repaired_total{kind=\"orphan_charge\"} 1");
        if orphan_refunded && reported && unknown && repaired {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "orphan refunded {orphan_refunded}, reported {reported} and {unknown}, repaired {repaired}:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The same run on demand: `ticketing-backend jobs reconcile` lists what it cannot repair.
    let mut report = Value::Null;
    for _ in 0..50 {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ticketing-backend"))
            .args(["jobs", "reconcile"])
            .env("TB_DATABASE_URL", &url)
            .env("TB_PAYMENTS_BASE_URL", format!("http://{sim}"))
            .env("TB_PAYMENTS_SECRET_KEY", SECRET)
            .env("TB_PAYMENTS_TIMEOUT_MS", "300")
            .env("TB_RECONCILE_GRACE_S", "1")
            .env("RUST_LOG", "error")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        report = serde_json::from_slice(&out.stdout).unwrap();
        if report["outcome"] == "reconciled" {
            break;
        }
        // The serving instance holds the lease for its own round; try again.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(report["outcome"], "reconciled", "{report}");
    let kinds: Vec<&str> =
        report["findings"].as_array().unwrap().iter().map(|f| f["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["refunded_at_provider", "unknown_order"], "{report}");
    assert_eq!(report["findings"][0]["order_id"], fresh["order_id"]);
    let foreign = ledger(sim).await.into_iter().find(|p| p["orderId"] == "foreign-shop-order-1").unwrap();
    assert_eq!(foreign["status"], "DONE", "a charge of an order this shop never had is left alone");
}

/// A cancel racing a confirm of the same reservation: one goes ahead, and the buyer is never
/// charged for an order that then fails.
async fn cancel_races_confirm(url: String) {
    let sim = simulator().await;
    let b = Arc::new(start(&url, sim, 60).await);
    let db = pool(&url).await;
    let w = Arc::new(world(&b, "race@example.com").await);
    let mut outcomes = BTreeMap::<String, usize>::new();
    for i in 0..8 {
        let (_, r) = hold(&b, &w, &w.buyer, &w.seats[i..i + 1]).await;
        let rid = r["reservation_id"].as_str().unwrap().to_owned();
        let (_, o) = prepare(&b, &w.buyer, &rid).await;
        let path = format!("/api/v1/reservations/{rid}");
        let paying = {
            let (b, w, o) = (b.clone(), w.clone(), o.clone());
            tokio::spawn(async move { confirm(&b, &w.buyer, &o, &format!("pk_race_{i}"), None).await })
        };
        let cancels: Vec<_> = (0..2)
            .map(|_| {
                let (b, w, path) = (b.clone(), w.clone(), path.clone());
                tokio::spawn(async move { b.call("DELETE", &path, None, &w.buyer, &[]).await.0 })
            })
            .collect();
        let (s, v) = paying.await.unwrap();
        *outcomes.entry(format!("confirm {} {}", s.as_u16(), code(&v))).or_default() += 1;
        for c in cancels {
            *outcomes.entry(format!("cancel {}", c.await.unwrap().as_u16())).or_default() += 1;
        }
        settle(&db, sim).await;
        let order = o["order_id"].as_str().unwrap();
        let status = strings(&db, &format!("SELECT status FROM payments WHERE order_id = '{order}'")).await;
        let charged_at_all = ledger(sim).await.iter().any(|p| p["orderId"] == order);
        assert!(
            status[0] != "failed" || !charged_at_all,
            "order {order} failed after the provider charged it ({outcomes:?})"
        );
    }
    eprintln!("cancel races confirm: {outcomes:?}");
    assert_eq!(violations(&db, &b, &w, sim).await, Vec::<String>::new(), "{outcomes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_cancel_races_confirm() {
    cancel_races_confirm(sqlite_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_cancel_races_confirm() {
    let (_g, url) = PgDb::create().await;
    cancel_races_confirm(url).await;
}

/// An Idempotency-Key keeps final answers only: "in progress" is not one, and a key whose
/// first request died with its process is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_keys_keep_only_final_answers() {
    let url = sqlite_url();
    let sim = simulator().await;
    let b = Backend::start_with(url.clone(), sim, |c| c.payments_timeout_ms = 3_000).await;
    let db = pool(&url).await;
    let w = world(&b, "idem@example.com").await;
    let (_, r) = hold(&b, &w, &w.buyer, &w.seats[..1]).await;
    let (_, o) = prepare(&b, &w.buyer, r["reservation_id"].as_str().unwrap()).await;
    let slow = {
        let (b, token, o) = (Backend { base: b.base.clone() }, w.buyer.clone(), o.clone());
        tokio::spawn(async move { confirm(&b, &token, &o, "slow_first", None).await })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (s, v) = confirm(&b, &w.buyer, &o, "slow_first", Some("key-k")).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "payment_in_progress"), "{v}");
    assert_eq!(slow.await.unwrap().0, StatusCode::OK);
    let (s, v) = confirm(&b, &w.buyer, &o, "slow_first", Some("key-k")).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("paid")), "the retry ran again: {v}");
    // A key left "running" by a process that died ten minutes ago.
    let (_, r) = hold(&b, &w, &w.buyer, &w.seats[1..2]).await;
    let (_, o) = prepare(&b, &w.buyer, r["reservation_id"].as_str().unwrap()).await;
    let body = json!({"payment_key": "pk_after_crash", "order_id": o["order_id"], "amount": o["amount"]})
        .to_string();
    let hash: String = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, body.as_bytes())
        .as_ref()
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect();
    let user: i64 = sqlx::query("SELECT user_id FROM reservations WHERE id = $1")
        .bind(r["reservation_id"].as_str().unwrap())
        .fetch_one(&db)
        .await
        .unwrap()
        .get(0);
    sqlx::query("INSERT INTO idempotency (user_id, scope, idem_key, request_hash, status_code, body, created_at) VALUES ($1, 'confirm', 'key-dead', $2, 0, '', $3)")
        .bind(user)
        .bind(&hash)
        .bind(ticketing_backend::db::now_ms() - 600_000)
        .execute(&db)
        .await
        .unwrap();
    let (s, v) = confirm(&b, &w.buyer, &o, "pk_after_crash", Some("key-dead")).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("paid")), "{v}");
}

async fn get_text(url: &str) -> String {
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<axum::body::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let resp = client.get(url.parse().unwrap()).await.unwrap();
    let bytes = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_reconciliation_refunds_orphans_and_reports_the_rest() {
    reconciliation(sqlite_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_reconciliation_refunds_orphans_and_reports_the_rest() {
    let (_g, url) = PgDb::create().await;
    reconciliation(url).await;
}

/// One step of a schedule.
#[derive(Clone, Debug)]
enum Op {
    Hold { buyer: usize, seats: Vec<i64> },
    Prepare { buyer: usize },
    Confirm { buyer: usize, key: &'static str, idem: Option<u8> },
    PrepareConfirm { buyer: usize, key: &'static str },
    CancelOrder { buyer: usize },
    CancelReservation { buyer: usize },
}

/// What the buyers have seen so far (ids to act on).
#[derive(Default)]
struct Seen {
    reservations: Vec<(usize, String)>,
    orders: Vec<(usize, Value)>,
}

fn schedule(rng: &mut StdRng, seats: &[i64], buyers: usize) -> Vec<(u64, Op)> {
    let keys = ["pk_ok", "pk_ok", "pk_ok", "fail_card", "timeout_net", "slow_bank"];
    (0..24)
        .map(|_| {
            let buyer = rng.random_range(0..buyers);
            let key = keys[rng.random_range(0..keys.len())];
            let op = match rng.random_range(0..10) {
                0 | 1 => {
                    let n = rng.random_range(1..=2);
                    let first = rng.random_range(0..seats.len() - 1);
                    Op::Hold { buyer, seats: seats[first..first + n].to_vec() }
                }
                2 => Op::Prepare { buyer },
                3 | 4 => {
                    Op::Confirm { buyer, key, idem: rng.random_bool(0.5).then(|| rng.random_range(0..3)) }
                }
                5..=7 => Op::PrepareConfirm { buyer, key },
                8 => Op::CancelOrder { buyer },
                _ => Op::CancelReservation { buyer },
            };
            // Spread over a little more than the hold's 2 s, so some holds expire mid-way.
            (rng.random_range(0..2_600), op)
        })
        .collect()
}

fn pick<T: Clone>(rng_seed: u64, items: &[(usize, T)], buyer: usize) -> Option<T> {
    let mine: Vec<&T> = items.iter().filter(|(b, _)| *b == buyer).map(|(_, t)| t).collect();
    // Mostly the newest (where the contention is), sometimes an older one.
    let i = if rng_seed.is_multiple_of(3) {
        rng_seed as usize % mine.len().max(1)
    } else {
        mine.len().saturating_sub(1)
    };
    mine.get(i).map(|t| (*t).clone())
}

type Tally = Arc<Mutex<BTreeMap<String, usize>>>;

fn count(tally: &Tally, what: &str, s: StatusCode) {
    *tally.lock().unwrap().entry(format!("{what} {}", s.as_u16())).or_default() += 1;
}

struct Actors {
    /// The backend instances; each step goes to one of them.
    bs: Vec<Backend>,
    w: World,
    tokens: Vec<String>,
    seen: Mutex<Seen>,
    tally: Tally,
}

async fn run_op(a: Arc<Actors>, op: Op, salt: u64) {
    let b = &a.bs[salt as usize % a.bs.len()];
    // A confirm may reach another instance than its prepare did.
    let b2 = &a.bs[(salt / 7) as usize % a.bs.len()];
    let token = |buyer: usize| a.tokens[buyer].clone();
    let reservation = |buyer| pick(salt, &a.seen.lock().unwrap().reservations, buyer);
    let order = |buyer| pick(salt, &a.seen.lock().unwrap().orders, buyer);
    match op {
        Op::Hold { buyer, seats } => {
            let (s, v) = hold(b, &a.w, &token(buyer), &seats).await;
            count(&a.tally, "hold", s);
            if s == StatusCode::CREATED {
                a.seen
                    .lock()
                    .unwrap()
                    .reservations
                    .push((buyer, v["reservation_id"].as_str().unwrap().to_owned()));
            }
        }
        Op::Prepare { buyer } | Op::PrepareConfirm { buyer, .. } => {
            let Some(r) = reservation(buyer) else { return };
            let (s, o) = prepare(b, &token(buyer), &r).await;
            count(&a.tally, "prepare", s);
            if s != StatusCode::OK {
                return;
            }
            a.seen.lock().unwrap().orders.push((buyer, o.clone()));
            if let Op::PrepareConfirm { key, .. } = op {
                let (s, _) = confirm(b2, &token(buyer), &o, &format!("{key}_{salt}"), None).await;
                count(&a.tally, &format!("confirm {key}"), s);
            }
        }
        Op::Confirm { buyer, key, idem } => {
            let Some(o) = order(buyer) else { return };
            let idem = idem.map(|i| format!("idem-{buyer}-{i}"));
            let (s, _) = confirm(b, &token(buyer), &o, &format!("{key}_{salt}"), idem.as_deref()).await;
            count(&a.tally, &format!("confirm {key}"), s);
        }
        Op::CancelOrder { buyer } => {
            let Some(o) = order(buyer) else { return };
            let path = format!("/api/v1/payments/{}/cancel", o["order_id"].as_str().unwrap());
            let (s, v, _) = b.call("POST", &path, None, &token(buyer), &[]).await;
            count(&a.tally, &format!("cancel order ({})", v["status"].as_str().unwrap_or("-")), s);
        }
        Op::CancelReservation { buyer } => {
            let Some(r) = reservation(buyer) else { return };
            let (s, _, _) =
                b.call("DELETE", &format!("/api/v1/reservations/{r}"), None, &token(buyer), &[]).await;
            count(&a.tally, "cancel reservation", s);
        }
    }
}

/// Rounds of a schedule each: a fresh round of seats, three buyers holding two seats each,
/// then 24 random steps fired concurrently over a little more than the holds' life. With
/// `redis`, two backend instances share it (holds, tickets, notifications) and the database,
/// and the steps are spread over both.
async fn model(url: String, rounds: usize, redis: Option<String>) {
    let seed =
        std::env::var("TB_MODEL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random::<u64>);
    eprintln!("model seed {seed} (TB_MODEL_SEED={seed} replays it)");
    let mut rng = StdRng::seed_from_u64(seed);
    let sim = simulator().await;
    let mut bs = Vec::new();
    for _ in 0..if redis.is_some() { 2 } else { 1 } {
        bs.push(start_with_redis(&url, sim, 2, redis.clone()).await);
    }
    let b = Backend { base: bs[0].base.clone() };
    let db = pool(&url).await;
    let others = [signup(&b, "m-one@example.com").await.1, signup(&b, "m-two@example.com").await.1];
    let tally: Tally = Arc::default();
    for round in 0..rounds {
        let w = world(&b, &format!("m{round}@example.com")).await;
        let tokens = vec![w.buyer.clone(), others[0].clone(), others[1].clone()];
        // Few seats, so that the buyers contend for them.
        let seats: Vec<i64> = w.seats[..6].to_vec();
        let bs = bs.iter().map(|b| Backend { base: b.base.clone() }).collect();
        let a = Arc::new(Actors { bs, w, tokens, seen: Mutex::new(Seen::default()), tally: tally.clone() });
        for buyer in 0..3 {
            run_op(a.clone(), Op::Hold { buyer, seats: seats[2 * buyer..2 * buyer + 2].to_vec() }, 0).await;
        }
        let ops = schedule(&mut rng, &seats, a.tokens.len());
        let tasks: Vec<_> = ops
            .iter()
            .cloned()
            .map(|(delay, op)| {
                let (a, salt) = (a.clone(), rng.random::<u32>() as u64);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    run_op(a, op, salt).await;
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        settle(&db, sim).await;
        let bad = violations(&db, &a.bs[0], &a.w, sim).await;
        assert!(bad.is_empty(), "seed {seed}, round {round}, schedule {ops:?}:\n{}", bad.join("\n"));
    }
    let tally = tally.lock().unwrap().clone();
    eprintln!("model: {rounds} rounds: {tally:?}");
    // The schedules did reach the paths they are meant to try.
    for what in ["hold 201", "prepare 200", "confirm pk_ok 200"] {
        assert!(tally.contains_key(what), "no `{what}` in {tally:?} (seed {seed})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_model_schedules_keep_the_money_whole() {
    model(sqlite_url(), 6, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_model_schedules_keep_the_money_whole() {
    let (_g, url) = PgDb::create().await;
    model(url, 6, None).await;
}

/// The production layout: two instances on PostgreSQL sharing a real `redis-server`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_on_postgres_and_redis_keep_the_money_whole() {
    let (_g, url) = PgDb::create().await;
    let redis = queue_core::testkit::RedisServer::start();
    model(url, 4, Some(redis.url())).await;
}
