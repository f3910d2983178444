//! The backend's configuration: one serde struct from a TOML file (`TB_CONFIG`) and `TB_*`
//! environment variables (env wins). Secrets are redacted from `Debug`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::client::Cidr;

/// A refused setting; `field` names it.
#[derive(Debug, thiserror::Error)]
#[error("config field `{field}`: {reason}")]
pub struct ConfigError {
    /// The offending field.
    pub field: String,
    /// Why.
    pub reason: String,
}

fn bad(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError { field: field.into(), reason: reason.into() }
}

/// Fields whose values a config error must not repeat.
const SECRET_FIELDS: [&str; 5] =
    ["jwt_secret", "gate_secret", "admin_password", "payments_secret_key", "database_url"];

/// Everything the backend needs to start.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendConfig {
    /// Address to listen on (`TB_LISTEN`).
    pub listen: SocketAddr,
    /// `postgres://…` or `sqlite:…` (`TB_DATABASE_URL`); absent: SQLite under `data_dir`.
    pub database_url: Option<String>,
    /// Where the embedded database, posters and the index live (`TB_DATA_DIR`).
    pub data_dir: PathBuf,
    /// Redis for rankings, caches, holds and fan-out (`TB_REDIS_URL`); absent: in process.
    pub redis_url: Option<String>,
    /// HS256 secret of user JWTs (`TB_JWT_SECRET`); absent: generated at start (tokens die
    /// with the process). Share it with the gateway's `WR_USER_JWT_SECRET` to bind tickets.
    pub jwt_secret: Option<String>,
    /// The gateway's JWKS for admission tokens (`TB_ADMISSION_JWKS_URL`); absent: protected
    /// routes refuse everything.
    pub admission_jwks_url: Option<String>,
    /// The gateway's replay-marker key (`TB_GATE_SECRET`, the gateway's `WR_GATE_SECRET`):
    /// set, replays of the overload gate are checked (`403` when forged); absent, the marker
    /// header is dropped unread.
    pub gate_secret: Option<String>,
    /// Payment provider base URL (`TB_PAYMENTS_BASE_URL`).
    pub payments_base_url: Option<String>,
    /// Admin account created at first start (`TB_ADMIN_EMAIL`, `TB_ADMIN_PASSWORD`).
    pub admin_email: Option<String>,
    /// See `admin_email`.
    pub admin_password: Option<String>,
    /// Login attempts per client address and email per minute before `429`
    /// (`TB_LOGIN_PER_MINUTE`). Never per email alone: anyone could then lock an owner out.
    pub login_per_minute: u32,
    /// Login attempts per client address per minute, whatever the emails, before `429`
    /// (`TB_LOGIN_PER_IP_PER_MINUTE`): bounds guessing across many accounts from one place.
    pub login_per_ip_per_minute: u32,
    /// Sign-ups (every attempt, taken or not) per client address per hour before `429`
    /// (`TB_SIGNUP_PER_IP_PER_HOUR`). 20 lets a household or an office sign up in a burst and
    /// refills one every 3 minutes, while an account farm (one coupon per user) gets 480 a day
    /// per address; raise it for audiences behind carrier NAT.
    pub signup_per_ip_per_hour: u32,
    /// Proxies whose `X-Forwarded-For` is believed (`TB_TRUSTED_PROXIES`, comma-separated IPs
    /// or CIDRs; TOML: a list). The client is the rightmost entry that is not one of them
    /// (`client`). Default loopback, where the gateway of `cargo run` lives; list the
    /// gateways' addresses when they run elsewhere, and any load balancer in front of them.
    pub trusted_proxies: Vec<Cidr>,
    /// Notification streams one user may hold open on one instance; the next is a
    /// `429 too_many_streams` (`TB_NOTIFY_STREAMS_PER_USER`). A few tabs and devices, not a
    /// thousand sockets.
    pub notify_streams_per_user: u32,
    /// A concert view counts once per client (user, else address) per this many seconds
    /// (`TB_VIEW_DEDUP_WINDOW_S`), so reloading does not move the ranking.
    pub view_dedup_window_s: u32,
    /// Seed demo data into an empty embedded (SQLite) catalog.
    pub demo_data: bool,
    /// How long a reservation holds its seats before they return, seconds (`TB_HOLD_TTL_S`).
    pub hold_ttl_s: u32,
    /// A Slack-compatible webhook for ops events (`TB_OPS_WEBHOOK_URL`).
    pub ops_webhook_url: Option<String>,
    /// The payment provider's secret key (`TB_PAYMENTS_SECRET_KEY`); the built-in simulator
    /// (started when `payments_base_url` is absent) accepts the default.
    pub payments_secret_key: String,
    /// The provider must answer within this, ms (`TB_PAYMENTS_TIMEOUT_MS`); then the payment
    /// is treated as unknown, refunded and its seats released.
    pub payments_timeout_ms: u64,
    /// How often the provider's ledger is reconciled with the database, seconds
    /// (`TB_RECONCILE_EVERY_S`, 1..=86400).
    pub reconcile_every_s: u64,
    /// Reconciliation leaves orders younger than this to their saga, seconds
    /// (`TB_RECONCILE_GRACE_S`, up to 86400 and at least twice `payments_timeout_ms`).
    pub reconcile_grace_s: u64,
    /// Seats one buyer may hold and buy per round, and one admission in all, unless the
    /// concert sets its own `max_seats_per_buyer` (`TB_SEATS_PER_BUYER`, 1..=10000).
    pub seats_per_buyer: i64,
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            database_url: None,
            data_dir: PathBuf::from("data"),
            redis_url: None,
            jwt_secret: None,
            admission_jwks_url: None,
            gate_secret: None,
            payments_base_url: None,
            admin_email: None,
            admin_password: None,
            login_per_minute: 10,
            login_per_ip_per_minute: 30,
            signup_per_ip_per_hour: 20,
            trusted_proxies: Cidr::loopback(),
            notify_streams_per_user: 5,
            view_dedup_window_s: 600,
            demo_data: true,
            hold_ttl_s: 600,
            ops_webhook_url: None,
            payments_secret_key: "test_sk_local_simulator".into(),
            payments_timeout_ms: 10_000,
            reconcile_every_s: 300,
            reconcile_grace_s: 600,
            seats_per_buyer: 4,
        }
    }
}

