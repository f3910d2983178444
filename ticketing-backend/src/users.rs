//! Users: sign-up, login (argon2id hashes), user JWTs with a role, and the extractors
//! handlers use to require a user or an admin.
//!
//! Abuse limits, keyed by [`ClientIp::bucket`]: logins per address and per (address, email),
//! never per email alone, so nobody elsewhere can lock an owner out; sign-ups per address
//! per hour. An unknown email is checked against a dummy hash of the same parameters, so a
//! login costs the same whether the account exists (no enumeration by timing). The limits
//! are per instance: behind N instances an address gets N times each, which the argon2 cost
//! per attempt still bounds.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::Row;

use crate::client::ClientIp;
use crate::db::{Db, now_ms};
use crate::error::{ApiError, Context};
use crate::state::AppState;

/// How long a user token lives.
pub const TOKEN_TTL_S: u64 = 24 * 3600;

/// A user's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A buyer.
    User,
    /// An operator.
    Admin,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    role: Role,
    iat: u64,
    exp: u64,
}

/// How many logins and sign-ups one client gets (see `BackendConfig`).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Logins per address and email per minute.
    pub login_per_minute: u32,
    /// Logins per address per minute.
    pub login_per_ip_per_minute: u32,
    /// Sign-ups per address per hour.
    pub signup_per_ip_per_hour: u32,
}

impl From<&crate::config::BackendConfig> for Limits {
    fn from(c: &crate::config::BackendConfig) -> Self {
        Limits {
            login_per_minute: c.login_per_minute,
            login_per_ip_per_minute: c.login_per_ip_per_minute,
            signup_per_ip_per_hour: c.signup_per_ip_per_hour,
        }
    }
}

/// Signs and checks user tokens; limits logins and sign-ups per client.
pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    login_per_ip: DefaultKeyedRateLimiter<IpAddr>,
    login_per_ip_email: DefaultKeyedRateLimiter<(IpAddr, String)>,
    signup_per_ip: DefaultKeyedRateLimiter<IpAddr>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").finish_non_exhaustive()
    }
}

impl Auth {
    /// Tokens signed with `secret`, logins and sign-ups limited by `limits`.
    pub fn new(secret: &[u8], limits: Limits) -> Self {
        let n = |v: u32| NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN);
        Auth {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            login_per_ip: RateLimiter::keyed(Quota::per_minute(n(limits.login_per_ip_per_minute))),
            login_per_ip_email: RateLimiter::keyed(Quota::per_minute(n(limits.login_per_minute))),
            signup_per_ip: RateLimiter::keyed(Quota::per_hour(n(limits.signup_per_ip_per_hour))),
        }
    }

    /// Takes a login attempt of `email` from `ip`; `Err` is how long to wait.
    fn allow_login(&self, ip: ClientIp, email: &str) -> Result<(), Duration> {
        let ip = ip.bucket();
        self.login_per_ip
            .check_key(&ip)
            .and_then(|()| self.login_per_ip_email.check_key(&(ip, email.to_owned())))
            .map_err(|n| n.wait_time_from(DefaultClock::default().now()))
    }

    /// Takes a sign-up from `ip`; `Err` is how long to wait.
    fn allow_signup(&self, ip: ClientIp) -> Result<(), Duration> {
        self.signup_per_ip
            .check_key(&ip.bucket())
            .map_err(|n| n.wait_time_from(DefaultClock::default().now()))
    }

    /// A token for a user.
    pub fn issue(&self, user_id: i64, role: Role) -> Result<String, ApiError> {
        let now = (now_ms() / 1000) as u64;
        let claims = Claims { sub: user_id.to_string(), role, iat: now, exp: now + TOKEN_TTL_S };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .context("signing a user token")
    }

    /// The user of a request's `Authorization: Bearer` token, if valid.
    pub fn user_of(&self, headers: &axum::http::HeaderMap) -> Option<CurrentUser> {
        let token = headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ")?;
        self.check(token.trim())
    }

    fn check(&self, token: &str) -> Option<CurrentUser> {
        if token.len() > 4096 {
            return None;
        }
        let mut v = Validation::new(Algorithm::HS256);
        v.set_required_spec_claims(&["exp", "sub"]);
        let c = jsonwebtoken::decode::<Claims>(token, &self.decoding, &v).ok()?.claims;
        Some(CurrentUser { id: c.sub.parse().ok()?, role: c.role })
    }
}

/// The authenticated caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CurrentUser {
    /// User id.
    pub id: i64,
    /// Role.
    pub role: Role,
}

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| ApiError::unauthorized("sign in first (Authorization: Bearer <token>)"))?;
        state
            .auth
            .check(token.trim())
            .ok_or_else(|| ApiError::unauthorized("the token is invalid or expired"))
    }
}

/// An authenticated admin.
#[derive(Clone, Copy, Debug)]
pub struct AdminUser(pub CurrentUser);

impl FromRequestParts<AppState> for AdminUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let user = CurrentUser::from_request_parts(parts, state).await?;
        if user.role != Role::Admin {
            return Err(ApiError::forbidden("forbidden", "admins only"));
        }
        Ok(AdminUser(user))
    }
}

/// `POST /api/v1/auth/signup` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signup {
    email: String,
    password: String,
    name: String,
}

