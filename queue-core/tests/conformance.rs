//! One conformance suite, run against every store: MemoryStore, RedisStore on one node, and
//! RedisStore on a 3-master Redis Cluster (servers started by `queue_core::testkit`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use queue_core::config::QueueMethod;
use queue_core::testkit::{RedisCluster, RedisServer, unique_room};
use queue_core::*;

fn user(n: usize) -> UserKey {
    UserKey::parse(&format!("user-{n}")).unwrap()
}

fn cfg(batch: u32) -> RoomConfig {
    RoomConfig { batch_size: batch, tick_interval_ms: 100, ..RoomConfig::default() }
}

async fn room(store: &dyn Store, c: RoomConfig) -> RoomId {
    let id = unique_room("conf");
    assert!(store.put_room(&id, &c).await.unwrap());
    id
}

/// Waits for the next tick number and applies it.
async fn next_tick(store: &dyn Store, room: &RoomId) -> TickOutcome {
    for _ in 0..200 {
        let out = store.tick(room).await.unwrap();
        if out.applied {
            return out;
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    panic!("no tick applied in 3 s");
}

async fn join_n(store: &dyn Store, room: &RoomId, from: usize, n: usize) -> Vec<TicketId> {
    let mut out = Vec::new();
    for i in from..from + n {
        out.push(store.join(room, &user(i)).await.unwrap().status.ticket);
    }
    out
}

fn ids(a: &[Admitted]) -> Vec<TicketId> {
    a.iter().map(|a| a.ticket).collect()
}

pub async fn unknown_things_are_errors(s: &dyn Store) {
    let missing = unique_room("missing");
    assert!(matches!(s.join(&missing, &user(1)).await, Err(Error::UnknownRoom(_))));
    assert!(matches!(s.tick(&missing).await, Err(Error::UnknownRoom(_))));
    assert!(matches!(s.stats(&missing).await, Err(Error::UnknownRoom(_))));
    assert!(s.room_config(&missing).await.unwrap().is_none());
    let r = room(s, cfg(1)).await;
    let t = s.join(&r, &user(1)).await.unwrap().status.ticket;
    let forged = TicketId::new(t.seq(), t.random() ^ 1);
    assert!(matches!(s.status(&r, forged).await, Err(Error::UnknownTicket)));
    assert!(matches!(s.leave(&r, forged).await, Err(Error::UnknownTicket)));
    assert!(matches!(s.status(&r, TicketId::new(999, 1)).await, Err(Error::UnknownTicket)));
}

pub async fn join_is_idempotent_per_user(s: &dyn Store) {
    let r = room(s, cfg(1)).await;
    let a = s.join(&r, &user(1)).await.unwrap();
    assert!(a.created);
    assert_eq!(a.status.state, TicketState::Waiting);
    assert_eq!(a.status.position, Some(1));
    let again = s.join(&r, &user(1)).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.status.ticket, a.status.ticket);
    let b = s.join(&r, &user(2)).await.unwrap();
    assert_ne!(b.status.ticket, a.status.ticket);
    assert_eq!(b.status.position, Some(2));
    assert_eq!(a.status.owner, user(1).owner_hash());
    assert_eq!(s.stats(&r).await.unwrap().joined_total, 2);
}

pub async fn fifo_ticks_admit_in_join_order(s: &dyn Store) {
    let r = room(s, cfg(3)).await;
    let tickets = join_n(s, &r, 0, 10).await;
    let first = next_tick(s, &r).await;
    assert_eq!(ids(&first.admitted), tickets[..3]);
    assert_eq!(first.waiting_before, 10);
    // Read before any other tick call: only calls tick (no ticker runs here).
    let before = s.status(&r, tickets[9]).await.unwrap().position.unwrap();
    assert_eq!(before, 7);
    // The same tick again admits nothing; a call that lands in the next tick's window (the
    // first may have come at the end of its own) is that next tick.
    let dup = s.tick(&r).await.unwrap();
    if dup.tick == first.tick {
        assert!(!dup.applied && dup.admitted.is_empty());
    }
    let second = if dup.applied { dup } else { next_tick(s, &r).await };
    assert_eq!(ids(&second.admitted), tickets[3..6]);
    assert!(second.tick > first.tick);
    let after = s.status(&r, tickets[9]).await.unwrap();
    assert_eq!(after.position, Some(4));
    assert!(after.eta.is_some());
    let admitted = s.status(&r, tickets[0]).await.unwrap();
    assert_eq!(admitted.state, TicketState::Admitted);
    assert!(admitted.admitted_until_ms.unwrap() > admitted.now_ms);
    assert_eq!(s.active(&r).await.unwrap(), 6);
    let st = s.stats(&r).await.unwrap();
    assert_eq!((st.waiting, st.active, st.admitted_total), (4, 6, 6));
    assert!(st.admitted_per_minute > 0.0);
}

pub async fn concurrent_ticks_apply_once(s: Arc<dyn Store>) {
    let r = room(&*s, cfg(5)).await;
    join_n(&*s, &r, 0, 100).await;
    for _ in 0..3 {
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (s, r) = (s.clone(), r.clone());
            tasks.push(tokio::spawn(async move { s.tick(&r).await.unwrap() }));
        }
        let mut applied = 0;
        let mut admitted = 0;
        let mut seen_ticks = HashSet::new();
        for t in tasks {
            let out = t.await.unwrap();
            seen_ticks.insert(out.tick);
            if out.applied {
                applied += 1;
                admitted += out.admitted.len();
            }
        }
        assert!(applied <= seen_ticks.len(), "a tick number applied twice");
        assert_eq!(admitted, 5 * applied);
        tokio::time::sleep(Duration::from_millis(110)).await;
    }
    let st = s.stats(&r).await.unwrap();
    assert_eq!(st.admitted_total + st.waiting, 100);
}

