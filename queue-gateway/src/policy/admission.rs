//! Who is asking: ticket cookies, user JWTs, and admission tokens on protected paths.
//!
//! The ticket cookie `wr_{room}` is `ticket.secret`, where `secret = HMAC(cookie key, room ‖
//! ticket)`: any gateway holding the same key recomputes it, nothing is stored, and a ticket id
//! alone cannot produce it. The admission token's `cnf` is the base64url SHA-256 of that
//! secret, so a token copied without its cookie does not pass.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use aws_lc_rs::hmac;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dashmap::DashMap;
use foldhash::fast::RandomState;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use queue_core::token::{AdmissionClaims, KeySet, TokenError, cnf_of};
use queue_core::{RoomId, TicketId, UserKey};
use serde::Deserialize;

const TICKET_PREFIX: &str = "wr_";
const ADMISSION_PREFIX: &str = "wr_admission_";

/// Name of a room's ticket cookie.
pub fn ticket_cookie_name(room: &RoomId) -> String {
    format!("{TICKET_PREFIX}{room}")
}

/// Name of a room's admission cookie.
pub fn admission_cookie_name(room: &RoomId) -> String {
    format!("{ADMISSION_PREFIX}{room}")
}

/// Header that may carry the admission token instead of the cookie.
pub const ADMISSION_HEADER: HeaderName = HeaderName::from_static("x-admission-token");

/// Most ticket cookies remembered as verified.
pub const VERIFIED_COOKIES: usize = 100_000;

/// Makes and checks ticket secrets. Cookies that passed are remembered (room, cookie →
/// ticket and secret): a waiting browser polls every few seconds, and checking its cookie's
/// HMAC again was a fifth of a poll's work. A hit compares room and cookie in full, and
/// only verified pairs are stored, so a hit is as good as the check; the key never changes
/// while the gateway runs, so entries never go stale. Bounded: when full, it starts over.
#[derive(Debug)]
pub struct CookieKey {
    key: hmac::Key,
    verified: DashMap<u64, Verified, RandomState>,
    hasher: RandomState,
    cap: usize,
}

#[derive(Debug)]
struct Verified {
    room: RoomId,
    cookie: Box<str>,
    ticket: TicketId,
    secret: Box<[u8]>,
    bound: bool,
}

/// A valid ticket cookie.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TicketCookie {
    /// The ticket.
    pub ticket: TicketId,
    /// Its secret (the `cnf` of its admissions).
    pub secret: Vec<u8>,
    /// Whether the ticket was joined by a signed-in user: its cookie alone then admits
    /// nobody, only that user's own requests do.
    pub bound: bool,
}

impl CookieKey {
    /// A key from 32 bytes of secret material.
    pub fn new(material: &[u8]) -> Self {
        CookieKey::with_capacity(material, VERIFIED_COOKIES)
    }

