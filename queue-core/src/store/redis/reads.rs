//! Status polls by plain reads: the room's view and each ticket's info and rank, pipelined
//! as ordinary commands, no script.
//!
//! A poll only reads, and Redis spends far more on a script call and on each `redis.call`
//! inside it than on the same commands sent plainly (`queue-core/benches/script_cost.py`:
//! a status script call for one ticket costs 3.6 times the instructions of an empty script
//! call; in `http_bench.sh`, Redis's CPU per poll fell from ~7 to ~4 µs with these reads).
//! What the reads answer is what
//! the script would: a waiting ticket's position is its rank in `waiting`, and a ticket's
//! info never changes after its join. What they cannot answer goes to the status script:
//! tickets no longer waiting (admitted, expired, left, dropped) and every ticket of a
//! `random_at_open` room, whose undrawn tickets have no position yet.

use redis::Value;

use super::{RoomView, TicketFields};
use crate::config::RoomConfig;
use crate::error::{Error, Result};
use crate::id::{RoomId, TicketId};
use crate::model::{TicketState, TicketStatus};

/// The config fields the view needs, in the order [`decode`] reads them.
const VIEW_FIELDS: [&str; 7] = [
    "batch_size",
    "tick_interval_ms",
    "max_active",
    "session_ttl_s",
    "queue_method",
    "opens_at_ms",
    "paused",
];
/// Replies before the ranks: config fields, `TIME`, the admission rate, the tickets' infos.
const HEAD: usize = 4;

fn key(room: &RoomId, name: &str) -> String {
    format!("wr:{{{room}}}:{name}")
}

/// The reads for `tickets`: every ticket's info in one `HMGET`, then a `ZRANK` each.
pub(super) fn pipeline(room: &RoomId, tickets: &[TicketId]) -> redis::Pipeline {
    let waiting = key(room, "waiting");
    let ids: Vec<String> = tickets.iter().map(ToString::to_string).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut p = redis::Pipeline::with_capacity(HEAD + tickets.len());
    p.add_command(command(&["HMGET", &key(room, "cfg")], &VIEW_FIELDS));
    p.add_command(command(&["TIME"], &[]));
    p.add_command(command(&["HGET", &key(room, "stats"), "rate_pm"], &[]));
    p.add_command(command(&["HMGET", &key(room, "tickets")], &ids));
    for id in ids {
        p.add_command(command(&["ZRANK", &waiting, id], &[]));
    }
    p
}

/// A command sized up front: grown argument by argument, each costs a few reallocations,
/// and a batch of polls sends one per ticket.
fn command(head: &[&str], rest: &[&str]) -> redis::Cmd {
    let args = || head.iter().chain(rest);
    let mut c = redis::Cmd::with_capacity(head.len() + rest.len(), args().map(|a| a.len()).sum());
    for a in args() {
        c.arg(*a);
    }
    c
}

/// Each ticket's answer from the reads' replies (`Some(None)`: the room has no such ticket;
/// `None`: ask the script), or `None` for all of them when the room's queue method needs the
/// script.
pub(super) fn decode(
    room: &RoomId,
    tickets: &[TicketId],
    replies: &[Value],
) -> Result<Option<Vec<Option<Option<TicketStatus>>>>> {
    if replies.len() != HEAD + tickets.len() {
        return Err(Error::Protocol(format!(
            "{} replies to {} status reads",
            replies.len(),
            HEAD + tickets.len()
        )));
    }
    let Value::Array(infos) = &replies[3] else { return Err(unexpected(&replies[3])) };
    if infos.len() != tickets.len() {
        return Err(Error::Protocol("short HMGET reply".into()));
    }
    let Value::Array(cfg) = &replies[0] else { return Err(unexpected(&replies[0])) };
    if cfg.len() != VIEW_FIELDS.len() {
        return Err(Error::Protocol("short HMGET reply".into()));
    }
    if matches!(cfg[0], Value::Nil) {
        return Err(Error::UnknownRoom(room.to_string()));
    }
    // A field missing (a config written by an older version) or a drawn queue: the script
    // knows what to do.
    if cfg.iter().any(|v| matches!(v, Value::Nil)) || text(&cfg[4])? == "random_at_open" {
        return Ok(None);
    }
    let view = view(cfg, &replies[1], &replies[2])?;
    let mut answers = Vec::with_capacity(tickets.len());
    for (i, &ticket) in tickets.iter().enumerate() {
        let (info, rank) = (&infos[i], &replies[HEAD + i]);
        answers.push(match (info, rank) {
            (Value::Nil, _) => Some(None),
            (_, Value::Nil) => None,
            (info, rank) => Some(Some(waiting(room, ticket, &view, text(info)?, int(rank)?)?)),
        });
    }
    Ok(Some(answers))
}

fn view(cfg: &[Value], time: &Value, rate: &Value) -> Result<RoomView> {
    let Value::Array(t) = time else { return Err(unexpected(time)) };
    let [secs, micros] = &t[..] else { return Err(unexpected(time)) };
    let now = u64_of(secs)? * 1000 + u64_of(micros)? / 1000;
    let rate_pm = match rate {
        Value::Nil => 0.0,
        v => text(v)?.parse().map_err(|_| unexpected(v))?,
    };
    let mut c = RoomConfig {
        batch_size: u64_of(&cfg[0])? as u32,
        tick_interval_ms: u64_of(&cfg[1])?,
        max_active: u64_of(&cfg[2])? as u32,
        session_ttl_s: u64_of(&cfg[3])? as u32,
        paused: text(&cfg[6])? == "1",
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

fn text(v: &Value) -> Result<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).map_err(|_| unexpected(v)),
        Value::SimpleString(s) => Ok(s),
        _ => Err(unexpected(v)),
    }
}

fn int(v: &Value) -> Result<i64> {
    match v {
        Value::Int(n) => Ok(*n),
        v => text(v)?.parse().map_err(|_| unexpected(v)),
    }
}

fn u64_of(v: &Value) -> Result<u64> {
    Ok(int(v)?.max(0) as u64)
}

fn unexpected(v: &Value) -> Error {
    Error::Protocol(format!("unexpected reply value {v:?}"))
}