pub async fn max_active_caps_admission(s: &dyn Store) {
    let r = room(s, RoomConfig { max_active: 4, ..cfg(10) }).await;
    let tickets = join_n(s, &r, 0, 10).await;
    assert_eq!(next_tick(s, &r).await.admitted.len(), 4);
    assert_eq!(next_tick(s, &r).await.admitted.len(), 0);
    assert_eq!(s.admit(&r, 10).await.unwrap().len(), 0, "manual admit must respect max_active");
    assert_eq!(s.leave(&r, tickets[0]).await.unwrap(), TicketState::Admitted);
    assert_eq!(s.active(&r).await.unwrap(), 3);
    let out = next_tick(s, &r).await;
    assert_eq!(ids(&out.admitted), vec![tickets[4]]);
    assert_eq!(s.active(&r).await.unwrap(), 4);
}

pub async fn free_pass_admits_first_arrivals(s: &dyn Store) {
    let r = room(s, RoomConfig { free_pass: 2, ..cfg(1) }).await;
    let a = s.join(&r, &user(1)).await.unwrap();
    let b = s.join(&r, &user(2)).await.unwrap();
    let c = s.join(&r, &user(3)).await.unwrap();
    assert_eq!(a.status.state, TicketState::Admitted);
    assert_eq!(b.status.state, TicketState::Admitted);
    assert_eq!(c.status.state, TicketState::Waiting);
    assert_eq!(c.status.position, Some(1));
    let st = s.stats(&r).await.unwrap();
    assert_eq!((st.free_passes_used, st.active, st.waiting), (2, 2, 1));
    // Free passes are only for arrivals that find nobody waiting.
    let r2 = room(s, RoomConfig { free_pass: 5, paused: true, ..cfg(1) }).await;
    assert_eq!(s.join(&r2, &user(1)).await.unwrap().status.state, TicketState::Waiting);
    s.set_paused(&r2, false).await.unwrap();
    assert_eq!(s.join(&r2, &user(2)).await.unwrap().status.state, TicketState::Waiting);
}

