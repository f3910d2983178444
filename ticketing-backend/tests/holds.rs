//! Seat holds, the same suite on the in-process store and on Redis (a real `redis-server`
//! started by the testkit): all or none, one winner per seat, expiry, sales, and 5,000
//! concurrent requests for 100 seats.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use queue_core::testkit::RedisServer;
use ticketing_backend::holds::{HoldOutcome, Holds, SeatState};

async fn rules(h: &Holds) {
    let s = 1;
    assert!(matches!(h.hold(s, &[1, 2, 3], "a", 60_000).await.unwrap(), HoldOutcome::Held { .. }));
    assert_eq!(h.hold(s, &[3, 4], "b", 60_000).await.unwrap(), HoldOutcome::Taken(vec![3]), "all or none");
    assert!(matches!(h.hold(s, &[4], "b", 60_000).await.unwrap(), HoldOutcome::Held { .. }), "4 stayed free");
    assert!(
        matches!(h.hold(s, &[1], "a", 60_000).await.unwrap(), HoldOutcome::Held { .. }),
        "the owner may renew"
    );
    assert_eq!(h.release(s, &[1, 4], "a").await.unwrap(), 1, "only a's own hold is released");
    assert_eq!(h.sell(s, &[2, 4], "a").await.unwrap(), Err(vec![4]), "a sale is all or none");
    assert_eq!(h.sell(s, &[2, 3], "a").await.unwrap(), Ok(()));
    assert_eq!(h.sell(s, &[2, 3], "a").await.unwrap(), Ok(()), "selling again is a no-op");
    assert_eq!(h.release(s, &[2, 3], "a").await.unwrap(), 0, "a sale is never released");
    assert_eq!(h.hold(s, &[2], "c", 60_000).await.unwrap(), HoldOutcome::Taken(vec![2]));
    let states = h.states(s).await.unwrap();
    assert_eq!(states, HashMap::from([(2, SeatState::Sold), (3, SeatState::Sold), (4, SeatState::Held)]));
    assert!(h.states(2).await.unwrap().is_empty(), "schedules are separate");
    // A refund frees the owner's sales and holds, never another's.
    assert_eq!(h.free(s, &[2, 4], "a").await.unwrap(), 1, "b's hold on 4 stays");
    assert_eq!(h.free(s, &[3, 4], "b").await.unwrap(), 1, "a's sale of 3 stays");
    assert_eq!(h.states(s).await.unwrap(), HashMap::from([(3, SeatState::Sold)]));
}

async fn expiry(h: &Holds) {
    let s = 3;
    assert!(matches!(h.hold(s, &[1, 2], "a", 300).await.unwrap(), HoldOutcome::Held { .. }));
    assert_eq!(h.hold(s, &[2], "b", 60_000).await.unwrap(), HoldOutcome::Taken(vec![2]));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(h.states(s).await.unwrap().is_empty(), "expired holds are available");
    assert!(matches!(h.hold(s, &[2], "b", 60_000).await.unwrap(), HoldOutcome::Held { .. }));
    assert_eq!(
        h.sell(s, &[1, 2], "a").await.unwrap(),
        Err(vec![2]),
        "an expired hold taken by another cannot sell"
    );
    assert_eq!(h.sell(s, &[1], "a").await.unwrap(), Ok(()), "an expired hold nobody took still sells");
    assert_eq!(h.sweep(s).await.unwrap(), 0);
    assert!(matches!(h.hold(s, &[5], "c", 100).await.unwrap(), HoldOutcome::Held { .. }));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.sweep(s).await.unwrap(), 1);
}

/// 5,000 requests at once for 100 seats: every seat alone (twice), and many overlapping
/// multi-seat requests. Every seat ends up held by exactly one winner; losers hold nothing.
async fn contention(h: Arc<Holds>) {
    let s = 4;
    let mut requests: Vec<Vec<i64>> = (1..=100).flat_map(|seat| [vec![seat], vec![seat]]).collect();
    let mut rng = 7u64;
    while requests.len() < 5_000 {
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let first = (rng >> 33) % 100 + 1;
        let len = (rng >> 20) % 4 + 2;
        requests.push((first..first + len).map(|x| ((x - 1) % 100 + 1) as i64).collect());
    }
    let tasks: Vec<_> = requests
        .into_iter()
        .enumerate()
        .map(|(i, seats)| {
            let h = h.clone();
            tokio::spawn(async move {
                let owner = format!("r{i}");
                let out = h.hold(s, &seats, &owner, 60_000).await.unwrap();
                (owner, seats, out)
            })
        })
        .collect();
    let mut holder: HashMap<i64, String> = HashMap::new();
    let mut losers = Vec::new();
    for t in tasks {
        let (owner, seats, out) = t.await.unwrap();
        match out {
            HoldOutcome::Held { .. } => {
                for seat in seats {
                    assert!(holder.insert(seat, owner.clone()).is_none(), "seat {seat} held twice");
                }
            }
            HoldOutcome::Taken(taken) => {
                assert!(!taken.is_empty() && taken.iter().all(|t| seats.contains(t)));
                losers.push((owner, seats));
            }
        }
    }
    assert_eq!(holder.len(), 100, "all 100 seats end up held");
    let states = h.states(s).await.unwrap();
    assert_eq!(states.len(), 100);
    assert!(states.values().all(|st| *st == SeatState::Held));
    for (owner, seats) in losers {
        assert_eq!(h.release(s, &seats, &owner).await.unwrap(), 0, "{owner} holds no part of {seats:?}");
    }
    let winners: HashSet<&String> = holder.values().collect();
    for w in winners {
        let mine: Vec<i64> = holder.iter().filter(|(_, o)| *o == w).map(|(s, _)| *s).collect();
        assert_eq!(h.sell(s, &mine, w).await.unwrap(), Ok(()), "every winner holds all it asked for");
    }
}

macro_rules! suite {
    ($name:ident, $make:expr) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn rules() {
                let (_server, h) = $make;
                super::rules(&h).await
            }
            #[tokio::test]
            async fn expiry() {
                let (_server, h) = $make;
                super::expiry(&h).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 8)]
            async fn contention() {
                let (_server, h) = $make;
                super::contention(Arc::new(h)).await
            }
        }
    };
}

suite!(memory, (None::<RedisServer>, Holds::memory()));
suite!(redis, {
    let server = RedisServer::start();
    let h = Holds::redis(&server.url()).await.unwrap();
    (Some(server), h)
});