    /// A key remembering at most `cap` verified cookies.
    pub fn with_capacity(material: &[u8], cap: usize) -> Self {
        CookieKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, material),
            verified: DashMap::default(),
            hasher: RandomState::default(),
            cap: cap.max(1),
        }
    }

    /// The secret of an anonymous `ticket` in `room`.
    pub fn secret(&self, room: &RoomId, ticket: TicketId) -> Vec<u8> {
        self.secret_for(room, ticket, false)
    }

    /// The secret of `ticket` in `room`, joined by a signed-in user when `bound`: the two
    /// sign different texts, so a cookie says which it is and cannot be turned into the other.
    pub fn secret_for(&self, room: &RoomId, ticket: TicketId, bound: bool) -> Vec<u8> {
        hmac::sign(&self.key, signed_text(room, ticket, bound).as_bytes()).as_ref().to_vec()
    }

    /// Cookies remembered as verified.
    pub fn remembered(&self) -> usize {
        self.verified.len()
    }

    /// The cookie value for an anonymous ticket.
    pub fn cookie_value(&self, room: &RoomId, ticket: TicketId) -> String {
        self.cookie_value_for(room, ticket, false)
    }

    /// The cookie value for a ticket, bound to its signed-in user when `bound`.
    pub fn cookie_value_for(&self, room: &RoomId, ticket: TicketId, bound: bool) -> String {
        format!("{ticket}.{}", URL_SAFE_NO_PAD.encode(self.secret_for(room, ticket, bound)))
    }

    /// The ticket of a valid `wr_{room}` cookie and its secret.
    pub fn ticket_from(&self, headers: &HeaderMap, room: &RoomId) -> Option<(TicketId, Vec<u8>)> {
        self.ticket_cookie(headers, room).map(|c| (c.ticket, c.secret))
    }

    /// A valid `wr_{room}` cookie, with whether its ticket is bound to a user.
    pub fn ticket_cookie(&self, headers: &HeaderMap, room: &RoomId) -> Option<TicketCookie> {
        let value = room_cookie(headers, TICKET_PREFIX, room)?;
        self.ticket_from_value(value, room)
    }

    fn ticket_from_value(&self, value: &str, room: &RoomId) -> Option<TicketCookie> {
        let key = self.hasher.hash_one((room.as_str(), tail(value.as_bytes(), COOKIE_TAIL)));
        if let Some(hit) = self.verified.get(&key)
            && hit.room == *room
            && &*hit.cookie == value
        {
            return Some(TicketCookie { ticket: hit.ticket, secret: hit.secret.to_vec(), bound: hit.bound });
        }
        let (ticket, secret) = value.split_once('.')?;
        let ticket = TicketId::parse(ticket).ok()?;
        let given = URL_SAFE_NO_PAD.decode(secret).ok()?;
        let signs =
            |bound| hmac::verify(&self.key, signed_text(room, ticket, bound).as_bytes(), &given).is_ok();
        let bound = if signs(false) {
            false
        } else if signs(true) {
            true
        } else {
            return None;
        };
        if self.verified.len() >= self.cap {
            self.verified.clear();
        }
        let entry = Verified {
            room: room.clone(),
            cookie: value.into(),
            ticket,
            secret: given.as_slice().into(),
            bound,
        };
        self.verified.insert(key, entry);
        Some(TicketCookie { ticket, secret: given, bound })
    }
}

/// What a ticket's secret signs: `ticket|{room}|{ticket}`, and `|user` after it for a ticket
/// a signed-in user joined (sized up front: `format!` grows its string as it goes, and every
/// poll makes one).
fn signed_text(room: &RoomId, ticket: TicketId, bound: bool) -> String {
    use std::fmt::Write;
    let mut text = String::with_capacity(13 + room.as_str().len() + 32);
    let _ = write!(text, "ticket|{room}|{ticket}");
    if bound {
        text.push_str("|user");
    }
    text
}

/// The value of cookie `name`, if the request carries it (first occurrence).
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    find_cookie(headers, |k| k == name.as_bytes())
}

/// The value of cookie `{prefix}{room}` (no name is built: this runs on every protected
/// request).
fn room_cookie<'a>(headers: &'a HeaderMap, prefix: &str, room: &RoomId) -> Option<&'a str> {
    find_cookie(headers, |k| is_room_cookie(k, prefix, room))
}

/// True when `name` is `{prefix}{room}`.
fn is_room_cookie(name: &[u8], prefix: &str, room: &RoomId) -> bool {
    name.strip_prefix(prefix.as_bytes()) == Some(room.as_str().as_bytes())
}

/// The value of the first cookie whose name is `wanted` and whose value is UTF-8.
fn find_cookie(headers: &HeaderMap, wanted: impl Fn(&[u8]) -> bool) -> Option<&str> {
    let mut found = None;
    each_cookie(headers, |k, v| {
        found = if wanted(k) { std::str::from_utf8(v).ok() } else { None };
        found.is_some()
    });
    found
}

/// A room's ticket cookie (the first that is UTF-8) and admission cookie (the first, as
/// bytes: on a remembered admission it is only compared), found in one pass (a protected
/// request carries a token of several hundred bytes that a pass per cookie would scan
/// twice).
fn room_cookies<'a>(headers: &'a HeaderMap, room: &RoomId) -> (Option<&'a str>, Option<&'a [u8]>) {
    let (mut ticket, mut admission) = (None, None);
    each_cookie(headers, |k, v| {
        if ticket.is_none() && is_room_cookie(k, TICKET_PREFIX, room) {
            ticket = std::str::from_utf8(v).ok();
        } else if admission.is_none() && is_room_cookie(k, ADMISSION_PREFIX, room) {
            admission = Some(v);
        }
        ticket.is_some() && admission.is_some()
    });
    (ticket, admission)
}

