//! The overload gate over real sockets, with the in-process log and with Redis Streams, in
//! front of a backend of fixed capacity that records what reaches it: overload transitions,
//! offset order, dead letters, bad input; and a gateway process killed with SIGKILL
//! mid-replay whose entries another gateway claims and delivers.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use common::capacity::{self, Record};
use common::*;
use queue_core::testkit::RedisServer;
use serde_json::{Value, json};

async fn backend(capacity: u64, latency_ms: u64) -> (SocketAddr, Arc<Record>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cap = capacity::Capacity {
        concurrent: capacity,
        latency: Duration::from_millis(latency_ms),
        deadline: Duration::from_secs(10),
    };
    capacity::start(l, cap).await.unwrap()
}

async fn gateway(redis: Option<String>, up: SocketAddr) -> queue_gateway::Running {
    queue_gateway::spawn(config(up, redis)).await.unwrap()
}

async fn put_gate(http: &mut Http, gate: &str, cfg: Value) -> common::Resp {
    let r = http.admin(Method::PUT, &format!("/admin/v1/gates/{gate}"), Some(cfg)).await;
    assert!(r.status.is_success(), "{}", r.text);
    r
}

async fn gate_state(http: &mut Http, gate: &str) -> Value {
    http.admin(Method::GET, &format!("/admin/v1/gates/{gate}"), None).await.json()
}

