//! The `random_at_open` draw: deterministic from a recorded seed, so it can be re-checked.
//!
//! At open, every ticket still waiting that joined before `opens_at` gets the order key
//! `first 52 bits of SHA-1(seed ‖ ticket id)` (ties broken by ticket id); the queue is sorted
//! by it. Redis computes the same with `redis.sha1hex` inside the tick script, so both stores
//! draw identically and an auditor can recompute the order from [`crate::model::DrawRecord`].

use aws_lc_rs::digest;

use crate::id::{RoomId, TicketId};

/// The seed: SHA-1 hex of `room:opens_at_ms:last_seq:draw_time_us`.
pub fn seed(room: &RoomId, opens_at_ms: u64, last_seq: u64, draw_time_us: u64) -> String {
    sha1_hex(format!("{room}:{opens_at_ms}:{last_seq}:{draw_time_us}").as_bytes())
}

/// A ticket's 52-bit order key under `seed` (exact in a Redis ZSET's double score).
pub fn order_key(seed: &str, ticket: TicketId) -> u64 {
    let hex = sha1_hex(format!("{seed}{ticket}").as_bytes());
    u64::from_str_radix(&hex[..13], 16).unwrap_or(0)
}

/// Sorts tickets into drawn order.
pub fn sort(seed: &str, tickets: &mut [TicketId]) {
    // Fixed-width hex ids order like their numbers: the same tie-break as a Redis ZSET.
    tickets.sort_by_cached_key(|t| (order_key(seed, *t), *t));
}

fn sha1_hex(data: &[u8]) -> String {
    let d = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, data);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_matches_a_known_vector() {
        assert_eq!(sha1_hex(b"abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
    }

    #[test]
    fn draw_is_a_deterministic_permutation() {
        let room = RoomId::parse("r").unwrap();
        let s = seed(&room, 1, 100, 7);
        let mut a: Vec<_> = (1..=100).map(|i| TicketId::new(i, i * 31)).collect();
        let mut b = a.clone();
        b.reverse();
        sort(&s, &mut a);
        sort(&s, &mut b);
        assert_eq!(a, b);
        let in_order = (1..=100).map(|i| TicketId::new(i, i * 31)).collect::<Vec<_>>();
        assert_ne!(a, in_order, "a draw of 100 left everyone in place");
    }
}
