//! `MemoryStore`: the embedded default, one process, no servers.
//!
//! Per room, tickets live in a `Vec<Slot>` indexed by join sequence (the ticket id carries
//! it, so lookups need no map). The admission order is a `Vec<u32>` of slot indices with a
//! Fenwick tree over "still waiting" flags, so a position is an O(log n) prefix sum and a
//! tick pops from a head cursor. Waiting tickets are also on an intrusive LRU list ordered by
//! last seen, so idle drops take O(dropped). About 100 bytes per waiting ticket.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::{DeletionNotes, MAX_REVOKED, Store, check_admit, check_touch};
use crate::config::{QueueMethod, RoomConfig};
use crate::error::{Error, Result};
use crate::eta::{self, RateLog};
use crate::id::{OwnerHash, RoomId, TicketId, UserKey};
use crate::model::*;

/// The memory store's time source.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Unix time in ms.
    fn now_ms(&self) -> u64;
}

/// Wall-clock time.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    }
}

/// A clock that moves only when told to (tests, simulations).
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock showing `start_ms`.
    pub fn new(start_ms: u64) -> Self {
        ManualClock(Arc::new(AtomicU64::new(start_ms)))
    }
    /// Moves the clock forward.
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
    /// Sets the clock.
    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone)]
struct Slot {
    random: u64,
    owner: OwnerHash,
    joined: u64,
    last_seen: u64,
    /// Admission end while admitted or expired.
    until: u64,
    qpos: u32,
    prev: u32,
    next: u32,
    state: TicketState,
}

/// A Fenwick tree over 0/1 "waiting" flags of queue positions.
#[derive(Debug, Default)]
struct Fenwick(Vec<u32>);

impl Fenwick {
    fn prefix(&self, mut n: usize) -> u64 {
        let mut s = 0u64;
        while n > 0 {
            s += self.0[n - 1] as u64;
            n &= n - 1;
        }
        s
    }
    fn push(&mut self, v: u32) {
        let n = self.0.len() + 1;
        let low = n & n.wrapping_neg();
        let s = v as u64 + self.prefix(n - 1) - self.prefix(n - low);
        self.0.push(s as u32);
    }
    fn add(&mut self, pos: usize, delta: i64) {
        let mut i = pos + 1;
        while i <= self.0.len() {
            self.0[i - 1] = (self.0[i - 1] as i64 + delta) as u32;
            i += i & i.wrapping_neg();
        }
    }
    fn rebuild(&mut self, flags: impl Iterator<Item = u32>) {
        self.0.clear();
        for f in flags {
            self.push(f);
        }
    }
}

#[derive(Debug)]
struct Room {
    id: RoomId,
    cfg: RoomConfig,
    slots: Vec<Slot>,
    queue: Vec<u32>,
    alive: Fenwick,
    qhead: usize,
    waiting: u64,
    active: u64,
    users: HashMap<OwnerHash, u32>,
    expiries: BinaryHeap<Reverse<(u64, u32)>>,
    lru_head: u32,
    lru_tail: u32,
    last_tick: u64,
    preq_last: u64,
    draw: Option<DrawRecord>,
    rate: RateLog,
    rate_pm: f64,
    joined_total: u64,
    admitted_total: u64,
    dropped_total: u64,
    left_total: u64,
    expired_total: u64,
    free_used: u64,
    /// Admitted tickets that left, by slot: their admission's end. Dropped as that end comes
    /// up in `expiries`.
    revoked: HashMap<u32, u64>,
}

impl Room {
    fn new(id: RoomId, cfg: RoomConfig) -> Self {
        Room {
            id,
            cfg,
            slots: Vec::new(),
            queue: Vec::new(),
            alive: Fenwick::default(),
            qhead: 0,
            waiting: 0,
            active: 0,
            users: HashMap::new(),
            expiries: BinaryHeap::new(),
            lru_head: NIL,
            lru_tail: NIL,
            last_tick: 0,
            preq_last: 0,
            draw: None,
            rate: RateLog::default(),
            rate_pm: 0.0,
            joined_total: 0,
            admitted_total: 0,
            dropped_total: 0,
            left_total: 0,
            expired_total: 0,
            free_used: 0,
            revoked: HashMap::new(),
        }
    }

