//! The store interface and its two implementations.
//!
//! Every operation on a room is atomic in the store: the memory store holds the room's lock,
//! the Redis store runs one Lua script on the room's hash slot. Clocks are the store's own
//! (Redis `TIME`), never the caller's, so any number of gateways agree on tick numbers.

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::config::RoomConfig;
use crate::error::Result;
use crate::id::{RoomId, TicketId, UserKey};
use crate::model::{
    DrawRecord, JoinOutcome, RoomEvent, RoomStats, TickOutcome, TicketState, TicketStatus, Watched,
};

pub mod memory;
mod prelude;
pub mod redis;

pub use self::memory::{Clock, ManualClock, MemoryStore, SystemClock};
pub use self::redis::RedisStore;

/// Most tickets a single `touch` call may name.
pub const MAX_TOUCH_BATCH: usize = 10_000;
/// Most tickets a single manual `admit` may admit.
pub const MAX_ADMIT: u32 = 1_000_000;
/// Most expired admissions and idle tickets a tick processes (the rest go with the next tick),
/// so that one tick's store time stays bounded.
pub const MAX_SWEEP_PER_TICK: u64 = 50_000;
/// Most revoked admissions [`Store::revoked`] returns (the latest ending): each is an
/// admitted buyer who left, a few per minute in an on-sale.
pub const MAX_REVOKED: usize = 100_000;
/// How long a store remembers that a room (or a gate log, a gate) was deleted
/// ([`Store::was_deleted`]): every gateway's cache forgets a deleted one within a second or
/// two, far inside this.
pub const DELETION_MEMORY: std::time::Duration = std::time::Duration::from_secs(3600);

/// The in-process store's and gate log's memory of deletions ([`Store::was_deleted`],
/// [`crate::gate::GateLog::was_deleted`]): when each was deleted, on the caller's clock (ms),
/// kept for [`DELETION_MEMORY`]. Old notes go as new ones come.
#[derive(Debug)]
pub(crate) struct DeletionNotes<K>(std::sync::Mutex<std::collections::HashMap<K, u64>>);

impl<K> Default for DeletionNotes<K> {
    fn default() -> Self {
        DeletionNotes(std::sync::Mutex::default())
    }
}

impl<K: std::hash::Hash + Eq + Clone> DeletionNotes<K> {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<K, u64>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes that `key` is being deleted at `now_ms`.
    pub(crate) fn note(&self, key: &K, now_ms: u64) {
        let mut notes = self.lock();
        notes.retain(|_, at| !ended(*at, now_ms));
        notes.insert(key.clone(), now_ms);
    }

    /// `key` was made again.
    pub(crate) fn forget(&self, key: &K) {
        self.lock().remove(key);
    }

