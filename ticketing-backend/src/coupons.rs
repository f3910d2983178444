//! Coupons: admin campaigns with a stock and a validity window; first-come issuance, never
//! more than the stock and at most one per user, decided in one atomic step (one Lua script
//! over `tb:coupon:{campaign}` with `TB_REDIS_URL`, a lock in process otherwise); the coupon
//! row is then written, and an issuance whose row fails is undone. A unique index on
//! (campaign, user) backs the one-per-user rule in the database.
//!
//! A campaign may be scoped to a concert or to one round of it: its coupons then discount
//! only that (`409 coupon_not_applicable` at prepare), and if the concert is queued behind
//! a room they are issued only with an admission to it, bound to the account like a hold
//! (the gateway must protect the campaign's issue path, `protect_path`, for the token to
//! reach the backend).

use std::collections::{HashMap, HashSet};
use std::sync::{LazyLock, Mutex};

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use redis::Script;
use redis::aio::ConnectionManager;
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Row;

use crate::catalog::{body, instant, not_found, path_id, rfc3339, text};
use crate::db::now_ms;
use crate::error::{ApiError, Context};
use crate::state::AppState;
use crate::users::{AdminUser, CurrentUser};

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// What an issuance request got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Issue {
    /// A coupon for this user.
    Issued,
    /// This user has one already.
    AlreadyIssued,
    /// The stock is gone.
    SoldOut,
}

static ISSUE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../../lua/coupon_issue.lua")));
static REVOKE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../../lua/coupon_revoke.lua")));

/// The issuance counter: in process or in Redis.
pub struct Issuer(Store);

enum Store {
    Memory(Mutex<HashMap<i64, HashSet<i64>>>),
    Redis(ConnectionManager),
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Store::Memory(_) => "Issuer::Memory",
            Store::Redis(_) => "Issuer::Redis",
        })
    }
}

fn keys(campaign: i64) -> (String, String) {
    (format!("tb:coupon:{{{campaign}}}"), format!("tb:coupon:{{{campaign}}}:users"))
}

impl Issuer {
    /// In process.
    pub fn memory() -> Self {
        Issuer(Store::Memory(Mutex::new(HashMap::new())))
    }

    /// In process, rebuilt from the database's coupons (the truth), so a restart of the
    /// embedded default keeps counting from where it was.
    pub async fn memory_from(db: &crate::db::Db) -> Result<Self, sqlx::Error> {
        let rows = sqlx::query("SELECT campaign_id, user_id FROM coupons").fetch_all(&db.pool).await?;
        let mut all: HashMap<i64, HashSet<i64>> = HashMap::new();
        for r in rows {
            all.entry(r.get(0)).or_default().insert(r.get(1));
        }
        Ok(Issuer(Store::Memory(Mutex::new(all))))
    }

    /// Shared through Redis.
    pub async fn redis(url: &str) -> redis::RedisResult<Self> {
        Ok(Issuer(Store::Redis(redis::Client::open(url)?.get_connection_manager().await?)))
    }

    /// Issues one coupon of `campaign` (of `stock`) to `user`, if any is left and the user
    /// has none.
    pub async fn issue(&self, campaign: i64, stock: i64, user: i64) -> redis::RedisResult<Issue> {
        match &self.0 {
            Store::Memory(m) => {
                let mut all = m.lock().unwrap_or_else(|e| e.into_inner());
                let holders = all.entry(campaign).or_default();
                Ok(if holders.contains(&user) {
                    Issue::AlreadyIssued
                } else if holders.len() as i64 >= stock {
                    Issue::SoldOut
                } else {
                    holders.insert(user);
                    Issue::Issued
                })
            }
            Store::Redis(c) => {
                let (k, u) = keys(campaign);
                let r: String = ISSUE.key(k).key(u).arg(user).arg(stock).invoke_async(&mut c.clone()).await?;
                Ok(match r.as_str() {
                    "issued" => Issue::Issued,
                    "already_issued" => Issue::AlreadyIssued,
                    _ => Issue::SoldOut,
                })
            }
        }
    }

