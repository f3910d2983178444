//! The booking pages behind the waiting room (server-rendered with maud, no build step):
//! `/book/` lists the concerts sold through a room with their rounds, and `/book/{schedule}`
//! shows a round's seat map with each seat's live status (available, held, sold). The gateway
//! protects `/book/` with the room, so reaching these pages means being admitted.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};
use sqlx::Row;

use crate::catalog::{not_found, path_id};
use crate::error::{ApiError, Context};
use crate::holds::SeatState;
use crate::state::AppState;

fn page(title: &str, body: Markup) -> Response {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) }
                    style { "body{font-family:system-ui,sans-serif;max-width:60rem;margin:1rem auto;padding:0 1rem}\
                        .seats{display:grid;grid-template-columns:repeat(auto-fill,minmax(2.6rem,1fr));gap:.25rem}\
                        .seat{padding:.3rem;text-align:center;border-radius:.3rem;font-size:.8rem}\
                        .available{background:#d7f5dd}.held{background:#ffe9a8}.sold{background:#f3c1c1}" }
                }
                body { (body) }
            }
        }
        .into_string(),
    )
    .into_response()
}

/// `GET /book/`: concerts on sale through a waiting room, with their rounds.
pub async fn index(State(s): State<AppState>) -> Result<Response, ApiError> {
    let rows = sqlx::query(
        "SELECT c.id, c.title, c.room, sc.id, sc.starts_at FROM concerts c JOIN schedules sc ON sc.concert_id = c.id \
         WHERE c.deleted_at IS NULL AND c.room IS NOT NULL ORDER BY c.starts_on, c.id, sc.starts_at LIMIT 200",
    )
    .fetch_all(&s.db.pool)
    .await
    .context("listing bookable rounds")?;
    Ok(page(
        "Booking",
        html! {
            h1 { "Booking" }
            p { "You are through the waiting room. Pick a round to see its seats; reserve with "
                code { "POST /api/v1/reservations" } "." }
            @if rows.is_empty() { p { "Nothing is on sale through a waiting room right now." } }
            ul {
                @for r in &rows {
                    li {
                        (r.get::<String, _>(1)) " (room " code { (r.get::<String, _>(2)) } ") — "
                        a href={ "/book/" (r.get::<i64, _>(3)) } { "round " (r.get::<i64, _>(3)) }
                        " " (crate::catalog::rfc3339(r.get(4)).as_str().unwrap_or(""))
                    }
                }
            }
        },
    ))
}

/// `GET /book/{schedule}`: the seat map with live status.
pub async fn seats(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = path_id(p, "schedule")?;
    let title: Option<String> = sqlx::query_scalar(
        "SELECT c.title FROM schedules sc JOIN concerts c ON c.id = sc.concert_id WHERE sc.id = $1 AND c.deleted_at IS NULL",
    )
    .bind(id)
    .fetch_optional(&s.db.pool)
    .await
    .context("loading a round")?;
    let title = title.ok_or_else(|| not_found("schedule"))?;
    let seats = sqlx::query(
        "SELECT id, section, row_label, number, grade, price FROM seats WHERE schedule_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(&s.db.pool)
    .await
    .context("loading seats")?;
    let states = s.holds.states(id).await.context("reading holds")?;
    let status = |seat: i64| match states.get(&seat) {
        Some(SeatState::Sold) => "sold",
        Some(SeatState::Held) => "held",
        None => "available",
    };
    let free = seats.iter().filter(|r| status(r.get(0)) == "available").count();
    Ok(page(
        &title,
        html! {
            h1 { (title) }
            p { (free) " of " (seats.len()) " seats available. " a href="/book/" { "All rounds" } }
            div.seats role="list" aria-label="Seat map" {
                @for r in &seats {
                    @let seat: i64 = r.get(0);
                    div class={ "seat " (status(seat)) } role="listitem"
                        title={ (r.get::<String, _>(1)) " " (r.get::<String, _>(2)) "-" (r.get::<i64, _>(3)) " · " (r.get::<String, _>(4)) " · " (r.get::<i64, _>(5)) " KRW · " (status(seat)) } {
                        (r.get::<String, _>(2)) (r.get::<i64, _>(3))
                    }
                }
            }
        },
    ))
}
