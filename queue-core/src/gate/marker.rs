//! Secrets of the gate: the offsets clients see and the replay marker the backend sees.
//!
//! An offset handed to a client is `{gate}.{entry id}.{tag}`: the entry id is the log's own
//! offset, the tag an HMAC of both, so offsets cannot be enumerated to read other people's
//! replayed responses (entry ids are only a timestamp and a counter).
//!
//! A replayed request carries `X-Gate-Replay: v1;{offset};{expires};{sig}`, `sig` an HMAC over
//! the offset, expiry, method and path. Every gateway (and a backend given the same secret)
//! can check it; a client cannot make one, and a captured one is only good for its own
//! method and path until it expires.

use aws_lc_rs::{constant_time, hmac};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::{EntryId, GateId};

/// The replay marker's header.
pub const REPLAY_HEADER: &str = "x-gate-replay";

/// The gate's HMAC key (share it between gateways, and with the backend to let it check
/// markers).
#[derive(Clone)]
pub struct GateSecret(hmac::Key);

impl std::fmt::Debug for GateSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GateSecret(<redacted>)")
    }
}

impl GateSecret {
    /// A key from secret bytes (at least 32 of them in production).
    pub fn new(secret: &[u8]) -> Self {
        GateSecret(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    fn mac(&self, parts: &[&str]) -> String {
        let mut ctx = hmac::Context::with_key(&self.0);
        for p in parts {
            ctx.update(p.as_bytes());
            ctx.update(b"\x1f");
        }
        URL_SAFE_NO_PAD.encode(&ctx.sign().as_ref()[..18])
    }

    /// The offset a client sees for `id` in `gate`.
    pub fn offset(&self, gate: &GateId, id: EntryId) -> String {
        let id = id.to_string();
        let tag = self.mac(&["offset", gate.as_str(), &id]);
        format!("{gate}.{id}.{tag}")
    }

    /// Parses and authenticates a client's offset.
    pub fn parse_offset(&self, offset: &str) -> Option<(GateId, EntryId)> {
        if offset.len() > 160 {
            return None;
        }
        let mut it = offset.split('.');
        let (gate, id, tag) = (it.next()?, it.next()?, it.next()?);
        if it.next().is_some() {
            return None;
        }
        let gate = GateId::parse(gate).ok()?;
        let id = EntryId::parse(id)?;
        let expected = self.mac(&["offset", gate.as_str(), &id.to_string()]);
        constant_time::verify_slices_are_equal(expected.as_bytes(), tag.as_bytes()).ok()?;
        Some((gate, id))
    }

    /// The replay marker for a replay of `offset` as `method path`, valid until `expires`
    /// (Unix seconds).
    pub fn marker(&self, offset: &str, method: &str, path: &str, expires: u64) -> String {
        let exp = expires.to_string();
        let sig = self.mac(&["replay", offset, &exp, method, path]);
        format!("v1;{offset};{exp};{sig}")
    }

    /// Checks a replay marker for `method path` at `now` (Unix seconds); returns the offset.
    pub fn verify_marker(
        &self,
        value: &str,
        method: &str,
        path: &str,
        now: u64,
    ) -> Result<String, &'static str> {
        let mut it = value.split(';');
        let (Some("v1"), Some(offset), Some(exp), Some(sig), None) =
            (it.next(), it.next(), it.next(), it.next(), it.next())
        else {
            return Err("malformed replay marker");
        };
        let expected = self.mac(&["replay", offset, exp, method, path]);
        constant_time::verify_slices_are_equal(expected.as_bytes(), sig.as_bytes())
            .map_err(|_| "replay marker signature does not match")?;
        let exp: u64 = exp.parse().map_err(|_| "malformed replay marker")?;
        if exp < now {
            return Err("replay marker expired");
        }
        Ok(offset.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_authenticated() {
        let k = GateSecret::new(&[7; 32]);
        let gate = GateId::parse("booking").unwrap();
        let id = EntryId { ms: 1_732_250_000_000, seq: 3 };
        let off = k.offset(&gate, id);
        assert!(off.starts_with("booking.1732250000000-3."));
        assert_eq!(k.parse_offset(&off), Some((gate.clone(), id)));
        let next = off.replace("-3.", "-4.");
        assert_eq!(k.parse_offset(&next), None, "a neighbour's offset cannot be derived");
        assert_eq!(GateSecret::new(&[8; 32]).parse_offset(&off), None);
        assert_eq!(k.parse_offset("booking.1-0"), None);
    }

    #[test]
    fn markers_bind_method_path_and_expiry() {
        let k = GateSecret::new(&[7; 32]);
        let m = k.marker("g.1-0.x", "POST", "/api/v1/reservations", 100);
        assert_eq!(k.verify_marker(&m, "POST", "/api/v1/reservations", 99).unwrap(), "g.1-0.x");
        assert!(k.verify_marker(&m, "POST", "/api/v1/reservations", 101).is_err());
        assert!(k.verify_marker(&m, "DELETE", "/api/v1/reservations", 99).is_err());
        assert!(k.verify_marker(&m, "POST", "/api/v1/other", 99).is_err());
        assert!(k.verify_marker("v1;g.1-0.x;100;forged", "POST", "/api/v1/reservations", 99).is_err());
        assert!(k.verify_marker("garbage", "POST", "/", 0).is_err());
        assert!(GateSecret::new(&[1; 32]).verify_marker(&m, "POST", "/api/v1/reservations", 99).is_err());
    }
}
