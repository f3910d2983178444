//! The storefront (server-rendered with maud, no build step; Korean or English by
//! `Accept-Language`): `/` lists concerts and searches them, `/concerts/{id}` shows a concert
//! and its rounds, `/me` a buyer's reservations, tickets and live notifications. The booking
//! pages sit behind the waiting room (the gateway protects `/book/`): `/book/` lists the
//! concerts sold through a room, `/book/{schedule}` is a round's seat map with live status and
//! the checkout (sign in, hold seats, apply a coupon, pay on the provider).
//!
//! Every page carries a strict [`CSP`] (scripts and styles only from this origin, no inline
//! code, no framing) with `X-Frame-Options`, `X-Content-Type-Options` and `Referrer-Policy`,
//! so an injected tag cannot run: the scripts and the stylesheet are served from
//! `/assets/{name}` ([`asset`]), and the words the scripts show travel in a JSON data block,
//! which browsers do not execute and CSP so does not govern.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use queue_core::lang::Lang;
use serde::Deserialize;
use sqlx::Row;

use crate::catalog::{not_found, path_id};
use crate::error::{ApiError, Context};
use crate::holds::SeatState;
use crate::state::AppState;

fn lang(headers: &HeaderMap) -> Lang {
    Lang::from_accept_language(
        headers.get(header::ACCEPT_LANGUAGE).and_then(|v| v.to_str().ok()).unwrap_or(""),
    )
}

fn t(l: Lang, en: &'static str, ko: &'static str) -> &'static str {
    if l == Lang::Ko { ko } else { en }
}

fn nav(l: Lang) -> Markup {
    html! {
        nav { a href="/" { (t(l, "Concerts", "공연")) } " · " a href="/book/" { (t(l, "On sale now", "예매 중")) } " · " a href="/me" { (t(l, "My bookings", "내 예매")) } }
    }
}

/// The pages' Content-Security-Policy. `form-action` and `frame-ancestors` do not fall back
/// to `default-src`, so they are named.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'";

/// The security headers of every storefront response.
fn secure(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    r
}

fn page_in(l: Lang, title: &str, body: Markup) -> Response {
    secure(
        Html(
            html! {
                (DOCTYPE)
                html lang=(l.code()) {
                    head {
                        meta charset="utf-8";
                        meta name="viewport" content="width=device-width, initial-scale=1";
                        title { (title) }
                        link rel="stylesheet" href="/assets/site.css";
                    }
                    body { (body) }
                }
            }
            .into_string(),
        )
        .into_response(),
    )
}

const SITE_CSS: &str =
    "body{font-family:system-ui,sans-serif;max-width:60rem;margin:1rem auto;padding:0 1rem}
