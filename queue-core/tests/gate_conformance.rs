//! One conformance suite for the overload gate's log, run against the in-process log, Redis
//! Streams on one node and on a 3-master Redis Cluster (servers started by the testkit).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use queue_core::Error;
use queue_core::gate::*;
use queue_core::testkit::{RedisCluster, RedisServer, unique_room};

async fn gate(log: &dyn GateLog) -> GateId {
    let id = GateId::parse(unique_room("gate").as_str()).unwrap();
    let cfg = GateConfig {
        prefixes: vec!["/api/v1/reservations".into()],
        replayable: true,
        ..GateConfig::default()
    };
    assert!(log.put_gate(&id, &cfg).await.unwrap());
    id
}

fn req(i: usize) -> LoggedRequest {
    LoggedRequest {
        method: "POST".into(),
        path: format!("/api/v1/reservations?i={i}"),
        headers: vec![
            ("idempotency-key".into(), format!("key-{i}")),
            ("content-type".into(), "application/json".into()),
        ],
        body: Bytes::from(format!("{{\"i\":{i}}}")),
    }
}

fn resp(status: u16, body: &str) -> StoredResponse {
    StoredResponse {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body: Bytes::from(body.to_owned()),
    }
}

const TTL: Duration = Duration::from_secs(60);

pub async fn configs_round_trip_and_busy_gates_stay(log: &dyn GateLog) {
    let g = gate(log).await;
    let mut cfg = GateConfig { prefixes: vec!["/x".into()], max_inflight: 3, ..GateConfig::default() };
    assert!(!log.put_gate(&g, &cfg).await.unwrap(), "second put updates");
    cfg.hold_ms = 10;
    log.put_gate(&g, &cfg).await.unwrap();
    let found = log.gates().await.unwrap().into_iter().find(|(id, _)| id == &g).unwrap();
    assert_eq!(found.1, cfg);
    log.append(&g, &req(0), 10).await.unwrap();
    assert!(matches!(log.delete_gate(&g).await, Err(Error::GateBusy(_, 1))), "a gate with a backlog stays");
    let d = log.next(&g, "a").await.unwrap().unwrap();
    assert!(log.finish(&g, d.id, &resp(200, "{}"), TTL, None).await.unwrap());
    assert!(log.delete_gate(&g).await.unwrap());
    assert!(!log.delete_gate(&g).await.unwrap());
    assert!(log.gates().await.unwrap().iter().all(|(id, _)| id != &g));
    assert!(matches!(log.append(&g, &req(1), 10).await, Err(Error::UnknownGate(_))));
}

/// A deleted gate is told apart from one the store lost; a refused deletion notes nothing.
pub async fn deletions_are_remembered(log: &dyn GateLog) {
    let g = gate(log).await;
    assert!(!log.was_deleted(&g).await.unwrap(), "a live gate");
    log.append(&g, &req(0), 10).await.unwrap();
    assert!(matches!(log.delete_gate(&g).await, Err(Error::GateBusy(..))));
    assert!(!log.was_deleted(&g).await.unwrap(), "a refused deletion");
    let d = log.next(&g, "a").await.unwrap().unwrap();
    log.finish(&g, d.id, &resp(200, "{}"), TTL, None).await.unwrap();
    assert!(log.delete_gate(&g).await.unwrap());
    assert!(log.was_deleted(&g).await.unwrap());
    log.put_gate(&g, &GateConfig::default()).await.unwrap();
    assert!(!log.was_deleted(&g).await.unwrap(), "created again after its deletion");
}

pub async fn entries_replay_in_offset_order(log: &dyn GateLog) {
    let g = gate(log).await;
    let mut appended = Vec::new();
    for i in 0..5 {
        let a = log.append(&g, &req(i), 100).await.unwrap();
        assert_eq!(a.position, i as u64 + 1);
        appended.push(a.id);
    }
    assert!(appended.windows(2).all(|w| w[0] < w[1]), "offsets grow");
    assert_eq!(log.poll(&g, appended[3]).await.unwrap(), Polled::Pending { position: 4 });
    let mut delivered = Vec::new();
    while let Some(d) = log.next(&g, "a").await.unwrap() {
        assert_eq!(d.request, req(delivered.len()), "the request comes back as logged");
        delivered.push(d.id);
    }
    assert_eq!(delivered, appended);
    assert_eq!(log.attempt(&g, "a", appended[0]).await.unwrap(), Some(1));
    assert!(log.finish(&g, appended[0], &resp(201, "{\"ok\":0}"), TTL, None).await.unwrap());
    assert!(!log.finish(&g, appended[0], &resp(500, "again"), TTL, None).await.unwrap(), "finished once");
    assert_eq!(log.poll(&g, appended[0]).await.unwrap(), Polled::Done(resp(201, "{\"ok\":0}")));
    assert_eq!(log.poll(&g, appended[3]).await.unwrap(), Polled::Pending { position: 3 });
    let unknown = EntryId { ms: 1, seq: 0 };
    assert_eq!(log.poll(&g, unknown).await.unwrap(), Polled::Unknown);
    let c = log.counts(&g).await.unwrap();
    assert_eq!((c.logged, c.backlog, c.dead_letters), (5, 4, 0));
}

