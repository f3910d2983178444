//! What stores answer: ticket states, join/tick outcomes, room statistics and events.

use serde::{Deserialize, Serialize};

use crate::config::RoomConfig;
use crate::eta::Eta;
use crate::id::{OwnerHash, RoomId, TicketId};

/// The one state every joined ticket is in (invariant 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketState {
    /// In the queue.
    Waiting,
    /// Admitted and the admission has not expired.
    Admitted,
    /// Was admitted; the admission ran out (`session_ttl_s`).
    Expired,
    /// Left the queue or gave up the admission.
    Left,
    /// Dropped from the queue after `idle_timeout_s` unseen.
    Dropped,
}

impl TicketState {
    /// The snake_case name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            TicketState::Waiting => "waiting",
            TicketState::Admitted => "admitted",
            TicketState::Expired => "expired",
            TicketState::Left => "left",
            TicketState::Dropped => "dropped",
        }
    }

    /// A live ticket is the owner's ticket: joining again returns it instead of a new one.
    pub fn is_live(self) -> bool {
        matches!(self, TicketState::Waiting | TicketState::Admitted)
    }
}

/// Whether a room admits right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomPhase {
    /// `opens_at` is in the future.
    Scheduled,
    /// Admitting.
    Open,
    /// Paused by an operator.
    Paused,
}

impl RoomPhase {
    /// The phase of `cfg` at `now_ms` on the store's clock.
    pub fn of(cfg: &RoomConfig, now_ms: u64) -> Self {
        if cfg.paused {
            RoomPhase::Paused
        } else if cfg.opens_at_ms() > now_ms {
            RoomPhase::Scheduled
        } else {
            RoomPhase::Open
        }
    }

    /// The snake_case name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            RoomPhase::Scheduled => "scheduled",
            RoomPhase::Open => "open",
            RoomPhase::Paused => "paused",
        }
    }
}

/// A ticket as its holder sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct TicketStatus {
    /// The ticket.
    pub ticket: TicketId,
    /// Its room.
    pub room: RoomId,
    /// Its state.
    pub state: TicketState,
    /// 1-based place in the queue while waiting; `None` before a `random_at_open` draw.
    pub position: Option<u64>,
    /// Estimated wait while waiting (`None` when paused or unknown).
    pub eta: Option<Eta>,
    /// Who holds it.
    pub owner: OwnerHash,
    /// When the admission ends (Unix ms), for admitted and expired tickets.
    pub admitted_until_ms: Option<u64>,
    /// When the ticket joined (Unix ms).
    pub joined_at_ms: u64,
    /// The room's phase.
    pub phase: RoomPhase,
    /// The store's clock when this answer was made (Unix ms).
    pub now_ms: u64,
}

/// What a live stream needs to know about its ticket (see [`crate::Store::watch`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watched {
    /// The ticket's state.
    pub state: TicketState,
    /// Its position while waiting (`None` before a `random_at_open` draw).
    pub position: Option<u64>,
    /// Admission end for admitted and expired tickets (Unix ms).
    pub admitted_until_ms: Option<u64>,
}

/// The answer to a join.
#[derive(Clone, Debug, PartialEq)]
pub struct JoinOutcome {
    /// True when a new ticket was made; false when the owner's live ticket was returned.
    pub created: bool,
    /// The ticket.
    pub status: TicketStatus,
}

/// The answer to a tick.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TickOutcome {
    /// The tick number: `floor(store_time_ms / tick_interval_ms)`.
    pub tick: u64,
    /// False when this tick (or a later one) had already been applied: nothing changed.
    pub applied: bool,
    /// Admitted by this tick, in admission order, with how long each waited.
    pub admitted: Vec<Admitted>,
    /// Waiting tickets after idle drops, before admission.
    pub waiting_before: u64,
    /// Active admissions before admission.
    pub active_before: u64,
    /// Tickets dropped as idle by this tick.
    pub dropped: u64,
    /// Admissions that expired and were recorded as such by this tick.
    pub expired: u64,
    /// When admissions made by this tick end (Unix ms).
    pub expires_at_ms: u64,
    /// Set when this tick performed the `random_at_open` draw.
    pub draw: Option<DrawRecord>,
}

/// One admission made by a tick or an operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admitted {
    /// The ticket.
    pub ticket: TicketId,
    /// Join to admission, in ms (for the wait-time histogram).
    pub waited_ms: u64,
}

/// The audit record of a `random_at_open` draw: with it, anyone holding the list of pre-queue
/// tickets can recompute the order ([`crate::draw::order_key`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrawRecord {
    /// 40 hex digits: SHA-1 of room, `opens_at`, last pre-queue sequence number and the store
    /// time of the draw in microseconds.
    pub seed: String,
    /// Store time of the draw (Unix µs), as used in the seed.
    pub at_us: u64,
    /// Tickets with sequence numbers up to this joined before `opens_at`.
    pub last_seq: u64,
    /// How many of them were still waiting and were shuffled.
    pub shuffled: u64,
}

/// A room's counters and gauges.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RoomStats {
    /// The room.
    pub room: RoomId,
    /// Scheduled, open or paused.
    pub phase: RoomPhase,
    /// Tickets waiting.
    pub waiting: u64,
    /// Admissions not yet expired.
    pub active: u64,
    /// Observed admission rate over the sliding window.
    pub admitted_per_minute: f64,
    /// `opens_at` (Unix ms), if set.
    pub opens_at_ms: Option<u64>,
    /// Tickets ever made.
    pub joined_total: u64,
    /// Admissions ever made (ticks, manual, free passes).
    pub admitted_total: u64,
    /// Tickets dropped as idle.
    pub dropped_total: u64,
    /// Tickets that left.
    pub left_total: u64,
    /// Free passes used.
    pub free_passes_used: u64,
    /// Last applied tick number (0: none yet).
    pub last_tick: u64,
    /// The store's clock (Unix ms).
    pub now_ms: u64,
}

/// Published by stores for SSE fan-out and live config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RoomEvent {
    /// Tickets were admitted (by a tick or an operator).
    Admitted {
        /// The room.
        room: RoomId,
        /// The tick number, for tick admissions.
        tick: Option<u64>,
        /// Admitted tickets in admission order.
        tickets: Vec<TicketId>,
        /// When these admissions end (Unix ms).
        expires_at_ms: u64,
    },
    /// A waiting ticket left: everyone behind it moved up.
    Left {
        /// The room.
        room: RoomId,
    },
    /// The room's config was written or the room deleted.
    ConfigChanged {
        /// The room.
        room: RoomId,
    },
}
