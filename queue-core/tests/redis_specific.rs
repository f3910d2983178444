//! What only the Redis store has: script reloading, one hash slot per room, cross-instance
//! events, and behaviour when Redis goes away.

use std::time::Duration;

use queue_core::store::redis::{room_keys, with_prelude};
use queue_core::testkit::{RedisCluster, RedisServer, unique_room};
use queue_core::*;

fn user(n: usize) -> UserKey {
    UserKey::parse(&format!("user-{n}")).unwrap()
}

#[tokio::test]
async fn scripts_reload_after_script_flush() {
    let server = RedisServer::shared();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let room = unique_room("flush");
    store.put_room(&room, &RoomConfig::default()).await.unwrap();
    server.command("SCRIPT FLUSH").unwrap();
    let out = store.join(&room, &user(1)).await.unwrap();
    assert!(out.created, "join after SCRIPT FLUSH must reload the script (NOSCRIPT)");
}

/// A room the store lost (here: FLUSHALL, as a restart without persistence) is not taken
/// for a deleted one; the deletion note lives in the room's slot and expires.
#[tokio::test]
async fn lost_rooms_are_not_deleted_rooms() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let (lost, deleted) = (unique_room("lost"), unique_room("deleted"));
    for r in [&lost, &deleted] {
        store.put_room(r, &RoomConfig::default()).await.unwrap();
    }
    store.delete_room(&deleted).await.unwrap();
    let note = format!("wr:{{{deleted}}}:deleted");
    let ttl: i64 =
        server.command(&format!("TTL {note}")).unwrap().trim().trim_start_matches(':').parse().unwrap();
    assert!((3590..=3600).contains(&ttl), "the note expires with DELETION_MEMORY: {ttl}");
    assert!(store.was_deleted(&deleted).await.unwrap());
    server.command("FLUSHALL").unwrap();
    assert!(store.room_config(&lost).await.unwrap().is_none());
    assert!(!store.was_deleted(&lost).await.unwrap(), "lost, not deleted");
}

/// The overload gate's five scripts reload the same way (they once went through redis-rs's
/// own reloading invocation, the room scripts through the store's).
#[tokio::test]
async fn gate_scripts_reload_after_script_flush() {
    use queue_core::gate::{GateConfig, GateId, GateLog, LoggedRequest, Polled, StoredResponse};
    let server = RedisServer::shared();
    let log = RedisStore::connect(&server.url()).await.unwrap().gate_log().await.unwrap();
    let gate = GateId::parse(unique_room("gflush").as_str()).unwrap();
    let cfg = GateConfig { prefixes: vec!["/x".into()], replayable: true, ..GateConfig::default() };
    log.put_gate(&gate, &cfg).await.unwrap();
    let flush = || server.command("SCRIPT FLUSH").unwrap();
    let req = LoggedRequest { method: "POST".into(), path: "/x".into(), headers: vec![], body: "{}".into() };
    flush();
    let appended = log.append(&gate, &req, 10).await.unwrap();
    let delivery = log.next(&gate, "c").await.unwrap().expect("the appended entry");
    assert_eq!(delivery.id, appended.id);
    flush();
    assert_eq!(log.attempt(&gate, "c", delivery.id).await.unwrap(), Some(1));
    flush();
    let resp = StoredResponse { status: 201, headers: vec![], body: "done".into() };
    assert!(log.finish(&gate, delivery.id, &resp, Duration::from_secs(60), None).await.unwrap());
    flush();
    assert!(matches!(log.poll(&gate, delivery.id).await.unwrap(), Polled::Done(r) if r.status == 201));
    flush();
    assert!(log.delete_gate(&gate).await.unwrap());
}

