//! The waiting page `/rooms/{room}`: server-rendered (maud), no build step.
//!
//! Without JavaScript it works by itself: the first visit joins (setting the ticket cookie),
//! the page refreshes at the suggested poll interval, and once admitted the server sets the
//! admission cookie and redirects (303) to the page asked for (`?return=`) or the room's
//! target. With JavaScript it follows the ticket over SSE, falling back to polling, and
//! reloads itself on admission so the same server-side redirect happens. Korean or English by
//! `Accept-Language`.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use queue_core::{RoomConfig, RoomId, RoomPhase, TicketState, TicketStatus};
use serde::Deserialize;

use queue_core::lang::Lang;

use crate::api::room::{self, Holder, path_err, room_id};
use crate::error::GatewayError;
use crate::policy::admission;
use crate::policy::rate_limit::Api;
use crate::state::App;
use crate::transport::PeerAddr;

/// Query of the waiting page.
#[derive(Debug, Deserialize, Default)]
pub struct PageQuery {
    /// Where to go once admitted (a local path).
    #[serde(rename = "return")]
    ret: Option<String>,
    /// The first position this browser saw (for the progress bar without JS).
    p0: Option<u64>,
}

fn lang_of(headers: &HeaderMap) -> Lang {
    Lang::from_accept_language(
        headers.get(header::ACCEPT_LANGUAGE).and_then(|v| v.to_str().ok()).unwrap_or(""),
    )
}

/// The page's words in `lang`.
fn t(lang: Lang, key: &str) -> &'static str {
    let (ko, en) = match key {
        "title" => ("대기실", "Waiting room"),
        "intro" => (
            "접속자가 많아 순서대로 입장합니다. 이 페이지를 닫지 마세요.",
            "Many people are here, so we let you in in order. Please keep this page open.",
        ),
        "position" => ("내 앞 대기 순번", "Your place in line"),
        "eta" => ("예상 대기 시간", "Estimated wait"),
        "progress" => ("진행률", "Progress"),
        "scheduled" => (
            "아직 열리지 않았습니다. 열리면 순서대로 입장합니다.",
            "Not open yet. When it opens, people are let in in order.",
        ),
        "opens_in" => ("열리기까지", "Opens in"),
        "paused" => (
            "입장이 잠시 멈췄습니다. 순번은 그대로 유지됩니다.",
            "Admission is paused for a moment. You keep your place.",
        ),
        "admitted" => ("입장 차례입니다. 이동합니다…", "It is your turn. Taking you there…"),
        "expired" => ("대기가 끝났습니다. 다시 줄을 서 주세요.", "Your turn has passed. Please queue again."),
        "requeue" => ("다시 줄 서기", "Queue again"),
        "drawing" => ("오픈 시각에 추첨으로 순서가 정해집니다.", "The order is drawn at opening time."),
        "minutes" => ("분", "min"),
        "seconds" => ("초", "s"),
        "live" => ("실시간으로 갱신됩니다.", "Updates live."),
        "no_room_title" => ("대기실이 없습니다", "No such waiting room"),
        "no_room" => (
            "주소를 다시 확인해 주세요. 이미 끝난 판매일 수 있습니다.",
            "Please check the address: this sale may have ended.",
        ),
        "busy_title" => ("접속이 많습니다", "Very busy right now"),
        "busy" => (
            "요청이 너무 많아 잠시 기다려야 합니다. 이 페이지를 닫지 마세요.",
            "Too many requests at once. Please keep this page open.",
        ),
        "trouble_title" => ("일시적인 문제", "A passing problem"),
        "trouble" => (
            "잠시 문제가 생겼습니다. 이 페이지를 닫지 마세요.",
            "Something went wrong on our side. Please keep this page open.",
        ),
        "bad_address_title" => ("잘못된 주소", "Not a valid address"),
        "bad_address" => ("주소를 다시 확인해 주세요.", "Please check the address."),
        "retrying" => ("다시 시도까지", "Trying again in"),
        "sign_in_title" => ("로그인 정보 오류", "Sign-in not valid"),
        "sign_in" => (
            "로그인 정보가 올바르지 않거나 만료되었습니다. 다시 로그인해 주세요.",
            "Your sign-in is not valid or has expired. Please sign in again.",
        ),
        _ => ("", ""),
    };
    match lang {
        Lang::Ko => ko,
        Lang::En => en,
    }
}