pub async fn admissions_expire_and_users_requeue(s: &dyn Store) {
    let r = room(s, RoomConfig { session_ttl_s: 1, ..cfg(5) }).await;
    let t = s.join(&r, &user(1)).await.unwrap().status.ticket;
    next_tick(s, &r).await;
    assert_eq!(s.status(&r, t).await.unwrap().state, TicketState::Admitted);
    assert_eq!(s.join(&r, &user(1)).await.unwrap().status.ticket, t, "admitted ticket is still live");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let st = s.status(&r, t).await.unwrap();
    assert_eq!(st.state, TicketState::Expired);
    assert_eq!(s.active(&r).await.unwrap(), 0);
    next_tick(s, &r).await;
    assert_eq!(s.status(&r, t).await.unwrap().state, TicketState::Expired);
    let again = s.join(&r, &user(1)).await.unwrap();
    assert!(again.created);
    assert_ne!(again.status.ticket, t);
}

pub async fn idle_tickets_are_dropped(s: &dyn Store) {
    let r = room(s, RoomConfig { idle_timeout_s: 1, paused: true, ..cfg(5) }).await;
    let t = join_n(s, &r, 0, 3).await;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        s.touch(&r, &[t[1], TicketId::new(77, 7)]).await.unwrap();
    }
    let out = next_tick(s, &r).await;
    assert_eq!(out.dropped, 2);
    assert_eq!(s.status(&r, t[0]).await.unwrap().state, TicketState::Dropped);
    assert_eq!(s.status(&r, t[2]).await.unwrap().state, TicketState::Dropped);
    let kept = s.status(&r, t[1]).await.unwrap();
    assert_eq!((kept.state, kept.position), (TicketState::Waiting, Some(1)));
    let st = s.stats(&r).await.unwrap();
    assert_eq!((st.dropped_total, st.waiting), (2, 1));
    assert!(s.join(&r, &user(0)).await.unwrap().created, "a dropped user may queue again");
}

pub async fn pause_and_schedule_stop_admission(s: &dyn Store) {
    let r = room(s, RoomConfig { paused: true, ..cfg(5) }).await;
    let t = join_n(s, &r, 0, 3).await;
    let st = s.status(&r, t[0]).await.unwrap();
    assert_eq!(st.phase, RoomPhase::Paused);
    assert!(st.eta.is_none());
    assert!(next_tick(s, &r).await.admitted.is_empty());
    s.set_paused(&r, false).await.unwrap();
    assert!(!s.room_config(&r).await.unwrap().unwrap().paused);
    assert_eq!(next_tick(s, &r).await.admitted.len(), 3);

    let mut c = cfg(5);
    let now = s.stats(&r).await.unwrap().now_ms;
    c.set_opens_at_ms(now + 60_000);
    let later = room(s, c).await;
    let t = s.join(&later, &user(1)).await.unwrap().status;
    assert_eq!(t.phase, RoomPhase::Scheduled);
    assert!(t.eta.unwrap().seconds >= 59);
    assert!(next_tick(s, &later).await.admitted.is_empty());
    assert_eq!(s.stats(&later).await.unwrap().phase, RoomPhase::Scheduled);
}

pub async fn random_at_open_draws_auditably(s: &dyn Store) {
    let now = {
        let probe = room(s, cfg(1)).await;
        s.stats(&probe).await.unwrap().now_ms
    };
    let mut c = RoomConfig { queue_method: QueueMethod::RandomAtOpen, ..cfg(10) };
    c.set_opens_at_ms(now + 800);
    let r = room(s, c).await;
    let mut pre = Vec::new();
    for i in 0..40 {
        let st = s.join(&r, &user(i)).await.unwrap().status;
        assert_eq!((st.state, st.position), (TicketState::Waiting, None), "a join's reply before the draw");
        pre.push(st.ticket);
    }
    let st = s.status(&r, pre[5]).await.unwrap();
    assert_eq!(st.position, None, "no position before the draw");
    s.leave(&r, pre[3]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(900)).await;
    let late = s.join(&r, &user(1000)).await.unwrap().status;
    assert_eq!(late.position, Some(40), "after the 39 pre-queued tickets");
    let out = next_tick(s, &r).await;
    let draw = out.draw.clone().expect("the first open tick draws");
    assert_eq!(draw.last_seq, 40);
    assert_eq!(draw.shuffled, 39);
    assert_eq!(s.draw_record(&r).await.unwrap(), Some(draw.clone()));
    let mut expected: Vec<TicketId> = pre.iter().copied().filter(|t| *t != pre[3]).collect();
    queue_core::draw::sort(&draw.seed, &mut expected);
    expected.push(late.ticket);
    assert_eq!(ids(&out.admitted), expected[..10], "admission order is the recorded draw");
    assert_ne!(expected[..39], pre.iter().copied().filter(|t| *t != pre[3]).collect::<Vec<_>>()[..]);
    // After the draw, everyone still waiting has the position the draw gave them.
    let rest = &expected[10..];
    let positions: Vec<_> =
        s.status_many(&r, rest).await.unwrap().into_iter().map(|st| st.and_then(|st| st.position)).collect();
    assert_eq!(positions, (1..=rest.len() as u64).map(Some).collect::<Vec<_>>());
}