    /// Undoes `user`'s issuance (its row could not be written).
    pub async fn revoke(&self, campaign: i64, user: i64) -> redis::RedisResult<bool> {
        match &self.0 {
            Store::Memory(m) => {
                let mut all = m.lock().unwrap_or_else(|e| e.into_inner());
                Ok(all.get_mut(&campaign).is_some_and(|h| h.remove(&user)))
            }
            Store::Redis(c) => {
                let (k, u) = keys(campaign);
                let n: i64 = REVOKE.key(k).key(u).arg(user).invoke_async(&mut c.clone()).await?;
                Ok(n == 1)
            }
        }
    }
}

/// `POST /admin/v1/coupon-campaigns` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCampaign {
    /// Shown to buyers (1..=200 characters).
    pub name: String,
    /// `amount` (KRW off) or `percent`.
    pub discount_kind: String,
    /// KRW or percent, by `discount_kind`.
    pub discount: i64,
    /// Coupons to hand out.
    pub stock: i64,
    /// RFC 3339 start of issuance.
    pub valid_from: String,
    /// RFC 3339 end of issuance and use.
    pub valid_until: String,
    /// Only for this concert's rounds.
    #[serde(default)]
    pub concert_id: Option<i64>,
    /// Only for this round (its concert is implied).
    #[serde(default)]
    pub schedule_id: Option<i64>,
}

/// Where a campaign applies: its concert (and round), and the concert's room.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    concert: Option<i64>,
    schedule: Option<i64>,
    room: Option<String>,
}

/// The concert a campaign is for, from either id; checks they exist and agree.
async fn scope_of(s: &AppState, concert: Option<i64>, schedule: Option<i64>) -> Result<Scope> {
    let concert = match schedule {
        Some(id) => {
            let row = sqlx::query("SELECT concert_id FROM schedules WHERE id = $1")
                .bind(id)
                .fetch_optional(&s.db.pool)
                .await
                .context("loading a campaign's round")?
                .ok_or_else(|| ApiError::invalid("schedule_id", "no such round"))?;
            let of: i64 = row.get(0);
            if concert.is_some_and(|c| c != of) {
                return Err(ApiError::invalid("schedule_id", format!("round {id} belongs to concert {of}")));
            }
            Some(of)
        }
        None => concert,
    };
    let Some(c) = concert else { return Ok(Scope::default()) };
    let row = sqlx::query("SELECT room FROM concerts WHERE id = $1 AND deleted_at IS NULL")
        .bind(c)
        .fetch_optional(&s.db.pool)
        .await
        .context("loading a campaign's concert")?
        .ok_or_else(|| ApiError::invalid("concert_id", "no such concert"))?;
    Ok(Scope { concert: Some(c), schedule, room: row.get(0) })
}

/// `409 coupon_not_applicable` unless a coupon of `campaign` discounts `schedule` (of
/// `concert`).
pub async fn applies(s: &AppState, campaign: i64, concert: i64, schedule: i64) -> Result<()> {
    let row = sqlx::query("SELECT concert_id, schedule_id FROM coupon_campaigns WHERE id = $1")
        .bind(campaign)
        .fetch_one(&s.db.pool)
        .await
        .context("loading a coupon's campaign")?;
    let (for_concert, for_schedule): (Option<i64>, Option<i64>) = (row.get(0), row.get(1));
    if for_concert.is_some_and(|c| c != concert) || for_schedule.is_some_and(|r| r != schedule) {
        let what = match (for_schedule, for_concert) {
            (Some(r), _) => format!("round {r}"),
            (None, Some(c)) => format!("concert {c}"),
            (None, None) => "another event".to_owned(),
        };
        return Err(ApiError::client(
            StatusCode::CONFLICT,
            "coupon_not_applicable",
            format!("this coupon is only for {what}"),
        ));
    }
    Ok(())
}

