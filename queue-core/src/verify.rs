//! Verifying admission tokens, for the gateway and for any Rust backend behind it.
//!
//! [`Verifier`] fetches the gateway's JWKS (`/.well-known/jwks.json`), caches it, refetches
//! on an unknown `kid` (at most every few seconds) and when it grows old, and checks the
//! signature, `aud` (the room), `exp`/`nbf` with a small leeway and optionally `iss`. Only
//! `EdDSA` is accepted, so `alg: none` and HS256-with-the-public-key forgeries fail before any
//! key is used. A token that verified once is answered from a bounded cache keyed by its
//! SHA-256 (the time window and audience are still checked on every hit).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use bytes::Bytes;
use dashmap::DashMap;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use tokio::sync::{Mutex, RwLock};

use crate::token::{AdmissionClaims, Jwks, MAX_TOKEN_LEN, PublicKey, TokenError};

/// Default bound of the verified-token cache.
pub const DEFAULT_CACHE_ENTRIES: usize = 100_000;
/// Default clock leeway for `exp` and `nbf`, in seconds.
pub const DEFAULT_LEEWAY_S: u64 = 5;
/// Largest JWKS document accepted.
pub const MAX_JWKS_BYTES: usize = 64 * 1024;
/// A JWKS older than this is refetched.
pub const JWKS_MAX_AGE: Duration = Duration::from_secs(300);
/// Unknown `kid`s trigger a refetch at most this often.
pub const JWKS_MIN_REFETCH: Duration = Duration::from_secs(5);

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A bounded map from token digest to verified claims.
#[derive(Debug)]
pub struct VerifiedCache {
    map: DashMap<[u8; 32], Arc<AdmissionClaims>>,
    cap: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl VerifiedCache {
    /// A cache holding at most `cap` tokens.
    pub fn new(cap: usize) -> Self {
        VerifiedCache {
            map: DashMap::new(),
            cap: cap.max(1),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn get(&self, key: &[u8; 32]) -> Option<Arc<AdmissionClaims>> {
        let hit = self.map.get(key).map(|c| c.clone());
        match hit {
            Some(_) => self.hits.fetch_add(1, Ordering::Relaxed),
            None => self.misses.fetch_add(1, Ordering::Relaxed),
        };
        hit
    }

    fn insert(&self, key: [u8; 32], claims: Arc<AdmissionClaims>, leeway_s: u64) {
        if self.map.len() >= self.cap {
            let now = now_s();
            self.map.retain(|_, c| c.exp + leeway_s > now);
            if self.map.len() >= self.cap {
                // Still full of live tokens: start over rather than grow.
                self.map.clear();
            }
        }
        self.map.insert(key, claims);
    }

    /// Forgets every token (after a key is withdrawn).
    pub fn clear(&self) {
        self.map.clear();
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// `(hits, misses)` so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.hits.load(Ordering::Relaxed), self.misses.load(Ordering::Relaxed))
    }
}

pub(crate) fn check_window(c: &AdmissionClaims, room: &str, leeway_s: u64) -> Result<(), TokenError> {
    let now = now_s();
    if c.exp + leeway_s <= now {
        return Err(TokenError::Refused("expired"));
    }
    if c.nbf > now + leeway_s {
        return Err(TokenError::Refused("not yet valid"));
    }
    if c.aud != room {
        return Err(TokenError::Refused("wrong audience"));
    }
    Ok(())
}

/// Verifies `token` for `room` with keys found by `lookup(kid)`.
pub fn verify_token(
    token: &str,
    room: &str,
    issuer: Option<&str>,
    leeway_s: u64,
    cache: &VerifiedCache,
    lookup: impl Fn(&str) -> Option<PublicKey>,
) -> Result<Arc<AdmissionClaims>, TokenError> {
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Refused("malformed"));
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(digest::digest(&digest::SHA256, token.as_bytes()).as_ref());
    if let Some(c) = cache.get(&key) {
        check_window(&c, room, leeway_s)?;
        return Ok(c);
    }
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Refused("malformed"))?;
    if header.alg != Algorithm::EdDSA {
        return Err(TokenError::Refused("algorithm not allowed"));
    }
    let kid = header.kid.ok_or(TokenError::Refused("no key id"))?;
    let pk = lookup(&kid).ok_or(TokenError::Refused("unknown key id"))?;
    let mut v = Validation::new(Algorithm::EdDSA);
    v.leeway = leeway_s;
    v.validate_nbf = true;
    v.set_audience(&[room]);
    v.set_required_spec_claims(&["exp", "nbf", "aud", "iat", "sub", "jti"]);
    if let Some(iss) = issuer {
        v.set_issuer(&[iss]);
    }
    let data = jsonwebtoken::decode::<AdmissionClaims>(token, pk.decoding(), &v).map_err(|e| {
        TokenError::Refused(match e.kind() {
            ErrorKind::ExpiredSignature => "expired",
            ErrorKind::ImmatureSignature => "not yet valid",
            ErrorKind::InvalidAudience => "wrong audience",
            ErrorKind::InvalidIssuer => "wrong issuer",
            ErrorKind::InvalidSignature => "bad signature",
            ErrorKind::MissingRequiredClaim(_) => "missing claim",
            _ => "malformed",
        })
    })?;
    let claims = Arc::new(data.claims);
    cache.insert(key, claims.clone(), leeway_s);
    Ok(claims)
}

#[derive(Debug)]
enum Source {
    Static,
    Url(hyper::Uri),
}

/// Verifies admission tokens against a gateway's JWKS.
#[derive(Debug)]
pub struct Verifier {
    source: Source,
    keys: RwLock<Arc<HashMap<String, PublicKey>>>,
    fetched: Mutex<Option<Instant>>,
    cache: VerifiedCache,
    issuer: Option<String>,
    leeway_s: u64,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Verifier {
    fn build(source: Source, keys: HashMap<String, PublicKey>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(3)));
        Verifier {
            source,
            keys: RwLock::new(Arc::new(keys)),
            fetched: Mutex::new(None),
            cache: VerifiedCache::new(DEFAULT_CACHE_ENTRIES),
            issuer: None,
            leeway_s: DEFAULT_LEEWAY_S,
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// A verifier with a fixed key set (no fetching).
    pub fn from_jwks(jwks: &Jwks) -> Result<Self, TokenError> {
        Ok(Self::build(Source::Static, parse_jwks(jwks)?))
    }

    /// A verifier that fetches the JWKS from an `http://` URL (on first use and then as needed).
    pub fn from_url(url: &str) -> Result<Self, TokenError> {
        let uri: hyper::Uri = url.parse().map_err(|_| TokenError::Jwks(format!("bad JWKS URL {url:?}")))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(TokenError::Jwks("the JWKS URL must be http://host[:port]/path".into()));
        }
        Ok(Self::build(Source::Url(uri), HashMap::new()))
    }