#[tokio::test]
async fn room_keys_share_one_cluster_slot() {
    let cluster = RedisCluster::shared();
    let room = unique_room("slot");
    let slots: std::collections::HashSet<String> = room_keys(&room)
        .iter()
        .map(|k| cluster.nodes()[0].command(&format!("CLUSTER KEYSLOT {k}")).unwrap())
        .collect();
    assert_eq!(slots.len(), 1, "keys of one room must hash to one slot: {slots:?}");
    // The names data already stored under must keep.
    let keys = room_keys(&room);
    assert_eq!((&*keys[0], &*keys[14]), (&*format!("wr:{{{room}}}:cfg"), &*format!("wr:{{{room}}}:revoked")));
    // Rooms spread over the cluster's nodes: each store call lands on its room's node.
    let store = RedisStore::connect(&cluster.urls()).await.unwrap();
    for i in 0..20 {
        let r = unique_room(&format!("spread{i}"));
        store.put_room(&r, &RoomConfig::default()).await.unwrap();
        store.join(&r, &user(i)).await.unwrap();
    }
    let mut nodes_with_keys = 0;
    for node in cluster.nodes() {
        let size = node.command("DBSIZE").unwrap();
        if !size.trim().ends_with(":0") {
            nodes_with_keys += 1;
        }
    }
    assert!(nodes_with_keys >= 2, "20 rooms all landed on one node");
}

