//! Limits a ticketing operator expects, each tried as an abuser would and checked not to hurt
//! an honest buyer: seats per buyer per round under a burst of concurrent holds (SQLite and
//! PostgreSQL), seats per admission, an admission bound to the account that queued, coupon
//! campaigns scoped to a concert or a round, and a queued concert's coupons issued only to
//! its admitted buyers.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::StatusCode;
use common::shop::{Backend, admin_token, code, gateway_keys, signup, simulator};
use common::{PgDb, sqlite_url};
use queue_core::token::{AdmissionClaims, KeySet, cnf_of};
use serde_json::{Value, json};

/// An admission to `room` for `sub` (`anon:…` or a user id), ticket `jti`.
fn admission(keys: &KeySet, room: &str, sub: &str, jti: u128) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = AdmissionClaims {
        iss: "gw".into(),
        aud: room.into(),
        sub: sub.into(),
        jti: format!("{jti:032x}"),
        iat: now,
        nbf: now,
        exp: now + 600,
        cnf: cnf_of(b"secret"),
    };
    keys.sign_claims(&claims).unwrap()
}

struct Shop {
    b: Backend,
    admin: String,
    keys: KeySet,
    _sim: SocketAddr,
}

async fn shop(db: String, seats_per_buyer: i64) -> Shop {
    shop_with(db, |c| c.seats_per_buyer = seats_per_buyer).await
}

async fn shop_with(db: String, tweak: impl FnOnce(&mut ticketing_backend::config::BackendConfig)) -> Shop {
    let sim = simulator().await;
    let (keys, jwks) = gateway_keys().await;
    let b = Backend::start_with(db, sim, |c| {
        c.admission_jwks_url = Some(jwks);
        // Every account here signs up from one address (the sign-up limit has its own test).
        c.signup_per_ip_per_hour = 1_000;
        tweak(c);
    })
    .await;
    Shop { admin: admin_token(&b).await, b, keys, _sim: sim }
}

/// A concert (with `room` and its own cap, if given) and one round of 50 seats:
/// (concert, round, seats).
async fn concert(sh: &Shop, room: Option<&str>, cap: Option<i64>) -> (i64, i64, Vec<i64>) {
    let b = &sh.b;
    let (_, venue, _) = b
        .call("POST", "/admin/v1/venues", Some(json!({"name": "Hall", "address": "Seoul"})), &sh.admin, &[])
        .await;
    let c = json!({"title": "Limits", "category": "concert", "starts_on": "2026-09-01T19:00:00Z",
        "ends_on": "2026-09-01T22:00:00Z", "venue_id": venue["id"], "host": "h", "room": room, "max_seats_per_buyer": cap});
    let (s, c, _) = b.call("POST", "/admin/v1/concerts", Some(c), &sh.admin, &[]).await;
    assert_eq!(s, StatusCode::CREATED, "{c}");
    let id = c["id"].as_i64().unwrap();
    let (_, round, seats) = add_round(sh, id).await;
    (id, round, seats)
}

async fn add_round(sh: &Shop, concert: i64) -> (i64, i64, Vec<i64>) {
    let sched = json!({"starts_at": "2026-09-01T19:00:00Z", "sections": [{"name": "A", "rows": 1, "seats_per_row": 50, "grade": "R", "price": 10000}]});
    let path = format!("/admin/v1/concerts/{concert}/schedules");
    let (s, v, _) = sh.b.call("POST", &path, Some(sched), &sh.admin, &[]).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let round = v["id"].as_i64().unwrap();
    let (_, map, _) =
        sh.b.call("GET", &format!("/api/v1/schedules/{round}/seats"), None, &sh.admin, &[]).await;
    (concert, round, map.as_array().unwrap().iter().map(|s| s["seat_id"].as_i64().unwrap()).collect())
}

async fn hold(
    b: &Backend,
    token: &str,
    round: i64,
    seats: &[i64],
    admission: Option<&str>,
) -> (StatusCode, Value) {
    let extra: Vec<(&str, &str)> = admission.map(|t| ("x-admission-token", t)).into_iter().collect();
    let body = json!({"schedule_id": round, "seat_ids": seats});
    let (s, v, _) = b.call("POST", "/api/v1/reservations", Some(body), token, &extra).await;
    (s, v)
}