pub async fn manual_admit_and_leave(s: &dyn Store) {
    let r = room(s, RoomConfig { paused: true, ..cfg(1) }).await;
    let t = join_n(s, &r, 0, 8).await;
    assert!(matches!(s.admit(&r, 0).await, Err(Error::InvalidArgument { .. })));
    assert_eq!(s.admit(&r, 3).await.unwrap(), t[..3]);
    assert_eq!(s.leave(&r, t[4]).await.unwrap(), TicketState::Waiting);
    assert_eq!(s.leave(&r, t[4]).await.unwrap(), TicketState::Left);
    assert_eq!(s.status(&r, t[4]).await.unwrap().state, TicketState::Left);
    assert_eq!(s.status(&r, t[5]).await.unwrap().position, Some(2));
    assert_eq!(s.admit(&r, 100).await.unwrap(), vec![t[3], t[5], t[6], t[7]]);
    let st = s.stats(&r).await.unwrap();
    assert_eq!((st.waiting, st.active, st.left_total, st.admitted_total), (0, 7, 1, 7));
    assert!(s.join(&r, &user(4)).await.unwrap().created, "a user who left may queue again");
}

/// An admitted ticket that leaves gives its place back and its admission ends with it: the
/// store lists it (with its admission's end) until that end, for gateways to refuse its token.
pub async fn leaving_ends_an_admission(s: &dyn Store) {
    let r = room(s, RoomConfig { paused: true, session_ttl_s: 1, ..cfg(1) }).await;
    let t = join_n(s, &r, 0, 3).await;
    assert_eq!(s.admit(&r, 2).await.unwrap(), t[..2]);
    assert!(s.revoked(&r).await.unwrap().is_empty());
    let until = s.status(&r, t[0]).await.unwrap().admitted_until_ms.unwrap();
    assert_eq!(s.leave(&r, t[0]).await.unwrap(), TicketState::Admitted);
    assert_eq!(s.leave(&r, t[2]).await.unwrap(), TicketState::Waiting);
    assert_eq!(s.revoked(&r).await.unwrap(), vec![(t[0], until)], "only the admitted ticket that left");
    assert_eq!(s.active(&r).await.unwrap(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    next_tick(s, &r).await;
    assert!(s.revoked(&r).await.unwrap().is_empty(), "an ended admission needs no refusing");
}

pub async fn events_are_published(s: &dyn Store) {
    let mut rx = s.subscribe();
    // The Redis subscription connects in the background; give it a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = room(s, cfg(2)).await;
    let t = join_n(s, &r, 0, 3).await;
    next_tick(s, &r).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let (mut config_seen, mut admitted) = (false, None);
    while admitted.is_none() && tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
            Ok(Ok(RoomEvent::ConfigChanged { room })) if room == r => config_seen = true,
            Ok(Ok(RoomEvent::Admitted { room, tickets, tick, .. })) if room == r => {
                admitted = Some((tickets, tick))
            }
            _ => {}
        }
    }
    assert!(config_seen, "no config event");
    let (tickets, tick) = admitted.expect("no admission event");
    assert_eq!(tickets, t[..2]);
    assert!(tick.is_some());
    // Only a waiting ticket's leave moves anyone: an admitted one's, or a second leave, does not.
    s.leave(&r, t[0]).await.unwrap();
    s.leave(&r, t[2]).await.unwrap();
    s.leave(&r, t[2]).await.unwrap();
    let mut left = 0;
    while let Ok(Ok(ev)) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
        match ev {
            RoomEvent::Left { room } if room == r => left += 1,
            RoomEvent::Admitted { room, .. } if room == r => panic!("admitted after the tick"),
            _ => {}
        }
    }
    assert_eq!(left, 1, "one waiting ticket left");
}