#[tokio::test]
async fn events_reach_every_instance() {
    for urls in [RedisServer::shared().url(), RedisCluster::shared().urls()] {
        let a = RedisStore::connect(&urls).await.unwrap();
        let b = RedisStore::connect(&urls).await.unwrap();
        let mut rx = b.subscribe();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let room = unique_room("fanout");
        a.put_room(&room, &RoomConfig { tick_interval_ms: 100, ..RoomConfig::default() }).await.unwrap();
        let t = a.join(&room, &user(1)).await.unwrap().status.ticket;
        let admitted = loop {
            let out = a.tick(&room).await.unwrap();
            if out.applied {
                break out;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(admitted.admitted[0].ticket, t);
        let got = tokio::time::timeout(Duration::from_secs(3), async {
            loop {
                if let Ok(RoomEvent::Admitted { room: r, tickets, .. }) = rx.recv().await
                    && r == room
                {
                    return tickets;
                }
            }
        })
        .await
        .expect("instance b never heard of the admission");
        assert_eq!(got, vec![t]);
    }
}

#[tokio::test]
async fn unreachable_redis_is_an_error_not_a_hang() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let room = unique_room("down");
    store.put_room(&room, &RoomConfig::default()).await.unwrap();
    store.ping().await.unwrap();
    drop(server);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let res = tokio::time::timeout(Duration::from_secs(15), store.join(&room, &user(1))).await;
    match res {
        Ok(Err(e)) => assert!(!e.is_client_error(), "a store outage is not the client's fault: {e}"),
        Ok(Ok(_)) => panic!("join succeeded without Redis"),
        Err(_) => panic!("join hung without Redis"),
    }
    assert!(store.ping().await.is_err());
}

async fn connection() -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(RedisServer::shared().url()).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

/// EVAL of `body` after the prelude functions it uses, with `room`'s keys and `args` after the
/// channel and room arguments, as the store calls its scripts.
fn prelude_eval<A: redis::ToRedisArgs>(room: &RoomId, body: &str, args: &[A]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(with_prelude(body))
        .arg(room_keys(room).len())
        .arg(&room_keys(room))
        .arg("events")
        .arg(room.as_str())
        .arg(args);
    cmd
}

/// Scripts hand Redis the store's clock as a string spliced from `TIME`'s digits (no
/// printf): it must be the same number of milliseconds, whatever the µs part's length.
#[tokio::test]
async fn the_clock_string_is_the_clock() {
    let mut con = connection().await;
    let room = unique_room("clock");
    let eval = |body: &str, args: &[&str]| prelude_eval(&room, body, args);
    for (s, us) in [(1_795_991_400_u64, 0_u64), (1_795_991_400, 7), (1_795_991_400, 5_023), (1, 999_999)] {
        let (s_text, us_text) = (s.to_string(), us.to_string());
        let got: String = eval("return ms_string(ARGV[3], ARGV[4])", &[&s_text, &us_text])
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(got, (s * 1000 + us / 1000).to_string(), "TIME {s} s {us} µs");
    }
    for _ in 0..200 {
        let (ms, ms_text): (i64, String) =
            eval("local ms, _, s = clock() return { ms, s }", &[]).query_async(&mut con).await.unwrap();
        assert_eq!(ms.to_string(), ms_text);
    }
}

/// Scripts work through long lists in ranges of at most 1,000 (Lua's `unpack` limit): every
/// index from the first asked for is covered once, across range boundaries too.
#[tokio::test]
async fn long_lists_are_worked_through_in_ranges() {
    let mut con = connection().await;
    let room = unique_room("chunks");
    let keys = room_keys(&room);
    let tickets: Vec<String> = (0..2_500).map(|i| format!("{i:032x}")).collect();
    let eval = |body: &str| prelude_eval(&room, body, &tickets);
    let ranges: Vec<i64> = eval(
        "local out = {} chunked(ARGV, function(i, j) out[#out + 1] = i out[#out + 1] = j end, 3) return out",
    )
    .query_async(&mut con)
    .await
    .unwrap();
    assert_eq!(ranges, vec![3, 1002, 1003, 2002, 2003, 2502]);

    let mut seed = redis::cmd("ZADD");
    seed.arg(&keys[3]);
    for t in &tickets {
        seed.arg(0).arg(t);
    }
    let () = seed.query_async(&mut con).await.unwrap();
    let () = eval("mark_seen(ARGV, 3, '123') return nil").query_async(&mut con).await.unwrap();
    let marked: usize =
        redis::cmd("ZCOUNT").arg(&keys[3]).arg(123).arg(123).query_async(&mut con).await.unwrap();
    assert_eq!(marked, tickets.len(), "every ticket seen, none left at 0");
}

/// A status read answers waiting tickets by plain commands and the rest by the status
/// script: both must say what the script says for each ticket, in one batch and in order.
#[tokio::test]
async fn plain_status_reads_agree_with_the_script() {
    let store = RedisStore::connect(&RedisServer::shared().url()).await.unwrap();
    let mut con = connection().await;
    let room = unique_room("reads");
    store.put_room(&room, &RoomConfig { batch_size: 2, ..RoomConfig::default() }).await.unwrap();
    let mut tickets = Vec::new();
    for i in 0..6 {
        tickets.push(store.join(&room, &user(i)).await.unwrap().status.ticket);
    }
    store.tick(&room).await.unwrap();
    store.leave(&room, tickets[4]).await.unwrap();
    let unknown = TicketId::new(tickets[0].seq(), tickets[0].random() ^ 1);
    let asked = [tickets[0], tickets[2], unknown, tickets[4], tickets[5], tickets[1], tickets[3]];
    let many = store.status_many(&room, &asked).await.unwrap();
    // Asked again, the room's head and the tickets' infos come from the read cache.
    let again = store.status_many(&room, &asked).await.unwrap();
    let key = |m: &Option<TicketStatus>| {
        m.as_ref().map(|s| (s.state, s.position, s.owner, s.joined_at_ms, s.phase))
    };
    assert_eq!(again.iter().map(key).collect::<Vec<_>>(), many.iter().map(key).collect::<Vec<_>>());

    let args: Vec<String> = asked.iter().map(ToString::to_string).collect();
    let script: Vec<redis::Value> =
        prelude_eval(&room, include_str!("../../lua/status.lua"), &args).query_async(&mut con).await.unwrap();
    let field = |i: usize| match &script[i] {
        redis::Value::BulkString(b) => String::from_utf8(b.clone()).unwrap(),
        redis::Value::Int(n) => n.to_string(),
        other => panic!("{other:?}"),
    };
    let mut states = Vec::new();
    for (i, got) in many.iter().enumerate() {
        let base = 9 + 5 * i;
        let (state, pos, owner, joined) = (field(base), field(base + 1), field(base + 3), field(base + 4));
        states.push(state.clone());
        let Some(got) = got else {
            assert_eq!(state, "unknown", "ticket {i}");
            continue;
        };
        let got_state = format!("{:?}", got.state).to_lowercase();
        let got_pos = got.position.map_or(-1, |p| p as i64).to_string();
        assert_eq!((got_state, got_pos), (state, pos), "ticket {i}");
        assert_eq!((got.owner.to_string(), got.joined_at_ms.to_string()), (owner, joined), "ticket {i}");
    }
    assert_eq!(states, ["admitted", "waiting", "unknown", "left", "waiting", "admitted", "waiting"]);
}

/// The read cache keeps a room's head (config, clock, rate) briefly, tickets' infos, and
/// ranks only with the rank version they were read at: another gateway's admissions and
/// leaves show at once, its config changes within 1 s (DESIGN §4), this handle's own changes
/// at once, a room deleted elsewhere is unknown at once.
#[tokio::test]
async fn cached_status_reads_stay_exact() {
    for urls in [RedisServer::shared().url(), RedisCluster::shared().urls()] {
        let a = RedisStore::connect(&urls).await.unwrap();
        let b = RedisStore::connect(&urls).await.unwrap();
        let room = unique_room("cached");
        a.put_room(&room, &RoomConfig { batch_size: 2, paused: true, ..RoomConfig::default() })
            .await
            .unwrap();
        let mut t = Vec::new();
        for i in 0..6 {
            t.push(a.join(&room, &user(i)).await.unwrap().status.ticket);
        }
        let read = |s: Vec<Option<TicketStatus>>| -> Vec<(TicketState, Option<u64>)> {
            s.into_iter().map(|s| s.map(|s| (s.state, s.position)).unwrap()).collect()
        };
        let waiting = |p: u64| (TicketState::Waiting, Some(p));
        assert_eq!(read(a.status_many(&room, &t).await.unwrap()), (1..=6).map(waiting).collect::<Vec<_>>());
        assert_eq!(a.status(&room, t[0]).await.unwrap().phase, RoomPhase::Paused);

        // Another gateway admits two and a third leaves: seen by the next read.
        b.admit(&room, 2).await.unwrap();
        b.leave(&room, t[3]).await.unwrap();
        let after = read(a.status_many(&room, &t).await.unwrap());
        let admitted = (TicketState::Admitted, None);
        let left = (TicketState::Left, None);
        assert_eq!(after, [admitted, admitted, waiting(1), left, waiting(2), waiting(3)]);

        // Another gateway's config change: within 1 s.
        let started = std::time::Instant::now();
        b.set_paused(&room, false).await.unwrap();
        while a.status(&room, t[2]).await.unwrap().phase != RoomPhase::Open {
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "resumed elsewhere, still paused here after 1 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // This handle's own change: at once.
        a.set_paused(&room, true).await.unwrap();
        assert_eq!(a.status(&room, t[2]).await.unwrap().phase, RoomPhase::Paused);

        // Deleted elsewhere: unknown at once, not answered from the cache.
        b.delete_room(&room).await.unwrap();
        assert!(matches!(a.status_many(&room, &t[2..]).await, Err(Error::UnknownRoom(_))));
    }
}

/// Calls of `cmd` a server has run (`INFO commandstats`).
fn calls(server: &RedisServer, cmd: &str) -> u64 {
    let info = server.command("INFO commandstats").unwrap();
    let line = format!("cmdstat_{cmd}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&line))
        .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
}

/// A rank read at one rank version answers polls while that version holds, with no rank read
/// (one `HGET` of the version per batch); every change that moves ranks, made by another
/// gateway, shows at the next read: admissions (lever and tick), a leave ahead, idle drops,
/// the draw, and a room deleted and made again under the same name.
#[tokio::test]
async fn ranks_are_read_again_only_when_they_moved() {
    let server = RedisServer::start();
    let a = RedisStore::connect(&server.url()).await.unwrap();
    let b = RedisStore::connect(&server.url()).await.unwrap();
    let room = unique_room("ranks");
    let paused = RoomConfig { batch_size: 2, tick_interval_ms: 100, paused: true, ..RoomConfig::default() };
    a.put_room(&room, &paused).await.unwrap();
    let mut t = Vec::new();
    for i in 0..8 {
        t.push(a.join(&room, &user(i)).await.unwrap().status.ticket);
    }
    let positions = |s: Vec<Option<TicketStatus>>| -> Vec<Option<u64>> {
        s.into_iter().map(|s| s.and_then(|s| s.position)).collect()
    };
    let all: Vec<Option<u64>> = (1..=8).map(Some).collect();
    assert_eq!(positions(a.status_many(&room, &t).await.unwrap()), all);
    let before = calls(&server, "zrank");
    for _ in 0..3 {
        assert_eq!(positions(a.status_many(&room, &t).await.unwrap()), all);
    }
    assert_eq!(calls(&server, "zrank"), before, "unchanged ranks are not read again");

    // The lever, elsewhere: the two first are admitted, everyone else moves up by two.
    b.admit(&room, 2).await.unwrap();
    let want = [None, None, Some(1), Some(2), Some(3), Some(4), Some(5), Some(6)];
    assert_eq!(positions(a.status_many(&room, &t).await.unwrap()), want);
    // A leave ahead, elsewhere.
    b.leave(&room, t[2]).await.unwrap();
    let want = [None, None, None, Some(1), Some(2), Some(3), Some(4), Some(5)];
    assert_eq!(positions(a.status_many(&room, &t).await.unwrap()), want);
    // A tick, elsewhere.
    b.set_paused(&room, false).await.unwrap();
    let ticked = b.tick(&room).await.unwrap();
    assert!(ticked.applied && ticked.admitted.len() == 2, "{ticked:?}");
    let want = [None, None, None, None, None, Some(1), Some(2), Some(3)];
    assert_eq!(positions(a.status_many(&room, &t).await.unwrap()), want);
    let states: Vec<TicketState> =
        a.status_many(&room, &t).await.unwrap().into_iter().map(|s| s.unwrap().state).collect();
    assert_eq!(states[3..5], [TicketState::Admitted, TicketState::Admitted]);

    // Idle drops, elsewhere: the last two were seen long ago (their `seen` set back), t[5] now.
    let mut con = server.connect().unwrap();
    for &x in &t[6..] {
        con.command(&format!("ZADD wr:{{{room}}}:seen 1 {x}")).unwrap();
    }
    b.set_paused(&room, true).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let ticked = b.tick(&room).await.unwrap();
    assert!(ticked.applied && ticked.dropped == 2, "{ticked:?}");
    let got = a.status_many(&room, &t[5..]).await.unwrap();
    let got: Vec<(TicketState, Option<u64>)> =
        got.into_iter().map(|s| s.map(|s| (s.state, s.position)).unwrap()).collect();
    assert_eq!(
        got,
        [(TicketState::Waiting, Some(1)), (TicketState::Dropped, None), (TicketState::Dropped, None)]
    );

    // The room deleted and made again under its name: the old tickets are unknown.
    b.delete_room(&room).await.unwrap();
    b.put_room(&room, &paused).await.unwrap();
    // As many rank changes as the old room had when t[5] was read: its version numbers start
    // afresh, not where the old room's did.
    for i in 0..4 {
        b.join(&room, &user(100 + i)).await.unwrap();
        assert_eq!(b.admit(&room, 1).await.unwrap().len(), 1);
    }
    let again = b.join(&room, &user(200)).await.unwrap().status.ticket;
    let got = a.status_many(&room, &[t[5], again]).await.unwrap();
    assert!(got[0].is_none(), "{got:?}");
    assert_eq!(got[1].as_ref().and_then(|s| s.position), Some(1));
}