impl std::fmt::Debug for BackendConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = |o: &Option<String>| o.as_ref().map(|_| "<redacted>");
        f.debug_struct("BackendConfig")
            .field("listen", &self.listen)
            .field(
                "database_url",
                &self.database_url.as_ref().map(|u| u.split('@').next_back().unwrap_or("").to_string()),
            )
            .field("data_dir", &self.data_dir)
            .field("redis_url", &r(&self.redis_url))
            .field("jwt_secret", &r(&self.jwt_secret))
            .field("admission_jwks_url", &self.admission_jwks_url)
            .field("gate_secret", &r(&self.gate_secret))
            .field("payments_base_url", &self.payments_base_url)
            .field("admin_email", &self.admin_email)
            .field("admin_password", &r(&self.admin_password))
            .field("login_per_minute", &self.login_per_minute)
            .field("login_per_ip_per_minute", &self.login_per_ip_per_minute)
            .field("signup_per_ip_per_hour", &self.signup_per_ip_per_hour)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("notify_streams_per_user", &self.notify_streams_per_user)
            .field("view_dedup_window_s", &self.view_dedup_window_s)
            .field("demo_data", &self.demo_data)
            .field("hold_ttl_s", &self.hold_ttl_s)
            .field("ops_webhook_url", &self.ops_webhook_url.as_ref().map(|_| "<redacted>"))
            .field("payments_secret_key", &"<redacted>")
            .field("payments_timeout_ms", &self.payments_timeout_ms)
            .field("reconcile_every_s", &self.reconcile_every_s)
            .field("reconcile_grace_s", &self.reconcile_grace_s)
            .field("seats_per_buyer", &self.seats_per_buyer)
            .finish()
    }
}

