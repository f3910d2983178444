//! Status polls by plain reads: each ticket's rank, pipelined as ordinary commands, no
//! script; the room's head (config fields, clock, admission rate, draw) and the tickets'
//! infos when the read cache lacks them.
//!
//! A poll only reads, and Redis spends far more on a script call and on each `redis.call`
//! inside it than on the same commands sent plainly (`queue-core/benches/script_cost.py`:
//! a status script call for one ticket costs 3.6 times the instructions of an empty script
//! call; in `http_bench.sh`, Redis's CPU per poll fell from ~7 to ~4 µs with these reads).
//! What the reads answer is what the script would: a waiting ticket's position is its rank
//! in `waiting`, and a ticket's info never changes after its join. What they cannot answer
//! goes to the status script: tickets no longer waiting (admitted, expired, left, dropped)
//! and every ticket of a scheduled `random_at_open` room before its draw, whose pre-queue
//! has no position yet (after the draw its ranks are positions, as in a FIFO room).
//!
//! The [`ReadCache`] keeps what does not need reading for every batch: a ticket's info
//! (fixed at its join; a rank still proves the ticket waits in this room), for
//! [`HEAD_TTL`], the room's head, its clock carried forward on the local monotonic clock, and
//! each ticket's rank with the room's rank version (`stats.ver`, bumped by every script
//! change that can move a waiting ticket's rank: admissions, leaves and drops from the
//! queue, the draw). Every batch reads the version (one `HGET`) before any rank, so a cached
//! rank is used only while the version it was read at still holds, and a rank read after the
//! version is never older than it: positions stay exact and never go up (DESIGN §2 invariant
//! 2), and between ticks a batch is one command instead of one `ZRANK` per poll. Without the
//! caches a batch of ten polls was fifteen commands, the two `HMGET`s the dearest of them on
//! both sides.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::Value;

use super::{RoomView, TicketFields, f64_of, hex_ids, int_of, room_key, text_of, u64_of};
use crate::config::{QueueMethod, RoomConfig};
use crate::error::{Error, Result};
use crate::id::{OwnerHash, RoomId, TicketId};
use crate::model::{TicketState, TicketStatus};

/// The config fields the view needs, in the order [`read_head`] reads them.
const VIEW_FIELDS: [&[u8]; 7] = [
    b"batch_size",
    b"tick_interval_ms",
    b"max_active",
    b"session_ttl_s",
    b"queue_method",
    b"opens_at_ms",
    b"paused",
];
/// Replies of a head read: config fields, `TIME`, the admission rate, whether the room's
/// draw was made.
const HEAD: usize = 4;
/// How long a head read serves later batches. Config changes reach every gateway within
/// 1 s (DESIGN §4) and the admission rate moves once a tick; this handle's own writes to
/// the room drop its head at once ([`ReadCache::forget`]).
const HEAD_TTL: Duration = Duration::from_millis(250);
/// Tickets one generation of a ticket map ([`Generations`]: infos, ranks) holds.
const GENERATION: usize = 32_768;

/// Rooms whose heads (and rank versions) are kept; past it the cache starts again (a gateway
/// serves a few rooms).
const MAX_HEADS: usize = 1024;

/// What status reads keep between batches; shared by a store's handles.
#[derive(Debug, Default)]
pub(super) struct ReadCache(Mutex<Cached>);

#[derive(Debug, Default)]
struct Cached {
    heads: HashMap<RoomId, Head>,
    /// Counts [`ReadCache::forget`]s: a head read before one is not kept after it.
    forgets: u64,
    infos: Generations<Info>,
    /// Each room's rank version as last read.
    vers: HashMap<RoomId, i64>,
    /// Ranks with the version they were read at.
    ranks: Generations<Rank>,
}

/// A ticket map in two generations, current and previous: when the current one is full it
/// becomes the previous, so a ticket polled since the last turnover stays. Keyed by ids the
/// store issued (only those it answered for are kept), so the fast hash serves.
#[derive(Debug)]
struct Generations<V>([HashMap<TicketId, V, foldhash::fast::RandomState>; 2]);

impl<V> Default for Generations<V> {
    fn default() -> Self {
        Generations(Default::default())
    }
}

impl<V> Generations<V> {
    fn get(&self, ticket: &TicketId) -> Option<&V> {
        self.0[0].get(ticket).or_else(|| self.0[1].get(ticket))
    }

    fn insert(&mut self, ticket: TicketId, value: V) {
        if self.0[0].len() >= GENERATION {
            self.0[1] = std::mem::take(&mut self.0[0]);
        }
        self.0[0].insert(ticket, value);
    }
}