fn human(lang: Lang, seconds: u64) -> String {
    if seconds >= 120 {
        format!("{} {}", seconds.div_ceil(60), t(lang, "minutes"))
    } else {
        format!("{seconds} {}", t(lang, "seconds"))
    }
}

/// The page to go to once admitted: a safe local `return`, else the room's target.
fn destination(q: &PageQuery, cfg: Option<&RoomConfig>) -> String {
    let fallback = cfg.map_or("/".to_string(), |c| c.target.clone());
    match &q.ret {
        Some(r)
            if r.len() <= 2048
                && crate::policy::screen::canonical_path(r.split('?').next().unwrap_or(""))
                    .is_ok_and(|canon| canon == r.split('?').next().unwrap_or(""))
                && !r.contains(['\r', '\n']) =>
        {
            r.clone()
        }
        _ => fallback,
    }
}

/// `GET /rooms/{room}`. A browser that cannot be shown its place (an unknown room, a rate
/// limit, a store outage) gets the error as a page in its language, with the same status and
/// headers; a page that a wait can mend (`429`, `5xx`) reloads itself when `Retry-After`
/// says, so a crowd refreshing its waiting pages is not stranded on an error. Other clients
/// get the contract's JSON error.
pub async fn page(
    State(app): State<Arc<App>>,
    peer: Option<axum::Extension<PeerAddr>>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Response {
    match page_for(app, peer, path, query, &headers).await {
        Ok(r) => r,
        Err(e) if prefers_html(&headers) => error_page(lang_of(&headers), e),
        Err(e) => e.into_response(),
    }
}

async fn page_for(
    app: Arc<App>,
    peer: Option<axum::Extension<PeerAddr>>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
    headers: &HeaderMap,
) -> Result<Response, GatewayError> {
    let room = room_id(&path.map_err(path_err)?.0)?;
    let q = query.map(|q| q.0).unwrap_or_default();
    let lang = lang_of(headers);
    let cfg = app
        .rooms
        .get(&room)
        .ok_or_else(|| GatewayError::from(queue_core::Error::UnknownRoom(room.to_string())))?;
    let peer = peer.map(|p| p.0);
    let user = room::known_user(&app, headers)?;
    let mut set_cookies = Vec::new();
    // This browser's live ticket (a poll), or a new one (a join).
    let st = match room::existing_ticket(&app, headers, &room, user.as_deref()).await {
        Some(st) => {
            room::limit(&app, Api::Status, peer, headers, user.as_deref())?;
            st
        }
        None => {
            room::limit(&app, Api::Join, peer, headers, user.as_deref())?;
            let out = room::join_new(&app, &room, user.as_deref()).await?;
            let value = app.cookies.cookie_value_for(&room, out.status.ticket, user.is_some());
            set_cookies.push(admission::set_cookie(
                &admission::ticket_cookie_name(&room),
                &value,
                86_400,
                admission::is_https(headers),
            ));
            out.status
        }
    };
    let dest = destination(&q, Some(&cfg));
    if st.state == TicketState::Admitted {
        let holder = Holder {
            secret: Some(app.cookies.secret_for(&room, st.ticket, user.is_some())),
            user: user.clone(),
            needs_cookie: false,
        };
        if let Some((token, until)) = room::admission_token(&app, &st, &holder)? {
            let max_age = until.saturating_sub(st.now_ms) / 1000;
            set_cookies.push(admission::set_cookie(
                &admission::admission_cookie_name(&room),
                &token,
                max_age,
                admission::is_https(headers),
            ));
            let mut r = StatusCode::SEE_OTHER.into_response();
            r.headers_mut().insert(
                header::LOCATION,
                HeaderValue::from_str(&dest).unwrap_or(HeaderValue::from_static("/")),
            );
            return Ok(finish(r, set_cookies));
        }
    }
    let markup = render(lang, &room, &cfg, &st, &q, &dest);
    let mut r = (StatusCode::OK, axum::response::Html(markup.into_string())).into_response();
    r.headers_mut().insert(header::CONTENT_LANGUAGE, HeaderValue::from_static(lang.code()));
    Ok(finish(r, set_cookies))
}

/// `e` as a page: its status and headers (`Retry-After`), an HTML body.
fn error_page(lang: Lang, e: GatewayError) -> Response {
    let (mut parts, _) = e.into_response().into_parts();
    let status = parts.status;
    let retry_s = parts
        .headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .or(status.is_server_error().then_some(5))
        .map(|s| s.clamp(1, 60));
    let (title, says) = match status {
        StatusCode::NOT_FOUND => ("no_room_title", "no_room"),
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => ("busy_title", "busy"),
        s if s.is_server_error() => ("trouble_title", "trouble"),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ("sign_in_title", "sign_in"),
        _ => ("bad_address_title", "bad_address"),
    };
    let markup = html! {
        (DOCTYPE)
        html lang=(lang.code()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(s) = retry_s { meta http-equiv="refresh" content=(s); }
                title { (t(lang, title)) }
                style { (PreEscaped(CSS)) }
            }
            body {
                main {
                    h1 { (t(lang, title)) }
                    p role="alert" { (t(lang, says)) }
                    @if let Some(s) = retry_s { p.small { (t(lang, "retrying")) " " (human(lang, s)) } }
                }
            }
        }
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    parts.headers.insert(header::CONTENT_LANGUAGE, HeaderValue::from_static(lang.code()));
    finish(Response::from_parts(parts, axum::body::Body::from(markup.into_string())), Vec::new())
}

fn finish(mut r: Response, cookies: Vec<HeaderValue>) -> Response {
    for c in cookies {
        r.headers_mut().append(header::SET_COOKIE, c);
    }
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut().insert("x-frame-options", HeaderValue::from_static("DENY"));
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'unsafe-inline' 'self'; style-src 'unsafe-inline'",
        ),
    );
    r
}

