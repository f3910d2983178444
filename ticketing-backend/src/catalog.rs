//! Catalog: venues, performers, concerts (soft-deleted), schedules (rounds) and their seat
//! maps. Admin writes under `/admin/v1/...`; public reads under `/api/v1/...`.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Row;
use sqlx::any::AnyRow;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::db::now_ms;
use crate::error::{ApiError, Context, json_rejection};
use crate::holds::SeatState;
use crate::state::AppState;
use crate::users::AdminUser;

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Most seats one schedule may have.
pub const MAX_SEATS: i64 = 20_000;
/// Largest price, in KRW (minor units).
pub const MAX_PRICE: i64 = 100_000_000;

/// A positive database id from a path segment.
pub fn parse_id(raw: &str, field: &'static str) -> Result<i64> {
    raw.parse::<i64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| ApiError::invalid(field, "must be a positive integer"))
}

pub(crate) fn path_id(p: Result<Path<String>, PathRejection>, field: &'static str) -> Result<i64> {
    let Path(raw) = p.map_err(|e| ApiError::invalid(field, e.body_text()))?;
    parse_id(&raw, field)
}

pub(crate) fn text(field: &'static str, v: &str, max: usize, required: bool) -> Result<String> {
    let v = v.trim();
    let n = v.chars().count();
    if (required && n == 0) || n > max || v.chars().any(|c| c.is_control() && c != '\n') {
        let need = if required { "1" } else { "0" };
        return Err(ApiError::invalid(field, format!("must be {need} to {max} printable characters")));
    }
    Ok(v.to_owned())
}

pub(crate) fn instant(field: &'static str, v: &str) -> Result<i64> {
    let t = OffsetDateTime::parse(v, &Rfc3339)
        .map_err(|_| ApiError::invalid(field, "must be an RFC 3339 time"))?;
    if !(2000..=2100).contains(&t.year()) {
        return Err(ApiError::invalid(field, "year must be within 2000..=2100"));
    }
    Ok((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

pub(crate) fn rfc3339(ms: i64) -> Value {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .map_or(Value::Null, Value::String)
}

pub(crate) fn body<T>(b: std::result::Result<Json<T>, JsonRejection>) -> Result<T> {
    b.map(|Json(v)| v).map_err(json_rejection)
}

/// `POST /admin/v1/venues` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewVenue {
    name: String,
    address: String,
}

/// Validates and inserts a venue; returns its id, name and address.
pub async fn add_venue(s: &AppState, v: NewVenue) -> Result<(i64, String, String)> {
    let (name, address) = (text("name", &v.name, 200, true)?, text("address", &v.address, 500, true)?);
    let row = sqlx::query("INSERT INTO venues (name, address, created_at) VALUES ($1, $2, $3) RETURNING id")
        .bind(&name)
        .bind(&address)
        .bind(now_ms())
        .fetch_one(&s.db.pool)
        .await
        .context("inserting a venue")?;
    let id = row.get::<i64, _>(0);
    s.search.upsert(&[crate::search::Doc {
        kind: "venue",
        id,
        title: &name,
        artists: &[],
        starts_on: None,
    }])?;
    Ok((id, name, address))
}

/// `POST /admin/v1/venues`
pub async fn create_venue(
    State(s): State<AppState>,
    _a: AdminUser,
    b: std::result::Result<Json<NewVenue>, JsonRejection>,
) -> Result<Response> {
    let (id, name, address) = add_venue(&s, body(b)?).await?;
    Ok((StatusCode::CREATED, Json(json!({"id": id, "name": name, "address": address}))).into_response())
}

/// `POST /admin/v1/performers` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPerformer {
    name: String,
}

/// Validates and inserts a performer; returns its id and name.
pub async fn add_performer(s: &AppState, p: NewPerformer) -> Result<(i64, String)> {
    let name = text("name", &p.name, 200, true)?;
    let row = sqlx::query("INSERT INTO performers (name, created_at) VALUES ($1, $2) RETURNING id")
        .bind(&name)
        .bind(now_ms())
        .fetch_one(&s.db.pool)
        .await
        .context("inserting a performer")?;
    let id = row.get::<i64, _>(0);
    s.search.upsert(&[crate::search::Doc {
        kind: "performer",
        id,
        title: &name,
        artists: &[],
        starts_on: None,
    }])?;
    Ok((id, name))
}

/// `POST /admin/v1/performers`
pub async fn create_performer(
    State(s): State<AppState>,
    _a: AdminUser,
    b: std::result::Result<Json<NewPerformer>, JsonRejection>,
) -> Result<Response> {
    let (id, name) = add_performer(&s, body(b)?).await?;
    Ok((StatusCode::CREATED, Json(json!({"id": id, "name": name}))).into_response())
}

/// A concert as written by admins.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcertInput {
    title: String,
    #[serde(default)]
    artists: Vec<String>,
    category: String,
    #[serde(default)]
    description: String,
    starts_on: String,
    ends_on: String,
    venue_id: i64,
    #[serde(default)]
    performer_ids: Vec<i64>,
    host: String,
    #[serde(default)]
    room: Option<String>,
    /// Seats one buyer may hold and buy per round (and one admission in all); absent: the
    /// backend's `seats_per_buyer`.
    #[serde(default)]
    max_seats_per_buyer: Option<i64>,
}