/// Calls `f(name, value)` for each cookie of the request, in order, until it returns true.
/// Bytes, not text: checking a header of several hundred bytes as UTF-8 cost more than the
/// rest of the split; callers check the values they use.
fn each_cookie<'a>(headers: &'a HeaderMap, mut f: impl FnMut(&'a [u8], &'a [u8]) -> bool) {
    for v in headers.get_all(header::COOKIE) {
        for pair in cookie_pairs(v.as_bytes()) {
            if let Some((name, value)) = name_and_value(pair)
                && f(name, unquoted(value))
            {
                return;
            }
        }
    }
}

/// The pairs of one `Cookie` header value, trimmed, empty ones included. memchr, not `split`:
/// std's search goes a word at a time, and a byte-at-a-time split through the admission
/// token's cookie cost ~3,700 instructions per forwarded request (callgrind).
fn cookie_pairs(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    memchr::memchr_iter(b';', v).chain(std::iter::once(v.len())).map(move |end| {
        let pair = v[start..end].trim_ascii();
        start = end + 1;
        pair
    })
}

/// A pair's name and value; `None` without `=` (a value with no name, RFC 6265bis).
fn name_and_value(pair: &[u8]) -> Option<(&[u8], &[u8])> {
    memchr::memchr(b'=', pair).map(|eq| (&pair[..eq], &pair[eq + 1..]))
}

/// A `Cookie` header value as the backend gets it: without the gateway's own cookies
/// (`wr_{room}` and `wr_admission_{room}`, as [`each_cookie`] reads names), `None` when
/// nothing else is in it. The ticket cookie holds the ticket's secret, with which anyone can
/// fetch the ticket's admission token: the backend has no use for it and should not see it
/// (nor log it), and the admission token reaches it as `X-Admission-Token`. Borrowed when no
/// cookie of ours is in it.
pub(crate) fn backend_cookies(v: &[u8]) -> Option<std::borrow::Cow<'_, [u8]>> {
    if memchr::memmem::find(v, TICKET_PREFIX.as_bytes()).is_none() {
        return Some(std::borrow::Cow::Borrowed(v));
    }
    let mut kept = Vec::with_capacity(v.len());
    let theirs = |p: &&[u8]| !p.is_empty() && !name_and_value(p).is_some_and(|(name, _)| is_own_cookie(name));
    for pair in cookie_pairs(v).filter(theirs) {
        if !kept.is_empty() {
            kept.extend_from_slice(b"; ");
        }
        kept.extend_from_slice(pair);
    }
    (!kept.is_empty()).then_some(std::borrow::Cow::Owned(kept))
}

/// `wr_` and a room id, or `wr_admission_` and a room id: a name this gateway sets.
fn is_own_cookie(name: &[u8]) -> bool {
    name.strip_prefix(ADMISSION_PREFIX.as_bytes()).is_some_and(RoomId::is_valid)
        || name.strip_prefix(TICKET_PREFIX.as_bytes()).is_some_and(RoomId::is_valid)
}

/// `v` without the double quotes around it (any number, as `trim_matches('"')`).
fn unquoted(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|&b| b != b'"').unwrap_or(v.len());
    let end = v.iter().rposition(|&b| b != b'"').map_or(start, |e| e + 1);
    &v[start..end]
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Lax, Path=/, and Secure when served over HTTPS.
pub fn set_cookie(name: &str, value: &str, max_age_s: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let v = format!("{name}={value}; Path=/; Max-Age={max_age_s}; HttpOnly; SameSite=Lax{secure}");
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static("invalid=; Max-Age=0"))
}

/// True when the request came over HTTPS (directly or as told by a proxy).
pub fn is_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').next().is_some_and(|p| p.trim().eq_ignore_ascii_case("https")))
}

/// Verifies user JWTs (HS256) from `Authorization: Bearer`.
#[derive(Clone)]
pub struct UserAuth {
    key: Option<DecodingKey>,
}