    fn slot_of(&self, ticket: TicketId) -> Result<u32> {
        let idx = ticket.seq().checked_sub(1).ok_or(Error::UnknownTicket)?;
        match self.slots.get(idx as usize) {
            Some(s) if s.random == ticket.random() => Ok(idx as u32),
            _ => Err(Error::UnknownTicket),
        }
    }

    fn ticket_id(&self, idx: u32) -> TicketId {
        TicketId::new(idx as u64 + 1, self.slots[idx as usize].random)
    }

    fn lru_unlink(&mut self, idx: u32) {
        let (prev, next) = {
            let s = &self.slots[idx as usize];
            (s.prev, s.next)
        };
        match prev {
            NIL => self.lru_head = next,
            p => self.slots[p as usize].next = next,
        }
        match next {
            NIL => self.lru_tail = prev,
            n => self.slots[n as usize].prev = prev,
        }
        let s = &mut self.slots[idx as usize];
        s.prev = NIL;
        s.next = NIL;
    }

    fn lru_append(&mut self, idx: u32) {
        let tail = self.lru_tail;
        {
            let s = &mut self.slots[idx as usize];
            s.prev = tail;
            s.next = NIL;
        }
        match tail {
            NIL => self.lru_head = idx,
            t => self.slots[t as usize].next = idx,
        }
        self.lru_tail = idx;
    }

    /// Takes a waiting ticket out of the queue into `state`.
    fn unqueue(&mut self, idx: u32, state: TicketState) {
        let qpos = self.slots[idx as usize].qpos as usize;
        self.alive.add(qpos, -1);
        self.lru_unlink(idx);
        self.waiting -= 1;
        self.slots[idx as usize].state = state;
    }

    fn expire_due(&mut self, now: u64) -> u64 {
        let mut n = 0;
        while let Some(&Reverse((until, idx))) = self.expiries.peek() {
            if until > now {
                break;
            }
            self.expiries.pop();
            let s = &mut self.slots[idx as usize];
            if s.state == TicketState::Admitted && s.until == until {
                s.state = TicketState::Expired;
                self.active -= 1;
                self.expired_total += 1;
                n += 1;
            } else if s.state == TicketState::Left && self.revoked.get(&idx) == Some(&until) {
                self.revoked.remove(&idx);
            }
        }
        n
    }

    fn drop_idle(&mut self, now: u64) -> u64 {
        let limit = now.saturating_sub(self.cfg.idle_timeout_s as u64 * 1000);
        let mut n = 0;
        while self.lru_head != NIL && n < super::MAX_SWEEP_PER_TICK {
            let idx = self.lru_head;
            if self.slots[idx as usize].last_seen > limit {
                break;
            }
            self.unqueue(idx, TicketState::Dropped);
            self.dropped_total += 1;
            n += 1;
        }
        n
    }

    fn capacity(&self) -> u64 {
        match self.cfg.max_active {
            0 => u64::MAX,
            m => (m as u64).saturating_sub(self.active),
        }
    }

    fn admit_one(&mut self, idx: u32, now: u64) -> u64 {
        let until = now + self.cfg.session_ttl_s as u64 * 1000;
        let s = &mut self.slots[idx as usize];
        s.state = TicketState::Admitted;
        s.until = until;
        let waited = now.saturating_sub(s.joined);
        self.expiries.push(Reverse((until, idx)));
        self.active += 1;
        self.admitted_total += 1;
        waited
    }

    fn admit_next(&mut self, n: u64, now: u64) -> Vec<Admitted> {
        let mut out = Vec::with_capacity(n.min(self.waiting) as usize);
        while (out.len() as u64) < n && self.waiting > 0 {
            let idx = self.queue[self.qhead];
            self.qhead += 1;
            if self.slots[idx as usize].state != TicketState::Waiting {
                continue;
            }
            self.unqueue(idx, TicketState::Waiting);
            let waited_ms = self.admit_one(idx, now);
            out.push(Admitted { ticket: self.ticket_id(idx), waited_ms });
        }
        out
    }