async fn pay(b: &Backend, token: &str, reservation: &Value, coupon: Option<&str>) -> (StatusCode, Value) {
    let body = json!({"reservation_id": reservation["reservation_id"], "coupon_id": coupon});
    let (s, o, _) = b.call("POST", "/api/v1/payments/prepare", Some(body), token, &[]).await;
    if s != StatusCode::OK {
        return (s, o);
    }
    let body = json!({"payment_key": "pk_limits", "order_id": o["order_id"], "amount": o["amount"]});
    let (s, v, _) = b.call("POST", "/api/v1/payments/confirm", Some(body), token, &[]).await;
    (s, v)
}

/// One buyer firing 24 holds of two seats at once gets exactly the cap; another buyer, and
/// the first once a hold is cancelled, are served; bought seats count as held ones.
async fn seats_per_buyer(db: String) {
    let sh = shop(db, 3).await;
    let (capped, round, seats) = concert(&sh, None, Some(4)).await;
    let (_, greedy) = signup(&sh.b, "greedy@example.com").await;
    let (_, honest) = signup(&sh.b, "honest@example.com").await;
    let tasks: Vec<_> = (0..24)
        .map(|i| {
            let (b, token, pair) =
                (Backend { base: sh.b.base.clone() }, greedy.clone(), seats[2 * i..2 * i + 2].to_vec());
            tokio::spawn(async move { hold(&b, &token, round, &pair, None).await })
        })
        .collect();
    let mut held = Vec::new();
    for t in tasks {
        let (s, v) = t.await.unwrap();
        match s {
            StatusCode::CREATED => held.push(v),
            StatusCode::CONFLICT => assert_eq!(code(&v), "seat_limit", "{v}"),
            other => panic!("{other}: {v}"),
        }
    }
    assert_eq!(held.len(), 2, "two holds of two seats reach the cap of 4: {held:?}");
    let (s, v) = hold(&sh.b, &honest, round, &seats[48..50], None).await;
    assert_eq!(s, StatusCode::CREATED, "another buyer is not hurt: {v}");
    // Paid seats count; a cancelled hold frees its share.
    assert_eq!(pay(&sh.b, &greedy, &held[0], None).await.0, StatusCode::OK);
    let rid = held[1]["reservation_id"].as_str().unwrap();
    assert_eq!(
        sh.b.call("DELETE", &format!("/api/v1/reservations/{rid}"), None, &greedy, &[]).await.0,
        StatusCode::OK
    );
    let freed: Vec<i64> =
        held[1]["seat_ids"].as_array().unwrap().iter().map(|s| s.as_i64().unwrap()).collect();
    assert_eq!(hold(&sh.b, &greedy, round, &freed, None).await.0, StatusCode::CREATED);
    let (s, v) = hold(&sh.b, &greedy, round, &seats[46..47], None).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "seat_limit"), "{v}");
    // Another round of the same concert has its own count.
    let (_, other_round, other_seats) = add_round(&sh, capped).await;
    assert_eq!(hold(&sh.b, &greedy, other_round, &other_seats[..4], None).await.0, StatusCode::CREATED);
    // A concert without its own cap takes the backend's (3 here).
    let (_, round, seats) = concert(&sh, None, None).await;
    let (s, v) = hold(&sh.b, &honest, round, &seats[..4], None).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "seat_limit"), "{v}");
    assert_eq!(hold(&sh.b, &honest, round, &seats[..3], None).await.0, StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_seats_per_buyer_per_round() {
    seats_per_buyer(sqlite_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_seats_per_buyer_per_round() {
    let (_g, url) = PgDb::create().await;
    seats_per_buyer(url).await;
}

/// One admission shared by accounts buys no more than the cap; an admission given to a
/// signed-in buyer passes for that buyer only.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admissions_are_capped_and_bound_to_their_account() {
    let sh = shop(sqlite_url(), 4).await;
    let (_, round, seats) = concert(&sh, Some("hot"), Some(4)).await;
    let (x_id, x) = signup(&sh.b, "x@example.com").await;
    let (_, y) = signup(&sh.b, "y@example.com").await;
    let (s, v) = hold(&sh.b, &x, round, &seats[..1], None).await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "not_admitted"), "{v}");
    // An anonymous admission handed around: four seats for all its holders together.
    let shared = admission(&sh.keys, "hot", "anon:42", 1);
    assert_eq!(hold(&sh.b, &x, round, &seats[..3], Some(&shared)).await.0, StatusCode::CREATED);
    let (s, v) = hold(&sh.b, &y, round, &seats[3..5], Some(&shared)).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "admission_seat_limit"), "{v}");
    assert_eq!(hold(&sh.b, &y, round, &seats[3..4], Some(&shared)).await.0, StatusCode::CREATED);
    // An admission bound to x: refused to y, honoured for x (up to x's own cap).
    let bound = admission(&sh.keys, "hot", &x_id.to_string(), 2);
    let (s, v) = hold(&sh.b, &y, round, &seats[10..11], Some(&bound)).await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "admission_not_yours"), "{v}");
    assert_eq!(hold(&sh.b, &x, round, &seats[10..11], Some(&bound)).await.0, StatusCode::CREATED);
    let (s, v) = hold(&sh.b, &x, round, &seats[11..12], Some(&bound)).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "seat_limit"), "x holds 4 in this round: {v}");
}

