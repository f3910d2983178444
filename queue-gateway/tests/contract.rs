//! Contract tests for DESIGN §4, in process on port 0, with the memory and the Redis store.

mod common;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use common::*;
use queue_core::testkit::{RedisServer, unique_room};
use queue_gateway::config::GatewayConfig;
use serde_json::json;

async fn gateway(redis: Option<String>) -> (queue_gateway::Running, Http) {
    gateway_with(redis, |_| {}).await
}

async fn gateway_with(
    redis: Option<String>,
    tweak: impl FnOnce(&mut GatewayConfig),
) -> (queue_gateway::Running, Http) {
    let up = upstream().await;
    let mut cfg = config(up, redis);
    tweak(&mut cfg);
    let gw = queue_gateway::spawn(cfg).await.unwrap();
    let http = Http::new(gw.addr);
    (gw, http)
}

/// A paused room protecting `/book/{room}/` (rooms of tests sharing a Redis must not overlap).
fn paused_room(room: &queue_core::RoomId) -> serde_json::Value {
    json!({"protect": [format!("/book/{room}/")], "target": format!("/book/{room}/"), "batch_size": 100, "tick_interval_ms": 100, "paused": true})
}

async fn join_and_admit(http: &mut Http, room: &str) -> String {
    let r = http.post(&format!("/api/v1/rooms/{room}/tickets")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let ticket = r.json()["ticket"].as_str().unwrap().to_owned();
    let a =
        http.admin(Method::POST, &format!("/admin/v1/rooms/{room}/admit"), Some(json!({"count": 1}))).await;
    assert_eq!(a.json()["admitted"], 1, "{}", a.text);
    ticket
}

pub async fn join_status_leave(redis: Option<String>) {
    let (gw, mut http) = gateway(redis).await;
    let room = unique_room("c");
    put_room(&mut http, room.as_str(), paused_room(&room)).await;
    let r = http.post(&format!("/api/v1/rooms/{room}/tickets")).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let j = r.json();
    for field in ["ticket", "room", "state", "position", "eta_seconds", "poll_after_ms"] {
        assert!(j.get(field).is_some(), "join answer lacks {field}: {j}");
    }
    assert_eq!(j["state"], "waiting");
    assert_eq!(j["position"], 1);
    let cookie = r.headers.get("set-cookie").unwrap().to_str().unwrap().to_owned();
    assert!(
        cookie.starts_with(&format!("wr_{room}="))
            && cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Lax")
    );
    let ticket = j["ticket"].as_str().unwrap().to_owned();

    // Joining again with the cookie: the same ticket, 200.
    let again = http.post(&format!("/api/v1/rooms/{room}/tickets")).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json()["ticket"], ticket);

    // Someone else is second.
    let mut other = Http::new(gw.addr);
    let o = other.post(&format!("/api/v1/rooms/{room}/tickets")).await;
    assert_eq!(o.json()["position"], 2);

    let s = http.get(&format!("/api/v1/rooms/{room}/tickets/{ticket}")).await;
    assert_eq!(s.status, StatusCode::OK);
    assert_eq!(s.json()["state"], "waiting");
    assert!(s.json().get("admission").is_none());
    // Polls skip the router; one with a percent-escape in its path goes through it, alike.
    let escaped = format!("/api/v1/rooms/{room}/tickets/%{:02X}{}", ticket.as_bytes()[0], &ticket[1..]);
    let e = http.get(&escaped).await;
    assert_eq!(e.status, StatusCode::OK);
    for field in ["ticket", "state", "position", "poll_after_ms"] {
        assert_eq!(e.json()[field], s.json()[field], "{field}");
    }

    let state = http.get(&format!("/api/v1/rooms/{room}")).await.json();
    assert_eq!(
        (state["room"].as_str(), state["state"].as_str(), state["waiting"].as_u64()),
        (Some(room.as_str()), Some("paused"), Some(2))
    );
    for field in ["active", "admitted_per_minute", "opens_at"] {
        assert!(state.get(field).is_some(), "room state lacks {field}");
    }

    // Only the holder may leave.
    let o_ticket = o.json()["ticket"].as_str().unwrap().to_owned();
    let denied =
        http.send(Method::DELETE, &format!("/api/v1/rooms/{room}/tickets/{o_ticket}"), &[], None).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    let left = http.send(Method::DELETE, &format!("/api/v1/rooms/{room}/tickets/{ticket}"), &[], None).await;
    assert_eq!(left.status, StatusCode::NO_CONTENT);
    assert!(!http.cookies.contains_key(&format!("wr_{room}")), "leaving clears the cookie");
    let s = other.get(&format!("/api/v1/rooms/{room}/tickets/{ticket}")).await;
    // The contract's four states: a ticket that left reads as dropped.
    assert_eq!(s.json()["state"], "dropped");
    assert_eq!(other.get(&format!("/api/v1/rooms/{room}/tickets/{o_ticket}")).await.json()["position"], 1);

    // Unknown and malformed things.
    let r = http.post("/api/v1/rooms/no-such-room/tickets").await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::NOT_FOUND, "unknown_room"));
    let r = http.post("/api/v1/rooms/Bad_Room/tickets").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = http.get(&format!("/api/v1/rooms/{room}/tickets/0000000000000099aaaaaaaaaaaaaaaa")).await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::NOT_FOUND, "unknown_ticket"));
    let r = http.get(&format!("/api/v1/rooms/{room}/tickets/not-a-ticket")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    gw.stop().await.unwrap();
}

