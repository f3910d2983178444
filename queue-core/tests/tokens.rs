//! Admission tokens: round trip, every refusal of DESIGN §3, rotation, JWKS fetching, cache.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use queue_core::token::*;
use queue_core::verify::Verifier;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn keys() -> KeySet {
    KeySet::new("https://gw.test", SigningKey::generate().unwrap())
}

fn claims(room: &str, nbf: u64, exp: u64) -> AdmissionClaims {
    AdmissionClaims {
        iss: "https://gw.test".into(),
        aud: room.into(),
        sub: "user-1".into(),
        jti: "0000000000000001aaaaaaaaaaaaaaaa".into(),
        iat: nbf,
        nbf,
        exp,
        cnf: cnf_of(b"secret"),
    }
}

fn refusal(r: Result<Arc<AdmissionClaims>, TokenError>) -> &'static str {
    match r {
        Err(TokenError::Refused(why)) => why,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn round_trip_carries_every_claim() {
    let k = keys();
    let t = k
        .sign("summer", "user-1", "0000000000000001aaaaaaaaaaaaaaaa", &cnf_of(b"s"), now(), now() + 600)
        .unwrap();
    let header = jsonwebtoken::decode_header(&t).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
    assert_eq!(header.kid.as_deref(), Some(k.signing_kid()));
    let c = k.verify(&t, "summer").unwrap();
    assert_eq!((c.aud.as_str(), c.sub.as_str(), c.iss.as_str()), ("summer", "user-1", "https://gw.test"));
    assert_eq!(c.cnf, cnf_of(b"s"));
    assert!(c.exp > c.nbf && c.iat == c.nbf);
}

#[test]
fn cnf_is_base64url_sha256() {
    assert_eq!(cnf_of(b""), "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU");
}

#[test]
fn time_window_and_audience_are_enforced() {
    let k = keys();
    let expired = k.sign_claims(&claims("r", now() - 600, now() - 60)).unwrap();
    assert_eq!(refusal(k.verify(&expired, "r")), "expired");
    let early = k.sign_claims(&claims("r", now() + 600, now() + 1200)).unwrap();
    assert_eq!(refusal(k.verify(&early, "r")), "not yet valid");
    let ok = k.sign_claims(&claims("r", now(), now() + 60)).unwrap();
    assert_eq!(refusal(k.verify(&ok, "other-room")), "wrong audience");
    k.verify(&ok, "r").unwrap();
    // A cached token is still checked for its audience.
    assert_eq!(refusal(k.verify(&ok, "other-room")), "wrong audience");
    // Within the leeway an just-expired token still passes.
    let edge = k.sign_claims(&claims("r", now() - 60, now() - 2)).unwrap();
    k.verify(&edge, "r").unwrap();
}

#[test]
fn forgeries_are_refused() {
    let k = keys();
    let t = k.sign_claims(&claims("r", now(), now() + 60)).unwrap();
    let parts: Vec<&str> = t.split('.').collect();

    // Tampered payload: another audience, original signature.
    let mut c = claims("r", now(), now() + 60);
    c.sub = "mallory".into();
    let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap());
    let tampered = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
    assert_eq!(refusal(k.verify(&tampered, "r")), "bad signature");

    // Signed by another key that claims our kid.
    let other = KeySet::new("https://gw.test", SigningKey::generate().unwrap());
    let t2 = other.sign_claims(&claims("r", now(), now() + 60)).unwrap();
    let p2: Vec<&str> = t2.split('.').collect();
    let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"EdDSA","kid":"{}"}}"#, k.signing_kid()));
    assert_eq!(refusal(k.verify(&format!("{header}.{}.{}", p2[1], p2[2]), "r")), "bad signature");
    // ... or with its own kid, unknown here.
    assert_eq!(refusal(k.verify(&t2, "r")), "unknown key id");

    // alg: none.
    let none = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"none","kid":"{}"}}"#, k.signing_kid()));
    assert_eq!(refusal(k.verify(&format!("{none}.{}.", parts[1]), "r")), "malformed");

    // HS256 signed with the public key as the HMAC secret (key confusion).
    let jwk = &k.jwks().keys[0];
    for secret in [jwk.x.as_bytes().to_vec(), URL_SAFE_NO_PAD.decode(&jwk.x).unwrap()] {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some(k.signing_kid().to_owned());
        let hs = jsonwebtoken::encode(
            &h,
            &claims("r", now(), now() + 60),
            &jsonwebtoken::EncodingKey::from_secret(&secret),
        )
        .unwrap();
        assert_eq!(refusal(k.verify(&hs, "r")), "algorithm not allowed");
    }

    // Junk and oversized input.
    assert_eq!(refusal(k.verify("", "r")), "malformed");
    assert_eq!(refusal(k.verify("a.b.c", "r")), "malformed");
    assert_eq!(refusal(k.verify(&"a".repeat(MAX_TOKEN_LEN + 1), "r")), "malformed");
}

