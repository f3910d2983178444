//! Admission checks: tokens from a real gateway key set, fetched as JWKS over HTTP.

use axum::http::HeaderMap;
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
    let keys = KeySet::new("gw", SigningKey::generate().unwrap());
    let jwks = serde_json::to_value(keys.jwks()).unwrap();
    let app = axum::Router::new()
        .route("/.well-known/jwks.json", axum::routing::get(move || async move { axum::Json(jwks) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let admission =
        Admission::new(Some(Verifier::from_url(&format!("http://{addr}/.well-known/jwks.json")).unwrap()));

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
    refused(Admission::new(None).require(&with_token(&good), "hot").await);
}