    /// Also require this `iss`.
    pub fn with_issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// Sets the clock leeway for `exp`/`nbf`.
    pub fn with_leeway(mut self, seconds: u64) -> Self {
        self.leeway_s = seconds;
        self
    }

    /// The verified-token cache (for metrics).
    pub fn cache(&self) -> &VerifiedCache {
        &self.cache
    }

    /// Fetches the JWKS now.
    pub async fn refresh(&self) -> Result<(), TokenError> {
        let Source::Url(uri) = &self.source else {
            return Ok(());
        };
        let fetch = async {
            let resp = self.client.get(uri.clone()).await.map_err(|e| TokenError::Jwks(e.to_string()))?;
            if !resp.status().is_success() {
                return Err(TokenError::Jwks(format!("JWKS answered {}", resp.status())));
            }
            let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map_err(|e| TokenError::Jwks(e.to_string()))?
                .to_bytes();
            serde_json::from_slice::<Jwks>(&body).map_err(|e| TokenError::Jwks(e.to_string()))
        };
        let jwks = tokio::time::timeout(Duration::from_secs(5), fetch)
            .await
            .map_err(|_| TokenError::Jwks("timed out".into()))??;
        let keys = parse_jwks(&jwks)?;
        *self.keys.write().await = Arc::new(keys);
        Ok(())
    }

    /// Refetches when stale, or when `unknown_kid` and not fetched in the last few seconds.
    async fn maybe_refresh(&self, unknown_kid: bool) -> Result<bool, TokenError> {
        if matches!(self.source, Source::Static) {
            return Ok(false);
        }
        let mut fetched = self.fetched.lock().await;
        let due = match *fetched {
            None => true,
            Some(at) if unknown_kid => at.elapsed() >= JWKS_MIN_REFETCH,
            Some(at) => at.elapsed() >= JWKS_MAX_AGE,
        };
        if !due {
            return Ok(false);
        }
        *fetched = Some(Instant::now());
        self.refresh().await?;
        Ok(true)
    }

    /// Verifies `token` for `room`.
    pub async fn verify(&self, token: &str, room: &str) -> Result<Arc<AdmissionClaims>, TokenError> {
        if let Err(e) = self.maybe_refresh(false).await {
            tracing::warn!(error = %e, "JWKS refresh failed; using the keys held");
        }
        let keys = self.keys.read().await.clone();
        let issuer = self.issuer.as_deref();
        match verify_token(token, room, issuer, self.leeway_s, &self.cache, |k| keys.get(k).cloned()) {
            Err(TokenError::Refused("unknown key id")) if self.maybe_refresh(true).await? => {
                let keys = self.keys.read().await.clone();
                verify_token(token, room, issuer, self.leeway_s, &self.cache, |k| keys.get(k).cloned())
            }
            other => other,
        }
    }
}

fn parse_jwks(jwks: &Jwks) -> Result<HashMap<String, PublicKey>, TokenError> {
    let mut out = HashMap::new();
    for jwk in &jwks.keys {
        // Keys of other types may share a JWKS; they simply never verify an admission token.
        if let Ok(pk) = PublicKey::from_jwk(jwk) {
            out.insert(pk.kid().to_owned(), pk);
        }
    }
    Ok(out)
}