/// `POST /api/v1/auth/login` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    email: String,
    password: String,
}

fn normalize_email(raw: &str) -> Result<String, ApiError> {
    let email = raw.trim().to_lowercase();
    let valid = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.')
        })
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if !valid {
        return Err(ApiError::invalid("email", "not an email address"));
    }
    Ok(email)
}

fn check_password(p: &str) -> Result<(), ApiError> {
    let n = p.chars().count();
    if !(8..=128).contains(&n) {
        return Err(ApiError::invalid("password", "must be 8 to 128 characters"));
    }
    Ok(())
}

async fn hash(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string())
    })
    .await
    .context("joining the hashing task")?
    .map_err(|e| ApiError::Internal { context: "hashing a password", source: e.to_string().into() })
}

/// What an unknown email's password is checked against: a hash with the parameters of
/// [`hash`], so that both answers cost one argon2 run. Made on first use, on a blocking
/// thread (see [`verify`]).
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(b"no account has this password", &salt)
        .map(|h| h.to_string())
        .unwrap_or_default()
});

/// Checks `password` against `stored`, or against [`DUMMY_HASH`] (and fails) when there is
/// no account.
async fn verify(password: String, stored: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || {
        let known = stored.is_some();
        let stored = stored.unwrap_or_else(|| DUMMY_HASH.clone());
        let ok = PasswordHash::new(&stored)
            .is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok());
        ok && known
    })
    .await
    .unwrap_or(false)
}

/// Inserts a user; `Ok(None)` when the email is taken.
pub async fn create(
    db: &Db,
    email: &str,
    name: &str,
    password: &str,
    role: Role,
) -> Result<Option<i64>, ApiError> {
    let hash = hash(password.to_owned()).await?;
    let res = sqlx::query(
        "INSERT INTO users (email, name, password_hash, role, created_at) VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(email)
    .bind(name)
    .bind(hash)
    .bind(role.as_str())
    .bind(now_ms())
    .fetch_one(&db.pool)
    .await;
    match res {
        Ok(row) => Ok(Some(row.get::<i64, _>(0))),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(None),
        Err(e) => Err(e).context("inserting a user"),
    }
}

/// Creates the configured admin if no user has that email yet.
pub async fn ensure_admin(db: &Db, email: &str, password: &str) -> Result<(), ApiError> {
    let email = normalize_email(email)?;
    if create(db, &email, "admin", password, Role::Admin).await?.is_some() {
        tracing::info!(%email, "admin account created");
    }
    Ok(())
}

/// `POST /api/v1/auth/signup`
pub async fn signup(
    State(state): State<AppState>,
    ip: ClientIp,
    body: Result<Json<Signup>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    // Before anything else: every attempt counts, or `email_taken` would be a free oracle.
    if let Err(wait) = state.auth.allow_signup(ip) {
        let message = "too many sign-ups from your address; try again later";
        return Ok(crate::error::too_many("rate_limited", message, wait));
    }
    let Json(req) = body.map_err(crate::error::json_rejection)?;
    let email = normalize_email(&req.email)?;
    check_password(&req.password)?;
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(ApiError::invalid("name", "must be 1 to 100 printable characters"));
    }
    let Some(id) = create(&state.db, &email, name, &req.password, Role::User).await? else {
        return Err(ApiError::client(
            StatusCode::CONFLICT,
            "email_taken",
            "an account with this email exists",
        ));
    };
    let token = state.auth.issue(id, Role::User)?;
    let body = json!({"id": id, "email": email, "name": name, "role": "user", "token": token});
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `POST /api/v1/auth/login`
pub async fn login(
    State(state): State<AppState>,
    ip: ClientIp,
    body: Result<Json<Login>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body.map_err(crate::error::json_rejection)?;
    let email = normalize_email(&req.email)?;
    if req.password.len() > 1024 {
        return Err(ApiError::invalid("password", "too long"));
    }
    if let Err(wait) = state.auth.allow_login(ip, &email) {
        let message = "too many sign-in attempts; try again later";
        return Ok(crate::error::too_many("rate_limited", message, wait));
    }
    let row = sqlx::query("SELECT id, password_hash, role FROM users WHERE email = $1")
        .bind(&email)
        .fetch_optional(&state.db.pool)
        .await
        .context("loading a user")?;
    let (id, stored, role) = match row {
        Some(r) => (r.get::<i64, _>(0), Some(r.get::<String, _>(1)), r.get::<String, _>(2)),
        None => (0, None, String::new()),
    };
    // The same answer, after the same work, for an unknown email and a wrong password.
    if !verify(req.password, stored).await {
        return Err(ApiError::unauthorized("wrong email or password"));
    }
    let role = if role == "admin" { Role::Admin } else { Role::User };
    Ok(Json(json!({"token": state.auth.issue(id, role)?})).into_response())
}

/// Keeps the limiters' memory bounded.
pub fn compact(auth: &Arc<Auth>) {
    auth.login_per_ip.retain_recent();
    auth.login_per_ip.shrink_to_fit();
    auth.login_per_ip_email.retain_recent();
    auth.login_per_ip_email.shrink_to_fit();
    auth.signup_per_ip.retain_recent();
    auth.signup_per_ip.shrink_to_fit();
}