fn render(
    lang: Lang,
    room: &RoomId,
    cfg: &RoomConfig,
    st: &TicketStatus,
    q: &PageQuery,
    dest: &str,
) -> Markup {
    let poll = room::poll_after_ms(st, Some(cfg)).max(1000);
    let p0 = q.p0.or(st.position).unwrap_or(0);
    let refresh_url = format!("/rooms/{room}?return={}&p0={p0}", encode_component(dest));
    let progress = match (st.position, p0) {
        (Some(p), p0) if p0 > 0 => ((p0.saturating_sub(p)) as f64 / p0 as f64 * 100.0).clamp(0.0, 100.0),
        _ => 0.0,
    };
    let eta = st.eta;
    html! {
        (DOCTYPE)
        html lang=(lang.code()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if st.state.is_live() {
                    noscript { meta http-equiv="refresh" content=(format!("{}; url={}", poll.div_ceil(1000), refresh_url)); }
                }
                title { (t(lang, "title")) " · " (room.as_str()) }
                style { (PreEscaped(CSS)) }
            }
            body {
                main {
                    h1 { (t(lang, "title")) }
                    p.room { (room.as_str()) }
                    @match (st.state, st.phase) {
                        (TicketState::Waiting, phase) => {
                            p { (t(lang, "intro")) }
                            @if phase == RoomPhase::Scheduled {
                                p #phase role="status" { (t(lang, "scheduled")) }
                                @if cfg.opens_at.is_some() {
                                    p { (t(lang, "opens_in")) ": " strong #countdown data-opens=(cfg.opens_at_ms()) { (human(lang, cfg.opens_at_ms().saturating_sub(st.now_ms) / 1000)) } }
                                }
                            }
                            @if phase == RoomPhase::Paused {
                                p #phase role="status" { (t(lang, "paused")) }
                            }
                            div.card {
                                p.label #position-label { (t(lang, "position")) }
                                p.big aria-live="polite" aria-labelledby="position-label" #position {
                                    @match st.position {
                                        Some(p) => (p),
                                        None => "—",
                                    }
                                }
                                @if st.position.is_none() { p.small { (t(lang, "drawing")) } }
                                p.label #eta-label { (t(lang, "eta")) }
                                p aria-live="polite" aria-labelledby="eta-label" #eta {
                                    @match eta {
                                        Some(e) => { (human(lang, e.low_seconds)) " – " (human(lang, e.high_seconds)) },
                                        None => "—",
                                    }
                                }
                                label for="progress" { (t(lang, "progress")) }
                                progress #progress max="100" value=(format!("{progress:.0}")) aria-label=(t(lang, "progress")) { (format!("{progress:.0}%")) }
                            }
                            p.small { (t(lang, "live")) }
                        }
                        (TicketState::Admitted, _) => { p role="status" { (t(lang, "admitted")) } }
                        _ => {
                            p role="status" { (t(lang, "expired")) }
                            a href=(format!("/rooms/{room}")) { (t(lang, "requeue")) }
                        }
                    }
                }
                @if st.state == TicketState::Waiting {
                    script #wr-data type="application/json" {
                        (PreEscaped(serde_json::json!({
                            "room": room.as_str(),
                            "ticket": st.ticket.to_string(),
                            "poll_after_ms": poll,
                            "p0": p0,
                            "reload": refresh_url,
                            "lang": lang.code(),
                            "now_ms": st.now_ms,
                            "min": t(lang, "minutes"),
                            "sec": t(lang, "seconds"),
                        }).to_string().replace('<', "\\u003c")))
                    }
                    script { (PreEscaped(JS)) }
                }
            }
        }
    }
}