/// A campaign for one concert (or round) discounts only it; a queued concert's coupons are
/// issued only to its admitted buyers, for their own account.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coupons_are_scoped_and_issued_behind_the_room() {
    let sh = shop(sqlite_url(), 4).await;
    let (c1, r1, seats1) = concert(&sh, None, None).await;
    let (_, r1b, seats1b) = add_round(&sh, c1).await;
    let (_, r2, seats2) = concert(&sh, None, None).await;
    let campaign = |scope: Value| {
        let mut c = json!({"name": "10% off", "discount_kind": "percent", "discount": 10, "stock": 100,
            "valid_from": "2020-01-01T00:00:00Z", "valid_until": "2099-01-01T00:00:00Z"});
        c.as_object_mut().unwrap().extend(scope.as_object().unwrap().clone());
        let b = Backend { base: sh.b.base.clone() };
        let admin = sh.admin.clone();
        async move { b.call("POST", "/admin/v1/coupon-campaigns", Some(c), &admin, &[]).await }
    };
    let (s, v, _) = campaign(json!({"concert_id": c1, "schedule_id": r2})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "a round of another concert: {v}");
    let (_, for_c1, _) = campaign(json!({"concert_id": c1})).await;
    let (_, for_r1, _) = campaign(json!({"schedule_id": r1})).await;
    assert_eq!(for_r1["concert_id"], c1, "a round's campaign knows its concert");
    let (_, buyer_token) = signup(&sh.b, "coupon@example.com").await;
    let issue = |campaign: &Value, token: &str, admission: Option<&str>| {
        let path = format!("/api/v1/coupons/{}/issue", campaign["id"]);
        let extra: Vec<(String, String)> =
            admission.map(|t| ("x-admission-token".to_owned(), t.to_owned())).into_iter().collect();
        let (b, token) = (Backend { base: sh.b.base.clone() }, token.to_owned());
        async move {
            let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            b.call("POST", &path, None, &token, &extra).await
        }
    };
    let coupon_c1 = issue(&for_c1, &buyer_token, None).await.1["coupon_id"].as_str().unwrap().to_owned();
    let coupon_r1 = issue(&for_r1, &buyer_token, None).await.1["coupon_id"].as_str().unwrap().to_owned();
    let prepare = |round: i64, seat: i64, coupon: String| {
        let (b, token) = (Backend { base: sh.b.base.clone() }, buyer_token.clone());
        async move {
            let (s, r) = hold(&b, &token, round, &[seat], None).await;
            assert_eq!(s, StatusCode::CREATED, "{r}");
            let body = json!({"reservation_id": r["reservation_id"], "coupon_id": coupon});
            b.call("POST", "/api/v1/payments/prepare", Some(body), &token, &[]).await
        }
    };
    let (s, v, _) = prepare(r2, seats2[0], coupon_c1.clone()).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "coupon_not_applicable"), "{v}");
    let (s, v, _) = prepare(r1b, seats1b[0], coupon_r1.clone()).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "coupon_not_applicable"), "another round: {v}");
    let (s, v, _) = prepare(r1b, seats1b[1], coupon_c1).await;
    assert_eq!((s, v["discount"].as_i64()), (StatusCode::OK, Some(1000)), "any round of its concert: {v}");
    let (s, v, _) = prepare(r1, seats1[0], coupon_r1).await;
    assert_eq!((s, v["discount"].as_i64()), (StatusCode::OK, Some(1000)), "its round: {v}");

    // A hot concert's campaign: fifteen fresh accounts without an admission get nothing.
    let (hot, _, _) = concert(&sh, Some("hot"), None).await;
    let (_, for_hot, _) = campaign(json!({"concert_id": hot})).await;
    assert_eq!(for_hot["protect_path"], format!("/api/v1/coupons/{}/", for_hot["id"]));
    for i in 0..15 {
        let (_, t) = signup(&sh.b, &format!("fresh{i}@example.com")).await;
        let (s, v, _) = issue(&for_hot, &t, None).await;
        assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "not_admitted"), "{v}");
    }
    let (fan_id, fan) = signup(&sh.b, "fan@example.com").await;
    let (_, other) = signup(&sh.b, "other@example.com").await;
    let theirs = admission(&sh.keys, "hot", &fan_id.to_string(), 7);
    let (s, v, _) = issue(&for_hot, &other, Some(&theirs)).await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "admission_not_yours"), "{v}");
    let (s, v, _) = issue(&for_hot, &fan, Some(&theirs)).await;
    assert_eq!(s, StatusCode::CREATED, "the admitted fan gets one: {v}");
    // One anonymous admission shared by eight accounts claims one coupon.
    let shared = admission(&sh.keys, "hot", "anon:shared", 8);
    let mut got = Vec::new();
    for i in 0..8 {
        let (_, t) = signup(&sh.b, &format!("puppet{i}@example.com")).await;
        let (s, v, _) = issue(&for_hot, &t, Some(&shared)).await;
        got.push((s, code(&v).to_owned()));
    }
    assert_eq!(got[0].0, StatusCode::CREATED, "{got:?}");
    assert!(
        got[1..].iter().all(|(s, c)| *s == StatusCode::CONFLICT && c == "admission_already_used"),
        "{got:?}"
    );
    let (_, open, _) = sh.b.call("GET", "/api/v1/coupons", None, &fan, &[]).await;
    let listed =
        open["items"].as_array().unwrap().iter().find(|c| c["campaign_id"] == for_hot["id"]).unwrap();
    assert_eq!((listed["remaining"].as_i64(), &listed["concert_id"]), (Some(98), &json!(hot)));
}