#[test]
fn rotation_keeps_old_tokens_valid_until_removed() {
    let mut k = keys();
    let old_kid = k.signing_kid().to_owned();
    let old = k.sign_claims(&claims("r", now(), now() + 60)).unwrap();
    k.rotate(SigningKey::generate().unwrap());
    assert_ne!(k.signing_kid(), old_kid);
    let new = k.sign_claims(&claims("r", now(), now() + 60)).unwrap();
    assert_eq!(jsonwebtoken::decode_header(&new).unwrap().kid.as_deref(), Some(k.signing_kid()));
    k.verify(&old, "r").unwrap();
    k.verify(&new, "r").unwrap();
    assert_eq!(k.jwks().keys.len(), 2);
    k.remove_key(&old_kid);
    assert_eq!(refusal(k.verify(&old, "r")), "unknown key id");
    k.verify(&new, "r").unwrap();
}

#[test]
fn keys_load_from_pem_and_seed() {
    let seed = [7u8; 32];
    let a = SigningKey::parse(&STANDARD.encode(seed)).unwrap();
    let b = SigningKey::from_seed(&seed).unwrap();
    assert_eq!(a.kid(), b.kid());
    // openssl genpkey -algorithm ed25519 (PKCS#8 v1) of the RFC 8032 test key 1.
    let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n-----END PRIVATE KEY-----\n";
    let k = SigningKey::parse(pem).unwrap();
    let jwk = k.public_key().to_jwk();
    assert_eq!(jwk.x, "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo");
    for bad in [
        "",
        "not base64 !!",
        &STANDARD.encode([1u8; 31]),
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----",
    ] {
        assert!(matches!(SigningKey::parse(bad), Err(TokenError::InvalidKey(_))), "{bad:?} accepted");
    }
    assert!(!format!("{k:?}").contains("MC4C"), "Debug must not print key material");
}

#[tokio::test]
async fn verifier_uses_a_static_jwks_and_caches() {
    let k = keys();
    let v = Verifier::from_jwks(&k.jwks()).unwrap().with_issuer("https://gw.test");
    let t = k.sign_claims(&claims("r", now(), now() + 60)).unwrap();
    v.verify(&t, "r").await.unwrap();
    v.verify(&t, "r").await.unwrap();
    let (hits, misses) = v.cache().counts();
    assert_eq!((hits, misses), (1, 1));
    let wrong_iss = KeySet::new("https://evil", SigningKey::generate().unwrap());
    let v2 = Verifier::from_jwks(&wrong_iss.jwks()).unwrap().with_issuer("https://gw.test");
    let t2 = wrong_iss
        .sign_claims(&AdmissionClaims { iss: "https://evil".into(), ..claims("r", now(), now() + 60) });
    assert_eq!(refusal(v2.verify(&t2.unwrap(), "r").await), "wrong issuer");
}

#[tokio::test]
async fn cached_tokens_still_expire() {
    let k = keys();
    let v = Verifier::from_jwks(&k.jwks()).unwrap().with_leeway(0);
    let t = k.sign_claims(&claims("r", now() - 10, now() + 1)).unwrap();
    v.verify(&t, "r").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(refusal(v.verify(&t, "r").await), "expired");
}

/// A one-route HTTP server answering the JWKS that `current` holds, counting fetches.
async fn jwks_server(current: Arc<std::sync::Mutex<String>>, fetches: Arc<AtomicUsize>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let body = current.lock().unwrap().clone();
            fetches.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ = sock.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/.well-known/jwks.json")
}

#[tokio::test]
async fn verifier_fetches_jwks_and_refetches_for_new_kids() {
    let mut k = keys();
    let doc = Arc::new(std::sync::Mutex::new(serde_json::to_string(&k.jwks()).unwrap()));
    let fetches = Arc::new(AtomicUsize::new(0));
    let url = jwks_server(doc.clone(), fetches.clone()).await;
    let v = Verifier::from_url(&url).unwrap();
    let t = k.sign_claims(&claims("r", now(), now() + 60)).unwrap();
    v.verify(&t, "r").await.unwrap();
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
    // Rotate at the gateway; the verifier learns the new kid on first sight (after the
    // minimum refetch interval).
    k.rotate(SigningKey::generate().unwrap());
    *doc.lock().unwrap() = serde_json::to_string(&k.jwks()).unwrap();
    let t2 = k.sign_claims(&claims("r", now(), now() + 60)).unwrap();
    assert_eq!(refusal(v.verify(&t2, "r").await), "unknown key id", "refetch is rate limited");
    tokio::time::sleep(queue_core::verify::JWKS_MIN_REFETCH).await;
    v.verify(&t2, "r").await.unwrap();
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
    assert!(Verifier::from_url("https://example.test/jwks").is_err());
    assert!(Verifier::from_url("not a url").is_err());
}
