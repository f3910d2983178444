//! The gateway's configuration: one serde struct, from a TOML file (`WR_CONFIG`) and `WR_*`
//! environment variables (env wins). Secrets are redacted from `Debug`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use queue_core::gate::{GateConfig, GateId};
use queue_core::{RoomConfig, RoomId};
use serde::Deserialize;

use crate::error::ConfigError;

/// Everything the gateway needs to start.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Address to listen on (`WR_LISTEN`).
    pub listen: SocketAddr,
    /// Backend base URL, `http://host:port[/prefix]` (`WR_UPSTREAM`): required. (The
    /// all-in-one `waiting-room` binary sets it to its in-process backend.)
    pub upstream: Option<String>,
    /// Redis URL, or several comma-separated for a Cluster (`WR_REDIS_URL`); absent: memory.
    pub redis_url: Option<String>,
    /// Bearer token of the admin API (`WR_ADMIN_TOKEN`); absent: the admin API refuses all.
    pub admin_token: Option<String>,
    /// Ed25519 private key, PKCS#8 PEM or base64 seed (`WR_SIGNING_KEY`); absent: generated.
    pub signing_key: Option<String>,
    /// Earlier signing keys whose tokens must keep verifying until they expire (rotation).
    pub previous_signing_keys: Vec<String>,
    /// `iss` of admission tokens (`WR_ISSUER`).
    pub issuer: String,
    /// HS256 secret of user JWTs (`WR_USER_JWT_SECRET`); binds tickets to users.
    pub user_jwt_secret: Option<String>,
    /// Trust `X-Forwarded-For`/`-Proto` from the peer (set when behind a load balancer).
    pub trust_forwarded: bool,
    /// Request and connection limits.
    pub limits: Limits,
    /// Rate limits on the waiting-room API.
    pub rate_limits: RateLimits,
    /// Rooms declared at start (also changeable through the admin API).
    pub rooms: BTreeMap<String, toml::Value>,
    /// Overload gates declared at start (also changeable through the admin API).
    pub gates: BTreeMap<String, toml::Value>,
    /// HMAC key of gate offsets and replay markers (`WR_GATE_SECRET`, ≥ 32 bytes); absent:
    /// derived from the signing key, so gateways sharing that key agree. Give the same value
    /// to the backend to let it check replay markers.
    pub gate_secret: Option<String>,
    /// How logged requests are replayed.
    pub replay: Replay,
}

/// Replay of gate logs.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Replay {
    /// An entry left this long by its consumer (a dead gateway) is claimed by another, ms.
    /// Keep it above `limits.upstream_timeout_ms`, or slow replays are delivered twice.
    pub claim_idle_ms: u64,
    /// Largest backend answer kept for a poll, bytes (larger ones are replaced by an error).
    pub max_response_bytes: usize,
}

impl Default for Replay {
    fn default() -> Self {
        Replay { claim_idle_ms: 40_000, max_response_bytes: 1024 * 1024 }
    }
}

/// Sizes and timeouts.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request header block, bytes.
    pub max_header_bytes: usize,
    /// Largest request body, bytes (proxied bodies included).
    pub max_body_bytes: usize,
    /// A new connection must send its first request's headers within this time, ms (408
    /// otherwise).
    pub header_read_timeout_ms: u64,
    /// A keep-alive connection may sit idle between requests (and take to send the next
    /// request's headers) this long, ms, then it is closed. Longer than clients' own idle
    /// timeouts would be best; closing sooner races clients that reuse the connection as it
    /// closes (their next POST fails).
    pub keep_alive_idle_ms: u64,
    /// A whole request (not SSE streams) must be answered within this time, ms.
    pub request_timeout_ms: u64,
    /// Upstream answer timeout, ms (504 after it).
    pub upstream_timeout_ms: u64,
    /// On shutdown, in-flight requests get this long to finish, ms.
    pub shutdown_grace_ms: u64,
    /// Most concurrent SSE streams per gateway.
    pub max_sse_streams: usize,
    /// Threads serving connections, each with its own single-threaded runtime and upstream
    /// pool, so a request, its upstream call and the upstream connection stay on one thread
    /// (0: one per CPU).
    pub workers: usize,
    /// HTTP/1.1 requests of the common shape are read, checked and relayed by the gateway's
    /// own loop (`WR_FAST_LANE`, default true). Off: every connection is served by hyper, the
    /// most conservative front door, at the cost measured in BENCHMARKS.md ("Fast lane").
    /// Both run the same pipeline (`crate::pipeline`): only the codec differs.
    pub fast_lane: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 16 * 1024,
            max_body_bytes: 1024 * 1024,
            header_read_timeout_ms: 10_000,
            keep_alive_idle_ms: 75_000,
            request_timeout_ms: 30_000,
            upstream_timeout_ms: 30_000,
            shutdown_grace_ms: 10_000,
            max_sse_streams: 100_000,
            workers: 0,
            fast_lane: true,
        }
    }
}