impl std::fmt::Debug for UserAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserAuth").field("enabled", &self.key.is_some()).finish()
    }
}

#[derive(Deserialize)]
struct UserClaims {
    sub: String,
}

/// The outcome of looking for a user.
#[derive(Debug, PartialEq, Eq)]
pub enum User {
    /// No user token (or user tokens are not configured).
    Anonymous,
    /// A verified user.
    Known(String),
    /// A bearer token was sent and is invalid.
    Invalid,
}

impl UserAuth {
    /// Accepts tokens signed with `secret`; `None` treats everyone as anonymous.
    pub fn new(secret: Option<&str>) -> Self {
        UserAuth { key: secret.map(|s| DecodingKey::from_secret(s.as_bytes())) }
    }

    /// The user of a request.
    pub fn user(&self, headers: &HeaderMap) -> User {
        let Some(key) = &self.key else { return User::Anonymous };
        let Some(auth) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
            return User::Anonymous;
        };
        let Some(token) = auth.strip_prefix("Bearer ").map(str::trim) else { return User::Anonymous };
        if token.len() > 4096 {
            return User::Invalid;
        }
        let mut v = Validation::new(Algorithm::HS256);
        v.set_required_spec_claims(&["exp", "sub"]);
        match jsonwebtoken::decode::<UserClaims>(token, key, &v) {
            Ok(d) if UserKey::parse(&d.claims.sub).is_ok() && d.claims.sub.len() <= 200 => {
                User::Known(d.claims.sub)
            }
            _ => User::Invalid,
        }
    }
}

/// The owner key stored for a user-bound ticket.
pub fn user_owner(sub: &str) -> UserKey {
    UserKey::parse(&format!("user:{sub}"))
        .unwrap_or_else(|_| UserKey::parse("user:invalid").expect("valid key"))
}

/// A fresh anonymous owner key (one per browser; the ticket cookie keeps it).
pub fn anonymous_owner() -> UserKey {
    UserKey::parse(&format!("anon:{:032x}", rand::random::<u128>())).expect("valid key")
}

/// The admission cookie's token, else the header's (as bytes: see [`room_cookies`]).
fn or_header<'a>(headers: &'a HeaderMap, cookie: Option<&'a [u8]>) -> Option<&'a [u8]> {
    cookie.or_else(|| headers.get(ADMISSION_HEADER).map(HeaderValue::as_bytes)).filter(|t| !t.is_empty())
}

/// Why a protected request was refused (the metric's `result` label).
pub type Refusal = &'static str;

/// A protected request that passed: its token (as the header passed on to the backend) and
/// claims.
#[derive(Debug, Clone)]
pub struct Admitted {
    /// `X-Admission-Token` for the backend.
    pub header: HeaderValue,
    /// The verified claims.
    pub claims: Arc<AdmissionClaims>,
    /// The ticket its `jti` names (checked equal to the ticket cookie's).
    pub ticket: TicketId,
}

/// Checks a protected request: a valid token for `room` whose `cnf` and `jti` match the
/// caller's ticket cookie. A pair that passed before is found in `cache` (compared in full)
/// and only its time window is checked again.
pub fn check_admitted(
    keys: &KeySet,
    cookies: &CookieKey,
    cache: &AdmittedCache,
    revoked: &Revoked,
    headers: &HeaderMap,
    room: &RoomId,
) -> Result<Admitted, Refusal> {
    let (ticket_cookie, admission_cookie) = room_cookies(headers, room);
    let token = or_header(headers, admission_cookie).ok_or("missing")?;
    if let Some(cookie) = ticket_cookie
        && let Some(hit) = cache.get(token, cookie)
    {
        keys.check_live(&hit.claims, room.as_str()).map_err(refusal)?;
        if revoked.contains(room, hit.ticket) {
            return Err("revoked");
        }
        return Ok(hit);
    }
    let token = std::str::from_utf8(token).map_err(|_| "malformed")?;
    let claims = keys.verify(token, room.as_str()).map_err(refusal)?;
    let cookie = ticket_cookie.ok_or("no_ticket_cookie")?;
    let TicketCookie { ticket, secret, .. } =
        cookies.ticket_from_value(cookie, room).ok_or("no_ticket_cookie")?;
    if claims.jti != ticket.to_string() || claims.cnf != cnf_of(&secret) {
        return Err("not_bound");
    }
    if revoked.contains(room, ticket) {
        return Err("revoked");
    }
    let header = HeaderValue::from_str(token).map_err(|_| "malformed")?;
    let admitted = Admitted { header, claims, ticket };
    cache.insert(token, cookie, admitted.clone());
    Ok(admitted)
}