/// Inserts into a per-room map of at most [`MAX_HEADS`] rooms (past it, it starts again).
fn insert_room<V>(map: &mut HashMap<RoomId, V>, room: &RoomId, value: V) {
    if !map.contains_key(room) && map.len() >= MAX_HEADS {
        map.clear();
    }
    map.insert(room.clone(), value);
}

/// A waiting ticket's rank as read at rank version `ver` of its room (by hash).
#[derive(Debug, Clone, Copy)]
struct Rank {
    room: u64,
    ver: i64,
    rank: i64,
}

/// A room's head as read at `read_at`.
#[derive(Debug, Clone)]
struct Head {
    read_at: Instant,
    /// The store's clock at `read_at`, in ms.
    store_ms: u64,
    rate_pm: f64,
    cfg: Arc<RoomConfig>,
    /// A scheduled `random_at_open` room not yet drawn: only the script can answer.
    undrawn: bool,
}

impl Head {
    fn view(&self, now: Instant) -> RoomView {
        let ms = self.store_ms + now.saturating_duration_since(self.read_at).as_millis() as u64;
        RoomView::new(ms, self.rate_pm, self.cfg.clone())
    }
}

/// A ticket's info: who owns it, when it joined, and (a hash of) its room.
#[derive(Debug, Clone, Copy)]
struct Info {
    room: u64,
    owner: OwnerHash,
    joined: u64,
}

/// What one batch reads, decided from the cache.
pub(super) struct Plan {
    /// The room's head as cached; `None`: read it.
    head: Option<Head>,
    /// The cached info of each ticket; `None`: read it.
    infos: Vec<Option<Info>>,
    room: u64,
    forgets: u64,
    /// The room's rank version as last read, if known.
    ver: Option<i64>,
    /// The cached rank of each ticket read at `ver`; `None`: read it.
    ranks: Vec<Option<i64>>,
}

impl Plan {
    /// True when the cached head says only the script can answer.
    pub(super) fn undrawn(&self) -> bool {
        self.head.as_ref().is_some_and(|h| h.undrawn)
    }

    fn misses(&self) -> impl Iterator<Item = usize> + '_ {
        self.infos.iter().enumerate().filter(|(_, i)| i.is_none()).map(|(n, _)| n)
    }

    fn unranked(&self) -> usize {
        self.ranks.iter().filter(|r| r.is_none()).count()
    }
}

impl ReadCache {
    pub(super) fn plan(&self, room: &RoomId, tickets: &[TicketId]) -> Plan {
        let c = self.lock();
        let head = c.heads.get(room).filter(|h| h.read_at.elapsed() < HEAD_TTL).cloned();
        let ver = c.vers.get(room).copied();
        let room = room_hash(room);
        let infos = tickets.iter().map(|t| c.infos.get(t).filter(|i| i.room == room).copied()).collect();
        let ranks = tickets
            .iter()
            .map(|t| {
                let r = c.ranks.get(t)?;
                (r.room == room && Some(r.ver) == ver).then_some(r.rank)
            })
            .collect();
        Plan { head, infos, room, forgets: c.forgets, ver, ranks }
    }

    /// Drops `room`'s head: this handle changed the room.
    pub(super) fn forget(&self, room: &RoomId) {
        let mut c = self.lock();
        c.heads.remove(room);
        c.forgets += 1;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cached> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn keep(
        &self,
        room: &RoomId,
        head: Option<&Head>,
        forgets: u64,
        learned: &[(TicketId, Info)],
        ranked: Ranked,
    ) {
        if head.is_none() && learned.is_empty() && ranked.is_empty() {
            // The usual batch: everything came from the cache.
            return;
        }
        let mut c = self.lock();
        match ranked.ver {
            // The room has no version (it predates them): no rank is kept for it.
            None => {
                c.vers.remove(room);
            }
            Some(ver) => {
                if ranked.changed {
                    insert_room(&mut c.vers, room, ver);
                }
                for &(t, r) in &ranked.read {
                    c.ranks.insert(t, r);
                }
            }
        }
        if let Some(h) = head.filter(|_| c.forgets == forgets) {
            insert_room(&mut c.heads, room, h.clone());
        }
        for &(t, i) in learned {
            c.infos.insert(t, i);
        }
    }
}

/// The rank version a batch read, and the ranks it read at it.
struct Ranked {
    /// The version read; `None` when the room has none (no rank is kept then).
    ver: Option<i64>,
    /// Whether it differs from the one cached.
    changed: bool,
    read: Vec<(TicketId, Rank)>,
}

impl Ranked {
    fn is_empty(&self) -> bool {
        !self.changed && self.read.is_empty()
    }
}

/// A hash of the room id (fixed for the process): tells apart two rooms' tickets that share
/// an id.
fn room_hash(room: &RoomId) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::default().hash_one(room.as_str())
}

