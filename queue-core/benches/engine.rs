//! Engine benchmarks: MemoryStore join, status and a tick of 3,000 with ~1,000,000 waiting;
//! bytes per waiting ticket; token sign, verify and cached verify.
//!
//! Run: `cargo bench -p queue-core --bench engine`. Results go to BENCHMARKS.md.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use queue_core::store::ManualClock;
use queue_core::token::{KeySet, SigningKey, cnf_of};
use queue_core::verify::{VerifiedCache, verify_token};
use queue_core::*;

const START: u64 = 1_800_000_000_000;
const WAITING: usize = 1_000_000;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn user(i: usize) -> UserKey {
    UserKey::parse(&format!("bench-user-{i}")).unwrap()
}

/// A store with a paused room holding `n` waiting tickets.
fn filled(
    rt: &tokio::runtime::Runtime,
    n: usize,
    batch: u32,
) -> (MemoryStore, ManualClock, RoomId, Vec<TicketId>) {
    let clock = ManualClock::new(START);
    let store = MemoryStore::with_clock(Arc::new(clock.clone()));
    let room = RoomId::parse("bench").unwrap();
    let cfg = RoomConfig {
        batch_size: batch,
        tick_interval_ms: 1000,
        idle_timeout_s: 86_400,
        ..RoomConfig::default()
    };
    let tickets = rt.block_on(async {
        store.put_room(&room, &cfg).await.unwrap();
        let mut t = Vec::with_capacity(n);
        for i in 0..n {
            t.push(store.join(&room, &user(i)).await.unwrap().status.ticket);
        }
        t
    });
    (store, clock, room, tickets)
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

/// Resident memory added per waiting ticket (RSS delta over a million joins, users included).
fn footprint() {
    let rt = rt();
    let before = rss_bytes();
    let (store, _clock, room, tickets) = filled(&rt, WAITING, 1);
    let ids_bytes = (tickets.capacity() * std::mem::size_of::<TicketId>()) as u64;
    let after = rss_bytes();
    let per = (after - before).saturating_sub(ids_bytes) as f64 / WAITING as f64;
    let waiting = rt.block_on(store.stats(&room)).unwrap().waiting;
    println!("memory_store/bytes_per_waiting_ticket: {per:.1} B ({waiting} waiting)");
}

fn memory_store(c: &mut Criterion) {
    let rt = rt();
    let (store, clock, room, tickets) = filled(&rt, WAITING, 3000);
    let mut g = c.benchmark_group("memory_store");
    g.throughput(Throughput::Elements(1));
    let mut next = WAITING;
    g.bench_function("join", |b| {
        b.iter(|| {
            next += 1;
            black_box(rt.block_on(store.join(&room, &user(next))).unwrap());
        })
    });
    let mut i = 0usize;
    g.bench_function("status_1m_waiting", |b| {
        b.iter(|| {
            i = (i + 7919) % tickets.len();
            black_box(rt.block_on(store.status(&room, tickets[i])).unwrap());
        })
    });
    g.throughput(Throughput::Elements(3000));
    g.sample_size(20);
    g.bench_function("tick_3000_of_1m", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                // Keep about a million waiting: refill what the last tick admitted (untimed).
                rt.block_on(async {
                    for _ in 0..3000 {
                        next += 1;
                        store.join(&room, &user(next)).await.unwrap();
                    }
                });
                clock.advance(1000);
                let t = Instant::now();
                let out = rt.block_on(store.tick(&room)).unwrap();
                total += t.elapsed();
                assert_eq!(out.admitted.len(), 3000);
            }
            total
        })
    });
    g.finish();
}

fn tokens(c: &mut Criterion) {
    let keys = KeySet::new("bench", SigningKey::generate().unwrap());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let cnf = cnf_of(b"secret");
    let mut g = c.benchmark_group("tokens");
    g.throughput(Throughput::Elements(1));
    g.bench_function("sign", |b| {
        b.iter(|| black_box(keys.sign("room", "user", "ticket", &cnf, now, now + 600).unwrap()))
    });
    let a = keys.sign("room", "user", "a", &cnf, now, now + 600).unwrap();
    let b2 = keys.sign("room", "user", "b", &cnf, now, now + 600).unwrap();
    let jwks = keys.jwks();
    let pk = queue_core::token::PublicKey::from_jwk(&jwks.keys[0]).unwrap();
    // A one-entry cache that two alternating tokens keep evicting: every call is a full verify.
    let tiny = VerifiedCache::new(1);
    let mut flip = false;
    g.bench_function("verify", |b| {
        b.iter(|| {
            flip = !flip;
            let t = if flip { &a } else { &b2 };
            black_box(verify_token(t, "room", None, 5, &tiny, |_| Some(pk.clone())).unwrap())
        })
    });
    keys.verify(&a, "room").unwrap();
    g.bench_function("verify_cached", |b| b.iter(|| black_box(keys.verify(&a, "room").unwrap())));
    g.finish();
}

fn main() {
    footprint();
    let mut c = Criterion::default().configure_from_args();
    memory_store(&mut c);
    tokens(&mut c);
    c.final_summary();
}