/// Admissions ended by a leave while their tokens are live, by room: refused although the
/// tokens verify. Filled from the store's list ([`queue_core::Store::revoked`]) within a
/// second of a change to a room's leaves ([`crate::background::rooms`]), and at once by this gateway's
/// own leaves. Entries go when their admission would have ended: a ticket that left is never
/// admitted again.
#[derive(Debug, Default)]
pub struct Revoked {
    /// Whether any entry exists: the common case costs admitted requests one load.
    any: AtomicBool,
    rooms: RwLock<HashMap<RoomId, HashMap<TicketId, u64>>>,
}

impl Revoked {
    /// Whether the admission of `ticket` in `room` was ended by a leave.
    pub fn contains(&self, room: &RoomId, ticket: TicketId) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let rooms = self.rooms.read().unwrap_or_else(|e| e.into_inner());
        rooms.get(room).and_then(|r| r.get(&ticket)).is_some_and(|until| *until > crate::policy::now_ms())
    }

    /// Adds revoked admissions of `room` (ticket, admission end in Unix ms); the ones already
    /// known stay until their ends (a list read just before one of this gateway's own leaves
    /// lacks it).
    pub fn add(&self, room: &RoomId, ended: impl IntoIterator<Item = (TicketId, u64)>) {
        let now = crate::policy::now_ms();
        let mut rooms = self.rooms.write().unwrap_or_else(|e| e.into_inner());
        let entries = rooms.entry(room.clone()).or_default();
        entries.extend(ended.into_iter().filter(|(_, until)| *until > now));
        entries.retain(|_, until| *until > now);
        self.settle(&mut rooms);
    }

    /// Forgets rooms not in `live` (deleted) and ended admissions.
    pub fn retain_rooms(&self, live: &HashMap<RoomId, queue_core::RoomConfig>) {
        let now = crate::policy::now_ms();
        let mut rooms = self.rooms.write().unwrap_or_else(|e| e.into_inner());
        rooms.retain(|room, entries| {
            entries.retain(|_, until| *until > now);
            live.contains_key(room) && !entries.is_empty()
        });
        self.settle(&mut rooms);
    }

    fn settle(&self, rooms: &mut HashMap<RoomId, HashMap<TicketId, u64>>) {
        rooms.retain(|_, entries| !entries.is_empty());
        self.any.store(!rooms.is_empty(), Ordering::Release);
    }
}

/// A token refusal as a metric label.
fn refusal(e: TokenError) -> Refusal {
    match e {
        TokenError::Refused(why) => match why {
            "algorithm not allowed" => "algorithm_not_allowed",
            "no key id" => "no_key_id",
            "unknown key id" => "unknown_key_id",
            "not yet valid" => "not_yet_valid",
            "wrong audience" => "wrong_audience",
            "wrong issuer" => "wrong_issuer",
            "bad signature" => "bad_signature",
            "missing claim" => "missing_claim",
            "expired" => "expired",
            _ => "malformed",
        },
        _ => "invalid",
    }
}

/// Bytes of a token's end that go into its cache key: 96 bits of its Ed25519 signature.
const TOKEN_TAIL: usize = 16;
/// Bytes of a ticket cookie's end that go into a key: 96 bits of its HMAC.
const COOKIE_TAIL: usize = 16;

/// The last `n` bytes of `s` (all of it when shorter). Keys of the verified-pair maps hash
/// only the ends of tokens and cookies: those ends are signatures, which nobody can choose
/// for a pair that gets stored (only verified pairs are), and a hit compares the strings in
/// full, so a shared key costs a miss, never a wrong answer. Hashing whole strings (~120
/// bytes) with SipHash was ~650 instructions per forwarded request (callgrind); the ends
/// with SipHash, and SipHash again over the key inside the map, ~430 per request. Since no
/// stored key can be chosen by a client, the maps use foldhash's fast hash (hashbrown's
/// own default, seeded per process).
fn tail(s: &[u8], n: usize) -> &[u8] {
    &s[s.len().saturating_sub(n)..]
}

