//! The whole system as `cargo run --release` starts it: the `waiting-room` process runs
//! the gateway in front of the real backend (embedded SQLite, demo catalog, payment simulator)
//! behind the room `demo`. A buyer signs up, queues, is admitted, and books a seat of the hot
//! concert; the backend checks the admission against the gateway's JWKS.

mod common;

use axum::http::{Method, StatusCode};
use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buyer_queues_and_books_through_the_all_in_one_system() {
    let dir = std::env::temp_dir().join(format!("wr-aio-{}", std::process::id()));
    let (_gw, addr, _) = start_all_in_one(&dir, None).await;
    let mut http = Http::new(addr);
    assert!(dir.join("data").exists(), "the embedded database lives under ./data");

    // The hot concert is the one sold through the room `demo`.
    let list = http.get("/api/v1/concerts?size=100").await.json();
    let hot = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["room"] == "demo")
        .expect("a hot concert")
        .clone();
    let rounds = http.get(&format!("/api/v1/concerts/{}/schedules", hot["id"])).await.json();
    let schedule = rounds[0]["id"].as_i64().unwrap();
    let seats = http.get(&format!("/api/v1/schedules/{schedule}/seats")).await.json();
    let seat = seats[0]["seat_id"].as_i64().unwrap();

    let signup =
        json!({"email": "buyer@example.com", "password": "buyer password", "name": "Buyer"}).to_string();
    let r = http
        .send(Method::POST, "/api/v1/auth/signup", &[("content-type", "application/json")], Some(signup))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let user = r.json()["token"].as_str().unwrap().to_owned();
    let bearer = format!("Bearer {user}");
    let reserve = json!({"schedule_id": schedule, "seat_ids": [seat]}).to_string();
    let hdrs = [
        ("authorization", bearer.as_str()),
        ("content-type", "application/json"),
        ("accept", "application/json"),
    ];

    // Not admitted yet: the gateway refuses.
    let r = http.send(Method::POST, "/api/v1/reservations", &hdrs, Some(reserve.clone())).await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::FORBIDDEN, "not_admitted"));

    // Queue (bound to the user), get admitted by the operator, fetch the admission.
    let r = http
        .send(Method::POST, "/api/v1/rooms/demo/tickets", &[("authorization", bearer.as_str())], None)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let ticket = r.json()["ticket"].as_str().unwrap().to_owned();
    let r = http.admin(Method::POST, "/admin/v1/rooms/demo/admit", Some(json!({"count": 1}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // The ticket is the user's: its cookie alone gets no admission, the user's poll does.
    let path = format!("/api/v1/rooms/demo/tickets/{ticket}");
    let st = http.get(&path).await.json();
    assert_eq!(st["state"], "admitted", "{st}");
    assert!(st.get("admission").is_none(), "{st}");
    let st = http.send(Method::GET, &path, &[("authorization", bearer.as_str())], None).await.json();
    assert!(st["admission"]["token"].is_string(), "{st}");

    // Admitted: the backend verifies the token itself and holds the seat.
    let r = http.send(Method::POST, "/api/v1/reservations", &hdrs, Some(reserve)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json()["status"], "held");
    let page = http.send(Method::GET, &format!("/book/{schedule}"), &[("accept", "text/html")], None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.text.contains("seat held"), "the seat map shows the hold");
    let mine =
        http.send(Method::GET, "/api/v1/me/reservations", &[("authorization", bearer.as_str())], None).await;
    assert_eq!(mine.json()["items"][0]["status"], "held", "{}", mine.text);

    // The storefront, in Korean when asked.
    let home =
        http.send(Method::GET, "/", &[("accept", "text/html"), ("accept-language", "ko-KR")], None).await;
    assert_eq!(home.status, StatusCode::OK);
    assert!(home.text.contains("lang=\"ko\"") && home.text.contains(hot["title"].as_str().unwrap()));
    let found = http.send(Method::GET, "/?q=%EC%97%AC%EB%A6%84", &[("accept", "text/html")], None).await;
    assert_eq!(found.status, StatusCode::OK);
    let detail =
        http.send(Method::GET, &format!("/concerts/{}", hot["id"]), &[("accept", "text/html")], None).await;
    assert!(
        detail.text.contains("waiting room") && detail.text.contains(&format!("/book/{schedule}")),
        "{}",
        detail.text
    );
    assert_eq!(http.send(Method::GET, "/me", &[("accept", "text/html")], None).await.status, StatusCode::OK);
    let _ = std::fs::remove_dir_all(&dir);
}
