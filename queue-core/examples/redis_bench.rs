//! RedisStore throughput next to `redis-benchmark` running the same EVALSHA, in one run.
//!
//! `cargo run --release -p queue-core --example redis_bench -- [SECONDS] [CONCURRENCY]`
//!
//! Starts its own `redis-server`, then measures at the same concurrency (default 50):
//! 1. `status` (a waiting ticket's position, ZRANK over 100,000 waiting) via RedisStore, and
//!    `redis-benchmark` EVALSHA of the same script with the same keys;
//! 2. `join` (new tickets) the same way (`__rand_int__` makes each owner new);
//! 3. the Redis time of one tick admitting 3,000 of 1,000,000 waiting (SLOWLOG).

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use queue_core::store::redis::{room_keys, script_shas};
use queue_core::testkit::RedisServer;
use queue_core::*;

async fn load<F, Fut>(concurrency: usize, secs: u64, f: F) -> f64
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let f = Arc::new(f);
    let done = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (f, done, count) = (f.clone(), done.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = w as u64 * 1_000_000_000;
            while !done.load(Ordering::Relaxed) {
                f(i).await;
                i += 1;
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    done.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn redis_benchmark(port: u16, concurrency: usize, requests: u64, args: &[String]) -> f64 {
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-c", &concurrency.to_string()])
        .args(["-n", &requests.to_string(), "-r", "1000000000", "-q"])
        .args(args)
        .output()
        .expect("redis-benchmark (apt-get install redis-tools)");
    let text = String::from_utf8_lossy(&out.stdout);
    // "EVALSHA ...: 12345.67 requests per second, p50=..."; with -q the line ends in \r updates.
    text.rsplit(": ")
        .find_map(|part| part.split_whitespace().next().and_then(|n| n.parse::<f64>().ok()))
        .unwrap_or_else(|| {
            let err = String::from_utf8_lossy(&out.stderr);
            panic!("cannot read redis-benchmark output ({}): {text}\nstderr: {err}", out.status)
        })
}

fn evalsha_args(script: &str, room: &RoomId, extra: &[&str]) -> Vec<String> {
    let sha = script_shas().into_iter().find(|(n, _)| *n == script).unwrap().1;
    let mut args = vec!["EVALSHA".to_string(), sha, room_keys(room).len().to_string()];
    args.extend(room_keys(room));
    args.push(format!("wr:{{{room}}}:events"));
    args.push(room.to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

async fn fill(store: &Arc<RedisStore>, room: &RoomId, n: usize, tag: &str) -> Vec<TicketId> {
    let mut tasks = Vec::new();
    for w in 0..64 {
        let (store, room, tag) = (store.clone(), room.clone(), tag.to_string());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in (w..n).step_by(64) {
                let user = UserKey::parse(&format!("{tag}-{i}")).unwrap();
                out.push(store.join(&room, &user).await.unwrap().status.ticket);
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let secs: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(10);
    let conc: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(50);
    let server = RedisServer::start();
    let port = server.port();
    let store = Arc::new(RedisStore::connect(&server.url()).await.unwrap());
    let paused = RoomConfig { paused: true, idle_timeout_s: 86_400, ..RoomConfig::default() };

    // WR_BENCH_ONLY=tick skips the throughput comparisons.
    let only_tick = std::env::var("WR_BENCH_ONLY").is_ok_and(|v| v == "tick");
    if !only_tick {
        throughput(&store, port, secs, conc, &paused).await;
    }
    tick_time(&store, &server, &paused).await;
}

async fn throughput(store: &Arc<RedisStore>, port: u16, secs: u64, conc: usize, paused: &RoomConfig) {
    // 1. status over 100,000 waiting.
    let room = RoomId::parse("bench-status").unwrap();
    store.put_room(&room, paused).await.unwrap();
    let tickets = Arc::new(fill(store, &room, 100_000, "s").await);
    let (s, r, t) = (store.clone(), room.clone(), tickets.clone());
    let ours = load(conc, secs, move |i| {
        let (s, r, t) = (s.clone(), r.clone(), t.clone());
        async move {
            s.status(&r, t[(i as usize * 7919) % t.len()]).await.unwrap();
        }
    })
    .await;
    let mid = tickets[50_000].to_string();
    let theirs =
        redis_benchmark(port, conc, (ours * secs as f64) as u64, &evalsha_args("status", &room, &[&mid]));
    println!(
        "status  c={conc}: RedisStore {ours:>9.0}/s  redis-benchmark EVALSHA {theirs:>9.0}/s  ratio {:.2}",
        ours / theirs
    );

    // 2. join, every call a new owner.
    let room = RoomId::parse("bench-join").unwrap();
    store.put_room(&room, paused).await.unwrap();
    let (s, r) = (store.clone(), room.clone());
    let ours = load(conc, secs, move |i| {
        let (s, r) = (s.clone(), r.clone());
        async move {
            let u = UserKey::parse(&format!("j-{i}")).unwrap();
            s.join(&r, &u).await.unwrap();
        }
    })
    .await;
    let join_args = evalsha_args("join", &room, &["00000000000000000000__rand_int__", "aaaaaaaaaaaaaaaa"]);
    let theirs = redis_benchmark(port, conc, (ours * secs as f64) as u64, &join_args);
    println!(
        "join    c={conc}: RedisStore {ours:>9.0}/s  redis-benchmark EVALSHA {theirs:>9.0}/s  ratio {:.2}",
        ours / theirs
    );
}

async fn tick_time(store: &Arc<RedisStore>, server: &RedisServer, paused: &RoomConfig) {
    let port = server.port();
    // 3. Redis time of a tick admitting 3,000 of 1,000,000 waiting.
    let room = RoomId::parse("bench-tick").unwrap();
    store.put_room(&room, &RoomConfig { batch_size: 3000, ..paused.clone() }).await.unwrap();
    let t0 = Instant::now();
    fill(store, &room, 1_000_000, "t").await;
    let fill_s = t0.elapsed().as_secs_f64();
    store.set_paused(&room, false).await.unwrap();
    server.command("CONFIG SET slowlog-log-slower-than 0").unwrap();
    let mut micros = Vec::new();
    for _ in 0..11 {
        server.command("SLOWLOG RESET").unwrap();
        let out = loop {
            let out = store.tick(&room).await.unwrap();
            if out.applied {
                break out;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(out.admitted.len(), 3000);
        let log = redis_slowlog_evalsha_us(port).await;
        micros.push(log);
    }
    micros.sort();
    println!(
        "tick    3,000 of 1,000,000 waiting: Redis time median {:.2} ms (min {:.2}, max {:.2}); 1M joins took {fill_s:.1} s",
        micros[micros.len() / 2] as f64 / 1000.0,
        micros[0] as f64 / 1000.0,
        micros[micros.len() - 1] as f64 / 1000.0
    );
    let mem = store.room_memory_bytes(&room).await.unwrap();
    println!("redis   memory of a room with 985,000 waiting: {:.0} B per ticket", mem as f64 / 1_000_000.0);
}

/// The duration (µs) of the slowest EVALSHA in the slow log.
async fn redis_slowlog_evalsha_us(port: u16) -> u64 {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let entries: Vec<redis::Value> =
        redis::cmd("SLOWLOG").arg("GET").arg(10).query_async(&mut con).await.unwrap();
    let mut best = 0;
    for e in entries {
        // [id, timestamp, duration µs, [args...], client, name]
        if let redis::Value::Array(fields) = e
            && let (Some(redis::Value::Int(us)), Some(redis::Value::Array(args))) =
                (fields.get(2), fields.get(3))
            && matches!(args.first(), Some(redis::Value::BulkString(b)) if b.eq_ignore_ascii_case(b"EVALSHA"))
        {
            best = best.max(*us as u64);
        }
    }
    best
}