/// Most (token, ticket cookie) pairs remembered.
pub const ADMITTED_CACHE_ENTRIES: usize = 100_000;

/// Admissions this gateway has checked in full: (token, ticket cookie) → result, so that an
/// admitted browser's next requests cost no signature check, HMAC or hash of its secret.
/// Entries hold both strings and a hit compares them in full, so a hash collision cannot
/// admit anyone. The gateway's keys do not change while it runs, so entries only go stale by
/// time, which every hit checks. Bounded: when full, expired entries go, then everything.
#[derive(Debug)]
pub struct AdmittedCache {
    map: DashMap<u64, (Box<str>, Box<str>, Admitted), RandomState>,
    hasher: RandomState,
    cap: usize,
}

impl Default for AdmittedCache {
    fn default() -> Self {
        AdmittedCache::new(ADMITTED_CACHE_ENTRIES)
    }
}

impl AdmittedCache {
    /// A cache of at most `cap` pairs.
    pub fn new(cap: usize) -> Self {
        AdmittedCache { map: DashMap::default(), hasher: RandomState::default(), cap: cap.max(1) }
    }

    /// The key of a pair: the hash of the token's and the cookie's ends ([`tail`]).
    fn key(&self, token: &[u8], cookie: &str) -> u64 {
        self.hasher.hash_one((tail(token, TOKEN_TAIL), tail(cookie.as_bytes(), COOKIE_TAIL)))
    }

    fn get(&self, token: &[u8], cookie: &str) -> Option<Admitted> {
        let e = self.map.get(&self.key(token, cookie))?;
        (e.0.as_bytes() == token && &*e.1 == cookie).then(|| e.2.clone())
    }

    fn insert(&self, token: &str, cookie: &str, admitted: Admitted) {
        if self.map.len() >= self.cap {
            let now = crate::policy::now_ms() / 1000;
            self.map.retain(|_, e| e.2.claims.exp > now);
            if self.map.len() >= self.cap {
                self.map.clear();
            }
        }
        self.map.insert(self.key(token.as_bytes(), cookie), (token.into(), cookie.into(), admitted));
    }