/// The most a concert's `max_seats_per_buyer` may be.
pub const MAX_SEATS_PER_BUYER: i64 = 10_000;

struct Concert {
    title: String,
    artists: String,
    category: String,
    description: String,
    starts_on: i64,
    ends_on: i64,
    venue_id: i64,
    performer_ids: Vec<i64>,
    host: String,
    room: Option<String>,
    max_seats_per_buyer: Option<i64>,
}

async fn validate(s: &AppState, c: ConcertInput) -> Result<Concert> {
    if c.artists.len() > 20 {
        return Err(ApiError::invalid("artists", "at most 20"));
    }
    let artists = c.artists.iter().map(|a| text("artists", a, 100, true)).collect::<Result<Vec<_>>>()?;
    let (starts_on, ends_on) = (instant("starts_on", &c.starts_on)?, instant("ends_on", &c.ends_on)?);
    if ends_on < starts_on {
        return Err(ApiError::invalid("ends_on", "must not be before starts_on"));
    }
    if let Some(r) = &c.room {
        queue_core::RoomId::parse(r).map_err(|e| ApiError::invalid("room", e.to_string()))?;
    }
    if let Some(n) = c.max_seats_per_buyer
        && !(1..=MAX_SEATS_PER_BUYER).contains(&n)
    {
        return Err(ApiError::invalid(
            "max_seats_per_buyer",
            format!("must be within 1..={MAX_SEATS_PER_BUYER}"),
        ));
    }
    if c.performer_ids.len() > 50 {
        return Err(ApiError::invalid("performer_ids", "at most 50"));
    }
    let exists = |table: &'static str, id: i64| {
        let db = s.db.pool.clone();
        async move {
            let sql = if table == "venues" {
                "SELECT 1 FROM venues WHERE id = $1"
            } else {
                "SELECT 1 FROM performers WHERE id = $1"
            };
            sqlx::query(sql).bind(id).fetch_optional(&db).await.map(|r| r.is_some())
        }
    };
    if !exists("venues", c.venue_id).await.context("checking a venue")? {
        return Err(ApiError::invalid("venue_id", "no such venue"));
    }
    for p in &c.performer_ids {
        if !exists("performers", *p).await.context("checking a performer")? {
            return Err(ApiError::invalid("performer_ids", format!("no performer {p}")));
        }
    }
    Ok(Concert {
        title: text("title", &c.title, 200, true)?,
        artists: serde_json::to_string(&artists).context("encoding artists")?,
        category: text("category", &c.category, 50, true)?,
        description: text("description", &c.description, 5000, false)?,
        starts_on,
        ends_on,
        venue_id: c.venue_id,
        performer_ids: c.performer_ids,
        host: text("host", &c.host, 100, true)?,
        room: c.room,
        max_seats_per_buyer: c.max_seats_per_buyer,
    })
}

fn index_concert(s: &AppState, id: i64, c: &Concert) -> Result<()> {
    let artists: Vec<String> = serde_json::from_str(&c.artists).unwrap_or_default();
    s.search.upsert(&[crate::search::Doc {
        kind: "concert",
        id,
        title: &c.title,
        artists: &artists,
        starts_on: Some(c.starts_on),
    }])
}