    fn draw(&mut self, now: u64) -> DrawRecord {
        let opens = self.cfg.opens_at_ms();
        let at_us = now * 1000;
        let seed = crate::draw::seed(&self.id, opens, self.preq_last, at_us);
        let pre = self.preq_last as usize;
        // Pre-queue tickets occupy queue positions 0..pre (nothing reorders them before).
        let mut keyed: Vec<(u64, TicketId, u32)> = self.queue[..pre]
            .iter()
            .map(|&idx| {
                let t = self.ticket_id(idx);
                (crate::draw::order_key(&seed, t), t, idx)
            })
            .collect();
        // Fixed-width hex ids order like their numbers, so this matches a Redis ZSET's tie-break.
        keyed.sort_by_key(|k| (k.0, k.1));
        let shuffled =
            keyed.iter().filter(|k| self.slots[k.2 as usize].state == TicketState::Waiting).count();
        for (pos, (_, _, idx)) in keyed.into_iter().enumerate() {
            self.queue[pos] = idx;
            self.slots[idx as usize].qpos = pos as u32;
        }
        let flags: Vec<u32> = self
            .queue
            .iter()
            .map(|&idx| (self.slots[idx as usize].state == TicketState::Waiting) as u32)
            .collect();
        self.alive.rebuild(flags.into_iter());
        self.qhead = 0;
        let record = DrawRecord { seed, at_us, last_seq: self.preq_last, shuffled: shuffled as u64 };
        self.draw = Some(record.clone());
        record
    }

    /// The observed rate is recomputed when admissions happen (as the Redis store does).
    fn record_rate(&mut self, now: u64, n: u64) {
        self.rate.record(now, n);
        self.rate_pm = self.rate.per_minute(now, &self.cfg);
    }

    fn needs_draw(&self) -> bool {
        self.cfg.queue_method == QueueMethod::RandomAtOpen
            && self.cfg.opens_at.is_some()
            && self.draw.is_none()
    }

    fn status(&self, idx: u32, now: u64) -> TicketStatus {
        let s = &self.slots[idx as usize];
        let phase = RoomPhase::of(&self.cfg, now);
        let (mut position, mut eta) = (None, None);
        if s.state == TicketState::Waiting {
            let undrawn = self.needs_draw() && (idx as u64) < self.preq_last;
            if !undrawn {
                let pos = self.alive.prefix(s.qpos as usize + 1);
                position = Some(pos);
                eta = eta::estimate(pos, self.rate_pm, &self.cfg, phase, now);
            }
        }
        let admitted = matches!(s.state, TicketState::Admitted | TicketState::Expired);
        TicketStatus {
            ticket: self.ticket_id(idx),
            room: self.id.clone(),
            state: s.state,
            position,
            eta,
            owner: s.owner,
            admitted_until_ms: admitted.then_some(s.until),
            joined_at_ms: s.joined,
            phase,
            now_ms: now,
        }
    }

    fn join(&mut self, owner: OwnerHash, random: u64, now: u64) -> JoinOutcome {
        if let Some(&idx) = self.users.get(&owner)
            && self.slots[idx as usize].state.is_live()
        {
            // touch_one only affects waiting tickets.
            self.touch_one(idx, now);
            return JoinOutcome { created: false, status: self.status(idx, now) };
        }
        let idx = self.slots.len() as u32;
        let qpos = self.queue.len() as u32;
        self.slots.push(Slot {
            random,
            owner,
            joined: now,
            last_seen: now,
            until: 0,
            qpos,
            prev: NIL,
            next: NIL,
            state: TicketState::Waiting,
        });
        self.queue.push(idx);
        self.users.insert(owner, idx);
        self.joined_total += 1;
        let phase = RoomPhase::of(&self.cfg, now);
        if self.cfg.queue_method == QueueMethod::RandomAtOpen && now < self.cfg.opens_at_ms() {
            self.preq_last = idx as u64 + 1;
        }
        let free = phase == RoomPhase::Open
            && self.free_used < self.cfg.free_pass as u64
            && self.waiting == 0
            && self.capacity() > 0;
        if free {
            self.alive.push(0);
            self.admit_one(idx, now);
            self.free_used += 1;
        } else {
            self.alive.push(1);
            self.waiting += 1;
            self.lru_append(idx);
        }
        JoinOutcome { created: true, status: self.status(idx, now) }
    }