/// Polls arriving together are answered by shared store reads: each must still get its own
/// ticket's status, an unknown ticket its 404 and another room's ticket its own room's answer.
/// Leaving after admission ends the admission: its place goes to the next buyer, and the
/// token, though signed and unexpired, no longer opens the protected paths — here at once,
/// for a browser that kept the cookies the leave cleared.
pub async fn leaving_ends_the_admission(redis: Option<String>) {
    let (_gw, mut http) = gateway(redis).await;
    let room = unique_room("revoke");
    put_room(&mut http, room.as_str(), paused_room(&room)).await;
    let ticket = join_and_admit(&mut http, room.as_str()).await;
    http.get(&format!("/api/v1/rooms/{room}/tickets/{ticket}")).await;
    let path = format!("/book/{room}/seat/1");
    assert_eq!(http.get(&path).await.status, StatusCode::OK);
    let kept = http.clone();
    let r = http.send(Method::DELETE, &format!("/api/v1/rooms/{room}/tickets/{ticket}"), &[], None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert!(http.cookies.is_empty(), "the leave clears both cookies: {:?}", http.cookies);
    let mut kept = kept;
    let r = kept.get(&path).await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::FORBIDDEN, "not_admitted"), "{}", r.text);
    let state = http.get(&format!("/api/v1/rooms/{room}")).await.json();
    assert_eq!(state["active"], 0, "the place went back: {state}");
    let metrics = http.get("/metrics").await.text;
    assert!(metrics.contains("waitingroom_token_verifications_total{result=\"revoked\"} 1"), "{metrics}");
}

pub async fn concurrent_polls_get_their_own_answers(redis: Option<String>) {
    let (gw, mut http) = gateway(redis).await;
    let (a, b) = (unique_room("pa"), unique_room("pb"));
    put_room(&mut http, a.as_str(), paused_room(&a)).await;
    put_room(&mut http, b.as_str(), paused_room(&b)).await;
    let mut holders = Vec::new();
    for i in 0..240 {
        let room = if i % 3 == 2 { &b } else { &a };
        let mut h = Http::new(gw.addr);
        let r = h.post(&format!("/api/v1/rooms/{room}/tickets")).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        holders.push((
            room.to_string(),
            r.json()["ticket"].as_str().unwrap().to_owned(),
            r.json()["position"].clone(),
            h,
        ));
    }
    let mut polls = tokio::task::JoinSet::new();
    for (i, (room, ticket, position, mut h)) in (1_000_000u64..).zip(holders) {
        polls.spawn(async move {
            for _ in 0..3 {
                let r = h.get(&format!("/api/v1/rooms/{room}/tickets/{ticket}")).await;
                assert_eq!(r.status, StatusCode::OK, "{}", r.text);
                let j = r.json();
                assert_eq!(
                    (j["ticket"].as_str().unwrap(), j["room"].as_str().unwrap()),
                    (ticket.as_str(), room.as_str())
                );
                assert_eq!(j["position"], position, "{ticket} in {room}");
            }
        });
        let (mut stranger, room) = (Http::new(gw.addr), a.to_string());
        // A well-formed id whose sequence number no join has reached.
        let unknown = format!("{i:016x}{:016x}", 0xaaaa_u64);
        polls.spawn(async move {
            let r = stranger.get(&format!("/api/v1/rooms/{room}/tickets/{unknown}")).await;
            assert_eq!(
                (r.status, r.error_code()),
                (StatusCode::NOT_FOUND, "unknown_ticket".to_owned()),
                "{}",
                r.text
            );
        });
    }
    while let Some(done) = polls.join_next().await {
        done.unwrap();
    }
    gw.stop().await.unwrap();
}