/// The reads `plan` leaves: the head and the missing infos when not cached, then a `ZRANK`
/// per ticket.
pub(super) fn pipeline(room: &RoomId, tickets: &[TicketId], plan: &Plan) -> redis::Pipeline {
    let waiting = room_key(room, "waiting");
    let ids = hex_ids(tickets);
    let mut p = redis::Pipeline::with_capacity(HEAD + 1 + tickets.len());
    if plan.head.is_none() {
        p.add_command(command(&[b"HMGET", room_key(room, "cfg").as_bytes()], &VIEW_FIELDS));
        p.add_command(command(&[b"TIME"], &[]));
        p.add_command(command(&[b"HGET", room_key(room, "stats").as_bytes(), b"rate_pm"], &[]));
        p.add_command(command(&[b"EXISTS", room_key(room, "draw").as_bytes()], &[]));
    }
    let missing: Vec<&[u8]> = plan.misses().map(|n| &ids[n][..]).collect();
    if !missing.is_empty() {
        p.add_command(command(&[b"HMGET", room_key(room, "tickets").as_bytes()], &missing));
    }
    // The version before the ranks: a rank read after it is at least as new.
    p.add_command(command(&[b"HGET", room_key(room, "stats").as_bytes(), b"ver"], &[]));
    for (id, _) in ids.iter().zip(&plan.ranks).filter(|(_, r)| r.is_none()) {
        p.add_command(command(&[b"ZRANK", waiting.as_bytes(), id], &[]));
    }
    p
}

/// A command sized up front: grown argument by argument, each costs a few reallocations,
/// and a batch of polls sends one per ticket.
fn command(head: &[&[u8]], rest: &[&[u8]]) -> redis::Cmd {
    let args = || head.iter().chain(rest);
    let mut c = redis::Cmd::with_capacity(head.len() + rest.len(), args().map(|a| a.len()).sum());
    for a in args() {
        c.arg(*a);
    }
    c
}

/// What the reads say of one ticket.
pub(super) enum Read {
    /// The answer: the ticket waiting, or `None` when the room has no such ticket.
    Known(Option<TicketStatus>),
    /// Not waiting: the status script knows its state.
    AskScript,
}

/// Each ticket's answer from the reads' replies, or `None` for all of them when the room
/// needs the script (its queue is yet to be drawn, or its config lacks a field). What was
/// read is kept in `cache`.
pub(super) fn decode(
    cache: &ReadCache,
    room: &RoomId,
    tickets: &[TicketId],
    plan: Plan,
    replies: &[Value],
) -> Result<Option<Vec<Read>>> {
    let missing = plan.misses().count();
    let unranked = plan.unranked();
    let expected = usize::from(plan.head.is_none()) * HEAD + usize::from(missing > 0) + 1 + unranked;
    if replies.len() != expected {
        return Err(Error::Protocol(format!("{} replies to {expected} status reads", replies.len())));
    }
    let (head, fresh, replies) = match plan.head {
        Some(h) => (h, false, replies),
        None => match read_head(room, &replies[..HEAD])? {
            Some(h) => (h, true, &replies[HEAD..]),
            None => return Ok(None),
        },
    };
    let (read, replies) = if missing > 0 { (Some(&replies[0]), &replies[1..]) } else { (None, replies) };
    let (ver, read_ranks) = (&replies[0], &replies[1..]);
    let ver = if matches!(ver, Value::Nil) { None } else { Some(int_of(ver)?) };
    // Each ticket's rank: a cached one while its version holds (else the script answers).
    let mut ranked = Ranked { ver, changed: ver != plan.ver, read: Vec::new() };
    let mut read_ranks = read_ranks.iter();
    let mut learned = Vec::with_capacity(missing);
    let infos = fill(plan.infos, read, plan.room, tickets, &mut learned)?;
    // `None`: not waiting, or a cached rank whose version passed (the script answers both).
    let mut ranks = Vec::with_capacity(tickets.len());
    for ((&ticket, cached), info) in tickets.iter().zip(&plan.ranks).zip(&infos) {
        let rank = match cached {
            Some(rank) => Some(*rank).filter(|_| ver == plan.ver),
            None => match read_ranks.next() {
                None | Some(Value::Nil) => None,
                Some(r) => Some(int_of(r)?),
            },
        };
        // Before a draw a rank is a join order, not a position: not kept.
        if let (None, Some(v), Some(rank), Some(_), false) = (cached, ver, rank, info, head.undrawn) {
            ranked.read.push((ticket, Rank { room: plan.room, ver: v, rank }));
        }
        ranks.push(rank);
    }
    cache.keep(room, fresh.then_some(&head), plan.forgets, &learned, ranked);
    if head.undrawn {
        return Ok(None);
    }
    let view = head.view(Instant::now());
    let mut answers = Vec::with_capacity(tickets.len());
    for ((&ticket, info), rank) in tickets.iter().zip(infos).zip(ranks) {
        answers.push(match (info, rank) {
            // No info: no such ticket, as far as the room is known to exist; a cached head
            // may have outlived the room, which the script tells.
            (None, _) if fresh => Read::Known(None),
            (None, _) | (_, None) => Read::AskScript,
            (Some(info), Some(rank)) => Read::Known(Some(waiting(room, ticket, &view, info, rank))),
        });
    }
    Ok(Some(answers))
}