async fn set_performers(s: &AppState, concert: i64, ids: &[i64]) -> Result<()> {
    let mut tx = s.db.pool.begin().await.context("starting a transaction")?;
    sqlx::query("DELETE FROM concert_performers WHERE concert_id = $1")
        .bind(concert)
        .execute(&mut *tx)
        .await
        .context("clearing performers")?;
    let mut unique = ids.to_vec();
    unique.sort_unstable();
    unique.dedup();
    for p in unique {
        sqlx::query("INSERT INTO concert_performers (concert_id, performer_id) VALUES ($1, $2)")
            .bind(concert)
            .bind(p)
            .execute(&mut *tx)
            .await
            .context("linking a performer")?;
    }
    tx.commit().await.context("committing performers")
}

/// Validates and inserts a concert; returns its id.
pub async fn add_concert(s: &AppState, input: ConcertInput) -> Result<i64> {
    let c = validate(s, input).await?;
    let now = now_ms();
    let row = sqlx::query(
        "INSERT INTO concerts (title, artists, category, description, starts_on, ends_on, venue_id, host, room, created_at, updated_at, max_seats_per_buyer)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id",
    )
    .bind(&c.title)
    .bind(&c.artists)
    .bind(&c.category)
    .bind(&c.description)
    .bind(c.starts_on)
    .bind(c.ends_on)
    .bind(c.venue_id)
    .bind(&c.host)
    .bind(c.room.clone())
    .bind(now)
    .bind(now)
    .bind(c.max_seats_per_buyer)
    .fetch_one(&s.db.pool)
    .await
    .context("inserting a concert")?;
    let id = row.get::<i64, _>(0);
    set_performers(s, id, &c.performer_ids).await?;
    index_concert(s, id, &c)?;
    s.cache.invalidate(None).await;
    Ok(id)
}

/// `POST /admin/v1/concerts`
pub async fn create_concert(
    State(s): State<AppState>,
    _a: AdminUser,
    b: std::result::Result<Json<ConcertInput>, JsonRejection>,
) -> Result<Response> {
    let id = add_concert(&s, body(b)?).await?;
    let body = concert_json(&s, id).await?.ok_or_else(|| not_found("concert"))?;
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `PUT /admin/v1/concerts/{id}`
pub async fn update_concert(
    State(s): State<AppState>,
    _a: AdminUser,
    p: std::result::Result<Path<String>, PathRejection>,
    b: std::result::Result<Json<ConcertInput>, JsonRejection>,
) -> Result<Response> {
    let id = path_id(p, "id")?;
    let c = validate(&s, body(b)?).await?;
    let res = sqlx::query(
        "UPDATE concerts SET title = $1, artists = $2, category = $3, description = $4, starts_on = $5, ends_on = $6,
         venue_id = $7, host = $8, room = $9, updated_at = $10, max_seats_per_buyer = $12 WHERE id = $11 AND deleted_at IS NULL",
    )
    .bind(&c.title)
    .bind(&c.artists)
    .bind(&c.category)
    .bind(&c.description)
    .bind(c.starts_on)
    .bind(c.ends_on)
    .bind(c.venue_id)
    .bind(&c.host)
    .bind(c.room.clone())
    .bind(now_ms())
    .bind(id)
    .bind(c.max_seats_per_buyer)
    .execute(&s.db.pool)
    .await
    .context("updating a concert")?;
    if res.rows_affected() == 0 {
        return Err(not_found("concert"));
    }
    set_performers(&s, id, &c.performer_ids).await?;
    index_concert(&s, id, &c)?;
    s.cache.invalidate(Some(id)).await;
    Ok(Json(concert_json(&s, id).await?.ok_or_else(|| not_found("concert"))?).into_response())
}

/// `DELETE /admin/v1/concerts/{id}` (soft delete: it disappears from every public read).
pub async fn delete_concert(
    State(s): State<AppState>,
    _a: AdminUser,
    p: std::result::Result<Path<String>, PathRejection>,
) -> Result<Response> {
    let id = path_id(p, "id")?;
    let res = sqlx::query(
        "UPDATE concerts SET deleted_at = $1, updated_at = $1 WHERE id = $2 AND deleted_at IS NULL",
    )
    .bind(now_ms())
    .bind(id)
    .execute(&s.db.pool)
    .await
    .context("deleting a concert")?;
    if res.rows_affected() == 0 {
        return Err(not_found("concert"));
    }
    s.search.remove("concert", id)?;
    s.cache.invalidate(Some(id)).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn json_text(text: String) -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], text).into_response()
}