.seats{display:grid;grid-template-columns:repeat(auto-fill,minmax(2.6rem,1fr));gap:.25rem}
.seat{padding:.3rem;text-align:center;border-radius:.3rem;font-size:.8rem}
.available{background:#d7f5dd}.held{background:#ffe9a8}.sold{background:#f3c1c1}
.seat.available{cursor:pointer}.seat.picked{outline:3px solid #2563eb}#msg{min-height:1.5rem}
";

/// `GET /assets/{name}`: the pages' stylesheet and scripts. `no-cache` because their names
/// carry no version: a browser revalidates rather than run an old script on a new page.
pub async fn asset(p: Result<Path<String>, PathRejection>) -> Response {
    let name = p.map(|Path(n)| n).unwrap_or_default();
    let (body, kind) = match name.as_str() {
        "site.css" => (SITE_CSS, "text/css; charset=utf-8"),
        "common.js" => (COMMON_SCRIPT, "text/javascript; charset=utf-8"),
        "checkout.js" => (CHECKOUT_SCRIPT, "text/javascript; charset=utf-8"),
        "me.js" => (ME_SCRIPT, "text/javascript; charset=utf-8"),
        _ => return secure(crate::error::body(StatusCode::NOT_FOUND, "not_found", "no such asset")),
    };
    let headers = [(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "no-cache")];
    secure((headers, body).into_response())
}

/// `GET /book/`: concerts on sale through a waiting room, with their rounds.
pub async fn index(State(s): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let l = lang(&headers);
    let rows = sqlx::query(
        "SELECT c.id, c.title, c.room, sc.id, sc.starts_at FROM concerts c JOIN schedules sc ON sc.concert_id = c.id \
         WHERE c.deleted_at IS NULL AND c.room IS NOT NULL ORDER BY c.starts_on, c.id, sc.starts_at LIMIT 200",
    )
    .fetch_all(&s.db.pool)
    .await
    .context("listing bookable rounds")?;
    Ok(page_in(
        l,
        t(l, "Booking", "예매"),
        html! {
            (nav(l))
            h1 { (t(l, "Booking", "예매")) }
            p { (t(l, "You are through the waiting room. Pick a round to choose seats.", "대기열을 통과했습니다. 회차를 골라 좌석을 선택하세요.")) }
            @if rows.is_empty() { p { (t(l, "Nothing is on sale through a waiting room right now.", "지금 대기열로 판매 중인 공연이 없습니다.")) } }
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
    headers: HeaderMap,
    p: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let l = lang(&headers);
    let id = path_id(p, "schedule")?;
    let title: Option<String> = sqlx::query_scalar(
        "SELECT c.title FROM schedules sc JOIN concerts c ON c.id = sc.concert_id WHERE sc.id = $1 AND c.deleted_at IS NULL",
    )
    .bind(id)
    .fetch_optional(&s.db.pool)
    .await
    .context("loading a round")?;
    let title = title.ok_or_else(|| not_found("schedule"))?;
    let seats = s.layouts.get(&s, id).await?.ok_or_else(|| not_found("schedule"))?;
    let states = crate::catalog::seat_states(&s, id).await?;
    let status = |seat: i64| SeatState::label(states.get(&seat));
    let free = seats.iter().filter(|r| status(r.id) == "available").count();
    Ok(page_in(
        l,
        &title,
        html! {
            (nav(l))
            h1 { (title) }
            p { span #free { (free) } " / " (seats.len()) " " (t(l, "seats available.", "석 예매 가능.")) " " a href="/book/" { (t(l, "All rounds", "모든 회차")) } }
            form #auth {
                label { (t(l, "Email", "이메일")) " " input name="email" type="email" required autocomplete="email"; }
                " " label { (t(l, "Password", "비밀번호")) " " input name="password" type="password" required minlength="8" autocomplete="current-password"; }
                " " button { (t(l, "Sign in or up", "로그인 / 가입")) }
            }
            p {
                label { (t(l, "Coupon", "쿠폰")) " " select #coupon { option value="" { (t(l, "No coupon", "쿠폰 없음")) } } }
                " " span #offers {}
            }
            p { button #pay type="button" { (t(l, "Hold and pay", "선택 좌석 결제")) } }
            p #msg role="status" aria-live="polite" {}
            h2 { (t(l, "Notifications", "알림")) }
            ul #events aria-live="polite" {}
            div.seatmap data-schedule=(id) {
                @for section in seats.chunk_by(|a, b| a.section == b.section) {
                    @let first = &section[0];
                    h3 { (first.section) " · " (first.grade) " · " (first.price) " KRW" }
                    div.seats role="list" aria-label={ (t(l, "Seats in section", "구역 좌석")) " " (first.section) } {
                        @for seat in section {
                            div class={ "seat " (status(seat.id)) } role="listitem" data-seat=(seat.id)
                                title={ (seat.section) " " (seat.row) "-" (seat.number) " · " (seat.grade) " · " (seat.price) " KRW · " (status(seat.id)) } {
                                (seat.row) (seat.number)
                            }
                        }
                    }
                }
            }
            (scripts(l, "/assets/checkout.js"))
        },
    ))
}

/// `/?q=` query.
#[derive(Debug, Deserialize)]
pub struct HomeQuery {
    q: Option<String>,
}

/// `GET /`: upcoming concerts, or search results for `q`.
pub async fn home(
    State(s): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<HomeQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let l = lang(&headers);
    let q = q
        .ok()
        .and_then(|Query(h)| h.q)
        .map(|q| q.trim().chars().take(100).collect::<String>())
        .filter(|q| !q.is_empty());
    let items: Vec<(i64, String, String)> = match &q {
        Some(q) => s
            .search
            .search(q, None, None, Some("concert"))?
            .into_iter()
            .map(|(_, id, title, _)| (id, title, String::new()))
            .take(50)
            .collect(),
        None => sqlx::query("SELECT id, title, starts_on FROM concerts WHERE deleted_at IS NULL ORDER BY starts_on, id LIMIT 50")
            .fetch_all(&s.db.pool)
            .await
            .context("listing concerts")?
            .iter()
            .map(|r| (r.get(0), r.get(1), crate::catalog::rfc3339(r.get(2)).as_str().unwrap_or("").to_owned()))
            .collect(),
    };
    Ok(page_in(
        l,
        t(l, "Concerts", "공연"),
        html! {
            (nav(l))
            h1 { (t(l, "Concerts", "공연")) }
            form action="/" method="get" role="search" {
                label { (t(l, "Search", "검색")) " " input name="q" type="search" value=(q.clone().unwrap_or_default()); }
                " " button { (t(l, "Search", "검색")) }
            }
            @if items.is_empty() { p { (t(l, "Nothing found.", "찾은 공연이 없습니다.")) } }
            ul { @for (id, title, when) in &items { li { a href={ "/concerts/" (id) } { (title) } " " small { (when) } } } }
        },
    ))
}

/// `GET /concerts/{id}`: a concert and its rounds.
pub async fn concert(
    State(s): State<AppState>,
    headers: HeaderMap,
    p: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let l = lang(&headers);
    let id = path_id(p, "id")?;
    let c = crate::catalog::concert_json(&s, id).await?.ok_or_else(|| not_found("concert"))?;
    let rounds = sqlx::query("SELECT id, starts_at FROM schedules WHERE concert_id = $1 ORDER BY starts_at")
        .bind(id)
        .fetch_all(&s.db.pool)
        .await
        .context("listing rounds")?;
    let title = c["title"].as_str().unwrap_or("").to_owned();
    Ok(page_in(
        l,
        &title,
        html! {
            (nav(l))
            h1 { (title) }
            p { (c["venue"]["name"].as_str().unwrap_or("")) " · " (c["category"].as_str().unwrap_or("")) }
            p { (c["description"].as_str().unwrap_or("")) }
            @if c["room"].is_string() { p { strong { (t(l, "Sold through a waiting room: you queue first.", "대기열을 거쳐 예매합니다.")) } } }
            h2 { (t(l, "Rounds", "회차")) }
            ul { @for r in &rounds { li { a href={ "/book/" (r.get::<i64, _>(0)) } { (crate::catalog::rfc3339(r.get(1)).as_str().unwrap_or("")) } } } }
        },
    ))
}

/// The words the scripts show, in the page's language, and the notification kinds they
/// listen for; then the common script and the page's own (`src`).
fn scripts(l: Lang, src: &'static str) -> Markup {
    let words = serde_json::json!({
        "signed_in": t(l, "Signed in.", "로그인했습니다."),
        "sign_in_first": t(l, "Sign in first.", "먼저 로그인하세요."),
        "sign_in_on_booking": t(l, "Sign in on a booking page first.", "예매 페이지에서 먼저 로그인하세요."),
        "pick_seat": t(l, "Pick a seat.", "좌석을 고르세요."),
        "picked": t(l, "seat(s) picked", "석 선택"),
        "held_until": t(l, "Held until", "좌석 확보, 만료:"),
        "paid": t(l, "Paid {amount} KRW: reservation {id} is {status}.", "{amount}원 결제 완료: 예매 {id} 상태 {status}."),
        "see_bookings": t(l, "See my bookings", "내 예매 보기"),
        "no_coupon": t(l, "No coupon", "쿠폰 없음"),
        "get_coupon": t(l, "Get coupon", "쿠폰 받기"),
        "left": t(l, "left", "장 남음"),
        "off": t(l, "off", "할인"),
        "coupon_issued": t(l, "Coupon issued: it is selected for this order.", "쿠폰을 받았습니다. 이 주문에 적용됩니다."),
        "reservations": t(l, "Reservations", "예매"),
        "tickets": t(l, "Tickets", "티켓"),
        "seat": t(l, "seat", "좌석"),
        "cancel": t(l, "Cancel", "취소"),
        "paid_word": t(l, "paid", "결제"),
        "kinds": {
            "reservation.held": t(l, "Seats held", "좌석 확보"),
            "reservation.cancelled": t(l, "Reservation cancelled", "예매 취소"),
            "payment.paid": t(l, "Payment confirmed", "결제 완료"),
            "payment.failed": t(l, "Payment failed", "결제 실패"),
            "payment.refunded": t(l, "Payment refunded", "환불 완료"),
            "coupon.issued": t(l, "Coupon issued", "쿠폰 발급"),
            "ticket.issued": t(l, "Ticket issued", "티켓 발급"),
        },
    });
    html! {
        script #words type="application/json" { (PreEscaped(words.to_string().replace('<', "\\u003c"))) }
        script src="/assets/common.js" {}
        script src=(src) {}
    }
}

/// What both scripts use: the words, the API call (a stale sign-in is dropped on `401`) and
/// the live notifications of the signed-in buyer.
const COMMON_SCRIPT: &str = r##"
const T = JSON.parse(document.getElementById('words').textContent);
let token = localStorage.getItem('tb-token');
async function api(method, path, body) {
  const r = await fetch(path, { method, headers: Object.assign({ 'content-type': 'application/json' }, token ? { authorization: 'Bearer ' + token } : {}),
    body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await r.json().catch(() => ({}));
  if (r.status === 401 && token) { token = null; localStorage.removeItem('tb-token'); throw new Error(T.sign_in_first); }
  if (!r.ok) throw new Error((data.error && data.error.message) || r.status);
  return data;
}
let stream = null;
function listen(onEvent) {
  if (stream || !token) return;
  stream = new EventSource('/api/v1/me/notifications/stream?access_token=' + encodeURIComponent(token));
  for (const kind of Object.keys(T.kinds)) {
    stream.addEventListener(kind, () => {
      const li = document.createElement('li');
      li.dataset.kind = kind;
      li.textContent = new Date().toLocaleTimeString() + ' ' + T.kinds[kind];
      document.getElementById('events').prepend(li);
      if (onEvent) onEvent(kind);
    });
  }
}
"##;

const ME_SCRIPT: &str = r##"
const out = document.getElementById('mine');
const li = (text, button) => { const el = document.createElement('li'); el.textContent = text; if (button) el.append(' ', button); return el; };
async function load() {
  if (!token) { out.textContent = T.sign_in_on_booking; return; }
  try {
    const res = await api('GET', '/api/v1/me/reservations');
    const tix = await api('GET', '/api/v1/me/tickets');
    const h2 = (t) => { const el = document.createElement('h2'); el.textContent = t; return el; };
    const rl = document.createElement('ul'), tl = document.createElement('ul');
    rl.id = 'reservations'; tl.id = 'tickets';
    for (const r of res.items) {
      let b = null;
      if (r.status === 'held' || r.status === 'paid') { b = document.createElement('button'); b.dataset.id = r.reservation_id; b.textContent = T.cancel; }
      const paid = r.paid_amount !== undefined && r.paid_amount !== r.amount ? ' (' + T.paid_word + ' ' + r.paid_amount + ' KRW)' : '';
      const item = li(r.reservation_id + ' · ' + r.status + ' · ' + r.amount + ' KRW' + paid, b);
      item.dataset.status = r.status;
      rl.append(item);
    }
    for (const x of tix.items) tl.append(li(x.ticket_id + ' · ' + T.seat + ' ' + x.seat_id));
    out.replaceChildren(h2(T.reservations), rl, h2(T.tickets), tl);
  } catch (e) { out.textContent = e.message; }
}
out.addEventListener('click', async (ev) => {
  const id = ev.target.dataset && ev.target.dataset.id;
  if (!id) return;
  try { await api('DELETE', '/api/v1/reservations/' + id); } catch (e) { out.prepend(e.message); }
  load();
});
listen(load);
load();
"##;

/// `GET /me`: the buyer's reservations (with cancel), tickets and live notifications.
pub async fn me(headers: HeaderMap) -> Response {
    let l = lang(&headers);
    page_in(
        l,
        t(l, "My bookings", "내 예매"),
        html! {
            (nav(l))
            h1 { (t(l, "My bookings", "내 예매")) }
            div #mine aria-live="polite" {}
            h2 { (t(l, "Notifications", "알림")) }
            ul #events aria-live="polite" {}
            (scripts(l, "/assets/me.js"))
        },
    )
}

/// The checkout on a seat map: sign in or up, pick seats, claim or choose a coupon, hold the
/// seats and pay; notifications arrive live below.
const CHECKOUT_SCRIPT: &str = r##"
const schedule = parseInt(document.querySelector('.seatmap').dataset.schedule, 10);
const msg = (t) => { document.getElementById('msg').textContent = t; };
const picked = new Set();
async function coupons() {
  const sel = document.getElementById('coupon'), offers = document.getElementById('offers');
  try {
    const open = (await api('GET', '/api/v1/coupons')).items;
    const mine = token ? (await api('GET', '/api/v1/me/coupons')).items : [];
    const keep = sel.value;
    const label = (c) => (c.discount_kind === 'amount' ? c.discount + ' KRW ' : c.discount + '% ') + T.off;
    sel.replaceChildren(new Option(T.no_coupon, ''), ...mine.filter((c) => c.status === 'issued').map((c) => new Option(label(c), c.coupon_id)));
    sel.value = keep;
    if (sel.selectedIndex < 0) sel.value = '';
    const have = new Set(mine.map((c) => c.campaign_id));
    offers.replaceChildren(...open.filter((o) => !have.has(o.campaign_id) && o.remaining > 0).map((o) => {
      const b = document.createElement('button');
      b.type = 'button'; b.dataset.campaign = o.campaign_id;
      b.textContent = T.get_coupon + ': ' + o.name + ' (' + o.remaining + ' ' + T.left + ')';
      return b;
    }));
  } catch (e) { msg(e.message); }
}
document.getElementById('offers').addEventListener('click', async (ev) => {
  const id = ev.target.dataset && ev.target.dataset.campaign;
  if (!id) return;
  if (!token) { msg(T.sign_in_first); return; }
  try {
    const c = await api('POST', '/api/v1/coupons/' + id + '/issue');
    await coupons();
    document.getElementById('coupon').value = c.coupon_id;
    msg(T.coupon_issued);
  } catch (e) { msg(e.message); }
});
document.querySelector('.seatmap').addEventListener('click', (ev) => {
  const el = ev.target.closest('.seat.available');
  if (!el) return;
  const id = parseInt(el.dataset.seat, 10);
  if (picked.has(id)) { picked.delete(id); el.classList.remove('picked'); } else if (picked.size < 10) { picked.add(id); el.classList.add('picked'); }
  msg(picked.size + ' ' + T.picked);
});
document.getElementById('auth').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const f = ev.target, body = { email: f.email.value, password: f.password.value };
  try {
    let r;
    try { r = await api('POST', '/api/v1/auth/login', body); }
    catch (_) { r = await api('POST', '/api/v1/auth/signup', Object.assign({ name: f.email.value.split('@')[0] }, body)); }
    token = r.token; localStorage.setItem('tb-token', token); msg(T.signed_in);
    listen(); coupons();
  } catch (e) { msg(e.message); }
});
document.getElementById('pay').addEventListener('click', async () => {
  if (!token) { msg(T.sign_in_first); return; }
  if (picked.size === 0) { msg(T.pick_seat); return; }
  try {
    const held = await api('POST', '/api/v1/reservations', { schedule_id: schedule, seat_ids: [...picked] });
    msg(T.held_until + ' ' + held.expires_at);
    const coupon = document.getElementById('coupon').value;
    const order = await api('POST', '/api/v1/payments/prepare', coupon ? { reservation_id: held.reservation_id, coupon_id: coupon } : { reservation_id: held.reservation_id });
    const paid = await api('POST', '/api/v1/payments/confirm', { payment_key: 'pk_web_' + Date.now(), order_id: order.order_id, amount: order.amount });
    for (const id of picked) document.querySelector('[data-seat="' + id + '"]').className = 'seat sold';
    picked.clear();
    document.getElementById('free').textContent = document.querySelectorAll('.seat.available').length;
    msg(T.paid.replace('{amount}', order.amount).replace('{id}', held.reservation_id).replace('{status}', paid.status));
    const a = document.createElement('a'); a.href = '/me'; a.textContent = T.see_bookings;
    document.getElementById('msg').append(' ', a);
    coupons();
  } catch (e) { msg(e.message); }
});
listen();
coupons();
"##;