pub async fn config_round_trip_and_bad_input(s: &dyn Store) {
    let mut c = RoomConfig::from_json(
        br#"{"protect":["/book/"],"target":"/book/","batch_size":30,"tick_interval_ms":250,
        "free_pass":7,"max_active":9,"session_ttl_s":60,"idle_timeout_s":30,
        "queue_method":"random_at_open","opens_at":"2030-01-02T03:04:05Z","paused":true}"#,
    )
    .unwrap();
    let r = room(s, c.clone()).await;
    assert_eq!(s.room_config(&r).await.unwrap().unwrap(), c);
    assert!(s.rooms().await.unwrap().contains(&r));
    c.batch_size = 31;
    assert!(!s.put_room(&r, &c).await.unwrap());
    let bad = RoomConfig { batch_size: 0, ..c.clone() };
    assert!(matches!(s.put_room(&r, &bad).await, Err(Error::InvalidConfig { .. })));
    assert_eq!(s.room_config(&r).await.unwrap().unwrap(), c, "a refused config changes nothing");
    let too_many = vec![TicketId::new(1, 1); queue_core::store::MAX_TOUCH_BATCH + 1];
    assert!(matches!(s.touch(&r, &too_many).await, Err(Error::InvalidArgument { .. })));
    assert!(s.delete_room(&r).await.unwrap());
    assert!(!s.delete_room(&r).await.unwrap());
    assert!(s.room_config(&r).await.unwrap().is_none());
    assert!(!s.rooms().await.unwrap().contains(&r));
    assert!(matches!(s.join(&r, &user(1)).await, Err(Error::UnknownRoom(_))));
    s.ping().await.unwrap();
}

/// A deleted room is told apart from one the store lost: gateways put back only the latter.
pub async fn deletions_are_remembered(s: &dyn Store) {
    let r = room(s, RoomConfig::default()).await;
    assert!(!s.was_deleted(&r).await.unwrap(), "a live room");
    assert!(!s.was_deleted(&unique_room("never")).await.unwrap(), "a room that never was");
    assert!(s.delete_room(&r).await.unwrap());
    assert!(s.was_deleted(&r).await.unwrap());
    assert!(s.room_config(&r).await.unwrap().is_none());
    assert!(s.put_room(&r, &RoomConfig::default()).await.unwrap(), "created again");
    assert!(!s.was_deleted(&r).await.unwrap(), "created again after its deletion");
}

pub async fn positions_never_increase(s: &dyn Store) {
    let r = room(s, cfg(2)).await;
    let t = join_n(s, &r, 0, 12).await;
    let mut last: Vec<u64> = vec![u64::MAX; t.len()];
    for round in 0..5 {
        if round == 2 {
            s.leave(&r, t[7]).await.unwrap();
        }
        join_n(s, &r, 100 + round * 3, 3).await;
        for (i, ticket) in t.iter().enumerate() {
            let st = s.status(&r, *ticket).await.unwrap();
            if let Some(p) = st.position {
                assert!(p <= last[i], "position of {i} rose from {} to {p}", last[i]);
                last[i] = p;
            }
        }
        next_tick(s, &r).await;
    }
}