    fn touch_one(&mut self, idx: u32, now: u64) {
        if self.slots[idx as usize].state == TicketState::Waiting {
            self.slots[idx as usize].last_seen = now;
            self.lru_unlink(idx);
            self.lru_append(idx);
        }
    }

    fn tick(&mut self, now: u64) -> (TickOutcome, Option<RoomEvent>) {
        let tick = now / self.cfg.tick_interval_ms;
        let mut out = TickOutcome { tick, ..TickOutcome::default() };
        if tick <= self.last_tick {
            return (out, None);
        }
        self.last_tick = tick;
        out.applied = true;
        out.expired = self.expire_due(now);
        out.dropped = self.drop_idle(now);
        out.waiting_before = self.waiting;
        out.active_before = self.active;
        if RoomPhase::of(&self.cfg, now) != RoomPhase::Open {
            return (out, None);
        }
        if self.needs_draw() {
            out.draw = Some(self.draw(now));
        }
        let n = (self.cfg.batch_size as u64).min(self.capacity());
        out.admitted = self.admit_next(n, now);
        out.expires_at_ms = now + self.cfg.session_ttl_s as u64 * 1000;
        self.record_rate(now, out.admitted.len() as u64);
        let event = (!out.admitted.is_empty()).then(|| RoomEvent::Admitted {
            room: self.id.clone(),
            tick: Some(tick),
            tickets: out.admitted.iter().map(|a| a.ticket).collect(),
            expires_at_ms: out.expires_at_ms,
        });
        (out, event)
    }

    fn stats(&self, now: u64) -> RoomStats {
        RoomStats {
            room: self.id.clone(),
            phase: RoomPhase::of(&self.cfg, now),
            waiting: self.waiting,
            active: self.active,
            admitted_per_minute: self.rate_pm,
            opens_at_ms: self.cfg.opens_at.map(|_| self.cfg.opens_at_ms()),
            joined_total: self.joined_total,
            admitted_total: self.admitted_total,
            dropped_total: self.dropped_total,
            left_total: self.left_total,
            free_passes_used: self.free_used,
            last_tick: self.last_tick,
            now_ms: now,
        }
    }
}