impl Limits {
    /// Connection-serving threads: `workers`, or one per CPU when it is 0.
    pub fn worker_threads(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        }
    }
}

/// Per-key token buckets: `per_second` sustained with bursts of `burst`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    /// Joins per client IP.
    pub join_per_ip: Rate,
    /// Status polls per client IP.
    pub status_per_ip: Rate,
    /// Joins and polls per authenticated user.
    pub per_user: Rate,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            join_per_ip: Rate { per_second: 5, burst: 20 },
            status_per_ip: Rate { per_second: 50, burst: 200 },
            per_user: Rate { per_second: 20, burst: 50 },
        }
    }
}

/// A token bucket; `per_second = 0` turns the limit off.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Sustained requests per second.
    pub per_second: u32,
    /// Burst size.
    pub burst: u32,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            upstream: None,
            redis_url: None,
            admin_token: None,
            signing_key: None,
            previous_signing_keys: Vec::new(),
            issuer: "waiting-room".into(),
            user_jwt_secret: None,
            trust_forwarded: false,
            limits: Limits::default(),
            rate_limits: RateLimits::default(),
            rooms: BTreeMap::new(),
            gates: BTreeMap::new(),
            gate_secret: None,
            replay: Replay::default(),
        }
    }
}

impl std::fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |o: &Option<String>| o.as_ref().map(|_| "<redacted>");
        f.debug_struct("GatewayConfig")
            .field("listen", &self.listen)
            .field("upstream", &self.upstream)
            .field("redis_url", &self.redis_url.as_ref().map(|u| redact_url(u)))
            .field("admin_token", &redact(&self.admin_token))
            .field("signing_key", &redact(&self.signing_key))
            .field("previous_signing_keys", &self.previous_signing_keys.len())
            .field("issuer", &self.issuer)
            .field("user_jwt_secret", &redact(&self.user_jwt_secret))
            .field("trust_forwarded", &self.trust_forwarded)
            .field("limits", &self.limits)
            .field("rate_limits", &self.rate_limits)
            .field("rooms", &self.rooms.keys().collect::<Vec<_>>())
            .field("gates", &self.gates.keys().collect::<Vec<_>>())
            .field("gate_secret", &redact(&self.gate_secret))
            .field("replay", &self.replay)
            .finish()
    }
}