pub async fn watch_reports_and_touches(s: &dyn Store) {
    let r = room(s, RoomConfig { idle_timeout_s: 1, ..cfg(1) }).await;
    let t = join_n(s, &r, 0, 3).await;
    let unknown = TicketId::new(99, 1);
    let w = s.watch(&r, &[t[2], unknown, t[0]]).await.unwrap();
    assert_eq!(w[0].unwrap().position, Some(3));
    assert!(w[1].is_none());
    assert_eq!(w[2].unwrap().state, TicketState::Waiting);
    // Watching keeps t[1] and t[2] seen; t[0] goes idle and is dropped.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        s.watch(&r, &[t[1], t[2]]).await.unwrap();
    }
    let out = next_tick(s, &r).await;
    assert_eq!(out.dropped, 1);
    assert_eq!(ids(&out.admitted), vec![t[1]]);
    let w = s.watch(&r, &[t[0], t[1], t[2]]).await.unwrap();
    assert_eq!(w[0].unwrap().state, TicketState::Dropped);
    assert_eq!(w[1].unwrap().state, TicketState::Admitted);
    assert!(w[1].unwrap().admitted_until_ms.is_some());
    assert_eq!(w[2].unwrap().position, Some(1));
}

pub async fn status_many_matches_single_reads(s: &dyn Store) {
    let r = room(s, cfg(1)).await;
    let t = join_n(s, &r, 0, 3).await;
    assert_eq!(ids(&next_tick(s, &r).await.admitted), vec![t[0]]);
    s.leave(&r, t[2]).await.unwrap();
    let forged = TicketId::new(t[1].seq(), t[1].random() ^ 1);
    let asked = [t[0], t[1], t[2], forged, t[1]];
    let many = s.status_many(&r, &asked).await.unwrap();
    assert_eq!(many.len(), asked.len());
    assert!(many[3].is_none(), "an id the room does not have");
    for (i, got) in many.iter().enumerate().filter(|(i, _)| *i != 3) {
        let got = got.as_ref().unwrap();
        let one = s.status(&r, asked[i]).await.unwrap();
        assert_eq!(got.ticket, asked[i]);
        assert_eq!(
            (got.state, got.position, got.admitted_until_ms, got.owner, got.joined_at_ms, got.phase),
            (one.state, one.position, one.admitted_until_ms, one.owner, one.joined_at_ms, one.phase),
            "ticket {i}"
        );
    }
    let states: Vec<_> = many.iter().map(|m| m.as_ref().map(|m| m.state)).collect();
    assert_eq!(
        states,
        [
            Some(TicketState::Admitted),
            Some(TicketState::Waiting),
            Some(TicketState::Left),
            None,
            Some(TicketState::Waiting)
        ]
    );
    assert_eq!(many[1].as_ref().unwrap().position, Some(1));
    assert!(s.status_many(&r, &[]).await.unwrap().is_empty());
    let missing = unique_room("missing");
    assert!(matches!(s.status_many(&missing, &[t[0]]).await, Err(Error::UnknownRoom(_))));
    let too_many = vec![t[0]; queue_core::store::MAX_TOUCH_BATCH + 1];
    assert!(matches!(s.status_many(&r, &too_many).await, Err(Error::InvalidArgument { .. })));
}