/// The in-process store. Cheap to clone handles are not provided: wrap it in an `Arc`.
#[derive(Debug)]
pub struct MemoryStore {
    clock: Arc<dyn Clock>,
    last_now: AtomicU64,
    rooms: RwLock<BTreeMap<RoomId, Arc<Mutex<Room>>>>,
    /// Rooms deleted lately, on the store's clock.
    deleted: DeletionNotes<RoomId>,
    events: broadcast::Sender<RoomEvent>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// A store on the system clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// A store on the given clock.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        let (events, _) = broadcast::channel(4096);
        MemoryStore {
            clock,
            last_now: AtomicU64::new(0),
            rooms: RwLock::new(BTreeMap::new()),
            deleted: DeletionNotes::default(),
            events,
        }
    }

    /// The store's clock; never goes backwards even if the source does.
    fn now(&self) -> u64 {
        let now = self.clock.now_ms();
        self.last_now.fetch_max(now, Ordering::SeqCst).max(now)
    }

    fn room(&self, id: &RoomId) -> Result<Arc<Mutex<Room>>> {
        let rooms = self.rooms.read().unwrap_or_else(|e| e.into_inner());
        rooms.get(id).cloned().ok_or_else(|| Error::UnknownRoom(id.to_string()))
    }

    /// Runs `f` on the room with its lock held, after lazily expiring admissions.
    fn with_room<T>(&self, id: &RoomId, f: impl FnOnce(&mut Room, u64) -> T) -> Result<T> {
        let room = self.room(id)?;
        let mut room = room.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.now();
        room.expire_due(now);
        Ok(f(&mut room, now))
    }

    fn publish(&self, event: RoomEvent) {
        // No subscribers is fine: nobody is listening yet.
        let _ = self.events.send(event);
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn put_room(&self, room: &RoomId, cfg: &RoomConfig) -> Result<bool> {
        cfg.validate()?;
        self.deleted.forget(room);
        let created = {
            let mut rooms = self.rooms.write().unwrap_or_else(|e| e.into_inner());
            match rooms.get(room) {
                Some(r) => {
                    r.lock().unwrap_or_else(|e| e.into_inner()).cfg = cfg.clone();
                    false
                }
                None => {
                    let r = Room::new(room.clone(), cfg.clone());
                    rooms.insert(room.clone(), Arc::new(Mutex::new(r)));
                    true
                }
            }
        };
        self.publish(RoomEvent::ConfigChanged { room: room.clone() });
        Ok(created)
    }

    async fn room_config(&self, room: &RoomId) -> Result<Option<RoomConfig>> {
        match self.room(room) {
            Ok(r) => Ok(Some(r.lock().unwrap_or_else(|e| e.into_inner()).cfg.clone())),
            Err(Error::UnknownRoom(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn delete_room(&self, room: &RoomId) -> Result<bool> {
        // Noted before the room goes, as the Redis store does: a room found gone without the
        // note is one the store lost.
        self.deleted.note(room, self.now());
        let existed = self.rooms.write().unwrap_or_else(|e| e.into_inner()).remove(room).is_some();
        if existed {
            self.publish(RoomEvent::ConfigChanged { room: room.clone() });
        }
        Ok(existed)
    }

    async fn was_deleted(&self, room: &RoomId) -> Result<bool> {
        Ok(self.deleted.contains(room, self.now()))
    }

    async fn rooms(&self) -> Result<Vec<RoomId>> {
        Ok(self.rooms.read().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect())
    }

    async fn set_paused(&self, room: &RoomId, paused: bool) -> Result<()> {
        self.with_room(room, |r, _| r.cfg.paused = paused)?;
        self.publish(RoomEvent::ConfigChanged { room: room.clone() });
        Ok(())
    }

    async fn join(&self, room: &RoomId, user: &UserKey) -> Result<JoinOutcome> {
        let owner = user.owner_hash();
        let random = rand::random::<u64>();
        self.with_room(room, |r, now| r.join(owner, random, now))
    }

    async fn status(&self, room: &RoomId, ticket: TicketId) -> Result<TicketStatus> {
        self.with_room(room, |r, now| Ok(r.status(r.slot_of(ticket)?, now)))?
    }

    async fn status_many(&self, room: &RoomId, tickets: &[TicketId]) -> Result<Vec<Option<TicketStatus>>> {
        check_touch(tickets)?;
        self.with_room(room, |r, now| {
            tickets.iter().map(|&t| r.slot_of(t).ok().map(|idx| r.status(idx, now))).collect()
        })
    }

    async fn leave(&self, room: &RoomId, ticket: TicketId) -> Result<TicketState> {
        let before = self.with_room(room, |r, _| -> Result<TicketState> {
            let idx = r.slot_of(ticket)?;
            let before = r.slots[idx as usize].state;
            match before {
                TicketState::Waiting => r.unqueue(idx, TicketState::Left),
                TicketState::Admitted => {
                    let s = &mut r.slots[idx as usize];
                    s.state = TicketState::Left;
                    let until = s.until;
                    r.active -= 1;
                    r.revoked.insert(idx, until);
                }
                _ => return Ok(before),
            }
            r.left_total += 1;
            Ok(before)
        })??;
        if before == TicketState::Waiting {
            self.publish(RoomEvent::Left { room: room.clone() });
        }
        Ok(before)
    }

    async fn revoked(&self, room: &RoomId) -> Result<Vec<(TicketId, u64)>> {
        self.with_room(room, |r, now| {
            let mut out: Vec<(TicketId, u64)> =
                r.revoked.iter().filter(|(_, u)| **u > now).map(|(&i, &u)| (r.ticket_id(i), u)).collect();
            out.sort_unstable_by_key(|&(_, u)| std::cmp::Reverse(u));
            out.truncate(MAX_REVOKED);
            out
        })
    }

    async fn touch(&self, room: &RoomId, tickets: &[TicketId]) -> Result<()> {
        check_touch(tickets)?;
        self.with_room(room, |r, now| {
            for &t in tickets {
                if let Ok(idx) = r.slot_of(t) {
                    r.touch_one(idx, now);
                }
            }
        })
    }

    async fn watch(&self, room: &RoomId, tickets: &[TicketId]) -> Result<Vec<Option<Watched>>> {
        check_touch(tickets)?;
        self.with_room(room, |r, now| {
            tickets
                .iter()
                .map(|&t| {
                    let idx = r.slot_of(t).ok()?;
                    r.touch_one(idx, now);
                    let st = r.status(idx, now);
                    Some(Watched {
                        state: st.state,
                        position: st.position,
                        admitted_until_ms: st.admitted_until_ms,
                    })
                })
                .collect()
        })
    }

    async fn tick(&self, room: &RoomId) -> Result<TickOutcome> {
        let (out, event) = self.with_room(room, |r, now| r.tick(now))?;
        if let Some(e) = event {
            self.publish(e);
        }
        Ok(out)
    }

    async fn admit(&self, room: &RoomId, count: u32) -> Result<Vec<TicketId>> {
        check_admit(count)?;
        let (admitted, until) = self.with_room(room, |r, now| {
            if r.needs_draw() && now >= r.cfg.opens_at_ms() {
                r.draw(now);
            }
            let n = (count as u64).min(r.capacity());
            let admitted = r.admit_next(n, now);
            r.record_rate(now, admitted.len() as u64);
            (admitted, now + r.cfg.session_ttl_s as u64 * 1000)
        })?;
        let tickets: Vec<TicketId> = admitted.iter().map(|a| a.ticket).collect();
        if !tickets.is_empty() {
            self.publish(RoomEvent::Admitted {
                room: room.clone(),
                tick: None,
                tickets: tickets.clone(),
                expires_at_ms: until,
            });
        }
        Ok(tickets)
    }

    async fn active(&self, room: &RoomId) -> Result<u64> {
        self.with_room(room, |r, _| r.active)
    }

    async fn stats(&self, room: &RoomId) -> Result<RoomStats> {
        self.with_room(room, |r, now| r.stats(now))
    }

    async fn draw_record(&self, room: &RoomId) -> Result<Option<DrawRecord>> {
        self.with_room(room, |r, _| r.draw.clone())
    }

    fn subscribe(&self) -> broadcast::Receiver<RoomEvent> {
        self.events.subscribe()
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn deletions_are_forgotten_after_an_hour() {
        let clock = ManualClock::new(1_000_000);
        let store = MemoryStore::with_clock(Arc::new(clock.clone()));
        let room = RoomId::parse("gone").unwrap();
        store.put_room(&room, &RoomConfig::default()).await.unwrap();
        store.delete_room(&room).await.unwrap();
        clock.advance(crate::store::DELETION_MEMORY.as_millis() as u64 - 1);
        assert!(store.was_deleted(&room).await.unwrap());
        clock.advance(1);
        assert!(!store.was_deleted(&room).await.unwrap());
        // Old notes go when another room is deleted: the map does not grow with every room ever deleted.
        store.delete_room(&RoomId::parse("other").unwrap()).await.unwrap();
        assert_eq!(store.deleted.len(), 1);
    }

    #[test]
    fn fenwick_push_matches_naive_prefix_sums() {
        let mut f = Fenwick::default();
        let mut naive = Vec::new();
        for i in 0..1000u32 {
            let v = (i * 7 % 3 == 0) as u32;
            f.push(v);
            naive.push(v as u64);
            if i % 5 == 0 {
                f.add(i as usize / 2, -(naive[i as usize / 2] as i64));
                naive[i as usize / 2] = 0;
            }
        }
        for n in 0..=naive.len() {
            assert_eq!(f.prefix(n), naive[..n].iter().sum::<u64>(), "prefix {n}");
        }
    }
}
