//! Real concurrency: 4 separate processes tick the same Redis room for 30 ticks while 10,000
//! tickets join from 50 tasks. Every tick applies once and admits exactly
//! `min(batch, waiting, capacity)`; nobody is admitted twice; admission order = join order.

use std::collections::{HashMap, HashSet};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use queue_core::testkit::{RedisServer, unique_room};
use queue_core::*;
use serde::{Deserialize, Serialize};

const BATCH: u32 = 150;
const MAX_ACTIVE: u32 = 4_000;
const INTERVAL_MS: u64 = 200;
const TICKS: u64 = 30;
const JOINS: usize = 10_000;
const JOIN_TASKS: usize = 50;
const PROCESSES: usize = 4;

#[derive(Serialize, Deserialize)]
struct Applied {
    tick: u64,
    waiting_before: u64,
    active_before: u64,
    admitted: Vec<String>,
}

/// The child side: runs only when spawned by `four_processes_tick_one_room`.
#[test]
fn ticker_child() {
    let Ok(url) = std::env::var("WR_TEST_TICKER_REDIS") else { return };
    let room = RoomId::parse(&std::env::var("WR_TEST_TICKER_ROOM").unwrap()).unwrap();
    let end: u64 = std::env::var("WR_TEST_TICKER_END").unwrap().parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let store = RedisStore::connect(&url).await.unwrap();
        loop {
            let out = store.tick(&room).await.unwrap();
            if out.applied {
                let line = Applied {
                    tick: out.tick,
                    waiting_before: out.waiting_before,
                    active_before: out.active_before,
                    admitted: out.admitted.iter().map(|a| a.ticket.to_string()).collect(),
                };
                println!("TICK {}", serde_json::to_string(&line).unwrap());
            }
            if out.tick >= end {
                break;
            }
            // Tick several times per interval, with jitter, as gateways do.
            let jitter = rand::random::<u64>() % 30;
            tokio::time::sleep(Duration::from_millis(20 + jitter)).await;
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_tick_one_room() {
    let redis = RedisServer::start();
    let store = Arc::new(RedisStore::connect(&redis.url()).await.unwrap());
    let room = unique_room("multi");
    let cfg = RoomConfig {
        batch_size: BATCH,
        tick_interval_ms: INTERVAL_MS,
        max_active: MAX_ACTIVE,
        ..RoomConfig::default()
    };
    store.put_room(&room, &cfg).await.unwrap();
    let start_tick = store.stats(&room).await.unwrap().now_ms / INTERVAL_MS;
    // Slack for the children to start; at least TICKS ticks must be applied after that.
    let end = start_tick + TICKS + 15;

    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            Command::new(&exe)
                .args(["ticker_child", "--exact", "--nocapture", "--test-threads", "1"])
                .env("WR_TEST_TICKER_REDIS", redis.url())
                .env("WR_TEST_TICKER_ROOM", room.as_str())
                .env("WR_TEST_TICKER_END", end.to_string())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();

    // Joins from many tasks while the tickers run.
    let mut tasks = Vec::new();
    for task in 0..JOIN_TASKS {
        let (store, room) = (store.clone(), room.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in (task..JOINS).step_by(JOIN_TASKS) {
                let user = UserKey::parse(&format!("u{i}")).unwrap();
                let out = store.join(&room, &user).await.unwrap();
                assert!(out.created);
                mine.push(out.status.ticket);
            }
            mine
        }));
    }
    let mut joined = Vec::new();
    for t in tasks {
        joined.extend(t.await.unwrap());
    }
    assert_eq!(joined.len(), JOINS);

    let outputs: Vec<_> = tokio::task::spawn_blocking(move || {
        children.into_iter().map(|c| c.wait_with_output().unwrap()).collect()
    })
    .await
    .unwrap();
    let mut applied: HashMap<u64, (usize, Applied)> = HashMap::new();
    for (proc_no, out) in outputs.iter().enumerate() {
        assert!(out.status.success(), "ticker process {proc_no} failed");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // libtest may print "test ticker_child ... " on the same line before ours.
            if let Some(json) = line.find("TICK {").map(|i| &line[i + 5..]) {
                let a: Applied = serde_json::from_str(json).unwrap();
                let tick = a.tick;
                assert!(applied.insert(tick, (proc_no, a)).is_none(), "tick {tick} applied twice");
            }
        }
    }
    assert!(applied.len() as u64 >= TICKS, "only {} ticks applied", applied.len());
    let appliers: HashSet<usize> = applied.values().map(|(p, _)| *p).collect();
    assert!(appliers.len() > 1, "one process applied every tick; the race was not exercised");

    let mut ticks: Vec<_> = applied.into_values().map(|(_, a)| a).collect();
    ticks.sort_by_key(|a| a.tick);
    let mut order = Vec::new();
    for a in &ticks {
        let capacity = (MAX_ACTIVE as u64).saturating_sub(a.active_before);
        let expected = (BATCH as u64).min(a.waiting_before).min(capacity);
        assert_eq!(a.admitted.len() as u64, expected, "tick {} admitted the wrong count", a.tick);
        order.extend(a.admitted.iter().map(|t| TicketId::parse(t).unwrap()));
    }
    let unique: HashSet<_> = order.iter().collect();
    assert_eq!(unique.len(), order.len(), "a ticket was admitted twice");
    assert!(order.windows(2).all(|w| w[0].seq() < w[1].seq()), "admission order differs from join order");
    // Join order is the sequence the store assigned; every admitted ticket is a joined one.
    let joined: HashSet<_> = joined.into_iter().collect();
    assert!(order.iter().all(|t| joined.contains(t)));
    let stats = store.stats(&room).await.unwrap();
    assert_eq!(stats.admitted_total, order.len() as u64);
    assert_eq!(stats.waiting + stats.active, JOINS as u64, "{stats:?}");
    assert!(stats.active <= MAX_ACTIVE as u64);
    assert!(order.len() as u64 >= MAX_ACTIVE as u64 - BATCH as u64, "the cap was never reached");
}
