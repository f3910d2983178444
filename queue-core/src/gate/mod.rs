//! The overload gate's durable log (DESIGN §5): requests that found no capacity are appended
//! to a per-gate log, replayed in offset order by consumers in any gateway, and their responses
//! kept under the offset for a while.
//!
//! The log is Kafka-shaped: an entry's id is its offset, consumers form one group, an entry is
//! acknowledged only after its response is stored, entries of a dead consumer are claimed by
//! the others after they sat idle, and an entry that failed delivery `max_attempts` times goes
//! to a dead-letter list with a stored error response.
//!
//! # Layout
//! - this module: `GateId`, `GateConfig`, entries and responses, the [`GateLog`] trait.
//! - [`memory`]: the in-process log (embedded default, one gateway).
//! - [`redis`]: Redis Streams (`XADD`, `XREADGROUP`, `XAUTOCLAIM`; scripts in `lua/gate_*.lua`).
//! - [`marker`]: opaque offsets for clients and the HMAC'd replay marker the backend can check.

use std::fmt;
#[cfg(feature = "engine")]
use std::time::Duration;

#[cfg(feature = "engine")]
use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::config::{check_path, range};
use crate::error::{Error, Result};

pub mod marker;
#[cfg(feature = "engine")]
pub mod memory;
#[cfg(feature = "engine")]
pub mod redis;

pub use self::marker::GateSecret;
#[cfg(feature = "engine")]
pub use self::memory::MemoryGateLog;
#[cfg(feature = "engine")]
pub use self::redis::RedisGateLog;

/// A gate id: `[a-z0-9-]{1,64}`, like a room id (it ends up in keys, URLs and labels).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GateId(Box<str>);

impl GateId {
    /// Parses a gate id.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |reason| Error::InvalidId { kind: "gate", reason };
        if s.is_empty() {
            return Err(bad("must not be empty"));
        }
        if s.len() > 64 {
            return Err(bad("must be at most 64 characters"));
        }
        if !s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return Err(bad("may only contain a-z, 0-9 and '-'"));
        }
        Ok(GateId(s.into()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for GateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GateId({})", self.0)
    }
}

/// One gate's settings: the body of `PUT /admin/v1/gates/{gate}`.
///
/// `max_inflight` is per gateway instance: each gateway holds its own permits (a shared
/// semaphore would put a Redis round trip on every gated request and leak permits when a
/// gateway dies), so with N gateways the backend sees at most N × `max_inflight`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GateConfig {
    /// Path prefixes this gate guards.
    pub prefixes: Vec<String>,
    /// Requests forwarded at once (per gateway); more and the gate is overloaded.
    pub max_inflight: u32,
    /// How long an arriving request waits (FIFO) for a permit before it is logged or refused.
    pub hold_ms: u64,
    /// Log and replay requests that found no permit (`202`); otherwise `503`.
    pub replayable: bool,
    /// Largest request body a replayable route accepts (`413` above it), bytes.
    pub max_body_bytes: u32,
    /// Most entries waiting in the log; past it, requests get `503`.
    pub max_logged: u32,
    /// Delivery attempts before an entry goes to the dead letters.
    pub max_attempts: u32,
    /// How long a replayed response stays fetchable, seconds.
    pub response_ttl_s: u32,
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            prefixes: Vec::new(),
            max_inflight: 64,
            hold_ms: 2_000,
            replayable: false,
            max_body_bytes: 64 * 1024,
            max_logged: 100_000,
            max_attempts: 3,
            response_ttl_s: 600,
        }
    }
}

const GATE_FIELDS: &[&str] = &[
    "prefixes",
    "max_inflight",
    "hold_ms",
    "replayable",
    "max_body_bytes",
    "max_logged",
    "max_attempts",
    "response_ttl_s",
];

