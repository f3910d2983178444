//! Status polls by plain reads: the room's view and each ticket's info and rank, pipelined
//! as ordinary commands, no script.
//!
//! A poll only reads, and Redis spends far more on a script call and on each `redis.call`
//! inside it than on the same commands sent plainly (`queue-core/benches/script_cost.py`:
//! a status script call for one ticket costs 3.6 times the instructions of an empty script
//! call; in `http_bench.sh`, Redis's CPU per poll fell from ~7 to ~4 µs with these reads).
//! What the reads answer is what the script would: a waiting ticket's position is its rank
//! in `waiting`, and a ticket's info never changes after its join. What they cannot answer goes to the status script:
//! tickets no longer waiting (admitted, expired, left, dropped) and every ticket of a
//! scheduled `random_at_open` room before its draw, whose pre-queue has no position yet
//! (after the draw its ranks are positions, as in a FIFO room).

use redis::Value;

use super::{RoomView, TicketFields, f64_of, int_of, room_key, text_of, u64_of};
use crate::config::RoomConfig;
use crate::error::{Error, Result};
use crate::id::{RoomId, TicketId};
use crate::model::{TicketState, TicketStatus};

/// The config fields the view needs, in the order [`decode`] reads them.
const VIEW_FIELDS: [&[u8]; 7] = [
    b"batch_size",
    b"tick_interval_ms",
    b"max_active",
    b"session_ttl_s",
    b"queue_method",
    b"opens_at_ms",
    b"paused",
];
/// Replies before the ranks: config fields, `TIME`, the admission rate, the tickets' infos,
/// whether the room's draw was made.
const HEAD: usize = 5;

/// The reads for `tickets`: every ticket's info in one `HMGET`, then a `ZRANK` each.
pub(super) fn pipeline(room: &RoomId, tickets: &[TicketId]) -> redis::Pipeline {
    let waiting = room_key(room, "waiting");
    // The ids as hex digits in place: no string per ticket.
    let ids: Vec<[u8; 32]> = tickets.iter().map(|t| t.to_hex()).collect();
    let ids: Vec<&[u8]> = ids.iter().map(|id| &id[..]).collect();
    let mut p = redis::Pipeline::with_capacity(HEAD + tickets.len());
    p.add_command(command(&[b"HMGET", room_key(room, "cfg").as_bytes()], &VIEW_FIELDS));
    p.add_command(command(&[b"TIME"], &[]));
    p.add_command(command(&[b"HGET", room_key(room, "stats").as_bytes(), b"rate_pm"], &[]));
    p.add_command(command(&[b"HMGET", room_key(room, "tickets").as_bytes()], &ids));
    p.add_command(command(&[b"EXISTS", room_key(room, "draw").as_bytes()], &[]));
    for id in ids {
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
/// needs the script (its queue is yet to be drawn, or its config lacks a field).
pub(super) fn decode(room: &RoomId, tickets: &[TicketId], replies: &[Value]) -> Result<Option<Vec<Read>>> {
    if replies.len() != HEAD + tickets.len() {
        return Err(Error::Protocol(format!(
            "{} replies to {} status reads",
            replies.len(),
            HEAD + tickets.len()
        )));
    }
    let (Value::Array(cfg), Value::Array(infos)) = (&replies[0], &replies[3]) else {
        return Err(Error::Protocol("status reads: HMGET did not answer with arrays".into()));
    };
    if cfg.len() != VIEW_FIELDS.len() || infos.len() != tickets.len() {
        return Err(Error::Protocol("short HMGET reply".into()));
    }
    if matches!(cfg[0], Value::Nil) {
        return Err(Error::UnknownRoom(room.to_string()));
    }
    if cfg.iter().any(|v| matches!(v, Value::Nil)) {
        return Ok(None);
    }
    // `undrawn` in lua/lib.lua: a random_at_open room with a schedule and no draw yet.
    if text_of(&cfg[4])? == "random_at_open" && u64_of(&cfg[5])? > 0 && int_of(&replies[4])? == 0 {
        return Ok(None);
    }
    let view = view(cfg, &replies[1], &replies[2])?;
    let ranks = &replies[HEAD..];
    let mut answers = Vec::with_capacity(tickets.len());
    for ((&ticket, info), rank) in tickets.iter().zip(infos).zip(ranks) {
        answers.push(match (info, rank) {
            (Value::Nil, _) => Read::Known(None),
            (_, Value::Nil) => Read::AskScript,
            (info, rank) => Read::Known(Some(waiting(room, ticket, &view, &text_of(info)?, int_of(rank)?)?)),
        });
    }
    Ok(Some(answers))
}

fn view(cfg: &[Value], time: &Value, rate: &Value) -> Result<RoomView> {
    let Value::Array(t) = time else { return Err(Error::Protocol(format!("TIME answered {time:?}"))) };
    let [secs, micros] = &t[..] else { return Err(Error::Protocol(format!("TIME answered {time:?}"))) };
    let now = u64_of(secs)? * 1000 + u64_of(micros)? / 1000;
    let rate_pm = if matches!(rate, Value::Nil) { 0.0 } else { f64_of(rate)? };
    let mut c = RoomConfig {
        batch_size: u64_of(&cfg[0])? as u32,
        tick_interval_ms: u64_of(&cfg[1])?,
        max_active: u64_of(&cfg[2])? as u32,
        session_ttl_s: u64_of(&cfg[3])? as u32,
        paused: text_of(&cfg[6])? == "1",
        ..RoomConfig::default()
    };
    c.set_opens_at_ms(u64_of(&cfg[5])?);
    Ok(RoomView::new(now, rate_pm, c))
}

/// A waiting ticket from its info (`owner:joined`, the owner 32 hex digits) and rank.
fn waiting(room: &RoomId, ticket: TicketId, view: &RoomView, info: &str, rank: i64) -> Result<TicketStatus> {
    let (owner, joined) = info.split_once(':').ok_or_else(|| Error::Protocol("bad ticket info".into()))?;
    let fields = TicketFields {
        state: TicketState::Waiting,
        pos: rank + 1,
        until: 0,
        owner: owner.into(),
        joined: joined.parse().map_err(|_| Error::Protocol("bad ticket info".into()))?,
    };
    fields.status(room, ticket, view)
}
