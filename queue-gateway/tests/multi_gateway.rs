//! Over real sockets: three gateway processes on one Redis. 2,000 clients join through
//! random gateways while all three tick: every tick admits exactly `batch_size`, everyone is
//! admitted in join order, SSE clients hear of their admission within one tick interval, and
//! an admin change made on one gateway is in force on all three within a second.

mod common;

use std::collections::HashMap;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use common::*;
use queue_core::testkit::RedisServer;
use queue_core::{RedisStore, RoomEvent, Store, TicketId};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Mutex;

const CLIENTS: usize = 2_000;
const BATCH: u64 = 100;
const INTERVAL_MS: u64 = 500;
const SSE_CLIENTS: usize = 60;

/// Follows one ticket's SSE stream; returns when `admitted` arrives (the instant it did).
async fn follow(addr: std::net::SocketAddr, room: &str, ticket: &str, cookie: &str) -> Instant {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /api/v1/rooms/{room}/tickets/{ticket}/events HTTP/1.1\r\nhost: x\r\ncookie: {cookie}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut lines = BufReader::new(s).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line == "event: admitted" {
            return Instant::now();
        }
    }
    panic!("stream of {ticket} ended without admission");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateway_processes_share_one_room() {
    let redis = RedisServer::start();
    let up = upstream().await;
    let dir = std::env::temp_dir().join(format!("wr-multi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config_file = dir.join("gateway.toml");
    std::fs::write(
        &config_file,
        "[rate_limits]\njoin_per_ip = { per_second = 100000, burst = 100000 }\nstatus_per_ip = { per_second = 100000, burst = 100000 }\n",
    )
    .unwrap();
    let gateways: Vec<_> = (0..3).map(|_| start_gateway(&redis.url(), up, &config_file)).collect();
    let addrs: Vec<_> = gateways.iter().map(|g| g.1).collect();
    for a in &addrs {
        wait_ready(*a).await;
    }
    let mut admin = Http::new(addrs[0]);
    let room = "multi";
    put_room(
        &mut admin,
        room,
        json!({"protect": ["/book/"], "batch_size": BATCH, "tick_interval_ms": INTERVAL_MS, "paused": true}),
    )
    .await;

    // Everyone joins through a random gateway.
    let joined = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for w in 0..40 {
        let (addrs, joined) = (addrs.clone(), joined.clone());
        tasks.push(tokio::spawn(async move {
            for i in (w..CLIENTS).step_by(40) {
                let mut c = Http::new(addrs[(rand::random::<u32>() % 3) as usize]);
                let r = c.post(&format!("/api/v1/rooms/{room}/tickets")).await;
                assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
                let ticket = r.json()["ticket"].as_str().unwrap().to_owned();
                let cookie = format!("wr_{room}={}", c.cookies[&format!("wr_{room}")]);
                joined.lock().await.push((i, ticket, cookie));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let joined = joined.lock().await.clone();
    assert_eq!(joined.len(), CLIENTS);

    // Some clients follow their tickets over SSE, on various gateways.
    let mut followers = Vec::new();
    for (n, (_, ticket, cookie)) in joined.iter().take(SSE_CLIENTS).enumerate() {
        let (addr, ticket, cookie) = (addrs[n % 3], ticket.clone(), cookie.clone());
        followers
            .push((ticket.clone(), tokio::spawn(async move { follow(addr, room, &ticket, &cookie).await })));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Watch admissions as the store publishes them.
    let observer = RedisStore::connect(&redis.url()).await.unwrap();
    let mut events = observer.subscribe();
    tokio::time::sleep(Duration::from_millis(300)).await;
    admin.admin(Method::POST, &format!("/admin/v1/rooms/{room}/resume"), None).await;

    let mut batches: Vec<(u64, Vec<TicketId>, Instant)> = Vec::new();
    let mut admitted = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while admitted < CLIENTS && Instant::now() < deadline {
        if let Ok(Ok(RoomEvent::Admitted { room: r, tick, tickets, .. })) =
            tokio::time::timeout(Duration::from_secs(5), events.recv()).await
            && r.as_str() == room
        {
            admitted += tickets.len();
            batches.push((tick.expect("tick admissions carry their tick"), tickets, Instant::now()));
        }
    }
    assert_eq!(admitted, CLIENTS, "not everyone was admitted in time");
    let mut seen_ticks = std::collections::HashSet::new();
    for (tick, tickets, _) in &batches {
        assert!(seen_ticks.insert(*tick), "tick {tick} applied twice");
        assert_eq!(tickets.len() as u64, BATCH, "tick {tick} admitted {}", tickets.len());
    }
    let order: Vec<TicketId> = batches.iter().flat_map(|b| b.1.iter().copied()).collect();
    assert!(order.windows(2).all(|w| w[0].seq() < w[1].seq()), "admission order differs from join order");
    let stats = observer.stats(&queue_core::RoomId::parse(room).unwrap()).await.unwrap();
    assert_eq!((stats.admitted_total, stats.waiting), (CLIENTS as u64, 0));

    // SSE clients heard within one tick interval of their batch's publication.
    let published: HashMap<String, Instant> =
        batches.iter().flat_map(|(_, ts, at)| ts.iter().map(move |t| (t.to_string(), *at))).collect();
    for (ticket, f) in followers {
        let heard = tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .expect("an SSE client never heard")
            .unwrap();
        let at = published[&ticket];
        let late = heard.saturating_duration_since(at);
        assert!(late <= Duration::from_millis(INTERVAL_MS), "{ticket} heard {late:?} after its admission");
    }

    // Live config: a change on gateway 0 is in force on all three within a second.
    let changed = Instant::now();
    put_room(
        &mut admin,
        room,
        json!({"protect": ["/book/", "/vip/"], "batch_size": 7, "tick_interval_ms": INTERVAL_MS}),
    )
    .await;
    for addr in &addrs {
        let mut c = Http::new(*addr);
        loop {
            let r = c.send(Method::GET, "/vip/seat", &[("accept", "application/json")], None).await;
            if r.status == StatusCode::FORBIDDEN {
                break;
            }
            assert!(
                changed.elapsed() < Duration::from_secs(1),
                "gateway {addr} still forwards /vip/ after 1 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let g = c.admin(Method::GET, &format!("/admin/v1/rooms/{room}"), None).await.json();
        assert_eq!(g["batch_size"], 7);
    }
    assert!(changed.elapsed() < Duration::from_secs(1));
    // ... and the next tick admits the new batch size.
    let mut late = Http::new(addrs[2]);
    for _ in 0..20 {
        late.cookies.clear();
        late.post(&format!("/api/v1/rooms/{room}/tickets")).await;
    }
    let next = loop {
        if let Ok(Ok(RoomEvent::Admitted { room: r, tickets, .. })) =
            tokio::time::timeout(Duration::from_secs(5), events.recv()).await
            && r.as_str() == room
        {
            break tickets;
        }
    };
    assert_eq!(next.len(), 7);
    drop(gateways);
    let _ = std::fs::remove_dir_all(dir);
}