impl GateConfig {
    /// Parses and validates a JSON body; errors name the field.
    pub fn from_json(body: &[u8]) -> Result<Self> {
        if body.len() > 64 * 1024 {
            return Err(Error::config("(body)", "larger than 64 KiB"));
        }
        let value: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| Error::config("(body)", format!("not valid JSON: {e}")))?;
        Self::from_value(value)
    }

    /// Like [`GateConfig::from_json`], from a parsed value (e.g. a TOML table).
    pub fn from_value(value: serde_json::Value) -> Result<Self> {
        let serde_json::Value::Object(map) = &value else {
            return Err(Error::config("(body)", "must be a JSON object"));
        };
        if let Some(unknown) = map.keys().find(|k| !GATE_FIELDS.contains(&k.as_str())) {
            return Err(Error::config(unknown, "unknown field"));
        }
        let cfg: GateConfig = serde_path_to_error::deserialize(value)
            .map_err(|e| Error::config(e.path().to_string(), e.into_inner()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every range and shape rule.
    pub fn validate(&self) -> Result<()> {
        if self.prefixes.is_empty() || self.prefixes.len() > 32 {
            return Err(Error::config("prefixes", "must name 1..=32 path prefixes"));
        }
        for (i, p) in self.prefixes.iter().enumerate() {
            check_path(p, 256).map_err(|r| Error::config(format!("prefixes[{i}]"), r))?;
        }
        range("max_inflight", self.max_inflight.into(), 1, 100_000)?;
        range("hold_ms", self.hold_ms, 0, 60_000)?;
        range("max_body_bytes", self.max_body_bytes.into(), 0, 8 << 20)?;
        range("max_logged", self.max_logged.into(), 1, 10_000_000)?;
        range("max_attempts", self.max_attempts.into(), 1, 100)?;
        range("response_ttl_s", self.response_ttl_s.into(), 1, 86_400)?;
        Ok(())
    }

    /// True when `path` falls under one of the prefixes.
    pub fn guards(&self, path: &str) -> bool {
        self.prefixes.iter().any(|p| path.starts_with(p.as_str()))
    }
}

/// An entry id: `ms-seq`, as Redis Streams number entries. Ordered like the log.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryId {
    /// Milliseconds (the log's clock).
    pub ms: u64,
    /// Sequence within the millisecond.
    pub seq: u64,
}

impl EntryId {
    /// Parses `ms-seq`.
    pub fn parse(s: &str) -> Option<Self> {
        let (ms, seq) = s.split_once('-')?;
        let digits = |t: &str| !t.is_empty() && t.len() <= 20 && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return None;
        }
        Some(EntryId { ms: ms.parse().ok()?, seq: seq.parse().ok()? })
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl fmt::Debug for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EntryId({self})")
    }
}

/// A request as logged: enough to replay it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedRequest {
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// The headers the backend needs (names lower-case).
    pub headers: Vec<(String, String)>,
    /// The body.
    #[serde(skip)]
    pub body: Bytes,
}

/// A response kept under its offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredResponse {
    /// HTTP status.
    pub status: u16,
    /// Response headers (end-to-end ones only).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
}

#[derive(Serialize, Deserialize)]
struct ResponseHead {
    status: u16,
    headers: Vec<(String, String)>,
}

impl StoredResponse {
    /// One blob: a JSON head line, `\n`, the raw body.
    pub fn encode(&self) -> Vec<u8> {
        let head = serde_json::to_vec(&ResponseHead { status: self.status, headers: self.headers.clone() })
            .expect("a response head serializes");
        let mut out = Vec::with_capacity(head.len() + 1 + self.body.len());
        out.extend_from_slice(&head);
        out.push(b'\n');
        out.extend_from_slice(&self.body);
        out
    }

    /// The inverse of [`StoredResponse::encode`].
    pub fn decode(blob: &[u8]) -> Result<Self> {
        let nl = blob
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| Error::Protocol("bad stored response".into()))?;
        let head: ResponseHead = serde_json::from_slice(&blob[..nl])
            .map_err(|e| Error::Protocol(format!("bad stored response head: {e}")))?;
        Ok(StoredResponse {
            status: head.status,
            headers: head.headers,
            body: Bytes::copy_from_slice(&blob[nl + 1..]),
        })
    }
}

/// An entry handed to a consumer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Its offset.
    pub id: EntryId,
    /// The request to replay.
    pub request: LoggedRequest,
}

/// What `append` returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The new entry's offset.
    pub id: EntryId,
    /// Entries ahead of it, itself included (1 = next).
    pub position: u64,
}

/// What a poll of an offset finds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Polled {
    /// Still in the log; `position` counts the entries still ahead, itself included.
    Pending {
        /// 1 = next to be replayed.
        position: u64,
    },
    /// Replayed (or dead-lettered): the stored response.
    Done(StoredResponse),
    /// Never logged here, or its response expired.
    Unknown,
}

/// A gate's log counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GateCounts {
    /// Entries ever appended.
    pub logged: u64,
    /// Entries still in the log (not yet answered).
    pub backlog: u64,
    /// Entries ever moved to the dead letters.
    pub dead_letters: u64,
}

/// A dead-lettered entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its offset.
    pub id: EntryId,
    /// Why its last delivery failed.
    pub reason: String,
    /// The request.
    pub request: LoggedRequest,
}