impl BackendConfig {
    /// Loads `TB_CONFIG` (if set) and applies `TB_*` variables.
    pub fn load() -> Result<Self, ConfigError> {
        let vars: BTreeMap<String, String> = std::env::vars().filter(|(k, _)| k.starts_with("TB_")).collect();
        Self::load_from(&vars)
    }

    /// Like [`BackendConfig::load`], from the given variables.
    pub fn load_from(vars: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let mut cfg = match vars.get("TB_CONFIG") {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| bad("TB_CONFIG", format!("cannot read {p}: {e}")))?;
                Self::from_toml(&text)?
            }
            None => BackendConfig::default(),
        };
        let get = |k: &str| vars.get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        if let Some(v) = get("TB_LISTEN") {
            cfg.listen = v.parse().map_err(|_| bad("TB_LISTEN", format!("not an address: {v:?}")))?;
        }
        cfg.database_url = get("TB_DATABASE_URL").or(cfg.database_url);
        if let Some(v) = get("TB_DATA_DIR") {
            cfg.data_dir = v.into();
        }
        cfg.redis_url = get("TB_REDIS_URL").or(cfg.redis_url);
        cfg.jwt_secret = get("TB_JWT_SECRET").or(cfg.jwt_secret);
        cfg.admission_jwks_url = get("TB_ADMISSION_JWKS_URL").or(cfg.admission_jwks_url);
        cfg.gate_secret = get("TB_GATE_SECRET").or(cfg.gate_secret);
        cfg.ops_webhook_url = get("TB_OPS_WEBHOOK_URL").or(cfg.ops_webhook_url);
        if let Some(v) = get("TB_PAYMENTS_SECRET_KEY") {
            cfg.payments_secret_key = v;
        }
        if let Some(v) = get("TB_PAYMENTS_TIMEOUT_MS") {
            cfg.payments_timeout_ms =
                v.parse().map_err(|_| bad("TB_PAYMENTS_TIMEOUT_MS", format!("not a number: {v:?}")))?;
        }
        if let Some(v) = get("TB_HOLD_TTL_S") {
            cfg.hold_ttl_s = v.parse().map_err(|_| bad("TB_HOLD_TTL_S", format!("not a number: {v:?}")))?;
        }
        if let Some(v) = get("TB_RECONCILE_EVERY_S") {
            cfg.reconcile_every_s =
                v.parse().map_err(|_| bad("TB_RECONCILE_EVERY_S", format!("not a number: {v:?}")))?;
        }
        if let Some(v) = get("TB_SEATS_PER_BUYER") {
            cfg.seats_per_buyer =
                v.parse().map_err(|_| bad("TB_SEATS_PER_BUYER", format!("not a number: {v:?}")))?;
        }
        if let Some(v) = get("TB_RECONCILE_GRACE_S") {
            cfg.reconcile_grace_s =
                v.parse().map_err(|_| bad("TB_RECONCILE_GRACE_S", format!("not a number: {v:?}")))?;
        }
        cfg.payments_base_url = get("TB_PAYMENTS_BASE_URL").or(cfg.payments_base_url);
        cfg.apply_limit_vars(&get)?;
        cfg.admin_email = get("TB_ADMIN_EMAIL").or(cfg.admin_email);
        cfg.admin_password = get("TB_ADMIN_PASSWORD").or(cfg.admin_password);
        cfg.validate()?;
        Ok(cfg)
    }

    /// The `TB_*` variables of the abuse limits.
    fn apply_limit_vars(&mut self, get: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let num = |k: &str, slot: &mut u32| -> Result<(), ConfigError> {
            if let Some(v) = get(k) {
                *slot = v.parse().map_err(|_| bad(k, format!("not a number: {v:?}")))?;
            }
            Ok(())
        };
        num("TB_LOGIN_PER_MINUTE", &mut self.login_per_minute)?;
        num("TB_LOGIN_PER_IP_PER_MINUTE", &mut self.login_per_ip_per_minute)?;
        num("TB_SIGNUP_PER_IP_PER_HOUR", &mut self.signup_per_ip_per_hour)?;
        num("TB_NOTIFY_STREAMS_PER_USER", &mut self.notify_streams_per_user)?;
        num("TB_VIEW_DEDUP_WINDOW_S", &mut self.view_dedup_window_s)?;
        if let Some(v) = get("TB_TRUSTED_PROXIES") {
            // An empty variable reads as unset, so trusting nobody needs a word.
            self.trusted_proxies = if v.eq_ignore_ascii_case("none") {
                Vec::new()
            } else {
                crate::client::parse_list(&v).map_err(|e| bad("TB_TRUSTED_PROXIES", e))?
            };
        }
        Ok(())
    }

    /// Parses the TOML file's text. A value of the wrong type or an unknown field is named
    /// by its path; bad syntax has no field. Either way the error says where in the file,
    /// without quoting it, and a secret field's value is not repeated.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        queue_core::config::parse_file(text, &SECRET_FIELDS).map_err(|e| bad(&e.field, e.reason))
    }

    /// Checks what can be checked without connecting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(u) = &self.database_url
            && crate::db::Dialect::of(u).is_none()
        {
            return Err(bad("database_url", "must start with postgres:// or sqlite:"));
        }
        if let Some(s) = &self.jwt_secret
            && s.len() < 32
        {
            return Err(bad("jwt_secret", "must be at least 32 bytes"));
        }
        if !(100..=600_000).contains(&self.payments_timeout_ms) {
            return Err(bad("payments_timeout_ms", "must be within 100..=600000"));
        }
        if let Some(u) = &self.ops_webhook_url
            && !u.starts_with("http://")
        {
            return Err(bad(
                "ops_webhook_url",
                "must be an http:// URL (put a TLS-terminating relay in front of https endpoints)",
            ));
        }
        if let Some(u) = &self.payments_base_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err(bad("payments_base_url", "must be an http(s) URL"));
        }
        if !(1..=86_400).contains(&self.hold_ttl_s) {
            return Err(bad("hold_ttl_s", "must be within 1..=86400"));
        }
        if let Some(s) = &self.gate_secret
            && s.len() < 32
        {
            return Err(bad("gate_secret", "must be at least 32 bytes"));
        }
        if let Some(u) = &self.admission_jwks_url {
            queue_core::verify::Verifier::from_url(u)
                .map_err(|e| bad("admission_jwks_url", e.to_string()))?;
        }
        if self.admin_email.is_some() != self.admin_password.is_some() {
            return Err(bad("admin_password", "admin_email and admin_password go together"));
        }
        if let Some(p) = &self.admin_password
            && p.len() < 12
        {
            return Err(bad("admin_password", "must be at least 12 characters"));
        }
        if !(1..=86_400).contains(&self.reconcile_every_s) {
            return Err(bad("reconcile_every_s", "must be within 1..=86400"));
        }
        if !(1..=crate::catalog::MAX_SEATS_PER_BUYER).contains(&self.seats_per_buyer) {
            return Err(bad("seats_per_buyer", "must be within 1..=10000"));
        }
        if self.reconcile_grace_s > 86_400 {
            return Err(bad("reconcile_grace_s", "must be within 0..=86400"));
        }
        // Younger orders may be between the provider's charge and their booking: refunding
        // one then would leave it paid without its money.
        if self.reconcile_grace_s * 1000 < 2 * self.payments_timeout_ms {
            return Err(bad("reconcile_grace_s", "must be at least twice payments_timeout_ms"));
        }
        for (field, v) in [
            ("login_per_minute", self.login_per_minute),
            ("login_per_ip_per_minute", self.login_per_ip_per_minute),
            ("signup_per_ip_per_hour", self.signup_per_ip_per_hour),
            ("notify_streams_per_user", self.notify_streams_per_user),
        ] {
            if v == 0 {
                return Err(bad(field, "must be ≥ 1"));
            }
        }
        if !(1..=86_400).contains(&self.view_dedup_window_s) {
            return Err(bad("view_dedup_window_s", "must be within 1..=86400"));
        }
        Ok(())
    }

    /// The database URL to use: the configured one, or SQLite under `data_dir`.
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", self.data_dir.join("ticketing.db").display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_errors_name_the_field() {
        let field = |text: &str| BackendConfig::from_toml(text).err().map(|e| e.field);
        assert_eq!(field("listen = \"nope\""), Some("listen".into()));
        assert_eq!(field("hold_ttl_s = \"long\""), Some("hold_ttl_s".into()));
        assert_eq!(field("bogus = 1"), Some("bogus".into()));
        assert_eq!(field("listen = "), Some("(file)".into()));
        let e = BackendConfig::from_toml("payments_secret_key = 98765432109876\n").err().unwrap();
        assert_eq!(e.field, "payments_secret_key");
        assert!(e.reason.starts_with("line 1, column 23: ") && !e.reason.contains("98765"), "{}", e.reason);
        let cfg = BackendConfig::from_toml("hold_ttl_s = 0").unwrap();
        assert_eq!(cfg.validate().unwrap_err().field, "hold_ttl_s");
    }

    #[test]
    fn abuse_limits_come_from_the_environment_and_refuse_zero() {
        let vars = |kv: &[(&str, &str)]| -> BTreeMap<String, String> {
            kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let cfg = BackendConfig::load_from(&vars(&[
            ("TB_LOGIN_PER_MINUTE", "3"),
            ("TB_LOGIN_PER_IP_PER_MINUTE", "7"),
            ("TB_SIGNUP_PER_IP_PER_HOUR", "2"),
            ("TB_NOTIFY_STREAMS_PER_USER", "1"),
            ("TB_VIEW_DEDUP_WINDOW_S", "60"),
            ("TB_TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.1"),
        ]))
        .unwrap();
        let got = (
            cfg.login_per_minute,
            cfg.login_per_ip_per_minute,
            cfg.signup_per_ip_per_hour,
            cfg.notify_streams_per_user,
            cfg.view_dedup_window_s,
        );
        assert_eq!(got, (3, 7, 2, 1, 60));
        let debug = format!("{cfg:?}");
        assert!(debug.contains("trusted_proxies: [10.0.0.0/8, 192.0.2.1/32]"), "{debug}");
        assert!(debug.contains("signup_per_ip_per_hour: 2") && debug.contains("view_dedup_window_s: 60"));
        let none = BackendConfig::load_from(&vars(&[("TB_TRUSTED_PROXIES", "none")])).unwrap();
        assert!(none.trusted_proxies.is_empty());
        for (k, v, field) in [
            ("TB_TRUSTED_PROXIES", "10.0.0.1/8", "TB_TRUSTED_PROXIES"),
            ("TB_LOGIN_PER_IP_PER_MINUTE", "0", "login_per_ip_per_minute"),
            ("TB_SIGNUP_PER_IP_PER_HOUR", "0", "signup_per_ip_per_hour"),
            ("TB_NOTIFY_STREAMS_PER_USER", "0", "notify_streams_per_user"),
            ("TB_VIEW_DEDUP_WINDOW_S", "0", "view_dedup_window_s"),
            ("TB_LOGIN_PER_MINUTE", "many", "TB_LOGIN_PER_MINUTE"),
        ] {
            assert_eq!(BackendConfig::load_from(&vars(&[(k, v)])).unwrap_err().field, field, "{k}={v}");
        }
        let file = BackendConfig::from_toml("trusted_proxies = [\"fd00::/8\"]").unwrap();
        assert_eq!(file.trusted_proxies, vec!["fd00::/8".parse().unwrap()]);
        assert_eq!(
            BackendConfig::from_toml("trusted_proxies = [\"x\"]").unwrap_err().field,
            "trusted_proxies[0]"
        );
    }
}
