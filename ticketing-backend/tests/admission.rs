//! Admission checks: tokens from a real gateway key set, fetched as JWKS over HTTP.

mod common;

use axum::http::HeaderMap;
use queue_core::gate::GateSecret;
use queue_core::token::{AdmissionClaims, KeySet, SigningKey, cnf_of};
use queue_core::verify::Verifier;
use ticketing_backend::admission::Admission;
use ticketing_backend::error::ApiError;

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn claims(room: &str, nbf: u64, exp: u64) -> AdmissionClaims {
    AdmissionClaims {
        iss: "gw".into(),
        aud: room.into(),
        sub: "anon:1".into(),
        jti: "00000000000000010000000000000001".into(),
        iat: nbf,
        nbf,
        exp,
        cnf: cnf_of(b"s"),
    }
}

fn with_token(t: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("x-admission-token", t.parse().unwrap());
    h
}

fn refused(r: Result<std::sync::Arc<AdmissionClaims>, ApiError>) -> String {
    match r {
        Err(ApiError::Client { code, message, .. }) => {
            assert_eq!(code, "not_admitted");
            message
        }
        other => panic!("expected not_admitted, got {other:?}"),
    }
}

#[tokio::test]
async fn verifies_tokens_of_the_gateways_key_set() {
    let (keys, jwks) = common::shop::gateway_keys().await;
    let admission = Admission::new(Some(Verifier::from_url(&jwks).unwrap()), None);

    let good = keys.sign_claims(&claims("hot", now(), now() + 600)).unwrap();
    let c = admission.require(&with_token(&good), "hot").await.unwrap();
    assert_eq!(c.aud, "hot");
    assert!(refused(admission.require(&HeaderMap::new(), "hot").await).contains("no token"));
    assert!(refused(admission.require(&with_token(&good), "other").await).contains("wrong audience"));
    let expired = keys.sign_claims(&claims("hot", now() - 900, now() - 600)).unwrap();
    assert!(refused(admission.require(&with_token(&expired), "hot").await).contains("expired"));
    let forged = KeySet::new("gw", SigningKey::generate().unwrap())
        .sign_claims(&claims("hot", now(), now() + 600))
        .unwrap();
    refused(admission.require(&with_token(&forged), "hot").await);
    refused(admission.require(&with_token("garbage"), "hot").await);
    // Without a configured JWKS, everything is refused.
    refused(Admission::new(None, None).require(&with_token(&good), "hot").await);
}

const GATE_SECRET: &str = "gate-secret-0123456789abcdef0123456";

fn with_marker(m: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("x-gate-replay", m.parse().unwrap());
    h
}

#[test]
fn replay_markers_are_checked_with_the_gateways_key() {
    let secret = GateSecret::new(GATE_SECRET.as_bytes());
    let a = Admission::new(None, Some(secret.clone()));
    let m = secret.marker("book.1-0.tag", "POST", "/api/v1/reservations", now() + 60);
    let r = a.replayed("POST", "/api/v1/reservations", &with_marker(&m)).unwrap().unwrap();
    assert_eq!(r.offset, "book.1-0.tag");
    assert_eq!(a.replayed("POST", "/api/v1/reservations", &HeaderMap::new()).unwrap(), None);
    for (method, path, marker) in [
        ("POST", "/api/v1/other", m.clone()),
        ("DELETE", "/api/v1/reservations", m.clone()),
        ("POST", "/api/v1/reservations", "v1;book.1-0.tag;99999999999;forged".to_owned()),
        ("POST", "/api/v1/reservations", secret.marker("o", "POST", "/api/v1/reservations", now() - 1)),
    ] {
        match a.replayed(method, path, &with_marker(&marker)) {
            Err(ApiError::Client { code, .. }) => assert_eq!(code, "invalid_replay_marker"),
            other => panic!("{method} {path}: {other:?}"),
        }
    }
    let unkeyed = Admission::new(None, None);
    assert_eq!(unkeyed.replayed("POST", "/x", &with_marker("anything")).unwrap(), None, "no key: ignored");
}

#[tokio::test]
async fn the_router_refuses_forged_markers() {
    use tower::ServiceExt;
    let dir = std::env::temp_dir().join(format!("tb-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = ticketing_backend::config::BackendConfig {
        database_url: Some(format!("sqlite://{}?mode=rwc", dir.join("t.db").display())),
        gate_secret: Some(GATE_SECRET.into()),
        demo_data: false,
        ..Default::default()
    };
    let router = ticketing_backend::router(ticketing_backend::build(&cfg).await.unwrap());
    let call = |marker: Option<String>| {
        let router = router.clone();
        async move {
            let mut req = axum::http::Request::builder().uri("/api/v1/concerts");
            if let Some(m) = marker {
                req = req.header("x-gate-replay", m);
            }
            router.oneshot(req.body(axum::body::Body::empty()).unwrap()).await.unwrap().status()
        }
    };
    let secret = GateSecret::new(GATE_SECRET.as_bytes());
    assert_eq!(call(None).await, 200);
    assert_eq!(call(Some(secret.marker("g.1-0.t", "GET", "/api/v1/concerts", now() + 60))).await, 200);
    assert_eq!(call(Some("v1;g.1-0.t;99999999999;forged".into())).await, 403);
}
