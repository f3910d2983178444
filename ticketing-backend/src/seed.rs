//! Demo data for the embedded default: on an empty catalog, a starter set so the demo is
//! alive — venues, performers, 50 concerts with Korean and English titles over the coming
//! months, and one hot concert (room `demo`) with 1,000 seats and a
//! first-come coupon campaign for it. Everything goes through the
//! same validated inserts as the admin API.

use serde_json::json;
use sqlx::Row;

use crate::catalog::{add_concert, add_performer, add_schedule, add_venue};
use crate::db::now_ms;
use crate::error::{ApiError, Context};
use crate::state::AppState;

fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, ApiError> {
    serde_json::from_value(v).context("building demo data")
}

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

const VENUES: [(&str, &str); 5] = [
    ("KSPO DOME", "서울 송파구 올림픽로 424"),
    ("세종문화회관 대극장", "서울 종로구 세종대로 175"),
    ("Blue Square", "서울 용산구 이태원로 294"),
    ("Charlotte Theater", "서울 송파구 올림픽로 240"),
    ("부산 벡스코 오디토리움", "부산 해운대구 APEC로 55"),
];

const PERFORMERS: [&str; 12] = [
    "Neon Tides",
    "하늘빛 오케스트라",
    "서울 재즈 콰르텟",
    "The Paper Lanterns",
    "은하수 밴드",
    "Luna Park",
    "바람의 노래",
    "Midnight Express Choir",
    "한강 스트링스",
    "Velvet Harbor",
    "달빛 소나타",
    "Northern Lights Trio",
];

const TITLES: [&str; 10] = [
    "여름 공연",
    "Summer Live",
    "겨울 콘서트",
    "Winter Gala",
    "봄날의 재즈",
    "Jazz Night",
    "가을 클래식",
    "Autumn Strings",
    "록 페스티벌",
    "Rock Festival",
];

const CATEGORIES: [&str; 4] = ["concert", "classical", "jazz", "musical"];

/// Seeds the catalog if it is empty; returns whether it did.
pub async fn seed_if_empty(s: &AppState) -> Result<bool, ApiError> {
    let n: i64 = sqlx::query("SELECT COUNT(*) FROM concerts")
        .fetch_one(&s.db.pool)
        .await
        .context("counting concerts")?
        .get(0);
    if n > 0 {
        return Ok(false);
    }
    let mut venues = Vec::new();
    for (name, address) in VENUES {
        venues.push(add_venue(s, from(json!({"name": name, "address": address}))?).await?.0);
    }
    let mut performers = Vec::new();
    for name in PERFORMERS {
        performers.push(add_performer(s, from(json!({"name": name}))?).await?.0);
    }
    let day = 86_400_000i64;
    let base = now_ms() / day * day + 10 * 3_600_000; // 19:00 KST
    for i in 0..50i64 {
        let p = performers[(i as usize) % performers.len()];
        let artist = PERFORMERS[(i as usize) % PERFORMERS.len()];
        let title = format!("{} {} — {}", TITLES[(i as usize) % TITLES.len()], 2026 + i % 2, artist);
        let starts = base + (7 + i * 3) * day;
        let concert = add_concert(
            s,
            from(json!({
                "title": title, "artists": [artist], "category": CATEGORIES[(i as usize) % CATEGORIES.len()],
                "description": format!("{artist}의 무대. A night with {artist}."),
                "starts_on": rfc3339(starts), "ends_on": rfc3339(starts + 3 * 3_600_000),
                "venue_id": venues[(i as usize) % venues.len()], "performer_ids": [p],
                "host": format!("host-{}", i % 5 + 1)
            }))?,
        )
        .await?;
        let sections = json!([
            {"name": "R", "rows": 5, "seats_per_row": 10, "grade": "R", "price": 99_000},
            {"name": "S", "rows": 5, "seats_per_row": 10, "grade": "S", "price": 77_000}
        ]);
        add_schedule(s, concert, from(json!({"starts_at": rfc3339(starts), "sections": sections}))?).await?;
    }
    let hot_start = base + 30 * day;
    let hot = add_concert(
        s,
        from(json!({
            "title": "Neon Tides World Tour — Seoul (네온 타이즈 월드 투어 서울)", "artists": ["Neon Tides"],
            "category": "concert", "description": "The hot on-sale of the demo: its booking sits behind the waiting room.",
            "starts_on": rfc3339(hot_start), "ends_on": rfc3339(hot_start + day),
            "venue_id": venues[0], "performer_ids": [performers[0]], "host": "host-1", "room": "demo"
        }))?,
    )
    .await?;
    let sections = json!([
        {"name": "VIP", "rows": 10, "seats_per_row": 25, "grade": "VIP", "price": 198_000},
        {"name": "R", "rows": 10, "seats_per_row": 25, "grade": "R", "price": 165_000},
        {"name": "S", "rows": 10, "seats_per_row": 25, "grade": "S", "price": 132_000},
        {"name": "A", "rows": 10, "seats_per_row": 25, "grade": "A", "price": 99_000}
    ]);
    for d in [0, 1] {
        add_schedule(s, hot, from(json!({"starts_at": rfc3339(hot_start + d * day), "sections": sections}))?)
            .await?;
    }
    // A first-come coupon for the hot on-sale, open until the show.
    crate::coupons::add_campaign(
        s,
        from(json!({
            "name": "Neon Tides opening week: 10,000 KRW off", "discount_kind": "amount", "discount": 10_000,
            "stock": 500, "valid_from": rfc3339(now_ms() - day), "valid_until": rfc3339(hot_start)
        }))?,
    )
    .await?;
    tracing::info!(concerts = 51, campaigns = 1, "demo data seeded");
    Ok(true)
}
