//! Room configuration: every setting of DESIGN §2, parsed and range-checked in one place;
//! and the binaries' TOML config files, parsed with errors that name the field.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{Error, Result};

/// How waiting tickets are ordered for admission.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum QueueMethod {
    /// Admission order equals join order.
    #[default]
    Fifo,
    /// Everyone who joined before `opens_at` is shuffled at open (with a recorded seed);
    /// later arrivals queue FIFO behind them.
    RandomAtOpen,
}

impl QueueMethod {
    /// The snake_case name used in JSON and in Redis.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueMethod::Fifo => "fifo",
            QueueMethod::RandomAtOpen => "random_at_open",
        }
    }
}

/// One room's settings. The JSON form is the body of `PUT /admin/v1/rooms/{room}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoomConfig {
    /// Backend path prefixes that need an admission token for this room.
    pub protect: Vec<String>,
    /// Where the waiting page sends an admitted user when no page was asked for.
    pub target: String,
    /// Most tickets admitted per tick.
    pub batch_size: u32,
    /// Length of a tick; tick `n` covers `[n·interval, (n+1)·interval)` on the store's clock.
    pub tick_interval_ms: u64,
    /// The first K arrivals that find the room open and nobody waiting are admitted at once.
    pub free_pass: u32,
    /// Cap on concurrently admitted sessions; 0 means no cap.
    pub max_active: u32,
    /// Lifetime of an admission, in seconds.
    pub session_ttl_s: u32,
    /// A waiting ticket unseen for this long is dropped, in seconds.
    pub idle_timeout_s: u32,
    /// `fifo` or `random_at_open`.
    pub queue_method: QueueMethod,
    /// When the room opens (RFC 3339); before it, joins queue but nobody is admitted.
    #[serde(with = "time::serde::rfc3339::option")]
    pub opens_at: Option<OffsetDateTime>,
    /// Emergency stop: joins still queue, nobody is admitted.
    pub paused: bool,
}

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig {
            protect: Vec::new(),
            target: "/".to_owned(),
            batch_size: 100,
            tick_interval_ms: 1_000,
            free_pass: 0,
            max_active: 0,
            session_ttl_s: 600,
            idle_timeout_s: 300,
            queue_method: QueueMethod::Fifo,
            opens_at: None,
            paused: false,
        }
    }
}

/// Limits on a room config; public so the HTTP layer can document them.
pub mod limits {
    /// Largest accepted JSON body for a room config.
    pub const MAX_BODY_BYTES: usize = 64 * 1024;
    /// Most protected prefixes per room.
    pub const MAX_PROTECT: usize = 32;
    /// Longest protected prefix.
    pub const MAX_PREFIX_LEN: usize = 256;
    /// Longest target path.
    pub const MAX_TARGET_LEN: usize = 2048;
    /// `batch_size` range.
    pub const BATCH: (u32, u32) = (1, 1_000_000);
    /// `tick_interval_ms` range.
    pub const TICK_MS: (u64, u64) = (100, 3_600_000);
    /// Largest `free_pass` and `max_active`.
    pub const MAX_COUNT: u32 = 100_000_000;
    /// `session_ttl_s` range (up to a week).
    pub const SESSION_TTL: (u32, u32) = (1, 604_800);
    /// `idle_timeout_s` range (up to a day).
    pub const IDLE: (u32, u32) = (1, 86_400);
}

const FIELDS: &[&str] = &[
    "protect",
    "target",
    "batch_size",
    "tick_interval_ms",
    "free_pass",
    "max_active",
    "session_ttl_s",
    "idle_timeout_s",
    "queue_method",
    "opens_at",
    "paused",
];

