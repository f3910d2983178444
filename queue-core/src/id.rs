//! Identifiers that are parsed once at the edge and trusted afterwards.

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::digest;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// A room id: `[a-z0-9-]{1,64}`.
///
/// Room ids end up in Redis keys (inside a hash tag), URLs, cookie names and metric labels, so
/// the alphabet is deliberately narrow: no braces, no separators, nothing to escape.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId(std::sync::Arc<str>);

impl RoomId {
    /// Longest accepted room id.
    pub const MAX_LEN: usize = 64;

    /// Parses a room id.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |reason| Error::InvalidId { kind: "room", reason };
        if s.is_empty() {
            return Err(bad("must not be empty"));
        }
        if s.len() > Self::MAX_LEN {
            return Err(bad("must be at most 64 characters"));
        }
        if !s.bytes().all(Self::allowed) {
            return Err(bad("may only contain a-z, 0-9 and '-'"));
        }
        Ok(RoomId(s.into()))
    }

    /// Whether `id` would parse as a room id (without making one).
    pub fn is_valid(id: &[u8]) -> bool {
        (1..=Self::MAX_LEN).contains(&id.len()) && id.iter().copied().all(Self::allowed)
    }

    fn allowed(b: u8) -> bool {
        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for RoomId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RoomId({})", self.0)
    }
}

impl Serialize for RoomId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RoomId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        RoomId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A ticket id: 128 bits shown as 32 lowercase hex digits.
///
/// The high 64 bits are the room-local join sequence number (so a store can find the ticket's
/// slot without an index), the low 64 bits are random (so ids cannot be enumerated). Holding a
/// ticket id is not enough to obtain its admission token: that also takes the cookie secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TicketId(u128);

impl TicketId {
    /// Builds an id from its sequence number and random part.
    pub fn new(seq: u64, random: u64) -> Self {
        TicketId(((seq as u128) << 64) | random as u128)
    }

    /// Parses the 32-hex-digit form.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |reason| Error::InvalidId { kind: "ticket", reason };
        if s.len() != 32 {
            return Err(bad("must be 32 hex digits"));
        }
        // By hand, one pass: ids are parsed on every poll (path and cookie), and checking the
        // digits and then `from_str_radix` cost more than the rest of reading a cookie.
        let mut v = 0u128;
        for b in s.bytes() {
            let digit = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                _ => return Err(bad("must be lowercase hex")),
            };
            v = (v << 4) | u128::from(digit);
        }
        if (v >> 64) == 0 {
            return Err(bad("has no sequence number"));
        }
        Ok(TicketId(v))
    }

    /// The join sequence number within its room (1-based).
    pub fn seq(self) -> u64 {
        (self.0 >> 64) as u64
    }

    /// The random part.
    pub fn random(self) -> u64 {
        self.0 as u64
    }

    /// The raw 128-bit value.
    pub fn as_u128(self) -> u128 {
        self.0
    }

    /// The id as its 32 lowercase hex digits (what `Display` writes), without a formatter
    /// or an allocation: ids are written on every status poll (JSON body, store arguments).
    pub fn to_hex(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out[..16].copy_from_slice(&hex16((self.0 >> 64) as u64));
        out[16..].copy_from_slice(&hex16(self.0 as u64));
        out
    }
}

/// `x`'s 16 lowercase hex digits, all at once: each nibble spread to a byte of its own (the
/// first digit in the top byte), then turned to ASCII with no per-digit branch or lookup
/// (a table loop took ~165 instructions per id, twice per status poll).
fn hex16(x: u64) -> [u8; 16] {
    const LOW_HALVES: u128 = 0x0000_0000_FFFF_FFFF_0000_0000_FFFF_FFFF;
    const LOW_QUARTERS: u128 = 0x0000_FFFF_0000_FFFF_0000_FFFF_0000_FFFF;
    const LOW_BYTES: u128 = 0x00FF_00FF_00FF_00FF_00FF_00FF_00FF_00FF;
    const LOW_NIBBLES: u128 = 0x0F0F_0F0F_0F0F_0F0F_0F0F_0F0F_0F0F_0F0F;
    const ONES: u128 = 0x0101_0101_0101_0101_0101_0101_0101_0101;
    let mut n = u128::from(x);
    n = (n << 32 | n) & LOW_HALVES;
    n = (n << 16 | n) & LOW_QUARTERS;
    n = (n << 8 | n) & LOW_BYTES;
    n = (n << 4 | n) & LOW_NIBBLES;
    // A byte is a letter when adding 6 carries into its bit 4; no byte exceeds 0x15, so no
    // sum carries into the next byte.
    let letters = ((n + 6 * ONES) >> 4) & ONES;
    (n + u128::from(b'0') * ONES + letters * u128::from(b'a' - b'0' - 10)).to_be_bytes()
}