    /// Pairs held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backend_gets_every_cookie_but_ours() {
        let kept =
            |v: &str| backend_cookies(v.as_bytes()).map(|c| String::from_utf8(c.into_owned()).unwrap());
        assert_eq!(kept("a=b; c=d").as_deref(), Some("a=b; c=d"));
        assert!(matches!(backend_cookies(b"a=b"), Some(std::borrow::Cow::Borrowed(_))));
        assert_eq!(
            kept("wr_demo=t.s; a=b;wr_admission_demo=x.y.z ;c=\"d\"").as_deref(),
            Some("a=b; c=\"d\"")
        );
        assert_eq!(kept("wr_demo=t.s; wr_admission_r-2=tok"), None);
        // Not names this gateway sets: a room id is [a-z0-9-]{1,64}.
        let long = format!("wr_{}=1", "a".repeat(65));
        for other in [
            "wr_=1",
            "wr_Demo=1",
            "wr_a_b=1",
            "wr_demo =1",
            "wr_admission_=1",
            "xwr_demo=1",
            "wr_demo",
            long.as_str(),
        ] {
            assert_eq!(kept(&format!("wr_demo=t.s; {other}")).as_deref(), Some(other), "{other}");
        }
        assert_eq!(kept("wr_demo=1; ; "), None);
    }

    #[test]
    fn cookies_round_trip_and_refuse_forgeries() {
        let key = CookieKey::new(&[1u8; 32]);
        let room = RoomId::parse("r").unwrap();
        let t = TicketId::new(5, 77);
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, format!("a=b; wr_r={}; c=d", key.cookie_value(&room, t)).parse().unwrap());
        assert_eq!(key.ticket_from(&h, &room).unwrap().0, t);
        let other = RoomId::parse("s").unwrap();
        assert!(key.ticket_from(&h, &other).is_none());
        let forged = format!("wr_r={}.{}", t, URL_SAFE_NO_PAD.encode([0u8; 32]));
        h.insert(header::COOKIE, forged.parse().unwrap());
        assert!(key.ticket_from(&h, &room).is_none());
        let other_key = CookieKey::new(&[2u8; 32]);
        h.insert(header::COOKIE, format!("wr_r={}", other_key.cookie_value(&room, t)).parse().unwrap());
        assert!(key.ticket_from(&h, &room).is_none());
    }

    /// Cookie pairs are read as `split(';')`, `trim`, `split_once('=')` and unquoting would,
    /// across several `Cookie` headers, stopping when told.
    #[test]
    fn cookies_are_split_as_the_plain_reading() {
        let values = [
            "a=b",
            "a=b; c=d",
            " a = b ;c=\"d\";;e;=f; g==h ",
            "wr_r=1.2; wra_r=x.y.z; wr_r=3",
            "",
            ";",
            "é=ü; k=v",
            "q=\"\"x\"\"; r=\"\"; s=\"; t=\"a\"b\"",
        ];
        for stop_after in [1, 2, usize::MAX] {
            let mut h = HeaderMap::new();
            let mut want = Vec::new();
            for v in values {
                h.append(header::COOKIE, HeaderValue::from_str(v).unwrap());
                for pair in v.split(';') {
                    if let Some((k, v)) = pair.trim().split_once('=') {
                        want.push((k.to_owned(), v.trim_matches('"').to_owned()));
                    }
                }
            }
            want.truncate(stop_after);
            let mut got = Vec::new();
            each_cookie(&h, |k, v| {
                let text = |b| String::from_utf8(Vec::from(b)).unwrap();
                got.push((text(k), text(v)));
                got.len() == stop_after
            });
            assert_eq!(got, want, "stopping after {stop_after}");
        }
    }

    /// Keys hash only the ends of tokens and cookies: pairs that share them are told apart
    /// by the full comparison of a hit.
    #[test]
    fn admitted_pairs_sharing_ends_are_told_apart() {
        let cache = AdmittedCache::new(10);
        let end = "x".repeat(TOKEN_TAIL.max(COOKIE_TAIL));
        let (token, cookie) = (format!("head-a.{end}"), format!("ticket-a.{end}"));
        let claims = AdmissionClaims {
            iss: "gw".into(),
            aud: "r".into(),
            sub: "s".into(),
            jti: "j".into(),
            iat: 0,
            nbf: 0,
            exp: u64::MAX,
            cnf: "c".into(),
        };
        let ticket = TicketId::new(1, 2);
        let admitted = Admitted { header: HeaderValue::from_static("t"), claims: Arc::new(claims), ticket };
        cache.insert(&token, &cookie, admitted);
        assert!(cache.get(token.as_bytes(), &cookie).is_some());
        assert!(cache.get(format!("head-b.{end}").as_bytes(), &cookie).is_none(), "another token, same end");
        assert!(
            cache.get(token.as_bytes(), &format!("ticket-b.{end}")).is_none(),
            "another cookie, same end"
        );
        assert!(cache.get(end.as_bytes(), &end).is_none(), "the ends alone");
    }

    /// A signed-in join's cookie says so, twice (verified, then remembered), and its secret is
    /// not the anonymous one, so neither passes for the other.
    #[test]
    fn bound_cookies_are_told_from_anonymous_ones() {
        let key = CookieKey::new(&[1u8; 32]);
        let room = RoomId::parse("r").unwrap();
        let t = TicketId::new(5, 77);
        let bound = key.cookie_value_for(&room, t, true);
        for _ in 0..2 {
            let c = key.ticket_from_value(&bound, &room).unwrap();
            assert!(c.bound && c.ticket == t && c.secret == key.secret_for(&room, t, true));
        }
        assert!(!key.ticket_from_value(&key.cookie_value(&room, t), &room).unwrap().bound);
        assert_ne!(key.secret(&room, t), key.secret_for(&room, t, true));
    }

    /// A remembered cookie's secret under another ticket id shares the remembered key's end,
    /// and is still checked (and refused) in full.
    #[test]
    fn a_remembered_secret_does_not_pass_for_another_ticket() {
        let key = CookieKey::new(&[1u8; 32]);
        let room = RoomId::parse("r").unwrap();
        let value = key.cookie_value(&room, TicketId::new(5, 77));
        assert!(key.ticket_from_value(&value, &room).is_some());
        let (_, secret) = value.split_once('.').unwrap();
        let other = format!("{}.{secret}", TicketId::new(6, 77));
        assert!(key.ticket_from_value(&other, &room).is_none());
        assert_eq!(key.remembered(), 1);
    }

    /// Verified cookies are remembered, forged ones never are, a remembered cookie is still
    /// refused in another room, and the memory stays bounded.
    #[test]
    fn verified_cookies_are_remembered_within_bounds() {
        let key = CookieKey::with_capacity(&[1u8; 32], 3);
        let (r, s) = (RoomId::parse("r").unwrap(), RoomId::parse("s").unwrap());
        let cookie = |value: String| {
            let mut h = HeaderMap::new();
            h.insert(header::COOKIE, format!("wr_r={value}; wr_s={value}").parse().unwrap());
            h
        };
        let t = TicketId::new(5, 77);
        let good = cookie(key.cookie_value(&r, t));
        for _ in 0..2 {
            let (ticket, secret) = key.ticket_from(&good, &r).unwrap();
            assert_eq!((ticket, secret), (t, key.secret(&r, t)));
            assert_eq!(key.remembered(), 1);
        }
        assert!(key.ticket_from(&good, &s).is_none(), "a cookie of room r does not open room s");
        let forged = cookie(format!("{t}.{}", URL_SAFE_NO_PAD.encode([0u8; 32])));
        assert!(key.ticket_from(&forged, &r).is_none());
        assert_eq!(key.remembered(), 1, "nothing refused is remembered");
        for seq in 1..10 {
            let other = TicketId::new(5, 100 + seq);
            assert!(key.ticket_from(&cookie(key.cookie_value(&r, other)), &r).is_some());
            assert!(key.remembered() <= 3);
        }
        assert_eq!(key.ticket_from(&good, &r).unwrap().0, t, "still verified after starting over");
    }

    #[test]
    fn a_rooms_cookies_are_found_in_one_pass() {
        let room = RoomId::parse("r").unwrap();
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, "x=1; wr_rr=other; wr_admission_rr=other".parse().unwrap());
        assert_eq!(room_cookies(&h, &room), (None, None));
        h.append(header::COOKIE, "wr_admission_r=\"tok\";wr_r=t.s; wr_r=later".parse().unwrap());
        assert_eq!(room_cookies(&h, &room), (Some("t.s"), Some(&b"tok"[..])));
        assert_eq!(room_cookie(&h, TICKET_PREFIX, &room), Some("t.s"));
        assert_eq!(cookie(&h, "wr_admission_r"), Some("tok"));
        assert_eq!(cookie(&h, "x"), Some("1"));
        assert_eq!(cookie(&h, "y"), None);
        let mut bad = HeaderMap::new();
        bad.append(header::COOKIE, HeaderValue::from_bytes(b"wr_r=\xff").unwrap());
        bad.append(header::COOKIE, "wr_r=ok".parse().unwrap());
        assert_eq!(room_cookies(&bad, &room), (Some("ok"), None));
    }

    #[test]
    fn user_tokens() {
        let secret = "0123456789abcdef0123456789abcdef";
        let auth = UserAuth::new(Some(secret));
        let mut h = HeaderMap::new();
        assert_eq!(auth.user(&h), User::Anonymous);
        let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 60;
        let good = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &serde_json::json!({"sub": "alice", "exp": exp}),
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap();
        h.insert(header::AUTHORIZATION, format!("Bearer {good}").parse().unwrap());
        assert_eq!(auth.user(&h), User::Known("alice".into()));
        h.insert(header::AUTHORIZATION, "Bearer x.y.z".parse().unwrap());
        assert_eq!(auth.user(&h), User::Invalid);
        assert_eq!(UserAuth::new(None).user(&h), User::Anonymous);
    }
}