impl RoomConfig {
    /// Parses and validates a JSON body. Unknown fields, wrong types and out-of-range values
    /// are refused with an error naming the field; omitted fields take their defaults.
    pub fn from_json(body: &[u8]) -> Result<Self> {
        if body.len() > limits::MAX_BODY_BYTES {
            return Err(Error::config("(body)", "larger than 64 KiB"));
        }
        let value: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| Error::config("(body)", format!("not valid JSON: {e}")))?;
        Self::from_value(value)
    }

    /// Like [`RoomConfig::from_json`], from an already parsed value (e.g. a TOML table).
    pub fn from_value(value: serde_json::Value) -> Result<Self> {
        let serde_json::Value::Object(map) = &value else {
            return Err(Error::config("(body)", "must be a JSON object"));
        };
        if let Some(unknown) = map.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(Error::config(unknown, "unknown field"));
        }
        let cfg: RoomConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let field = e.path().to_string();
            Error::config(field, e.into_inner())
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every range and shape rule.
    pub fn validate(&self) -> Result<()> {
        use limits::*;
        if self.protect.len() > MAX_PROTECT {
            return Err(Error::config("protect", format!("at most {MAX_PROTECT} prefixes")));
        }
        for (i, p) in self.protect.iter().enumerate() {
            check_path(p, MAX_PREFIX_LEN).map_err(|r| Error::config(format!("protect[{i}]"), r))?;
        }
        check_path(&self.target, MAX_TARGET_LEN).map_err(|r| Error::config("target", r))?;
        range("batch_size", self.batch_size.into(), BATCH.0.into(), BATCH.1.into())?;
        range("tick_interval_ms", self.tick_interval_ms, TICK_MS.0, TICK_MS.1)?;
        range("free_pass", self.free_pass.into(), 0, MAX_COUNT.into())?;
        range("max_active", self.max_active.into(), 0, MAX_COUNT.into())?;
        let (lo, hi) = SESSION_TTL;
        range("session_ttl_s", self.session_ttl_s.into(), lo.into(), hi.into())?;
        range("idle_timeout_s", self.idle_timeout_s.into(), IDLE.0.into(), IDLE.1.into())?;
        if let Some(t) = self.opens_at
            && !(2000..=9999).contains(&t.year())
        {
            return Err(Error::config("opens_at", "year must be within 2000..=9999"));
        }
        Ok(())
    }

    /// `opens_at` in Unix milliseconds (0 when unset).
    pub fn opens_at_ms(&self) -> u64 {
        self.opens_at.map(|t| (t.unix_timestamp_nanos() / 1_000_000).max(0) as u64).unwrap_or(0)
    }

    /// Sets `opens_at` from Unix milliseconds (0 clears it).
    pub fn set_opens_at_ms(&mut self, ms: u64) {
        self.opens_at = (ms > 0).then(|| {
            OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        });
    }

    /// True when `path` falls under one of the protected prefixes.
    pub fn protects(&self, path: &str) -> bool {
        self.protect.iter().any(|p| path.starts_with(p.as_str()))
    }
}

/// A refused config file: the offending field (its path, `limits.workers`; `(file)` for bad
/// syntax) and why.
#[derive(Debug)]
pub struct FileError {
    pub field: String,
    pub reason: String,
}

/// Parses a binary's TOML config file. A value of the wrong type or an unknown field is named
/// by its path; bad syntax has no field. The reason says where in the file (line and column)
/// and what, never quoting the file (toml's own message repeats the line, which may hold a
/// secret); for a field under one of `secret_fields` not even the parser's message, which may
/// repeat the value.
pub fn parse_file<T: serde::de::DeserializeOwned>(
    text: &str,
    secret_fields: &[&str],
) -> std::result::Result<T, FileError> {
    let reason = |e: &toml::de::Error, secret: bool| {
        let what = if secret {
            "a value of the wrong type (not shown: the field holds a secret)"
        } else {
            e.message()
        };
        match e.span().map(|s| line_column(text, s.start)) {
            Some((line, column)) => format!("line {line}, column {column}: {what}"),
            None => what.to_string(),
        }
    };
    let de = toml::Deserializer::parse(text)
        .map_err(|e| FileError { field: "(file)".into(), reason: reason(&e, false) })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = match e.path().to_string() {
            root if root == "." => "(file)".to_string(),
            path => path,
        };
        // `keys[1]` is as secret as `keys`.
        let secret = secret_fields.contains(&field.split(['.', '[']).next().unwrap_or_default());
        FileError { reason: reason(e.inner(), secret), field }
    })
}

/// Line and column (1-based, the column in characters) of byte offset `at` in `text`.
fn line_column(text: &str, at: usize) -> (usize, usize) {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (before.matches('\n').count() + 1, before[line_start..].chars().count() + 1)
}

pub(crate) fn range(field: &str, v: u64, lo: u64, hi: u64) -> Result<()> {
    if v < lo || v > hi {
        return Err(Error::config(field, format!("must be within {lo}..={hi}, got {v}")));
    }
    Ok(())
}