    /// Whether `key` was deleted within [`DELETION_MEMORY`] of `now_ms`.
    pub(crate) fn contains(&self, key: &K, now_ms: u64) -> bool {
        self.lock().get(key).is_some_and(|at| !ended(*at, now_ms))
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

fn ended(at_ms: u64, now_ms: u64) -> bool {
    now_ms.saturating_sub(at_ms) >= DELETION_MEMORY.as_millis() as u64
}

/// A waiting-room store. See DESIGN §2 for the semantics and invariants every implementation
/// keeps; `tests/conformance.rs` runs the same suite against each.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Creates or replaces a room's config; true when the room is new. Publishes
    /// [`RoomEvent::ConfigChanged`].
    async fn put_room(&self, room: &RoomId, cfg: &RoomConfig) -> Result<bool>;
    /// A room's config, if the room exists.
    async fn room_config(&self, room: &RoomId) -> Result<Option<RoomConfig>>;
    /// Deletes a room with all its tickets; true when it existed. The store remembers the
    /// deletion for [`DELETION_MEMORY`] ([`Store::was_deleted`]).
    async fn delete_room(&self, room: &RoomId) -> Result<bool>;
    /// Whether `room` was deleted by [`Store::delete_room`] within [`DELETION_MEMORY`] and
    /// not created again since. A room that is gone without this was lost by the store (a
    /// Redis restarted without persistence, flushed, or failed over to an empty replica),
    /// which a gateway that still knows its config puts back.
    async fn was_deleted(&self, room: &RoomId) -> Result<bool>;
    /// Every room, sorted.
    async fn rooms(&self) -> Result<Vec<RoomId>>;
    /// Pauses or resumes admission.
    async fn set_paused(&self, room: &RoomId, paused: bool) -> Result<()>;

    /// Joins the queue, or returns the owner's live ticket (invariant 4). Applies the free pass.
    async fn join(&self, room: &RoomId, user: &UserKey) -> Result<JoinOutcome>;
    /// A ticket's state and, while waiting, its position and ETA.
    async fn status(&self, room: &RoomId, ticket: TicketId) -> Result<TicketStatus>;
    /// The statuses of many tickets of one room in one atomic read (a gateway coalesces
    /// concurrent polls into it), in argument order; `None` for ids the room does not have.
    /// At most [`MAX_TOUCH_BATCH`] tickets.
    async fn status_many(&self, room: &RoomId, tickets: &[TicketId]) -> Result<Vec<Option<TicketStatus>>>;
    /// Leaves the queue or gives up an admission; returns the state before. Leaving a ticket
    /// that is already over changes nothing. An admitted ticket's leave ends its admission:
    /// its place goes back at once and the ticket is listed by [`Store::revoked`] until its
    /// admission would have ended.
    async fn leave(&self, room: &RoomId, ticket: TicketId) -> Result<TicketState>;
    /// Admitted tickets that left before their admission ended, with that end (Unix ms): their
    /// tokens are signed and unexpired, and gateways refuse them. At most [`MAX_REVOKED`], the
    /// latest ending first; ends already past may linger until the next tick.
    async fn revoked(&self, room: &RoomId) -> Result<Vec<(TicketId, u64)>>;
    /// Marks waiting tickets as seen now (polls, open SSE streams). Unknown or no longer
    /// waiting tickets are ignored.
    async fn touch(&self, room: &RoomId, tickets: &[TicketId]) -> Result<()>;

    /// For tickets with open live streams: marks the waiting ones seen and returns each one's
    /// state, in argument order (`None` for ids the room does not have). One call per room
    /// per second serves every stream of a gateway.
    async fn watch(&self, room: &RoomId, tickets: &[TicketId]) -> Result<Vec<Option<Watched>>>;

    /// Applies the current tick once: expires admissions, drops idle tickets, draws at open,
    /// and admits up to `min(batch_size, max_active − active, waiting)`.
    async fn tick(&self, room: &RoomId) -> Result<TickOutcome>;
    /// Admits up to `count` more tickets now (an operator's lever; respects `max_active`).
    async fn admit(&self, room: &RoomId, count: u32) -> Result<Vec<TicketId>>;
    /// Admissions that have not expired.
    async fn active(&self, room: &RoomId) -> Result<u64>;
    /// Counters and gauges.
    async fn stats(&self, room: &RoomId) -> Result<RoomStats>;
    /// The `random_at_open` draw record, once drawn.
    async fn draw_record(&self, room: &RoomId) -> Result<Option<DrawRecord>>;

    /// Admissions, leaves from the queue and config changes of every room, as they happen.
    fn subscribe(&self) -> broadcast::Receiver<RoomEvent>;
    /// Fails when the store is unreachable (readiness).
    async fn ping(&self) -> Result<()>;

    /// A handle on the same store whose connection does its I/O on the calling runtime, for a
    /// thread with a runtime of its own: through the shared handle, every call crosses to the
    /// runtime that opened the connection and back. Events stay with the shared handle
    /// (`subscribe` on a local one hears the same). `None` when the store holds no
    /// connection (the memory store): the shared handle is as local as it gets.
    async fn local(&self) -> Result<Option<std::sync::Arc<dyn Store>>> {
        Ok(None)
    }
}

pub(crate) fn check_touch(tickets: &[TicketId]) -> Result<()> {
    if tickets.len() > MAX_TOUCH_BATCH {
        return Err(crate::Error::InvalidArgument {
            field: "tickets",
            reason: format!("at most {MAX_TOUCH_BATCH} per call"),
        });
    }
    Ok(())
}

pub(crate) fn check_admit(count: u32) -> Result<()> {
    if count == 0 || count > MAX_ADMIT {
        return Err(crate::Error::InvalidArgument {
            field: "count",
            reason: format!("must be within 1..={MAX_ADMIT}"),
        });
    }
    Ok(())
}