const CSS: &str = r#"
*{box-sizing:border-box}body{margin:0;font-family:system-ui,-apple-system,"Noto Sans KR",sans-serif;background:#f4f5f7;color:#1d1f23}
main{max-width:32rem;margin:0 auto;padding:1.5rem 1rem}h1{font-size:1.5rem;margin:.5rem 0}.room{color:#5b6170;margin-top:0}
.card{background:#fff;border-radius:12px;padding:1.25rem;box-shadow:0 1px 3px rgba(0,0,0,.08);margin:1rem 0}
.label{margin:.25rem 0;color:#5b6170;font-size:.9rem}.big{font-size:3rem;font-weight:700;margin:.25rem 0 1rem}
progress{width:100%;height:1rem;margin-top:.5rem}.small{font-size:.85rem;color:#5b6170}a{color:#0b57d0}
"#;

/// Follows the ticket over SSE; falls back to polling; reloads on admission so the server
/// sets the admission cookie and redirects.
const JS: &str = r#"
(function(){
  var d = JSON.parse(document.getElementById('wr-data').textContent);
  var posEl = document.getElementById('position'), etaEl = document.getElementById('eta');
  var bar = document.getElementById('progress');
  var key = 'wr-p0-' + d.ticket;
  var p0 = Number(sessionStorage.getItem(key) || d.p0 || 0);
  function human(s){ return s >= 120 ? Math.ceil(s/60) + ' ' + d.min : s + ' ' + d.sec; }
  function show(pos, eta){
    if (pos == null) return;
    if (!p0 || pos > p0) { p0 = pos; sessionStorage.setItem(key, String(p0)); }
    posEl.textContent = pos;
    if (eta != null) etaEl.textContent = human(Math.floor(eta*0.8)) + ' – ' + human(Math.ceil(eta*1.25));
    var pct = p0 ? Math.max(0, Math.min(100, (p0 - pos) / p0 * 100)) : 0;
    bar.value = pct; bar.textContent = Math.round(pct) + '%';
  }
  function go(){ location.replace(d.reload); }
  var cd = document.getElementById('countdown');
  if (cd) {
    var skew = Date.now() - d.now_ms, opens = Number(cd.dataset.opens);
    var tickCd = function(){
      var left = Math.max(0, Math.round((opens - (Date.now() - skew)) / 1000));
      cd.textContent = human(left);
      if (left > 0) setTimeout(tickCd, 1000); else setTimeout(go, 1500);
    };
    tickCd();
  }
  var base = '/api/v1/rooms/' + d.room + '/tickets/' + d.ticket;
  function poll(){
    fetch(base, {credentials: 'same-origin', headers: {'Accept': 'application/json'}})
      .then(function(r){
        // Busy or failing (429, 5xx): the place is kept; ask again later, not reload.
        if (r.status === 429 || r.status >= 500) {
          var wait = Number(r.headers.get('Retry-After')) * 1000 || 0;
          setTimeout(poll, Math.max(wait, d.poll_after_ms));
          return;
        }
        return r.json().then(function(s){
          if (s.state === 'waiting') { show(s.position, s.eta_seconds); setTimeout(poll, s.poll_after_ms || d.poll_after_ms); }
          else { go(); }
        });
      })
      .catch(function(){ setTimeout(poll, d.poll_after_ms); });
  }
  if (window.EventSource) {
    var es = new EventSource(base + '/events'), failures = 0;
    es.addEventListener('position', function(e){ failures = 0; var m = JSON.parse(e.data); show(m.position, m.eta_seconds); });
    es.addEventListener('admitted', function(){ es.close(); go(); });
    es.addEventListener('expired', function(){ es.close(); go(); });
    es.onerror = function(){ if (++failures >= 3) { es.close(); poll(); } };
  } else { poll(); }
})();
"#;

/// True when `Accept` prefers HTML over JSON (browsers navigating).
pub fn prefers_html(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else { return false };
    let q = |wanted: &str| -> Option<(f32, usize)> {
        accept.split(',').enumerate().find_map(|(i, part)| {
            let mut it = part.split(';');
            let media = it.next()?.trim();
            if media != wanted {
                return None;
            }
            let q = it.find_map(|p| p.trim().strip_prefix("q=")).and_then(|v| v.parse().ok()).unwrap_or(1.0);
            Some((q, i))
        })
    };
    match (q("text/html"), q("application/json")) {
        (Some((h, _)), None) => h > 0.0,
        (Some((h, hi)), Some((j, ji))) => h > j || (h == j && hi < ji),
        _ => false,
    }
}

/// The answer to a request under a room's prefixes without an admission: browsers are sent to
/// the waiting page (with the way back), API clients get `403 not_admitted`.
pub(crate) fn not_admitted(room: &RoomId, uri: &axum::http::Uri, headers: &HeaderMap) -> Response {
    if prefers_html(headers) {
        let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
        let location = format!("/rooms/{room}?return={}", encode_component(target));
        let mut r = StatusCode::SEE_OTHER.into_response();
        if let Ok(v) = HeaderValue::from_str(&location) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return r;
    }
    crate::error::error_body(
        StatusCode::FORBIDDEN,
        "not_admitted",
        &format!("this path needs an admission to room `{room}`"),
    )
}

/// Percent-encodes a URL component (RFC 3986 unreserved characters stay).
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT, v.parse().unwrap());
            m
        };
        assert!(prefers_html(&h("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")));
        assert!(!prefers_html(&h("application/json")));
        assert!(!prefers_html(&h("*/*")));
        assert!(!prefers_html(&h("application/json, text/html;q=0.5")));
        assert!(prefers_html(&h("text/html, application/json")));
        assert!(!prefers_html(&HeaderMap::new()));
    }
}