/// A hold whose payment is under way counts even once its time is up: confirming just before
/// the hold runs out does not open room for more seats.
async fn paying_holds_count(db: String) {
    let sh = shop_with(db, |c| {
        c.hold_ttl_s = 1;
        c.payments_timeout_ms = 3_000;
        c.reconcile_grace_s = 6;
    })
    .await;
    let (_, round, seats) = concert(&sh, None, Some(4)).await;
    let (_, buyer_token) = signup(&sh.b, "late@example.com").await;
    let (s, r) = hold(&sh.b, &buyer_token, round, &seats[..4], None).await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    let body = json!({"reservation_id": r["reservation_id"]});
    let (_, o, _) = sh.b.call("POST", "/api/v1/payments/prepare", Some(body), &buyer_token, &[]).await;
    let paying = {
        let (b, token) = (Backend { base: sh.b.base.clone() }, buyer_token.clone());
        let body = json!({"payment_key": "slow_late", "order_id": o["order_id"], "amount": o["amount"]});
        tokio::spawn(async move { b.call("POST", "/api/v1/payments/confirm", Some(body), &token, &[]).await })
    };
    // The provider takes 1.5 s: the hold's second runs out meanwhile.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let (s, v) = hold(&sh.b, &buyer_token, round, &seats[4..8], None).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "seat_limit"), "{v}");
    let (s, v, _) = paying.await.unwrap();
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("paid")), "{v}");
    let (s, v) = hold(&sh.b, &buyer_token, round, &seats[4..5], None).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "seat_limit"), "four bought: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_paying_holds_count_after_their_time() {
    paying_holds_count(sqlite_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_paying_holds_count_after_their_time() {
    let (_g, url) = PgDb::create().await;
    paying_holds_count(url).await;
}

/// Prepares are rows kept for the books: one reservation takes a bounded number of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_per_reservation_are_bounded() {
    let sh = shop(sqlite_url(), 4).await;
    let (_, round, seats) = concert(&sh, None, None).await;
    let (_, spammer) = signup(&sh.b, "spam@example.com").await;
    let (_, r) = hold(&sh.b, &spammer, round, &seats[..1], None).await;
    let body = json!({"reservation_id": r["reservation_id"]});
    let mut answers = Vec::new();
    for _ in 0..25 {
        let (s, v, _) =
            sh.b.call("POST", "/api/v1/payments/prepare", Some(body.clone()), &spammer, &[]).await;
        answers.push((s, code(&v).to_owned()));
    }
    assert!(answers[..20].iter().all(|(s, _)| *s == StatusCode::OK), "{answers:?}");
    assert!(
        answers[20..].iter().all(|(s, c)| *s == StatusCode::CONFLICT && c == "too_many_orders"),
        "{answers:?}"
    );
    // An honest buyer's reservation is unaffected.
    let (_, honest) = signup(&sh.b, "honest-payer@example.com").await;
    let (_, r) = hold(&sh.b, &honest, round, &seats[1..2], None).await;
    assert_eq!(pay(&sh.b, &honest, &r, None).await.0, StatusCode::OK);
}