fn metric(text: &str, name: &str, gate: &str) -> Option<f64> {
    let prefix = format!("{name}{{gate=\"{gate}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
}

async fn post(http: &mut Http, path: &str, key: &str, body: &str) -> common::Resp {
    http.send(
        Method::POST,
        path,
        &[("content-type", "application/json"), ("idempotency-key", key)],
        Some(body.to_owned()),
    )
    .await
}

/// Polls an offset until it is answered; returns the answer.
async fn answer(http: &mut Http, poll: &str) -> common::Resp {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = http.get(poll).await;
        if r.status != StatusCode::ACCEPTED {
            return r;
        }
        assert!(r.json()["position"].as_u64().unwrap() >= 1);
        assert!(Instant::now() < deadline, "{poll} still pending after 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn overload_turns_on_and_off(redis: Option<String>) {
    let (up, rec) = backend(100, 600).await;
    let gw = gateway(redis, up).await;
    let mut admin = Http::new(gw.addr);
    put_gate(&mut admin, "slow", json!({"prefixes": ["/api/v1/slow"], "max_inflight": 2, "hold_ms": 150}))
        .await;
    let busy: Vec<_> = (0..2)
        .map(|i| {
            let mut c = Http::new(gw.addr);
            tokio::spawn(async move { post(&mut c, "/api/v1/slow/a", &format!("busy-{i}"), "{}").await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let st = gate_state(&mut admin, "slow").await;
    assert_eq!(
        (st["inflight"].as_u64(), st["overloaded"].as_bool()),
        (Some(2), Some(false)),
        "at the limit: {st}"
    );

    let mut c = Http::new(gw.addr);
    let third = tokio::spawn(async move {
        let t = Instant::now();
        (post(&mut c, "/api/v1/slow/b", "third", "{}").await, t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(gate_state(&mut admin, "slow").await["overloaded"], json!(true), "above the limit");
    let text = admin.get("/metrics").await.text;
    assert_eq!(metric(&text, "waitingroom_gate_overloaded", "slow"), Some(1.0));
    assert_eq!(metric(&text, "waitingroom_gate_inflight", "slow"), Some(2.0));
    let (r, took) = third.await.unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "not replayable: {}", r.text);
    assert_eq!(r.error_code(), "overloaded");
    assert!(r.headers.contains_key("retry-after"));
    assert!(took >= Duration::from_millis(140), "held for hold_ms first ({took:?})");
    for b in busy {
        assert_eq!(b.await.unwrap().status, StatusCode::CREATED);
    }
    let st = gate_state(&mut admin, "slow").await;
    assert_eq!(
        (st["inflight"].as_u64(), st["overloaded"].as_bool()),
        (Some(0), Some(false)),
        "below again: {st}"
    );
    let text = admin.get("/metrics").await.text;
    assert_eq!(metric(&text, "waitingroom_gate_overloaded", "slow"), Some(0.0));
    assert_eq!(
        rec.overloaded.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "the backend never saw too much"
    );
    gw.stop().await.unwrap();
}

async fn logged_requests_replay_in_offset_order(redis: Option<String>) {
    let (up, rec) = backend(1, 20).await;
    let gw = gateway(redis, up).await;
    let mut admin = Http::new(gw.addr);
    put_gate(
        &mut admin,
        "book",
        json!({"prefixes": ["/api/v1/reservations"], "max_inflight": 1, "hold_ms": 0, "replayable": true}),
    )
    .await;
    let mut c = Http::new(gw.addr);
    let blocker =
        tokio::spawn(
            async move { post(&mut c, "/api/v1/reservations/x?sleep_ms=400", "blocker", "{}").await },
        );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut http = Http::new(gw.addr);
    let mut polls = Vec::new();
    for i in 0..20 {
        let r = post(
            &mut http,
            &format!("/api/v1/reservations/{i}"),
            &format!("key-{i}"),
            &format!("{{\"seat\":{i}}}"),
        )
        .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
        let v = r.json();
        let offset = v["offset"].as_str().unwrap().to_owned();
        assert_eq!(v["poll"].as_str().unwrap(), format!("/api/v1/gate/{offset}"));
        assert_eq!(v["position"].as_u64(), Some(i + 1), "{v}");
        assert_eq!(r.headers["location"].to_str().unwrap(), v["poll"].as_str().unwrap());
        polls.push((offset, v["poll"].as_str().unwrap().to_owned()));
    }
    let first = http.get(&polls[19].1).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "pending: {}", first.text);
    assert!(first.json()["position"].as_u64().unwrap() >= 1);
    assert_eq!(blocker.await.unwrap().status, StatusCode::CREATED);
    for (i, (_, poll)) in polls.iter().enumerate() {
        let r = answer(&mut http, poll).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        assert_eq!(r.json()["key"], json!(format!("key-{i}")), "each offset gets its own answer");
        assert_eq!(r.json()["path"], json!(format!("/api/v1/reservations/{i}")));
    }
    let replayed: Vec<String> = rec.arrivals().into_iter().filter_map(|a| a.replay_offset).collect();
    let offsets: Vec<String> = polls.iter().map(|(o, _)| o.clone()).collect();
    assert_eq!(replayed, offsets, "the backend saw the replays in offset order");
    assert_eq!(rec.overloaded.load(std::sync::atomic::Ordering::Relaxed), 0);
    let st = gate_state(&mut admin, "book").await;
    assert_eq!(
        (st["logged"].as_u64(), st["backlog"].as_u64(), st["dead_letters"].as_u64()),
        (Some(20), Some(0), Some(0))
    );
    let text = admin.get("/metrics").await.text;
    assert_eq!(metric(&text, "waitingroom_gate_logged_total", "book"), Some(20.0));
    assert_eq!(metric(&text, "waitingroom_gate_replayed_total", "book"), Some(20.0));
    gw.stop().await.unwrap();
}

async fn dead_letters_after_k_failures(redis: Option<String>) {
    let (up, rec) = backend(10, 20).await;
    let gw = gateway(redis, up).await;
    let mut admin = Http::new(gw.addr);
    put_gate(
        &mut admin,
        "flaky",
        json!({"prefixes": ["/fail/", "/api/v1/flaky"], "max_inflight": 1, "hold_ms": 0, "replayable": true, "max_attempts": 2}),
    )
    .await;
    let mut c = Http::new(gw.addr);
    let blocker = tokio::spawn(async move { post(&mut c, "/api/v1/flaky?sleep_ms=300", "b", "{}").await });
    tokio::time::sleep(Duration::from_millis(80)).await;
    let mut http = Http::new(gw.addr);
    let r = post(&mut http, "/fail/now", "doomed", "{}").await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let poll = r.json()["poll"].as_str().unwrap().to_owned();
    blocker.await.unwrap();
    let r = answer(&mut http, &poll).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text);
    assert_eq!(r.error_code(), "replay_failed");
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("2 attempts"), "{}", r.text);
    let tries = rec.arrivals().iter().filter(|a| a.path == "/fail/now").count();
    assert_eq!(tries, 2, "K = 2 attempts, then the dead letters");
    let st = gate_state(&mut admin, "flaky").await;
    assert_eq!((st["dead_letters"].as_u64(), st["backlog"].as_u64()), (Some(1), Some(0)), "{st}");
    let text = admin.get("/metrics").await.text;
    assert_eq!(metric(&text, "waitingroom_gate_dead_letters_total", "flaky"), Some(1.0));
    gw.stop().await.unwrap();
}

async fn bad_input_is_refused(redis: Option<String>) {
    let (up, rec) = backend(10, 200).await;
    let gw = gateway(redis, up).await;
    let mut admin = Http::new(gw.addr);
    put_gate(
        &mut admin,
        "small",
        json!({"prefixes": ["/api/v1/small"], "max_inflight": 1, "hold_ms": 0, "replayable": true, "max_body_bytes": 1024}),
    )
    .await;
    let mut http = Http::new(gw.addr);
    let big = "x".repeat(2048);
    let r = post(&mut http, "/api/v1/small", "k", &big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "a replayable route's limit holds even when calm");

    // A client cannot pass for a replay.
    let forged = "v1;small.1-0.AAAA;99999999999;AAAAAAAAAAAAAAAAAAAAAAAA";
    for path in ["/api/v1/small", "/elsewhere"] {
        let r = http.send(Method::POST, path, &[("x-gate-replay", forged)], Some("{}".into())).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}: {}", r.text);
        assert_eq!(r.error_code(), "invalid_replay_marker");
    }

    // Over the limit: an oversized body is refused, not logged.
    let mut c = Http::new(gw.addr);
    let blocker = tokio::spawn(async move { post(&mut c, "/api/v1/small?sleep_ms=300", "b", "{}").await });
    tokio::time::sleep(Duration::from_millis(80)).await;
    let r = post(&mut http, "/api/v1/small", "k2", &big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    blocker.await.unwrap();
    assert_eq!(gate_state(&mut admin, "small").await["logged"], json!(0));

    // Offsets: unknown, tampered, garbage.
    for poll in
        ["/api/v1/gate/small.1-0.AAAAAAAAAAAAAAAAAAAAAAAA", "/api/v1/gate/nonsense", "/api/v1/gate/a.b.c.d"]
    {
        let r = http.get(poll).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{poll}");
        assert_eq!(r.error_code(), "unknown_offset");
    }

    // Admin: field-named errors, conflicts, auth, unknown gates.
    let r = admin
        .admin(Method::PUT, "/admin/v1/gates/bad", Some(json!({"prefixes": ["/x"], "max_inflight": 0})))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text.contains("max_inflight"), "{}", r.text);
    let r = admin.admin(Method::PUT, "/admin/v1/gates/Bad", Some(json!({"prefixes": ["/x"]}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r =
        admin.admin(Method::PUT, "/admin/v1/gates/other", Some(json!({"prefixes": ["/api/v1/small"]}))).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(admin.admin(Method::GET, "/admin/v1/gates/missing", None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        admin.admin(Method::DELETE, "/admin/v1/gates/missing", None).await.status,
        StatusCode::NOT_FOUND
    );
    let r = http.send(Method::PUT, "/admin/v1/gates/x", &[], Some("{}".into())).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let list = admin.admin(Method::GET, "/admin/v1/gates", None).await.json();
    assert_eq!(list["gates"].as_array().unwrap().len(), 1);
    assert_eq!(
        admin.admin(Method::DELETE, "/admin/v1/gates/small", None).await.status,
        StatusCode::NO_CONTENT
    );
    let r = post(&mut http, "/api/v1/small", "k3", &big).await;
    assert_eq!(r.status, StatusCode::CREATED, "no gate any more: the proxy's own limit applies");
    assert_eq!(rec.overloaded.load(std::sync::atomic::Ordering::Relaxed), 0);
    gw.stop().await.unwrap();
}

macro_rules! both_stores {
    ($($name:ident),*) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(None).await
                }
            )*
        }
        mod redis {
            use queue_core::testkit::RedisServer;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    // Its own server: every gateway consumes every gate of its Redis.
                    let server = RedisServer::start();
                    super::$name(Some(server.url())).await
                }
            )*
        }
    };
}

both_stores!(
    overload_turns_on_and_off,
    logged_requests_replay_in_offset_order,
    dead_letters_after_k_failures,
    bad_input_is_refused
);

/// Gateway A logs requests and dies (SIGKILL) while replaying one; gateway B, started after,
/// reads the rest and claims the one A held: every offset is answered, each idempotency key
/// takes effect once although the claimed one reached the backend twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_gateways_entries_are_claimed_and_delivered() {
    let redis = RedisServer::start();
    let (up, rec) = backend(10, 1_000).await;
    let dir = std::env::temp_dir().join(format!("wr-gate-kill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gateway.toml");
    std::fs::write(
        &file,
        "[limits]\nupstream_timeout_ms = 2000\n[replay]\nclaim_idle_ms = 2500\n\
         [gates.book]\nprefixes = [\"/api/v1/reservations\"]\nmax_inflight = 1\nhold_ms = 0\nreplayable = true\n\
         [rate_limits]\nstatus_per_ip = { per_second = 100000, burst = 100000 }\n",
    )
    .unwrap();
    let (a, a_addr) = start_gateway(&redis.url(), up, &file);
    wait_ready(a_addr).await;
    let mut http = Http::new(a_addr);
    let mut c = Http::new(a_addr);
    let live = tokio::spawn(async move { post(&mut c, "/api/v1/reservations/live", "live", "{}").await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut polls = Vec::new();
    for i in 0..6 {
        let r = post(&mut http, &format!("/api/v1/reservations/{i}"), &format!("k{i}"), "{}").await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
        polls.push(r.json()["poll"].as_str().unwrap().to_owned());
    }
    assert_eq!(live.await.unwrap().status, StatusCode::CREATED);
    // Kill A halfway through its first replay.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !rec.arrivals().iter().any(|a| a.replay_offset.is_some()) {
        assert!(Instant::now() < deadline, "A never replayed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    drop(a);
    let held_by_a = rec.arrivals().iter().find(|a| a.replay_offset.is_some()).unwrap().key.clone().unwrap();

    let (_b, b_addr) = start_gateway(&redis.url(), up, &file);
    wait_ready(b_addr).await;
    let mut http = Http::new(b_addr);
    for (i, poll) in polls.iter().enumerate() {
        let r = answer(&mut http, poll).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        assert_eq!(r.json()["key"], json!(format!("k{i}")));
    }
    let arrivals = rec.arrivals();
    let count = |k: &str| arrivals.iter().filter(|a| a.key.as_deref() == Some(k)).count();
    assert_eq!(count(&held_by_a), 2, "the entry A held reached the backend again through B");
    assert_eq!(rec.keys_applied(), 7, "every key took effect once (6 logged + the live one)");
    assert_eq!(rec.effects.load(std::sync::atomic::Ordering::Relaxed), 7, "no double effect");
    let st = Http::new(b_addr).admin(Method::GET, "/admin/v1/gates/book", None).await.json();
    assert_eq!((st["logged"].as_u64(), st["backlog"].as_u64()), (Some(6), Some(0)), "{st}");
}

/// A gate change made through one gateway is enforced by another within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gate_changes_reach_every_gateway_within_a_second() {
    let redis = RedisServer::start();
    let (up, _rec) = backend(100, 20).await;
    let (g1, g2) = (gateway(Some(redis.url()), up).await, gateway(Some(redis.url()), up).await);
    let mut admin = Http::new(g1.addr);
    let two_at_once = |addr: SocketAddr| async move {
        let mut a = Http::new(addr);
        let slow =
            tokio::spawn(async move { post(&mut a, "/api/v1/live/1?sleep_ms=600", "a", "{}").await.status });
        tokio::time::sleep(Duration::from_millis(150)).await;
        let second = post(&mut Http::new(addr), "/api/v1/live/2", "b", "{}").await.status;
        (slow.await.unwrap(), second)
    };
    put_gate(&mut admin, "live", json!({"prefixes": ["/api/v1/live"], "max_inflight": 1, "hold_ms": 0}))
        .await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(two_at_once(g2.addr).await, (StatusCode::CREATED, StatusCode::SERVICE_UNAVAILABLE));
    put_gate(&mut admin, "live", json!({"prefixes": ["/api/v1/live"], "max_inflight": 2, "hold_ms": 0}))
        .await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(two_at_once(g2.addr).await, (StatusCode::CREATED, StatusCode::CREATED));
    g1.stop().await.unwrap();
    g2.stop().await.unwrap();
}