pub async fn dead_consumers_entries_are_claimed(log: &dyn GateLog) {
    let g = gate(log).await;
    let id = log.append(&g, &req(7), 100).await.unwrap().id;
    assert_eq!(log.next(&g, "dead").await.unwrap().unwrap().id, id);
    assert_eq!(log.attempt(&g, "dead", id).await.unwrap(), Some(1));
    assert!(log.next(&g, "alive").await.unwrap().is_none(), "given to one consumer only");
    assert!(log.claim(&g, "alive", Duration::from_secs(30), 10).await.unwrap().is_empty(), "not idle yet");
    tokio::time::sleep(Duration::from_millis(120)).await;
    let claimed = log.claim(&g, "alive", Duration::from_millis(100), 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].request, req(7));
    assert_eq!(log.attempt(&g, "dead", id).await.unwrap(), None, "the old owner lost it");
    assert_eq!(log.attempt(&g, "alive", id).await.unwrap(), Some(2), "attempts carry over");
    assert!(log.finish(&g, id, &resp(200, "x"), TTL, None).await.unwrap());
    assert!(log.claim(&g, "other", Duration::ZERO, 10).await.unwrap().is_empty());
}

pub async fn dead_letters_keep_the_request(log: &dyn GateLog) {
    let g = gate(log).await;
    let mut r = req(9);
    r.body = Bytes::from_static(&[0, 159, 146, 150, 255]);
    let id = log.append(&g, &r, 100).await.unwrap().id;
    log.next(&g, "a").await.unwrap().unwrap();
    let err = resp(502, "{\"error\":{\"code\":\"replay_failed\"}}");
    assert!(log.finish(&g, id, &err, TTL, Some("upstream unreachable")).await.unwrap());
    assert_eq!(log.poll(&g, id).await.unwrap(), Polled::Done(err));
    let dead = log.dead_letters(&g, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].id, dead[0].reason.as_str()), (id, "upstream unreachable"));
    assert_eq!(dead[0].request, r, "binary bodies survive");
    let c = log.counts(&g).await.unwrap();
    assert_eq!((c.logged, c.backlog, c.dead_letters), (1, 0, 1));
}

pub async fn full_logs_refuse(log: &dyn GateLog) {
    let g = gate(log).await;
    log.append(&g, &req(0), 2).await.unwrap();
    log.append(&g, &req(1), 2).await.unwrap();
    assert!(matches!(log.append(&g, &req(2), 2).await, Err(Error::LogFull(_))));
    assert_eq!(log.counts(&g).await.unwrap().logged, 2, "a refused request is not counted");
}

pub async fn responses_expire(log: &dyn GateLog) {
    let g = gate(log).await;
    let id = log.append(&g, &req(0), 10).await.unwrap().id;
    log.next(&g, "a").await.unwrap();
    log.finish(&g, id, &resp(200, "x"), Duration::from_secs(1), None).await.unwrap();
    assert!(matches!(log.poll(&g, id).await.unwrap(), Polled::Done(_)));
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert_eq!(log.poll(&g, id).await.unwrap(), Polled::Unknown);
}

pub async fn concurrent_consumers_share_without_duplicates(log: Arc<dyn GateLog>) {
    let g = gate(&*log).await;
    let mut all = HashSet::new();
    for i in 0..200 {
        all.insert(log.append(&g, &req(i), 1_000).await.unwrap().id);
    }
    let tasks: Vec<_> = (0..4)
        .map(|c| {
            let (log, g) = (log.clone(), g.clone());
            tokio::spawn(async move {
                let me = format!("c{c}");
                let mut got = Vec::new();
                while let Some(d) = log.next(&g, &me).await.unwrap() {
                    assert_eq!(log.attempt(&g, &me, d.id).await.unwrap(), Some(1));
                    assert!(log.finish(&g, d.id, &resp(200, "ok"), TTL, None).await.unwrap());
                    got.push(d.id);
                }
                got
            })
        })
        .collect();
    let mut seen = HashSet::new();
    for t in tasks {
        for id in t.await.unwrap() {
            assert!(seen.insert(id), "{id} delivered twice");
        }
    }
    assert_eq!(seen, all);
    assert_eq!(log.counts(&g).await.unwrap().backlog, 0);
}

macro_rules! conformance {
    ($name:ident, $make:expr) => {
        mod $name {
            use super::*;

            async fn log() -> Arc<dyn GateLog> {
                $make
            }

            #[tokio::test]
            async fn configs_round_trip_and_busy_gates_stay() {
                super::configs_round_trip_and_busy_gates_stay(&*log().await).await
            }
            #[tokio::test]
            async fn deletions_are_remembered() {
                super::deletions_are_remembered(&*log().await).await
            }
            #[tokio::test]
            async fn entries_replay_in_offset_order() {
                super::entries_replay_in_offset_order(&*log().await).await
            }
            #[tokio::test]
            async fn dead_consumers_entries_are_claimed() {
                super::dead_consumers_entries_are_claimed(&*log().await).await
            }
            #[tokio::test]
            async fn dead_letters_keep_the_request() {
                super::dead_letters_keep_the_request(&*log().await).await
            }
            #[tokio::test]
            async fn full_logs_refuse() {
                super::full_logs_refuse(&*log().await).await
            }
            #[tokio::test]
            async fn responses_expire() {
                super::responses_expire(&*log().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_consumers_share_without_duplicates() {
                super::concurrent_consumers_share_without_duplicates(log().await).await
            }
        }
    };
}

async fn redis_log(urls: &str) -> Arc<dyn GateLog> {
    let store = queue_core::RedisStore::connect(urls).await.unwrap();
    Arc::new(store.gate_log().await.unwrap())
}

conformance!(memory, Arc::new(MemoryGateLog::new()));
conformance!(redis_single, redis_log(&RedisServer::shared().url()).await);
conformance!(redis_cluster, redis_log(&RedisCluster::shared().urls()).await);
