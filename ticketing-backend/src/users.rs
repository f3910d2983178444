//! Users: sign-up, login (argon2id hashes, rate-limited), user JWTs with a role, and the
//! extractors handlers use to require a user or an admin.

use std::num::NonZeroU32;
use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::Row;

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

/// Signs and checks user tokens; limits login attempts.
pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    login_limiter: DefaultKeyedRateLimiter<String>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").finish_non_exhaustive()
    }
}

impl Auth {
    /// Tokens signed with `secret`; `login_per_minute` attempts per email.
    pub fn new(secret: &[u8], login_per_minute: u32) -> Self {
        let per_minute = NonZeroU32::new(login_per_minute).unwrap_or(NonZeroU32::MIN);
        Auth {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            login_limiter: RateLimiter::keyed(Quota::per_minute(per_minute)),
        }
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

async fn verify(password: String, stored: String) -> bool {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&stored)
            .is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
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
    body: Result<Json<Signup>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
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
    body: Result<Json<Login>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body.map_err(crate::error::json_rejection)?;
    let email = normalize_email(&req.email)?;
    if req.password.len() > 1024 {
        return Err(ApiError::invalid("password", "too long"));
    }
    if state.auth.login_limiter.check_key(&email).is_err() {
        let mut r = ApiError::client(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many attempts; wait a minute",
        )
        .into_response();
        r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("60"));
        return Ok(r);
    }
    let row = sqlx::query("SELECT id, password_hash, role FROM users WHERE email = $1")
        .bind(&email)
        .fetch_optional(&state.db.pool)
        .await
        .context("loading a user")?;
    // The same answer for an unknown email and a wrong password.
    let denied = || ApiError::unauthorized("wrong email or password");
    let Some(row) = row else { return Err(denied()) };
    let (id, stored, role): (i64, String, String) = (row.get(0), row.get(1), row.get(2));
    if !verify(req.password, stored).await {
        return Err(denied());
    }
    let role = if role == "admin" { Role::Admin } else { Role::User };
    Ok(Json(json!({"token": state.auth.issue(id, role)?})).into_response())
}

/// Keeps the limiter's memory bounded.
pub fn compact(auth: &Arc<Auth>) {
    auth.login_limiter.retain_recent();
    auth.login_limiter.shrink_to_fit();
}