pub async fn admission_is_bound_to_the_cookie(redis: Option<String>) {
    let (gw, mut http) = gateway(redis).await;
    let room = unique_room("bind");
    put_room(&mut http, room.as_str(), paused_room(&room)).await;
    let ticket = join_and_admit(&mut http, room.as_str()).await;

    // A stranger with the ticket id sees the state but not the token.
    let mut stranger = Http::new(gw.addr);
    let s = stranger.get(&format!("/api/v1/rooms/{room}/tickets/{ticket}")).await;
    assert_eq!(s.json()["state"], "admitted");
    assert!(s.json().get("admission").is_none(), "a ticket id alone must not fetch the token");

    let s = http.get(&format!("/api/v1/rooms/{room}/tickets/{ticket}")).await;
    let token = s.json()["admission"]["token"].as_str().unwrap().to_owned();
    assert!(s.json()["admission"]["expires_at"].is_string());
    assert!(http.cookies.contains_key(&format!("wr_admission_{room}")));
    let c = claims(&token);
    assert_eq!(
        (c["sub"].as_str(), c["jti"].as_str()),
        (Some(format!("anon:{ticket}").as_str()), Some(ticket.as_str()))
    );

    // The holder passes; the backend gets the token, and the site's own cookies but not the
    // gateway's (the ticket cookie's secret would let it fetch the token).
    http.cookies.insert("theme".into(), "dark".into());
    let r = http.get(&format!("/book/{room}/seat/1")).await;
    http.cookies.remove("theme");
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let echoed = r.json();
    assert_eq!(echoed["headers"]["x-admission-token"], token);
    assert!(echoed["headers"]["x-forwarded-for"].is_string());
    assert_eq!(echoed["headers"]["cookie"], "theme=dark", "{echoed}");

    // The same token copied without its ticket cookie: refused (403, or 303 for browsers).
    let hdr = [("x-admission-token", token.as_str()), ("accept", "application/json")];
    let r = stranger.send(Method::GET, &format!("/book/{room}/seat/1"), &hdr, None).await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::FORBIDDEN, "not_admitted"));
    stranger.cookies.insert(format!("wr_admission_{room}"), token.clone());
    let r =
        stranger.send(Method::GET, &format!("/book/{room}/seat/1"), &[("accept", "text/html")], None).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.headers["location"], format!("/rooms/{room}?return=%2Fbook%2F{room}%2Fseat%2F1"));

    // Another room's token, and a forged one, are refused even with the cookie.
    let other_room = unique_room("bind2");
    put_room(
        &mut http,
        other_room.as_str(),
        json!({"protect": [format!("/other/{other_room}/")], "paused": true}),
    )
    .await;
    join_and_admit(&mut http, other_room.as_str()).await;
    let other_token = {
        let t = http.get(&format!("/api/v1/rooms/{other_room}")).await;
        assert!(t.status.is_success());
        let tk = http.cookies.get(&format!("wr_{other_room}")).unwrap().split('.').next().unwrap().to_owned();
        http.get(&format!("/api/v1/rooms/{other_room}/tickets/{tk}")).await.json()["admission"]["token"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let mut h = http.clone();
    h.cookies.insert(format!("wr_admission_{room}"), other_token);
    assert_eq!(h.get(&format!("/book/{room}/x")).await.status, StatusCode::FORBIDDEN);
    let mut forged = token.clone();
    forged.replace_range(forged.len() - 5.., "AAAAA");
    h.cookies.insert(format!("wr_admission_{room}"), forged);
    assert_eq!(h.get(&format!("/book/{room}/x")).await.status, StatusCode::FORBIDDEN);

    // Unprotected paths pass without anything, and a client's own X-Admission-Token is dropped.
    let r =
        stranger.send(Method::GET, "/api/v1/concerts?page=1", &[("x-admission-token", "fake")], None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.json()["headers"].get("x-admission-token").is_none());
    assert_eq!(r.json()["uri"], "/api/v1/concerts?page=1");
    gw.stop().await.unwrap();
}

pub async fn user_bound_tickets(redis: Option<String>) {
    let (gw, mut http) = gateway(redis).await;
    let room = unique_room("user");
    put_room(&mut http, room.as_str(), paused_room(&room)).await;
    let bearer = format!("Bearer {}", user_token("alice"));
    let r = http
        .send(Method::POST, &format!("/api/v1/rooms/{room}/tickets"), &[("authorization", &bearer)], None)
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let ticket = r.json()["ticket"].as_str().unwrap().to_owned();
    // Another device of the same user: same ticket.
    let mut phone = Http::new(gw.addr);
    let r = phone
        .send(Method::POST, &format!("/api/v1/rooms/{room}/tickets"), &[("authorization", &bearer)], None)
        .await;
    assert_eq!((r.status, r.json()["ticket"].as_str()), (StatusCode::OK, Some(ticket.as_str())));
    http.admin(Method::POST, &format!("/admin/v1/rooms/{room}/admit"), Some(json!({"count": 1}))).await;
    // The bound user gets the token (and the ticket cookie) without holding the cookie.
    let mut laptop = Http::new(gw.addr);
    let s = laptop
        .send(
            Method::GET,
            &format!("/api/v1/rooms/{room}/tickets/{ticket}"),
            &[("authorization", &bearer)],
            None,
        )
        .await;
    assert!(s.json()["admission"]["token"].is_string(), "{}", s.text);
    assert_eq!(
        claims(s.json()["admission"]["token"].as_str().unwrap())["sub"],
        "alice",
        "a bound user's token names them"
    );
    assert!(laptop.cookies.contains_key(&format!("wr_{room}")));
    assert_eq!(laptop.get(&format!("/book/{room}/1")).await.status, StatusCode::OK);
    // Another user may not.
    let eve = format!("Bearer {}", user_token("eve"));
    let s = Http::new(gw.addr)
        .send(
            Method::GET,
            &format!("/api/v1/rooms/{room}/tickets/{ticket}"),
            &[("authorization", &eve)],
            None,
        )
        .await;
    assert!(s.json().get("admission").is_none());
    // The ticket cookie of a signed-in join admits nobody by itself: polled without alice's
    // token, or with eve's, it shows the place but hands out no (anonymous) admission.
    assert!(http.cookies.contains_key(&format!("wr_{room}")), "the joiner got the ticket cookie");
    let path = format!("/api/v1/rooms/{room}/tickets/{ticket}");
    let s = http.get(&path).await;
    assert_eq!(s.json()["state"], "admitted", "{}", s.text);
    assert!(s.json().get("admission").is_none(), "a cookie alone got an admission: {}", s.text);
    let s = http.send(Method::GET, &path, &[("authorization", &eve)], None).await;
    assert!(s.json().get("admission").is_none(), "eve with alice's cookie got an admission: {}", s.text);
    let s = http.send(Method::GET, &path, &[("authorization", &bearer)], None).await;
    assert_eq!(claims(s.json()["admission"]["token"].as_str().unwrap())["sub"], "alice", "{}", s.text);
    // A bad user token is a 401.
    let r = Http::new(gw.addr)
        .send(
            Method::POST,
            &format!("/api/v1/rooms/{room}/tickets"),
            &[("authorization", "Bearer x.y.z")],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // On the waiting page, a browser reads it as a page that asks to sign in again.
    let bad = [("authorization", "Bearer x.y.z"), ("accept", "text/html")];
    let r = Http::new(gw.addr).send(Method::GET, &format!("/rooms/{room}"), &bad, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.text.contains("Sign-in not valid"), "{}", r.text);
    gw.stop().await.unwrap();
}

pub async fn admin_api(redis: Option<String>) {
    let (gw, mut http) = gateway(redis).await;
    let room = unique_room("adm");
    let path = format!("/admin/v1/rooms/{room}");
    let r = http.send(Method::GET, "/admin/v1/rooms", &[], None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = http
        .send(Method::GET, "/admin/v1/rooms", &[("authorization", "Bearer wrong-token-xxxxxxxx")], None)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = http.admin(Method::PUT, &path, Some(json!({"batch_size": 0}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("batch_size"), "{}", r.text);
    let r = http.admin(Method::PUT, &path, Some(json!({"bogus": 1}))).await;
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("bogus"));
    let r = http
        .send(Method::PUT, &path, &[("authorization", &format!("Bearer {ADMIN}"))], Some("{not json".into()))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        http.admin(Method::GET, &path, None).await.status,
        StatusCode::NOT_FOUND,
        "a refused PUT creates nothing"
    );
    let r = http.admin(Method::PUT, &path, Some(json!({"batch_size": 7, "paused": true}))).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = http.admin(Method::PUT, &path, Some(json!({"batch_size": 8, "paused": true}))).await;
    assert_eq!(r.status, StatusCode::OK);
    let g = http.admin(Method::GET, &path, None).await.json();
    assert_eq!((g["batch_size"].as_u64(), g["state"].as_str()), (Some(8), Some("paused")));
    assert_eq!(g["session_ttl_s"], 600, "omitted fields take defaults");
    let list = http.admin(Method::GET, "/admin/v1/rooms", None).await.json();
    assert!(list["rooms"].as_array().unwrap().iter().any(|r| r["room"] == room.as_str()));
    let r = http.admin(Method::POST, &format!("{path}/resume"), None).await;
    assert_eq!(r.json()["state"], "open");
    let r = http.admin(Method::POST, &format!("{path}/pause"), None).await;
    assert_eq!(r.json()["state"], "paused");
    let r = http.admin(Method::POST, &format!("{path}/admit"), Some(json!({"count": 0}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = http.admin(Method::POST, &format!("{path}/admit"), Some(json!({"count": "x"}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let big = json!({"target": format!("/{}", "a".repeat(70_000))});
    let r = http.admin(Method::PUT, &path, Some(big)).await;
    assert!(r.status == StatusCode::PAYLOAD_TOO_LARGE || r.status == StatusCode::BAD_REQUEST, "{}", r.status);
    assert_eq!(http.admin(Method::DELETE, &path, None).await.status, StatusCode::NO_CONTENT);
    assert_eq!(http.admin(Method::DELETE, &path, None).await.status, StatusCode::NOT_FOUND);
    gw.stop().await.unwrap();
}

pub async fn operational_endpoints(redis: Option<String>) {
    let (gw, mut http) = gateway(redis).await;
    let room = unique_room("ops");
    put_room(&mut http, room.as_str(), paused_room(&room)).await;
    http.post(&format!("/api/v1/rooms/{room}/tickets")).await;
    let jwks = http.get("/.well-known/jwks.json").await.json();
    assert_eq!(jwks["keys"][0]["kty"], "OKP");
    assert_eq!(jwks["keys"][0]["alg"], "EdDSA");
    assert_eq!(http.get("/healthz").await.status, StatusCode::OK);
    assert_eq!(http.get("/readyz").await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let m = http.get("/metrics").await.text;
    for name in [
        "waitingroom_tickets_joined_total",
        "waitingroom_waiting",
        "waitingroom_active",
        "waitingroom_http_requests_total",
        "waitingroom_http_request_duration_seconds",
        "waitingroom_sse_connections",
    ] {
        assert!(m.contains(name), "metric {name} missing");
    }
    assert!(m.contains(&format!("waitingroom_waiting{{room=\"{room}\"}} 1")), "{m}");
    gw.stop().await.unwrap();
}

pub async fn sse_delivers_position_and_admission(redis: Option<String>) {
    let (gw, mut http) = gateway(redis).await;
    let room = unique_room("sse");
    put_room(&mut http, room.as_str(), paused_room(&room)).await;
    let r = http.post(&format!("/api/v1/rooms/{room}/tickets")).await;
    let ticket = r.json()["ticket"].as_str().unwrap().to_owned();
    // A stranger may not follow the ticket.
    let mut stranger = Http::new(gw.addr);
    let s = stranger.get(&format!("/api/v1/rooms/{room}/tickets/{ticket}/events")).await;
    assert_eq!(s.status, StatusCode::FORBIDDEN);
    // The holder's stream: position first, then admitted with a token.
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let cookie = format!("wr_{room}={}", http.cookies[&format!("wr_{room}")]);
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(format!("GET /api/v1/rooms/{room}/tickets/{ticket}/events HTTP/1.1\r\nhost: x\r\ncookie: {cookie}\r\naccept: text/event-stream\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !seen.contains("event: position") && tokio::time::Instant::now() < deadline {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.unwrap().unwrap();
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("text/event-stream"), "{seen}");
    assert!(seen.contains("event: position") && seen.contains("\"position\":1"), "{seen}");
    http.admin(Method::POST, &format!("/admin/v1/rooms/{room}/admit"), Some(json!({"count": 1}))).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    // Until the whole `admitted` event is in (its blank line), which may span reads.
    let admitted_event =
        |seen: &str| seen.split("event: admitted").nth(1).is_some_and(|e| e.contains("\n\n"));
    while !admitted_event(&seen) && tokio::time::Instant::now() < deadline {
        let n = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf)).await.unwrap().unwrap();
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("event: admitted") && seen.contains("\"token\":\"ey"), "{seen}");
    let token = seen.split("\"token\":\"").nth(1).and_then(|t| t.split('"').next()).unwrap();
    assert_eq!(
        claims(token)["sub"],
        format!("anon:{ticket}"),
        "the stream's token names the anonymous holder"
    );
    // Nothing follows `admitted`: the stream ends (the chunked body's last chunk).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while !seen.ends_with("0\r\n\r\n") && tokio::time::Instant::now() < deadline {
        let n = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf)).await.unwrap().unwrap();
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.ends_with("0\r\n\r\n"), "the stream did not end after admitted: {seen}");
    gw.stop().await.unwrap();
}

/// The claims of a token (read, not verified: the tests verify through the gateway).
fn claims(token: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap())
        .unwrap()
}

/// Joins `room` as `http`: the ticket id and the `cookie` header that proves holding it.
async fn join_as(http: &mut Http, room: &str) -> (String, String) {
    let r = http.post(&format!("/api/v1/rooms/{room}/tickets")).await;
    let ticket = r.json()["ticket"].as_str().unwrap().to_owned();
    (ticket, format!("wr_{room}={}", http.cookies[&format!("wr_{room}")]))
}

/// Reads `stream` into `seen` until `seen` holds `what` (a read times out after 4 s).
async fn read_until(stream: &mut tokio::net::TcpStream, seen: &mut String, what: &str) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    while !seen.contains(what) {
        let n = tokio::time::timeout(Duration::from_secs(4), stream.read(&mut buf)).await;
        let n = n.unwrap_or_else(|_| panic!("no {what} in {seen}")).unwrap();
        assert!(n > 0, "closed before {what}: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

/// A leave from the queue moves everyone behind it, and their streams hear of it without a
/// tick or an operator. This holds with or without the push on the store's `left` event (the
/// once-a-second poll delivers it too): that the store publishes it is the conformance test's,
/// how much sooner the push is, `sse_bench.sh`'s to show.
pub async fn sse_hears_of_a_leave_ahead(redis: Option<String>) {
    use tokio::io::AsyncWriteExt;
    let (gw, mut ahead) = gateway(redis).await;
    let room = unique_room("sle");
    put_room(&mut ahead, room.as_str(), paused_room(&room)).await;
    let (first, _) = join_as(&mut ahead, room.as_str()).await;
    let (ticket, cookie) = join_as(&mut Http::new(gw.addr), room.as_str()).await;
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let req = format!(
        "GET /api/v1/rooms/{room}/tickets/{ticket}/events HTTP/1.1\r\nhost: x\r\ncookie: {cookie}\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, "\"position\":2").await;
    let left = ahead.send(Method::DELETE, &format!("/api/v1/rooms/{room}/tickets/{first}"), &[], None).await;
    assert_eq!(left.status, StatusCode::NO_CONTENT, "{}", left.text);
    read_until(&mut stream, &mut seen, "\"position\":1").await;
    gw.stop().await.unwrap();
}

/// A stream asked for after another request on a kept-alive connection is served by hyper,
/// not by the new-connection path: the same events either way.
pub async fn sse_on_a_kept_alive_connection(redis: Option<String>) {
    use tokio::io::AsyncWriteExt;
    let (gw, mut http) = gateway(redis).await;
    let room = unique_room("ska");
    put_room(&mut http, room.as_str(), paused_room(&room)).await;
    let (ticket, cookie) = join_as(&mut http, room.as_str()).await;
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let path = format!("/api/v1/rooms/{room}/tickets/{ticket}");
    let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\ncookie: {cookie}\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, "}").await;
    assert!(seen.starts_with("HTTP/1.1 200") && seen.contains("\"position\":1"), "{seen}");
    let req = format!("GET {path}/events HTTP/1.1\r\nhost: x\r\ncookie: {cookie}\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    seen.clear();
    read_until(&mut stream, &mut seen, "event: position").await;
    assert!(seen.contains("text/event-stream") && seen.contains("\"position\":1"), "{seen}");
    gw.stop().await.unwrap();
}

pub async fn upstream_failures(redis: Option<String>) {
    let (gw, mut http) = gateway_with(redis, |c| {
        c.limits.upstream_timeout_ms = 500;
    })
    .await;
    let r = http.get("/slow").await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"));
    gw.stop().await.unwrap();
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let mut cfg = config(dead, None);
    cfg.upstream = Some(format!("http://{dead}"));
    let gw = queue_gateway::spawn(cfg).await.unwrap();
    let r = Http::new(gw.addr).get("/anything").await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::BAD_GATEWAY, "bad_gateway"));
    gw.stop().await.unwrap();
}

pub async fn waiting_page(redis: Option<String>) {
    let (gw, mut http) = gateway(redis).await;
    let room = unique_room("page");
    put_room(&mut http, room.as_str(), paused_room(&room)).await;
    let mut browser = Http::new(gw.addr);
    let html = [("accept", "text/html"), ("accept-language", "ko-KR,ko;q=0.9,en;q=0.5")];
    let r =
        browser.send(Method::GET, &format!("/rooms/{room}?return=/book/{room}/seat/9"), &html, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(browser.cookies.contains_key(&format!("wr_{room}")), "the first visit joins");
    assert!(r.text.contains("lang=\"ko\"") && r.text.contains("대기실"), "Korean by Accept-Language");
    assert!(r.text.contains("aria-live=\"polite\"") && r.text.contains("<progress"));
    assert!(r.text.contains("http-equiv=\"refresh\""), "works without JS");
    assert!(r.text.contains("EventSource"), "follows the ticket with JS");
    // A second visit keeps the same ticket.
    let waiting = http.get(&format!("/api/v1/rooms/{room}")).await.json()["waiting"].clone();
    let r = browser.send(Method::GET, &format!("/rooms/{room}"), &[("accept", "text/html")], None).await;
    assert!(r.text.contains("lang=\"en\""));
    assert_eq!(http.get(&format!("/api/v1/rooms/{room}")).await.json()["waiting"], waiting);
    // Once admitted: the admission cookie and a redirect to the page asked for.
    http.admin(Method::POST, &format!("/admin/v1/rooms/{room}/admit"), Some(json!({"count": 1}))).await;
    let r = browser.send(Method::GET, &format!("/rooms/{room}?return=/book/{room}/seat/9"), &[], None).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.headers["location"], format!("/book/{room}/seat/9"));
    assert!(browser.cookies.contains_key(&format!("wr_admission_{room}")));
    assert_eq!(browser.get(&format!("/book/{room}/seat/9")).await.status, StatusCode::OK);
    // An off-site return is ignored in favour of the room's target.
    let r = browser.send(Method::GET, &format!("/rooms/{room}?return=//evil.example/x"), &[], None).await;
    assert_eq!(r.headers["location"], format!("/book/{room}/"));
    assert_eq!(http.get("/rooms/no-such-room").await.error_code(), "unknown_room");
    // A browser following a stale link reads why, in its language, as a page (and no ticket).
    let r = Http::new(gw.addr).send(Method::GET, "/rooms/no-such-room", &html, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.headers["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(r.text.contains("lang=\"ko\"") && r.text.contains("대기실이 없습니다"), "{}", r.text);
    assert!(!r.text.contains("http-equiv=\"refresh\""), "a missing room does not come back by waiting");
    let r = Http::new(gw.addr).send(Method::GET, "/rooms/Not_A_Room", &html, None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text.contains("잘못된 주소"), "{}", r.text);
    gw.stop().await.unwrap();
}

macro_rules! contract {
    ($name:ident, $redis:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn join_status_leave() {
                super::join_status_leave($redis).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn admission_is_bound_to_the_cookie() {
                super::admission_is_bound_to_the_cookie($redis).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn leaving_ends_the_admission() {
                super::leaving_ends_the_admission($redis).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn user_bound_tickets() {
                super::user_bound_tickets($redis).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_polls_get_their_own_answers() {
                super::concurrent_polls_get_their_own_answers($redis).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sse_on_a_kept_alive_connection() {
                super::sse_on_a_kept_alive_connection($redis).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sse_hears_of_a_leave_ahead() {
                super::sse_hears_of_a_leave_ahead($redis).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn admin_api() {
                super::admin_api($redis).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn operational_endpoints() {
                super::operational_endpoints($redis).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sse_delivers_position_and_admission() {
                super::sse_delivers_position_and_admission($redis).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn waiting_page() {
                super::waiting_page($redis).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn upstream_failures() {
                super::upstream_failures($redis).await
            }
        }
    };
}

contract!(memory, None);
contract!(redis, Some(RedisServer::shared().url()));

/// A status poll is answered on the thread that serves it: each serving thread opens a Redis
/// connection of its own after its first poll (and only one), instead of handing every poll
/// to one shared connection on another thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_serving_thread_polls_over_its_own_connection() {
    let redis = RedisServer::start();
    let mut counter = redis.connect().unwrap();
    let mut clients = || counter.connected_clients().unwrap();
    let (gw, mut admin) = gateway_with(Some(redis.url()), |c| c.limits.workers = 3).await;
    // Three connections before any other: the accept loop hands each to the least loaded
    // worker, so each worker serves exactly one of them.
    let mut pollers = Vec::new();
    for _ in 0..3 {
        pollers.push(tokio::net::TcpStream::connect(gw.addr).await.unwrap());
    }
    let room = unique_room("local");
    put_room(&mut admin, room.as_str(), paused_room(&room)).await;
    let before = clients();
    let mut tickets = Vec::new();
    for _ in 0..3 {
        let joined = Http::new(gw.addr).post(&format!("/api/v1/rooms/{room}/tickets")).await;
        tickets.push(joined.json()["ticket"].clone());
    }
    for round in 0..5 {
        for (i, (stream, ticket)) in pollers.iter_mut().zip(&tickets).enumerate() {
            let path = format!("/api/v1/rooms/{room}/tickets/{}", ticket.as_str().unwrap());
            let body = get_on(stream, &path).await;
            assert_eq!(body["position"], i + 1, "{body}");
        }
        if round == 0 {
            // Each opens in the background after its thread's first poll.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while clients() < before + 3 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(clients(), before + 3, "one connection per serving thread");
        }
    }
    assert_eq!(clients(), before + 3, "and no more with more polls");
    drop(pollers);
    gw.stop().await.unwrap();
}

/// A `200` JSON answer to a GET on a kept-alive connection of the caller's.
async fn get_on(stream: &mut tokio::net::TcpStream, path: &str) -> serde_json::Value {
    use tokio::io::AsyncWriteExt;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes()).await.unwrap();
    let mut seen = String::new();
    read_until(stream, &mut seen, "\r\n\r\n").await;
    let (head, _) = seen.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap())
        })
        .unwrap();
    let body_at = head.len() + 4;
    while seen.len() < body_at + length {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(4), tokio::io::AsyncReadExt::read(stream, &mut buf));
        let n = n.await.expect("the body came").unwrap();
        assert!(n > 0, "closed in the body");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    serde_json::from_str(&seen[body_at..]).unwrap()
}

/// A serving thread that cannot open its own Redis connection answers its joins and polls
/// through the shared one without waiting for it, and opens its own once it can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serving_thread_without_its_own_connection_polls_through_the_shared_one() {
    let redis = RedisServer::start();
    let (gw, mut http) = gateway_with(Some(redis.url()), |c| c.limits.workers = 1).await;
    let room = unique_room("fallback");
    put_room(&mut http, room.as_str(), paused_room(&room)).await;
    // One connection kept for commands: with `maxclients` at the count of connections, Redis
    // refuses every new one (the gateway's shared connection is already open).
    let mut admin = redis.connect().unwrap();
    let before = admin.connected_clients().unwrap();
    assert!(admin.command(&format!("CONFIG SET maxclients {before}")).unwrap().starts_with("+OK"));
    // The thread's first store request (a join goes through its own connection too) starts
    // the attempt that now fails.
    let join = format!("/api/v1/rooms/{room}/tickets");
    let joined = tokio::time::timeout(Duration::from_secs(3), http.post(&join)).await.expect("a join waited");
    let ticket = joined.json()["ticket"].clone();
    let poll = format!("/api/v1/rooms/{room}/tickets/{}", ticket.as_str().unwrap());
    for _ in 0..3 {
        // Far under the ~10 s the failing connection attempt takes with its retries.
        let st = tokio::time::timeout(Duration::from_secs(3), http.get(&poll)).await.expect("a poll waited");
        assert_eq!((st.status, st.json()["position"].clone()), (StatusCode::OK, json!(1)), "{}", st.text);
    }
    assert_eq!(admin.connected_clients().unwrap(), before, "no connection of its own yet");
    assert!(admin.command("CONFIG SET maxclients 10000").unwrap().starts_with("+OK"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while admin.connected_clients().unwrap() == before && tokio::time::Instant::now() < deadline {
        let st = http.get(&poll).await;
        assert_eq!(st.status, StatusCode::OK, "{}", st.text);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(admin.connected_clients().unwrap(), before + 1, "its own connection, once it could");
    gw.stop().await.unwrap();
}

/// Forwarded requests reuse the serving thread's kept-alive backend connection, and a
/// connection the backend closed while it sat idle is replaced, not answered with a `502`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_connections_are_reused_and_replaced() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // A backend that answers two requests per connection, then closes it without a word.
    const PER_CONNECTION: usize = 2;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..PER_CONNECTION {
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut buf = [0u8; 4096];
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    seen.clear();
                    let answer =
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok";
                    if conn.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let gw = queue_gateway::spawn(config(backend, None)).await.unwrap();
    let mut client = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    const REQUESTS: usize = 5;
    for i in 0..REQUESTS {
        client.write_all(b"GET /plain HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        let mut seen = String::new();
        while !seen.ends_with("\r\n\r\nok") {
            let mut buf = [0u8; 4096];
            let n =
                tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf)).await.unwrap().unwrap();
            assert!(n > 0, "the gateway closed the connection at request {i}: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        assert!(seen.starts_with("HTTP/1.1 200"), "request {i}: {seen}");
        // Time for the gateway to see the backend's close of a connection it holds idle.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), REQUESTS.div_ceil(PER_CONNECTION));
    gw.stop().await.unwrap();
}

/// Every framing a backend may answer with reaches the client intact on one kept-alive,
/// pipelined connection: a length, a chunked body (with a trailer), an informational answer
/// before the real one, a HEAD, a request with a body, and last a body that ends with the
/// backend's connection (and so ends the client's). On another connection a chunked upload
/// hands the connection to hyper midway, and the next request is still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_responses_keep_their_framing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                loop {
                    let end = loop {
                        if let Some(at) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            break at + 4;
                        }
                        let mut buf = [0u8; 4096];
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&seen[..end]).to_lowercase();
                    let mut used = end;
                    if head.contains("transfer-encoding: chunked") {
                        while !seen[end..].windows(5).any(|w| w == b"0\r\n\r\n") {
                            let mut buf = [0u8; 4096];
                            let n = conn.read(&mut buf).await.unwrap();
                            seen.extend_from_slice(&buf[..n]);
                        }
                        used = end + seen[end..].windows(5).position(|w| w == b"0\r\n\r\n").unwrap() + 5;
                    } else if let Some(len) = head.split("content-length: ").nth(1) {
                        used = end + len.split("\r\n").next().unwrap().parse::<usize>().unwrap();
                    }
                    let body = String::from_utf8_lossy(&seen[end..used]).into_owned();
                    seen.drain(..used);
                    let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                    let answer = match path.as_str() {
                        "/r/length" => "HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nfour".to_owned(),
                        "/r/chunked" => "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 11\r\n\r\n".to_owned(),
                        "/r/early" => "HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nlater".to_owned(),
                        "/r/echo" => format!("HTTP/1.1 201 Created\r\ncontent-length: {}\r\n\r\n{body}", body.len()),
                        "/r/upload" => {
                            let size = body.len().to_string();
                            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{size}", size.len())
                        }
                        _ => {
                            let _ = conn.write_all(b"HTTP/1.0 200 OK\r\n\r\nuntil the end").await;
                            return;
                        }
                    };
                    if conn.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let gw = queue_gateway::spawn(config(backend, None)).await.unwrap();
    let mut client = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let requests = "GET /r/length HTTP/1.1\r\nhost: x\r\n\r\n\
        GET /r/chunked HTTP/1.1\r\nhost: x\r\n\r\n\
        GET /r/early HTTP/1.1\r\nhost: x\r\n\r\n\
        HEAD /r/length HTTP/1.1\r\nhost: x\r\n\r\n\
        POST /r/echo HTTP/1.1\r\nhost: x\r\ncontent-length: 7\r\n\r\npayload\
        GET /r/close HTTP/1.1\r\nhost: x\r\n\r\n";
    client.write_all(requests.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut all))
        .await
        .expect("the gateway closes after the close-delimited answer")
        .unwrap();
    let text = String::from_utf8_lossy(&all).into_owned();
    let answers: Vec<&str> = text.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(answers.len(), 6, "{text}");
    let parts: Vec<(String, String)> = answers
        .iter()
        .map(|a| {
            let (h, b) = a.split_once("\r\n\r\n").unwrap();
            (h.to_lowercase(), b.to_owned())
        })
        .collect();
    assert!(parts[0].0.starts_with("200") && parts[0].0.contains("content-length: 4"), "{text}");
    assert_eq!(parts[0].1, "four");
    assert!(parts[1].0.contains("transfer-encoding: chunked"), "{text}");
    assert_eq!(parts[1].1, "5\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 11\r\n\r\n");
    assert!(parts[2].0.starts_with("200") && !text.contains("103"), "{text}");
    assert_eq!(parts[2].1, "later");
    assert!(parts[3].0.contains("content-length: 4"), "a HEAD answer keeps its length: {text}");
    assert_eq!(parts[3].1, "", "and has no body");
    assert!(parts[4].0.starts_with("201"), "{text}");
    assert_eq!(parts[4].1, "payload");
    assert!(parts[5].0.starts_with("200") && parts[5].0.contains("connection: close"), "{text}");
    assert_eq!(parts[5].1, "until the end");

    let mut client = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let requests = "GET /r/length HTTP/1.1\r\nhost: x\r\n\r\n\
        POST /r/upload HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
        GET /r/length HTTP/1.1\r\nhost: x\r\n\r\n";
    client.write_all(requests.as_bytes()).await.unwrap();
    let mut seen = String::new();
    while seen.matches("four").count() < 2 {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no answer: {seen}"))
            .unwrap();
        assert!(n > 0, "closed early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let bodies: Vec<&str> =
        seen.split("\r\n\r\n").skip(1).map(|b| b.split("HTTP/1.1").next().unwrap()).collect();
    // The backend answers with the size of the chunked body it read.
    assert_eq!(bodies, ["four", "13", "four"], "the upload arrived whole: {seen}");
    gw.stop().await.unwrap();
}

/// A kept-alive connection outlives the request timeout while idle (the wait is cut into
/// spans no longer than it), takes the next request, and is closed once idle past its limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_alive_connections_wait_past_the_request_timeout_and_close_when_idle() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut cfg = config("127.0.0.1:9".parse().unwrap(), None);
    cfg.limits.request_timeout_ms = 300;
    cfg.limits.keep_alive_idle_ms = 1_500;
    let gw = queue_gateway::spawn(cfg).await.unwrap();
    let mut client = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut seen = String::new();
    for round in 0..2 {
        client.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        read_until(&mut client, &mut seen, "\"ok\"").await;
        assert!(seen.starts_with("HTTP/1.1 200"), "round {round}: {seen}");
        seen.clear();
        // Idle for more than the request timeout, less than the idle limit.
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(0))), "closed without a word: {closed:?} {rest:?}");
    assert!(started.elapsed() >= Duration::from_millis(500), "not before the idle limit");
    gw.stop().await.unwrap();
}

/// Redis restarted without persistence (here: FLUSHALL) loses every room and gate. Each
/// gateway puts back, within its next refresh, the ones it knew and nobody deleted, with the
/// configs it knew; a room deleted before stays deleted. Their queues are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_and_gates_the_store_lost_come_back() {
    let redis = RedisServer::start();
    let (_gw, mut http) = gateway(Some(redis.url())).await;
    let (kept, deleted) = (unique_room("kept"), unique_room("deleted"));
    let mut cfg = paused_room(&kept);
    cfg["batch_size"] = json!(7);
    put_room(&mut http, kept.as_str(), cfg).await;
    put_room(&mut http, deleted.as_str(), paused_room(&deleted)).await;
    let gate = "lostgate";
    let g = json!({"prefixes": ["/api/v1/lost"], "max_inflight": 3});
    assert!(http.admin(Method::PUT, &format!("/admin/v1/gates/{gate}"), Some(g)).await.status.is_success());
    let r = http.admin(Method::DELETE, &format!("/admin/v1/rooms/{deleted}"), None).await;
    assert!(r.status.is_success(), "{}", r.text);
    assert_eq!(http.post(&format!("/api/v1/rooms/{kept}/tickets")).await.status, StatusCode::CREATED);

    redis.command("FLUSHALL").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let restored = loop {
        let r = http.admin(Method::GET, &format!("/admin/v1/rooms/{kept}"), None).await;
        if r.status == StatusCode::OK {
            break r.json();
        }
        assert!(std::time::Instant::now() < deadline, "room not put back: {} {}", r.status, r.text);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((restored["batch_size"].clone(), restored["paused"].clone()), (json!(7), json!(true)));
    let state = http.get(&format!("/api/v1/rooms/{kept}")).await.json();
    assert_eq!(state["waiting"], 0, "the queue went with the store: {state}");
    let mut newcomer = Http::new(_gw.addr);
    assert_eq!(newcomer.post(&format!("/api/v1/rooms/{kept}/tickets")).await.status, StatusCode::CREATED);
    let g = http.admin(Method::GET, &format!("/admin/v1/gates/{gate}"), None).await;
    assert_eq!((g.status, g.json()["max_inflight"].clone()), (StatusCode::OK, json!(3)), "{}", g.text);

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = http.post(&format!("/api/v1/rooms/{deleted}/tickets")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "a deleted room stays deleted: {}", r.text);
    let metrics = http.get("/metrics").await.text;
    for kind in ["room", "gate"] {
        let line = format!("waitingroom_store_restored_total{{kind=\"{kind}\"}} 1");
        assert!(metrics.contains(&line), "{line} missing from:\n{metrics}");
    }
}

/// A leave through one gateway ends the admission on the others within about a second: they
/// read the room's revoked admissions when its leave count moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_ends_the_admission_on_every_gateway() {
    let redis = RedisServer::shared().url();
    let (_a, mut http) = gateway(Some(redis.clone())).await;
    let (b, _) = gateway(Some(redis)).await;
    let room = unique_room("revoke2");
    put_room(&mut http, room.as_str(), paused_room(&room)).await;
    let ticket = join_and_admit(&mut http, room.as_str()).await;
    http.get(&format!("/api/v1/rooms/{room}/tickets/{ticket}")).await;
    let mut at_b = http.clone();
    at_b.base = format!("http://{}", b.addr);
    let path = format!("/book/{room}/seat/1");
    assert_eq!(at_b.get(&path).await.status, StatusCode::OK, "gateway B honours A's admission");
    let r = http.send(Method::DELETE, &format!("/api/v1/rooms/{room}/tickets/{ticket}"), &[], None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let left = std::time::Instant::now();
    loop {
        let r = at_b.get(&path).await;
        if r.status == StatusCode::FORBIDDEN {
            break;
        }
        assert!(left.elapsed() < Duration::from_millis(2500), "B still forwards: {} {}", r.status, r.text);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