pub(crate) fn check_path(p: &str, max: usize) -> std::result::Result<(), String> {
    if !p.starts_with('/') {
        return Err("must start with '/'".into());
    }
    if p.len() > max {
        return Err(format!("must be at most {max} bytes"));
    }
    if p.chars().any(|c| c.is_control() || c.is_whitespace() || c == '?' || c == '#') {
        return Err("must not contain whitespace, control characters, '?' or '#'".into());
    }
    if p.split('/').any(|seg| seg == ".." || seg == ".") || p.contains('%') || p.contains('\\') {
        return Err("must be a normalized path (no '.', '..', '%' or '\\')".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_field(body: &str) -> String {
        match RoomConfig::from_json(body.as_bytes()) {
            Err(Error::InvalidConfig { field, .. }) => field,
            other => panic!("expected a config error for {body}, got {other:?}"),
        }
    }

    #[test]
    fn design_example_parses() {
        let cfg = RoomConfig::from_json(
            br#"{"protect": ["/api/v1/reservations", "/book/"], "target": "/book/",
             "batch_size": 3000, "tick_interval_ms": 10000, "free_pass": 1000, "max_active": 0,
             "session_ttl_s": 600, "idle_timeout_s": 300, "queue_method": "fifo",
             "opens_at": null, "paused": false}"#,
        )
        .unwrap();
        assert_eq!(cfg.batch_size, 3000);
        assert!(cfg.protects("/book/seat/1"));
        assert!(!cfg.protects("/books"));
        let back: serde_json::Value = serde_json::to_value(&cfg).unwrap();
        assert_eq!(RoomConfig::from_value(back).unwrap(), cfg);
    }

    #[test]
    fn omitted_fields_take_defaults() {
        assert_eq!(RoomConfig::from_json(b"{}").unwrap(), RoomConfig::default());
    }

    #[test]
    fn opens_at_round_trips_in_ms() {
        let cfg = RoomConfig::from_json(br#"{"opens_at":"2026-12-01T10:00:00Z"}"#).unwrap();
        let mut other = RoomConfig::default();
        other.set_opens_at_ms(cfg.opens_at_ms());
        assert_eq!(other.opens_at, cfg.opens_at);
        assert_eq!(cfg.opens_at_ms(), 1_796_119_200_000);
    }

    #[test]
    fn bad_input_names_the_field() {
        assert_eq!(err_field(r#"{"batch_size":0}"#), "batch_size");
        assert_eq!(err_field(r#"{"batch_size":-1}"#), "batch_size");
        assert_eq!(err_field(r#"{"batch_size":"many"}"#), "batch_size");
        assert_eq!(err_field(r#"{"tick_interval_ms":99}"#), "tick_interval_ms");
        assert_eq!(err_field(r#"{"tick_interval_ms":3600001}"#), "tick_interval_ms");
        assert_eq!(err_field(r#"{"session_ttl_s":0}"#), "session_ttl_s");
        assert_eq!(err_field(r#"{"idle_timeout_s":0}"#), "idle_timeout_s");
        assert_eq!(err_field(r#"{"queue_method":"lifo"}"#), "queue_method");
        assert_eq!(err_field(r#"{"opens_at":"tomorrow"}"#), "opens_at");
        assert_eq!(err_field(r#"{"bogus":1}"#), "bogus");
        assert_eq!(err_field(r#"{"protect":["book"]}"#), "protect[0]");
        assert_eq!(err_field(r#"{"protect":["/a/../b"]}"#), "protect[0]");
        assert_eq!(err_field(r#"{"target":"/a b"}"#), "target");
        assert_eq!(err_field("[]"), "(body)");
        assert_eq!(err_field("{"), "(body)");
        let many: Vec<String> = (0..33).map(|i| format!("/p{i}")).collect();
        let body = serde_json::json!({ "protect": many }).to_string();
        assert_eq!(err_field(&body), "protect");
        let huge = format!(r#"{{"target":"/{}"}}"#, "a".repeat(70_000));
        assert_eq!(err_field(&huge), "(body)");
    }

    #[test]
    fn file_errors_say_where_not_what_a_secret_was() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct File {
            port: Option<u16>,
            keys: Option<Vec<String>>,
        }
        let err = |text: &str| {
            let e = super::parse_file::<File>(text, &["keys"]).unwrap_err();
            (e.field, e.reason)
        };
        assert_eq!(
            err("\nport = \"x\""),
            ("port".into(), "line 2, column 8: invalid type: string \"x\", expected u16".into())
        );
        let (field, reason) = err("keys = [\"a\", 31415926]");
        assert_eq!(field, "keys[1]");
        assert!(reason.starts_with("line 1, column 14: ") && !reason.contains("31415"), "{reason}");
        assert_eq!(err("other = 1").0, "other");
        let (field, reason) = err("port = \nkeys = hunter2");
        assert_eq!(field, "(file)");
        assert!(reason.starts_with("line 1, column 8: ") && !reason.contains("hunter2"), "{reason}");
        assert_eq!(super::parse_file::<File>("port = 8", &[]).unwrap().port, Some(8));
    }

    #[test]
    fn offsets_become_lines_and_columns() {
        let text = "a = 1\nbé = \"x\"\n";
        assert_eq!(super::line_column(text, 0), (1, 1));
        assert_eq!(super::line_column(text, 4), (1, 5));
        assert_eq!(super::line_column(text, 6), (2, 1));
        assert_eq!(super::line_column(text, 11), (2, 5), "columns count characters, not bytes");
        assert_eq!(super::line_column(text, 1000), (3, 1));
        assert_eq!(super::line_column(text, 8), (2, 2), "inside a character: that character");
    }
}
