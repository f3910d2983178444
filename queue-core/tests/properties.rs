//! Property tests: random interleavings of join/leave/touch/tick/admit/pause/time from several
//! actors keep every invariant of DESIGN §2: on the memory store with a manual clock (many
//! cases), and on a real Redis with real time (fewer cases: time passes by sleeping).

use std::collections::HashMap;
use std::sync::Arc;

use proptest::prelude::*;
use queue_core::config::QueueMethod;
use queue_core::store::ManualClock;
use queue_core::testkit::{RedisServer, unique_room};
use queue_core::*;

#[derive(Debug, Clone)]
enum Op {
    Join(u8),
    Leave(u8),
    Touch(u8),
    Tick,
    Advance(u32),
    Pause,
    Resume,
    Admit(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..8).prop_map(Op::Join),
        1 => (0u8..8).prop_map(Op::Leave),
        2 => (0u8..8).prop_map(Op::Touch),
        3 => Just(Op::Tick),
        3 => (1u32..2500).prop_map(Op::Advance),
        1 => Just(Op::Pause),
        1 => Just(Op::Resume),
        1 => (1u8..4).prop_map(Op::Admit),
    ]
}

/// A room config and, when it is scheduled, how long after the start it opens (ms).
fn room_config() -> impl Strategy<Value = (RoomConfig, u64)> {
    (1u32..5, 100u64..1000, 0u32..6, 0u32..3, 1u32..4, 1u32..5, any::<bool>(), 0u64..3000).prop_map(
        |(batch, interval, max_active, free, ttl, idle, random, opens_in)| {
            let c = RoomConfig {
                batch_size: batch,
                tick_interval_ms: interval,
                max_active,
                free_pass: free,
                session_ttl_s: ttl,
                idle_timeout_s: idle,
                queue_method: if random { QueueMethod::RandomAtOpen } else { QueueMethod::Fifo },
                ..RoomConfig::default()
            };
            (c, opens_in)
        },
    )
}

const START: u64 = 1_800_000_000_000;

struct Model {
    cfg: RoomConfig,
    tickets: Vec<TicketId>,
    positions: HashMap<TicketId, u64>,
    admitted_log: Vec<TicketId>,
}

impl Model {
    fn admitted(&mut self, t: &[TicketId]) {
        self.admitted_log.extend_from_slice(t);
    }
}

async fn check(store: &dyn Store, room: &RoomId, m: &mut Model) -> Result<(), TestCaseError> {
    let stats = store.stats(room).await.unwrap();
    if m.cfg.max_active > 0 {
        prop_assert!(stats.active <= m.cfg.max_active as u64, "active {} above cap", stats.active);
    }
    // Nothing lost: every ticket is in exactly one state and the counts agree.
    let mut counts: HashMap<TicketState, u64> = HashMap::new();
    let mut live_per_owner: HashMap<OwnerHash, u32> = HashMap::new();
    let mut waiting_positions = Vec::new();
    for t in &m.tickets {
        let st = store.status(room, *t).await.unwrap();
        *counts.entry(st.state).or_default() += 1;
        if st.state.is_live() {
            *live_per_owner.entry(st.owner).or_default() += 1;
        }
        if let Some(p) = st.position {
            prop_assert_eq!(st.state, TicketState::Waiting);
            if let Some(&before) = m.positions.get(t) {
                prop_assert!(p <= before, "position rose {} -> {}", before, p);
            }
            m.positions.insert(*t, p);
            waiting_positions.push((t.seq(), p));
        }
    }
    // On Redis time is real: between the stats read and the last status read an admission
    // may expire and an unseen ticket be dropped, never the other way (nothing joins or is
    // admitted during a check). Read the stats again after: each count lies between the two.
    let after = store.stats(room).await.unwrap();
    let count = |s: TicketState| counts.get(&s).copied().unwrap_or(0);
    prop_assert_eq!(counts.values().sum::<u64>(), stats.joined_total);
    for (state, before, after) in [
        (TicketState::Waiting, stats.waiting, after.waiting),
        (TicketState::Admitted, stats.active, after.active),
    ] {
        let n = count(state);
        prop_assert!((after..=before).contains(&n), "{} {:?}, stats {} then {}", n, state, before, after);
    }
    prop_assert!(live_per_owner.values().all(|&n| n == 1), "an owner holds two live tickets");
    if m.cfg.queue_method == QueueMethod::Fifo {
        // Positions are exactly 1..=waiting in join order.
        waiting_positions.sort();
        for (i, (_, p)) in waiting_positions.iter().enumerate() {
            prop_assert_eq!(*p, i as u64 + 1);
        }
        // Admission order = join order.
        prop_assert!(m.admitted_log.windows(2).all(|w| w[0].seq() < w[1].seq()), "admitted out of order");
    }
    let mut unique = m.admitted_log.clone();
    unique.sort();
    unique.dedup();
    prop_assert_eq!(unique.len(), m.admitted_log.len(), "a ticket admitted twice");
    Ok(())
}