/// Most dead letters kept per gate (the counter keeps counting).
pub const MAX_DEAD_LETTERS: usize = 10_000;

/// The gate log. `tests/gate_conformance.rs` runs the same suite against each implementation.
#[cfg(feature = "engine")]
#[async_trait]
pub trait GateLog: Send + Sync + fmt::Debug + 'static {
    /// Creates or replaces a gate's config; true when the gate is new.
    async fn put_gate(&self, gate: &GateId, cfg: &GateConfig) -> Result<bool>;
    /// Every gate with its config.
    async fn gates(&self) -> Result<Vec<(GateId, GateConfig)>>;
    /// Deletes a gate's config; true when it existed. Refused (`GateBusy`) while its log still
    /// holds entries: they would never be answered. The deletion is remembered for
    /// [`crate::store::DELETION_MEMORY`].
    async fn delete_gate(&self, gate: &GateId) -> Result<bool>;
    /// Whether `gate` was deleted by [`GateLog::delete_gate`] within the last
    /// [`crate::store::DELETION_MEMORY`] and not created again since; a gate gone without
    /// it was lost with the store's data ([`crate::Store::was_deleted`]).
    async fn was_deleted(&self, gate: &GateId) -> Result<bool>;
    /// Appends a request; `Error::LogFull` when `max_logged` entries already wait.
    async fn append(&self, gate: &GateId, req: &LoggedRequest, max_logged: u32) -> Result<Appended>;
    /// The next entry nobody has been given yet, now owned by `consumer`.
    async fn next(&self, gate: &GateId, consumer: &str) -> Result<Option<Delivery>>;
    /// Takes over up to `count` entries that sat with another consumer for `min_idle`.
    async fn claim(
        &self,
        gate: &GateId,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Delivery>>;
    /// Starts a delivery attempt by `consumer` (resets the entry's idle time); returns the
    /// attempt number, or `None` when the entry is no longer this consumer's.
    async fn attempt(&self, gate: &GateId, consumer: &str, id: EntryId) -> Result<Option<u32>>;
    /// Stores the response under the offset (for `ttl`), then acknowledges and removes the
    /// entry; with `dead = Some(reason)` the entry goes to the dead letters. False when the
    /// entry was already finished (by another consumer).
    async fn finish(
        &self,
        gate: &GateId,
        id: EntryId,
        response: &StoredResponse,
        ttl: Duration,
        dead: Option<&str>,
    ) -> Result<bool>;
    /// Where an offset stands.
    async fn poll(&self, gate: &GateId, id: EntryId) -> Result<Polled>;
    /// The gate's counters.
    async fn counts(&self, gate: &GateId) -> Result<GateCounts>;
    /// The newest dead letters, newest first.
    async fn dead_letters(&self, gate: &GateId, limit: usize) -> Result<Vec<DeadLetter>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn design_example_parses_and_bad_fields_are_named() {
        let cfg = GateConfig::from_json(
            br#"{"prefixes": ["/api/v1/reservations"], "max_inflight": 64, "hold_ms": 2000, "replayable": true}"#,
        )
        .unwrap();
        assert!(cfg.replayable && cfg.guards("/api/v1/reservations/1"));
        let field = |b: &str| match GateConfig::from_json(b.as_bytes()) {
            Err(Error::InvalidConfig { field, .. }) => field,
            other => panic!("{b}: {other:?}"),
        };
        assert_eq!(field(r#"{"prefixes":[]}"#), "prefixes");
        assert_eq!(field(r#"{"prefixes":["x"]}"#), "prefixes[0]");
        assert_eq!(field(r#"{"prefixes":["/a"],"max_inflight":0}"#), "max_inflight");
        assert_eq!(field(r#"{"prefixes":["/a"],"hold_ms":-1}"#), "hold_ms");
        assert_eq!(field(r#"{"prefixes":["/a"],"replayable":"yes"}"#), "replayable");
        assert_eq!(field(r#"{"prefixes":["/a"],"nope":1}"#), "nope");
    }

    #[test]
    fn entry_ids_and_responses_round_trip() {
        let id = EntryId::parse("1732250000000-7").unwrap();
        assert_eq!(id.to_string(), "1732250000000-7");
        assert!(EntryId::parse("1-").is_none() && EntryId::parse("a-1").is_none());
        assert!(EntryId { ms: 1, seq: 9 } < EntryId { ms: 2, seq: 0 });
        let r = StoredResponse {
            status: 201,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Bytes::from_static(b"{\"a\":\n1}"),
        };
        assert_eq!(StoredResponse::decode(&r.encode()).unwrap(), r);
    }
}