pub(crate) fn not_found(what: &'static str) -> ApiError {
    ApiError::client(StatusCode::NOT_FOUND, "not_found", format!("no such {what}"))
}

fn concert_row_json(r: &AnyRow) -> Value {
    let artists: Vec<String> = serde_json::from_str(&r.get::<String, _>("artists")).unwrap_or_default();
    json!({
        "id": r.get::<i64, _>("id"),
        "title": r.get::<String, _>("title"),
        "artists": artists,
        "category": r.get::<String, _>("category"),
        "starts_on": rfc3339(r.get::<i64, _>("starts_on")),
        "ends_on": rfc3339(r.get::<i64, _>("ends_on")),
        "host": r.get::<String, _>("host"),
        "room": r.get::<Option<String>, _>("room"),
        "poster": r.get::<Option<String>, _>("poster").map(|k| format!("/posters/{k}")),
        "venue": {"id": r.get::<i64, _>("venue_id"), "name": r.get::<String, _>("venue_name")},
    })
}

const CONCERT_COLUMNS: &str = "c.id, c.title, c.artists, c.category, c.description, c.starts_on, c.ends_on, c.host, c.room, c.poster, c.max_seats_per_buyer, \
     c.venue_id, v.name AS venue_name, v.address AS venue_address";

/// A live concert's full JSON, or `None` (unknown or deleted).
pub async fn concert_json(s: &AppState, id: i64) -> Result<Option<Value>> {
    let sql = format!(
        "SELECT {CONCERT_COLUMNS} FROM concerts c JOIN venues v ON v.id = c.venue_id WHERE c.id = $1 AND c.deleted_at IS NULL"
    );
    let Some(r) = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&s.db.pool)
        .await
        .context("loading a concert")?
    else {
        return Ok(None);
    };
    let mut v = concert_row_json(&r);
    v["description"] = json!(r.get::<String, _>("description"));
    v["max_seats_per_buyer"] =
        json!(r.get::<Option<i64>, _>("max_seats_per_buyer").unwrap_or(s.seats_per_buyer));
    v["venue"]["address"] = json!(r.get::<String, _>("venue_address"));
    let performers = sqlx::query(
        "SELECT p.id, p.name FROM concert_performers cp JOIN performers p ON p.id = cp.performer_id WHERE cp.concert_id = $1 ORDER BY p.id",
    )
    .bind(id)
    .fetch_all(&s.db.pool)
    .await
    .context("loading performers")?;
    v["performers"] =
        performers.iter().map(|p| json!({"id": p.get::<i64, _>(0), "name": p.get::<String, _>(1)})).collect();
    Ok(Some(v))
}

/// `?page=&size=` of the concert list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    page: Option<i64>,
    size: Option<i64>,
}