/// Runs `ops` on a fresh room; `clock` moves time for the memory store, else time is real and
/// `Advance` sleeps a tenth of its length.
async fn run(
    store: &dyn Store,
    clock: Option<&ManualClock>,
    room: RoomId,
    (mut cfg, opens_in): (RoomConfig, u64),
    ops: Vec<Op>,
) -> Result<(), TestCaseError> {
    store.put_room(&room, &cfg).await.unwrap();
    if opens_in > 0 {
        let now = store.stats(&room).await.unwrap().now_ms;
        cfg.set_opens_at_ms(now + opens_in);
        store.put_room(&room, &cfg).await.unwrap();
    }

    let mut m =
        Model { cfg: cfg.clone(), tickets: Vec::new(), positions: HashMap::new(), admitted_log: Vec::new() };
    let users: Vec<UserKey> = (0..8).map(|i| UserKey::parse(&format!("actor-{i}")).unwrap()).collect();
    for op in ops {
        match op {
            Op::Join(u) => {
                let out = store.join(&room, &users[u as usize]).await.unwrap();
                if out.created {
                    m.tickets.push(out.status.ticket);
                    if out.status.state == TicketState::Admitted {
                        m.admitted(&[out.status.ticket]);
                    }
                } else {
                    prop_assert!(out.status.state.is_live());
                    prop_assert!(m.tickets.contains(&out.status.ticket));
                }
            }
            Op::Leave(u) => {
                let owner = users[u as usize].owner_hash();
                for t in m.tickets.clone() {
                    if store.status(&room, t).await.unwrap().owner == owner {
                        store.leave(&room, t).await.unwrap();
                    }
                }
            }
            Op::Touch(u) => {
                let mine: Vec<TicketId> =
                    m.tickets.iter().copied().filter(|t| t.seq() % 8 == u as u64 % 8).collect();
                store.touch(&room, &mine).await.unwrap();
            }
            Op::Tick => {
                // The phase the tick saw: on Redis time is real, and a scheduled room may open
                // between a tick that found it scheduled (and admitted nobody) and a stats read
                // after it. Open before the tick is open at it (only an op pauses a room).
                let open_before = store.stats(&room).await.unwrap().phase == RoomPhase::Open;
                let out = store.tick(&room).await.unwrap();
                let stats = store.stats(&room).await.unwrap();
                let again = store.tick(&room).await.unwrap();
                if again.tick == out.tick {
                    prop_assert!(!again.applied, "the same tick applied twice");
                }
                let admitted: Vec<TicketId> = out.admitted.iter().map(|a| a.ticket).collect();
                prop_assert!(admitted.len() as u64 <= cfg.batch_size as u64);
                if out.applied && open_before && stats.phase == RoomPhase::Open && !m.cfg.paused {
                    let cap = match m.cfg.max_active {
                        0 => u64::MAX,
                        c => (c as u64).saturating_sub(out.active_before),
                    };
                    let expected = (cfg.batch_size as u64).min(out.waiting_before).min(cap);
                    prop_assert_eq!(admitted.len() as u64, expected);
                }
                m.admitted(&admitted);
            }
            Op::Advance(ms) => match clock {
                Some(c) => c.advance(ms as u64),
                None => tokio::time::sleep(std::time::Duration::from_millis(ms as u64 / 10)).await,
            },
            Op::Pause => {
                store.set_paused(&room, true).await.unwrap();
                m.cfg.paused = true;
            }
            Op::Resume => {
                store.set_paused(&room, false).await.unwrap();
                m.cfg.paused = false;
            }
            Op::Admit(n) => {
                let admitted = store.admit(&room, n as u32).await.unwrap();
                prop_assert!(admitted.len() <= n as usize);
                m.admitted(&admitted);
            }
        }
        check(store, &room, &mut m).await?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]
    #[test]
    fn memory_interleavings_keep_the_invariants(cfg in room_config(), ops in proptest::collection::vec(op(), 1..120)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let clock = ManualClock::new(START);
        let store = MemoryStore::with_clock(Arc::new(clock.clone()));
        rt.block_on(run(&store, Some(&clock), RoomId::parse("prop").unwrap(), cfg, ops))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn redis_interleavings_keep_the_invariants(cfg in room_config(), ops in proptest::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let store = RedisStore::connect(&RedisServer::shared().url()).await.unwrap();
            run(&store, None, unique_room("prop"), cfg, ops).await
        })?;
    }
}