/// A thread with a runtime of its own (a gateway's serving thread) works through a local
/// handle while the runtime that opened the store is blocked: the handle's connection is its
/// own. What it reads and writes is the one store, and its writes publish as usual.
pub async fn local_handles_share_the_store(s: Arc<dyn Store>) {
    let mut rx = s.subscribe();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = room(&*s, cfg(1)).await;
    let t = join_n(&*s, &r, 0, 3).await;
    let (shared, room_id, asked) = (s.clone(), r.clone(), t.clone());
    // `join` blocks this test's runtime, which runs the shared handle's connection.
    let (read, joined) = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let local = shared.local().await.unwrap().unwrap_or(shared);
            let read = local.status_many(&room_id, &asked).await.unwrap();
            let joined = local.join(&room_id, &user(99)).await.unwrap();
            local.leave(&room_id, asked[1]).await.unwrap();
            (read, joined)
        })
    })
    .join()
    .unwrap();
    let positions: Vec<_> = read.iter().map(|st| st.as_ref().and_then(|st| st.position)).collect();
    assert_eq!(positions, [Some(1), Some(2), Some(3)]);
    assert!(joined.created);
    let after = s.status_many(&r, &[t[0], t[1], t[2], joined.status.ticket]).await.unwrap();
    let states: Vec<_> = after.iter().map(|st| st.as_ref().map(|st| (st.state, st.position))).collect();
    assert_eq!(
        states,
        [
            Some((TicketState::Waiting, Some(1))),
            Some((TicketState::Left, None)),
            Some((TicketState::Waiting, Some(2))),
            Some((TicketState::Waiting, Some(3))),
        ],
        "the local handle's join and leave are the shared handle's too"
    );
    let heard = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            if let Ok(RoomEvent::Left { room }) = rx.recv().await
                && room == r
            {
                return;
            }
        }
    });
    assert!(heard.await.is_ok(), "the local handle's leave was published");
}

macro_rules! conformance {
    ($name:ident, $make:expr) => {
        mod $name {
            use super::*;

            async fn store() -> Arc<dyn Store> {
                $make
            }

            #[tokio::test]
            async fn unknown_things_are_errors() {
                super::unknown_things_are_errors(&*store().await).await
            }
            #[tokio::test]
            async fn join_is_idempotent_per_user() {
                super::join_is_idempotent_per_user(&*store().await).await
            }
            #[tokio::test]
            async fn fifo_ticks_admit_in_join_order() {
                super::fifo_ticks_admit_in_join_order(&*store().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_ticks_apply_once() {
                super::concurrent_ticks_apply_once(store().await).await
            }
            #[tokio::test]
            async fn max_active_caps_admission() {
                super::max_active_caps_admission(&*store().await).await
            }
            #[tokio::test]
            async fn free_pass_admits_first_arrivals() {
                super::free_pass_admits_first_arrivals(&*store().await).await
            }
            #[tokio::test]
            async fn admissions_expire_and_users_requeue() {
                super::admissions_expire_and_users_requeue(&*store().await).await
            }
            #[tokio::test]
            async fn idle_tickets_are_dropped() {
                super::idle_tickets_are_dropped(&*store().await).await
            }
            #[tokio::test]
            async fn pause_and_schedule_stop_admission() {
                super::pause_and_schedule_stop_admission(&*store().await).await
            }
            #[tokio::test]
            async fn random_at_open_draws_auditably() {
                super::random_at_open_draws_auditably(&*store().await).await
            }
            #[tokio::test]
            async fn manual_admit_and_leave() {
                super::manual_admit_and_leave(&*store().await).await
            }
            #[tokio::test]
            async fn events_are_published() {
                super::events_are_published(&*store().await).await
            }
            #[tokio::test]
            async fn leaving_ends_an_admission() {
                super::leaving_ends_an_admission(&*store().await).await
            }
            #[tokio::test]
            async fn config_round_trip_and_bad_input() {
                super::config_round_trip_and_bad_input(&*store().await).await
            }
            #[tokio::test]
            async fn deletions_are_remembered() {
                super::deletions_are_remembered(&*store().await).await
            }
            #[tokio::test]
            async fn watch_reports_and_touches() {
                super::watch_reports_and_touches(&*store().await).await
            }
            #[tokio::test]
            async fn status_many_matches_single_reads() {
                super::status_many_matches_single_reads(&*store().await).await
            }
            #[tokio::test]
            async fn local_handles_share_the_store() {
                super::local_handles_share_the_store(store().await).await
            }
            #[tokio::test]
            async fn positions_never_increase() {
                super::positions_never_increase(&*store().await).await
            }
        }
    };
}

conformance!(memory, Arc::new(MemoryStore::new()));
conformance!(redis_single, Arc::new(RedisStore::connect(&RedisServer::shared().url()).await.unwrap()));
conformance!(redis_cluster, Arc::new(RedisStore::connect(&RedisCluster::shared().urls()).await.unwrap()));