/// `GET /api/v1/concerts?page=&size=` (pages from 1, size 1..=100, newest start first).
pub async fn list_concerts(
    State(s): State<AppState>,
    q: std::result::Result<Query<PageQuery>, QueryRejection>,
) -> Result<Response> {
    let Query(q) = q.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let page = q.page.unwrap_or(1);
    let size = q.size.unwrap_or(20);
    if !(1..=10_000).contains(&page) {
        return Err(ApiError::invalid("page", "must be within 1..=10000"));
    }
    if !(1..=100).contains(&size) {
        return Err(ApiError::invalid("size", "must be within 1..=100"));
    }
    let key = s.cache.list_key(page, size).await;
    if let Some(hit) = s.cache.get(&key).await {
        return Ok(json_text(hit));
    }
    let total: i64 = sqlx::query("SELECT COUNT(*) FROM concerts WHERE deleted_at IS NULL")
        .fetch_one(&s.db.pool)
        .await
        .context("counting concerts")?
        .get(0);
    let sql = format!(
        "SELECT {CONCERT_COLUMNS} FROM concerts c JOIN venues v ON v.id = c.venue_id WHERE c.deleted_at IS NULL
         ORDER BY c.starts_on DESC, c.id DESC LIMIT $1 OFFSET $2"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(size)
        .bind((page - 1) * size)
        .fetch_all(&s.db.pool)
        .await
        .context("listing concerts")?;
    let items: Vec<Value> = rows.iter().map(concert_row_json).collect();
    let text = json!({"items": items, "page": page, "size": size, "total": total}).to_string();
    s.cache.put(&key, &text).await;
    Ok(json_text(text))
}

/// `GET /api/v1/concerts/{id}`; counts a view once per client per window
/// ([`crate::ranking::Views::record_once`]).
pub async fn get_concert(
    State(s): State<AppState>,
    ip: crate::client::ClientIp,
    headers: axum::http::HeaderMap,
    p: std::result::Result<Path<String>, PathRejection>,
) -> Result<Response> {
    let id = path_id(p, "id")?;
    let key = crate::cache::Cache::detail_key(id);
    let text = match s.cache.get(&key).await {
        Some(hit) => hit,
        None => {
            let concert = concert_json(&s, id).await?.ok_or_else(|| not_found("concert"))?;
            let text = concert.to_string();
            s.cache.put(&key, &text).await;
            text
        }
    };
    let viewer = match s.auth.user_of(&headers) {
        Some(u) => crate::ranking::Viewer::User(u.id),
        None => crate::ranking::Viewer::Addr(ip.bucket()),
    };
    if let Err(e) = s.views.record_once(id, viewer, now_ms()).await {
        // A lost view costs the ranking one count; the page still loads.
        tracing::warn!(error = %e, "recording a view failed");
    }
    Ok(json_text(text))
}

/// `GET /api/v1/rankings/concerts` — the 5 most viewed live concerts of the last 7 days.
pub async fn rankings(State(s): State<AppState>) -> Result<Response> {
    let candidates = s
        .views
        .top(now_ms(), 50)
        .await
        .map_err(|e| ApiError::Internal { context: "reading views", source: Box::new(e) })?;
    let mut items = Vec::new();
    for (id, views) in candidates {
        if items.len() == crate::ranking::TOP {
            break;
        }
        if let Some(mut c) = concert_json(&s, id).await? {
            c["views"] = json!(views);
            c["rank"] = json!(items.len() + 1);
            items.push(c);
        }
    }
    Ok(Json(Value::Array(items)).into_response())
}

/// `GET /api/v1/concerts/{id}/schedules`
pub async fn list_schedules(
    State(s): State<AppState>,
    p: std::result::Result<Path<String>, PathRejection>,
) -> Result<Response> {
    let id = path_id(p, "id")?;
    if concert_json(&s, id).await?.is_none() {
        return Err(not_found("concert"));
    }
    let rows = sqlx::query(
        "SELECT s.id, s.starts_at, (SELECT COUNT(*) FROM seats WHERE schedule_id = s.id) FROM schedules s WHERE s.concert_id = $1 ORDER BY s.starts_at, s.id",
    )
    .bind(id)
    .fetch_all(&s.db.pool)
    .await
    .context("listing schedules")?;
    let items: Vec<Value> = rows
        .iter()
        .map(|r| json!({"id": r.get::<i64, _>(0), "concert_id": id, "starts_at": rfc3339(r.get::<i64, _>(1)), "seats": r.get::<i64, _>(2)}))
        .collect();
    Ok(Json(Value::Array(items)).into_response())
}

/// One section of a seat map.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Section {
    name: String,
    rows: i64,
    seats_per_row: i64,
    grade: String,
    price: i64,
}

/// `POST /admin/v1/concerts/{id}/schedules` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSchedule {
    starts_at: String,
    sections: Vec<Section>,
}

fn row_label(i: i64) -> String {
    // A, B, …, Z, AA, AB, …
    let mut n = i;
    let mut s = Vec::new();
    loop {
        s.push(b'A' + (n % 26) as u8);
        n = n / 26 - 1;
        if n < 0 {
            break;
        }
    }
    s.reverse();
    String::from_utf8(s).unwrap_or_default()
}