/// `POST /admin/v1/coupon-campaigns`: `201` with the campaign.
pub async fn create_campaign(
    State(s): State<AppState>,
    _a: AdminUser,
    b: std::result::Result<Json<NewCampaign>, JsonRejection>,
) -> Result<Response> {
    let v = add_campaign(&s, body(b)?).await?;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

/// Validates and stores a campaign (the admin API and the demo data); returns it as JSON.
pub async fn add_campaign(s: &AppState, c: NewCampaign) -> Result<Value> {
    let name = text("name", &c.name, 200, true)?;
    let max = match c.discount_kind.as_str() {
        "amount" => crate::catalog::MAX_PRICE,
        "percent" => 100,
        _ => return Err(ApiError::invalid("discount_kind", "must be amount or percent")),
    };
    if !(1..=max).contains(&c.discount) {
        return Err(ApiError::invalid("discount", format!("must be within 1..={max}")));
    }
    if !(1..=10_000_000).contains(&c.stock) {
        return Err(ApiError::invalid("stock", "must be within 1..=10000000"));
    }
    let (from, until) = (instant("valid_from", &c.valid_from)?, instant("valid_until", &c.valid_until)?);
    if until <= from {
        return Err(ApiError::invalid("valid_until", "must be after valid_from"));
    }
    let scope = scope_of(s, c.concert_id, c.schedule_id).await?;
    let row = sqlx::query(
        "INSERT INTO coupon_campaigns (name, discount_kind, discount, stock, valid_from, valid_until, created_at, concert_id, schedule_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
    )
    .bind(&name)
    .bind(&c.discount_kind)
    .bind(c.discount)
    .bind(c.stock)
    .bind(from)
    .bind(until)
    .bind(now_ms())
    .bind(scope.concert)
    .bind(scope.schedule)
    .fetch_one(&s.db.pool)
    .await
    .context("inserting a coupon campaign")?;
    let id = row.get::<i64, _>(0);
    let mut v = json!({"id": id, "name": name, "discount_kind": c.discount_kind, "discount": c.discount,
        "stock": c.stock, "valid_from": rfc3339(from), "valid_until": rfc3339(until),
        "concert_id": scope.concert, "schedule_id": scope.schedule});
    if let Some(room) = &scope.room {
        // What the operator adds to the room's `protect` list so that issuing waits in it.
        v["room"] = json!(room);
        v["protect_path"] = json!(format!("/api/v1/coupons/{id}/"));
    }
    Ok(v)
}

/// `GET /api/v1/coupons`: the campaigns open now (started, not ended), with what is left of
/// their stock, soonest ending first, so buyers can find a coupon to claim.
pub async fn open(State(s): State<AppState>) -> Result<Response> {
    let now = now_ms();
    let rows = sqlx::query(
        "SELECT k.id, k.name, k.discount_kind, k.discount, k.stock, k.valid_until, \
         (SELECT COUNT(*) FROM coupons c WHERE c.campaign_id = k.id), k.concert_id, k.schedule_id \
         FROM coupon_campaigns k WHERE k.valid_from <= $1 AND k.valid_until > $1 \
         ORDER BY k.valid_until, k.id LIMIT 50",
    )
    .bind(now)
    .fetch_all(&s.db.pool)
    .await
    .context("listing open coupon campaigns")?;
    let items: Vec<Value> = rows
        .iter()
        .map(|r| {
            let left = (r.get::<i64, _>(4) - r.get::<i64, _>(6)).max(0);
            json!({"campaign_id": r.get::<i64, _>(0), "name": r.get::<String, _>(1), "discount_kind": r.get::<String, _>(2),
                "discount": r.get::<i64, _>(3), "remaining": left, "valid_until": rfc3339(r.get(5)),
                "concert_id": r.get::<Option<i64>, _>(7), "schedule_id": r.get::<Option<i64>, _>(8)})
        })
        .collect();
    Ok(Json(json!({ "items": items })).into_response())
}

/// `POST /api/v1/coupons/{campaign_id}/issue`: `201 {coupon_id}`, `409 already_issued`,
/// `410 sold_out`; outside the campaign's window `409 not_started` or `410 campaign_ended`;
/// for a queued concert's campaign `403 not_admitted` without an admission to its room and
/// `409 admission_already_used` for a second coupon on one admission.
pub async fn issue(
    State(s): State<AppState>,
    user: CurrentUser,
    headers: axum::http::HeaderMap,
    p: std::result::Result<Path<String>, PathRejection>,
) -> Result<Response> {
    let campaign = path_id(p, "campaign_id")?;
    let row = sqlx::query(
        "SELECT stock, valid_from, valid_until, discount_kind, discount, concert_id FROM coupon_campaigns WHERE id = $1",
    )
    .bind(campaign)
    .fetch_optional(&s.db.pool)
    .await
    .context("loading a coupon campaign")?
    .ok_or_else(|| not_found("coupon campaign"))?;
    let (stock, from, until): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    let now = now_ms();
    if now < from {
        return Err(ApiError::client(StatusCode::CONFLICT, "not_started", "this campaign has not started"));
    }
    if now >= until {
        return Err(ApiError::client(StatusCode::GONE, "campaign_ended", "this campaign has ended"));
    }
    // A queued concert's coupons are issued to its admitted buyers only, one per admission
    // however many accounts share it.
    let admission = match scope_of(&s, row.get(5), None).await?.room {
        Some(room) => Some(s.admission.require_for(&headers, &room, &user).await?.jti.clone()),
        None => None,
    };
    if let Some(jti) = &admission {
        let used = sqlx::query("SELECT 1 FROM coupons WHERE campaign_id = $1 AND admission_jti = $2")
            .bind(campaign)
            .bind(jti)
            .fetch_optional(&s.db.pool)
            .await
            .context("checking an admission's coupon")?;
        if used.is_some() {
            return Err(ApiError::client(
                StatusCode::CONFLICT,
                "admission_already_used",
                "this admission already claimed a coupon of this campaign",
            ));
        }
    }
    match s.coupons.issue(campaign, stock, user.id).await.context("issuing a coupon")? {
        Issue::AlreadyIssued => return Err(already_issued()),
        Issue::SoldOut => return Err(ApiError::client(StatusCode::GONE, "sold_out", "no coupons are left")),
        Issue::Issued => {}
    }
    let id = format!("c{:024x}", rand::random::<u128>() >> 32);
    let inserted = sqlx::query(
        "INSERT INTO coupons (id, campaign_id, user_id, status, issued_at, admission_jti) VALUES ($1, $2, $3, 'issued', $4, $5)",
    )
    .bind(&id)
    .bind(campaign)
    .bind(user.id)
    .bind(now)
    .bind(&admission)
    .execute(&s.db.pool)
    .await;
    if let Err(e) = inserted {
        // The row is the truth: an issuance without one is undone.
        if let Err(re) = s.coupons.revoke(campaign, user.id).await {
            tracing::error!(error = %re, campaign, user = user.id, "undoing an issuance failed");
        }
        if let sqlx::Error::Database(d) = &e
            && d.is_unique_violation()
        {
            return Err(already_issued());
        }
        return Err(e).context("inserting a coupon");
    }
    s.metrics.coupons_issued.inc();
    s.notifier.publish(user.id, "coupon.issued", json!({"coupon_id": id, "campaign_id": campaign})).await;
    let v = json!({"coupon_id": id, "campaign_id": campaign, "discount_kind": row.get::<String, _>(3),
        "discount": row.get::<i64, _>(4), "expires_at": rfc3339(until)});
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

fn already_issued() -> ApiError {
    ApiError::client(StatusCode::CONFLICT, "already_issued", "you already have a coupon of this campaign")
}

/// `GET /api/v1/me/coupons`: the caller's coupons, newest first.
pub async fn mine(State(s): State<AppState>, user: CurrentUser) -> Result<Response> {
    let rows = sqlx::query(
        "SELECT c.id, c.campaign_id, c.status, c.issued_at, k.discount_kind, k.discount, k.valid_until \
         FROM coupons c JOIN coupon_campaigns k ON k.id = c.campaign_id WHERE c.user_id = $1 \
         ORDER BY c.issued_at DESC, c.id LIMIT 200",
    )
    .bind(user.id)
    .fetch_all(&s.db.pool)
    .await
    .context("listing coupons")?;
    let now = now_ms();
    let items: Vec<Value> = rows
        .iter()
        .map(|r| {
            let until: i64 = r.get(6);
            let mut status: String = r.get(2);
            if status == "issued" && until <= now {
                status = "expired".into();
            }
            json!({"coupon_id": r.get::<String, _>(0), "campaign_id": r.get::<i64, _>(1), "status": status,
                "issued_at": rfc3339(r.get(3)), "discount_kind": r.get::<String, _>(4), "discount": r.get::<i64, _>(5),
                "expires_at": rfc3339(until)})
        })
        .collect();
    Ok(Json(json!({ "items": items })).into_response())
}