/// `redis://user:secret@host` → `redis://***@host`.
fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|u| match (u.find("://"), u.rfind('@')) {
            (Some(s), Some(at)) if at > s => format!("{}***{}", &u[..s + 3], &u[at..]),
            _ => u.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Fields whose values a config error must not repeat.
const SECRET_FIELDS: [&str; 6] =
    ["admin_token", "signing_key", "previous_signing_keys", "user_jwt_secret", "gate_secret", "redis_url"];

impl GatewayConfig {
    /// Loads the file named by `WR_CONFIG` (if any), then applies `WR_*` variables.
    pub fn load() -> Result<Self, ConfigError> {
        let vars: BTreeMap<String, String> = std::env::vars().filter(|(k, _)| k.starts_with("WR_")).collect();
        Self::load_from(&vars)
    }

    /// Like [`GatewayConfig::load`], from the given variables (tests).
    pub fn load_from(vars: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let mut cfg = match vars.get("WR_CONFIG") {
            Some(path) => Self::from_file(Path::new(path))?,
            None => GatewayConfig::default(),
        };
        cfg.apply_env(vars)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses a TOML file (no env, no validation).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new("WR_CONFIG", format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml(&text)
    }

    /// Parses TOML text. A value of the wrong type or an unknown field is named by its path
    /// (`limits.workers`); bad syntax has no field. Either way the error says where in the
    /// file, without quoting it, and a secret field's value is not repeated.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        queue_core::config::parse_file(text, &SECRET_FIELDS).map_err(|e| ConfigError::new(e.field, e.reason))
    }

    fn apply_env(&mut self, vars: &BTreeMap<String, String>) -> Result<(), ConfigError> {
        let get = |k: &str| vars.get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        if let Some(v) = get("WR_LISTEN") {
            self.listen =
                v.parse().map_err(|_| ConfigError::new("WR_LISTEN", format!("not an address: {v:?}")))?;
        }
        if let Some(v) = get("WR_UPSTREAM") {
            self.upstream = Some(v);
        }
        if let Some(v) = get("WR_REDIS_URL") {
            self.redis_url = Some(v);
        }
        if let Some(v) = get("WR_ADMIN_TOKEN") {
            self.admin_token = Some(v);
        }
        if let Some(v) = vars.get("WR_SIGNING_KEY").filter(|v| !v.trim().is_empty()) {
            self.signing_key = Some(v.clone());
        }
        if let Some(v) = get("WR_ISSUER") {
            self.issuer = v;
        }
        if let Some(v) = get("WR_USER_JWT_SECRET") {
            self.user_jwt_secret = Some(v);
        }
        if let Some(v) = get("WR_GATE_SECRET") {
            self.gate_secret = Some(v);
        }
        if let Some(v) = get("WR_FAST_LANE") {
            self.limits.fast_lane = match v.to_ascii_lowercase().as_str() {
                "true" | "1" | "on" | "yes" => true,
                "false" | "0" | "off" | "no" => false,
                _ => return Err(ConfigError::new("WR_FAST_LANE", format!("not a boolean: {v:?}"))),
            };
        }
        Ok(())
    }

    /// Checks everything that can be checked without connecting anywhere.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(t) = &self.admin_token
            && t.len() < 16
        {
            return Err(ConfigError::new("admin_token", "must be at least 16 characters"));
        }
        if let Some(k) = &self.signing_key {
            queue_core::token::SigningKey::parse(k)
                .map_err(|e| ConfigError::new("signing_key", e.to_string()))?;
        }
        for (i, k) in self.previous_signing_keys.iter().enumerate() {
            queue_core::token::SigningKey::parse(k)
                .map_err(|e| ConfigError::new(format!("previous_signing_keys[{i}]"), e.to_string()))?;
        }
        if self.issuer.is_empty() || self.issuer.len() > 256 {
            return Err(ConfigError::new("issuer", "must be 1..=256 characters"));
        }
        if let Some(s) = &self.user_jwt_secret
            && s.len() < 32
        {
            return Err(ConfigError::new("user_jwt_secret", "must be at least 32 bytes"));
        }
        if let Some(s) = &self.gate_secret
            && s.len() < 32
        {
            return Err(ConfigError::new("gate_secret", "must be at least 32 bytes"));
        }
        self.validate_limits()?;
        self.rooms()?;
        self.gates()?;
        // Last: the other fields' errors are worth seeing first when a file is checked.
        let Some(u) = &self.upstream else {
            return Err(ConfigError::new(
                "upstream",
                "required: the backend behind the gateway, http://host[:port] (WR_UPSTREAM); \
                 `cargo run --release` runs the whole system with its own backend instead",
            ));
        };
        let uri: hyper::Uri =
            u.parse().map_err(|_| ConfigError::new("upstream", format!("not a URL: {u:?}")))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(ConfigError::new("upstream", "must be http://host[:port]"));
        }
        Ok(())
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let check = |field: &str, v: u64, lo: u64, hi: u64| {
            if v < lo || v > hi {
                return Err(ConfigError::new(
                    format!("limits.{field}"),
                    format!("must be within {lo}..={hi}"),
                ));
            }
            Ok(())
        };
        check("max_header_bytes", l.max_header_bytes as u64, 1024, 1 << 20)?;
        check("max_body_bytes", l.max_body_bytes as u64, 1024, 256 << 20)?;
        check("header_read_timeout_ms", l.header_read_timeout_ms, 100, 600_000)?;
        check("keep_alive_idle_ms", l.keep_alive_idle_ms, 100, 600_000)?;
        check("request_timeout_ms", l.request_timeout_ms, 100, 3_600_000)?;
        check("upstream_timeout_ms", l.upstream_timeout_ms, 100, 3_600_000)?;
        check("shutdown_grace_ms", l.shutdown_grace_ms, 0, 600_000)?;
        check("max_sse_streams", l.max_sse_streams as u64, 1, 10_000_000)?;
        check("workers", l.workers as u64, 0, 1024)?;
        let r = &self.replay;
        if r.claim_idle_ms < 100 || r.claim_idle_ms > 3_600_000 {
            return Err(ConfigError::new("replay.claim_idle_ms", "must be within 100..=3600000"));
        }
        if r.max_response_bytes < 1024 || r.max_response_bytes > 64 << 20 {
            return Err(ConfigError::new("replay.max_response_bytes", "must be within 1024..=67108864"));
        }
        for (name, r) in [
            ("join_per_ip", self.rate_limits.join_per_ip),
            ("status_per_ip", self.rate_limits.status_per_ip),
            ("per_user", self.rate_limits.per_user),
        ] {
            if r.per_second > 0 && r.burst == 0 {
                return Err(ConfigError::new(format!("rate_limits.{name}.burst"), "must be ≥ 1"));
            }
        }
        Ok(())
    }

    /// The gates declared in the file, parsed and validated.
    pub fn gates(&self) -> Result<Vec<(GateId, GateConfig)>, ConfigError> {
        self.gates
            .iter()
            .map(|(id, value)| {
                let gate =
                    GateId::parse(id).map_err(|e| ConfigError::new(format!("gates.{id}"), e.to_string()))?;
                let json = serde_json::to_value(value)
                    .map_err(|e| ConfigError::new(format!("gates.{id}"), e.to_string()))?;
                let cfg = GateConfig::from_value(json).map_err(|e| match e {
                    queue_core::Error::InvalidConfig { field, reason } => {
                        ConfigError::new(format!("gates.{id}.{field}"), reason)
                    }
                    other => ConfigError::new(format!("gates.{id}"), other.to_string()),
                })?;
                Ok((gate, cfg))
            })
            .collect()
    }

    /// The rooms declared in the file, parsed and validated.
    pub fn rooms(&self) -> Result<Vec<(RoomId, RoomConfig)>, ConfigError> {
        self.rooms
            .iter()
            .map(|(id, value)| {
                let room =
                    RoomId::parse(id).map_err(|e| ConfigError::new(format!("rooms.{id}"), e.to_string()))?;
                let json = serde_json::to_value(value)
                    .map_err(|e| ConfigError::new(format!("rooms.{id}"), e.to_string()))?;
                let cfg = RoomConfig::from_value(json).map_err(|e| match e {
                    queue_core::Error::InvalidConfig { field, reason } => {
                        ConfigError::new(format!("rooms.{id}.{field}"), reason)
                    }
                    other => ConfigError::new(format!("rooms.{id}"), other.to_string()),
                })?;
                Ok((room, cfg))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_and_env() {
        let cfg = GatewayConfig::load_from(&vars(&[
            ("WR_LISTEN", "127.0.0.1:9999"),
            ("WR_UPSTREAM", "http://127.0.0.1:8081"),
            ("WR_ADMIN_TOKEN", "0123456789abcdef0123"),
        ]))
        .unwrap();
        assert_eq!(cfg.listen.port(), 9999);
        assert_eq!(cfg.upstream.as_deref(), Some("http://127.0.0.1:8081"));
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("0123456789abcdef0123"), "secrets must not appear in Debug");
    }

    #[test]
    fn bad_values_name_the_field() {
        let field = |pairs: &[(&str, &str)]| GatewayConfig::load_from(&vars(pairs)).unwrap_err().field;
        assert_eq!(field(&[("WR_LISTEN", "nope")]), "WR_LISTEN");
        assert_eq!(field(&[("WR_UPSTREAM", "ftp://x")]), "upstream");
        assert_eq!(field(&[]), "upstream", "a gateway fronts a backend someone names");
        assert_eq!(field(&[("WR_ADMIN_TOKEN", "short")]), "admin_token");
        assert_eq!(field(&[("WR_SIGNING_KEY", "garbage!")]), "signing_key");
        let file = |text: &str| GatewayConfig::from_toml(text).unwrap_err().field;
        assert_eq!(file("bogus = 1"), "bogus");
        assert_eq!(file("listen = \"nope\""), "listen");
        assert_eq!(file("[limits]\nworkers = \"two\"\n"), "limits.workers");
        assert_eq!(file("[limits]\nworker = 2\n"), "limits.worker");
        assert_eq!(
            file("[rate_limits]\njoin_per_ip = { per_second = -1, burst = 1 }\n"),
            "rate_limits.join_per_ip.per_second"
        );
        assert_eq!(file("listen = "), "(file)");
        let e = GatewayConfig::from_toml("issuer = \"x\"\nadmin_token = 1234567890123456789\n").unwrap_err();
        assert_eq!(e.field, "admin_token");
        assert!(e.reason.starts_with("line 2, column 15: ") && !e.reason.contains("123456"), "{}", e.reason);
        let e = GatewayConfig::from_toml("previous_signing_keys = [\"a\", 31415926535]\n").unwrap_err();
        assert_eq!(e.field, "previous_signing_keys[1]");
        assert!(!e.reason.contains("31415"), "{}", e.reason);
        let e = GatewayConfig::from_toml("gate_secret = hunter2hunter2\n").unwrap_err();
        assert!(!e.reason.contains("hunter2"), "{}", e.reason);
        let e = GatewayConfig::from_toml("[limits]\nworkers = \"two\"\n").unwrap_err();
        assert_eq!(e.reason, "line 2, column 11: invalid type: string \"two\", expected usize");
        let cfg = GatewayConfig::from_toml("[rooms.summer]\nbatch_size = 0\n").unwrap();
        assert_eq!(cfg.validate().unwrap_err().field, "rooms.summer.batch_size");
        let cfg = GatewayConfig::from_toml("[rooms.Summer]\n").unwrap();
        assert_eq!(cfg.validate().unwrap_err().field, "rooms.Summer");
        let cfg = GatewayConfig::from_toml("[limits]\nmax_body_bytes = 1\n").unwrap();
        assert_eq!(cfg.validate().unwrap_err().field, "limits.max_body_bytes");
    }

    #[test]
    fn rooms_from_toml() {
        let cfg = GatewayConfig::from_toml(
            "[rooms.summer]\nprotect = [\"/book/\"]\nbatch_size = 50\nopens_at = \"2030-01-01T00:00:00Z\"\n",
        )
        .unwrap();
        let rooms = cfg.rooms().unwrap();
        assert_eq!(rooms[0].0.as_str(), "summer");
        assert_eq!(rooms[0].1.batch_size, 50);
        assert!(rooms[0].1.opens_at.is_some());
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("redis://u:pw@h:1,redis://h2"), "redis://***@h:1,redis://h2");
    }
}