/// The room's head from its four replies; `None` when the config lacks a field the view
/// needs (the script then answers).
fn read_head(room: &RoomId, r: &[Value]) -> Result<Option<Head>> {
    let [Value::Array(cfg), time, rate, drawn] = r else {
        return Err(Error::Protocol("status reads: HMGET did not answer with an array".into()));
    };
    if cfg.len() != VIEW_FIELDS.len() {
        return Err(Error::Protocol("short HMGET reply".into()));
    }
    if matches!(cfg[0], Value::Nil) {
        return Err(Error::UnknownRoom(room.to_string()));
    }
    if cfg.iter().any(|v| matches!(v, Value::Nil)) {
        return Ok(None);
    }
    let Value::Array(t) = time else { return Err(Error::Protocol(format!("TIME answered {time:?}"))) };
    let [secs, micros] = &t[..] else { return Err(Error::Protocol(format!("TIME answered {time:?}"))) };
    let mut c = RoomConfig {
        batch_size: u64_of(&cfg[0])? as u32,
        tick_interval_ms: u64_of(&cfg[1])?,
        max_active: u64_of(&cfg[2])? as u32,
        session_ttl_s: u64_of(&cfg[3])? as u32,
        paused: text_of(&cfg[6])? == "1",
        ..RoomConfig::default()
    };
    c.set_opens_at_ms(u64_of(&cfg[5])?);
    if text_of(&cfg[4])? == "random_at_open" {
        c.queue_method = QueueMethod::RandomAtOpen;
    }
    Ok(Some(Head {
        read_at: Instant::now(),
        store_ms: u64_of(secs)? * 1000 + u64_of(micros)? / 1000,
        rate_pm: if matches!(rate, Value::Nil) { 0.0 } else { f64_of(rate)? },
        // `undrawn` in lua/lib.lua: a random_at_open room with a schedule and no draw yet.
        undrawn: c.queue_method == QueueMethod::RandomAtOpen && c.opens_at_ms() > 0 && int_of(drawn)? == 0,
        cfg: Arc::new(c),
    }))
}

/// Every ticket's info: the cached ones, the rest from the `HMGET` reply (noted in
/// `learned`); `None` where the room has no such ticket.
fn fill(
    mut infos: Vec<Option<Info>>,
    read: Option<&Value>,
    room: u64,
    tickets: &[TicketId],
    learned: &mut Vec<(TicketId, Info)>,
) -> Result<Vec<Option<Info>>> {
    let Some(read) = read else { return Ok(infos) };
    let Value::Array(read) = read else {
        return Err(Error::Protocol("status reads: HMGET did not answer with an array".into()));
    };
    let mut read = read.iter();
    for (n, slot) in infos.iter_mut().enumerate().filter(|(_, i)| i.is_none()) {
        let v = read.next().ok_or_else(|| Error::Protocol("short HMGET reply".into()))?;
        if matches!(v, Value::Nil) {
            continue;
        }
        let info = parse_info(room, &text_of(v)?)?;
        learned.push((tickets[n], info));
        *slot = Some(info);
    }
    Ok(infos)
}

/// A ticket's info as stored: `owner:joined`, the owner 32 hex digits.
fn parse_info(room: u64, s: &str) -> Result<Info> {
    let bad = || Error::Protocol("bad ticket info".into());
    let (owner, joined) = s.split_once(':').ok_or_else(bad)?;
    Ok(Info {
        room,
        owner: OwnerHash::parse_hex(owner).ok_or_else(bad)?,
        joined: joined.parse().map_err(|_| bad())?,
    })
}

/// A waiting ticket from its info and rank.
fn waiting(room: &RoomId, ticket: TicketId, view: &RoomView, info: Info, rank: i64) -> TicketStatus {
    let fields = TicketFields {
        state: TicketState::Waiting,
        pos: rank + 1,
        until: 0,
        owner: info.owner,
        joined: info.joined,
    };
    fields.status(room, ticket, view)
}
