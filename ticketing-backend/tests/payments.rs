//! Payments as a saga, end to end on SQLite and PostgreSQL against the local provider
//! simulator: amount tampering refused, a declined card and a provider timeout compensated
//! (refund, coupon back, seats back), an idempotent confirm charging once, refunds; and a
//! backend process killed mid-payment whose saga a restarted process finishes.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::StatusCode;
use common::shop::{Backend, JWT, SECRET, code, http, sim_stats, simulator, world};
use common::{PgDb, sqlite_url};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Follows a user's notification stream over a real socket; returns the event names seen.
fn follow(base: &str, token: &str) -> Arc<Mutex<Vec<String>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (addr, token, out) = (base.trim_start_matches("http://").to_owned(), token.to_owned(), seen.clone());
    tokio::spawn(async move {
        let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let req = format!(
            "GET /api/v1/me/notifications/stream?access_token={token} HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n\r\n"
        );
        sock.write_all(req.as_bytes()).await.unwrap();
        let mut lines = BufReader::new(sock).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(ev) = line.strip_prefix("event: ") {
                out.lock().unwrap().push(ev.to_owned());
            }
        }
    });
    seen
}

async fn wait_for(seen: &Arc<Mutex<Vec<String>>>, event: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.lock().unwrap().iter().any(|e| e == event) {
        assert!(Instant::now() < deadline, "no {event} in {:?}", seen.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A local Slack-compatible receiver; returns its URL and the texts it got.
async fn webhook() -> (String, Arc<Mutex<Vec<String>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::Json<Value>| async move {
            g.lock().unwrap().push(body["text"].as_str().unwrap_or("").to_owned());
            "ok"
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (format!("http://{addr}/hook"), got)
}

async fn saga(db: String) {
    let sim = simulator().await;
    let (hook, ops) = webhook().await;
    let b = Backend::start_with(db, sim, |c| c.ops_webhook_url = Some(hook)).await;
    let w = world(&b, "buyer@example.com").await;
    let events = follow(&b.base, &w.buyer);
    wait_for(&events, "ready").await;

    // Paid with a coupon; tampering refused first; one charge for any number of retries.
    let (reservation, coupon, order, amount) = w.order(&b, &w.seats[..2]).await;
    assert_eq!(amount, 15_000, "20,000 less the 5,000 coupon");
    let confirm = |key: &str, amount: i64| json!({"payment_key": key, "order_id": order, "amount": amount});
    let (s, v, _) =
        b.call("POST", "/api/v1/payments/confirm", Some(confirm("pk_ok_1", 1)), &w.buyer, &[]).await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "amount_mismatch"));
    assert_eq!(w.coupon_status(&b, &coupon).await, "issued", "a refused confirm spends nothing");
    let idem = [("idempotency-key", "confirm-once-1")];
    let (s, v, _) =
        b.call("POST", "/api/v1/payments/confirm", Some(confirm("pk_ok_1", amount)), &w.buyer, &idem).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("paid")), "{v}");
    let (s, v, h) =
        b.call("POST", "/api/v1/payments/confirm", Some(confirm("pk_ok_1", amount)), &w.buyer, &idem).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("paid")));
    assert_eq!(h["idempotent-replayed"], "true");
    let (s, v, _) =
        b.call("POST", "/api/v1/payments/confirm", Some(confirm("pk_other", amount)), &w.buyer, &idem).await;
    assert_eq!((s, code(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"));
    let (s, _, _) =
        b.call("POST", "/api/v1/payments/confirm", Some(confirm("pk_ok_1", amount)), &w.buyer, &[]).await;
    assert_eq!(s, StatusCode::OK, "confirming a paid order again answers paid");
    assert_eq!(sim_stats(sim).await["charges_by_order"][&order], 1, "charged once");
    assert_eq!(w.seat_status(&b, w.seats[0]).await, "sold");
    assert_eq!(w.coupon_status(&b, &coupon).await, "used");
    // The buyer's list shows the seats' price and what was paid after the coupon.
    let (_, mine, _) = b.call("GET", "/api/v1/me/reservations", None, &w.buyer, &[]).await;
    let listed =
        mine["items"].as_array().unwrap().iter().find(|i| i["reservation_id"] == reservation.as_str());
    let listed = listed.unwrap_or_else(|| panic!("{mine}"));
    assert_eq!(
        (listed["amount"].as_i64(), listed["paid_amount"].as_i64()),
        (Some(20_000), Some(amount)),
        "{listed}"
    );
    let (_, r, _) = b.call("GET", &format!("/api/v1/reservations/{reservation}"), None, &w.buyer, &[]).await;
    assert_eq!(r["status"], "paid");
    // Tickets follow asynchronously, one per seat, once.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, t, _) = b.call("GET", "/api/v1/me/tickets", None, &w.buyer, &[]).await;
        let mine: Vec<&Value> =
            t["items"].as_array().unwrap().iter().filter(|x| x["order_id"] == order.as_str()).collect();
        if mine.len() == 2 {
            break;
        }
        assert!(mine.len() < 2 && Instant::now() < deadline, "{t}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for e in ["reservation.held", "coupon.issued", "payment.paid", "ticket.issued"] {
        wait_for(&events, e).await;
    }

    // Refund: the seats and the coupon come back.
    let (s, v, _) = b.call("POST", &format!("/api/v1/payments/{order}/cancel"), None, &w.buyer, &[]).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("refunded")), "{v}");
    assert_eq!(sim_stats(sim).await["cancels_by_order"][&order], 1);
    assert_eq!(w.seat_status(&b, w.seats[0]).await, "available");
    assert_eq!(w.coupon_status(&b, &coupon).await, "issued");

    // A declined card: nothing charged, everything undone.
    let (reservation, coupon, order, amount) = w.order(&b, &w.seats[2..4]).await;
    let (s, v, _) = b
        .call(
            "POST",
            "/api/v1/payments/confirm",
            Some(json!({"payment_key": "fail_card", "order_id": order, "amount": amount})),
            &w.buyer,
            &[],
        )
        .await;
    assert_eq!((s, code(&v)), (StatusCode::PAYMENT_REQUIRED, "payment_rejected"), "{v}");
    assert_eq!(w.seat_status(&b, w.seats[2]).await, "available");
    assert_eq!(w.coupon_status(&b, &coupon).await, "issued");
    let (_, r, _) = b.call("GET", &format!("/api/v1/reservations/{reservation}"), None, &w.buyer, &[]).await;
    assert_eq!(r["status"], "cancelled");
    wait_for(&events, "payment.failed").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ops.lock().unwrap().iter().any(|t| t.contains(&order) && t.contains("compensated")) {
        assert!(Instant::now() < deadline, "ops webhook got {:?}", ops.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A provider that charges but does not answer in time: refunded, everything undone.
    let (_, coupon, order, amount) = w.order(&b, &w.seats[4..6]).await;
    let started = Instant::now();
    let (s, v, _) = b
        .call(
            "POST",
            "/api/v1/payments/confirm",
            Some(json!({"payment_key": "timeout_pk", "order_id": order, "amount": amount})),
            &w.buyer,
            &[],
        )
        .await;
    assert_eq!((s, code(&v)), (StatusCode::GATEWAY_TIMEOUT, "payment_timeout"), "{v}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let st = sim_stats(sim).await;
    assert_eq!(
        (st["charges_by_order"][&order].as_u64(), st["cancels_by_order"][&order].as_u64()),
        (Some(1), Some(1)),
        "{st}"
    );
    assert_eq!(w.seat_status(&b, w.seats[4]).await, "available");
    assert_eq!(w.coupon_status(&b, &coupon).await, "issued");

    // Cancelling a paid reservation refunds it.
    let (reservation, _, order, amount) = w.order(&b, &w.seats[6..7]).await;
    let (s, _, _) = b
        .call(
            "POST",
            "/api/v1/payments/confirm",
            Some(json!({"payment_key": "pk_ok_2", "order_id": order, "amount": amount})),
            &w.buyer,
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v, _) =
        b.call("DELETE", &format!("/api/v1/reservations/{reservation}"), None, &w.buyer, &[]).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("cancelled")), "{v}");
    assert_eq!(sim_stats(sim).await["cancels_by_order"][&order], 1);

    // Someone else's order does not exist; bad input is refused.
    let (_, other, _) = http(
        "POST",
        &format!("{}/api/v1/auth/signup", b.base),
        Some(json!({"email": "other@example.com", "password": "other password", "name": "O"})),
        &[],
    )
    .await;
    let other = other["token"].as_str().unwrap();
    let (s, _, _) = b
        .call(
            "POST",
            "/api/v1/payments/confirm",
            Some(json!({"payment_key": "x", "order_id": order, "amount": amount})),
            other,
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = b
        .call(
            "POST",
            "/api/v1/payments/confirm",
            Some(json!({"payment_key": "", "order_id": order, "amount": amount})),
            &w.buyer,
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _, _) = b
        .call("POST", "/api/v1/payments/prepare", Some(json!({"reservation_id": "nope"})), &w.buyer, &[])
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let _ = &w.admin;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_saga() {
    saga(sqlite_url()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_saga() {
    let (_db, url) = PgDb::create().await;
    saga(url).await
}

struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_process(db: &str, sim: SocketAddr) -> (Proc, Backend) {
    let port = queue_core::testkit::free_port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_ticketing-backend"))
        .env("TB_LISTEN", format!("127.0.0.1:{port}"))
        .env("TB_DATABASE_URL", db)
        .env("TB_JWT_SECRET", JWT)
        .env("TB_ADMIN_EMAIL", "admin@example.com")
        .env("TB_ADMIN_PASSWORD", "admin-password-123")
        .env("TB_PAYMENTS_BASE_URL", format!("http://{sim}"))
        .env("TB_PAYMENTS_SECRET_KEY", SECRET)
        .env("TB_PAYMENTS_TIMEOUT_MS", "1000")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start ticketing-backend");
    (Proc(child), Backend { base: format!("http://127.0.0.1:{port}") })
}

async fn wait_up(b: &Backend) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(b.base.trim_start_matches("http://")).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("backend did not start");
}

/// The process dies (SIGKILL) after the coupon is spent and while the provider is charging;
/// a new process on the same database finishes the saga: the charge stands, the seats are
/// sold, the coupon stays used, nothing is charged twice.
async fn crash_between_steps(db: String) {
    let sim = simulator().await;
    let (first, b) = start_process(&db, sim);
    wait_up(&b).await;
    let w = world(&b, "crash@example.com").await;
    let (reservation, coupon, order, amount) = w.order(&b, &w.seats[..2]).await;
    let confirm = json!({"payment_key": "timeout_crash", "order_id": order, "amount": amount});
    let buyer = w.buyer.clone();
    let base = b.base.clone();
    let pending = tokio::spawn(async move {
        let auth = format!("Bearer {buyer}");
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let req = axum::http::Request::post(format!("{base}/api/v1/payments/confirm"))
            .header("authorization", auth)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(confirm.to_string())))
            .unwrap();
        client.request(req).await.is_ok()
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    drop(first);
    assert!(!pending.await.unwrap(), "the process died before answering");
    assert_eq!(sim_stats(sim).await["charges_by_order"][&order], 1, "the provider charged");

    let (_second, b) = start_process(&db, sim);
    wait_up(&b).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, r, _) =
            b.call("GET", &format!("/api/v1/reservations/{reservation}"), None, &w.buyer, &[]).await;
        if r["status"] == "paid" {
            break;
        }
        assert!(Instant::now() < deadline, "the saga was not finished: {r}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(w.seat_status(&b, w.seats[0]).await, "sold");
    assert_eq!(w.coupon_status(&b, &coupon).await, "used");
    let st = sim_stats(sim).await;
    assert_eq!(
        (st["charges_by_order"][&order].as_u64(), st["cancels_by_order"][&order].as_u64()),
        (Some(1), None),
        "{st}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_crash_between_steps() {
    crash_between_steps(sqlite_url()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_crash_between_steps() {
    let (_db, url) = PgDb::create().await;
    crash_between_steps(url).await
}

/// Two instances on one Redis and one database: a user's stream on one hears what the other
/// did; tickets come from the Redis Stream queue once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_share_notifications_and_tickets_through_redis() {
    let redis = queue_core::testkit::RedisServer::start();
    let sim = simulator().await;
    let db = sqlite_url();
    let url = redis.url();
    let a = Backend::start_with(db.clone(), sim, |c| c.redis_url = Some(url.clone())).await;
    let w = world(&a, "shared@example.com").await;
    let b = Backend::start_with(db, sim, |c| c.redis_url = Some(url.clone())).await;
    let events = follow(&b.base, &w.buyer);
    wait_for(&events, "ready").await;
    let (_, _, order, amount) = w.order(&a, &w.seats[..3]).await;
    wait_for(&events, "reservation.held").await;
    let (s, _, _) = a
        .call(
            "POST",
            "/api/v1/payments/confirm",
            Some(json!({"payment_key": "pk_shared", "order_id": order, "amount": amount})),
            &w.buyer,
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    wait_for(&events, "payment.paid").await;
    wait_for(&events, "ticket.issued").await;
    let (_, t, _) = b.call("GET", "/api/v1/me/tickets", None, &w.buyer, &[]).await;
    assert_eq!(t["items"].as_array().unwrap().len(), 3, "{t}");
    let (_, map, _) =
        b.call("GET", &format!("/api/v1/schedules/{}/seats", w.schedule), None, &w.buyer, &[]).await;
    assert_eq!(
        map.as_array().unwrap().iter().filter(|s| s["status"] == "sold").count(),
        3,
        "holds are shared too"
    );
    // Redis loses its data: the ticket queue's group comes back, and tickets still follow
    // payments at once (not only from the 30-second sweep).
    let mut conn =
        redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    let hold = json!({"schedule_id": w.schedule, "seat_ids": [w.seats[5]]});
    let (s, r, _) = a.call("POST", "/api/v1/reservations", Some(hold), &w.buyer, &[]).await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    let prepare = json!({"reservation_id": r["reservation_id"]});
    let (s, o, _) = a.call("POST", "/api/v1/payments/prepare", Some(prepare), &w.buyer, &[]).await;
    assert_eq!(s, StatusCode::OK, "{o}");
    let order = o["order_id"].as_str().unwrap().to_owned();
    let body = json!({"payment_key": "pk_after_flush", "order_id": order, "amount": o["amount"]});
    let (s, v, _) = a.call("POST", "/api/v1/payments/confirm", Some(body), &w.buyer, &[]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let (_, t, _) = b.call("GET", "/api/v1/me/tickets", None, &w.buyer, &[]).await;
        if t["items"].as_array().unwrap().iter().any(|x| x["order_id"] == order.as_str()) {
            break;
        }
        assert!(Instant::now() < deadline, "no ticket 8 s after a payment that followed FLUSHALL: {t}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
