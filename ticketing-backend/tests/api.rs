//! API tests of the backend's foundation on SQLite and on a real PostgreSQL (a fresh
//! database per run, dropped after).

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use ticketing_backend::config::BackendConfig;
use tower::ServiceExt;

mod common;
use common::{PgDb, sqlite_url};

struct Api {
    router: axum::Router,
}

impl Api {
    async fn new(url: String) -> Self {
        let cfg = BackendConfig {
            database_url: Some(url),
            jwt_secret: Some("backend-test-secret-0123456789abcdef".into()),
            admin_email: Some("admin@example.com".into()),
            admin_password: Some("admin-password-123".into()),
            login_per_minute: 5,
            ..BackendConfig::default()
        };
        let state = ticketing_backend::build(&cfg).await.unwrap();
        Api { router: ticketing_backend::router(state) }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path).header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req.body(body.map(|b| Body::from(b.to_owned())).unwrap_or_else(Body::empty)).unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into())),
        )
    }
}

impl Api {
    async fn raw(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
        token: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if !content_type.is_empty() {
            req = req.header("content-type", content_type);
        }
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = self.router.clone().oneshot(req.body(Body::from(body)).unwrap()).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

async fn users_and_auth(url: String) {
    let api = Api::new(url).await;
    let body =
        json!({"email": "Buyer@Example.com", "password": "correct horse", "name": "Buyer"}).to_string();
    let (s, v) = api.call("POST", "/api/v1/auth/signup", Some(&body), None).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!((v["email"].as_str(), v["role"].as_str()), (Some("buyer@example.com"), Some("user")));
    assert!(v["token"].is_string());
    let (s, v) = api.call("POST", "/api/v1/auth/signup", Some(&body), None).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "email_taken"));