impl FromStr for TicketId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl fmt::Display for TicketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // By hand: `{:032x}` goes through the padding machinery.
        f.write_str(std::str::from_utf8(&self.to_hex()).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for TicketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TicketId({:032x})", self.0)
    }
}

impl Serialize for TicketId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TicketId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        TicketId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Who holds a ticket: a user id from a user JWT, or an anonymous session id the gateway made.
///
/// One owner has at most one live ticket per room (invariant 4). Stores keep only the
/// [`OwnerHash`], never the raw id.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct UserKey(Box<str>);

impl UserKey {
    /// Longest accepted user key, in bytes.
    pub const MAX_LEN: usize = 256;

    /// Parses a user key: 1..=256 bytes of printable ASCII or UTF-8 without control characters.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |reason| Error::InvalidId { kind: "user", reason };
        if s.is_empty() {
            return Err(bad("must not be empty"));
        }
        if s.len() > Self::MAX_LEN {
            return Err(bad("must be at most 256 bytes"));
        }
        if s.chars().any(char::is_control) {
            return Err(bad("must not contain control characters"));
        }
        Ok(UserKey(s.into()))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The digest stores keep instead of the key.
    pub fn owner_hash(&self) -> OwnerHash {
        OwnerHash::of(&self.0)
    }
}

impl fmt::Debug for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // User ids are personal data: keep them out of logs.
        write!(f, "UserKey({})", self.owner_hash())
    }
}

/// The first 128 bits of SHA-256 of a [`UserKey`]: enough to never collide in practice, small
/// enough to keep a million tickets compact.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnerHash(pub [u8; 16]);

impl OwnerHash {
    /// Hashes a user key's text.
    pub fn of(key: &str) -> Self {
        let d = digest::digest(&digest::SHA256, key.as_bytes());
        let mut out = [0u8; 16];
        out.copy_from_slice(&d.as_ref()[..16]);
        OwnerHash(out)
    }

    /// Parses the 32-hex-digit form.
    pub fn parse_hex(s: &str) -> Option<Self> {
        if s.len() != 32 {
            return None;
        }
        let v = u128::from_str_radix(s, 16).ok()?;
        Some(OwnerHash(v.to_be_bytes()))
    }
}

impl fmt::Display for OwnerHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", u128::from_be_bytes(self.0))
    }
}

impl fmt::Debug for OwnerHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OwnerHash({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_digits_are_the_formatters() {
        let mut x = 0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834_u128;
        let edges = [0, 1, u128::MAX, u128::MAX >> 4, 0xa << 124, 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210];
        for v in edges.into_iter().chain((0..10_000).map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        })) {
            assert_eq!(TicketId(v).to_hex(), format!("{v:032x}").as_bytes(), "{v:x}");
        }
    }

    #[test]
    fn room_ids() {
        for good in ["summer-2026", &"a".repeat(64)] {
            assert!(RoomId::parse(good).is_ok() && RoomId::is_valid(good.as_bytes()), "{good:?} refused");
        }
        for bad in ["", "A", "a_b", "a b", "a{b}", "é", &"a".repeat(65)] {
            assert!(RoomId::parse(bad).is_err(), "{bad:?} accepted");
            assert!(!RoomId::is_valid(bad.as_bytes()), "{bad:?} valid");
        }
    }

    #[test]
    fn ticket_ids_round_trip() {
        let t = TicketId::new(42, 0xdead_beef);
        let s = t.to_string();
        assert_eq!(s.len(), 32);
        assert_eq!(TicketId::parse(&s).unwrap(), t);
        assert_eq!(t.seq(), 42);
        assert!(TicketId::parse(&s.to_uppercase()).is_err());
        assert!(TicketId::parse("00000000000000000000000000000001").is_err());
        assert!(TicketId::parse("zz").is_err());
        assert!(TicketId::parse("0000000000000001000000000000000g").is_err());
        assert!(TicketId::parse("000000000000000100000000000000é").is_err(), "32 bytes, not hex");
        assert!(TicketId::parse("+000000000000001000000000000000f").is_err());
        for (seq, rand) in
            [(0, 0), (1, 2), (u64::MAX, u64::MAX), (0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210)]
        {
            let t = TicketId::new(seq, rand);
            assert_eq!(t.to_string(), format!("{:032x}", t.0), "the hand-written hex matches std's");
            if seq > 0 {
                assert_eq!(TicketId::parse(&t.to_string()).unwrap(), t, "and parses back");
            }
        }
    }

    #[test]
    fn owner_hash_is_stable_hex() {
        let h = UserKey::parse("alice").unwrap().owner_hash();
        assert_eq!(OwnerHash::parse_hex(&h.to_string()), Some(h));
        assert!(UserKey::parse("a\nb").is_err());
        assert!(UserKey::parse(&"x".repeat(257)).is_err());
    }
}