/// Validates and inserts a round with its seat map; returns `(id, starts_at_ms, seats)`.
pub async fn add_schedule(s: &AppState, concert: i64, req: NewSchedule) -> Result<(i64, i64, usize)> {
    let starts_at = instant("starts_at", &req.starts_at)?;
    if req.sections.is_empty() || req.sections.len() > 50 {
        return Err(ApiError::invalid("sections", "must be 1 to 50 sections"));
    }
    let mut seats: Vec<(String, String, i64, String, i64)> = Vec::new();
    let mut names = std::collections::HashSet::new();
    for sec in &req.sections {
        let name = text("sections.name", &sec.name, 20, true)?;
        if !names.insert(name.clone()) {
            return Err(ApiError::invalid("sections.name", format!("{name} appears twice")));
        }
        let grade = text("sections.grade", &sec.grade, 20, true)?;
        if !(1..=100).contains(&sec.rows) || !(1..=200).contains(&sec.seats_per_row) {
            return Err(ApiError::invalid("sections.rows", "rows 1..=100 and seats_per_row 1..=200"));
        }
        if !(0..=MAX_PRICE).contains(&sec.price) {
            return Err(ApiError::invalid("sections.price", format!("must be within 0..={MAX_PRICE} (KRW)")));
        }
        for r in 0..sec.rows {
            for n in 1..=sec.seats_per_row {
                seats.push((name.clone(), row_label(r), n, grade.clone(), sec.price));
            }
        }
        if seats.len() as i64 > MAX_SEATS {
            return Err(ApiError::invalid("sections", format!("at most {MAX_SEATS} seats per schedule")));
        }
    }
    if concert_json(s, concert).await?.is_none() {
        return Err(not_found("concert"));
    }
    let mut tx = s.db.pool.begin().await.context("starting a transaction")?;
    let id: i64 = sqlx::query(
        "INSERT INTO schedules (concert_id, starts_at, created_at) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(concert)
    .bind(starts_at)
    .bind(now_ms())
    .fetch_one(&mut *tx)
    .await
    .context("inserting a schedule")?
    .get(0);
    for chunk in seats.chunks(500) {
        let values: Vec<String> = (0..chunk.len())
            .map(|i| {
                let b = i * 6;
                format!("(${}, ${}, ${}, ${}, ${}, ${})", b + 1, b + 2, b + 3, b + 4, b + 5, b + 6)
            })
            .collect();
        let sql = format!(
            "INSERT INTO seats (schedule_id, section, row_label, number, grade, price) VALUES {}",
            values.join(", ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (section, row, number, grade, price) in chunk {
            q = q
                .bind(id)
                .bind(section.clone())
                .bind(row.clone())
                .bind(*number)
                .bind(grade.clone())
                .bind(*price);
        }
        q.execute(&mut *tx).await.context("inserting seats")?;
    }
    tx.commit().await.context("committing a schedule")?;
    Ok((id, starts_at, seats.len()))
}

/// `POST /admin/v1/concerts/{id}/schedules` — a round with its seat map, inserted in bulk.
pub async fn create_schedule(
    State(s): State<AppState>,
    _a: AdminUser,
    p: std::result::Result<Path<String>, PathRejection>,
    b: std::result::Result<Json<NewSchedule>, JsonRejection>,
) -> Result<Response> {
    let concert = path_id(p, "id")?;
    let (id, starts_at, seats) = add_schedule(&s, concert, body(b)?).await?;
    let body = json!({"id": id, "concert_id": concert, "starts_at": rfc3339(starts_at), "seats": seats});
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// One seat as created; seats never change after their schedule is made.
#[derive(Debug)]
pub struct SeatRow {
    /// Seat id.
    pub id: i64,
    /// Section name.
    pub section: String,
    /// Row label.
    pub row: String,
    /// Number in the row.
    pub number: i64,
    /// Price grade.
    pub grade: String,
    /// Price in KRW.
    pub price: i64,
}

/// Schedules' seat layouts kept per instance (bounded, entries expire after `cache::TTL`):
/// seats never change once their schedule is made, so a spike of seat-map reads costs the
/// database a look-up of the schedule (a deleted concert's rounds are gone at once) and the
/// sold seats, not 1,000 rows each time.
///
/// At most [`MAX_LAYOUTS`] are kept (a layout of 1,000 seats is ~150 KB): an on-sale reads a
/// few rounds very often, not thousands.
#[derive(Debug, Default)]
pub struct Layouts(dashmap::DashMap<i64, (std::time::Instant, std::sync::Arc<Vec<SeatRow>>)>);

/// Most seat layouts kept per instance.
pub const MAX_LAYOUTS: usize = 256;

impl Layouts {
    /// The seats of a live schedule (`None`: no such schedule, or its concert is deleted).
    pub async fn get(&self, s: &AppState, schedule: i64) -> Result<Option<std::sync::Arc<Vec<SeatRow>>>> {
        let live = sqlx::query("SELECT 1 FROM schedules s JOIN concerts c ON c.id = s.concert_id WHERE s.id = $1 AND c.deleted_at IS NULL")
            .bind(schedule)
            .fetch_optional(&s.db.pool)
            .await
            .context("loading a schedule")?;
        if live.is_none() {
            return Ok(None);
        }
        if let Some(e) = self.0.get(&schedule)
            && e.0.elapsed() < crate::cache::TTL
        {
            return Ok(Some(e.1.clone()));
        }
        let rows = sqlx::query(
            "SELECT id, section, row_label, number, grade, price FROM seats WHERE schedule_id = $1 ORDER BY id",
        )
        .bind(schedule)
        .fetch_all(&s.db.pool)
        .await
        .context("loading seats")?;
        let seats: Vec<SeatRow> = rows
            .iter()
            .map(|r| SeatRow {
                id: r.get(0),
                section: r.get(1),
                row: r.get(2),
                number: r.get(3),
                grade: r.get(4),
                price: r.get(5),
            })
            .collect();
        let seats = std::sync::Arc::new(seats);
        if self.0.len() >= MAX_LAYOUTS {
            self.0.retain(|_, e| e.0.elapsed() < crate::cache::TTL);
        }
        if self.0.len() < MAX_LAYOUTS {
            self.0.insert(schedule, (std::time::Instant::now(), seats.clone()));
        }
        Ok(Some(seats))
    }
}

/// `GET /api/v1/schedules/{id}/seats`
pub async fn seats(
    State(s): State<AppState>,
    p: std::result::Result<Path<String>, PathRejection>,
) -> Result<Response> {
    let id = path_id(p, "id")?;
    let seats = s.layouts.get(&s, id).await?.ok_or_else(|| not_found("schedule"))?;
    let taken = seat_states(&s, id).await?;
    let items: Vec<Value> = seats
        .iter()
        .map(|seat| {
            json!({
                "seat_id": seat.id,
                "section": seat.section,
                "row": seat.row,
                "number": seat.number,
                "grade": seat.grade,
                "price": seat.price,
                "status": SeatState::label(taken.get(&seat.id)),
            })
        })
        .collect();
    Ok(Json(Value::Array(items)).into_response())
}

/// Seats that are not available: holds from the hold store, sales from the database (the
/// truth for confirmed bookings, even if the hold store lost them).
pub async fn seat_states(s: &AppState, schedule: i64) -> Result<std::collections::HashMap<i64, SeatState>> {
    let mut states = s.holds.states(schedule).await.context("reading seat holds")?;
    let sold = sqlx::query(
        "SELECT rs.seat_id FROM reservation_seats rs JOIN reservations r ON r.id = rs.reservation_id \
         WHERE rs.schedule_id = $1 AND rs.active = 1 AND r.status = 'paid'",
    )
    .bind(schedule)
    .fetch_all(&s.db.pool)
    .await
    .context("loading sold seats")?;
    for r in sold {
        states.insert(r.get::<i64, _>(0), SeatState::Sold);
    }
    Ok(states)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_labels() {
        assert_eq!(row_label(0), "A");
        assert_eq!(row_label(25), "Z");
        assert_eq!(row_label(26), "AA");
        assert_eq!(row_label(27), "AB");
    }
}