    for (bad, field) in [
        (json!({"email": "nope", "password": "correct horse", "name": "x"}), "email"),
        (json!({"email": "a@b.co", "password": "short", "name": "x"}), "password"),
        (json!({"email": "a@b.co", "password": "correct horse", "name": ""}), "name"),
        (json!({"email": "a@b.co", "password": "correct horse", "name": "x", "role": "admin"}), "body"),
    ] {
        let (s, v) = api.call("POST", "/api/v1/auth/signup", Some(&bad.to_string()), None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");
        assert!(v["error"]["message"].as_str().unwrap().starts_with(field), "{v}");
    }
    let (s, _) = api.call("POST", "/api/v1/auth/signup", Some("{not json"), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let big = format!("{{\"email\":\"{}\"}}", "a".repeat(100_000));
    let (s, _) = api.call("POST", "/api/v1/auth/signup", Some(&big), None).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);

    let login = json!({"email": "buyer@example.com", "password": "correct horse"}).to_string();
    let (s, v) = api.call("POST", "/api/v1/auth/login", Some(&login), None).await;
    assert_eq!(s, StatusCode::OK);
    let token = v["token"].as_str().unwrap().to_owned();
    let claims: Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            token.split('.').nth(1).unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["role"], "user");
    let wrong = json!({"email": "buyer@example.com", "password": "wrong password"}).to_string();
    let (s, v1) = api.call("POST", "/api/v1/auth/login", Some(&wrong), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let unknown = json!({"email": "nobody@example.com", "password": "wrong password"}).to_string();
    let (_, v2) = api.call("POST", "/api/v1/auth/login", Some(&unknown), None).await;
    assert_eq!(v1, v2, "unknown email and wrong password answer alike");
    // The configured admin exists and logs in with the admin role.
    let admin = json!({"email": "admin@example.com", "password": "admin-password-123"}).to_string();
    let (s, v) = api.call("POST", "/api/v1/auth/login", Some(&admin), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // Login attempts are rate limited per address and email (5 a minute here; 3 used above
    // for buyer from this one address).
    let mut codes = Vec::new();
    for _ in 0..4 {
        codes.push(api.call("POST", "/api/v1/auth/login", Some(&wrong), None).await.0.as_u16());
    }
    assert!(codes.contains(&429), "{codes:?}");
}

async fn operations(url: String) {
    let api = Api::new(url).await;
    assert_eq!(api.call("GET", "/healthz", None, None).await.0, StatusCode::OK);
    assert_eq!(api.call("GET", "/readyz", None, None).await.0, StatusCode::OK);
    let (s, v) = api.call("GET", "/no/such/route", None, None).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"));
    // A known route with the wrong method answers the contract's error body too.
    let (s, v) = api.call("GET", "/api/v1/reservations", None, None).await;
    assert_eq!((s, code(&v)), (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"));
    let (_, m) = api.call("GET", "/metrics", None, None).await;
    let m = m.as_str().unwrap().to_owned();
    assert!(m.contains("ticketing_http_requests_total{route=\"/healthz\",code=\"200\"} 1"), "{m}");
    // Migrations run once: a second start on the same database is fine.
    drop(api);
}

async fn token(api: &Api, email: &str, password: &str) -> String {
    let (s, v) = api
        .call(
            "POST",
            "/api/v1/auth/login",
            Some(&json!({"email": email, "password": password}).to_string()),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["token"].as_str().unwrap().to_owned()
}

async fn catalog(url: String) {
    let api = Api::new(url).await;
    let admin = token(&api, "admin@example.com", "admin-password-123").await;
    let (_, u) = api
        .call(
            "POST",
            "/api/v1/auth/signup",
            Some(&json!({"email": "u@example.com", "password": "user password", "name": "U"}).to_string()),
            None,
        )
        .await;
    let user = u["token"].as_str().unwrap().to_owned();
    let venue = json!({"name": "Olympic Hall", "address": "Seoul"}).to_string();
    // Anonymous 401, user 403, admin 201.
    assert_eq!(api.call("POST", "/admin/v1/venues", Some(&venue), None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        api.call("POST", "/admin/v1/venues", Some(&venue), Some(&user)).await.0,
        StatusCode::FORBIDDEN
    );
    let (s, v) = api.call("POST", "/admin/v1/venues", Some(&venue), Some(&admin)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let venue_id = v["id"].as_i64().unwrap();
    let (_, p) = api
        .call("POST", "/admin/v1/performers", Some(&json!({"name": "IU"}).to_string()), Some(&admin))
        .await;
    let performer = p["id"].as_i64().unwrap();

    let concert = |title: &str, day: u32| {
        json!({"title": title, "artists": ["IU"], "category": "concert", "description": "여름 공연",
               "starts_on": format!("2026-07-{day:02}T19:00:00+09:00"), "ends_on": format!("2026-07-{day:02}T22:00:00+09:00"),
               "venue_id": venue_id, "performer_ids": [performer, performer], "host": "host-a", "room": "summer"})
        .to_string()
    };
    let mut ids = Vec::new();
    for day in 1..=5 {
        let (s, v) = api
            .call(
                "POST",
                "/admin/v1/concerts",
                Some(&concert(&format!("여름 공연 {day}"), day)),
                Some(&admin),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        ids.push(v["id"].as_i64().unwrap());
    }
    let (_, detail) = api.call("GET", &format!("/api/v1/concerts/{}", ids[0]), None, None).await;
    assert_eq!(detail["title"], "여름 공연 1");
    assert_eq!(detail["venue"]["name"], "Olympic Hall");
    assert_eq!(detail["performers"].as_array().unwrap().len(), 1, "duplicate performer ids collapse");
    assert_eq!(detail["starts_on"], "2026-07-01T10:00:00Z");

    // Bad input names the field and writes nothing.
    for (bad, field) in [
        (
            json!({"title": "", "category": "c", "starts_on": "2026-07-01T19:00:00Z", "ends_on": "2026-07-01T20:00:00Z", "venue_id": venue_id, "host": "h"}),
            "title",
        ),
        (
            json!({"title": "t", "category": "c", "starts_on": "tomorrow", "ends_on": "2026-07-01T20:00:00Z", "venue_id": venue_id, "host": "h"}),
            "starts_on",
        ),
        (
            json!({"title": "t", "category": "c", "starts_on": "2026-07-02T19:00:00Z", "ends_on": "2026-07-01T20:00:00Z", "venue_id": venue_id, "host": "h"}),
            "ends_on",
        ),
        (
            json!({"title": "t", "category": "c", "starts_on": "2026-07-01T19:00:00Z", "ends_on": "2026-07-01T20:00:00Z", "venue_id": 999, "host": "h"}),
            "venue_id",
        ),
        (
            json!({"title": "t", "category": "c", "starts_on": "2026-07-01T19:00:00Z", "ends_on": "2026-07-01T20:00:00Z", "venue_id": venue_id, "host": "h", "room": "Bad Room"}),
            "room",
        ),
    ] {
        let (s, v) = api.call("POST", "/admin/v1/concerts", Some(&bad.to_string()), Some(&admin)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");
        assert!(v["error"]["message"].as_str().unwrap().starts_with(field), "{v}");
    }

    // Paging: newest start first, bounded sizes.
    let (_, page) = api.call("GET", "/api/v1/concerts?page=1&size=2", None, None).await;
    assert_eq!((page["total"].as_i64(), page["items"].as_array().unwrap().len()), (Some(5), 2));
    assert_eq!(page["items"][0]["title"], "여름 공연 5");
    let (_, last) = api.call("GET", "/api/v1/concerts?page=3&size=2", None, None).await;
    assert_eq!(last["items"][0]["title"], "여름 공연 1");
    for q in ["size=0", "size=101", "page=0", "page=x", "bogus=1"] {
        assert_eq!(
            api.call("GET", &format!("/api/v1/concerts?{q}"), None, None).await.0,
            StatusCode::BAD_REQUEST,
            "{q}"
        );
    }
    for bad in ["0", "-1", "abc", "99999999999999999999"] {
        assert_eq!(
            api.call("GET", &format!("/api/v1/concerts/{bad}"), None, None).await.0,
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
    assert_eq!(api.call("GET", "/api/v1/concerts/424242", None, None).await.0, StatusCode::NOT_FOUND);

    // A round with a seat map.
    let sched = json!({"starts_at": "2026-07-01T19:00:00+09:00", "sections": [
        {"name": "A", "rows": 10, "seats_per_row": 50, "grade": "VIP", "price": 165000},
        {"name": "B", "rows": 20, "seats_per_row": 25, "grade": "R", "price": 132000}]});
    let (s, v) = api
        .call(
            "POST",
            &format!("/admin/v1/concerts/{}/schedules", ids[0]),
            Some(&sched.to_string()),
            Some(&admin),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["seats"], 1000);
    let schedule = v["id"].as_i64().unwrap();
    let (_, list) = api.call("GET", &format!("/api/v1/concerts/{}/schedules", ids[0]), None, None).await;
    assert_eq!(list[0]["seats"], 1000);
    let (_, seats) = api.call("GET", &format!("/api/v1/schedules/{schedule}/seats"), None, None).await;
    let seats = seats.as_array().unwrap();
    assert_eq!(seats.len(), 1000);
    assert_eq!(
        seats[0],
        json!({"seat_id": seats[0]["seat_id"], "section": "A", "row": "A", "number": 1, "grade": "VIP", "price": 165000, "status": "available"})
    );
    let too_big = json!({"starts_at": "2026-07-01T19:00:00Z", "sections": [{"name": "A", "rows": 100, "seats_per_row": 200, "grade": "R", "price": 1}, {"name": "B", "rows": 1, "seats_per_row": 1, "grade": "R", "price": 1}]});
    assert_eq!(
        api.call(
            "POST",
            &format!("/admin/v1/concerts/{}/schedules", ids[0]),
            Some(&too_big.to_string()),
            Some(&admin)
        )
        .await
        .0,
        StatusCode::BAD_REQUEST
    );
    let negative = json!({"starts_at": "2026-07-01T19:00:00Z", "sections": [{"name": "A", "rows": 1, "seats_per_row": 1, "grade": "R", "price": -5}]});
    assert_eq!(
        api.call(
            "POST",
            &format!("/admin/v1/concerts/{}/schedules", ids[0]),
            Some(&negative.to_string()),
            Some(&admin)
        )
        .await
        .0,
        StatusCode::BAD_REQUEST
    );

    // Ranking: views of the last 7 days, once per client (a user, else the address; every
    // request here is one anonymous address), deleted concerts never listed.
    let clients = [None, Some(admin.as_str()), Some(user.as_str())];
    for (i, n) in [(2usize, 3), (3, 1), (0, 2)] {
        for who in &clients[..n] {
            api.call("GET", &format!("/api/v1/concerts/{}", ids[i]), None, *who).await;
        }
    }
    api.call("GET", &format!("/api/v1/concerts/{}", ids[2]), None, None).await;

    // Posters: type-checked by content, size-limited, served back.
    let png = b"\x89PNG\r\n\x1a\n-not-really-but-the-signature-is-right".to_vec();
    let (s, v) = api
        .raw("POST", &format!("/admin/v1/concerts/{}/poster", ids[2]), "image/png", png.clone(), Some(&admin))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let poster = v["poster"].as_str().unwrap().to_owned();
    let (s, _) = api.raw("GET", &poster, "", Vec::new(), None).await;
    assert_eq!(s, StatusCode::OK);
    let (_, d) = api.call("GET", &format!("/api/v1/concerts/{}", ids[2]), None, None).await;
    assert_eq!(d["poster"], poster.as_str());
    let (s, _) = api
        .raw(
            "POST",
            &format!("/admin/v1/concerts/{}/poster", ids[2]),
            "image/jpeg",
            png.clone(),
            Some(&admin),
        )
        .await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE, "declared type must match the bytes");
    let (s, _) = api
        .raw(
            "POST",
            &format!("/admin/v1/concerts/{}/poster", ids[2]),
            "image/gif",
            b"GIF89a....".to_vec(),
            Some(&admin),
        )
        .await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let mut huge = png.clone();
    huge.resize(3 * 1024 * 1024, 0);
    let (s, _) = api
        .raw("POST", &format!("/admin/v1/concerts/{}/poster", ids[2]), "image/png", huge, Some(&admin))
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    let (s, _) = api
        .raw("POST", &format!("/admin/v1/concerts/{}/poster", ids[2]), "image/png", png.clone(), Some(&user))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    for bad in ["..%2Fx.png", "x"] {
        assert_eq!(
            api.raw("GET", &format!("/posters/{bad}"), "", Vec::new(), None).await.0,
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }

    // Update, then soft delete: gone from every public read.
    let (s, v) = api
        .call(
            "PUT",
            &format!("/admin/v1/concerts/{}", ids[1]),
            Some(&concert("Summer Live", 2)),
            Some(&admin),
        )
        .await;
    assert_eq!((s, v["title"].as_str()), (StatusCode::OK, Some("Summer Live")));
    assert_eq!(
        api.call("DELETE", &format!("/admin/v1/concerts/{}", ids[0]), None, Some(&admin)).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.call("DELETE", &format!("/admin/v1/concerts/{}", ids[0]), None, Some(&admin)).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.call("GET", &format!("/api/v1/concerts/{}", ids[0]), None, None).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.call("GET", &format!("/api/v1/schedules/{schedule}/seats"), None, None).await.0,
        StatusCode::NOT_FOUND
    );
    let (_, page) = api.call("GET", "/api/v1/concerts?size=100", None, None).await;
    assert_eq!(page["total"], 4);
    let (_, top) = api.call("GET", "/api/v1/rankings/concerts", None, None).await;
    let ranked: Vec<(i64, i64)> = top
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["id"].as_i64().unwrap(), c["views"].as_i64().unwrap()))
        .collect();
    // ids[2]: 3 clients, whose reads again (the poster's) do not count; ids[0] was deleted.
    assert_eq!(ranked, vec![(ids[2], 3), (ids[3], 1)]);
}

async fn search(url: String) {
    let api = Api::new(url).await;
    let admin = token(&api, "admin@example.com", "admin-password-123").await;
    let (_, v) = api
        .call(
            "POST",
            "/admin/v1/venues",
            Some(&json!({"name": "KSPO DOME", "address": "Seoul"}).to_string()),
            Some(&admin),
        )
        .await;
    let venue = v["id"].as_i64().unwrap();
    let (_, p) = api
        .call(
            "POST",
            "/admin/v1/performers",
            Some(&json!({"name": "Velvet Harbor"}).to_string()),
            Some(&admin),
        )
        .await;
    assert!(p["id"].is_i64());
    let add = |title: &'static str, artist: &'static str, day: u32| {
        let body = json!({"title": title, "artists": [artist], "category": "concert", "venue_id": venue, "host": "h",
            "starts_on": format!("2026-08-{day:02}T19:00:00Z"), "ends_on": format!("2026-08-{day:02}T21:00:00Z")}).to_string();
        let api = &api;
        let admin = admin.clone();
        async move {
            let (s, v) = api.call("POST", "/admin/v1/concerts", Some(&body), Some(&admin)).await;
            assert_eq!(s, StatusCode::CREATED, "{v}");
            v["id"].as_i64().unwrap()
        }
    };
    let spaced = add("여름 공연 페스티벌", "하늘빛", 1).await;
    let joined = add("한여름공연", "은하수", 2).await;
    let weak = add("여름밤 재즈", "달빛", 3).await;
    let neon = add("Neon Tides World Tour", "Neon Tides", 4).await;
    let titled = add("Velvet Harbor Live", "Someone Else", 5).await;
    let by_artist = add("Night Show", "Velvet Harbor", 6).await;
    let gone = add("여름 공연 취소", "바람", 7).await;
    assert_eq!(
        api.call("DELETE", &format!("/admin/v1/concerts/{gone}"), None, Some(&admin)).await.0,
        StatusCode::NO_CONTENT
    );
    let _ = add;

    let ids = |v: &Value| -> Vec<(String, i64)> {
        v["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| (h["kind"].as_str().unwrap().to_owned(), h["id"].as_i64().unwrap()))
            .collect()
    };
    let has = |v: &Value, id: i64| ids(v).contains(&("concert".to_owned(), id));
    let q = |s: &str| format!("/api/v1/search?q={}", queue_gateway_encode(s));
    // Spacing-insensitive Korean, both ways.
    let (_, r) = api.call("GET", &q("여름공연"), None, None).await;
    assert!(has(&r, spaced) && has(&r, joined), "{r}");
    assert!(!has(&r, weak), "a hit sharing one bigram is below the minimum score: {r}");
    assert!(!has(&r, gone), "deleted concerts are never returned");
    let (_, r) = api.call("GET", &q("한여름 공연"), None, None).await;
    assert_eq!(ids(&r)[0], ("concert".to_owned(), joined), "{r}");
    // A typo and a prefix.
    let (_, r) = api.call("GET", &q("Neon Tdes"), None, None).await;
    assert_eq!(ids(&r)[0], ("concert".to_owned(), neon), "{r}");
    let (_, r) = api.call("GET", &q("Neo"), None, None).await;
    assert!(has(&r, neon), "{r}");
    // Title over artist.
    let (_, r) = api.call("GET", &q("Velvet Harbor"), None, None).await;
    let order = ids(&r);
    let pos = |id| {
        order
            .iter()
            .position(|h| *h == ("concert".to_owned(), id))
            .unwrap_or_else(|| panic!("{id} missing: {r}"))
    };
    assert!(pos(titled) < pos(by_artist), "{r}");
    assert!(order.iter().any(|h| h.0 == "performer"), "performers are searched too: {r}");
    // Venues, kinds and dates as filters.
    let (_, r) = api.call("GET", &q("KSPO"), None, None).await;
    assert_eq!(ids(&r)[0], ("venue".to_owned(), venue));
    let (_, r) = api.call("GET", &format!("{}&kind=concert", q("Velvet Harbor")), None, None).await;
    assert!(ids(&r).iter().all(|h| h.0 == "concert"));
    let (_, r) =
        api.call("GET", &format!("{}&from=2026-08-02&to=2026-08-02", q("여름공연")), None, None).await;
    assert_eq!(ids(&r), vec![("concert".to_owned(), joined)], "{r}");
    // Bad input.
    for bad in [
        "/api/v1/search",
        "/api/v1/search?q=",
        "/api/v1/search?q=x&from=tomorrow",
        "/api/v1/search?q=x&kind=song",
    ] {
        assert_eq!(api.call("GET", bad, None, None).await.0, StatusCode::BAD_REQUEST, "{bad}");
    }
    let long = format!("/api/v1/search?q={}", "a".repeat(101));
    assert_eq!(api.call("GET", &long, None, None).await.0, StatusCode::BAD_REQUEST);
}

fn queue_gateway_encode(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

#[tokio::test]
async fn sqlite_search() {
    search(sqlite_url()).await
}

#[tokio::test]
async fn postgres_search() {
    let (_db, url) = PgDb::create().await;
    search(url).await
}

#[tokio::test]
async fn embedded_default_seeds_demo_data_once() {
    let dir = std::env::temp_dir().join(format!("tb-demo-{}", std::process::id()));
    let cfg = BackendConfig { data_dir: dir.clone(), ..BackendConfig::default() };
    for _ in 0..2 {
        let api = Api { router: ticketing_backend::router(ticketing_backend::build(&cfg).await.unwrap()) };
        let (_, page) = api.call("GET", "/api/v1/concerts?size=100", None, None).await;
        assert_eq!(page["total"], 51, "seeded once, not twice");
        let hot = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["room"] == "demo")
            .expect("a hot concert")
            .clone();
        let (_, rounds) =
            api.call("GET", &format!("/api/v1/concerts/{}/schedules", hot["id"]), None, None).await;
        assert_eq!(rounds[0]["seats"], 1000);
        let titles: Vec<&str> =
            page["items"].as_array().unwrap().iter().filter_map(|c| c["title"].as_str()).collect();
        assert!(
            titles.iter().any(|t| t.contains("여름 공연"))
                && titles.iter().any(|t| t.contains("Summer Live"))
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn sqlite_catalog() {
    catalog(sqlite_url()).await
}

#[tokio::test]
async fn postgres_catalog() {
    let (_db, url) = PgDb::create().await;
    catalog(url).await
}

#[tokio::test]
async fn sqlite_users_and_auth() {
    users_and_auth(sqlite_url()).await
}

#[tokio::test]
async fn sqlite_operations() {
    let url = sqlite_url();
    operations(url.clone()).await;
    Api::new(url).await;
}

#[tokio::test]
async fn postgres_users_and_auth() {
    let (_db, url) = PgDb::create().await;
    users_and_auth(url).await
}

#[tokio::test]
async fn postgres_operations() {
    let (_db, url) = PgDb::create().await;
    operations(url.clone()).await;
    Api::new(url).await;
}

/// A concert (with or without a waiting room) and one round of 2 rows × 5 seats; returns
/// (admin token, schedule id, seat ids).
async fn bookable(api: &Api, room: Option<&str>) -> (String, i64, Vec<i64>) {
    let admin = token(api, "admin@example.com", "admin-password-123").await;
    let (_, v) = api
        .call(
            "POST",
            "/admin/v1/venues",
            Some(&json!({"name": "Hall", "address": "Seoul"}).to_string()),
            Some(&admin),
        )
        .await;
    let concert = json!({"title": "Booking test", "category": "concert", "description": "",
        "starts_on": "2026-08-01T19:00:00Z", "ends_on": "2026-08-01T22:00:00Z", "venue_id": v["id"], "host": "h", "room": room});
    let (s, c) = api.call("POST", "/admin/v1/concerts", Some(&concert.to_string()), Some(&admin)).await;
    assert_eq!(s, StatusCode::CREATED, "{c}");
    let sched = json!({"starts_at": "2026-08-01T19:00:00Z", "sections": [{"name": "A", "rows": 2, "seats_per_row": 5, "grade": "R", "price": 10000}]});
    let path = format!("/admin/v1/concerts/{}/schedules", c["id"]);
    let (s, v) = api.call("POST", &path, Some(&sched.to_string()), Some(&admin)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let schedule = v["id"].as_i64().unwrap();
    let (_, seats) = api.call("GET", &format!("/api/v1/schedules/{schedule}/seats"), None, None).await;
    let ids = seats.as_array().unwrap().iter().map(|s| s["seat_id"].as_i64().unwrap()).collect();
    (admin, schedule, ids)
}

async fn signup(api: &Api, email: &str) -> String {
    let body = json!({"email": email, "password": "user password", "name": "U"}).to_string();
    let (s, v) = api.call("POST", "/api/v1/auth/signup", Some(&body), None).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v["token"].as_str().unwrap().to_owned()
}

async fn reservations(url: String) {
    let api = Api::new(url).await;
    let (admin, schedule, seats) = bookable(&api, None).await;
    let (alice, bob) = (signup(&api, "alice@example.com").await, signup(&api, "bob@example.com").await);
    let body = |ids: &[i64]| json!({"schedule_id": schedule, "seat_ids": ids}).to_string();

    assert_eq!(
        api.call("POST", "/api/v1/reservations", Some(&body(&seats[..2])), None).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (s, r) = api.call("POST", "/api/v1/reservations", Some(&body(&seats[..2])), Some(&alice)).await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    assert_eq!((r["status"].as_str(), r["amount"].as_i64()), (Some("held"), Some(20_000)));
    assert!(r["expires_at"].is_string());
    let id = r["reservation_id"].as_str().unwrap().to_owned();

    // One winner per seat: overlapping requests hold nothing.
    let (s, v) =
        api.call("POST", "/api/v1/reservations", Some(&body(&[seats[1], seats[2]])), Some(&bob)).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "seat_taken"));
    let (_, map) = api.call("GET", &format!("/api/v1/schedules/{schedule}/seats"), None, None).await;
    let status = |i: usize| map[i]["status"].as_str().unwrap().to_owned();
    assert_eq!(
        (status(0), status(1), status(2)),
        ("held".into(), "held".into(), "available".into()),
        "bob held nothing"
    );

    // Only the owner (or an admin) sees or cancels it.
    assert_eq!(
        api.call("GET", &format!("/api/v1/reservations/{id}"), None, Some(&bob)).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.call("DELETE", &format!("/api/v1/reservations/{id}"), None, Some(&bob)).await.0,
        StatusCode::NOT_FOUND
    );
    let (s, v) = api.call("GET", &format!("/api/v1/reservations/{id}"), None, Some(&alice)).await;
    assert_eq!((s, v["seat_ids"].clone()), (StatusCode::OK, json!(&seats[..2])));
    assert_eq!(
        api.call("GET", &format!("/api/v1/reservations/{id}"), None, Some(&admin)).await.0,
        StatusCode::OK
    );
    let (s, v) = api.call("DELETE", &format!("/api/v1/reservations/{id}"), None, Some(&alice)).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("cancelled")));
    let (_, map) = api.call("GET", &format!("/api/v1/schedules/{schedule}/seats"), None, None).await;
    assert!(map.as_array().unwrap().iter().all(|s| s["status"] == "available"), "{map}");
    // The seats are free again, in the hold store and in the database.
    let (s, v) =
        api.call("POST", "/api/v1/reservations", Some(&body(&[seats[1], seats[2]])), Some(&bob)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");

    // Bad input changes nothing.
    let other = seats.iter().max().unwrap() + 1000;
    for (b, want) in [
        (json!({"schedule_id": schedule, "seat_ids": []}).to_string(), StatusCode::BAD_REQUEST),
        (json!({"schedule_id": schedule, "seat_ids": [seats[5], seats[5]]}).to_string(), StatusCode::BAD_REQUEST),
        (json!({"schedule_id": schedule, "seat_ids": seats.clone().into_iter().chain([other]).collect::<Vec<_>>()}).to_string(), StatusCode::BAD_REQUEST),
        (json!({"schedule_id": schedule, "seat_ids": [other]}).to_string(), StatusCode::BAD_REQUEST),
        (json!({"schedule_id": 424242, "seat_ids": [seats[5]]}).to_string(), StatusCode::NOT_FOUND),
        (json!({"schedule_id": schedule, "seat_ids": [seats[5]], "extra": 1}).to_string(), StatusCode::BAD_REQUEST),
        ("{".to_owned(), StatusCode::BAD_REQUEST),
    ] {
        assert_eq!(api.call("POST", "/api/v1/reservations", Some(&b), Some(&alice)).await.0, want, "{b}");
    }
    for bad in ["nope", "r000000000000000000000000", "../x"] {
        assert_eq!(
            api.call("GET", &format!("/api/v1/reservations/{bad}"), None, Some(&alice)).await.0,
            StatusCode::NOT_FOUND
        );
    }
    let (_, map) = api.call("GET", &format!("/api/v1/schedules/{schedule}/seats"), None, None).await;
    assert_eq!(
        map.as_array().unwrap().iter().filter(|s| s["status"] == "held").count(),
        2,
        "only bob's two seats"
    );

    // Admin list: admins only, filtered.
    assert_eq!(api.call("GET", "/admin/v1/reservations", None, Some(&alice)).await.0, StatusCode::FORBIDDEN);
    let (s, v) = api.call("GET", "/admin/v1/reservations?status=cancelled", None, Some(&admin)).await;
    assert_eq!((s, v["items"].as_array().unwrap().len()), (StatusCode::OK, 1), "{v}");
    assert_eq!(
        api.call("GET", "/admin/v1/reservations?status=bogus", None, Some(&admin)).await.0,
        StatusCode::BAD_REQUEST
    );

    // A concert behind a waiting room needs an admission (none is configured here: refused).
    let (_, queued, qseats) = bookable(&api, Some("hot")).await;
    let b = json!({"schedule_id": queued, "seat_ids": [qseats[0]]}).to_string();
    let (s, v) = api.call("POST", "/api/v1/reservations", Some(&b), Some(&alice)).await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "not_admitted"));
}

#[tokio::test]
async fn sqlite_reservations() {
    reservations(sqlite_url()).await
}

#[tokio::test]
async fn postgres_reservations() {
    let (_db, url) = PgDb::create().await;
    reservations(url).await
}
